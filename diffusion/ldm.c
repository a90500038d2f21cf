/* ldm.c — diffusers names -> the original LDM single-file keys (see ldm.h). */
#include "diffusion/ldm.h"

#include <stdio.h>
#include <string.h>

static bool put(char *key, size_t n, const char *prefix, const char *a, const char *b)
{
    int w = snprintf(key, n, "%s%s%s", prefix, a, b);
    return w > 0 && (size_t)w < n;
}

/* ResnetBlock2D internals: diffusers -> LDM ResBlock */
static const char *unet_resnet_part(const char *rest)
{
    static const char *const map[][2] = {
        {"norm1.", "in_layers.0."},  {"conv1.", "in_layers.2."},  {"time_emb_proj.", "emb_layers.1."},
        {"norm2.", "out_layers.0."}, {"conv2.", "out_layers.3."}, {"conv_shortcut.", "skip_connection."},
    };
    static char buf[256];
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        size_t l = strlen(map[i][0]);
        if (!strncmp(rest, map[i][0], l)) {
            snprintf(buf, sizeof buf, "%s%s", map[i][1], rest + l);
            return buf;
        }
    }
    return NULL;
}

/* LDM input_blocks index of down block i, layer j (the downsampler: j = n_layers) */
static int input_index(const struct sd_unet *u, int i, int j)
{
    int idx = 1;   /* input_blocks.0 is conv_in */
    for (int b = 0; b < i; b++) idx += u->down[b].n_layers + (u->down[b].has_sampler ? 1 : 0);
    return idx + j;
}

static int output_index(const struct sd_unet *u, int i, int j)
{
    int idx = 0;
    for (int b = 0; b < i; b++) idx += u->up[b].n_layers;
    return idx + j;
}

bool sd_ldm_unet_key(void *ctx, const char *name, char *key, size_t n)
{
    const struct sd_unet *u = ctx;
    const char *P = SD_LDM_UNET_PREFIX;
    char rest[256], part[320];
    int i, j, off = 0;
    static const char *const fixed[][2] = {
        {"conv_in.", "input_blocks.0.0."},      {"time_embedding.linear_1.", "time_embed.0."},
        {"time_embedding.linear_2.", "time_embed.2."}, {"conv_norm_out.", "out.0."},
        {"conv_out.", "out.2."},
        {"add_embedding.linear_1.", "label_emb.0.0."},   {"add_embedding.linear_2.", "label_emb.0.2."},   /* SDXL */
    };
    for (size_t k = 0; k < sizeof fixed / sizeof fixed[0]; k++) {
        size_t l = strlen(fixed[k][0]);
        if (!strncmp(name, fixed[k][0], l)) return put(key, n, P, fixed[k][1], name + l);
    }
    if (sscanf(name, "down_blocks.%d.resnets.%d.%n", &i, &j, &off) == 2 && off) {
        if (i < 0 || i >= u->n_blocks || j < 0 || j >= u->down[i].n_layers) return false;
        const char *r = unet_resnet_part(name + off);
        if (!r) return false;
        snprintf(part, sizeof part, "input_blocks.%d.0.", input_index(u, i, j));
        return put(key, n, P, part, r);
    }
    off = 0;
    if (sscanf(name, "down_blocks.%d.attentions.%d.%n", &i, &j, &off) == 2 && off) {
        if (i < 0 || i >= u->n_blocks || j < 0 || j >= u->down[i].n_layers) return false;
        snprintf(part, sizeof part, "input_blocks.%d.1.", input_index(u, i, j));
        return put(key, n, P, part, name + off);
    }
    off = 0;
    if (sscanf(name, "down_blocks.%d.downsamplers.0.conv.%n", &i, &off) == 1 && off) {
        if (i < 0 || i >= u->n_blocks) return false;
        snprintf(part, sizeof part, "input_blocks.%d.0.op.", input_index(u, i, u->down[i].n_layers));
        return put(key, n, P, part, name + off);
    }
    off = 0;
    if (sscanf(name, "mid_block.resnets.%d.%n", &j, &off) == 1 && off) {
        const char *r = unet_resnet_part(name + off);
        if (!r || j < 0 || j > 1) return false;
        snprintf(part, sizeof part, "middle_block.%d.", 2 * j);
        return put(key, n, P, part, r);
    }
    off = 0;
    if (sscanf(name, "mid_block.attentions.0.%n", &off) == 0 && off) return put(key, n, P, "middle_block.1.", name + off);
    off = 0;
    if (sscanf(name, "up_blocks.%d.resnets.%d.%n", &i, &j, &off) == 2 && off) {
        if (i < 0 || i >= u->n_blocks || j < 0 || j >= u->up[i].n_layers) return false;
        const char *r = unet_resnet_part(name + off);
        if (!r) return false;
        snprintf(part, sizeof part, "output_blocks.%d.0.", output_index(u, i, j));
        return put(key, n, P, part, r);
    }
    off = 0;
    if (sscanf(name, "up_blocks.%d.attentions.%d.%n", &i, &j, &off) == 2 && off) {
        if (i < 0 || i >= u->n_blocks || j < 0 || j >= u->up[i].n_layers) return false;
        snprintf(part, sizeof part, "output_blocks.%d.1.", output_index(u, i, j));
        return put(key, n, P, part, name + off);
    }
    off = 0;
    if (sscanf(name, "up_blocks.%d.upsamplers.0.conv.%n", &i, &off) == 1 && off) {
        if (i < 0 || i >= u->n_blocks) return false;
        /* the upsampler sits in the block's last output block, after its resnet (and attention) */
        snprintf(part, sizeof part, "output_blocks.%d.%d.conv.", output_index(u, i, u->up[i].n_layers - 1),
                 u->up[i].attentions ? 2 : 1);
        return put(key, n, P, part, name + off);
    }
    (void)rest;
    return false;
}

bool sd_ldm_vae_key(void *ctx, const char *name, char *key, size_t n)
{
    const struct sd_vae *vae = ctx;
    const char *P = SD_LDM_VAE_PREFIX;
    char part[320];
    const char *side = !strncmp(name, "encoder.", 8) ? "encoder." : !strncmp(name, "decoder.", 8) ? "decoder." : NULL;
    if (!side) {   /* quant_conv, post_quant_conv */
        return (!strncmp(name, "quant_conv.", 11) || !strncmp(name, "post_quant_conv.", 16)) && put(key, n, P, name, "");
    }
    const char *s = name + 8;
    int i, j, off = 0;
    char tail[256];
    /* resnet internals are the same but the shortcut */
    if (sscanf(s, "down_blocks.%d.resnets.%d.%n", &i, &j, &off) == 2 && off) {
        snprintf(part, sizeof part, "%sdown.%d.block.%d.", side, i, j);
    } else if ((off = 0, sscanf(s, "down_blocks.%d.downsamplers.0.conv.%n", &i, &off) == 1 && off)) {
        snprintf(part, sizeof part, "%sdown.%d.downsample.conv.", side, i);
    } else if ((off = 0, sscanf(s, "up_blocks.%d.resnets.%d.%n", &i, &j, &off) == 2 && off)) {
        if (i < 0 || i >= vae->cfg.n_blocks) return false;
        snprintf(part, sizeof part, "%sup.%d.block.%d.", side, vae->cfg.n_blocks - 1 - i, j);
    } else if ((off = 0, sscanf(s, "up_blocks.%d.upsamplers.0.conv.%n", &i, &off) == 1 && off)) {
        if (i < 0 || i >= vae->cfg.n_blocks) return false;
        snprintf(part, sizeof part, "%sup.%d.upsample.conv.", side, vae->cfg.n_blocks - 1 - i);
    } else if ((off = 0, sscanf(s, "mid_block.resnets.%d.%n", &j, &off) == 1 && off)) {
        snprintf(part, sizeof part, "%smid.block_%d.", side, j + 1);
    } else if ((off = 0, sscanf(s, "mid_block.attentions.0.%n", &off) == 0 && off)) {
        static const char *const at[][2] = {
            {"group_norm.", "norm."}, {"to_q.", "q."}, {"to_k.", "k."}, {"to_v.", "v."}, {"to_out.0.", "proj_out."},
        };
        for (size_t k = 0; k < sizeof at / sizeof at[0]; k++) {
            size_t l = strlen(at[k][0]);
            if (!strncmp(s + off, at[k][0], l)) {
                snprintf(part, sizeof part, "%smid.attn_1.%s", side, at[k][1]);
                return put(key, n, P, part, s + off + l);
            }
        }
        return false;
    } else if (!strncmp(s, "conv_norm_out.", 14)) {
        snprintf(part, sizeof part, "%snorm_out.", side);
        return put(key, n, P, part, s + 14);
    } else if (!strncmp(s, "conv_in.", 8) || !strncmp(s, "conv_out.", 9)) {
        return put(key, n, P, name, "");
    } else {
        return false;
    }
    /* inside a resnet: conv_shortcut is nin_shortcut, the rest keeps its name */
    const char *r = s + off;
    if (!strncmp(r, "conv_shortcut.", 14)) {
        snprintf(tail, sizeof tail, "nin_shortcut.%s", r + 14);
        r = tail;
    }
    return put(key, n, P, part, r);
}

bool sd_ldm_text_key(void *unused, const char *name, char *key, size_t n)
{
    (void)unused;
    return put(key, n, SD_LDM_TEXT_PREFIX, name, "");
}

bool sd_ldm_xl_text_key(void *unused, const char *name, char *key, size_t n)
{
    (void)unused;
    return put(key, n, SD_LDM_XL_TEXT_PREFIX, name, "");
}
