/* pipeline.h — StableDiffusionPipeline: the components of a diffusers folder and the
 * text-to-image path (diffusers pipelines/stable_diffusion/pipeline_stable_diffusion.py), for
 * Stable Diffusion 1.x and 2.x (the UNet's Linear projections, v-prediction, "!" padding), and
 * StableDiffusionXLPipeline (pipeline_stable_diffusion_xl.py: two text encoders, see below).
 *
 * A folder holds model_index.json and one sub-folder per component:
 *   tokenizer/     vocab.json, merges.txt, [special_tokens_map.json] (CLIPTokenizer; its pad_token)
 *   text_encoder/  config.json, model.safetensors                (CLIPTextModel)
 *   unet/          config.json, diffusion_pytorch_model.safetensors (UNet2DConditionModel)
 *   vae/           config.json, diffusion_pytorch_model.safetensors (AutoencoderKL)
 *   scheduler/     scheduler_config.json                         (read as a DDIMScheduler)
 * SDXL folders add tokenizer_2/ (CLIPTokenizer: the same vocabulary, its own pad_token) and
 * text_encoder_2/ (CLIPTextModelWithProjection). The context is then the two encoders'
 * hidden_states[-2] side by side ([n, 77, 768 + 1280]), followed by the rows that carry the second
 * encoder's pooled, projected output (its text_embeds, [n, 1280], in ceil(1280 / 2048) = 1 row,
 * the rest zeros): the UNet call takes them out again, with time ids (H, W, 0, 0, H, W) of the
 * latents' image size, as diffusers' defaults. With force_zeros_for_empty_prompt, the
 * unconditional half of an empty negative prompt is zeros (diffusers' negative_prompt=None).
 * Weights may also be `*.fp16.safetensors` (the "fp16" variant) or PyTorch `*.bin` files
 * (read by the restricted unpickler of nn/pickle.h). The safety checker and feature
 * extractor of the real repository are not loaded.
 *
 * Sampling: classifier-free guidance runs the UNet once on the batch [unconditional;
 * conditional] and mixes eps = eps_u + g (eps_c - eps_u); DDIM steps from init latents;
 * images = vae.decode(latents / scaling_factor), in [-1, 1] (not clamped). Every function is
 * built from ag_ ops, so the DRaFT trainer can differentiate through any part of it. */
#ifndef DIFFUSION_PIPELINE_H
#define DIFFUSION_PIPELINE_H

#include "diffusion/clip.h"
#include "diffusion/ddim.h"
#include "diffusion/tokenizer.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"

#ifdef __cplusplus
extern "C" {
#endif

struct sd_pipeline {
    char dir[1024];
    enum dtype dtype;
    enum device device;
    struct clip_tokenizer *tokenizer;
    int32_t pad_id;   /* the prompts' padding: eos for SD 1.x, "!" (0) for SD 2.x (tokenizer/special_tokens_map.json) */
    struct clip_text_model text_encoder;
    struct nn_params text_params;
    struct sd_unet unet;
    struct nn_params unet_params;
    struct sd_vae vae;
    struct nn_params vae_params;
    struct sd_ddim scheduler;
    /* SDXL: a second tokenizer (same vocabulary) and CLIPTextModelWithProjection */
    bool xl;
    bool force_zeros;                     /* force_zeros_for_empty_prompt (model_index.json) */
    int32_t pad_id_2;
    struct clip_text_model text_encoder_2;
    struct nn_linear text_projection_2;   /* text_encoder_2's "text_projection" [proj, hidden], no bias */
    struct nn_params text_params_2;
    int64_t pooled_dim, text_rows;        /* text_embeds' width; the context's token rows (77) */
    int clip_skip;                        /* diffusers' clip_skip: text layers left out (0 = none) */
};

/* Load every component of the diffusers folder `dir`, parameters in dtype `dt` on `dev`
 * (converted while loading: never two full copies). On failure the message names the file
 * and, for weights, the tensor; sd_pipeline_free is safe to call afterwards. */
enum status sd_pipeline_load(struct sd_pipeline *p, const char *dir, enum dtype dt, enum device dev);
/* The original single-file layout (sd-v1-4.ckpt through the restricted unpickler, or a
 * .safetensors with the same keys; diffusion/ldm.h names the map): the weights of UNet, VAE
 * and text encoder come from `file`, the configs, tokenizer and scheduler from the diffusers
 * folder `config_dir` (its weights are not read). EMA copies and schedule buffers are
 * skipped; any other tensor the model does not use is an error. */
enum status sd_pipeline_load_single_file(struct sd_pipeline *p, const char *file, const char *config_dir,
                                         enum dtype dt, enum device dev);
void sd_pipeline_free(struct sd_pipeline *p);

/* Write the pipeline as a diffusers folder `out` (created; an existing folder must be empty):
 * the configs, tokenizer files and scheduler config copied from the folder it was loaded from
 * (p->dir: every .json and .txt of it and of its component folders), and each component's
 * parameters as they are now (LoRAs merged in, say) in their dtype, under diffusers' names:
 * text_encoder/model.safetensors, unet/ and vae/diffusion_pytorch_model.safetensors, with
 * {"format": "pt"} metadata as transformers wants. model_index.json drops the safety checker and
 * feature extractor, which are not written (what diffusers saves for safety_checker=None). */
enum status sd_pipeline_save(const struct sd_pipeline *p, const char *out);
/* what sd_pipeline_save would refuse about `out` (not empty, a file in its path, not writable),
 * writing nothing: for a tool to say so before it loads a model */
enum status sd_pipeline_save_check(const char *out);

/* the dtype of latents, text embeddings and images: the parameters' dtype, or f32 for a model
 * stored in bf16/f16 (its layers cast their weights per use; nn_compute_dtype) */
enum dtype sd_pipeline_dtype(const struct sd_pipeline *p);
/* the UNet's latent size for an image side (image / 2^(vae levels - 1)) */
int64_t sd_pipeline_latent_size(const struct sd_pipeline *p, int64_t image_size);
/* the default image side, as diffusers' pipeline takes it: the UNet's sample_size times the VAE's
 * factor (512 for SD 1.x and 2.1-base, 768 for SD 2.1), which a VAE config's own sample_size need
 * not match; the VAE's when the UNet's config has none */
int64_t sd_pipeline_default_size(const struct sd_pipeline *p);

/* prompts -> ids [n, 77] (i32, bos + at most 75 ids + eos, then pad_id: SD's tokenizer call) */
struct tensor *sd_pipeline_tokenize(const struct sd_pipeline *p, int n, const char *const *prompts);
/* diffusers' clip_skip (0 = none): the prompt embeddings come from `k` text encoder layers before
 * the last, through the final LayerNorm as diffusers' StableDiffusionPipeline does; SDXL's from
 * hidden_states[-(k + 2)] of both encoders, without it (its pooled text stays the last layer's).
 * An error when the encoders have no layer to spare. */
enum status sd_pipeline_set_clip_skip(struct sd_pipeline *p, int k);
/* ids [n, 77] -> text embeddings [n, 77, hidden] (the final LayerNorm's output); SDXL: the
 * context rows above, the pooled rows included */
struct tensor *sd_pipeline_encode(const struct sd_pipeline *p, struct tensor *ids);
/* the guidance context: [2n, 77, hidden] = [uncond; cond] for one batch of n prompts (SDXL: with
 * the pooled rows, and zeros for an empty unconditional prompt under force_zeros) */
struct tensor *sd_pipeline_context(const struct sd_pipeline *p, struct tensor *uncond_ids, struct tensor *cond_ids);

/* One guided noise prediction: x [n, C, h, w] at timestep t with context [2n, 77, D]
 * (uncond first); guidance <= 1 or context of n rows means no guidance (one UNet call on the
 * conditional rows given). */
struct tensor *sd_pipeline_eps(struct sd_pipeline *p, struct tensor *x, int64_t t, struct tensor *context,
                               double guidance);
/* one guided DDIM step from x at timestep t (scheduler timesteps must be set); noise may be
 * NULL (eta = 0, or drawn from the engine's RNG) */
struct tensor *sd_pipeline_step(struct sd_pipeline *p, struct tensor *x, int64_t t, struct tensor *context,
                                double guidance, double eta, struct tensor *noise);
/* latents [n, 4, h, w] -> images [n, 3, 8h, 8w] in [-1, 1]: vae.decode(latents / scaling) */
struct tensor *sd_pipeline_decode(struct sd_pipeline *p, struct tensor *latents);

/* The whole text-to-image path: sd_ddim_set_timesteps(steps), every step guided, decoded.
 * When after_step is non-NULL, the latents after step i are kept there (new references;
 * array of `steps` slots). Returns the images. */
struct sd_sample_opts {
    int steps;
    double guidance;
    double eta;
};
struct tensor *sd_pipeline_sample(struct sd_pipeline *p, struct tensor *init_latents, struct tensor *context,
                                  const struct sd_sample_opts *o, struct tensor **after_step);

#ifdef __cplusplus
}
#endif

#endif
