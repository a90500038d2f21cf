/* softmax_kernels.cuh — softmax.cu's row plan and kernels (softmax / log_softmax and their
 * backward over the last dim): a row to a warp when it has at most kSoftmaxWarpRow elements,
 * else to a block. Included by softmax.cu, and by tests/test_rows_emu.cpp on the host through
 * tests/cuda_emu.h. Needs <math.h> and iter.cuh. */
#ifndef TENSOR_CUDA_SOFTMAX_KERNELS_CUH
#define TENSOR_CUDA_SOFTMAX_KERNELS_CUH

constexpr int64_t kSoftmaxWarpRow = 1024;

struct rows_plan {
    cu_iter<3> it;   /* over (out, x, [third]) with the last dim removed */
    int64_t n;       /* row length */
    int64_t st[3];   /* stride of the last dim per operand */
};

static inline void plan_rows(struct rows_plan *r, int nops, const struct tensor *const *ts)
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

#endif
