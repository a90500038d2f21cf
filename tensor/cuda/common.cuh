/* common.cuh — what the core CUDA kernels' host code shares: checked cuBLAS calls, the stream,
 * scratch memory and dtype checks; with iter.cuh's launch sizes and strided iterator (which
 * mirrors cpu_iter, same dim collapsing, evaluated per element on the device with 32-bit index
 * math whenever the offsets fit). */
#ifndef TENSOR_CUDA_COMMON_CUH
#define TENSOR_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "tensor/cuda/cuda.h"
#include "tensor/cuda/iter.cuh"

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

#endif
