/* softmax.cu — softmax / log_softmax over the last dim and their backward on the GPU.
 * The formulas of tensor/cpu/softmax.c (max in the input type, sums and exp in double); a
 * row is handled by one warp (rows up to 1024) or one block, with fixed reduction trees. */
#include "tensor/cuda/common.cuh"

#include <math.h>

struct rows_plan {
    cu_iter<3> it;   /* over (out, x, [third]) with the last dim removed */
    int64_t n;       /* row length */
    int64_t st[3];   /* stride of the last dim per operand */
};

static void plan_rows(struct rows_plan *r, int nops, const struct tensor *const *ts)
{
    struct tensor v[3];
    const struct tensor *vp[3];
    for (int k = 0; k < 3; k++) {
        const struct tensor *t = ts[k < nops ? k : 0];
        v[k] = *t;
        v[k].ndim = t->ndim - 1;
        r->st[k] = t->ndim ? t->stride[t->ndim - 1] : 1;
        vp[k] = &v[k];
    }
    r->n = ts[0]->ndim ? ts[0]->shape[ts[0]->ndim - 1] : 1;
    cu_iter_init<3>(&r->it, vp);
}

/* reduce v over the G threads of a group: a warp through shuffles, a block through shared
 * memory (sh: CU_THREADS doubles); every thread of the group gets the result */
template <int G, bool MAX>
__device__ __forceinline__ double group_reduce(double v, double *sh)
{
    if (G <= 32) {
#pragma unroll
        for (int w = G / 2; w > 0; w /= 2) {
            double o = __shfl_xor_sync(0xffffffffu, v, w, G);
            v = MAX ? (o > v ? o : v) : v + o;
        }
        return v;
    }
    const int lane = threadIdx.x % G;
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int w = G / 2; w > 0; w /= 2) {
        if (lane < w) {
            double o = sh[threadIdx.x + w], s = sh[threadIdx.x];
            sh[threadIdx.x] = MAX ? (o > s ? o : s) : s + o;
        }
        __syncthreads();
    }
    v = sh[threadIdx.x - lane];
    __syncthreads();
    return v;
}

template <typename T, int G>
__global__ void k_softmax(T *po, const T *px, rows_plan r, int64_t nrows, bool log_)
{
    __shared__ double sh[CU_THREADS];
    constexpr int GROUPS = CU_THREADS / G;
    const int lane = threadIdx.x % G;
    const int64_t n = r.n;
    for (int64_t row0 = (int64_t)blockIdx.x * GROUPS; row0 < nrows; row0 += (int64_t)gridDim.x * GROUPS) {
        const int64_t row = row0 + threadIdx.x / G;
        const bool live = row < nrows;   /* uniform per group; dead groups still join the block's barriers */
        int64_t off[3] = {0, 0, 0};
        if (live) cu_offsets<3, int64_t>(r.it, row, off);
        const T *x = px + off[1];
        T *o = po + off[0];
        double mx = -INFINITY, sum = 0;
        if (live)
            for (int64_t i = lane; i < n; i += G) {
                double v = (double)x[i * r.st[1]];
                mx = v > mx ? v : mx;
            }
        mx = group_reduce<G, true>(mx, sh);
        if (mx == -INFINITY) mx = 0;
        if (live)
            for (int64_t i = lane; i < n; i += G) sum += exp((double)x[i * r.st[1]] - mx);
        sum = group_reduce<G, false>(sum, sh);
        if (!live) continue;
        if (log_) {
            const double lse = mx + log(sum);
            for (int64_t i = lane; i < n; i += G) o[i * r.st[0]] = (T)((double)x[i * r.st[1]] - lse);
        } else {
            const double inv = 1.0 / sum;
            for (int64_t i = lane; i < n; i += G) o[i * r.st[0]] = (T)(exp((double)x[i * r.st[1]] - mx) * inv);
        }
    }
}

/* softmax: dx = y * (dy - sum(dy*y)); log_softmax: dx = dy - exp(y) * sum(dy) */
template <typename T, int G>
__global__ void k_softmax_bwd(T *pdx, const T *pdy, const T *py, rows_plan r, int64_t nrows, bool log_)
{
    __shared__ double sh[CU_THREADS];
    constexpr int GROUPS = CU_THREADS / G;
    const int lane = threadIdx.x % G;
    const int64_t n = r.n;
    for (int64_t row0 = (int64_t)blockIdx.x * GROUPS; row0 < nrows; row0 += (int64_t)gridDim.x * GROUPS) {
        const int64_t row = row0 + threadIdx.x / G;
        const bool live = row < nrows;
        int64_t off[3] = {0, 0, 0};
        if (live) cu_offsets<3, int64_t>(r.it, row, off);
        T *dx = pdx + off[0];
        const T *dy = pdy + off[1], *y = py + off[2];
        double dot = 0;
        if (live) {
            if (log_)
                for (int64_t i = lane; i < n; i += G) dot += (double)dy[i * r.st[1]];
            else
                for (int64_t i = lane; i < n; i += G) dot += (double)dy[i * r.st[1]] * (double)y[i * r.st[2]];
        }
        dot = group_reduce<G, false>(dot, sh);
        if (!live) continue;
        if (log_)
            for (int64_t i = lane; i < n; i += G)
                dx[i * r.st[0]] = (T)((double)dy[i * r.st[1]] - exp((double)y[i * r.st[2]]) * dot);
        else
            for (int64_t i = lane; i < n; i += G)
                dx[i * r.st[0]] = (T)((double)y[i * r.st[2]] * ((double)dy[i * r.st[1]] - dot));
    }
}

template <typename T>
static enum status softmax_t(const rows_plan &r, struct tensor *out, const struct tensor *x, bool log_)
{
    const int64_t nrows = r.it.numel;
    if (nrows == 0 || r.n == 0) return STATUS_OK;
    T *po = reinterpret_cast<T *>(cu_ptr(out));
    const T *px = reinterpret_cast<const T *>(cu_ptr(x));
    if (r.n <= 1024)
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
    if (r.n <= 1024)
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
