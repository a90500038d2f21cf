/* attention.c — scaled-dot-product attention without the L x S score matrix
 * (FlashAttention-2 on the CPU).
 *
 * Shapes: q [B,H,L,D], k [B,H,S,D], v [B,H,S,Dv] -> out [B,H,L,Dv], lse [B,H,L].
 *
 * Forward, per block of ATTN_BLOCK query rows: Sc = scale Q_blk K^T (one GEMM into a per-thread
 * ATTN_BLOCK x S scratch), P = exp(Sc - rowmax), out = (P V) / rowsum (a second GEMM; dividing
 * the Dv outputs costs less than dividing the S probabilities), lse = rowmax + log(rowsum).
 * A block sees all S keys at once, so no online rescaling is needed and only the block's
 * scores are ever held: the extra memory is ATTN_BLOCK x S per thread, not B x H x L x S.
 *
 * Backward, per query block: P = exp(Sc - lse) is recomputed from the saved lse, then with
 * dP = dO V^T and Di = rowsum(dO * O): dS = P * (dP - Di), dQ_blk = scale dS K,
 * dK += scale dS^T Q_blk, dV += P^T dO_blk (five GEMMs; a second ATTN_BLOCK x S scratch).
 * One thread owns a (b,h) pair's dK and dV, so their sums run over the query blocks in a fixed
 * order and nothing depends on the thread count. With fewer pairs than threads the pairs run
 * one after another and the threads go to BLAS and to the row loops instead: the same calls in
 * the same order (like cpu/matmul.c, this relies on BLAS results not depending on its threads).
 *
 * Causal mask, bottom-right aligned: query i sees keys j <= i + (S - L). With L == S it is the
 * usual lower triangle (torch's is_causal); with L != S the last query sees every key, as in
 * FlashAttention (torch's is_causal aligns top-left instead, so the two differ only when L != S).
 * Rows that see no key (i < L - S) give out = 0, lse = -inf and no gradient.
 *
 * Operands are read in place when their last dim is contiguous (BLAS takes the row stride), which
 * covers heads permuted out of a [B,L,H,D] tensor; any other layout is copied once.
 */
#include "tensor/cpu/cpu.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

/* query rows per block: the scratch is ATTN_BLOCK x S per thread (x2 in the backward) */
#define ATTN_BLOCK 64

/* ---------------------------------------------------------------- f32 exp in SIMD */

/* exp over a row of f32 scores is the one non-BLAS cost that grows with L x S, so it runs on
 * GCC vector types: 4 lanes everywhere (SSE, NEON), 8 where the CPU has AVX2 and 16 where it has
 * AVX-512, picked at run time. All keep 16 running sums (lane l takes elements j = l mod 16) added
 * in the same order, and all use FMA where the CPU has it (every AVX2 and AVX-512 one) and none
 * where it does not, so on one machine all give bit-identical results (tested). 16 lanes: 1.85 ->
 * 1.60 ms for the demo UNet's self-attention forward ([8,4,256,16], 2 threads of a Zen 4), where
 * exp is half the time; FMA: 1.54 -> 1.37 ms. A row's keys past a multiple of 16 go through one
 * vector padded with -inf (exp 0), not a vector exp each: cross-attention over 77 keys
 * ([8,4,256,16]) 1.02 -> 0.67 ms, then 0.61 with FMA.
 * exp: x = n ln2 + r with |r| <= ln2/2, Cephes' degree-6 polynomial for exp(r) (about 1 ulp),
 * 2^n built in the exponent bits; 0 below -87.3 (the smallest normal float), clamped at 88. */
#define UNUSED __attribute__((unused))   /* v4f's row max: a max has no rounding, so v4's serves */
#define DEFINE_VEC(W, V, TARGET, FMA)                                                                    \
    typedef float V##f __attribute__((vector_size(4 * W)));                                              \
    typedef int32_t V##i __attribute__((vector_size(4 * W)));                                            \
    typedef uint32_t V##u __attribute__((vector_size(4 * W)));                                           \
    TARGET static inline V##f V##_load(const float *p) { V##f v; memcpy(&v, p, sizeof v); return v; }    \
    TARGET static inline void V##_store(float *p, V##f v) { memcpy(p, &v, sizeof v); }                   \
    TARGET static inline V##f V##_select(V##i m, V##f a, V##f b) { return (V##f)((m & (V##i)a) | (~m & (V##i)b)); } \
    TARGET static inline V##f V##_fma(V##f a, V##f b, V##f c) { return FMA; }                            \
    TARGET static inline V##f V##_exp(V##f x)                                                            \
    {                                                                                                    \
        const V##f lo = (V##f){0} + -87.33654f, hi = (V##f){0} + 88.0f;                                  \
        V##f xc = V##_select(x < lo, lo, x);                                                             \
        xc = V##_select(xc > hi, hi, xc);                                                                \
        const V##f K = (V##f){0};                                                                        \
        const V##f t = V##_fma(xc, K + 1.44269504088896341f, K + 12582912.0f);   /* 1.5 * 2^23 */        \
        const V##f n = t - 12582912.0f;                                                                  \
        /* ln2 in two parts */                                                                           \
        const V##f r = V##_fma(n, K + 2.12194440e-4f, V##_fma(n, K + -0.693359375f, xc));                \
        V##f p = (V##f){0} + 1.9875691500e-4f;                                                           \
        p = V##_fma(p, r, K + 1.3981999507e-3f);                                                         \
        p = V##_fma(p, r, K + 8.3334519073e-3f);                                                         \
        p = V##_fma(p, r, K + 4.1665795894e-2f);                                                         \
        p = V##_fma(p, r, K + 1.6666665459e-1f);                                                         \
        p = V##_fma(p, r, K + 5.0000001201e-1f);                                                         \
        p = V##_fma(p, r * r, r) + 1.0f;                                                                 \
        const V##u two_n = ((V##u)t << 23) + (127u << 23);   /* the low bits of t hold n */              \
        return (V##f)((V##i)(p * (V##f)two_n) & ~(x < lo));                                              \
    }                                                                                                    \
    TARGET UNUSED static float V##_row_max(const float *x, int64_t n)                                    \
    {                                                                                                    \
        V##f acc[16 / W];                                                                                \
        for (int u = 0; u < 16 / W; u++) acc[u] = (V##f){0} + -INFINITY;                                 \
        int64_t j = 0;                                                                                   \
        for (; j + 16 <= n; j += 16)                                                                     \
            for (int u = 0; u < 16 / W; u++) {                                                           \
                const V##f y = V##_load(x + j + u * W);                                                  \
                acc[u] = V##_select(y > acc[u], y, acc[u]);                                              \
            }                                                                                            \
        float mx = -INFINITY;                                                                            \
        for (int u = 0; u < 16 / W; u++)                                                                 \
            for (int l = 0; l < W; l++) mx = acc[u][l] > mx ? acc[u][l] : mx;                            \
        for (; j < n; j++) mx = x[j] > mx ? x[j] : mx;                                                   \
        return mx;                                                                                       \
    }                                                                                                    \
    /* x = exp(x - sub) over n entries; returns their sum */                                             \
    TARGET static float V##_exp_sum(float *x, int64_t n, float sub)                                      \
    {                                                                                                    \
        V##f acc[16 / W];                                                                                \
        for (int u = 0; u < 16 / W; u++) acc[u] = (V##f){0};                                             \
        int64_t j = 0;                                                                                   \
        for (; j + 16 <= n; j += 16)                                                                     \
            for (int u = 0; u < 16 / W; u++) {                                                           \
                const V##f e = V##_exp(V##_load(x + j + u * W) - sub);                                   \
                V##_store(x + j + u * W, e);                                                             \
                acc[u] += e;                                                                             \
            }                                                                                            \
        if (j < n) { /* the last keys: one block of 16 padded with -inf, each in lane j mod 16 */        \
            float t[16];                                                                                 \
            for (int l = 0; l < 16; l++) t[l] = j + l < n ? x[j + l] - sub : -INFINITY;                  \
            for (int u = 0; u < 16 / W; u++) {                                                           \
                const V##f e = V##_exp(V##_load(t + u * W));                                             \
                V##_store(t + u * W, e);                                                                 \
                acc[u] += e;                                                                             \
            }                                                                                            \
            memcpy(x + j, t, (size_t)(n - j) * sizeof(float));                                           \
        }                                                                                                \
        float sum = 0;                                                                                   \
        for (int u = 0; u < 16 / W; u++)                                                                 \
            for (int l = 0; l < W; l++) sum += acc[u][l];                                                \
        return sum;                                                                                      \
    }
/* without FMA: CPUs that lack it, and other architectures (one width there, so nothing to match) */
DEFINE_VEC(4, v4, , a * b + c)
#if defined(__x86_64__) || defined(__i386__)
/* with FMA at every width, so that on a CPU with AVX2 or AVX-512 the 4 lanes a test caps it to
 * give the same bits as the 8 or 16 it runs */
DEFINE_VEC(4, v4f, __attribute__((target("fma"))), (v4ff)_mm_fmadd_ps((__m128)a, (__m128)b, (__m128)c))
DEFINE_VEC(8, v8, __attribute__((target("avx2,fma"))), (v8f)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c))
/* 16 lanes: one accumulator whose lane l takes j mod 16, so the same sums in the same order */
DEFINE_VEC(16, v16, __attribute__((target("avx512f,avx512dq,fma"))),
           (v16f)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c))
#define HAVE_FMA() __builtin_cpu_supports("fma")
#define HAVE_V8() (__builtin_cpu_supports("avx2") && HAVE_FMA())
#define HAVE_V16() (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && HAVE_FMA())
#else
#define HAVE_FMA() 0
#define HAVE_V8() 0
#define HAVE_V16() 0
#define v4f_exp_sum v4_exp_sum
#define v8_row_max v4_row_max
#define v8_exp_sum v4_exp_sum
#define v16_row_max v4_row_max
#define v16_exp_sum v4_exp_sum
#endif

/* Tests cap the lanes to check that every width gives the same bits; 0 takes the 4 lanes without
 * FMA of a CPU that lacks it. Internal: declared where used, not in a header. */
static int attn_max_lanes = 16;
void cpu_attention_max_lanes(int lanes);
void cpu_attention_max_lanes(int lanes) { attn_max_lanes = lanes; }

static float row_max_f32(const float *x, int64_t n)
{
    if (attn_max_lanes >= 16 && HAVE_V16()) return v16_row_max(x, n);
    return attn_max_lanes >= 8 && HAVE_V8() ? v8_row_max(x, n) : v4_row_max(x, n);
}
static float exp_sum_f32(float *x, int64_t n, float sub)
{
    if (attn_max_lanes >= 16 && HAVE_V16()) return v16_exp_sum(x, n, sub);
    if (attn_max_lanes >= 8 && HAVE_V8()) return v8_exp_sum(x, n, sub);
    return attn_max_lanes >= 4 && HAVE_FMA() ? v4f_exp_sum(x, n, sub) : v4_exp_sum(x, n, sub);
}

/* f64 (tests and references): plain loops and libm */
static double row_max_f64(const double *x, int64_t n)
{
    double mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    return mx;
}

static double exp_sum_f64(double *x, int64_t n, double sub)
{
    double sum = 0;
    for (int64_t j = 0; j < n; j++) sum += (x[j] = exp(x[j] - sub));
    return sum;
}

static inline int64_t clamp64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : x > hi ? hi : x; }

/* Row kernels of one query block, for each float type. A block's scores s are [m, nk] with row
 * stride nk; row i sees its first clamp(lim0 + i, 0, nk) keys (lim0 >= nk without a mask).
 * `par` spreads the rows over threads (only when the caller is not already parallel). */
#define DEFINE_ROWS(T, SUF)                                                                              \
    /* forward: s = exp(s - rowmax) (0 past the row's keys); inv = 1/rowsum, lse per row */              \
    static void softmax_rows_##SUF(T *s, int64_t m, int64_t nk, int64_t lim0, double *inv, double *lse, \
                                   bool par)                                                             \
    {                                                                                                    \
        _Pragma("omp parallel for schedule(static) if (par)")                                            \
        for (int64_t i = 0; i < m; i++) {                                                                \
            T *x = s + i * nk;                                                                           \
            const int64_t lim = clamp64(lim0 + i, 0, nk);                                                \
            if (lim < nk) memset(x + lim, 0, (size_t)(nk - lim) * sizeof(T));   /* causal */             \
            if (lim == 0) { inv[i] = 0; lse[i] = -INFINITY; continue; }                                  \
            const T mx = row_max_##SUF(x, lim);                                                          \
            const T sum = exp_sum_##SUF(x, lim, mx);                                                     \
            inv[i] = 1.0 / (double)sum;                                                                  \
            lse[i] = (double)mx + log((double)sum);                                                      \
        }                                                                                                \
    }                                                                                                    \
    /* backward: s = exp(s - lse) (0 past the row's keys) */                                             \
    static void probs_rows_##SUF(T *s, int64_t m, int64_t nk, int64_t lim0, const double *lse, bool par) \
    {                                                                                                    \
        _Pragma("omp parallel for schedule(static) if (par)")                                            \
        for (int64_t i = 0; i < m; i++) {                                                                \
            T *x = s + i * nk;                                                                           \
            const int64_t lim = clamp64(lim0 + i, 0, nk);                                                \
            if (lim < nk) memset(x + lim, 0, (size_t)(nk - lim) * sizeof(T));   /* causal */             \
            exp_sum_##SUF(x, lim, (T)lse[i]);                                                            \
        }                                                                                                \
    }                                                                                                    \
    /* backward: dp = p * (dp - Di) */                                                                   \
    static void dscores_rows_##SUF(T *dp, const T *p, int64_t m, int64_t nk, const double *di, bool par) \
    {                                                                                                    \
        _Pragma("omp parallel for schedule(static) if (par)")                                            \
        for (int64_t i = 0; i < m; i++) {                                                                \
            const T d = (T)di[i];                                                                        \
            for (int64_t j = 0; j < nk; j++) dp[i * nk + j] = p[i * nk + j] * (dp[i * nk + j] - d);      \
        }                                                                                                \
    }                                                                                                    \
    /* o[i, :n] *= f[i] */                                                                               \
    static void scale_rows_##SUF(T *o, int64_t ld, int64_t m, int64_t n, const double *f)                \
    {                                                                                                    \
        for (int64_t i = 0; i < m; i++) {                                                                \
            const T c = (T)f[i];                                                                         \
            for (int64_t j = 0; j < n; j++) o[i * ld + j] *= c;                                          \
        }                                                                                                \
    }                                                                                                    \
    /* di[i] = sum_j a[i, j] * b[i, j] (in double: n is small, rows are few) */                          \
    static void row_dots_##SUF(const T *a, int64_t lda, const T *b, int64_t ldb, int64_t m, int64_t n,   \
                               double *di)                                                               \
    {                                                                                                    \
        for (int64_t i = 0; i < m; i++) {                                                                \
            double s = 0;                                                                                \
            for (int64_t j = 0; j < n; j++) s += (double)a[i * lda + j] * (double)b[i * ldb + j];        \
            di[i] = s;                                                                                   \
        }                                                                                                \
    }
DEFINE_ROWS(float, f32)
DEFINE_ROWS(double, f64)

/* ---------------------------------------------------------------- operands */

/* a [B,H,R,C] tensor whose rows are contiguous: BLAS reads each head as a matrix with row
 * stride ld */
struct operand {
    char *base;               /* element 0, offset applied */
    int64_t sb, sh, ld;       /* element strides of dims 0, 1, 2 */
};

struct attn {
    bool f32;
    size_t es;                /* element size */
    int64_t B, H, L, S, D, Dv;
    double scale;
    bool causal;
    struct operand q, k, v, o, dout, dq, dk, dv;
    char *lse;                /* [B,H,L] through lse_st */
    int64_t lse_st[3];
};

static bool rows_contiguous(const struct tensor *t)
{
    const int64_t R = t->shape[2], C = t->shape[3];
    return (C <= 1 || t->stride[3] == 1) && (R <= 1 || t->stride[2] >= (C > 1 ? C : 1));
}

static struct operand operand_of(const struct tensor *t)
{
    struct operand op = {NULL, 0, 0, 1};
    if (!t) return op;
    const int64_t C = t->shape[3];
    op.base = (char *)t->storage->data + (size_t)t->offset * dtype_size(t->dtype);
    op.sb = t->stride[0];
    op.sh = t->stride[1];
    op.ld = t->shape[2] > 1 ? t->stride[2] : (C > 1 ? C : 1);
    return op;
}

/* row r of head (b, h) */
static inline void *row_at(const struct attn *a, const struct operand *op, int64_t b, int64_t h, int64_t r)
{
    return op->base + (size_t)(b * op->sb + h * op->sh + r * op->ld) * a->es;
}

/* an input BLAS can read: t itself, or a contiguous copy kept in *tmp (the caller frees it) */
static const struct tensor *readable(const struct tensor *t, struct tensor **tmp)
{
    if (rows_contiguous(t)) return t;
    *tmp = tensor_keep(tensor_clone(t));
    return *tmp;
}

/* an output BLAS can write: t itself, or a contiguous buffer in *tmp copied into t at the end */
static struct tensor *writable(struct tensor *t, struct tensor **tmp)
{
    if (!t || rows_contiguous(t)) return t;
    *tmp = tensor_keep(tensor_empty(t->dtype, t->ndim, t->shape, DEVICE_CPU));
    return *tmp;
}

/* C[M,N] = alpha op(A) op(B) + beta C, row-major; K == 0 leaves beta C */
static void gemm(const struct attn *a, bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const void *A,
                 int64_t lda, const void *B, int64_t ldb, double beta, void *C, int64_t ldc)
{
    if (M == 0 || N == 0) return;
    const CBLAS_TRANSPOSE opa = ta ? CblasTrans : CblasNoTrans, opb = tb ? CblasTrans : CblasNoTrans;
    cpu_blas_serial_in_region();
    if (K == 0) {
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                if (a->f32) ((float *)C)[i * ldc + j] = beta == 0 ? 0.0f : (float)beta * ((float *)C)[i * ldc + j];
                else ((double *)C)[i * ldc + j] = beta == 0 ? 0.0 : beta * ((double *)C)[i * ldc + j];
            }
        return;
    }
    if (a->f32)
        cblas_sgemm(CblasRowMajor, opa, opb, (blasint)M, (blasint)N, (blasint)K, (float)alpha, A, (blasint)lda, B,
                    (blasint)ldb, (float)beta, C, (blasint)ldc);
    else
        cblas_dgemm(CblasRowMajor, opa, opb, (blasint)M, (blasint)N, (blasint)K, alpha, A, (blasint)lda, B,
                    (blasint)ldb, beta, C, (blasint)ldc);
}

/* keys visible to a block of m rows from i0, and the first row's key count (see DEFINE_ROWS) */
static void block_keys(const struct attn *a, int64_t i0, int64_t m, int64_t *nk, int64_t *lim0)
{
    if (!a->causal) { *nk = *lim0 = a->S; return; }
    *nk = clamp64(i0 + m + a->S - a->L, 0, a->S);
    *lim0 = i0 + 1 + a->S - a->L;
}

/* lse[b, h, i] */
static inline char *lse_at(const struct attn *a, int64_t b, int64_t h, int64_t i)
{
    return a->lse + (size_t)(b * a->lse_st[0] + h * a->lse_st[1] + i * a->lse_st[2]) * a->es;
}

/* ---------------------------------------------------------------- forward */

static void forward_block(const struct attn *a, int64_t b, int64_t h, int64_t i0, void *s, bool par)
{
    const int64_t m = a->L - i0 < ATTN_BLOCK ? a->L - i0 : ATTN_BLOCK;
    int64_t nk, lim0;
    block_keys(a, i0, m, &nk, &lim0);
    double inv[ATTN_BLOCK], lse[ATTN_BLOCK];
    gemm(a, false, true, m, nk, a->D, a->scale, row_at(a, &a->q, b, h, i0), a->q.ld, row_at(a, &a->k, b, h, 0), a->k.ld,
         0, s, nk);
    if (a->f32) softmax_rows_f32(s, m, nk, lim0, inv, lse, par);
    else softmax_rows_f64(s, m, nk, lim0, inv, lse, par);
    void *o = row_at(a, &a->o, b, h, i0);
    gemm(a, false, false, m, a->Dv, nk, 1.0, s, nk, row_at(a, &a->v, b, h, 0), a->v.ld, 0, o, a->o.ld);
    if (a->f32) scale_rows_f32(o, a->o.ld, m, a->Dv, inv);
    else scale_rows_f64(o, a->o.ld, m, a->Dv, inv);
    for (int64_t i = 0; i < m; i++) {
        char *p = lse_at(a, b, h, i0 + i);
        if (a->f32) *(float *)p = (float)lse[i];
        else *(double *)p = lse[i];
    }
}

static enum status check_inputs(const char *op, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                                 const struct tensor *o)
{
    enum status s;
    if ((s = cpu_need_float(q, op))) return s;
    if (k->dtype != q->dtype || v->dtype != q->dtype || o->dtype != q->dtype)
        return tensor_fail(STATUS_DTYPE, "%s: dtypes differ (q %s, k %s, v %s, out %s)", op, dtype_name(q->dtype),
                           dtype_name(k->dtype), dtype_name(v->dtype), dtype_name(o->dtype));
    char a[64], b[64], c[64], d[64];
    if (q->ndim != 4 || k->ndim != 4 || v->ndim != 4 || o->ndim != 4 || k->shape[0] != q->shape[0] ||
        k->shape[1] != q->shape[1] || k->shape[3] != q->shape[3] || v->shape[0] != q->shape[0] ||
        v->shape[1] != q->shape[1] || v->shape[2] != k->shape[2] || o->shape[0] != q->shape[0] ||
        o->shape[1] != q->shape[1] || o->shape[2] != q->shape[2] || o->shape[3] != v->shape[3])
        return tensor_fail(STATUS_SHAPE, "%s: q %s, k %s, v %s, out %s do not fit (need q [B,H,L,D], k [B,H,S,D], "
                           "v [B,H,S,Dv], out [B,H,L,Dv])", op, tensor_shape_str(q, a, sizeof a),
                           tensor_shape_str(k, b, sizeof b), tensor_shape_str(v, c, sizeof c),
                           tensor_shape_str(o, d, sizeof d));
    return STATUS_OK;
}

static enum status check_lse(const char *op, const struct tensor *lse, const struct tensor *q)
{
    char a[64];
    if (lse->dtype != q->dtype || lse->ndim != 3 || lse->shape[0] != q->shape[0] || lse->shape[1] != q->shape[1] ||
        lse->shape[2] != q->shape[2])
        return tensor_fail(STATUS_SHAPE, "%s: lse %s %s does not fit (need [B,H,L] in %s)", op, dtype_name(lse->dtype),
                           tensor_shape_str(lse, a, sizeof a), dtype_name(q->dtype));
    return STATUS_OK;
}

static void attn_init(struct attn *a, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                      const struct tensor *lse, double scale, bool causal)
{
    memset(a, 0, sizeof *a);
    a->f32 = q->dtype == DTYPE_F32;
    a->es = dtype_size(q->dtype);
    a->B = q->shape[0];
    a->H = q->shape[1];
    a->L = q->shape[2];
    a->D = q->shape[3];
    a->S = k->shape[2];
    a->Dv = v->shape[3];
    a->scale = scale;
    a->causal = causal;
    a->q = operand_of(q);
    a->k = operand_of(k);
    a->v = operand_of(v);
    a->lse = (char *)lse->storage->data + (size_t)lse->offset * a->es;
    for (int d = 0; d < 3; d++) a->lse_st[d] = lse->stride[d];
}

/* per-thread scratch of `n` elements (at least one, so S = 0 still allocates) */
static void *scratch_alloc(const struct attn *a, int64_t n) { return malloc((size_t)(n > 0 ? n : 1) * a->es); }

/* enough multiply-adds to be worth waking threads for */
static bool attn_big(const struct attn *a) { return a->B * a->H * a->L * a->S * (a->D + a->Dv) >= CPU_PAR_MIN; }

enum status cpu_attention(struct tensor *out, struct tensor *lse, const struct tensor *q, const struct tensor *k,
                          const struct tensor *v, double scale, bool causal)
{
    enum status s;
    if ((s = check_inputs("attention", q, k, v, out)) || (s = check_lse("attention", lse, q))) return s;
    struct tensor *tmp[4] = {NULL};   /* copies of inputs BLAS cannot read, a buffer for out */
    const struct tensor *rq = readable(q, &tmp[0]), *rk = readable(k, &tmp[1]), *rv = readable(v, &tmp[2]);
    struct tensor *wo = writable(out, &tmp[3]);
    if (!rq || !rk || !rv || !wo) {
        s = tensor_status();
    } else {
        struct attn a;
        attn_init(&a, rq, rk, rv, lse, scale, causal);
        a.o = operand_of(wo);
        /* one task per (b, h, query block); a lone task gets the threads through BLAS and its rows */
        const int64_t nblk = (a.L + ATTN_BLOCK - 1) / ATTN_BLOCK, ntask = a.B * a.H * nblk;
        const bool par_tasks = attn_big(&a) && ntask > 1, par_rows = attn_big(&a) && ntask == 1;
        bool oom = false;
#pragma omp parallel if (par_tasks)
        {
            void *sc = scratch_alloc(&a, (int64_t)ATTN_BLOCK * a.S);
            if (!sc) {
#pragma omp atomic write
                oom = true;
            }
#pragma omp for schedule(static)
            for (int64_t t = 0; t < ntask; t++)
                if (sc) forward_block(&a, t / (a.H * nblk), t / nblk % a.H, t % nblk * ATTN_BLOCK, sc, par_rows);
            free(sc);
        }
        if (oom) s = tensor_fail(STATUS_OOM, "attention: out of memory for the %lld x %lld score scratch",
                                 (long long)ATTN_BLOCK, (long long)a.S);
        else if (tmp[3]) s = cpu_copy(out, tmp[3]);
    }
    for (int i = 0; i < 4; i++) tensor_free(tmp[i]);
    return s;
}

/* ---------------------------------------------------------------- backward */

static void zero_rows(const struct attn *a, const struct operand *op, int64_t b, int64_t h, int64_t rows, int64_t n)
{
    for (int64_t r = 0; r < rows; r++) memset(row_at(a, op, b, h, r), 0, (size_t)n * a->es);
}

/* all query blocks of head (b, h): dQ per block, dK and dV summed over blocks in order */
static void backward_head(const struct attn *a, int64_t b, int64_t h, void *p, void *dp, bool par)
{
    const bool want_dq = a->dq.base, want_dk = a->dk.base, want_dv = a->dv.base;
    if (want_dk) zero_rows(a, &a->dk, b, h, a->S, a->D);
    if (want_dv) zero_rows(a, &a->dv, b, h, a->S, a->Dv);
    const void *K = row_at(a, &a->k, b, h, 0), *V = row_at(a, &a->v, b, h, 0);
    void *dK = want_dk ? row_at(a, &a->dk, b, h, 0) : NULL, *dV = want_dv ? row_at(a, &a->dv, b, h, 0) : NULL;
    double lse[ATTN_BLOCK], di[ATTN_BLOCK];
    for (int64_t i0 = 0; i0 < a->L; i0 += ATTN_BLOCK) {
        const int64_t m = a->L - i0 < ATTN_BLOCK ? a->L - i0 : ATTN_BLOCK;
        int64_t nk, lim0;
        block_keys(a, i0, m, &nk, &lim0);
        const void *Q = row_at(a, &a->q, b, h, i0), *dO = row_at(a, &a->dout, b, h, i0);
        for (int64_t i = 0; i < m; i++) {
            const char *l = lse_at(a, b, h, i0 + i);
            lse[i] = a->f32 ? *(const float *)l : *(const double *)l;
        }
        /* P = exp(scale Q K^T - lse) */
        gemm(a, false, true, m, nk, a->D, a->scale, Q, a->q.ld, K, a->k.ld, 0, p, nk);
        if (a->f32) probs_rows_f32(p, m, nk, lim0, lse, par);
        else probs_rows_f64(p, m, nk, lim0, lse, par);
        if (want_dv) gemm(a, true, false, nk, a->Dv, m, 1.0, p, nk, dO, a->dout.ld, 1.0, dV, a->dv.ld);
        if (!want_dq && !want_dk) continue;
        /* dS = P * (dO V^T - rowsum(dO * O)) */
        const void *O = row_at(a, &a->o, b, h, i0);
        if (a->f32) row_dots_f32(dO, a->dout.ld, O, a->o.ld, m, a->Dv, di);
        else row_dots_f64(dO, a->dout.ld, O, a->o.ld, m, a->Dv, di);
        gemm(a, false, true, m, nk, a->Dv, 1.0, dO, a->dout.ld, V, a->v.ld, 0, dp, nk);
        if (a->f32) dscores_rows_f32(dp, p, m, nk, di, par);
        else dscores_rows_f64(dp, p, m, nk, di, par);
        if (want_dq)
            gemm(a, false, false, m, a->D, nk, a->scale, dp, nk, K, a->k.ld, 0, row_at(a, &a->dq, b, h, i0), a->dq.ld);
        if (want_dk) gemm(a, true, false, nk, a->D, m, a->scale, dp, nk, Q, a->q.ld, 1.0, dK, a->dk.ld);
    }
}

enum status cpu_attention_backward(struct tensor *dq, struct tensor *dk, struct tensor *dv, const struct tensor *dout,
                                   const struct tensor *q, const struct tensor *k, const struct tensor *v,
                                   const struct tensor *out, const struct tensor *lse, double scale, bool causal)
{
    enum status s;
    const char *op = "attention_backward";
    if ((s = check_inputs(op, q, k, v, out)) || (s = check_lse(op, lse, q))) return s;
    char x[64], y[64];
    if (dout->dtype != q->dtype || !tensor_same_shape(dout, out))
        return tensor_fail(STATUS_SHAPE, "%s: dout %s %s does not match out %s %s", op, dtype_name(dout->dtype),
                           tensor_shape_str(dout, x, sizeof x), dtype_name(out->dtype), tensor_shape_str(out, y, sizeof y));
    const struct tensor *want[3] = {q, k, v};
    struct tensor *grads[3] = {dq, dk, dv};
    for (int i = 0; i < 3; i++)
        if (grads[i] && (grads[i]->dtype != q->dtype || !tensor_same_shape(grads[i], want[i])))
            return tensor_fail(STATUS_SHAPE, "%s: gradient %d is %s %s, its input %s %s", op, i,
                               dtype_name(grads[i]->dtype), tensor_shape_str(grads[i], x, sizeof x),
                               dtype_name(want[i]->dtype), tensor_shape_str(want[i], y, sizeof y));
    if (!dq && !dk && !dv) return STATUS_OK;
    struct tensor *tmp[8] = {NULL};   /* copies of inputs BLAS cannot read, buffers for gradients */
    const struct tensor *rq = readable(q, &tmp[0]), *rk = readable(k, &tmp[1]), *rv = readable(v, &tmp[2]),
                        *ro = readable(out, &tmp[3]), *rdo = readable(dout, &tmp[4]);
    struct tensor *wq = writable(dq, &tmp[5]), *wk = writable(dk, &tmp[6]), *wv = writable(dv, &tmp[7]);
    if (!rq || !rk || !rv || !ro || !rdo || (dq && !wq) || (dk && !wk) || (dv && !wv)) {
        s = tensor_status();
    } else {
        struct attn a;
        attn_init(&a, rq, rk, rv, lse, scale, causal);
        a.o = operand_of(ro);
        a.dout = operand_of(rdo);
        a.dq = operand_of(wq);
        a.dk = operand_of(wk);
        a.dv = operand_of(wv);
        /* heads in parallel when there are enough of them, else BLAS and the row loops get the threads */
        const int64_t nbh = a.B * a.H, nsc = (int64_t)ATTN_BLOCK * a.S;
        const bool par_heads = attn_big(&a) && nbh > 1 && nbh >= omp_get_max_threads();
        const bool par_rows = attn_big(&a) && !par_heads;
        bool oom = false;
#pragma omp parallel if (par_heads)
        {
            char *sc = scratch_alloc(&a, 2 * nsc);
            if (!sc) {
#pragma omp atomic write
                oom = true;
            }
#pragma omp for schedule(static)
            for (int64_t t = 0; t < nbh; t++)
                if (sc) backward_head(&a, t / a.H, t % a.H, sc, sc + (size_t)nsc * a.es, par_rows);
            free(sc);
        }
        if (oom) s = tensor_fail(STATUS_OOM, "attention_backward: out of memory for the 2 x %lld x %lld score scratch",
                                 (long long)ATTN_BLOCK, (long long)a.S);
        for (int i = 0; i < 3 && !s; i++)
            if (tmp[5 + i]) s = cpu_copy(grads[i], tmp[5 + i]);
    }
    for (int i = 0; i < 8; i++) tensor_free(tmp[i]);
    return s;
}
