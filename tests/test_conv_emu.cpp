/* test_conv_emu.cpp — the CUDA im2col and col2im kernels (tensor/cuda/conv2d_kernels.cuh) and the
 * bf16 operand packing (tensor/cuda/matmul_kernels.cuh) run on the host through tests/cuda_emu.h,
 * against plain loops: im2col in f32, f64 and bf16 (the PRECISION_BF16 forward writes its im2col
 * in bf16), with V = 4 runs that wrap output rows and with pixel tiles of one image; col2im's
 * gather; the packing's row / batch strides and the order of the bf16 halves in its 8-byte
 * stores; and the row-shift forward, whole (its kernels and GEMM plan, a plain GEMM standing in
 * for cuBLAS), against a direct convolution. Copies must match bit for bit, col2im's sums to rounding. What this cannot check:
 * timing and the real compiler's code (test_cuda on a GPU). One line per kernel and case; exits
 * non-zero on any mismatch. */
#include "tests/cuda_emu.h"

#include <stdio.h>
#include <stdlib.h>

#include "tensor/half.h"
#include "tensor/cuda/conv2d_kernels.cuh"
#include "tensor/cuda/matmul_kernels.cuh"

namespace {

uint64_t rng = 0x6a09e667f3bcc909ull;
double urand() { return emu_urand(rng); }

int failures = 0;

void report(const char *kernel, const char *label, const char *what, double e, double bound)
{
    const bool ok = e <= bound;
    failures += !ok;
    printf("emu conv[%s,%s] %s err=%.1e (bound %.0e) %s\n", kernel, label, what, e, bound, ok ? "ok" : "FAILED");
}

struct conv_case {
    const char *label;
    int N, C, H, W, KH, KW, sh, sw, pt, pl, pb, pr, dh, dw;
};

kgeom make_kgeom(const conv_case &c)
{
    const int OH = (c.H + c.pt + c.pb - c.dh * (c.KH - 1) - 1) / c.sh + 1;
    const int OW = (c.W + c.pl + c.pr - c.dw * (c.KW - 1) - 1) / c.sw + 1;
    const int KK = c.KH * c.KW;
    return kgeom{c.C, c.H, c.W, c.KH, c.KW, OH, OW, c.sh, c.sw, c.pt, c.pl, c.dh, c.dw, KK, c.C * KK, c.H * c.W, OH * OW};
}

/* the input element im2col row k, output pixel q of image n reads (0 outside) */
template <typename T> T x_at(const std::vector<T> &x, const kgeom &g, int64_t n, int k, int q)
{
    const int c = k / g.KK, kk = k % g.KK, kh = kk / g.KW, kw = kk % g.KW, oh = q / g.OW, ow = q % g.OW;
    const int ih = oh * g.sh - g.pt + kh * g.dh, iw = ow * g.sw - g.pl + kw * g.dw;
    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return T(0);
    return x[((size_t)n * g.C + c) * g.HW + (size_t)ih * g.W + iw];
}

/* im2col of images n0 .. n0+nb, pixels p0 .. p0+pc, with V-wide runs, into CT; bit-exact check */
template <typename T, typename CT, int V>
void check_im2col(const conv_case &c, const char *name, int64_t n0, int64_t nb, int p0, int pc)
{
    const kgeom g = make_kgeom(c);
    std::vector<T> x((size_t)c.N * g.C * g.HW);
    for (T &v : x) v = (T)urand();
    std::vector<CT> col((size_t)nb * g.K * pc);
    memset(col.data(), 0xff, col.size() * sizeof(CT));   /* anything not written shows */
    const int per_block = kIm2colThreads * V;
    emu_launch(emu_dim3{(unsigned)g.K, (unsigned)((pc + per_block - 1) / per_block), (unsigned)nb}, 1, kIm2colThreads,
               [&] { im2col_kernel<T, CT, V>(col.data(), x.data(), g, n0, p0, pc); });
    size_t bad = 0;
    for (int64_t i = 0; i < nb; i++)
        for (int k = 0; k < g.K; k++)
            for (int p = 0; p < pc; p++) {
                const T v = x_at(x, g, n0 + i, k, p0 + p);
                CT want;
                if constexpr (sizeof(CT) == 2) want = half_f32_bits_to_bf16(__float_as_uint((float)v));
                else want = v;
                bad += memcmp(&want, &col[((size_t)i * g.K + k) * pc + p], sizeof(CT)) != 0;
            }
    char label[128];
    snprintf(label, sizeof label, "%s,n0=%lld,nb=%lld,p0=%d,pc=%d,V=%d", c.label, (long long)n0, (long long)nb, p0, pc, V);
    report(name, label, "mismatches", (double)bad, 0);
}

/* col2im of images n0 .. n0+nb, channels c0 .. c0+cc: dx gathers dcol [nb][cc*KK][OHW] */
template <typename T> void check_col2im(const conv_case &c, const char *name, int64_t n0, int64_t nb, int c0, int cc)
{
    const kgeom g = make_kgeom(c);
    std::vector<T> dcol((size_t)nb * cc * g.KK * g.OHW), dx((size_t)c.N * g.C * g.HW, T(-7));
    for (T &v : dcol) v = (T)urand();
    std::vector<double> ref(dx.size(), -7);
    for (int64_t i = 0; i < nb; i++)
        for (int ci = 0; ci < cc; ci++) {
            for (int j = 0; j < g.HW; j++) ref[((size_t)(n0 + i) * g.C + c0 + ci) * g.HW + j] = 0;
            for (int kk = 0; kk < g.KK; kk++)
                for (int q = 0; q < g.OHW; q++) {
                    const int kh = kk / g.KW, kw = kk % g.KW, oh = q / g.OW, ow = q % g.OW;
                    const int ih = oh * g.sh - g.pt + kh * g.dh, iw = ow * g.sw - g.pl + kw * g.dw;
                    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                    ref[((size_t)(n0 + i) * g.C + c0 + ci) * g.HW + (size_t)ih * g.W + iw] +=
                        dcol[(((size_t)i * cc + ci) * g.KK + kk) * g.OHW + q];
                }
        }
    /* as plane_grid in conv2d.cu: x over pixels, y over channels, z over images */
    emu_launch(emu_dim3{(unsigned)((g.HW + 255) / 256), (unsigned)cc, (unsigned)nb}, 1, 256,
               [&] { col2im_kernel<T>(dx.data(), dcol.data(), g, n0, c0, cc, nb); });
    double err = 0;
    for (size_t j = 0; j < dx.size(); j++) err = fmax(err, fabs((double)dx[j] - ref[j]));
    char label[128];
    snprintf(label, sizeof label, "%s,n0=%lld,nb=%lld,c0=%d,cc=%d", c.label, (long long)n0, (long long)nb, c0, cc);
    report(name, label, "max_abs", err, sizeof(T) == 4 ? 1e-5 : 1e-12);
}

/* pack count matrices (batch stride sb) of `outer` rows of `inner` elements at stride ld into
 * dense bf16 [count, outer, inner]; a grid smaller than the work, so both loops wrap */
template <int V> void check_pack(int64_t count, int64_t outer, int64_t inner, int64_t ld, int64_t sb, unsigned gx, unsigned gy)
{
    std::vector<float> src((size_t)(count - 1) * sb + (size_t)(outer - 1) * ld + inner + 8);
    for (float &v : src) v = (float)(urand() * 100);
    src[3] = NAN;   /* a NaN keeps its sign and becomes a quiet one, as on the CPU */
    const int64_t rows = count * outer;
    std::vector<uint16_t> dst((size_t)rows * inner, 0xdead);
    emu_launch(emu_dim3{gx, gy, 1}, 1, 256,
               [&] { pack_bf16_kernel<V>(dst.data(), src.data(), rows, outer, inner, ld, sb); });
    size_t bad = 0;
    for (int64_t b = 0; b < count; b++)
        for (int64_t o = 0; o < outer; o++)
            for (int64_t j = 0; j < inner; j++)
                bad += dst[(size_t)((b * outer + o) * inner + j)] !=
                       half_f32_bits_to_bf16(__float_as_uint(src[(size_t)(b * sb + o * ld + j)]));
    char label[128];
    snprintf(label, sizeof label, "count=%lld,outer=%lld,inner=%lld,ld=%lld,sb=%lld,grid=%ux%u,V=%d", (long long)count,
             (long long)outer, (long long)inner, (long long)ld, (long long)sb, gx, gy, V);
    report("pack_bf16", label, "mismatches", (double)bad, 0);
}

/* a direct convolution in float64: out [N, O, OH, OW] from x [N, C, H, W], w [O, C/G, KH, KW] and
 * bias (empty: none) */
template <typename T>
std::vector<double> direct_conv(const conv_case &c, int O, int G, const std::vector<T> &x, const std::vector<T> &w,
                                const std::vector<T> &bias)
{
    const kgeom g = make_kgeom(c);
    const int64_t Cg = c.C / G, Og = O / G;
    std::vector<double> ref((size_t)c.N * O * g.OHW);
    for (int n = 0; n < c.N; n++)
        for (int o = 0; o < O; o++)
            for (int q = 0; q < g.OHW; q++) {
                const int gi = (int)(o / Og);
                double acc = bias.empty() ? 0 : (double)bias[o];
                for (int64_t cl = 0; cl < Cg; cl++)
                    for (int kk = 0; kk < g.KK; kk++)
                        acc += (double)w[((size_t)o * Cg + cl) * g.KK + kk] *
                               (double)x_at(x, g, n, (int)((gi * Cg + cl) * g.KK + kk), q);
                ref[((size_t)n * O + o) * g.OHW + q] = acc;
            }
    return ref;
}

/* the backward input of a convolution (groups 1) in float64: dx = sum over o, kh, kw of w dy */
std::vector<double> direct_dgrad(const conv_case &c, int O, const std::vector<float> &dy, const std::vector<float> &w)
{
    const kgeom g = make_kgeom(c);
    std::vector<double> ref((size_t)c.N * c.C * g.HW, 0.0);
    for (int n = 0; n < c.N; n++)
        for (int o = 0; o < O; o++)
            for (int q = 0; q < g.OHW; q++)
                for (int k = 0; k < g.K; k++) {
                    const int ch = k / g.KK, kh = k % g.KK / g.KW, kw = k % g.KW;
                    const int ih = q / g.OW * g.sh - g.pt + kh * g.dh, iw = q % g.OW * g.sw - g.pl + kw * g.dw;
                    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                    ref[((size_t)n * c.C + ch) * g.HW + (size_t)ih * g.W + iw] +=
                        (double)w[(size_t)o * g.K + k] * dy[((size_t)n * O + o) * g.OHW + q];
                }
    return ref;
}

/* ||out - ref|| / ||ref||, a non-finite out entry counting as huge */
template <typename T> double rel_l2(const std::vector<T> &out, const std::vector<double> &ref)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        const double d = (double)out[i] - ref[i];
        num += isfinite(d) ? d * d : 1e30;
        den += ref[i] * ref[i];
    }
    return sqrt(num / den);
}

/* the backward input of c into O output channels: random dy and w, dx in float64, and the
 * geometry the kernels run it over (dgrad_geom: the forward of dy with the weights flipped) */
struct dgrad_data {
    std::vector<float> dy, w;
    std::vector<double> ref;
    kgeom t;
};
dgrad_data make_dgrad_data(const conv_case &c, int O)
{
    const kgeom g = make_kgeom(c);
    dgrad_data d;
    d.dy.resize((size_t)c.N * O * g.OHW), d.w.resize((size_t)O * g.K);
    for (float &v : d.dy) v = (float)urand();
    for (float &v : d.w) v = (float)urand();
    d.ref = direct_dgrad(c, O, d.dy, d.w);
    d.t = dgrad_geom(g, O);
    return d;
}

/* the row-shift forward of images 0 .. N, one tile of `tile` images at a time, as conv2d.cu runs it
 * (weight reorder, bias pre-fill or crop, partial im2col, rowshift_gemms), with a plain
 * column-major GEMM in place of cuBLAS; against a direct convolution in float64 */
template <typename T, typename CT> void check_rowshift(const conv_case &c, int O, int G, bool with_bias, int64_t tile)
{
    const kgeom g = make_kgeom(c);
    const int64_t Cg = c.C / G;
    const rs_geom r = rowshift_geom(g, Cg);
    const bool direct = r.Wq == g.OW;
    std::vector<T> x((size_t)c.N * c.C * g.HW), w((size_t)O * Cg * g.KK), bias(with_bias ? O : 0);
    for (T &v : x) v = (T)urand();
    for (T &v : w) v = (T)urand();
    for (T &v : bias) v = (T)urand();
    const std::vector<double> ref = direct_conv(c, O, G, x, w, bias);
    std::vector<T> wk((size_t)O * Cg * g.KK), out(ref.size(), T(NAN)), opad(direct ? 0 : (size_t)tile * O * r.m, T(NAN));
    std::vector<CT> cols((size_t)tile * c.C * g.KW * r.plane);
    memset(cols.data(), 0xff, cols.size() * sizeof(CT));
    emu_launch((unsigned)((wk.size() + 255) / 256), 256,
               [&] { rowshift_weight_kernel<T>(wk.data(), w.data(), O, Cg, g.KH, g.KW); });
    if (direct && with_bias)
        for (int n = 0; n < c.N; n++)
            for (int o = 0; o < O; o++)
                for (int q = 0; q < g.OHW; q++) out[((size_t)n * O + o) * g.OHW + q] = bias[o];
    auto gemm = [](int64_t m, int64_t n, int64_t k, const CT *A, int64_t lda, int64_t sA, const T *B, int64_t ldb,
                   int64_t sB, T beta, T *C, int64_t ldc, int64_t sC, int64_t batch) {
        for (int64_t b = 0; b < batch; b++)
            for (int64_t j = 0; j < n; j++)
                for (int64_t i = 0; i < m; i++) {
                    double acc = 0;
                    for (int64_t kk = 0; kk < k; kk++) {
                        const CT a = A[b * sA + i + kk * lda];
                        double av;
                        if constexpr (sizeof(CT) == 2) av = emu_bf16(a);
                        else av = (double)a;
                        acc += av * (double)B[b * sB + kk + j * ldb];
                    }
                    T &cv = C[b * sC + i + j * ldc];
                    cv = beta == T(0) ? (T)acc : (T)(acc + (double)beta * (double)cv);   /* beta 0: C is not read */
                }
        return 0;
    };
    for (int64_t n0 = 0; n0 < c.N; n0 += tile) {
        const int64_t nb = c.N - n0 < tile ? c.N - n0 : tile;
        emu_launch(emu_dim3{(unsigned)((r.plane + 255) / 256), (unsigned)(c.C * g.KW), (unsigned)nb}, 1, 256,
                   [&] { rowshift_kernel<T, CT>(cols.data(), x.data(), g, n0, r.Wq, r.Hp); });
        T *dst = direct ? out.data() + n0 * O * g.OHW : opad.data();
        rowshift_gemms<T, CT>(g, G, O, cols.data(), wk.data(), dst, direct && with_bias ? T(1) : T(0), nb, gemm);
        if (!direct)
            emu_launch(emu_dim3{(unsigned)((g.OHW + 255) / 256), (unsigned)O, (unsigned)nb}, 1, 256, [&] {
                rowshift_crop_kernel<T>(out.data(), opad.data(), with_bias ? bias.data() : nullptr, g, n0, O, r.Wq);
            });
    }
    char label[160];
    snprintf(label, sizeof label, "%s,O=%d,groups=%d,%s,tile=%lld,%s,%s", c.label, O, G, with_bias ? "bias" : "no_bias",
             (long long)tile, direct ? "direct" : "crop", sizeof(CT) == 2 ? "bf16" : sizeof(T) == 8 ? "f64" : "f32");
    report("rowshift_fwd", label, "rel", rel_l2(out, ref), sizeof(CT) == 2 ? 1e-2 : sizeof(T) == 8 ? 1e-14 : 1e-6);
}

/* an implicit-GEMM convolution as conv2d.cu's implicit_run does it: the weights w [O][C][KH][KW]
 * (flip: the forward's, for the backward input) into the kernel's layout (tap-major where C % 16
 * == 0, else flipped or as they are), conv_implicit_kernel<BM, M, tap> over P pixels, in `splits`
 * split-K parts (then split_sum_kernel) when more than 1 */
template <int BM, int M>
void run_implicit(float *out, const float *x, const float *w, const float *bias, const kgeom &g, int O, int64_t P, int splits,
                  bool flip = false)
{
    const ig_split sp = ig_split_plan(g.K, splits);
    const int64_t n = P * O, nw = (int64_t)O * g.K, fo = flip ? g.C : O, fc = flip ? O : g.C;
    const bool tap = g.C % kIgBK == 0;
    std::vector<float> wp(tap || flip ? (size_t)nw : 0, NAN);
    if (tap || flip) {
        emu_launch((unsigned)((nw + 255) / 256), 256,
                   [&] { conv_weight_layout_kernel<float>(wp.data(), w, fo, fc, g.KH, g.KW, flip, tap); });
        w = wp.data();
    }
    std::vector<float> part(sp.S > 1 ? (size_t)(sp.S * n) : 0, NAN);
    float *dst = sp.S > 1 ? part.data() : out;
    const int vec_a = g.K % 4 == 0 && ((uintptr_t)w & 15) == 0;
    {
        const emu_smem_scope smem(ig_smem_bytes(BM, M));
        emu_launch(emu_dim3{(unsigned)((P + kIgBN - 1) / kIgBN), (unsigned)((O + BM - 1) / BM), (unsigned)sp.S}, 1,
                   ig_threads(BM), [&] {
                       if (tap) conv_implicit_kernel<BM, M, true>(dst, x, w, sp.S > 1 ? nullptr : bias, g, O, P, vec_a, sp.kps);
                       else conv_implicit_kernel<BM, M, false>(dst, x, w, sp.S > 1 ? nullptr : bias, g, O, P, vec_a, sp.kps);
                   });
    }
    if (sp.S > 1) {
        const bool v4 = split_sum_v4(n, g.OHW, out);
        if (v4) emu_launch((unsigned)((n / 4 + 255) / 256), 256, [&] { split_sum_kernel<4>(out, dst, sp.S, n, bias, g.OHW, O); });
        else emu_launch((unsigned)((n + 255) / 256), 256, [&] { split_sum_kernel<1>(out, dst, sp.S, n, bias, g.OHW, O); });
    }
}

/* the implicit-GEMM forward (conv_implicit_kernel<BM, M>) as conv2d.cu launches it, against a
 * direct convolution in float64; w_off shifts the weights (the scalar weight copies, as K % 4 != 0
 * does) and the output (single stores where pairs would be misaligned: UBSan checks) by one float
 * off alignment; splits > 1: split-K */
const char *ig_mode_name(int m) { return m == IG_BF16 ? "bf16" : m == IG_3XTF32 ? "3xtf32" : "tf32"; }
/* relative error bounds: bf16 rounds each operand to 8 significant bits, tf32 to 11; 3xTF32 is f32 */
double ig_bound(int m) { return m == IG_BF16 ? 1e-2 : m == IG_3XTF32 ? 1e-6 : 1e-3; }

template <int BM, int M> void check_implicit(const conv_case &c, int O, bool with_bias, bool w_off, int splits = 1)
{
    const kgeom g = make_kgeom(c);
    std::vector<float> x((size_t)c.N * c.C * g.HW), wbuf((size_t)O * g.K + 4), bias(with_bias ? O : 0);
    for (float &v : x) v = (float)urand();
    for (float &v : wbuf) v = (float)urand();
    for (float &v : bias) v = (float)urand();
    const float *w = wbuf.data() + (w_off ? 1 : 0);
    const std::vector<float> wv(w, w + (size_t)O * g.K);
    const std::vector<double> ref = direct_conv(c, O, 1, x, wv, bias);
    std::vector<float> obuf(ref.size() + 1, NAN);
    float *op = obuf.data() + (w_off ? 1 : 0);
    const int64_t P = (int64_t)c.N * g.OHW;
    const int vec_a = g.K % 4 == 0 && (g.C % kIgBK == 0 || ((uintptr_t)w & 15) == 0);   /* tap-major: permuted copy */
    run_implicit<BM, M>(op, x.data(), w, with_bias ? bias.data() : nullptr, g, O, P, splits);
    const std::vector<float> out(op, op + ref.size());
    char label[160];
    snprintf(label, sizeof label, "%s,N=%d,C=%d,O=%d,K=%d,P=%lld,%s,%s,BM=%d,%s,%s,splits=%d(%d)", c.label, c.N, c.C, O,
             g.K, (long long)P, with_bias ? "bias" : "no_bias", vec_a ? "vec_w" : "scalar_w", BM, ig_mode_name(M),
             g.C % kIgBK ? "c_major" : "tap_major", splits, ig_split_plan(g.K, splits).S);
    report("implicit_fwd", label, "rel", rel_l2(out, ref), ig_bound(M));
}

/* the implicit-GEMM backward input at stride 1 as conv2d.cu runs it (conv_weight_layout_kernel, then
 * conv_implicit_kernel over dgrad_geom), against dx = sum over o, kh, kw of w dy in float64 */
template <int BM, int M> void check_implicit_dgrad(const conv_case &c, int O, int splits = 1)
{
    const dgrad_data d = make_dgrad_data(c, O);
    std::vector<float> dx(d.ref.size(), NAN);
    const int64_t P = (int64_t)c.N * d.t.OHW;
    run_implicit<BM, M>(dx.data(), d.dy.data(), d.w.data(), nullptr, d.t, c.C, P, splits, true);
    char label[160];
    snprintf(label, sizeof label, "%s,N=%d,C=%d,O=%d,K'=%d,P=%lld,BM=%d,%s,%s,splits=%d", c.label, c.N, c.C, O, d.t.K,
             (long long)P, BM, ig_mode_name(M), O % kIgBK ? "c_major" : "tap_major", splits);
    report("implicit_dgrad", label, "rel", rel_l2(dx, d.ref), ig_bound(M));
}

/* the halo-tile forward (conv_halo_kernel<BM>, TF32) as conv2d.cu's halo_run does it:
 * conv_halo_weight_kernel (flip: the backward input's operand from the forward's w, with C and O
 * swapped), then the kernel over 4 x 32 pixel tiles, BM channels, N images */
template <int BM>
void run_halo(float *out, const float *x, const float *w, const float *bias, const kgeom &g, int N, int O, bool flip)
{
    const int Opad = (O + BM - 1) / BM * BM;
    const int64_t nw = (int64_t)Opad / 16 * (g.C / 8 * 9) * 128;
    std::vector<float> wp((size_t)nw, NAN);
    emu_launch((unsigned)((nw + 255) / 256), 256, [&] { conv_halo_weight_kernel(wp.data(), w, O, Opad, g.C, flip); });
    const unsigned tiles = (unsigned)(((g.OH + kHaloTH - 1) / kHaloTH) * ((g.OW + kHaloTW - 1) / kHaloTW));
    const emu_smem_scope smem(halo_smem_bytes(BM));
    emu_launch(emu_dim3{tiles, (unsigned)(Opad / BM), (unsigned)N}, 1, halo_threads(BM),
               [&] { conv_halo_kernel<BM>(out, x, wp.data(), bias, g, O); });
}

/* v as the TF32 operand: rounded to nearest (ties away), 13 low bits zero */
double tf32_of(float v) { return (double)__uint_as_float(to_tf32(v)); }
/* v as a bf16 operand (rounded to nearest even, as the engine's and cuBLAS's conversions) */
double bf16_of(float v) { return (double)__uint_as_float((uint32_t)half_f32_bits_to_bf16(__float_as_uint(v)) << 16); }
/* how the Winograd GEMMs' operands are taken: exact f32, TF32 (TF32 or 3xTF32 off), bf16
 * (DRAFT_CONV_AUTOCAST_WINO under bf16 autocast) */
enum wino_round { WR_F32 = 0, WR_TF32 = 1, WR_BF16 = 2 };
double round_op(float v, int r) { return r == WR_TF32 ? tf32_of(v) : r == WR_BF16 ? bf16_of(v) : (double)v; }

/* a groups-1 convolution of c into O channels: random x, w and bias (none: empty), its output in
 * float64, and (direct_conv_tf32) the output of the operands rounded to tf32 */
struct conv_data {
    std::vector<float> x, w, bias;
    std::vector<double> ref;
};
conv_data make_conv_data(const conv_case &c, int O, bool with_bias)
{
    const kgeom g = make_kgeom(c);
    conv_data d;
    d.x.resize((size_t)c.N * c.C * g.HW), d.w.resize((size_t)O * g.K), d.bias.resize(with_bias ? O : 0);
    for (float &v : d.x) v = (float)urand();
    for (float &v : d.w) v = (float)urand();
    for (float &v : d.bias) v = (float)urand();
    d.ref = direct_conv(c, O, 1, d.x, d.w, d.bias);
    return d;
}

std::vector<double> direct_conv_tf32(const conv_case &c, int O, const conv_data &d, int r = WR_TF32)
{
    std::vector<double> xr(d.x.size()), wr(d.w.size()), br(d.bias.begin(), d.bias.end());
    for (size_t i = 0; i < d.x.size(); i++) xr[i] = round_op(d.x[i], r);
    for (size_t i = 0; i < d.w.size(); i++) wr[i] = round_op(d.w[i], r);
    return direct_conv(c, O, 1, xr, wr, br);
}

/* the halo forward against a direct convolution in float64, twice: of the exact operands (bound:
 * TF32's 1e-3) and of the operands rounded to tf32 as the kernel rounds them (then only the f32
 * sums differ: 1e-5, which a wrong tap, column or channel exceeds by orders of magnitude).
 * out_off: the output one float off 8-byte alignment (single stores) */
template <int BM> void check_halo(const conv_case &c, int O, bool with_bias, bool out_off)
{
    const kgeom g = make_kgeom(c);
    const conv_data d = make_conv_data(c, O, with_bias);
    const std::vector<double> &ref = d.ref, ref_r = direct_conv_tf32(c, O, d);
    std::vector<float> obuf(ref.size() + 1, NAN);
    float *op = obuf.data() + (out_off ? 1 : 0);
    run_halo<BM>(op, d.x.data(), d.w.data(), with_bias ? d.bias.data() : nullptr, g, c.N, O, false);
    const std::vector<float> out(op, op + ref.size());
    char label[160];
    snprintf(label, sizeof label, "%s,N=%d,C=%d,O=%d,%dx%d->%dx%d,%s,BM=%d%s", c.label, c.N, c.C, O, c.H, c.W, g.OH, g.OW,
             with_bias ? "bias" : "no_bias", BM, out_off ? ",out_off" : "");
    report("halo_fwd", label, "rel", rel_l2(out, ref), 1e-3);
    report("halo_fwd", label, "rel_vs_tf32_operands", rel_l2(out, ref_r), 1e-5);
}

/* the backward input through the halo kernel (stride 1, 3x3): dx = conv(dy, flipped transposed w)
 * over dgrad_geom, against dx = sum over o, kh, kw of w dy in float64 */
template <int BM> void check_halo_dgrad(const conv_case &c, int O)
{
    const dgrad_data d = make_dgrad_data(c, O);
    std::vector<float> dx(d.ref.size(), NAN);
    run_halo<BM>(dx.data(), d.dy.data(), d.w.data(), nullptr, d.t, c.N, c.C, true);
    char label[160];
    snprintf(label, sizeof label, "%s,N=%d,C=%d,O=%d,%dx%d,BM=%d", c.label, c.N, c.C, O, c.H, c.W, BM);
    report("halo_dgrad", label, "rel", rel_l2(dx, d.ref), 1e-3);
}

/* the Winograd path as conv2d.cu's wino_run runs it: wino_plan over `bytes`, the weight transform,
 * then per chunk the input transform (its channel grid capped at ycap, so that the loop past the
 * grid runs), the 16 GEMMs (a plain loop in place of cuBLAS: f64 sums of the f32 operands, or of
 * their tf32 or bf16 roundings as the tensor cores take them: rnd, a wino_round) and the output
 * transform. V and M start as NaN: a tile or channel the transforms miss shows. */
void run_wino(float *out, const float *x, const float *w, const float *bias, const kgeom &g, int N, int O, bool flip,
              size_t bytes, int rnd, unsigned ycap)
{
    const wino_chunks ch = wino_plan(N, g.OH, g.OW, g.C, O, bytes);
    const int64_t OC = (int64_t)O * g.C;
    std::vector<float> U((size_t)(16 * OC), NAN), V((size_t)(16 * g.C * ch.ld), NAN), M((size_t)(16 * O * ch.ld), NAN);
    /* bf16: the kernels write U and V as bf16 bits (as wino_chunks_run<uint16_t> runs them), read
     * back here as floats; NaN stays NaN */
    std::vector<uint16_t> Ub(rnd == WR_BF16 ? U.size() : 0, 0x7fc0), Vb(rnd == WR_BF16 ? V.size() : 0, 0x7fc0);
    auto widen = [](std::vector<float> &f, const std::vector<uint16_t> &b) {
        for (size_t i = 0; i < b.size(); i++) f[i] = __uint_as_float(half_bf16_to_f32_bits(b[i]));
    };
    if (rnd == WR_BF16) {
        emu_launch((unsigned)((OC + 255) / 256), 256, [&] { wino_weight_kernel<uint16_t>(Ub.data(), w, O, g.C, flip); });
        widen(U, Ub);
    } else {
        emu_launch((unsigned)((OC + 255) / 256), 256, [&] { wino_weight_kernel<float>(U.data(), w, O, g.C, flip); });
    }
    for (float &u : U) u = (float)round_op(u, rnd);   /* bf16: already */
    const bool pairs = g.OW % 2 == 0 && ((uintptr_t)out & 7) == 0;
    for (int64_t q0 = 0; q0 < ch.tiles; q0 += ch.ld) {
        const int pc = (int)(ch.tiles - q0 < ch.ld ? ch.tiles - q0 : ch.ld);
        const unsigned bx = (unsigned)((pc + 255) / 256);
        if (rnd == WR_BF16) {
            emu_launch(bx, (unsigned)g.C < ycap ? (unsigned)g.C : ycap, 1, 256,
                       [&] { wino_input_kernel<uint16_t>(Vb.data(), x, g, q0, pc, ch.ld); });
            widen(V, Vb);
        } else {
            emu_launch(bx, (unsigned)g.C < ycap ? (unsigned)g.C : ycap, 1, 256,
                       [&] { wino_input_kernel<float>(V.data(), x, g, q0, pc, ch.ld); });
        }
        for (int xi = 0; xi < 16; xi++)
            for (int o = 0; o < O; o++)
                for (int p = 0; p < pc; p++) {
                    double acc = 0;
                    for (int c = 0; c < g.C; c++) {
                        const float v = V[((size_t)xi * g.C + c) * ch.ld + p];
                        acc += (double)U[((size_t)xi * O + o) * g.C + c] * round_op(v, rnd);
                    }
                    M[((size_t)xi * O + o) * ch.ld + p] = (float)acc;
                }
        emu_launch(bx, (unsigned)O < ycap ? (unsigned)O : ycap, 1, 256,
                   [&] { wino_output_kernel(out, M.data(), bias, g, O, q0, pc, ch.ld, pairs); });
    }
}

/* the Winograd forward against a direct convolution in float64. Exact f32 products: bound 1e-6
 * (the f32). TF32: bound 1e-3, and the line also gives the error of the direct
 * convolution in TF32 (its operands rounded, f64 sums) for comparison: the transforms round after
 * adding up to 4 inputs or 9 weights, which costs accuracy against it. out_off: the output one
 * float off 8-byte alignment (single stores). */
void check_wino(const conv_case &c, int O, bool with_bias, bool out_off, size_t bytes, int rnd, unsigned ycap = 65535)
{
    const kgeom g = make_kgeom(c);
    const conv_data d = make_conv_data(c, O, with_bias);
    const std::vector<double> &ref = d.ref;
    std::vector<float> obuf(ref.size() + 1, NAN);
    float *op = obuf.data() + (out_off ? 1 : 0);
    run_wino(op, d.x.data(), d.w.data(), with_bias ? d.bias.data() : nullptr, g, c.N, O, false, bytes, rnd, ycap);
    const std::vector<float> out(op, op + ref.size());
    const wino_chunks ch = wino_plan(c.N, g.OH, g.OW, c.C, O, bytes);
    const char *rn = rnd == WR_TF32 ? "tf32" : "bf16";
    char label[200];
    snprintf(label, sizeof label, "%s,N=%d,C=%d,O=%d,%dx%d->%dx%d,%s,%lld_tiles_in_%lld%s%s%s", c.label, c.N, c.C, O, c.H,
             c.W, g.OH, g.OW, with_bias ? "bias" : "no_bias", (long long)ch.tiles, (long long)ch.n, out_off ? ",out_off" : "",
             rnd ? "," : "", rnd ? rn : "");
    if (rnd == WR_F32) {
        report("wino_fwd", label, "rel", rel_l2(out, ref), 1e-6);
        return;
    }
    /* TF32: 1e-3; bf16 (DRAFT_CONV_AUTOCAST_WINO): autocast's 1e-2 */
    const double direct = rel_l2(direct_conv_tf32(c, O, d, rnd), ref), e = rel_l2(out, ref);
    char what[64];
    snprintf(what, sizeof what, "rel (direct %s %.1e, x%.1f)", rn, direct, e / direct);
    report("wino_fwd", label, what, e, rnd == WR_TF32 ? 1e-3 : 1e-2);
}

/* its backward input (the forward of dy with the weights flipped, over dgrad_geom) */
void check_wino_dgrad(const conv_case &c, int O, int rnd)
{
    const dgrad_data d = make_dgrad_data(c, O);
    std::vector<float> dx(d.ref.size(), NAN);
    run_wino(dx.data(), d.dy.data(), d.w.data(), nullptr, d.t, c.N, c.C, true, (size_t)64 << 20, rnd, 65535);
    char label[160];
    snprintf(label, sizeof label, "%s,N=%d,C=%d,O=%d,%dx%d%s", c.label, c.N, c.C, O, c.H, c.W,
             rnd == WR_TF32 ? ",tf32" : rnd == WR_BF16 ? ",bf16" : "");
    report("wino_dgrad", label, "rel", rel_l2(dx, d.ref), rnd == WR_TF32 ? 1e-3 : rnd == WR_BF16 ? 1e-2 : 1e-6);
}

/* shared-memory banks of the halo kernel's B fragment loads (halo_b_word): for every pixel
 * column, tap, halo shift and both registers, a warp's 32 words fall on 32 banks */
void check_halo_banks()
{
    int worst = 1;
    for (int wn = 0; wn < 2; wn++)
        for (int ni = 0; ni < 8; ni++)
            for (int tap = 0; tap < 9; tap++)
                for (int cshift = 0; cshift < 4; cshift++)
                    for (int reg = 0; reg < 2; reg++) {
                        int hits[32] = {0};
                        for (int lane = 0; lane < 32; lane++) {
                            const int w = halo_b_word(lane, wn, ni, tap / 3, tap % 3, cshift) + reg * 4 * kHaloPlane;
                            const int h = ++hits[w % 32];
                            worst = h > worst ? h : worst;
                        }
                    }
    failures += worst != 1;
    printf("emu conv[halo_banks] B fragment loads: at most %d lanes per bank %s\n", worst, worst == 1 ? "ok" : "FAILED");
}

}  // namespace

/* the bias: its fill (a thread a pixel, channels and images looped past the grid) and its gradient
 * (a block a channel: warp shuffles, then 8 warp sums in order), f32 and f64, against float64 */
template <typename T> void check_bias(int N, int O, int OHW, unsigned gy, unsigned gz)
{
    std::vector<T> bias((size_t)O), out((size_t)N * O * OHW, (T)NAN), dy(out.size()), db((size_t)2 * O, (T)NAN);
    for (T &b : bias) b = (T)urand();
    for (T &g : dy) g = (T)urand();
    emu_launch(emu_dim3{(unsigned)((OHW + 255) / 256), gy, gz}, 1, 256,
               [&] { bias_fill_kernel<T>(out.data(), bias.data(), N, O, OHW); });
    double e = 0;
    for (size_t i = 0; i < out.size(); i++) e = fmax(e, isfinite((double)out[i]) ? fabs((double)out[i] - (double)bias[i / OHW % O]) : 1);
    char label[48];
    snprintf(label, sizeof label, "%s,N=%d,O=%d,OHW=%d", sizeof(T) == 4 ? "f32" : "f64", N, O, OHW);
    report("bias_fill", label, "out", e, 0);
    /* db at stride 2 (sdb), as a strided gradient view would take it */
    emu_launch((unsigned)O, 256, [&] { bias_grad_kernel<T>(db.data(), 2, dy.data(), N, O, OHW); });
    double num = 0, den = 0;
    for (int o = 0; o < O; o++) {
        double r = 0;
        for (int n = 0; n < N; n++)
            for (int p = 0; p < OHW; p++) r += (double)dy[((size_t)n * O + o) * OHW + p];
        const double d = (double)db[(size_t)2 * o] - r;
        num += isfinite(d) ? d * d : INFINITY, den += r * r;
    }
    report("bias_grad", label, "db", sqrt(num / den), sizeof(T) == 4 ? 1e-7 : 1e-14);
}

int main()
{
    const conv_case cases[] = {
        /* label         N  C  H  W KH KW sh sw pt pl pb pr dh dw */
        {"3x3,pad=1",    2, 3, 7, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
        {"stride=2,dil=2,asym_pad", 2, 2, 9, 8, 3, 2, 2, 2, 0, 1, 2, 0, 2, 2},
        {"1x1,stride=2", 3, 4, 6, 7, 1, 1, 2, 2, 0, 0, 0, 0, 1, 1},
        {"3x3,wide",     1, 2, 5, 37, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
    };
    for (const conv_case &c : cases) {
        const kgeom g = make_kgeom(c);
        /* whole images (pc % 4 decides V), then pixel tiles of one image (p0 > 0) */
        check_im2col<float, float, 1>(c, "im2col_f32", 0, c.N, 0, g.OHW);
        check_im2col<double, double, 1>(c, "im2col_f64", 0, c.N, 0, g.OHW);
        check_im2col<float, uint16_t, 1>(c, "im2col_bf16", 0, c.N, 0, g.OHW);
        const int pc = g.OHW / 4 * 4 > 8 ? g.OHW / 4 * 4 - 4 : 4, p0 = g.OHW - pc >= 4 ? 4 : 0;
        check_im2col<float, float, 4>(c, "im2col_f32", c.N - 1, 1, p0, pc);
        check_im2col<float, uint16_t, 4>(c, "im2col_bf16", c.N - 1, 1, p0, pc);
        check_im2col<float, float, 1>(c, "im2col_f32", c.N - 1, 1, p0, pc - 1);
        check_im2col<float, uint16_t, 1>(c, "im2col_bf16", c.N - 1, 1, 1, pc - 1);
        if (g.OHW % 4 == 0) {
            check_im2col<float, float, 4>(c, "im2col_f32", 0, c.N, 0, g.OHW);
            check_im2col<float, uint16_t, 4>(c, "im2col_bf16", 0, c.N, 0, g.OHW);
        }
        /* col2im: all images and channels, then a channel range of one image */
        check_col2im<float>(c, "col2im_f32", 0, c.N, 0, c.C);
        check_col2im<double>(c, "col2im_f64", 0, c.N, 0, c.C);
        if (c.C > 1) check_col2im<float>(c, "col2im_f32", c.N - 1, 1, 1, c.C - 1);
    }
    /* a 1024-element im2col run: more than one block along y */
    const conv_case big = {"3x3,64x64", 1, 1, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1};
    check_im2col<float, uint16_t, 4>(big, "im2col_bf16", 0, 1, 0, 64 * 64);
    check_im2col<float, float, 1>(big, "im2col_f32", 0, 1, 0, 64 * 64 - 3);
    /* the row-shift forward (stride_h 1): 3x3 pad 1 written straight into the output (OW = 8) and
     * through the crop (OW = 6), stride_w 2 with dilation and uneven padding, groups, a 3 x 1
     * kernel; f32, f64, bf16 partial im2col; one tile, and a tile per image */
    const conv_case rs[] = {
        {"3x3,pad=1", 2, 4, 7, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
        {"3x3,pad=1,w=8", 2, 4, 5, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
        {"sw=2,dil=2,asym_pad", 2, 2, 9, 8, 2, 3, 1, 2, 1, 0, 0, 2, 2, 2},
        {"3x1,pad=1x0", 3, 4, 9, 5, 3, 1, 1, 1, 1, 0, 1, 0, 1, 1},
    };
    check_rowshift<float, float>(rs[0], 5, 1, true, 2);
    check_rowshift<float, float>(rs[0], 6, 2, false, 1);
    check_rowshift<double, double>(rs[0], 5, 1, true, 1);
    check_rowshift<float, uint16_t>(rs[0], 5, 1, true, 2);
    check_rowshift<float, float>(rs[1], 5, 1, true, 1);
    check_rowshift<float, float>(rs[1], 4, 2, false, 2);
    check_rowshift<float, uint16_t>(rs[1], 3, 1, true, 1);
    check_rowshift<float, float>(rs[2], 3, 1, true, 1);
    check_rowshift<double, double>(rs[2], 4, 2, true, 2);
    check_rowshift<float, float>(rs[3], 4, 2, true, 2);
    check_rowshift<float, uint16_t>(rs[3], 4, 4, false, 1);
    /* the implicit-GEMM forward on tensor cores: several pixel tiles with image boundaries inside
     * them, odd and even OHW (paired or single stores), K not a multiple of the 16-deep step and
     * over 3 steps (the stage ring wraps), channels over one tile and not a multiple of it, the
     * scalar weight copies (K % 4 != 0, or misaligned w), stride / dilation / uneven padding, 1x1 stride 2 */
    const conv_case ig[] = {
        {"3x3,pad=1", 3, 8, 9, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
        {"3x3,pad=1,even", 2, 6, 8, 10, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
        {"sw=2,dil=2,asym_pad", 2, 5, 9, 8, 2, 3, 2, 1, 1, 0, 0, 2, 2, 2},
        {"1x1,stride=2", 3, 12, 6, 7, 1, 1, 2, 2, 0, 0, 0, 0, 1, 1},
    };
    check_implicit<64, IG_TF32>(ig[0], 70, true, false);
    check_implicit<64, IG_3XTF32>(ig[0], 70, true, false);
    check_implicit<128, IG_TF32>(ig[1], 130, false, false);
    check_implicit<128, IG_3XTF32>(ig[1], 20, true, true);
    check_implicit<64, IG_3XTF32>(ig[2], 33, true, false);
    check_implicit<64, IG_TF32>(ig[3], 7, false, true);
    check_implicit<128, IG_3XTF32>(ig[3], 9, true, false);
    check_implicit<64, IG_BF16>(ig[0], 70, true, false);
    check_implicit<128, IG_BF16>(ig[1], 130, false, true, 2);
    check_implicit<64, IG_BF16>(ig[2], 33, true, false);
    const conv_case deep = {"3x3,pad=1,deep", 2, 40, 12, 12, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1};   /* 23 k steps, 3 x 2 blocks */
    check_implicit<64, IG_TF32>(deep, 70, true, false);
    /* tap-major order (C % 16 == 0: a k step is one tap over 16 channels, weights permuted):
     * 18 steps (the stage ring and the tap advance wrap), split-K starting mid-tap, stride /
     * dilation / uneven padding, bf16 with the output off alignment */
    const conv_case tapc[] = {
        {"3x3,pad=1,tap", 2, 32, 9, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
        {"sw=2,dil=2,asym_pad,tap", 2, 16, 9, 8, 2, 3, 2, 1, 1, 0, 0, 2, 2, 2},
    };
    check_implicit<64, IG_TF32>(tapc[0], 70, true, false);
    check_implicit<128, IG_3XTF32>(tapc[0], 70, true, false, 4);
    check_implicit<64, IG_BF16>(tapc[0], 20, false, true);
    check_implicit<64, IG_3XTF32>(tapc[1], 33, true, false);
    /* split-K: 5 k steps in 2 and 3 parts (uneven; float4 sums), 4 steps asked for 3 splits (2
     * non-empty), odd OHW (scalar sums), more splits than steps */
    check_implicit<64, IG_3XTF32>(ig[0], 70, true, false, 2);
    check_implicit<64, IG_TF32>(ig[0], 70, true, false, 3);
    check_implicit<128, IG_3XTF32>(ig[1], 130, true, false, 3);
    check_implicit<64, IG_3XTF32>(ig[1], 20, true, true, 2);
    check_implicit<64, IG_TF32>(ig[2], 33, false, false, 9);
    /* the backward input through it (stride 1): SD's 3x3 pad 1, a "full" one (no padding: every
     * dx pixel reads a border of dy), dilation with uneven padding, a 3x2 kernel */
    const conv_case dg[] = {
        {"3x3,pad=1", 2, 70, 9, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
        {"3x3,pad=0", 3, 5, 8, 9, 3, 3, 1, 1, 0, 0, 0, 0, 1, 1},
        {"dil=2,asym_pad", 2, 6, 9, 8, 3, 2, 1, 1, 2, 0, 1, 1, 2, 2},
    };
    check_implicit_dgrad<64, IG_TF32>(dg[0], 12);
    check_implicit_dgrad<128, IG_3XTF32>(dg[0], 8);
    check_implicit_dgrad<64, IG_3XTF32>(dg[1], 6);
    check_implicit_dgrad<64, IG_TF32>(dg[2], 4);
    check_implicit_dgrad<64, IG_3XTF32>(dg[0], 12, 4);
    check_implicit_dgrad<64, IG_BF16>(dg[1], 6, 2);
    check_implicit_dgrad<64, IG_3XTF32>(dg[0], 16);   /* tap-major: O % 16 == 0 */
    check_implicit_dgrad<128, IG_TF32>(dg[2], 32, 3);
    check_implicit_dgrad<64, IG_BF16>(dg[1], 16);
    /* the halo-tile forward (3x3, stride 1, C % 8 == 0, W % 4 == 0): partial pixel tiles in both
     * directions and a partial channel block; 1, 3 (the stage ring wraps once) and 5 channel steps;
     * the halo's first column at pad_left 1, 0, 2 and 3 (its shift 3, 0, 2, 1); pad_top 0 and 2;
     * an odd output width (single stores); BM 64, 128 and 160; images past the first (N = 2) */
    const conv_case hc[] = {
        {"3x3,pad=1", 1, 16, 9, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
        {"3x3,pad=1,small", 1, 8, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
        {"3x3,pad=0", 1, 24, 7, 12, 3, 3, 1, 1, 0, 0, 0, 0, 1, 1},
        {"3x3,pad=2", 1, 40, 6, 8, 3, 3, 1, 1, 2, 2, 2, 2, 1, 1},
        {"3x3,pad_l=3,odd_ow", 2, 8, 5, 36, 3, 3, 1, 1, 1, 3, 0, 0, 1, 1},
        {"3x3,pad=1,64", 1, 24, 8, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
    };
    check_halo<64>(hc[0], 70, true, false);
    check_halo<64>(hc[1], 16, false, true);
    check_halo<128>(hc[2], 130, true, false);
    check_halo<64>(hc[3], 40, true, false);
    check_halo<160>(hc[4], 200, true, true);
    check_halo<160>(hc[5], 160, false, false);
    /* its backward input (flipped, transposed weights; dy's channels O % 8 == 0) */
    check_halo_banks();
    const conv_case hd[] = {
        {"3x3,pad=2", 1, 8, 6, 6, 3, 3, 1, 1, 2, 2, 2, 2, 1, 1},
        {"3x3,pad=0", 2, 12, 7, 10, 3, 3, 1, 1, 0, 0, 0, 0, 1, 1},
    };
    check_halo_dgrad<64>(hc[0], 16);   /* dy 9 x 40 */
    check_halo_dgrad<128>(hd[0], 24);  /* dy 8 x 8: the backward's padding 0 */
    check_halo_dgrad<64>(hd[1], 8);    /* dy 5 x 8: its padding 2 */
    /* the Winograd F(2x2, 3x3) path: odd output sizes (tiles cut at the bottom and right), pad 0,
     * 2 and uneven, images past the first, the channel loops past a capped grid, unaligned output
     * (single stores); 290 tiles in one chunk (2 blocks of tiles) and in 3 chunks of 100, 100 and
     * 90 (the smallest chunk is 128 tiles whatever the bound); exact and TF32 products */
    const conv_case wc[] = {
        {"3x3,pad=1", 2, 5, 7, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
        {"3x3,pad=0", 1, 4, 8, 6, 3, 3, 1, 1, 0, 0, 0, 0, 1, 1},
        {"3x3,pad=2", 2, 3, 5, 5, 3, 3, 1, 1, 2, 2, 2, 2, 1, 1},
        {"3x3,asym_pad", 1, 6, 6, 7, 3, 3, 1, 1, 0, 2, 1, 0, 1, 1},
        {"3x3,pad=1,290_tiles", 2, 3, 10, 58, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
        {"3x3,pad=1,c32", 1, 32, 12, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
    };
    check_wino(wc[0], 7, true, false, 64 << 20, false);
    check_wino(wc[0], 7, true, true, 64 << 20, true, 2);
    check_wino(wc[1], 3, false, false, 64 << 20, false, 3);
    check_wino(wc[2], 4, true, true, 64 << 20, false);
    check_wino(wc[3], 5, true, false, 64 << 20, true);
    check_wino(wc[4], 4, true, false, 64 << 20, false);
    check_wino(wc[4], 4, false, false, 1, true);
    check_wino(wc[5], 40, true, false, 64 << 20, true);
    check_wino_dgrad(wc[0], 6, false);
    check_wino_dgrad(wc[2], 5, true);   /* the backward's padding 0 */
    check_wino_dgrad(wc[1], 4, false);  /* its padding 2 */
    check_wino_dgrad(wc[3], 8, true);   /* uneven: 2 - pad on each side */
    /* bf16 products (DRAFT_CONV_AUTOCAST_WINO): the forward against f64 and a direct bf16
     * convolution, at 5, 32 and 320 input channels (SD's: the longest sums), and a backward input */
    check_wino(wc[0], 7, true, false, 64 << 20, WR_BF16);
    check_wino(wc[5], 40, true, false, 64 << 20, WR_BF16);
    const conv_case sd = {"3x3,pad=1,c320", 1, 320, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1};
    check_wino(sd, 16, true, false, 64 << 20, WR_BF16);
    check_wino(sd, 16, true, false, 64 << 20, WR_TF32);
    check_wino_dgrad(wc[3], 8, WR_BF16);
    /* packing: one shared matrix, a batch with padding between rows and matrices, grids that wrap */
    check_pack<4>(1, 5, 12, 12, 0, 1, 2);
    check_pack<4>(3, 4, 1032, 1040, 4 * 1040 + 8, 1, 2);
    check_pack<1>(2, 3, 7, 9, 31, 1, 4);
    check_pack<1>(1, 2, 600, 601, 0, 2, 1);
    /* bias: planes past one block (and not a multiple of it), channels and images looped by a small grid */
    check_bias<float>(3, 5, 300, 5, 3);
    check_bias<float>(3, 5, 300, 2, 1);
    check_bias<double>(2, 4, 1000, 4, 2);
    check_bias<double>(1, 3, 17, 1, 1);
    printf("%d failed\n", failures);
    return failures ? 1 : 0;
}
