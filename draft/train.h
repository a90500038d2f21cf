/* train.h — the DRaFT family as one loop over the guided DDIM sampler.
 *
 * The objective is J = mean over images of r(decode(x_final), prompt), maximised over the
 * LoRA weights by backpropagating through the sampler (../shared/specs/DRAFT.md). Every
 * variant runs the same loop; the only thing that differs is which steps are differentiable
 * (the others run under no-grad, which is the stop-gradient) and what the reward sees:
 *
 *   full      every step differentiable, each UNet call a checkpoint segment
 *   K         only the last k steps (k = T is full)
 *   alignprop the last k steps with k drawn uniformly from [1, T] per call (random truncation)
 *   refl      no-grad down to a step s drawn from a window, then one differentiable call whose
 *             predicted x0 is decoded (ImageReward's ReFL)
 *   lv        x0 sampled with no graph; n copies re-noised to the last timestep t1,
 *             x1 = sqrt(abar(t1)) x0 + sqrt(1 - abar(t1)) eps_i, one differentiable guided DDIM
 *             step each; J is the mean of the n rewards (DRaFT-LV)
 *   drtune    the UNet's input x_t is stopped at every step, so the gradient runs down the chain
 *             only through the DDIM update's skip path (x_{t-1} = a_t x_t + b_t eps); k steps
 *             evenly spaced (stride T / k, first at an offset drawn from [0, stride)) compute
 *             eps with a graph into the LoRA, the others without (DRTune)
 */
#ifndef DRAFT_TRAIN_H
#define DRAFT_TRAIN_H

#include "diffusion/pipeline.h"
#include "draft/reward.h"

#ifdef __cplusplus
extern "C" {
#endif

enum draft_method { DRAFT_FULL, DRAFT_K, DRAFT_LV, DRAFT_REFL, DRAFT_ALIGNPROP, DRAFT_DRTUNE };

const char *draft_method_name(enum draft_method m);
/* "full", "k", "lv", "refl", "alignprop", "drtune" (also "draft", "draft-k", "draft-lv"); false if unknown */
bool draft_method_parse(const char *s, enum draft_method *m);

struct draft_method_config {
    enum draft_method method;
    int k;                     /* K, alignprop: differentiable last steps; drtune: trained steps */
    int lv_n;                  /* LV: re-noised copies */
    int refl_lo, refl_hi;      /* ReFL: window of step indices (0-based of T) to stop at */
    int steps;                 /* DDIM inference steps T */
    double guidance, eta;
    bool checkpoint;           /* each differentiable UNet call (and VAE block) recomputed in the backward */
    bool checkpoint_blocks;    /* and, within a call, each UNet resnet and transformer (sd_unet.checkpoint):
                                * the call's recompute keeps one block's activations, not the whole UNet's */
};
void draft_method_config_default(struct draft_method_config *c);   /* LV, n 2, T 50, g 7.5, eta 0, checkpoint (and blocks) */
/* check the fields against each other; a message names the field */
enum status draft_method_config_check(const struct draft_method_config *c);

/* One evaluation of the objective and its gradient: samples from init_latents [B, C, h, w] with
 * context [2B, 77, D] ([uncond; cond]) and prompts (B strings, for the reward), then
 * backpropagates loss = -scale * J into every leaf that requires grad (the LoRA weights:
 * gradients accumulate in their .grad). *reward gets J.
 * trunc: the random draw of alignprop (k), refl (stop step index) or drtune (the first trained
 * step, in [0, T / k)); < 0 means the method's default (k for alignprop, refl_hi for refl,
 * T / k - 1 for drtune: its last trained step is then step T - 1 when k divides T).
 * lv_noise: [n, B, C, h, w] or NULL (drawn from the engine's RNG). final_latents (may be NULL)
 * receives the sampler's last latents (no graph). */
enum status draft_objective_backward(struct sd_pipeline *p, const struct draft_method_config *c,
                                     struct draft_reward *r, struct tensor *init_latents, struct tensor *context,
                                     const char *const *prompts, int trunc, struct tensor *lv_noise, double scale,
                                     double *reward, struct tensor **final_latents);

/* No-grad sampling and scoring (evaluation): images [B, 3, H, W] in [-1, 1] into *images (may be
 * NULL) and the mean reward into *reward (may be NULL; r may be NULL). */
enum status draft_sample_eval(struct sd_pipeline *p, const struct draft_method_config *c, struct draft_reward *r,
                              struct tensor *init_latents, struct tensor *context, const char *const *prompts,
                              struct tensor **images, double *reward, double *per_image);

#ifdef __cplusplus
}
#endif

#endif
