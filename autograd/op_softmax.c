/* op_softmax.c — softmax and log_softmax over any dim (the kernel works on the last dim;
 * other dims are reached through a transposed view, no copy). */
#include "autograd/node.h"

static enum status softmax_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    int dim = (int)n->ip[0];
    bool log_ = n->ip[1];
    struct tensor *y = n->saved[0];
    struct tensor *dx = tensor_empty(y->dtype, y->ndim, y->shape, y->storage->device);
    struct tensor *dxv = tensor_transpose(dx, dim, -1), *dyv = tensor_transpose(gout[0], dim, -1),
                  *yv = tensor_transpose(y, dim, -1);
    if (!dxv || !dyv || !yv) return tensor_status();
    enum status s = backend_of(y)->softmax_backward(dxv, dyv, yv, log_);
    gin[0] = dx;
    return s;
}

static struct tensor *softmax_impl(struct tensor *x, int dim, bool log_)
{
    const char *name = log_ ? "log_softmax" : "softmax";
    if (!ag_check_float(name, x)) return NULL;
    if (x->ndim == 0) { tensor_fail(STATUS_SHAPE, "%s: needs at least one dim", name); return NULL; }
    if ((dim = tensor_dim(x, dim, name)) < 0) return NULL;
    struct tensor *y = tensor_empty_like(x);
    struct tensor *yv = tensor_transpose(y, dim, -1), *xv = tensor_transpose(x, dim, -1);
    if (!yv || !xv || backend_of(x)->softmax(yv, xv, log_)) return NULL;
    struct ag_node *n = ag_record(name, softmax_backward, 1, &x, 1, &y);
    if (n) {
        n->ip[0] = dim;
        n->ip[1] = log_;
        ag_save(n, y);
    }
    return y;
}

struct tensor *ag_softmax(struct tensor *x, int dim)
{
    if (!x) return NULL;
    tensor_scope_begin();
    return tensor_scope_return(softmax_impl(x, dim, false));
}

struct tensor *ag_log_softmax(struct tensor *x, int dim)
{
    if (!x) return NULL;
    tensor_scope_begin();
    return tensor_scope_return(softmax_impl(x, dim, true));
}
