/* op_image.c — image resampling (resize, the SD upsampler) and avg_pool2d on [N,C,H,W].
 * Both are linear in x, so their backward rules need no saved tensors: only the input
 * shape (in_meta) and the op's parameters (ip). */
#include "autograd/node.h"

/* ---------------------------------------------------------------- resize */

static enum status resize_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    const struct ag_meta *m = &n->in_meta[0];
    struct tensor *dx = tensor_empty(m->dtype, m->ndim, m->shape, m->device);
    if (!dx) return tensor_status();
    const struct backend *b = backend_of(dx);
    if (!b->resize_backward) return ag_no_kernel(n->name, dx);
    enum status s = b->resize_backward(dx, gout[0], (enum resize_mode)n->ip[0], n->ip[1] != 0);
    if (!s) gin[0] = dx;
    return s;
}

static struct tensor *resize_impl(const char *name, struct tensor *x, int64_t out_h, int64_t out_w,
                                  enum resize_mode mode, bool align_corners)
{
    char a[128];
    if (!ag_check_float(name, x) || !ag_check_ndim(name, x, 4, "input [N,C,H,W]")) return NULL;
    if (mode != RESIZE_NEAREST && mode != RESIZE_BILINEAR && mode != RESIZE_BICUBIC) {
        tensor_fail(STATUS_VALUE, "%s: unknown mode %d (use RESIZE_NEAREST, RESIZE_BILINEAR or RESIZE_BICUBIC)",
                    name, (int)mode);
        return NULL;
    }
    if (out_h <= 0 || out_w <= 0) {
        tensor_fail(STATUS_VALUE, "%s: output size %lldx%lld must be positive", name, (long long)out_h,
                    (long long)out_w);
        return NULL;
    }
    if (x->shape[2] <= 0 || x->shape[3] <= 0) {
        tensor_fail(STATUS_SHAPE, "%s: input %s has an empty spatial dim", name, tensor_shape_str(x, a, sizeof a));
        return NULL;
    }
    if (mode == RESIZE_NEAREST && align_corners) {   /* torch rejects it too: nearest has no corners to align */
        tensor_fail(STATUS_VALUE, "%s: align_corners only applies to bilinear and bicubic, not nearest", name);
        return NULL;
    }
    const struct backend *b = backend_of(x);
    if (!b->resize) { ag_no_kernel(name, x); return NULL; }
    struct tensor *out =
        tensor_empty(x->dtype, TENSOR_SHAPE(x->shape[0], x->shape[1], out_h, out_w), x->storage->device);
    if (!out || b->resize(out, x, mode, align_corners)) return NULL;
    struct ag_node *n = ag_record(name, resize_backward, 1, &x, 1, &out);
    if (n) {
        n->ip[0] = mode;
        n->ip[1] = align_corners;
    }
    return out;
}

struct tensor *ag_resize(struct tensor *x, int64_t out_h, int64_t out_w, enum resize_mode mode, bool align_corners)
{
    if (!x) return NULL;
    tensor_scope_begin();
    return tensor_scope_return(resize_impl("resize", x, out_h, out_w, mode, align_corners));
}

/* nearest x2: the kernel recognises the exact factor and takes a copy / 2x2-sum path */
struct tensor *ag_upsample_nearest2x(struct tensor *x)
{
    if (!x) return NULL;
    if (!ag_check_ndim("upsample_nearest2x", x, 4, "input [N,C,H,W]")) return NULL;
    tensor_scope_begin();
    return tensor_scope_return(
        resize_impl("upsample_nearest2x", x, 2 * x->shape[2], 2 * x->shape[3], RESIZE_NEAREST, false));
}

/* ---------------------------------------------------------------- avg_pool2d */

static struct pool2d_params pool_params_of(const struct ag_node *n)
{
    return (struct pool2d_params){.kernel_h = (int)n->ip[0], .kernel_w = (int)n->ip[1], .stride_h = (int)n->ip[2],
                                  .stride_w = (int)n->ip[3], .pad_h = (int)n->ip[4], .pad_w = (int)n->ip[5],
                                  .count_include_pad = n->ip[6] != 0};
}

static enum status avg_pool2d_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    const struct ag_meta *m = &n->in_meta[0];
    struct tensor *dx = tensor_empty(m->dtype, m->ndim, m->shape, m->device);
    if (!dx) return tensor_status();
    const struct backend *b = backend_of(dx);
    if (!b->avg_pool2d_backward) return ag_no_kernel("avg_pool2d", dx);
    const struct pool2d_params p = pool_params_of(n);
    enum status s = b->avg_pool2d_backward(dx, gout[0], &p);
    if (!s) gin[0] = dx;
    return s;
}

static struct tensor *avg_pool2d_impl(struct tensor *x, const struct pool2d_params *p)
{
    char a[128];
    if (!ag_check_float("avg_pool2d", x) || !ag_check_ndim("avg_pool2d", x, 4, "input [N,C,H,W]")) return NULL;
    if (!p) { tensor_fail(STATUS_VALUE, "avg_pool2d: parameters are NULL"); return NULL; }
    if (p->kernel_h < 1 || p->kernel_w < 1 || p->stride_h < 1 || p->stride_w < 1) {
        tensor_fail(STATUS_VALUE, "avg_pool2d: kernel %dx%d and stride %dx%d must be positive", p->kernel_h,
                    p->kernel_w, p->stride_h, p->stride_w);
        return NULL;
    }
    if (p->pad_h < 0 || p->pad_w < 0 || p->pad_h > p->kernel_h / 2 || p->pad_w > p->kernel_w / 2) {
        tensor_fail(STATUS_VALUE, "avg_pool2d: padding %dx%d must be between 0 and half the kernel %dx%d "
                    "(as in torch)", p->pad_h, p->pad_w, p->kernel_h, p->kernel_w);
        return NULL;
    }
    const int64_t H = x->shape[2], W = x->shape[3];
    if (H < 1 || W < 1 || H + 2 * p->pad_h < p->kernel_h || W + 2 * p->pad_w < p->kernel_w) {
        tensor_fail(STATUS_SHAPE, "avg_pool2d: input %s padded by %dx%d is smaller than the kernel %dx%d",
                    tensor_shape_str(x, a, sizeof a), p->pad_h, p->pad_w, p->kernel_h, p->kernel_w);
        return NULL;
    }
    /* torch's output size without ceil_mode */
    const int64_t OH = (H + 2 * p->pad_h - p->kernel_h) / p->stride_h + 1;
    const int64_t OW = (W + 2 * p->pad_w - p->kernel_w) / p->stride_w + 1;
    const struct backend *b = backend_of(x);
    if (!b->avg_pool2d) { ag_no_kernel("avg_pool2d", x); return NULL; }
    struct tensor *out = tensor_empty(x->dtype, TENSOR_SHAPE(x->shape[0], x->shape[1], OH, OW), x->storage->device);
    if (!out || b->avg_pool2d(out, x, p)) return NULL;
    struct ag_node *n = ag_record("avg_pool2d", avg_pool2d_backward, 1, &x, 1, &out);
    if (n) {
        const int64_t ip[7] = {p->kernel_h, p->kernel_w, p->stride_h, p->stride_w, p->pad_h, p->pad_w,
                               p->count_include_pad};
        for (int i = 0; i < 7; i++) n->ip[i] = ip[i];
    }
    return out;
}

struct tensor *ag_avg_pool2d(struct tensor *x, const struct pool2d_params *p)
{
    if (!x) return NULL;
    tensor_scope_begin();
    return tensor_scope_return(avg_pool2d_impl(x, p));
}
