/* owlvit.c — OwlViTForObjectDetection's (and Owlv2ForObjectDetection's) class logits
 * (transformers modeling_owlvit.py, modeling_owlv2.py). */
#include "diffusion/owlvit.h"
#include "nn/weights.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

enum status owlvit_init(struct owlvit_model *m, const struct clip_text_config *tc, const struct clip_vision_config *vc,
                        int64_t projection_dim, bool v2, struct nn_params *ps)
{
    memset(m, 0, sizeof *m);
    m->v2 = v2;
    if (!vc->owlvit)
        return tensor_fail(STATUS_FORMAT, "owlvit: the vision config is not OWL-ViT's (model_type owlvit_vision_model "
                                          "or owlv2_vision_model)");
    const char *top = v2 ? "owlv2" : "owlvit";
    char name[64];
    if (tc->hidden_size != projection_dim)
        return tensor_fail(STATUS_FORMAT, "owlvit: the text width %lld differs from projection_dim %lld (the class head "
                                          "compares the two)", (long long)tc->hidden_size, (long long)projection_dim);
    struct clip_vision_config v = *vc;
    v.projection_dim = projection_dim;
    const int64_t D = vc->hidden_size;
    enum status s = (m->text_init = true, clip_text_init(&m->text_model, tc, ps, top));
    if (!s) s = (m->vision_init = true, clip_vision_init(&m->vision_model, &v, ps, top));
    if (!s) s = nn_linear_init(&m->text_projection, ps, nn_name(name, sizeof name, top, "text_projection"), tc->hidden_size,
                               projection_dim, false);
    if (!s && !nn_param_new(ps, top, "logit_scale", 0, NULL)) s = tensor_status();
    if (!s) s = nn_layer_norm_init(&m->layer_norm, ps, "layer_norm", D, vc->layer_norm_eps);
    if (!s) s = nn_linear_init(&m->class_dense0, ps, "class_head.dense0", D, tc->hidden_size, true);
    if (!s) s = nn_linear_init(&m->class_logit_shift, ps, "class_head.logit_shift", D, 1, true);
    if (!s) s = nn_linear_init(&m->class_logit_scale, ps, "class_head.logit_scale", D, 1, true);
    return s;
}

void owlvit_free(struct owlvit_model *m)
{
    if (m->text_init) clip_text_free(&m->text_model);
    if (m->vision_init) clip_vision_free(&m->vision_model);
    m->text_init = m->vision_init = false;
}

enum status owlvit_params_load(struct nn_params *ps, const struct nn_weights *w)
{
    static const char *const heads[] = {"box_head.", "objectness_head.", NULL};   /* where boxes are, not what */
    return clip_params_load_except(ps, w, "", heads);
}

struct tensor *owlvit_text_embeds(const struct owlvit_model *m, struct tensor *input_ids)
{
    tensor_scope_begin();
    struct tensor *e = clip_text_pooled(&m->text_model, input_ids, clip_text_forward(&m->text_model, input_ids));
    e = nn_linear_forward(&m->text_projection, e);
    /* text_embeds / ||text_embeds|| (no epsilon in the reference) */
    return tensor_scope_return(ag_div(e, ag_norm(e, 1, (int[]){1}, true)));
}

struct tensor *owlvit_image_feats(const struct owlvit_model *m, struct tensor *pixel_values)
{
    tensor_scope_begin();
    struct tensor *x = nn_layer_norm_forward(&m->vision_model.post_layernorm,
                                             clip_vision_hidden(&m->vision_model, pixel_values));
    if (!x) return tensor_scope_return(NULL);
    const int64_t T = x->shape[1];
    /* each patch token times the class token, then layer_norm */
    struct tensor *merged = ag_mul(ag_narrow(x, 1, 1, T - 1), ag_narrow(x, 1, 0, 1));
    return tensor_scope_return(nn_layer_norm_forward(&m->layer_norm, merged));
}

/* x / (||x|| + 1e-6) over the last dim, as the class head normalises both sides */
static struct tensor *head_normalize(struct tensor *x)
{
    if (!x) return NULL;
    const int d = x->ndim - 1;
    return ag_div(x, ag_affine(ag_norm(x, 1, &d, true), 1, 1e-6));
}

struct tensor *owlvit_class_logits(const struct owlvit_model *m, struct tensor *image_feats,
                                   struct tensor *query_embeds)
{
    if (!image_feats || !query_embeds) return NULL;
    char a[128], b[128];
    const int64_t D = m->vision_model.cfg.hidden_size, E = m->class_dense0.weight->shape[0];
    const bool shared = query_embeds->ndim == 2;
    if (image_feats->ndim != 3 || image_feats->shape[2] != D || (query_embeds->ndim != 2 && query_embeds->ndim != 3) ||
        query_embeds->shape[query_embeds->ndim - 1] != E ||
        (!shared && query_embeds->shape[0] != image_feats->shape[0])) {
        tensor_fail(STATUS_SHAPE, "owlvit_class_logits: image features must be [B, P, %lld] and queries [B, Q, %lld] or "
                                  "[Q, %lld], got %s and %s", (long long)D, (long long)E, (long long)E,
                    tensor_shape_str(image_feats, a, sizeof a), tensor_shape_str(query_embeds, b, sizeof b));
        return NULL;
    }
    tensor_scope_begin();
    struct tensor *ice = head_normalize(nn_linear_forward(&m->class_dense0, image_feats));   /* [B, P, E] */
    struct tensor *q = head_normalize(query_embeds);
    q = shared ? ag_transpose(q, 0, 1) : ag_transpose(q, 1, 2);   /* [E, Q] or [B, E, Q] */
    struct tensor *logits = ag_matmul(ice, q);                      /* [B, P, Q] */
    struct tensor *shift = nn_linear_forward(&m->class_logit_shift, image_feats);   /* [B, P, 1] */
    struct tensor *scale = nn_linear_forward(&m->class_logit_scale, image_feats);
    /* elu(s) + 1 = relu(s) + exp(min(s, 0)) */
    scale = ag_add(ag_relu(scale), ag_exp(ag_clamp(scale, -INFINITY, 0)));
    return tensor_scope_return(ag_mul(ag_add(logits, shift), scale));
}
