/* op_norm.c — layer_norm over the trailing dims and group_norm over channel groups.
 *
 * The kernels return the mean and rstd of each row / (sample, group) alongside the output;
 * the node saves them with x and the weight, so the backward reuses the statistics instead
 * of recomputing them. mean and rstd are no outputs of the op: nothing differentiates them.
 */
#include "autograd/node.h"

#include <math.h>
#include <stdio.h>

static bool check_eps(const char *op, double eps)
{
    if (eps >= 0 && isfinite(eps)) return true;
    tensor_fail(STATUS_VALUE, "%s: eps must be finite and >= 0, got %g", op, eps);
    return false;
}

/* w or b (named `what`) is NULL or has x's dtype and exactly the given shape */
static bool check_param(const char *op, const char *what, const struct tensor *p, const struct tensor *x, int ndim,
                        const int64_t *shape, const char *expect)
{
    if (!p) return true;
    char a[128], b[128];
    if (p->dtype != x->dtype) {
        tensor_fail(STATUS_DTYPE, "%s: %s is %s but x is %s", op, what, dtype_name(p->dtype), dtype_name(x->dtype));
        return false;
    }
    bool ok = p->ndim == ndim;
    for (int d = 0; d < ndim && ok; d++) ok = p->shape[d] == shape[d];
    if (!ok)
        tensor_fail(STATUS_SHAPE, "%s: %s %s does not fit x %s (expected %s)", op, what,
                    tensor_shape_str(p, a, sizeof a), tensor_shape_str(x, b, sizeof b), expect);
    return ok;
}

/* Gradient buffers for the inputs (x, w, b) that need one, NULL for the others: the kernels
 * skip dx, or the weight/bias sums, when nobody wants them. Returns non-zero on failure. */
static int alloc_grads(const struct ag_node *n, struct tensor **g)
{
    for (int i = 0; i < 3; i++) {
        const struct ag_meta *m = &n->in_meta[i];
        g[i] = NULL;
        if (n->needs[i] && !(g[i] = tensor_empty(m->dtype, m->ndim, m->shape, m->device))) return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- layer_norm */

/* saved: x, mean, rstd, then w if ip[0] */
static enum status layer_norm_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    struct tensor *x = n->saved[0], *mean = n->saved[1], *rstd = n->saved[2], *w = n->ip[0] ? n->saved[3] : NULL;
    struct tensor *g[3];
    if (alloc_grads(n, g)) return tensor_status();
    enum status s = backend_of(x)->layer_norm_backward(g[0], g[1], g[2], gout[0], x, w, mean, rstd);
    for (int i = 0; i < 3 && !s; i++) gin[i] = g[i];
    return s;
}

static struct tensor *layer_norm_impl(struct tensor *x, int n_norm_dims, struct tensor *w, struct tensor *b, double eps)
{
    const char *op = "layer_norm";
    struct tensor *in[3] = {x, w, b};
    if (!ag_check_float(op, x) || !ag_check_same_device(op, 3, in) || !check_eps(op, eps)) return NULL;
    char a[128];
    if (n_norm_dims < 1 || n_norm_dims > x->ndim) {
        tensor_fail(STATUS_SHAPE, "layer_norm: cannot normalise the last %d dims of x %s (%d dims)", n_norm_dims,
                    tensor_shape_str(x, a, sizeof a), x->ndim);
        return NULL;
    }
    const int lead = x->ndim - n_norm_dims;
    const int64_t *nshape = x->shape + lead;
    struct tensor nt = {.ndim = n_norm_dims};   /* only to print the normalised shape */
    for (int d = 0; d < n_norm_dims; d++) nt.shape[d] = nshape[d];
    char expect[128];
    tensor_shape_str(&nt, expect, sizeof expect);
    if (!check_param(op, "weight", w, x, n_norm_dims, nshape, expect) ||
        !check_param(op, "bias", b, x, n_norm_dims, nshape, expect))
        return NULL;
    const struct backend *be = backend_of(x);
    if (!be->layer_norm || !be->layer_norm_backward) { ag_no_kernel(op, x); return NULL; }
    /* the kernels see x as [rows, n] in row-major order, rows = numel(mean): no view needed */
    int64_t rows = 1;
    for (int d = 0; d < lead; d++) rows *= x->shape[d];
    const enum device dev = x->storage->device;
    struct tensor *y = tensor_empty_like(x), *mean = tensor_empty(x->dtype, TENSOR_SHAPE(rows), dev),
                  *rstd = tensor_empty(x->dtype, TENSOR_SHAPE(rows), dev);
    if (!y || !mean || !rstd || be->layer_norm(y, mean, rstd, x, w, b, eps)) return NULL;
    struct ag_node *n = ag_record(op, layer_norm_backward, 3, in, 1, &y);
    if (n) {
        n->ip[0] = w != NULL;
        ag_save(n, x);
        ag_save(n, mean);
        ag_save(n, rstd);
        if (w) ag_save(n, w);
    }
    return y;
}

struct tensor *ag_layer_norm(struct tensor *x, int n_norm_dims, struct tensor *w, struct tensor *b, double eps)
{
    if (!x) return NULL;
    tensor_scope_begin();
    return tensor_scope_return(layer_norm_impl(x, n_norm_dims, w, b, eps));
}

/* ---------------------------------------------------------------- group_norm */

/* saved: x, mean, rstd, then w if ip[1]; ip[0] = groups */
static enum status group_norm_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    struct tensor *x = n->saved[0], *mean = n->saved[1], *rstd = n->saved[2], *w = n->ip[1] ? n->saved[3] : NULL;
    const int groups = (int)n->ip[0];
    struct tensor *g[3];
    if (alloc_grads(n, g)) return tensor_status();
    enum status s = backend_of(x)->group_norm_backward(g[0], g[1], g[2], gout[0], x, w, mean, rstd, groups);
    for (int i = 0; i < 3 && !s; i++) gin[i] = g[i];
    return s;
}

static struct tensor *group_norm_impl(struct tensor *x, int groups, struct tensor *w, struct tensor *b, double eps)
{
    const char *op = "group_norm";
    struct tensor *in[3] = {x, w, b};
    if (!ag_check_float(op, x) || !ag_check_same_device(op, 3, in) || !check_eps(op, eps)) return NULL;
    char a[128];
    if (x->ndim < 2) {
        tensor_fail(STATUS_SHAPE, "group_norm: x must be [N,C,...] with at least 2 dims, got %s",
                    tensor_shape_str(x, a, sizeof a));
        return NULL;
    }
    const int64_t N = x->shape[0], C = x->shape[1];
    if (groups < 1 || C % groups) {
        tensor_fail(STATUS_SHAPE, "group_norm: %lld channels do not split into %d groups", (long long)C, groups);
        return NULL;
    }
    char expect[32];
    snprintf(expect, sizeof expect, "[%lld]", (long long)C);
    if (!check_param(op, "weight", w, x, 1, &C, expect) || !check_param(op, "bias", b, x, 1, &C, expect)) return NULL;
    const struct backend *be = backend_of(x);
    if (!be->group_norm || !be->group_norm_backward) { ag_no_kernel(op, x); return NULL; }
    const enum device dev = x->storage->device;
    struct tensor *y = tensor_empty_like(x), *mean = tensor_empty(x->dtype, TENSOR_SHAPE(N, groups), dev),
                  *rstd = tensor_empty(x->dtype, TENSOR_SHAPE(N, groups), dev);
    if (!y || !mean || !rstd || be->group_norm(y, mean, rstd, x, w, b, groups, eps)) return NULL;
    struct ag_node *n = ag_record(op, group_norm_backward, 3, in, 1, &y);
    if (n) {
        n->ip[0] = groups;
        n->ip[1] = w != NULL;
        ag_save(n, x);
        ag_save(n, mean);
        ag_save(n, rstd);
        if (w) ag_save(n, w);
    }
    return y;
}

struct tensor *ag_group_norm(struct tensor *x, int groups, struct tensor *w, struct tensor *b, double eps)
{
    if (!x) return NULL;
    tensor_scope_begin();
    return tensor_scope_return(group_norm_impl(x, groups, w, b, eps));
}
