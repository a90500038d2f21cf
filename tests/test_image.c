/* test_image.c — resize (nearest / bilinear / bicubic), upsample_nearest2x and avg_pool2d:
 * gradchecks, forward and backward values against a naive float64 transcription of torch's
 * definitions (small, and large enough for the threaded paths), values worked out by hand,
 * the reward model's 512x512 -> 224x224 bicubic resize, determinism and errors. */
#include "tests/harness.h"

#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- naive references */

/* torch's bicubic kernel (Keys, A = -0.75) as a function of the distance to the tap */
static double ref_keys(double d)
{
    const double A = -0.75;
    d = fabs(d);
    if (d <= 1) return (A + 2) * d * d * d - (A + 3) * d * d + 1;
    if (d < 2) return A * d * d * d - 5 * A * d * d + 8 * A * d - 4 * A;
    return 0;
}

static const char *mode_str(enum resize_mode m)
{
    return m == RESIZE_NEAREST ? "nearest" : m == RESIZE_BILINEAR ? "bilinear" : "bicubic";
}

/* The input taps of output index o along one axis (n_in -> n_out), straight from
 * torch.nn.functional.interpolate (aten/src/ATen/native/UpSample.h):
 *   nearest:  src = min(floorf(o * scale), n_in - 1) with scale = (float)n_in / n_out, all
 *             in float32 (torch's f32 forward and its backward) — so 2 -> 82 maps o = 41
 *             to 0, not to floor(41 * 2 / 82) = 1;
 *   others:   src = scale * o with scale = (n_in-1)/(n_out-1) (0 if n_out = 1) when
 *             align_corners, else src = (n_in / n_out) * (o + 0.5) - 0.5;
 *   bilinear: src clamped at 0, taps floor(src) and the next one (clamped to the edge),
 *             weights 1 - frac and frac;
 *   bicubic:  taps floor(src) - 1 .. floor(src) + 2 clamped into the image, weight
 *             keys(src - tap) each. */
static int ref_taps(int64_t o, int64_t n_in, int64_t n_out, enum resize_mode mode, bool ac, int64_t *idx, double *w)
{
    if (mode == RESIZE_NEAREST) {
        const float scale = (float)n_in / (float)n_out;
        int64_t i = (int64_t)floorf((float)o * scale);
        idx[0] = i < n_in - 1 ? i : n_in - 1;
        w[0] = 1;
        return 1;
    }
    double s = ac ? (n_out > 1 ? (double)(n_in - 1) / (double)(n_out - 1) : 0.0) * (double)o
                  : (double)n_in / (double)n_out * ((double)o + 0.5) - 0.5;
    if (mode == RESIZE_BILINEAR) {
        if (s < 0) s = 0;
        int64_t i0 = (int64_t)floor(s);
        if (i0 > n_in - 1) i0 = n_in - 1;
        idx[0] = i0;
        idx[1] = i0 + 1 < n_in ? i0 + 1 : n_in - 1;
        w[0] = 1 - (s - (double)i0);
        w[1] = s - (double)i0;
        return 2;
    }
    const int64_t f = (int64_t)floor(s);
    for (int j = 0; j < 4; j++) {
        int64_t k = f - 1 + j;
        w[j] = ref_keys(s - (double)k);
        idx[j] = k < 0 ? 0 : k > n_in - 1 ? n_in - 1 : k;
    }
    return 4;
}

static double get4(const struct tensor *t, int64_t a, int64_t b, int64_t c, int64_t d)
{
    return tensor_get(t, (int64_t[]){a, b, c, d});
}

/* out[n][c][oy][ox] = sum over taps wy * wx * x[n][c][iy][ix], in f64 */
static struct tensor *ref_resize(const struct tensor *x, int64_t OH, int64_t OW, enum resize_mode mode, bool ac)
{
    const int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    struct tensor *out = tensor_zeros(DTYPE_F64, TENSOR_SHAPE(N, C, OH, OW), DEVICE_CPU);
    double *o = tensor_data_ptr(out);
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t oy = 0; oy < OH; oy++)
                for (int64_t ox = 0; ox < OW; ox++) {
                    int64_t iy[4], ix[4];
                    double wy[4], wx[4], s = 0;
                    int ky = ref_taps(oy, H, OH, mode, ac, iy, wy), kx = ref_taps(ox, W, OW, mode, ac, ix, wx);
                    for (int a = 0; a < ky; a++)
                        for (int b = 0; b < kx; b++) s += wy[a] * wx[b] * get4(x, n, c, iy[a], ix[b]);
                    o[((n * C + c) * OH + oy) * OW + ox] = s;
                }
    return out;
}

/* the transpose: every output scatters dy * wy * wx back to its taps */
static struct tensor *ref_resize_backward(const struct tensor *dy, int64_t H, int64_t W, enum resize_mode mode, bool ac)
{
    const int64_t N = dy->shape[0], C = dy->shape[1], OH = dy->shape[2], OW = dy->shape[3];
    struct tensor *dx = tensor_zeros(DTYPE_F64, TENSOR_SHAPE(N, C, H, W), DEVICE_CPU);
    double *d = tensor_data_ptr(dx);
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t oy = 0; oy < OH; oy++)
                for (int64_t ox = 0; ox < OW; ox++) {
                    int64_t iy[4], ix[4];
                    double wy[4], wx[4], g = get4(dy, n, c, oy, ox);
                    int ky = ref_taps(oy, H, OH, mode, ac, iy, wy), kx = ref_taps(ox, W, OW, mode, ac, ix, wx);
                    for (int a = 0; a < ky; a++)
                        for (int b = 0; b < kx; b++) d[((n * C + c) * H + iy[a]) * W + ix[b]] += wy[a] * wx[b] * g;
                }
    return dx;
}

/* torch's avg_pool2d (no ceil_mode): the window of output (oy, ox) starts at o*stride - pad,
 * ends at min(start + kernel, size + pad); its length there is the count_include_pad
 * divisor; clipped to the image it gives the summed elements and the other divisor. */
static void ref_window(int64_t o, int64_t n, int k, int s, int p, int64_t *lo, int64_t *hi, int64_t *len)
{
    int64_t start = o * s - p, end = start + k < n + p ? start + k : n + p;
    *len = end - start;
    *lo = start < 0 ? 0 : start;
    *hi = end < n ? end : n;
}

static void ref_pool_dims(const struct tensor *x, const struct pool2d_params *p, int64_t *OH, int64_t *OW)
{
    *OH = (x->shape[2] + 2 * p->pad_h - p->kernel_h) / p->stride_h + 1;
    *OW = (x->shape[3] + 2 * p->pad_w - p->kernel_w) / p->stride_w + 1;
}

/* forward (dy == NULL: returns out) or the transpose (returns dx [N,C,H,W] from dy) */
static struct tensor *ref_pool(const struct tensor *x, const struct tensor *dy, const struct pool2d_params *p)
{
    const int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    int64_t OH, OW;
    ref_pool_dims(x, p, &OH, &OW);
    struct tensor *r = dy ? tensor_zeros(DTYPE_F64, TENSOR_SHAPE(N, C, H, W), DEVICE_CPU)
                          : tensor_zeros(DTYPE_F64, TENSOR_SHAPE(N, C, OH, OW), DEVICE_CPU);
    double *d = tensor_data_ptr(r);
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t oy = 0; oy < OH; oy++)
                for (int64_t ox = 0; ox < OW; ox++) {
                    int64_t y0, y1, ly, x0, x1, lx;
                    ref_window(oy, H, p->kernel_h, p->stride_h, p->pad_h, &y0, &y1, &ly);
                    ref_window(ox, W, p->kernel_w, p->stride_w, p->pad_w, &x0, &x1, &lx);
                    double div = p->count_include_pad ? (double)(ly * lx) : (double)((y1 - y0) * (x1 - x0));
                    if (dy) {
                        double g = get4(dy, n, c, oy, ox) / div;
                        for (int64_t iy = y0; iy < y1; iy++)
                            for (int64_t ix = x0; ix < x1; ix++) d[((n * C + c) * H + iy) * W + ix] += g;
                    } else {
                        double s = 0;
                        for (int64_t iy = y0; iy < y1; iy++)
                            for (int64_t ix = x0; ix < x1; ix++) s += get4(x, n, c, iy, ix);
                        d[((n * C + c) * OH + oy) * OW + ox] = s / div;
                    }
                }
    return r;
}

/* y = op(x) with x a fresh leaf, then dx = d(sum(y * dy))/dx; returns y, sets *dx */
typedef struct tensor *(*image_op)(struct tensor *x, const void *ctx);

static struct tensor *run_op(image_op op, const void *ctx, struct tensor *x, struct tensor *dy, struct tensor **dx)
{
    struct tensor *leaf = ag_detach(x);
    ag_set_requires_grad(leaf, true);
    struct tensor *y = op(leaf, ctx);
    ck_assert_msg(y != NULL, "forward failed: %s", tensor_error());
    ck_assert_int_eq(ag_backward(y, tensor_to_dtype(dy, y->dtype), false), STATUS_OK);
    *dx = leaf->grad;
    ck_assert(*dx != NULL);
    return y;
}

/* ---------------------------------------------------------------- resize: gradchecks */

struct resize_case {
    enum resize_mode mode;
    bool ac;
    int64_t oh, ow;
};

static struct tensor *f_resize(struct tensor *const *in, void *ctx)
{
    const struct resize_case *c = ctx;
    return ag_resize(in[0], c->oh, c->ow, c->mode, c->ac);
}

/* mixed, up, down and a 1-pixel-wide output (align_corners then reads the first pixel) */
static const int64_t geoms[][4] = {{7, 5, 4, 9}, {3, 4, 8, 7}, {9, 8, 4, 3}, {4, 3, 1, 2}};
#define N_GEOMS (int)(sizeof geoms / sizeof *geoms)
static const struct { enum resize_mode mode; bool ac; } mode_cases[] = {
    {RESIZE_NEAREST, false}, {RESIZE_BILINEAR, false}, {RESIZE_BILINEAR, true},
    {RESIZE_BICUBIC, false}, {RESIZE_BICUBIC, true},
};
#define N_MODES (int)(sizeof mode_cases / sizeof *mode_cases)

START_TEST(test_resize_gradcheck)
{
    LEAK_CHECK_BEGIN();
    const int m = _i / N_GEOMS, g = _i % N_GEOMS;
    struct resize_case c = {mode_cases[m].mode, mode_cases[m].ac, geoms[g][2], geoms[g][3]};
    for (int nc = 0; nc < 2; nc++) {
        tensor_scope_begin();
        struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 2, geoms[g][0], geoms[g][1]), -1, 1);
        if (nc) x = test_noncontig(x);
        char label[128];
        snprintf(label, sizeof label, "resize[%s,%lldx%lld->%lldx%lld,align_corners=%d%s]", mode_str(c.mode),
                 (long long)geoms[g][0], (long long)geoms[g][1], (long long)c.oh, (long long)c.ow, c.ac,
                 nc ? ",noncontig" : "");
        ck_assert(gradcheck(label, f_resize, &c, 1, &x, NULL));
        tensor_scope_end();
    }
    LEAK_CHECK_END();
}
END_TEST

static struct tensor *f_up2(struct tensor *const *in, void *ctx)
{
    (void)ctx;
    return ag_upsample_nearest2x(in[0]);
}

START_TEST(test_upsample_gradcheck)
{
    LEAK_CHECK_BEGIN();
    for (int nc = 0; nc < 2; nc++) {
        tensor_scope_begin();
        struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3, 3, 4), -1, 1);
        if (nc) x = test_noncontig(x);
        ck_assert(gradcheck(nc ? "upsample_nearest2x[3x4->6x8,noncontig]" : "upsample_nearest2x[3x4->6x8]", f_up2,
                            NULL, 1, &x, NULL));
        tensor_scope_end();
    }
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- resize: reference values */

static struct tensor *op_resize(struct tensor *x, const void *ctx)
{
    const struct resize_case *c = ctx;
    return ag_resize(x, c->oh, c->ow, c->mode, c->ac);
}

/* f64: to rounding; f32: inputs are f32 values, the reference is exact on them, so only
 * the final rounding (and the kernel's f64 accumulation) separates them */
static void check_resize_reference(struct tensor *x, const struct resize_case *c, const char *tag)
{
    tensor_scope_begin();
    const int64_t H = x->shape[2], W = x->shape[3];
    struct tensor *dy = test_uniform(DTYPE_F64, TENSOR_SHAPE(x->shape[0], x->shape[1], c->oh, c->ow), -1, 1);
    if (x->dtype == DTYPE_F32) dy = tensor_to_dtype(dy, DTYPE_F32);   /* exact in both dtypes */
    struct tensor *dx;
    struct tensor *y = run_op(op_resize, c, x, test_noncontig(dy), &dx);
    struct tensor *yr = ref_resize(x, c->oh, c->ow, c->mode, c->ac);
    struct tensor *dxr = ref_resize_backward(dy, H, W, c->mode, c->ac);
    const double fr = test_rel_err(y, yr), br = test_rel_err(dx, dxr);
    const double fa = test_max_abs_diff(y, yr), ba = test_max_abs_diff(dx, dxr);
    printf("reference resize[%s,%lldx%lld->%lldx%lld,align_corners=%d,%s%s] fwd_rel=%.1e bwd_rel=%.1e\n",
           mode_str(c->mode), (long long)H, (long long)W, (long long)c->oh, (long long)c->ow, c->ac,
           dtype_name(x->dtype), tag, fr, br);
    if (x->dtype == DTYPE_F64) {
        ck_assert_msg(fa < 1e-13 && ba < 1e-12, "f64 max abs diff fwd %.3g bwd %.3g", fa, ba);
    } else {
        ck_assert_msg(fr < 3e-7 && br < 3e-7 && fa < 1e-6 && ba < 1e-5,
                      "f32 fwd rel %.3g abs %.3g, bwd rel %.3g abs %.3g", fr, fa, br, ba);
    }
    tensor_scope_end();
}

START_TEST(test_resize_reference)
{
    LEAK_CHECK_BEGIN();
    const int m = _i;
    /* small shapes, then shapes whose work crosses CPU_PAR_MIN (threaded paths) */
    static const int64_t shapes[][6] = {
        {2, 3, 7, 5, 4, 9}, {1, 2, 5, 6, 11, 13}, {2, 3, 40, 50, 130, 90}, {2, 3, 90, 70, 33, 41},
    };
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        const int64_t *s = shapes[k];
        struct resize_case c = {mode_cases[m].mode, mode_cases[m].ac, s[4], s[5]};
        tensor_scope_begin();
        struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(s[0], s[1], s[2], s[3]), -1, 1);
        check_resize_reference(x, &c, "");
        check_resize_reference(tensor_to_dtype(x, DTYPE_F32), &c, "");
        if (k >= 2) check_resize_reference(test_noncontig(tensor_to_dtype(x, DTYPE_F32)), &c, ",noncontig");
        tensor_scope_end();
    }
    LEAK_CHECK_END();
}
END_TEST

/* the reward model's preprocessing: a 512x512 image to CLIP's 224x224, bicubic */
START_TEST(test_resize_reward_model)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = test_uniform(DTYPE_F32, TENSOR_SHAPE(1, 1, 512, 512), 0, 1);
    struct resize_case c = {RESIZE_BICUBIC, false, 224, 224};
    check_resize_reference(x, &c, ",reward_model");
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- values by hand */

static struct tensor *row(int n, const double *v)
{
    return tensor_from_data(DTYPE_F64, TENSOR_SHAPE(1, 1, 1, n), v);
}

static void expect_row(const struct tensor *y, int n, const double *v, const char *what)
{
    ck_assert_msg(y != NULL, "%s: %s", what, tensor_error());
    ck_assert_int_eq(tensor_numel(y), n);
    for (int i = 0; i < n; i++)
        ck_assert_msg(fabs(tensor_get_flat(y, i) - v[i]) < 1e-14, "%s[%d] = %.17g, expected %.17g", what, i,
                      tensor_get_flat(y, i), v[i]);
}

START_TEST(test_known_values)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = row(2, (double[]){1, 3});

    /* bilinear, 2 -> 4, align_corners=0: src = (2/4)(o + 0.5) - 0.5 = -0.25, 0.25, 0.75,
     * 1.25. -0.25 clamps to 0 -> 1; 0.25 -> 1 + 0.25*(3-1) = 1.5; 0.75 -> 2.5; 1.25 has
     * floor 1 = last pixel, both taps on it -> 3. */
    expect_row(ag_resize(x, 1, 4, RESIZE_BILINEAR, false), 4, (double[]){1, 1.5, 2.5, 3}, "bilinear ac=0");

    /* bilinear, 2 -> 4, align_corners=1: src = o * (2-1)/(4-1) = 0, 1/3, 2/3, 1 -> the line
     * through the corner pixels: 1, 1 + 2/3, 1 + 4/3, 3. */
    expect_row(ag_resize(x, 1, 4, RESIZE_BILINEAR, true), 4, (double[]){1, 5.0 / 3, 7.0 / 3, 3}, "bilinear ac=1");

    /* bicubic, 2 -> 4, align_corners=0: src as above but unclamped. With A = -0.75,
     * k1(t) = 1.25 t^3 - 2.25 t^2 + 1 and k2(t) = -0.75 t^3 + 3.75 t^2 - 6 t + 3:
     *   k1(0.25) = 0.87890625, k1(0.75) = 0.26171875, k2(1.25) = -0.10546875, k2(1.75) = -0.03515625.
     * o=0: src -0.25, floor -1, t = 0.75, taps -2,-1,0,1 -> pixels 0,0,0,1 with weights
     *   k2(1.75), k1(0.75), k1(0.25), k2(1.25): 1.10546875 * 1 - 0.10546875 * 3 = 0.7890625.
     * o=1: src 0.25, t = 0.25, taps -1,0,1,2 -> pixels 0,0,1,1, weights k2(1.25), k1(0.25),
     *   k1(0.75), k2(1.75): 0.7734375 * 1 + 0.2265625 * 3 = 1.453125.
     * o=2,3 mirror o=1,0 around the midpoint 2: 2.546875, 3.2109375 (the cubic overshoots 3). */
    expect_row(ag_resize(x, 1, 4, RESIZE_BICUBIC, false), 4, (double[]){0.7890625, 1.453125, 2.546875, 3.2109375},
               "bicubic ac=0");

    /* bicubic, 2 -> 4, align_corners=1: src = o/3. o=0 and o=3 land on pixels (t = 0:
     * weights 0,1,0,0). o=1: t = 1/3, taps -1,0,1,2 -> pixels 0,0,1,1 with weights
     * k2(4/3) = -6/54, k1(1/3) = 43/54, k1(2/3) = 20/54, k2(5/3) = -3/54: 37/54 on the 1 and
     * 17/54 on the 3 -> 88/54 = 44/27; o=2 mirrors it: 4 - 44/27 = 64/27. */
    expect_row(ag_resize(x, 1, 4, RESIZE_BICUBIC, true), 4, (double[]){1, 44.0 / 27, 64.0 / 27, 3}, "bicubic ac=1");

    /* nearest, 3 -> 5: scale 0.6, src = floor(0, 0.6, 1.2, 1.8, 2.4) = 0, 0, 1, 1, 2 */
    expect_row(ag_resize(row(3, (double[]){10, 20, 30}), 1, 5, RESIZE_NEAREST, false), 5,
               (double[]){10, 10, 20, 20, 30}, "nearest 3->5");
    /* nearest, 5 -> 2: scale 2.5, src = 0, floor(2.5) = 2 */
    expect_row(ag_resize(row(5, (double[]){10, 20, 30, 40, 50}), 1, 2, RESIZE_NEAREST, false), 2,
               (double[]){10, 30}, "nearest 5->2");
    /* nearest, 2 -> 82 at o = 40..42: torch's float32 scale 2/82 rounds to just under 1/41,
     * so 41 * scale = 0.99999994 floors to 0; o = 42 gives 1.024... -> 1 */
    struct tensor *y82 = ag_resize(row(2, (double[]){10, 20}), 1, 82, RESIZE_NEAREST, false);
    ck_assert(y82 != NULL);
    ck_assert_double_eq(tensor_get_flat(y82, 40), 10);
    ck_assert_double_eq(tensor_get_flat(y82, 41), 10);
    ck_assert_double_eq(tensor_get_flat(y82, 42), 20);

    /* 2-D bilinear, align_corners=1, [[1,2],[3,4]] -> 3x3: the centre is the mean 2.5, edge
     * midpoints average their two corners */
    struct tensor *sq = tensor_from_data(DTYPE_F64, TENSOR_SHAPE(1, 1, 2, 2), (double[]){1, 2, 3, 4});
    expect_row(ag_resize(sq, 3, 3, RESIZE_BILINEAR, true), 9, (double[]){1, 1.5, 2, 2, 2.5, 3, 3, 3.5, 4},
               "bilinear 2x2->3x3 ac=1");
    /* upsample_nearest2x repeats each pixel in a 2x2 block */
    expect_row(ag_upsample_nearest2x(sq), 16, (double[]){1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4}, "upsample2x");

    /* avg_pool2d 2x2 stride 2 on 1..16 (4x4): block means (1+2+5+6)/4 = 3.5, 5.5, 11.5, 13.5 */
    double v16[16];
    for (int i = 0; i < 16; i++) v16[i] = i + 1;
    struct tensor *x16 = tensor_from_data(DTYPE_F64, TENSOR_SHAPE(1, 1, 4, 4), v16);
    struct pool2d_params p2 = {.kernel_h = 2, .kernel_w = 2, .stride_h = 2, .stride_w = 2};
    expect_row(ag_avg_pool2d(x16, &p2), 4, (double[]){3.5, 5.5, 11.5, 13.5}, "avg_pool2d 2x2/2");

    /* 3x3 stride 1 pad 1 on 1..9 (3x3). Corner: 1+2+4+5 = 12 over 9 (pad counted) or 4 ->
     * 4/3 or 3; edge (0,1): 1+..+6 = 21 over 9 or 6 -> 7/3 or 3.5; centre: 45/9 = 5. */
    double v9[9];
    for (int i = 0; i < 9; i++) v9[i] = i + 1;
    struct tensor *x9 = tensor_from_data(DTYPE_F64, TENSOR_SHAPE(1, 1, 3, 3), v9);
    struct pool2d_params p3 = {.kernel_h = 3, .kernel_w = 3, .stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1,
                               .count_include_pad = true};
    expect_row(ag_avg_pool2d(x9, &p3), 9,
               (double[]){12.0 / 9, 21.0 / 9, 16.0 / 9, 27.0 / 9, 5, 33.0 / 9, 24.0 / 9, 39.0 / 9, 28.0 / 9},
               "avg_pool2d 3x3/1 pad 1 include");
    p3.count_include_pad = false;
    expect_row(ag_avg_pool2d(x9, &p3), 9, (double[]){3, 3.5, 4, 4.5, 5, 5.5, 6, 6.5, 7},
               "avg_pool2d 3x3/1 pad 1 exclude");

    /* 2x2 average pooling undoes the nearest 2x upsampler, and its gradient is the identity */
    struct tensor *leaf = ag_detach(test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3, 5, 4), -1, 1));
    ag_set_requires_grad(leaf, true);
    struct tensor *back = ag_avg_pool2d(ag_upsample_nearest2x(leaf), &p2);
    ck_assert(back != NULL);
    ck_assert_double_eq(test_max_abs_diff(back, leaf), 0);
    struct tensor *g = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3, 5, 4), -1, 1);
    ck_assert_int_eq(ag_backward(back, g, false), STATUS_OK);
    ck_assert_double_eq(test_max_abs_diff(leaf->grad, g), 0);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- upsample_nearest2x */

static struct tensor *op_up2(struct tensor *x, const void *ctx)
{
    (void)ctx;
    return ag_upsample_nearest2x(x);
}

/* the dedicated 2x path (contiguous and strided, threaded) against the general definition */
START_TEST(test_upsample_reference)
{
    LEAK_CHECK_BEGIN();
    for (int k = 0; k < 4; k++) {
        tensor_scope_begin();
        const enum dtype dt = k & 1 ? DTYPE_F32 : DTYPE_F64;
        struct tensor *x = test_uniform(dt, TENSOR_SHAPE(2, 4, 33, 47), -1, 1);
        if (k & 2) x = test_noncontig(x);
        struct tensor *dy = test_uniform(dt, TENSOR_SHAPE(2, 4, 66, 94), -1, 1), *dx;
        struct tensor *y = run_op(op_up2, NULL, x, k & 2 ? test_noncontig(dy) : dy, &dx);
        struct tensor *yr = ref_resize(x, 66, 94, RESIZE_NEAREST, false);
        struct tensor *dxr = ref_resize_backward(dy, 33, 47, RESIZE_NEAREST, false);
        const double fa = test_max_abs_diff(y, yr), ba = test_max_abs_diff(dx, dxr);
        printf("reference upsample_nearest2x[33x47->66x94,%s%s] fwd_abs=%.1e bwd_abs=%.1e\n", dtype_name(dt),
               k & 2 ? ",noncontig" : "", fa, ba);
        ck_assert(fa == 0);   /* a copy */
        ck_assert(ba < (dt == DTYPE_F32 ? 1e-6 : 1e-15));
        tensor_scope_end();
    }
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- avg_pool2d */

static const struct {
    const char *label;
    struct pool2d_params p;
    int64_t h, w;
} pool_cases[] = {
    {"k=2x2,s=2,p=0", {2, 2, 2, 2, 0, 0, true}, 6, 6},
    {"k=2x2,s=2,p=0", {2, 2, 2, 2, 0, 0, true}, 7, 5},
    {"k=3x3,s=1,p=1,count_include_pad=1", {3, 3, 1, 1, 1, 1, true}, 5, 6},
    {"k=3x3,s=1,p=1,count_include_pad=0", {3, 3, 1, 1, 1, 1, false}, 5, 6},
    {"k=3x2,s=2x1,p=1x1,count_include_pad=0", {3, 2, 2, 1, 1, 1, false}, 6, 5},
};
#define N_POOL (int)(sizeof pool_cases / sizeof *pool_cases)

static struct tensor *f_pool(struct tensor *const *in, void *ctx) { return ag_avg_pool2d(in[0], ctx); }

START_TEST(test_pool_gradcheck)
{
    LEAK_CHECK_BEGIN();
    for (int nc = 0; nc < 2; nc++) {
        tensor_scope_begin();
        struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 2, pool_cases[_i].h, pool_cases[_i].w), -1, 1);
        if (nc) x = test_noncontig(x);
        char label[128];
        snprintf(label, sizeof label, "avg_pool2d[%s,%lldx%lld%s]", pool_cases[_i].label, (long long)pool_cases[_i].h,
                 (long long)pool_cases[_i].w, nc ? ",noncontig" : "");
        ck_assert(gradcheck(label, f_pool, (void *)&pool_cases[_i].p, 1, &x, NULL));
        tensor_scope_end();
    }
    LEAK_CHECK_END();
}
END_TEST

static struct tensor *op_pool(struct tensor *x, const void *ctx) { return ag_avg_pool2d(x, ctx); }

START_TEST(test_pool_reference)
{
    LEAK_CHECK_BEGIN();
    /* 2*3*64*48 outputs * 9 taps: past CPU_PAR_MIN */
    for (int k = 0; k < 3 * N_POOL; k++) {
        tensor_scope_begin();
        const struct pool2d_params *p = &pool_cases[k / 3].p;
        const enum dtype dt = k % 3 ? DTYPE_F32 : DTYPE_F64;
        struct tensor *x = test_uniform(dt, TENSOR_SHAPE(2, 3, 64, 49), -1, 1);
        if (k % 3 == 2) x = test_noncontig(x);
        int64_t OH, OW;
        ref_pool_dims(x, p, &OH, &OW);
        struct tensor *dy = test_uniform(dt, TENSOR_SHAPE(2, 3, OH, OW), -1, 1), *dx;
        struct tensor *y = run_op(op_pool, p, x, test_noncontig(dy), &dx);
        struct tensor *yr = ref_pool(x, NULL, p), *dxr = ref_pool(x, dy, p);
        const double fa = test_max_abs_diff(y, yr), ba = test_max_abs_diff(dx, dxr);
        printf("reference avg_pool2d[%s,64x49,%s%s] fwd_abs=%.1e bwd_abs=%.1e\n", pool_cases[k / 3].label,
               dtype_name(dt), k % 3 == 2 ? ",noncontig" : "", fa, ba);
        ck_assert(fa < (dt == DTYPE_F32 ? 1e-6 : 1e-15) && ba < (dt == DTYPE_F32 ? 1e-6 : 1e-15));
        tensor_scope_end();
    }
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- determinism */

/* results may not depend on the thread count: 1 thread vs the default, bit for bit */
START_TEST(test_deterministic)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    const int threads = tensor_num_threads();
    struct tensor *x = test_uniform(DTYPE_F32, TENSOR_SHAPE(2, 3, 37, 29), -1, 1);
    struct resize_case rc = {RESIZE_BICUBIC, false, 80, 70};
    struct pool2d_params pp = {3, 3, 1, 1, 1, 1, false};
    struct tensor *dyr = test_uniform(DTYPE_F32, TENSOR_SHAPE(2, 3, 80, 70), -1, 1);
    struct tensor *dyp = test_uniform(DTYPE_F32, TENSOR_SHAPE(2, 3, 37, 29), -1, 1);
    struct tensor *y[2], *dx[2], *yp[2], *dxp[2];
    for (int t = 0; t < 2; t++) {
        tensor_set_num_threads(t ? (threads > 1 ? threads : 2) : 1);
        y[t] = run_op(op_resize, &rc, x, dyr, &dx[t]);
        yp[t] = run_op(op_pool, &pp, x, dyp, &dxp[t]);
    }
    tensor_set_num_threads(threads);
    ck_assert(test_max_abs_diff(y[0], y[1]) == 0 && test_max_abs_diff(dx[0], dx[1]) == 0);
    ck_assert(test_max_abs_diff(yp[0], yp[1]) == 0 && test_max_abs_diff(dxp[0], dxp[1]) == 0);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- errors */

static void expect_fail(struct tensor *r, enum status s, const char *needle)
{
    ck_assert_msg(r == NULL, "expected a failure mentioning '%s'", needle);
    ck_assert_int_eq(tensor_status(), s);
    ck_assert_msg(strstr(tensor_error(), needle) != NULL, "message '%s' lacks '%s'", tensor_error(), needle);
}

START_TEST(test_errors)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(1, 2, 4, 4), -1, 1);
    struct tensor *x3 = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 4, 4), -1, 1);
    expect_fail(ag_resize(x3, 8, 8, RESIZE_BILINEAR, false), STATUS_SHAPE, "resize: input [N,C,H,W] must have 4 dims");
    expect_fail(ag_resize(x, 0, 8, RESIZE_BILINEAR, false), STATUS_VALUE, "output size 0x8 must be positive");
    expect_fail(ag_resize(x, 8, -1, RESIZE_BICUBIC, true), STATUS_VALUE, "must be positive");
    expect_fail(ag_resize(x, 8, 8, RESIZE_NEAREST, true), STATUS_VALUE, "align_corners only applies");
    expect_fail(ag_resize(x, 8, 8, (enum resize_mode)7, false), STATUS_VALUE, "unknown mode 7");
    expect_fail(ag_resize(tensor_zeros(DTYPE_F64, TENSOR_SHAPE(1, 2, 0, 4), DEVICE_CPU), 8, 8, RESIZE_BILINEAR, false),
                STATUS_SHAPE, "empty spatial dim");
    expect_fail(ag_resize(tensor_to_dtype(x, DTYPE_I32), 8, 8, RESIZE_BILINEAR, false), STATUS_DTYPE,
                "resize: expects f32 or f64");
    expect_fail(ag_resize(tensor_to_dtype(x, DTYPE_F16), 8, 8, RESIZE_BILINEAR, false), STATUS_DTYPE, "f16");
    expect_fail(ag_upsample_nearest2x(x3), STATUS_SHAPE, "upsample_nearest2x: input [N,C,H,W] must have 4 dims");

    const struct pool2d_params ok = {2, 2, 2, 2, 0, 0, true};
    struct pool2d_params p = ok;
    p.kernel_w = 0;
    expect_fail(ag_avg_pool2d(x, &p), STATUS_VALUE, "kernel 2x0 and stride 2x2 must be positive");
    p = ok;
    p.stride_h = 0;
    expect_fail(ag_avg_pool2d(x, &p), STATUS_VALUE, "must be positive");
    p = (struct pool2d_params){3, 3, 1, 1, 2, 1, true};
    expect_fail(ag_avg_pool2d(x, &p), STATUS_VALUE, "padding 2x1 must be between 0 and half the kernel 3x3");
    p = (struct pool2d_params){3, 3, 1, 1, 1, -1, true};
    expect_fail(ag_avg_pool2d(x, &p), STATUS_VALUE, "padding");
    p = (struct pool2d_params){5, 5, 1, 1, 0, 0, true};
    expect_fail(ag_avg_pool2d(x, &p), STATUS_SHAPE,
                "avg_pool2d: input [1,2,4,4] padded by 0x0 is smaller than the kernel 5x5");
    expect_fail(ag_avg_pool2d(x, NULL), STATUS_VALUE, "NULL");
    expect_fail(ag_avg_pool2d(x3, &ok), STATUS_SHAPE, "avg_pool2d: input [N,C,H,W] must have 4 dims");
    expect_fail(ag_avg_pool2d(tensor_to_dtype(x, DTYPE_I64), &ok), STATUS_DTYPE, "avg_pool2d");

    /* the kernels themselves refuse bad parameters instead of dividing by zero */
    p = ok;
    p.stride_w = 0;
    struct tensor *o = tensor_empty(DTYPE_F64, TENSOR_SHAPE(1, 2, 2, 2), DEVICE_CPU);
    ck_assert_int_eq(backend_cpu.avg_pool2d(o, x, &p), STATUS_VALUE);
    ck_assert_int_eq(backend_cpu.avg_pool2d_backward(x, o, &p), STATUS_VALUE);

    /* a NULL input propagates without overwriting the first message */
    tensor_fail(STATUS_VALUE, "first error");
    ck_assert(ag_resize(NULL, 4, 4, RESIZE_BICUBIC, false) == NULL);
    ck_assert(ag_upsample_nearest2x(NULL) == NULL);
    ck_assert(ag_avg_pool2d(NULL, &ok) == NULL);
    ck_assert_str_eq(tensor_error(), "first error");
    tensor_clear_error();
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    test_seed();
    Suite *s = suite_create("image");
    TCase *tc = tcase_create("image");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_resize_gradcheck, 0, N_MODES * N_GEOMS);
    tcase_add_test(tc, test_upsample_gradcheck);
    tcase_add_loop_test(tc, test_pool_gradcheck, 0, N_POOL);
    tcase_add_loop_test(tc, test_resize_reference, 0, N_MODES);
    tcase_add_test(tc, test_resize_reward_model);
    tcase_add_test(tc, test_upsample_reference);
    tcase_add_test(tc, test_pool_reference);
    tcase_add_test(tc, test_known_values);
    tcase_add_test(tc, test_deterministic);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
