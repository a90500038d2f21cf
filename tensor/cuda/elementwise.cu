/* elementwise.cu — copy (with dtype conversion), fill, unary, unary_backward, binary and where
 * on the GPU, any strides. The formulas are those of tensor/cpu/elementwise_impl.h.
 *
 * Two paths per op: operands that are one dense run each (the usual case) go through a flat
 * kernel with 16-byte vector loads when every pointer is aligned; anything else (transposed
 * views, stride-0 broadcasts, narrowed dims) through a kernel that turns the logical index into
 * per-operand offsets over up to 8 collapsed dims, in 32-bit arithmetic when the sizes allow. */
#include "tensor/cuda/common.cuh"
#include "tensor/cuda/elementwise_kernels.cuh"

#include <string.h>

/* out = f(ins...) over out's shape; ins[k] may be NULL: it reads as 0, and out's strides
 * stand in for its own in the iterator (as the CPU kernels do with dy) */
template <typename T, int NIN, class F>
static enum status ew_run(F f, struct tensor *out, const struct tensor *const *ins)
{
    const struct tensor *ts[NIN + 1];
    ew_ptrs<NIN> p;
    ts[0] = out;
    p.out = cu_ptr(out);
    for (int k = 0; k < NIN; k++) {
        ts[k + 1] = ins[k] ? ins[k] : out;
        p.in[k] = ins[k] ? cu_ptr(ins[k]) : NULL;
    }
    cu_iter<NIN + 1> it;
    cu_iter_init<NIN + 1>(&it, ts);
    if (it.numel == 0) return STATUS_OK;
    cudaStream_t st = cu_stream();
    constexpr int V = 16 / sizeof(T);
    unsigned g;
    switch (ew_pick<T, NIN>(it, p, &g)) {
    case EW_CONTIG_VEC: k_ew_contig<T, NIN, V, F><<<g, CU_THREADS, 0, st>>>(p, it.numel, f); break;
    case EW_CONTIG: k_ew_contig<T, NIN, 1, F><<<g, CU_THREADS, 0, st>>>(p, it.numel, f); break;
    case EW_STRIDED32: k_ew_strided<T, NIN, uint32_t, F><<<g, CU_THREADS, 0, st>>>(p, it, f); break;
    default: k_ew_strided<T, NIN, int64_t, F><<<g, CU_THREADS, 0, st>>>(p, it, f); break;
    }
    CUDA_LAUNCHED();
    return STATUS_OK;
}

/* ---------------------------------------------------------------- unary */

#define UNARY_CASES(X)                                                                                     \
    X(UNARY_NEG) X(UNARY_ABS) X(UNARY_EXP) X(UNARY_LOG) X(UNARY_SQRT) X(UNARY_RSQRT) X(UNARY_SIN)          \
    X(UNARY_COS) X(UNARY_TANH) X(UNARY_SIGMOID) X(UNARY_SILU) X(UNARY_RELU) X(UNARY_GELU)                  \
    X(UNARY_GELU_TANH) X(UNARY_QUICK_GELU) X(UNARY_POW) X(UNARY_CLAMP) X(UNARY_AFFINE) X(UNARY_SQUARE)     \
    X(UNARY_RECIPROCAL)

template <typename T>
static enum status unary_t(enum unary_op op, struct tensor *out, const struct tensor *a, const double *p)
{
    const T p0 = p ? (T)p[0] : (T)0, p1 = p ? (T)p[1] : (T)0;
    const struct tensor *ins[1] = {a};
    switch (op) {
#define X(OP) case OP: return ew_run<T, 1>(unary_f<OP, T>{p0, p1}, out, ins);
        UNARY_CASES(X)
#undef X
    default: return tensor_fail(STATUS_VALUE, "unary: unknown op %d", (int)op);
    }
}

enum status cuda_unary(enum unary_op op, struct tensor *out, const struct tensor *a, const double *p)
{
    enum status s;
    if ((s = cu_need_float(a, "unary")) || (s = cu_same_dtype(out, a, "unary"))) return s;
    return a->dtype == DTYPE_F32 ? unary_t<float>(op, out, a, p) : unary_t<double>(op, out, a, p);
}

template <typename T>
static enum status unary_bwd_t(enum unary_op op, struct tensor *dx, const struct tensor *dy, const struct tensor *x,
                               const struct tensor *y, const double *p)
{
    const T p0 = p ? (T)p[0] : (T)0, p1 = p ? (T)p[1] : (T)0;
    const struct tensor *ins[3] = {dy, x, y};
    switch (op) {
#define X(OP) case OP: return ew_run<T, 3>(unary_bwd_f<OP, T>{p0, p1}, dx, ins);
        UNARY_CASES(X)
#undef X
    default: return tensor_fail(STATUS_VALUE, "unary_backward: unknown op %d", (int)op);
    }
}

enum status cuda_unary_backward(enum unary_op op, struct tensor *dx, const struct tensor *dy, const struct tensor *x,
                                const struct tensor *y, const double *p)
{
    enum status s;
    if ((s = cu_need_float(dy, "unary_backward")) || (s = cu_same_dtype(dx, dy, "unary_backward"))) return s;
    if ((x && (s = cu_same_dtype(x, dy, "unary_backward"))) || (y && (s = cu_same_dtype(y, dy, "unary_backward"))))
        return s;
    return dy->dtype == DTYPE_F32 ? unary_bwd_t<float>(op, dx, dy, x, y, p) : unary_bwd_t<double>(op, dx, dy, x, y, p);
}

/* ---------------------------------------------------------------- binary, where */

template <typename T>
static enum status binary_t(enum binary_op op, struct tensor *out, const struct tensor *a, const struct tensor *b)
{
    const struct tensor *ins[2] = {a, b};
    switch (op) {
#define X(OP) case OP: return ew_run<T, 2>(binary_f<OP, T>{}, out, ins);
        X(BINARY_ADD) X(BINARY_SUB) X(BINARY_MUL) X(BINARY_DIV) X(BINARY_MAXIMUM) X(BINARY_MINIMUM) X(BINARY_GT)
        X(BINARY_GE) X(BINARY_EQ)
#undef X
    default: return tensor_fail(STATUS_VALUE, "binary: unknown op %d", (int)op);
    }
}

enum status cuda_binary(enum binary_op op, struct tensor *out, const struct tensor *a, const struct tensor *b)
{
    enum status s;
    if ((s = cu_need_float(a, "binary")) || (s = cu_same_dtype(a, b, "binary")) || (s = cu_same_dtype(out, a, "binary")))
        return s;
    return a->dtype == DTYPE_F32 ? binary_t<float>(op, out, a, b) : binary_t<double>(op, out, a, b);
}

enum status cuda_where(struct tensor *out, const struct tensor *cond, const struct tensor *a, const struct tensor *b)
{
    enum status s;
    if ((s = cu_need_float(a, "where")) || (s = cu_same_dtype(a, b, "where")) || (s = cu_same_dtype(out, a, "where")) ||
        (s = cu_same_dtype(cond, a, "where")))
        return s;
    const struct tensor *ins[3] = {cond, a, b};
    return a->dtype == DTYPE_F32 ? ew_run<float, 3>(where_f<float>{}, out, ins) : ew_run<double, 3>(where_f<double>{}, out, ins);
}

/* ---------------------------------------------------------------- copy, fill */

template <typename I>
static void launch_copy_raw(size_t esz, char *dst, const char *src, const cu_iter<2> &it, cudaStream_t st)
{
    unsigned g = cu_blocks(it.numel, (int64_t)CU_THREADS * 4);
    switch (esz) {
    case 1: k_copy_raw<uint8_t, I><<<g, CU_THREADS, 0, st>>>(dst, src, it); break;
    case 2: k_copy_raw<uint16_t, I><<<g, CU_THREADS, 0, st>>>(dst, src, it); break;
    case 4: k_copy_raw<uint32_t, I><<<g, CU_THREADS, 0, st>>>(dst, src, it); break;
    default: k_copy_raw<uint64_t, I><<<g, CU_THREADS, 0, st>>>(dst, src, it); break;
    }
}

enum status cuda_copy(struct tensor *dst, const struct tensor *src)
{
    if (!tensor_same_shape(dst, src)) {
        char a[128], b[128];
        return tensor_fail(STATUS_SHAPE, "copy: destination %s and source %s differ", tensor_shape_str(dst, a, sizeof a),
                           tensor_shape_str(src, b, sizeof b));
    }
    const struct tensor *ts[2] = {dst, src};
    cu_iter<2> it;
    cu_iter_init<2>(&it, ts);
    if (it.numel == 0) return STATUS_OK;
    char *pd = cu_ptr(dst);
    const char *ps = cu_ptr(src);
    cudaStream_t st = cu_stream();
    const bool fits32 = cu_iter_fits32(&it);
    if (dst->dtype == src->dtype) {
        const size_t esz = dtype_size(dst->dtype);
        if (cu_iter_contiguous(&it)) {   /* one dense run: the copy engine */
            CUDA_TRY(cudaMemcpyAsync(pd, ps, (size_t)it.numel * esz, cudaMemcpyDeviceToDevice, st));
            return STATUS_OK;
        }
        if (fits32) launch_copy_raw<uint32_t>(esz, pd, ps, it, st);
        else launch_copy_raw<int64_t>(esz, pd, ps, it, st);
    } else {
        unsigned g = cu_blocks(it.numel, (int64_t)CU_THREADS * 4);
        if (fits32) k_convert<uint32_t><<<g, CU_THREADS, 0, st>>>(pd, dst->dtype, ps, src->dtype, it);
        else k_convert<int64_t><<<g, CU_THREADS, 0, st>>>(pd, dst->dtype, ps, src->dtype, it);
    }
    CUDA_LAUNCHED();
    return STATUS_OK;
}

template <typename I>
static void launch_fill(size_t esz, char *dst, uint64_t bits, const cu_iter<1> &it, cudaStream_t st)
{
    unsigned g = cu_blocks(it.numel, (int64_t)CU_THREADS * 4);
    switch (esz) {
    case 2: k_fill<uint16_t, I><<<g, CU_THREADS, 0, st>>>(dst, (uint16_t)bits, it); break;
    case 4: k_fill<uint32_t, I><<<g, CU_THREADS, 0, st>>>(dst, (uint32_t)bits, it); break;
    default: k_fill<uint64_t, I><<<g, CU_THREADS, 0, st>>>(dst, bits, it); break;
    }
}

enum status cuda_fill(struct tensor *dst, double value)
{
    /* the element's bits, converted on the host exactly as the CPU's store_double does */
    uint64_t bits = 0;
    switch (dst->dtype) {
    case DTYPE_F32: { float f = (float)value; memcpy(&bits, &f, 4); break; }
    case DTYPE_F64: memcpy(&bits, &value, 8); break;
    case DTYPE_F16: bits = f32_to_f16((float)value); break;
    case DTYPE_BF16: bits = f32_to_bf16((float)value); break;
    case DTYPE_I32: { int32_t v = (int32_t)value; memcpy(&bits, &v, 4); break; }
    case DTYPE_I64: { int64_t v = (int64_t)value; memcpy(&bits, &v, 8); break; }
    default: return tensor_fail(STATUS_DTYPE, "fill: unknown dtype %d", (int)dst->dtype);
    }
    const struct tensor *ts[1] = {dst};
    cu_iter<1> it;
    cu_iter_init<1>(&it, ts);
    if (it.numel == 0) return STATUS_OK;
    const size_t esz = dtype_size(dst->dtype);
    cudaStream_t st = cu_stream();
    if (bits == 0 && cu_iter_contiguous(&it)) {   /* zeros: a memset */
        CUDA_TRY(cudaMemsetAsync(cu_ptr(dst), 0, (size_t)it.numel * esz, st));
        return STATUS_OK;
    }
    if (cu_iter_fits32(&it)) launch_fill<uint32_t>(esz, cu_ptr(dst), bits, it, st);
    else launch_fill<int64_t>(esz, cu_ptr(dst), bits, it, st);
    CUDA_LAUNCHED();
    return STATUS_OK;
}
