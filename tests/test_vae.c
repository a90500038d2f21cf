/* test_vae.c — AutoencoderKL: gradient checks of decode and encode on a small VAE (plain and
 * block-checkpointed), parity with diffusers (forward and the gradient of every parameter and
 * input in ../shared/parity/golden/vae.safetensors), the real SD 1.4 parameter manifest,
 * loading the old attention names, and error reporting. */
#include "diffusion/vae.h"
#include "tensor/alloc.h"
#include "tests/parity.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* two levels (factor 2), 2 groups of 2 or 4 channels, 2 latent channels: small enough that
 * finite differences over every input element stay cheap */
static const char *SMALL_JSON =
    "{\"_class_name\":\"AutoencoderKL\",\"in_channels\":3,\"out_channels\":3,\"latent_channels\":2,"
    "\"block_out_channels\":[4,8],\"down_block_types\":[\"DownEncoderBlock2D\",\"DownEncoderBlock2D\"],"
    "\"up_block_types\":[\"UpDecoderBlock2D\",\"UpDecoderBlock2D\"],\"layers_per_block\":1,"
    "\"norm_num_groups\":2,\"act_fn\":\"silu\",\"sample_size\":8,\"scaling_factor\":0.18215,\"force_upcast\":true}";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static enum status config_from_json(struct sd_vae_config *cfg, const char *json)
{
    struct nn_config c;
    enum status s = nn_config_parse(&c, json, strlen(json), "vae-config.json");
    if (!s) s = sd_vae_config_read(cfg, &c);
    nn_config_free(&c);
    return s;
}

/* random parameters, none of them an identity (norm weights around 1, biases non-zero) */
static void randomise(struct nn_params *ps, uint64_t seed)
{
    ag_rng_seed(seed);
    for (int i = 0; i < ps->n; i++) {
        struct tensor *t = ps->v[i].t;
        bool norm_w = strstr(ps->v[i].name, "norm") && t->ndim == 1 && strstr(ps->v[i].name, ".weight");
        int64_t fan_in = 1;
        for (int d = 1; d < t->ndim; d++) fan_in *= t->shape[d];
        double b = t->ndim > 1 ? 1.0 / sqrt((double)fan_in) : 0.3;
        tensor_scope_begin();
        tensor_copy_(t, ag_affine(ag_rand(DTYPE_F64, t->ndim, t->shape, DEVICE_CPU), 2 * b, norm_w ? 1.0 - b : -b));
        tensor_scope_end();
    }
}

static void small_vae(struct sd_vae *vae, struct nn_params *ps, enum dtype dt, uint64_t seed)
{
    struct sd_vae_config cfg;
    ck_assert_msg(config_from_json(&cfg, SMALL_JSON) == STATUS_OK, "%s", tensor_error());
    nn_params_init(ps, dt, DEVICE_CPU);
    ck_assert_msg(sd_vae_init_config(vae, &cfg, ps) == STATUS_OK, "%s", tensor_error());
    randomise(ps, seed);
}

/* ---------------------------------------------------------------- gradient checks */

struct pair {
    struct sd_vae *v64, *v32;
};

static struct sd_vae *pick(struct pair *p, const struct tensor *x) { return x->dtype == DTYPE_F64 ? p->v64 : p->v32; }

static struct tensor *f_decode(struct tensor *const *in, void *ctx) { return sd_vae_decode(pick(ctx, in[0]), in[0]); }

static struct tensor *f_encode(struct tensor *const *in, void *ctx)
{
    struct tensor *m, *lv;
    if (sd_vae_encode(pick(ctx, in[0]), in[0], &m, &lv)) return NULL;
    struct tensor *both[2] = {m, lv};
    return ag_concat(2, both, 1);
}

START_TEST(test_gradcheck)
{
    LEAK_CHECK_BEGIN();
    struct nn_params p64, p32;
    struct sd_vae v64, v32;
    small_vae(&v64, &p64, DTYPE_F64, 11);
    small_vae(&v32, &p32, DTYPE_F32, 11);
    struct pair pr = {&v64, &v32};
    tensor_scope_begin();
    struct tensor *z = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 2, 2, 3), -2, 2);
    ck_assert(gradcheck("vae.decode[z=2x2x2x3,ch=4/8,lpb=1]", f_decode, &pr, 1, &z, NULL));
    /* odd sizes go through the asymmetric padding of the downsampler */
    struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(1, 3, 5, 4), -1, 1);
    ck_assert(gradcheck("vae.encode[x=1x3x5x4]", f_encode, &pr, 1, &x, NULL));
    v64.checkpoint = v32.checkpoint = true;
    ck_assert(gradcheck("vae.decode[checkpoint]", f_decode, &pr, 1, &z, NULL));
    ck_assert(gradcheck("vae.encode[checkpoint]", f_encode, &pr, 1, &x, NULL));
    tensor_scope_end();
    nn_params_free(&p64);
    nn_params_free(&p32);
    LEAK_CHECK_END();
}
END_TEST

/* Non-square: no layer of the VAE knows where a position is, so transposing H and W of the input
 * and of every convolution kernel transposes the decoder's image and the encoder's moments, up to
 * rounding; a mix-up of H and W (the mid block's attention reshapes, the downsampler's padding)
 * breaks it (see test_unet.c's test_transpose_non_square) */
START_TEST(test_transpose_non_square)
{
    LEAK_CHECK_BEGIN();
    struct nn_params ps;
    struct sd_vae v;
    small_vae(&v, &ps, DTYPE_F64, 5);
    tensor_scope_begin();
    struct tensor *z = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 2, 2, 5), -2, 2);
    struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(1, 3, 7, 11), -1, 1);   /* odd: the asymmetric pad */
    struct tensor *y = sd_vae_decode(&v, z), *m, *lv;
    ck_assert_msg(y && !sd_vae_encode(&v, x, &m, &lv), "%s", tensor_error());
    ck_assert(y->shape[2] == 4 && y->shape[3] == 10);
    int n_kernels = 0;
    for (int i = 0; i < ps.n; i++) {
        struct tensor *w = ps.v[i].t;
        if (w->ndim != 4 || w->shape[2] == 1) continue;
        ck_assert_int_eq(tensor_copy_(w, tensor_contiguous(tensor_transpose(w, 2, 3))), STATUS_OK);
        n_kernels++;
    }
    struct tensor *yt = sd_vae_decode(&v, tensor_contiguous(tensor_transpose(z, 2, 3))), *mt, *lvt;
    ck_assert_msg(yt && !sd_vae_encode(&v, tensor_contiguous(tensor_transpose(x, 2, 3)), &mt, &lvt), "%s", tensor_error());
    const double ed = test_rel_err(yt, tensor_transpose(y, 2, 3));
    const double em = fmax(test_rel_err(mt, tensor_transpose(m, 2, 3)), test_rel_err(lvt, tensor_transpose(lv, 2, 3)));
    printf("vae transpose: %d kernels; decode 2x5 rel err %.2e, encode 7x11 rel err %.2e\n", n_kernels, ed, em);
    ck_assert_msg(ed <= 1e-12 && em <= 1e-12, "decode rel %g, encode rel %g", ed, em);
    tensor_scope_end();
    nn_params_free(&ps);
    LEAK_CHECK_END();
}
END_TEST

/* gradients of encoder parameters (the golden file has only the decoder's): the parameter
 * becomes the checked input by swapping the layer's pointer for the call */
struct param_ctx {
    struct pair vaes;
    struct tensor **slot64, **slot32;
    struct tensor *image64, *image32;
};

static struct tensor *f_encode_param(struct tensor *const *in, void *ctx)
{
    struct param_ctx *c = ctx;
    bool f64 = in[0]->dtype == DTYPE_F64;
    struct tensor **slot = f64 ? c->slot64 : c->slot32, *saved = *slot;
    *slot = in[0];
    struct tensor *m, *lv, *y = NULL;
    if (!sd_vae_encode(f64 ? c->vaes.v64 : c->vaes.v32, f64 ? c->image64 : c->image32, &m, &lv)) {
        struct tensor *both[2] = {m, lv};
        y = ag_concat(2, both, 1);
    }
    *slot = saved;
    return y;
}

START_TEST(test_gradcheck_encoder_params)
{
    LEAK_CHECK_BEGIN();
    struct nn_params p64, p32;
    struct sd_vae v64, v32;
    small_vae(&v64, &p64, DTYPE_F64, 13);
    small_vae(&v32, &p32, DTYPE_F32, 13);
    tensor_scope_begin();
    struct param_ctx c = {{&v64, &v32}, NULL, NULL, test_uniform(DTYPE_F64, TENSOR_SHAPE(1, 3, 5, 4), -1, 1), NULL};
    c.image32 = tensor_to_dtype(c.image64, DTYPE_F32);
    struct {
        const char *label;
        struct tensor **s64, **s32;
    } cases[] = {
        {"vae.encoder.down_blocks.0.downsamplers.0.conv.weight[pad=(0,1,0,1),stride=2]",
         &v64.encoder.down_blocks[0].sampler.weight, &v32.encoder.down_blocks[0].sampler.weight},
        {"vae.encoder.mid_block.attentions.0.to_q.weight", &v64.encoder.mid_block.attention.to_q.weight,
         &v32.encoder.mid_block.attention.to_q.weight},
        {"vae.encoder.mid_block.attentions.0.group_norm.weight", &v64.encoder.mid_block.attention.group_norm.weight,
         &v32.encoder.mid_block.attention.group_norm.weight},
        {"vae.encoder.down_blocks.1.resnets.0.conv_shortcut.weight", &v64.encoder.down_blocks[1].resnets[0].conv_shortcut.weight,
         &v32.encoder.down_blocks[1].resnets[0].conv_shortcut.weight},
        {"vae.quant_conv.bias", &v64.quant_conv.bias, &v32.quant_conv.bias},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        c.slot64 = cases[i].s64;
        c.slot32 = cases[i].s32;
        struct tensor *w = tensor_clone(*cases[i].s64);
        ck_assert(gradcheck(cases[i].label, f_encode_param, &c, 1, &w, NULL));
    }
    tensor_scope_end();
    nn_params_free(&p64);
    nn_params_free(&p32);
    LEAK_CHECK_END();
}
END_TEST

/* the parameter gradients: the same with and without checkpointing, and the decoder's are
 * non-zero (the parity test compares them with diffusers) */
START_TEST(test_checkpoint_same_grads)
{
    LEAK_CHECK_BEGIN();
    struct nn_params ps;
    struct sd_vae vae;
    small_vae(&vae, &ps, DTYPE_F32, 5);
    nn_params_set_trainable(&ps, true);
    tensor_scope_begin();
    struct tensor *z = test_uniform(DTYPE_F32, TENSOR_SHAPE(2, 2, 4, 4), -2, 2);
    struct tensor *r = test_uniform(DTYPE_F32, TENSOR_SHAPE(2, 3, 8, 8), -1, 1);
    struct tensor *g[2][256] = {{NULL}};
    ck_assert_int_le(ps.n, 256);
    for (int pass = 0; pass < 2; pass++) {
        vae.checkpoint = pass == 1;
        struct tensor *loss = ag_sum(ag_mul(sd_vae_decode(&vae, z), r), 0, NULL, false);
        ck_assert_msg(loss && ag_backward(loss, NULL, false) == STATUS_OK, "%s", tensor_error());
        for (int i = 0; i < ps.n; i++) {
            g[pass][i] = ps.v[i].t->grad ? tensor_ref(ps.v[i].t->grad) : NULL;
            tensor_autorelease(g[pass][i]);
            ag_zero_grad(ps.v[i].t);
        }
    }
    int n_dec = 0;
    for (int i = 0; i < ps.n; i++) {
        bool dec = !strncmp(ps.v[i].name, "decoder.", 8) || !strncmp(ps.v[i].name, "post_quant_conv.", 16);
        ck_assert_msg((g[0][i] != NULL) == dec, "%s: gradient %s", ps.v[i].name, g[0][i] ? "unexpected" : "missing");
        if (!dec) continue;
        n_dec++;
        ck_assert_msg(g[1][i] != NULL, "%s: no gradient under checkpointing", ps.v[i].name);
        ck_assert_msg(test_max_abs_diff(g[0][i], g[1][i]) == 0.0, "%s: checkpointed gradient differs", ps.v[i].name);
    }
    ck_assert_int_gt(n_dec, 0);
    tensor_scope_end();
    nn_params_free(&ps);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- parity with diffusers */

struct tally {
    int n, ok, n_floor;
    double worst_rel, worst_ratio;   /* rel over tensors the rtol term bounds; err/bound over all */
    char worst[128], worst_r[128];
};

/* parity_check, plus the worst relative error among tensors whose bound is set by rtol (not by
 * the float32-noise floor, which covers gradients that are zero in exact arithmetic) */
static void tally_check(struct tally *t, const char *label, const struct tensor *ours, const struct tensor *golden,
                        double rtol, double S)
{
    bool ok = parity_check(label, ours, golden, rtol, S);
    t->n++;
    t->ok += ok;
    if (!ours || !golden) return;
    double gn = 0, en = 0;
    int64_t n = tensor_numel(golden);
    for (int64_t i = 0; i < n; i++) {
        double a = tensor_get_flat(ours, i), b = tensor_get_flat(golden, i);
        gn += b * b;
        en += (a - b) * (a - b);
    }
    gn = sqrt(gn);
    en = sqrt(en);
    double floor = 1e-6 * S * sqrt((double)n), ratio = en / (rtol * gn + floor), rel = en / fmax(gn, 1e-30);
    if (ratio > t->worst_ratio) {
        t->worst_ratio = ratio;
        snprintf(t->worst_r, sizeof t->worst_r, "%s", label);
    }
    if (rtol * gn < floor) {
        t->n_floor++;
        printf("  (%s: golden norm %.2e is below the noise floor; rel %.2e is not meaningful)\n", label, gn, rel);
    } else if (rel > t->worst_rel) {
        t->worst_rel = rel;
        snprintf(t->worst, sizeof t->worst, "%s", label);
    }
}

static void tally_print(const char *what, const struct tally *t)
{
    printf("%s: %d/%d tensors within tolerance; worst rel %.2e (%s); worst err/bound %.3f (%s); %d at the noise floor\n",
           what, t->ok, t->n, t->worst_rel, t->worst, t->worst_ratio, t->worst_r, t->n_floor);
}

static bool tiny_vae(struct sd_vae *vae, struct nn_params *ps)
{
    char cp[512], wp[512];
    if (!parity_path("tiny-sd/vae/config.json", cp, sizeof cp) ||
        !parity_path("tiny-sd/vae/diffusion_pytorch_model.safetensors", wp, sizeof wp))
        return false;
    nn_params_init(ps, DTYPE_F32, DEVICE_CPU);
    ck_assert_msg(sd_vae_init(vae, cp, ps) == STATUS_OK, "%s", tensor_error());
    ck_assert_msg(sd_vae_load_file(vae, wp) == STATUS_OK, "%s", tensor_error());
    return true;
}

static void parity_decode(struct sd_vae *vae, struct nn_params *ps, const struct safetensors *st, bool checkpoint)
{
    tensor_scope_begin();
    vae->checkpoint = checkpoint;
    struct tensor *latents = parity_load(st, "latents");
    struct tensor *lw = parity_load(st, "loss_weights");
    ag_set_requires_grad(latents, true);
    for (int i = 0; i < ps->n; i++) ag_zero_grad(ps->v[i].t);

    struct mem_stats m0, m1, m2;
    mem_get_stats(DEVICE_CPU, &m0);
    mem_reset_peak(DEVICE_CPU);
    double t0 = now_s();
    struct tensor *image = sd_vae_decode(vae, latents);
    ck_assert_msg(image != NULL, "%s", tensor_error());
    struct tensor *loss = ag_sum(ag_mul(image, lw), 0, NULL, false);
    double t1 = now_s();
    mem_get_stats(DEVICE_CPU, &m1);
    mem_reset_peak(DEVICE_CPU);
    ck_assert_msg(ag_backward(loss, NULL, false) == STATUS_OK, "%s", tensor_error());
    double t2 = now_s();
    mem_get_stats(DEVICE_CPU, &m2);
    char a[32], b[32], c[32], d[32];
    printf("vae decode%s [2,4,16,16] -> [2,3,128,128], %d threads: forward %.2f s, backward %.2f s; live before %s, "
           "forward peak %s, live after forward (graph) %s, backward peak %s (all CPU bytes, weights included)\n",
           checkpoint ? "[checkpoint]" : "", tensor_num_threads(), t1 - t0, t2 - t1, mem_format(m0.live_bytes, a, sizeof a),
           mem_format(m1.peak_bytes, b, sizeof b), mem_format(m1.live_bytes, c, sizeof c), mem_format(m2.peak_bytes, d, sizeof d));

    struct tally t = {0};
    tally_check(&t, "vae.image", image, parity_load(st, "image"), PARITY_RTOL_FWD, parity_rms(st, "image"));
    const double S = parity_rms(st, "grad.");
    int n_grads = 0;
    for (int i = 0; i < st->n; i++) {
        const char *k = st->entries[i].name;
        if (strncmp(k, "grad.", 5)) continue;
        n_grads++;
        const char *name = k + 5;
        struct tensor *p = !strcmp(name, "latents") ? latents : nn_param_find(ps, name);
        ck_assert_msg(p != NULL, "golden gradient %s names no parameter or input", k);
        tally_check(&t, k, p->grad, parity_load(st, k), PARITY_RTOL_GRAD, S);
    }
    /* every decoder parameter is covered by the file, and no encoder parameter got a gradient */
    int n_dec = 0;
    for (int i = 0; i < ps->n; i++) {
        bool dec = !strncmp(ps->v[i].name, "decoder.", 8) || !strncmp(ps->v[i].name, "post_quant_conv.", 16);
        n_dec += dec;
        if (!dec) ck_assert_msg(ps->v[i].t->grad == NULL, "%s got a gradient from decode", ps->v[i].name);
    }
    printf("(image + %d gradients: latents and %d parameters)\n", n_grads, n_dec);
    tally_print(checkpoint ? "vae decode parity [checkpoint]" : "vae decode parity", &t);
    ck_assert_int_eq(n_grads, n_dec + 1);
    ck_assert_int_eq(t.ok, t.n);
    for (int i = 0; i < ps->n; i++) ag_zero_grad(ps->v[i].t);
    tensor_scope_end();
}

START_TEST(test_parity_decode)
{
    LEAK_CHECK_BEGIN();
    char gp[512];
    struct nn_params ps;
    struct sd_vae vae;
    if (!parity_path("golden/vae.safetensors", gp, sizeof gp) || !tiny_vae(&vae, &ps)) return;
    struct safetensors *st = safetensors_open(gp);
    ck_assert_msg(st != NULL, "%s", tensor_error());
    /* inference (no graph): each stage's input is released as the next one runs */
    tensor_scope_begin();
    struct mem_stats m0, m1;
    mem_get_stats(DEVICE_CPU, &m0);
    mem_reset_peak(DEVICE_CPU);
    double t0 = now_s();
    ag_no_grad_begin();
    struct tensor *image = sd_vae_decode(&vae, parity_load(st, "latents"));
    ag_no_grad_end();
    double t1 = now_s();
    mem_get_stats(DEVICE_CPU, &m1);
    char a[32], b[32];
    printf("vae decode [no grad], %d threads: %.2f s; live before %s, peak %s\n", tensor_num_threads(), t1 - t0,
           mem_format(m0.live_bytes, a, sizeof a), mem_format(m1.peak_bytes, b, sizeof b));
    ck_assert(parity_check("vae.image[no grad]", image, parity_load(st, "image"), PARITY_RTOL_FWD, parity_rms(st, "image")));
    tensor_scope_end();

    nn_params_set_trainable(&ps, true);
    parity_decode(&vae, &ps, st, false);
    parity_decode(&vae, &ps, st, true);
    safetensors_close(st);
    nn_params_free(&ps);
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_parity_encode)
{
    LEAK_CHECK_BEGIN();
    char gp[512];
    struct nn_params ps;
    struct sd_vae vae;
    if (!parity_path("golden/vae.safetensors", gp, sizeof gp) || !tiny_vae(&vae, &ps)) return;
    struct safetensors *st = safetensors_open(gp);
    ck_assert_msg(st != NULL, "%s", tensor_error());
    tensor_scope_begin();
    struct tensor *mean, *logvar;
    double t0 = now_s();
    ck_assert_msg(sd_vae_encode(&vae, parity_load(st, "encode.image"), &mean, &logvar) == STATUS_OK, "%s", tensor_error());
    printf("vae encode [2,3,128,128] -> 2 x [2,4,16,16]: forward %.2f s\n", now_s() - t0);
    struct tally t = {0};
    tally_check(&t, "vae.encode.mean", mean, parity_load(st, "encode.mean"), PARITY_RTOL_FWD, parity_rms(st, "encode.mean"));
    tally_check(&t, "vae.encode.logvar", logvar, parity_load(st, "encode.logvar"), PARITY_RTOL_FWD,
                parity_rms(st, "encode.logvar"));
    /* the file holds no encoder gradients; compare any it may gain */
    for (int i = 0; i < st->n; i++)
        ck_assert_msg(strncmp(st->entries[i].name, "grad.encode", 11) && strncmp(st->entries[i].name, "grad.encoder.", 13),
                      "golden file has encoder gradient %s: extend this test", st->entries[i].name);
    tally_print("vae encode parity", &t);
    ck_assert_int_eq(t.ok, t.n);
    tensor_scope_end();
    safetensors_close(st);
    nn_params_free(&ps);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- the real SD 1.4 VAE */

START_TEST(test_manifest)
{
    LEAK_CHECK_BEGIN();
    char cp[512], mp[512];
    if (!parity_path("sd14/vae.config.json", cp, sizeof cp) || !parity_path("sd14/sd14-manifest.json", mp, sizeof mp)) return;
    struct nn_config mc;
    ck_assert_msg(nn_config_load(&mc, mp) == STATUS_OK, "%s", tensor_error());
    const cJSON *want = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(mc.root, "parameters"), "vae");
    const cJSON *count = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(mc.root, "parameter_counts"), "vae");
    ck_assert(cJSON_IsObject(want) && cJSON_IsNumber(count));

    /* bf16 zeros: 167 MB, created in well under a second */
    double t0 = now_s();
    struct nn_params ps;
    struct sd_vae vae;
    nn_params_init(&ps, DTYPE_BF16, DEVICE_CPU);
    ck_assert_msg(sd_vae_init(&vae, cp, &ps) == STATUS_OK, "%s", tensor_error());
    double t1 = now_s();
    ck_assert_int_eq(ps.n, cJSON_GetArraySize(want));
    for (int i = 0; i < ps.n; i++) {
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(want, ps.v[i].name);
        ck_assert_msg(cJSON_IsArray(shape), "%s is not in the SD 1.4 manifest", ps.v[i].name);
        const struct tensor *p = ps.v[i].t;
        ck_assert_msg(cJSON_GetArraySize(shape) == p->ndim, "%s: rank %d, manifest %d", ps.v[i].name, p->ndim,
                      cJSON_GetArraySize(shape));
        for (int d = 0; d < p->ndim; d++)
            ck_assert_msg((int64_t)cJSON_GetArrayItem(shape, d)->valuedouble == p->shape[d], "%s: dim %d is %lld",
                          ps.v[i].name, d, (long long)p->shape[d]);
    }
    int64_t n = nn_params_count(&ps), n_dec = 0;
    for (int i = 0; i < ps.n; i++)
        if (!strncmp(ps.v[i].name, "decoder.", 8) || !strncmp(ps.v[i].name, "post_quant_conv.", 16))
            n_dec += tensor_numel(ps.v[i].t);
    printf("vae manifest: %d tensors, %lld parameters (manifest %.0f), decoder + post_quant_conv %lld; built in %.2f s (bf16)\n",
           ps.n, (long long)n, count->valuedouble, (long long)n_dec, t1 - t0);
    ck_assert_int_eq(n, (int64_t)count->valuedouble);
    ck_assert_int_eq(n, 83653863);
    ck_assert_int_eq(n_dec, 49490199);
    ck_assert_double_eq(vae.cfg.scaling_factor, 0.18215);
    nn_params_free(&ps);
    nn_config_free(&mc);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- loading */

static const char *old_name(const char *name, char *buf, size_t n)
{
    static const char *const from[4] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
    static const char *const to[4] = {".query.", ".key.", ".value.", ".proj_attn."};
    snprintf(buf, n, "%s", name);
    for (int i = 0; i < 4; i++) {
        const char *at = strstr(name, from[i]);
        if (at) snprintf(buf, n, "%.*s%s%s", (int)(at - name), name, to[i], at + strlen(from[i]));
    }
    return buf;
}

/* save ps's tensors (old attention names when `old`), skipping index `skip`, adding an
 * unknown tensor when `extra` */
static void save_as(const struct nn_params *ps, const char *path, bool old, int skip, bool extra)
{
    const char *names[300];
    struct tensor *ts[300];
    static char buf[300][128];
    int n = 0;
    ck_assert_int_lt(ps->n, 299);
    for (int i = 0; i < ps->n; i++) {
        if (i == skip) continue;
        names[n] = old ? old_name(ps->v[i].name, buf[n], sizeof buf[n]) : ps->v[i].name;
        ts[n++] = ps->v[i].t;
    }
    if (extra) {
        names[n] = "decoder.mid_block.attentions.0.rel_pos.weight";
        ts[n++] = ps->v[0].t;
    }
    ck_assert_msg(safetensors_save(path, n, names, ts, 0, NULL, NULL) == STATUS_OK, "%s", tensor_error());
}

START_TEST(test_load_names)
{
    LEAK_CHECK_BEGIN();
    struct nn_params a, b;
    struct sd_vae va, vb;
    small_vae(&va, &a, DTYPE_F32, 21);
    small_vae(&vb, &b, DTYPE_F32, 22);
    char path[] = "/tmp/draft-test-vae-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    /* old spelling (query/key/value/proj_attn) loads into the new names */
    save_as(&a, path, true, -1, false);
    struct safetensors *st = safetensors_open(path);
    ck_assert_ptr_nonnull(st);
    ck_assert_ptr_nonnull(safetensors_find(st, "decoder.mid_block.attentions.0.proj_attn.weight"));
    ck_assert_msg(sd_vae_load(&vb, st, "") == STATUS_OK, "%s", tensor_error());
    safetensors_close(st);
    tensor_scope_begin();
    for (int i = 0; i < a.n; i++)
        ck_assert_msg(test_max_abs_diff(a.v[i].t, b.v[i].t) == 0.0, "%s differs after loading old names", a.v[i].name);
    tensor_scope_end();
    /* a missing tensor names itself (and the old spelling is no excuse) */
    int skip = -1;
    for (int i = 0; i < a.n; i++)
        if (strstr(a.v[i].name, "decoder.mid_block.attentions.0.to_k.weight")) skip = i;
    ck_assert_int_ge(skip, 0);
    save_as(&a, path, true, skip, false);
    st = safetensors_open(path);
    ck_assert_int_eq(sd_vae_load(&vb, st, ""), STATUS_FORMAT);
    ck_assert_msg(strstr(tensor_error(), "decoder.mid_block.attentions.0.to_k.weight") != NULL, "%s", tensor_error());
    safetensors_close(st);
    /* an unexpected tensor */
    save_as(&a, path, false, -1, true);
    st = safetensors_open(path);
    ck_assert_int_eq(sd_vae_load(&vb, st, ""), STATUS_FORMAT);
    ck_assert_msg(strstr(tensor_error(), "rel_pos") != NULL, "%s", tensor_error());
    safetensors_close(st);
    /* a mis-shaped tensor */
    struct nn_params c;
    struct sd_vae vc;
    struct sd_vae_config cfg;
    const char *wide = "{\"block_out_channels\":[4,12],\"down_block_types\":[\"DownEncoderBlock2D\",\"DownEncoderBlock2D\"],"
                       "\"up_block_types\":[\"UpDecoderBlock2D\",\"UpDecoderBlock2D\"],\"latent_channels\":2,"
                       "\"norm_num_groups\":2}";
    ck_assert_int_eq(config_from_json(&cfg, wide), STATUS_OK);
    nn_params_init(&c, DTYPE_F32, DEVICE_CPU);
    ck_assert_int_eq(sd_vae_init_config(&vc, &cfg, &c), STATUS_OK);
    save_as(&a, path, false, -1, false);
    st = safetensors_open(path);
    ck_assert_int_ne(sd_vae_load(&vc, st, ""), STATUS_OK);
    printf("mis-shaped load: %s\n", tensor_error());
    safetensors_close(st);
    nn_params_free(&c);
    unlink(path);
    nn_params_free(&a);
    nn_params_free(&b);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- errors */

START_TEST(test_errors)
{
    LEAK_CHECK_BEGIN();
    struct nn_params ps;
    struct sd_vae vae;
    small_vae(&vae, &ps, DTYPE_F32, 3);
    tensor_scope_begin();
    ck_assert_ptr_null(sd_vae_decode(&vae, test_uniform(DTYPE_F32, TENSOR_SHAPE(1, 4, 2, 2), -1, 1)));
    ck_assert_msg(strstr(tensor_error(), "latents must be [B, 2, H, W] (got [1,4,2,2])") != NULL, "%s", tensor_error());
    ck_assert_ptr_null(sd_vae_decode(&vae, test_uniform(DTYPE_F32, TENSOR_SHAPE(2, 2, 2), -1, 1)));
    ck_assert_ptr_null(sd_vae_decode(&vae, NULL));
    struct tensor *m, *lv;
    ck_assert_int_eq(sd_vae_encode(&vae, test_uniform(DTYPE_F32, TENSOR_SHAPE(1, 1, 8, 8), -1, 1), &m, &lv), STATUS_SHAPE);
    ck_assert(m == NULL && lv == NULL);
    ck_assert_msg(strstr(tensor_error(), "image must be [B, 3, H, W]") != NULL, "%s", tensor_error());
    /* too small for the 3x3 convolution after padding: the conv's error comes through */
    ck_assert_int_ne(sd_vae_encode(&vae, test_uniform(DTYPE_F32, TENSOR_SHAPE(1, 3, 1, 1), -1, 1), &m, &lv), STATUS_OK);
    ck_assert(m == NULL && lv == NULL);
    printf("1x1 image: %s\n", tensor_error());
    /* f64 input into f32 parameters */
    ck_assert_ptr_null(sd_vae_decode(&vae, test_uniform(DTYPE_F64, TENSOR_SHAPE(1, 2, 2, 2), -1, 1)));
    tensor_scope_end();
    nn_params_free(&ps);

    struct sd_vae_config cfg;
    ck_assert_int_eq(config_from_json(&cfg, "{\"block_out_channels\":[32],\"norm_num_groups\":8,\"color\":1}"), STATUS_FORMAT);
    ck_assert_msg(strstr(tensor_error(), "unknown key 'color'") != NULL, "%s", tensor_error());
    ck_assert_int_eq(config_from_json(&cfg, "{\"block_out_channels\":[32],\"norm_num_groups\":8,\"act_fn\":\"relu\"}"),
                     STATUS_VALUE);
    ck_assert_msg(strstr(tensor_error(), "relu") != NULL, "%s", tensor_error());
    ck_assert_int_eq(config_from_json(&cfg, "{\"block_out_channels\":[32],\"norm_num_groups\":8,"
                                            "\"down_block_types\":[\"AttnDownEncoderBlock2D\"]}"),
                     STATUS_VALUE);
    ck_assert_msg(strstr(tensor_error(), "AttnDownEncoderBlock2D") != NULL, "%s", tensor_error());
    ck_assert_int_eq(config_from_json(&cfg, "{\"block_out_channels\":[32,64],\"norm_num_groups\":8}"), STATUS_VALUE);
    ck_assert_int_eq(config_from_json(&cfg, "{\"block_out_channels\":[30],\"norm_num_groups\":8}"), STATUS_VALUE);
    ck_assert_msg(strstr(tensor_error(), "norm_num_groups") != NULL, "%s", tensor_error());
    ck_assert_int_eq(config_from_json(&cfg, "{\"layers_per_block\":\"two\"}"), STATUS_FORMAT);
    /* the defaults build (diffusers AutoencoderKL(): one block of 64 channels) */
    ck_assert_int_eq(config_from_json(&cfg, "{\"norm_num_groups\":32}"), STATUS_OK);
    ck_assert_int_eq(cfg.n_blocks, 1);
    ck_assert_int_eq(sd_vae_config_load(&cfg, "/nonexistent/vae/config.json"), STATUS_IO);
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    test_seed();
    Suite *s = suite_create("vae");
    TCase *tc = tcase_create("vae");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_gradcheck);
    tcase_add_test(tc, test_transpose_non_square);
    tcase_add_test(tc, test_gradcheck_encoder_params);
    tcase_add_test(tc, test_checkpoint_same_grads);
    tcase_add_test(tc, test_load_names);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_manifest);
    tcase_add_test(tc, test_parity_encode);
    tcase_add_test(tc, test_parity_decode);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
