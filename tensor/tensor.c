/* tensor.c — creation, references, scopes, views, element access, errors. */
#include "tensor/tensor.h"
#include "tensor/alloc.h"
#include "tensor/backend.h"
#include "tensor/half.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- errors */

static _Thread_local char err_msg[1024];
static _Thread_local enum status err_status;

const char *tensor_error(void) { return err_status ? err_msg : "no error"; }
enum status tensor_status(void) { return err_status; }
void tensor_clear_error(void) { err_status = STATUS_OK; err_msg[0] = 0; }

enum status tensor_fail(enum status s, const char *fmt, ...)
{
    /* formatted aside first: a caller may wrap the previous message, tensor_error(), which is err_msg */
    char msg[sizeof err_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(err_msg, msg, sizeof msg);
    err_status = s;
    return s;
}

/* ---------------------------------------------------------------- live counters */

static atomic_llong n_live_tensors, n_live_storages;
int64_t tensor_live_count(void) { return atomic_load(&n_live_tensors); }
int64_t storage_live_count(void) { return atomic_load(&n_live_storages); }

/* autograd registers how to drop its per-tensor state (keeps the layering one-way) */
void (*tensor_autograd_release_hook)(struct tensor *t);

/* ---------------------------------------------------------------- scopes */

struct scope {
    struct tensor **items;
    int n, cap;
};
#define MAX_SCOPE_DEPTH 64
static _Thread_local struct scope scopes[MAX_SCOPE_DEPTH];
static _Thread_local int scope_depth;

void tensor_scope_begin(void)
{
    assert(scope_depth < MAX_SCOPE_DEPTH && "tensor scopes nested too deep");
    scopes[scope_depth].n = 0;
    scope_depth++;
}

void tensor_scope_end(void)
{
    assert(scope_depth > 0 && "tensor_scope_end without tensor_scope_begin");
    struct scope *s = &scopes[scope_depth - 1];
    /* free in reverse creation order: consumers before producers */
    for (int i = s->n - 1; i >= 0; i--) tensor_free(s->items[i]);
    s->n = 0;
    scope_depth--;
    if (scope_depth == 0) {
        for (int i = 0; i < MAX_SCOPE_DEPTH; i++) { free(scopes[i].items); scopes[i].items = NULL; scopes[i].cap = 0; }
    }
}

struct tensor *tensor_autorelease(struct tensor *t)
{
    if (!t || scope_depth == 0) return t;
    struct scope *s = &scopes[scope_depth - 1];
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 64;
        struct tensor **items = realloc(s->items, (size_t)cap * sizeof *items);
        assert(items && "out of host memory for a tensor scope");
        s->items = items;
        s->cap = cap;
    }
    s->items[s->n++] = t;
    return t;
}

struct tensor *tensor_keep(struct tensor *t)
{
    if (!t || scope_depth == 0) return t;
    struct scope *s = &scopes[scope_depth - 1];
    for (int i = s->n - 1; i >= 0; i--) {
        if (s->items[i] == t) {
            memmove(&s->items[i], &s->items[i + 1], (size_t)(s->n - i - 1) * sizeof *s->items);
            s->n--;
            return t;
        }
    }
    /* not owned by this scope: give the caller a reference of its own */
    t->refcount++;
    return t;
}

struct tensor *tensor_scope_return(struct tensor *t)
{
    tensor_keep(t);
    tensor_scope_end();
    return tensor_autorelease(t);
}

/* ---------------------------------------------------------------- dtypes */

size_t dtype_size(enum dtype dt)
{
    static const size_t sz[DTYPE_COUNT] = {4, 8, 2, 2, 4, 8};
    return sz[dt];
}

const char *dtype_name(enum dtype dt)
{
    static const char *nm[DTYPE_COUNT] = {"f32", "f64", "f16", "bf16", "i32", "i64"};
    return (unsigned)dt < DTYPE_COUNT ? nm[dt] : "?";
}

bool dtype_is_float(enum dtype dt) { return dt <= DTYPE_BF16; }

const char *device_name(enum device d) { return d == DEVICE_CPU ? "cpu" : d == DEVICE_CUDA ? "cuda" : "?"; }

static enum precision g_precision = PRECISION_F32;
void tensor_set_precision(enum precision p) { g_precision = p; }
enum precision tensor_precision(void) { return g_precision; }

const char *precision_name(enum precision p)
{
    return p == PRECISION_F32 ? "f32" : p == PRECISION_TF32 ? "tf32" : p == PRECISION_BF16 ? "bf16" : "?";
}

bool precision_parse(const char *s, enum precision *p)
{
    static const enum precision all[] = {PRECISION_F32, PRECISION_TF32, PRECISION_BF16};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (s && !strcmp(s, precision_name(all[i]))) {
            *p = all[i];
            return true;
        }
    return false;
}

float bf16_to_f32(uint16_t h)
{
    uint32_t u = half_bf16_to_f32_bits(h);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return half_f32_bits_to_bf16(u);
}

float f16_to_f32(uint16_t h)
{
    uint32_t u = half_f16_to_f32_bits(h);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return half_f32_bits_to_f16(u);
}

/* ---------------------------------------------------------------- creation */

static struct tensor *tensor_struct_new(void)
{
    struct tensor *t = calloc(1, sizeof *t);
    if (!t) { tensor_fail(STATUS_OOM, "out of host memory for a tensor header"); return NULL; }
    t->refcount = 1;
    atomic_fetch_add(&n_live_tensors, 1);
    return t;
}

static void set_contiguous_strides(struct tensor *t)
{
    int64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        t->stride[d] = s;
        s *= t->shape[d];
    }
}

static bool check_shape(int ndim, const int64_t *shape, const char *op)
{
    if (ndim < 0 || ndim > TENSOR_MAX_DIMS) {
        tensor_fail(STATUS_SHAPE, "%s: %d dims requested, at most %d supported", op, ndim, TENSOR_MAX_DIMS);
        return false;
    }
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) {
            tensor_fail(STATUS_SHAPE, "%s: negative size %lld in dim %d", op, (long long)shape[d], d);
            return false;
        }
    }
    return true;
}

struct tensor *tensor_empty(enum dtype dt, int ndim, const int64_t *shape, enum device dev)
{
    if ((unsigned)dt >= DTYPE_COUNT) { tensor_fail(STATUS_DTYPE, "tensor_empty: unknown dtype %d", (int)dt); return NULL; }
    if (!check_shape(ndim, shape, "tensor_empty")) return NULL;
    int64_t n = 1, nbytes = 0;
    bool over = false;
    for (int d = 0; d < ndim; d++) over = over || __builtin_mul_overflow(n, shape[d], &n);
    if (over || __builtin_mul_overflow(n, (int64_t)dtype_size(dt), &nbytes)) {   /* a malformed file's shape, say */
        tensor_fail(STATUS_OOM, "tensor_empty: a %d-dim shape of more than 2^63 bytes (dims %lld, %lld, ...)", ndim,
                    (long long)shape[0], ndim > 1 ? (long long)shape[1] : 1LL);
        return NULL;
    }
    struct storage *st = calloc(1, sizeof *st);
    if (!st) { tensor_fail(STATUS_OOM, "out of host memory for a storage header"); return NULL; }
    size_t bytes = (size_t)nbytes, rounded = 0;
    st->data = mem_alloc(dev, bytes ? bytes : 1, &rounded);
    if (!st->data) { free(st); return NULL; }
    st->bytes = rounded;
    st->device = dev;
    st->refcount = 1;
    atomic_fetch_add(&n_live_storages, 1);
    struct tensor *t = tensor_struct_new();
    if (!t) { mem_free(dev, st->data, st->bytes); free(st); atomic_fetch_sub(&n_live_storages, 1); return NULL; }
    t->dtype = dt;
    t->ndim = ndim;
    if (ndim) memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);   /* shape may be NULL for a scalar */
    set_contiguous_strides(t);
    t->storage = st;
    return tensor_autorelease(t);
}

struct tensor *tensor_zeros(enum dtype dt, int ndim, const int64_t *shape, enum device dev)
{
    return tensor_full(dt, ndim, shape, 0.0, dev);
}

struct tensor *tensor_full(enum dtype dt, int ndim, const int64_t *shape, double value, enum device dev)
{
    struct tensor *t = tensor_empty(dt, ndim, shape, dev);
    if (t && tensor_fill_(t, value)) return NULL;   /* scope or caller still owns t; fill cannot fail on a fresh tensor */
    return t;
}

struct tensor *tensor_empty_like(const struct tensor *t)
{
    return t ? tensor_empty(t->dtype, t->ndim, t->shape, t->storage->device) : NULL;
}

struct tensor *tensor_zeros_like(const struct tensor *t)
{
    return t ? tensor_zeros(t->dtype, t->ndim, t->shape, t->storage->device) : NULL;
}

struct tensor *tensor_from_data(enum dtype dt, int ndim, const int64_t *shape, const void *data)
{
    struct tensor *t = tensor_empty(dt, ndim, shape, DEVICE_CPU);
    if (t) memcpy(tensor_data_ptr(t), data, (size_t)tensor_numel(t) * dtype_size(dt));
    return t;
}

struct tensor *tensor_scalar(enum dtype dt, double value)
{
    return tensor_full(dt, 0, NULL, value, DEVICE_CPU);
}

struct tensor *tensor_wrap(enum dtype dt, int ndim, const int64_t *shape, void *data)
{
    if (!check_shape(ndim, shape, "tensor_wrap")) return NULL;
    struct storage *st = calloc(1, sizeof *st);
    struct tensor *t = st ? tensor_struct_new() : NULL;
    if (!t) { free(st); tensor_fail(STATUS_OOM, "out of host memory"); return NULL; }
    st->data = data;
    st->device = DEVICE_CPU;
    st->refcount = 1;
    st->external = true;
    atomic_fetch_add(&n_live_storages, 1);
    t->dtype = dt;
    t->ndim = ndim;
    if (ndim) memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);   /* shape may be NULL for a scalar */
    set_contiguous_strides(t);
    st->bytes = (size_t)tensor_numel(t) * dtype_size(dt);
    t->storage = st;
    return tensor_autorelease(t);
}

/* ---------------------------------------------------------------- references */

struct tensor *tensor_ref(struct tensor *t)
{
    if (t) t->refcount++;
    return t;
}

static void storage_unref(struct storage *st)
{
    if (--st->refcount > 0) return;
    if (!st->external) mem_free(st->device, st->data, st->bytes);
    free(st);
    atomic_fetch_sub(&n_live_storages, 1);
}

void tensor_free(struct tensor *t)
{
    if (!t) return;
    assert(t->refcount > 0 && "tensor freed more often than referenced");
    if (--t->refcount > 0) return;
    if (tensor_autograd_release_hook && (t->node || t->grad)) tensor_autograd_release_hook(t);
    storage_unref(t->storage);
    free(t);
    atomic_fetch_sub(&n_live_tensors, 1);
}

/* ---------------------------------------------------------------- queries */

int64_t tensor_numel(const struct tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

bool tensor_is_contiguous(const struct tensor *t)
{
    int64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != s) return false;
        s *= t->shape[d];
    }
    return true;
}

bool tensor_same_shape(const struct tensor *a, const struct tensor *b)
{
    if (a->ndim != b->ndim) return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return false;
    return true;
}

enum device tensor_device(const struct tensor *t) { return t->storage->device; }

const char *tensor_shape_str(const struct tensor *t, char *buf, size_t n)
{
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int d = 0; d < t->ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, d ? ",%lld" : "%lld", (long long)t->shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}

void *tensor_data_ptr(const struct tensor *t)
{
    return (char *)t->storage->data + t->offset * (int64_t)dtype_size(t->dtype);
}

static double load_elem(const void *p, enum dtype dt)
{
    switch (dt) {
    case DTYPE_F32: return *(const float *)p;
    case DTYPE_F64: return *(const double *)p;
    case DTYPE_F16: return f16_to_f32(*(const uint16_t *)p);
    case DTYPE_BF16: return bf16_to_f32(*(const uint16_t *)p);
    case DTYPE_I32: return *(const int32_t *)p;
    case DTYPE_I64: return (double)*(const int64_t *)p;
    default: return 0;
    }
}

static void store_elem(void *p, enum dtype dt, double v)
{
    switch (dt) {
    case DTYPE_F32: *(float *)p = (float)v; break;
    case DTYPE_F64: *(double *)p = v; break;
    case DTYPE_F16: *(uint16_t *)p = f32_to_f16((float)v); break;
    case DTYPE_BF16: *(uint16_t *)p = f32_to_bf16((float)v); break;
    case DTYPE_I32: *(int32_t *)p = (int32_t)v; break;
    case DTYPE_I64: *(int64_t *)p = (int64_t)v; break;
    default: break;
    }
}

static int64_t flat_to_offset(const struct tensor *t, int64_t i)
{
    int64_t off = t->offset;
    for (int d = t->ndim - 1; d >= 0; d--) {
        off += (i % t->shape[d]) * t->stride[d];
        i /= t->shape[d];
    }
    return off;
}

double tensor_get(const struct tensor *t, const int64_t *index)
{
    assert(t->storage->device == DEVICE_CPU);
    int64_t off = t->offset;
    for (int d = 0; d < t->ndim; d++) off += index[d] * t->stride[d];
    return load_elem((char *)t->storage->data + off * (int64_t)dtype_size(t->dtype), t->dtype);
}

double tensor_get_flat(const struct tensor *t, int64_t i)
{
    assert(t->storage->device == DEVICE_CPU);
    return load_elem((char *)t->storage->data + flat_to_offset(t, i) * (int64_t)dtype_size(t->dtype), t->dtype);
}

void tensor_set_flat(struct tensor *t, int64_t i, double v)
{
    assert(t->storage->device == DEVICE_CPU);
    store_elem((char *)t->storage->data + flat_to_offset(t, i) * (int64_t)dtype_size(t->dtype), t->dtype, v);
}

void tensor_set_name(struct tensor *t, const char *name)
{
    if (t) snprintf(t->name, sizeof t->name, "%s", name);
}

int tensor_dim(const struct tensor *t, int dim, const char *op)
{
    int nd = t->ndim;
    if (dim < -nd || dim >= (nd ? nd : 1)) {
        char b[128];
        tensor_fail(STATUS_SHAPE, "%s: dim %d out of range for a tensor of shape %s", op, dim, tensor_shape_str(t, b, sizeof b));
        return -1;
    }
    return dim < 0 ? dim + nd : dim;
}

int tensor_broadcast_shape(const struct tensor *a, const struct tensor *b, int64_t *out, const char *op)
{
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int i = 0; i < nd; i++) {
        int da = a->ndim - nd + i, db = b->ndim - nd + i;
        int64_t sa = da >= 0 ? a->shape[da] : 1, sb = db >= 0 ? b->shape[db] : 1;
        if (sa != sb && sa != 1 && sb != 1) {
            char x[128], y[128];
            tensor_fail(STATUS_SHAPE, "%s: shapes %s and %s cannot be broadcast (dim %d: %lld vs %lld)", op,
                        tensor_shape_str(a, x, sizeof x), tensor_shape_str(b, y, sizeof y), i, (long long)sa, (long long)sb);
            return -1;
        }
        out[i] = sa == 1 ? sb : sa;
    }
    return nd;
}

/* ---------------------------------------------------------------- views */

static struct tensor *view_of(struct tensor *t)
{
    struct tensor *v = tensor_struct_new();
    if (!v) return NULL;
    v->dtype = t->dtype;
    v->ndim = t->ndim;
    memcpy(v->shape, t->shape, sizeof v->shape);
    memcpy(v->stride, t->stride, sizeof v->stride);
    v->offset = t->offset;
    v->storage = t->storage;
    t->storage->refcount++;
    return v;
}

struct tensor *tensor_alias(struct tensor *t)
{
    return t ? tensor_autorelease(view_of(t)) : NULL;
}

/* Compute strides for viewing t as `shape` without a copy (the rule torch.view uses):
 * walk groups of old dims that are contiguous among themselves. */
static bool view_strides(const struct tensor *t, int ndim, const int64_t *shape, int64_t *stride)
{
    int64_t numel = tensor_numel(t);
    if (t->ndim == 0) {   /* one element: every shape of ones is a view */
        for (int d = 0; d < ndim; d++) stride[d] = 1;
        return true;
    }
    if (numel == 0) {
        int64_t s = 1;
        for (int d = ndim - 1; d >= 0; d--) { stride[d] = s; s *= shape[d] ? shape[d] : 1; }
        return true;
    }
    int view_d = ndim - 1;
    int64_t chunk_base_stride = t->ndim ? t->stride[t->ndim - 1] : 1;
    int64_t tensor_numel_acc = 1, view_numel = 1;
    for (int td = t->ndim - 1; td >= 0; td--) {
        tensor_numel_acc *= t->shape[td];
        if (td == 0 || (t->shape[td - 1] != 1 && t->stride[td - 1] != tensor_numel_acc * chunk_base_stride)) {
            while (view_d >= 0 && (view_numel < tensor_numel_acc || shape[view_d] == 1)) {
                stride[view_d] = view_numel * chunk_base_stride;
                view_numel *= shape[view_d];
                view_d--;
            }
            if (view_numel != tensor_numel_acc) return false;
            if (td > 0) {
                chunk_base_stride = t->stride[td - 1];
                tensor_numel_acc = 1;
                view_numel = 1;
            }
        }
    }
    return view_d == -1;
}

/* "[2,-1,3]" into buf: the sizes a caller asked for */
static const char *sizes_str(int ndim, const int64_t *shape, char *buf, size_t n)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && k < n; d++) k += (size_t)snprintf(buf + k, n - k, d ? ",%lld" : "%lld", (long long)shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}

static bool resolve_shape(const struct tensor *t, int ndim, const int64_t *shape, int64_t *out, const char *op)
{
    /* not check_shape: -1 is allowed here, and a successful call must not leave an error behind */
    if (ndim < 0 || ndim > TENSOR_MAX_DIMS) {
        tensor_fail(STATUS_SHAPE, "%s: %d dims requested, at most %d supported", op, ndim, TENSOR_MAX_DIMS);
        return false;
    }
    int infer = -1;
    int64_t known = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == -1 && infer < 0) { infer = d; continue; }
        if (shape[d] < 0) { tensor_fail(STATUS_SHAPE, "%s: bad size %lld in dim %d", op, (long long)shape[d], d); return false; }
        known *= shape[d];
        out[d] = shape[d];
    }
    int64_t n = tensor_numel(t);
    if (infer >= 0) {
        if (known == 0 || n % known) goto bad;
        out[infer] = n / known;
    } else if (known != n) goto bad;
    return true;
bad:;
    char a[128], b[160];
    tensor_fail(STATUS_SHAPE, "%s: cannot view a tensor of shape %s (%lld elements) as %s", op,
                tensor_shape_str(t, a, sizeof a), (long long)n, sizes_str(ndim, shape, b, sizeof b));
    return false;
}

struct tensor *tensor_view(struct tensor *t, int ndim, const int64_t *shape)
{
    if (!t) return NULL;
    if (ndim > TENSOR_MAX_DIMS) { tensor_fail(STATUS_SHAPE, "view: %d dims, at most %d", ndim, TENSOR_MAX_DIMS); return NULL; }
    int64_t sh[TENSOR_MAX_DIMS], st[TENSOR_MAX_DIMS];
    if (!resolve_shape(t, ndim, shape, sh, "view")) return NULL;
    if (!view_strides(t, ndim, sh, st)) {
        char a[128], b[160];
        tensor_fail(STATUS_SHAPE, "view: the strides of a tensor of shape %s do not allow the view %s; use reshape",
                    tensor_shape_str(t, a, sizeof a), sizes_str(ndim, sh, b, sizeof b));
        return NULL;
    }
    struct tensor *v = view_of(t);
    if (!v) return NULL;
    v->ndim = ndim;
    memcpy(v->shape, sh, (size_t)ndim * sizeof *sh);
    memcpy(v->stride, st, (size_t)ndim * sizeof *st);
    return tensor_autorelease(v);
}

struct tensor *tensor_reshape(struct tensor *t, int ndim, const int64_t *shape)
{
    if (!t) return NULL;
    int64_t sh[TENSOR_MAX_DIMS], st[TENSOR_MAX_DIMS];
    if (ndim > TENSOR_MAX_DIMS) { tensor_fail(STATUS_SHAPE, "reshape: %d dims, at most %d", ndim, TENSOR_MAX_DIMS); return NULL; }
    if (!resolve_shape(t, ndim, shape, sh, "reshape")) return NULL;
    if (view_strides(t, ndim, sh, st)) return tensor_view(t, ndim, sh);
    struct tensor *c = tensor_clone(t);
    if (!c) return NULL;
    struct tensor *v = view_of(c);   /* c is contiguous: the plain strides */
    tensor_free(tensor_keep(c));     /* drop our reference to c (the view keeps the storage) */
    if (!v) return NULL;
    v->ndim = ndim;
    memcpy(v->shape, sh, (size_t)ndim * sizeof *sh);
    set_contiguous_strides(v);
    return tensor_autorelease(v);
}

struct tensor *tensor_permute(struct tensor *t, const int *perm)
{
    if (!t) return NULL;
    bool seen[TENSOR_MAX_DIMS] = {0};
    for (int d = 0; d < t->ndim; d++) {
        if (perm[d] < 0 || perm[d] >= t->ndim || seen[perm[d]]) {
            tensor_fail(STATUS_VALUE, "permute: entry %d (= %d) is not a permutation of %d dims", d, perm[d], t->ndim);
            return NULL;
        }
        seen[perm[d]] = true;
    }
    struct tensor *v = view_of(t);
    if (!v) return NULL;
    for (int d = 0; d < t->ndim; d++) {
        v->shape[d] = t->shape[perm[d]];
        v->stride[d] = t->stride[perm[d]];
    }
    return tensor_autorelease(v);
}

struct tensor *tensor_transpose(struct tensor *t, int d0, int d1)
{
    if (!t) return NULL;
    if ((d0 = tensor_dim(t, d0, "transpose")) < 0 || (d1 = tensor_dim(t, d1, "transpose")) < 0) return NULL;
    int perm[TENSOR_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++) perm[d] = d;
    perm[d0] = d1;
    perm[d1] = d0;
    return tensor_permute(t, perm);
}

struct tensor *tensor_narrow(struct tensor *t, int dim, int64_t start, int64_t length)
{
    if (!t) return NULL;
    if ((dim = tensor_dim(t, dim, "narrow")) < 0) return NULL;
    if (start < 0 || length < 0 || start + length > t->shape[dim]) {
        char a[128];
        tensor_fail(STATUS_SHAPE, "narrow: range [%lld, %lld) outside dim %d of shape %s", (long long)start,
                    (long long)(start + length), dim, tensor_shape_str(t, a, sizeof a));
        return NULL;
    }
    struct tensor *v = view_of(t);
    if (!v) return NULL;
    v->offset += start * t->stride[dim];
    v->shape[dim] = length;
    return tensor_autorelease(v);
}

struct tensor *tensor_select(struct tensor *t, int dim, int64_t index)
{
    if (!t) return NULL;
    if ((dim = tensor_dim(t, dim, "select")) < 0) return NULL;
    if (index < 0) index += t->shape[dim];
    if (index < 0 || index >= t->shape[dim]) {
        char a[128];
        tensor_fail(STATUS_SHAPE, "select: index %lld out of range for dim %d of shape %s", (long long)index, dim,
                    tensor_shape_str(t, a, sizeof a));
        return NULL;
    }
    struct tensor *v = view_of(t);
    if (!v) return NULL;
    v->offset += index * t->stride[dim];
    for (int d = dim; d < t->ndim - 1; d++) { v->shape[d] = t->shape[d + 1]; v->stride[d] = t->stride[d + 1]; }
    v->ndim--;
    return tensor_autorelease(v);
}

struct tensor *tensor_expand(struct tensor *t, int ndim, const int64_t *shape)
{
    if (!t) return NULL;
    if (ndim < t->ndim || ndim > TENSOR_MAX_DIMS) {
        tensor_fail(STATUS_SHAPE, "expand: cannot expand %d dims to %d", t->ndim, ndim);
        return NULL;
    }
    struct tensor *v = view_of(t);
    if (!v) return NULL;
    v->ndim = ndim;
    for (int d = ndim - 1; d >= 0; d--) {
        int sd = d - (ndim - t->ndim);
        int64_t size = sd >= 0 ? t->shape[sd] : 1, want = shape[d] == -1 ? size : shape[d];
        if (want < 0 || (size != want && size != 1)) {
            char a[128];
            tensor_fail(STATUS_SHAPE, "expand: dim %d of shape %s has size %lld, cannot expand to %lld", sd,
                        tensor_shape_str(t, a, sizeof a), (long long)size, (long long)want);
            tensor_free(v);
            return NULL;
        }
        v->shape[d] = want;
        v->stride[d] = (sd >= 0 && size == want) ? t->stride[sd] : 0;
    }
    return tensor_autorelease(v);
}

struct tensor *tensor_squeeze(struct tensor *t, int dim)
{
    if (!t) return NULL;
    if ((dim = tensor_dim(t, dim, "squeeze")) < 0) return NULL;
    if (t->shape[dim] != 1) {
        char a[128];
        tensor_fail(STATUS_SHAPE, "squeeze: dim %d of shape %s has size %lld, not 1", dim, tensor_shape_str(t, a, sizeof a),
                    (long long)t->shape[dim]);
        return NULL;
    }
    return tensor_select(t, dim, 0);
}

struct tensor *tensor_unsqueeze(struct tensor *t, int dim)
{
    if (!t) return NULL;
    if (dim < 0) dim += t->ndim + 1;
    if (dim < 0 || dim > t->ndim || t->ndim == TENSOR_MAX_DIMS) {
        tensor_fail(STATUS_SHAPE, "unsqueeze: dim %d out of range for %d dims", dim, t->ndim);
        return NULL;
    }
    struct tensor *v = view_of(t);
    if (!v) return NULL;
    for (int d = t->ndim; d > dim; d--) { v->shape[d] = t->shape[d - 1]; v->stride[d] = t->stride[d - 1]; }
    v->shape[dim] = 1;
    v->stride[dim] = dim < t->ndim ? t->shape[dim] * t->stride[dim] : 1;
    v->ndim++;
    return tensor_autorelease(v);
}

/* ---------------------------------------------------------------- copies */

enum status tensor_copy_(struct tensor *dst, const struct tensor *src)
{
    if (!dst || !src) return tensor_status() ? tensor_status() : tensor_fail(STATUS_VALUE, "copy: NULL tensor");
    if (!tensor_same_shape(dst, src)) {
        char a[128], b[128];
        return tensor_fail(STATUS_SHAPE, "copy: destination %s and source %s differ", tensor_shape_str(dst, a, sizeof a),
                           tensor_shape_str(src, b, sizeof b));
    }
    enum device dd = dst->storage->device, sd = src->storage->device;
    if (dd == sd) return backend_for(dd)->copy(dst, src);
    /* across devices: stage through a contiguous tensor of dst's dtype on the source device */
    const struct backend *gpu = backend_for(dd == DEVICE_CPU ? sd : dd);
    struct tensor *tmp = tensor_empty(dst->dtype, src->ndim, src->shape, sd);
    if (!tmp) return tensor_status();
    enum status s = backend_for(sd)->copy(tmp, src);
    struct tensor *tmp2 = s ? NULL : tensor_empty(dst->dtype, dst->ndim, dst->shape, dd);
    if (!s && !tmp2) s = tensor_status();
    if (!s) {
        size_t bytes = (size_t)tensor_numel(tmp) * dtype_size(tmp->dtype);
        s = dd == DEVICE_CPU ? gpu->download(tensor_data_ptr(tmp2), tensor_data_ptr(tmp), bytes)
                             : gpu->upload(tensor_data_ptr(tmp2), tensor_data_ptr(tmp), bytes);
    }
    if (!s) s = backend_for(dd)->copy(dst, tmp2);
    tensor_free(tensor_keep(tmp));
    if (tmp2) tensor_free(tensor_keep(tmp2));
    return s;
}

enum status tensor_fill_(struct tensor *dst, double value)
{
    if (!dst) return tensor_status();
    return backend_of(dst)->fill(dst, value);
}

static struct tensor *copy_as(const struct tensor *t, enum dtype dt, enum device dev)
{
    if (!t) return NULL;
    struct tensor *c = tensor_empty(dt, t->ndim, t->shape, dev);
    if (c && tensor_copy_(c, t)) {
        tensor_free(tensor_keep(c));
        return NULL;
    }
    return c;
}

struct tensor *tensor_clone(const struct tensor *t) { return t ? copy_as(t, t->dtype, t->storage->device) : NULL; }
struct tensor *tensor_to_dtype(const struct tensor *t, enum dtype dt) { return t ? copy_as(t, dt, t->storage->device) : NULL; }
struct tensor *tensor_to_device(const struct tensor *t, enum device dev) { return t ? copy_as(t, t->dtype, dev) : NULL; }

struct tensor *tensor_contiguous(struct tensor *t)
{
    if (!t) return NULL;
    if (tensor_is_contiguous(t)) return tensor_autorelease(tensor_ref(t));
    return tensor_clone(t);
}

/* ---------------------------------------------------------------- backends, threads */

static const struct backend *backends[DEVICE_COUNT] = {[DEVICE_CPU] = &backend_cpu};

#ifdef TENSOR_HAVE_CUDA
#include "tensor/cuda/cuda.h"
#endif

const struct backend *backend_for(enum device dev)
{
    if ((unsigned)dev >= DEVICE_COUNT) return NULL;
#ifdef TENSOR_HAVE_CUDA
    /* the CUDA backend registers itself on first use, if a device is present */
    if (dev == DEVICE_CUDA && !backends[dev]) cuda_init();
#endif
    return profile_wrap(backends[dev]);
}
const struct backend *backend_of(const struct tensor *t) { return profile_wrap(backends[t->storage->device]); }
enum status tensor_device_memory(enum device dev, int64_t *available, int64_t *total)
{
    const struct backend *b = backend_for(dev);
    if (!b || !b->memory) return tensor_fail(STATUS_DEVICE, "%s: the memory size is unknown", device_name(dev));
    return b->memory(available, total);
}

const char *tensor_backend_describe(enum device dev, char *buf, size_t n)
{
    const struct backend *b = backend_for(dev);
    if (b && b->describe) b->describe(buf, n);
    else snprintf(buf, n, "not available");
    return buf;
}
void backend_register(enum device dev, const struct backend *b) { backends[dev] = b; }

static const char *const unary_names[UNARY_COUNT] = {
    "neg", "abs", "exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "silu", "relu",
    "gelu", "gelu_tanh", "quick_gelu", "pow", "clamp", "affine", "square", "reciprocal"};
static const char *const binary_names[BINARY_COUNT] = {"add", "sub", "mul", "div", "maximum", "minimum", "gt", "ge", "eq"};
const char *unary_op_name(enum unary_op op) { return (unsigned)op < UNARY_COUNT ? unary_names[op] : "?"; }
const char *binary_op_name(enum binary_op op) { return (unsigned)op < BINARY_COUNT ? binary_names[op] : "?"; }

static bool deterministic;
void tensor_set_deterministic(bool on) { deterministic = on; }
bool tensor_deterministic(void) { return deterministic; }
