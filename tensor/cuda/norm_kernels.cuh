/* norm_kernels.cuh — the device helpers of norm.cu (vectors of V elements, Welford states, the
 * block sums), its layer_norm kernels (forward, backward input, and the weight and bias
 * gradients' column partials and their sum), its two one-pass group_norm kernels for Hopper
 * thread-block clusters (the forward and the backward input gradient) and the two-pass
 * group_norm kernels every other case takes (f64, groups too large for a cluster,
 * DRAFT_GN_TWOPASS=1): statistics over chunks, normalisation, and the backward's per-plane sums,
 * per-group coefficients, dx and dw / db. Included by norm.cu inside
 * its anonymous namespace, and by tests/test_norm_emu.cpp on the host, where tests/cuda_emu.h
 * stands in for the CUDA built-ins (threads, barriers, shuffles, clusters and their distributed
 * shared memory): so CI, which has no GPU, runs these kernels' row, chunk and cluster-reduction
 * logic against a float64 reference.
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

/* Programmatic dependent launch (DRAFT_GN_PDL): a kernel launched with it may start before the
 * kernel ahead of it on the stream has finished. gn_grid_wait holds it, before its first global
 * access, until that kernel has completed and its writes are visible; gn_grid_release (once its
 * loads are issued) lets the next such kernel start. Both do nothing in a kernel launched without
 * it, and in the host emulation. */
__device__ __forceinline__ void gn_grid_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void gn_grid_release()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

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

/* Chan's merge of two states */
__device__ __forceinline__ wsum wmerge(wsum a, wsum b)
{
    const double n = a.n + b.n;
    if (b.n == 0) return a;
    if (a.n == 0) return b;
    const double d = b.mean - a.mean, f = b.n / n;
    return wsum{n, a.mean + d * f, a.m2 + b.m2 + d * d * a.n * f};
}

__device__ __forceinline__ wsum shfl_down(wsum s, int o)
{
    return wsum{__shfl_down_sync(0xffffffffu, s.n, o), __shfl_down_sync(0xffffffffu, s.mean, o),
                __shfl_down_sync(0xffffffffu, s.m2, o)};
}

/* two sums over the block (kThreads threads) in a fixed order; every thread gets them.
 * red: [kThreads/32] */
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

/* per-thread accumulation type: float for f32 (memory-bound kernels), double for f64 */
template <typename T> using acc_t = typename std::conditional<std::is_same<T, double>::value, double, float>::type;

/* ---------------------------------------------------------------- device helpers */

/* Welford state: per thread in A, merged in double */
template <typename A> struct wstate { A n, mean, m2; };

/* fold V values into a thread's state: the chunk's own mean/M2, then Chan's merge */
template <typename A, typename T, int V> __device__ __forceinline__ void welford_add(wstate<A> &s, const vec<T, V> &x)
{
    A cs = 0;
#pragma unroll
    for (int i = 0; i < V; i++) cs += (A)x.v[i];
    const A cm = cs * (A(1) / A(V));
    A cm2 = 0;
#pragma unroll
    for (int i = 0; i < V; i++) { A d = (A)x.v[i] - cm; cm2 += d * d; }
    const A nn = s.n + A(V);
    const A d = cm - s.mean, f = A(V) / nn;
    s.mean += d * f;
    s.m2 += cm2 + d * d * s.n * f;
    s.n = nn;
}

/* Merge the states of a group of GS threads (a warp, or the whole block when GS == blockDim);
 * every thread of the group gets the result. Fixed tree: deterministic. Call once per kernel. */
template <int GS> __device__ wsum group_welford(wsum s)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s = wmerge(s, shfl_down(s, o));
    if constexpr (GS == 32) {
        return wsum{__shfl_sync(0xffffffffu, s.n, 0), __shfl_sync(0xffffffffu, s.mean, 0),
                    __shfl_sync(0xffffffffu, s.m2, 0)};
    } else {
        __shared__ wsum part[GS / 32];
        __shared__ wsum res;
        const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
        if (lane == 0) part[warp] = s;
        __syncthreads();
        if (threadIdx.x == 0) {
            wsum r = part[0];
            for (int i = 1; i < GS / 32; i++) r = wmerge(r, part[i]);
            res = r;
        }
        __syncthreads();
        return res;
    }
}

/* sums of two values over a group of GS threads, every thread gets them (fixed tree) */
template <int GS> __device__ double2 group_sum2(double a, double b)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_down_sync(0xffffffffu, a, o);
        b += __shfl_down_sync(0xffffffffu, b, o);
    }
    if constexpr (GS == 32) {
        return make_double2(__shfl_sync(0xffffffffu, a, 0), __shfl_sync(0xffffffffu, b, 0));
    } else {
        __shared__ double2 part[GS / 32];
        __shared__ double2 res;
        const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
        if (lane == 0) part[warp] = make_double2(a, b);
        __syncthreads();
        if (threadIdx.x == 0) {
            double2 r = part[0];
            for (int i = 1; i < GS / 32; i++) { r.x += part[i].x; r.y += part[i].y; }
            res = r;
        }
        __syncthreads();
        return res;
    }
}

/* ---------------------------------------------------------------- layer_norm */

/* x, out: [rows, n] contiguous; GS threads per row; V elements per load */
template <typename T, int GS, int V>
__global__ void __launch_bounds__(kThreads)
ln_fwd_kernel(T *__restrict__ out, T *__restrict__ mean, T *__restrict__ rstd, const T *__restrict__ x,
              const T *__restrict__ w, const T *__restrict__ b, int64_t rows, int64_t n, double eps)
{
    using A = acc_t<T>;
    const int lane = threadIdx.x % GS;
    const int64_t row = (int64_t)blockIdx.x * (kThreads / GS) + threadIdx.x / GS;
    if (row >= rows) return;   /* uniform within a group */
    const T *xr = x + row * n;
    wstate<A> st = {0, 0, 0};
    for (int64_t j = (int64_t)lane * V; j < n; j += (int64_t)GS * V) welford_add<A, T, V>(st, load<T, V>(xr + j));
    const wsum s = group_welford<GS>(wsum{(double)st.n, (double)st.mean, (double)st.m2});
    const double var = s.m2 / (double)n, rs = 1.0 / sqrt(var + eps);
    if (lane == 0) {
        if (mean) mean[row] = (T)s.mean;
        if (rstd) rstd[row] = (T)rs;
    }
    const A mu = (A)s.mean, r = (A)rs;
    T *o = out + row * n;
    for (int64_t j = (int64_t)lane * V; j < n; j += (int64_t)GS * V) {
        vec<T, V> v = load<T, V>(xr + j);
#pragma unroll
        for (int i = 0; i < V; i++) {
            A y = ((A)v.v[i] - mu) * r;
            if (w) y *= (A)w[j + i];
            if (b) y += (A)b[j + i];
            v.v[i] = (T)y;
        }
        store<T, V>(o + j, v);
    }
}

/* dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w */
template <typename T, int GS, int V>
__global__ void __launch_bounds__(kThreads)
ln_bwd_dx_kernel(T *__restrict__ dx, const T *__restrict__ dy, const T *__restrict__ x, const T *__restrict__ w,
                 const T *__restrict__ mean, const T *__restrict__ rstd, int64_t rows, int64_t n)
{
    using A = acc_t<T>;
    const int lane = threadIdx.x % GS;
    const int64_t row = (int64_t)blockIdx.x * (kThreads / GS) + threadIdx.x / GS;
    if (row >= rows) return;
    const T *xr = x + row * n, *dyr = dy + row * n;
    const A mu = (A)mean[row], r = (A)rstd[row];
    double s1 = 0, s2 = 0;
    for (int64_t j = (int64_t)lane * V; j < n; j += (int64_t)GS * V) {
        vec<T, V> xv = load<T, V>(xr + j), gv = load<T, V>(dyr + j);
        A c1 = 0, c2 = 0;
#pragma unroll
        for (int i = 0; i < V; i++) {
            A g = (A)gv.v[i];
            if (w) g *= (A)w[j + i];
            c1 += g;
            c2 += g * (((A)xv.v[i] - mu) * r);
        }
        s1 += (double)c1;
        s2 += (double)c2;
    }
    const double2 s = group_sum2<GS>(s1, s2);
    const A m1 = (A)(s.x / (double)n), m2 = (A)(s.y / (double)n);
    T *o = dx + row * n;
    for (int64_t j = (int64_t)lane * V; j < n; j += (int64_t)GS * V) {
        vec<T, V> xv = load<T, V>(xr + j), gv = load<T, V>(dyr + j);
#pragma unroll
        for (int i = 0; i < V; i++) {
            A g = (A)gv.v[i];
            if (w) g *= (A)w[j + i];
            const A xh = ((A)xv.v[i] - mu) * r;
            xv.v[i] = (T)(r * (g - m1 - xh * m2));
        }
        store<T, V>(o + j, xv);
    }
}

/* dw/db partials: block (column strip of 32, row chunk); part[chunk][col] = (sum dy*xhat, sum dy) */
constexpr int kLnColRows = 8;
template <typename T>
__global__ void __launch_bounds__(32 * kLnColRows)
ln_bwd_wb_part_kernel(double2 *__restrict__ part, const T *__restrict__ dy, const T *__restrict__ x,
                      const T *__restrict__ mean, const T *__restrict__ rstd, int64_t rows, int64_t n, int64_t chunk)
{
    using A = acc_t<T>;
    __shared__ double2 sm[kLnColRows][33];
    const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
    const int64_t col = (int64_t)blockIdx.x * 32 + tx;
    const int64_t r0 = (int64_t)blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
    double sw = 0, sb = 0;
    if (col < n) {
        for (int64_t r = r0 + ty; r < r1; r += kLnColRows) {
            const A g = (A)dy[r * n + col];
            sw += (double)(g * (((A)x[r * n + col] - (A)mean[r]) * (A)rstd[r]));
            sb += (double)g;
        }
    }
    sm[ty][tx] = make_double2(sw, sb);
    __syncthreads();
    if (ty == 0 && col < n) {
        double2 acc = sm[0][tx];
        for (int i = 1; i < kLnColRows; i++) { acc.x += sm[i][tx].x; acc.y += sm[i][tx].y; }
        part[(int64_t)blockIdx.y * n + col] = acc;
    }
}

template <typename T>
__global__ void ln_bwd_wb_final_kernel(T *__restrict__ dw, T *__restrict__ db, const double2 *__restrict__ part,
                                       int64_t n, int nchunks)
{
    const int64_t col = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= n) return;
    double sw = 0, sb = 0;
    for (int c = 0; c < nchunks; c++) { sw += part[(int64_t)c * n + col].x; sb += part[(int64_t)c * n + col].y; }
    if (dw) dw[col] = (T)sw;
    if (db) db[col] = (T)sb;
}

/* ---------------------------------------------------------------- one-pass group_norm (clusters) */

/* Both kernels: grid (cluster size, N*G), one cluster per group; block `rank` owns the group's
 * elements [rank * chunk, min(ge, (rank + 1) * chunk)) (chunk % 4 == 0; a block may own none),
 * stages them in shared memory with cp.async, and the cluster exchanges per-block sums through
 * distributed shared memory, added in rank order (deterministic). A group is cg channels of HW
 * elements; V = 4 needs HW % 4 == 0 and 16-byte aligned tensors. */

__host__ __device__ constexpr size_t gn_align16(size_t n) { return (n + 15) / 16 * 16; }

/* DRAFT_GN_SUMS's statistics of a thread: the sums of x and x^2 in double, one pair per vector
 * lane (short chains), then the lanes' and the warp's in a fixed order */
template <int V> struct gn_lane_sums {
    double s[V], q[V];
    __device__ gn_lane_sums()
    {
#pragma unroll
        for (int i = 0; i < V; i++) s[i] = q[i] = 0.0;
    }
    __device__ void add(const vec<float, V> &v)
    {
#pragma unroll
        for (int i = 0; i < V; i++) {
            const double d = (double)v.v[i];
            s[i] += d;
            q[i] = fma(d, d, q[i]);
        }
    }
    /* the warp's (sum x, sum x^2), in lane 0 */
    __device__ double2 warp_total() const
    {
        double s1 = s[0], q1 = q[0];
#pragma unroll
        for (int i = 1; i < V; i++) s1 += s[i], q1 += q[i];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            s1 += __shfl_down_sync(0xffffffffu, s1, o);
            q1 += __shfl_down_sync(0xffffffffu, q1, o);
        }
        return make_double2(s1, q1);
    }
};

/* out = x * scale + shift of x's channel over a thread's runs in order: scale = rstd * w[c] and
 * shift = b[c] - mean * scale in double, rounded once, recomputed where the channel changes
 * (wb: the group's w then b, cg each) */
template <int V> struct gn_affine_out {
    const float *wb;
    int cg, HW;
    double mu, rs;
    int cur = -1;
    float sc = 0.f, sf = 0.f;
    __device__ gn_affine_out(const float *wb_, int cg_, int HW_, double mu_, double rs_) : wb(wb_), cg(cg_), HW(HW_), mu(mu_), rs(rs_) {}
    __device__ void put(float *og, int j, vec<float, V> v)
    {
        const int ci = j / HW;   /* one channel per vector: V == 4 only when HW % 4 == 0 */
        if (ci != cur) {
            const double scd = rs * (double)wb[ci];
            sc = (float)scd;
            sf = (float)((double)wb[cg + ci] - mu * scd);
            cur = ci;
        }
#pragma unroll
        for (int i = 0; i < V; i++) v.v[i] = v.v[i] * sc + sf;
        store<float, V>(og + j, v);
    }
};

/* forward: [head | xs: chunk floats | w, b: 2 * cg floats] */
struct gn_fwd_head {
    wsum warp[kThreads / 32];      /* this block's warps' states */
    wsum remote[kGnMaxCluster];    /* every block's state, written by that block */
    double2 wsums[kThreads / 32];  /* SUMS: this block's warps' (sum x, sum x^2) */
    double2 rsums[kGnMaxCluster];  /* SUMS: every block's, written by that block */
};
__host__ __device__ constexpr size_t gn_fwd_smem(int cg, int chunk)
{
    return gn_align16(sizeof(gn_fwd_head)) + sizeof(float) * ((size_t)chunk + 2 * (size_t)cg);
}

/* Each thread folds its own elements into an exact two-pass mean and M2 (no barrier), the warps
 * and then the block merge the states (Chan, fixed order), each block writes its state into every
 * block of the cluster (distributed shared memory), and after the cluster barrier every thread
 * merges the cluster's states in rank order and normalises its elements from shared memory: x is
 * read once and out written once, with one block barrier and one full cluster barrier between the
 * load and the store (the other one, that every block has started before any writes into it, is
 * split: arrive before the load, wait after it).
 * NV > 0 (V = 4, DRAFT_GN_REG=1): the chunk stays in registers instead, NV float4 per thread
 * (chunk <= NV * 4 * kThreads; gn_fwd_smem(cg, 0) of shared memory): no copy into shared memory
 * and no three passes over it, the same arithmetic in the same order, so the same bits.
 * SUMS (DRAFT_GN_SUMS, the default): the statistics as the sums of x and x^2 in double instead of
 * merged (count, mean, M2) states: x^2 of a float is exact in double, each thread folds its values
 * into V partial sums (one per vector lane: short chains), and warps, blocks and the cluster add
 * them in a fixed order. No division until the group's mean and variance (Chan's merge divides at
 * every step of its trees, and those divisions were the critical path between load and store);
 * var = E[x^2] - mean^2 in double is off by about 2^-53 (1 + mean^2 / var) relative per addition
 * on the longest chain (tens of them): under 1e-8 for a mean 1000 standard deviations from 0.
 * Not the same bits as the merges. */
template <int V, int NV = 0, bool SUMS = false>
__global__ void __launch_bounds__(kThreads)
gn_fused_kernel(float *__restrict__ out, float *__restrict__ mean, float *__restrict__ rstd, const float *__restrict__ x,
                const float *__restrict__ w, const float *__restrict__ b, int C, int cg, int HW, int ge, int chunk,
                double eps)
{
    static_assert(NV == 0 || V == 4, "the register variant reads float4 runs");
    DYN_SMEM(float4, gn_smem4);
    unsigned char *base = reinterpret_cast<unsigned char *>(gn_smem4);
    gn_fwd_head &sh = *reinterpret_cast<gn_fwd_head *>(base);
    float *xs = reinterpret_cast<float *>(base + gn_align16(sizeof(gn_fwd_head))), *wb = xs + (NV ? 0 : chunk);
    cooperative_groups::cluster_group cl = cooperative_groups::this_cluster();
    const int rank = (int)cl.block_rank(), ncl = (int)cl.num_blocks();
    const int64_t g = blockIdx.y;
    const int j0 = rank * chunk, j1 = min(ge, j0 + chunk);
    const float *xg = x + g * ge;
    vec<float, V> rv[NV ? NV : 1];
    gn_grid_wait();
    /* f(j, v) for each of this thread's runs, in order: element j of the group, its V values */
    auto each = [&](auto f) {
        if constexpr (NV > 0) {
#pragma unroll
            for (int i = 0; i < NV; i++) {
                const int j = j0 + ((int)threadIdx.x + i * kThreads) * V;
                if (j < j1) f(j, rv[i]);
            }
        } else {
            for (int j = j0 + (int)threadIdx.x * V; j < j1; j += kThreads * V)
                f(j, *reinterpret_cast<const vec<float, V> *>(xs + (j - j0)));
        }
    };
    if constexpr (NV > 0) {
#pragma unroll
        for (int i = 0; i < NV; i++) {   /* every load in flight before the first use */
            const int j = j0 + ((int)threadIdx.x + i * kThreads) * V;
            if (j < j1) rv[i] = load<float, V>(xg + j);
        }
    } else {
        for (int j = j0 + (int)threadIdx.x * V; j < j1; j += kThreads * V)
            __pipeline_memcpy_async(xs + (j - j0), xg + j, sizeof(float) * V);
        __pipeline_commit();
    }
    gn_grid_release();
    cl.barrier_arrive();   /* this block has started: the others may write into its shared memory
                              once everyone has (the wait below), while the chunk streams in */
    /* while the chunk streams in: this group's w and b */
    const int c0 = (int)(g % (C / cg)) * cg;
    for (int i = threadIdx.x; i < cg; i += kThreads) {
        wb[i] = w ? w[c0 + i] : 1.f;
        wb[cg + i] = b ? b[c0 + i] : 0.f;
    }
    if constexpr (NV == 0) __pipeline_wait_prior(0);   /* each thread reads back only what it copied itself */
    double mu, rs;
    if constexpr (SUMS) {
        gn_lane_sums<V> ls;
        each([&](int, const vec<float, V> &v) { ls.add(v); });
        const double2 wt = ls.warp_total();
        if (threadIdx.x % 32 == 0) sh.wsums[threadIdx.x / 32] = wt;
        __syncthreads();   /* the warp sums, and w and b, are in shared memory */
        cl.barrier_wait();
        if ((int)threadIdx.x < ncl) {   /* this block's sums, into block threadIdx.x's rsums[rank] */
            double2 bs = sh.wsums[0];
            for (int i = 1; i < kThreads / 32; i++) bs.x += sh.wsums[i].x, bs.y += sh.wsums[i].y;
            cl.map_shared_rank(sh.rsums, (int)threadIdx.x)[rank] = bs;
        }
        cl.sync();   /* every block's sums are in every block */
        double S = 0, Q = 0;
        for (int i = 0; i < ncl; i++) S += sh.rsums[i].x, Q += sh.rsums[i].y;
        mu = S / (double)ge;
        const double var = Q / (double)ge - mu * mu;
        rs = 1.0 / sqrt((var > 0 ? var : 0.0) + eps);
    } else {
        int cnt = 0;
        float sum = 0.f;
        each([&](int, const vec<float, V> &v) {
#pragma unroll
            for (int i = 0; i < V; i++) sum += v.v[i];
            cnt += V;
        });
        const float mt = cnt ? sum / (float)cnt : 0.f;
        float m2 = 0.f;
        each([&](int, const vec<float, V> &v) {
#pragma unroll
            for (int i = 0; i < V; i++) m2 += (v.v[i] - mt) * (v.v[i] - mt);
        });
        wsum st = {(double)cnt, (double)mt, (double)m2};
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) st = wmerge(st, shfl_down(st, o));
        if (threadIdx.x % 32 == 0) sh.warp[threadIdx.x / 32] = st;
        __syncthreads();   /* the warp states, and w and b, are in shared memory */
        cl.barrier_wait();
        if ((int)threadIdx.x < ncl) {   /* this block's state, into block threadIdx.x's remote[rank] */
            wsum bs = sh.warp[0];
            for (int i = 1; i < kThreads / 32; i++) bs = wmerge(bs, sh.warp[i]);
            cl.map_shared_rank(sh.remote, (int)threadIdx.x)[rank] = bs;
        }
        cl.sync();   /* every block's state is in every block; no block reads another's memory after this */
        double n = 0, s1 = 0, m2g = 0;
        for (int i = 0; i < ncl; i++) n += sh.remote[i].n, s1 += sh.remote[i].n * sh.remote[i].mean;
        mu = s1 / n;
        for (int i = 0; i < ncl; i++) {
            const double d = sh.remote[i].mean - mu;
            m2g += sh.remote[i].m2 + sh.remote[i].n * d * d;
        }
        rs = 1.0 / sqrt(m2g / n + eps);
    }
    if (rank == 0 && threadIdx.x == 0) {
        if (mean) mean[g] = (float)mu;
        if (rstd) rstd[g] = (float)rs;
    }
    float *og = out + g * ge;
    gn_affine_out<V> ao(wb, cg, HW, mu, rs);
    each([&](int j, const vec<float, V> &x4) { ao.put(og, j, x4); });
}

/* the register variants' sizes, float4 per thread: the smallest of 4, 8, .., 24 that holds the
 * chunk, 0 for none (every chunk that fits the 96 KB of the shared-memory kernel fits 24) */
__host__ __device__ constexpr int gn_reg_nv(int chunk)
{
    const int need = (chunk + 4 * kThreads - 1) / (4 * kThreads);
    return need > 24 ? 0 : need <= 4 ? 4 : (need + 3) / 4 * 4;
}

/* gn_fused_kernel<4, nv, sums> for nv = gn_reg_nv(chunk) > 0 */
using gn_fwd_fn = void (*)(float *, float *, float *, const float *, const float *, const float *, int, int, int, int, int,
                           double);
template <bool SUMS> inline gn_fwd_fn gn_fused_reg_kernel_t(int nv)
{
    switch (nv) {
    case 4: return gn_fused_kernel<4, 4, SUMS>;
    case 8: return gn_fused_kernel<4, 8, SUMS>;
    case 12: return gn_fused_kernel<4, 12, SUMS>;
    case 16: return gn_fused_kernel<4, 16, SUMS>;
    case 20: return gn_fused_kernel<4, 20, SUMS>;
    default: return gn_fused_kernel<4, 24, SUMS>;
    }
}
inline gn_fwd_fn gn_fused_reg_kernel(int nv, bool sums = false)
{
    return sums ? gn_fused_reg_kernel_t<true>(nv) : gn_fused_reg_kernel_t<false>(nv);
}

/* ---- the staged forward (DRAFT_GN_STAGED=1, opt-in until measured on a GPU)
 * gn_fused_kernel loads its whole chunk, then sums it, exchanges the sums over the cluster, and
 * only then writes: the memory system idles while the SMs sum, wait at the cluster's barrier and
 * normalise (Nsight Compute, H200: 10.2 us for 21 MB, under half a copy's rate). Here a cluster
 * of cl blocks normalises gpc groups (1, 2 or 4; block y of the grid has groups y * gpc + k), and
 * each block stages chunk elements of each of them, all requested at the start in
 * kGnStages = 8 cp.async groups, group after group (8 / gpc stages each, the most
 * cp.async.wait_group counts exactly). A thread sums each stage as it lands, and group k's
 * exchange, barrier and stores run while groups k + 1.. still stream in: the memory system
 * has work through all but the last group's exchange and stores.
 * Statistics as DRAFT_GN_SUMS's (double sums of x and x^2 per vector lane, warps, block, cluster
 * in a fixed order): with gpc = 1 the same bits as gn_fused_kernel<V, 0, true> at the same
 * cluster size and chunk. Layout: [head | xs: gpc * chunk floats | w, b: gpc * 2 * cg floats]. */
constexpr int kGnMaxGpc = 4;
constexpr int kGnStages = 8;
struct gn_staged_head {
    double2 wsums[kGnMaxGpc][kThreads / 32];   /* this block's warps' sums, per group */
    double2 rsums[kGnMaxGpc][kGnMaxCluster];   /* every block's, written by that block, per group */
};
__host__ __device__ constexpr size_t gn_staged_smem(int cg, int chunk, int gpc)
{
    return gn_align16(sizeof(gn_staged_head)) + sizeof(float) * (size_t)gpc * ((size_t)chunk + 2 * (size_t)cg);
}

template <int V>
__global__ void __launch_bounds__(kThreads)
gn_staged_kernel(float *__restrict__ out, float *__restrict__ mean, float *__restrict__ rstd, const float *__restrict__ x,
                 const float *__restrict__ w, const float *__restrict__ b, int C, int cg, int HW, int ge, int chunk, int gpc,
                 int NG, double eps)
{
    DYN_SMEM(float4, gn_smem4);
    unsigned char *base = reinterpret_cast<unsigned char *>(gn_smem4);
    gn_staged_head &sh = *reinterpret_cast<gn_staged_head *>(base);
    float *xs = reinterpret_cast<float *>(base + gn_align16(sizeof(gn_staged_head))), *wb = xs + (size_t)gpc * chunk;
    cooperative_groups::cluster_group cl = cooperative_groups::this_cluster();
    const int rank = (int)cl.block_rank(), ncl = (int)cl.num_blocks();
    const int g0 = (int)blockIdx.y * gpc, ng = min(gpc, NG - g0);   /* uniform over the cluster */
    const int j0 = rank * chunk, j1 = min(ge, j0 + chunk);
    const int S = kGnStages / gpc;
    const int per = (chunk + kThreads * V - 1) / (kThreads * V);   /* a thread's runs of a chunk, at most */
    const int sp = (per + S - 1) / S;                             /* ... of a stage */
    /* f(j, v) for this thread's runs of stage s of group k, in order: element j of the group */
    auto each = [&](int k, int s, auto f) {
        const float *xk = xs + (size_t)k * chunk;
        const int i1 = min(per, (s + 1) * sp);
        for (int i = s * sp; i < i1; i++) {
            const int j = j0 + ((int)threadIdx.x + i * kThreads) * V;
            if (j < j1) f(j, *reinterpret_cast<const vec<float, V> *>(xk + (j - j0)));
        }
    };
    gn_grid_wait();
    for (int k = 0; k < gpc; k++)   /* every group's stages in flight, in order; empty ones commit too */
        for (int s = 0; s < S; s++) {
            if (k < ng) {
                const float *xg = x + (int64_t)(g0 + k) * ge;
                float *xk = xs + (size_t)k * chunk;
                const int i1 = min(per, (s + 1) * sp);
                for (int i = s * sp; i < i1; i++) {
                    const int j = j0 + ((int)threadIdx.x + i * kThreads) * V;
                    if (j < j1) __pipeline_memcpy_async(xk + (j - j0), xg + j, sizeof(float) * V);
                }
            }
            __pipeline_commit();
        }
    gn_grid_release();
    cl.barrier_arrive();   /* started: see gn_fused_kernel */
    for (int i = threadIdx.x; i < ng * cg; i += kThreads) {   /* the groups' w and b, while x streams in */
        const int k = i / cg, c = (int)((g0 + k) % (C / cg)) * cg + (i - k * cg);
        wb[k * 2 * cg + (i - k * cg)] = w ? w[c] : 1.f;
        wb[k * 2 * cg + cg + (i - k * cg)] = b ? b[c] : 0.f;
    }
    for (int k = 0; k < ng; k++) {
        gn_lane_sums<V> ls;
        for (int s = 0; s < S; s++) {
            __pipeline_wait_prior(kGnStages - 1 - (k * S + s));   /* this thread's copies of stage s of group k */
            each(k, s, [&](int, const vec<float, V> &v) { ls.add(v); });
        }
        const double2 wt = ls.warp_total();
        if (threadIdx.x % 32 == 0) sh.wsums[k][threadIdx.x / 32] = wt;
        __syncthreads();   /* group k's warp sums (and, the first time, w and b) are in shared memory */
        if (k == 0) cl.barrier_wait();
        if ((int)threadIdx.x < ncl) {   /* this block's sums, into block threadIdx.x's rsums[k][rank] */
            double2 bs = sh.wsums[k][0];
            for (int i = 1; i < kThreads / 32; i++) bs.x += sh.wsums[k][i].x, bs.y += sh.wsums[k][i].y;
            cl.map_shared_rank(&sh.rsums[k][0], (int)threadIdx.x)[rank] = bs;
        }
        cl.sync();   /* every block's sums of group k are in every block (later groups' land in other slots) */
        double Sx = 0, Qx = 0;
        for (int i = 0; i < ncl; i++) Sx += sh.rsums[k][i].x, Qx += sh.rsums[k][i].y;
        const double mu = Sx / (double)ge, var = Qx / (double)ge - mu * mu;
        const double rs = 1.0 / sqrt((var > 0 ? var : 0.0) + eps);
        const int64_t g = g0 + k;
        if (rank == 0 && threadIdx.x == 0) {
            if (mean) mean[g] = (float)mu;
            if (rstd) rstd[g] = (float)rs;
        }
        float *og = out + g * ge;
        gn_affine_out<V> ao(wb + k * 2 * cg, cg, HW, mu, rs);
        for (int s = 0; s < S; s++) each(k, s, [&](int j, const vec<float, V> &x4) { ao.put(og, j, x4); });
    }
}

/* backward: [head | part: cg double2 | rpart: nb * kGnMaxCluster * cg double2 | tot: cg double2 |
 *            k1, ws: gpc * cg floats each | xs, dys: gpc * chunk floats each]
 * gpc groups a cluster (1; DRAFT_GN_STAGED_BWD: 2 or 4), nb = min(gpc, 2) buffers of rpart */
struct gn_bwd_head {
    double2 red[kThreads / 32];
    double2 k;   /* (k2, k3) of dx = k1[c] * dy + k2 * x + k3 */
    int last;    /* this block is the last to have written its group's sums (dw, db) */
};

/* The clusters of one gn_bwd_fused_kernel launch count here which of them finished its group's
 * sums last (atomicInc back to 0 by that one, so each launch starts from 0): one counter, so
 * these launches must not run concurrently (the engine has one stream). */
__device__ unsigned gn_bwd_done_ctr;
struct gn_bwd_layout {
    size_t part, rpart, tot, k1, ws, xs, dys, bytes;
};
__host__ __device__ constexpr gn_bwd_layout gn_bwd_smem(int cg, int chunk, int gpc = 1)
{
    const size_t nb = gpc > 1 ? 2 : 1, part = gn_align16(sizeof(gn_bwd_head)), rpart = part + 16 * (size_t)cg;
    const size_t tot = rpart + 16 * nb * (size_t)kGnMaxCluster * cg, k1 = tot + 16 * (size_t)cg;
    const size_t ws = k1 + sizeof(float) * (size_t)gpc * cg;
    const size_t xs = gn_align16(ws + sizeof(float) * (size_t)gpc * cg), dys = xs + sizeof(float) * (size_t)gpc * chunk;
    return gn_bwd_layout{part, rpart, tot, k1, ws, xs, dys, dys + sizeof(float) * (size_t)gpc * chunk};
}

/* The input gradient in one pass: dy and x are read once, dx written once.
 *   dx = rstd * w[c] * dy + k2 * x + k3, with, over the group (m = cg * HW elements),
 *   k2 = -rstd^3 * sum_c w[c] (sum dy*x - mean * sum dy) / m,  k3 = -rstd * sum_c w[c] sum dy / m - k2 * mean.
 * Each block sums dy and dy*x per channel over its chunk and writes the sums into every block of
 * the cluster; each adds them in rank order, and block 0 also writes them to ab[n * C + c] (as
 * gn_bwd_plane_kernel does: dw and db are summed from there over N). The same arithmetic as the two-kernel path, in a different order.
 * dw and db (either may be NULL): the block 0 that writes the last group's sums (gn_bwd_done_ctr)
 * then sums them over N, as gn_bwd_wb_kernel does in its own launch (the same loop, the same
 * bits): one launch less, whose start-up took as long as its work (2.8 us on an H200).
 * gpc > 1 (DRAFT_GN_STAGED_BWD, opt-in): a cluster takes gpc groups (block y: groups y * gpc + k),
 * each block a chunk of each, all requested at the start, a cp.async group per group: group k's
 * sums, exchange and dx run while groups k + 1.. stream in (as gn_staged_kernel does for the
 * forward). Each group's steps are those of gpc = 1, so the same bits at any gpc. STAGED = false
 * (gpc 1) compiles to the kernel as it was without the group loop (48 registers, not 63: five
 * blocks an SM at SD's shape, which its clusters of 8 need for one wave). */
template <int V, bool STAGED = false>
__global__ void __launch_bounds__(kThreads)
gn_bwd_fused_kernel(float *__restrict__ dx, double2 *__restrict__ ab, const float *__restrict__ dy,
                    const float *__restrict__ x, const float *__restrict__ w, const float *__restrict__ mean,
                    const float *__restrict__ rstd, int C, int cg, int HW, int ge, int chunk, float *__restrict__ dw,
                    float *__restrict__ db, int NG, int gpc_arg = 1)
{
    const int gpc = STAGED ? gpc_arg : 1;
    DYN_SMEM(float4, gn_smem4);
    unsigned char *base = reinterpret_cast<unsigned char *>(gn_smem4);
    const gn_bwd_layout lay = gn_bwd_smem(cg, chunk, gpc);
    gn_bwd_head &sh = *reinterpret_cast<gn_bwd_head *>(base);
    double2 *part = reinterpret_cast<double2 *>(base + lay.part), *rpart0 = reinterpret_cast<double2 *>(base + lay.rpart);
    double2 *tot = reinterpret_cast<double2 *>(base + lay.tot);
    float *k1a = reinterpret_cast<float *>(base + lay.k1), *wsa = reinterpret_cast<float *>(base + lay.ws),
          *xsa = reinterpret_cast<float *>(base + lay.xs), *dysa = reinterpret_cast<float *>(base + lay.dys);
    cooperative_groups::cluster_group cl = cooperative_groups::this_cluster();
    const int rank = (int)cl.block_rank(), ncl = (int)cl.num_blocks();
    const int g0 = (int)blockIdx.y * gpc, ng = min(gpc, NG - g0);   /* uniform over the cluster */
    const int j0 = rank * chunk, j1 = min(ge, j0 + chunk);
    gn_grid_wait();
    for (int k = 0; k < gpc; k++) {   /* each group's x and dy: one cp.async group (empty past ng) */
        if (k < ng) {
            const float *xg = x + (int64_t)(g0 + k) * ge, *dyg = dy + (int64_t)(g0 + k) * ge;
            float *xs = xsa + (size_t)k * chunk, *dys = dysa + (size_t)k * chunk;
            for (int j = j0 + (int)threadIdx.x * V; j < j1; j += kThreads * V) {
                __pipeline_memcpy_async(xs + (j - j0), xg + j, sizeof(float) * V);
                __pipeline_memcpy_async(dys + (j - j0), dyg + j, sizeof(float) * V);
            }
        }
        __pipeline_commit();
    }
    gn_grid_release();
    cl.barrier_arrive();   /* started (see gn_fused_kernel) */
    for (int i = threadIdx.x; i < ng * cg; i += kThreads) {   /* w too: the coefficients need it after the
                                                                 cluster's barrier, not a global load there */
        const int k = i / cg, c0 = (int)((g0 + k) % (C / cg)) * cg;
        wsa[i] = w ? w[c0 + i - k * cg] : 1.f;
        k1a[i] = (float)((double)rstd[g0 + k] * (double)wsa[i]);
    }
    for (int k = 0; k < ng; k++) {
        const int64_t g = g0 + k;
        const double rs = (double)rstd[g], mu = (double)mean[g];   /* loaded while the chunk streams in */
        const float *xs = xsa + (size_t)k * chunk, *dys = dysa + (size_t)k * chunk, *ws = wsa + k * cg, *k1 = k1a + k * cg;
        double2 *rpart = rpart0 + (size_t)(k % 2) * kGnMaxCluster * cg;   /* group k + 2's writers wait for us at k + 1's barrier */
        for (int i = threadIdx.x; i < cg; i += kThreads) part[i] = make_double2(0, 0);
        __pipeline_wait_prior(gpc - 1 - k);
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
        __syncthreads();   /* part[] is complete */
        if (k == 0) cl.barrier_wait();
        for (int e = threadIdx.x; e < ncl * cg; e += kThreads) {   /* part[], into every block's rpart[rank] */
            const int d = e / cg, i = e - d * cg;
            cl.map_shared_rank(rpart, d)[rank * cg + i] = part[i];
        }
        cl.sync();   /* every block's sums are in every block; no block reads another's memory after the last */
        for (int i = threadIdx.x; i < cg; i += kThreads) {
            double sa = 0, sb = 0;
            for (int r = 0; r < ncl; r++) {
                sa += rpart[r * cg + i].x;
                sb += rpart[r * cg + i].y;
            }
            tot[i] = make_double2(sa, sb);
            if (rank == 0) ab[g * cg + i] = tot[i];   /* plane n * C + c0 + i */
        }
        const bool wb = (dw || db) && rank == 0;
        if (wb) __threadfence();   /* this thread's ab before the count below */
        __syncthreads();
        if (wb && threadIdx.x == 0) sh.last = atomicInc(&gn_bwd_done_ctr, (unsigned)NG - 1) == (unsigned)NG - 1;
        if (wb) {
            __syncthreads();
            if (sh.last) {   /* every group's sums are in ab: dw and db (gn_bwd_wb_kernel's loop) */
                __threadfence();
                const int G = C / cg;
                const int64_t N = NG / G;
                for (int c = threadIdx.x; c < C; c += kThreads) {
                    double sw = 0, sb = 0;
                    for (int64_t n = 0; n < N; n++) {
                        const double2 v = __ldcg(&ab[n * C + c]);   /* from L2: other blocks wrote it */
                        const int64_t gi = n * G + c / cg;
                        sw += (double)rstd[gi] * (v.y - (double)mean[gi] * v.x);
                        sb += v.x;
                    }
                    if (dw) dw[c] = (float)sw;
                    if (db) db[c] = (float)sb;
                }
            }
        }
        if (threadIdx.x < 32) {   /* warp 0, a lane per channel */
            double s1 = 0, s2 = 0;   /* sum dy*w, sum dy*w*(x - mean) */
            for (int i = (int)threadIdx.x; i < cg; i += 32) {
                const double wc = (double)ws[i];
                s1 += wc * tot[i].x;
                s2 += wc * (tot[i].y - mu * tot[i].x);
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                s1 += __shfl_down_sync(0xffffffffu, s1, o);
                s2 += __shfl_down_sync(0xffffffffu, s2, o);
            }
            if (threadIdx.x == 0) {
                const double m = (double)cg * (double)HW;
                const double k2 = -rs * rs * rs * s2 / m;
                sh.k = make_double2(k2, -rs * s1 / m - k2 * mu);
            }
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
}

/* ---------------------------------------------------------------- group_norm, two-pass
 * (any dtype, any size, any GPU: statistics over S chunks per group, then normalisation; the
 * backward's per-plane sums, per-group coefficients, dx, and dw / db) */

/* the statistics pass's chunks: S per group of ge elements (enough blocks to fill `sms` SMs, at
 * least 2048 elements each, at most 1024), each a multiple of 4 long */
static inline void gn_twopass_split(int64_t NG, int64_t ge, int sms, int64_t *S_, int64_t *chunk_)
{
    int64_t S = (4 * (int64_t)sms + NG - 1) / NG;
    const int64_t smax = ge / 2048 > 0 ? ge / 2048 : 1;
    S = S < 1 ? 1 : S > smax ? smax : S > 1024 ? 1024 : S;
    int64_t chunk = (ge + S - 1) / S;
    chunk = (chunk + 3) / 4 * 4;
    S = (ge + chunk - 1) / chunk;
    *S_ = S < 1 ? 1 : S;
    *chunk_ = chunk;
}

/* part[g * S + s] = Welford state of chunk s of group g; x: [N*G groups of ge elements] */
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
gn_stats_kernel(wsum *__restrict__ part, const T *__restrict__ x, int64_t ge, int64_t chunk)
{
    using A = acc_t<T>;
    const int64_t g = blockIdx.x;
    const int s = blockIdx.y;
    const int64_t j0 = (int64_t)s * chunk, j1 = min(ge, j0 + chunk);
    const T *xg = x + g * ge;
    wstate<A> st = {0, 0, 0};
    for (int64_t j = j0 + (int64_t)threadIdx.x * V; j < j1; j += (int64_t)kThreads * V) welford_add<A, T, V>(st, load<T, V>(xg + j));
    const wsum r = group_welford<kThreads>(wsum{(double)st.n, (double)st.mean, (double)st.m2});
    if (threadIdx.x == 0) part[g * gridDim.y + s] = r;
}

/* one block per (n, c) plane of HW elements */
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
gn_norm_kernel(T *__restrict__ out, T *__restrict__ mean, T *__restrict__ rstd, const T *__restrict__ x,
               const T *__restrict__ w, const T *__restrict__ b, const wsum *__restrict__ part, int S, int C,
               int cg, int64_t HW, double eps)
{
    using A = acc_t<T>;
    __shared__ A coef[2];
    const int64_t plane = blockIdx.x;
    const int c = (int)(plane % C);
    const int64_t g = (plane / C) * (C / cg) + c / cg;
    if (threadIdx.x == 0) {
        wsum r = part[g * S];
        for (int i = 1; i < S; i++) r = wmerge(r, part[g * S + i]);
        const double rs = 1.0 / sqrt(r.m2 / r.n + eps);
        const double sc = rs * (w ? (double)w[c] : 1.0);
        coef[0] = (A)sc;
        coef[1] = (A)((b ? (double)b[c] : 0.0) - r.mean * sc);
        if (c % cg == 0) {
            if (mean) mean[g] = (T)r.mean;
            if (rstd) rstd[g] = (T)rs;
        }
    }
    __syncthreads();
    const A sc = coef[0], sh = coef[1];
    const T *xp = x + plane * HW;
    T *op = out + plane * HW;
    for (int64_t j = (int64_t)threadIdx.x * V; j < HW; j += (int64_t)kThreads * V) {
        vec<T, V> v = load<T, V>(xp + j);
#pragma unroll
        for (int i = 0; i < V; i++) v.v[i] = (T)((A)v.v[i] * sc + sh);
        store<T, V>(op + j, v);
    }
}

/* ab[plane] = (sum dy, sum dy * x) over the plane's HW elements */
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
gn_bwd_plane_kernel(double2 *__restrict__ ab, const T *__restrict__ dy, const T *__restrict__ x, int64_t HW)
{
    using A = acc_t<T>;
    const int64_t plane = blockIdx.x;
    const T *dp = dy + plane * HW, *xp = x + plane * HW;
    double sa = 0, sb = 0;
    for (int64_t j = (int64_t)threadIdx.x * V; j < HW; j += (int64_t)kThreads * V) {
        vec<T, V> g = load<T, V>(dp + j), xv = load<T, V>(xp + j);
        A ca = 0, cb = 0;
#pragma unroll
        for (int i = 0; i < V; i++) { ca += (A)g.v[i]; cb += (A)g.v[i] * (A)xv.v[i]; }
        sa += (double)ca;
        sb += (double)cb;
    }
    const double2 r = group_sum2<kThreads>(sa, sb);
    if (threadIdx.x == 0) ab[plane] = r;
}

/* per (n, g): coef = (k2, k3) with dx = rstd * w[c] * dy + k2 * x + k3 */
template <typename T>
__global__ void gn_bwd_coef_kernel(double2 *__restrict__ coef, const double2 *__restrict__ ab, const T *__restrict__ w,
                                   const T *__restrict__ mean, const T *__restrict__ rstd, int64_t NG, int G, int cg,
                                   int64_t HW)
{
    const int64_t ng = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (ng >= NG) return;
    const int64_t n = ng / G;
    const int g = (int)(ng % G), C = G * cg;
    const double mu = (double)mean[ng], rs = (double)rstd[ng];
    double s1 = 0, s2 = 0;   /* sum dy*w, sum dy*w*(x - mean) */
    for (int i = 0; i < cg; i++) {
        const int c = g * cg + i;
        const double2 v = ab[n * C + c];
        const double wc = w ? (double)w[c] : 1.0;
        s1 += wc * v.x;
        s2 += wc * (v.y - mu * v.x);
    }
    const double m = (double)cg * (double)HW;
    const double k2 = -rs * rs * rs * s2 / m;   /* xhat * mean(g * xhat) * rstd, per unit x */
    const double k3 = -rs * s1 / m - k2 * mu;
    coef[ng] = make_double2(k2, k3);
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
gn_bwd_dx_kernel(T *__restrict__ dx, const T *__restrict__ dy, const T *__restrict__ x, const T *__restrict__ w,
                 const T *__restrict__ rstd, const double2 *__restrict__ coef, int C, int cg, int64_t HW)
{
    using A = acc_t<T>;
    const int64_t plane = blockIdx.x;
    const int c = (int)(plane % C);
    const int64_t g = (plane / C) * (C / cg) + c / cg;
    const double2 k = coef[g];
    const A k1 = (A)((double)rstd[g] * (w ? (double)w[c] : 1.0)), k2 = (A)k.x, k3 = (A)k.y;
    const T *dp = dy + plane * HW, *xp = x + plane * HW;
    T *op = dx + plane * HW;
    for (int64_t j = (int64_t)threadIdx.x * V; j < HW; j += (int64_t)kThreads * V) {
        vec<T, V> g = load<T, V>(dp + j), xv = load<T, V>(xp + j);
#pragma unroll
        for (int i = 0; i < V; i++) g.v[i] = (T)(k1 * (A)g.v[i] + k2 * (A)xv.v[i] + k3);
        store<T, V>(op + j, g);
    }
}

/* nothing: launched with the one-pass forward's grid, block, shared memory and clusters, it
 * times what a single call costs before any kernel body (cuda_group_norm_empty_launch) */
__global__ void gn_empty_kernel() {}

/* dw[c] = sum_n rstd * (sum dy*x - mean * sum dy), db[c] = sum_n sum dy; in order of n */
template <typename T>
__global__ void gn_bwd_wb_kernel(T *__restrict__ dw, T *__restrict__ db, const double2 *__restrict__ ab,
                                 const T *__restrict__ mean, const T *__restrict__ rstd, int64_t N, int C, int cg)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const int G = C / cg;
    double sw = 0, sb = 0;
    for (int64_t n = 0; n < N; n++) {
        const double2 v = ab[n * C + c];
        const int64_t g = n * G + c / cg;
        sw += (double)rstd[g] * (v.y - (double)mean[g] * v.x);
        sb += v.x;
    }
    if (dw) dw[c] = (T)sw;
    if (db) db[c] = (T)sb;
}

#endif
