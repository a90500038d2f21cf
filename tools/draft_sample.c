/* draft_sample.c — `draft-sample`: text-to-image with a Stable Diffusion 1.x/2.x/XL model and any number
 * of LoRA files, each with its own scale (e.g. two rewards' LoRAs mixed, DRAFT.md "Results").
 *
 *   draft-sample --model DIR --prompt "a photo of a cat" [--prompt ...] [--prompts FILE|@animals]
 *                [--lora run/lora.safetensors:0.8 --lora other.safetensors:0.5] [--n 4] [--seed 0]
 *                [--steps 50] [--guidance 7.5] [--eta 0] [--negative-prompt TEXT] [--size 512|WxH]
 *                [--device cpu|cuda] [--out samples]
 *
 * Image k (in prompt order, --n per prompt) starts from the latents of seed + k, so any single
 * image can be reproduced alone (bit for bit at the same --batch: BLAS may round a batch of
 * another size differently). Writes <out>/<k>.png, a labelled <out>/grid.png and the prompts, a line
 * per image, in <out>/prompts.txt (draft-score reads them); with --reward, each
 * image's score in <out>/scores.jsonl and their mean on stderr. */
#include "diffusion/lora.h"
#include "draft/image.h"
#include "draft/report.h"
#include "draft/reward.h"
#include "draft/run.h"
#include "nn/file.h"

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
#define MAX_SWEEP 16     /* combinations of LoRA scales in one call */
#define SWEEP_COLS 8     /* images of each combination in sweep.png */
#define STR_(x) #x
#define STR(x) STR_(x)

static void usage(FILE *f)
{
    fprintf(f,
            "usage: draft-sample [--model DIR] (--prompt TEXT ... | --prompts FILE|@animals|@emoji) [options]\n"
            "  --model DIR        diffusers folder (configs, tokenizer; and weights unless --ckpt); without it,\n"
            "                     the embedded emoji model (models/emoji) with --steps 20 --guidance 5 unless\n"
            "                     given\n"
            "  --ckpt FILE        original single-file weights (sd-v1-4.ckpt, SD 2.x's v2-1_768-ema-pruned.ckpt,\n"
            "                     SDXL's sd_xl_base_1.0.safetensors, or a .safetensors with their keys)\n"
            "  --prompt TEXT      a prompt (repeatable)\n"
            "  --prompts SPEC     a prompt file (one a line) or a built-in set\n"
            "  --negative-prompt TEXT  the unconditional half of guidance, for every image: what the\n"
            "                     samples are steered away from (default: the empty prompt)\n"
            "  --clip-skip K      text encoder layers left out of the prompt embeddings, as diffusers'\n"
            "                     clip_skip (default 0; 1 for models trained on the penultimate layer)\n"
            "  --lora FILE[:S]    a LoRA file (diffusers/PEFT or kohya names; a draft-run folder: its\n"
            "                     lora.safetensors) applied with scale S (default 1);\n"
            "                     repeatable: several LoRAs are combined into one adapter. FILE:S1,S2,...\n"
            "                     sweeps the scales: every combination (up to " STR(MAX_SWEEP) ") samples the same\n"
            "                     seeds into <out>/scale_<scales>/, with sweep.html, sweep.png (a row each)\n"
            "                     and sweep.jsonl (reward, diversity) in <out>\n"
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
            "  --out DIR          output folder, created with its parents (default samples)\n"
            "  --version          the version, the commit and the backends (CPU, BLAS, GPU)\n");
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
    if (errno || end == v || *end || !isfinite(x)) {
        fprintf(stderr, "draft-sample: %s expects a finite number, got '%s'\n", flag, v);
        return false;
    }
    *out = x;
    return true;
}

/* <out>/scores.jsonl: {"image", "prompt", "reward"} a line; the mean (also into *mean), lowest and
 * highest on stderr */
static enum status write_scores(const char *out, const char *spec, int n, const char *const *labels,
                                const double *scores, double *mean)
{
    char path[PATH_MAX + 128];
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
    *mean = sum / n;
    if (fclose(f)) return tensor_fail(STATUS_IO, "%s: cannot write", path);
    fprintf(stderr, "draft-sample: reward %s: mean %.6g over %d images (lowest %.6g, highest %.6g); %s\n", spec,
            sum / n, n, lo, hi, path);
    return STATUS_OK;
}

/* what every combination of LoRA scales samples */
struct job {
    const char *const *labels;   /* image k's prompt */
    int total, n_per, batch;
    long seed;
    struct sd_sample_opts o;
    const char *negative;
    int64_t w, h, f;             /* image size, the VAE's factor */
    struct draft_reward *reward, *div_model;   /* NULL: none */
    const char *reward_spec, *div_spec;
};

/* what one combination gave (NaN where not measured) */
struct outcome {
    double reward, diversity, clip_div;
    int n_terms;
    double terms[DRAFT_REWARD_MAX_TERMS];
};

/* the scales as text joined by sep: "0.5_1" */
static void scales_name(char *buf, size_t n, int n_loras, const double *scales, const char *sep)
{
    int o = snprintf(buf, n, "%s", n_loras ? "" : "none");
    for (int i = 0; i < n_loras && o < (int)n; i++) o += snprintf(buf + o, n - (size_t)o, "%s%g", i ? sep : "", scales[i]);
}

#define SWEEP_DIR_MAX (32 * MAX_LORAS + 16)
/* a combination's folder under --out: "scale_0.5_1" */
static void sweep_dir(char *buf, size_t n, int n_loras, const double *scales)
{
    char name[32 * MAX_LORAS + 8];
    scales_name(name, sizeof name, n_loras, scales, "_");
    snprintf(buf, n, "scale_%s", name);
}

/* The job's images into dir: <k>.png, grid.png, and with a reward scores.jsonl (and the mean on
 * stderr). Image k starts from the latents of seed + k. All the images stay in *all. */
static enum status sample_into(struct sd_pipeline *p, const struct job *j, const char *dir, struct tensor **all,
                               struct outcome *res)
{
    res->reward = res->diversity = res->clip_div = NAN;
    res->n_terms = 0;
    double *scores = j->reward ? calloc((size_t)j->total, sizeof *scores) : NULL;
    struct tensor **parts = calloc((size_t)j->total, sizeof *parts);
    enum status s = parts && (scores || !j->reward) ? STATUS_OK : tensor_fail(STATUS_OOM, "out of host memory");
    int n_parts = 0;
    ag_no_grad_begin();
    for (int k0 = 0; k0 < j->total && !s; k0 += j->batch) {
        const int nb = j->total - k0 < j->batch ? j->total - k0 : j->batch;
        tensor_scope_begin();
        struct tensor *lat[256];
        for (int i = 0; i < nb; i++) {   /* image k's latents depend only on seed + k */
            ag_rng_set((uint64_t)j->seed + (uint64_t)(k0 + i), 0);
            lat[i] = ag_randn(sd_pipeline_dtype(p), 4, (int64_t[]){1, p->unet.in_channels, j->h / j->f, j->w / j->f},
                              p->device);
        }
        const char *neg[256];
        for (int i = 0; i < nb; i++) neg[i] = j->negative;
        struct tensor *ctx = sd_pipeline_context(p, sd_pipeline_tokenize(p, nb, neg), sd_pipeline_tokenize(p, nb, j->labels + k0));
        struct tensor *images = sd_pipeline_sample(p, ag_concat(nb, lat, 0), ctx, &j->o, NULL);
        if (!images) s = tensor_status();
        if (!s && j->reward) s = draft_reward_score_values(j->reward, images, j->labels + k0, scores + k0, NULL);
        for (int i = 0; i < nb && !s; i++) {
            char path[PATH_MAX + 96];
            snprintf(path, sizeof path, "%s/%04d.png", dir, k0 + i);
            struct draft_image im = {0};
            s = draft_image_from_tensor(images, i, &im);
            if (!s) s = draft_png_write(path, &im);
            draft_image_free(&im);
            const int64_t bad = s ? 0 : draft_image_nonfinite(images, i);
            if (bad < 0) s = tensor_status();
            if (bad > 0)   /* written anyway (0 or 255 there): a sweep's high scales may diverge, and it goes on */
                fprintf(stderr, "\ndraft-sample: warning: %s has %lld NaN or infinite values of %lld (written as 0 or 255): "
                        "the sampling diverged (a LoRA scale, the guidance, or the weights)\n", path, (long long)bad,
                        (long long)(3 * j->h * j->w));
        }
        if (!s) parts[n_parts++] = tensor_keep(images);
        tensor_scope_end();
        fprintf(stderr, "\rdraft-sample: %d/%d images", k0 + nb, j->total);
    }
    fputc('\n', stderr);
    if (!s) {
        *all = ag_concat(n_parts, parts, 0);
        char path[PATH_MAX + 96];
        snprintf(path, sizeof path, "%s/grid.png", dir);
        s = *all ? draft_grid_save(path, *all, j->n_per > 1 ? j->n_per : 0, 0, j->labels) : tensor_status();
    }
    for (int i = 0; i < n_parts; i++) tensor_free(parts[i]);
    free(parts);
    ag_no_grad_end();
    if (!s) {   /* the prompts, image by image, for draft-score */
        char path[PATH_MAX + 96];
        snprintf(path, sizeof path, "%s/prompts.txt", dir);
        FILE *f = fopen(path, "w");
        for (int k = 0; f && k < j->total; k++) {
            for (const char *c = j->labels[k]; *c; c++) fputc(*c == '\n' || *c == '\r' ? ' ' : *c, f);
            fputc('\n', f);
        }
        if (!f || fclose(f)) s = tensor_fail(STATUS_IO, "%s: cannot write", path);
    }
    if (!s && j->reward) {
        s = write_scores(dir, j->reward_spec, j->total, j->labels, scores, &res->reward);
        /* a sum's terms, unweighted, over all the images */
        struct draft_reward_term terms[DRAFT_REWARD_MAX_TERMS];
        res->n_terms = draft_reward_terms(j->reward, terms);
        draft_reward_terms_take(j->reward, res->terms);
        for (int i = 0; i < res->n_terms; i++)
            fprintf(stderr, "draft-sample:   term %d, %g * %s: mean %.6g\n", i + 1, terms[i].weight, terms[i].spec,
                    res->terms[i]);
    }
    free(scores);
    /* how different the images are from each other (as draft-run's report): a LoRA pushed too
     * far makes them all alike */
    if (!s && j->total > 1) res->diversity = draft_diversity(*all);
    if (!s && j->total > 1 && j->div_model) {
        struct tensor *emb = draft_reward_image_embeds(j->div_model, *all);
        if (!emb) s = tensor_status();
        else res->clip_div = draft_feature_diversity(emb);
        tensor_free(emb);
    }
    return s;
}

/* A sweep's summary in out: sweep.png (a row of each combination's first images), sweep.jsonl (a
 * line each: the scales, the folder, the mean reward and its terms, the diversities), and the
 * table on stdout. */
static enum status write_sweep(const char *out, const struct job *j, int n_loras, const char *const *paths, int n_cfg,
                               double scales[][MAX_LORAS], const struct outcome *res, const struct draft_image *thumbs,
                               int cols, const char *const *thumb_labels)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/sweep.png", out);
    struct draft_image grid = {0};
    enum status s = draft_grid(thumbs, n_cfg * cols, cols, 0, thumb_labels, &grid);
    if (!s) s = draft_png_write(path, &grid);
    draft_image_free(&grid);
    if (s) return s;
    snprintf(path, sizeof path, "%s/sweep.jsonl", out);
    FILE *f = fopen(path, "w");
    if (!f) return tensor_fail(STATUS_IO, "%s: cannot write: %s", path, strerror(errno));
    printf("draft-sample: %d combinations of LoRA scales (", n_cfg);
    for (int i = 0; i < n_loras; i++) printf("%s%s", i ? ", " : "", paths[i]);
    printf("), %d image%s each; sweep.html, sweep.png and sweep.jsonl in %s\n", j->total, j->total == 1 ? "" : "s", out);
    printf("  %-16s %12s %12s%s\n", "scales", j->reward ? "reward" : "", "diversity", j->div_model ? "   CLIP diversity" : "");
    struct draft_sweep_row rows[MAX_SWEEP];   /* also the page's */
    char dirs[MAX_SWEEP][SWEEP_DIR_MAX];
    for (int c = 0; c < n_cfg; c++) {
        sweep_dir(dirs[c], sizeof dirs[c], n_loras, scales[c]);
        rows[c] = (struct draft_sweep_row){scales[c], dirs[c], res[c].reward, res[c].diversity, res[c].clip_div};
        char name[32 * MAX_LORAS + 8];
        cJSON *o = cJSON_CreateObject(), *sc = cJSON_AddArrayToObject(o, "scales");
        for (int i = 0; i < n_loras; i++) cJSON_AddItemToArray(sc, cJSON_CreateNumber(scales[c][i]));
        cJSON_AddStringToObject(o, "dir", dirs[c]);
        const char *keys[3] = {"reward", "diversity", "clip_diversity"};
        const double vals[3] = {res[c].reward, res[c].diversity, res[c].clip_div};
        for (int k = 0; k < 3; k++)
            if ((k != 0 || j->reward) && (k != 2 || j->div_model)) {
                if (isfinite(vals[k])) cJSON_AddNumberToObject(o, keys[k], vals[k]);
                else cJSON_AddNullToObject(o, keys[k]);
            }
        if (res[c].n_terms) {
            cJSON *t = cJSON_AddArrayToObject(o, "reward_terms");
            for (int i = 0; i < res[c].n_terms; i++) cJSON_AddItemToArray(t, cJSON_CreateNumber(res[c].terms[i]));
        }
        char *line = cJSON_PrintUnformatted(o);
        if (line) fprintf(f, "%s\n", line);
        free(line);
        cJSON_Delete(o);
        scales_name(name, sizeof name, n_loras, scales[c], ", ");
        printf("  %-16s", name);
        for (int k = 0; k < 3; k++) {
            if (k == 0 && !j->reward) printf(" %12s", "");
            else if (k == 2 && !j->div_model) break;
            else if (!isfinite(vals[k])) printf(k == 2 ? " %16s" : " %12s", "n/a");   /* as the page has it */
            else printf(k == 2 ? " %16.4f" : " %12.4f", vals[k]);
        }
        printf("\n");
    }
    if (j->total < 2) printf("  (diversity: n/a with one image a combination; --n 2 or a second prompt gives it)\n");
    if (fclose(f)) return tensor_fail(STATUS_IO, "%s: cannot write", path);
    /* the page: the table, the grid, and for one LoRA the measures against its scale */
    snprintf(path, sizeof path, "%s/sweep.html", out);
    return draft_sweep_html(path, n_loras, paths, n_cfg, rows, j->reward ? j->reward_spec : NULL,
                            j->div_model ? j->div_spec : NULL, "sweep.png");
}

int main(int argc, char **argv)
{
    const char *model = NULL, *ckpt = NULL, *prompts_spec = NULL, *out = "samples", *reward_spec = NULL,
               *div_spec = NULL, *negative = "";
    const char *prompt_args[MAX_PROMPTS];
    int n_prompt_args = 0, n_loras = 0;
    char lora_paths[MAX_LORAS][PATH_MAX];
    const char *lora_path_ptrs[MAX_LORAS];
    double lora_scales[MAX_LORAS][MAX_SWEEP];   /* each --lora's scales: one, or a list to sweep */
    int n_scales[MAX_LORAS], n_cfg = 1;
    long n_per = 1, steps = 50, batch = 4, seed = 0, clip_skip = 0;
    int width = 0, height = 0;   /* 0: the model's default */
    double guidance = 7.5, eta = 0.0;
    bool merge = false, steps_given = false, guidance_given = false;
    char embedded[1024];
    enum dtype dtype = DTYPE_F32;
    enum device device = DEVICE_CPU;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (draft_tool_info_flag(a, usage)) return 0;   /* --version, --help */
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
            const int k = draft_lora_arg_parse_list(v, lora_paths[n_loras], PATH_MAX, lora_scales[n_loras], MAX_SWEEP);
            if (k <= 0 || n_cfg * k > MAX_SWEEP) {
                fprintf(stderr, "draft-sample: --lora '%s': %s\n", v, !k ? "the path is too long"
                        : k == -2 ? "what follows the last ':' is not a scale (a number, or numbers separated by commas)"
                        : "more than " STR(MAX_SWEEP) " combinations of scales in all");
                return 2;
            }
            n_cfg *= k;
            n_scales[n_loras] = k;
            lora_path_ptrs[n_loras] = lora_paths[n_loras];
            n_loras++;
        } else if (!strcmp(a, "--n")) ok = parse_int(a, v, 1, 1024, &n_per);
        else if (!strcmp(a, "--steps")) ok = parse_int(a, v, 1, 1000, &steps), steps_given = true;
        else if (!strcmp(a, "--size")) {
            ok = draft_size_parse(v, &width, &height);
            if (!ok) fprintf(stderr, "draft-sample: --size '%s' is not a size in pixels (512, or width x height: 768x512)\n", v);
        }
        else if (!strcmp(a, "--batch")) ok = parse_int(a, v, 1, 256, &batch);
        else if (!strcmp(a, "--clip-skip")) ok = parse_int(a, v, 0, 64, &clip_skip);
        else if (!strcmp(a, "--seed")) ok = parse_int(a, v, 0, LONG_MAX, &seed);
        else if (!strcmp(a, "--guidance")) ok = parse_double(a, v, &guidance), guidance_given = true;
        else if (!strcmp(a, "--eta")) ok = parse_double(a, v, &eta);
        else {
            fprintf(stderr, "draft-sample: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        if (!ok) return 2;
    }
    if (merge && n_cfg > 1) {   /* each unmerge would leave a rounding in the weights for the next */
        fprintf(stderr, "draft-sample: --merge takes one scale per --lora; sweep the scales without --merge (the LoRAs "
                        "then run as an adapter, which samples the same images up to rounding)\n");
        return 2;
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
    /* the reward specs' form before the folder and the model (a model reward's files are read later) */
    char rspec_buf[PATH_MAX + 16];   /* "clip", "clip:text=...", "classify:text=...": the model folder's own CLIP, as in draft-run */
    const char *bad = NULL;
    if (reward_spec && draft_reward_spec_check(draft_reward_spec_for_model(reward_spec, model, rspec_buf, sizeof rspec_buf)))
        bad = "";
    else if (div_spec && draft_reward_spec_check(draft_reward_spec_for_model(div_spec, model, rspec_buf, sizeof rspec_buf)))
        bad = "--diversity-model: ";
    if (bad) {
        fprintf(stderr, "draft-sample: %s%s\n", bad, tensor_error());
        free(labels);
        return 1;
    }
    if (!out[0] || nn_mkdir_p(out)) {   /* with its parents, as draft-run's --out; before any sampling */
        fprintf(stderr, "draft-sample: %s\n", out[0] ? tensor_error() : "--out is empty: give the folder for the images");
        free(labels);
        return out[0] ? 1 : 2;
    }

    struct sd_pipeline p;
    struct sd_lora loras[MAX_LORAS];
    memset(loras, 0, sizeof loras);
    enum status s = ckpt ? sd_pipeline_load_single_file(&p, ckpt, model, dtype, device)
                         : sd_pipeline_load(&p, model, dtype, device);
    if (!s) s = sd_pipeline_set_clip_skip(&p, (int)clip_skip);
    for (int i = 0; i < n_loras && !s; i++) s = sd_lora_load(&loras[i], &p.unet, lora_path_ptrs[i]);
    /* the reward before any sampling: a bad spec fails at once */
    struct job j = {.labels = labels, .total = total, .n_per = (int)n_per, .batch = (int)batch, .seed = seed,
                    .o = {.steps = (int)steps, .guidance = guidance, .eta = eta}, .negative = negative,
                    .reward_spec = reward_spec, .div_spec = div_spec};
    if (!s && reward_spec &&
        !(j.reward = draft_reward_create_on(draft_reward_spec_for_model(reward_spec, model, rspec_buf, sizeof rspec_buf),
                                            sd_pipeline_dtype(&p), p.device)))
        s = tensor_status();
    if (!s && div_spec) {   /* "clip": the model folder's own CLIP */
        char spec_buf[PATH_MAX + 16];
        const char *spec = draft_reward_spec_for_model(div_spec, model, spec_buf, sizeof spec_buf);
        if (!(j.div_model = draft_reward_create_on(spec, sd_pipeline_dtype(&p), p.device)))
            s = tensor_fail(STATUS_VALUE, "--diversity-model: %s", tensor_error());
        else if (!draft_reward_has_image_tower(j.div_model))
            s = tensor_fail(STATUS_VALUE, "--diversity-model %s: reward %s has no image tower", div_spec, j.div_model->name);
    }
    j.w = width ? width : sd_pipeline_default_size(&p), j.h = height ? height : sd_pipeline_default_size(&p);
    j.f = (int64_t)1 << (p.vae.cfg.n_blocks - 1);
    const int64_t m = j.f << p.unet.n_samplers;
    if (!s && (j.w % m || j.h % m))
        s = tensor_fail(STATUS_VALUE, "--size %lldx%lld: width and height must be multiples of %lld for this model",
                        (long long)j.w, (long long)j.h, (long long)m);
    /* every combination of the LoRAs' scales, the first LoRA's varying slowest */
    struct outcome res[MAX_SWEEP];
    double cfg_scales[MAX_SWEEP][MAX_LORAS];
    struct draft_image thumbs[MAX_SWEEP * SWEEP_COLS];
    char *thumb_labels[MAX_SWEEP * SWEEP_COLS];
    memset(thumbs, 0, sizeof thumbs);
    memset(thumb_labels, 0, sizeof thumb_labels);
    const int cols = total < SWEEP_COLS ? total : SWEEP_COLS;
    const struct sd_lora *lp[MAX_LORAS];
    for (int i = 0; i < n_loras; i++) lp[i] = &loras[i];
    for (int c = 0; c < n_cfg && !s; c++) {
        for (int i = n_loras - 1, r = c; i >= 0; r /= n_scales[i], i--) cfg_scales[c][i] = lora_scales[i][r % n_scales[i]];
        char dir[PATH_MAX + 64], name[SWEEP_DIR_MAX], shown[32 * MAX_LORAS + 8];
        sweep_dir(name, sizeof name, n_loras, cfg_scales[c]);
        scales_name(shown, sizeof shown, n_loras, cfg_scales[c], ", ");
        if (n_cfg > 1) {
            snprintf(dir, sizeof dir, "%s/%s", out, name);
            if (mkdir(dir, 0755) && errno != EEXIST) s = tensor_fail(STATUS_IO, "%s: cannot create: %s", dir, strerror(errno));
        } else {
            snprintf(dir, sizeof dir, "%s", out);
        }
        struct sd_lora combined;
        memset(&combined, 0, sizeof combined);
        if (!s && n_loras) {
            s = sd_lora_combine(&combined, n_loras, lp, cfg_scales[c]);
            if (!s) s = merge ? sd_lora_merge(&combined, &p.unet, 1.0) : sd_lora_attach(&combined, &p.unet, 1.0);
        }
        if (n_cfg > 1) fprintf(stderr, "draft-sample: LoRA scales %s\n", shown);
        struct tensor *all = NULL;
        if (!s) s = sample_into(&p, &j, dir, &all, &res[c]);
        for (int k = 0; k < cols && !s && n_cfg > 1; k++) {   /* the sweep grid's row: the first images */
            s = draft_image_from_tensor(all, k, &thumbs[c * cols + k]);
            char lab[1024];
            snprintf(lab, sizeof lab, "scale %.520s: %.400s", shown, labels[k]);
            if (!s && !(thumb_labels[c * cols + k] = strdup(lab))) s = tensor_fail(STATUS_OOM, "out of host memory");
        }
        tensor_free(all);
        sd_lora_detach(&p.unet);
        sd_lora_free(&combined);
    }
    if (!s && n_cfg > 1) s = write_sweep(out, &j, n_loras, lora_path_ptrs, n_cfg, cfg_scales, res, thumbs, cols,
                                         (const char *const *)thumb_labels);
    for (int k = 0; k < MAX_SWEEP * SWEEP_COLS; k++) draft_image_free(&thumbs[k]), free(thumb_labels[k]);
    draft_reward_free(j.reward);
    draft_reward_free(j.div_model);
    for (int i = 0; i < n_loras; i++) sd_lora_free(&loras[i]);
    sd_pipeline_free(&p);
    draft_prompts_free(file_prompts, n_file);
    free(labels);
    if (s) {
        fprintf(stderr, "draft-sample: %s\n", tensor_error());
        return 1;
    }
    if (n_cfg > 1) return 0;
    const double diversity = res[0].diversity, clip_div = res[0].clip_div;
    if (isfinite(diversity) && isfinite(clip_div))
        printf("draft-sample: %d images and grid.png in %s (diversity %.4f, CLIP diversity %.4f)\n", total, out, diversity,
               clip_div);
    else if (isfinite(diversity))
        printf("draft-sample: %d images and grid.png in %s (diversity %.4f)\n", total, out, diversity);
    else
        printf("draft-sample: %d image%s and grid.png in %s\n", total, total == 1 ? "" : "s", out);
    return 0;
}
