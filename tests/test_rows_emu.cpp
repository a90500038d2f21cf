/* test_rows_emu.cpp — the CUDA backend's softmax and reduction kernels
 * (tensor/cuda/softmax_kernels.cuh, reduce_kernels.cuh) run on the host through tests/cuda_emu.h,
 * with the plans the backend makes (plan_rows, plan_reduce, reduce_pick: the same strided
 * iterator, the same choice of warp or block per row, of column or row plan and of chunks per
 * output), against float64 references. What this checks without a GPU: the row and chunk
 * indexing through strided, transposed and broadcast (stride 0) views, the shuffle and
 * shared-memory trees, groups past the last row that must still join the block's barriers, the
 * partials and their in-order combination, max / argmax semantics (first maximum, NaN wins), and
 * that the results do not depend on the grid size (a grid of 1 or 2 blocks loops over all the
 * rows): bit-identical to the full grid's. What it cannot: timing and the compiler's code;
 * test_cuda does that on a GPU against the CPU backend.
 * One line per kernel and case; exits non-zero on any bound exceeded. */
#include "tests/cuda_emu.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "tensor/cuda/iter.cuh"
#include "tensor/cuda/reduce_kernels.cuh"
#include "tensor/cuda/softmax_kernels.cuh"

namespace {

uint64_t rng = 0x9e3779b97f4a7c15ull;
double urand() { return emu_urand(rng); }   /* uniform in [-1, 1) */

int failures = 0;

void report(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void report(bool ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf(" %s\n", ok ? "ok" : "FAILED");
    failures += !ok;
}

/* a view of ndim dims (outermost first) over a host buffer */
struct tensor view(enum dtype dt, std::initializer_list<int64_t> shape, std::initializer_list<int64_t> stride)
{
    struct tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dt;
    t.ndim = (int)shape.size();
    int d = 0;
    for (int64_t s : shape) t.shape[d++] = s;
    d = 0;
    for (int64_t s : stride) t.stride[d++] = s;
    return t;
}

/* row-major contiguous strides */
struct tensor dense(enum dtype dt, std::initializer_list<int64_t> shape)
{
    struct tensor t = view(dt, shape, {});
    int64_t s = 1;
    for (int d = t.ndim - 1; d >= 0; d--) t.stride[d] = s, s *= t.shape[d];
    return t;
}

int64_t numel(const struct tensor &t)
{
    int64_t n = 1;
    for (int d = 0; d < t.ndim; d++) n *= t.shape[d];
    return n;
}

/* element offset of row-major index i */
int64_t offset_of(const struct tensor &t, int64_t i)
{
    int64_t off = 0;
    for (int d = t.ndim - 1; d >= 0; d--) {
        off += (i % t.shape[d]) * t.stride[d];
        i /= t.shape[d];
    }
    return off;
}

/* the largest element offset + 1: the buffer a view needs */
int64_t span(const struct tensor &t)
{
    int64_t s = 1;
    for (int d = 0; d < t.ndim; d++) s += (t.shape[d] - 1) * t.stride[d];
    return s;
}

template <class T> const char *tname() { return sizeof(T) == 4 ? "f32" : "f64"; }

/* ---------------------------------------------------------------- softmax */

struct sm_case {
    const char *name;
    struct tensor x;   /* its view; out, dy and dx are dense of the same shape */
};

template <class T, int G>
void sm_launch(unsigned grid, T *o, const T *x, const rows_plan &r, int64_t nrows, bool log_)
{
    emu_launch(grid, CU_THREADS, [&] { k_softmax<T, G>(o, x, r, nrows, log_); });
}
template <class T, int G>
void sm_bwd_launch(unsigned grid, T *dx, const T *dy, const T *y, const rows_plan &r, int64_t nrows, bool log_)
{
    emu_launch(grid, CU_THREADS, [&] { k_softmax_bwd<T, G>(dx, dy, y, r, nrows, log_); });
}

/* the kernels as softmax.cu launches them, on a grid of `grid` blocks (0: the backend's) */
template <class T>
void sm_run(unsigned grid, struct tensor &out, T *po, struct tensor &x, const T *px, bool log_)
{
    rows_plan r;
    const struct tensor *ts[2] = {&out, &x};
    plan_rows(&r, 2, ts);
    const int64_t nrows = r.it.numel;
    if (r.n <= kSoftmaxWarpRow) sm_launch<T, 32>(grid ? grid : cu_blocks(nrows, CU_THREADS / 32), po, px, r, nrows, log_);
    else sm_launch<T, CU_THREADS>(grid ? grid : cu_blocks(nrows, 1), po, px, r, nrows, log_);
}
template <class T>
void sm_bwd_run(unsigned grid, struct tensor &dx, T *pdx, struct tensor &dy, const T *pdy, struct tensor &y, const T *py,
                bool log_)
{
    rows_plan r;
    const struct tensor *ts[3] = {&dx, &dy, &y};
    plan_rows(&r, 3, ts);
    const int64_t nrows = r.it.numel;
    if (r.n <= kSoftmaxWarpRow)
        sm_bwd_launch<T, 32>(grid ? grid : cu_blocks(nrows, CU_THREADS / 32), pdx, pdy, py, r, nrows, log_);
    else sm_bwd_launch<T, CU_THREADS>(grid ? grid : cu_blocks(nrows, 1), pdx, pdy, py, r, nrows, log_);
}

template <class T> void softmax_case(const sm_case &c, bool log_)
{
    struct tensor x = c.x;
    x.dtype = sizeof(T) == 4 ? DTYPE_F32 : DTYPE_F64;
    const int64_t n = x.shape[x.ndim - 1], N = numel(x), R = N / n;
    std::vector<T> xb((size_t)span(x));
    for (size_t i = 0; i < xb.size(); i++) xb[i] = (T)(4 * urand());
    /* a masked entry (as attention masks do) in some rows; never a whole row (NaN, as torch's) */
    for (int64_t row = 0; row < R && n > 1; row += 3) xb[(size_t)offset_of(x, row * n + (row * 7) % n)] = -INFINITY;
    struct tensor out = x;   /* the shape of x, dense; dy and dx alike */
    int64_t s = 1;
    for (int d = x.ndim - 1; d >= 0; d--) out.stride[d] = s, s *= x.shape[d];
    struct tensor dy = out;
    std::vector<T> dyb((size_t)N);
    for (T &v : dyb) v = (T)urand();

    /* float64 reference, row by row (the row-major order of the dense outputs) */
    std::vector<double> ref((size_t)N), dref((size_t)N);
    for (int64_t row = 0; row < R; row++) {
        double mx = -INFINITY, sum = 0;
        for (int64_t i = 0; i < n; i++) mx = fmax(mx, (double)xb[(size_t)offset_of(x, row * n + i)]);
        for (int64_t i = 0; i < n; i++) sum += exp((double)xb[(size_t)offset_of(x, row * n + i)] - mx);
        for (int64_t i = 0; i < n; i++) {
            const double v = (double)xb[(size_t)offset_of(x, row * n + i)] - mx;
            ref[(size_t)(row * n + i)] = log_ ? v - log(sum) : exp(v) / sum;
        }
    }
    std::vector<T> o((size_t)N, (T)NAN), o1((size_t)N, (T)NAN);
    sm_run<T>(0, out, o.data(), x, xb.data(), log_);
    sm_run<T>(1, out, o1.data(), x, xb.data(), log_);
    /* out: one rounding of a double result; -inf where the reference has it (log_softmax) */
    double err = 0;
    for (int64_t i = 0; i < N; i++) {
        const double a = (double)o[(size_t)i], b = ref[(size_t)i];
        if (isinf(b) && a == b) continue;
        err = fmax(err, isfinite(a) ? fabs(a - b) / fmax(fabs(b), 1e-30) : INFINITY);
    }
    const double bound = sizeof(T) == 4 ? 1.2e-7 : 1e-13;
    report(err <= bound, "emu softmax[%s,%s,%s] out max rel=%.1e (bound %.0e)", c.name, log_ ? "log" : "exp", tname<T>(), err,
           bound);
    report(!memcmp(o.data(), o1.data(), o.size() * sizeof(T)), "emu softmax[%s,%s,%s] one block looping over all rows: the same bits",
           c.name, log_ ? "log" : "exp", tname<T>());

    /* backward, from the kernel's own y (as the engine runs it), against float64 from that y */
    for (int64_t row = 0; row < R; row++) {
        double dot = 0;
        for (int64_t i = 0; i < n; i++) {
            const size_t k = (size_t)(row * n + i);
            dot += log_ ? (double)dyb[k] : (double)dyb[k] * (double)o[k];
        }
        for (int64_t i = 0; i < n; i++) {
            const size_t k = (size_t)(row * n + i);
            dref[k] = log_ ? (double)dyb[k] - exp((double)o[k]) * dot : (double)o[k] * ((double)dyb[k] - dot);
        }
    }
    struct tensor dx = out;
    std::vector<T> d((size_t)N, (T)NAN), d2((size_t)N, (T)NAN);
    sm_bwd_run<T>(0, dx, d.data(), dy, dyb.data(), out, o.data(), log_);
    sm_bwd_run<T>(2, dx, d2.data(), dy, dyb.data(), out, o.data(), log_);
    /* dx: relative to the row's scale (a difference of two terms cancels) */
    err = 0;
    for (int64_t row = 0; row < R; row++) {
        double scale = 0, e = 0;
        for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs(dref[(size_t)(row * n + i)]));
        for (int64_t i = 0; i < n; i++) {
            const double a = (double)d[(size_t)(row * n + i)];
            e = fmax(e, isfinite(a) ? fabs(a - dref[(size_t)(row * n + i)]) : INFINITY);
        }
        err = fmax(err, e / fmax(scale, 1e-30));
    }
    report(err <= bound, "emu softmax_bwd[%s,%s,%s] dx max rel=%.1e (bound %.0e)", c.name, log_ ? "log" : "exp", tname<T>(), err,
           bound);
    report(!memcmp(d.data(), d2.data(), d.size() * sizeof(T)), "emu softmax_bwd[%s,%s,%s] two blocks looping: the same bits",
           c.name, log_ ? "log" : "exp", tname<T>());
}

void softmax_all()
{
    const sm_case cases[] = {
        {"[37,100] dense, 8 rows a block, the last block part-empty", dense(DTYPE_F32, {37, 100})},
        {"[5,1] rows of one", dense(DTYPE_F32, {5, 1})},
        {"[9,1024] the longest warp row", dense(DTYPE_F32, {9, 1024})},
        {"[3,1025] the shortest block row", dense(DTYPE_F32, {3, 1025})},
        {"[2,3,2500] block rows, 3-d", dense(DTYPE_F32, {2, 3, 2500})},
        {"[40,33]^T: the row is strided", view(DTYPE_F32, {40, 33}, {1, 40})},
        {"[4,6,50] from [4,1,50] broadcast (stride 0)", view(DTYPE_F32, {4, 6, 50}, {50, 0, 1})},
        {"[3,7,70] rows 2 apart (narrowed)", view(DTYPE_F32, {3, 7, 70}, {7 * 140, 140, 1})},
    };
    for (const sm_case &c : cases)
        for (int lg = 0; lg < 2; lg++) {
            softmax_case<float>(c, lg);
            softmax_case<double>(c, lg);
        }
}

/* ---------------------------------------------------------------- reductions */

struct red_case {
    const char *name;
    struct tensor a;
    std::initializer_list<int> dims;   /* reduced */
    bool ties;                         /* small integers: many equal maxima */
    int nans;                          /* NaNs placed in this many outputs' ranges */
};

const char *op_name(int op) { return op == 0 ? "sum" : op == 1 ? "max" : "argmax"; }

template <class T, bool SUM>
void red_launch(unsigned grid_main, unsigned grid_finish, const reduce_plan &pl, const reduce_shape &sh, const T *pa, char *po,
                int odt, bool argmax, acc_t *part)
{
    const int64_t total = pl.nk * sh.C;
    if (sh.col)
        emu_launch(grid_main ? grid_main : cu_blocks(total, CU_THREADS), CU_THREADS,
                   [&] { k_reduce_col<T, SUM>(pa, po, odt, argmax, pl.kept, pl.red, pl.nk, pl.nr, sh.C, part); });
    else if (sh.G == 32)
        emu_launch(grid_main ? grid_main : cu_blocks(total, CU_THREADS / 32), CU_THREADS,
                   [&] { k_reduce_row<T, SUM, 32>(pa, po, odt, argmax, pl.kept, pl.red, pl.nk, pl.nr, sh.C, part); });
    else
        emu_launch(grid_main ? grid_main : cu_blocks(total, 1), CU_THREADS,
                   [&] { k_reduce_row<T, SUM, CU_THREADS>(pa, po, odt, argmax, pl.kept, pl.red, pl.nk, pl.nr, sh.C, part); });
    if (sh.C > 1)
        emu_launch(grid_finish ? grid_finish : cu_blocks(pl.nk, CU_THREADS), CU_THREADS,
                   [&] { k_reduce_finish<SUM>(part, po, odt, argmax, pl.kept, pl.nk, sh.C); });
}

template <class T> void reduce_case(const red_case &c, int op)
{
    const bool sum = op == 0, argmax = op == 2;
    struct tensor a = c.a;
    a.dtype = sizeof(T) == 4 ? DTYPE_F32 : DTYPE_F64;
    struct tensor out = a;   /* keepdim, dense */
    for (int d : c.dims) out.shape[d] = 1;
    out.dtype = argmax ? DTYPE_I64 : a.dtype;
    int64_t s = 1;
    for (int d = out.ndim - 1; d >= 0; d--) out.stride[d] = s, s *= out.shape[d];
    const int64_t N = numel(a), nk = numel(out), nr = N / nk;
    std::vector<T> ab((size_t)span(a));
    for (T &v : ab) v = c.ties ? (T)floor(3 * urand()) : (T)urand();

    /* float64 reference over the row-major order of a: output k gets element i when their kept
     * coordinates agree; the reduced index r is the row-major index over the reduced dims */
    std::vector<double> ref((size_t)nk, sum ? 0.0 : -INFINITY), mag((size_t)nk, 0.0);
    std::vector<int64_t> arg((size_t)nk, -1);
    auto coords = [&](int64_t i, int64_t &k, int64_t &r) {
        k = 0, r = 0;
        int64_t ks = 1, rs = 1;
        for (int d = a.ndim - 1; d >= 0; d--) {
            const int64_t x = i % a.shape[d];
            i /= a.shape[d];
            if (out.shape[d] == a.shape[d]) k += x * ks, ks *= a.shape[d];
            else r += x * rs, rs *= a.shape[d];
        }
    };
    /* NaNs at a reduced index that is not the first, in the first c.nans outputs */
    for (int64_t i = 0, placed = 0; i < N && placed < c.nans; i++) {
        int64_t k, r;
        coords(i, k, r);
        if (k == placed && r == nr / 2 + placed) {
            ab[(size_t)offset_of(a, i)] = (T)NAN;
            placed++;
            i = -1;
        }
    }
    for (int64_t i = 0; i < N; i++) {
        int64_t k, r;
        coords(i, k, r);
        const double v = (double)ab[(size_t)offset_of(a, i)];
        double &acc = ref[(size_t)k];
        mag[(size_t)k] += fabs(v);
        if (sum) acc += v;
        else if (arg[(size_t)k] < 0 || (isnan(v) && !isnan(acc)) || (!isnan(acc) && v > acc)) acc = v, arg[(size_t)k] = r;
    }

    reduce_plan pl;
    plan_reduce(&pl, &out, &a);
    const reduce_shape sh = reduce_pick(&pl);
    std::vector<acc_t> part((size_t)(pl.nk * sh.C), acc_t{NAN, -7});
    std::vector<int64_t> o((size_t)nk), o2((size_t)nk);   /* 8 bytes an output: room for every dtype */
    auto run = [&](unsigned gm, unsigned gf, std::vector<int64_t> &dst) {
        for (int64_t &v : dst) v = -1;
        if (sum) red_launch<T, true>(gm, gf, pl, sh, ab.data(), (char *)dst.data(), out.dtype, false, part.data());
        else red_launch<T, false>(gm, gf, pl, sh, ab.data(), (char *)dst.data(), out.dtype, argmax, part.data());
    };
    run(0, 0, o);
    run(2, 1, o2);
    auto value = [&](const std::vector<int64_t> &v, int64_t k) {
        if (sizeof(T) == 4) return (double)reinterpret_cast<const float *>(v.data())[k];
        return reinterpret_cast<const double *>(v.data())[k];
    };
    double err = 0;
    int64_t wrong = 0;
    for (int64_t k = 0; k < nk; k++) {
        if (argmax) {
            wrong += o[(size_t)k] != arg[(size_t)k];
        } else if (!sum) {
            const double v = value(o, k), r = ref[(size_t)k];
            wrong += !(v == r || (isnan(v) && isnan(r)));
        } else {   /* one rounding of the output plus double sums' drift, relative to sum |a| */
            const double v = value(o, k), r = ref[(size_t)k];
            err = fmax(err, fabs(v - r) / fmax(mag[(size_t)k], 1e-30));
        }
    }
    const double bound = sizeof(T) == 4 ? 6e-8 : 1e-14;
    const size_t bytes = (size_t)nk * (argmax ? 8 : sizeof(T));
    const bool same = !memcmp(o.data(), o2.data(), bytes);
    if (sum)
        report(err <= bound, "emu reduce[%s,%s,%s] plan %s G=%d C=%lld: max err / sum|a| = %.1e (bound %.0e)", c.name, op_name(op),
               tname<T>(), sh.col ? "col" : "row", sh.col ? 1 : sh.G, (long long)sh.C, err, bound);
    else
        report(!wrong, "emu reduce[%s,%s,%s] plan %s G=%d C=%lld: %lld of %lld outputs differ from the first maximum (NaN first)",
               c.name, op_name(op), tname<T>(), sh.col ? "col" : "row", sh.col ? 1 : sh.G, (long long)sh.C, (long long)wrong,
               (long long)nk);
    report(same, "emu reduce[%s,%s,%s] grids of 2 and 1 blocks: the same bits", c.name, op_name(op), tname<T>());
}

void reduce_all()
{
    const red_case cases[] = {
        {"[64,3000] over 1: warp groups, 11 chunks", dense(DTYPE_F32, {64, 3000}), {1}, false, 3},
        {"[5,10000] over 1: block groups, 4 chunks", dense(DTYPE_F32, {5, 10000}), {1}, false, 2},
        {"[3000,64] over 0: column plan, 11 chunks", dense(DTYPE_F32, {3000, 64}), {0}, false, 3},
        {"[4,6,25] over 0,2: two reduced dims", dense(DTYPE_F32, {4, 6, 25}), {0, 2}, true, 1},
        {"[700,3] over 1: short rows, column plan", dense(DTYPE_F32, {700, 3}), {1}, true, 2},
        {"[70000] over 0: everything, 34 chunks", dense(DTYPE_F32, {70000}), {0}, false, 1},
        {"[300,50]^T over 1: strided rows", view(DTYPE_F32, {50, 300}, {1, 50}), {1}, true, 2},
        {"[8,5,600] from [8,1,600] broadcast, over 1,2", view(DTYPE_F32, {8, 5, 600}, {600, 0, 1}), {1, 2}, false, 1},
        {"[2,40,96] over 1 (a middle dim)", dense(DTYPE_F32, {2, 40, 96}), {1}, true, 4},
    };
    for (const red_case &c : cases)
        for (int op = 0; op < 3; op++) {
            reduce_case<float>(c, op);
            reduce_case<double>(c, op);
        }
}

}  // namespace

int main()
{
    softmax_all();
    reduce_all();
    printf("%d failed\n", failures);
    return failures ? 1 : 0;
}
