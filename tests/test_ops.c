/* test_ops.c — gradient checks and reference checks of the core ops: elementwise,
 * broadcasting, reductions, views, matmul, linear, softmax, embedding, losses, dropout. */
#include "tests/harness.h"
#include "tensor/cpu/cpu.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- unary */

struct unary_case {
    const char *name;
    enum unary_op op;
    double p[2];
    double lo, hi;     /* input range (log/sqrt need positive inputs) */
    double kink;       /* keep inputs at least 1e-2 away from this point (NAN = none) */
};

static const struct unary_case unary_cases[] = {
    {"neg", UNARY_NEG, {0}, -2, 2, NAN},          {"abs", UNARY_ABS, {0}, -2, 2, 0},
    {"exp", UNARY_EXP, {0}, -2, 2, NAN},          {"log", UNARY_LOG, {0}, 0.2, 3, NAN},
    {"sqrt", UNARY_SQRT, {0}, 0.2, 3, NAN},       {"rsqrt", UNARY_RSQRT, {0}, 0.2, 3, NAN},
    {"sin", UNARY_SIN, {0}, -3, 3, NAN},          {"cos", UNARY_COS, {0}, -3, 3, NAN},
    {"tanh", UNARY_TANH, {0}, -2, 2, NAN},        {"sigmoid", UNARY_SIGMOID, {0}, -3, 3, NAN},
    {"silu", UNARY_SILU, {0}, -3, 3, NAN},        {"relu", UNARY_RELU, {0}, -2, 2, 0},
    {"gelu", UNARY_GELU, {0}, -3, 3, NAN},        {"gelu_tanh", UNARY_GELU_TANH, {0}, -3, 3, NAN},
    {"quick_gelu", UNARY_QUICK_GELU, {0}, -3, 3, NAN},
    {"pow[p=2.5]", UNARY_POW, {2.5, 0}, 0.2, 2, NAN}, {"pow[p=-1.5]", UNARY_POW, {-1.5, 0}, 0.3, 2, NAN},
    {"clamp[-0.5,0.7]", UNARY_CLAMP, {-0.5, 0.7}, -2, 2, -0.5},
    {"square", UNARY_SQUARE, {0}, -2, 2, NAN},    {"reciprocal", UNARY_RECIPROCAL, {0}, 0.3, 2, NAN},
    {"affine[2,-1]", UNARY_AFFINE, {2, -1}, -2, 2, NAN},
};

static struct tensor *f_unary(struct tensor *const *in, void *ctx)
{
    const struct unary_case *c = ctx;
    return ag_unary(c->op, in[0], c->p);
}

static void push_from_kink(struct tensor *x, double kink, double kink2)
{
    for (int64_t i = 0; i < tensor_numel(x); i++) {
        double v = tensor_get_flat(x, i);
        if (kink == kink && fabs(v - kink) < 1e-2) tensor_set_flat(x, i, kink + (v < kink ? -2e-2 : 2e-2));
        if (kink2 == kink2 && fabs(v - kink2) < 1e-2) tensor_set_flat(x, i, kink2 + (v < kink2 ? -2e-2 : 2e-2));
    }
}

START_TEST(test_unary)
{
    LEAK_CHECK_BEGIN();
    const struct unary_case *c = &unary_cases[_i];
    for (int nc = 0; nc < 2; nc++) {
        tensor_scope_begin();
        struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(3, 5), c->lo, c->hi);
        push_from_kink(x, c->kink, c->op == UNARY_CLAMP ? c->p[1] : NAN);
        if (nc) x = test_noncontig(x);
        char label[96];
        snprintf(label, sizeof label, "%s%s", c->name, nc ? "[noncontig]" : "");
        ck_assert(gradcheck(label, f_unary, (void *)c, 1, &x, NULL));
        tensor_scope_end();
    }
    LEAK_CHECK_END();
}
END_TEST

/* forward values against libm in double */
START_TEST(test_unary_values)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(64), 0.1, 2);
    struct tensor *y = ag_gelu(x), *t = ag_tanh(x), *q = ag_quick_gelu(x), *gt = ag_gelu_tanh(x);
    for (int64_t i = 0; i < 64; i++) {
        double v = tensor_get_flat(x, i);
        ck_assert_double_eq_tol(tensor_get_flat(y, i), 0.5 * v * (1 + erf(v / sqrt(2))), 1e-15);
        ck_assert_double_eq_tol(tensor_get_flat(t, i), tanh(v), 1e-15);
        ck_assert_double_eq_tol(tensor_get_flat(q, i), v / (1 + exp(-1.702 * v)), 1e-15);
        ck_assert_double_eq_tol(tensor_get_flat(gt, i), 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))), 1e-15);
    }
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- binary, broadcasting */

struct binary_case {
    const char *name;
    struct tensor *(*fn)(struct tensor *, struct tensor *);
};
static const struct binary_case binary_cases[] = {
    {"add", ag_add}, {"sub", ag_sub}, {"mul", ag_mul}, {"div", ag_div}, {"maximum", ag_maximum}, {"minimum", ag_minimum},
};

static struct tensor *f_binary(struct tensor *const *in, void *ctx)
{
    const struct binary_case *c = ctx;
    return c->fn(in[0], in[1]);
}

START_TEST(test_binary)
{
    LEAK_CHECK_BEGIN();
    const struct binary_case *c = &binary_cases[_i];
    /* same shape, broadcast both ways, scalar, non-contiguous */
    const int64_t shapes[][2][4] = {
        {{2, 3, 4, 0}, {2, 3, 4, 0}}, {{2, 3, 4, 0}, {3, 1, 0, 0}}, {{4, 0, 0, 0}, {2, 3, 4, 0}}, {{2, 1, 4, 0}, {3, 1, 0, 0}},
    };
    const int nds[][2] = {{3, 3}, {3, 2}, {1, 3}, {3, 2}};
    const char *tags[] = {"same", "bcast_b", "bcast_a", "bcast_both"};
    for (int k = 0; k < 5; k++) {
        tensor_scope_begin();
        int s = k < 4 ? k : 0;
        struct tensor *a = test_uniform(DTYPE_F64, nds[s][0], shapes[s][0], 0.5, 2);
        struct tensor *b = test_uniform(DTYPE_F64, nds[s][1], shapes[s][1], -2, -0.5);
        if (k == 4) { a = test_noncontig(a); b = test_noncontig(b); }
        if (c->fn == ag_maximum || c->fn == ag_minimum) {   /* interleave the ranges, no ties */
            b = ag_affine(b, 1, 2.3);
            push_from_kink(b, 1.0, NAN);
        }
        struct tensor *in[2] = {a, b};
        char label[96];
        snprintf(label, sizeof label, "%s[%s]", c->name, k < 4 ? tags[k] : "noncontig");
        ck_assert(gradcheck(label, f_binary, (void *)c, 2, in, NULL));
        tensor_scope_end();
    }
    LEAK_CHECK_END();
}
END_TEST

static struct tensor *f_where(struct tensor *const *in, void *ctx)
{
    (void)ctx;
    return ag_where(in[2], in[0], in[1]);
}

START_TEST(test_where)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *a = test_uniform(DTYPE_F64, TENSOR_SHAPE(3, 4), -1, 1);
    struct tensor *b = test_uniform(DTYPE_F64, TENSOR_SHAPE(4), -1, 1);
    struct tensor *c = ag_compare(BINARY_GT, test_uniform(DTYPE_F64, TENSOR_SHAPE(3, 1), -1, 1),
                                  tensor_zeros(DTYPE_F64, 0, NULL, DEVICE_CPU));
    struct tensor *in[3] = {a, b, c};
    const struct gc_opts o = {.nograd = 4};
    ck_assert(gradcheck("where[bcast]", f_where, NULL, 3, in, &o));
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- reductions */

struct reduce_case {
    const char *name;
    int kind;   /* 0 sum, 1 mean, 2 var, 3 max, 4 norm, 5 normalize */
    int n, dims[3];
    bool keepdim;
};
static const struct reduce_case reduce_cases[] = {
    {"sum[all]", 0, 0, {0}, false},          {"sum[dim=1]", 0, 1, {1}, false},     {"sum[dims=0,2,keepdim]", 0, 2, {0, 2}, true},
    {"mean[dim=-1]", 1, 1, {-1}, false},     {"mean[all]", 1, 0, {0}, false},      {"var[dim=1]", 2, 1, {1}, false},
    {"var[dims=0,2,keepdim]", 2, 2, {0, 2}, true}, {"max[dim=1]", 3, 1, {1}, false}, {"max[dim=2,keepdim]", 3, 1, {2}, true},
    {"norm[dim=2]", 4, 1, {2}, false},       {"norm[all]", 4, 0, {0}, false},      {"normalize[dim=1]", 5, 1, {1}, false},
};

static struct tensor *f_reduce(struct tensor *const *in, void *ctx)
{
    const struct reduce_case *c = ctx;
    switch (c->kind) {
    case 0: return ag_sum(in[0], c->n, c->dims, c->keepdim);
    case 1: return ag_mean(in[0], c->n, c->dims, c->keepdim);
    case 2: return ag_var(in[0], c->n, c->dims, c->keepdim, 1);
    case 3: return ag_max(in[0], c->dims[0], c->keepdim);
    case 4: return ag_norm(in[0], c->n, c->dims, c->keepdim);
    default: return ag_normalize(in[0], c->dims[0], 1e-12);
    }
}

START_TEST(test_reduce)
{
    LEAK_CHECK_BEGIN();
    const struct reduce_case *c = &reduce_cases[_i];
    for (int nc = 0; nc < 2; nc++) {
        tensor_scope_begin();
        /* distinct values spaced apart, so max has a unique winner away from ties */
        struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(3, 4, 5), -1, 1);
        for (int64_t i = 0; i < 60; i++) tensor_set_flat(x, i, 0.03 * (double)((i * 37) % 60) - 0.9 + 0.001 * tensor_get_flat(x, i));
        if (nc) x = test_noncontig(x);
        char label[96];
        snprintf(label, sizeof label, "%s%s", c->name, nc ? "[noncontig]" : "");
        ck_assert(gradcheck(label, f_reduce, (void *)c, 1, &x, NULL));
        tensor_scope_end();
    }
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_reduce_values)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    /* a long reduction goes through the chunked path: compare with a plain double loop */
    struct tensor *x = test_uniform(DTYPE_F32, TENSOR_SHAPE(300000), -1, 1);
    double ref = 0;
    for (int64_t i = 0; i < 300000; i++) ref += tensor_get_flat(x, i);
    struct tensor *s = ag_sum(x, 0, NULL, false);
    ck_assert_double_eq_tol(tensor_get_flat(s, 0), ref, 1e-6 * 300000);
    struct tensor *am = ag_argmax(tensor_reshape(x, TENSOR_SHAPE(300, 1000)), 1, false);
    for (int r = 0; r < 300; r += 37) {
        int64_t best = 0;
        for (int64_t j = 1; j < 1000; j++)
            if (tensor_get_flat(x, r * 1000 + j) > tensor_get_flat(x, r * 1000 + best)) best = j;
        ck_assert_int_eq((int64_t)tensor_get_flat(am, r), best);
    }
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- views and shapes */

static struct tensor *f_views(struct tensor *const *in, void *ctx)
{
    int which = (int)(intptr_t)ctx;
    struct tensor *x = in[0];
    const int perm[3] = {2, 0, 1};
    switch (which) {
    case 0: return ag_reshape(x, TENSOR_SHAPE(4, 15));
    case 1: return ag_permute(x, perm);
    case 2: return ag_narrow(x, 2, 1, 3);
    case 3: return ag_expand(ag_unsqueeze(x, 0), TENSOR_SHAPE(2, 3, 4, 5));
    case 4: return ag_squeeze(ag_unsqueeze(x, 1), 1);
    case 5: { struct tensor *p[2]; ag_chunk(x, 1, 2, p); return ag_concat(2, (struct tensor *[]){p[1], p[0]}, 1); }
    case 6: { struct tensor *p[3]; ag_split(x, 2, 3, (int64_t[]){1, 3, 1}, p); return ag_mul(p[1], ag_concat(3, p, 2) ? p[1] : NULL); }
    default: return ag_contiguous(ag_transpose(x, 0, 2));
    }
}

START_TEST(test_views)
{
    LEAK_CHECK_BEGIN();
    static const char *names[] = {"reshape", "permute", "narrow", "expand", "squeeze_unsqueeze", "chunk_concat", "split", "contiguous"};
    for (int nc = 0; nc < 2; nc++) {
        tensor_scope_begin();
        struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(3, 4, 5), -1, 1);
        if (nc) x = test_noncontig(x);
        char label[96];
        snprintf(label, sizeof label, "%s%s", names[_i], nc ? "[noncontig]" : "");
        ck_assert(gradcheck(label, f_views, (void *)(intptr_t)_i, 1, &x, NULL));
        tensor_scope_end();
    }
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- matmul, linear */

static struct tensor *f_matmul(struct tensor *const *in, void *ctx) { (void)ctx; return ag_matmul(in[0], in[1]); }
static struct tensor *f_linear(struct tensor *const *in, void *ctx) { return ag_linear(in[0], in[1], ctx ? in[2] : NULL); }

START_TEST(test_matmul)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct {
        const char *name;
        int na, nb;
        int64_t a[4], b[4];
        bool ta, tb;
    } cases[] = {
        {"matmul[2d]", 2, 2, {3, 4}, {4, 5}, false, false},
        {"matmul[batched]", 3, 3, {2, 3, 4}, {2, 4, 5}, false, false},
        {"matmul[bcast_batch]", 4, 2, {2, 2, 3, 4}, {4, 5}, false, false},
        {"matmul[transposed_a]", 3, 3, {2, 4, 3}, {2, 4, 5}, true, false},
        {"matmul[transposed_b]", 3, 3, {2, 3, 4}, {2, 5, 4}, false, true},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        struct tensor *a = test_uniform(DTYPE_F64, cases[k].na, cases[k].a, -1, 1);
        struct tensor *b = test_uniform(DTYPE_F64, cases[k].nb, cases[k].b, -1, 1);
        if (cases[k].ta) a = tensor_transpose(a, -1, -2);
        if (cases[k].tb) b = tensor_transpose(b, -1, -2);
        struct tensor *in[2] = {a, b};
        ck_assert(gradcheck(cases[k].name, f_matmul, NULL, 2, in, NULL));
    }
    struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3, 6), -1, 1);
    struct tensor *w = test_uniform(DTYPE_F64, TENSOR_SHAPE(4, 6), -1, 1);
    struct tensor *b = test_uniform(DTYPE_F64, TENSOR_SHAPE(4), -1, 1);
    struct tensor *in[3] = {x, w, b};
    ck_assert(gradcheck("linear[bias]", f_linear, (void *)1, 3, in, NULL));
    ck_assert(gradcheck("linear[no_bias]", f_linear, NULL, 2, in, NULL));
    struct tensor *in2[3] = {test_noncontig(x), tensor_transpose(test_uniform(DTYPE_F64, TENSOR_SHAPE(6, 4), -1, 1), 0, 1), b};
    ck_assert(gradcheck("linear[noncontig]", f_linear, (void *)1, 3, in2, NULL));
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* f32 BLAS path against a naive double loop at a size where blocking matters */
START_TEST(test_matmul_reference)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    const int64_t B = 3, M = 67, K = 129, N = 71;
    struct tensor *a = test_uniform(DTYPE_F32, TENSOR_SHAPE(B, M, K), -1, 1);
    struct tensor *b = tensor_transpose(test_uniform(DTYPE_F32, TENSOR_SHAPE(B, N, K), -1, 1), 1, 2);
    struct tensor *c = ag_matmul(a, b);
    double num = 0, den = 0;
    for (int64_t bi = 0; bi < B; bi++)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double s = 0;
                for (int64_t k = 0; k < K; k++)
                    s += tensor_get(a, (int64_t[]){bi, i, k}) * tensor_get(b, (int64_t[]){bi, k, j});
                double d = tensor_get(c, (int64_t[]){bi, i, j}) - s;
                num += d * d;
                den += s * s;
            }
    printf("reference matmul[f32,%lldx%lldx%lld] rel=%.1e\n", (long long)M, (long long)K, (long long)N, sqrt(num / den));
    ck_assert(sqrt(num / den) < 1e-6);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- softmax, embedding, losses */

static struct tensor *f_softmax(struct tensor *const *in, void *ctx)
{
    int k = (int)(intptr_t)ctx;
    return k < 2 ? ag_softmax(in[0], k ? 0 : -1) : ag_log_softmax(in[0], k == 2 ? -1 : 0);
}

START_TEST(test_softmax)
{
    LEAK_CHECK_BEGIN();
    static const char *names[] = {"softmax[dim=-1]", "softmax[dim=0]", "log_softmax[dim=-1]", "log_softmax[dim=0]"};
    for (int nc = 0; nc < 2; nc++) {
        tensor_scope_begin();
        struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(3, 7), -3, 3);
        if (nc) x = test_noncontig(x);
        char label[96];
        snprintf(label, sizeof label, "%s%s", names[_i], nc ? "[noncontig]" : "");
        ck_assert(gradcheck(label, f_softmax, (void *)(intptr_t)_i, 1, &x, NULL));
        tensor_scope_end();
    }
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_softmax_reference)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = test_uniform(DTYPE_F32, TENSOR_SHAPE(5, 300), -20, 20);
    struct tensor *y = ag_softmax(x, -1), *ly = ag_log_softmax(x, -1);
    for (int r = 0; r < 5; r++) {
        double mx = -INFINITY, s = 0;
        for (int j = 0; j < 300; j++) mx = fmax(mx, tensor_get_flat(x, r * 300 + j));
        for (int j = 0; j < 300; j++) s += exp(tensor_get_flat(x, r * 300 + j) - mx);
        for (int j = 0; j < 300; j++) {
            double v = tensor_get_flat(x, r * 300 + j) - mx;
            ck_assert_double_eq_tol(tensor_get_flat(y, r * 300 + j), exp(v) / s, 1e-7);
            ck_assert_double_eq_tol(tensor_get_flat(ly, r * 300 + j), v - log(s), 1e-5);
        }
    }
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

static struct tensor *f_embedding(struct tensor *const *in, void *ctx) { (void)ctx; return ag_embedding(in[0], in[1]); }
static struct tensor *f_mse(struct tensor *const *in, void *ctx) { (void)ctx; return ag_mse_loss(in[0], in[1]); }
static struct tensor *f_ce(struct tensor *const *in, void *ctx) { (void)ctx; return ag_cross_entropy(in[0], in[1]); }
static struct tensor *f_dropout(struct tensor *const *in, void *ctx)
{
    (void)ctx;
    ag_rng_set(1234, 0);   /* the same mask on every evaluation */
    return ag_dropout(in[0], 0.3, true);
}

START_TEST(test_misc)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *table = test_uniform(DTYPE_F64, TENSOR_SHAPE(7, 3), -1, 1);
    int64_t idv[6] = {3, 0, 6, 3, 3, 1};
    struct tensor *ids = tensor_from_data(DTYPE_I64, TENSOR_SHAPE(2, 3), idv);
    struct tensor *in[2] = {table, ids};
    const struct gc_opts ng = {.nograd = 2};
    ck_assert(gradcheck("embedding[repeated_ids]", f_embedding, NULL, 2, in, &ng));
    struct tensor *a = test_uniform(DTYPE_F64, TENSOR_SHAPE(4, 5), -1, 1), *b = test_uniform(DTYPE_F64, TENSOR_SHAPE(4, 5), -1, 1);
    struct tensor *ab[2] = {a, b};
    ck_assert(gradcheck("mse_loss", f_mse, NULL, 2, ab, NULL));
    int32_t tv[4] = {2, 0, 4, 2};
    struct tensor *logits[2] = {a, tensor_from_data(DTYPE_I32, TENSOR_SHAPE(4), tv)};
    ck_assert(gradcheck("cross_entropy", f_ce, NULL, 2, logits, &ng));
    ck_assert(gradcheck("dropout[p=0.3]", f_dropout, NULL, 1, &a, NULL));
    /* out-of-range ids are an error, not a crash */
    int64_t bad[2] = {1, 7};
    ck_assert_ptr_null(ag_embedding(table, tensor_from_data(DTYPE_I64, TENSOR_SHAPE(2), bad)));
    ck_assert(strstr(tensor_error(), "outside the table") != NULL);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_dropout_stats)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *x = tensor_full(DTYPE_F32, TENSOR_SHAPE(100000), 1.0, DEVICE_CPU);
    struct tensor *y = ag_dropout(x, 0.25, true);
    int64_t zeros = 0;
    double sum = 0;
    for (int64_t i = 0; i < 100000; i++) { double v = tensor_get_flat(y, i); zeros += v == 0; sum += v; }
    ck_assert(fabs((double)zeros / 100000 - 0.25) < 0.01);
    ck_assert(fabs(sum / 100000 - 1.0) < 0.02);
    struct tensor *z = ag_dropout(x, 0.25, false);
    ck_assert_ptr_eq(z->storage, x->storage);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- long rows, many threads */

/* The CPU elementwise kernels cut each merged row into CPU_CHUNK-element pieces spread over
 * the threads, and group short rows into items of about as many elements, stepping from row
 * to row. Rows longer than a chunk and not a multiple of it, at an offset and with a stride,
 * and short rows in three dims, run on 4 threads, and every element is checked against its
 * own formula: a piece that starts at the wrong place, a wrong step, or a tail that is lost,
 * shows. Also copies between layouts (a permute's, and transposes in 4x4 tiles), and a copy
 * within one storage (a shift by one): memmove's semantics, which chunks or threads would
 * break. */
static const struct backend *cpu(void) { return backend_for(DEVICE_CPU); }

static void check_long_rows(struct tensor *(*view)(struct tensor *), const char *what)
{
    tensor_scope_begin();
    const int64_t N = 3 * 16384 + 123;   /* > CPU_PAR_MIN, three chunks and a tail */
    struct tensor *ba = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, N + 9), -2, 2);
    struct tensor *bb = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, N + 9), -2, 2);
    struct tensor *bo = tensor_full(DTYPE_F64, TENSOR_SHAPE(2, N + 9), 7.0, DEVICE_CPU);
    struct tensor *bf = tensor_full(DTYPE_F32, TENSOR_SHAPE(2, N + 9), 7.0, DEVICE_CPU);
    struct tensor *a = view(ba), *b = view(bb), *o = view(bo), *of = view(bf);
    const int64_t n = tensor_numel(a);
    const double aff[2] = {2, -1};
    ck_assert_int_eq(cpu()->unary(UNARY_AFFINE, o, a, aff), STATUS_OK);
    for (int64_t i = 0; i < n; i++) ck_assert_msg(tensor_get_flat(o, i) == 2 * tensor_get_flat(a, i) + -1, "%s: affine at %lld", what, (long long)i);
    ck_assert_int_eq(cpu()->unary_backward(UNARY_NEG, o, a, NULL, NULL, NULL), STATUS_OK);
    for (int64_t i = 0; i < n; i++) ck_assert_msg(tensor_get_flat(o, i) == -tensor_get_flat(a, i), "%s: neg backward at %lld", what, (long long)i);
    ck_assert_int_eq(cpu()->binary(BINARY_MUL, o, a, b), STATUS_OK);
    for (int64_t i = 0; i < n; i++) ck_assert_msg(tensor_get_flat(o, i) == tensor_get_flat(a, i) * tensor_get_flat(b, i), "%s: mul at %lld", what, (long long)i);
    ck_assert_int_eq(cpu()->where(o, a, b, a), STATUS_OK);   /* a != 0 almost surely: b */
    for (int64_t i = 0; i < n; i++) ck_assert_msg(tensor_get_flat(o, i) == (tensor_get_flat(a, i) != 0 ? tensor_get_flat(b, i) : tensor_get_flat(a, i)), "%s: where at %lld", what, (long long)i);
    ck_assert_int_eq(cpu()->fill(o, 0.25), STATUS_OK);
    for (int64_t i = 0; i < n; i++) ck_assert_msg(tensor_get_flat(o, i) == 0.25, "%s: fill at %lld", what, (long long)i);
    ck_assert_int_eq(cpu()->copy(o, a), STATUS_OK);   /* same dtype: memmove when both rows are contiguous */
    for (int64_t i = 0; i < n; i++) ck_assert_msg(tensor_get_flat(o, i) == tensor_get_flat(a, i), "%s: copy at %lld", what, (long long)i);
    ck_assert_int_eq(cpu()->copy(of, a), STATUS_OK);   /* f64 -> f32 */
    for (int64_t i = 0; i < n; i++) ck_assert_msg(tensor_get_flat(of, i) == (double)(float)tensor_get_flat(a, i), "%s: cast at %lld", what, (long long)i);
    /* nothing outside the view was written */
    int64_t outside = 0;
    for (int64_t i = 0; i < tensor_numel(bf); i++) outside += tensor_get_flat(bf, i) == 7.0;
    ck_assert_int_eq(outside, tensor_numel(bf) - n);
    tensor_scope_end();
}

static struct tensor *view_row(struct tensor *t) { return tensor_narrow(tensor_narrow(t, 0, 1, 1), 1, 5, 3 * 16384 + 123); }
static struct tensor *view_rows(struct tensor *t) { return tensor_narrow(t, 1, 3, 3 * 16384 + 123); }
static struct tensor *view_strided(struct tensor *t) { return tensor_transpose(tensor_narrow(t, 1, 2, 3 * 16384 + 123), 0, 1); }
/* [12321, 2, 3]: rows of 3 in three dims that do not merge, 24642 rows, so the items (whole rows,
 * about CPU_CHUNK elements each) start in the middle of the outer dims */
static struct tensor *view_short_rows(struct tensor *t)
{
    return tensor_narrow(tensor_transpose(tensor_reshape(t, TENSOR_SHAPE(2, 12321, 4)), 0, 1), 2, 0, 3);
}

START_TEST(test_long_rows)
{
    LEAK_CHECK_BEGIN();
    const int threads = tensor_num_threads();
    tensor_set_num_threads(4);
    check_long_rows(view_row, "one row at an offset");
    check_long_rows(view_rows, "two rows");
    check_long_rows(view_strided, "transposed");
    check_long_rows(view_short_rows, "short rows");
    /* a copy between layouts: out contiguous, in the short rows' view (a permute's copy) */
    tensor_scope_begin();
    struct tensor *buf0 = test_uniform(DTYPE_F32, TENSOR_SHAPE(2, 3 * 16384 + 132), -1, 1);
    struct tensor *sv = view_short_rows(buf0), *sc = tensor_empty(DTYPE_F32, 3, sv->shape, DEVICE_CPU);
    ck_assert_int_eq(cpu()->copy(sc, sv), STATUS_OK);
    for (int64_t i = 0; i < tensor_numel(sv); i++)
        ck_assert_msg(tensor_get_flat(sc, i) == tensor_get_flat(sv, i), "permuted copy at %lld", (long long)i);
    /* transposes (in contiguous along the dim before the inner one: 4x4 tiles): rows and
     * columns not multiples of 4, row blocks, threads; and an f64 one (the general loops) */
    const int64_t tshapes[3][3] = {{4, 70, 150}, {5, 37, 23}, {1, 4, 4}};
    for (int k = 0; k < 4; k++) {
        const int64_t *sh = tshapes[k % 3];
        struct tensor *t = test_uniform(k == 3 ? DTYPE_F64 : DTYPE_F32, TENSOR_SHAPE(sh[0], sh[1], sh[2]), -1, 1);
        struct tensor *tv = tensor_transpose(t, 1, 2), *tc = tensor_empty(t->dtype, 3, tv->shape, DEVICE_CPU);
        ck_assert_int_eq(cpu()->copy(tc, tv), STATUS_OK);
        for (int64_t i = 0; i < tensor_numel(tv); i++)
            ck_assert_msg(tensor_get_flat(tc, i) == tensor_get_flat(tv, i), "transposed copy %d at %lld", k, (long long)i);
    }
    tensor_scope_end();
    /* a shift by one within one storage, in both directions */
    tensor_scope_begin();
    const int64_t N = 3 * 16384 + 123;
    struct tensor *buf = test_uniform(DTYPE_F32, TENSOR_SHAPE(N + 1), -1, 1);
    double *orig = malloc(sizeof(double) * (size_t)(N + 1));
    ck_assert_ptr_nonnull(orig);
    for (int64_t i = 0; i <= N; i++) orig[i] = tensor_get_flat(buf, i);
    ck_assert_int_eq(cpu()->copy(tensor_narrow(buf, 0, 1, N), tensor_narrow(buf, 0, 0, N)), STATUS_OK);
    for (int64_t i = 0; i < N; i++) ck_assert_msg(tensor_get_flat(buf, i + 1) == orig[i], "shift right at %lld", (long long)i);
    ck_assert_int_eq(cpu()->copy(tensor_narrow(buf, 0, 0, N), tensor_narrow(buf, 0, 1, N)), STATUS_OK);
    for (int64_t i = 0; i < N; i++) ck_assert_msg(tensor_get_flat(buf, i) == orig[i], "shift left at %lld", (long long)i);
    free(orig);
    tensor_scope_end();
    tensor_set_num_threads(threads);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- vector GELU / SiLU / quick GELU / sigmoid */

/* f32 GELU, SiLU, quick GELU (forward and backward) and sigmoid (forward) on contiguous rows go
 * through libmvec (tensor/cpu/vecmath.c) where the
 * build has it. Against the scalar loops and a float64 reference: the error of f(x) is bounded
 * by a few f32 roundoffs scaled by (|x| + 1) (erf and exp are accurate to a few ulp; GELU's
 * 1 + erf loses the rest for x << 0 either way). Row lengths around the vector width check the
 * padded tail; the same values at another offset must give the same bits. */
static double f64_act(enum unary_op op, double x, double g, bool bwd)
{
    if (op == UNARY_GELU)
        return bwd ? g * (0.5 * (1 + erf(x / sqrt(2))) + x * exp(-0.5 * x * x) / sqrt(2 * M_PI)) : 0.5 * x * (1 + erf(x / sqrt(2)));
    const double k = op == UNARY_QUICK_GELU ? (double)1.702f : 1, s = 1 / (1 + exp(-k * x));
    if (op == UNARY_SIGMOID) return bwd ? g * s * (1 - s) : s;
    return bwd ? g * (s + k * x * s * (1 - s)) : x * s;
}

static const enum unary_op act_ops[] = {UNARY_GELU, UNARY_SILU, UNARY_QUICK_GELU, UNARY_SIGMOID};
static const char *const act_names[] = {"gelu", "silu", "quick_gelu", "sigmoid"};

/* y[p], d[p]: op's forward of x and backward of g, on the vector path (p = 0) and the scalar
 * loops (p = 1); sigmoid's backward reads y (its scalar rule), the others read x */
static void act_both_paths(enum unary_op op, struct tensor *x, struct tensor *g, struct tensor *y[2], struct tensor *d[2])
{
    for (int base = 0; base < 2; base++) {
        cpu_elementwise_baseline_only(base);
        y[base] = tensor_empty(DTYPE_F32, 1, x->shape, DEVICE_CPU);
        d[base] = tensor_empty(DTYPE_F32, 1, x->shape, DEVICE_CPU);
        ck_assert_int_eq(cpu()->unary(op, y[base], x, NULL), STATUS_OK);
        ck_assert_int_eq(cpu()->unary_backward(op, d[base], g, x, op == UNARY_SIGMOID ? y[base] : NULL, NULL), STATUS_OK);
    }
    cpu_elementwise_baseline_only(false);
}

/* internal hook of tensor/cpu/vecmath.c: the widest vectors it may use (16, 8 or 4 lanes) */
void cpu_vecmath_max_lanes(int lanes);
static const int vec_lanes[3] = {16, 8, 4};

START_TEST(test_vec_act)
{
    LEAK_CHECK_BEGIN();
    cpu_vecmath_max_lanes(vec_lanes[_i]);   /* each width the CPU has; a missing one falls to the next */
    printf("vector activations, at most %d lanes\n", vec_lanes[_i]);
    static const int64_t lens[] = {1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 1000, 3 * 16384 + 123};
    float probe_in[8] = {0}, probe_out[8];
    printf("vector activation path: %s\n", cpu_vec_unary_f32(UNARY_GELU, probe_out, 1, probe_in, 1, 8) ? "libmvec" : "none (scalar loops)");
    const double eps = 0x1p-24;
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++)
        for (int k = 0; k < 4; k++) {
            tensor_scope_begin();
            const int64_t n = lens[li];
            struct tensor *buf = test_uniform(DTYPE_F32, TENSOR_SHAPE(n + 1), -9, 9), *g = test_uniform(DTYPE_F32, TENSOR_SHAPE(n), -1, 1);
            struct tensor *x = tensor_narrow(buf, 0, 0, n), *x1 = tensor_narrow(buf, 0, 1, n);
            tensor_set_flat(x, 0, 0.0);
            struct tensor *xs = tensor_empty(DTYPE_F32, TENSOR_SHAPE(n + 1), DEVICE_CPU), *xs1 = tensor_narrow(xs, 0, 1, n);
            ck_assert_int_eq(cpu()->copy(xs1, x), STATUS_OK);   /* x's values one element further on */
            struct tensor *y[2], *d[2], *y1 = tensor_empty(DTYPE_F32, TENSOR_SHAPE(n), DEVICE_CPU);
            act_both_paths(act_ops[k], x, g, y, d);
            ck_assert_int_eq(cpu()->unary(act_ops[k], y1, xs1, NULL), STATUS_OK);
            for (int64_t i = 0; i < n; i++) {
                const double xv = tensor_get_flat(x, i), gv = tensor_get_flat(g, i), b = 8 * eps * (fabs(xv) + 1);
                const double rf = f64_act(act_ops[k], xv, 0, false), rb = f64_act(act_ops[k], xv, gv, true);
                for (int base = 0; base < 2; base++) {
                    ck_assert_msg(fabs(tensor_get_flat(y[base], i) - rf) <= b, "%s n=%lld x=%.9g %s: %.9g vs %.9g", act_names[k],
                                  (long long)n, xv, base ? "scalar" : "vector", tensor_get_flat(y[base], i), rf);
                    ck_assert_msg(fabs(tensor_get_flat(d[base], i) - rb) <= 2 * b, "%s backward n=%lld x=%.9g g=%.9g %s: %.9g vs %.9g",
                                  act_names[k], (long long)n, xv, gv, base ? "scalar" : "vector", tensor_get_flat(d[base], i), rb);
                }
                ck_assert_msg(tensor_get_flat(y1, i) == tensor_get_flat(y[0], i), "%s n=%lld: element %lld differs one place on",
                              act_names[k], (long long)n, (long long)i);
            }
            (void)x1;
            tensor_scope_end();
        }
    cpu_vecmath_max_lanes(16);
    LEAK_CHECK_END();
}
END_TEST

/* large and special inputs: the vector path computes exp(t) past +-40 as exp(t / 2)^2 (off
 * libmvec's slow path); it must agree with the float64 reference as above, and give the scalar
 * loops' results for +-inf, NaN and +-0 (NaN where they give NaN: silu(-inf) is -inf / inf) */
START_TEST(test_vec_act_edges)
{
    LEAK_CHECK_BEGIN();
    cpu_vecmath_max_lanes(vec_lanes[_i]);
    const float k = 1.702f;
    const float special[] = {INFINITY, -INFINITY, NAN, 0.0f, -0.0f, FLT_MAX, -FLT_MAX, 200, -200, 87, -87, 88.5f, -88.5f,
                             88.8f, -88.8f, 20, -20, 19.9f, -20.1f, 87 / k, -87 / k, 88.5f / k, -88.5f / k, 13.19f, -13.19f,
                             13.2f, -13.2f, 14.5f, -14.5f, 1e-30f, -1e-30f};
    const int64_t ns = sizeof special / sizeof *special, n = ns + 997;
    tensor_scope_begin();
    struct tensor *x = test_uniform(DTYPE_F32, TENSOR_SHAPE(n), -250, 250), *g = test_uniform(DTYPE_F32, TENSOR_SHAPE(n), -1, 1);
    for (int64_t i = 0; i < ns; i++) tensor_set_flat(x, i, special[i]);
    for (int k2 = 0; k2 < 4; k2++) {
        struct tensor *y[2], *d[2];
        act_both_paths(act_ops[k2], x, g, y, d);
        for (int64_t i = 0; i < n; i++) {
            const double xv = tensor_get_flat(x, i), gv = tensor_get_flat(g, i);
            for (int bwd = 0; bwd < 2; bwd++) {
                const double v = tensor_get_flat(bwd ? d[0] : y[0], i), sc = tensor_get_flat(bwd ? d[1] : y[1], i);
                /* the scalar loops' value, NaN and signs included (also at +-FLT_MAX, where quick GELU's
                 * backward overflows k * x into inf * 0 on both paths) */
                if (!isfinite(xv) || xv == 0 || fabs(xv) == FLT_MAX) {
                    ck_assert_msg((isnan(v) && isnan(sc)) || (v == sc && signbit(v) == signbit(sc)),
                                  "%s%s(%g): vector %g, scalar %g", act_names[k2], bwd ? " backward" : "", xv, v, sc);
                    continue;
                }
                const double r = f64_act(act_ops[k2], xv, gv, bwd), b = (bwd ? 16 : 8) * 0x1p-24 * (fabs(xv) + 1);
                ck_assert_msg(fabs(v - r) <= b, "%s%s(%.9g): vector %.9g, float64 %.9g", act_names[k2], bwd ? " backward" : "", xv, v, r);
                /* and relative, away from the roots, for SiLU's and quick GELU's small values and sigmoid's
                 * (GELU's 1 + erf cancels, and sigmoid's backward reads y, where 1 - y cancels) */
                if (act_ops[k2] != UNARY_GELU && !(bwd && act_ops[k2] == UNARY_SIGMOID) && fabs(xv) >= 5 && fabs(r) > 1e-36)
                    ck_assert_msg(fabs(v - r) <= 1e-5 * fabs(r), "%s%s(%.9g): vector %.9g, float64 %.9g (relative)", act_names[k2],
                                  bwd ? " backward" : "", xv, v, r);
            }
        }
    }
    tensor_scope_end();
    cpu_vecmath_max_lanes(16);
    LEAK_CHECK_END();
}
END_TEST

/* Empty dims where the op is still defined: a value a user can check, gradients of the right
 * shapes, no crash. Each of these once failed: linear with no input features (reshaped through
 * numel / in = 0 rows), layer_norm over no rows (the weight checked against 0 elements), a
 * cross_entropy target outside no classes (reported as an embedding's error) */
START_TEST(test_empty_dims)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    /* linear, in = 0: the bias, broadcast; dw is [3,0], db the column sums of dy */
    struct tensor *x = tensor_zeros(DTYPE_F64, TENSOR_SHAPE(2, 0), DEVICE_CPU), *w = tensor_zeros(DTYPE_F64, TENSOR_SHAPE(3, 0), DEVICE_CPU);
    struct tensor *b = test_uniform(DTYPE_F64, TENSOR_SHAPE(3), -1, 1);
    ag_set_requires_grad(w, true);
    ag_set_requires_grad(b, true);
    struct tensor *y = ag_linear(x, w, b);
    ck_assert_msg(y, "%s", tensor_error());
    ck_assert(y->ndim == 2 && y->shape[0] == 2 && y->shape[1] == 3);
    for (int64_t i = 0; i < 6; i++) ck_assert(tensor_get_flat(y, i) == tensor_get_flat(b, i % 3));
    struct tensor *dy = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3), -1, 1);
    ck_assert_int_eq(ag_backward(y, dy, false), STATUS_OK);
    ck_assert(w->grad && w->grad->shape[0] == 3 && w->grad->shape[1] == 0);
    for (int64_t o = 0; o < 3; o++)
        ck_assert(fabs(tensor_get_flat(b->grad, o) - (tensor_get_flat(dy, o) + tensor_get_flat(dy, 3 + o))) < 1e-15);
    /* layer_norm over no rows: an empty result, and weight/bias gradients of their own shape, zero */
    struct tensor *xl = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(0, 4), DEVICE_CPU);
    struct tensor *wl = test_uniform(DTYPE_F32, TENSOR_SHAPE(4), -1, 1), *bl = test_uniform(DTYPE_F32, TENSOR_SHAPE(4), -1, 1);
    ag_set_requires_grad(wl, true);
    ag_set_requires_grad(bl, true);
    struct tensor *yl = ag_layer_norm(xl, 1, wl, bl, 1e-5);
    ck_assert_msg(yl && tensor_numel(yl) == 0, "%s", tensor_error());
    ck_assert_int_eq(ag_backward(yl, tensor_zeros(DTYPE_F32, TENSOR_SHAPE(0, 4), DEVICE_CPU), false), STATUS_OK);
    for (int i = 0; i < 4; i++) ck_assert(tensor_get_flat(wl->grad, i) == 0 && tensor_get_flat(bl->grad, i) == 0);
    /* cross_entropy with no classes: refused in its own terms */
    struct tensor *tgt = tensor_zeros(DTYPE_I64, TENSOR_SHAPE(2), DEVICE_CPU);
    ck_assert_ptr_null(ag_cross_entropy(tensor_zeros(DTYPE_F32, TENSOR_SHAPE(2, 0), DEVICE_CPU), tgt));
    ck_assert_msg(strstr(tensor_error(), "cross_entropy: a target is not a class of logits [2,0]"), "%s", tensor_error());
    tensor_clear_error();
    /* attention with no keys: every row sees nothing, out is 0 */
    struct tensor *q = test_uniform(DTYPE_F32, TENSOR_SHAPE(1, 2, 3, 4), -1, 1);
    struct tensor *k = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(1, 2, 0, 4), DEVICE_CPU), *v = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(1, 2, 0, 5), DEVICE_CPU);
    struct tensor *ya = ag_attention(q, k, v, 0, false);
    ck_assert_msg(ya && tensor_numel(ya) == 30, "%s", tensor_error());
    for (int64_t i = 0; i < 30; i++) ck_assert(tensor_get_flat(ya, i) == 0);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    test_seed();
    Suite *s = suite_create("ops");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_unary, 0, sizeof unary_cases / sizeof *unary_cases);
    tcase_add_test(tc, test_unary_values);
    tcase_add_loop_test(tc, test_binary, 0, sizeof binary_cases / sizeof *binary_cases);
    tcase_add_test(tc, test_where);
    tcase_add_test(tc, test_long_rows);
    tcase_add_loop_test(tc, test_vec_act, 0, 3);
    tcase_add_loop_test(tc, test_vec_act_edges, 0, 3);
    tcase_add_loop_test(tc, test_reduce, 0, sizeof reduce_cases / sizeof *reduce_cases);
    tcase_add_test(tc, test_reduce_values);
    tcase_add_loop_test(tc, test_views, 0, 8);
    tcase_add_test(tc, test_matmul);
    tcase_add_test(tc, test_matmul_reference);
    tcase_add_loop_test(tc, test_softmax, 0, 4);
    tcase_add_test(tc, test_softmax_reference);
    tcase_add_test(tc, test_misc);
    tcase_add_test(tc, test_dropout_stats);
    tcase_add_test(tc, test_empty_dims);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
