/* engine_demo.c — what `make demo` runs until the DRaFT trainer lands: an honest, small
 * end-to-end use of the engine. A two-hidden-layer MLP learns to classify points of two
 * interleaved spirals with cross-entropy and Adam, every layer through the autograd graph,
 * the hidden blocks gradient-checkpointed; it prints the loss falling, the accuracy and the
 * allocator's memory statistics. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "autograd/autograd.h"
#include "tensor/alloc.h"

#define N_POINTS 512
#define HIDDEN 64
#define STEPS 300

struct mlp {
    struct tensor *w[3], *b[3];
    struct tensor *m[6], *v[6];   /* Adam moments */
};

static struct tensor *param(int64_t out, int64_t in)
{
    struct tensor *w = ag_affine(ag_rand(DTYPE_F32, TENSOR_SHAPE(out, in), DEVICE_CPU), 2.0 / sqrt((double)in),
                                 -1.0 / sqrt((double)in));
    ag_set_requires_grad(w, true);
    return w;
}

static struct tensor *bias(int64_t out)
{
    struct tensor *b = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(out), DEVICE_CPU);
    ag_set_requires_grad(b, true);
    return b;
}

/* one hidden block, run as a checkpoint: only its input is kept for the backward */
static enum status hidden_block(void *ctx, struct tensor *const *in, struct tensor **out)
{
    struct mlp *m = ctx;
    out[0] = ag_add(in[0], ag_gelu(ag_linear(in[0], m->w[1], m->b[1])));
    return out[0] ? STATUS_OK : tensor_status();
}

static void make_spirals(float *x, int32_t *y)
{
    for (int i = 0; i < N_POINTS; i++) {
        int cls = i % 2;
        double t = 0.25 + 3.5 * (double)(i / 2) / (N_POINTS / 2);
        double r = t / 3.75, a = 2.6 * t + cls * M_PI;
        x[2 * i] = (float)(r * cos(a) + 0.02 * sin(17.0 * i));
        x[2 * i + 1] = (float)(r * sin(a) + 0.02 * cos(13.0 * i));
        y[i] = cls;
    }
}

int main(void)
{
    printf("draft engine demo (the DRaFT trainer is not built yet): an MLP learns two spirals on the CPU,\n"
           "every op through the autograd engine, the hidden block gradient-checkpointed.\n");
    ag_rng_seed(42);
    static float xs[N_POINTS * 2];
    static int32_t ys[N_POINTS];
    make_spirals(xs, ys);
    struct tensor *x = tensor_from_data(DTYPE_F32, TENSOR_SHAPE(N_POINTS, 2), xs);
    struct tensor *y = tensor_from_data(DTYPE_I32, TENSOR_SHAPE(N_POINTS), ys);
    struct mlp m;
    m.w[0] = param(HIDDEN, 2), m.b[0] = bias(HIDDEN);
    m.w[1] = param(HIDDEN, HIDDEN), m.b[1] = bias(HIDDEN);
    m.w[2] = param(2, HIDDEN), m.b[2] = bias(2);
    struct tensor **ps[6] = {&m.w[0], &m.b[0], &m.w[1], &m.b[1], &m.w[2], &m.b[2]};
    for (int i = 0; i < 6; i++) {
        m.m[i] = tensor_zeros_like(*ps[i]);
        m.v[i] = tensor_zeros_like(*ps[i]);
    }
    const double lr = 0.01, b1 = 0.9, b2 = 0.999;
    clock_t t0 = clock();
    double loss_v = 0, acc = 0;
    for (int step = 1; step <= STEPS; step++) {
        tensor_scope_begin();
        struct tensor *h = ag_gelu(ag_linear(x, m.w[0], m.b[0])), *h2[1], *h3[1];
        if (ag_checkpoint(hidden_block, &m, 1, &h, 1, h2) || ag_checkpoint(hidden_block, &m, 1, h2, 1, h3)) {
            fprintf(stderr, "demo: %s\n", tensor_error());
            return 1;
        }
        struct tensor *logits = ag_linear(h3[0], m.w[2], m.b[2]);
        struct tensor *loss = ag_cross_entropy(logits, y);
        if (!loss || ag_backward(loss, NULL, false)) {
            fprintf(stderr, "demo: %s\n", tensor_error());
            return 1;
        }
        loss_v = tensor_get_flat(loss, 0);
        /* Adam, written with no-grad engine ops on the parameters' storage */
        ag_no_grad_begin();
        for (int i = 0; i < 6; i++) {
            struct tensor *p = *ps[i], *g = p->grad;
            tensor_copy_(m.m[i], ag_add(ag_scale(m.m[i], b1), ag_scale(g, 1 - b1)));
            tensor_copy_(m.v[i], ag_add(ag_scale(m.v[i], b2), ag_scale(ag_square(g), 1 - b2)));
            struct tensor *mh = ag_scale(m.m[i], 1.0 / (1 - pow(b1, step)));
            struct tensor *vh = ag_affine(ag_sqrt(ag_scale(m.v[i], 1.0 / (1 - pow(b2, step)))), 1.0, 1e-8);
            tensor_copy_(p, ag_sub(p, ag_scale(ag_div(mh, vh), lr)));
            ag_zero_grad(p);
        }
        if (step % 100 == 0 || step == 1) {
            struct tensor *pred = ag_argmax(logits, 1, false);
            int correct = 0;
            for (int i = 0; i < N_POINTS; i++) correct += (int)tensor_get_flat(pred, i) == ys[i];
            acc = (double)correct / N_POINTS;
            printf("step %4d  loss %.4f  accuracy %5.1f%%\n", step, loss_v, 100 * acc);
        }
        ag_no_grad_end();
        tensor_scope_end();
    }
    printf("trained in %.1f s of CPU time\n", (double)(clock() - t0) / CLOCKS_PER_SEC);
    mem_print_stats(stdout, DEVICE_CPU);
    for (int i = 0; i < 6; i++) { tensor_free(*ps[i]); tensor_free(m.m[i]); tensor_free(m.v[i]); }
    tensor_free(x);
    tensor_free(y);
    printf("final: loss=%.4f accuracy=%.3f steps=%d\n", loss_v, acc, STEPS);
    return acc > 0.9 ? 0 : 1;
}
