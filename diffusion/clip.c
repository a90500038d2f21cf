/* clip.c — CLIPTextModel and CLIPVisionModelWithProjection (transformers modeling_clip.py). */
#include "diffusion/clip.h"
#include "nn/weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- config */

static enum status clip_act_parse(struct nn_config *c, enum clip_act *act)
{
    char buf[64];
    const char *s = nn_config_string(c, "hidden_act", "quick_gelu", buf, sizeof buf);
    if (!s) return STATUS_OK;   /* a type error is remembered and reported by finish */
    if (!strcmp(s, "quick_gelu")) *act = CLIP_ACT_QUICK_GELU;
    else if (!strcmp(s, "gelu")) *act = CLIP_ACT_GELU;
    else if (!strcmp(s, "gelu_new") || !strcmp(s, "gelu_pytorch_tanh")) *act = CLIP_ACT_GELU_TANH;
    else return tensor_fail(STATUS_FORMAT, "%s: hidden_act '%s' is not supported (quick_gelu, gelu, gelu_new, gelu_pytorch_tanh)",
                            c->path, s);
    return STATUS_OK;
}

/* model_type "clip_<tower>_model", or OWL-ViT's "owlvit_<tower>_model" / OWLv2's
 * "owlv2_<tower>_model" (*owlvit: one of those two) */
static enum status clip_model_type_check(struct nn_config *c, const char *tower, bool *owlvit)
{
    char buf[64], want[64], owl[64], owl2[64];
    snprintf(want, sizeof want, "clip_%s_model", tower);
    snprintf(owl, sizeof owl, "owlvit_%s_model", tower);
    snprintf(owl2, sizeof owl2, "owlv2_%s_model", tower);
    const char *s = nn_config_string(c, "model_type", want, buf, sizeof buf);
    *owlvit = s && (!strcmp(s, owl) || !strcmp(s, owl2));
    if (s && strcmp(s, want) && !*owlvit)
        return tensor_fail(STATUS_FORMAT, "%s: model_type '%s' is not '%s' (or '%s', '%s')", c->path, s, want, owl, owl2);
    return STATUS_OK;
}

/* keys of transformers' CLIP configs that do not change the inference/training forward:
 * dropout is inactive at these rates in SD (0.0) and the model runs without it; the token ids
 * other than eos and the initialisers only matter elsewhere; transformers 5 writes dtype for
 * torch_dtype */
static const char *const clip_ignored_keys[] = {
    "architectures", "torch_dtype", "dtype", "transformers_version", "attention_dropout", "dropout",
    "initializer_factor", "initializer_range", "bos_token_id", "pad_token_id",
};

enum status clip_text_config_read(struct clip_text_config *cfg, struct nn_config *c)
{
    memset(cfg, 0, sizeof *cfg);
    bool owlvit;   /* the same tower; OwlViTTextConfig's defaults differ only in max_position_embeddings (16) */
    enum status s = clip_model_type_check(c, "text", &owlvit);
    if (s) return s;
    cfg->vocab_size = nn_config_int(c, "vocab_size", 49408);
    cfg->hidden_size = nn_config_int(c, "hidden_size", 512);
    cfg->intermediate_size = nn_config_int(c, "intermediate_size", 2048);
    cfg->num_hidden_layers = (int)nn_config_int(c, "num_hidden_layers", 12);
    cfg->num_attention_heads = (int)nn_config_int(c, "num_attention_heads", 8);
    cfg->max_position_embeddings = nn_config_int(c, "max_position_embeddings", owlvit ? 16 : 77);
    cfg->layer_norm_eps = nn_config_double(c, "layer_norm_eps", 1e-5);
    cfg->eos_token_id = nn_config_int(c, "eos_token_id", 2);
    /* CLIPTextModel has no projection; CLIPTextModelWithProjection reads it */
    cfg->projection_dim = nn_config_int(c, "projection_dim", 512);
    if ((s = clip_act_parse(c, &cfg->hidden_act))) return s;
    nn_config_ignore(c, clip_ignored_keys, (int)(sizeof clip_ignored_keys / sizeof *clip_ignored_keys));
    if ((s = nn_config_finish(c))) return s;
    if (cfg->vocab_size <= 0 || cfg->hidden_size <= 0 || cfg->intermediate_size <= 0 || cfg->num_hidden_layers < 0 ||
        cfg->num_attention_heads <= 0 || cfg->max_position_embeddings <= 0 || !(cfg->layer_norm_eps > 0))
        return tensor_fail(STATUS_FORMAT, "%s: sizes, heads, positions and layer_norm_eps must be positive", c->path);
    if (cfg->hidden_size % cfg->num_attention_heads)
        return tensor_fail(STATUS_FORMAT, "%s: hidden_size %lld is not a multiple of num_attention_heads %d", c->path,
                           (long long)cfg->hidden_size, cfg->num_attention_heads);
    return STATUS_OK;
}

enum status clip_vision_config_read(struct clip_vision_config *cfg, struct nn_config *c)
{
    memset(cfg, 0, sizeof *cfg);
    enum status s = clip_model_type_check(c, "vision", &cfg->owlvit);
    if (s) return s;
    cfg->hidden_size = nn_config_int(c, "hidden_size", 768);
    cfg->intermediate_size = nn_config_int(c, "intermediate_size", 3072);
    cfg->num_hidden_layers = (int)nn_config_int(c, "num_hidden_layers", 12);
    cfg->num_attention_heads = (int)nn_config_int(c, "num_attention_heads", 12);
    cfg->num_channels = nn_config_int(c, "num_channels", 3);
    cfg->image_size = nn_config_int(c, "image_size", cfg->owlvit ? 768 : 224);
    cfg->patch_size = nn_config_int(c, "patch_size", 32);
    cfg->projection_dim = nn_config_int(c, "projection_dim", 512);
    cfg->layer_norm_eps = nn_config_double(c, "layer_norm_eps", 1e-5);
    if ((s = clip_act_parse(c, &cfg->hidden_act))) return s;
    static const char *const vision_only[] = {"eos_token_id"};
    nn_config_ignore(c, clip_ignored_keys, (int)(sizeof clip_ignored_keys / sizeof *clip_ignored_keys));
    nn_config_ignore(c, vision_only, 1);
    if ((s = nn_config_finish(c))) return s;
    if (cfg->hidden_size <= 0 || cfg->intermediate_size <= 0 || cfg->num_hidden_layers < 0 ||
        cfg->num_attention_heads <= 0 || cfg->num_channels <= 0 || cfg->image_size <= 0 || cfg->patch_size <= 0 ||
        cfg->projection_dim <= 0 || !(cfg->layer_norm_eps > 0))
        return tensor_fail(STATUS_FORMAT, "%s: sizes, heads and layer_norm_eps must be positive", c->path);
    if (cfg->hidden_size % cfg->num_attention_heads)
        return tensor_fail(STATUS_FORMAT, "%s: hidden_size %lld is not a multiple of num_attention_heads %d", c->path,
                           (long long)cfg->hidden_size, cfg->num_attention_heads);
    if (cfg->image_size % cfg->patch_size)
        return tensor_fail(STATUS_FORMAT, "%s: image_size %lld is not a multiple of patch_size %lld", c->path,
                           (long long)cfg->image_size, (long long)cfg->patch_size);
    return STATUS_OK;
}

enum status clip_text_config_load(struct clip_text_config *cfg, const char *path)
{
    struct nn_config c;
    enum status s = nn_config_load(&c, path);
    if (!s) s = clip_text_config_read(cfg, &c);
    nn_config_free(&c);
    return s;
}

enum status clip_vision_config_load(struct clip_vision_config *cfg, const char *path)
{
    struct nn_config c;
    enum status s = nn_config_load(&c, path);
    if (!s) s = clip_vision_config_read(cfg, &c);
    nn_config_free(&c);
    return s;
}

/* ---------------------------------------------------------------- encoder (shared) */

static enum status clip_encoder_layer_init(struct clip_encoder_layer *l, struct nn_params *ps, const char *prefix,
                                           int64_t hidden, int64_t inter, double eps)
{
    char p[512];
    enum status s;
#define SUB(name) nn_name(p, sizeof p, prefix, name)
    if ((s = nn_linear_init(&l->q_proj, ps, SUB("self_attn.q_proj"), hidden, hidden, true))) return s;
    if ((s = nn_linear_init(&l->k_proj, ps, SUB("self_attn.k_proj"), hidden, hidden, true))) return s;
    if ((s = nn_linear_init(&l->v_proj, ps, SUB("self_attn.v_proj"), hidden, hidden, true))) return s;
    if ((s = nn_linear_init(&l->out_proj, ps, SUB("self_attn.out_proj"), hidden, hidden, true))) return s;
    if ((s = nn_layer_norm_init(&l->layer_norm1, ps, SUB("layer_norm1"), hidden, eps))) return s;
    if ((s = nn_linear_init(&l->fc1, ps, SUB("mlp.fc1"), hidden, inter, true))) return s;
    if ((s = nn_linear_init(&l->fc2, ps, SUB("mlp.fc2"), inter, hidden, true))) return s;
    if ((s = nn_layer_norm_init(&l->layer_norm2, ps, SUB("layer_norm2"), hidden, eps))) return s;
#undef SUB
    return STATUS_OK;
}

/* "<prefix>.encoder.layers.N..." */
static enum status clip_encoder_init(struct clip_encoder *e, struct nn_params *ps, const char *prefix, int n_layers,
                                     int n_heads, int64_t hidden, int64_t inter, double eps, enum clip_act act)
{
    e->n_layers = n_layers;
    e->n_heads = n_heads;
    e->act = act;
    e->layers = calloc(n_layers > 0 ? (size_t)n_layers : 1, sizeof *e->layers);
    if (!e->layers) return tensor_fail(STATUS_OOM, "clip: out of memory for %d layers", n_layers);
    for (int i = 0; i < n_layers; i++) {
        char rel[64], p[512];
        snprintf(rel, sizeof rel, "encoder.layers.%d", i);
        enum status s = clip_encoder_layer_init(&e->layers[i], ps, nn_name(p, sizeof p, prefix, rel), hidden, inter, eps);
        if (s) return s;
    }
    return STATUS_OK;
}

static void clip_encoder_free(struct clip_encoder *e)
{
    free(e->layers);
    e->layers = NULL;
    e->n_layers = 0;
}

static struct tensor *clip_act_forward(enum clip_act act, struct tensor *x)
{
    switch (act) {
    case CLIP_ACT_GELU: return ag_gelu(x);
    case CLIP_ACT_GELU_TANH: return ag_gelu_tanh(x);
    default: return ag_quick_gelu(x);
    }
}

/* x [B, L, D] -> [B, H, L, D/H] view (no copy) */
static struct tensor *clip_heads(struct tensor *x, int H)
{
    const int64_t B = x->shape[0], L = x->shape[1], D = x->shape[2];
    static const int perm[4] = {0, 2, 1, 3};
    return ag_permute(ag_reshape(x, TENSOR_SHAPE(B, L, H, D / H)), perm);
}

static struct tensor *clip_encoder_layer_forward(const struct clip_encoder_layer *l, int H, enum clip_act act,
                                                 struct tensor *x, bool causal)
{
    tensor_scope_begin();
    const int64_t B = x->shape[0], L = x->shape[1], D = x->shape[2];
    /* self-attention: softmax(q k^T / sqrt(d) [+ causal mask]) v, heads of D/H */
    struct tensor *h = nn_layer_norm_forward(&l->layer_norm1, x);
    struct tensor *q = clip_heads(nn_linear_forward(&l->q_proj, h), H);
    struct tensor *k = clip_heads(nn_linear_forward(&l->k_proj, h), H);
    struct tensor *v = clip_heads(nn_linear_forward(&l->v_proj, h), H);
    static const int perm[4] = {0, 2, 1, 3};
    struct tensor *a = ag_permute(ag_attention(q, k, v, 0.0, causal), perm);   /* [B, L, H, D/H] */
    a = ag_reshape(a, TENSOR_SHAPE(B, L, D));
    x = ag_add(x, nn_linear_forward(&l->out_proj, a));
    /* MLP */
    h = nn_layer_norm_forward(&l->layer_norm2, x);
    h = nn_linear_forward(&l->fc2, clip_act_forward(act, nn_linear_forward(&l->fc1, h)));
    return tensor_scope_return(ag_add(x, h));
}

static struct tensor *clip_encoder_forward(const struct clip_encoder *e, struct tensor *x, bool causal)
{
    tensor_scope_begin();
    for (int i = 0; i < e->n_layers && x; i++) x = clip_encoder_layer_forward(&e->layers[i], e->n_heads, e->act, x, causal);
    return tensor_scope_return(x);
}

/* ---------------------------------------------------------------- text */

enum status clip_text_init(struct clip_text_model *m, const struct clip_text_config *cfg, struct nn_params *ps,
                           const char *prefix)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    char base[512], p[512];
    nn_name(base, sizeof base, prefix, "text_model");
    enum status s;
    const int64_t D = cfg->hidden_size;
    if ((s = nn_embedding_init(&m->token_embedding, ps, nn_name(p, sizeof p, base, "embeddings.token_embedding"),
                               cfg->vocab_size, D)))
        return s;
    if ((s = nn_embedding_init(&m->position_embedding, ps, nn_name(p, sizeof p, base, "embeddings.position_embedding"),
                               cfg->max_position_embeddings, D)))
        return s;
    if ((s = clip_encoder_init(&m->encoder, ps, base, cfg->num_hidden_layers, cfg->num_attention_heads, D,
                               cfg->intermediate_size, cfg->layer_norm_eps, cfg->hidden_act)))
        return s;
    return nn_layer_norm_init(&m->final_layer_norm, ps, nn_name(p, sizeof p, base, "final_layer_norm"), D,
                              cfg->layer_norm_eps);
}

void clip_text_free(struct clip_text_model *m) { clip_encoder_free(&m->encoder); }

/* the embeddings of input_ids (token + position), or NULL with a message naming `op` */
static struct tensor *text_embeddings(const struct clip_text_model *m, struct tensor *input_ids, const char *op)
{
    if (!input_ids) return NULL;
    char a[128];
    if (input_ids->ndim != 2 || input_ids->shape[1] < 1 || input_ids->shape[1] > m->cfg.max_position_embeddings ||
        (input_ids->dtype != DTYPE_I32 && input_ids->dtype != DTYPE_I64)) {
        tensor_fail(STATUS_SHAPE, "%s: input_ids must be i32/i64 [B, L] with 1 <= L <= %lld, got %s %s", op,
                    (long long)m->cfg.max_position_embeddings, dtype_name(input_ids->dtype),
                    tensor_shape_str(input_ids, a, sizeof a));
        return NULL;
    }
    tensor_scope_begin();
    const int64_t L = input_ids->shape[1];
    /* position_ids = 0..L-1: the first L rows of the table, broadcast over the batch */
    struct tensor *pos = ag_narrow(m->position_embedding.weight, 0, 0, L);
    if (pos && pos->dtype != nn_compute_dtype(pos->dtype)) pos = ag_to_dtype(pos, nn_compute_dtype(pos->dtype));
    return tensor_scope_return(ag_add(nn_embedding_forward(&m->token_embedding, input_ids), pos));
}

struct tensor *clip_text_forward(const struct clip_text_model *m, struct tensor *input_ids)
{
    tensor_scope_begin();
    struct tensor *x = clip_encoder_forward(&m->encoder, text_embeddings(m, input_ids, "clip_text_forward"), true);
    return tensor_scope_return(x ? nn_layer_norm_forward(&m->final_layer_norm, x) : NULL);
}

struct tensor *clip_text_hidden(const struct clip_text_model *m, struct tensor *input_ids, int layers,
                                struct tensor **last_hidden_state)
{
    const struct clip_encoder *e = &m->encoder;
    if (last_hidden_state) *last_hidden_state = NULL;
    if (layers < 0 || layers > e->n_layers) {
        tensor_fail(STATUS_VALUE, "clip_text_hidden: %d layers of a %d-layer encoder", layers, e->n_layers);
        return NULL;
    }
    tensor_scope_begin();
    struct tensor *x = text_embeddings(m, input_ids, "clip_text_hidden"), *h = NULL;
    for (int i = 0; i < e->n_layers && x; i++) {
        if (i == layers) h = x;
        if (i >= layers && !last_hidden_state) break;
        x = clip_encoder_layer_forward(&e->layers[i], e->n_heads, e->act, x, true);
    }
    if (layers == e->n_layers) h = x;
    struct tensor *last = last_hidden_state && x ? nn_layer_norm_forward(&m->final_layer_norm, x) : NULL;
    if (!h || (last_hidden_state && !last)) return tensor_scope_return(NULL);
    tensor_keep(h);
    if (last) tensor_keep(last);
    tensor_scope_end();
    if (last_hidden_state) *last_hidden_state = tensor_autorelease(last);
    return tensor_autorelease(h);
}

struct tensor *clip_text_pooled(const struct clip_text_model *m, struct tensor *input_ids,
                                struct tensor *last_hidden_state)
{
    if (!input_ids || !last_hidden_state) return NULL;
    char a[128], b[128];
    if (input_ids->ndim != 2 || last_hidden_state->ndim != 3 || last_hidden_state->shape[0] != input_ids->shape[0] ||
        last_hidden_state->shape[1] != input_ids->shape[1] || input_ids->shape[0] < 1 ||
        (input_ids->dtype != DTYPE_I32 && input_ids->dtype != DTYPE_I64)) {
        tensor_fail(STATUS_SHAPE, "clip_text_pooled: input_ids i32/i64 [B, L] and last_hidden_state [B, L, D] expected, got %s and %s",
                    tensor_shape_str(input_ids, a, sizeof a), tensor_shape_str(last_hidden_state, b, sizeof b));
        return NULL;
    }
    tensor_scope_begin();
    const int64_t B = input_ids->shape[0], L = input_ids->shape[1];
    struct tensor *ids = tensor_to_device(input_ids, DEVICE_CPU);
    struct tensor **rows = ids ? calloc((size_t)B, sizeof *rows) : NULL;
    struct tensor *out = NULL;
    if (rows) {
        for (int64_t bi = 0; bi < B; bi++) {
            /* transformers: eos_token_id == 2 (old configs) pools at argmax(ids), the highest id
             * being <|endoftext|>; otherwise at the first eos_token_id (the last position if none) */
            int64_t at = -1;
            double best = 0;
            for (int64_t j = 0; j < L; j++) {
                double v = tensor_get(ids, (int64_t[]){bi, j});
                if (m->cfg.eos_token_id == 2) {
                    if (at < 0 || v > best) at = j, best = v;
                } else if ((int64_t)v == m->cfg.eos_token_id) {
                    at = j;
                    break;
                }
            }
            if (at < 0) at = L - 1;
            rows[bi] = ag_narrow(ag_narrow(last_hidden_state, 0, bi, 1), 1, at, 1);   /* [1, 1, D] */
        }
        out = ag_reshape(ag_concat((int)B, rows, 0), TENSOR_SHAPE(B, last_hidden_state->shape[2]));
        free(rows);
    } else if (ids) {
        tensor_fail(STATUS_OOM, "clip_text_pooled: out of memory");
    }
    return tensor_scope_return(out);
}

/* ---------------------------------------------------------------- vision */

enum status clip_vision_init(struct clip_vision_model *m, const struct clip_vision_config *cfg, struct nn_params *ps,
                             const char *prefix)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    char base[512], p[512];
    nn_name(base, sizeof base, prefix, "vision_model");
    enum status s;
    const int64_t D = cfg->hidden_size, grid = cfg->image_size / cfg->patch_size;
    m->class_embedding = nn_param_new(ps, base, "embeddings.class_embedding", TENSOR_SHAPE(D));
    if (!m->class_embedding) return tensor_status();
    if ((s = nn_conv2d_init(&m->patch_embedding, ps, nn_name(p, sizeof p, base, "embeddings.patch_embedding"),
                            cfg->num_channels, D, (int)cfg->patch_size, (int)cfg->patch_size, 0, false)))
        return s;
    if ((s = nn_embedding_init(&m->position_embedding, ps, nn_name(p, sizeof p, base, "embeddings.position_embedding"),
                               grid * grid + 1, D)))
        return s;
    if ((s = nn_layer_norm_init(&m->pre_layrnorm, ps, nn_name(p, sizeof p, base, cfg->owlvit ? "pre_layernorm" : "pre_layrnorm"),
                                D, cfg->layer_norm_eps)))
        return s;
    if ((s = clip_encoder_init(&m->encoder, ps, base, cfg->num_hidden_layers, cfg->num_attention_heads, D,
                               cfg->intermediate_size, cfg->layer_norm_eps, cfg->hidden_act)))
        return s;
    if ((s = nn_layer_norm_init(&m->post_layernorm, ps, nn_name(p, sizeof p, base, "post_layernorm"), D,
                                cfg->layer_norm_eps)))
        return s;
    return nn_linear_init(&m->visual_projection, ps, nn_name(p, sizeof p, prefix, "visual_projection"), D,
                          cfg->projection_dim, false);
}

void clip_vision_free(struct clip_vision_model *m) { clip_encoder_free(&m->encoder); }

struct tensor *clip_vision_hidden(const struct clip_vision_model *m, struct tensor *pixel_values)
{
    if (!pixel_values) return NULL;
    const struct clip_vision_config *cfg = &m->cfg;
    char a[128];
    if (pixel_values->ndim != 4 || pixel_values->shape[0] < 1 || pixel_values->shape[1] != cfg->num_channels ||
        pixel_values->shape[2] != cfg->image_size || pixel_values->shape[3] != cfg->image_size) {
        tensor_fail(STATUS_SHAPE, "clip vision tower: pixel_values must be [B, %lld, %lld, %lld], got %s",
                    (long long)cfg->num_channels, (long long)cfg->image_size, (long long)cfg->image_size,
                    tensor_shape_str(pixel_values, a, sizeof a));
        return NULL;
    }
    tensor_scope_begin();
    const int64_t B = pixel_values->shape[0], D = cfg->hidden_size, grid = cfg->image_size / cfg->patch_size;
    const int64_t N = grid * grid;
    /* patches [B, D, g, g] -> tokens [B, g*g, D] (row-major over the grid, as flatten(2).transpose(1, 2)) */
    struct tensor *x = nn_conv2d_forward(&m->patch_embedding, pixel_values);
    x = ag_transpose(ag_reshape(x, TENSOR_SHAPE(B, D, N)), 1, 2);
    struct tensor *cls = ag_expand(ag_reshape(nn_param_as(m->class_embedding, x), TENSOR_SHAPE(1, 1, D)), TENSOR_SHAPE(B, 1, D));
    x = ag_concat(2, (struct tensor *[]){cls, x}, 1);   /* [B, N + 1, D] */
    x = ag_add(x, nn_param_as(m->position_embedding.weight, x));
    x = nn_layer_norm_forward(&m->pre_layrnorm, x);
    return tensor_scope_return(clip_encoder_forward(&m->encoder, x, false));
}

struct tensor *clip_vision_forward(const struct clip_vision_model *m, struct tensor *pixel_values)
{
    tensor_scope_begin();
    struct tensor *x = clip_vision_hidden(m, pixel_values);
    /* pooled = post_layernorm(class token) -> projection */
    struct tensor *pooled = x ? ag_reshape(ag_narrow(x, 1, 0, 1), TENSOR_SHAPE(x->shape[0], m->cfg.hidden_size)) : NULL;
    pooled = nn_layer_norm_forward(&m->post_layernorm, pooled);
    return tensor_scope_return(nn_linear_forward(&m->visual_projection, pooled));
}

/* ---------------------------------------------------------------- loading */

static bool clip_is_position_ids(const char *name)
{
    static const char suffix[] = "embeddings.position_ids";
    size_t n = strlen(name), k = sizeof suffix - 1;
    return n >= k && !strcmp(name + n - k, suffix) && (n == k || name[n - k - 1] == '.');
}

enum status clip_params_load(struct nn_params *ps, const struct nn_weights *w, const char *key_prefix)
{
    return clip_params_load_except(ps, w, key_prefix, NULL);
}

static bool skipped(const char *name, const char *const *skip)
{
    for (int i = 0; skip && skip[i]; i++)
        if (!strncmp(name, skip[i], strlen(skip[i]))) return true;
    return false;
}

/* transformers 5 saves CLIPTextModel without its "text_model." prefix (4.x and the released SD
 * folders keep it): "text_model." when the model's names carry it and the file's do not, else "" */
static const char *bare_text_prefix(const struct nn_params *ps, const struct nn_weights *w, const char *kp)
{
    static const char *const prefix = "text_model.", *const probe = "embeddings.token_embedding.weight";
    char a[512], b[512];
    snprintf(a, sizeof a, "%s%s", prefix, probe);
    if (!nn_param_find(ps, a)) return "";
    snprintf(a, sizeof a, "%s%s%s", kp, prefix, probe);
    snprintf(b, sizeof b, "%s%s", kp, probe);
    return !nn_weights_has(w, a) && nn_weights_has(w, b) ? prefix : "";
}

enum status clip_params_load_except(struct nn_params *ps, const struct nn_weights *w, const char *key_prefix,
                                    const char *const *skip)
{
    const char *kp = key_prefix ? key_prefix : "";
    const size_t kl = strlen(kp);
    const char *path = nn_weights_path(w);
    const char *bare = bare_text_prefix(ps, w, kp);   /* what the file's names lack of the model's */
    const size_t bl = strlen(bare);
    char name[512];
    for (int i = 0; i < nn_weights_count(w); i++) {
        const char *nm = nn_weights_name(w, i);
        if (strncmp(nm, kp, kl)) continue;
        snprintf(name, sizeof name, "%s%s", bare, nm + kl);
        if (nn_param_find(ps, name) || skipped(nm, skip)) continue;
        if (!clip_is_position_ids(nm))
            return tensor_fail(STATUS_FORMAT, "%s: unexpected tensor '%s' (not a parameter of this model)", path, nm);
        /* the forward uses positions 0, 1, 2, ...; a file whose buffer says otherwise is not
         * what this code computes */
        snprintf(name, sizeof name, "%s", nm);
        tensor_scope_begin();
        struct tensor *ids = nn_weights_load(w, name, DTYPE_I64);
        enum status s = ids ? STATUS_OK : tensor_status();
        for (int64_t j = 0; !s && j < tensor_numel(ids); j++)
            if (tensor_get_flat(ids, j) != (double)j)
                s = tensor_fail(STATUS_FORMAT, "%s: buffer '%s' is not 0, 1, 2, ... (entry %lld is %g)", path, name,
                                (long long)j, tensor_get_flat(ids, j));
        tensor_scope_end();
        if (s) return s;
    }
    for (int i = 0; i < ps->n; i++) {
        const char *pn = ps->v[i].name;
        snprintf(name, sizeof name, "%s%s", kp, bl && !strncmp(pn, bare, bl) ? pn + bl : pn);
        const enum status s = nn_weights_load_into(w, name, ps->v[i].t);
        if (s) return s;
    }
    return STATUS_OK;
}

/* ---------------------------------------------------------------- OpenCLIP state dicts */

/* *out = the file's size of dimension d of `key`; an error when the tensor is absent or has fewer dims */
static enum status openclip_dim(const struct nn_weights *w, const char *key, int d, int64_t *out)
{
    int nd;
    int64_t shape[TENSOR_MAX_DIMS];
    if (!nn_weights_shape(w, key, &nd, shape))
        return tensor_fail(STATUS_FORMAT, "%s: no tensor '%s' (not an OpenCLIP state dict?)", nn_weights_path(w), key);
    if (d >= nd)
        return tensor_fail(STATUS_FORMAT, "%s: tensor '%s' has %d dims, expected at least %d", nn_weights_path(w), key,
                           nd, d + 1);
    *out = shape[d];
    return STATUS_OK;
}

/* blocks of a tower: transformer.resblocks.0, 1, ... while they exist */
static int openclip_layers(const struct nn_weights *w, const char *tower)
{
    char key[256];
    int n = 0;
    for (;; n++) {
        snprintf(key, sizeof key, "%stransformer.resblocks.%d.ln_1.weight", tower, n);
        if (!nn_weights_has(w, key)) return n;
    }
}

static enum status openclip_heads(const struct nn_weights *w, const char *tower_name, int64_t width, int64_t head_width,
                                  int *heads)
{
    if (head_width < 1 || width % head_width || width < head_width)
        return tensor_fail(STATUS_SHAPE, "%s: the %s tower is %lld wide, not a multiple of the head width %lld",
                           nn_weights_path(w), tower_name, (long long)width, (long long)head_width);
    *heads = (int)(width / head_width);
    return STATUS_OK;
}

enum status clip_openclip_configs(const struct nn_weights *w, int64_t text_head_width, int64_t vision_head_width,
                                  enum clip_act act, struct clip_text_config *tc, struct clip_vision_config *vc,
                                  int64_t *embed_dim)
{
    memset(tc, 0, sizeof *tc);
    memset(vc, 0, sizeof *vc);
    const char *path = nn_weights_path(w);
    int64_t te = 0, npos = 0;
    enum status s = openclip_dim(w, "token_embedding.weight", 0, &tc->vocab_size);
    if (!s) s = openclip_dim(w, "token_embedding.weight", 1, &tc->hidden_size);
    if (!s) s = openclip_dim(w, "positional_embedding", 0, &tc->max_position_embeddings);
    if (!s) s = openclip_dim(w, "transformer.resblocks.0.mlp.c_fc.weight", 0, &tc->intermediate_size);
    if (!s) s = openclip_dim(w, "text_projection", 1, &te);
    if (!s) s = openclip_dim(w, "visual.conv1.weight", 0, &vc->hidden_size);
    if (!s) s = openclip_dim(w, "visual.conv1.weight", 1, &vc->num_channels);
    if (!s) s = openclip_dim(w, "visual.conv1.weight", 2, &vc->patch_size);
    if (!s) s = openclip_dim(w, "visual.positional_embedding", 0, &npos);
    if (!s) s = openclip_dim(w, "visual.transformer.resblocks.0.mlp.c_fc.weight", 0, &vc->intermediate_size);
    if (!s) s = openclip_dim(w, "visual.proj", 1, &vc->projection_dim);
    if (s) return s;
    if (tc->vocab_size < 1 || tc->hidden_size < 1 || tc->max_position_embeddings < 1 || tc->intermediate_size < 1 ||
        te < 1 || vc->hidden_size < 1 || vc->num_channels < 1 || vc->patch_size < 1 || vc->intermediate_size < 1 ||
        vc->projection_dim < 1)
        return tensor_fail(STATUS_SHAPE, "%s: a tower's embedding, MLP, patch or projection tensor has a zero size",
                           nn_weights_path(w));
    tc->num_hidden_layers = openclip_layers(w, "");
    tc->layer_norm_eps = 1e-5;
    tc->hidden_act = act;
    tc->eos_token_id = 2;   /* transformers' legacy value: pool at argmax(ids), OpenCLIP's text.argmax(-1) */
    if ((s = openclip_heads(w, "text", tc->hidden_size, text_head_width, &tc->num_attention_heads))) return s;
    /* image */
    int64_t grid = 0;
    while ((grid + 1) * (grid + 1) <= npos - 1) grid++;
    if (grid < 1 || grid * grid != npos - 1)
        return tensor_fail(STATUS_SHAPE, "%s: visual.positional_embedding has %lld rows, expected a square grid + 1",
                           path, (long long)npos);
    vc->image_size = grid * vc->patch_size;
    vc->num_hidden_layers = openclip_layers(w, "visual.");
    vc->layer_norm_eps = 1e-5;
    vc->hidden_act = act;
    if ((s = openclip_heads(w, "image", vc->hidden_size, vision_head_width, &vc->num_attention_heads))) return s;
    if (tc->num_hidden_layers < 1 || vc->num_hidden_layers < 1)
        return tensor_fail(STATUS_FORMAT, "%s: no transformer.resblocks.0 in the %s tower", path,
                           tc->num_hidden_layers < 1 ? "text" : "image");
    if (te != vc->projection_dim)
        return tensor_fail(STATUS_SHAPE, "%s: text_projection gives %lld-d embeddings, visual.proj %lld-d", path,
                           (long long)te, (long long)vc->projection_dim);
    *embed_dim = te;
    return STATUS_OK;
}

/* The OpenCLIP key of a CLIPModel parameter, and which part of it: -1 all of it, 0/1/2 the q/k/v
 * third of a stacked projection, 3 its transpose. false for a name with no OpenCLIP key. */
static bool openclip_key(const char *name, char *key, size_t n, int *part)
{
    *part = -1;
    if (!strcmp(name, "visual_projection.weight") || !strcmp(name, "text_projection.weight")) {
        snprintf(key, n, "%s", name[0] == 'v' ? "visual.proj" : "text_projection");
        *part = 3;
        return true;
    }
    if (!strcmp(name, "logit_scale")) {
        snprintf(key, n, "logit_scale");
        return true;
    }
    const char *tower, *rest;
    if (!strncmp(name, "text_model.", 11)) tower = "", rest = name + 11;
    else if (!strncmp(name, "vision_model.", 13)) tower = "visual.", rest = name + 13;
    else return false;
    static const struct { const char *hf, *oc; } whole[] = {
        {"embeddings.token_embedding.weight", "token_embedding.weight"},
        {"embeddings.position_embedding.weight", "positional_embedding"},
        {"embeddings.class_embedding", "class_embedding"},
        {"embeddings.patch_embedding.weight", "conv1.weight"},
        {"pre_layrnorm.weight", "ln_pre.weight"},
        {"pre_layrnorm.bias", "ln_pre.bias"},
        {"post_layernorm.weight", "ln_post.weight"},
        {"post_layernorm.bias", "ln_post.bias"},
        {"final_layer_norm.weight", "ln_final.weight"},
        {"final_layer_norm.bias", "ln_final.bias"},
    };
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++)
        if (!strcmp(rest, whole[i].hf)) {
            snprintf(key, n, "%s%s", tower, whole[i].oc);
            return true;
        }
    static const struct { const char *hf, *oc; int part; } block[] = {
        {"self_attn.q_proj.weight", "attn.in_proj_weight", 0},
        {"self_attn.k_proj.weight", "attn.in_proj_weight", 1},
        {"self_attn.v_proj.weight", "attn.in_proj_weight", 2},
        {"self_attn.q_proj.bias", "attn.in_proj_bias", 0},
        {"self_attn.k_proj.bias", "attn.in_proj_bias", 1},
        {"self_attn.v_proj.bias", "attn.in_proj_bias", 2},
        {"self_attn.out_proj.weight", "attn.out_proj.weight", -1},
        {"self_attn.out_proj.bias", "attn.out_proj.bias", -1},
        {"layer_norm1.weight", "ln_1.weight", -1},
        {"layer_norm1.bias", "ln_1.bias", -1},
        {"layer_norm2.weight", "ln_2.weight", -1},
        {"layer_norm2.bias", "ln_2.bias", -1},
        {"mlp.fc1.weight", "mlp.c_fc.weight", -1},
        {"mlp.fc1.bias", "mlp.c_fc.bias", -1},
        {"mlp.fc2.weight", "mlp.c_proj.weight", -1},
        {"mlp.fc2.bias", "mlp.c_proj.bias", -1},
    };
    int layer = -1, off = 0;
    if (sscanf(rest, "encoder.layers.%d.%n", &layer, &off) != 1 || off == 0 || layer < 0) return false;
    for (size_t i = 0; i < sizeof block / sizeof block[0]; i++)
        if (!strcmp(rest + off, block[i].hf)) {
            snprintf(key, n, "%stransformer.resblocks.%d.%s", tower, layer, block[i].oc);
            *part = block[i].part;
            return true;
        }
    return false;
}

/* the text tower's causal mask, a buffer some open_clip versions saved: the forward builds its own */
static bool openclip_buffer(const char *name) { return !strcmp(name, "attn_mask"); }

/* every parameter of ps from its OpenCLIP key under prefix (q/k/v cut out of the stacked
 * projection, the projections transposed); used[] marks the file tensors read */
static enum status openclip_load_into(struct nn_params *ps, const struct nn_weights *w, const char *prefix, bool *used)
{
    const char *path = nn_weights_path(w);
    enum status s = STATUS_OK;
    for (int i = 0; i < ps->n && !s; i++) {
        char bare[560], key[600];
        int part;
        struct tensor *dst = ps->v[i].t;
        if (!openclip_key(ps->v[i].name, bare, sizeof bare, &part)) {
            s = tensor_fail(STATUS_FORMAT, "%s: an OpenCLIP state dict has no key for parameter '%s'", path, ps->v[i].name);
            break;
        }
        snprintf(key, sizeof key, "%s%s", prefix, bare);
        const int j = nn_weights_find(w, key);
        if (j < 0) {
            s = tensor_fail(STATUS_FORMAT, "%s: missing tensor '%s' (holds the model's '%s')", path, key, ps->v[i].name);
            break;
        }
        used[j] = true;
        if (part < 0) {
            s = nn_weights_load_into(w, key, dst);
            continue;
        }
        tensor_scope_begin();
        struct tensor *t = nn_weights_load(w, key, dst->dtype);
        if (t && part == 3 && t->ndim == 2) {
            t = tensor_transpose(t, 0, 1);
        } else if (t && part < 3 && t->ndim == dst->ndim && t->shape[0] == 3 * dst->shape[0]) {
            t = tensor_narrow(t, 0, part * dst->shape[0], dst->shape[0]);
        }
        if (!t) {
            s = tensor_status();
        } else if (!tensor_same_shape(t, dst)) {
            char a[128], b[128];
            s = tensor_fail(STATUS_SHAPE, "%s: tensor '%s' gives '%s' the shape %s, the model expects %s", path, key,
                            ps->v[i].name, tensor_shape_str(t, a, sizeof a), tensor_shape_str(dst, b, sizeof b));
        } else {
            s = tensor_copy_(dst, t);
        }
        tensor_scope_end();
    }
    return s;
}

enum status clip_openclip_load(struct nn_params *ps, const struct nn_weights *w)
{
    const int nf = nn_weights_count(w);
    bool *used = calloc((size_t)(nf > 0 ? nf : 1), sizeof *used);
    if (!used) return tensor_fail(STATUS_OOM, "%s: out of host memory", nn_weights_path(w));
    enum status s = openclip_load_into(ps, w, "", used);
    if (!s) s = nn_weights_check_used(w, used, NULL, openclip_buffer);
    free(used);
    return s;
}

enum status clip_openclip_text_load(struct nn_params *ps, const struct nn_weights *w, const char *prefix, int layers,
                                    bool *used)
{
    enum status s = openclip_load_into(ps, w, prefix, used);
    if (s) return s;
    /* what CLIPTextModel does not have: the blocks past its last, the projection, logit_scale, the mask */
    const size_t pl = strlen(prefix);
    for (int i = 0; i < nn_weights_count(w); i++) {
        const char *nm = nn_weights_name(w, i);
        if (strncmp(nm, prefix, pl)) continue;
        nm += pl;
        int layer = -1;
        if ((sscanf(nm, "transformer.resblocks.%d.", &layer) == 1 && layer >= layers) || !strcmp(nm, "text_projection") ||
            !strcmp(nm, "logit_scale") || openclip_buffer(nm))
            used[i] = true;
    }
    return STATUS_OK;
}
