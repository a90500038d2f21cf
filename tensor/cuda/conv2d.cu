/* conv2d.cu — 2-D convolution (forward, backward input, backward weight) for the CUDA backend.
 *
 * Algorithm: tiled im2col + cuBLAS. With K = C*KH*KW (row k = (c, kh, kw)) and a tile of
 * output pixels, im2col writes col[K, pixels] and one strided-batched GEMM per group computes
 *   forward          out_g[Og, P]   = w_g[Og, Kg] @ col_g[Kg, P]        (batched over images)
 *   backward weight  dw_g[Og, Kg]  += dy_g[Og, P] @ col_g[Kg, P]^T      (batched over groups)
 *   backward input   dcol[R, OHW]   = w_g[:, rows]^T @ dy_g[Og, OHW]     (batched over images)
 * and the backward input finishes with col2im as a gather: each dx element sums the dcol
 * entries that read it, so no atomics are needed. With DRAFT_CONV_ROWSHIFT=1 a forward with
 * stride_h 1 instead expands only the kernel columns and runs one GEMM per kernel row over
 * views of that shifted by whole rows (conv2d_kernels.cuh): KH times less im2col traffic.
 * Since the H200 run of 2026-11-29 a 3x3 stride-1 f32 forward under f32 or TF32 (and its backward
 * input) is by default Winograd F(2x2, 3x3) instead: input and weight transforms, 16 GEMMs, the
 * output transform (DRAFT_CONV_WINOGRAD=0 turns it off); under TF32 with few channels over many
 * pixels (the VAE decoder's), one kernel that reads the 9 taps out of a halo tile of the input in
 * shared memory (conv2d_kernels.cuh; DRAFT_CONV_HALO=1 / =0: always / never).
 * With DRAFT_CONV_IMPLICIT=1 an f32 forward (groups 1) is instead one implicit-GEMM kernel on
 * tensor cores that gathers its operand tiles from x into shared memory (conv2d_kernels.cuh; in
 * tap-major order over permuted weights where C % 16 == 0), and so is the backward input at
 * stride 1, as the forward convolution of dy with the weights flipped.
 * 1x1 convolutions with stride 1 and no padding skip im2col and use x / dx directly as the GEMM
 * operand. Bias is pre-filled into the output
 * and the GEMM accumulates onto it (beta = 1); db is a per-channel reduction kernel.
 * f32 GEMMs go through cuda_gemm (matmul.cu), which applies the precision switch (exact f32,
 * TF32, or bf16 autocast: tensor_set_precision); f64 uses cublasDgemmStridedBatched. Under bf16
 * autocast the forward and backward weight write their im2col in bf16 directly (cuda_gemm_bf16),
 * so the workspace holds twice the pixels and nothing packs col a second time.
 * Memory: one workspace of at most kWorkspaceBytes (64 MiB; 256 MiB for the backward weight
 * and Winograd's V and M; more only when a single output row of pixels times K needs it) from
 * the caching allocator: a tile is a batch of whole
 * images when they fit, else a range of pixels of one image (forward, backward weight) or a
 * range of channels of one image (backward input, so that col2im sees every pixel of them).
 * Non-contiguous x / w / dy are copied to contiguous temporaries.
 * Determinism: cuBLAS GEMMs are deterministic (no atomics mode is enabled); backward weight
 * accumulates tiles in a fixed order; col2im and db are gathers with fixed summation order.
 * The cuBLAS handle is this file's own, created lazily and bound to cuda_stream() per call.
 * Measured on an H200, f32 with TF32 on, B=2 3x3 pad 1 (fwd / bwd-input / bwd-weight, ms; torch
 * cuDNN TF32 on the same machine in brackets): 320ch 64px 0.159/0.205/0.150 (0.108/0.158/0.184),
 * 640ch 32px 0.113/0.135/0.094 (0.115/0.146/0.167), 1280ch 16px 0.184/0.121/0.111
 * (0.170/0.193/0.224). Exact f32: 0.41-0.61 ms per call, at or under cuDNN's except bwd-weight. */
#include "tensor/cuda/cuda.h"
#include "tensor/half.h"

#include <cublas_v2.h>
#include <cuda_pipeline.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <stdlib.h>

namespace {

/* im2col workspace bound. On an H200, [2,320,64,64] 3x3 (TF32) ran fwd/bwd-input/bwd-weight in
 * 0.163/0.211/0.168 ms with 32 MiB, 0.159/0.208/0.151 with 64 MiB, 0.169/0.192/0.146 with 128 MiB. */
constexpr size_t kWorkspaceBytes = (size_t)64 << 20;
/* Winograd's V and M: with im2col's 64 MiB, 320 ch at 64 px ran in 3 passes of 683 tiles, 0.155 ms
 * forward on an H200; in one of all 2048 (84 MiB), 0.103 (640 ch at 32 px: 0.103 and 0.080). */
constexpr size_t kWinoWorkspaceBytes = (size_t)256 << 20;
/* the backward weight's im2col. H200, 2026-11-29, TF32, conv2d forward+backward with the Winograd
 * forward and backward input (their own 256 MiB) and this bound at 64 / 256 MiB: 128 ch at 512 px
 * 5.85 / 5.25 ms (the VAE decoder's: fewer and longer GEMMs, K = 1152 over 14.5k / 58k pixels a
 * tile), 320 ch at 64 px 0.385 / 0.375, 640 and 1280 ch the same */
constexpr size_t kWeightWorkspaceBytes = (size_t)256 << 20;

#define CUBLAS_TRY(call)                                                                                  \
    do {                                                                                                  \
        cublasStatus_t st_ = (call);                                                                      \
        if (st_ != CUBLAS_STATUS_SUCCESS)                                                                 \
            return tensor_fail(STATUS_DEVICE, "cuBLAS error %s in %s at %s:%d", cublasGetStatusString(st_), \
                               #call, __FILE__, __LINE__);                                                \
    } while (0)

#include "tensor/cuda/nn_util.cuh"
#include "tensor/cuda/conv2d_kernels.cuh"

cublasHandle_t g_handle = nullptr;

enum status blas_handle(cublasHandle_t *h)
{
    if (!g_handle) CUBLAS_TRY(cublasCreate(&g_handle));
    CUBLAS_TRY(cublasSetStream(g_handle, (cudaStream_t)cuda_stream()));
    *h = g_handle;
    return STATUS_OK;
}

/* column-major C[m,n] = op(A)[m,k] @ op(B)[k,n] + beta * C, strided-batched */
enum status gemm(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, const float *A, int64_t lda,
                 int64_t sA, const float *B, int64_t ldb, int64_t sB, float beta, float *C, int64_t ldc, int64_t sC,
                 int64_t batch)
{
    /* the precision switch (exact, TF32, bf16 autocast) is cuda_gemm's, as for matmul */
    return cuda_gemm(DTYPE_F32, ta == CUBLAS_OP_T, tb == CUBLAS_OP_T, m, n, k, 1.0, A, lda, sA, B, ldb, sB, beta, C, ldc,
                     sC, batch);
}

enum status gemm(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, const double *A,
                 int64_t lda, int64_t sA, const double *B, int64_t ldb, int64_t sB, double beta, double *C, int64_t ldc,
                 int64_t sC, int64_t batch)
{
    cublasHandle_t h = nullptr;
    enum status s = STATUS_OK;
    if ((s = blas_handle(&h))) return s;
    const double one = 1.0;
    CUBLAS_TRY(cublasDgemmStridedBatched(h, ta, tb, (int)m, (int)n, (int)k, &one, A, (int)lda, sA, B, (int)ldb, sB, &beta,
                                         C, (int)ldc, sC, (int)batch));
    return STATUS_OK;
}

/* ---------------------------------------------------------------- host helpers */

/* a workspace of T elements (f32, f64, or uint16_t: bf16), owned by the enclosing scope */
template <typename T> T *scratch(int64_t elems, enum status *s)
{
    int64_t n = elems > 0 ? elems : 1;
    const enum dtype dt = sizeof(T) == 2 ? DTYPE_BF16 : sizeof(T) == 4 ? DTYPE_F32 : DTYPE_F64;
    struct tensor *t = tensor_empty(dt, 1, &n, DEVICE_CUDA);
    if (!t) { *s = tensor_status() ? tensor_status() : STATUS_OOM; return NULL; }
    return (T *)t->storage->data;
}

/* the geometry of one convolution, everything derived once */
struct geom {
    int64_t N, C, H, W, O, KH, KW, OH, OW;
    int sh, sw, pt, pl, dh, dw, G;
    int64_t Cg, Og, KK, Kg, K, HW, OHW;
    bool pointwise;   /* 1x1, stride 1, no padding: col == x */
};

enum status make_geom(geom *g, const struct tensor *x, const struct tensor *w, const struct tensor *y,
                      const struct conv2d_params *p, const char *op)
{
    if (x->dtype != DTYPE_F32 && x->dtype != DTYPE_F64)
        return tensor_fail(STATUS_DTYPE, "%s: dtype %s is not supported on CUDA (use f32 or f64)", op, dtype_name(x->dtype));
    if (w->dtype != x->dtype || y->dtype != x->dtype)
        return tensor_fail(STATUS_DTYPE, "%s: x, w and out/dy must share a dtype (%s, %s, %s)", op, dtype_name(x->dtype),
                           dtype_name(w->dtype), dtype_name(y->dtype));
    if (x->ndim != 4 || w->ndim != 4 || y->ndim != 4)
        return tensor_fail(STATUS_SHAPE, "%s: x, w and out/dy must be 4-D", op);
    if (!p || p->groups <= 0 || p->stride_h <= 0 || p->stride_w <= 0 || p->dil_h <= 0 || p->dil_w <= 0 || p->pad_top < 0 ||
        p->pad_bottom < 0 || p->pad_left < 0 || p->pad_right < 0)
        return tensor_fail(STATUS_VALUE, "%s: bad parameters (stride, dilation, groups > 0; padding >= 0)", op);
    g->N = x->shape[0], g->C = x->shape[1], g->H = x->shape[2], g->W = x->shape[3];
    g->O = w->shape[0], g->KH = w->shape[2], g->KW = w->shape[3];
    g->OH = y->shape[2], g->OW = y->shape[3];
    g->sh = p->stride_h, g->sw = p->stride_w, g->pt = p->pad_top, g->pl = p->pad_left;
    g->dh = p->dil_h, g->dw = p->dil_w, g->G = p->groups;
    if (g->C % g->G || g->O % g->G || w->shape[1] != g->C / g->G || y->shape[0] != g->N || y->shape[1] != g->O)
        return tensor_fail(STATUS_SHAPE, "%s: x [%lld,%lld,..], w [%lld,%lld,..], out [%lld,%lld,..] do not fit groups=%d", op,
                           (long long)g->N, (long long)g->C, (long long)g->O, (long long)w->shape[1],
                           (long long)y->shape[0], (long long)y->shape[1], g->G);
    const int64_t eh = g->H + p->pad_top + p->pad_bottom - (int64_t)g->dh * (g->KH - 1) - 1;
    const int64_t ew = g->W + p->pad_left + p->pad_right - (int64_t)g->dw * (g->KW - 1) - 1;
    if (eh < 0 || ew < 0 || g->OH != eh / g->sh + 1 || g->OW != ew / g->sw + 1)
        return tensor_fail(STATUS_SHAPE, "%s: output %lldx%lld does not match input %lldx%lld with this kernel/stride/padding",
                           op, (long long)g->OH, (long long)g->OW, (long long)g->H, (long long)g->W);
    g->Cg = g->C / g->G, g->Og = g->O / g->G, g->KK = g->KH * g->KW;
    g->Kg = g->Cg * g->KK, g->K = g->C * g->KK, g->HW = g->H * g->W, g->OHW = g->OH * g->OW;
    if (g->K > INT_MAX || g->HW > INT_MAX || g->OHW > INT_MAX || g->O > INT_MAX || g->N > INT_MAX ||
        g->KK * g->OHW > INT_MAX)
        return tensor_fail(STATUS_SHAPE, "%s: sizes exceed the 32-bit limits of the GEMM calls", op);
    g->pointwise = g->KH == 1 && g->KW == 1 && g->sh == 1 && g->sw == 1 && p->pad_top == 0 && p->pad_bottom == 0 &&
                   p->pad_left == 0 && p->pad_right == 0;
    return STATUS_OK;
}

/* a tiling of (image, pixel) for im2col: nb whole images of OHW pixels, or P pixels of one image */
struct tiling {
    int64_t nb, P;
};

/* a workspace bound: def (kWorkspaceBytes for im2col; kWinoWorkspaceBytes, kWeightWorkspaceBytes),
 * or DRAFT_CONV_WORKSPACE_KB from the environment for all of them (tests set a small one to make
 * every tiling path run on small shapes) */
size_t workspace_bytes(size_t def = kWorkspaceBytes)
{
    const char *e = getenv("DRAFT_CONV_WORKSPACE_KB");
    const long kb = e ? atol(e) : 0;
    return kb > 0 ? (size_t)kb << 10 : def;
}

tiling pixel_tiling(const geom &g, size_t es, size_t bytes)
{
    const int64_t ws = (int64_t)(bytes / es), per_img = g.K * g.OHW;
    if (per_img <= ws) {
        int64_t nb = ws / per_img;
        nb = nb < g.N ? nb : g.N;
        return tiling{nb < 65535 ? nb : 65535, g.OHW};
    }
    int64_t pmax = ws / g.K;
    if (pmax < 256) pmax = 256;   /* huge K: exceed the budget rather than run tiny GEMMs */
    const int64_t ntiles = (g.OHW + pmax - 1) / pmax;
    int64_t P = (g.OHW + ntiles - 1) / ntiles;
    P = (P + 3) / 4 * 4;
    return tiling{1, P < g.OHW ? P : g.OHW};
}

/* f(n0, nb, p0, pc) for each tile of t in order (images n0 .. n0+nb, pixels p0 .. p0+pc); stops at
 * the first error */
template <class F> enum status for_each_tile(const geom &g, const tiling &t, F f)
{
    for (int64_t n0 = 0; n0 < g.N; n0 += t.nb) {
        const int64_t nb = g.N - n0 < t.nb ? g.N - n0 : t.nb;
        for (int64_t p0 = 0; p0 < g.OHW; p0 += t.P) {
            const int64_t pc = g.OHW - p0 < t.P ? g.OHW - p0 : t.P;
            const enum status s = f(n0, nb, p0, pc);
            if (s) return s;
        }
    }
    return STATUS_OK;
}

/* ---------------------------------------------------------------- kernels */

kgeom kernel_geom(const geom &g)
{
    return kgeom{(int)g.C, (int)g.H, (int)g.W, (int)g.KH, (int)g.KW, (int)g.OH, (int)g.OW, g.sh, g.sw, g.pt, g.pl,
                 g.dh, g.dw, (int)g.KK, (int)g.K, (int)g.HW, (int)g.OHW};
}

/* grid: x over pixels, y over channels, z over images (y, z loop past 65535): no 64-bit divisions */
dim3 plane_grid(int64_t pixels, int64_t N, int64_t C, int threads)
{
    const int64_t gy = C < 65535 ? C : 65535, gz = N < 65535 ? N : 65535;
    return dim3((unsigned)((pixels + threads - 1) / threads), (unsigned)(gy > 0 ? gy : 1), (unsigned)(gz > 0 ? gz : 1));
}

template <typename T, typename CT>
enum status im2col(CT *col, const T *x, const geom &g, int64_t n0, int64_t nb, int64_t p0, int64_t pc,
                   cudaStream_t st = nullptr)
{
    const kgeom kg = kernel_geom(g);
    if (!st) st = (cudaStream_t)cuda_stream();
    const bool v4 = sizeof(T) == 4 && pc % 4 == 0;
    const int per_block = kIm2colThreads * (v4 ? 4 : 1);
    const dim3 grid((unsigned)g.K, (unsigned)((pc + per_block - 1) / per_block), (unsigned)nb);
    if constexpr (sizeof(T) == 4) {
        if (v4) im2col_kernel<T, CT, 4><<<grid, kIm2colThreads, 0, st>>>(col, x, kg, n0, (int)p0, (int)pc);
        else im2col_kernel<T, CT, 1><<<grid, kIm2colThreads, 0, st>>>(col, x, kg, n0, (int)p0, (int)pc);
    } else {
        im2col_kernel<T, CT, 1><<<grid, kIm2colThreads, 0, st>>>(col, x, kg, n0, (int)p0, (int)pc);
    }
    CUDA_LAUNCHED();
    return STATUS_OK;
}

/* under PRECISION_BF16 the f32 forward and backward weight write their im2col in bf16 directly
 * (half the bytes, and no second pass to pack it for the GEMM) */
bool col_in_bf16() { return tensor_precision() == PRECISION_BF16; }

/* GEMMs whose op(A) is a bf16 im2col: B (f32) is packed by cuda_gemm_bf16, C stays f32 */
enum status gemm(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, const uint16_t *A,
                 int64_t lda, int64_t sA, const float *B, int64_t ldb, int64_t sB, float beta, float *C, int64_t ldc,
                 int64_t sC, int64_t batch)
{
    return cuda_gemm_bf16(true, false, ta == CUBLAS_OP_T, tb == CUBLAS_OP_T, m, n, k, 1.0, A, lda, sA, B, ldb, sB, beta,
                          C, ldc, sC, batch);
}

/* ---------------------------------------------------------------- pipelined im2col */

/* DRAFT_CONV_PIPELINE=1 (opt-in until measured on a GPU): a forward of several tiles writes the
 * im2col of tile t+1 on a side stream while tile t's GEMM runs on the main stream, into two
 * workspaces of half the bound each (the same memory in all). Events order them: the side stream
 * starts after everything queued before the conv (x written, workspaces free), tile t's GEMM
 * waits for its im2col, and im2col t+2 waits for GEMM t to have read that workspace. The main
 * stream has waited for every im2col before the conv returns, so the workspaces go back to the
 * caching allocator exactly as in the one-stream path. */
bool conv_pipeline() { return cuda_switch("DRAFT_CONV_PIPELINE", false); }

cudaStream_t g_side = nullptr;
cudaEvent_t g_ev_start = nullptr, g_ev_ready[2] = {nullptr, nullptr}, g_ev_free[2] = {nullptr, nullptr};

enum status side_stream_init()
{
    if (g_side) return STATUS_OK;
    cudaEvent_t *evs[5] = {&g_ev_start, &g_ev_ready[0], &g_ev_ready[1], &g_ev_free[0], &g_ev_free[1]};
    for (int i = 0; i < 5; i++)
        if (!*evs[i]) CUDA_TRY(cudaEventCreateWithFlags(evs[i], cudaEventDisableTiming));
    CUDA_TRY(cudaStreamCreateWithFlags(&g_side, cudaStreamNonBlocking));
    return STATUS_OK;
}

/* the forward GEMMs of one tile, one per group: out[n0.., g's channels, p0..] (+)= w_g @ col_g */
template <typename T, typename CT>
enum status forward_gemms(T *out, const T *w, const CT *col, T beta, const geom &g, int64_t n0, int64_t nb, int64_t p0,
                          int64_t pc)
{
    enum status s = STATUS_OK;
    for (int gi = 0; gi < g.G && !s; gi++)
        s = gemm(CUBLAS_OP_N, CUBLAS_OP_N, pc, g.Og, g.Kg, col + gi * g.Kg * pc, pc, g.K * pc, w + gi * g.Og * g.Kg, g.Kg, 0,
                 beta, out + n0 * g.O * g.OHW + gi * g.Og * g.OHW + p0, g.OHW, g.O * g.OHW, nb);
    return s;
}

/* out (bias already in it when beta = 1) += w @ im2col(x), tile by tile, pipelined as above */
template <typename CT>
enum status conv_forward_pipelined(float *out, const float *x, const float *w, float beta, const geom &g, const tiling &t,
                                   CT *const col[2])
{
    cudaStream_t st = (cudaStream_t)cuda_stream();
    CUDA_TRY(cudaEventRecord(g_ev_start, st));
    CUDA_TRY(cudaStreamWaitEvent(g_side, g_ev_start, 0));
    int64_t it = 0;
    const enum status s = for_each_tile(g, t, [&](int64_t n0, int64_t nb, int64_t p0, int64_t pc) -> enum status {
        const int b = (int)(it & 1);
        if (it++ >= 2) CUDA_TRY(cudaStreamWaitEvent(g_side, g_ev_free[b], 0));   /* GEMM it-2 has read col[b] */
        enum status e;
        if ((e = im2col<float, CT>(col[b], x, g, n0, nb, p0, pc, g_side))) return e;
        CUDA_TRY(cudaEventRecord(g_ev_ready[b], g_side));
        CUDA_TRY(cudaStreamWaitEvent(st, g_ev_ready[b], 0));
        if ((e = forward_gemms(out, w, col[b], beta, g, n0, nb, p0, pc))) return e;
        CUDA_TRY(cudaEventRecord(g_ev_free[b], st));
        return STATUS_OK;
    });
    if (s) (void)cudaStreamSynchronize(g_side);   /* nothing may still write a workspace being handed back */
    return s;
}

/* ---------------------------------------------------------------- row-shift forward */

/* DRAFT_CONV_ROWSHIFT=1 (opt-in until measured on a GPU): a forward with stride_h 1 (every 3x3 of
 * the SD UNet) runs as in conv2d_kernels.cuh: a partial im2col KH times smaller than im2col's and
 * KH GEMMs of depth Cg*KW over views of it shifted by whole rows, straight into the output when
 * OW % 8 == 0 (else into a padded one and a crop). */
bool conv_rowshift() { return cuda_switch("DRAFT_CONV_ROWSHIFT", false); }

/* *done: whether it ran (not when the shape does not suit it or one image's partial im2col (and
 * padded output) exceed the workspace bound: then the im2col path runs) */
template <typename T, typename CT>
enum status rowshift_forward(bool *done, T *out, const T *x, const T *w, const T *bias, const geom &g)
{
    *done = false;
    const kgeom kg = kernel_geom(g);
    const rs_geom r = rowshift_geom(kg, g.Cg);
    if (g.sh != 1 || g.C * g.KW > 65535 || g.O > 65535 || r.plane > INT_MAX || r.k > INT_MAX) return STATUS_OK;
    const bool direct = r.Wq == g.OW;   /* the GEMMs write the output itself */
    const size_t per_img = (size_t)(g.C * g.KW * r.plane) * sizeof(CT) + (direct ? 0 : (size_t)(g.O * r.m) * sizeof(T));
    if (per_img > workspace_bytes()) return STATUS_OK;
    int64_t nbt = (int64_t)(workspace_bytes() / per_img);
    nbt = nbt > g.N ? g.N : nbt > 65535 ? 65535 : nbt;
    enum status s = STATUS_OK;
    CT *cols = scratch<CT>(nbt * g.C * g.KW * r.plane, &s);
    if (!cols) return s;
    T *opad = nullptr, *wk = nullptr;
    if ((!direct && !(opad = scratch<T>(nbt * g.O * r.m, &s))) || !(wk = scratch<T>(g.O * g.Kg, &s))) return s;
    cudaStream_t st = (cudaStream_t)cuda_stream();
    rowshift_weight_kernel<T><<<(unsigned)((g.O * g.Kg + 255) / 256), 256, 0, st>>>(wk, w, g.O, g.Cg, (int)g.KH,
                                                                                    (int)g.KW);
    CUDA_LAUNCHED();
    if (direct && bias) {
        bias_fill_kernel<T><<<plane_grid(g.OHW, g.N, g.O, 256), 256, 0, st>>>(out, bias, g.N, g.O, g.OHW);
        CUDA_LAUNCHED();
    }
    for (int64_t n0 = 0; n0 < g.N; n0 += nbt) {
        const int64_t nb = g.N - n0 < nbt ? g.N - n0 : nbt;
        rowshift_kernel<T, CT><<<dim3((unsigned)((r.plane + 255) / 256), (unsigned)(g.C * g.KW), (unsigned)nb), 256, 0,
                                 st>>>(cols, x, kg, n0, r.Wq, r.Hp);
        CUDA_LAUNCHED();
        T *dst = direct ? out + n0 * g.O * g.OHW : opad;
        const T beta0 = direct && bias ? T(1) : T(0);
        if ((s = (enum status)rowshift_gemms<T, CT>(kg, g.G, g.O, cols, wk, dst, beta0, nb, [](auto... a) {
                 return (int)gemm(CUBLAS_OP_N, CUBLAS_OP_N, a...);
             })))
            return s;
        if (!direct) {
            rowshift_crop_kernel<T><<<plane_grid(g.OHW, nb, g.O, 256), 256, 0, st>>>(out, opad, bias, kg, n0, g.O, r.Wq);
            CUDA_LAUNCHED();
        }
    }
    *done = true;
    return STATUS_OK;
}

/* ---------------------------------------------------------------- implicit-GEMM forward */

/* DRAFT_CONV_IMPLICIT=1 (opt-in until measured on a GPU): f32 convolutions with groups 1 under
 * TF32 (one tf32 product), exact f32 (3xTF32) or bf16 autocast (bf16 products, f32 sums) run
 * their forward, and for stride 1 their backward input, as conv_implicit_kernel
 * (conv2d_kernels.cuh): no im2col, no bias pre-fill (the backward
 * input over the flipped, transposed weights), and a workspace only for split-K's partial outputs
 * where the tiles alone would leave SMs idle (SD's 640 and 1280 channels at 32 and 16 px).
 * DRAFT_CONV_IMPLICIT_BM=64|128 and DRAFT_CONV_IMPLICIT_SPLIT=N force the tile height and the
 * number of splits (tests, benchmarks). */
bool conv_implicit() { return cuda_switch("DRAFT_CONV_IMPLICIT", false); }

/* output channels per block for P pixels and O channels */
int implicit_bm(int64_t P, int64_t O)
{
    const char *e = getenv("DRAFT_CONV_IMPLICIT_BM");
    const int forced = e ? atoi(e) : 0;
    if (forced == 64 || forced == 128) return forced;
    /* 128 channels per block only where they divide O and still give every SM a block */
    const int64_t blocks128 = (P + kIgBN - 1) / kIgBN * (O / 128);
    return O % 128 == 0 && blocks128 >= cuda_sm_count() ? 128 : 64;
}

template <int BM, int MODE, bool TAP>
enum status implicit_launch(float *out, const float *x, const float *w, const float *bias, const kgeom &kg, int64_t N,
                            int O, int S)
{
    static bool smem_set = false;   /* per instantiation: more than the default 48 KiB */
    const size_t smem = ig_smem_bytes(BM, MODE);
    if (!smem_set) {
        CUDA_TRY(cudaFuncSetAttribute(conv_implicit_kernel<BM, MODE, TAP>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)smem));
        smem_set = true;
    }
    const int64_t P = N * kg.OHW, n = P * O;
    const ig_split sp = ig_split_plan(kg.K, S);
    S = sp.S;
    enum status s = STATUS_OK;
    float *part = S > 1 ? scratch<float>(S * n, &s) : out;
    if (!part) return s;
    const dim3 grid((unsigned)((P + kIgBN - 1) / kIgBN), (unsigned)((O + BM - 1) / BM), (unsigned)S);
    const int vec_a = kg.K % 4 == 0 && ((uintptr_t)w & 15) == 0;
    cudaStream_t st = (cudaStream_t)cuda_stream();
    conv_implicit_kernel<BM, MODE, TAP><<<grid, ig_threads(BM), smem, st>>>(part, x, w, S > 1 ? nullptr : bias, kg, O, P, vec_a,
                                                                     sp.kps);
    CUDA_LAUNCHED();
    if (S > 1) {
        const bool v4 = split_sum_v4(n, kg.OHW, out);
        const unsigned blocks = (unsigned)(((v4 ? n / 4 : n) + 255) / 256);
        if (v4) split_sum_kernel<4><<<blocks, 256, 0, st>>>(out, part, S, n, bias, kg.OHW, O);
        else split_sum_kernel<1><<<blocks, 256, 0, st>>>(out, part, S, n, bias, kg.OHW, O);
        CUDA_LAUNCHED();
    }
    return STATUS_OK;
}

/* the switch, the precision and the kernel's limits: 32-bit indices into one image's input (C*HW),
 * the depth K, the grid; KH*KW <= 64 (its tap mask) */
bool implicit_applies(const geom &g, int64_t Cin, int64_t HWin, int64_t K, int64_t P, int64_t O)
{
    return conv_implicit() && g.G == 1 && !g.pointwise && K > 0 && g.KK <= 64 &&
           Cin * HWin <= INT_MAX && K <= INT_MAX - kIgBK && (P + kIgBN - 1) / kIgBN <= INT_MAX && (O + 63) / 64 <= 65535;
}

/* split-K where the tiles alone leave SMs idle: up to 8 splits toward two blocks per SM, at least
 * 8 k steps each; DRAFT_CONV_IMPLICIT_SPLIT=N forces N (tests, benchmarks) */
int implicit_splits(int64_t blocks, int64_t K)
{
    const char *e = getenv("DRAFT_CONV_IMPLICIT_SPLIT");
    if (e && atoi(e) > 0) return atoi(e) < 64 ? atoi(e) : 64;
    const int64_t want = 2 * (int64_t)cuda_sm_count(), nk = (K + kIgBK - 1) / kIgBK;
    int64_t S = blocks >= want ? 1 : (want + blocks - 1) / blocks;
    S = S > 8 ? 8 : S;
    S = S > nk / 8 ? nk / 8 : S;
    return S < 1 ? 1 : (int)S;
}

/* the mode the precision switch asks for, at BM channels per block */
template <int BM, bool TAP>
enum status implicit_launch_mode(float *out, const float *x, const float *w, const float *bias, const kgeom &kg, int64_t N,
                                 int O, int S)
{
    switch (tensor_precision()) {
    case PRECISION_F32: return implicit_launch<BM, IG_3XTF32, TAP>(out, x, w, bias, kg, N, O, S);
    case PRECISION_TF32: return implicit_launch<BM, IG_TF32, TAP>(out, x, w, bias, kg, N, O, S);
    default: return implicit_launch<BM, IG_BF16, TAP>(out, x, w, bias, kg, N, O, S);
    }
}

/* out = conv(x, w) (+ bias) for the geometry kg (the forward's, or dgrad_geom's) with O output
 * channels. w is [O][C][KH][KW], or with flip the forward's weights, to be flipped and transposed
 * for the backward input: made here into the layout the kernel reads (conv_weight_layout_kernel:
 * tap-major where C % 16 == 0; else as it is, or flipped) */
enum status implicit_run(float *out, const float *x, const float *w, const float *bias, const kgeom &kg, int64_t N, int O,
                         bool flip)
{
    const int64_t P = N * kg.OHW, nw = (int64_t)O * kg.K;
    const int bm = implicit_bm(P, O);
    const int S = implicit_splits((P + kIgBN - 1) / kIgBN * ((O + bm - 1) / bm), kg.K);
    const bool tap = kg.C % kIgBK == 0;
    cudaStream_t st = (cudaStream_t)cuda_stream();
    enum status s = STATUS_OK;
    if (tap || flip) {
        float *wp = scratch<float>(nw, &s);
        if (!wp) return s;
        const unsigned blocks = (unsigned)((nw + 255) / 256);
        /* the forward's channel counts: O x C = (flip ? kg.C x O : O x kg.C) */
        const int64_t fo = flip ? kg.C : O, fc = flip ? O : kg.C;
        conv_weight_layout_kernel<float><<<blocks, 256, 0, st>>>(wp, w, fo, fc, kg.KH, kg.KW, flip, tap);
        CUDA_LAUNCHED();
        w = wp;
    }
    if (tap)
        return bm == 128 ? implicit_launch_mode<128, true>(out, x, w, bias, kg, N, O, S)
                         : implicit_launch_mode<64, true>(out, x, w, bias, kg, N, O, S);
    return bm == 128 ? implicit_launch_mode<128, false>(out, x, w, bias, kg, N, O, S)
                     : implicit_launch_mode<64, false>(out, x, w, bias, kg, N, O, S);
}

/* the implicit-GEMM forward where it applies (*done), else nothing (the im2col path runs) */
enum status implicit_forward(bool *done, float *out, const float *x, const float *w, const float *bias, const geom &g)
{
    if (!implicit_applies(g, g.C, g.HW, g.K, g.N * g.OHW, g.O)) return STATUS_OK;
    const enum status s = implicit_run(out, x, w, bias, kernel_geom(g), g.N, (int)g.O, false);
    *done = s == STATUS_OK;
    return s;
}

/* the same for the backward input of a stride-1 convolution: dx = conv(dy, flipped transposed w) */
enum status implicit_backward_input(bool *done, float *dx, const float *dy, const float *w, const geom &g)
{
    if (g.sh != 1 || g.sw != 1 || !implicit_applies(g, g.O, g.OHW, g.O * g.KK, g.N * g.HW, g.C)) return STATUS_OK;
    const enum status s = implicit_run(dx, dy, w, nullptr, dgrad_geom(kernel_geom(g), (int)g.O), g.N, (int)g.C, true);
    *done = s == STATUS_OK;
    return s;
}

/* ---------------------------------------------------------------- halo-tile forward */

/* DRAFT_CONV_HALO: under TF32, a 3x3 convolution at stride 1, dilation 1, groups 1 with C % 8 == 0
 * and W % 4 == 0 (every 3x3 of SD's UNet and VAE at stride 1) runs its forward, and its backward
 * input, as conv_halo_kernel (conv2d_kernels.cuh): per 8 input channels, one halo tile of the input
 * in shared memory and the 9 taps read out of it. The weights go through conv_halo_weight_kernel
 * first (fragment order, tf32, padded to BM channels). DRAFT_CONV_HALO_BM=64|128|160 forces the
 * channel block (tests, benchmarks). Unset, it runs by size: few channels over many pixels (the
 * VAE decoder's 128 channels at 512 px), where it beat both im2col and Winograd on an H200
 * (2026-11-29, B = 2: forward 1.02 ms against 2.68 and 1.40, forward+backward 5.05 against 10.65
 * and 5.85); already at 256 channels (256 px) Winograd is faster (0.74 against 0.97 ms forward,
 * 3.56 against 3.96 forward+backward), and so at 512 ch (128 px), at SD's UNet shapes (320 ch at
 * 64 px: 0.109 against 0.117 ms forward), and at 640 and 1280 channels by 1.7-2x.
 * =1 takes every convolution it applies to, =0 none. */
bool conv_halo(const kgeom &kg, int64_t Oc)
{
    return cuda_switch("DRAFT_CONV_HALO", kg.C <= 128 && Oc <= 128 && (int64_t)kg.OH * kg.OW >= 128 * 128);
}

/* DRAFT_CONV_AUTOCAST_TF32=1 (opt-in until measured on a GPU): under bf16 autocast, the 3x3
 * stride-1 convolutions that the halo kernel or Winograd take under TF32 run as under TF32 (TF32
 * products, more exact than bf16's; the weight gradient too) instead of as im2col with bf16 GEMMs. At the VAE decoder's
 * shapes im2col is slow (TF32, 128 ch at 512 px: 2.68 ms forward against the halo kernel's 1.02),
 * and its backward input is tens of tiles of GEMM and col2im; our bf16 DRaFT step's backward took
 * 1.22 s against TF32's 0.77 on an H200. The bench rows *_autocast (ours and PyTorch's) at those
 * shapes, and this switch's, say whether it pays. */
bool conv_autocast_tf32() { return cuda_switch("DRAFT_CONV_AUTOCAST_TF32", false); }

/* DRAFT_CONV_AUTOCAST_WINO=1 (opt-in until measured on a GPU): under bf16 autocast (and without
 * DRAFT_CONV_AUTOCAST_TF32, which takes precedence), Winograd takes the 3x3 stride-1 convolutions
 * it takes under TF32 (forward and backward input), its 16 GEMMs as bf16 products (the
 * transforms write V and U as bf16: half the bytes of their passes), instead of im2col with bf16
 * GEMMs: 2.25x fewer products and no im2col. The weight gradient stays im2col's. Its error is about twice a
 * direct bf16 convolution's (tests/test_conv_emu.cpp), under autocast's bound. Rows *_acwino. */
bool conv_autocast_wino() { return cuda_switch("DRAFT_CONV_AUTOCAST_WINO", false); }

/* the precision the halo and Winograd paths run in: the current one, or TF32 for bf16 autocast
 * under DRAFT_CONV_AUTOCAST_TF32 */
enum precision fast_conv_precision()
{
    const enum precision p = tensor_precision();
    return p == PRECISION_BF16 && conv_autocast_tf32() ? PRECISION_TF32 : p;
}

/* the matrix-product precision set for a scope, the caller's again on every way out */
struct precision_scope {
    enum precision saved = tensor_precision();
    explicit precision_scope(enum precision p) { tensor_set_precision(p); }
    ~precision_scope() { tensor_set_precision(saved); }
    precision_scope(const precision_scope &) = delete;
    precision_scope &operator=(const precision_scope &) = delete;
};

/* the channel block: forced, else of 64, 128 and 160 the one whose grid fills the SMs best with
 * the blocks a SM holds (shared memory: 79 KiB, 145 KiB, 162 KiB a block), ties to the larger */
int halo_bm(int64_t tiles, int64_t O)
{
    const char *e = getenv("DRAFT_CONV_HALO_BM");
    const int forced = e ? atoi(e) : 0;
    if (forced == 64 || forced == 128 || forced == 160) return forced;
    const int bms[3] = {64, 128, 160}, per_sm[3] = {2, 1, 1};
    const int64_t sms = cuda_sm_count();
    int best = 64;
    double best_eff = -1;
    for (int i = 0; i < 3; i++) {
        const int64_t blocks = tiles * ((O + bms[i] - 1) / bms[i]), slots = sms * per_sm[i];
        const int64_t waves = (blocks + slots - 1) / slots;
        /* useful channels over computed ones, times blocks over the slots of the waves run */
        const double eff = (double)O / (double)((O + bms[i] - 1) / bms[i] * bms[i]) * (double)blocks / (double)(waves * slots);
        if (eff >= best_eff) best = bms[i], best_eff = eff;
    }
    return best;
}

/* the switch, the precision (TF32 only) and the kernel's limits, for a convolution of an input
 * [N, Cin, H, W] (x, aligned) into Oc channels of geometry kg */
bool halo_applies(const kgeom &kg, int64_t N, int64_t Oc, int G, const void *x)
{
    return fast_conv_precision() == PRECISION_TF32 && G == 1 && kg.C > 0 && kg.KH == 3 && kg.KW == 3 && kg.sh == 1 &&
           kg.sw == 1 && kg.dh == 1 && kg.dw == 1 && kg.C % 8 == 0 && kg.W % 4 == 0 && ((uintptr_t)x & 15) == 0 &&
           N <= 65535 && (Oc + 63) / 64 <= 65535 && (int64_t)kg.C * kg.HW <= INT_MAX && conv_halo(kg, Oc);
}

template <int BM>
enum status halo_launch(float *out, const float *x, const float *wp, const float *bias, const kgeom &kg, int64_t tiles,
                        int64_t N, int O)
{
    static bool smem_set = false;   /* per BM: more than the default 48 KiB */
    const size_t smem = halo_smem_bytes(BM);
    if (!smem_set) {
        CUDA_TRY(cudaFuncSetAttribute(conv_halo_kernel<BM>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        smem_set = true;
    }
    const dim3 grid((unsigned)tiles, (unsigned)((O + BM - 1) / BM), (unsigned)N);
    conv_halo_kernel<BM><<<grid, halo_threads(BM), smem, (cudaStream_t)cuda_stream()>>>(out, x, wp, bias, kg, O);
    CUDA_LAUNCHED();
    return STATUS_OK;
}

/* out = conv(x, w) (+ bias) over kg with O output channels; flip: w is the forward's, for the
 * backward input (kg = dgrad_geom, O = the forward's C) */
enum status halo_run(float *out, const float *x, const float *w, const float *bias, const kgeom &kg, int64_t N, int O,
                     bool flip)
{
    const int64_t tiles = (int64_t)((kg.OH + kHaloTH - 1) / kHaloTH) * ((kg.OW + kHaloTW - 1) / kHaloTW);
    const int bm = halo_bm(tiles * N, O), Opad = (O + bm - 1) / bm * bm;
    const int64_t nw = (int64_t)Opad / 16 * (kg.C / 8 * 9) * 128;
    enum status s = STATUS_OK;
    float *wp = scratch<float>(nw, &s);
    if (!wp) return s;
    conv_halo_weight_kernel<<<(unsigned)((nw + 255) / 256), 256, 0, (cudaStream_t)cuda_stream()>>>(wp, w, O, Opad, kg.C,
                                                                                                 flip);
    CUDA_LAUNCHED();
    return bm == 160 ? halo_launch<160>(out, x, wp, bias, kg, tiles, N, O)
         : bm == 128 ? halo_launch<128>(out, x, wp, bias, kg, tiles, N, O)
                     : halo_launch<64>(out, x, wp, bias, kg, tiles, N, O);
}

/* ---------------------------------------------------------------- Winograd F(2x2, 3x3)
 *
 * DRAFT_CONV_WINOGRAD (the default since the H200 run of 2026-11-29; =0 turns it off): a 3x3
 * stride-1 f32 forward (groups 1)
 * under exact f32 or TF32, and its backward input (the forward of dy with the weights flipped), as
 * a transform of the input (wino_input_kernel), 16 strided-batched GEMMs (cuda_gemm: the
 * precision switch applies) and a transform back (wino_output_kernel, bias included): 2.25x fewer
 * products than im2col's, GEMMs of K = C. V and M take at most kWinoWorkspaceBytes (a chunk of
 * tiles per pass); U (16 O C floats, 16/9 of w) comes on top. Under TF32 its error is that of the
 * products' operands, rounded after the transforms (tests/test_conv_emu.cpp measures both).
 * H200, B = 2, TF32, forward / forward+backward against im2col: 320 ch at 64 px 0.103 / 0.366 ms
 * against 0.160 / 0.523, 640 ch at 32 px 0.080 / 0.275 against 0.104 / 0.359, 1280 ch at 16 px
 * 0.110 / 0.402 against 0.189 / 0.463; exact f32 at 320 ch 0.247 against 0.418. */
bool conv_winograd() { return cuda_switch("DRAFT_CONV_WINOGRAD", true); }

bool wino_applies(const kgeom &kg, int64_t N, int64_t Oc, int G)
{
    const enum precision pr = fast_conv_precision();
    return conv_winograd() && (pr == PRECISION_F32 || pr == PRECISION_TF32 || (pr == PRECISION_BF16 && conv_autocast_wino())) &&
           G == 1 && kg.C > 0 && Oc > 0 && kg.KH == 3 && kg.KW == 3 && kg.sh == 1 && kg.sw == 1 && kg.dh == 1 &&
           kg.dw == 1 && kg.OH > 0 && kg.OW > 0 && N * ((kg.OH + 1) / 2) * ((kg.OW + 1) / 2) <= INT_MAX;
}

/* wino_run's passes, with U and V of element type VT (float, or bf16 bits) */
template <typename VT>
enum status wino_chunks_run(float *out, const float *x, const float *w, const float *bias, const kgeom &kg, int64_t N, int O,
                            bool flip)
{
    const wino_chunks ch = wino_plan(N, kg.OH, kg.OW, kg.C, O, workspace_bytes(kWinoWorkspaceBytes));
    const int64_t OC = (int64_t)O * kg.C;
    enum status s = STATUS_OK;
    VT *U = scratch<VT>(16 * OC, &s), *V = U ? scratch<VT>(16 * (int64_t)kg.C * ch.ld, &s) : nullptr;
    float *M = V ? scratch<float>(16 * (int64_t)O * ch.ld, &s) : nullptr;
    if (!M) return s;
    cudaStream_t st = (cudaStream_t)cuda_stream();
    wino_weight_kernel<VT><<<(unsigned)((OC + 255) / 256), 256, 0, st>>>(U, w, O, kg.C, flip);
    CUDA_LAUNCHED();
    const bool pairs = kg.OW % 2 == 0 && ((uintptr_t)out & 7) == 0;
    for (int64_t q0 = 0; q0 < ch.tiles; q0 += ch.ld) {
        const int pc = (int)(ch.tiles - q0 < ch.ld ? ch.tiles - q0 : ch.ld);
        wino_input_kernel<VT><<<plane_grid(pc, 1, kg.C, 256), 256, 0, st>>>(V, x, kg, q0, pc, ch.ld);   /* tiles x channels */
        CUDA_LAUNCHED();
        if constexpr (sizeof(VT) == 2)
            s = cuda_gemm_bf16(true, true, false, false, pc, O, kg.C, 1.0, V, ch.ld, kg.C * ch.ld, U, kg.C, OC, 0.0, M, ch.ld,
                               (int64_t)O * ch.ld, 16);
        else
            s = gemm(CUBLAS_OP_N, CUBLAS_OP_N, pc, O, kg.C, V, ch.ld, kg.C * ch.ld, U, kg.C, OC, 0.f, M, ch.ld,
                     (int64_t)O * ch.ld, 16);
        if (s) return s;
        wino_output_kernel<<<plane_grid(pc, 1, O, 256), 256, 0, st>>>(out, M, bias, kg, O, q0, pc, ch.ld, pairs);
        CUDA_LAUNCHED();
    }
    return STATUS_OK;
}

/* out = conv(x, w) (+ bias) over kg with O output channels; flip: w is the forward's and this is
 * its backward input (kg = dgrad_geom, O = the forward's C) */
enum status wino_run(float *out, const float *x, const float *w, const float *bias, const kgeom &kg, int64_t N, int O,
                     bool flip)
{
    /* its GEMMs in the precision wino_applies took it for (TF32 under DRAFT_CONV_AUTOCAST_TF32,
     * bf16 under DRAFT_CONV_AUTOCAST_WINO: U and V then written as bf16, half the bytes, and
     * multiplied as such) */
    const precision_scope prec(fast_conv_precision());
    return tensor_precision() == PRECISION_BF16 ? wino_chunks_run<uint16_t>(out, x, w, bias, kg, N, O, flip)
                                                : wino_chunks_run<float>(out, x, w, bias, kg, N, O, flip);
}

/* ---------------------------------------------------------------- the three operations */

/* out (+)= w @ im2col(x) over the tiles of the workspace; CT is the im2col's element type */
template <typename T, typename CT> enum status forward_tiles(T *out, const T *x, const T *w, T beta, const geom &g)
{
    enum status s = STATUS_OK;
    if constexpr (sizeof(T) == 4) {
        if (conv_pipeline()) {
            const tiling t2 = pixel_tiling(g, sizeof(CT), workspace_bytes() / 2);
            if (t2.nb < g.N || t2.P < g.OHW) {   /* several tiles: something to overlap */
                if ((s = side_stream_init())) return s;
                CT *col2[2] = {scratch<CT>(t2.nb * g.K * t2.P, &s), nullptr};
                if (col2[0]) col2[1] = scratch<CT>(t2.nb * g.K * t2.P, &s);
                if (col2[1]) return conv_forward_pipelined<CT>(out, x, w, beta, g, t2, col2);
                tensor_clear_error();   /* no room for two workspaces: the one-stream path below */
                s = STATUS_OK;
            }
        }
    }
    const tiling t = pixel_tiling(g, sizeof(CT), workspace_bytes());
    CT *col = scratch<CT>(t.nb * g.K * t.P, &s);
    if (!col) return s;
    return for_each_tile(g, t, [&](int64_t n0, int64_t nb, int64_t p0, int64_t pc) -> enum status {
        const enum status e = im2col<T, CT>(col, x, g, n0, nb, p0, pc);
        return e ? e : forward_gemms(out, w, col, beta, g, n0, nb, p0, pc);
    });
}

template <typename T> enum status conv_forward(T *out, const T *x, const T *w, const T *bias, const geom &g)
{
    enum status s = STATUS_OK;
    if constexpr (sizeof(T) == 4) {
        const kgeom kg = kernel_geom(g);
        if (halo_applies(kg, g.N, g.O, (int)g.G, x)) return halo_run(out, x, w, bias, kg, g.N, (int)g.O, false);
        if (wino_applies(kg, g.N, g.O, (int)g.G)) return wino_run(out, x, w, bias, kg, g.N, (int)g.O, false);
        bool done = false;
        if ((s = implicit_forward(&done, out, x, w, bias, g)) || done) return s;
    }
    if (conv_rowshift() && !g.pointwise && g.Kg > 0) {
        bool done = false;
        if constexpr (sizeof(T) == 4) {
            if (col_in_bf16()) s = rowshift_forward<float, uint16_t>(&done, out, x, w, bias, g);
            else s = rowshift_forward<T, T>(&done, out, x, w, bias, g);
        } else {
            s = rowshift_forward<T, T>(&done, out, x, w, bias, g);
        }
        if (s || done) return s;
    }
    const T beta = bias ? T(1) : T(0);
    if (bias) {
        bias_fill_kernel<T><<<plane_grid(g.OHW, g.N, g.O, 256), 256, 0, (cudaStream_t)cuda_stream()>>>(out, bias, g.N, g.O,
                                                                                                      g.OHW);
        CUDA_LAUNCHED();
    }
    if (g.Kg == 0) return STATUS_OK;   /* no input channels: the output is the bias */
    if (g.pointwise) {
        for (int gi = 0; gi < g.G; gi++)
            if ((s = gemm(CUBLAS_OP_N, CUBLAS_OP_N, g.OHW, g.Og, g.Cg, x + gi * g.Cg * g.HW, g.HW, g.C * g.HW,
                          w + gi * g.Og * g.Kg, g.Kg, 0, beta, out + gi * g.Og * g.OHW, g.OHW, g.O * g.OHW, g.N)))
                return s;
        return STATUS_OK;
    }
    if constexpr (sizeof(T) == 4)
        if (col_in_bf16()) return forward_tiles<float, uint16_t>(out, x, w, beta, g);
    return forward_tiles<T, T>(out, x, w, beta, g);
}

template <typename T> enum status conv_backward_input(T *dx, const T *dy, const T *w, const geom &g)
{
    enum status s = STATUS_OK;
    if constexpr (sizeof(T) == 4) {
        const kgeom dg = dgrad_geom(kernel_geom(g), (int)g.O);
        if (g.sh == 1 && g.sw == 1 && halo_applies(dg, g.N, g.C, (int)g.G, dy))
            return halo_run(dx, dy, w, nullptr, dg, g.N, (int)g.C, true);
        if (g.sh == 1 && g.sw == 1 && wino_applies(dg, g.N, g.C, (int)g.G))
            return wino_run(dx, dy, w, nullptr, dg, g.N, (int)g.C, true);
        bool done = false;
        if ((s = implicit_backward_input(&done, dx, dy, w, g)) || done) return s;
    }
    if (g.pointwise) {
        for (int gi = 0; gi < g.G; gi++)
            if ((s = gemm(CUBLAS_OP_N, CUBLAS_OP_T, g.HW, g.Cg, g.Og, dy + gi * g.Og * g.OHW, g.OHW, g.O * g.OHW,
                          w + gi * g.Og * g.Kg, g.Kg, 0, T(0), dx + gi * g.Cg * g.HW, g.HW, g.C * g.HW, g.N)))
                return s;
        return STATUS_OK;
    }
    /* tile: cc channels of one group (all pixels), nb images when a whole group fits */
    const int64_t ws = (int64_t)(workspace_bytes() / sizeof(T)), per_ch = g.KK * g.OHW;
    int64_t cc = ws / per_ch;
    cc = cc < 1 ? 1 : cc > g.Cg ? g.Cg : cc;
    const int64_t nchunks = (g.Cg + cc - 1) / cc;
    cc = (g.Cg + nchunks - 1) / nchunks;   /* even chunks */
    int64_t nbt = cc == g.Cg ? ws / (g.Cg * per_ch) : 1;
    nbt = nbt < 1 ? 1 : nbt > g.N ? g.N : nbt > 65535 ? 65535 : nbt;
    T *dcol = scratch<T>(nbt * cc * per_ch, &s);
    if (!dcol) return s;
    const kgeom kg = kernel_geom(g);
    cudaStream_t st = (cudaStream_t)cuda_stream();
    for (int64_t n0 = 0; n0 < g.N; n0 += nbt) {
        const int64_t nb = g.N - n0 < nbt ? g.N - n0 : nbt;
        for (int gi = 0; gi < g.G; gi++)
            for (int64_t cl = 0; cl < g.Cg; cl += cc) {
                const int64_t ccc = g.Cg - cl < cc ? g.Cg - cl : cc, R = ccc * g.KK;
                if ((s = gemm(CUBLAS_OP_N, CUBLAS_OP_T, g.OHW, R, g.Og, dy + n0 * g.O * g.OHW + gi * g.Og * g.OHW, g.OHW,
                              g.O * g.OHW, w + gi * g.Og * g.Kg + cl * g.KK, g.Kg, 0, T(0), dcol, g.OHW, R * g.OHW, nb)))
                    return s;
                col2im_kernel<T><<<plane_grid(g.HW, nb, ccc, 256), 256, 0, st>>>(dx, dcol, kg, n0, (int)(gi * g.Cg + cl),
                                                                                 (int)ccc, nb);
                CUDA_LAUNCHED();
            }
    }
    return STATUS_OK;
}

/* dw += dy @ im2col(x)^T over the tiles of the workspace (the first GEMM overwrites) */
template <typename T, typename CT> enum status weight_tiles(T *dw, const T *dy, const T *x, const geom &g)
{
    enum status s = STATUS_OK;
    bool first = true;
    const tiling t = pixel_tiling(g, sizeof(CT), workspace_bytes(kWeightWorkspaceBytes));
    CT *col = scratch<CT>(t.nb * g.K * t.P, &s);
    if (!col) return s;
    return for_each_tile(g, t, [&](int64_t n0, int64_t nb, int64_t p0, int64_t pc) -> enum status {
        enum status e = im2col<T, CT>(col, x, g, n0, nb, p0, pc);
        for (int64_t i = 0; i < nb && !e; i++, first = false)
            e = gemm(CUBLAS_OP_T, CUBLAS_OP_N, g.Kg, g.Og, pc, col + i * g.K * pc, pc, g.Kg * pc,
                     dy + (n0 + i) * g.O * g.OHW + p0, g.OHW, g.Og * g.OHW, first ? T(0) : T(1), dw, g.Kg, g.Og * g.Kg,
                     g.G);
        return e;
    });
}

template <typename T> enum status conv_backward_weight(T *dw, const T *dy, const T *x, const geom &g)
{
    enum status s = STATUS_OK;
    bool first = true;
    if (g.pointwise) {
        for (int64_t n = 0; n < g.N; n++, first = false)
            if ((s = gemm(CUBLAS_OP_T, CUBLAS_OP_N, g.Kg, g.Og, g.HW, x + n * g.C * g.HW, g.HW, g.Cg * g.HW,
                          dy + n * g.O * g.OHW, g.OHW, g.Og * g.OHW, first ? T(0) : T(1), dw, g.Kg, g.Og * g.Kg, g.G)))
                return s;
        return STATUS_OK;
    }
    if constexpr (sizeof(T) == 4) {
        /* DRAFT_CONV_AUTOCAST_TF32: a convolution whose forward and backward input run in TF32
         * under autocast (halo or Winograd) takes its weight gradient in TF32 too */
        const kgeom kg = kernel_geom(g);
        if (tensor_precision() == PRECISION_BF16 && conv_autocast_tf32() &&
            (halo_applies(kg, g.N, g.O, (int)g.G, x) || wino_applies(kg, g.N, g.O, (int)g.G))) {
            const precision_scope prec(PRECISION_TF32);
            return weight_tiles<float, float>(dw, dy, x, g);
        }
        if (col_in_bf16()) return weight_tiles<float, uint16_t>(dw, dy, x, g);
    }
    return weight_tiles<T, T>(dw, dy, x, g);
}

/* ---------------------------------------------------------------- bodies (inside a scope) */

enum status forward_body(struct tensor *out, const struct tensor *x, const struct tensor *w, const struct tensor *bias,
                         const struct conv2d_params *p)
{
    geom g;
    enum status s = STATUS_OK;
    if ((s = make_geom(&g, x, w, out, p, "conv2d"))) return s;
    if (bias && (bias->dtype != x->dtype || tensor_numel(bias) != g.O))
        return tensor_fail(STATUS_SHAPE, "conv2d: bias must be [%lld] of dtype %s", (long long)g.O, dtype_name(x->dtype));
    if (tensor_numel(out) == 0) return STATUS_OK;
    if (g.Kg == 0) {   /* no input channels: the output is the bias (the GEMM paths would divide by K = 0) */
        if (!bias) return cuda_fill(out, 0);
        const int64_t b4s[4] = {1, g.O, 1, 1};
        struct tensor *b4 = tensor_reshape((struct tensor *)bias, 4, b4s);
        struct tensor *be = b4 ? tensor_expand(b4, out->ndim, out->shape) : NULL;
        return be ? cuda_copy(out, be) : tensor_status();
    }
    const struct tensor *xc, *wc, *bc = NULL;
    if (!(xc = contig(x, &s)) || !(wc = contig(w, &s)) || (bias && !(bc = contig(bias, &s)))) return s;
    outbuf o;
    if ((s = o.open(out))) return s;
    if (x->dtype == DTYPE_F32)
        s = conv_forward<float>(o.p<float>(), dptr<float>(xc), dptr<float>(wc), bc ? dptr<float>(bc) : NULL, g);
    else
        s = conv_forward<double>(o.p<double>(), dptr<double>(xc), dptr<double>(wc), bc ? dptr<double>(bc) : NULL, g);
    return s ? s : o.close();
}

enum status backward_input_body(struct tensor *dx, const struct tensor *dy, const struct tensor *w,
                                const struct conv2d_params *p)
{
    geom g;
    enum status s = STATUS_OK;
    if ((s = make_geom(&g, dx, w, dy, p, "conv2d_backward_input"))) return s;
    if (tensor_numel(dx) == 0) return STATUS_OK;
    if (tensor_numel(dy) == 0 || g.O == 0) return cuda_fill(dx, 0);
    const struct tensor *dyc, *wc;
    if (!(dyc = contig(dy, &s)) || !(wc = contig(w, &s))) return s;
    outbuf o;
    if ((s = o.open(dx))) return s;
    if (dy->dtype == DTYPE_F32) s = conv_backward_input<float>(o.p<float>(), dptr<float>(dyc), dptr<float>(wc), g);
    else s = conv_backward_input<double>(o.p<double>(), dptr<double>(dyc), dptr<double>(wc), g);
    return s ? s : o.close();
}

enum status backward_weight_body(struct tensor *dw, struct tensor *db, const struct tensor *dy, const struct tensor *x,
                                 const struct conv2d_params *p)
{
    geom g;
    enum status s = STATUS_OK;
    if ((s = make_geom(&g, x, dw, dy, p, "conv2d_backward_weight"))) return s;
    if (db && (db->dtype != x->dtype || tensor_numel(db) != g.O || (!tensor_is_contiguous(db) && db->ndim != 1)))
        return tensor_fail(STATUS_SHAPE, "conv2d_backward_weight: db must be [%lld] of dtype %s", (long long)g.O,
                           dtype_name(x->dtype));
    const int64_t sdb = db && !tensor_is_contiguous(db) ? db->stride[0] : 1;
    const struct tensor *dyc, *xc;
    if (!(dyc = contig(dy, &s)) || !(xc = contig(x, &s))) return s;
    const bool empty = g.N == 0 || g.OHW == 0;
    if (tensor_numel(dw) > 0) {
        if (empty) {
            if ((s = cuda_fill(dw, 0))) return s;
        } else {
            outbuf o;
            if ((s = o.open(dw))) return s;
            if (x->dtype == DTYPE_F32) s = conv_backward_weight<float>(o.p<float>(), dptr<float>(dyc), dptr<float>(xc), g);
            else s = conv_backward_weight<double>(o.p<double>(), dptr<double>(dyc), dptr<double>(xc), g);
            if (s || (s = o.close())) return s;
        }
    }
    if (db && g.O > 0) {
        if (empty) return cuda_fill(db, 0);
        cudaStream_t st = (cudaStream_t)cuda_stream();
        if (x->dtype == DTYPE_F32)
            bias_grad_kernel<float><<<(unsigned)g.O, 256, 0, st>>>(dptr<float>(db), sdb, dptr<float>(dyc), g.N,
                                                                  g.O, g.OHW);
        else
            bias_grad_kernel<double><<<(unsigned)g.O, 256, 0, st>>>(dptr<double>(db), sdb, dptr<double>(dyc), g.N,
                                                                   g.O, g.OHW);
        CUDA_LAUNCHED();
    }
    return STATUS_OK;
}

}  // namespace

/* ---------------------------------------------------------------- entry points */

extern "C" enum status cuda_conv2d(struct tensor *out, const struct tensor *x, const struct tensor *w,
                                   const struct tensor *bias, const struct conv2d_params *p)
{
    tensor_scope_begin();
    enum status s = forward_body(out, x, w, bias, p);
    tensor_scope_end();
    return s;
}

extern "C" enum status cuda_conv2d_backward_input(struct tensor *dx, const struct tensor *dy, const struct tensor *w,
                                                  const struct conv2d_params *p)
{
    tensor_scope_begin();
    enum status s = backward_input_body(dx, dy, w, p);
    tensor_scope_end();
    return s;
}

extern "C" enum status cuda_conv2d_backward_weight(struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                                   const struct tensor *x, const struct conv2d_params *p)
{
    tensor_scope_begin();
    enum status s = backward_weight_body(dw, db, dy, x, p);
    tensor_scope_end();
    return s;
}
