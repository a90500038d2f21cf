/* test_conv.c — conv2d: gradient checks over strides, paddings (asymmetric too), dilation,
 * groups, 1x1, Winograd-sized 3x3 and non-contiguous operands; every kernel path (im2col
 * tiles, direct 1x1 GEMM, Winograd) against a naive float64 loop at sizes that span several
 * tiles, blocks and channel chunks; thread-count determinism; errors. */
#include "tests/harness.h"

#include "autograd/node.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct conv_case {
    const char *label;
    int64_t N, C, H, W, O, KH, KW;
    struct conv2d_params p;
    bool bias, noncontig;
    unsigned nograd;   /* gradcheck: inputs that get no gradient (bit 0 x, 1 w, 2 b) */
};
/* params are listed as {stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
 * dil_h, dil_w, groups} */

static struct tensor *f_conv(struct tensor *const *in, void *ctx)
{
    const struct conv_case *c = ctx;
    return ag_conv2d(in[0], in[1], c->bias ? in[2] : NULL, &c->p);
}

/* ---------------------------------------------------------------- gradient checks */

static const struct conv_case grad_cases[] = {
    {"conv2d[3x3]", 2, 3, 5, 5, 4, 3, 3, {1, 1, 0, 0, 0, 0, 1, 1, 1}, true, false, 0},
    {"conv2d[stride=2]", 1, 2, 7, 6, 3, 3, 3, {2, 2, 0, 0, 0, 0, 1, 1, 1}, true, false, 0},
    {"conv2d[pad=1]", 2, 2, 4, 5, 3, 3, 3, {1, 1, 1, 1, 1, 1, 1, 1, 1}, true, false, 0},
    {"conv2d[pad=t0,b1,l1,r0]", 1, 2, 5, 5, 3, 3, 3, {1, 1, 0, 1, 1, 0, 1, 1, 1}, true, false, 0},
    {"conv2d[stride=2,pad=t0,b1,l0,r1(vae_down)]", 1, 3, 6, 6, 2, 3, 3, {2, 2, 0, 1, 0, 1, 1, 1, 1}, true, false, 0},
    {"conv2d[dil=2]", 1, 2, 7, 7, 3, 3, 3, {1, 1, 0, 0, 0, 0, 2, 2, 1}, true, false, 0},
    {"conv2d[dil=2,pad=2]", 1, 2, 5, 6, 2, 3, 3, {1, 1, 2, 2, 2, 2, 2, 2, 1}, true, false, 0},
    {"conv2d[groups=2]", 2, 4, 5, 5, 6, 3, 3, {1, 1, 0, 0, 0, 0, 1, 1, 2}, true, false, 0},
    {"conv2d[stride=2,pad=1,groups=2]", 1, 4, 6, 5, 4, 3, 3, {2, 2, 1, 1, 1, 1, 1, 1, 2}, true, false, 0},
    {"conv2d[depthwise,groups=3,pad=1]", 2, 3, 5, 4, 3, 3, 3, {1, 1, 1, 1, 1, 1, 1, 1, 3}, true, false, 0},
    {"conv2d[depthwise_x2,groups=3]", 1, 3, 5, 5, 6, 3, 3, {1, 1, 0, 0, 0, 0, 1, 1, 3}, true, false, 0},
    {"conv2d[nobias,pad=1]", 2, 3, 4, 4, 2, 3, 3, {1, 1, 1, 1, 1, 1, 1, 1, 1}, false, false, 0},
    {"conv2d[1x1]", 2, 3, 4, 5, 4, 1, 1, {1, 1, 0, 0, 0, 0, 1, 1, 1}, true, false, 0},
    {"conv2d[1x1,groups=2]", 2, 4, 3, 3, 2, 1, 1, {1, 1, 0, 0, 0, 0, 1, 1, 2}, true, false, 0},
    {"conv2d[1x1,stride=2,pad=1]", 1, 3, 5, 4, 2, 1, 1, {2, 2, 1, 1, 1, 1, 1, 1, 1}, true, false, 0},
    {"conv2d[3x3,pad=1,noncontig]", 2, 3, 4, 5, 3, 3, 3, {1, 1, 1, 1, 1, 1, 1, 1, 1}, true, true, 0},
    {"conv2d[1x1,noncontig]", 2, 3, 4, 4, 3, 1, 1, {1, 1, 0, 0, 0, 0, 1, 1, 1}, true, true, 0},
    {"conv2d[kernel=2x3,image=5x7,stride=1x2,dil=2x1]", 1, 2, 5, 7, 3, 2, 3, {1, 2, 0, 0, 0, 0, 2, 1, 1}, true, false,
     0},
    {"conv2d[kernel=3x1,image=6x3,pad=t2,b0,l0,r1]", 2, 2, 6, 3, 2, 3, 1, {1, 1, 2, 0, 0, 1, 1, 1, 1}, true, false, 0},
    {"conv2d[kernel=5x5>image_w,pad=2]", 1, 1, 3, 4, 2, 5, 5, {1, 1, 2, 2, 2, 2, 1, 1, 1}, true, false, 0},
    {"conv2d[weight_only]", 2, 2, 4, 4, 3, 3, 3, {1, 1, 1, 1, 1, 1, 1, 1, 1}, true, false, 5},
    {"conv2d[bias_only]", 2, 2, 4, 4, 3, 3, 3, {1, 1, 1, 1, 1, 1, 1, 1, 1}, true, false, 3},
    {"conv2d[input_only]", 2, 2, 4, 4, 3, 3, 3, {1, 1, 1, 1, 1, 1, 1, 1, 1}, true, false, 6},
    /* 3x3 stride 1 with >= 16 input channels per group takes the Winograd path */
    {"conv2d[winograd,16->16,pad=1]", 1, 16, 8, 7, 16, 3, 3, {1, 1, 1, 1, 1, 1, 1, 1, 1}, true, false, 0},
    {"conv2d[winograd,16->3,pad=t2,b0,l1,r2,noncontig]", 1, 16, 7, 8, 3, 3, 3, {1, 1, 2, 0, 1, 2, 1, 1, 1}, true, true,
     0},
    {"conv2d[winograd,groups=2,pad=3]", 1, 32, 5, 6, 32, 3, 3, {1, 1, 3, 3, 3, 3, 1, 1, 2}, false, false, 0},
};
#define N_GRAD_CASES (int)(sizeof grad_cases / sizeof grad_cases[0])

START_TEST(test_gradcheck)
{
    LEAK_CHECK_BEGIN();
    const struct conv_case *c = &grad_cases[_i];
    tensor_scope_begin();
    struct tensor *in[3];
    in[0] = test_uniform(DTYPE_F64, TENSOR_SHAPE(c->N, c->C, c->H, c->W), -1, 1);
    in[1] = test_uniform(DTYPE_F64, TENSOR_SHAPE(c->O, c->C / c->p.groups, c->KH, c->KW), -1, 1);
    in[2] = test_uniform(DTYPE_F64, TENSOR_SHAPE(c->O), -1, 1);
    if (c->noncontig) {
        in[0] = test_noncontig(in[0]);
        in[1] = test_noncontig(in[1]);
        ck_assert(!tensor_is_contiguous(in[0]) && !tensor_is_contiguous(in[1]));
    }
    const struct gc_opts o = {.nograd = c->nograd};
    ck_assert_msg(gradcheck(c->label, f_conv, (void *)c, c->bias ? 3 : 2, in, &o), "%s", c->label);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- naive reference */

/* internal hook of tensor/cpu/conv2d.c: the BLAS path instead of the register-blocked kernel */
void cpu_conv2d_baseline_only(bool on);

static double *host_f64(const struct tensor *t)
{
    int64_t n = tensor_numel(t);
    double *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    ck_assert_ptr_nonnull(v);
    for (int64_t i = 0; i < n; i++) v[i] = tensor_get_flat(t, i);
    return v;
}

static struct tensor *from_host(const double *v, int ndim, const int64_t *shape)
{
    return tensor_from_data(DTYPE_F64, ndim, shape, v);
}

/* out = conv(x, w) + b; dx, dw, db: gradients of sum(out * dy), all by direct summation in
 * double. Arrays are contiguous; dx, dw, db start zeroed. */
static void ref_conv(const struct conv_case *c, int64_t OH, int64_t OW, const double *x, const double *w,
                     const double *b, const double *dy, double *out, double *dx, double *dw, double *db)
{
    const struct conv2d_params *p = &c->p;
    const int64_t Cg = c->C / p->groups, Og = c->O / p->groups;
    for (int64_t n = 0; n < c->N; n++)
        for (int64_t o = 0; o < c->O; o++)
            for (int64_t oh = 0; oh < OH; oh++)
                for (int64_t ow = 0; ow < OW; ow++) {
                    const int64_t oi = ((n * c->O + o) * OH + oh) * OW + ow;
                    const double g = dy[oi];
                    double acc = b ? b[o] : 0;
                    if (b) db[o] += g;
                    for (int64_t ci = 0; ci < Cg; ci++) {
                        const int64_t cx = o / Og * Cg + ci;
                        for (int64_t kh = 0; kh < c->KH; kh++) {
                            const int64_t ih = oh * p->stride_h - p->pad_top + kh * p->dil_h;
                            if (ih < 0 || ih >= c->H) continue;
                            for (int64_t kw = 0; kw < c->KW; kw++) {
                                const int64_t iw = ow * p->stride_w - p->pad_left + kw * p->dil_w;
                                if (iw < 0 || iw >= c->W) continue;
                                const int64_t xi = ((n * c->C + cx) * c->H + ih) * c->W + iw;
                                const int64_t wi = ((o * Cg + ci) * c->KH + kh) * c->KW + kw;
                                acc += x[xi] * w[wi];
                                dx[xi] += g * w[wi];
                                dw[wi] += g * x[xi];
                            }
                        }
                    }
                    out[oi] = acc;
                }
}

/* Cases sized so the kernels cut P into several tiles (boundaries mid-row), the channels
 * into several im2col chunks (f64 and f32), and the work into channel and output chunks. */
static const struct conv_case ref_cases[] = {
    {"ref[2,180,23,23]->96 3x3 pad=1 (winograd; f64 channel chunks)", 2, 180, 23, 23, 96, 3, 3,
     {1, 1, 1, 1, 1, 1, 1, 1, 1}, true, false, 0},
    {"ref[3,40,21,26]->48 3x3 pad=1,2,0,1 groups=2 (winograd blocks across images)", 3, 40, 21, 26, 48, 3, 3,
     {1, 1, 1, 2, 0, 1, 1, 1, 2}, true, false, 0},
    {"ref[2,180,23,23]->64 3x3 pad=1 dil=1x2 (im2col tiles, channel chunks)", 2, 180, 23, 23, 64, 3, 3,
     {1, 1, 1, 1, 2, 2, 1, 2, 1}, true, false, 0},
    {"ref[1,8,40,37]->96 3x2 stride=2 pad=0,1,2,1 dil=2 groups=2", 1, 8, 40, 37, 96, 3, 2, {2, 2, 0, 1, 2, 1, 2, 2, 2},
     true, false, 0},
    {"ref[2,3,30,30]->64 3x3 pad=1 (small K: position-split weight grad)", 2, 3, 30, 30, 64, 3, 3,
     {1, 1, 1, 1, 1, 1, 1, 1, 1}, true, false, 0},
    {"ref[2,4,19,37]->45 3x3 pad=1 no bias (thin-K kernel: row and column remainders, unaligned rows)", 2, 4, 19,
     37, 45, 3, 3, {1, 1, 1, 1, 1, 1, 1, 1, 1}, false, false, 0},
    {"ref[1,6,17,20]->30 3x3 stride=2 pad=0,1,1,0 groups=3 noncontig (thin-K kernel)", 1, 6, 17, 20, 30, 3, 3,
     {2, 2, 0, 1, 1, 0, 1, 1, 3}, true, true, 0},
    {"ref[2,40,20,21]->64 1x1 (direct GEMM, output-split weight grad)", 2, 40, 20, 21, 64, 1, 1,
     {1, 1, 0, 0, 0, 0, 1, 1, 1}, true, false, 0},
    {"ref[2,40,20,21]->64 1x1 noncontig (im2col)", 2, 40, 20, 21, 64, 1, 1, {1, 1, 0, 0, 0, 0, 1, 1, 1}, true, true, 0},
    {"ref[1,16,24,19]->32 3x3 stride=2 pad=t0,b1,l0,r1 noncontig", 1, 16, 24, 19, 32, 3, 3, {2, 2, 0, 1, 0, 1, 1, 1, 1},
     false, true, 0},
    {"ref[2,12,18,18]->12 3x3 depthwise pad=1", 2, 12, 18, 18, 12, 3, 3, {1, 1, 1, 1, 1, 1, 1, 1, 12}, true, false, 0},
    /* few positions per image: images batched into one GEMM (3 batches of 2, 2, 1; two channel
     * chunks in f64; the backward weight in batches of its own), through the tap table's im2col */
    {"ref[5,96,10,14]->48 3x3 pad=1 dil=1x2 (image batches, channel chunks)", 5, 96, 10, 14, 48, 3, 3,
     {1, 1, 1, 1, 1, 1, 1, 2, 1}, true, false, 0},
    {"ref[3,8,6,5]->12 3x3 stride=2 pad=1 groups=2 noncontig (one image batch)", 3, 8, 6, 5, 12, 3, 3,
     {2, 2, 1, 1, 1, 1, 1, 1, 2}, false, true, 0},
    {"ref[4,40,4,4]->64 3x3 pad=1 (4x4 images: batched, not Winograd)", 4, 40, 4, 4, 64, 3, 3,
     {1, 1, 1, 1, 1, 1, 1, 1, 1}, true, false, 0},
    /* more images of few pixels: two batches of four 4x4 images, two of seven 3x3 images, and
     * three of two with groups and uneven padding (Winograd on such images: docs/performance.md) */
    {"ref[8,24,4,4]->40 3x3 pad=1 (two image batches of 64 columns)", 8, 24, 4, 4, 40, 3, 3,
     {1, 1, 1, 1, 1, 1, 1, 1, 1}, true, false, 0},
    {"ref[14,16,3,3]->16 3x3 pad=1 (3x3 images, two batches)", 14, 16, 3, 3, 16, 3, 3, {1, 1, 1, 1, 1, 1, 1, 1, 1},
     false, false, 0},
    {"ref[6,32,5,7]->40 3x3 pad=1,2,0,1 groups=2 noncontig (three image batches, groups)", 6, 32, 5, 7, 40, 3, 3,
     {1, 1, 1, 2, 0, 1, 1, 1, 2}, true, true, 0},
    /* few columns, large K: the register-blocked kernel instead of BLAS (f32 on AVX-512), with K
     * in blocks, channel chunks adding onto the first, 12-, 4- and 1-row tiles, partial column
     * blocks; and the backward input's transposed W */
    {"ref[3,700,4,4]->30 3x3 pad=1 (image batch, register-blocked: K blocks, 2 channel chunks)", 3, 700, 4, 4, 30,
     3, 3, {1, 1, 1, 1, 1, 1, 1, 1, 1}, true, false, 0},
    {"ref[1,900,6,6]->20 3x3 pad=1 (one image, register-blocked over 2 channel chunks)", 1, 900, 6, 6, 20, 3, 3,
     {1, 1, 1, 1, 1, 1, 1, 1, 1}, true, true, 0},
    {"ref[2,300,5,5]->40 1x1 (direct, few positions: register-blocked)", 2, 300, 5, 5, 40, 1, 1,
     {1, 1, 0, 0, 0, 0, 1, 1, 1}, true, false, 0},
    {"ref[2,3,10,10]->8 11x11 pad=5 (image batch past the tap table's size: the general im2col)", 2, 3, 10, 10, 8, 11,
     11, {1, 1, 5, 5, 5, 5, 1, 1, 1}, true, true, 0},
};
#define N_REF_CASES (int)(sizeof ref_cases / sizeof ref_cases[0])

START_TEST(test_reference)
{
    LEAK_CHECK_BEGIN();
    const struct conv_case *c = &ref_cases[_i];
    const struct conv2d_params *p = &c->p;
    const int64_t OH = (c->H + p->pad_top + p->pad_bottom - p->dil_h * (c->KH - 1) - 1) / p->stride_h + 1;
    const int64_t OW = (c->W + p->pad_left + p->pad_right - p->dil_w * (c->KW - 1) - 1) / p->stride_w + 1;
    tensor_scope_begin();
    struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(c->N, c->C, c->H, c->W), -1, 1);
    struct tensor *w = test_uniform(DTYPE_F64, TENSOR_SHAPE(c->O, c->C / p->groups, c->KH, c->KW), -1, 1);
    struct tensor *b = test_uniform(DTYPE_F64, TENSOR_SHAPE(c->O), -1, 1);
    struct tensor *dy = test_uniform(DTYPE_F64, TENSOR_SHAPE(c->N, c->O, OH, OW), -1, 1);
    double *hx = host_f64(x), *hw = host_f64(w), *hb = host_f64(b), *hdy = host_f64(dy);
    double *ho = calloc((size_t)tensor_numel(dy), sizeof(double));
    double *hdx = calloc((size_t)tensor_numel(x), sizeof(double));
    double *hdw = calloc((size_t)tensor_numel(w), sizeof(double)), *hdb = calloc((size_t)c->O, sizeof(double));
    ck_assert(ho && hdx && hdw && hdb);
    ref_conv(c, OH, OW, hx, hw, c->bias ? hb : NULL, hdy, ho, hdx, hdw, hdb);
    struct tensor *r_out = from_host(ho, 4, dy->shape), *r_dx = from_host(hdx, 4, x->shape);
    struct tensor *r_dw = from_host(hdw, 4, w->shape), *r_db = from_host(hdb, 1, b->shape);
    free(hx); free(hw); free(hb); free(hdy); free(ho); free(hdx); free(hdw); free(hdb);

    /* f64, f32, and f32 again with the register-blocked kernel switched off (the BLAS path) */
    double e_f32[2][2] = {{0}};   /* [kernel, BLAS path][out, dx] */
    for (int k = 0; k < 3; k++) {
        const enum dtype dt = k ? DTYPE_F32 : DTYPE_F64;
        const double tol = k ? 2e-6 : 1e-13;
        cpu_conv2d_baseline_only(k == 2);
        tensor_scope_begin();
        struct tensor *xk = tensor_to_dtype(x, dt), *wk = tensor_to_dtype(w, dt), *bk = tensor_to_dtype(b, dt);
        struct tensor *dyk = tensor_to_dtype(dy, dt);
        if (c->noncontig) {
            xk = test_noncontig(xk);
            wk = test_noncontig(wk);
            dyk = test_noncontig(dyk);
        }
        ag_set_requires_grad(xk, true);
        ag_set_requires_grad(wk, true);
        ag_set_requires_grad(bk, true);
        struct tensor *out = ag_conv2d(xk, wk, c->bias ? bk : NULL, p);
        ck_assert_msg(out, "%s: %s", c->label, tensor_error());
        ck_assert_int_eq(ag_backward(out, dyk, false), STATUS_OK);
        const double e_out = test_rel_err(out, r_out), e_dx = test_rel_err(xk->grad, r_dx);
        const double e_dw = test_rel_err(wk->grad, r_dw), e_db = c->bias ? test_rel_err(bk->grad, r_db) : 0;
        printf("reference %s %s%s: out %.1e dx %.1e dw %.1e db %.1e\n", c->label, dtype_name(dt),
               k == 2 ? " (BLAS path)" : "", e_out, e_dx, e_dw, e_db);
        ck_assert_msg(e_out < tol && e_dx < tol && e_dw < tol && e_db < tol, "%s %s: errors above %.0e", c->label,
                      dtype_name(dt), tol);
        if (k) e_f32[k - 1][0] = e_out, e_f32[k - 1][1] = e_dx;
        if (!c->bias) ck_assert_ptr_null(bk->grad);
        tensor_scope_end();
    }
    /* the kernel rounds like BLAS (short chains of K), not merely within tol: one chain over all
     * of K = 6300 had 4x BLAS's error and still passed tol */
    for (int j = 0; j < 2; j++)
        ck_assert_msg(e_f32[0][j] <= 2 * e_f32[1][j] + 1e-7, "%s: %s error %.1e with the kernel, %.1e with BLAS", c->label,
                      j ? "dx" : "out", e_f32[0][j], e_f32[1][j]);
    cpu_conv2d_baseline_only(false);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* The same results, bit for bit, on 1 and 2 threads (forward and both gradients), for
 * the reference cases: every kernel path and way of splitting the work. */
START_TEST(test_thread_determinism)
{
    LEAK_CHECK_BEGIN();
    const int threads0 = tensor_num_threads();
    for (int k = 0; k < N_REF_CASES; k++) {
        const struct conv_case *c = &ref_cases[k];
        tensor_scope_begin();
        struct tensor *x = test_uniform(DTYPE_F32, TENSOR_SHAPE(c->N, c->C, c->H, c->W), -1, 1);
        struct tensor *w = test_uniform(DTYPE_F32, TENSOR_SHAPE(c->O, c->C / c->p.groups, c->KH, c->KW), -1, 1);
        struct tensor *b = test_uniform(DTYPE_F32, TENSOR_SHAPE(c->O), -1, 1);
        ag_set_requires_grad(x, true);
        ag_set_requires_grad(w, true);
        ag_set_requires_grad(b, true);
        struct tensor *res[2][4];
        for (int t = 0; t < 2; t++) {
            tensor_set_num_threads(t + 1);
            struct tensor *out = ag_conv2d(x, w, b, &c->p);
            ck_assert_ptr_nonnull(out);
            struct tensor *R = ag_affine(ag_sin(ag_contiguous(out)), 1, 0);   /* any fixed output gradient */
            ck_assert_int_eq(ag_backward(out, ag_detach(R), false), STATUS_OK);
            res[t][0] = out;
            res[t][1] = x->grad;
            res[t][2] = w->grad;
            res[t][3] = b->grad;
            for (int i = 1; i < 4; i++) tensor_autorelease(tensor_ref(res[t][i]));
            ag_zero_grad(x);
            ag_zero_grad(w);
            ag_zero_grad(b);
        }
        tensor_set_num_threads(threads0);
        for (int i = 0; i < 4; i++) ck_assert_msg(test_max_abs_diff(res[0][i], res[1][i]) == 0, "%s: result %d differs",
                                                  c->label, i);
        tensor_scope_end();
    }
    LEAK_CHECK_END();
}
END_TEST

/* Gradients of x, w, b accumulate correctly when the graph is used twice (x feeds two convs). */
START_TEST(test_shared_input)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(1, 2, 5, 5), -1, 1);
    struct tensor *w = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 2, 3, 3), -1, 1);
    ag_set_requires_grad(x, true);
    struct conv2d_params p = conv2d_params_default();
    p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = 1;
    struct tensor *y = ag_add(ag_conv2d(x, w, NULL, &p), ag_conv2d(x, w, NULL, &p));
    struct tensor *l = ag_sum(y, 0, NULL, false);
    ck_assert_int_eq(ag_backward(l, NULL, false), STATUS_OK);
    ck_assert_ptr_nonnull(x->grad);
    ck_assert_ptr_null(w->grad);
    /* interior elements see all 9 taps of each output channel: grad = 2 * sum of w over o, kh, kw */
    double s = 0;
    for (int64_t o = 0; o < 2; o++)
        for (int64_t i = 0; i < 9; i++) s += tensor_get(w, (int64_t[]){o, 0, i / 3, i % 3});
    ck_assert_double_eq_tol(tensor_get(x->grad, (int64_t[]){0, 0, 2, 2}), 2 * s, 1e-12);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* The node keeps x only for the weight gradient and w only for the input gradient: a
 * frozen conv (weights without gradient, as under LoRA) keeps no activation alive. */
START_TEST(test_saved)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(1, 2, 5, 5), -1, 1);
    struct tensor *w = test_uniform(DTYPE_F64, TENSOR_SHAPE(3, 2, 3, 3), -1, 1);
    struct tensor *b = test_uniform(DTYPE_F64, TENSOR_SHAPE(3), -1, 1);
    ag_set_requires_grad(x, true);
    struct tensor *y = ag_conv2d(x, w, b, NULL);
    ck_assert_ptr_nonnull(y->node);
    ck_assert_ptr_null(y->node->saved[0]);
    ck_assert_ptr_eq(y->node->saved[1]->storage, w->storage);
    struct tensor *x2 = ag_detach(x), *w2 = ag_detach(w);
    ag_set_requires_grad(w2, true);
    y = ag_conv2d(x2, w2, NULL, NULL);
    ck_assert_ptr_eq(y->node->saved[0]->storage, x2->storage);
    ck_assert_ptr_null(y->node->saved[1]);
    ck_assert_int_eq(ag_backward(ag_sum(y, 0, NULL, false), NULL, false), STATUS_OK);
    ck_assert_ptr_nonnull(w2->grad);
    /* no gradient wanted: no node */
    ag_no_grad_begin();
    ck_assert_ptr_null(ag_conv2d(x, w2, NULL, NULL)->node);
    ag_no_grad_end();
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- errors */

static void expect_error(struct tensor *r, const char *needle)
{
    ck_assert_msg(r == NULL, "expected an error containing \"%s\"", needle);
    ck_assert_msg(strstr(tensor_error(), needle), "error \"%s\" lacks \"%s\"", tensor_error(), needle);
    printf("error ok: %s\n", tensor_error());
    tensor_clear_error();
}

/* No input channels is a valid conv (the output is the bias): every path, forward and both
 * gradients, in f32 and f64; it once divided by the zero channel count (SIGFPE) */
START_TEST(test_no_input_channels)
{
    LEAK_CHECK_BEGIN();
    const int64_t shapes[4][5] = {{1, 4, 4, 3, 3}, {2, 4, 4, 3, 3}, {2, 20, 20, 3, 3}, {3, 5, 6, 1, 1}};   /* N, H, W, KH, KW */
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < 4; i++) {
            tensor_scope_begin();
            const enum dtype dt = d ? DTYPE_F32 : DTYPE_F64;
            const int64_t *sh = shapes[i];
            struct tensor *x = tensor_zeros(dt, 4, (int64_t[]){sh[0], 0, sh[1], sh[2]}, DEVICE_CPU);
            struct tensor *w = tensor_zeros(dt, 4, (int64_t[]){3, 0, sh[3], sh[4]}, DEVICE_CPU);
            struct tensor *b = tensor_to_dtype(test_uniform(DTYPE_F64, TENSOR_SHAPE(3), -1, 1), dt);
            ag_set_requires_grad(x, true);
            ag_set_requires_grad(w, true);
            ag_set_requires_grad(b, true);
            struct conv2d_params p = conv2d_params_default();
            p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = sh[3] / 2;
            struct tensor *out = ag_conv2d(x, w, b, &p);
            ck_assert_msg(out, "%s", tensor_error());
            ck_assert(out->shape[0] == sh[0] && out->shape[1] == 3 && out->shape[2] == sh[1] && out->shape[3] == sh[2]);
            for (int64_t j = 0; j < tensor_numel(out); j++)
                ck_assert(tensor_get_flat(out, j) == tensor_get_flat(b, j / (sh[1] * sh[2]) % 3));
            struct tensor *dy = tensor_to_dtype(test_uniform(DTYPE_F64, out->ndim, out->shape, -1, 1), dt);
            ck_assert_int_eq(ag_backward(out, dy, false), STATUS_OK);
            for (int o = 0; o < 3; o++) {   /* db[o]: the sum of dy over its channel */
                double sum = 0;
                for (int64_t j = 0; j < tensor_numel(dy); j++)
                    if (j / (sh[1] * sh[2]) % 3 == o) sum += tensor_get_flat(dy, j);
                ck_assert(fabs(tensor_get_flat(b->grad, o) - sum) <= 1e-5 * (1 + fabs(sum)));
            }
            tensor_scope_end();
        }
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_errors)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3, 8, 8), -1, 1);
    struct tensor *w = test_uniform(DTYPE_F64, TENSOR_SHAPE(4, 2, 3, 3), -1, 1);
    struct tensor *w3 = test_uniform(DTYPE_F64, TENSOR_SHAPE(4, 3, 3, 3), -1, 1);
    struct tensor *b = test_uniform(DTYPE_F64, TENSOR_SHAPE(4), -1, 1);
    struct conv2d_params p = conv2d_params_default();
    expect_error(ag_conv2d(x, w, b, &p), "input [2,3,8,8] has 3 channels but weight [4,2,3,3] with groups=1 expects 2");
    p.groups = 2;
    expect_error(ag_conv2d(x, w, b, &p), "groups=2 does not divide the 3 channels of input [2,3,8,8]");
    struct tensor *x4 = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 4, 8, 8), -1, 1);
    struct tensor *w5 = test_uniform(DTYPE_F64, TENSOR_SHAPE(5, 2, 3, 3), -1, 1);
    expect_error(ag_conv2d(x4, w5, NULL, &p), "groups=2 does not divide the 5 output channels of weight [5,2,3,3]");
    p.groups = 0;
    expect_error(ag_conv2d(x, w3, b, &p), "groups must be >= 1");
    p = conv2d_params_default();
    p.stride_w = 0;
    expect_error(ag_conv2d(x, w3, b, &p), "stride");
    p = conv2d_params_default();
    p.pad_left = -1;
    expect_error(ag_conv2d(x, w3, b, &p), "padding");
    p = conv2d_params_default();
    struct tensor *b5 = test_uniform(DTYPE_F64, TENSOR_SHAPE(5), -1, 1);
    expect_error(ag_conv2d(x, w3, b5, &p), "bias [5] does not fit weight [4,3,3,3]");
    expect_error(ag_conv2d(tensor_select(x, 0, 0), w3, b, &p), "input [N,C,H,W] must have 4 dims");
    expect_error(ag_conv2d(x, tensor_select(w3, 0, 0), b, &p), "weight [O,C/groups,KH,KW] must have 4 dims");
    expect_error(ag_conv2d(x, tensor_to_dtype(w3, DTYPE_F32), b, &p), "input is f64 but weight is f32");
    expect_error(ag_conv2d(tensor_to_dtype(x, DTYPE_I32), w3, b, &p), "expects f32 or f64");
    struct tensor *wbig = test_uniform(DTYPE_F64, TENSOR_SHAPE(4, 3, 5, 5), -1, 1);
    p.dil_h = 2;
    expect_error(ag_conv2d(x, wbig, b, &p), "padded to 8x8 is smaller than the kernel 5x5 (dilated to 9x5)");
    /* a NULL input propagates without overwriting the first message */
    tensor_fail(STATUS_VALUE, "first failure");
    ck_assert_ptr_null(ag_conv2d(NULL, w3, b, NULL));
    ck_assert_ptr_null(ag_conv2d(x, NULL, b, NULL));
    ck_assert_str_eq(tensor_error(), "first failure");
    tensor_clear_error();
    /* p = NULL means the defaults */
    struct tensor *y = ag_conv2d(x, w3, b, NULL);
    ck_assert_ptr_nonnull(y);
    ck_assert(y->shape[0] == 2 && y->shape[1] == 4 && y->shape[2] == 6 && y->shape[3] == 6);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("conv");
    TCase *tc = tcase_create("conv2d");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_gradcheck, 0, N_GRAD_CASES);
    tcase_add_loop_test(tc, test_reference, 0, N_REF_CASES);
    tcase_add_test(tc, test_thread_determinism);
    tcase_add_test(tc, test_shared_input);
    tcase_add_test(tc, test_saved);
    tcase_add_test(tc, test_no_input_channels);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
