/* bench_gpu.c — GPU benchmarks of the engine's CUDA backend (a program, not a test).
 * Prints "RESULT <name> <median ms> <figure> <unit>" lines that bench/join_gpu_bench.sh
 * pairs with bench/torch_gpu.py's, same names. Median of timed repetitions after warm-up;
 * the host clock is read after a device synchronize. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/autograd.h"
#include "tensor/alloc.h"
#include "tensor/backend.h"
#ifdef TENSOR_HAVE_CUDA
#include "tensor/cuda/cuda.h"
#endif

/* the kernel-variant switches (tensor/README.md) */
static const char *const g_switches[] = {"DRAFT_CONV_PIPELINE", "DRAFT_CONV_ROWSHIFT", "DRAFT_CONV_IMPLICIT",
                                         "DRAFT_CONV_HALO",     "DRAFT_CONV_WINOGRAD", "DRAFT_GN_FUSED_BWD",
                                         "DRAFT_GN_REG",        "DRAFT_GN_SUMS",       "DRAFT_ATTN_FUSED_DQ",
                                         "DRAFT_ATTN_MMA",      "DRAFT_ATTN_VEC4",     "DRAFT_ATTN_PACKED",
                                         "DRAFT_MATMUL_FAST_BF16", "DRAFT_CONV_AUTOCAST_TF32", "DRAFT_GN_STAGED",
                                         "DRAFT_GN_FUSED_WB",      "DRAFT_GN_STAGED_BWD",
                                         "DRAFT_CONV_AUTOCAST_WINO", "DRAFT_GN_PDL"};
#define N_SWITCHES (sizeof g_switches / sizeof *g_switches)

/* all off but those in `on` (a name, or names joined by '+'; NULL: all off), so that each row
 * names its kernels whatever the compiled-in defaults are */
static void set_switches(const char *on)
{
    for (size_t i = 0; i < N_SWITCHES; i++) {
        bool hit = false;
        const size_t n = strlen(g_switches[i]);
        for (const char *p = on; p && *p && !hit; p = strchr(p, '+') ? strchr(p, '+') + 1 : NULL)
            hit = !strncmp(p, g_switches[i], n) && (p[n] == '\0' || p[n] == '+');
        setenv(g_switches[i], hit ? "1" : "0", 1);
    }
}

/* `bench_gpu defaults` / `bench_gpu variants [GROUP]`: only the base rows (every switch off), or
 * only those with a switch on or the group_norm cluster size forced (with GROUP: only those of
 * that switch, or DRAFT_GN_CLUSTER; `bench_gpu groups` lists them). gpu-check runs the defaults
 * and each group as separate processes, so that a fault in a switch's kernel (which fails every
 * later CUDA call of its process) takes neither the base rows nor another switch's with it. */
static int g_which;             /* 0: every row, 1: base rows, 2: variants */
static const char *g_group;     /* with 2: only this group's rows (NULL: all) */

/* the group of the row about to run: the last switch that is on, else DRAFT_GN_CLUSTER when it
 * is set, else NULL (a base row) */
static const char *row_group(void)
{
    const char *g = NULL;   /* the last one on: a row with two on (MMA+VEC4) is the second's */
    for (size_t i = 0; i < N_SWITCHES; i++) {
        const char *e = getenv(g_switches[i]);
        if (e && *e == '1') g = g_switches[i];
    }
    return g ? g : getenv("DRAFT_GN_CLUSTER") ? "DRAFT_GN_CLUSTER" : NULL;
}

/* BENCH_GPU_ONLY=NAME[,NAME...]: run only those rows, each once after a warm-up call, inside the
 * profiler's window (cuda_profiler_mark), for `ncu --profile-from-start off` (gpu-check's ncu
 * step); nothing is timed */
static const char *g_only;

#ifdef TENSOR_HAVE_CUDA
static bool only_wanted(const char *name)
{
    const size_t n = strlen(name);
    for (const char *p = g_only; (p = strstr(p, name)); p += n)
        if ((p == g_only || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return true;
    return false;
}
#endif

static bool row_wanted(void)
{
    const char *grp = row_group();
    if (g_which == 0) return true;
    if (g_which == 1) return grp == NULL;
    return grp != NULL && (!g_group || !strcmp(g_group, grp));
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef enum status (*bench_fn)(void *ctx);

/* median time of fn in ms, or a negative number with the error printed (or, silently, when the
 * row is not wanted: row_wanted). With CUDA: device time
 * between CUDA events around `burst` back-to-back calls, divided by burst, as torch_gpu.py times
 * (burst 1 is one call from an idle GPU; a burst shows the rate of an op repeated in a model, with
 * the launch gaps but not the start-up latency). Without: the host clock after a synchronise. */
static double time_burst(const char *name, bench_fn fn, void *ctx, int warm, int reps, int burst)
{
    if (!row_wanted()) return -1;
#ifdef TENSOR_HAVE_CUDA
    if (g_only) {   /* profiling: one warm-up call, then the profiler's window around `burst` calls */
        if (!only_wanted(name)) return -1;
        enum status s = STATUS_OK;
        for (int i = 0; i < 2 && !s; i++) {
            if (i == 1) s = cuda_profiler_mark(true);
            for (int k = 0; k < (i ? burst : 1) && !s; k++) {
                tensor_scope_begin();
                s = fn(ctx);
                tensor_scope_end();
            }
        }
        enum status s2 = cuda_profiler_mark(false);
        printf("PROFILED %s %s\n", name, s || s2 ? tensor_error() : "ok");
        return -1;
    }
#endif
    double t[64];
    if (reps > 64) reps = 64;
    for (int i = 0; i < warm + reps; i++) {
        enum status s = STATUS_OK;
        double ms = 0;
#ifdef TENSOR_HAVE_CUDA
        s = cuda_synchronize();
        if (!s) s = cuda_timer_begin();
#endif
        double t0 = now_ms();
        for (int k = 0; k < burst && !s; k++) {
            tensor_scope_begin();
            s = fn(ctx);
            tensor_scope_end();
        }
#ifdef TENSOR_HAVE_CUDA
        if (!s) s = cuda_timer_end(&ms);
#else
        ms = now_ms() - t0;
#endif
        (void)t0;
        if (s) {
            printf("RESULT %s n/a 0 %s\n", name, tensor_error());
            return -1;
        }
        if (i >= warm) t[i - warm] = ms / burst;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    return t[reps / 2];
}

static double time_it(const char *name, bench_fn fn, void *ctx, int warm, int reps)
{
    return time_burst(name, fn, ctx, warm, reps, 1);
}

struct args {
    struct tensor *a, *b, *c, *d;
    struct conv2d_params cp;
    bool backward;
    /* burst rows: kRot input (rx) and output-gradient / destination (ry) sets used in turn, more
     * than the L2 holds, so that repeated calls stream from memory rather than from the cache */
    struct tensor *rx[8], *ry[8];
    int nrot, irot;
};
#define kRot 8

static enum status run_matmul(void *p)
{
    struct args *a = p;
    return ag_matmul(a->a, a->b) ? STATUS_OK : tensor_status();
}

/* bf16 tensors through the backend directly (autograd computes in f32/f64; bf16 is storage) */
static enum status run_matmul_backend(void *p)
{
    struct args *a = p;
    return backend_for(DEVICE_CUDA)->matmul(a->c, a->a, a->b, 1.0, 0.0);
}

static enum status run_conv(void *p)
{
    struct args *a = p;
    struct tensor *y = ag_conv2d(a->a, a->b, a->c, &a->cp);
    if (!y) return tensor_status();
    return a->backward ? ag_backward(y, a->d, false) : STATUS_OK;
}

/* fwd+bwd: the leaves' gradients are dropped first (torch_gpu.py: .grad = None), so that the
 * backward writes dx, dw, db and adds nothing onto an earlier call's: in a network x is an
 * activation, not a leaf, and the rows' bytes (5 passes over x's size) count no such add */
static enum status run_gn(void *p)
{
    struct args *a = p;
    const int r = a->nrot ? a->irot++ % a->nrot : 0;
    struct tensor *x = a->nrot ? a->rx[r] : a->a;
    struct tensor *y = ag_group_norm(x, 32, a->b, a->c, 1e-5);
    if (!y) return tensor_status();
    if (!a->backward) return STATUS_OK;
    ag_zero_grad(x), ag_zero_grad(a->b), ag_zero_grad(a->c);
    return ag_backward(y, a->nrot ? a->ry[r] : a->d, false);
}

/* the backend's group_norm kernels without autograd (no graph, no allocation: outputs made
 * once), as compiled in (the switches unset, where the base rows set every one off): the forward
 * alone, the backward alone, and its input gradient alone (dw, db NULL: no dw/db sums). With the fwd and fwd+bwd rows they split the fwd+bwd time into kernels and
 * the rest (graph, allocator, launches), which Nsight Compute cannot do where it lacks
 * counter permissions. */
struct gn_raw {
    struct tensor *x[kRot], *dy[kRot], *w, *b, *out, *mean, *rstd, *dx, *dw, *db;
    int nrot, irot, part;   /* part: 0 forward, 1 backward, 2 backward dx only */
};

static enum status run_gn_raw(void *p)
{
    struct gn_raw *g = p;
    const int r = g->irot++ % g->nrot;
    const struct backend *be = backend_of(g->x[r]);
    if (g->part == 0) return be->group_norm(g->out, g->mean, g->rstd, g->x[r], g->w, g->b, 32, 1e-5);
    return be->group_norm_backward(g->dx, g->part == 1 ? g->dw : NULL, g->part == 1 ? g->db : NULL, g->dy[r], g->x[r], g->w,
                                   g->mean, g->rstd, 32);
}

static enum status run_attn(void *p)
{
    struct args *a = p;
    struct tensor *y = ag_attention(a->a, a->b, a->c, 0, false);
    if (!y) return tensor_status();
    return a->backward ? ag_backward(y, a->d, false) : STATUS_OK;
}

static enum status run_add(void *p)
{
    struct args *a = p;
    return ag_add(a->a, a->b) ? STATUS_OK : tensor_status();
}

static enum status run_copy(void *p)
{
    struct args *a = p;
    const int r = a->nrot ? a->irot++ % a->nrot : 0;
    return a->nrot ? tensor_copy_(a->ry[r], a->rx[r]) : tensor_copy_(a->c, a->a);
}

/* an empty kernel launched as the group_norm forward at [2,320,64,64] is (launch_empty_gn_* rows) */
static enum status run_empty_launch(void *p)
{
#ifdef TENSOR_HAVE_CUDA
    return cuda_group_norm_empty_launch(2, 320, 32, 64 * 64, *(const bool *)p);
#else
    (void)p;
    return STATUS_OK;
#endif
}

static struct tensor *randn_dev(enum dtype dt, int nd, const int64_t *shape, bool grad)
{
    struct tensor *t = tensor_keep(ag_randn(dt, nd, shape, DEVICE_CUDA));
    if (t && grad) ag_set_requires_grad(t, true);
    return t;
}

static void release(struct args *a)
{
    tensor_free(a->a);
    tensor_free(a->b);
    tensor_free(a->c);
    tensor_free(a->d);
    for (int i = 0; i < a->nrot; i++) {
        tensor_free(a->rx[i]);
        tensor_free(a->ry[i]);
    }
    memset(a, 0, sizeof *a);
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "groups")) {   /* the groups of `variants GROUP` */
        for (size_t i = 0; i < N_SWITCHES; i++) printf("%s\n", g_switches[i]);
        printf("DRAFT_GN_CLUSTER\n");
        return 0;
    }
    bool known = argc < 3;
    for (size_t i = 0; argc == 3 && i < N_SWITCHES; i++) known = known || !strcmp(argv[2], g_switches[i]);
    known = known || (argc == 3 && !strcmp(argv[2], "DRAFT_GN_CLUSTER"));
    if (argc > 3 || !known || (argc >= 2 && strcmp(argv[1], "defaults") && strcmp(argv[1], "variants")) ||
        (argc == 3 && strcmp(argv[1], "variants"))) {
        fprintf(stderr, "usage: bench_gpu [defaults | variants [GROUP] | groups]\n");
        return 2;
    }
    g_which = argc < 2 ? 0 : !strcmp(argv[1], "defaults") ? 1 : 2;
    g_group = argc == 3 ? argv[2] : NULL;
    g_only = getenv("BENCH_GPU_ONLY");
    if (g_only && !*g_only) g_only = NULL;
#ifndef TENSOR_HAVE_CUDA
    printf("bench_gpu: built without CUDA\n");
    return 0;
#else
    if (cuda_init()) {
        printf("bench_gpu: no GPU: %s\n", tensor_error());
        return 0;
    }
    ag_rng_seed(1);
    set_switches(NULL);
    struct args a = {0};
    /* matmul 8192^3: f32, then TF32 */
    a.a = randn_dev(DTYPE_F32, TENSOR_SHAPE(8192, 8192), false);
    a.b = randn_dev(DTYPE_F32, TENSOR_SHAPE(8192, 8192), false);
    double flops = 2.0 * 8192.0 * 8192.0 * 8192.0;
    double ms = time_it("matmul_f32_8192", run_matmul, &a, 2, 10);
    if (ms > 0) printf("RESULT matmul_f32_8192 %.3f %.1f TFLOP/s\n", ms, flops / ms / 1e9);
    tensor_set_precision(PRECISION_TF32);
    ms = time_it("matmul_tf32_8192", run_matmul, &a, 2, 10);
    if (ms > 0) printf("RESULT matmul_tf32_8192 %.3f %.1f TFLOP/s\n", ms, flops / ms / 1e9);
    /* f32 tensors under PRECISION_BF16 (autocast: bf16 copies of the operands, f32 out) */
    tensor_set_precision(PRECISION_BF16);
    ms = time_it("matmul_autocast_8192", run_matmul, &a, 2, 10);
    if (ms > 0) printf("RESULT matmul_autocast_8192 %.3f %.1f TFLOP/s\n", ms, flops / ms / 1e9);
    {   /* the product is the product: against TF32's, a relative error near bf16's 2^-9 */
        tensor_scope_begin();
        struct tensor *c16 = ag_matmul(a.a, a.b);
        tensor_set_precision(PRECISION_TF32);
        struct tensor *c32 = ag_matmul(a.a, a.b);
        struct tensor *d = c16 && c32 ? ag_sub(c16, c32) : NULL;
        struct tensor *num = d ? ag_sum(ag_mul(d, d), 0, NULL, false) : NULL;
        struct tensor *den = c32 ? ag_sum(ag_mul(c32, c32), 0, NULL, false) : NULL;
        if (num && den)
            printf("# matmul_autocast_8192 vs tf32: rel %.2e\n",
                   sqrt(tensor_get_flat(tensor_to_device(num, DEVICE_CPU), 0) /
                        tensor_get_flat(tensor_to_device(den, DEVICE_CPU), 0)));
        else
            printf("# matmul_autocast_8192 check failed: %s\n", tensor_error());
        tensor_scope_end();
    }
    /* the same with DRAFT_MATMUL_FAST_BF16: cuBLAS rounds the f32 operands itself, no copies */
    set_switches("DRAFT_MATMUL_FAST_BF16");
    ms = time_it("matmul_autocast_8192_fast16bf", run_matmul, &a, 2, 10);
    if (ms > 0) printf("RESULT matmul_autocast_8192_fast16bf %.3f %.1f TFLOP/s\n", ms, flops / ms / 1e9);
    set_switches(NULL);
    release(&a);
    /* a memory-bound product of SD's UNet: the feed-forward's first linear at 64 px, batch 2
     * ([8192, 320] x [320, 2560]), where copying the operands costs most; TF32, autocast, fast */
    a.a = randn_dev(DTYPE_F32, TENSOR_SHAPE(8192, 320), false);
    a.b = randn_dev(DTYPE_F32, TENSOR_SHAPE(320, 2560), false);
    const double ff_flops = 2.0 * 8192.0 * 320.0 * 2560.0;
    for (int v = 0; v < 3; v++) {
        static const char *const ff_names[3] = {"matmul_tf32_ff", "matmul_autocast_ff", "matmul_autocast_ff_fast16bf"};
        tensor_set_precision(v ? PRECISION_BF16 : PRECISION_TF32);
        set_switches(v == 2 ? "DRAFT_MATMUL_FAST_BF16" : NULL);
        ms = time_it(ff_names[v], run_matmul, &a, 3, 20);
        if (ms > 0) printf("RESULT %s %.3f %.1f TFLOP/s\n", ff_names[v], ms, ff_flops / ms / 1e9);
    }
    set_switches(NULL);
    tensor_set_precision(PRECISION_TF32);   /* the convolutions below: PyTorch's cuDNN default */
    release(&a);
    /* bf16 tensors (f32 accumulation, bf16 out) */
    a.a = tensor_keep(tensor_to_dtype(randn_dev(DTYPE_F32, TENSOR_SHAPE(8192, 8192), false), DTYPE_BF16));
    a.b = tensor_keep(tensor_to_dtype(randn_dev(DTYPE_F32, TENSOR_SHAPE(8192, 8192), false), DTYPE_BF16));
    a.c = tensor_keep(tensor_empty(DTYPE_BF16, TENSOR_SHAPE(8192, 8192), DEVICE_CUDA));
    ms = time_it("matmul_bf16_8192", run_matmul_backend, &a, 2, 10);
    if (ms > 0) printf("RESULT matmul_bf16_8192 %.3f %.1f TFLOP/s\n", ms, flops / ms / 1e9);
    release(&a);

    /* conv2d at SD 1.4 shapes, TF32 as PyTorch's cuDNN default for convolutions; then 320
     * channels under PRECISION_BF16 (torch: autocast to bf16) and in exact f32 (torch: cuDNN with
     * allow_tf32 off); last, in TF32 again, the VAE decoder's 128 channels at 512 px (the largest
     * convolutions of a DRaFT step, forward and backward input: not a target) with the halo
     * kernel's rows and Winograd's, and its 256 channels at 256 px and 512 at 128 with one row of
     * each (conv_halo's rule by size picks between them); the 128 and 256 channels again under
     * bf16 autocast, where neither applies (im2col in bf16), and with DRAFT_CONV_AUTOCAST_TF32
     * (the halo kernel or Winograd in TF32 instead, by the defaults' rule; 320 channels too) and
     * with DRAFT_CONV_AUTOCAST_WINO (Winograd with bf16 products) */
    const int64_t cs[10][2] = {{320, 64}, {640, 32}, {1280, 16}, {320, 64},  {320, 64},
                               {128, 512}, {256, 256}, {512, 128}, {128, 512}, {256, 256}};
    for (int i = 0; i < 10; i++) {
        if (i == 3 || i == 8) tensor_set_precision(PRECISION_BF16);
        if (i == 4) tensor_set_precision(PRECISION_F32);
        if (i == 5) tensor_set_precision(PRECISION_TF32);
        for (int bw = 0; bw < 2; bw++) {
            int64_t C = cs[i][0], S = cs[i][1];
            a.a = randn_dev(DTYPE_F32, TENSOR_SHAPE(2, C, S, S), bw);
            a.b = randn_dev(DTYPE_F32, TENSOR_SHAPE(C, C, 3, 3), bw);
            a.c = randn_dev(DTYPE_F32, TENSOR_SHAPE(C), bw);
            a.d = randn_dev(DTYPE_F32, TENSOR_SHAPE(2, C, S, S), false);
            a.cp = conv2d_params_default();
            a.cp.pad_top = a.cp.pad_bottom = a.cp.pad_left = a.cp.pad_right = 1;
            a.backward = bw;
            char name[64];
            const char *mode = i == 3 || i >= 8 ? "_autocast" : i == 4 ? "_f32" : "";
            snprintf(name, sizeof name, "conv2d_%lldc_%lldpx_%s%s", (long long)C, (long long)S, bw ? "fwdbwd" : "fwd", mode);
            ms = time_it(name, run_conv, &a, 3, 20);
            double f = 2.0 * 2 * C * S * S * C * 9 * (bw ? 3 : 1);
            if (ms > 0) printf("RESULT %s %.3f %.1f TFLOP/s\n", name, ms, f / ms / 1e9);
            /* again with each opt-in forward: the im2col of the next tile on a side stream (320
             * channels), the row-shift forward (a partial im2col over kernel columns, 3 GEMMs),
             * and the implicit GEMM on tensor cores (TF32, exact f32 and autocast), also
             * with 128-channel tiles forced, and without split-K where the default splits; the
             * halo-tile kernel (TF32 only), with its channel block picked, then forced to 64 and 128;
             * the default im2col path with a 16 and an 8 MiB workspace instead of 64 (tiles of
             * im2col that stay in the L2: 50 MiB on an H200, 47 MiB for one image at 320 ch); and
             * Winograd F(2x2, 3x3) (TF32 and exact f32), with its V and M in chunks of 32 MiB (the
             * default: a chunk may stay in the L2), then of 128 MiB (at 320 ch all 2048 tiles in one) */
            const struct {
                const char *env, *suffix, *knob, *value;   /* knob: a tuning variable set to value */
                bool tf32, autocast, f32;
                bool conv_defaults;   /* the halo and Winograd switches back to their defaults */
            } variants[14] = {{"DRAFT_CONV_PIPELINE", "_pipe", NULL, NULL, false, true, false, false},
                             {"DRAFT_CONV_ROWSHIFT", "_rowshift", NULL, NULL, true, true, false, false},
                             {"DRAFT_CONV_IMPLICIT", "_implicit", NULL, NULL, true, true, true, false},
                             {"DRAFT_CONV_IMPLICIT", "_implicit_bm128", "DRAFT_CONV_IMPLICIT_BM", "128", true, false, false, false},
                             {"DRAFT_CONV_IMPLICIT", "_implicit_split1", "DRAFT_CONV_IMPLICIT_SPLIT", "1", true, false, false, false},
                             {"DRAFT_CONV_HALO", "_halo", NULL, NULL, true, false, false, false},
                             {"DRAFT_CONV_HALO", "_halo_bm64", "DRAFT_CONV_HALO_BM", "64", true, false, false, false},
                             {"DRAFT_CONV_HALO", "_halo_bm128", "DRAFT_CONV_HALO_BM", "128", true, false, false, false},
                             {NULL, "_ws16m", "DRAFT_CONV_WORKSPACE_KB", "16384", true, false, false, false},
                             {NULL, "_ws8m", "DRAFT_CONV_WORKSPACE_KB", "8192", true, false, false, false},
                             {"DRAFT_CONV_WINOGRAD", "_wino", NULL, NULL, true, false, true, false},
                             {"DRAFT_CONV_WINOGRAD", "_wino_ws256m", "DRAFT_CONV_WORKSPACE_KB", "262144", true, false, false, false},
                             {"DRAFT_CONV_AUTOCAST_TF32", "_actf32", NULL, NULL, false, true, false, true},
                             {"DRAFT_CONV_WINOGRAD+DRAFT_CONV_AUTOCAST_WINO", "_acwino", NULL, NULL, false, true, false, false}};
            for (int v = 0; v < 14; v++) {
                const bool want = i >= 8 ? v >= 12 : i == 3 ? variants[v].autocast : i == 4 ? variants[v].f32 : i == 5 ? v >= 5 && v < 12
                                : i > 5 ? v == 5 || v == 10
                                : v == 0 ? i == 0 : v == 4 ? i != 0 : variants[v].tf32;   /* split1: where it splits */
                if (!want) continue;
                set_switches(variants[v].env);
                if (variants[v].conv_defaults) unsetenv("DRAFT_CONV_HALO"), unsetenv("DRAFT_CONV_WINOGRAD");
                if (variants[v].knob) setenv(variants[v].knob, variants[v].value, 1);
                snprintf(name, sizeof name, "conv2d_%lldc_%lldpx_%s%s%s", (long long)C, (long long)S,
                         bw ? "fwdbwd" : "fwd", mode, variants[v].suffix);
                ms = time_it(name, run_conv, &a, 3, 20);
                if (ms > 0) printf("RESULT %s %.3f %.1f TFLOP/s\n", name, ms, f / ms / 1e9);
                if (variants[v].knob) unsetenv(variants[v].knob);
                set_switches(NULL);
            }
            release(&a);
        }
    }
    tensor_set_precision(PRECISION_F32);

    /* group_norm [2,320,64,64]; fwd+bwd again with the one-pass cluster backward; then both with
     * the cluster size forced (DRAFT_GN_CLUSTER; the forward's rule picks 2 blocks of 80 KiB here
     * on 132 SMs, the backward's 8; 1: a whole group of 160 KiB in one block); the forward with
     * its chunk in registers (DRAFT_GN_REG), at the picked size and at 4; its statistics as sums
     * in double (DRAFT_GN_SUMS), alone, with REG, at 4, and under the one-pass backward; the
     * staged forward (DRAFT_GN_STAGED, sums: its base rows are the _sums ones) at 2 groups a
     * cluster (clusters of 4 here), at 1 and at 4 (DRAFT_GN_GPC), and under the one-pass backward;
     * that backward summing dw and db itself (DRAFT_GN_FUSED_WB), without and with the staged forward;
     * the backward with 2 groups a cluster (DRAFT_GN_STAGED_BWD), alone and with all three; and
     * launched as programmatic dependents (DRAFT_GN_PDL): the sums forward, the staged one, the
     * forward+backward as now and with all the above */
    const struct {
        const char *name, *cluster, *sw;   /* sw: the switch on */
        bool back;
        const char *gpc;   /* DRAFT_GN_GPC, or NULL */
        int n;             /* the batch: 0 for the targets' 2 (a single call and a burst), else a burst only */
    } gn_rows[] = {
        {"group_norm_fwd", NULL, NULL, false, NULL, 0},
        {"group_norm_fwdbwd", NULL, NULL, true, NULL, 0},
        {"group_norm_fwdbwd_fused_bwd", NULL, "DRAFT_GN_FUSED_BWD", true, NULL, 0},
        {"group_norm_fwd_cl1", "1", NULL, false, NULL, 0},
        {"group_norm_fwd_cl2", "2", NULL, false, NULL, 0},
        {"group_norm_fwd_cl4", "4", NULL, false, NULL, 0},
        {"group_norm_fwdbwd_fused_bwd_cl4", "4", "DRAFT_GN_FUSED_BWD", true, NULL, 0},
        {"group_norm_fwdbwd_cl1", "1", NULL, true, NULL, 0},
        {"group_norm_fwd_reg", NULL, "DRAFT_GN_REG", false, NULL, 0},
        {"group_norm_fwd_reg_cl4", "4", "DRAFT_GN_REG", false, NULL, 0},
        {"group_norm_fwd_sums", NULL, "DRAFT_GN_SUMS", false, NULL, 0},
        {"group_norm_fwd_reg_sums", NULL, "DRAFT_GN_REG+DRAFT_GN_SUMS", false, NULL, 0},
        {"group_norm_fwd_sums_cl4", "4", "DRAFT_GN_SUMS", false, NULL, 0},
        {"group_norm_fwdbwd_fused_bwd_sums", NULL, "DRAFT_GN_FUSED_BWD+DRAFT_GN_SUMS", true, NULL, 0},
        {"group_norm_fwdbwd_fused_bwd_reg_sums", NULL, "DRAFT_GN_FUSED_BWD+DRAFT_GN_REG+DRAFT_GN_SUMS", true, NULL, 0},
        {"group_norm_fwd_sums_staged", NULL, "DRAFT_GN_SUMS+DRAFT_GN_STAGED", false, NULL, 0},
        {"group_norm_fwd_sums_staged_g1", NULL, "DRAFT_GN_SUMS+DRAFT_GN_STAGED", false, "1", 0},
        {"group_norm_fwd_sums_staged_g4", NULL, "DRAFT_GN_SUMS+DRAFT_GN_STAGED", false, "4", 0},
        {"group_norm_fwdbwd_fused_bwd_sums_staged", NULL, "DRAFT_GN_FUSED_BWD+DRAFT_GN_SUMS+DRAFT_GN_STAGED", true, NULL, 0},
        {"group_norm_fwdbwd_fused_bwd_sums_wb", NULL, "DRAFT_GN_FUSED_BWD+DRAFT_GN_SUMS+DRAFT_GN_FUSED_WB", true, NULL, 0},
        {"group_norm_fwdbwd_fused_bwd_sums_staged_wb", NULL,
         "DRAFT_GN_FUSED_BWD+DRAFT_GN_SUMS+DRAFT_GN_STAGED+DRAFT_GN_FUSED_WB", true, NULL, 0},
        {"group_norm_fwdbwd_fused_bwd_sums_stbwd", NULL, "DRAFT_GN_FUSED_BWD+DRAFT_GN_SUMS+DRAFT_GN_STAGED_BWD", true, NULL, 0},
        {"group_norm_fwdbwd_fused_bwd_sums_staged_wb_stbwd", NULL,
         "DRAFT_GN_FUSED_BWD+DRAFT_GN_SUMS+DRAFT_GN_STAGED+DRAFT_GN_FUSED_WB+DRAFT_GN_STAGED_BWD", true, NULL, 0},
        {"group_norm_fwd_sums_pdl", NULL, "DRAFT_GN_SUMS+DRAFT_GN_PDL", false, NULL, 0},
        {"group_norm_fwd_sums_staged_pdl", NULL, "DRAFT_GN_SUMS+DRAFT_GN_STAGED+DRAFT_GN_PDL", false, NULL, 0},
        {"group_norm_fwdbwd_fused_bwd_sums_pdl", NULL, "DRAFT_GN_FUSED_BWD+DRAFT_GN_SUMS+DRAFT_GN_PDL", true, NULL, 0},
        {"group_norm_fwdbwd_fused_bwd_sums_staged_wb_stbwd_pdl", NULL,
         "DRAFT_GN_FUSED_BWD+DRAFT_GN_SUMS+DRAFT_GN_STAGED+DRAFT_GN_FUSED_WB+DRAFT_GN_STAGED_BWD+DRAFT_GN_PDL", true, NULL, 0},
        /* at a DRaFT step's batch, [8,320,64,64] (batch 4 under classifier-free guidance): 256
         * groups, more than one wave of the one-pass kernels (not targets: what the switches give
         * where SD 1.4 runs them) */
        {"group_norm_b8_fwd_sums", NULL, "DRAFT_GN_SUMS", false, NULL, 8},
        {"group_norm_b8_fwd_sums_staged", NULL, "DRAFT_GN_SUMS+DRAFT_GN_STAGED", false, NULL, 8},
        {"group_norm_b8_fwdbwd_fused_bwd_sums", NULL, "DRAFT_GN_FUSED_BWD+DRAFT_GN_SUMS", true, NULL, 8},
        {"group_norm_b8_fwdbwd_fused_bwd_sums_staged_wb_stbwd_pdl", NULL,
         "DRAFT_GN_FUSED_BWD+DRAFT_GN_SUMS+DRAFT_GN_STAGED+DRAFT_GN_FUSED_WB+DRAFT_GN_STAGED_BWD+DRAFT_GN_PDL", true, NULL, 8},
    };
    if (row_wanted() && !g_only) {   /* how the one-pass kernels launch here, and whether in one wave */
        char occ[1024];
        cuda_group_norm_occupancy(occ, sizeof occ, 2, 320, 32, 64 * 64);
        for (char *line = strtok(occ, "\n"); line; line = strtok(NULL, "\n")) printf("INFO %s\n", line);
    }
    for (size_t mode = 0; mode < sizeof gn_rows / sizeof *gn_rows; mode++) {
        const int bw = gn_rows[mode].back;
        const int64_t N = gn_rows[mode].n ? gn_rows[mode].n : 2;
        set_switches(gn_rows[mode].sw);
        if (gn_rows[mode].cluster) setenv("DRAFT_GN_CLUSTER", gn_rows[mode].cluster, 1);
        if (gn_rows[mode].gpc) setenv("DRAFT_GN_GPC", gn_rows[mode].gpc, 1);
        a.b = randn_dev(DTYPE_F32, TENSOR_SHAPE(320), bw);
        a.c = randn_dev(DTYPE_F32, TENSOR_SHAPE(320), bw);
        a.backward = bw;
        const char *name = gn_rows[mode].name;
        const double bytes = (double)N * 320 * 64 * 64 * 4 * (bw ? 5 : 2);   /* fwd: read x, write y; bwd: + read dy, x, write dx */
        if (!gn_rows[mode].n) {   /* one call from an idle GPU, the same input each time */
            a.a = randn_dev(DTYPE_F32, TENSOR_SHAPE(N, 320, 64, 64), bw);
            a.d = randn_dev(DTYPE_F32, TENSOR_SHAPE(N, 320, 64, 64), false);
            ms = time_it(name, run_gn, &a, 3, 20);
            if (ms > 0) printf("RESULT %s %.3f %.1f GB/s\n", name, ms, bytes / ms / 1e6);
        }
        char bname[80];
        snprintf(bname, sizeof bname, "%s_burst20", name);
        for (a.nrot = 0; a.nrot < kRot; a.nrot++) {
            a.rx[a.nrot] = randn_dev(DTYPE_F32, TENSOR_SHAPE(N, 320, 64, 64), bw);
            a.ry[a.nrot] = randn_dev(DTYPE_F32, TENSOR_SHAPE(N, 320, 64, 64), false);
        }
        ms = time_burst(bname, run_gn, &a, 3, 20, 20);
        if (ms > 0) printf("RESULT %s %.3f %.1f GB/s\n", bname, ms, bytes / ms / 1e6);
        release(&a);
        set_switches(NULL);
        unsetenv("DRAFT_GN_CLUSTER");
        unsetenv("DRAFT_GN_GPC");
    }
    if (row_wanted()) {   /* default kernels only: not in the variants process */
        for (size_t i = 0; i < N_SWITCHES; i++) unsetenv(g_switches[i]);   /* the compiled-in defaults */
        struct gn_raw g = {0};
        g.nrot = kRot;
        bool ok = true;
        for (int i = 0; i < kRot; i++) {
            g.x[i] = randn_dev(DTYPE_F32, TENSOR_SHAPE(2, 320, 64, 64), false);
            g.dy[i] = randn_dev(DTYPE_F32, TENSOR_SHAPE(2, 320, 64, 64), false);
            ok = ok && g.x[i] && g.dy[i];
        }
        g.w = randn_dev(DTYPE_F32, TENSOR_SHAPE(320), false);
        g.b = randn_dev(DTYPE_F32, TENSOR_SHAPE(320), false);
        g.out = tensor_keep(tensor_empty(DTYPE_F32, TENSOR_SHAPE(2, 320, 64, 64), DEVICE_CUDA));
        g.dx = tensor_keep(tensor_empty(DTYPE_F32, TENSOR_SHAPE(2, 320, 64, 64), DEVICE_CUDA));
        g.mean = tensor_keep(tensor_empty(DTYPE_F32, TENSOR_SHAPE(2, 32), DEVICE_CUDA));
        g.rstd = tensor_keep(tensor_empty(DTYPE_F32, TENSOR_SHAPE(2, 32), DEVICE_CUDA));
        g.dw = tensor_keep(tensor_empty(DTYPE_F32, TENSOR_SHAPE(320), DEVICE_CUDA));
        g.db = tensor_keep(tensor_empty(DTYPE_F32, TENSOR_SHAPE(320), DEVICE_CUDA));
        ok = ok && g.w && g.b && g.out && g.dx && g.mean && g.rstd && g.dw && g.db;
        if (ok) ok = run_gn_raw(&g) == STATUS_OK;   /* part 0: mean and rstd for the backward rows */
        const struct { const char *name; int part, passes; } raw_rows[] = {
            {"group_norm_fwd_raw", 0, 2}, {"group_norm_bwd_raw", 1, 3}, {"group_norm_bwd_dx_raw", 2, 3}};
        for (size_t i = 0; ok && i < sizeof raw_rows / sizeof *raw_rows; i++) {
            g.part = raw_rows[i].part;
            const double bytes = 2.0 * 320 * 64 * 64 * 4 * raw_rows[i].passes;
            if (i == 0) {   /* the forward as a single call on one input, as group_norm_fwd times it:
                               the difference between the two is autograd's and the allocator's host time */
                g.nrot = 1;
                ms = time_it(raw_rows[i].name, run_gn_raw, &g, 3, 20);
                if (ms > 0) printf("RESULT %s %.3f %.1f GB/s\n", raw_rows[i].name, ms, bytes / ms / 1e6);
                g.nrot = kRot;
            }
            char bname[64];
            snprintf(bname, sizeof bname, "%s_burst20", raw_rows[i].name);
            ms = time_burst(bname, run_gn_raw, &g, 3, 20, 20);
            if (ms > 0) printf("RESULT %s %.3f %.1f GB/s\n", bname, ms, bytes / ms / 1e6);
        }
        if (!ok) printf("SKIP group_norm_*_raw: %s\n", tensor_error());
        for (int i = 0; i < kRot; i++) tensor_free(g.x[i]), tensor_free(g.dy[i]);
        tensor_free(g.w), tensor_free(g.b), tensor_free(g.out), tensor_free(g.dx), tensor_free(g.mean);
        tensor_free(g.rstd), tensor_free(g.dw), tensor_free(g.db);
        set_switches(NULL);
    }
    /* the bandwidth a tensor of that size can reach at all: a device-to-device copy of it */
    a.a = randn_dev(DTYPE_F32, TENSOR_SHAPE(2, 320, 64, 64), false);
    a.c = tensor_keep(tensor_empty(DTYPE_F32, TENSOR_SHAPE(2, 320, 64, 64), DEVICE_CUDA));
    ms = time_it("copy_10M", run_copy, &a, 3, 20);
    if (ms > 0) printf("RESULT copy_10M %.3f %.1f GB/s\n", ms, 2.0 * 2 * 320 * 64 * 64 * 4 / ms / 1e6);
    for (a.nrot = 0; a.nrot < kRot; a.nrot++) {
        a.rx[a.nrot] = randn_dev(DTYPE_F32, TENSOR_SHAPE(2, 320, 64, 64), false);
        a.ry[a.nrot] = tensor_keep(tensor_empty(DTYPE_F32, TENSOR_SHAPE(2, 320, 64, 64), DEVICE_CUDA));
    }
    ms = time_burst("copy_10M_burst20", run_copy, &a, 3, 20, 20);
    if (ms > 0) printf("RESULT copy_10M_burst20 %.3f %.1f GB/s\n", ms, 2.0 * 2 * 320 * 64 * 64 * 4 / ms / 1e6);
    release(&a);
    /* The single-call rows' floors (not targets; gpu_targets.sh prints them beside group_norm_fwd):
     * a copy of 4 bytes, and an empty kernel launched with the group_norm forward's grid, block and
     * shared memory, without and with its clusters (and, a DRAFT_GN_PDL row, as a programmatic
     * dependent: named without "_pdl", so that gpu_switches.sh's verdict on the switch stays with
     * the kernels). In 0.1 us: these are a few us. */
    a.a = randn_dev(DTYPE_F32, TENSOR_SHAPE(1), false);
    a.c = tensor_keep(tensor_empty(DTYPE_F32, TENSOR_SHAPE(1), DEVICE_CUDA));
    ms = time_it("copy_4B", run_copy, &a, 3, 20);
    if (ms > 0) printf("RESULT copy_4B %.4f %.3f GB/s\n", ms, 2.0 * 4 / ms / 1e6);
    ms = time_burst("copy_4B_burst20", run_copy, &a, 3, 20, 20);
    if (ms > 0) printf("RESULT copy_4B_burst20 %.4f %.3f GB/s\n", ms, 2.0 * 4 / ms / 1e6);
    release(&a);
    const struct {
        const char *name, *sw;
        bool cluster;
    } launch_rows[] = {{"launch_empty_gn_grid", NULL, false},
                       {"launch_empty_gn_cluster", NULL, true},
                       {"launch_empty_gn_cluster_dependent", "DRAFT_GN_PDL", true}};
    for (size_t i = 0; i < sizeof launch_rows / sizeof *launch_rows; i++) {
        set_switches(launch_rows[i].sw);
        bool cluster = launch_rows[i].cluster;
        char bname[64];
        snprintf(bname, sizeof bname, "%s_burst20", launch_rows[i].name);
        ms = time_it(launch_rows[i].name, run_empty_launch, &cluster, 3, 20);
        if (ms > 0) printf("RESULT %s %.4f 0 GB/s\n", launch_rows[i].name, ms);
        ms = time_burst(bname, run_empty_launch, &cluster, 3, 20, 20);
        if (ms > 0) printf("RESULT %s %.4f 0 GB/s\n", bname, ms);
    }
    set_switches(NULL);

    /* attention B=2, 8 heads, L=4096, d=40: the SIMT kernels; fwd+bwd again with the fused dQ
     * backward; under bf16 autocast on tensor cores (torch: autocast, its bf16 flash kernels); in
     * f32 on tensor cores, 3xTF32 (torch: its f32 kernels) */
    const struct {
        const char *name, *env;
        enum precision prec;
        bool back;
        int64_t B, H, L, D;
    } attn_rows[] = {
        {"attention_fwd", NULL, PRECISION_F32, false, 2, 8, 4096, 40},
        {"attention_fwdbwd", NULL, PRECISION_F32, true, 2, 8, 4096, 40},
        {"attention_fwdbwd_fused_dq", "DRAFT_ATTN_FUSED_DQ", PRECISION_F32, true, 2, 8, 4096, 40},
        {"attention_fwd_autocast", "DRAFT_ATTN_MMA", PRECISION_BF16, false, 2, 8, 4096, 40},
        {"attention_fwdbwd_autocast", "DRAFT_ATTN_MMA", PRECISION_BF16, true, 2, 8, 4096, 40},
        {"attention_fwd_mma", "DRAFT_ATTN_MMA", PRECISION_F32, false, 2, 8, 4096, 40},
        {"attention_fwdbwd_mma", "DRAFT_ATTN_MMA", PRECISION_F32, true, 2, 8, 4096, 40},
        /* TF32 (one tf32 product: what an SD step under PRECISION_TF32 runs; torch: its f32 rows),
         * then the tensor-core rows again with the float4 tile loads */
        {"attention_fwd_tf32", "DRAFT_ATTN_MMA", PRECISION_TF32, false, 2, 8, 4096, 40},
        {"attention_fwdbwd_tf32", "DRAFT_ATTN_MMA", PRECISION_TF32, true, 2, 8, 4096, 40},
        {"attention_fwd_autocast_vec4", "DRAFT_ATTN_MMA+DRAFT_ATTN_VEC4", PRECISION_BF16, false, 2, 8, 4096, 40},
        {"attention_fwdbwd_autocast_vec4", "DRAFT_ATTN_MMA+DRAFT_ATTN_VEC4", PRECISION_BF16, true, 2, 8, 4096, 40},
        {"attention_fwd_mma_vec4", "DRAFT_ATTN_MMA+DRAFT_ATTN_VEC4", PRECISION_F32, false, 2, 8, 4096, 40},
        {"attention_fwdbwd_mma_vec4", "DRAFT_ATTN_MMA+DRAFT_ATTN_VEC4", PRECISION_F32, true, 2, 8, 4096, 40},
        {"attention_fwd_tf32_vec4", "DRAFT_ATTN_MMA+DRAFT_ATTN_VEC4", PRECISION_TF32, false, 2, 8, 4096, 40},
        {"attention_fwdbwd_tf32_vec4", "DRAFT_ATTN_MMA+DRAFT_ATTN_VEC4", PRECISION_TF32, true, 2, 8, 4096, 40},
        /* and with the forward's K and V packed once, its tiles copied in two stages (the
         * backward is the default's: the fwd+bwd rows show what the forward saves of the whole) */
        {"attention_fwd_autocast_packed", "DRAFT_ATTN_MMA+DRAFT_ATTN_PACKED", PRECISION_BF16, false, 2, 8, 4096, 40},
        {"attention_fwdbwd_autocast_packed", "DRAFT_ATTN_MMA+DRAFT_ATTN_PACKED", PRECISION_BF16, true, 2, 8, 4096, 40},
        {"attention_fwd_mma_packed", "DRAFT_ATTN_MMA+DRAFT_ATTN_PACKED", PRECISION_F32, false, 2, 8, 4096, 40},
        {"attention_fwdbwd_mma_packed", "DRAFT_ATTN_MMA+DRAFT_ATTN_PACKED", PRECISION_F32, true, 2, 8, 4096, 40},
        {"attention_fwd_tf32_packed", "DRAFT_ATTN_MMA+DRAFT_ATTN_PACKED", PRECISION_TF32, false, 2, 8, 4096, 40},
        {"attention_fwdbwd_tf32_packed", "DRAFT_ATTN_MMA+DRAFT_ATTN_PACKED", PRECISION_TF32, true, 2, 8, 4096, 40},
        /* both: the defaults since 2026-11-29 */
        {"attention_fwd_autocast_packed_vec4", "DRAFT_ATTN_MMA+DRAFT_ATTN_VEC4+DRAFT_ATTN_PACKED", PRECISION_BF16, false, 2, 8, 4096, 40},
        {"attention_fwdbwd_autocast_packed_vec4", "DRAFT_ATTN_MMA+DRAFT_ATTN_VEC4+DRAFT_ATTN_PACKED", PRECISION_BF16, true, 2, 8, 4096, 40},
        {"attention_fwd_mma_packed_vec4", "DRAFT_ATTN_MMA+DRAFT_ATTN_VEC4+DRAFT_ATTN_PACKED", PRECISION_F32, false, 2, 8, 4096, 40},
        {"attention_fwdbwd_mma_packed_vec4", "DRAFT_ATTN_MMA+DRAFT_ATTN_VEC4+DRAFT_ATTN_PACKED", PRECISION_F32, true, 2, 8, 4096, 40},
        {"attention_fwd_tf32_packed_vec4", "DRAFT_ATTN_MMA+DRAFT_ATTN_VEC4+DRAFT_ATTN_PACKED", PRECISION_TF32, false, 2, 8, 4096, 40},
        {"attention_fwdbwd_tf32_packed_vec4", "DRAFT_ATTN_MMA+DRAFT_ATTN_VEC4+DRAFT_ATTN_PACKED", PRECISION_TF32, true, 2, 8, 4096, 40},
        /* the VAE's mid-block attention at 64x64 latents: one 512-wide head (the GEMM path) */
        {"attention_vae_fwd", NULL, PRECISION_F32, false, 4, 1, 4096, 512},
        {"attention_vae_fwdbwd", NULL, PRECISION_F32, true, 4, 1, 4096, 512},
    };
    for (size_t r = 0; r < sizeof attn_rows / sizeof *attn_rows; r++) {
        set_switches(attn_rows[r].env);
        tensor_set_precision(attn_rows[r].prec);
        const bool back = attn_rows[r].back;
        const int64_t B = attn_rows[r].B, H = attn_rows[r].H, L = attn_rows[r].L, D = attn_rows[r].D;
        a.a = randn_dev(DTYPE_F32, TENSOR_SHAPE(B, H, L, D), back);
        a.b = randn_dev(DTYPE_F32, TENSOR_SHAPE(B, H, L, D), back);
        a.c = randn_dev(DTYPE_F32, TENSOR_SHAPE(B, H, L, D), back);
        a.d = randn_dev(DTYPE_F32, TENSOR_SHAPE(B, H, L, D), false);
        a.backward = back;
        ms = time_it(attn_rows[r].name, run_attn, &a, 3, 20);
        double f = 4.0 * B * H * (double)L * L * D * (back ? 3.5 : 1);
        if (ms > 0) printf("RESULT %s %.3f %.1f TFLOP/s\n", attn_rows[r].name, ms, f / ms / 1e9);
        release(&a);
        set_switches(NULL);
    }
    tensor_set_precision(PRECISION_F32);

    /* elementwise add vs a device-to-device copy, 64M floats */
    a.a = randn_dev(DTYPE_F32, TENSOR_SHAPE(1 << 26), false);
    a.b = randn_dev(DTYPE_F32, TENSOR_SHAPE(1 << 26), false);
    a.c = tensor_keep(tensor_empty(DTYPE_F32, TENSOR_SHAPE(1 << 26), DEVICE_CUDA));
    double n = (double)(1 << 26) * 4;
    ms = time_it("copy_64M", run_copy, &a, 3, 20);
    if (ms > 0) printf("RESULT copy_64M %.3f %.1f GB/s\n", ms, 2 * n / ms / 1e6);
    ms = time_it("add_64M", run_add, &a, 3, 20);
    if (ms > 0) printf("RESULT add_64M %.3f %.1f GB/s\n", ms, 3 * n / ms / 1e6);
    release(&a);
    mem_print_stats(stdout, DEVICE_CUDA);
    return 0;
#endif
}
