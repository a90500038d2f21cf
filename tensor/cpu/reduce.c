/* reduce.c — sum, max and argmax over any set of dims, any strides.
 *
 * Sums of f32 accumulate in double. Every output element is reduced by one thread in index
 * order, and a reduction to few outputs is split into a fixed number of chunks whose partial
 * results are combined in order, so results never depend on the thread count. */
#include "tensor/cpu/cpu.h"

#include <math.h>

#define N_CHUNKS 64

struct reduce_plan {
    struct cpu_iter kept;    /* over (out, a) restricted to the kept dims */
    struct cpu_iter red;     /* over a restricted to the reduced dims */
    int64_t nr;
};

static void plan_reduce(struct reduce_plan *pl, const struct tensor *out, const struct tensor *a)
{
    struct tensor ko = *out, ka = *a, ra = *a;
    ko.ndim = ka.ndim = ra.ndim = 0;
    pl->nr = 1;
    for (int d = 0; d < a->ndim; d++) {
        if (out->shape[d] == a->shape[d]) {
            ko.shape[ko.ndim] = out->shape[d];
            ko.stride[ko.ndim++] = out->stride[d];
            ka.shape[ka.ndim] = a->shape[d];
            ka.stride[ka.ndim++] = a->stride[d];
        } else {
            ra.shape[ra.ndim] = a->shape[d];
            ra.stride[ra.ndim++] = a->stride[d];
            pl->nr *= a->shape[d];
        }
    }
    ra.offset = 0;
    const struct tensor *kt[2] = {&ko, &ka}, *rt[1] = {&ra};
    cpu_iter_init(&pl->kept, 2, kt);
    cpu_iter_init(&pl->red, 1, rt);
}

/* reduce elements [r0, r1) of the reduced space starting at a's element `base` */
#define DEFINE_PARTIAL(T, SUF)                                                                              \
    static void partial_##SUF(enum reduce_op op, const struct reduce_plan *pl, const T *pa, int64_t base,    \
                              int64_t r0, int64_t r1, double *acc, int64_t *arg)                            \
    {                                                                                                       \
        const struct cpu_iter *it = &pl->red;                                                               \
        double s = *acc;                                                                                    \
        int64_t best = *arg;                                                                                \
        for (int64_t r = r0; r < r1;) {                                                                     \
            int64_t o = r / it->inner, i0 = r % it->inner, off[4];                                          \
            cpu_iter_offsets(it, o, off);                                                                   \
            int64_t n = it->inner - i0 < r1 - r ? it->inner - i0 : r1 - r;                                  \
            const T *p = pa + base + off[0] + i0 * it->inner_stride[0];                                     \
            int64_t st = it->inner_stride[0];                                                               \
            if (op == REDUCE_SUM) {                                                                         \
                for (int64_t i = 0; i < n; i++) s += (double)p[i * st];                                     \
            } else {                                                                                        \
                for (int64_t i = 0; i < n; i++) {                                                           \
                    double v = (double)p[i * st];                                                           \
                    if (v > s || (v != v && s == s)) { s = v; best = r + i; }                               \
                }                                                                                           \
            }                                                                                               \
            r += n;                                                                                         \
        }                                                                                                   \
        *acc = s;                                                                                           \
        *arg = best;                                                                                        \
    }
DEFINE_PARTIAL(float, f32)
DEFINE_PARTIAL(double, f64)

static void partial(enum reduce_op op, const struct reduce_plan *pl, const struct tensor *a, int64_t base, int64_t r0,
                    int64_t r1, double *acc, int64_t *arg)
{
    if (a->dtype == DTYPE_F32) partial_f32(op, pl, CPU_PTR(const float, a), base, r0, r1, acc, arg);
    else partial_f64(op, pl, CPU_PTR(const double, a), base, r0, r1, acc, arg);
}

static void store(struct tensor *out, int64_t off, double v)
{
    switch (out->dtype) {
    case DTYPE_F32: CPU_PTR(float, out)[off] = (float)v; break;
    case DTYPE_F64: CPU_PTR(double, out)[off] = v; break;
    case DTYPE_I64: CPU_PTR(int64_t, out)[off] = (int64_t)v; break;
    default: break;
    }
}

enum status cpu_reduce(enum reduce_op op, struct tensor *out, const struct tensor *a)
{
    enum status s;
    if ((s = cpu_need_float(a, "reduce"))) return s;
    if (op == REDUCE_ARGMAX ? out->dtype != DTYPE_I64 : out->dtype != a->dtype)
        return tensor_fail(STATUS_DTYPE, "reduce: output dtype %s does not fit", dtype_name(out->dtype));
    struct reduce_plan pl;
    plan_reduce(&pl, out, a);
    const int64_t nk = pl.kept.outer * pl.kept.inner, nr = pl.nr;
    const double init = op == REDUCE_SUM ? 0.0 : -INFINITY;
    if (nr == 0) {   /* empty reduction: sum 0, max -inf */
        for (int64_t k = 0; k < nk; k++) {
            int64_t off[4];
            cpu_iter_offsets(&pl.kept, k / pl.kept.inner, off);
            store(out, off[0] + (k % pl.kept.inner) * pl.kept.inner_stride[0], op == REDUCE_ARGMAX ? 0 : init);
        }
        return STATUS_OK;
    }
    if (nk >= 64 || nr < 4 * N_CHUNKS) {
#pragma omp parallel for schedule(static) if (nk * nr >= CPU_PAR_MIN)
        for (int64_t k = 0; k < nk; k++) {
            int64_t off[4];
            cpu_iter_offsets(&pl.kept, k / pl.kept.inner, off);
            int64_t i = k % pl.kept.inner;
            double acc = init;
            int64_t arg = 0;
            partial(op, &pl, a, off[1] + i * pl.kept.inner_stride[1], 0, nr, &acc, &arg);
            store(out, off[0] + i * pl.kept.inner_stride[0], op == REDUCE_ARGMAX ? (double)arg : acc);
        }
        return STATUS_OK;
    }
    /* few outputs, long reductions: fixed chunks in parallel, combined in order */
    for (int64_t k = 0; k < nk; k++) {
        int64_t off[4];
        cpu_iter_offsets(&pl.kept, k / pl.kept.inner, off);
        int64_t i = k % pl.kept.inner, base = off[1] + i * pl.kept.inner_stride[1];
        double acc[N_CHUNKS];
        int64_t arg[N_CHUNKS];
#pragma omp parallel for schedule(static)
        for (int c = 0; c < N_CHUNKS; c++) {
            acc[c] = init;
            arg[c] = 0;
            partial(op, &pl, a, base, nr * c / N_CHUNKS, nr * (c + 1) / N_CHUNKS, &acc[c], &arg[c]);
        }
        double tot = acc[0];
        int64_t best = arg[0];
        for (int c = 1; c < N_CHUNKS; c++) {
            if (op == REDUCE_SUM) tot += acc[c];
            else if (acc[c] > tot || (acc[c] != acc[c] && tot == tot)) { tot = acc[c]; best = arg[c]; }
        }
        store(out, off[0] + i * pl.kept.inner_stride[0], op == REDUCE_ARGMAX ? (double)best : tot);
    }
    return STATUS_OK;
}
