/* reward.c — DRaFT's differentiable rewards (see reward.h for the specs and conventions). */
#include "draft/reward.h"
#include "diffusion/blip.h"
#include "diffusion/owlvit.h"
#include "diffusion/wordpiece.h"
#include "nn/file.h"
#include "nn/weights.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static const char reward_specs[] =
    "  aesthetic:<clip_vision_dir>,<head.pth|head.safetensors>\n"
    "  clip:<clip_model_dir>[,logit_scale][,text=<target text>]\n"
    "  hpsv2:<HPS_v2_compressed.pt>,<tokenizer_dir>[,text=<target text>]\n"
    "  pickscore:<PickScore_v1 dir>[,text=<target text>]\n"
    "  classify:<clip_model_dir>,text=<target>|<other>|...   (log p(target) of CLIP's zero-shot classifier)\n"
    "  detect:<owlvit_dir>[,text=<object>]   (OWL-ViT's best box score for the object, or for the prompt)\n"
    "  imagereward:<dir>[,text=<prompt>]   (ImageReward: ImageReward.pt, med_config.json, vocab.txt)\n"
    "  sum:[<w>*]<spec>;[<w>*]<spec>;...   (a weighted sum of the others; w defaults to 1)\n"
    "  colorfulness\n"
    "  brightness=<target in [0,1]>\n"
    "  contrast=<target std in [0,1]>\n"
    "  jpeg\n"
    "  red\n";

const char *draft_reward_specs(void) { return reward_specs; }

/* ---------------------------------------------------------------- small helpers */

/* a constant from f64 host data, in dt on dev (caller- or scope-owned) */
static struct tensor *const_tensor(const double *data, int ndim, const int64_t *shape, enum dtype dt, enum device dev)
{
    tensor_scope_begin();
    struct tensor *t = tensor_from_data(DTYPE_F64, ndim, shape, data);
    if (t && dt != DTYPE_F64) t = tensor_to_dtype(t, dt);
    if (t && dev != DEVICE_CPU) t = tensor_to_device(t, dev);
    return tensor_scope_return(t);
}

static struct tensor *cast_to(struct tensor *x, enum dtype dt, enum device dev)
{
    if (x && x->dtype != dt) x = ag_to_dtype(x, dt);
    if (x && tensor_device(x) != dev) x = ag_to_device(x, dev);
    return x;
}

/* [-1, 1] -> [0, 1], clamped as the SD pipeline does before any reward model sees the image */
static struct tensor *to_unit(struct tensor *images) { return ag_clamp(ag_affine(images, 0.5, 0.5), 0, 1); }

static struct tensor *channel(struct tensor *x, int c) { return ag_narrow(x, 1, c, 1); }   /* [B,1,H,W] */

static struct tensor *lincomb3(struct tensor *r, struct tensor *g, struct tensor *b, double wr, double wg, double wb)
{
    return ag_add(ag_add(ag_scale(r, wr), ag_scale(g, wg)), ag_scale(b, wb));
}

static const int spatial_dims[3] = {1, 2, 3};

/* ---------------------------------------------------------------- analytic rewards */

enum analytic_kind { AN_COLORFULNESS, AN_BRIGHTNESS, AN_CONTRAST, AN_JPEG, AN_RED };

struct analytic_ctx {
    enum analytic_kind kind;
    double target;
};

/* eps under square roots: keeps the gradient finite for a flat image; it moves the value by at
 * most sqrt(eps) = 1e-6 */
#define SQRT_EPS 1e-12

static struct tensor *colorfulness(struct tensor *x)
{
    struct tensor *R = channel(x, 0), *G = channel(x, 1), *B = channel(x, 2);
    struct tensor *rg = ag_sub(R, G), *yb = ag_sub(ag_scale(ag_add(R, G), 0.5), B);
    struct tensor *var = ag_add(ag_var(rg, 3, spatial_dims, false, 0), ag_var(yb, 3, spatial_dims, false, 0));
    struct tensor *mrg = ag_mean(rg, 3, spatial_dims, false), *myb = ag_mean(yb, 3, spatial_dims, false);
    struct tensor *msq = ag_add(ag_square(mrg), ag_square(myb));
    return ag_add(ag_sqrt(ag_affine(var, 1, SQRT_EPS)), ag_scale(ag_sqrt(ag_affine(msq, 1, SQRT_EPS)), 0.3));
}

static struct tensor *luminance(struct tensor *x)   /* Rec. 601, as JPEG's Y */
{
    return lincomb3(channel(x, 0), channel(x, 1), channel(x, 2), 0.299, 0.587, 0.114);
}

/* JPEG (ITU T.81 Annex K) quantisation tables at quality 50 */
static const double jpeg_q_luma[64] = {
    16, 11, 10, 16, 24,  40,  51,  61,  12, 12, 14, 19, 26,  58,  60,  55,  14, 13, 16, 24, 40,  57,  69,  56,
    14, 17, 22, 29, 51,  87,  80,  62,  18, 22, 37, 56, 68,  109, 103, 77,  24, 35, 55, 64, 81,  104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
};
static const double jpeg_q_chroma[64] = {
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
};
#define JPEG_SMOOTH_ABS 0.01   /* |z| ~ sqrt(z^2 + d^2) - d, in units of one quantisation step */

/* JPEG compressibility surrogate. 0..255 RGB -> level-shifted YCbCr (JFIF full range, no
 * chroma subsampling) -> orthonormal 8x8 DCT-II per block (D X D^T as batched matmuls) -> z =
 * coef / Q (luma table for Y, chroma for Cb/Cr) -> -mean(smooth |z|) over channels, blocks and
 * coefficients: fewer / smaller quantised coefficients = fewer bits. Images whose sides are not
 * multiples of 8 are cropped to the top-left multiple (JPEG would pad by replication). */
static struct tensor *jpeg_surrogate(struct tensor *x)
{
    const int64_t Bn = x->shape[0], H8 = x->shape[2] / 8, W8 = x->shape[3] / 8;
    x = ag_narrow(ag_narrow(ag_scale(x, 255), 2, 0, H8 * 8), 3, 0, W8 * 8);
    struct tensor *R = channel(x, 0), *G = channel(x, 1), *B = channel(x, 2);
    struct tensor *ycc[3] = {
        ag_affine(lincomb3(R, G, B, 0.299, 0.587, 0.114), 1, -128),
        lincomb3(R, G, B, -0.168736, -0.331264, 0.5),
        lincomb3(R, G, B, 0.5, -0.418688, -0.081312),
    };
    struct tensor *y = ag_concat(3, ycc, 1);
    y = ag_reshape(y, 6, (int64_t[]){Bn, 3, H8, 8, W8, 8});
    y = ag_permute(y, (int[]){0, 1, 2, 4, 3, 5});   /* [B, 3, H8, W8, 8(rows), 8(cols)] */
    double d[64], dt_[64], q[3 * 64];
    for (int u = 0; u < 8; u++)
        for (int k = 0; k < 8; k++) {
            d[u * 8 + k] = (u ? sqrt(2.0 / 8) : sqrt(1.0 / 8)) * cos((2 * k + 1) * u * M_PI / 16);
            dt_[k * 8 + u] = d[u * 8 + k];
        }
    for (int i = 0; i < 64; i++) q[i] = jpeg_q_luma[i], q[64 + i] = q[128 + i] = jpeg_q_chroma[i];
    const enum dtype dt = x->dtype;
    const enum device dev = tensor_device(x);
    struct tensor *D = const_tensor(d, 2, (int64_t[]){8, 8}, dt, dev);
    struct tensor *DT = const_tensor(dt_, 2, (int64_t[]){8, 8}, dt, dev);
    struct tensor *Q = const_tensor(q, 5, (int64_t[]){3, 1, 1, 8, 8}, dt, dev);
    struct tensor *coef = ag_matmul(ag_matmul(D, y), DT);   /* F[u][v] = sum D[u][r] X[r][c] D[v][c] */
    struct tensor *z = ag_div(coef, Q);
    struct tensor *a = ag_affine(ag_sqrt(ag_affine(ag_square(z), 1, JPEG_SMOOTH_ABS * JPEG_SMOOTH_ABS)), 1,
                                 -JPEG_SMOOTH_ABS);
    return ag_neg(ag_mean(a, 5, (int[]){1, 2, 3, 4, 5}, false));
}

static struct tensor *analytic_score(struct draft_reward *r, struct tensor *images, const char *const *prompts)
{
    (void)prompts;
    const struct analytic_ctx *c = r->ctx;
    tensor_scope_begin();
    struct tensor *x = to_unit(images), *s = NULL;
    switch (c->kind) {
    case AN_COLORFULNESS: s = colorfulness(x); break;
    case AN_BRIGHTNESS:
        s = ag_neg(ag_square(ag_affine(ag_mean(luminance(x), 3, spatial_dims, false), 1, -c->target)));
        break;
    case AN_CONTRAST: {
        struct tensor *sd = ag_sqrt(ag_affine(ag_var(luminance(x), 3, spatial_dims, false, 0), 1, SQRT_EPS));
        s = ag_neg(ag_square(ag_affine(sd, 1, -c->target)));
        break;
    }
    case AN_JPEG:
        if (images->shape[2] < 8 || images->shape[3] < 8) {
            tensor_fail(STATUS_SHAPE, "reward jpeg: images must be at least 8x8, got %lldx%lld",
                        (long long)images->shape[2], (long long)images->shape[3]);
            break;
        }
        s = jpeg_surrogate(x);
        break;
    case AN_RED:
        s = ag_mean(ag_sub(channel(x, 0), ag_scale(ag_add(channel(x, 1), channel(x, 2)), 0.5)), 3, spatial_dims, false);
        break;
    }
    return tensor_scope_return(s);
}

static void plain_free(struct draft_reward *r)
{
    free(r->ctx);
    free(r);
}

static struct draft_reward *reward_new(const char *name, struct tensor *(*score)(struct draft_reward *, struct tensor *,
                                                                               const char *const *),
                                       void (*fr)(struct draft_reward *), void *ctx)
{
    struct draft_reward *r = calloc(1, sizeof *r);
    if (!r) {
        tensor_fail(STATUS_OOM, "reward %s: out of memory", name);
        return NULL;
    }
    snprintf(r->name, sizeof r->name, "%s", name);
    r->score = score;
    r->free = fr;
    r->ctx = ctx;
    return r;
}

static struct draft_reward *analytic_create(const char *name, enum analytic_kind kind, double target)
{
    struct analytic_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        tensor_fail(STATUS_OOM, "reward %s: out of memory", name);
        return NULL;
    }
    c->kind = kind;
    c->target = target;
    struct draft_reward *r = reward_new(name, analytic_score, plain_free, c);
    if (!r) free(c);
    return r;
}

/* ---------------------------------------------------------------- CLIP preprocessing */

/* PIL's bicubic filter (libImaging/Resample.c: a = -0.5, support 2) */
static double pil_bicubic(double x)
{
    const double a = -0.5;
    if (x < 0) x = -x;
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
}

struct tensor *draft_pil_bicubic_matrix(int64_t in, int64_t out)
{
    if (in <= 0 || out <= 0) {
        tensor_fail(STATUS_VALUE, "draft_pil_bicubic_matrix: sizes must be positive, got %lld -> %lld", (long long)in,
                    (long long)out);
        return NULL;
    }
    struct tensor *m = tensor_zeros(DTYPE_F64, 2, (int64_t[]){out, in}, DEVICE_CPU);
    if (!m) return NULL;
    double *w = tensor_data_ptr(m);
    /* precompute_coeffs: the filter widens by the downscale factor (antialias) */
    const double scale = (double)in / (double)out, filterscale = scale < 1 ? 1 : scale;
    const double support = 2.0 * filterscale, ss = 1.0 / filterscale;
    for (int64_t xx = 0; xx < out; xx++) {
        double center = ((double)xx + 0.5) * scale, ww = 0;
        int64_t xmin = (int64_t)(center - support + 0.5), xmax = (int64_t)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in) xmax = in;
        for (int64_t x = xmin; x < xmax; x++) ww += (w[xx * in + x] = pil_bicubic(((double)x - center + 0.5) * ss));
        if (ww != 0)
            for (int64_t x = xmin; x < xmax; x++) w[xx * in + x] /= ww;
    }
    return m;
}

/* python round(v / 2) for an integer v >= 0 (ties to even), as torchvision's CenterCrop */
static int64_t half_round_even(int64_t v)
{
    int64_t k = v / 2;
    if (v % 2 == 0) return k;
    return (k % 2 == 0) ? k : k + 1;
}

/* the resize matrix for one side: PIL resize in -> scaled, then rows [offset, offset + size) */
static struct tensor *side_matrix(int64_t in, int64_t scaled, int64_t size, enum dtype dt, enum device dev)
{
    tensor_scope_begin();
    struct tensor *m = draft_pil_bicubic_matrix(in, scaled);
    if (m) m = tensor_narrow(m, 0, half_round_even(scaled - size), size);
    if (m) m = tensor_contiguous(m);
    if (m && dt != DTYPE_F64) m = tensor_to_dtype(m, dt);
    if (m && dev != DEVICE_CPU) m = tensor_to_device(m, dev);
    return tensor_scope_return(m);
}

static const double clip_mean[3] = {0.48145466, 0.4578275, 0.40821073};
static const double clip_std[3] = {0.26862954, 0.26130258, 0.27577711};

/* scipy.ndimage's 'mirror' extension of index i into [0, n): d c b | a b c d | c b a */
static int64_t mirror_index(int64_t i, int64_t n)
{
    if (n == 1) return 0;
    const int64_t p = 2 * n - 2;
    i %= p;
    if (i < 0) i += p;
    return i < n ? i : p - i;
}

/* one axis of Owlv2ImageProcessor's resize, n -> size, as [size, n] (f64, CPU): when it shrinks, a
 * Gaussian of sigma (n / size - 1) / 2 cut at 4 sigma (ndimage.gaussian_filter), then linear
 * interpolation on the pixel grid (ndimage.zoom, order 1, grid_mode: output o reads input
 * (o + 0.5) n / size - 0.5); both extend the image by mirroring. Row o is its two taps' rows of
 * the Gaussian, so it is built without the [n, n] filter. */
static struct tensor *owlv2_axis_matrix(int64_t n, int64_t size)
{
    struct tensor *m = tensor_zeros(DTYPE_F64, 2, (int64_t[]){size, n}, DEVICE_CPU);
    if (!m) return NULL;
    double *mv = tensor_data_ptr(m);
    const double f = (double)n / (double)size, sigma = f > 1 ? (f - 1) / 2 : 0;
    const int64_t r = (int64_t)(4.0 * sigma + 0.5);
    double *w = malloc(sizeof *w * (size_t)(2 * r + 1)), sum = 0;
    if (!w) {
        tensor_fail(STATUS_OOM, "owlv2 resize: out of memory");
        return NULL;
    }
    for (int64_t k = -r; k <= r; k++) sum += (w[k + r] = sigma > 0 ? exp(-0.5 * (double)(k * k) / (sigma * sigma)) : 1);
    for (int64_t o = 0; o < size; o++) {
        const double c = ((double)o + 0.5) * f - 0.5, i0 = floor(c), t = c - i0;
        for (int tap = 0; tap < 2; tap++) {
            const int64_t at = mirror_index((int64_t)i0 + tap, n);
            for (int64_t k = -r; k <= r; k++) mv[o * n + mirror_index(at + k, n)] += (tap ? t : 1 - t) * w[k + r] / sum;
        }
    }
    free(w);
    return m;
}

/* OWLv2: padded to n x n at the bottom and right with 0.5, then resized: y = Av x Ah^T +
 * 0.5 (1 - av ah^T), A the resize's columns of the image's rows (columns) and a their row sums
 * (the resize's whole rows sum to 1) */
static struct tensor *owlv2_resize(struct tensor *x, int64_t size)
{
    const enum dtype dt = x->dtype;
    const enum device dev = tensor_device(x);
    const int64_t H = x->shape[2], W = x->shape[3], n = H > W ? H : W;
    tensor_scope_begin();
    struct tensor *m = owlv2_axis_matrix(n, size);
    struct tensor *av = m ? tensor_contiguous(tensor_narrow(m, 1, 0, H)) : NULL;
    struct tensor *ah = m ? tensor_contiguous(tensor_narrow(m, 1, 0, W)) : NULL;
    if (!av || !ah) return tensor_scope_return(NULL);
    struct tensor *y = ag_matmul(ag_matmul(cast_to(av, dt, dev), x), tensor_transpose(cast_to(ah, dt, dev), 0, 1));
    if (H != W) {
        struct tensor *c = tensor_zeros(DTYPE_F64, 2, (int64_t[]){size, size}, DEVICE_CPU);
        double *sv = malloc(sizeof *sv * (size_t)(2 * size)), *cv = c ? tensor_data_ptr(c) : NULL;
        if (!sv || !cv) {
            free(sv);
            tensor_fail(STATUS_OOM, "owlv2 resize: out of memory");
            return tensor_scope_return(NULL);
        }
        const double *avv = tensor_data_ptr(av), *ahv = tensor_data_ptr(ah);
        for (int64_t i = 0; i < size; i++) {
            sv[i] = sv[size + i] = 0;
            for (int64_t k = 0; k < H; k++) sv[i] += avv[i * H + k];
            for (int64_t k = 0; k < W; k++) sv[size + i] += ahv[i * W + k];
        }
        for (int64_t i = 0; i < size; i++)
            for (int64_t j = 0; j < size; j++) cv[i * size + j] = 0.5 * (1 - sv[i] * sv[size + j]);
        free(sv);
        y = ag_add(y, cast_to(c, dt, dev));
    }
    return tensor_scope_return(y);
}

/* how an image becomes a tower's square input: CLIP's shortest side and centre crop, OWL-ViT's
 * stretch of both sides, OWLv2's pad and resize */
enum fit { FIT_CROP, FIT_STRETCH, FIT_OWLV2 };

static struct tensor *preprocess(const char *what, struct tensor *images, int64_t size, enum fit fit)
{
    if (!images) return NULL;
    char a[128];
    if (images->ndim != 4 || images->shape[1] != 3 || images->shape[0] < 1 || !dtype_is_float(images->dtype) ||
        size <= 0) {
        tensor_fail(STATUS_SHAPE, "%s: images must be float [B, 3, H, W] and size > 0, got %s %s, size %lld", what,
                    dtype_name(images->dtype), tensor_shape_str(images, a, sizeof a), (long long)size);
        return NULL;
    }
    tensor_scope_begin();
    const enum dtype dt = images->dtype;
    const enum device dev = tensor_device(images);
    const int64_t H = images->shape[2], W = images->shape[3];
    struct tensor *x = to_unit(images);
    if (fit == FIT_OWLV2) {
        x = owlv2_resize(x, size);
    } else if (H != size || W != size) {
        /* Resize(size): the shortest side becomes size, the other int(size * long / short); then CenterCrop */
        int64_t nh = H <= W ? size : size * H / W, nw = H <= W ? size * W / H : size;
        if (nh < size || fit == FIT_STRETCH) nh = size;
        if (nw < size || fit == FIT_STRETCH) nw = size;
        struct tensor *mv = side_matrix(H, nh, size, dt, dev), *mh = side_matrix(W, nw, size, dt, dev);
        x = ag_matmul(ag_matmul(mv, x), mh ? tensor_transpose(mh, 0, 1) : NULL);
    }
    const int64_t cs[4] = {1, 3, 1, 1};
    struct tensor *mean = const_tensor(clip_mean, 4, cs, dt, dev), *std = const_tensor(clip_std, 4, cs, dt, dev);
    return tensor_scope_return(ag_div(ag_sub(x, mean), std));
}

struct tensor *draft_clip_preprocess(struct tensor *images, int64_t size)
{
    return preprocess("draft_clip_preprocess", images, size, FIT_CROP);
}

struct tensor *draft_owlvit_preprocess(struct tensor *images, int64_t size)
{
    return preprocess("draft_owlvit_preprocess", images, size, FIT_STRETCH);
}

struct tensor *draft_owlv2_preprocess(struct tensor *images, int64_t size)
{
    return preprocess("draft_owlv2_preprocess", images, size, FIT_OWLV2);
}

/* ---------------------------------------------------------------- config and weights loading */

/* a sub-config of a CLIPModel config.json (text_config / vision_config) restricted to the keys
 * the CLIP config readers know: real configs carry dozens of generic PretrainedConfig keys
 * (return_dict, chunk_size_feed_forward, ...) that do not change the forward */
static enum status sub_config(struct nn_config *top, const char *key, const char *const *keep, int n_keep,
                              struct nn_config *out)
{
    const cJSON *sub = cJSON_GetObjectItemCaseSensitive((const cJSON *)top->root, key);
    if (!cJSON_IsObject(sub)) return tensor_fail(STATUS_FORMAT, "%s: '%s' is missing or not an object", top->path, key);
    cJSON *o = cJSON_CreateObject();
    if (!o) return tensor_fail(STATUS_OOM, "%s: out of memory", top->path);
    for (int i = 0; i < n_keep; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(sub, keep[i]);
        if (v) cJSON_AddItemToObject(o, keep[i], cJSON_Duplicate(v, true));
    }
    char *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!json) return tensor_fail(STATUS_OOM, "%s: out of memory", top->path);
    char label[600];
    snprintf(label, sizeof label, "%s[%s]", top->path, key);
    enum status s = nn_config_parse(out, json, strlen(json), label);
    free(json);
    return s;
}

static const char *const text_keys[] = {
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "max_position_embeddings", "layer_norm_eps", "hidden_act", "eos_token_id",
};
static const char *const vision_keys[] = {
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
    "image_size", "patch_size", "projection_dim", "layer_norm_eps", "hidden_act",
};
#define N_OF(a) ((int)(sizeof(a) / sizeof *(a)))

/* the configs of <dir>/config.json. A CLIPModel config (text_config/vision_config) fills the
 * towers asked for (tc may be NULL) and the top-level projection_dim; a bare
 * CLIPVisionModelWithProjection config fills vc only. *whole says which it was. */
static enum status clip_folder_configs(const char *dir, struct clip_text_config *tc, struct clip_vision_config *vc,
                                       int64_t *projection_dim, bool *whole)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!nn_file_exists(path)) return tensor_fail(STATUS_IO, "CLIP folder %s: no config.json (expected %s)", dir, path);
    struct nn_config top;
    enum status s = nn_config_load(&top, path);
    if (s) return s;
    *whole = nn_config_has(&top, "vision_config");
    if (!*whole) {
        if (tc) s = tensor_fail(STATUS_FORMAT, "%s: not a CLIPModel config (no text_config / vision_config)", path);
        else s = clip_vision_config_read(vc, &top);
        *projection_dim = vc->projection_dim;
        nn_config_free(&top);
        return s;
    }
    struct nn_config sub;
    s = sub_config(&top, "vision_config", vision_keys, N_OF(vision_keys), &sub);
    if (!s) {
        s = clip_vision_config_read(vc, &sub);
        nn_config_free(&sub);
    }
    if (!s && tc) {
        s = sub_config(&top, "text_config", text_keys, N_OF(text_keys), &sub);
        if (!s) {
            s = clip_text_config_read(tc, &sub);
            nn_config_free(&sub);
        }
    }
    /* CLIPModel's projections use the top-level projection_dim (the sub-configs' may be stale) */
    *projection_dim = nn_config_int(&top, "projection_dim", 512);
    if (!s && *projection_dim <= 0) s = tensor_fail(STATUS_FORMAT, "%s: projection_dim must be positive", path);
    vc->projection_dim = *projection_dim;
    nn_config_free(&top);
    return s;
}

/* model.safetensors, else the pytorch_model.bin of older (or .bin-only) repositories */
static struct nn_weights *clip_folder_weights(const char *dir)
{
    char path[1024];
    static const char *const names[] = {"model.safetensors", "pytorch_model.bin"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (nn_file_exists(path)) return nn_weights_open(path);
    }
    tensor_fail(STATUS_IO, "CLIP folder %s: no model.safetensors or pytorch_model.bin in it", dir);
    return NULL;
}

/* ---------------------------------------------------------------- aesthetic head */

#define HEAD_LAYERS 5
static const char *const head_layer_names[HEAD_LAYERS] = {"layers.0", "layers.2", "layers.4", "layers.6", "layers.7"};

struct draft_aesthetic_head {
    struct tensor *w[HEAD_LAYERS], *b[HEAD_LAYERS];   /* owned */
    int64_t dim;
};

void draft_aesthetic_head_free(struct draft_aesthetic_head *h)
{
    if (!h) return;
    for (int i = 0; i < HEAD_LAYERS; i++) {
        tensor_free(h->w[i]);
        tensor_free(h->b[i]);
    }
    free(h);
}

int64_t draft_aesthetic_head_dim(const struct draft_aesthetic_head *h) { return h ? h->dim : 0; }

/* the 5 linears <prefix>layers.0/2/4/6/7 of an open state dict; what names the head in messages */
static struct draft_aesthetic_head *head_from_weights(const struct nn_weights *wf, const char *prefix,
                                                      const char *what, enum dtype dt, enum device dev)
{
    const char *path = nn_weights_path(wf);
    struct draft_aesthetic_head *h = calloc(1, sizeof *h);
    enum status s = h ? STATUS_OK : tensor_fail(STATUS_OOM, "%s: out of memory", what);
    tensor_scope_begin();
    int64_t in = -1;
    for (int i = 0; !s && i < HEAD_LAYERS; i++) {
        char wn[128], bn[128], a[128], c[128];
        snprintf(wn, sizeof wn, "%s%s.weight", prefix, head_layer_names[i]);
        snprintf(bn, sizeof bn, "%s%s.bias", prefix, head_layer_names[i]);
        struct tensor *w = nn_weights_load(wf, wn, DTYPE_F64);
        struct tensor *b = w ? nn_weights_load(wf, bn, DTYPE_F64) : NULL;
        if (!w || !b) {
            s = tensor_fail(STATUS_FORMAT, "%s %s: cannot read %s / %s (%s)", what, path, wn, bn, tensor_error());
            break;
        }
        const int64_t out = i == HEAD_LAYERS - 1 ? 1 : (w->ndim == 2 ? w->shape[0] : -1);
        if (i == 0 && w->ndim == 2) in = w->shape[1];
        if (w->ndim != 2 || w->shape[1] != in || w->shape[0] != out || b->ndim != 1 || b->shape[0] != out) {
            s = tensor_fail(STATUS_SHAPE, "%s %s: %s is %s and %s is %s; expected [%lld, %lld] and [%lld]%s", what,
                            path, wn, tensor_shape_str(w, a, sizeof a), bn, tensor_shape_str(b, c, sizeof c),
                            (long long)out, (long long)in, (long long)out,
                            i == HEAD_LAYERS - 1 ? " (the last layer gives one score)" : "");
            break;
        }
        if (i == 0) h->dim = in;
        in = out;
        h->w[i] = tensor_keep(cast_to(w, dt, dev));
        h->b[i] = tensor_keep(cast_to(b, dt, dev));
        if (!h->w[i] || !h->b[i]) s = tensor_status();
    }
    tensor_scope_end();
    if (s) {
        draft_aesthetic_head_free(h);
        return NULL;
    }
    return h;
}

struct draft_aesthetic_head *draft_aesthetic_head_load(const char *path, enum dtype dt, enum device dev)
{
    if (!path || !nn_file_exists(path)) {
        tensor_fail(STATUS_IO, "aesthetic head: cannot open '%s' (a .pth or .safetensors with keys layers.0/2/4/6/7)",
                    path ? path : "(null)");
        return NULL;
    }
    struct nn_weights *w = nn_weights_open(path);   /* a torch.save zip or a safetensors file */
    struct draft_aesthetic_head *h = w ? head_from_weights(w, "", "aesthetic head", dt, dev) : NULL;
    nn_weights_close(w);
    return h;
}

struct tensor *draft_aesthetic_head_forward(const struct draft_aesthetic_head *h, struct tensor *embeds)
{
    if (!embeds) return NULL;
    char a[128];
    if (embeds->ndim != 2 || embeds->shape[1] != h->dim) {
        tensor_fail(STATUS_SHAPE, "aesthetic head: embeds must be [B, %lld], got %s", (long long)h->dim,
                    tensor_shape_str(embeds, a, sizeof a));
        return NULL;
    }
    tensor_scope_begin();
    /* eval mode: the Dropouts between the linears are identities and there are no activations */
    struct tensor *x = cast_to(embeds, h->w[0]->dtype, tensor_device(h->w[0]));
    for (int i = 0; i < HEAD_LAYERS; i++) x = ag_linear(x, h->w[i], h->b[i]);
    return tensor_scope_return(x);
}

/* ---------------------------------------------------------------- aesthetic reward */

struct aesthetic_ctx {
    struct nn_params ps;
    struct clip_vision_model vm;
    bool vm_init;
    struct draft_aesthetic_head *head;
};

/* the reference's normalized(): a / ||a||, a zero norm replaced by 1; a tiny eps does the same */
#define NORM_EPS 1e-12

/* normalised CLIP image embeddings [B, P] of images in [-1, 1], in the tower's dtype and place */
static struct tensor *vision_embeds(const struct clip_vision_model *vm, struct tensor *images)
{
    const struct tensor *w = vm->class_embedding;
    tensor_scope_begin();
    struct tensor *px = cast_to(draft_clip_preprocess(images, vm->cfg.image_size), w->dtype, tensor_device(w));
    return tensor_scope_return(ag_normalize(clip_vision_forward(vm, px), 1, NORM_EPS));
}

static struct tensor *aesthetic_score(struct draft_reward *r, struct tensor *images, const char *const *prompts)
{
    (void)prompts;
    struct aesthetic_ctx *c = r->ctx;
    tensor_scope_begin();
    struct tensor *s = draft_aesthetic_head_forward(c->head, vision_embeds(&c->vm, images));
    s = s ? ag_reshape(s, 1, (int64_t[]){s->shape[0]}) : NULL;
    return tensor_scope_return(cast_to(s, images->dtype, tensor_device(images)));
}

static struct tensor *aesthetic_embed(struct draft_reward *r, struct tensor *images)
{
    return vision_embeds(&((struct aesthetic_ctx *)r->ctx)->vm, images);
}

static void aesthetic_free(struct draft_reward *r)
{
    struct aesthetic_ctx *c = r->ctx;
    if (c) {
        if (c->vm_init) clip_vision_free(&c->vm);
        nn_params_free(&c->ps);
        draft_aesthetic_head_free(c->head);
        free(c);
    }
    free(r);
}

struct draft_reward *draft_reward_aesthetic_create(const char *clip_vision_dir, const char *head_path, enum dtype dt,
                                                   enum device dev)
{
    if (!clip_vision_dir || !head_path) {
        tensor_fail(STATUS_VALUE, "reward aesthetic: a CLIP vision folder and a head file are both needed");
        return NULL;
    }
    struct aesthetic_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        tensor_fail(STATUS_OOM, "reward aesthetic: out of memory");
        return NULL;
    }
    nn_params_init(&c->ps, dt, dev);
    struct draft_reward *r = reward_new("aesthetic", aesthetic_score, aesthetic_free, c);
    if (!r) {
        nn_params_free(&c->ps);
        free(c);
        return NULL;
    }
    r->embed = aesthetic_embed;
    struct clip_vision_config vc;
    int64_t proj;
    bool whole = false;
    enum status s = clip_folder_configs(clip_vision_dir, NULL, &vc, &proj, &whole);
    if (!s) {
        s = clip_vision_init(&c->vm, &vc, &c->ps, "");
        c->vm_init = true;
    }
    if (!s) {
        struct nn_weights *w = clip_folder_weights(clip_vision_dir);
        /* a whole CLIPModel file also holds the text tower: ignore it */
        s = w ? (whole ? nn_params_load_mapped(&c->ps, w, NULL, NULL, NULL) : clip_params_load(&c->ps, w, ""))
              : tensor_status();
        nn_weights_close(w);
    }
    if (!s && !(c->head = draft_aesthetic_head_load(head_path, dt, dev))) s = tensor_status();
    if (!s && c->head->dim != vc.projection_dim)
        s = tensor_fail(STATUS_SHAPE, "reward aesthetic: the head %s reads %lld-d embeddings but the CLIP tower in %s "
                                      "projects to %lld (projection_dim)",
                        head_path, (long long)c->head->dim, clip_vision_dir, (long long)vc.projection_dim);
    if (s) {
        aesthetic_free(r);
        return NULL;
    }
    return r;
}

/* ---------------------------------------------------------------- CLIP similarity reward */

struct clip_ctx {
    /* owned when loaded from a folder */
    struct nn_params ps;
    bool own, text_init, vision_init;
    struct clip_text_model tm;
    struct clip_vision_model vm;
    struct nn_linear tproj_own;
    struct clip_tokenizer *tok_own;
    /* what the score uses (the owned ones, or borrowed) */
    const struct clip_text_model *text;
    const struct nn_linear *tproj;
    const struct clip_vision_model *vision;
    const struct clip_tokenizer *tok;
    double scale;
    struct tensor *target_emb;   /* [1, P] normalised, owned; NULL: use the prompts */
    /* classify: the class texts' normalised embeddings [C, P], owned, the target first (the
     * prompt's is computed per call, before them, when prompt_class) */
    struct tensor *class_emb;
    bool prompt_class;
    int32_t *class_ids;         /* classify: the class texts' token ids [n_classes][CLIP_CONTEXT] */
    int n_classes;
};

/* normalised text embeddings [n, P] of n texts, computed without a graph (the reward is
 * differentiated w.r.t. the images only) */
static struct tensor *clip_text_embeds(const struct clip_ctx *c, int n, const char *const *texts)
{
    int32_t *ids = malloc(sizeof *ids * (size_t)n * CLIP_CONTEXT);
    if (!ids) {
        tensor_fail(STATUS_OOM, "reward clip: out of memory");
        return NULL;
    }
    enum status s = STATUS_OK;
    for (int i = 0; !s && i < n; i++) {
        if (!texts[i]) s = tensor_fail(STATUS_VALUE, "reward clip: prompt %d is NULL", i);
        else s = clip_tokenize_77(c->tok, texts[i], ids + (size_t)i * CLIP_CONTEXT);
    }
    if (s) {
        free(ids);
        return NULL;
    }
    tensor_scope_begin();
    ag_no_grad_begin();
    struct tensor *t = tensor_from_data(DTYPE_I32, 2, (int64_t[]){n, CLIP_CONTEXT}, ids);
    free(ids);
    const struct tensor *w = c->text->token_embedding.weight;
    if (t && tensor_device(w) != DEVICE_CPU) t = tensor_to_device(t, tensor_device(w));
    struct tensor *e = clip_text_pooled(c->text, t, clip_text_forward(c->text, t));
    if (c->tproj) e = nn_linear_forward(c->tproj, e);
    e = ag_normalize(e, 1, NORM_EPS);
    ag_no_grad_end();
    return tensor_scope_return(e);
}

static struct tensor *clip_score(struct draft_reward *r, struct tensor *images, const char *const *prompts)
{
    struct clip_ctx *c = r->ctx;
    const int64_t B = images->shape[0];
    if (!c->target_emb && !prompts) {
        tensor_fail(STATUS_VALUE, "reward clip: no prompts given and no target text set (spec text=...)");
        return NULL;
    }
    tensor_scope_begin();
    const struct tensor *vw = c->vision->class_embedding;
    struct tensor *ie = vision_embeds(c->vision, images);
    struct tensor *te = c->target_emb ? c->target_emb : clip_text_embeds(c, (int)B, prompts);
    te = cast_to(te, vw->dtype, tensor_device(vw));
    char a[128], b[128];
    struct tensor *s = NULL;
    if (ie && te && ie->shape[1] != te->shape[1])
        tensor_fail(STATUS_SHAPE, "reward clip: image embeds %s and text embeds %s differ in width (a text projection missing?)",
                    tensor_shape_str(ie, a, sizeof a), tensor_shape_str(te, b, sizeof b));
    else
        s = ag_scale(ag_sum(ag_mul(ie, te), 1, (int[]){1}, false), c->scale);
    return tensor_scope_return(cast_to(s, images->dtype, tensor_device(images)));
}

static struct tensor *clip_embed(struct draft_reward *r, struct tensor *images)
{
    return vision_embeds(((struct clip_ctx *)r->ctx)->vision, images);
}

static void clip_free_reward(struct draft_reward *r)
{
    struct clip_ctx *c = r->ctx;
    if (c) {
        tensor_free(c->target_emb);
        tensor_free(c->class_emb);
        free(c->class_ids);
        if (c->own) {
            if (c->text_init) clip_text_free(&c->tm);
            if (c->vision_init) clip_vision_free(&c->vm);
            nn_params_free(&c->ps);
            clip_tokenizer_free(c->tok_own);
        }
        free(c);
    }
    free(r);
}

/* fills the target embedding when a target text is given */
static enum status clip_finish(struct clip_ctx *c, const char *target_text)
{
    if (c->vision->cfg.projection_dim <= 0) return tensor_fail(STATUS_VALUE, "reward clip: bad vision tower");
    if (!target_text) return STATUS_OK;
    tensor_scope_begin();
    c->target_emb = tensor_keep(clip_text_embeds(c, 1, &target_text));
    tensor_scope_end();
    return c->target_emb ? STATUS_OK : tensor_status();
}

struct draft_reward *draft_reward_clip_from_models(const struct clip_text_model *text,
                                                   const struct nn_linear *text_projection,
                                                   const struct clip_vision_model *vision,
                                                   const struct clip_tokenizer *tok, const char *target_text,
                                                   double scale)
{
    if (!text || !vision || !tok) {
        tensor_fail(STATUS_VALUE, "draft_reward_clip_from_models: text tower, vision tower and tokenizer are required");
        return NULL;
    }
    const int64_t tw = text_projection ? text_projection->weight->shape[0] : text->cfg.hidden_size;
    if (tw != vision->cfg.projection_dim) {
        tensor_fail(STATUS_SHAPE, "draft_reward_clip_from_models: text embeddings are %lld-d but image embeddings %lld-d%s",
                    (long long)tw, (long long)vision->cfg.projection_dim,
                    text_projection ? "" : " (pass a text projection)");
        return NULL;
    }
    struct clip_ctx *c = calloc(1, sizeof *c);
    struct draft_reward *r = c ? reward_new("clip", clip_score, clip_free_reward, c) : NULL;
    if (r) r->embed = clip_embed;
    if (!r) {
        free(c);
        tensor_fail(STATUS_OOM, "reward clip: out of memory");
        return NULL;
    }
    c->text = text, c->tproj = text_projection, c->vision = vision, c->tok = tok, c->scale = scale;
    if (clip_finish(c, target_text)) {
        clip_free_reward(r);
        return NULL;
    }
    return r;
}

static struct clip_tokenizer *clip_folder_tokenizer(const char *dir)
{
    char v[1024], m[1024];
    for (int k = 0; k < 2; k++) {
        snprintf(v, sizeof v, "%s%s/vocab.json", dir, k ? "/tokenizer" : "");
        snprintf(m, sizeof m, "%s%s/merges.txt", dir, k ? "/tokenizer" : "");
        if (nn_file_exists(v) && nn_file_exists(m)) return clip_tokenizer_load(v, m);
    }
    tensor_fail(STATUS_IO, "CLIP folder %s: no vocab.json + merges.txt in it or in %s/tokenizer", dir, dir);
    return NULL;
}

/* A reward owning towers made from the configs, their parameters read from w by `load`, and the
 * tokenizer of tok_dir; what names the reward in messages. */
static struct draft_reward *clip_owned_create(const char *what, const struct clip_text_config *tc,
                                              const struct clip_vision_config *vc, int64_t proj,
                                              const struct nn_weights *w,
                                              enum status (*load)(struct nn_params *, const struct nn_weights *),
                                              const char *tok_dir, const char *target_text, bool use_logit_scale,
                                              enum dtype dt, enum device dev)
{
    struct clip_ctx *c = calloc(1, sizeof *c);
    struct draft_reward *r = c ? reward_new("clip", clip_score, clip_free_reward, c) : NULL;
    if (r) r->embed = clip_embed;
    if (!r) {
        free(c);
        tensor_fail(STATUS_OOM, "reward %s: out of memory", what);
        return NULL;
    }
    c->own = true;
    nn_params_init(&c->ps, dt, dev);
    c->text = &c->tm, c->vision = &c->vm, c->tproj = &c->tproj_own, c->scale = 1;
    enum status s = (c->text_init = true, clip_text_init(&c->tm, tc, &c->ps, ""));
    if (!s) s = (c->vision_init = true, clip_vision_init(&c->vm, vc, &c->ps, ""));
    if (!s) s = nn_linear_init(&c->tproj_own, &c->ps, "text_projection", tc->hidden_size, proj, false);
    const bool has_ls = nn_weights_has(w, "logit_scale");
    if (!s && has_ls && !nn_param_new(&c->ps, "", "logit_scale", 0, NULL)) s = tensor_status();
    if (!s && use_logit_scale && !has_ls)
        s = tensor_fail(STATUS_FORMAT, "reward %s: %s has no 'logit_scale' (%s)", what, nn_weights_path(w),
                        strcmp(what, "classify") ? "drop the logit_scale flag" : "the classifier's temperature");
    if (!s) s = load(&c->ps, w);
    if (!s && use_logit_scale) {   /* read on the host: the parameter may live on the GPU */
        tensor_scope_begin();
        struct tensor *ls = tensor_to_device(nn_param_find(&c->ps, "logit_scale"), DEVICE_CPU);
        if (ls) c->scale = exp(tensor_get_flat(ls, 0));
        else s = tensor_status();
        tensor_scope_end();
    }
    if (!s && !(c->tok_own = clip_folder_tokenizer(tok_dir))) s = tensor_status();
    c->tok = c->tok_own;
    if (!s && clip_vocab_size(c->tok) != tc->vocab_size)
        s = tensor_fail(STATUS_SHAPE, "reward %s: the tokenizer in %s has %d tokens, the text tower of %s %lld", what,
                        tok_dir, clip_vocab_size(c->tok), nn_weights_path(w), (long long)tc->vocab_size);
    if (!s) s = clip_finish(c, target_text);
    if (s) {
        clip_free_reward(r);
        return NULL;
    }
    return r;
}

static enum status load_transformers(struct nn_params *ps, const struct nn_weights *w)
{
    return clip_params_load(ps, w, "");
}

static struct draft_reward *clip_folder_create(const char *what, const char *clip_dir, const char *target_text,
                                               bool use_logit_scale, enum dtype dt, enum device dev)
{
    if (!clip_dir) {
        tensor_fail(STATUS_VALUE, "reward %s: a CLIPModel folder is needed", what);
        return NULL;
    }
    struct clip_text_config tc;
    struct clip_vision_config vc;
    int64_t proj;
    bool whole;
    if (clip_folder_configs(clip_dir, &tc, &vc, &proj, &whole)) return NULL;
    struct nn_weights *w = clip_folder_weights(clip_dir);
    struct draft_reward *r = w ? clip_owned_create(what, &tc, &vc, proj, w, load_transformers, clip_dir, target_text,
                                                   use_logit_scale, dt, dev)
                               : NULL;
    nn_weights_close(w);
    return r;
}

struct draft_reward *draft_reward_clip_create(const char *clip_dir, const char *target_text, bool use_logit_scale,
                                              enum dtype dt, enum device dev)
{
    return clip_folder_create("clip", clip_dir, target_text, use_logit_scale, dt, dev);
}

/* log p(target | image) of CLIP's zero-shot classifier: a softmax over the classes of
 * exp(logit_scale) * cos(image, class text), as CLIPModel's logits_per_image */
static struct tensor *classify_score(struct draft_reward *r, struct tensor *images, const char *const *prompts)
{
    struct clip_ctx *c = r->ctx;
    const int64_t B = images->shape[0];
    if (c->prompt_class && !prompts) {
        tensor_fail(STATUS_VALUE, "reward classify: the target class is each image's prompt (text=|...), and no prompts "
                                  "were given");
        return NULL;
    }
    tensor_scope_begin();
    const struct tensor *vw = c->vision->class_embedding;
    struct tensor *ie = vision_embeds(c->vision, images);   /* [B, P] */
    struct tensor *ce = cast_to(c->class_emb, vw->dtype, tensor_device(vw));
    struct tensor *logits = ag_scale(ag_matmul(ie, ce ? ag_transpose(ce, 0, 1) : NULL), c->scale);   /* [B, C] */
    if (c->prompt_class && logits) {
        /* each image's prompt as class 0; a listed class the same text for CLIP (the same token
         * ids: case and spacing aside) is left out of its softmax (a -inf logit), so a prompt
         * among the classes is not counted twice */
        const int64_t C = c->n_classes;
        double *mask = calloc((size_t)(B * C), sizeof *mask);
        struct tensor *m = NULL;
        enum status st = mask ? STATUS_OK : tensor_fail(STATUS_OOM, "reward classify: out of memory");
        for (int64_t b = 0; b < B && !st; b++) {
            int32_t ids[CLIP_CONTEXT];
            if (!prompts[b]) st = tensor_fail(STATUS_VALUE, "reward classify: prompt %lld is NULL", (long long)b);
            else st = clip_tokenize_77(c->tok, prompts[b], ids);
            for (int64_t j = 0; j < C && !st; j++)
                if (!memcmp(ids, c->class_ids + j * CLIP_CONTEXT, sizeof ids)) mask[b * C + j] = -INFINITY;
        }
        if (!st) m = cast_to(tensor_from_data(DTYPE_F64, 2, (int64_t[]){B, C}, mask), logits->dtype, tensor_device(logits));
        free(mask);
        struct tensor *te = cast_to(clip_text_embeds(c, (int)B, prompts), vw->dtype, tensor_device(vw));
        struct tensor *parts[2] = {te ? ag_scale(ag_sum(ag_mul(ie, te), 1, (int[]){1}, true), c->scale) : NULL,
                                   m ? ag_add(logits, m) : NULL};
        logits = parts[0] && parts[1] ? ag_concat(2, parts, 1) : NULL;
    }
    struct tensor *lp = logits ? ag_log_softmax(logits, 1) : NULL;
    struct tensor *s = lp ? ag_reshape(ag_narrow(lp, 1, 0, 1), 1, (int64_t[]){B}) : NULL;
    return tensor_scope_return(cast_to(s, images->dtype, tensor_device(images)));
}

struct draft_reward *draft_reward_classify_create(const char *clip_dir, const char *classes, enum dtype dt,
                                                  enum device dev)
{
    if (!classes || !strchr(classes, '|')) {
        tensor_fail(STATUS_VALUE, "reward classify: the classes are text=<target>|<other>|... (at least two; an empty "
                                  "target: each image's prompt), got '%s'", classes ? classes : "");
        return NULL;
    }
    char *list = strdup(classes);
    const char **texts = calloc(strlen(classes) + 1, sizeof *texts);
    struct draft_reward *r = NULL;
    int n = 0;
    if (!list || !texts) tensor_fail(STATUS_OOM, "reward classify: out of memory");
    else {
        const bool prompt_class = list[0] == '|';
        bool ok = true;
        for (char *t = list + prompt_class, *bar; ok; t = bar + 1) {
            if ((bar = strchr(t, '|'))) *bar = 0;
            if (!*t) ok = !tensor_fail(STATUS_VALUE, "reward classify: class %d of '%s' is empty", n + 1 + prompt_class, classes);
            texts[n++] = t;
            if (!bar) break;
        }
        /* the folder's logit_scale is the classifier's temperature: required */
        if (ok && (r = clip_folder_create("classify", clip_dir, NULL, true, dt, dev))) {
            struct clip_ctx *c = r->ctx;
            snprintf(r->name, sizeof r->name, "classify");
            r->score = classify_score;
            c->prompt_class = prompt_class;
            c->n_classes = n;
            enum status st = (c->class_ids = malloc((size_t)n * CLIP_CONTEXT * sizeof *c->class_ids))
                                 ? STATUS_OK : tensor_fail(STATUS_OOM, "reward classify: out of memory");
            for (int i = 0; i < n && !st; i++) st = clip_tokenize_77(c->tok, texts[i], c->class_ids + (size_t)i * CLIP_CONTEXT);
            if (!st) {
                tensor_scope_begin();
                c->class_emb = tensor_keep(clip_text_embeds(c, n, texts));
                tensor_scope_end();
            }
            if (!c->class_emb) {
                draft_reward_free(r);
                r = NULL;
            }
        }
    }
    free(texts);
    free(list);
    return r;
}

struct draft_reward *draft_reward_openclip_create(const char *path, const char *tokenizer_dir,
                                                  int64_t text_head_width, int64_t vision_head_width, enum clip_act act,
                                                  const char *target_text, bool use_logit_scale, enum dtype dt,
                                                  enum device dev)
{
    if (!path || !tokenizer_dir) {
        tensor_fail(STATUS_VALUE, "reward openclip: a state dict file and a tokenizer folder are needed");
        return NULL;
    }
    struct clip_text_config tc;
    struct clip_vision_config vc;
    int64_t embed = 0;
    struct nn_weights *w = nn_weights_open(path);
    struct draft_reward *r = NULL;
    if (w && !clip_openclip_configs(w, text_head_width, vision_head_width, act, &tc, &vc, &embed))
        r = clip_owned_create("openclip", &tc, &vc, embed, w, clip_openclip_load, tokenizer_dir, target_text,
                              use_logit_scale, dt, dev);
    nn_weights_close(w);
    if (r) snprintf(r->name, sizeof r->name, "openclip");
    return r;
}

/* ---------------------------------------------------------------- interface */

/* images a reward reads: float [B, 3, H, W], none of the sizes 0; a message for reward r otherwise */
/* ---------------------------------------------------------------- OWL-ViT detection reward */

struct detect_ctx {
    struct nn_params ps;
    struct owlvit_model m;
    struct clip_tokenizer *tok;
    struct tensor *target;   /* [1, E] the object's query embedding, owned; NULL: each image's prompt */
};

/* query embeddings [n, E] of n texts, without a graph (the score is differentiated w.r.t. the images) */
static struct tensor *detect_queries(const struct detect_ctx *c, int n, const char *const *texts)
{
    const int L = (int)c->m.text_model.cfg.max_position_embeddings;
    int32_t *ids = malloc(sizeof *ids * (size_t)n * (size_t)L);
    if (!ids) {
        tensor_fail(STATUS_OOM, "reward detect: out of memory");
        return NULL;
    }
    enum status s = STATUS_OK;
    for (int i = 0; !s && i < n; i++) {
        if (!texts[i]) s = tensor_fail(STATUS_VALUE, "reward detect: prompt %d is NULL", i);
        else s = clip_tokenize_padded(c->tok, texts[i], ids + (size_t)i * (size_t)L, L, OWLVIT_PAD_ID);
    }
    if (s) {
        free(ids);
        return NULL;
    }
    tensor_scope_begin();
    ag_no_grad_begin();
    struct tensor *t = tensor_from_data(DTYPE_I32, 2, (int64_t[]){n, L}, ids);
    free(ids);
    const struct tensor *w = c->m.text_model.token_embedding.weight;
    if (t && tensor_device(w) != DEVICE_CPU) t = tensor_to_device(t, tensor_device(w));
    struct tensor *e = owlvit_text_embeds(&c->m, t);
    ag_no_grad_end();
    return tensor_scope_return(e);
}

/* the images as the vision tower takes them, in its dtype and place */
static struct tensor *detect_pixels(const struct detect_ctx *c, struct tensor *images)
{
    const struct clip_vision_model *vm = &c->m.vision_model;
    const struct tensor *w = vm->class_embedding;
    const int64_t S = vm->cfg.image_size;
    return cast_to(c->m.v2 ? draft_owlv2_preprocess(images, S) : draft_owlvit_preprocess(images, S), w->dtype,
                   tensor_device(w));
}

/* OwlViTModel's image_embeds: the class token through post_layernorm and visual_projection, normalised */
static struct tensor *detect_embed(struct draft_reward *r, struct tensor *images)
{
    const struct detect_ctx *c = r->ctx;
    tensor_scope_begin();
    struct tensor *e = clip_vision_forward(&c->m.vision_model, detect_pixels(c, images));
    return tensor_scope_return(ag_normalize(e, 1, NORM_EPS));
}

/* max over the patches of sigmoid(logit): the score of the best box for the object, as OWL-ViT's
 * post-processing reports it (the gradient reaches that box's patch) */
static struct tensor *detect_score(struct draft_reward *r, struct tensor *images, const char *const *prompts)
{
    struct detect_ctx *c = r->ctx;
    const int64_t B = images->shape[0];
    if (!c->target && !prompts) {
        tensor_fail(STATUS_VALUE, "reward detect: no prompts given and no object set (spec text=...)");
        return NULL;
    }
    tensor_scope_begin();
    const struct tensor *vw = c->m.vision_model.class_embedding;
    struct tensor *feats = owlvit_image_feats(&c->m, detect_pixels(c, images));   /* [B, P, D] */
    struct tensor *q = c->target ? c->target : detect_queries(c, (int)B, prompts);
    q = cast_to(q, vw->dtype, tensor_device(vw));
    if (q && !c->target) q = ag_reshape(q, TENSOR_SHAPE(B, 1, q->shape[1]));   /* each image its own query */
    struct tensor *logits = owlvit_class_logits(&c->m, feats, q);   /* [B, P, 1] */
    struct tensor *best = ag_max(ag_sigmoid(logits), 1, false);     /* [B, 1] */
    struct tensor *score = best ? ag_reshape(best, TENSOR_SHAPE(B)) : NULL;
    return tensor_scope_return(cast_to(score, images->dtype, tensor_device(images)));
}

static void detect_free(struct draft_reward *r)
{
    struct detect_ctx *c = r->ctx;
    if (c) {
        tensor_free(c->target);
        owlvit_free(&c->m);
        nn_params_free(&c->ps);
        clip_tokenizer_free(c->tok);
        free(c);
    }
    free(r);
}

struct draft_reward *draft_reward_detect_create(const char *owlvit_dir, const char *object, enum dtype dt,
                                                enum device dev)
{
    if (!owlvit_dir || !*owlvit_dir) {
        tensor_fail(STATUS_VALUE, "reward detect: an OWL-ViT folder is needed");
        return NULL;
    }
    if (object && !*object) {
        tensor_fail(STATUS_VALUE, "reward detect: text= is empty (leave it out to detect each image's prompt)");
        return NULL;
    }
    /* the top-level model_type first: a CLIP folder given by mistake is named as such */
    char path[1024], buf[64];
    snprintf(path, sizeof path, "%s/config.json", owlvit_dir);
    struct nn_config top;
    if (!nn_file_exists(path)) {
        tensor_fail(STATUS_IO, "reward detect: %s has no config.json (expected %s)", owlvit_dir, path);
        return NULL;
    }
    if (nn_config_load(&top, path)) return NULL;
    const char *mt = nn_config_string(&top, "model_type", "", buf, sizeof buf);
    const bool v2 = mt && !strcmp(mt, "owlv2"), owl = v2 || (mt && !strcmp(mt, "owlvit"));
    if (!owl)
        tensor_fail(STATUS_FORMAT, "reward detect: %s: model_type '%s' is not 'owlvit' or 'owlv2' (an "
                                   "OwlViTForObjectDetection or Owlv2ForObjectDetection folder, such as "
                                   "google/owlvit-base-patch32 or google/owlv2-base-patch16-ensemble, is needed)",
                    path, mt ? mt : "?");
    nn_config_free(&top);
    if (!owl) return NULL;
    struct clip_text_config tc;
    struct clip_vision_config vc;
    int64_t proj;
    bool whole;
    if (clip_folder_configs(owlvit_dir, &tc, &vc, &proj, &whole)) return NULL;
    if (!vc.owlvit) {
        tensor_fail(STATUS_FORMAT, "reward detect: %s/config.json is not an OWL-ViT config (its vision_config's model_type "
                                   "is neither owlvit_vision_model nor owlv2_vision_model)", owlvit_dir);
        return NULL;
    }
    struct detect_ctx *c = calloc(1, sizeof *c);
    struct draft_reward *r = c ? reward_new("detect", detect_score, detect_free, c) : NULL;
    if (r) r->embed = detect_embed;
    if (!r) {
        free(c);
        tensor_fail(STATUS_OOM, "reward detect: out of memory");
        return NULL;
    }
    nn_params_init(&c->ps, dt, dev);
    enum status s = owlvit_init(&c->m, &tc, &vc, proj, v2, &c->ps);
    struct nn_weights *w = s ? NULL : clip_folder_weights(owlvit_dir);
    if (!s && !w) s = tensor_status();
    if (!s) s = owlvit_params_load(&c->ps, w);
    nn_weights_close(w);
    if (!s && !(c->tok = clip_folder_tokenizer(owlvit_dir))) s = tensor_status();
    if (!s && clip_vocab_size(c->tok) != tc.vocab_size)
        s = tensor_fail(STATUS_SHAPE, "reward detect: the tokenizer in %s has %d tokens, the text tower %lld", owlvit_dir,
                        clip_vocab_size(c->tok), (long long)tc.vocab_size);
    if (!s && object) {
        tensor_scope_begin();
        c->target = tensor_keep(detect_queries(c, 1, &object));
        tensor_scope_end();
        if (!c->target) s = tensor_status();
    }
    if (s) {
        detect_free(r);
        return NULL;
    }
    return r;
}

/* ---------------------------------------------------------------- ImageReward */

/* ImageReward.py: the reward's affine normalisation, fixed in the reference */
#define IMAGEREWARD_MEAN 0.16717362830052426
#define IMAGEREWARD_STD 1.0333394966054072
#define IMAGEREWARD_MAX_LENGTH 35   /* its tokenizer call: padding="max_length", truncation, max_length=35 */

struct imagereward_ctx {
    struct nn_params ps;
    struct blip_vit vit;
    struct blip_bert bert;
    bool vit_init, bert_init;
    struct draft_aesthetic_head *mlp;
    struct nn_linear vision_proj;   /* BLIP's contrastive image projection: the image embeddings */
    bool has_proj;
    struct wp_tokenizer *tok;
    char *target;   /* the prompt for every image (text=), owned; NULL: each image's */
};

/* the images as BLIP's ViT takes them (CLIP's preprocessing), in its dtype and place */
static struct tensor *imagereward_pixels(const struct imagereward_ctx *c, struct tensor *images)
{
    const struct tensor *w = c->vit.cls_token;
    return cast_to(draft_clip_preprocess(images, c->vit.cfg.image_size), w->dtype, tensor_device(w));
}

/* BLIP's image embedding: normalize(vision_proj(image_embeds[:, 0])), as BLIP_Pretrain's image_feat */
static struct tensor *imagereward_embed(struct draft_reward *r, struct tensor *images)
{
    const struct imagereward_ctx *c = r->ctx;
    tensor_scope_begin();
    struct tensor *emb = blip_vit_forward(&c->vit, imagereward_pixels(c, images));
    struct tensor *cls = emb ? ag_reshape(ag_narrow(emb, 1, 0, 1), TENSOR_SHAPE(emb->shape[0], emb->shape[2])) : NULL;
    return tensor_scope_return(ag_normalize(nn_linear_forward(&c->vision_proj, cls), 1, NORM_EPS));
}

/* BLIP's ViT and its cross-attending BERT: the [CLS] row of the text tower, in the towers' dtype.
 * Texts run unpadded (blip.h says why that is the reference's result), those of one length together. */
static struct tensor *imagereward_features(const struct imagereward_ctx *c, struct tensor *images,
                                           const char *const *prompts)
{
    enum { N = IMAGEREWARD_MAX_LENGTH };
    const int64_t B = images->shape[0];
    const struct tensor *w = c->vit.cls_token;
    int32_t(*ids)[N] = malloc(sizeof *ids * (size_t)B), *group = malloc(sizeof *group * (size_t)B * N);
    int *len = calloc((size_t)B, sizeof *len);
    struct tensor **cls = calloc((size_t)B, sizeof *cls), **embs = calloc((size_t)B, sizeof *embs);
    bool ok = ids && group && len && cls && embs;
    if (!ok) tensor_fail(STATUS_OOM, "reward imagereward: out of memory");
    for (int64_t b = 0; ok && b < B; b++) {
        const char *text = c->target ? c->target : prompts[b];
        int32_t mask[N];
        if (!text) ok = !tensor_fail(STATUS_VALUE, "reward imagereward: prompt %lld is NULL", (long long)b);
        else ok = !wp_encode(c->tok, text, ids[b], mask, N);
        while (ok && len[b] < N && mask[len[b]]) len[b]++;
    }
    tensor_scope_begin();
    struct tensor *emb = ok ? blip_vit_forward(&c->vit, imagereward_pixels(c, images)) : NULL;   /* [B, N + 1, width] */
    ok = ok && emb;
    for (int64_t b = 0; ok && b < B; b++) {
        if (cls[b]) continue;
        /* the images whose texts have b's length, b first */
        int64_t members[64], G = 0;
        for (int64_t j = b; j < B && G < 64; j++)
            if (!cls[j] && len[j] == len[b]) {
                members[G] = j;
                memcpy(group + G * len[b], ids[j], sizeof(int32_t) * (size_t)len[b]);
                embs[G++] = ag_narrow(emb, 0, j, 1);
            }
        struct tensor *t = tensor_from_data(DTYPE_I32, 2, (int64_t[]){G, len[b]}, group);
        if (t && tensor_device(w) != DEVICE_CPU) t = tensor_to_device(t, tensor_device(w));
        struct tensor *h = blip_bert_forward(&c->bert, t, G == B ? emb : ag_concat((int)G, embs, 0));
        for (int64_t k = 0; h && k < G; k++)
            cls[members[k]] = ag_reshape(ag_narrow(ag_narrow(h, 0, k, 1), 1, 0, 1), TENSOR_SHAPE(1, h->shape[2]));
        ok = h && cls[b];
    }
    struct tensor *f = ok ? ag_concat((int)B, cls, 0) : NULL;   /* [B, hidden], in the images' order */
    free(ids);
    free(group);
    free(len);
    free(cls);
    free(embs);
    return tensor_scope_return(f);
}

static struct tensor *imagereward_score(struct draft_reward *r, struct tensor *images, const char *const *prompts)
{
    struct imagereward_ctx *c = r->ctx;
    const int64_t B = images->shape[0];
    if (!c->target && !prompts) {
        tensor_fail(STATUS_VALUE, "reward imagereward: no prompts given and no text set (spec text=...)");
        return NULL;
    }
    tensor_scope_begin();
    struct tensor *s = draft_aesthetic_head_forward(c->mlp, imagereward_features(c, images, prompts));   /* [B, 1] */
    s = s ? ag_affine(ag_reshape(s, TENSOR_SHAPE(B)), 1 / IMAGEREWARD_STD, -IMAGEREWARD_MEAN / IMAGEREWARD_STD) : NULL;
    return tensor_scope_return(cast_to(s, images->dtype, tensor_device(images)));
}

static void imagereward_free(struct draft_reward *r)
{
    struct imagereward_ctx *c = r->ctx;
    if (c) {
        if (c->vit_init) blip_vit_free(&c->vit);
        if (c->bert_init) blip_bert_free(&c->bert);
        nn_params_free(&c->ps);
        draft_aesthetic_head_free(c->mlp);
        wp_tokenizer_free(c->tok);
        free(c->target);
        free(c);
    }
    free(r);
}

/* the tensors of an ImageReward state dict that nothing reads: BLIP_Pretrain's text projection
 * and the position_ids buffer */
static bool imagereward_unused(const char *name)
{
    static const char ids[] = "embeddings.position_ids";
    const size_t n = strlen(name), k = sizeof ids - 1;
    return !strncmp(name, "blip.text_proj.", 15) || (n >= k && !strcmp(name + n - k, ids));
}

struct draft_reward *draft_reward_imagereward_create(const char *dir, const char *text, enum dtype dt, enum device dev)
{
    if (!dir || !*dir) {
        tensor_fail(STATUS_VALUE, "reward imagereward: a folder is needed");
        return NULL;
    }
    char wpath[1024], cpath[1024], vpath[1024];
    snprintf(wpath, sizeof wpath, "%s/ImageReward.pt", dir);
    if (!nn_file_exists(wpath)) snprintf(wpath, sizeof wpath, "%s/ImageReward.safetensors", dir);
    snprintf(cpath, sizeof cpath, "%s/med_config.json", dir);
    snprintf(vpath, sizeof vpath, "%s/vocab.txt", dir);
    if (!nn_file_exists(vpath)) snprintf(vpath, sizeof vpath, "%s/tokenizer/vocab.txt", dir);
    const char *missing = !nn_file_exists(wpath) ? "ImageReward.pt (or ImageReward.safetensors)"
                          : !nn_file_exists(cpath) ? "med_config.json"
                          : !nn_file_exists(vpath) ? "vocab.txt (bert-base-uncased's), in it or in its tokenizer/"
                                                   : NULL;
    if (missing) {
        tensor_fail(STATUS_IO, "reward imagereward: %s has no %s (THUDM/ImageReward holds ImageReward.pt and "
                               "med_config.json; BLIP tokenizes with bert-base-uncased's vocab.txt)", dir, missing);
        return NULL;
    }
    if (text && !*text) {
        tensor_fail(STATUS_VALUE, "reward imagereward: text= is empty (leave it out to score each image's prompt)");
        return NULL;
    }
    struct imagereward_ctx *c = calloc(1, sizeof *c);
    struct draft_reward *r = c ? reward_new("imagereward", imagereward_score, imagereward_free, c) : NULL;
    if (!r) {
        free(c);
        tensor_fail(STATUS_OOM, "reward imagereward: out of memory");
        return NULL;
    }
    nn_params_init(&c->ps, dt, dev);
    struct nn_weights *w = nn_weights_open(wpath);
    enum status s = w ? STATUS_OK : tensor_status();
    struct blip_vit_config vc;
    struct blip_bert_config bc;
    if (!s) s = blip_vit_config_from_weights(w, "blip.visual_encoder", &vc);
    if (!s) s = blip_bert_config_load(&bc, cpath, vc.width);
    if (!s) s = (c->vit_init = true, blip_vit_init(&c->vit, &vc, &c->ps, "blip.visual_encoder"));
    if (!s) s = (c->bert_init = true, blip_bert_init(&c->bert, &bc, &c->ps, "blip.text_encoder"));
    /* the image embeddings' projection, where the file has it (BLIP_Pretrain's checkpoints do) */
    int64_t pshape[TENSOR_MAX_DIMS];
    int pnd = 0;
    c->has_proj = !s && nn_weights_shape(w, "blip.vision_proj.weight", &pnd, pshape) && pnd == 2;
    if (c->has_proj) s = nn_linear_init(&c->vision_proj, &c->ps, "blip.vision_proj", vc.width, pshape[0], true);
    for (int i = 0; !s && i < nn_weights_count(w); i++) {   /* every other tensor is the head's or unused */
        const char *nm = nn_weights_name(w, i);
        if (!nn_param_find(&c->ps, nm) && strncmp(nm, "mlp.layers.", 11) && !imagereward_unused(nm))
            s = tensor_fail(STATUS_FORMAT, "%s: unexpected tensor '%s' (not a parameter of ImageReward)", wpath, nm);
    }
    for (int i = 0; !s && i < c->ps.n; i++) s = nn_weights_load_into(w, c->ps.v[i].name, c->ps.v[i].t);
    if (!s && !(c->mlp = head_from_weights(w, "mlp.", "imagereward head", dt, dev))) s = tensor_status();
    if (!s && draft_aesthetic_head_dim(c->mlp) != bc.hidden_size)
        s = tensor_fail(STATUS_SHAPE, "%s: the head reads %lld values, the text tower gives %lld", wpath,
                        (long long)draft_aesthetic_head_dim(c->mlp), (long long)bc.hidden_size);
    nn_weights_close(w);
    /* BLIP's tokenizer: bert-base-uncased plus [DEC] and [ENC] (blip.py init_tokenizer) */
    if (!s && !(c->tok = wp_tokenizer_load(vpath))) s = tensor_status();
    if (!s && (wp_add_special(c->tok, "[DEC]") < 0 || wp_add_special(c->tok, "[ENC]") < 0)) s = tensor_status();
    if (!s && wp_vocab_size(c->tok) != bc.vocab_size)
        s = tensor_fail(STATUS_SHAPE, "reward imagereward: %s with [DEC] and [ENC] has %d tokens, the text tower of %s "
                                      "%lld", vpath, wp_vocab_size(c->tok), cpath, (long long)bc.vocab_size);
    if (!s && text && !(c->target = strdup(text))) s = tensor_fail(STATUS_OOM, "reward imagereward: out of memory");
    if (!s && c->has_proj) r->embed = imagereward_embed;
    if (s) {
        imagereward_free(r);
        return NULL;
    }
    return r;
}

static bool images_ok(const struct draft_reward *r, const struct tensor *images)
{
    char a[128];
    if (images->ndim == 4 && images->shape[0] >= 1 && images->shape[1] == 3 && images->shape[2] >= 1 &&
        images->shape[3] >= 1 && dtype_is_float(images->dtype))
        return true;
    tensor_fail(STATUS_SHAPE, "reward %s: images must be float [B, 3, H, W] in [-1, 1], got %s %s", r->name,
                dtype_name(images->dtype), tensor_shape_str(images, a, sizeof a));
    return false;
}

struct tensor *draft_reward_score(struct draft_reward *r, struct tensor *images, const char *const *prompts)
{
    if (!r) {
        tensor_fail(STATUS_VALUE, "draft_reward_score: no reward");
        return NULL;
    }
    if (!images || !images_ok(r, images)) return NULL;
    return r->score(r, images, prompts);
}

void draft_reward_free(struct draft_reward *r)
{
    if (r) r->free(r);
}

enum status draft_reward_score_values(struct draft_reward *r, struct tensor *images, const char *const *prompts,
                                      double *values, double *mean)
{
    ag_no_grad_begin();
    tensor_scope_begin();
    struct tensor *sc = draft_reward_score(r, images, prompts);
    sc = sc ? tensor_contiguous(tensor_to_dtype(tensor_to_device(sc, DEVICE_CPU), DTYPE_F64)) : NULL;
    const enum status s = sc ? STATUS_OK : tensor_status();
    if (sc) {
        const double *v = tensor_data_ptr(sc);
        const int64_t n = tensor_numel(sc);
        double m = 0;
        for (int64_t i = 0; i < n; i++) m += v[i];
        if (values) memcpy(values, v, sizeof *values * (size_t)n);
        if (mean) *mean = m / (double)n;
    }
    tensor_scope_end();
    ag_no_grad_end();
    return s;
}

/* ---------------------------------------------------------------- weighted sums */

#define SUM_MAX DRAFT_REWARD_MAX_TERMS

struct sum_ctx {
    int n;
    struct draft_reward *r[SUM_MAX];   /* owned */
    double w[SUM_MAX];
    char *spec[SUM_MAX];               /* each term's spec, without its weight */
    /* since the last draft_reward_terms_take: each term's scores summed (f64, in order) over
     * `images` scored images */
    double acc[SUM_MAX];
    int64_t images;
};

/* adds each score of s ([B]) to *acc, in f64, without a graph; inside a scope */
static enum status sum_accumulate(struct tensor *s, double *acc)
{
    ag_no_grad_begin();
    struct tensor *h = tensor_contiguous(tensor_to_dtype(tensor_to_device(s, DEVICE_CPU), DTYPE_F64));
    ag_no_grad_end();
    if (!h) return tensor_status();
    const double *v = tensor_data_ptr(h);
    for (int64_t i = 0; i < tensor_numel(h); i++) *acc += v[i];
    return STATUS_OK;   /* h: the caller's scope frees it */
}

static struct tensor *sum_score(struct draft_reward *r, struct tensor *images, const char *const *prompts)
{
    struct sum_ctx *c = r->ctx;
    double acc[SUM_MAX] = {0};
    tensor_scope_begin();
    struct tensor *total = NULL;
    for (int i = 0; i < c->n; i++) {
        struct tensor *s = draft_reward_score(c->r[i], images, prompts);
        if (!s || sum_accumulate(s, &acc[i])) {
            total = NULL;
            break;
        }
        s = ag_scale(s, c->w[i]);
        total = total ? ag_add(total, s) : s;
    }
    if (total) {   /* the terms are counted only when every one scored */
        for (int i = 0; i < c->n; i++) c->acc[i] += acc[i];
        c->images += images->shape[0];
    }
    return tensor_scope_return(total);
}

static void sum_free(struct draft_reward *r)
{
    struct sum_ctx *c = r->ctx;
    if (c)
        for (int i = 0; i < c->n; i++) draft_reward_free(c->r[i]), free(c->spec[i]);
    free(c);
    free(r);
}

int draft_reward_terms(const struct draft_reward *r, struct draft_reward_term *terms)
{
    if (!r || r->score != sum_score) return 0;
    const struct sum_ctx *c = r->ctx;
    for (int i = 0; i < c->n && terms; i++)
        terms[i] = (struct draft_reward_term){.name = c->r[i]->name, .spec = c->spec[i], .weight = c->w[i]};
    return c->n;
}

int draft_reward_terms_take(struct draft_reward *r, double *means)
{
    if (!r || r->score != sum_score) return 0;
    struct sum_ctx *c = r->ctx;
    for (int i = 0; i < c->n; i++) {
        if (means) means[i] = c->images ? c->acc[i] / (double)c->images : NAN;
        c->acc[i] = 0;
    }
    c->images = 0;
    return c->n;
}

/* r itself, or a sum's first term with an image tower; NULL when there is none */
static struct draft_reward *embedder(const struct draft_reward *r)
{
    if (r && r->embed) return (struct draft_reward *)r;
    const struct sum_ctx *c = r && r->score == sum_score ? r->ctx : NULL;
    for (int i = 0; c && i < c->n; i++)
        if (c->r[i]->embed) return c->r[i];
    return NULL;
}

bool draft_reward_has_image_tower(const struct draft_reward *r) { return embedder(r) != NULL; }

struct tensor *draft_reward_image_embeds(struct draft_reward *r, struct tensor *images)
{
    if (!r || !images) {
        tensor_fail(STATUS_VALUE, "draft_reward_image_embeds: no %s", r ? "images" : "reward");
        return NULL;
    }
    struct draft_reward *with = embedder(r);
    if (!with) {
        tensor_fail(STATUS_VALUE, "reward %s has no image tower to embed images with (aesthetic, clip, classify, "
                                  "pickscore, hpsv2, detect and imagereward have one)", r->name);
        return NULL;
    }
    if (!images_ok(with, images)) return NULL;
    ag_no_grad_begin();
    tensor_scope_begin();
    struct tensor *e = with->embed(with, images);
    e = e ? tensor_contiguous(tensor_to_dtype(tensor_to_device(e, DEVICE_CPU), DTYPE_F64)) : NULL;
    e = tensor_scope_return(e);
    ag_no_grad_end();
    return e;
}

static enum status parse_number(const char *spec, const char *s, double *out);

/* "sum:" then terms "[w*]spec" separated by ';' */
/* a sum's term "[w*]spec", cut in place: the spec returned, w into *w (1 unless a number stands
 * before the first '*': a path may hold one too, and only a number counts) */
static char *sum_term(char *term, double *w)
{
    *w = 1.0;
    char *star = strchr(term, '*');
    if (star) {
        *star = 0;
        char *end;
        errno = 0;
        const double v = strtod(term, &end);
        if (end != term && !*end && !errno && isfinite(v)) {
            *w = v;
            return star + 1;
        }
        *star = '*';
    }
    return term;
}

static struct draft_reward *sum_create(const char *spec, const char *terms, enum dtype dt, enum device dev)
{
    struct sum_ctx *c = calloc(1, sizeof *c);
    struct draft_reward *r = c ? reward_new("sum", sum_score, sum_free, c) : NULL;
    char *buf = r ? strdup(terms) : NULL;
    if (!buf) {
        free(c);
        free(r);
        tensor_fail(STATUS_OOM, "reward spec: out of memory");
        return NULL;
    }
    enum status s = STATUS_OK;
    char *save = NULL;
    for (char *term = strtok_r(buf, ";", &save); term && !s; term = strtok_r(NULL, ";", &save)) {
        if (c->n == SUM_MAX) {
            s = tensor_fail(STATUS_VALUE, "reward spec '%s': more than %d terms", spec, SUM_MAX);
            break;
        }
        double w;
        term = sum_term(term, &w);
        if (!strncmp(term, "sum:", 4)) {
            s = tensor_fail(STATUS_VALUE, "reward spec '%s': a sum inside a sum", spec);
            break;
        }
        c->r[c->n] = draft_reward_create_on(term, dt, dev);
        if (!c->r[c->n]) {
            s = tensor_fail(STATUS_VALUE, "reward spec '%s', term '%s': %s", spec, term, tensor_error());
            break;
        }
        if (!(c->spec[c->n] = strdup(term))) {
            draft_reward_free(c->r[c->n]);
            s = tensor_fail(STATUS_OOM, "reward spec: out of memory");
            break;
        }
        c->w[c->n++] = w;
    }
    free(buf);
    if (!s && !c->n) s = tensor_fail(STATUS_VALUE, "reward spec '%s': no terms; valid specs:\n%s", spec, reward_specs);
    if (s) {
        sum_free(r);
        return NULL;
    }
    return r;
}

static enum status parse_number(const char *spec, const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v))
        return tensor_fail(STATUS_VALUE, "reward spec '%s': '%s' is not a number; valid specs:\n%s", spec, s, reward_specs);
    *out = v;
    return STATUS_OK;
}

/* a copy of a spec's arguments (to free), ",text=<rest>" cut off into *text (NULL without one) */
static char *spec_args(const char *args, const char **text)
{
    char *a = strdup(args);
    *text = NULL;
    if (!a) {
        tensor_fail(STATUS_OOM, "reward spec: out of memory");
        return NULL;
    }
    char *t = strstr(a, ",text=");
    if (t) *t = 0, *text = t + 6;
    return a;
}

/* "<kind>:<folder>[,text=<text>]" (the kind kl characters long) made by create; usage names the form */
static struct draft_reward *folder_spec(const char *spec, size_t kl, const char *usage,
                                        struct draft_reward *(*create)(const char *, const char *, enum dtype, enum device),
                                        enum dtype dt, enum device dev)
{
    const char *text;
    char *dir = spec_args(spec + kl, &text);
    if (!dir) return NULL;
    struct draft_reward *r = NULL;
    if (!*dir || strchr(dir, ',')) tensor_fail(STATUS_VALUE, "reward spec '%s': expected %s", spec, usage);
    else r = create(dir, text, dt, dev);
    free(dir);
    return r;
}

struct draft_reward *draft_reward_create_on(const char *spec, enum dtype dt, enum device dev)
{
    if (!spec || !*spec) {
        tensor_fail(STATUS_VALUE, "reward spec is empty; valid specs:\n%s", reward_specs);
        return NULL;
    }
    double v = 0;
    if (!strcmp(spec, "colorfulness")) return analytic_create("colorfulness", AN_COLORFULNESS, 0);
    if (!strcmp(spec, "jpeg")) return analytic_create("jpeg", AN_JPEG, 0);
    if (!strcmp(spec, "red")) return analytic_create("red", AN_RED, 0);
    if (!strncmp(spec, "brightness=", 11))
        return parse_number(spec, spec + 11, &v) ? NULL : analytic_create("brightness", AN_BRIGHTNESS, v);
    if (!strncmp(spec, "contrast=", 9))
        return parse_number(spec, spec + 9, &v) ? NULL : analytic_create("contrast", AN_CONTRAST, v);
    if (!strncmp(spec, "aesthetic:", 10)) {
        const char *args = spec + 10, *comma = strrchr(args, ',');
        if (!comma || comma == args || !comma[1]) {
            tensor_fail(STATUS_VALUE, "reward spec '%s': expected aesthetic:<clip_vision_dir>,<head file>", spec);
            return NULL;
        }
        char *dir = strndup(args, (size_t)(comma - args));
        if (!dir) {
            tensor_fail(STATUS_OOM, "reward spec: out of memory");
            return NULL;
        }
        struct draft_reward *r = draft_reward_aesthetic_create(dir, comma + 1, dt, dev);
        free(dir);
        return r;
    }
    if (!strncmp(spec, "hpsv2:", 6)) {   /* <file>,<tokenizer dir>[,text=...] */
        const char *text;
        char *args = spec_args(spec + 6, &text);
        if (!args) return NULL;
        char *tokdir = strrchr(args, ',');
        struct draft_reward *r = NULL;
        if (!tokdir || tokdir == args || !tokdir[1]) {
            tensor_fail(STATUS_VALUE, "reward spec '%s': expected hpsv2:<HPS_v2_compressed.pt>,<tokenizer dir> (a folder "
                                      "with vocab.json and merges.txt, or with tokenizer/ holding them: an SD 1.x "
                                      "folder does)", spec);
        } else {
            *tokdir++ = 0;
            /* HPSv2 is OpenCLIP's ViT-H-14 (SD14.md 5.2): heads 80 wide in the image tower, 64 in the text's, exact GELU */
            r = draft_reward_openclip_create(args, tokdir, 64, 80, CLIP_ACT_GELU, text, false, dt, dev);
            if (r) snprintf(r->name, sizeof r->name, "hpsv2");
        }
        free(args);
        return r;
    }
    if (!strncmp(spec, "sum:", 4)) return sum_create(spec, spec + 4, dt, dev);
    if (!strncmp(spec, "pickscore:", 10)) {   /* a CLIPModel folder scored with exp(logit_scale) (SD14.md 5.3) */
        const char *text;
        char *dir = spec_args(spec + 10, &text);
        if (!dir) return NULL;
        struct draft_reward *r = NULL;
        if (!*dir) tensor_fail(STATUS_VALUE, "reward spec '%s': expected pickscore:<PickScore_v1 folder>", spec);
        else r = draft_reward_clip_create(dir, text, true, dt, dev);
        if (r) snprintf(r->name, sizeof r->name, "pickscore");
        free(dir);
        return r;
    }
    if (!strncmp(spec, "classify:", 9)) {   /* <clip_dir>,text=<target>|<other>|... */
        const char *text;
        char *dir = spec_args(spec + 9, &text);
        if (!dir) return NULL;
        struct draft_reward *r = NULL;
        if (!*dir || !text)
            tensor_fail(STATUS_VALUE, "reward spec '%s': expected classify:<CLIPModel folder>,text=<target>|<other>|...",
                        spec);
        else r = draft_reward_classify_create(dir, text, dt, dev);
        free(dir);
        return r;
    }
    if (!strncmp(spec, "imagereward:", 12))
        return folder_spec(spec, 12, "imagereward:<folder>[,text=<prompt>]", draft_reward_imagereward_create, dt, dev);
    if (!strncmp(spec, "detect:", 7))
        return folder_spec(spec, 7, "detect:<OWL-ViT folder>[,text=<object>]", draft_reward_detect_create, dt, dev);
    if (!strncmp(spec, "clip:", 5)) {
        bool logit = false;
        const char *text;
        char *args = spec_args(spec + 5, &text);
        if (!args) return NULL;
        char *tail = (char *)(text ? text : args);   /* a trailing ",logit_scale" ends the text too */
        const size_t n = strlen(tail);
        static const char flag[] = ",logit_scale";
        if (n >= sizeof flag - 1 && !strcmp(tail + n - (sizeof flag - 1), flag)) {
            logit = true;
            tail[n - (sizeof flag - 1)] = 0;
        }
        /* what is left: <dir>[,logit_scale] */
        char *opt = strchr(args, ',');
        enum status s = STATUS_OK;
        if (opt) {
            *opt++ = 0;
            if (!strcmp(opt, "logit_scale")) logit = true;
            else s = tensor_fail(STATUS_VALUE, "reward spec '%s': unknown option '%s'; valid specs:\n%s", spec, opt, reward_specs);
        }
        if (!s && !*args) s = tensor_fail(STATUS_VALUE, "reward spec '%s': the CLIP folder is missing", spec);
        struct draft_reward *r = s ? NULL : draft_reward_clip_create(args, text, logit, dt, dev);
        free(args);
        return r;
    }
    tensor_fail(STATUS_VALUE, "unknown reward spec '%s'; valid specs:\n%s", spec, reward_specs);
    return NULL;
}

struct draft_reward *draft_reward_create(const char *spec) { return draft_reward_create_on(spec, DTYPE_F32, DEVICE_CPU); }

/* one spec, not a sum: a model reward by its kind (its files are read when it is made), any other
 * made and dropped (no file, no model: at once) */
static enum status spec_check_one(const char *spec)
{
    static const char *const model_kinds[] = {"aesthetic:", "clip:", "hpsv2:", "pickscore:", "classify:",
                                               "detect:", "imagereward:"};
    for (size_t i = 0; i < sizeof model_kinds / sizeof model_kinds[0]; i++)
        if (!strncmp(spec, model_kinds[i], strlen(model_kinds[i]))) return STATUS_OK;
    struct draft_reward *r = draft_reward_create(spec);
    draft_reward_free(r);
    return r ? STATUS_OK : tensor_status();
}

enum status draft_reward_spec_check(const char *spec)
{
    if (!spec || strncmp(spec, "sum:", 4)) {
        if (!spec || !*spec) return tensor_fail(STATUS_VALUE, "reward spec is empty; valid specs:\n%s", reward_specs);
        return spec_check_one(spec);
    }
    char *buf = strdup(spec + 4), *save = NULL;
    if (!buf) return tensor_fail(STATUS_OOM, "reward spec: out of memory");
    enum status s = STATUS_OK;
    for (char *term = strtok_r(buf, ";", &save); term && !s; term = strtok_r(NULL, ";", &save)) {
        double w;
        term = sum_term(term, &w);
        if (!strncmp(term, "sum:", 4)) s = tensor_fail(STATUS_VALUE, "reward spec '%s': a sum inside a sum", spec);
        else if ((s = spec_check_one(term)))
            s = tensor_fail(STATUS_VALUE, "reward spec '%s', term '%s': %s", spec, term, tensor_error());
    }
    free(buf);
    return s;   /* an empty sum and too many terms: said when it is made */
}
