/* ddim.h — DDIMScheduler of diffusers (schedulers/scheduling_ddim.py), differentiable.
 *
 * The schedule (betas, ᾱ = alphas_cumprod) is computed as diffusers computes it in float32 —
 * torch.linspace's float32 arithmetic, float32 betas, a cumulative product accumulated in double
 * and rounded to float32 at each entry — so alphas_cumprod equals the reference bit for bit;
 * it is stored as double. A step is built only from ag_ ops with double coefficients, so it is
 * differentiable w.r.t. the model output and the sample (the DRaFT trainer backpropagates
 * through the sampler) and works in any float dtype on any device.
 *
 * Like diffusers, the previous timestep of a step is t - num_train_timesteps / num_inference_steps
 * (integer division) whatever the spacing; ᾱ of a negative timestep is final_alpha_cumprod.
 * Not implemented (rejected by the config reader, naming the key): thresholding, trained_betas,
 * rescale_betas_zero_snr. use_clipped_model_output is always false.
 */
#ifndef DIFFUSION_DDIM_H
#define DIFFUSION_DDIM_H

#include <stdbool.h>
#include <stdint.h>

#include "diffusion/unet.h"
#include "nn/config.h"

#ifdef __cplusplus
extern "C" {
#endif

enum sd_beta_schedule { SD_BETA_LINEAR, SD_BETA_SCALED_LINEAR, SD_BETA_SQUAREDCOS_CAP_V2 };
enum sd_prediction { SD_PRED_EPSILON, SD_PRED_V_PREDICTION, SD_PRED_SAMPLE };
enum sd_spacing { SD_SPACING_LEADING, SD_SPACING_TRAILING, SD_SPACING_LINSPACE };

struct sd_ddim {
    /* config (diffusers names) */
    int num_train_timesteps;
    double beta_start, beta_end;
    enum sd_beta_schedule schedule;
    bool set_alpha_to_one, clip_sample;
    double clip_sample_range;
    int steps_offset;
    enum sd_prediction prediction;
    enum sd_spacing spacing;
    /* derived */
    double *alphas_cumprod;       /* [num_train_timesteps], float32 values (see above) */
    double final_alpha_cumprod;   /* 1, or alphas_cumprod[0] when !set_alpha_to_one */
    int num_inference_steps;      /* 0 until sd_ddim_set_timesteps */
    int64_t *timesteps;           /* [num_inference_steps], descending */
};

/* SD 1.4's scheduler: scaled_linear 0.00085..0.012, 1000 steps, steps_offset 1,
 * set_alpha_to_one false, no clipping, leading spacing, epsilon prediction. On allocation
 * failure alphas_cumprod stays NULL and the error is set (every later call then fails). */
void sd_ddim_init_default(struct sd_ddim *s);
/* from a loaded scheduler_config.json (read and finished here; the caller still frees cfg).
 * Missing keys take DDIMScheduler's defaults; a PNDMScheduler config (SD 1.4's) is accepted
 * (skip_prk_steps is ignored). Unknown keys, bad values and unimplemented features are errors
 * naming the file and the key. sd_ddim_free is safe afterwards. */
enum status sd_ddim_init(struct sd_ddim *s, struct nn_config *cfg);
enum status sd_ddim_init_file(struct sd_ddim *s, const char *path);
void sd_ddim_free(struct sd_ddim *s);

/* the inference timesteps for the configured spacing (1 <= n <= num_train_timesteps) */
enum status sd_ddim_set_timesteps(struct sd_ddim *s, int num_inference_steps);
/* t - num_train_timesteps / num_inference_steps (needs set_timesteps; -1 before) */
int64_t sd_ddim_prev_timestep(const struct sd_ddim *s, int64_t t);
/* ᾱ_t; t < 0 gives final_alpha_cumprod, t >= num_train_timesteps NaN */
double sd_ddim_alpha_bar(const struct sd_ddim *s, int64_t t);

/* One DDIM step x_t -> x_{t-Δ} (diffusers DDIMScheduler.step, use_clipped_model_output false):
 *   x0 = per prediction type (clamped to ±clip_sample_range when clip_sample), ε likewise,
 *   σ = eta·sqrt((1-ᾱ_prev)/(1-ᾱ_t)·(1-ᾱ_t/ᾱ_prev)),
 *   prev = sqrt(ᾱ_prev)·x0 + sqrt(1-ᾱ_prev-σ²)·ε + σ·noise.
 * model_output and sample have one shape (any float dtype, one device). variance_noise (same
 * shape) is used only when eta > 0; when it is NULL there, it is drawn with ag_randn (the
 * engine's Philox generator). Needs sd_ddim_set_timesteps. NULL with a message on bad input. */
struct tensor *sd_ddim_step(const struct sd_ddim *s, struct tensor *model_output, int64_t t, struct tensor *sample,
                            double eta, struct tensor *variance_noise);
/* the step's predicted x0 (clamped when clip_sample), differentiable */
struct tensor *sd_ddim_pred_x0(const struct sd_ddim *s, struct tensor *model_output, int64_t t, struct tensor *sample);

/* diffusers add_noise: sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·noise, t per batch row. x0 and noise
 * [B, ...] of one shape; timesteps [B] (or [1]) of an integer dtype, any device. */
struct tensor *sd_ddim_add_noise(const struct sd_ddim *s, struct tensor *x0, struct tensor *noise,
                                 struct tensor *timesteps);
/* diffusers get_velocity: v = sqrt(ᾱ_t)·noise - sqrt(1-ᾱ_t)·x0 (same arguments) */
struct tensor *sd_ddim_velocity(const struct sd_ddim *s, struct tensor *x0, struct tensor *noise,
                                struct tensor *timesteps);

/* The DDPM training loss (diffusers train_text_to_image): mse(unet(add_noise(latents, noise, t),
 * t, encoder_hidden_states), target), mean over all elements, with target = noise (epsilon),
 * the velocity (v_prediction) or latents (sample). Computed in float32 (float64 when the
 * prediction is float64), like diffusers' .float(). Differentiable in latents, noise, the
 * hidden states and the UNet's parameters. */
struct tensor *sd_ddpm_loss(struct sd_unet *unet, const struct sd_ddim *s, struct tensor *latents,
                            struct tensor *timesteps, struct tensor *noise, struct tensor *encoder_hidden_states);

#ifdef __cplusplus
}
#endif

#endif
