/* op_shape.c — differentiable views and shape ops: each forward is a free view (or a copy
 * where strides force one); each backward moves the gradient back to the input's shape. */
#include "autograd/node.h"

#include <string.h>

static enum status reshape_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    gin[0] = tensor_reshape(gout[0], n->in_meta[0].ndim, n->in_meta[0].shape);
    return gin[0] ? STATUS_OK : tensor_status();
}

/* record a view-like op whose backward is a reshape back to the input shape */
static struct tensor *record_reshape_like(const char *name, struct tensor *x, struct tensor *y)
{
    if (y) ag_record(name, reshape_backward, 1, &x, 1, &y);
    return y;
}

struct tensor *ag_reshape(struct tensor *x, int ndim, const int64_t *shape)
{
    return x ? record_reshape_like("reshape", x, tensor_reshape(x, ndim, shape)) : NULL;
}
struct tensor *ag_squeeze(struct tensor *x, int dim) { return x ? record_reshape_like("squeeze", x, tensor_squeeze(x, dim)) : NULL; }
struct tensor *ag_unsqueeze(struct tensor *x, int dim) { return x ? record_reshape_like("unsqueeze", x, tensor_unsqueeze(x, dim)) : NULL; }
struct tensor *ag_contiguous(struct tensor *x)
{
    if (!x) return NULL;
    if (tensor_is_contiguous(x)) return tensor_autorelease(tensor_ref(x));
    return record_reshape_like("contiguous", x, tensor_clone(x));
}

static enum status permute_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    int inv[TENSOR_MAX_DIMS];
    for (int d = 0; d < n->in_meta[0].ndim; d++) inv[n->ip[d]] = d;
    gin[0] = tensor_permute(gout[0], inv);
    return gin[0] ? STATUS_OK : tensor_status();
}

struct tensor *ag_permute(struct tensor *x, const int *perm)
{
    if (!x) return NULL;
    struct tensor *y = tensor_permute(x, perm);
    if (!y) return NULL;
    struct ag_node *n = ag_record("permute", permute_backward, 1, &x, 1, &y);
    if (n)
        for (int d = 0; d < x->ndim; d++) n->ip[d] = perm[d];
    return y;
}

struct tensor *ag_transpose(struct tensor *x, int d0, int d1)
{
    if (!x) return NULL;
    if ((d0 = tensor_dim(x, d0, "transpose")) < 0 || (d1 = tensor_dim(x, d1, "transpose")) < 0) return NULL;
    int perm[TENSOR_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) perm[d] = d;
    perm[d0] = d1;
    perm[d1] = d0;
    return ag_permute(x, perm);
}

static enum status narrow_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    struct tensor *g = ag_zeros_meta(&n->in_meta[0]);
    struct tensor *part = tensor_narrow(g, (int)n->ip[0], n->ip[1], n->ip[2]);
    if (!part || tensor_copy_(part, gout[0])) return tensor_status();
    gin[0] = g;
    return STATUS_OK;
}

struct tensor *ag_narrow(struct tensor *x, int dim, int64_t start, int64_t length)
{
    if (!x) return NULL;
    struct tensor *y = tensor_narrow(x, dim, start, length);
    if (!y) return NULL;
    struct ag_node *n = ag_record("narrow", narrow_backward, 1, &x, 1, &y);
    if (n) {
        n->ip[0] = tensor_dim(x, dim, "narrow");
        n->ip[1] = start;
        n->ip[2] = length;
    }
    return y;
}

static enum status expand_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    gin[0] = ag_sum_to(gout[0], n->in_meta[0].ndim, n->in_meta[0].shape);
    return gin[0] ? STATUS_OK : tensor_status();
}

struct tensor *ag_expand(struct tensor *x, int ndim, const int64_t *shape)
{
    if (!x) return NULL;
    struct tensor *y = tensor_expand(x, ndim, shape);
    if (y) ag_record("expand", expand_backward, 1, &x, 1, &y);
    return y;
}

static enum status cast_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    struct tensor *g = tensor_empty(n->in_meta[0].dtype, gout[0]->ndim, gout[0]->shape, n->in_meta[0].device);
    if (!g || tensor_copy_(g, gout[0])) return tensor_status();
    gin[0] = g;
    return STATUS_OK;
}

struct tensor *ag_to_dtype(struct tensor *x, enum dtype dt)
{
    if (!x) return NULL;
    struct tensor *y = tensor_to_dtype(x, dt);
    if (y && dtype_is_float(dt)) ag_record("to_dtype", cast_backward, 1, &x, 1, &y);
    return y;
}

struct tensor *ag_to_device(struct tensor *x, enum device dev)
{
    if (!x) return NULL;
    struct tensor *y = tensor_to_device(x, dev);
    if (y && dtype_is_float(x->dtype)) ag_record("to_device", cast_backward, 1, &x, 1, &y);
    return y;
}

/* ---------------------------------------------------------------- concat / split */

static enum status concat_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    int dim = (int)n->ip[0];
    int64_t start = 0;
    for (int i = 0; i < n->n_inputs; i++) {
        int64_t len = n->in_meta[i].shape[dim];
        if (n->needs[i] && !(gin[i] = tensor_narrow(gout[0], dim, start, len))) return tensor_status();
        start += len;
    }
    return STATUS_OK;
}

struct tensor *ag_concat(int n, struct tensor *const *xs, int dim)
{
    if (n < 1) { tensor_fail(STATUS_VALUE, "concat: no tensors"); return NULL; }
    for (int i = 0; i < n; i++)
        if (!xs[i]) return NULL;
    if (!ag_check_same_device("concat", n, xs)) return NULL;
    if ((dim = tensor_dim(xs[0], dim, "concat")) < 0) return NULL;
    int64_t shape[TENSOR_MAX_DIMS];
    memcpy(shape, xs[0]->shape, sizeof shape);
    shape[dim] = 0;
    for (int i = 0; i < n; i++) {
        bool ok = xs[i]->ndim == xs[0]->ndim && xs[i]->dtype == xs[0]->dtype;
        for (int d = 0; ok && d < xs[0]->ndim; d++) ok = d == dim || xs[i]->shape[d] == xs[0]->shape[d];
        if (!ok) {
            char a[128], b[128];
            tensor_fail(STATUS_SHAPE, "concat: tensor %d (%s %s) does not fit tensor 0 (%s %s) along dim %d", i,
                        dtype_name(xs[i]->dtype), tensor_shape_str(xs[i], a, sizeof a), dtype_name(xs[0]->dtype),
                        tensor_shape_str(xs[0], b, sizeof b), dim);
            return NULL;
        }
        shape[dim] += xs[i]->shape[dim];
    }
    struct tensor *y = tensor_empty(xs[0]->dtype, xs[0]->ndim, shape, xs[0]->storage->device);
    if (!y) return NULL;
    int64_t start = 0;
    for (int i = 0; i < n; i++) {
        struct tensor *part = tensor_keep(tensor_narrow(y, dim, start, xs[i]->shape[dim]));
        enum status s = part ? tensor_copy_(part, xs[i]) : tensor_status();
        tensor_free(part);
        if (s) return NULL;
        start += xs[i]->shape[dim];
    }
    struct ag_node *node = ag_record("concat", concat_backward, n, xs, 1, &y);
    if (node) node->ip[0] = dim;
    return y;
}

enum status ag_split(struct tensor *x, int dim, int n, const int64_t *sizes, struct tensor **out)
{
    for (int i = 0; i < n; i++) out[i] = NULL;
    if (!x) return tensor_status();
    if ((dim = tensor_dim(x, dim, "split")) < 0) return tensor_status();
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += sizes[i];
    if (total != x->shape[dim])
        return tensor_fail(STATUS_SHAPE, "split: sizes add up to %lld but dim %d has %lld", (long long)total, dim,
                           (long long)x->shape[dim]);
    int64_t start = 0;
    for (int i = 0; i < n; i++) {
        out[i] = ag_narrow(x, dim, start, sizes[i]);
        if (!out[i]) return tensor_status();
        start += sizes[i];
    }
    return STATUS_OK;
}

enum status ag_chunk(struct tensor *x, int dim, int n, struct tensor **out)
{
    if (!x) return tensor_status();
    if ((dim = tensor_dim(x, dim, "chunk")) < 0) return tensor_status();
    if (n < 1 || x->shape[dim] % n)
        return tensor_fail(STATUS_SHAPE, "chunk: dim %d of size %lld does not split into %d equal pieces", dim,
                           (long long)x->shape[dim], n);
    int64_t sizes[64];
    if (n > 64) return tensor_fail(STATUS_VALUE, "chunk: at most 64 pieces");
    for (int i = 0; i < n; i++) sizes[i] = x->shape[dim] / n;
    return ag_split(x, dim, n, sizes, out);
}
