/* test_attention_emu.cpp — the CUDA attention kernels (tensor/cuda/attention_kernels.cuh) run on the
 * host through tests/cuda_emu.h, against a float64 reference: the f32 forward, the f32 backward
 * (split dK/dV + dQ kernels, and the fused dQ partials + ordered sum), and the bf16 tensor-core
 * forward and backward. What this checks without a GPU: tiling, masking (causal, L != S, rows
 * with no visible key), the online softmax, the partial sums and the mma fragment bookkeeping
 * (given PTX's documented fragment layout, which cuda_emu.h implements). What it cannot: timing,
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
                for (int d = 0; d < D; d++) dp += G[i * D + d] * V[j * D + d];
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
double rel_err(const std::vector<float> &a, const std::vector<double> &b)
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

template <int DP> void run_case(const attn_case &c)
{
    using C = cfg<DP>;
    const int L = c.L, S = c.S, D = c.D, heads = c.B * c.H;
    std::vector<float> q((size_t)heads * L * D), k((size_t)heads * S * D), v(k.size()), g(q.size());
    for (auto *t : {&q, &k, &v, &g})
        for (float &x : *t) x = urand();
    const double scale = 1.0 / sqrt((double)D);
    const reference ref = attention_f64(c, q, k, v, g, scale);
    const dims dm{c.B, c.H, L, S, D, D, c.causal ? 1 : 0, scale, 0};
    auto op = [&](float *p, int rows) { return opnd<float>{p, (int64_t)c.H * rows * D, (int64_t)rows * D, D, 1}; };
    auto cop = [&](const float *p, int rows) { return opnd<const float>{p, (int64_t)c.H * rows * D, (int64_t)rows * D, D, 1}; };
    const int64_t lsb = (int64_t)c.H * L, lsh = L, lsl = 1, elems = (int64_t)heads * L * D;
    const double f32_bound = 2e-6, bf16_bound = 1e-2;

    for (int mma = 0; mma < 2; mma++) {
        const char *fname = mma ? "mma_fwd" : "f32_fwd";
        std::vector<float> out(q.size(), NAN), lse((size_t)heads * L, NAN);
        if (mma)
            emu_launch((unsigned)(heads * ((L + 63) / 64)), kMmaThreads, [&] {
                attn_fwd_mma_kernel<DP>(op(out.data(), L), lse.data(), lsb, lsh, lsl, cop(q.data(), L), cop(k.data(), S),
                                        cop(v.data(), S), dm);
            });
        else
            emu_launch((unsigned)(heads * ((L + C::BM - 1) / C::BM)), kThreads, [&] {
                attn_fwd_kernel<DP>(op(out.data(), L), lse.data(), lsb, lsh, lsl, cop(q.data(), L), cop(k.data(), S),
                                    cop(v.data(), S), dm);
            });
        report(fname, c, "out", rel_err(out, ref.out), mma ? bf16_bound : f32_bound);
        report(fname, c, "lse", rel_err(lse, ref.lse), mma ? 1e-3 : f32_bound);

        /* the backward from this forward's out and lse, as the engine runs it */
        std::vector<float> Dvec((size_t)heads * L, NAN);
        emu_launch((unsigned)((heads * L + 7) / 8), 256,
                   [&] { attn_bwd_pre_kernel<float>(Dvec.data(), cop(g.data(), L), cop(out.data(), L), dm); });
        for (int variant = mma ? 2 : 0; variant < (mma ? 3 : 2); variant++) {
            const char *bname = variant == 2 ? "mma_bwd" : variant == 1 ? "f32_bwd_fused_dq" : "f32_bwd";
            std::vector<float> dq(q.size(), NAN), dk(k.size(), NAN), dv(v.size(), NAN);
            const int bn = variant == 2 ? 64 : C::BN, bmk = variant == 2 ? 64 : C::BMK, nt = (S + bn - 1) / bn;
            std::vector<float> part(variant ? (size_t)heads * nt * L * D : 0, NAN);
            if (variant == 2)
                emu_launch((unsigned)(heads * nt), kMmaThreads, [&] {
                    attn_bwd_mma_kernel<DP>(op(dk.data(), S), op(dv.data(), S), cop(q.data(), L), cop(k.data(), S),
                                            cop(v.data(), S), cop(g.data(), L), lse.data(), lsb, lsh, lsl, Dvec.data(), dm,
                                            part.data());
                });
            else if (variant == 1)
                emu_launch((unsigned)(heads * nt), kThreads, [&] {
                    attn_bwd_dkdv_kernel<DP, true>(op(dk.data(), S), op(dv.data(), S), cop(q.data(), L), cop(k.data(), S),
                                                   cop(v.data(), S), cop(g.data(), L), lse.data(), lsb, lsh, lsl,
                                                   Dvec.data(), dm, part.data());
                });
            else {
                emu_launch((unsigned)(heads * nt), kThreads, [&] {
                    attn_bwd_dkdv_kernel<DP, false>(op(dk.data(), S), op(dv.data(), S), cop(q.data(), L), cop(k.data(), S),
                                                    cop(v.data(), S), cop(g.data(), L), lse.data(), lsb, lsh, lsl,
                                                    Dvec.data(), dm, nullptr);
                });
                emu_launch((unsigned)(heads * ((L + C::BM - 1) / C::BM)), kThreads, [&] {
                    attn_bwd_dq_kernel<DP>(op(dq.data(), L), cop(q.data(), L), cop(k.data(), S), cop(v.data(), S),
                                           cop(g.data(), L), lse.data(), lsb, lsh, lsl, Dvec.data(), dm);
                });
            }
            if (variant)
                emu_launch((unsigned)((elems + 255) / 256), 256, [&] {
                    attn_bwd_dq_reduce_kernel(op(dq.data(), L), part.data(), heads, nt, bn, bmk, dm);
                });
            const double bound = variant == 2 ? bf16_bound : f32_bound;
            report(bname, c, "dq", rel_err(dq, ref.dq), bound);
            report(bname, c, "dk", rel_err(dk, ref.dk), bound);
            report(bname, c, "dv", rel_err(dv, ref.dv), bound);
        }
    }
}

}  // namespace

int main()
{
    /* several query and key tiles, L != S both ways, causal masks with rows that see no key
     * (L > S), and the three padded head dims of the tensor-core kernels (32, 48, 64) */
    const attn_case cases[] = {
        {1, 2, 130, 200, 40, false}, {1, 3, 70, 150, 40, true}, {1, 2, 77, 77, 64, true},
        {1, 2, 5, 6, 4, false},      {1, 1, 200, 90, 40, true},
    };
    for (const attn_case &c : cases) {
        const int dp = c.D <= 32 ? 32 : c.D <= 48 ? 48 : 64;
        if (dp == 32) run_case<32>(c);
        else if (dp == 48) run_case<48>(c);
        else run_case<64>(c);
    }
    printf("%d failed\n", failures);
    return failures ? 1 : 0;
}
