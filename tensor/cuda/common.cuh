/* common.cuh — what the core CUDA kernels share: checked cuBLAS calls, the stream, launch
 * sizes and a strided iterator that mirrors cpu_iter (same dim collapsing), evaluated per
 * element on the device with 32-bit index math whenever the offsets fit. */
#ifndef TENSOR_CUDA_COMMON_CUH
#define TENSOR_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "tensor/cuda/cuda.h"
#include "tensor/half.h"

#define CUBLAS_TRY(call)                                                                                   \
    do {                                                                                                   \
        cublasStatus_t e_ = (call);                                                                        \
        if (e_ != CUBLAS_STATUS_SUCCESS)                                                                   \
            return tensor_fail(STATUS_DEVICE, "cuBLAS error %s (%d) in %s at %s:%d", cublasGetStatusName(e_), \
                               (int)e_, #call, __FILE__, __LINE__);                                        \
    } while (0)

/* the backend's stream and cuBLAS handle (created by cuda_init) */
static inline cudaStream_t cu_stream(void) { return (cudaStream_t)cuda_stream(); }
cublasHandle_t cuda_blas_handle(void);

#define CU_THREADS 256

/* blocks for a grid-stride loop over n items with `per_block` items per block: enough to fill
 * any current GPU many times over, never more than needed */
static inline unsigned cu_blocks(int64_t n, int64_t per_block)
{
    int64_t b = (n + per_block - 1) / per_block;
    if (b > 65536) b = 65536;
    return (unsigned)(b < 1 ? 1 : b);
}

/* device pointer to element 0 of a tensor (its offset applied) */
static inline char *cu_ptr(const struct tensor *t)
{
    return (char *)t->storage->data + t->offset * (int64_t)dtype_size(t->dtype);
}

/* device scratch of `words` 8-byte words from the caching allocator, owned by the caller
 * (tensor_free it when done: blocks go back to the cache, and any later user of the block is
 * queued on the stream behind the kernels that still use it) */
static inline struct tensor *cu_scratch(int64_t words)
{
    const int64_t shape[1] = {words > 0 ? words : 1};
    return tensor_keep(tensor_empty(DTYPE_I64, 1, shape, DEVICE_CUDA));
}

/* f32 and f64 are the compute dtypes, as on the CPU; f16/bf16/ints are storage types */
static inline enum status cu_need_float(const struct tensor *t, const char *op)
{
    if (t->dtype == DTYPE_F32 || t->dtype == DTYPE_F64) return STATUS_OK;
    return tensor_fail(STATUS_DTYPE, "%s: dtype %s is not supported on the CUDA backend (use f32 or f64; "
                       "f16/bf16 are storage types: convert with tensor_to_dtype)", op, dtype_name(t->dtype));
}

static inline enum status cu_same_dtype(const struct tensor *a, const struct tensor *b, const char *op)
{
    if (a->dtype == b->dtype) return STATUS_OK;
    return tensor_fail(STATUS_DTYPE, "%s: dtype mismatch (%s vs %s)", op, dtype_name(a->dtype), dtype_name(b->dtype));
}

/* ---------------------------------------------------------------- strided iteration
 *
 * Up to NOPS same-shape operands. As in cpu_iter, dims of size 1 are dropped and neighbours
 * that are contiguous in every operand are merged. Dims are stored innermost first, so the
 * device walks them from dim 0 and the last one needs no division. */
template <int NOPS>
struct cu_iter {
    int ndim;
    int64_t numel;
    int64_t shape[TENSOR_MAX_DIMS];
    int64_t stride[NOPS][TENSOR_MAX_DIMS];
};

template <int NOPS>
static inline void cu_iter_init(cu_iter<NOPS> *it, const struct tensor *const *ts)
{
    const struct tensor *t0 = ts[0];
    int64_t shape[TENSOR_MAX_DIMS], stride[NOPS][TENSOR_MAX_DIMS];
    int nd = 0;
    it->numel = 1;
    for (int d = 0; d < t0->ndim; d++) it->numel *= t0->shape[d];
    for (int d = 0; d < t0->ndim; d++) {   /* outermost first, like cpu_iter */
        if (t0->shape[d] == 1) continue;
        bool merge = nd > 0;
        for (int k = 0; k < NOPS && merge; k++) merge = stride[k][nd - 1] == ts[k]->stride[d] * t0->shape[d];
        if (merge) {
            shape[nd - 1] *= t0->shape[d];
            for (int k = 0; k < NOPS; k++) stride[k][nd - 1] = ts[k]->stride[d];
        } else {
            shape[nd] = t0->shape[d];
            for (int k = 0; k < NOPS; k++) stride[k][nd] = ts[k]->stride[d];
            nd++;
        }
    }
    if (nd == 0) {
        nd = 1;
        shape[0] = 1;
        for (int k = 0; k < NOPS; k++) stride[k][0] = 1;
    }
    it->ndim = nd;
    for (int d = 0; d < nd; d++) {   /* reverse: innermost first */
        it->shape[d] = shape[nd - 1 - d];
        for (int k = 0; k < NOPS; k++) it->stride[k][d] = stride[k][nd - 1 - d];
    }
}

/* true when every operand is one dense run (the vectorisable case) */
template <int NOPS>
static inline bool cu_iter_contiguous(const cu_iter<NOPS> *it)
{
    if (it->ndim != 1) return false;
    for (int k = 0; k < NOPS; k++)
        if (it->stride[k][0] != 1 && it->shape[0] > 1) return false;
    return true;
}

/* can every element offset be computed in 32 bits? (strides are never negative here, but a
 * negative one would simply take the 64-bit path) */
template <int NOPS>
static inline bool cu_iter_fits32(const cu_iter<NOPS> *it)
{
    if (it->numel >= ((int64_t)1 << 31)) return false;
    for (int k = 0; k < NOPS; k++) {
        int64_t span = 0;
        for (int d = 0; d < it->ndim; d++) {
            if (it->stride[k][d] < 0) return false;
            span += (it->shape[d] - 1) * it->stride[k][d];
        }
        if (span >= ((int64_t)1 << 31)) return false;
    }
    return true;
}

/* element offsets (in elements) of the operands at logical row-major index i */
template <int NOPS, typename I>
__device__ __forceinline__ void cu_offsets(const cu_iter<NOPS> &it, I i, I (&off)[NOPS])
{
#pragma unroll
    for (int k = 0; k < NOPS; k++) off[k] = 0;
#pragma unroll
    for (int d = 0; d < TENSOR_MAX_DIMS; d++) {
        if (d == it.ndim - 1) {
#pragma unroll
            for (int k = 0; k < NOPS; k++) off[k] += i * (I)it.stride[k][d];
            break;
        }
        I s = (I)it.shape[d], q = i / s, r = i - q * s;
#pragma unroll
        for (int k = 0; k < NOPS; k++) off[k] += r * (I)it.stride[k][d];
        i = q;
    }
}

/* ---------------------------------------------------------------- conversions
 * tensor/half.h is shared with tensor.c, so a conversion gives the same bits on both devices
 * (NaN payloads included). */
__device__ __forceinline__ float cu_bf16_to_f32(uint16_t h) { return __uint_as_float(half_bf16_to_f32_bits(h)); }
__device__ __forceinline__ uint16_t cu_f32_to_bf16(float f) { return half_f32_bits_to_bf16(__float_as_uint(f)); }
__device__ __forceinline__ float cu_f16_to_f32(uint16_t h) { return __uint_as_float(half_f16_to_f32_bits(h)); }
__device__ __forceinline__ uint16_t cu_f32_to_f16(float f) { return half_f32_bits_to_f16(__float_as_uint(f)); }

#endif
