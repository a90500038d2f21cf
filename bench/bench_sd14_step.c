/* bench_sd14_step.c — memory and time of one DRaFT training step of the real Stable Diffusion
 * 1.4 architecture on the CPU, with random weights (no checkpoint download needed): the basis
 * of the memory figures in docs/tutorial.md. A program, not a test.
 *
 * Built from the configs in <shared>/parity/sd14: the UNet (unet.config.json, 860M
 * parameters), the VAE (vae.config.json) and the DDIM scheduler (scheduler_config.json), put
 * into a struct sd_pipeline by hand. There is no tokenizer or text encoder: the guidance
 * context [uncond; cond] is random N(0, 1) of shape [2B, 77, 768], as the text encoder's output
 * would be. Weights get the PyTorch-style default initialisation (nn_params_init_default:
 * U(+-1/sqrt(fan_in)), norms 1/0), which keeps every activation finite; the run fails if the
 * reward is not. A LoRA (rank 8, alpha 8, on to_q/to_k/to_v/to_out.0, as draft/run.c) with its
 * AdamW optimizer is the only trainable state.
 *
 * The step is exactly draft/run.c's: draft_objective_backward (sampler loop, differentiable
 * part, decode, reward, backward into the LoRA) and then nn_adamw_step. Measured with the
 * allocator's statistics (tensor/alloc.h): the bytes live before the step (base weights,
 * LoRA, AdamW moments, inputs), the peak live bytes during it, the difference (activations,
 * checkpoint inputs, gradients and workspace), the bytes live when the reward is called (what
 * the forward keeps for the backward); wall time until the reward is called (sampler loop,
 * differentiable steps and decode), of the reward, of the backward (+ optimizer) and of the
 * whole step; and the process's peak RSS (getrusage), which also counts the allocator's cache.
 *
 * Rewards: colorfulness by default (--reward takes any draft_reward_create spec), or
 * --reward-vit: the LAION aesthetic predictor's architecture — the CLIP ViT-L/14 vision tower of
 * sd14/image_encoder.config.json (CLIPVisionModelWithProjection, 304M parameters, 768-d
 * projection) and the MLP head 768-1024-128-64-16-1 — with random weights, scored as
 * draft/reward.c's aesthetic reward does (CLIP preprocessing, L2 normalisation, head).
 *
 * Run from the repository root (the shared folder defaults to ../shared):
 *   OMP_NUM_THREADS=2 build/bench/bench_sd14_step --size 512 --steps 2 --method lv
 * Prints the measurements, then one line:
 *   sd14_step: method=lv B=1 size=512 T=2 dtype=f32 weights=... peak=... act=... seconds=... */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "diffusion/lora.h"
#include "diffusion/pipeline.h"
#include "draft/reward.h"
#include "draft/train.h"
#include "nn/optim.h"
#include "draft/run.h"
#include "tensor/alloc.h"
#ifdef TENSOR_HAVE_CUDA
#include "tensor/cuda/cuda.h"
#endif

#define PROG "bench_sd14_step"

/* where the models live (--device); the memory figures are this device's allocator's */
static enum device g_dev = DEVICE_CPU;

/* the host clock says nothing about queued GPU work: every time stamp waits for the device */
static double sync_now_s(void);

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double sync_now_s(void)
{
#ifdef TENSOR_HAVE_CUDA
    if (g_dev == DEVICE_CUDA) cuda_synchronize();
#endif
    return now_s();
}

/* mem_format without the space, so a key=value line stays one token per field */
static const char *bytes_str(int64_t b, char *buf, size_t n)
{
    char t[32];
    mem_format(b, t, sizeof t);
    size_t j = 0;
    for (size_t i = 0; t[i] && j + 1 < n; i++)
        if (t[i] != ' ') buf[j++] = t[i];
    buf[j] = 0;
    return buf;
}

static int64_t live_bytes(void)
{
    struct mem_stats m;
    mem_get_stats(g_dev, &m);
    return m.live_bytes;
}

static int64_t peak_rss_bytes(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) ? -1 : (int64_t)ru.ru_maxrss * 1024;   /* Linux: KiB */
}

/* ---------------------------------------------------------------- options */

struct opts {
    const char *shared;
    enum draft_method method;
    int k, lv_n, steps, batch, size, lora_rank, threads, reps;
    enum dtype dtype;
    const char *reward;
    bool reward_vit, checkpoint, checkpoint_blocks;
    double guidance;
    uint64_t seed;
    enum device device;
    enum precision precision;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " [options]\n"
            "One DRaFT training step (objective + backward + AdamW) of the real SD 1.4 architecture\n"
            "with random weights on the CPU or GPU; reports weights, peak and activation memory and time.\n"
            "  --shared DIR      the shared folder: configs from DIR/parity/sd14 (default: $DRAFT_PARITY_DIR/sd14\n"
            "                    when that is set, else ../shared/parity/sd14: run from the repository root)\n"
            "  --method M        lv | k | full (also refl, alignprop, drtune); default lv\n"
            "  --lv-n N          LV: re-noised copies (default 2)\n"
            "  --k N             K: differentiable last steps (default 1)\n"
            "  --steps T         DDIM steps (default 2; LV's memory does not grow with T)\n"
            "  --batch B         images per step (default 1)\n"
            "  --size PX         image side, a multiple of 64 (default 512: 64x64 latents)\n"
            "  --dtype D         base weights f32 | bf16 (default f32; LoRA and AdamW stay f32)\n"
            "  --guidance G      classifier-free guidance (default 7.5)\n"
            "  --lora-rank R     LoRA rank, alpha = R (default 8)\n"
            "  --no-checkpoint   keep every activation (default: each differentiable UNet call and\n"
            "                    VAE block is recomputed in the backward)\n"
            "  --no-checkpoint-blocks  recompute each call whole, without checkpointing its UNet resnets\n"
            "                    and transformers (draft-run --no-checkpoint-blocks)\n"
            "  --reward SPEC     a draft_reward_create spec (default colorfulness)\n"
            "  --reward-vit      the aesthetic reward's architecture: CLIP ViT-L/14 vision tower\n"
            "                    (parity/sd14/image_encoder.config.json) + MLP head, random weights\n"
            "  --device D        cpu | cuda (default cpu): where the models, the step and the memory\n"
            "                    figures are\n"
            "  --precision P     the GPU's matrix products: f32 (default), tf32 or bf16 (autocast)\n"
            "  --threads N       CPU threads (default: the engine's, i.e. OMP_NUM_THREADS)\n"
            "  --seed S          weights, context, latents and LV noise (default 0)\n"
            "  --reps N          N steps (default 1): the first is reported as seconds=, the median of\n"
            "                    the others as seconds_next= (warm: caches, allocator, GPU heuristics)\n"
            "  --help            this text\n"
            "Example (the figure docs/tutorial.md quotes):\n"
            "  OMP_NUM_THREADS=2 build/bench/" PROG " --size 512 --steps 2 --method lv\n");
}

static bool parse_int(const char *flag, const char *v, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, PROG ": %s wants an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, v);
        return false;
    }
    *out = (int)x;
    return true;
}

/* 0 ok, 1 --help, 2 error (message printed) */
static int parse_args(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){.method = DRAFT_LV, .k = 1, .lv_n = 2, .steps = 2, .batch = 1, .size = 512, .lora_rank = 8,
                       .threads = 0, .reps = 1, .dtype = DTYPE_F32, .reward = "colorfulness", .checkpoint = true,
                       .checkpoint_blocks = true,
                       .guidance = 7.5, .seed = 0, .device = DEVICE_CPU};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return 1;
        if (!strcmp(a, "--reward-vit")) { o->reward_vit = true; continue; }
        if (!strcmp(a, "--no-checkpoint")) { o->checkpoint = false; continue; }
        if (!strcmp(a, "--no-checkpoint-blocks")) { o->checkpoint_blocks = false; continue; }
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool known = !strcmp(a, "--shared") || !strcmp(a, "--method") || !strcmp(a, "--lv-n") || !strcmp(a, "--k") ||
                     !strcmp(a, "--steps") || !strcmp(a, "--batch") || !strcmp(a, "--size") ||
                     !strcmp(a, "--dtype") || !strcmp(a, "--guidance") || !strcmp(a, "--lora-rank") ||
                     !strcmp(a, "--reward") || !strcmp(a, "--threads") || !strcmp(a, "--seed") || !strcmp(a, "--device") ||
                     !strcmp(a, "--precision") || !strcmp(a, "--reps");
        if (!known) {
            fprintf(stderr, PROG ": unknown argument '%s' (see --help)\n", a);
            return 2;
        }
        if (!v) {
            fprintf(stderr, PROG ": %s needs a value (see --help)\n", a);
            return 2;
        }
        i++;
        bool ok = true;
        if (!strcmp(a, "--shared")) o->shared = v;
        else if (!strcmp(a, "--reward")) o->reward = v;
        else if (!strcmp(a, "--device")) {
            ok = draft_device_parse(v, &o->device);
            if (!ok) fprintf(stderr, PROG ": --device '%s': expected cpu or cuda\n", v);
        } else if (!strcmp(a, "--precision")) {
            ok = precision_parse(v, &o->precision);
            if (!ok) fprintf(stderr, PROG ": --precision '%s': expected f32, tf32 or bf16\n", v);
        } else if (!strcmp(a, "--method")) {
            ok = draft_method_parse(v, &o->method);
            if (!ok) fprintf(stderr, PROG ": --method '%s': expected lv, k, full, refl, alignprop or drtune\n", v);
        } else if (!strcmp(a, "--dtype")) {
            if (!strcmp(v, "f32") || !strcmp(v, "float32")) o->dtype = DTYPE_F32;
            else if (!strcmp(v, "bf16") || !strcmp(v, "bfloat16")) o->dtype = DTYPE_BF16;
            else {
                fprintf(stderr, PROG ": --dtype '%s': expected f32 or bf16\n", v);
                ok = false;
            }
        } else if (!strcmp(a, "--guidance")) {
            char *end;
            o->guidance = strtod(v, &end);
            ok = end != v && !*end && isfinite(o->guidance) && o->guidance >= 0;
            if (!ok) fprintf(stderr, PROG ": --guidance wants a number >= 0, got '%s'\n", v);
        } else if (!strcmp(a, "--seed")) {
            int s;
            ok = parse_int(a, v, 0, INT_MAX, &s);
            o->seed = (uint64_t)s;
        } else if (!strcmp(a, "--lv-n")) ok = parse_int(a, v, 1, 64, &o->lv_n);
        else if (!strcmp(a, "--k")) ok = parse_int(a, v, 1, 1000, &o->k);
        else if (!strcmp(a, "--steps")) ok = parse_int(a, v, 1, 1000, &o->steps);
        else if (!strcmp(a, "--batch")) ok = parse_int(a, v, 1, 64, &o->batch);
        else if (!strcmp(a, "--size")) ok = parse_int(a, v, 64, 4096, &o->size);
        else if (!strcmp(a, "--lora-rank")) ok = parse_int(a, v, 1, 1024, &o->lora_rank);
        else if (!strcmp(a, "--threads")) ok = parse_int(a, v, 1, 1024, &o->threads);
        else if (!strcmp(a, "--reps")) ok = parse_int(a, v, 1, 100, &o->reps);
        if (!ok) return 2;
    }
    /* SD 1.4: latents are size/8 and the UNet halves them 3 times */
    if (o->size % 64) {
        fprintf(stderr, PROG ": --size %d: SD 1.4 needs a multiple of 64 (latents size/8, halved 3 times by the UNet)\n",
                o->size);
        return 2;
    }
    if ((o->method == DRAFT_K || o->method == DRAFT_ALIGNPROP) && o->k > o->steps) {
        fprintf(stderr, PROG ": --k %d is more than --steps %d\n", o->k, o->steps);
        return 2;
    }
    return 0;
}

/* ---------------------------------------------------------------- aesthetic-architecture reward */

#define HEAD_LAYERS 5
static const int64_t head_width[HEAD_LAYERS + 1] = {768, 1024, 128, 64, 16, 1};   /* LAION's MLP */

struct vit_reward {
    struct draft_reward r;   /* first: the score callback gets this */
    struct nn_params ps;
    struct clip_vision_model vm;
    bool vm_init;
    struct nn_linear head[HEAD_LAYERS];
};

/* as draft/reward.c's aesthetic reward: CLIP preprocessing, image embedding, L2 norm, MLP head */
static struct tensor *vit_score(struct draft_reward *r, struct tensor *images, const char *const *prompts)
{
    (void)prompts;
    struct vit_reward *v = (struct vit_reward *)r;
    tensor_scope_begin();
    struct tensor *px = draft_clip_preprocess(images, v->vm.cfg.image_size);
    struct tensor *e = ag_normalize(clip_vision_forward(&v->vm, px), 1, 1e-12);
    for (int i = 0; i < HEAD_LAYERS; i++) e = nn_linear_forward(&v->head[i], e);
    return tensor_scope_return(e ? ag_reshape(e, 1, (int64_t[]){e->shape[0]}) : NULL);
}

static void vit_free(struct draft_reward *r)
{
    struct vit_reward *v = (struct vit_reward *)r;
    if (v->vm_init) clip_vision_free(&v->vm);
    nn_params_free(&v->ps);
    free(v);
}

static struct draft_reward *vit_reward_create(const char *config_path, enum dtype dt, uint64_t seed)
{
    struct clip_vision_config vc;
    if (clip_vision_config_load(&vc, config_path)) return NULL;
    if (vc.projection_dim != head_width[0]) {
        tensor_fail(STATUS_SHAPE, "%s: projection_dim %lld, the aesthetic head reads %lld", config_path,
                    (long long)vc.projection_dim, (long long)head_width[0]);
        return NULL;
    }
    struct vit_reward *v = calloc(1, sizeof *v);
    if (!v) {
        tensor_fail(STATUS_OOM, "out of host memory");
        return NULL;
    }
    snprintf(v->r.name, sizeof v->r.name, "vit-aesthetic");
    v->r.score = vit_score;
    v->r.free = vit_free;
    nn_params_init(&v->ps, dt, g_dev);
    enum status s = clip_vision_init(&v->vm, &vc, &v->ps, "");
    v->vm_init = true;
    for (int i = 0; i < HEAD_LAYERS && !s; i++) {
        char name[32];
        snprintf(name, sizeof name, "head.layers.%d", i);
        s = nn_linear_init(&v->head[i], &v->ps, name, head_width[i], head_width[i + 1], true);
    }
    if (!s) s = nn_params_init_default(&v->ps, seed);
    if (s) {
        vit_free(&v->r);
        return NULL;
    }
    nn_params_set_trainable(&v->ps, false);
    return &v->r;
}

/* ---------------------------------------------------------------- a probe around the reward */

/* the objective calls the reward once, right after the decode: that instant splits the step
 * into its forward (sampler loop, differentiable steps, decode) and the rest */
struct probe {
    struct draft_reward r;   /* first */
    struct draft_reward *inner;
    double t_in, t_out;             /* the first step's (cold: first use of every buffer) */
    double last_in, last_out;       /* the last step's (warm, with --reps 2 or more) */
    int64_t live_in;
    int calls;
};

static struct tensor *probe_score(struct draft_reward *r, struct tensor *images, const char *const *prompts)
{
    struct probe *p = (struct probe *)r;
    if (!p->calls++) {
        p->t_in = sync_now_s();
        p->live_in = live_bytes();
    }
    p->last_in = sync_now_s();
    struct tensor *s = draft_reward_score(p->inner, images, prompts);
    p->last_out = sync_now_s();
    if (p->calls == 1) p->t_out = p->last_out;
    return s;
}

/* ---------------------------------------------------------------- main */

static int fail(const char *what)
{
    fprintf(stderr, PROG ": %s: %s\n", what, tensor_error());
    return 1;
}

int main(int argc, char **argv)
{
    struct opts o;
    int pa = parse_args(argc, argv, &o);
    if (pa == 1) {
        usage(stdout);
        return 0;
    }
    if (pa) return 2;
    if (o.threads) tensor_set_num_threads(o.threads);
    if (draft_device_check(o.device)) return fail("--device");
    g_dev = o.device;
    tensor_set_precision(o.precision);

    char dir[1024], path[1200];
    const char *pe = getenv("DRAFT_PARITY_DIR");
    if (o.shared) snprintf(dir, sizeof dir, "%s/parity/sd14", o.shared);
    else if (pe && *pe) snprintf(dir, sizeof dir, "%s/sd14", pe);
    else snprintf(dir, sizeof dir, "../shared/parity/sd14");
    static const char *const needed[] = {"unet.config.json", "vae.config.json", "scheduler_config.json",
                                         "image_encoder.config.json"};
    for (int i = 0; i < (o.reward_vit ? 4 : 3); i++) {
        snprintf(path, sizeof path, "%s/%s", dir, needed[i]);
        if (access(path, R_OK)) {
            fprintf(stderr, PROG ": cannot read %s (give the shared folder with --shared DIR, or run from the "
                            "repository root next to ../shared)\n", path);
            return 1;
        }
    }

    struct draft_method_config cfg;
    draft_method_config_default(&cfg);
    cfg.method = o.method;
    cfg.steps = o.steps;
    cfg.k = o.k;
    cfg.lv_n = o.lv_n;
    cfg.guidance = o.guidance;
    cfg.eta = 0.0;
    cfg.checkpoint = o.checkpoint;
    cfg.checkpoint_blocks = o.checkpoint_blocks;
    if (o.method == DRAFT_REFL) cfg.refl_lo = 0, cfg.refl_hi = o.steps - 1;
    if (draft_method_config_check(&cfg)) return fail("method");

    const int64_t tensors0 = tensor_live_count(), storages0 = storage_live_count();
    char b1[32], b2[32], b3[32], b4[32], b5[32], b6[32];   /* one per value of a printf */
    printf("device %s, precision %s, threads %d, dtype %s, method %s, B %d, size %d, T %d, guidance %g, "
           "checkpoint %s%s, LoRA rank %d\n",
           device_name(g_dev), precision_name(o.precision), tensor_num_threads(), dtype_name(o.dtype),
           draft_method_name(o.method), o.batch, o.size, o.steps,
           o.guidance, o.checkpoint ? "on" : "off", o.checkpoint_blocks ? " (+ UNet blocks)" : "", o.lora_rank);

    /* ---- build: UNet, VAE, scheduler, reward; random weights */
    const double tb0 = now_s();
    const int64_t live0 = live_bytes();
    static struct sd_pipeline p;   /* the VAE's checkpoints keep pointers into it: it must not move */
    p.dtype = o.dtype;
    p.device = g_dev;
    snprintf(p.dir, sizeof p.dir, "%s", dir);
    nn_params_init(&p.text_params, o.dtype, g_dev);
    nn_params_init(&p.unet_params, o.dtype, g_dev);
    nn_params_init(&p.vae_params, o.dtype, g_dev);
    struct sd_lora lora = {0};
    struct nn_adamw opt = {0};
    struct draft_reward *reward = NULL;
    struct tensor *context = NULL, *latents = NULL;
    int rc = 1;
    int64_t unet_bytes = 0, vae_bytes = 0, reward_bytes = 0, lora_bytes = 0, adam_bytes = 0;

    /* the reward first: a bad --reward spec fails before the long build */
    if (o.reward_vit) {
        snprintf(path, sizeof path, "%s/image_encoder.config.json", dir);
        reward = vit_reward_create(path, o.dtype, o.seed + 3);
    } else {
        reward = draft_reward_create_on(o.reward, o.dtype, g_dev);
    }
    if (!reward) {
        fail(o.reward_vit ? path : "--reward");
        goto done;
    }
    reward_bytes = live_bytes() - live0;
    const int64_t reward_params = o.reward_vit ? nn_params_count(&((struct vit_reward *)reward)->ps) : 0;
    snprintf(path, sizeof path, "%s/unet.config.json", dir);
    if (sd_unet_init_file(&p.unet, path, &p.unet_params) || nn_params_init_default(&p.unet_params, o.seed + 1)) {
        fail(path);
        goto done;
    }
    unet_bytes = live_bytes() - live0 - reward_bytes;
    snprintf(path, sizeof path, "%s/vae.config.json", dir);
    if (sd_vae_init(&p.vae, path, &p.vae_params) || nn_params_init_default(&p.vae_params, o.seed + 2)) {
        fail(path);
        goto done;
    }
    vae_bytes = live_bytes() - live0 - reward_bytes - unet_bytes;
    snprintf(path, sizeof path, "%s/scheduler_config.json", dir);
    if (sd_ddim_init_file(&p.scheduler, path)) {
        fail(path);
        goto done;
    }
    nn_params_set_trainable(&p.unet_params, false);
    nn_params_set_trainable(&p.vae_params, false);
    const int64_t latent = sd_pipeline_latent_size(&p, o.size);
    if (latent % ((int64_t)1 << p.unet.n_samplers)) {
        fprintf(stderr, PROG ": --size %d gives %lld-pixel latents, not a multiple of %d\n", o.size, (long long)latent,
                1 << p.unet.n_samplers);
        goto done;
    }

    /* ---- trainable state: LoRA + AdamW, as draft/run.c */
    int64_t before = live_bytes();
    if (sd_lora_init(&lora, &p.unet, o.lora_rank, o.lora_rank, NULL, DTYPE_F32, o.seed + 4) ||
        sd_lora_attach(&lora, &p.unet, 1.0)) {
        fail("LoRA");
        goto done;
    }
    lora_bytes = live_bytes() - before;
    before = live_bytes();
    struct nn_adamw_config oc = nn_adamw_config_default();
    if (nn_adamw_init(&opt, &oc, &lora.params)) {
        fail("AdamW");
        goto done;
    }
    adam_bytes = live_bytes() - before;

    /* ---- inputs: the text encoder's output shape [2B, 77, 768], N(0, 1) latents */
    ag_rng_set(o.seed, 0);
    const enum dtype cdt = sd_pipeline_dtype(&p);
    context = ag_randn(cdt, 3, (int64_t[]){2 * o.batch, 77, p.unet.cross_attention_dim}, g_dev);
    latents = ag_randn(cdt, 4, (int64_t[]){o.batch, p.unet.in_channels, latent, latent}, g_dev);
    if (!context || !latents) {
        fail("inputs");
        goto done;
    }
    const double build_s = now_s() - tb0;
    /* allocated bytes are the allocator's size classes (up to 25% above the tensors' own bytes) */
    const int64_t esz = o.dtype == DTYPE_F32 ? 4 : 2;
    printf("build %.1fs; parameters (tensor bytes / allocated bytes):\n", build_s);
    printf("  UNet %lld (%s / %s), VAE %lld (%s / %s), reward %s %lld (%s)\n",
           (long long)nn_params_count(&p.unet_params), bytes_str(esz * nn_params_count(&p.unet_params), b1, sizeof b1),
           bytes_str(unet_bytes, b2, sizeof b2), (long long)nn_params_count(&p.vae_params),
           bytes_str(esz * nn_params_count(&p.vae_params), b3, sizeof b3), bytes_str(vae_bytes, b4, sizeof b4),
           reward->name, (long long)reward_params, bytes_str(reward_bytes, b5, sizeof b5));
    printf("  LoRA %lld in %d modules (%s / %s), AdamW moments (%s)\n", (long long)nn_params_count(&lora.params),
           lora.n, bytes_str(4 * nn_params_count(&lora.params), b1, sizeof b1), bytes_str(lora_bytes, b2, sizeof b2),
           bytes_str(adam_bytes, b3, sizeof b3));

    /* ---- the step */
    struct probe probe = {.inner = reward};
    snprintf(probe.r.name, sizeof probe.r.name, "%s", reward->name);
    probe.r.score = probe_score;
    const int64_t weights = live_bytes();
    mem_reset_peak(g_dev);
    double J = NAN, gnorm = NAN;
    bool updated = false;
    const double t0 = sync_now_s();
    if (draft_objective_backward(&p, &cfg, &probe.r, latents, context, NULL, -1, NULL, 1.0, &J, NULL)) {
        fail("draft_objective_backward");
        goto done;
    }
    const double t_bwd = sync_now_s();
    if (nn_adamw_step(&opt, &updated, &gnorm)) {
        fail("AdamW step");
        goto done;
    }
    const double t1 = sync_now_s();
    /* --reps: more steps, each timed whole (the probe keeps the first one's split and the last one's reward time) */
    double next[100];
    int n_next = 0;
    for (int r = 1; r < o.reps && isfinite(J); r++) {
        const double ta = sync_now_s();
        if (draft_objective_backward(&p, &cfg, &probe.r, latents, context, NULL, -1, NULL, 1.0, &J, NULL) ||
            nn_adamw_step(&opt, &updated, &gnorm)) {
            fail("a further step");
            goto done;
        }
        next[n_next++] = sync_now_s() - ta;
    }
    for (int i = 1; i < n_next; i++)   /* insertion sort: the median below */
        for (int j = i; j > 0 && next[j] < next[j - 1]; j--) {
            const double tmp = next[j];
            next[j] = next[j - 1];
            next[j - 1] = tmp;
        }
    struct mem_stats ms;
    mem_get_stats(g_dev, &ms);
    if (!isfinite(J) || !isfinite(gnorm) || !updated || probe.calls != o.reps) {
        fprintf(stderr, PROG ": the step is not sound: reward %g, grad norm %g, updated %d, reward calls %d\n", J, gnorm,
                updated, probe.calls);
        goto done;
    }
    const double step_s = t1 - t0, sample_s = probe.t_in - t0, reward_s = probe.t_out - probe.t_in;
    const double backward_s = t1 - probe.t_out;
    const int64_t act = ms.peak_bytes - weights;
    printf("reward %s = %.6g, LoRA grad norm %.4g\n", reward->name, J, gnorm);
    printf("memory: live before the step %s (weights, LoRA, AdamW, inputs); peak %s; peak - live %s; "
           "live at the reward %s; allocator reserved %s; peak RSS %s\n",
           bytes_str(weights, b1, sizeof b1), bytes_str(ms.peak_bytes, b2, sizeof b2), bytes_str(act, b3, sizeof b3),
           bytes_str(probe.live_in, b4, sizeof b4), bytes_str(ms.reserved_bytes, b5, sizeof b5),
           bytes_str(peak_rss_bytes(), b6, sizeof b6));
    printf("time: forward to the reward (sampler loop + differentiable steps + decode) %.2fs, reward %.2fs, "
           "backward + AdamW %.2fs (AdamW %.3fs), step %.2fs\n",
           sample_s, reward_s, backward_s, t1 - t_bwd, step_s);
    char w[32], pk[32], ac[32], rs[32], nx[48] = "";
    if (n_next) {
        snprintf(nx, sizeof nx, " seconds_next=%.2f",
                 n_next % 2 ? next[n_next / 2] : 0.5 * (next[n_next / 2 - 1] + next[n_next / 2]));
        printf("time of steps 2..%d: median %s s; the last step's reward %.2fs\n", o.reps, nx + 14,
               probe.last_out - probe.last_in);
    }
    printf("sd14_step: device=%s precision=%s method=%s B=%d size=%d T=%d dtype=%s weights=%s peak=%s act=%s "
           "seconds=%.2f%s sample_s=%.2f "
           "rss=%s reward=%s\n",
           device_name(g_dev), precision_name(o.precision), draft_method_name(o.method), o.batch, o.size, o.steps,
           dtype_name(o.dtype), bytes_str(weights, w, sizeof w),
           bytes_str(ms.peak_bytes, pk, sizeof pk), bytes_str(act, ac, sizeof ac), step_s, nx, sample_s,
           bytes_str(peak_rss_bytes(), rs, sizeof rs), reward->name);
    rc = 0;

done:
    tensor_free(context);
    tensor_free(latents);
    nn_adamw_free(&opt);
    sd_lora_detach(&p.unet);
    sd_lora_free(&lora);
    draft_reward_free(reward);
    sd_pipeline_free(&p);
    if (tensor_live_count() != tensors0 || storage_live_count() != storages0) {
        fprintf(stderr, PROG ": leaked %lld tensors, %lld storages\n", (long long)(tensor_live_count() - tensors0),
                (long long)(storage_live_count() - storages0));
        rc = 1;
    }
    return rc;
}
