/* pipeline.c — the diffusers StableDiffusionPipeline folder and its text-to-image path. */
#include "diffusion/pipeline.h"

#include "diffusion/ldm.h"
#include "nn/file.h"
#include "nn/pickle.h"
#include "nn/weights.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stddef.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* model_index.json: each component we load must be present and of the class we implement */
static enum status check_model_index(const char *dir)
{
    static const char *const want[][3] = {
        {"tokenizer", "CLIPTokenizer", "CLIPTokenizerFast"},
        {"text_encoder", "CLIPTextModel", NULL},
        {"unet", "UNet2DConditionModel", NULL},
        {"vae", "AutoencoderKL", NULL},
        {"scheduler", NULL, NULL},   /* any: the schedule is read as a DDIMScheduler */
    };
    char path[1200];
    snprintf(path, sizeof path, "%s/model_index.json", dir);
    size_t len;
    char *text = nn_file_read(path, (size_t)1 << 20, &len);
    if (!text) return tensor_fail(STATUS_IO, "%s: not a diffusers pipeline folder (no readable model_index.json)", dir);
    cJSON *root = nn_json_object(text, len, path);
    free(text);
    if (!root) return tensor_status();
    enum status s = STATUS_OK;
    for (size_t i = 0; i < sizeof want / sizeof want[0] && !s; i++) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, want[i][0]);
        const cJSON *cls = cJSON_IsArray(c) && cJSON_GetArraySize(c) == 2 ? cJSON_GetArrayItem(c, 1) : NULL;
        if (!cJSON_IsString(cls)) {
            s = tensor_fail(STATUS_FORMAT, "%s: component \"%s\" missing (expected [\"library\", \"class\"])", path,
                            want[i][0]);
        } else if (want[i][1] && strcmp(cls->valuestring, want[i][1]) &&
                   !(want[i][2] && !strcmp(cls->valuestring, want[i][2]))) {
            s = tensor_fail(STATUS_FORMAT, "%s: %s is a %s; this loader implements %s", path, want[i][0],
                            cls->valuestring, want[i][1]);
        }
    }
    cJSON_Delete(root);
    return s;
}

/* the weights file of a component: <dir>/<sub>/<base>{.safetensors,.fp16.safetensors,.bin} */
static enum status find_weights(const char *dir, const char *sub, const char *base, char *out, size_t n)
{
    static const char *const ext[] = {".safetensors", ".fp16.safetensors", ".bin", ".fp16.bin"};
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        snprintf(out, n, "%s/%s/%s%s", dir, sub, base, ext[i]);
        if (nn_file_exists(out)) return STATUS_OK;
    }
    return tensor_fail(STATUS_IO, "%s/%s: no weights (looked for %s.safetensors, .fp16.safetensors, .bin)", dir, sub,
                       base);
}

static bool ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* the older diffusers VAE spelling of the mid-block attention (query/key/value/proj_attn) */
static bool vae_folder_key(void *ctx, const char *name, char *key, size_t n)
{
    const struct nn_weights *w = ctx;
    static const char *const now[4] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
    static const char *const old[4] = {".query.", ".key.", ".value.", ".proj_attn."};
    snprintf(key, n, "%s", name);
    if (nn_weights_has(w, name) || !strstr(name, "mid_block.attentions.")) return true;
    for (int i = 0; i < 4; i++) {
        const char *at = strstr(name, now[i]);
        if (at) {
            snprintf(key, n, "%.*s%s%s", (int)(at - name), name, old[i], at + strlen(now[i]));
            return true;
        }
    }
    return true;
}

static bool skip_position_ids(const char *name)
{
    return ends_with(name, "embeddings.position_ids");
}

/* one component's weights file, every tensor used (but the position_ids buffers) */
static enum status load_file(struct nn_params *ps, const char *path, nn_name_map_fn map, bool map_ctx_is_file)
{
    struct nn_weights *w = nn_weights_open(path);
    if (!w) return tensor_status();
    bool *used = calloc((size_t)nn_weights_count(w) + 1, sizeof *used);
    enum status s = used ? STATUS_OK : tensor_fail(STATUS_OOM, "out of host memory");
    if (!s) s = nn_params_load_mapped(ps, w, map, map_ctx_is_file ? w : NULL, used);
    if (!s) s = nn_weights_check_used(w, used, NULL, skip_position_ids);
    free(used);
    nn_weights_close(w);
    return s;
}

/* The padding id of the prompts: the tokenizer's pad_token (special_tokens_map.json, which
 * transformers lets override tokenizer_config.json), a string or an AddedToken object. SD 1.x pads
 * with "<|endoftext|>" (the eos), SD 2.x with "!" (id 0); the UNet reads every position, so it
 * matters. Neither file: CLIPTokenizer's default, the eos. */
static enum status read_pad_id(struct sd_pipeline *p, const char *dir)
{
    static const char *const files[2] = {"special_tokens_map.json", "tokenizer_config.json"};
    p->pad_id = clip_eos_id(p->tokenizer);
    for (int i = 0; i < 2; i++) {
        char path[1200];
        snprintf(path, sizeof path, "%s/tokenizer/%s", dir, files[i]);
        if (!nn_file_exists(path)) continue;
        size_t len;
        char *text = nn_file_read(path, (size_t)1 << 24, &len);
        if (!text) return tensor_status();
        cJSON *root = nn_json_object(text, len, path);
        free(text);
        if (!root) return tensor_status();
        const cJSON *pad = cJSON_GetObjectItemCaseSensitive(root, "pad_token");
        if (cJSON_IsObject(pad)) pad = cJSON_GetObjectItemCaseSensitive(pad, "content");
        enum status s = STATUS_OK;
        bool found = false;
        if (pad && !cJSON_IsNull(pad)) {
            found = true;
            const int32_t id = cJSON_IsString(pad) ? clip_token_id(p->tokenizer, pad->valuestring) : -1;
            if (!cJSON_IsString(pad))
                s = tensor_fail(STATUS_FORMAT, "%s: pad_token must be a string or {\"content\": ...}", path);
            else if (id < 0)
                s = tensor_fail(STATUS_FORMAT, "%s: pad_token '%s' is not a token of tokenizer/vocab.json", path,
                                pad->valuestring);
            else
                p->pad_id = id;
        }
        cJSON_Delete(root);
        if (s || found) return s;
    }
    return STATUS_OK;
}

/* tokenizer, configs, modules (zero weights) and scheduler from a diffusers folder */
static enum status init_components(struct sd_pipeline *p, const char *dir)
{
    enum status s = check_model_index(dir);
    if (s) return s;
    char a[1200], b[1200];
    snprintf(a, sizeof a, "%s/tokenizer/vocab.json", dir);
    snprintf(b, sizeof b, "%s/tokenizer/merges.txt", dir);
    p->tokenizer = clip_tokenizer_load(a, b);
    if (!p->tokenizer) return tensor_status();
    if ((s = read_pad_id(p, dir))) return s;
    struct clip_text_config tc;
    snprintf(a, sizeof a, "%s/text_encoder/config.json", dir);
    if ((s = clip_text_config_load(&tc, a))) return s;
    if ((s = clip_text_init(&p->text_encoder, &tc, &p->text_params, ""))) return s;
    snprintf(a, sizeof a, "%s/unet/config.json", dir);
    if ((s = sd_unet_init_file(&p->unet, a, &p->unet_params))) return s;
    snprintf(a, sizeof a, "%s/vae/config.json", dir);
    if ((s = sd_vae_init(&p->vae, a, &p->vae_params))) return s;
    snprintf(a, sizeof a, "%s/scheduler/scheduler_config.json", dir);
    sd_ddim_free(&p->scheduler);
    return sd_ddim_init_file(&p->scheduler, a);
}

static enum status pipeline_begin(struct sd_pipeline *p, const char *dir, enum dtype dt, enum device dev)
{
    memset(p, 0, sizeof *p);
    snprintf(p->dir, sizeof p->dir, "%s", dir);
    p->dtype = dt;
    p->device = dev;
    nn_params_init(&p->text_params, dt, dev);
    nn_params_init(&p->unet_params, dt, dev);
    nn_params_init(&p->vae_params, dt, dev);
    sd_ddim_init_default(&p->scheduler);
    if (!dtype_is_float(dt))
        return tensor_fail(STATUS_VALUE, "%s: parameters must be a float dtype, got %s", dir, dtype_name(dt));
    return init_components(p, dir);
}

/* inference: nothing trains unless a caller says so (LoRA adds its own parameters) */
static void pipeline_freeze(struct sd_pipeline *p)
{
    nn_params_set_trainable(&p->text_params, false);
    nn_params_set_trainable(&p->unet_params, false);
    nn_params_set_trainable(&p->vae_params, false);
}

enum status sd_pipeline_load(struct sd_pipeline *p, const char *dir, enum dtype dt, enum device dev)
{
    enum status s = pipeline_begin(p, dir, dt, dev);
    if (s) return s;
    char a[1200];
    /* transformers names its weights model.* (or pytorch_model.bin in older repositories) */
    if (find_weights(dir, "text_encoder", "model", a, sizeof a) &&
        (s = find_weights(dir, "text_encoder", "pytorch_model", a, sizeof a)))
        return s;
    struct nn_weights *w = nn_weights_open(a);   /* clip.c reads 4.x's and 5.x's names */
    if (!w) return tensor_status();
    s = clip_params_load(&p->text_params, w, "");
    nn_weights_close(w);
    if (s) return s;
    if ((s = find_weights(dir, "unet", "diffusion_pytorch_model", a, sizeof a))) return s;
    if ((s = load_file(&p->unet_params, a, NULL, false))) return s;
    if ((s = find_weights(dir, "vae", "diffusion_pytorch_model", a, sizeof a))) return s;
    if ((s = load_file(&p->vae_params, a, vae_folder_key, true))) return s;
    pipeline_freeze(p);
    return STATUS_OK;
}

/* ---------------------------------------------------------------- saving */

static bool has_suffix(const char *s, const char *suf)
{
    const size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* model_index.json without the components we do not write */
static enum status save_model_index(const char *src, const char *dst)
{
    size_t len;
    char *text = nn_file_read(src, (size_t)1 << 20, &len);
    if (!text) return tensor_status();
    cJSON *root = nn_json_object(text, len, src);
    free(text);
    if (!root) return tensor_status();
    static const char *const dropped[] = {"safety_checker", "feature_extractor", "image_encoder"};
    for (size_t i = 0; i < sizeof dropped / sizeof dropped[0]; i++)
        if (cJSON_GetObjectItemCaseSensitive(root, dropped[i])) {
            cJSON *none = cJSON_CreateArray();
            cJSON_AddItemToArray(none, cJSON_CreateNull());
            cJSON_AddItemToArray(none, cJSON_CreateNull());
            cJSON_ReplaceItemInObjectCaseSensitive(root, dropped[i], none);
        }
    if (cJSON_GetObjectItemCaseSensitive(root, "requires_safety_checker"))
        cJSON_ReplaceItemInObjectCaseSensitive(root, "requires_safety_checker", cJSON_CreateFalse());
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    if (!out) return tensor_fail(STATUS_OOM, "out of host memory");
    const void *parts[2] = {out, "\n"};
    const size_t lens[2] = {strlen(out), 1};
    enum status s = nn_file_write_atomic(dst, 2, parts, lens);
    free(out);
    return s;
}

/* the .json and .txt files of src/sub into dst/sub (sub may be ""; a missing src/sub is fine) */
static enum status copy_configs(const char *src, const char *dst, const char *sub)
{
    char a[1400], b[1400];
    snprintf(a, sizeof a, "%s%s%s", src, *sub ? "/" : "", sub);
    snprintf(b, sizeof b, "%s%s%s", dst, *sub ? "/" : "", sub);
    DIR *d = opendir(a);
    if (!d) return STATUS_OK;
    enum status s = nn_mkdir_p(b);
    struct dirent *e;
    while (!s && (e = readdir(d))) {
        if (e->d_name[0] == '.' || !(has_suffix(e->d_name, ".json") || has_suffix(e->d_name, ".txt"))) continue;
        char from[1800], to[1800];
        snprintf(from, sizeof from, "%s/%s", a, e->d_name);
        snprintf(to, sizeof to, "%s/%s", b, e->d_name);
        if (!nn_file_exists(from)) continue;   /* a folder named *.json */
        if (!*sub && !strcmp(e->d_name, "model_index.json")) {
            s = save_model_index(from, to);
            continue;
        }
        size_t len;
        char *bytes = nn_file_read(from, (size_t)1 << 30, &len);
        if (!bytes) {
            s = tensor_status();
            break;
        }
        const void *parts[1] = {bytes};
        s = nn_file_write_atomic(to, 1, parts, &len);
        free(bytes);
    }
    closedir(d);
    return s;
}

enum status sd_pipeline_save_check(const char *out)
{
    if (!out || !*out) return tensor_fail(STATUS_VALUE, "sd_pipeline_save: no output folder");
    DIR *d = opendir(out);
    if (d) {
        struct dirent *e;
        bool empty = true;
        while (empty && (e = readdir(d))) empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
        closedir(d);
        if (!empty) return tensor_fail(STATUS_IO, "%s: the folder exists and is not empty (nothing was written)", out);
    }
    return nn_mkdir_p_check(out);
}

enum status sd_pipeline_save(const struct sd_pipeline *p, const char *out)
{
    enum status s = sd_pipeline_save_check(out);
    if (s) return s;
    s = nn_mkdir_p(out);
    static const char *const subs[] = {"", "scheduler", "tokenizer", "text_encoder", "unet", "vae"};
    for (size_t i = 0; i < sizeof subs / sizeof subs[0] && !s; i++) s = copy_configs(p->dir, out, subs[i]);
    static const struct { const char *file; size_t off; } comps[] = {
        {"text_encoder/model.safetensors", offsetof(struct sd_pipeline, text_params)},
        {"unet/diffusion_pytorch_model.safetensors", offsetof(struct sd_pipeline, unet_params)},
        {"vae/diffusion_pytorch_model.safetensors", offsetof(struct sd_pipeline, vae_params)},
    };
    for (size_t i = 0; i < sizeof comps / sizeof comps[0] && !s; i++) {
        char path[1400];
        snprintf(path, sizeof path, "%s/%s", out, comps[i].file);
        s = nn_params_save((const struct nn_params *)((const char *)p + comps[i].off), path);
    }
    return s;
}

static bool skip_ldm(const char *name)
{
    return torch_ckpt_name_unused(name);
}

enum status sd_pipeline_load_single_file(struct sd_pipeline *p, const char *file, const char *config_dir,
                                         enum dtype dt, enum device dev)
{
    enum status s = pipeline_begin(p, config_dir, dt, dev);
    if (s) return s;
    struct nn_weights *w = nn_weights_open(file);
    if (!w) return tensor_status();
    char probe[600];
    if (!sd_ldm_unet_key(&p->unet, p->unet_params.v[0].name, probe, sizeof probe) || !nn_weights_has(w, probe)) {
        s = tensor_fail(STATUS_FORMAT,
                        "%s: not an original (CompVis/LDM) Stable Diffusion 1.x/2.x checkpoint: no '%s' (a diffusers "
                        "folder loads with sd_pipeline_load / --model)",
                        file, probe);
        nn_weights_close(w);
        return s;
    }
    bool *used = calloc((size_t)nn_weights_count(w) + 1, sizeof *used);
    if (!used) s = tensor_fail(STATUS_OOM, "out of host memory");
    if (!s) s = nn_params_load_mapped(&p->unet_params, w, sd_ldm_unet_key, &p->unet, used);
    if (!s) s = nn_params_load_mapped(&p->vae_params, w, sd_ldm_vae_key, &p->vae, used);
    /* SD 1.x keeps transformers' CLIPTextModel under cond_stage_model.transformer., SD 2.x OpenCLIP's
     * text tower under cond_stage_model.model. */
    const bool openclip = nn_weights_has(w, SD_LDM_OPENCLIP_PREFIX "token_embedding.weight");
    if (!s && openclip)
        s = clip_openclip_text_load(&p->text_params, w, SD_LDM_OPENCLIP_PREFIX, (int)p->text_encoder.cfg.num_hidden_layers,
                                    used);
    else if (!s)
        s = nn_params_load_mapped(&p->text_params, w, sd_ldm_text_key, NULL, used);
    const char *const owned[3] = {SD_LDM_UNET_PREFIX, SD_LDM_VAE_PREFIX,
                                  openclip ? SD_LDM_OPENCLIP_PREFIX : SD_LDM_TEXT_PREFIX};
    for (int i = 0; i < 3 && !s; i++) s = nn_weights_check_used(w, used, owned[i], skip_ldm);
    free(used);
    nn_weights_close(w);
    if (!s) pipeline_freeze(p);
    return s;
}

void sd_pipeline_free(struct sd_pipeline *p)
{
    clip_tokenizer_free(p->tokenizer);
    clip_text_free(&p->text_encoder);
    sd_unet_free(&p->unet);
    sd_ddim_free(&p->scheduler);
    nn_params_free(&p->text_params);
    nn_params_free(&p->unet_params);
    nn_params_free(&p->vae_params);
    memset(p, 0, sizeof *p);
}

enum dtype sd_pipeline_dtype(const struct sd_pipeline *p) { return nn_compute_dtype(p->dtype); }

int64_t sd_pipeline_latent_size(const struct sd_pipeline *p, int64_t image_size)
{
    return image_size >> (p->vae.cfg.n_blocks - 1);
}

int64_t sd_pipeline_default_size(const struct sd_pipeline *p)
{
    return p->unet.sample_size > 0 ? p->unet.sample_size << (p->vae.cfg.n_blocks - 1) : p->vae.cfg.sample_size;
}

struct tensor *sd_pipeline_tokenize(const struct sd_pipeline *p, int n, const char *const *prompts)
{
    if (n <= 0) {
        tensor_fail(STATUS_VALUE, "tokenize: %d prompts", n);
        return NULL;
    }
    int32_t *ids = malloc((size_t)n * CLIP_CONTEXT * sizeof *ids);
    if (!ids) {
        tensor_fail(STATUS_OOM, "out of host memory");
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        if (clip_tokenize_padded(p->tokenizer, prompts[i] ? prompts[i] : "", ids + (size_t)i * CLIP_CONTEXT, CLIP_CONTEXT,
                                 p->pad_id)) {
            free(ids);
            return NULL;
        }
    }
    struct tensor *t = tensor_from_data(DTYPE_I32, TENSOR_SHAPE(n, CLIP_CONTEXT), ids);
    free(ids);
    return t;
}

struct tensor *sd_pipeline_encode(const struct sd_pipeline *p, struct tensor *ids)
{
    if (!ids) return NULL;
    tensor_scope_begin();
    struct tensor *h = clip_text_forward(&p->text_encoder, tensor_to_device(ids, p->device));
    return tensor_scope_return(h);
}

struct tensor *sd_pipeline_context(const struct sd_pipeline *p, struct tensor *uncond_ids, struct tensor *cond_ids)
{
    if (!uncond_ids || !cond_ids) return NULL;
    tensor_scope_begin();
    struct tensor *ids[2] = {uncond_ids, cond_ids};
    struct tensor *both = ag_concat(2, ids, 0);
    return tensor_scope_return(sd_pipeline_encode(p, both));
}

struct tensor *sd_pipeline_eps(struct sd_pipeline *p, struct tensor *x, int64_t t, struct tensor *context,
                               double guidance)
{
    if (!x || !context) return NULL;
    const int64_t n = x->shape[0];
    tensor_scope_begin();
    struct tensor *ts = tensor_from_data(DTYPE_I64, TENSOR_SHAPE(1), &t);
    if (context->shape[0] == n) {   /* no guidance: the rows given */
        return tensor_scope_return(sd_unet_forward(&p->unet, x, ts, context));
    }
    if (context->shape[0] != 2 * n) {
        tensor_fail(STATUS_SHAPE, "guided step: context has %lld rows, expected %lld ([uncond; cond]) for %lld latents",
                    (long long)context->shape[0], (long long)(2 * n), (long long)n);
        return tensor_scope_return(NULL);
    }
    if (guidance <= 1.0) {   /* eps = eps_c: only the conditional half is needed */
        struct tensor *cond = ag_narrow(context, 0, n, n);
        return tensor_scope_return(sd_unet_forward(&p->unet, x, ts, cond));
    }
    struct tensor *xs[2] = {x, x};
    struct tensor *eps = sd_unet_forward(&p->unet, ag_concat(2, xs, 0), ts, context);
    struct tensor *eu = ag_narrow(eps, 0, 0, n), *ec = ag_narrow(eps, 0, n, n);
    struct tensor *out = ag_add(eu, ag_scale(ag_sub(ec, eu), guidance));
    return tensor_scope_return(out);
}

struct tensor *sd_pipeline_step(struct sd_pipeline *p, struct tensor *x, int64_t t, struct tensor *context,
                                double guidance, double eta, struct tensor *noise)
{
    tensor_scope_begin();
    struct tensor *eps = sd_pipeline_eps(p, x, t, context, guidance);
    struct tensor *out = eps ? sd_ddim_step(&p->scheduler, eps, t, x, eta, noise) : NULL;
    return tensor_scope_return(out);
}

struct tensor *sd_pipeline_decode(struct sd_pipeline *p, struct tensor *latents)
{
    if (!latents) return NULL;
    tensor_scope_begin();
    struct tensor *z = ag_scale(latents, 1.0 / p->vae.cfg.scaling_factor);
    if (p->vae.cfg.shift_factor != 0.0) z = ag_affine(z, 1.0, p->vae.cfg.shift_factor);
    return tensor_scope_return(sd_vae_decode(&p->vae, z));
}

struct tensor *sd_pipeline_sample(struct sd_pipeline *p, struct tensor *init_latents, struct tensor *context,
                                  const struct sd_sample_opts *o, struct tensor **after_step)
{
    if (!init_latents || !context) return NULL;
    if (sd_ddim_set_timesteps(&p->scheduler, o->steps)) return NULL;
    /* the latents carried from step to step live outside the per-step scope, so a step's
     * temporaries die with it (docs/architecture.md, "Ownership") */
    struct tensor *x = tensor_ref(init_latents);
    for (int i = 0; i < p->scheduler.num_inference_steps && x; i++) {
        tensor_scope_begin();
        struct tensor *y = tensor_keep(sd_pipeline_step(p, x, p->scheduler.timesteps[i], context, o->guidance, o->eta, NULL));
        tensor_scope_end();
        tensor_free(x);
        x = y;
        if (after_step) after_step[i] = x ? tensor_ref(x) : NULL;
    }
    struct tensor *img = sd_pipeline_decode(p, x);
    tensor_free(x);
    return img;
}
