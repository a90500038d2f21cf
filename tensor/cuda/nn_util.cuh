/* nn_util.cuh — host helpers shared by the nn kernels (conv2d.cu, norm.cu): raw device
 * pointers, contiguous inputs and outputs. Included inside each file's anonymous namespace. */
#ifndef TENSOR_CUDA_NN_UTIL_CUH
#define TENSOR_CUDA_NN_UTIL_CUH

template <typename T> T *dptr(const struct tensor *t) { return (T *)t->storage->data + t->offset; }

/* t itself when contiguous, else a contiguous copy owned by the enclosing scope */
const struct tensor *contig(const struct tensor *t, enum status *s)
{
    if (!t || tensor_is_contiguous(t)) return t;
    struct tensor *c = tensor_empty(t->dtype, t->ndim, t->shape, DEVICE_CUDA);
    if (!c) { *s = tensor_status() ? tensor_status() : STATUS_OOM; return NULL; }
    if ((*s = cuda_copy(c, t))) return NULL;
    return c;
}

/* an output: written in place when contiguous, else through a temporary copied back */
struct outbuf {
    struct tensor *dst = nullptr, *tmp = nullptr;
    enum status open(struct tensor *t)
    {
        dst = t;
        if (!t || tensor_is_contiguous(t)) return STATUS_OK;
        tmp = tensor_empty(t->dtype, t->ndim, t->shape, DEVICE_CUDA);
        return tmp ? STATUS_OK : (tensor_status() ? tensor_status() : STATUS_OOM);
    }
    template <typename T> T *p() const { return dst ? dptr<T>(tmp ? tmp : dst) : nullptr; }
    enum status close() { return tmp ? cuda_copy(dst, tmp) : STATUS_OK; }
};

#endif
