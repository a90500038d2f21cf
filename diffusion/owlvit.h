/* owlvit.h — OWL-ViT's open-vocabulary detector, as transformers' OwlViTForObjectDetection
 * (modeling_owlvit.py), up to its class logits: what a detection reward differentiates.
 *
 * The towers are CLIP's (diffusion/clip.h): a text tower whose pooled output, projected and
 * L2-normalised, embeds each text query; a ViT whose every output token goes through
 * post_layernorm, after which each patch token is multiplied by the class token and layer-normed
 * (`layer_norm`). The class head maps a patch to the text width (dense0), and its logit for a
 * query is (cos(dense0(patch), query) + logit_shift(patch)) * (elu(logit_scale(patch)) + 1), the
 * cosine with 1e-6 added to each norm. The box head (box_head.*) predicts where the patch's box is;
 * a detection score does not read it, so it is not built (and its tensors are skipped on load).
 *
 * OWLv2 (Owlv2ForObjectDetection, "Scaling Open-Vocabulary Object Detection") has the same towers
 * and class head under "owlv2." in place of "owlvit.", and an objectness head that is not read
 * either; its processor pads an image to a square and resizes it otherwise (draft/reward.h).
 *
 * Parameters are named by the checkpoint keys: "owlvit.text_model.…", "owlvit.vision_model.…"
 * (pre_layernorm, spelt so), "owlvit.text_projection.weight", "owlvit.visual_projection.weight"
 * (the image-level CLIP embedding: clip_vision_forward of vision_model), "owlvit.logit_scale"
 * (CLIP's temperature; loaded, unused here), "layer_norm.*", "class_head.dense0.*",
 * "class_head.logit_shift.*", "class_head.logit_scale.*".
 */
#ifndef DIFFUSION_OWLVIT_H
#define DIFFUSION_OWLVIT_H

#include "diffusion/clip.h"
#include "diffusion/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

struct owlvit_model {
    struct clip_text_model text_model;       /* owlvit.text_model */
    struct clip_vision_model vision_model;   /* owlvit.vision_model, owlvit.visual_projection */
    struct nn_linear text_projection;        /* owlvit.text_projection: [projection_dim, text hidden], no bias */
    struct nn_layer_norm layer_norm;         /* the patch tokens times the class token */
    struct nn_linear class_dense0;           /* class_head.dense0: vision hidden -> text hidden */
    struct nn_linear class_logit_shift, class_logit_scale;   /* class_head: vision hidden -> 1 */
    bool text_init, vision_init;
    bool v2;   /* OWLv2: its keys start "owlv2." */
};

/* Create the parameters in ps (borrowed by the model, as clip_text_init). The vision config must
 * be OWL-ViT's (vc->owlvit) and the text tower's width equal projection_dim (the class head
 * compares dense0's output, text-wide, with the projected queries). */
enum status owlvit_init(struct owlvit_model *m, const struct clip_text_config *tc, const struct clip_vision_config *vc,
                        int64_t projection_dim, bool v2, struct nn_params *ps);
void owlvit_free(struct owlvit_model *m);
/* Read every parameter from a transformers OwlViTForObjectDetection or Owlv2ForObjectDetection
 * file (model.safetensors or pytorch_model.bin); the box head's tensors (and OWLv2's objectness
 * head's) are skipped, any other extra tensor is an error. */
enum status owlvit_params_load(struct nn_params *ps, const struct nn_weights *w);

/* OwlViTProcessor's ids (padding="max_length", truncation): bos, the first L - 2 ids at most, eos,
 * then "!" (id 0) up to L = max_position_embeddings; the tower pools at the eos */
#define OWLVIT_PAD_ID 0
/* input_ids [Q, L] (L <= max_position_embeddings) -> query embeddings [Q, projection_dim],
 * L2-normalised (OwlViTModel's text_embeds) */
struct tensor *owlvit_text_embeds(const struct owlvit_model *m, struct tensor *input_ids);
/* pixel_values [B, 3, S, S] (S = image_size, CLIP-normalised) -> image features [B, P, hidden],
 * P = (S / patch)^2 patches row by row (image_embedder's feature map, flattened) */
struct tensor *owlvit_image_feats(const struct owlvit_model *m, struct tensor *pixel_values);
/* the class head: image features [B, P, hidden] and query embeddings [B, Q, projection_dim]
 * (each image its own queries) or [Q, projection_dim] (the same for all) -> logits [B, P, Q];
 * sigmoid(logit) is the patch's box's score for the query */
struct tensor *owlvit_class_logits(const struct owlvit_model *m, struct tensor *image_feats,
                                   struct tensor *query_embeds);

#ifdef __cplusplus
}
#endif

#endif
