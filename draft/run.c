/* run.c — a DRaFT training run (see run.h). */
#include "draft/run.h"
#include "draft/version.h"

#include "diffusion/lora.h"
#include "draft/image.h"
#include "draft/report.h"
#include "nn/file.h"
#include "tensor/alloc.h"
#ifdef TENSOR_HAVE_CUDA
#include "tensor/cuda/cuda.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;

void draft_run_request_stop(void) { stop_requested = 1; }

void draft_run_config_default(struct draft_run_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->reward, sizeof c->reward, "colorfulness");
    snprintf(c->prompts, sizeof c->prompts, "@animals");
    snprintf(c->out, sizeof c->out, "runs/draft");
    c->dtype = DTYPE_F32;
    c->device = DEVICE_CPU;
    c->precision = PRECISION_F32;
    draft_method_config_default(&c->method);
    c->lora_rank = 8;
    c->lora_alpha = 8;
    snprintf(c->lora_targets, sizeof c->lora_targets, "to_q,to_k,to_v,to_out.0");   /* DRAFT.md: every attention */
    c->opt = nn_adamw_config_default();
    c->opt.lr = 4e-4;          /* DRAFT.md: LoRA rank 8, lr 4e-4, AdamW weight decay 0.1 */
    c->opt.weight_decay = 0.1;
    c->opt.max_grad_norm = 1.0;
    c->batch = 4;
    c->iters = 200;
    c->seed = 0;
    c->eval_images = 8;
    c->eval_every = 0;
    c->save_every = 50;
    c->skip_nonfinite = 3;
    c->progress = true;
}

const char *draft_version(void) { return "draft " DRAFT_PROJECT_VERSION " (git " DRAFT_GIT_DESCRIBE ")"; }

const char *draft_engine_describe(enum device dev, char *buf, size_t n)
{
    char cpu[512], gpu[512] = "";
    tensor_backend_describe(DEVICE_CPU, cpu, sizeof cpu);
    if (dev == DEVICE_CUDA) tensor_backend_describe(DEVICE_CUDA, gpu, sizeof gpu);
    snprintf(buf, n, "%s; cpu: %s%s%s", draft_version(), cpu, gpu[0] ? "; cuda: " : "", gpu);
    return buf;
}

bool draft_tool_info_flag(const char *a, void (*usage)(FILE *))
{
    if (!strcmp(a, "--version")) {
        char e[1200];
        printf("%s\n", draft_engine_describe(DEVICE_CUDA, e, sizeof e));
        return true;
    }
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
        usage(stdout);
        return true;
    }
    return false;
}

/* ---------------------------------------------------------------- devices */

bool draft_device_parse(const char *s, enum device *dev)
{
    if (!strcmp(s, "cpu")) *dev = DEVICE_CPU;
    else if (!strcmp(s, "cuda")) *dev = DEVICE_CUDA;
    else return false;
    return true;
}

/* one side of a size: digits only (no sign or space), 1..65536; *end after them */
static bool size_side(const char *p, const char **end, int *v)
{
    if (*p < '0' || *p > '9') return false;
    char *e;
    errno = 0;
    const long x = strtol(p, &e, 10);
    if (errno || x < 1 || x > 65536) return false;
    *end = e;
    *v = (int)x;
    return true;
}

/* a folder (a draft-run's) stands for its lora.safetensors: appended in place; false if it does not fit */
static bool lora_dir_to_file(char *path, size_t n)
{
    static const char file[] = "/lora.safetensors";
    struct stat st;
    if (stat(path, &st) || !S_ISDIR(st.st_mode)) return true;
    const size_t len = strlen(path);
    if (len + sizeof file > n) return false;
    memcpy(path + len, file, sizeof file);
    return true;
}

int draft_lora_arg_parse_list(const char *arg, char *path, size_t n, double *scales, int max)
{
    if (max < 1 || (size_t)snprintf(path, n, "%s", arg) >= n) return 0;
    char *colon = strrchr(path, ':');
    int k = 0;
    for (const char *q = colon ? colon + 1 : NULL; q; k++) {   /* every item a number, else ':' is the path's */
        char *end = NULL;
        const double x = strtod(q, &end);
        if (end == q || (*end && *end != ',') || !isfinite(x)) {
            k = 0;
            break;
        }
        if (k < max) scales[k] = x;
        q = *end ? end + 1 : NULL;
    }
    if (k > max) return -1;
    struct stat st;
    if (!k && colon && stat(path, &st)) {   /* no such path: a mistyped scale after an existing one? */
        *colon = 0;
        const bool before = !stat(path, &st);
        *colon = ':';
        if (before) return -2;
    }
    if (k) *colon = 0;
    else scales[0] = 1.0, k = 1;
    return lora_dir_to_file(path, n) ? k : 0;
}

const char *draft_lora_file(const char *path, char *buf, size_t n)
{
    if ((size_t)snprintf(buf, n, "%s", path) >= n || !lora_dir_to_file(buf, n)) return path;
    return buf;
}

bool draft_size_parse(const char *s, int *width, int *height)
{
    const char *p;
    int w, h;
    if (!size_side(s, &p, &w)) return false;
    if (!*p) h = w;
    else if (*p != 'x' || !size_side(p + 1, &p, &h) || *p) return false;
    *width = w;
    *height = h;
    return true;
}

enum status draft_device_check(enum device dev)
{
    if (dev == DEVICE_CPU) return STATUS_OK;
    if (dev != DEVICE_CUDA) return tensor_fail(STATUS_VALUE, "unknown device %d (cpu or cuda)", (int)dev);
#ifndef TENSOR_HAVE_CUDA
    return tensor_fail(STATUS_DEVICE, "--device cuda: this build has no CUDA backend (nvcc was not found when it was "
                                      "configured, or -Dcuda=disabled); reconfigure with -Dcuda=enabled where the CUDA "
                                      "toolkit is installed, or use --device cpu");
#else
    if (cuda_init())
        return tensor_fail(STATUS_DEVICE, "--device cuda is not usable here: %s; use --device cpu", tensor_error());
    return STATUS_OK;
#endif
}

/* ---------------------------------------------------------------- the embedded model */

#ifndef DRAFT_SOURCE_MODELS_DIR
#define DRAFT_SOURCE_MODELS_DIR "models"
#endif

enum status draft_embedded_model(char *dir, size_t n)
{
    const char *env = getenv("DRAFT_EMBEDDED_MODEL");
    const char *places[3] = {env && *env ? env : NULL, DRAFT_SOURCE_MODELS_DIR "/emoji", "models/emoji"};
    for (int i = 0; i < 3; i++) {
        char index[4200];
        if (!places[i] || strlen(places[i]) >= n) continue;
        snprintf(index, sizeof index, "%s/model_index.json", places[i]);
        if (nn_file_exists(index)) {
            snprintf(dir, n, "%s", places[i]);
            return STATUS_OK;
        }
    }
    return tensor_fail(STATUS_IO, "no --model given and the embedded model is not in %s%s%s/emoji or ./models/emoji "
                       "(no model_index.json); give --model DIR, or rebuild it with the command in models/README.md",
                       env && *env ? env : "", env && *env ? ", " : "", DRAFT_SOURCE_MODELS_DIR);
}

/* ---------------------------------------------------------------- prompts */

static const char *const animals[] = {
    "cat",     "dog",    "horse", "monkey",  "rabbit", "zebra",   "spider", "bird",     "sheep",
    "deer",    "cow",    "goat",  "lion",    "tiger",  "bear",    "raccoon", "fox",     "wolf",
    "lizard",  "beetle", "ant",   "butterfly", "fish", "shark",   "whale",  "dolphin",  "squirrel",
    "mouse",   "rat",    "snake", "turtle",  "frog",   "chicken", "duck",   "goose",    "bee",
    "pig",     "turkey", "fly",   "llama",   "camel",  "bat",     "gorilla", "hedgehog", "kangaroo",
};

static const char *const emoji_prompts[] = {
    "red apple", "grinning face", "taxi", "fire", "green heart", "sun", "cat face", "rocket",
    "pizza", "snowman", "rainbow", "tulip", "ghost", "banana", "blue circle", "star",
};

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

void draft_prompts_free(char **prompts, int n)
{
    for (int i = 0; i < n && prompts; i++) free(prompts[i]);
    free(prompts);
}

enum status draft_prompts_load(const char *spec, char ***prompts, int *n)
{
    *prompts = NULL;
    *n = 0;
    int cap = 64, k = 0;
    char **v = malloc((size_t)cap * sizeof *v);
    if (!v) return tensor_fail(STATUS_OOM, "out of host memory");
    if (spec[0] == '@') {
        const char *const *set = NULL;
        int m = 0;
        bool photo = false;
        if (!strcmp(spec, "@animals")) set = animals, m = (int)(sizeof animals / sizeof *animals), photo = true;
        else if (!strcmp(spec, "@emoji")) set = emoji_prompts, m = (int)(sizeof emoji_prompts / sizeof *emoji_prompts);
        else {
            free(v);
            return tensor_fail(STATUS_VALUE, "unknown prompt set '%s' (built in: @animals, @emoji; or a file path)", spec);
        }
        for (int i = 0; i < m; i++) {
            char buf[256];
            snprintf(buf, sizeof buf, photo ? "a photo of a %s" : "%s", set[i]);
            if (k == cap) {
                char **nv = realloc(v, (size_t)(cap *= 2) * sizeof *v);
                if (!nv) break;
                v = nv;
            }
            if (!(v[k] = dup_str(buf))) break;
            k++;
        }
        if (k != m) {
            draft_prompts_free(v, k);
            return tensor_fail(STATUS_OOM, "out of host memory");
        }
    } else {
        FILE *f = fopen(spec, "r");
        if (!f) {
            free(v);
            return tensor_fail(STATUS_IO, "%s: cannot open the prompt file: %s", spec, strerror(errno));
        }
        char line[4096];
        int lineno = 0;
        while (fgets(line, sizeof line, f)) {
            lineno++;
            size_t L = strlen(line);
            if (L == sizeof line - 1 && line[L - 1] != '\n') {
                fclose(f);
                draft_prompts_free(v, k);
                return tensor_fail(STATUS_FORMAT, "%s:%d: line longer than %zu bytes", spec, lineno, sizeof line - 2);
            }
            while (L && (line[L - 1] == '\n' || line[L - 1] == '\r' || line[L - 1] == ' ')) line[--L] = 0;
            char *s = line;
            while (*s == ' ' || *s == '\t') s++;
            if (!*s || *s == '#') continue;
            if (k == cap) {
                char **nv = realloc(v, (size_t)(cap *= 2) * sizeof *v);
                if (!nv) break;
                v = nv;
            }
            if (!(v[k] = dup_str(s))) break;
            k++;
        }
        bool err = ferror(f) || !feof(f);
        fclose(f);
        if (err) {
            draft_prompts_free(v, k);
            return tensor_fail(STATUS_IO, "%s: read error", spec);
        }
        if (!k) {
            free(v);
            return tensor_fail(STATUS_VALUE, "%s: no prompts (one a line; '#' starts a comment)", spec);
        }
    }
    *prompts = v;
    *n = k;
    return STATUS_OK;
}

/* ---------------------------------------------------------------- determinism */

/* splitmix64: the per-step generators are seeded by (seed, step, stream), nothing carries over */
static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t stream_seed(uint64_t seed, uint64_t step, uint64_t stream)
{
    return mix64(mix64(seed ^ 0x5eedULL) + mix64(step * 4 + stream));
}

enum { STREAM_PROMPTS, STREAM_LATENTS, STREAM_TRUNC };
#define EVAL_SEED_BASE 0x4556414cULL   /* held-out: never equal to a training stream seed */

/* ---------------------------------------------------------------- the run */

/* what one evaluation on the held-out seeds measures */
struct eval_result {
    double reward, diversity, held;   /* held: the eval reward's mean (NaN without one) */
    double clip_div;                  /* diversity in the diversity model's embeddings (NaN without one) */
    double terms[DRAFT_REWARD_MAX_TERMS];   /* a sum reward's terms, unweighted (run.n_terms of them) */
    double held_terms[DRAFT_REWARD_MAX_TERMS];   /* the same for a sum eval reward (run.n_held_terms) */
};

struct run {
    const struct draft_run_config *c;
    struct sd_pipeline p;
    struct sd_lora lora;
    struct nn_adamw opt;
    struct draft_reward *reward, *eval_reward;
    struct draft_reward *div_model;   /* owned unless it is `reward` (the same spec) */
    int n_terms;   /* the reward's terms when it is a sum, else 0 */
    struct draft_reward_term terms[DRAFT_REWARD_MAX_TERMS];
    char engine[1024];   /* draft_engine_describe, once: in every checkpoint and the report */
    const char *earlier;   /* a dry run into an earlier run's --out without --resume/--overwrite: its file */
    int n_held_terms;   /* the eval reward's, the same way */
    struct draft_reward_term held_terms[DRAFT_REWARD_MAX_TERMS];
    double held_terms_after[DRAFT_REWARD_MAX_TERMS];   /* their values at the last evaluation, for the report */
    char **prompts, **eval_list;   /* eval_list: --eval-prompts' (NULL: the training prompts) */
    int n_prompts, n_eval_list;
    int64_t latent_c, latent_h, latent_w;
    int step;                 /* optimiser steps done */
    int skipped;              /* of them, skipped for a gradient that was not finite (--skip-nonfinite) */
    FILE *metrics;
    double *curve_x, *curve_y, *curve_ex, *curve_ey;   /* train reward per step; eval reward */
    int n_curve, n_eval_curve, cap_curve;
    double t_start;
    /* eval set: fixed seeds, prompts cycled */
    struct tensor *eval_latents, *eval_context;
    const char **eval_prompts;
    struct eval_result before;   /* the held-out evaluation before training */
    double *img_before, *img_after;   /* each held-out image's reward before and after [eval_images] */
    double best;                      /* --keep-best: the highest held-out value so far, and its step */
    int best_step;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void path_in(const struct run *r, char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", r->c->out, name);
}

/* latents for `n` images from the engine RNG seeded by `seed` */
static struct tensor *latents_for(struct run *r, int n, uint64_t seed)
{
    ag_rng_set(seed, 0);
    return ag_randn(sd_pipeline_dtype(&r->p), 4, (int64_t[]){n, r->latent_c, r->latent_h, r->latent_w}, r->p.device);
}

/* [uncond; cond] text embeddings for n prompts, no graph; the unconditional rows are the
 * negative prompt's (the empty prompt by default) */
static struct tensor *context_for(struct run *r, int n, const char *const *prompts)
{
    const char **neg = calloc((size_t)n, sizeof *neg);
    if (!neg) {
        tensor_fail(STATUS_OOM, "out of host memory");
        return NULL;
    }
    for (int i = 0; i < n; i++) neg[i] = r->c->negative_prompt;
    ag_no_grad_begin();
    tensor_scope_begin();
    struct tensor *ctx = sd_pipeline_context(&r->p, sd_pipeline_tokenize(&r->p, n, neg), sd_pipeline_tokenize(&r->p, n, prompts));
    ctx = tensor_scope_return(ctx);
    ag_no_grad_end();
    free(neg);
    return ctx;
}

static void curve_push(struct run *r, bool eval, double x, double y)
{
    int *n = eval ? &r->n_eval_curve : &r->n_curve;
    if (*n == r->cap_curve) {
        int cap = r->cap_curve ? 2 * r->cap_curve : 256;
        double *a = realloc(r->curve_x, (size_t)cap * sizeof *a), *b = a ? realloc(r->curve_y, (size_t)cap * sizeof *b) : NULL;
        if (a) r->curve_x = a;
        if (b) r->curve_y = b;
        double *cx = b ? realloc(r->curve_ex, (size_t)cap * sizeof *cx) : NULL;
        if (cx) r->curve_ex = cx;
        double *cy = cx ? realloc(r->curve_ey, (size_t)cap * sizeof *cy) : NULL;
        if (cy) r->curve_ey = cy;
        if (!cy) return;   /* out of memory: the chart loses points, the run goes on */
        r->cap_curve = cap;
    }
    if (*n >= r->cap_curve) return;
    (eval ? r->curve_ex : r->curve_x)[*n] = x;
    (eval ? r->curve_ey : r->curve_y)[*n] = y;
    (*n)++;
}

/* metrics.jsonl numbers: JSON has no NaN or infinity, so a value that is not finite (the
 * diversity of a single image, a diverged reward) is written as null */
static const char *jnum(char *buf, size_t n, const char *fmt, double v)
{
    if (!isfinite(v)) return "null";
    snprintf(buf, n, fmt, v);
    return buf;
}

/* the same for messages: a value that is not finite spelled out (printf's "-nan" reads like a number) */
static const char *tnum(char *buf, size_t n, const char *fmt, double v)
{
    return isfinite(v) ? jnum(buf, n, fmt, v) : isnan(v) ? "NaN" : v > 0 ? "inf" : "-inf";
}

/* ', "reward_terms": [...]': a sum reward's terms, unweighted, in the spec's order (none for n = 0) */
static void metrics_terms(FILE *f, const char *key, int n, const double *terms)
{
    char a[32];
    for (int i = 0; i < n; i++) {
        if (!i) fprintf(f, ", \"%s\": [", key);
        else fputs(", ", f);
        fputs(jnum(a, sizeof a, "%.9g", terms[i]), f);
    }
    if (n) fputc(']', f);
}

/* one line of metrics.jsonl for an evaluation on the held-out seeds ("eval_reward" only with one) */
static void metrics_eval(const struct run *r, int step, const struct eval_result *e)
{
    FILE *f = r->metrics;
    char a[32], b[32], c[32];
    fprintf(f, "{\"step\": %d, \"eval\": true, \"reward\": %s, \"diversity\": %s", step,
            jnum(a, sizeof a, "%.9g", e->reward), jnum(b, sizeof b, "%.6g", e->diversity));
    if (r->eval_reward) fprintf(f, ", \"eval_reward\": %s", jnum(c, sizeof c, "%.9g", e->held));
    if (r->div_model) fprintf(f, ", \"clip_diversity\": %s", jnum(c, sizeof c, "%.6g", e->clip_div));
    metrics_terms(f, "reward_terms", r->n_terms, e->terms);
    metrics_terms(f, "eval_reward_terms", r->n_held_terms, e->held_terms);
    fputs("}\n", f);
    fflush(f);
}

/* evaluation on the held-out seeds: mean reward, diversity, and a grid (path may be NULL) */
static enum status evaluate(struct run *r, const char *grid_path, struct eval_result *e, double *per_image)
{
    struct tensor *images = NULL;
    enum status s = draft_sample_eval(&r->p, &r->c->method, r->reward, r->eval_latents, r->eval_context,
                                      r->eval_prompts, &images, &e->reward, per_image);
    if (s) return s;
    draft_reward_terms_take(r->reward, e->terms);   /* this evaluation's images: each scoring is taken after it */
    e->diversity = draft_diversity(images);
    e->held = e->clip_div = NAN;
    for (int k = 0; k < DRAFT_REWARD_MAX_TERMS; k++) e->held_terms[k] = NAN;
    if (r->div_model && images->shape[0] > 1) {   /* one image has no diversity */
        struct tensor *emb = draft_reward_image_embeds(r->div_model, images);
        if (!emb) s = tensor_status();
        else e->clip_div = draft_feature_diversity(emb);
        tensor_free(emb);
    }
    if (r->eval_reward) {   /* the same images, scored by the second reward */
        s = draft_reward_score_values(r->eval_reward, images, r->eval_prompts, NULL, &e->held);
        draft_reward_terms_take(r->eval_reward, e->held_terms);
    }
    if (!s && grid_path) {
        const int n = (int)images->shape[0];
        s = draft_grid_save(grid_path, images, n <= 4 ? n : (n + 1) / 2, 0, r->eval_prompts);
    }
    tensor_free(images);
    return s;
}

/* <out>/eval_scores.jsonl: each held-out image's prompt and reward before and after (null when
 * not finite, or unknown after resuming from a checkpoint that did not keep them) */
static enum status write_eval_scores(const struct run *r)
{
    char path[1200];
    path_in(r, path, sizeof path, "eval_scores.jsonl");
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    bool ok = f != NULL;
    for (int i = 0; i < r->c->eval_images && ok; i++) {
        cJSON *o = cJSON_CreateObject();
        ok = o && cJSON_AddNumberToObject(o, "image", i) && cJSON_AddStringToObject(o, "prompt", r->eval_prompts[i]);
        const double v[2] = {r->img_before[i], r->img_after[i]};
        const char *k[2] = {"before", "after"};
        for (int j = 0; j < 2 && ok; j++)
            ok = isfinite(v[j]) ? cJSON_AddNumberToObject(o, k[j], v[j]) != NULL : cJSON_AddNullToObject(o, k[j]) != NULL;
        char *line = ok ? cJSON_PrintUnformatted(o) : NULL;
        ok = line && fprintf(f, "%s\n", line) > 0;
        free(line);
        cJSON_Delete(o);
    }
    if (f && fclose(f)) ok = false;
    const enum status s = ok ? draft_file_write_atomic(path, text, len) : tensor_fail(STATUS_OOM, "%s: out of memory", path);
    free(text);
    return s;
}

/* --keep-best: the LoRA as it is at an evaluation that beats every earlier one */
static enum status keep_best(struct run *r, const struct eval_result *e)
{
    if (!r->c->keep_best[0]) return STATUS_OK;
    const double v = !strcmp(r->c->keep_best, "reward") ? e->reward : e->held;
    if (!isfinite(v) || (r->best_step >= 0 && !(v > r->best))) return STATUS_OK;
    char path[1200];
    path_in(r, path, sizeof path, "lora_best.safetensors");
    enum status s = sd_lora_save(&r->lora, path, SD_LORA_PEFT);
    if (!s) r->best = v, r->best_step = r->step;
    return s;
}

/* ---------------------------------------------------------------- checkpoints */

/* one file: "lora.<param>" tensors, the optimiser's state, and the run's metadata */
static enum status draft_checkpoint_save(const char *path, const struct sd_lora *l, const struct nn_adamw *o, int n_meta,
                                         const char *const *mk, const char *const *mv)
{
    const int nl = l->params.n, na = nn_adamw_state_count(o), n = nl + na;
    char **names = calloc((size_t)n, sizeof *names);
    struct tensor **ts = calloc((size_t)n, sizeof *ts);
    const char *keys[32], *vals[32];
    char abuf[NN_ADAMW_META][32];
    enum status s = names && ts && n_meta + NN_ADAMW_META <= 32 ? STATUS_OK : tensor_fail(STATUS_OOM, "out of host memory");
    for (int i = 0; i < nl && !s; i++) {
        size_t len = strlen(l->params.v[i].name) + 6;
        if (!(names[i] = malloc(len))) s = tensor_fail(STATUS_OOM, "out of host memory");
        else snprintf(names[i], len, "lora.%s", l->params.v[i].name);
        ts[i] = tensor_ref(l->params.v[i].t);
    }
    if (!s) s = nn_adamw_state_collect(o, names + nl, ts + nl, keys + n_meta, vals + n_meta, abuf);
    for (int i = 0; i < n_meta; i++) keys[i] = mk[i], vals[i] = mv[i];
    if (!s) s = safetensors_save(path, n, (const char *const *)names, ts, n_meta + NN_ADAMW_META, keys, vals);
    for (int i = 0; i < n && names; i++) free(names[i]);
    for (int i = 0; i < n && ts; i++) tensor_free(ts[i]);
    free(names);
    free(ts);
    return s;
}

static enum status draft_checkpoint_load(const struct safetensors *st, struct sd_lora *l, struct nn_adamw *o)
{
    char key[600];
    for (int i = 0; i < l->params.n; i++) {
        snprintf(key, sizeof key, "lora.%s", l->params.v[i].name);
        if (!safetensors_find(st, key))
            return tensor_fail(STATUS_FORMAT, "%s: no '%s': the checkpoint is of another LoRA (rank, targets or model)",
                               st->path, key);
        enum status s = safetensors_load_into(st, key, l->params.v[i].t);
        if (s) return s;
    }
    return nn_adamw_state_read(o, st);
}

/* the images' size, "WxH" */
static void size_str(const struct run *r, char *buf, size_t n)
{
    const int64_t f = (int64_t)1 << (r->p.vae.cfg.n_blocks - 1);   /* pixels per latent */
    snprintf(buf, n, "%lldx%lld", (long long)(r->latent_w * f), (long long)(r->latent_h * f));
}

/* what the held-out evaluation scores, "<images>:<FNV-1a 64 of its prompts>": a resumed run must
 * score the same set, or its values would not compare with the checkpoint's 'before' */
static void eval_set_str(const struct run *r, char *buf, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (int i = 0; i < r->c->eval_images; i++)
        for (const unsigned char *p = (const unsigned char *)r->eval_prompts[i];; p++) {
            h = (h ^ *p) * 0x100000001b3ULL;   /* the NUL too: prompts are separated */
            if (!*p) break;
        }
    snprintf(buf, n, "%d:%016llx", r->c->eval_images, (unsigned long long)h);
}

/* a number in the fewest of 15 or 17 digits that reads back exactly */
static void num_str(char *buf, size_t n, double v)
{
    snprintf(buf, n, "%.15g", v);
    if (strtod(buf, NULL) != v) snprintf(buf, n, "%.17g", v);
}

/* the learning-rate schedule, as the checkpoint keeps it: a decay is planned over --iters updates,
 * so a resume must keep them (and --lr, --lr-min, --warmup) */
static void schedule_str(const struct draft_run_config *c, char *buf, size_t n)
{
    if (c->opt.decay == NN_LR_CONSTANT) {
        snprintf(buf, n, "constant");
        return;
    }
    char lr[32], lo[32];
    num_str(lr, sizeof lr, c->opt.lr);
    num_str(lo, sizeof lo, c->opt.lr_min);
    snprintf(buf, n, "--lr %s --lr-decay %s --lr-min %s --warmup %d --iters %d", lr, nn_lr_decay_name(c->opt.decay), lo,
             c->opt.warmup_steps, c->iters);
}

/* the sampler's settings as flags: a resumed run must sample as the checkpoint's run did, or its
 * held-out values would not compare with the 'before' ones (training and evaluation share them) */
static void sampler_str(const struct draft_run_config *c, char *buf, size_t n)
{
    char g[32], e[32];
    num_str(g, sizeof g, c->method.guidance);
    num_str(e, sizeof e, c->method.eta);
    snprintf(buf, n, "--steps %d --guidance %s --eta %s --negative-prompt '%s'", c->method.steps, g, e, c->negative_prompt);
    /* (only when set: the checkpoints of earlier runs, which had no clip skip, still compare equal) */
    if (c->clip_skip) snprintf(buf + strlen(buf), n - strlen(buf), " --clip-skip %d", c->clip_skip);
}

/* n doubles as "%.17g" joined by ',' (checkpoint metadata), malloc'd; NULL when out of memory */
#define JOINED_MAX 26   /* "-1.2345678901234567e-308," and the NUL */
static char *doubles_join(int n, const double *v)
{
    char *out = malloc((size_t)n * JOINED_MAX + 1);
    if (out) out[0] = 0;
    for (int i = 0, o = 0; out && i < n; i++) o += snprintf(out + o, JOINED_MAX, "%s%.17g", i ? "," : "", v[i]);
    return out;
}

/* the inverse; values past the end of text (or all, for NULL: metadata of an earlier version) are NaN */
static void doubles_parse(const char *text, int n, double *v)
{
    for (int i = 0; i < n; i++) {
        char *end = NULL;
        v[i] = text && *text ? strtod(text, &end) : NAN;
        text = end && *end == ',' ? end + 1 : NULL;
    }
}

static enum status save_checkpoint(struct run *r)
{
    char path[1200], meta_step[32], meta_seed[32];
    path_in(r, path, sizeof path, "checkpoint.safetensors");
    snprintf(meta_step, sizeof meta_step, "%d", r->step);
    snprintf(meta_seed, sizeof meta_seed, "%llu", (unsigned long long)r->c->seed);
    char before[64], div_before[64], eval_before[64];
    snprintf(before, sizeof before, "%.17g", r->before.reward);
    snprintf(div_before, sizeof div_before, "%.17g", r->before.diversity);
    snprintf(eval_before, sizeof eval_before, "%.17g", r->before.held);
    char size[48];   /* the held-out reward before training was measured at this size */
    size_str(r, size, sizeof size);
    char best[64], best_step[32];
    snprintf(best, sizeof best, "%.17g", r->best);
    snprintf(best_step, sizeof best_step, "%d", r->best_step);
    /* a sum's terms, and each held-out image's reward, before training */
    char *terms = doubles_join(r->n_terms, r->before.terms), *imgs = doubles_join(r->c->eval_images, r->img_before);
    char *held_terms = doubles_join(r->n_held_terms, r->before.held_terms);
    char eval_set[48], clip_div[64], sampler[1200], schedule[200], skipped[32];
    snprintf(skipped, sizeof skipped, "%d", r->skipped);
    eval_set_str(r, eval_set, sizeof eval_set);
    sampler_str(r->c, sampler, sizeof sampler);
    schedule_str(r->c, schedule, sizeof schedule);
    snprintf(clip_div, sizeof clip_div, "%.17g", r->before.clip_div);
    const char *mk[] = {"format", "draft.step", "draft.seed", "draft.method", "draft.reward_before", "draft.diversity_before",
                        "draft.size", "draft.eval_reward_before", "draft.reward_terms_before", "draft.eval_set",
                        "draft.reward", "draft.eval_reward", "draft.diversity_model", "draft.clip_diversity_before",
                        "draft.reward_images_before", "draft.best", "draft.best_step", "draft.sampler",
                        "draft.init_lora", "draft.engine", "draft.eval_reward_terms_before", "draft.lr_schedule",
                        "draft.skipped"};
    const char *mv[] = {"draft-checkpoint-1", meta_step, meta_seed, draft_method_name(r->c->method.method), before, div_before,
                        size, eval_before, terms, eval_set, r->c->reward, r->c->eval_reward, r->c->diversity_model,
                        clip_div, imgs, best, best_step, sampler, r->c->init_lora, r->engine, held_terms, schedule,
                        skipped};
    const enum status s = terms && imgs && held_terms ? draft_checkpoint_save(path, &r->lora, &r->opt, (int)(sizeof mk / sizeof *mk), mk, mv)
                                        : tensor_fail(STATUS_OOM, "out of host memory");
    free(terms);
    free(imgs);
    free(held_terms);
    return s;
}

static enum status load_checkpoint(struct run *r)
{
    char path[1200];
    path_in(r, path, sizeof path, "checkpoint.safetensors");
    struct safetensors *st = safetensors_open(path);
    if (!st) return tensor_fail(STATUS_IO, "--resume: %s: %s", path, tensor_error());
    enum status s = draft_checkpoint_load(st, &r->lora, &r->opt);
    const char *step = s ? NULL : safetensors_metadata(st, "draft.step");
    const char *seed = s ? NULL : safetensors_metadata(st, "draft.seed");
    const char *rb = s ? NULL : safetensors_metadata(st, "draft.reward_before");
    const char *db = s ? NULL : safetensors_metadata(st, "draft.diversity_before");
    if (!s && (!step || !seed || !rb || !db)) s = tensor_fail(STATUS_FORMAT, "%s: not a draft-run checkpoint (metadata missing)", path);
    if (!s && strtoull(seed, NULL, 10) != r->c->seed)
        s = tensor_fail(STATUS_VALUE, "--resume: %s was trained with --seed %s, this run has %llu", path, seed,
                        (unsigned long long)r->c->seed);
    const char *size = s ? NULL : safetensors_metadata(st, "draft.size");   /* absent before non-square sizes */
    char want[48];
    size_str(r, want, sizeof want);
    if (!s && size && strcmp(size, want))
        s = tensor_fail(STATUS_VALUE, "--resume: %s was trained at --size %s, this run has %s", path, size, want);
    /* absent in checkpoints of earlier versions: not checked there */
    const char *eset = s ? NULL : safetensors_metadata(st, "draft.eval_set");
    eval_set_str(r, want, sizeof want);
    if (eset && strcmp(eset, want))
        s = tensor_fail(STATUS_VALUE, "--resume: %s was evaluated on another held-out set (images:prompts fingerprint %s; "
                                      "this run: %s, %d images of %s): keep --eval-images and --eval-prompts as they "
                                      "were, or start a new --out", path, eset, want, r->c->eval_images,
                        r->c->eval_prompts[0] ? r->c->eval_prompts : "the training prompts");
    const char *samp = s ? NULL : safetensors_metadata(st, "draft.sampler");
    char want_samp[1200];
    sampler_str(r->c, want_samp, sizeof want_samp);
    if (samp && strcmp(samp, want_samp))
        s = tensor_fail(STATUS_VALUE, "--resume: %s was sampled with %s, this run has %s: its held-out values would not "
                                      "compare; keep them, or start a new --out", path, samp, want_samp);
    const char *sched = s ? NULL : safetensors_metadata(st, "draft.lr_schedule");   /* absent before decays */
    char want_sched[200];
    schedule_str(r->c, want_sched, sizeof want_sched);
    if (sched && strcmp(sched, want_sched))
        s = tensor_fail(STATUS_VALUE, "--resume: %s was trained with the learning-rate schedule '%s', this run has '%s': "
                                      "a decay is planned over the run's --iters; keep them, or start a new --out",
                        path, sched, want_sched);
    const char *init = s ? NULL : safetensors_metadata(st, "draft.init_lora");
    if (init && strcmp(init, r->c->init_lora))
        s = tensor_fail(STATUS_VALUE, "--resume: %s started from --init-lora '%s', this run has '%s': its 'before' values "
                                      "were measured with that LoRA; keep it, or start a new --out", path, init,
                        r->c->init_lora);
    const char *rspec = s ? NULL : safetensors_metadata(st, "draft.reward");
    if (rspec && strcmp(rspec, r->c->reward))
        s = tensor_fail(STATUS_VALUE, "--resume: %s was trained with --reward '%s', this run has '%s': its scores would "
                                      "not compare; start a new --out", path, rspec, r->c->reward);
    const char *dspec = s ? NULL : safetensors_metadata(st, "draft.diversity_model");
    if (dspec && strcmp(dspec, r->c->diversity_model))
        s = tensor_fail(STATUS_VALUE, "--resume: %s measured diversity with --diversity-model '%s', this run has '%s'", path,
                        dspec, r->c->diversity_model);
    const char *espec = s ? NULL : safetensors_metadata(st, "draft.eval_reward");
    if (espec && strcmp(espec, r->c->eval_reward))
        s = tensor_fail(STATUS_VALUE, "--resume: %s was evaluated with --eval-reward '%s', this run has '%s'", path,
                        espec, r->c->eval_reward);
    if (!s) {
        r->step = atoi(step);
        const char *sk = safetensors_metadata(st, "draft.skipped");   /* absent before --skip-nonfinite */
        r->skipped = sk ? atoi(sk) : 0;
        r->before.reward = strtod(rb, NULL);
        r->before.diversity = strtod(db, NULL);
        const char *eb = safetensors_metadata(st, "draft.eval_reward_before");   /* absent before --eval-reward */
        r->before.held = eb ? strtod(eb, NULL) : NAN;
        const char *cb = safetensors_metadata(st, "draft.clip_diversity_before");   /* absent before it */
        r->before.clip_div = cb ? strtod(cb, NULL) : NAN;
        const char *bv = safetensors_metadata(st, "draft.best"), *bs = safetensors_metadata(st, "draft.best_step");
        if (bv && bs) r->best = strtod(bv, NULL), r->best_step = atoi(bs);   /* absent before --keep-best */
        /* both absent in earlier versions; the terms also for a reward that was not a sum then */
        doubles_parse(safetensors_metadata(st, "draft.reward_images_before"), r->c->eval_images, r->img_before);
        doubles_parse(safetensors_metadata(st, "draft.reward_terms_before"), r->n_terms, r->before.terms);
        doubles_parse(safetensors_metadata(st, "draft.eval_reward_terms_before"), r->n_held_terms, r->before.held_terms);
    }
    safetensors_close(st);
    return s;
}

/* ---------------------------------------------------------------- a busy machine */

/* the process's CPU time so far (user + system), seconds */
static double cpu_seconds(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru)) return NAN;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* After a step on the CPU: with OpenMP's default wait policy the engine's threads spin at their
 * barriers, so on a machine of its own the process gets about all of its threads' time (0.98 of
 * it on the demo). Much less means other programs share the CPUs, and then every barrier waits on
 * a preempted thread while the others spin: 2 steps of the demo took 16.9 s instead of 3.9 beside
 * one busy process on 2 cores, 8.5 with OMP_WAIT_POLICY=PASSIVE (docs/tutorial.md). Said once,
 * and only where no wait policy was chosen. */
static void busy_machine_hint(const struct draft_run_config *c, double cpu_s, double wall_s)
{
    static bool said;
    const int threads = tensor_num_threads();
    if (said || c->device != DEVICE_CPU || threads < 2 || getenv("OMP_WAIT_POLICY") || !(wall_s > 0.2)) return;
    const double share = cpu_s / (wall_s * threads);
    if (!(share < 0.75)) return;
    said = true;
    fprintf(stderr, "%sdraft-run: this step had %.0f%% of its %d threads' time: other programs are using these CPUs. "
                    "OMP_WAIT_POLICY=PASSIVE (or fewer OMP_NUM_THREADS) can make such a run about twice as fast "
                    "(docs/tutorial.md)\n", c->progress && !c->dry_run ? "\n" : "", 100 * share, threads);
}

/* ---------------------------------------------------------------- progress */

static void fmt_duration(char *buf, size_t n, double s)
{
    if (!(s >= 0) || s > 1e7) snprintf(buf, n, "?");
    else if (s < 60) snprintf(buf, n, "%.0fs", s);
    else if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(buf, n, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

static void progress(const struct run *r, double reward, double loss, double step_s, double gnorm)
{
    const int w = 24, done = r->step, total = r->c->iters;
    char bar[32], eta[32];
    int k = total ? (int)((int64_t)w * done / total) : w;
    for (int i = 0; i < w; i++) bar[i] = i < k ? '#' : '.';
    bar[w] = 0;
    fmt_duration(eta, sizeof eta, step_s * (total - done));
    fprintf(stderr, "\r[%s] %d/%d reward %.4f loss %.4f |g| %.3g %.2fs/step ETA %s   ", bar, done, total, reward,
            loss, gnorm, step_s, eta);
    if (done == total) fputc('\n', stderr);
    fflush(stderr);
}

/* ---------------------------------------------------------------- one step */

static enum status train_step(struct run *r, double *reward_out, double *terms_out, double *gnorm_out)
{
    const struct draft_run_config *c = r->c;
    const int B = c->batch, accum = c->opt.accum_steps > 0 ? c->opt.accum_steps : 1;
    double reward_sum = 0;
    enum status s = STATUS_OK;
    for (int m = 0; m < accum && !s; m++) {
        const uint64_t micro = (uint64_t)r->step * (uint64_t)accum + (uint64_t)m;
        uint64_t ps = stream_seed(c->seed, micro, STREAM_PROMPTS);
        const char *pr[256];
        for (int b = 0; b < B; b++) {
            ps = mix64(ps);
            pr[b] = r->prompts[ps % (uint64_t)r->n_prompts];
        }
        uint64_t tr = mix64(stream_seed(c->seed, micro, STREAM_TRUNC));
        int trunc = -1;
        if (c->method.method == DRAFT_ALIGNPROP) trunc = 1 + (int)(tr % (uint64_t)c->method.steps);
        if (c->method.method == DRAFT_REFL)
            trunc = c->method.refl_lo + (int)(tr % (uint64_t)(c->method.refl_hi - c->method.refl_lo + 1));
        if (c->method.method == DRAFT_DRTUNE) trunc = (int)(tr % (uint64_t)(c->method.steps / c->method.k));
        tensor_scope_begin();
        struct tensor *ctx = context_for(r, B, pr);
        /* the latents, then (inside the objective) LV's noise, from the step's own stream */
        struct tensor *x = ctx ? latents_for(r, B, stream_seed(c->seed, micro, STREAM_LATENTS)) : NULL;
        double J = 0;
        s = x ? draft_objective_backward(&r->p, &c->method, r->reward, x, ctx, pr, trunc, NULL, 1.0, &J, NULL)
              : tensor_status();
        tensor_scope_end();
        reward_sum += J;
    }
    if (s) return s;
    bool updated = false;
    double gnorm = NAN;
    for (int m = 0; m < accum && !s; m++) s = nn_adamw_step(&r->opt, &updated, &gnorm);
    *reward_out = reward_sum / accum;
    draft_reward_terms_take(r->reward, terms_out);   /* over the step's images, as the reward */
    *gnorm_out = gnorm;
    return s;
}


/* what to change when a step runs out of memory: the same images a step in smaller micro-batches,
 * more recomputation, half-size weights */
static void oom_hint(const struct draft_run_config *c, char *buf, size_t n)
{
    int o = snprintf(buf, n, "; to lower the peak:");
    const int accum = c->opt.accum_steps > 0 ? c->opt.accum_steps : 1;
    if (c->batch > 1 && c->batch % 2 == 0)
        o += snprintf(buf + o, n - (size_t)o, " --batch %d --accum %d (the same images a step),", c->batch / 2, 2 * accum);
    else if (c->batch > 1)
        o += snprintf(buf + o, n - (size_t)o, " --batch 1 --accum %d (the same images a step),", c->batch * accum);
    if (!c->method.checkpoint) o += snprintf(buf + o, n - (size_t)o, " --checkpoint,");
    else if (!c->method.checkpoint_blocks) o += snprintf(buf + o, n - (size_t)o, " --checkpoint-blocks,");
    if (c->dtype == DTYPE_F32) o += snprintf(buf + o, n - (size_t)o, " --dtype bf16,");
    if (c->method.method == DRAFT_LV && c->method.lv_n > 1) o += snprintf(buf + o, n - (size_t)o, " a smaller --lv-n,");
    snprintf(buf + o, n - (size_t)o, " a smaller --size");
}

/* --dry-run: one held-out evaluation and one optimiser step, timed and their peaks measured,
 * after the same set-up as a run and in the same order (so the step's peak is the first step's
 * of the run); the run's time is projected from them. Nothing is written. */
static enum status dry_run(struct run *r, struct draft_run_result *res)
{
    const struct draft_run_config *c = r->c;
    const enum device dev = r->p.device;
    struct mem_stats m;
    mem_get_stats(dev, &m);
    res->resident_bytes = m.live_bytes;
    const double t_setup = now_s() - r->t_start;
    mem_reset_peak(dev);
    double t0 = now_s();
    struct eval_result e;
    enum status s = evaluate(r, NULL, &e, c->resume ? NULL : r->img_before);
    if (s) return s;
    if (!c->resume) r->before = e;
    res->eval_seconds = now_s() - t0;
    mem_get_stats(dev, &m);
    res->eval_peak_bytes = m.peak_bytes;
    mem_reset_peak(dev);
    t0 = now_s();
    double J, gnorm, terms[DRAFT_REWARD_MAX_TERMS];
    const double cpu0 = cpu_seconds();
    if ((s = train_step(r, &J, terms, &gnorm))) return s;
    res->step_seconds = now_s() - t0;
    busy_machine_hint(c, cpu_seconds() - cpu0, res->step_seconds);   /* the projection assumes it stays so */
    mem_get_stats(dev, &m);
    res->step_peak_bytes = m.peak_bytes;
    /* the steps left, an evaluation every eval_every of them (not at the last), one after, one before
     * unless resumed */
    const int left = c->iters - r->step, ev = c->eval_every;
    const int n_eval = 1 + !c->resume + (ev ? (c->iters - 1) / ev - r->step / ev : 0);
    res->projected_seconds = t_setup + left * res->step_seconds + n_eval * res->eval_seconds;
    char a[32], b[32], d[32], lim[64] = "", t[32];
    if (m.limit_bytes) snprintf(lim, sizeof lim, " (limit %s)", mem_format(m.limit_bytes, d, sizeof d));
    fprintf(stderr, "draft-run: dry run on %s, nothing written:\n"
                    "  loading: %.1f s; %s live after it (weights, LoRA, rewards, held-out latents)\n",
            device_name(dev), t_setup, mem_format(res->resident_bytes, a, sizeof a));
    fprintf(stderr, "  held-out evaluation (%d images, %d steps): %.2f s, peak %s%s\n", c->eval_images, c->method.steps,
            res->eval_seconds, mem_format(res->eval_peak_bytes, a, sizeof a), lim);
    fprintf(stderr, "  optimiser step (%s, batch %d x accum %d): %.2f s, peak %s%s; the first step, later ones are "
                    "often a little faster\n",
            draft_method_name(c->method.method), c->batch, c->opt.accum_steps > 0 ? c->opt.accum_steps : 1,
            res->step_seconds, mem_format(res->step_peak_bytes, b, sizeof b), lim);
    /* what the device has for this process: its free memory and what the allocator already holds */
    int64_t avail = 0, total = 0;
    res->available_bytes = -1, res->fit_batch = 0;
    if (!tensor_device_memory(dev, &avail, &total)) {
        mem_get_stats(dev, &m);
        res->available_bytes = avail + m.reserved_bytes;
        if (m.limit_bytes > 0 && m.limit_bytes < res->available_bytes) res->available_bytes = m.limit_bytes;   /* DRAFT_MEMORY_LIMIT */
        fprintf(stderr, "  the %s's memory: %s in all, %s for this run (%s free, %s held by its allocator%s)\n",
                device_name(dev), mem_format(total, a, sizeof a), mem_format(res->available_bytes, b, sizeof b),
                mem_format(avail, d, sizeof d), mem_format(m.reserved_bytes, t, sizeof t),
                res->available_bytes == m.limit_bytes ? "; the limit" : "");
        /* the step's memory above the resident part grows with the micro-batch (LV: x lv_n); counting
         * the optimiser's state in it too errs on the small side, and 5% is left to fragmentation */
        const double per_image = (double)(res->step_peak_bytes - res->resident_bytes) / c->batch;
        if (per_image > 0)
            res->fit_batch = (int)fmin(256, (0.95 * (double)res->available_bytes - (double)res->resident_bytes) / per_image);
        if (res->step_peak_bytes > res->available_bytes)
            fprintf(stderr, "  the step's peak is more than that: the run would %s\n",
                    dev == DEVICE_CPU ? "swap, or be killed" : "run out of memory");
        else if (res->fit_batch > c->batch)
            fprintf(stderr, "  a micro-batch of %s%d images%s would fit (estimated: linear in --batch); --batch N "
                            "--accum M trains on N x M images a step\n", res->fit_batch == 256 ? "" : "about ",
                    res->fit_batch, res->fit_batch == 256 ? ", the most --batch takes," : "");
    }
    fmt_duration(t, sizeof t, res->projected_seconds);
    fprintf(stderr, "  the run: %d step%s and %d evaluation%s: about %s\n", left, left == 1 ? "" : "s", n_eval,
            n_eval == 1 ? "" : "s", t);
    if (c->max_minutes > 0 && res->projected_seconds > 60.0 * c->max_minutes) {   /* evaluations aside */
        const double fit = (60.0 * c->max_minutes - t_setup - (1 + !c->resume) * res->eval_seconds) / res->step_seconds;
        fprintf(stderr, "  --max-minutes %g ends training first, after about %d of the %d steps\n", c->max_minutes,
                fit > 1 ? (int)fit : 1, left);
    }
    if (r->earlier)
        fprintf(stderr, "  but %s holds an earlier run (%s): the run itself needs --resume (to continue it) or "
                        "--overwrite (to replace it), or another --out\n", c->out, r->earlier);
    return STATUS_OK;
}

/* ---------------------------------------------------------------- report */

static enum status draft_run_write_report(struct run *r, const struct draft_run_result *res)
{
    const struct draft_run_config *c = r->c;
    const int n = r->step + 1;
    double *x = malloc((size_t)n * sizeof *x), *yt = malloc((size_t)n * sizeof *yt), *ye = malloc((size_t)n * sizeof *ye);
    struct draft_report_grid *grids = calloc((size_t)n, sizeof *grids);
    char **grid_paths = calloc((size_t)n, sizeof *grid_paths);
    enum status s = STATUS_OK;
    if (!x || !yt || !ye || !grids || !grid_paths) s = tensor_fail(STATUS_OOM, "out of host memory");
    char *svg = NULL;
    int n_grids = 0;
    if (!s) {
        for (int i = 0; i < n; i++) x[i] = i, yt[i] = NAN, ye[i] = NAN;
        for (int i = 0; i < r->n_curve; i++)
            if (r->curve_x[i] >= 0 && r->curve_x[i] < n) yt[(int)r->curve_x[i]] = r->curve_y[i];
        for (int i = 0; i < r->n_eval_curve; i++)
            if (r->curve_ex[i] >= 0 && r->curve_ex[i] < n) ye[(int)r->curve_ex[i]] = r->curve_ey[i];
        const double *ys[2] = {yt, ye};
        const char *names[2] = {"training batch", "held-out seeds"};
        svg = draft_svg_line_chart(x, ys, names, 2, n, "reward", "step", "reward");
        if (!svg) s = tensor_status();
        for (int i = 1; i < n && !s && c->eval_every; i++) {
            if (i % c->eval_every || i == r->step) continue;
            char rel[64], full[1200];
            snprintf(rel, sizeof rel, "samples/step_%05d.png", i);
            path_in(r, full, sizeof full, rel);
            if (access(full, R_OK)) continue;
            grid_paths[n_grids] = dup_str(rel);
            grids[n_grids] = (struct draft_report_grid){i, grid_paths[n_grids]};
            n_grids++;
        }
    }
    char v[18][1100], summary[256];
    const char *keys[18] = {"model", "reward", "prompts", "negative prompt", "method", "steps / guidance / eta", "k / lv_n",
                            "LoRA rank / alpha / targets", "lr / weight decay / clip", "batch x accum", "iterations", "seed",
                            "held-out images", "image size", "dtype / device / precision", "seconds", "engine"};
    int nk = 0;
    snprintf(v[nk++], sizeof v[0], "%s", c->model);
    snprintf(v[nk++], sizeof v[0], "%s", c->reward);
    snprintf(v[nk++], sizeof v[0], "%s (%d prompts)", c->prompts, r->n_prompts);
    snprintf(v[nk++], sizeof v[0], "%s", c->negative_prompt[0] ? c->negative_prompt : "(none: the empty prompt)");
    snprintf(v[nk++], sizeof v[0], "%s%s", draft_method_name(c->method.method), c->method.checkpoint ? " (checkpointed)" : "");
    snprintf(v[nk++], sizeof v[0], "%d / %g / %g", c->method.steps, c->method.guidance, c->method.eta);
    if (c->clip_skip) snprintf(v[nk - 1] + strlen(v[nk - 1]), sizeof v[0] - strlen(v[nk - 1]), " (clip skip %d)", c->clip_skip);
    snprintf(v[nk++], sizeof v[0], "%d / %d", c->method.k, c->method.lv_n);
    if (c->init_lora[0])
        snprintf(v[nk++], sizeof v[0], "%d / %g / from %s (%d projections)", r->lora.rank, r->lora.alpha, c->init_lora,
                 r->lora.n);
    else
        snprintf(v[nk++], sizeof v[0], "%d / %g / %s (%d projections)", c->lora_rank, c->lora_alpha, c->lora_targets,
                 r->lora.n);
    if (c->opt.decay == NN_LR_CONSTANT)
        snprintf(v[nk++], sizeof v[0], "%g / %g / %g", c->opt.lr, c->opt.weight_decay, c->opt.max_grad_norm);
    else
        snprintf(v[nk++], sizeof v[0], "%g (%s decay to %g) / %g / %g", c->opt.lr, nn_lr_decay_name(c->opt.decay),
                 c->opt.lr_min, c->opt.weight_decay, c->opt.max_grad_norm);
    snprintf(v[nk++], sizeof v[0], "%d x %d", c->batch, c->opt.accum_steps);
    if (r->skipped)
        snprintf(v[nk++], sizeof v[0], "%d (%d skipped: the gradient was not finite)", r->step, r->skipped);
    else
        snprintf(v[nk++], sizeof v[0], "%d", r->step);
    snprintf(v[nk++], sizeof v[0], "%llu", (unsigned long long)c->seed);
    snprintf(v[nk++], sizeof v[0], "%d (prompts: %s)", c->eval_images,
             c->eval_prompts[0] ? c->eval_prompts : "the training prompts");
    size_str(r, v[nk++], sizeof v[0]);
    snprintf(v[nk++], sizeof v[0], "%s / %s / %s", dtype_name(c->dtype), device_name(r->p.device),
             precision_name(c->precision));
    snprintf(v[nk++], sizeof v[0], "%.1f", res->seconds);
    snprintf(v[nk++], sizeof v[0], "%s", r->engine);
    const char *vals[18];
    for (int i = 0; i < nk; i++) vals[i] = v[i];
    struct draft_report_image *imgs = calloc((size_t)c->eval_images, sizeof *imgs);
    if (!imgs && !s) s = tensor_fail(STATUS_OOM, "out of host memory");
    for (int i = 0; imgs && i < c->eval_images; i++)
        imgs[i] = (struct draft_report_image){r->eval_prompts[i], r->img_before[i], r->img_after[i]};
    struct draft_report_term terms[DRAFT_REWARD_MAX_TERMS], held_terms[DRAFT_REWARD_MAX_TERMS];
    for (int i = 0; i < r->n_terms; i++)
        terms[i] = (struct draft_report_term){r->terms[i].spec, r->terms[i].weight, r->before.terms[i], res->terms_after[i]};
    for (int i = 0; i < r->n_held_terms; i++)
        held_terms[i] = (struct draft_report_term){r->held_terms[i].spec, r->held_terms[i].weight, r->before.held_terms[i],
                                                   r->held_terms_after[i]};
    snprintf(summary, sizeof summary, "final: reward_before=%.6f reward_after=%.6f steps=%d seconds=%.1f",
             r->before.reward, res->reward_after, r->step, res->seconds);
    /* every evaluation's diversity, eval reward and terms, from metrics.jsonl (resumed lines too) */
    const char *term_names[DRAFT_REWARD_MAX_TERMS];
    for (int i = 0; i < r->n_terms; i++) term_names[i] = r->terms[i].spec;
    if (r->metrics) fflush(r->metrics);
    /* the folder's files that exist, with what each is for */
    static const struct draft_report_file known[] = {
        {"lora.safetensors", "the LoRA, diffusers/PEFT names: pipe.load_lora_weights, draft-sample --lora"},
        {"lora_kohya.safetensors", "the same LoRA, kohya names with .alpha: A1111, ComfyUI"},
        {"lora_best.safetensors", "the LoRA of the best held-out evaluation (--keep-best)"},
        {"loras", "the LoRA of every --lora-every steps"},
        {"checkpoint.safetensors", "LoRA, optimiser state and step: --resume"},
        {"metrics.jsonl", "a line per step and per evaluation: draft-compare"},
        {"eval_scores.jsonl", "each held-out image's reward before and after"},
        {"config.json", "every option as resolved: --config, --resume"},
    };
    struct draft_report_file files[sizeof known / sizeof *known];
    int n_files = 0;
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
        char fp[1200];
        path_in(r, fp, sizeof fp, known[i].path);
        if (!access(fp, R_OK)) files[n_files++] = known[i];
    }
    char *measures = s ? NULL : draft_run_measures_html(c->out, r->n_terms, term_names);
    if (!s && !measures) s = tensor_status();
    if (!s) {
        struct draft_report rep = {
            .title = "DRaFT run",
            .n_settings = nk,
            .setting_keys = keys,
            .setting_values = vals,
            .chart_svg = svg,
            .measures_html = measures,
            .n_files = n_files,
            .files = files,
            .n_eval_terms = r->n_held_terms,
            .eval_terms = held_terms,
            .before_png = "before.png",
            .after_png = "after.png",
            .n_grids = n_grids,
            .grids = grids,
            .reward_before = r->before.reward,
            .reward_after = res->reward_after,
            .diversity_before = r->before.diversity,
            .diversity_after = res->diversity_after,
            .n_terms = r->n_terms,
            .terms = terms,
            .diversity_model = r->div_model ? c->diversity_model : NULL,
            .clip_diversity_before = r->before.clip_div,
            .clip_diversity_after = res->clip_diversity_after,
            .n_images = c->eval_images,
            .images = imgs,
            .best_metric = c->keep_best[0] ? c->keep_best : NULL,
            .best_value = r->best,
            .best_step = r->best_step,
            .eval_reward = r->eval_reward ? r->c->eval_reward : NULL,
            .eval_reward_before = r->before.held,
            .eval_reward_after = res->eval_reward_after,
            .summary = summary,
        };
        char path[1200];
        path_in(r, path, sizeof path, "report.html");
        s = draft_report_html(path, &rep);
    }
    for (int i = 0; i < n_grids; i++) free(grid_paths[i]);
    free(measures);
    free(imgs);
    free(grid_paths);
    free(grids);
    free(svg);
    free(x);
    free(yt);
    free(ye);
    return s;
}

/* ---------------------------------------------------------------- draft_run */

/* a reward spec beside the pipeline; "clip:text=..." means the model folder's own clip/ tower */
const char *draft_reward_spec_for_model(const char *spec, const char *model, char *buf, size_t n)
{
    if (!strncmp(spec, "clip:text=", 10)) snprintf(buf, n, "clip:%s/clip,%s", model, spec + 5);
    else if (!strncmp(spec, "classify:text=", 14)) snprintf(buf, n, "classify:%s/clip,%s", model, spec + 9);
    else if (!strcmp(spec, "clip")) snprintf(buf, n, "clip:%s/clip", model);   /* each image against its prompt */
    else return spec;
    return buf;
}

static struct draft_reward *run_reward(const struct draft_run_config *c, const char *spec, struct sd_pipeline *p)
{
    char spec_buf[2200];
    spec = draft_reward_spec_for_model(spec, c->model, spec_buf, sizeof spec_buf);
    return draft_reward_create_on(spec, sd_pipeline_dtype(p), p->device);
}

static void run_free(struct run *r)
{
    if (r->metrics) fclose(r->metrics);
    tensor_free(r->eval_latents);
    tensor_free(r->eval_context);
    free(r->eval_prompts);
    free(r->img_before);
    free(r->img_after);
    draft_prompts_free(r->prompts, r->n_prompts);
    draft_prompts_free(r->eval_list, r->n_eval_list);
    draft_reward_free(r->reward);
    draft_reward_free(r->eval_reward);
    if (r->div_model != r->reward) draft_reward_free(r->div_model);
    nn_adamw_free(&r->opt);
    sd_lora_detach(&r->p.unet);
    sd_lora_free(&r->lora);
    sd_pipeline_free(&r->p);
    free(r->curve_x);
    free(r->curve_y);
    free(r->curve_ex);
    free(r->curve_ey);
}

static enum status check_config(const struct draft_run_config *c)
{
    if (!c->model[0]) return tensor_fail(STATUS_VALUE, "no model: give a diffusers folder with --model");
    if (!c->out[0]) return tensor_fail(STATUS_VALUE, "--out is empty: give the run folder");
    if (c->batch < 1 || c->batch > 256) return tensor_fail(STATUS_VALUE, "--batch must be in [1, 256], got %d", c->batch);
    if (c->iters < 0) return tensor_fail(STATUS_VALUE, "--iters must be >= 0, got %d", c->iters);
    if (c->lora_rank < 1 || c->lora_rank > 1024) return tensor_fail(STATUS_VALUE, "--lora-rank must be in [1, 1024], got %d", c->lora_rank);
    if (!(c->lora_alpha > 0)) return tensor_fail(STATUS_VALUE, "--lora-alpha must be > 0, got %g", c->lora_alpha);
    if (c->eval_images < 1 || c->eval_images > 256) return tensor_fail(STATUS_VALUE, "--eval-images must be in [1, 256], got %d", c->eval_images);
    if (c->eval_every < 0 || c->save_every < 0 || c->lora_every < 0)
        return tensor_fail(STATUS_VALUE, "--eval-every, --save-every and --lora-every must be >= 0");
    if (c->skip_nonfinite < 0) return tensor_fail(STATUS_VALUE, "--skip-nonfinite must be >= 0, got %d", c->skip_nonfinite);
    if (!(c->max_minutes >= 0) || !isfinite(c->max_minutes))
        return tensor_fail(STATUS_VALUE, "--max-minutes must be >= 0 (0 = no limit), got %g", c->max_minutes);
    if (!(c->opt.lr > 0) || !isfinite(c->opt.lr)) return tensor_fail(STATUS_VALUE, "--lr must be > 0, got %g", c->opt.lr);
    if ((unsigned)c->opt.decay > NN_LR_COSINE) return tensor_fail(STATUS_VALUE, "unknown --lr-decay %d", (int)c->opt.decay);
    if (c->opt.decay != NN_LR_CONSTANT && !(c->opt.lr_min >= 0 && c->opt.lr_min <= c->opt.lr))
        return tensor_fail(STATUS_VALUE, "--lr-min must be in [0, --lr = %g], got %g", c->opt.lr, c->opt.lr_min);
    if (c->dtype != DTYPE_F32 && c->dtype != DTYPE_BF16)
        return tensor_fail(STATUS_VALUE, "--dtype %s: the base weights are f32 or bf16", dtype_name(c->dtype));
    if (c->precision != PRECISION_F32 && c->precision != PRECISION_TF32 && c->precision != PRECISION_BF16)
        return tensor_fail(STATUS_VALUE, "unknown precision %d (f32, tf32 or bf16)", (int)c->precision);
    if (c->keep_best[0] && strcmp(c->keep_best, "reward") && strcmp(c->keep_best, "eval-reward"))
        return tensor_fail(STATUS_VALUE, "--keep-best '%s': reward or eval-reward", c->keep_best);
    if (!strcmp(c->keep_best, "eval-reward") && !c->eval_reward[0])
        return tensor_fail(STATUS_VALUE, "--keep-best eval-reward needs an --eval-reward");
    enum status s = draft_method_config_check(&c->method);
    return s ? s : draft_device_check(c->device);   /* before any output is written */
}

/* The run folder before anything is loaded: an earlier run's results are not replaced unasked,
 * and a dry run only checks that the folder could be made */
static enum status prepare_out(struct run *r)
{
    const struct draft_run_config *c = r->c;
    char path[1200];
    enum status s;
    if (!c->resume && !c->overwrite) {   /* an earlier run's results are not replaced unasked */
        static const char *const marks[] = {"lora.safetensors", "checkpoint.safetensors", "metrics.jsonl"};
        for (size_t i = 0; i < sizeof marks / sizeof marks[0] && !r->earlier; i++) {
            path_in(r, path, sizeof path, marks[i]);
            if (nn_file_exists(path)) r->earlier = marks[i];
        }
        if (r->earlier && !c->dry_run)   /* a dry run writes nothing: it measures, and says so at the end */
            return tensor_fail(STATUS_VALUE, "%s holds an earlier run (%s): --resume continues it, --overwrite "
                               "replaces it, or give another --out", c->out, r->earlier);
    }
    /* a dry run says what the run would: an --out it could not create or write in ends it here */
    if (c->dry_run && (s = nn_mkdir_p_check(c->out))) return s;
    if (!c->dry_run) {
        if ((s = nn_mkdir_p(c->out))) return s;
        path_in(r, path, sizeof path, "samples");
        if ((s = nn_mkdir_p(path))) return s;
        path_in(r, path, sizeof path, "config.json");
        if (c->config_json &&
            (s = nn_file_write_atomic(path, 2, (const void *[]){c->config_json, "\n"}, (size_t[]){strlen(c->config_json), 1})))
            return s;
    }
    return STATUS_OK;
}

enum status draft_run(const struct draft_run_config *c, struct draft_run_result *res)
{
    memset(res, 0, sizeof *res);
    res->eval_reward_before = res->eval_reward_after = NAN;
    res->clip_diversity_before = res->clip_diversity_after = NAN;
    enum status s = check_config(c);
    if (s) return s;
    /* the reward specs' form and the prompt files first: a mistyped one is said before a folder is
     * written or a model loaded */
    const char *const specs[3] = {c->reward, c->eval_reward, c->diversity_model};
    const char *const flags[3] = {"--reward", "--eval-reward", "--diversity-model"};
    for (int i = 0; i < 3; i++) {
        char spec_buf[2200];
        if ((i == 0 || specs[i][0]) &&
            (s = draft_reward_spec_check(draft_reward_spec_for_model(specs[i], c->model, spec_buf, sizeof spec_buf))))
            return i ? tensor_fail(s, "%s: %s", flags[i], tensor_error()) : s;
    }
    char init_file[1100];   /* a LoRA file, or a run folder's lora.safetensors: there before anything loads */
    const char *init_path = c->init_lora[0] ? draft_lora_file(c->init_lora, init_file, sizeof init_file) : NULL;
    if (init_path && !nn_file_exists(init_path))
        return tensor_fail(STATUS_IO, "--init-lora: %s is not a file (a LoRA's .safetensors, or a run folder holding "
                                      "lora.safetensors)", init_path);
    char **prompts = NULL, **eval_list = NULL;
    int n_prompts = 0, n_eval_list = 0;
    if ((s = draft_prompts_load(c->prompts, &prompts, &n_prompts))) return s;
    if (c->eval_prompts[0] && (s = draft_prompts_load(c->eval_prompts, &eval_list, &n_eval_list))) {
        draft_prompts_free(prompts, n_prompts);
        return s;
    }
    struct run run = {.c = c, .before.held = NAN, .before.clip_div = NAN, .best = NAN, .best_step = -1,
                      .prompts = prompts, .n_prompts = n_prompts, .eval_list = eval_list, .n_eval_list = n_eval_list},
               *r = &run;
    r->t_start = now_s();
    stop_requested = 0;
    char path[1200], name[64];
    if ((s = prepare_out(r))) {
        draft_prompts_free(prompts, n_prompts);
        draft_prompts_free(eval_list, n_eval_list);
        return s;
    }
    const enum precision precision0 = tensor_precision();   /* the run's own, restored at the end */
    tensor_set_precision(c->precision);
    s = c->ckpt[0] ? sd_pipeline_load_single_file(&r->p, c->ckpt, c->model, c->dtype, c->device)
                   : sd_pipeline_load(&r->p, c->model, c->dtype, c->device);
    if (!s) s = sd_pipeline_set_clip_skip(&r->p, c->clip_skip);
    if (s) goto done;
    draft_engine_describe(r->p.device, r->engine, sizeof r->engine);
    /* "clip:text=..." = the CLIP model shipped with the diffusion model (the embedded one has clip/) */
    /* reward models beside the pipeline, in its compute dtype (f32 for f32 and bf16 weights) */
    if (!(r->reward = run_reward(c, c->reward, &r->p)) ||
        (c->eval_reward[0] && !(r->eval_reward = run_reward(c, c->eval_reward, &r->p)))) {
        s = tensor_status();
        goto done;
    }
    r->n_terms = draft_reward_terms(r->reward, r->terms);
    r->n_held_terms = r->eval_reward ? draft_reward_terms(r->eval_reward, r->held_terms) : 0;
    if (c->diversity_model[0]) {   /* the trained reward itself when it is the same spec */
        r->div_model = !strcmp(c->diversity_model, c->reward) ? r->reward : run_reward(c, c->diversity_model, &r->p);
        if (!r->div_model) {
            s = tensor_fail(STATUS_VALUE, "--diversity-model: %s", tensor_error());
            goto done;
        }
        if (!draft_reward_has_image_tower(r->div_model)) {
            s = tensor_fail(STATUS_VALUE, "--diversity-model %s: reward %s has no image tower (clip, classify, "
                                          "aesthetic, pickscore, hpsv2, detect and imagereward have one)", c->diversity_model, r->div_model->name);
            goto done;
        }
    }
    r->latent_c = r->p.unet.in_channels;
    {
        const int64_t def = sd_pipeline_default_size(&r->p);
        const int64_t w = c->image_width > 0 ? c->image_width : def, h = c->image_height > 0 ? c->image_height : def;
        const int64_t f = (int64_t)1 << (r->p.vae.cfg.n_blocks - 1), m = f << r->p.unet.n_samplers;
        if (w <= 0 || h <= 0 || w % m || h % m) {
            s = tensor_fail(STATUS_VALUE, "--size %lldx%lld: width and height must be positive multiples of %lld for this model",
                            (long long)w, (long long)h, (long long)m);
            goto done;
        }
        r->latent_h = h / f;
        r->latent_w = w / f;
    }
    s = init_path ? sd_lora_load(&r->lora, &r->p.unet, init_path)
                  : sd_lora_init(&r->lora, &r->p.unet, c->lora_rank, c->lora_alpha, c->lora_targets, DTYPE_F32, c->seed);
    if (s) {
        if (init_path) tensor_fail(s, "--init-lora: %s", tensor_error());
        goto done;
    }
    if ((s = sd_lora_attach(&r->lora, &r->p.unet, 1.0))) goto done;
    struct nn_adamw_config oc = c->opt;
    oc.decay_steps = c->iters > 0 ? c->iters : 1;   /* a decay spans the run's updates */
    if ((s = nn_adamw_init(&r->opt, &oc, &r->lora.params))) goto done;

    /* held-out evaluation set */
    const int E = c->eval_images;
    r->eval_prompts = calloc((size_t)E, sizeof *r->eval_prompts);
    r->img_before = malloc((size_t)E * sizeof *r->img_before);
    r->img_after = malloc((size_t)E * sizeof *r->img_after);
    for (int i = 0; r->img_before && r->img_after && i < E; i++) r->img_before[i] = r->img_after[i] = NAN;
    if (!r->eval_prompts || !r->img_before || !r->img_after) {
        s = tensor_fail(STATUS_OOM, "out of host memory");
        goto done;
    }
    for (int i = 0; i < E; i++)
        r->eval_prompts[i] = r->eval_list ? r->eval_list[i % r->n_eval_list] : r->prompts[i % r->n_prompts];
    r->eval_context = context_for(r, E, r->eval_prompts);
    r->eval_latents = r->eval_context ? latents_for(r, E, EVAL_SEED_BASE + c->seed) : NULL;
    if (!r->eval_latents) {
        s = tensor_status();
        goto done;
    }

    if (c->resume) {
        if ((s = load_checkpoint(r))) goto done;
        fprintf(stderr, "draft-run: %s at step %d/%d from %s/checkpoint.safetensors\n", c->dry_run ? "would resume" : "resumed",
                r->step, c->iters, c->out);
    }
    if (c->dry_run) {
        char hint[256];
        if ((s = dry_run(r, res)) == STATUS_OOM) oom_hint(c, hint, sizeof hint), tensor_fail(s, "%s%s", tensor_error(), hint);
        goto done;
    }
    if (!c->resume) {
        path_in(r, path, sizeof path, "before.png");
        if ((s = evaluate(r, path, &r->before, r->img_before))) goto done;
        if (r->eval_reward) fprintf(stderr, "draft-run: eval reward %s before %.4f\n", c->eval_reward, r->before.held);
        char rb[32], db[32], cb[32];
        fprintf(stderr, "draft-run: reward before %s on %d held-out seed%s", tnum(rb, sizeof rb, "%.4f", r->before.reward), E,
                E > 1 ? "s" : "");
        if (E > 1 && r->div_model)   /* one image has no diversity */
            fprintf(stderr, " (diversity %s, CLIP diversity %s)", tnum(db, sizeof db, "%.4f", r->before.diversity),
                    tnum(cb, sizeof cb, "%.4f", r->before.clip_div));
        else if (E > 1)
            fprintf(stderr, " (diversity %s)", tnum(db, sizeof db, "%.4f", r->before.diversity));
        fprintf(stderr, "\n");
        if (!isfinite(r->before.reward))
            fprintf(stderr, "draft-run: warning: the held-out reward is not finite before any training: the sampling "
                            "diverges (the guidance or the weights)\n");
        for (int i = 0; i < r->n_held_terms; i++)
            fprintf(stderr, "draft-run:   eval term %d, %g * %s: %.4f\n", i + 1, r->held_terms[i].weight,
                    r->held_terms[i].name, r->before.held_terms[i]);
        for (int i = 0; i < r->n_terms; i++)
            fprintf(stderr, "draft-run:   term %d, %g * %s: %.4f\n", i + 1, r->terms[i].weight, r->terms[i].name,
                    r->before.terms[i]);
    }
    /* metrics: a resumed run drops the lines after its checkpoint so the file stays one run */
    path_in(r, path, sizeof path, "metrics.jsonl");
    if (c->resume) {
        FILE *in = fopen(path, "r");
        char tmp[1220];
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        FILE *outf = fopen(tmp, "w");
        if (in && outf) {
            char line[2048];
            while (fgets(line, sizeof line, in)) {
                const char *sp = strstr(line, "\"step\": ");
                int st = sp ? atoi(sp + 8) : 0;
                if (st > r->step) continue;
                fputs(line, outf);
                double y;
                const char *rw = strstr(line, "\"reward\": ");
                if (rw && sscanf(rw + 10, "%lf", &y) == 1) curve_push(r, strstr(line, "\"eval\"") != NULL, st, y);
            }
        }
        if (in) fclose(in);
        if (outf && !fclose(outf)) rename(tmp, path);
    }
    r->metrics = fopen(path, c->resume ? "a" : "w");
    if (!r->metrics) {
        s = tensor_fail(STATUS_IO, "%s: cannot write: %s", path, strerror(errno));
        goto done;
    }
    if (!c->resume) {
        metrics_eval(r, 0, &r->before);
        curve_push(r, true, 0, r->before.reward);
        if ((s = keep_best(r, &r->before))) goto done;
    }

    double step_avg = 0;
    int in_a_row = 0;   /* steps skipped for a gradient that was not finite, since the last update */
    while (r->step < c->iters) {
        const double t0 = now_s(), cpu0 = cpu_seconds();
        double J = 0, gnorm = 0, terms[DRAFT_REWARD_MAX_TERMS];
        mem_reset_peak(r->p.device);
        const double lr = nn_adamw_lr(&r->opt);   /* this step's update: logged as it, not the next one's */
        s = train_step(r, &J, terms, &gnorm);
        /* A gradient that is not finite: AdamW made no update and dropped it. The run goes on with the
         * next step's prompts and noise; stopping instead would leave a --resume that replays this very
         * step (its draws are fixed by the seed and the step) and fails again. */
        const bool nonfinite = s == STATUS_VALUE && !isfinite(gnorm);
        const bool skipped = nonfinite && in_a_row < c->skip_nonfinite;
        if (skipped) {
            in_a_row++;
            r->skipped++;
            fprintf(stderr, "%sdraft-run: step %d skipped (%d in a row, --skip-nonfinite %d): %s\n", c->progress ? "\n" : "",
                    r->step + 1, in_a_row, c->skip_nonfinite, tensor_error());
            tensor_clear_error();
            s = STATUS_OK;
        } else if (!s) {
            in_a_row = 0;
        }
        if (s) {
            char hint[256] = "";
            if (s == STATUS_OOM) oom_hint(c, hint, sizeof hint);
            if (nonfinite)
                snprintf(hint, sizeof hint, "; %d steps in a row had a gradient that was not finite (--skip-nonfinite %d)",
                         in_a_row + 1, c->skip_nonfinite);
            fprintf(stderr, "\n");
            tensor_fail(s, "step %d: %s; the last good checkpoint is %s/checkpoint.safetensors (use --resume)%s",
                        r->step + 1, tensor_error(), c->out, hint);
            goto done;
        }
        r->step++;
        const double dt = now_s() - t0;
        step_avg = step_avg ? 0.8 * step_avg + 0.2 * dt : dt;
        busy_machine_hint(c, cpu_seconds() - cpu0, dt);
        struct mem_stats ms;
        mem_get_stats(r->p.device, &ms);
        char jr[32], jl[32], jg[32];
        fprintf(r->metrics,
                "{\"step\": %d, \"reward\": %s, \"loss\": %s, \"grad_norm\": %s, \"lr\": %.6g, \"seconds\": %.4f, "
                "\"peak_mib\": %.1f",
                r->step, jnum(jr, sizeof jr, "%.9g", J), jnum(jl, sizeof jl, "%.9g", -J), jnum(jg, sizeof jg, "%.6g", gnorm),
                lr, dt, (double)ms.peak_bytes / 1048576.0);
        metrics_terms(r->metrics, "reward_terms", r->n_terms, terms);
        fputs(skipped ? ", \"skipped\": true}\n" : "}\n", r->metrics);
        fflush(r->metrics);
        if (isfinite(J)) curve_push(r, false, r->step, J);
        if (c->progress) progress(r, J, -J, step_avg, gnorm);
        if (c->eval_every && r->step % c->eval_every == 0 && r->step < c->iters) {
            struct eval_result e;
            snprintf(name, sizeof name, "samples/step_%05d.png", r->step);
            path_in(r, path, sizeof path, name);
            if ((s = evaluate(r, path, &e, NULL))) goto done;
            metrics_eval(r, r->step, &e);
            curve_push(r, true, r->step, e.reward);
            if ((s = keep_best(r, &e))) goto done;
        }
        if (c->lora_every && r->step % c->lora_every == 0) {   /* a LoRA to go back to later (draft-sample, draft-score) */
            snprintf(name, sizeof name, "loras/step_%05d.safetensors", r->step);
            path_in(r, path, sizeof path, "loras");
            if ((s = nn_mkdir_p(path))) goto done;
            path_in(r, path, sizeof path, name);
            if ((s = sd_lora_save(&r->lora, path, SD_LORA_PEFT))) goto done;
        }
        const bool stop = stop_requested || (c->stop_after && r->step == c->stop_after);
        /* the time budget: the run ends here as if this were its last step */
        const bool out_of_time = c->max_minutes > 0 && r->step < c->iters && now_s() - r->t_start >= 60.0 * c->max_minutes;
        if ((c->save_every && r->step % c->save_every == 0) || stop || out_of_time || r->step == c->iters)
            if ((s = save_checkpoint(r))) goto done;
        if (out_of_time && !stop) {
            if (c->progress) fputc('\n', stderr);
            fprintf(stderr, "draft-run: --max-minutes %g reached at step %d of %d: the final evaluation and report follow "
                            "(--resume continues)\n", c->max_minutes, r->step, c->iters);
            break;
        }
        if (stop) {
            if (c->progress) fputc('\n', stderr);
            fprintf(stderr, "draft-run: stopped at step %d; checkpoint saved, continue with --resume\n", r->step);
            res->interrupted = true;
            goto done;
        }
    }

    /* after: evaluation, LoRA files, report */
    path_in(r, path, sizeof path, "after.png");
    struct eval_result e;
    if (!c->resume && r->step == 0) {   /* no step taken (--iters 0: a LoRA evaluated): 'after' is 'before' */
        e = r->before;
        memcpy(r->img_after, r->img_before, (size_t)c->eval_images * sizeof *r->img_after);
        char before_png[1200];
        path_in(r, before_png, sizeof before_png, "before.png");
        size_t len = 0;
        char *png = nn_file_read(before_png, (size_t)1 << 30, &len);
        s = png ? nn_file_write_atomic(path, 1, (const void *[]){png}, (size_t[]){len}) : tensor_status();
        free(png);
        if (s) goto done;
    } else if ((s = evaluate(r, path, &e, r->img_after))) {
        goto done;
    }
    res->reward_after = e.reward, res->diversity_after = e.diversity, res->eval_reward_after = e.held;
    res->clip_diversity_after = e.clip_div;
    memcpy(res->terms_after, e.terms, sizeof e.terms);
    memcpy(r->held_terms_after, e.held_terms, sizeof e.held_terms);
    metrics_eval(r, r->step, &e);
    if (r->eval_reward)
        fprintf(stderr, "draft-run: eval reward %s: %.4f -> %.4f\n", c->eval_reward, r->before.held, e.held);
    for (int i = 0; i < r->n_held_terms; i++)
        fprintf(stderr, "draft-run: eval reward term %d, %g * %s: %.4f -> %.4f\n", i + 1, r->held_terms[i].weight,
                r->held_terms[i].name, r->before.held_terms[i], e.held_terms[i]);
    for (int i = 0; i < r->n_terms; i++)
        fprintf(stderr, "draft-run: reward term %d, %g * %s: %.4f -> %.4f\n", i + 1, r->terms[i].weight, r->terms[i].name,
                r->before.terms[i], e.terms[i]);
    curve_push(r, true, r->step, res->reward_after);
    if ((s = keep_best(r, &e))) goto done;
    if (c->keep_best[0])
        fprintf(stderr, "draft-run: the best held-out %s, %.4f, was at step %d: %s/lora_best.safetensors\n", c->keep_best,
                r->best, r->best_step, c->out);
    if ((s = write_eval_scores(r))) goto done;
    path_in(r, path, sizeof path, "lora.safetensors");
    if ((s = sd_lora_save(&r->lora, path, SD_LORA_PEFT))) goto done;
    path_in(r, path, sizeof path, "lora_kohya.safetensors");
    if ((s = sd_lora_save(&r->lora, path, SD_LORA_KOHYA))) goto done;
    if (r->skipped)
        fprintf(stderr, "draft-run: %d of the %d steps made no update: their gradient was not finite (\"skipped\" in "
                        "metrics.jsonl)\n", r->skipped, r->step);
    res->seconds = now_s() - r->t_start;
    s = draft_run_write_report(r, res);

done:
    res->reward_before = r->before.reward;
    res->eval_reward_before = r->before.held;
    res->diversity_before = r->before.diversity;
    res->clip_diversity_before = r->before.clip_div;
    res->n_terms = r->n_terms;
    memcpy(res->terms_before, r->before.terms, sizeof r->before.terms);
    res->best = r->best, res->best_step = r->best_step;
    res->steps = r->step;
    res->seconds = now_s() - r->t_start;
    run_free(r);
    tensor_set_precision(precision0);
    return s;
}
