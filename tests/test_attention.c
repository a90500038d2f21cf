/* test_attention.c — scaled-dot-product attention: gradient checks (masks, cross-attention,
 * Dv != D, scales, strided layouts), the blocked kernels against a naive float64 softmax loop,
 * partial and strided gradients, determinism across thread counts, errors and leaks. */
#include "tests/harness.h"
#include "tensor/backend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- gradient checks */

enum layout { CONTIGUOUS, PERMUTED_BLHD, STRIDED };

struct attn_case {
    const char *label;
    int64_t B, H, L, S, D, Dv;
    bool causal;
    double scale;   /* <= 0: 1/sqrt(D) */
    enum layout layout;
};

static const struct attn_case cases[] = {
    {"attention[L=6,S=6]", 1, 2, 6, 6, 4, 4, false, 0, CONTIGUOUS},
    {"attention[causal,L=6,S=6]", 1, 2, 6, 6, 4, 4, true, 0, CONTIGUOUS},
    {"attention[cross,L=5,S=7]", 2, 1, 5, 7, 3, 3, false, 0, CONTIGUOUS},
    {"attention[causal,cross,L=5,S=7]", 1, 2, 5, 7, 3, 3, true, 0, CONTIGUOUS},
    {"attention[causal,L=7,S=5,rows_without_keys]", 1, 2, 7, 5, 3, 3, true, 0, CONTIGUOUS},
    {"attention[D=5,Dv=2,L=4,S=6]", 1, 2, 4, 6, 5, 2, false, 0, CONTIGUOUS},
    {"attention[scale=0.9,L=5,S=5]", 1, 2, 5, 5, 3, 3, false, 0.9, CONTIGUOUS},
    {"attention[causal,scale=1.7,L=5,S=6]", 1, 1, 5, 6, 3, 4, true, 1.7, CONTIGUOUS},
    {"attention[permuted_BLHD,L=5,S=6]", 2, 2, 5, 6, 3, 3, false, 0, PERMUTED_BLHD},
    {"attention[causal,permuted_BLHD,L=6,S=6]", 1, 2, 6, 6, 3, 2, true, 0, PERMUTED_BLHD},
    {"attention[strided,L=4,S=5,D=3,Dv=2]", 1, 2, 4, 5, 3, 2, false, 0, STRIDED},
    {"attention[causal,blocks,L=70,S=66]", 1, 1, 70, 66, 2, 2, true, 0, CONTIGUOUS},
};

static struct tensor *f_attention(struct tensor *const *in, void *ctx)
{
    const struct attn_case *c = ctx;
    return ag_attention(in[0], in[1], in[2], c->scale, c->causal);
}

/* a [B,H,R,C] input in the requested layout, values in [lo, hi) */
static struct tensor *make_input(enum dtype dt, enum layout lay, int64_t B, int64_t H, int64_t R, int64_t C, double lo,
                                 double hi)
{
    if (lay == PERMUTED_BLHD) {   /* heads split out of [B,R,H,C], the layout the UNet produces */
        const int perm[4] = {0, 2, 1, 3};
        return tensor_permute(test_uniform(dt, TENSOR_SHAPE(B, R, H, C), lo, hi), perm);
    }
    struct tensor *t = test_uniform(dt, TENSOR_SHAPE(B, H, R, C), lo, hi);
    return lay == STRIDED ? test_noncontig(t) : t;
}

START_TEST(test_gradcheck)
{
    LEAK_CHECK_BEGIN();
    const struct attn_case *c = &cases[_i];
    tensor_scope_begin();
    struct tensor *in[3] = {make_input(DTYPE_F64, c->layout, c->B, c->H, c->L, c->D, -1, 1),
                            make_input(DTYPE_F64, c->layout, c->B, c->H, c->S, c->D, -1, 1),
                            make_input(DTYPE_F64, c->layout, c->B, c->H, c->S, c->Dv, -1, 1)};
    if (c->layout != CONTIGUOUS) ck_assert(!tensor_is_contiguous(in[0]));
    ck_assert(gradcheck(c->label, f_attention, (void *)c, 3, in, NULL));
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- naive float64 reference */

struct ref {
    int64_t B, H, L, S, D, Dv;
    double scale;
    bool causal;
    double *q, *k, *v, *dout;             /* inputs, row-major [B,H,*,*] */
    double *out, *lse, *dq, *dk, *dv;     /* results */
};

static double *values_of(const struct tensor *t)
{
    int64_t n = tensor_numel(t);
    double *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x);
    ck_assert_ptr_nonnull(x);
    for (int64_t i = 0; i < n; i++) x[i] = tensor_get_flat(t, i);
    return x;
}

/* softmax(scale q k^T) v row by row, and the textbook backward: dP = dO v^T,
 * dS = P * (dP - sum_j P dP), dq = scale dS k, dk = scale dS^T q, dv = P^T dO */
static void naive_attention(struct ref *r)
{
    const int64_t L = r->L, S = r->S, D = r->D, Dv = r->Dv;
    r->out = calloc((size_t)(r->B * r->H * L * Dv + 1), sizeof(double));
    r->lse = calloc((size_t)(r->B * r->H * L + 1), sizeof(double));
    r->dq = calloc((size_t)(r->B * r->H * L * D + 1), sizeof(double));
    r->dk = calloc((size_t)(r->B * r->H * S * D + 1), sizeof(double));
    r->dv = calloc((size_t)(r->B * r->H * S * Dv + 1), sizeof(double));
    double *p = malloc((size_t)(S + 1) * sizeof *p), *dp = malloc((size_t)(S + 1) * sizeof *dp);
    for (int64_t bh = 0; bh < r->B * r->H; bh++) {
        const double *q = r->q + bh * L * D, *k = r->k + bh * S * D, *v = r->v + bh * S * Dv, *dO = r->dout + bh * L * Dv;
        double *out = r->out + bh * L * Dv, *dq = r->dq + bh * L * D, *dk = r->dk + bh * S * D, *dv = r->dv + bh * S * Dv;
        for (int64_t i = 0; i < L; i++) {
            int64_t n = r->causal ? i + 1 + S - L : S;   /* keys j <= i + S - L */
            n = n < 0 ? 0 : n > S ? S : n;
            if (n == 0) { r->lse[bh * L + i] = -INFINITY; continue; }
            double mx = -INFINITY, sum = 0;
            for (int64_t j = 0; j < n; j++) {
                double s = 0;
                for (int64_t d = 0; d < D; d++) s += q[i * D + d] * k[j * D + d];
                p[j] = r->scale * s;
                mx = fmax(mx, p[j]);
            }
            for (int64_t j = 0; j < n; j++) sum += (p[j] = exp(p[j] - mx));
            for (int64_t j = 0; j < n; j++) p[j] /= sum;
            r->lse[bh * L + i] = mx + log(sum);
            double di = 0;
            for (int64_t j = 0; j < n; j++) {
                dp[j] = 0;
                for (int64_t d = 0; d < Dv; d++) {
                    out[i * Dv + d] += p[j] * v[j * Dv + d];
                    dp[j] += dO[i * Dv + d] * v[j * Dv + d];
                }
                di += p[j] * dp[j];
            }
            for (int64_t j = 0; j < n; j++) {
                const double ds = p[j] * (dp[j] - di);
                for (int64_t d = 0; d < D; d++) {
                    dq[i * D + d] += r->scale * ds * k[j * D + d];
                    dk[j * D + d] += r->scale * ds * q[i * D + d];
                }
                for (int64_t d = 0; d < Dv; d++) dv[j * Dv + d] += p[j] * dO[i * Dv + d];
            }
        }
    }
    free(p);
    free(dp);
}

static void ref_free(struct ref *r)
{
    double *all[] = {r->q, r->k, r->v, r->dout, r->out, r->lse, r->dq, r->dk, r->dv};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) free(all[i]);
}

/* same values element by element (-inf included) */
static bool identical(const struct tensor *a, const struct tensor *b)
{
    if (!tensor_same_shape(a, b)) return false;
    for (int64_t i = 0; i < tensor_numel(a); i++)
        if (tensor_get_flat(a, i) != tensor_get_flat(b, i)) return false;
    return true;
}

/* max |t - ref| / max |ref|; entries that are -inf in both count as equal */
static double max_rel(const struct tensor *t, const double *ref)
{
    double err = 0, mag = 1e-300;
    for (int64_t i = 0; i < tensor_numel(t); i++) {
        const double x = tensor_get_flat(t, i);
        if (isinf(ref[i]) && x == ref[i]) continue;
        err = fmax(err, fabs(x - ref[i]));
        if (err != err || isinf(x)) return INFINITY;
        mag = fmax(mag, fabs(ref[i]));
    }
    return err / mag;
}

/* kernels over several query blocks (L=300 is 4 full blocks and a partial one) in f64 and f32,
 * with q and dout heads permuted out of [B,L,H,D]; causal with L > S leaves 43 rows without keys */
START_TEST(test_reference)
{
    LEAK_CHECK_BEGIN();
    const enum dtype dt = _i & 1 ? DTYPE_F32 : DTYPE_F64;
    const bool causal = _i & 2;
    tensor_scope_begin();
    struct ref r = {.B = 2, .H = 2, .L = 300, .S = 257, .D = 40, .Dv = 32, .causal = causal};
    r.scale = 1.0 / sqrt((double)r.D);
    struct tensor *q = make_input(dt, PERMUTED_BLHD, r.B, r.H, r.L, r.D, -1.5, 1.5);
    struct tensor *k = make_input(dt, CONTIGUOUS, r.B, r.H, r.S, r.D, -1.5, 1.5);
    struct tensor *v = make_input(dt, CONTIGUOUS, r.B, r.H, r.S, r.Dv, -1, 1);
    struct tensor *dout = make_input(dt, PERMUTED_BLHD, r.B, r.H, r.L, r.Dv, -1, 1);
    r.q = values_of(q);
    r.k = values_of(k);
    r.v = values_of(v);
    r.dout = values_of(dout);
    naive_attention(&r);

    /* the kernel pair, as the op calls them */
    struct tensor *out = tensor_empty(dt, TENSOR_SHAPE(r.B, r.H, r.L, r.Dv), DEVICE_CPU);
    struct tensor *lse = tensor_empty(dt, TENSOR_SHAPE(r.B, r.H, r.L), DEVICE_CPU);
    ck_assert_int_eq(backend_cpu.attention(out, lse, q, k, v, r.scale, causal), STATUS_OK);
    struct tensor *g[3] = {tensor_empty_like(q), tensor_empty_like(k), tensor_empty_like(v)};
    ck_assert_int_eq(backend_cpu.attention_backward(g[0], g[1], g[2], dout, q, k, v, out, lse, r.scale, causal), STATUS_OK);
    const double e_out = max_rel(out, r.out), e_lse = max_rel(lse, r.lse);
    const double e_dq = max_rel(g[0], r.dq), e_dk = max_rel(g[1], r.dk), e_dv = max_rel(g[2], r.dv);
    printf("reference attention[%s%s,B=2,H=2,L=300,S=257,D=40,Dv=32] out=%.1e lse=%.1e dq=%.1e dk=%.1e dv=%.1e\n",
           dtype_name(dt), causal ? ",causal" : "", e_out, e_lse, e_dq, e_dk, e_dv);
    const double tol = dt == DTYPE_F64 ? 1e-12 : 2e-5;
    ck_assert(e_out < tol && e_lse < tol && e_dq < tol && e_dk < tol && e_dv < tol);
    if (causal)   /* rows 0..42 see no key */
        for (int64_t i = 0; i < r.L - r.S; i++) {
            ck_assert(isinf(tensor_get(lse, (int64_t[]){1, 1, i})));
            ck_assert(tensor_get(out, (int64_t[]){1, 1, i, 5}) == 0);
        }

    /* through the op: ag_attention + ag_backward give the same gradients */
    struct tensor *x[3] = {ag_detach(q), ag_detach(k), ag_detach(v)};
    for (int i = 0; i < 3; i++) ag_set_requires_grad(x[i], true);
    struct tensor *y = ag_attention(x[0], x[1], x[2], 0, causal);
    ck_assert_ptr_nonnull(y);
    ck_assert(identical(y, out));
    ck_assert_int_eq(ag_backward(y, dout, false), STATUS_OK);
    for (int i = 0; i < 3; i++) ck_assert(identical(x[i]->grad, g[i]));
    ref_free(&r);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* any subset of dq/dk/dv, and gradients or outputs whose rows are not contiguous, give the
 * same numbers as the full contiguous call */
START_TEST(test_partial_and_strided)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    const int64_t B = 1, H = 2, L = 130, S = 97, D = 24, Dv = 16;
    const double scale = 0.3;
    struct tensor *q = make_input(DTYPE_F32, CONTIGUOUS, B, H, L, D, -1, 1);
    struct tensor *k = make_input(DTYPE_F32, PERMUTED_BLHD, B, H, S, D, -1, 1);
    struct tensor *v = make_input(DTYPE_F32, STRIDED, B, H, S, Dv, -1, 1);
    struct tensor *dout = make_input(DTYPE_F32, CONTIGUOUS, B, H, L, Dv, -1, 1);
    struct tensor *out = tensor_empty(DTYPE_F32, TENSOR_SHAPE(B, H, L, Dv), DEVICE_CPU);
    struct tensor *lse = tensor_empty(DTYPE_F32, TENSOR_SHAPE(B, H, L), DEVICE_CPU);
    ck_assert_int_eq(backend_cpu.attention(out, lse, q, k, v, scale, true), STATUS_OK);
    /* strided out and lse */
    struct tensor *out_s = test_noncontig(tensor_zeros_like(out)), *lse_s = test_noncontig(tensor_zeros_like(lse));
    ck_assert_int_eq(backend_cpu.attention(out_s, lse_s, q, k, v, scale, true), STATUS_OK);
    ck_assert(identical(out_s, out) && identical(lse_s, lse));

    struct tensor *full[3] = {tensor_empty_like(q), tensor_empty_like(k), tensor_empty_like(v)};
    ck_assert_int_eq(backend_cpu.attention_backward(full[0], full[1], full[2], dout, q, k, v, out, lse, scale, true),
                     STATUS_OK);
    for (int mask = 0; mask < 8; mask++) {
        struct tensor *g[3];
        for (int i = 0; i < 3; i++) g[i] = mask >> i & 1 ? test_noncontig(tensor_zeros_like(full[i])) : NULL;
        ck_assert_int_eq(backend_cpu.attention_backward(g[0], g[1], g[2], test_noncontig(dout), q, k, v, out_s, lse_s,
                                                        scale, true), STATUS_OK);
        for (int i = 0; i < 3; i++)
            if (g[i]) ck_assert(identical(g[i], full[i]));
    }
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* Heads in parallel (B*H = 3): every GEMM runs single-threaded inside our own parallel region,
 * so 1 and 2 threads give identical bits. A single head (the threads go to BLAS and the row
 * loops): OpenBLAS may split a GEMM differently for another thread count on some CPUs (seen on
 * an Intel Xeon host), so there the run is repeated at the same thread count and must be
 * bit-identical, and across thread counts it must agree to float32 rounding. */
START_TEST(test_determinism)
{
    LEAK_CHECK_BEGIN();
    const int64_t H = _i ? 3 : 1;
    const int threads0 = tensor_num_threads();
    tensor_scope_begin();
    struct tensor *q = make_input(DTYPE_F32, CONTIGUOUS, 1, H, 200, 180, -1, 1);
    q = tensor_narrow(q, 3, 0, 40);   /* rows with a stride */
    struct tensor *k = make_input(DTYPE_F32, CONTIGUOUS, 1, H, 190, 40, -1, 1);
    struct tensor *v = make_input(DTYPE_F32, CONTIGUOUS, 1, H, 190, 40, -1, 1);
    struct tensor *dout = make_input(DTYPE_F32, CONTIGUOUS, 1, H, 200, 40, -1, 1);
    struct tensor *res[3][4];
    const int threads[3] = {1, 2, 2};
    for (int t = 0; t < 3; t++) {
        tensor_set_num_threads(threads[t]);
        struct tensor *x[3] = {ag_detach(q), ag_detach(k), ag_detach(v)};
        for (int i = 0; i < 3; i++) ag_set_requires_grad(x[i], true);
        res[t][0] = ag_attention(x[0], x[1], x[2], 0, true);
        ck_assert_int_eq(ag_backward(res[t][0], dout, false), STATUS_OK);
        for (int i = 0; i < 3; i++) res[t][i + 1] = x[i]->grad;
    }
    tensor_set_num_threads(threads0);
    for (int i = 0; i < 4; i++) {
        ck_assert(identical(res[1][i], res[2][i]));   /* repeated run, same threads */
        if (H > 1) ck_assert(identical(res[0][i], res[1][i]));
        else ck_assert(test_rel_err(res[0][i], res[1][i]) < 1e-6);
    }
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* internal hook of tensor/cpu/attention.c: the widest SIMD the f32 exp may use */
void cpu_attention_max_lanes(int lanes);

/* out, dq, dk, dv of attention(q, k, v) with the f32 exp capped at `lanes` */
static void attention_at(int lanes, bool causal, struct tensor *q, struct tensor *k, struct tensor *v, struct tensor *dout,
                         struct tensor *res[4])
{
    cpu_attention_max_lanes(lanes);
    struct tensor *x[3] = {ag_detach(q), ag_detach(k), ag_detach(v)};
    for (int i = 0; i < 3; i++) ag_set_requires_grad(x[i], true);
    res[0] = ag_attention(x[0], x[1], x[2], 0, causal);
    ck_assert_ptr_nonnull(res[0]);
    ck_assert_int_eq(ag_backward(res[0], dout, false), STATUS_OK);
    for (int i = 0; i < 3; i++) res[i + 1] = x[i]->grad;
    cpu_attention_max_lanes(16);
}

/* The f32 softmax's exp runs on 4, 8 or 16 lanes, whichever the CPU has: every width gives the
 * same bits, forward and backward, causal or not (key counts off a multiple of 16 take the padded
 * last vector); the 4 lanes without FMA, close results */
START_TEST(test_simd_widths)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *q = make_input(DTYPE_F32, CONTIGUOUS, 2, 3, 70, 24, -3, 3);
    struct tensor *k = make_input(DTYPE_F32, CONTIGUOUS, 2, 3, 83, 24, -3, 3);
    struct tensor *v = make_input(DTYPE_F32, CONTIGUOUS, 2, 3, 83, 16, -1, 1);
    struct tensor *dout = make_input(DTYPE_F32, CONTIGUOUS, 2, 3, 70, 16, -1, 1);
    for (int causal = 0; causal < 2; causal++) {
        struct tensor *r4[4], *r8[4], *r16[4];
        attention_at(4, causal, q, k, v, dout, r4);
        attention_at(8, causal, q, k, v, dout, r8);
        attention_at(16, causal, q, k, v, dout, r16);
        for (int i = 0; i < 4; i++)
            ck_assert_msg(identical(r8[i], r4[i]) && identical(r16[i], r4[i]), "%s result %d differs between widths",
                          causal ? "causal" : "full", i);
        /* what a CPU without FMA runs: its exp rounds differently, so close to the bits above, not equal */
        struct tensor *r0[4];
        attention_at(0, causal, q, k, v, dout, r0);
        for (int i = 0; i < 4; i++) {
            const double e = test_rel_err(r0[i], r4[i]);
            ck_assert_msg(e < 1e-6, "%s result %d without FMA: rel err %.3g", causal ? "causal" : "full", i, e);
        }
    }
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- scale, errors, leaks */

START_TEST(test_default_scale)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *q = make_input(DTYPE_F64, CONTIGUOUS, 1, 2, 5, 9, -2, 2);
    struct tensor *k = make_input(DTYPE_F64, CONTIGUOUS, 1, 2, 6, 9, -2, 2);
    struct tensor *v = make_input(DTYPE_F64, CONTIGUOUS, 1, 2, 6, 3, -2, 2);
    struct tensor *a = ag_attention(q, k, v, 0, false), *b = ag_attention(q, k, v, -1, false);
    struct tensor *c = ag_attention(q, k, v, 1.0 / 3.0, false), *d = ag_attention(q, k, v, 1.0, false);
    ck_assert(identical(a, c) && identical(b, c));
    ck_assert(test_max_abs_diff(d, c) > 1e-3);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

static void expect_error(struct tensor *y, enum status s, const char *needle)
{
    ck_assert_ptr_null(y);
    ck_assert_int_eq(tensor_status(), s);
    ck_assert_msg(strstr(tensor_error(), needle) != NULL, "error \"%s\" lacks \"%s\"", tensor_error(), needle);
    ck_assert(strstr(tensor_error(), "attention") != NULL);
}

START_TEST(test_errors)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *q = make_input(DTYPE_F32, CONTIGUOUS, 2, 3, 5, 4, -1, 1);
    struct tensor *k = make_input(DTYPE_F32, CONTIGUOUS, 2, 3, 6, 4, -1, 1);
    struct tensor *v = make_input(DTYPE_F32, CONTIGUOUS, 2, 3, 6, 2, -1, 1);
    ck_assert_ptr_nonnull(ag_attention(q, k, v, 0, false));
    expect_error(ag_attention(tensor_select(q, 0, 0), k, v, 0, false), STATUS_SHAPE, "q [B,H,L,D]");
    expect_error(ag_attention(q, tensor_narrow(k, 3, 0, 3), v, 0, false), STATUS_SHAPE, "do not fit");   /* D */
    expect_error(ag_attention(q, k, tensor_narrow(v, 2, 0, 5), 0, false), STATUS_SHAPE, "do not fit");   /* S */
    expect_error(ag_attention(q, tensor_narrow(k, 1, 0, 2), v, 0, false), STATUS_SHAPE, "k [B,H,S,D]");  /* H */
    expect_error(ag_attention(q, k, tensor_narrow(v, 0, 0, 1), 0, false), STATUS_SHAPE, "[2,3,5,4]");    /* B */
    expect_error(ag_attention(q, tensor_to_dtype(k, DTYPE_F64), v, 0, false), STATUS_DTYPE, "f64");
    expect_error(ag_attention(tensor_to_dtype(q, DTYPE_I32), k, v, 0, false), STATUS_DTYPE, "i32");
    expect_error(ag_attention(q, k, v, NAN, false), STATUS_VALUE, "scale");
    expect_error(ag_attention(q, k, v, INFINITY, true), STATUS_VALUE, "scale");
    /* a NULL input propagates without replacing the first error */
    tensor_fail(STATUS_VALUE, "earlier failure");
    ck_assert_ptr_null(ag_attention(NULL, k, v, 0, false));
    ck_assert_str_eq(tensor_error(), "earlier failure");
    /* the kernels check what they are given */
    struct tensor *out = tensor_empty(DTYPE_F32, TENSOR_SHAPE(2, 3, 5, 2), DEVICE_CPU);
    struct tensor *lse = tensor_empty(DTYPE_F32, TENSOR_SHAPE(2, 3, 6), DEVICE_CPU);
    ck_assert_int_eq(backend_cpu.attention(out, lse, q, k, v, 0.5, false), STATUS_SHAPE);
    ck_assert(strstr(tensor_error(), "lse") != NULL);
    lse = tensor_empty(DTYPE_F32, TENSOR_SHAPE(2, 3, 5), DEVICE_CPU);
    ck_assert_int_eq(backend_cpu.attention(out, lse, q, k, v, 0.5, false), STATUS_OK);
    ck_assert_int_eq(backend_cpu.attention_backward(tensor_empty_like(k), NULL, NULL, out, q, k, v, out, lse, 0.5, false),
                     STATUS_SHAPE);
    ck_assert(strstr(tensor_error(), "gradient 0") != NULL);
    ck_assert_int_eq(backend_cpu.attention_backward(NULL, NULL, NULL, q, q, k, v, out, lse, 0.5, false), STATUS_SHAPE);
    ck_assert(strstr(tensor_error(), "dout") != NULL);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* graphs freed without a backward, kept across a retained backward, and empty shapes */
START_TEST(test_lifetimes)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct tensor *q = make_input(DTYPE_F32, CONTIGUOUS, 1, 2, 4, 3, -1, 1);
    struct tensor *k = make_input(DTYPE_F32, CONTIGUOUS, 1, 2, 5, 3, -1, 1);
    struct tensor *v = make_input(DTYPE_F32, CONTIGUOUS, 1, 2, 5, 3, -1, 1);
    ag_set_requires_grad(q, true);
    ag_set_requires_grad(v, true);
    struct tensor *y = ag_attention(q, k, v, 0, false);   /* dropped with the scope, no backward */
    ck_assert_ptr_nonnull(y);
    struct tensor *l = ag_sum(ag_attention(q, k, v, 0, true), 0, NULL, false);
    ck_assert_int_eq(ag_backward(l, NULL, true), STATUS_OK);
    ck_assert_int_eq(ag_backward(l, NULL, false), STATUS_OK);
    ck_assert_ptr_nonnull(q->grad);
    ck_assert_ptr_null(k->grad);
    /* no keys at all: zeros, and a zero gradient */
    struct tensor *k0 = tensor_empty(DTYPE_F32, TENSOR_SHAPE(1, 2, 0, 3), DEVICE_CPU);
    struct tensor *v0 = tensor_empty(DTYPE_F32, TENSOR_SHAPE(1, 2, 0, 3), DEVICE_CPU);
    ag_zero_grad(q);
    struct tensor *z = ag_attention(q, k0, v0, 0, false);
    ck_assert_ptr_nonnull(z);
    ck_assert(identical(z, tensor_zeros_like(z)));
    ck_assert_int_eq(ag_backward(ag_sum(z, 0, NULL, false), NULL, false), STATUS_OK);
    ck_assert(identical(q->grad, tensor_zeros_like(q)));
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    test_seed();
    Suite *s = suite_create("attention");
    TCase *tc = tcase_create("attention");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_gradcheck, 0, sizeof cases / sizeof *cases);
    tcase_add_loop_test(tc, test_reference, 0, 4);
    tcase_add_test(tc, test_partial_and_strided);
    tcase_add_loop_test(tc, test_determinism, 0, 2);
    tcase_add_test(tc, test_simd_widths);
    tcase_add_test(tc, test_default_scale);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_lifetimes);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
