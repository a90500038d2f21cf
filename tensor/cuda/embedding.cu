/* embedding.cu — row gather and its deterministic scatter-add backward on the GPU.
 *
 * The backward must add dy rows into dweight in index order with no atomics. The ids are
 * sorted with a stable radix sort (positions as values), so each distinct id becomes a run
 * of positions in increasing order; the thread owning (run, column) adds those dy rows one
 * after another. The sums are therefore formed in exactly the CPU's order. */
#include "tensor/cuda/common.cuh"
#include "tensor/cuda/embedding_kernels.cuh"

#include <cub/device/device_radix_sort.cuh>
#include <limits.h>

template <typename U>
static void launch_embedding(char *out, const struct tensor *o, const char *w, const struct tensor *weight,
                             const char *ids, bool i64, int64_t sid, int64_t n, int64_t D, int64_t V,
                             unsigned long long *bad)
{
    k_embedding<U><<<cu_blocks(n * D, CU_THREADS * 4), CU_THREADS, 0, cu_stream()>>>(
        out, o->stride[0], o->stride[1], w, weight->stride[0], weight->stride[1], ids, i64, sid, n, D, V, bad);
}

enum status cuda_embedding(struct tensor *out, const struct tensor *weight, const struct tensor *ids)
{
    if (ids->dtype != DTYPE_I32 && ids->dtype != DTYPE_I64)
        return tensor_fail(STATUS_DTYPE, "embedding: ids must be i32 or i64, got %s", dtype_name(ids->dtype));
    if (weight->ndim != 2 || out->ndim != 2 || ids->ndim != 1 || out->dtype != weight->dtype)
        return tensor_fail(STATUS_SHAPE, "embedding: expects weight [V, D], ids [n] and out [n, D] of weight's dtype");
    const int64_t n = ids->shape[0], V = weight->shape[0], D = weight->shape[1];
    if (n == 0) return STATUS_OK;
    struct tensor *flag = cu_scratch(1);
    if (!flag) return tensor_status();
    unsigned long long *bad = reinterpret_cast<unsigned long long *>(cu_ptr(flag)), host_bad = ULLONG_MAX;
    enum status s = STATUS_OK;
    cudaError_t e = cudaMemsetAsync(bad, 0xff, 8, cu_stream());
    if (e == cudaSuccess) {
        char *po = cu_ptr(out);
        const char *pw = cu_ptr(weight), *pid = cu_ptr(ids);
        const bool i64 = ids->dtype == DTYPE_I64;
        switch (dtype_size(weight->dtype)) {
        case 2: launch_embedding<uint16_t>(po, out, pw, weight, pid, i64, ids->stride[0], n, D, V, bad); break;
        case 4: launch_embedding<uint32_t>(po, out, pw, weight, pid, i64, ids->stride[0], n, D, V, bad); break;
        default: launch_embedding<uint64_t>(po, out, pw, weight, pid, i64, ids->stride[0], n, D, V, bad); break;
        }
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) e = cudaMemcpyAsync(&host_bad, bad, 8, cudaMemcpyDeviceToHost, cu_stream());
    if (e == cudaSuccess) e = cudaStreamSynchronize(cu_stream());
    if (e != cudaSuccess) {
        s = tensor_fail(STATUS_DEVICE, "CUDA error %s (%s) in embedding at %s:%d", cudaGetErrorName(e), cudaGetErrorString(e),
                        __FILE__, __LINE__);
    } else if (host_bad != ULLONG_MAX) {
        /* fetch the offending id for the message */
        int64_t id = 0;
        const size_t esz = dtype_size(ids->dtype);
        const char *src = cu_ptr(ids) + (int64_t)host_bad * ids->stride[0] * (int64_t)esz;
        int32_t id32 = 0;
        e = cudaMemcpy(ids->dtype == DTYPE_I64 ? (void *)&id : (void *)&id32, src, esz, cudaMemcpyDeviceToHost);
        if (ids->dtype == DTYPE_I32) id = id32;
        s = tensor_fail(STATUS_VALUE, "embedding: id %lld at position %lld is outside the table of %lld rows",
                        e == cudaSuccess ? (long long)id : -1LL, (long long)host_bad, (long long)V);
    }
    tensor_free(flag);
    return s;
}

enum status cuda_embedding_backward(struct tensor *dweight, const struct tensor *dy, const struct tensor *ids)
{
    enum status s;
    if ((s = cu_need_float(dy, "embedding_backward")) || (s = cu_same_dtype(dweight, dy, "embedding_backward"))) return s;
    if (ids->dtype != DTYPE_I32 && ids->dtype != DTYPE_I64)
        return tensor_fail(STATUS_DTYPE, "embedding_backward: ids must be i32 or i64, got %s", dtype_name(ids->dtype));
    if (dweight->ndim != 2 || dy->ndim != 2 || ids->ndim != 1)
        return tensor_fail(STATUS_SHAPE, "embedding_backward: expects dweight [V, D], dy [n, D] and ids [n]");
    const int64_t n = ids->shape[0], V = dweight->shape[0], D = dweight->shape[1];
    if (n == 0 || D == 0) return STATUS_OK;
    int end_bit = 1;
    while (end_bit < 64 && ((unsigned long long)V >> end_bit)) end_bit++;   /* keys are <= V */
    cudaStream_t st = cu_stream();
    size_t temp_bytes = 0;
    CUDA_TRY(cub::DeviceRadixSort::SortPairs(NULL, temp_bytes, (const unsigned long long *)NULL,
                                             (unsigned long long *)NULL, (const int64_t *)NULL, (int64_t *)NULL, n, 0,
                                             end_bit, st));
    /* one scratch block: keys in/out, positions in/out, the sort's temporary storage */
    const int64_t words = 4 * n + (int64_t)(temp_bytes + 7) / 8;
    struct tensor *scratch = cu_scratch(words);
    if (!scratch) return tensor_status();
    int64_t *base = reinterpret_cast<int64_t *>(cu_ptr(scratch));
    unsigned long long *keys_in = reinterpret_cast<unsigned long long *>(base), *keys = keys_in + n;
    int64_t *pos_in = base + 2 * n, *pos = base + 3 * n;
    void *temp = base + 4 * n;
    k_embed_keys<<<cu_blocks(n, CU_THREADS), CU_THREADS, 0, st>>>(keys_in, pos_in, cu_ptr(ids), ids->dtype == DTYPE_I64,
                                                                   ids->stride[0], n, V);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess)
        e = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys, pos_in, pos, n, 0, end_bit, st);
    if (e == cudaSuccess) {
        const unsigned g = cu_blocks(n * D, CU_THREADS * 4);
        if (dy->dtype == DTYPE_F32)
            k_embed_bwd<float><<<g, CU_THREADS, 0, st>>>(reinterpret_cast<float *>(cu_ptr(dweight)), dweight->stride[0],
                                                        dweight->stride[1], reinterpret_cast<const float *>(cu_ptr(dy)),
                                                        dy->stride[0], dy->stride[1], keys, pos, n, D, V);
        else
            k_embed_bwd<double><<<g, CU_THREADS, 0, st>>>(reinterpret_cast<double *>(cu_ptr(dweight)), dweight->stride[0],
                                                         dweight->stride[1], reinterpret_cast<const double *>(cu_ptr(dy)),
                                                         dy->stride[0], dy->stride[1], keys, pos, n, D, V);
        e = cudaGetLastError();
    }
    tensor_free(scratch);   /* back to the cache; later users queue behind these kernels */
    CUDA_TRY(e);
    return STATUS_OK;
}
