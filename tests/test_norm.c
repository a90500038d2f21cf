/* test_norm.c — layer_norm and group_norm: gradient checks, forward and backward against a
 * naive float64 loop, thread-count independence, and error messages. */
#include "tests/harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- gradient checks */

struct norm_case {
    const char *label;
    int ndim;
    int64_t shape[4];
    int k;           /* layer_norm: normalised trailing dims; group_norm: groups */
    bool w, b;       /* affine weight, bias */
    bool noncontig;
    bool params_only;   /* x gets no gradient: the backward skips dx */
};

/* in: x, then w and b when the case has them */
static struct tensor *f_layer_norm(struct tensor *const *in, void *ctx)
{
    const struct norm_case *c = ctx;
    return ag_layer_norm(in[0], c->k, c->w ? in[1] : NULL, c->b ? in[1 + c->w] : NULL, 1e-5);
}

static struct tensor *f_group_norm(struct tensor *const *in, void *ctx)
{
    const struct norm_case *c = ctx;
    return ag_group_norm(in[0], c->k, c->w ? in[1] : NULL, c->b ? in[1 + c->w] : NULL, 1e-5);
}

static const struct norm_case layer_cases[] = {
    {"layer_norm[dims=1,affine]", 2, {3, 7}, 1, true, true, false, false},
    {"layer_norm[dims=1]", 2, {4, 6}, 1, false, false, false, false},
    {"layer_norm[dims=2,affine]", 3, {2, 3, 4}, 2, true, true, false, false},
    {"layer_norm[dims=2]", 3, {2, 3, 4}, 2, false, false, false, false},
    {"layer_norm[dims=1,affine,noncontig]", 3, {3, 2, 5}, 1, true, true, true, false},
    {"layer_norm[dims=2,weight_only,noncontig]", 3, {2, 4, 3}, 2, true, false, true, false},
    {"layer_norm[dims=1,bias_only]", 2, {3, 9}, 1, false, true, false, false},
    {"layer_norm[dims=3,all_dims,affine]", 3, {2, 3, 2}, 3, true, true, false, false},
    {"layer_norm[dims=1,affine,params_only]", 3, {2, 3, 5}, 1, true, true, false, true},
};

static const struct norm_case group_cases[] = {
    {"group_norm[x=2x4x3,groups=1,affine]", 3, {2, 4, 3}, 1, true, true, false, false},
    {"group_norm[x=2x4x3,groups=4=C,affine]", 3, {2, 4, 3}, 4, true, true, false, false},
    {"group_norm[x=2x6x3x2,groups=3,affine]", 4, {2, 6, 3, 2}, 3, true, true, false, false},
    {"group_norm[x=2x6x3x2,groups=2]", 4, {2, 6, 3, 2}, 2, false, false, false, false},
    {"group_norm[x=1x8x2x3,groups=4,affine,noncontig]", 4, {1, 8, 2, 3}, 4, true, true, true, false},
    {"group_norm[x=3x4x5,groups=2,noncontig]", 3, {3, 4, 5}, 2, false, false, true, false},
    {"group_norm[x=2x4x2x2,groups=4=C,weight_only]", 4, {2, 4, 2, 2}, 4, true, false, false, false},
    {"group_norm[x=3x6,groups=2,affine]", 2, {3, 6}, 2, true, true, false, false},
    {"group_norm[x=2x6x2x2,groups=3,affine,params_only]", 4, {2, 6, 2, 2}, 3, true, true, false, true},
};

static void run_norm_case(const struct norm_case *c, bool group)
{
    struct tensor *x = test_uniform(DTYPE_F64, c->ndim, c->shape, -1, 1);
    if (c->noncontig) x = test_noncontig(x);
    /* layer_norm parameters have the normalised shape, group_norm ones [C] */
    const int pd = group ? 1 : c->k;
    const int64_t *ps = group ? &c->shape[1] : &c->shape[c->ndim - c->k];
    struct tensor *in[3] = {x, NULL, NULL};
    int n = 1;
    if (c->w) in[n++] = test_uniform(DTYPE_F64, pd, ps, 0.5, 1.5);
    if (c->b) in[n++] = test_uniform(DTYPE_F64, pd, ps, -1, 1);
    const struct gc_opts o = {.nograd = c->params_only ? 1u : 0u};
    ck_assert_msg(gradcheck(c->label, group ? f_group_norm : f_layer_norm, (void *)c, n, in, &o), "%s", c->label);
}

START_TEST(test_layer_norm_grad)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    run_norm_case(&layer_cases[_i], false);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_group_norm_grad)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    run_norm_case(&group_cases[_i], true);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- naive float64 reference */

/* Blocks of m elements normalised together: layer_norm rows (parameter index = position in
 * the row) or group_norm (sample, group) pairs (parameter index = channel). */
struct ref_layout {
    int64_t blocks, m;
    bool layer;
    int64_t hw, d, g;   /* group_norm: spatial size, channels per group, groups */
};

static int64_t ref_param(const struct ref_layout *l, int64_t blk, int64_t i)
{
    return l->layer ? i : blk % l->g * l->d + i / l->hw;
}

static double *host_values(const struct tensor *t)
{
    int64_t n = tensor_numel(t);
    double *v = malloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = tensor_get_flat(t, i);
    return v;
}

/* two-pass statistics, textbook backward; dw and db must start at zero */
static void ref_norm(const struct ref_layout *l, const double *x, const double *w, const double *b, const double *dy,
                     double eps, double *y, double *dx, double *dw, double *db)
{
    for (int64_t blk = 0; blk < l->blocks; blk++) {
        const double *xb = x + blk * l->m, *dyb = dy + blk * l->m;
        double mean = 0, var = 0, mg = 0, mgx = 0;
        for (int64_t i = 0; i < l->m; i++) mean += xb[i];
        mean /= (double)l->m;
        for (int64_t i = 0; i < l->m; i++) var += (xb[i] - mean) * (xb[i] - mean);
        var /= (double)l->m;
        const double rs = 1 / sqrt(var + eps);
        for (int64_t i = 0; i < l->m; i++) {
            const int64_t p = ref_param(l, blk, i);
            const double xh = (xb[i] - mean) * rs, g = dyb[i] * w[p];
            y[blk * l->m + i] = xh * w[p] + b[p];
            mg += g / (double)l->m;
            mgx += g * xh / (double)l->m;
            dw[p] += dyb[i] * xh;
            db[p] += dyb[i];
        }
        for (int64_t i = 0; i < l->m; i++) {
            const double xh = (xb[i] - mean) * rs;
            dx[blk * l->m + i] = rs * (dyb[i] * w[ref_param(l, blk, i)] - mg - xh * mgx);
        }
    }
}

/* runs the op with x, w, b requiring grad, backpropagates dy and compares y, dx, dw, db with
 * ref_norm; returns the worst relative error */
static double compare_with_ref(const char *label, bool group, int k, struct tensor *x, struct tensor *w,
                               struct tensor *b, struct tensor *dy, const struct ref_layout *l)
{
    tensor_scope_begin();
    struct tensor *xs = ag_detach(x), *ws = ag_detach(w), *bs = ag_detach(b);
    ag_set_requires_grad(xs, true);
    ag_set_requires_grad(ws, true);
    ag_set_requires_grad(bs, true);
    struct tensor *y = group ? ag_group_norm(xs, k, ws, bs, 1e-5) : ag_layer_norm(xs, k, ws, bs, 1e-5);
    ck_assert_msg(y != NULL, "%s: %s", label, tensor_error());
    ck_assert_int_eq(ag_backward(y, dy, false), STATUS_OK);

    const int64_t nx = tensor_numel(x), np = tensor_numel(w);
    double *hx = host_values(x), *hw = host_values(w), *hb = host_values(b), *hdy = host_values(dy);
    double *ry = malloc((size_t)nx * sizeof *ry), *rdx = malloc((size_t)nx * sizeof *rdx);
    double *rdw = calloc((size_t)np, sizeof *rdw), *rdb = calloc((size_t)np, sizeof *rdb);
    ref_norm(l, hx, hw, hb, hdy, 1e-5, ry, rdx, rdw, rdb);
    const double ey = test_rel_err(y, tensor_from_data(DTYPE_F64, x->ndim, x->shape, ry));
    const double edx = test_rel_err(xs->grad, tensor_from_data(DTYPE_F64, x->ndim, x->shape, rdx));
    const double edw = test_rel_err(ws->grad, tensor_from_data(DTYPE_F64, w->ndim, w->shape, rdw));
    const double edb = test_rel_err(bs->grad, tensor_from_data(DTYPE_F64, w->ndim, w->shape, rdb));
    printf("reference %s y=%.1e dx=%.1e dw=%.1e db=%.1e\n", label, ey, edx, edw, edb);
    free(hx); free(hw); free(hb); free(hdy); free(ry); free(rdx); free(rdw); free(rdb);
    tensor_scope_end();
    return fmax(fmax(ey, edx), fmax(edw, edb));
}

START_TEST(test_group_norm_reference)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    const int64_t N = 2, C = 64, H = 16, W = 16, G = 32;
    const struct ref_layout l = {.blocks = N * G, .m = C / G * H * W, .hw = H * W, .d = C / G, .g = G};
    for (int f32 = 0; f32 < 2; f32++)
        for (int nc = 0; nc < 2; nc++) {
            const enum dtype dt = f32 ? DTYPE_F32 : DTYPE_F64;
            /* an offset mean checks the statistics do not cancel */
            struct tensor *x = test_uniform(dt, TENSOR_SHAPE(N, C, H, W), 2, 4);
            struct tensor *w = test_uniform(dt, TENSOR_SHAPE(C), 0.5, 1.5), *b = test_uniform(dt, TENSOR_SHAPE(C), -1, 1);
            struct tensor *dy = test_uniform(dt, TENSOR_SHAPE(N, C, H, W), -1, 1);
            if (nc) { x = test_noncontig(x); dy = test_noncontig(dy); }
            char label[96];
            snprintf(label, sizeof label, "group_norm[%s,2x64x16x16,groups=32%s]", f32 ? "f32" : "f64",
                     nc ? ",noncontig" : "");
            ck_assert(compare_with_ref(label, true, (int)G, x, w, b, dy, &l) < (f32 ? 1e-5 : 1e-12));
        }
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_layer_norm_reference)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    /* 300 rows of 7*111 = 777: several row chunks for dw/db, and a tail past the 8 lanes */
    const int64_t R = 300, A = 7, B = 111;
    const struct ref_layout l = {.blocks = R, .m = A * B, .layer = true};
    for (int f32 = 0; f32 < 2; f32++)
        for (int nc = 0; nc < 2; nc++) {
            const enum dtype dt = f32 ? DTYPE_F32 : DTYPE_F64;
            struct tensor *x = test_uniform(dt, TENSOR_SHAPE(R, A, B), -3, 1);
            struct tensor *w = test_uniform(dt, TENSOR_SHAPE(A, B), 0.5, 1.5), *b = test_uniform(dt, TENSOR_SHAPE(A, B), -1, 1);
            struct tensor *dy = test_uniform(dt, TENSOR_SHAPE(R, A, B), -1, 1);
            if (nc) { x = test_noncontig(x); dy = test_noncontig(dy); }
            char label[96];
            snprintf(label, sizeof label, "layer_norm[%s,300x7x111,dims=2%s]", f32 ? "f32" : "f64",
                     nc ? ",noncontig" : "");
            ck_assert(compare_with_ref(label, false, 2, x, w, b, dy, &l) < (f32 ? 1e-5 : 1e-12));
        }
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* |mean| >> std: a one-pass E[x^2] - E[x]^2 would lose most digits of the variance */
START_TEST(test_norm_large_mean)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = ag_affine(test_uniform(DTYPE_F64, TENSOR_SHAPE(4, 1000), -1, 1), 1, 1e6);
    struct tensor *y = ag_layer_norm(x, 1, NULL, NULL, 0);
    struct tensor *yg = ag_group_norm(tensor_reshape(x, TENSOR_SHAPE(2, 4, 500)), 2, NULL, NULL, 0);
    double worst = 0;
    for (int64_t r = 0; r < 4; r++) {
        double mean = 0, var = 0;
        for (int64_t i = 0; i < 1000; i++) mean += tensor_get_flat(x, r * 1000 + i) / 1000;
        for (int64_t i = 0; i < 1000; i++) var += pow(tensor_get_flat(x, r * 1000 + i) - mean, 2) / 1000;
        for (int64_t i = 0; i < 1000; i++) {
            double ref = (tensor_get_flat(x, r * 1000 + i) - mean) / sqrt(var);
            worst = fmax(worst, fabs(tensor_get_flat(y, r * 1000 + i) - ref));
            worst = fmax(worst, fabs(tensor_get_flat(yg, r * 1000 + i) - ref));
        }
    }
    printf("large mean (1e6 + U(-1,1)) max_abs_err=%.1e\n", worst);
    ck_assert(worst < 1e-7);   /* no shift: ~1e-4 */
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- determinism */

/* gradients of one f32 forward/backward, run with `threads` threads */
static void grads_with_threads(int threads, bool group, struct tensor *x, struct tensor *w, struct tensor *b,
                               struct tensor *dy, struct tensor **g)
{
    const int saved = tensor_num_threads();
    tensor_set_num_threads(threads);
    tensor_scope_begin();
    struct tensor *in[3] = {ag_detach(x), ag_detach(w), ag_detach(b)};
    for (int i = 0; i < 3; i++) ag_set_requires_grad(in[i], true);
    struct tensor *y = group ? ag_group_norm(in[0], 8, in[1], in[2], 1e-5) : ag_layer_norm(in[0], 1, in[1], in[2], 1e-5);
    ck_assert_int_eq(ag_backward(y, dy, false), STATUS_OK);
    g[0] = tensor_keep(tensor_clone(y));
    for (int i = 0; i < 3; i++) g[i + 1] = tensor_ref(in[i]->grad);
    tensor_scope_end();
    tensor_set_num_threads(saved);
}

/* internal hook of tensor/cpu/norm.c: use the baseline (non-AVX2) loops */
void cpu_norm_baseline_only(bool on);

START_TEST(test_norm_isa_identical)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    /* the AVX2 and baseline loops share one lane layout: the same bits, f32 and f64 */
    for (int k = 0; k < 4; k++) {
        const bool group = k & 1;
        const enum dtype dt = k & 2 ? DTYPE_F64 : DTYPE_F32;
        const int64_t shape[3] = {group ? 2 : 50, group ? 32 : 203, group ? 77 : 1};
        struct tensor *x = test_uniform(dt, group ? 3 : 2, shape, -1, 3), *dy = test_uniform(dt, group ? 3 : 2, shape, -1, 1);
        struct tensor *w = test_uniform(dt, TENSOR_SHAPE(shape[1]), 0.5, 1.5), *b = test_uniform(dt, TENSOR_SHAPE(shape[1]), -1, 1);
        struct tensor *g1[4], *g2[4];
        grads_with_threads(2, group, x, w, b, dy, g1);
        cpu_norm_baseline_only(true);
        grads_with_threads(2, group, x, w, b, dy, g2);
        cpu_norm_baseline_only(false);
        for (int i = 0; i < 4; i++) {
            ck_assert_msg(test_max_abs_diff(g1[i], g2[i]) == 0, "%s %s output %d differs between the loop builds",
                          group ? "group_norm" : "layer_norm", dtype_name(dt), i);
            tensor_free(g1[i]);
            tensor_free(g2[i]);
        }
    }
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_norm_thread_independent)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    for (int group = 0; group < 2; group++) {
        const int64_t shape[3] = {group ? 4 : 400, group ? 32 : 300, group ? 300 : 1};
        struct tensor *x = test_uniform(DTYPE_F32, group ? 3 : 2, shape, -1, 1);
        struct tensor *dy = test_uniform(DTYPE_F32, group ? 3 : 2, shape, -1, 1);
        const int64_t np = shape[1];
        struct tensor *w = test_uniform(DTYPE_F32, TENSOR_SHAPE(np), 0.5, 1.5), *b = test_uniform(DTYPE_F32, TENSOR_SHAPE(np), -1, 1);
        struct tensor *g1[4], *g2[4];
        grads_with_threads(1, group, x, w, b, dy, g1);
        grads_with_threads(2, group, x, w, b, dy, g2);
        for (int i = 0; i < 4; i++) {
            ck_assert_msg(test_max_abs_diff(g1[i], g2[i]) == 0, "%s output %d depends on the thread count",
                          group ? "group_norm" : "layer_norm", i);
            tensor_free(g1[i]);
            tensor_free(g2[i]);
        }
    }
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- errors */

static void expect_error(struct tensor *r, enum status st, const char *text)
{
    ck_assert_ptr_null(r);
    ck_assert_int_eq(tensor_status(), st);
    ck_assert_msg(strstr(tensor_error(), text) != NULL, "message '%s' lacks '%s'", tensor_error(), text);
}

START_TEST(test_norm_errors)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 30, 4), -1, 1);
    struct tensor *w30 = test_uniform(DTYPE_F64, TENSOR_SHAPE(30), -1, 1), *w4 = test_uniform(DTYPE_F64, TENSOR_SHAPE(4), -1, 1);
    expect_error(ag_group_norm(x, 32, NULL, NULL, 1e-5), STATUS_SHAPE, "group_norm: 30 channels do not split into 32 groups");
    expect_error(ag_group_norm(x, 0, NULL, NULL, 1e-5), STATUS_SHAPE, "do not split into 0 groups");
    expect_error(ag_group_norm(test_uniform(DTYPE_F64, TENSOR_SHAPE(6), -1, 1), 2, NULL, NULL, 1e-5), STATUS_SHAPE,
                 "at least 2 dims");
    expect_error(ag_group_norm(x, 3, w4, NULL, 1e-5), STATUS_SHAPE, "group_norm: weight [4] does not fit x [2,30,4]");
    expect_error(ag_group_norm(x, 3, w30, w4, 1e-5), STATUS_SHAPE, "bias [4]");
    expect_error(ag_group_norm(x, 3, tensor_to_dtype(w30, DTYPE_F32), NULL, 1e-5), STATUS_DTYPE, "weight is f32 but x is f64");
    expect_error(ag_group_norm(x, 3, NULL, NULL, -1), STATUS_VALUE, "eps");
    expect_error(ag_group_norm(tensor_to_dtype(x, DTYPE_I32), 3, NULL, NULL, 1e-5), STATUS_DTYPE, "group_norm");
    expect_error(ag_layer_norm(x, 0, NULL, NULL, 1e-5), STATUS_SHAPE, "cannot normalise the last 0 dims");
    expect_error(ag_layer_norm(x, 4, NULL, NULL, 1e-5), STATUS_SHAPE, "cannot normalise the last 4 dims of x [2,30,4]");
    expect_error(ag_layer_norm(x, 2, w4, NULL, 1e-5), STATUS_SHAPE, "layer_norm: weight [4] does not fit x [2,30,4] (expected [30,4])");
    expect_error(ag_layer_norm(x, 1, w4, w30, 1e-5), STATUS_SHAPE, "bias [30]");
    expect_error(ag_layer_norm(x, 1, NULL, NULL, NAN), STATUS_VALUE, "eps");
    expect_error(ag_layer_norm(tensor_to_dtype(x, DTYPE_I64), 1, NULL, NULL, 1e-5), STATUS_DTYPE, "layer_norm");
    /* a NULL input propagates without replacing the first message */
    tensor_fail(STATUS_VALUE, "earlier failure");
    ck_assert_ptr_null(ag_layer_norm(NULL, 1, w4, NULL, 1e-5));
    ck_assert_ptr_null(ag_group_norm(NULL, 2, NULL, NULL, 1e-5));
    ck_assert_str_eq(tensor_error(), "earlier failure");
    tensor_clear_error();
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    test_seed();
    Suite *s = suite_create("norm");
    TCase *tc = tcase_create("norm");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_layer_norm_grad, 0, sizeof layer_cases / sizeof *layer_cases);
    tcase_add_loop_test(tc, test_group_norm_grad, 0, sizeof group_cases / sizeof *group_cases);
    tcase_add_test(tc, test_group_norm_reference);
    tcase_add_test(tc, test_layer_norm_reference);
    tcase_add_test(tc, test_norm_large_mean);
    tcase_add_test(tc, test_norm_thread_independent);
    tcase_add_test(tc, test_norm_isa_identical);
    tcase_add_test(tc, test_norm_errors);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
