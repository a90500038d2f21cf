/* vecmath.c — f32 GELU (exact, erf), SiLU and quick GELU, forward and backward, and sigmoid's
 * forward, on contiguous rows with glibc's vector math library (libmvec: erff and expf 16, 8 or 4
 * lanes at a time, within a few ulp of the scalar ones). The scalar loops of elementwise_impl.h call erff/expf once per
 * element, which made exact GELU 14x slower than PyTorch's vectorised kernel at the demo
 * UNet's GEGLU shape. Every element of a row, the tail included (padded into a full vector),
 * goes through the same vector code, so a value does not depend on its position or on how
 * the row was cut between threads. Built only where meson finds libmvec (TENSOR_HAVE_MVEC);
 * elsewhere, and under cpu_elementwise_baseline_only(true), the scalar loops run. */
#include "tensor/cpu/cpu.h"

#include <stdbool.h>

static bool vec_baseline_only;
void cpu_elementwise_baseline_only(bool on) { vec_baseline_only = on; }

/* Tests cap the lanes to check every width the CPU has (16 needs AVX-512, 8 AVX2). Internal:
 * declared where used, not in a header. */
static int vec_max_lanes = 16;
void cpu_vecmath_max_lanes(int lanes);
void cpu_vecmath_max_lanes(int lanes) { vec_max_lanes = lanes; }

#if defined(TENSOR_HAVE_MVEC) && defined(__x86_64__) && defined(__GNUC__)

typedef float v16f __attribute__((vector_size(64)));
typedef int v16i __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef int v8i __attribute__((vector_size(32)));
typedef int v4i __attribute__((vector_size(16)));
#define AVX2_FN __attribute__((target("avx2")))
#define AVX512_FN __attribute__((target("avx512f,avx512dq")))

/* libmvec's x86_64 vector ABI names: b = SSE (4 lanes), d = AVX2 (8 lanes), e = AVX-512 (16) */
AVX512_FN v16f _ZGVeN16v_erff(v16f);
AVX512_FN v16f _ZGVeN16v_expf(v16f);
v4f _ZGVbN4v_erff(v4f);
v4f _ZGVbN4v_expf(v4f);
AVX2_FN v8f _ZGVdN8v_erff(v8f);
AVX2_FN v8f _ZGVdN8v_expf(v8f);

#define K_SQRT1_2 0.70710678118654752440f
#define K_INV_SQRT2PI 0.39894228040143267794f

/* The same formulas as the scalar loops (elementwise_impl.h), lane by lane. s = 1 / (1 + exp(-kx))
 * is computed once where a rule needs it twice: libmvec calls are not pure to the compiler, so
 * writing exp twice would call it twice. */
#define K_QUICK_GELU 1.702f

/* copy m of W lanes: a whole vector with a fixed-size copy (one unaligned load or store), the
 * last partial one lane count by lane count (a variable-size __builtin_memcpy is a libc call
 * per vector: it took 18% of GELU's time and half of SiLU's) */
#define COPY_LANES(dst, src, m, W)                                                                                 \
    do {                                                                                                           \
        if ((m) == (W)) __builtin_memcpy((dst), (src), sizeof(float) * (W));                                      \
        else __builtin_memcpy((dst), (src), sizeof(float) * (size_t)(m));                                          \
    } while (0)

/* one row: n elements, W lanes; the last partial vector is padded with zeros.
 * exp goes through exp_wide: libmvec's expf takes a slow path for the whole vector (the scalar
 * expf, lane by lane) when any lane's argument is past about +-87.3, which made quick GELU and
 * SiLU 5-8x slower on large activations (ViT-L's MLP with random weights: 18.8 ms a call). Past
 * +-40 it computes exp(t / 2)^2 instead, the half clamped to [-87, 45]: the square overflows to
 * inf and underflows to 0 exactly where exp(t) does, and costs about 2 ulp. NaN stays NaN (a
 * compare is false). */
#define DEFINE_ROWS(W, V, VI, ATTR, ERF, EXP)                                                                      \
    ATTR static inline V select_##V(VI m, V a, V b) { return (V)((m & (VI)a) | (~m & (VI)b)); }                 \
    ATTR static inline V exp_wide_##V(V t)                                                                         \
    {                                                                                                              \
        const V zero = {0}, hi = zero + 45.0f, lo = zero - 87.0f;                                                  \
        const VI wide = (t > 40.0f) | (t < -40.0f);                                                                \
        V u = select_##V(wide, 0.5f * t, t);                                                                       \
        u = select_##V(u > hi, hi, select_##V(u < lo, lo, u));                                                     \
        const V e = EXP(u);                                                                                        \
        return select_##V(wide, e * e, e);                                                                         \
    }                                                                                                              \
    ATTR static void unary_##V(enum unary_op op, float *o, const float *a, int64_t n)                              \
    {                                                                                                              \
        for (int64_t i = 0; i < n; i += W) {                                                                       \
            const int m = n - i < W ? (int)(n - i) : W;                                                            \
            V x = {0}, r;                                                                                          \
            COPY_LANES(&x, a + i, m, W);                                                                           \
            switch (op) {                                                                                          \
            case UNARY_GELU: r = 0.5f * x * (1.0f + ERF(x * K_SQRT1_2)); break;                                    \
            case UNARY_SILU: r = x / (1.0f + exp_wide_##V(-x)); break;                                              \
            case UNARY_QUICK_GELU: r = x / (1.0f + exp_wide_##V(-K_QUICK_GELU * x)); break;                          \
            default: r = 1.0f / (1.0f + exp_wide_##V(-x)); break; /* UNARY_SIGMOID */                               \
            }                                                                                                      \
            COPY_LANES(o + i, &r, m, W);                                                                           \
        }                                                                                                          \
    }                                                                                                              \
    ATTR static void unary_bwd_##V(enum unary_op op, float *dx, const float *dy, const float *a, int64_t n)        \
    {                                                                                                              \
        for (int64_t i = 0; i < n; i += W) {                                                                       \
            const int m = n - i < W ? (int)(n - i) : W;                                                            \
            V x = {0}, g = {0}, r, s;                                                                              \
            COPY_LANES(&x, a + i, m, W);                                                                           \
            COPY_LANES(&g, dy + i, m, W);                                                                          \
            switch (op) {                                                                                          \
            case UNARY_GELU:                                                                                       \
                r = g * (0.5f * (1.0f + ERF(x * K_SQRT1_2)) + x * K_INV_SQRT2PI * exp_wide_##V(-0.5f * x * x));   \
                break;                                                                                             \
            case UNARY_SILU:                                                                                       \
                s = 1.0f / (1.0f + exp_wide_##V(-x));                                                               \
                r = g * s * (1.0f + x * (1.0f - s));                                                               \
                break;                                                                                             \
            default: /* UNARY_QUICK_GELU */                                                                        \
                s = 1.0f / (1.0f + exp_wide_##V(-K_QUICK_GELU * x));                                                \
                r = g * (s + K_QUICK_GELU * x * s * (1.0f - s));                                                   \
                break;                                                                                             \
            }                                                                                                      \
            COPY_LANES(dx + i, &r, m, W);                                                                          \
        }                                                                                                          \
    }

DEFINE_ROWS(16, v16f, v16i, AVX512_FN, _ZGVeN16v_erff, _ZGVeN16v_expf)
DEFINE_ROWS(8, v8f, v8i, AVX2_FN, _ZGVdN8v_erff, _ZGVdN8v_expf)
DEFINE_ROWS(4, v4f, v4i, , _ZGVbN4v_erff, _ZGVbN4v_expf)

#define HAVE_AVX512() (vec_max_lanes >= 16 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
#define HAVE_AVX2() (vec_max_lanes >= 8 && __builtin_cpu_supports("avx2"))

/* sigmoid's backward uses y, not exp: the scalar loop is already cheap */
static bool vec_op(enum unary_op op, bool bwd)
{
    return op == UNARY_GELU || op == UNARY_SILU || op == UNARY_QUICK_GELU || (!bwd && op == UNARY_SIGMOID);
}

bool cpu_vec_unary_f32(enum unary_op op, float *o, int64_t so, const float *a, int64_t sa, int64_t n)
{
    if (vec_baseline_only || !vec_op(op, false) || so != 1 || sa != 1) return false;
    if (HAVE_AVX512()) unary_v16f(op, o, a, n);
    else if (HAVE_AVX2()) unary_v8f(op, o, a, n);
    else unary_v4f(op, o, a, n);
    return true;
}

bool cpu_vec_unary_bwd_f32(enum unary_op op, float *dx, int64_t sdx, const float *dy, int64_t sdy, const float *x,
                           int64_t sx, int64_t n)
{
    if (vec_baseline_only || !vec_op(op, true) || !x || sdx != 1 || sdy != 1 || sx != 1) return false;
    if (HAVE_AVX512()) unary_bwd_v16f(op, dx, dy, x, n);
    else if (HAVE_AVX2()) unary_bwd_v8f(op, dx, dy, x, n);
    else unary_bwd_v4f(op, dx, dy, x, n);
    return true;
}

#else

bool cpu_vec_unary_f32(enum unary_op op, float *o, int64_t so, const float *a, int64_t sa, int64_t n)
{
    (void)op, (void)o, (void)so, (void)a, (void)sa, (void)n;
    return false;
}

bool cpu_vec_unary_bwd_f32(enum unary_op op, float *dx, int64_t sdx, const float *dy, int64_t sdy, const float *x,
                           int64_t sx, int64_t n)
{
    (void)op, (void)dx, (void)sdx, (void)dy, (void)sdy, (void)x, (void)sx, (void)n;
    return false;
}

#endif
