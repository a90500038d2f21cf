/* test_attention_emu.cpp — the CUDA attention kernels (tensor/cuda/attention_kernels.cuh) run on the
 * host through tests/cuda_emu.h, against a float64 reference: the f32 forward, the f32 backward
 * (split dK/dV + dQ kernels, and the fused dQ partials + ordered sum), the tensor-core forward
 * and backward in bf16, tf32 and 3xTF32, the f64 kernels (a thread a row), and the GEMM path of head dims over 256 (a plain GEMM
 * standing in for cuBLAS). What this checks without a GPU: tiling, masking (causal, L != S, rows
 * with no visible key), the online softmax, the partial sums and the mma fragment bookkeeping
 * (given PTX's documented fragment layouts, which cuda_emu.h implements). What it cannot: timing,
 * memory ordering on a real device, and the compiler's code; test_cuda does that on a GPU.
 * One line per kernel and case; exits non-zero on any bound exceeded. */
#include "tests/cuda_emu.h"

#include <stdio.h>
#include <stdlib.h>

#include "tensor/cuda/attention_kernels.cuh"

namespace {

struct attn_case {
    int B, H, L, S, D;
    bool causal;
};

uint64_t rng = 0x9e3779b97f4a7c15ull;
float urand() { return (float)emu_urand(rng); }

struct reference {
    std::vector<double> out, lse, dq, dk, dv;
};

/* naive float64 attention and its gradients for the output gradient g */
reference attention_f64(const attn_case &c, const std::vector<float> &q, const std::vector<float> &k,
                        const std::vector<float> &v, const std::vector<float> &g, double scale)
{
    const int L = c.L, S = c.S, D = c.D, off = S - L;
    reference r;
    r.out.assign((size_t)c.B * c.H * L * D, 0);
    r.lse.assign((size_t)c.B * c.H * L, -INFINITY);
    r.dq.assign(r.out.size(), 0);
    r.dk.assign((size_t)c.B * c.H * S * D, 0);
    r.dv.assign(r.dk.size(), 0);
    for (int bh = 0; bh < c.B * c.H; bh++) {
        const float *Q = &q[(size_t)bh * L * D], *K = &k[(size_t)bh * S * D], *V = &v[(size_t)bh * S * D];
        const float *G = &g[(size_t)bh * L * D];
        for (int i = 0; i < L; i++) {
            std::vector<double> s(S, -INFINITY), p(S, 0);
            double mx = -INFINITY;
            for (int j = 0; j < S; j++) {
                if (c.causal && j > i + off) continue;
                double a = 0;
                for (int d = 0; d < D; d++) a += (double)Q[i * D + d] * K[j * D + d];
                s[j] = a * scale;
                mx = s[j] > mx ? s[j] : mx;
            }
            if (mx == -INFINITY) continue;   /* no visible key: out 0, lse -inf, no gradient */
            double sum = 0;
            for (int j = 0; j < S; j++) sum += (p[j] = s[j] == -INFINITY ? 0 : exp(s[j] - mx));
            for (int j = 0; j < S; j++) p[j] /= sum;
            r.lse[(size_t)bh * L + i] = mx + log(sum);
            double *O = &r.out[((size_t)bh * L + i) * D], Di = 0;
            for (int j = 0; j < S; j++)
                for (int d = 0; d < D; d++) O[d] += p[j] * V[j * D + d];
            for (int d = 0; d < D; d++) Di += G[i * D + d] * O[d];
            for (int j = 0; j < S; j++) {
                double dp = 0;
                for (int d = 0; d < D; d++) dp += (double)G[i * D + d] * V[j * D + d];
                const double ds = p[j] * (dp - Di);
                for (int d = 0; d < D; d++) {
                    r.dv[((size_t)bh * S + j) * D + d] += p[j] * G[i * D + d];
                    r.dq[((size_t)bh * L + i) * D + d] += scale * ds * K[j * D + d];
                    r.dk[((size_t)bh * S + j) * D + d] += scale * ds * Q[i * D + d];
                }
            }
        }
    }
    return r;
}

/* ||a - b|| / ||b|| over the finite entries of b; a non-finite a where b is finite counts as 1 */
template <typename T> double rel_err(const std::vector<T> &a, const std::vector<double> &b)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < b.size(); i++) {
        if (!isfinite(b[i])) continue;
        if (!isfinite(a[i])) return 1;
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

int failures = 0;

void report(const char *kernel, const attn_case &c, const char *what, double e, double bound)
{
    const bool ok = e <= bound;
    failures += !ok;
    printf("emu attention[%s,%dx%dx%d%s] %s rel=%.1e (bound %.0e) %s\n", kernel, c.L, c.S, c.D, c.causal ? ",causal" : "",
           what, e, bound, ok ? "ok" : "FAILED");
}

/* one case's inputs, reference and operand views */
struct setup {
    attn_case c;
    std::vector<float> q, k, v, g;
    reference ref;
    dims dm;
    int64_t lsb, lsh, lsl, elems;
    opnd<float> op(float *p, int rows) const { return {p, (int64_t)c.H * rows * c.D, (int64_t)rows * c.D, c.D, 1}; }
    opnd<const float> cop(const float *p, int rows) const
    {
        return {p, (int64_t)c.H * rows * c.D, (int64_t)rows * c.D, c.D, 1};
    }
};

/* D = rowsum(dO * O) from a forward's out, as the engine runs it */
std::vector<float> dvec(const setup &u, const std::vector<float> &out)
{
    const int heads = u.c.B * u.c.H, L = u.c.L;
    std::vector<float> Dvec((size_t)heads * L, NAN);
    emu_launch((unsigned)((heads * L + 7) / 8), 256,
               [&] { attn_bwd_pre_kernel<float>(Dvec.data(), u.cop(u.g.data(), L), u.cop(out.data(), L), u.dm); });
    return Dvec;
}

/* the tensor-core forward and backward in element policy E; vec4: their float4 tile loads
 * (DRAFT_ATTN_VEC4) where the rows allow */
template <int DP, class E> void run_mma(const setup &u0, const char *name0, double bound, double lse_bound, bool vec4)
{
    setup u = u0;
    u.dm.vec4 = vec4 ? 1 : 0;
    char name[40];
    snprintf(name, sizeof name, "%s%s", name0, vec4 ? "_vec4" : "");
    const attn_case &c = u.c;
    const int L = c.L, S = c.S, heads = c.B * c.H, nt = (S + 63) / 64;
    char fname[48], bname[48];
    snprintf(fname, sizeof fname, "%s_fwd", name);
    snprintf(bname, sizeof bname, "%s_bwd", name);
    std::vector<float> out(u.q.size(), NAN), lse((size_t)heads * L, NAN);
    emu_launch((unsigned)(heads * ((L + 63) / 64)), kMmaThreads, [&] {
        attn_fwd_mma_kernel<DP, E>(u.op(out.data(), L), lse.data(), u.lsb, u.lsh, u.lsl, u.cop(u.q.data(), L),
                                   u.cop(u.k.data(), S), u.cop(u.v.data(), S), u.dm);
    });
    report(fname, c, "out", rel_err(out, u.ref.out), bound);
    report(fname, c, "lse", rel_err(lse, u.ref.lse), lse_bound);
    /* DRAFT_ATTN_PACKED: K and V packed once, tiles copied in two stages: the same bits (each
     * policy with the scalar and the float4 loads: both switches are the defaults) */
    {
        const int ntk = (S + 63) / 64, Sp = ntk * 64;
        const int64_t nk = (int64_t)heads * Sp * (DP / E::EPW), nv = (int64_t)heads * ntk * DP * (64 / E::EPW);
        std::vector<uint32_t> kp((size_t)nk, 0xffffffffu), vp((size_t)nv, 0xffffffffu);
        emu_launch((unsigned)((nk + 255) / 256), 256,
                   [&] { attn_pack_rows_kernel<DP, E>(kp.data(), u.cop(u.k.data(), S), heads, c.H, S, c.D, Sp); });
        emu_launch((unsigned)((nv + 255) / 256), 256,
                   [&] { attn_pack_cols_kernel<DP, E>(vp.data(), u.cop(u.v.data(), S), heads, c.H, S, c.D, ntk); });
        std::vector<float> out2(u.q.size(), NAN), lse2((size_t)heads * L, NAN);
        {
            const emu_smem_scope smem(attn_packed_smem<DP, E>());
            emu_launch((unsigned)(heads * ((L + 63) / 64)), kMmaThreads, [&] {
                attn_fwd_mma_kernel<DP, E, true>(u.op(out2.data(), L), lse2.data(), u.lsb, u.lsh, u.lsl, u.cop(u.q.data(), L),
                                                 u.cop(u.k.data(), S), u.cop(u.v.data(), S), u.dm, kp.data(), vp.data());
            });
        }
        const bool same = !memcmp(out2.data(), out.data(), out.size() * sizeof(float)) &&
                          !memcmp(lse2.data(), lse.data(), lse.size() * sizeof(float));
        failures += !same;
        printf("emu attention[%s_packed,%dx%dx%d%s] out, lse %s the unpacked kernel's %s\n", fname, c.L, c.S, c.D,
               c.causal ? ",causal" : "", same ? "are" : "are NOT", same ? "ok" : "FAILED");
    }
    if constexpr (DP <= 64) {   /* the backward takes head dims up to 64 */
        const std::vector<float> Dvec = dvec(u, out);
        std::vector<float> dq(u.q.size(), NAN), dk(u.k.size(), NAN), dv(u.v.size(), NAN);
        std::vector<float> part((size_t)heads * nt * L * c.D, NAN);
        {
            const emu_smem_scope smem(mma_bwd_cfg<DP, E>::smem);
            emu_launch((unsigned)(heads * nt), kMmaThreads, [&] {
                attn_bwd_mma_kernel<DP, E>(u.op(dk.data(), S), u.op(dv.data(), S), u.cop(u.q.data(), L),
                                           u.cop(u.k.data(), S), u.cop(u.v.data(), S), u.cop(u.g.data(), L), lse.data(),
                                           u.lsb, u.lsh, u.lsl, Dvec.data(), u.dm, part.data());
            });
        }
        emu_launch((unsigned)((u.elems + 255) / 256), 256,
                   [&] { attn_bwd_dq_reduce_kernel(u.op(dq.data(), L), part.data(), heads, nt, 64, 64, u.dm); });
        report(bname, c, "dq", rel_err(dq, u.ref.dq), bound);
        report(bname, c, "dk", rel_err(dk, u.ref.dk), bound);
        report(bname, c, "dv", rel_err(dv, u.ref.dv), bound);
        /* DRAFT_ATTN_PACKED: Q, dO (both ways), lse and D packed once, query tiles copied in two
         * stages: the same bits of dK, dV and the dQ partials (with either loads, as the forward) */
        {
            const int ntq = (L + 63) / 64;
            int64_t off[6];
            attn_bwd_pack_offsets<DP, E>(heads, ntq, off);
            std::vector<uint32_t> pk((size_t)off[5], 0xffffffffu);
            const unsigned br = (unsigned)((off[1] + 255) / 256), bc = (unsigned)((off[3] - off[2] + 255) / 256);
            emu_launch(br, 256, [&] { attn_pack_rows_kernel<DP, E>(pk.data() + off[0], u.cop(u.q.data(), L), heads, c.H, L, c.D, ntq * 64); });
            emu_launch(br, 256, [&] { attn_pack_rows_kernel<DP, E>(pk.data() + off[1], u.cop(u.g.data(), L), heads, c.H, L, c.D, ntq * 64); });
            emu_launch(bc, 256, [&] { attn_pack_cols_kernel<DP, E>(pk.data() + off[2], u.cop(u.q.data(), L), heads, c.H, L, c.D, ntq); });
            emu_launch(bc, 256, [&] { attn_pack_cols_kernel<DP, E>(pk.data() + off[3], u.cop(u.g.data(), L), heads, c.H, L, c.D, ntq); });
            emu_launch((unsigned)((off[5] - off[4] + 255) / 256), 256, [&] {
                attn_pack_lse_d_kernel(reinterpret_cast<float *>(pk.data() + off[4]), lse.data(), u.lsb, u.lsh, u.lsl, Dvec.data(),
                                       u.dm, ntq);
            });
            std::vector<float> dk2(u.k.size(), NAN), dv2(u.v.size(), NAN), part2(part.size(), NAN);
            {
                const emu_smem_scope smem(mma_bwd_cfg<DP, E>::smem_packed);
                emu_launch((unsigned)(heads * nt), kMmaThreads, [&] {
                    attn_bwd_mma_kernel<DP, E, true>(u.op(dk2.data(), S), u.op(dv2.data(), S), u.cop(u.q.data(), L),
                                                     u.cop(u.k.data(), S), u.cop(u.v.data(), S), u.cop(u.g.data(), L), lse.data(),
                                                     u.lsb, u.lsh, u.lsl, Dvec.data(), u.dm, part2.data(), pk.data());
                });
            }
            const bool same = !memcmp(dk2.data(), dk.data(), dk.size() * sizeof(float)) &&
                              !memcmp(dv2.data(), dv.data(), dv.size() * sizeof(float)) &&
                              !memcmp(part2.data(), part.data(), part.size() * sizeof(float));
            failures += !same;
            printf("emu attention[%s_packed,%dx%dx%d%s] dk, dv, dq partials %s the unpacked kernel's %s\n", bname, c.L, c.S,
                   c.D, c.causal ? ",causal" : "", same ? "are" : "are NOT", same ? "ok" : "FAILED");
            /* without dQ (q needs no gradient: no partials, and no dS exchange between the warps),
             * unpacked and packed: dK and dV the same bits */
            for (bool packed : {false, true}) {
                std::vector<float> dk3(u.k.size(), NAN), dv3(u.v.size(), NAN);
                const emu_smem_scope smem(packed ? mma_bwd_cfg<DP, E>::smem_packed : mma_bwd_cfg<DP, E>::smem);
                emu_launch((unsigned)(heads * nt), kMmaThreads, [&] {
                    if (packed)
                        attn_bwd_mma_kernel<DP, E, true>(u.op(dk3.data(), S), u.op(dv3.data(), S), u.cop(u.q.data(), L),
                                                         u.cop(u.k.data(), S), u.cop(u.v.data(), S), u.cop(u.g.data(), L),
                                                         lse.data(), u.lsb, u.lsh, u.lsl, Dvec.data(), u.dm, nullptr, pk.data());
                    else
                        attn_bwd_mma_kernel<DP, E>(u.op(dk3.data(), S), u.op(dv3.data(), S), u.cop(u.q.data(), L),
                                                   u.cop(u.k.data(), S), u.cop(u.v.data(), S), u.cop(u.g.data(), L), lse.data(),
                                                   u.lsb, u.lsh, u.lsl, Dvec.data(), u.dm, nullptr);
                });
                const bool same3 = !memcmp(dk3.data(), dk.data(), dk.size() * sizeof(float)) &&
                                   !memcmp(dv3.data(), dv.data(), dv.size() * sizeof(float));
                failures += !same3;
                printf("emu attention[%s%s_no_dq,%dx%dx%d%s] dk, dv %s those with dq %s\n", bname, packed ? "_packed" : "", c.L,
                       c.S, c.D, c.causal ? ",causal" : "", same3 ? "are" : "are NOT", same3 ? "ok" : "FAILED");
            }
        }
    }
}

template <int DP> void run_case(const attn_case &c)
{
    using C = cfg<DP>;
    setup u;
    u.c = c;
    const int L = c.L, S = c.S, D = c.D, heads = c.B * c.H;
    u.q.resize((size_t)heads * L * D);
    u.k.resize((size_t)heads * S * D);
    u.v.resize(u.k.size());
    u.g.resize(u.q.size());
    for (auto *t : {&u.q, &u.k, &u.v, &u.g})
        for (float &x : *t) x = urand();
    const double scale = 1.0 / sqrt((double)D);
    u.ref = attention_f64(c, u.q, u.k, u.v, u.g, scale);
    u.dm = dims{c.B, c.H, L, S, D, D, c.causal ? 1 : 0, scale, 0, 0};
    u.lsb = (int64_t)c.H * L, u.lsh = L, u.lsl = 1, u.elems = (int64_t)heads * L * D;
    const double f32_bound = 2e-6;

    /* the f32 SIMT kernels: forward, then both backwards from its out and lse */
    std::vector<float> out(u.q.size(), NAN), lse((size_t)heads * L, NAN);
    {
        const emu_smem_scope smem(C::fwd_smem);
        emu_launch((unsigned)(heads * ((L + C::BM - 1) / C::BM)), kThreads, [&] {
            attn_fwd_kernel<DP>(u.op(out.data(), L), lse.data(), u.lsb, u.lsh, u.lsl, u.cop(u.q.data(), L),
                                u.cop(u.k.data(), S), u.cop(u.v.data(), S), u.dm);
        });
    }
    report("f32_fwd", c, "out", rel_err(out, u.ref.out), f32_bound);
    report("f32_fwd", c, "lse", rel_err(lse, u.ref.lse), f32_bound);
    const std::vector<float> Dvec = dvec(u, out);
    for (int fused = 0; fused < 2; fused++) {
        std::vector<float> dq(u.q.size(), NAN), dk(u.k.size(), NAN), dv(u.v.size(), NAN);
        const int nt = (S + C::BN - 1) / C::BN;
        std::vector<float> part(fused ? (size_t)heads * nt * L * D : 0, NAN);
        {
            const emu_smem_scope smem(fused ? C::dkdv_dq_smem : C::dkdv_smem);
            emu_launch((unsigned)(heads * nt), kThreads, [&] {
                if (fused)
                    attn_bwd_dkdv_kernel<DP, true>(u.op(dk.data(), S), u.op(dv.data(), S), u.cop(u.q.data(), L),
                                                   u.cop(u.k.data(), S), u.cop(u.v.data(), S), u.cop(u.g.data(), L),
                                                   lse.data(), u.lsb, u.lsh, u.lsl, Dvec.data(), u.dm, part.data());
                else
                    attn_bwd_dkdv_kernel<DP, false>(u.op(dk.data(), S), u.op(dv.data(), S), u.cop(u.q.data(), L),
                                                    u.cop(u.k.data(), S), u.cop(u.v.data(), S), u.cop(u.g.data(), L),
                                                    lse.data(), u.lsb, u.lsh, u.lsl, Dvec.data(), u.dm, nullptr);
            });
        }
        if (fused)
            emu_launch((unsigned)((u.elems + 255) / 256), 256, [&] {
                attn_bwd_dq_reduce_kernel(u.op(dq.data(), L), part.data(), heads, nt, C::BN, C::BMK, u.dm);
            });
        else {
            const emu_smem_scope smem(C::dq_smem);
            emu_launch((unsigned)(heads * ((L + C::BM - 1) / C::BM)), kThreads, [&] {
                attn_bwd_dq_kernel<DP>(u.op(dq.data(), L), u.cop(u.q.data(), L), u.cop(u.k.data(), S),
                                       u.cop(u.v.data(), S), u.cop(u.g.data(), L), lse.data(), u.lsb, u.lsh, u.lsl,
                                       Dvec.data(), u.dm);
            });
        }
        const char *bname = fused ? "f32_bwd_fused_dq" : "f32_bwd";
        report(bname, c, "dq", rel_err(dq, u.ref.dq), f32_bound);
        report(bname, c, "dk", rel_err(dk, u.ref.dk), f32_bound);
        report(bname, c, "dv", rel_err(dv, u.ref.dv), f32_bound);
    }

    /* the tensor-core kernels in their three precisions, every case, with the tile loads both
     * ways: scalar and in float4 runs (DRAFT_ATTN_VEC4; the D = 6 case falls back to scalar) */
    for (bool vec4 : {false, true}) {
        run_mma<DP, mma_bf16_ops>(u, "mma_bf16", 1e-2, 1e-3, vec4);
        run_mma<DP, mma_tf32_ops<false>>(u, "mma_tf32", 2e-3, 1e-3, vec4);
        run_mma<DP, mma_tf32_ops<true>>(u, "mma_3xtf32", f32_bound, f32_bound, vec4);
    }
}

/* a plain column-major GEMM in cuda_gemm's layout (alpha 1), standing in for cuBLAS */
template <typename T>
int plain_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T *A, int64_t lda, int64_t sA, const T *B,
               int64_t ldb, int64_t sB, T beta, T *C, int64_t ldc, int64_t sC, int64_t count)
{
    for (int64_t c = 0; c < count; c++)
        for (int64_t j = 0; j < n; j++)
            for (int64_t i = 0; i < m; i++) {
                double acc = 0;
                for (int64_t p = 0; p < k; p++)
                    acc += (double)A[c * sA + (ta ? p + i * lda : i + p * lda)] * (double)B[c * sB + (tb ? j + p * ldb : p + j * ldb)];
                T &o = C[c * sC + j * ldc + i];
                o = (T)(acc + (beta != 0 ? (double)beta * (double)o : 0.0));
            }
    return 0;
}

/* a case's random inputs (drawn in f32, held as T), their float64 reference, dims and the
 * [B, H, rows, D] views: the wide-head and the f64 kernels' tests */
template <typename T> struct typed_setup {
    attn_case c;
    int L, S, D, heads;
    std::vector<T> q, k, v, g;
    reference ref;
    dims dm;
    int64_t lsb, lsh, lsl;
    explicit typed_setup(const attn_case &c_) : c(c_), L(c_.L), S(c_.S), D(c_.D), heads(c_.B * c_.H)
    {
        std::vector<float> qf((size_t)heads * L * D), kf((size_t)heads * S * D), vf(kf.size()), gf(qf.size());
        for (auto *t : {&qf, &kf, &vf, &gf})
            for (float &x : *t) x = urand();
        const double scale = 1.0 / sqrt((double)D);
        ref = attention_f64(c, qf, kf, vf, gf, scale);
        q.assign(qf.begin(), qf.end()), k.assign(kf.begin(), kf.end()), v.assign(vf.begin(), vf.end()), g.assign(gf.begin(), gf.end());
        dm = dims{c.B, c.H, L, S, D, D, c.causal ? 1 : 0, scale, 0, 0};
        lsb = (int64_t)c.H * L, lsh = L, lsl = 1;
    }
    opnd<T> op(T *p, int n) const { return opnd<T>{p, (int64_t)c.H * n * D, (int64_t)n * D, D, 1}; }
    opnd<const T> cop(const T *p, int n) const { return opnd<const T>{p, (int64_t)c.H * n * D, (int64_t)n * D, D, 1}; }
};

/* the wide-head path (D > 256): its driver, row kernels and GEMM plan, with the plain GEMM and a
 * workspace of `rows` query rows per block (several blocks: the key gradients accumulate) */
template <typename T> void run_wide(const attn_case &c, int rows, double bound)
{
    const typed_setup<T> u(c);
    const int L = u.L, S = u.S, heads = u.heads;
    const std::vector<T> &q = u.q, &k = u.k, &v = u.v, &g = u.g;
    const reference &ref = u.ref;
    const dims &dm = u.dm;
    auto op = [&](T *p, int n) { return u.op(p, n); };
    auto cop = [&](const T *p, int n) { return u.cop(p, n); };
    const int64_t lsb = u.lsb, lsh = u.lsh, lsl = u.lsl;
    const char *tn = sizeof(T) == 4 ? "wide_f32" : "wide_f64";
    char fname[32], bname[32];
    snprintf(fname, sizeof fname, "%s_fwd", tn);
    snprintf(bname, sizeof bname, "%s_bwd", tn);

    std::vector<T> ws((size_t)2 * c.H * rows * S, (T)NAN), out(q.size(), (T)NAN), lse((size_t)heads * L, (T)NAN);
    auto softmax = [&](T *s, T *lse_b, int nr, int q0) {
        emu_launch((unsigned)(dm.H * nr), kThreads, [&] { attn_wide_softmax_kernel<T>(s, lse_b, lsh, lsl, nr, q0, dm); });
        return 0;
    };
    attn_wide_forward<T>(op(out.data(), L), lse.data(), lsb, cop(q.data(), L), cop(k.data(), S), cop(v.data(), S), dm,
                         ws.data(), (int64_t)c.H * rows * S, plain_gemm<T>, softmax);
    report(fname, c, "out", rel_err(out, ref.out), bound);
    report(fname, c, "lse", rel_err(lse, ref.lse), bound);

    std::vector<T> Dvec((size_t)heads * L, (T)NAN), dq(q.size(), (T)NAN), dk(k.size(), (T)NAN), dv(v.size(), (T)NAN);
    emu_launch((unsigned)((heads * L + 7) / 8), 256,
               [&] { attn_bwd_pre_kernel<T>(Dvec.data(), cop(g.data(), L), cop(out.data(), L), dm); });
    auto ds = [&](T *s, T *dp, const T *lse_b, const T *D_b, int nr, int q0) {
        const int64_t n = (int64_t)dm.H * nr * S;
        emu_launch((unsigned)((n + 255) / 256), 256,
                   [&] { attn_wide_ds_kernel<T>(s, dp, lse_b, lsh, lsl, D_b, nr, q0, n, dm); });
        return 0;
    };
    attn_wide_backward<T>(op(dq.data(), L), op(dk.data(), S), op(dv.data(), S), cop(q.data(), L), cop(k.data(), S),
                          cop(v.data(), S), cop(g.data(), L), lse.data(), lsb, Dvec.data(), dm, ws.data(),
                          (int64_t)2 * c.H * rows * S, plain_gemm<T>, ds);
    report(bname, c, "dq", rel_err(dq, ref.dq), bound);
    report(bname, c, "dk", rel_err(dk, ref.dk), bound);
    report(bname, c, "dv", rel_err(dv, ref.dv), bound);
}

/* the f64 kernels (a thread a query row, or a key row for dK / dV), which f64 takes up to D = 256 */
void run_simple(const attn_case &c)
{
    const typed_setup<double> u(c);
    const int L = u.L, S = u.S, heads = u.heads;
    const std::vector<double> &q = u.q, &k = u.k, &v = u.v, &g = u.g;
    const reference &ref = u.ref;
    const dims &dm = u.dm;
    auto op = [&](double *p, int n) { return u.op(p, n); };
    auto cop = [&](const double *p, int n) { return u.cop(p, n); };
    const int64_t lsb = u.lsb, lsh = u.lsh, lsl = u.lsl;
    std::vector<double> out(q.size(), NAN), lse((size_t)heads * L, NAN), Dvec(lse.size(), NAN), dq(q.size(), NAN),
        dk(k.size(), NAN), dv(v.size(), NAN);
    emu_launch((unsigned)((heads * L + 127) / 128), 128, [&] {
        attn_fwd_simple_kernel<double>(op(out.data(), L), lse.data(), lsb, lsh, lsl, cop(q.data(), L), cop(k.data(), S),
                                       cop(v.data(), S), dm);
    });
    report("simple_f64_fwd", c, "out", rel_err(out, ref.out), 1e-12);
    report("simple_f64_fwd", c, "lse", rel_err(lse, ref.lse), 1e-12);
    emu_launch((unsigned)((heads * L + 7) / 8), 256,
               [&] { attn_bwd_pre_kernel<double>(Dvec.data(), cop(g.data(), L), cop(out.data(), L), dm); });
    emu_launch((unsigned)((heads * L + 127) / 128), 128, [&] {
        attn_bwd_dq_simple_kernel<double>(op(dq.data(), L), cop(q.data(), L), cop(k.data(), S), cop(v.data(), S),
                                          cop(g.data(), L), lse.data(), lsb, lsh, lsl, Dvec.data(), dm);
    });
    emu_launch((unsigned)((heads * S + 127) / 128), 128, [&] {
        attn_bwd_dkdv_simple_kernel<double>(op(dk.data(), S), op(dv.data(), S), cop(q.data(), L), cop(k.data(), S),
                                            cop(v.data(), S), cop(g.data(), L), lse.data(), lsb, lsh, lsl, Dvec.data(), dm);
    });
    report("simple_f64_bwd", c, "dq", rel_err(dq, ref.dq), 1e-12);
    report("simple_f64_bwd", c, "dk", rel_err(dk, ref.dk), 1e-12);
    report("simple_f64_bwd", c, "dv", rel_err(dv, ref.dv), 1e-12);
}

/* shared-memory banks of the tensor-core kernels' transposed tile stores: a warp's 32 stores
 * (transposed_at: word d PT + p; transposed4_at: d + i for each i of the float4) on 32 banks,
 * for every padded head dim and both element layouts; and the fragment loads of a tile of pitch
 * DP / EPW + 4 (rows g and g + 8, words w0 + t and w0 + t + 4: frag_a, mma_tile) */
template <int DP, class E> int worst_banks()
{
    constexpr int PT = 64 / E::EPW + 4, PW = DP / E::EPW + 4;
    int worst = 1;
    auto count = [&](auto word) {   /* word(lane): the lane's word */
        int hits[32] = {0};
        for (int lane = 0; lane < 32; lane++) {
            const int h = ++hits[word(lane) % 32];
            worst = h > worst ? h : worst;
        }
    };
    for (int w0 = 0; w0 < 64 / E::EPW * DP; w0 += 32)
        count([&](int lane) { int d, p; transposed_at<DP, E>(w0 + lane, d, p); return d * PT + p; });
    for (int w0 = 0; w0 < 64 / E::EPW * (DP / 4); w0 += 32)
        for (int i = 0; i < 4; i++)
            count([&](int lane) { int d, p; transposed4_at<DP, E>(w0 + lane, d, p); return (d + i) * PT + p; });
    for (int w0 = 0; w0 < DP / E::EPW; w0 += 8)
        for (int r = 0; r < 2; r++)
            for (int c = 0; c < 2; c++)
                count([&](int lane) { return (lane / 4 + 8 * r) * PW + w0 + lane % 4 + 4 * c; });
    return worst;
}

void check_banks()
{
    const int w[8] = {worst_banks<32, mma_bf16_ops>(), worst_banks<48, mma_bf16_ops>(), worst_banks<64, mma_bf16_ops>(),
                      worst_banks<80, mma_bf16_ops>(), worst_banks<32, mma_tf32_ops<true>>(),
                      worst_banks<48, mma_tf32_ops<true>>(), worst_banks<64, mma_tf32_ops<true>>(),
                      worst_banks<80, mma_tf32_ops<true>>()};
    int worst = 1;
    for (int x : w) worst = x > worst ? x : worst;
    failures += worst != 1;
    printf("emu attention[mma_banks] transposed stores and fragment loads: at most %d lanes per bank %s\n", worst,
           worst == 1 ? "ok" : "FAILED");
}

}  // namespace

int main()
{
    /* several query and key tiles, L != S both ways, causal masks with rows that see no key
     * (L > S), and the padded head dims of the tensor-core kernels (32, 48, 64; 80 forward only) */
    const attn_case cases[] = {
        {1, 2, 130, 200, 40, false}, {1, 3, 70, 150, 40, true}, {1, 2, 77, 77, 64, true},
        {1, 2, 5, 6, 4, false},      {1, 1, 200, 90, 40, true}, {1, 1, 100, 70, 80, true},
        {1, 2, 9, 70, 6, false},   /* rows not in float4 runs (D % 4 != 0): the scalar tile loads */
    };
    check_banks();
    for (const attn_case &c : cases) {
        const int dp = c.D <= 32 ? 32 : c.D <= 48 ? 48 : c.D <= 64 ? 64 : 80;
        if (dp == 32) run_case<32>(c);
        else if (dp == 48) run_case<48>(c);
        else if (dp == 64) run_case<64>(c);
        else run_case<80>(c);
    }
    for (const attn_case &c : cases) run_simple(c);
    /* wide heads (D > 256, the VAE's 512): several query blocks (the last one partial), L != S,
     * a causal mask with rows that see no key */
    const attn_case wide[] = {{1, 2, 70, 90, 300, false}, {1, 1, 50, 30, 260, true}};
    for (const attn_case &c : wide) {
        run_wide<float>(c, 32, 2e-6);
        run_wide<double>(c, 16, 1e-12);
    }
    printf("%d failed\n", failures);
    return failures ? 1 : 0;
}
