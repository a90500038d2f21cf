/* unet.h — UNet2DConditionModel, the Stable Diffusion 1.x noise predictor (diffusers
 * `unets/unet_2d_condition.py` and the blocks it builds), built from its config.json.
 *
 * Parameters carry the diffusers checkpoint names ("down_blocks.0.attentions.1.
 * transformer_blocks.0.attn2.to_k.weight"), so nn_params_load binds
 * unet/diffusion_pytorch_model.safetensors directly. The forward is made of ag_ ops, so
 * ag_backward gives the gradient of every parameter and of both float inputs.
 *
 * Supported: the SD 1.x and 2.x layouts — CrossAttnDownBlock2D / DownBlock2D,
 * UNetMidBlock2DCrossAttn, UpBlock2D / CrossAttnUpBlock2D, positional timestep embedding, GEGLU
 * feed-forward, the transformers' proj_in/proj_out as conv1x1 (SD 1.x) or Linear layers
 * (use_linear_projection=true, SD 2.x), a head count per block. Config values that would change
 * this architecture (other block types, class embeddings, ...) are rejected with a message naming
 * the key. SDXL's UNet is this one with the "text_time" added embedding (sd_unet_forward_added).
 *
 * Naming trap of the SD 1 config: `attention_head_dim` is the number of HEADS (8), not the
 * head size; head size = channels / heads (40, 80, 160 at SD 1.4 sizes).
 */
#ifndef DIFFUSION_UNET_H
#define DIFFUSION_UNET_H

#include "nn/config.h"
#include "nn/module.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SD_UNET_MAX_BLOCKS 8

/* One attention projection (to_q, to_k, to_v, to_out.0). Every call goes through
 * sd_proj_forward, the one place a LoRA adapter acts: when lora_down/lora_up are set,
 * y = W x + b + lora_scale * up(down(x)) (PEFT: down = lora_A [r,in], up = lora_B [out,r]). */
struct sd_proj {
    struct nn_linear base;
    struct tensor *lora_down, *lora_up;   /* borrowed; NULL = no adapter */
    double lora_scale;
    char name[160];                       /* module path, e.g. "...attn1.to_q" */
    int64_t in_features, out_features;
};
struct tensor *sd_proj_forward(const struct sd_proj *p, struct tensor *x);

struct sd_attention {   /* diffusers Attention with AttnProcessor2_0 */
    struct sd_proj to_q, to_k, to_v, to_out;
    int heads;
    int64_t head_dim;
};

struct sd_transformer_block {   /* BasicTransformerBlock, layer_norm type, GEGLU */
    struct nn_layer_norm norm1, norm2, norm3;
    struct sd_attention attn1, attn2;
    struct nn_linear ff_proj, ff_out;   /* ff.net.0.proj [2*inner, C], ff.net.2 [C, inner] */
    int64_t inner;
};

struct sd_transformer2d {   /* Transformer2DModel, continuous input */
    struct nn_group_norm norm;
    bool linear;                                    /* use_linear_projection (SD 2.x): Linear over [B, HW, C] */
    struct nn_conv2d proj_in, proj_out;             /* else: conv1x1 (SD 1.x) */
    struct nn_linear proj_in_linear, proj_out_linear;
    int n_blocks;
    struct sd_transformer_block *blocks;
};

struct sd_resnet {   /* ResnetBlock2D, time_embedding_norm "default" */
    struct nn_group_norm norm1, norm2;
    struct nn_conv2d conv1, conv2, conv_shortcut;
    struct nn_linear time_emb_proj;
    bool has_shortcut;
    double output_scale_factor;
};

struct sd_unet_block {   /* a down, mid or up block */
    int n_layers;
    struct sd_resnet *resnets;            /* n_layers (mid: n_layers + 1) */
    struct sd_transformer2d *attentions;  /* n_layers, or NULL for a block without attention */
    bool has_sampler;                     /* downsamplers.0 / upsamplers.0 */
    struct nn_conv2d sampler;
};

struct sd_unet {
    struct nn_params *ps;   /* borrowed */
    /* config */
    int64_t in_channels, out_channels, cross_attention_dim, time_proj_dim, time_embed_dim;
    int n_blocks;
    int64_t block_out[SD_UNET_MAX_BLOCKS];
    bool flip_sin_to_cos, center_input_sample;
    bool linear_projection;  /* use_linear_projection: the transformers' proj_in/proj_out are Linear layers */
    int64_t sample_size;     /* the config's latent side (a pipeline hint: its default image size); 0 if none */
    /* addition_embed_type "text_time" (SDXL): emb += add_embedding([text_embeds, features of each time id]) */
    int64_t add_time_dim;    /* addition_time_embed_dim (256); 0 = no added embedding */
    int64_t add_in_dim;      /* projection_class_embeddings_input_dim (2816 = 1280 + 6 x 256) */
    double freq_shift;
    int n_samplers;         /* number of down (= up) samplers: H, W must divide 2^n */
    /* modules */
    struct nn_conv2d conv_in, conv_out;
    struct nn_linear time_linear_1, time_linear_2;
    struct nn_linear add_linear_1, add_linear_2;   /* add_embedding.linear_1/2, when add_time_dim */
    struct sd_unet_block down[SD_UNET_MAX_BLOCKS], mid, up[SD_UNET_MAX_BLOCKS];
    struct nn_group_norm conv_norm_out;
    /* every attention projection, in parameter order (LoRA attaches here) */
    int n_projs, cap_projs;
    struct sd_proj **projs;
    /* recompute each resnet and each transformer in the backward instead of keeping its
     * activations (ag_checkpoint, as diffusers' enable_gradient_checkpointing): the same values
     * and gradients, and only each unit's inputs stay alive between forward and backward. Inside
     * a checkpoint of a whole call (draft/train.c) it bounds that call's recompute to one unit's
     * activations. The module pointers are the checkpoints' context, so the struct must not move
     * before the backward. */
    bool checkpoint;
};

/* Build from a loaded config (read and finished here; the caller still frees it). Creates
 * the parameters in ps (its dtype/device) under the diffusers names. On failure the
 * message names the config key or the parameter; sd_unet_free is still safe to call. */
enum status sd_unet_init(struct sd_unet *u, struct nn_config *cfg, struct nn_params *ps);
/* the same, from a config.json path */
enum status sd_unet_init_file(struct sd_unet *u, const char *config_path, struct nn_params *ps);
void sd_unet_free(struct sd_unet *u);

/* sample [B, in_channels, H, W] (float, the parameters' dtype and device), timesteps [B] or
 * [1] (any real or integer dtype, any device; not differentiated), encoder_hidden_states
 * [B, S, cross_attention_dim] -> predicted noise [B, out_channels, H, W]. H and W must be
 * multiples of 2^(number of downsamplers). NULL with a message on bad input. */
struct tensor *sd_unet_forward(struct sd_unet *u, struct tensor *sample, struct tensor *timesteps,
                               struct tensor *encoder_hidden_states);
/* SDXL's added conditioning (diffusers' added_cond_kwargs): text_embeds [B, D] (the second text
 * encoder's pooled, projected output; differentiable) and time_ids [B, K] (original size, crop
 * corner, target size: K = 6; any real or integer dtype; not differentiated), with
 * D + K * add_time_dim = add_in_dim */
struct sd_unet_added {
    struct tensor *text_embeds, *time_ids;
};
/* the same with the added conditioning a "text_time" UNet needs (NULL for the others) */
struct tensor *sd_unet_forward_added(struct sd_unet *u, struct tensor *sample, struct tensor *timesteps,
                                     struct tensor *encoder_hidden_states, const struct sd_unet_added *added);

/* The sinusoidal timestep features (diffusers get_timestep_embedding, float32 arithmetic):
 * timesteps [B] -> [B, dim] f32 on the CPU. */
struct tensor *sd_timestep_features(struct tensor *timesteps, int64_t dim, bool flip_sin_to_cos, double freq_shift);

#ifdef __cplusplus
}
#endif

#endif
