/* bench_ops.c — times the engine's heavy ops (forward, and forward+backward through the
 * autograd graph) at Stable Diffusion UNet shapes, next to raw OpenBLAS sgemm as the
 * machine's compute ceiling. bench/torch_ops.py times the same cases in PyTorch and
 * bench/run_cpu_bench.sh joins the two into one table.
 *
 * Method (mirrored in torch_ops.py): inputs are N(0,1) f32 leaves that require grad;
 * `warmup` untimed runs, then the median of `reps` timed runs (CLOCK_MONOTONIC).
 *   fwd      the op under no-grad mode; the output is freed inside the timed region.
 *   fwd+bwd  the op with a graph, then ag_backward(out, R) with a fixed random output
 *            gradient R (= backward of sum(out * R)); graph, output and the leaves'
 *            gradients are all freed inside the timed region (a tensor scope + ag_zero_grad).
 *
 * usage: bench_ops [--threads N] [--reps N] [--warmup N] [--only id,id,...] [--tsv]
 *   --tsv prints machine-readable lines (for run_cpu_bench.sh) instead of the table. */
#include "autograd/autograd.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---------------------------------------------------------------- the cases */

#define MAX_IN 4

struct bench_case {
    const char *id;      /* key shared with torch_ops.py */
    const char *shape;   /* for people */
    double gflop_fwd;    /* nominal forward work; 0 for memory-bound ops (no GFLOP/s shown) */
    double bwd_factor;   /* nominal fwd+bwd work = gflop_fwd * bwd_factor */
    int n_in;
    int64_t in_shape[MAX_IN][5];   /* ndim then dims; ndim 0 = NULL input */
    struct tensor *(*forward)(struct tensor *const *in);
};

static struct tensor *fwd_matmul(struct tensor *const *in) { return ag_matmul(in[0], in[1]); }

static struct tensor *fwd_conv3x3(struct tensor *const *in)
{
    struct conv2d_params p = conv2d_params_default();
    p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = 1;
    return ag_conv2d(in[0], in[1], in[2], &p);
}

static struct tensor *fwd_group_norm(struct tensor *const *in) { return ag_group_norm(in[0], 32, in[1], in[2], 1e-5); }

static struct tensor *fwd_attention(struct tensor *const *in) { return ag_attention(in[0], in[1], in[2], 0, false); }

static struct tensor *fwd_gelu(struct tensor *const *in) { return ag_gelu(in[0]); }

static struct tensor *fwd_silu(struct tensor *const *in) { return ag_silu(in[0]); }

/* 2*M*N*K; conv: 2*N*Cout*H*W*Cin*9; attention: QK^T and PV = 4*B*H*L*L*D. A backward costs
 * two forward-sized products (d input, d weight), so fwd+bwd is nominally 3x the forward. */
static const struct bench_case cases[] = {
    {"matmul", "[1024,1024]@[1024,1024]", 2.0 * 1024 * 1024 * 1024 / 1e9, 3, 2,
     {{2, 1024, 1024}, {2, 1024, 1024}}, fwd_matmul},
    {"conv2d_320", "x[2,320,32,32] w[320,320,3,3] pad1", 2.0 * 2 * 320 * 32 * 32 * 320 * 9 / 1e9, 3, 3,
     {{4, 2, 320, 32, 32}, {4, 320, 320, 3, 3}, {1, 320}}, fwd_conv3x3},
    {"conv2d_4", "x[2,4,64,64] w[320,4,3,3] pad1", 2.0 * 2 * 320 * 64 * 64 * 4 * 9 / 1e9, 3, 3,
     {{4, 2, 4, 64, 64}, {4, 320, 4, 3, 3}, {1, 320}}, fwd_conv3x3},
    /* the demo UNet's 4x4 convs (batch 8: four images under guidance): torch 1.13 (oneDNN) is about
     * 2x faster here; ours is im2col + GEMMs over batches of images */
    {"conv2d_4px", "x[8,256,4,4] w[128,256,3,3] pad1", 2.0 * 8 * 128 * 4 * 4 * 256 * 9 / 1e9, 3, 3,
     {{4, 8, 256, 4, 4}, {4, 128, 256, 3, 3}, {1, 128}}, fwd_conv3x3},
    {"group_norm", "x[2,320,64,64] groups=32 affine", 0, 0, 3,
     {{4, 2, 320, 64, 64}, {1, 320}, {1, 320}}, fwd_group_norm},
    {"attention", "q,k,v[2,8,1024,40] (B,H,L,d)", 4.0 * 2 * 8 * 1024 * 1024 * 40 / 1e9, 3, 3,
     {{4, 2, 8, 1024, 40}, {4, 2, 8, 1024, 40}, {4, 2, 8, 1024, 40}}, fwd_attention},
    /* the embedded demo UNet's attentions (4 heads of 16; batch 8: four images under guidance),
     * self and cross (77 text tokens): head dims this small are where BLAS's overheads show */
    {"attention_d16", "q,k,v[8,4,256,16]", 4.0 * 8 * 4 * 256 * 256 * 16 / 1e9, 3, 3,
     {{4, 8, 4, 256, 16}, {4, 8, 4, 256, 16}, {4, 8, 4, 256, 16}}, fwd_attention},
    {"attention_x77", "q[8,4,256,16] k,v[8,4,77,16]", 4.0 * 8 * 4 * 256 * 77 * 16 / 1e9, 3, 3,
     {{4, 8, 4, 256, 16}, {4, 8, 4, 77, 16}, {4, 8, 4, 77, 16}}, fwd_attention},
    /* exact GELU at the demo UNet's GEGLU shape (the largest elementwise op in its profile) */
    {"gelu", "x[8,256,256] exact (erf)", 0, 0, 1, {{3, 8, 256, 256}}, fwd_gelu},
    /* SiLU at SD 1.4's first resnet activation (the UNet's most frequent elementwise op) */
    {"silu", "x[2,320,64,64]", 0, 0, 1, {{4, 2, 320, 64, 64}}, fwd_silu},
};
#define N_CASES (int)(sizeof cases / sizeof cases[0])

struct result {
    bool ok;
    double ms;
    char err[200];
};

static void result_fail(struct result *r)
{
    r->ok = false;
    snprintf(r->err, sizeof r->err, "%s", tensor_error()[0] ? tensor_error() : "unknown error");
    tensor_clear_error();
}

/* one timed run; returns the elapsed ms, or a negative value on failure */
static double run_once(const struct bench_case *c, struct tensor *const *in, struct tensor *R, bool backward)
{
    double t0 = now_ms();
    tensor_scope_begin();
    struct tensor *out = c->forward(in);
    bool ok = out != NULL;
    if (ok && backward) ok = ag_backward(out, R, false) == STATUS_OK;
    tensor_scope_end();
    for (int i = 0; i < c->n_in; i++) ag_zero_grad(in[i]);
    double t1 = now_ms();
    return ok ? t1 - t0 : -1;
}

static void run_case(const struct bench_case *c, int warmup, int reps, struct result res[2])
{
    struct tensor *in[MAX_IN] = {0}, *R = NULL;
    memset(res, 0, 2 * sizeof *res);
    double *times = calloc((size_t)reps, sizeof *times);
    for (int i = 0; i < c->n_in; i++) {
        const int64_t *s = c->in_shape[i];
        in[i] = ag_randn(DTYPE_F32, (int)s[0], s + 1, DEVICE_CPU);
        if (in[i]) ag_set_requires_grad(in[i], true);
    }
    /* a probe forward gives the output shape for the output gradient R */
    ag_no_grad_begin();
    struct tensor *probe = c->forward(in);
    ag_no_grad_end();
    if (probe) R = ag_randn(DTYPE_F32, probe->ndim, probe->shape, DEVICE_CPU);
    tensor_free(probe);
    if (!R || !times) {
        result_fail(&res[0]);
        res[1] = res[0];
        goto done;
    }
    for (int mode = 0; mode < 2; mode++) {
        const bool backward = mode == 1;
        res[mode].ok = true;
        if (!backward) ag_no_grad_begin();
        for (int it = 0; it < warmup + reps && res[mode].ok; it++) {
            double ms = run_once(c, in, R, backward);
            if (ms < 0) result_fail(&res[mode]);
            else if (it >= warmup) times[it - warmup] = ms;
        }
        if (!backward) ag_no_grad_end();
        if (res[mode].ok) res[mode].ms = median(times, reps);
    }
done:
    free(times);
    tensor_free(R);
    for (int i = 0; i < c->n_in; i++) tensor_free(in[i]);
}

/* raw cblas_sgemm 1024^3 on plain buffers: the ceiling a GEMM-bound op can reach here */
static double sgemm_ms(int warmup, int reps)
{
    const int n = 1024;
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n), *c = malloc(sizeof(float) * n * n);
    double *times = calloc((size_t)reps, sizeof *times);
    if (!a || !b || !c || !times) { free(a); free(b); free(c); free(times); return -1; }
    for (int64_t i = 0; i < (int64_t)n * n; i++) {   /* deterministic values in [-0.5, 0.5) */
        a[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
        b[i] = (float)((i * 104729) % 1000) / 1000.0f - 0.5f;
    }
    for (int it = 0; it < warmup + reps; it++) {
        double t0 = now_ms();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double t1 = now_ms();
        if (it >= warmup) times[it - warmup] = t1 - t0;
    }
    double ms = median(times, reps);
    free(a); free(b); free(c); free(times);
    return ms;
}

/* ---------------------------------------------------------------- main */

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [--threads N] [--reps N] [--warmup N] [--only id,id,...] [--tsv]\nids:", argv0);
    for (int i = 0; i < N_CASES; i++) fprintf(stderr, " %s", cases[i].id);
    fprintf(stderr, "\n");
}

static bool selected(const char *only, const char *id)
{
    if (!only) return true;
    size_t n = strlen(id);
    for (const char *p = only; (p = strstr(p, id)); p += n)
        if ((p == only || p[-1] == ',') && (p[n] == ',' || p[n] == 0)) return true;
    return false;
}

int main(int argc, char **argv)
{
    int threads = 2, reps = 10, warmup = 2;
    bool tsv = false;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_val = i + 1 < argc;
        if (!strcmp(a, "--threads") && has_val) threads = atoi(argv[++i]);
        else if (!strcmp(a, "--reps") && has_val) reps = atoi(argv[++i]);
        else if (!strcmp(a, "--warmup") && has_val) warmup = atoi(argv[++i]);
        else if (!strcmp(a, "--only") && has_val) only = argv[++i];
        else if (!strcmp(a, "--tsv")) tsv = true;
        else { usage(argv[0]); return !strcmp(a, "--help") || !strcmp(a, "-h") ? 0 : 2; }
    }
    if (threads < 1 || reps < 1 || warmup < 0) { usage(argv[0]); return 2; }
    tensor_set_num_threads(threads);
    ag_rng_seed(1234);
    const int64_t live0 = tensor_live_count();

    const double sg_ms = sgemm_ms(warmup + 1, 3 * reps);   /* cheap, so more runs: a steadier ceiling */
    const double sg_gflops = 2.0 * 1024 * 1024 * 1024 / 1e9 / (sg_ms * 1e-3);
    if (tsv) {
        printf("threads\t%d\nreps\t%d\nwarmup\t%d\n", tensor_num_threads(), reps, warmup);
        printf("sgemm\t%.4f\t%.2f\n", sg_ms, sg_gflops);
    } else {
        printf("engine ops, f32, %d thread(s), median of %d runs after %d warm-up\n", tensor_num_threads(), reps, warmup);
        printf("OpenBLAS cblas_sgemm 1024^3: %.2f ms = %.1f GFLOP/s\n\n", sg_ms, sg_gflops);
        printf("%-11s %-36s %-8s %10s %9s %9s\n", "op", "shape", "pass", "ms", "GFLOP/s", "of sgemm");
    }
    fflush(stdout);

    for (int i = 0; i < N_CASES; i++) {
        const struct bench_case *c = &cases[i];
        if (!selected(only, c->id)) continue;
        struct result res[2];
        run_case(c, warmup, reps, res);
        for (int mode = 0; mode < 2; mode++) {
            const char *mname = mode ? "fwd+bwd" : "fwd";
            const double gflop = c->gflop_fwd * (mode ? c->bwd_factor : 1);
            const double gflops = res[mode].ok && gflop > 0 ? gflop / (res[mode].ms * 1e-3) : 0;
            if (tsv) {
                printf("ours\t%s\t%s\t%s\t", c->id, mname, c->shape);
                if (res[mode].ok) printf("%.4f\t%.4f\t-\n", res[mode].ms, gflop);
                else printf("nan\t%.4f\t%s\n", gflop, res[mode].err);
            } else if (!res[mode].ok) {
                printf("%-11s %-36s %-8s n/a (%s)\n", c->id, c->shape, mname, res[mode].err);
            } else if (gflops > 0) {
                printf("%-11s %-36s %-8s %10.2f %9.1f %8.0f%%\n", c->id, c->shape, mname, res[mode].ms, gflops,
                       100 * gflops / sg_gflops);
            } else {
                printf("%-11s %-36s %-8s %10.2f %9s %9s\n", c->id, c->shape, mname, res[mode].ms, "-", "-");
            }
            fflush(stdout);
        }
    }
    if (!tsv) printf("\nGFLOP/s are nominal (fwd+bwd = 3x fwd); group_norm, gelu and silu are memory- or libm-bound, so none shown.\n");
    if (tensor_live_count() != live0) {
        fprintf(stderr, "bench_ops: %lld tensors leaked\n", (long long)(tensor_live_count() - live0));
        return 1;
    }
    return 0;
}
