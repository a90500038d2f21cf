/* op_reduce.c — sum, mean, var, max, argmax, L2 norm and normalise over any dims. */
#include "autograd/node.h"

#include <math.h>
#include <string.h>

/* mark the reduced dims; n = 0 means all. Returns false with an error set. */
static bool reduced_dims(const struct tensor *x, int n, const int *dims, bool *red, const char *op)
{
    memset(red, 0, TENSOR_MAX_DIMS * sizeof *red);
    if (n == 0) {
        for (int d = 0; d < x->ndim; d++) red[d] = true;
        return true;
    }
    for (int i = 0; i < n; i++) {
        int d = tensor_dim(x, dims[i], op);
        if (d < 0) return false;
        red[d] = true;
    }
    return true;
}

/* output shape with keepdim, and the squeezed shape */
static int out_shapes(const struct tensor *x, const bool *red, int64_t *keep, int64_t *squeezed)
{
    int nd = 0;
    for (int d = 0; d < x->ndim; d++) {
        keep[d] = red[d] ? 1 : x->shape[d];
        if (!red[d]) squeezed[nd++] = x->shape[d];
    }
    return nd;
}

static enum status sum_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    const struct ag_meta *m = &n->in_meta[0];
    int64_t keep[TENSOR_MAX_DIMS];
    for (int d = 0; d < m->ndim; d++) keep[d] = n->ip[d] ? 1 : m->shape[d];
    struct tensor *g = tensor_reshape(gout[0], m->ndim, keep);
    gin[0] = tensor_expand(g, m->ndim, m->shape);
    if (gin[0] && n->fp[0] != 1.0) gin[0] = ag_scale(gin[0], n->fp[0]);
    return gin[0] ? STATUS_OK : tensor_status();
}

/* sum times `scale` (mean uses 1/count) */
static struct tensor *sum_scaled(struct tensor *x, int n, const int *dims, bool keepdim, bool mean)
{
    if (!x) return NULL;
    bool red[TENSOR_MAX_DIMS];
    if (!ag_check_float(mean ? "mean" : "sum", x) || !reduced_dims(x, n, dims, red, mean ? "mean" : "sum")) return NULL;
    int64_t keep[TENSOR_MAX_DIMS], sq[TENSOR_MAX_DIMS], count = 1;
    int nsq = out_shapes(x, red, keep, sq);
    for (int d = 0; d < x->ndim; d++)
        if (red[d]) count *= x->shape[d];
    struct tensor *y = tensor_empty(x->dtype, x->ndim, keep, x->storage->device);
    if (!y || backend_of(x)->reduce(REDUCE_SUM, y, x)) return NULL;
    double scale = mean ? 1.0 / (double)(count ? count : 1) : 1.0;
    if (mean) {
        const double p[2] = {scale, 0};
        if (backend_of(y)->unary(UNARY_AFFINE, y, y, p)) return NULL;
    }
    if (!keepdim) {
        struct tensor *v = tensor_view(y, nsq, sq);
        y = v;
        if (!y) return NULL;
    }
    struct ag_node *node = ag_record(mean ? "mean" : "sum", sum_backward, 1, &x, 1, &y);
    if (node) {
        for (int d = 0; d < x->ndim; d++) node->ip[d] = red[d];
        node->fp[0] = scale;
    }
    return y;
}

/* Ops that make temporaries run inside their own scope and hand only the result out. */
struct tensor *ag_sum(struct tensor *x, int n, const int *dims, bool keepdim)
{
    tensor_scope_begin();
    return tensor_scope_return(sum_scaled(x, n, dims, keepdim, false));
}

struct tensor *ag_mean(struct tensor *x, int n, const int *dims, bool keepdim)
{
    tensor_scope_begin();
    return tensor_scope_return(sum_scaled(x, n, dims, keepdim, true));
}

struct tensor *ag_var(struct tensor *x, int n, const int *dims, bool keepdim, int correction)
{
    if (!x) return NULL;
    bool red[TENSOR_MAX_DIMS];
    if (!reduced_dims(x, n, dims, red, "var")) return NULL;
    int64_t count = 1;
    for (int d = 0; d < x->ndim; d++)
        if (red[d]) count *= x->shape[d];
    tensor_scope_begin();
    struct tensor *mu = ag_mean(x, n, dims, true);
    struct tensor *ss = ag_sum(ag_square(ag_sub(x, mu)), n, dims, keepdim);
    double denom = (double)(count - correction);
    return tensor_scope_return(ag_scale(ss, denom > 0 ? 1.0 / denom : NAN));
}

/* one-hot (first maximum) mask along dim, from saved argmax indices */
static enum status max_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    const struct ag_meta *m = &n->in_meta[0];
    int dim = (int)n->ip[0];
    struct tensor *idx = n->saved[0];   /* keepdim argmax, i64 */
    int64_t ashape[TENSOR_MAX_DIMS];
    for (int d = 0; d < m->ndim; d++) ashape[d] = d == dim ? m->shape[d] : 1;
    struct tensor *ar = tensor_empty(DTYPE_F64, m->ndim, ashape, DEVICE_CPU);
    if (!ar) return tensor_status();
    for (int64_t i = 0; i < m->shape[dim]; i++) tensor_set_flat(ar, i, (double)i);
    struct tensor *arange = tensor_to_device(tensor_to_dtype(ar, m->dtype), m->device);
    struct tensor *fidx = tensor_to_dtype(idx, m->dtype);
    struct tensor *mask = ag_compare(BINARY_EQ, arange, fidx);
    int64_t keep[TENSOR_MAX_DIMS];
    for (int d = 0; d < m->ndim; d++) keep[d] = d == dim ? 1 : m->shape[d];
    struct tensor *g = tensor_reshape(gout[0], m->ndim, keep);
    gin[0] = ag_mul(mask, g);
    return gin[0] ? STATUS_OK : tensor_status();
}

static struct tensor *argmax_keep(struct tensor *x, int dim)
{
    int64_t keep[TENSOR_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) keep[d] = d == dim ? 1 : x->shape[d];
    struct tensor *idx = tensor_empty(DTYPE_I64, x->ndim, keep, x->storage->device);
    if (!idx || backend_of(x)->reduce(REDUCE_ARGMAX, idx, x)) return NULL;
    return idx;
}

static struct tensor *max_impl(struct tensor *x, int dim, bool keepdim)
{
    if (!x || !ag_check_float("max", x)) return NULL;
    if ((dim = tensor_dim(x, dim, "max")) < 0) return NULL;
    if (x->shape[dim] == 0) { tensor_fail(STATUS_SHAPE, "max: dim %d is empty", dim); return NULL; }
    int64_t keep[TENSOR_MAX_DIMS], sq[TENSOR_MAX_DIMS];
    bool red[TENSOR_MAX_DIMS] = {0};
    red[dim] = true;
    int nsq = out_shapes(x, red, keep, sq);
    struct tensor *y = tensor_empty(x->dtype, x->ndim, keep, x->storage->device);
    if (!y || backend_of(x)->reduce(REDUCE_MAX, y, x)) return NULL;
    if (!keepdim && !(y = tensor_view(y, nsq, sq))) return NULL;
    if (ag_needs_grad(1, &x)) {
        struct tensor *idx = argmax_keep(x, dim);
        if (!idx) return NULL;
        struct ag_node *n = ag_record("max", max_backward, 1, &x, 1, &y);
        if (n) {
            n->ip[0] = dim;
            ag_save(n, idx);
        }
    }
    return y;
}

struct tensor *ag_max(struct tensor *x, int dim, bool keepdim)
{
    tensor_scope_begin();
    return tensor_scope_return(max_impl(x, dim, keepdim));
}

static struct tensor *argmax_impl(struct tensor *x, int dim, bool keepdim)
{
    if (!x || !ag_check_float("argmax", x)) return NULL;
    if ((dim = tensor_dim(x, dim, "argmax")) < 0) return NULL;
    struct tensor *idx = argmax_keep(x, dim);
    if (!idx || keepdim) return idx;
    return tensor_squeeze(idx, dim);
}

struct tensor *ag_argmax(struct tensor *x, int dim, bool keepdim)
{
    tensor_scope_begin();
    return tensor_scope_return(argmax_impl(x, dim, keepdim));
}

struct tensor *ag_norm(struct tensor *x, int n, const int *dims, bool keepdim)
{
    tensor_scope_begin();
    return tensor_scope_return(ag_sqrt(ag_sum(ag_square(x), n, dims, keepdim)));
}

struct tensor *ag_normalize(struct tensor *x, int dim, double eps)
{
    if (!x) return NULL;
    tensor_scope_begin();
    struct tensor *nrm = ag_norm(x, 1, &dim, true);
    struct tensor *e = nrm ? tensor_full(x->dtype, 0, NULL, eps, x->storage->device) : NULL;
    return tensor_scope_return(ag_div(x, ag_maximum(nrm, e)));
}
