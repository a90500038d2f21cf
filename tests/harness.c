/* harness.c — the generic gradient checker and test helpers. */
#include "tests/harness.h"

#include <ftw.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

uint64_t test_seed(void)
{
    static uint64_t seed;
    static bool have;
    if (!have) {
        const char *env = getenv("GRADCHECK_SEED");
        seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
        have = true;
        printf("test seed %llu (set GRADCHECK_SEED=%llu to repeat)\n", (unsigned long long)seed, (unsigned long long)seed);
        ag_rng_seed(seed);
    }
    return seed;
}

struct tensor *test_uniform(enum dtype dt, int ndim, const int64_t *shape, double lo, double hi)
{
    test_seed();
    tensor_scope_begin();
    struct tensor *t = ag_affine(ag_rand(DTYPE_F64, ndim, shape, DEVICE_CPU), hi - lo, lo);
    if (dt != DTYPE_F64) t = tensor_to_dtype(t, dt);
    return tensor_scope_return(t);
}

struct tensor *test_noncontig(struct tensor *t)
{
    /* store with reversed dim order, then view it back in t's order */
    int perm[TENSOR_MAX_DIMS];
    int64_t rshape[TENSOR_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++) { perm[d] = t->ndim - 1 - d; rshape[d] = t->shape[t->ndim - 1 - d]; }
    tensor_scope_begin();
    struct tensor *v = tensor_permute(tensor_empty(t->dtype, t->ndim, rshape, DEVICE_CPU), perm);
    tensor_copy_(v, t);
    return tensor_scope_return(v);
}

double test_max_abs_diff(const struct tensor *a, const struct tensor *b)
{
    double m = 0;
    int64_t n = tensor_numel(a);
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(tensor_get_flat(a, i) - tensor_get_flat(b, i));
        if (d > m || d != d) m = d;
    }
    return m;
}

const struct tensor *test_on_host(const struct tensor *t)
{
    return tensor_device(t) == DEVICE_CPU ? t : tensor_to_device(t, DEVICE_CPU);
}

double test_rel_err(const struct tensor *a, const struct tensor *b)
{
    double num = 0, den = 0;
    int64_t n = tensor_numel(a);
    if (n != tensor_numel(b)) return INFINITY;
    tensor_scope_begin();
    const struct tensor *ha = test_on_host(a), *hb = test_on_host(b);
    const bool read = ha && hb;
    for (int64_t i = 0; read && i < n; i++) {
        double x = tensor_get_flat(ha, i), y = tensor_get_flat(hb, i);
        num += (x - y) * (x - y);
        den += y * y;
    }
    tensor_scope_end();
    return read ? sqrt(num) / fmax(sqrt(den), 1e-30) : INFINITY;
}

/* L = sum(f(in) * R) with inputs cast to dt; grads into g[] (NULL entries skipped) */
static double eval(gc_fn f, void *ctx, int n, struct tensor *const *in, struct tensor *R, bool grad, unsigned nograd,
                   struct tensor **out_keep, struct tensor **g)
{
    tensor_scope_begin();
    struct tensor *x[16];
    for (int i = 0; i < n; i++) {
        x[i] = in[i];
        if (grad && !(nograd >> i & 1)) {
            x[i] = ag_detach(in[i]);
            ag_set_requires_grad(x[i], true);
        }
    }
    if (!grad) ag_no_grad_begin();
    struct tensor *y = f(x, ctx);
    double L = NAN;
    if (y) {
        struct tensor *Rc = tensor_to_dtype(R, y->dtype);
        struct tensor *l = ag_sum(ag_mul(y, ag_reshape(Rc, y->ndim, y->shape)), 0, NULL, false);
        if (l) {
            L = tensor_get_flat(l, 0);
            if (grad && l->requires_grad && ag_backward(l, NULL, false)) {
                fprintf(stderr, "gradcheck: backward failed: %s\n", tensor_error());
                L = NAN;
            }
        }
        if (out_keep) *out_keep = tensor_keep(tensor_clone(y));
    } else {
        fprintf(stderr, "gradcheck: forward failed: %s\n", tensor_error());
    }
    if (!grad) ag_no_grad_end();
    if (grad)
        for (int i = 0; i < n; i++) g[i] = (nograd >> i & 1) ? NULL : tensor_ref(x[i]->grad);
    tensor_scope_end();
    return L;
}

bool gradcheck(const char *label, gc_fn f, void *ctx, int n, struct tensor *const *in, const struct gc_opts *o)
{
    const double tol = o && o->tol > 0 ? o->tol : 1e-6, h = o && o->h > 0 ? o->h : 1e-6;
    const double f32_tol = o && o->f32_tol != 0 ? o->f32_tol : 1e-4;
    const unsigned nograd = o ? o->nograd : 0;
    ck_assert_int_le(n, 16);
    tensor_scope_begin();
    /* output shape, then the fixed projection R */
    ag_no_grad_begin();
    struct tensor *y0 = f(in, ctx);
    ag_no_grad_end();
    if (!y0) {
        printf("gradcheck %s FAILED forward: %s\n", label, tensor_error());
        tensor_scope_end();
        return false;
    }
    struct tensor *R = test_uniform(DTYPE_F64, y0->ndim, y0->shape, -1, 1);
    struct tensor *g[16] = {0}, *y64 = NULL;
    double L = eval(f, ctx, n, in, R, true, nograd, &y64, g);
    bool ok = L == L;
    double max_rel = 0;
    for (int i = 0; i < n && ok; i++) {
        if (nograd >> i & 1) continue;
        if (!g[i]) { printf("gradcheck %s: input %d got no gradient\n", label, i); ok = false; break; }
        struct tensor *x = in[i];
        int64_t m = tensor_numel(x);
        for (int64_t j = 0; j < m; j++) {
            double v = tensor_get_flat(x, j);
            tensor_set_flat(x, j, v + h);
            double lp = eval(f, ctx, n, in, R, false, nograd, NULL, NULL);
            tensor_set_flat(x, j, v - h);
            double lm = eval(f, ctx, n, in, R, false, nograd, NULL, NULL);
            tensor_set_flat(x, j, v);
            double num = (lp - lm) / (2 * h), ana = tensor_get_flat(g[i], j);
            double rel = fabs(num - ana) / fmax(1.0, fmax(fabs(num), fabs(ana)));
            if (rel > max_rel || rel != rel) max_rel = rel;
        }
    }
    ok = ok && max_rel <= tol;
    /* the f32 path against the f64 result */
    double f32_rel = 0;
    if (ok && f32_tol > 0) {
        struct tensor *in32[16] = {0}, *g32[16] = {0}, *y32 = NULL;
        for (int i = 0; i < n; i++)
            in32[i] = dtype_is_float(in[i]->dtype) ? tensor_to_dtype(in[i], DTYPE_F32) : in[i];
        eval(f, ctx, n, in32, R, true, nograd, &y32, g32);
        if (!y32) ok = false;
        else {
            f32_rel = test_rel_err(y32, y64);
            for (int i = 0; i < n; i++)
                if (g32[i] && g[i]) f32_rel = fmax(f32_rel, test_rel_err(g32[i], g[i]));
            ok = f32_rel <= f32_tol;
        }
        tensor_free(y32);
        for (int i = 0; i < n; i++) tensor_free(g32[i]);
    }
    printf("gradcheck %s %s max_rel=%.1e", label, ok ? "ok" : "FAILED", max_rel);
    if (f32_tol > 0) printf(" f32_rel=%.1e", f32_rel);
    printf("\n");
    fflush(stdout);
    tensor_free(y64);
    for (int i = 0; i < n; i++) tensor_free(g[i]);
    tensor_scope_end();
    return ok;
}

/* the run's scratch directory: made by test_run_suite before Check forks, so every test's child
 * process writes into the same one and the parent, which outlives them, removes it */
static char g_tmpdir[64];

void test_tmp_path(char *out, size_t n, const char *name)
{
    ck_assert_msg(g_tmpdir[0], "test_tmp_path outside test_run_suite");
    ck_assert_msg((size_t)snprintf(out, n, "%s/%s", g_tmpdir, name) < n, "path for %s too long", name);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path) ? -1 : 0;
}

int test_run_suite(Suite *s)
{
    snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/draft-test-XXXXXX");
    if (!mkdtemp(g_tmpdir)) {
        perror("test_run_suite: mkdtemp");
        return EXIT_FAILURE;
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    /* whatever the tests left there, files and folders (FTW_DEPTH: contents first) */
    if (nftw(g_tmpdir, rm_entry, 8, FTW_DEPTH | FTW_PHYS)) {
        perror("test_run_suite: removing the scratch directory");
        failed = 1;
    }
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

unsigned char *test_slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long l = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)l + 1);
    ck_assert(b != NULL);
    ck_assert(fread(b, 1, (size_t)l, f) == (size_t)l);
    fclose(f);
    b[l] = 0;
    *n = (size_t)l;
    return b;
}

void test_spit(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    ck_assert(fwrite(data, 1, n, f) == n);
    ck_assert(fclose(f) == 0);
}
