/* bench_checkpoint.c — what checkpointing buys and costs: backpropagation through a T-step
 * chain x_{t-1} = a_t x_t + b_t f(x_t, t) of a small conv net shaped like a tiny UNet block
 * (conv 3x3 to 128 channels -> GroupNorm -> SiLU (+ time embedding) -> conv 3x3 back to 32,
 * x_t [2,32,32,32]), with and
 * without a checkpoint around each f call: peak memory and time (median of runs). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "autograd/autograd.h"
#include "tensor/alloc.h"

#define B 2
#define C 32
#define HID 128
#define S 32

struct net {
    struct tensor *w1, *b1, *w2, *b2, *gw, *gb, *temb;
    struct conv2d_params p;
};

struct call {
    struct net *n;
    int t;
};

static struct tensor *param(int nd, const int64_t *shape, double scale)
{
    struct tensor *t = tensor_keep(ag_scale(ag_randn(DTYPE_F32, nd, shape, DEVICE_CPU), scale));
    ag_set_requires_grad(t, true);
    return t;
}

static enum status f_theta(void *ctx, struct tensor *const *in, struct tensor **out)
{
    struct call *c = ctx;
    struct net *n = c->n;
    struct tensor *h = ag_conv2d(in[0], n->w1, n->b1, &n->p);
    h = ag_silu(ag_add(ag_group_norm(h, 8, n->gw, n->gb, 1e-5), ag_reshape(ag_narrow(n->temb, 0, c->t, 1), TENSOR_SHAPE(1, HID, 1, 1))));
    out[0] = ag_conv2d(h, n->w2, n->b2, &n->p);
    return out[0] ? STATUS_OK : tensor_status();
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* one forward+backward through T steps; returns seconds, *peak = peak bytes above the start */
static double run(struct net *n, struct tensor *x0, int T, bool ckpt, int64_t *peak)
{
    struct call calls[64];
    struct mem_stats s0, s1;
    mem_get_stats(DEVICE_CPU, &s0);
    mem_reset_peak(DEVICE_CPU);
    double t0 = now_s();
    struct tensor *x = tensor_ref(x0);
    for (int t = T - 1; t >= 0; t--) {
        calls[t] = (struct call){n, t};
        tensor_scope_begin();
        struct tensor *f[1] = {NULL}, *next = NULL;
        enum status s = ckpt ? ag_checkpoint(f_theta, &calls[t], 1, &x, 1, f) : f_theta(&calls[t], &x, f);
        if (!s) next = tensor_keep(ag_add(ag_scale(x, 0.99), ag_scale(f[0], -0.02)));
        tensor_scope_end();
        tensor_free(x);
        if (!(x = next)) { fprintf(stderr, "bench_checkpoint: %s\n", tensor_error()); exit(1); }
    }
    tensor_scope_begin();
    struct tensor *r = ag_mean(ag_square(x), 0, NULL, false);
    if (!r || ag_backward(r, NULL, false)) { fprintf(stderr, "bench_checkpoint: %s\n", tensor_error()); exit(1); }
    tensor_scope_end();
    tensor_free(x);
    double dt = now_s() - t0;
    mem_get_stats(DEVICE_CPU, &s1);
    *peak = s1.peak_bytes - s0.live_bytes;
    struct tensor *ps[7] = {n->w1, n->b1, n->w2, n->b2, n->gw, n->gb, n->temb};
    for (int i = 0; i < 7; i++) ag_zero_grad(ps[i]);
    return dt;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int T = argc > 1 ? atoi(argv[1]) : 50, reps = argc > 2 ? atoi(argv[2]) : 5;
    if (T < 1 || T > 64 || reps < 1 || reps > 50) { fprintf(stderr, "usage: bench_checkpoint [T<=64] [reps<=50]\n"); return 2; }
    ag_rng_seed(7);
    struct net n;
    n.w1 = param(TENSOR_SHAPE(HID, C, 3, 3), 0.05);
    n.b1 = param(TENSOR_SHAPE(HID), 0.01);
    n.w2 = param(TENSOR_SHAPE(C, HID, 3, 3), 0.05);
    n.b2 = param(TENSOR_SHAPE(C), 0.01);
    n.gw = param(TENSOR_SHAPE(HID), 0.1);
    n.gb = param(TENSOR_SHAPE(HID), 0.1);
    n.temb = param(TENSOR_SHAPE(T, HID), 0.1);
    n.p = conv2d_params_default();
    n.p.pad_top = n.p.pad_bottom = n.p.pad_left = n.p.pad_right = 1;
    struct tensor *x0 = tensor_keep(ag_randn(DTYPE_F32, TENSOR_SHAPE(B, C, S, S), DEVICE_CPU));
    double tp[50], tc[50];
    int64_t pp = 0, pc = 0;
    run(&n, x0, T, false, &pp);   /* warm-up: fills the allocator's cache */
    run(&n, x0, T, true, &pc);
    for (int i = 0; i < reps; i++) {
        tp[i] = run(&n, x0, T, false, &pp);
        tc[i] = run(&n, x0, T, true, &pc);
    }
    qsort(tp, (size_t)reps, sizeof *tp, cmp);
    qsort(tc, (size_t)reps, sizeof *tc, cmp);
    double mp = tp[reps / 2], mc = tc[reps / 2];
    printf("chain of T=%d conv blocks, x_t [%d,%d,%d,%d] (%.0f KiB), %d threads, median of %d\n", T, B, C, S, S,
           B * C * S * S * 4 / 1024.0, tensor_num_threads(), reps);
    printf("%-16s %12s %10s\n", "", "peak MiB", "time s");
    printf("%-16s %12.1f %10.3f\n", "plain", (double)pp / (1 << 20), mp);
    printf("%-16s %12.1f %10.3f\n", "checkpointed", (double)pc / (1 << 20), mc);
    printf("memory saved: %.1fx less peak; time cost: %.2fx\n", (double)pp / (double)pc, mc / mp);
    struct tensor *ps[7] = {n.w1, n.b1, n.w2, n.b2, n.gw, n.gb, n.temb};
    for (int i = 0; i < 7; i++) tensor_free(ps[i]);
    tensor_free(x0);
    return 0;
}
