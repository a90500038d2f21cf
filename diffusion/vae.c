/* vae.c — AutoencoderKL (diffusers autoencoders/autoencoder_kl.py, autoencoders/vae.py,
 * unets/unet_2d_blocks.py, resnet.py, attention_processor.py). Every forward is built from
 * ag_ ops inside its own tensor scope, so only what the backward saved outlives a block. */
#include "diffusion/vae.h"

#include <stdio.h>
#include <string.h>

/* ---------------------------------------------------------------- config */

enum status sd_vae_config_read(struct sd_vae_config *cfg, struct nn_config *c)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->in_channels = (int)nn_config_int(c, "in_channels", 3);
    cfg->out_channels = (int)nn_config_int(c, "out_channels", 3);
    cfg->latent_channels = (int)nn_config_int(c, "latent_channels", 4);
    cfg->layers_per_block = (int)nn_config_int(c, "layers_per_block", 1);
    cfg->norm_num_groups = (int)nn_config_int(c, "norm_num_groups", 32);
    cfg->sample_size = (int)nn_config_int(c, "sample_size", 32);
    cfg->scaling_factor = nn_config_double(c, "scaling_factor", 0.18215);
    cfg->shift_factor = nn_config_double(c, "shift_factor", 0.0);
    cfg->use_quant_conv = nn_config_bool(c, "use_quant_conv", true);
    cfg->use_post_quant_conv = nn_config_bool(c, "use_post_quant_conv", true);
    cfg->mid_block_add_attention = nn_config_bool(c, "mid_block_add_attention", true);
    cfg->norm_eps = 1e-6;

    long long boc[SD_VAE_MAX_BLOCKS];
    int nb = 1;
    boc[0] = 64;   /* diffusers default (64,) */
    if (nn_config_has(c, "block_out_channels")) nb = nn_config_int_array(c, "block_out_channels", boc, SD_VAE_MAX_BLOCKS, false);
    char act[32];
    nn_config_string(c, "act_fn", "silu", act, sizeof act);
    char down[SD_VAE_MAX_BLOCKS][64], up[SD_VAE_MAX_BLOCKS][64];
    int nd = 1, nu = 1;
    strcpy(down[0], "DownEncoderBlock2D");
    strcpy(up[0], "UpDecoderBlock2D");
    if (nn_config_has(c, "down_block_types")) nd = nn_config_string_array(c, "down_block_types", down, SD_VAE_MAX_BLOCKS);
    if (nn_config_has(c, "up_block_types")) nu = nn_config_string_array(c, "up_block_types", up, SD_VAE_MAX_BLOCKS);
    /* accepted, not used: the dtype policy and the latent statistics of other VAEs */
    static const char *const ignored[] = {"force_upcast", "latents_mean", "latents_std"};
    nn_config_ignore(c, ignored, 3);
    enum status s = nn_config_finish(c);
    if (s) return s;

    if (nb < 1) return tensor_fail(STATUS_VALUE, "%s: block_out_channels must list 1 to %d channel counts", c->path, SD_VAE_MAX_BLOCKS);
    if (strcmp(act, "silu") && strcmp(act, "swish"))
        return tensor_fail(STATUS_VALUE, "%s: act_fn '%s' is not supported (the SD VAE uses 'silu')", c->path, act);
    if (nd != nb || nu != nb)
        return tensor_fail(STATUS_VALUE, "%s: %d down_block_types and %d up_block_types for %d block_out_channels", c->path,
                           nd, nu, nb);
    for (int i = 0; i < nb; i++) {
        if (strcmp(down[i], "DownEncoderBlock2D"))
            return tensor_fail(STATUS_VALUE, "%s: down_block_types[%d] '%s' is not supported (only DownEncoderBlock2D)", c->path,
                               i, down[i]);
        if (strcmp(up[i], "UpDecoderBlock2D"))
            return tensor_fail(STATUS_VALUE, "%s: up_block_types[%d] '%s' is not supported (only UpDecoderBlock2D)", c->path, i,
                               up[i]);
    }
    cfg->n_blocks = nb;
    int g = cfg->norm_num_groups;
    for (int i = 0; i < nb; i++) {
        cfg->block_out_channels[i] = boc[i];
        if (boc[i] <= 0 || g <= 0 || boc[i] % g)
            return tensor_fail(STATUS_VALUE, "%s: block_out_channels[%d] = %lld does not split into norm_num_groups = %d",
                               c->path, i, boc[i], g);
    }
    if (cfg->in_channels <= 0 || cfg->out_channels <= 0 || cfg->latent_channels <= 0)
        return tensor_fail(STATUS_VALUE, "%s: in_channels, out_channels and latent_channels must be positive (got %d, %d, %d)",
                           c->path, cfg->in_channels, cfg->out_channels, cfg->latent_channels);
    if (cfg->layers_per_block < 1 || cfg->layers_per_block > SD_VAE_MAX_LAYERS)
        return tensor_fail(STATUS_VALUE, "%s: layers_per_block = %d (supported: 1 to %d)", c->path, cfg->layers_per_block,
                           SD_VAE_MAX_LAYERS);
    return STATUS_OK;
}

enum status sd_vae_config_load(struct sd_vae_config *cfg, const char *path)
{
    struct nn_config c;
    enum status s = nn_config_load(&c, path);
    if (!s) s = sd_vae_config_read(cfg, &c);
    nn_config_free(&c);
    return s;
}

/* ---------------------------------------------------------------- parameters */

static enum status resnet_init(struct sd_vae_resnet *r, struct nn_params *ps, const char *prefix, int64_t in, int64_t out,
                               const struct sd_vae_config *cfg)
{
    char p[256];
    enum status s;
    memset(r, 0, sizeof *r);
    if ((s = nn_group_norm_init(&r->norm1, ps, nn_name(p, sizeof p, prefix, "norm1"), cfg->norm_num_groups, in, cfg->norm_eps)) ||
        (s = nn_conv2d_init(&r->conv1, ps, nn_name(p, sizeof p, prefix, "conv1"), in, out, 3, 1, 1, true)) ||
        (s = nn_group_norm_init(&r->norm2, ps, nn_name(p, sizeof p, prefix, "norm2"), cfg->norm_num_groups, out, cfg->norm_eps)) ||
        (s = nn_conv2d_init(&r->conv2, ps, nn_name(p, sizeof p, prefix, "conv2"), out, out, 3, 1, 1, true)))
        return s;
    r->has_shortcut = in != out;
    if (r->has_shortcut) return nn_conv2d_init(&r->conv_shortcut, ps, nn_name(p, sizeof p, prefix, "conv_shortcut"), in, out, 1, 1, 0, true);
    return STATUS_OK;
}

static enum status attention_init(struct sd_vae_attention *a, struct nn_params *ps, const char *prefix, int64_t ch,
                                  const struct sd_vae_config *cfg)
{
    char p[256];
    enum status s;
    if ((s = nn_group_norm_init(&a->group_norm, ps, nn_name(p, sizeof p, prefix, "group_norm"), cfg->norm_num_groups, ch,
                                cfg->norm_eps)) ||
        (s = nn_linear_init(&a->to_q, ps, nn_name(p, sizeof p, prefix, "to_q"), ch, ch, true)) ||
        (s = nn_linear_init(&a->to_k, ps, nn_name(p, sizeof p, prefix, "to_k"), ch, ch, true)) ||
        (s = nn_linear_init(&a->to_v, ps, nn_name(p, sizeof p, prefix, "to_v"), ch, ch, true)))
        return s;
    return nn_linear_init(&a->to_out, ps, nn_name(p, sizeof p, prefix, "to_out.0"), ch, ch, true);
}

static enum status mid_block_init(struct sd_vae_mid_block *m, struct nn_params *ps, const char *prefix, int64_t ch,
                                  const struct sd_vae_config *cfg)
{
    char p[256];
    enum status s;
    m->has_attention = cfg->mid_block_add_attention;
    if (m->has_attention && (s = attention_init(&m->attention, ps, nn_name(p, sizeof p, prefix, "attentions.0"), ch, cfg)))
        return s;
    for (int i = 0; i < 2; i++) {
        char q[64];
        snprintf(q, sizeof q, "resnets.%d", i);
        if ((s = resnet_init(&m->resnets[i], ps, nn_name(p, sizeof p, prefix, q), ch, ch, cfg))) return s;
    }
    return STATUS_OK;
}

static enum status block_init(struct sd_vae_block *b, struct nn_params *ps, const char *prefix, int n_resnets, int64_t in,
                              int64_t out, bool sampler, bool down, const struct sd_vae_config *cfg)
{
    char p[256], q[64];
    enum status s;
    b->n_resnets = n_resnets;
    for (int j = 0; j < n_resnets; j++) {
        snprintf(q, sizeof q, "resnets.%d", j);
        if ((s = resnet_init(&b->resnets[j], ps, nn_name(p, sizeof p, prefix, q), j == 0 ? in : out, out, cfg))) return s;
    }
    b->has_sampler = sampler;
    b->down = down;
    if (!sampler) return STATUS_OK;
    if (down) {
        /* Downsample2D with padding=0: F.pad(x, (0,1,0,1)) then conv 3x3 stride 2 */
        if ((s = nn_conv2d_init(&b->sampler, ps, nn_name(p, sizeof p, prefix, "downsamplers.0.conv"), out, out, 3, 2, 0, true)))
            return s;
        b->sampler.p.pad_bottom = b->sampler.p.pad_right = 1;
        return STATUS_OK;
    }
    return nn_conv2d_init(&b->sampler, ps, nn_name(p, sizeof p, prefix, "upsamplers.0.conv"), out, out, 3, 1, 1, true);
}

enum status sd_vae_init_config(struct sd_vae *vae, const struct sd_vae_config *cfg, struct nn_params *ps)
{
    memset(vae, 0, sizeof *vae);
    vae->cfg = *cfg;
    vae->params = ps;
    const int nb = cfg->n_blocks, lpb = cfg->layers_per_block;
    const int64_t *boc = cfg->block_out_channels, top = boc[nb - 1];
    const int64_t z2 = 2 * (int64_t)cfg->latent_channels;
    char p[256];
    enum status s;

    /* Encoder */
    struct sd_vae_encoder *e = &vae->encoder;
    if ((s = nn_conv2d_init(&e->conv_in, ps, "encoder.conv_in", cfg->in_channels, boc[0], 3, 1, 1, true))) return s;
    for (int i = 0; i < nb; i++) {
        snprintf(p, sizeof p, "encoder.down_blocks.%d", i);
        if ((s = block_init(&e->down_blocks[i], ps, p, lpb, i ? boc[i - 1] : boc[0], boc[i], i < nb - 1, true, cfg))) return s;
    }
    if ((s = mid_block_init(&e->mid_block, ps, "encoder.mid_block", top, cfg)) ||
        (s = nn_group_norm_init(&e->conv_norm_out, ps, "encoder.conv_norm_out", cfg->norm_num_groups, top, cfg->norm_eps)) ||
        (s = nn_conv2d_init(&e->conv_out, ps, "encoder.conv_out", top, z2, 3, 1, 1, true)))
        return s;

    /* Decoder: up blocks walk the channels in reverse */
    struct sd_vae_decoder *d = &vae->decoder;
    if ((s = nn_conv2d_init(&d->conv_in, ps, "decoder.conv_in", cfg->latent_channels, top, 3, 1, 1, true)) ||
        (s = mid_block_init(&d->mid_block, ps, "decoder.mid_block", top, cfg)))
        return s;
    int64_t prev = top;
    for (int i = 0; i < nb; i++) {
        int64_t out = boc[nb - 1 - i];
        snprintf(p, sizeof p, "decoder.up_blocks.%d", i);
        if ((s = block_init(&d->up_blocks[i], ps, p, lpb + 1, prev, out, i < nb - 1, false, cfg))) return s;
        prev = out;
    }
    if ((s = nn_group_norm_init(&d->conv_norm_out, ps, "decoder.conv_norm_out", cfg->norm_num_groups, boc[0], cfg->norm_eps)) ||
        (s = nn_conv2d_init(&d->conv_out, ps, "decoder.conv_out", boc[0], cfg->out_channels, 3, 1, 1, true)))
        return s;

    if (cfg->use_quant_conv && (s = nn_conv2d_init(&vae->quant_conv, ps, "quant_conv", z2, z2, 1, 1, 0, true))) return s;
    if (cfg->use_post_quant_conv &&
        (s = nn_conv2d_init(&vae->post_quant_conv, ps, "post_quant_conv", cfg->latent_channels, cfg->latent_channels, 1, 1, 0, true)))
        return s;
    return STATUS_OK;
}

enum status sd_vae_init(struct sd_vae *vae, const char *config_path, struct nn_params *ps)
{
    struct sd_vae_config cfg;
    memset(vae, 0, sizeof *vae);
    enum status s = sd_vae_config_load(&cfg, config_path);
    return s ? s : sd_vae_init_config(vae, &cfg, ps);
}

/* ---------------------------------------------------------------- loading */

/* the attention spelling of diffusers 0.2.x files (AttentionBlock), renamed at load time by
 * diffusers' _fix_state_dict_keys_on_load */
static const char *const attn_new[4] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
static const char *const attn_old[4] = {".query.", ".key.", ".value.", ".proj_attn."};

/* rewrite `name` from one spelling to the other into buf; false if it has none of them */
static bool attn_rename(const char *name, const char *const *from, const char *const *to, char *buf, size_t n)
{
    if (!strstr(name, "mid_block.attentions.")) return false;
    for (int i = 0; i < 4; i++) {
        const char *at = strstr(name, from[i]);
        if (!at) continue;
        snprintf(buf, n, "%.*s%s%s", (int)(at - name), name, to[i], at + strlen(from[i]));
        return true;
    }
    return false;
}

enum status sd_vae_load(struct sd_vae *vae, const struct safetensors *st, const char *key_prefix)
{
    const struct nn_params *ps = vae->params;
    const char *pre = key_prefix ? key_prefix : "";
    char key[600], alt[600], old[600];
    for (int i = 0; i < ps->n; i++) {
        snprintf(key, sizeof key, "%s%s", pre, ps->v[i].name);
        const char *use = key;
        if (!safetensors_find(st, key)) {
            if (attn_rename(ps->v[i].name, attn_new, attn_old, old, sizeof old)) {
                snprintf(alt, sizeof alt, "%s%s", pre, old);
                if (safetensors_find(st, alt)) use = alt;
            }
            if (use == key)
                return tensor_fail(STATUS_FORMAT, "%s: missing tensor '%s' (the VAE expects it)", st->path, key);
        }
        enum status s = safetensors_load_into(st, use, ps->v[i].t);
        if (s) return s;
    }
    size_t pl = strlen(pre);
    for (int j = 0; j < st->n; j++) {
        const char *k = st->entries[j].name;
        if (pl && strncmp(k, pre, pl)) continue;
        const char *name = k + pl;
        if (nn_param_find(ps, name)) continue;
        if (attn_rename(name, attn_old, attn_new, alt, sizeof alt) && nn_param_find(ps, alt)) continue;
        return tensor_fail(STATUS_FORMAT, "%s: unexpected tensor '%s' (the VAE has no such parameter)", st->path, k);
    }
    return STATUS_OK;
}

enum status sd_vae_load_file(struct sd_vae *vae, const char *path)
{
    struct safetensors *st = safetensors_open(path);
    if (!st) return tensor_status();
    enum status s = sd_vae_load(vae, st, "");
    safetensors_close(st);
    return s;
}

/* ---------------------------------------------------------------- forward */

/* Each unit below (a resnet, the attention, a resampler, the output head) is an
 * ag_checkpoint_fn whose context is its module, so vae->checkpoint can rerun it in the
 * backward instead of keeping its activations. The input is never NULL (step checks). */

static enum status resnet_fn(void *ctx, struct tensor *const *in, struct tensor **out)
{
    const struct sd_vae_resnet *r = ctx;
    struct tensor *x = in[0];
    tensor_scope_begin();
    struct tensor *h = nn_conv2d_forward(&r->conv1, ag_silu(nn_group_norm_forward(&r->norm1, x)));
    h = nn_conv2d_forward(&r->conv2, ag_silu(nn_group_norm_forward(&r->norm2, h)));   /* dropout 0 */
    struct tensor *sc = r->has_shortcut ? nn_conv2d_forward(&r->conv_shortcut, x) : x;
    out[0] = tensor_scope_return(ag_add(sc, h));   /* output_scale_factor 1 */
    return out[0] ? STATUS_OK : tensor_status();
}

/* x [B,C,H,W] -> x + to_out(attention(q, k, v)) with one head of width C over the H*W
 * positions (scale 1/sqrt(C)); the GroupNorm acts on the [B,C,H,W] input as diffusers' does */
static enum status attention_fn(void *ctx, struct tensor *const *in, struct tensor **out)
{
    const struct sd_vae_attention *a = ctx;
    struct tensor *x = in[0];
    const int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    tensor_scope_begin();
    struct tensor *h = nn_group_norm_forward(&a->group_norm, x);
    h = ag_transpose(ag_reshape(h, TENSOR_SHAPE(B, C, H * W)), 1, 2);   /* [B,HW,C] view */
    struct tensor *q = ag_unsqueeze(nn_linear_forward(&a->to_q, h), 1);   /* [B,1,HW,C] */
    struct tensor *k = ag_unsqueeze(nn_linear_forward(&a->to_k, h), 1);
    struct tensor *v = ag_unsqueeze(nn_linear_forward(&a->to_v, h), 1);
    struct tensor *o = ag_squeeze(ag_attention(q, k, v, 0.0, false), 1);
    o = nn_linear_forward(&a->to_out, o);   /* [B,HW,C]; dropout 0 */
    o = ag_reshape(ag_transpose(o, 1, 2), TENSOR_SHAPE(B, C, H, W));
    out[0] = tensor_scope_return(ag_add(o, x));   /* residual_connection, rescale 1 */
    return out[0] ? STATUS_OK : tensor_status();
}

/* Downsample2D (the conv carries the (0,1,0,1) padding) or Upsample2D (nearest x2, conv) */
static enum status sampler_fn(void *ctx, struct tensor *const *in, struct tensor **out)
{
    const struct sd_vae_block *b = ctx;
    tensor_scope_begin();
    out[0] = tensor_scope_return(nn_conv2d_forward(&b->sampler, b->down ? in[0] : ag_upsample_nearest2x(in[0])));
    return out[0] ? STATUS_OK : tensor_status();
}

/* conv_out(SiLU(conv_norm_out(x))), the last layers of the encoder and of the decoder */
static struct tensor *head_forward(const struct nn_group_norm *norm, const struct nn_conv2d *conv, struct tensor *x)
{
    tensor_scope_begin();
    return tensor_scope_return(nn_conv2d_forward(conv, ag_silu(nn_group_norm_forward(norm, x))));
}

static enum status encoder_head_fn(void *ctx, struct tensor *const *in, struct tensor **out)
{
    const struct sd_vae_encoder *e = ctx;
    out[0] = head_forward(&e->conv_norm_out, &e->conv_out, in[0]);
    return out[0] ? STATUS_OK : tensor_status();
}

static enum status decoder_head_fn(void *ctx, struct tensor *const *in, struct tensor **out)
{
    const struct sd_vae_decoder *d = ctx;
    out[0] = head_forward(&d->conv_norm_out, &d->conv_out, in[0]);
    return out[0] ? STATUS_OK : tensor_status();
}

/* fn(x), consuming the reference x (the loop pattern): a stage's input is released as soon as
 * no graph node holds it. A scope around the whole decoder would instead keep every stage's
 * output until the end, gigabytes at 512x512 in a no-grad decode. */
static struct tensor *step(const struct sd_vae *vae, ag_checkpoint_fn fn, const void *mod, struct tensor *x)
{
    if (!x) return NULL;
    struct tensor *out[1] = {NULL};
    tensor_scope_begin();
    enum status s = vae->checkpoint ? ag_checkpoint(fn, (void *)mod, 1, &x, 1, out) : fn((void *)mod, &x, out);
    struct tensor *y = s ? NULL : tensor_keep(out[0]);
    tensor_scope_end();
    tensor_free(x);
    return y;
}

static struct tensor *mid_block_forward(const struct sd_vae *vae, const struct sd_vae_mid_block *m, struct tensor *x)
{
    x = step(vae, resnet_fn, &m->resnets[0], x);
    if (m->has_attention) x = step(vae, attention_fn, &m->attention, x);
    return step(vae, resnet_fn, &m->resnets[1], x);
}

static struct tensor *block_forward(const struct sd_vae *vae, const struct sd_vae_block *b, struct tensor *x)
{
    for (int j = 0; j < b->n_resnets; j++) x = step(vae, resnet_fn, &b->resnets[j], x);
    return b->has_sampler ? step(vae, sampler_fn, b, x) : x;
}

static enum status check_input(const char *op, const struct tensor *x, int channels, const char *what)
{
    char b[64];
    if (!x) return tensor_status() ? tensor_status() : tensor_fail(STATUS_VALUE, "%s: input is NULL", op);
    if (!dtype_is_float(x->dtype))
        return tensor_fail(STATUS_DTYPE, "%s: %s must be a float tensor (got %s)", op, what, dtype_name(x->dtype));
    if (x->ndim != 4 || x->shape[1] != channels || x->shape[0] < 1 || x->shape[2] < 1 || x->shape[3] < 1)
        return tensor_fail(STATUS_SHAPE, "%s: %s must be [B, %d, H, W] (got %s)", op, what, channels,
                           tensor_shape_str(x, b, sizeof b));
    return STATUS_OK;
}

struct tensor *sd_vae_decode(struct sd_vae *vae, struct tensor *latents)
{
    if (check_input("sd_vae_decode", latents, vae->cfg.latent_channels, "latents")) return NULL;
    const struct sd_vae_config *cfg = &vae->cfg;
    const struct sd_vae_decoder *d = &vae->decoder;
    tensor_scope_begin();
    struct tensor *z = cfg->use_post_quant_conv ? nn_conv2d_forward(&vae->post_quant_conv, latents) : latents;
    struct tensor *h = tensor_keep(nn_conv2d_forward(&d->conv_in, z));   /* owned from here on */
    h = mid_block_forward(vae, &d->mid_block, h);
    for (int i = 0; i < cfg->n_blocks; i++) h = block_forward(vae, &d->up_blocks[i], h);
    h = step(vae, decoder_head_fn, d, h);
    return tensor_scope_return(tensor_autorelease(h));
}

enum status sd_vae_encode(struct sd_vae *vae, struct tensor *image, struct tensor **mean, struct tensor **logvar)
{
    *mean = *logvar = NULL;
    enum status s = check_input("sd_vae_encode", image, vae->cfg.in_channels, "image");
    if (s) return s;
    const struct sd_vae_config *cfg = &vae->cfg;
    const struct sd_vae_encoder *e = &vae->encoder;
    tensor_scope_begin();
    struct tensor *h = tensor_keep(nn_conv2d_forward(&e->conv_in, image));   /* owned from here on */
    for (int i = 0; i < cfg->n_blocks; i++) h = block_forward(vae, &e->down_blocks[i], h);
    h = mid_block_forward(vae, &e->mid_block, h);
    h = tensor_autorelease(step(vae, encoder_head_fn, e, h));
    if (cfg->use_quant_conv) h = nn_conv2d_forward(&vae->quant_conv, h);
    struct tensor *parts[2] = {NULL, NULL};
    s = h ? ag_chunk(h, 1, 2, parts) : tensor_status();
    if (!s) {
        *mean = tensor_keep(parts[0]);
        *logvar = tensor_keep(ag_clamp(parts[1], -30.0, 20.0));
        if (!*logvar) s = tensor_status();
    }
    tensor_scope_end();
    if (s) {
        tensor_free(*mean);
        *mean = NULL;
        tensor_free(*logvar);
        *logvar = NULL;
        return s;
    }
    tensor_autorelease(*mean);
    tensor_autorelease(*logvar);
    return STATUS_OK;
}
