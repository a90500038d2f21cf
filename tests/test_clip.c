/* test_clip.c — CLIPTextModel and CLIPVisionModelWithProjection: golden parity (forward and every
 * gradient), the real SD 1.4 / ViT-L/14 names, shapes and counts, gradient checks of small
 * towers, and errors. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "diffusion/clip.h"
#include "nn/file.h"
#include "nn/weights.h"
#include "tests/harness.h"
#include "tests/parity.h"

/* per test (Check may fork each test): reset at the start of a parity test. worst_rel is over
 * tensors whose bound is set by rtol (not by the noise floor of exactly-zero gradients, such as
 * the key-projection biases); worst_ratio = max err/bound over all */
static int n_parity_ok, n_parity_total, n_floor;
static double worst_rel, worst_ratio;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static bool parity_count(const char *label, const struct tensor *ours, const struct tensor *golden, double rtol, double S)
{
    bool ok = parity_check(label, ours, golden, rtol, S);
    n_parity_total++;
    n_parity_ok += ok;
    if (ours && golden) {
        double gn = 0;
        for (int64_t i = 0; i < tensor_numel(golden); i++) gn += tensor_get_flat(golden, i) * tensor_get_flat(golden, i);
        gn = sqrt(gn);
        double rel = test_rel_err(ours, golden), floor = 1e-6 * S * sqrt((double)tensor_numel(golden));
        double ratio = rel * gn / (rtol * gn + floor);
        if (ratio > worst_ratio) worst_ratio = ratio;
        if (rtol * gn >= floor) {
            if (rel > worst_rel) worst_rel = rel;
        } else {
            n_floor++;
        }
    }
    return ok;
}

#define PARITY_SUMMARY(what)                                                                                    \
    printf("parity summary %s: %d/%d ok, worst rel %.2e (%d tensors at the noise floor excluded), "           \
           "worst err/bound %.3f\n", what, n_parity_ok, n_parity_total, worst_rel, n_floor, worst_ratio)

/* compare every grad.<name> of the golden file with the gradient of parameter <name> (or of an
 * input given in `inputs`), and check that each parameter has a golden gradient when any does */
static void check_grads(const struct safetensors *gold, const struct nn_params *ps, int n_inputs,
                        const char *const *input_names, struct tensor *const *inputs)
{
    const double S = parity_rms(gold, "grad.");
    int n_param_grads = 0;
    for (int i = 0; i < gold->n; i++) {
        const char *key = gold->entries[i].name;
        if (strncmp(key, "grad.", 5)) continue;
        const char *name = key + 5;
        struct tensor *t = nn_param_find(ps, name);
        if (t) n_param_grads++;
        for (int j = 0; !t && j < n_inputs; j++)
            if (!strcmp(name, input_names[j])) t = inputs[j];
        ck_assert_msg(t != NULL, "golden %s names no parameter or input", key);
        ck_assert_msg(t->grad != NULL, "%s got no gradient", name);
        struct tensor *g = parity_load(gold, key);
        bool ok = parity_count(key, t->grad, g, PARITY_RTOL_GRAD, S);
        ck_assert_msg(ok, "gradient %s differs from the reference", name);
    }
    if (n_param_grads) ck_assert_int_eq(n_param_grads, ps->n);
}

/* ---------------------------------------------------------------- parity: text */

START_TEST(test_text_parity)
{
    char cfgp[512], wp[512], gp[512];
    if (!parity_path("tiny-sd/text_encoder/config.json", cfgp, sizeof cfgp) ||
        !parity_path("tiny-sd/text_encoder/model.safetensors", wp, sizeof wp) ||
        !parity_path("golden/text_encoder.safetensors", gp, sizeof gp))
        return;
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    n_parity_ok = n_parity_total = n_floor = 0, worst_rel = worst_ratio = 0;
    struct clip_text_config cfg;
    ck_assert_msg(clip_text_config_load(&cfg, cfgp) == STATUS_OK, "%s", tensor_error());
    ck_assert_int_eq(cfg.hidden_size, 32);
    /* quick GELU in SD 1.x's tiny encoder; exact GELU in an SD 2.x-shaped one (tests/reference/sd2_parity.py) */
    size_t len;
    char *text = nn_file_read(cfgp, 1 << 20, &len);
    ck_assert_ptr_nonnull(text);
    ck_assert_int_eq(cfg.hidden_act, strstr(text, "\"gelu\"") ? CLIP_ACT_GELU : CLIP_ACT_QUICK_GELU);
    free(text);
    struct nn_params ps;
    nn_params_init(&ps, DTYPE_F32, DEVICE_CPU);
    struct clip_text_model m;
    ck_assert_msg(clip_text_init(&m, &cfg, &ps, "") == STATUS_OK, "%s", tensor_error());
    struct nn_weights *w = nn_weights_open(wp);
    struct safetensors *gold = safetensors_open(gp);
    ck_assert_msg(w && gold, "%s", tensor_error());
    ck_assert_msg(clip_params_load(&ps, w, "") == STATUS_OK, "%s", tensor_error());
    nn_params_set_trainable(&ps, true);

    struct tensor *ids = safetensors_load(gold, "input_ids", DTYPE_I64, DEVICE_CPU);
    double t0 = now_s();
    struct tensor *out = clip_text_forward(&m, ids);
    ck_assert_msg(out != NULL, "%s", tensor_error());
    struct tensor *ref = parity_load(gold, "last_hidden_state");
    bool ok = parity_count("text_encoder.last_hidden_state", out, ref, PARITY_RTOL_FWD, parity_rms(gold, "last_hidden_state"));
    ck_assert(ok);
    struct tensor *loss = ag_sum(ag_mul(out, parity_load(gold, "loss_weights")), 0, NULL, false);
    ck_assert_int_eq(ag_backward(loss, NULL, false), STATUS_OK);
    printf("text_encoder tiny forward+backward: %.3f s\n", now_s() - t0);
    check_grads(gold, &ps, 0, NULL, NULL);
    PARITY_SUMMARY("text_encoder");

    /* the pooled output: the row at the eos token (argmax id for eos_token_id 2) */
    ag_no_grad_begin();
    struct tensor *pooled = clip_text_pooled(&m, ids, out);
    ag_no_grad_end();
    ck_assert_msg(pooled != NULL, "%s", tensor_error());
    ck_assert_int_eq(pooled->ndim, 2);
    for (int64_t b = 0; b < 2; b++) {
        int64_t at = 0;
        for (int64_t j = 1; j < 77; j++)
            if (tensor_get(ids, (int64_t[]){b, j}) > tensor_get(ids, (int64_t[]){b, at})) at = j;
        for (int64_t d = 0; d < 32; d++)
            ck_assert_double_eq(tensor_get(pooled, (int64_t[]){b, d}), tensor_get(out, (int64_t[]){b, at, d}));
    }
    nn_weights_close(w);
    safetensors_close(gold);
    clip_text_free(&m);
    nn_params_free(&ps);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- parity: vision */

START_TEST(test_vision_parity)
{
    char cfgp[512], wp[512], gp[512];
    if (!parity_path("tiny-sd/image_encoder/config.json", cfgp, sizeof cfgp) ||
        !parity_path("tiny-sd/image_encoder/model.safetensors", wp, sizeof wp) ||
        !parity_path("golden/image_encoder.safetensors", gp, sizeof gp))
        return;
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    n_parity_ok = n_parity_total = n_floor = 0, worst_rel = worst_ratio = 0;
    struct clip_vision_config cfg;
    ck_assert_msg(clip_vision_config_load(&cfg, cfgp) == STATUS_OK, "%s", tensor_error());
    struct nn_params ps;
    nn_params_init(&ps, DTYPE_F32, DEVICE_CPU);
    struct clip_vision_model m;
    ck_assert_msg(clip_vision_init(&m, &cfg, &ps, "") == STATUS_OK, "%s", tensor_error());
    struct nn_weights *w = nn_weights_open(wp);
    struct safetensors *gold = safetensors_open(gp);
    ck_assert_msg(w && gold, "%s", tensor_error());
    ck_assert_msg(clip_params_load(&ps, w, "") == STATUS_OK, "%s", tensor_error());
    nn_params_set_trainable(&ps, true);

    struct tensor *px = parity_load(gold, "pixel_values");
    ck_assert_int_eq(ag_set_requires_grad(px, true), STATUS_OK);
    double t0 = now_s();
    struct tensor *out = clip_vision_forward(&m, px);
    ck_assert_msg(out != NULL, "%s", tensor_error());
    struct tensor *ref = parity_load(gold, "image_embeds");
    bool ok = parity_count("image_encoder.image_embeds", out, ref, PARITY_RTOL_FWD, parity_rms(gold, "image_embeds"));
    ck_assert(ok);
    struct tensor *loss = ag_sum(ag_mul(out, parity_load(gold, "loss_weights")), 0, NULL, false);
    ck_assert_int_eq(ag_backward(loss, NULL, false), STATUS_OK);
    printf("image_encoder tiny forward+backward: %.3f s\n", now_s() - t0);
    check_grads(gold, &ps, 1, (const char *const[]){"pixel_values"}, &px);
    PARITY_SUMMARY("image_encoder");
    /* every parameter received a gradient even where the file lists none */
    for (int i = 0; i < ps.n; i++) ck_assert_msg(ps.v[i].t->grad != NULL, "%s got no gradient", ps.v[i].name);
    ag_zero_grad(px);
    for (int i = 0; i < ps.n; i++) ag_zero_grad(ps.v[i].t);
    nn_weights_close(w);
    safetensors_close(gold);
    clip_vision_free(&m);
    nn_params_free(&ps);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- manifest */

/* names and shapes of ps equal manifest["parameters"][component]; the count equals
 * manifest["parameter_counts"][component] */
static void check_manifest(const cJSON *man, const char *component, const struct nn_params *ps)
{
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(man, "parameters"), component);
    const cJSON *count = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(man, "parameter_counts"), component);
    ck_assert_msg(cJSON_IsObject(params) && cJSON_IsNumber(count), "manifest has no %s", component);
    int n_manifest = cJSON_GetArraySize(params);
    int mismatches = 0;
    for (const cJSON *e = params->child; e; e = e->next) {
        struct tensor *t = nn_param_find(ps, e->string);
        if (!t) {
            if (mismatches++ < 5) printf("manifest %s: missing parameter %s\n", component, e->string);
            continue;
        }
        bool same = cJSON_GetArraySize(e) == t->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = (int64_t)cJSON_GetArrayItem(e, d)->valuedouble == t->shape[d];
        if (!same && mismatches++ < 5) printf("manifest %s: shape of %s differs\n", component, e->string);
    }
    for (int i = 0; i < ps->n; i++)
        if (!cJSON_GetObjectItemCaseSensitive(params, ps->v[i].name) && mismatches++ < 5)
            printf("manifest %s: extra parameter %s\n", component, ps->v[i].name);
    printf("manifest %s: %d tensors (manifest %d), %lld parameters (manifest %.0f), %d mismatches\n", component, ps->n,
           n_manifest, (long long)nn_params_count(ps), count->valuedouble, mismatches);
    ck_assert_int_eq(mismatches, 0);
    ck_assert_int_eq(ps->n, n_manifest);
    ck_assert_int_eq(nn_params_count(ps), (int64_t)count->valuedouble);
}

static cJSON *manifest_load(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    cJSON *j = cJSON_ParseWithLength(buf, (size_t)n);
    free(buf);
    ck_assert_ptr_nonnull(j);
    return j;
}

START_TEST(test_manifest)
{
    char tp[512], vp[512], mp[512];
    if (!parity_path("sd14/text_encoder.config.json", tp, sizeof tp) ||
        !parity_path("sd14/image_encoder.config.json", vp, sizeof vp) ||
        !parity_path("sd14/sd14-manifest.json", mp, sizeof mp))
        return;
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    cJSON *man = manifest_load(mp);

    /* bf16 storage: half the memory of f32; the zero fill dominates the time */
    struct clip_text_config tc;
    ck_assert_msg(clip_text_config_load(&tc, tp) == STATUS_OK, "%s", tensor_error());
    ck_assert_int_eq(tc.hidden_size, 768);
    ck_assert_int_eq(tc.num_hidden_layers, 12);
    ck_assert_int_eq(tc.num_attention_heads, 12);
    struct nn_params ps;
    nn_params_init(&ps, DTYPE_BF16, DEVICE_CPU);
    struct clip_text_model tm;
    double t0 = now_s();
    ck_assert_msg(clip_text_init(&tm, &tc, &ps, "") == STATUS_OK, "%s", tensor_error());
    printf("text_encoder SD 1.4 build (bf16): %.2f s\n", now_s() - t0);
    check_manifest(man, "text_encoder", &ps);
    clip_text_free(&tm);
    nn_params_free(&ps);

    struct clip_vision_config vc;
    ck_assert_msg(clip_vision_config_load(&vc, vp) == STATUS_OK, "%s", tensor_error());
    ck_assert_int_eq(vc.hidden_size, 1024);
    ck_assert_int_eq(vc.patch_size, 14);
    ck_assert_int_eq(vc.projection_dim, 768);
    nn_params_init(&ps, DTYPE_BF16, DEVICE_CPU);
    struct clip_vision_model vm;
    t0 = now_s();
    ck_assert_msg(clip_vision_init(&vm, &vc, &ps, "") == STATUS_OK, "%s", tensor_error());
    printf("image_encoder ViT-L/14 build (bf16): %.2f s\n", now_s() - t0);
    check_manifest(man, "image_encoder", &ps);
    clip_vision_free(&vm);
    nn_params_free(&ps);

    cJSON_Delete(man);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* SD 2.1's text encoder (OpenCLIP ViT-H/14's text tower as a CLIPTextModel: 1024 wide, 23 of its 24
 * blocks, exact GELU) against the names and shapes transformers builds from the same config
 * (tests/reference/sd2_parity.py's sd21/; skipped elsewhere) */
START_TEST(test_manifest_sd21)
{
    char tp[512], mp[512];
    if (!parity_path("sd21/text_encoder.config.json", tp, sizeof tp) || !parity_path("sd21/sd21-manifest.json", mp, sizeof mp))
        return;
    LEAK_CHECK_BEGIN();
    cJSON *man = manifest_load(mp);
    struct clip_text_config tc;
    ck_assert_msg(clip_text_config_load(&tc, tp) == STATUS_OK, "%s", tensor_error());
    ck_assert_int_eq(tc.num_hidden_layers, 23);
    ck_assert_int_eq(tc.hidden_act, CLIP_ACT_GELU);
    struct nn_params ps;
    nn_params_init(&ps, DTYPE_BF16, DEVICE_CPU);
    struct clip_text_model tm;
    ck_assert_msg(clip_text_init(&tm, &tc, &ps, "") == STATUS_OK, "%s", tensor_error());
    check_manifest(man, "text_encoder", &ps);
    ck_assert_int_eq(nn_params_count(&ps), 340387840);
    clip_text_free(&tm);
    nn_params_free(&ps);
    cJSON_Delete(man);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- gradient checks (small, f64) */

/* The checker takes at most 16 inputs, so parameters are checked in groups: the model runs with
 * parameters idx[0..n) of ps replaced by in[] (and, for the vision tower, in[n] = pixels); the
 * other parameters are cast to the inputs' dtype so the checker's f32 pass works too. */
struct gc_clip_ctx {
    struct nn_params *ps;
    struct clip_text_model *text;
    struct clip_vision_model *vision;
    struct tensor *ids;
    int idx[16], n;
};

/* the tensor that replaces parameter t: a group input, or t cast to dt */
static struct tensor *gc_sub(const struct gc_clip_ctx *c, struct tensor *t, struct tensor *const *in, enum dtype dt)
{
    if (!t) return NULL;
    for (int j = 0; j < c->n; j++)
        if (c->ps->v[c->idx[j]].t == t) return in[j];
    return t->dtype == dt ? t : tensor_to_dtype(t, dt);
}

static void gc_sub_layer(const struct gc_clip_ctx *c, struct clip_encoder_layer *l, struct tensor *const *in, enum dtype dt)
{
    struct nn_linear *lin[6] = {&l->q_proj, &l->k_proj, &l->v_proj, &l->out_proj, &l->fc1, &l->fc2};
    for (int i = 0; i < 6; i++) lin[i]->weight = gc_sub(c, lin[i]->weight, in, dt), lin[i]->bias = gc_sub(c, lin[i]->bias, in, dt);
    struct nn_layer_norm *ln[2] = {&l->layer_norm1, &l->layer_norm2};
    for (int i = 0; i < 2; i++) ln[i]->weight = gc_sub(c, ln[i]->weight, in, dt), ln[i]->bias = gc_sub(c, ln[i]->bias, in, dt);
}

static struct tensor *gc_text_fn(struct tensor *const *in, void *vctx)
{
    struct gc_clip_ctx *c = vctx;
    const enum dtype dt = in[0]->dtype;
    tensor_scope_begin();
    struct clip_text_model m = *c->text;
    struct clip_encoder_layer layers[2] = {c->text->encoder.layers[0], c->text->encoder.layers[1]};
    m.encoder.layers = layers;
    m.token_embedding.weight = gc_sub(c, m.token_embedding.weight, in, dt);
    m.position_embedding.weight = gc_sub(c, m.position_embedding.weight, in, dt);
    m.final_layer_norm.weight = gc_sub(c, m.final_layer_norm.weight, in, dt);
    m.final_layer_norm.bias = gc_sub(c, m.final_layer_norm.bias, in, dt);
    for (int i = 0; i < 2; i++) gc_sub_layer(c, &layers[i], in, dt);
    return tensor_scope_return(clip_text_forward(&m, c->ids));
}

static struct tensor *gc_vision_fn(struct tensor *const *in, void *vctx)
{
    struct gc_clip_ctx *c = vctx;
    const enum dtype dt = in[0]->dtype;
    tensor_scope_begin();
    struct clip_vision_model m = *c->vision;
    struct clip_encoder_layer layers[1] = {c->vision->encoder.layers[0]};
    m.encoder.layers = layers;
    m.class_embedding = gc_sub(c, m.class_embedding, in, dt);
    m.patch_embedding.weight = gc_sub(c, m.patch_embedding.weight, in, dt);
    m.position_embedding.weight = gc_sub(c, m.position_embedding.weight, in, dt);
    m.pre_layrnorm.weight = gc_sub(c, m.pre_layrnorm.weight, in, dt);
    m.pre_layrnorm.bias = gc_sub(c, m.pre_layrnorm.bias, in, dt);
    m.post_layernorm.weight = gc_sub(c, m.post_layernorm.weight, in, dt);
    m.post_layernorm.bias = gc_sub(c, m.post_layernorm.bias, in, dt);
    m.visual_projection.weight = gc_sub(c, m.visual_projection.weight, in, dt);
    gc_sub_layer(c, &layers[0], in, dt);
    return tensor_scope_return(clip_vision_forward(&m, in[c->n]));
}

static void params_randomize(struct nn_params *ps)
{
    for (int i = 0; i < ps->n; i++) {
        struct tensor *t = ps->v[i].t;
        ck_assert_int_eq(tensor_copy_(t, test_uniform(t->dtype, t->ndim, t->shape, -0.8, 0.8)), STATUS_OK);
    }
}

static bool is_k_bias(const char *name)
{
    const char *sfx = "k_proj.bias";
    size_t n = strlen(name), k = strlen(sfx);
    return n >= k && !strcmp(name + n - k, sfx);
}

static void gradcheck_group(const char *label, gc_fn f, struct gc_clip_ctx *c, struct tensor *extra, double f32_tol)
{
    struct tensor *in[16];
    for (int j = 0; j < c->n; j++) in[j] = c->ps->v[c->idx[j]].t;
    if (extra) in[c->n] = extra;
    struct gc_opts o = {.tol = 1e-5, .f32_tol = f32_tol};
    ck_assert_msg(gradcheck(label, f, c, c->n + (extra != NULL), in, &o), "%s", label);
}

/* Every parameter of ps, in groups of 15 (+ `extra` as the last input when given). The key
 * biases get their own group without the f32 comparison: their gradient is zero in exact
 * arithmetic (a constant shift of the logits cancels in the softmax), so the f32 result is
 * pure rounding noise relative to zero; the f64 check still proves it is ~0. */
static void gradcheck_all(const char *what, gc_fn f, struct gc_clip_ctx *c, struct tensor *extra)
{
    const struct nn_params *ps = c->ps;
    char label[256];
    c->n = 0;
    for (int i = 0; i <= ps->n; i++) {
        if (c->n == 15 || (i == ps->n && c->n)) {
            const char *first = ps->v[c->idx[0]].name, *last = ps->v[c->idx[c->n - 1]].name;
            snprintf(label, sizeof label, "%s %s .. %s%s", what, strstr(first, "model.") ? strstr(first, "model.") + 6 : first,
                     strstr(last, "model.") ? strstr(last, "model.") + 6 : last, extra ? " + pixel_values" : "");
            gradcheck_group(label, f, c, extra, 0);
            c->n = 0;
        }
        if (i < ps->n && !is_k_bias(ps->v[i].name)) c->idx[c->n++] = i;
    }
    for (int i = 0; i < ps->n; i++)
        if (is_k_bias(ps->v[i].name)) c->idx[c->n++] = i;
    snprintf(label, sizeof label, "%s all k_proj.bias (zero gradient; f64 only)%s", what, extra ? " + pixel_values" : "");
    gradcheck_group(label, f, c, extra, -1);
}

static const char tiny_text_json[] =
    "{\"model_type\": \"clip_text_model\", \"vocab_size\": 11, \"hidden_size\": 8, \"intermediate_size\": 12,"
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"max_position_embeddings\": 6,"
    " \"hidden_act\": \"quick_gelu\", \"layer_norm_eps\": 1e-5}";
static const char tiny_vision_json[] =
    "{\"model_type\": \"clip_vision_model\", \"image_size\": 6, \"patch_size\": 3, \"num_channels\": 2,"
    " \"hidden_size\": 8, \"intermediate_size\": 12, \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
    " \"projection_dim\": 5, \"hidden_act\": \"gelu\", \"layer_norm_eps\": 1e-5}";

static enum status text_config_from(const char *json, struct clip_text_config *cfg)
{
    struct nn_config jc;
    enum status s = nn_config_parse(&jc, json, strlen(json), "cfg.json");
    if (!s) s = clip_text_config_read(cfg, &jc);
    nn_config_free(&jc);
    return s;
}

/* the config of tiny_text_json */
static void tiny_text_config(struct clip_text_config *cfg)
{
    ck_assert_msg(text_config_from(tiny_text_json, cfg) == STATUS_OK, "%s", tensor_error());
}

/* clip_text_hidden: hidden_states[k] of CLIPTextModel (what SDXL reads at k = n - 1) is the output
 * of a model cut to its first k layers, before the final LayerNorm; at k = n with that norm it is
 * clip_text_forward; its last_hidden_state is clip_text_forward's, from the same pass */
START_TEST(test_text_hidden)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct clip_text_config cfg;
    tiny_text_config(&cfg);
    ck_assert_int_eq(cfg.num_hidden_layers, 2);
    struct clip_text_config cut = cfg;
    cut.num_hidden_layers = 1;
    struct nn_params ps, pc;
    nn_params_init(&ps, DTYPE_F64, DEVICE_CPU);
    nn_params_init(&pc, DTYPE_F64, DEVICE_CPU);
    struct clip_text_model m, mc;
    ck_assert_int_eq(clip_text_init(&m, &cfg, &ps, ""), STATUS_OK);
    ck_assert_int_eq(clip_text_init(&mc, &cut, &pc, ""), STATUS_OK);
    params_randomize(&ps);
    for (int i = 0; i < pc.n; i++) ck_assert_int_eq(tensor_copy_(pc.v[i].t, nn_param_find(&ps, pc.v[i].name)), STATUS_OK);
    /* the cut model's output before its final norm: clip_text_hidden at its full depth */
    int32_t idv[2 * 5] = {3, 1, 4, 1, 10, 0, 9, 2, 6, 5};
    struct tensor *ids = tensor_from_data(DTYPE_I32, TENSOR_SHAPE(2, 5), idv);
    struct tensor *last = NULL;
    struct tensor *h1 = clip_text_hidden(&m, ids, 1, &last), *h1c = clip_text_hidden(&mc, ids, 1, NULL);
    struct tensor *full = clip_text_forward(&m, ids), *h2 = clip_text_hidden(&m, ids, 2, NULL);
    ck_assert(h1 && h1c && last && full && h2);
    ck_assert_double_eq(test_max_abs_diff(h1, h1c), 0);
    ck_assert_double_eq(test_max_abs_diff(last, full), 0);
    ck_assert_double_eq(test_max_abs_diff(nn_layer_norm_forward(&m.final_layer_norm, h2), full), 0);
    ck_assert(test_max_abs_diff(h1, h2) > 1e-3);   /* one layer more is another tensor */
    struct tensor *h0 = clip_text_hidden(&m, ids, 0, NULL);   /* hidden_states[0]: the embeddings */
    ck_assert_ptr_nonnull(h0);
    ck_assert_double_le(fabs(tensor_get_flat(h0, 0) - (tensor_get_flat(m.token_embedding.weight, 3 * 8) +
                                                       tensor_get_flat(m.position_embedding.weight, 0))), 1e-15);
    ck_assert_ptr_null(clip_text_hidden(&m, ids, 3, NULL));
    ck_assert_msg(strstr(tensor_error(), "3 layers of a 2-layer encoder"), "%s", tensor_error());
    clip_text_free(&m);
    clip_text_free(&mc);
    nn_params_free(&ps);
    nn_params_free(&pc);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_gradcheck_text)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct clip_text_config cfg;
    tiny_text_config(&cfg);
    struct nn_params ps;
    nn_params_init(&ps, DTYPE_F64, DEVICE_CPU);
    struct clip_text_model m;
    ck_assert_int_eq(clip_text_init(&m, &cfg, &ps, "cond"), STATUS_OK);
    ck_assert_str_eq(ps.v[0].name, "cond.text_model.embeddings.token_embedding.weight");
    params_randomize(&ps);
    /* 5 of 6 positions (the table is narrowed), a repeated id, the highest id */
    int32_t idv[2 * 5] = {3, 1, 4, 1, 10, 0, 9, 2, 6, 5};
    struct gc_clip_ctx ctx = {&ps, &m, NULL, tensor_from_data(DTYPE_I32, TENSOR_SHAPE(2, 5), idv), {0}, 0};
    gradcheck_all("clip_text[B=2,L=5,D=8,H=2,layers=2,quick_gelu,causal]", gc_text_fn, &ctx, NULL);
    clip_text_free(&m);
    nn_params_free(&ps);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_gradcheck_vision)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct nn_config jc;
    ck_assert_int_eq(nn_config_parse(&jc, tiny_vision_json, strlen(tiny_vision_json), "tiny_vision.json"), STATUS_OK);
    struct clip_vision_config cfg;
    ck_assert_msg(clip_vision_config_read(&cfg, &jc) == STATUS_OK, "%s", tensor_error());
    nn_config_free(&jc);
    struct nn_params ps;
    nn_params_init(&ps, DTYPE_F64, DEVICE_CPU);
    struct clip_vision_model m;
    ck_assert_int_eq(clip_vision_init(&m, &cfg, &ps, ""), STATUS_OK);
    params_randomize(&ps);
    struct gc_clip_ctx ctx = {&ps, NULL, &m, NULL, {0}, 0};
    gradcheck_all("clip_vision[B=2,C=2,image=6,patch=3,D=8,H=2,gelu]", gc_vision_fn, &ctx,
                     test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 2, 6, 6), -1, 1));
    clip_vision_free(&m);
    nn_params_free(&ps);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* the pooled output picks the eos row: argmax id for the legacy eos_token_id 2, else the first eos */
START_TEST(test_pooled)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct clip_text_model m = {0};
    m.cfg.eos_token_id = 2;
    int32_t idv[2 * 4] = {0, 9, 7, 7, 7, 3, 7, 1};
    struct tensor *ids = tensor_from_data(DTYPE_I32, TENSOR_SHAPE(2, 4), idv);
    struct tensor *h = test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 4, 3), -1, 1);
    struct tensor *p = clip_text_pooled(&m, ids, h);
    ck_assert_msg(p != NULL, "%s", tensor_error());
    for (int d = 0; d < 3; d++) {
        ck_assert_double_eq(tensor_get(p, (int64_t[]){0, d}), tensor_get(h, (int64_t[]){0, 1, d}));   /* id 9 */
        ck_assert_double_eq(tensor_get(p, (int64_t[]){1, d}), tensor_get(h, (int64_t[]){1, 0, d}));   /* first 7 */
    }
    m.cfg.eos_token_id = 7;
    p = clip_text_pooled(&m, ids, h);
    for (int d = 0; d < 3; d++) {
        ck_assert_double_eq(tensor_get(p, (int64_t[]){0, d}), tensor_get(h, (int64_t[]){0, 2, d}));
        ck_assert_double_eq(tensor_get(p, (int64_t[]){1, d}), tensor_get(h, (int64_t[]){1, 0, d}));
    }
    /* gradients flow to the picked rows only */
    struct tensor *hl = ag_detach(h);
    ag_set_requires_grad(hl, true);
    ck_assert_int_eq(ag_backward(ag_sum(clip_text_pooled(&m, ids, hl), 0, NULL, false), NULL, false), STATUS_OK);
    ck_assert_double_eq(tensor_get(hl->grad, (int64_t[]){0, 2, 1}), 1.0);
    ck_assert_double_eq(tensor_get(hl->grad, (int64_t[]){0, 3, 1}), 0.0);
    ck_assert_double_eq(tensor_get(hl->grad, (int64_t[]){1, 0, 2}), 1.0);
    ag_zero_grad(hl);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- errors */

START_TEST(test_errors)
{
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct clip_text_config tc;
    struct clip_vision_config vc;
    /* configs */
    ck_assert_int_eq(text_config_from("{\"hidden_size\": 8, \"hiden_layers\": 2}", &tc), STATUS_FORMAT);
    ck_assert_msg(strstr(tensor_error(), "hiden_layers"), "%s", tensor_error());
    ck_assert_int_eq(text_config_from("{\"hidden_act\": \"relu\"}", &tc), STATUS_FORMAT);
    ck_assert_msg(strstr(tensor_error(), "relu"), "%s", tensor_error());
    ck_assert_int_eq(text_config_from("{\"model_type\": \"clip_vision_model\"}", &tc), STATUS_FORMAT);
    ck_assert_int_eq(text_config_from("{\"hidden_size\": 10, \"num_attention_heads\": 4}", &tc), STATUS_FORMAT);
    ck_assert_int_eq(text_config_from("{\"hidden_size\": \"big\"}", &tc), STATUS_FORMAT);
    ck_assert_int_eq(clip_vision_config_load(&vc, "/nonexistent/config.json"), STATUS_IO);
    {
        static const char bad[] = "{\"image_size\": 10, \"patch_size\": 3}";
        struct nn_config jc;
        ck_assert_int_eq(nn_config_parse(&jc, bad, strlen(bad), "v.json"), STATUS_OK);
        ck_assert_int_eq(clip_vision_config_read(&vc, &jc), STATUS_FORMAT);
        nn_config_free(&jc);
    }

    /* inputs */
    ck_assert_int_eq(text_config_from(tiny_text_json, &tc), STATUS_OK);
    struct nn_params ps;
    nn_params_init(&ps, DTYPE_F32, DEVICE_CPU);
    struct clip_text_model m;
    ck_assert_int_eq(clip_text_init(&m, &tc, &ps, ""), STATUS_OK);
    ck_assert_ptr_null(clip_text_forward(&m, tensor_zeros(DTYPE_I32, TENSOR_SHAPE(5), DEVICE_CPU)));
    ck_assert_msg(strstr(tensor_error(), "clip_text_forward"), "%s", tensor_error());
    ck_assert_ptr_null(clip_text_forward(&m, tensor_zeros(DTYPE_I32, TENSOR_SHAPE(1, 7), DEVICE_CPU)));   /* > 6 positions */
    ck_assert_ptr_null(clip_text_forward(&m, tensor_zeros(DTYPE_F32, TENSOR_SHAPE(1, 4), DEVICE_CPU)));
    ck_assert_ptr_null(clip_text_forward(&m, tensor_full(DTYPE_I32, TENSOR_SHAPE(1, 4), 11, DEVICE_CPU)));   /* id out of range */
    ck_assert_ptr_null(clip_text_forward(&m, NULL));
    ck_assert_ptr_null(clip_text_pooled(&m, tensor_zeros(DTYPE_I32, TENSOR_SHAPE(1, 4), DEVICE_CPU),
                                        tensor_zeros(DTYPE_F32, TENSOR_SHAPE(1, 5, 8), DEVICE_CPU)));
    /* the same parameter twice is refused */
    struct clip_text_model dup;
    ck_assert_int_ne(clip_text_init(&dup, &tc, &ps, ""), STATUS_OK);
    clip_text_free(&dup);
    clip_text_free(&m);
    nn_params_free(&ps);

    static const char vjson[] = "{\"image_size\": 6, \"patch_size\": 3, \"hidden_size\": 8, \"intermediate_size\": 12,"
                                " \"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"projection_dim\": 5}";
    struct nn_config jc;
    ck_assert_int_eq(nn_config_parse(&jc, vjson, strlen(vjson), "v.json"), STATUS_OK);
    ck_assert_int_eq(clip_vision_config_read(&vc, &jc), STATUS_OK);
    nn_config_free(&jc);
    nn_params_init(&ps, DTYPE_F32, DEVICE_CPU);
    struct clip_vision_model vm;
    ck_assert_int_eq(clip_vision_init(&vm, &vc, &ps, ""), STATUS_OK);
    ck_assert_ptr_null(clip_vision_forward(&vm, tensor_zeros(DTYPE_F32, TENSOR_SHAPE(1, 3, 7, 7), DEVICE_CPU)));
    ck_assert_msg(strstr(tensor_error(), "[B, 3, 6, 6]"), "%s", tensor_error());
    ck_assert_ptr_null(clip_vision_forward(&vm, tensor_zeros(DTYPE_F32, TENSOR_SHAPE(1, 1, 6, 6), DEVICE_CPU)));
    ck_assert_ptr_null(clip_vision_forward(&vm, tensor_zeros(DTYPE_F32, TENSOR_SHAPE(3, 6, 6), DEVICE_CPU)));
    ck_assert_ptr_nonnull(clip_vision_forward(&vm, tensor_zeros(DTYPE_F32, TENSOR_SHAPE(2, 3, 6, 6), DEVICE_CPU)));

    /* weight files: a position_ids buffer is accepted when it is 0..n-1; a wrong one, an
     * unknown tensor and a missing tensor are errors */
    char dir[] = "/tmp/draft-test-clip-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[600];
    snprintf(path, sizeof path, "%s/w.safetensors", dir);
    const char *names[64];
    struct tensor *ts[64];
    ck_assert_int_lt(ps.n, 60);
    for (int i = 0; i < ps.n; i++) names[i] = ps.v[i].name, ts[i] = ps.v[i].t;
    int64_t pos[5] = {0, 1, 2, 3, 4};
    names[ps.n] = "vision_model.embeddings.position_ids";
    ts[ps.n] = tensor_from_data(DTYPE_I64, TENSOR_SHAPE(1, 5), pos);
    struct nn_weights *st;
    ck_assert_int_eq(safetensors_save(path, ps.n + 1, names, ts, 0, NULL, NULL), STATUS_OK);
    ck_assert_ptr_nonnull(st = nn_weights_open(path));
    ck_assert_msg(clip_params_load(&ps, st, "") == STATUS_OK, "%s", tensor_error());
    nn_weights_close(st);
    pos[3] = 7;
    ts[ps.n] = tensor_from_data(DTYPE_I64, TENSOR_SHAPE(1, 5), pos);
    ck_assert_int_eq(safetensors_save(path, ps.n + 1, names, ts, 0, NULL, NULL), STATUS_OK);
    ck_assert_ptr_nonnull(st = nn_weights_open(path));
    ck_assert_int_eq(clip_params_load(&ps, st, ""), STATUS_FORMAT);
    ck_assert_msg(strstr(tensor_error(), "position_ids"), "%s", tensor_error());
    nn_weights_close(st);
    names[ps.n] = "vision_model.extra.weight";
    ck_assert_int_eq(safetensors_save(path, ps.n + 1, names, ts, 0, NULL, NULL), STATUS_OK);
    ck_assert_ptr_nonnull(st = nn_weights_open(path));
    ck_assert_int_eq(clip_params_load(&ps, st, ""), STATUS_FORMAT);
    ck_assert_msg(strstr(tensor_error(), "vision_model.extra.weight"), "%s", tensor_error());
    nn_weights_close(st);
    ck_assert_int_eq(safetensors_save(path, ps.n - 1, names, ts, 0, NULL, NULL), STATUS_OK);   /* lacks the last */
    ck_assert_ptr_nonnull(st = nn_weights_open(path));
    ck_assert_int_ne(clip_params_load(&ps, st, ""), STATUS_OK);
    ck_assert_msg(strstr(tensor_error(), ps.v[ps.n - 1].name), "%s", tensor_error());
    nn_weights_close(st);
    unlink(path);
    rmdir(dir);

    clip_vision_free(&vm);
    nn_params_free(&ps);
    tensor_scope_end();
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("clip");
    TCase *tc = tcase_create("clip");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_pooled);
    tcase_add_test(tc, test_gradcheck_text);
    tcase_add_test(tc, test_text_hidden);
    tcase_add_test(tc, test_gradcheck_vision);
    tcase_add_test(tc, test_text_parity);
    tcase_add_test(tc, test_vision_parity);
    tcase_add_test(tc, test_manifest);
    tcase_add_test(tc, test_manifest_sd21);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
