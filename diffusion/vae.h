/* vae.h — AutoencoderKL, the Stable Diffusion VAE (diffusers autoencoders/autoencoder_kl.py
 * and autoencoders/vae.py), built from its config.json.
 *
 * Parameters carry the diffusers names ("decoder.up_blocks.0.resnets.1.conv2.weight"), so the
 * diffusers safetensors file loads by name; sd_vae_load also accepts the older attention
 * spelling (query/key/value/proj_attn) some files (diffusers 0.2.x) store.
 *
 *   decode: z [B,L,h,w] -> post_quant_conv -> Decoder -> image [B,3,8h,8w] (raw, about [-1,1])
 *   encode: image [B,3,H,W] -> Encoder -> quant_conv -> mean, logvar [B,L,H/8,W/8]
 *
 * Both are built from ag_ ops, so every parameter and input gets its gradient by
 * ag_backward. The pipeline's scaling (latents / scaling_factor before decode, mean *
 * scaling_factor after encode) is the caller's: cfg.scaling_factor holds the value.
 */
#ifndef DIFFUSION_VAE_H
#define DIFFUSION_VAE_H

#include "nn/config.h"
#include "nn/module.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SD_VAE_MAX_BLOCKS 8
#define SD_VAE_MAX_LAYERS 8   /* layers_per_block; decoder blocks hold one more resnet */

struct sd_vae_config {
    int in_channels, out_channels, latent_channels;
    int n_blocks;                                   /* len(block_out_channels) */
    int64_t block_out_channels[SD_VAE_MAX_BLOCKS];
    int layers_per_block;
    int norm_num_groups;
    double norm_eps;                                /* 1e-6: fixed in diffusers' VAE */
    double scaling_factor;                          /* 0.18215 for SD 1.x */
    double shift_factor;                            /* 0 unless the config says (SD3/Flux VAEs) */
    int sample_size;
    bool use_quant_conv, use_post_quant_conv, mid_block_add_attention;
};

/* ResnetBlock2D without a time embedding: conv2(SiLU(GN2(conv1(SiLU(GN1(x)))))) + shortcut(x) */
struct sd_vae_resnet {
    struct nn_group_norm norm1, norm2;
    struct nn_conv2d conv1, conv2;
    struct nn_conv2d conv_shortcut;   /* 1x1, only when in != out channels */
    bool has_shortcut;
};

/* diffusers Attention as the VAE uses it: one head of width C, GroupNorm on the input, biases
 * on q/k/v/out, residual connection */
struct sd_vae_attention {
    struct nn_group_norm group_norm;
    struct nn_linear to_q, to_k, to_v, to_out;   /* to_out = "to_out.0" */
};

/* UNetMidBlock2D: resnet, attention, resnet */
struct sd_vae_mid_block {
    struct sd_vae_resnet resnets[2];
    struct sd_vae_attention attention;
    bool has_attention;
};

/* DownEncoderBlock2D (resnets + Downsample2D: pad right/bottom by 1, conv 3x3 stride 2) or
 * UpDecoderBlock2D (resnets + Upsample2D: nearest x2, conv 3x3 pad 1) */
struct sd_vae_block {
    struct sd_vae_resnet resnets[SD_VAE_MAX_LAYERS + 1];
    int n_resnets;
    struct nn_conv2d sampler;   /* downsamplers.0.conv / upsamplers.0.conv */
    bool has_sampler, down;
};

struct sd_vae_encoder {
    struct nn_conv2d conv_in;
    struct sd_vae_block down_blocks[SD_VAE_MAX_BLOCKS];
    struct sd_vae_mid_block mid_block;
    struct nn_group_norm conv_norm_out;
    struct nn_conv2d conv_out;   /* -> 2 * latent_channels (mean, logvar) */
};

struct sd_vae_decoder {
    struct nn_conv2d conv_in;
    struct sd_vae_mid_block mid_block;
    struct sd_vae_block up_blocks[SD_VAE_MAX_BLOCKS];
    struct nn_group_norm conv_norm_out;
    struct nn_conv2d conv_out;
};

struct sd_vae {
    struct sd_vae_config cfg;
    struct nn_params *params;   /* borrowed: the store the parameters were created in */
    struct sd_vae_encoder encoder;
    struct sd_vae_decoder decoder;
    struct nn_conv2d quant_conv, post_quant_conv;   /* 1x1; absent when the config disables them */
    /* recompute each resnet, attention, resampler and output head in the backward instead
     * of keeping its activations (ag_checkpoint): the same values and gradients, and only
     * each unit's input stays alive between forward and backward. The module pointers are
     * the checkpoints' context, so the struct must not move before the backward. */
    bool checkpoint;
};

/* read an AutoencoderKL config.json (rejects unknown keys, unsupported block types and
 * activation functions) */
enum status sd_vae_config_read(struct sd_vae_config *cfg, struct nn_config *c);
enum status sd_vae_config_load(struct sd_vae_config *cfg, const char *path);

/* create every parameter (zeros, in ps's dtype and device) under its diffusers name */
enum status sd_vae_init_config(struct sd_vae *vae, const struct sd_vae_config *cfg, struct nn_params *ps);
/* the same, reading the config from a config.json path */
enum status sd_vae_init(struct sd_vae *vae, const char *config_path, struct nn_params *ps);

/* Load every parameter from a diffusers VAE safetensors file (keys `key_prefix` + name).
 * The mid-block attentions may be spelled query/key/value/proj_attn instead of
 * to_q/to_k/to_v/to_out.0. Missing, unexpected and mis-shaped tensors are errors. */
enum status sd_vae_load(struct sd_vae *vae, const struct safetensors *st, const char *key_prefix);
/* open a safetensors file (e.g. vae/diffusion_pytorch_model.safetensors) and sd_vae_load it */
enum status sd_vae_load_file(struct sd_vae *vae, const char *path);

/* latents [B, latent_channels, h, w], already divided by cfg.scaling_factor -> image
 * [B, out_channels, h * 2^(n_blocks-1), w * 2^(n_blocks-1)], not clamped */
struct tensor *sd_vae_decode(struct sd_vae *vae, struct tensor *latents);
/* image [B, in_channels, H, W] (values in [-1, 1]) -> the posterior's mean and logvar (clamped
 * to [-30, 20] as DiagonalGaussianDistribution does), both [B, latent_channels, H/f, W/f];
 * new references in *mean and *logvar (NULL on error) */
enum status sd_vae_encode(struct sd_vae *vae, struct tensor *image, struct tensor **mean, struct tensor **logvar);

#ifdef __cplusplus
}
#endif

#endif
