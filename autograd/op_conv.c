/* op_conv.c — conv2d with stride, asymmetric padding, dilation and groups (PyTorch's
 * conv2d semantics; padding is given per side, so the SD VAE downsampler's (0,1,0,1) pad
 * needs no separate pad op). */
#include "autograd/node.h"

#include <stdlib.h>
#include <string.h>

struct conv2d_params conv2d_params_default(void)
{
    return (struct conv2d_params){.stride_h = 1, .stride_w = 1, .dil_h = 1, .dil_w = 1, .groups = 1};
}

/* saved[0]: x, kept only when w needs a gradient; saved[1]: w, kept only when x needs one
 * (a frozen conv keeps no activation alive); ctx: the params */
/* Mixed storage (node.h): a bf16/f16 weight or bias with f32 activations is cast per use inside
 * the op; the node keeps the half-precision weight. */
static enum status conv2d_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    const struct conv2d_params *p = n->ctx;
    struct tensor *x = n->saved[0], *w = n->saved[1], *dy = gout[0];
    const struct backend *be = backend_of(dy);
    enum status s;
    if (n->needs[0]) {
        const struct ag_meta *m = &n->in_meta[0];
        struct tensor *dx = tensor_empty(m->dtype, 4, m->shape, m->device);
        if (!dx) return tensor_status();
        if (!be->conv2d_backward_input) return ag_no_kernel("conv2d_backward_input", dy);
        struct tensor *wc = ag_compute_copy(w, dx);
        if (!wc) return tensor_status();
        if ((s = be->conv2d_backward_input(dx, dy, wc, p))) return s;
        gin[0] = dx;
    }
    const bool need_b = n->n_inputs > 2 && n->needs[2];
    if (n->needs[1]) {
        const struct ag_meta *m = &n->in_meta[1];   /* computed in x's dtype, returned in the weight's */
        struct tensor *dw = tensor_empty(x->dtype, 4, m->shape, m->device);
        struct tensor *db = need_b ? tensor_empty(x->dtype, TENSOR_SHAPE(m->shape[0]), m->device) : NULL;
        if (!dw || (need_b && !db)) return tensor_status();
        if (!be->conv2d_backward_weight) return ag_no_kernel("conv2d_backward_weight", dy);
        if ((s = be->conv2d_backward_weight(dw, db, dy, x, p))) return s;
        if (!(gin[1] = dw->dtype == m->dtype ? dw : tensor_to_dtype(dw, m->dtype))) return tensor_status();
        if (need_b && !(gin[2] = db->dtype == n->in_meta[2].dtype ? db : tensor_to_dtype(db, n->in_meta[2].dtype)))
            return tensor_status();
    } else if (need_b) {   /* only the bias: a plain reduction */
        const int dims[3] = {0, 2, 3};
        struct tensor *db = ag_sum(dy, 3, dims, false);
        if (db && db->dtype != n->in_meta[2].dtype) db = tensor_to_dtype(db, n->in_meta[2].dtype);
        if (!(gin[2] = db)) return tensor_status();
    }
    return STATUS_OK;
}

static bool check_params(const struct conv2d_params *p)
{
    if (p->stride_h < 1 || p->stride_w < 1 || p->dil_h < 1 || p->dil_w < 1) {
        tensor_fail(STATUS_VALUE, "conv2d: stride (%d,%d) and dilation (%d,%d) must be >= 1", p->stride_h, p->stride_w,
                    p->dil_h, p->dil_w);
        return false;
    }
    if (p->pad_top < 0 || p->pad_bottom < 0 || p->pad_left < 0 || p->pad_right < 0) {
        tensor_fail(STATUS_VALUE, "conv2d: padding (top %d, bottom %d, left %d, right %d) must be >= 0", p->pad_top,
                    p->pad_bottom, p->pad_left, p->pad_right);
        return false;
    }
    if (p->groups < 1) {
        tensor_fail(STATUS_VALUE, "conv2d: groups must be >= 1, got %d", p->groups);
        return false;
    }
    return true;
}

static struct tensor *conv2d_impl(struct tensor *x, struct tensor *w, struct tensor *b, const struct conv2d_params *p)
{
    struct tensor *in[3] = {x, w, b};
    const int n_in = b ? 3 : 2;
    if (!ag_check_same_device("conv2d", n_in, in) || !ag_check_float("conv2d", x)) return NULL;
    if (!ag_check_ndim("conv2d", x, 4, "input [N,C,H,W]") ||
        !ag_check_ndim("conv2d", w, 4, "weight [O,C/groups,KH,KW]"))
        return NULL;
    if (!check_params(p)) return NULL;
    char xs[128], ws[128], bs[128];
    tensor_shape_str(x, xs, sizeof xs);
    tensor_shape_str(w, ws, sizeof ws);
    if ((w->dtype != x->dtype && !ag_storage_cast(w, x)) || (b && b->dtype != x->dtype && !ag_storage_cast(b, x))) {
        tensor_fail(STATUS_DTYPE, "conv2d: input is %s but weight is %s%s%s", dtype_name(x->dtype),
                    dtype_name(w->dtype), b ? " and bias " : "", b ? dtype_name(b->dtype) : "");
        return NULL;
    }
    const int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    const int64_t O = w->shape[0], Cg = w->shape[1], KH = w->shape[2], KW = w->shape[3];
    const int G = p->groups;
    if (C % G) {
        tensor_fail(STATUS_SHAPE, "conv2d: groups=%d does not divide the %lld channels of input %s", G, (long long)C,
                    xs);
        return NULL;
    }
    if (O % G) {
        tensor_fail(STATUS_SHAPE, "conv2d: groups=%d does not divide the %lld output channels of weight %s", G,
                    (long long)O, ws);
        return NULL;
    }
    if (Cg * G != C) {
        tensor_fail(STATUS_SHAPE, "conv2d: input %s has %lld channels but weight %s with groups=%d expects %lld", xs,
                    (long long)C, ws, G, (long long)(Cg * G));
        return NULL;
    }
    if (KH < 1 || KW < 1) {
        tensor_fail(STATUS_SHAPE, "conv2d: weight %s has an empty kernel", ws);
        return NULL;
    }
    if (b && (b->ndim != 1 || b->shape[0] != O)) {
        tensor_fail(STATUS_SHAPE, "conv2d: bias %s does not fit weight %s (need [%lld])",
                    tensor_shape_str(b, bs, sizeof bs), ws, (long long)O);
        return NULL;
    }
    const int64_t eh = (int64_t)p->dil_h * (KH - 1) + 1, ew = (int64_t)p->dil_w * (KW - 1) + 1;   /* dilated kernel */
    const int64_t ph = H + p->pad_top + p->pad_bottom, pw = W + p->pad_left + p->pad_right;
    if (ph < eh || pw < ew) {
        tensor_fail(STATUS_SHAPE, "conv2d: input %s padded to %lldx%lld is smaller than the kernel %lldx%lld "
                    "(dilated to %lldx%lld): the output would be empty", xs, (long long)ph, (long long)pw,
                    (long long)KH, (long long)KW, (long long)eh, (long long)ew);
        return NULL;
    }
    const int64_t OH = (ph - eh) / p->stride_h + 1, OW = (pw - ew) / p->stride_w + 1;
    struct tensor *out = tensor_empty(x->dtype, TENSOR_SHAPE(N, O, OH, OW), x->storage->device);
    if (!out) return NULL;
    const struct backend *be = backend_of(x);
    if (!be->conv2d) { ag_no_kernel("conv2d", x); return NULL; }
    struct tensor *wc = ag_compute_copy(w, x), *bc = b ? ag_compute_copy(b, x) : NULL;   /* freed with this op's scope */
    if (!wc || (b && !bc) || be->conv2d(out, x, wc, bc, p)) return NULL;
    struct ag_node *n = ag_record("conv2d", conv2d_backward, n_in, in, 1, &out);
    if (n) {
        struct conv2d_params *pc = malloc(sizeof *pc);
        if (!pc) { tensor_fail(STATUS_OOM, "conv2d: out of host memory"); return NULL; }
        *pc = *p;
        n->ctx = pc;
        n->ctx_free = free;
        ag_save(n, n->needs[1] ? x : NULL);
        ag_save(n, n->needs[0] ? w : NULL);
    }
    return out;
}

struct tensor *ag_conv2d(struct tensor *x, struct tensor *w, struct tensor *b, const struct conv2d_params *p)
{
    if (!x || !w) return NULL;
    const struct conv2d_params def = conv2d_params_default();
    tensor_scope_begin();
    return tensor_scope_return(conv2d_impl(x, w, b, p ? p : &def));
}
