/* optim.c — AdamW (torch.optim.AdamW semantics) with accumulation, clipping, warm-up and decay.
 * The update is written with ag_ ops under no-grad, so it runs on whichever device holds the
 * parameters; moments live beside them. */
#include "nn/optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct nn_adamw_config nn_adamw_config_default(void)
{
    return (struct nn_adamw_config){.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 1e-2,
                                    .max_grad_norm = 0, .warmup_steps = 0, .accum_steps = 1,
                                    .decay = NN_LR_CONSTANT, .decay_steps = 0, .lr_min = 0};
}

static const char *const decay_names[] = {"constant", "linear", "cosine"};

const char *nn_lr_decay_name(enum nn_lr_decay d)
{
    return (unsigned)d < sizeof decay_names / sizeof *decay_names ? decay_names[d] : "?";
}

bool nn_lr_decay_parse(const char *s, enum nn_lr_decay *out)
{
    for (int i = 0; i < (int)(sizeof decay_names / sizeof *decay_names); i++)
        if (!strcmp(s, decay_names[i])) {
            *out = (enum nn_lr_decay)i;
            return true;
        }
    return false;
}

double nn_adamw_lr_at(const struct nn_adamw_config *c, int64_t k)
{
    const int64_t w = c->warmup_steps;
    if (w > 0 && k + 1 < w) return c->lr * (double)(k + 1) / (double)w;
    if (c->decay == NN_LR_CONSTANT) return c->lr;
    const double span = (double)(c->decay_steps - w);
    double t = span > 0 ? (double)(k - w) / span : 1;
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    const double f = c->decay == NN_LR_LINEAR ? 1 - t : 0.5 * (1 + cos(M_PI * t));
    return c->lr_min + (c->lr - c->lr_min) * f;
}

void nn_adamw_free(struct nn_adamw *o)
{
    if (!o) return;
    for (int i = 0; i < o->n; i++) {
        if (o->m) tensor_free(o->m[i]);
        if (o->v) tensor_free(o->v[i]);
        if (o->names) free(o->names[i]);
    }
    free(o->params);
    free(o->names);
    free(o->m);
    free(o->v);
    free(o->param_step);
    memset(o, 0, sizeof *o);
}

static enum status check_config(const struct nn_adamw_config *c)
{
    if (!(c->lr >= 0) || !isfinite(c->lr)) return tensor_fail(STATUS_VALUE, "adamw: lr must be >= 0, got %g", c->lr);
    if (!(c->beta1 >= 0 && c->beta1 < 1)) return tensor_fail(STATUS_VALUE, "adamw: beta1 must be in [0, 1), got %g", c->beta1);
    if (!(c->beta2 >= 0 && c->beta2 < 1)) return tensor_fail(STATUS_VALUE, "adamw: beta2 must be in [0, 1), got %g", c->beta2);
    if (!(c->eps >= 0) || !isfinite(c->eps)) return tensor_fail(STATUS_VALUE, "adamw: eps must be >= 0, got %g", c->eps);
    if (!(c->weight_decay >= 0) || !isfinite(c->weight_decay))
        return tensor_fail(STATUS_VALUE, "adamw: weight_decay must be >= 0, got %g", c->weight_decay);
    if (!(c->max_grad_norm >= 0) || !isfinite(c->max_grad_norm))
        return tensor_fail(STATUS_VALUE, "adamw: max_grad_norm must be >= 0 (0 = no clipping), got %g", c->max_grad_norm);
    if (c->warmup_steps < 0) return tensor_fail(STATUS_VALUE, "adamw: warmup_steps must be >= 0, got %d", c->warmup_steps);
    if (c->accum_steps < 1) return tensor_fail(STATUS_VALUE, "adamw: accum_steps must be >= 1, got %d", c->accum_steps);
    if ((unsigned)c->decay > NN_LR_COSINE) return tensor_fail(STATUS_VALUE, "adamw: unknown learning-rate decay %d", (int)c->decay);
    if (c->decay != NN_LR_CONSTANT && c->decay_steps < 1)
        return tensor_fail(STATUS_VALUE, "adamw: a %s decay needs decay_steps >= 1 (the updates it spans), got %lld",
                           nn_lr_decay_name(c->decay), (long long)c->decay_steps);
    if (c->decay != NN_LR_CONSTANT && !(c->lr_min >= 0 && c->lr_min <= c->lr))
        return tensor_fail(STATUS_VALUE, "adamw: lr_min must be in [0, lr = %g], got %g", c->lr, c->lr_min);
    return STATUS_OK;
}

static enum dtype state_dtype(enum dtype dt) { return dt == DTYPE_F64 ? DTYPE_F64 : DTYPE_F32; }

enum status nn_adamw_init(struct nn_adamw *o, const struct nn_adamw_config *c, struct nn_params *ps)
{
    memset(o, 0, sizeof *o);
    enum status s = check_config(c);
    if (s) return s;
    o->config = *c;
    int n = 0;
    for (int i = 0; i < ps->n; i++) n += ps->v[i].t->requires_grad && dtype_is_float(ps->v[i].t->dtype);
    const size_t cap = (size_t)(n ? n : 1);
    o->params = calloc(cap, sizeof *o->params);
    o->names = calloc(cap, sizeof *o->names);
    o->m = calloc(cap, sizeof *o->m);
    o->v = calloc(cap, sizeof *o->v);
    o->param_step = calloc(cap, sizeof *o->param_step);
    if (!o->params || !o->names || !o->m || !o->v || !o->param_step) {
        nn_adamw_free(o);
        return tensor_fail(STATUS_OOM, "adamw: out of host memory");
    }
    for (int i = 0; i < ps->n; i++) {
        struct tensor *p = ps->v[i].t;
        if (!p->requires_grad || !dtype_is_float(p->dtype)) continue;
        const int k = o->n++;
        o->params[k] = p;
        o->names[k] = strdup(ps->v[i].name);
        const enum dtype sd = state_dtype(p->dtype);
        o->m[k] = tensor_keep(tensor_zeros(sd, p->ndim, p->shape, p->storage->device));
        o->v[k] = tensor_keep(tensor_zeros(sd, p->ndim, p->shape, p->storage->device));
        if (!o->names[k] || !o->m[k] || !o->v[k]) {
            s = o->names[k] ? tensor_status() : tensor_fail(STATUS_OOM, "adamw: out of host memory");
            nn_adamw_free(o);
            return s;
        }
    }
    return STATUS_OK;
}

double nn_adamw_lr(const struct nn_adamw *o) { return nn_adamw_lr_at(&o->config, o->step); }

void nn_adamw_zero_grad(struct nn_adamw *o)
{
    for (int i = 0; i < o->n; i++) ag_zero_grad(o->params[i]);
    o->micro = 0;
}

enum status nn_adamw_step(struct nn_adamw *o, bool *updated, double *grad_norm)
{
    if (updated) *updated = false;
    if (grad_norm) *grad_norm = 0;
    if (++o->micro < o->config.accum_steps) return STATUS_OK;
    const struct nn_adamw_config *c = &o->config;
    struct tensor **g = calloc((size_t)(o->n ? o->n : 1), sizeof *g);
    if (!g) { nn_adamw_zero_grad(o); return tensor_fail(STATUS_OOM, "adamw: out of host memory"); }
    enum status s = STATUS_OK;
    ag_no_grad_begin();
    /* the mean gradient of the micro-batches, and its global norm (clip_grad_norm_: the norm
     * of the per-parameter norms) */
    double sq = 0;
    for (int i = 0; i < o->n && !s; i++) {
        struct tensor *gr = o->params[i]->grad;
        if (!gr) continue;
        tensor_scope_begin();
        struct tensor *gi = ag_to_dtype(gr, o->m[i]->dtype);
        if (c->accum_steps > 1) gi = ag_scale(gi, 1.0 / c->accum_steps);
        struct tensor *nr = tensor_to_device(ag_norm(gi, 0, NULL, false), DEVICE_CPU);   /* read on the host */
        if (!nr) s = tensor_status();
        else {
            const double ni = tensor_get_flat(nr, 0);
            sq += ni * ni;
            g[i] = tensor_keep(gi);
        }
        tensor_scope_end();
    }
    const double norm = sqrt(sq);
    if (grad_norm) *grad_norm = norm;
    if (!s && !isfinite(norm))
        s = tensor_fail(STATUS_VALUE, "adamw: the gradient norm is %g at update %lld; no update made, gradients dropped "
                        "(lower the learning rate or check the loss for inf/nan)", norm, (long long)o->step + 1);
    const double coef = c->max_grad_norm > 0 ? fmin(1.0, c->max_grad_norm / (norm + 1e-6)) : 1.0;
    const double lr = nn_adamw_lr(o);
    for (int i = 0; i < o->n && !s; i++) {
        if (!g[i]) continue;   /* no gradient: skipped, as torch does */
        struct tensor *p = o->params[i];
        const enum dtype sd = o->m[i]->dtype;
        const int64_t t = o->param_step[i] + 1;
        tensor_scope_begin();
        struct tensor *gi = c->max_grad_norm > 0 ? ag_scale(g[i], coef) : g[i];
        struct tensor *pw = ag_to_dtype(p, sd);
        if (c->weight_decay != 0) pw = ag_scale(pw, 1.0 - lr * c->weight_decay);
        struct tensor *m = ag_add(o->m[i], ag_scale(ag_sub(gi, o->m[i]), 1.0 - c->beta1));   /* lerp */
        struct tensor *v = ag_add(ag_scale(o->v[i], c->beta2), ag_scale(ag_mul(gi, gi), 1.0 - c->beta2));
        const double bc1 = 1.0 - pow(c->beta1, (double)t), bc2 = 1.0 - pow(c->beta2, (double)t);
        struct tensor *den = ag_affine(ag_div(ag_sqrt(v), tensor_full(sd, 0, NULL, sqrt(bc2), tensor_device(v))), 1.0, c->eps);
        struct tensor *pn = ag_add(pw, ag_scale(ag_div(m, den), -lr / bc1));
        if (!pn) s = tensor_status();
        if (!s) s = tensor_copy_(o->m[i], m);
        if (!s) s = tensor_copy_(o->v[i], v);
        if (!s) s = tensor_copy_(p, pn);
        tensor_scope_end();
        if (!s) o->param_step[i] = t;
    }
    ag_no_grad_end();
    for (int i = 0; i < o->n; i++) tensor_free(g[i]);
    free(g);
    nn_adamw_zero_grad(o);
    if (s) return s;
    o->step++;
    if (updated) *updated = true;
    return STATUS_OK;
}

/* ---------------------------------------------------------------- state */

int nn_adamw_state_count(const struct nn_adamw *o) { return 2 * o->n + 1; }

enum status nn_adamw_state_collect(const struct nn_adamw *o, char **names, struct tensor **tensors,
                                   const char **meta_keys, const char **meta_values, char meta_buf[][32])
{
    const int cnt = nn_adamw_state_count(o);
    for (int k = 0; k < cnt; k++) { names[k] = NULL; tensors[k] = NULL; }
    enum status s = STATUS_OK;
    for (int i = 0; i < o->n && !s; i++) {
        const size_t len = strlen(o->names[i]) + 16;
        names[2 * i] = malloc(len);
        names[2 * i + 1] = malloc(len);
        if (!names[2 * i] || !names[2 * i + 1]) { s = tensor_fail(STATUS_OOM, "adamw: out of host memory"); break; }
        snprintf(names[2 * i], len, "adamw.m.%s", o->names[i]);
        snprintf(names[2 * i + 1], len, "adamw.v.%s", o->names[i]);
        tensors[2 * i] = tensor_ref(o->m[i]);
        tensors[2 * i + 1] = tensor_ref(o->v[i]);
    }
    if (!s) {
        names[2 * o->n] = strdup("adamw.param_step");
        tensors[2 * o->n] = tensor_keep(tensor_from_data(DTYPE_I64, TENSOR_SHAPE(o->n), o->param_step));
        if (!names[2 * o->n] || !tensors[2 * o->n]) s = tensors[2 * o->n] ? tensor_fail(STATUS_OOM, "adamw: out of host memory") : tensor_status();
    }
    if (s) {
        for (int k = 0; k < cnt; k++) { free(names[k]); tensor_free(tensors[k]); names[k] = NULL; tensors[k] = NULL; }
        return s;
    }
    snprintf(meta_buf[0], 32, "%lld", (long long)o->step);
    snprintf(meta_buf[1], 32, "%d", o->micro);
    meta_keys[0] = "adamw.step";
    meta_keys[1] = "adamw.micro";
    meta_values[0] = meta_buf[0];
    meta_values[1] = meta_buf[1];
    return STATUS_OK;
}

static enum status meta_int(const struct safetensors *st, const char *key, long long lo, long long *out)
{
    const char *v = safetensors_metadata(st, key);
    if (!v) return tensor_fail(STATUS_FORMAT, "%s: metadata '%s' is missing (not an optimizer checkpoint?)", st->path, key);
    char *end;
    *out = strtoll(v, &end, 10);
    if (end == v || *end || *out < lo)
        return tensor_fail(STATUS_FORMAT, "%s: metadata '%s' = '%s' is not an integer >= %lld", st->path, key, v, lo);
    return STATUS_OK;
}

enum status nn_adamw_state_read(struct nn_adamw *o, const struct safetensors *st)
{
    long long step = 0, micro = 0;
    enum status s = meta_int(st, "adamw.step", 0, &step);
    if (!s) s = meta_int(st, "adamw.micro", 0, &micro);
    if (s) return s;
    if (micro >= o->config.accum_steps)
        return tensor_fail(STATUS_FORMAT, "%s: adamw.micro = %lld but accum_steps is %d", st->path, micro, o->config.accum_steps);
    const struct safetensors_entry *e = safetensors_find(st, "adamw.param_step");
    if (!e) return tensor_fail(STATUS_FORMAT, "%s: missing tensor 'adamw.param_step'", st->path);
    if (e->ndim != 1 || e->shape[0] != o->n)
        return tensor_fail(STATUS_SHAPE, "%s: tensor 'adamw.param_step' must have shape [%d] (one per parameter)", st->path, o->n);
    char key[600];
    /* load into temporaries first: a failure leaves the optimizer as it was */
    const int cnt = 2 * o->n;
    struct tensor **tmp = calloc((size_t)(cnt ? cnt : 1), sizeof *tmp);
    if (!tmp) return tensor_fail(STATUS_OOM, "adamw: out of host memory");
    for (int k = 0; k < cnt && !s; k++) {
        struct tensor *ref = k % 2 ? o->v[k / 2] : o->m[k / 2];
        snprintf(key, sizeof key, "adamw.%s.%s", k % 2 ? "v" : "m", o->names[k / 2]);
        if (!safetensors_find(st, key)) { s = tensor_fail(STATUS_FORMAT, "%s: missing tensor '%s'", st->path, key); break; }
        tmp[k] = tensor_keep(tensor_empty_like(ref));
        s = tmp[k] ? safetensors_load_into(st, key, tmp[k]) : tensor_status();
    }
    struct tensor *ps = s ? NULL : tensor_keep(safetensors_load(st, "adamw.param_step", DTYPE_I64, DEVICE_CPU));
    if (!s && !ps) s = tensor_status();
    if (!s) {
        for (int k = 0; k < cnt && !s; k++) s = tensor_copy_(k % 2 ? o->v[k / 2] : o->m[k / 2], tmp[k]);
        for (int i = 0; i < o->n; i++) o->param_step[i] = (int64_t)tensor_get_flat(ps, i);
        o->step = step;
        o->micro = (int)micro;
    }
    tensor_free(ps);
    for (int k = 0; k < cnt; k++) tensor_free(tmp[k]);
    free(tmp);
    return s;
}

enum status nn_adamw_state_save(const struct nn_adamw *o, const char *path)
{
    const int cnt = nn_adamw_state_count(o);
    char **names = calloc((size_t)cnt, sizeof *names);
    struct tensor **ts = calloc((size_t)cnt, sizeof *ts);
    const char *mk[NN_ADAMW_META], *mv[NN_ADAMW_META];
    char buf[NN_ADAMW_META][32];
    enum status s = names && ts ? nn_adamw_state_collect(o, names, ts, mk, mv, buf) : tensor_fail(STATUS_OOM, "adamw: out of host memory");
    if (!s) s = safetensors_save(path, cnt, (const char *const *)names, ts, NN_ADAMW_META, mk, mv);
    if (names && ts)
        for (int k = 0; k < cnt; k++) { free(names[k]); tensor_free(ts[k]); }
    free(names);
    free(ts);
    return s;
}

enum status nn_adamw_state_load(struct nn_adamw *o, const char *path)
{
    struct safetensors *st = safetensors_open(path);
    if (!st) return tensor_status();
    enum status s = nn_adamw_state_read(o, st);
    safetensors_close(st);
    return s;
}
