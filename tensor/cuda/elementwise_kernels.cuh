/* elementwise_kernels.cuh — elementwise.cu's device code: the op functors (unary, its backward,
 * binary, where; the formulas of tensor/cpu/elementwise_impl.h), the dense kernel (16-byte vectors
 * and a tail) and the strided one (per-operand offsets through cu_iter), dtype conversion on the
 * CPU's rules (tensor/half.h's bits), raw copy and fill. Included by elementwise.cu, and by
 * tests/test_ew_emu.cpp on the host through tests/cuda_emu.h, which compares them with the CPU
 * backend. Needs <math.h>, <stdint.h> and iter.cuh. */
#ifndef TENSOR_CUDA_ELEMENTWISE_KERNELS_CUH
#define TENSOR_CUDA_ELEMENTWISE_KERNELS_CUH

#include "tensor/half.h"

/* ---------------------------------------------------------------- conversions
 * tensor/half.h is shared with tensor.c, so a conversion gives the same bits on both devices
 * (NaN payloads included). */
__device__ __forceinline__ float cu_bf16_to_f32(uint16_t h) { return __uint_as_float(half_bf16_to_f32_bits(h)); }
__device__ __forceinline__ uint16_t cu_f32_to_bf16(float f) { return half_f32_bits_to_bf16(__float_as_uint(f)); }
__device__ __forceinline__ float cu_f16_to_f32(uint16_t h) { return __uint_as_float(half_f16_to_f32_bits(h)); }
__device__ __forceinline__ uint16_t cu_f32_to_f16(float f) { return half_f32_bits_to_f16(__float_as_uint(f)); }

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

/* which kernel ew_run (elementwise.cu) launches, and its grid: the dense kernel with vectors of
 * 16 bytes when every operand is one dense run and every pointer 16-byte aligned (V = 1 if not
 * aligned or shorter than a vector), else the strided kernel, in 32-bit index math where every
 * offset fits */
enum ew_kind { EW_CONTIG_VEC, EW_CONTIG, EW_STRIDED32, EW_STRIDED64 };

template <typename T, int NIN> static inline ew_kind ew_pick(const cu_iter<NIN + 1> &it, const ew_ptrs<NIN> &p, unsigned *grid)
{
    constexpr int V = 16 / sizeof(T);
    *grid = cu_blocks(it.numel, (int64_t)CU_THREADS * 4);
    if (!cu_iter_contiguous(&it)) return cu_iter_fits32(&it) ? EW_STRIDED32 : EW_STRIDED64;
    bool aligned = ((uintptr_t)p.out % 16) == 0;
    for (int k = 0; k < NIN; k++) aligned = aligned && ((uintptr_t)p.in[k] % 16) == 0;
    if (!aligned || it.numel < V) return EW_CONTIG;
    *grid = cu_blocks(it.numel, (int64_t)CU_THREADS * V * 4);
    return EW_CONTIG_VEC;
}

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

#endif
