/* test_draft.c — the DRaFT family's reward gradients against golden/draft.safetensors (the
 * reference computed them in float64), central finite differences in float64, and the
 * identities between the variants: K = T is full DRaFT, checkpointed equals plain, LV with
 * n = 1 equals the re-noise formula written out. */
#include "tests/harness.h"
#include "tests/parity.h"
#include "diffusion/lora.h"
#include "draft/image.h"
#include "draft/run.h"
#include "draft/train.h"

#include <cjson/cJSON.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* the golden reward: r_b = mean_{c,h,w}(image_b * w), w [3, H, W] */
struct weighted_ctx {
    struct tensor *w;
};

static struct tensor *weighted_score(struct draft_reward *r, struct tensor *images, const char *const *prompts)
{
    (void)prompts;
    struct weighted_ctx *c = r->ctx;
    int dims[3] = {1, 2, 3};
    tensor_scope_begin();
    struct tensor *w = ag_to_dtype(c->w, images->dtype);
    return tensor_scope_return(ag_mean(ag_mul(images, w), 3, dims, false));
}

/* everything a variant needs, in one dtype */
struct fixture {
    struct safetensors *gold, *pipe;   /* golden/draft and golden/pipeline */
    struct sd_pipeline p;
    struct sd_lora lora;
    struct draft_reward reward;
    struct weighted_ctx rctx;
    struct tensor *context, *init, *lv_noise;
};

/* false (after printing SKIP) when the parity data is absent */
static bool fixture_open(struct fixture *f, enum dtype dt)
{
    char dir[512], gp[512], pp[512];
    if (!parity_path("tiny-sd/model_index.json", dir, sizeof dir) ||
        !parity_path("golden/draft.safetensors", gp, sizeof gp) ||
        !parity_path("golden/pipeline.safetensors", pp, sizeof pp))
        return false;
    *strrchr(dir, '/') = 0;
    memset(f, 0, sizeof *f);
    f->gold = safetensors_open(gp);
    f->pipe = safetensors_open(pp);
    ck_assert_msg(f->gold && f->pipe, "%s", tensor_error());
    const struct safetensors *gold = f->gold, *pipe = f->pipe;
    ck_assert_msg(sd_pipeline_load(&f->p, dir, dt, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
    ck_assert_msg(sd_lora_init(&f->lora, &f->p.unet, 2, 2.0, NULL, dt, 1) == STATUS_OK, "%s", tensor_error());
    /* the reference's LoRA values: "lora.<module>.lora_A.weight" */
    for (int i = 0; i < f->lora.params.n; i++) {
        char key[600];
        snprintf(key, sizeof key, "lora.%s", f->lora.params.v[i].name);
        ck_assert_msg(safetensors_load_into(gold, key, f->lora.params.v[i].t) == STATUS_OK, "%s", tensor_error());
    }
    ck_assert_int_eq(f->lora.params.n, 2 * f->p.unet.n_projs);
    ck_assert_int_eq(sd_lora_attach(&f->lora, &f->p.unet, 1.0), STATUS_OK);
    tensor_scope_begin();
    struct tensor *u = safetensors_load(pipe, "uncond_input_ids", DTYPE_I32, DEVICE_CPU);
    struct tensor *c = safetensors_load(pipe, "input_ids", DTYPE_I32, DEVICE_CPU);
    ag_no_grad_begin();
    f->context = tensor_keep(sd_pipeline_context(&f->p, u, c));
    ag_no_grad_end();
    f->init = tensor_keep(safetensors_load(gold, "init_latents", dt, DEVICE_CPU));
    f->lv_noise = tensor_keep(safetensors_load(gold, "lv_noise", dt, DEVICE_CPU));
    f->rctx.w = tensor_keep(safetensors_load(gold, "reward_weights", dt, DEVICE_CPU));
    tensor_scope_end();
    ck_assert_msg(f->context && f->init && f->lv_noise && f->rctx.w, "%s", tensor_error());
    snprintf(f->reward.name, sizeof f->reward.name, "weighted");
    f->reward.score = weighted_score;
    f->reward.ctx = &f->rctx;
    return true;
}

static void zero_grads(struct fixture *f);

static void fixture_close(struct fixture *f)
{
    zero_grads(f);
    safetensors_close(f->gold);
    safetensors_close(f->pipe);
    tensor_free(f->context);
    tensor_free(f->init);
    tensor_free(f->lv_noise);
    tensor_free(f->rctx.w);
    sd_lora_detach(&f->p.unet);
    sd_lora_free(&f->lora);
    sd_pipeline_free(&f->p);
}

static void zero_grads(struct fixture *f)
{
    for (int i = 0; i < f->lora.params.n; i++) ag_zero_grad(f->lora.params.v[i].t);
}

static void config_for(struct draft_method_config *c, const char *variant)
{
    draft_method_config_default(c);
    c->steps = 4;
    c->guidance = 7.5;
    c->eta = 0.0;
    if (!strcmp(variant, "full")) c->method = DRAFT_FULL;
    else if (!strcmp(variant, "lv")) c->method = DRAFT_LV, c->lv_n = 2;
    else c->method = DRAFT_K, c->k = variant[1] - '0';
}

/* J and the gradients of J (not of the loss -J) for a variant */
static double run_variant(struct fixture *f, const struct draft_method_config *c, struct tensor **final)
{
    double J = NAN;
    zero_grads(f);
    enum status s = draft_objective_backward(&f->p, c, &f->reward, f->init, f->context, NULL, -1, f->lv_noise, -1.0,
                                             &J, final);
    ck_assert_msg(s == STATUS_OK, "%s", tensor_error());
    return J;
}

START_TEST(test_golden_gradients)
{
    LEAK_CHECK_BEGIN();
    struct fixture f;
    if (!fixture_open(&f, DTYPE_F32)) return;
    const struct safetensors *gold = f.gold;
    static const char *const variants[] = {"full", "k1", "k2", "lv"};
    for (int v = 0; v < 4; v++) {
        struct draft_method_config c;
        config_for(&c, variants[v]);
        struct tensor *final = NULL;
        double J = run_variant(&f, &c, &final);
        tensor_scope_begin();
        char key[700];
        snprintf(key, sizeof key, "%s.reward", variants[v]);
        struct tensor *gr = parity_load(gold, key);
        double Jg = tensor_get_flat(gr, 0);
        printf("draft %s: J %.9g golden %.9g\n", variants[v], J, Jg);
        ck_assert_msg(fabs(J - Jg) <= PARITY_RTOL_FWD * fabs(Jg) + 1e-7, "%s: J %.9g vs golden %.9g", variants[v], J, Jg);
        snprintf(key, sizeof key, "%s.final_latents", variants[v]);
        if (safetensors_find(gold, key))
            ck_assert(parity_check(key, final, parity_load(gold, key), PARITY_RTOL_FWD, parity_rms(gold, key)));
        snprintf(key, sizeof key, "%s.grad.", variants[v]);
        const double S = parity_rms(gold, key);
        int ok = 0;
        for (int i = 0; i < f.lora.params.n; i++) {
            snprintf(key, sizeof key, "%s.grad.%s", variants[v], f.lora.params.v[i].name);
            struct tensor *g = f.lora.params.v[i].t->grad;
            ck_assert_msg(g != NULL, "%s: no gradient", key);
            ok += parity_check(key, g, parity_load(gold, key), PARITY_RTOL_GRAD, S);
        }
        ck_assert_int_eq(ok, f.lora.params.n);
        tensor_scope_end();
        tensor_free(final);
    }
    fixture_close(&f);
    LEAK_CHECK_END();
}
END_TEST

/* central differences of J in float64 on a few LoRA coordinates, for full DRaFT (the other
 * variants stop gradients on purpose, so a finite difference of their sampler is not their
 * gradient) */
START_TEST(test_finite_differences)
{
    LEAK_CHECK_BEGIN();
    struct fixture f;
    if (!fixture_open(&f, DTYPE_F64)) return;
    static const char *const variants[] = {"full"};
    /* the first self-attention query (A and B), and the last projection's B */
    static const int params[] = {0, 1, -1};
    for (int v = 0; v < 1; v++) {
        struct draft_method_config c;
        config_for(&c, variants[v]);
        run_variant(&f, &c, NULL);
        for (int k = 0; k < 3; k++) {
            int pi = params[k] >= 0 ? params[k] : f.lora.params.n - 1;
            struct tensor *t = f.lora.params.v[pi].t;
            const double g = tensor_get_flat(t->grad, 1);
            double *val = (double *)tensor_data_ptr(t) + 1;
            const double h = 1e-5, x0 = *val;
            double Jp, Jm;
            ag_no_grad_begin();
            *val = x0 + h;
            ck_assert_int_eq(draft_sample_eval(&f.p, &c, &f.reward, f.init, f.context, NULL, NULL, &Jp, NULL), STATUS_OK);
            *val = x0 - h;
            ck_assert_int_eq(draft_sample_eval(&f.p, &c, &f.reward, f.init, f.context, NULL, NULL, &Jm, NULL), STATUS_OK);
            ag_no_grad_end();
            *val = x0;
            const double fd = (Jp - Jm) / (2 * h);
            printf("gradcheck draft.%s %s[1]: analytic %.10g fd %.10g\n", variants[v], f.lora.params.v[pi].name, g, fd);
            ck_assert_msg(fabs(g - fd) <= 1e-5 * fabs(fd) + 1e-9, "full: %.12g vs fd %.12g", g, fd);
        }
    }
    fixture_close(&f);
    LEAK_CHECK_END();
}
END_TEST


/* the gradients of every LoRA tensor, copied out */
static struct tensor **grads_copy(struct fixture *f)
{
    struct tensor **g = calloc((size_t)f->lora.params.n, sizeof *g);
    ck_assert_ptr_nonnull(g);
    for (int i = 0; i < f->lora.params.n; i++) {
        ck_assert_ptr_nonnull(f->lora.params.v[i].t->grad);
        g[i] = tensor_contiguous(f->lora.params.v[i].t->grad);
    }
    return g;
}

static void grads_free(struct fixture *f, struct tensor **g)
{
    for (int i = 0; i < f->lora.params.n; i++) tensor_free(g[i]);
    free(g);
}

/* K = T is full DRaFT; each call checkpointed equals plain (bit for bit on the CPU); with each
 * UNet block inside checkpointed too (the default) it equals them to f32 rounding (1e-4 over the
 * four differentiable steps of full DRaFT: the golden gradients' bound is 1e-3): a tensor read
 * by a block and by the skip path sums its gradient in another order */
START_TEST(test_identities)
{
    LEAK_CHECK_BEGIN();
    struct fixture f;
    if (!fixture_open(&f, DTYPE_F32)) return;
    struct draft_method_config c;
    config_for(&c, "full");
    const double Jf = run_variant(&f, &c, NULL);
    struct tensor **gf = grads_copy(&f);
    c.method = DRAFT_K;
    c.k = c.steps;
    const double Jk = run_variant(&f, &c, NULL);
    struct tensor **gk = grads_copy(&f);
    config_for(&c, "full");
    ck_assert(c.checkpoint && c.checkpoint_blocks);
    c.checkpoint = c.checkpoint_blocks = false;
    const double Jp = run_variant(&f, &c, NULL);
    struct tensor **gp_ = grads_copy(&f);
    c.checkpoint = true;   /* each call, not its blocks */
    const double Jc = run_variant(&f, &c, NULL);
    struct tensor **gc_ = grads_copy(&f);
    ck_assert(Jf == Jk && Jp == Jc && Jf == Jp);   /* the forward is the same either way */
    double worst = 0;
    for (int i = 0; i < f.lora.params.n; i++) {
        ck_assert_msg(test_max_abs_diff(gf[i], gk[i]) == 0.0, "K=T differs from full at %s", f.lora.params.v[i].name);
        ck_assert_msg(test_max_abs_diff(gc_[i], gp_[i]) == 0.0, "checkpointed calls differ from plain at %s (%g)",
                      f.lora.params.v[i].name, test_max_abs_diff(gc_[i], gp_[i]));
        const double e = test_rel_err(gf[i], gp_[i]);
        worst = fmax(worst, e);
        ck_assert_msg(e <= 1e-4, "checkpointed blocks differ from plain at %s (rel %g)", f.lora.params.v[i].name, e);
    }
    printf("draft identities: checkpointed UNet blocks against plain, worst LoRA gradient rel %.2e\n", worst);
    grads_free(&f, gf);
    grads_free(&f, gk);
    grads_free(&f, gp_);
    grads_free(&f, gc_);
    fixture_close(&f);
    LEAK_CHECK_END();
}
END_TEST

/* LV with n = 1 and fixed noise is the re-noise formula written out: x0 sampled with no graph,
 * x1 = sqrt(abar(t1)) x0 + sqrt(1 - abar(t1)) eps, one guided DDIM step, reward of its decode */
START_TEST(test_lv_formula)
{
    LEAK_CHECK_BEGIN();
    struct fixture f;
    if (!fixture_open(&f, DTYPE_F32)) return;
    const struct safetensors *gold = f.gold;
    struct draft_method_config c;
    config_for(&c, "lv");
    c.lv_n = 1;
    const double J = run_variant(&f, &c, NULL);
    struct tensor **g = grads_copy(&f);

    zero_grads(&f);
    tensor_scope_begin();
    ck_assert_int_eq(sd_ddim_set_timesteps(&f.p.scheduler, 4), STATUS_OK);
    ag_no_grad_begin();
    struct tensor *x = f.init;
    for (int i = 0; i < 4; i++) x = sd_pipeline_step(&f.p, x, f.p.scheduler.timesteps[i], f.context, 7.5, 0.0, NULL);
    ag_no_grad_end();
    ck_assert(parity_check("lv.x0", x, parity_load(gold, "lv.x0"), PARITY_RTOL_FWD, parity_rms(gold, "lv.x0")));
    const int64_t t1 = f.p.scheduler.timesteps[3];
    const double ab = f.p.scheduler.alphas_cumprod[t1];
    struct tensor *eps = ag_squeeze(ag_narrow(f.lv_noise, 0, 0, 1), 0);
    struct tensor *x1 = ag_add(ag_scale(x, sqrt(ab)), ag_scale(eps, sqrt(1.0 - ab)));
    struct tensor *y = sd_pipeline_step(&f.p, x1, t1, f.context, 7.5, 0.0, NULL);
    struct tensor *r = weighted_score(&f.reward, sd_pipeline_decode(&f.p, y), NULL);
    struct tensor *Jd = ag_mean(r, 0, NULL, false);
    ck_assert_int_eq(ag_backward(Jd, NULL, false), STATUS_OK);
    const double jd = tensor_get_flat(Jd, 0);
    tensor_scope_end();
    ck_assert_msg(fabs(J - jd) <= 1e-6 * fabs(jd), "LV n=1: %.9g vs formula %.9g", J, jd);
    for (int i = 0; i < f.lora.params.n; i++) {
        const double e = test_rel_err(g[i], f.lora.params.v[i].t->grad);
        ck_assert_msg(e <= 1e-5, "LV n=1 gradient of %s differs from the formula's: rel %g", f.lora.params.v[i].name, e);
    }
    grads_free(&f, g);
    fixture_close(&f);
    LEAK_CHECK_END();
}
END_TEST

/* DRTune's gradient is the derivative of the sampler with every UNet input frozen at its value.
 * With x̄_i the sampler's latents and e_i = eps_θ(x̄_i), the surrogate
 *   J~(θ') : x_0 = init, x_{i+1} = ddim_step(eps_i, t_i, x_i), eps_i = eps_θ'(x̄_i) at a trained
 *            step and e_i (a constant) at the others, J~ = reward(decode(x_T))
 * has ∇J~(θ) = DRTune's gradient, which central differences give in float64. This fails if the
 * UNet's input kept its gradient, if an untrained step trained, or if the skip path were cut. */
static double drtune_surrogate(struct fixture *f, const struct draft_method_config *c, const bool *train,
                               struct tensor *const *xbar, struct tensor *const *ebar)
{
    ag_no_grad_begin();
    tensor_scope_begin();
    struct tensor *x = f->init;
    for (int i = 0; i < c->steps; i++) {
        const int64_t t = f->p.scheduler.timesteps[i];
        struct tensor *eps = train[i] ? sd_pipeline_eps(&f->p, xbar[i], t, f->context, c->guidance) : ebar[i];
        x = sd_ddim_step(&f->p.scheduler, eps, t, x, c->eta, NULL);
    }
    struct tensor *J = ag_mean(weighted_score(&f->reward, sd_pipeline_decode(&f->p, x), NULL), 0, NULL, false);
    ck_assert_msg(J != NULL, "%s", tensor_error());
    const double j = tensor_get_flat(J, 0);
    tensor_scope_end();
    ag_no_grad_end();
    return j;
}

START_TEST(test_drtune_finite_differences)
{
    LEAK_CHECK_BEGIN();
    struct fixture f;
    if (!fixture_open(&f, DTYPE_F64)) return;
    struct draft_method_config c;
    config_for(&c, "full");
    c.method = DRAFT_DRTUNE;
    c.k = 2;   /* stride 2 over T = 4: the offset 0 trains steps 0 and 2 */
    const bool train[4] = {true, false, true, false};
    zero_grads(&f);
    double J = NAN, Jplain = NAN;
    ck_assert_msg(draft_objective_backward(&f.p, &c, &f.reward, f.init, f.context, NULL, 0, NULL, -1.0, &J, NULL) ==
                      STATUS_OK,
                  "%s", tensor_error());
    /* x̄ and e at θ: the plain sampler's */
    struct tensor *xbar[4], *ebar[4];
    ag_no_grad_begin();
    struct tensor *x = tensor_ref(f.init);
    for (int i = 0; i < 4; i++) {
        const int64_t t = f.p.scheduler.timesteps[i];
        xbar[i] = x;
        ebar[i] = tensor_keep(sd_pipeline_eps(&f.p, x, t, f.context, c.guidance));
        x = tensor_keep(sd_ddim_step(&f.p.scheduler, ebar[i], t, x, c.eta, NULL));
        ck_assert_msg(ebar[i] && x, "%s", tensor_error());
    }
    tensor_free(x);
    ag_no_grad_end();
    ck_assert_int_eq(draft_sample_eval(&f.p, &c, &f.reward, f.init, f.context, NULL, NULL, &Jplain, NULL), STATUS_OK);
    const double J0 = drtune_surrogate(&f, &c, train, xbar, ebar);
    /* the same values (the evaluation averages the rewards in another order) */
    ck_assert_msg(fabs(J - Jplain) <= 1e-13 * fabs(Jplain) && fabs(J0 - Jplain) <= 1e-13 * fabs(Jplain),
                  "DRTune's forward differs from the sampler's: %.17g, surrogate %.17g, sampler %.17g", J, J0, Jplain);
    static const int params[] = {0, 1, -1};
    for (int k = 0; k < 3; k++) {
        const int pi = params[k] >= 0 ? params[k] : f.lora.params.n - 1;
        struct tensor *t = f.lora.params.v[pi].t;
        ck_assert_ptr_nonnull(t->grad);
        const double g = tensor_get_flat(t->grad, 1);
        double *val = (double *)tensor_data_ptr(t) + 1;
        const double h = 1e-5, v0 = *val;
        *val = v0 + h;
        const double Jp = drtune_surrogate(&f, &c, train, xbar, ebar);
        *val = v0 - h;
        const double Jm = drtune_surrogate(&f, &c, train, xbar, ebar);
        *val = v0;
        const double fd = (Jp - Jm) / (2 * h);
        printf("gradcheck drtune k2 %s[1]: analytic %.10g fd %.10g\n", f.lora.params.v[pi].name, g, fd);
        fflush(stdout);
        ck_assert_msg(fabs(fd) > 1e-10, "a vacuous check: the surrogate does not move with %s", f.lora.params.v[pi].name);
        ck_assert_msg(fabs(g - fd) <= 1e-5 * fabs(fd) + 1e-12, "drtune: %.12g vs fd %.12g", g, fd);
    }
    for (int i = 0; i < 4; i++) {
        tensor_free(xbar[i]);
        tensor_free(ebar[i]);
    }
    fixture_close(&f);
    LEAK_CHECK_END();
}
END_TEST

/* DRTune with k = 1 at its default offset trains only the last step, whose input carries no
 * gradient in DRaFT-K either: the two are the same objective. And checkpointing changes nothing. */
START_TEST(test_drtune_k1_is_draft_k1)
{
    LEAK_CHECK_BEGIN();
    struct fixture f;
    if (!fixture_open(&f, DTYPE_F32)) return;
    struct draft_method_config c;
    config_for(&c, "k1");
    const double Jk = run_variant(&f, &c, NULL);
    struct tensor **gk = grads_copy(&f);
    c.method = DRAFT_DRTUNE;
    const double Jd = run_variant(&f, &c, NULL);
    struct tensor **gd = grads_copy(&f);
    ck_assert_msg(Jk == Jd, "J: K=1 %.9g, DRTune k=1 %.9g", Jk, Jd);
    double worst = 0;
    for (int i = 0; i < f.lora.params.n; i++) {
        const double e = test_rel_err(gd[i], gk[i]);
        worst = fmax(worst, e);
        ck_assert_msg(e <= 1e-6, "DRTune k=1 differs from DRaFT-K k=1 at %s (rel %g)", f.lora.params.v[i].name, e);
    }
    printf("drtune k1 against draft-k1: worst LoRA gradient rel %.2e\n", worst);
    /* k = 2: its trained calls checkpointed (the default) or not, the same bits */
    c.k = 2;
    c.checkpoint = c.checkpoint_blocks = false;
    run_variant(&f, &c, NULL);
    struct tensor **gp_ = grads_copy(&f);
    c.checkpoint = true;
    run_variant(&f, &c, NULL);
    struct tensor **gc_ = grads_copy(&f);
    for (int i = 0; i < f.lora.params.n; i++)
        ck_assert_msg(test_max_abs_diff(gc_[i], gp_[i]) == 0.0, "DRTune: checkpointed calls differ from plain at %s",
                      f.lora.params.v[i].name);
    grads_free(&f, gp_);
    grads_free(&f, gc_);
    grads_free(&f, gk);
    grads_free(&f, gd);
    fixture_close(&f);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- whole runs */

static void run_config(struct draft_run_config *c, const char *dir, const char *out)
{
    draft_run_config_default(c);
    snprintf(c->model, sizeof c->model, "%s", dir);
    snprintf(c->out, sizeof c->out, "%s", out);
    snprintf(c->reward, sizeof c->reward, "brightness=1");
    snprintf(c->prompts, sizeof c->prompts, "@animals");
    c->method.steps = 4;
    c->method.lv_n = 2;
    c->batch = 2;
    c->iters = 4;
    c->eval_images = 2;
    c->image_width = c->image_height = 64;   /* 8x8 latents: the VAE decode dominates the time */
    c->lora_rank = 4;
    c->lora_alpha = 4;
    c->opt.lr = 3e-3;
    c->save_every = 2;
    c->progress = false;
    c->seed = 7;
    c->overwrite = true;   /* the runs below reuse their folders; test_run_and_resume checks the refusal */
}

/* a short run raises the reward on held-out seeds; an interrupted and resumed run ends with the
 * same LoRA bytes as an uninterrupted one */
START_TEST(test_run_and_resume)
{
    char dir[512];
    if (!parity_path("tiny-sd/model_index.json", dir, sizeof dir)) return;
    *strrchr(dir, '/') = 0;
    LEAK_CHECK_BEGIN();
    char a[256], b[256], cmd[600];
    snprintf(a, sizeof a, "/tmp/draft_run_a_%d", (int)getpid());
    snprintf(b, sizeof b, "/tmp/draft_run_b_%d", (int)getpid());
    struct draft_run_config c;
    struct draft_run_result ra, rb;
    run_config(&c, dir, a);
    ck_assert_msg(draft_run(&c, &ra) == STATUS_OK, "%s", tensor_error());
    printf("draft run: reward %.6f -> %.6f in %d steps, %.1f s\n", ra.reward_before, ra.reward_after, ra.steps, ra.seconds);
    ck_assert_int_eq(ra.steps, 4);
    ck_assert_msg(ra.reward_after > ra.reward_before, "reward did not rise: %g -> %g", ra.reward_before, ra.reward_after);
    /* a new run into that folder is refused unless it resumes or overwrites: the LoRA stays */
    struct draft_run_config c2;
    run_config(&c2, dir, a);
    c2.overwrite = false;
    ck_assert_int_eq(draft_run(&c2, &rb), STATUS_VALUE);
    ck_assert_msg(strstr(tensor_error(), "holds an earlier run (lora.safetensors): --resume continues it, --overwrite"),
                  "%s", tensor_error());
    tensor_clear_error();
    c2.dry_run = true;   /* a dry run writes nothing, so it may measure there */
    ck_assert_msg(draft_run(&c2, &rb) == STATUS_OK, "%s", tensor_error());

    run_config(&c, dir, b);
    c.stop_after = 2;
    ck_assert_msg(draft_run(&c, &rb) == STATUS_OK, "%s", tensor_error());
    ck_assert(rb.interrupted);
    ck_assert_int_eq(rb.steps, 2);
    c.stop_after = 0;
    c.resume = true;
    ck_assert_msg(draft_run(&c, &rb) == STATUS_OK, "%s", tensor_error());
    ck_assert_int_eq(rb.steps, 4);
    ck_assert(rb.reward_before == ra.reward_before && rb.reward_after == ra.reward_after);
    static const char *const files[] = {"lora.safetensors", "lora_kohya.safetensors", "checkpoint.safetensors"};
    for (int i = 0; i < 3; i++) {
        char pa[400], pb[400];
        snprintf(pa, sizeof pa, "%s/%s", a, files[i]);
        snprintf(pb, sizeof pb, "%s/%s", b, files[i]);
        size_t na, nb;
        unsigned char *da = test_slurp(pa, &na), *db = test_slurp(pb, &nb);
        ck_assert_msg(na == nb && !memcmp(da, db, na), "%s differs between the resumed and the uninterrupted run", files[i]);
        free(da);
        free(db);
    }
    snprintf(cmd, sizeof cmd, "%s/report.html", a);
    ck_assert_int_eq(access(cmd, R_OK), 0);
    snprintf(cmd, sizeof cmd, "rm -rf %s %s", a, b);
    ck_assert_int_eq(system(cmd), 0);
    LEAK_CHECK_END();
}
END_TEST

/* a non-square run (64 wide, 128 high: 8x16 latents) goes through sampling, the reward, the
 * backward and the grids; its before/after grids hold one tall tile */
START_TEST(test_run_non_square)
{
    char dir[512];
    if (!parity_path("tiny-sd/model_index.json", dir, sizeof dir)) return;
    *strrchr(dir, '/') = 0;
    LEAK_CHECK_BEGIN();
    char out[256], path[400];
    snprintf(out, sizeof out, "/tmp/draft_run_ns_%d", (int)getpid());
    struct draft_run_config c;
    struct draft_run_result r;
    run_config(&c, dir, out);
    c.image_width = 64;
    c.image_height = 128;
    c.iters = 1;
    c.batch = 1;
    c.eval_images = 1;
    c.method.steps = 2;
    ck_assert_msg(draft_run(&c, &r) == STATUS_OK, "%s", tensor_error());
    ck_assert_int_eq(r.steps, 1);
    ck_assert(isfinite(r.reward_before) && isfinite(r.reward_after));
    snprintf(path, sizeof path, "%s/after.png", out);
    struct draft_image im;
    ck_assert_msg(draft_png_read(path, &im) == STATUS_OK, "%s", tensor_error());
    /* one tile scaled to DRAFT_GRID_AUTO_WIDTH wide, 128 x 256, its caption below (labels are
     * given: the geometry does not depend on the font), gaps around (draft/image.h) */
    ck_assert_int_eq(im.w, 128 + 2 * DRAFT_GRID_GAP);
    ck_assert_int_eq(im.h, 256 + DRAFT_GRID_CAPTION_H + 2 * DRAFT_GRID_GAP);
    draft_image_free(&im);
    /* metrics.jsonl is JSON line by line: one held-out image has no diversity, written null */
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    size_t n;
    char *text = (char *)test_slurp(path, &n);
    int lines = 0, nulls = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), lines++) {
        cJSON *j = cJSON_Parse(line);
        ck_assert_msg(j, "metrics.jsonl line %d is not JSON: %s", lines + 1, line);
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "diversity");
        nulls += cJSON_IsNull(d);
        ck_assert(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "reward")));
        cJSON_Delete(j);
    }
    free(text);
    ck_assert_int_eq(lines, 3);   /* before, step 1, after */
    ck_assert_int_eq(nulls, 2);
    snprintf(path, sizeof path, "%s/report.html", out);   /* the settings table names the size */
    text = (char *)test_slurp(path, &n);
    ck_assert_msg(strstr(text, "image size</th><td>64x128<"), "report.html has no 'image size' row of 64x128");
    free(text);
    /* resuming at another size is refused: the reward before training was measured at 64x128 */
    run_config(&c, dir, out);
    c.resume = true;
    ck_assert_int_eq(draft_run(&c, &r), STATUS_VALUE);
    ck_assert_msg(strstr(tensor_error(), "was trained at --size 64x128, this run has 64x64"), "%s", tensor_error());
    tensor_clear_error();
    /* a size that is not a multiple of the model's (64 for the tiny SD 1.x model: the VAE's 8 times
     * the UNet's 3 down-samplers) names both sides */
    struct sd_pipeline p;
    ck_assert_msg(sd_pipeline_load(&p, dir, DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
    const int m = (1 << (p.vae.cfg.n_blocks - 1)) << p.unet.n_samplers;
    sd_pipeline_free(&p);
    run_config(&c, dir, out);
    c.image_width = m;
    c.image_height = m + m / 2;
    ck_assert_int_eq(draft_run(&c, &r), STATUS_VALUE);
    char want[160];
    snprintf(want, sizeof want, "--size %dx%d: width and height must be positive multiples of %d", m, m + m / 2, m);
    ck_assert_msg(strstr(tensor_error(), want), "'%s' lacks '%s'", tensor_error(), want);
    tensor_clear_error();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", out);
    ck_assert_int_eq(system(cmd), 0);
    LEAK_CHECK_END();
}
END_TEST

/* relative difference |a - b| / |b| */
static double rel_diff(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-30); }

/* On a GPU: the same short run on cuda and on the cpu (same seed, so the same prompts, latents,
 * LoRA init and noise: Philox gives the same bits on both) agree in the reward before and after
 * and in the trained LoRA (the embedded model, 2 iterations). Without a CUDA device (or a build without the backend) it skips;
 * DRAFT_CUDA_TEST_ON_CPU=1 runs it with the CPU standing in for the GPU (checks the test itself).
 * Alone: CK_RUN_CASE=cuda. */
START_TEST(test_run_cuda_matches_cpu)
{
    enum device gpu = DEVICE_CUDA;
    if (getenv("DRAFT_CUDA_TEST_ON_CPU")) {
        gpu = DEVICE_CPU;
        printf("DRAFT_CUDA_TEST_ON_CPU: the CPU stands in for the GPU\n");
    } else if (draft_device_check(DEVICE_CUDA)) {   /* here, in the test's own process: a forked
                                                      * child cannot use a driver its parent
                                                      * initialised, so main() must not touch CUDA */
        printf("skip: no CUDA device (%s)\n", tensor_error());
        return;
    }
    /* the embedded model: it is in the repository, so the test needs no parity data on the GPU
     * machine (which gets only the working tree) */
    char dir[512];
    ck_assert_msg(draft_embedded_model(dir, sizeof dir) == STATUS_OK, "%s", tensor_error());
    LEAK_CHECK_BEGIN();
    /* the default method, and DRTune, whose gradient runs through every step's update */
    static const enum draft_method methods[2] = {DRAFT_LV, DRAFT_DRTUNE};
    for (int mi = 0; mi < 2; mi++) {
        char out[2][256], cmd[600];
        struct draft_run_result res[2];
        const enum device devs[2] = {gpu, DEVICE_CPU};
        for (int k = 0; k < 2; k++) {
            snprintf(out[k], sizeof out[k], "/tmp/draft_run_%s%d_%d", device_name(devs[k]), k, (int)getpid());
            struct draft_run_config c;
            run_config(&c, dir, out[k]);
            c.iters = 2;
            c.save_every = 0;
            c.image_width = c.image_height = 0;   /* the model's own (32 px) */
            c.device = devs[k];
            c.method.method = methods[mi];
            c.method.k = 2;
            ck_assert_msg(draft_run(&c, &res[k]) == STATUS_OK, "%s run: %s", device_name(devs[k]), tensor_error());
            ck_assert_int_eq(res[k].steps, 2);
            printf("draft %s run on %s: reward %.9g -> %.9g, %.1f s\n", draft_method_name(methods[mi]),
                   device_name(devs[k]), res[k].reward_before, res[k].reward_after, res[k].seconds);
        }
        const double eb = rel_diff(res[0].reward_before, res[1].reward_before);
        const double ea = rel_diff(res[0].reward_after, res[1].reward_after);
        printf("draft cuda-vs-cpu: reward_before rel %.3g, reward_after rel %.3g\n", eb, ea);
        ck_assert_msg(eb <= 1e-4, "reward_before: cuda %.9g vs cpu %.9g (rel %g > 1e-4)", res[0].reward_before,
                      res[1].reward_before, eb);
        ck_assert_msg(ea <= 1e-3, "reward_after: cuda %.9g vs cpu %.9g (rel %g > 1e-3)", res[0].reward_after,
                      res[1].reward_after, ea);
        char pa[400], pb[400];
        snprintf(pa, sizeof pa, "%s/lora.safetensors", out[0]);
        snprintf(pb, sizeof pb, "%s/lora.safetensors", out[1]);
        struct safetensors *la = safetensors_open(pa), *lb = safetensors_open(pb);
        ck_assert_msg(la && lb, "%s", tensor_error());
        ck_assert_int_eq(la->n, lb->n);
        ck_assert_int_gt(la->n, 0);
        double worst = 0;
        for (int i = 0; i < la->n; i++) {
            const char *name = la->entries[i].name;
            tensor_scope_begin();
            struct tensor *ta = safetensors_load(la, name, DTYPE_F64, DEVICE_CPU);
            struct tensor *tb = safetensors_load(lb, name, DTYPE_F64, DEVICE_CPU);
            ck_assert_msg(ta && tb, "%s: %s", name, tensor_error());
            const double e = test_rel_err(ta, tb);
            if (e > worst) worst = e;
            ck_assert_msg(e <= 1e-3, "lora tensor %s: cuda vs cpu rel %g > 1e-3", name, e);
            tensor_scope_end();
        }
        printf("draft %s cuda-vs-cpu: %d LoRA tensors, worst rel %.3g\n", draft_method_name(methods[mi]), la->n, worst);
        safetensors_close(la);
        safetensors_close(lb);
        snprintf(cmd, sizeof cmd, "rm -rf %s %s", out[0], out[1]);
        ck_assert_int_eq(system(cmd), 0);
    }
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("draft");
    TCase *tc = tcase_create("draft");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_golden_gradients);
    tcase_add_test(tc, test_finite_differences);
    tcase_add_test(tc, test_identities);
    tcase_add_test(tc, test_lv_formula);
    tcase_add_test(tc, test_drtune_finite_differences);
    tcase_add_test(tc, test_drtune_k1_is_draft_k1);
    tcase_add_test(tc, test_run_and_resume);
    tcase_add_test(tc, test_run_non_square);
    suite_add_tcase(s, tc);
    TCase *tg = tcase_create("cuda");   /* skips without a GPU */
    tcase_set_timeout(tg, 900);
    tcase_add_test(tg, test_run_cuda_matches_cpu);
    suite_add_tcase(s, tg);
    return test_run_suite(s);
}
