/* test_tensor.c — the tensor layer: dtypes and f16/bf16 conversion, views checked against
 * a reference index computation, scopes and reference counts, the caching allocator,
 * the Philox generator (known answers, its libm-free math, stream semantics) and error
 * reporting. */
#include "tests/harness.h"
#include "tensor/alloc.h"
#include "tensor/philox.h"
#include "tensor/profile.h"

#include <float.h>
#include <math.h>
#include <omp.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static bool f16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }
static bool bf16_is_nan(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f); }

/* the exact value of an f16 bit pattern, straight from the IEEE definition */
static double f16_ref(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 0x3ff;
    double s = h & 0x8000 ? -1.0 : 1.0;
    if (e == 0) return s * ldexp(m, -24);
    if (e == 31) return m ? NAN : s * INFINITY;
    return s * ldexp(1024 + m, e - 25);
}

/* for assertions inside loops over many elements: Check records the location of every
 * passing ck_assert with a write(), which costs seconds over millions of elements */
#define EXPECT(cond) do { if (!(cond)) ck_abort_msg("Assertion '%s' failed", #cond); } while (0)
#define EXPECT_MSG(cond, ...) do { if (!(cond)) ck_abort_msg(__VA_ARGS__); } while (0)

static bool contains(const char *hay, const char *needle) { return strstr(hay, needle) != NULL; }

#define ck_error_has(status_, needle)                                                                      \
    do {                                                                                                   \
        ck_assert_msg(tensor_status() == (status_), "status %d, expected %d (%s)", (int)tensor_status(),    \
                      (int)(status_), tensor_error());                                                     \
        ck_assert_msg(contains(tensor_error(), needle), "message '%s' lacks '%s'", tensor_error(), needle); \
    } while (0)

/* ---------------------------------------------------------------- dtypes */

START_TEST(test_dtype_basics)
{
    LEAK_CHECK_BEGIN();
    const size_t sizes[DTYPE_COUNT] = {4, 8, 2, 2, 4, 8};
    const char *names[DTYPE_COUNT] = {"f32", "f64", "f16", "bf16", "i32", "i64"};
    const bool is_float[DTYPE_COUNT] = {true, true, true, true, false, false};
    tensor_scope_begin();
    for (int d = 0; d < DTYPE_COUNT; d++) {
        ck_assert_uint_eq(dtype_size(d), sizes[d]);
        ck_assert_str_eq(dtype_name(d), names[d]);
        ck_assert(dtype_is_float(d) == is_float[d]);
        struct tensor *t = tensor_full(d, TENSOR_SHAPE(3, 5), 7.0, DEVICE_CPU);
        ck_assert_ptr_nonnull(t);
        ck_assert_int_eq(t->dtype, d);
        ck_assert_int_eq(tensor_numel(t), 15);
        ck_assert_uint_ge(t->storage->bytes, 15 * sizes[d]);
        for (int64_t i = 0; i < 15; i++) ck_assert(tensor_get_flat(t, i) == 7.0);
    }
    ck_assert_str_eq(dtype_name(DTYPE_COUNT), "?");
    ck_assert_str_eq(device_name(DEVICE_CPU), "cpu");
    ck_assert_str_eq(device_name(DEVICE_CUDA), "cuda");
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* the matrix-product precision switch: names round-trip, unknown ones are refused, the default
 * is exact f32, and the CPU backend ignores it (bit-identical products in every mode; the GPU
 * side is tests/test_cuda.c's error bands) */
START_TEST(test_precision_switch)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    ck_assert_int_eq(tensor_precision(), PRECISION_F32);
    const enum precision all[3] = {PRECISION_F32, PRECISION_TF32, PRECISION_BF16};
    for (int i = 0; i < 3; i++) {
        enum precision p = PRECISION_F32;
        ck_assert(precision_parse(precision_name(all[i]), &p));
        ck_assert_int_eq(p, all[i]);
    }
    enum precision p = PRECISION_TF32;
    ck_assert(!precision_parse("fp8", &p) && !precision_parse("", &p) && !precision_parse(NULL, &p));
    ck_assert_int_eq(p, PRECISION_TF32);   /* untouched on failure */
    const struct backend *cpu = backend_for(DEVICE_CPU);
    struct tensor *a = test_uniform(DTYPE_F32, TENSOR_SHAPE(37, 53), -1, 1);
    struct tensor *b = test_uniform(DTYPE_F32, TENSOR_SHAPE(53, 29), -1, 1);
    struct tensor *ref = tensor_empty(DTYPE_F32, TENSOR_SHAPE(37, 29), DEVICE_CPU);
    ck_assert_int_eq(cpu->matmul(ref, a, b, 1.0, 0.0), STATUS_OK);
    for (int i = 1; i < 3; i++) {
        struct tensor *o = tensor_empty(DTYPE_F32, TENSOR_SHAPE(37, 29), DEVICE_CPU);
        tensor_set_precision(all[i]);
        const enum status st = cpu->matmul(o, a, b, 1.0, 0.0);
        tensor_set_precision(PRECISION_F32);
        ck_assert_int_eq(st, STATUS_OK);
        ck_assert_msg(!memcmp(tensor_data_ptr(o), tensor_data_ptr(ref), 37 * 29 * sizeof(float)),
                      "the CPU matmul changed under --precision %s", precision_name(all[i]));
    }
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* every f16 bit pattern: exact value, round trip through f32, NaN stays NaN */
START_TEST(test_f16_all_patterns)
{
    LEAK_CHECK_BEGIN();
    int n_nan = 0, n_sub = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = f16_to_f32((uint16_t)h);
        uint16_t back = f32_to_f16(f);
        EXPECT_MSG(!signbit(f) == !(h & 0x8000), "f16 0x%04x: sign lost", h);
        if (f16_is_nan((uint16_t)h)) {
            n_nan++;
            EXPECT_MSG(isnan(f), "f16 0x%04x is NaN but converts to %g", h, (double)f);
            EXPECT_MSG(f16_is_nan(back), "f16 NaN 0x%04x came back as 0x%04x", h, back);
            EXPECT((back & 0x8000) == (h & 0x8000));
            continue;
        }
        if (((h >> 10) & 31) == 0 && (h & 0x3ff)) n_sub++;
        EXPECT_MSG((double)f == f16_ref((uint16_t)h), "f16 0x%04x -> %.9g, expected %.9g", h, (double)f, f16_ref((uint16_t)h));
        EXPECT_MSG(back == h, "f16 0x%04x -> %.9g -> 0x%04x", h, (double)f, back);
    }
    ck_assert_int_eq(n_nan, 2 * 1023);
    ck_assert_int_eq(n_sub, 2 * 1023);
    EXPECT(isinf(f16_to_f32(0x7c00)) && f16_to_f32(0x7c00) > 0);
    EXPECT(isinf(f16_to_f32(0xfc00)) && f16_to_f32(0xfc00) < 0);
    EXPECT(f16_to_f32(0x0001) == ldexpf(1, -24));
    EXPECT(f16_to_f32(0x7bff) == 65504.0f);

    /* the same through the tensor copy kernel: f16 -> f32 / f64 -> f16 */
    tensor_scope_begin();
    uint16_t *all = malloc(65536 * sizeof *all);
    for (uint32_t h = 0; h < 65536; h++) all[h] = (uint16_t)h;
    struct tensor *t16 = tensor_from_data(DTYPE_F16, TENSOR_SHAPE(256, 256), all);
    for (int k = 0; k < 2; k++) {
        struct tensor *wide = tensor_to_dtype(t16, k ? DTYPE_F64 : DTYPE_F32);
        struct tensor *back = tensor_to_dtype(wide, DTYPE_F16);
        ck_assert_ptr_nonnull(back);
        const uint16_t *pb = tensor_data_ptr(back);
        for (uint32_t h = 0; h < 65536; h++) {
            double v = tensor_get_flat(wide, h);
            if (f16_is_nan((uint16_t)h)) {
                EXPECT(isnan(v) && f16_is_nan(pb[h]));
            } else {
                EXPECT_MSG(v == f16_ref((uint16_t)h), "tensor f16 0x%04x -> %.9g", h, v);
                EXPECT_MSG(pb[h] == h, "tensor f16 0x%04x came back as 0x%04x", h, pb[h]);
            }
        }
    }
    free(all);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* every bf16 bit pattern round-trips; NaN stays NaN */
START_TEST(test_bf16_all_patterns)
{
    LEAK_CHECK_BEGIN();
    for (uint32_t h = 0; h < 65536; h++) {
        float f = bf16_to_f32((uint16_t)h);
        EXPECT(f32_bits(f) == h << 16);
        uint16_t back = f32_to_bf16(f);
        if (bf16_is_nan((uint16_t)h)) {
            EXPECT_MSG(bf16_is_nan(back), "bf16 NaN 0x%04x came back as 0x%04x", h, back);
            EXPECT((back & 0x8000) == (h & 0x8000));
        } else {
            EXPECT_MSG(back == h, "bf16 0x%04x came back as 0x%04x", h, back);
        }
    }
    /* f32 NaNs whose payload sits only in the low 16 bits must not become inf */
    EXPECT(bf16_is_nan(f32_to_bf16(bits_f32(0x7f800001))));
    EXPECT(bf16_is_nan(f32_to_bf16(bits_f32(0xff800001))));
    EXPECT(bf16_is_nan(f32_to_bf16(NAN)));
    LEAK_CHECK_END();
}
END_TEST

/* f32 -> f16 and f32 -> bf16 round to nearest, ties to even, in every interval between
 * neighbouring representable values; overflow goes to inf */
START_TEST(test_f32_rounding)
{
    LEAK_CHECK_BEGIN();
    for (uint32_t h = 0; h <= 0x7bff; h++) {
        double lo = f16_ref((uint16_t)h), hi = h == 0x7bff ? 65536.0 : f16_ref((uint16_t)(h + 1));
        float mid = (float)((lo + hi) / 2);
        EXPECT((double)mid == (lo + hi) / 2);   /* exact in f32 */
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        for (int sgn = 0; sgn < 2; sgn++) {
            float m = sgn ? -mid : mid;
            uint16_t s = sgn ? 0x8000 : 0;
            EXPECT_MSG(f32_to_f16(m) == (even | s), "tie %.10g between f16 0x%04x and 0x%04x gave 0x%04x", (double)m,
                          h | s, (h + 1) | s, f32_to_f16(m));
            EXPECT(f32_to_f16(nextafterf(m, sgn ? -INFINITY : INFINITY)) == ((h + 1) | s));
            EXPECT(f32_to_f16(nextafterf(m, 0)) == (h | s));
        }
    }
    /* explicit cases */
    ck_assert_uint_eq(f32_to_f16(1.0f + ldexpf(1, -11)), 0x3c00);           /* tie, down to even */
    ck_assert_uint_eq(f32_to_f16(1.0f + 3 * ldexpf(1, -11)), 0x3c02);       /* tie, up to even */
    ck_assert_uint_eq(f32_to_f16(ldexpf(1, -25)), 0x0000);                  /* half the smallest subnormal */
    ck_assert_uint_eq(f32_to_f16(3 * ldexpf(1, -25)), 0x0002);
    ck_assert_uint_eq(f32_to_f16(1023.5f * ldexpf(1, -24)), 0x0400);        /* subnormal carries into normal */
    ck_assert_uint_eq(f32_to_f16(65504.0f), 0x7bff);
    ck_assert_uint_eq(f32_to_f16(65519.0f), 0x7bff);
    ck_assert_uint_eq(f32_to_f16(65520.0f), 0x7c00);                        /* tie at the top: overflow */
    ck_assert_uint_eq(f32_to_f16(1e6f), 0x7c00);
    ck_assert_uint_eq(f32_to_f16(-1e6f), 0xfc00);
    ck_assert_uint_eq(f32_to_f16(FLT_MAX), 0x7c00);
    ck_assert_uint_eq(f32_to_f16(INFINITY), 0x7c00);
    ck_assert_uint_eq(f32_to_f16(-INFINITY), 0xfc00);
    ck_assert_uint_eq(f32_to_f16(1e-30f), 0x0000);
    ck_assert_uint_eq(f32_to_f16(-1e-30f), 0x8000);
    ck_assert_uint_eq(f32_to_f16(FLT_TRUE_MIN), 0x0000);
    ck_assert_uint_eq(f32_to_f16(-0.0f), 0x8000);
    EXPECT(f16_is_nan(f32_to_f16(NAN)));

    for (uint32_t h = 0; h <= 0x7f7f; h++) {
        uint32_t mid = h << 16 | 0x8000;
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        for (uint32_t s = 0; s <= 0x8000; s += 0x8000) {
            uint32_t sb = s << 16;
            EXPECT_MSG(f32_to_bf16(bits_f32(mid | sb)) == (even | s), "bf16 tie 0x%08x gave 0x%04x", mid | sb,
                          f32_to_bf16(bits_f32(mid | sb)));
            EXPECT(f32_to_bf16(bits_f32((mid + 1) | sb)) == ((h + 1) | s));
            EXPECT(f32_to_bf16(bits_f32((mid - 1) | sb)) == (h | s));
        }
    }
    ck_assert_uint_eq(f32_to_bf16(bits_f32(0x3f808000)), 0x3f80);   /* tie, down to even */
    ck_assert_uint_eq(f32_to_bf16(bits_f32(0x3f818000)), 0x3f82);   /* tie, up to even */
    ck_assert_uint_eq(f32_to_bf16(FLT_MAX), 0x7f80);                /* overflow to inf */
    ck_assert_uint_eq(f32_to_bf16(-FLT_MAX), 0xff80);
    ck_assert_uint_eq(f32_to_bf16(bits_f32(0x7f7f7fff)), 0x7f7f);
    ck_assert_uint_eq(f32_to_bf16(INFINITY), 0x7f80);

    /* the tensor path rounds the same way */
    tensor_scope_begin();
    const float ties[4] = {1.0f + ldexpf(1, -11), 1.0f + 3 * ldexpf(1, -11), 65520.0f, -1e6f};
    struct tensor *t = tensor_from_data(DTYPE_F32, TENSOR_SHAPE(4), ties);
    const uint16_t *p16 = tensor_data_ptr(tensor_to_dtype(t, DTYPE_F16));
    EXPECT(p16[0] == 0x3c00 && p16[1] == 0x3c02 && p16[2] == 0x7c00 && p16[3] == 0xfc00);
    const float bt[2] = {bits_f32(0x3f808000), bits_f32(0x3f818000)};
    const uint16_t *pb = tensor_data_ptr(tensor_to_dtype(tensor_from_data(DTYPE_F32, TENSOR_SHAPE(2), bt), DTYPE_BF16));
    EXPECT(pb[0] == 0x3f80 && pb[1] == 0x3f82);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* every dtype pair, contiguous and strided sources, on values every dtype holds exactly */
START_TEST(test_to_dtype_pairs)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    const double vals[8] = {-3, 0, 1, 2, 7, 100, -128, 255};
    struct tensor *base = tensor_from_data(DTYPE_F64, TENSOR_SHAPE(2, 4), vals);
    for (int src = 0; src < DTYPE_COUNT; src++) {
        for (int nc = 0; nc < 2; nc++) {
            struct tensor *s = tensor_to_dtype(base, src);
            ck_assert_ptr_nonnull(s);
            if (nc) s = test_noncontig(s);
            EXPECT(nc == !tensor_is_contiguous(s));
            for (int dst = 0; dst < DTYPE_COUNT; dst++) {
                struct tensor *d = tensor_to_dtype(s, dst);
                EXPECT_MSG(d != NULL, "%s -> %s: %s", dtype_name(src), dtype_name(dst), tensor_error());
                ck_assert_int_eq(d->dtype, dst);
                EXPECT(tensor_same_shape(d, base) && tensor_is_contiguous(d));
                EXPECT(d->storage != s->storage);
                for (int64_t i = 0; i < 8; i++)
                    EXPECT_MSG(tensor_get_flat(d, i) == vals[i], "%s -> %s%s: element %lld is %g, expected %g",
                                  dtype_name(src), dtype_name(dst), nc ? " (strided)" : "", (long long)i,
                                  tensor_get_flat(d, i), vals[i]);
            }
        }
    }
    /* float -> int truncates toward zero; f32 -> f64 is exact */
    const double frac[4] = {2.75, -2.75, 0.5, -0.5};
    const double trunc_want[4] = {2, -2, 0, 0};
    for (int src = 0; src < 4; src++) {
        struct tensor *f = tensor_to_dtype(tensor_from_data(DTYPE_F64, TENSOR_SHAPE(4), frac), src);
        for (int dst = DTYPE_I32; dst <= DTYPE_I64; dst++) {
            struct tensor *d = tensor_to_dtype(f, dst);
            for (int64_t i = 0; i < 4; i++) EXPECT(tensor_get_flat(d, i) == trunc_want[i]);
        }
    }
    const float third = 1.0f / 3.0f;
    struct tensor *t64 = tensor_to_dtype(tensor_from_data(DTYPE_F32, TENSOR_SHAPE(1), &third), DTYPE_F64);
    EXPECT(tensor_get_flat(t64, 0) == (double)third);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* i64 -> i64 never goes through double */
START_TEST(test_i64_exact)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    const int64_t big[6] = {((int64_t)1 << 53) + 1, ((int64_t)1 << 62) + 3, INT64_MIN, INT64_MAX, -3, -((int64_t)1 << 60) - 7};
    struct tensor *t = tensor_from_data(DTYPE_I64, TENSOR_SHAPE(2, 3), big);
    const struct tensor *copies[3] = {tensor_to_dtype(t, DTYPE_I64), tensor_clone(t), tensor_contiguous(t)};
    for (int k = 0; k < 3; k++) {
        ck_assert_ptr_nonnull(copies[k]);
        ck_assert(memcmp(tensor_data_ptr(copies[k]), big, sizeof big) == 0);
    }
    /* strided: the transpose, made contiguous */
    struct tensor *tt = tensor_to_dtype(tensor_transpose(t, 0, 1), DTYPE_I64);
    const int64_t *p = tensor_data_ptr(tt);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 2; j++) ck_assert(p[i * 2 + j] == big[j * 3 + i]);
    /* into a strided destination */
    struct tensor *dst = tensor_transpose(tensor_zeros(DTYPE_I64, TENSOR_SHAPE(3, 2), DEVICE_CPU), 0, 1);
    ck_assert_int_eq(tensor_copy_(dst, t), STATUS_OK);
    const int64_t *pd = tensor_data_ptr(dst);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 2; j++) ck_assert(pd[i * 2 + j] == big[j * 3 + i]);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- views */

/* A view maps its index to its source's index; chained to the base, which holds its own
 * row-major flat index as value, so the expected value of every element is computed
 * independently of strides and offsets. */
enum vkind { V_PERM, V_NARROW, V_SELECT, V_UNSQUEEZE, V_EXPAND, V_RESHAPE };
struct vmap {
    enum vkind kind;
    const struct tensor *view, *src;
    int perm[TENSOR_MAX_DIMS];
    int dim;
    int64_t start;
    const struct vmap *next;   /* src's own map, NULL when src is the base */
};

static void vmap_apply(const struct vmap *m, const int64_t *vi, int64_t *bi)
{
    const struct tensor *v = m->view, *s = m->src;
    int64_t si[TENSOR_MAX_DIMS] = {0}, flat = 0;
    switch (m->kind) {
    case V_PERM:
        for (int d = 0; d < v->ndim; d++) si[m->perm[d]] = vi[d];
        break;
    case V_NARROW:
        for (int d = 0; d < v->ndim; d++) si[d] = vi[d] + (d == m->dim ? m->start : 0);
        break;
    case V_SELECT:   /* also squeeze, with start 0 */
        for (int d = 0; d < s->ndim; d++) si[d] = d < m->dim ? vi[d] : d == m->dim ? m->start : vi[d - 1];
        break;
    case V_UNSQUEEZE:
        for (int d = 0; d < s->ndim; d++) si[d] = d < m->dim ? vi[d] : vi[d + 1];
        break;
    case V_EXPAND: {
        int lead = v->ndim - s->ndim;
        for (int d = 0; d < s->ndim; d++) si[d] = s->shape[d] == 1 ? 0 : vi[d + lead];
        break;
    }
    case V_RESHAPE:
        for (int d = 0; d < v->ndim; d++) flat = flat * v->shape[d] + vi[d];
        for (int d = s->ndim - 1; d >= 0; d--) { si[d] = flat % s->shape[d]; flat /= s->shape[d]; }
        break;
    }
    if (m->next) vmap_apply(m->next, si, bi);
    else memcpy(bi, si, sizeof si);
}

static void check_view(const char *what, const struct tensor *v, const struct vmap *m, const struct tensor *base)
{
    EXPECT_MSG(v != NULL, "%s: %s", what, tensor_error());
    int64_t n = tensor_numel(v);
    for (int64_t i = 0; i < n; i++) {
        int64_t vi[TENSOR_MAX_DIMS], bi[TENSOR_MAX_DIMS], r = i, want = 0;
        for (int d = v->ndim - 1; d >= 0; d--) { vi[d] = r % v->shape[d]; r /= v->shape[d]; }
        vmap_apply(m, vi, bi);
        for (int d = 0; d < base->ndim; d++) {
            EXPECT(bi[d] >= 0 && bi[d] < base->shape[d]);
            want = want * base->shape[d] + bi[d];
        }
        EXPECT_MSG(tensor_get_flat(v, i) == (double)want, "%s: element %lld is %g, expected %lld", what, (long long)i,
                      tensor_get_flat(v, i), (long long)want);
        EXPECT(tensor_get(v, vi) == (double)want);
    }
}

static struct tensor *arange(int ndim, const int64_t *shape)
{
    struct tensor *t = tensor_empty(DTYPE_F64, ndim, shape, DEVICE_CPU);
    for (int64_t i = 0; i < tensor_numel(t); i++) tensor_set_flat(t, i, (double)i);
    return t;
}

static void check_shape(const struct tensor *t, int ndim, const int64_t *shape)
{
    ck_assert_int_eq(t->ndim, ndim);
    for (int d = 0; d < ndim; d++) ck_assert_int_eq(t->shape[d], shape[d]);
}

START_TEST(test_views)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *b = arange(TENSOR_SHAPE(2, 3, 4, 5));
    ck_assert(tensor_is_contiguous(b));

    /* permute / transpose */
    struct vmap mp = {.kind = V_PERM, .src = b, .perm = {2, 0, 3, 1}};
    struct tensor *p = tensor_permute(b, mp.perm);
    mp.view = p;
    check_shape(p, TENSOR_SHAPE(4, 2, 5, 3));
    ck_assert(p->storage == b->storage && !tensor_is_contiguous(p));
    check_view("permute", p, &mp, b);
    struct vmap mt = {.kind = V_PERM, .src = b, .perm = {0, 3, 2, 1}};
    struct tensor *tr = tensor_transpose(b, 1, -1);
    mt.view = tr;
    check_shape(tr, TENSOR_SHAPE(2, 5, 4, 3));
    check_view("transpose", tr, &mt, b);

    /* narrow on a permuted view, then select on that */
    struct tensor *nw = tensor_narrow(p, 2, 1, 3);
    struct vmap mn = {.kind = V_NARROW, .view = nw, .src = p, .dim = 2, .start = 1, .next = &mp};
    check_shape(nw, TENSOR_SHAPE(4, 2, 3, 3));
    check_view("narrow(permute)", nw, &mn, b);
    struct tensor *sel = tensor_select(nw, 1, -1);
    struct vmap ms = {.kind = V_SELECT, .view = sel, .src = nw, .dim = 1, .start = 1, .next = &mn};
    check_shape(sel, TENSOR_SHAPE(4, 3, 3));
    ck_assert(sel->storage == b->storage);
    check_view("select(narrow(permute))", sel, &ms, b);
    struct tensor *nb = tensor_narrow(b, -1, 4, 1);
    struct vmap mnb = {.kind = V_NARROW, .view = nb, .src = b, .dim = 3, .start = 4};
    check_view("narrow(last)", nb, &mnb, b);

    /* expand: size-1 and new leading dims get stride 0 */
    struct tensor *e = tensor_expand(nb, TENSOR_SHAPE(2, -1, 3, 4, 6));
    struct vmap me = {.kind = V_EXPAND, .view = e, .src = nb, .next = &mnb};
    check_shape(e, TENSOR_SHAPE(2, 2, 3, 4, 6));
    ck_assert(e->stride[0] == 0 && e->stride[4] == 0 && e->stride[1] == nb->stride[0] && e->storage == b->storage);
    ck_assert(!tensor_is_contiguous(e));
    check_view("expand", e, &me, b);

    /* unsqueeze / squeeze */
    struct tensor *u = tensor_unsqueeze(sel, 1);
    struct vmap mu = {.kind = V_UNSQUEEZE, .view = u, .src = sel, .dim = 1, .next = &ms};
    check_shape(u, TENSOR_SHAPE(4, 1, 3, 3));
    check_view("unsqueeze", u, &mu, b);
    struct tensor *ul = tensor_unsqueeze(b, -1);
    struct vmap mul = {.kind = V_UNSQUEEZE, .view = ul, .src = b, .dim = 4};
    check_shape(ul, TENSOR_SHAPE(2, 3, 4, 5, 1));
    ck_assert(tensor_is_contiguous(ul));
    check_view("unsqueeze(-1)", ul, &mul, b);
    struct tensor *sq = tensor_squeeze(u, -3);
    struct vmap msq = {.kind = V_SELECT, .view = sq, .src = u, .dim = 1, .start = 0, .next = &mu};
    check_shape(sq, TENSOR_SHAPE(4, 3, 3));
    check_view("squeeze", sq, &msq, b);

    /* reshape: a view where strides allow, with -1 inference */
    struct tensor *r1 = tensor_reshape(b, TENSOR_SHAPE(6, -1));
    struct vmap mr1 = {.kind = V_RESHAPE, .view = r1, .src = b};
    check_shape(r1, TENSOR_SHAPE(6, 20));
    ck_assert(r1->storage == b->storage && r1->stride[0] == 20 && r1->stride[1] == 1);
    check_view("reshape view", r1, &mr1, b);
    struct tensor *r2 = tensor_reshape(tr, TENSOR_SHAPE(2, -1, 2, 2, 3));   /* [2,5,4,3]: split dim 2 */
    struct vmap mr2 = {.kind = V_RESHAPE, .view = r2, .src = tr, .next = &mt};
    check_shape(r2, TENSOR_SHAPE(2, 5, 2, 2, 3));
    ck_assert(r2->storage == b->storage && r2->stride[2] == 10 && r2->stride[4] == 20);
    check_view("reshape of transpose (view, split)", r2, &mr2, b);
    struct tensor *t23 = tensor_transpose(b, 2, 3);   /* [2,3,5,4]: dims 0,1 still merge */
    struct vmap mt23 = {.kind = V_PERM, .view = t23, .src = b, .perm = {0, 1, 3, 2}};
    struct tensor *r2b = tensor_reshape(t23, TENSOR_SHAPE(-1, 5, 4));
    struct vmap mr2b = {.kind = V_RESHAPE, .view = r2b, .src = t23, .next = &mt23};
    check_shape(r2b, TENSOR_SHAPE(6, 5, 4));
    ck_assert(r2b->storage == b->storage && r2b->stride[0] == 20);
    check_view("reshape of transpose (view, merge)", r2b, &mr2b, b);
    ck_assert(tensor_reshape(t23, TENSOR_SHAPE(6, 20))->storage != b->storage);
    struct tensor *n3 = tensor_narrow(b, 3, 0, 2);   /* [2,3,4,2] strides [60,20,5,1] */
    struct vmap mn3 = {.kind = V_NARROW, .view = n3, .src = b, .dim = 3};
    struct tensor *r3 = tensor_reshape(n3, TENSOR_SHAPE(24, 2));
    struct vmap mr3 = {.kind = V_RESHAPE, .view = r3, .src = n3, .next = &mn3};
    ck_assert(r3->storage == b->storage && r3->stride[0] == 5);
    check_view("reshape of narrow (view)", r3, &mr3, b);
    ck_assert_ptr_nonnull(tensor_view(n3, TENSOR_SHAPE(2, 12, 1, 2)));
    /* ... and a copy where they do not */
    struct tensor *r4 = tensor_reshape(n3, TENSOR_SHAPE(-1));
    struct vmap mr4 = {.kind = V_RESHAPE, .view = r4, .src = n3, .next = &mn3};
    ck_assert(r4->storage != b->storage && tensor_is_contiguous(r4));
    check_view("reshape of narrow (copy)", r4, &mr4, b);
    struct tensor *r5 = tensor_reshape(p, TENSOR_SHAPE(8, 15));
    struct vmap mr5 = {.kind = V_RESHAPE, .view = r5, .src = p, .next = &mp};
    ck_assert(r5->storage != b->storage);
    check_view("reshape of permute (copy)", r5, &mr5, b);
    tensor_clear_error();
    ck_assert_ptr_null(tensor_view(p, TENSOR_SHAPE(8, 15)));
    ck_error_has(STATUS_SHAPE, "use reshape");
    ck_assert_ptr_null(tensor_view(e, TENSOR_SHAPE(-1)));

    /* scalars and empty tensors */
    struct tensor *sc = tensor_scalar(DTYPE_F64, 4.5);
    struct tensor *sc11 = tensor_view(sc, TENSOR_SHAPE(1, 1));
    ck_assert_msg(sc11 != NULL, "view of a scalar as [1,1]: %s", tensor_error());
    ck_assert(sc11->storage == sc->storage && tensor_get_flat(sc11, 0) == 4.5);
    struct tensor *sc0 = tensor_reshape(sc11, 0, NULL);
    ck_assert(sc0->ndim == 0 && sc0->storage == sc->storage && tensor_get_flat(sc0, 0) == 4.5);
    struct tensor *z = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(0, 3), DEVICE_CPU);
    check_shape(tensor_reshape(z, TENSOR_SHAPE(3, -1)), TENSOR_SHAPE(3, 0));
    check_shape(tensor_reshape(z, TENSOR_SHAPE(-1, 3)), TENSOR_SHAPE(0, 3));

    /* contiguous: the same tensor when already contiguous, a copy otherwise */
    struct tensor *c1 = tensor_contiguous(b);
    ck_assert_ptr_eq(c1, b);
    ck_assert_int_eq(b->refcount, 2);
    ck_assert(tensor_is_contiguous(nb = tensor_narrow(b, 0, 1, 1)) && tensor_contiguous(nb)->storage == b->storage);
    struct tensor *c2 = tensor_contiguous(p);
    ck_assert(c2 != p && c2->storage != b->storage && tensor_is_contiguous(c2));
    struct vmap mc2 = {.kind = V_RESHAPE, .view = c2, .src = p, .next = &mp};
    check_view("contiguous(permute)", c2, &mc2, b);
    struct tensor *c3 = tensor_contiguous(e);
    struct vmap mc3 = {.kind = V_RESHAPE, .view = c3, .src = e, .next = &me};
    check_view("contiguous(expand)", c3, &mc3, b);
    /* alias: a new header on the same view */
    struct tensor *al = tensor_alias(sel);
    ck_assert(al != sel && al->storage == sel->storage && al->offset == sel->offset);
    check_view("alias", al, &ms, b);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_view_errors)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *b = arange(TENSOR_SHAPE(2, 3, 4, 5));
    tensor_clear_error();
    ck_assert_ptr_null(tensor_reshape(b, TENSOR_SHAPE(7, -1)));
    ck_error_has(STATUS_SHAPE, "[2,3,4,5]");
    ck_assert(contains(tensor_error(), "[7,-1]"));
    ck_assert_ptr_null(tensor_reshape(b, TENSOR_SHAPE(-1, -1)));
    ck_error_has(STATUS_SHAPE, "reshape");
    ck_assert_ptr_null(tensor_reshape(b, TENSOR_SHAPE(5, 5)));
    ck_error_has(STATUS_SHAPE, "[5,5]");
    ck_assert_ptr_null(tensor_reshape(b, TENSOR_SHAPE(-2, -60)));
    ck_assert_int_eq(tensor_status(), STATUS_SHAPE);
    ck_assert_ptr_null(tensor_reshape(tensor_zeros(DTYPE_F32, TENSOR_SHAPE(0, 3), DEVICE_CPU), TENSOR_SHAPE(-1, 0)));
    ck_assert_int_eq(tensor_status(), STATUS_SHAPE);
    ck_assert_ptr_null(tensor_reshape(b, 9, (int64_t[9]){1, 1, 1, 1, 1, 2, 3, 4, 5}));
    ck_assert_int_eq(tensor_status(), STATUS_SHAPE);
    /* a successful reshape with -1 leaves no error behind */
    tensor_clear_error();
    ck_assert_ptr_nonnull(tensor_reshape(b, TENSOR_SHAPE(-1, 5)));
    ck_assert_ptr_nonnull(tensor_view(b, TENSOR_SHAPE(6, -1)));
    ck_assert_int_eq(tensor_status(), STATUS_OK);

    ck_assert_ptr_null(tensor_permute(b, (int[]){0, 1, 1, 2}));
    ck_error_has(STATUS_VALUE, "permute");
    ck_assert_ptr_null(tensor_transpose(b, 0, 4));
    ck_error_has(STATUS_SHAPE, "[2,3,4,5]");
    ck_assert_ptr_null(tensor_narrow(b, 1, 2, 2));
    ck_error_has(STATUS_SHAPE, "[2,3,4,5]");
    ck_assert_ptr_null(tensor_narrow(b, 1, -1, 1));
    ck_assert_ptr_null(tensor_select(b, 2, 4));
    ck_error_has(STATUS_SHAPE, "[2,3,4,5]");
    ck_assert_ptr_null(tensor_select(b, 2, -5));
    ck_assert_ptr_null(tensor_squeeze(b, 1));
    ck_error_has(STATUS_SHAPE, "[2,3,4,5]");
    ck_assert_ptr_null(tensor_unsqueeze(b, 6));
    ck_assert_int_eq(tensor_status(), STATUS_SHAPE);
    ck_assert_ptr_null(tensor_expand(b, TENSOR_SHAPE(2, 3, 4)));
    ck_error_has(STATUS_SHAPE, "expand");
    ck_assert_ptr_null(tensor_expand(b, TENSOR_SHAPE(2, 3, 4, 6)));
    ck_error_has(STATUS_SHAPE, "[2,3,4,5]");
    ck_assert_ptr_null(tensor_expand(tensor_narrow(b, 3, 0, 1), TENSOR_SHAPE(2, 3, 4, -3)));
    ck_assert_int_eq(tensor_status(), STATUS_SHAPE);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* a view keeps the storage alive after its base is gone */
START_TEST(test_view_keeps_storage)
{
    LEAK_CHECK_BEGIN();
    int64_t s0 = storage_live_count(), t0 = tensor_live_count();
    struct tensor *b = tensor_keep(arange(TENSOR_SHAPE(3, 4)));   /* no scope: the caller owns it */
    tensor_scope_begin();
    struct tensor *v = tensor_keep(tensor_transpose(tensor_narrow(b, 1, 1, 2), 0, 1));   /* [2,3] */
    tensor_scope_end();
    ck_assert_int_eq(tensor_live_count(), t0 + 2);
    tensor_free(b);
    ck_assert_int_eq(tensor_live_count(), t0 + 1);
    ck_assert_int_eq(storage_live_count(), s0 + 1);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++) ck_assert(tensor_get(v, (int64_t[]){i, j}) == (double)(j * 4 + 1 + i));
    tensor_scope_begin();
    struct tensor *c = tensor_clone(v);
    ck_assert(tensor_get_flat(c, 5) == 10.0);
    tensor_scope_end();
    tensor_free(v);
    ck_assert_int_eq(storage_live_count(), s0);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- scopes, references */

START_TEST(test_scopes)
{
    LEAK_CHECK_BEGIN();
    const int64_t t0 = tensor_live_count(), s0 = storage_live_count();
    /* no scope open: the caller owns what it gets */
    struct tensor *a = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(4), DEVICE_CPU);
    ck_assert_int_eq(tensor_live_count(), t0 + 1);
    ck_assert_ptr_eq(tensor_ref(a), a);
    ck_assert_int_eq(a->refcount, 2);
    tensor_free(a);
    ck_assert_int_eq(tensor_live_count(), t0 + 1);
    tensor_free(a);
    ck_assert_int_eq(tensor_live_count(), t0);
    ck_assert_int_eq(storage_live_count(), s0);
    tensor_free(NULL);

    /* a scope frees everything it owns, views included */
    tensor_scope_begin();
    struct tensor *x = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(4), DEVICE_CPU);
    tensor_transpose(tensor_unsqueeze(ag_add(x, x), 0), 0, 1);
    ck_assert_int_eq(tensor_live_count(), t0 + 4);
    ck_assert_int_eq(storage_live_count(), s0 + 2);
    tensor_scope_end();
    ck_assert_int_eq(tensor_live_count(), t0);
    ck_assert_int_eq(storage_live_count(), s0);

    /* tensor_keep takes one tensor out of the scope */
    tensor_scope_begin();
    struct tensor *k = tensor_keep(tensor_zeros(DTYPE_F32, TENSOR_SHAPE(4), DEVICE_CPU));
    tensor_zeros(DTYPE_F32, TENSOR_SHAPE(4), DEVICE_CPU);
    tensor_scope_end();
    ck_assert_int_eq(tensor_live_count(), t0 + 1);
    ck_assert_int_eq(k->refcount, 1);
    tensor_free(k);

    /* keeping a tensor the inner scope does not own gives the caller a reference of its own */
    tensor_scope_begin();
    struct tensor *outer = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(4), DEVICE_CPU);
    tensor_scope_begin();
    struct tensor *k2 = tensor_keep(outer);
    ck_assert_ptr_eq(k2, outer);
    ck_assert_int_eq(outer->refcount, 2);
    tensor_scope_end();
    ck_assert_int_eq(outer->refcount, 2);
    tensor_free(k2);
    ck_assert_int_eq(outer->refcount, 1);
    tensor_scope_end();
    ck_assert_int_eq(tensor_live_count(), t0);

    /* tensor_scope_return hands the result to the enclosing scope; temporaries go */
    tensor_scope_begin();
    tensor_scope_begin();
    struct tensor *tmp = tensor_full(DTYPE_F64, TENSOR_SHAPE(3), 2.0, DEVICE_CPU);
    struct tensor *r = tensor_scope_return(ag_mul(tmp, tmp));
    ck_assert_int_eq(tensor_live_count(), t0 + 1);
    ck_assert_int_eq(r->refcount, 1);
    ck_assert(tensor_get_flat(r, 2) == 4.0);
    tensor_scope_end();
    ck_assert_int_eq(tensor_live_count(), t0);

    /* ... or to the caller when no scope encloses it */
    tensor_scope_begin();
    struct tensor *r2 = tensor_scope_return(tensor_zeros(DTYPE_F32, TENSOR_SHAPE(2), DEVICE_CPU));
    ck_assert_int_eq(tensor_live_count(), t0 + 1);
    tensor_free(r2);

    /* returning NULL (an error) still closes the scope */
    tensor_scope_begin();
    tensor_scope_begin();
    tensor_zeros(DTYPE_F32, TENSOR_SHAPE(2), DEVICE_CPU);
    ck_assert_ptr_null(tensor_scope_return(NULL));
    ck_assert_int_eq(tensor_live_count(), t0);
    struct tensor *still = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(2), DEVICE_CPU);   /* owned by the outer scope */
    ck_assert_int_eq(still->refcount, 1);
    tensor_scope_end();
    ck_assert_int_eq(tensor_live_count(), t0);

    /* nested three deep, each level freeing only its own */
    tensor_scope_begin();
    tensor_zeros(DTYPE_F32, TENSOR_SHAPE(2), DEVICE_CPU);
    tensor_scope_begin();
    tensor_zeros(DTYPE_F32, TENSOR_SHAPE(2), DEVICE_CPU);
    tensor_zeros(DTYPE_F32, TENSOR_SHAPE(2), DEVICE_CPU);
    tensor_scope_begin();
    struct tensor *deep = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(2), DEVICE_CPU);
    ck_assert_int_eq(tensor_live_count(), t0 + 4);
    tensor_scope_return(tensor_scope_return(deep));   /* up two levels */
    ck_assert_int_eq(tensor_live_count(), t0 + 2);
    ck_assert_int_eq(deep->refcount, 1);
    tensor_scope_end();
    ck_assert_int_eq(tensor_live_count(), t0);

    /* tensor_autorelease hands a caller-owned reference to the scope */
    struct tensor *m = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(2), DEVICE_CPU);
    tensor_scope_begin();
    ck_assert_ptr_eq(tensor_autorelease(tensor_ref(m)), m);
    ck_assert_int_eq(m->refcount, 2);
    tensor_scope_end();
    ck_assert_int_eq(m->refcount, 1);
    tensor_free(m);

    /* many tensors in one scope: its list grows */
    tensor_scope_begin();
    for (int i = 0; i < 1000; i++) tensor_empty(DTYPE_F32, TENSOR_SHAPE(1), DEVICE_CPU);
    ck_assert_int_eq(tensor_live_count(), t0 + 1000);
    tensor_scope_end();
    ck_assert_int_eq(tensor_live_count(), t0);
    ck_assert_int_eq(storage_live_count(), s0);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- caching allocator */

START_TEST(test_alloc_stats)
{
    LEAK_CHECK_BEGIN();
    struct mem_stats s0, s1;
    mem_empty_cache(DEVICE_CPU);
    mem_get_stats(DEVICE_CPU, &s0);
    ck_assert_int_eq(s0.cached_bytes, 0);
    ck_assert_int_eq(s0.reserved_bytes, s0.live_bytes);

    /* size classes: 256-byte steps up to 4 KiB, then quarters of a power of two */
    const size_t req[][2] = {{0, 256},    {1, 256},     {256, 256},         {257, 512},
                             {4096, 4096}, {4097, 5120}, {8192, 8192},       {8193, 10240},
                             {1 << 20, 1 << 20},         {(1 << 20) + 1, (1 << 20) + 4096}};
    for (size_t i = 0; i < sizeof req / sizeof *req; i++) {
        size_t r = 0;
        void *p = mem_alloc(DEVICE_CPU, req[i][0], &r);
        ck_assert_ptr_nonnull(p);
        ck_assert_msg(r == req[i][1], "%zu bytes rounded to %zu, expected %zu", req[i][0], r, req[i][1]);
        memset(p, 0xab, req[i][0]);   /* the bytes asked for are usable (ASan poisons the rest) */
        mem_free(DEVICE_CPU, p, r);
    }
    mem_empty_cache(DEVICE_CPU);

    /* live, peak, cached, and a cache hit on reuse of a freed size */
    mem_reset_peak(DEVICE_CPU);
    mem_get_stats(DEVICE_CPU, &s0);
    ck_assert_int_eq(s0.peak_bytes, s0.live_bytes);
    size_t r = 0;
    void *p = mem_alloc(DEVICE_CPU, 5000, &r);
    ck_assert_uint_eq(r, 5120);
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.live_bytes, s0.live_bytes + 5120);
    ck_assert_int_eq(s1.reserved_bytes, s0.reserved_bytes + 5120);
    ck_assert_int_eq(s1.peak_bytes, s1.live_bytes);
    ck_assert_int_eq(s1.n_allocs, s0.n_allocs + 1);
    ck_assert_int_eq(s1.n_device_allocs, s0.n_device_allocs + 1);
    ck_assert_int_eq(s1.n_cache_hits, s0.n_cache_hits);
    mem_free(DEVICE_CPU, p, r);
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.live_bytes, s0.live_bytes);
    ck_assert_int_eq(s1.cached_bytes, 5120);
    ck_assert_int_eq(s1.reserved_bytes, s0.reserved_bytes + 5120);
    ck_assert_int_eq(s1.peak_bytes, s0.live_bytes + 5120);
    size_t r2 = 0;
    void *q = mem_alloc(DEVICE_CPU, 5100, &r2);   /* same size class */
    ck_assert_ptr_eq(q, p);
    ck_assert_uint_eq(r2, 5120);
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.n_cache_hits, s0.n_cache_hits + 1);
    ck_assert_int_eq(s1.n_device_allocs, s0.n_device_allocs + 1);
    ck_assert_int_eq(s1.cached_bytes, 0);
    mem_free(DEVICE_CPU, q, r2);

    /* through tensors: freeing and re-creating the same shape hits the cache */
    tensor_scope_begin();
    struct tensor *t = tensor_keep(tensor_empty(DTYPE_F32, TENSOR_SHAPE(250), DEVICE_CPU));
    ck_assert_uint_eq(t->storage->bytes, 1024);
    mem_get_stats(DEVICE_CPU, &s0);
    tensor_free(t);
    for (int i = 0; i < 10; i++) tensor_free(tensor_keep(tensor_empty(DTYPE_F32, TENSOR_SHAPE(250), DEVICE_CPU)));
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.n_cache_hits, s0.n_cache_hits + 10);
    ck_assert_int_eq(s1.n_device_allocs, s0.n_device_allocs);
    ck_assert_int_eq(s1.live_bytes, s0.live_bytes - 1024);

    /* peak follows the high-water mark until reset */
    mem_reset_peak(DEVICE_CPU);
    mem_get_stats(DEVICE_CPU, &s0);
    struct tensor *big = tensor_keep(tensor_empty(DTYPE_F64, TENSOR_SHAPE(1 << 17), DEVICE_CPU));   /* 1 MiB */
    tensor_free(big);
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.live_bytes, s0.live_bytes);
    ck_assert_int_eq(s1.peak_bytes, s0.live_bytes + (1 << 20));
    mem_reset_peak(DEVICE_CPU);
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.peak_bytes, s1.live_bytes);

    /* mem_empty_cache gives every cached block back */
    ck_assert_int_gt(s1.cached_bytes, 0);
    mem_empty_cache(DEVICE_CPU);
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.cached_bytes, 0);
    ck_assert_int_eq(s1.reserved_bytes, s1.live_bytes);

    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    mem_print_stats(f, DEVICE_CPU);
    fclose(f);
    ck_assert(contains(buf, "memory cpu: live"));
    free(buf);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* blocks over 1 MiB are cut out of shared segments: best fit, split, merged when freed */
START_TEST(test_alloc_large)
{
    LEAK_CHECK_BEGIN();
    const size_t MiB = 1 << 20;
    struct mem_stats s0, s1;
    mem_empty_cache(DEVICE_CPU);
    mem_get_stats(DEVICE_CPU, &s0);
    size_t ra = 0, rb = 0, rc = 0, rd = 0;
    char *a = mem_alloc(DEVICE_CPU, 3 * MiB, &ra);   /* a new 20 MiB segment: [a 3][free 17] */
    ck_assert_ptr_nonnull(a);
    ck_assert_uint_eq(ra, 3 * MiB);
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.n_device_allocs, s0.n_device_allocs + 1);
    ck_assert_int_eq(s1.reserved_bytes, s0.reserved_bytes + 20 * MiB);
    ck_assert_int_eq(s1.live_bytes, s0.live_bytes + 3 * MiB);
    ck_assert_int_eq(s1.cached_bytes, 17 * MiB);
    char *b = mem_alloc(DEVICE_CPU, 5 * MiB + 1, &rb);   /* rounded to 4 KiB, from the same segment */
    ck_assert_uint_eq(rb, 5 * MiB + 4096);
    ck_assert_ptr_eq(b, a + 3 * MiB);
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.n_device_allocs, s0.n_device_allocs + 1);
    ck_assert_int_eq(s1.n_cache_hits, s0.n_cache_hits + 1);
    memset(a, 1, 3 * MiB), memset(b, 2, 5 * MiB + 1);

    /* a's 3 MiB is the best fit for 2 MiB; the 1 MiB left is no large block, so it stays with it */
    mem_free(DEVICE_CPU, a, ra);
    char *c = mem_alloc(DEVICE_CPU, 2 * MiB, &rc);
    ck_assert_ptr_eq(c, a);
    ck_assert_uint_eq(rc, 3 * MiB);
    ck_assert_uint_eq((unsigned char)b[0], 2);
    /* over 10 MiB: a segment of its own, rounded to 2 MiB; the 1 MiB left stays with it */
    char *d = mem_alloc(DEVICE_CPU, 13 * MiB, &rd);   /* (the first segment's 12 MiB - 4 KiB left is too small) */
    ck_assert_uint_eq(rd, 14 * MiB);
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.n_device_allocs, s0.n_device_allocs + 2);
    ck_assert_int_eq(s1.reserved_bytes, s0.reserved_bytes + 34 * MiB);
    ck_assert_int_eq(s1.live_bytes, s0.live_bytes + (int64_t)(rb + rc + rd));
    ck_assert_int_eq(s1.reserved_bytes, s1.live_bytes + s1.cached_bytes);

    /* freed in any order, the pieces merge into whole segments, which empty_cache gives back */
    mem_free(DEVICE_CPU, b, rb);
    mem_empty_cache(DEVICE_CPU);   /* nothing whole is free yet: c and d are live */
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.reserved_bytes, s0.reserved_bytes + 34 * MiB);
    mem_free(DEVICE_CPU, c, rc);
    mem_free(DEVICE_CPU, d, rd);
    char *e = mem_alloc(DEVICE_CPU, 19 * MiB, &rd);   /* only the merged first segment holds it */
    ck_assert_ptr_eq(e, a);
    ck_assert_uint_eq(rd, 20 * MiB);
    mem_free(DEVICE_CPU, e, rd);
    mem_empty_cache(DEVICE_CPU);
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.reserved_bytes, s0.reserved_bytes);
    ck_assert_int_eq(s1.live_bytes, s0.live_bytes);
    ck_assert_int_eq(s1.cached_bytes, 0);

    /* best fit within a bin: of two free blocks of (3, 3.5] MiB, the smaller, though freed first */
    const size_t sz[4] = {13 * MiB / 4, 3 * MiB / 2, 7 * MiB / 2, 3 * MiB / 2};
    char *q[4];
    size_t rq[4];
    for (int i = 0; i < 4; i++) q[i] = mem_alloc(DEVICE_CPU, sz[i], &rq[i]);
    char *const q0 = q[0];
    mem_free(DEVICE_CPU, q[0], rq[0]);
    mem_free(DEVICE_CPU, q[2], rq[2]);
    q[0] = mem_alloc(DEVICE_CPU, 31 * MiB / 10, &rq[0]);
    ck_assert_ptr_eq(q[0], q0);
    ck_assert_uint_eq(rq[0], sz[0]);
    for (int i = 0; i < 4; i++)
        if (i != 2) mem_free(DEVICE_CPU, q[i], rq[i]);
    mem_empty_cache(DEVICE_CPU);

    /* under a limit a segment is no larger than the request */
    mem_set_limit(DEVICE_CPU, s0.reserved_bytes + 8 * MiB);
    char *f = mem_alloc(DEVICE_CPU, 3 * MiB, &ra);
    ck_assert_ptr_nonnull(f);
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.reserved_bytes, s0.reserved_bytes + 3 * MiB);
    mem_free(DEVICE_CPU, f, ra);
    mem_set_limit(DEVICE_CPU, s0.limit_bytes);
    mem_empty_cache(DEVICE_CPU);
    LEAK_CHECK_END();
}
END_TEST

/* random requests and frees, large and small: no two live blocks overlap, each keeps what was
 * written into it, and live + cached = reserved after every step */
START_TEST(test_alloc_random)
{
    LEAK_CHECK_BEGIN();
    enum { SLOTS = 48, STEPS = 3000 };
    struct { char *p; size_t r, bytes; unsigned char tag; } slot[SLOTS] = {{0}};
    struct mem_stats s0, s1;
    mem_empty_cache(DEVICE_CPU);
    mem_get_stats(DEVICE_CPU, &s0);
    uint64_t rng = 12345;
    int64_t live = 0;
    for (int step = 0; step < STEPS; step++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        const int i = (int)((rng >> 33) % SLOTS);
        if (slot[i].p) {
            const unsigned char t = slot[i].tag;
            ck_assert_msg((unsigned char)slot[i].p[0] == t && (unsigned char)slot[i].p[slot[i].bytes - 1] == t &&
                              (unsigned char)slot[i].p[slot[i].bytes / 2] == t,
                          "step %d: block %d was overwritten", step, i);
            mem_free(DEVICE_CPU, slot[i].p, slot[i].r);
            live -= (int64_t)slot[i].r;
            slot[i].p = NULL;
        } else {
            const uint64_t u = rng >> 40;
            const size_t bytes = u % 4 == 0 ? 1 + (size_t)(u >> 2) % 70000           /* small */
                                            : (1 << 20) + (size_t)(u >> 2) % (24u << 20);   /* up to 25 MiB */
            char *p = mem_alloc(DEVICE_CPU, bytes, &slot[i].r);
            ck_assert_ptr_nonnull(p);
            ck_assert_uint_ge(slot[i].r, bytes);
            ck_assert_uint_le(slot[i].r, bytes <= (1 << 20) ? bytes + bytes / 4 + 256 : bytes + (2 << 20));
            for (int j = 0; j < SLOTS; j++)
                ck_assert_msg(!slot[j].p || p + slot[i].r <= slot[j].p || slot[j].p + slot[j].r <= p,
                              "step %d: block %d overlaps block %d", step, i, j);
            slot[i].p = p, slot[i].bytes = bytes, slot[i].tag = (unsigned char)(step * 7 + 1);
            p[0] = p[bytes / 2] = p[bytes - 1] = (char)slot[i].tag;
            live += (int64_t)slot[i].r;
        }
        mem_get_stats(DEVICE_CPU, &s1);
        ck_assert_int_eq(s1.live_bytes, s0.live_bytes + live);
        ck_assert_int_eq(s1.reserved_bytes, s1.live_bytes + s1.cached_bytes);
    }
    for (int i = 0; i < SLOTS; i++)
        if (slot[i].p) mem_free(DEVICE_CPU, slot[i].p, slot[i].r);
    mem_empty_cache(DEVICE_CPU);
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.reserved_bytes, s0.reserved_bytes);
    ck_assert_int_eq(s1.cached_bytes, 0);
    LEAK_CHECK_END();
}
END_TEST

/* shapes whose size overflows, or that no machine holds, fail with a message instead of wrapping */
START_TEST(test_alloc_too_large)
{
    LEAK_CHECK_BEGIN();
    tensor_clear_error();
    ck_assert_ptr_null(tensor_empty(DTYPE_F32, TENSOR_SHAPE((int64_t)1 << 40, (int64_t)1 << 40), DEVICE_CPU));
    ck_error_has(STATUS_OOM, "2^63 bytes");
    ck_assert_ptr_null(tensor_empty(DTYPE_F64, TENSOR_SHAPE((int64_t)1 << 61), DEVICE_CPU));   /* elements fit, bytes not */
    ck_error_has(STATUS_OOM, "2^63 bytes");
    ck_assert_ptr_null(tensor_empty(DTYPE_F32, TENSOR_SHAPE((int64_t)1 << 59), DEVICE_CPU));   /* 2 EiB */
    ck_error_has(STATUS_OOM, "out of cpu memory");
#if !defined(__SANITIZE_ADDRESS__)   /* ASan aborts on a request past its 1 TiB bound instead of returning NULL */
    ck_assert_ptr_null(tensor_empty(DTYPE_F32, TENSOR_SHAPE((int64_t)1 << 50), DEVICE_CPU));   /* 4 PiB: the system says no */
    ck_error_has(STATUS_OOM, "out of cpu memory");
#endif
    tensor_clear_error();
    LEAK_CHECK_END();
}
END_TEST

/* On the CPU, a request over 10 MiB that no free block holds first gives back the wholly free
 * segments (they are all smaller); a segment still partly used stays, and so does the cache
 * while a free block fits */
/* the device's memory and what it runs on, for run reports and --dry-run */
START_TEST(test_device_memory_describe)
{
    int64_t avail = -1, total = -1;
    ck_assert_msg(tensor_device_memory(DEVICE_CPU, &avail, &total) == STATUS_OK, "%s", tensor_error());
    ck_assert_msg(avail > 0 && total >= avail && total < ((int64_t)1 << 50), "available %lld of %lld", (long long)avail,
                  (long long)total);
    char d[512];
    ck_assert(strstr(tensor_backend_describe(DEVICE_CPU, d, sizeof d), " threads; ") && strstr(d, "OpenBLAS"));
    if (!backend_for(DEVICE_CUDA)) {   /* no GPU here: said so */
        ck_assert_str_eq(tensor_backend_describe(DEVICE_CUDA, d, sizeof d), "not available");
        ck_assert(tensor_device_memory(DEVICE_CUDA, &avail, &total) == STATUS_DEVICE);
    }
}
END_TEST

START_TEST(test_alloc_cpu_gives_back)
{
    LEAK_CHECK_BEGIN();
    const size_t MiB = 1 << 20;
    struct mem_stats s0, s1;
    mem_empty_cache(DEVICE_CPU);
    mem_get_stats(DEVICE_CPU, &s0);
    size_t r16 = 0, r24 = 0, r12 = 0, r3 = 0, r40 = 0;
    char *a = mem_alloc(DEVICE_CPU, 16 * MiB, &r16);   /* a segment of its own, 16 MiB */
    char *s = mem_alloc(DEVICE_CPU, 3 * MiB, &r3);     /* a shared 20 MiB segment, partly used */
    ck_assert(a && s);
    mem_free(DEVICE_CPU, a, r16);
    char *b = mem_alloc(DEVICE_CPU, 12 * MiB, &r12);   /* fits in the free 16 MiB: a cache hit, nothing given back */
    ck_assert_ptr_eq(b, a);
    mem_free(DEVICE_CPU, b, r12);
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.reserved_bytes, s0.reserved_bytes + 36 * MiB);
    char *c = mem_alloc(DEVICE_CPU, 24 * MiB, &r24);   /* fits nowhere: the free 16 MiB segment goes back first */
    ck_assert_ptr_nonnull(c);
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.reserved_bytes, s0.reserved_bytes + 44 * MiB);   /* 20 (shared, in use) + 24 */
    ck_assert_int_eq(s1.reserved_bytes, s1.live_bytes + s1.cached_bytes);
    mem_free(DEVICE_CPU, c, r24);
    char *d = mem_alloc(DEVICE_CPU, 40 * MiB, &r40);   /* again: the 24 MiB goes back, the shared one stays */
    ck_assert_ptr_nonnull(d);
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.reserved_bytes, s0.reserved_bytes + 60 * MiB);
    memset(d, 3, 40 * MiB);
    memset(s, 4, 3 * MiB);
    mem_free(DEVICE_CPU, d, r40);
    mem_free(DEVICE_CPU, s, r3);
    mem_empty_cache(DEVICE_CPU);
    mem_get_stats(DEVICE_CPU, &s1);
    ck_assert_int_eq(s1.reserved_bytes, s0.reserved_bytes);
    LEAK_CHECK_END();
}
END_TEST

/* the CPU backend puts blocks of 2 MiB and more on 2 MiB boundaries and marks them for
 * transparent huge pages (tensor/cpu/backend_cpu.c); /proc/self/smaps shows the mark as "hg" */
static bool smaps_vmflags_of(const void *p, char *flags, size_t n)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return false;
    char line[512];
    bool in = false, found = false;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = (uintptr_t)p >= lo && (uintptr_t)p < hi;
        } else if (in && !strncmp(line, "VmFlags:", 8)) {
            snprintf(flags, n, "%s", line + 8);
            found = true;
            break;
        }
    }
    fclose(f);
    return found;
}

START_TEST(test_alloc_hugepages)
{
    const size_t sizes[] = {(size_t)2 << 20, (size_t)20 << 20, ((size_t)6 << 20) + 4096};
    char thp[128] = "";
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (f) {
        if (!fgets(thp, sizeof thp, f)) thp[0] = 0;
        fclose(f);
    }
    const bool env_off = getenv("DRAFT_HUGEPAGES") && !strcmp(getenv("DRAFT_HUGEPAGES"), "0");
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        unsigned char *p = backend_cpu.raw_alloc(sizes[i]);
        ck_assert_ptr_nonnull(p);
        memset(p, 1, sizes[i]);   /* all of it usable */
        if (!env_off) ck_assert_msg((uintptr_t)p % ((size_t)2 << 20) == 0, "%zu bytes at %p: not on 2 MiB", sizes[i], (void *)p);
        char flags[512];
        if (env_off || !thp[0] || strstr(thp, "[never]")) {
            if (i == 0) printf("test_alloc_hugepages: the mark is not checked (%s)\n", env_off ? "DRAFT_HUGEPAGES=0" : "no THP here");
        } else if (smaps_vmflags_of(p, flags, sizeof flags)) {
            ck_assert_msg(strstr(flags, " hg"), "%zu bytes: VmFlags%s without hg", sizes[i], flags);
        }
        backend_cpu.raw_free(p);
    }
    void *q = backend_cpu.raw_alloc(1000);   /* small: 64-byte aligned, no mark needed */
    ck_assert_ptr_nonnull(q);
    ck_assert_uint_eq((uintptr_t)q % 64, 0);
    backend_cpu.raw_free(q);
}
END_TEST

START_TEST(test_alloc_limit)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct mem_stats s;
    mem_empty_cache(DEVICE_CPU);
    mem_get_stats(DEVICE_CPU, &s);
    const int64_t old_limit = s.limit_bytes, limit = s.reserved_bytes + (1 << 20);
    /* a cached block counts toward the limit until the allocator gives it back */
    tensor_free(tensor_keep(tensor_empty(DTYPE_F32, TENSOR_SHAPE(1 << 17), DEVICE_CPU)));   /* 512 KiB cached */
    mem_set_limit(DEVICE_CPU, limit);
    mem_get_stats(DEVICE_CPU, &s);
    ck_assert_int_eq(s.limit_bytes, limit);
    ck_assert_int_eq(s.cached_bytes, 1 << 19);

    tensor_clear_error();
    struct tensor *t = tensor_empty(DTYPE_F32, TENSOR_SHAPE(1 << 20), DEVICE_CPU);   /* 4 MiB */
    ck_assert_ptr_null(t);
    char want[32], lim[32];
    mem_format(4 << 20, want, sizeof want);
    mem_format(limit, lim, sizeof lim);
    ck_error_has(STATUS_OOM, "limit");
    ck_assert_msg(contains(tensor_error(), want), "message '%s' does not name the request %s", tensor_error(), want);
    ck_assert_msg(contains(tensor_error(), lim), "message '%s' does not name the limit %s", tensor_error(), lim);
    size_t r = 0;
    ck_assert_ptr_null(mem_alloc(DEVICE_CPU, 2 << 20, &r));
    ck_assert_int_eq(tensor_status(), STATUS_OOM);
    /* an op whose output does not fit fails cleanly too */
    struct tensor *small = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(1 << 16), DEVICE_CPU);   /* 256 KiB */
    ck_assert_ptr_nonnull(small);
    ck_assert_ptr_null(ag_mul(tensor_expand(tensor_unsqueeze(small, 0), TENSOR_SHAPE(16, -1)), small));
    ck_assert_int_eq(tensor_status(), STATUS_OOM);

    /* 768 KiB fits only once the 512 KiB cached block is released */
    struct tensor *fits = tensor_empty(DTYPE_F32, TENSOR_SHAPE(3 << 16), DEVICE_CPU);
    ck_assert_msg(fits != NULL, "%s", tensor_error());
    mem_get_stats(DEVICE_CPU, &s);
    ck_assert_int_eq(s.cached_bytes, 0);
    ck_assert_int_le(s.reserved_bytes, limit);

    mem_set_limit(DEVICE_CPU, old_limit);
    ck_assert_ptr_nonnull(tensor_empty(DTYPE_F32, TENSOR_SHAPE(1 << 20), DEVICE_CPU));
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_mem_parse_size)
{
    LEAK_CHECK_BEGIN();
    const struct { const char *s; int64_t want; } cases[] = {
        {"4096", 4096}, {"0", 0},          {"1K", 1024},       {"1k", 1024},     {"10KB", 10240}, {"512M", 512LL << 20},
        {"2G", 2LL << 30}, {"1.5G", 3LL << 29}, {"1GiB", 1LL << 30}, {"1gb", 1LL << 30}, {"1T", 1LL << 40}, {"0.5K", 512},
        {"", -1},       {"abc", -1},       {"12X", -1},        {"-1G", -1},      {"G", -1},       {"1.5.5", -1},
        {"1G ", -1},    {"inf", -1},       {"nan", -1},        {"1e30G", -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        ck_assert_msg(mem_parse_size(cases[i].s) == cases[i].want, "mem_parse_size(\"%s\") = %lld, expected %lld", cases[i].s,
                      (long long)mem_parse_size(cases[i].s), (long long)cases[i].want);
    ck_assert_int_eq(mem_parse_size(NULL), -1);
    char b[32];
    ck_assert_str_eq(mem_format(512, b, sizeof b), "512 B");
    ck_assert_str_eq(mem_format(1536, b, sizeof b), "1.50 KiB");
    ck_assert_str_eq(mem_format(3LL << 30, b, sizeof b), "3.00 GiB");
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- Philox */

START_TEST(test_philox_known_answers)
{
    LEAK_CHECK_BEGIN();
    /* Random123 kat_vectors for philox4x32_10 */
    const uint32_t ctr[3][4] = {{0, 0, 0, 0},
                                {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
                                {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}};
    const uint32_t key[3][2] = {{0, 0}, {0xffffffff, 0xffffffff}, {0xa4093822, 0x299f31d0}};
    const uint32_t want[3][4] = {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
                                 {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
                                 {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}};
    for (int k = 0; k < 3; k++) {
        uint32_t out[4];
        philox4x32_10(ctr[k], key[k], out);
        for (int l = 0; l < 4; l++)
            ck_assert_msg(out[l] == want[k][l], "vector %d lane %d: 0x%08x, expected 0x%08x", k, l, out[l], want[k][l]);
    }
    /* philox_block: counter {lo(block), hi(block), 0, 0}, key {lo(seed), hi(seed)} */
    const uint64_t seed = 0x299f31d0a4093822ULL, block = 0x85a308d3243f6a88ULL;
    uint32_t a[4], b[4];
    philox_block(seed, block, a);
    philox4x32_10((const uint32_t[4]){0x243f6a88, 0x85a308d3, 0, 0}, key[2], b);
    ck_assert(memcmp(a, b, sizeof a) == 0);
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_philox_math)
{
    LEAK_CHECK_BEGIN();
    double worst_log = 0, worst_sc = 0;
    /* every 24-bit grid point the generator can produce (a stride through them), plus
     * arbitrary doubles and the edges */
    for (uint32_t k = 1; k <= (1u << 24); k += 61) {
        double u1 = (double)k * (1.0 / 16777216.0), u2 = (double)(k - 1) * (1.0 / 16777216.0), s, c;
        worst_log = fmax(worst_log, fabs(philox_log(u1) - log(u1)));
        philox_sincos2pi(u2, &s, &c);
        worst_sc = fmax(worst_sc, fmax(fabs(s - sin(2 * M_PI * u2)), fabs(c - cos(2 * M_PI * u2))));
    }
    uint64_t state = 88172645463325252ULL;
    for (int i = 0; i < 200000; i++) {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17;
        double u = (double)(state >> 11) * 0x1p-53, s, c;   /* [0, 1) */
        worst_log = fmax(worst_log, fabs(philox_log(1.0 - u) - log(1.0 - u)));
        philox_sincos2pi(u, &s, &c);
        worst_sc = fmax(worst_sc, fmax(fabs(s - sin(2 * M_PI * u)), fabs(c - cos(2 * M_PI * u))));
    }
    const double edges[] = {1.0, 0.5, 0x1p-24, 1e-300, 0.70710678118654752440, 0.7071067811865475, 0.9999999999999999};
    for (size_t i = 0; i < sizeof edges / sizeof *edges; i++)
        worst_log = fmax(worst_log, fabs(philox_log(edges[i]) - log(edges[i])));
    ck_assert(philox_log(1.0) == 0.0);
    const double qs[] = {0.0, 0.25, 0.5, 0.75, 0.125, 1.0 - 0x1p-53, 0.25 - 0x1p-55};
    for (size_t i = 0; i < sizeof qs / sizeof *qs; i++) {
        double s, c;
        philox_sincos2pi(qs[i], &s, &c);
        worst_sc = fmax(worst_sc, fmax(fabs(s - sin(2 * M_PI * qs[i])), fabs(c - cos(2 * M_PI * qs[i]))));
    }
    printf("philox math: max |log err| %.2e, max |sincos err| %.2e\n", worst_log, worst_sc);
    ck_assert_msg(worst_log < 1e-12, "philox_log error %g", worst_log);
    ck_assert_msg(worst_sc < 1e-12, "philox_sincos2pi error %g", worst_sc);
    LEAK_CHECK_END();
}
END_TEST

/* ag_rand / ag_randn are the documented stream: number j from block j/4, lane j%4 */
START_TEST(test_philox_stream)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    const uint64_t seed = 0x0123456789abcdefULL;
    ag_rng_set(seed, 0);
    struct tensor *u = ag_rand(DTYPE_F64, TENSOR_SHAPE(4, 25), DEVICE_CPU);
    struct tensor *z = ag_randn(DTYPE_F64, TENSOR_SHAPE(4, 25), DEVICE_CPU);
    uint64_t s, o;
    ag_rng_get(&s, &o);
    EXPECT(s == seed && o == 200);
    for (int64_t j = 0; j < 100; j++) {
        uint32_t x[4];
        double zz[4];
        philox_block(seed, (uint64_t)j / 4, x);
        EXPECT(tensor_get_flat(u, j) == philox_uniform(x[j % 4]));
        philox_block(seed, (uint64_t)(j + 100) / 4, x);
        philox_normal4(x, zz);
        EXPECT(tensor_get_flat(z, j) == zz[(j + 100) % 4]);
    }
    /* the kernel at an offset that is not a multiple of 4, into a strided f32 view */
    struct tensor *st = tensor_transpose(tensor_empty(DTYPE_F32, TENSOR_SHAPE(3, 5), DEVICE_CPU), 0, 1);
    ck_assert_int_eq(backend_cpu.random(st, seed, 6, false), STATUS_OK);
    for (int64_t j = 0; j < 15; j++) {
        uint32_t x[4];
        philox_block(seed, (uint64_t)(j + 6) / 4, x);
        EXPECT(tensor_get_flat(st, j) == (double)(float)philox_uniform(x[(j + 6) % 4]));
    }
    /* ag_rng_set rounds the offset up to a multiple of 4 */
    ag_rng_set(7, 5);
    ag_rng_get(&s, &o);
    EXPECT(s == 7 && o == 8);
    ag_rng_seed(9);
    ag_rng_get(&s, &o);
    EXPECT(s == 9 && o == 0);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_philox_offsets)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    for (int normal = 0; normal < 2; normal++) {
        struct tensor *(*draw)(enum dtype, int, const int64_t *, enum device) = normal ? ag_randn : ag_rand;
        /* n a multiple of 4: n then m equals n + m at once */
        const int64_t n = 12, m = 7;
        ag_rng_set(42, 0);
        struct tensor *a = draw(DTYPE_F64, TENSOR_SHAPE(n), DEVICE_CPU), *b = draw(DTYPE_F64, TENSOR_SHAPE(m), DEVICE_CPU);
        uint64_t s, o;
        ag_rng_get(&s, &o);
        ck_assert_int_eq(o, 12 + 8);
        ag_rng_set(42, 0);
        struct tensor *ab = draw(DTYPE_F64, TENSOR_SHAPE(n + m), DEVICE_CPU);
        for (int64_t i = 0; i < n; i++) EXPECT(tensor_get_flat(a, i) == tensor_get_flat(ab, i));
        for (int64_t i = 0; i < m; i++) EXPECT(tensor_get_flat(b, i) == tensor_get_flat(ab, n + i));
        /* not a multiple: the second draw starts at the next multiple of 4 */
        ag_rng_set(42, 0);
        draw(DTYPE_F64, TENSOR_SHAPE(5), DEVICE_CPU);
        struct tensor *c = draw(DTYPE_F64, TENSOR_SHAPE(4), DEVICE_CPU);
        for (int64_t i = 0; i < 4; i++) EXPECT(tensor_get_flat(c, i) == tensor_get_flat(ab, 8 + i));
        /* replay from a saved position */
        ag_rng_set(42, 8);
        struct tensor *d = draw(DTYPE_F64, TENSOR_SHAPE(4), DEVICE_CPU);
        for (int64_t i = 0; i < 4; i++) EXPECT(tensor_get_flat(d, i) == tensor_get_flat(ab, 8 + i));
        /* f32 draws are the f64 ones rounded */
        ag_rng_set(42, 0);
        struct tensor *f = draw(DTYPE_F32, TENSOR_SHAPE(n + m), DEVICE_CPU);
        for (int64_t i = 0; i < n + m; i++) EXPECT(tensor_get_flat(f, i) == (double)(float)tensor_get_flat(ab, i));
        /* a different seed gives different numbers */
        ag_rng_set(43, 0);
        EXPECT(tensor_get_flat(draw(DTYPE_F64, TENSOR_SHAPE(1), DEVICE_CPU), 0) != tensor_get_flat(ab, 0));
    }
    tensor_clear_error();
    ck_assert_ptr_null(ag_rand(DTYPE_I32, TENSOR_SHAPE(4), DEVICE_CPU));
    ck_error_has(STATUS_DTYPE, "i32");
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_philox_stats)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    const int64_t n = 1000000;
    ag_rng_set(2024, 0);
    struct tensor *u = ag_rand(DTYPE_F64, TENSOR_SHAPE(n), DEVICE_CPU);
    struct tensor *u32 = ag_rand(DTYPE_F32, TENSOR_SHAPE(n), DEVICE_CPU);
    const double *pu = tensor_data_ptr(u);
    const float *pu32 = tensor_data_ptr(u32);
    double sum = 0, sq = 0, lo = 1, hi = 0;
    for (int64_t i = 0; i < n; i++) {
        EXPECT(pu[i] >= 0.0 && pu[i] < 1.0);
        EXPECT(pu32[i] >= 0.0f && pu32[i] < 1.0f);
        sum += pu[i];
        sq += pu[i] * pu[i];
        lo = fmin(lo, pu[i]);
        hi = fmax(hi, pu[i]);
    }
    double mean = sum / (double)n, var = sq / (double)n - mean * mean;
    printf("uniform: mean %.5f var %.5f min %.2e max 1-%.2e\n", mean, var, lo, 1 - hi);
    ck_assert_double_eq_tol(mean, 0.5, 3e-3);
    ck_assert_double_eq_tol(var, 1.0 / 12, 2e-3);
    EXPECT(lo < 1e-4 && hi > 1 - 1e-4);

    struct tensor *z = ag_randn(DTYPE_F64, TENSOR_SHAPE(n), DEVICE_CPU);
    const double *pz = tensor_data_ptr(z);
    double zs = 0, zq = 0, z4 = 0;
    int64_t within1 = 0;
    for (int64_t i = 0; i < n; i++) {
        EXPECT(isfinite(pz[i]));
        zs += pz[i];
        zq += pz[i] * pz[i];
        z4 += pz[i] * pz[i] * pz[i] * pz[i];
        within1 += fabs(pz[i]) < 1.0;
    }
    double zm = zs / (double)n, zv = zq / (double)n - zm * zm;
    printf("normal: mean %.5f var %.5f kurtosis %.4f P(|z|<1) %.5f\n", zm, zv, z4 / (double)n, (double)within1 / (double)n);
    ck_assert_double_eq_tol(zm, 0.0, 5e-3);
    ck_assert_double_eq_tol(zv, 1.0, 1e-2);
    ck_assert_double_eq_tol(z4 / (double)n, 3.0, 5e-2);
    ck_assert_double_eq_tol((double)within1 / (double)n, 0.682689, 3e-3);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* the same draw on 1 and on 2 threads gives the same bits */
START_TEST(test_philox_threads)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    const int old = omp_get_max_threads();
    const int64_t n = 1 << 20;
    struct tensor *r[2][2];
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k + 1);
        ag_rng_set(77, 4);
        r[k][0] = ag_rand(DTYPE_F32, TENSOR_SHAPE(n), DEVICE_CPU);
        r[k][1] = ag_randn(DTYPE_F64, TENSOR_SHAPE(n + 3), DEVICE_CPU);
    }
    omp_set_num_threads(old);
    ck_assert(memcmp(tensor_data_ptr(r[0][0]), tensor_data_ptr(r[1][0]), (size_t)n * 4) == 0);
    ck_assert(memcmp(tensor_data_ptr(r[0][1]), tensor_data_ptr(r[1][1]), (size_t)(n + 3) * 8) == 0);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- errors */

START_TEST(test_errors)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    tensor_clear_error();
    ck_assert_int_eq(tensor_status(), STATUS_OK);
    ck_assert_str_eq(tensor_error(), "no error");
    ck_assert_ptr_null(tensor_empty(DTYPE_F32, TENSOR_SHAPE(2, -3), DEVICE_CPU));
    ck_error_has(STATUS_SHAPE, "-3");
    ck_assert_ptr_null(tensor_zeros(DTYPE_F32, 9, (int64_t[9]){1, 1, 1, 1, 1, 1, 1, 1, 1}, DEVICE_CPU));
    ck_error_has(STATUS_SHAPE, "9 dims");
    ck_assert_ptr_null(tensor_empty(DTYPE_COUNT, TENSOR_SHAPE(2), DEVICE_CPU));
    ck_assert_int_eq(tensor_status(), STATUS_DTYPE);
    /* a message may wrap the previous one (tensor_error() is the buffer tensor_fail writes) */
    tensor_fail(STATUS_IO, "inner message that is rather long, %d", 42);
    tensor_fail(STATUS_VALUE, "outer: %s; again: %s", tensor_error(), tensor_error());
    ck_assert_str_eq(tensor_error(),
                     "outer: inner message that is rather long, 42; again: inner message that is rather long, 42");

    struct tensor *a = tensor_zeros(DTYPE_F64, TENSOR_SHAPE(2, 3), DEVICE_CPU);
    struct tensor *b = tensor_zeros(DTYPE_F64, TENSOR_SHAPE(4), DEVICE_CPU);
    ck_assert_ptr_null(ag_add(a, b));
    ck_error_has(STATUS_SHAPE, "[2,3]");
    ck_assert(contains(tensor_error(), "[4]") && contains(tensor_error(), "add"));
    ck_assert_ptr_null(ag_matmul(a, a));
    ck_error_has(STATUS_SHAPE, "[2,3]");
    ck_assert_int_eq(tensor_copy_(a, b), STATUS_SHAPE);
    ck_error_has(STATUS_SHAPE, "[2,3]");
    ck_assert(contains(tensor_error(), "[4]"));
    ck_assert_ptr_null(ag_sum(a, 1, (int[]){2}, false));
    ck_error_has(STATUS_SHAPE, "[2,3]");
    ck_assert_ptr_null(ag_softmax(a, -3));
    ck_error_has(STATUS_SHAPE, "[2,3]");

    /* NULL propagates through a chain of ops; the first message survives */
    tensor_clear_error();
    struct tensor *bad = ag_add(a, b);
    char first[1024];
    snprintf(first, sizeof first, "%s", tensor_error());
    struct tensor *y = ag_relu(ag_sum(ag_mul(ag_reshape(ag_transpose(bad, 0, 1), TENSOR_SHAPE(-1)), a), 0, NULL, false));
    y = ag_softmax(ag_matmul(ag_exp(ag_narrow(ag_unsqueeze(y, 0), 0, 0, 1)), a), -1);
    y = ag_mean(ag_concat(2, (struct tensor *[]){y, a}, 0), 0, NULL, true);
    y = ag_where(y, a, a);
    y = tensor_contiguous(tensor_clone(tensor_to_dtype(tensor_expand(tensor_permute(y, (int[]){1, 0}), TENSOR_SHAPE(2, 3)), DTYPE_F32)));
    y = ag_max(ag_var(ag_norm(ag_sum_to(ag_scale(y, 2), TENSOR_SHAPE(3)), 0, NULL, false), 0, NULL, false, 1), 0, false);
    ck_assert_ptr_null(y);
    ck_assert_int_eq(tensor_fill_(y, 1.0), STATUS_SHAPE);
    ck_assert_int_eq(tensor_copy_(a, y), STATUS_SHAPE);
    ck_assert_int_eq(ag_backward(y, NULL, false), STATUS_SHAPE);
    ck_assert_int_eq(ag_set_requires_grad(y, true), STATUS_SHAPE);
    struct tensor *parts[2];
    ck_assert_int_eq(ag_chunk(y, 0, 2, parts), STATUS_SHAPE);
    ck_assert_str_eq(tensor_error(), first);
    ck_assert_int_eq(tensor_status(), STATUS_SHAPE);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* the profiler (profile.h): counts every outermost backend call under its key, sums time,
 * records nothing when stopped or after a reset, and a call made from inside a profiled call
 * counts toward the outer one only */
static const struct profile_entry *find_entry(const struct profile_entry *e, int n, const char *op, const char *dt)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(e[i].op, op) && !strcmp(e[i].dtype, dt)) return &e[i];
    return NULL;
}

static int nested_calls;
static enum status nested_binary(enum binary_op op, struct tensor *out, const struct tensor *a, const struct tensor *b)
{
    /* a backend entry that uses its own (wrapped) table: the inner fill must not be recorded */
    nested_calls++;
    enum status s = backend_for(DEVICE_CPU)->fill(out, 0.0);
    return s ? s : backend_cpu.binary(op, out, a, b);
}

/* an entry that takes a known least time: its call must be charged at least that, and only it
 * (a ratio of two real ops' times is not testable on a shared machine: CI saw an add slower
 * than a product three times its size while OpenMP threads started) */
static enum status slow_unary(enum unary_op op, struct tensor *out, const struct tensor *a, const double *p)
{
    struct timespec t = {.tv_sec = 0, .tv_nsec = 30 * 1000 * 1000};
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &t, &t) == EINTR) {}
    return backend_cpu.unary(op, out, a, p);
}

START_TEST(test_profile)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *a = test_uniform(DTYPE_F32, TENSOR_SHAPE(256, 256), -1, 1);
    struct tensor *b = test_uniform(DTYPE_F32, TENSOR_SHAPE(256, 256), -1, 1);
    struct tensor *o = tensor_empty(DTYPE_F32, TENSOR_SHAPE(256, 256), DEVICE_CPU);
    struct tensor *d = tensor_empty(DTYPE_F64, TENSOR_SHAPE(256, 256), DEVICE_CPU);
    tensor_profile_reset();
    tensor_profile_start();
    ck_assert(tensor_profile_active());
    for (int i = 0; i < 3; i++) ck_assert_int_eq(backend_of(o)->binary(BINARY_ADD, o, a, b), STATUS_OK);
    ck_assert_int_eq(backend_of(o)->matmul(o, a, b, 1.0, 0.0), STATUS_OK);
    ck_assert_int_eq(tensor_fill_(d, 2.0), STATUS_OK);
    ck_assert_int_eq(tensor_fill_(d, 3.0), STATUS_OK);
    ck_assert_int_eq(tensor_copy_(o, d), STATUS_OK);   /* a cast: "copy from f64" into f32 */
    ck_assert_int_eq(backend_of(o)->unary(UNARY_SILU, o, a, NULL), STATUS_OK);
    struct profile_entry e[64];
    int n = tensor_profile_entries(e, 64);
    ck_assert_int_le(n, 64);
    const struct profile_entry *add = find_entry(e, n, "binary add", "f32"), *mm = find_entry(e, n, "matmul", "f32");
    const struct profile_entry *fill = find_entry(e, n, "fill", "f64"), *cast = find_entry(e, n, "copy from f64", "f32");
    const struct profile_entry *silu = find_entry(e, n, "unary silu", "f32");
    ck_assert(add && mm && fill && cast && silu);
    ck_assert_int_eq(add->calls, 3);
    ck_assert_int_eq(mm->calls, 1);
    ck_assert_int_eq(fill->calls, 2);
    ck_assert_int_eq(cast->calls, 1);
    ck_assert_int_eq(silu->calls, 1);
    ck_assert_int_eq(add->device, DEVICE_CPU);
    ck_assert(add->seconds > 0 && mm->seconds > 0);
    for (int i = 1; i < n; i++) ck_assert(e[i - 1].seconds >= e[i].seconds);   /* longest first */
    /* the table as printed */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    ck_assert_ptr_nonnull(f);
    tensor_profile_print(f);
    fclose(f);
    ck_assert_msg(!strncmp(text, "profile: ", 9), "%s", text);   /* scripts/gpu-check.sh finds the table by it */
    ck_assert_ptr_nonnull(strstr(text, "total ms"));
    ck_assert_ptr_nonnull(strstr(text, "binary add"));
    ck_assert_ptr_nonnull(strstr(text, "copy from f64"));
    free(text);
    /* nesting: one outer call recorded, the inner fill not */
    struct backend nest = backend_cpu;
    nest.binary = nested_binary;
    const struct backend *wn = profile_wrap(&nest);
    ck_assert_ptr_ne(wn, &nest);
    ck_assert_int_eq(wn->binary(BINARY_MUL, o, a, b), STATUS_OK);
    ck_assert_int_eq(nested_calls, 1);
    /* time: a call that sleeps 30 ms is charged >= 30 ms, under its own key */
    struct backend slow = backend_cpu;
    slow.unary = slow_unary;
    ck_assert_int_eq(profile_wrap(&slow)->unary(UNARY_EXP, o, a, NULL), STATUS_OK);
    profile_wrap(&backend_cpu);   /* the real CPU table again */
    n = tensor_profile_entries(e, 64);
    ck_assert_int_eq(find_entry(e, n, "binary mul", "f32")->calls, 1);
    ck_assert_int_eq(find_entry(e, n, "fill", "f32") ? find_entry(e, n, "fill", "f32")->calls : 0, 0);
    const struct profile_entry *slept = find_entry(e, n, "unary exp", "f32");
    ck_assert(slept && slept->calls == 1 && slept->seconds >= 0.030);
    /* stopped: nothing recorded, and the table is the real one */
    tensor_profile_stop();
    ck_assert(!tensor_profile_active());
    ck_assert_ptr_eq(backend_for(DEVICE_CPU), &backend_cpu);
    ck_assert_int_eq(backend_of(o)->binary(BINARY_ADD, o, a, b), STATUS_OK);
    n = tensor_profile_entries(e, 64);
    ck_assert_int_eq(find_entry(e, n, "binary add", "f32")->calls, 3);
    /* reset */
    tensor_profile_reset();
    ck_assert_int_eq(tensor_profile_entries(e, 64), 0);
    /* shapes mode: one entry per operand shape, named by them */
    tensor_profile_record_shapes(true);
    tensor_profile_start();
    struct tensor *a2 = tensor_narrow(a, 0, 0, 100), *o2 = tensor_narrow(o, 0, 0, 100);
    for (int i = 0; i < 2; i++) ck_assert_int_eq(backend_of(o)->matmul(o, a, b, 1.0, 0.0), STATUS_OK);
    ck_assert_int_eq(backend_of(o2)->matmul(o2, a2, b, 1.0, 0.0), STATUS_OK);
    tensor_profile_stop();
    tensor_profile_record_shapes(false);
    n = tensor_profile_entries(e, 64);
    int seen = 0;
    for (int i = 0; i < n; i++)
        if (!strcmp(e[i].op, "matmul")) {
            const bool full = !strcmp(e[i].shapes, "[256,256] [256,256]"), part = !strcmp(e[i].shapes, "[100,256] [256,256]");
            ck_assert_msg(full || part, "matmul entry with shapes '%s'", e[i].shapes);
            ck_assert_int_eq(e[i].calls, full ? 2 : 1);
            seen |= full ? 1 : 2;
        }
    ck_assert_int_eq(seen, 3);
    tensor_profile_reset();
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    test_seed();
    Suite *s = suite_create("tensor");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_dtype_basics);
    tcase_add_test(tc, test_f16_all_patterns);
    tcase_add_test(tc, test_precision_switch);
    tcase_add_test(tc, test_bf16_all_patterns);
    tcase_add_test(tc, test_f32_rounding);
    tcase_add_test(tc, test_to_dtype_pairs);
    tcase_add_test(tc, test_i64_exact);
    tcase_add_test(tc, test_views);
    tcase_add_test(tc, test_view_errors);
    tcase_add_test(tc, test_view_keeps_storage);
    tcase_add_test(tc, test_scopes);
    tcase_add_test(tc, test_alloc_stats);
    tcase_add_test(tc, test_alloc_large);
    tcase_add_test(tc, test_alloc_random);
    tcase_add_test(tc, test_alloc_too_large);
    tcase_add_test(tc, test_alloc_hugepages);
    tcase_add_test(tc, test_alloc_cpu_gives_back);
    tcase_add_test(tc, test_device_memory_describe);
    tcase_add_test(tc, test_alloc_limit);
    tcase_add_test(tc, test_mem_parse_size);
    tcase_add_test(tc, test_philox_known_answers);
    tcase_add_test(tc, test_philox_math);
    tcase_add_test(tc, test_philox_stream);
    tcase_add_test(tc, test_philox_offsets);
    tcase_add_test(tc, test_philox_stats);
    tcase_add_test(tc, test_philox_threads);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_profile);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
