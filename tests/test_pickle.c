/* test_pickle.c — the restricted torch.save reader: the real LAION aesthetic head against its
 * golden outputs, pickles written byte by byte here covering every accepted opcode, zips
 * written with libzip (strided, shared, f16, int64, 0-dim and parameter-wrapped tensors), and
 * hostile inputs (forbidden opcodes and globals, every truncation, deep marks, bad memo
 * indices, views outside their storage, broken zips) that must fail with a message. */
#include "tests/harness.h"
#include "tests/parity.h"
#include "nn/pickle.h"
#include "autograd/autograd.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zip.h>

static const char *tmp_path(const char *name)
{
    static char p[512];
    test_tmp_path(p, sizeof p, name);
    return p;
}

/* ---------------------------------------------------------------- a pickle writer */

struct pb {
    unsigned char b[8192];
    size_t n;
};

static void pb_raw(struct pb *p, const void *d, size_t n)
{
    ck_assert(p->n + n <= sizeof p->b);
    memcpy(p->b + p->n, d, n);
    p->n += n;
}
static void pb_op(struct pb *p, int op) { pb_raw(p, &(unsigned char){(unsigned char)op}, 1); }
static void pb_le(struct pb *p, uint64_t v, int k)
{
    for (int i = 0; i < k; i++) pb_op(p, (int)(v >> (8 * i)) & 0xff);
}
/* short strings as SHORT_BINUNICODE, "X:"-prefixed ones as BINUNICODE */
static void pb_str(struct pb *p, const char *s)
{
    if (!strncmp(s, "X:", 2)) {
        s += 2;
        pb_op(p, 'X');
        pb_le(p, strlen(s), 4);
    } else {
        pb_op(p, 0x8c);
        pb_le(p, strlen(s), 1);
    }
    pb_raw(p, s, strlen(s));
}
static void pb_int(struct pb *p, int64_t v)
{
    if (v >= 0 && v < 256) pb_op(p, 'K'), pb_le(p, (uint64_t)v, 1);
    else if (v >= 0 && v < 65536) pb_op(p, 'M'), pb_le(p, (uint64_t)v, 2);
    else if (v >= INT32_MIN && v <= INT32_MAX) pb_op(p, 'J'), pb_le(p, (uint64_t)v, 4);
    else pb_op(p, 0x8a), pb_op(p, 8), pb_le(p, (uint64_t)v, 8);
}
static void pb_global(struct pb *p, const char *mod, const char *name)
{
    pb_op(p, 'c');
    pb_raw(p, mod, strlen(mod));
    pb_op(p, '\n');
    pb_raw(p, name, strlen(name));
    pb_op(p, '\n');
}
static void pb_ints(struct pb *p, int nd, const int64_t *v)
{
    pb_op(p, '(');
    for (int i = 0; i < nd; i++) pb_int(p, v[i]);
    pb_op(p, 't');
}
/* _rebuild_tensor_v2((storage, type, key, 'cpu', numel), offset, size, stride, False, OrderedDict()) */
static void pb_tensor(struct pb *p, const char *stype, const char *key, int64_t numel, int64_t off, int nd,
                      const int64_t *shape, const int64_t *stride)
{
    pb_global(p, "torch._utils", "_rebuild_tensor_v2");
    pb_op(p, '(');
    pb_op(p, '(');
    pb_str(p, "storage");
    pb_global(p, "torch", stype);
    pb_str(p, key);
    pb_str(p, "cpu");
    pb_int(p, numel);
    pb_op(p, 't');
    pb_op(p, 'Q');
    pb_int(p, off);
    pb_ints(p, nd, shape);
    pb_ints(p, nd, stride);
    pb_op(p, 0x89);
    pb_global(p, "collections", "OrderedDict");
    pb_op(p, ')');
    pb_op(p, 'R');
    pb_op(p, 't');
    pb_op(p, 'R');
}

/* A Lightning-style checkpoint exercising every accepted opcode. Tensors (after the
 * state_dict prefix is dropped): a.w [3,2] strides [1,3] on storage 0 (f32, 12); a.b [3]
 * offset 6 stride 2 on the same storage (_rebuild_tensor, memo reuse); nested.x [2,2] f16
 * storage 1 (STACK_GLOBAL); p [3] i64 storage 2 wrapped in _rebuild_parameter; s 0-dim f32
 * storage 3. */
static void build_good(struct pb *p)
{
    p->n = 0;
    pb_op(p, 0x80), pb_op(p, 2);
    pb_op(p, '}'), pb_op(p, 'q'), pb_op(p, 0);   /* top dict, memo 0 */
    pb_op(p, '(');
    pb_str(p, "epoch"), pb_int(p, 6);
    pb_str(p, "global_step"), pb_int(p, 470000);
    pb_str(p, "X:pytorch-lightning_version"), pb_str(p, "X:1.4.2");
    pb_str(p, "lr"), pb_op(p, 'G'), pb_raw(p, "\x3f\x1a\x36\xe2\xeb\x1c\x43\x2d", 8);   /* 1e-4 */
    pb_str(p, "big"), pb_op(p, 0x8a), pb_op(p, 5), pb_raw(p, "\x00\x00\x00\x00\x01", 5);
    pb_str(p, "neg"), pb_op(p, 0x8a), pb_op(p, 1), pb_op(p, 0xff);
    pb_str(p, "zero"), pb_op(p, 0x8a), pb_op(p, 0);
    pb_str(p, "flags"), pb_op(p, ']'), pb_op(p, 'N'), pb_op(p, 'a');
    pb_op(p, '('), pb_op(p, 0x88), pb_op(p, 0x89), pb_op(p, 'e');
    pb_str(p, "lst"), pb_op(p, '('), pb_int(p, 1), pb_int(p, 2), pb_op(p, 'l');
    pb_str(p, "one"), pb_int(p, 1), pb_op(p, 0x85);
    pb_str(p, "pair"), pb_int(p, 1), pb_int(p, 2), pb_op(p, 0x86);
    pb_str(p, "trip"), pb_int(p, 1), pb_int(p, 2), pb_int(p, 3), pb_op(p, 0x87);
    pb_str(p, "tup0"), pb_op(p, ')');
    /* stack no-ops: DUP+POP, MARK+POP_MARK */
    pb_op(p, 'N'), pb_op(p, '2'), pb_op(p, '0'), pb_op(p, '0');
    pb_op(p, '('), pb_op(p, 'N'), pb_op(p, 'N'), pb_op(p, '1');
    pb_str(p, "state_dict");
    pb_global(p, "collections", "OrderedDict"), pb_op(p, ')'), pb_op(p, 'R'), pb_op(p, 0x94);   /* memo 1 */
    pb_op(p, '(');
    pb_str(p, "a.w");
    pb_tensor(p, "FloatStorage", "0", 12, 0, 2, (int64_t[]){3, 2}, (int64_t[]){1, 3});
    pb_op(p, 'r'), pb_le(p, 1000, 4);   /* LONG_BINPUT 1000 = the tensor */
    pb_str(p, "a.b");
    pb_global(p, "torch._utils", "_rebuild_tensor"), pb_op(p, 'q'), pb_op(p, 7);
    pb_op(p, '(');
    pb_op(p, '('), pb_str(p, "storage"), pb_global(p, "torch", "FloatStorage"), pb_str(p, "0"), pb_str(p, "cpu"),
        pb_int(p, 12), pb_op(p, 't'), pb_op(p, 'Q');
    pb_int(p, 6), pb_ints(p, 1, (int64_t[]){3}), pb_ints(p, 1, (int64_t[]){2});
    pb_op(p, 't'), pb_op(p, 'R');
    pb_op(p, 'u');
    /* a nested plain dict set with SETITEM */
    pb_str(p, "nested"), pb_op(p, '}');
    pb_str(p, "x");
    pb_op(p, 'j'), pb_le(p, 7, 4), pb_op(p, '0');   /* LONG_BINGET of the _rebuild_tensor global, dropped */
    pb_global(p, "torch._utils", "_rebuild_tensor_v2");
    pb_op(p, '('), pb_op(p, '('), pb_str(p, "storage");
    pb_str(p, "torch"), pb_str(p, "HalfStorage"), pb_op(p, 0x93);
    pb_str(p, "1"), pb_str(p, "cuda:0"), pb_int(p, 4), pb_op(p, 't'), pb_op(p, 'Q');
    pb_int(p, 0), pb_ints(p, 2, (int64_t[]){2, 2}), pb_ints(p, 2, (int64_t[]){2, 1}), pb_op(p, 0x88), pb_op(p, 'N');
    pb_op(p, 't'), pb_op(p, 'R');
    pb_op(p, 's'), pb_op(p, 's');
    pb_str(p, "p");
    pb_global(p, "torch._utils", "_rebuild_parameter");
    pb_op(p, '(');
    pb_tensor(p, "LongStorage", "2", 3, 0, 1, (int64_t[]){3}, (int64_t[]){1});
    pb_op(p, 0x88), pb_global(p, "collections", "OrderedDict"), pb_op(p, ')'), pb_op(p, 'R');
    pb_op(p, 't'), pb_op(p, 'R');
    pb_op(p, 's');
    pb_str(p, "s");
    pb_tensor(p, "FloatStorage", "3", 1, 0, 0, NULL, NULL);
    pb_op(p, 's');
    /* the _metadata attribute of the state dict, attached with BUILD */
    pb_op(p, '}'), pb_str(p, "_metadata"), pb_op(p, 'h'), pb_op(p, 1), pb_op(p, 's'), pb_op(p, 'b');
    pb_op(p, 'u');
    pb_op(p, '.');
}

static const float data0[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
static const int64_t data2[3] = {-5, 1LL << 40, 7};
static const float data3[1] = {2.5f};
static uint16_t data1[4];

struct zentry {
    const char *name;
    const void *data;
    size_t size;
};

static void write_zip(const char *path, int n, const struct zentry *e)
{
    int err;
    zip_t *za = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &err);
    ck_assert_ptr_nonnull(za);
    for (int i = 0; i < n; i++) {
        zip_source_t *src = zip_source_buffer(za, e[i].data, e[i].size, 0);
        ck_assert_ptr_nonnull(src);
        zip_int64_t idx = zip_file_add(za, e[i].name, src, ZIP_FL_ENC_UTF_8);
        ck_assert_int_ge(idx, 0);
        /* torch stores entries uncompressed; compress one to cover the no-seek path */
        zip_set_file_compression(za, (zip_uint64_t)idx, strstr(e[i].name, "data/0") ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 0);
    }
    ck_assert_int_eq(zip_close(za), 0);
}

static void write_good_zip(const char *path, const struct pb *p)
{
    const float h[4] = {0.5f, 1.5f, -2.0f, 3.0f};
    for (int i = 0; i < 4; i++) data1[i] = f32_to_f16(h[i]);
    struct zentry e[6] = {
        {"archive/data.pkl", p->b, p->n},   {"archive/data/0", data0, sizeof data0}, {"archive/data/1", data1, sizeof data1},
        {"archive/data/2", data2, sizeof data2}, {"archive/data/3", data3, sizeof data3}, {"archive/version", "3\n", 2},
    };
    write_zip(path, 6, e);
}

/* ---------------------------------------------------------------- accepted input */

START_TEST(test_handmade)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    static struct pb p;
    build_good(&p);
    struct torch_pickle *tp = torch_pickle_parse(p.b, p.n, "good");
    ck_assert_msg(tp != NULL, "%s", tensor_error());
    ck_assert_int_eq(tp->n, 5);
    const char *names[5] = {"a.w", "a.b", "nested.x", "p", "s"};
    for (int i = 0; i < 5; i++) ck_assert_str_eq(tp->entries[i].name, names[i]);
    ck_assert_int_eq(tp->entries[0].dtype, DTYPE_F32);
    ck_assert_int_eq(tp->entries[2].dtype, DTYPE_F16);
    ck_assert_str_eq(tp->entries[2].storage_type, "HalfStorage");
    ck_assert_int_eq(tp->entries[3].dtype, DTYPE_I64);
    ck_assert_int_eq(tp->entries[1].offset, 6);
    ck_assert_int_eq(tp->entries[0].stride[1], 3);
    ck_assert_int_eq(tp->entries[4].ndim, 0);
    torch_pickle_free(tp);

    const char *path = tmp_path("good.ckpt");
    write_good_zip(path, &p);
    struct torch_file *f = torch_file_open(path);
    ck_assert_msg(f != NULL, "%s", tensor_error());
    ck_assert_int_eq(torch_file_count(f), 5);
    ck_assert_str_eq(torch_file_name(f, 2), "nested.x");
    ck_assert_ptr_null(torch_file_name(f, 5));
    ck_assert_ptr_nonnull(torch_file_find(f, "p"));
    /* a.w[i][j] = storage[i + 3j] */
    struct tensor *aw = torch_file_load(f, "a.w", DTYPE_F64);
    ck_assert_msg(aw != NULL, "%s", tensor_error());
    ck_assert(tensor_is_contiguous(aw));
    ck_assert_int_eq(aw->shape[0], 3);
    for (int64_t i = 0; i < 3; i++)
        for (int64_t j = 0; j < 2; j++) ck_assert_double_eq(tensor_get(aw, (int64_t[]){i, j}), (double)(i + 3 * j));
    struct tensor *ab = torch_file_load(f, "a.b", DTYPE_F32);
    ck_assert_msg(ab != NULL, "%s", tensor_error());
    for (int64_t i = 0; i < 3; i++) ck_assert_double_eq(tensor_get_flat(ab, i), 6.0 + 2.0 * (double)i);
    struct tensor *x = torch_file_load(f, "nested.x", DTYPE_F32);
    ck_assert_msg(x != NULL, "%s", tensor_error());
    const double hx[4] = {0.5, 1.5, -2.0, 3.0};
    for (int64_t i = 0; i < 4; i++) ck_assert_double_eq(tensor_get_flat(x, i), hx[i]);
    struct tensor *x16 = torch_file_load(f, "nested.x", DTYPE_F16);
    ck_assert_int_eq(x16->dtype, DTYPE_F16);
    ck_assert_double_eq(tensor_get_flat(x16, 3), 3.0);
    struct tensor *pp = torch_file_load(f, "p", DTYPE_I64);
    ck_assert_int_eq((int64_t)tensor_get_flat(pp, 1), 1LL << 40);
    ck_assert_int_eq((int64_t)tensor_get_flat(pp, 0), -5);
    struct tensor *s = torch_file_load(f, "s", DTYPE_F32);
    ck_assert_int_eq(s->ndim, 0);
    ck_assert_double_eq(tensor_get_flat(s, 0), 2.5);
    ck_assert_ptr_null(torch_file_load(f, "missing", DTYPE_F32));
    ck_assert(strstr(tensor_error(), "missing"));
    torch_file_close(f);

    ck_assert(torch_ckpt_name_unused("model_ema.decay"));
    ck_assert(torch_ckpt_name_unused("alphas_cumprod"));
    ck_assert(torch_ckpt_name_unused("cond_stage_model.transformer.text_model.embeddings.position_ids"));
    ck_assert(!torch_ckpt_name_unused("model.diffusion_model.out.2.weight"));
    printf("pickle handmade: %zu-byte pickle, 5 tensors loaded exactly\n", p.n);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* protocol 4: FRAME, STACK_GLOBAL, MEMOIZE, BINUNICODE8, BINGET of a memoized value */
START_TEST(test_protocol4)
{
    LEAK_CHECK_BEGIN();
    static struct pb p;
    p.n = 0;
    pb_op(&p, 0x80), pb_op(&p, 4);
    pb_op(&p, 0x95), pb_le(&p, 0, 8);
    pb_op(&p, '}'), pb_op(&p, 0x94);   /* memo 0 */
    pb_op(&p, 0x8d), pb_le(&p, 1, 8), pb_raw(&p, "w", 1), pb_op(&p, 0x94);   /* memo 1 */
    pb_str(&p, "torch._utils"), pb_str(&p, "_rebuild_tensor_v2"), pb_op(&p, 0x93);
    pb_op(&p, '('), pb_op(&p, '('), pb_str(&p, "storage");
    pb_str(&p, "torch"), pb_str(&p, "BFloat16Storage"), pb_op(&p, 0x93);
    pb_str(&p, "k_0"), pb_str(&p, "cpu"), pb_int(&p, 6), pb_op(&p, 't'), pb_op(&p, 'Q');
    pb_int(&p, 0), pb_ints(&p, 2, (int64_t[]){2, 3}), pb_ints(&p, 2, (int64_t[]){3, 1}), pb_op(&p, 0x89);
    pb_str(&p, "collections"), pb_str(&p, "OrderedDict"), pb_op(&p, 0x93), pb_op(&p, ')'), pb_op(&p, 'R');
    pb_op(&p, 't'), pb_op(&p, 'R'), pb_op(&p, 's');
    pb_op(&p, '.');
    struct torch_pickle *tp = torch_pickle_parse(p.b, p.n, "proto4");
    ck_assert_msg(tp != NULL, "%s", tensor_error());
    ck_assert_int_eq(tp->n, 1);
    ck_assert_str_eq(tp->entries[0].name, "w");
    ck_assert_str_eq(tp->entries[0].key, "k_0");
    ck_assert_int_eq(tp->entries[0].dtype, DTYPE_BF16);
    torch_pickle_free(tp);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- hostile pickles */

struct bad {
    const char *label;
    const char *bytes;
    size_t n;
    const char *expect;   /* substring of the error */
};
#define BAD(label, s, expect) {label, s, sizeof(s) - 1, expect}

static const struct bad bad_cases[] = {
    BAD("empty", "", "end of data"),
    BAD("unknown opcode", "\x80\x02\xff", "unknown (0xff) at offset 2"),
    BAD("os.system", "\x80\x02" "cos\nsystem\n" "X\x02\x00\x00\x00ls\x85R.", "os.system is not whitelisted"),
    BAD("builtins.eval", "\x80\x02\x8c\x08" "builtins\x8c\x04" "eval\x93.", "builtins.eval is not whitelisted"),
    BAD("global without newline", "\x80\x02" "ctorch\nFloatStorage", "without a newline"),
    BAD("reduce storage type", "\x80\x02" "ctorch\nFloatStorage\n)R.", "not callable"),
    BAD("reduce a dict", "\x80\x02})R.", "not a whitelisted global"),
    BAD("reduce with non-tuple args", "\x80\x02" "ccollections\nOrderedDict\n}R.", "not a tuple"),
    BAD("OrderedDict with args", "\x80\x02" "ccollections\nOrderedDict\nK\x01\x85R.", "with arguments"),
    BAD("INST", "\x80\x02(ios\nsystem\n.", "INST"),
    BAD("OBJ", "\x80\x02(o.", "OBJ"),
    BAD("NEWOBJ", "\x80\x02})\x81.", "NEWOBJ"),
    BAD("PERSID text", "\x80\x02P0\n.", "PERSID"),
    BAD("EXT1", "\x80\x02\x82\x01.", "EXT1"),
    BAD("protocol 9", "\x80\x09}.", "protocol 9"),
    BAD("stop on empty stack", "\x80\x02.", "underflow"),
    BAD("setitem underflow", "\x80\x02}K\x01s.", "underflow"),
    BAD("setitem on list", "\x80\x02]K\x01K\x02s.", "non-dict"),
    BAD("setitems odd", "\x80\x02}(K\x01u.", "key/value pairs"),
    BAD("setitems no container", "\x80\x02(K\x01K\x02u.", "no container"),
    BAD("appends on dict", "\x80\x02}(K\x01" "e.", "non-list"),
    BAD("tuple without mark", "\x80\x02K\x01t.", "no MARK"),
    BAD("pop through mark", "\x80\x02K\x01(0.", "underflow"),
    BAD("tuple2 through mark", "\x80\x02K\x01(K\x02\x86.", "underflow"),
    BAD("binget never stored", "\x80\x02h\x05.", "memo index 5 was never stored"),
    BAD("long_binget huge", "\x80\x02j\xff\xff\xff\xff.", "never stored"),
    BAD("long_binput huge", "\x80\x02}r\xff\xff\xff\x7f.", "over the limit"),
    BAD("binput empty stack", "\x80\x02q\x00.", "underflow"),
    BAD("long1 too wide", "\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00.", "64 bits"),
    BAD("binunicode past end", "\x80\x02X\xff\xff\xff\x7f" "ab", "truncated"),
    BAD("string with NUL", "\x80\x02\x8c\x03" "a\0b.", "NUL"),
    BAD("frame past end", "\x80\x04\x95\xff\x00\x00\x00\x00\x00\x00\x00}.", "frame longer"),
    BAD("top not dict", "\x80\x02]." , "not a dict"),
    BAD("self-nested dict", "\x80\x02}q\x00X\x01\x00\x00\x00xh\x00s.", "nested deeper"),
    BAD("build on list", "\x80\x02]}b.", "BUILD on something"),
    BAD("build with int state", "\x80\x02}K\x01" "b.", "not a dict"),
    BAD("persid not storage", "\x80\x02(\x8c\x03xyzK\x01K\x02K\x03K\x04tQ.", "not a 'storage'"),
    BAD("persid wrong arity", "\x80\x02K\x01\x85Q.", "5-tuple"),
    BAD("persid bad type", "\x80\x02(\x8c\x07storageK\x01\x8c\x01" "0\x8c\x03" "cpuK\x04tQ.", "torch.*Storage"),
    BAD("storage key traversal", "\x80\x02(\x8c\x07storage" "ctorch\nFloatStorage\n" "\x8c\x05../..\x8c\x03" "cpuK\x04tQ.", "characters"),
    BAD("storage numel negative", "\x80\x02(\x8c\x07storage" "ctorch\nFloatStorage\n" "\x8c\x01" "0\x8c\x03" "cpuJ\xff\xff\xff\xfftQ.", "numel"),
    BAD("rebuild bad storage", "\x80\x02" "ctorch._utils\n_rebuild_tensor\n(K\x00K\x00)\x29tR.", "not a storage"),
    BAD("rebuild wrong arity", "\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\n)R.", "args"),
    BAD("parameter of int", "\x80\x02" "ctorch._utils\n_rebuild_parameter\n(K\x01\x89NtR.", "_rebuild_parameter"),
};

START_TEST(test_bad_pickle)
{
    LEAK_CHECK_BEGIN();
    const struct bad *b = &bad_cases[_i];
    struct torch_pickle *tp = torch_pickle_parse(b->bytes, b->n, b->label);
    ck_assert_msg(tp == NULL, "%s: accepted", b->label);
    ck_assert_msg(strstr(tensor_error(), b->expect), "%s: error '%s' lacks '%s'", b->label, tensor_error(), b->expect);
    printf("pickle refused %-24s %s\n", b->label, tensor_error());
    LEAK_CHECK_END();
}
END_TEST

/* tensor views that leave their storage, and malformed sizes */
START_TEST(test_bad_views)
{
    LEAK_CHECK_BEGIN();
    static struct pb p;
    struct {
        const char *label, *expect;
        int64_t numel, off;
        int nd;
        int64_t shape[9], stride[9];
        const char *stype;
    } cases[] = {
        {"offset past end", "outside storage", 12, 10, 1, {3}, {1}, "FloatStorage"},
        {"stride past end", "outside storage", 12, 0, 2, {3, 3}, {4, 2}, "FloatStorage"},
        {"empty past end", "past storage", 12, 13, 1, {0}, {1}, "FloatStorage"},
        {"stride overflow", "overflows", 12, 0, 2, {1LL << 40, 2}, {1LL << 40, 1}, "FloatStorage"},
        {"numel overflow", "overflows", 12, 0, 3, {1LL << 30, 1LL << 30, 1LL << 30}, {0, 0, 0}, "FloatStorage"},
        {"negative size", "non-negative", 12, 0, 1, {-1}, {1}, "FloatStorage"},
        {"nine dims", "max 8", 12, 0, 9, {1, 1, 1, 1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 1, 1, 1, 1}, "FloatStorage"},
        {"unknown storage", "not whitelisted", 12, 0, 1, {3}, {1}, "ComplexFloatStorage"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        p.n = 0;
        pb_op(&p, 0x80), pb_op(&p, 2), pb_op(&p, '}'), pb_str(&p, "t");
        pb_tensor(&p, cases[c].stype, "0", cases[c].numel, cases[c].off, cases[c].nd, cases[c].shape, cases[c].stride);
        pb_op(&p, 's'), pb_op(&p, '.');
        struct torch_pickle *tp = torch_pickle_parse(p.b, p.n, cases[c].label);
        ck_assert_msg(tp == NULL, "%s: accepted", cases[c].label);
        ck_assert_msg(strstr(tensor_error(), cases[c].expect), "%s: '%s'", cases[c].label, tensor_error());
        printf("pickle refused %-24s %s\n", cases[c].label, tensor_error());
    }
    /* the same tensor name twice (flattening "a.b" and {"a": {"b"}}) */
    p.n = 0;
    pb_op(&p, 0x80), pb_op(&p, 2), pb_op(&p, '}'), pb_op(&p, '(');
    pb_str(&p, "a.b"), pb_tensor(&p, "FloatStorage", "0", 4, 0, 1, (int64_t[]){4}, (int64_t[]){1});
    pb_str(&p, "a"), pb_op(&p, '}'), pb_str(&p, "b"), pb_tensor(&p, "FloatStorage", "0", 4, 0, 1, (int64_t[]){4}, (int64_t[]){1});
    pb_op(&p, 's'), pb_op(&p, 'u'), pb_op(&p, '.');
    ck_assert_ptr_null(torch_pickle_parse(p.b, p.n, "dup"));
    ck_assert_msg(strstr(tensor_error(), "duplicate tensor name 'a.b'"), "%s", tensor_error());
    LEAK_CHECK_END();
}
END_TEST

/* every prefix of a valid pickle, deep marks, and every single-byte corruption: errors only */
START_TEST(test_truncations_and_mutations)
{
    LEAK_CHECK_BEGIN();
    static struct pb p;
    build_good(&p);
    for (size_t len = 0; len < p.n; len++) {
        struct torch_pickle *tp = torch_pickle_parse(p.b, len, "prefix");
        ck_assert_msg(tp == NULL, "prefix %zu accepted", len);
        ck_assert(tensor_error()[0]);
    }
    static unsigned char deep[5000];
    memcpy(deep, "\x80\x02", 2);
    memset(deep + 2, '(', sizeof deep - 2);
    ck_assert_ptr_null(torch_pickle_parse(deep, sizeof deep, "deep marks"));
    ck_assert_msg(strstr(tensor_error(), "nested MARKs"), "%s", tensor_error());
    /* a long run of EMPTY_LISTs stays within the stack limit and fails at the end */
    ck_assert_ptr_null(torch_pickle_parse(deep + 1, sizeof deep - 1, "marks without proto"));
    int accepted = 0;
    static struct pb q;
    for (size_t at = 0; at < p.n; at++)
        for (int flip = 1; flip < 256; flip <<= 1) {
            q = p;
            q.b[at] ^= (unsigned char)flip;
            struct torch_pickle *tp = torch_pickle_parse(q.b, q.n, "mutant");
            if (tp) accepted++;
            torch_pickle_free(tp);
        }
    printf("pickle robustness: %zu prefixes refused, %zu single-bit mutants (%d still valid), no crash\n", p.n, p.n * 8,
           accepted);
    LEAK_CHECK_END();
}
END_TEST

/* broken zips: not a zip, no data.pkl, storage missing or short, unsupported dtype */
START_TEST(test_bad_zip)
{
    LEAK_CHECK_BEGIN();
    static struct pb p;
    build_good(&p);
    const char *path = tmp_path("bad.zip");
    FILE *fp = fopen(path, "wb");
    fputs("this is not a zip file at all", fp);
    fclose(fp);
    ck_assert_ptr_null(torch_file_open(path));
    ck_assert_msg(strstr(tensor_error(), "not a readable zip"), "%s", tensor_error());
    ck_assert_ptr_null(torch_file_open(tmp_path("does-not-exist.pth")));
    ck_assert_ptr_null(torch_file_open(NULL));

    write_zip(path, 1, (struct zentry[]){{"archive/version", "3\n", 2}});
    ck_assert_ptr_null(torch_file_open(path));
    ck_assert_msg(strstr(tensor_error(), "no data.pkl"), "%s", tensor_error());

    write_zip(path, 1, (struct zentry[]){{"archive/xdata.pkl", p.b, p.n}});
    ck_assert_ptr_null(torch_file_open(path));
    ck_assert_msg(strstr(tensor_error(), "no data.pkl"), "%s", tensor_error());

    write_zip(path, 2, (struct zentry[]){{"archive/data.pkl", p.b, p.n}, {"archive/data/0", data0, sizeof data0}});
    ck_assert_ptr_null(torch_file_open(path));
    ck_assert_msg(strstr(tensor_error(), "archive/data/1 is missing"), "%s", tensor_error());

    write_zip(path, 5,
              (struct zentry[]){{"archive/data.pkl", p.b, p.n},
                                {"archive/data/0", data0, sizeof data0 - 4},
                                {"archive/data/1", data1, sizeof data1},
                                {"archive/data/2", data2, sizeof data2},
                                {"archive/data/3", data3, sizeof data3}});
    ck_assert_ptr_null(torch_file_open(path));
    ck_assert_msg(strstr(tensor_error(), "too small"), "%s", tensor_error());

    /* a pickle that is refused inside a zip names the file */
    write_zip(path, 1, (struct zentry[]){{"archive/data.pkl", "\x80\x02" "cos\nsystem\n.", 14}});
    ck_assert_ptr_null(torch_file_open(path));
    ck_assert_msg(strstr(tensor_error(), "data.pkl") && strstr(tensor_error(), "os.system"), "%s", tensor_error());

    /* a storage type with no engine dtype is listed but not loadable */
    static struct pb q;
    q.n = 0;
    pb_op(&q, 0x80), pb_op(&q, 2), pb_op(&q, '}'), pb_str(&q, "mask");
    pb_tensor(&q, "BoolStorage", "0", 4, 0, 1, (int64_t[]){4}, (int64_t[]){1});
    pb_op(&q, 's'), pb_op(&q, '.');
    write_zip(path, 2, (struct zentry[]){{"data.pkl", q.b, q.n}, {"data/0", "\1\0\1\0", 4}});
    struct torch_file *f = torch_file_open(path);
    ck_assert_msg(f != NULL, "%s", tensor_error());
    ck_assert_ptr_null(torch_file_load(f, "mask", DTYPE_F32));
    ck_assert_msg(strstr(tensor_error(), "BoolStorage"), "%s", tensor_error());
    torch_file_close(f);
    remove(path);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- the real aesthetic head */

START_TEST(test_aesthetic_real)
{
    char wp[512], gp[512];
    if (!parity_path("aesthetic/sac+logos+ava1-l14-linearMSE.pth", wp, sizeof wp) ||
        !parity_path("golden/aesthetic.safetensors", gp, sizeof gp))
        return;
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct torch_file *f = torch_file_open(wp);
    ck_assert_msg(f != NULL, "%s", tensor_error());
    ck_assert_int_eq(torch_file_count(f), 10);
    const int layer[5] = {0, 2, 4, 6, 7};
    const int64_t dims[6] = {768, 1024, 128, 64, 16, 1};
    struct tensor *w[5], *b[5];
    for (int l = 0; l < 5; l++) {
        char nw[64], nb[64];
        snprintf(nw, sizeof nw, "layers.%d.weight", layer[l]);
        snprintf(nb, sizeof nb, "layers.%d.bias", layer[l]);
        ck_assert_str_eq(torch_file_name(f, 2 * l), nw);
        ck_assert_str_eq(torch_file_name(f, 2 * l + 1), nb);
        const struct torch_entry *e = torch_file_find(f, nw);
        ck_assert_int_eq(e->dtype, DTYPE_F32);
        ck_assert_int_eq(e->ndim, 2);
        ck_assert_int_eq(e->shape[0], dims[l + 1]);
        ck_assert_int_eq(e->shape[1], dims[l]);
        w[l] = torch_file_load(f, nw, DTYPE_F32);
        b[l] = torch_file_load(f, nb, DTYPE_F32);
        ck_assert_msg(w[l] && b[l], "%s", tensor_error());
    }
    torch_file_close(f);
    struct safetensors *gold = safetensors_open(gp);
    ck_assert_msg(gold != NULL, "%s", tensor_error());
    struct tensor *x = parity_load(gold, "embeds_normalized");
    ck_assert_int_eq(ag_set_requires_grad(x, true), STATUS_OK);
    /* Linear 768->1024->128->64->16->1, dropout is identity at eval, no activations */
    struct tensor *h = x;
    for (int l = 0; l < 5; l++) h = ag_linear(h, w[l], b[l]);
    ck_assert_msg(h != NULL, "%s", tensor_error());
    ck_assert(parity_check("aesthetic.score", h, parity_load(gold, "score"), PARITY_RTOL_FWD, parity_rms(gold, "score")));
    ck_assert_int_eq(ag_backward(ag_sum(h, 0, NULL, false), NULL, false), STATUS_OK);
    ck_assert(parity_check("aesthetic.grad.embeds_normalized", x->grad, parity_load(gold, "grad.embeds_normalized"),
                           PARITY_RTOL_GRAD, parity_rms(gold, "grad.")));
    safetensors_close(gold);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    test_seed();
    Suite *s = suite_create("pickle");
    TCase *tc = tcase_create("pickle");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_handmade);
    tcase_add_test(tc, test_protocol4);
    tcase_add_loop_test(tc, test_bad_pickle, 0, (int)(sizeof bad_cases / sizeof *bad_cases));
    tcase_add_test(tc, test_bad_views);
    tcase_add_test(tc, test_truncations_and_mutations);
    tcase_add_test(tc, test_bad_zip);
    tcase_add_test(tc, test_aesthetic_real);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
