/* blip.c — BLIP's ViT and its cross-attending BERT (ImageReward's towers; see blip.h). */
#include "diffusion/blip.h"
#include "nn/weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLIP_HEAD_WIDTH 64
#define VIT_EPS 1e-6   /* timm's partial(nn.LayerNorm, eps=1e-6) */

/* x [B, L, D] -> [B, H, L, D/H] */
static struct tensor *heads(struct tensor *x, int64_t H)
{
    if (!x) return NULL;
    const int64_t B = x->shape[0], L = x->shape[1], D = x->shape[2];
    static const int perm[4] = {0, 2, 1, 3};
    return ag_permute(ag_reshape(x, TENSOR_SHAPE(B, L, H, D / H)), perm);
}

/* softmax(q k^T / sqrt(d)) v over heads, back to [B, L, D] */
static struct tensor *attend(struct tensor *q, struct tensor *k, struct tensor *v, int64_t H)
{
    if (!q || !k || !v) return NULL;
    const int64_t B = q->shape[0], L = q->shape[1], D = q->shape[2];
    static const int perm[4] = {0, 2, 1, 3};
    struct tensor *a = ag_permute(ag_attention(heads(q, H), heads(k, H), heads(v, H), 0.0, false), perm);
    return ag_reshape(a, TENSOR_SHAPE(B, L, D));
}

/* ---------------------------------------------------------------- ViT */

static enum status dims_of(const struct nn_weights *w, const char *prefix, const char *name, int want_nd,
                           int64_t *shape)
{
    char key[512];
    snprintf(key, sizeof key, "%s.%s", prefix, name);
    int nd;
    if (!nn_weights_shape(w, key, &nd, shape))
        return tensor_fail(STATUS_FORMAT, "%s: no tensor '%s' (not a BLIP state dict?)", nn_weights_path(w), key);
    if (nd != want_nd)
        return tensor_fail(STATUS_FORMAT, "%s: '%s' has %d dims, expected %d", nn_weights_path(w), key, nd, want_nd);
    return STATUS_OK;
}

enum status blip_vit_config_from_weights(const struct nn_weights *w, const char *prefix, struct blip_vit_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    int64_t cls[TENSOR_MAX_DIMS], pos[TENSOR_MAX_DIMS], pe[TENSOR_MAX_DIMS], fc1[TENSOR_MAX_DIMS];
    enum status s = dims_of(w, prefix, "cls_token", 3, cls);
    if (!s) s = dims_of(w, prefix, "pos_embed", 3, pos);
    if (!s) s = dims_of(w, prefix, "patch_embed.proj.weight", 4, pe);
    if (!s) s = dims_of(w, prefix, "blocks.0.mlp.fc1.weight", 2, fc1);
    if (s) return s;
    cfg->width = cls[2], cfg->patch = pe[2], cfg->mlp = fc1[0];
    char key[512];
    for (int i = 0;; i++) {
        snprintf(key, sizeof key, "%s.blocks.%d.norm1.weight", prefix, i);
        if (!nn_weights_has(w, key)) break;
        cfg->depth = i + 1;
    }
    int64_t grid = 0;
    while ((grid + 1) * (grid + 1) <= pos[1] - 1) grid++;
    cfg->image_size = grid * cfg->patch;
    cfg->heads = cfg->width / BLIP_HEAD_WIDTH;
    if (cfg->width <= 0 || cfg->width % BLIP_HEAD_WIDTH || grid * grid + 1 != pos[1] || pos[2] != cfg->width ||
        pe[0] != cfg->width || pe[1] != 3 || pe[2] != pe[3] || cfg->depth < 1)
        return tensor_fail(STATUS_FORMAT, "%s: %s is not a ViT of 64-wide heads on a square grid (width %lld, %lld "
                                          "positions, patch %lld, %lld blocks)", nn_weights_path(w), prefix,
                           (long long)cfg->width, (long long)pos[1], (long long)cfg->patch, (long long)cfg->depth);
    return STATUS_OK;
}

enum status blip_vit_init(struct blip_vit *m, const struct blip_vit_config *cfg, struct nn_params *ps,
                          const char *prefix)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    const int64_t D = cfg->width, grid = cfg->image_size / cfg->patch;
    char p[512];
    m->cls_token = nn_param_new(ps, prefix, "cls_token", TENSOR_SHAPE(1, 1, D));
    m->pos_embed = nn_param_new(ps, prefix, "pos_embed", TENSOR_SHAPE(1, grid * grid + 1, D));
    if (!m->cls_token || !m->pos_embed) return tensor_status();
    enum status s = nn_conv2d_init(&m->patch_embed, ps, nn_name(p, sizeof p, prefix, "patch_embed.proj"), 3, D,
                                   (int)cfg->patch, (int)cfg->patch, 0, true);
    if (s) return s;
    m->blocks = calloc((size_t)cfg->depth, sizeof *m->blocks);
    if (!m->blocks) return tensor_fail(STATUS_OOM, "blip_vit_init: out of memory");
    for (int64_t i = 0; i < cfg->depth && !s; i++) {
        struct blip_vit_block *b = &m->blocks[i];
        char base[512];
        snprintf(base, sizeof base, "%s.blocks.%lld", prefix, (long long)i);
        if (!s) s = nn_layer_norm_init(&b->norm1, ps, nn_name(p, sizeof p, base, "norm1"), D, VIT_EPS);
        if (!s) s = nn_linear_init(&b->qkv, ps, nn_name(p, sizeof p, base, "attn.qkv"), D, 3 * D, true);
        if (!s) s = nn_linear_init(&b->proj, ps, nn_name(p, sizeof p, base, "attn.proj"), D, D, true);
        if (!s) s = nn_layer_norm_init(&b->norm2, ps, nn_name(p, sizeof p, base, "norm2"), D, VIT_EPS);
        if (!s) s = nn_linear_init(&b->fc1, ps, nn_name(p, sizeof p, base, "mlp.fc1"), D, cfg->mlp, true);
        if (!s) s = nn_linear_init(&b->fc2, ps, nn_name(p, sizeof p, base, "mlp.fc2"), cfg->mlp, D, true);
    }
    if (!s) s = nn_layer_norm_init(&m->norm, ps, nn_name(p, sizeof p, prefix, "norm"), D, VIT_EPS);
    return s;
}

void blip_vit_free(struct blip_vit *m)
{
    free(m->blocks);
    m->blocks = NULL;
}

struct tensor *blip_vit_forward(const struct blip_vit *m, struct tensor *pixel_values)
{
    if (!pixel_values) return NULL;
    const struct blip_vit_config *cfg = &m->cfg;
    char a[128];
    if (pixel_values->ndim != 4 || pixel_values->shape[0] < 1 || pixel_values->shape[1] != 3 ||
        pixel_values->shape[2] != cfg->image_size || pixel_values->shape[3] != cfg->image_size) {
        tensor_fail(STATUS_SHAPE, "blip_vit_forward: pixel_values must be [B, 3, %lld, %lld], got %s",
                    (long long)cfg->image_size, (long long)cfg->image_size, tensor_shape_str(pixel_values, a, sizeof a));
        return NULL;
    }
    tensor_scope_begin();
    const int64_t B = pixel_values->shape[0], D = cfg->width, grid = cfg->image_size / cfg->patch, N = grid * grid;
    struct tensor *x = nn_conv2d_forward(&m->patch_embed, pixel_values);   /* [B, D, g, g] */
    x = ag_transpose(ag_reshape(x, TENSOR_SHAPE(B, D, N)), 1, 2);           /* flatten(2).transpose(1, 2) */
    struct tensor *cls = ag_expand(nn_param_as(m->cls_token, x), TENSOR_SHAPE(B, 1, D));
    x = ag_concat(2, (struct tensor *[]){cls, x}, 1);
    x = ag_add(x, nn_param_as(m->pos_embed, x));
    for (int64_t i = 0; i < cfg->depth && x; i++) {
        const struct blip_vit_block *b = &m->blocks[i];
        /* qkv [B, L, 3D] -> q, k, v (reshape(B, N, 3, H, d): the three D-wide thirds in order) */
        struct tensor *qkv = nn_linear_forward(&b->qkv, nn_layer_norm_forward(&b->norm1, x));
        struct tensor *at = qkv ? attend(ag_narrow(qkv, 2, 0, D), ag_narrow(qkv, 2, D, D), ag_narrow(qkv, 2, 2 * D, D),
                                         cfg->heads)
                                : NULL;
        x = ag_add(x, nn_linear_forward(&b->proj, at));
        struct tensor *h = nn_linear_forward(&b->fc1, nn_layer_norm_forward(&b->norm2, x));
        x = ag_add(x, nn_linear_forward(&b->fc2, ag_gelu(h)));
    }
    return tensor_scope_return(nn_layer_norm_forward(&m->norm, x));
}

/* ---------------------------------------------------------------- BERT */

enum status blip_bert_config_load(struct blip_bert_config *cfg, const char *path, int64_t encoder_width)
{
    memset(cfg, 0, sizeof *cfg);
    struct nn_config c;
    enum status s = nn_config_load(&c, path);
    if (s) return s;
    char abuf[64], pbuf[64];
    const char *act = nn_config_string(&c, "hidden_act", "gelu", abuf, sizeof abuf);
    const char *pet = nn_config_string(&c, "position_embedding_type", "absolute", pbuf, sizeof pbuf);
    cfg->vocab_size = nn_config_int(&c, "vocab_size", 30524);
    cfg->hidden_size = nn_config_int(&c, "hidden_size", 768);
    cfg->intermediate_size = nn_config_int(&c, "intermediate_size", 3072);
    cfg->num_hidden_layers = (int)nn_config_int(&c, "num_hidden_layers", 12);
    cfg->num_attention_heads = (int)nn_config_int(&c, "num_attention_heads", 12);
    cfg->max_position_embeddings = nn_config_int(&c, "max_position_embeddings", 512);
    cfg->layer_norm_eps = nn_config_double(&c, "layer_norm_eps", 1e-12);
    const bool cross = nn_config_bool(&c, "add_cross_attention", true);
    (void)nn_config_int(&c, "encoder_width", encoder_width);   /* BLIP replaces it with the vision width */
    cfg->encoder_width = encoder_width;
    /* keys that do not change the forward in eval (dropout, initialisers, token ids, the type
     * vocabulary med.py's embeddings do not have) */
    static const char *const ignored[] = {"architectures", "attention_probs_dropout_prob", "hidden_dropout_prob",
                                          "initializer_range", "model_type", "pad_token_id", "type_vocab_size",
                                          "transformers_version", "torch_dtype", "dtype", "use_cache", "gradient_checkpointing",
                                          "bos_token_id", "eos_token_id"};
    nn_config_ignore(&c, ignored, (int)(sizeof ignored / sizeof *ignored));
    s = nn_config_finish(&c);
    if (!s && act && strcmp(act, "gelu"))
        s = tensor_fail(STATUS_FORMAT, "%s: hidden_act '%s' is not supported (gelu)", path, act);
    if (!s && pet && strcmp(pet, "absolute"))
        s = tensor_fail(STATUS_FORMAT, "%s: position_embedding_type '%s' is not supported (absolute)", path, pet);
    if (!s && !cross) s = tensor_fail(STATUS_FORMAT, "%s: add_cross_attention is false (BLIP's text encoder has it)", path);
    if (!s && (cfg->vocab_size <= 0 || cfg->hidden_size <= 0 || cfg->intermediate_size <= 0 ||
               cfg->num_hidden_layers < 1 || cfg->num_attention_heads <= 0 || cfg->max_position_embeddings <= 0 ||
               !(cfg->layer_norm_eps > 0) || cfg->hidden_size % cfg->num_attention_heads))
        s = tensor_fail(STATUS_FORMAT, "%s: sizes must be positive and hidden_size a multiple of num_attention_heads",
                        path);
    nn_config_free(&c);
    return s;
}

static enum status attention_init(struct blip_bert_attention *a, struct nn_params *ps, const char *base,
                                  int64_t hidden, int64_t kv_width, double eps)
{
    char p[512];
    enum status s = nn_linear_init(&a->query, ps, nn_name(p, sizeof p, base, "self.query"), hidden, hidden, true);
    if (!s) s = nn_linear_init(&a->key, ps, nn_name(p, sizeof p, base, "self.key"), kv_width, hidden, true);
    if (!s) s = nn_linear_init(&a->value, ps, nn_name(p, sizeof p, base, "self.value"), kv_width, hidden, true);
    if (!s) s = nn_linear_init(&a->dense, ps, nn_name(p, sizeof p, base, "output.dense"), hidden, hidden, true);
    if (!s) s = nn_layer_norm_init(&a->layer_norm, ps, nn_name(p, sizeof p, base, "output.LayerNorm"), hidden, eps);
    return s;
}

enum status blip_bert_init(struct blip_bert *m, const struct blip_bert_config *cfg, struct nn_params *ps,
                           const char *prefix)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    const int64_t Hd = cfg->hidden_size;
    char p[512];
    enum status s = nn_embedding_init(&m->word_embeddings, ps, nn_name(p, sizeof p, prefix, "embeddings.word_embeddings"),
                                      cfg->vocab_size, Hd);
    if (!s) s = nn_embedding_init(&m->position_embeddings, ps, nn_name(p, sizeof p, prefix, "embeddings.position_embeddings"),
                                  cfg->max_position_embeddings, Hd);
    if (!s) s = nn_layer_norm_init(&m->embeddings_norm, ps, nn_name(p, sizeof p, prefix, "embeddings.LayerNorm"), Hd,
                                   cfg->layer_norm_eps);
    if (s) return s;
    m->layers = calloc((size_t)cfg->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) return tensor_fail(STATUS_OOM, "blip_bert_init: out of memory");
    for (int i = 0; i < cfg->num_hidden_layers && !s; i++) {
        struct blip_bert_layer *l = &m->layers[i];
        char base[512];
        snprintf(base, sizeof base, "%s.encoder.layer.%d", prefix, i);
        s = attention_init(&l->self_attn, ps, nn_name(p, sizeof p, base, "attention"), Hd, Hd, cfg->layer_norm_eps);
        if (!s) s = attention_init(&l->cross_attn, ps, nn_name(p, sizeof p, base, "crossattention"), Hd,
                                   cfg->encoder_width, cfg->layer_norm_eps);
        if (!s) s = nn_linear_init(&l->intermediate, ps, nn_name(p, sizeof p, base, "intermediate.dense"), Hd,
                                   cfg->intermediate_size, true);
        if (!s) s = nn_linear_init(&l->output, ps, nn_name(p, sizeof p, base, "output.dense"), cfg->intermediate_size,
                                   Hd, true);
        if (!s) s = nn_layer_norm_init(&l->output_norm, ps, nn_name(p, sizeof p, base, "output.LayerNorm"), Hd,
                                       cfg->layer_norm_eps);
    }
    return s;
}

void blip_bert_free(struct blip_bert *m)
{
    free(m->layers);
    m->layers = NULL;
}

/* BertAttention: LayerNorm(dense(attention(x -> q; kv -> k, v)) + x) */
static struct tensor *attention_forward(const struct blip_bert_attention *a, struct tensor *x, struct tensor *kv,
                                        int64_t H)
{
    tensor_scope_begin();
    struct tensor *o = attend(nn_linear_forward(&a->query, x), nn_linear_forward(&a->key, kv),
                              nn_linear_forward(&a->value, kv), H);
    return tensor_scope_return(nn_layer_norm_forward(&a->layer_norm, ag_add(nn_linear_forward(&a->dense, o), x)));
}

struct tensor *blip_bert_forward(const struct blip_bert *m, struct tensor *input_ids, struct tensor *image_embeds)
{
    if (!input_ids || !image_embeds) return NULL;
    const struct blip_bert_config *cfg = &m->cfg;
    char a[128], b[128];
    if (input_ids->ndim != 2 || input_ids->shape[1] < 1 || input_ids->shape[1] > cfg->max_position_embeddings ||
        image_embeds->ndim != 3 || image_embeds->shape[0] != input_ids->shape[0] ||
        image_embeds->shape[2] != cfg->encoder_width) {
        tensor_fail(STATUS_SHAPE, "blip_bert_forward: input_ids must be [B, L <= %lld] and image_embeds [B, N, %lld], "
                                  "got %s and %s", (long long)cfg->max_position_embeddings, (long long)cfg->encoder_width,
                    tensor_shape_str(input_ids, a, sizeof a), tensor_shape_str(image_embeds, b, sizeof b));
        return NULL;
    }
    tensor_scope_begin();
    const int64_t L = input_ids->shape[1];
    struct tensor *x = nn_embedding_forward(&m->word_embeddings, input_ids);   /* [B, L, H] */
    struct tensor *pos = ag_narrow(m->position_embeddings.weight, 0, 0, L);
    x = nn_layer_norm_forward(&m->embeddings_norm, ag_add(x, nn_param_as(pos, x)));
    for (int i = 0; i < cfg->num_hidden_layers && x; i++) {
        const struct blip_bert_layer *l = &m->layers[i];
        x = attention_forward(&l->self_attn, x, x, cfg->num_attention_heads);
        x = attention_forward(&l->cross_attn, x, image_embeds, cfg->num_attention_heads);
        struct tensor *h = ag_gelu(nn_linear_forward(&l->intermediate, x));
        x = nn_layer_norm_forward(&l->output_norm, ag_add(nn_linear_forward(&l->output, h), x));
    }
    return tensor_scope_return(x);
}
