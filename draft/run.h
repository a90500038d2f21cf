/* run.h — a whole DRaFT training run, as `draft-run` drives it: model, LoRA, reward, prompts,
 * AdamW, the method's objective (train.h), evaluation on held-out seeds, metrics, sample grids,
 * atomic checkpoints with resume, and the final report.
 *
 * Determinism: every random draw of step i (which prompts, the initial latents, LV's noise,
 * the truncation point) comes from generators seeded by (seed, i), never from state carried
 * across steps, so a run resumed from the checkpoint of step i continues bit-identically on
 * the CPU: the checkpoint holds the LoRA, the optimiser's moments and step count, and i.
 *
 * Output folder:
 *   metrics.jsonl        one JSON object per step (and per evaluation)
 *   checkpoint.safetensors  LoRA + AdamW state + step (written atomically every save_every steps)
 *   before.png after.png    fixed-seed evaluation grids, samples/step_NNNNN.png in between
 *   lora.safetensors         the LoRA, diffusers/PEFT names (load_lora_weights reads it)
 *   lora_kohya.safetensors   the same in the kohya/A1111 names with .alpha
 *   report.html              reward curve (SVG), grids, settings, diversity
 */
#ifndef DRAFT_RUN_H
#define DRAFT_RUN_H

#include "draft/train.h"
#include "nn/optim.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

struct draft_run_config {
    char model[1024];      /* diffusers folder */
    char ckpt[1024];       /* original single-file weights ("" = the folder's own weights) */
    char reward[1024];     /* reward spec (reward.h) */
    char eval_reward[1024];   /* a second reward scored on the held-out samples only ("" = none): what the
                               * training reward does to another measure (reward hacking shows there) */
    char prompts[1024];    /* prompt file, one a line; or "@animals", "@emoji" built-in sets */
    char diversity_model[1024];   /* a reward spec with an image tower ("clip": the model folder's clip/) whose
                                   * embeddings measure the held-out samples' diversity too ("" = none) */
    char eval_prompts[1024];   /* the held-out evaluation's prompts, the same forms ("" = the training prompts) */
    char negative_prompt[1024];   /* the unconditional half of classifier-free guidance, in training and
                                   * evaluation ("" = the empty prompt, as diffusers without negative_prompt) */
    int clip_skip;         /* diffusers' clip_skip: text encoder layers left out of the prompt embeddings */
    char keep_best[16];    /* "reward" or "eval-reward": <out>/lora_best.safetensors holds the LoRA of the
                            * held-out evaluation where that was highest ("" = off) */
    char out[1024];        /* run folder */
    enum dtype dtype;      /* the frozen base weights' dtype (LoRA and optimiser stay f32) */
    enum device device;    /* where the model, LoRA, optimiser state and reward run (DEVICE_CPU) */
    enum precision precision;   /* the GPU's matrix products (tensor.h): f32 (default), tf32, bf16 */
    struct draft_method_config method;
    int lora_rank;
    double lora_alpha;
    char lora_targets[256];   /* comma-separated suffixes of the UNet projections that get a LoRA */
    char init_lora[1024];  /* start from this LoRA file (diffusers/PEFT or kohya names): its rank, alpha and
                            * projections replace lora_rank/alpha/targets; the optimiser starts fresh ("" = a
                            * new LoRA, B = 0) */
    struct nn_adamw_config opt;
    int batch;             /* images per micro-batch */
    int iters;             /* optimiser steps */
    uint64_t seed;
    int image_width, image_height;   /* pixels; 0 = the model's default (the VAE's sample_size) */
    int eval_images;       /* held-out seeds evaluated before, during and after training */
    int eval_every;        /* 0 = only before and after */
    int save_every;        /* checkpoint period in steps; 0 = only at the end */
    int lora_every;        /* also keep the LoRA of every N-th step, <out>/loras/step_NNNNN.safetensors (0 = off) */
    double max_minutes;    /* end training once this much wall time has passed (0 = no limit): checkpoint, then
                            * the final evaluation, LoRA files and report as after the last step */
    int skip_nonfinite;    /* a step whose gradient is not finite makes no update and the run goes on, up to
                            * this many in a row; then it stops as on any error (0: at the first) */
    bool resume;           /* continue from out/checkpoint.safetensors */
    bool overwrite;        /* write into an out/ that holds an earlier run (else that is refused, so that a
                            * finished run's LoRA and metrics are not replaced by mistake) */
    bool dry_run;          /* measure one held-out evaluation and one optimiser step, project the whole run
                            * from them, and write nothing (not even out/) */
    bool progress;         /* a progress bar on stderr */
    int stop_after;        /* test hook: stop (as if killed, after saving) once this step is done; 0 = off */
    const char *config_json;   /* written to <out>/config.json (and a newline) once the config is checked
                                * (NULL: none); draft-run's every option, which its --config reads back */
};
void draft_run_config_default(struct draft_run_config *c);

/* the result of a run */
struct draft_run_result {
    double reward_before, reward_after;
    double diversity_before, diversity_after;
    double clip_diversity_before, clip_diversity_after;   /* NaN without diversity_model */
    double best;           /* with keep_best: the highest held-out value and its step (-1 without) */
    int best_step;
    double eval_reward_before, eval_reward_after;   /* NaN without eval_reward */
    int n_terms;           /* a sum reward's terms (draft_reward_terms), unweighted, else 0 */
    double terms_before[DRAFT_REWARD_MAX_TERMS], terms_after[DRAFT_REWARD_MAX_TERMS];
    int steps;             /* optimiser steps completed (including resumed ones) */
    double seconds;        /* wall time of this invocation */
    bool interrupted;      /* Ctrl-C or stop_after: checkpoint saved, no final evaluation */
    /* with dry_run: what the measurements gave (bytes: the allocator's, on the run's device) */
    int64_t resident_bytes;   /* live before the first evaluation: weights, LoRA, held-out latents */
    double eval_seconds, step_seconds;
    int64_t eval_peak_bytes, step_peak_bytes;
    double projected_seconds;   /* loading, the run's steps and evaluations (saving and the report aside) */
    int64_t available_bytes;    /* the device's free memory plus what the allocator holds (-1: unknown) */
    int fit_batch;              /* the micro-batch that would about fill that (linear in the batch; 0: unknown) */
};

enum status draft_run(const struct draft_run_config *c, struct draft_run_result *res);

/* "draft 0.1.0 (git <describe>)": the project's version and the commit of the build's source */
const char *draft_version(void);
/* "<draft_version()>; cpu: <...>[; cuda: <...>]": the version and each backend in use
 * (tensor_backend_describe; the GPU with dev = DEVICE_CUDA) into buf, which is returned */
const char *draft_engine_describe(enum device dev, char *buf, size_t n);
/* The two flags every tool answers alike and then exits 0: --version (draft_engine_describe with
 * the GPU, where there is one) and --help / -h (usage). True when a is one of them, printed on stdout. */
bool draft_tool_info_flag(const char *a, void (*usage)(FILE *));

/* A reward spec beside a model folder: "clip", "clip:text=<words>" and "classify:text=<classes>"
 * name the folder's own CLIP (<model>/clip, which the embedded model has), written into buf; any
 * other spec is returned as is. */
const char *draft_reward_spec_for_model(const char *spec, const char *model, char *buf, size_t n);

/* built-in prompt sets: "@animals" (the 45 simple animals of the DDPO/DRaFT aesthetic
 * benchmark, "a photo of a <animal>") and "@emoji" (captions for the embedded model). A file
 * path reads one prompt a line (blank lines and lines starting with '#' skipped). */
enum status draft_prompts_load(const char *spec, char ***prompts, int *n);
void draft_prompts_free(char **prompts, int n);

/* The embedded emoji model (models/emoji in the source tree, trained by draft-pretrain; see
 * models/emoji/PRETRAIN_COMMAND): the first of $DRAFT_EMBEDDED_MODEL, <source>/models/emoji
 * (fixed at build time) and ./models/emoji that holds a model_index.json. Copies the folder's
 * path into dir; fails with the places tried when none exists. */
enum status draft_embedded_model(char *dir, size_t n);

/* STATUS_OK when tensors can live on dev: the CPU always; CUDA when this build has the backend
 * and a device answers (the check tests/test_cuda.c skips on). Otherwise STATUS_DEVICE with a
 * message saying why (built without CUDA, no driver, no device). Initialises the CUDA driver:
 * call it in the process that will use the device (a forked child cannot use a driver its
 * parent initialised). */
enum status draft_device_check(enum device dev);
/* "cpu" / "cuda" -> *dev; false if neither */
bool draft_device_parse(const char *s, enum device *dev);

/* an image size: "512" (square) or "768x512" (width x height, as diffusers' width/height), each
 * a positive integer up to 65536; false if the text is neither */
bool draft_size_parse(const char *s, int *width, int *height);

/* a --lora argument FILE[:S] or FILE:S1,S2,... (draft-sample's sweep) -> path (n bytes) and the
 * scales (room for max): what follows the last ':' when every comma-separated item reads as a
 * number (else the ':' is part of the path, and the scale is 1). A draft-run folder stands for its
 * lora.safetensors (draft_lora_file). Returns the count of scales; 0 if the path does not fit, -1
 * for more than max values, -2 when the text after ':' is not a list of finite numbers and the
 * path before it exists but the whole does not (a mistyped scale, "run:0,5x") */
int draft_lora_arg_parse_list(const char *arg, char *path, size_t n, double *scales, int max);
/* a LoRA argument that names a draft-run folder means its lora.safetensors: that path into buf
 * (returned); any other path is returned as it is */
const char *draft_lora_file(const char *path, char *buf, size_t n);

/* ask a running draft_run to save and stop after the current step (async-signal-safe) */
void draft_run_request_stop(void);

#ifdef __cplusplus
}
#endif

#endif
