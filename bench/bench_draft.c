/* bench_draft.c — the engine side of bench/torch_draft.py: the tiny parity model's UNet
 * (forward; forward+backward into every parameter and both float inputs) and one DRaFT step
 * (LV n=2, K=1, K=10, full), timed and measured the same way as the PyTorch + diffusers side.
 *
 * Inputs come from the parity golden files so both sides see the same numbers: the UNet cases
 * use golden/unet.safetensors (sample, timestep, encoder_hidden_states, loss_weights R; the
 * loss is sum(out * R)); the DRaFT cases use golden/unet's encoder_hidden_states [4,77,32] as
 * the guidance context [uncond; cond] of batch 2 and the top-left (size/8)^2 corner of
 * golden/draft's init_latents and lv_noise. LoRA rank 4, alpha 4 (alpha/r = 1), scale 1, on
 * to_q/to_k/to_v/to_out.0, B = 0; reward = mean of the decoded images; every differentiable UNet
 * call and each VAE block is a checkpoint segment (draft_method_config.checkpoint).
 *
 * Memory: the first step of the process is measured twice: the peak RSS increase (Linux
 * /proc/self/clear_refs "5" resets VmHWM just before; VmHWM after - VmRSS before), which is
 * what the torch side reports, and the allocator's peak live bytes above those live at the
 * start (mem_reset_peak / mem_get_stats). Then warm-up and --reps timed steps (median); with
 * --reps 0 only the measured first step runs and its time is reported.
 *
 * Prints: RESULT <case> <median ms> <peak RSS MiB> <reward> <allocator peak MiB>
 * usage: bench_draft --case unet_fwd|unet_fwdbwd|lv|k1|k10|full [--threads N] [--reps N]
 *        [--warmup N] [--steps T] [--size PX] [--model DIR] [--parity DIR] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "diffusion/lora.h"
#include "diffusion/pipeline.h"
#include "draft/train.h"
#include "nn/safetensors.h"
#include "tensor/alloc.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

static long rss_kib(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = 0;
    const size_t n = strlen(field);
    if (!f) return 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':') { v = atol(line + n + 1); break; }
    fclose(f);
    return v;
}

static int reset_peak_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return 0;
    int ok = fputs("5", f) >= 0;
    return (fclose(f) == 0) && ok;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* reward = mean over channels and pixels of each image (the trainer takes the batch mean) */
static struct tensor *mean_score(struct draft_reward *r, struct tensor *images, const char *const *prompts)
{
    (void)r, (void)prompts;
    int dims[3] = {1, 2, 3};
    return ag_mean(images, 3, dims, false);
}

struct bench {
    const char *name;
    struct sd_pipeline p;
    struct sd_lora lora;
    struct draft_reward reward;
    struct draft_method_config cfg;
    struct tensor *x, *t, *ctx, *R;    /* UNet cases */
    struct tensor *init, *lv_noise;    /* DRaFT cases */
    double J;
};

static void die(const char *what)
{
    fprintf(stderr, "bench_draft: %s: %s\n", what, tensor_error());
    exit(1);
}

static void step(struct bench *b)
{
    if (!strcmp(b->name, "unet_fwd")) {
        ag_no_grad_begin();
        struct tensor *out = sd_unet_forward(&b->p.unet, b->x, b->t, b->ctx);
        ag_no_grad_end();
        if (!out) die("unet forward");
        tensor_free(out);
        b->J = NAN;
    } else if (!strcmp(b->name, "unet_fwdbwd")) {
        for (int i = 0; i < b->p.unet_params.n; i++) ag_zero_grad(b->p.unet_params.v[i].t);
        ag_zero_grad(b->x);
        ag_zero_grad(b->ctx);
        tensor_scope_begin();
        struct tensor *out = sd_unet_forward(&b->p.unet, b->x, b->t, b->ctx);
        if (!out || ag_backward(out, b->R, false)) die("unet forward+backward");
        tensor_scope_end();
        b->J = NAN;
    } else {
        for (int i = 0; i < b->lora.params.n; i++) ag_zero_grad(b->lora.params.v[i].t);
        if (draft_objective_backward(&b->p, &b->cfg, &b->reward, b->init, b->ctx, NULL, -1, b->lv_noise, 1.0, &b->J,
                                     NULL))
            die(b->name);
    }
}

int main(int argc, char **argv)
{
    const char *name = NULL, *model = "../shared/parity/tiny-sd", *parity = "../shared/parity";
    int threads = 2, reps = 5, warmup = 1, steps = 10, size = 64;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "bench_draft: %s needs a value\n", a); return 2; }
        if (!strcmp(a, "--case")) name = v;
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--reps")) reps = atoi(v);
        else if (!strcmp(a, "--warmup")) warmup = atoi(v);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--size")) size = atoi(v);
        else if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--parity")) parity = v;
        else { fprintf(stderr, "bench_draft: unknown argument %s (see the comment at the top of bench_draft.c)\n", a); return 2; }
        i++;
    }
    static const char *const cases[] = {"unet_fwd", "unet_fwdbwd", "lv", "k1", "k10", "full"};
    int known = 0;
    for (int i = 0; i < 6; i++) known |= name && !strcmp(name, cases[i]);
    if (!known || threads < 1 || reps < 0 || reps > 1000 || warmup < 1 || steps < 1 || size < 8 || size % 64) {
        fprintf(stderr, "usage: bench_draft --case unet_fwd|unet_fwdbwd|lv|k1|k10|full [--threads N>=1] [--reps 0..1000] "
                        "[--warmup N>=1] [--steps T] [--size PX, a multiple of 64] [--model DIR] [--parity DIR]\n");
        return 2;
    }
    tensor_set_num_threads(threads);
    printf("threads\t%d\n", tensor_num_threads());

    static struct bench b;
    b.name = name;
    if (sd_pipeline_load(&b.p, model, DTYPE_F32, DEVICE_CPU)) die(model);
    char path[1024];
    snprintf(path, sizeof path, "%s/golden/unet.safetensors", parity);
    struct safetensors *gu = safetensors_open(path);
    if (!gu) die(path);
    b.ctx = safetensors_load(gu, "encoder_hidden_states", DTYPE_F32, DEVICE_CPU);
    if (!b.ctx) die("encoder_hidden_states");
    const bool unet_case = !strncmp(name, "unet", 4);
    nn_params_set_trainable(&b.p.text_params, false);
    nn_params_set_trainable(&b.p.vae_params, false);
    nn_params_set_trainable(&b.p.unet_params, !strcmp(name, "unet_fwdbwd"));
    if (unet_case) {
        b.x = safetensors_load(gu, "sample", DTYPE_F32, DEVICE_CPU);
        b.t = safetensors_load(gu, "timestep", DTYPE_I64, DEVICE_CPU);
        b.R = safetensors_load(gu, "loss_weights", DTYPE_F32, DEVICE_CPU);
        if (!b.x || !b.t || !b.R) die(path);
        if (!strcmp(name, "unet_fwdbwd")) {
            ag_set_requires_grad(b.x, true);
            ag_set_requires_grad(b.ctx, true);
        }
    } else {
        snprintf(path, sizeof path, "%s/golden/draft.safetensors", parity);
        struct safetensors *gd = safetensors_open(path);
        if (!gd) die(path);
        const int64_t h = sd_pipeline_latent_size(&b.p, size);
        tensor_scope_begin();
        struct tensor *init = safetensors_load(gd, "init_latents", DTYPE_F32, DEVICE_CPU);
        struct tensor *noise = safetensors_load(gd, "lv_noise", DTYPE_F32, DEVICE_CPU);
        if (init && (h > init->shape[2] || h > init->shape[3]))
            die("--size: the golden init_latents are smaller than the latents asked for");
        b.init = tensor_keep(tensor_contiguous(ag_narrow(ag_narrow(init, 2, 0, h), 3, 0, h)));
        b.lv_noise = tensor_keep(tensor_contiguous(ag_narrow(ag_narrow(noise, 3, 0, h), 4, 0, h)));
        tensor_scope_end();
        safetensors_close(gd);
        if (!b.init || !b.lv_noise) die(path);
        if (sd_lora_init(&b.lora, &b.p.unet, 4, 4.0, NULL, DTYPE_F32, 1)) die("lora init");
        if (sd_lora_attach(&b.lora, &b.p.unet, 1.0)) die("lora attach");
        snprintf(b.reward.name, sizeof b.reward.name, "mean");
        b.reward.score = mean_score;
        draft_method_config_default(&b.cfg);
        b.cfg.steps = steps;
        b.cfg.guidance = 7.5;
        b.cfg.eta = 0.0;
        b.cfg.checkpoint = true;
        if (!strcmp(name, "lv")) b.cfg.method = DRAFT_LV, b.cfg.lv_n = 2;
        else if (!strcmp(name, "full")) b.cfg.method = DRAFT_FULL;
        else b.cfg.method = DRAFT_K, b.cfg.k = !strcmp(name, "k1") ? 1 : 10;
        if (draft_method_config_check(&b.cfg)) die("config");
    }
    safetensors_close(gu);

    /* the first step: peak RSS increase and allocator peak */
    struct mem_stats m0, m1;
    mem_get_stats(DEVICE_CPU, &m0);
    mem_reset_peak(DEVICE_CPU);
    const int reset_ok = reset_peak_rss();
    const long rss0 = rss_kib("VmRSS");
    const double first_t0 = now_ms();
    step(&b);
    const double first_ms = now_ms() - first_t0;
    const double rss_peak = reset_ok ? (double)(rss_kib("VmHWM") - rss0) / 1024.0 : NAN;
    mem_get_stats(DEVICE_CPU, &m1);
    const double alloc_peak = (double)(m1.peak_bytes - m0.live_bytes) / (1 << 20);
    const double J = b.J;
    for (int i = 1; i < warmup && reps > 0; i++) step(&b);
    double *ms = malloc((size_t)(reps > 0 ? reps : 1) * sizeof *ms);
    if (!ms) return 1;
    ms[0] = first_ms;   /* --reps 0: the measured first step is the only one (a memory run) */
    for (int i = 0; i < reps; i++) {
        double t0 = now_ms();
        step(&b);
        ms[i] = now_ms() - t0;
    }
    qsort(ms, (size_t)reps, sizeof *ms, cmp);
    printf("RESULT\t%s\t%.3f\t%.2f\t%.9g\t%.2f\n", name, ms[reps / 2], rss_peak, J, alloc_peak);
    free(ms);

    tensor_free(b.x);
    tensor_free(b.t);
    tensor_free(b.R);
    tensor_free(b.ctx);
    tensor_free(b.init);
    tensor_free(b.lv_noise);
    sd_lora_detach(&b.p.unet);
    sd_lora_free(&b.lora);
    sd_pipeline_free(&b.p);
    return 0;
}
