/* iter.cuh — launch sizes and the strided iterator of the core CUDA kernels (elementwise,
 * reductions, softmax, random): cu_iter mirrors cpu_iter (same dim collapsing) and is evaluated
 * per element on the device. Plain C++ besides __device__, so that tests/cuda_emu.h can run the
 * kernels that use it on the host (tests/test_rows_emu.cpp). Needs <stdint.h>; included by
 * common.cuh. */
#ifndef TENSOR_CUDA_ITER_CUH
#define TENSOR_CUDA_ITER_CUH

#include <stdint.h>

#include "tensor/tensor.h"

#define CU_THREADS 256

/* blocks for a grid-stride loop over n items with `per_block` items per block: enough to fill
 * any current GPU many times over, never more than needed */
static inline unsigned cu_blocks(int64_t n, int64_t per_block)
{
    int64_t b = (n + per_block - 1) / per_block;
    if (b > 65536) b = 65536;
    return (unsigned)(b < 1 ? 1 : b);
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

#endif
