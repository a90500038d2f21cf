/* norm_kernels.cuh — the device helpers of norm.cu (vectors of V elements, Welford states, the
 * block sum) and its two one-pass group_norm kernels for Hopper thread-block clusters: the
 * forward and the backward input gradient. Included by norm.cu inside its anonymous namespace, and
 * by tests/test_norm_emu.cpp on the host, where tests/cuda_emu.h stands in for the CUDA built-ins
 * (threads, barriers, shuffles, clusters and their distributed shared memory): so CI, which has no
 * GPU, runs these kernels' chunking and cluster-reduction logic against a float64 reference.
 * The cluster kernels keep all their shared state in dynamic shared memory (one layout per
 * kernel, below), so that the host emulation can give each block of a cluster its own.
 * Needs <stdint.h>, <math.h>, <type_traits> and, on the device, <cooperative_groups.h> and
 * <cuda_pipeline.h>; on the host, cuda_emu.h first. */
#ifndef TENSOR_CUDA_NORM_KERNELS_CUH
#define TENSOR_CUDA_NORM_KERNELS_CUH

#if defined(__CUDACC__) && !defined(DYN_SMEM)
#define DYN_SMEM(type, name) extern __shared__ type name[]
#endif

constexpr int kThreads = 256;
constexpr int kGnMaxCluster = 8;   /* the portable cluster size limit */

/* V consecutive elements (V = 4 only for float, 16-byte aligned) */
template <typename T, int V> struct alignas(sizeof(T) * V) vec { T v[V]; };

template <typename T, int V> __device__ __forceinline__ vec<T, V> load(const T *p)
{
    vec<T, V> r;
    if constexpr (V == 4 && std::is_same<T, float>::value) {
        float4 f = __ldg(reinterpret_cast<const float4 *>(p));
        r.v[0] = f.x; r.v[1] = f.y; r.v[2] = f.z; r.v[3] = f.w;
    } else {
#pragma unroll
        for (int i = 0; i < V; i++) r.v[i] = __ldg(p + i);
    }
    return r;
}

template <typename T, int V> __device__ __forceinline__ void store(T *p, const vec<T, V> &r)
{
    if constexpr (V == 4 && std::is_same<T, float>::value) {
        *reinterpret_cast<float4 *>(p) = make_float4(r.v[0], r.v[1], r.v[2], r.v[3]);
    } else {
#pragma unroll
        for (int i = 0; i < V; i++) p[i] = r.v[i];
    }
}

/* a merged Welford state (count, mean, M2), in double */
struct wsum { double n, mean, m2; };

/* sum over the block (kThreads threads) in a fixed order; every thread gets it. red: [kThreads/32] */
__device__ inline double block_sum(double v, double *red)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    double r = 0;
#pragma unroll
    for (int i = 0; i < kThreads / 32; i++) r += red[i];
    __syncthreads();   /* red may be reused */
    return r;
}

/* two sums at once (half the barriers of two block_sum calls). red: [kThreads/32] */
__device__ inline double2 block_sum2(double a, double b, double2 *red)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_down_sync(0xffffffffu, a, o);
        b += __shfl_down_sync(0xffffffffu, b, o);
    }
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = make_double2(a, b);
    __syncthreads();
    double2 r = make_double2(0, 0);
#pragma unroll
    for (int i = 0; i < kThreads / 32; i++) { r.x += red[i].x; r.y += red[i].y; }
    __syncthreads();
    return r;
}

/* ---------------------------------------------------------------- one-pass group_norm (clusters) */

/* Both kernels: grid (cluster size, N*G), one cluster per group; block `rank` owns the group's
 * elements [rank * chunk, min(ge, (rank + 1) * chunk)) (chunk % 4 == 0; a block may own none),
 * stages them in shared memory with cp.async, and the cluster exchanges per-block sums through
 * distributed shared memory, added in rank order (deterministic). A group is cg channels of HW
 * elements; V = 4 needs HW % 4 == 0 and 16-byte aligned tensors. */

__host__ __device__ constexpr size_t gn_align16(size_t n) { return (n + 15) / 16 * 16; }

/* forward: [head | xs: chunk floats | scale, shift: 2 * cg floats] */
struct gn_fwd_head {
    wsum blk, remote[kGnMaxCluster];
    double stat[2];
    double red[kThreads / 32];
};
__host__ __device__ constexpr size_t gn_fwd_smem(int cg, int chunk)
{
    return gn_align16(sizeof(gn_fwd_head)) + sizeof(float) * ((size_t)chunk + 2 * (size_t)cg);
}

/* Each block folds its chunk into an exact two-pass mean and M2 (sums only, no divisions in the
 * tree), the cluster merges the block states (Chan) in rank order, and each block normalises its
 * chunk from shared memory: x is read once and out written once. */
template <int V>
__global__ void __launch_bounds__(kThreads)
gn_fused_kernel(float *__restrict__ out, float *__restrict__ mean, float *__restrict__ rstd, const float *__restrict__ x,
                const float *__restrict__ w, const float *__restrict__ b, int C, int cg, int HW, int ge, int chunk,
                double eps)
{
    DYN_SMEM(float4, gn_smem4);
    unsigned char *base = reinterpret_cast<unsigned char *>(gn_smem4);
    gn_fwd_head &sh = *reinterpret_cast<gn_fwd_head *>(base);
    float *xs = reinterpret_cast<float *>(base + gn_align16(sizeof(gn_fwd_head))), *coef = xs + chunk;
    cooperative_groups::cluster_group cl = cooperative_groups::this_cluster();
    const int rank = (int)cl.block_rank(), ncl = (int)cl.num_blocks();
    const int64_t g = blockIdx.y;
    const int j0 = rank * chunk, j1 = min(ge, j0 + chunk);
    const float *xg = x + g * ge;
    for (int j = j0 + (int)threadIdx.x * V; j < j1; j += kThreads * V)
        __pipeline_memcpy_async(xs + (j - j0), xg + j, sizeof(float) * V);
    __pipeline_commit();
    /* while the chunk streams in: this group's w and b (raw, turned into scale/shift below) */
    const int c0 = (int)(g % (C / cg)) * cg;
    for (int i = threadIdx.x; i < cg; i += kThreads) {
        coef[i] = w ? w[c0 + i] : 1.f;
        coef[cg + i] = b ? b[c0 + i] : 0.f;
    }
    __pipeline_wait_prior(0);   /* each thread reads back only what it copied itself */
    const double nb = (double)max(j1 - j0, 0);
    float part = 0.f;
    for (int j = j0 + (int)threadIdx.x * V; j < j1; j += kThreads * V) {
        const vec<float, V> v = *reinterpret_cast<const vec<float, V> *>(xs + (j - j0));
#pragma unroll
        for (int i = 0; i < V; i++) part += v.v[i];
    }
    const double mb = nb > 0 ? block_sum(part, sh.red) / nb : 0.0;
    const float mbf = (float)mb;
    part = 0.f;
    for (int j = j0 + (int)threadIdx.x * V; j < j1; j += kThreads * V) {
        const vec<float, V> v = *reinterpret_cast<const vec<float, V> *>(xs + (j - j0));
#pragma unroll
        for (int i = 0; i < V; i++) part += (v.v[i] - mbf) * (v.v[i] - mbf);
    }
    const double m2b = block_sum(part, sh.red);
    if (threadIdx.x == 0) sh.blk = wsum{nb, mb, m2b};
    cl.sync();
    if ((int)threadIdx.x < ncl) sh.remote[threadIdx.x] = *cl.map_shared_rank(&sh.blk, (int)threadIdx.x);
    cl.sync();   /* every block has read the others' states: from here a block may finish and exit */
    if (threadIdx.x == 0) {
        double n = 0, sum = 0, m2 = 0;
        for (int i = 0; i < ncl; i++) n += sh.remote[i].n, sum += sh.remote[i].n * sh.remote[i].mean;
        const double mu = sum / n;
        for (int i = 0; i < ncl; i++) {
            const double d = sh.remote[i].mean - mu;
            m2 += sh.remote[i].m2 + sh.remote[i].n * d * d;
        }
        const double rs = 1.0 / sqrt(m2 / n + eps);
        sh.stat[0] = mu;
        sh.stat[1] = rs;
        if (rank == 0) {
            if (mean) mean[g] = (float)mu;
            if (rstd) rstd[g] = (float)rs;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < cg; i += kThreads) {
        const double sc = sh.stat[1] * (double)coef[i];
        coef[cg + i] = (float)((double)coef[cg + i] - sh.stat[0] * sc);
        coef[i] = (float)sc;
    }
    __syncthreads();
    float *og = out + g * ge;
    for (int j = j0 + (int)threadIdx.x * V; j < j1; j += kThreads * V) {
        vec<float, V> v = *reinterpret_cast<const vec<float, V> *>(xs + (j - j0));
        const int ci = j / HW;   /* one channel per vector: V == 4 only when HW % 4 == 0 */
        const float sc = coef[ci], sh2 = coef[cg + ci];
#pragma unroll
        for (int i = 0; i < V; i++) v.v[i] = v.v[i] * sc + sh2;
        store<float, V>(og + j, v);
    }
}

/* backward: [head | part: cg double2 | tot: cg double2 | k1: cg floats | xs, dys: chunk floats each] */
struct gn_bwd_head {
    double2 red[kThreads / 32];
    double2 k;   /* (k2, k3) of dx = k1[c] * dy + k2 * x + k3 */
};
struct gn_bwd_layout {
    size_t part, tot, k1, xs, dys, bytes;
};
__host__ __device__ constexpr gn_bwd_layout gn_bwd_smem(int cg, int chunk)
{
    const size_t part = gn_align16(sizeof(gn_bwd_head)), tot = part + 16 * (size_t)cg, k1 = tot + 16 * (size_t)cg;
    const size_t xs = gn_align16(k1 + sizeof(float) * (size_t)cg), dys = xs + sizeof(float) * (size_t)chunk;
    return gn_bwd_layout{part, tot, k1, xs, dys, dys + sizeof(float) * (size_t)chunk};
}

/* The input gradient in one pass: dy and x are read once, dx written once.
 *   dx = rstd * w[c] * dy + k2 * x + k3, with, over the group (m = cg * HW elements),
 *   k2 = -rstd^3 * sum_c w[c] (sum dy*x - mean * sum dy) / m,  k3 = -rstd * sum_c w[c] sum dy / m - k2 * mean.
 * Each block sums dy and dy*x per channel over its chunk, the cluster adds the blocks' sums in rank
 * order, and block 0 also writes them to ab[n * C + c] (as gn_bwd_plane_kernel does: dw and db are
 * summed from there over N). The same arithmetic as the two-kernel path, in a different order. */
template <int V>
__global__ void __launch_bounds__(kThreads)
gn_bwd_fused_kernel(float *__restrict__ dx, double2 *__restrict__ ab, const float *__restrict__ dy,
                    const float *__restrict__ x, const float *__restrict__ w, const float *__restrict__ mean,
                    const float *__restrict__ rstd, int C, int cg, int HW, int ge, int chunk)
{
    DYN_SMEM(float4, gn_smem4);
    unsigned char *base = reinterpret_cast<unsigned char *>(gn_smem4);
    const gn_bwd_layout lay = gn_bwd_smem(cg, chunk);
    gn_bwd_head &sh = *reinterpret_cast<gn_bwd_head *>(base);
    double2 *part = reinterpret_cast<double2 *>(base + lay.part), *tot = reinterpret_cast<double2 *>(base + lay.tot);
    float *k1 = reinterpret_cast<float *>(base + lay.k1), *xs = reinterpret_cast<float *>(base + lay.xs),
          *dys = reinterpret_cast<float *>(base + lay.dys);
    cooperative_groups::cluster_group cl = cooperative_groups::this_cluster();
    const int rank = (int)cl.block_rank(), ncl = (int)cl.num_blocks();
    const int64_t g = blockIdx.y;
    const int j0 = rank * chunk, j1 = min(ge, j0 + chunk);
    const float *xg = x + g * ge, *dyg = dy + g * ge;
    for (int j = j0 + (int)threadIdx.x * V; j < j1; j += kThreads * V) {
        __pipeline_memcpy_async(xs + (j - j0), xg + j, sizeof(float) * V);
        __pipeline_memcpy_async(dys + (j - j0), dyg + j, sizeof(float) * V);
    }
    __pipeline_commit();
    const int c0 = (int)(g % (C / cg)) * cg;
    const double rs = (double)rstd[g];
    for (int i = threadIdx.x; i < cg; i += kThreads) {
        k1[i] = (float)(rs * (w ? (double)w[c0 + i] : 1.0));
        part[i] = make_double2(0, 0);
    }
    __pipeline_wait_prior(0);
    __syncthreads();   /* the per-channel sums read what other threads copied */
    /* the channels this chunk touches (none when it is empty): sum dy and dy*x over each */
    const int ca = j0 / HW, cb = j1 > j0 ? (j1 - 1) / HW : ca - 1;
    for (int ci = ca; ci <= cb; ci++) {   /* uniform over the block */
        const int a = max(j0, ci * HW), e = min(j1, (ci + 1) * HW);   /* a - j0, e - a: multiples of V */
        double sa = 0, sb = 0;
        for (int j = a + (int)threadIdx.x * V; j < e; j += kThreads * V) {
            const vec<float, V> gv = *reinterpret_cast<const vec<float, V> *>(dys + (j - j0));
            const vec<float, V> xv = *reinterpret_cast<const vec<float, V> *>(xs + (j - j0));
            float fa = 0.f, fb = 0.f;
#pragma unroll
            for (int i = 0; i < V; i++) { fa += gv.v[i]; fb += gv.v[i] * xv.v[i]; }
            sa += (double)fa;
            sb += (double)fb;
        }
        const double2 s = block_sum2(sa, sb, sh.red);
        if (threadIdx.x == 0) part[ci] = s;
    }
    cl.sync();   /* every block's part[] is complete */
    for (int i = threadIdx.x; i < cg; i += kThreads) {
        double sa = 0, sb = 0;
        for (int r = 0; r < ncl; r++) {
            const double2 v = cl.map_shared_rank(part, r)[i];
            sa += v.x;
            sb += v.y;
        }
        tot[i] = make_double2(sa, sb);
        if (rank == 0) ab[g * cg + i] = tot[i];   /* plane n * C + c0 + i */
    }
    cl.sync();   /* every block has read the others' part[]: from here a block may finish and exit */
    if (threadIdx.x == 0) {
        const double mu = (double)mean[g];
        double s1 = 0, s2 = 0;   /* sum dy*w, sum dy*w*(x - mean) */
        for (int i = 0; i < cg; i++) {
            const double wc = w ? (double)w[c0 + i] : 1.0;
            s1 += wc * tot[i].x;
            s2 += wc * (tot[i].y - mu * tot[i].x);
        }
        const double m = (double)cg * (double)HW;
        const double k2 = -rs * rs * rs * s2 / m;
        sh.k = make_double2(k2, -rs * s1 / m - k2 * mu);
    }
    __syncthreads();
    const float k2 = (float)sh.k.x, k3 = (float)sh.k.y;
    float *dxg = dx + g * ge;
    for (int j = j0 + (int)threadIdx.x * V; j < j1; j += kThreads * V) {
        vec<float, V> gv = *reinterpret_cast<const vec<float, V> *>(dys + (j - j0));
        const vec<float, V> xv = *reinterpret_cast<const vec<float, V> *>(xs + (j - j0));
        const float f = k1[j / HW];
#pragma unroll
        for (int i = 0; i < V; i++) gv.v[i] = f * gv.v[i] + k2 * xv.v[i] + k3;
        store<float, V>(dxg + j, gv);
    }
}

#endif
