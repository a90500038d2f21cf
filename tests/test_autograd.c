/* test_autograd.c — the backward engine: roots and output gradients, accumulation into
 * leaves, retain_graph, no-grad and detach, shared subgraphs, several roots, misuse
 * errors, graph lifetime and memory, determinism. */
#include "tests/harness.h"
#include "tensor/alloc.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#define EXPECT_MSG(cond, ...) do { if (!(cond)) ck_abort_msg(__VA_ARGS__); } while (0)

static bool contains(const char *hay, const char *needle) { return strstr(hay, needle) != NULL; }

#define ck_error_has(status_, needle)                                                                      \
    do {                                                                                                   \
        ck_assert_msg(tensor_status() == (status_), "status %d, expected %d (%s)", (int)tensor_status(),    \
                      (int)(status_), tensor_error());                                                     \
        ck_assert_msg(contains(tensor_error(), needle), "message '%s' lacks '%s'", tensor_error(), needle); \
    } while (0)

/* a leaf of uniform values that requires a gradient (scope-owned) */
static struct tensor *leaf(enum dtype dt, int ndim, const int64_t *shape, double lo, double hi)
{
    struct tensor *x = test_uniform(dt, ndim, shape, lo, hi);
    ck_assert_int_eq(ag_set_requires_grad(x, true), STATUS_OK);
    return x;
}

/* every element of `got` equals f(x_i, g_i) within tol (g may be NULL) */
static void check_grad(const char *what, const struct tensor *got, const struct tensor *x, const struct tensor *g,
                       double (*f)(double x, double g), double tol)
{
    ck_assert_msg(got != NULL, "%s: no gradient", what);
    ck_assert_msg(tensor_same_shape(got, x), "%s: gradient shape differs", what);
    for (int64_t i = 0; i < tensor_numel(x); i++) {
        double want = f(tensor_get_flat(x, i), g ? tensor_get_flat(g, i) : 1.0), v = tensor_get_flat(got, i);
        EXPECT_MSG(fabs(v - want) <= tol * fmax(1.0, fabs(want)), "%s: element %lld is %.17g, expected %.17g", what,
                   (long long)i, v, want);
    }
}

static double d_sq_plus_3x(double x, double g) { (void)g; return 2 * x + 3; }
static double d_sq_given(double x, double g) { return 2 * x * g; }
static double d_one(double x, double g) { (void)x; (void)g; return 1; }
static double d_g(double x, double g) { (void)x; return g; }
static double d_2g(double x, double g) { (void)x; return 2 * g; }
static double d_exp(double x, double g) { (void)g; return exp(x); }
static double d_2exp(double x, double g) { (void)g; return 2 * exp(x); }
static double d_x(double x, double g) { (void)g; return x; }
static double d_diamond(double x, double g) { (void)g; return 2 * exp(x) + 2 * x * exp(x); }
static double d_many(double x, double g) { (void)g; return exp(x) + 2 * exp(2 * x) + 2 * x + 3; }

/* ---------------------------------------------------------------- basics */

START_TEST(test_backward_scalar)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = leaf(DTYPE_F64, TENSOR_SHAPE(3, 4), -1, 1);
    struct tensor *y = ag_sum(ag_add(ag_mul(x, x), ag_scale(x, 3)), 0, NULL, false);
    ck_assert(y->requires_grad && y->ndim == 0);
    ck_assert_ptr_null(x->grad);
    ck_assert_int_eq(ag_backward(y, NULL, false), STATUS_OK);
    check_grad("sum(x*x + 3x)", x->grad, x, NULL, d_sq_plus_3x, 1e-15);
    ck_assert(x->grad->dtype == DTYPE_F64 && tensor_is_contiguous(x->grad));
    /* a one-element root of any rank counts as a scalar */
    struct tensor *x2 = leaf(DTYPE_F32, TENSOR_SHAPE(5), -1, 1);
    ck_assert_int_eq(ag_backward(ag_sum(x2, 1, (int[]){0}, true), NULL, false), STATUS_OK);
    check_grad("sum keepdim [1]", x2->grad, x2, NULL, d_one, 0);
    ck_assert(x2->grad->dtype == DTYPE_F32);
    /* the root may be a leaf itself */
    struct tensor *s = leaf(DTYPE_F64, 0, NULL, 0, 1);
    ck_assert_int_eq(ag_backward(s, NULL, false), STATUS_OK);
    ck_assert(tensor_get_flat(s->grad, 0) == 1.0);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_backward_given_grad)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = leaf(DTYPE_F64, TENSOR_SHAPE(2, 3), -1, 1);
    struct tensor *g = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3), -2, 2);
    ck_assert_int_eq(ag_backward(ag_mul(x, x), g, false), STATUS_OK);
    check_grad("x*x with g", x->grad, x, g, d_sq_given, 1e-15);
    /* through views only: the gradient arrives as a view of g, and the leaf must get its
     * own copy (accumulating later must not write into g) */
    struct tensor *x2 = leaf(DTYPE_F64, TENSOR_SHAPE(2, 3), -1, 1);
    struct tensor *gt = test_uniform(DTYPE_F64, TENSOR_SHAPE(3, 2), -2, 2);
    struct tensor *g_copy = tensor_clone(gt);
    ck_assert_int_eq(ag_backward(ag_transpose(x2, 0, 1), gt, false), STATUS_OK);
    ck_assert(x2->grad->storage != gt->storage);
    struct tensor *gtt = tensor_transpose(gt, 0, 1);
    check_grad("transpose with g", x2->grad, x2, gtt, d_g, 0);
    ck_assert_int_eq(ag_backward(ag_transpose(x2, 0, 1), gt, false), STATUS_OK);
    check_grad("transpose with g, twice", x2->grad, x2, gtt, d_2g, 0);
    ck_assert(test_max_abs_diff(gt, g_copy) == 0);
    /* a non-contiguous output gradient */
    struct tensor *x3 = leaf(DTYPE_F64, TENSOR_SHAPE(4, 3), -1, 1);
    struct tensor *g3 = test_noncontig(test_uniform(DTYPE_F64, TENSOR_SHAPE(4, 3), -1, 1));
    ck_assert_int_eq(ag_backward(ag_mul(x3, x3), g3, false), STATUS_OK);
    check_grad("x*x with strided g", x3->grad, x3, g3, d_sq_given, 1e-15);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_accumulate_and_zero_grad)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = leaf(DTYPE_F64, TENSOR_SHAPE(5), -1, 1);
    for (int k = 0; k < 2; k++) ck_assert_int_eq(ag_backward(ag_sum(ag_exp(x), 0, NULL, false), NULL, false), STATUS_OK);
    check_grad("exp, two backward calls", x->grad, x, NULL, d_2exp, 1e-15);
    /* a reference to the gradient taken earlier sees the accumulation (it is updated in place);
     * after zero_grad the next backward makes a new one. Held with a reference of its own: a
     * bare pointer to the freed gradient could be handed out again for the new one (and was,
     * as the allocator's state happened to fall) */
    struct tensor *held = tensor_ref(x->grad);
    ag_zero_grad(x);
    ck_assert_ptr_null(x->grad);
    ag_zero_grad(x);   /* twice is fine */
    ag_zero_grad(NULL);
    ck_assert_int_eq(ag_backward(ag_sum(ag_exp(x), 0, NULL, false), NULL, false), STATUS_OK);
    check_grad("exp after zero_grad", x->grad, x, NULL, d_exp, 1e-15);
    ck_assert(x->grad != held);
    tensor_free(held);
    /* two leaves, one graph, accumulated twice */
    struct tensor *a = leaf(DTYPE_F64, TENSOR_SHAPE(3), -1, 1), *b = leaf(DTYPE_F64, TENSOR_SHAPE(3), -1, 1);
    for (int k = 0; k < 2; k++) ck_assert_int_eq(ag_backward(ag_sum(ag_mul(a, b), 0, NULL, false), NULL, false), STATUS_OK);
    for (int64_t i = 0; i < 3; i++) {
        ck_assert_double_eq_tol(tensor_get_flat(a->grad, i), 2 * tensor_get_flat(b, i), 1e-15);
        ck_assert_double_eq_tol(tensor_get_flat(b->grad, i), 2 * tensor_get_flat(a, i), 1e-15);
    }
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_retain_graph)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = leaf(DTYPE_F64, TENSOR_SHAPE(4), -1, 1);
    struct tensor *h = ag_exp(x);
    struct tensor *y = ag_sum(ag_mul(h, h), 0, NULL, false);   /* d/dx = 2 e^{2x} */
    ck_assert_int_eq(ag_backward(y, NULL, true), STATUS_OK);
    ck_assert_int_eq(ag_backward(y, NULL, false), STATUS_OK);
    for (int64_t i = 0; i < 4; i++)
        ck_assert_double_eq_tol(tensor_get_flat(x->grad, i), 4 * exp(2 * tensor_get_flat(x, i)), 1e-14);
    struct tensor *before = tensor_clone(x->grad);
    /* the graph is gone now: a third backward fails cleanly */
    tensor_clear_error();
    ck_assert_int_eq(ag_backward(y, NULL, false), STATUS_GRAPH);
    ck_error_has(STATUS_GRAPH, "retain_graph");
    ck_assert(test_max_abs_diff(x->grad, before) == 0);
    /* ... also when a new root reaches the released part through a kept intermediate */
    struct tensor *y2 = ag_sum(ag_scale(h, 2), 0, NULL, false);
    tensor_clear_error();
    ck_assert_int_eq(ag_backward(y2, NULL, false), STATUS_GRAPH);
    ck_error_has(STATUS_GRAPH, "retain_graph");
    ck_assert(test_max_abs_diff(x->grad, before) == 0);
    /* a fresh graph on the same leaf still works */
    ag_zero_grad(x);
    ck_assert_int_eq(ag_backward(ag_sum(ag_exp(x), 0, NULL, false), NULL, false), STATUS_OK);
    check_grad("fresh graph", x->grad, x, NULL, d_exp, 1e-15);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_no_grad)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = leaf(DTYPE_F64, TENSOR_SHAPE(3), -1, 1);
    ck_assert(ag_grad_enabled());
    ag_no_grad_begin();
    ck_assert(!ag_grad_enabled());
    struct tensor *y = ag_sum(ag_exp(ag_mul(x, x)), 0, NULL, false);
    ck_assert(!y->requires_grad && y->node == NULL);
    ck_assert(y->ndim == 0);
    /* grad mode can be switched back on inside */
    ag_grad_mode_push(true);
    struct tensor *z = ag_mul(x, x);
    ck_assert(z->requires_grad && z->node != NULL);
    ag_grad_mode_pop();
    ck_assert(!ag_grad_enabled());
    ag_no_grad_end();
    ck_assert(ag_grad_enabled());
    tensor_clear_error();
    ck_assert_int_eq(ag_backward(y, NULL, false), STATUS_GRAPH);
    ck_error_has(STATUS_GRAPH, "does not require");
    ck_assert_ptr_null(x->grad);
    /* values are the same as with grad mode on */
    struct tensor *yg = ag_sum(ag_exp(ag_mul(x, x)), 0, NULL, false);
    ck_assert(tensor_get_flat(yg, 0) == tensor_get_flat(y, 0));
    /* ops on tensors that need no gradient record nothing either */
    struct tensor *c = test_uniform(DTYPE_F64, TENSOR_SHAPE(3), -1, 1);
    struct tensor *w = ag_exp(c);
    ck_assert(!w->requires_grad && w->node == NULL);
    ck_assert_int_eq(ag_backward(z, tensor_zeros_like(z), false), STATUS_OK);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_detach)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = leaf(DTYPE_F64, TENSOR_SHAPE(4), 0.5, 1.5);
    struct tensor *d = ag_detach(x);
    ck_assert(d != x && d->storage == x->storage && !d->requires_grad && d->node == NULL);
    /* y = x * stop_gradient(x): dy/dx = x, not 2x */
    ck_assert_int_eq(ag_backward(ag_sum(ag_mul(x, d), 0, NULL, false), NULL, false), STATUS_OK);
    check_grad("x * detach(x)", x->grad, x, NULL, d_x, 1e-15);
    /* detaching a non-leaf cuts the graph above it */
    ag_zero_grad(x);
    struct tensor *e = ag_detach(ag_exp(x));
    ck_assert(!e->requires_grad && e->node == NULL);
    ck_assert_int_eq(ag_backward(ag_sum(ag_mul(e, x), 0, NULL, false), NULL, false), STATUS_OK);
    check_grad("detach(exp(x)) * x", x->grad, x, NULL, d_exp, 1e-15);
    /* a detached tensor can become a leaf of its own */
    ck_assert_int_eq(ag_set_requires_grad(e, true), STATUS_OK);
    ck_assert_int_eq(ag_backward(ag_sum(e, 0, NULL, false), NULL, false), STATUS_OK);
    check_grad("detached leaf", e->grad, e, NULL, d_one, 0);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- graph shapes */

static struct tensor *f_diamond(struct tensor *const *in, void *ctx)
{
    (void)ctx;
    struct tensor *x = in[0];
    struct tensor *a = ag_sin(x), *b = ag_mul(x, ag_exp(x));   /* x feeds three nodes */
    return ag_add(ag_mul(a, b), ag_sum(ag_mul(b, b), 1, (int[]){-1}, true));
}

START_TEST(test_diamond)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = leaf(DTYPE_F64, TENSOR_SHAPE(2, 3), -1, 1);
    /* y = sum(2x * e^x): both paths from x meet again */
    struct tensor *y = ag_sum(ag_mul(ag_scale(x, 2), ag_exp(x)), 0, NULL, false);
    ck_assert_int_eq(ag_backward(y, NULL, false), STATUS_OK);
    check_grad("2x * exp(x)", x->grad, x, NULL, d_diamond, 1e-14);
    /* the same tensor as both inputs of one node */
    ag_zero_grad(x);
    ck_assert_int_eq(ag_backward(ag_sum(ag_mul(x, x), 0, NULL, false), NULL, false), STATUS_OK);
    check_grad("x * x", x->grad, x, NULL, d_sq_given, 1e-15);
    /* a wider diamond, checked numerically */
    struct tensor *x0 = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3), -1, 1);
    ck_assert(gradcheck("diamond[sin(x)*x*exp(x)+rowsum((x*exp(x))^2)]", f_diamond, NULL, 1, &x0, NULL));
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_backward_many)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = leaf(DTYPE_F64, TENSOR_SHAPE(5), -1, 1);
    /* roots that share a subgraph: r1 = sum(e^x), r2 = sum(e^x * e^x), r3 = sum(x*x + 3x) */
    struct tensor *h = ag_exp(x);
    struct tensor *roots[3] = {ag_sum(h, 0, NULL, false), ag_sum(ag_mul(h, h), 0, NULL, false),
                               ag_sum(ag_add(ag_mul(x, x), ag_scale(x, 3)), 0, NULL, false)};
    ck_assert_int_eq(ag_backward_many(3, roots, NULL, false), STATUS_OK);
    check_grad("three scalar roots", x->grad, x, NULL, d_many, 1e-14);
    /* non-scalar roots with their output gradients; a NULL entry is d(root)/d(root) = 1 */
    ag_zero_grad(x);
    struct tensor *g1 = test_uniform(DTYPE_F64, TENSOR_SHAPE(5), -1, 1), *g2 = test_uniform(DTYPE_F64, TENSOR_SHAPE(5), -1, 1);
    struct tensor *r2[3] = {ag_mul(x, x), ag_scale(x, 2), ag_sum(x, 0, NULL, false)};
    struct tensor *gs[3] = {g1, g2, NULL};
    ck_assert_int_eq(ag_backward_many(3, r2, gs, false), STATUS_OK);
    for (int64_t i = 0; i < 5; i++)
        ck_assert_double_eq_tol(tensor_get_flat(x->grad, i),
                                2 * tensor_get_flat(x, i) * tensor_get_flat(g1, i) + 2 * tensor_get_flat(g2, i) + 1, 1e-14);
    /* the same root twice counts twice */
    ag_zero_grad(x);
    struct tensor *r = ag_sum(ag_exp(x), 0, NULL, false);
    struct tensor *twice[2] = {r, r};
    ck_assert_int_eq(ag_backward_many(2, twice, NULL, false), STATUS_OK);
    check_grad("same root twice", x->grad, x, NULL, d_2exp, 1e-14);
    /* a root that needs no gradient is an error, not silently skipped */
    struct tensor *c = tensor_zeros(DTYPE_F64, 0, NULL, DEVICE_CPU);
    struct tensor *mixed[2] = {ag_sum(x, 0, NULL, false), c};
    tensor_clear_error();
    ck_assert_int_eq(ag_backward_many(2, mixed, NULL, false), STATUS_GRAPH);
    ck_error_has(STATUS_GRAPH, "root 1");
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- misuse */

START_TEST(test_errors)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = leaf(DTYPE_F64, TENSOR_SHAPE(2, 3), -1, 1);
    struct tensor *y = ag_exp(x);
    /* a non-scalar root needs its output gradient */
    tensor_clear_error();
    ck_assert_int_eq(ag_backward(y, NULL, false), STATUS_SHAPE);
    ck_error_has(STATUS_SHAPE, "[2,3]");
    ck_assert(contains(tensor_error(), "scalar"));
    /* an output gradient of the wrong shape */
    ck_assert_int_eq(ag_backward(y, tensor_zeros(DTYPE_F64, TENSOR_SHAPE(3, 2), DEVICE_CPU), false), STATUS_SHAPE);
    ck_error_has(STATUS_SHAPE, "[3,2]");
    ck_assert(contains(tensor_error(), "[2,3]"));
    /* ... or of the wrong dtype */
    ck_assert_int_eq(ag_backward(y, tensor_zeros(DTYPE_F32, TENSOR_SHAPE(2, 3), DEVICE_CPU), false), STATUS_DTYPE);
    ck_error_has(STATUS_DTYPE, "f32");
    ck_assert(contains(tensor_error(), "f64"));
    ck_assert_ptr_null(x->grad);
    /* the kernel itself refuses a saved tensor of another dtype than the gradient */
    struct tensor *dy32 = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(2, 3), DEVICE_CPU), *dx32 = tensor_empty_like(dy32);
    ck_assert_int_eq(backend_cpu.unary_backward(UNARY_EXP, dx32, dy32, NULL, y, NULL), STATUS_DTYPE);
    ck_assert_int_eq(backend_cpu.unary_backward(UNARY_RELU, dx32, dy32, x, NULL, NULL), STATUS_DTYPE);
    /* the failed calls left the graph intact */
    ck_assert_int_eq(ag_backward(y, tensor_full(DTYPE_F64, TENSOR_SHAPE(2, 3), 1.0, DEVICE_CPU), false), STATUS_OK);
    check_grad("after errors", x->grad, x, NULL, d_exp, 1e-15);

    /* requires_grad only on float leaves */
    struct tensor *i = tensor_zeros(DTYPE_I32, TENSOR_SHAPE(3), DEVICE_CPU);
    ck_assert_int_eq(ag_set_requires_grad(i, true), STATUS_DTYPE);
    ck_error_has(STATUS_DTYPE, "i32");
    ck_assert(!i->requires_grad);
    ck_assert_int_eq(ag_set_requires_grad(i, false), STATUS_OK);
    struct tensor *i64 = tensor_zeros(DTYPE_I64, TENSOR_SHAPE(3), DEVICE_CPU);
    ck_assert_int_eq(ag_set_requires_grad(i64, true), STATUS_DTYPE);
    struct tensor *nl = ag_mul(x, x);
    tensor_set_name(nl, "x_squared");
    ck_assert_int_eq(ag_set_requires_grad(nl, true), STATUS_GRAPH);
    ck_error_has(STATUS_GRAPH, "not a leaf");
    ck_assert(contains(tensor_error(), "x_squared"));
    ck_assert_int_eq(ag_set_requires_grad(nl, false), STATUS_GRAPH);
    /* a leaf that has been used keeps working as a leaf */
    ck_assert_int_eq(ag_set_requires_grad(x, true), STATUS_OK);

    /* dtype mismatch names the op and both dtypes */
    struct tensor *a32 = leaf(DTYPE_F32, TENSOR_SHAPE(3), -1, 1), *b64 = leaf(DTYPE_F64, TENSOR_SHAPE(3), -1, 1);
    struct tensor *(*const bin[])(struct tensor *, struct tensor *) = {ag_add, ag_sub, ag_mul, ag_div, ag_maximum};
    const char *names[] = {"add", "sub", "mul", "div", "maximum"};
    for (int k = 0; k < 5; k++) {
        tensor_clear_error();
        ck_assert_ptr_null(bin[k](a32, b64));
        ck_error_has(STATUS_DTYPE, names[k]);
        ck_assert(contains(tensor_error(), "f32") && contains(tensor_error(), "f64"));
    }
    ck_assert_ptr_null(ag_matmul(tensor_reshape(a32, TENSOR_SHAPE(1, 3)), tensor_reshape(b64, TENSOR_SHAPE(3, 1))));
    ck_assert(contains(tensor_error(), "matmul") && contains(tensor_error(), "f32") && contains(tensor_error(), "f64"));
    ck_assert_ptr_null(ag_where(a32, b64, b64));
    ck_error_has(STATUS_DTYPE, "where");
    ck_assert(contains(tensor_error(), "f32") && contains(tensor_error(), "f64"));
    ck_assert_ptr_null(ag_exp(i));
    ck_error_has(STATUS_DTYPE, "exp");
    ck_assert(contains(tensor_error(), "i32"));

    /* device checks: a tensor that claims to live on another device is refused before any
     * kernel touches it (host memory wrapped, its storage relabelled) */
    float buf[3] = {1, 2, 3};
    struct tensor *dev = tensor_wrap(DTYPE_F32, TENSOR_SHAPE(3), buf);
    dev->storage->device = DEVICE_CUDA;
    tensor_clear_error();
    ck_assert_ptr_null(ag_add(a32, dev));
    ck_error_has(STATUS_DEVICE, "add");
    ck_assert(contains(tensor_error(), "cpu") && contains(tensor_error(), "cuda"));
    ck_assert_ptr_null(ag_mul(dev, a32));
    ck_error_has(STATUS_DEVICE, "mul");
    ck_assert_ptr_null(ag_matmul(tensor_reshape(a32, TENSOR_SHAPE(1, 3)), tensor_reshape(dev, TENSOR_SHAPE(3, 1))));
    ck_error_has(STATUS_DEVICE, "matmul");
    if (!backend_for(DEVICE_CUDA)) {
        ck_assert_ptr_null(tensor_empty(DTYPE_F32, TENSOR_SHAPE(3), DEVICE_CUDA));
        ck_error_has(STATUS_DEVICE, "cuda");
    }
    dev->storage->device = DEVICE_CPU;
    /* a root gradient on another device */
    struct tensor *y2 = ag_scale(a32, 2);
    dev->storage->device = DEVICE_CUDA;
    ck_assert_int_eq(ag_backward(y2, dev, false), STATUS_DEVICE);
    ck_error_has(STATUS_DEVICE, "cuda");
    dev->storage->device = DEVICE_CPU;
    ck_assert_ptr_null(a32->grad);

    /* NULL roots */
    tensor_clear_error();
    ck_assert_int_eq(ag_backward(NULL, NULL, false), STATUS_VALUE);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- lifetime and memory */

/* ops that save their own output (exp, tanh, sigmoid, sqrt, softmax) as well as inputs */
static struct tensor *build_graph(struct tensor *x)
{
    struct tensor *h = ag_tanh(ag_exp(ag_scale(x, 0.5)));
    h = ag_add(ag_sigmoid(h), ag_sqrt(ag_affine(ag_mul(h, x), 0.1, 2.0)));
    h = ag_softmax(ag_matmul(h, ag_transpose(x, 0, 1)), -1);
    h = ag_log_softmax(ag_relu(h), 0);
    return ag_mean(ag_max(h, 1, false), 0, NULL, false);
}

START_TEST(test_graph_freed_with_output)
{
    LEAK_CHECK_BEGIN();
    const int64_t t0 = tensor_live_count(), s0 = storage_live_count();
    struct tensor *x = tensor_keep(leaf(DTYPE_F64, TENSOR_SHAPE(4, 4), -1, 1));
    const int64_t t1 = tensor_live_count(), s1 = storage_live_count();
    ck_assert_int_eq(t1, t0 + 1);
    /* never backpropagated: freeing the output frees the whole graph */
    for (int retain = 0; retain < 3; retain++) {
        tensor_scope_begin();
        struct tensor *y = tensor_keep(build_graph(x));
        tensor_scope_end();
        ck_assert(y && y->requires_grad);
        ck_assert_int_gt(tensor_live_count(), t1 + 1);   /* saved tensors */
        if (retain == 1) ck_assert_int_eq(ag_backward(y, NULL, true), STATUS_OK);   /* graph kept */
        if (retain == 2) ck_assert_int_eq(ag_backward(y, NULL, false), STATUS_OK);
        tensor_free(y);
        ag_zero_grad(x);
        ck_assert_msg(tensor_live_count() == t1, "case %d: %lld tensors left", retain, (long long)(tensor_live_count() - t1));
        ck_assert_int_eq(storage_live_count(), s1);
    }
    /* the caller drops the leaf while the graph saved it: backward still reaches it */
    tensor_scope_begin();
    struct tensor *y = tensor_keep(build_graph(x));
    tensor_scope_end();
    struct tensor *xv = tensor_keep(tensor_alias(x));   /* the values, to check against */
    ck_assert_int_gt(x->refcount, 1);
    tensor_free(x);
    ck_assert_int_eq(ag_backward(y, NULL, false), STATUS_OK);   /* releases the saved x */
    tensor_free(y);
    ck_assert_int_eq(tensor_live_count(), t0 + 1);
    /* the leaf dies first, its graph later: backward runs, the gradient has nowhere to go */
    x = tensor_keep(tensor_alias(xv));
    ck_assert_int_eq(ag_set_requires_grad(x, true), STATUS_OK);
    tensor_scope_begin();
    y = tensor_keep(ag_sum(ag_exp(ag_scale(x, 2)), 0, NULL, false));   /* nothing saves x */
    tensor_scope_end();
    tensor_free(x);
    ck_assert_int_eq(ag_backward(y, NULL, false), STATUS_OK);
    tensor_free(y);
    tensor_free(xv);
    ck_assert_int_eq(tensor_live_count(), t0);
    ck_assert_int_eq(storage_live_count(), s0);
    LEAK_CHECK_END();
}
END_TEST

/* Intermediates nobody saved die during the forward. Per step, relu(scale(h, 2)): the
 * scale saves nothing, relu saves its input (the scale's output), and relu's output is
 * dropped once the next step has used it. So live memory grows by one tensor per step,
 * not two; a chain of scale alone does not grow at all. */
START_TEST(test_intermediates_freed)
{
    LEAK_CHECK_BEGIN();
    const int64_t n = 1 << 14, bytes = n * 8;   /* f64: 128 KiB, an exact size class */
    const int steps = 32;
    struct mem_stats m0, m;
    tensor_scope_begin();
    struct tensor *x = leaf(DTYPE_F64, TENSOR_SHAPE(n), 0.5, 1.5);
    mem_get_stats(DEVICE_CPU, &m0);
    for (int relu = 0; relu < 2; relu++) {
        struct tensor *h = tensor_ref(x);
        for (int k = 0; k < steps; k++) {
            tensor_scope_begin();
            struct tensor *next = tensor_keep(relu ? ag_relu(ag_scale(h, 2)) : ag_scale(h, 2));
            tensor_scope_end();
            tensor_free(h);
            h = next;
        }
        mem_get_stats(DEVICE_CPU, &m);
        int64_t grown = m.live_bytes - m0.live_bytes;
        printf("intermediates: %s chain of %d steps holds %lld KiB (one tensor is %lld KiB)\n", relu ? "relu(2x)" : "2x",
               steps, (long long)grown / 1024, (long long)bytes / 1024);
        if (relu) ck_assert_int_eq(grown, (steps + 1) * bytes);   /* the saved inputs and h */
        else ck_assert_int_eq(grown, bytes);                      /* just h */
        /* the graph still backpropagates */
        struct tensor *l = tensor_keep(ag_sum(h, 0, NULL, false));
        tensor_free(h);
        ck_assert_int_eq(ag_backward(l, NULL, false), STATUS_OK);
        tensor_free(l);
        for (int64_t i = 0; i < n; i += 997) ck_assert(tensor_get_flat(x->grad, i) == ldexp(1, steps));
        ag_zero_grad(x);
        mem_get_stats(DEVICE_CPU, &m);
        ck_assert_int_eq(m.live_bytes, m0.live_bytes);
    }
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- determinism */

static void grads_once(struct tensor *x, struct tensor *w, struct tensor **gx, struct tensor **gw)
{
    tensor_scope_begin();
    ag_zero_grad(x);
    ag_zero_grad(w);
    /* large enough that every kernel takes its parallel path */
    struct tensor *h = ag_gelu(ag_matmul(x, w));                          /* [256,256] */
    struct tensor *s = ag_softmax(ag_scale(h, 0.1), -1);
    struct tensor *r = ag_sum(ag_mul(s, ag_log(ag_affine(s, 1, 1e-3))), 1, (int[]){0}, false);   /* column sums */
    struct tensor *l = ag_add(ag_sum(r, 0, NULL, false), ag_mean(ag_square(ag_reshape(x, TENSOR_SHAPE(-1))), 0, NULL, false));
    ck_assert_int_eq(ag_backward(l, NULL, false), STATUS_OK);
    *gx = tensor_ref(x->grad);   /* owned by x, not by the scope: a reference of our own */
    *gw = tensor_ref(w->grad);
    tensor_scope_end();
}

START_TEST(test_deterministic)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    const bool was = tensor_deterministic();
    tensor_set_deterministic(true);
    ck_assert(tensor_deterministic());
    struct tensor *x = leaf(DTYPE_F32, TENSOR_SHAPE(256, 256), -1, 1), *w = leaf(DTYPE_F32, TENSOR_SHAPE(256, 256), -0.1, 0.1);
    struct tensor *g[3][2];
    const int old = omp_get_max_threads();
    for (int k = 0; k < 3; k++) {
        omp_set_num_threads(k < 2 ? 2 : 1);   /* twice on 2 threads, then on 1 */
        grads_once(x, w, &g[k][0], &g[k][1]);
    }
    omp_set_num_threads(old);
    const size_t nb = 256 * 256 * sizeof(float);
    ck_assert(memcmp(tensor_data_ptr(g[0][0]), tensor_data_ptr(g[1][0]), nb) == 0);
    ck_assert(memcmp(tensor_data_ptr(g[0][1]), tensor_data_ptr(g[1][1]), nb) == 0);
    /* across thread counts only close: BLAS may split the matmul differently */
    double d = test_max_abs_diff(g[0][0], g[2][0]);
    printf("deterministic: two runs bit-identical; 1 vs 2 threads max |diff| %.1e\n", d);
    ck_assert(d < 1e-6);
    for (int k = 0; k < 3; k++) { tensor_free(g[k][0]); tensor_free(g[k][1]); }
    tensor_set_deterministic(was);

    /* engine-only sums (no BLAS): bit-identical across thread counts too */
    struct tensor *v = leaf(DTYPE_F32, TENSOR_SHAPE(512, 300), -1, 1), *gv[2];
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k + 1);
        tensor_scope_begin();
        ag_zero_grad(v);
        struct tensor *l = ag_sum(ag_mul(ag_softmax(v, 0), ag_tanh(ag_sum(v, 1, (int[]){1}, true))), 0, NULL, false);
        ck_assert_int_eq(ag_backward(l, NULL, false), STATUS_OK);
        gv[k] = tensor_ref(v->grad);
        tensor_scope_end();
    }
    omp_set_num_threads(old);
    ck_assert(memcmp(tensor_data_ptr(gv[0]), tensor_data_ptr(gv[1]), 512 * 300 * sizeof(float)) == 0);
    tensor_free(gv[0]);
    tensor_free(gv[1]);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    test_seed();
    Suite *s = suite_create("autograd");
    TCase *tc = tcase_create("engine");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_backward_scalar);
    tcase_add_test(tc, test_backward_given_grad);
    tcase_add_test(tc, test_accumulate_and_zero_grad);
    tcase_add_test(tc, test_retain_graph);
    tcase_add_test(tc, test_no_grad);
    tcase_add_test(tc, test_detach);
    tcase_add_test(tc, test_diamond);
    tcase_add_test(tc, test_backward_many);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_graph_freed_with_output);
    tcase_add_test(tc, test_intermediates_freed);
    tcase_add_test(tc, test_deterministic);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
