/* test_reward.c — DRaFT rewards: every analytic reward against an independent float64 loop
 * and a central-difference gradcheck; the LAION head against the reference (golden); the whole
 * aesthetic and CLIP-similarity chains on the tiny towers against a float64 re-computation with
 * their own resize code, plus gradchecks w.r.t. image pixels; spec parsing and its errors. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diffusion/blip.h"
#include "diffusion/owlvit.h"
#include "diffusion/wordpiece.h"
#include "draft/reward.h"
#include "nn/pickle.h"
#include "tests/torch_save.h"
#include "tests/harness.h"
#include "tests/parity.h"

/* ---------------------------------------------------------------- float64 references */

static double px(const struct tensor *img, int64_t b, int c, int64_t y, int64_t x)   /* [0,1], clamped */
{
    double v = tensor_get(img, (int64_t[]){b, c, y, x}) * 0.5 + 0.5;
    return v < 0 ? 0 : v > 1 ? 1 : v;
}

static double ref_analytic(const char *spec, const struct tensor *img, int64_t b)
{
    const int64_t H = img->shape[2], W = img->shape[3];
    const double n = (double)(H * W);
    double s1[3] = {0}, s2[3] = {0};   /* sums and sums of squares of Y, rg, yb */
    double red = 0;
    for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < W; x++) {
            double R = px(img, b, 0, y, x), G = px(img, b, 1, y, x), B = px(img, b, 2, y, x);
            double v[3] = {0.299 * R + 0.587 * G + 0.114 * B, R - G, 0.5 * (R + G) - B};
            for (int k = 0; k < 3; k++) s1[k] += v[k], s2[k] += v[k] * v[k];
            red += R - 0.5 * (G + B);
        }
    double mean[3], var[3];
    for (int k = 0; k < 3; k++) mean[k] = s1[k] / n, var[k] = s2[k] / n - mean[k] * mean[k];
    if (!strcmp(spec, "colorfulness"))
        return sqrt(var[1] + var[2]) + 0.3 * sqrt(mean[1] * mean[1] + mean[2] * mean[2]);
    if (!strncmp(spec, "brightness=", 11)) return -pow(mean[0] - atof(spec + 11), 2);
    if (!strncmp(spec, "contrast=", 9)) return -pow(sqrt(var[0]) - atof(spec + 9), 2);
    if (!strcmp(spec, "red")) return red / n;
    /* jpeg: T.81 A.3.3 FDCT per 8x8 block of level-shifted JFIF YCbCr, over the Annex K tables */
    static const int ql[64] = {16, 11, 10, 16, 24,  40,  51,  61,  12, 12, 14, 19, 26,  58,  60,  55,
                               14, 13, 16, 24, 40,  57,  69,  56,  14, 17, 22, 29, 51,  87,  80,  62,
                               18, 22, 37, 56, 68,  109, 103, 77,  24, 35, 55, 64, 81,  104, 113, 92,
                               49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99};
    static const int qc[8] = {17, 18, 24, 47, 99, 99, 99, 99};   /* first row; see below */
    const int qc_rows[4][8] = {{17, 18, 24, 47, 99, 99, 99, 99}, {18, 21, 26, 66, 99, 99, 99, 99},
                               {24, 26, 56, 99, 99, 99, 99, 99}, {47, 66, 99, 99, 99, 99, 99, 99}};
    (void)qc;
    double total = 0;
    int64_t count = 0;
    for (int c = 0; c < 3; c++)
        for (int64_t by = 0; by + 8 <= H; by += 8)
            for (int64_t bx = 0; bx + 8 <= W; bx += 8) {
                double f[8][8];
                for (int y = 0; y < 8; y++)
                    for (int x = 0; x < 8; x++) {
                        double R = 255 * px(img, b, 0, by + y, bx + x), G = 255 * px(img, b, 1, by + y, bx + x),
                               B = 255 * px(img, b, 2, by + y, bx + x);
                        f[y][x] = c == 0 ? 0.299 * R + 0.587 * G + 0.114 * B - 128
                                  : c == 1 ? -0.168736 * R - 0.331264 * G + 0.5 * B
                                           : 0.5 * R - 0.418688 * G - 0.081312 * B;
                    }
                for (int v = 0; v < 8; v++)
                    for (int u = 0; u < 8; u++) {
                        double F = 0;
                        for (int y = 0; y < 8; y++)
                            for (int x = 0; x < 8; x++)
                                F += f[y][x] * cos((2 * x + 1) * u * M_PI / 16) * cos((2 * y + 1) * v * M_PI / 16);
                        F *= 0.25 * (u ? 1 : M_SQRT1_2) * (v ? 1 : M_SQRT1_2);
                        double q = c == 0 ? ql[v * 8 + u] : (v < 4 ? qc_rows[v][u] : 99);
                        double z = F / q;
                        total += sqrt(z * z + 1e-4) - 0.01;
                        count++;
                    }
            }
    return -total / (double)count;
}

static const char *const analytic_specs[] = {"colorfulness", "brightness=0.6", "contrast=0.3", "jpeg", "red"};
#define N_ANALYTIC 5

/* ---------------------------------------------------------------- analytic rewards */

START_TEST(test_analytic_forward)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    /* 20 x 27: jpeg crops to 16 x 24; a few pixels beyond [-1, 1] exercise the clamp */
    struct tensor *img = test_uniform(DTYPE_F64, 4, (int64_t[]){3, 3, 20, 27}, -1.1, 1.1);
    for (int i = 0; i < N_ANALYTIC; i++) {
        struct draft_reward *r = draft_reward_create(analytic_specs[i]);
        ck_assert_msg(r != NULL, "%s", tensor_error());
        struct tensor *s = draft_reward_score(r, img, NULL);
        ck_assert_msg(s != NULL, "%s: %s", analytic_specs[i], tensor_error());
        ck_assert_int_eq(s->ndim, 1);
        ck_assert_int_eq(s->shape[0], 3);
        ck_assert_int_eq(s->dtype, DTYPE_F64);
        double worst = 0;
        for (int64_t b = 0; b < 3; b++) {
            double ref = ref_analytic(analytic_specs[i], img, b), got = tensor_get_flat(s, b);
            worst = fmax(worst, fabs(got - ref) / fmax(1e-3, fabs(ref)));
        }
        /* f32 images give f32 scores close to the f64 ones */
        struct tensor *s32 = draft_reward_score(r, tensor_to_dtype(img, DTYPE_F32), NULL);
        ck_assert_msg(s32 && s32->dtype == DTYPE_F32, "%s", tensor_error());
        double rel32 = test_rel_err(s32, s);
        printf("analytic %-14s vs float64 loop: worst rel %.2e; f32 rel %.2e; scores %.4f %.4f %.4f\n",
               analytic_specs[i], worst, rel32, tensor_get_flat(s, 0), tensor_get_flat(s, 1), tensor_get_flat(s, 2));
        ck_assert_msg(worst < 1e-9, "%s differs from the float64 reference (%g)", analytic_specs[i], worst);
        ck_assert_msg(rel32 < 1e-4, "%s: f32 path off by %g", analytic_specs[i], rel32);
        draft_reward_free(r);
    }
    /* orderings the rewards exist for: a flat grey image compresses better than noise and is less colourful */
    struct tensor *flat = tensor_full(DTYPE_F64, 4, (int64_t[]){1, 3, 16, 16}, 0.1, DEVICE_CPU);
    struct tensor *noise = test_uniform(DTYPE_F64, 4, (int64_t[]){1, 3, 16, 16}, -1, 1);
    struct draft_reward *j = draft_reward_create("jpeg"), *c = draft_reward_create("colorfulness");
    ck_assert(j && c);
    ck_assert(tensor_get_flat(draft_reward_score(j, flat, NULL), 0) > tensor_get_flat(draft_reward_score(j, noise, NULL), 0));
    ck_assert(tensor_get_flat(draft_reward_score(c, flat, NULL), 0) < tensor_get_flat(draft_reward_score(c, noise, NULL), 0));
    draft_reward_free(j);
    draft_reward_free(c);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

static struct tensor *score_fn(struct tensor *const *in, void *ctx)
{
    return draft_reward_score(ctx, in[0], NULL);
}

START_TEST(test_analytic_gradcheck)
{
    LEAK_CHECK_BEGIN();
    for (int i = 0; i < N_ANALYTIC; i++) {
        tensor_scope_begin();
        /* inside (-1, 1): the clamp's kink is not differentiable; 9 x 17 makes jpeg crop */
        struct tensor *img = test_uniform(DTYPE_F64, 4, (int64_t[]){2, 3, 9, 17}, -0.95, 0.95);
        struct draft_reward *r = draft_reward_create(analytic_specs[i]);
        ck_assert(r);
        char label[64];
        snprintf(label, sizeof label, "reward %s", analytic_specs[i]);
        bool ok = gradcheck(label, score_fn, r, 1, &img, &(struct gc_opts){.tol = 1e-6});
        draft_reward_free(r);
        ck_assert_msg(ok, "%s gradient", analytic_specs[i]);
        tensor_scope_end();
    }
    LEAK_CHECK_END();
}
END_TEST

/* sum: is the weighted sum of its terms, scores and gradients */
START_TEST(test_sum)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *img = test_uniform(DTYPE_F64, 4, (int64_t[]){2, 3, 16, 16}, -0.95, 0.95);
    struct draft_reward *r = draft_reward_create("sum:colorfulness;0.5*brightness=0.6;-2*red;jpeg");
    ck_assert_msg(r, "%s", tensor_error());
    static const char *const terms[4] = {"colorfulness", "brightness=0.6", "red", "jpeg"};
    static const double w[4] = {1, 0.5, -2, 1};
    struct draft_reward_term info[DRAFT_REWARD_MAX_TERMS];
    ck_assert_int_eq(draft_reward_terms(r, info), 4);
    static const char *const names[4] = {"colorfulness", "brightness", "red", "jpeg"};
    for (int k = 0; k < 4; k++)
        ck_assert_msg(!strcmp(info[k].name, names[k]) && !strcmp(info[k].spec, terms[k]) && info[k].weight == w[k],
                      "term %d: %s %s %g", k, info[k].name, info[k].spec, info[k].weight);
    double means[DRAFT_REWARD_MAX_TERMS];
    ck_assert_int_eq(draft_reward_terms_take(r, means), 4);
    for (int k = 0; k < 4; k++) ck_assert_msg(isnan(means[k]), "term %d before any score: %g", k, means[k]);
    struct tensor *s = draft_reward_score(r, img, NULL);
    ck_assert_msg(s, "%s", tensor_error());
    /* a second batch of 3: the terms' means run over all 5 images */
    struct tensor *img3 = test_uniform(DTYPE_F64, 4, (int64_t[]){3, 3, 16, 16}, -0.95, 0.95);
    ck_assert_msg(draft_reward_score(r, img3, NULL), "%s", tensor_error());
    /* each term alone is checked against its float64 loop in test_analytic_forward */
    double want[2] = {0, 0}, term_mean[4] = {0};
    for (int k = 0; k < 4; k++) {
        struct draft_reward *t = draft_reward_create(terms[k]);
        struct tensor *st = t ? draft_reward_score(t, img, NULL) : NULL, *st3 = t ? draft_reward_score(t, img3, NULL) : NULL;
        ck_assert_msg(st && st3, "%s", tensor_error());
        for (int64_t b = 0; b < 2; b++) want[b] += w[k] * tensor_get_flat(st, b);
        for (int64_t b = 0; b < 5; b++) term_mean[k] += (b < 2 ? tensor_get_flat(st, b) : tensor_get_flat(st3, b - 2)) / 5;
        draft_reward_free(t);
    }
    for (int64_t b = 0; b < 2; b++)
        ck_assert_msg(fabs(tensor_get_flat(s, b) - want[b]) <= 1e-14, "sum image %lld: %.17g vs %.17g", (long long)b,
                      tensor_get_flat(s, b), want[b]);
    ck_assert_int_eq(draft_reward_terms_take(r, means), 4);
    for (int k = 0; k < 4; k++)
        ck_assert_msg(fabs(means[k] - term_mean[k]) <= 1e-14 * (1 + fabs(term_mean[k])), "term %d mean %.17g vs %.17g", k,
                      means[k], term_mean[k]);
    ck_assert_int_eq(draft_reward_terms_take(r, means), 4);   /* the take started over */
    ck_assert(isnan(means[0]) && isnan(means[3]));
    struct draft_reward *plain = draft_reward_create("red");
    ck_assert_msg(plain && draft_reward_terms(plain, info) == 0 && draft_reward_terms_take(plain, means) == 0,
                  "a reward that is not a sum has no terms");
    draft_reward_free(plain);
    ck_assert(gradcheck("reward sum", score_fn, r, 1, &img, &(struct gc_opts){.tol = 1e-6}));
    draft_reward_free(r);
    static const struct { const char *spec, *want; } bad[] = {
        {"sum:", "no terms"},
        {"sum:red;bogus", "term 'bogus'"},
        {"sum:red;sum:jpeg", "a sum inside a sum"},
        {"sum:red;red;red;red;red;red;red;red;red", "more than 8 terms"},
        {"sum:x*red", "term 'x*red'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(draft_reward_create(bad[i].spec) == NULL, "'%s' accepted", bad[i].spec);
        ck_assert_msg(strstr(tensor_error(), bad[i].want), "'%s': '%s' lacks '%s'", bad[i].spec, tensor_error(),
                      bad[i].want);
    }
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- preprocessing */

/* PIL ImagingResample's coefficients, written again from libImaging/Resample.c */
static double ref_pil_weight(int64_t in, int64_t out, int64_t i, int64_t j)
{
    double scale = (double)in / out, fs = scale > 1 ? scale : 1, center = (i + 0.5) * scale, sum = 0, wj = 0;
    int64_t lo = (int64_t)(center - 2 * fs + 0.5), hi = (int64_t)(center + 2 * fs + 0.5);
    if (lo < 0) lo = 0;
    if (hi > in) hi = in;
    for (int64_t k = lo; k < hi; k++) {
        double x = fabs((k - center + 0.5) / fs);
        double w = x < 1 ? (1.5 * x - 2.5) * x * x + 1 : x < 2 ? -0.5 * (((x - 5) * x + 8) * x - 4) : 0;
        sum += w;
        if (k == j) wj = w;
    }
    return wj / sum;
}

/* CLIP pixel values of image b as the reference pipeline computes them (float, no uint8) */
static void ref_preprocess(const struct tensor *img, int64_t b, int64_t S, double *out /* [3][S][S] */)
{
    const int64_t H = img->shape[2], W = img->shape[3];
    int64_t nh = H <= W ? S : S * H / W, nw = H <= W ? S * W / H : S;
    int64_t top = (int64_t)nearbyint((nh - S) / 2.0), left = (int64_t)nearbyint((nw - S) / 2.0);   /* ties to even */
    static const double mean[3] = {0.48145466, 0.4578275, 0.40821073}, sd[3] = {0.26862954, 0.26130258, 0.27577711};
    for (int c = 0; c < 3; c++)
        for (int64_t i = 0; i < S; i++)
            for (int64_t j = 0; j < S; j++) {
                double v = 0;
                for (int64_t y = 0; y < H; y++) {
                    double wy = ref_pil_weight(H, nh, top + i, y);
                    if (wy == 0) continue;
                    for (int64_t x = 0; x < W; x++) v += wy * ref_pil_weight(W, nw, left + j, x) * px(img, b, c, y, x);
                }
                out[(c * S + i) * S + j] = (v - mean[c]) / sd[c];
            }
}

/* scipy.ndimage's 'mirror' boundary, written again: reflect about the edge pixels' centres */
static int64_t ref_mirror(int64_t i, int64_t n)
{
    if (n == 1) return 0;
    while (i < 0 || i >= n) i = i < 0 ? -i : 2 * (n - 1) - i;
    return i;
}

/* OWLv2's pixel values of image b: padded to a square with 0.5 (bottom, right), a Gaussian of
 * sigma (n / S - 1) / 2 along each axis when shrinking (cut at 4 sigma), bilinear sampling at
 * (o + 0.5) n / S - 0.5, both with mirrored edges; CLIP mean/std */
static void ref_owlv2(const struct tensor *img, int64_t b, int64_t S, double *out /* [3][S][S] */)
{
    const int64_t H = img->shape[2], W = img->shape[3], n = H > W ? H : W;
    const double f = (double)n / S, sg = f > 1 ? (f - 1) / 2 : 0;
    const int64_t r = (int64_t)(4 * sg + 0.5);
    static const double mean[3] = {0.48145466, 0.4578275, 0.40821073}, sd[3] = {0.26862954, 0.26130258, 0.27577711};
    double *p = malloc(sizeof(double) * (size_t)(n * n)), *q = malloc(sizeof(double) * (size_t)(n * n));
    for (int c = 0; c < 3; c++) {
        for (int64_t y = 0; y < n; y++)
            for (int64_t x = 0; x < n; x++) p[y * n + x] = y < H && x < W ? px(img, b, c, y, x) : 0.5;
        for (int pass = 0; pass < 2 && sg > 0; pass++) {   /* rows, then columns */
            for (int64_t y = 0; y < n; y++)
                for (int64_t x = 0; x < n; x++) {
                    double acc = 0, z = 0;
                    for (int64_t k = -r; k <= r; k++) {
                        const double w = exp(-0.5 * (double)(k * k) / (sg * sg));
                        z += w;
                        acc += w * (pass ? p[y * n + ref_mirror(x + k, n)] : p[ref_mirror(y + k, n) * n + x]);
                    }
                    q[y * n + x] = acc / z;
                }
            memcpy(p, q, sizeof(double) * (size_t)(n * n));
        }
        for (int64_t i = 0; i < S; i++)
            for (int64_t j = 0; j < S; j++) {
                const double cy = (i + 0.5) * f - 0.5, cx = (j + 0.5) * f - 0.5, fy = floor(cy), fx = floor(cx);
                const double ty = cy - fy, tx = cx - fx;
                const int64_t y0 = ref_mirror((int64_t)fy, n), y1 = ref_mirror((int64_t)fy + 1, n);
                const int64_t x0 = ref_mirror((int64_t)fx, n), x1 = ref_mirror((int64_t)fx + 1, n);
                const double v = (1 - ty) * ((1 - tx) * p[y0 * n + x0] + tx * p[y0 * n + x1]) +
                                 ty * ((1 - tx) * p[y1 * n + x0] + tx * p[y1 * n + x1]);
                out[(c * S + i) * S + j] = (v - mean[c]) / sd[c];
            }
    }
    free(p);
    free(q);
}

static struct tensor *preprocess_fn(struct tensor *const *in, void *ctx)
{
    return draft_clip_preprocess(in[0], *(int64_t *)ctx);
}

static struct tensor *owlv2_fn(struct tensor *const *in, void *ctx)
{
    return draft_owlv2_preprocess(in[0], *(int64_t *)ctx);
}

START_TEST(test_preprocess)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    /* identity at equal sizes; rows sum to one; antialiased downscale */
    struct tensor *I = draft_pil_bicubic_matrix(7, 7);
    for (int64_t i = 0; i < 7; i++)
        for (int64_t j = 0; j < 7; j++) ck_assert_double_eq(tensor_get(I, (int64_t[]){i, j}), i == j);
    struct tensor *M = draft_pil_bicubic_matrix(50, 11);
    int nonzero = 0;
    for (int64_t i = 0; i < 11; i++) {
        double s = 0;
        for (int64_t j = 0; j < 50; j++) s += tensor_get(M, (int64_t[]){i, j}), nonzero += tensor_get(M, (int64_t[]){i, j}) != 0;
        ck_assert_double_eq_tol(s, 1, 1e-12);
    }
    ck_assert_int_gt(nonzero, 11 * 12);   /* support 2 * 50/11 on each side: ~18 taps, not 4 */
    /* against the reference loops: landscape, portrait, square-up */
    const int64_t shapes[3][2] = {{13, 20}, {21, 12}, {5, 5}};
    const int64_t S = 8;
    for (int k = 0; k < 3; k++) {
        struct tensor *img = test_uniform(DTYPE_F64, 4, (int64_t[]){2, 3, shapes[k][0], shapes[k][1]}, -1.05, 1.05);
        struct tensor *p = draft_clip_preprocess(img, S);
        ck_assert_msg(p != NULL, "%s", tensor_error());
        ck_assert(p->shape[2] == S && p->shape[3] == S);
        double ref[3 * 8 * 8], err = 0, nrm = 0;
        for (int64_t b = 0; b < 2; b++) {
            ref_preprocess(img, b, S, ref);
            for (int64_t e = 0; e < 3 * S * S; e++) {
                double g = tensor_get_flat(p, b * 3 * S * S + e);
                err = fmax(err, fabs(g - ref[e]));
                nrm = fmax(nrm, fabs(ref[e]));
            }
        }
        printf("preprocess %lldx%lld -> %lld: max abs err %.2e (max |ref| %.2f)\n", (long long)shapes[k][0],
               (long long)shapes[k][1], (long long)S, err, nrm);
        ck_assert_double_lt(err, 1e-12);
    }
    struct tensor *img = test_uniform(DTYPE_F64, 4, (int64_t[]){1, 3, 7, 10}, -0.95, 0.95);
    int64_t s4 = 4;
    ck_assert(gradcheck("clip preprocess 7x10->4", preprocess_fn, &s4, 1, &img, NULL));
    /* OWLv2's: padded, shrunk with a Gaussian or grown, mirrored edges; an 8 x 8 image unchanged */
    const int64_t v2shapes[5][2] = {{13, 20}, {21, 12}, {5, 5}, {8, 8}, {1, 3}};
    for (int k = 0; k < 5; k++) {
        struct tensor *im = test_uniform(DTYPE_F64, 4, (int64_t[]){2, 3, v2shapes[k][0], v2shapes[k][1]}, -1.05, 1.05);
        struct tensor *p = draft_owlv2_preprocess(im, S);
        ck_assert_msg(p && p->shape[2] == S && p->shape[3] == S, "%s", tensor_error());
        double ref[3 * 8 * 8], err = 0;
        for (int64_t b = 0; b < 2; b++) {
            ref_owlv2(im, b, S, ref);
            for (int64_t e = 0; e < 3 * S * S; e++) err = fmax(err, fabs(tensor_get_flat(p, b * 3 * S * S + e) - ref[e]));
        }
        printf("owlv2 preprocess %lldx%lld -> %lld: max abs err %.2e\n", (long long)v2shapes[k][0],
               (long long)v2shapes[k][1], (long long)S, err);
        ck_assert_double_lt(err, 1e-12);
    }
    struct tensor *im2 = test_uniform(DTYPE_F64, 4, (int64_t[]){1, 3, 11, 6}, -0.95, 0.95);
    ck_assert(gradcheck("owlv2 preprocess 11x6->4", owlv2_fn, &s4, 1, &im2, NULL));
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- aesthetic head (golden) */

START_TEST(test_head_parity)
{
    char hp[512], gp[512];
    if (!parity_path("aesthetic/sac+logos+ava1-l14-linearMSE.pth", hp, sizeof hp) ||
        !parity_path("golden/aesthetic.safetensors", gp, sizeof gp))
        return;
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct draft_aesthetic_head *h = draft_aesthetic_head_load(hp, DTYPE_F32, DEVICE_CPU);
    ck_assert_msg(h != NULL, "%s", tensor_error());
    ck_assert_int_eq(draft_aesthetic_head_dim(h), 768);
    struct safetensors *gold = safetensors_open(gp);
    ck_assert_msg(gold != NULL, "%s", tensor_error());
    struct tensor *e = parity_load(gold, "embeds_normalized");
    ck_assert_int_eq(ag_set_requires_grad(e, true), STATUS_OK);
    struct tensor *s = draft_aesthetic_head_forward(h, e);
    ck_assert_msg(s != NULL, "%s", tensor_error());
    ck_assert(parity_check("aesthetic.score", s, parity_load(gold, "score"), PARITY_RTOL_FWD, parity_rms(gold, "score")));
    ck_assert_int_eq(ag_backward(ag_sum(s, 0, NULL, false), NULL, false), STATUS_OK);
    ck_assert(parity_check("aesthetic.grad.embeds_normalized", e->grad, parity_load(gold, "grad.embeds_normalized"),
                           PARITY_RTOL_GRAD, parity_rms(gold, "grad.")));
    printf("aesthetic scores: %.4f %.4f %.4f %.4f\n", tensor_get_flat(s, 0), tensor_get_flat(s, 1),
           tensor_get_flat(s, 2), tensor_get_flat(s, 3));
    /* the same head as .safetensors gives the same numbers */
    struct torch_file *tf = torch_file_open(hp);
    ck_assert(tf);
    const char *names[10];
    struct tensor *ts[10];
    char buf[10][32];
    for (int i = 0; i < 10; i++) {
        snprintf(buf[i], sizeof buf[i], "layers.%d.%s", (int[]){0, 2, 4, 6, 7}[i / 2], i % 2 ? "bias" : "weight");
        names[i] = buf[i];
        ts[i] = torch_file_load(tf, names[i], DTYPE_F32);
        ck_assert(ts[i]);
    }
    torch_file_close(tf);
    char sp[] = "/tmp/test_reward_head_XXXXXX";
    int fd = mkstemp(sp);
    ck_assert(fd >= 0);
    close(fd);
    ck_assert_int_eq(safetensors_save(sp, 10, names, ts, 0, NULL, NULL), STATUS_OK);
    struct draft_aesthetic_head *h2 = draft_aesthetic_head_load(sp, DTYPE_F32, DEVICE_CPU);
    ck_assert_msg(h2 != NULL, "%s", tensor_error());
    ag_no_grad_begin();
    ck_assert_double_eq(test_max_abs_diff(draft_aesthetic_head_forward(h2, e), s), 0);
    ag_no_grad_end();
    /* a head whose last layer is not one output is refused with the shapes */
    ts[8] = tensor_zeros(DTYPE_F32, 2, (int64_t[]){2, 16}, DEVICE_CPU);
    ck_assert_int_eq(safetensors_save(sp, 10, names, ts, 0, NULL, NULL), STATUS_OK);
    ck_assert(draft_aesthetic_head_load(sp, DTYPE_F32, DEVICE_CPU) == NULL);
    printf("bad head: %s\n", tensor_error());
    ck_assert(strstr(tensor_error(), "layers.7.weight") && strstr(tensor_error(), "[1, 16]"));
    unlink(sp);
    ag_zero_grad(e);
    draft_aesthetic_head_free(h);
    draft_aesthetic_head_free(h2);
    safetensors_close(gold);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- tiny towers */

struct tiny {
    char dir[512];   /* tiny-sd */
    struct nn_params ps;   /* f64: text + vision towers */
    struct clip_text_model tm;
    struct clip_vision_model vm;
};

static bool tiny_load(struct tiny *t)
{
    char p[600], q[600];
    if (!parity_path("tiny-sd/image_encoder/model.safetensors", p, sizeof p) ||
        !parity_path("tiny-sd/text_encoder/model.safetensors", q, sizeof q) ||
        !parity_path("tiny-sd/tokenizer/vocab.json", t->dir, sizeof t->dir))
        return false;
    *strstr(t->dir, "/tokenizer/vocab.json") = 0;
    nn_params_init(&t->ps, DTYPE_F64, DEVICE_CPU);
    struct clip_vision_config vc;
    struct clip_text_config tc;
    snprintf(p, sizeof p, "%s/image_encoder/config.json", t->dir);
    snprintf(q, sizeof q, "%s/text_encoder/config.json", t->dir);
    ck_assert_msg(!clip_vision_config_load(&vc, p) && !clip_text_config_load(&tc, q), "%s", tensor_error());
    ck_assert(!clip_vision_init(&t->vm, &vc, &t->ps, "") && !clip_text_init(&t->tm, &tc, &t->ps, ""));
    for (int k = 0; k < 2; k++) {
        snprintf(p, sizeof p, "%s/%s/model.safetensors", t->dir, k ? "text_encoder" : "image_encoder");
        struct safetensors *st = safetensors_open(p);
        ck_assert(st);
        int loaded = 0;   /* each file holds one tower: load what it has */
        for (int i = 0; i < t->ps.n; i++)
            if (safetensors_find(st, t->ps.v[i].name)) {
                ck_assert_msg(!safetensors_load_into(st, t->ps.v[i].name, t->ps.v[i].t), "%s", tensor_error());
                loaded++;
            }
        ck_assert_int_gt(loaded, 10);
        safetensors_close(st);
    }
    return true;
}

static void tiny_free(struct tiny *t)
{
    clip_text_free(&t->tm);
    clip_vision_free(&t->vm);
    nn_params_free(&t->ps);
}

/* normalised image embeddings [B, P] in f64, from the reference preprocessing and the f64 tower */
static struct tensor *ref_image_embeds(struct tiny *t, const struct tensor *img)
{
    const int64_t B = img->shape[0], S = t->vm.cfg.image_size;
    double *buf = calloc((size_t)(B * 3 * S * S), sizeof *buf);
    for (int64_t b = 0; b < B; b++) ref_preprocess(img, b, S, buf + b * 3 * S * S);
    struct tensor *pv = tensor_from_data(DTYPE_F64, 4, (int64_t[]){B, 3, S, S}, buf);
    free(buf);
    ag_no_grad_begin();
    struct tensor *e = clip_vision_forward(&t->vm, pv);
    ag_no_grad_end();
    ck_assert(e);
    const int64_t P = e->shape[1];
    for (int64_t b = 0; b < B; b++) {
        double n = 0;
        for (int64_t k = 0; k < P; k++) n += pow(tensor_get_flat(e, b * P + k), 2);
        for (int64_t k = 0; k < P; k++) tensor_set_flat(e, b * P + k, tensor_get_flat(e, b * P + k) / sqrt(n));
    }
    return e;
}

/* a random head 16 -> 12 -> 8 -> 6 -> 4 -> 1 written as .safetensors (the .pth path is
 * covered by the real LAION file in test_head_parity) */
static void write_head(const char *st_path, struct tensor **ts)
{
    static const int64_t dims[6] = {16, 12, 8, 6, 4, 1};
    static char buf[10][32];
    const char *names[10];
    for (int i = 0; i < 10; i++) {
        snprintf(buf[i], sizeof buf[i], "layers.%d.%s", (int[]){0, 2, 4, 6, 7}[i / 2], i % 2 ? "bias" : "weight");
        names[i] = buf[i];
        int l = i / 2;
        ts[i] = i % 2 ? test_uniform(DTYPE_F64, 1, (int64_t[]){dims[l + 1]}, -0.5, 0.5)
                      : test_uniform(DTYPE_F64, 2, (int64_t[]){dims[l + 1], dims[l]}, -0.5, 0.5);
    }
    ck_assert_int_eq(safetensors_save(st_path, 10, names, ts, 0, NULL, NULL), STATUS_OK);
}

static double ref_head(struct tensor *const *ts, const double *e)
{
    double x[16], y[16];
    int64_t in = 16;
    memcpy(x, e, sizeof(double) * 16);
    for (int l = 0; l < 5; l++) {
        int64_t out = ts[2 * l]->shape[0];
        for (int64_t o = 0; o < out; o++) {
            y[o] = tensor_get_flat(ts[2 * l + 1], o);
            for (int64_t i = 0; i < in; i++) y[o] += tensor_get(ts[2 * l], (int64_t[]){o, i}) * x[i];
        }
        memcpy(x, y, sizeof(double) * (size_t)out);
        in = out;
    }
    return x[0];
}

/* a few pixels of a fixed image as the only inputs: image = base + onehot @ p */
struct pixel_ctx {
    struct draft_reward *r;
    struct tensor *base, *onehot;   /* [N, 1] per pixel, onehot [numel, k] */
    const char *const *prompts;
};

static struct tensor *pixel_fn(struct tensor *const *in, void *vctx)
{
    struct pixel_ctx *c = vctx;
    struct tensor *d = ag_reshape(ag_matmul(c->onehot, ag_reshape(in[0], 2, (int64_t[]){in[0]->shape[0], 1})),
                                  c->base->ndim, c->base->shape);
    return draft_reward_score(c->r, ag_add(c->base, d), c->prompts);
}

static struct tensor *pixel_setup(struct pixel_ctx *c, struct tensor *base, int k)
{
    const int64_t n = tensor_numel(base);
    c->base = base;
    c->onehot = tensor_zeros(DTYPE_F64, 2, (int64_t[]){n, k}, DEVICE_CPU);
    struct tensor *p = tensor_zeros(DTYPE_F64, 1, (int64_t[]){k}, DEVICE_CPU);
    for (int i = 0; i < k; i++) {
        int64_t at = (int64_t)((i * 7919 + 13) % n);   /* spread over channels, rows and images */
        tensor_set_flat(c->onehot, at * k + i, 1);
        tensor_set_flat(p, i, tensor_get_flat(base, at));
        tensor_set_flat(base, at, 0);
    }
    return p;
}

START_TEST(test_aesthetic_tiny)
{
    LEAK_CHECK_BEGIN();
    char sp[] = "/tmp/test_reward_ahead_XXXXXX", enc[600];
    int f1 = mkstemp(sp);
    ck_assert(f1 >= 0);
    close(f1);
    tensor_scope_begin();
    struct tensor *ts[10];
    write_head(sp, ts);
    struct tiny t;
    if (!tiny_load(&t)) {
        tensor_scope_end();
        unlink(sp);
        return;
    }
    snprintf(enc, sizeof enc, "%s/image_encoder", t.dir);
    char spec[1400];
    snprintf(spec, sizeof spec, "aesthetic:%s,%s", enc, sp);
    struct draft_reward *r32 = draft_reward_create(spec);
    ck_assert_msg(r32 != NULL, "%s", tensor_error());
    struct draft_reward *r64 = draft_reward_create_on(spec, DTYPE_F64, DEVICE_CPU);
    ck_assert_msg(r64, "%s", tensor_error());

    /* 40 x 52 -> resize to 32 x 41, centre crop 32 x 32 */
    struct tensor *img = test_uniform(DTYPE_F64, 4, (int64_t[]){2, 3, 40, 52}, -1, 1);
    struct tensor *e = ref_image_embeds(&t, img);
    struct tensor *s32 = draft_reward_score(r32, tensor_to_dtype(img, DTYPE_F32), NULL);
    struct tensor *s64 = draft_reward_score(r64, img, NULL);
    ck_assert_msg(s32 && s64, "%s", tensor_error());
    ck_assert_int_eq(s32->dtype, DTYPE_F32);
    ck_assert_int_eq(s64->dtype, DTYPE_F64);
    /* its CLIP image embeddings, which draft-run's --diversity-model reads: the reference's */
    struct tensor *emb = draft_reward_image_embeds(r64, img);
    ck_assert_msg(emb && tensor_numel(emb) == tensor_numel(e), "%s", tensor_error());
    for (int64_t k = 0; k < tensor_numel(e); k++)
        ck_assert_msg(fabs(tensor_get_flat(emb, k) - tensor_get_flat(e, k)) < 1e-12, "aesthetic embed %lld", (long long)k);
    double err64 = 0, err32 = 0;
    for (int64_t b = 0; b < 2; b++) {
        double eb[16];
        for (int k = 0; k < 16; k++) eb[k] = tensor_get_flat(e, b * 16 + k);
        double ref = ref_head(ts, eb);
        err64 = fmax(err64, fabs(tensor_get_flat(s64, b) - ref) / fmax(1, fabs(ref)));
        err32 = fmax(err32, fabs(tensor_get_flat(s32, b) - ref) / fmax(1, fabs(ref)));
        printf("aesthetic tiny image %lld: ref %.8f f64 %.8f f32 %.8f\n", (long long)b, ref, tensor_get_flat(s64, b),
               tensor_get_flat(s32, b));
    }
    printf("aesthetic tiny vs float64 re-computation: f64 rel %.2e, f32 rel %.2e\n", err64, err32);
    ck_assert_double_lt(err64, 1e-10);
    ck_assert_double_lt(err32, 1e-5);

    struct pixel_ctx pc = {.r = r64};
    struct tensor *p = pixel_setup(&pc, img, 8);
    ck_assert(gradcheck("aesthetic tiny d score / d pixels", pixel_fn, &pc, 1, &p,
                        &(struct gc_opts){.tol = 1e-6, .f32_tol = -1}));
    /* the head must read the tower's projection width */
    char hp[512];
    if (parity_path("aesthetic/sac+logos+ava1-l14-linearMSE.pth", hp, sizeof hp)) {
        ck_assert(draft_reward_aesthetic_create(enc, hp, DTYPE_F32, DEVICE_CPU) == NULL);
        printf("dim mismatch: %s\n", tensor_error());
        ck_assert(strstr(tensor_error(), "768") && strstr(tensor_error(), "16"));
    }
    draft_reward_free(r32);
    draft_reward_free(r64);
    unlink(sp);
    tiny_free(&t);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- CLIP similarity */

/* cosine of the reference image embeds with normalise(proj @ pooled text) in f64 */
static double ref_clip(struct tiny *t, const struct clip_tokenizer *tok, const struct tensor *proj, const struct tensor *ie,
                       int64_t b, const char *text)
{
    int32_t ids[CLIP_CONTEXT];
    ck_assert(!clip_tokenize_77(tok, text, ids));
    tensor_scope_begin();
    ag_no_grad_begin();
    struct tensor *it = tensor_from_data(DTYPE_I32, 2, (int64_t[]){1, CLIP_CONTEXT}, ids);
    struct tensor *h = clip_text_forward(&t->tm, it);
    ag_no_grad_end();
    int at = 0;   /* the first eos (the highest id) */
    for (int j = 0; j < CLIP_CONTEXT; j++)
        if (ids[j] > ids[at]) at = j;
    const int64_t P = proj->shape[0], D = proj->shape[1];
    double te[64], n = 0, dot = 0;
    for (int64_t k = 0; k < P; k++) {
        te[k] = 0;
        for (int64_t d = 0; d < D; d++) te[k] += tensor_get(proj, (int64_t[]){k, d}) * tensor_get(h, (int64_t[]){0, at, d});
        n += te[k] * te[k];
    }
    for (int64_t k = 0; k < P; k++) dot += te[k] / sqrt(n) * tensor_get_flat(ie, b * P + k);
    tensor_scope_end();
    return dot;
}

/* the tiny model's tokenizer, and a random text projection 32 -> 16 (CLIPModel's text_projection) in pp */
static struct clip_tokenizer *tiny_tokenizer_and_projection(const struct tiny *t, struct nn_params *pp,
                                                            struct nn_linear *proj)
{
    char vp[700], mp[700];
    snprintf(vp, sizeof vp, "%s/tokenizer/vocab.json", t->dir);
    snprintf(mp, sizeof mp, "%s/tokenizer/merges.txt", t->dir);
    struct clip_tokenizer *tok = clip_tokenizer_load(vp, mp);
    ck_assert_msg(tok != NULL, "%s", tensor_error());
    nn_params_init(pp, DTYPE_F64, DEVICE_CPU);
    ck_assert(!nn_linear_init(proj, pp, "text_projection", 32, 16, false));
    ck_assert(!tensor_copy_(proj->weight, test_uniform(DTYPE_F64, 2, (int64_t[]){16, 32}, -0.3, 0.3)));
    return tok;
}

START_TEST(test_clip_tiny)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tiny t;
    if (!tiny_load(&t)) {
        tensor_scope_end();
        return;
    }
    struct nn_params pp;
    struct nn_linear proj;
    struct clip_tokenizer *tok = tiny_tokenizer_and_projection(&t, &pp, &proj);

    const char *prompts[2] = {"a photo of a cat", "an astronaut riding a horse"};
    struct tensor *img = test_uniform(DTYPE_F64, 4, (int64_t[]){2, 3, 48, 48}, -1, 1);
    struct tensor *ie = ref_image_embeds(&t, img);
    struct draft_reward *r = draft_reward_clip_from_models(&t.tm, &proj, &t.vm, tok, NULL, 1.0);
    struct draft_reward *rt = draft_reward_clip_from_models(&t.tm, &proj, &t.vm, tok, "a red dog, on grass", 2.5);
    ck_assert_msg(r && rt, "%s", tensor_error());
    struct tensor *s = draft_reward_score(r, img, prompts), *st = draft_reward_score(rt, img, NULL);
    ck_assert_msg(s && st, "%s", tensor_error());
    double err = 0;
    for (int64_t b = 0; b < 2; b++) {
        double ref = ref_clip(&t, tok, proj.weight, ie, b, prompts[b]);
        double reft = 2.5 * ref_clip(&t, tok, proj.weight, ie, b, "a red dog, on grass");
        printf("clip tiny image %lld: cos %.8f (ref %.8f), target x2.5 %.8f (ref %.8f)\n", (long long)b,
               tensor_get_flat(s, b), ref, tensor_get_flat(st, b), reft);
        err = fmax(err, fmax(fabs(tensor_get_flat(s, b) - ref), fabs(tensor_get_flat(st, b) - reft)));
    }
    ck_assert_double_lt(err, 1e-10);
    /* the image embeddings: the reference's, normalised; a sum with a tower gives its tower's */
    struct draft_reward *rs = draft_reward_create("sum:red;jpeg"), *rr = draft_reward_create("red");
    ck_assert(rs && rr && !draft_reward_has_image_tower(rs) && draft_reward_has_image_tower(r));
    ck_assert(draft_reward_image_embeds(rr, img) == NULL && strstr(tensor_error(), "reward red has no image tower"));
    struct tensor *emb = draft_reward_image_embeds(r, img);
    ck_assert_msg(emb && emb->ndim == 2 && emb->shape[0] == 2 && emb->shape[1] == ie->shape[1], "%s", tensor_error());
    double eerr = 0;
    for (int64_t k = 0; k < tensor_numel(ie); k++) eerr = fmax(eerr, fabs(tensor_get_flat(emb, k) - tensor_get_flat(ie, k)));
    ck_assert_msg(eerr < 1e-12, "image embeds differ by %g", eerr);
    draft_reward_free(rs);
    draft_reward_free(rr);
    /* prompts are required without a target */
    ck_assert(draft_reward_score(r, img, NULL) == NULL);
    ck_assert(strstr(tensor_error(), "prompts"));

    struct pixel_ctx pc = {.r = r, .prompts = prompts};
    struct tensor *p = pixel_setup(&pc, tensor_clone(img), 6);
    ck_assert(gradcheck("clip tiny d cos / d pixels", pixel_fn, &pc, 1, &p, &(struct gc_opts){.tol = 1e-6, .f32_tol = -1}));

    /* the folder form: a CLIPModel folder assembled from the tiny towers */
    char dir[] = "/tmp/test_reward_clip_XXXXXX", path[900], tokdir[PATH_MAX];
    ck_assert(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    ck_assert(f);
    fprintf(f, "{\"architectures\": [\"CLIPModel\"], \"model_type\": \"clip\", \"projection_dim\": 16, "
               "\"logit_scale_init_value\": 2.6592,\n"
               " \"text_config\": {\"model_type\": \"clip_text_model\", \"vocab_size\": 49408, \"hidden_size\": 32, "
               "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
               "\"max_position_embeddings\": 77, \"hidden_act\": \"quick_gelu\", \"layer_norm_eps\": 1e-05, "
               "\"eos_token_id\": 2, \"return_dict\": true, \"chunk_size_feed_forward\": 0, \"projection_dim\": 512},\n"
               " \"vision_config\": {\"model_type\": \"clip_vision_model\", \"image_size\": 32, \"patch_size\": 8, "
               "\"hidden_size\": 32, \"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
               "\"hidden_act\": \"quick_gelu\", \"layer_norm_eps\": 1e-05, \"num_channels\": 3, \"projection_dim\": 512, "
               "\"output_hidden_states\": false}}\n");
    fclose(f);
    struct tensor *ls = nn_param_new(&t.ps, "", "logit_scale", 0, NULL);
    struct tensor *tp = nn_param_new(&t.ps, "", "text_projection.weight", 2, (int64_t[]){16, 32});
    ck_assert(ls && tp && !tensor_copy_(tp, proj.weight) && !tensor_fill_(ls, 0.7));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ck_assert_int_eq(nn_params_save(&t.ps, path), STATUS_OK);
    /* the link lives in /tmp: its target must be absolute (t.dir may be ../shared/...) */
    snprintf(path, sizeof path, "%s/tokenizer", t.dir);
    ck_assert_msg(realpath(path, tokdir), "%s: %s", path, strerror(errno));
    snprintf(path, sizeof path, "%s/tokenizer", dir);
    ck_assert(symlink(tokdir, path) == 0);

    char spec[1200];
    snprintf(spec, sizeof spec, "clip:%s,logit_scale,text=a red dog, on grass", dir);
    struct draft_reward *rf = draft_reward_create_on(spec, DTYPE_F64, DEVICE_CPU);
    snprintf(spec, sizeof spec, "clip:%s", dir);
    struct draft_reward *rp = draft_reward_create_on(spec, DTYPE_F64, DEVICE_CPU);
    snprintf(spec, sizeof spec, "clip:%s,logit_scale", dir);
    struct draft_reward *rl = draft_reward_create(spec);
    ck_assert_msg(rf && rp && rl, "%s", tensor_error());
    struct tensor *sf = draft_reward_score(rf, img, NULL), *sp = draft_reward_score(rp, img, prompts);
    struct tensor *sl = draft_reward_score(rl, tensor_to_dtype(img, DTYPE_F32), prompts);
    ck_assert_msg(sf && sp && sl, "%s", tensor_error());
    double ef = 0, el = 0;
    for (int64_t b = 0; b < 2; b++) {
        ef = fmax(ef, fabs(tensor_get_flat(sf, b) - exp(0.7) / 2.5 * tensor_get_flat(st, b)));
        ef = fmax(ef, fabs(tensor_get_flat(sp, b) - tensor_get_flat(s, b)));
        el = fmax(el, fabs(tensor_get_flat(sl, b) - exp(0.7) * tensor_get_flat(s, b)));
    }
    printf("clip folder spec vs from_models: f64 max diff %.2e, f32 with logit_scale max diff %.2e\n", ef, el);
    ck_assert_double_lt(ef, 1e-12);
    ck_assert_double_lt(el, 1e-5);
    draft_reward_free(rf);
    draft_reward_free(rp);
    /* classify: CLIP's zero-shot classifier, log_softmax over the classes of exp(logit_scale) cos,
     * against each class's clip:<dir>,logit_scale,text=<class> score combined here in f64 */
    {
        char cs[1200];   /* spec still holds clip:<dir>,logit_scale for what follows */
        const char *cls[3] = {"a red dog, on grass", "a photo of a cat", "an astronaut riding a horse"};
        double lg[3][2];
        for (int k = 0; k < 3; k++) {
            snprintf(cs, sizeof cs, "clip:%s,logit_scale,text=%s", dir, cls[k]);
            struct draft_reward *rk = draft_reward_create_on(cs, DTYPE_F64, DEVICE_CPU);
            struct tensor *sk = rk ? draft_reward_score(rk, img, NULL) : NULL;
            ck_assert_msg(sk, "%s", tensor_error());
            for (int b = 0; b < 2; b++) lg[k][b] = tensor_get_flat(sk, b);
            draft_reward_free(rk);
        }
        snprintf(cs, sizeof cs, "classify:%s,text=%s|%s|%s", dir, cls[0], cls[1], cls[2]);
        struct draft_reward *rc = draft_reward_create_on(cs, DTYPE_F64, DEVICE_CPU);
        /* the target is each image's prompt; prompts[0] is also cls[1] (written here with other
         * case and spacing: the same tokens), left out of its own softmax */
        snprintf(cs, sizeof cs, "classify:%s,text=|%s|%s", dir, cls[0], "A Photo of  a CAT ");
        struct draft_reward *rq = draft_reward_create_on(cs, DTYPE_F64, DEVICE_CPU);
        ck_assert_msg(rc && rq && !strcmp(rc->name, "classify"), "%s", tensor_error());
        ck_assert_str_eq(prompts[0], cls[1]);
        ck_assert_str_eq(prompts[1], cls[2]);
        struct tensor *sc = draft_reward_score(rc, img, NULL), *sq = draft_reward_score(rq, img, prompts);
        ck_assert_msg(sc && sq, "%s", tensor_error());
        double ec = 0;
        for (int b = 0; b < 2; b++) {
            const double all = log(exp(lg[0][b]) + exp(lg[1][b]) + exp(lg[2][b]));
            const double ref_c = lg[0][b] - all;
            const double ref_q = b == 0 ? lg[1][0] - log(exp(lg[1][0]) + exp(lg[0][0])) : lg[2][1] - all;
            printf("classify tiny image %d: log p(target) %.12f (ref %.12f), log p(prompt) %.12f (ref %.12f)\n", b,
                   tensor_get_flat(sc, b), ref_c, tensor_get_flat(sq, b), ref_q);
            ec = fmax(ec, fmax(fabs(tensor_get_flat(sc, b) - ref_c), fabs(tensor_get_flat(sq, b) - ref_q)));
        }
        ck_assert_double_lt(ec, 1e-12);
        ck_assert(draft_reward_has_image_tower(rq));
        ck_assert(draft_reward_score(rq, img, NULL) == NULL && strstr(tensor_error(), "no prompts"));
        struct pixel_ctx qc = {.r = rq, .prompts = prompts};
        struct tensor *q = pixel_setup(&qc, tensor_clone(img), 6);
        ck_assert(gradcheck("classify tiny d log p(prompt) / d pixels", pixel_fn, &qc, 1, &q,
                            &(struct gc_opts){.tol = 1e-6, .f32_tol = -1}));
        draft_reward_free(rc);
        draft_reward_free(rq);
        static const struct {
            const char *args, *want;
        } bad[] = {{",text=a cat", "at least two"}, {"", "expected classify:<CLIPModel folder>"},
                   {",text=a||b", "class 2 of 'a||b' is empty"}, {",text=|", "class 2 of '|' is empty"}};
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            snprintf(cs, sizeof cs, "classify:%s%s", dir, bad[i].args);
            ck_assert_msg(draft_reward_create(cs) == NULL && strstr(tensor_error(), bad[i].want), "'%s': %s", cs,
                          tensor_error());
        }
    }
    /* the same folder with pytorch_model.bin (torch.save, f32) in place of model.safetensors */
    {
        char bin[1000], sf[1000];
        snprintf(sf, sizeof sf, "%s/model.safetensors", dir);
        snprintf(bin, sizeof bin, "%s/pytorch_model.bin", dir);
        const char **names = malloc((size_t)t.ps.n * sizeof *names);
        struct tensor **ts = malloc((size_t)t.ps.n * sizeof *ts);
        ck_assert(names && ts);
        for (int i = 0; i < t.ps.n; i++) names[i] = t.ps.v[i].name, ts[i] = t.ps.v[i].t;
        test_torch_save(bin, t.ps.n, names, ts, false);
        free(names);
        free(ts);
        ck_assert(unlink(sf) == 0);
        struct draft_reward *rb = draft_reward_create(spec);   /* clip:<dir>,logit_scale */
        ck_assert_msg(rb, "%s", tensor_error());
        struct tensor *sb = draft_reward_score(rb, tensor_to_dtype(img, DTYPE_F32), prompts);
        ck_assert_msg(sb, "%s", tensor_error());
        double eb = 0;
        for (int64_t b = 0; b < 2; b++) eb = fmax(eb, fabs(tensor_get_flat(sb, b) - tensor_get_flat(sl, b)));
        printf("clip folder with pytorch_model.bin vs model.safetensors (f32): max diff %.2e\n", eb);
        ck_assert_double_lt(eb, 1e-7);
        draft_reward_free(rb);
        char ps_spec[1100];   /* pickscore: is clip: with the logit scale */
        snprintf(ps_spec, sizeof ps_spec, "pickscore:%s", dir);
        struct draft_reward *rk = draft_reward_create(ps_spec);
        ck_assert_msg(rk, "%s", tensor_error());
        struct tensor *sk = draft_reward_score(rk, tensor_to_dtype(img, DTYPE_F32), prompts);
        ck_assert_msg(sk && tensor_get_flat(sk, 0) == tensor_get_flat(sl, 0) && tensor_get_flat(sk, 1) == tensor_get_flat(sl, 1),
                      "pickscore differs from clip:<dir>,logit_scale");
        draft_reward_free(rk);
        ck_assert(unlink(bin) == 0);
        ck_assert(draft_reward_create(spec) == NULL);
        ck_assert_msg(strstr(tensor_error(), "no model.safetensors or pytorch_model.bin"), "%s", tensor_error());
        ck_assert_int_eq(nn_params_save(&t.ps, sf), STATUS_OK);
    }
    draft_reward_free(rl);
    /* no tokenizer -> error naming the folder */
    unlink(path);
    ck_assert(draft_reward_create(spec) == NULL);
    printf("no tokenizer: %s\n", tensor_error());
    ck_assert(strstr(tensor_error(), "vocab.json"));
    snprintf(path, sizeof path, "rm -rf '%s'", dir);
    ck_assert(system(path) == 0);

    draft_reward_free(r);
    draft_reward_free(rt);
    clip_tokenizer_free(tok);
    nn_params_free(&pp);
    tiny_free(&t);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- OpenCLIP state dicts (HPSv2) */

/* The tiny towers written out as OpenCLIP lays out its CLIP (open_clip/model.py, transformer.py):
 * the text tower at the top level, the image tower under "visual.", q/k/v stacked into
 * attn.in_proj_*, the projections as [width, embed] (x @ proj). Written here from that layout,
 * not from the loader's table. */
struct oc_dict {
    int n;
    char names[160][96];
    struct tensor *t[160];
};

static void oc_add(struct oc_dict *d, const char *name, struct tensor *t)
{
    ck_assert_int_lt(d->n, 160);
    ck_assert_msg(t != NULL, "%s: %s", name, tensor_error());
    snprintf(d->names[d->n], sizeof d->names[0], "%s", name);
    d->t[d->n++] = tensor_contiguous(t);   /* scope-owned */
}

static struct tensor *hf(struct tiny *t, const char *fmt, const char *tower, int l)
{
    char name[200], full[240];
    snprintf(name, sizeof name, fmt, l);
    snprintf(full, sizeof full, "%s%s%s", tower, *tower ? "." : "", name);
    struct tensor *x = nn_param_find(&t->ps, full);
    ck_assert_msg(x != NULL, "no parameter %s", full);
    return x;
}

static void oc_tower(struct oc_dict *d, struct tiny *t, const char *tower, const char *oc, int layers)
{
    char k[160];
    for (int l = 0; l < layers; l++) {
        static const char *const wb[2] = {"weight", "bias"};
        for (int j = 0; j < 2; j++) {
            char fq[120], fk[120], fv[120];
            snprintf(fq, sizeof fq, "encoder.layers.%%d.self_attn.q_proj.%s", wb[j]);
            snprintf(fk, sizeof fk, "encoder.layers.%%d.self_attn.k_proj.%s", wb[j]);
            snprintf(fv, sizeof fv, "encoder.layers.%%d.self_attn.v_proj.%s", wb[j]);
            struct tensor *qkv[3] = {hf(t, fq, tower, l), hf(t, fk, tower, l), hf(t, fv, tower, l)};
            snprintf(k, sizeof k, "%stransformer.resblocks.%d.attn.in_proj_%s", oc, l, wb[j]);
            oc_add(d, k, ag_concat(3, qkv, 0));
            static const char *const pairs[][2] = {{"self_attn.out_proj", "attn.out_proj"},
                                                   {"layer_norm1", "ln_1"},
                                                   {"layer_norm2", "ln_2"},
                                                   {"mlp.fc1", "mlp.c_fc"},
                                                   {"mlp.fc2", "mlp.c_proj"}};
            for (int p = 0; p < 5; p++) {
                char f[120];
                snprintf(f, sizeof f, "encoder.layers.%%d.%s.%s", pairs[p][0], wb[j]);
                snprintf(k, sizeof k, "%stransformer.resblocks.%d.%s.%s", oc, l, pairs[p][1], wb[j]);
                oc_add(d, k, hf(t, f, tower, l));
            }
        }
    }
}

START_TEST(test_openclip_tiny)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tiny t;
    if (!tiny_load(&t)) {
        tensor_scope_end();
        return;
    }
    struct nn_params pp;
    struct nn_linear proj;
    struct clip_tokenizer *tok = tiny_tokenizer_and_projection(&t, &pp, &proj);
    /* the image tower's projection is 32 -> 16 too: OpenCLIP's two projections share the width */
    ck_assert_int_eq(t.vm.cfg.projection_dim, 16);

    struct oc_dict *d = calloc(1, sizeof *d);
    ck_assert_ptr_nonnull(d);
    oc_add(d, "token_embedding.weight", hf(&t, "embeddings.token_embedding.weight", "text_model", 0));
    oc_add(d, "positional_embedding", hf(&t, "embeddings.position_embedding.weight", "text_model", 0));
    oc_tower(d, &t, "text_model", "", t.tm.cfg.num_hidden_layers);
    oc_add(d, "ln_final.weight", hf(&t, "final_layer_norm.weight", "text_model", 0));
    oc_add(d, "ln_final.bias", hf(&t, "final_layer_norm.bias", "text_model", 0));
    oc_add(d, "text_projection", tensor_transpose(proj.weight, 0, 1));
    oc_add(d, "logit_scale", tensor_scalar(DTYPE_F64, 0.7));
    oc_add(d, "visual.conv1.weight", hf(&t, "embeddings.patch_embedding.weight", "vision_model", 0));
    oc_add(d, "visual.class_embedding", hf(&t, "embeddings.class_embedding", "vision_model", 0));
    oc_add(d, "visual.positional_embedding", hf(&t, "embeddings.position_embedding.weight", "vision_model", 0));
    oc_add(d, "visual.ln_pre.weight", hf(&t, "pre_layrnorm.weight", "vision_model", 0));
    oc_add(d, "visual.ln_pre.bias", hf(&t, "pre_layrnorm.bias", "vision_model", 0));
    oc_tower(d, &t, "vision_model", "visual.", t.vm.cfg.num_hidden_layers);
    oc_add(d, "visual.ln_post.weight", hf(&t, "post_layernorm.weight", "vision_model", 0));
    oc_add(d, "visual.ln_post.bias", hf(&t, "post_layernorm.bias", "vision_model", 0));
    oc_add(d, "visual.proj", tensor_transpose(hf(&t, "visual_projection.weight", "", 0), 0, 1));
    /* every parameter of both towers and both projections is in the dict once, plus logit_scale */
    ck_assert_int_eq(d->n, (int)(t.ps.n + 1 - 4 * (t.tm.cfg.num_hidden_layers + t.vm.cfg.num_hidden_layers) + 1));

    char dir[] = "/tmp/test_reward_openclip_XXXXXX", pt[900], sf[900], tokdir[PATH_MAX], path[900];
    ck_assert(mkdtemp(dir));
    /* HPS's form: torch.save({"state_dict": ...}) (f32 storages here), and an f64 safetensors of the same dict */
    snprintf(pt, sizeof pt, "%s/HPS_v2_compressed.pt", dir);
    const char *names[160];
    for (int i = 0; i < d->n; i++) names[i] = d->names[i];
    test_torch_save(pt, d->n, names, d->t, true);
    snprintf(sf, sizeof sf, "%s/open_clip_model.safetensors", dir);
    struct nn_params os;
    nn_params_init(&os, DTYPE_F64, DEVICE_CPU);
    for (int i = 0; i < d->n; i++) {
        struct tensor *x = nn_param_new(&os, "", d->names[i], d->t[i]->ndim, d->t[i]->shape);
        ck_assert(x && !tensor_copy_(x, d->t[i]));
    }
    ck_assert_int_eq(nn_params_save(&os, sf), STATUS_OK);
    snprintf(path, sizeof path, "%s/tokenizer", t.dir);
    ck_assert_msg(realpath(path, tokdir), "%s: %s", path, strerror(errno));

    const char *prompts[2] = {"a photo of a cat", "an astronaut riding a horse"};
    struct tensor *img = test_uniform(DTYPE_F64, 4, (int64_t[]){2, 3, 48, 48}, -1, 1);
    struct draft_reward *r = draft_reward_clip_from_models(&t.tm, &proj, &t.vm, tok, NULL, 1.0);
    /* the tiny towers: heads 8 wide, quick GELU */
    struct draft_reward *o64 = draft_reward_openclip_create(sf, tokdir, 8, 8, CLIP_ACT_QUICK_GELU, NULL, false,
                                                            DTYPE_F64, DEVICE_CPU);
    ck_assert_msg(r && o64, "%s", tensor_error());
    struct draft_reward *o32 = draft_reward_openclip_create(pt, tokdir, 8, 8, CLIP_ACT_QUICK_GELU, "a red dog", true,
                                                            DTYPE_F32, DEVICE_CPU);
    struct draft_reward *rt = draft_reward_clip_from_models(&t.tm, &proj, &t.vm, tok, "a red dog", exp(0.7));
    ck_assert_msg(o32 && rt, "%s", tensor_error());
    struct tensor *s = draft_reward_score(r, img, prompts), *s64 = draft_reward_score(o64, img, prompts);
    struct tensor *st = draft_reward_score(rt, img, NULL);
    struct tensor *s32 = draft_reward_score(o32, tensor_to_dtype(img, DTYPE_F32), NULL);
    ck_assert_msg(s && s64 && st && s32, "%s", tensor_error());
    double e64 = 0, e32 = 0;
    for (int64_t b = 0; b < 2; b++) {
        printf("openclip tiny image %lld: %.10f (CLIPModel form %.10f); target, logit scale, from the .pt in f32: "
               "%.7f (%.7f)\n",
               (long long)b, tensor_get_flat(s64, b), tensor_get_flat(s, b), tensor_get_flat(s32, b),
               tensor_get_flat(st, b));
        e64 = fmax(e64, fabs(tensor_get_flat(s64, b) - tensor_get_flat(s, b)));
        e32 = fmax(e32, fabs(tensor_get_flat(s32, b) - tensor_get_flat(st, b)) / exp(0.7));
    }
    ck_assert_double_lt(e64, 1e-12);
    ck_assert_double_lt(e32, 1e-5);
    ck_assert(fabs(tensor_get_flat(s, 0) - tensor_get_flat(s, 1)) > 1e-3);   /* the scores say something */

    /* gradients reach the pixels through the OpenCLIP-loaded tower as through the other */
    struct pixel_ctx pc = {.r = o64, .prompts = prompts};
    struct tensor *p = pixel_setup(&pc, tensor_clone(img), 6);
    ck_assert(gradcheck("openclip tiny d cos / d pixels", pixel_fn, &pc, 1, &p, &(struct gc_opts){.tol = 1e-6, .f32_tol = -1}));

    /* the hpsv2 spec: ViT-H-14's head widths (64, 80) do not divide the tiny towers, and it says so */
    char spec[6000];
    snprintf(spec, sizeof spec, "hpsv2:%s,%s", pt, tokdir);
    ck_assert(draft_reward_create(spec) == NULL);
    printf("hpsv2 on the tiny towers: %s\n", tensor_error());
    fflush(stdout);
    ck_assert(strstr(tensor_error(), "the text tower is 32 wide, not a multiple of the head width 64"));
    snprintf(spec, sizeof spec, "hpsv2:%s", pt);
    ck_assert(draft_reward_create(spec) == NULL);
    ck_assert(strstr(tensor_error(), "expected hpsv2:<HPS_v2_compressed.pt>,<tokenizer dir>"));
    /* a file that is not an OpenCLIP state dict, and one with a tensor too many */
    snprintf(path, sizeof path, "%s/text_encoder/model.safetensors", t.dir);
    ck_assert(draft_reward_openclip_create(path, tokdir, 8, 8, CLIP_ACT_QUICK_GELU, NULL, false, DTYPE_F32,
                                           DEVICE_CPU) == NULL);
    printf("not OpenCLIP: %s\n", tensor_error());
    fflush(stdout);
    ck_assert(strstr(tensor_error(), "no tensor 'token_embedding.weight'"));
    /* a saved causal mask is a buffer, not a weight: skipped */
    ck_assert(nn_param_new(&os, "", "attn_mask", 2, (int64_t[]){77, 77}));
    ck_assert_int_eq(nn_params_save(&os, sf), STATUS_OK);
    struct draft_reward *om = draft_reward_openclip_create(sf, tokdir, 8, 8, CLIP_ACT_QUICK_GELU, NULL, false, DTYPE_F32,
                                                           DEVICE_CPU);
    ck_assert_msg(om, "%s", tensor_error());
    draft_reward_free(om);
    ck_assert(nn_param_new(&os, "", "visual.extra", 1, (int64_t[]){3}));
    ck_assert_int_eq(nn_params_save(&os, sf), STATUS_OK);
    ck_assert(draft_reward_openclip_create(sf, tokdir, 8, 8, CLIP_ACT_QUICK_GELU, NULL, false, DTYPE_F32,
                                           DEVICE_CPU) == NULL);
    ck_assert(strstr(tensor_error(), "unexpected tensor 'visual.extra'"));

    /* a zero-sized vocabulary (what the shapes say is all there is to go on) */
    {
        struct nn_params zs;
        nn_params_init(&zs, DTYPE_F32, DEVICE_CPU);
        static const struct { const char *name; int nd; int64_t shape[4]; } t0[] = {
            {"token_embedding.weight", 2, {0, 32}},
            {"positional_embedding", 2, {77, 32}},
            {"transformer.resblocks.0.mlp.c_fc.weight", 2, {128, 32}},
            {"transformer.resblocks.0.ln_1.weight", 1, {32}},
            {"text_projection", 2, {32, 16}},
            {"visual.conv1.weight", 4, {32, 3, 8, 8}},
            {"visual.positional_embedding", 2, {17, 32}},
            {"visual.transformer.resblocks.0.mlp.c_fc.weight", 2, {128, 32}},
            {"visual.transformer.resblocks.0.ln_1.weight", 1, {32}},
            {"visual.proj", 2, {32, 16}},
        };
        for (size_t i = 0; i < sizeof t0 / sizeof t0[0]; i++)
            ck_assert(nn_param_new(&zs, "", t0[i].name, t0[i].nd, t0[i].shape));
        snprintf(path, sizeof path, "%s/zero.safetensors", dir);
        ck_assert_int_eq(nn_params_save(&zs, path), STATUS_OK);
        ck_assert(draft_reward_openclip_create(path, tokdir, 8, 8, CLIP_ACT_QUICK_GELU, NULL, false, DTYPE_F32,
                                               DEVICE_CPU) == NULL);
        ck_assert_msg(strstr(tensor_error(), "has a zero size"), "%s", tensor_error());
        nn_params_free(&zs);
    }
    snprintf(path, sizeof path, "rm -rf '%s'", dir);
    ck_assert(system(path) == 0);
    draft_reward_free(r);
    draft_reward_free(rt);
    draft_reward_free(o64);
    draft_reward_free(o32);
    free(d);   /* its tensors belong to the scope */
    nn_params_free(&os);
    clip_tokenizer_free(tok);
    nn_params_free(&pp);
    tiny_free(&t);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- OWL-ViT detection */

/* OWL-ViT's pixel values of image b: each side resized to S on its own (no crop), CLIP mean/std */
static void ref_stretch(const struct tensor *img, int64_t b, int64_t S, double *out /* [3][S][S] */)
{
    const int64_t H = img->shape[2], W = img->shape[3];
    static const double mean[3] = {0.48145466, 0.4578275, 0.40821073}, sd[3] = {0.26862954, 0.26130258, 0.27577711};
    for (int c = 0; c < 3; c++)
        for (int64_t i = 0; i < S; i++)
            for (int64_t j = 0; j < S; j++) {
                double v = 0;
                for (int64_t y = 0; y < H; y++) {
                    double wy = ref_pil_weight(H, S, i, y);
                    if (wy == 0) continue;
                    for (int64_t x = 0; x < W; x++) v += wy * ref_pil_weight(W, S, j, x) * px(img, b, c, y, x);
                }
                out[(c * S + i) * S + j] = (v - mean[c]) / sd[c];
            }
}

/* layer norm of n values in place (biased variance, as torch) */
static void ref_ln(double *x, int64_t n, const struct tensor *w, const struct tensor *bias, double eps)
{
    double m = 0, v = 0;
    for (int64_t i = 0; i < n; i++) m += x[i] / (double)n;
    for (int64_t i = 0; i < n; i++) v += (x[i] - m) * (x[i] - m) / (double)n;
    for (int64_t i = 0; i < n; i++)
        x[i] = (x[i] - m) / sqrt(v + eps) * tensor_get_flat(w, i) + tensor_get_flat(bias, i);
}

/* ref_ln on each of n rows of width D */
static void ref_ln_rows(double *x, int n, int64_t D, const struct tensor *w, const struct tensor *bias, double eps)
{
    for (int r = 0; r < n; r++) ref_ln(x + (int64_t)r * D, D, w, bias, eps);
}

/* max over k of |emb[b, k] - e[k] / ||e|||: row b of embeddings against unnormalised f64 ones */
static double normalized_err(const struct tensor *emb, int64_t b, const double *e, int n)
{
    double nn = 0, err = 0;
    for (int k = 0; k < n; k++) nn += e[k] * e[k];
    for (int k = 0; k < n; k++) err = fmax(err, fabs(tensor_get(emb, (int64_t[]){b, k}) - e[k] / sqrt(nn)));
    return err;
}

/* y = W x + b for W [out, in] */
static void ref_affine(const struct tensor *W, const struct tensor *bias, const double *x, double *y)
{
    const int64_t o = W->shape[0], n = W->shape[1];
    for (int64_t r = 0; r < o; r++) {
        y[r] = bias ? tensor_get_flat(bias, r) : 0;
        for (int64_t k = 0; k < n; k++) y[r] += tensor_get(W, (int64_t[]){r, k}) * x[k];
    }
}

struct owl_head {   /* the parameters an OWL-ViT folder adds to the tiny towers (f64) */
    struct tensor *tproj, *vproj, *ln_w, *ln_b, *d0_w, *d0_b, *sh_w, *sh_b, *sc_w, *sc_b;
};

/* OwlViTProcessor's ids, written again: bos, at most 14 ids, eos, 0s up to 16 */
static void ref_owl_ids(const struct clip_tokenizer *tok, const char *text, int32_t ids[16])
{
    int32_t all[256];
    int n = clip_tokenize(tok, text, all, 256);
    ck_assert(n >= 0 && n <= 256);
    if (n > 14) n = 14;
    ids[0] = 49406;
    for (int i = 0; i < n; i++) ids[1 + i] = all[i];
    ids[1 + n] = 49407;
    for (int i = 2 + n; i < 16; i++) ids[i] = 0;
}

/* the detection score of image b for `text`, in f64: the towers' outputs (checked against
 * transformers in test_clip) and the heads written out as modeling_owlvit.py has them */
static double ref_detect(struct tiny *t, const struct owl_head *h, const struct clip_tokenizer *tok,
                         const struct tensor *img, int64_t b, const char *text, bool v2)
{
    const int64_t S = t->vm.cfg.image_size, D = 32, E = 32;
    tensor_scope_begin();
    /* the query: pooled at the eos, projected, normalised */
    int32_t ids[16];
    ref_owl_ids(tok, text, ids);
    ag_no_grad_begin();
    struct tensor *th = clip_text_forward(&t->tm, tensor_from_data(DTYPE_I32, 2, (int64_t[]){1, 16}, ids));
    double *pix = malloc(sizeof(double) * (size_t)(3 * S * S));
    if (v2) ref_owlv2(img, b, S, pix);
    else ref_stretch(img, b, S, pix);
    struct tensor *vh = clip_vision_hidden(&t->vm, tensor_from_data(DTYPE_F64, 4, (int64_t[]){1, 3, S, S}, pix));
    free(pix);
    ag_no_grad_end();
    ck_assert_msg(th && vh, "%s", tensor_error());
    int at = 0;
    while (ids[at] != 49407) at++;
    double pooled[32], q[32], qn = 0;
    for (int64_t d = 0; d < D; d++) pooled[d] = tensor_get(th, (int64_t[]){0, at, d});
    ref_affine(h->tproj, NULL, pooled, q);
    for (int64_t e = 0; e < E; e++) qn += q[e] * q[e];
    qn = sqrt(qn);
    double q2n = 0;
    for (int64_t e = 0; e < E; e++) q2n += (q[e] / qn) * (q[e] / qn);
    for (int64_t e = 0; e < E; e++) q[e] = q[e] / qn / (sqrt(q2n) + 1e-6);
    /* every token through post_layernorm; patch times class token; layer_norm; the class head */
    const int64_t T = vh->shape[1];
    double cls[32], best = -1;
    for (int64_t d = 0; d < D; d++) cls[d] = tensor_get(vh, (int64_t[]){0, 0, d});
    ref_ln(cls, D, t->vm.post_layernorm.weight, t->vm.post_layernorm.bias, 1e-5);
    for (int64_t p = 1; p < T; p++) {
        double x[32], c[32], sh, sc, cn = 0, dot = 0;
        for (int64_t d = 0; d < D; d++) x[d] = tensor_get(vh, (int64_t[]){0, p, d});
        ref_ln(x, D, t->vm.post_layernorm.weight, t->vm.post_layernorm.bias, 1e-5);
        for (int64_t d = 0; d < D; d++) x[d] *= cls[d];
        ref_ln(x, D, h->ln_w, h->ln_b, 1e-5);
        ref_affine(h->d0_w, h->d0_b, x, c);
        ref_affine(h->sh_w, h->sh_b, x, &sh);
        ref_affine(h->sc_w, h->sc_b, x, &sc);
        for (int64_t e = 0; e < E; e++) cn += c[e] * c[e];
        for (int64_t e = 0; e < E; e++) dot += c[e] / (sqrt(cn) + 1e-6) * q[e];
        const double logit = (dot + sh) * ((sc > 0 ? sc : expm1(sc)) + 1);
        best = fmax(best, 1 / (1 + exp(-logit)));
    }
    tensor_scope_end();
    return best;
}

/* an OwlViTForObjectDetection folder around the tiny towers (top "owlvit"; "owlv2": an
 * Owlv2ForObjectDetection one, with an objectness head): the text tower's positions cut to
 * OWL-ViT's 16, CLIP's "pre_layrnorm" spelt "pre_layernorm", random heads, a box head to skip */
static void write_owlvit(struct tiny *t, const char *dir, struct owl_head *h, bool extra, const char *top)
{
    char path[900];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    ck_assert(f);
    fprintf(f, "{\"architectures\": [\"%sForObjectDetection\"], \"model_type\": \"%s\", \"projection_dim\": 32, "
               "\"logit_scale_init_value\": 2.6592, \"return_dict\": true,\n"
               " \"text_config\": {\"model_type\": \"%s_text_model\", \"vocab_size\": 49408, \"hidden_size\": 32, "
               "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
               "\"max_position_embeddings\": 16, \"hidden_act\": \"quick_gelu\", \"layer_norm_eps\": 1e-05, "
               "\"bos_token_id\": 49406, \"eos_token_id\": 49407, \"pad_token_id\": 0},\n"
               " \"vision_config\": {\"model_type\": \"%s_vision_model\", \"image_size\": 32, \"patch_size\": 8, "
               "\"hidden_size\": 32, \"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
               "\"hidden_act\": \"quick_gelu\", \"layer_norm_eps\": 1e-05, \"num_channels\": 3}}\n",
            strcmp(top, "owlv2") ? "OwlViT" : "Owlv2", top, top, top);
    fclose(f);
    struct nn_params o;
    nn_params_init(&o, DTYPE_F64, DEVICE_CPU);
    char name[300];
    for (int i = 0; i < t->ps.n; i++) {
        const char *nm = t->ps.v[i].name;
        struct tensor *v = t->ps.v[i].t;
        if (!strcmp(nm, "visual_projection.weight")) continue;   /* CLIP's is 16 wide; OWL-ViT's below */
        if (!strncmp(nm, "text_model.embeddings.position_embedding", 40)) v = tensor_narrow(v, 0, 0, 16);
        const char *ln = strstr(nm, "pre_layrnorm");
        if (ln) snprintf(name, sizeof name, "%s.%.*spre_layernorm%s", top, (int)(ln - nm), nm, ln + 12);
        else snprintf(name, sizeof name, "%s.%s", top, nm);
        struct tensor *dst = nn_param_new(&o, "", name, v->ndim, v->shape);
        ck_assert(dst && !tensor_copy_(dst, v));
    }
    static const struct {
        const char *name;
        int64_t rows, cols;
        double lo, hi;
    } add[] = {{"owlvit.text_projection.weight", 32, 32, -0.3, 0.3},
               {"owlvit.visual_projection.weight", 32, 32, -0.3, 0.3},
               {"layer_norm.weight", 32, 0, 0.6, 1.4}, {"layer_norm.bias", 32, 0, -0.2, 0.2},
               {"class_head.dense0.weight", 32, 32, -0.3, 0.3}, {"class_head.dense0.bias", 32, 0, -0.2, 0.2},
               {"class_head.logit_shift.weight", 1, 32, -0.05, 0.05}, {"class_head.logit_shift.bias", 1, 0, -0.8, -0.4},
               {"class_head.logit_scale.weight", 1, 32, -0.15, 0.15}, {"class_head.logit_scale.bias", 1, 0, 0.2, 0.6},
               {"box_head.dense0.weight", 32, 32, -1, 1}, {"box_head.dense2.bias", 4, 0, -1, 1},
               {"objectness_head.dense2.weight", 1, 32, -1, 1}};
    struct tensor **slot[] = {&h->tproj, &h->vproj, &h->ln_w, &h->ln_b, &h->d0_w, &h->d0_b,
                              &h->sh_w, &h->sh_b, &h->sc_w, &h->sc_b, NULL, NULL, NULL};
    for (size_t i = 0; i < sizeof add / sizeof *add; i++) {
        if (!strncmp(add[i].name, "objectness", 10) && strcmp(top, "owlv2")) continue;   /* OWLv2's only */
        const int nd = add[i].cols ? 2 : 1;
        struct tensor *v = test_uniform(DTYPE_F64, nd, (int64_t[]){add[i].rows, add[i].cols}, add[i].lo, add[i].hi);
        if (!strncmp(add[i].name, "owlvit.", 7)) snprintf(name, sizeof name, "%s.%s", top, add[i].name + 7);
        else snprintf(name, sizeof name, "%s", add[i].name);
        struct tensor *dst = nn_param_new(&o, "", name, nd, v->shape);
        ck_assert(dst && !tensor_copy_(dst, v));
        if (slot[i]) *slot[i] = v;
    }
    struct tensor *ls = nn_param_new(&o, top, "logit_scale", 0, NULL);
    ck_assert(ls && !tensor_fill_(ls, 2.6592));
    if (extra) ck_assert(nn_param_new(&o, "", "class_head.bogus", 1, (int64_t[]){3}));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ck_assert_int_eq(nn_params_save(&o, path), STATUS_OK);
    nn_params_free(&o);
}

START_TEST(test_owlvit_tiny)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tiny t;
    if (!tiny_load(&t)) {
        tensor_scope_end();
        return;
    }
    char dir[] = "/tmp/test_reward_owl_XXXXXX", path[900], tokdir[PATH_MAX], spec[1200];
    ck_assert(mkdtemp(dir));
    struct owl_head h;
    write_owlvit(&t, dir, &h, false, "owlvit");
    snprintf(path, sizeof path, "%s/tokenizer", t.dir);
    ck_assert_msg(realpath(path, tokdir), "%s: %s", path, strerror(errno));
    snprintf(path, sizeof path, "%s/tokenizer", dir);
    ck_assert(symlink(tokdir, path) == 0);
    snprintf(path, sizeof path, "%s/tokenizer/vocab.json", t.dir);
    char mp[700];
    snprintf(mp, sizeof mp, "%s/tokenizer/merges.txt", t.dir);
    struct clip_tokenizer *tok = clip_tokenizer_load(path, mp);
    ck_assert_msg(tok, "%s", tensor_error());

    snprintf(spec, sizeof spec, "detect:%s,text=a red square, small", dir);
    struct draft_reward *ro = draft_reward_create_on(spec, DTYPE_F64, DEVICE_CPU), *ro32 = draft_reward_create(spec);
    snprintf(spec, sizeof spec, "detect:%s", dir);
    struct draft_reward *rp = draft_reward_create_on(spec, DTYPE_F64, DEVICE_CPU);
    ck_assert_msg(ro && ro32 && rp, "%s", tensor_error());
    ck_assert_str_eq(ro->name, "detect");
    /* 40 x 24: the height shrinks, the width grows, each on its own; the second prompt is cut at 14 ids */
    const char *prompts[2] = {"a photo of a cat",
                              "a very long prompt that goes on and on past the sixteen tokens OWL-ViT reads"};
    struct tensor *img = test_uniform(DTYPE_F64, 4, (int64_t[]){2, 3, 40, 24}, -1.05, 1.05);
    struct tensor *so = draft_reward_score(ro, img, NULL), *sp = draft_reward_score(rp, img, prompts);
    struct tensor *s32 = draft_reward_score(ro32, tensor_to_dtype(img, DTYPE_F32), NULL);
    ck_assert_msg(so && sp && s32, "%s", tensor_error());
    ck_assert(so->ndim == 1 && so->shape[0] == 2 && s32->dtype == DTYPE_F32);
    double err = 0, err32 = 0;
    for (int64_t b = 0; b < 2; b++) {
        const double refo = ref_detect(&t, &h, tok, img, b, "a red square, small", false);
        const double refp = ref_detect(&t, &h, tok, img, b, prompts[b], false);
        printf("detect tiny image %lld: object %.10f (ref %.10f, f32 %.7f), prompt %.10f (ref %.10f)\n", (long long)b,
               tensor_get_flat(so, b), refo, tensor_get_flat(s32, b), tensor_get_flat(sp, b), refp);
        err = fmax(err, fmax(fabs(tensor_get_flat(so, b) - refo), fabs(tensor_get_flat(sp, b) - refp)));
        err32 = fmax(err32, fabs(tensor_get_flat(s32, b) - refo));
        ck_assert(refo > 0.02 && refo < 0.98 && refp > 0.02 && refp < 0.98);   /* away from saturation */
    }
    printf("detect tiny vs float64 re-computation: f64 max abs %.2e, f32 %.2e\n", err, err32);
    ck_assert_double_lt(err, 1e-12);
    ck_assert_double_lt(err32, 1e-5);
    ck_assert(draft_reward_score(rp, img, NULL) == NULL && strstr(tensor_error(), "no prompts"));
    /* its image embeddings (--diversity-model): OwlViTModel's image_embeds, the class token through
     * post_layernorm and visual_projection, normalised */
    ck_assert(draft_reward_has_image_tower(ro));
    struct tensor *emb = draft_reward_image_embeds(ro, img);
    ck_assert_msg(emb && emb->ndim == 2 && emb->shape[0] == 2 && emb->shape[1] == 32, "%s", tensor_error());
    double eerr = 0;
    for (int64_t b = 0; b < 2; b++) {
        double pix[3 * 32 * 32], cls[32], e[32];
        ref_stretch(img, b, 32, pix);
        ag_no_grad_begin();
        struct tensor *vh = clip_vision_hidden(&t.vm, tensor_from_data(DTYPE_F64, 4, (int64_t[]){1, 3, 32, 32}, pix));
        ag_no_grad_end();
        for (int64_t d = 0; d < 32; d++) cls[d] = tensor_get(vh, (int64_t[]){0, 0, d});
        ref_ln(cls, 32, t.vm.post_layernorm.weight, t.vm.post_layernorm.bias, 1e-5);
        ref_affine(h.vproj, NULL, cls, e);
        eerr = fmax(eerr, normalized_err(emb, b, e, 32));
    }
    printf("detect tiny image embeds vs float64 re-computation: max abs %.2e\n", eerr);
    ck_assert_double_lt(eerr, 1e-12);

    struct pixel_ctx pc = {.r = rp, .prompts = prompts};
    struct tensor *p = pixel_setup(&pc, tensor_clone(img), 8);
    ck_assert(gradcheck("detect tiny d score / d pixels", pixel_fn, &pc, 1, &p,
                        &(struct gc_opts){.tol = 1e-6, .f32_tol = -1}));
    /* the same as an Owlv2ForObjectDetection folder: "owlv2." keys, an objectness head to skip, and
     * OWLv2's processing (the 40 x 24 images padded to 40 x 40, then shrunk with a Gaussian) */
    char dir2[] = "/tmp/test_reward_owl2_XXXXXX";
    ck_assert(mkdtemp(dir2));
    struct owl_head h2;
    write_owlvit(&t, dir2, &h2, false, "owlv2");
    snprintf(path, sizeof path, "%s/tokenizer", dir2);
    ck_assert(symlink(tokdir, path) == 0);
    snprintf(spec, sizeof spec, "detect:%s,text=a red square, small", dir2);
    struct draft_reward *r2 = draft_reward_create_on(spec, DTYPE_F64, DEVICE_CPU);
    ck_assert_msg(r2, "%s", tensor_error());
    struct tensor *s2 = draft_reward_score(r2, img, NULL);
    ck_assert_msg(s2, "%s", tensor_error());
    double err2 = 0;
    for (int64_t b = 0; b < 2; b++) {
        const double ref = ref_detect(&t, &h2, tok, img, b, "a red square, small", true);
        printf("detect tiny owlv2 image %lld: %.10f (ref %.10f)\n", (long long)b, tensor_get_flat(s2, b), ref);
        err2 = fmax(err2, fabs(tensor_get_flat(s2, b) - ref));
        ck_assert(ref > 0.02 && ref < 0.98);
    }
    ck_assert_double_lt(err2, 1e-12);
    draft_reward_free(r2);
    snprintf(path, sizeof path, "rm -rf '%s'", dir2);
    ck_assert(system(path) == 0);
    draft_reward_free(ro);
    draft_reward_free(ro32);
    draft_reward_free(rp);

    /* refused: a CLIP folder, a tensor the model does not have, an empty object, a second argument */
    snprintf(spec, sizeof spec, "detect:%s", t.dir);
    char enc[700];
    snprintf(enc, sizeof enc, "detect:%s/image_encoder", t.dir);
    write_owlvit(&t, dir, &h, true, "owlvit");
    struct {
        const char *spec, *want;
    } bad[] = {{enc, "model_type 'clip_vision_model' is not 'owlvit'"}, {NULL, "unexpected tensor 'class_head.bogus'"},
               {"detect:", "expected detect:<OWL-ViT folder>"}, {"detect:/x,/y", "expected detect:<OWL-ViT folder>"},
               {"detect:/x,text=", "text= is empty"}};
    char sbad[1200];
    snprintf(sbad, sizeof sbad, "detect:%s,text=a cat", dir);
    bad[1].spec = sbad;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ck_assert_msg(draft_reward_create(bad[i].spec) == NULL, "'%s' accepted", bad[i].spec);
        printf("spec '%s' -> %s\n", bad[i].spec, tensor_error());
        ck_assert_msg(strstr(tensor_error(), bad[i].want), "'%s': '%s' lacks '%s'", bad[i].spec, tensor_error(),
                      bad[i].want);
    }
    clip_tokenizer_free(tok);
    snprintf(path, sizeof path, "rm -rf '%s'", dir);
    ck_assert(system(path) == 0);
    tiny_free(&t);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- ImageReward */

static const char ir_vocab[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nphoto\nof\ncat\nplay\n##ing\nun\n##aff\n"
                               "##able\ncafe\n,\n.\n!\n";

#define IRV 64    /* the tiny ViT: one 64-wide head (BLIP's width), 16 px in 8 px patches: 5 tokens */
#define IRH 32    /* the tiny BERT: 2 heads of 16 */
#define IRT 40    /* longest text the reference sees (35) */

static double gelu_ref(double x) { return 0.5 * x * (1 + erf(x / sqrt(2.0))); }
static const struct tensor *P0(const struct nn_params *ps, const char *name)
{
    const struct tensor *t = nn_param_find(ps, name);
    ck_assert_msg(t, "no parameter %s", name);
    return t;
}
static const struct tensor *P(const struct nn_params *ps, const char *fmt, int i)
{
    char n[256];
    snprintf(n, sizeof n, fmt, i);
    const struct tensor *t = nn_param_find(ps, n);
    ck_assert_msg(t, "no parameter %s", n);
    return t;
}

/* blip.text_encoder.encoder.layer.<l>.<part>.<what> */
static const struct tensor *bert_param(const struct nn_params *ps, int l, const char *part, const char *what)
{
    char n[256];
    snprintf(n, sizeof n, "blip.text_encoder.encoder.layer.%d.%s.%s", l, part, what);
    const struct tensor *t = nn_param_find(ps, n);
    ck_assert_msg(t, "no parameter %s", n);
    return t;
}

/* rows y[r] = softmax(q[r] k^T / sqrt(d)) v over `heads` heads of width D/heads */
static void ref_attention(const double *q, int nq, const double *k, const double *v, int nk, int D, int heads, double *y)
{
    const int d = D / heads;
    for (int h = 0; h < heads; h++)
        for (int r = 0; r < nq; r++) {
            double sc[IRT], mx = -INFINITY, z = 0;
            for (int j = 0; j < nk; j++) {
                sc[j] = 0;
                for (int e = 0; e < d; e++) sc[j] += q[r * D + h * d + e] * k[j * D + h * d + e];
                sc[j] /= sqrt((double)d);
                mx = fmax(mx, sc[j]);
            }
            for (int j = 0; j < nk; j++) z += (sc[j] = exp(sc[j] - mx));
            for (int e = 0; e < d; e++) {
                double acc = 0;
                for (int j = 0; j < nk; j++) acc += sc[j] / z * v[j * D + h * d + e];
                y[r * D + h * d + e] = acc;
            }
        }
}

/* n rows of W x + b */
static void ref_rows(const struct tensor *W, const struct tensor *b, const double *x, int n, double *y)
{
    const int64_t o = W->shape[0], in = W->shape[1];
    for (int r = 0; r < n; r++) ref_affine(W, b, x + r * in, y + r * o);
}

/* ImageReward of image b with `text`, in f64: the towers written out as vit.py and med.py have them */
#define IRT_IMG 5   /* the tiny ViT's tokens: 2 x 2 patches and the class token */

/* the tiny ViT's output tokens x [IRT_IMG][IRV] for image b, as vit.py computes them */
static void ref_blip_vit(const struct nn_params *ps, const struct tensor *img, int64_t b, double *x)
{
    enum { S = 16, PS = 8, G = 2, T = IRT_IMG, MLPW = 96 };
    double pix[3 * S * S], h[T * IRV], q[T * IRV], kk[T * IRV], vv[T * IRV], a[T * IRV], m[T * MLPW];
    ref_preprocess(img, b, S, pix);
    /* patches (conv with bias), the class token first, positions */
    const struct tensor *pw = P0(ps, "blip.visual_encoder.patch_embed.proj.weight"),
                        *pb = P0(ps, "blip.visual_encoder.patch_embed.proj.bias");
    for (int d = 0; d < IRV; d++) x[d] = tensor_get_flat(P0(ps, "blip.visual_encoder.cls_token"), d);
    for (int p = 0; p < G * G; p++)
        for (int o = 0; o < IRV; o++) {
            double acc = tensor_get_flat(pb, o);
            for (int c = 0; c < 3; c++)
                for (int ky = 0; ky < PS; ky++)
                    for (int kx = 0; kx < PS; kx++)
                        acc += tensor_get(pw, (int64_t[]){o, c, ky, kx}) *
                               pix[(c * S + (p / G) * PS + ky) * S + (p % G) * PS + kx];
            x[(1 + p) * IRV + o] = acc;
        }
    for (int e = 0; e < T * IRV; e++) x[e] += tensor_get_flat(P0(ps, "blip.visual_encoder.pos_embed"), e);
    for (int l = 0; l < 2; l++) {
        memcpy(h, x, sizeof h);
        ref_ln_rows(h, T, IRV, P(ps, "blip.visual_encoder.blocks.%d.norm1.weight", l),
                   P(ps, "blip.visual_encoder.blocks.%d.norm1.bias", l), 1e-6);
        double qkv[T * 3 * IRV];
        ref_rows(P(ps, "blip.visual_encoder.blocks.%d.attn.qkv.weight", l),
                 P(ps, "blip.visual_encoder.blocks.%d.attn.qkv.bias", l), h, T, qkv);
        for (int r = 0; r < T; r++)
            for (int d = 0; d < IRV; d++)
                q[r * IRV + d] = qkv[r * 3 * IRV + d], kk[r * IRV + d] = qkv[r * 3 * IRV + IRV + d],
                vv[r * IRV + d] = qkv[r * 3 * IRV + 2 * IRV + d];
        ref_attention(q, T, kk, vv, T, IRV, 1, a);
        ref_rows(P(ps, "blip.visual_encoder.blocks.%d.attn.proj.weight", l),
                 P(ps, "blip.visual_encoder.blocks.%d.attn.proj.bias", l), a, T, h);
        for (int e = 0; e < T * IRV; e++) x[e] += h[e];
        memcpy(h, x, sizeof h);
        ref_ln_rows(h, T, IRV, P(ps, "blip.visual_encoder.blocks.%d.norm2.weight", l),
                   P(ps, "blip.visual_encoder.blocks.%d.norm2.bias", l), 1e-6);
        ref_rows(P(ps, "blip.visual_encoder.blocks.%d.mlp.fc1.weight", l),
                 P(ps, "blip.visual_encoder.blocks.%d.mlp.fc1.bias", l), h, T, m);
        for (int e = 0; e < T * MLPW; e++) m[e] = gelu_ref(m[e]);
        ref_rows(P(ps, "blip.visual_encoder.blocks.%d.mlp.fc2.weight", l),
                 P(ps, "blip.visual_encoder.blocks.%d.mlp.fc2.bias", l), m, T, h);
        for (int e = 0; e < T * IRV; e++) x[e] += h[e];
    }
    ref_ln_rows(x, T, IRV, P0(ps, "blip.visual_encoder.norm.weight"), P0(ps, "blip.visual_encoder.norm.bias"),
               1e-6);
}

static double ref_imagereward(const struct nn_params *ps, const struct wp_tokenizer *tok, const struct tensor *img,
                              int64_t b, const char *text)
{
    enum { T = IRT_IMG, INTER = 48 };
    double x[T * IRV];
    ref_blip_vit(ps, img, b, x);
    /* the text: [CLS] ids [SEP] without padding (the reference's padded keys weigh exactly 0) */
    int32_t ids[35], mask[35];
    ck_assert(!wp_encode(tok, text, ids, mask, 35));
    int L = 0;
    while (L < 35 && mask[L]) L++;
    double t[IRT * IRH], u[IRT * IRH], tq[IRT * IRH], tk[IRT * IRH], tv[IRT * IRH], ta[IRT * IRH], ti[IRT * INTER];
    for (int r = 0; r < L; r++)
        for (int d = 0; d < IRH; d++)
            t[r * IRH + d] = tensor_get(P0(ps, "blip.text_encoder.embeddings.word_embeddings.weight"),
                                        (int64_t[]){ids[r], d}) +
                             tensor_get(P0(ps, "blip.text_encoder.embeddings.position_embeddings.weight"),
                                        (int64_t[]){r, d});
    ref_ln_rows(t, L, IRH, P0(ps, "blip.text_encoder.embeddings.LayerNorm.weight"),
               P0(ps, "blip.text_encoder.embeddings.LayerNorm.bias"), 1e-12);
    static const char *const att[2] = {"attention", "crossattention"};
    for (int l = 0; l < 2; l++) {
        for (int c = 0; c < 2; c++) {
            const double *kv = c ? x : t;
            const int nk = c ? T : L;
#define TP(what) bert_param(ps, l, att[c], what)
            ref_rows(TP("self.query.weight"), TP("self.query.bias"), t, L, tq);
            ref_rows(TP("self.key.weight"), TP("self.key.bias"), kv, nk, tk);
            ref_rows(TP("self.value.weight"), TP("self.value.bias"), kv, nk, tv);
            ref_attention(tq, L, tk, tv, nk, IRH, 2, ta);
            ref_rows(TP("output.dense.weight"), TP("output.dense.bias"), ta, L, u);
            for (int e = 0; e < L * IRH; e++) t[e] += u[e];
            ref_ln_rows(t, L, IRH, TP("output.LayerNorm.weight"), TP("output.LayerNorm.bias"), 1e-12);
#undef TP
        }
        ref_rows(P(ps, "blip.text_encoder.encoder.layer.%d.intermediate.dense.weight", l),
                 P(ps, "blip.text_encoder.encoder.layer.%d.intermediate.dense.bias", l), t, L, ti);
        for (int e = 0; e < L * INTER; e++) ti[e] = gelu_ref(ti[e]);
        ref_rows(P(ps, "blip.text_encoder.encoder.layer.%d.output.dense.weight", l),
                 P(ps, "blip.text_encoder.encoder.layer.%d.output.dense.bias", l), ti, L, u);
        for (int e = 0; e < L * IRH; e++) t[e] += u[e];
        ref_ln_rows(t, L, IRH, P(ps, "blip.text_encoder.encoder.layer.%d.output.LayerNorm.weight", l),
                   P(ps, "blip.text_encoder.encoder.layer.%d.output.LayerNorm.bias", l), 1e-12);
    }
    /* the MLP on [CLS] (no activations), then ImageReward's normalisation */
    double y[64], z[64];
    memcpy(y, t, sizeof(double) * IRH);
    static const int layer[5] = {0, 2, 4, 6, 7};
    for (int i = 0; i < 5; i++) {
        ref_affine(P(ps, "mlp.layers.%d.weight", layer[i]), P(ps, "mlp.layers.%d.bias", layer[i]), y, z);
        memcpy(y, z, sizeof z);
    }
    return (y[0] - 0.16717362830052426) / 1.0333394966054072;
}

/* a tiny ImageReward folder: random towers and head in f64 (ImageReward.safetensors), its
 * med_config.json and vocab.txt; extra: a tensor no part of the model has */
static void write_imagereward(const char *dir, struct nn_params *ps, bool extra)
{
    char path[700];
    snprintf(path, sizeof path, "%s/med_config.json", dir);
    FILE *f = fopen(path, "w");
    ck_assert(f);
    fprintf(f, "{\"architectures\": [\"BertModel\"], \"attention_probs_dropout_prob\": 0.1, \"hidden_act\": \"gelu\", "
               "\"hidden_dropout_prob\": 0.1, \"hidden_size\": %d, \"initializer_range\": 0.02, \"intermediate_size\": 48, "
               "\"layer_norm_eps\": 1e-12, \"max_position_embeddings\": %d, \"model_type\": \"bert\", "
               "\"num_attention_heads\": 2, \"num_hidden_layers\": 2, \"pad_token_id\": 0, \"type_vocab_size\": 2, "
               "\"vocab_size\": 20, \"encoder_width\": 768, \"add_cross_attention\": true}\n", IRH, IRT);
    fclose(f);
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    f = fopen(path, "w");
    ck_assert(f && fwrite(ir_vocab, 1, sizeof ir_vocab - 1, f) == sizeof ir_vocab - 1);
    fclose(f);
    nn_params_init(ps, DTYPE_F64, DEVICE_CPU);
    struct blip_vit vit;
    struct blip_bert bert;
    const struct blip_vit_config vc = {.width = IRV, .depth = 2, .heads = 1, .patch = 8, .image_size = 16, .mlp = 96};
    const struct blip_bert_config bc = {.vocab_size = 20, .hidden_size = IRH, .intermediate_size = 48,
                                        .max_position_embeddings = IRT, .encoder_width = IRV, .num_hidden_layers = 2,
                                        .num_attention_heads = 2, .layer_norm_eps = 1e-12};
    ck_assert(!blip_vit_init(&vit, &vc, ps, "blip.visual_encoder") && !blip_bert_init(&bert, &bc, ps, "blip.text_encoder"));
    blip_vit_free(&vit);
    blip_bert_free(&bert);
    static const int64_t hd[6] = {IRH, 16, 8, 6, 4, 1};
    static const int layer[5] = {0, 2, 4, 6, 7};
    char n[64];
    for (int i = 0; i < 5; i++) {
        snprintf(n, sizeof n, "mlp.layers.%d.weight", layer[i]);
        ck_assert(nn_param_new(ps, "", n, 2, (int64_t[]){hd[i + 1], hd[i]}));
        snprintf(n, sizeof n, "mlp.layers.%d.bias", layer[i]);
        ck_assert(nn_param_new(ps, "", n, 1, (int64_t[]){hd[i + 1]}));
    }
    ck_assert(nn_param_new(ps, "", "blip.vision_proj.weight", 2, (int64_t[]){8, IRV}));   /* the image embeddings */
    ck_assert(nn_param_new(ps, "", "blip.vision_proj.bias", 1, (int64_t[]){8}));
    ck_assert(nn_param_new(ps, "", "blip.text_proj.weight", 2, (int64_t[]){8, IRH}));   /* unused, skipped */
    if (extra) ck_assert(nn_param_new(ps, "", "blip.bogus", 1, (int64_t[]){2}));
    /* layers of unit variance, norms away from 1, biases away from 0 */
    for (int i = 0; i < ps->n; i++) {
        struct tensor *v = ps->v[i].t;
        const bool norm = strstr(ps->v[i].name, "norm") || strstr(ps->v[i].name, "LayerNorm");
        const double a = v->ndim >= 2 ? 1.7 / sqrt((double)(tensor_numel(v) / v->shape[0])) : 0.3;
        ck_assert(!tensor_copy_(v, norm && strstr(ps->v[i].name, "weight") ? test_uniform(DTYPE_F64, v->ndim, v->shape, 0.6, 1.4)
                                                                         : test_uniform(DTYPE_F64, v->ndim, v->shape, -a, a)));
    }
    snprintf(path, sizeof path, "%s/ImageReward.safetensors", dir);
    ck_assert_int_eq(nn_params_save(ps, path), STATUS_OK);
}

START_TEST(test_imagereward_tiny)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    char dir[] = "/tmp/test_reward_ir_XXXXXX", spec[600], cmd[700];
    ck_assert(mkdtemp(dir));
    struct nn_params ps;
    write_imagereward(dir, &ps, false);
    struct wp_tokenizer *tok = wp_tokenizer_from_memory(ir_vocab, sizeof ir_vocab - 1, "ir vocab");
    ck_assert(tok && wp_add_special(tok, "[DEC]") == 18 && wp_add_special(tok, "[ENC]") == 19);
    snprintf(spec, sizeof spec, "imagereward:%s", dir);
    struct draft_reward *r = draft_reward_create_on(spec, DTYPE_F64, DEVICE_CPU), *r32 = draft_reward_create(spec);
    snprintf(spec, sizeof spec, "imagereward:%s,text=Cafe, un-playing!", dir);
    struct draft_reward *rt = draft_reward_create_on(spec, DTYPE_F64, DEVICE_CPU);
    ck_assert_msg(r && r32 && rt, "%s", tensor_error());
    ck_assert_str_eq(r->name, "imagereward");
    /* 24 x 20: CLIP's resize and crop to 16; the second prompt is cut to [CLS] + 33 + [SEP]; the
     * first and third have one length (one text-tower call for the two) */
    char longp[400] = "";
    for (int i = 0; i < 40; i++) strcat(longp, i % 3 ? "cat " : "a photo ");
    const char *prompts[3] = {"A photo of a CAT.", longp, "a photo of a cat!"};
    struct tensor *img = test_uniform(DTYPE_F64, 4, (int64_t[]){3, 3, 24, 20}, -1.05, 1.05);
    struct tensor *s = draft_reward_score(r, img, prompts), *st = draft_reward_score(rt, img, NULL);
    struct tensor *s32 = draft_reward_score(r32, tensor_to_dtype(img, DTYPE_F32), prompts);
    ck_assert_msg(s && st && s32, "%s", tensor_error());
    double err = 0, err32 = 0;
    for (int64_t b = 0; b < 3; b++) {
        const double ref = ref_imagereward(&ps, tok, img, b, prompts[b]);
        const double reft = ref_imagereward(&ps, tok, img, b, "Cafe, un-playing!");
        printf("imagereward tiny image %lld: %.10f (ref %.10f, f32 %.7f), text= %.10f (ref %.10f)\n", (long long)b,
               tensor_get_flat(s, b), ref, tensor_get_flat(s32, b), tensor_get_flat(st, b), reft);
        err = fmax(err, fmax(fabs(tensor_get_flat(s, b) - ref), fabs(tensor_get_flat(st, b) - reft)) / fmax(1, fabs(ref)));
        err32 = fmax(err32, fabs(tensor_get_flat(s32, b) - ref) / fmax(1, fabs(ref)));
    }
    printf("imagereward tiny vs float64 loops: f64 rel %.2e, f32 rel %.2e\n", err, err32);
    ck_assert_double_lt(err, 1e-12);
    ck_assert_double_lt(err32, 1e-5);
    ck_assert(fabs(tensor_get_flat(s, 0) - tensor_get_flat(s, 1)) > 1e-3);   /* the inputs matter */
    ck_assert(draft_reward_score(r, img, NULL) == NULL && strstr(tensor_error(), "no prompts"));
    /* its image embeddings (--diversity-model): normalize(vision_proj(the ViT's class token)) */
    ck_assert(draft_reward_has_image_tower(r));
    struct tensor *emb = draft_reward_image_embeds(r, img);
    ck_assert_msg(emb && emb->ndim == 2 && emb->shape[0] == 3 && emb->shape[1] == 8, "%s", tensor_error());
    double eerr = 0;
    for (int64_t b = 0; b < 2; b++) {
        double tokens[IRT_IMG * IRV], e[8];
        ref_blip_vit(&ps, img, b, tokens);   /* the class token first */
        ref_affine(P0(&ps, "blip.vision_proj.weight"), P0(&ps, "blip.vision_proj.bias"), tokens, e);
        eerr = fmax(eerr, normalized_err(emb, b, e, 8));
    }
    printf("imagereward tiny image embeds vs float64 loops: max abs %.2e\n", eerr);
    ck_assert_double_lt(eerr, 1e-12);

    struct pixel_ctx pc = {.r = r, .prompts = prompts};
    struct tensor *p = pixel_setup(&pc, tensor_clone(img), 8);
    ck_assert(gradcheck("imagereward tiny d score / d pixels", pixel_fn, &pc, 1, &p,
                        &(struct gc_opts){.tol = 1e-6, .f32_tol = -1}));
    draft_reward_free(r);
    draft_reward_free(r32);
    draft_reward_free(rt);
    nn_params_free(&ps);

    /* refused: an unknown tensor, a missing vocabulary, a bad spec */
    write_imagereward(dir, &ps, true);
    nn_params_free(&ps);
    snprintf(spec, sizeof spec, "imagereward:%s", dir);
    ck_assert(draft_reward_create(spec) == NULL);
    ck_assert_msg(strstr(tensor_error(), "unexpected tensor 'blip.bogus'"), "%s", tensor_error());
    snprintf(cmd, sizeof cmd, "%s/vocab.txt", dir);
    ck_assert(unlink(cmd) == 0);
    ck_assert(draft_reward_create(spec) == NULL);
    ck_assert_msg(strstr(tensor_error(), "has no vocab.txt (bert-base-uncased's)"), "%s", tensor_error());
    ck_assert(draft_reward_create("imagereward:") == NULL && strstr(tensor_error(), "expected imagereward:<folder>"));
    ck_assert(draft_reward_spec_check("imagereward:/x,text=a") == STATUS_OK);
    wp_tokenizer_free(tok);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert(system(cmd) == 0);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- errors */

START_TEST(test_errors)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct {
        const char *spec, *want;
    } cases[] = {
        {"", "valid specs"},
        {"sharpness", "colorfulness"},   /* unknown: the message lists the valid ones */
        {"brightness=abc", "'abc' is not a number"},
        {"brightness=", "not a number"},
        {"contrast=0.5x", "'0.5x'"},
        {"aesthetic:/nonexistent/clip", "aesthetic:<clip_vision_dir>,<head file>"},
        {"aesthetic:/nonexistent/clip,/nonexistent/head.pth", "/nonexistent/clip/config.json"},
        {"clip:/nonexistent/clip", "/nonexistent/clip/config.json"},
        {"clip:/tmp,bogus", "unknown option 'bogus'"},
        {"clip:", "folder is missing"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct draft_reward *r = draft_reward_create(cases[i].spec);
        ck_assert_msg(r == NULL, "spec '%s' accepted", cases[i].spec);
        printf("spec '%s' -> %.*s\n", cases[i].spec, (int)strcspn(tensor_error(), "\n"), tensor_error());
        ck_assert_msg(strstr(tensor_error(), cases[i].want), "spec '%s': message '%s' lacks '%s'", cases[i].spec,
                      tensor_error(), cases[i].want);
    }
    /* draft_reward_spec_check: the form only, no file read; what it refuses, creation refuses too */
    static const char *const form_ok[] = {"colorfulness", "aesthetic:/nonexistent/clip,/nonexistent/h.pth",
                                          "sum:red;0.5*clip:/nonexistent,text=a*b;-1*jpeg", "classify:/x,text=a|b"};
    for (size_t i = 0; i < sizeof form_ok / sizeof *form_ok; i++)
        ck_assert_msg(draft_reward_spec_check(form_ok[i]) == STATUS_OK, "'%s': %s", form_ok[i], tensor_error());
    static const struct {
        const char *spec, *want;
    } form_bad[] = {{"", "reward spec is empty"}, {"colourfulness", "unknown reward spec 'colourfulness'"},
                    {"brightness=abc", "'abc' is not a number"}, {"sum:red;sum:jpeg", "a sum inside a sum"},
                    {"sum:red;2*colourful", "term 'colourful': unknown reward spec"}};
    for (size_t i = 0; i < sizeof form_bad / sizeof *form_bad; i++) {
        ck_assert_msg(draft_reward_spec_check(form_bad[i].spec) != STATUS_OK, "'%s' passed", form_bad[i].spec);
        ck_assert_msg(strstr(tensor_error(), form_bad[i].want), "'%s': '%s' lacks '%s'", form_bad[i].spec, tensor_error(),
                      form_bad[i].want);
        ck_assert(draft_reward_create(form_bad[i].spec) == NULL);
    }
    char hp[512];
    char enc[600];
    if (parity_path("tiny-sd/image_encoder/config.json", enc, sizeof enc)) {
        *strstr(enc, "/config.json") = 0;
        char spec[1300];
        snprintf(spec, sizeof spec, "aesthetic:%s,/nonexistent/head.pth", enc);
        ck_assert(draft_reward_create(spec) == NULL);
        ck_assert(strstr(tensor_error(), "/nonexistent/head.pth"));
        (void)hp;
    }
    /* bad images */
    struct draft_reward *r = draft_reward_create("colorfulness");
    ck_assert(r);
    ck_assert(draft_reward_score(r, tensor_zeros(DTYPE_F32, 4, (int64_t[]){2, 4, 8, 8}, DEVICE_CPU), NULL) == NULL);
    ck_assert(strstr(tensor_error(), "[B, 3, H, W]"));
    ck_assert(draft_reward_score(r, tensor_zeros(DTYPE_I32, 4, (int64_t[]){2, 3, 8, 8}, DEVICE_CPU), NULL) == NULL);
    ck_assert(draft_reward_score(r, NULL, NULL) == NULL);
    draft_reward_free(r);
    r = draft_reward_create("jpeg");
    ck_assert(draft_reward_score(r, tensor_zeros(DTYPE_F32, 4, (int64_t[]){1, 3, 4, 16}, DEVICE_CPU), NULL) == NULL);
    ck_assert(strstr(tensor_error(), "8x8"));
    draft_reward_free(r);
    draft_reward_free(NULL);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("reward");
    TCase *tc = tcase_create("reward");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_analytic_forward);
    tcase_add_test(tc, test_analytic_gradcheck);
    tcase_add_test(tc, test_sum);
    tcase_add_test(tc, test_preprocess);
    tcase_add_test(tc, test_head_parity);
    tcase_add_test(tc, test_aesthetic_tiny);
    tcase_add_test(tc, test_clip_tiny);
    tcase_add_test(tc, test_openclip_tiny);
    tcase_add_test(tc, test_owlvit_tiny);
    tcase_add_test(tc, test_imagereward_tiny);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
