/* softmax.c — softmax / log_softmax over the last dim and their backward; rows in parallel,
 * sums in double. */
#include "tensor/cpu/cpu.h"

#include <math.h>

struct rows {
    struct cpu_iter it;   /* over (out, x, [third]) with the last dim removed */
    int64_t n;            /* row length */
    int64_t st[3];        /* stride of the last dim per operand */
};

static void plan_rows(struct rows *r, int nops, const struct tensor *const *ts)
{
    struct tensor v[3];
    const struct tensor *vp[3];
    for (int k = 0; k < nops; k++) {
        v[k] = *ts[k];
        v[k].ndim = ts[k]->ndim - 1;
        r->st[k] = ts[k]->ndim ? ts[k]->stride[ts[k]->ndim - 1] : 1;
        vp[k] = &v[k];
    }
    r->n = ts[0]->ndim ? ts[0]->shape[ts[0]->ndim - 1] : 1;
    cpu_iter_init(&r->it, nops, vp);
}

#define DEFINE_SOFTMAX(T, SUF)                                                                              \
    static void softmax_##SUF(const struct rows *r, T *po, const T *px, bool log_)                          \
    {                                                                                                       \
        const int64_t nrows = r->it.outer * r->it.inner, n = r->n;                                          \
        _Pragma("omp parallel for schedule(static) if (nrows * n >= CPU_PAR_MIN)")                          \
        for (int64_t row = 0; row < nrows; row++) {                                                        \
            int64_t off[4];                                                                                 \
            cpu_iter_offsets(&r->it, row / r->it.inner, off);                                               \
            const T *x = px + off[1] + (row % r->it.inner) * r->it.inner_stride[1];                         \
            T *o = po + off[0] + (row % r->it.inner) * r->it.inner_stride[0];                               \
            double mx = -INFINITY, sum = 0;                                                                 \
            for (int64_t i = 0; i < n; i++) mx = x[i * r->st[1]] > mx ? x[i * r->st[1]] : mx;                \
            if (mx == -INFINITY) mx = 0;                                                                    \
            for (int64_t i = 0; i < n; i++) sum += exp((double)x[i * r->st[1]] - mx);                       \
            if (log_) {                                                                                     \
                double lse = mx + log(sum);                                                                 \
                for (int64_t i = 0; i < n; i++) o[i * r->st[0]] = (T)((double)x[i * r->st[1]] - lse);       \
            } else {                                                                                        \
                double inv = 1.0 / sum;                                                                     \
                for (int64_t i = 0; i < n; i++) o[i * r->st[0]] = (T)(exp((double)x[i * r->st[1]] - mx) * inv); \
            }                                                                                               \
        }                                                                                                   \
    }                                                                                                       \
    /* softmax: dx = y * (dy - sum(dy*y)); log_softmax: dx = dy - exp(y) * sum(dy) */                       \
    static void softmax_bwd_##SUF(const struct rows *r, T *pdx, const T *pdy, const T *py, bool log_)       \
    {                                                                                                       \
        const int64_t nrows = r->it.outer * r->it.inner, n = r->n;                                          \
        _Pragma("omp parallel for schedule(static) if (nrows * n >= CPU_PAR_MIN)")                          \
        for (int64_t row = 0; row < nrows; row++) {                                                        \
            int64_t off[4], i0 = row % r->it.inner;                                                         \
            cpu_iter_offsets(&r->it, row / r->it.inner, off);                                               \
            T *dx = pdx + off[0] + i0 * r->it.inner_stride[0];                                              \
            const T *dy = pdy + off[1] + i0 * r->it.inner_stride[1], *y = py + off[2] + i0 * r->it.inner_stride[2]; \
            double dot = 0;                                                                                 \
            if (log_) {                                                                                     \
                for (int64_t i = 0; i < n; i++) dot += dy[i * r->st[1]];                                    \
                for (int64_t i = 0; i < n; i++)                                                             \
                    dx[i * r->st[0]] = (T)(dy[i * r->st[1]] - exp((double)y[i * r->st[2]]) * dot);          \
            } else {                                                                                        \
                for (int64_t i = 0; i < n; i++) dot += (double)dy[i * r->st[1]] * y[i * r->st[2]];          \
                for (int64_t i = 0; i < n; i++)                                                             \
                    dx[i * r->st[0]] = (T)((double)y[i * r->st[2]] * ((double)dy[i * r->st[1]] - dot));     \
            }                                                                                               \
        }                                                                                                   \
    }
DEFINE_SOFTMAX(float, f32)
DEFINE_SOFTMAX(double, f64)

enum status cpu_softmax(struct tensor *out, const struct tensor *x, bool log_)
{
    enum status s;
    if ((s = cpu_need_float(x, "softmax"))) return s;
    struct rows r;
    const struct tensor *ts[2] = {out, x};
    plan_rows(&r, 2, ts);
    if (x->dtype == DTYPE_F32) softmax_f32(&r, CPU_PTR(float, out), CPU_PTR(const float, x), log_);
    else softmax_f64(&r, CPU_PTR(double, out), CPU_PTR(const double, x), log_);
    return STATUS_OK;
}

enum status cpu_softmax_backward(struct tensor *dx, const struct tensor *dy, const struct tensor *y, bool log_)
{
    enum status s;
    if ((s = cpu_need_float(dy, "softmax_backward"))) return s;
    struct rows r;
    const struct tensor *ts[3] = {dx, dy, y};
    plan_rows(&r, 3, ts);
    if (dy->dtype == DTYPE_F32)
        softmax_bwd_f32(&r, CPU_PTR(float, dx), CPU_PTR(const float, dy), CPU_PTR(const float, y), log_);
    else
        softmax_bwd_f64(&r, CPU_PTR(double, dx), CPU_PTR(const double, dy), CPU_PTR(const double, y), log_);
    return STATUS_OK;
}
