/* elementwise.c — copy, fill, unary, binary and where on the CPU, any strides. */
#include "tensor/cpu/cpu.h"
#include "tensor/half.h"

#include <tgmath.h>
#ifdef __SSE2__
#include <immintrin.h>
#endif

#define T float
#define SUF f32
#define VEC_F32 1   /* GELU and SiLU rows may take vecmath.c */
#include "tensor/cpu/elementwise_impl.h"
#undef T
#undef SUF
#undef VEC_F32
#define T double
#define SUF f64
#define VEC_F32 0
#include "tensor/cpu/elementwise_impl.h"
#undef T
#undef SUF
#undef VEC_F32

static enum status same_dtype(const struct tensor *a, const struct tensor *b, const char *op)
{
    if (a->dtype == b->dtype) return STATUS_OK;
    return tensor_fail(STATUS_DTYPE, "%s: dtype mismatch (%s vs %s)", op, dtype_name(a->dtype), dtype_name(b->dtype));
}

enum status cpu_unary(enum unary_op op, struct tensor *out, const struct tensor *a, const double *p)
{
    enum status s;
    if ((s = cpu_need_float(a, "unary")) || (s = same_dtype(out, a, "unary"))) return s;
    if (a->dtype == DTYPE_F32) unary_run_f32(op, out, a, p);
    else unary_run_f64(op, out, a, p);
    return STATUS_OK;
}

enum status cpu_unary_backward(enum unary_op op, struct tensor *dx, const struct tensor *dy, const struct tensor *x,
                               const struct tensor *y, const double *p)
{
    enum status s;
    if ((s = cpu_need_float(dy, "unary_backward")) || (s = same_dtype(dx, dy, "unary_backward")) ||
        (x && (s = same_dtype(x, dy, "unary_backward"))) || (y && (s = same_dtype(y, dy, "unary_backward"))))
        return s;
    if (dy->dtype == DTYPE_F32) unary_bwd_run_f32(op, dx, dy, x, y, p);
    else unary_bwd_run_f64(op, dx, dy, x, y, p);
    return STATUS_OK;
}

enum status cpu_binary(enum binary_op op, struct tensor *out, const struct tensor *a, const struct tensor *b)
{
    enum status s;
    if ((s = cpu_need_float(a, "binary")) || (s = same_dtype(a, b, "binary")) || (s = same_dtype(out, a, "binary")))
        return s;
    if (a->dtype == DTYPE_F32) binary_run_f32(op, out, a, b);
    else binary_run_f64(op, out, a, b);
    return STATUS_OK;
}

enum status cpu_where(struct tensor *out, const struct tensor *cond, const struct tensor *a, const struct tensor *b)
{
    enum status s;
    if ((s = cpu_need_float(a, "where")) || (s = same_dtype(a, b, "where")) || (s = same_dtype(out, a, "where")) ||
        (s = same_dtype(cond, a, "where")))
        return s;
    if (a->dtype == DTYPE_F32) where_run_f32(out, cond, a, b);
    else where_run_f64(out, cond, a, b);
    return STATUS_OK;
}

/* ---- copy with dtype conversion: a load and a store per dtype, rows in parallel */

static inline double load_as_double(const char *base, enum dtype dt, int64_t i)
{
    switch (dt) {
    case DTYPE_F32: return ((const float *)base)[i];
    case DTYPE_F64: return ((const double *)base)[i];
    case DTYPE_F16: return f16_to_f32(((const uint16_t *)base)[i]);
    case DTYPE_BF16: return bf16_to_f32(((const uint16_t *)base)[i]);
    case DTYPE_I32: return ((const int32_t *)base)[i];
    case DTYPE_I64: return (double)((const int64_t *)base)[i];
    default: return 0;
    }
}

static inline void store_double(char *base, enum dtype dt, int64_t i, double v)
{
    switch (dt) {
    case DTYPE_F32: ((float *)base)[i] = (float)v; break;
    case DTYPE_F64: ((double *)base)[i] = v; break;
    case DTYPE_F16: ((uint16_t *)base)[i] = f32_to_f16((float)v); break;
    case DTYPE_BF16: ((uint16_t *)base)[i] = f32_to_bf16((float)v); break;
    case DTYPE_I32: ((int32_t *)base)[i] = (int32_t)v; break;
    case DTYPE_I64: ((int64_t *)base)[i] = (int64_t)v; break;
    default: break;
    }
}

/* len elements from element offset so of ps to element offset do of pd, inner strides sd, ss */
static void copy_row(char *pd, enum dtype dd, int64_t dof, int64_t sd, const char *ps, enum dtype sdt, int64_t sof, int64_t ss,
                     int64_t len)
{
    const size_t esz = dtype_size(dd);
    if (dd == sdt && sd == 1 && ss == 1) {
        memmove(pd + dof * (int64_t)esz, ps + sof * (int64_t)esz, (size_t)len * esz);
    } else if (dd == sdt && esz == 8) {   /* i64 -> i64 must not round-trip through double */
        for (int64_t i = 0; i < len; i++) ((int64_t *)pd)[dof + i * sd] = ((const int64_t *)ps)[sof + i * ss];
    } else if (dd == sdt && esz == 4) {
        for (int64_t i = 0; i < len; i++) ((int32_t *)pd)[dof + i * sd] = ((const int32_t *)ps)[sof + i * ss];
    } else if (dd == sdt && esz == 2) {
        for (int64_t i = 0; i < len; i++) ((uint16_t *)pd)[dof + i * sd] = ((const uint16_t *)ps)[sof + i * ss];
    } else if (dd == DTYPE_F32 && (sdt == DTYPE_F16 || sdt == DTYPE_BF16)) {
        /* half-precision weights read as f32 for every use: typed loops, with the conversion
         * inlined (the same bits as through double, which is exact for both) */
        float *o = (float *)pd + dof;
        const uint16_t *h = (const uint16_t *)ps + sof;
        for (int64_t i = 0; i < len; i++) {
            const uint32_t u = sdt == DTYPE_F16 ? half_f16_to_f32_bits(h[i * ss]) : half_bf16_to_f32_bits(h[i * ss]);
            memcpy(o + i * sd, &u, 4);
        }
    } else if (sdt == DTYPE_F32 && (dd == DTYPE_F16 || dd == DTYPE_BF16)) {
        uint16_t *o = (uint16_t *)pd + dof;
        const float *f = (const float *)ps + sof;
        for (int64_t i = 0; i < len; i++) {
            uint32_t u;
            memcpy(&u, f + i * ss, 4);
            o[i * sd] = dd == DTYPE_F16 ? half_f32_bits_to_f16(u) : half_f32_bits_to_bf16(u);
        }
    } else {
        for (int64_t i = 0; i < len; i++) store_double(pd, dd, dof + i * sd, load_as_double(ps, sdt, sof + i * ss));
    }
}

/* A copy whose inner dim is contiguous in dst and strided in src, where src is contiguous
 * along the dim before it: a transpose of [R, C] blocks (NCHW <-> NHWC around the UNet's
 * transformers). Row by row it reads src one element per cache line; here 4x4 tiles are
 * loaded along src's contiguous dim and stored along dst's. 4-byte elements, moved as bits. */
static bool copy_transposed(const struct cpu_iter *it, enum dtype dt, char *pd, const char *ps)
{
#ifdef __SSE2__
    const int nd = it->ndim;
    if (dtype_size(dt) != 4 || nd < 2 || it->inner_stride[0] != 1 || it->inner_stride[1] == 1 ||
        it->stride[1][nd - 2] != 1 || it->inner < 4 || it->shape[nd - 2] < 4)
        return false;
    const int64_t R = it->shape[nd - 2], C = it->inner, dr = it->stride[0][nd - 2], sc = it->inner_stride[1];
    const int64_t RB = 64, n_rb = (R + RB - 1) / RB, items = it->outer / R * n_rb;
#pragma omp parallel for schedule(static) if (it->outer * it->inner >= CPU_PAR_MIN)
    for (int64_t w = 0; w < items; w++) {
        int64_t off[4];
        cpu_iter_offsets(it, w / n_rb * R, off);   /* row 0 of this block's [R, C] matrix */
        float *d = (float *)pd + off[0];
        const float *s = (const float *)ps + off[1];
        const int64_t r0 = w % n_rb * RB, r1 = r0 + RB < R ? r0 + RB : R;
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4) {
            int64_t c = 0;
            for (; c + 4 <= C; c += 4) {
                __m128 a = _mm_loadu_ps(s + c * sc + r), b = _mm_loadu_ps(s + (c + 1) * sc + r);
                __m128 e = _mm_loadu_ps(s + (c + 2) * sc + r), f = _mm_loadu_ps(s + (c + 3) * sc + r);
                _MM_TRANSPOSE4_PS(a, b, e, f);
                _mm_storeu_ps(d + r * dr + c, a);
                _mm_storeu_ps(d + (r + 1) * dr + c, b);
                _mm_storeu_ps(d + (r + 2) * dr + c, e);
                _mm_storeu_ps(d + (r + 3) * dr + c, f);
            }
            for (; c < C; c++)
                for (int64_t j = 0; j < 4; j++) memcpy(d + (r + j) * dr + c, s + c * sc + r + j, 4);
        }
        for (; r < r1; r++)
            for (int64_t c = 0; c < C; c++) memcpy(d + r * dr + c, s + c * sc + r, 4);
    }
    return true;
#else
    (void)it, (void)dt, (void)pd, (void)ps;
    return false;
#endif
}

enum status cpu_copy(struct tensor *dst, const struct tensor *src)
{
    struct cpu_iter it;
    const struct tensor *ts[2] = {dst, src};
    cpu_iter_init(&it, 2, ts);
    char *pd = dst->storage->data;
    const char *ps = src->storage->data;
    if (dst->storage == src->storage) {
        /* within one storage (a shift, say): whole rows in order, one thread, so that a
         * contiguous copy keeps memmove's semantics; chunks or threads could read what
         * another had already written */
        for (int64_t o = 0; o < it.outer; o++) {
            int64_t off[4];
            cpu_iter_offsets(&it, o, off);
            copy_row(pd, dst->dtype, off[0], it.inner_stride[0], ps, src->dtype, off[1], it.inner_stride[1], it.inner);
        }
        return STATUS_OK;
    }
    if (dst->dtype == src->dtype && copy_transposed(&it, dst->dtype, pd, ps)) return STATUS_OK;
    const int64_t items = cpu_iter_items(&it);
#pragma omp parallel for schedule(static) if (it.outer * it.inner >= CPU_PAR_MIN)
    for (int64_t w = 0; w < items; w++) {
        struct cpu_rows r;
        for (cpu_iter_item(&it, w, &r); r.n > 0; cpu_iter_next(&it, &r))
            copy_row(pd, dst->dtype, r.off[0], it.inner_stride[0], ps, src->dtype, r.off[1], it.inner_stride[1], r.len);
    }
    return STATUS_OK;
}

enum status cpu_fill(struct tensor *dst, double value)
{
    struct cpu_iter it;
    const struct tensor *ts[1] = {dst};
    cpu_iter_init(&it, 1, ts);
    char *pd = dst->storage->data;
    const int64_t items = cpu_iter_items(&it);
#pragma omp parallel for schedule(static) if (it.outer * it.inner >= CPU_PAR_MIN)
    for (int64_t w = 0; w < items; w++) {
        struct cpu_rows r;
        for (cpu_iter_item(&it, w, &r); r.n > 0; cpu_iter_next(&it, &r)) {
            if (dst->dtype == DTYPE_F32 && it.inner_stride[0] == 1) {
                /* the common case (zeros for gradients), as a loop the compiler vectorises or
                 * makes a memset: store_double's dtype switch per element ran at 4 GB/s */
                float *o = (float *)pd + r.off[0];
                const float v = (float)value;
                for (int64_t i = 0; i < r.len; i++) o[i] = v;
            } else {
                for (int64_t i = 0; i < r.len; i++) store_double(pd, dst->dtype, r.off[0] + i * it.inner_stride[0], value);
            }
        }
    }
    return STATUS_OK;
}
