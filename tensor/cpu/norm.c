/* norm.c — layer_norm and group_norm on the CPU, forward and backward.
 *
 * Both normalise contiguous blocks: a row of n elements (layer_norm, x viewed as [rows, n])
 * or the D*HW elements of one (sample, group) pair (group_norm, x [N, C, HW] with D = C/G
 * channels per group). The drivers are parallel loops over blocks; the typed inner loops run
 * over contiguous memory. A strided operand is copied to contiguous scratch once, which is
 * cheaper than strided access in each of the two passes over it.
 *
 * Statistics: one pass in double over (x - k), k = the block's first element, so that
 * E[(x-k)^2] - E[x-k]^2 does not cancel when |mean| >> std. The variance is biased (divides
 * by the count) as in PyTorch; rstd = 1 / sqrt(var + eps).
 *
 * Backward over a block of M elements, with xhat = (x - mean) * rstd, g = dy * w (dy without
 * an affine weight):
 *   dx = rstd * (g - sum(g)/M - xhat * sum(g * xhat)/M)  =  a*g + c*(x - mean) + e
 * with a = rstd, c = -rstd^3 * sum(g * (x - mean))/M, e = -rstd * sum(g)/M (group_norm folds
 * the channel's weight into a). dw = sum over blocks of dy * xhat, db = sum of dy, made
 * deterministic: layer_norm keeps partial sums per chunk of a fixed row partition and adds
 * them in chunk order; group_norm keeps per-(sample, channel) sums and adds over samples.
 */
#include "tensor/cpu/cpu.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- vector plumbing
 *
 * The loops are compiled twice on x86-64: for the build's baseline (SSE2..4.2) and for AVX2,
 * picked at run time, since the double-precision sums are compute-bound at baseline width.
 * Sums use GCC/Clang vector extensions with W doubles per vector (2 baseline, 4 AVX2) and
 * LANES = 8 lanes in all: element i + j of each step of 8 adds into lane j, and the lanes are
 * combined in one fixed order, so both builds give bit-identical results (and no result
 * depends on the thread count). Eight independent chains also hide the add latency. */
#define LANES 8
typedef double v2d __attribute__((vector_size(16)));

#if defined(__x86_64__) && defined(__GNUC__)
#define NORM_AVX2 1
#include <immintrin.h>
typedef double v4d __attribute__((vector_size(32)));
#define AVX2_FN __attribute__((target("avx2")))
#define LOAD4_f32(p) ((v4d)_mm256_cvtps_pd(_mm_loadu_ps(p)))
#define LOAD4_f64(p) ((v4d)_mm256_loadu_pd(p))
#endif

#ifdef __SSE2__
#include <emmintrin.h>
#define LOAD2_f32(p) ((v2d)_mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64((const void *)(p)))))
#define LOAD2_f64(p) ((v2d)_mm_loadu_pd(p))
#else
#define LOAD2_f32(p) ((v2d){(double)(p)[0], (double)(p)[1]})
#define LOAD2_f64(p) ((v2d){(p)[0], (p)[1]})
#endif
#define BASE_FN

/* the lanes of accumulators acc[0..LANES/W), in a fixed order */
#define SUM_LANES(acc) sum_lanes8((const void *)(acc))
static inline double sum_lanes8(const void *acc)
{
    double l[LANES];
    memcpy(l, acc, sizeof l);
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* ---------------------------------------------------------------- typed inner loops */

/* T element type, SUF its suffix, ISA name, VD vector of W doubles, FN the target attribute */
#define DEFINE_NORM_LOOPS(T, SUF, ISA, VD, W, FN)                                                         \
    /* mean and biased variance of x[0..n) */                                                             \
    FN static void moments_##SUF##_##ISA(const void *vx, int64_t n, double *mean, double *var)            \
    {                                                                                                     \
        const T *x = vx;                                                                                  \
        const double k = n ? (double)x[0] : 0;                                                            \
        const VD kk = (VD){0} + k;                                                                        \
        VD a[LANES / W], q[LANES / W];                                                                    \
        for (int l = 0; l < LANES / W; l++) a[l] = q[l] = (VD){0};                                        \
        int64_t i = 0;                                                                                    \
        for (; i + LANES <= n; i += LANES)                                                                \
            for (int l = 0; l < LANES / W; l++) {                                                         \
                VD v = LOAD##W##_##SUF(x + i + W * l) - kk;                                               \
                a[l] += v;                                                                                \
                q[l] += v * v;                                                                            \
            }                                                                                             \
        double s = SUM_LANES(a), ss = SUM_LANES(q);                                                       \
        for (; i < n; i++) { double v = (double)x[i] - k; s += v; ss += v * v; }                          \
        const double m = n ? s / (double)n : 0;                                                           \
        *mean = k + m;                                                                                    \
        *var = n ? fmax(ss / (double)n - m * m, 0) : 0;                                                   \
    }                                                                                                     \
    /* s1 = sum(g), s2 = sum(g * (x - mu)) with g = dy * w, or g = dy when w is NULL */                   \
    FN static void grad_sums_##SUF##_##ISA(const void *vdy, const void *vx, const void *vw, int64_t n,    \
                                           double mu, double *s1, double *s2)                             \
    {                                                                                                     \
        const T *dy = vdy, *x = vx, *w = vw;                                                              \
        const VD mm = (VD){0} + mu;                                                                       \
        VD a[LANES / W], q[LANES / W];                                                                    \
        for (int l = 0; l < LANES / W; l++) a[l] = q[l] = (VD){0};                                        \
        int64_t i = 0;                                                                                    \
        if (w) {                                                                                          \
            for (; i + LANES <= n; i += LANES)                                                            \
                for (int l = 0; l < LANES / W; l++) {                                                     \
                    VD g = LOAD##W##_##SUF(dy + i + W * l) * LOAD##W##_##SUF(w + i + W * l);              \
                    a[l] += g;                                                                            \
                    q[l] += g * (LOAD##W##_##SUF(x + i + W * l) - mm);                                    \
                }                                                                                         \
        } else {                                                                                          \
            for (; i + LANES <= n; i += LANES)                                                            \
                for (int l = 0; l < LANES / W; l++) {                                                     \
                    VD g = LOAD##W##_##SUF(dy + i + W * l);                                               \
                    a[l] += g;                                                                            \
                    q[l] += g * (LOAD##W##_##SUF(x + i + W * l) - mm);                                    \
                }                                                                                         \
        }                                                                                                 \
        double s = SUM_LANES(a), sx = SUM_LANES(q);                                                       \
        for (; i < n; i++) {                                                                              \
            double g = (double)dy[i] * (w ? (double)w[i] : 1.0);                                          \
            s += g;                                                                                       \
            sx += g * ((double)x[i] - mu);                                                                \
        }                                                                                                 \
        *s1 = s;                                                                                          \
        *s2 = sx;                                                                                         \
    }                                                                                                     \
    /* layer_norm output: y = (x - mu) * rs * w + b, w and b optional */                                  \
    FN static void ln_apply_##SUF##_##ISA(void *vy, const void *vx, const void *vw, const void *vb,        \
                                          int64_t n, double mu, double rs)                                \
    {                                                                                                     \
        T *y = vy;                                                                                        \
        const T *x = vx, *w = vw, *b = vb, m = (T)mu, r = (T)rs;                                          \
        if (w && b) for (int64_t i = 0; i < n; i++) y[i] = (x[i] - m) * r * w[i] + b[i];                  \
        else if (w) for (int64_t i = 0; i < n; i++) y[i] = (x[i] - m) * r * w[i];                         \
        else if (b) for (int64_t i = 0; i < n; i++) y[i] = (x[i] - m) * r + b[i];                         \
        else        for (int64_t i = 0; i < n; i++) y[i] = (x[i] - m) * r;                                \
    }                                                                                                     \
    /* group_norm output for one channel: y = (x - mu) * scale + shift */                                 \
    FN static void gn_apply_##SUF##_##ISA(void *vy, const void *vx, int64_t n, double mu, double scale,    \
                                          double shift)                                                   \
    {                                                                                                     \
        T *y = vy;                                                                                        \
        const T *x = vx, m = (T)mu, s = (T)scale, t = (T)shift;                                           \
        for (int64_t i = 0; i < n; i++) y[i] = (x[i] - m) * s + t;                                        \
    }                                                                                                     \
    /* dx = a * g + c * (x - mu) + e with g = dy * w, or g = dy when w is NULL */                         \
    FN static void dx_apply_##SUF##_##ISA(void *vdx, const void *vdy, const void *vx, const void *vw,      \
                                          int64_t n, double mu, double a, double c, double e)             \
    {                                                                                                     \
        T *dx = vdx;                                                                                      \
        const T *dy = vdy, *x = vx, *w = vw, m = (T)mu, ta = (T)a, tc = (T)c, te = (T)e;                  \
        if (w) for (int64_t i = 0; i < n; i++) dx[i] = ta * dy[i] * w[i] + tc * (x[i] - m) + te;          \
        else   for (int64_t i = 0; i < n; i++) dx[i] = ta * dy[i] + tc * (x[i] - m) + te;                 \
    }                                                                                                     \
    /* layer_norm weight/bias partials of one row: pdw += dy * (x - mu) * rs, pdb += dy */                \
    FN static void ln_partials_##SUF##_##ISA(double *pdw, double *pdb, const void *vdy, const void *vx,    \
                                             int64_t n, double mu, double rs)                             \
    {                                                                                                     \
        const T *dy = vdy, *x = vx;                                                                       \
        for (int64_t i = 0; i < n; i++) {                                                                 \
            pdw[i] += (double)dy[i] * (((double)x[i] - mu) * rs);                                         \
            pdb[i] += (double)dy[i];                                                                      \
        }                                                                                                 \
    }                                                                                                     \
    static const struct norm_loops loops_##SUF##_##ISA = {                                                \
        sizeof(T), moments_##SUF##_##ISA, grad_sums_##SUF##_##ISA, ln_apply_##SUF##_##ISA,                \
        gn_apply_##SUF##_##ISA, dx_apply_##SUF##_##ISA, ln_partials_##SUF##_##ISA, get_##SUF, put_##SUF,  \
    };

/* the inner loops of one dtype and ISA; the drivers below are written once over these */
struct norm_loops {
    size_t size;
    void (*moments)(const void *x, int64_t n, double *mean, double *var);
    void (*grad_sums)(const void *dy, const void *x, const void *w, int64_t n, double mu, double *s1, double *s2);
    void (*ln_apply)(void *y, const void *x, const void *w, const void *b, int64_t n, double mu, double rs);
    void (*gn_apply)(void *y, const void *x, int64_t n, double mu, double scale, double shift);
    void (*dx_apply)(void *dx, const void *dy, const void *x, const void *w, int64_t n, double mu, double a,
                     double c, double e);
    void (*ln_partials)(double *pdw, double *pdb, const void *dy, const void *x, int64_t n, double mu, double rs);
    double (*get)(const void *p, int64_t i);
    void (*put)(void *p, int64_t i, double v);
};

static double get_f32(const void *p, int64_t i) { return (double)((const float *)p)[i]; }
static double get_f64(const void *p, int64_t i) { return ((const double *)p)[i]; }
static void put_f32(void *p, int64_t i, double v) { ((float *)p)[i] = (float)v; }
static void put_f64(void *p, int64_t i, double v) { ((double *)p)[i] = v; }

DEFINE_NORM_LOOPS(float, f32, base, v2d, 2, BASE_FN)
DEFINE_NORM_LOOPS(double, f64, base, v2d, 2, BASE_FN)
#ifdef NORM_AVX2
DEFINE_NORM_LOOPS(float, f32, avx2, v4d, 4, AVX2_FN)
DEFINE_NORM_LOOPS(double, f64, avx2, v4d, 4, AVX2_FN)
#endif

/* Tests switch the AVX2 loops off to check the baseline ones on an AVX2 machine (the results
 * are the same bits either way). Internal: declared where used, not in a header. */
static bool norm_baseline_only;
void cpu_norm_baseline_only(bool on);
void cpu_norm_baseline_only(bool on) { norm_baseline_only = on; }

static const struct norm_loops *norm_loops_for(enum dtype dt)
{
#ifdef NORM_AVX2
    if (!norm_baseline_only && __builtin_cpu_supports("avx2"))
        return dt == DTYPE_F32 ? &loops_f32_avx2 : &loops_f64_avx2;
#endif
    return dt == DTYPE_F32 ? &loops_f32_base : &loops_f64_base;
}

/* ---------------------------------------------------------------- dense operands */

/* Address of element i of a contiguous buffer of elements of `size` bytes. */
#define AT(p, i, size) ((char *)(p) + (size_t)(i) * (size))
#define CAT(p, i, size) ((const char *)(p) + (size_t)(i) * (size))

/* Contiguous data of an input: its own memory, or a copy owned by the caller's scope.
 * NULL stays NULL; a failed copy sets *s. */
static const void *dense_in(const struct tensor *t, enum status *s)
{
    if (!t || *s) return NULL;
    if (!tensor_is_contiguous(t)) {
        if (!(t = tensor_clone(t))) { *s = tensor_status(); return NULL; }
    }
    return CAT(t->storage->data, t->offset, dtype_size(t->dtype));
}

/* An output: written in place when contiguous, else into scratch copied back by dense_finish. */
struct dense_out {
    struct tensor *dst, *tmp;
};

static void *dense_out(struct dense_out *o, struct tensor *t, enum status *s)
{
    o->dst = t;
    o->tmp = NULL;
    if (!t || *s) return NULL;
    if (!tensor_is_contiguous(t)) {
        if (!(o->tmp = tensor_empty(t->dtype, t->ndim, t->shape, DEVICE_CPU))) { *s = tensor_status(); return NULL; }
        t = o->tmp;
    }
    return AT(t->storage->data, t->offset, dtype_size(t->dtype));
}

static enum status dense_finish(const struct dense_out *o, enum status s)
{
    if (!s && o->tmp) s = cpu_copy(o->dst, o->tmp);
    return s;
}

/* every non-NULL tensor has x's dtype */
static enum status check_dtypes(const char *op, const struct tensor *x, int n, const struct tensor *const *ts)
{
    enum status s = cpu_need_float(x, op);
    for (int i = 0; i < n && !s; i++)
        if (ts[i] && ts[i]->dtype != x->dtype)
            s = tensor_fail(STATUS_DTYPE, "%s: operand %d is %s but x is %s", op, i, dtype_name(ts[i]->dtype),
                            dtype_name(x->dtype));
    return s;
}

static enum status check_numel(const char *op, const char *what, const struct tensor *t, int64_t want)
{
    if (!t || tensor_numel(t) == want) return STATUS_OK;
    return tensor_fail(STATUS_SHAPE, "%s: %s has %lld elements, expected %lld", op, what,
                       (long long)tensor_numel(t), (long long)want);
}

/* ---------------------------------------------------------------- layer_norm */

/* x is any tensor of rows*n elements in row-major order, rows = numel(mean) */
static enum status layer_norm_impl(struct tensor *out, struct tensor *mean, struct tensor *rstd,
                                   const struct tensor *x, const struct tensor *w, const struct tensor *b, double eps)
{
    const char *op = "layer_norm";
    const struct tensor *ts[5] = {out, mean, rstd, w, b};
    enum status s = check_dtypes(op, x, 5, ts);
    if (s) return s;
    const int64_t rows = tensor_numel(mean), total = tensor_numel(x), n = rows ? total / rows : 0;
    if ((s = check_numel(op, "x", x, rows * n)) || (s = check_numel(op, "out", out, total)) ||
        (s = check_numel(op, "rstd", rstd, rows)) || (rows && (s = check_numel(op, "weight", w, n))) ||
        (rows && (s = check_numel(op, "bias", b, n))))   /* no rows: n is unknown here, nothing is read */
        return s;
    if (total == 0) return STATUS_OK;
    const struct norm_loops *L = norm_loops_for(x->dtype);
    struct dense_out oo, om, orr;
    const char *px = dense_in(x, &s), *pw = dense_in(w, &s), *pb = dense_in(b, &s);
    char *py = dense_out(&oo, out, &s), *pm = dense_out(&om, mean, &s), *pr = dense_out(&orr, rstd, &s);
    if (s) return s;
    const size_t sz = L->size;
#pragma omp parallel for schedule(static) if (total >= CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        double mu, var;
        L->moments(CAT(px, r * n, sz), n, &mu, &var);
        const double rs = 1.0 / sqrt(var + eps);
        L->put(pm, r, mu);
        L->put(pr, r, rs);
        L->ln_apply(AT(py, r * n, sz), CAT(px, r * n, sz), pw, pb, n, mu, rs);
    }
    s = dense_finish(&oo, s);
    s = dense_finish(&om, s);
    return dense_finish(&orr, s);
}

enum status cpu_layer_norm(struct tensor *out, struct tensor *mean, struct tensor *rstd, const struct tensor *x,
                           const struct tensor *w, const struct tensor *b, double eps)
{
    tensor_scope_begin();   /* owns the contiguous copies */
    enum status s = layer_norm_impl(out, mean, rstd, x, w, b, eps);
    tensor_scope_end();
    return s;
}

/* Chunks of rows whose weight/bias partials are kept apart: a function of the shape alone
 * (never of the thread count), enough to balance the threads, and at most 32 MiB of partials. */
static int64_t ln_chunks(int64_t rows, int64_t n)
{
    int64_t k = rows * n / CPU_PAR_MIN;
    if (k > 64) k = 64;
    if (k > ((int64_t)1 << 21) / n) k = ((int64_t)1 << 21) / n;
    if (k > rows) k = rows;
    return k < 1 ? 1 : k;
}

static enum status layer_norm_backward_impl(struct tensor *dx, struct tensor *dw, struct tensor *db,
                                            const struct tensor *dy, const struct tensor *x, const struct tensor *w,
                                            const struct tensor *mean, const struct tensor *rstd)
{
    const char *op = "layer_norm_backward";
    const struct tensor *ts[7] = {dx, dw, db, dy, w, mean, rstd};
    enum status s = check_dtypes(op, x, 7, ts);
    if (s) return s;
    const int64_t rows = tensor_numel(mean), total = tensor_numel(x), n = rows ? total / rows : 0;
    if ((s = check_numel(op, "x", x, rows * n)) || (s = check_numel(op, "dy", dy, total)) ||
        (s = check_numel(op, "dx", dx, total)) || (s = check_numel(op, "rstd", rstd, rows)) ||
        (rows && (s = check_numel(op, "weight", w, n))) || (rows && (s = check_numel(op, "dw", dw, n))) ||
        (rows && (s = check_numel(op, "db", db, n))))
        return s;
    if (total == 0) {   /* nothing summed: zero parameter gradients */
        if (dw && (s = cpu_fill(dw, 0))) return s;
        return db ? cpu_fill(db, 0) : STATUS_OK;
    }
    const struct norm_loops *L = norm_loops_for(x->dtype);
    struct dense_out odx, odw, odb;
    const char *px = dense_in(x, &s), *pdy = dense_in(dy, &s), *pw = dense_in(w, &s);
    const char *pm = dense_in(mean, &s), *pr = dense_in(rstd, &s);
    char *pdx = dense_out(&odx, dx, &s), *pdw = dense_out(&odw, dw, &s), *pdb = dense_out(&odb, db, &s);
    if (s) return s;
    const size_t sz = L->size;
    const bool params = dw || db;
    const int64_t nchunk = params ? ln_chunks(rows, n) : rows;
    double *part = NULL;   /* [nchunk][2][n]: dw then db partials of each chunk */
    if (params && !(part = calloc((size_t)(nchunk * 2 * n), sizeof *part)))
        return tensor_fail(STATUS_OOM, "%s: no memory for %lld partial sums", op, (long long)(nchunk * 2 * n));
#pragma omp parallel for schedule(static) if (total >= CPU_PAR_MIN)
    for (int64_t k = 0; k < nchunk; k++) {
        const int64_t r0 = rows * k / nchunk, r1 = rows * (k + 1) / nchunk;
        for (int64_t r = r0; r < r1; r++) {
            const double mu = L->get(pm, r), rs = L->get(pr, r);
            const void *xr = CAT(px, r * n, sz), *dyr = CAT(pdy, r * n, sz);
            if (pdx) {
                double sg, sgx;
                L->grad_sums(dyr, xr, pw, n, mu, &sg, &sgx);
                L->dx_apply(AT(pdx, r * n, sz), dyr, xr, pw, n, mu, rs, -rs * rs * rs * sgx / (double)n,
                            -rs * sg / (double)n);
            }
            if (part) L->ln_partials(part + k * 2 * n, part + k * 2 * n + n, dyr, xr, n, mu, rs);
        }
    }
    if (part) {   /* add the chunks in order, columns in parallel */
        enum { COLS = 256 };
#pragma omp parallel for schedule(static) if (nchunk * n >= CPU_PAR_MIN)
        for (int64_t j0 = 0; j0 < n; j0 += COLS) {
            const int64_t m = n - j0 < COLS ? n - j0 : COLS;
            double aw[COLS] = {0}, ab[COLS] = {0};
            for (int64_t k = 0; k < nchunk; k++) {
                const double *pw_ = part + k * 2 * n + j0, *pb_ = pw_ + n;
                for (int64_t j = 0; j < m; j++) { aw[j] += pw_[j]; ab[j] += pb_[j]; }
            }
            for (int64_t j = 0; j < m; j++) {
                if (pdw) L->put(pdw, j0 + j, aw[j]);
                if (pdb) L->put(pdb, j0 + j, ab[j]);
            }
        }
        free(part);
    }
    s = dense_finish(&odx, s);
    s = dense_finish(&odw, s);
    return dense_finish(&odb, s);
}

enum status cpu_layer_norm_backward(struct tensor *dx, struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                    const struct tensor *x, const struct tensor *w, const struct tensor *mean,
                                    const struct tensor *rstd)
{
    tensor_scope_begin();
    enum status s = layer_norm_backward_impl(dx, dw, db, dy, x, w, mean, rstd);
    tensor_scope_end();
    return s;
}

/* ---------------------------------------------------------------- group_norm */

struct gn_shape {
    int64_t N, C, HW, G, D;   /* D = channels per group */
};

static enum status gn_plan(struct gn_shape *g, const char *op, const struct tensor *x, int groups)
{
    if (x->ndim < 2) return tensor_fail(STATUS_SHAPE, "%s: x needs at least 2 dims [N,C,...], got %d", op, x->ndim);
    g->N = x->shape[0];
    g->C = x->shape[1];
    g->G = groups;
    if (groups < 1 || g->C % groups)
        return tensor_fail(STATUS_SHAPE, "%s: %lld channels do not split into %d groups", op, (long long)g->C, groups);
    g->D = g->C / groups;
    g->HW = 1;
    for (int d = 2; d < x->ndim; d++) g->HW *= x->shape[d];
    return STATUS_OK;
}

static enum status group_norm_impl(struct tensor *out, struct tensor *mean, struct tensor *rstd,
                                   const struct tensor *x, const struct tensor *w, const struct tensor *b, int groups,
                                   double eps)
{
    const char *op = "group_norm";
    const struct tensor *ts[5] = {out, mean, rstd, w, b};
    struct gn_shape g;
    enum status s = check_dtypes(op, x, 5, ts);
    if (s || (s = gn_plan(&g, op, x, groups))) return s;
    const int64_t total = tensor_numel(x), NG = g.N * g.G, M = g.D * g.HW;
    if ((s = check_numel(op, "out", out, total)) || (s = check_numel(op, "mean", mean, NG)) ||
        (s = check_numel(op, "rstd", rstd, NG)) || (s = check_numel(op, "weight", w, g.C)) ||
        (s = check_numel(op, "bias", b, g.C)))
        return s;
    if (total == 0) {   /* empty groups: mean 0, variance 0 */
        if ((s = cpu_fill(mean, 0))) return s;
        return cpu_fill(rstd, 1.0 / sqrt(eps));
    }
    const struct norm_loops *L = norm_loops_for(x->dtype);
    struct dense_out oo, om, orr;
    const char *px = dense_in(x, &s), *pw = dense_in(w, &s), *pb = dense_in(b, &s);
    char *py = dense_out(&oo, out, &s), *pm = dense_out(&om, mean, &s), *pr = dense_out(&orr, rstd, &s);
    if (s) return s;
    const size_t sz = L->size;
    /* block p = (sample n, group gi) is the contiguous run x[p*M, (p+1)*M) */
#pragma omp parallel for schedule(static) if (total >= CPU_PAR_MIN)
    for (int64_t p = 0; p < NG; p++) {
        double mu, var;
        L->moments(CAT(px, p * M, sz), M, &mu, &var);
        const double rs = 1.0 / sqrt(var + eps);
        L->put(pm, p, mu);
        L->put(pr, p, rs);
        for (int64_t c = 0; c < g.D; c++) {
            const int64_t ch = p % g.G * g.D + c, off = p * M + c * g.HW;
            const double scale = rs * (pw ? L->get(pw, ch) : 1.0), shift = pb ? L->get(pb, ch) : 0.0;
            L->gn_apply(AT(py, off, sz), CAT(px, off, sz), g.HW, mu, scale, shift);
        }
    }
    s = dense_finish(&oo, s);
    s = dense_finish(&om, s);
    return dense_finish(&orr, s);
}

enum status cpu_group_norm(struct tensor *out, struct tensor *mean, struct tensor *rstd, const struct tensor *x,
                           const struct tensor *w, const struct tensor *b, int groups, double eps)
{
    tensor_scope_begin();
    enum status s = group_norm_impl(out, mean, rstd, x, w, b, groups, eps);
    tensor_scope_end();
    return s;
}

static enum status group_norm_backward_impl(struct tensor *dx, struct tensor *dw, struct tensor *db,
                                            const struct tensor *dy, const struct tensor *x, const struct tensor *w,
                                            const struct tensor *mean, const struct tensor *rstd, int groups)
{
    const char *op = "group_norm_backward";
    const struct tensor *ts[7] = {dx, dw, db, dy, w, mean, rstd};
    struct gn_shape g;
    enum status s = check_dtypes(op, x, 7, ts);
    if (s || (s = gn_plan(&g, op, x, groups))) return s;
    const int64_t total = tensor_numel(x), NG = g.N * g.G, M = g.D * g.HW;
    if ((s = check_numel(op, "dy", dy, total)) || (s = check_numel(op, "dx", dx, total)) ||
        (s = check_numel(op, "mean", mean, NG)) || (s = check_numel(op, "rstd", rstd, NG)) ||
        (s = check_numel(op, "weight", w, g.C)) || (s = check_numel(op, "dw", dw, g.C)) ||
        (s = check_numel(op, "db", db, g.C)))
        return s;
    if (total == 0) {
        if (dw && (s = cpu_fill(dw, 0))) return s;
        return db ? cpu_fill(db, 0) : STATUS_OK;
    }
    const struct norm_loops *L = norm_loops_for(x->dtype);
    struct dense_out odx, odw, odb;
    const char *px = dense_in(x, &s), *pdy = dense_in(dy, &s), *pw = dense_in(w, &s);
    const char *pm = dense_in(mean, &s), *pr = dense_in(rstd, &s);
    char *pdx = dense_out(&odx, dx, &s), *pdw = dense_out(&odw, dw, &s), *pdb = dense_out(&odb, db, &s);
    if (s) return s;
    const size_t sz = L->size;
    /* per (sample, channel) nc = p*D + c: sum(dy) and sum(dy * (x - mean)), kept for dw and db */
    double *sdy = malloc((size_t)(2 * g.N * g.C + 1) * sizeof *sdy), *sdyx = sdy + g.N * g.C;
    if (!sdy) return tensor_fail(STATUS_OOM, "%s: no memory for %lld channel sums", op, (long long)(2 * g.N * g.C));
#define GN_SUMS(p, c)                                                                                       \
    L->grad_sums(CAT(pdy, (p) * M + (c) * g.HW, sz), CAT(px, (p) * M + (c) * g.HW, sz), NULL, g.HW,         \
                 L->get(pm, p), &sdy[(p) * g.D + (c)], &sdyx[(p) * g.D + (c)])
    /* Each thread takes a contiguous run of blocks and pipelines them: the sums of block p+1
     * (read from memory) interleave with dx of block p (re-read from cache), channel by
     * channel, so loads from memory never pause. Blocks are independent, so the partition
     * does not change any result. */
#pragma omp parallel if (2 * total >= CPU_PAR_MIN)
    {
        const int nt = omp_get_num_threads(), t = omp_get_thread_num();
        const int64_t p0 = NG * t / nt, p1 = NG * (t + 1) / nt;
        for (int64_t c = 0; c < g.D && p0 < p1; c++) GN_SUMS(p0, c);
        for (int64_t p = p0; p < p1; p++) {
            const bool next = p + 1 < p1;
            if (!pdx) {
                for (int64_t c = 0; c < g.D && next; c++) GN_SUMS(p + 1, c);
                continue;
            }
            /* sum(g) and sum(g * (x - mu)) over the group, g = dy * w[channel] */
            const int64_t c0 = p % g.G * g.D;
            const double mu = L->get(pm, p), rs = L->get(pr, p);
            double sg = 0, sgx = 0;
            for (int64_t c = 0; c < g.D; c++) {
                const double wc = pw ? L->get(pw, c0 + c) : 1.0;
                sg += wc * sdy[p * g.D + c];
                sgx += wc * sdyx[p * g.D + c];
            }
            const double cc = -rs * rs * rs * sgx / (double)M, e = -rs * sg / (double)M;
            for (int64_t c = 0; c < g.D; c++) {
                const int64_t off = p * M + c * g.HW;
                const double a = rs * (pw ? L->get(pw, c0 + c) : 1.0);
                L->dx_apply(AT(pdx, off, sz), CAT(pdy, off, sz), CAT(px, off, sz), NULL, g.HW, mu, a, cc, e);
                if (next) GN_SUMS(p + 1, c);
            }
        }
    }
#undef GN_SUMS
    /* dw[c] = sum_n rstd[n,g] * sum(dy * (x - mean)), db[c] = sum_n sum(dy): samples in order */
    for (int64_t c = 0; c < g.C && (pdw || pdb); c++) {
        double aw = 0, ab = 0;
        for (int64_t n = 0; n < g.N; n++) {
            aw += L->get(pr, n * g.G + c / g.D) * sdyx[n * g.C + c];
            ab += sdy[n * g.C + c];
        }
        if (pdw) L->put(pdw, c, aw);
        if (pdb) L->put(pdb, c, ab);
    }
    free(sdy);
    s = dense_finish(&odx, s);
    s = dense_finish(&odw, s);
    return dense_finish(&odb, s);
}

enum status cpu_group_norm_backward(struct tensor *dx, struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                    const struct tensor *x, const struct tensor *w, const struct tensor *mean,
                                    const struct tensor *rstd, int groups)
{
    tensor_scope_begin();
    enum status s = group_norm_backward_impl(dx, dw, db, dy, x, w, mean, rstd, groups);
    tensor_scope_end();
    return s;
}
