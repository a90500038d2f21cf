/* elementwise.cu — copy (with dtype conversion), fill, unary, unary_backward, binary and where
 * on the GPU, any strides. The formulas are those of tensor/cpu/elementwise_impl.h.
 *
 * Two paths per op: operands that are one dense run each (the usual case) go through a flat
 * kernel with 16-byte vector loads when every pointer is aligned; anything else (transposed
 * views, stride-0 broadcasts, narrowed dims) through a kernel that turns the logical index into
 * per-operand offsets over up to 8 collapsed dims, in 32-bit arithmetic when the sizes allow. */
#include "tensor/cuda/common.cuh"

#include <string.h>

/* ---------------------------------------------------------------- math, one name per type */

__device__ __forceinline__ float m_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double m_abs(double x) { return fabs(x); }
__device__ __forceinline__ float m_exp(float x) { return expf(x); }
__device__ __forceinline__ double m_exp(double x) { return exp(x); }
__device__ __forceinline__ float m_log(float x) { return logf(x); }
__device__ __forceinline__ double m_log(double x) { return log(x); }
__device__ __forceinline__ float m_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double m_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float m_sin(float x) { return sinf(x); }
__device__ __forceinline__ double m_sin(double x) { return sin(x); }
__device__ __forceinline__ float m_cos(float x) { return cosf(x); }
__device__ __forceinline__ double m_cos(double x) { return cos(x); }
__device__ __forceinline__ float m_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double m_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float m_erf(float x) { return erff(x); }
__device__ __forceinline__ double m_erf(double x) { return erf(x); }
__device__ __forceinline__ float m_pow(float x, float p) { return powf(x, p); }
__device__ __forceinline__ double m_pow(double x, double p) { return pow(x, p); }

/* ---------------------------------------------------------------- op functors
 * Each takes the operands' values at one element (v[0], v[1], ...) and returns the result;
 * the op is a template argument so every kernel body is a straight line. */

template <int OP, typename T>
struct unary_f {
    T p0, p1;
    __device__ __forceinline__ T operator()(const T *v) const
    {
        const T x = v[0];
        const T k_sqrt1_2 = (T)0.70710678118654752440, k_gelu = (T)0.79788456080286535588;
        switch (OP) {
        case UNARY_NEG: return -x;
        case UNARY_ABS: return m_abs(x);
        case UNARY_EXP: return m_exp(x);
        case UNARY_LOG: return m_log(x);
        case UNARY_SQRT: return m_sqrt(x);
        case UNARY_RSQRT: return (T)1 / m_sqrt(x);
        case UNARY_SIN: return m_sin(x);
        case UNARY_COS: return m_cos(x);
        case UNARY_TANH: return m_tanh(x);
        case UNARY_SIGMOID: return (T)1 / ((T)1 + m_exp(-x));
        case UNARY_SILU: return x / ((T)1 + m_exp(-x));
        case UNARY_RELU: return x > 0 ? x : (T)0;
        case UNARY_GELU: return (T)0.5 * x * ((T)1 + m_erf(x * k_sqrt1_2));
        case UNARY_GELU_TANH: return (T)0.5 * x * ((T)1 + m_tanh(k_gelu * (x + (T)0.044715 * x * x * x)));
        case UNARY_QUICK_GELU: return x / ((T)1 + m_exp((T)-1.702 * x));
        case UNARY_POW: return m_pow(x, p0);
        case UNARY_CLAMP: return x < p0 ? p0 : x > p1 ? p1 : x;
        case UNARY_AFFINE: return p0 * x + p1;
        case UNARY_SQUARE: return x * x;
        case UNARY_RECIPROCAL: return (T)1 / x;
        default: return x;
        }
    }
};

/* v = {dy, x, y}; x or y is 0 where the caller passed none (the rule then does not read it) */
template <int OP, typename T>
struct unary_bwd_f {
    T p0, p1;
    __device__ __forceinline__ T operator()(const T *v) const
    {
        const T g = v[0], x = v[1], y = v[2];
        const T k_sqrt1_2 = (T)0.70710678118654752440, k_gelu = (T)0.79788456080286535588;
        const T k_inv_sqrt2pi = (T)0.39894228040143267794;
        (void)p1;
        switch (OP) {
        case UNARY_NEG: return -g;
        case UNARY_ABS: return x > 0 ? g : x < 0 ? -g : (T)0;
        case UNARY_EXP: return g * y;
        case UNARY_LOG: return g / x;
        case UNARY_SQRT: return g * (T)0.5 / y;
        case UNARY_RSQRT: return g * (T)-0.5 * y * y * y;
        case UNARY_SIN: return g * m_cos(x);
        case UNARY_COS: return -g * m_sin(x);
        case UNARY_TANH: return g * ((T)1 - y * y);
        case UNARY_SIGMOID: return g * y * ((T)1 - y);
        case UNARY_SILU: {
            T s = (T)1 / ((T)1 + m_exp(-x));
            return g * s * ((T)1 + x * ((T)1 - s));
        }
        case UNARY_RELU: return x > 0 ? g : (T)0;
        case UNARY_GELU:
            return g * ((T)0.5 * ((T)1 + m_erf(x * k_sqrt1_2)) + x * k_inv_sqrt2pi * m_exp((T)-0.5 * x * x));
        case UNARY_GELU_TANH: {
            T u = k_gelu * (x + (T)0.044715 * x * x * x), t = m_tanh(u);
            T du = k_gelu * ((T)1 + (T)3 * (T)0.044715 * x * x);
            return g * ((T)0.5 * ((T)1 + t) + (T)0.5 * x * ((T)1 - t * t) * du);
        }
        case UNARY_QUICK_GELU: {
            T s = (T)1 / ((T)1 + m_exp((T)-1.702 * x));
            return g * (s + (T)1.702 * x * s * ((T)1 - s));
        }
        case UNARY_POW: return g * p0 * m_pow(x, p0 - (T)1);
        case UNARY_CLAMP: return x >= p0 && x <= p1 ? g : (T)0;
        case UNARY_AFFINE: return g * p0;
        case UNARY_SQUARE: return g * (T)2 * x;
        case UNARY_RECIPROCAL: return -g * y * y;
        default: return g;
        }
    }
};

template <int OP, typename T>
struct binary_f {
    __device__ __forceinline__ T operator()(const T *v) const
    {
        const T a = v[0], b = v[1];
        switch (OP) {
        case BINARY_ADD: return a + b;
        case BINARY_SUB: return a - b;
        case BINARY_MUL: return a * b;
        case BINARY_DIV: return a / b;
        case BINARY_MAXIMUM: return a != a ? a : (a >= b ? a : b);   /* NaN propagates, as in torch */
        case BINARY_MINIMUM: return a != a ? a : (a <= b ? a : b);
        case BINARY_GT: return a > b ? (T)1 : (T)0;
        case BINARY_GE: return a >= b ? (T)1 : (T)0;
        case BINARY_EQ: return a == b ? (T)1 : (T)0;
        default: return a;
        }
    }
};

template <typename T>
struct where_f {
    __device__ __forceinline__ T operator()(const T *v) const { return v[0] != 0 ? v[1] : v[2]; }
};

/* ---------------------------------------------------------------- generic kernels */

template <int NIN>
struct ew_ptrs {
    char *out;
    const char *in[NIN];   /* NULL: the operand is absent and reads as 0 */
};

template <typename T, int V>
struct alignas(sizeof(T) * V) vec_t {
    T v[V];
};

/* dense operands: V elements per step through one aligned vector access per operand */
template <typename T, int NIN, int V, class F>
__global__ void k_ew_contig(ew_ptrs<NIN> p, int64_t n, F f)
{
    const int64_t nv = n / V, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < nv; i += step) {
        vec_t<T, V> in[NIN], out;
#pragma unroll
        for (int k = 0; k < NIN; k++) {
            if (p.in[k]) in[k] = reinterpret_cast<const vec_t<T, V> *>(p.in[k])[i];
            else
#pragma unroll
                for (int j = 0; j < V; j++) in[k].v[j] = (T)0;
        }
#pragma unroll
        for (int j = 0; j < V; j++) {
            T v[NIN];
#pragma unroll
            for (int k = 0; k < NIN; k++) v[k] = in[k].v[j];
            out.v[j] = f(v);
        }
        reinterpret_cast<vec_t<T, V> *>(p.out)[i] = out;
    }
    /* the tail that does not fill a vector */
    for (int64_t i = nv * V + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        T v[NIN];
#pragma unroll
        for (int k = 0; k < NIN; k++) v[k] = p.in[k] ? reinterpret_cast<const T *>(p.in[k])[i] : (T)0;
        reinterpret_cast<T *>(p.out)[i] = f(v);
    }
}

template <typename T, int NIN, typename I, class F>
__global__ void k_ew_strided(ew_ptrs<NIN> p, cu_iter<NIN + 1> it, F f)
{
    const I n = (I)it.numel;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (I)gridDim.x * blockDim.x) {
        I off[NIN + 1];
        cu_offsets<NIN + 1, I>(it, i, off);
        T v[NIN];
#pragma unroll
        for (int k = 0; k < NIN; k++) v[k] = p.in[k] ? reinterpret_cast<const T *>(p.in[k])[off[k + 1]] : (T)0;
        reinterpret_cast<T *>(p.out)[off[0]] = f(v);
    }
}

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
    if (cu_iter_contiguous(&it)) {
        constexpr int V = 16 / sizeof(T);
        bool aligned = ((uintptr_t)p.out % 16) == 0;
        for (int k = 0; k < NIN; k++) aligned = aligned && ((uintptr_t)p.in[k] % 16) == 0;
        if (aligned && it.numel >= V)
            k_ew_contig<T, NIN, V, F><<<cu_blocks(it.numel, (int64_t)CU_THREADS * V * 4), CU_THREADS, 0, st>>>(p, it.numel, f);
        else
            k_ew_contig<T, NIN, 1, F><<<cu_blocks(it.numel, (int64_t)CU_THREADS * 4), CU_THREADS, 0, st>>>(p, it.numel, f);
    } else if (cu_iter_fits32(&it)) {
        k_ew_strided<T, NIN, uint32_t, F><<<cu_blocks(it.numel, (int64_t)CU_THREADS * 4), CU_THREADS, 0, st>>>(p, it, f);
    } else {
        k_ew_strided<T, NIN, int64_t, F><<<cu_blocks(it.numel, (int64_t)CU_THREADS * 4), CU_THREADS, 0, st>>>(p, it, f);
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

/* same dtype: move the bits, by element size */
template <typename U, typename I>
__global__ void k_copy_raw(char *dst, const char *src, cu_iter<2> it)
{
    const I n = (I)it.numel;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (I)gridDim.x * blockDim.x) {
        I off[2];
        cu_offsets<2, I>(it, i, off);
        reinterpret_cast<U *>(dst)[off[0]] = reinterpret_cast<const U *>(src)[off[1]];
    }
}

/* the CPU's load_as_double / store_double */
__device__ __forceinline__ double load_as_double(const char *base, int dt, int64_t i)
{
    switch (dt) {
    case DTYPE_F32: return reinterpret_cast<const float *>(base)[i];
    case DTYPE_F64: return reinterpret_cast<const double *>(base)[i];
    case DTYPE_F16: return cu_f16_to_f32(reinterpret_cast<const uint16_t *>(base)[i]);
    case DTYPE_BF16: return cu_bf16_to_f32(reinterpret_cast<const uint16_t *>(base)[i]);
    case DTYPE_I32: return reinterpret_cast<const int32_t *>(base)[i];
    case DTYPE_I64: return (double)reinterpret_cast<const int64_t *>(base)[i];
    default: return 0;
    }
}

__device__ __forceinline__ void store_double(char *base, int dt, int64_t i, double v)
{
    switch (dt) {
    case DTYPE_F32: reinterpret_cast<float *>(base)[i] = (float)v; break;
    case DTYPE_F64: reinterpret_cast<double *>(base)[i] = v; break;
    case DTYPE_F16: reinterpret_cast<uint16_t *>(base)[i] = cu_f32_to_f16((float)v); break;
    case DTYPE_BF16: reinterpret_cast<uint16_t *>(base)[i] = cu_f32_to_bf16((float)v); break;
    case DTYPE_I32: reinterpret_cast<int32_t *>(base)[i] = (int32_t)v; break;
    case DTYPE_I64: reinterpret_cast<int64_t *>(base)[i] = (int64_t)v; break;
    default: break;
    }
}

template <typename I>
__global__ void k_convert(char *dst, int ddt, const char *src, int sdt, cu_iter<2> it)
{
    const I n = (I)it.numel;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (I)gridDim.x * blockDim.x) {
        I off[2];
        cu_offsets<2, I>(it, i, off);
        store_double(dst, ddt, off[0], load_as_double(src, sdt, off[1]));
    }
}

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

template <typename U, typename I>
__global__ void k_fill(char *dst, U value, cu_iter<1> it)
{
    const I n = (I)it.numel;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (I)gridDim.x * blockDim.x) {
        I off[1];
        cu_offsets<1, I>(it, i, off);
        reinterpret_cast<U *>(dst)[off[0]] = value;
    }
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
