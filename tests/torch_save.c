/* torch_save.c — see torch_save.h */
#include "tests/torch_save.h"
#include "tests/harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zip.h>

struct buf {
    unsigned char *b;
    size_t n, cap;
};

static void raw(struct buf *p, const void *d, size_t n)
{
    if (p->n + n > p->cap) {
        p->cap = 2 * (p->n + n) + 4096;
        p->b = realloc(p->b, p->cap);
        ck_assert_ptr_nonnull(p->b);
    }
    memcpy(p->b + p->n, d, n);
    p->n += n;
}
static void op(struct buf *p, int o) { raw(p, &(unsigned char){(unsigned char)o}, 1); }
static void le(struct buf *p, uint64_t v, int k)
{
    for (int i = 0; i < k; i++) op(p, (int)(v >> (8 * i)) & 0xff);
}
static void str(struct buf *p, const char *s)
{
    op(p, 'X');
    le(p, strlen(s), 4);
    raw(p, s, strlen(s));
}
static void integer(struct buf *p, int64_t v)
{
    op(p, 'J');
    le(p, (uint64_t)v, 4);
}
static void global(struct buf *p, const char *mod, const char *name)
{
    op(p, 'c');
    raw(p, mod, strlen(mod));
    op(p, '\n');
    raw(p, name, strlen(name));
    op(p, '\n');
}

void test_torch_save(const char *path, int n, const char *const *names, struct tensor *const *tensors, bool lightning)
{
    struct buf p = {0};
    float **data = calloc((size_t)n + 1, sizeof *data);
    ck_assert_ptr_nonnull(data);
    op(&p, 0x80), op(&p, 2);
    if (lightning) {
        op(&p, '}'), op(&p, '(');
        str(&p, "epoch"), integer(&p, 6);
        str(&p, "global_step"), integer(&p, 470000);
        str(&p, "state_dict");
    }
    op(&p, '}'), op(&p, '(');
    for (int i = 0; i < n; i++) {
        tensor_scope_begin();   /* the scope owns the converted copies */
        struct tensor *t = tensor_contiguous(tensor_to_dtype(tensor_to_device(tensors[i], DEVICE_CPU), DTYPE_F32));
        ck_assert_ptr_nonnull(t);
        const int64_t numel = tensor_numel(t);
        data[i] = malloc((size_t)(numel ? numel : 1) * sizeof(float));
        ck_assert_ptr_nonnull(data[i]);
        memcpy(data[i], tensor_data_ptr(t), (size_t)numel * sizeof(float));
        char key[32];
        snprintf(key, sizeof key, "%d", i);
        str(&p, names[i]);
        global(&p, "torch._utils", "_rebuild_tensor_v2");
        op(&p, '('), op(&p, '(');
        str(&p, "storage"), global(&p, "torch", "FloatStorage"), str(&p, key), str(&p, "cpu"), integer(&p, numel);
        op(&p, 't'), op(&p, 'Q');
        integer(&p, 0);
        op(&p, '(');
        for (int d = 0; d < t->ndim; d++) integer(&p, t->shape[d]);
        op(&p, 't'), op(&p, '(');
        int64_t st = 1;
        int64_t strides[TENSOR_MAX_DIMS];
        for (int d = t->ndim - 1; d >= 0; d--) strides[d] = st, st *= t->shape[d];
        for (int d = 0; d < t->ndim; d++) integer(&p, strides[d]);
        op(&p, 't'), op(&p, 0x89);
        global(&p, "collections", "OrderedDict"), op(&p, ')'), op(&p, 'R');
        op(&p, 't'), op(&p, 'R');
        tensor_scope_end();
    }
    op(&p, 'u');
    if (lightning) op(&p, 'u');
    op(&p, '.');

    int err;
    zip_t *za = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &err);
    ck_assert_ptr_nonnull(za);
    zip_source_t *src = zip_source_buffer(za, p.b, p.n, 0);
    ck_assert_int_ge(zip_file_add(za, "archive/data.pkl", src, ZIP_FL_ENC_UTF_8), 0);
    for (int i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "archive/data/%d", i);
        src = zip_source_buffer(za, data[i], (size_t)tensor_numel(tensors[i]) * sizeof(float), 0);
        zip_int64_t idx = zip_file_add(za, name, src, ZIP_FL_ENC_UTF_8);
        ck_assert_int_ge(idx, 0);
        zip_set_file_compression(za, (zip_uint64_t)idx, ZIP_CM_STORE, 0);
    }
    src = zip_source_buffer(za, "3\n", 2, 0);
    ck_assert_int_ge(zip_file_add(za, "archive/version", src, ZIP_FL_ENC_UTF_8), 0);
    ck_assert_int_eq(zip_close(za), 0);   /* reads the buffers: free them only now */
    for (int i = 0; i < n; i++) free(data[i]);
    free(data);
    free(p.b);
}
