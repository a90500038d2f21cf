/* attention.cu — fused scaled-dot-product attention (forward and backward) for the CUDA backend.
 *
 * The kernels are in attention_kernels.cuh (tests/test_attention_emu.cpp also runs them on the
 * host, through tests/cuda_emu.h); this file has the f64 kernels, the launchers and the checks.
 *
 * Contract (backend.h): q [B,H,L,D], k [B,H,S,D], v [B,H,S,Dv] -> out [B,H,L,Dv] and
 * lse [B,H,L] = log sum_j exp(scale * q_i . k_j). Causal: query i sees keys j <= i + (S - L).
 * A query row that sees no key at all gets out = 0, lse = -inf and zero gradients.
 *
 * Algorithm (f32, head dims up to 256): flash-attention-2 style, SIMT f32, never forming
 * the L x S matrix. Head dims are padded (zeros in shared memory) to DP in {32, 48, 64, 80,
 * 96, 128, 160, 192, 256}, one template instance each.
 *  - forward: a block of 256 threads owns 64 query rows; it streams key/value tiles of BN
 *    (64, or 32 when DP > 128) rows through shared memory, computes S = Q K^T for a 4 x BN/16
 *    micro-tile per thread, keeps the running max / sum per row (online softmax, base 2 with
 *    scale*log2(e) folded into Q), rescales its 4 x DP/16 output accumulators and adds P V.
 *  - backward: D_i = rowsum(dO_i * O_i) first; then two kernels that each recompute
 *    P = exp(S - lse) tile by tile: one per key tile accumulates dV = P^T dO and
 *    dK = scale * dS^T Q over all query tiles, one per query tile accumulates
 *    dQ = scale * dS K over all key tiles, with dS = P * (dO V^T - D). Each gradient row is
 *    owned by exactly one block, so there are no atomics.
 * Head dims above 256 (the VAE's one 512-wide head), f32 and f64: GEMMs (cuda_gemm, so the
 * precision switch applies) over blocks of queries, the scores of a block against all keys in a
 * workspace of at most 256 MiB, softmax / dS row kernels between them (attention_kernels.cuh).
 * Before 2026-11-27 these ran on the simple kernels below: a thread per query row.
 * f64 up to 256 uses simple kernels (a thread per query or key row, same maths).
 * Tensor cores (DRAFT_ATTN_MMA, the default since the H200 run of 2026-11-27; head dims up to 64, the forward up to
 * 80): mma.sync forward and backward in bf16 (autocast), tf32 (PRECISION_TF32) or 3xTF32 (f32's accuracy), see
 * attention_kernels.cuh. The forward first packs K and V into its tiles' words and copies them in two
 * cp.async stages (fwd_mma), the backward Q, dO, lse and D (bwd_mma) (DRAFT_ATTN_PACKED, the default
 * since 2026-11-29); tiles are loaded in float4 runs where the rows allow (DRAFT_ATTN_VEC4, likewise).
 * Memory: shared memory only (57 KB for DP = 48 up to 209 KB for the DP = 256 dQ kernel),
 * plus a [B,H,L] f32 buffer for D in the backward. All tensors are read and written through
 * their strides (any layout, e.g. the [B,L,H,D] permuted views of a fused projection).
 * Determinism: no atomics; every sum has a fixed order, so results are bit-identical between
 * runs.
 * Measured on an H200 (f32, B=2, H=8; torch 2.11 SDPA f32 in brackets): L=S=4096 D=40 forward
 * 2.35 ms (2.08), backward 6.92 ms (5.29); L=4096 S=77: 0.094 (0.085) / 0.78 (1.14); L=S=1024
 * D=80: 0.23 (0.20) / 0.77 (0.65); L=S=256 D=160: 0.096 (0.054) / 0.25 (0.22). */
#include "tensor/cuda/cuda.h"

#include <cuda_pipeline.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>

namespace {

#include "tensor/cuda/attention_kernels.cuh"

template <typename T> opnd<T> make_opnd(const struct tensor *t)
{
    return opnd<T>{(T *)t->storage->data + t->offset, t->stride[0], t->stride[1], t->stride[2], t->stride[3]};
}

/* ---------------------------------------------------------------- launchers */

int padded_dim(int d)
{
    static const int dps[] = {32, 48, 64, 80, 96, 128, 160, 192, 256};
    for (int p : dps)
        if (d <= p) return p;
    return 0;   /* too wide for the tiled kernels */
}

/* raise a kernel's dynamic shared memory limit once (*done caches it per kernel instance) */
template <typename K> enum status set_smem(K kernel, size_t bytes, bool *done)
{
    if (bytes > 48 * 1024 && !*done)
        CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    *done = true;
    return STATUS_OK;
}

/* The fused dQ backward (dK, dV and dQ partials in one kernel, then an ordered sum) instead of a
 * separate dQ kernel: the default (DRAFT_ATTN_FUSED_DQ=0 turns it off; read at each call, so
 * tests can run both). H200, 2026-11-27, B2 H8 L4096 d40 f32 fwd+bwd: 7.34 ms against 9.33.
 * Its partials take at most kFusedDqBytes (more heads are done in chunks). */
constexpr int64_t kFusedDqBytes = (int64_t)1 << 30;
bool fused_dq() { return cuda_switch("DRAFT_ATTN_FUSED_DQ", true); }

/* the tensor-core kernels, for head dims up to 64: the default (DRAFT_ATTN_MMA=0 turns them off);
 * bf16 under PRECISION_BF16, one tf32 product under PRECISION_TF32, three (f32's accuracy) under
 * PRECISION_F32. H200, 2026-11-27, B2 H8 L4096 d40 f32 (3xTF32): forward 1.74 ms against 2.37 of
 * the SIMT kernels (torch SDPA 2.10), forward+backward 6.14 against 9.33 (torch 7.14). */
bool attn_mma() { return cuda_switch("DRAFT_ATTN_MMA", true); }

/* DRAFT_ATTN_VEC4 (the default since the H200 run of 2026-11-29; =0 turns it off): the tensor-core
 * kernels load their tiles in float4 runs where the rows allow (contiguous, 16-byte aligned, head
 * dims % 4 == 0: SD's q, k, v), V transposed from them: a quarter of the loads and their index
 * arithmetic, which outnumber the products at head dim 40. H200, B2 H8 L4096 d40, against the
 * scalar loads: forward 0.62x (3xTF32) / 0.52x (TF32) / 0.66x (bf16) of their time, forward+backward
 * 0.75x / 0.62x / 0.80x. */
bool attn_vec4() { return cuda_switch("DRAFT_ATTN_VEC4", true); }

/* call f(policy) with the element policy of the current precision */
template <class F> enum status with_mma_policy(F f)
{
    switch (tensor_precision()) {
    case PRECISION_BF16: return f(mma_bf16_ops{});
    case PRECISION_TF32: return f(mma_tf32_ops<false>{});
    default: return f(mma_tf32_ops<true>{});
    }
}

/* DRAFT_ATTN_PACKED (the default since the H200 run of 2026-11-29; =0 turns it off; forward 0.36x /
 * 0.43x / 0.35x of the unpacked kernels' time in 3xTF32 / TF32 / bf16, forward+backward 0.69x /
 * 0.65x / 0.50x, B2 H8 L4096 d40): the tensor-core forward reads K and V
 * packed once into its tiles' words (attn_pack_rows_kernel, attn_pack_cols_kernel: a pass over K and V,
 * in bf16 half their bytes) with 16-byte cp.async, the next tile's copy in flight under this
 * one's products; without it every block loads, converts and transposes every tile itself, and
 * waits for each. The packed words take (B H) (Sp W + ntk DP 64 / EPW) words of scratch. The
 * backward packs Q and dO (both ways) and its per-row lse and D the same way (bwd_mma). */
bool attn_packed() { return cuda_switch("DRAFT_ATTN_PACKED", true); }

template <int DP, class E>
enum status fwd_mma(opnd<float> out, float *lse, int64_t lsb, int64_t lsh, int64_t lsl, opnd<const float> q,
                    opnd<const float> k, opnd<const float> v, const dims &dm)
{
    const int64_t blocks = (int64_t)dm.B * dm.H * ((dm.L + 63) / 64);
    if (blocks == 0) return STATUS_OK;
    cudaStream_t st = (cudaStream_t)cuda_stream();
    if (attn_packed() && dm.S > 0) {
        const int ntk = (dm.S + 63) / 64, Sp = ntk * 64;
        const int64_t heads = (int64_t)dm.B * dm.H, nk = heads * Sp * (DP / E::EPW), nv = heads * ntk * DP * (64 / E::EPW);
        int64_t n = nk + nv;   /* words, as f32 elements; ours: freed below, queued behind the kernels */
        struct tensor *pk = tensor_keep(tensor_empty(DTYPE_F32, 1, &n, DEVICE_CUDA));
        if (!pk) return tensor_status() ? tensor_status() : STATUS_OOM;
        uint32_t *kp = (uint32_t *)pk->storage->data, *vp = kp + nk;
        static bool ready = false;   /* per instantiation */
        constexpr size_t smem = attn_packed_smem<DP, E>();
        enum status s = set_smem(attn_fwd_mma_kernel<DP, E, true>, smem, &ready);
        if (!s) {
            attn_pack_rows_kernel<DP, E><<<(unsigned)((nk + 255) / 256), 256, 0, st>>>(kp, k, dm.B * dm.H, dm.H, dm.S, dm.D, Sp);
            attn_pack_cols_kernel<DP, E><<<(unsigned)((nv + 255) / 256), 256, 0, st>>>(vp, v, dm.B * dm.H, dm.H, dm.S, dm.Dv, ntk);
            attn_fwd_mma_kernel<DP, E, true>
                <<<(unsigned)blocks, kMmaThreads, smem, st>>>(out, lse, lsb, lsh, lsl, q, k, v, dm, kp, vp);
            if (cudaGetLastError() != cudaSuccess) s = tensor_fail(STATUS_DEVICE, "attention: the packed forward did not launch");
        }
        tensor_free(pk);
        return s;
    }
    attn_fwd_mma_kernel<DP, E><<<(unsigned)blocks, kMmaThreads, 0, st>>>(out, lse, lsb, lsh, lsl, q, k, v, dm);
    CUDA_LAUNCHED();
    return STATUS_OK;
}

template <int DP>
enum status fwd_tiled(opnd<float> out, float *lse, int64_t lsb, int64_t lsh, int64_t lsl, opnd<const float> q,
                      opnd<const float> k, opnd<const float> v, const dims &dm)
{
    using C = cfg<DP>;
    enum status s;
    static bool ready = false;
    if ((s = set_smem(attn_fwd_kernel<DP>, C::fwd_smem, &ready))) return s;
    const int64_t blocks = (int64_t)dm.B * dm.H * ((dm.L + C::BM - 1) / C::BM);
    if (blocks == 0) return STATUS_OK;
    attn_fwd_kernel<DP><<<(unsigned)blocks, kThreads, C::fwd_smem, (cudaStream_t)cuda_stream()>>>(out, lse, lsb, lsh, lsl,
                                                                                                  q, k, v, dm);
    CUDA_LAUNCHED();
    return STATUS_OK;
}

/* The fused backwards' dQ: `launch(d2, nh, part)` queues the kernel that writes the partials of the
 * nh heads from d2.bh0 on, then the ordered sum turns them into dq. The partials take at most
 * kFusedDqBytes (more heads go in chunks); when memory is short the chunks shrink, down to one head,
 * and *done = false (error cleared) when not even that fits: the caller runs the split kernels. */
template <class Launch>
enum status dq_partials_run(const dims &dm, int ntiles, int bn, int bmk, opnd<float> dq, Launch launch, bool *done)
{
    *done = false;
    const int64_t heads = (int64_t)dm.B * dm.H, per_head = (int64_t)ntiles * dm.L * dm.D;
    if (heads == 0 || per_head == 0) return STATUS_OK;
    const int64_t fit = kFusedDqBytes / (int64_t)sizeof(float) / per_head;
    const int64_t nchunks = (heads + (fit > 0 ? fit : 1) - 1) / (fit > 0 ? fit : 1);
    int64_t hc = (heads + nchunks - 1) / nchunks;   /* balanced chunks */
    struct tensor *part;
    for (;;) {
        int64_t n = hc * per_head;
        if ((part = tensor_keep(tensor_empty(DTYPE_F32, 1, &n, DEVICE_CUDA)))) break;   /* ours: freed below, not by a scope */
        tensor_clear_error();
        if (hc == 1) return STATUS_OK;
        hc = (hc + 1) / 2;
    }
    float *pp = (float *)part->storage->data;
    cudaStream_t st = (cudaStream_t)cuda_stream();
    enum status s = STATUS_OK;
    for (int64_t h0 = 0; h0 < heads && !s; h0 += hc) {
        const int nh = (int)(heads - h0 < hc ? heads - h0 : hc);
        dims d2 = dm;
        d2.bh0 = (int)h0;
        if ((s = launch(d2, nh, pp))) break;
        const int64_t elems = (int64_t)nh * dm.L * dm.D;
        attn_bwd_dq_reduce_kernel<<<(unsigned)((elems + 255) / 256), 256, 0, st>>>(dq, pp, nh, ntiles, bn, bmk, d2);
        if (cudaGetLastError() != cudaSuccess) s = tensor_fail(STATUS_DEVICE, "attention_backward: the dQ sum did not launch");
    }
    tensor_free(part);   /* queued behind the kernels on the one stream */
    *done = !s;
    return s;
}

/* the tensor-core backward (same switch and policy as fwd_mma): dK, dV and dQ partials in one
 * kernel per chunk of heads, then the ordered dQ sum */
template <int DP, class E>
enum status bwd_mma(opnd<float> dq, opnd<float> dk, opnd<float> dv, opnd<const float> q, opnd<const float> k,
                    opnd<const float> v, opnd<const float> dout, const float *lse, int64_t lsb, int64_t lsh, int64_t lsl,
                    const float *Dvec, const dims &dm, bool *done)
{
    using M = mma_bwd_cfg<DP, E>;
    enum status s;
    static bool ready = false, ready_pk = false;
    *done = false;
    const bool packed = attn_packed() && dm.L > 0 && (dq.p || dk.p || dv.p);   /* only where a kernel runs */
    if ((s = packed ? set_smem(attn_bwd_mma_kernel<DP, E, true>, M::smem_packed, &ready_pk)
                    : set_smem(attn_bwd_mma_kernel<DP, E>, M::smem, &ready)))
        return s;
    cudaStream_t st = (cudaStream_t)cuda_stream();
    const int ntiles = (dm.S + 63) / 64;
    const int64_t heads = (int64_t)dm.B * dm.H;
    /* DRAFT_ATTN_PACKED: Q, dO (both ways), lse and D packed once for every head (attn_bwd_pack_offsets);
     * ours, freed at the end, queued behind the kernels on the one stream */
    struct tensor *pkt = NULL;
    const uint32_t *pk = nullptr;
    if (packed && heads > 0 && ntiles > 0) {
        const int ntq = (dm.L + 63) / 64;
        int64_t off[6];
        attn_bwd_pack_offsets<DP, E>(heads, ntq, off);
        int64_t n = off[5];
        if (!(pkt = tensor_keep(tensor_empty(DTYPE_F32, 1, &n, DEVICE_CUDA)))) return tensor_status() ? tensor_status() : STATUS_OOM;
        uint32_t *w = (uint32_t *)pkt->storage->data;
        const int64_t nr = off[1] - off[0], nc = off[3] - off[2], nl = off[5] - off[4];
        const unsigned br = (unsigned)((nr + 255) / 256), bc = (unsigned)((nc + 255) / 256);
        attn_pack_rows_kernel<DP, E><<<br, 256, 0, st>>>(w + off[0], q, (int)heads, dm.H, dm.L, dm.D, ntq * 64);
        attn_pack_rows_kernel<DP, E><<<br, 256, 0, st>>>(w + off[1], dout, (int)heads, dm.H, dm.L, dm.Dv, ntq * 64);
        attn_pack_cols_kernel<DP, E><<<bc, 256, 0, st>>>(w + off[2], q, (int)heads, dm.H, dm.L, dm.D, ntq);
        attn_pack_cols_kernel<DP, E><<<bc, 256, 0, st>>>(w + off[3], dout, (int)heads, dm.H, dm.L, dm.Dv, ntq);
        attn_pack_lse_d_kernel<<<(unsigned)((nl + 255) / 256), 256, 0, st>>>((float *)(w + off[4]), lse, lsb, lsh, lsl, Dvec,
                                                                             dm, ntq);
        pk = w;
        if (cudaGetLastError() != cudaSuccess) {
            tensor_free(pkt);
            return tensor_fail(STATUS_DEVICE, "attention_backward: the packing kernels did not launch");
        }
    }
    auto kernel_on = [&](unsigned blocks, const dims &d2, float *pp) {
        if (pk)
            attn_bwd_mma_kernel<DP, E, true><<<blocks, kMmaThreads, M::smem_packed, st>>>(dk, dv, q, k, v, dout, lse, lsb, lsh,
                                                                                          lsl, Dvec, d2, pp, pk);
        else
            attn_bwd_mma_kernel<DP, E><<<blocks, kMmaThreads, M::smem, st>>>(dk, dv, q, k, v, dout, lse, lsb, lsh, lsl, Dvec,
                                                                             d2, pp);
        return cudaGetLastError() == cudaSuccess ? STATUS_OK
                                                 : tensor_fail(STATUS_DEVICE, "attention_backward: the kernel did not launch");
    };
    if (!dq.p || dm.L == 0 || ntiles == 0 || heads == 0) {   /* no dQ: no partials */
        if ((dk.p || dv.p) && ntiles > 0 && heads > 0) s = kernel_on((unsigned)(heads * ntiles), dm, nullptr);
        tensor_free(pkt);
        *done = !s;
        return s;
    }
    auto launch = [&](const dims &d2, int nh, float *pp) -> enum status { return kernel_on((unsigned)(nh * ntiles), d2, pp); };
    s = dq_partials_run(dm, ntiles, 64, 64, dq, launch, done);
    tensor_free(pkt);
    return s;
}

template <int DP>
enum status bwd_tiled(opnd<float> dq, opnd<float> dk, opnd<float> dv, opnd<const float> q, opnd<const float> k,
                      opnd<const float> v, opnd<const float> dout, const float *lse, int64_t lsb, int64_t lsh,
                      int64_t lsl, const float *Dvec, const dims &dm)
{
    using C = cfg<DP>;
    enum status s;
    cudaStream_t st = (cudaStream_t)cuda_stream();
    static bool ready_kv = false, ready_q = false, ready_fq = false;
    const int ntiles = (dm.S + C::BN - 1) / C::BN;
    const int64_t kv_blocks = (int64_t)dm.B * dm.H * ntiles;
    const int64_t q_blocks = (int64_t)dm.B * dm.H * ((dm.L + C::BM - 1) / C::BM);
    if (dq.p && kv_blocks > 0 && dm.L > 0 && fused_dq()) {
        if ((s = set_smem(attn_bwd_dkdv_kernel<DP, true>, C::dkdv_dq_smem, &ready_fq))) return s;
        auto launch = [&](const dims &d2, int nh, float *pp) -> enum status {
            attn_bwd_dkdv_kernel<DP, true><<<(unsigned)(nh * ntiles), kThreads, C::dkdv_dq_smem, st>>>(
                dk, dv, q, k, v, dout, lse, lsb, lsh, lsl, Dvec, d2, pp);
            CUDA_LAUNCHED();
            return STATUS_OK;
        };
        bool done = false;
        if ((s = dq_partials_run(dm, ntiles, C::BN, C::BMK, dq, launch, &done)) || done) return s;
    }
    if ((dk.p || dv.p) && kv_blocks > 0) {
        if ((s = set_smem(attn_bwd_dkdv_kernel<DP, false>, C::dkdv_smem, &ready_kv))) return s;
        const int64_t blocks = kv_blocks;
        attn_bwd_dkdv_kernel<DP, false><<<(unsigned)blocks, kThreads, C::dkdv_smem, st>>>(dk, dv, q, k, v, dout, lse, lsb,
                                                                                           lsh, lsl, Dvec, dm, nullptr);
        CUDA_LAUNCHED();
    }
    if (dq.p && q_blocks > 0) {
        if ((s = set_smem(attn_bwd_dq_kernel<DP>, C::dq_smem, &ready_q))) return s;
        const int64_t blocks = q_blocks;
        attn_bwd_dq_kernel<DP><<<(unsigned)blocks, kThreads, C::dq_smem, st>>>(dq, q, k, v, dout, lse, lsb, lsh, lsl, Dvec,
                                                                               dm);
        CUDA_LAUNCHED();
    }
    return STATUS_OK;
}

/* ---------------------------------------------------------------- wide heads: GEMMs */

/* the wide path's workspace bound: scores of one query block against all keys (two buffers in
 * the backward); smaller when memory is short, down to one query row per head */
constexpr int64_t kWideBytes = (int64_t)256 << 20;

/* the workspace for `need` elements (capped at the bound; halved while allocation fails, down to
 * `least`): NULL when not even that fits */
template <typename T> struct tensor *wide_workspace(int64_t need, int64_t least, int64_t *got)
{
    int64_t n = need < kWideBytes / (int64_t)sizeof(T) ? need : kWideBytes / (int64_t)sizeof(T);
    if (n < least) n = least;
    for (;;) {
        struct tensor *w = tensor_empty(sizeof(T) == 4 ? DTYPE_F32 : DTYPE_F64, 1, &n, DEVICE_CUDA);
        if (w || n <= least) { *got = n; return w; }
        tensor_clear_error();
        n = n / 2 > least ? n / 2 : least;
    }
}

/* cuda_gemm in the layout the wide driver asks for (attention_kernels.cuh) */
template <typename T> auto wide_gemm()
{
    return [](bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T *A, int64_t lda, int64_t sA, const T *B, int64_t ldb,
              int64_t sB, T beta, T *C, int64_t ldc, int64_t sC, int64_t count) -> int {
        return (int)cuda_gemm(sizeof(T) == 4 ? DTYPE_F32 : DTYPE_F64, ta, tb, m, n, k, 1.0, A, lda, sA, B, ldb, sB,
                              (double)beta, C, ldc, sC, count);
    };
}

/* every operand a stack of BLAS matrices: unit stride along the last dim, rows at least that far
 * apart (else the caller makes contiguous copies, which always are) */
bool wide_ready(const struct tensor *const *ts, int n)
{
    for (int i = 0; i < n; i++) {
        const struct tensor *t = ts[i];
        if (t && ((t->shape[3] > 1 && t->stride[3] != 1) || (t->shape[2] > 1 && t->stride[2] < t->shape[3])))
            return false;
    }
    return true;
}

/* make_opnd for the GEMMs: a single row's stride is never used to address, but is a leading
 * dimension to cuBLAS, which wants it at least the row's length */
template <typename T> opnd<T> wide_opnd(const struct tensor *t)
{
    opnd<T> o = make_opnd<T>(t);
    if (t->shape[2] <= 1 && o.sl < t->shape[3]) o.sl = t->shape[3];
    return o;
}

/* both run inside their own tensor scope, which owns the copies and the workspace (freed at its
 * end: queued behind the kernels on the one stream) */
template <typename T>
enum status wide_forward_run(struct tensor *out, struct tensor *lse, const struct tensor *q, const struct tensor *k,
                             const struct tensor *v, const dims &dm)
{
    const struct tensor *all[4] = {out, q, k, v};
    if (!wide_ready(all, 4)) {
        struct tensor *qc = tensor_contiguous((struct tensor *)q), *kc = tensor_contiguous((struct tensor *)k);
        struct tensor *vc = tensor_contiguous((struct tensor *)v), *oc = tensor_empty(out->dtype, 4, out->shape, DEVICE_CUDA);
        if (!qc || !kc || !vc || !oc) return tensor_status() ? tensor_status() : STATUS_OOM;
        enum status s = wide_forward_run<T>(oc, lse, qc, kc, vc, dm);
        return s ? s : cuda_copy(out, oc);
    }
    if (dm.S == 0) {   /* no key: out 0, lse -inf (no empty GEMMs) */
        enum status s = cuda_fill(out, 0);
        return s ? s : cuda_fill(lse, -INFINITY);
    }
    int64_t got = 0;
    struct tensor *ws = wide_workspace<T>((int64_t)dm.H * dm.L * dm.S, (int64_t)dm.H * dm.S, &got);
    if (!ws) return tensor_status() ? tensor_status() : STATUS_OOM;
    const int64_t lsh = lse->stride[1], lsl = lse->stride[2];
    cudaStream_t st = (cudaStream_t)cuda_stream();
    auto softmax = [&](T *s, T *lse_b, int nr, int q0) -> int {
        attn_wide_softmax_kernel<T><<<(unsigned)(dm.H * nr), kThreads, 0, st>>>(s, lse_b, lsh, lsl, nr, q0, dm);
        CUDA_LAUNCHED();
        return 0;
    };
    const int e = attn_wide_forward<T>(wide_opnd<T>(out), (T *)lse->storage->data + lse->offset, lse->stride[0],
                                       wide_opnd<const T>(q), wide_opnd<const T>(k), wide_opnd<const T>(v), dm,
                                       (T *)ws->storage->data, got, wide_gemm<T>(), softmax);
    return (enum status)e;
}

template <typename T>
enum status wide_forward(struct tensor *out, struct tensor *lse, const struct tensor *q, const struct tensor *k,
                         const struct tensor *v, const dims &dm)
{
    tensor_scope_begin();
    const enum status s = wide_forward_run<T>(out, lse, q, k, v, dm);
    tensor_scope_end();
    return s;
}

template <typename T>
enum status wide_backward_run(struct tensor *dq, struct tensor *dk, struct tensor *dv, const struct tensor *dout,
                          const struct tensor *q, const struct tensor *k, const struct tensor *v, const struct tensor *lse,
                          const T *Dvec, const dims &dm)
{
    const struct tensor *all[7] = {dq, dk, dv, dout, q, k, v};
    if (!wide_ready(all, 7)) {
        struct tensor *c[7] = {NULL, NULL, NULL, NULL, NULL, NULL, NULL};
        for (int i = 0; i < 7; i++) {
            if (!all[i]) continue;
            c[i] = i < 3 ? tensor_empty(all[i]->dtype, 4, all[i]->shape, DEVICE_CUDA)
                         : tensor_contiguous((struct tensor *)all[i]);
            if (!c[i]) return tensor_status() ? tensor_status() : STATUS_OOM;
        }
        enum status s = wide_backward_run<T>(c[0], c[1], c[2], c[3], c[4], c[5], c[6], lse, Dvec, dm);
        for (int i = 0; i < 3 && !s; i++)
            if (all[i]) s = cuda_copy((struct tensor *)all[i], c[i]);
        return s;
    }
    if (dm.L == 0 || dm.S == 0) {   /* no query or no key: zero gradients (no empty GEMMs) */
        enum status s = dk ? cuda_fill(dk, 0) : STATUS_OK;
        if (!s && dv) s = cuda_fill(dv, 0);
        return s || !dq ? s : cuda_fill(dq, 0);
    }
    int64_t got = 0;
    struct tensor *ws = wide_workspace<T>(2 * (int64_t)dm.H * dm.L * dm.S, 2 * (int64_t)dm.H * dm.S, &got);
    if (!ws) return tensor_status() ? tensor_status() : STATUS_OOM;
    const int64_t lsh = lse->stride[1], lsl = lse->stride[2];
    cudaStream_t st = (cudaStream_t)cuda_stream();
    auto ds = [&](T *s, T *dp, const T *lse_b, const T *D_b, int nr, int q0) -> int {
        const int64_t n = (int64_t)dm.H * nr * dm.S;
        attn_wide_ds_kernel<T><<<(unsigned)((n + 255) / 256), 256, 0, st>>>(s, dp, lse_b, lsh, lsl, D_b, nr, q0, n, dm);
        CUDA_LAUNCHED();
        return 0;
    };
    const opnd<T> none = {nullptr, 0, 0, 0, 0};
    const int e = attn_wide_backward<T>(dq ? wide_opnd<T>(dq) : none, dk ? wide_opnd<T>(dk) : none,
                                        dv ? wide_opnd<T>(dv) : none, wide_opnd<const T>(q), wide_opnd<const T>(k),
                                        wide_opnd<const T>(v), wide_opnd<const T>(dout),
                                        (const T *)lse->storage->data + lse->offset, lse->stride[0], Dvec, dm,
                                        (T *)ws->storage->data, got, wide_gemm<T>(), ds);
    return (enum status)e;
}

template <typename T>
enum status wide_backward(struct tensor *dq, struct tensor *dk, struct tensor *dv, const struct tensor *dout,
                          const struct tensor *q, const struct tensor *k, const struct tensor *v, const struct tensor *lse,
                          const T *Dvec, const dims &dm)
{
    tensor_scope_begin();
    const enum status s = wide_backward_run<T>(dq, dk, dv, dout, q, k, v, lse, Dvec, dm);
    tensor_scope_end();
    return s;
}

#define ATTN_DISPATCH(dp, call)                                                                            \
    switch (dp) {                                                                                          \
    case 32: return call(32);                                                                              \
    case 48: return call(48);                                                                              \
    case 64: return call(64);                                                                              \
    case 80: return call(80);                                                                              \
    case 96: return call(96);                                                                              \
    case 128: return call(128);                                                                            \
    case 160: return call(160);                                                                            \
    case 192: return call(192);                                                                            \
    case 256: return call(256);                                                                            \
    default: break;                                                                                        \
    }

template <typename T>
enum status forward_run(struct tensor *out, struct tensor *lse, const struct tensor *q, const struct tensor *k,
                        const struct tensor *v, const dims &dm)
{
    const opnd<T> o = make_opnd<T>(out);
    const opnd<const T> qo = make_opnd<const T>(q), ko = make_opnd<const T>(k), vo = make_opnd<const T>(v);
    T *lp = (T *)lse->storage->data + lse->offset;
    const int64_t lsb = lse->stride[0], lsh = lse->stride[1], lsl = lse->stride[2];
    const int dp = padded_dim(dm.D > dm.Dv ? dm.D : dm.Dv);   /* 0: wider than the tiled kernels */
    if constexpr (sizeof(T) == 4) {
        if (attn_mma() && dp > 0 && dp <= 80)   /* the backward: up to 64 (its registers) */
            return with_mma_policy([&](auto e) {
                using E = decltype(e);
                return dp == 32   ? fwd_mma<32, E>(o, lp, lsb, lsh, lsl, qo, ko, vo, dm)
                       : dp == 48 ? fwd_mma<48, E>(o, lp, lsb, lsh, lsl, qo, ko, vo, dm)
                       : dp == 64 ? fwd_mma<64, E>(o, lp, lsb, lsh, lsl, qo, ko, vo, dm)
                                  : fwd_mma<80, E>(o, lp, lsb, lsh, lsl, qo, ko, vo, dm);
            });
#define FWD_CALL(DP) fwd_tiled<DP>(o, lp, lsb, lsh, lsl, qo, ko, vo, dm)
        ATTN_DISPATCH(dp, FWD_CALL)
#undef FWD_CALL
    }
    if (dp == 0) return wide_forward<T>(out, lse, q, k, v, dm);
    const int64_t rows = (int64_t)dm.B * dm.H * dm.L;
    attn_fwd_simple_kernel<T><<<(unsigned)((rows + 127) / 128), 128, 0, (cudaStream_t)cuda_stream()>>>(o, lp, lsb, lsh, lsl,
                                                                                                       qo, ko, vo, dm);
    CUDA_LAUNCHED();
    return STATUS_OK;
}

template <typename T>
enum status backward_run(struct tensor *dq, struct tensor *dk, struct tensor *dv, const struct tensor *dout,
                         const struct tensor *q, const struct tensor *k, const struct tensor *v, const struct tensor *out,
                         const struct tensor *lse, const dims &dm)
{
    const opnd<T> none = {nullptr, 0, 0, 0, 0};
    const opnd<T> dqo = dq ? make_opnd<T>(dq) : none, dko = dk ? make_opnd<T>(dk) : none, dvo = dv ? make_opnd<T>(dv) : none;
    const opnd<const T> qo = make_opnd<const T>(q), ko = make_opnd<const T>(k), vo = make_opnd<const T>(v);
    const opnd<const T> go = make_opnd<const T>(dout), oo = make_opnd<const T>(out);
    const T *lp = (const T *)lse->storage->data + lse->offset;
    const int64_t lsb = lse->stride[0], lsh = lse->stride[1], lsl = lse->stride[2];
    cudaStream_t st = (cudaStream_t)cuda_stream();

    /* D = rowsum(dO * O), [B*H*L] */
    const int64_t rows = (int64_t)dm.B * dm.H * dm.L;
    int64_t n = rows > 0 ? rows : 1;
    struct tensor *dt = tensor_empty(sizeof(T) == 4 ? DTYPE_F32 : DTYPE_F64, 1, &n, DEVICE_CUDA);
    if (!dt) return tensor_status() ? tensor_status() : STATUS_OOM;
    T *Dvec = (T *)dt->storage->data;
    if (rows > 0) {
        attn_bwd_pre_kernel<T><<<(unsigned)((rows + 7) / 8), 256, 0, st>>>(Dvec, go, oo, dm);
        CUDA_LAUNCHED();
    }
    const int dp = padded_dim(dm.D > dm.Dv ? dm.D : dm.Dv);
    if constexpr (sizeof(T) == 4) {
        if (attn_mma() && dp > 0 && dp <= 64) {   /* else (or when its dQ partials do not fit) the f32 kernels */
            bool done = false;
            enum status s = with_mma_policy([&](auto e) {
                using E = decltype(e);
                return dp == 32   ? bwd_mma<32, E>(dqo, dko, dvo, qo, ko, vo, go, lp, lsb, lsh, lsl, Dvec, dm, &done)
                       : dp == 48 ? bwd_mma<48, E>(dqo, dko, dvo, qo, ko, vo, go, lp, lsb, lsh, lsl, Dvec, dm, &done)
                                  : bwd_mma<64, E>(dqo, dko, dvo, qo, ko, vo, go, lp, lsb, lsh, lsl, Dvec, dm, &done);
            });
            if (s || done) return s;
        }
#define BWD_CALL(DP) bwd_tiled<DP>(dqo, dko, dvo, qo, ko, vo, go, lp, lsb, lsh, lsl, Dvec, dm)
        ATTN_DISPATCH(dp, BWD_CALL)
#undef BWD_CALL
    }
    if (dp == 0) return wide_backward<T>(dq, dk, dv, dout, q, k, v, lse, Dvec, dm);
    if (dq && rows > 0) {
        attn_bwd_dq_simple_kernel<T><<<(unsigned)((rows + 127) / 128), 128, 0, st>>>(dqo, qo, ko, vo, go, lp, lsb, lsh, lsl,
                                                                                    Dvec, dm);
        CUDA_LAUNCHED();
    }
    const int64_t krows = (int64_t)dm.B * dm.H * dm.S;
    if ((dk || dv) && krows > 0) {
        attn_bwd_dkdv_simple_kernel<T><<<(unsigned)((krows + 127) / 128), 128, 0, st>>>(dko, dvo, qo, ko, vo, go, lp, lsb,
                                                                                       lsh, lsl, Dvec, dm);
        CUDA_LAUNCHED();
    }
    return STATUS_OK;
}

/* shapes and dtypes of one call; fills dm */
enum status check(const char *op, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                  const struct tensor *out, const struct tensor *lse, double scale, bool causal, dims *dm)
{
    if (q->dtype != DTYPE_F32 && q->dtype != DTYPE_F64)
        return tensor_fail(STATUS_DTYPE, "%s: dtype %s is not supported on CUDA (use f32 or f64)", op, dtype_name(q->dtype));
    const struct tensor *all[5] = {k, v, out, lse, NULL};
    for (int i = 0; all[i]; i++)
        if (all[i]->dtype != q->dtype)
            return tensor_fail(STATUS_DTYPE, "%s: all tensors must be %s", op, dtype_name(q->dtype));
    if (q->ndim != 4 || k->ndim != 4 || v->ndim != 4 || out->ndim != 4 || lse->ndim != 3)
        return tensor_fail(STATUS_SHAPE, "%s: expected q/k/v/out [B,H,*,*] and lse [B,H,L]", op);
    const int64_t B = q->shape[0], H = q->shape[1], L = q->shape[2], D = q->shape[3], S = k->shape[2], Dv = v->shape[3];
    if (k->shape[0] != B || k->shape[1] != H || k->shape[3] != D || v->shape[0] != B || v->shape[1] != H ||
        v->shape[2] != S || out->shape[0] != B || out->shape[1] != H || out->shape[2] != L || out->shape[3] != Dv ||
        lse->shape[0] != B || lse->shape[1] != H || lse->shape[2] != L)
        return tensor_fail(STATUS_SHAPE, "%s: q [%lld,%lld,%lld,%lld], k, v, out, lse do not agree", op, (long long)B,
                           (long long)H, (long long)L, (long long)D);
    if (B * H > INT32_MAX || L > INT32_MAX / 2 || S > INT32_MAX / 2 || D > INT32_MAX || Dv > INT32_MAX ||
        B * H * ((L > S ? L : S) + 63) / 64 > UINT32_MAX)
        return tensor_fail(STATUS_SHAPE, "%s: sizes too large", op);
    *dm = dims{(int)B, (int)H, (int)L, (int)S, (int)D, (int)Dv, causal ? 1 : 0, scale, 0, attn_vec4() ? 1 : 0};
    return STATUS_OK;
}

}  // namespace

/* ---------------------------------------------------------------- entry points */

extern "C" enum status cuda_attention(struct tensor *out, struct tensor *lse, const struct tensor *q, const struct tensor *k,
                                      const struct tensor *v, double scale, bool causal)
{
    dims dm;
    enum status s;
    if ((s = check("attention", q, k, v, out, lse, scale, causal, &dm))) return s;
    if ((int64_t)dm.B * dm.H * dm.L == 0) return STATUS_OK;
    return q->dtype == DTYPE_F32 ? forward_run<float>(out, lse, q, k, v, dm) : forward_run<double>(out, lse, q, k, v, dm);
}

extern "C" enum status cuda_attention_backward(struct tensor *dq, struct tensor *dk, struct tensor *dv,
                                               const struct tensor *dout, const struct tensor *q, const struct tensor *k,
                                               const struct tensor *v, const struct tensor *out, const struct tensor *lse,
                                               double scale, bool causal)
{
    dims dm;
    enum status s;
    const char *op = "attention_backward";
    if ((s = check(op, q, k, v, out, lse, scale, causal, &dm))) return s;
    if (!tensor_same_shape(dout, out) || dout->dtype != q->dtype || (dq && (!tensor_same_shape(dq, q) || dq->dtype != q->dtype)) ||
        (dk && (!tensor_same_shape(dk, k) || dk->dtype != q->dtype)) ||
        (dv && (!tensor_same_shape(dv, v) || dv->dtype != q->dtype)))
        return tensor_fail(STATUS_SHAPE, "%s: dout/dq/dk/dv must match out/q/k/v in shape and dtype", op);
    if ((int64_t)dm.B * dm.H == 0) return STATUS_OK;
    tensor_scope_begin();
    s = q->dtype == DTYPE_F32 ? backward_run<float>(dq, dk, dv, dout, q, k, v, out, lse, dm)
                              : backward_run<double>(dq, dk, dv, dout, q, k, v, out, lse, dm);
    tensor_scope_end();
    return s;
}
