/* op_matmul.c — batched matmul with broadcast batch dims, and linear (x @ w^T + b) with the
 * bias fused into the GEMM's accumulator. */
#include "autograd/node.h"

#include <string.h>

static enum status matmul_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    struct tensor *a = n->saved[0], *b = n->saved[1], *g = gout[0];
    if (n->needs[0]) {
        gin[0] = ag_sum_to(ag_matmul(g, tensor_transpose(b, -1, -2)), n->in_meta[0].ndim, n->in_meta[0].shape);
        if (!gin[0]) return tensor_status();
    }
    if (n->needs[1]) {
        gin[1] = ag_sum_to(ag_matmul(tensor_transpose(a, -1, -2), g), n->in_meta[1].ndim, n->in_meta[1].shape);
        if (!gin[1]) return tensor_status();
    }
    return STATUS_OK;
}

static struct tensor *matmul_impl(struct tensor *a, struct tensor *b)
{
    struct tensor *ab[2] = {a, b};
    if (!ag_check_same_device("matmul", 2, ab) || !ag_check_float("matmul", a)) return NULL;
    char x[128], y[128];
    if (a->ndim < 2 || b->ndim < 2 || a->shape[a->ndim - 1] != b->shape[b->ndim - 2] || a->dtype != b->dtype) {
        tensor_fail(STATUS_SHAPE, "matmul: cannot multiply %s %s by %s %s (need [...,M,K] @ [...,K,N], same dtype)",
                    dtype_name(a->dtype), tensor_shape_str(a, x, sizeof x), dtype_name(b->dtype),
                    tensor_shape_str(b, y, sizeof y));
        return NULL;
    }
    /* broadcast the batch dims */
    struct tensor ba = *a, bb = *b;
    ba.ndim -= 2;
    bb.ndim -= 2;
    int64_t shape[TENSOR_MAX_DIMS];
    int nb = tensor_broadcast_shape(&ba, &bb, shape, "matmul (batch dims)");
    if (nb < 0) return NULL;
    const int64_t M = a->shape[a->ndim - 2], K = a->shape[a->ndim - 1], N = b->shape[b->ndim - 1];
    int64_t sa[TENSOR_MAX_DIMS], sb[TENSOR_MAX_DIMS];
    memcpy(sa, shape, sizeof shape);
    memcpy(sb, shape, sizeof shape);
    sa[nb] = M; sa[nb + 1] = K;
    sb[nb] = K; sb[nb + 1] = N;
    shape[nb] = M;
    shape[nb + 1] = N;
    struct tensor *out = tensor_empty(a->dtype, nb + 2, shape, a->storage->device);
    struct tensor *ea = tensor_expand(a, nb + 2, sa), *eb = tensor_expand(b, nb + 2, sb);
    if (!out || !ea || !eb) return NULL;
    if (backend_of(a)->matmul(out, ea, eb, 1.0, 0.0)) return NULL;
    struct ag_node *n = ag_record("matmul", matmul_backward, 2, ab, 1, &out);
    if (n) {
        ag_save(n, a);
        ag_save(n, b);
    }
    return out;
}

struct tensor *ag_matmul(struct tensor *a, struct tensor *b)
{
    if (!a || !b) return NULL;
    tensor_scope_begin();
    return tensor_scope_return(matmul_impl(a, b));
}

/* ---------------------------------------------------------------- linear */

/* Mixed storage (node.h): a bf16/f16 weight and bias with f32 activations are cast per use here,
 * and the node keeps the half-precision weight. */
bool ag_storage_cast(const struct tensor *p, const struct tensor *x)
{
    return p && p->dtype != x->dtype && (p->dtype == DTYPE_BF16 || p->dtype == DTYPE_F16) && x->dtype == DTYPE_F32;
}

struct tensor *ag_compute_copy(struct tensor *p, const struct tensor *x)
{
    return ag_storage_cast(p, x) ? tensor_to_dtype(p, x->dtype) : p;
}

/* saved[0]: x as [rows, in], kept only when w needs a gradient; saved[1]: w, kept only when x
 * needs one (a frozen layer keeps no activation alive) */
static enum status linear_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    struct tensor *x2 = n->saved[0], *w = n->saved[1];
    const struct ag_meta *mx = &n->in_meta[0], *mw = &n->in_meta[1];
    const int64_t out_f = mw->shape[0], in_f = mw->shape[1];
    int64_t rows = 1;
    for (int d = 0; d < mx->ndim - 1; d++) rows *= mx->shape[d];
    struct tensor *g2 = tensor_reshape(gout[0], TENSOR_SHAPE(rows, out_f));
    if (!g2) return tensor_status();
    if (n->needs[0]) {
        struct tensor *gx = tensor_empty(mx->dtype, TENSOR_SHAPE(rows, in_f), mx->device), *wc = gx ? ag_compute_copy(w, gx) : NULL;
        if (!gx || !wc || backend_of(gx)->matmul(gx, g2, wc, 1.0, 0.0)) return tensor_status();
        if (!(gin[0] = tensor_reshape(gx, n->in_meta[0].ndim, n->in_meta[0].shape))) return tensor_status();
    }
    if (n->needs[1]) {   /* computed in the activations' dtype, stored in the weight's */
        struct tensor *gw = tensor_empty(x2->dtype, 2, mw->shape, mw->device);
        if (!gw || backend_of(gw)->matmul(gw, tensor_transpose(g2, 0, 1), x2, 1.0, 0.0)) return tensor_status();
        if (!(gin[1] = mw->dtype == gw->dtype ? gw : tensor_to_dtype(gw, mw->dtype))) return tensor_status();
    }
    if (n->n_inputs > 2 && n->needs[2]) {
        int d0 = 0;
        struct tensor *gb = ag_sum(g2, 1, &d0, false);
        if (gb && gb->dtype != n->in_meta[2].dtype) gb = tensor_to_dtype(gb, n->in_meta[2].dtype);
        if (!(gin[2] = gb)) return tensor_status();
    }
    return STATUS_OK;
}

static struct tensor *linear_impl(struct tensor *x, struct tensor *w, struct tensor *b)
{
    struct tensor *in[3] = {x, w, b};
    if (!ag_check_same_device("linear", b ? 3 : 2, in) || !ag_check_float("linear", x)) return NULL;
    char s1[128], s2[128], s3[128];
    const int64_t in_f = w->ndim == 2 ? w->shape[1] : -1, out_f = w->ndim == 2 ? w->shape[0] : -1;
    if (w->ndim != 2 || x->ndim < 1 || x->shape[x->ndim - 1] != in_f || (x->dtype != w->dtype && !ag_storage_cast(w, x)) ||
        (b && (b->ndim != 1 || b->shape[0] != out_f || (b->dtype != x->dtype && !ag_storage_cast(b, x))))) {
        tensor_fail(STATUS_SHAPE, "linear: input %s %s, weight %s %s, bias %s do not fit (need x [...,in], "
                    "weight [out,in], bias [out])", dtype_name(x->dtype), tensor_shape_str(x, s1, sizeof s1),
                    dtype_name(w->dtype), tensor_shape_str(w, s2, sizeof s2), b ? tensor_shape_str(b, s3, sizeof s3) : "none");
        return NULL;
    }
    int64_t rows = 1;   /* the leading dims' product (not numel / in: in may be 0) */
    for (int d = 0; d < x->ndim - 1; d++) rows *= x->shape[d];
    struct tensor *x2 = tensor_reshape(x, TENSOR_SHAPE(rows, in_f));
    int64_t oshape[TENSOR_MAX_DIMS];
    memcpy(oshape, x->shape, sizeof oshape);
    oshape[x->ndim - 1] = out_f;
    struct tensor *out = tensor_empty(x->dtype, x->ndim, oshape, x->storage->device);
    struct tensor *o2 = tensor_view(out, TENSOR_SHAPE(rows, out_f));
    if (!x2 || !o2) return NULL;
    double beta = 0.0;
    if (b) {   /* start the accumulator from the bias (cast by the copy): one pass fewer than adding it afterwards */
        struct tensor *eb = tensor_expand(b, TENSOR_SHAPE(rows, out_f));
        if (!eb || tensor_copy_(o2, eb)) return NULL;
        beta = 1.0;
    }
    struct tensor *wc = ag_compute_copy(w, x);   /* freed with this op's scope; the node saves w */
    if (!wc || backend_of(x)->matmul(o2, x2, tensor_transpose(wc, 0, 1), 1.0, beta)) return NULL;
    struct ag_node *n = ag_record("linear", linear_backward, b ? 3 : 2, in, 1, &out);
    if (n) {
        ag_save(n, n->needs[1] ? x2 : NULL);
        ag_save(n, n->needs[0] ? w : NULL);
    }
    return out;
}

struct tensor *ag_linear(struct tensor *x, struct tensor *w, struct tensor *b)
{
    if (!x || !w) return NULL;
    tensor_scope_begin();
    return tensor_scope_return(linear_impl(x, w, b));
}
