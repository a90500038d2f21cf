/* backend.h — the kernel interface every device implements.
 *
 * A backend is one table of function pointers. Kernels write into tensors the caller
 * allocated (llm.c style: every shape is decided by the caller and checked there), accept
 * any strides, and return a status. The CPU backend is the reference; a CUDA backend is
 * one more table, so callers never change. Tensors passed to one call share a device.
 */
#ifndef TENSOR_BACKEND_H
#define TENSOR_BACKEND_H

#include "tensor/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

enum unary_op {
    UNARY_NEG, UNARY_ABS, UNARY_EXP, UNARY_LOG, UNARY_SQRT, UNARY_RSQRT, UNARY_SIN, UNARY_COS,
    UNARY_TANH, UNARY_SIGMOID, UNARY_SILU, UNARY_RELU, UNARY_GELU, UNARY_GELU_TANH,
    UNARY_QUICK_GELU,
    UNARY_POW,     /* x^p[0] */
    UNARY_CLAMP,   /* min(max(x, p[0]), p[1]) */
    UNARY_AFFINE,  /* p[0]*x + p[1] */
    UNARY_SQUARE, UNARY_RECIPROCAL,
    UNARY_COUNT
};

enum binary_op {
    BINARY_ADD, BINARY_SUB, BINARY_MUL, BINARY_DIV, BINARY_MAXIMUM, BINARY_MINIMUM,
    BINARY_GT, BINARY_GE, BINARY_EQ,   /* 1 or 0 in the output dtype */
    BINARY_COUNT
};

enum reduce_op { REDUCE_SUM, REDUCE_MAX, REDUCE_ARGMAX, REDUCE_COUNT };

enum resize_mode { RESIZE_NEAREST, RESIZE_BILINEAR, RESIZE_BICUBIC };

struct conv2d_params {
    int stride_h, stride_w;
    int pad_top, pad_bottom, pad_left, pad_right;
    int dil_h, dil_w;
    int groups;
};

struct pool2d_params {
    int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
    bool count_include_pad;
};

struct backend {
    const char *name;
    enum device device;

    /* raw memory (the caching allocator in alloc.c sits above these) */
    void *(*raw_alloc)(size_t bytes);
    void (*raw_free)(void *p);

    /* dst = src with dtype cast; either may be strided; same shape; on this device */
    enum status (*copy)(struct tensor *dst, const struct tensor *src);
    enum status (*fill)(struct tensor *dst, double value);
    /* host <-> device transfers of contiguous bytes (NULL for the CPU backend) */
    enum status (*upload)(void *dst, const void *src, size_t bytes);
    enum status (*download)(void *dst, const void *src, size_t bytes);

    /* out = f(a); out and a have the same shape */
    enum status (*unary)(enum unary_op op, struct tensor *out, const struct tensor *a, const double *p);
    /* dx = dy * f'(x); y = f(x) is passed for ops whose derivative uses it (may be NULL otherwise) */
    enum status (*unary_backward)(enum unary_op op, struct tensor *dx, const struct tensor *dy,
                                  const struct tensor *x, const struct tensor *y, const double *p);
    /* out = a (op) b; a and b are already expanded to out's shape (stride-0 broadcast) */
    enum status (*binary)(enum binary_op op, struct tensor *out, const struct tensor *a, const struct tensor *b);
    /* out = cond != 0 ? a : b; all expanded to out's shape */
    enum status (*where)(struct tensor *out, const struct tensor *cond, const struct tensor *a, const struct tensor *b);
    /* out has a's ndim with size 1 in every reduced dim (keepdim); ARGMAX writes i64 and
     * reduces exactly one dim */
    enum status (*reduce)(enum reduce_op op, struct tensor *out, const struct tensor *a);

    /* out[..,M,N] = alpha * a[..,M,K] @ b[..,K,N] + beta * out; batch dims already expanded */
    enum status (*matmul)(struct tensor *out, const struct tensor *a, const struct tensor *b,
                          double alpha, double beta);

    /* x [N,C,H,W], w [O,C/g,KH,KW], bias [O] or NULL -> out [N,O,OH,OW] */
    enum status (*conv2d)(struct tensor *out, const struct tensor *x, const struct tensor *w,
                          const struct tensor *bias, const struct conv2d_params *p);
    enum status (*conv2d_backward_input)(struct tensor *dx, const struct tensor *dy,
                                         const struct tensor *w, const struct conv2d_params *p);
    /* dw and db (db may be NULL) are overwritten */
    enum status (*conv2d_backward_weight)(struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                          const struct tensor *x, const struct conv2d_params *p);

    /* softmax over the last dim (callers permute); log selects log_softmax */
    enum status (*softmax)(struct tensor *out, const struct tensor *x, bool log);
    enum status (*softmax_backward)(struct tensor *dx, const struct tensor *dy, const struct tensor *y, bool log);

    /* layer_norm over the last `n` elements of each row: x viewed as [rows, n] (dx, dw, db may be NULL).
     * mean, rstd: [rows] f32/f64 (same dtype as x); w, b: [n] or NULL */
    enum status (*layer_norm)(struct tensor *out, struct tensor *mean, struct tensor *rstd,
                              const struct tensor *x, const struct tensor *w, const struct tensor *b, double eps);
    enum status (*layer_norm_backward)(struct tensor *dx, struct tensor *dw, struct tensor *db,
                                       const struct tensor *dy, const struct tensor *x, const struct tensor *w,
                                       const struct tensor *mean, const struct tensor *rstd);
    /* group_norm: x [N,C,*], groups G; mean, rstd [N,G]; w, b [C] or NULL */
    enum status (*group_norm)(struct tensor *out, struct tensor *mean, struct tensor *rstd,
                              const struct tensor *x, const struct tensor *w, const struct tensor *b,
                              int groups, double eps);
    enum status (*group_norm_backward)(struct tensor *dx, struct tensor *dw, struct tensor *db,
                                       const struct tensor *dy, const struct tensor *x, const struct tensor *w,
                                       const struct tensor *mean, const struct tensor *rstd, int groups);

    /* q [B,H,L,D], k [B,H,S,D], v [B,H,S,Dv] -> out [B,H,L,Dv], lse [B,H,L] (log-sum-exp of
     * each row of scaled scores, saved for the backward instead of the LxS matrix) */
    enum status (*attention)(struct tensor *out, struct tensor *lse, const struct tensor *q,
                             const struct tensor *k, const struct tensor *v, double scale, bool causal);
    enum status (*attention_backward)(struct tensor *dq, struct tensor *dk, struct tensor *dv,
                                      const struct tensor *dout, const struct tensor *q, const struct tensor *k,
                                      const struct tensor *v, const struct tensor *out, const struct tensor *lse,
                                      double scale, bool causal);

    /* x [N,C,H,W] -> out [N,C,OH,OW]; align_corners as in torch.nn.functional.interpolate */
    enum status (*resize)(struct tensor *out, const struct tensor *x, enum resize_mode mode, bool align_corners);
    enum status (*resize_backward)(struct tensor *dx, const struct tensor *dy, enum resize_mode mode, bool align_corners);
    enum status (*avg_pool2d)(struct tensor *out, const struct tensor *x, const struct pool2d_params *p);
    enum status (*avg_pool2d_backward)(struct tensor *dx, const struct tensor *dy, const struct pool2d_params *p);

    /* out[i, :] = weight[ids[i], :]; ids i32/i64 of any shape flattened to [n], out [n, D] */
    enum status (*embedding)(struct tensor *out, const struct tensor *weight, const struct tensor *ids);
    /* dweight[ids[i], :] += dy[i, :] in index order (deterministic) */
    enum status (*embedding_backward)(struct tensor *dweight, const struct tensor *dy, const struct tensor *ids);

    /* Philox 4x32-10 stream (see philox.h): normal=false gives uniform in [0,1) */
    enum status (*random)(struct tensor *out, uint64_t seed, uint64_t offset, bool normal);

    /* waits for all queued work (NULL where calls finish before they return: the CPU) */
    enum status (*synchronize)(void);

    /* what this backend runs on, for run reports: the processor, threads, library versions */
    void (*describe)(char *buf, size_t n);
    /* the device's memory: what a new allocation could still get, and the whole */
    enum status (*memory)(int64_t *available, int64_t *total);
};

const char *unary_op_name(enum unary_op op);     /* "silu", ... */
const char *binary_op_name(enum binary_op op);   /* "add", ... */

const struct backend *backend_for(enum device dev);   /* NULL if not built/available */
const struct backend *backend_of(const struct tensor *t);
void backend_register(enum device dev, const struct backend *b);
/* profile.c: the timing table wrapping `b` while profiling is on (profile.h), else `b` */
const struct backend *profile_wrap(const struct backend *b);
extern const struct backend backend_cpu;

#ifdef __cplusplus
}
#endif

#endif
