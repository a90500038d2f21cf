/* test_ew_emu.cpp — the CUDA backend's elementwise kernels (tensor/cuda/elementwise_kernels.cuh:
 * every unary op forward and backward, every binary op, where, dtype conversion, raw copy, fill)
 * run on the host through tests/cuda_emu.h with the launch choice ew_run makes (ew_pick), against
 * the CPU backend itself (linked): what test_cuda compares on a GPU, without one. Each op on a
 * dense run long enough for the vector kernel and its tail, on the same run one element off
 * alignment (the scalar dense kernel), on a transposed view and with a broadcast (stride 0)
 * operand (the strided kernel, in 32-bit and, forced, 64-bit index math), f32 and f64;
 * conversions between all six dtypes and fills of each, the Philox fill (random_kernels.cuh) and
 * the embedding gather and backward (embedding_kernels.cuh), bit for bit. The device functions are
 * the host's libm here, so this checks the formulas, the operand wiring and the indexing, not the
 * GPU's math library (test_cuda's bounds cover that). One line per op and dtype; exits non-zero
 * on any bound exceeded. */
#include "tests/cuda_emu.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "tensor/backend.h"
#include "tensor/cuda/iter.cuh"
#include "tensor/cuda/elementwise_kernels.cuh"
#include "tensor/cuda/embedding_kernels.cuh"
#include "tensor/philox.h"
#include "tensor/cuda/random_kernels.cuh"

namespace {

uint64_t rng = 0xbb67ae8584caa73bull;
int failures = 0;
const struct backend *cpu;

/* a tensor of `shape` on the CPU, its storage filled by gen(i) (of the storage's elements) */
template <class G> struct tensor *make(enum dtype dt, int ndim, const int64_t *shape, G gen)
{
    struct tensor *t = tensor_empty(dt, ndim, shape, DEVICE_CPU);
    const int64_t n = tensor_numel(t);
    for (int64_t i = 0; i < n; i++) {
        const double v = gen(i);
        switch (dt) {
        case DTYPE_F32: ((float *)t->storage->data)[i] = (float)v; break;
        case DTYPE_F64: ((double *)t->storage->data)[i] = v; break;
        case DTYPE_F16: ((uint16_t *)t->storage->data)[i] = f32_to_f16((float)v); break;
        case DTYPE_BF16: ((uint16_t *)t->storage->data)[i] = f32_to_bf16((float)v); break;
        case DTYPE_I32: ((int32_t *)t->storage->data)[i] = (int32_t)v; break;
        default: ((int64_t *)t->storage->data)[i] = (int64_t)v; break;
        }
    }
    return t;
}

/* one emu_launch instantiation for every kernel here (each lambda type would make its own, and
 * there are hundreds: minutes of compile time under ASan) */
void launch(unsigned grid, const std::function<void()> &body) { emu_launch(grid, CU_THREADS, [&] { body(); }); }

char *ptr(const struct tensor *t) { return (char *)t->storage->data + t->offset * (int64_t)dtype_size(t->dtype); }

/* the layouts every op runs on: out (dense) and the input views */
enum layout { DENSE, UNALIGNED, TRANSPOSED, BROADCAST, STRIDED64 };
const char *layout_name[] = {"dense (vectors + tail)", "dense, unaligned", "transposed", "broadcast", "strided, 64-bit index"};
constexpr int64_t R = 7, C = 301;   /* 2107 elements: 526 float4 vectors + 3, 1053 double2 + 1 */

/* an [R, C] input of dtype dt in layout l, values from gen */
template <class G> struct tensor *input(enum dtype dt, layout l, G gen)
{
    if (l == TRANSPOSED) {   /* [C, R] storage, viewed [R, C] */
        const int64_t shp[2] = {C, R};
        struct tensor *s = make(dt, 2, shp, gen);
        struct tensor *v = tensor_transpose(s, 0, 1);
        tensor_free(s);
        return v;
    }
    if (l == BROADCAST) {   /* one row, expanded */
        const int64_t shp[2] = {1, C}, full[2] = {R, C};
        struct tensor *s = make(dt, 2, shp, gen);
        struct tensor *v = tensor_expand(s, 2, full);
        tensor_free(s);
        return v;
    }
    if (l == UNALIGNED) {   /* [R*C + 1] storage, from element 1 */
        const int64_t shp[1] = {R * C + 1}, view[2] = {R, C};
        struct tensor *s = make(dt, 1, shp, gen);
        struct tensor *n = tensor_narrow(s, 0, 1, R * C);
        struct tensor *v = tensor_reshape(n, 2, view);
        tensor_free(s);
        tensor_free(n);
        return v;
    }
    const int64_t shp[2] = {R, C};
    return make(dt, 2, shp, gen);
}

struct tensor *dense_out(enum dtype dt)
{
    const int64_t shp[2] = {R, C};
    struct tensor *t = tensor_empty(dt, 2, shp, DEVICE_CPU);
    memset(t->storage->data, 0xff, (size_t)(R * C) * dtype_size(dt));
    return t;
}

/* out = f(ins) as ew_run launches it (STRIDED64: the 64-bit kernel, which only sizes past 2^31 take) */
template <typename T, int NIN, class F> void ew_emu(F f, struct tensor *out, const struct tensor *const *ins, bool force64)
{
    const struct tensor *ts[NIN + 1];
    ew_ptrs<NIN> p;
    ts[0] = out;
    p.out = ptr(out);
    for (int k = 0; k < NIN; k++) {
        ts[k + 1] = ins[k] ? ins[k] : out;
        p.in[k] = ins[k] ? ptr(ins[k]) : nullptr;
    }
    cu_iter<NIN + 1> it;
    cu_iter_init<NIN + 1>(&it, ts);
    constexpr int V = 16 / sizeof(T);
    unsigned g;
    ew_kind k = ew_pick<T, NIN>(it, p, &g);
    if (force64) k = EW_STRIDED64;
    switch (k) {
    case EW_CONTIG_VEC: launch(g, [&] { k_ew_contig<T, NIN, V, F>(p, it.numel, f); }); break;
    case EW_CONTIG: launch(g, [&] { k_ew_contig<T, NIN, 1, F>(p, it.numel, f); }); break;
    case EW_STRIDED32: launch(g, [&] { k_ew_strided<T, NIN, uint32_t, F>(p, it, f); }); break;
    default: launch(g, [&] { k_ew_strided<T, NIN, int64_t, F>(p, it, f); }); break;
    }
}

/* the difference of two dense [R, C] tensors (exact where both are the same non-finite value):
 * elementwise, the largest |a - b| / max(|b|, floor); else (norm) ||a - b|| / ||b||, the measure
 * test_cuda bounds: f32 transcendentals near a cancellation (gelu at x = -2.5: 1 + erf is 4e-4) are
 * only as exact as each libm's last bits, which differ between the CPU's vector libm and the
 * device's (here the host's scalar) functions */
template <class T> double diff(const struct tensor *a, const struct tensor *ref, double floor, bool norm = false)
{
    const T *x = (const T *)ptr(a), *y = (const T *)ptr(ref);
    double e = 0, num = 0, den = 0;
    for (int64_t i = 0; i < R * C; i++) {
        if (!isfinite((double)y[i]) || !isfinite((double)x[i])) {
            if (!(x[i] == y[i] || (isnan((double)x[i]) && isnan((double)y[i])))) return INFINITY;
            continue;
        }
        const double d = (double)x[i] - (double)y[i];
        e = fmax(e, fabs(d) / fmax(fabs((double)y[i]), floor));
        num += d * d, den += (double)y[i] * (double)y[i];
    }
    return norm ? sqrt(num / (den > 0 ? den : 1)) : e;
}

const char *unary_name[] = {"neg", "abs", "exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "silu", "relu",
                            "gelu", "gelu_tanh", "quick_gelu", "pow", "clamp", "affine", "square", "reciprocal"};
const char *binary_name[] = {"add", "sub", "mul", "div", "maximum", "minimum", "gt", "ge", "eq"};

bool positive_domain(int op) { return op == UNARY_LOG || op == UNARY_SQRT || op == UNARY_RSQRT || op == UNARY_POW; }

template <typename T, int OP> void unary_case(layout l, const double *prm)
{
    const enum dtype dt = sizeof(T) == 4 ? DTYPE_F32 : DTYPE_F64;
    const bool pos = positive_domain(OP);
    struct tensor *x = input(dt, l == STRIDED64 ? TRANSPOSED : l, [&](int64_t) {
        const double u = emu_urand(rng);
        return pos ? 0.1 + 1.9 * (u + 1) / 2 : 2.5 * u;
    });
    struct tensor *ref = dense_out(dt), *out = dense_out(dt), *dref = dense_out(dt), *dx = dense_out(dt);
    struct tensor *dy = input(dt, DENSE, [&](int64_t) { return emu_urand(rng); });
    const T p0 = prm ? (T)prm[0] : (T)0, p1 = prm ? (T)prm[1] : (T)0;
    bool ok = !cpu->unary((enum unary_op)OP, ref, x, prm) && !cpu->unary_backward((enum unary_op)OP, dref, dy, x, ref, prm);
    const struct tensor *ins[1] = {x};
    ew_emu<T, 1>(unary_f<OP, T>{p0, p1}, out, ins, l == STRIDED64);
    const struct tensor *bins[3] = {dy, x, ref};
    ew_emu<T, 3>(unary_bwd_f<OP, T>{p0, p1}, dx, bins, l == STRIDED64);
    /* f32: norm-wise (see diff), within a few roundings; f64: elementwise, the same libm */
    const bool f32 = sizeof(T) == 4;
    const double bound = f32 ? 2e-7 : 1e-14;
    const double e = diff<T>(out, ref, 1e-3, f32), eb = diff<T>(dx, dref, 1e-3, f32);
    ok = ok && e <= bound && eb <= bound;
    failures += !ok;
    printf("emu unary[%s,%s,%s] vs CPU: out %s=%.1e dx %s=%.1e (bound %.0e) %s\n", unary_name[OP], f32 ? "f32" : "f64",
           layout_name[l], f32 ? "norm rel" : "max rel", e, f32 ? "norm rel" : "max rel", eb, bound, ok ? "ok" : "FAILED");
    for (struct tensor *t : {x, ref, out, dref, dx, dy}) tensor_free(t);
}

template <typename T, int OP> void binary_case(layout l)
{
    const enum dtype dt = sizeof(T) == 4 ? DTYPE_F32 : DTYPE_F64;
    const bool cmp = OP >= BINARY_MAXIMUM;   /* small integers: ties and equal pairs; a NaN in 1 of 64 (propagated by max / min) */
    auto gen = [&](int64_t i) {
        return cmp ? (i % 64 == 17 ? NAN : floor(3 * emu_urand(rng))) : emu_urand(rng) + (OP == BINARY_DIV ? 3.0 : 0.0);
    };
    struct tensor *a = input(dt, l == BROADCAST ? DENSE : l == STRIDED64 ? TRANSPOSED : l, gen);
    struct tensor *b = input(dt, l == STRIDED64 ? TRANSPOSED : l, gen);
    struct tensor *ref = dense_out(dt), *out = dense_out(dt);
    bool ok = !cpu->binary((enum binary_op)OP, ref, a, b);
    const struct tensor *ins[2] = {a, b};
    ew_emu<T, 2>(binary_f<OP, T>{}, out, ins, l == STRIDED64);
    const double e = diff<T>(out, ref, 1e-30);
    ok = ok && e == 0;
    failures += !ok;
    printf("emu binary[%s,%s,%s] vs CPU: rel=%.1e (the same bits) %s\n", binary_name[OP], sizeof(T) == 4 ? "f32" : "f64",
           layout_name[l], e, ok ? "ok" : "FAILED");
    for (struct tensor *t : {a, b, ref, out}) tensor_free(t);
}

template <typename T> void where_case(layout l)
{
    const enum dtype dt = sizeof(T) == 4 ? DTYPE_F32 : DTYPE_F64;
    struct tensor *c = input(dt, l, [&](int64_t) { return emu_urand(rng) > 0 ? 1.0 : 0.0; });
    struct tensor *a = input(dt, DENSE, [&](int64_t) { return emu_urand(rng); });
    struct tensor *b = input(dt, l == BROADCAST ? BROADCAST : TRANSPOSED, [&](int64_t) { return emu_urand(rng); });
    struct tensor *ref = dense_out(dt), *out = dense_out(dt);
    bool ok = !cpu->where(ref, c, a, b);
    const struct tensor *ins[3] = {c, a, b};
    ew_emu<T, 3>(where_f<T>{}, out, ins, false);
    ok = ok && !memcmp(ptr(out), ptr(ref), (size_t)(R * C) * sizeof(T));
    failures += !ok;
    printf("emu where[%s,cond %s] vs CPU: %s %s\n", sizeof(T) == 4 ? "f32" : "f64", layout_name[l], ok ? "the same bits" : "differ",
           ok ? "ok" : "FAILED");
    for (struct tensor *t : {c, a, b, ref, out}) tensor_free(t);
}

/* every dtype to every dtype from a transposed view (k_convert; k_copy_raw where they are equal), and fill */
void convert_all()
{
    const enum dtype dts[] = {DTYPE_F32, DTYPE_F64, DTYPE_F16, DTYPE_BF16, DTYPE_I32, DTYPE_I64};
    int bad = 0, cases = 0;
    for (enum dtype sd : dts)
        for (enum dtype dd : dts) {
            /* values with fractions and signs, in every dtype's range (f16: |v| < 65504) */
            struct tensor *src = input(sd, TRANSPOSED, [&](int64_t i) { return (double)(i % 37) * 3.37 - 50.5 + emu_urand(rng); });
            struct tensor *ref = dense_out(dd), *out = dense_out(dd);
            bool ok = !cpu->copy(ref, src);
            const struct tensor *ts[2] = {out, src};
            cu_iter<2> it;
            cu_iter_init<2>(&it, ts);
            char *pd = ptr(out);
            const char *ps = ptr(src);
            const unsigned g = cu_blocks(it.numel, (int64_t)CU_THREADS * 4);
            if (sd == dd) {
                switch (dtype_size(dd)) {
                case 2: launch(g, [&] { k_copy_raw<uint16_t, uint32_t>(pd, ps, it); }); break;
                case 4: launch(g, [&] { k_copy_raw<uint32_t, uint32_t>(pd, ps, it); }); break;
                default: launch(g, [&] { k_copy_raw<uint64_t, int64_t>(pd, ps, it); }); break;
                }
            } else if (cases % 2) {
                launch(g, [&] { k_convert<uint32_t>(pd, dd, ps, sd, it); });
            } else {
                launch(g, [&] { k_convert<int64_t>(pd, dd, ps, sd, it); });
            }
            ok = ok && !memcmp(ptr(out), ptr(ref), (size_t)(R * C) * dtype_size(dd));
            bad += !ok;
            cases++;
            if (!ok) printf("emu convert[%s -> %s] differs from the CPU FAILED\n", dtype_name(sd), dtype_name(dd));
            for (struct tensor *t : {src, ref, out}) tensor_free(t);
        }
    printf("emu convert: %d of %d dtype pairs from a transposed view, the CPU's bits %s\n", cases - bad, cases, bad ? "FAILED" : "ok");
    failures += bad;
    /* fill: the element's bits as cuda_fill makes them (the CPU's store), through a transposed view */
    bad = 0;
    for (enum dtype dd : dts) {
        struct tensor *ref = input(dd, TRANSPOSED, [](int64_t) { return 0.0; });
        struct tensor *out = input(dd, TRANSPOSED, [](int64_t) { return 0.0; });
        const double value = -2.75;
        bool ok = !cpu->fill(ref, value);
        struct tensor *one = make(dd, 1, (const int64_t[]){1}, [&](int64_t) { return value; });   /* the CPU's bits */
        uint64_t bits = 0;
        memcpy(&bits, one->storage->data, dtype_size(dd));
        const struct tensor *ts[1] = {out};
        cu_iter<1> it;
        cu_iter_init<1>(&it, ts);
        char *pd = ptr(out);
        const unsigned g = cu_blocks(it.numel, (int64_t)CU_THREADS * 4);
        switch (dtype_size(dd)) {
        case 2: launch(g, [&] { k_fill<uint16_t, uint32_t>(pd, (uint16_t)bits, it); }); break;
        case 4: launch(g, [&] { k_fill<uint32_t, uint32_t>(pd, (uint32_t)bits, it); }); break;
        default: launch(g, [&] { k_fill<uint64_t, int64_t>(pd, bits, it); }); break;
        }
        ok = ok && !memcmp(out->storage->data, ref->storage->data, (size_t)(R * C) * dtype_size(dd));
        bad += !ok;
        if (!ok) printf("emu fill[%s] differs from the CPU FAILED\n", dtype_name(dd));
        for (struct tensor *t : {ref, out, one}) tensor_free(t);
    }
    printf("emu fill: %d of 6 dtypes through a transposed view, the CPU's bits %s\n", 6 - bad, bad ? "FAILED" : "ok");
    failures += bad;
}

/* random: the Philox stream through dense and transposed views, at offsets that start a block
 * and that start mid-block, on cuda_random's grid and on one block of 128 looping: the CPU's bits */
void random_all()
{
    int bad = 0, cases = 0;
    for (enum dtype dt : {DTYPE_F32, DTYPE_F64})
        for (bool normal : {false, true})
            for (layout l : {DENSE, TRANSPOSED})
                for (uint64_t offset : {(uint64_t)0, (uint64_t)8, (uint64_t)6})
                    for (int small = 0; small < 2; small++) {
                        struct tensor *ref = input(dt, l, [](int64_t) { return 0.0; });
                        struct tensor *out = input(dt, l, [](int64_t) { return 0.0; });
                        bool ok = !cpu->random(ref, 1234, offset, normal);
                        /* cuda_random's host part */
                        const struct tensor *ts[1] = {out};
                        cu_iter<1> it;
                        cu_iter_init<1>(&it, ts);
                        const uint64_t first = offset / 4, skip = offset % 4;
                        const int64_t nblocks = (int64_t)((skip + (uint64_t)it.numel + 3) / 4);
                        const bool contig = cu_iter_contiguous(&it);
                        char *po = ptr(out);
                        const unsigned g = small ? 1 : cu_blocks(nblocks, 128);
                        emu_launch(g, 128, [&] {
                            if (dt == DTYPE_F32) k_random<float>(po, it, contig, 1234, first, (int64_t)skip, nblocks, normal);
                            else k_random<double>(po, it, contig, 1234, first, (int64_t)skip, nblocks, normal);
                        });
                        ok = ok && !memcmp(out->storage->data, ref->storage->data, (size_t)(R * C) * dtype_size(dt));
                        bad += !ok;
                        cases++;
                        if (!ok)
                            printf("emu random[%s,%s,%s,offset %llu,%s grid] differs from the CPU FAILED\n", dtype_name(dt),
                                   normal ? "normal" : "uniform", layout_name[l], (unsigned long long)offset, small ? "1-block" : "full");
                        for (struct tensor *t : {ref, out}) tensor_free(t);
                    }
    printf("emu random: %d of %d cases (f32 / f64, uniform / normal, dense / transposed, offsets 0, 8, 6, two grids), the CPU's "
           "bits %s\n", cases - bad, cases, bad ? "FAILED" : "ok");
    failures += bad;
}

/* embedding: the gather (weights of 2, 4 and 8 bytes; i32 and i64 ids read at stride 2; a
 * transposed output) and an id outside the table (the first such position is recorded); the
 * backward, ids sorted stably on the host as CUB does on the device, adding into a dweight that
 * is not zero: the CPU's bits (the same additions in the same order) */
void embedding_all()
{
    const int64_t V = 11, D = 5, n = 23;
    int bad = 0, cases = 0;
    for (enum dtype wdt : {DTYPE_BF16, DTYPE_F32, DTYPE_F64})
        for (enum dtype idt : {DTYPE_I32, DTYPE_I64}) {
            const int64_t wshape[2] = {V, D}, ishape[2] = {n, 2}, oshape[2] = {D, n};
            struct tensor *w = make(wdt, 2, wshape, [](int64_t) { return emu_urand(rng); });
            struct tensor *ids_s = make(idt, 2, ishape, [&](int64_t i) { return (double)((i * 7 + 3) % V); });
            struct tensor *ids = tensor_select(ids_s, 1, 0);   /* [n] at stride 2 */
            struct tensor *os = make(wdt, 2, oshape, [](int64_t) { return -1.0; }), *rs = make(wdt, 2, oshape, [](int64_t) { return -1.0; });
            struct tensor *out = tensor_transpose(os, 0, 1), *ref = tensor_transpose(rs, 0, 1);
            bool ok = !cpu->embedding(ref, w, ids);
            unsigned long long first_bad = ~0ull;
            auto gather = [&](struct tensor *o) {
                char *po = ptr(o);
                const char *pw = ptr(w), *pid = ptr(ids);
                const bool i64 = idt == DTYPE_I64;
                emu_launch(cu_blocks(n * D, CU_THREADS * 4), CU_THREADS, [&] {
                    switch (dtype_size(wdt)) {
                    case 2: k_embedding<uint16_t>(po, o->stride[0], o->stride[1], pw, w->stride[0], w->stride[1], pid, i64, ids->stride[0], n, D, V, &first_bad); break;
                    case 4: k_embedding<uint32_t>(po, o->stride[0], o->stride[1], pw, w->stride[0], w->stride[1], pid, i64, ids->stride[0], n, D, V, &first_bad); break;
                    default: k_embedding<uint64_t>(po, o->stride[0], o->stride[1], pw, w->stride[0], w->stride[1], pid, i64, ids->stride[0], n, D, V, &first_bad); break;
                    }
                });
            };
            gather(out);
            ok = ok && first_bad == ~0ull && !memcmp(os->storage->data, rs->storage->data, (size_t)(n * D) * dtype_size(wdt));
            /* ids 13 and -1 at positions 9 and 4 (storage 18 and 8): position 4 is recorded */
            if (idt == DTYPE_I32) ((int32_t *)ids_s->storage->data)[18] = 13, ((int32_t *)ids_s->storage->data)[8] = -1;
            else ((int64_t *)ids_s->storage->data)[18] = 13, ((int64_t *)ids_s->storage->data)[8] = -1;
            gather(out);
            ok = ok && first_bad == 4;
            bad += !ok;
            cases++;
            if (!ok) printf("emu embedding[%s weights, %s ids] differs from the CPU (first bad %llu) FAILED\n", dtype_name(wdt), dtype_name(idt), first_bad);
            /* the backward (f32 / f64 only), with the bad ids in: they are skipped */
            if (wdt != DTYPE_BF16) {
                const int64_t dshape[2] = {n, D};
                struct tensor *dy = make(wdt, 2, dshape, [](int64_t) { return emu_urand(rng); });
                struct tensor *dw = make(wdt, 2, wshape, [](int64_t i) { return 0.25 * (double)(i % 3); });
                struct tensor *dwr = make(wdt, 2, wshape, [](int64_t i) { return 0.25 * (double)(i % 3); });
                /* the CPU rejects ids outside the table: its reference runs on the good ids, whose sums are the same */
                struct tensor *good_s = make(idt, 2, ishape, [&](int64_t i) { return (double)((i * 7 + 3) % V); });
                struct tensor *good = tensor_select(good_s, 1, 0);
                struct tensor *dyg = make(wdt, 2, dshape, [](int64_t) { return 0.0; });
                memcpy(dyg->storage->data, dy->storage->data, (size_t)(n * D) * dtype_size(wdt));
                for (int64_t j = 0; j < D; j++)   /* the bad positions' rows count for nothing */
                    for (int64_t pos : {(int64_t)4, (int64_t)9}) {
                        if (wdt == DTYPE_F32) ((float *)dyg->storage->data)[pos * D + j] = 0;
                        else ((double *)dyg->storage->data)[pos * D + j] = 0;
                    }
                ok = !cpu->embedding_backward(dwr, dyg, good);
                std::vector<unsigned long long> keys((size_t)n);
                std::vector<int64_t> pos((size_t)n);
                emu_launch(1, CU_THREADS, [&] { k_embed_keys(keys.data(), pos.data(), ptr(ids), idt == DTYPE_I64, ids->stride[0], n, V); });
                std::vector<size_t> order((size_t)n);
                for (size_t i = 0; i < order.size(); i++) order[i] = i;
                std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return keys[a] < keys[b]; });
                std::vector<unsigned long long> sk((size_t)n);
                std::vector<int64_t> sp((size_t)n);
                for (size_t i = 0; i < order.size(); i++) sk[i] = keys[order[i]], sp[i] = pos[order[i]];
                emu_launch(cu_blocks(n * D, CU_THREADS * 4), CU_THREADS, [&] {
                    if (wdt == DTYPE_F32)
                        k_embed_bwd<float>((float *)ptr(dw), dw->stride[0], dw->stride[1], (const float *)ptr(dy), dy->stride[0], dy->stride[1], sk.data(), sp.data(), n, D, V);
                    else
                        k_embed_bwd<double>((double *)ptr(dw), dw->stride[0], dw->stride[1], (const double *)ptr(dy), dy->stride[0], dy->stride[1], sk.data(), sp.data(), n, D, V);
                });
                /* the good ids' sums: the same bits; the CPU added the zeroed bad rows, +0 changes nothing */
                ok = ok && !memcmp(dw->storage->data, dwr->storage->data, (size_t)(V * D) * dtype_size(wdt));
                bad += !ok;
                cases++;
                if (!ok) printf("emu embedding_backward[%s, %s ids] differs from the CPU FAILED\n", dtype_name(wdt), dtype_name(idt));
                for (struct tensor *t : {dy, dw, dwr, good_s, good, dyg}) tensor_free(t);
            }
            for (struct tensor *t : {w, ids_s, ids, os, rs, out, ref}) tensor_free(t);
        }
    printf("emu embedding: %d of %d cases (gather with 2-, 4- and 8-byte rows, i32 / i64 ids at stride 2, an id outside the "
           "table; the backward over stably sorted ids), the CPU's bits %s\n", cases - bad, cases, bad ? "FAILED" : "ok");
    failures += bad;
}

template <typename T, int OP> void unary_all()
{
    const double pw[2] = {2.5, 0}, cl[2] = {-0.3, 0.4}, af[2] = {1.7, -0.2};
    const double *prm = OP == UNARY_POW ? pw : OP == UNARY_CLAMP ? cl : OP == UNARY_AFFINE ? af : nullptr;
    for (layout l : {DENSE, UNALIGNED, TRANSPOSED, STRIDED64}) unary_case<T, OP>(l, prm);
}

template <typename T, int... OPS> void unary_ops(std::integer_sequence<int, OPS...>) { (unary_all<T, OPS>(), ...); }
template <typename T, int... OPS> void binary_ops(std::integer_sequence<int, OPS...>)
{
    ((binary_case<T, OPS>(DENSE), binary_case<T, OPS>(BROADCAST), binary_case<T, OPS>(STRIDED64)), ...);
}

}  // namespace

int main()
{
    cpu = backend_for(DEVICE_CPU);
    unary_ops<float>(std::make_integer_sequence<int, UNARY_COUNT>{});
    unary_ops<double>(std::make_integer_sequence<int, UNARY_COUNT>{});
    binary_ops<float>(std::make_integer_sequence<int, BINARY_COUNT>{});
    binary_ops<double>(std::make_integer_sequence<int, BINARY_COUNT>{});
    for (layout l : {DENSE, BROADCAST, TRANSPOSED}) {
        where_case<float>(l);
        where_case<double>(l);
    }
    convert_all();
    random_all();
    embedding_all();
    const int64_t live = tensor_live_count();
    if (live) printf("emu ew: %lld tensors leaked FAILED\n", (long long)live);
    printf("%d failed\n", failures + (live != 0));
    return failures || live ? 1 : 0;
}
