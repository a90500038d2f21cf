/* test_ddim.c — the DDIM scheduler: schedule and timesteps against diffusers' golden file,
 * steps against the golden file and against a float64 reference written here in plain loops
 * (every prediction type, eta 0 / 0.5 / 1, clip_sample), central finite-difference gradient
 * checks of the step and of add_noise, the DDPM loss on a micro UNet, and config errors. */
#include "tests/harness.h"
#include "tests/micro_unet.h"
#include "tests/parity.h"
#include "diffusion/ddim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* a scheduler from a JSON string (ck-asserts success) */
static void ddim_from_json(struct sd_ddim *s, const char *json)
{
    struct nn_config c;
    ck_assert_int_eq(nn_config_parse(&c, json, strlen(json), "test-scheduler"), STATUS_OK);
    enum status st = sd_ddim_init(s, &c);
    nn_config_free(&c);
    ck_assert_msg(st == STATUS_OK, "%s", tensor_error());
}

/* the error message of a config that must fail */
static const char *ddim_json_error(const char *json)
{
    struct nn_config c;
    struct sd_ddim s;
    ck_assert_int_eq(nn_config_parse(&c, json, strlen(json), "bad-scheduler"), STATUS_OK);
    enum status st = sd_ddim_init(&s, &c);
    nn_config_free(&c);
    sd_ddim_free(&s);
    ck_assert_msg(st != STATUS_OK, "config %s was accepted", json);
    return tensor_error();
}

/* ---------------------------------------------------------------- schedule */

START_TEST(test_schedule_float64)
{
    /* the float32 schedule against a float64 computation of the same formulas */
    LEAK_CHECK_BEGIN();
    static const char *const cfgs[] = {
        "{\"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085, \"beta_end\": 0.012}",
        "{\"beta_schedule\": \"linear\", \"num_train_timesteps\": 777}",
        "{\"beta_schedule\": \"squaredcos_cap_v2\", \"num_train_timesteps\": 500}",
    };
    for (int k = 0; k < 3; k++) {
        struct sd_ddim s;
        ddim_from_json(&s, cfgs[k]);
        const int T = s.num_train_timesteps;
        /* float32 betas: each rounding (of beta, 1 - beta, the product) moves ᾱ by at most
         * ~6e-8 * (1 + beta/(1-beta)) relatively, accumulated along the product */
        double c = 1, worst = 0, bound = 0;
        for (int i = 0; i < T; i++) {
            double beta;
            if (k == 2) {
                double f1 = cos(((double)i / T + 0.008) / 1.008 * M_PI / 2), f2 = cos(((double)(i + 1) / T + 0.008) / 1.008 * M_PI / 2);
                beta = fmin(1 - f2 * f2 / (f1 * f1), 0.999);
            } else {
                double a = k == 0 ? sqrt(s.beta_start) : s.beta_start, b = k == 0 ? sqrt(s.beta_end) : s.beta_end;
                beta = a + (b - a) * i / (T - 1);
                if (k == 0) beta *= beta;
            }
            c *= 1 - beta;
            bound += 4 * 6e-8 * (1 + beta / (1 - beta));
            const double rel = fabs(s.alphas_cumprod[i] - c) / c;
            worst = fmax(worst, rel / bound);
            ck_assert_msg(rel <= bound, "schedule %d: alphas_cumprod[%d] rel %g vs float64 > float32 bound %g", k, i, rel, bound);
        }
        printf("schedule %s T=%d: worst (rel vs float64) / (float32 rounding bound) %.2f\n", cfgs[k], T, worst);
        /* set_alpha_to_one defaults to true in DDIMScheduler */
        ck_assert(s.set_alpha_to_one && s.final_alpha_cumprod == 1.0);
        sd_ddim_free(&s);
    }
    /* SD14.md reference values of ᾱ (float64 with the float32 schedule) */
    struct sd_ddim s;
    sd_ddim_init_default(&s);
    static const struct { int t; double v; } ref[] = {{0, 0.99915}, {1, 0.9982960278}, {21, 0.9803807481},
                                                      {250, 0.6737926252}, {500, 0.2763326838}, {501, 0.2749990669},
                                                      {750, 0.056169848}, {981, 0.005775500139}, {999, 0.004660098513}};
    for (size_t i = 0; i < sizeof ref / sizeof ref[0]; i++)
        ck_assert_msg(fabs(sd_ddim_alpha_bar(&s, ref[i].t) / ref[i].v - 1) < 1e-6, "alpha_bar(%d) = %.10g, want %.10g",
                      ref[i].t, sd_ddim_alpha_bar(&s, ref[i].t), ref[i].v);
    ck_assert(sd_ddim_alpha_bar(&s, -1) == s.alphas_cumprod[0]);   /* set_alpha_to_one false */
    ck_assert(isnan(sd_ddim_alpha_bar(&s, 1000)));
    sd_ddim_free(&s);
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_parity_schedule)
{
    char gp[512], cp[512];
    if (!parity_path("golden/ddim.safetensors", gp, sizeof gp) || !parity_path("tiny-sd/scheduler/scheduler_config.json", cp, sizeof cp))
        return;
    LEAK_CHECK_BEGIN();
    struct safetensors *gold = safetensors_open(gp);
    ck_assert_msg(gold != NULL, "%s", tensor_error());
    struct sd_ddim s, d;
    ck_assert_msg(sd_ddim_init_file(&s, cp) == STATUS_OK, "%s", tensor_error());
    sd_ddim_init_default(&d);
    tensor_scope_begin();
    struct tensor *ac = parity_load(gold, "alphas_cumprod");
    int exact = 0;
    for (int i = 0; i < 1000; i++) {
        exact += tensor_get_flat(ac, i) == s.alphas_cumprod[i];
        ck_assert(s.alphas_cumprod[i] == d.alphas_cumprod[i]);
    }
    struct tensor *ours = tensor_from_data(DTYPE_F64, TENSOR_SHAPE(1000), s.alphas_cumprod);
    ck_assert(parity_check("ddim.alphas_cumprod", ours, ac, PARITY_RTOL_FWD, parity_rms(gold, "alphas_cumprod")));
    printf("ddim alphas_cumprod: %d/1000 bit-identical to diffusers' float32 values\n", exact);
    ck_assert_int_eq(exact, 1000);   /* the float32 schedule is emulated exactly */
    static const int ns[] = {50, 25, 4, 1};
    for (int k = 0; k < 4; k++) {
        char name[32];
        snprintf(name, sizeof name, "timesteps_%d", ns[k]);
        struct tensor *g = safetensors_load(gold, name, DTYPE_I64, DEVICE_CPU);
        ck_assert_msg(g != NULL, "%s", tensor_error());
        ck_assert_int_eq(sd_ddim_set_timesteps(&s, ns[k]), STATUS_OK);
        ck_assert_int_eq(tensor_numel(g), ns[k]);
        for (int i = 0; i < ns[k]; i++)
            ck_assert_msg((int64_t)tensor_get_flat(g, i) == s.timesteps[i], "%s[%d]: ours %lld, golden %lld", name, i,
                          (long long)s.timesteps[i], (long long)tensor_get_flat(g, i));
        printf("parity ddim.%s ok (%d timesteps, first %lld)\n", name, ns[k], (long long)s.timesteps[0]);
    }
    tensor_scope_end();
    sd_ddim_free(&s);
    sd_ddim_free(&d);
    safetensors_close(gold);
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_timesteps)
{
    LEAK_CHECK_BEGIN();
    struct sd_ddim s;
    /* leading (SD 1.4): diffusers test_steps_offset asserts [801, 601, 401, 201, 1] for N=5 */
    sd_ddim_init_default(&s);
    ck_assert_int_eq(sd_ddim_set_timesteps(&s, 5), STATUS_OK);
    for (int i = 0; i < 5; i++) ck_assert_int_eq(s.timesteps[i], 801 - 200 * i);
    ck_assert_int_eq(sd_ddim_prev_timestep(&s, 801), 601);
    ck_assert_int_eq(sd_ddim_set_timesteps(&s, 999), STATUS_OK);
    ck_assert_int_eq(s.timesteps[0], 999);
    /* offset 1 with 1000 steps would index alphas_cumprod[1000] */
    ck_assert_int_ne(sd_ddim_set_timesteps(&s, 1000), STATUS_OK);
    ck_assert_msg(strstr(tensor_error(), "steps_offset"), "%s", tensor_error());
    sd_ddim_free(&s);

    /* trailing and linspace against formulas written here, for every N */
    for (int sp = 0; sp < 2; sp++) {
        ddim_from_json(&s, sp == 0 ? "{\"timestep_spacing\": \"trailing\"}" : "{\"timestep_spacing\": \"linspace\"}");
        const int T = s.num_train_timesteps;
        for (int n = 1; n <= T; n++) {
            ck_assert_int_eq(sd_ddim_set_timesteps(&s, n), STATUS_OK);
            for (int i = 0; i < n; i++) {
                /* trailing: np.round(np.arange(T, 0, -T/n)) - 1, where numpy's arange fills
                 * start + i*((start + step) - start) — that rounding decides ties such as n=48, i=3
                 * (937.4999... -> 936, not 937.5 -> 937); linspace: np.linspace(0, T-1, n) is
                 * arange(n) * ((T-1)/(n-1)), reversed, rounded half to even (n=27: 13*step = 499.4999... -> 499) */
                const double ideal = sp == 0 ? (double)T - (double)i * T / n : n == 1 ? 0 : (double)(n - 1 - i) * (T - 1) / (n - 1);
                const double v = sp == 0 ? (double)T + i * (((double)T + (-(double)T / n)) - (double)T)
                                 : n == 1 ? 0 : i == 0 ? (double)(T - 1) : (double)(n - 1 - i) * ((double)(T - 1) / (n - 1));
                int64_t want = (int64_t)nearbyint(v) - (sp == 0);
                ck_assert_msg(s.timesteps[i] == want, "spacing %d n=%d i=%d: %lld, want %lld", sp, n, i,
                              (long long)s.timesteps[i], (long long)want);
                ck_assert(fabs((double)s.timesteps[i] + (sp == 0) - ideal) <= 1.0);
            }
        }
        sd_ddim_free(&s);
    }
    /* hand values: trailing N=5 -> 999, 799, 599, 399, 199; linspace N=5 -> 999, 749, 500, 250, 0 */
    ddim_from_json(&s, "{\"timestep_spacing\": \"trailing\"}");
    ck_assert_int_eq(sd_ddim_set_timesteps(&s, 5), STATUS_OK);
    ck_assert(s.timesteps[0] == 999 && s.timesteps[4] == 199);
    sd_ddim_free(&s);
    ddim_from_json(&s, "{\"timestep_spacing\": \"linspace\"}");
    ck_assert_int_eq(sd_ddim_set_timesteps(&s, 5), STATUS_OK);
    ck_assert(s.timesteps[0] == 999 && s.timesteps[1] == 749 && s.timesteps[2] == 500 && s.timesteps[3] == 250 &&
              s.timesteps[4] == 0);
    sd_ddim_free(&s);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- step vs golden */

START_TEST(test_parity_step)
{
    char gp[512];
    if (!parity_path("golden/ddim.safetensors", gp, sizeof gp)) return;
    LEAK_CHECK_BEGIN();
    struct safetensors *gold = safetensors_open(gp);
    ck_assert_msg(gold != NULL, "%s", tensor_error());
    struct sd_ddim s;
    sd_ddim_init_default(&s);
    ck_assert_int_eq(sd_ddim_set_timesteps(&s, 50), STATUS_OK);
    static const int ts[] = {981, 501, 21, 1};
    int n_ok = 0;
    for (int dt = 0; dt < 2; dt++) {
        const enum dtype d = dt ? DTYPE_F64 : DTYPE_F32;
        tensor_scope_begin();
        struct tensor *mo = tensor_to_dtype(parity_load(gold, "step_model_output"), d);
        struct tensor *x = tensor_to_dtype(parity_load(gold, "step_sample"), d);
        struct tensor *z = tensor_to_dtype(parity_load(gold, "step_variance_noise"), d);
        for (int i = 0; i < 4; i++)
            for (int eta = 0; eta < 2; eta++) {
                char name[64], label[96];
                snprintf(name, sizeof name, "step_t%d_eta%d", ts[i], eta);
                snprintf(label, sizeof label, "ddim.%s[%s]", name, dtype_name(d));
                struct tensor *out = sd_ddim_step(&s, mo, ts[i], x, eta, eta ? z : NULL);
                ck_assert_msg(out != NULL, "%s", tensor_error());
                ck_assert_int_eq(out->dtype, d);
                n_ok += parity_check(label, out, parity_load(gold, name), PARITY_RTOL_FWD, parity_rms(gold, name));
            }
        tensor_scope_end();
    }
    printf("parity summary ddim steps: %d/16 ok\n", n_ok);
    ck_assert_int_eq(n_ok, 16);
    sd_ddim_free(&s);
    safetensors_close(gold);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- step vs a float64 reference */

/* DDIM (Song et al. eq. 12) as diffusers writes it, element by element */
static void ref_step(const struct sd_ddim *s, int pred, bool clip, double range, int64_t t, int64_t prev, double eta,
                     const struct tensor *mo, const struct tensor *x, const struct tensor *z, double *out, double *x0out)
{
    const double at = s->alphas_cumprod[t];
    const double ap = prev >= 0 ? s->alphas_cumprod[prev] : (s->set_alpha_to_one ? 1.0 : s->alphas_cumprod[0]);
    const double sigma = eta * sqrt((1 - ap) / (1 - at)) * sqrt(1 - at / ap);
    const int64_t n = tensor_numel(x);
    for (int64_t i = 0; i < n; i++) {
        const double m = tensor_get_flat(mo, i), xi = tensor_get_flat(x, i);
        double x0, e;
        if (pred == SD_PRED_EPSILON) {
            e = m;
            x0 = (xi - sqrt(1 - at) * e) / sqrt(at);
        } else if (pred == SD_PRED_SAMPLE) {
            x0 = m;
            e = (xi - sqrt(at) * x0) / sqrt(1 - at);
        } else {
            x0 = sqrt(at) * xi - sqrt(1 - at) * m;
            e = sqrt(at) * m + sqrt(1 - at) * xi;
        }
        if (clip) x0 = x0 < -range ? -range : x0 > range ? range : x0;
        double dir = 1 - ap - sigma * sigma;
        out[i] = sqrt(ap) * x0 + sqrt(dir > 0 ? dir : 0) * e + (eta > 0 ? sigma * tensor_get_flat(z, i) : 0);
        if (x0out) x0out[i] = x0;
    }
}

static double rel_to(const struct tensor *t, const double *r)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < tensor_numel(t); i++) {
        double d = tensor_get_flat(t, i) - r[i];
        num += d * d;
        den += r[i] * r[i];
    }
    return sqrt(num) / fmax(sqrt(den), 1e-300);
}

START_TEST(test_step_reference)
{
    LEAK_CHECK_BEGIN();
    struct sd_ddim s;
    static const double etas[] = {0, 0.5, 1};
    static const int64_t steps_n[] = {50, 7};
    int cases = 0;
    double worst64 = 0, worst32 = 0;
    for (int one = 0; one < 2; one++) {
        ddim_from_json(&s, one ? "{\"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085, \"beta_end\": 0.012}"
                               : "{\"beta_schedule\": \"squaredcos_cap_v2\", \"set_alpha_to_one\": false, \"steps_offset\": 1}");
        for (int ni = 0; ni < 2; ni++) {
            ck_assert_int_eq(sd_ddim_set_timesteps(&s, (int)steps_n[ni]), STATUS_OK);
            const int64_t tlist[] = {s.timesteps[0], s.timesteps[s.num_inference_steps / 2], s.timesteps[s.num_inference_steps - 1]};
            for (int pred = 0; pred < 3; pred++)
                for (int clip = 0; clip < 2; clip++)
                    for (int e = 0; e < 3; e++)
                        for (int ti = 0; ti < 3; ti++) {
                            s.prediction = (enum sd_prediction)pred;
                            s.clip_sample = clip;
                            s.clip_sample_range = 0.7;
                            const int64_t t = tlist[ti], prev = t - s.num_train_timesteps / s.num_inference_steps;
                            tensor_scope_begin();
                            struct tensor *mo = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3, 4, 5), -1.5, 1.5);
                            struct tensor *x = test_noncontig(test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3, 4, 5), -1.5, 1.5));
                            struct tensor *z = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3, 4, 5), -2, 2);
                            double r[120], rx0[120];
                            ref_step(&s, pred, clip, 0.7, t, prev, etas[e], mo, x, z, r, rx0);
                            struct tensor *out = sd_ddim_step(&s, mo, t, x, etas[e], z);
                            ck_assert_msg(out != NULL, "%s", tensor_error());
                            const double rel = rel_to(out, r);
                            struct tensor *out32 = sd_ddim_step(&s, tensor_to_dtype(mo, DTYPE_F32), t, tensor_to_dtype(x, DTYPE_F32), etas[e],
                                                                tensor_to_dtype(z, DTYPE_F32));
                            ck_assert_msg(out32 && out32->dtype == DTYPE_F32, "%s", tensor_error());
                            const double rel32 = rel_to(out32, r);
                            ck_assert_msg(rel < 1e-12 && rel32 < 1e-5, "pred %d clip %d eta %g t %lld: rel %g (f32 %g)", pred, clip,
                                          etas[e], (long long)t, rel, rel32);
                            if (e == 0) {   /* the predicted x0 */
                                struct tensor *x0 = sd_ddim_pred_x0(&s, mo, t, x);
                                ck_assert_msg(x0 && rel_to(x0, rx0) < 1e-12, "pred_x0 pred %d clip %d", pred, clip);
                            }
                            worst64 = fmax(worst64, rel);
                            worst32 = fmax(worst32, rel32);
                            cases++;
                            tensor_scope_end();
                        }
        }
        sd_ddim_free(&s);
    }
    printf("ddim step vs float64 reference: %d cases (3 predictions x clip x eta 0/0.5/1 x 3 t x 2 N x 2 schedules), "
           "max rel f64 %.2e, f32 %.2e\n", cases, worst64, worst32);

    /* eta > 0 without noise draws it from the engine's generator */
    sd_ddim_init_default(&s);
    ck_assert_int_eq(sd_ddim_set_timesteps(&s, 50), STATUS_OK);
    tensor_scope_begin();
    struct tensor *mo = test_uniform(DTYPE_F64, TENSOR_SHAPE(1, 4, 3, 3), -1, 1), *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(1, 4, 3, 3), -1, 1);
    ag_rng_seed(1234);
    uint64_t seed, off;
    ag_rng_get(&seed, &off);
    struct tensor *a = sd_ddim_step(&s, mo, 501, x, 0.8, NULL);
    ag_rng_set(seed, off);
    struct tensor *z = ag_randn(DTYPE_F64, 4, mo->shape, DEVICE_CPU);
    struct tensor *b = sd_ddim_step(&s, mo, 501, x, 0.8, z);
    ck_assert_msg(a && b && test_max_abs_diff(a, b) == 0, "eta>0 without noise must use ag_randn");
    ck_assert(test_max_abs_diff(a, sd_ddim_step(&s, mo, 501, x, 0, NULL)) > 1e-3);
    tensor_scope_end();
    sd_ddim_free(&s);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- gradient checks */

struct step_ctx {
    struct sd_ddim *s;
    int64_t t;
    double eta;
    struct tensor *ts;
};

static struct tensor *gc_step(struct tensor *const *in, void *vctx)
{
    struct step_ctx *c = vctx;
    return sd_ddim_step(c->s, in[0], c->t, in[1], c->eta, in[2]);
}

static struct tensor *gc_add_noise(struct tensor *const *in, void *vctx)
{
    struct step_ctx *c = vctx;
    return sd_ddim_add_noise(c->s, in[0], in[1], c->ts);
}

static struct tensor *gc_velocity(struct tensor *const *in, void *vctx)
{
    struct step_ctx *c = vctx;
    return sd_ddim_velocity(c->s, in[0], in[1], c->ts);
}

START_TEST(test_gradcheck)
{
    LEAK_CHECK_BEGIN();
    struct sd_ddim s;
    sd_ddim_init_default(&s);
    ck_assert_int_eq(sd_ddim_set_timesteps(&s, 50), STATUS_OK);
    static const char *const pn[] = {"epsilon", "v_prediction", "sample"};
    for (int pred = 0; pred < 3; pred++)
        for (int clip = 0; clip < 2; clip++) {
            s.prediction = (enum sd_prediction)pred;
            s.clip_sample = clip;
            s.clip_sample_range = 0.8;
            struct step_ctx c = {&s, pred == 1 ? 21 : 501, pred == 2 ? 0.5 : 1.0, NULL};
            tensor_scope_begin();
            struct tensor *in[3] = {test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 2, 3, 3), -1, 1),
                                    test_noncontig(test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 2, 3, 3), -1, 1)),
                                    test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 2, 3, 3), -1, 1)};
            char label[96];
            snprintf(label, sizeof label, "ddim_step[%s,clip=%d,t=%lld,eta=%g]", pn[pred], clip, (long long)c.t, c.eta);
            ck_assert(gradcheck(label, gc_step, &c, 3, in, NULL));
            tensor_scope_end();
        }
    s.prediction = SD_PRED_EPSILON;
    tensor_scope_begin();
    struct step_ctx c = {&s, 0, 0, tensor_from_data(DTYPE_I64, TENSOR_SHAPE(3), (int64_t[]){981, 0, 500})};
    struct tensor *in[2] = {test_uniform(DTYPE_F64, TENSOR_SHAPE(3, 2, 4), -1, 1),
                            test_noncontig(test_uniform(DTYPE_F64, TENSOR_SHAPE(3, 2, 4), -1, 1))};
    ck_assert(gradcheck("ddim_add_noise[B=3,t=981,0,500]", gc_add_noise, &c, 2, in, NULL));
    ck_assert(gradcheck("ddim_velocity[B=3]", gc_velocity, &c, 2, in, NULL));
    /* add_noise values against the formula, per row */
    struct tensor *y = sd_ddim_add_noise(&s, in[0], in[1], c.ts);
    ck_assert_msg(y != NULL, "%s", tensor_error());
    const int64_t tv[3] = {981, 0, 500};
    for (int64_t i = 0; i < 24; i++) {
        const double ab = s.alphas_cumprod[tv[i / 8]];
        const double want = sqrt(ab) * tensor_get_flat(in[0], i) + sqrt(1 - ab) * tensor_get_flat(in[1], i);
        ck_assert(fabs(tensor_get_flat(y, i) - want) < 1e-14);
    }
    tensor_scope_end();
    sd_ddim_free(&s);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- DDPM loss on a micro UNet */

static const char micro_json[] =
    "{\"in_channels\": 2, \"out_channels\": 2, \"block_out_channels\": [4, 8],"
    " \"down_block_types\": [\"CrossAttnDownBlock2D\", \"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\","
    " \"CrossAttnUpBlock2D\"], \"layers_per_block\": 1, \"norm_num_groups\": 2, \"attention_head_dim\": 2,"
    " \"cross_attention_dim\": 4, \"sample_size\": 4}";

struct micro {
    struct nn_params ps64, ps32;
    struct sd_unet u64, u32;
    struct sd_ddim *s;
    struct tensor *t;
};

static void micro_build(struct micro *m)
{
    test_micro_unet_build(micro_json, &m->ps64, &m->ps32, &m->u64, &m->u32);
}

static void micro_free(struct micro *m) { test_micro_unet_free(&m->ps64, &m->ps32, &m->u64, &m->u32); }

static struct tensor *gc_loss(struct tensor *const *in, void *vctx)
{
    struct micro *m = vctx;
    return sd_ddpm_loss(in[0]->dtype == DTYPE_F32 ? &m->u32 : &m->u64, m->s, in[0], m->t, in[1], in[2]);
}

START_TEST(test_ddpm_loss)
{
    LEAK_CHECK_BEGIN();
    struct sd_ddim s;
    sd_ddim_init_default(&s);
    struct micro m;
    micro_build(&m);
    m.s = &s;
    static const char *const pn[] = {"epsilon", "v_prediction", "sample"};
    for (int pred = 0; pred < 3; pred++) {
        s.prediction = (enum sd_prediction)pred;
        tensor_scope_begin();
        const int64_t tv[2] = {981, 17};
        m.t = tensor_from_data(DTYPE_I64, TENSOR_SHAPE(2), tv);
        struct tensor *in[3] = {test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 2, 4, 4), -1, 1),
                                test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 2, 4, 4), -1, 1),
                                test_noncontig(test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3, 4), -1, 1))};
        /* by hand: noisy sample and target in plain loops, the UNet, the mean squared error */
        double noisy[64], target[64];
        for (int i = 0; i < 64; i++) {
            const double ab = s.alphas_cumprod[tv[i / 32]], x0 = tensor_get_flat(in[0], i), e = tensor_get_flat(in[1], i);
            noisy[i] = sqrt(ab) * x0 + sqrt(1 - ab) * e;
            target[i] = pred == 0 ? e : pred == 1 ? sqrt(ab) * e - sqrt(1 - ab) * x0 : x0;
        }
        struct tensor *out = sd_unet_forward(&m.u64, tensor_from_data(DTYPE_F64, TENSOR_SHAPE(2, 2, 4, 4), noisy), m.t, in[2]);
        ck_assert_msg(out != NULL, "%s", tensor_error());
        double want = 0;
        for (int i = 0; i < 64; i++) want += (tensor_get_flat(out, i) - target[i]) * (tensor_get_flat(out, i) - target[i]) / 64;
        struct tensor *loss = sd_ddpm_loss(&m.u64, &s, in[0], m.t, in[1], in[2]);
        ck_assert_msg(loss != NULL, "%s", tensor_error());
        ck_assert_int_eq(tensor_numel(loss), 1);
        const double got = tensor_get_flat(loss, 0);
        printf("ddpm_loss[%s] = %.12f, by hand %.12f\n", pn[pred], got, want);
        ck_assert_msg(fabs(got - want) <= 1e-12 * fabs(want), "ddpm loss %g vs %g", got, want);
        char label[64];
        snprintf(label, sizeof label, "ddpm_loss[%s,micro unet,t=981,17]", pn[pred]);
        struct gc_opts o = {.tol = 1e-5, .f32_tol = 2e-4};
        ck_assert(gradcheck(label, gc_loss, &m, 3, in, &o));
        tensor_scope_end();
    }
    micro_free(&m);
    sd_ddim_free(&s);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- configs and errors */

START_TEST(test_sd14_config)
{
    char p[512];
    if (!parity_path("sd14/scheduler_config.json", p, sizeof p)) return;
    LEAK_CHECK_BEGIN();
    struct sd_ddim s, d;
    ck_assert_msg(sd_ddim_init_file(&s, p) == STATUS_OK, "%s", tensor_error());
    sd_ddim_init_default(&d);
    ck_assert(s.num_train_timesteps == 1000 && s.schedule == SD_BETA_SCALED_LINEAR && s.steps_offset == 1 &&
              !s.set_alpha_to_one && !s.clip_sample && s.prediction == SD_PRED_EPSILON && s.spacing == SD_SPACING_LEADING);
    ck_assert(memcmp(s.alphas_cumprod, d.alphas_cumprod, 1000 * sizeof(double)) == 0);
    ck_assert(s.final_alpha_cumprod == d.final_alpha_cumprod);
    printf("sd14 scheduler_config.json (PNDMScheduler) loads as DDIM: alphas equal the SD 1.4 defaults\n");
    sd_ddim_free(&s);
    sd_ddim_free(&d);
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_errors)
{
    LEAK_CHECK_BEGIN();
    static const struct { const char *json, *want; } bad[] = {
        {"{\"beta_schedule\": \"linear\", \"foo_bar\": 1}", "foo_bar"},
        {"{\"beta_schedule\": \"cosine\"}", "beta_schedule"},
        {"{\"beta_schedule\": 3}", "beta_schedule"},
        {"{\"prediction_type\": \"x0\"}", "prediction_type"},
        {"{\"timestep_spacing\": \"even\"}", "timestep_spacing"},
        {"{\"thresholding\": true}", "thresholding"},
        {"{\"trained_betas\": [0.1, 0.2]}", "trained_betas"},
        {"{\"rescale_betas_zero_snr\": true}", "rescale_betas_zero_snr"},
        {"{\"num_train_timesteps\": 0}", "num_train_timesteps"},
        {"{\"num_train_timesteps\": \"1000\"}", "num_train_timesteps"},
        {"{\"steps_offset\": -1}", "steps_offset"},
        {"{\"clip_sample\": \"yes\"}", "clip_sample"},
        {"{\"beta_end\": 1.5}", "beta_end"},
        {"{\"beta_start\": 0, \"beta_end\": 0}", "beta_start"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *msg = ddim_json_error(bad[i].json);
        printf("config error: %s\n", msg);
        ck_assert_msg(strstr(msg, bad[i].want) && strstr(msg, "bad-scheduler"), "%s: message '%s' does not name '%s'",
                      bad[i].json, msg, bad[i].want);
    }
    /* accepted: null trained_betas, thresholding settings left at their defaults, metadata */
    struct sd_ddim s;
    ddim_from_json(&s, "{\"_class_name\": \"DDIMScheduler\", \"_diffusers_version\": \"0.30.0\", \"trained_betas\": null,"
                       " \"thresholding\": false, \"dynamic_thresholding_ratio\": 0.995, \"sample_max_value\": 1.0,"
                       " \"clip_sample_range\": 1.0, \"rescale_betas_zero_snr\": false, \"skip_prk_steps\": true}");
    sd_ddim_free(&s);
    /* SDXL's scheduler_config.json (EulerDiscreteScheduler): its sigma options are not DDIM's business,
     * the betas are SD's */
    ddim_from_json(&s, "{\"_class_name\": \"EulerDiscreteScheduler\", \"beta_end\": 0.012, \"beta_schedule\": "
                       "\"scaled_linear\", \"beta_start\": 0.00085, \"clip_sample\": false, \"interpolation_type\": "
                       "\"linear\", \"num_train_timesteps\": 1000, \"prediction_type\": \"epsilon\", \"sample_max_value\": "
                       "1.0, \"set_alpha_to_one\": false, \"skip_prk_steps\": true, \"steps_offset\": 1, "
                       "\"timestep_spacing\": \"leading\", \"trained_betas\": null, \"use_karras_sigmas\": false}");
    struct sd_ddim d0;
    sd_ddim_init_default(&d0);
    ck_assert(memcmp(s.alphas_cumprod, d0.alphas_cumprod, 1000 * sizeof(double)) == 0 && s.steps_offset == 1);
    sd_ddim_free(&d0);
    sd_ddim_free(&s);
    struct sd_ddim f;
    ck_assert_int_ne(sd_ddim_init_file(&f, "/nonexistent/scheduler_config.json"), STATUS_OK);
    ck_assert(strstr(tensor_error(), "/nonexistent/scheduler_config.json"));
    sd_ddim_free(&f);

    sd_ddim_init_default(&s);
    tensor_scope_begin();
    struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(1, 2, 2, 2), -1, 1);
    ck_assert_ptr_null(sd_ddim_step(&s, x, 501, x, 0, NULL));   /* no set_timesteps yet */
    ck_assert_msg(strstr(tensor_error(), "sd_ddim_set_timesteps"), "%s", tensor_error());
    ck_assert_int_ne(sd_ddim_set_timesteps(&s, 0), STATUS_OK);
    ck_assert(strstr(tensor_error(), "num_inference_steps"));
    ck_assert_int_ne(sd_ddim_set_timesteps(&s, 1001), STATUS_OK);
    ck_assert(strstr(tensor_error(), "num_inference_steps"));
    ck_assert_int_eq(sd_ddim_set_timesteps(&s, 50), STATUS_OK);
    ck_assert_ptr_null(sd_ddim_step(&s, x, 1000, x, 0, NULL));
    ck_assert(strstr(tensor_error(), "timestep 1000"));
    ck_assert_ptr_null(sd_ddim_step(&s, x, 501, test_uniform(DTYPE_F64, TENSOR_SHAPE(1, 2, 2, 3), -1, 1), 0, NULL));
    ck_assert(strstr(tensor_error(), "shape"));
    ck_assert_ptr_null(sd_ddim_step(&s, x, 501, x, -1, NULL));
    ck_assert(strstr(tensor_error(), "eta"));
    ck_assert_ptr_null(sd_ddim_step(&s, x, 501, x, 1, test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 2), -1, 1)));
    ck_assert(strstr(tensor_error(), "variance_noise"));
    ck_assert_ptr_null(sd_ddim_step(&s, x, 501, x, 3, NULL));   /* σ² > 1 - ᾱ_prev */
    ck_assert(strstr(tensor_error(), "too large"));
    tensor_clear_error();
    ck_assert_ptr_null(sd_ddim_step(&s, NULL, 501, x, 0, NULL));   /* NULL propagates, message kept */
    ck_assert_ptr_null(sd_ddim_add_noise(&s, x, x, tensor_from_data(DTYPE_I64, TENSOR_SHAPE(1), (int64_t[]){1000})));
    ck_assert(strstr(tensor_error(), "timesteps[0] = 1000"));
    ck_assert_ptr_null(sd_ddim_add_noise(&s, x, x, tensor_from_data(DTYPE_F64, TENSOR_SHAPE(1), (double[]){10})));
    ck_assert(strstr(tensor_error(), "i32 or i64"));
    ck_assert_ptr_null(sd_ddim_add_noise(&s, x, x, tensor_from_data(DTYPE_I64, TENSOR_SHAPE(3), (int64_t[]){1, 2, 3})));
    ck_assert(strstr(tensor_error(), "timesteps"));
    tensor_scope_end();
    sd_ddim_free(&s);
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ddim");
    TCase *tc = tcase_create("ddim");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_schedule_float64);
    tcase_add_test(tc, test_timesteps);
    tcase_add_test(tc, test_step_reference);
    tcase_add_test(tc, test_gradcheck);
    tcase_add_test(tc, test_ddpm_loss);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_sd14_config);
    tcase_add_test(tc, test_parity_schedule);
    tcase_add_test(tc, test_parity_step);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
