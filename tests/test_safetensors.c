/* test_safetensors.c — the safetensors reader and writer: round trips in every dtype,
 * a file written byte by byte from the format's definition, every kind of malformed file
 * (an error naming the file and tensor, never a crash), and the parity folder's real files
 * when ../shared is present. */
#include "tests/harness.h"
#include "nn/safetensors.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *tmp_path(const char *name)
{
    static char p[512];
    test_tmp_path(p, sizeof p, name);
    return p;
}

START_TEST(test_round_trip)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    const enum dtype dts[6] = {DTYPE_F32, DTYPE_F64, DTYPE_F16, DTYPE_BF16, DTYPE_I32, DTYPE_I64};
    struct tensor *ts[7];
    const char *names[7] = {"a.f32", "b.f64", "c.f16", "d.bf16", "e.i32", "f.i64", "g.noncontig"};
    for (int i = 0; i < 6; i++) {
        struct tensor *u = test_uniform(DTYPE_F64, TENSOR_SHAPE(3, 5), -100, 100);
        ts[i] = tensor_to_dtype(u, dts[i]);
    }
    ts[6] = tensor_transpose(test_uniform(DTYPE_F32, TENSOR_SHAPE(4, 3), -1, 1), 0, 1);
    const char *mk[2] = {"format", "note"}, *mv[2] = {"pt", "written by the test"};
    const char *path = tmp_path("rt.safetensors");
    ck_assert_int_eq(safetensors_save(path, 7, names, ts, 2, mk, mv), STATUS_OK);
    struct safetensors *st = safetensors_open(path);
    ck_assert_msg(st != NULL, "%s", tensor_error());
    ck_assert_int_eq(st->n, 7);
    ck_assert_str_eq(safetensors_metadata(st, "note"), "written by the test");
    /* header padded to 8 bytes, data buffer covered */
    ck_assert_int_eq((int)((st->data - (const unsigned char *)st->map) % 8), 0);
    for (int i = 0; i < 7; i++) {
        const struct safetensors_entry *e = safetensors_find(st, names[i]);
        ck_assert_ptr_nonnull(e);
        struct tensor *back = safetensors_load(st, names[i], ts[i]->dtype, DEVICE_CPU);
        ck_assert_ptr_nonnull(back);
        ck_assert(tensor_same_shape(back, ts[i]));
        ck_assert_double_eq(test_max_abs_diff(back, ts[i]), 0.0);
    }
    /* conversion on load: an f16 tensor read as f32 */
    struct tensor *c32 = safetensors_load(st, "c.f16", DTYPE_F32, DEVICE_CPU);
    ck_assert_double_eq(test_max_abs_diff(c32, ts[2]), 0.0);
    /* load_into checks the shape and names both */
    struct tensor *wrong = tensor_empty(DTYPE_F32, TENSOR_SHAPE(5, 3), DEVICE_CPU);
    ck_assert_int_eq(safetensors_load_into(st, "a.f32", wrong), STATUS_SHAPE);
    ck_assert(strstr(tensor_error(), "a.f32") && strstr(tensor_error(), "[3,5]") && strstr(tensor_error(), "[5,3]"));
    ck_assert_ptr_null(safetensors_load(st, "missing", DTYPE_F32, DEVICE_CPU));
    ck_assert(strstr(tensor_error(), "missing") != NULL);
    safetensors_close(st);
    unlink(path);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* bytes of a file: u64 header length, header, data */
static size_t make_file(unsigned char *buf, const char *header, const void *data, size_t data_len, bool pad)
{
    size_t hl = strlen(header), padded = pad ? (hl + 7) / 8 * 8 : hl;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, header, hl);
    memset(buf + 8 + hl, ' ', padded - hl);
    memcpy(buf + 8 + padded, data, data_len);
    return 8 + padded + data_len;
}

START_TEST(test_handmade_file)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    /* written from the format's definition, not by our writer: a bf16 pair and an i64 */
    unsigned char buf[512];
    const unsigned char data[12] = {0x80, 0x3f, 0x00, 0xc0, /* bf16 1.0, -2.0 */ 7, 0, 0, 0, 0, 0, 0, 0 /* i64 7 */};
    size_t n = make_file(buf, "{\"w\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                              "\"step\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[4,12]}}", data, 12, false);
    struct safetensors *st = safetensors_parse(buf, n, "handmade");
    ck_assert_msg(st != NULL, "%s", tensor_error());
    struct tensor *w = safetensors_load(st, "w", DTYPE_F32, DEVICE_CPU), *s = safetensors_load(st, "step", DTYPE_I64, DEVICE_CPU);
    ck_assert_double_eq(tensor_get_flat(w, 0), 1.0);
    ck_assert_double_eq(tensor_get_flat(w, 1), -2.0);
    ck_assert_int_eq(s->ndim, 0);
    ck_assert_double_eq(tensor_get_flat(s, 0), 7.0);
    safetensors_close(st);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

struct bad_case {
    const char *what, *header, *expect;
    size_t data_len;
};

static const struct bad_case bad_cases[] = {
    {"not json", "{\"a\":", "not a JSON object", 4},
    {"array root", "[1,2]", "not a JSON object", 0},
    {"missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", "'a' lacks", 4},
    {"unknown dtype", "{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", "unknown dtype", 4},
    {"negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", "non-negative", 4},
    {"fractional dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", "non-negative", 4},
    {"nine dims", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", "more than 8", 4},
    {"offsets past end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "outside the data", 4},
    {"reversed offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", "outside the data", 4},
    {"size mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", "need 8 bytes", 4},
    {"overlap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", "overlaps", 4},
    {"hole", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", "hole", 8},
    {"uncovered tail", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", "cover 4 of 8", 8},
    {"duplicate", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", "twice", 8},
    {"bad metadata", "{\"__metadata__\":{\"k\":1},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", "metadata value", 4},
    {"two metadata", "{\"__metadata__\":{\"format\":\"pt\"},\"__metadata__\":{\"format\":\"pt\",\"x\":\"y\"},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", "__metadata__ appears twice", 4},
    {"huge shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", "need", 4},
};

START_TEST(test_malformed)
{
    LEAK_CHECK_BEGIN();
    const struct bad_case *c = &bad_cases[_i];
    unsigned char buf[1024], zeros[16] = {0};
    size_t n = make_file(buf, c->header, zeros, c->data_len, true);
    struct safetensors *st = safetensors_parse(buf, n, "bad.safetensors");
    ck_assert_msg(st == NULL, "%s: accepted", c->what);
    ck_assert_msg(strstr(tensor_error(), "bad.safetensors") && strstr(tensor_error(), c->expect), "%s: message '%s'", c->what,
                  tensor_error());
    printf("malformed[%s] rejected: %s\n", c->what, tensor_error());
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_truncated)
{
    LEAK_CHECK_BEGIN();
    unsigned char buf[256], data[4] = {0};
    size_t n = make_file(buf, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", data, 4, true);
    /* every prefix of a valid file is rejected cleanly */
    for (size_t k = 0; k < n; k++) {
        struct safetensors *st = safetensors_parse(buf, k, "trunc");
        ck_assert_msg(st == NULL, "prefix of %zu bytes accepted", k);
    }
    struct safetensors *st = safetensors_parse(buf, n, "trunc");
    ck_assert_ptr_nonnull(st);
    safetensors_close(st);
    /* header length larger than the file */
    buf[0] = 0xff;
    buf[5] = 0x01;
    ck_assert_ptr_null(safetensors_parse(buf, n, "trunc"));
    ck_assert(strstr(tensor_error(), "does not fit") != NULL);
    ck_assert_ptr_null(safetensors_open("/nonexistent/x.safetensors"));
    ck_assert(strstr(tensor_error(), "/nonexistent/x.safetensors") != NULL);
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_unaligned_and_unsupported)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    unsigned char buf[256];
    const float one = 1.5f;
    unsigned char data[5] = {9};
    memcpy(data + 1, &one, 4);
    /* unpadded header of odd length puts the f32 at an odd address */
    size_t n = make_file(buf, "{\"u\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                              "\"f\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[1,5]}}", data, 5, false);
    struct safetensors *st = safetensors_parse(buf, n, "odd");
    ck_assert_msg(st != NULL, "%s", tensor_error());
    struct tensor *f = safetensors_load(st, "f", DTYPE_F32, DEVICE_CPU);
    ck_assert_double_eq(tensor_get_flat(f, 0), 1.5);
    ck_assert_ptr_null(safetensors_load(st, "u", DTYPE_F32, DEVICE_CPU));
    ck_assert(strstr(tensor_error(), "U8") != NULL);
    safetensors_close(st);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* the parity folder's real files, written by the reference implementation */
START_TEST(test_parity_files)
{
    const char *dir = getenv("DRAFT_PARITY_DIR") ? getenv("DRAFT_PARITY_DIR") : "../shared/parity";
    char path[1024];
    snprintf(path, sizeof path, "%s/tiny-sd/unet/diffusion_pytorch_model.safetensors", dir);
    if (access(path, R_OK)) {
        printf("SKIP parity files: %s not found (set DRAFT_PARITY_DIR)\n", path);
        return;
    }
    LEAK_CHECK_BEGIN();
    struct safetensors *st = safetensors_open(path);
    ck_assert_msg(st != NULL, "%s", tensor_error());
    int64_t total = 0;
    for (int i = 0; i < st->n; i++) {
        tensor_scope_begin();
        struct tensor *t = safetensors_load(st, st->entries[i].name, DTYPE_F32, DEVICE_CPU);
        ck_assert_msg(t != NULL, "%s", tensor_error());
        total += tensor_numel(t);
        tensor_scope_end();
    }
    printf("parity unet: %d tensors, %lld parameters read\n", st->n, (long long)total);
    ck_assert_int_gt(st->n, 100);
    safetensors_close(st);
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    test_seed();
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("safetensors");
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_handmade_file);
    tcase_add_loop_test(tc, test_malformed, 0, sizeof bad_cases / sizeof *bad_cases);
    tcase_add_test(tc, test_truncated);
    tcase_add_test(tc, test_unaligned_and_unsupported);
    tcase_add_test(tc, test_parity_files);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
