/* safetensors.c — validated, lazy reader and atomic writer of the safetensors format. */
#include "nn/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_HEADER (100u << 20)   /* the reference implementation's limit */

struct file_dtype {
    const char *name;
    size_t size;
    enum dtype dt;   /* DTYPE_COUNT: no engine dtype (cannot be loaded) */
};

static const struct file_dtype file_dtypes[] = {
    {"F64", 8, DTYPE_F64}, {"F32", 4, DTYPE_F32}, {"F16", 2, DTYPE_F16}, {"BF16", 2, DTYPE_BF16},
    {"I64", 8, DTYPE_I64}, {"I32", 4, DTYPE_I32}, {"I16", 2, DTYPE_COUNT}, {"I8", 1, DTYPE_COUNT},
    {"U8", 1, DTYPE_COUNT}, {"BOOL", 1, DTYPE_COUNT}, {"U16", 2, DTYPE_COUNT}, {"U32", 4, DTYPE_COUNT},
    {"U64", 8, DTYPE_COUNT}, {"F8_E4M3", 1, DTYPE_COUNT}, {"F8_E5M2", 1, DTYPE_COUNT},
};

static const struct file_dtype *dtype_by_name(const char *s)
{
    for (size_t i = 0; i < sizeof file_dtypes / sizeof *file_dtypes; i++)
        if (!strcmp(file_dtypes[i].name, s)) return &file_dtypes[i];
    return NULL;
}

static const char *dtype_file_name(enum dtype dt)
{
    for (size_t i = 0; i < sizeof file_dtypes / sizeof *file_dtypes; i++)
        if (file_dtypes[i].dt == dt) return file_dtypes[i].name;
    return NULL;
}

void safetensors_close(struct safetensors *st)
{
    if (!st) return;
    for (int i = 0; i < st->n; i++) free(st->entries[i].name);
    for (int i = 0; i < st->n_meta; i++) { free(st->meta_keys[i]); free(st->meta_values[i]); }
    free(st->entries);
    free(st->meta_keys);
    free(st->meta_values);
    if (st->map) munmap(st->map, st->map_size);
    free(st->path);
    free(st);
}

/* a JSON number that is a non-negative integer exactly representable */
static bool json_uint(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsNumber(j)) return false;
    double v = j->valuedouble;
    if (!(v >= 0) || v > 9007199254740992.0 || v != floor(v)) return false;
    *out = (uint64_t)v;
    return true;
}

static int cmp_begin(const void *a, const void *b)
{
    const struct safetensors_entry *x = *(const struct safetensors_entry *const *)a, *y = *(const struct safetensors_entry *const *)b;
    return (x->begin > y->begin) - (x->begin < y->begin);
}

static struct safetensors *fail(struct safetensors *st, cJSON *root, enum status s, const char *fmt, const char *label,
                                const char *name)
{
    char msg[512];
    snprintf(msg, sizeof msg, fmt, name ? name : "");
    tensor_fail(s, "%s: %s", label, msg);
    cJSON_Delete(root);
    safetensors_close(st);
    return NULL;
}

struct safetensors *safetensors_parse(const void *bytes, size_t size, const char *label)
{
    const unsigned char *p = bytes;
    struct safetensors *st = calloc(1, sizeof *st);
    if (!st) { tensor_fail(STATUS_OOM, "%s: out of memory", label); return NULL; }
    if (size < 8) return fail(st, NULL, STATUS_FORMAT, "file too short for a safetensors header (%s)", label, "need 8 bytes");
    uint64_t hn = 0;
    for (int i = 7; i >= 0; i--) hn = hn << 8 | p[i];
    if (hn > MAX_HEADER || hn > size - 8) {
        char m[160];
        snprintf(m, sizeof m, "header length %llu does not fit a file of %zu bytes (or exceeds 100 MiB)", (unsigned long long)hn, size);
        return fail(st, NULL, STATUS_FORMAT, "%s", label, m);
    }
    cJSON *root = cJSON_ParseWithLength((const char *)p + 8, (size_t)hn);
    if (!root || !cJSON_IsObject(root)) return fail(st, root, STATUS_FORMAT, "header is not a JSON object%s", label, "");
    st->data = p + 8 + hn;
    st->data_size = size - 8 - hn;
    int count = cJSON_GetArraySize(root);
    st->entries = calloc((size_t)(count ? count : 1), sizeof *st->entries);
    if (!st->entries) return fail(st, root, STATUS_OOM, "out of memory%s", label, "");
    for (cJSON *e = root->child; e; e = e->next) {
        if (!e->string) return fail(st, root, STATUS_FORMAT, "header entry without a name%s", label, "");
        if (!strcmp(e->string, "__metadata__")) {
            if (!cJSON_IsObject(e)) return fail(st, root, STATUS_FORMAT, "__metadata__ is not an object%s", label, "");
            /* cJSON keeps duplicate keys: a second one would be sized by itself and filled
             * after the first (found by fuzz_safetensors: a heap overflow) */
            if (st->meta_keys) return fail(st, root, STATUS_FORMAT, "__metadata__ appears twice%s", label, "");
            int m = cJSON_GetArraySize(e);
            st->meta_keys = calloc((size_t)(m ? m : 1), sizeof(char *));
            st->meta_values = calloc((size_t)(m ? m : 1), sizeof(char *));
            if (!st->meta_keys || !st->meta_values) return fail(st, root, STATUS_OOM, "out of memory%s", label, "");
            for (cJSON *kv = e->child; kv; kv = kv->next) {
                if (!cJSON_IsString(kv)) return fail(st, root, STATUS_FORMAT, "metadata value of '%s' is not a string", label, kv->string);
                st->meta_keys[st->n_meta] = strdup(kv->string);
                st->meta_values[st->n_meta++] = strdup(kv->valuestring);
            }
            continue;
        }
        struct safetensors_entry *en = &st->entries[st->n];
        if (!(en->name = strdup(e->string))) return fail(st, root, STATUS_OOM, "out of memory%s", label, "");
        st->n++;
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype"), *sh = cJSON_GetObjectItemCaseSensitive(e, "shape"),
                    *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        if (!cJSON_IsObject(e) || !cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off))
            return fail(st, root, STATUS_FORMAT, "tensor '%s' lacks dtype, shape or data_offsets", label, en->name);
        const struct file_dtype *fd = dtype_by_name(dt->valuestring);
        if (!fd) return fail(st, root, STATUS_FORMAT, "tensor '%s' has an unknown dtype", label, en->name);
        snprintf(en->file_dtype, sizeof en->file_dtype, "%s", fd->name);
        en->dtype = fd->dt;
        int nd = cJSON_GetArraySize(sh);
        if (nd > TENSOR_MAX_DIMS) return fail(st, root, STATUS_FORMAT, "tensor '%s' has more than 8 dims", label, en->name);
        en->ndim = nd;
        double numel = 1;
        for (int d = 0; d < nd; d++) {
            uint64_t v;
            if (!json_uint(cJSON_GetArrayItem(sh, d), &v))
                return fail(st, root, STATUS_FORMAT, "tensor '%s' has a shape entry that is not a non-negative integer", label, en->name);
            en->shape[d] = (int64_t)v;
            numel *= (double)v;
        }
        if (cJSON_GetArraySize(off) != 2 || !json_uint(cJSON_GetArrayItem(off, 0), &en->begin) ||
            !json_uint(cJSON_GetArrayItem(off, 1), &en->end) || en->begin > en->end || en->end > st->data_size)
            return fail(st, root, STATUS_FORMAT, "tensor '%s' has data_offsets outside the data buffer", label, en->name);
        if (numel * (double)fd->size != (double)(en->end - en->begin)) {
            char m[256];
            snprintf(m, sizeof m, "tensor '%s': shape and dtype %s need %.0f bytes but data_offsets span %llu", en->name, fd->name,
                     numel * (double)fd->size, (unsigned long long)(en->end - en->begin));
            return fail(st, root, STATUS_FORMAT, "%s", label, m);
        }
        for (int i = 0; i < st->n - 1; i++)
            if (!strcmp(st->entries[i].name, en->name))
                return fail(st, root, STATUS_FORMAT, "tensor '%s' appears twice in the header", label, en->name);
    }
    cJSON_Delete(root);
    /* the buffer must be covered exactly: no holes, no overlaps */
    struct safetensors_entry **byb = malloc((size_t)(st->n ? st->n : 1) * sizeof *byb);
    if (!byb) return fail(st, NULL, STATUS_OOM, "out of memory%s", label, "");
    for (int i = 0; i < st->n; i++) byb[i] = &st->entries[i];
    qsort(byb, (size_t)st->n, sizeof *byb, cmp_begin);
    uint64_t at = 0;
    const char *bad = NULL;
    for (int i = 0; i < st->n && !bad; i++) {
        if (byb[i]->begin != at) bad = byb[i]->name;
        at = byb[i]->end;
    }
    free(byb);
    if (bad) return fail(st, NULL, STATUS_FORMAT, "tensor '%s' overlaps another or leaves a hole in the data buffer", label, bad);
    if (at != st->data_size) {
        char m[160];
        snprintf(m, sizeof m, "the tensors cover %llu of %llu data bytes", (unsigned long long)at, (unsigned long long)st->data_size);
        return fail(st, NULL, STATUS_FORMAT, "%s", label, m);
    }
    if (!(st->path = strdup(label))) return fail(st, NULL, STATUS_OOM, "out of memory%s", label, "");
    return st;
}

struct safetensors *safetensors_open(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) { tensor_fail(STATUS_IO, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        close(fd);
        tensor_fail(STATUS_IO, "%s: not a regular file", path);
        return NULL;
    }
    size_t size = (size_t)sb.st_size;
    void *map = size ? mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (size && map == MAP_FAILED) { tensor_fail(STATUS_IO, "%s: cannot map: %s", path, strerror(errno)); return NULL; }
    struct safetensors *st = safetensors_parse(size ? map : "", size, path);
    if (!st) {
        if (size) munmap(map, size);
        return NULL;
    }
    st->map = map;
    st->map_size = size;
    return st;
}

const struct safetensors_entry *safetensors_find(const struct safetensors *st, const char *name)
{
    for (int i = 0; i < st->n; i++)
        if (!strcmp(st->entries[i].name, name)) return &st->entries[i];
    return NULL;
}

const char *safetensors_metadata(const struct safetensors *st, const char *key)
{
    for (int i = 0; i < st->n_meta; i++)
        if (!strcmp(st->meta_keys[i], key)) return st->meta_values[i];
    return NULL;
}

/* the entry as a host tensor of its own dtype: the mapped bytes, or an aligned copy */
static struct tensor *entry_view(const struct safetensors *st, const struct safetensors_entry *e, const char *op)
{
    if (e->dtype == DTYPE_COUNT) {
        tensor_fail(STATUS_DTYPE, "%s: tensor '%s' has dtype %s, which the engine cannot load", st->path, e->name, e->file_dtype);
        return NULL;
    }
    (void)op;
    const unsigned char *src = st->data + e->begin;
    size_t esz = dtype_size(e->dtype);
    if ((uintptr_t)src % esz == 0) return tensor_wrap(e->dtype, e->ndim, e->shape, (void *)src);
    struct tensor *t = tensor_empty(e->dtype, e->ndim, e->shape, DEVICE_CPU);
    if (t) memcpy(tensor_data_ptr(t), src, (size_t)(e->end - e->begin));
    return t;
}

struct tensor *safetensors_load(const struct safetensors *st, const char *name, enum dtype dt, enum device dev)
{
    const struct safetensors_entry *e = safetensors_find(st, name);
    if (!e) { tensor_fail(STATUS_VALUE, "%s: no tensor named '%s'", st->path, name); return NULL; }
    tensor_scope_begin();
    struct tensor *v = entry_view(st, e, "load");
    struct tensor *out = v ? tensor_empty(dt, e->ndim, e->shape, dev) : NULL;
    if (out && tensor_copy_(out, v)) out = NULL;
    return tensor_scope_return(out);
}

enum status safetensors_load_into(const struct safetensors *st, const char *name, struct tensor *dst)
{
    const struct safetensors_entry *e = safetensors_find(st, name);
    if (!e) return tensor_fail(STATUS_VALUE, "%s: no tensor named '%s'", st->path, name);
    bool same = e->ndim == dst->ndim;
    for (int d = 0; same && d < e->ndim; d++) same = e->shape[d] == dst->shape[d];
    if (!same) {
        struct tensor tmp = {.ndim = e->ndim};
        memcpy(tmp.shape, e->shape, sizeof tmp.shape);
        char a[128], b[128];
        return tensor_fail(STATUS_SHAPE, "%s: tensor '%s' has shape %s, expected %s", st->path, name,
                           tensor_shape_str(&tmp, a, sizeof a), tensor_shape_str(dst, b, sizeof b));
    }
    tensor_scope_begin();
    struct tensor *v = entry_view(st, e, "load");
    enum status s = v ? tensor_copy_(dst, v) : tensor_status();
    tensor_scope_end();
    return s;
}

enum status safetensors_save(const char *path, int n, const char *const *names, struct tensor *const *tensors,
                             int n_meta, const char *const *meta_keys, const char *const *meta_values)
{
    cJSON *root = cJSON_CreateObject();
    if (!root) return tensor_fail(STATUS_OOM, "%s: out of memory", path);
    if (n_meta > 0) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; m && i < n_meta; i++) cJSON_AddStringToObject(m, meta_keys[i], meta_values[i]);
    }
    uint64_t at = 0;
    for (int i = 0; i < n; i++) {
        const struct tensor *t = tensors[i];
        const char *dn = dtype_file_name(t->dtype);
        if (!dn) { cJSON_Delete(root); return tensor_fail(STATUS_DTYPE, "%s: cannot write dtype %s", path, dtype_name(t->dtype)); }
        for (int j = 0; j < i; j++)
            if (!strcmp(names[i], names[j])) { cJSON_Delete(root); return tensor_fail(STATUS_VALUE, "%s: tensor name '%s' given twice", path, names[i]); }
        cJSON *e = cJSON_AddObjectToObject(root, names[i]);
        cJSON_AddStringToObject(e, "dtype", dn);
        cJSON *sh = cJSON_AddArrayToObject(e, "shape");
        for (int d = 0; d < t->ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
        uint64_t bytes = (uint64_t)tensor_numel(t) * dtype_size(t->dtype);
        cJSON *off = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)at));
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)(at + bytes)));
        at += bytes;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json) return tensor_fail(STATUS_OOM, "%s: out of memory", path);
    size_t hl = strlen(json), padded = (hl + 7) / 8 * 8;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) { free(json); return tensor_fail(STATUS_IO, "%s: cannot create: %s", tmp, strerror(errno)); }
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    bool ok = fwrite(len, 1, 8, f) == 8 && fwrite(json, 1, hl, f) == hl;
    for (size_t i = hl; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
    free(json);
    enum status s = STATUS_OK;
    for (int i = 0; ok && i < n; i++) {
        tensor_scope_begin();
        struct tensor *c = tensor_contiguous(tensors[i]->storage->device == DEVICE_CPU ? tensors[i] : tensor_to_device(tensors[i], DEVICE_CPU));
        if (!c) s = tensor_status();
        else {
            size_t bytes = (size_t)tensor_numel(c) * dtype_size(c->dtype);
            ok = fwrite(tensor_data_ptr(c), 1, bytes, f) == bytes;
        }
        tensor_scope_end();
        if (s) ok = false;
    }
    ok = (fflush(f) == 0) & ok;
    ok = (fsync(fileno(f)) == 0) & ok;
    ok = (fclose(f) == 0) & ok;
    if (!ok || rename(tmp, path)) {
        int err = errno;
        unlink(tmp);
        return s ? s : tensor_fail(STATUS_IO, "%s: write failed: %s", path, strerror(err));
    }
    return STATUS_OK;
}
