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
static enum status check_model_index(const char *dir, bool *xl, bool *force_zeros)
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
    /* SDXL: both second components, or neither */
    const cJSON *t2 = cJSON_GetObjectItemCaseSensitive(root, "text_encoder_2");
    const cJSON *k2 = cJSON_GetObjectItemCaseSensitive(root, "tokenizer_2");
    const bool has_t2 = cJSON_IsArray(t2) && cJSON_IsString(cJSON_GetArrayItem(t2, 1));
    const bool has_k2 = cJSON_IsArray(k2) && cJSON_IsString(cJSON_GetArrayItem(k2, 1));
    if (!s && has_t2 != has_k2)
        s = tensor_fail(STATUS_FORMAT, "%s: text_encoder_2 and tokenizer_2 go together (SDXL); one of them is missing",
                        path);
    if (!s && has_t2 && strcmp(cJSON_GetArrayItem(t2, 1)->valuestring, "CLIPTextModelWithProjection"))
        s = tensor_fail(STATUS_FORMAT, "%s: text_encoder_2 is a %s; this loader implements CLIPTextModelWithProjection",
                        path, cJSON_GetArrayItem(t2, 1)->valuestring);
    if (!s && has_k2 && strcmp(cJSON_GetArrayItem(k2, 1)->valuestring, "CLIPTokenizer") &&
        strcmp(cJSON_GetArrayItem(k2, 1)->valuestring, "CLIPTokenizerFast"))
        s = tensor_fail(STATUS_FORMAT, "%s: tokenizer_2 is a %s; this loader implements CLIPTokenizer", path,
                        cJSON_GetArrayItem(k2, 1)->valuestring);
    if (!s && xl) {
        *xl = has_t2;
        const cJSON *fz = cJSON_GetObjectItemCaseSensitive(root, "force_zeros_for_empty_prompt");
        *force_zeros = has_t2 && (!fz || cJSON_IsTrue(fz));   /* the pipeline's default is true */
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
static enum status read_pad_id(const struct clip_tokenizer *tok, const char *dir, const char *sub, int32_t *pad_id)
{
    static const char *const files[2] = {"special_tokens_map.json", "tokenizer_config.json"};
    *pad_id = clip_eos_id(tok);
    for (int i = 0; i < 2; i++) {
        char path[1200];
        snprintf(path, sizeof path, "%s/%s/%s", dir, sub, files[i]);
        if (!nn_file_exists(path)) continue;
        cJSON *root = nn_json_file(path, (size_t)1 << 24);
        if (!root) return tensor_status();
        const cJSON *pad = cJSON_GetObjectItemCaseSensitive(root, "pad_token");
        if (cJSON_IsObject(pad)) pad = cJSON_GetObjectItemCaseSensitive(pad, "content");
        enum status s = STATUS_OK;
        bool found = false;
        if (pad && !cJSON_IsNull(pad)) {
            found = true;
            const int32_t id = cJSON_IsString(pad) ? clip_token_id(tok, pad->valuestring) : -1;
            if (!cJSON_IsString(pad))
                s = tensor_fail(STATUS_FORMAT, "%s: pad_token must be a string or {\"content\": ...}", path);
            else if (id < 0)
                s = tensor_fail(STATUS_FORMAT, "%s: pad_token '%s' is not a token of %s/vocab.json", path,
                                pad->valuestring, sub);
            else
                *pad_id = id;
        }
        cJSON_Delete(root);
        if (s || found) return s;
    }
    return STATUS_OK;
}

/* SDXL's tokenizer_2: CLIP's vocabulary and merges again (its own padding), so the prompts' ids are
 * tokenizer's up to the eos and only the padding after it differs; the files may be formatted
 * otherwise, the tables must be the same */
static enum status same_tokenizer(const struct sd_pipeline *p, const char *dir)
{
    char a[1200], b[1200];
    snprintf(a, sizeof a, "%s/tokenizer_2/vocab.json", dir);
    snprintf(b, sizeof b, "%s/tokenizer_2/merges.txt", dir);
    struct clip_tokenizer *t2 = clip_tokenizer_load(a, b);
    if (!t2) return tensor_status();
    const bool same = clip_tokenizer_same(p->tokenizer, t2);
    clip_tokenizer_free(t2);
    return same ? STATUS_OK
                : tensor_fail(STATUS_FORMAT, "%s/tokenizer_2: another vocabulary or merges than %s/tokenizer's; SDXL's two "
                                             "tokenizers share CLIP's (only their padding differs)", dir, dir);
}

/* SDXL's second text encoder: CLIPTextModelWithProjection (text_model.* + text_projection) */
static enum status init_text_encoder_2(struct sd_pipeline *p, const char *dir)
{
    enum status s;
    if ((s = same_tokenizer(p, dir)) || (s = read_pad_id(p->tokenizer, dir, "tokenizer_2", &p->pad_id_2)))
        return s;
    char a[1200];
    struct clip_text_config tc;
    snprintf(a, sizeof a, "%s/text_encoder_2/config.json", dir);
    if ((s = clip_text_config_load(&tc, a))) return s;
    if (tc.projection_dim < 1) return tensor_fail(STATUS_FORMAT, "%s: projection_dim must be positive", a);
    if ((s = clip_text_init(&p->text_encoder_2, &tc, &p->text_params_2, ""))) return s;
    if ((s = nn_linear_init(&p->text_projection_2, &p->text_params_2, "text_projection", tc.hidden_size,
                            tc.projection_dim, false)))
        return s;
    const int64_t d = p->text_encoder.cfg.hidden_size + tc.hidden_size;
    if (d != p->unet.cross_attention_dim)
        return tensor_fail(STATUS_SHAPE, "%s: the two text encoders give %lld + %lld = %lld features, the UNet's "
                                         "cross_attention_dim is %lld", dir, (long long)p->text_encoder.cfg.hidden_size,
                           (long long)tc.hidden_size, (long long)d, (long long)p->unet.cross_attention_dim);
    if (!p->unet.add_time_dim || tc.projection_dim >= p->unet.add_in_dim)
        return tensor_fail(STATUS_FORMAT, "%s: an SDXL pipeline needs a UNet with addition_embed_type \"text_time\" "
                                          "wider than text_encoder_2's projection_dim (%lld)", dir,
                           (long long)tc.projection_dim);
    p->pooled_dim = tc.projection_dim;
    return STATUS_OK;
}

/* tokenizer, configs, modules (zero weights) and scheduler from a diffusers folder */
static enum status init_components(struct sd_pipeline *p, const char *dir)
{
    enum status s = check_model_index(dir, &p->xl, &p->force_zeros);
    if (s) return s;
    char a[1200], b[1200];
    snprintf(a, sizeof a, "%s/tokenizer/vocab.json", dir);
    snprintf(b, sizeof b, "%s/tokenizer/merges.txt", dir);
    p->tokenizer = clip_tokenizer_load(a, b);
    if (!p->tokenizer) return tensor_status();
    if ((s = read_pad_id(p->tokenizer, dir, "tokenizer", &p->pad_id))) return s;
    p->text_rows = CLIP_CONTEXT;
    struct clip_text_config tc;
    snprintf(a, sizeof a, "%s/text_encoder/config.json", dir);
    if ((s = clip_text_config_load(&tc, a))) return s;
    if ((s = clip_text_init(&p->text_encoder, &tc, &p->text_params, ""))) return s;
    snprintf(a, sizeof a, "%s/unet/config.json", dir);
    if ((s = sd_unet_init_file(&p->unet, a, &p->unet_params))) return s;
    if (p->xl && (s = init_text_encoder_2(p, dir))) return s;
    if (!p->xl && p->unet.add_time_dim)
        return tensor_fail(STATUS_FORMAT, "%s: the UNet takes SDXL's added conditioning but model_index.json lists no "
                                          "text_encoder_2", dir);
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
    nn_params_init(&p->text_params_2, dt, dev);
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
    nn_params_set_trainable(&p->text_params_2, false);
    nn_params_set_trainable(&p->unet_params, false);
    nn_params_set_trainable(&p->vae_params, false);
}

/* a text encoder's file: clip.c reads 4.x's and 5.x's names */
static enum status load_text_encoder(struct nn_params *ps, const char *path)
{
    struct nn_weights *w = nn_weights_open(path);
    if (!w) return tensor_status();
    enum status s = clip_params_load(ps, w, "");
    nn_weights_close(w);
    return s;
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
    if ((s = load_text_encoder(&p->text_params, a))) return s;
    if (p->xl) {
        if (find_weights(dir, "text_encoder_2", "model", a, sizeof a) &&
            (s = find_weights(dir, "text_encoder_2", "pytorch_model", a, sizeof a)))
            return s;
        if ((s = load_text_encoder(&p->text_params_2, a))) return s;
    }
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
    cJSON *root = nn_json_file(src, (size_t)1 << 20);
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
    static const char *const subs[] = {"", "scheduler", "tokenizer", "text_encoder", "unet", "vae", "tokenizer_2",
                                       "text_encoder_2"};
    for (size_t i = 0; i < sizeof subs / sizeof subs[0] && !s; i++) s = copy_configs(p->dir, out, subs[i]);
    static const struct { const char *file; size_t off; } comps[] = {
        {"text_encoder/model.safetensors", offsetof(struct sd_pipeline, text_params)},
        {"unet/diffusion_pytorch_model.safetensors", offsetof(struct sd_pipeline, unet_params)},
        {"vae/diffusion_pytorch_model.safetensors", offsetof(struct sd_pipeline, vae_params)},
        {"text_encoder_2/model.safetensors", offsetof(struct sd_pipeline, text_params_2)},
    };
    for (size_t i = 0; i < sizeof comps / sizeof comps[0] && !s; i++) {
        if (!p->xl && i == 3) break;
        char path[1400];
        snprintf(path, sizeof path, "%s/%s", out, comps[i].file);
        s = nn_params_save((const struct nn_params *)((const char *)p + comps[i].off), path);
    }
    return s;
}

static bool skip_ldm(const char *name)
{
    return torch_ckpt_name_unused(name) || skip_position_ids(name);
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
                        "%s: not an original (CompVis/LDM/SGM) Stable Diffusion 1.x/2.x/XL checkpoint: no '%s' (a "
                        "diffusers folder loads with sd_pipeline_load / --model)",
                        file, probe);
        nn_weights_close(w);
        return s;
    }
    bool *used = calloc((size_t)nn_weights_count(w) + 1, sizeof *used);
    if (!used) s = tensor_fail(STATUS_OOM, "out of host memory");
    if (!s) s = nn_params_load_mapped(&p->unet_params, w, sd_ldm_unet_key, &p->unet, used);
    if (!s) s = nn_params_load_mapped(&p->vae_params, w, sd_ldm_vae_key, &p->vae, used);
    /* SD 1.x keeps transformers' CLIPTextModel under cond_stage_model.transformer., SD 2.x OpenCLIP's
     * text tower under cond_stage_model.model., SDXL (Stability's sgm) both under conditioner.embedders.
     * (the second with its projection: it pools) */
    const bool openclip = nn_weights_has(w, SD_LDM_OPENCLIP_PREFIX "token_embedding.weight");
    const char *owned[4] = {SD_LDM_UNET_PREFIX, SD_LDM_VAE_PREFIX, openclip ? SD_LDM_OPENCLIP_PREFIX : SD_LDM_TEXT_PREFIX,
                            NULL};
    if (!s && p->xl) {
        owned[2] = SD_LDM_XL_TEXT_PREFIX, owned[3] = SD_LDM_XL_OPENCLIP_PREFIX;
        s = nn_params_load_mapped(&p->text_params, w, sd_ldm_xl_text_key, NULL, used);
        if (!s)
            s = clip_openclip_text_load(&p->text_params_2, w, SD_LDM_XL_OPENCLIP_PREFIX,
                                        (int)p->text_encoder_2.cfg.num_hidden_layers, used);
    } else if (!s && openclip) {
        s = clip_openclip_text_load(&p->text_params, w, SD_LDM_OPENCLIP_PREFIX, (int)p->text_encoder.cfg.num_hidden_layers,
                                    used);
    } else if (!s) {
        s = nn_params_load_mapped(&p->text_params, w, sd_ldm_text_key, NULL, used);
    }
    for (int i = 0; i < 4 && owned[i] && !s; i++) s = nn_weights_check_used(w, used, owned[i], skip_ldm);
    free(used);
    nn_weights_close(w);
    if (!s) pipeline_freeze(p);
    return s;
}

void sd_pipeline_free(struct sd_pipeline *p)
{
    clip_tokenizer_free(p->tokenizer);
    clip_text_free(&p->text_encoder);
    clip_text_free(&p->text_encoder_2);
    sd_unet_free(&p->unet);
    sd_ddim_free(&p->scheduler);
    nn_params_free(&p->text_params);
    nn_params_free(&p->text_params_2);
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

/* rows of the context holding SDXL's pooled text_embeds after the token rows */
static int64_t pooled_rows(const struct sd_pipeline *p)
{
    const int64_t d = p->unet.cross_attention_dim;
    return p->xl ? (p->pooled_dim + d - 1) / d : 0;
}

/* ids as contiguous i32 on the host, to read (in the caller's scope) */
static struct tensor *host_ids(struct tensor *ids)
{
    return tensor_contiguous(tensor_to_dtype(tensor_to_device(ids, DEVICE_CPU), DTYPE_I32));
}

/* tokenizer's ids with tokenizer_2's padding after each row's first eos */
static struct tensor *repad(const struct sd_pipeline *p, struct tensor *ids)
{
    struct tensor *c = host_ids(ids);
    if (!c || c->ndim != 2) return c;
    struct tensor *out = tensor_clone(c);
    if (!out) return NULL;
    int32_t *v = tensor_data_ptr(out);
    const int32_t eos = clip_eos_id(p->tokenizer);
    for (int64_t r = 0; r < out->shape[0]; r++) {
        bool after = false;
        for (int64_t i = 0; i < out->shape[1]; i++) {
            if (after) v[r * out->shape[1] + i] = p->pad_id_2;
            after = after || v[r * out->shape[1] + i] == eos;
        }
    }
    return out;
}

enum status sd_pipeline_set_clip_skip(struct sd_pipeline *p, int k)
{
    const int n1 = p->text_encoder.cfg.num_hidden_layers, n2 = p->xl ? p->text_encoder_2.cfg.num_hidden_layers : n1;
    /* down to hidden_states[0], the embeddings; SDXL starts from the penultimate layer */
    const int most = (n1 < n2 ? n1 : n2) - (p->xl ? 1 : 0);
    if (k < 0 || k > most)
        return tensor_fail(STATUS_VALUE, "clip skip %d: the text encoder%s %d layers leave 0 .. %d", k, p->xl ? "s'" : "'s",
                           n1 < n2 ? n1 : n2, most);
    p->clip_skip = k;
    return STATUS_OK;
}

/* SDXL's encode_prompt: [hidden_states[-(clip_skip + 2)] of both encoders; the pooled rows] */
static struct tensor *encode_xl(const struct sd_pipeline *p, struct tensor *ids)
{
    tensor_scope_begin();
    struct tensor *last = NULL;
    struct tensor *h1 = clip_text_hidden(&p->text_encoder, tensor_to_device(ids, p->device),
                                         (int)p->text_encoder.cfg.num_hidden_layers - 1 - p->clip_skip, NULL);
    struct tensor *ids2 = repad(p, ids);
    struct tensor *h2 = ids2 ? clip_text_hidden(&p->text_encoder_2, tensor_to_device(ids2, p->device),
                                                (int)p->text_encoder_2.cfg.num_hidden_layers - 1 - p->clip_skip, &last)
                             : NULL;
    if (!h1 || !h2) return tensor_scope_return(NULL);
    struct tensor *pooled = nn_linear_forward(&p->text_projection_2, clip_text_pooled(&p->text_encoder_2, ids2, last));
    if (!pooled) return tensor_scope_return(NULL);
    const int64_t n = h1->shape[0], d = p->unet.cross_attention_dim, r = pooled_rows(p);
    struct tensor *hs[2] = {h1, h2};
    struct tensor *tokens = ag_concat(2, hs, 2);
    /* the pooled vector laid out over r rows of d, zero-padded */
    struct tensor *prow = pooled;
    if (r * d > p->pooled_dim) {
        struct tensor *pp[2] = {pooled, tensor_zeros(pooled->dtype, TENSOR_SHAPE(n, r * d - p->pooled_dim),
                                                     tensor_device(pooled))};
        prow = ag_concat(2, pp, 1);
    }
    struct tensor *rows[2] = {tokens, ag_reshape(prow, TENSOR_SHAPE(n, r, d))};
    return tensor_scope_return(ag_concat(2, rows, 1));
}

struct tensor *sd_pipeline_encode(const struct sd_pipeline *p, struct tensor *ids)
{
    if (!ids) return NULL;
    if (p->xl) return encode_xl(p, ids);
    tensor_scope_begin();
    struct tensor *d = tensor_to_device(ids, p->device), *h;
    if (p->clip_skip) {   /* hidden_states[-(clip_skip + 1)], then final_layer_norm (diffusers' encode_prompt) */
        h = clip_text_hidden(&p->text_encoder, d, (int)p->text_encoder.cfg.num_hidden_layers - p->clip_skip, NULL);
        h = h ? nn_layer_norm_forward(&p->text_encoder.final_layer_norm, h) : NULL;
    } else {
        h = clip_text_forward(&p->text_encoder, d);
    }
    return tensor_scope_return(h);
}

/* every row of ids the empty prompt's (bos, eos, then padding)? */
static bool all_empty(const struct sd_pipeline *p, struct tensor *ids)
{
    struct tensor *c = host_ids(ids);
    if (!c || c->ndim != 2 || c->shape[1] < 2) return false;
    const int32_t *v = tensor_data_ptr(c);
    for (int64_t r = 0; r < c->shape[0]; r++)
        if (v[r * c->shape[1]] != clip_bos_id(p->tokenizer) || v[r * c->shape[1] + 1] != clip_eos_id(p->tokenizer))
            return false;
    return true;
}

struct tensor *sd_pipeline_context(const struct sd_pipeline *p, struct tensor *uncond_ids, struct tensor *cond_ids)
{
    if (!uncond_ids || !cond_ids) return NULL;
    tensor_scope_begin();
    if (p->xl && p->force_zeros && all_empty(p, uncond_ids)) {
        /* diffusers' SDXL with negative_prompt=None: zeros for the whole unconditional half */
        struct tensor *c = sd_pipeline_encode(p, cond_ids);
        struct tensor *halves[2] = {c ? tensor_zeros(c->dtype, c->ndim, c->shape, tensor_device(c)) : NULL, c};
        return tensor_scope_return(c ? ag_concat(2, halves, 0) : NULL);
    }
    struct tensor *ids[2] = {uncond_ids, cond_ids};
    struct tensor *both = ag_concat(2, ids, 0);
    return tensor_scope_return(sd_pipeline_encode(p, both));
}

/* the UNet on a context: SDXL's takes the pooled rows out as text_embeds, with time ids (H, W, 0, 0,
 * H, W) of x's image size (diffusers' original_size = target_size = (height, width), no crop) */
static struct tensor *unet_call(struct sd_pipeline *p, struct tensor *x, struct tensor *ts, struct tensor *context)
{
    if (!p->xl) return sd_unet_forward(&p->unet, x, ts, context);
    const int64_t rows = context->shape[0], r = pooled_rows(p), d = p->unet.cross_attention_dim;
    if (context->ndim != 3 || context->shape[1] != p->text_rows + r || context->shape[2] != d) {
        char a[96];
        tensor_fail(STATUS_SHAPE, "SDXL UNet call: context %s, expected [n, %lld, %lld] (77 tokens and the pooled rows)",
                    tensor_shape_str(context, a, sizeof a), (long long)(p->text_rows + r), (long long)d);
        return NULL;
    }
    tensor_scope_begin();
    struct tensor *ehs = ag_narrow(context, 1, 0, p->text_rows);
    struct tensor *pooled = ag_narrow(ag_reshape(ag_narrow(context, 1, p->text_rows, r), TENSOR_SHAPE(rows, r * d)), 1, 0,
                                      p->pooled_dim);
    const double f = (double)((int64_t)1 << (p->vae.cfg.n_blocks - 1));
    const double H = f * (double)x->shape[2], W = f * (double)x->shape[3];
    double *ids = malloc((size_t)rows * 6 * sizeof *ids);
    if (!ids) {
        tensor_fail(STATUS_OOM, "out of host memory");
        return tensor_scope_return(NULL);
    }
    for (int64_t i = 0; i < rows; i++) {
        const double v[6] = {H, W, 0, 0, H, W};
        memcpy(ids + i * 6, v, sizeof v);
    }
    struct tensor *time_ids = tensor_from_data(DTYPE_F64, TENSOR_SHAPE(rows, 6), ids);
    free(ids);
    const struct sd_unet_added added = {pooled, time_ids};
    return tensor_scope_return(sd_unet_forward_added(&p->unet, x, ts, ehs, &added));
}

struct tensor *sd_pipeline_eps(struct sd_pipeline *p, struct tensor *x, int64_t t, struct tensor *context,
                               double guidance)
{
    if (!x || !context) return NULL;
    const int64_t n = x->shape[0];
    tensor_scope_begin();
    struct tensor *ts = tensor_from_data(DTYPE_I64, TENSOR_SHAPE(1), &t);
    if (context->shape[0] == n) {   /* no guidance: the rows given */
        return tensor_scope_return(unet_call(p, x, ts, context));
    }
    if (context->shape[0] != 2 * n) {
        tensor_fail(STATUS_SHAPE, "guided step: context has %lld rows, expected %lld ([uncond; cond]) for %lld latents",
                    (long long)context->shape[0], (long long)(2 * n), (long long)n);
        return tensor_scope_return(NULL);
    }
    if (guidance <= 1.0) {   /* eps = eps_c: only the conditional half is needed */
        struct tensor *cond = ag_narrow(context, 0, n, n);
        return tensor_scope_return(unet_call(p, x, ts, cond));
    }
    struct tensor *xs[2] = {x, x};
    struct tensor *eps = unet_call(p, ag_concat(2, xs, 0), ts, context);
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
