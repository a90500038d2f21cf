/* draft_score.c — `draft-score`: images from disk scored by any reward of draft-run, so samples
 * made elsewhere (diffusers, another run, a photo) are measured with the very scorer a LoRA was
 * trained or evaluated with.
 *
 *   draft-score --reward SPEC [--prompt TEXT | --prompts FILE] [--diversity-model SPEC]
 *               [--model DIR] [--batch 8] [--device cpu|cuda] [--out scores.jsonl] IMAGE.png ...
 *
 * One JSON line per image, {"image", "prompt", "reward"} (and "reward_terms" for a sum), on stdout
 * or into --out; the mean, lowest and highest on stderr, and the diversity of the images when
 * there are two or more of one size. */
#include "draft/image.h"
#include "draft/report.h"
#include "draft/reward.h"
#include "draft/run.h"
#include "nn/file.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: draft-score --reward SPEC [options] IMAGE.png|FOLDER ...\n"
            "Scores PNG images with a reward of draft-run (the same code and weights), e.g. samples from\n"
            "diffusers against the aesthetic scorer a LoRA was trained with.\n"
            "  --reward SPEC      the reward (draft-run --help lists the specs)\n"
            "  --prompt TEXT      every image's prompt, for the rewards that read one (clip, hpsv2,\n"
            "                     pickscore, classify with text=|..., detect and imagereward without text=)\n"
            "  --prompts FILE     one prompt a line ('#' lines and blank lines skipped): the i-th for the i-th\n"
            "                     image; as many as there are images\n"
            "  A FOLDER stands for its PNGs in name order (grid.png and sweep.png left out); the prompts.txt\n"
            "  draft-sample writes beside them gives their prompts unless --prompt or --prompts does\n"
            "  --diversity-model SPEC  the images' diversity in that reward's image embeddings too (mean pairwise\n"
            "                     1 - cosine; clip: the model folder's own CLIP)\n"
            "  --model DIR        the diffusers folder whose clip/ the specs 'clip', 'clip:text=...' and\n"
            "                     'classify:text=...' name\n"
            "                     (default: the embedded emoji model)\n"
            "  --batch N          images per reward call (default 8); images of one size go together\n"
            "  --device D         cpu or cuda (default cpu)\n"
            "  --out FILE         the JSON lines into FILE instead of stdout (checked first, written at the\n"
            "                     end all at once: a failed run leaves an earlier FILE as it was)\n"
            "  --version          the version, the commit and the backends\n");
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }
static int is_sample_png(const struct dirent *e)   /* a sample, not a grid draft-sample or draft-run wrote */
{
    const size_t n = strlen(e->d_name);
    return n > 4 && !strcmp(e->d_name + n - 4, ".png") && strcmp(e->d_name, "grid.png") && strcmp(e->d_name, "sweep.png");
}

/* path, or the PNGs of the folder path in name order (grids left out), appended to (*paths)[*n..];
 * *prompts_file gets <folder>/prompts.txt when there is one (draft-sample writes it) */
static enum status add_images(const char *path, char ***paths, int *n, int *cap, char *prompts_file, size_t pn)
{
    struct stat st;
    struct dirent **list = NULL;
    int k = 1;
    const bool dir = !stat(path, &st) && S_ISDIR(st.st_mode);
    if (dir && (k = scandir(path, &list, is_sample_png, by_name)) < 0)
        return tensor_fail(STATUS_IO, "%s: cannot list: %s", path, strerror(errno));
    if (dir && !k) return tensor_fail(STATUS_VALUE, "%s: no PNG image in it", path);
    enum status s = STATUS_OK;
    for (int i = 0; i < k && !s; i++) {
        if (*n == *cap) {
            const int c2 = *cap ? 2 * *cap : 64;
            char **p2 = realloc(*paths, sizeof *p2 * (size_t)c2);
            if (!p2) {
                s = tensor_fail(STATUS_OOM, "out of memory");
                break;
            }
            *paths = p2, *cap = c2;
        }
        const size_t len = strlen(path) + (dir ? strlen(list[i]->d_name) + 2 : 1);
        char *p = malloc(len);
        if (!p) s = tensor_fail(STATUS_OOM, "out of memory");
        else if (dir) snprintf(p, len, "%s/%s", path, list[i]->d_name);
        else snprintf(p, len, "%s", path);
        if (p) (*paths)[(*n)++] = p;
    }
    for (int i = 0; dir && i < k; i++) free(list[i]);
    free(list);
    if (dir) {
        char pf[PATH_MAX + 16];
        snprintf(pf, sizeof pf, "%s/prompts.txt", path);
        if (!stat(pf, &st)) snprintf(prompts_file, pn, "%s", pf);
    }
    return s;
}

static void free_paths(char **paths, int n)
{
    for (int i = 0; paths && i < n; i++) free(paths[i]);
    free(paths);
}

/* a line per image, the summary on stderr */
static enum status write_lines(FILE *f, int n, char **paths, const char *const *prompts, const double *scores,
                               int n_terms, const double *terms)
{
    for (int i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "image", paths[i]);
        if (prompts) cJSON_AddStringToObject(o, "prompt", prompts[i]);
        if (isfinite(scores[i])) cJSON_AddNumberToObject(o, "reward", scores[i]);
        else cJSON_AddNullToObject(o, "reward");
        if (n_terms) {
            cJSON *t = cJSON_AddArrayToObject(o, "reward_terms");
            for (int k = 0; k < n_terms; k++) cJSON_AddItemToArray(t, cJSON_CreateNumber(terms[(size_t)i * DRAFT_REWARD_MAX_TERMS + k]));
        }
        char *line = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!line) return tensor_fail(STATUS_OOM, "out of memory");
        fprintf(f, "%s\n", line);
        free(line);
    }
    return ferror(f) ? tensor_fail(STATUS_IO, "cannot write the scores: %s", strerror(errno)) : STATUS_OK;
}

int main(int argc, char **argv)
{
    const char *reward_spec = NULL, *prompt = NULL, *prompts_file = NULL, *div_spec = NULL, *model = NULL,
               *out = NULL;
    long batch = 8;
    enum device device = DEVICE_CPU;
    const char **args = calloc((size_t)argc, sizeof *args);
    int n = 0;
    if (!args) return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (draft_tool_info_flag(a, usage)) {   /* --version, --help */
            free(args);
            return 0;
        }
        if (strncmp(a, "--", 2)) {
            args[n++] = argv[i];
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "draft-score: missing value for '%s' (see --help)\n", a);
            free(args);
            return 2;
        }
        const char *v = argv[++i];
        bool ok = true;
        if (!strcmp(a, "--reward")) reward_spec = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--prompts")) prompts_file = v;
        else if (!strcmp(a, "--diversity-model")) div_spec = v;
        else if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--device")) {
            if (!draft_device_parse(v, &device)) ok = false, fprintf(stderr, "draft-score: --device is cpu or cuda, got '%s'\n", v);
        } else if (!strcmp(a, "--batch")) {
            char *end;
            errno = 0;
            batch = strtol(v, &end, 10);
            if (errno || end == v || *end || batch < 1 || batch > 256)
                ok = false, fprintf(stderr, "draft-score: --batch expects an integer in [1, 256], got '%s'\n", v);
        } else {
            fprintf(stderr, "draft-score: unknown option '%s' (see --help)\n", a);
            ok = false;
        }
        if (!ok) {
            free(args);
            return 2;
        }
    }
    const char *why = !reward_spec ? "no --reward" : !n ? "no image" : prompt && prompts_file ? "--prompt and --prompts both given"
                    : out && !out[0] ? "--out is empty" : NULL;
    if (why) {
        fprintf(stderr, "draft-score: %s (see --help)\n", why);
        free(args);
        return 2;
    }
    /* the images: files as given, folders as their PNGs in name order (grids left out) */
    char **paths = NULL, dir_prompts[PATH_MAX + 16] = "";
    int n_img = 0, cap = 0;
    enum status se = STATUS_OK;
    for (int i = 0; i < n && !se; i++) se = add_images(args[i], &paths, &n_img, &cap, dir_prompts, sizeof dir_prompts);
    free(args);
    n = n_img;
    if (se) {
        fprintf(stderr, "draft-score: %s\n", tensor_error());
        free_paths(paths, n);
        return 1;
    }
    if (!prompt && !prompts_file && dir_prompts[0]) {   /* draft-sample's folder: its prompts, image by image */
        prompts_file = dir_prompts;
        fprintf(stderr, "draft-score: the prompts of %s\n", dir_prompts);
    }
    /* an --out the scores could not be written to is said now, not after scoring every image */
    if (draft_device_check(device) || (out && nn_file_check_writable(out))) {
        fprintf(stderr, "draft-score: %s\n", tensor_error());
        free_paths(paths, n);
        return 1;
    }
    char embedded[1024];
    enum status s = STATUS_OK;
    if (!model) {   /* "clip" names the embedded model's own CLIP */
        if (!(s = draft_embedded_model(embedded, sizeof embedded))) model = embedded;
        else s = STATUS_OK, model = "";   /* only a "clip" spec needs it; it then fails naming the folder */
    }
    /* the prompts: one for all, or one a line for each image */
    char **file_prompts = NULL;
    int n_file = 0;
    const char **prompts = NULL;
    if (prompts_file && (s = draft_prompts_load(prompts_file, &file_prompts, &n_file))) {
        fprintf(stderr, "draft-score: %s\n", tensor_error());
        free_paths(paths, n);
        return 1;
    }
    if (prompts_file == dir_prompts && n_file != n) {   /* not this folder's images any more: no prompts */
        fprintf(stderr, "draft-score: %s has %d prompts for %d images: not used\n", prompts_file, n_file, n);
        draft_prompts_free(file_prompts, n_file);
        file_prompts = NULL, n_file = 0, prompts_file = NULL;
    }
    if (prompts_file && n_file != n) {
        fprintf(stderr, "draft-score: %s has %d prompts for %d images (one a line, in the images' order)\n", prompts_file,
                n_file, n);
        draft_prompts_free(file_prompts, n_file);
        free_paths(paths, n);
        return 2;
    }
    if (prompt || prompts_file) {
        if (!(prompts = calloc((size_t)n, sizeof *prompts))) {
            fprintf(stderr, "draft-score: out of memory\n");
            return 1;
        }
        for (int i = 0; i < n; i++) prompts[i] = prompt ? prompt : file_prompts[i];
    }
    char spec_buf[PATH_MAX + 16];
    struct draft_reward *reward = NULL, *div_model = NULL;
    reward = draft_reward_create_on(draft_reward_spec_for_model(reward_spec, model, spec_buf, sizeof spec_buf), DTYPE_F32,
                                    device);
    if (!reward) s = tensor_status();
    if (!s && div_spec) {
        if (!(div_model = draft_reward_create_on(draft_reward_spec_for_model(div_spec, model, spec_buf, sizeof spec_buf),
                                                 DTYPE_F32, device)))
            s = tensor_fail(STATUS_VALUE, "--diversity-model: %s", tensor_error());
        else if (!draft_reward_has_image_tower(div_model))
            s = tensor_fail(STATUS_VALUE, "--diversity-model %s: reward %s has no image tower", div_spec, div_model->name);
    }
    struct draft_reward_term tn[DRAFT_REWARD_MAX_TERMS];
    const int n_terms = reward ? draft_reward_terms(reward, tn) : 0;
    struct draft_image *ims = calloc((size_t)n, sizeof *ims);
    double *scores = calloc((size_t)n, sizeof *scores);
    double *terms = calloc((size_t)n * DRAFT_REWARD_MAX_TERMS, sizeof *terms);
    if (!s && (!ims || !scores || !terms)) s = tensor_fail(STATUS_OOM, "out of host memory");
    for (int i = 0; i < n && !s; i++)
        if ((s = draft_png_read(paths[i], &ims[i]))) tensor_fail(s, "%s", tensor_error());
    /* consecutive images of one size, up to --batch, in one call; a sum's terms by image: a batch of
     * one takes them per image (draft_reward_terms_take averages over what it scored) */
    const int B = n_terms ? 1 : (int)batch;
    for (int i0 = 0; i0 < n && !s;) {
        int nb = 1;
        while (i0 + nb < n && nb < B && ims[i0 + nb].w == ims[i0].w && ims[i0 + nb].h == ims[i0].h) nb++;
        tensor_scope_begin();
        struct tensor *x = draft_image_to_tensor(ims + i0, nb, DTYPE_F32, device);
        s = x ? draft_reward_score_values(reward, x, prompts ? prompts + i0 : NULL, scores + i0, NULL) : tensor_status();
        if (!s && n_terms) draft_reward_terms_take(reward, terms + (size_t)i0 * DRAFT_REWARD_MAX_TERMS);   /* image i0's */
        tensor_scope_end();
        if (s)
            tensor_fail(s, "%s%s: %s%s", paths[i0], nb > 1 ? " (and the images after it in its batch)" : "", tensor_error(),
                        prompts ? "" : " (--prompt or --prompts gives the images' prompts)");
        i0 += nb;
    }
    /* --out: the lines in memory, then into place at once (a failed run leaves an earlier file as it was) */
    char *text = NULL;
    size_t text_len = 0;
    FILE *f = s ? NULL : out ? open_memstream(&text, &text_len) : stdout;
    if (!s && !f) s = tensor_fail(STATUS_OOM, "out of memory");
    if (!s) s = write_lines(f, n, paths, prompts, scores, n_terms, terms);
    if (f && f != stdout && fclose(f) && !s) s = tensor_fail(STATUS_OOM, "out of memory");
    if (!s && out) s = nn_file_write_atomic(out, 1, (const void *[]){text}, &text_len);
    free(text);
    /* the summary, and how alike the images are where they share a size (the first image's) */
    double diversity = NAN, clip_div = NAN;
    int same = 0;
    for (int i = 0; i < n && !s; i++) same += ims[i].w == ims[0].w && ims[i].h == ims[0].h;
    if (!s && same >= 2) {
        struct draft_image *one = calloc((size_t)same, sizeof *one);
        for (int i = 0, k = 0; one && i < n; i++)
            if (ims[i].w == ims[0].w && ims[i].h == ims[0].h) one[k++] = ims[i];   /* shallow: not freed */
        tensor_scope_begin();
        struct tensor *x = one ? draft_image_to_tensor(one, same, DTYPE_F32, device) : NULL;
        if (x) diversity = draft_diversity(x);
        if (x && div_model) {
            struct tensor *emb = draft_reward_image_embeds(div_model, x);
            if (emb) clip_div = draft_feature_diversity(emb);
            else s = tensor_status();
        }
        if (!x && !s) s = tensor_status();
        tensor_scope_end();
        free(one);
    }
    if (!s) {
        double sum = 0, lo = INFINITY, hi = -INFINITY;
        for (int i = 0; i < n; i++) sum += scores[i], lo = fmin(lo, scores[i]), hi = fmax(hi, scores[i]);
        fprintf(stderr, "draft-score: reward %s: mean %.6g over %d image%s (lowest %.6g, highest %.6g)\n", reward_spec,
                sum / n, n, n == 1 ? "" : "s", lo, hi);
        for (int k = 0; k < n_terms; k++) {
            double t = 0;
            for (int i = 0; i < n; i++) t += terms[(size_t)i * DRAFT_REWARD_MAX_TERMS + k];
            fprintf(stderr, "draft-score:   term %d, %g * %s: mean %.6g\n", k + 1, tn[k].weight, tn[k].spec, t / n);
        }
        if (isfinite(diversity))
            fprintf(stderr, "draft-score: diversity %.4f over the %d images of %dx%d\n", diversity, same, ims[0].w, ims[0].h);
        if (isfinite(clip_div)) fprintf(stderr, "draft-score: CLIP diversity %.4f (%s)\n", clip_div, div_spec);
    }
    for (int i = 0; ims && i < n; i++) draft_image_free(&ims[i]);
    free(ims);
    free(scores);
    free(terms);
    free(prompts);
    draft_prompts_free(file_prompts, n_file);
    draft_reward_free(reward);
    draft_reward_free(div_model);
    free_paths(paths, n);
    if (s) {
        fprintf(stderr, "draft-score: %s\n", tensor_error());
        return 1;
    }
    return 0;
}
