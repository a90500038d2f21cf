/* op_elementwise.c — unary and broadcasting binary ops, where, sum_to. */
#include "autograd/node.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

bool ag_check_same_device(const char *op, int n, struct tensor *const *ts)
{
    for (int i = 1; i < n; i++) {
        if (ts[i] && ts[0] && ts[i]->storage->device != ts[0]->storage->device) {
            tensor_fail(STATUS_DEVICE, "%s: inputs on different devices (%s and %s)", op,
                        device_name(ts[0]->storage->device), device_name(ts[i]->storage->device));
            return false;
        }
    }
    return true;
}

bool ag_check_float(const char *op, const struct tensor *t)
{
    if (t->dtype == DTYPE_F32 || t->dtype == DTYPE_F64) return true;
    tensor_fail(STATUS_DTYPE, "%s: expects f32 or f64, got %s (convert with ag_to_dtype)", op, dtype_name(t->dtype));
    return false;
}

bool ag_check_ndim(const char *op, const struct tensor *t, int ndim, const char *what)
{
    if (t->ndim == ndim) return true;
    char a[128];
    tensor_fail(STATUS_SHAPE, "%s: %s must have %d dims, got shape %s", op, what, ndim, tensor_shape_str(t, a, sizeof a));
    return false;
}

enum status ag_no_kernel(const char *op, const struct tensor *t)
{
    return tensor_fail(STATUS_DEVICE, "%s: no kernel on the %s backend", op, backend_of(t)->name);
}

/* ---------------------------------------------------------------- unary */

/* ops whose derivative is written with the output y rather than the input x */
static bool uses_output(enum unary_op op)
{
    return op == UNARY_EXP || op == UNARY_SQRT || op == UNARY_RSQRT || op == UNARY_TANH || op == UNARY_SIGMOID ||
           op == UNARY_RECIPROCAL;
}

static enum status unary_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    enum unary_op op = (enum unary_op)n->ip[0];
    struct tensor *dx = tensor_empty_like(gout[0]);
    if (!dx) return tensor_status();
    struct tensor *x = uses_output(op) ? NULL : n->saved[0], *y = uses_output(op) ? n->saved[0] : NULL;
    enum status s = backend_of(dx)->unary_backward(op, dx, gout[0], x, y, n->fp);
    gin[0] = dx;
    return s;
}

struct tensor *ag_unary(enum unary_op op, struct tensor *x, const double *p)
{
    if (!x) return NULL;
    if (!ag_check_float(unary_op_name(op), x)) return NULL;
    struct tensor *y = tensor_empty_like(x);
    if (!y) return NULL;
    if (backend_of(x)->unary(op, y, x, p)) return NULL;
    struct ag_node *n = ag_record(unary_op_name(op), unary_backward, 1, &x, 1, &y);
    if (n) {
        n->ip[0] = op;
        if (p) { n->fp[0] = p[0]; n->fp[1] = p[1]; }
        if (op != UNARY_NEG && op != UNARY_AFFINE) ag_save(n, uses_output(op) ? y : x);
    }
    return y;
}

struct tensor *ag_neg(struct tensor *x) { return ag_unary(UNARY_NEG, x, NULL); }
struct tensor *ag_abs(struct tensor *x) { return ag_unary(UNARY_ABS, x, NULL); }
struct tensor *ag_exp(struct tensor *x) { return ag_unary(UNARY_EXP, x, NULL); }
struct tensor *ag_log(struct tensor *x) { return ag_unary(UNARY_LOG, x, NULL); }
struct tensor *ag_sqrt(struct tensor *x) { return ag_unary(UNARY_SQRT, x, NULL); }
struct tensor *ag_rsqrt(struct tensor *x) { return ag_unary(UNARY_RSQRT, x, NULL); }
struct tensor *ag_sin(struct tensor *x) { return ag_unary(UNARY_SIN, x, NULL); }
struct tensor *ag_cos(struct tensor *x) { return ag_unary(UNARY_COS, x, NULL); }
struct tensor *ag_tanh(struct tensor *x) { return ag_unary(UNARY_TANH, x, NULL); }
struct tensor *ag_sigmoid(struct tensor *x) { return ag_unary(UNARY_SIGMOID, x, NULL); }
struct tensor *ag_silu(struct tensor *x) { return ag_unary(UNARY_SILU, x, NULL); }
struct tensor *ag_relu(struct tensor *x) { return ag_unary(UNARY_RELU, x, NULL); }
struct tensor *ag_gelu(struct tensor *x) { return ag_unary(UNARY_GELU, x, NULL); }
struct tensor *ag_gelu_tanh(struct tensor *x) { return ag_unary(UNARY_GELU_TANH, x, NULL); }
struct tensor *ag_quick_gelu(struct tensor *x) { return ag_unary(UNARY_QUICK_GELU, x, NULL); }
struct tensor *ag_square(struct tensor *x) { return ag_unary(UNARY_SQUARE, x, NULL); }
struct tensor *ag_pow(struct tensor *x, double p) { const double q[2] = {p, 0}; return ag_unary(UNARY_POW, x, q); }
struct tensor *ag_clamp(struct tensor *x, double lo, double hi) { const double q[2] = {lo, hi}; return ag_unary(UNARY_CLAMP, x, q); }
struct tensor *ag_scale(struct tensor *x, double a) { const double q[2] = {a, 0}; return ag_unary(UNARY_AFFINE, x, q); }
struct tensor *ag_affine(struct tensor *x, double a, double b) { const double q[2] = {a, b}; return ag_unary(UNARY_AFFINE, x, q); }

/* ---------------------------------------------------------------- sum_to */

struct tensor *ag_sum_to(struct tensor *x, int ndim, const int64_t *shape)
{
    if (!x) return NULL;
    if (ndim > x->ndim) { tensor_fail(STATUS_SHAPE, "sum_to: target has more dims than the input"); return NULL; }
    int dims[TENSOR_MAX_DIMS], nd = 0, lead = x->ndim - ndim;
    bool same = true;
    for (int d = 0; d < x->ndim; d++) {
        int64_t want = d < lead ? 1 : shape[d - lead];
        if (d < lead || (want == 1 && x->shape[d] != 1)) { dims[nd++] = d; same = false; }
        else if (want != x->shape[d]) {
            char a[128];
            tensor_fail(STATUS_SHAPE, "sum_to: cannot sum shape %s down to the target", tensor_shape_str(x, a, sizeof a));
            return NULL;
        }
    }
    if (same) return tensor_autorelease(tensor_ref(x));
    tensor_scope_begin();
    struct tensor *s = ag_sum(x, nd, dims, true);
    return tensor_scope_return(ag_reshape(s, ndim, shape));
}

/* ---------------------------------------------------------------- binary */

static enum status binary_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    enum binary_op op = (enum binary_op)n->ip[0];
    struct tensor *g = gout[0], *a = n->n_saved > 0 ? n->saved[0] : NULL, *b = n->n_saved > 1 ? n->saved[1] : NULL;
    struct tensor *ga = NULL, *gb = NULL;
    switch (op) {
    case BINARY_ADD: ga = g; gb = g; break;
    case BINARY_SUB: ga = g; gb = n->needs[1] ? ag_neg(g) : NULL; break;
    case BINARY_MUL: ga = n->needs[0] ? ag_mul(g, b) : NULL; gb = n->needs[1] ? ag_mul(g, a) : NULL; break;
    case BINARY_DIV:
        ga = n->needs[0] ? ag_div(g, b) : NULL;
        gb = n->needs[1] ? ag_neg(ag_div(ag_mul(g, a), ag_mul(b, b))) : NULL;
        break;
    case BINARY_MAXIMUM:
    case BINARY_MINIMUM: {
        /* ties split the gradient evenly, as torch does */
        struct tensor *pick_a = ag_compare(op == BINARY_MAXIMUM ? BINARY_GT : BINARY_GT, op == BINARY_MAXIMUM ? a : b,
                                           op == BINARY_MAXIMUM ? b : a);
        struct tensor *tie = ag_compare(BINARY_EQ, a, b);
        struct tensor *wa = ag_add(pick_a, ag_scale(tie, 0.5));
        ga = n->needs[0] ? ag_mul(g, wa) : NULL;
        gb = n->needs[1] ? ag_mul(g, ag_affine(wa, -1.0, 1.0)) : NULL;
        break;
    }
    default: return tensor_fail(STATUS_GRAPH, "%s has no gradient", binary_op_name(op));
    }
    if (n->needs[0]) { gin[0] = ag_sum_to(ga, n->in_meta[0].ndim, n->in_meta[0].shape); if (!gin[0]) return tensor_status(); }
    if (n->needs[1]) { gin[1] = ag_sum_to(gb, n->in_meta[1].ndim, n->in_meta[1].shape); if (!gin[1]) return tensor_status(); }
    return STATUS_OK;
}

static struct tensor *binary(enum binary_op op, struct tensor *a, struct tensor *b)
{
    if (!a || !b) return NULL;
    const char *name = binary_op_name(op);
    struct tensor *ab[2] = {a, b};
    if (!ag_check_same_device(name, 2, ab) || !ag_check_float(name, a)) return NULL;
    if (a->dtype != b->dtype) {
        tensor_fail(STATUS_DTYPE, "%s: dtype mismatch (%s vs %s)", name, dtype_name(a->dtype), dtype_name(b->dtype));
        return NULL;
    }
    int64_t shape[TENSOR_MAX_DIMS];
    int nd = tensor_broadcast_shape(a, b, shape, name);
    if (nd < 0) return NULL;
    struct tensor *y = tensor_empty(a->dtype, nd, shape, a->storage->device);
    struct tensor *ea = tensor_expand(a, nd, shape), *eb = tensor_expand(b, nd, shape);
    if (!y || !ea || !eb) { tensor_free(tensor_keep(ea)); tensor_free(tensor_keep(eb)); return NULL; }
    enum status s = backend_of(y)->binary(op, y, ea, eb);
    tensor_free(tensor_keep(ea));
    tensor_free(tensor_keep(eb));
    if (s) return NULL;
    if (op >= BINARY_GT) return y;
    struct ag_node *n = ag_record(name, binary_backward, 2, ab, 1, &y);
    if (n) {
        n->ip[0] = op;
        if (op == BINARY_MUL || op == BINARY_DIV || op == BINARY_MAXIMUM || op == BINARY_MINIMUM) {
            ag_save(n, a);
            ag_save(n, b);
        }
    }
    return y;
}

struct tensor *ag_add(struct tensor *a, struct tensor *b) { return binary(BINARY_ADD, a, b); }
struct tensor *ag_sub(struct tensor *a, struct tensor *b) { return binary(BINARY_SUB, a, b); }
struct tensor *ag_mul(struct tensor *a, struct tensor *b) { return binary(BINARY_MUL, a, b); }
struct tensor *ag_div(struct tensor *a, struct tensor *b) { return binary(BINARY_DIV, a, b); }
struct tensor *ag_maximum(struct tensor *a, struct tensor *b) { return binary(BINARY_MAXIMUM, a, b); }
struct tensor *ag_minimum(struct tensor *a, struct tensor *b) { return binary(BINARY_MINIMUM, a, b); }
struct tensor *ag_compare(enum binary_op op, struct tensor *a, struct tensor *b)
{
    if (op < BINARY_GT) { tensor_fail(STATUS_VALUE, "compare: %s is not a comparison", binary_op_name(op)); return NULL; }
    return binary(op, a, b);
}

/* ---------------------------------------------------------------- where */

static enum status where_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    struct tensor *c = n->saved[0], *g = gout[0];
    struct tensor *zero = tensor_zeros(g->dtype, 0, NULL, g->storage->device);
    if (n->needs[1]) gin[1] = ag_sum_to(ag_where(c, g, zero), n->in_meta[1].ndim, n->in_meta[1].shape);
    if (n->needs[2]) gin[2] = ag_sum_to(ag_where(c, zero, g), n->in_meta[2].ndim, n->in_meta[2].shape);
    return (n->needs[1] && !gin[1]) || (n->needs[2] && !gin[2]) ? tensor_status() : STATUS_OK;
}

struct tensor *ag_where(struct tensor *cond, struct tensor *a, struct tensor *b)
{
    if (!cond || !a || !b) return NULL;
    struct tensor *in[3] = {cond, a, b};
    if (!ag_check_same_device("where", 3, in) || !ag_check_float("where", a)) return NULL;
    if (a->dtype != b->dtype || cond->dtype != a->dtype) {
        tensor_fail(STATUS_DTYPE, "where: dtypes differ (cond %s, a %s, b %s)", dtype_name(cond->dtype),
                    dtype_name(a->dtype), dtype_name(b->dtype));
        return NULL;
    }
    int64_t s1[TENSOR_MAX_DIMS], shape[TENSOR_MAX_DIMS];
    int nd1 = tensor_broadcast_shape(a, b, s1, "where");
    if (nd1 < 0) return NULL;
    struct tensor tmp = *a;
    tmp.ndim = nd1;
    memcpy(tmp.shape, s1, sizeof s1);
    int nd = tensor_broadcast_shape(&tmp, cond, shape, "where");
    if (nd < 0) return NULL;
    struct tensor *y = tensor_empty(a->dtype, nd, shape, a->storage->device);
    struct tensor *ec = tensor_keep(tensor_expand(cond, nd, shape)), *ea = tensor_keep(tensor_expand(a, nd, shape)),
                  *eb = tensor_keep(tensor_expand(b, nd, shape));
    enum status s = y && ec && ea && eb ? backend_of(y)->where(y, ec, ea, eb) : tensor_status();
    tensor_free(ec);
    tensor_free(ea);
    tensor_free(eb);
    if (s) return NULL;
    struct ag_node *n = ag_record("where", where_backward, 3, in, 1, &y);
    if (n) ag_save(n, cond);
    return y;
}
