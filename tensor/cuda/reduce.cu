/* reduce.cu — sum, max and argmax over any set of dims, any strides, on the GPU.
 *
 * Deterministic: no atomics. Every output is reduced in a fixed order that depends only on
 * the sizes (never on the GPU or on timing): the reduced range is cut into C chunks (C from
 * the sizes alone); a chunk is reduced either by one thread in index order ("column" plan:
 * used when the kept dims are the dense ones, so neighbouring threads read neighbouring
 * elements) or by a group of G threads, each taking every G-th element in order, combined by
 * a fixed tree ("row" plan: the reduced dims are the dense ones). A second kernel combines the
 * C partials of each output in chunk order. As on the CPU, f32 accumulates in double.
 *
 * max/argmax keep (value, index) pairs; a pair wins if its value is larger, NaN beats
 * everything, and ties go to the smaller index: the first maximum, as on the CPU. */
#include "tensor/cuda/common.cuh"
#include "tensor/cuda/reduce_kernels.cuh"

#include <math.h>

template <typename T, bool SUM>
static enum status reduce_t(const struct reduce_plan *pl, struct tensor *out, const struct tensor *a, bool argmax)
{
    const int64_t nk = pl->nk, nr = pl->nr;
    const T *pa = reinterpret_cast<const T *>(cu_ptr(a));
    char *po = cu_ptr(out);
    const int odt = out->dtype;
    cudaStream_t st = cu_stream();
    const reduce_shape sh = reduce_pick(pl);
    const bool col = sh.col;
    const int G = sh.G;
    const int64_t C = sh.C;
    struct tensor *tmp = NULL;
    acc_t *part = NULL;
    if (C > 1) {
        const int64_t words = nk * C * (int64_t)(sizeof(acc_t) / 8);
        tmp = cu_scratch(words);
        if (!tmp) return tensor_status();
        part = reinterpret_cast<acc_t *>(cu_ptr(tmp));
    }
    const int64_t total = nk * C;
    if (col) {
        k_reduce_col<T, SUM><<<cu_blocks(total, CU_THREADS), CU_THREADS, 0, st>>>(pa, po, odt, argmax, pl->kept, pl->red,
                                                                                  nk, nr, C, part);
    } else if (G == 32) {
        k_reduce_row<T, SUM, 32><<<cu_blocks(total, CU_THREADS / 32), CU_THREADS, 0, st>>>(pa, po, odt, argmax, pl->kept,
                                                                                          pl->red, nk, nr, C, part);
    } else {
        k_reduce_row<T, SUM, CU_THREADS><<<cu_blocks(total, 1), CU_THREADS, 0, st>>>(pa, po, odt, argmax, pl->kept,
                                                                                    pl->red, nk, nr, C, part);
    }
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess && C > 1) {
        k_reduce_finish<SUM><<<cu_blocks(nk, CU_THREADS), CU_THREADS, 0, st>>>(part, po, odt, argmax, pl->kept, nk, C);
        e = cudaGetLastError();
    }
    tensor_free(tmp);   /* back to the cache: later users are queued behind these kernels */
    CUDA_TRY(e);
    return STATUS_OK;
}

enum status cuda_reduce(enum reduce_op op, struct tensor *out, const struct tensor *a)
{
    enum status s;
    if ((s = cu_need_float(a, "reduce"))) return s;
    if (op == REDUCE_ARGMAX ? out->dtype != DTYPE_I64 : out->dtype != a->dtype)
        return tensor_fail(STATUS_DTYPE, "reduce: output dtype %s does not fit", dtype_name(out->dtype));
    if (out->ndim != a->ndim)
        return tensor_fail(STATUS_SHAPE, "reduce: output has %d dims, input %d (keepdim expected)", out->ndim, a->ndim);
    for (int d = 0; d < a->ndim; d++)
        if (out->shape[d] != a->shape[d] && out->shape[d] != 1)
            return tensor_fail(STATUS_SHAPE, "reduce: output dim %d has size %lld, input %lld", d,
                               (long long)out->shape[d], (long long)a->shape[d]);
    struct reduce_plan pl;
    plan_reduce(&pl, out, a);
    if (pl.nk == 0) return STATUS_OK;
    const bool sum = op == REDUCE_SUM, argmax = op == REDUCE_ARGMAX;
    if (a->dtype == DTYPE_F32) return sum ? reduce_t<float, true>(&pl, out, a, false) : reduce_t<float, false>(&pl, out, a, argmax);
    return sum ? reduce_t<double, true>(&pl, out, a, false) : reduce_t<double, false>(&pl, out, a, argmax);
}
