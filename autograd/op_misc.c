/* op_misc.c — embedding, dropout and the losses. */
#include "autograd/node.h"

#include <stdio.h>
#include <string.h>

/* ---------------------------------------------------------------- embedding */

static enum status embedding_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    struct tensor *ids = n->saved[0];
    const int64_t D = n->in_meta[0].shape[1], cnt = tensor_numel(ids);
    struct tensor *dw = ag_zeros_meta(&n->in_meta[0]);
    struct tensor *dy = tensor_reshape(gout[0], TENSOR_SHAPE(cnt, D));
    struct tensor *flat = tensor_reshape(ids, TENSOR_SHAPE(cnt));
    if (!dw || !dy || !flat || backend_of(dw)->embedding_backward(dw, dy, flat)) return tensor_status();
    gin[0] = dw;
    return STATUS_OK;
}

static struct tensor *embedding_impl(struct tensor *weight, struct tensor *ids)
{
    char a[128];
    if (weight->ndim != 2) {
        tensor_fail(STATUS_SHAPE, "embedding: the table must be [rows, dim], got %s", tensor_shape_str(weight, a, sizeof a));
        return NULL;
    }
    if (ids->dtype != DTYPE_I32 && ids->dtype != DTYPE_I64) {
        tensor_fail(STATUS_DTYPE, "embedding: ids must be i32 or i64, got %s", dtype_name(ids->dtype));
        return NULL;
    }
    struct tensor *in[2] = {weight, ids};
    if (!ag_check_same_device("embedding", 2, in)) return NULL;
    const int64_t cnt = tensor_numel(ids), D = weight->shape[1];
    int64_t shape[TENSOR_MAX_DIMS];
    if (ids->ndim + 1 > TENSOR_MAX_DIMS) { tensor_fail(STATUS_SHAPE, "embedding: too many dims"); return NULL; }
    memcpy(shape, ids->shape, (size_t)ids->ndim * sizeof *shape);
    shape[ids->ndim] = D;
    struct tensor *out = tensor_empty(weight->dtype, ids->ndim + 1, shape, weight->storage->device);
    struct tensor *o2 = tensor_view(out, TENSOR_SHAPE(cnt, D)), *flat = tensor_reshape(ids, TENSOR_SHAPE(cnt));
    if (!o2 || !flat || backend_of(weight)->embedding(o2, weight, flat)) return NULL;
    struct ag_node *n = ag_record("embedding", embedding_backward, 1, &weight, 1, &out);
    if (n) ag_save(n, ids);
    return out;
}

struct tensor *ag_embedding(struct tensor *weight, struct tensor *ids)
{
    if (!weight || !ids) return NULL;
    tensor_scope_begin();
    return tensor_scope_return(embedding_impl(weight, ids));
}

/* ---------------------------------------------------------------- dropout */

struct tensor *ag_dropout(struct tensor *x, double p, bool training)
{
    if (!x) return NULL;
    if (p < 0 || p >= 1) { tensor_fail(STATUS_VALUE, "dropout: p = %g must be in [0, 1)", p); return NULL; }
    if (!training || p == 0) return tensor_autorelease(tensor_ref(x));
    tensor_scope_begin();
    struct tensor *u = ag_rand(x->dtype, x->ndim, x->shape, x->storage->device);
    struct tensor *thr = tensor_full(x->dtype, 0, NULL, p, x->storage->device);
    /* keep with probability 1-p, scaled so the expectation is unchanged */
    struct tensor *mask = ag_scale(ag_compare(BINARY_GE, u, thr), 1.0 / (1.0 - p));
    return tensor_scope_return(ag_mul(x, mask));
}

/* ---------------------------------------------------------------- losses */

struct tensor *ag_mse_loss(struct tensor *a, struct tensor *b)
{
    if (!a || !b) return NULL;
    tensor_scope_begin();
    return tensor_scope_return(ag_mean(ag_square(ag_sub(a, b)), 0, NULL, false));
}

struct tensor *ag_cross_entropy(struct tensor *logits, struct tensor *target)
{
    if (!logits || !target) return NULL;
    char a[128], b[128];
    if (logits->ndim != 2 || target->ndim != 1 || target->shape[0] != logits->shape[0]) {
        tensor_fail(STATUS_SHAPE, "cross_entropy: logits %s and target %s do not fit (need [N,C] and [N])",
                    tensor_shape_str(logits, a, sizeof a), tensor_shape_str(target, b, sizeof b));
        return NULL;
    }
    const int64_t C = logits->shape[1];
    tensor_scope_begin();
    /* one-hot rows of the identity, gathered by the targets */
    struct tensor *eye = tensor_zeros(logits->dtype, TENSOR_SHAPE(C, C), DEVICE_CPU);
    if (eye)
        for (int64_t i = 0; i < C; i++) tensor_set_flat(eye, i * C + i, 1.0);
    struct tensor *onehot = ag_embedding(tensor_to_device(eye, logits->storage->device), target);
    if (!onehot && tensor_status() == STATUS_VALUE) {   /* a target outside [0, C): say so in this op's terms */
        char why[256];
        snprintf(why, sizeof why, "%s", tensor_error());
        tensor_fail(STATUS_VALUE, "cross_entropy: a target is not a class of logits %s (%lld classes): %s",
                    tensor_shape_str(logits, a, sizeof a), (long long)C, why);
    }
    struct tensor *picked = ag_mul(ag_log_softmax(logits, -1), onehot);
    return tensor_scope_return(ag_scale(ag_sum(picked, 0, NULL, false), -1.0 / (double)logits->shape[0]));
}
