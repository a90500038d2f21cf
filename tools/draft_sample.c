/* draft_sample.c — `draft-sample`: text-to-image with a Stable Diffusion 1.x model and any number
 * of LoRA files, each with its own scale (e.g. two rewards' LoRAs mixed, DRAFT.md "Results").
 *
 *   draft-sample --model DIR --prompt "a photo of a cat" [--prompt ...] [--prompts FILE|@animals]
 *                [--lora run/lora.safetensors:0.8 --lora other.safetensors:0.5] [--n 4] [--seed 0]
 *                [--steps 50] [--guidance 7.5] [--eta 0] [--negative-prompt TEXT] [--size 512|WxH]
 *                [--device cpu|cuda] [--out samples]
 *
 * Image k (in prompt order, --n per prompt) starts from the latents of seed + k, so any single
 * image can be reproduced alone (bit for bit at the same --batch: BLAS may round a batch of
 * another size differently). Writes <out>/<k>.png and a labelled <out>/grid.png; with --reward, each
 * image's score in <out>/scores.jsonl and their mean on stderr. */
#include "diffusion/lora.h"
#include "draft/image.h"
#include "draft/report.h"
#include "draft/reward.h"
#include "draft/run.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_LORAS 16
#define MAX_PROMPTS 1024

static void usage(FILE *f)
{
    fprintf(f,
            "usage: draft-sample [--model DIR] (--prompt TEXT ... | --prompts FILE|@animals|@emoji) [options]\n"
            "  --model DIR        diffusers folder (configs, tokenizer; and weights unless --ckpt); without it,\n"
            "                     the embedded emoji model (models/emoji) with --steps 20 --guidance 5 unless\n"
            "                     given\n"
            "  --ckpt FILE        original single-file weights (sd-v1-4.ckpt or .safetensors)\n"
            "  --prompt TEXT      a prompt (repeatable)\n"
            "  --prompts SPEC     a prompt file (one a line) or a built-in set\n"
            "  --negative-prompt TEXT  the unconditional half of guidance, for every image: what the\n"
            "                     samples are steered away from (default: the empty prompt)\n"
            "  --lora FILE[:S]    a LoRA file (diffusers/PEFT or kohya names) applied with scale S (default 1);\n"
            "                     repeatable: several LoRAs are combined into one adapter\n"
            "  --merge            merge the LoRAs into the weights instead of running them as an adapter\n"
            "  --n N              images per prompt (default 1)\n"
            "  --seed S           image k starts from the latents of seed S + k (default 0)\n"
            "  --steps N          DDIM steps (default 50)\n"
            "  --guidance G       classifier-free guidance scale (default 7.5)\n"
            "  --eta E            DDIM eta (default 0)\n"
            "  --size PX|WxH      image size: a side, or width x height (768x512); multiples of the\n"
            "                     model's 64 (SD) (default: the model's)\n"
            "  --batch B          images per UNet batch (default 4)\n"
            "  --dtype D          f32 or bf16 storage of the model's weights (default f32; computes in f32)\n"
            "  --device D         cpu or cuda: where the model and LoRAs run (default cpu; cuda needs a build\n"
            "                     with the CUDA backend and a GPU)\n"
            "  --precision P      the GPU's matrix products: f32 (exact, default), tf32 or bf16 (autocast)\n"
            "  --reward SPEC      score every image with a reward (draft-run --help lists the specs):\n"
            "                     <out>/scores.jsonl and the mean on stderr\n"
            "  --diversity-model SPEC  a reward spec with an image tower (clip:<dir>, aesthetic:..., or clip for\n"
            "                     the model folder's own): the images' diversity also in its embeddings\n"
            "  --out DIR          output folder (default samples)\n");
}

static bool parse_int(const char *flag, const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "draft-sample: %s expects an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, v);
        return false;
    }
    *out = x;
    return true;
}

static bool parse_double(const char *flag, const char *v, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || x != x) {
        fprintf(stderr, "draft-sample: %s expects a number, got '%s'\n", flag, v);
        return false;
    }
    *out = x;
    return true;
}

/* <out>/scores.jsonl: {"image", "prompt", "reward"} a line; the mean, lowest and highest on stderr */
static enum status write_scores(const char *out, const char *spec, int n, const char *const *labels,
                                const double *scores)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/scores.jsonl", out);
    FILE *f = fopen(path, "w");
    if (!f) return tensor_fail(STATUS_IO, "%s: cannot write: %s", path, strerror(errno));
    double sum = 0, lo = INFINITY, hi = -INFINITY;
    for (int k = 0; k < n; k++) {
        char name[32];
        snprintf(name, sizeof name, "%04d.png", k);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "image", name);
        cJSON_AddStringToObject(o, "prompt", labels[k]);
        if (isfinite(scores[k])) cJSON_AddNumberToObject(o, "reward", scores[k]);
        else cJSON_AddNullToObject(o, "reward");
        char *line = cJSON_PrintUnformatted(o);
        if (line) fprintf(f, "%s\n", line);
        free(line);
        cJSON_Delete(o);
        sum += scores[k];
        lo = fmin(lo, scores[k]);
        hi = fmax(hi, scores[k]);
    }
    if (fclose(f)) return tensor_fail(STATUS_IO, "%s: cannot write", path);
    fprintf(stderr, "draft-sample: reward %s: mean %.6g over %d images (lowest %.6g, highest %.6g); %s\n", spec,
            sum / n, n, lo, hi, path);
    return STATUS_OK;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *ckpt = NULL, *prompts_spec = NULL, *out = "samples", *reward_spec = NULL,
               *div_spec = NULL, *negative = "";
    const char *prompt_args[MAX_PROMPTS];
    int n_prompt_args = 0, n_loras = 0;
    char lora_paths[MAX_LORAS][PATH_MAX];
    const char *lora_path_ptrs[MAX_LORAS];
    double lora_scales[MAX_LORAS];
    long n_per = 1, steps = 50, batch = 4, seed = 0;
    int width = 0, height = 0;   /* 0: the model's default */
    double guidance = 7.5, eta = 0.0;
    bool merge = false, steps_given = false, guidance_given = false;
    char embedded[1024];
    enum dtype dtype = DTYPE_F32;
    enum device device = DEVICE_CPU;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--merge")) {
            merge = true;
            continue;
        }
        if (strncmp(a, "--", 2) || i + 1 >= argc) {
            fprintf(stderr, "draft-sample: %s '%s' (see --help)\n", strncmp(a, "--", 2) ? "unexpected argument" : "missing value for", a);
            return 2;
        }
        const char *v = argv[++i];
        bool ok = true;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--ckpt")) ckpt = v;
        else if (!strcmp(a, "--prompts")) prompts_spec = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--reward")) reward_spec = v;
        else if (!strcmp(a, "--diversity-model")) div_spec = v;
        else if (!strcmp(a, "--negative-prompt")) negative = v;
        else if (!strcmp(a, "--dtype")) {
            if (!strcmp(v, "f32")) dtype = DTYPE_F32;
            else if (!strcmp(v, "bf16")) dtype = DTYPE_BF16;
            else ok = false, fprintf(stderr, "draft-sample: --dtype is f32 or bf16, got '%s'\n", v);
        }
        else if (!strcmp(a, "--device")) {
            if (!draft_device_parse(v, &device)) ok = false, fprintf(stderr, "draft-sample: --device is cpu or cuda, got '%s'\n", v);
        }
        else if (!strcmp(a, "--precision")) {
            enum precision pr;
            if (precision_parse(v, &pr)) tensor_set_precision(pr);
            else ok = false, fprintf(stderr, "draft-sample: --precision is f32, tf32 or bf16, got '%s'\n", v);
        }
        else if (!strcmp(a, "--prompt")) {
            if (n_prompt_args == MAX_PROMPTS) ok = false, fprintf(stderr, "draft-sample: more than %d --prompt\n", MAX_PROMPTS);
            else prompt_args[n_prompt_args++] = v;
        } else if (!strcmp(a, "--lora")) {
            if (n_loras == MAX_LORAS) {
                fprintf(stderr, "draft-sample: more than %d --lora\n", MAX_LORAS);
                return 2;
            }
            if (!draft_lora_arg_parse(v, lora_paths[n_loras], PATH_MAX, &lora_scales[n_loras])) {
                fprintf(stderr, "draft-sample: --lora '%s': the path is too long\n", v);
                return 2;
            }
            lora_path_ptrs[n_loras] = lora_paths[n_loras];
            n_loras++;
        } else if (!strcmp(a, "--n")) ok = parse_int(a, v, 1, 1024, &n_per);
        else if (!strcmp(a, "--steps")) ok = parse_int(a, v, 1, 1000, &steps), steps_given = true;
        else if (!strcmp(a, "--size")) {
            ok = draft_size_parse(v, &width, &height);
            if (!ok) fprintf(stderr, "draft-sample: --size '%s' is not a size in pixels (512, or width x height: 768x512)\n", v);
        }
        else if (!strcmp(a, "--batch")) ok = parse_int(a, v, 1, 256, &batch);
        else if (!strcmp(a, "--seed")) ok = parse_int(a, v, 0, LONG_MAX, &seed);
        else if (!strcmp(a, "--guidance")) ok = parse_double(a, v, &guidance), guidance_given = true;
        else if (!strcmp(a, "--eta")) ok = parse_double(a, v, &eta);
        else {
            fprintf(stderr, "draft-sample: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        if (!ok) return 2;
    }
    if (draft_device_check(device)) {
        fprintf(stderr, "draft-sample: %s\n", tensor_error());
        return 1;
    }
    if (!model && ckpt) {
        fprintf(stderr, "draft-sample: --ckpt needs --model for the configs and tokenizer (see --help)\n");
        return 2;
    }
    if (!model) {   /* the embedded emoji model, with the sampler settings draft-run uses for it */
        if (draft_embedded_model(embedded, sizeof embedded)) {
            fprintf(stderr, "draft-sample: %s\n", tensor_error());
            return 1;
        }
        model = embedded;
        if (!steps_given) steps = 20;
        if (!guidance_given) guidance = 5;
    }
    char **file_prompts = NULL;
    int n_file = 0;
    if (prompts_spec && draft_prompts_load(prompts_spec, &file_prompts, &n_file)) {
        fprintf(stderr, "draft-sample: %s\n", tensor_error());
        return 1;
    }
    const int n_prompts = n_prompt_args + n_file;
    if (!n_prompts) {
        fprintf(stderr, "draft-sample: no prompt: give --prompt TEXT or --prompts FILE\n");
        return 2;
    }
    const int total = n_prompts * (int)n_per;
    const char **labels = calloc((size_t)total, sizeof *labels);
    if (!labels) return 1;
    for (int k = 0; k < total; k++) {
        int p = k / (int)n_per;
        labels[k] = p < n_prompt_args ? prompt_args[p] : file_prompts[p - n_prompt_args];
    }
    if (mkdir(out, 0755) && errno != EEXIST) {
        fprintf(stderr, "draft-sample: %s: cannot create: %s\n", out, strerror(errno));
        return 1;
    }

    struct sd_pipeline p;
    struct sd_lora combined;
    memset(&combined, 0, sizeof combined);
    enum status s = ckpt ? sd_pipeline_load_single_file(&p, ckpt, model, dtype, device)
                         : sd_pipeline_load(&p, model, dtype, device);
    if (!s && n_loras) {
        s = sd_lora_load_combined(&combined, &p.unet, n_loras, lora_path_ptrs, lora_scales);
        if (!s) s = merge ? sd_lora_merge(&combined, &p.unet, 1.0) : sd_lora_attach(&combined, &p.unet, 1.0);
    }
    /* the reward before any sampling: a bad spec fails at once */
    struct draft_reward *reward = NULL;
    double *scores = NULL;
    if (!s && reward_spec && !(reward = draft_reward_create_on(reward_spec, sd_pipeline_dtype(&p), p.device)))
        s = tensor_status();
    if (!s && reward && !(scores = calloc((size_t)total, sizeof *scores))) s = tensor_fail(STATUS_OOM, "out of host memory");
    struct draft_reward *div_model = NULL;
    if (!s && div_spec) {   /* "clip": the model folder's own CLIP */
        char spec_buf[PATH_MAX + 16];
        const char *spec = draft_reward_spec_for_model(div_spec, model, spec_buf, sizeof spec_buf);
        if (!(div_model = draft_reward_create_on(spec, sd_pipeline_dtype(&p), p.device)))
            s = tensor_fail(STATUS_VALUE, "--diversity-model: %s", tensor_error());
        else if (!draft_reward_has_image_tower(div_model))
            s = tensor_fail(STATUS_VALUE, "--diversity-model %s: reward %s has no image tower", div_spec, div_model->name);
    }
    const int64_t w = width ? width : p.vae.cfg.sample_size, h = height ? height : p.vae.cfg.sample_size;
    const int64_t f = (int64_t)1 << (p.vae.cfg.n_blocks - 1), m = f << p.unet.n_samplers;
    if (!s && (w % m || h % m))
        s = tensor_fail(STATUS_VALUE, "--size %lldx%lld: width and height must be multiples of %lld for this model",
                        (long long)w, (long long)h, (long long)m);
    struct tensor *all = NULL;
    if (!s) {
        ag_no_grad_begin();
        struct tensor **parts = calloc((size_t)total, sizeof *parts);
        int n_parts = 0;
        struct sd_sample_opts o = {.steps = (int)steps, .guidance = guidance, .eta = eta};
        for (int k0 = 0; k0 < total && !s; k0 += (int)batch) {
            const int nb = total - k0 < batch ? total - k0 : (int)batch;
            tensor_scope_begin();
            struct tensor *lat[256];
            for (int j = 0; j < nb; j++) {   /* image k's latents depend only on seed + k */
                ag_rng_set((uint64_t)seed + (uint64_t)(k0 + j), 0);
                lat[j] = ag_randn(sd_pipeline_dtype(&p), 4, (int64_t[]){1, p.unet.in_channels, h / f, w / f}, p.device);
            }
            const char *neg[256];
            for (int j = 0; j < nb; j++) neg[j] = negative;
            struct tensor *ctx = sd_pipeline_context(&p, sd_pipeline_tokenize(&p, nb, neg),
                                                     sd_pipeline_tokenize(&p, nb, labels + k0));
            struct tensor *images = sd_pipeline_sample(&p, ag_concat(nb, lat, 0), ctx, &o, NULL);
            if (!images) s = tensor_status();
            if (!s && reward) s = draft_reward_score_values(reward, images, labels + k0, scores + k0, NULL);
            for (int j = 0; j < nb && !s; j++) {
                char path[PATH_MAX + 32];
                snprintf(path, sizeof path, "%s/%04d.png", out, k0 + j);
                struct draft_image im = {0};
                s = draft_image_from_tensor(images, j, &im);
                if (!s) s = draft_png_write(path, &im);
                draft_image_free(&im);
            }
            if (!s) parts[n_parts++] = tensor_keep(images);
            tensor_scope_end();
            fprintf(stderr, "\rdraft-sample: %d/%d images", k0 + nb, total);
        }
        fputc('\n', stderr);
        if (!s) {
            all = ag_concat(n_parts, parts, 0);
            char path[PATH_MAX + 32];
            snprintf(path, sizeof path, "%s/grid.png", out);
            s = all ? draft_grid_save(path, all, n_per > 1 ? (int)n_per : 0, 0, labels) : tensor_status();
        }
        for (int i = 0; i < n_parts; i++) tensor_free(parts[i]);
        free(parts);
        ag_no_grad_end();
    }
    if (!s && reward) s = write_scores(out, reward_spec, total, labels, scores);
    if (!s && reward) {   /* a sum's terms, unweighted, over all the images */
        struct draft_reward_term terms[DRAFT_REWARD_MAX_TERMS];
        double means[DRAFT_REWARD_MAX_TERMS];
        const int nt = draft_reward_terms(reward, terms);
        draft_reward_terms_take(reward, means);
        for (int i = 0; i < nt; i++)
            fprintf(stderr, "draft-sample:   term %d, %g * %s: mean %.6g\n", i + 1, terms[i].weight, terms[i].spec, means[i]);
    }
    /* how different the images are from each other (as draft-run's report): a LoRA pushed too
     * far makes them all alike */
    const double diversity = !s && total > 1 ? draft_diversity(all) : NAN;
    double clip_div = NAN;
    if (!s && total > 1 && div_model) {
        struct tensor *emb = draft_reward_image_embeds(div_model, all);
        if (!emb) s = tensor_status();
        else clip_div = draft_feature_diversity(emb);
        tensor_free(emb);
    }
    draft_reward_free(reward);
    draft_reward_free(div_model);
    free(scores);
    tensor_free(all);
    sd_lora_detach(&p.unet);
    sd_lora_free(&combined);
    sd_pipeline_free(&p);
    draft_prompts_free(file_prompts, n_file);
    free(labels);
    if (s) {
        fprintf(stderr, "draft-sample: %s\n", tensor_error());
        return 1;
    }
    if (isfinite(diversity) && isfinite(clip_div))
        printf("draft-sample: %d images and grid.png in %s (diversity %.4f, CLIP diversity %.4f)\n", total, out, diversity,
               clip_div);
    else if (isfinite(diversity))
        printf("draft-sample: %d images and grid.png in %s (diversity %.4f)\n", total, out, diversity);
    else
        printf("draft-sample: %d image%s and grid.png in %s\n", total, total == 1 ? "" : "s", out);
    return 0;
}
