/* unet.c — UNet2DConditionModel (diffusers 0.25 semantics) for Stable Diffusion 1.x, 2.x and XL.
 *
 * Module for module the diffusers tree: ResnetBlock2D, Transformer2DModel (GroupNorm eps
 * 1e-6, conv1x1 proj_in/proj_out, or Linear ones on the tokens with use_linear_projection,
 * BasicTransformerBlock with self-attention, cross-attention and a GEGLU feed-forward),
 * Downsample2D / Upsample2D, the down/mid/up blocks and the skip stack, and SDXL's "text_time"
 * added embedding. Parameters are created in the diffusers state_dict order.
 */
#include "diffusion/unet.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- projections (LoRA hook) */

/* Without a graph (sampling), the adapter is merged into the weight for the call: one product
 * x (W + s B A)^T instead of x W^T + s (x A^T) B^T, i.e. no rank-r products over every token and
 * no extra pass to add them (B A costs out * in * r, less than the r (in + out) per token it
 * saves once there are more tokens than in * out / (in + out)). The same sum in another order:
 * results differ from the graph path in rounding only. Not inside a checkpoint's graph-free run,
 * which the backward recomputes with the graph and must match. */
static struct tensor *in_dtype(struct tensor *t, enum dtype dt) { return t->dtype == dt ? t : ag_to_dtype(t, dt); }

static struct tensor *proj_forward_merged(const struct sd_proj *p, struct tensor *x)
{
    const enum dtype dt = x->dtype;
    tensor_scope_begin();
    struct tensor *w = in_dtype(p->base.weight, dt);   /* e.g. a bf16 base under f32 activations */
    struct tensor *d = ag_matmul(in_dtype(p->lora_up, dt), in_dtype(p->lora_down, dt));   /* [out, r] x [r, in] */
    if (d && p->lora_scale != 1.0) d = ag_scale(d, p->lora_scale);
    return tensor_scope_return(ag_linear(x, d ? ag_add(w, d) : NULL, p->base.bias));
}

struct tensor *sd_proj_forward(const struct sd_proj *p, struct tensor *x)
{
    if (!x) return NULL;
    if (!p->lora_down || !p->lora_up) return nn_linear_forward(&p->base, x);
    const int64_t tokens = tensor_numel(x) / (p->in_features > 0 ? p->in_features : 1);
    if (!ag_grad_enabled() && !ag_checkpoint_forward_active() &&
        tokens * (p->in_features + p->out_features) > p->in_features * p->out_features)
        return proj_forward_merged(p, x);
    tensor_scope_begin();
    struct tensor *y = nn_linear_forward(&p->base, x);
    struct tensor *d = ag_linear(ag_linear(x, p->lora_down, NULL), p->lora_up, NULL);
    if (p->lora_scale != 1.0) d = ag_scale(d, p->lora_scale);
    return tensor_scope_return(ag_add(y, d));
}

static enum status proj_init(struct sd_unet *u, struct sd_proj *p, const char *prefix, const char *name, int64_t in,
                             int64_t out, bool bias)
{
    memset(p, 0, sizeof *p);
    nn_name(p->name, sizeof p->name, prefix, name);
    p->in_features = in;
    p->out_features = out;
    p->lora_scale = 1.0;
    enum status s = nn_linear_init(&p->base, u->ps, p->name, in, out, bias);
    if (s) return s;
    if (u->n_projs == u->cap_projs) {
        int cap = u->cap_projs ? 2 * u->cap_projs : 64;
        struct sd_proj **v = realloc(u->projs, (size_t)cap * sizeof *v);
        if (!v) return tensor_fail(STATUS_OOM, "unet: out of host memory");
        u->projs = v;
        u->cap_projs = cap;
    }
    u->projs[u->n_projs++] = p;
    return STATUS_OK;
}

/* ---------------------------------------------------------------- attention */

static enum status attention_init(struct sd_unet *u, struct sd_attention *a, const char *prefix, int64_t dim,
                                  int64_t ctx_dim, int heads)
{
    a->heads = heads;
    a->head_dim = dim / heads;
    enum status s;
    if ((s = proj_init(u, &a->to_q, prefix, "to_q", dim, dim, false))) return s;
    if ((s = proj_init(u, &a->to_k, prefix, "to_k", ctx_dim, dim, false))) return s;
    if ((s = proj_init(u, &a->to_v, prefix, "to_v", ctx_dim, dim, false))) return s;
    return proj_init(u, &a->to_out, prefix, "to_out.0", dim, dim, true);
}

/* [B, L, H*D] -> the [B, H, L, D] view ag_attention takes (no copy) */
static struct tensor *split_heads(struct tensor *x, int heads)
{
    if (!x) return NULL;
    int64_t B = x->shape[0], L = x->shape[1], C = x->shape[2];
    static const int perm[4] = {0, 2, 1, 3};
    return ag_permute(ag_reshape(x, TENSOR_SHAPE(B, L, heads, C / heads)), perm);
}

/* x [B, L, C], ctx [B, S, Cctx] (NULL: self-attention) -> [B, L, C] */
static struct tensor *attention_forward(const struct sd_attention *a, struct tensor *x, struct tensor *ctx)
{
    if (!x) return NULL;
    tensor_scope_begin();
    struct tensor *kv = ctx ? ctx : x;
    struct tensor *q = split_heads(sd_proj_forward(&a->to_q, x), a->heads);
    struct tensor *k = split_heads(sd_proj_forward(&a->to_k, kv), a->heads);
    struct tensor *v = split_heads(sd_proj_forward(&a->to_v, kv), a->heads);
    struct tensor *o = ag_attention(q, k, v, 1.0 / sqrt((double)a->head_dim), false);   /* [B, H, L, D] */
    static const int perm[4] = {0, 2, 1, 3};
    o = ag_reshape(ag_permute(o, perm), TENSOR_SHAPE(x->shape[0], x->shape[1], x->shape[2]));
    return tensor_scope_return(sd_proj_forward(&a->to_out, o));   /* to_out.1 is Dropout: identity */
}

/* ---------------------------------------------------------------- transformer */

static enum status transformer_block_init(struct sd_unet *u, struct sd_transformer_block *t, const char *prefix,
                                          int64_t dim, int64_t ctx_dim, int heads)
{
    char b[400];
    enum status s;
    t->inner = 4 * dim;
    if ((s = nn_layer_norm_init(&t->norm1, u->ps, nn_name(b, sizeof b, prefix, "norm1"), dim, 1e-5))) return s;
    if ((s = attention_init(u, &t->attn1, nn_name(b, sizeof b, prefix, "attn1"), dim, dim, heads))) return s;
    if ((s = nn_layer_norm_init(&t->norm2, u->ps, nn_name(b, sizeof b, prefix, "norm2"), dim, 1e-5))) return s;
    if ((s = attention_init(u, &t->attn2, nn_name(b, sizeof b, prefix, "attn2"), dim, ctx_dim, heads))) return s;
    if ((s = nn_layer_norm_init(&t->norm3, u->ps, nn_name(b, sizeof b, prefix, "norm3"), dim, 1e-5))) return s;
    if ((s = nn_linear_init(&t->ff_proj, u->ps, nn_name(b, sizeof b, prefix, "ff.net.0.proj"), dim, 2 * t->inner, true)))
        return s;
    return nn_linear_init(&t->ff_out, u->ps, nn_name(b, sizeof b, prefix, "ff.net.2"), t->inner, dim, true);
}

/* x [B, L, C] -> [B, L, C] */
static struct tensor *transformer_block_forward(const struct sd_transformer_block *t, struct tensor *x, struct tensor *ctx)
{
    if (!x) return NULL;
    tensor_scope_begin();
    x = ag_add(x, attention_forward(&t->attn1, nn_layer_norm_forward(&t->norm1, x), NULL));
    x = ag_add(x, attention_forward(&t->attn2, nn_layer_norm_forward(&t->norm2, x), ctx));
    /* GEGLU: the first half of the projection is the value, the second the (erf) GELU gate */
    struct tensor *hg[2] = {NULL, NULL};
    struct tensor *h = nn_linear_forward(&t->ff_proj, nn_layer_norm_forward(&t->norm3, x));
    if (!h || ag_chunk(h, -1, 2, hg)) return tensor_scope_return(NULL);
    h = nn_linear_forward(&t->ff_out, ag_mul(hg[0], ag_gelu(hg[1])));
    return tensor_scope_return(ag_add(x, h));
}

static enum status transformer2d_init(struct sd_unet *u, struct sd_transformer2d *t, const char *prefix, int64_t dim,
                                      int64_t ctx_dim, int heads, int n_blocks, int groups)
{
    char b[400];
    enum status s;
    if (heads <= 0 || dim % heads)
        return tensor_fail(STATUS_VALUE, "unet %s: %lld channels do not split into %d attention heads", prefix,
                           (long long)dim, heads);
    if ((s = nn_group_norm_init(&t->norm, u->ps, nn_name(b, sizeof b, prefix, "norm"), groups, dim, 1e-6))) return s;
    t->linear = u->linear_projection;
    s = t->linear ? nn_linear_init(&t->proj_in_linear, u->ps, nn_name(b, sizeof b, prefix, "proj_in"), dim, dim, true)
                  : nn_conv2d_init(&t->proj_in, u->ps, nn_name(b, sizeof b, prefix, "proj_in"), dim, dim, 1, 1, 0, true);
    if (s) return s;
    t->blocks = calloc((size_t)n_blocks, sizeof *t->blocks);
    if (!t->blocks) return tensor_fail(STATUS_OOM, "unet: out of host memory");
    t->n_blocks = n_blocks;
    for (int i = 0; i < n_blocks; i++) {
        char bb[400];
        snprintf(bb, sizeof bb, "%s.transformer_blocks.%d", prefix, i);
        if ((s = transformer_block_init(u, &t->blocks[i], bb, dim, ctx_dim, heads))) return s;
    }
    return t->linear ? nn_linear_init(&t->proj_out_linear, u->ps, nn_name(b, sizeof b, prefix, "proj_out"), dim, dim, true)
                     : nn_conv2d_init(&t->proj_out, u->ps, nn_name(b, sizeof b, prefix, "proj_out"), dim, dim, 1, 1, 0, true);
}

/* x [B, C, H, W] -> [B, C, H, W] */
static struct tensor *transformer2d_forward(const struct sd_transformer2d *t, struct tensor *x, struct tensor *ctx)
{
    if (!x) return NULL;
    tensor_scope_begin();
    const int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    static const int to_nhwc[4] = {0, 2, 3, 1}, to_nchw[4] = {0, 3, 1, 2};
    struct tensor *h = nn_group_norm_forward(&t->norm, x);
    /* SD 1.x projects before going to tokens [B, HW, C] and after coming back; SD 2.x on the tokens */
    if (!t->linear) h = nn_conv2d_forward(&t->proj_in, h);
    h = ag_reshape(ag_permute(h, to_nhwc), TENSOR_SHAPE(B, H * W, C));
    if (t->linear) h = nn_linear_forward(&t->proj_in_linear, h);
    for (int i = 0; i < t->n_blocks; i++) h = transformer_block_forward(&t->blocks[i], h, ctx);
    if (t->linear) h = nn_linear_forward(&t->proj_out_linear, h);
    h = ag_contiguous(ag_permute(ag_reshape(h, TENSOR_SHAPE(B, H, W, C)), to_nchw));
    if (!t->linear) h = nn_conv2d_forward(&t->proj_out, h);
    return tensor_scope_return(ag_add(h, x));
}

static void transformer2d_free(struct sd_transformer2d *t)
{
    free(t->blocks);
    t->blocks = NULL;
}

/* ---------------------------------------------------------------- resnet */

struct unet_hparams {
    int groups;
    double eps, resnet_scale, mid_scale;
    int64_t temb;
};

static enum status resnet_init(struct sd_unet *u, struct sd_resnet *r, const char *prefix, int64_t in, int64_t out,
                               const struct unet_hparams *hp, double scale)
{
    char b[400];
    enum status s;
    r->output_scale_factor = scale;
    if ((s = nn_group_norm_init(&r->norm1, u->ps, nn_name(b, sizeof b, prefix, "norm1"), hp->groups, in, hp->eps))) return s;
    if ((s = nn_conv2d_init(&r->conv1, u->ps, nn_name(b, sizeof b, prefix, "conv1"), in, out, 3, 1, 1, true))) return s;
    if ((s = nn_linear_init(&r->time_emb_proj, u->ps, nn_name(b, sizeof b, prefix, "time_emb_proj"), hp->temb, out, true)))
        return s;
    if ((s = nn_group_norm_init(&r->norm2, u->ps, nn_name(b, sizeof b, prefix, "norm2"), hp->groups, out, hp->eps))) return s;
    if ((s = nn_conv2d_init(&r->conv2, u->ps, nn_name(b, sizeof b, prefix, "conv2"), out, out, 3, 1, 1, true))) return s;
    r->has_shortcut = in != out;
    if (r->has_shortcut &&
        (s = nn_conv2d_init(&r->conv_shortcut, u->ps, nn_name(b, sizeof b, prefix, "conv_shortcut"), in, out, 1, 1, 0, true)))
        return s;
    return STATUS_OK;
}

/* x [B, Cin, H, W], temb_act = SiLU(temb) [B, T] (shared by all resnets) -> [B, Cout, H, W] */
static struct tensor *resnet_forward(const struct sd_resnet *r, struct tensor *x, struct tensor *temb_act)
{
    if (!x || !temb_act) return NULL;
    tensor_scope_begin();
    struct tensor *h = nn_conv2d_forward(&r->conv1, ag_silu(nn_group_norm_forward(&r->norm1, x)));
    struct tensor *t = nn_linear_forward(&r->time_emb_proj, temb_act);   /* [B, Cout] */
    if (t) t = ag_reshape(t, TENSOR_SHAPE(t->shape[0], t->shape[1], 1, 1));
    h = ag_add(h, t);
    h = nn_conv2d_forward(&r->conv2, ag_silu(nn_group_norm_forward(&r->norm2, h)));   /* dropout p=0: identity */
    struct tensor *sc = r->has_shortcut ? nn_conv2d_forward(&r->conv_shortcut, x) : x;
    h = ag_add(sc, h);
    if (r->output_scale_factor != 1.0) h = ag_scale(h, 1.0 / r->output_scale_factor);
    return tensor_scope_return(h);
}

/* ---------------------------------------------------------------- config */

static bool is_null_or_absent(struct nn_config *c, const char *key)
{
    nn_config_ignore(c, &key, 1);
    const cJSON *j = cJSON_GetObjectItemCaseSensitive((const cJSON *)c->root, key);
    return !j || cJSON_IsNull(j);
}

/* false or absent (a list of all-false booleans counts as false) */
static bool is_false_or_absent(struct nn_config *c, const char *key)
{
    nn_config_ignore(c, &key, 1);
    const cJSON *j = cJSON_GetObjectItemCaseSensitive((const cJSON *)c->root, key);
    if (!j || cJSON_IsNull(j) || cJSON_IsFalse(j)) return true;
    if (!cJSON_IsArray(j)) return false;
    for (const cJSON *e = j->child; e; e = e->next)
        if (!cJSON_IsFalse(e)) return false;
    return true;
}

#define UNSUPPORTED(...) tensor_fail(STATUS_VALUE, __VA_ARGS__)

/* per-block integer setting: an int (same for all blocks) or a list of n; returns false with an error */
static bool per_block(struct nn_config *c, const char *key, long long def, int n, long long *out)
{
    long long v[SD_UNET_MAX_BLOCKS];
    int k = nn_config_int_array(c, key, v, SD_UNET_MAX_BLOCKS, true);
    if (k < 0) return false;
    if (k == 0) { v[0] = def; k = 1; }
    const cJSON *j = cJSON_GetObjectItemCaseSensitive((const cJSON *)c->root, key);
    bool scalar = !j || cJSON_IsNull(j) || cJSON_IsNumber(j);
    if (!scalar && k != n) {
        tensor_fail(STATUS_VALUE, "%s: '%s' has %d entries but there are %d blocks", c->path, key, k, n);
        return false;
    }
    for (int i = 0; i < n; i++) out[i] = scalar ? v[0] : v[i];
    return true;
}

static void block_free(struct sd_unet_block *b)
{
    if (b->attentions)
        for (int i = 0; i < b->n_layers; i++) transformer2d_free(&b->attentions[i]);
    free(b->attentions);
    free(b->resnets);
    memset(b, 0, sizeof *b);
}

void sd_unet_free(struct sd_unet *u)
{
    for (int i = 0; i < SD_UNET_MAX_BLOCKS; i++) {
        block_free(&u->down[i]);
        block_free(&u->up[i]);
    }
    block_free(&u->mid);
    free(u->projs);
    memset(u, 0, sizeof *u);
}

static enum status block_alloc(struct sd_unet_block *b, int n_layers, int n_resnets, bool attention)
{
    b->n_layers = n_layers;
    b->resnets = calloc((size_t)n_resnets, sizeof *b->resnets);
    b->attentions = attention ? calloc((size_t)n_layers, sizeof *b->attentions) : NULL;
    if (!b->resnets || (attention && !b->attentions)) return tensor_fail(STATUS_OOM, "unet: out of host memory");
    return STATUS_OK;
}

static enum status unet_build(struct sd_unet *u, struct nn_config *c)
{
    char buf[64], name[400];
    enum status s;
    /* ---- read the config */
    u->in_channels = nn_config_int(c, "in_channels", 4);
    u->out_channels = nn_config_int(c, "out_channels", 4);
    u->center_input_sample = nn_config_bool(c, "center_input_sample", false);
    u->flip_sin_to_cos = nn_config_bool(c, "flip_sin_to_cos", true);
    u->freq_shift = nn_config_double(c, "freq_shift", 0);
    u->linear_projection = nn_config_bool(c, "use_linear_projection", false);
    /* an int in every SD config; diffusers also allows [h, w], which says nothing to a square default */
    if (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive((const cJSON *)c->root, "sample_size")))
        u->sample_size = nn_config_int(c, "sample_size", 0);
    char down_types[SD_UNET_MAX_BLOCKS][64], up_types[SD_UNET_MAX_BLOCKS][64];
    int nd = nn_config_string_array(c, "down_block_types", down_types, SD_UNET_MAX_BLOCKS);
    int nu = nn_config_string_array(c, "up_block_types", up_types, SD_UNET_MAX_BLOCKS);
    long long bo[SD_UNET_MAX_BLOCKS];
    int nb = nn_config_int_array(c, "block_out_channels", bo, SD_UNET_MAX_BLOCKS, false);
    /* absent keys take the diffusers defaults, which are SD 1.x's values */
    if (nd == 0) {
        nd = 4;
        for (int i = 0; i < 4; i++) strcpy(down_types[i], i < 3 ? "CrossAttnDownBlock2D" : "DownBlock2D");
    }
    if (nu == 0) {
        nu = 4;
        for (int i = 0; i < 4; i++) strcpy(up_types[i], i == 0 ? "UpBlock2D" : "CrossAttnUpBlock2D");
    }
    if (nb == 0) {
        nb = 4;
        bo[0] = 320, bo[1] = 640, bo[2] = 1280, bo[3] = 1280;
    }
    if (c->err) return nn_config_finish(c);
    if (nd != nb || nu != nb || nb < 1)
        return UNSUPPORTED("%s: down_block_types (%d), up_block_types (%d) and block_out_channels (%d) must have the same "
                           "length", c->path, nd, nu, nb);
    u->n_blocks = nb;
    for (int i = 0; i < nb; i++) {
        if (bo[i] <= 0) return UNSUPPORTED("%s: block_out_channels[%d] = %lld", c->path, i, bo[i]);
        u->block_out[i] = bo[i];
    }
    long long layers[SD_UNET_MAX_BLOCKS], heads[SD_UNET_MAX_BLOCKS], xdim[SD_UNET_MAX_BLOCKS], tlayers[SD_UNET_MAX_BLOCKS];
    if (!per_block(c, "layers_per_block", 2, nb, layers) || !per_block(c, "attention_head_dim", 8, nb, heads) ||
        !per_block(c, "cross_attention_dim", 1280, nb, xdim) || !per_block(c, "transformer_layers_per_block", 1, nb, tlayers))
        return c->err ? nn_config_finish(c) : tensor_status();
    for (int i = 0; i < nb; i++) {
        if (xdim[i] != xdim[0])
            return UNSUPPORTED("%s: cross_attention_dim must be the same for every block (got %lld and %lld)", c->path,
                               xdim[0], xdim[i]);
        if (layers[i] < 1 || layers[i] > 16 || tlayers[i] < 1 || tlayers[i] > 64 || heads[i] < 1 || xdim[i] < 1)
            return UNSUPPORTED("%s: block %d: layers_per_block (1..16), transformer_layers_per_block (1..64), "
                               "attention_head_dim and cross_attention_dim must be positive", c->path, i);
    }
    u->cross_attention_dim = xdim[0];
    long long down_padding = nn_config_int(c, "downsample_padding", 1);
    double mid_scale = nn_config_double(c, "mid_block_scale_factor", 1);
    double resnet_scale = nn_config_double(c, "resnet_out_scale_factor", 1);
    double norm_eps = nn_config_double(c, "norm_eps", 1e-5);
    long long groups = nn_config_int(c, "norm_num_groups", 32);
    long long k_in = nn_config_int(c, "conv_in_kernel", 3), k_out = nn_config_int(c, "conv_out_kernel", 3);
    long long temb_dim = nn_config_int(c, "time_embedding_dim", 0);
    double dropout = nn_config_double(c, "dropout", 0);
    const char *act = nn_config_string(c, "act_fn", "silu", buf, sizeof buf);
    if (c->err) return nn_config_finish(c);
    if (!act || strcmp(act, "silu")) return UNSUPPORTED("%s: act_fn '%s' is not supported (only \"silu\")", c->path, act ? act : "null");
    /* settings that must keep their SD 1.x value */
    static const struct { const char *key, *want; } strs[] = {
        {"mid_block_type", "UNetMidBlock2DCrossAttn"}, {"resnet_time_scale_shift", "default"},
        {"time_embedding_type", "positional"},         {"attention_type", "default"},
    };
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        const char *v = nn_config_string(c, strs[i].key, strs[i].want, buf, sizeof buf);
        if (c->err) return nn_config_finish(c);
        if (!v || strcmp(v, strs[i].want))
            return UNSUPPORTED("%s: %s = %s is not supported (only \"%s\", the SD 1.x architecture)", c->path, strs[i].key,
                               v ? v : "null", strs[i].want);
    }
    /* SDXL's added embedding: addition_embed_type "text_time" and its two sizes; the other types are not SD's */
    const char *add_type = nn_config_string(c, "addition_embed_type", NULL, buf, sizeof buf);
    const long long add_time = nn_config_int(c, "addition_time_embed_dim", 0);
    const long long add_in = nn_config_int(c, "projection_class_embeddings_input_dim", 0);
    if (c->err) return nn_config_finish(c);
    if (add_type && strcmp(add_type, "text_time"))
        return UNSUPPORTED("%s: addition_embed_type '%s' is not supported (null, or \"text_time\": SDXL's)", c->path,
                           add_type);
    if (add_type && (add_time < 2 || add_time % 2 || add_in <= add_time))
        return UNSUPPORTED("%s: addition_embed_type \"text_time\" needs an even addition_time_embed_dim and a larger "
                           "projection_class_embeddings_input_dim (got %lld and %lld)", c->path, add_time, add_in);
    u->add_time_dim = add_type ? add_time : 0;
    u->add_in_dim = add_type ? add_in : 0;
    static const char *const must_null[] = {
        "num_attention_heads",  "class_embed_type",     "num_class_embeds",
        "encoder_hid_dim",      "encoder_hid_dim_type", "time_embedding_act_fn",   "timestep_post_act",
        "time_cond_proj_dim",   "reverse_transformer_layers_per_block",
    };
    for (size_t i = 0; i < sizeof must_null / sizeof must_null[0]; i++)
        if (!is_null_or_absent(c, must_null[i]))
            return UNSUPPORTED("%s: '%s' must be null: this UNet implements only the SD 1.x architecture", c->path, must_null[i]);
    static const char *const must_false[] = {
        "only_cross_attention", "dual_cross_attention", "resnet_skip_time_act",
    };
    for (size_t i = 0; i < sizeof must_false / sizeof must_false[0]; i++)
        if (!is_false_or_absent(c, must_false[i]))
            return UNSUPPORTED("%s: %s = true is not supported (only the SD 1.x, 2.x and XL architecture: false)", c->path,
                               must_false[i]);
    /* keys that do not change this architecture: sample_size is a pipeline hint (read above when a number);
     * upcast_attention only changes the precision of half-precision attention; the rest only act with the
     * embeddings/blocks rejected above */
    static const char *const ignored[] = {
        "sample_size",       "upcast_attention",        "addition_embed_type_num_heads",
        "cross_attention_norm", "class_embeddings_concat", "mid_block_only_cross_attention",
    };
    nn_config_ignore(c, ignored, (int)(sizeof ignored / sizeof ignored[0]));
    if ((s = nn_config_finish(c))) return s;
    if (dropout != 0) return UNSUPPORTED("%s: dropout = %g is not supported (only 0)", c->path, dropout);
    if (down_padding != 0 && down_padding != 1)
        return UNSUPPORTED("%s: downsample_padding = %lld is not supported (0 or 1)", c->path, down_padding);
    if (k_in < 1 || k_in % 2 == 0 || k_out < 1 || k_out % 2 == 0)
        return UNSUPPORTED("%s: conv_in_kernel / conv_out_kernel must be odd (got %lld, %lld)", c->path, k_in, k_out);
    if (groups < 1 || norm_eps <= 0 || mid_scale == 0 || resnet_scale == 0 || temb_dim < 0)
        return UNSUPPORTED("%s: norm_num_groups, norm_eps, mid_block_scale_factor, resnet_out_scale_factor must be positive",
                           c->path);
    if (u->in_channels < 1 || u->out_channels < 1)
        return UNSUPPORTED("%s: in_channels and out_channels must be positive", c->path);
    for (int i = 0; i < nb; i++) {
        if (strcmp(down_types[i], "CrossAttnDownBlock2D") && strcmp(down_types[i], "DownBlock2D"))
            return UNSUPPORTED("%s: down block type '%s' is not supported (CrossAttnDownBlock2D, DownBlock2D)", c->path,
                               down_types[i]);
        if (strcmp(up_types[i], "CrossAttnUpBlock2D") && strcmp(up_types[i], "UpBlock2D"))
            return UNSUPPORTED("%s: up block type '%s' is not supported (CrossAttnUpBlock2D, UpBlock2D)", c->path, up_types[i]);
    }

    struct unet_hparams hp = {.groups = (int)groups, .eps = norm_eps, .resnet_scale = resnet_scale, .mid_scale = mid_scale};
    u->time_proj_dim = bo[0];
    u->time_embed_dim = hp.temb = temb_dim ? temb_dim : 4 * bo[0];

    /* ---- parameters, in the diffusers state_dict order */
    const int pad_in = (int)(k_in - 1) / 2, pad_out = (int)(k_out - 1) / 2;
    if ((s = nn_conv2d_init(&u->conv_in, u->ps, "conv_in", u->in_channels, bo[0], (int)k_in, 1, pad_in, true))) return s;
    if ((s = nn_linear_init(&u->time_linear_1, u->ps, "time_embedding.linear_1", u->time_proj_dim, hp.temb, true))) return s;
    if ((s = nn_linear_init(&u->time_linear_2, u->ps, "time_embedding.linear_2", hp.temb, hp.temb, true))) return s;
    if (u->add_time_dim) {
        if ((s = nn_linear_init(&u->add_linear_1, u->ps, "add_embedding.linear_1", u->add_in_dim, hp.temb, true))) return s;
        if ((s = nn_linear_init(&u->add_linear_2, u->ps, "add_embedding.linear_2", hp.temb, hp.temb, true))) return s;
    }

    int64_t out_ch = bo[0];
    for (int i = 0; i < nb; i++) {
        struct sd_unet_block *b = &u->down[i];
        const int64_t in_ch = out_ch;
        out_ch = bo[i];
        const bool attn = !strcmp(down_types[i], "CrossAttnDownBlock2D"), last = i == nb - 1;
        if ((s = block_alloc(b, (int)layers[i], (int)layers[i], attn))) return s;
        for (int j = 0; attn && j < b->n_layers; j++) {
            snprintf(name, sizeof name, "down_blocks.%d.attentions.%d", i, j);
            if ((s = transformer2d_init(u, &b->attentions[j], name, out_ch, u->cross_attention_dim, (int)heads[i],
                                        (int)tlayers[i], hp.groups)))
                return s;
        }
        for (int j = 0; j < b->n_layers; j++) {
            snprintf(name, sizeof name, "down_blocks.%d.resnets.%d", i, j);
            if ((s = resnet_init(u, &b->resnets[j], name, j == 0 ? in_ch : out_ch, out_ch, &hp, resnet_scale))) return s;
        }
        if (!last) {
            b->has_sampler = true;
            u->n_samplers++;
            snprintf(name, sizeof name, "down_blocks.%d.downsamplers.0.conv", i);
            if ((s = nn_conv2d_init(&b->sampler, u->ps, name, out_ch, out_ch, 3, 2, (int)down_padding, true))) return s;
            if (down_padding == 0) b->sampler.p.pad_bottom = b->sampler.p.pad_right = 1;   /* F.pad (0,1,0,1) */
        }
    }

    /* up blocks: channels mirror the down path (diffusers reversed_* lists) */
    out_ch = bo[nb - 1];
    for (int i = 0; i < nb; i++) {
        struct sd_unet_block *b = &u->up[i];
        const int r = nb - 1 - i;   /* the matching down block */
        const int64_t prev_out = out_ch;
        out_ch = bo[r];
        const int64_t in_ch = bo[r > 0 ? r - 1 : 0];
        const bool attn = !strcmp(up_types[i], "CrossAttnUpBlock2D"), last = i == nb - 1;
        const int n = (int)layers[r] + 1;
        if ((s = block_alloc(b, n, n, attn))) return s;
        for (int j = 0; attn && j < n; j++) {
            snprintf(name, sizeof name, "up_blocks.%d.attentions.%d", i, j);
            if ((s = transformer2d_init(u, &b->attentions[j], name, out_ch, u->cross_attention_dim, (int)heads[r],
                                        (int)tlayers[r], hp.groups)))
                return s;
        }
        for (int j = 0; j < n; j++) {
            const int64_t skip = j == n - 1 ? in_ch : out_ch, rin = j == 0 ? prev_out : out_ch;
            snprintf(name, sizeof name, "up_blocks.%d.resnets.%d", i, j);
            if ((s = resnet_init(u, &b->resnets[j], name, rin + skip, out_ch, &hp, resnet_scale))) return s;
        }
        if (!last) {
            b->has_sampler = true;
            snprintf(name, sizeof name, "up_blocks.%d.upsamplers.0.conv", i);
            if ((s = nn_conv2d_init(&b->sampler, u->ps, name, out_ch, out_ch, 3, 1, 1, true))) return s;
        }
    }

    /* mid block: resnet, (transformer, resnet) x 1 */
    const int64_t mc = bo[nb - 1];
    if ((s = block_alloc(&u->mid, 1, 2, true))) return s;
    if ((s = transformer2d_init(u, &u->mid.attentions[0], "mid_block.attentions.0", mc, u->cross_attention_dim,
                                (int)heads[nb - 1], (int)tlayers[nb - 1], hp.groups)))
        return s;
    for (int j = 0; j < 2; j++) {
        snprintf(name, sizeof name, "mid_block.resnets.%d", j);
        if ((s = resnet_init(u, &u->mid.resnets[j], name, mc, mc, &hp, mid_scale))) return s;
    }

    if ((s = nn_group_norm_init(&u->conv_norm_out, u->ps, "conv_norm_out", hp.groups, bo[0], norm_eps))) return s;
    return nn_conv2d_init(&u->conv_out, u->ps, "conv_out", bo[0], u->out_channels, (int)k_out, 1, pad_out, true);
}

enum status sd_unet_init(struct sd_unet *u, struct nn_config *cfg, struct nn_params *ps)
{
    memset(u, 0, sizeof *u);
    u->ps = ps;
    enum status s = unet_build(u, cfg);
    if (s) {
        struct nn_params *keep = ps;
        sd_unet_free(u);
        u->ps = keep;
    }
    return s;
}

enum status sd_unet_init_file(struct sd_unet *u, const char *config_path, struct nn_params *ps)
{
    struct nn_config c;
    memset(u, 0, sizeof *u);
    enum status s = nn_config_load(&c, config_path);
    if (s) return s;
    s = sd_unet_init(u, &c, ps);
    nn_config_free(&c);
    return s;
}

/* ---------------------------------------------------------------- forward */

struct tensor *sd_timestep_features(struct tensor *timesteps, int64_t dim, bool flip_sin_to_cos, double freq_shift)
{
    if (!timesteps) return NULL;
    if (dim < 2) {
        tensor_fail(STATUS_VALUE, "timestep embedding: dim %lld < 2", (long long)dim);
        return NULL;
    }
    tensor_scope_begin();
    struct tensor *t = tensor_contiguous(tensor_to_device(timesteps, DEVICE_CPU));
    const int64_t B = t ? tensor_numel(t) : 0, half = dim / 2;
    struct tensor *out = t ? tensor_zeros(DTYPE_F32, TENSOR_SHAPE(B, dim), DEVICE_CPU) : NULL;
    if (!out) return tensor_scope_return(NULL);
    float *o = tensor_data_ptr(out);
    /* float32 throughout, as diffusers computes it: exp(-ln(10000) * i / (half - shift)) */
    const float neg_log = (float)(-log(10000.0)), denom = (float)((double)half - freq_shift);
    for (int64_t b = 0; b < B; b++) {
        const float tb = (float)tensor_get_flat(t, b);
        for (int64_t i = 0; i < half; i++) {
            const float freq = expf(neg_log * (float)i / denom), arg = tb * freq;
            const float sn = sinf(arg), cs = cosf(arg);
            o[b * dim + i] = flip_sin_to_cos ? cs : sn;
            o[b * dim + half + i] = flip_sin_to_cos ? sn : cs;
        }   /* odd dim: the last column stays zero (diffusers pads) */
    }
    return tensor_scope_return(out);
}

static struct tensor *check_inputs(struct sd_unet *u, struct tensor *sample, struct tensor *timesteps, struct tensor *ehs)
{
    char a[96], b[96], c[96];
    if (!u->conv_in.weight) {
        tensor_fail(STATUS_VALUE, "sd_unet_forward: the UNet is not initialised");
        return NULL;
    }
    const struct tensor *w = u->conv_in.weight;
    const int64_t f = (int64_t)1 << u->n_samplers;
    if (sample->ndim != 4 || sample->shape[1] != u->in_channels || sample->shape[2] % f || sample->shape[3] % f ||
        sample->shape[2] == 0 || sample->shape[3] == 0) {
        tensor_fail(STATUS_SHAPE, "sd_unet_forward: sample %s must be [B, %lld, H, W] with H and W multiples of %lld",
                    tensor_shape_str(sample, a, sizeof a), (long long)u->in_channels, (long long)f);
        return NULL;
    }
    const int64_t B = sample->shape[0];
    if (ehs->ndim != 3 || ehs->shape[0] != B || ehs->shape[2] != u->cross_attention_dim || ehs->shape[1] < 1) {
        tensor_fail(STATUS_SHAPE, "sd_unet_forward: encoder_hidden_states %s must be [%lld, S, %lld] for sample %s",
                    tensor_shape_str(ehs, a, sizeof a), (long long)B, (long long)u->cross_attention_dim,
                    tensor_shape_str(sample, b, sizeof b));
        return NULL;
    }
    const int64_t nt = tensor_numel(timesteps);
    if (timesteps->ndim > 1 || (nt != B && nt != 1)) {
        tensor_fail(STATUS_SHAPE, "sd_unet_forward: timesteps %s must be [%lld] or a single value",
                    tensor_shape_str(timesteps, a, sizeof a), (long long)B);
        return NULL;
    }
    const enum dtype cdt = nn_compute_dtype(w->dtype);   /* f32 activations for a bf16/f16 model */
    if (sample->dtype != cdt || ehs->dtype != cdt || tensor_device(sample) != tensor_device(w) ||
        tensor_device(ehs) != tensor_device(w)) {
        tensor_fail(STATUS_DTYPE, "sd_unet_forward: sample %s %s %s and encoder_hidden_states %s %s %s must be %s on the "
                    "parameters' device (parameters %s %s)", dtype_name(sample->dtype), device_name(tensor_device(sample)),
                    tensor_shape_str(sample, a, sizeof a), dtype_name(ehs->dtype), device_name(tensor_device(ehs)),
                    tensor_shape_str(ehs, c, sizeof c), dtype_name(cdt), dtype_name(w->dtype), device_name(tensor_device(w)));
        return NULL;
    }
    return sample;
}

/* u->checkpoint: a resnet (x, temb) or a transformer (x, ehs) as one ag_checkpoint unit */
static enum status resnet_fn(void *ctx, struct tensor *const *in, struct tensor **out)
{
    out[0] = resnet_forward(ctx, in[0], in[1]);
    return out[0] ? STATUS_OK : tensor_status();
}

static enum status transformer_fn(void *ctx, struct tensor *const *in, struct tensor **out)
{
    out[0] = transformer2d_forward(ctx, in[0], in[1]);
    return out[0] ? STATUS_OK : tensor_status();
}

static struct tensor *unit(const struct sd_unet *u, ag_checkpoint_fn fn, const void *mod, struct tensor *x,
                           struct tensor *aux)
{
    if (!x || !aux) return NULL;
    struct tensor *in[2] = {x, aux}, *out = NULL;
    if (!u->checkpoint || !ag_grad_enabled()) return fn((void *)mod, in, &out) ? NULL : out;   /* nothing to keep */
    return ag_checkpoint(fn, (void *)mod, 2, in, 1, &out) ? NULL : out;
}

static struct tensor *block_forward(const struct sd_unet *u, const struct sd_unet_block *b, int j, struct tensor *h,
                                    struct tensor *temb, struct tensor *ehs)
{
    h = unit(u, resnet_fn, &b->resnets[j], h, temb);
    if (b->attentions) h = unit(u, transformer_fn, &b->attentions[j], h, ehs);
    return h;
}

/* SDXL: add_embedding([text_embeds, add_time_proj(time_ids) as a row]) (diffusers' "text_time"
 * branch); NULL with a message on a missing or mis-shaped input */
static struct tensor *added_embedding(struct sd_unet *u, const struct sd_unet_added *a, int64_t B, enum dtype dt,
                                      enum device dev)
{
    char s1[96], s2[96];
    if (!a || !a->text_embeds || !a->time_ids) {
        tensor_fail(STATUS_VALUE, "sd_unet_forward: this UNet (addition_embed_type \"text_time\", SDXL) needs text_embeds "
                                  "and time_ids (sd_unet_forward_added)");
        return NULL;
    }
    const struct tensor *te = a->text_embeds, *ti = a->time_ids;
    const int64_t K = ti->ndim == 2 ? ti->shape[1] : 0, D = te->ndim == 2 ? te->shape[1] : 0;
    if (te->ndim != 2 || te->shape[0] != B || ti->ndim != 2 || ti->shape[0] != B || K < 1 ||
        D + K * u->add_time_dim != u->add_in_dim) {
        tensor_fail(STATUS_SHAPE, "sd_unet_forward: text_embeds %s and time_ids %s must be [%lld, D] and [%lld, K] with "
                                  "D + K x %lld = %lld",
                    tensor_shape_str(te, s1, sizeof s1), tensor_shape_str(ti, s2, sizeof s2), (long long)B, (long long)B,
                    (long long)u->add_time_dim, (long long)u->add_in_dim);
        return NULL;
    }
    if (te->dtype != dt || tensor_device(te) != dev) {
        tensor_fail(STATUS_VALUE, "sd_unet_forward: text_embeds must be %s on the sample's device", dtype_name(dt));
        return NULL;
    }
    struct tensor *tf = sd_timestep_features(tensor_reshape(a->time_ids, 1, (int64_t[]){B * K}), u->add_time_dim,
                                             u->flip_sin_to_cos, u->freq_shift);
    if (tf) tf = tensor_to_device(tensor_to_dtype(tensor_reshape(tf, 2, (int64_t[]){B, K * u->add_time_dim}), dt), dev);
    struct tensor *cat[2] = {a->text_embeds, tf};
    return nn_linear_forward(&u->add_linear_2, ag_silu(nn_linear_forward(&u->add_linear_1, tf ? ag_concat(2, cat, 1) : NULL)));
}

struct tensor *sd_unet_forward(struct sd_unet *u, struct tensor *sample, struct tensor *timesteps,
                               struct tensor *encoder_hidden_states)
{
    return sd_unet_forward_added(u, sample, timesteps, encoder_hidden_states, NULL);
}

struct tensor *sd_unet_forward_added(struct sd_unet *u, struct tensor *sample, struct tensor *timesteps,
                                     struct tensor *encoder_hidden_states, const struct sd_unet_added *added)
{
    if (!sample || !timesteps || !encoder_hidden_states) return NULL;
    if (!check_inputs(u, sample, timesteps, encoder_hidden_states)) return NULL;
    tensor_scope_begin();
    const int64_t B = sample->shape[0];
    const enum dtype dt = sample->dtype;
    const enum device dev = tensor_device(sample);
    struct tensor *ehs = encoder_hidden_states;

    /* 0. centre, 1. time: features (no gradient) -> linear_1 -> SiLU -> linear_2; every resnet applies SiLU first */
    struct tensor *x = u->center_input_sample ? ag_affine(sample, 2.0, -1.0) : sample;
    struct tensor *tf = sd_timestep_features(timesteps, u->time_proj_dim, u->flip_sin_to_cos, u->freq_shift);
    if (tf && tensor_numel(timesteps) == 1 && B != 1) tf = tensor_expand(tf, TENSOR_SHAPE(B, u->time_proj_dim));
    if (tf) tf = tensor_to_device(tensor_to_dtype(tf, dt), dev);
    struct tensor *emb = nn_linear_forward(&u->time_linear_2, ag_silu(nn_linear_forward(&u->time_linear_1, tf)));
    if (u->add_time_dim) {
        struct tensor *aug = added_embedding(u, added, B, dt, dev);
        if (!aug) return tensor_scope_return(NULL);
        emb = ag_add(emb, aug);
    }
    struct tensor *temb = ag_silu(emb);

    /* 2. conv_in, 3. down path: every resnet(+attention) output and every downsampler output is a skip */
    struct tensor *skips[1 + SD_UNET_MAX_BLOCKS * 17];   /* layers_per_block <= 16, + a downsampler */
    int n_skips = 0;
    x = nn_conv2d_forward(&u->conv_in, x);
    skips[n_skips++] = x;
    for (int i = 0; i < u->n_blocks; i++) {
        const struct sd_unet_block *b = &u->down[i];
        for (int j = 0; j < b->n_layers; j++) skips[n_skips++] = x = block_forward(u, b, j, x, temb, ehs);
        if (b->has_sampler) skips[n_skips++] = x = nn_conv2d_forward(&b->sampler, x);
    }

    /* 4. mid: resnet, attention, resnet */
    x = unit(u, resnet_fn, &u->mid.resnets[0], x, temb);
    x = unit(u, transformer_fn, &u->mid.attentions[0], x, ehs);
    x = unit(u, resnet_fn, &u->mid.resnets[1], x, temb);

    /* 5. up path: concat [h, the latest skip] on channels before each resnet */
    for (int i = 0; i < u->n_blocks; i++) {
        const struct sd_unet_block *b = &u->up[i];
        for (int j = 0; j < b->n_layers; j++) {
            if (n_skips == 0) {
                tensor_fail(STATUS_INTERNAL, "sd_unet_forward: skip stack exhausted at up_blocks.%d.resnets.%d", i, j);
                return tensor_scope_return(NULL);
            }
            struct tensor *cat[2] = {x, skips[--n_skips]};
            x = block_forward(u, b, j, ag_concat(2, cat, 1), temb, ehs);
        }
        if (b->has_sampler) x = nn_conv2d_forward(&b->sampler, ag_upsample_nearest2x(x));
    }

    /* 6. conv_norm_out -> SiLU -> conv_out */
    x = nn_conv2d_forward(&u->conv_out, ag_silu(nn_group_norm_forward(&u->conv_norm_out, x)));
    return tensor_scope_return(x);
}
