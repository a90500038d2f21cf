/* weights.c — safetensors or torch.save behind one reader (see weights.h). */
#include "nn/weights.h"

#include "nn/pickle.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct nn_weights {
    struct safetensors *st;   /* exactly one of st and tf */
    struct torch_file *tf;
    char *path;
};

struct nn_weights *nn_weights_open(const char *path)
{
    unsigned char head[4] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) {
        tensor_fail(STATUS_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t got = fread(head, 1, 4, f);
    fclose(f);
    struct nn_weights *w = calloc(1, sizeof *w);
    char *p = w ? malloc(strlen(path) + 1) : NULL;
    if (!p) {
        free(w);
        tensor_fail(STATUS_OOM, "out of host memory");
        return NULL;
    }
    strcpy(p, path);
    w->path = p;
    if (got == 4 && !memcmp(head, "PK\x03\x04", 4)) w->tf = torch_file_open(path);   /* a zip: torch.save */
    else w->st = safetensors_open(path);
    if (!w->st && !w->tf) {
        nn_weights_close(w);
        return NULL;
    }
    return w;
}

void nn_weights_close(struct nn_weights *w)
{
    if (!w) return;
    if (w->st) safetensors_close(w->st);
    if (w->tf) torch_file_close(w->tf);
    free(w->path);
    free(w);
}

const char *nn_weights_path(const struct nn_weights *w) { return w->path; }

int nn_weights_count(const struct nn_weights *w) { return w->st ? w->st->n : torch_file_count(w->tf); }

const char *nn_weights_name(const struct nn_weights *w, int i)
{
    if (i < 0 || i >= nn_weights_count(w)) return NULL;
    return w->st ? w->st->entries[i].name : torch_file_name(w->tf, i);
}

/* index of a file tensor, -1 if absent */
static int weights_index(const struct nn_weights *w, const char *name)
{
    if (w->st) {
        const struct safetensors_entry *e = safetensors_find(w->st, name);
        return e ? (int)(e - w->st->entries) : -1;
    }
    const struct torch_entry *e = torch_file_find(w->tf, name);
    return e ? (int)(e - torch_file_entry(w->tf, 0)) : -1;
}

bool nn_weights_has(const struct nn_weights *w, const char *name) { return weights_index(w, name) >= 0; }
int nn_weights_find(const struct nn_weights *w, const char *name) { return weights_index(w, name); }

/* the file shape of entry i */
static void entry_shape(const struct nn_weights *w, int i, int *ndim, int64_t *shape)
{
    if (w->st) {
        *ndim = w->st->entries[i].ndim;
        memcpy(shape, w->st->entries[i].shape, sizeof(int64_t) * TENSOR_MAX_DIMS);
    } else {
        const struct torch_entry *e = torch_file_entry(w->tf, i);
        *ndim = e->ndim;
        memcpy(shape, e->shape, sizeof(int64_t) * TENSOR_MAX_DIMS);
    }
}

bool nn_weights_shape(const struct nn_weights *w, const char *name, int *ndim, int64_t shape[TENSOR_MAX_DIMS])
{
    const int i = weights_index(w, name);
    if (i >= 0) entry_shape(w, i, ndim, shape);
    return i >= 0;
}

struct tensor *nn_weights_load(const struct nn_weights *w, const char *name, enum dtype dt)
{
    if (weights_index(w, name) < 0) {
        tensor_fail(STATUS_FORMAT, "%s: missing tensor '%s' (the model expects it)", w->path, name);
        return NULL;
    }
    return w->st ? safetensors_load(w->st, name, dt, DEVICE_CPU) : torch_file_load(w->tf, name, dt);
}

enum status nn_weights_load_into(const struct nn_weights *w, const char *name, struct tensor *dst)
{
    const int i = weights_index(w, name);
    if (i < 0) return tensor_fail(STATUS_FORMAT, "%s: missing tensor '%s' (the model expects it)", w->path, name);
    int nd;
    int64_t shape[TENSOR_MAX_DIMS];
    entry_shape(w, i, &nd, shape);
    /* equal, or equal after dropping trailing size-1 dims the parameter does not have */
    bool same = nd >= dst->ndim;
    for (int d = 0; same && d < dst->ndim; d++) same = shape[d] == dst->shape[d];
    for (int d = dst->ndim; same && d < nd; d++) same = shape[d] == 1;
    if (!same) {
        struct tensor tmp = {.ndim = nd};
        memcpy(tmp.shape, shape, sizeof tmp.shape);
        char a[128], b[128];
        return tensor_fail(STATUS_SHAPE, "%s: tensor '%s' has shape %s, the model expects %s", w->path, name,
                           tensor_shape_str(&tmp, a, sizeof a), tensor_shape_str(dst, b, sizeof b));
    }
    if (w->st && nd == dst->ndim) return safetensors_load_into(w->st, name, dst);
    tensor_scope_begin();
    struct tensor *t = w->st ? safetensors_load(w->st, name, dst->dtype, DEVICE_CPU) : torch_file_load(w->tf, name, dst->dtype);
    t = t ? tensor_reshape(t, dst->ndim, dst->shape) : NULL;
    enum status s = t ? tensor_copy_(dst, t) : tensor_status();
    tensor_scope_end();
    return s;
}

enum status nn_params_load_mapped(struct nn_params *ps, const struct nn_weights *w, nn_name_map_fn map, void *ctx,
                                  bool *used)
{
    char key[600];
    for (int i = 0; i < ps->n; i++) {
        if (map) {
            if (!map(ctx, ps->v[i].name, key, sizeof key))
                return tensor_fail(STATUS_FORMAT, "%s: no key in this file's layout for parameter '%s'", w->path,
                                   ps->v[i].name);
        } else {
            snprintf(key, sizeof key, "%s", ps->v[i].name);
        }
        const int j = weights_index(w, key);
        if (j < 0) {
            if (map)
                return tensor_fail(STATUS_FORMAT, "%s: missing tensor '%s' (holds the model's '%s')", w->path, key,
                                   ps->v[i].name);
            return tensor_fail(STATUS_FORMAT, "%s: missing tensor '%s' (the model expects it)", w->path, key);
        }
        enum status s = nn_weights_load_into(w, key, ps->v[i].t);
        if (s) return s;
        if (used) used[j] = true;
    }
    return STATUS_OK;
}

enum status nn_weights_check_used(const struct nn_weights *w, const bool *used, const char *owned_prefix,
                                  bool (*skip)(const char *name))
{
    const size_t pl = owned_prefix ? strlen(owned_prefix) : 0;
    for (int j = 0; j < nn_weights_count(w); j++) {
        const char *nm = nn_weights_name(w, j);
        if (used[j] || (pl && strncmp(nm, owned_prefix, pl)) || (skip && skip(nm))) continue;
        return tensor_fail(STATUS_FORMAT, "%s: unexpected tensor '%s' (the model has no such parameter)", w->path, nm);
    }
    return STATUS_OK;
}
