/* reward.h — the differentiable rewards DRaFT maximises, behind one interface.
 *
 * A reward maps decoded images (the VAE output: [B, 3, H, W] float in [-1, 1]) and B prompts
 * to scores [B] in the images' dtype, built from ag_ ops so the trainer can backpropagate into
 * the images (and through them into the LoRA). Every reward first maps the images to [0, 1] and
 * clamps them there, as the SD pipeline does before its images reach any reward model.
 *
 * Specs (draft_reward_create):
 *   aesthetic:<clip_vision_dir>,<head>   LAION aesthetic predictor: CLIP image embedding,
 *       L2-normalised, into the MLP head (layers.0/2/4/6/7, no activations). <clip_vision_dir>
 *       holds config.json + model.safetensors (or pytorch_model.bin) of a
 *       CLIPVisionModelWithProjection, or of a whole CLIPModel (vision_config inside; the text
 *       tower is ignored). <head> is the torch .pth (sac+logos+ava1-l14-linearMSE.pth) or a
 *       .safetensors file with the same keys.
 *   clip:<clip_dir>[,logit_scale][,text=<target text>]   cosine between the image and text
 *       embeddings of a CLIPModel folder (HPSv2 / PickScore style): <clip_dir>/config.json with
 *       text_config and vision_config, <clip_dir>/model.safetensors (or pytorch_model.bin) with
 *       text_model.*, vision_model.*, visual_projection.weight, text_projection.weight (and
 *       logit_scale, needed only with the logit_scale flag: the score is then exp(logit_scale) *
 *       cosine), vocab.json + merges.txt in <clip_dir> or <clip_dir>/tokenizer. The text is each image's prompt, or
 *       <target text> for all; text= takes the rest of the spec, commas included (a trailing
 *       ",logit_scale" is still read as the flag).
 *   pickscore:<dir>[,text=<target text>]   PickScore: clip:<dir>,logit_scale (a CLIPModel folder,
 *       yuvalkirstain/PickScore_v1, with CLIP-H's tokenizer files in it or in its tokenizer/)
 *   hpsv2:<file>,<tokenizer_dir>[,text=<target text>]   HPSv2 (and v2.1): cosine between the image
 *       and text embeddings of OpenCLIP ViT-H-14 with HPS's weights, read from their state dict
 *       (HPS_v2_compressed.pt / HPS_v2.1_compressed.pt: {"state_dict": ...}, or any file of that
 *       state dict: .pt/.bin/.safetensors); no logit scale. <tokenizer_dir> holds CLIP's BPE
 *       (vocab.json + merges.txt, in it or in its tokenizer/: an SD 1.x folder does). The text is
 *       each image's prompt, or <target text> for all.
 *   classify:<clip_dir>,text=<target>|<other>|...   log p(target | image) of the CLIPModel
 *       folder's zero-shot classifier over the '|'-separated class texts: log_softmax over the
 *       classes of exp(logit_scale) * cos(image, text) (the folder's logit_scale is required). An
 *       empty target (text=|<other>|...) makes each image's prompt its target class (a listed class
 *       that tokenizes as the prompt is left out of that image's softmax). Adversarial examples
 *       against a classifier, or steering away from what an image should not show.
 *   detect:<owlvit_dir>[,text=<object>]   OWL-ViT's open-vocabulary detector (a transformers
 *       OwlViTForObjectDetection or Owlv2ForObjectDetection folder: config.json, model.safetensors or pytorch_model.bin, and
 *       vocab.json + merges.txt in it or its tokenizer/): the score of its best box for the object,
 *       max over the patches of sigmoid(class logit), in [0, 1]; without text= each image's prompt
 *       is the query. The paper's object-detection reward; with a negative weight in a sum, it
 *       takes an object out of the images. Images are stretched to the tower's size (768 for
 *       google/owlvit-base-patch32), as OwlViTImageProcessor does; OWLv2's are padded and resized
 *       as Owlv2ImageProcessor does (draft_owlv2_preprocess).
 *   imagereward:<dir>[,text=<prompt>]   ImageReward (THUDM, the reward ReFL trains on): BLIP's ViT-L
 *       reads the image (CLIP's preprocessing at 224), BLIP's BERT reads the prompt (bert-base-uncased
 *       WordPiece, at most 35 tokens) cross-attending to it, an MLP maps its [CLS] row to a score,
 *       normalised as the reference: (s - 0.16717362830052426) / 1.0333394966054072. <dir> holds
 *       ImageReward.pt (the state dict; or ImageReward.safetensors), med_config.json and vocab.txt
 *       (bert-base-uncased's; or tokenizer/vocab.txt). The text is each image's prompt, or <prompt>.
 *   sum:[w*]<spec>;[w*]<spec>;...   sum_i w_i r_i(images) (w_i defaults to 1; up to 8 terms, no sum
 *       inside a sum): several rewards at once, e.g. sum:aesthetic:<dir>,<head>;0.5*hpsv2:<file>,<dir>
 *   colorfulness          Hasler–Süsstrunk: sqrt(std_rg² + std_yb²) + 0.3 sqrt(mean_rg² + mean_yb²)
 *   brightness=<target>   -(mean luminance - target)², luminance Y = .299 R + .587 G + .114 B
 *   contrast=<target>     -(std of luminance - target)² (population std)
 *   jpeg                  JPEG compressibility surrogate: -mean |DCT coef| / Q (see reward.c)
 *   red                   mean(R - (G + B) / 2)
 *
 * CLIP preprocessing (both model rewards): [0,1] -> resize to the tower's image_size as PIL's
 * bicubic with antialias (a = -0.5, support scaled by the downscale factor: what openai CLIP's
 * Resize(BICUBIC) and HF CLIPImageProcessor do), shortest side first and then a centre crop, both
 * written as two constant matmuls (rows of the resize matrix, so the crop costs nothing); then
 * (x - mean) / std with the OpenAI CLIP mean/std. Differences from the reference: no uint8
 * rounding or clipping between PIL's two passes.
 *
 * Ownership: a reward owns what its create function loaded; draft_reward_clip_from_models
 * borrows its towers and tokenizer (they must outlive the reward). Scores are new references.
 */
#ifndef DRAFT_REWARD_H
#define DRAFT_REWARD_H

#include "diffusion/clip.h"
#include "diffusion/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

struct draft_reward {
    char name[64];
    struct tensor *(*score)(struct draft_reward *r, struct tensor *images, const char *const *prompts);
    void (*free)(struct draft_reward *r);
    void *ctx;
    /* the image tower's normalised embeddings [B, P] (NULL for rewards without one) */
    struct tensor *(*embed)(struct draft_reward *r, struct tensor *images);
};

/* scores [B] (images' dtype); prompts may be NULL for rewards that read no text. NULL with a
 * message on a bad shape / dtype or a missing prompt. */
struct tensor *draft_reward_score(struct draft_reward *r, struct tensor *images, const char *const *prompts);
void draft_reward_free(struct draft_reward *r);   /* NULL is fine */
/* evaluation, no graph: the B scores as host numbers into values[0..B-1] and their mean (summed
 * in f64, in order) into *mean; either may be NULL */
enum status draft_reward_score_values(struct draft_reward *r, struct tensor *images, const char *const *prompts,
                                      double *values, double *mean);

/* The normalised image embeddings [B, P] (f64 on the CPU) of a reward with an image tower:
 * aesthetic (its CLIP image embedding), clip, pickscore, hpsv2, detect (OWL-ViT's image-level CLIP
 * embedding, OwlViTModel's image_embeds), imagereward (BLIP's: the ViT's class token through
 * blip.vision_proj, when the file has it), or a sum (its first such term).
 * Computed without a graph, from the images as the reward sees them. NULL with a message for a
 * reward without one. For measures of the samples in a model's feature space (draft_feature_diversity). */
struct tensor *draft_reward_image_embeds(struct draft_reward *r, struct tensor *images);
bool draft_reward_has_image_tower(const struct draft_reward *r);   /* draft_reward_image_embeds works */

/* A sum's terms, for metrics that show each one (where reward hacking hides: one term rising
 * while another falls). draft_reward_terms: the number of terms, 0 for a reward that is not a
 * sum; with terms non-NULL (room for DRAFT_REWARD_MAX_TERMS) each one's reward name, spec (without
 * its weight; both owned by r) and weight. draft_reward_terms_take: each term's unweighted score
 * averaged over every image the sum scored since the last take (NaN when none), into means[i];
 * then starts over. The weighted sum of the means is the mean of the sum's scores. */
#define DRAFT_REWARD_MAX_TERMS 8
struct draft_reward_term {
    const char *name, *spec;
    double weight;
};
int draft_reward_terms(const struct draft_reward *r, struct draft_reward_term *terms);
int draft_reward_terms_take(struct draft_reward *r, double *means);

/* parse a spec (above); models in f32 on the CPU. NULL + a message listing the valid specs. */
struct draft_reward *draft_reward_create(const char *spec);
/* the same with the model weights in dt on dev (analytic rewards ignore both) */
struct draft_reward *draft_reward_create_on(const char *spec, enum dtype dt, enum device dev);
/* a spec's form, reading no file and loading no model: an unknown kind, a bad number, a sum inside
 * a sum; for a tool to say so before it loads what takes long (a model reward's files are read,
 * and can still fail, when it is made) */
enum status draft_reward_spec_check(const char *spec);
/* the valid spec forms, one per line (for --help texts and error messages) */
const char *draft_reward_specs(void);

struct draft_reward *draft_reward_aesthetic_create(const char *clip_vision_dir, const char *head_path, enum dtype dt,
                                                   enum device dev);
/* target_text NULL: score against each image's prompt. use_logit_scale: multiply by exp(logit_scale). */
struct draft_reward *draft_reward_clip_create(const char *clip_dir, const char *target_text, bool use_logit_scale,
                                              enum dtype dt, enum device dev);
/* classes: "<target>|<other>|..." as in the classify: spec (an empty target: each image's prompt) */
struct draft_reward *draft_reward_classify_create(const char *clip_dir, const char *classes, enum dtype dt,
                                                  enum device dev);
/* object NULL: each image's prompt is the query */
struct draft_reward *draft_reward_detect_create(const char *owlvit_dir, const char *object, enum dtype dt,
                                                enum device dev);
/* dir holds ImageReward.pt (or .safetensors), med_config.json and bert-base-uncased's vocab.txt
 * (or tokenizer/vocab.txt); text NULL: each image's prompt */
struct draft_reward *draft_reward_imagereward_create(const char *dir, const char *text, enum dtype dt, enum device dev);
/* an OpenCLIP state dict (diffusion/clip.h): head widths and activation as its model config says
 * (HPSv2, ViT-H-14: text 64, image 80, CLIP_ACT_GELU); the score is the cosine (times
 * exp(logit_scale) with use_logit_scale) towards each prompt or target_text */
struct draft_reward *draft_reward_openclip_create(const char *path, const char *tokenizer_dir,
                                                  int64_t text_head_width, int64_t vision_head_width, enum clip_act act,
                                                  const char *target_text, bool use_logit_scale, enum dtype dt,
                                                  enum device dev);
/* from built towers (borrowed). text_projection NULL: the pooled text output is the text embedding
 * (its width must equal vision->cfg.projection_dim). The cosine is multiplied by `scale` (1 for plain
 * cosine, exp(logit_scale) for PickScore). Text runs in the text tower's dtype, images in the
 * vision tower's. */
struct draft_reward *draft_reward_clip_from_models(const struct clip_text_model *text,
                                                   const struct nn_linear *text_projection,
                                                   const struct clip_vision_model *vision,
                                                   const struct clip_tokenizer *tok, const char *target_text,
                                                   double scale);

/* ---------------------------------------------------------------- pieces, for tests and tools */

/* the LAION MLP head alone: 5 linears read from a .pth (torch zip) or .safetensors file */
struct draft_aesthetic_head;
struct draft_aesthetic_head *draft_aesthetic_head_load(const char *path, enum dtype dt, enum device dev);
void draft_aesthetic_head_free(struct draft_aesthetic_head *h);
int64_t draft_aesthetic_head_dim(const struct draft_aesthetic_head *h);   /* input width */
/* embeds [B, dim] (already normalised) -> scores [B, 1] */
struct tensor *draft_aesthetic_head_forward(const struct draft_aesthetic_head *h, struct tensor *embeds);

/* images [B, 3, H, W] in [-1, 1] -> CLIP pixel_values [B, 3, size, size] (see above) */
struct tensor *draft_clip_preprocess(struct tensor *images, int64_t size);
/* the same for OWL-ViT (OwlViTImageProcessor): both sides resized to size (a non-square image is
 * stretched, not cropped), then CLIP's mean/std */
struct tensor *draft_owlvit_preprocess(struct tensor *images, int64_t size);
/* the same for OWLv2 (Owlv2ImageProcessor, as transformers 4.x and the original pad): padded to a
 * square at the bottom and right with 0.5 grey, then resized as skimage does (a Gaussian when
 * shrinking, linear interpolation on the pixel grid, mirrored edges), then CLIP's mean/std.
 * transformers 5.x pads with 0 instead; a square image (SD's) is not padded either way. */
struct tensor *draft_owlv2_preprocess(struct tensor *images, int64_t size);
/* the PIL-bicubic resize matrix [out, in] (f64, CPU): row i holds the weights of output pixel i */
struct tensor *draft_pil_bicubic_matrix(int64_t in, int64_t out);

#ifdef __cplusplus
}
#endif

#endif
