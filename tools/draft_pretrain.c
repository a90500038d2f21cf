/* draft-pretrain — trains the project's own small text-to-image model (draft/pretrain.h) on the
 * emoji dataset: BPE, CLIP, VAE, UNet; checkpoints, --resume, Ctrl-C saves; --export writes the
 * diffusers folder (plus clip/ for the clip reward). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "draft/dataset.h"
#include "draft/pretrain.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: draft-pretrain [options]\n"
            "  --data PATH        dataset (default data/emoji-32.bin; built with the emoji-data defaults if missing)\n"
            "  --out DIR          run folder (default runs/pretrain): model/, checkpoints, samples.png\n"
            "  --stage S          bpe | clip | vae | unet | all | none (default all; each stage reads the earlier ones' output; none: only --export)\n"
            "  --steps-clip N --steps-vae N --steps-unet N     training steps per stage\n"
            "  --batch-clip N --batch-vae N --batch-unet N     batch sizes\n"
            "  --lr-clip X --lr-vae X --lr-unet X              AdamW learning rates\n"
            "  --unet-channels a,b,c  UNet block widths (default 64,128,192; last block without attention)\n"
            "  --unet-layers N    UNet layers per block (default 1)\n"
            "  --vae-channels a,b VAE block widths (default 32,64: two levels, 32x32 -> 16x16 latents)\n"
            "  --patch N          CLIP vision patch size (default 4)\n"
            "  --seed S           (default 1)\n"
            "  --ckpt-every N     steps between checkpoints (default 200)\n"
            "  --eval-every N     steps between held-out evaluations (default: at the end only)\n"
            "  --samples N        sample grid size after the unet stage (default 16, 0 = none)\n"
            "  --sample-steps N   DDIM steps of the samples (default 30); --guidance G (default 5)\n"
            "  --resume           continue each stage from <out>/ckpt-<stage>.safetensors\n"
            "  --export DIR       afterwards copy the diffusers folder (+ clip/) to DIR\n"
            "  --export-dtype D   f16 (default), bf16 or f32: how the exported weights are stored\n"
            "  --sizes            print the parameter counts of the configured model and exit\n"
            "  --quiet            no progress output\n");
}

/* Ctrl-C or SIGTERM (a scheduler's notice): a checkpoint, then stop; the same signal again ends at once */
static volatile sig_atomic_t stop_signal;
static void on_stop_signal(int sig)
{
    stop_signal = sig;
    draft_pretrain_request_stop();
    signal(sig, SIG_DFL);
}

static bool parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

/* "a,b,c" -> up to max positive integers */
static int parse_list(const char *s, int64_t *out, int max)
{
    int n = 0;
    while (*s && n < max) {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (end == s || v < 1 || v > 4096) return -1;
        out[n++] = v;
        if (!*end) return n;
        if (*end != ',') return -1;
        s = end + 1;
    }
    return *s ? -1 : n;
}

static bool parse_pos(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || !(v > 0) || v > 1e3) return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    struct draft_pretrain_config c;
    draft_pretrain_config_default(&c);
    const char *data = "data/emoji-32.bin", *stage = "all", *export_dir = NULL;
    enum dtype export_dt = DTYPE_F16;   /* half the size in git; loaded back as f32 */
    bool sizes = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--resume")) { c.resume = true; continue; }
        if (!strcmp(a, "--quiet")) { c.progress = 0; continue; }
        if (!strcmp(a, "--sizes")) { sizes = true; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "draft-pretrain: unknown or incomplete argument %s\n", a);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        bool ok = true;
        unsigned long long seed;
        char *end;
        if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--out")) c.out_dir = v;
        else if (!strcmp(a, "--stage")) stage = v;
        else if (!strcmp(a, "--export")) export_dir = v;
        else if (!strcmp(a, "--export-dtype")) {
            if (!strcmp(v, "f16")) export_dt = DTYPE_F16;
            else if (!strcmp(v, "bf16")) export_dt = DTYPE_BF16;
            else if (!strcmp(v, "f32")) export_dt = DTYPE_F32;
            else {
                fprintf(stderr, "draft-pretrain: --export-dtype is f16, bf16 or f32, got '%s'\n", v);
                return 2;
            }
        }
        else if (!strcmp(a, "--steps-clip")) ok = parse_int(v, 0, 100000000, &c.clip.steps);
        else if (!strcmp(a, "--steps-vae")) ok = parse_int(v, 0, 100000000, &c.vae.steps);
        else if (!strcmp(a, "--steps-unet")) ok = parse_int(v, 0, 100000000, &c.unet.steps);
        else if (!strcmp(a, "--batch-clip")) ok = parse_int(v, 2, 4096, &c.clip.batch);
        else if (!strcmp(a, "--batch-vae")) ok = parse_int(v, 1, 4096, &c.vae.batch);
        else if (!strcmp(a, "--batch-unet")) ok = parse_int(v, 1, 4096, &c.unet.batch);
        else if (!strcmp(a, "--lr-clip")) ok = parse_pos(v, &c.clip.lr);
        else if (!strcmp(a, "--lr-vae")) ok = parse_pos(v, &c.vae.lr);
        else if (!strcmp(a, "--lr-unet")) ok = parse_pos(v, &c.unet.lr);
        else if (!strcmp(a, "--unet-channels")) ok = (c.unet_n_blocks = parse_list(v, c.unet_channels, DRAFT_PRETRAIN_MAX_BLOCKS)) >= 2;
        else if (!strcmp(a, "--vae-channels")) ok = (c.vae_n_blocks = parse_list(v, c.vae_channels, DRAFT_PRETRAIN_MAX_BLOCKS)) >= 1;
        else if (!strcmp(a, "--unet-layers")) ok = parse_int(v, 1, 4, &c.unet_layers);
        else if (!strcmp(a, "--patch")) {
            int ps;
            ok = parse_int(v, 1, 32, &ps);
            c.patch_size = ps;
        } else if (!strcmp(a, "--ckpt-every")) ok = parse_int(v, 0, 100000000, &c.ckpt_every);
        else if (!strcmp(a, "--eval-every")) ok = parse_int(v, 0, 100000000, &c.eval_every);
        else if (!strcmp(a, "--samples")) ok = parse_int(v, 0, 64, &c.n_samples);
        else if (!strcmp(a, "--sample-steps")) ok = parse_int(v, 1, 1000, &c.sample_steps);
        else if (!strcmp(a, "--guidance")) ok = parse_pos(v, &c.guidance);
        else if (!strcmp(a, "--seed")) {
            seed = strtoull(v, &end, 10);
            ok = *v && !*end && v[0] != '-';
            c.seed = seed;
        } else {
            fprintf(stderr, "draft-pretrain: unknown argument %s\n", a);
            usage(stderr);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "draft-pretrain: %s %s: not a valid value\n", a, v);
            return 2;
        }
    }
    int first, last;
    if (!strcmp(stage, "all")) first = DRAFT_PT_BPE, last = DRAFT_PT_UNET;
    else if (!strcmp(stage, "none")) first = 0, last = -1;   /* only --export */
    else {
        first = -1;
        for (int s = 0; s < DRAFT_PT_N_STAGES; s++)
            if (!strcmp(stage, draft_pretrain_stage_name(s))) first = s;
        if (first < 0) {
            fprintf(stderr, "draft-pretrain: --stage %s: expected bpe, clip, vae, unet, all or none\n", stage);
            return 2;
        }
        last = first;
    }
    if (draft_pretrain_config_check(&c)) {
        fprintf(stderr, "draft-pretrain: %s\n", tensor_error());
        return 2;
    }
    if (sizes) {
        struct draft_pretrain_sizes z;
        if (draft_pretrain_count(&c, c.vocab_size, &z)) {
            fprintf(stderr, "draft-pretrain: %s\n", tensor_error());
            return 1;
        }
        printf("text encoder %lld\nclip vision + projections %lld\nvae %lld\nunet %lld\ntotal %lld\n", (long long)z.text,
               (long long)z.vision, (long long)z.vae, (long long)z.unet, (long long)(z.text + z.vision + z.vae + z.unet));
        return 0;
    }
    struct draft_dataset d;
    struct stat sb;
    if (stat(data, &sb)) {
        fprintf(stderr, "draft-pretrain: %s missing, building it (fonts-noto-color-emoji, unicode-data)\n", data);
        struct draft_emoji_counts counts;
        if (draft_emoji_build("/usr/share/unicode/emoji/emoji-test.txt", "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
                              32, &d, &counts) ||
            draft_dataset_save(&d, data)) {
            fprintf(stderr, "draft-pretrain: %s (or build it with draft-emoji-data --size 32 --out %s)\n", tensor_error(), data);
            draft_dataset_free(&d);
            return 1;
        }
        draft_dataset_free(&d);
    }
    if (draft_dataset_load(&d, data)) {
        fprintf(stderr, "draft-pretrain: %s\n", tensor_error());
        return 1;
    }
    signal(SIGINT, on_stop_signal);
    signal(SIGTERM, on_stop_signal);
    enum status s = STATUS_OK;
    struct draft_pretrain_stats st[DRAFT_PT_N_STAGES];
    bool ran[DRAFT_PT_N_STAGES] = {false}, stopped = false;
    for (int k = first; !s && !stopped && k <= last; k++) {
        ran[k] = true;
        memset(&st[k], 0, sizeof st[k]);
        switch (k) {
        case DRAFT_PT_BPE: s = draft_pretrain_bpe(&c, &d); break;
        case DRAFT_PT_CLIP: s = draft_pretrain_clip(&c, &d, &st[k]); break;
        case DRAFT_PT_VAE: s = draft_pretrain_vae(&c, &d, &st[k]); break;
        default: s = draft_pretrain_unet(&c, &d, &st[k]); break;
        }
        stopped = st[k].stopped;
    }
    draft_dataset_free(&d);
    if (s) {
        fprintf(stderr, "draft-pretrain: %s\n", tensor_error());
        return 1;
    }
    for (int k = DRAFT_PT_CLIP; k < DRAFT_PT_N_STAGES; k++)
        if (ran[k])
            printf("%-4s params %lld  steps %lld (+%d)  loss %.4f -> %.4f  held-out %.4f  %.3f s/step\n",
                   draft_pretrain_stage_name(k), (long long)st[k].n_params, (long long)st[k].step, st[k].steps_done,
                   st[k].first_loss, st[k].last_loss, st[k].eval_loss, st[k].sec_per_step);
    if (stopped) return 128 + (stop_signal ? stop_signal : SIGINT);   /* 130 for Ctrl-C, 143 for SIGTERM */
    if (export_dir) {
        char cmd[4096];
        size_t p = 0;
        for (int i = 0; i < argc && p < sizeof cmd; i++) p += (size_t)snprintf(cmd + p, sizeof cmd - p, "%s%s", i ? " " : "", argv[i]);
        if (draft_pretrain_export(c.out_dir, export_dir, cmd, export_dt)) {
            fprintf(stderr, "draft-pretrain: %s\n", tensor_error());
            return 1;
        }
        printf("exported to %s\n", export_dir);
    }
    return 0;
}
