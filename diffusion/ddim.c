/* ddim.c — DDIMScheduler (diffusers schedulers/scheduling_ddim.py) on ag_ ops. */
#include "diffusion/ddim.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd.h"

/* ---------------------------------------------------------------- schedule */

/* torch.linspace(a, b, n, dtype=float32) on the CPU, bit for bit: float32 step; the first half
 * counts from a, the second from b; the vectorised kernel (8 lanes, two vectors per iteration,
 * compiled with FMA contraction) computes each vector's base with one rounding and the lanes
 * as base + j*step, the tail with the scalar lambda (also contracted). Matches the golden
 * alphas_cumprod exactly, which no unfused variant does. */
static void torch_linspace_f32(double start, double end, int n, float *out)
{
    const float a = (float)start, b = (float)end;
    if (n == 1) {
        out[0] = a;
        return;
    }
    const float step = (b - a) / (float)(n - 1);
    const int half = n / 2, lanes = 8;
    const int nvec = n / (2 * lanes) * (2 * lanes);
    int idx = 0;
#define LINSPACE_BASE(i) ((i) < half ? fmaf(step, (float)(i), a) : fmaf(-step, (float)(n - (i) - 1), b))
    for (; idx < nvec; idx += lanes) {
        const float base = LINSPACE_BASE(idx);
        for (int j = 0; j < lanes; j++) out[idx + j] = fmaf((float)j, step, base);
    }
    for (; idx < n; idx++) out[idx] = LINSPACE_BASE(idx);
#undef LINSPACE_BASE
}

/* betas as float32, alphas = 1 - betas in float32, cumprod accumulated in double (torch's CPU
 * accumulation type for float) and rounded to float32 per entry */
static enum status ddim_build(struct sd_ddim *s, const char *label)
{
    const int T = s->num_train_timesteps;
    free(s->alphas_cumprod);
    s->alphas_cumprod = NULL;
    float *betas = malloc((size_t)T * sizeof *betas);
    double *ac = malloc((size_t)T * sizeof *ac);
    if (!betas || !ac) {
        free(betas);
        free(ac);
        return tensor_fail(STATUS_OOM, "%s: out of memory for %d timesteps", label, T);
    }
    switch (s->schedule) {
    case SD_BETA_LINEAR:
        torch_linspace_f32(s->beta_start, s->beta_end, T, betas);
        break;
    case SD_BETA_SCALED_LINEAR:
        torch_linspace_f32(sqrt(s->beta_start), sqrt(s->beta_end), T, betas);
        for (int i = 0; i < T; i++) betas[i] = betas[i] * betas[i];
        break;
    case SD_BETA_SQUAREDCOS_CAP_V2:   /* betas_for_alpha_bar, cosine, max_beta 0.999, in double */
        for (int i = 0; i < T; i++) {
            const double t1 = (double)i / T, t2 = (double)(i + 1) / T;
            const double f1 = cos((t1 + 0.008) / 1.008 * M_PI / 2), f2 = cos((t2 + 0.008) / 1.008 * M_PI / 2);
            betas[i] = (float)fmin(1 - (f2 * f2) / (f1 * f1), 0.999);
        }
        break;
    }
    double c = 1.0;
    for (int i = 0; i < T; i++) {
        /* a beta of 0 or 1 would make a step divide by zero */
        if (!(betas[i] > 0 && betas[i] < 1)) {
            const double bad = betas[i];
            free(betas);
            free(ac);
            return tensor_fail(STATUS_VALUE, "%s: beta_start %g / beta_end %g give beta[%d] = %g; every beta must be in (0, 1)",
                               label, s->beta_start, s->beta_end, i, bad);
        }
        c *= (double)(1.0f - betas[i]);
        ac[i] = (double)(float)c;
    }
    free(betas);
    s->alphas_cumprod = ac;
    s->final_alpha_cumprod = s->set_alpha_to_one ? 1.0 : ac[0];
    return STATUS_OK;
}

void sd_ddim_init_default(struct sd_ddim *s)
{
    memset(s, 0, sizeof *s);
    s->num_train_timesteps = 1000;
    s->beta_start = 0.00085;
    s->beta_end = 0.012;
    s->schedule = SD_BETA_SCALED_LINEAR;
    s->set_alpha_to_one = false;
    s->clip_sample = false;
    s->clip_sample_range = 1.0;
    s->steps_offset = 1;
    s->prediction = SD_PRED_EPSILON;
    s->spacing = SD_SPACING_LEADING;
    ddim_build(s, "sd_ddim_init_default");
}

void sd_ddim_free(struct sd_ddim *s)
{
    if (!s) return;
    free(s->alphas_cumprod);
    free(s->timesteps);
    s->alphas_cumprod = NULL;
    s->timesteps = NULL;
    s->num_inference_steps = 0;
}

/* ---------------------------------------------------------------- config */

static int pick(const char *v, const char *const *names, int n)
{
    for (int i = 0; v && i < n; i++)
        if (!strcmp(v, names[i])) return i;
    return -1;
}

enum status sd_ddim_init(struct sd_ddim *s, struct nn_config *c)
{
    memset(s, 0, sizeof *s);
    static const char *const schedules[] = {"linear", "scaled_linear", "squaredcos_cap_v2"};
    static const char *const predictions[] = {"epsilon", "v_prediction", "sample"};
    static const char *const spacings[] = {"leading", "trailing", "linspace"};
    char sched[64], pred[64], spacing[64];
    /* DDIMScheduler.__init__ defaults */
    const long long T = nn_config_int(c, "num_train_timesteps", 1000);
    s->beta_start = nn_config_double(c, "beta_start", 0.0001);
    s->beta_end = nn_config_double(c, "beta_end", 0.02);
    const char *sv = nn_config_string(c, "beta_schedule", "linear", sched, sizeof sched);
    s->clip_sample = nn_config_bool(c, "clip_sample", true);
    s->set_alpha_to_one = nn_config_bool(c, "set_alpha_to_one", true);
    const long long offset = nn_config_int(c, "steps_offset", 0);
    const char *pv = nn_config_string(c, "prediction_type", "epsilon", pred, sizeof pred);
    const bool thresholding = nn_config_bool(c, "thresholding", false);
    nn_config_double(c, "dynamic_thresholding_ratio", 0.995);   /* only used by thresholding */
    s->clip_sample_range = nn_config_double(c, "clip_sample_range", 1.0);
    nn_config_double(c, "sample_max_value", 1.0);               /* only used by thresholding */
    const char *tv = nn_config_string(c, "timestep_spacing", "leading", spacing, sizeof spacing);
    const bool zero_snr = nn_config_bool(c, "rescale_betas_zero_snr", false);
    /* PNDMScheduler's skip_prk_steps (SD 1.4's file) and EulerDiscreteScheduler's sigma options (SDXL's
     * and SD 2.x's files): how those samplers step, not the betas DDIM reads (diffusers' DDIMScheduler
     * .from_config ignores them too) */
    static const char *const keys[] = {"trained_betas",  "skip_prk_steps",      "interpolation_type",
                                       "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                                       "sigma_min",      "sigma_max",           "timestep_type",
                                       "final_sigmas_type"};
    nn_config_ignore(c, keys, (int)(sizeof keys / sizeof keys[0]));
    const cJSON *tb = cJSON_GetObjectItemCaseSensitive((const cJSON *)c->root, "trained_betas");
    enum status st = nn_config_finish(c);
    if (st) return st;

    const char *p = c->path;
    if (tb && !cJSON_IsNull(tb))
        return tensor_fail(STATUS_VALUE, "%s: trained_betas is not supported (only null; use beta_schedule)", p);
    if (thresholding) return tensor_fail(STATUS_VALUE, "%s: thresholding = true is not supported (only false)", p);
    if (zero_snr) return tensor_fail(STATUS_VALUE, "%s: rescale_betas_zero_snr = true is not supported (only false)", p);
    if (T < 1 || T > 1000000)
        return tensor_fail(STATUS_VALUE, "%s: num_train_timesteps = %lld is out of range (1 .. 1000000)", p, T);
    if (offset < 0 || offset >= T)
        return tensor_fail(STATUS_VALUE, "%s: steps_offset = %lld is out of range (0 .. num_train_timesteps-1 = %lld)", p,
                           offset, T - 1);
    int k = pick(sv, schedules, 3);
    if (k < 0)
        return tensor_fail(STATUS_VALUE, "%s: beta_schedule '%s' is not supported (linear, scaled_linear, squaredcos_cap_v2)",
                           p, sv ? sv : "null");
    s->schedule = (enum sd_beta_schedule)k;
    if ((k = pick(pv, predictions, 3)) < 0)
        return tensor_fail(STATUS_VALUE, "%s: prediction_type '%s' is not supported (epsilon, v_prediction, sample)", p,
                           pv ? pv : "null");
    s->prediction = (enum sd_prediction)k;
    if ((k = pick(tv, spacings, 3)) < 0)
        return tensor_fail(STATUS_VALUE, "%s: timestep_spacing '%s' is not supported (leading, trailing, linspace)", p,
                           tv ? tv : "null");
    s->spacing = (enum sd_spacing)k;
    if (s->clip_sample && !(s->clip_sample_range > 0))
        return tensor_fail(STATUS_VALUE, "%s: clip_sample_range = %g must be > 0", p, s->clip_sample_range);
    if (s->schedule != SD_BETA_SQUAREDCOS_CAP_V2 &&
        !(s->beta_start >= 0 && s->beta_start < 1 && s->beta_end >= 0 && s->beta_end < 1))
        return tensor_fail(STATUS_VALUE, "%s: beta_start = %g, beta_end = %g must lie in [0, 1)", p, s->beta_start, s->beta_end);
    s->num_train_timesteps = (int)T;
    s->steps_offset = (int)offset;
    return ddim_build(s, p);
}

enum status sd_ddim_init_file(struct sd_ddim *s, const char *path)
{
    memset(s, 0, sizeof *s);
    struct nn_config c;
    enum status st = nn_config_load(&c, path);
    if (st) return st;
    st = sd_ddim_init(s, &c);
    nn_config_free(&c);
    return st;
}

/* ---------------------------------------------------------------- timesteps */

enum status sd_ddim_set_timesteps(struct sd_ddim *s, int n)
{
    if (!s->alphas_cumprod) return tensor_fail(STATUS_VALUE, "sd_ddim_set_timesteps: the scheduler is not initialised");
    const int T = s->num_train_timesteps;
    if (n < 1 || n > T)
        return tensor_fail(STATUS_VALUE, "sd_ddim_set_timesteps: num_inference_steps = %d must be in 1 .. num_train_timesteps (%d)",
                           n, T);
    int64_t *ts = malloc((size_t)n * sizeof *ts);
    if (!ts) return tensor_fail(STATUS_OOM, "sd_ddim_set_timesteps: out of memory for %d steps", n);
    switch (s->spacing) {
    case SD_SPACING_LEADING: {   /* (arange(n) * (T // n))[::-1] + steps_offset */
        const int64_t ratio = T / n;
        for (int i = 0; i < n; i++) ts[i] = (int64_t)(n - 1 - i) * ratio + s->steps_offset;
        break;
    }
    case SD_SPACING_TRAILING: {
        /* round(arange(T, 0, -T/n)) - 1, numpy's arange arithmetic (start + i*delta). numpy's
         * length ceil(T / (T/n)) is n+1 for some n (e.g. 61 of 1000), which makes diffusers
         * append a bogus timestep -1; we keep the first n, the intended ones. */
        const double start = T, delta = (start + (-(double)T / n)) - start;
        for (int i = 0; i < n; i++) ts[i] = (int64_t)nearbyint(start + i * delta) - 1;
        break;
    }
    case SD_SPACING_LINSPACE: {   /* linspace(0, T-1, n).round()[::-1] (round half to even) */
        const double step = n > 1 ? (double)(T - 1) / (n - 1) : 0;
        for (int i = 0; i < n; i++) {
            const double v = (i == n - 1 && n > 1) ? (double)(T - 1) : i * step;
            ts[n - 1 - i] = (int64_t)nearbyint(v);
        }
        break;
    }
    }
    for (int i = 0; i < n; i++)
        if (ts[i] < 0 || ts[i] >= T) {
            const long long bad = (long long)ts[i];
            free(ts);
            return tensor_fail(STATUS_VALUE,
                               "sd_ddim_set_timesteps: %d steps with steps_offset %d give timestep %lld, outside 0 .. %d",
                               n, s->steps_offset, bad, T - 1);
        }
    free(s->timesteps);
    s->timesteps = ts;
    s->num_inference_steps = n;
    return STATUS_OK;
}

int64_t sd_ddim_prev_timestep(const struct sd_ddim *s, int64_t t)
{
    if (s->num_inference_steps <= 0) return -1;
    return t - s->num_train_timesteps / s->num_inference_steps;
}

double sd_ddim_alpha_bar(const struct sd_ddim *s, int64_t t)
{
    if (t < 0) return s->final_alpha_cumprod;
    if (!s->alphas_cumprod || t >= s->num_train_timesteps) return NAN;
    return s->alphas_cumprod[t];
}

/* ---------------------------------------------------------------- step */

static bool check_step_args(const struct sd_ddim *s, const char *op, struct tensor *mo, int64_t t, struct tensor *x)
{
    char a[96], b[96];
    if (!s->alphas_cumprod) {
        tensor_fail(STATUS_VALUE, "%s: the scheduler is not initialised", op);
        return false;
    }
    if (t < 0 || t >= s->num_train_timesteps) {
        tensor_fail(STATUS_VALUE, "%s: timestep %lld is outside 0 .. %d", op, (long long)t, s->num_train_timesteps - 1);
        return false;
    }
    if (!tensor_same_shape(mo, x)) {
        tensor_fail(STATUS_SHAPE, "%s: model_output %s and sample %s must have one shape", op,
                    tensor_shape_str(mo, a, sizeof a), tensor_shape_str(x, b, sizeof b));
        return false;
    }
    return true;
}

/* x0 and ε per prediction type, before clipping (diffusers computes ε from the unclipped x0) */
static void predict(const struct sd_ddim *s, struct tensor *mo, int64_t t, struct tensor *x, struct tensor **x0,
                    struct tensor **eps)
{
    const double a = s->alphas_cumprod[t], b = 1.0 - a, sa = sqrt(a), sb = sqrt(b);
    switch (s->prediction) {
    case SD_PRED_EPSILON:   /* x0 = (x - sqrt(1-ᾱ) ε) / sqrt(ᾱ) */
        *x0 = ag_scale(ag_sub(x, ag_scale(mo, sb)), 1.0 / sa);
        *eps = mo;
        break;
    case SD_PRED_SAMPLE:    /* ε = (x - sqrt(ᾱ) x0) / sqrt(1-ᾱ) */
        *x0 = mo;
        *eps = ag_scale(ag_sub(x, ag_scale(mo, sa)), 1.0 / sb);
        break;
    case SD_PRED_V_PREDICTION:
        *x0 = ag_sub(ag_scale(x, sa), ag_scale(mo, sb));
        *eps = ag_add(ag_scale(mo, sa), ag_scale(x, sb));
        break;
    }
}

static struct tensor *clip(const struct sd_ddim *s, struct tensor *x0)
{
    return s->clip_sample ? ag_clamp(x0, -s->clip_sample_range, s->clip_sample_range) : x0;
}

struct tensor *sd_ddim_pred_x0(const struct sd_ddim *s, struct tensor *model_output, int64_t t, struct tensor *sample)
{
    if (!model_output || !sample) return NULL;
    if (!check_step_args(s, "sd_ddim_pred_x0", model_output, t, sample)) return NULL;
    tensor_scope_begin();
    struct tensor *x0, *eps;
    predict(s, model_output, t, sample, &x0, &eps);
    return tensor_scope_return(clip(s, x0));
}

struct tensor *sd_ddim_step(const struct sd_ddim *s, struct tensor *model_output, int64_t t, struct tensor *sample,
                            double eta, struct tensor *variance_noise)
{
    if (!model_output || !sample) return NULL;
    const char *op = "sd_ddim_step";
    if (!check_step_args(s, op, model_output, t, sample)) return NULL;
    if (s->num_inference_steps <= 0) {
        tensor_fail(STATUS_VALUE, "%s: call sd_ddim_set_timesteps first (the step size depends on it)", op);
        return NULL;
    }
    if (!(eta >= 0) || !isfinite(eta)) {
        tensor_fail(STATUS_VALUE, "%s: eta = %g must be a finite number >= 0", op, eta);
        return NULL;
    }
    char a_[96], b_[96];
    if (eta > 0 && variance_noise && !tensor_same_shape(variance_noise, sample)) {
        tensor_fail(STATUS_SHAPE, "%s: variance_noise %s must have the shape of sample %s", op,
                    tensor_shape_str(variance_noise, a_, sizeof a_), tensor_shape_str(sample, b_, sizeof b_));
        return NULL;
    }
    const int64_t prev = sd_ddim_prev_timestep(s, t);
    const double a = s->alphas_cumprod[t], ap = sd_ddim_alpha_bar(s, prev);
    const double variance = ((1 - ap) / (1 - a)) * (1 - a / ap);
    const double std_dev = eta * sqrt(variance);
    double dir2 = 1 - ap - std_dev * std_dev;
    if (dir2 < 0) {
        /* exactly 0 for eta = 1 at the last step, up to rounding; beyond that diffusers gives NaN */
        if (dir2 < -1e-12) {
            tensor_fail(STATUS_VALUE, "%s: eta = %g is too large at t = %lld (1 - ᾱ_prev - σ² = %g < 0)", op, eta,
                        (long long)t, dir2);
            return NULL;
        }
        dir2 = 0;
    }
    tensor_scope_begin();
    struct tensor *x0, *eps;
    predict(s, model_output, t, sample, &x0, &eps);
    struct tensor *out = ag_add(ag_scale(clip(s, x0), sqrt(ap)), ag_scale(eps, sqrt(dir2)));
    if (eta > 0) {
        struct tensor *z = variance_noise ? variance_noise
                                          : ag_randn(model_output->dtype, model_output->ndim, model_output->shape,
                                                     tensor_device(model_output));
        out = ag_add(out, ag_scale(z, std_dev));
    }
    return tensor_scope_return(out);
}

/* ---------------------------------------------------------------- training */

/* per-row coefficients sqrt(ᾱ_t) and sqrt(1-ᾱ_t), shaped [B, 1, ...] in x0's dtype and device */
static bool row_coeffs(const struct sd_ddim *s, const char *op, struct tensor *x0, struct tensor *noise,
                       struct tensor *timesteps, struct tensor **ca, struct tensor **cb)
{
    char a[96], b[96];
    if (!s->alphas_cumprod) {
        tensor_fail(STATUS_VALUE, "%s: the scheduler is not initialised", op);
        return false;
    }
    if (!tensor_same_shape(x0, noise) || x0->ndim < 1) {
        tensor_fail(STATUS_SHAPE, "%s: samples %s and noise %s must have one shape [B, ...]", op,
                    tensor_shape_str(x0, a, sizeof a), tensor_shape_str(noise, b, sizeof b));
        return false;
    }
    const int64_t B = x0->shape[0], nt = tensor_numel(timesteps);
    if (timesteps->dtype != DTYPE_I32 && timesteps->dtype != DTYPE_I64) {
        tensor_fail(STATUS_DTYPE, "%s: timesteps must be i32 or i64, got %s", op, dtype_name(timesteps->dtype));
        return false;
    }
    if (timesteps->ndim > 1 || (nt != B && nt != 1)) {
        tensor_fail(STATUS_SHAPE, "%s: timesteps %s must be [B] or [1] for samples %s", op,
                    tensor_shape_str(timesteps, a, sizeof a), tensor_shape_str(x0, b, sizeof b));
        return false;
    }
    /* runs inside the caller's scope: every tensor made here is scope-owned */
    struct tensor *th = tensor_to_device(timesteps, DEVICE_CPU);
    if (!th) return false;
    double *v = malloc((size_t)(2 * nt) * sizeof *v);
    if (!v) {
        tensor_fail(STATUS_OOM, "%s: out of memory", op);
        return false;
    }
    for (int64_t i = 0; i < nt; i++) {
        const double t = tensor_get_flat(th, i);
        if (t < 0 || t >= s->num_train_timesteps) {
            tensor_fail(STATUS_VALUE, "%s: timesteps[%lld] = %.0f is outside 0 .. %d", op, (long long)i, t,
                        s->num_train_timesteps - 1);
            free(v);
            return false;
        }
        const double ab = s->alphas_cumprod[(int64_t)t];
        v[i] = sqrt(ab);
        v[nt + i] = sqrt(1 - ab);
    }
    int64_t shape[TENSOR_MAX_DIMS];
    shape[0] = nt;
    for (int d = 1; d < x0->ndim; d++) shape[d] = 1;
    struct tensor *c[2];
    for (int k = 0; k < 2; k++) {
        struct tensor *h = tensor_to_dtype(tensor_from_data(DTYPE_F64, x0->ndim, shape, v + k * nt), x0->dtype);
        c[k] = h && tensor_device(x0) != DEVICE_CPU ? tensor_to_device(h, tensor_device(x0)) : h;
    }
    free(v);
    *ca = c[0];
    *cb = c[1];
    return c[0] && c[1];
}

struct tensor *sd_ddim_add_noise(const struct sd_ddim *s, struct tensor *x0, struct tensor *noise, struct tensor *timesteps)
{
    if (!x0 || !noise || !timesteps) return NULL;
    tensor_scope_begin();
    struct tensor *ca, *cb;
    if (!row_coeffs(s, "sd_ddim_add_noise", x0, noise, timesteps, &ca, &cb)) return tensor_scope_return(NULL);
    return tensor_scope_return(ag_add(ag_mul(ca, x0), ag_mul(cb, noise)));
}

struct tensor *sd_ddim_velocity(const struct sd_ddim *s, struct tensor *x0, struct tensor *noise, struct tensor *timesteps)
{
    if (!x0 || !noise || !timesteps) return NULL;
    tensor_scope_begin();
    struct tensor *ca, *cb;
    if (!row_coeffs(s, "sd_ddim_velocity", x0, noise, timesteps, &ca, &cb)) return tensor_scope_return(NULL);
    return tensor_scope_return(ag_sub(ag_mul(ca, noise), ag_mul(cb, x0)));
}

struct tensor *sd_ddpm_loss(struct sd_unet *unet, const struct sd_ddim *s, struct tensor *latents,
                            struct tensor *timesteps, struct tensor *noise, struct tensor *encoder_hidden_states)
{
    if (!latents || !timesteps || !noise || !encoder_hidden_states) return NULL;
    tensor_scope_begin();
    struct tensor *noisy = sd_ddim_add_noise(s, latents, noise, timesteps);
    struct tensor *pred = sd_unet_forward(unet, noisy, timesteps, encoder_hidden_states);
    struct tensor *target = s->prediction == SD_PRED_EPSILON        ? noise
                            : s->prediction == SD_PRED_V_PREDICTION ? sd_ddim_velocity(s, latents, noise, timesteps)
                                                                    : latents;
    if (!pred || !target) return tensor_scope_return(NULL);
    /* diffusers: mse_loss(model_pred.float(), target.float()) */
    const enum dtype dt = pred->dtype == DTYPE_F64 ? DTYPE_F64 : DTYPE_F32;
    if (pred->dtype != dt) pred = ag_to_dtype(pred, dt);
    if (target->dtype != dt) target = ag_to_dtype(target, dt);
    return tensor_scope_return(ag_mse_loss(pred, target));
}
