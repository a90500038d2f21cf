/* train.c — the DRaFT loop: one sampler, the variants differ only in where the gradient stops. */
#include "draft/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const method_names[] = {"full", "k", "lv", "refl", "alignprop", "drtune"};

const char *draft_method_name(enum draft_method m)
{
    return (unsigned)m < sizeof method_names / sizeof method_names[0] ? method_names[m] : "?";
}

bool draft_method_parse(const char *s, enum draft_method *m)
{
    static const struct { const char *name; enum draft_method m; } alias[] = {
        {"full", DRAFT_FULL}, {"draft", DRAFT_FULL},         {"k", DRAFT_K},
        {"draft-k", DRAFT_K}, {"lv", DRAFT_LV},              {"draft-lv", DRAFT_LV},
        {"refl", DRAFT_REFL}, {"alignprop", DRAFT_ALIGNPROP}, {"drtune", DRAFT_DRTUNE},
    };
    for (size_t i = 0; i < sizeof alias / sizeof alias[0]; i++)
        if (!strcmp(s, alias[i].name)) {
            *m = alias[i].m;
            return true;
        }
    return false;
}

void draft_method_config_default(struct draft_method_config *c)
{
    memset(c, 0, sizeof *c);
    c->method = DRAFT_LV;
    c->k = 1;
    c->lv_n = 2;
    c->refl_lo = 30;
    c->refl_hi = 39;
    c->steps = 50;
    c->guidance = 7.5;
    c->eta = 0.0;
    c->checkpoint = true;
    c->checkpoint_blocks = true;
}

enum status draft_method_config_check(const struct draft_method_config *c)
{
    if (c->steps < 1 || c->steps > 1000) return tensor_fail(STATUS_VALUE, "steps must be in [1, 1000], got %d", c->steps);
    if (!(c->eta >= 0.0) || !isfinite(c->eta)) return tensor_fail(STATUS_VALUE, "eta must be >= 0, got %g", c->eta);
    if (!isfinite(c->guidance)) return tensor_fail(STATUS_VALUE, "guidance must be finite, got %g", c->guidance);
    switch (c->method) {
    case DRAFT_K:
    case DRAFT_ALIGNPROP:
    case DRAFT_DRTUNE:
        if (c->k < 1 || c->k > c->steps)
            return tensor_fail(STATUS_VALUE, "k must be in [1, steps = %d], got %d", c->steps, c->k);
        break;
    case DRAFT_LV:
        if (c->lv_n < 1 || c->lv_n > 64) return tensor_fail(STATUS_VALUE, "lv_n must be in [1, 64], got %d", c->lv_n);
        break;
    case DRAFT_REFL:
        if (c->refl_lo < 0 || c->refl_hi < c->refl_lo || c->refl_hi >= c->steps)
            return tensor_fail(STATUS_VALUE, "refl window [%d, %d] must lie inside the %d steps [0, %d]", c->refl_lo,
                               c->refl_hi, c->steps, c->steps - 1);
        break;
    case DRAFT_FULL: break;
    default: return tensor_fail(STATUS_VALUE, "unknown method %d", (int)c->method);
    }
    return STATUS_OK;
}

/* ---------------------------------------------------------------- one checkpointed call */

/* what a differentiable call returns */
enum call_out {
    CALL_STEP,   /* the guided DDIM step */
    CALL_X0,     /* ReFL: the step's predicted x0 */
    CALL_EPS,    /* DRTune: the guided eps alone (the step is taken outside, on the unstopped x) */
};

/* What a differentiable UNet call needs; it must outlive the backward (the checkpoint reruns
 * the call from it), so the objective keeps one per call until ag_backward has returned. */
struct call_ctx {
    struct sd_pipeline *p;
    int64_t t;
    struct tensor *context;
    double guidance, eta;
    enum call_out out;
};

static enum status call_fn(void *ctx, struct tensor *const *in, struct tensor **out)
{
    struct call_ctx *c = ctx;
    switch (c->out) {
    case CALL_X0: {
        tensor_scope_begin();
        struct tensor *eps = sd_pipeline_eps(c->p, in[0], c->t, c->context, c->guidance);
        out[0] = tensor_scope_return(eps ? sd_ddim_pred_x0(&c->p->scheduler, eps, c->t, in[0]) : NULL);
        break;
    }
    case CALL_EPS: out[0] = sd_pipeline_eps(c->p, in[0], c->t, c->context, c->guidance); break;
    case CALL_STEP: out[0] = sd_pipeline_step(c->p, in[0], c->t, c->context, c->guidance, c->eta, NULL); break;
    }
    return out[0] ? STATUS_OK : tensor_status();
}

/* one differentiable call: through ag_checkpoint when asked (only x is kept), else plainly */
static struct tensor *call(struct call_ctx *c, struct tensor *x, bool checkpoint)
{
    struct tensor *out = NULL;
    if (!x) return NULL;
    if (checkpoint) {
        if (ag_checkpoint(call_fn, c, 1, &x, 1, &out)) return NULL;
        return out;
    }
    return call_fn(c, &x, &out) ? NULL : out;
}

/* one no-grad DDIM step (the stop-gradient side of every variant) */
static struct tensor *step_no_grad(struct sd_pipeline *p, const struct draft_method_config *c, struct tensor *x,
                                   int64_t t, struct tensor *context)
{
    ag_no_grad_begin();
    struct tensor *y = sd_pipeline_step(p, x, t, context, c->guidance, c->eta, NULL);
    ag_no_grad_end();
    return y;
}

/* One DRTune step. The UNet sees x with its gradient stopped; the DDIM update takes x itself,
 * so the gradient of a later step reaches earlier trained steps through the update's skip path
 * alone. Before the first trained step nothing upstream carries a gradient: a plain no-grad step.
 * The values are those of any other step: the noise (eta > 0) is drawn after the UNet, as there. */
static struct tensor *step_drtune(struct call_ctx *cc, const struct draft_method_config *c, struct tensor *x,
                                  bool train)
{
    if (!x) return NULL;
    if (!train && !x->requires_grad) return step_no_grad(cc->p, c, x, cc->t, cc->context);
    struct tensor *xin = ag_detach(x), *eps;
    if (train) {
        eps = call(cc, xin, c->checkpoint);   /* cc->out is CALL_EPS */
    } else {
        ag_no_grad_begin();
        eps = sd_pipeline_eps(cc->p, xin, cc->t, cc->context, c->guidance);
        ag_no_grad_end();
    }
    return eps ? sd_ddim_step(&cc->p->scheduler, eps, cc->t, x, c->eta, NULL) : NULL;
}

/* [uncond; cond] of B rows each -> the same for n stacked copies: [uncond x n; cond x n] */
static struct tensor *repeat_context(struct tensor *context, int n)
{
    const int64_t B = context->shape[0] / 2;
    struct tensor *parts[2 * 64];
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < n; i++) parts[h * n + i] = ag_narrow(context, 0, h * B, B);
    return ag_concat(2 * n, parts, 0);
}

static struct tensor *mean_reward(struct draft_reward *r, struct tensor *images, const char *const *prompts)
{
    struct tensor *s = draft_reward_score(r, images, prompts);
    return s ? ag_mean(s, 0, NULL, false) : NULL;
}

enum status draft_objective_backward(struct sd_pipeline *p, const struct draft_method_config *c,
                                     struct draft_reward *r, struct tensor *init_latents, struct tensor *context,
                                     const char *const *prompts, int trunc, struct tensor *lv_noise, double scale,
                                     double *reward, struct tensor **final_latents)
{
    enum status s = draft_method_config_check(c);
    if (s) return s;
    if (!init_latents || !context) return tensor_fail(STATUS_VALUE, "objective: no latents or context");
    const int T = c->steps;
    const int64_t B = init_latents->shape[0];
    if ((s = sd_ddim_set_timesteps(&p->scheduler, T))) return s;
    const int64_t *ts = p->scheduler.timesteps;

    /* the only thing the variants change: where the differentiable part starts, and whether
     * the sampler stops early (ReFL) or re-noises its result (LV); or, for DRTune, which steps
     * train (every stride-th from offset) */
    int first_grad = T, stop = T, stride = 0, offset = 0;
    switch (c->method) {
    case DRAFT_FULL: first_grad = 0; break;
    case DRAFT_K: first_grad = T - c->k; break;
    case DRAFT_ALIGNPROP: first_grad = T - (trunc >= 1 && trunc <= T ? trunc : c->k); break;
    case DRAFT_REFL: stop = trunc >= c->refl_lo && trunc <= c->refl_hi ? trunc : c->refl_hi; break;
    case DRAFT_LV: break;
    case DRAFT_DRTUNE:
        stride = T / c->k;
        offset = trunc >= 0 && trunc < stride ? trunc : stride - 1;
        break;
    }
    const int lv_n = c->method == DRAFT_LV ? c->lv_n : 0;
    if (lv_n && lv_noise && (lv_noise->ndim != 5 || lv_noise->shape[0] < lv_n || lv_noise->shape[1] != B))
        return tensor_fail(STATUS_SHAPE, "lv_noise must be [n >= %d, %lld, C, h, w]", lv_n, (long long)B);

    const int n_calls = T + 1;
    struct call_ctx *calls = calloc((size_t)n_calls, sizeof *calls);
    if (!calls) return tensor_fail(STATUS_OOM, "out of host memory");
    const bool vae_ckpt = p->vae.checkpoint, unet_ckpt = p->unet.checkpoint;
    p->vae.checkpoint = c->checkpoint;
    p->unet.checkpoint = c->checkpoint_blocks;

    /* the carried latents live outside the per-step scopes: a no-grad step's temporaries die
     * with it; a differentiable step's live on in the graph (or, checkpointed, only its input) */
    struct tensor *x = tensor_ref(init_latents);
    for (int i = 0; i < stop && x; i++) {
        tensor_scope_begin();
        struct tensor *y;
        if (stride) {   /* DRTune: every step carries the gradient, k of them train */
            const bool train = i >= offset && (i - offset) % stride == 0 && (i - offset) / stride < c->k;
            calls[i] = (struct call_ctx){p, ts[i], context, c->guidance, c->eta, CALL_EPS};
            y = step_drtune(&calls[i], c, x, train);
        } else if (i < first_grad) {
            y = step_no_grad(p, c, x, ts[i], context);
        } else {
            calls[i] = (struct call_ctx){p, ts[i], context, c->guidance, c->eta, CALL_STEP};
            y = call(&calls[i], x, c->checkpoint);
        }
        y = tensor_keep(y);
        tensor_scope_end();
        tensor_free(x);
        x = y;
    }
    tensor_scope_begin();
    tensor_autorelease(x);   /* the rest of the objective runs in one scope, which now owns x */
    struct tensor *J = NULL, *final = x;
    if (x && c->method == DRAFT_REFL) {   /* one differentiable call predicts x0 from x_t at step `stop` */
        calls[T] = (struct call_ctx){p, ts[stop], context, c->guidance, c->eta, CALL_X0};
        final = x = call(&calls[T], x, c->checkpoint);
    }
    if (x && lv_n) {
        /* re-noise the no-grad sample n times to the last timestep t1 and take one guided
         * step from each, all n copies in one batch */
        const int64_t t1 = ts[T - 1];
        const double ab = sd_ddim_alpha_bar(&p->scheduler, t1);
        struct tensor *eps = NULL;
        if (lv_noise) {   /* the caller's noise may be on the host: move it beside the latents */
            eps = ag_narrow(lv_noise, 0, 0, lv_n);
            if (eps && tensor_device(eps) != tensor_device(x)) eps = ag_to_device(eps, tensor_device(x));
        } else {
            int64_t shp[5] = {lv_n, B, x->shape[1], x->shape[2], x->shape[3]};
            eps = ag_randn(x->dtype, 5, shp, tensor_device(x));
        }
        int64_t flat[4] = {lv_n * B, x->shape[1], x->shape[2], x->shape[3]};
        struct tensor *xs[64];
        for (int i = 0; i < lv_n; i++) xs[i] = x;
        struct tensor *x0n = ag_concat(lv_n, xs, 0);
        struct tensor *x1 = ag_add(ag_scale(x0n, sqrt(ab)),
                                   ag_scale(ag_reshape(ag_to_dtype(eps, x->dtype), 4, flat), sqrt(1.0 - ab)));
        calls[T] = (struct call_ctx){p, t1, repeat_context(context, lv_n), c->guidance, c->eta, CALL_STEP};
        const char **pr = malloc((size_t)(lv_n * B) * sizeof *pr);
        if (!pr) {
            tensor_fail(STATUS_OOM, "out of host memory");
            x = NULL;
        } else {
            for (int i = 0; i < lv_n; i++)
                for (int64_t b = 0; b < B; b++) pr[i * B + b] = prompts ? prompts[b] : "";
            struct tensor *y = call(&calls[T], x1, c->checkpoint);
            J = mean_reward(r, sd_pipeline_decode(p, y), pr);
            free(pr);
        }
    } else if (x) {
        J = mean_reward(r, sd_pipeline_decode(p, x), prompts);
    }
    s = J ? STATUS_OK : tensor_status();
    if (!s && !J->requires_grad)
        s = tensor_fail(STATUS_VALUE, "objective: the reward does not depend on any trainable weight (no LoRA attached?)");
    if (!s) {
        double j = tensor_get_flat(tensor_to_device(J, DEVICE_CPU), 0);
        if (!isfinite(j))
            s = tensor_fail(STATUS_VALUE, "objective: the reward is %s: the sampling diverged (the guidance, the learning "
                            "rate, or the weights)", isnan(j) ? "NaN" : j > 0 ? "+infinity" : "-infinity");
        if (reward) *reward = j;
    }
    if (!s) s = ag_backward(ag_scale(J, -scale), NULL, false);
    if (!s && final_latents) *final_latents = tensor_keep(ag_detach(final));
    tensor_scope_end();
    p->vae.checkpoint = vae_ckpt;
    p->unet.checkpoint = unet_ckpt;
    free(calls);
    return s;
}

enum status draft_sample_eval(struct sd_pipeline *p, const struct draft_method_config *c, struct draft_reward *r,
                              struct tensor *init_latents, struct tensor *context, const char *const *prompts,
                              struct tensor **images, double *reward, double *per_image)
{
    struct sd_sample_opts o = {.steps = c->steps, .guidance = c->guidance, .eta = c->eta};
    enum status s = STATUS_OK;
    ag_no_grad_begin();
    tensor_scope_begin();
    struct tensor *img = sd_pipeline_sample(p, init_latents, context, &o, NULL);
    if (!img) s = tensor_status();
    if (!s && r) s = draft_reward_score_values(r, img, prompts, per_image, reward);
    if (!s && images) *images = tensor_keep(img);
    tensor_scope_end();
    ag_no_grad_end();
    return s;
}
