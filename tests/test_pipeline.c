/* test_pipeline.c — the diffusers pipeline folder loader and the whole text-to-image path
 * (tokenize, encode [uncond; cond], 4 guided DDIM steps, VAE decode) against
 * golden/pipeline.safetensors, plus folder errors a user can act on. */
#include "tests/harness.h"
#include "tests/parity.h"
#include "diffusion/pipeline.h"
#include "diffusion/ldm.h"
#include "tests/torch_save.h"
#include "nn/weights.h"
#include "nn/file.h"
#include "nn/safetensors.h"

#include <cjson/cJSON.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <limits.h>

START_TEST(test_parity)
{
    char dir[512], gp[512];
    if (!parity_path("tiny-sd/model_index.json", dir, sizeof dir) ||
        !parity_path("golden/pipeline.safetensors", gp, sizeof gp))
        return;
    *strrchr(dir, '/') = 0;
    LEAK_CHECK_BEGIN();
    struct sd_pipeline p;
    ck_assert_msg(sd_pipeline_load(&p, dir, DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
    struct safetensors *gold = safetensors_open(gp);
    ck_assert_msg(gold != NULL, "%s", tensor_error());
    tensor_scope_begin();

    /* the empty prompt through our tokenizer is the unconditional ids of the reference */
    const char *empty[2] = {"", ""};
    struct tensor *uids = sd_pipeline_tokenize(&p, 2, empty);
    struct tensor *gu = safetensors_load(gold, "uncond_input_ids", DTYPE_I32, DEVICE_CPU);
    ck_assert_ptr_nonnull(uids);
    ck_assert_ptr_nonnull(gu);
    ck_assert_int_eq(memcmp(tensor_data_ptr(uids), tensor_data_ptr(gu), 2 * 77 * sizeof(int32_t)), 0);

    struct tensor *cids = safetensors_load(gold, "input_ids", DTYPE_I32, DEVICE_CPU);
    struct tensor *ctx = sd_pipeline_context(&p, gu, cids);
    ck_assert_msg(ctx != NULL, "%s", tensor_error());
    struct sd_sample_opts o = {.steps = 4, .guidance = 7.5, .eta = 0.0};
    struct tensor *after[4] = {0};
    struct tensor *img = sd_pipeline_sample(&p, parity_load(gold, "init_latents"), ctx, &o, after);
    ck_assert_msg(img != NULL, "%s", tensor_error());

    struct tensor *ts = safetensors_load(gold, "timesteps", DTYPE_I64, DEVICE_CPU);
    ck_assert_int_eq(p.scheduler.num_inference_steps, 4);
    for (int i = 0; i < 4; i++) ck_assert_int_eq(p.scheduler.timesteps[i], ((int64_t *)tensor_data_ptr(ts))[i]);
    int ok = 0;
    for (int i = 0; i < 4; i++) {
        char key[64];
        snprintf(key, sizeof key, "latents_after_step%d", i);
        ok += parity_check(key, after[i], parity_load(gold, key), PARITY_RTOL_FWD, parity_rms(gold, key));
        tensor_free(after[i]);
    }
    ok += parity_check("image", img, parity_load(gold, "image"), PARITY_RTOL_FWD, parity_rms(gold, "image"));
    ck_assert_int_eq(ok, 5);
    /* diffusers' encode_prompt with clip_skip=1, where the golden file has it (tests/reference/) */
    if (safetensors_find(gold, "prompt_embeds_clip_skip1")) {
        ck_assert_int_eq(sd_pipeline_set_clip_skip(&p, 1), STATUS_OK);
        struct tensor *e = sd_pipeline_encode(&p, cids);
        ck_assert_msg(e != NULL, "%s", tensor_error());
        struct tensor *tok = p.xl ? ag_narrow(e, 1, 0, p.text_rows) : e;
        ck_assert(parity_check("prompt_embeds_clip_skip1", tok, parity_load(gold, "prompt_embeds_clip_skip1"), PARITY_RTOL_FWD,
                               parity_rms(gold, "prompt_embeds_clip_skip1")));
        if (p.xl) {
            struct tensor *pooled = ag_narrow(ag_reshape(ag_narrow(e, 1, p.text_rows, 1), TENSOR_SHAPE(2, e->shape[2])), 1, 0,
                                              p.pooled_dim);
            ck_assert(parity_check("pooled_prompt_embeds_clip_skip1", pooled,
                                   parity_load(gold, "pooled_prompt_embeds_clip_skip1"), PARITY_RTOL_FWD,
                                   parity_rms(gold, "pooled_prompt_embeds_clip_skip1")));
        }
        ck_assert_int_eq(sd_pipeline_set_clip_skip(&p, 0), STATUS_OK);
    }
    tensor_scope_end();
    safetensors_close(gold);
    sd_pipeline_free(&p);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- folder errors */

static char tmpdir[256];

/* rel under dir: text, or (NULL) no file */
static void write_in(const char *dir, const char *rel, const char *text)
{
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    if (!text) {
        unlink(path);
        return;
    }
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static void write_file(const char *rel, const char *text) { write_in(tmpdir, rel, text); }

static void expect_error(const char *what, const char *needle)
{
    struct sd_pipeline p;
    enum status s = sd_pipeline_load(&p, tmpdir, DTYPE_F32, DEVICE_CPU);
    ck_assert_msg(s != STATUS_OK, "%s: loaded", what);
    ck_assert_msg(strstr(tensor_error(), needle) != NULL, "%s: message '%s' lacks '%s'", what, tensor_error(), needle);
    sd_pipeline_free(&p);
}

START_TEST(test_folder_errors)
{
    LEAK_CHECK_BEGIN();
    snprintf(tmpdir, sizeof tmpdir, "/tmp/draft_pipeline_%d", (int)getpid());
    ck_assert_int_eq(mkdir(tmpdir, 0700), 0);
    expect_error("no model_index", "model_index.json");
    write_file("model_index.json", "[1, 2");
    expect_error("broken json", "model_index.json:1:");
    write_file("model_index.json", "[1, 2]");
    expect_error("not an object", "model_index.json: a JSON array, not an object");
    write_file("model_index.json", "{\"unet\": [\"diffusers\", \"UNet2DConditionModel\"]}");
    expect_error("missing component", "\"tokenizer\" missing");
    write_file("model_index.json",
               "{\"tokenizer\": [\"transformers\", \"CLIPTokenizer\"], \"text_encoder\": [\"transformers\", "
               "\"CLIPTextModel\"], \"unet\": [\"diffusers\", \"UNet2DModel\"], \"vae\": [\"diffusers\", "
               "\"AutoencoderKL\"], \"scheduler\": [\"diffusers\", \"PNDMScheduler\"]}");
    expect_error("wrong class", "UNet2DModel");
    write_file("model_index.json",
               "{\"tokenizer\": [\"transformers\", \"CLIPTokenizer\"], \"text_encoder\": [\"transformers\", "
               "\"CLIPTextModel\"], \"unet\": [\"diffusers\", \"UNet2DConditionModel\"], \"vae\": [\"diffusers\", "
               "\"AutoencoderKL\"], \"scheduler\": [\"diffusers\", \"PNDMScheduler\"], \"safety_checker\": [null, null]}");
    expect_error("no tokenizer files", "vocab.json");
    char path[600];
    snprintf(path, sizeof path, "%s/model_index.json", tmpdir);
    unlink(path);
    rmdir(tmpdir);
    LEAK_CHECK_END();
}
END_TEST

/* a real folder with one component's weights removed names the folder and what it looked for */
START_TEST(test_missing_weights)
{
    char dir[512];
    if (!parity_path("tiny-sd/model_index.json", dir, sizeof dir)) return;
    *strrchr(dir, '/') = 0;
    char abs_dir[PATH_MAX];   /* symlinks need an absolute target */
    ck_assert_ptr_nonnull(realpath(dir, abs_dir));
    ck_assert_int_lt(strlen(abs_dir), 400);
    LEAK_CHECK_BEGIN();
    char link_dir[300], cmd[2400];
    snprintf(link_dir, sizeof link_dir, "/tmp/draft_pipeline_w_%d", (int)getpid());
    /* a copy of the folder made of symlinks, without the VAE weights */
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/vae && for c in model_index.json tokenizer text_encoder unet scheduler tokenizer_2 "
             "text_encoder_2; do if [ -e %s/$c ]; then ln -s %s/$c %s/$c; fi; done && "
             "ln -s %s/vae/config.json %s/vae/config.json",
             link_dir, abs_dir, abs_dir, link_dir, abs_dir, link_dir);
    ck_assert_int_eq(system(cmd), 0);
    struct sd_pipeline p;
    ck_assert_int_ne(sd_pipeline_load(&p, link_dir, DTYPE_F32, DEVICE_CPU), STATUS_OK);
    ck_assert_msg(strstr(tensor_error(), "/vae: no weights") != NULL, "%s", tensor_error());
    sd_pipeline_free(&p);
    snprintf(cmd, sizeof cmd, "rm -rf %s", link_dir);
    ck_assert_int_eq(system(cmd), 0);
    LEAK_CHECK_END();
}
END_TEST


/* ---------------------------------------------------------------- SD 2.x and transformers 5 folders */

/* `link_dir`: the embedded emoji model (every checkout has it) as symlinks, but for the tokenizer's
 * JSON files and the text encoder's weights, which the caller writes */
static void emoji_links(char *link_dir, size_t n, const char *tag)
{
    char abs_dir[PATH_MAX], cmd[3000];
    ck_assert_ptr_nonnull(realpath("models/emoji", abs_dir));
    ck_assert_int_lt(strlen(abs_dir), 400);
    snprintf(link_dir, n, "/tmp/draft_pipeline_%s_%d", tag, (int)getpid());
    snprintf(cmd, sizeof cmd,
             "rm -rf %s && mkdir -p %s/tokenizer %s/text_encoder && for c in model_index.json unet vae scheduler "
             "tokenizer/vocab.json tokenizer/merges.txt text_encoder/config.json; do ln -s %s/$c %s/$c; done",
             link_dir, link_dir, link_dir, abs_dir, link_dir);
    ck_assert_int_eq(system(cmd), 0);
}

static void rm_rf(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* The prompts' padding comes from the tokenizer's pad_token: "<|endoftext|>" in SD 1.x folders,
 * "!" (id 0 in CLIP's vocabulary) in SD 2.x's; special_tokens_map.json over tokenizer_config.json,
 * as transformers reads them; the eos without either. The UNet reads all 77 positions, so a wrong
 * padding changes every image (tests/reference/sd2_parity.py checks it against diffusers). */
START_TEST(test_pad_token)
{
    char dir[300], te[600];
    emoji_links(dir, sizeof dir, "pad");
    snprintf(te, sizeof te, "%s/text_encoder/model.safetensors", dir);
    char abs_te[PATH_MAX];
    ck_assert_ptr_nonnull(realpath("models/emoji/text_encoder/model.safetensors", abs_te));
    ck_assert_int_eq(symlink(abs_te, te), 0);
    LEAK_CHECK_BEGIN();
    static const struct { const char *map, *cfg, *pad, *err; } cases[] = {
        {NULL, NULL, "<|endoftext|>", NULL},
        {"{\"pad_token\": \"!\"}", NULL, "!", NULL},
        {"{\"pad_token\": {\"content\": \"!\", \"lstrip\": false, \"__type\": \"AddedToken\"}}", NULL, "!", NULL},
        {NULL, "{\"model_max_length\": 77, \"pad_token\": \"!\"}", "!", NULL},
        {"{\"eos_token\": \"<|endoftext|>\"}", "{\"pad_token\": \"!\"}", "!", NULL},
        {"{\"pad_token\": \"<|endoftext|>\"}", "{\"pad_token\": \"!\"}", "<|endoftext|>", NULL},
        {"{\"pad_token\": \"<pad>\"}", NULL, NULL, "special_tokens_map.json: pad_token '<pad>' is not a token"},
        {NULL, "{\"pad_token\": 0}", NULL, "tokenizer_config.json: pad_token must be a string"},
        {"{\"pad_token\": ", NULL, NULL, "special_tokens_map.json"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        write_in(dir, "tokenizer/special_tokens_map.json", cases[c].map);
        write_in(dir, "tokenizer/tokenizer_config.json", cases[c].cfg);
        struct sd_pipeline p;
        const enum status s = sd_pipeline_load(&p, dir, DTYPE_F32, DEVICE_CPU);
        if (cases[c].err) {
            ck_assert_msg(s != STATUS_OK, "case %zu: loaded", c);
            ck_assert_msg(strstr(tensor_error(), cases[c].err), "case %zu: '%s' lacks '%s'", c, tensor_error(), cases[c].err);
            sd_pipeline_free(&p);
            continue;
        }
        ck_assert_msg(s == STATUS_OK, "case %zu: %s", c, tensor_error());
        const int32_t pad = clip_token_id(p.tokenizer, cases[c].pad);
        ck_assert_int_ge(pad, 0);
        ck_assert_int_eq(p.pad_id, pad);
        tensor_scope_begin();
        const char *prompts[2] = {"", "a red heart"};
        struct tensor *ids = sd_pipeline_tokenize(&p, 2, prompts);
        ck_assert_msg(ids != NULL, "%s", tensor_error());
        const int32_t *v = tensor_data_ptr(ids);
        ck_assert_int_eq(v[0], clip_bos_id(p.tokenizer));
        ck_assert_int_eq(v[1], clip_eos_id(p.tokenizer));
        for (int i = 2; i < CLIP_CONTEXT; i++) ck_assert_int_eq(v[i], pad);
        int k = 1;
        while (v[CLIP_CONTEXT + k] != clip_eos_id(p.tokenizer)) k++;
        ck_assert_int_gt(k, 1);
        for (int i = k + 1; i < CLIP_CONTEXT; i++) ck_assert_int_eq(v[CLIP_CONTEXT + i], pad);
        tensor_scope_end();
        sd_pipeline_free(&p);
    }
    LEAK_CHECK_END();
    rm_rf(dir);
}
END_TEST

/* transformers 5 saves CLIPTextModel without "text_model." in its names: such a text encoder
 * loads, and gives the same context as the released layout */
START_TEST(test_text_encoder_unprefixed)
{
    char dir[300], path[600];
    emoji_links(dir, sizeof dir, "te5");
    LEAK_CHECK_BEGIN();
    tensor_scope_begin();
    struct safetensors *st = safetensors_open("models/emoji/text_encoder/model.safetensors");
    ck_assert_msg(st != NULL, "%s", tensor_error());
    char **names = calloc((size_t)st->n, sizeof *names);
    struct tensor **ts = calloc((size_t)st->n, sizeof *ts);
    ck_assert(names && ts);
    int n_bare = 0;
    for (int i = 0; i < st->n; i++) {
        const char *nm = st->entries[i].name;
        n_bare += !strncmp(nm, "text_model.", 11);
        names[i] = strdup(strncmp(nm, "text_model.", 11) ? nm : nm + 11);
        ts[i] = safetensors_load(st, nm, st->entries[i].dtype, DEVICE_CPU);
        ck_assert(names[i] && ts[i]);
    }
    ck_assert_int_gt(n_bare, 0);
    snprintf(path, sizeof path, "%s/text_encoder/model.safetensors", dir);
    ck_assert_int_eq(safetensors_save(path, st->n, (const char *const *)names, ts, 0, NULL, NULL), STATUS_OK);
    for (int i = 0; i < st->n; i++) free(names[i]);
    free(names);
    free(ts);
    safetensors_close(st);
    struct sd_pipeline a, b;
    ck_assert_msg(sd_pipeline_load(&a, "models/emoji", DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
    ck_assert_msg(sd_pipeline_load(&b, dir, DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
    /* the default image side: the UNet's 16 latents x the VAE's factor 2, as diffusers takes it */
    ck_assert_int_eq(a.unet.sample_size, 16);
    ck_assert_int_eq(sd_pipeline_default_size(&a), 32);
    const char *prompts[2] = {"", "a smiling sun"};
    struct tensor *ids = sd_pipeline_tokenize(&a, 2, prompts);
    struct tensor *ca = sd_pipeline_context(&a, ids, ids), *cb = sd_pipeline_context(&b, ids, ids);
    ck_assert_msg(ca && cb, "%s", tensor_error());
    ck_assert_double_eq(test_rel_err(cb, ca), 0);
    tensor_scope_end();
    sd_pipeline_free(&a);
    sd_pipeline_free(&b);
    LEAK_CHECK_END();
    rm_rf(dir);
}
END_TEST


/* --clip-skip (diffusers' clip_skip): hidden_states[-(k + 1)] through the final LayerNorm, down to
 * the embeddings; past them an error. (Against diffusers' encode_prompt: tests/reference/.) */
START_TEST(test_clip_skip)
{
    LEAK_CHECK_BEGIN();
    struct sd_pipeline p;
    ck_assert_msg(sd_pipeline_load(&p, "models/emoji", DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
    const int n = (int)p.text_encoder.cfg.num_hidden_layers;
    tensor_scope_begin();
    const char *pr[2] = {"a red heart", "a cat"};
    struct tensor *ids = sd_pipeline_tokenize(&p, 2, pr);
    struct tensor *e0 = sd_pipeline_encode(&p, ids);
    for (int k = 1; k <= n; k++) {
        ck_assert_int_eq(sd_pipeline_set_clip_skip(&p, k), STATUS_OK);
        struct tensor *e = sd_pipeline_encode(&p, ids);
        struct tensor *want = nn_layer_norm_forward(&p.text_encoder.final_layer_norm, clip_text_hidden(&p.text_encoder, ids,
                                                                                                        n - k, NULL));
        ck_assert_msg(e && want, "%s", tensor_error());
        ck_assert_double_eq(test_max_abs_diff(e, want), 0);
        ck_assert(test_max_abs_diff(e, e0) > 1e-3);
    }
    ck_assert_int_ne(sd_pipeline_set_clip_skip(&p, n + 1), STATUS_OK);
    ck_assert_msg(strstr(tensor_error(), "clip skip 4: the text encoder's 3 layers leave 0 .. 3"), "%s", tensor_error());
    ck_assert_int_ne(sd_pipeline_set_clip_skip(&p, -1), STATUS_OK);
    ck_assert_int_eq(sd_pipeline_set_clip_skip(&p, 0), STATUS_OK);
    ck_assert_double_eq(test_max_abs_diff(sd_pipeline_encode(&p, ids), e0), 0);
    tensor_scope_end();
    sd_pipeline_free(&p);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- the original single-file layout */

struct ldm_file {
    int n, cap;
    char **names;
    struct tensor **ts;
};

static void ldm_add(struct ldm_file *f, const char *name, struct tensor *t)
{
    if (f->n == f->cap) {
        f->cap = f->cap ? 2 * f->cap : 256;
        f->names = realloc(f->names, (size_t)f->cap * sizeof *f->names);
        f->ts = realloc(f->ts, (size_t)f->cap * sizeof *f->ts);
        ck_assert(f->names && f->ts);
    }
    f->names[f->n] = strdup(name);
    f->ts[f->n++] = t;
}

static bool ldm_has(const struct ldm_file *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->names[i], name)) return true;
    return false;
}

static void ldm_component(struct ldm_file *f, const struct nn_params *ps, nn_name_map_fn map, void *ctx)
{
    char key[600];
    for (int i = 0; i < ps->n; i++) {
        ck_assert_msg(map(ctx, ps->v[i].name, key, sizeof key), "no LDM key for %s", ps->v[i].name);
        ck_assert_msg(!ldm_has(f, key), "two parameters map to %s", key);
        struct tensor *t = tensor_ref(ps->v[i].t);
        /* the original VAE attention projections are 1x1 convolutions */
        if (strstr(key, ".mid.attn_1.") && t->ndim == 2) {
            struct tensor *c = tensor_reshape(t, 4, (int64_t[]){t->shape[0], t->shape[1], 1, 1});
            tensor_free(t);
            t = c;
        }
        ldm_add(f, key, t);
    }
}

static void ldm_free(struct ldm_file *f)
{
    for (int i = 0; i < f->n; i++) {
        free(f->names[i]);
        tensor_free(f->ts[i]);
    }
    free(f->names);
    free(f->ts);
    memset(f, 0, sizeof *f);
}

static void expect_same_params(const struct nn_params *a, const struct nn_params *b)
{
    ck_assert_int_eq(a->n, b->n);
    for (int i = 0; i < a->n; i++) {
        ck_assert_str_eq(a->v[i].name, b->v[i].name);
        ck_assert_msg(test_max_abs_diff(a->v[i].t, b->v[i].t) == 0.0, "%s differs by %g", a->v[i].name,
                      test_max_abs_diff(a->v[i].t, b->v[i].t));
    }
}

static void expect_single_error(const char *file, const char *dir, const char *needle)
{
    struct sd_pipeline p;
    ck_assert_int_ne(sd_pipeline_load_single_file(&p, file, dir, DTYPE_F32, DEVICE_CPU), STATUS_OK);
    ck_assert_msg(strstr(tensor_error(), needle) != NULL, "message '%s' lacks '%s'", tensor_error(), needle);
    sd_pipeline_free(&p);
}

START_TEST(test_single_file)
{
    char dir[512];
    if (!parity_path("tiny-sd/model_index.json", dir, sizeof dir)) return;
    *strrchr(dir, '/') = 0;
    LEAK_CHECK_BEGIN();
    struct sd_pipeline a;
    ck_assert_msg(sd_pipeline_load(&a, dir, DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
    if (a.xl) {   /* an SDXL parity folder (tests/reference/sdxl_parity.py) */
        printf("SKIP: the parity folder is SDXL's; test_sdxl_single_file covers its single file\n");
        sd_pipeline_free(&a);
        return;
    }
    struct ldm_file f = {0};
    ldm_component(&f, &a.unet_params, sd_ldm_unet_key, &a.unet);
    ldm_component(&f, &a.vae_params, sd_ldm_vae_key, &a.vae);
    ldm_component(&f, &a.text_params, sd_ldm_text_key, NULL);
    /* the worked examples of SD14.md 1.4 (the tiny UNet has SD 1.4's block structure) */
    static const char *const examples[] = {
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.time_embed.2.bias",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.decoder.up.3.block.0.conv1.weight",
        "first_stage_model.decoder.up.1.upsample.conv.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.encoder.mid.attn_1.proj_out.weight",
        "first_stage_model.decoder.mid.block_2.norm1.bias",
        "first_stage_model.decoder.norm_out.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
    };
    for (size_t i = 0; i < sizeof examples / sizeof examples[0]; i++)
        ck_assert_msg(ldm_has(&f, examples[i]), "no %s", examples[i]);
    const int n_model = f.n;
    /* what a real .ckpt carries besides the weights: skipped */
    ldm_add(&f, "model_ema.decay", tensor_scalar(DTYPE_F32, 0.9999));
    ldm_add(&f, "model_ema.diffusion_modelout2weight", tensor_ref(f.ts[0]));
    ldm_add(&f, "alphas_cumprod", tensor_zeros(DTYPE_F32, TENSOR_SHAPE(1000), DEVICE_CPU));
    ldm_add(&f, "cond_stage_model.transformer.text_model.embeddings.position_ids",
            tensor_zeros(DTYPE_F32, TENSOR_SHAPE(1, 77), DEVICE_CPU));

    char st_path[300], ck_path[300], bad_path[300];
    snprintf(st_path, sizeof st_path, "/tmp/draft_ldm_%d.safetensors", (int)getpid());
    snprintf(ck_path, sizeof ck_path, "/tmp/draft_ldm_%d.ckpt", (int)getpid());
    snprintf(bad_path, sizeof bad_path, "/tmp/draft_ldm_bad_%d.safetensors", (int)getpid());
    ck_assert_msg(safetensors_save(st_path, f.n, (const char *const *)f.names, f.ts, 0, NULL, NULL) == STATUS_OK, "%s",
                  tensor_error());
    test_torch_save(ck_path, f.n, (const char *const *)f.names, f.ts, true);
    const char *files[2] = {st_path, ck_path};
    for (int k = 0; k < 2; k++) {
        struct sd_pipeline b;
        ck_assert_msg(sd_pipeline_load_single_file(&b, files[k], dir, DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s: %s",
                      files[k], tensor_error());
        printf("single file %s\n", files[k]);
        expect_same_params(&a.unet_params, &b.unet_params);
        expect_same_params(&a.vae_params, &b.vae_params);
        expect_same_params(&a.text_params, &b.text_params);
        sd_pipeline_free(&b);
    }
    /* the .ckpt as a diffusers folder (draft-convert): configs from a folder whose model_index.json
     * lists the real repository's safety checker, which is not written and so is dropped */
    {
        char tmp[] = "/tmp/draft_save_XXXXXX", cfg[600], out[600], path[1400], cmd[4000];
        ck_assert(mkdtemp(tmp));
        snprintf(cfg, sizeof cfg, "%s/cfg", tmp);
        snprintf(out, sizeof out, "%s/out", tmp);
        snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cd '%s' && cp -r model_index.json scheduler tokenizer '%s/' && "
                 "for c in unet vae text_encoder; do mkdir '%s'/$c && cp $c/config.json '%s'/$c/; done", cfg, dir, cfg,
                 cfg, cfg);
        ck_assert(system(cmd) == 0);
        snprintf(path, sizeof path, "%s/model_index.json", cfg);
        FILE *mi = fopen(path, "w");
        ck_assert(mi);
        fprintf(mi, "{\"_class_name\": \"StableDiffusionPipeline\", \"feature_extractor\": [\"transformers\", "
                    "\"CLIPImageProcessor\"], \"requires_safety_checker\": true, \"safety_checker\": "
                    "[\"stable_diffusion\", \"StableDiffusionSafetyChecker\"], \"scheduler\": [\"diffusers\", "
                    "\"DDIMScheduler\"], \"text_encoder\": [\"transformers\", \"CLIPTextModel\"], \"tokenizer\": "
                    "[\"transformers\", \"CLIPTokenizer\"], \"unet\": [\"diffusers\", \"UNet2DConditionModel\"], "
                    "\"vae\": [\"diffusers\", \"AutoencoderKL\"]}\n");
        fclose(mi);
        struct sd_pipeline b, c;
        ck_assert_msg(sd_pipeline_load_single_file(&b, ck_path, cfg, DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s",
                      tensor_error());
        ck_assert_msg(sd_pipeline_save(&b, out) == STATUS_OK, "%s", tensor_error());
        ck_assert_msg(sd_pipeline_load(&c, out, DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
        expect_same_params(&a.unet_params, &c.unet_params);
        expect_same_params(&a.vae_params, &c.vae_params);
        expect_same_params(&a.text_params, &c.text_params);
        sd_pipeline_free(&c);
        size_t len;
        snprintf(path, sizeof path, "%s/model_index.json", out);
        char *text = nn_file_read(path, 1 << 20, &len);
        ck_assert(text);
        cJSON *root = cJSON_ParseWithLength(text, len);
        free(text);
        const cJSON *sc = cJSON_GetObjectItemCaseSensitive(root, "safety_checker");
        ck_assert(cJSON_IsArray(sc) && cJSON_GetArraySize(sc) == 2 && cJSON_IsNull(cJSON_GetArrayItem(sc, 0)));
        ck_assert(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(root, "requires_safety_checker")));
        ck_assert(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(root, "unet")));
        cJSON_Delete(root);
        static const char *const files[] = {"tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json",
                                            "unet/config.json", "text_encoder/model.safetensors"};
        for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
            snprintf(path, sizeof path, "%s/%s", out, files[i]);
            ck_assert_msg(nn_file_exists(path), "no %s", path);
        }
        /* transformers refuses a safetensors file without {"format": "pt"} */
        snprintf(path, sizeof path, "%s/text_encoder/model.safetensors", out);
        struct safetensors *st = safetensors_open(path);
        ck_assert(st && safetensors_metadata(st, "format") && !strcmp(safetensors_metadata(st, "format"), "pt"));
        safetensors_close(st);
        /* an existing folder with something in it is left alone */
        ck_assert_int_ne(sd_pipeline_save(&b, out), STATUS_OK);
        ck_assert_msg(strstr(tensor_error(), "exists and is not empty"), "%s", tensor_error());
        sd_pipeline_free(&b);
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
        ck_assert(system(cmd) == 0);
    }
    /* a tensor the model does not have, inside a component's prefix */
    ldm_add(&f, "model.diffusion_model.input_blocks.99.0.weight", tensor_zeros(DTYPE_F32, TENSOR_SHAPE(2), DEVICE_CPU));
    ck_assert_int_eq(safetensors_save(bad_path, f.n, (const char *const *)f.names, f.ts, 0, NULL, NULL), STATUS_OK);
    expect_single_error(bad_path, dir, "unexpected tensor 'model.diffusion_model.input_blocks.99.0.weight'");
    /* a missing weight names the file key and the model's parameter */
    {
        const char **nm = malloc((size_t)n_model * sizeof *nm);
        struct tensor **ts = malloc((size_t)n_model * sizeof *ts);
        ck_assert(nm && ts);
        int m = 0;
        for (int i = 0; i < n_model; i++)
            if (i != 5) nm[m] = f.names[i], ts[m++] = f.ts[i];
        ck_assert_int_eq(safetensors_save(bad_path, m, nm, ts, 0, NULL, NULL), STATUS_OK);
        char want[700];
        snprintf(want, sizeof want, "missing tensor '%s'", f.names[5]);
        expect_single_error(bad_path, dir, want);
        free(nm);
        free(ts);
    }
    /* a wrong shape */
    struct tensor *keep = f.ts[5];
    f.ts[5] = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(3, 3), DEVICE_CPU);
    ck_assert_int_eq(safetensors_save(bad_path, n_model, (const char *const *)f.names, f.ts, 0, NULL, NULL), STATUS_OK);
    expect_single_error(bad_path, dir, "has shape [3,3], the model expects");
    tensor_free(f.ts[5]);
    f.ts[5] = keep;
    /* a diffusers file is not the original layout */
    char unet_file[700];
    snprintf(unet_file, sizeof unet_file, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    expect_single_error(unet_file, dir, "not an original");
    unlink(st_path);
    unlink(ck_path);
    unlink(bad_path);
    ldm_free(&f);
    sd_pipeline_free(&a);
    LEAK_CHECK_END();
}
END_TEST

/* SD 2.x's original checkpoint keeps OpenCLIP's text tower under cond_stage_model.model. (q/k/v
 * stacked in attn.in_proj_*, 24 blocks of which SD 2.x's text encoder has the first 23,
 * text_projection, logit_scale): written here from that layout (open_clip/transformer.py, as
 * diffusers' convert_open_clip_checkpoint reads it) for the embedded model's text encoder, it
 * loads bit for bit; the UNet and VAE keys are SD 1.x's. */
/* A CLIPTextModel's parameters written as OpenCLIP's text tower under prefix (open_clip/transformer.py,
 * as diffusers' convert_open_clip_checkpoint reads it): q/k/v stacked in attn.in_proj_*, and `extra`
 * blocks more than the model has (holding layer 0's weights, as ViT-H's 24th that SD 2.x leaves out);
 * text_projection (transposed, x @ proj) when the parameters have one. Returns how many of the
 * parameters went in. */
static int openclip_text_add(struct ldm_file *f, const struct nn_params *ps, const char *oc, int layers, int extra)
{
    char k[300], h[300];
    static const char *const whole[5][2] = {{"text_model.embeddings.token_embedding.weight", "token_embedding.weight"},
                                            {"text_model.embeddings.position_embedding.weight", "positional_embedding"},
                                            {"text_model.final_layer_norm.weight", "ln_final.weight"},
                                            {"text_model.final_layer_norm.bias", "ln_final.bias"},
                                            {"text_projection.weight", "text_projection"}};
    int n = 0;
    for (int i = 0; i < 5; i++) {
        struct tensor *t = nn_param_find(ps, whole[i][0]);
        ck_assert_msg(t || i == 4, "no %s", whole[i][0]);
        if (!t) continue;
        snprintf(k, sizeof k, "%s%s", oc, whole[i][1]);
        tensor_scope_begin();
        ldm_add(f, k, tensor_keep(tensor_contiguous(i == 4 ? tensor_transpose(t, 0, 1) : t)));
        tensor_scope_end();
        n++;
    }
    for (int l = 0; l < layers + extra; l++) {
        const int from = l < layers ? l : 0;
        static const char *const wb[2] = {"weight", "bias"};
        for (int j = 0; j < 2; j++) {
            struct tensor *qkv[3];
            static const char *const qkvn[3] = {"q_proj", "k_proj", "v_proj"};
            for (int q = 0; q < 3; q++) {
                snprintf(h, sizeof h, "text_model.encoder.layers.%d.self_attn.%s.%s", from, qkvn[q], wb[j]);
                qkv[q] = nn_param_find(ps, h);
                ck_assert_ptr_nonnull(qkv[q]);
            }
            snprintf(k, sizeof k, "%stransformer.resblocks.%d.attn.in_proj_%s", oc, l, wb[j]);
            tensor_scope_begin();
            ldm_add(f, k, tensor_keep(tensor_contiguous(ag_concat(3, qkv, 0))));
            tensor_scope_end();
            static const char *const pairs[5][2] = {{"self_attn.out_proj", "attn.out_proj"}, {"layer_norm1", "ln_1"},
                                                    {"layer_norm2", "ln_2"}, {"mlp.fc1", "mlp.c_fc"},
                                                    {"mlp.fc2", "mlp.c_proj"}};
            for (int q = 0; q < 5; q++) {
                snprintf(h, sizeof h, "text_model.encoder.layers.%d.%s.%s", from, pairs[q][0], wb[j]);
                snprintf(k, sizeof k, "%stransformer.resblocks.%d.%s.%s", oc, l, pairs[q][1], wb[j]);
                ck_assert_ptr_nonnull(nn_param_find(ps, h));
                ldm_add(f, k, tensor_ref(nn_param_find(ps, h)));
            }
            if (l < layers) n += 3 + 5;
        }
    }
    return n;
}

START_TEST(test_single_file_openclip)
{
    LEAK_CHECK_BEGIN();
    struct sd_pipeline a;
    ck_assert_msg(sd_pipeline_load(&a, "models/emoji", DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
    struct ldm_file f = {0};
    ldm_component(&f, &a.unet_params, sd_ldm_unet_key, &a.unet);
    ldm_component(&f, &a.vae_params, sd_ldm_vae_key, &a.vae);
    const char *const oc = "cond_stage_model.model.";
    char k[300];
    const int n_text = openclip_text_add(&f, &a.text_params, oc, (int)a.text_encoder.cfg.num_hidden_layers, 1);
    ck_assert_int_eq(n_text, a.text_params.n);   /* every parameter of the text encoder is in the file */
    const int64_t width = a.text_encoder.cfg.hidden_size;
    snprintf(k, sizeof k, "%stext_projection", oc);
    ldm_add(&f, k, tensor_zeros(DTYPE_F32, TENSOR_SHAPE(width, width), DEVICE_CPU));
    snprintf(k, sizeof k, "%slogit_scale", oc);
    ldm_add(&f, k, tensor_scalar(DTYPE_F32, 4.6));

    char path[300];
    snprintf(path, sizeof path, "/tmp/draft_ldm_openclip_%d.safetensors", (int)getpid());
    ck_assert_int_eq(safetensors_save(path, f.n, (const char *const *)f.names, f.ts, 0, NULL, NULL), STATUS_OK);
    struct sd_pipeline b;
    ck_assert_msg(sd_pipeline_load_single_file(&b, path, "models/emoji", DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s",
                  tensor_error());
    expect_same_params(&a.unet_params, &b.unet_params);
    expect_same_params(&a.vae_params, &b.vae_params);
    expect_same_params(&a.text_params, &b.text_params);
    sd_pipeline_free(&b);
    /* a tensor of the text tower the model does not have, and a missing one */
    snprintf(k, sizeof k, "%stransformer.resblocks.0.attn.in_proj_weight", oc);
    for (int i = 0; i < f.n; i++)
        if (!strcmp(f.names[i], k)) {
            free(f.names[i]);
            f.names[i] = strdup("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weights");
        }
    ck_assert_int_eq(safetensors_save(path, f.n, (const char *const *)f.names, f.ts, 0, NULL, NULL), STATUS_OK);
    expect_single_error(path, "models/emoji", "missing tensor 'cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight'");
    ldm_add(&f, k, tensor_zeros(DTYPE_F32, TENSOR_SHAPE(3 * width, width), DEVICE_CPU));
    ck_assert_int_eq(safetensors_save(path, f.n, (const char *const *)f.names, f.ts, 0, NULL, NULL), STATUS_OK);
    expect_single_error(path, "models/emoji", "unexpected tensor 'cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weights'");
    unlink(path);
    ldm_free(&f);
    sd_pipeline_free(&a);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- SDXL */

/* random weights of a sensible scale for every parameter of ps, written to path */
static void save_random(struct nn_params *ps, const char *path)
{
    tensor_scope_begin();
    for (int i = 0; i < ps->n; i++) {
        struct tensor *t = ps->v[i].t;
        int64_t fan = 1;
        for (int d = 1; d < t->ndim; d++) fan *= t->shape[d];
        const double s = t->ndim >= 2 ? 1.5 / sqrt((double)fan) : 0.2;
        const bool normw = t->ndim == 1 && strstr(ps->v[i].name, "norm") && strstr(ps->v[i].name, ".weight");
        ck_assert_int_eq(tensor_copy_(t, test_uniform(DTYPE_F32, t->ndim, t->shape, normw ? 0.7 : -s, normw ? 1.3 : s)),
                         STATUS_OK);
    }
    tensor_scope_end();
    ck_assert_msg(nn_params_save(ps, path) == STATUS_OK, "%s", tensor_error());
}

static const char xl_index[] =
    "{\"_class_name\": \"StableDiffusionXLPipeline\", \"force_zeros_for_empty_prompt\": %s, \"scheduler\": [\"diffusers\", "
    "\"DDIMScheduler\"], \"text_encoder\": [\"transformers\", \"CLIPTextModel\"], \"text_encoder_2\": [\"transformers\", "
    "\"CLIPTextModelWithProjection\"], \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"], \"tokenizer_2\": "
    "[\"transformers\", \"CLIPTokenizer\"], \"unet\": [\"diffusers\", \"UNet2DConditionModel\"], \"vae\": [\"diffusers\", "
    "\"AutoencoderKL\"]}";

/* An SDXL-shaped folder around the embedded model (its tokenizer, first text encoder, VAE and
 * schedule): tokenizer_2 (the same files, "!" padding), a random CLIPTextModelWithProjection (64
 * wide, projection 32) and a random "text_time" UNet reading 128 + 64 features. The context is
 * checked against its parts computed here: the two encoders' hidden_states[-2] side by side, then
 * text_projection(final LayerNorm at the eos) of the second with its padding, zeros for the
 * empty unconditional prompt under force_zeros_for_empty_prompt; the UNet call against
 * sd_unet_forward_added with time ids (32, 16, 0, 0, 32, 16) for a 32 x 16 image. (Against diffusers' own
 * encode_prompt and time ids: tests/reference/sdxl_parity.py, docs/models.md.) */
/* the folder described above, made in `dir`; `root` gets the embedded model's absolute path */
static void xl_folder(char *dir, size_t n, const char *tag, char *root, size_t rn)
{
    char path[700];
    emoji_links(dir, n, tag);
    char abs_dir[PATH_MAX], cmd[3000];
    ck_assert_ptr_nonnull(realpath("models/emoji", abs_dir));
    ck_assert_int_lt(strlen(abs_dir), 400);
    snprintf(root, rn, "%s", abs_dir);
    snprintf(cmd, sizeof cmd,
             "cd %s && rm model_index.json unet && mkdir unet tokenizer_2 text_encoder_2 && "
             "ln -s %s/text_encoder/model.safetensors text_encoder/model.safetensors && "
             "ln -s %s/tokenizer/vocab.json tokenizer_2/vocab.json && ln -s %s/tokenizer/merges.txt tokenizer_2/merges.txt",
             dir, abs_dir, abs_dir, abs_dir);
    ck_assert_int_eq(system(cmd), 0);
    write_in(dir, "tokenizer/special_tokens_map.json", "{\"pad_token\": \"<|endoftext|>\"}");
    write_in(dir, "tokenizer_2/special_tokens_map.json", "{\"pad_token\": \"!\"}");
    write_in(dir, "text_encoder_2/config.json",
             "{\"architectures\": [\"CLIPTextModelWithProjection\"], \"model_type\": \"clip_text_model\", \"vocab_size\": "
             "1024, \"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, "
             "\"max_position_embeddings\": 77, \"hidden_act\": \"gelu\", \"projection_dim\": 32, \"eos_token_id\": 1023}");
    write_in(dir, "unet/config.json",
             "{\"_class_name\": \"UNet2DConditionModel\", \"block_out_channels\": [32, 64], \"down_block_types\": "
             "[\"DownBlock2D\", \"CrossAttnDownBlock2D\"], \"up_block_types\": [\"CrossAttnUpBlock2D\", \"UpBlock2D\"], "
             "\"layers_per_block\": 1, \"norm_num_groups\": 8, \"attention_head_dim\": [2, 4], \"cross_attention_dim\": 192, "
             "\"transformer_layers_per_block\": [1, 2], \"use_linear_projection\": true, \"addition_embed_type\": "
             "\"text_time\", \"addition_time_embed_dim\": 8, \"projection_class_embeddings_input_dim\": 80, "
             "\"sample_size\": 16}");
    char idx[1200];
    snprintf(idx, sizeof idx, xl_index, "true");
    write_in(dir, "model_index.json", idx);
    {   /* the random weights: the model's own parameter sets, saved */
        struct sd_pipeline w;
        ck_assert_int_eq(sd_pipeline_load(&w, dir, DTYPE_F32, DEVICE_CPU), STATUS_IO);   /* no weights yet */
        ck_assert_msg(strstr(tensor_error(), "text_encoder_2: no weights"), "%s", tensor_error());
        snprintf(path, sizeof path, "%s/text_encoder_2/model.safetensors", dir);
        save_random(&w.text_params_2, path);
        snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", dir);
        save_random(&w.unet_params, path);
        sd_pipeline_free(&w);
    }
}

START_TEST(test_sdxl_folder)
{
    char dir[300], path[700], root[401], cmd[3000], idx[1200];
    LEAK_CHECK_BEGIN();
    xl_folder(dir, sizeof dir, "xl", root, sizeof root);
    struct sd_pipeline p;
    ck_assert_msg(sd_pipeline_load(&p, dir, DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
    ck_assert(p.xl && p.force_zeros);
    ck_assert_int_eq(p.pooled_dim, 32);
    ck_assert_int_eq(p.pad_id_2, clip_token_id(p.tokenizer, "!"));
    ck_assert_int_ne(p.pad_id_2, p.pad_id);
    ck_assert_int_eq(sd_pipeline_default_size(&p), 32);
    tensor_scope_begin();
    const char *pr[2] = {"a red heart", "a smiling sun with sunglasses"}, *empty[2] = {"", ""};
    struct tensor *ids = sd_pipeline_tokenize(&p, 2, pr);
    struct tensor *ctx = sd_pipeline_context(&p, sd_pipeline_tokenize(&p, 2, empty), ids);
    ck_assert_msg(ctx != NULL, "%s", tensor_error());
    ck_assert_int_eq(ctx->ndim, 3);
    ck_assert(ctx->shape[0] == 4 && ctx->shape[1] == 78 && ctx->shape[2] == 192);
    /* the parts, computed here */
    int32_t ids2[2 * CLIP_CONTEXT];
    for (int b = 0; b < 2; b++) ck_assert_int_eq(clip_tokenize_padded(p.tokenizer, pr[b], ids2 + b * CLIP_CONTEXT,
                                                                      CLIP_CONTEXT, p.pad_id_2), STATUS_OK);
    struct tensor *t2 = tensor_from_data(DTYPE_I32, TENSOR_SHAPE(2, CLIP_CONTEXT), ids2);
    struct tensor *h1 = clip_text_hidden(&p.text_encoder, ids, 2, NULL), *h2 = clip_text_hidden(&p.text_encoder_2, t2, 1, NULL);
    struct tensor *last2 = clip_text_forward(&p.text_encoder_2, t2);
    ck_assert(h1 && h2 && last2);
    ck_assert(h1->shape[2] == 128 && h2->shape[2] == 64);
    double worst_tok = 0, pool_err = 0, pool_norm = 0, uncond = 0, rest = 0;
    const struct tensor *proj = p.text_projection_2.weight;
    for (int b = 0; b < 2; b++) {
        for (int i = 0; i < CLIP_CONTEXT; i++)
            for (int c = 0; c < 192; c++) {
                const double want = c < 128 ? tensor_get_flat(h1, ((int64_t)b * CLIP_CONTEXT + i) * 128 + c)
                                            : tensor_get_flat(h2, ((int64_t)b * CLIP_CONTEXT + i) * 64 + c - 128);
                worst_tok = fmax(worst_tok, fabs(tensor_get_flat(ctx, ((int64_t)(2 + b) * 78 + i) * 192 + c) - want));
            }
        int e = 0;   /* the first eos: eos_token_id 1023 */
        while (ids2[b * CLIP_CONTEXT + e] != 1023) e++;
        for (int c = 0; c < 192; c++) {
            double want = 0;
            for (int k = 0; c < 32 && k < 64; k++)
                want += tensor_get_flat(proj, c * 64 + k) * tensor_get_flat(last2, ((int64_t)b * CLIP_CONTEXT + e) * 64 + k);
            const double got = tensor_get_flat(ctx, ((int64_t)(2 + b) * 78 + 77) * 192 + c);
            if (c < 32) pool_err += (got - want) * (got - want), pool_norm += want * want;
            else rest = fmax(rest, fabs(got));
        }
    }
    for (int64_t i = 0; i < 2 * 78 * 192; i++) uncond = fmax(uncond, fabs(tensor_get_flat(ctx, i)));
    const double pool_rel = sqrt(pool_err / pool_norm);   /* f32 against the f64 product */
    printf("sdxl context: tokens max |diff| %.2e, pooled rel %.2e, padding %.1g, unconditional half %.1g\n", worst_tok,
           pool_rel, rest, uncond);
    ck_assert(worst_tok == 0 && pool_rel < 1e-6 && rest == 0 && uncond == 0);
    /* clip skip 1: hidden_states[-3] of both (the first encoder's layer 1, the second's embeddings), the
     * pooled rows as they were */
    ck_assert_int_eq(sd_pipeline_set_clip_skip(&p, 2), STATUS_VALUE);
    ck_assert_int_eq(sd_pipeline_set_clip_skip(&p, 1), STATUS_OK);
    struct tensor *cs = sd_pipeline_encode(&p, ids);
    struct tensor *parts[2] = {clip_text_hidden(&p.text_encoder, ids, 1, NULL), clip_text_hidden(&p.text_encoder_2, t2, 0, NULL)};
    ck_assert(cs && parts[0] && parts[1]);
    ck_assert_double_eq(test_max_abs_diff(ag_narrow(cs, 1, 0, 77), ag_concat(2, parts, 2)), 0);
    ck_assert_double_eq(test_max_abs_diff(ag_narrow(cs, 1, 77, 1), ag_narrow(ag_narrow(ctx, 0, 2, 2), 1, 77, 1)), 0);
    ck_assert_int_eq(sd_pipeline_set_clip_skip(&p, 0), STATUS_OK);
    /* the UNet call: the pooled rows out, time ids (height, width, 0, 0, height, width) of the 32 x 16 image */
    struct tensor *x = test_uniform(DTYPE_F32, TENSOR_SHAPE(2, 4, 16, 8), -1, 1);
    struct tensor *eps = sd_pipeline_eps(&p, x, 501, ag_narrow(ctx, 0, 2, 2), 1.0);
    const double tid[12] = {32, 16, 0, 0, 32, 16, 32, 16, 0, 0, 32, 16};
    const struct sd_unet_added added = {
        tensor_contiguous(ag_narrow(ag_reshape(ag_narrow(ag_narrow(ctx, 0, 2, 2), 1, 77, 1), TENSOR_SHAPE(2, 192)), 1, 0, 32)),
        tensor_from_data(DTYPE_F64, TENSOR_SHAPE(2, 6), tid)};
    struct tensor *want = sd_unet_forward_added(&p.unet, x, tensor_from_data(DTYPE_I64, TENSOR_SHAPE(1), (int64_t[]){501}),
                                                tensor_contiguous(ag_narrow(ag_narrow(ctx, 0, 2, 2), 1, 0, 77)), &added);
    ck_assert_msg(eps && want, "%s", tensor_error());
    ck_assert_double_eq(test_max_abs_diff(eps, want), 0);
    tensor_scope_end();
    sd_pipeline_free(&p);

    /* without force_zeros_for_empty_prompt: the empty prompt encoded */
    snprintf(idx, sizeof idx, xl_index, "false");
    write_in(dir, "model_index.json", idx);
    ck_assert_msg(sd_pipeline_load(&p, dir, DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
    ck_assert(p.xl && !p.force_zeros);
    tensor_scope_begin();
    struct tensor *eids = sd_pipeline_tokenize(&p, 2, empty);
    struct tensor *c2 = sd_pipeline_context(&p, eids, sd_pipeline_tokenize(&p, 2, pr));
    /* (a batch of 2 against one of 4: the same up to float rounding) */
    ck_assert_double_le(test_rel_err(ag_narrow(c2, 0, 0, 2), sd_pipeline_encode(&p, eids)), 1e-6);
    ck_assert(tensor_get_flat(c2, 5) != 0);
    tensor_scope_end();
    sd_pipeline_free(&p);

    /* what an SDXL folder must hold, named */
    snprintf(idx, sizeof idx, xl_index, "true");
    write_in(dir, "tokenizer_2/special_tokens_map.json", "{\"pad_token\": \"<none>\"}");
    write_in(dir, "model_index.json", idx);
    ck_assert_int_ne(sd_pipeline_load(&p, dir, DTYPE_F32, DEVICE_CPU), STATUS_OK);
    ck_assert_msg(strstr(tensor_error(), "tokenizer_2/special_tokens_map.json: pad_token '<none>'"), "%s", tensor_error());
    sd_pipeline_free(&p);
    write_in(dir, "tokenizer_2/special_tokens_map.json", "{\"pad_token\": \"!\"}");
    {   /* the same vocabulary formatted otherwise (cJSON's indented print): the same tokenizer */
        snprintf(path, sizeof path, "%s/tokenizer/vocab.json", root);
        cJSON *v = nn_json_file(path, 1 << 24);
        char *pretty = v ? cJSON_Print(v) : NULL;
        ck_assert_ptr_nonnull(pretty);
        cJSON_Delete(v);
        snprintf(path, sizeof path, "%s/tokenizer_2/vocab.json", dir);
        unlink(path);
        write_in(dir, "tokenizer_2/vocab.json", pretty);
        free(pretty);
        ck_assert_msg(sd_pipeline_load(&p, dir, DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
        sd_pipeline_free(&p);
    }
    snprintf(cmd, sizeof cmd, "cd %s && rm tokenizer_2/merges.txt && head -n 20 %s/tokenizer/merges.txt > tokenizer_2/merges.txt",
             dir, root);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_int_ne(sd_pipeline_load(&p, dir, DTYPE_F32, DEVICE_CPU), STATUS_OK);
    ck_assert_msg(strstr(tensor_error(), "tokenizer_2: another vocabulary or merges than"), "%s", tensor_error());
    sd_pipeline_free(&p);
    {   /* the merges back, two ids of the vocabulary swapped: refused too */
        snprintf(cmd, sizeof cmd, "cd %s && cp %s/tokenizer/merges.txt tokenizer_2/merges.txt", dir, root);
        ck_assert_int_eq(system(cmd), 0);
        snprintf(path, sizeof path, "%s/tokenizer_2/vocab.json", dir);
        cJSON *v = nn_json_file(path, 1 << 24);
        ck_assert(v && v->child && v->child->next);
        const double id0 = v->child->valuedouble, id1 = v->child->next->valuedouble;
        cJSON_SetNumberValue(v->child, id1);
        cJSON_SetNumberValue(v->child->next, id0);
        char *out = cJSON_PrintUnformatted(v);
        cJSON_Delete(v);
        write_in(dir, "tokenizer_2/vocab.json", out);
        free(out);
        ck_assert_int_ne(sd_pipeline_load(&p, dir, DTYPE_F32, DEVICE_CPU), STATUS_OK);
        ck_assert_msg(strstr(tensor_error(), "tokenizer_2: another vocabulary or merges than"), "%s", tensor_error());
        sd_pipeline_free(&p);
    }
    snprintf(idx, sizeof idx, "%s", xl_index);
    char *t2pos = strstr(idx, ", \"tokenizer_2\"");
    ck_assert_ptr_nonnull(t2pos);
    memmove(t2pos, strstr(t2pos, "]") + 1, strlen(strstr(t2pos, "]") + 1) + 1);
    char idx2[1200];
    snprintf(idx2, sizeof idx2, idx, "true");
    write_in(dir, "model_index.json", idx2);
    ck_assert_int_ne(sd_pipeline_load(&p, dir, DTYPE_F32, DEVICE_CPU), STATUS_OK);
    ck_assert_msg(strstr(tensor_error(), "text_encoder_2 and tokenizer_2 go together"), "%s", tensor_error());
    sd_pipeline_free(&p);
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    write_in(dir, "model_index.json", "{\"_class_name\": \"StableDiffusionPipeline\", \"scheduler\": [\"diffusers\", "
                                      "\"DDIMScheduler\"], \"text_encoder\": [\"transformers\", \"CLIPTextModel\"], "
                                      "\"tokenizer\": [\"transformers\", \"CLIPTokenizer\"], \"unet\": [\"diffusers\", "
                                      "\"UNet2DConditionModel\"], \"vae\": [\"diffusers\", \"AutoencoderKL\"]}");
    ck_assert_int_ne(sd_pipeline_load(&p, dir, DTYPE_F32, DEVICE_CPU), STATUS_OK);
    ck_assert_msg(strstr(tensor_error(), "lists no text_encoder_2"), "%s", tensor_error());
    sd_pipeline_free(&p);
    LEAK_CHECK_END();
    rm_rf(dir);
}
END_TEST

/* SDXL's single file (Stability's sgm layout, sd_xl_base_1.0.safetensors): the UNet and VAE under
 * LDM's names, the first text encoder as transformers names it under
 * conditioner.embedders.0.transformer., the second as OpenCLIP's tower (its projection transposed,
 * logit_scale) under conditioner.embedders.1.model.; written here from the folder's model, it loads
 * bit for bit (diffusers' converters read the same layout: docs/models.md) */
START_TEST(test_sdxl_single_file)
{
    char dir[300], root[401], path[400];
    LEAK_CHECK_BEGIN();
    xl_folder(dir, sizeof dir, "xl1", root, sizeof root);
    struct sd_pipeline a, b;
    ck_assert_msg(sd_pipeline_load(&a, dir, DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
    struct ldm_file f = {0};
    ldm_component(&f, &a.unet_params, sd_ldm_unet_key, &a.unet);
    ldm_component(&f, &a.vae_params, sd_ldm_vae_key, &a.vae);
    ldm_component(&f, &a.text_params, sd_ldm_xl_text_key, NULL);
    ck_assert(ldm_has(&f, "model.diffusion_model.label_emb.0.0.weight"));
    ck_assert(ldm_has(&f, "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"));
    const int n2 = openclip_text_add(&f, &a.text_params_2, SD_LDM_XL_OPENCLIP_PREFIX,
                                     (int)a.text_encoder_2.cfg.num_hidden_layers, 0);
    ck_assert_int_eq(n2, a.text_params_2.n);
    ldm_add(&f, "conditioner.embedders.1.model.logit_scale", tensor_scalar(DTYPE_F32, 4.6));
    ldm_add(&f, "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
            tensor_zeros(DTYPE_I64, TENSOR_SHAPE(1, 77), DEVICE_CPU));
    snprintf(path, sizeof path, "/tmp/draft_sdxl_%d.safetensors", (int)getpid());
    ck_assert_int_eq(safetensors_save(path, f.n, (const char *const *)f.names, f.ts, 0, NULL, NULL), STATUS_OK);
    ck_assert_msg(sd_pipeline_load_single_file(&b, path, dir, DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
    expect_same_params(&a.unet_params, &b.unet_params);
    expect_same_params(&a.vae_params, &b.vae_params);
    expect_same_params(&a.text_params, &b.text_params);
    expect_same_params(&a.text_params_2, &b.text_params_2);
    sd_pipeline_free(&b);
    /* a tensor of the second encoder's tower the model does not have */
    ldm_add(&f, "conditioner.embedders.1.model.transformer.resblocks.0.attn.bias_k",
            tensor_zeros(DTYPE_F32, TENSOR_SHAPE(2), DEVICE_CPU));
    ck_assert_int_eq(safetensors_save(path, f.n, (const char *const *)f.names, f.ts, 0, NULL, NULL), STATUS_OK);
    expect_single_error(path, dir, "unexpected tensor 'conditioner.embedders.1.model.transformer.resblocks.0.attn.bias_k'");
    unlink(path);
    ldm_free(&f);
    sd_pipeline_free(&a);
    LEAK_CHECK_END();
    rm_rf(dir);
}
END_TEST

/* a model stored in bf16 computes in f32 with its weights cast per use: exactly the f32 model
 * whose weights were rounded to bf16 */
START_TEST(test_bf16_storage)
{
    char dir[512];
    if (!parity_path("tiny-sd/model_index.json", dir, sizeof dir)) return;
    *strrchr(dir, '/') = 0;
    LEAK_CHECK_BEGIN();
    struct sd_pipeline a, b;
    ck_assert_msg(sd_pipeline_load(&a, dir, DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
    ck_assert_msg(sd_pipeline_load(&b, dir, DTYPE_BF16, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
    ck_assert_int_eq(sd_pipeline_dtype(&b), DTYPE_F32);
    struct nn_params *pa[4] = {&a.text_params, &a.text_params_2, &a.unet_params, &a.vae_params};
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(nn_params_to_dtype(pa[i], DTYPE_BF16), STATUS_OK);
        ck_assert_int_eq(nn_params_to_dtype(pa[i], DTYPE_F32), STATUS_OK);
    }
    ck_assert_int_eq(b.unet_params.v[0].t->dtype, DTYPE_BF16);
    tensor_scope_begin();
    const char *pr[2] = {"a red apple", "a cat"}, *empty[2] = {"", ""};
    struct sd_sample_opts o = {.steps = 2, .guidance = 7.5, .eta = 0.0};
    struct tensor *img[2];
    struct sd_pipeline *ps[2] = {&a, &b};
    for (int k = 0; k < 2; k++) {
        ag_rng_set(5, 0);
        struct tensor *x = ag_randn(DTYPE_F32, TENSOR_SHAPE(2, 4, 8, 8), DEVICE_CPU);
        struct tensor *ctx = sd_pipeline_context(ps[k], sd_pipeline_tokenize(ps[k], 2, empty),
                                                 sd_pipeline_tokenize(ps[k], 2, pr));
        img[k] = sd_pipeline_sample(ps[k], x, ctx, &o, NULL);
        ck_assert_msg(img[k] != NULL, "%s", tensor_error());
    }
    ck_assert_int_eq(img[1]->dtype, DTYPE_F32);
    ck_assert_msg(test_max_abs_diff(img[0], img[1]) == 0.0, "bf16 storage differs from rounded f32 by %g",
                  test_max_abs_diff(img[0], img[1]));
    /* latents in the storage dtype are refused with the dtype the model wants */
    struct tensor *bad = sd_unet_forward(&b.unet, tensor_zeros(DTYPE_BF16, TENSOR_SHAPE(1, 4, 8, 8), DEVICE_CPU),
                                         tensor_zeros(DTYPE_I64, TENSOR_SHAPE(1), DEVICE_CPU),
                                         tensor_zeros(DTYPE_F32, TENSOR_SHAPE(1, 77, b.unet.cross_attention_dim), DEVICE_CPU));
    ck_assert_ptr_null(bad);
    ck_assert_msg(strstr(tensor_error(), "must be f32") != NULL, "%s", tensor_error());
    tensor_scope_end();
    sd_pipeline_free(&a);
    sd_pipeline_free(&b);
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("pipeline");
    TCase *tc = tcase_create("pipeline");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_parity);
    tcase_add_test(tc, test_folder_errors);
    tcase_add_test(tc, test_missing_weights);
    tcase_add_test(tc, test_pad_token);
    tcase_add_test(tc, test_text_encoder_unprefixed);
    tcase_add_test(tc, test_clip_skip);
    tcase_add_test(tc, test_sdxl_folder);
    tcase_add_test(tc, test_sdxl_single_file);
    tcase_add_test(tc, test_single_file);
    tcase_add_test(tc, test_single_file_openclip);
    tcase_add_test(tc, test_bf16_storage);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
