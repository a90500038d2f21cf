/* autograd.h — differentiable ops on a define-by-run graph.
 *
 * Every `ag_` op computes its result at once (through the tensor's backend) and, when grad
 * mode is on and an input requires a gradient, records a node holding what its backward
 * needs. ag_backward walks the nodes from a root in topological order, accumulates
 * gradients into leaves (`t->grad`) and releases the graph unless asked to retain it.
 *
 * Ownership follows tensor.h: each op returns a new reference (scope-owned inside a scope).
 * A node is owned by the tensors it produced and by the nodes that consumed them, so a
 * graph lives exactly as long as some tensor can still reach it. Only what a backward
 * needs is kept (saved tensors); an intermediate nobody saved is freed with its last
 * reference, graph or no graph.
 *
 * Backward rules are written with the same ag_ ops: the engine runs them with grad mode
 * off, so they record nothing.
 */
#ifndef AUTOGRAD_AUTOGRAD_H
#define AUTOGRAD_AUTOGRAD_H

#include "tensor/backend.h"
#include "tensor/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- grad mode, leaves */
void ag_no_grad_begin(void);
void ag_no_grad_end(void);
void ag_grad_mode_push(bool enabled);   /* general form of the two above */
void ag_grad_mode_pop(void);
bool ag_grad_enabled(void);

enum status ag_set_requires_grad(struct tensor *t, bool on);   /* only on leaves of float dtype */
struct tensor *ag_detach(struct tensor *t);   /* same data, no graph: the stop-gradient */
void ag_zero_grad(struct tensor *t);          /* drops t->grad */

/* Backpropagate from `root`. grad = NULL means d(root)/d(root) = 1 and root must have one
 * element. retain_graph keeps saved tensors so a second backward is possible. */
enum status ag_backward(struct tensor *root, struct tensor *grad, bool retain_graph);
/* several roots at once, each with its output gradient (grads or an entry NULL: ones, for a one-element root) */
enum status ag_backward_many(int n, struct tensor *const *roots, struct tensor *const *grads, bool retain_graph);

/* ---------------------------------------------------------------- checkpointing */
/* fn computes n_out outputs from n_in inputs. It may use parameters (leaves requiring grad)
 * it reaches through ctx, nest other checkpoints, open no-grad regions and draw random
 * numbers. Its outputs are caller-owned references (or scope-owned: the checkpoint keeps
 * what it needs). ctx must stay valid until the backward has run. */
typedef enum status (*ag_checkpoint_fn)(void *ctx, struct tensor *const *in, struct tensor **out);
/* Runs fn without keeping its activations; during backward it is run again (with the same
 * random numbers) and backpropagated. out[] receives n_out new references. */
enum status ag_checkpoint(ag_checkpoint_fn fn, void *ctx, int n_in, struct tensor *const *in, int n_out,
                          struct tensor **out);
/* true while a checkpoint's first, graph-free run of its function is on the stack: results there
 * are recomputed with gradients in the backward, so code that computes differently without a
 * graph (e.g. merged LoRA weights, diffusion/unet.c) must not do so here */
bool ag_checkpoint_forward_active(void);

/* ---------------------------------------------------------------- unary */
struct tensor *ag_neg(struct tensor *x);
struct tensor *ag_abs(struct tensor *x);
struct tensor *ag_exp(struct tensor *x);
struct tensor *ag_log(struct tensor *x);
struct tensor *ag_sqrt(struct tensor *x);
struct tensor *ag_rsqrt(struct tensor *x);
struct tensor *ag_sin(struct tensor *x);
struct tensor *ag_cos(struct tensor *x);
struct tensor *ag_tanh(struct tensor *x);
struct tensor *ag_sigmoid(struct tensor *x);
struct tensor *ag_silu(struct tensor *x);
struct tensor *ag_relu(struct tensor *x);
struct tensor *ag_gelu(struct tensor *x);        /* exact, with erf */
struct tensor *ag_gelu_tanh(struct tensor *x);   /* tanh approximation */
struct tensor *ag_quick_gelu(struct tensor *x);  /* x * sigmoid(1.702 x), OpenAI CLIP */
struct tensor *ag_pow(struct tensor *x, double p);
struct tensor *ag_clamp(struct tensor *x, double lo, double hi);
struct tensor *ag_square(struct tensor *x);
struct tensor *ag_scale(struct tensor *x, double a);            /* a * x */
struct tensor *ag_affine(struct tensor *x, double a, double b); /* a * x + b */
struct tensor *ag_unary(enum unary_op op, struct tensor *x, const double *p);

/* ---------------------------------------------------------------- binary (broadcasting) */
struct tensor *ag_add(struct tensor *a, struct tensor *b);
struct tensor *ag_sub(struct tensor *a, struct tensor *b);
struct tensor *ag_mul(struct tensor *a, struct tensor *b);
struct tensor *ag_div(struct tensor *a, struct tensor *b);
struct tensor *ag_maximum(struct tensor *a, struct tensor *b);
struct tensor *ag_minimum(struct tensor *a, struct tensor *b);
struct tensor *ag_compare(enum binary_op op, struct tensor *a, struct tensor *b);   /* GT/GE/EQ, no grad */
struct tensor *ag_where(struct tensor *cond, struct tensor *a, struct tensor *b);   /* cond != 0 ? a : b */
/* sum a broadcast gradient back down to `shape` (the reverse of broadcasting) */
struct tensor *ag_sum_to(struct tensor *x, int ndim, const int64_t *shape);

/* ---------------------------------------------------------------- views and shapes */
struct tensor *ag_reshape(struct tensor *x, int ndim, const int64_t *shape);
struct tensor *ag_permute(struct tensor *x, const int *perm);
struct tensor *ag_transpose(struct tensor *x, int d0, int d1);
struct tensor *ag_narrow(struct tensor *x, int dim, int64_t start, int64_t length);
struct tensor *ag_expand(struct tensor *x, int ndim, const int64_t *shape);
struct tensor *ag_squeeze(struct tensor *x, int dim);
struct tensor *ag_unsqueeze(struct tensor *x, int dim);
struct tensor *ag_contiguous(struct tensor *x);
struct tensor *ag_to_dtype(struct tensor *x, enum dtype dt);   /* differentiable cast */
struct tensor *ag_to_device(struct tensor *x, enum device dev);
struct tensor *ag_concat(int n, struct tensor *const *xs, int dim);
/* n pieces of the given sizes along dim (sizes sum to the dim) into out[] */
enum status ag_split(struct tensor *x, int dim, int n, const int64_t *sizes, struct tensor **out);
enum status ag_chunk(struct tensor *x, int dim, int n, struct tensor **out);   /* equal pieces */

/* ---------------------------------------------------------------- reductions */
/* dims: list of n dims (negative allowed); n = 0 means all dims */
struct tensor *ag_sum(struct tensor *x, int n, const int *dims, bool keepdim);
struct tensor *ag_mean(struct tensor *x, int n, const int *dims, bool keepdim);
struct tensor *ag_var(struct tensor *x, int n, const int *dims, bool keepdim, int correction);
struct tensor *ag_max(struct tensor *x, int dim, bool keepdim);   /* gradient to the first maximum */
struct tensor *ag_argmax(struct tensor *x, int dim, bool keepdim);   /* i64, no grad */
struct tensor *ag_norm(struct tensor *x, int n, const int *dims, bool keepdim);   /* L2 */
struct tensor *ag_normalize(struct tensor *x, int dim, double eps);   /* x / max(||x||, eps) */

/* ---------------------------------------------------------------- linear algebra */
struct tensor *ag_matmul(struct tensor *a, struct tensor *b);   /* batched, broadcast batch dims */
/* Mixed storage: p is a bf16/f16 parameter used with f32 activations x, which linear and conv2d
 * accept and cast per use (nn's norms and embeddings cast with the same rule) */
bool ag_storage_cast(const struct tensor *p, const struct tensor *x);
struct tensor *ag_linear(struct tensor *x, struct tensor *w, struct tensor *b);   /* x @ w^T + b; b may be NULL */

/* ---------------------------------------------------------------- nn */
struct tensor *ag_conv2d(struct tensor *x, struct tensor *w, struct tensor *b, const struct conv2d_params *p);
struct conv2d_params conv2d_params_default(void);   /* stride 1, no padding, dilation 1, groups 1 */
struct tensor *ag_softmax(struct tensor *x, int dim);
struct tensor *ag_log_softmax(struct tensor *x, int dim);
struct tensor *ag_layer_norm(struct tensor *x, int n_norm_dims, struct tensor *w, struct tensor *b, double eps);
struct tensor *ag_group_norm(struct tensor *x, int groups, struct tensor *w, struct tensor *b, double eps);
/* q [B,H,L,D], k [B,H,S,D], v [B,H,S,Dv] -> [B,H,L,Dv]; scale <= 0 means 1/sqrt(D) */
struct tensor *ag_attention(struct tensor *q, struct tensor *k, struct tensor *v, double scale, bool causal);
struct tensor *ag_upsample_nearest2x(struct tensor *x);
struct tensor *ag_resize(struct tensor *x, int64_t out_h, int64_t out_w, enum resize_mode mode, bool align_corners);
struct tensor *ag_avg_pool2d(struct tensor *x, const struct pool2d_params *p);
struct tensor *ag_embedding(struct tensor *weight, struct tensor *ids);   /* ids any shape -> ids.shape + [D] */
struct tensor *ag_dropout(struct tensor *x, double p, bool training);
struct tensor *ag_mse_loss(struct tensor *a, struct tensor *b);   /* mean of squared differences */
/* logits [N, C], target i32/i64 [N] -> mean negative log-likelihood */
struct tensor *ag_cross_entropy(struct tensor *logits, struct tensor *target);

/* ---------------------------------------------------------------- random numbers */
/* One global Philox generator: (seed, offset). Each draw of n numbers advances the offset
 * by n rounded up to a multiple of 4, so the stream is splittable and replayable. */
void ag_rng_seed(uint64_t seed);
void ag_rng_get(uint64_t *seed, uint64_t *offset);
void ag_rng_set(uint64_t seed, uint64_t offset);
struct tensor *ag_rand(enum dtype dt, int ndim, const int64_t *shape, enum device dev);    /* U[0,1) */
struct tensor *ag_randn(enum dtype dt, int ndim, const int64_t *shape, enum device dev);   /* N(0,1) */

#ifdef __cplusplus
}
#endif

#endif
