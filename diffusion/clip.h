/* clip.h — the CLIP towers SD 1.x uses, as in transformers' modeling_clip.py.
 *
 * CLIPTextModel: token + position embeddings, pre-LN transformer layers with a causal mask,
 * final_layer_norm -> last_hidden_state (what SD feeds the UNet as encoder_hidden_states).
 * CLIPVisionModelWithProjection: patch conv (no bias), class token, position embeddings,
 * pre_layrnorm (sic, the checkpoint's spelling), the same layers without a mask,
 * post_layernorm on the class token, visual_projection (no bias) -> image_embeds (what the
 * LAION aesthetic head reads, after L2 normalisation).
 *
 * Parameters are named by the checkpoint keys ("text_model.encoder.layers.0.self_attn.q_proj.weight",
 * "vision_model.pre_layrnorm.bias", "visual_projection.weight") under an optional prefix.
 */
#ifndef DIFFUSION_CLIP_H
#define DIFFUSION_CLIP_H

#include "nn/config.h"
#include "nn/module.h"

#ifdef __cplusplus
extern "C" {
#endif

enum clip_act { CLIP_ACT_QUICK_GELU, CLIP_ACT_GELU, CLIP_ACT_GELU_TANH };

/* the fields of CLIPTextConfig / CLIPVisionConfig this code uses (transformers defaults) */
struct clip_text_config {
    int64_t vocab_size;          /* 49408 */
    int64_t hidden_size;         /* 512 */
    int64_t intermediate_size;   /* 2048 */
    int num_hidden_layers;       /* 12 */
    int num_attention_heads;     /* 8 */
    int64_t max_position_embeddings;   /* 77 */
    double layer_norm_eps;       /* 1e-5 */
    enum clip_act hidden_act;    /* quick_gelu */
    int64_t eos_token_id;        /* 2: the legacy value, meaning "pool at argmax(ids)" */
    int64_t projection_dim;      /* 512; CLIPTextModelWithProjection's text_projection (SDXL's text_encoder_2) */
};

struct clip_vision_config {
    int64_t hidden_size;         /* 768 */
    int64_t intermediate_size;   /* 3072 */
    int num_hidden_layers;       /* 12 */
    int num_attention_heads;     /* 12 */
    int64_t num_channels;        /* 3 */
    int64_t image_size;          /* 224 */
    int64_t patch_size;          /* 32 */
    int64_t projection_dim;      /* 512 */
    double layer_norm_eps;       /* 1e-5 */
    enum clip_act hidden_act;    /* quick_gelu */
    bool owlvit;                 /* OWL-ViT's tower (model_type owlvit_vision_model, or OWLv2's
                                    owlv2_vision_model): its pre-LN is spelt "pre_layernorm" */
};

/* Read a config.json (a CLIPTextConfig / CLIPVisionConfig, or OWL-ViT's (and OWLv2's) text and
 * vision configs: the same towers; keys the model does not use, such as dropout rates and
 * token ids, are accepted; unknown keys are errors). */
enum status clip_text_config_load(struct clip_text_config *cfg, const char *path);
enum status clip_vision_config_load(struct clip_vision_config *cfg, const char *path);
/* the same from a parsed config: reads, declares the ignored keys and finishes it (the caller frees it) */
enum status clip_text_config_read(struct clip_text_config *cfg, struct nn_config *c);
enum status clip_vision_config_read(struct clip_vision_config *cfg, struct nn_config *c);

/* one pre-LN transformer layer: x += out_proj(MHA(layer_norm1(x))); x += fc2(act(fc1(layer_norm2(x)))) */
struct clip_encoder_layer {
    struct nn_layer_norm layer_norm1, layer_norm2;
    struct nn_linear q_proj, k_proj, v_proj, out_proj;
    struct nn_linear fc1, fc2;
};

struct clip_encoder {
    int n_layers, n_heads;
    enum clip_act act;
    struct clip_encoder_layer *layers;   /* owned */
};

struct clip_text_model {
    struct clip_text_config cfg;
    struct nn_embedding token_embedding, position_embedding;
    struct clip_encoder encoder;
    struct nn_layer_norm final_layer_norm;
};

struct clip_vision_model {
    struct clip_vision_config cfg;
    struct tensor *class_embedding;   /* [hidden] */
    struct nn_conv2d patch_embedding;   /* [hidden, C, p, p], stride p, no bias */
    struct nn_embedding position_embedding;   /* [(image/patch)^2 + 1, hidden] */
    struct nn_layer_norm pre_layrnorm, post_layernorm;   /* pre_layernorm for OWL-ViT (cfg.owlvit) */
    struct clip_encoder encoder;
    struct nn_linear visual_projection;   /* [projection_dim, hidden], no bias */
};

/* Create the parameters in ps ("<prefix>.text_model...", prefix may be ""). The layers
 * borrow their tensors from ps: ps must outlive the model (and be re-initialised after
 * nn_params_to_dtype, which replaces the tensors). */
enum status clip_text_init(struct clip_text_model *m, const struct clip_text_config *cfg, struct nn_params *ps,
                           const char *prefix);
void clip_text_free(struct clip_text_model *m);
/* input_ids i32/i64 [B, L] with L <= max_position_embeddings -> last_hidden_state [B, L, hidden] */
struct tensor *clip_text_forward(const struct clip_text_model *m, struct tensor *input_ids);
/* hidden_states[layers] of transformers' CLIPTextModel: the output of the first `layers` encoder
 * layers, without the final LayerNorm ([B, L, hidden]; layers = n - 1 is SDXL's hidden_states[-2]).
 * last_hidden_state (optional): the whole model's output too, as clip_text_forward, from the
 * same pass (SDXL pools the second encoder's) */
struct tensor *clip_text_hidden(const struct clip_text_model *m, struct tensor *input_ids, int layers,
                                struct tensor **last_hidden_state);
/* pooled output [B, hidden]: last_hidden_state at the eos token of each row (argmax of the ids
 * for the legacy eos_token_id 2, else the first eos_token_id), as CLIPTextModel's pooler_output */
struct tensor *clip_text_pooled(const struct clip_text_model *m, struct tensor *input_ids,
                                struct tensor *last_hidden_state);

enum status clip_vision_init(struct clip_vision_model *m, const struct clip_vision_config *cfg, struct nn_params *ps,
                             const char *prefix);
void clip_vision_free(struct clip_vision_model *m);
/* pixel_values [B, C, image_size, image_size] (CLIP-normalised) -> image_embeds [B, projection_dim]
 * (not normalised: the aesthetic reward divides by the L2 norm itself) */
struct tensor *clip_vision_forward(const struct clip_vision_model *m, struct tensor *pixel_values);
/* the same tower's last_hidden_state [B, (image/patch)^2 + 1, hidden]: the class token first, then
 * the patches row by row; before post_layernorm (OWL-ViT's detection heads read every token) */
struct tensor *clip_vision_hidden(const struct clip_vision_model *m, struct tensor *pixel_values);

/* Load a transformers CLIP file (safetensors, or a torch.save .bin: nn/weights.h). A text tower's
 * file may name its tensors with "text_model." (transformers 4.x, the released SD folders) or
 * without (CLIPTextModel saved by transformers 5). Besides the
 * parameters, the file may hold the `*.embeddings.position_ids` buffers older transformers saved;
 * they are checked to be 0, 1, 2, ... (what the forward assumes) and skipped. Any other extra
 * tensor under key_prefix is an error; tensors outside key_prefix (other components of a whole
 * checkpoint) are ignored. */
struct nn_weights;
enum status clip_params_load(struct nn_params *ps, const struct nn_weights *w, const char *key_prefix);
/* the same, ignoring the file's tensors whose names start with one of skip (a NULL-terminated
 * list; NULL for none): OWL-ViT's box and objectness heads, which its detection score does not read */
enum status clip_params_load_except(struct nn_params *ps, const struct nn_weights *w, const char *key_prefix,
                                    const char *const *skip);

/* OpenCLIP state dicts (open_clip's CLIP class: HPSv2's HPS_v2_compressed.pt, LAION's
 * open_clip_pytorch_model.bin or .safetensors). The text tower sits at the top level
 * (token_embedding, positional_embedding, transformer.resblocks.N, ln_final, text_projection
 * [width, embed]), the image tower under "visual." (conv1, class_embedding, positional_embedding,
 * ln_pre, transformer.resblocks.N, ln_post, proj [width, embed]); a block has ln_1,
 * attn.in_proj_weight / _bias (q, k and v stacked, in that order), attn.out_proj, ln_2, mlp.c_fc,
 * mlp.c_proj. The towers compute what transformers' CLIPModel computes, so they load into the
 * same modules. */
/* The configs, read off the tensors' shapes. The file does not say how many heads a tower has:
 * OpenCLIP's model configs give the width of a head instead (64 for most towers, 80 for
 * ViT-H-14's image tower), so the caller does; act is the towers' activation (exact GELU for the
 * LAION towers, quick GELU for OpenAI's). The text tower pools at argmax(ids), as OpenCLIP does.
 * *embed_dim gets the width of both projections (which must agree). */
enum status clip_openclip_configs(const struct nn_weights *w, int64_t text_head_width, int64_t vision_head_width,
                                  enum clip_act act, struct clip_text_config *tc, struct clip_vision_config *vc,
                                  int64_t *embed_dim);
/* Load parameters named as CLIPModel's ("text_model.…", "vision_model.…", "visual_projection.weight",
 * "text_projection.weight", "logit_scale") from an OpenCLIP state dict: q/k/v cut out of the
 * stacked projections, the two projections transposed. Every tensor of the file must be used. */
enum status clip_openclip_load(struct nn_params *ps, const struct nn_weights *w);
/* A text tower alone (CLIPTextModel's "text_model.…" parameters) from the OpenCLIP keys under
 * `prefix`: SD 2.x's original checkpoint ("cond_stage_model.model.", as diffusers'
 * convert_open_clip_checkpoint reads it). A model of `layers` blocks takes the file's first ones
 * (SD 2.x conditions on the penultimate block's output: 23 of ViT-H's 24). Marks in used[] (one
 * entry per file tensor) what it read and what such a model leaves out: the blocks past its
 * last, text_projection, logit_scale, attn_mask. */
enum status clip_openclip_text_load(struct nn_params *ps, const struct nn_weights *w, const char *prefix, int layers,
                                    bool *used);

#ifdef __cplusplus
}
#endif

#endif
