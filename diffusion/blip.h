/* blip.h — the two towers of BLIP that ImageReward scores with (ImageReward/models/BLIP: vit.py,
 * med.py; salesforce/BLIP).
 *
 * blip_vit: timm's VisionTransformer as BLIP builds it: a patch conv (with bias), a class token,
 * learned positions, pre-LN blocks (norm1, fused qkv with bias, proj; norm2, fc1, exact GELU,
 * fc2; LayerNorm eps 1e-6), a final norm over every token -> image_embeds [B, N + 1, width].
 * Names: "<prefix>.cls_token" [1, 1, D], ".pos_embed" [1, N + 1, D], ".patch_embed.proj",
 * ".blocks.<i>.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2", ".norm".
 *
 * blip_bert: med.py's BertModel with a cross-attention in every layer ("multimodal" mode),
 * post-LN: embeddings (word + absolute position, LayerNorm), then per layer self-attention ->
 * dense -> LayerNorm(+ residual), cross-attention to the image embeddings (keys and values from
 * encoder_width) -> dense -> LayerNorm(+ residual), intermediate (exact GELU) -> output dense ->
 * LayerNorm(+ residual). Names: "<prefix>.embeddings.word_embeddings", ".position_embeddings",
 * ".LayerNorm", ".encoder.layer.<i>.attention.self.query/key/value", ".attention.output.dense",
 * ".attention.output.LayerNorm", ".crossattention.…" (the same), ".intermediate.dense",
 * ".output.dense", ".output.LayerNorm".
 *
 * The text runs without padding: the reference's padded keys get -10000 added to their scores,
 * which makes their softmax weight exactly 0 in f32 and f64, so the rows of the real tokens are
 * the same as those of the unpadded text (the caller runs texts of different lengths apart).
 */
#ifndef DIFFUSION_BLIP_H
#define DIFFUSION_BLIP_H

#include "nn/config.h"
#include "nn/module.h"

#ifdef __cplusplus
extern "C" {
#endif

struct nn_weights;

struct blip_vit_config {
    int64_t width, depth, heads, patch, image_size, mlp;
};

struct blip_vit_block {
    struct nn_layer_norm norm1, norm2;
    struct nn_linear qkv, proj, fc1, fc2;
};

struct blip_vit {
    struct blip_vit_config cfg;
    struct tensor *cls_token, *pos_embed;   /* [1, 1, D], [1, N + 1, D] */
    struct nn_conv2d patch_embed;
    struct blip_vit_block *blocks;   /* owned */
    struct nn_layer_norm norm;
};

/* the config read off a state dict's shapes under prefix (BLIP's heads are 64 wide: 'base' 12 of
 * 768, 'large' 16 of 1024) */
enum status blip_vit_config_from_weights(const struct nn_weights *w, const char *prefix, struct blip_vit_config *cfg);
enum status blip_vit_init(struct blip_vit *m, const struct blip_vit_config *cfg, struct nn_params *ps,
                          const char *prefix);
void blip_vit_free(struct blip_vit *m);
/* pixel_values [B, 3, S, S] (S = image_size) -> image_embeds [B, (S/patch)^2 + 1, width] */
struct tensor *blip_vit_forward(const struct blip_vit *m, struct tensor *pixel_values);

struct blip_bert_config {
    int64_t vocab_size, hidden_size, intermediate_size, max_position_embeddings, encoder_width;
    int num_hidden_layers, num_attention_heads;
    double layer_norm_eps;
};

struct blip_bert_attention {
    struct nn_linear query, key, value, dense;
    struct nn_layer_norm layer_norm;
};

struct blip_bert_layer {
    struct blip_bert_attention self_attn, cross_attn;
    struct nn_linear intermediate, output;
    struct nn_layer_norm output_norm;
};

struct blip_bert {
    struct blip_bert_config cfg;
    struct nn_embedding word_embeddings, position_embeddings;
    struct nn_layer_norm embeddings_norm;
    struct blip_bert_layer *layers;   /* owned */
};

/* med_config.json (a BertConfig with add_cross_attention; BLIP sets encoder_width to the vision
 * width, so encoder_width here is the caller's) */
enum status blip_bert_config_load(struct blip_bert_config *cfg, const char *path, int64_t encoder_width);
enum status blip_bert_init(struct blip_bert *m, const struct blip_bert_config *cfg, struct nn_params *ps,
                           const char *prefix);
void blip_bert_free(struct blip_bert *m);
/* input_ids i32/i64 [B, L] (no padding; L <= max_position_embeddings) and image_embeds
 * [B, N, encoder_width] -> last_hidden_state [B, L, hidden] */
struct tensor *blip_bert_forward(const struct blip_bert *m, struct tensor *input_ids, struct tensor *image_embeds);

#ifdef __cplusplus
}
#endif

#endif
