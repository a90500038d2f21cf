/* test_unet.c — UNet2DConditionModel: golden parity against diffusers (forward and the
 * gradient of every parameter and input), the real SD 1.4 manifest (names, shapes, count,
 * build time and peak memory), a float64 gradient check of a micro UNet that needs no
 * parity data, the timestep features against a float64 formula, and error handling. */
#include "tests/harness.h"
#include "tests/parity.h"
#include "tests/micro_unet.h"
#include "diffusion/unet.h"
#include "nn/file.h"
#include "tensor/alloc.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------- parity */

/* which kind of tensor a golden key is, for the per-kind worst relative error */
static const char *kind_of(const char *key)
{
    if (!strcmp(key, "grad.sample") || !strcmp(key, "grad.encoder_hidden_states")) return "input";
    if (strstr(key, ".to_q.") || strstr(key, ".to_k.") || strstr(key, ".to_v.") || strstr(key, ".to_out.0.")) return "attn_proj";
    if (strstr(key, ".ff.net.")) return "geglu_ff";
    if (strstr(key, "transformer_blocks") && strstr(key, ".norm")) return "layer_norm";
    if (strstr(key, ".proj_in.") || strstr(key, ".proj_out.")) return "proj_in_out";
    if (strstr(key, "norm")) return "group_norm";
    if (strstr(key, "time_emb") || strstr(key, "add_embedding") || !strcmp(key, "grad.text_embeds")) return "time_emb";
    if (strstr(key, "samplers.")) return "resample_conv";
    return "conv";
}

#define N_KINDS 9
static const char *const kinds[N_KINDS] = {"input",       "attn_proj",  "geglu_ff", "layer_norm",   "proj_in_out",
                                           "group_norm", "time_emb",   "resample_conv", "conv"};

START_TEST(test_parity)
{
    char cfgp[512], wp[512], gp[512];
    if (!parity_path("tiny-sd/unet/config.json", cfgp, sizeof cfgp) ||
        !parity_path("tiny-sd/unet/diffusion_pytorch_model.safetensors", wp, sizeof wp) ||
        !parity_path("golden/unet.safetensors", gp, sizeof gp))
        return;
    enum device dev;   /* DRAFT_TEST_DEVICE=cuda: on the GPU (scripts/gpu-check.sh) */
    if (!parity_device(&dev)) return;
    LEAK_CHECK_BEGIN();
    struct nn_params ps;
    struct sd_unet u;
    nn_params_init(&ps, DTYPE_F32, dev);
    ck_assert_msg(sd_unet_init_file(&u, cfgp, &ps) == STATUS_OK, "%s", tensor_error());
    struct safetensors *w = safetensors_open(wp), *gold = safetensors_open(gp);
    ck_assert_msg(w && gold, "%s", tensor_error());
    ck_assert_msg(nn_params_load(&ps, w, "", false) == STATUS_OK, "%s", tensor_error());
    nn_params_set_trainable(&ps, true);
    if (u.n_blocks == 4)   /* SD 1.x/2.x's structure (an SDXL-shaped tiny UNet has another) */
        ck_assert_int_eq(u.n_projs, 4 * 2 * (2 * 3 + 3 * 3 + 1));   /* q,k,v,out x attn1/2 x 16 transformers */

    tensor_scope_begin();
    struct tensor *sample = parity_load_on(gold, "sample", dev), *ehs = parity_load_on(gold, "encoder_hidden_states", dev);
    struct tensor *t = safetensors_load(gold, "timestep", DTYPE_I64, DEVICE_CPU);
    ck_assert_ptr_nonnull(t);
    ag_set_requires_grad(sample, true);
    ag_set_requires_grad(ehs, true);
    /* SDXL's added conditioning, when the golden file has it (tests/reference/sdxl_parity.py) */
    const bool has_added = safetensors_find(gold, "text_embeds") != NULL;
    struct sd_unet_added added = {0};
    if (has_added) {
        ck_assert(u.add_time_dim > 0);
        added.text_embeds = parity_load_on(gold, "text_embeds", dev);
        added.time_ids = safetensors_load(gold, "time_ids", DTYPE_F32, DEVICE_CPU);
        ck_assert_ptr_nonnull(added.time_ids);
        ag_set_requires_grad(added.text_embeds, true);
    }
    double t0 = now_s();
    struct tensor *out = sd_unet_forward_added(&u, sample, t, ehs, has_added ? &added : NULL);
    ck_assert_msg(out != NULL, "%s", tensor_error());
    double t1 = now_s();
    int n_ok = 0, n_total = 0;
    double worst[N_KINDS] = {0};
    struct tensor *ref = parity_load(gold, "out");
    n_ok += parity_check("unet.out", out, ref, PARITY_RTOL_FWD, parity_rms(gold, "out"));
    n_total++;
    double fwd_rel = test_rel_err(out, ref);

    struct tensor *loss = ag_sum(ag_mul(out, parity_load_on(gold, "loss_weights", dev)), 0, NULL, false);
    ck_assert_msg(ag_backward(loss, NULL, false) == STATUS_OK, "%s", tensor_error());
    double t2 = now_s();
    const double S = parity_rms(gold, "grad.");
    int n_grads = 0;
    for (int i = 0; i < gold->n; i++) {
        const char *key = gold->entries[i].name;
        if (strncmp(key, "grad.", 5)) continue;
        n_grads++;
        const char *name = key + 5;
        struct tensor *x = !strcmp(name, "sample")                  ? sample
                           : !strcmp(name, "encoder_hidden_states") ? ehs
                           : !strcmp(name, "text_embeds")           ? added.text_embeds
                                                                    : nn_param_find(&ps, name);
        ck_assert_msg(x != NULL, "golden gradient %s has no tensor in the model", key);
        struct tensor *g = parity_load(gold, key);
        bool ok = parity_check(key, x->grad, g, PARITY_RTOL_GRAD, S);
        n_ok += ok;
        n_total++;
        const char *k = kind_of(key);
        for (int j = 0; j < N_KINDS; j++)
            if (!strcmp(k, kinds[j]) && x->grad) worst[j] = fmax(worst[j], test_rel_err(x->grad, g));
    }
    /* every parameter (and each float input) has a golden gradient */
    ck_assert_int_eq(n_grads, ps.n + 2 + has_added);
    printf("parity summary unet on %s: %d/%d ok (forward rel %.2e; %d params + %d inputs); forward %.2fs, backward %.2fs\n",
           device_name(dev), n_ok, n_total, fwd_rel, ps.n, 2 + has_added, t1 - t0, t2 - t1);
    printf("parity unet worst gradient rel by kind:");
    for (int j = 0; j < N_KINDS; j++) printf(" %s=%.2e", kinds[j], worst[j]);
    printf("\n");
    ck_assert_int_eq(n_ok, n_total);
    tensor_scope_end();

    safetensors_close(w);
    safetensors_close(gold);
    sd_unet_free(&u);
    nn_params_free(&ps);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- manifest */

/* build from the real config in dt; compare with the manifest; print time and peak memory */
/* the model of config cfgp against a manifest's names, shapes and count; the text width its
 * cross-attention reads, and the LoRA parameters per rank that follow (SD14.md 2.7) */
struct manifest_want {
    const char *file;
    long long count;
    int64_t text_dim, lora_per_rank;
    int n_projs;
    const char *first_proj;
};

static void build_and_check_manifest(const char *cfgp, const cJSON *names, const struct manifest_want *want, enum dtype dt)
{
    const long long want_count = want->count;
    struct nn_params ps;
    struct sd_unet u;
    char b1[32], b2[32];
    mem_empty_cache(DEVICE_CPU);
    mem_reset_peak(DEVICE_CPU);
    struct mem_stats m0, m1;
    mem_get_stats(DEVICE_CPU, &m0);
    double t0 = now_s();
    nn_params_init(&ps, dt, DEVICE_CPU);
    ck_assert_msg(sd_unet_init_file(&u, cfgp, &ps) == STATUS_OK, "%s", tensor_error());
    double t1 = now_s();
    mem_get_stats(DEVICE_CPU, &m1);
    const int64_t count = nn_params_count(&ps);
    int n_match = 0, in_order = 0, idx = 0;
    for (const cJSON *e = names->child; e; e = e->next, idx++) {
        struct tensor *t = nn_param_find(&ps, e->string);
        ck_assert_msg(t != NULL, "manifest parameter %s is missing from the model", e->string);
        int nd = cJSON_GetArraySize(e);
        ck_assert_msg(nd == t->ndim, "%s: ndim %d, manifest %d", e->string, t->ndim, nd);
        for (int d = 0; d < nd; d++)
            ck_assert_msg(t->shape[d] == (int64_t)cJSON_GetArrayItem(e, d)->valuedouble, "%s: dim %d is %lld", e->string, d,
                          (long long)t->shape[d]);
        n_match++;
        in_order += idx < ps.n && !strcmp(ps.v[idx].name, e->string);
    }
    ck_assert_int_eq(n_match, ps.n);   /* and nothing extra */
    ck_assert_int_eq(count, want_count);
    printf("manifest unet %s: %d tensors, %lld parameters match %s (%d in the same order); "
           "build %.2fs, peak memory %s (live %s)\n",
           dtype_name(dt), ps.n, (long long)count, want->file, in_order, t1 - t0,
           mem_format(m1.peak_bytes - m0.live_bytes, b1, sizeof b1), mem_format(m1.live_bytes - m0.live_bytes, b2, sizeof b2));
    /* the LoRA targets: transformer blocks x (attn1, attn2) x (to_q, to_k, to_v, to_out.0), 16 blocks in SD 1.x
     * and 2.x, 70 in SDXL; a rank-r adapter on them has r * sum(in + out) parameters: 199,296 r in SD 1.x
     * (SD14.md 2.7), 207,488 r in SD 2.x, whose cross-attention reads 1024-d text, 1,451,520 r in SDXL */
    ck_assert_int_eq(u.n_projs, want->n_projs);
    int64_t lora_per_rank = 0;
    for (int i = 0; i < u.n_projs; i++) lora_per_rank += u.projs[i]->in_features + u.projs[i]->out_features;
    ck_assert_int_eq(lora_per_rank, want->lora_per_rank);
    ck_assert_str_eq(u.projs[0]->name, want->first_proj);
    ck_assert_int_eq(u.projs[5]->in_features, want->text_dim);   /* attn2.to_k reads the text */
    sd_unet_free(&u);
    nn_params_free(&ps);
    mem_empty_cache(DEVICE_CPU);
}

START_TEST(test_manifest)
{
    char cfgp[512], mp[512];
    if (!parity_path("sd14/unet.config.json", cfgp, sizeof cfgp) || !parity_path("sd14/sd14-manifest.json", mp, sizeof mp))
        return;
    LEAK_CHECK_BEGIN();
    FILE *f = fopen(mp, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(fread(buf, 1, (size_t)n, f), n);
    fclose(f);
    cJSON *man = cJSON_ParseWithLength(buf, (size_t)n);
    free(buf);
    ck_assert_ptr_nonnull(man);
    const cJSON *names = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(man, "parameters"), "unet");
    const cJSON *cnt = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(man, "parameter_counts"), "unet");
    ck_assert(cJSON_IsObject(names) && cJSON_IsNumber(cnt));
    ck_assert_int_eq(cJSON_GetArraySize(names), 686);
    ck_assert_int_eq((long long)cnt->valuedouble, 859520964LL);
    const struct manifest_want want = {"sd14-manifest.json", 859520964LL, 768, 199296, 128,
                                       "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"};
    build_and_check_manifest(cfgp, names, &want, DTYPE_BF16);
    /* the float32 build needs 3.4 GB: only on request */
    const char *e = getenv("UNET_MANIFEST_F32");
    if (e && *e && strcmp(e, "0")) build_and_check_manifest(cfgp, names, &want, DTYPE_F32);
    else printf("manifest unet f32: skipped (set UNET_MANIFEST_F32=1 to also build the 3.4 GB float32 UNet)\n");
    cJSON_Delete(man);
    LEAK_CHECK_END();
}
END_TEST

/* a manifest folder written by tests/reference/ (sd21/, sdxl/): the real UNet's config and every
 * parameter name and shape diffusers builds from it; skipped unless DRAFT_PARITY_DIR points there */
static void check_reference_manifest(const char *folder, const char *file, int n_tensors,
                                     const struct manifest_want *want)
{
    char rel[128], cfgp[512], mp[512];
    snprintf(rel, sizeof rel, "%s/unet.config.json", folder);
    if (!parity_path(rel, cfgp, sizeof cfgp)) return;
    snprintf(rel, sizeof rel, "%s/%s", folder, file);
    if (!parity_path(rel, mp, sizeof mp)) return;
    size_t n;
    char *text = nn_file_read(mp, (size_t)1 << 26, &n);
    ck_assert_ptr_nonnull(text);
    cJSON *man = cJSON_ParseWithLength(text, n);
    free(text);
    const cJSON *names = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(man, "parameters"), "unet");
    const cJSON *cnt = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(man, "parameter_counts"), "unet");
    ck_assert(cJSON_IsObject(names) && cJSON_IsNumber(cnt));
    ck_assert_int_eq(cJSON_GetArraySize(names), n_tensors);
    ck_assert_int_eq((long long)cnt->valuedouble, want->count);
    build_and_check_manifest(cfgp, names, want, DTYPE_BF16);
    cJSON_Delete(man);
}

/* SD 2.1's UNet (stabilityai/stable-diffusion-2-1: Linear projections, 5/10/20/20 heads of 64,
 * 1024-d text; tests/reference/sd2_parity.py). 865,910,724 is the public parameter count of
 * SD 2.x's UNet. */
START_TEST(test_manifest_sd21)
{
    LEAK_CHECK_BEGIN();
    const struct manifest_want want = {"sd21-manifest.json", 865910724LL, 1024, 207488, 128,
                                       "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"};
    check_reference_manifest("sd21", want.file, 686, &want);
    LEAK_CHECK_END();
}
END_TEST

/* SDXL base's UNet (stabilityai/stable-diffusion-xl-base-1.0: no attention in the first level,
 * 1/2/10 transformer blocks, 2048-d text, the "text_time" added embedding;
 * tests/reference/sdxl_parity.py): 2,567,463,684 parameters, its public count */
START_TEST(test_manifest_sdxl)
{
    LEAK_CHECK_BEGIN();
    const struct manifest_want want = {"sdxl-manifest.json", 2567463684LL, 2048, 1451520, 560,
                                       "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"};
    check_reference_manifest("sdxl", want.file, 1680, &want);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- micro UNet gradcheck (no parity data) */

/* Two cross-attention levels and a plain one, 2 heads, every code path of the SD 1 layout */
static const char micro_json[] =
    "{\"_class_name\": \"UNet2DConditionModel\", \"in_channels\": 3, \"out_channels\": 2,"
    " \"block_out_channels\": [8, 12], \"down_block_types\": [\"CrossAttnDownBlock2D\", \"DownBlock2D\"],"
    " \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\"], \"layers_per_block\": 1, \"norm_num_groups\": 4,"
    " \"attention_head_dim\": 2, \"cross_attention_dim\": 6, \"sample_size\": 4}";
/* the variants: downsample_padding 0 (asymmetric pad), centred input, 2 transformer blocks, scaled outputs,
 * a time embedding of its own size, flip_sin_to_cos false with a frequency shift */
static const char micro2_json[] =
    "{\"in_channels\": 2, \"out_channels\": 2, \"block_out_channels\": [4, 8],"
    " \"down_block_types\": [\"DownBlock2D\", \"CrossAttnDownBlock2D\"], \"up_block_types\": [\"CrossAttnUpBlock2D\","
    " \"UpBlock2D\"], \"layers_per_block\": [1, 2], \"norm_num_groups\": 2, \"attention_head_dim\": [1, 2],"
    " \"cross_attention_dim\": 4, \"downsample_padding\": 0, \"center_input_sample\": true,"
    " \"transformer_layers_per_block\": 2, \"mid_block_scale_factor\": 1.5, \"resnet_out_scale_factor\": 2.0,"
    " \"time_embedding_dim\": 6, \"flip_sin_to_cos\": false, \"freq_shift\": 1}";

/* SD 2.x's layout: the transformers' proj_in/proj_out as Linear layers over the tokens, a head count per
 * block; and the same with conv1x1 projections */
#define MICRO_HEADS_JSON(linear)                                                                                     \
    "{\"_class_name\": \"UNet2DConditionModel\", \"in_channels\": 3, \"out_channels\": 2,"                          \
    " \"block_out_channels\": [8, 12], \"down_block_types\": [\"CrossAttnDownBlock2D\", \"DownBlock2D\"],"          \
    " \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\"], \"layers_per_block\": 1, \"norm_num_groups\": 4," \
    " \"attention_head_dim\": [2, 3], \"cross_attention_dim\": 6, \"sample_size\": 4, \"use_linear_projection\": " linear "}"
static const char micro_linear_json[] = MICRO_HEADS_JSON("true"), micro_heads_conv_json[] = MICRO_HEADS_JSON("false");

/* SDXL's layout: a plain first level, 1/2 transformer blocks, Linear projections and the "text_time"
 * added embedding: 5-wide pooled text + 6 ids x 4 features = 29 */
#define MICRO_XL_JSON(added)                                                                                            \
    "{\"in_channels\": 3, \"out_channels\": 2, \"block_out_channels\": [8, 12], \"down_block_types\": [\"DownBlock2D\","  \
    " \"CrossAttnDownBlock2D\"], \"up_block_types\": [\"CrossAttnUpBlock2D\", \"UpBlock2D\"], \"layers_per_block\": 1,"    \
    " \"norm_num_groups\": 4, \"attention_head_dim\": [2, 3], \"cross_attention_dim\": 6,"                                \
    " \"transformer_layers_per_block\": [1, 2], \"use_linear_projection\": true" added "}"
static const char micro_xl_json[] = MICRO_XL_JSON(", \"addition_embed_type\": \"text_time\", \"addition_time_embed_dim\": 4,"
                                                  " \"projection_class_embeddings_input_dim\": 29"),
                  micro_xl_plain_json[] = MICRO_XL_JSON("");

struct micro {
    struct nn_params ps64, ps32;
    struct sd_unet u64, u32;
    struct tensor *t, *time_ids;   /* timesteps; SDXL's time ids */
};

static void micro_build(struct micro *m, const char *json)
{
    test_micro_unet_build(json, &m->ps64, &m->ps32, &m->u64, &m->u32);
}

static void micro_free(struct micro *m) { test_micro_unet_free(&m->ps64, &m->ps32, &m->u64, &m->u32); }

static struct tensor *gc_unet_fn(struct tensor *const *in, void *vctx)
{
    struct micro *m = vctx;
    return sd_unet_forward(in[0]->dtype == DTYPE_F32 ? &m->u32 : &m->u64, in[0], m->t, in[1]);
}

/* SDXL's: in[2] is text_embeds, the time ids are the context's */
static struct tensor *gc_unet_added_fn(struct tensor *const *in, void *vctx)
{
    struct micro *m = vctx;
    const struct sd_unet_added a = {in[2], m->time_ids};
    return sd_unet_forward_added(in[0]->dtype == DTYPE_F32 ? &m->u32 : &m->u64, in[0], m->t, in[1], &a);
}

/* SDXL's added embedding: a gradient check into the pooled text as well; and, against float64 loops,
 * the UNet of each batch row equals the same UNet without the added embedding whose
 * time_embedding.linear_2.bias is moved by that row's add_embedding([text_embeds, features of
 * the six ids]) (the features from sd_timestep_features, which test_timestep_features checks):
 * the order of the concatenation, the ids' layout and the sum into the time embedding */
START_TEST(test_added_embedding)
{
    LEAK_CHECK_BEGIN();
    struct micro m;
    micro_build(&m, micro_xl_json);
    ck_assert_int_eq(m.u64.add_time_dim, 4);
    tensor_scope_begin();
    const int64_t B = 2;
    m.t = tensor_from_data(DTYPE_I64, TENSOR_SHAPE(B), (int64_t[]){981, 17});
    m.time_ids = tensor_from_data(DTYPE_F64, TENSOR_SHAPE(B, 6), (double[]){1024, 1024, 0, 0, 1024, 1024, 512, 768, 16, 32,
                                                                              1024, 1024});
    struct tensor *in[3] = {
        test_uniform(DTYPE_F64, TENSOR_SHAPE(B, 3, 4, 4), -1, 1),
        test_uniform(DTYPE_F64, TENSOR_SHAPE(B, 3, 6), -1, 1),
        test_noncontig(test_uniform(DTYPE_F64, TENSOR_SHAPE(B, 5), -1, 1)),
    };
    struct gc_opts o = {.tol = 1e-5, .f32_tol = 2e-4};
    ck_assert(gradcheck("unet[SDXL layout,text_time,B=2,4x4,S=3,text 5]", gc_unet_added_fn, &m, 3, in, &o));

    const struct sd_unet_added added = {in[2], m.time_ids};
    struct tensor *y = sd_unet_forward_added(&m.u64, in[0], m.t, in[1], &added);
    ck_assert_msg(y != NULL, "%s", tensor_error());
    /* the twin without the added embedding, every other weight the same */
    struct nn_config c;
    struct nn_params ps;
    struct sd_unet twin;
    nn_params_init(&ps, DTYPE_F64, DEVICE_CPU);
    ck_assert_int_eq(nn_config_parse(&c, micro_xl_plain_json, strlen(micro_xl_plain_json), "micro"), STATUS_OK);
    ck_assert_msg(sd_unet_init(&twin, &c, &ps) == STATUS_OK, "%s", tensor_error());
    nn_config_free(&c);
    ck_assert_int_eq(ps.n, m.ps64.n - 4);
    for (int i = 0; i < ps.n; i++)
        ck_assert_int_eq(tensor_copy_(ps.v[i].t, nn_param_find(&m.ps64, ps.v[i].name)), STATUS_OK);
    struct tensor *bias = nn_param_find(&ps, "time_embedding.linear_2.bias");
    const struct tensor *w1 = m.u64.add_linear_1.weight, *b1 = m.u64.add_linear_1.bias;
    const struct tensor *w2 = m.u64.add_linear_2.weight, *b2 = m.u64.add_linear_2.bias;
    const int64_t T = bias->shape[0], IN = 29;
    struct tensor *bias0 = tensor_contiguous(tensor_clone(bias));
    struct tensor *feats = sd_timestep_features(tensor_reshape(m.time_ids, 1, (int64_t[]){B * 6}), 4, true, 0);
    ck_assert_ptr_nonnull(feats);
    double worst = 0;
    for (int64_t b = 0; b < B; b++) {
        double x[29], h[64];
        for (int k = 0; k < 5; k++) x[k] = tensor_get_flat(in[2], b * 5 + k);   /* the text first, then id by id */
        for (int k = 0; k < 24; k++) x[5 + k] = tensor_get_flat(feats, b * 24 + k);
        for (int64_t r = 0; r < T; r++) {
            double a = tensor_get_flat(b1, r);
            for (int k = 0; k < IN; k++) a += tensor_get_flat(w1, r * IN + k) * x[k];
            h[r] = a / (1 + exp(-a));
        }
        for (int64_t r = 0; r < T; r++) {
            double a = tensor_get_flat(b2, r);
            for (int64_t k = 0; k < T; k++) a += tensor_get_flat(w2, r * T + k) * h[k];
            tensor_set_flat(bias, r, tensor_get_flat(bias0, r) + a);
        }
        struct tensor *row = tensor_contiguous(tensor_narrow(in[0], 0, b, 1));
        struct tensor *ctx = tensor_contiguous(tensor_narrow(in[1], 0, b, 1));
        struct tensor *tb = tensor_from_data(DTYPE_I64, TENSOR_SHAPE(1), (int64_t[]){b ? 17 : 981});
        struct tensor *yt = sd_unet_forward(&twin, row, tb, ctx);
        ck_assert_msg(yt != NULL, "%s", tensor_error());
        worst = fmax(worst, test_rel_err(yt, tensor_narrow(y, 0, b, 1)));
    }
    printf("unet text_time: the added embedding = a moved time bias, per row: rel %.2e\n", worst);
    ck_assert_msg(worst <= 1e-12, "rel %g", worst);
    /* what a text_time UNet needs, and shapes that do not add up */
    ck_assert_ptr_null(sd_unet_forward(&m.u64, in[0], m.t, in[1]));
    ck_assert_msg(strstr(tensor_error(), "needs text_embeds and time_ids"), "%s", tensor_error());
    const struct sd_unet_added bad = {in[2], tensor_zeros(DTYPE_F64, TENSOR_SHAPE(B, 5), DEVICE_CPU)};
    ck_assert_ptr_null(sd_unet_forward_added(&m.u64, in[0], m.t, in[1], &bad));
    ck_assert_msg(strstr(tensor_error(), "D + K x 4 = 29"), "%s", tensor_error());
    tensor_scope_end();
    sd_unet_free(&twin);
    nn_params_free(&ps);
    micro_free(&m);
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_gradcheck_micro)
{
    LEAK_CHECK_BEGIN();
    static const struct { const char *label, *json; int64_t B, C, H, W, S, D; } cases[] = {
        {"unet[micro,2 levels,heads=2,B=2,4x4,S=3]", micro_json, 2, 3, 4, 4, 3, 6},
        {"unet[pad=0,centre,2 transformer layers,scaled,temb=6,no flip,shift=1,B=1,4x4,S=2]", micro2_json, 1, 2, 4, 4, 2, 4},
        {"unet[micro,non-square 2x6,B=1,S=2]", micro_json, 1, 3, 2, 6, 2, 6},
        {"unet[micro,linear projections (SD 2.x),heads=2/3,B=2,4x4,S=3]", micro_linear_json, 2, 3, 4, 4, 3, 6},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct micro m;
        micro_build(&m, cases[c].json);
        tensor_scope_begin();
        m.t = tensor_from_data(DTYPE_I64, TENSOR_SHAPE(cases[c].B), (int64_t[]){981, 17});
        struct tensor *in[2] = {
            test_uniform(DTYPE_F64, TENSOR_SHAPE(cases[c].B, cases[c].C, cases[c].H, cases[c].W), -1, 1),
            test_noncontig(test_uniform(DTYPE_F64, TENSOR_SHAPE(cases[c].B, cases[c].S, cases[c].D), -1, 1)),
        };
        struct gc_opts o = {.tol = 1e-5, .f32_tol = 2e-4};
        ck_assert(gradcheck(cases[c].label, gc_unet_fn, &m, 2, in, &o));
        tensor_scope_end();
        micro_free(&m);
    }
    LEAK_CHECK_END();
}
END_TEST

/* use_linear_projection (SD 2.x) against conv1x1 (SD 1.x): a 1x1 convolution before going to tokens
 * [B, HW, C] is the Linear layer after it, so the same weights (a [C, C, 1, 1] kernel as a [C, C]
 * matrix) give the same UNet, forward and every gradient. A projection left out, applied twice or
 * swapped with the other breaks it. (Against diffusers on an SD 2.x-shaped model with its own
 * weights: tests/reference/sd2_parity.py, docs/models.md.) */
START_TEST(test_linear_projection)
{
    LEAK_CHECK_BEGIN();
    struct nn_config c;
    struct nn_params ps[2];
    struct sd_unet u[2];
    const char *const js[2] = {micro_heads_conv_json, micro_linear_json};
    for (int k = 0; k < 2; k++) {
        nn_params_init(&ps[k], DTYPE_F64, DEVICE_CPU);
        ck_assert_int_eq(nn_config_parse(&c, js[k], strlen(js[k]), "micro"), STATUS_OK);
        ck_assert_msg(sd_unet_init(&u[k], &c, &ps[k]) == STATUS_OK, "%s", tensor_error());
        nn_config_free(&c);
    }
    ck_assert(!u[0].linear_projection && u[1].linear_projection);
    ck_assert_int_eq(u[1].sample_size, 4);   /* the pipeline's default size, 4 latents */
    ck_assert_int_eq(ps[0].n, ps[1].n);
    tensor_scope_begin();
    int n_proj = 0;
    for (int i = 0; i < ps[0].n; i++) {
        struct tensor *a = ps[0].v[i].t, *b = ps[1].v[i].t;
        ck_assert_str_eq(ps[0].v[i].name, ps[1].v[i].name);
        const bool proj = strstr(ps[0].v[i].name, ".proj_in.weight") || strstr(ps[0].v[i].name, ".proj_out.weight");
        if (proj) {
            ck_assert_int_eq(a->ndim, 4);
            ck_assert_int_eq(b->ndim, 2);
            n_proj++;
        }
        struct tensor *r = test_uniform(DTYPE_F64, a->ndim, a->shape, -0.4, 0.4);
        ck_assert_int_eq(tensor_copy_(a, r), STATUS_OK);
        ck_assert_int_eq(tensor_copy_(b, proj ? tensor_reshape(r, b->ndim, b->shape) : r), STATUS_OK);
    }
    ck_assert_int_eq(n_proj, 2 * 4);   /* 4 transformers: 1 down, 1 mid, 2 up */
    nn_params_set_trainable(&ps[0], true);
    nn_params_set_trainable(&ps[1], true);
    struct tensor *t = tensor_from_data(DTYPE_I64, TENSOR_SHAPE(2), (int64_t[]){981, 17});
    struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3, 4, 8), -1, 1);
    struct tensor *ehs = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3, 6), -1, 1);
    struct tensor *R = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 2, 4, 8), -1, 1);
    struct tensor *y[2];
    for (int k = 0; k < 2; k++) {
        y[k] = sd_unet_forward(&u[k], x, t, ehs);
        ck_assert_msg(y[k] != NULL, "%s", tensor_error());
        ck_assert_int_eq(ag_backward(ag_sum(ag_mul(y[k], R), 0, NULL, false), NULL, false), STATUS_OK);
    }
    const double ey = test_rel_err(y[1], y[0]);
    double eg = 0;
    for (int i = 0; i < ps[0].n; i++) {
        const struct tensor *ga = ps[0].v[i].t->grad, *gb = ps[1].v[i].t->grad;
        ck_assert_msg(ga && gb, "%s: no gradient", ps[0].v[i].name);
        eg = fmax(eg, test_rel_err(gb, tensor_reshape((struct tensor *)ga, gb->ndim, gb->shape)));
    }
    printf("unet linear projections against conv1x1: %d projections, forward rel %.2e, worst gradient rel %.2e\n", n_proj,
           ey, eg);
    ck_assert_msg(ey <= 1e-13 && eg <= 1e-12, "forward rel %g, gradient rel %g", ey, eg);
    tensor_scope_end();
    for (int k = 0; k < 2; k++) {
        sd_unet_free(&u[k]);
        nn_params_free(&ps[k]);
    }
    LEAK_CHECK_END();
}
END_TEST

/* Non-square inputs. The UNet has no positional encoding: each layer is a convolution (padded
 * alike on both axes), a norm or an attention over all positions, or works per position. So
 * transposing H and W of the input and of every convolution kernel transposes the output, up to
 * rounding. With a non-square input (4x8 against 8x4) a mix-up of H and W anywhere (a reshape
 * into tokens and back, an upsample's target, a skip connection) breaks it. (Against diffusers at
 * 8x16 on the tiny parity model, forward and every gradient: docs/models.md.) */
START_TEST(test_transpose_non_square)
{
    LEAK_CHECK_BEGIN();
    static const struct { const char *json; int64_t B, C, H, W, S, D; } cases[] = {
        {micro_json, 2, 3, 4, 8, 3, 6},
        {micro2_json, 1, 2, 8, 4, 2, 4},   /* downsample_padding 0: padded after, on both axes */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct micro m;
        micro_build(&m, cases[c].json);
        tensor_scope_begin();
        m.t = tensor_from_data(DTYPE_I64, TENSOR_SHAPE(cases[c].B), (int64_t[]){981, 17});
        struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(cases[c].B, cases[c].C, cases[c].H, cases[c].W), -1, 1);
        struct tensor *ehs = test_uniform(DTYPE_F64, TENSOR_SHAPE(cases[c].B, cases[c].S, cases[c].D), -1, 1);
        struct tensor *y = sd_unet_forward(&m.u64, x, m.t, ehs);
        ck_assert_msg(y != NULL, "%s", tensor_error());
        ck_assert_int_eq(y->shape[2], cases[c].H);
        ck_assert_int_eq(y->shape[3], cases[c].W);
        /* the same input transposed, through the unchanged kernels: a different function (the
         * check below can fail) */
        struct tensor *xt = tensor_contiguous(tensor_transpose(x, 2, 3));
        struct tensor *yt_plain = sd_unet_forward(&m.u64, xt, m.t, ehs);
        ck_assert_msg(yt_plain != NULL, "%s", tensor_error());
        const double e_plain = test_rel_err(yt_plain, tensor_transpose(y, 2, 3));
        int n_kernels = 0;
        for (int i = 0; i < m.ps64.n; i++) {
            struct tensor *w = m.ps64.v[i].t;
            if (w->ndim != 4 || w->shape[2] == 1) continue;
            ck_assert_int_eq(w->shape[2], w->shape[3]);
            ck_assert_int_eq(tensor_copy_(w, tensor_contiguous(tensor_transpose(w, 2, 3))), STATUS_OK);
            n_kernels++;
        }
        struct tensor *yt = sd_unet_forward(&m.u64, xt, m.t, ehs);
        ck_assert_msg(yt != NULL, "%s", tensor_error());
        const double e = test_rel_err(yt, tensor_transpose(y, 2, 3));
        printf("unet transpose %lldx%lld -> %lldx%lld: %d kernels transposed, rel err %.2e (kernels as they were: %.2e)\n",
               (long long)cases[c].H, (long long)cases[c].W, (long long)cases[c].W, (long long)cases[c].H, n_kernels, e,
               e_plain);
        ck_assert_msg(e <= 1e-12, "the UNet of the transposed input and kernels is not the transposed output: rel %g", e);
        ck_assert(e_plain > 1e-3);
        tensor_scope_end();
        micro_free(&m);
    }
    LEAK_CHECK_END();
}
END_TEST

/* u->checkpoint (each resnet and transformer recomputed in the backward) gives the same outputs
 * (bit for bit: the same kernels in the same order) and gradients, of both inputs and of every
 * parameter (to f64 rounding: a tensor read by a checkpoint and by other ops sums its gradient
 * contributions in another order), and keeps less alive */
START_TEST(test_checkpoint_units)
{
    LEAK_CHECK_BEGIN();
    struct micro m;
    micro_build(&m, micro_json);
    nn_params_set_trainable(&m.ps64, true);
    tensor_scope_begin();
    m.t = tensor_from_data(DTYPE_I64, TENSOR_SHAPE(2), (int64_t[]){981, 17});
    struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3, 8, 16), -1, 1);
    struct tensor *ehs = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3, 6), -1, 1);
    struct tensor *r = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 2, 8, 16), -1, 1);
    const int np = m.ps64.n;
    struct tensor **grads[2];
    struct tensor *y[2];
    int64_t act[2];
    for (int k = 0; k < 2; k++) {
        m.u64.checkpoint = k;
        grads[k] = calloc((size_t)np + 2, sizeof *grads[k]);
        ck_assert_ptr_nonnull(grads[k]);
        struct tensor *xk = tensor_contiguous(ag_detach(x)), *ek = tensor_contiguous(ag_detach(ehs));
        ck_assert(!ag_set_requires_grad(xk, true) && !ag_set_requires_grad(ek, true));
        struct mem_stats s0, s1;
        mem_get_stats(DEVICE_CPU, &s0);
        mem_reset_peak(DEVICE_CPU);
        tensor_scope_begin();
        struct tensor *out = sd_unet_forward(&m.u64, xk, m.t, ek);
        ck_assert_msg(out != NULL, "%s", tensor_error());
        y[k] = tensor_keep(out);
        ck_assert_int_eq(ag_backward(ag_sum(ag_mul(out, r), 0, NULL, false), NULL, false), STATUS_OK);
        tensor_scope_end();
        mem_get_stats(DEVICE_CPU, &s1);
        act[k] = s1.peak_bytes - s0.live_bytes;
        grads[k][0] = tensor_ref(xk->grad);
        grads[k][1] = tensor_ref(ek->grad);
        for (int i = 0; i < np; i++) {
            grads[k][2 + i] = tensor_ref(m.ps64.v[i].t->grad);
            ag_zero_grad(m.ps64.v[i].t);
        }
    }
    ck_assert_double_eq(test_rel_err(y[1], y[0]), 0.0);
    double worst = 0;
    for (int i = 0; i < np + 2; i++) {
        const char *name = i == 0 ? "sample" : i == 1 ? "encoder_hidden_states" : m.ps64.v[i - 2].name;
        ck_assert_msg(grads[0][i] && grads[1][i], "%s: no gradient", name);
        const double e = test_rel_err(grads[1][i], grads[0][i]);
        worst = fmax(worst, e);
        ck_assert_msg(e <= 1e-13, "%s: the checkpointed gradient differs (rel %g)", name, e);
    }
    printf("unet checkpoint units: %d gradients, worst rel %.2e; peak above the inputs %lld -> %lld bytes\n", np + 2,
           worst, (long long)act[0], (long long)act[1]);
    ck_assert_int_lt(act[1], act[0]);
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < np + 2; i++) tensor_free(grads[k][i]);
        free(grads[k]);
        tensor_free(y[k]);
    }
    tensor_scope_end();
    micro_free(&m);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- timestep features */

START_TEST(test_timestep_features)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    const double ts[4] = {981, 1, 500, 0};
    struct tensor *t = tensor_from_data(DTYPE_F64, TENSOR_SHAPE(4), ts);
    for (int flip = 0; flip < 2; flip++) {
        const int64_t dim = flip ? 320 : 33;   /* an odd dim is zero-padded */
        const double shift = flip ? 0 : 1;
        struct tensor *f = sd_timestep_features(t, dim, flip, shift);
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(f->shape[1], dim);
        const int64_t half = dim / 2;
        double maxd = 0;
        for (int b = 0; b < 4; b++)
            for (int64_t i = 0; i < half; i++) {
                const double a = ts[b] * exp(-log(10000.0) * (double)i / ((double)half - shift));
                const double first = flip ? cos(a) : sin(a), second = flip ? sin(a) : cos(a);
                maxd = fmax(maxd, fabs(tensor_get_flat(f, b * dim + i) - first));
                maxd = fmax(maxd, fabs(tensor_get_flat(f, b * dim + half + i) - second));
                if (dim % 2) ck_assert_double_eq(tensor_get_flat(f, b * dim + dim - 1), 0.0);
            }
        /* float32 arithmetic: |arg| <= 981, one ulp of the argument is 6e-5 */
        printf("timestep features dim=%lld flip=%d: max |f32 - f64 formula| = %.2e\n", (long long)dim, flip, maxd);
        ck_assert(maxd < 5e-4);
    }
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- errors */

static enum status init_json(struct sd_unet *u, struct nn_params *ps, const char *json)
{
    struct nn_config c;
    enum status s = nn_config_parse(&c, json, strlen(json), "test-config");
    if (s) return s;
    s = sd_unet_init(u, &c, ps);
    nn_config_free(&c);
    return s;
}

START_TEST(test_errors)
{
    LEAK_CHECK_BEGIN();
    /* configs this UNet must refuse, with the key in the message */
    static const struct { const char *json, *needle; } bad[] = {
        {"{\"block_out_channels\": [8, 8], \"down_block_types\": [\"DownBlock2D\", \"DownBlock2D\"],"
         " \"up_block_types\": [\"UpBlock2D\", \"UpBlock2D\"], \"norm_num_groups\": 4, \"flavour\": 1}", "flavour"},
        {"{\"use_linear_projection\": 1}", "use_linear_projection"},
        {"{\"down_block_types\": [\"SimpleCrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\","
         " \"DownBlock2D\"]}", "SimpleCrossAttnDownBlock2D"},
        {"{\"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"AttnUpBlock2D\", \"CrossAttnUpBlock2D\"]}",
         "AttnUpBlock2D"},
        {"{\"mid_block_type\": \"UNetMidBlock2DSimpleCrossAttn\"}", "mid_block_type"},
        {"{\"class_embed_type\": \"timestep\"}", "class_embed_type"},
        {"{\"num_attention_heads\": 8}", "num_attention_heads"},
        {"{\"addition_embed_type\": \"text_time\"}", "addition_embed_type"},
        {"{\"addition_embed_type\": \"text\", \"encoder_hid_dim\": 8}", "addition_embed_type 'text' is not supported"},
        {"{\"act_fn\": \"gelu\"}", "act_fn"},
        {"{\"time_embedding_type\": \"fourier\"}", "time_embedding_type"},
        {"{\"resnet_time_scale_shift\": \"scale_shift\"}", "resnet_time_scale_shift"},
        {"{\"only_cross_attention\": [true, false, false, false]}", "only_cross_attention"},
        {"{\"dropout\": 0.1}", "dropout"},
        {"{\"block_out_channels\": [320, 640]}", "same length"},
        {"{\"layers_per_block\": [2, 2]}", "layers_per_block"},
        {"{\"block_out_channels\": [30, 60, 120, 120], \"norm_num_groups\": 4}", "attention heads"},
        {"{\"in_channels\": \"four\"}", "in_channels"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct nn_params ps;
        struct sd_unet u;
        nn_params_init(&ps, DTYPE_BF16, DEVICE_CPU);
        enum status s = init_json(&u, &ps, bad[i].json);
        ck_assert_msg(s != STATUS_OK, "config accepted: %s", bad[i].json);
        ck_assert_msg(strstr(tensor_error(), bad[i].needle) != NULL, "message '%s' does not name '%s'", tensor_error(),
                      bad[i].needle);
        printf("rejected config (%s): %s\n", bad[i].needle, tensor_error());
        sd_unet_free(&u);
        nn_params_free(&ps);
    }

    /* bad inputs to the forward */
    struct micro m;
    micro_build(&m, micro_json);
    tensor_scope_begin();
    struct tensor *t2 = tensor_from_data(DTYPE_I64, TENSOR_SHAPE(2), (int64_t[]){10, 20});
    struct tensor *x = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 3, 4, 4), -1, 1);
    struct tensor *ctx = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 5, 6), -1, 1);
    ck_assert_ptr_nonnull(sd_unet_forward(&m.u64, x, t2, ctx));
    struct tensor *t1 = tensor_from_data(DTYPE_F32, TENSOR_SHAPE(1), (float[]){10});
    struct tensor *y1 = sd_unet_forward(&m.u64, x, t1, ctx);   /* one timestep for the batch */
    struct tensor *t22 = tensor_from_data(DTYPE_F32, TENSOR_SHAPE(2), (float[]){10, 10});
    ck_assert(test_rel_err(y1, sd_unet_forward(&m.u64, x, t22, ctx)) == 0);
    static const struct { int64_t shape[4]; int ndim; const char *needle; } bad_x[] = {
        {{2, 4, 4, 4}, 4, "sample"}, {{2, 3, 5, 4}, 4, "multiples of 2"}, {{3, 4, 4}, 3, "sample"},
    };
    for (size_t i = 0; i < sizeof bad_x / sizeof bad_x[0]; i++) {
        struct tensor *bx = tensor_zeros(DTYPE_F64, bad_x[i].ndim, bad_x[i].shape, DEVICE_CPU);
        ck_assert_ptr_null(sd_unet_forward(&m.u64, bx, t2, ctx));
        ck_assert_msg(strstr(tensor_error(), bad_x[i].needle) != NULL, "%s", tensor_error());
        printf("rejected input: %s\n", tensor_error());
    }
    ck_assert_ptr_null(sd_unet_forward(&m.u64, x, t2, tensor_zeros(DTYPE_F64, TENSOR_SHAPE(2, 5, 7), DEVICE_CPU)));
    ck_assert(strstr(tensor_error(), "encoder_hidden_states") != NULL);
    ck_assert_ptr_null(sd_unet_forward(&m.u64, x, t2, tensor_zeros(DTYPE_F64, TENSOR_SHAPE(1, 5, 6), DEVICE_CPU)));
    ck_assert(strstr(tensor_error(), "encoder_hidden_states") != NULL);
    ck_assert_ptr_null(sd_unet_forward(&m.u64, x, tensor_zeros(DTYPE_I64, TENSOR_SHAPE(3), DEVICE_CPU), ctx));
    ck_assert(strstr(tensor_error(), "timesteps") != NULL);
    ck_assert_ptr_null(sd_unet_forward(&m.u64, tensor_to_dtype(x, DTYPE_F32), t2, ctx));
    ck_assert(strstr(tensor_error(), "parameters") != NULL);
    printf("rejected input: %s\n", tensor_error());
    ck_assert_ptr_null(sd_unet_forward(&m.u64, NULL, t2, ctx));
    tensor_scope_end();

    /* a weights file missing one tensor */
    char path[] = "/tmp/test_unet_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    const char **names = malloc((size_t)m.ps32.n * sizeof *names);
    struct tensor **ts = malloc((size_t)m.ps32.n * sizeof *ts);
    int n = 0;
    for (int i = 0; i < m.ps32.n; i++)
        if (strcmp(m.ps32.v[i].name, "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight")) {
            names[n] = m.ps32.v[i].name;
            ts[n++] = m.ps32.v[i].t;
        }
    ck_assert_int_eq(n, m.ps32.n - 1);
    ck_assert_int_eq(safetensors_save(path, n, names, ts, 0, NULL, NULL), STATUS_OK);
    free(names);
    free(ts);
    struct safetensors *st = safetensors_open(path);
    ck_assert_ptr_nonnull(st);
    ck_assert_int_ne(nn_params_load(&m.ps64, st, "", false), STATUS_OK);
    ck_assert_msg(strstr(tensor_error(), "attn2.to_v.weight") != NULL, "%s", tensor_error());
    printf("rejected weights: %s\n", tensor_error());
    safetensors_close(st);
    unlink(path);
    micro_free(&m);
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("unet");
    TCase *tc = tcase_create("unet");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_timestep_features);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_gradcheck_micro);
    tcase_add_test(tc, test_added_embedding);
    tcase_add_test(tc, test_transpose_non_square);
    tcase_add_test(tc, test_linear_projection);
    tcase_add_test(tc, test_checkpoint_units);
    tcase_add_test(tc, test_manifest);
    tcase_add_test(tc, test_manifest_sd21);
    tcase_add_test(tc, test_manifest_sdxl);
    suite_add_tcase(s, tc);
    TCase *tp = tcase_create("parity");   /* alone: CK_RUN_CASE=parity (gpu-check runs it on cuda) */
    tcase_set_timeout(tp, 600);
    tcase_add_test(tp, test_parity);
    suite_add_tcase(s, tp);
    return test_run_suite(s);
}
