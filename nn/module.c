/* module.c — the parameter store and the basic layers. */
#include "nn/module.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *nn_name(char *buf, size_t n, const char *prefix, const char *name)
{
    if (prefix && *prefix) snprintf(buf, n, "%s.%s", prefix, name);
    else snprintf(buf, n, "%s", name);
    return buf;
}

void nn_params_init(struct nn_params *ps, enum dtype dt, enum device dev)
{
    memset(ps, 0, sizeof *ps);
    ps->dtype = dt;
    ps->device = dev;
}

void nn_params_free(struct nn_params *ps)
{
    for (int i = 0; i < ps->n; i++) {
        free(ps->v[i].name);
        tensor_free(ps->v[i].t);
    }
    free(ps->v);
    memset(ps, 0, sizeof *ps);
}

struct tensor *nn_param_find(const struct nn_params *ps, const char *name)
{
    for (int i = 0; i < ps->n; i++)
        if (!strcmp(ps->v[i].name, name)) return ps->v[i].t;
    return NULL;
}

struct tensor *nn_param_new(struct nn_params *ps, const char *prefix, const char *name, int ndim, const int64_t *shape)
{
    char full[512];
    nn_name(full, sizeof full, prefix, name);
    if (nn_param_find(ps, full)) {
        tensor_fail(STATUS_VALUE, "parameter '%s' defined twice", full);
        return NULL;
    }
    if (ps->n == ps->cap) {
        int cap = ps->cap ? 2 * ps->cap : 64;
        struct nn_param *v = realloc(ps->v, (size_t)cap * sizeof *v);
        if (!v) { tensor_fail(STATUS_OOM, "out of host memory for parameter '%s'", full); return NULL; }
        ps->v = v;
        ps->cap = cap;
    }
    struct tensor *t = tensor_keep(tensor_zeros(ps->dtype, ndim, shape, ps->device));
    char *nm = strdup(full);
    if (!t || !nm) { tensor_free(t); free(nm); return NULL; }
    tensor_set_name(t, full);
    ps->v[ps->n].name = nm;
    ps->v[ps->n++].t = t;
    return t;
}

int64_t nn_params_count(const struct nn_params *ps)
{
    int64_t n = 0;
    for (int i = 0; i < ps->n; i++) n += tensor_numel(ps->v[i].t);
    return n;
}

void nn_params_set_trainable(struct nn_params *ps, bool on)
{
    for (int i = 0; i < ps->n; i++) ag_set_requires_grad(ps->v[i].t, on);
}

enum status nn_params_to_dtype(struct nn_params *ps, enum dtype dt)
{
    for (int i = 0; i < ps->n; i++) {
        struct tensor *t = ps->v[i].t;
        if (t->dtype == dt) continue;
        struct tensor *c = tensor_keep(tensor_to_dtype(t, dt));
        if (!c) return tensor_status();
        /* swap the converted storage into the parameter's own header, so layers holding a
         * pointer to it stay valid; one parameter at a time, never two copies of the model */
        struct storage *old = t->storage;
        t->storage = c->storage;
        c->storage = old;
        t->dtype = dt;
        t->offset = c->offset;
        for (int d = 0; d < t->ndim; d++) t->stride[d] = c->stride[d];
        t->requires_grad = t->requires_grad && dtype_is_float(dt);
        ag_zero_grad(t);
        tensor_free(c);
    }
    ps->dtype = dt;
    return STATUS_OK;
}

enum status nn_params_load(struct nn_params *ps, const struct safetensors *st, const char *key_prefix, bool allow_extra)
{
    char key[600];
    for (int i = 0; i < ps->n; i++) {
        snprintf(key, sizeof key, "%s%s", key_prefix ? key_prefix : "", ps->v[i].name);
        if (!safetensors_find(st, key))
            return tensor_fail(STATUS_FORMAT, "%s: missing tensor '%s' (the model expects it)", st->path, key);
        enum status s = safetensors_load_into(st, key, ps->v[i].t);
        if (s) return s;
    }
    if (!allow_extra) {
        size_t pl = key_prefix ? strlen(key_prefix) : 0;
        for (int j = 0; j < st->n; j++) {
            const char *k = st->entries[j].name;
            if (pl && strncmp(k, key_prefix, pl)) continue;
            if (!nn_param_find(ps, k + pl))
                return tensor_fail(STATUS_FORMAT, "%s: unexpected tensor '%s' (the model has no such parameter)", st->path, k);
        }
    }
    return STATUS_OK;
}

enum status nn_params_save(const struct nn_params *ps, const char *path)
{
    const char **names = malloc((size_t)(ps->n ? ps->n : 1) * sizeof *names);
    struct tensor **ts = malloc((size_t)(ps->n ? ps->n : 1) * sizeof *ts);
    if (!names || !ts) { free(names); free(ts); return tensor_fail(STATUS_OOM, "out of host memory"); }
    for (int i = 0; i < ps->n; i++) { names[i] = ps->v[i].name; ts[i] = ps->v[i].t; }
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    enum status s = safetensors_save(path, ps->n, names, ts, 1, mk, mv);
    free(names);
    free(ts);
    return s;
}

static bool ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

enum status nn_params_init_default(struct nn_params *ps, uint64_t seed)
{
    uint64_t s0, o0;
    ag_rng_get(&s0, &o0);
    ag_rng_set(seed, 0);
    enum status st = STATUS_OK;
    for (int i = 0; i < ps->n && !st; i++) {
        struct tensor *t = ps->v[i].t;
        const char *nm = ps->v[i].name;
        const char *last = strrchr(nm, '.');
        bool is_norm = last && (strstr(nm, "norm") != NULL) && t->ndim == 1;
        tensor_scope_begin();
        if (is_norm) st = tensor_fill_(t, ends_with(nm, ".weight") ? 1.0 : 0.0);
        else {
            /* fan_in: for a bias, that of the weight beside it */
            int64_t fan_in = 1;
            char wname[600];
            snprintf(wname, sizeof wname, "%.*s.weight", last ? (int)(last - nm) : 0, nm);
            const struct tensor *w = t->ndim >= 2 ? t : nn_param_find(ps, wname);
            if (w && w->ndim >= 2)
                for (int d = 1; d < w->ndim; d++) fan_in *= w->shape[d];
            else if (t->ndim == 2) fan_in = t->shape[1];
            double b = 1.0 / sqrt((double)(fan_in > 0 ? fan_in : 1));
            if (t->ndim == 2 && strstr(nm, "embedding")) b = 1.0;
            struct tensor *u = ag_rand(t->dtype == DTYPE_F64 ? DTYPE_F64 : DTYPE_F32, t->ndim, t->shape, t->storage->device);
            st = u ? tensor_copy_(t, ag_affine(u, 2 * b, -b)) : tensor_status();
        }
        tensor_scope_end();
    }
    ag_rng_set(s0, o0);
    return st;
}

/* ---------------------------------------------------------------- layers */

enum status nn_linear_init(struct nn_linear *l, struct nn_params *ps, const char *prefix, int64_t in, int64_t out, bool bias)
{
    l->weight = nn_param_new(ps, prefix, "weight", TENSOR_SHAPE(out, in));
    l->bias = bias ? nn_param_new(ps, prefix, "bias", TENSOR_SHAPE(out)) : NULL;
    return !l->weight || (bias && !l->bias) ? tensor_status() : STATUS_OK;
}

/* Parameters may be stored in bf16/f16 while the CPU computes in f32 (nn_compute_dtype): a
 * layer casts its weights to the activations' dtype per use (a frozen base costs half the memory;
 * the cast copy lives only as long as the op that uses it). */
enum dtype nn_compute_dtype(enum dtype storage)
{
    return storage == DTYPE_BF16 || storage == DTYPE_F16 ? DTYPE_F32 : storage;
}

struct tensor *nn_param_as(struct tensor *p, const struct tensor *x)
{
    return x && p->dtype != x->dtype && nn_compute_dtype(p->dtype) == x->dtype ? ag_to_dtype(p, x->dtype) : p;
}

static struct tensor *as_dtype(struct tensor *t, enum dtype dt)
{
    return !t || t->dtype == dt ? t : ag_to_dtype(t, dt);
}


/* linear and conv2d take half-precision storage themselves (cast inside the op, so a graph keeps
 * the bf16 weight, not an f32 copy) */
struct tensor *nn_linear_forward(const struct nn_linear *l, struct tensor *x)
{
    return x ? ag_linear(x, l->weight, l->bias) : NULL;
}

enum status nn_conv2d_init(struct nn_conv2d *c, struct nn_params *ps, const char *prefix, int64_t in, int64_t out,
                           int kernel, int stride, int padding, bool bias)
{
    c->weight = nn_param_new(ps, prefix, "weight", TENSOR_SHAPE(out, in, kernel, kernel));
    c->bias = bias ? nn_param_new(ps, prefix, "bias", TENSOR_SHAPE(out)) : NULL;
    c->p = conv2d_params_default();
    c->p.stride_h = c->p.stride_w = stride;
    c->p.pad_top = c->p.pad_bottom = c->p.pad_left = c->p.pad_right = padding;
    return !c->weight || (bias && !c->bias) ? tensor_status() : STATUS_OK;
}

struct tensor *nn_conv2d_forward(const struct nn_conv2d *c, struct tensor *x)
{
    return x ? ag_conv2d(x, c->weight, c->bias, &c->p) : NULL;
}

enum status nn_group_norm_init(struct nn_group_norm *g, struct nn_params *ps, const char *prefix, int groups,
                               int64_t channels, double eps)
{
    if (groups <= 0 || channels % groups)
        return tensor_fail(STATUS_VALUE, "%s: %lld channels do not split into %d groups", prefix, (long long)channels, groups);
    g->weight = nn_param_new(ps, prefix, "weight", TENSOR_SHAPE(channels));
    g->bias = nn_param_new(ps, prefix, "bias", TENSOR_SHAPE(channels));
    g->groups = groups;
    g->eps = eps;
    if (g->weight) tensor_fill_(g->weight, 1.0);
    return !g->weight || !g->bias ? tensor_status() : STATUS_OK;
}

struct tensor *nn_group_norm_forward(const struct nn_group_norm *g, struct tensor *x)
{
    if (!x) return NULL;
    if (!ag_storage_cast(g->weight, x)) return ag_group_norm(x, g->groups, g->weight, g->bias, g->eps);
    tensor_scope_begin();
    return tensor_scope_return(ag_group_norm(x, g->groups, as_dtype(g->weight, x->dtype), as_dtype(g->bias, x->dtype), g->eps));
}

enum status nn_layer_norm_init(struct nn_layer_norm *l, struct nn_params *ps, const char *prefix, int64_t dim, double eps)
{
    l->weight = nn_param_new(ps, prefix, "weight", TENSOR_SHAPE(dim));
    l->bias = nn_param_new(ps, prefix, "bias", TENSOR_SHAPE(dim));
    l->eps = eps;
    if (l->weight) tensor_fill_(l->weight, 1.0);
    return !l->weight || !l->bias ? tensor_status() : STATUS_OK;
}

struct tensor *nn_layer_norm_forward(const struct nn_layer_norm *l, struct tensor *x)
{
    if (!x) return NULL;
    if (!ag_storage_cast(l->weight, x)) return ag_layer_norm(x, 1, l->weight, l->bias, l->eps);
    tensor_scope_begin();
    return tensor_scope_return(ag_layer_norm(x, 1, as_dtype(l->weight, x->dtype), as_dtype(l->bias, x->dtype), l->eps));
}

enum status nn_embedding_init(struct nn_embedding *e, struct nn_params *ps, const char *prefix, int64_t rows, int64_t dim)
{
    e->weight = nn_param_new(ps, prefix, "weight", TENSOR_SHAPE(rows, dim));
    return e->weight ? STATUS_OK : tensor_status();
}

struct tensor *nn_embedding_forward(const struct nn_embedding *e, struct tensor *ids)
{
    const enum dtype dt = nn_compute_dtype(e->weight->dtype);
    if (dt == e->weight->dtype) return ag_embedding(e->weight, ids);
    tensor_scope_begin();
    return tensor_scope_return(as_dtype(ag_embedding(e->weight, ids), dt));   /* rows first, then the cast */
}
