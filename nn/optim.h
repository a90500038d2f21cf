/* optim.h — AdamW with gradient accumulation, global-norm clipping and linear warm-up.
 *
 * The update is torch.optim.AdamW (defaults: foreach=False, amsgrad=False, maximize=False),
 * per parameter with its own step count t:
 *   p -= lr * wd * p                                   (decoupled weight decay, first)
 *   m = lerp(m, g, 1 - beta1);  v = beta2 v + (1 - beta2) g^2
 *   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * Before it, as torch.nn.utils.clip_grad_norm_: the global L2 norm over all gradients
 * (sqrt of the sum of the per-parameter norms squared), coef = max_norm / (norm + 1e-6)
 * clamped to 1, g *= coef. A parameter without a gradient (.grad NULL) is skipped entirely —
 * no decay, no moment update, its step count does not advance — exactly as torch skips
 * p.grad is None. Keep trainable parameters in f32 or f64: a bf16/f16 parameter gets f32
 * moments but is rounded back to its dtype after every update.
 *
 * Learning rate of update k = 0, 1, ...: lr * (k + 1) / warmup_steps during the warm-up (from
 * lr / warmup to lr; diffusers' schedules start one step earlier, at 0), then, with
 * t = (k - warmup) / (decay_steps - warmup) clamped to [0, 1]:
 *   constant  lr
 *   linear    lr_min + (lr - lr_min) (1 - t)
 *   cosine    lr_min + (lr - lr_min) (1 + cos(pi t)) / 2
 * (diffusers' get_linear / get_cosine_schedule_with_warmup when lr_min = 0); decay_steps is the
 * number of updates planned, so the last one uses lr_min + (lr - lr_min) / (decay_steps - warmup)
 * (linear) and updates past it lr_min.
 */
#ifndef NN_OPTIM_H
#define NN_OPTIM_H

#include "nn/module.h"

#ifdef __cplusplus
extern "C" {
#endif

enum nn_lr_decay { NN_LR_CONSTANT, NN_LR_LINEAR, NN_LR_COSINE };

struct nn_adamw_config {
    double lr, beta1, beta2, eps, weight_decay;
    double max_grad_norm;   /* 0 = no clipping */
    int warmup_steps;       /* 0 = none */
    int accum_steps;        /* micro-batches per update, >= 1 */
    enum nn_lr_decay decay; /* after the warm-up (header comment) */
    int64_t decay_steps;    /* updates the decay spans (warm-up included); >= 1 unless constant */
    double lr_min;          /* where the decay ends, in [0, lr] */
};
/* lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 1e-2, no clipping, no warm-up, accum 1,
 * constant learning rate */
struct nn_adamw_config nn_adamw_config_default(void);

/* "constant", "linear", "cosine" */
const char *nn_lr_decay_name(enum nn_lr_decay d);
bool nn_lr_decay_parse(const char *s, enum nn_lr_decay *out);   /* false if unknown */
/* the learning rate of update k (0-based) under c */
double nn_adamw_lr_at(const struct nn_adamw_config *c, int64_t k);

struct nn_adamw {
    struct nn_adamw_config config;
    int64_t step;            /* optimizer updates done */
    int micro;               /* backward passes counted towards the next update */
    int n;
    struct tensor **params;  /* borrowed: the trainable parameters of the store */
    char **names;            /* their names (owned copies) */
    struct tensor **m, **v;  /* owned; f64 for f64 params, else f32 */
    int64_t *param_step;     /* per-parameter update count (torch's state['step']) */
};

/* Every float parameter of ps that requires grad. The config is checked (lr >= 0, betas in
 * [0, 1), eps >= 0, weight_decay >= 0, max_grad_norm >= 0, warmup >= 0, accum >= 1, and for a
 * decay: decay_steps >= 1, 0 <= lr_min <= lr). */
enum status nn_adamw_init(struct nn_adamw *o, const struct nn_adamw_config *c, struct nn_params *ps);
void nn_adamw_free(struct nn_adamw *o);   /* safe on a zeroed or failed optimizer */

/* Call after each backward. The first accum_steps - 1 calls only count (gradients accumulate
 * in the leaves' .grad); the last divides them by accum_steps, computes the global norm
 * (to *grad_norm, may be NULL; 0 on counting calls), clips, updates, and drops the gradients.
 * *updated (may be NULL) says whether this call updated. A non-finite norm is an error
 * (STATUS_VALUE) that leaves the parameters and moments unchanged, drops the gradients and
 * restarts the accumulation. */
enum status nn_adamw_step(struct nn_adamw *o, bool *updated, double *grad_norm);
/* the learning rate the next update will use */
double nn_adamw_lr(const struct nn_adamw *o);
/* drop the gradients of every managed parameter and restart the accumulation */
void nn_adamw_zero_grad(struct nn_adamw *o);

/* ---- state for checkpoints ----
 * Tensors "adamw.m.<param>", "adamw.v.<param>" and "adamw.param_step" (i64 [n], in the
 * optimizer's parameter order); metadata "adamw.step", "adamw.micro". */
#define NN_ADAMW_META 2
int nn_adamw_state_count(const struct nn_adamw *o);   /* number of tensors: 2 n + 1 */
/* Fill names[0..count) (new strings, the caller frees each) and tensors[0..count) (new
 * references, the caller frees each), and the metadata keys/values (static keys; values
 * written into meta_buf[NN_ADAMW_META][32]), so a trainer can write them into one checkpoint
 * file together with its own tensors. */
enum status nn_adamw_state_collect(const struct nn_adamw *o, char **names, struct tensor **tensors,
                                   const char **meta_keys, const char **meta_values, char meta_buf[][32]);
/* read the state back from an open file (e.g. the trainer's checkpoint); every parameter's
 * moments must be present with its shape */
enum status nn_adamw_state_read(struct nn_adamw *o, const struct safetensors *st);
/* the same as a file of its own (written atomically) */
enum status nn_adamw_state_save(const struct nn_adamw *o, const char *path);
enum status nn_adamw_state_load(struct nn_adamw *o, const char *path);

#ifdef __cplusplus
}
#endif

#endif
