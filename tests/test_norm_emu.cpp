/* test_norm_emu.cpp — the one-pass group_norm cluster kernels (tensor/cuda/norm_kernels.cuh: the
 * forward and the backward input gradient) run on the host through tests/cuda_emu.h, against a
 * float64 reference, at every cluster size (1, 2, 4, 8), with V = 4 and V = 1 loads. What this
 * checks without a GPU: the chunking of a group over a cluster's blocks (chunks that cross
 * channel boundaries, blocks that own nothing), the per-channel sums, the exchange of block
 * results through distributed shared memory and the coefficients. What it cannot: timing, memory
 * ordering on a real device, the compiler's code; test_cuda does that on a GPU.
 * Also the layer_norm kernels (forward, dx, dw / db partials and sum), a warp or a block a row,
 * and the two-pass group_norm kernels (f32 and f64, chunks per group as on 132 and on 2 SMs).
 * One line per kernel and case; exits non-zero on any bound exceeded. */
#include "tests/cuda_emu.h"

#include <stdio.h>
#include <stdlib.h>

#include <type_traits>

#include "tensor/cuda/norm_kernels.cuh"

namespace {

struct gn_case {
    int N, C, G, HW;
};

uint64_t rng = 0x2545f4914f6cdd1dull;
float urand() { return (float)emu_urand(rng); }

/* ||a - b|| / ||b|| */
template <class A> double rel_err(const std::vector<A> &a, const std::vector<double> &b)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < b.size(); i++) {
        if (!isfinite((double)a[i])) return 1;
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

int failures = 0;

void report(const char *kernel, const gn_case &c, int cl, int V, const char *what, double e, double bound)
{
    const bool ok = e <= bound;
    failures += !ok;
    printf("emu group_norm[%s,N=%d,C=%d,G=%d,HW=%d,cluster=%d,V=%d] %s rel=%.1e (bound %.0e) %s\n", kernel, c.N, c.C, c.G,
           c.HW, cl, V, what, e, bound, ok ? "ok" : "FAILED");
}

/* x's mean: away from 0 (the two-pass variance matters); main also runs cases far from it, where
 * only the statistics keep f32's bound: out = x * scale + shift cancels 500-sized terms (PyTorch's
 * fused parameters do the same) and the backward's x - mean too, so out is held to 5e-5 and the
 * backward is not run */
float g_shift = 0.5f;
bool far_mean() { return g_shift > 100.f; }

/* random inputs of a case: x with a mean away from 0 (the two-pass variance matters) */
template <class T> struct gn_data {
    std::vector<T> x, dy, w, b;
    double eps = 1e-5;
    explicit gn_data(const gn_case &c)
    {
        const size_t n = (size_t)c.N * c.C * c.HW;
        x.resize(n), dy.resize(n), w.resize(c.C), b.resize(c.C);
        for (T &v : x) v = (T)(3 * urand() + g_shift);
        for (T &v : dy) v = (T)urand();
        for (T &v : w) v = (T)(1 + 0.5f * urand());
        for (T &v : b) v = (T)urand();
    }
};

/* float64 reference: statistics, out, dx, the per-plane sums (sum dy, sum dy * x), dw and db */
struct gn_ref {
    std::vector<double> mu, rs, out, dx, ab_a, ab_b, dw, db;
    template <class T> gn_ref(const gn_case &c, const gn_data<T> &D)
    {
        const int cg = c.C / c.G, ge = cg * c.HW, NG = c.N * c.G;
        const size_t n = (size_t)c.N * c.C * c.HW;
        const std::vector<T> &x = D.x, &dy = D.dy, &w = D.w, &b = D.b;
        const double eps = D.eps;
        mu.assign(NG, 0), rs.assign(NG, 0), out.assign(n, 0), dx.assign(n, 0);
        ab_a.assign((size_t)c.N * c.C, 0), ab_b.assign(ab_a.size(), 0), dw.assign(c.C, 0), db.assign(c.C, 0);
        for (int g = 0; g < NG; g++) {
            const T *xg = &x[(size_t)g * ge];
            double s = 0, m2 = 0;
            for (int j = 0; j < ge; j++) s += (double)xg[j];
            mu[g] = s / ge;
            for (int j = 0; j < ge; j++) m2 += ((double)xg[j] - mu[g]) * ((double)xg[j] - mu[g]);
            rs[g] = 1 / sqrt(m2 / ge + eps);
            double mg = 0, mgx = 0;
            for (int j = 0; j < ge; j++) {
                const int ch = (g % c.G) * cg + j / c.HW;
                const double xh = ((double)xg[j] - mu[g]) * rs[g], gg = (double)dy[(size_t)g * ge + j] * (double)w[ch];
                out[(size_t)g * ge + j] = xh * (double)w[ch] + (double)b[ch];
                mg += gg / ge;
                mgx += gg * xh / ge;
                ab_a[(size_t)g * cg + j / c.HW] += (double)dy[(size_t)g * ge + j];
                ab_b[(size_t)g * cg + j / c.HW] += (double)dy[(size_t)g * ge + j] * (double)xg[j];
                dw[ch] += (double)dy[(size_t)g * ge + j] * xh;
                db[ch] += (double)dy[(size_t)g * ge + j];
            }
            for (int j = 0; j < ge; j++) {
                const int ch = (g % c.G) * cg + j / c.HW;
                const double xh = ((double)xg[j] - mu[g]) * rs[g], gg = (double)dy[(size_t)g * ge + j] * (double)w[ch];
                dx[(size_t)g * ge + j] = rs[g] * (gg - mg - xh * mgx);
            }
        }
    }
};

template <int V> void run_case(const gn_case &c, int cl)
{
    const int cg = c.C / c.G, ge = cg * c.HW, NG = c.N * c.G;
    const size_t n = (size_t)c.N * c.C * c.HW;
    const int chunk = ((ge + cl - 1) / cl + 3) / 4 * 4;   /* as gn_cluster_pick in norm.cu */
    /* what a block may have on sm_90 (227 KiB): the backward stages two tensors, so a group that
     * fits one block in the forward (DRAFT_GN_CLUSTER=1) needs 2 for the backward */
    const size_t dev_max = 227 * 1024;
    const bool fwd_fits = gn_fwd_smem(cg, chunk) <= dev_max, bwd_fits = gn_bwd_smem(cg, chunk).bytes <= dev_max;
    if (!fwd_fits) return;
    const gn_data<float> D(c);
    const std::vector<float> &x = D.x, &dy = D.dy, &w = D.w, &b = D.b;
    const double eps = D.eps;
    const gn_ref R(c, D);
    const std::vector<double> &mu = R.mu, &rs = R.rs, &out = R.out, &dx = R.dx, &ab_a = R.ab_a, &ab_b = R.ab_b;

    std::vector<float> o(n, NAN), m(NG, NAN), r(NG, NAN);
    {
        const emu_smem_scope smem(gn_fwd_smem(cg, chunk));
        emu_launch((unsigned)cl, (unsigned)NG, (unsigned)cl, kThreads, [&] {
            gn_fused_kernel<V>(o.data(), m.data(), r.data(), x.data(), w.data(), b.data(), c.C, cg, c.HW, ge, chunk, eps);
        });
    }
    const double out_bound = far_mean() ? 5e-5 : 1e-6;
    report("fused_fwd", c, cl, V, "out", rel_err(o, out), out_bound);
    report("fused_fwd", c, cl, V, "mean", rel_err(m, mu), 1e-6);
    report("fused_fwd", c, cl, V, "rstd", rel_err(r, rs), 1e-6);
    if constexpr (V == 4) {   /* the register variant (DRAFT_GN_REG): the same bits */
        const int nv = gn_reg_nv(chunk);
        if (nv) {
            std::vector<float> o2(n, NAN), m2(NG, NAN), r2(NG, NAN);
            const emu_smem_scope smem(gn_fwd_smem(cg, 0));
            emu_launch((unsigned)cl, (unsigned)NG, (unsigned)cl, kThreads, [&] {
                gn_fused_reg_kernel(nv)(o2.data(), m2.data(), r2.data(), x.data(), w.data(), b.data(), c.C, cg, c.HW, ge,
                                        chunk, eps);
            });
            const bool same = !memcmp(o2.data(), o.data(), n * sizeof(float)) &&
                              !memcmp(m2.data(), m.data(), NG * sizeof(float)) && !memcmp(r2.data(), r.data(), NG * sizeof(float));
            failures += !same;
            printf("emu group_norm[fused_fwd_reg,N=%d,C=%d,G=%d,HW=%d,cluster=%d,NV=%d] out, mean, rstd %s the shared-memory kernel's %s\n",
                   c.N, c.C, c.G, c.HW, cl, nv, same ? "are" : "are NOT", same ? "ok" : "FAILED");
        }
    }

    /* the statistics as sums of x and x^2 in double (DRAFT_GN_SUMS): against the reference, and
     * the register variant's the same bits as its shared-memory one */
    {
        std::vector<float> o3(n, NAN), m3(NG, NAN), r3(NG, NAN);
        {
            const emu_smem_scope smem(gn_fwd_smem(cg, chunk));
            emu_launch((unsigned)cl, (unsigned)NG, (unsigned)cl, kThreads, [&] {
                gn_fused_kernel<V, 0, true>(o3.data(), m3.data(), r3.data(), x.data(), w.data(), b.data(), c.C, cg, c.HW, ge,
                                            chunk, eps);
            });
        }
        report("fused_fwd_sums", c, cl, V, "out", rel_err(o3, out), out_bound);
        report("fused_fwd_sums", c, cl, V, "mean", rel_err(m3, mu), 1e-6);
        report("fused_fwd_sums", c, cl, V, "rstd", rel_err(r3, rs), 1e-6);
        const int nv = V == 4 ? gn_reg_nv(chunk) : 0;
        if (nv) {
            std::vector<float> o4(n, NAN), m4(NG, NAN), r4(NG, NAN);
            const emu_smem_scope smem(gn_fwd_smem(cg, 0));
            emu_launch((unsigned)cl, (unsigned)NG, (unsigned)cl, kThreads, [&] {
                gn_fused_reg_kernel(nv, true)(o4.data(), m4.data(), r4.data(), x.data(), w.data(), b.data(), c.C, cg, c.HW,
                                              ge, chunk, eps);
            });
            const bool same = !memcmp(o4.data(), o3.data(), n * sizeof(float)) &&
                              !memcmp(m4.data(), m3.data(), NG * sizeof(float)) && !memcmp(r4.data(), r3.data(), NG * sizeof(float));
            failures += !same;
            printf("emu group_norm[fused_fwd_reg_sums,N=%d,C=%d,G=%d,HW=%d,cluster=%d,NV=%d] out, mean, rstd %s the shared-memory sums kernel's %s\n",
                   c.N, c.C, c.G, c.HW, cl, nv, same ? "are" : "are NOT", same ? "ok" : "FAILED");
        }
        /* the staged forward (DRAFT_GN_STAGED): gpc groups a cluster of cl * gpc blocks, as
         * gn_staged_pick launches it (the last cluster short of groups where gpc does not divide
         * N * G); gpc = 1 gives the sums kernel's bits, the others the reference's values */
        for (int gpc = 1; gpc <= kGnMaxGpc && cl * gpc <= kGnMaxCluster; gpc *= 2) {
            const int cls = cl * gpc, chs = ((ge + cls - 1) / cls + 3) / 4 * 4;
            if (gn_staged_smem(cg, chs, gpc) > dev_max) continue;
            std::vector<float> o5(n, NAN), m5(NG, NAN), r5(NG, NAN);
            {
                const emu_smem_scope smem(gn_staged_smem(cg, chs, gpc));
                emu_launch((unsigned)cls, (unsigned)((NG + gpc - 1) / gpc), (unsigned)cls, kThreads, [&] {
                    gn_staged_kernel<V>(o5.data(), m5.data(), r5.data(), x.data(), w.data(), b.data(), c.C, cg, c.HW, ge, chs,
                                        gpc, NG, eps);
                });
            }
            char kn[48];
            snprintf(kn, sizeof kn, "staged_fwd,gpc=%d", gpc);
            report(kn, c, cls, V, "out", rel_err(o5, out), out_bound);
            report(kn, c, cls, V, "mean", rel_err(m5, mu), 1e-6);
            report(kn, c, cls, V, "rstd", rel_err(r5, rs), 1e-6);
            if (gpc == 1) {
                const bool same = !memcmp(o5.data(), o3.data(), n * sizeof(float)) &&
                                  !memcmp(m5.data(), m3.data(), NG * sizeof(float)) && !memcmp(r5.data(), r3.data(), NG * sizeof(float));
                failures += !same;
                printf("emu group_norm[staged_fwd,gpc=1,N=%d,C=%d,G=%d,HW=%d,cluster=%d,V=%d] out, mean, rstd %s the sums kernel's %s\n",
                       c.N, c.C, c.G, c.HW, cl, V, same ? "are" : "are NOT", same ? "ok" : "FAILED");
            }
        }
    }

    if (!bwd_fits || far_mean()) return;
    /* the backward from the kernel's own float statistics, as the engine runs it */
    std::vector<float> d(n, NAN), dwv(c.C, NAN), dbv(c.C, NAN);
    std::vector<double2> ab((size_t)c.N * c.C, double2{NAN, NAN});
    {
        const emu_smem_scope smem(gn_bwd_smem(cg, chunk).bytes);
        emu_launch((unsigned)cl, (unsigned)NG, (unsigned)cl, kThreads, [&] {
            gn_bwd_fused_kernel<V>(d.data(), ab.data(), dy.data(), x.data(), w.data(), m.data(), r.data(), c.C, cg, c.HW,
                                   ge, chunk, dwv.data(), dbv.data(), NG);
        });
    }
    std::vector<double> aba(ab.size()), abb(ab.size());
    for (size_t i = 0; i < ab.size(); i++) aba[i] = ab[i].x, abb[i] = ab[i].y;
    report("fused_bwd", c, cl, V, "dx", rel_err(d, dx), 2e-6);
    report("fused_bwd", c, cl, V, "sum_dy", rel_err(aba, ab_a), 1e-6);
    report("fused_bwd", c, cl, V, "sum_dy_x", rel_err(abb, ab_b), 1e-6);
    /* dw and db, summed by the last cluster's block 0 (the counter back at 0 after each launch):
     * against the reference, and the same bits as gn_bwd_wb_kernel's own launch over the same sums */
    report("fused_bwd", c, cl, V, "dw", rel_err(dwv, R.dw), 2e-6);
    report("fused_bwd", c, cl, V, "db", rel_err(dbv, R.db), 1e-6);
    std::vector<float> dw2(c.C, NAN), db2(c.C, NAN);
    emu_launch((unsigned)((c.C + 127) / 128), 128,
               [&] { gn_bwd_wb_kernel<float>(dw2.data(), db2.data(), ab.data(), m.data(), r.data(), c.N, c.C, cg); });
    const bool same = !memcmp(dw2.data(), dwv.data(), c.C * sizeof(float)) && !memcmp(db2.data(), dbv.data(), c.C * sizeof(float)) &&
                      gn_bwd_done_ctr == 0;
    failures += !same;
    printf("emu group_norm[fused_bwd,N=%d,C=%d,G=%d,HW=%d,cluster=%d,V=%d] dw, db %s gn_bwd_wb_kernel's, counter %u %s\n", c.N, c.C,
           c.G, c.HW, cl, V, same ? "are" : "are NOT", gn_bwd_done_ctr, same ? "ok" : "FAILED");
    /* dx alone (dw, db NULL): the counter untouched */
    std::vector<float> d3(n, NAN);
    {
        const emu_smem_scope smem(gn_bwd_smem(cg, chunk).bytes);
        emu_launch((unsigned)cl, (unsigned)NG, (unsigned)cl, kThreads, [&] {
            gn_bwd_fused_kernel<V>(d3.data(), ab.data(), dy.data(), x.data(), w.data(), m.data(), r.data(), c.C, cg, c.HW,
                                   ge, chunk, nullptr, nullptr, NG);
        });
    }
    const bool same3 = !memcmp(d3.data(), d.data(), n * sizeof(float)) && gn_bwd_done_ctr == 0;
    failures += !same3;
    printf("emu group_norm[fused_bwd,dx only,N=%d,C=%d,G=%d,HW=%d,cluster=%d,V=%d] dx %s %s\n", c.N, c.C, c.G, c.HW, cl, V,
           same3 ? "the same, counter 0" : "DIFFERS or counter moved", same3 ? "ok" : "FAILED");
    /* gpc groups a cluster (DRAFT_GN_STAGED_BWD; the last cluster short of groups where gpc does
     * not divide N * G): each group's steps are gpc = 1's, so dx, the sums, dw and db are its bits */
    for (int gpc = 2; gpc <= kGnMaxGpc; gpc *= 2) {
        if (gn_bwd_smem(cg, chunk, gpc).bytes > dev_max) continue;
        std::vector<float> d4(n, NAN), dw4(c.C, NAN), db4(c.C, NAN);
        std::vector<double2> ab4(ab.size(), double2{NAN, NAN});
        {
            const emu_smem_scope smem(gn_bwd_smem(cg, chunk, gpc).bytes);
            emu_launch((unsigned)cl, (unsigned)((NG + gpc - 1) / gpc), (unsigned)cl, kThreads, [&] {
                gn_bwd_fused_kernel<V, true>(d4.data(), ab4.data(), dy.data(), x.data(), w.data(), m.data(), r.data(), c.C, cg,
                                             c.HW, ge, chunk, dw4.data(), db4.data(), NG, gpc);
            });
        }
        const bool same4 = !memcmp(d4.data(), d.data(), n * sizeof(float)) && !memcmp(ab4.data(), ab.data(), ab.size() * sizeof(double2)) &&
                           !memcmp(dw4.data(), dwv.data(), c.C * sizeof(float)) && !memcmp(db4.data(), dbv.data(), c.C * sizeof(float)) &&
                           gn_bwd_done_ctr == 0;
        failures += !same4;
        printf("emu group_norm[fused_bwd,gpc=%d,N=%d,C=%d,G=%d,HW=%d,cluster=%d,V=%d] dx, sums, dw, db %s gpc=1's %s\n", gpc, c.N,
               c.C, c.G, c.HW, cl, V, same4 ? "are" : "are NOT", same4 ? "ok" : "FAILED");
    }
}

/* the two-pass group_norm (f64, groups too large for a cluster, DRAFT_GN_TWOPASS=1) as
 * group_norm_run / group_norm_bwd_run launch it on a GPU of `sms` SMs (which sets the chunks per
 * group), float4 loads where they do (f32, sizes a multiple of 4); the backward from the
 * forward's own statistics, as the engine runs it */
template <class T> void run_twopass(const gn_case &c, int sms)
{
    const int cg = c.C / c.G, ge = cg * c.HW, NG = c.N * c.G, planes = c.N * c.C;
    const size_t n = (size_t)c.N * c.C * c.HW;
    const bool f32 = std::is_same<T, float>::value, v4s = f32 && ge % 4 == 0, v4 = f32 && c.HW % 4 == 0;
    const gn_data<T> D(c);
    const gn_ref R(c, D);
    int64_t S, chunk;
    gn_twopass_split(NG, ge, sms, &S, &chunk);
    std::vector<wsum> part((size_t)NG * S, wsum{NAN, NAN, NAN});
    std::vector<T> o(n, (T)NAN), m(NG, (T)NAN), r(NG, (T)NAN);
    const T *x = D.x.data(), *dy = D.dy.data(), *w = D.w.data(), *b = D.b.data();
    emu_launch(emu_dim3{(unsigned)NG, (unsigned)S, 1}, 1, kThreads, [&] {
        if (v4s) gn_stats_kernel<T, 4>(part.data(), x, ge, chunk);
        else gn_stats_kernel<T, 1>(part.data(), x, ge, chunk);
    });
    emu_launch((unsigned)planes, kThreads, [&] {
        if (v4) gn_norm_kernel<T, 4>(o.data(), m.data(), r.data(), x, w, b, part.data(), (int)S, c.C, cg, c.HW, D.eps);
        else gn_norm_kernel<T, 1>(o.data(), m.data(), r.data(), x, w, b, part.data(), (int)S, c.C, cg, c.HW, D.eps);
    });
    std::vector<double2> ab((size_t)planes + NG, double2{NAN, NAN});
    double2 *coef = ab.data() + planes;
    std::vector<T> d(n, (T)NAN), dw(c.C, (T)NAN), db(c.C, (T)NAN);
    emu_launch((unsigned)planes, kThreads, [&] {
        if (v4) gn_bwd_plane_kernel<T, 4>(ab.data(), dy, x, c.HW);
        else gn_bwd_plane_kernel<T, 1>(ab.data(), dy, x, c.HW);
    });
    emu_launch((unsigned)((NG + 127) / 128), 128,
               [&] { gn_bwd_coef_kernel<T>(coef, ab.data(), w, m.data(), r.data(), NG, c.G, cg, c.HW); });
    emu_launch((unsigned)planes, kThreads, [&] {
        if (v4) gn_bwd_dx_kernel<T, 4>(d.data(), dy, x, w, r.data(), coef, c.C, cg, c.HW);
        else gn_bwd_dx_kernel<T, 1>(d.data(), dy, x, w, r.data(), coef, c.C, cg, c.HW);
    });
    emu_launch((unsigned)((c.C + 127) / 128), 128,
               [&] { gn_bwd_wb_kernel<T>(dw.data(), db.data(), ab.data(), m.data(), r.data(), c.N, c.C, cg); });
    std::vector<double> aba(planes), abb(planes);
    for (int i = 0; i < planes; i++) aba[i] = ab[i].x, abb[i] = ab[i].y;
    const double bound = f32 ? 1e-6 : 1e-12;
    const char *tn = f32 ? "f32" : "f64";
    auto rep = [&](const char *what, double e, double bd) {
        const bool ok = e <= bd;
        failures += !ok;
        printf("emu group_norm[twopass,%s,N=%d,C=%d,G=%d,HW=%d,SMs=%d: S=%lld chunk=%lld,V=%d] %s rel=%.1e (bound %.0e) %s\n", tn,
               c.N, c.C, c.G, c.HW, sms, (long long)S, (long long)chunk, v4 ? 4 : 1, what, e, bd, ok ? "ok" : "FAILED");
    };
    rep("out", rel_err(o, R.out), bound);
    rep("mean", rel_err(m, R.mu), bound);
    rep("rstd", rel_err(r, R.rs), bound);
    rep("dx", rel_err(d, R.dx), 2 * bound);
    rep("sum_dy", rel_err(aba, R.ab_a), bound);
    rep("sum_dy_x", rel_err(abb, R.ab_b), bound);
    rep("dw", rel_err(dw, R.dw), 2 * bound);
    rep("db", rel_err(db, R.db), bound);
}

/* ---- layer_norm: rows of n, forward, dx, and dw / db from [chunk, column] partials */

template <class T> std::vector<T> randv(size_t n, double scale, double shift)
{
    std::vector<T> v(n);
    for (T &e : v) e = (T)(scale * urand() + shift);
    return v;
}

/* GS threads a row (32: a warp, as norm.cu takes for n <= 4096; kThreads: a block), V per load,
 * weights and bias or none, the weight gradients' rows cut into chunks of `chunk` */
template <class T, int GS, int V> void run_ln(int rows, int n, bool affine, int chunk)
{
    const double eps = 1e-5, bound = std::is_same<T, double>::value ? 1e-12 : 2e-6;
    const size_t m = (size_t)rows * n;
    const std::vector<T> x = randv<T>(m, 3, 0.5), dy = randv<T>(m, 1, 0), w = randv<T>(n, 1, 1), b = randv<T>(n, 1, 0);
    /* float64 reference */
    std::vector<double> out_r(m), dx_r(m), mean_r(rows), rstd_r(rows), dw_r(n, 0), db_r(n, 0);
    for (int r = 0; r < rows; r++) {
        double mu = 0, var = 0;
        for (int j = 0; j < n; j++) mu += (double)x[(size_t)r * n + j];
        mu /= n;
        for (int j = 0; j < n; j++) var += ((double)x[(size_t)r * n + j] - mu) * ((double)x[(size_t)r * n + j] - mu);
        const double rs = 1 / sqrt(var / n + eps);
        mean_r[r] = mu, rstd_r[r] = rs;
        double m1 = 0, m2 = 0;
        for (int j = 0; j < n; j++) {
            const size_t i = (size_t)r * n + j;
            const double xh = ((double)x[i] - mu) * rs, g = (double)dy[i] * (affine ? (double)w[j] : 1.0);
            out_r[i] = affine ? xh * (double)w[j] + (double)b[j] : xh;
            m1 += g / n, m2 += g * xh / n;
            dw_r[j] += (double)dy[i] * xh;
            db_r[j] += (double)dy[i];
        }
        for (int j = 0; j < n; j++) {
            const size_t i = (size_t)r * n + j;
            const double xh = ((double)x[i] - mu) * rs, g = (double)dy[i] * (affine ? (double)w[j] : 1.0);
            dx_r[i] = rs * (g - m1 - xh * m2);
        }
    }
    const T *wp = affine ? w.data() : nullptr, *bp = affine ? b.data() : nullptr;
    const unsigned blocks = GS == 32 ? (unsigned)((rows + kThreads / 32 - 1) / (kThreads / 32)) : (unsigned)rows;
    std::vector<T> out(m, (T)NAN), mean(rows, (T)NAN), rstd(rows, (T)NAN), dx(m, (T)NAN);
    emu_launch(blocks, kThreads, [&] { ln_fwd_kernel<T, GS, V>(out.data(), mean.data(), rstd.data(), x.data(), wp, bp, rows, n, eps); });
    /* the backward from the reference's statistics rounded to T, as autograd passes the forward's */
    std::vector<T> mean_t(mean_r.begin(), mean_r.end()), rstd_t(rstd_r.begin(), rstd_r.end());
    emu_launch(blocks, kThreads, [&] { ln_bwd_dx_kernel<T, GS, V>(dx.data(), dy.data(), x.data(), wp, mean_t.data(), rstd_t.data(), rows, n); });
    const int colblocks = (n + 31) / 32, nchunks = (rows + chunk - 1) / chunk;
    std::vector<double2> part((size_t)nchunks * n, make_double2(NAN, NAN));
    std::vector<T> dw(n, (T)NAN), db(n, (T)NAN);
    emu_launch(emu_dim3{(unsigned)colblocks, (unsigned)nchunks, 1}, 1, 32 * kLnColRows,
               [&] { ln_bwd_wb_part_kernel<T>(part.data(), dy.data(), x.data(), mean_t.data(), rstd_t.data(), rows, n, chunk); });
    emu_launch((unsigned)((n + 255) / 256), 256, [&] { ln_bwd_wb_final_kernel<T>(dw.data(), db.data(), part.data(), n, nchunks); });
    const char *tn = std::is_same<T, double>::value ? "f64" : "f32";
    auto rep = [&](const char *what, double e) {
        const bool ok = e <= bound;
        failures += !ok;
        printf("emu layer_norm[%s,rows=%d,n=%d,GS=%d,V=%d%s,chunk=%d] %s rel=%.1e %s\n", tn, rows, n, GS, V, affine ? ",affine" : "",
               chunk, what, e, ok ? "ok" : "FAILED");
    };
    rep("out", rel_err(out, out_r));
    rep("mean", rel_err(mean, mean_r));
    rep("rstd", rel_err(rstd, rstd_r));
    rep("dx", rel_err(dx, dx_r));
    rep("dw", rel_err(dw, dw_r));
    rep("db", rel_err(db, db_r));
}

}  // namespace

int main()
{
    /* small groups (blocks that own nothing at cluster 8), chunks that cross channel boundaries
     * (HW = 25, 100), several loads per thread (HW = 640), groups of 10 channels, as SD's
     * 320-channel layers have, at SD's 64x64 too (a 160 KiB group: in one block,
     * DRAFT_GN_CLUSTER=1), and of 40, as its 1280-channel layers have (more channels than a warp
     * has lanes: the backward's per-channel loops take two rounds) */
    const gn_case cases[] = {{2, 6, 3, 12}, {1, 6, 2, 25}, {1, 4, 1, 3}, {1, 8, 2, 640}, {1, 20, 2, 100}, {1, 20, 2, 4096},
                             {1, 80, 2, 64}};
    for (const gn_case &c : cases)
        for (int cl = 1; cl <= kGnMaxCluster; cl *= 2) {
            if (c.HW % 4 == 0) run_case<4>(c, cl);
            if (c.HW % 4 || &c == cases) run_case<1>(c, cl);   /* V = 1 where it must, and once where it may */
        }
    /* a mean about 290 standard deviations from 0 (x = 500 + uniform(-3, 3)): where the sums of x
     * and x^2 cancel most (DRAFT_GN_SUMS), and Chan's merges must not lose the variance either */
    g_shift = 500.f;
    for (const gn_case &c : {cases[3], cases[5]})
        for (int cl : {2, 8}) run_case<4>(c, cl);
    g_shift = 0.5f;
    /* layer_norm: a warp a row (rows that leave a block's last warps without one, n not a
     * multiple of the warp's 32 or 128 elements, CLIP's 768 and the UNet's 320) and a block a row
     * (n > 4096, norm.cu's switch), float4 loads where n % 4 == 0, f64; the weight gradients over
     * uneven row chunks */
    run_ln<float, 32, 1>(13, 37, true, 4);
    run_ln<float, 32, 4>(13, 40, true, 5);
    run_ln<float, 32, 4>(9, 768, false, 9);
    run_ln<float, 32, 4>(16, 320, true, 3);
    run_ln<float, kThreads, 4>(3, 4100, true, 2);
    run_ln<float, kThreads, 1>(2, 5001, false, 1);
    run_ln<double, 32, 1>(11, 70, true, 4);
    run_ln<double, kThreads, 1>(2, 4500, true, 1);
    /* the two-pass group_norm: one chunk a group, 2 uneven ones (4100 = 2052 + 2048), 8, and 20
     * (SD's 64x64 at 20 channels a group); f32 and f64; the SM count of an H200 and of a small
     * GPU, which takes fewer chunks */
    const gn_case twopass[] = {{2, 6, 3, 12}, {1, 20, 2, 100}, {2, 6, 3, 2050}, {1, 4, 2, 8192}, {1, 40, 2, 4096}};
    for (const gn_case &c : twopass)
        for (int sms : {132, 2}) {
            run_twopass<float>(c, sms);
            run_twopass<double>(c, sms);
        }
    /* the launch-floor probe of bench_gpu's launch_* rows: in clusters of 2, it must return and
     * touch nothing */
    emu_launch(2u, 1u, 2u, kThreads, [&] { gn_empty_kernel(); });
    printf("%d failed\n", failures);
    return failures ? 1 : 0;
}
