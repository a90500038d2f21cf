/* test_checkpoint.c — gradient checkpointing: gradients equal to the uncheckpointed ones bit
 * for bit (CPU, deterministic mode), nesting, several inputs and outputs, captured
 * parameters, no-grad regions and random ops inside, and peak memory that grows with the
 * number of steps only by what must be kept. */
#include "tests/harness.h"
#include "tensor/alloc.h"

#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- a small model */

struct net {
    int64_t d, hidden;
    struct tensor *w1, *b1, *w2, *b2, *temb;   /* temb: one row per step */
    double dropout;
    bool inner_ckpt;   /* nest a checkpoint inside the block */
};

static void net_init(struct net *n, int64_t d, int64_t hidden, int steps)
{
    n->d = d;
    n->hidden = hidden;
    n->w1 = tensor_keep(test_uniform(DTYPE_F32, TENSOR_SHAPE(hidden, d), -0.5 / sqrt((double)d), 0.5 / sqrt((double)d)));
    n->b1 = tensor_keep(test_uniform(DTYPE_F32, TENSOR_SHAPE(hidden), -0.1, 0.1));
    n->w2 = tensor_keep(test_uniform(DTYPE_F32, TENSOR_SHAPE(d, hidden), -0.5 / sqrt((double)hidden), 0.5 / sqrt((double)hidden)));
    n->b2 = tensor_keep(test_uniform(DTYPE_F32, TENSOR_SHAPE(d), -0.1, 0.1));
    n->temb = tensor_keep(test_uniform(DTYPE_F32, TENSOR_SHAPE(steps, hidden), -0.3, 0.3));
    struct tensor *ps[5] = {n->w1, n->b1, n->w2, n->b2, n->temb};
    for (int i = 0; i < 5; i++) ag_set_requires_grad(ps[i], true);
    n->dropout = 0;
    n->inner_ckpt = false;
}

static void net_free(struct net *n)
{
    struct tensor *ps[5] = {n->w1, n->b1, n->w2, n->b2, n->temb};
    for (int i = 0; i < 5; i++) tensor_free(ps[i]);
}

static void net_zero_grad(struct net *n)
{
    struct tensor *ps[5] = {n->w1, n->b1, n->w2, n->b2, n->temb};
    for (int i = 0; i < 5; i++) ag_zero_grad(ps[i]);
}

struct call {
    struct net *net;
    int t;
};

static enum status mlp_inner(void *ctx, struct tensor *const *in, struct tensor **out)
{
    struct call *c = ctx;
    out[0] = ag_gelu(in[0]);
    (void)c;
    return out[0] ? STATUS_OK : tensor_status();
}

/* f(x, t) = W2 dropout(gelu(W1 x + b1 + temb[t])) + b2 */
static enum status f_theta(void *ctx, struct tensor *const *in, struct tensor **out)
{
    struct call *c = ctx;
    struct net *n = c->net;
    struct tensor *h = ag_add(ag_linear(in[0], n->w1, n->b1), ag_narrow(n->temb, 0, c->t, 1));
    if (n->inner_ckpt) {
        struct tensor *g[1];
        if (ag_checkpoint(mlp_inner, c, 1, &h, 1, g)) return tensor_status();
        h = g[0];
    } else {
        h = ag_gelu(h);
    }
    h = ag_dropout(h, n->dropout, n->dropout > 0);
    out[0] = ag_linear(h, n->w2, n->b2);
    return out[0] ? STATUS_OK : tensor_status();
}

/* x_{t-1} = a_t x_t + b_t f(x_t, t); reward = mean(x_0 sin x_0). Each step runs in its own
 * scope and only the carried x_t leaves it (the loop pattern: a scope around the whole loop
 * would keep every step's temporaries alive until its end). */
static struct tensor *sampler_loop(struct net *n, struct tensor *x0, int T, bool ckpt, struct call *calls)
{
    struct tensor *x = tensor_ref(x0);
    for (int t = T - 1; t >= 0; t--) {
        calls[t].net = n;
        calls[t].t = t;
        tensor_scope_begin();
        struct tensor *f[1] = {NULL}, *next = NULL;
        enum status s = ckpt ? ag_checkpoint(f_theta, &calls[t], 1, &x, 1, f) : f_theta(&calls[t], &x, f);
        double a = 1.0 - 0.01 * (t % 7), b = -0.05 - 0.002 * t;
        if (!s) next = tensor_keep(ag_add(ag_scale(x, a), ag_scale(f[0], b)));
        tensor_scope_end();
        tensor_free(x);
        x = next;
        if (!x) return NULL;
    }
    tensor_autorelease(x);
    return ag_mean(ag_mul(x, ag_sin(x)), 0, NULL, false);
}

/* run the loop and return copies of every parameter gradient */
static void loop_grads(struct net *n, struct tensor *x0, int T, bool ckpt, struct tensor **g, double *reward)
{
    struct call calls[64];
    net_zero_grad(n);
    ag_rng_set(99, 0);
    tensor_scope_begin();
    struct tensor *r = sampler_loop(n, x0, T, ckpt, calls);
    ck_assert_msg(r != NULL, "%s", tensor_error());
    *reward = tensor_get_flat(r, 0);
    ck_assert_int_eq(ag_backward(r, NULL, false), STATUS_OK);
    tensor_scope_end();
    struct tensor *ps[5] = {n->w1, n->b1, n->w2, n->b2, n->temb};
    for (int i = 0; i < 5; i++) {
        ck_assert_ptr_nonnull(ps[i]->grad);
        g[i] = tensor_clone(ps[i]->grad);
    }
}

static bool bit_equal(const struct tensor *a, const struct tensor *b)
{
    return tensor_numel(a) == tensor_numel(b) &&
           memcmp(tensor_data_ptr(a), tensor_data_ptr(b), (size_t)tensor_numel(a) * dtype_size(a->dtype)) == 0;
}

static void check_loop_bitwise(const char *label, int T, double dropout, bool nested)
{
    LEAK_CHECK_BEGIN();
    tensor_set_deterministic(true);
    struct net n;
    net_init(&n, 16, 48, T);
    n.dropout = dropout;
    n.inner_ckpt = nested;
    struct tensor *x0 = tensor_keep(test_uniform(DTYPE_F32, TENSOR_SHAPE(4, 16), -1, 1));
    struct tensor *g0[5], *g1[5];
    double r0, r1;
    loop_grads(&n, x0, T, false, g0, &r0);
    loop_grads(&n, x0, T, true, g1, &r1);
    bool same = r0 == r1;
    for (int i = 0; i < 5; i++) same = same && bit_equal(g0[i], g1[i]);
    printf("checkpoint %s T=%d: reward %.6f, gradients %s\n", label, T, r1, same ? "bit-identical" : "DIFFER");
    ck_assert_msg(same, "checkpointed gradients differ from the plain ones (%s)", label);
    for (int i = 0; i < 5; i++) { tensor_free(g0[i]); tensor_free(g1[i]); }
    tensor_free(x0);
    net_free(&n);
    tensor_set_deterministic(false);
    LEAK_CHECK_END();
}

START_TEST(test_sampler_loop_bitwise) { check_loop_bitwise("sampler_loop", 50, 0, false); }
END_TEST
START_TEST(test_dropout_bitwise) { check_loop_bitwise("dropout_inside", 8, 0.2, false); }
END_TEST
START_TEST(test_nested_bitwise) { check_loop_bitwise("nested", 8, 0.1, true); }
END_TEST

/* ---------------------------------------------------------------- residual conv blocks */

struct conv_block {
    struct tensor *w1, *b1, *w2, *b2, *gw, *gb;
};

static enum status conv_block_fn(void *ctx, struct tensor *const *in, struct tensor **out)
{
    struct conv_block *c = ctx;
    struct conv2d_params p = conv2d_params_default();
    p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = 1;
    struct tensor *h = ag_silu(ag_group_norm(ag_conv2d(in[0], c->w1, c->b1, &p), 4, c->gw, c->gb, 1e-5));
    out[0] = ag_add(in[0], ag_conv2d(h, c->w2, c->b2, &p));
    return out[0] ? STATUS_OK : tensor_status();
}

START_TEST(test_conv_blocks_bitwise)
{
    LEAK_CHECK_BEGIN();
    tensor_set_deterministic(true);
    enum { NB = 4 };
    struct conv_block blocks[NB];
    struct tensor *params[NB * 6];
    for (int b = 0; b < NB; b++) {
        struct conv_block *c = &blocks[b];
        c->w1 = tensor_keep(test_uniform(DTYPE_F32, TENSOR_SHAPE(16, 8, 3, 3), -0.2, 0.2));
        c->b1 = tensor_keep(test_uniform(DTYPE_F32, TENSOR_SHAPE(16), -0.1, 0.1));
        c->w2 = tensor_keep(test_uniform(DTYPE_F32, TENSOR_SHAPE(8, 16, 3, 3), -0.2, 0.2));
        c->b2 = tensor_keep(test_uniform(DTYPE_F32, TENSOR_SHAPE(8), -0.1, 0.1));
        c->gw = tensor_keep(test_uniform(DTYPE_F32, TENSOR_SHAPE(16), 0.5, 1.5));
        c->gb = tensor_keep(test_uniform(DTYPE_F32, TENSOR_SHAPE(16), -0.1, 0.1));
        struct tensor *ps[6] = {c->w1, c->b1, c->w2, c->b2, c->gw, c->gb};
        for (int i = 0; i < 6; i++) { ag_set_requires_grad(ps[i], true); params[b * 6 + i] = ps[i]; }
    }
    struct tensor *x0 = tensor_keep(test_uniform(DTYPE_F32, TENSOR_SHAPE(2, 8, 12, 12), -1, 1));
    ag_set_requires_grad(x0, true);
    struct tensor *grads[2][NB * 6 + 1];
    for (int ck = 0; ck < 2; ck++) {
        tensor_scope_begin();
        struct tensor *x = x0;
        for (int b = 0; b < NB; b++) {
            struct tensor *o[1];
            enum status s = ck ? ag_checkpoint(conv_block_fn, &blocks[b], 1, &x, 1, o) : conv_block_fn(&blocks[b], &x, o);
            ck_assert_msg(s == STATUS_OK, "%s", tensor_error());
            x = o[0];
        }
        ck_assert_int_eq(ag_backward(ag_mean(ag_square(x), 0, NULL, false), NULL, false), STATUS_OK);
        tensor_scope_end();
        for (int i = 0; i < NB * 6; i++) { grads[ck][i] = tensor_ref(params[i]->grad); ag_zero_grad(params[i]); }
        grads[ck][NB * 6] = tensor_ref(x0->grad);
        ag_zero_grad(x0);
    }
    bool same = true;
    for (int i = 0; i <= NB * 6; i++) same = same && bit_equal(grads[0][i], grads[1][i]);
    printf("checkpoint residual_conv_blocks x%d: gradients %s\n", NB, same ? "bit-identical" : "DIFFER");
    ck_assert(same);
    for (int i = 0; i <= NB * 6; i++) { tensor_free(grads[0][i]); tensor_free(grads[1][i]); }
    for (int i = 0; i < NB * 6; i++) tensor_free(params[i]);
    tensor_free(x0);
    tensor_set_deterministic(false);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- residual blocks, several inputs and outputs */

/* four inputs (two activations, the weights), two outputs, a no-grad region inside */
static enum status two_in_two_out(void *ctx, struct tensor *const *in, struct tensor **out)
{
    (void)ctx;
    struct tensor *h = ag_add(in[0], ag_tanh(ag_linear(ag_mul(in[0], in[1]), in[2], in[3])));
    ag_no_grad_begin();
    /* recorded nowhere; used only through a comparison (constant 1), so finite differences
     * and the analytic gradient agree */
    struct tensor *one = ag_compare(BINARY_GT, ag_mean(h, 0, NULL, false), tensor_full(h->dtype, 0, NULL, -1e9, DEVICE_CPU));
    ag_no_grad_end();
    out[0] = ag_mul(h, one);
    out[1] = ag_silu(in[1]);
    return out[0] && out[1] ? STATUS_OK : tensor_status();
}

static struct tensor *f_residual(struct tensor *const *in, void *ctx)
{
    bool ckpt = ctx != NULL;
    struct tensor *x = in[0], *s = in[1];
    for (int k = 0; k < 3; k++) {
        struct tensor *io[4] = {x, s, in[2], in[3]}, *o[2];
        if (ckpt) {
            if (ag_checkpoint(two_in_two_out, NULL, 4, io, 2, o)) return NULL;
        } else if (two_in_two_out(NULL, io, o)) {
            return NULL;
        }
        x = o[0];
        s = o[1];
    }
    return ag_add(x, s);
}

START_TEST(test_residual_gradcheck)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *in[4] = {test_uniform(DTYPE_F64, TENSOR_SHAPE(3, 5), -1, 1), test_uniform(DTYPE_F64, TENSOR_SHAPE(3, 5), -1, 1),
                            test_uniform(DTYPE_F64, TENSOR_SHAPE(5, 5), -0.5, 0.5), test_uniform(DTYPE_F64, TENSOR_SHAPE(5), -0.5, 0.5)};
    ck_assert(gradcheck("checkpoint[residual,4in,2out,no_grad_inside]", f_residual, (void *)1, 4, in, NULL));
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* captured parameters only (the input needs no gradient): gradients must still arrive */
START_TEST(test_captured_params)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct net n;
    net_init(&n, 8, 16, 1);
    struct tensor *x = test_uniform(DTYPE_F32, TENSOR_SHAPE(2, 8), -1, 1);   /* no requires_grad */
    struct call c = {&n, 0};
    struct tensor *f[1];
    ck_assert_int_eq(ag_checkpoint(f_theta, &c, 1, &x, 1, f), STATUS_OK);
    ck_assert(f[0]->requires_grad);
    ck_assert_int_eq(ag_backward(ag_sum(f[0], 0, NULL, false), NULL, false), STATUS_OK);
    ck_assert_ptr_nonnull(n.w1->grad);
    ck_assert_ptr_nonnull(n.b2->grad);
    net_free(&n);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- peak memory */

static int64_t loop_peak(struct net *n, struct tensor *x0, int T, bool ckpt)
{
    struct call calls[64];
    net_zero_grad(n);
    struct mem_stats s0, s1;
    mem_get_stats(DEVICE_CPU, &s0);
    mem_reset_peak(DEVICE_CPU);
    tensor_scope_begin();
    struct tensor *r = sampler_loop(n, x0, T, ckpt, calls);
    ck_assert_int_eq(ag_backward(r, NULL, false), STATUS_OK);
    tensor_scope_end();
    mem_get_stats(DEVICE_CPU, &s1);
    return s1.peak_bytes - s0.live_bytes;
}

START_TEST(test_peak_memory)
{
    LEAK_CHECK_BEGIN();
    struct net n;
    const int64_t B = 8, D = 256, H = 1024;
    net_init(&n, D, H, 50);
    struct tensor *x0 = tensor_keep(test_uniform(DTYPE_F32, TENSOR_SHAPE(B, D), -1, 1));
    const double x_bytes = (double)(B * D * 4);
    int64_t pc[3], pn[3];
    const int Ts[3] = {10, 20, 50};
    for (int i = 0; i < 3; i++) {
        pc[i] = loop_peak(&n, x0, Ts[i], true);
        pn[i] = loop_peak(&n, x0, Ts[i], false);
    }
    double slope_c = (double)(pc[2] - pc[0]) / 40, slope_n = (double)(pn[2] - pn[0]) / 40;
    for (int i = 0; i < 3; i++)
        printf("peak T=%d: checkpointed %.1f KiB, plain %.1f KiB\n", Ts[i], (double)pc[i] / 1024, (double)pn[i] / 1024);
    printf("peak growth per step: checkpointed %.0f B (x_t is %.0f B), plain %.0f B (%.1fx x_t)\n", slope_c, x_bytes,
           slope_n, slope_n / x_bytes);
    /* per step the checkpointed loop keeps x_t (the checkpoint's input) and nothing of f */
    ck_assert_msg(slope_c <= 1.5 * x_bytes, "checkpointed peak grows by %.0f B per step, more than 1.5 x_t", slope_c);
    /* and the plain loop keeps f's activations: the measure can tell the two apart */
    ck_assert(slope_n >= 4 * x_bytes);
    tensor_free(x0);
    net_free(&n);
    LEAK_CHECK_END();
}
END_TEST

/* misuse: an error inside the function surfaces as a status, not a crash */
static enum status failing(void *ctx, struct tensor *const *in, struct tensor **out)
{
    (void)ctx;
    out[0] = ag_matmul(in[0], in[0]);   /* [2,3] @ [2,3]: shape error */
    return out[0] ? STATUS_OK : tensor_status();
}

START_TEST(test_error_inside)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = test_uniform(DTYPE_F32, TENSOR_SHAPE(2, 3), -1, 1), *o[1];
    ag_set_requires_grad(x, true);
    ck_assert_int_eq(ag_checkpoint(failing, NULL, 1, &x, 1, o), STATUS_SHAPE);
    ck_assert_ptr_null(o[0]);
    ck_assert(strstr(tensor_error(), "matmul") != NULL);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    test_seed();
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("checkpoint");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_sampler_loop_bitwise);
    tcase_add_test(tc, test_dropout_bitwise);
    tcase_add_test(tc, test_nested_bitwise);
    tcase_add_test(tc, test_conv_blocks_bitwise);
    tcase_add_test(tc, test_residual_gradcheck);
    tcase_add_test(tc, test_captured_params);
    tcase_add_test(tc, test_peak_memory);
    tcase_add_test(tc, test_error_inside);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
