/* pretrain.h — pre-training the project's own small text-to-image model on the emoji dataset
 * (issue 7), in SD 1.4's architecture with a small config, stage by stage:
 *
 *   bpe   a BPE vocabulary learnt from the training captions (CLIP's file format)
 *   clip  a CLIP (text + vision towers, projections, logit_scale) trained contrastively with the
 *         symmetric InfoNCE loss; its text tower IS the pipeline's text encoder (as in SD)
 *   vae   an AutoencoderKL 32x32x3 <-> 4x16x16 (two levels), MSE reconstruction + kl_weight x KL;
 *         afterwards scaling_factor = 1 / std of the latents, as SD chose 0.18215
 *   unet  a UNet2DConditionModel on the scaled VAE latents with the DDPM loss, conditioned on the
 *         frozen text tower's last_hidden_state; cond_dropout of the captions become "" (for
 *         classifier-free guidance)
 *
 * Layout of a run folder <out>:
 *   <out>/model/            the diffusers folder being built: model_index.json, tokenizer/,
 *                           text_encoder/, vae/, unet/, scheduler/, and clip/ (a CLIPModel
 *                           folder for the clip reward: config.json, model.safetensors, vocab.json,
 *                           merges.txt). sd_pipeline_load reads it once the unet stage is done.
 *   <out>/ckpt-<stage>.safetensors   parameters + AdamW state, metadata "pretrain.step"; written
 *                           atomically every ckpt_every steps, at the end and on a stop request
 *   <out>/samples.png       the unet stage's sample grid (held-out captions and fixed prompts)
 *
 * Determinism: the batch indices, timesteps and caption dropout of step k are hashes of (seed,
 * stage, k), and the engine's generator is set to (seed', k << 24) before each step's draws, so a
 * resumed run gives the same bits as an uninterrupted one (same thread count).
 *
 * Errors go through tensor_fail(): functions return a non-zero status, read tensor_error(). */
#ifndef DRAFT_PRETRAIN_H
#define DRAFT_PRETRAIN_H

#include <stdbool.h>
#include <stdint.h>

#include "diffusion/clip.h"
#include "draft/dataset.h"

#define DRAFT_PRETRAIN_MAX_BLOCKS 4

enum draft_pretrain_stage { DRAFT_PT_BPE, DRAFT_PT_CLIP, DRAFT_PT_VAE, DRAFT_PT_UNET, DRAFT_PT_N_STAGES };
const char *draft_pretrain_stage_name(enum draft_pretrain_stage s);

struct draft_pretrain_opt {
    int steps, batch;
    double lr;
    int warmup;
};

struct draft_pretrain_config {
    const char *out_dir;     /* run folder (created) */
    uint64_t seed;
    int held_modulus;        /* draft_dataset_split modulus (held-out = 1 in held_modulus captions) */
    int ckpt_every;          /* steps between checkpoints (0: only at the end / on stop) */
    int eval_every;          /* steps between held-out evaluations (0: only at the end) */
    bool resume;             /* continue from <out>/ckpt-<stage>.safetensors when present */
    bool overfit;            /* every step uses the same first `batch` training items (tests) */
    int progress;            /* 0 quiet, 1 progress bar / lines on stderr */
    /* bpe */
    int vocab_size;
    /* clip: text tower (vocab_size and eos_token_id come from the tokenizer), vision tower */
    int64_t text_hidden, text_layers, text_heads, text_mlp;
    int64_t vision_hidden, vision_layers, vision_heads, vision_mlp, patch_size, projection_dim;
    /* vae */
    int vae_n_blocks;
    int64_t vae_channels[DRAFT_PRETRAIN_MAX_BLOCKS];
    int vae_layers, vae_groups, latent_channels;
    double kl_weight;
    /* unet */
    int unet_n_blocks;       /* the last block is a DownBlock2D / UpBlock2D, the others cross-attention */
    int64_t unet_channels[DRAFT_PRETRAIN_MAX_BLOCKS];
    int unet_layers, unet_heads, unet_groups;
    double cond_dropout;
    /* optimisation per stage */
    struct draft_pretrain_opt clip, vae, unet;
    /* samples written at the end of the unet stage (n_samples 0: none) */
    int n_samples, sample_steps;
    double guidance;
};

/* the defaults of the shipped model (see docs in the tool's --help) */
void draft_pretrain_config_default(struct draft_pretrain_config *c);
enum status draft_pretrain_config_check(const struct draft_pretrain_config *c);

struct draft_pretrain_stats {
    int steps_done;          /* steps run in this call (0 when the checkpoint was already complete) */
    int64_t step;            /* the stage's step count at the end */
    double first_loss;       /* the first step's loss of this call (NaN when none ran) */
    double last_loss;        /* mean loss of the last min(steps, 20) steps of this call */
    double eval_loss;        /* held-out loss at the end (NaN when there is no held-out item) */
    double sec_per_step;     /* mean wall time of a step in this call */
    int64_t n_params;        /* parameters trained by the stage */
    bool stopped;            /* a stop was requested: checkpoint written, stage not finished */
};

/* Each stage reads what the earlier stages wrote into <out>/model and writes its own part.
 * `d` is the loaded dataset; stats may be NULL. */
enum status draft_pretrain_bpe(const struct draft_pretrain_config *c, const struct draft_dataset *d);
enum status draft_pretrain_clip(const struct draft_pretrain_config *c, const struct draft_dataset *d,
                                struct draft_pretrain_stats *stats);
enum status draft_pretrain_vae(const struct draft_pretrain_config *c, const struct draft_dataset *d,
                               struct draft_pretrain_stats *stats);
/* also writes model_index.json, scheduler/ and (n_samples > 0) <out>/samples.png */
enum status draft_pretrain_unet(const struct draft_pretrain_config *c, const struct draft_dataset *d,
                                struct draft_pretrain_stats *stats);
/* sample grid from <out>/model for n prompts (held-out captions then fixed ones) to `png_path` */
enum status draft_pretrain_samples(const struct draft_pretrain_config *c, const struct draft_dataset *d,
                                   const char *png_path);

/* copies <out>/model (every component and clip/) into dest (created), the f32 weights stored
 * as dt (f32, f16 or bf16: the loaders convert back to the compute dtype); `command` (may be
 * NULL) is written to dest/PRETRAIN_COMMAND.txt so the weights can be reproduced */
enum status draft_pretrain_export(const char *out_dir, const char *dest, const char *command, enum dtype dt);

/* number of parameters of each component as configured (vocab_size as given; no training) */
struct draft_pretrain_sizes {
    int64_t text, vision, vae, unet;
};
enum status draft_pretrain_count(const struct draft_pretrain_config *c, int vocab_size, struct draft_pretrain_sizes *out);

/* ask a running stage to checkpoint and return (async-signal-safe) */
void draft_pretrain_request_stop(void);
void draft_pretrain_clear_stop(void);

#endif
