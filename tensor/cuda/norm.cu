/* norm.cu — layer_norm and group_norm, forward and backward, for the CUDA backend.
 *
 * Algorithm. Statistics use Welford/Chan: a thread folds its elements in chunks of 4 (one
 * float4 load) into a running (count, mean, M2) in the accumulation type (float for f32,
 * double for f64); threads and blocks are merged with Chan's formula in double. The normalise
 * pass writes out = x * scale + shift with per-channel scale = rstd * w, shift = b - mean * scale.
 *  - layer_norm: a warp per row when the row has <= 4096 elements, else a block per row; the
 *    normalise pass re-reads the row (from L1/L2).
 *  - group_norm, f32, when a group fits in the shared memory of a cluster of <= 8 blocks
 *    (96 KB each; every SD UNet shape): ONE kernel. The cluster's blocks stage their chunks of
 *    the group in shared memory with cp.async; each thread sums its elements and their squares
 *    in double (since 2026-11-29; DRAFT_GN_SUMS=0: an exact two-pass mean/M2 per thread, merged
 *    with Chan's formula), warps and the block add them, each block writes its sums into every
 *    block of the cluster (distributed shared memory), and every thread adds those in rank
 *    order and normalises from shared memory: x is read once, out written once, with one block
 *    and one cluster barrier in between (since 2026-11-27; before, 4 and 2).
 *  - group_norm otherwise (f64, huge groups, or DRAFT_GN_TWOPASS=1 in the environment): a
 *    [N*G, S] grid of stats blocks (S splits per group so the GPU has enough blocks) writes
 *    partial Welford states; the normalise kernel runs a block per (n, c) plane and merges its
 *    group's S partials in order.
 *  - backward: dx = rstd * (dy*w - mean(dy*w) - xhat * mean(dy*w*xhat)) with the two sums per
 *    row (layer_norm: in the row kernel) or per (n, c) plane then per group (group_norm);
 *    dw/db are per-channel sums over rows (layer_norm: [chunk, column] partials, then a sum
 *    over chunks) or over N (group_norm, from the per-plane sums).
 *  - group_norm backward, f32, under the forward's cluster condition (the default since the
 *    2026-11-27 GPU run; DRAFT_GN_FUSED_BWD=0 turns it off): ONE kernel for dx and the
 *    per-plane sums, with dy and x staged in shared memory: read once, dx written once (3
 *    passes over memory instead of 5); with DRAFT_GN_FUSED_WB=1 (opt-in) also dw/db, summed over
 *    N by the block that wrote the last group's sums (a counter, back at 0 after each launch: the
 *    one atomic, a count; the sums themselves in a fixed order) instead of a launch of their own.
 * All the kernels live in norm_kernels.cuh, which tests/test_norm_emu.cpp runs on the CPU.
 * Memory: group_norm two-pass uses N*G*S*24 bytes of partials, its backward N*C*16 + N*G*16
 * bytes; layer_norm backward uses 16 bytes * n * chunks (chunks <= 256). Non-contiguous inputs
 * are copied to contiguous temporaries; non-contiguous outputs go through one.
 * Determinism: no atomic sums (the one atomic counts finished groups); every reduction is a
 * fixed tree or a fixed sequential order, so results are bit-identical between runs.
 * Measured on an H200 (f32, [2,320,64,64], G=32; the forward kernel before its 2026-11-27
 * barrier cut): group_norm forward 14.0 us (copy of the
 * same tensor 8.7 us; torch 42-56 us), backward 20-23 us (torch 141-200 us); layer_norm
 * [8192,320] forward 14 us (torch 27-33 us). 2026-11-29 (Nsight Compute): the forward kernel
 * 12.2 us with Chan's merges, 10.2 with the double sums. */
#include "tensor/cuda/cuda.h"

#include <cooperative_groups.h>
#include <cuda_pipeline.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <type_traits>

namespace {

#include "tensor/cuda/nn_util.cuh"
#include "tensor/cuda/norm_kernels.cuh"

/* ---------------------------------------------------------------- host helpers */

void *scratch(size_t bytes, enum status *s)
{
    int64_t n = (int64_t)((bytes + 7) / 8);
    struct tensor *t = tensor_empty(DTYPE_F64, 1, &n, DEVICE_CUDA);
    if (!t) { *s = tensor_status() ? tensor_status() : STATUS_OOM; return NULL; }
    return t->storage->data;
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* DRAFT_GN_TWOPASS=1 forces the two-pass group_norm (for tests and comparisons) */
bool fused_disabled() { return cuda_switch("DRAFT_GN_TWOPASS", false); }

enum status need_float(const struct tensor *t, const char *op)
{
    if (t->dtype == DTYPE_F32 || t->dtype == DTYPE_F64) return STATUS_OK;
    return tensor_fail(STATUS_DTYPE, "%s: dtype %s is not supported on CUDA (use f32 or f64)", op, dtype_name(t->dtype));
}

enum status same_dtype(const struct tensor *ref, const struct tensor *t, const char *op, const char *what)
{
    if (!t || t->dtype == ref->dtype) return STATUS_OK;
    return tensor_fail(STATUS_DTYPE, "%s: %s is %s but x is %s", op, what, dtype_name(t->dtype), dtype_name(ref->dtype));
}

/* ---------------------------------------------------------------- launchers */

template <typename T>
enum status layer_norm_run(T *out, T *mean, T *rstd, const T *x, const T *w, const T *b, int64_t rows, int64_t n, double eps)
{
    cudaStream_t st = (cudaStream_t)cuda_stream();
    const bool v4 = std::is_same<T, float>::value && n % 4 == 0 && aligned16(x) && aligned16(out);
    if (n <= 4096) {
        const int64_t blocks = (rows + kThreads / 32 - 1) / (kThreads / 32);
        if (v4) ln_fwd_kernel<T, 32, 4><<<(unsigned)blocks, kThreads, 0, st>>>(out, mean, rstd, x, w, b, rows, n, eps);
        else ln_fwd_kernel<T, 32, 1><<<(unsigned)blocks, kThreads, 0, st>>>(out, mean, rstd, x, w, b, rows, n, eps);
    } else {
        if (v4) ln_fwd_kernel<T, kThreads, 4><<<(unsigned)rows, kThreads, 0, st>>>(out, mean, rstd, x, w, b, rows, n, eps);
        else ln_fwd_kernel<T, kThreads, 1><<<(unsigned)rows, kThreads, 0, st>>>(out, mean, rstd, x, w, b, rows, n, eps);
    }
    CUDA_LAUNCHED();
    return STATUS_OK;
}

template <typename T>
enum status layer_norm_bwd_run(T *dx, T *dw, T *db, const T *dy, const T *x, const T *w, const T *mean, const T *rstd,
                               int64_t rows, int64_t n)
{
    cudaStream_t st = (cudaStream_t)cuda_stream();
    enum status s = STATUS_OK;
    if (dx) {
        const bool v4 = std::is_same<T, float>::value && n % 4 == 0 && aligned16(x) && aligned16(dy) && aligned16(dx);
        if (n <= 4096) {
            const int64_t blocks = (rows + kThreads / 32 - 1) / (kThreads / 32);
            if (v4) ln_bwd_dx_kernel<T, 32, 4><<<(unsigned)blocks, kThreads, 0, st>>>(dx, dy, x, w, mean, rstd, rows, n);
            else ln_bwd_dx_kernel<T, 32, 1><<<(unsigned)blocks, kThreads, 0, st>>>(dx, dy, x, w, mean, rstd, rows, n);
        } else {
            if (v4) ln_bwd_dx_kernel<T, kThreads, 4><<<(unsigned)rows, kThreads, 0, st>>>(dx, dy, x, w, mean, rstd, rows, n);
            else ln_bwd_dx_kernel<T, kThreads, 1><<<(unsigned)rows, kThreads, 0, st>>>(dx, dy, x, w, mean, rstd, rows, n);
        }
        CUDA_LAUNCHED();
    }
    if (dw || db) {
        const int64_t colblocks = (n + 31) / 32;
        int64_t nchunks = (4 * cuda_sm_count() + colblocks - 1) / colblocks;
        nchunks = nchunks < 1 ? 1 : nchunks > 256 ? 256 : nchunks;
        int64_t chunk = (rows + nchunks - 1) / nchunks;
        if (chunk < 1) chunk = 1;
        nchunks = rows ? (rows + chunk - 1) / chunk : 1;
        double2 *part = (double2 *)scratch((size_t)nchunks * (size_t)n * sizeof(double2), &s);
        if (!part) return s;
        ln_bwd_wb_part_kernel<T><<<dim3((unsigned)colblocks, (unsigned)nchunks), 32 * kLnColRows, 0, st>>>(
            part, dy, x, mean, rstd, rows, n, chunk);
        CUDA_LAUNCHED();
        ln_bwd_wb_final_kernel<T><<<(unsigned)((n + 255) / 256), 256, 0, st>>>(dw, db, part, n, (int)nchunks);
        CUDA_LAUNCHED();
    }
    return STATUS_OK;
}

/* ---------------------------------------------------------------- one-pass cluster launches */

/* The one-pass kernels run when a group fits in the shared memory of a cluster of <= 8 blocks
 * (96 KB each). Of the cluster sizes (1, 2, 4, 8) whose chunks fit:
 *  - backward (spread): the smallest that gives the GPU at least two blocks per SM;
 *  - forward: the one with the fewest bytes for the busiest SM to stage, ceil(blocks / SMs) x
 *    chunk, ties to the smaller cluster (less exchange). On an H200 (132 SMs), [2,320,64,64]
 *    (64 groups of 160 KiB): clusters of 2 (one 80 KiB block per SM) 0.016 ms, 4: 0.017, 8 (the
 *    backward's rule): 0.018, 1 (64 SMs busy): 0.018; in a burst 0.011 / 0.012 / 0.014 / 0.014.
 *    The backward measured the other way: clusters of 8, 0.048 ms; of 4, 0.052.
 * smem(chunk): the kernel's shared memory for a chunk. Returns the cluster size and sets
 * *chunk_out, or returns 0 when none fits. */
constexpr int kFusedSmemMax = 96 * 1024;
/* with DRAFT_GN_CLUSTER=1 forced, up to what one block may have on sm_90 (227 KiB, less a margin):
 * a whole group of SD's [2,320,64,64] (160 KiB) in one block, no cluster exchange (the benchmark's
 * *_cl1 rows) */
constexpr int kFusedSmemMaxOne = 220 * 1024;

/* DRAFT_GN_CLUSTER=N (1, 2, 4 or 8): the smallest cluster of at least N blocks whose chunks fit,
 * whatever the SM count (benchmarks and tests compare cluster sizes; 1 also lifts the 96 KB bound,
 * kFusedSmemMaxOne); unset: the rule above */
int gn_cluster_floor()
{
    const char *e = getenv("DRAFT_GN_CLUSTER");
    const int n = e ? atoi(e) : 0;
    return n == 1 || n == 2 || n == 4 || n == 8 ? n : 0;
}

template <class SmemFn> int gn_cluster_pick(int64_t NG, int64_t ge, SmemFn smem, bool spread, int *chunk_out)
{
    if (NG > 65535 || ge >= INT32_MAX / 2) return 0;
    const int floor = gn_cluster_floor();
    const size_t max = floor == 1 ? kFusedSmemMaxOne : kFusedSmemMax;
    const int64_t sms = cuda_sm_count();
    int best = 0;
    int64_t best_load = INT64_MAX;
    for (int c = floor ? floor : 1; c <= kGnMaxCluster; c *= 2) {
        const int chunk = (int)(((ge + c - 1) / c + 3) / 4 * 4);
        if (smem(chunk) > max) continue;
        if (floor || (spread && (NG * c >= 2 * sms || c == kGnMaxCluster))) {
            *chunk_out = chunk;
            return c;
        }
        const int64_t load = (NG * c + sms - 1) / sms * chunk;   /* the busiest SM's elements */
        if (!spread && load < best_load) best = c, best_load = load, *chunk_out = chunk;
    }
    return best;
}

/* DRAFT_GN_PDL=1 (opt-in until measured on a GPU): the one-pass kernels launch as programmatic
 * dependents of the kernel ahead of them (gn_grid_wait in norm_kernels.cuh): their blocks are
 * scheduled while that kernel finishes, instead of after it, and each lets the next start once
 * its own loads are issued */
bool gn_pdl_enabled() { return cuda_switch("DRAFT_GN_PDL", false); }

/* grid (cl, NG) of kThreads-thread blocks in clusters of cl, on our stream; attr: its attributes
 * (two: the cluster, and with DRAFT_GN_PDL the programmatic serialization) */
cudaLaunchConfig_t gn_cluster_config(cudaLaunchAttribute *attr, int cl, int64_t NG, size_t smem)
{
    cudaLaunchConfig_t lc = {};
    lc.gridDim = dim3((unsigned)cl, (unsigned)NG);
    lc.blockDim = dim3(kThreads);
    lc.dynamicSmemBytes = smem;
    lc.stream = (cudaStream_t)cuda_stream();
    attr->id = cudaLaunchAttributeClusterDimension;
    attr->val.clusterDim.x = (unsigned)cl;
    attr->val.clusterDim.y = 1;
    attr->val.clusterDim.z = 1;
    lc.attrs = attr;
    lc.numAttrs = 1;
    if (gn_pdl_enabled()) {
        attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[1].val.programmaticStreamSerializationAllowed = 1;
        lc.numAttrs = 2;
    }
    return lc;
}

/* launch kernel on grid (cl, NG) in clusters of cl blocks; false when the device refuses (no
 * cluster support, too much shared memory): the caller then takes the multi-kernel path */
/* the kernel's dynamic shared memory limit raised to fit smem (to at least kFusedSmemMax, once);
 * raised: its limit so far. False when the device refuses. */
template <typename K> bool gn_raise_smem(K kernel, size_t *raised, size_t smem)
{
    if (smem <= 48 * 1024 || smem <= *raised) return true;
    const size_t to = smem > (size_t)kFusedSmemMax ? smem : (size_t)kFusedSmemMax;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)to) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    *raised = to;
    return true;
}

template <typename... P, typename... A>
bool gn_cluster_launch(void (*kernel)(P...), size_t *raised, int cl, int64_t NG, size_t smem, A... args)
{
    if (!gn_raise_smem(kernel, raised, smem)) return false;
    cudaLaunchAttribute attr[2];
    const cudaLaunchConfig_t lc = gn_cluster_config(attr, cl, NG, smem);
    if (cudaLaunchKernelEx(&lc, kernel, ((P)args)...) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return true;
}

/* DRAFT_GN_REG=1 (opt-in until measured on a GPU): the forward's chunk in registers, not in
 * shared memory (gn_fused_kernel<4, NV>; float4 runs only) */
bool gn_reg_enabled() { return cuda_switch("DRAFT_GN_REG", false); }

/* DRAFT_GN_SUMS (the default since the H200 run of 2026-11-29; =0 turns it off): the forward's
 * statistics as sums of x and x^2 in double, no Chan merges (gn_fused_kernel<V, NV, true>; with or
 * without DRAFT_GN_REG). [2,320,64,64]: the kernel 10.2 us against 12.2 (Nsight Compute), 0.010 ms
 * a call in a burst against 0.012, forward+backward 0.028 against 0.030. */
bool gn_sums_enabled() { return cuda_switch("DRAFT_GN_SUMS", true); }

/* DRAFT_GN_STAGED=1 (opt-in until measured on a GPU): the staged forward (gn_staged_kernel), gpc
 * groups to a cluster of gpc times the blocks the rule above picks, so that each block stages as
 * much as before; DRAFT_GN_GPC=1, 2 or 4 sets gpc (default 2; less where the cluster would pass 8
 * blocks, the shared memory its bound, or where there are fewer groups) */
bool gn_staged_enabled() { return cuda_switch("DRAFT_GN_STAGED", false); }

int gn_staged_gpc(int cl, int64_t NG)
{
    const char *e = getenv("DRAFT_GN_GPC");
    int gpc = e && (!strcmp(e, "1") || !strcmp(e, "2") || !strcmp(e, "4")) ? atoi(e) : 2;
    while (gpc > 1 && (cl * gpc > kGnMaxCluster || gpc > NG)) gpc /= 2;
    return gpc;
}

/* the staged forward's cluster size, chunk and gpc from the one-pass forward's pick (cl, chunk);
 * false when it does not fit */
bool gn_staged_pick(int cl, int64_t NG, int64_t ge, int cg, int *cl_out, int *chunk_out, int *gpc_out)
{
    const size_t max = gn_cluster_floor() == 1 ? kFusedSmemMaxOne : kFusedSmemMax;
    for (int gpc = gn_staged_gpc(cl, NG); gpc >= 1; gpc /= 2) {
        const int cls = cl * gpc, chunk = (int)(((ge + cls - 1) / cls + 3) / 4 * 4);
        if (gn_staged_smem(cg, chunk, gpc) > max) continue;
        *cl_out = cls, *chunk_out = chunk, *gpc_out = gpc;
        return true;
    }
    return false;
}

/* the one-pass forward when it applies (f32); *done tells whether it ran */
void group_norm_fused(bool *done, float *out, float *mean, float *rstd, const float *x, const float *w, const float *b,
                      int64_t N, int C, int G, int64_t HW, double eps)
{
    const int cg = C / G;
    const int64_t NG = N * G, ge = (int64_t)cg * HW;
    int chunk = 0;
    const int cl = gn_cluster_pick(NG, ge, [cg](int ch) { return gn_fwd_smem(cg, ch); }, false, &chunk);
    *done = false;
    if (!cl) return;
    const bool v4 = HW % 4 == 0 && aligned16(x) && aligned16(out);
    const int nv = v4 && gn_reg_enabled() ? gn_reg_nv(chunk) : 0;
    if (gn_staged_enabled()) {
        int cls = 0, chs = 0, gpc = 0;
        if (gn_staged_pick(cl, NG, ge, cg, &cls, &chs, &gpc)) {
            static size_t raised_staged[2];
            *done = gn_cluster_launch(v4 ? gn_staged_kernel<4> : gn_staged_kernel<1>, &raised_staged[v4], cls,
                                      (NG + gpc - 1) / gpc, gn_staged_smem(cg, chs, gpc), out, mean, rstd, x, w, b, C, cg,
                                      (int)HW, (int)ge, chs, gpc, (int)NG, eps);
            if (*done) return;
        }
    }
    const bool sums = gn_sums_enabled();
    /* per kernel, then the same again for SUMS at 8 + i: <1>, <4>, then <4, nv> at 1 + nv / 4 */
    static size_t raised[16];
    size_t *r = raised + (sums ? 8 : 0);
    if (nv) {   /* the register variant: no chunk in shared memory */
        *done = gn_cluster_launch(gn_fused_reg_kernel(nv, sums), &r[1 + nv / 4], cl, NG, gn_fwd_smem(cg, 0), out, mean, rstd,
                                  x, w, b, C, cg, (int)HW, (int)ge, chunk, eps);
        return;
    }
    const gn_fwd_fn k = sums ? (v4 ? gn_fused_kernel<4, 0, true> : gn_fused_kernel<1, 0, true>)
                             : (v4 ? gn_fused_kernel<4> : gn_fused_kernel<1>);
    *done = gn_cluster_launch(k, &r[v4], cl, NG, gn_fwd_smem(cg, chunk), out, mean, rstd, x, w, b, C, cg, (int)HW, (int)ge,
                              chunk, eps);
}

/* the one-pass input gradient: the default (DRAFT_GN_FUSED_BWD=0 turns it off). H200, 2026-11-27,
 * [2,320,64,64] fwd+bwd: 0.048 ms against 0.052 of the five-pass backward */
bool fused_bwd_enabled() { return cuda_switch("DRAFT_GN_FUSED_BWD", true); }

/* DRAFT_GN_FUSED_WB=1 (opt-in until measured on a GPU): the one-pass backward also sums dw and db
 * (its last block), instead of gn_bwd_wb_kernel's launch after it */
bool fused_wb_enabled() { return cuda_switch("DRAFT_GN_FUSED_WB", false); }

/* DRAFT_GN_STAGED_BWD=1 (opt-in until measured on a GPU): the one-pass backward takes gpc groups a
 * cluster (DRAFT_GN_GPC, default 2), at the cluster size and chunk its rule picks, so each block
 * stages gpc times as much (fewer where that passes the shared memory's bound or the groups);
 * unset: 1 */
bool gn_staged_bwd_enabled() { return cuda_switch("DRAFT_GN_STAGED_BWD", false); }

/* the groups a cluster the staged backward takes (whether or not it is on) */
int gn_bwd_staged_gpc(int64_t NG, int cg, int chunk)
{
    const size_t max = gn_cluster_floor() == 1 ? kFusedSmemMaxOne : kFusedSmemMax;
    int gpc = gn_staged_gpc(1, NG);
    while (gpc > 1 && gn_bwd_smem(cg, chunk, gpc).bytes > max) gpc /= 2;
    return gpc;
}

int gn_bwd_gpc(int64_t NG, int cg, int chunk) { return gn_staged_bwd_enabled() ? gn_bwd_staged_gpc(NG, cg, chunk) : 1; }

/* the one-pass input gradient when it applies (f32, dx wanted); it also writes ab (the per-plane
 * sums) and dw and db from them (either may be NULL: with both NULL the caller sums them). *done
 * tells whether it ran. */
void group_norm_bwd_fused(bool *done, float *dx, float *dw, float *db, double2 *ab, const float *dy, const float *x,
                          const float *w, const float *mean, const float *rstd, int64_t N, int C, int G, int64_t HW)
{
    const int cg = C / G;
    const int64_t NG = N * G, ge = (int64_t)cg * HW;
    int chunk = 0;
    const int cl = gn_cluster_pick(NG, ge, [cg](int ch) { return gn_bwd_smem(cg, ch).bytes; }, true, &chunk);
    *done = false;
    if (!cl) return;
    const bool v4 = HW % 4 == 0 && aligned16(x) && aligned16(dy) && aligned16(dx);
    const int gpc = gn_bwd_gpc(NG, cg, chunk), st = gpc > 1;
    static size_t raised[2][2];   /* [staged][v4] */
    const auto kernel = st ? (v4 ? gn_bwd_fused_kernel<4, true> : gn_bwd_fused_kernel<1, true>)
                           : (v4 ? gn_bwd_fused_kernel<4> : gn_bwd_fused_kernel<1>);
    *done = gn_cluster_launch(kernel, &raised[st][v4], cl, (NG + gpc - 1) / gpc, gn_bwd_smem(cg, chunk, gpc).bytes, dx, ab,
                              dy, x, w, mean, rstd, C, cg, (int)HW, (int)ge, chunk, dw, db, (int)NG, gpc);
}

template <typename T>
enum status group_norm_run(T *out, T *mean, T *rstd, const T *x, const T *w, const T *b, int64_t N, int C, int G,
                           int64_t HW, double eps)
{
    cudaStream_t st = (cudaStream_t)cuda_stream();
    enum status s = STATUS_OK;
    const int cg = C / G;
    const int64_t NG = N * G, ge = (int64_t)cg * HW;
    if constexpr (std::is_same<T, float>::value) {
        bool done = false;
        if (!fused_disabled()) group_norm_fused(&done, out, mean, rstd, x, w, b, N, C, G, HW, eps);
        if (done) return STATUS_OK;
    }
    int64_t S, chunk;
    gn_twopass_split(NG, ge, cuda_sm_count(), &S, &chunk);
    wsum *part = (wsum *)scratch((size_t)NG * (size_t)S * sizeof(wsum), &s);
    if (!part) return s;
    const bool isf = std::is_same<T, float>::value;
    if (isf && ge % 4 == 0 && aligned16(x))
        gn_stats_kernel<T, 4><<<dim3((unsigned)NG, (unsigned)S), kThreads, 0, st>>>(part, x, ge, chunk);
    else
        gn_stats_kernel<T, 1><<<dim3((unsigned)NG, (unsigned)S), kThreads, 0, st>>>(part, x, ge, chunk);
    CUDA_LAUNCHED();
    const int64_t planes = N * C;
    if (isf && HW % 4 == 0 && aligned16(x) && aligned16(out))
        gn_norm_kernel<T, 4><<<(unsigned)planes, kThreads, 0, st>>>(out, mean, rstd, x, w, b, part, (int)S, C, cg, HW, eps);
    else
        gn_norm_kernel<T, 1><<<(unsigned)planes, kThreads, 0, st>>>(out, mean, rstd, x, w, b, part, (int)S, C, cg, HW, eps);
    CUDA_LAUNCHED();
    return STATUS_OK;
}

template <typename T>
enum status group_norm_bwd_run(T *dx, T *dw, T *db, const T *dy, const T *x, const T *w, const T *mean, const T *rstd,
                               int64_t N, int C, int G, int64_t HW)
{
    cudaStream_t st = (cudaStream_t)cuda_stream();
    enum status s = STATUS_OK;
    const int cg = C / G;
    const int64_t planes = N * C, NG = N * G;
    double2 *ab = (double2 *)scratch((size_t)(planes + NG) * sizeof(double2), &s);
    if (!ab) return s;
    double2 *coef = ab + planes;
    bool done = false, wb_done = false;
    if constexpr (std::is_same<T, float>::value) {
        if (dx && fused_bwd_enabled() && !fused_disabled()) {
            const bool wb = fused_wb_enabled();   /* dw and db in the one-pass kernel, else in their own below */
            group_norm_bwd_fused(&done, dx, wb ? dw : NULL, wb ? db : NULL, ab, dy, x, w, mean, rstd, N, C, G, HW);
            wb_done = done && wb;
        }
    }
    const bool v4 = std::is_same<T, float>::value && HW % 4 == 0 && aligned16(x) && aligned16(dy) &&
                    (!dx || aligned16(dx));
    if (!done) {
        if (v4) gn_bwd_plane_kernel<T, 4><<<(unsigned)planes, kThreads, 0, st>>>(ab, dy, x, HW);
        else gn_bwd_plane_kernel<T, 1><<<(unsigned)planes, kThreads, 0, st>>>(ab, dy, x, HW);
        CUDA_LAUNCHED();
    }
    if (dx && !done) {
        gn_bwd_coef_kernel<T><<<(unsigned)((NG + 127) / 128), 128, 0, st>>>(coef, ab, w, mean, rstd, NG, G, cg, HW);
        CUDA_LAUNCHED();
        if (v4) gn_bwd_dx_kernel<T, 4><<<(unsigned)planes, kThreads, 0, st>>>(dx, dy, x, w, rstd, coef, C, cg, HW);
        else gn_bwd_dx_kernel<T, 1><<<(unsigned)planes, kThreads, 0, st>>>(dx, dy, x, w, rstd, coef, C, cg, HW);
        CUDA_LAUNCHED();
    }
    if ((dw || db) && !wb_done) {
        gn_bwd_wb_kernel<T><<<(unsigned)((C + 127) / 128), 128, 0, st>>>(dw, db, ab, mean, rstd, N, C, cg);
        CUDA_LAUNCHED();
    }
    return STATUS_OK;
}

/* ---------------------------------------------------------------- entry bodies (inside a scope) */

enum status layer_norm_body(struct tensor *out, struct tensor *mean, struct tensor *rstd, const struct tensor *x,
                            const struct tensor *w, const struct tensor *b, double eps)
{
    const char *op = "layer_norm";
    enum status s = STATUS_OK;
    if ((s = need_float(x, op)) || (s = same_dtype(x, out, op, "out")) || (s = same_dtype(x, w, op, "w")) ||
        (s = same_dtype(x, b, op, "b")) || (s = same_dtype(x, mean, op, "mean")) || (s = same_dtype(x, rstd, op, "rstd")))
        return s;
    const int64_t numel = tensor_numel(x);
    int64_t rows;
    if (mean) rows = tensor_numel(mean);
    else if (rstd) rows = tensor_numel(rstd);
    else if (w) rows = tensor_numel(w) ? numel / tensor_numel(w) : 0;
    else return tensor_fail(STATUS_VALUE, "layer_norm: need mean, rstd or w to know the row length");
    if (numel == 0 || rows == 0) return STATUS_OK;
    const int64_t n = numel / rows;
    if (n * rows != numel || tensor_numel(out) != numel || (w && tensor_numel(w) != n) || (b && tensor_numel(b) != n) ||
        (rstd && tensor_numel(rstd) != rows))
        return tensor_fail(STATUS_SHAPE, "layer_norm: %lld elements do not split into %lld rows matching w/b/out",
                           (long long)numel, (long long)rows);
    const struct tensor *xc, *wc = NULL, *bc = NULL;
    if (!(xc = contig(x, &s)) || (w && !(wc = contig(w, &s))) || (b && !(bc = contig(b, &s)))) return s;
    outbuf o, om, orr;
    if ((s = o.open(out)) || (s = om.open(mean)) || (s = orr.open(rstd))) return s;
    if (x->dtype == DTYPE_F32)
        s = layer_norm_run<float>(o.p<float>(), om.p<float>(), orr.p<float>(), dptr<float>(xc), wc ? dptr<float>(wc) : NULL,
                                  bc ? dptr<float>(bc) : NULL, rows, n, eps);
    else
        s = layer_norm_run<double>(o.p<double>(), om.p<double>(), orr.p<double>(), dptr<double>(xc),
                                   wc ? dptr<double>(wc) : NULL, bc ? dptr<double>(bc) : NULL, rows, n, eps);
    if (s || (s = o.close()) || (s = om.close()) || (s = orr.close())) return s;
    return STATUS_OK;
}

enum status layer_norm_backward_body(struct tensor *dx, struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                     const struct tensor *x, const struct tensor *w, const struct tensor *mean,
                                     const struct tensor *rstd)
{
    const char *op = "layer_norm_backward";
    enum status s = STATUS_OK;
    if ((s = need_float(x, op)) || (s = same_dtype(x, dy, op, "dy")) || (s = same_dtype(x, dx, op, "dx")) ||
        (s = same_dtype(x, dw, op, "dw")) || (s = same_dtype(x, db, op, "db")) || (s = same_dtype(x, w, op, "w")) ||
        (s = same_dtype(x, mean, op, "mean")) || (s = same_dtype(x, rstd, op, "rstd")))
        return s;
    if (!mean || !rstd) return tensor_fail(STATUS_VALUE, "layer_norm_backward: mean and rstd are required");
    const int64_t numel = tensor_numel(x), rows = tensor_numel(mean);
    if (numel == 0 || rows == 0) {
        if (dw && (s = cuda_fill(dw, 0))) return s;
        if (db && (s = cuda_fill(db, 0))) return s;
        return STATUS_OK;
    }
    const int64_t n = numel / rows;
    if (n * rows != numel || tensor_numel(dy) != numel || tensor_numel(rstd) != rows || (dx && tensor_numel(dx) != numel) ||
        (w && tensor_numel(w) != n) || (dw && tensor_numel(dw) != n) || (db && tensor_numel(db) != n))
        return tensor_fail(STATUS_SHAPE, "layer_norm_backward: %lld elements do not split into %lld rows matching w/dw/db",
                           (long long)numel, (long long)rows);
    const struct tensor *xc, *dyc, *wc = NULL, *mc, *rc;
    if (!(xc = contig(x, &s)) || !(dyc = contig(dy, &s)) || (w && !(wc = contig(w, &s))) || !(mc = contig(mean, &s)) ||
        !(rc = contig(rstd, &s)))
        return s;
    outbuf odx, odw, odb;
    if ((s = odx.open(dx)) || (s = odw.open(dw)) || (s = odb.open(db))) return s;
    if (x->dtype == DTYPE_F32)
        s = layer_norm_bwd_run<float>(odx.p<float>(), odw.p<float>(), odb.p<float>(), dptr<float>(dyc), dptr<float>(xc),
                                      wc ? dptr<float>(wc) : NULL, dptr<float>(mc), dptr<float>(rc), rows, n);
    else
        s = layer_norm_bwd_run<double>(odx.p<double>(), odw.p<double>(), odb.p<double>(), dptr<double>(dyc),
                                       dptr<double>(xc), wc ? dptr<double>(wc) : NULL, dptr<double>(mc), dptr<double>(rc),
                                       rows, n);
    if (s || (s = odx.close()) || (s = odw.close()) || (s = odb.close())) return s;
    return STATUS_OK;
}

/* x [N, C, *] -> N, C, spatial size; checks groups */
enum status gn_dims(const struct tensor *x, int groups, const char *op, int64_t *N, int *C, int64_t *HW)
{
    if (x->ndim < 2) return tensor_fail(STATUS_SHAPE, "%s: x needs at least 2 dims [N, C, *], got %d", op, x->ndim);
    *N = x->shape[0];
    if (x->shape[1] > INT32_MAX) return tensor_fail(STATUS_SHAPE, "%s: too many channels", op);
    *C = (int)x->shape[1];
    *HW = 1;
    for (int d = 2; d < x->ndim; d++) *HW *= x->shape[d];
    if (groups <= 0 || *C % groups)
        return tensor_fail(STATUS_VALUE, "%s: %d channels do not split into %d groups", op, *C, groups);
    return STATUS_OK;
}

enum status group_norm_body(struct tensor *out, struct tensor *mean, struct tensor *rstd, const struct tensor *x,
                            const struct tensor *w, const struct tensor *b, int groups, double eps)
{
    const char *op = "group_norm";
    enum status s = STATUS_OK;
    if ((s = need_float(x, op)) || (s = same_dtype(x, out, op, "out")) || (s = same_dtype(x, w, op, "w")) ||
        (s = same_dtype(x, b, op, "b")) || (s = same_dtype(x, mean, op, "mean")) || (s = same_dtype(x, rstd, op, "rstd")))
        return s;
    int64_t N = 0, HW = 0;
    int C = 0;
    if ((s = gn_dims(x, groups, op, &N, &C, &HW))) return s;
    if (tensor_numel(out) != tensor_numel(x) || (w && tensor_numel(w) != C) || (b && tensor_numel(b) != C) ||
        (mean && tensor_numel(mean) != N * groups) || (rstd && tensor_numel(rstd) != N * groups))
        return tensor_fail(STATUS_SHAPE, "group_norm: out/w/b/mean/rstd do not match x [N=%lld, C=%d] with %d groups",
                           (long long)N, C, groups);
    if (tensor_numel(x) == 0) return STATUS_OK;
    const struct tensor *xc, *wc = NULL, *bc = NULL;
    if (!(xc = contig(x, &s)) || (w && !(wc = contig(w, &s))) || (b && !(bc = contig(b, &s)))) return s;
    outbuf o, om, orr;
    if ((s = o.open(out)) || (s = om.open(mean)) || (s = orr.open(rstd))) return s;
    if (x->dtype == DTYPE_F32)
        s = group_norm_run<float>(o.p<float>(), om.p<float>(), orr.p<float>(), dptr<float>(xc), wc ? dptr<float>(wc) : NULL,
                                  bc ? dptr<float>(bc) : NULL, N, C, groups, HW, eps);
    else
        s = group_norm_run<double>(o.p<double>(), om.p<double>(), orr.p<double>(), dptr<double>(xc),
                                   wc ? dptr<double>(wc) : NULL, bc ? dptr<double>(bc) : NULL, N, C, groups, HW, eps);
    if (s || (s = o.close()) || (s = om.close()) || (s = orr.close())) return s;
    return STATUS_OK;
}

enum status group_norm_backward_body(struct tensor *dx, struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                     const struct tensor *x, const struct tensor *w, const struct tensor *mean,
                                     const struct tensor *rstd, int groups)
{
    const char *op = "group_norm_backward";
    enum status s = STATUS_OK;
    if ((s = need_float(x, op)) || (s = same_dtype(x, dy, op, "dy")) || (s = same_dtype(x, dx, op, "dx")) ||
        (s = same_dtype(x, dw, op, "dw")) || (s = same_dtype(x, db, op, "db")) || (s = same_dtype(x, w, op, "w")) ||
        (s = same_dtype(x, mean, op, "mean")) || (s = same_dtype(x, rstd, op, "rstd")))
        return s;
    if (!mean || !rstd) return tensor_fail(STATUS_VALUE, "group_norm_backward: mean and rstd are required");
    int64_t N = 0, HW = 0;
    int C = 0;
    if ((s = gn_dims(x, groups, op, &N, &C, &HW))) return s;
    if (tensor_numel(dy) != tensor_numel(x) || (dx && tensor_numel(dx) != tensor_numel(x)) || (w && tensor_numel(w) != C) ||
        (dw && tensor_numel(dw) != C) || (db && tensor_numel(db) != C) || tensor_numel(mean) != N * groups ||
        tensor_numel(rstd) != N * groups)
        return tensor_fail(STATUS_SHAPE, "group_norm_backward: dy/dx/w/dw/db/mean/rstd do not match x [N=%lld, C=%d] "
                           "with %d groups", (long long)N, C, groups);
    if (tensor_numel(x) == 0) {
        if (dw && (s = cuda_fill(dw, 0))) return s;
        if (db && (s = cuda_fill(db, 0))) return s;
        return STATUS_OK;
    }
    const struct tensor *xc, *dyc, *wc = NULL, *mc, *rc;
    if (!(xc = contig(x, &s)) || !(dyc = contig(dy, &s)) || (w && !(wc = contig(w, &s))) || !(mc = contig(mean, &s)) ||
        !(rc = contig(rstd, &s)))
        return s;
    outbuf odx, odw, odb;
    if ((s = odx.open(dx)) || (s = odw.open(dw)) || (s = odb.open(db))) return s;
    if (x->dtype == DTYPE_F32)
        s = group_norm_bwd_run<float>(odx.p<float>(), odw.p<float>(), odb.p<float>(), dptr<float>(dyc), dptr<float>(xc),
                                      wc ? dptr<float>(wc) : NULL, dptr<float>(mc), dptr<float>(rc), N, C, groups, HW);
    else
        s = group_norm_bwd_run<double>(odx.p<double>(), odw.p<double>(), odb.p<double>(), dptr<double>(dyc),
                                       dptr<double>(xc), wc ? dptr<double>(wc) : NULL, dptr<double>(mc), dptr<double>(rc),
                                       N, C, groups, HW);
    if (s || (s = odx.close()) || (s = odw.close()) || (s = odb.close())) return s;
    return STATUS_OK;
}

}  // namespace

/* What the one-pass group_norm kernels would launch for x [N, C, HW] with G groups, and how many
 * of their clusters the device can hold at once (cudaOccupancyMaxActiveClusters): fewer than the
 * N*G a call needs means the call runs in more than one wave. A line per kernel into buf; for
 * bench_gpu, where Nsight Compute may lack counter permissions. */
template <typename K>
static void gn_occupancy_line(char *buf, size_t n, const char *what, K kernel, int cl, int64_t NG, size_t smem)
{
    if (!cl) { snprintf(buf, n, "%s: no cluster kernel applies\n", what); return; }
    cudaFuncAttributes fa = {};
    (void)cudaFuncGetAttributes(&fa, kernel);
    /* raised only, never lowered: gn_cluster_launch keeps track of what it set */
    if ((int)smem > fa.maxDynamicSharedSizeBytes)
        (void)cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    cudaLaunchAttribute attr[2];
    const cudaLaunchConfig_t lc = gn_cluster_config(attr, cl, NG, smem);
    int clusters = -1, blocks_sm = -1;
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &lc) != cudaSuccess) clusters = -1;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_sm, kernel, kThreads, smem) != cudaSuccess) blocks_sm = -1;
    (void)cudaGetLastError();
    snprintf(buf, n, "%s: clusters of %d, %lld needed, %d fit at once (%s); %d regs, %zu B shared, %d blocks/SM\n", what, cl,
             (long long)NG, clusters, clusters < 0 ? "unknown" : clusters >= NG ? "one wave" : "MORE THAN ONE WAVE", fa.numRegs,
             smem, blocks_sm);
}

extern "C" void cuda_group_norm_occupancy(char *buf, size_t n, int64_t N, int C, int G, int64_t HW)
{
    if (!n) return;
    buf[0] = 0;
    if (G <= 0 || C % G) return;
    const int cg = C / G;
    const int64_t NG = N * G, ge = (int64_t)cg * HW;
    int chunk = 0;
    int cl = gn_cluster_pick(NG, ge, [cg](int ch) { return gn_fwd_smem(cg, ch); }, false, &chunk);
    const size_t line = n / 4;   /* four lines, a quarter each */
    gn_occupancy_line(buf, line, "group_norm fwd", gn_fused_kernel<4>, cl, NG, cl ? gn_fwd_smem(cg, chunk) : 0);
    size_t used = strlen(buf);
    int cls = 0, chs = 0, gpc = 0;   /* the staged forward (DRAFT_GN_STAGED): gpc groups a cluster */
    if (!cl || !gn_staged_pick(cl, NG, ge, cg, &cls, &chs, &gpc)) cls = 0;
    char what[64];
    snprintf(what, sizeof what, "group_norm fwd staged (%d groups a cluster)", gpc);
    gn_occupancy_line(buf + used, n - used < line ? n - used : line, what, gn_staged_kernel<4>, cls,
                      cls ? (NG + gpc - 1) / gpc : 0, cls ? gn_staged_smem(cg, chs, gpc) : 0);
    used = strlen(buf);
    cl = gn_cluster_pick(NG, ge, [cg](int ch) { return gn_bwd_smem(cg, ch).bytes; }, true, &chunk);
    gn_occupancy_line(buf + used, n - used < line ? n - used : line, "group_norm bwd", gn_bwd_fused_kernel<4>, cl, NG,
                      cl ? gn_bwd_smem(cg, chunk).bytes : 0);
    used = strlen(buf);
    const int g2 = cl ? gn_bwd_staged_gpc(NG, cg, chunk) : 1;   /* DRAFT_GN_STAGED_BWD's */
    snprintf(what, sizeof what, "group_norm bwd staged (%d groups a cluster)", g2);
    gn_occupancy_line(buf + used, n - used, what, gn_bwd_fused_kernel<4, true>, g2 > 1 ? cl : 0, cl ? (NG + g2 - 1) / g2 : 0,
                      cl ? gn_bwd_smem(cg, chunk, g2).bytes : 0);
}

/* An empty kernel launched as the one-pass forward would be at x [N, C, HW] with G groups: its
 * grid, block and shared memory, in its clusters (cluster) or without, with DRAFT_GN_PDL's
 * attribute when that is on. bench_gpu's launch_* rows time it as a single call from an idle GPU:
 * the part of group_norm_fwd's single call that no kernel body can remove. */
extern "C" enum status cuda_group_norm_empty_launch(int64_t N, int C, int G, int64_t HW, bool cluster)
{
    if (G <= 0 || C % G) return tensor_fail(STATUS_VALUE, "group_norm: %d channels do not split into %d groups", C, G);
    const int cg = C / G;
    const int64_t NG = N * G, ge = (int64_t)cg * HW;
    int chunk = 0;
    const int cl = gn_cluster_pick(NG, ge, [cg](int ch) { return gn_fwd_smem(cg, ch); }, false, &chunk);
    if (!cl) return tensor_fail(STATUS_VALUE, "group_norm: no one-pass launch for [%lld, %d, %lld] in %d groups", (long long)N,
                                C, (long long)HW, G);
    const size_t smem = gn_fwd_smem(cg, chunk);
    static size_t raised;
    if (!gn_raise_smem(gn_empty_kernel, &raised, smem))
        return tensor_fail(STATUS_DEVICE, "group_norm: the device refused %zu bytes of shared memory a block", smem);
    cudaLaunchAttribute attr[2];
    cudaLaunchConfig_t lc = gn_cluster_config(attr, cl, NG, smem);
    if (!cluster) {   /* the same grid without the cluster attribute (attr[0]); the PDL one stays */
        lc.attrs = attr + 1;
        lc.numAttrs--;
    }
    CUDA_TRY(cudaLaunchKernelEx(&lc, gn_empty_kernel));
    return STATUS_OK;
}

/* ---------------------------------------------------------------- entry points: each runs in its
 * own tensor scope so temporaries (contiguous copies, partials) are released on every path */

extern "C" enum status cuda_layer_norm(struct tensor *out, struct tensor *mean, struct tensor *rstd, const struct tensor *x,
                                       const struct tensor *w, const struct tensor *b, double eps)
{
    tensor_scope_begin();
    enum status s = layer_norm_body(out, mean, rstd, x, w, b, eps);
    tensor_scope_end();
    return s;
}

extern "C" enum status cuda_layer_norm_backward(struct tensor *dx, struct tensor *dw, struct tensor *db,
                                                const struct tensor *dy, const struct tensor *x, const struct tensor *w,
                                                const struct tensor *mean, const struct tensor *rstd)
{
    tensor_scope_begin();
    enum status s = layer_norm_backward_body(dx, dw, db, dy, x, w, mean, rstd);
    tensor_scope_end();
    return s;
}

extern "C" enum status cuda_group_norm(struct tensor *out, struct tensor *mean, struct tensor *rstd, const struct tensor *x,
                                       const struct tensor *w, const struct tensor *b, int groups, double eps)
{
    tensor_scope_begin();
    enum status s = group_norm_body(out, mean, rstd, x, w, b, groups, eps);
    tensor_scope_end();
    return s;
}

extern "C" enum status cuda_group_norm_backward(struct tensor *dx, struct tensor *dw, struct tensor *db,
                                                const struct tensor *dy, const struct tensor *x, const struct tensor *w,
                                                const struct tensor *mean, const struct tensor *rstd, int groups)
{
    tensor_scope_begin();
    enum status s = group_norm_backward_body(dx, dw, db, dy, x, w, mean, rstd, groups);
    tensor_scope_end();
    return s;
}
