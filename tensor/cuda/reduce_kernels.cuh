/* reduce_kernels.cuh — reduce.cu's plan (kept and reduced dims, the chunking of reduce_pick)
 * and kernels (column, row and finishing passes of sum, max and argmax). Included by reduce.cu,
 * and by tests/test_rows_emu.cpp on the host through tests/cuda_emu.h. Needs <math.h> and
 * iter.cuh. */
#ifndef TENSOR_CUDA_REDUCE_KERNELS_CUH
#define TENSOR_CUDA_REDUCE_KERNELS_CUH

struct reduce_plan {
    cu_iter<2> kept;   /* over (out, a) restricted to the kept dims */
    cu_iter<1> red;    /* over a restricted to the reduced dims */
    int64_t nk, nr;
};

static inline void plan_reduce(struct reduce_plan *pl, const struct tensor *out, const struct tensor *a)
{
    struct tensor ko = *out, ka = *a, ra = *a;
    ko.ndim = ka.ndim = ra.ndim = 0;
    for (int d = 0; d < a->ndim; d++) {
        if (out->shape[d] == a->shape[d]) {
            ko.shape[ko.ndim] = out->shape[d];
            ko.stride[ko.ndim++] = out->stride[d];
            ka.shape[ka.ndim] = a->shape[d];
            ka.stride[ka.ndim++] = a->stride[d];
        } else {
            ra.shape[ra.ndim] = a->shape[d];
            ra.stride[ra.ndim++] = a->stride[d];
        }
    }
    const struct tensor *kt[2] = {&ko, &ka}, *rt[1] = {&ra};
    cu_iter_init<2>(&pl->kept, kt);
    cu_iter_init<1>(&pl->red, rt);
    pl->nk = pl->kept.numel;
    pl->nr = pl->red.numel;
}

struct acc_t {
    double v;
    int64_t i;
};

/* does (v1, i1) win over (v2, i2)? */
__device__ __forceinline__ bool max_wins(double v1, int64_t i1, double v2, int64_t i2)
{
    const bool n1 = v1 != v1, n2 = v2 != v2;
    if (n1 || n2) return n1 && (!n2 || i1 < i2);
    return v1 > v2 || (v1 == v2 && i1 < i2);
}

template <bool SUM>
__device__ __forceinline__ acc_t acc_combine(acc_t a, acc_t b)
{
    if (SUM) return {a.v + b.v, 0};
    return max_wins(b.v, b.i, a.v, a.i) ? b : a;
}

template <bool SUM>
__device__ __forceinline__ acc_t acc_init()
{
    return {SUM ? 0.0 : -INFINITY, 0};
}

/* reduce elements r0, r0+step, ... < r1 of the reduced space, from a's element `base` */
template <typename T, bool SUM>
__device__ __forceinline__ acc_t partial(const T *pa, int64_t base, const cu_iter<1> &red, int64_t r0, int64_t r1,
                                         int64_t step, acc_t acc)
{
    if (red.ndim == 1) {   /* one reduced run: no index math */
        const int64_t st = red.stride[0][0];
        for (int64_t r = r0; r < r1; r += step) {
            double v = (double)pa[base + r * st];
            if (SUM) acc.v += v;
            else if (max_wins(v, r, acc.v, acc.i)) acc = {v, r};
        }
    } else {
        for (int64_t r = r0; r < r1; r += step) {
            int64_t off[1];
            cu_offsets<1, int64_t>(red, r, off);
            double v = (double)pa[base + off[0]];
            if (SUM) acc.v += v;
            else if (max_wins(v, r, acc.v, acc.i)) acc = {v, r};
        }
    }
    return acc;
}

__device__ __forceinline__ void store_out(char *out, int dt, int64_t off, acc_t a, bool argmax)
{
    if (argmax) reinterpret_cast<int64_t *>(out)[off] = a.i;
    else if (dt == DTYPE_F32) reinterpret_cast<float *>(out)[off] = (float)a.v;
    else reinterpret_cast<double *>(out)[off] = a.v;
}

/* the result of (output k, chunk c): to the output itself when C == 1, else to the partials */
__device__ __forceinline__ void emit(acc_t a, int64_t k, int64_t c, int64_t C, const cu_iter<2> &kept, char *out,
                                     int odt, bool argmax, acc_t *part)
{
    if (C > 1) {
        part[k * C + c] = a;
    } else {
        int64_t off[2];
        cu_offsets<2, int64_t>(kept, k, off);
        store_out(out, odt, off[0], a, argmax);
    }
}

/* one thread per (output, chunk); threads of a warp take neighbouring outputs */
template <typename T, bool SUM>
__global__ void k_reduce_col(const T *pa, char *out, int odt, bool argmax, cu_iter<2> kept, cu_iter<1> red, int64_t nk,
                             int64_t nr, int64_t C, acc_t *part)
{
    const int64_t total = nk * C;
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
        const int64_t c = t / nk, k = t - c * nk;
        int64_t off[2];
        cu_offsets<2, int64_t>(kept, k, off);
        acc_t a = partial<T, SUM>(pa, off[1], red, nr * c / C, nr * (c + 1) / C, 1, acc_init<SUM>());
        emit(a, k, c, C, kept, out, odt, argmax, part);
    }
}

/* a group of G threads (a warp or a block) per (output, chunk) */
template <typename T, bool SUM, int G>
__global__ void k_reduce_row(const T *pa, char *out, int odt, bool argmax, cu_iter<2> kept, cu_iter<1> red, int64_t nk,
                             int64_t nr, int64_t C, acc_t *part)
{
    __shared__ acc_t sh[CU_THREADS];
    constexpr int GROUPS = CU_THREADS / G;
    const int lane = threadIdx.x % G, grp = threadIdx.x / G;
    const int64_t total = nk * C;
    for (int64_t t0 = (int64_t)blockIdx.x * GROUPS; t0 < total; t0 += (int64_t)gridDim.x * GROUPS) {
        const int64_t t = t0 + grp;
        acc_t a = acc_init<SUM>();
        int64_t k = 0, c = 0;
        if (t < total) {
            k = t / C;
            c = t - k * C;
            int64_t off[2];
            cu_offsets<2, int64_t>(kept, k, off);
            a = partial<T, SUM>(pa, off[1], red, nr * c / C + lane, nr * (c + 1) / C, G, a);
        }
        /* fixed tree over the group's lanes */
        if (G <= 32) {
#pragma unroll
            for (int w = G / 2; w > 0; w /= 2) {
                acc_t o;
                o.v = __shfl_down_sync(0xffffffffu, a.v, w, G);
                o.i = __shfl_down_sync(0xffffffffu, a.i, w, G);
                a = acc_combine<SUM>(a, o);
            }
        } else {
            sh[threadIdx.x] = a;
            __syncthreads();
            for (int w = G / 2; w > 0; w /= 2) {
                if (lane < w) sh[threadIdx.x] = acc_combine<SUM>(sh[threadIdx.x], sh[threadIdx.x + w]);
                __syncthreads();
            }
            a = sh[threadIdx.x];
            __syncthreads();
        }
        if (lane == 0 && t < total) emit(a, k, c, C, kept, out, odt, argmax, part);
    }
}

/* combine the C partials of each output in chunk order */
template <bool SUM>
__global__ void k_reduce_finish(const acc_t *part, char *out, int odt, bool argmax, cu_iter<2> kept, int64_t nk, int64_t C)
{
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < nk; k += (int64_t)gridDim.x * blockDim.x) {
        acc_t a = part[k * C];
        for (int64_t c = 1; c < C; c++) a = acc_combine<SUM>(a, part[k * C + c]);
        int64_t off[2];
        cu_offsets<2, int64_t>(kept, k, off);
        store_out(out, odt, off[0], a, argmax);
    }
}

static inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* how the reduction runs: the column plan (a thread a chunk) or the row plan (a group of G
 * threads a chunk), and C chunks per output */
struct reduce_shape {
    bool col;
    int G;
    int64_t C;
};

static inline reduce_shape reduce_pick(const struct reduce_plan *pl)
{
    const int64_t nk = pl->nk, nr = pl->nr;
    /* the column plan when the kept dims are dense in `a` and the reduced ones are not */
    const bool kept_dense = pl->kept.stride[1][0] == 1 && pl->kept.shape[0] > 1;
    const bool red_dense = pl->red.stride[0][0] == 1 && pl->red.shape[0] > 1;
    reduce_shape r;
    r.col = nr <= 8 || (kept_dense && !red_dense);
    /* chunks per output: enough independent work (~64K threads or ~2K groups), a chunk no
     * shorter than a few hundred elements, at most 1024 */
    r.G = nr >= 4096 ? CU_THREADS : 32;
    if (r.col) r.C = clamp64(nk >= 65536 ? 1 : (65536 + nk - 1) / nk, 1, clamp64(nr / 256, 1, 1024));
    else r.C = clamp64(nk >= 2048 ? 1 : (2048 + nk - 1) / nk, 1, clamp64(nr / (8 * (int64_t)r.G), 1, 1024));
    return r;
}

#endif
