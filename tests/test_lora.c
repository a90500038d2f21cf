/* test_lora.c — LoRA on the UNet: PEFT initialisation (kaiming bound, B = 0 leaves the UNet
 * unchanged), attached adapter == merged weights (micro UNet in f64, the tiny parity UNet in
 * f32 when ../shared is present, a bf16 base), unmerge, float64 gradcheck of d(out)/d(A, B),
 * combining adapters, the PEFT / kohya / old-diffusers files (bit-exact round trips, exact key
 * names) and the errors of bad files. */
#include "tests/harness.h"
#include "tests/parity.h"
#include "diffusion/lora.h"
#include "tensor/profile.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


/* the micro UNet of test_unet.c: two levels, cross-attention down, mid and up, 2 heads */
static const char micro_json[] =
    "{\"_class_name\": \"UNet2DConditionModel\", \"in_channels\": 3, \"out_channels\": 2,"
    " \"block_out_channels\": [8, 12], \"down_block_types\": [\"CrossAttnDownBlock2D\", \"DownBlock2D\"],"
    " \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\"], \"layers_per_block\": 1, \"norm_num_groups\": 4,"
    " \"attention_head_dim\": 2, \"cross_attention_dim\": 6, \"sample_size\": 4}";

struct net {
    struct nn_params ps;
    struct sd_unet u;
};

/* build in dt; weights from `src` when given (same layout), else random of a sensible scale */
static void net_build(struct net *n, enum dtype dt, const struct net *src)
{
    struct nn_config c;
    nn_params_init(&n->ps, dt, DEVICE_CPU);
    ck_assert_int_eq(nn_config_parse(&c, micro_json, strlen(micro_json), "micro"), STATUS_OK);
    ck_assert_msg(sd_unet_init(&n->u, &c, &n->ps) == STATUS_OK, "%s", tensor_error());
    nn_config_free(&c);
    tensor_scope_begin();
    for (int i = 0; i < n->ps.n; i++) {
        struct tensor *p = n->ps.v[i].t;
        if (src) { ck_assert_int_eq(tensor_copy_(p, src->ps.v[i].t), STATUS_OK); continue; }
        double s = 1.0;
        if (p->ndim >= 2) {
            int64_t fan = 1;
            for (int d = 1; d < p->ndim; d++) fan *= p->shape[d];
            s = 1.5 / sqrt((double)fan);
        }
        const bool normw = p->ndim == 1 && strstr(n->ps.v[i].name, "norm") && strstr(n->ps.v[i].name, ".weight");
        ck_assert_int_eq(tensor_copy_(p, test_uniform(DTYPE_F64, p->ndim, p->shape, normw ? 0.5 : -0.5 * s, normw ? 1.5 : 0.5 * s)),
                         STATUS_OK);
    }
    tensor_scope_end();
}

static void net_free(struct net *n)
{
    sd_unet_free(&n->u);
    nn_params_free(&n->ps);
}

struct inputs {
    struct tensor *x, *t, *ctx;
};

static struct inputs micro_inputs(enum dtype dt)
{
    struct inputs in;
    in.x = tensor_to_dtype(test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3, 4, 4), -1, 1), dt);
    in.t = tensor_from_data(DTYPE_I64, TENSOR_SHAPE(2), (int64_t[]){981, 17});
    in.ctx = tensor_to_dtype(test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3, 6), -1, 1), dt);
    return in;
}

static struct tensor *fwd(struct net *n, const struct inputs *in)
{
    ag_no_grad_begin();
    struct tensor *y = sd_unet_forward(&n->u, in->x, in->t, in->ctx);
    ag_no_grad_end();
    ck_assert_msg(y != NULL, "%s", tensor_error());
    return y;
}

/* give every B random values (a fresh adapter has B = 0, which would test nothing) */
static void randomize_b(struct sd_lora *l, double amp)
{
    tensor_scope_begin();
    for (int i = 0; i < l->n; i++)
        ck_assert_int_eq(tensor_copy_(l->mods[i].B, test_uniform(DTYPE_F64, 2, l->mods[i].B->shape, -amp, amp)), STATUS_OK);
    tensor_scope_end();
}

static double max_diff_params(const struct nn_params *a, const struct nn_params *b)
{
    double m = 0;
    for (int i = 0; i < a->n; i++) m = fmax(m, test_max_abs_diff(a->v[i].t, b->v[i].t));
    return m;
}

/* ---------------------------------------------------------------- init */

START_TEST(test_init)
{
    LEAK_CHECK_BEGIN();
    struct net n;
    net_build(&n, DTYPE_F64, NULL);
    ck_assert_int_eq(n.u.n_projs, 4 * 2 * 4);   /* 4 transformers (down, mid, 2 up) x attn1/2 x q,k,v,out */
    struct sd_lora l, l32, l2;
    ck_assert_msg(sd_lora_init(&l, &n.u, 4, 8.0, NULL, DTYPE_F64, 1234) == STATUS_OK, "%s", tensor_error());
    ck_assert_int_eq(l.n, 32);
    ck_assert_int_eq(l.params.n, 64);
    ck_assert_str_eq(l.params.v[0].name, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight");
    ck_assert_str_eq(l.params.v[7].name, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.weight");
    /* kaiming_uniform_(a=sqrt(5)): |A| <= 1/sqrt(in), spread over the range; B == 0; trainable */
    double worst = 0;
    for (int i = 0; i < l.n; i++) {
        const struct sd_lora_module *m = &l.mods[i];
        ck_assert(m->A->requires_grad && m->B->requires_grad);
        ck_assert_int_eq(m->A->shape[0], 4);
        const double b = 1.0 / sqrt((double)m->in);
        double amax = 0;
        for (int64_t j = 0; j < tensor_numel(m->A); j++) amax = fmax(amax, fabs(tensor_get_flat(m->A, j)));
        ck_assert_msg(amax <= b, "%s: |A| max %.6f > bound %.6f", m->name, amax, b);
        worst = fmax(worst, amax / b);
        for (int64_t j = 0; j < tensor_numel(m->B); j++) ck_assert(tensor_get_flat(m->B, j) == 0.0);
    }
    ck_assert(worst > 0.7);   /* it really is uniform over the range, not tiny */
    printf("lora init: 32 modules, max |A| / (1/sqrt(in)) = %.3f, B == 0\n", worst);
    /* the seed decides; f32 holds the same numbers rounded; the global generator is untouched */
    uint64_t s0, o0, s1, o1;
    ag_rng_get(&s0, &o0);
    ck_assert_int_eq(sd_lora_init(&l32, &n.u, 4, 8.0, NULL, DTYPE_F32, 1234), STATUS_OK);
    ag_rng_get(&s1, &o1);
    ck_assert(s0 == s1 && o0 == o1);
    for (int i = 0; i < l.n; i++)
        for (int64_t j = 0; j < tensor_numel(l.mods[i].A); j++)
            ck_assert(tensor_get_flat(l32.mods[i].A, j) == (double)(float)tensor_get_flat(l.mods[i].A, j));
    ck_assert_int_eq(sd_lora_init(&l2, &n.u, 4, 8.0, "to_q, attn2.to_out.0", DTYPE_F64, 99), STATUS_OK);
    ck_assert_int_eq(l2.n, 8 + 4);
    ck_assert(test_max_abs_diff(l2.mods[0].A, l.mods[0].A) > 0);   /* another seed */
    sd_lora_free(&l2);
    sd_lora_free(&l32);

    /* B = 0: attached output == base output, bit for bit */
    tensor_scope_begin();
    struct inputs in = micro_inputs(DTYPE_F64);
    struct tensor *y0 = fwd(&n, &in);
    ck_assert_int_eq(sd_lora_attach(&l, &n.u, 1.0), STATUS_OK);
    ck_assert(n.u.projs[0]->lora_down == l.mods[0].A && n.u.projs[0]->lora_scale == 2.0);
    ck_assert(test_max_abs_diff(fwd(&n, &in), y0) == 0);
    sd_lora_detach(&n.u);
    ck_assert_ptr_null(n.u.projs[3]->lora_up);
    tensor_scope_end();

    /* bad arguments */
    ck_assert_int_ne(sd_lora_init(&l2, &n.u, 0, 1, NULL, DTYPE_F64, 1), STATUS_OK);
    ck_assert(strstr(tensor_error(), "rank") != NULL);
    ck_assert_int_ne(sd_lora_init(&l2, &n.u, 2, 1, "to_z", DTYPE_F64, 1), STATUS_OK);
    ck_assert(strstr(tensor_error(), "to_z") != NULL);
    ck_assert_int_ne(sd_lora_init(&l2, &n.u, 2, 1, NULL, DTYPE_BF16, 1), STATUS_OK);
    struct net n32;
    net_build(&n32, DTYPE_F32, &n);
    ck_assert_int_eq(sd_lora_attach(&l, &n32.u, 1.0), STATUS_DTYPE);   /* f64 adapter on an f32 base */
    printf("rejected attach: %s\n", tensor_error());
    net_free(&n32);
    sd_lora_free(&l);
    net_free(&n);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- attached == merged */

START_TEST(test_merge_micro)
{
    LEAK_CHECK_BEGIN();
    struct net a, b;
    net_build(&a, DTYPE_F64, NULL);
    net_build(&b, DTYPE_F64, &a);
    struct sd_lora l;
    ck_assert_int_eq(sd_lora_init(&l, &a.u, 3, 5.0, NULL, DTYPE_F64, 7), STATUS_OK);
    randomize_b(&l, 0.3);
    tensor_scope_begin();
    struct inputs in = micro_inputs(DTYPE_F64);
    struct tensor *y0 = fwd(&a, &in);
    ck_assert_int_eq(sd_lora_attach(&l, &a.u, 0.7), STATUS_OK);
    struct tensor *ya = fwd(&a, &in);
    ck_assert_int_eq(sd_lora_merge(&l, &b.u, 0.7), STATUS_OK);
    struct tensor *yb = fwd(&b, &in);
    const double e = test_rel_err(ya, yb), moved = test_rel_err(ya, y0);
    printf("lora micro f64: attached vs merged rel %.2e (the adapter moves the output by rel %.2e)\n", e, moved);
    ck_assert(moved > 1e-3);
    ck_assert(e < 1e-13);
    ck_assert_int_eq(sd_lora_unmerge(&l, &b.u, 0.7), STATUS_OK);
    sd_lora_detach(&a.u);
    const double back = max_diff_params(&a.ps, &b.ps);
    printf("lora micro f64: unmerge restores the weights to %.2e\n", back);
    ck_assert(back < 1e-15);
    tensor_scope_end();

    /* a bf16 base: merged = bf16(W + s alpha/r B A), reference in plain f64 loops */
    struct net h;
    net_build(&h, DTYPE_F64, &a);
    ck_assert_int_eq(nn_params_to_dtype(&h.ps, DTYPE_BF16), STATUS_OK);
    const int pi = 5;   /* attn2.to_k: [8 <- 6] */
    struct tensor *W = h.u.projs[pi]->base.weight;
    ck_assert_int_eq(W->dtype, DTYPE_BF16);
    struct tensor *W0 = tensor_to_dtype(W, DTYPE_F64);
    ck_assert_int_eq(sd_lora_merge(&l, &h.u, 0.7), STATUS_OK);
    const struct sd_lora_module *m = &l.mods[pi];
    ck_assert_str_eq(m->name, h.u.projs[pi]->name);
    int exact = 0, total = 0;
    for (int64_t o = 0; o < m->out; o++)
        for (int64_t i = 0; i < m->in; i++) {
            double d = 0;
            for (int r = 0; r < l.rank; r++)
                d += tensor_get(m->B, (int64_t[]){o, r}) * tensor_get(m->A, (int64_t[]){r, i});
            const double want = tensor_get(W0, (int64_t[]){o, i}) + 0.7 * 5.0 / 3.0 * d;
            const double got = tensor_get(W, (int64_t[]){o, i});
            const double rw = (double)bf16_to_f32(f32_to_bf16((float)want));
            exact += got == rw;
            total++;
            ck_assert_msg(fabs(got - want) <= fabs(want) * 0x1p-8 + 1e-30, "bf16 merge [%lld,%lld]: %g vs %g", (long long)o,
                          (long long)i, got, want);
        }
    printf("lora bf16 merge: %d/%d elements equal bf16(W + s B A) exactly, all within half a bf16 ulp\n", exact, total);
    ck_assert(exact >= total - 1);
    tensor_free(W0);
    sd_lora_free(&l);
    net_free(&h);
    net_free(&a);
    net_free(&b);
    LEAK_CHECK_END();
}
END_TEST

/* matmul calls of one forward (the profiler's count): 2 per adapted projection when the adapter
 * is merged for the call (B A, then the product), 3 when it is not */
static int64_t matmul_calls(struct tensor *(*f)(void *), void *ctx, struct tensor **y)
{
    tensor_profile_reset();
    tensor_profile_start();
    *y = f(ctx);
    tensor_profile_stop();
    struct profile_entry e[64];
    const int n = tensor_profile_entries(e, 64);
    int64_t calls = 0;
    for (int i = 0; i < n && i < 64; i++)
        if (!strcmp(e[i].op, "matmul")) calls += e[i].calls;
    tensor_profile_reset();
    return calls;
}

struct fwd_ctx {
    struct net *n;
    const struct inputs *in;
};

static struct tensor *fwd_nograd(void *p)
{
    const struct fwd_ctx *c = p;
    return fwd(c->n, c->in);
}

static struct tensor *fwd_graph(void *p)   /* with a graph: the adapter's parameters require grad */
{
    const struct fwd_ctx *c = p;
    return sd_unet_forward(&c->n->u, c->in->x, c->in->t, c->in->ctx);
}

static enum status ckpt_fn(void *p, struct tensor *const *in, struct tensor **out)
{
    (void)in;
    *out = fwd_graph(p);
    return *out ? STATUS_OK : tensor_status();
}

static struct tensor *fwd_checkpointed(void *p)   /* the checkpoint's first, graph-free run */
{
    struct tensor *out = NULL;
    struct tensor *x = ((const struct fwd_ctx *)p)->in->x;
    ck_assert_int_eq(ag_checkpoint(ckpt_fn, p, 1, &x, 1, &out), STATUS_OK);
    return out;   /* ag_checkpoint registers it with the current scope */
}

/* Without a graph the adapter is merged into each projection's weight for the call
 * (diffusion/unet.c): the same output up to rounding, fewer products; with a graph, and in a
 * checkpoint's graph-free run (which the backward recomputes with the graph), it is not. */
START_TEST(test_nograd_merged)
{
    LEAK_CHECK_BEGIN();
    const enum dtype dts[2] = {DTYPE_F64, DTYPE_F32};
    for (int k = 0; k < 2; k++) {
        struct net a;
        net_build(&a, dts[k], NULL);
        struct sd_lora l;
        ck_assert_int_eq(sd_lora_init(&l, &a.u, 3, 5.0, NULL, dts[k], 7), STATUS_OK);
        randomize_b(&l, 0.3);
        ck_assert_int_eq(sd_lora_attach(&l, &a.u, 0.7), STATUS_OK);
        tensor_scope_begin();
        struct inputs in = micro_inputs(dts[k]);
        struct fwd_ctx c = {&a, &in};
        struct tensor *yn, *yg, *yc;
        const int64_t nn = matmul_calls(fwd_nograd, &c, &yn), ng = matmul_calls(fwd_graph, &c, &yg);
        const int64_t nc = matmul_calls(fwd_checkpointed, &c, &yc);
        ck_assert_msg(yn && yg && yc, "%s", tensor_error());
        const double e = test_rel_err(yn, yg), ec = test_max_abs_diff(yc, yg);
        printf("lora %s: no graph (merged, %lld matmuls) vs graph (%lld) rel %.2e; checkpoint's first run (%lld "
               "matmuls) vs graph: max diff %g\n", dtype_name(dts[k]), (long long)nn, (long long)ng, e, (long long)nc, ec);
        ck_assert_int_eq(ng - nn, l.n);   /* one product fewer per adapted projection */
        ck_assert_int_eq(nc, ng);
        ck_assert(e < (dts[k] == DTYPE_F64 ? 1e-13 : 1e-5));
        ck_assert(ec == 0);   /* bit for bit: the backward's recompute must see the same numbers */
        tensor_scope_end();
        sd_lora_detach(&a.u);
        sd_lora_free(&l);
        net_free(&a);
    }
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_merge_tiny_parity)
{
    char cfgp[512], wp[512];
    if (!parity_path("tiny-sd/unet/config.json", cfgp, sizeof cfgp) ||
        !parity_path("tiny-sd/unet/diffusion_pytorch_model.safetensors", wp, sizeof wp))
        return;
    LEAK_CHECK_BEGIN();
    struct nn_params pa, pb;
    struct sd_unet ua, ub;
    nn_params_init(&pa, DTYPE_F32, DEVICE_CPU);
    nn_params_init(&pb, DTYPE_F32, DEVICE_CPU);
    ck_assert_msg(sd_unet_init_file(&ua, cfgp, &pa) == STATUS_OK, "%s", tensor_error());
    ck_assert_msg(sd_unet_init_file(&ub, cfgp, &pb) == STATUS_OK, "%s", tensor_error());
    struct safetensors *w = safetensors_open(wp);
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(nn_params_load(&pa, w, "", false), STATUS_OK);
    ck_assert_int_eq(nn_params_load(&pb, w, "", false), STATUS_OK);
    safetensors_close(w);
    ck_assert_int_eq(ua.n_projs, 128);
    struct sd_lora l;
    ck_assert_int_eq(sd_lora_init(&l, &ua, 4, 4.0, NULL, DTYPE_F32, 42), STATUS_OK);
    ck_assert_int_eq(l.n, 128);
    randomize_b(&l, 0.2);
    char k[200];
    ck_assert_str_eq(sd_lora_kohya_name(k, sizeof k, l.mods[0].name), "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q");
    /* diffusers parameter order: down, up, then mid */
    ck_assert_str_eq(sd_lora_kohya_name(k, sizeof k, l.mods[119].name), "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0");
    ck_assert_str_eq(sd_lora_kohya_name(k, sizeof k, l.mods[127].name), "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0");
    tensor_scope_begin();
    struct inputs in = {
        .x = tensor_to_dtype(test_uniform(DTYPE_F64, TENSOR_SHAPE(1, 4, 16, 16), -1, 1), DTYPE_F32),
        .t = tensor_from_data(DTYPE_I64, TENSOR_SHAPE(1), (int64_t[]){500}),
        .ctx = tensor_to_dtype(test_uniform(DTYPE_F64, TENSOR_SHAPE(1, 5, 32), -1, 1), DTYPE_F32),
    };
    struct net na = {.ps = pa, .u = ua}, nb = {.ps = pb, .u = ub};
    struct tensor *y0 = fwd(&na, &in);
    ck_assert_int_eq(sd_lora_attach(&l, &na.u, 1.0), STATUS_OK);
    struct tensor *ya = fwd(&na, &in);
    ck_assert_int_eq(sd_lora_merge(&l, &nb.u, 1.0), STATUS_OK);
    struct tensor *yb = fwd(&nb, &in);
    const double e = test_rel_err(ya, yb), moved = test_rel_err(ya, y0);
    printf("lora tiny-sd f32 (128 modules): attached vs merged rel %.2e (adapter moves the output by rel %.2e)\n", e, moved);
    ck_assert(moved > 1e-3);
    ck_assert(e < 1e-5);
    tensor_scope_end();
    sd_lora_free(&l);
    sd_unet_free(&na.u);
    sd_unet_free(&nb.u);
    nn_params_free(&na.ps);
    nn_params_free(&nb.ps);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- gradcheck */

struct gc_ctx {
    struct net n64, n32;
    struct inputs in64, in32;
    int mods[2];   /* the projections whose A, B are the checked inputs */
};

static struct tensor *lora_gc_fn(struct tensor *const *in, void *vctx)
{
    struct gc_ctx *c = vctx;
    const bool f32 = in[0]->dtype == DTYPE_F32;
    struct net *n = f32 ? &c->n32 : &c->n64;
    for (int k = 0; k < 2; k++) {
        n->u.projs[c->mods[k]]->lora_down = in[2 * k];
        n->u.projs[c->mods[k]]->lora_up = in[2 * k + 1];
    }
    const struct inputs *x = f32 ? &c->in32 : &c->in64;
    return sd_unet_forward(&n->u, x->x, x->t, x->ctx);
}

START_TEST(test_gradcheck)
{
    LEAK_CHECK_BEGIN();
    struct gc_ctx c;
    net_build(&c.n64, DTYPE_F64, NULL);
    net_build(&c.n32, DTYPE_F32, &c.n64);
    struct sd_lora l64, l32;
    ck_assert_int_eq(sd_lora_init(&l64, &c.n64.u, 2, 3.0, NULL, DTYPE_F64, 5), STATUS_OK);
    randomize_b(&l64, 0.3);
    ck_assert_int_eq(sd_lora_init(&l32, &c.n32.u, 2, 3.0, NULL, DTYPE_F32, 5), STATUS_OK);
    for (int i = 0; i < l64.params.n; i++) ck_assert_int_eq(tensor_copy_(l32.params.v[i].t, l64.params.v[i].t), STATUS_OK);
    ck_assert_int_eq(sd_lora_attach(&l64, &c.n64.u, 0.8), STATUS_OK);
    ck_assert_int_eq(sd_lora_attach(&l32, &c.n32.u, 0.8), STATUS_OK);
    tensor_scope_begin();
    c.in64 = micro_inputs(DTYPE_F64);
    c.in32 = (struct inputs){tensor_to_dtype(c.in64.x, DTYPE_F32), c.in64.t, tensor_to_dtype(c.in64.ctx, DTYPE_F32)};
    c.mods[0] = 0;    /* down attn1.to_q */
    c.mods[1] = 31;   /* mid attn2.to_out.0 (the mid block comes last) */
    ck_assert(strstr(c.n64.u.projs[31]->name, "mid_block") && strstr(c.n64.u.projs[31]->name, "attn2.to_out.0"));
    struct tensor *in[4] = {tensor_clone(l64.mods[0].A), tensor_clone(l64.mods[0].B), tensor_clone(l64.mods[31].A),
                            tensor_clone(l64.mods[31].B)};
    struct gc_opts o = {.tol = 1e-5, .f32_tol = 2e-4};
    ck_assert(gradcheck("lora[micro unet, d out/d A,B of down attn1.to_q and mid attn2.to_out.0, r=2, scale 0.8*3/2]", lora_gc_fn, &c,
                        4, in, &o));
    tensor_scope_end();
    sd_lora_free(&l64);
    sd_lora_free(&l32);
    net_free(&c.n64);
    net_free(&c.n32);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- combine */

START_TEST(test_combine)
{
    LEAK_CHECK_BEGIN();
    struct net a, b;
    net_build(&a, DTYPE_F64, NULL);
    net_build(&b, DTYPE_F64, &a);
    struct sd_lora l1, l2, lc;
    ck_assert_int_eq(sd_lora_init(&l1, &a.u, 2, 3.0, NULL, DTYPE_F64, 11), STATUS_OK);
    ck_assert_int_eq(sd_lora_init(&l2, &a.u, 3, 1.5, "to_q,to_v", DTYPE_F64, 12), STATUS_OK);
    randomize_b(&l1, 0.3);
    randomize_b(&l2, 0.3);
    const struct sd_lora *ls[2] = {&l1, &l2};
    const double sc[2] = {0.8, -0.5};
    ck_assert_msg(sd_lora_combine(&lc, 2, ls, sc) == STATUS_OK, "%s", tensor_error());
    ck_assert_int_eq(lc.rank, 5);
    ck_assert(lc.alpha == 5.0);
    ck_assert_int_eq(lc.n, 32);
    tensor_scope_begin();
    struct inputs in = micro_inputs(DTYPE_F64);
    ck_assert_int_eq(sd_lora_attach(&lc, &a.u, 1.0), STATUS_OK);
    struct tensor *ya = fwd(&a, &in);
    ck_assert_int_eq(sd_lora_merge(&l1, &b.u, 0.8), STATUS_OK);
    ck_assert_int_eq(sd_lora_merge(&l2, &b.u, -0.5), STATUS_OK);
    struct tensor *yb = fwd(&b, &in);
    const double e = test_rel_err(ya, yb);
    printf("lora combine (r=2 all + r=3 q,v; scales 0.8, -0.5) -> rank 5: vs both merged rel %.2e\n", e);
    ck_assert(e < 1e-13);
    tensor_scope_end();
    sd_lora_free(&lc);
    sd_lora_free(&l1);
    sd_lora_free(&l2);
    net_free(&a);
    net_free(&b);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- files */

static void assert_same_lora(const struct sd_lora *a, const struct sd_lora *b)
{
    ck_assert_int_eq(a->rank, b->rank);
    ck_assert(a->alpha == b->alpha);
    ck_assert_int_eq(a->n, b->n);
    for (int i = 0; i < a->n; i++) {
        ck_assert_str_eq(a->mods[i].name, b->mods[i].name);
        ck_assert_int_eq(a->mods[i].A->dtype, b->mods[i].A->dtype);
        ck_assert(tensor_same_shape(a->mods[i].A, b->mods[i].A) && tensor_same_shape(a->mods[i].B, b->mods[i].B));
        ck_assert(test_max_abs_diff(a->mods[i].A, b->mods[i].A) == 0 && test_max_abs_diff(a->mods[i].B, b->mods[i].B) == 0);
    }
}

START_TEST(test_files)
{
    LEAK_CHECK_BEGIN();
    struct net n;
    net_build(&n, DTYPE_F32, NULL);
    struct sd_lora l, r;
    ck_assert_int_eq(sd_lora_init(&l, &n.u, 3, 0.1, "to_k,to_out.0", DTYPE_F32, 3), STATUS_OK);   /* alpha not f32-exact */
    randomize_b(&l, 1.0);
    char p[512];
    /* PEFT / diffusers */
    test_tmp_path(p, sizeof p, "peft.safetensors");
    ck_assert_msg(sd_lora_save(&l, p, SD_LORA_PEFT) == STATUS_OK, "%s", tensor_error());
    struct safetensors *st = safetensors_open(p);
    ck_assert_ptr_nonnull(st);
    ck_assert_int_eq(st->n, 2 * l.n);
    ck_assert_str_eq(st->entries[0].name, "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora_A.weight");
    const struct safetensors_entry *e = safetensors_find(st, "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0.lora_B.weight");
    ck_assert_ptr_nonnull(e);
    ck_assert(e->ndim == 2 && e->shape[0] == 8 && e->shape[1] == 3 && !strcmp(e->file_dtype, "F32"));
    ck_assert_str_eq(safetensors_metadata(st, "lora_alpha"), "0.10000000000000001");
    ck_assert_str_eq(safetensors_metadata(st, "rank"), "3");
    safetensors_close(st);
    ck_assert_msg(sd_lora_load(&r, &n.u, p) == STATUS_OK, "%s", tensor_error());
    assert_same_lora(&l, &r);
    ck_assert(r.mods[0].A->requires_grad);
    sd_lora_free(&r);
    /* kohya */
    test_tmp_path(p, sizeof p, "kohya.safetensors");
    ck_assert_msg(sd_lora_save(&l, p, SD_LORA_KOHYA) == STATUS_OK, "%s", tensor_error());
    st = safetensors_open(p);
    ck_assert_ptr_nonnull(st);
    ck_assert_int_eq(st->n, 3 * l.n);
    ck_assert_str_eq(st->entries[0].name, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k.lora_down.weight");
    ck_assert_str_eq(st->entries[1].name, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k.lora_up.weight");
    e = safetensors_find(st, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha");
    ck_assert(e && e->ndim == 0);
    ck_assert_ptr_nonnull(safetensors_find(st, "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_attn2_to_out_0.lora_up.weight"));
    safetensors_close(st);
    ck_assert_msg(sd_lora_load(&r, &n.u, p) == STATUS_OK, "%s", tensor_error());
    assert_same_lora(&l, &r);
    sd_lora_free(&r);
    printf("lora files: PEFT and kohya round trips bit-exact (%d modules, rank %d, alpha %.17g)\n", l.n, l.rank, l.alpha);

    /* PEFT keys without "unet." and no alpha anywhere: alpha = rank; old diffusers processor keys */
    for (int variant = 0; variant < 2; variant++) {
        const int nt = 2 * l.n;
        char **names = calloc((size_t)nt, sizeof *names);
        struct tensor **ts = calloc((size_t)nt, sizeof *ts);
        for (int i = 0; i < l.n; i++) {
            char buf[400];
            const char *nm = l.mods[i].name;
            for (int k = 0; k < 2; k++) {
                if (variant == 0) snprintf(buf, sizeof buf, "%s.%s", nm, k ? "lora_B.weight" : "lora_A.weight");
                else {
                    /* "<attn>.to_out.0" -> "<attn>.processor.to_out_lora.up.weight" */
                    const char *leaf = strstr(nm, ".to_");
                    char lf[16];
                    snprintf(lf, sizeof lf, "%.6s", leaf + 1);
                    if (lf[5] == '.') lf[5] = 0;
                    snprintf(buf, sizeof buf, "%.*s.processor.%s_lora.%s.weight", (int)(leaf - nm), nm, lf, k ? "up" : "down");
                }
                names[2 * i + k] = strdup(buf);
                ts[2 * i + k] = k ? l.mods[i].B : l.mods[i].A;
            }
        }
        if (variant == 1) ck_assert_str_eq(names[3], "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight");
        test_tmp_path(p, sizeof p, "variant.safetensors");
        ck_assert_int_eq(safetensors_save(p, nt, (const char *const *)names, ts, 0, NULL, NULL), STATUS_OK);
        for (int i = 0; i < nt; i++) free(names[i]);
        free(names);
        free(ts);
        ck_assert_msg(sd_lora_load(&r, &n.u, p) == STATUS_OK, "%s", tensor_error());
        ck_assert(r.alpha == 3.0 && r.rank == 3);
        struct sd_lora l3 = l;
        l3.alpha = 3.0;
        assert_same_lora(&l3, &r);
        sd_lora_free(&r);
        printf("lora files: %s loaded (alpha = rank)\n", variant ? "old diffusers processor keys" : "PEFT keys without 'unet.'");
    }

    /* mixed ranks and alphas (as some kohya files have): padded, alpha/r folded into A */
    {
        tensor_scope_begin();
        const struct sd_proj *p0 = n.u.projs[0], *p1 = n.u.projs[1];
        struct tensor *A0 = tensor_to_dtype(test_uniform(DTYPE_F64, TENSOR_SHAPE(2, p0->in_features), -1, 1), DTYPE_F32);
        struct tensor *B0 = tensor_to_dtype(test_uniform(DTYPE_F64, TENSOR_SHAPE(p0->out_features, 2), -1, 1), DTYPE_F32);
        struct tensor *A1 = tensor_to_dtype(test_uniform(DTYPE_F64, TENSOR_SHAPE(4, p1->in_features), -1, 1), DTYPE_F32);
        struct tensor *B1 = tensor_to_dtype(test_uniform(DTYPE_F64, TENSOR_SHAPE(p1->out_features, 4), -1, 1), DTYPE_F32);
        struct tensor *al0 = tensor_scalar(DTYPE_F32, 1.0), *al1 = tensor_scalar(DTYPE_F32, 8.0);
        char k[6][240], base[200];
        sd_lora_kohya_name(base, sizeof base, p0->name);
        snprintf(k[0], 240, "%s.lora_down.weight", base);
        snprintf(k[1], 240, "%s.lora_up.weight", base);
        snprintf(k[2], 240, "%s.alpha", base);
        sd_lora_kohya_name(base, sizeof base, p1->name);
        snprintf(k[3], 240, "%s.lora_down.weight", base);
        snprintf(k[4], 240, "%s.lora_up.weight", base);
        snprintf(k[5], 240, "%s.alpha", base);
        const char *names[6] = {k[0], k[1], k[2], k[3], k[4], k[5]};
        struct tensor *ts[6] = {A0, B0, al0, A1, B1, al1};
        test_tmp_path(p, sizeof p, "mixed.safetensors");
        ck_assert_int_eq(safetensors_save(p, 6, names, ts, 0, NULL, NULL), STATUS_OK);
        ck_assert_msg(sd_lora_load(&r, &n.u, p) == STATUS_OK, "%s", tensor_error());
        ck_assert(r.rank == 4 && r.alpha == 2.0 && r.n == 2);   /* first module: alpha/r = 1/2 */
        /* the effective products alpha/r B A agree */
        struct tensor *want0 = ag_scale(ag_matmul(B0, A0), 0.5), *want1 = ag_scale(ag_matmul(B1, A1), 2.0);
        struct tensor *got0 = ag_scale(ag_matmul(r.mods[0].B, r.mods[0].A), r.alpha / r.rank);
        struct tensor *got1 = ag_scale(ag_matmul(r.mods[1].B, r.mods[1].A), r.alpha / r.rank);
        printf("lora files: mixed ranks 2/4, alphas 1/8: effective B A rel %.2e, %.2e\n", test_rel_err(got0, want0),
               test_rel_err(got1, want1));
        ck_assert(test_rel_err(got0, want0) < 1e-6 && test_rel_err(got1, want1) < 1e-6);
        sd_lora_free(&r);
        tensor_scope_end();
    }
    sd_lora_free(&l);
    net_free(&n);
    LEAK_CHECK_END();
}
END_TEST

/* SDXL's kohya files name the modules as Stability's UNet does, the one kohya's sd-scripts trains
 * (input_blocks / middle_block / output_blocks): an SDXL-shaped UNet (SD XL's block layout: a plain
 * first level, two attention levels of 2 layers, 1/2 transformer blocks, the added embedding)
 * writes those names, and reads them or diffusers' back; the names are those of real SDXL kohya
 * LoRAs (input_blocks.4.1 = down_blocks.1.attentions.0, middle_block.1, output_blocks.0.1 =
 * up_blocks.0.attentions.0) */
START_TEST(test_kohya_sdxl)
{
    LEAK_CHECK_BEGIN();
    static const char xl_json[] =
        "{\"in_channels\": 4, \"out_channels\": 4, \"block_out_channels\": [8, 16, 16], \"down_block_types\": "
        "[\"DownBlock2D\", \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\"], \"up_block_types\": [\"CrossAttnUpBlock2D\", "
        "\"CrossAttnUpBlock2D\", \"UpBlock2D\"], \"layers_per_block\": 2, \"norm_num_groups\": 4, \"attention_head_dim\": "
        "[1, 2, 4], \"cross_attention_dim\": 12, \"transformer_layers_per_block\": [1, 1, 2], \"use_linear_projection\": "
        "true, \"addition_embed_type\": \"text_time\", \"addition_time_embed_dim\": 4, "
        "\"projection_class_embeddings_input_dim\": 30}";
    struct nn_config c;
    struct nn_params ps;
    struct sd_unet u;
    nn_params_init(&ps, DTYPE_F32, DEVICE_CPU);
    ck_assert_int_eq(nn_config_parse(&c, xl_json, strlen(xl_json), "xl"), STATUS_OK);
    ck_assert_msg(sd_unet_init(&u, &c, &ps) == STATUS_OK, "%s", tensor_error());
    nn_config_free(&c);
    char k[256];
    static const char *const want[][2] = {
        {"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"},
        {"down_blocks.2.attentions.1.transformer_blocks.1.attn2.to_k", "lora_unet_input_blocks_8_1_transformer_blocks_1_attn2_to_k"},
        {"mid_block.attentions.0.transformer_blocks.1.attn2.to_out.0", "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_out_0"},
        {"up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_v", "lora_unet_output_blocks_2_1_transformer_blocks_0_attn1_to_v"},
        {"up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "lora_unet_output_blocks_3_1_transformer_blocks_0_attn1_to_q"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_str_eq(sd_lora_kohya_stem(k, sizeof k, &u, want[i][0]), want[i][1]);
    struct sd_lora l, r;
    ck_assert_int_eq(sd_lora_init(&l, &u, 2, 1.5, NULL, DTYPE_F32, 7), STATUS_OK);
    tensor_scope_begin();
    for (int i = 0; i < l.n; i++)   /* B non-zero, so a swapped module shows */
        ck_assert_int_eq(tensor_copy_(l.mods[i].B, test_uniform(DTYPE_F32, 2, l.mods[i].B->shape, -1, 1)), STATUS_OK);
    tensor_scope_end();
    char p[512];
    test_tmp_path(p, sizeof p, "kohya_xl.safetensors");
    ck_assert_msg(sd_lora_save(&l, p, SD_LORA_KOHYA) == STATUS_OK, "%s", tensor_error());
    struct safetensors *st = safetensors_open(p);
    ck_assert_ptr_nonnull(st);
    ck_assert_ptr_nonnull(safetensors_find(st, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.lora_down.weight"));
    ck_assert_ptr_nonnull(safetensors_find(st, "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q.alpha"));
    ck_assert_ptr_null(safetensors_find(st, "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k.lora_down.weight"));
    safetensors_close(st);
    ck_assert_msg(sd_lora_load(&r, &u, p) == STATUS_OK, "%s", tensor_error());
    assert_same_lora(&l, &r);
    sd_lora_free(&r);
    /* combined adapters keep the names; a file in diffusers' kohya names loads into the same modules */
    const struct sd_lora *one[1] = {&l};
    struct sd_lora comb;
    ck_assert_int_eq(sd_lora_combine(&comb, 1, one, (double[]){1.0}), STATUS_OK);
    ck_assert_str_eq(comb.mods[0].kohya, l.mods[0].kohya);
    sd_lora_free(&comb);
    for (int i = 0; i < l.n; i++) l.mods[i].kohya[0] = 0;   /* diffusers' kohya names */
    ck_assert_msg(sd_lora_save(&l, p, SD_LORA_KOHYA) == STATUS_OK, "%s", tensor_error());
    st = safetensors_open(p);
    ck_assert_ptr_nonnull(st);
    ck_assert_ptr_nonnull(safetensors_find(st, "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k.lora_down.weight"));
    safetensors_close(st);
    ck_assert_msg(sd_lora_load(&r, &u, p) == STATUS_OK, "%s", tensor_error());
    assert_same_lora(&l, &r);
    ck_assert_str_eq(r.mods[0].kohya, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q");
    sd_lora_free(&r);
    unlink(p);
    sd_lora_free(&l);
    sd_unet_free(&u);
    nn_params_free(&ps);
    LEAK_CHECK_END();
}
END_TEST
/* a kohya-style file of one module with one tensor replaced */
static enum status write_bad(const char *path, const struct sd_unet *u, int what)
{
    tensor_scope_begin();
    const struct sd_proj *p = u->projs[1];
    char base[200], k[4][240];
    sd_lora_kohya_name(base, sizeof base, p->name);
    snprintf(k[0], 240, "%s.lora_down.weight", base);
    snprintf(k[1], 240, "%s.lora_up.weight", base);
    snprintf(k[2], 240, "%s.alpha", base);
    struct tensor *ts[4] = {tensor_zeros(DTYPE_F32, TENSOR_SHAPE(2, p->in_features), DEVICE_CPU),
                            tensor_zeros(DTYPE_F32, TENSOR_SHAPE(p->out_features, 2), DEVICE_CPU), tensor_scalar(DTYPE_F32, 2.0),
                            NULL};
    int n = 3;
    if (what == 0) n = 1;                                                                               /* missing up */
    if (what == 1) ts[1] = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(p->out_features + 1, 2), DEVICE_CPU); /* wrong shape */
    if (what == 2) { snprintf(k[3], 240, "lora_unet_down_blocks_7_attentions_0_attn1_to_q.lora_down.weight"); ts[3] = ts[0]; n = 4; }
    if (what == 3) ts[0] = tensor_zeros(DTYPE_I32, TENSOR_SHAPE(2, p->in_features), DEVICE_CPU);     /* wrong dtype */
    if (what == 4) ts[1] = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(p->out_features, 3), DEVICE_CPU);     /* rank mismatch */
    if (what == 5) { snprintf(k[3], 240, "unet.conv_in.weight"); ts[3] = ts[0]; n = 4; }                /* not LoRA */
    if (what == 6) { snprintf(k[3], 240, "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_z.lora_A.weight"); ts[3] = ts[0]; n = 4; }
    if (what == 7) { snprintf(k[3], 240, "%s.dora_scale", base); ts[3] = ts[0]; n = 4; }   /* DoRA (read past projs[] once) */
    const char *names[4] = {k[0], k[1], k[2], k[3]};
    enum status s = safetensors_save(path, n, names, ts, 0, NULL, NULL);
    tensor_scope_end();
    return s;
}

START_TEST(test_bad_files)
{
    LEAK_CHECK_BEGIN();
    struct net n;
    net_build(&n, DTYPE_F32, NULL);
    char p[512], kd[240], ku[240], base[200];
    sd_lora_kohya_name(base, sizeof base, n.u.projs[1]->name);
    snprintf(kd, sizeof kd, "%s.lora_down.weight", base);
    snprintf(ku, sizeof ku, "%s.lora_up.weight", base);
    const char *needles[8][2] = {
        {kd, "lora_B"}, {ku, "[9,2]"}, {"down_blocks_7", "no module"}, {kd, "I32"}, {ku, "rank"}, {"conv_in", "not a LoRA"}, {"to_z", "no module"},
        {"dora_scale", "not a plain LoRA"},
    };
    test_tmp_path(p, sizeof p, "bad.safetensors");
    for (int what = 0; what < 8; what++) {
        ck_assert_int_eq(write_bad(p, &n.u, what), STATUS_OK);
        struct sd_lora l;
        ck_assert_int_ne(sd_lora_load(&l, &n.u, p), STATUS_OK);
        printf("rejected lora file %d: %s\n", what, tensor_error());
        ck_assert_msg(strstr(tensor_error(), needles[what][0]) && strstr(tensor_error(), needles[what][1]) && strstr(tensor_error(), p),
                      "message '%s' should name '%s' and '%s'", tensor_error(), needles[what][0], needles[what][1]);
        ck_assert_int_eq(l.n, 0);
        sd_lora_free(&l);
    }
    /* the good version of the same file loads */
    ck_assert_int_eq(write_bad(p, &n.u, -1), STATUS_OK);
    struct sd_lora l;
    ck_assert_msg(sd_lora_load(&l, &n.u, p) == STATUS_OK, "%s", tensor_error());
    ck_assert(l.n == 1 && l.rank == 2 && l.alpha == 2.0);
    sd_lora_free(&l);
    unlink(p);
    net_free(&n);
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("lora");
    TCase *tc = tcase_create("lora");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_init);
    tcase_add_test(tc, test_merge_micro);
    tcase_add_test(tc, test_kohya_sdxl);
    tcase_add_test(tc, test_nograd_merged);
    tcase_add_test(tc, test_merge_tiny_parity);
    tcase_add_test(tc, test_gradcheck);
    tcase_add_test(tc, test_combine);
    tcase_add_test(tc, test_files);
    tcase_add_test(tc, test_bad_files);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
