/* op_attention.c — scaled-dot-product attention, softmax(scale q k^T [causal mask]) v.
 *
 * The kernel never forms the L x S matrix: it returns the output and the log-sum-exp of each
 * score row, and the node keeps those (plus q, k, v) so the backward can recompute the
 * probabilities block by block. See tensor/cpu/attention.c for the mask convention. */
#include "autograd/node.h"

#include <math.h>

static enum status attention_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    struct tensor *q = n->saved[0], *k = n->saved[1], *v = n->saved[2], *out = n->saved[3], *lse = n->saved[4];
    const struct tensor *in[3] = {q, k, v};
    struct tensor *d[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3; i++)
        if (n->needs[i] && !(d[i] = tensor_empty(in[i]->dtype, 4, in[i]->shape, in[i]->storage->device)))
            return tensor_status();
    const struct backend *be = backend_of(q);
    if (!be->attention_backward) return ag_no_kernel("attention_backward", q);
    enum status s = be->attention_backward(d[0], d[1], d[2], gout[0], q, k, v, out, lse, n->fp[0], n->ip[0] != 0);
    if (s) return s;
    for (int i = 0; i < 3; i++) gin[i] = d[i];
    return STATUS_OK;
}

static struct tensor *attention_impl(struct tensor *q, struct tensor *k, struct tensor *v, double scale, bool causal)
{
    const char *op = "attention";
    struct tensor *in[3] = {q, k, v};
    if (!ag_check_same_device(op, 3, in) || !ag_check_float(op, q)) return NULL;
    if (k->dtype != q->dtype || v->dtype != q->dtype) {
        tensor_fail(STATUS_DTYPE, "attention: q, k, v must share a dtype (got %s, %s, %s)", dtype_name(q->dtype),
                    dtype_name(k->dtype), dtype_name(v->dtype));
        return NULL;
    }
    if (!ag_check_ndim(op, q, 4, "q [B,H,L,D]") || !ag_check_ndim(op, k, 4, "k [B,H,S,D]") ||
        !ag_check_ndim(op, v, 4, "v [B,H,S,Dv]"))
        return NULL;
    const int64_t B = q->shape[0], H = q->shape[1], L = q->shape[2], D = q->shape[3], S = k->shape[2], Dv = v->shape[3];
    if (k->shape[0] != B || k->shape[1] != H || k->shape[3] != D || v->shape[0] != B || v->shape[1] != H ||
        v->shape[2] != S) {
        char a[64], b[64], c[64];
        tensor_fail(STATUS_SHAPE, "attention: q %s, k %s, v %s do not fit (need q [B,H,L,D], k [B,H,S,D], v [B,H,S,Dv])",
                    tensor_shape_str(q, a, sizeof a), tensor_shape_str(k, b, sizeof b), tensor_shape_str(v, c, sizeof c));
        return NULL;
    }
    if (!isfinite(scale)) {
        tensor_fail(STATUS_VALUE, "attention: scale must be finite (got %g; <= 0 selects 1/sqrt(D))", scale);
        return NULL;
    }
    if (scale <= 0) scale = D > 0 ? 1.0 / sqrt((double)D) : 1.0;
    const enum device dev = q->storage->device;
    struct tensor *out = tensor_empty(q->dtype, TENSOR_SHAPE(B, H, L, Dv), dev);
    struct tensor *lse = tensor_empty(q->dtype, TENSOR_SHAPE(B, H, L), dev);
    if (!out || !lse) return NULL;
    const struct backend *be = backend_of(q);
    if (!be->attention) { ag_no_kernel(op, q); return NULL; }
    if (be->attention(out, lse, q, k, v, scale, causal)) return NULL;
    struct ag_node *n = ag_record(op, attention_backward, 3, in, 1, &out);
    if (n) {
        n->fp[0] = scale;
        n->ip[0] = causal;
        ag_save(n, q);
        ag_save(n, k);
        ag_save(n, v);
        ag_save(n, tensor_alias(out));   /* an alias without the graph: saving out itself would be a cycle */
        ag_save(n, lse);
    }
    return out;
}

struct tensor *ag_attention(struct tensor *q, struct tensor *k, struct tensor *v, double scale, bool causal)
{
    if (!q || !k || !v) return NULL;
    tensor_scope_begin();
    return tensor_scope_return(attention_impl(q, k, v, scale, causal));
}
