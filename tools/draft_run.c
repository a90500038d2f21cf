/* draft_run.c — `draft-run`: fine-tune a Stable Diffusion 1.x/2.x/XL model's LoRA on a differentiable
 * reward with DRaFT, DRaFT-K, DRaFT-LV, ReFL or AlignProp (draft/run.h does the work).
 *
 *   draft-run --model DIR [--reward SPEC] [--prompts FILE|@animals] [--method lv] ...
 *   draft-run --config run.json [--iters 10]     (flags given later override the file)
 *   draft-run --help                              (every option with its default)
 */
#include "draft/run.h"
#include "nn/file.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum kind { K_STR, K_INT, K_U64, K_DOUBLE, K_BOOL, K_METHOD, K_DTYPE, K_DEVICE, K_PRECISION, K_SIZE, K_DECAY };

struct opt {
    const char *name;
    enum kind kind;
    size_t off, size;   /* field in struct draft_run_config (size: for strings) */
    const char *help;
};

#define F(field) offsetof(struct draft_run_config, field), sizeof(((struct draft_run_config *)0)->field)
static const struct opt opts[] = {
    {"model", K_STR, F(model), "diffusers folder of the model (model_index.json, unet/, vae/, ...)"},
    {"ckpt", K_STR, F(ckpt), "original single-file weights (sd-v1-4.ckpt, v2-1_512-ema-pruned.ckpt, sd_xl_base_1.0.safetensors); --model then gives "
                             "the configs and tokenizer"},
    {"reward", K_STR, F(reward), "reward: aesthetic:<clip_dir>,<head.pth> | clip:<dir>[,logit_scale][,text=...] | "
                                 "hpsv2:<HPS_v2_compressed.pt>,<tokenizer dir> | pickscore:<dir> | classify:<dir>,text=<target>|<other>|... "
                                 "(log p(target) of CLIP's zero-shot classifier) | detect:<owlvit dir>[,text=<object>] "
                                 "(OWL-ViT's best box score) | imagereward:<dir>[,text=...] | colorfulness | brightness=<t> | "
                                 "contrast=<t> | jpeg | red | sum:[w*]<spec>;[w*]<spec>... (weighted sum)"},
    {"eval-reward", K_STR, F(eval_reward), "a second reward (same specs) scored on the held-out samples only: "
                                           "metrics.jsonl's eval_reward, the report; where reward hacking shows"},
    {"diversity-model", K_STR, F(diversity_model), "a reward spec with an image tower (clip:<dir>, aesthetic:..., "
                                                   "pickscore:<dir>, hpsv2:..., detect:<dir>, imagereward:<dir>), or clip for the model folder's own: "
                                                   "the held-out samples' diversity also in its image embeddings (mean "
                                                   "pairwise 1 - cosine), which sees them converge on one subject where "
                                                   "pixels do not"},
    {"prompts", K_STR, F(prompts), "prompt file (one a line) or a built-in set: @animals, @emoji"},
    {"eval-prompts", K_STR, F(eval_prompts), "prompts of the held-out evaluation (file or built-in set), to see "
                                             "whether training carries over to prompts it never saw (default: the "
                                             "training prompts)"},
    {"negative-prompt", K_STR, F(negative_prompt), "the unconditional half of classifier-free guidance, in training "
                                                   "and evaluation: what the samples are steered away from (default: "
                                                   "the empty prompt)"},
    {"clip-skip", K_INT, F(clip_skip), "text encoder layers left out of the prompt embeddings, as diffusers' "
                                       "clip_skip (1: the penultimate layer's, through the final LayerNorm; for "
                                       "models trained so)"},
    {"out", K_STR, F(out), "run folder (metrics, grids, checkpoints, LoRA, report.html)"},
    {"dtype", K_DTYPE, F(dtype), "dtype of the frozen base weights: f32 or bf16 (bf16 halves their memory; activations, LoRA and AdamW stay f32)"},
    {"device", K_DEVICE, F(device), "cpu or cuda: where the model, LoRA, optimiser and reward run (cuda needs a build "
                                    "with the CUDA backend and a GPU)"},
    {"precision", K_PRECISION, F(precision), "the GPU's matrix products (matmul, conv, attention): f32 (exact), tf32 "
                                             "(tensor cores) or bf16 (autocast: bf16 operands, f32 accumulation; norms "
                                             "and softmax stay f32); the CPU always computes in f32"},
    {"method", K_METHOD, F(method.method), "full | k | lv | refl | alignprop | drtune"},
    {"k", K_INT, F(method.k), "DRaFT-K: differentiate the last k sampling steps; DRTune: train k evenly spaced steps"},
    {"lv-n", K_INT, F(method.lv_n), "DRaFT-LV: re-noised copies of the final latent"},
    {"refl-lo", K_INT, F(method.refl_lo), "ReFL: first step index of the stopping window"},
    {"refl-hi", K_INT, F(method.refl_hi), "ReFL: last step index of the stopping window"},
    {"steps", K_INT, F(method.steps), "DDIM sampling steps"},
    {"guidance", K_DOUBLE, F(method.guidance), "classifier-free guidance scale"},
    {"eta", K_DOUBLE, F(method.eta), "DDIM eta (0 = deterministic)"},
    {"checkpoint", K_BOOL, F(method.checkpoint), "recompute each UNet call and VAE block in the backward"},
    {"checkpoint-blocks", K_BOOL, F(method.checkpoint_blocks), "recompute, within a call, each UNet resnet and "
                                                               "transformer too (SD 1.4, 512 px: peak 11.7 -> 8.6 GiB; "
                                                               "about one more UNet forward per differentiable call)"},
    {"lora-rank", K_INT, F(lora_rank), "LoRA rank"},
    {"lora-alpha", K_DOUBLE, F(lora_alpha), "LoRA alpha (scale = alpha / rank)"},
    {"lora-targets", K_STR, F(lora_targets), "UNet projections that get a LoRA: comma-separated name suffixes "
                                             "(attn2.to_k,attn2.to_v: the cross-attention's keys and values only)"},
    {"init-lora", K_STR, F(init_lora), "start from this LoRA file (a run's lora.safetensors, or its folder, or any diffusers/PEFT "
                                       "or kohya LoRA of the UNet): its rank, alpha and projections replace --lora-rank, "
                                       "--lora-alpha and --lora-targets, the optimiser starts fresh; to go on with "
                                       "another reward or settings where --resume refuses"},
    {"lr", K_DOUBLE, F(opt.lr), "AdamW learning rate"},
    {"beta1", K_DOUBLE, F(opt.beta1), "AdamW beta1"},
    {"beta2", K_DOUBLE, F(opt.beta2), "AdamW beta2"},
    {"adam-eps", K_DOUBLE, F(opt.eps), "AdamW epsilon"},
    {"weight-decay", K_DOUBLE, F(opt.weight_decay), "AdamW decoupled weight decay"},
    {"grad-clip", K_DOUBLE, F(opt.max_grad_norm), "clip the global gradient norm to this (0 = off)"},
    {"warmup", K_INT, F(opt.warmup_steps), "linear learning-rate warm-up steps"},
    {"lr-decay", K_DECAY, F(opt.decay), "after the warm-up: constant, or a linear or cosine decay to --lr-min at the "
     "last of the --iters steps"},
    {"lr-min", K_DOUBLE, F(opt.lr_min), "where --lr-decay ends"},
    {"accum", K_INT, F(opt.accum_steps), "gradient accumulation: micro-batches per optimiser step"},
    {"batch", K_INT, F(batch), "images per micro-batch"},
    {"iters", K_INT, F(iters), "optimiser steps"},
    {"seed", K_U64, F(seed), "seed of every random draw (prompts, latents, noise, LoRA init)"},
    {"size", K_SIZE, F(image_width), "image size in pixels: a side (512) or width x height (768x512), multiples "
                                     "of 64 for SD 1.x/2.x/XL (0 = the model's default)"},
    {"eval-images", K_INT, F(eval_images), "held-out fixed-seed images scored before, during and after"},
    {"keep-best", K_STR, F(keep_best), "reward or eval-reward: also keep, as lora_best.safetensors, the LoRA of the "
                                       "held-out evaluation (before, every --eval-every, after) where that was highest: "
                                       "the LoRA from before a reward began to be hacked"},
    {"eval-every", K_INT, F(eval_every), "evaluate and write a sample grid every N steps (0 = before/after only)"},
    {"save-every", K_INT, F(save_every), "write checkpoint.safetensors every N steps (0 = at the end only)"},
    {"lora-every", K_INT, F(lora_every), "also keep the LoRA of every N-th step in <out>/loras/step_NNNNN.safetensors "
                                         "(0 = off)"},
    {"skip-nonfinite", K_INT, F(skip_nonfinite), "a step whose gradient is not finite makes no update and the run "
     "goes on, up to this many in a row (0: stop at the first)"},
    {"max-minutes", K_DOUBLE, F(max_minutes), "end training after this much wall time (0 = no limit), then evaluate "
                                              "and report as after the last step; --resume continues"},
    {"resume", K_BOOL, F(resume), "continue from <out>/checkpoint.safetensors, with the options of "
                                  "<out>/config.json unless --config is given (flags given now override them)"},
    {"overwrite", K_BOOL, F(overwrite), "write into an --out that holds an earlier run (its LoRA, checkpoint, "
                                        "metrics and report are replaced; other files of it stay); without it such "
                                        "a folder is refused"},
    {"progress", K_BOOL, F(progress), "show a progress bar on stderr"},
    {"dry-run", K_BOOL, F(dry_run), "measure one held-out evaluation and one optimiser step (time, peak memory), "
                                    "project the whole run from them, and write nothing: whether a setting fits "
                                    "and how long it will take"},
};
#undef F
#define N_OPTS (int)(sizeof opts / sizeof opts[0])

/* Without --model or --ckpt: the embedded emoji model (models/emoji), and these defaults for
 * every option the command line and --config leave unset. They make the run a visible DRaFT-LV
 * demonstration that ends in minutes on 2 CPU cores (docs/tutorial.md). */
static const char *const embedded_preset[][2] = {
    {"prompts", "@emoji"}, {"reward", "colorfulness"}, {"steps", "20"}, {"guidance", "5"},
    {"iters", "60"},       {"batch", "4"},             {"eval-images", "16"}, {"eval-every", "20"},
    {"save-every", "20"},  {"out", "runs/demo"},      {"checkpoint-blocks", "false"},   /* tiny: time, not memory */
    {"diversity-model", "clip"},   /* its own small CLIP */
    {"overwrite", "true"},         /* the demo again replaces the last one */
};
#define N_PRESET (int)(sizeof embedded_preset / sizeof embedded_preset[0])

static bool given[N_OPTS];   /* set by the command line or --config */

static const struct opt *find_opt(const char *name)
{
    for (int i = 0; i < N_OPTS; i++)
        if (!strcmp(opts[i].name, name)) return &opts[i];
    return NULL;
}

static void value_str(const struct draft_run_config *c, const struct opt *o, char *buf, size_t n)
{
    const char *p = (const char *)c + o->off;
    switch (o->kind) {
    case K_STR: snprintf(buf, n, "%s", p[0] ? p : "(none)"); break;
    case K_INT: snprintf(buf, n, "%d", *(const int *)p); break;
    case K_U64: snprintf(buf, n, "%" PRIu64, *(const uint64_t *)p); break;
    case K_DOUBLE: snprintf(buf, n, "%g", *(const double *)p); break;
    case K_BOOL: snprintf(buf, n, "%s", *(const bool *)p ? "true" : "false"); break;
    case K_METHOD: snprintf(buf, n, "%s", draft_method_name(*(const enum draft_method *)p)); break;
    case K_DTYPE: snprintf(buf, n, "%s", *(const enum dtype *)p == DTYPE_BF16 ? "bf16" : "f32"); break;
    case K_DEVICE: snprintf(buf, n, "%s", device_name(*(const enum device *)p)); break;
    case K_PRECISION: snprintf(buf, n, "%s", precision_name(*(const enum precision *)p)); break;
    case K_DECAY: snprintf(buf, n, "%s", nn_lr_decay_name(*(const enum nn_lr_decay *)p)); break;
    case K_SIZE:
        if (c->image_width == c->image_height) snprintf(buf, n, "%d", c->image_width);
        else snprintf(buf, n, "%dx%d", c->image_width, c->image_height);
        break;
    }
}

/* text from column col to column 100, words moved to continuation lines indented by 21 (the
 * options' help column); a word longer than a line stays whole */
static void print_wrapped(FILE *f, const char *text, int col)
{
    enum { WIDTH = 100, INDENT = 21 };
    const char *p = text;
    while (*p) {
        const char *w = p;
        while (*w == ' ') w++;
        const char *e = w;
        while (*e && *e != ' ') e++;
        const int len = (int)(e - w);
        if (!len) break;
        if (col > INDENT && col + 1 + len > WIDTH) {
            fprintf(f, "\n%*s", INDENT, "");
            col = INDENT;
        } else if (p != text) {
            fputc(' ', f);
            col++;
        }
        fwrite(w, 1, (size_t)len, f);
        col += len;
        p = e;
    }
    fputc('\n', f);
}

static void usage(FILE *f)
{
    struct draft_run_config d;
    draft_run_config_default(&d);
    fprintf(f, "usage: draft-run [--model DIR] [options]      (no --model: the embedded emoji model, see the end)\n"
               "Fine-tunes a LoRA on the UNet of a Stable Diffusion 1.x, 2.x or XL model so that a differentiable\n"
               "reward of its samples rises, by backpropagating through the DDIM sampler (DRaFT, Clark et al.\n"
               "2024).\n\n"
               "options (also accepted as keys of a JSON object in --config FILE; later flags override it):\n");
    for (int i = 0; i < N_OPTS; i++) {
        char def[1100], flag[64], text[2400];
        value_str(&d, &opts[i], def, sizeof def);
        snprintf(flag, sizeof flag, "--%s%s", opts[i].name, opts[i].kind == K_BOOL ? "[=BOOL]" : " X");
        if (strstr(opts[i].help, "(default: "))   /* a help that says its default in words */
            snprintf(text, sizeof text, "%s", opts[i].help);
        else
            snprintf(text, sizeof text, "%s (default: %s)", opts[i].help, def);
        fprintf(f, "  %-18s ", flag);
        print_wrapped(f, text, 2 + (strlen(flag) > 18 ? (int)strlen(flag) : 18) + 1);
    }
    fprintf(f, "  %-18s %s\n  %-18s %s\n  %-18s %s\n", "--config FILE", "read options from a JSON file",
            "--version", "the version, the commit and the backends (CPU, BLAS, GPU)",
            "--help", "this text\n"
            "A boolean flag may be negated as --no-NAME. Ctrl-C or SIGTERM saves a checkpoint and stops;\n"
            "--resume continues.\n"
            "The last line printed is: final: reward_before=<x> reward_after=<y> steps=<n> seconds=<s>");
    char dir[1024];
    bool found = draft_embedded_model(dir, sizeof dir) == STATUS_OK;
    fprintf(f, "\nWithout --model and --ckpt: the embedded emoji model, in\n  %s\nand for the options not given:\n ",
            found ? dir : "(not found: see models/README.md)");
    int col = 2;
    for (int i = 0; i < N_PRESET; i++) {   /* as a command line would give them: a boolean as --name=value */
        const struct opt *o = find_opt(embedded_preset[i][0]);
        char one[300];
        const int n = snprintf(one, sizeof one, "--%s%s%s", embedded_preset[i][0], o && o->kind == K_BOOL ? "=" : " ",
                               embedded_preset[i][1]);
        if (i && col + 1 + n > 100) fputs("\n ", f), col = 1;   /* a line break between options only */
        fprintf(f, " %s", one);
        col += 1 + n;
    }
    fputc('\n', f);
    fprintf(f, "(about 3 minutes on 2 CPU cores). With it, --reward clip:text=<words> uses its own CLIP model.\n");
}

/* set option o from text v; false with a message on a bad value */
static bool set_value(struct draft_run_config *c, const struct opt *o, const char *v, const char *where)
{
    char *p = (char *)c + o->off, *end = NULL;
    errno = 0;
    switch (o->kind) {
    case K_STR:
        if (strlen(v) >= o->size) {
            fprintf(stderr, "draft-run: %s: --%s is longer than %zu characters\n", where, o->name, o->size - 1);
            return false;
        }
        memcpy(p, v, strlen(v) + 1);
        return true;
    case K_INT: {
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end || x < INT_MIN || x > INT_MAX) break;
        *(int *)p = (int)x;
        return true;
    }
    case K_U64: {
        if (v[0] == '-') break;
        unsigned long long x = strtoull(v, &end, 10);
        if (errno || end == v || *end) break;
        *(uint64_t *)p = x;
        return true;
    }
    case K_DOUBLE: {
        double x = strtod(v, &end);
        if (errno || end == v || *end || !isfinite(x)) break;
        *(double *)p = x;
        return true;
    }
    case K_BOOL:
        if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes")) *(bool *)p = true;
        else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no")) *(bool *)p = false;
        else break;
        return true;
    case K_METHOD:
        if (draft_method_parse(v, (enum draft_method *)p)) return true;
        fprintf(stderr, "draft-run: %s: --method '%s' is not one of full, k, lv, refl, alignprop, drtune\n", where, v);
        return false;
    case K_DTYPE:
        if (!strcmp(v, "f32") || !strcmp(v, "float32")) *(enum dtype *)p = DTYPE_F32;
        else if (!strcmp(v, "bf16") || !strcmp(v, "bfloat16")) *(enum dtype *)p = DTYPE_BF16;
        else {
            fprintf(stderr, "draft-run: %s: --dtype '%s' is not f32 or bf16\n", where, v);
            return false;
        }
        return true;
    case K_DEVICE:
        if (draft_device_parse(v, (enum device *)p)) return true;
        fprintf(stderr, "draft-run: %s: --device '%s' is not cpu or cuda\n", where, v);
        return false;
    case K_PRECISION:
        if (precision_parse(v, (enum precision *)p)) return true;
        fprintf(stderr, "draft-run: %s: --precision '%s' is not f32, tf32 or bf16\n", where, v);
        return false;
    case K_DECAY:
        if (nn_lr_decay_parse(v, (enum nn_lr_decay *)p)) return true;
        fprintf(stderr, "draft-run: %s: --lr-decay '%s' is not constant, linear or cosine\n", where, v);
        return false;
    case K_SIZE:   /* the two fields; "0" keeps the model's default */
        if (!strcmp(v, "0")) c->image_width = c->image_height = 0;
        else if (!draft_size_parse(v, &c->image_width, &c->image_height)) break;
        return true;
    }
    static const char *const kinds[] = {"text", "an integer", "a non-negative integer", "a finite number",
                                        "true or false", "a method", "a dtype", "a device", "a precision",
                                        "a size in pixels (512, or width x height: 768x512)", "a decay"};
    fprintf(stderr, "draft-run: %s: --%s expects %s, got '%s'\n", where, o->name, kinds[o->kind], v);
    return false;
}

static bool set_given(struct draft_run_config *c, const struct opt *o, const char *v, const char *where)
{
    if (!set_value(c, o, v, where)) return false;
    given[o - opts] = true;
    return true;
}

static bool load_config(struct draft_run_config *c, const char *path)
{
    cJSON *root = nn_json_file(path, (size_t)1 << 20);
    bool ok = root != NULL;
    if (!ok) fprintf(stderr, "draft-run: --config: %s\n", tensor_error());
    for (cJSON *it = ok ? root->child : NULL; it && ok; it = it->next) {
        const struct opt *o = find_opt(it->string);
        char where[1200], buf[64];
        snprintf(where, sizeof where, "--config %s", path);
        if (!o) {
            fprintf(stderr, "draft-run: %s: unknown key \"%s\" (draft-run --help lists them)\n", where, it->string);
            ok = false;
        } else if (cJSON_IsString(it)) {
            ok = set_given(c, o, it->valuestring, where);
        } else if (cJSON_IsBool(it)) {
            ok = set_given(c, o, cJSON_IsTrue(it) ? "true" : "false", where);
        } else if (cJSON_IsNumber(it)) {
            if ((o->kind == K_INT || o->kind == K_U64 || o->kind == K_SIZE) && fabs(it->valuedouble) < 18446744073709551616.0)
                snprintf(buf, sizeof buf, "%.0f", it->valuedouble);   /* from 2^64 on as 1e+300: refused, not cut to 64 digits */
            else snprintf(buf, sizeof buf, "%.17g", it->valuedouble);
            if ((o->kind == K_INT || o->kind == K_U64 || o->kind == K_SIZE) && it->valuedouble != floor(it->valuedouble)) {
                fprintf(stderr, "draft-run: %s: \"%s\" must be an integer\n", where, it->string);
                ok = false;
            } else {
                ok = set_given(c, o, buf, where);
            }
        } else {
            fprintf(stderr, "draft-run: %s: \"%s\" has a value of the wrong type\n", where, it->string);
            ok = false;
        }
    }
    cJSON_Delete(root);
    return ok;
}

/* every option as a JSON object that load_config reads back to the same config: numbers that
 * round-trip (cJSON prints 17 digits where 15 do not), the seed as text (past 2^53 a JSON
 * number would round it), and resume, dry-run and overwrite false, so the file starts the run
 * itself and replaces none */
static char *config_json(const struct draft_run_config *c)
{
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; o && i < N_OPTS; i++) {
        const struct opt *op = &opts[i];
        const char *p = (const char *)c + op->off;
        char buf[1100];
        cJSON *v;
        switch (op->kind) {
        case K_STR: v = cJSON_CreateString(p); break;
        case K_INT: v = cJSON_CreateNumber(*(const int *)p); break;
        case K_DOUBLE: v = cJSON_CreateNumber(*(const double *)p); break;
        case K_BOOL:   /* the file starts the run itself: not a resume, not a dry run, and replaces no run */
            v = cJSON_CreateBool(op->off != offsetof(struct draft_run_config, resume) &&
                                 op->off != offsetof(struct draft_run_config, dry_run) &&
                                 op->off != offsetof(struct draft_run_config, overwrite) && *(const bool *)p);
            break;
        default: value_str(c, op, buf, sizeof buf), v = cJSON_CreateString(buf); break;
        }
        if (!v || !cJSON_AddItemToObject(o, op->name, v)) {
            cJSON_Delete(v);
            cJSON_Delete(o);
            o = NULL;
        }
    }
    char *text = o ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    return text;
}

/* Ctrl-C, or a scheduler's SIGTERM before its kill (SLURM at the time limit, docker stop): a
 * checkpoint after the current step; the same signal again ends at once */
static volatile sig_atomic_t stop_signal;
static void on_stop_signal(int sig)
{
    stop_signal = sig;
    draft_run_request_stop();
    signal(sig, SIG_DFL);
}

/* The options in order of precedence, low to high: the defaults, `base` (a run folder's own
 * config.json, for --resume), the --config files, the command line's flags, and for what none of
 * them set, the embedded model's preset. Returns -1 to go on, else the exit status. */
static int build_config(struct draft_run_config *c, int argc, char **argv, const char *base, bool *had_config)
{
    draft_run_config_default(c);
    memset(given, 0, sizeof given);
    *had_config = false;
    if (base && !load_config(c, base)) return 2;
    /* the config file first, so flags override it wherever they stand */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (draft_tool_info_flag(a, usage)) return 0;   /* --version, --help */
        if (!strncmp(a, "--config", 8) && (a[8] == 0 || a[8] == '=')) {
            const char *v = a[8] == '=' ? a + 9 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v) {
                fprintf(stderr, "draft-run: --config needs a file\n");
                return 2;
            }
            if (!load_config(c, v)) return 2;
            *had_config = true;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strncmp(a, "--config", 8) && (a[8] == 0 || a[8] == '=')) {
            if (a[8] == 0) i++;
            continue;
        }
        if (strncmp(a, "--", 2)) {
            fprintf(stderr, "draft-run: unexpected argument '%s' (options start with --; see --help)\n", a);
            return 2;
        }
        char name[128];
        const char *eq = strchr(a + 2, '='), *v = NULL;
        size_t len = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
        if (len >= sizeof name) len = sizeof name - 1;
        memcpy(name, a + 2, len);
        name[len] = 0;
        const struct opt *o = find_opt(name);
        bool negated = false;
        if (!o && !strncmp(name, "no-", 3)) {   /* --no-checkpoint */
            o = find_opt(name + 3);
            if (o && o->kind == K_BOOL && !eq) negated = true;
            else o = NULL;
        }
        if (!o) {
            fprintf(stderr, "draft-run: unknown option '--%s' (see --help)\n", name);
            return 2;
        }
        if (negated) v = "false";
        else if (eq) v = eq + 1;
        else if (o->kind == K_BOOL) v = "true";
        else if (i + 1 < argc) v = argv[++i];
        else {
            fprintf(stderr, "draft-run: --%s needs a value (see --help)\n", name);
            return 2;
        }
        if (!set_given(c, o, v, "command line")) return 2;
    }
    if (!c->model[0] && !c->ckpt[0]) {
        if (draft_embedded_model(c->model, sizeof c->model)) {
            fprintf(stderr, "draft-run: %s\n", tensor_error());
            return 1;
        }
        for (int i = 0; i < N_PRESET; i++) {
            const struct opt *o = find_opt(embedded_preset[i][0]);
            if (!given[o - opts] && !set_value(c, o, embedded_preset[i][1], "embedded preset")) return 1;
        }
        fprintf(stderr, "draft-run: no --model: the embedded emoji model in %s, method %s, reward %s, %d steps "
                        "(draft-run --help for the options)\n",
                c->model, draft_method_name(c->method.method), c->reward, c->iters);
    }
    return -1;
}

int main(int argc, char **argv)
{
    struct draft_run_config c;
    bool had_config;
    int rc = build_config(&c, argc, argv, NULL, &had_config);
    if (rc >= 0) return rc;
    /* --resume without --config: the run folder's own options, which the flags given now override
     * (so `draft-run --resume --out runs/x --iters 400` goes on as runs/x was started) */
    char own[1100];
    snprintf(own, sizeof own, "%s/config.json", c.out);
    if (c.resume && !had_config && nn_file_exists(own)) {
        if ((rc = build_config(&c, argc, argv, own, &had_config)) >= 0) return rc;
        fprintf(stderr, "draft-run: --resume: the options of %s, and the flags given here\n", own);
    }

    char *json = config_json(&c);
    if (!json) {
        fprintf(stderr, "draft-run: out of memory\n");
        return 1;
    }
    c.config_json = json;
    signal(SIGINT, on_stop_signal);
    signal(SIGTERM, on_stop_signal);
    struct draft_run_result res;
    enum status s = draft_run(&c, &res);
    free(json);
    if (s) {
        fprintf(stderr, "draft-run: %s\n", tensor_error());
        return 1;
    }
    if (c.dry_run) {
        printf("dry-run: step_seconds=%.3f step_peak_mib=%.1f eval_seconds=%.3f eval_peak_mib=%.1f resident_mib=%.1f "
               "projected_seconds=%.1f available_mib=%.1f fit_batch=%d\n",
               res.step_seconds, (double)res.step_peak_bytes / 1048576.0, res.eval_seconds,
               (double)res.eval_peak_bytes / 1048576.0, (double)res.resident_bytes / 1048576.0, res.projected_seconds,
               res.available_bytes >= 0 ? (double)res.available_bytes / 1048576.0 : -1.0, res.fit_batch);
        return 0;
    }
    if (res.interrupted) {
        printf("stopped: steps=%d seconds=%.1f (checkpoint in %s; continue with --resume)\n", res.steps, res.seconds, c.out);
        return 128 + (stop_signal ? stop_signal : SIGINT);   /* 130 for Ctrl-C, 143 for SIGTERM */
    }
    const double rel = res.reward_before != 0 ? 100.0 * (res.reward_after - res.reward_before) / fabs(res.reward_before) : 0;
    printf("reward on %d held-out seed%s: %.4f -> %.4f (%+.0f%%)", c.eval_images, c.eval_images > 1 ? "s" : "",
           res.reward_before, res.reward_after, rel);
    if (isfinite(res.diversity_before) && isfinite(res.diversity_after))   /* one image has none */
        printf("; diversity %.3f -> %.3f", res.diversity_before, res.diversity_after);
    if (isfinite(res.clip_diversity_before) && isfinite(res.clip_diversity_after))
        printf("; CLIP diversity %.3f -> %.3f", res.clip_diversity_before, res.clip_diversity_after);
    printf("\n");
    printf("images: %s/before.png %s/after.png; LoRA: %s/lora.safetensors\n", c.out, c.out, c.out);
    printf("report: %s/report.html\n", c.out);
    printf("final: reward_before=%.6f reward_after=%.6f steps=%d seconds=%.1f\n", res.reward_before, res.reward_after,
           res.steps, res.seconds);
    return 0;
}
