/* softmax.cu — softmax / log_softmax over the last dim and their backward on the GPU.
 * The formulas of tensor/cpu/softmax.c (max in the input type, sums and exp in double); a
 * row is handled by one warp (rows up to 1024) or one block, with fixed reduction trees. */
#include "tensor/cuda/common.cuh"
#include "tensor/cuda/softmax_kernels.cuh"

#include <math.h>

template <typename T>
static enum status softmax_t(const rows_plan &r, struct tensor *out, const struct tensor *x, bool log_)
{
    const int64_t nrows = r.it.numel;
    if (nrows == 0 || r.n == 0) return STATUS_OK;
    T *po = reinterpret_cast<T *>(cu_ptr(out));
    const T *px = reinterpret_cast<const T *>(cu_ptr(x));
    if (r.n <= kSoftmaxWarpRow)
        k_softmax<T, 32><<<cu_blocks(nrows, CU_THREADS / 32), CU_THREADS, 0, cu_stream()>>>(po, px, r, nrows, log_);
    else
        k_softmax<T, CU_THREADS><<<cu_blocks(nrows, 1), CU_THREADS, 0, cu_stream()>>>(po, px, r, nrows, log_);
    CUDA_LAUNCHED();
    return STATUS_OK;
}

template <typename T>
static enum status softmax_bwd_t(const rows_plan &r, struct tensor *dx, const struct tensor *dy, const struct tensor *y,
                                 bool log_)
{
    const int64_t nrows = r.it.numel;
    if (nrows == 0 || r.n == 0) return STATUS_OK;
    T *pdx = reinterpret_cast<T *>(cu_ptr(dx));
    const T *pdy = reinterpret_cast<const T *>(cu_ptr(dy)), *py = reinterpret_cast<const T *>(cu_ptr(y));
    if (r.n <= kSoftmaxWarpRow)
        k_softmax_bwd<T, 32><<<cu_blocks(nrows, CU_THREADS / 32), CU_THREADS, 0, cu_stream()>>>(pdx, pdy, py, r, nrows, log_);
    else
        k_softmax_bwd<T, CU_THREADS><<<cu_blocks(nrows, 1), CU_THREADS, 0, cu_stream()>>>(pdx, pdy, py, r, nrows, log_);
    CUDA_LAUNCHED();
    return STATUS_OK;
}

enum status cuda_softmax(struct tensor *out, const struct tensor *x, bool log_)
{
    enum status s;
    if ((s = cu_need_float(x, "softmax")) || (s = cu_same_dtype(out, x, "softmax"))) return s;
    rows_plan r;
    const struct tensor *ts[2] = {out, x};
    plan_rows(&r, 2, ts);
    return x->dtype == DTYPE_F32 ? softmax_t<float>(r, out, x, log_) : softmax_t<double>(r, out, x, log_);
}

enum status cuda_softmax_backward(struct tensor *dx, const struct tensor *dy, const struct tensor *y, bool log_)
{
    enum status s;
    if ((s = cu_need_float(dy, "softmax_backward")) || (s = cu_same_dtype(dx, dy, "softmax_backward")) ||
        (s = cu_same_dtype(y, dy, "softmax_backward")))
        return s;
    rows_plan r;
    const struct tensor *ts[3] = {dx, dy, y};
    plan_rows(&r, 3, ts);
    return dy->dtype == DTYPE_F32 ? softmax_bwd_t<float>(r, dx, dy, y, log_) : softmax_bwd_t<double>(r, dx, dy, y, log_);
}
