/* pretrain.c — the stages of draft/pretrain.h: BPE, CLIP, VAE, UNet, export. */
#include "draft/pretrain.h"
#include "nn/file.h"
#include "nn/weights.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "diffusion/ddim.h"
#include "diffusion/pipeline.h"
#include "diffusion/tokenizer.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"
#include "draft/image.h"
#include "draft/reward.h"
#include "nn/optim.h"

static volatile sig_atomic_t stop_requested;
void draft_pretrain_request_stop(void) { stop_requested = 1; }
void draft_pretrain_clear_stop(void) { stop_requested = 0; }

static const char *const stage_names[DRAFT_PT_N_STAGES] = {"bpe", "clip", "vae", "unet"};
const char *draft_pretrain_stage_name(enum draft_pretrain_stage s)
{
    return s >= 0 && s < DRAFT_PT_N_STAGES ? stage_names[s] : "?";
}

void draft_pretrain_config_default(struct draft_pretrain_config *c)
{
    memset(c, 0, sizeof *c);
    c->out_dir = "runs/pretrain";
    c->seed = 1;
    c->held_modulus = 10;
    c->ckpt_every = 200;
    c->eval_every = 0;
    c->progress = 1;
    c->vocab_size = 1024;
    c->text_hidden = 128, c->text_layers = 3, c->text_heads = 4, c->text_mlp = 512;
    c->vision_hidden = 128, c->vision_layers = 3, c->vision_heads = 4, c->vision_mlp = 512;
    c->patch_size = 4, c->projection_dim = 128;
    c->vae_n_blocks = 2;
    c->vae_channels[0] = 32, c->vae_channels[1] = 64;
    c->vae_layers = 1, c->vae_groups = 16, c->latent_channels = 4;
    c->kl_weight = 1e-3;
    c->unet_n_blocks = 3;
    c->unet_channels[0] = 64, c->unet_channels[1] = 128, c->unet_channels[2] = 192;
    c->unet_layers = 1, c->unet_heads = 4, c->unet_groups = 32;
    c->cond_dropout = 0.1;
    c->clip = (struct draft_pretrain_opt){600, 64, 1e-3, 50};
    c->vae = (struct draft_pretrain_opt){1000, 32, 1e-3, 50};
    c->unet = (struct draft_pretrain_opt){2000, 32, 5e-4, 100};
    c->n_samples = 16, c->sample_steps = 30, c->guidance = 5.0;
}

enum status draft_pretrain_config_check(const struct draft_pretrain_config *c)
{
    if (!c->out_dir || !*c->out_dir) return tensor_fail(STATUS_VALUE, "pretrain: an output folder is needed");
    if (c->held_modulus < 2) return tensor_fail(STATUS_VALUE, "pretrain: held_modulus must be >= 2 (got %d)", c->held_modulus);
    if (c->vocab_size < 600 || c->vocab_size > 49408)
        return tensor_fail(STATUS_VALUE, "pretrain: vocab_size must be in [600, 49408] (512 byte tokens + specials + merges), got %d",
                           c->vocab_size);
    const struct draft_pretrain_opt *o[3] = {&c->clip, &c->vae, &c->unet};
    for (int i = 0; i < 3; i++)
        if (o[i]->steps < 0 || o[i]->batch < 1 || !(o[i]->lr > 0) || o[i]->warmup < 0)
            return tensor_fail(STATUS_VALUE, "pretrain %s: steps >= 0, batch >= 1, lr > 0 and warmup >= 0 needed (got %d, %d, %g, %d)",
                               stage_names[i + 1], o[i]->steps, o[i]->batch, o[i]->lr, o[i]->warmup);
    if (c->text_hidden < 1 || c->text_heads < 1 || c->text_hidden % c->text_heads || c->text_layers < 1 || c->text_mlp < 1 ||
        c->vision_hidden < 1 || c->vision_heads < 1 || c->vision_hidden % c->vision_heads || c->vision_layers < 1 ||
        c->vision_mlp < 1 || c->patch_size < 1 || c->projection_dim < 1)
        return tensor_fail(STATUS_VALUE, "pretrain clip: widths must be positive and divisible by the head counts");
    if (c->vae_n_blocks < 1 || c->vae_n_blocks > DRAFT_PRETRAIN_MAX_BLOCKS || c->vae_layers < 1 || c->vae_groups < 1 ||
        c->latent_channels < 1 || !(c->kl_weight >= 0))
        return tensor_fail(STATUS_VALUE, "pretrain vae: bad block count / layers / groups / latent channels / kl_weight");
    for (int i = 0; i < c->vae_n_blocks; i++)
        if (c->vae_channels[i] < 1 || c->vae_channels[i] % c->vae_groups)
            return tensor_fail(STATUS_VALUE, "pretrain vae: channels %lld not divisible by %d groups", (long long)c->vae_channels[i],
                               c->vae_groups);
    if (c->unet_n_blocks < 2 || c->unet_n_blocks > DRAFT_PRETRAIN_MAX_BLOCKS || c->unet_layers < 1 || c->unet_heads < 1 ||
        c->unet_groups < 1 || !(c->cond_dropout >= 0 && c->cond_dropout < 1))
        return tensor_fail(STATUS_VALUE, "pretrain unet: 2..%d blocks, layers/heads/groups >= 1, cond_dropout in [0, 1) needed",
                           DRAFT_PRETRAIN_MAX_BLOCKS);
    for (int i = 0; i < c->unet_n_blocks; i++)
        if (c->unet_channels[i] < 1 || c->unet_channels[i] % c->unet_groups || c->unet_channels[i] % c->unet_heads)
            return tensor_fail(STATUS_VALUE, "pretrain unet: channels %lld must be divisible by groups %d and heads %d",
                               (long long)c->unet_channels[i], c->unet_groups, c->unet_heads);
    if (c->n_samples < 0 || (c->n_samples > 0 && (c->sample_steps < 1 || c->sample_steps > 1000)))
        return tensor_fail(STATUS_VALUE, "pretrain: n_samples >= 0 and sample_steps in 1..1000 needed");
    return STATUS_OK;
}

/* ---------------------------------------------------------------- files */

static enum status copy_file(const char *from, const char *to)
{
    size_t n;
    char *buf = nn_file_read(from, (size_t)1 << 30, &n);
    if (!buf) return tensor_status();
    enum status s = nn_file_write_atomic(to, 1, (const void *const[]){buf}, &n);
    free(buf);
    return s;
}

static enum status write_textf(const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (!s) return tensor_fail(STATUS_OOM, "%s: out of memory", path);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    enum status st = draft_file_write_atomic(path, s, (size_t)n);
    free(s);
    return st;
}

#define PATHF(buf, ...) snprintf(buf, sizeof buf, __VA_ARGS__)

/* ---------------------------------------------------------------- determinism helpers */

static uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static uint64_t hash4(uint64_t seed, uint64_t stage, uint64_t step, uint64_t i)
{
    return mix64(mix64(mix64(mix64(seed) ^ stage) ^ step) ^ i);
}

/* the indices of step `step`: with replacement from the training items (or the first ones) */
static void batch_indices(const struct draft_pretrain_config *c, int stage, int64_t step, const int *train, int n_train,
                          int batch, int *out)
{
    for (int i = 0; i < batch; i++)
        out[i] = c->overfit ? train[i % n_train] : train[hash4(c->seed, (uint64_t)stage, (uint64_t)step, (uint64_t)i) % (uint64_t)n_train];
}

/* ---------------------------------------------------------------- generic training loop */

struct loop {
    const struct draft_pretrain_config *c;
    enum draft_pretrain_stage stage;
    struct nn_params *ps;
    const struct draft_pretrain_opt *opt;
    struct tensor *(*loss)(void *ctx, int64_t step);   /* with a graph; called inside a scope */
    void (*after)(void *ctx);                           /* after each update (may be NULL) */
    double (*eval)(void *ctx);                          /* held-out loss, no graph (NaN: none) */
    void *ctx;
};

static enum status ckpt_path(const struct loop *L, char *buf, size_t n)
{
    if (snprintf(buf, n, "%s/ckpt-%s.safetensors", L->c->out_dir, stage_names[L->stage]) >= (int)n)
        return tensor_fail(STATUS_IO, "%s: path too long", L->c->out_dir);
    return STATUS_OK;
}

static enum status ckpt_save(const struct loop *L, const struct nn_adamw *o, int64_t step)
{
    char path[1100];
    enum status s = ckpt_path(L, path, sizeof path);
    if (s) return s;
    int na = nn_adamw_state_count(o), n = L->ps->n + na;
    char **names = calloc((size_t)n, sizeof *names);
    struct tensor **ts = calloc((size_t)n, sizeof *ts);
    const char *mk[NN_ADAMW_META + 2], *mv[NN_ADAMW_META + 2];
    char mbuf[NN_ADAMW_META][32], stepbuf[32];
    if (!names || !ts) s = tensor_fail(STATUS_OOM, "checkpoint %s: out of memory", path);
    for (int i = 0; !s && i < L->ps->n; i++) {
        names[i] = strdup(L->ps->v[i].name);
        ts[i] = tensor_ref(L->ps->v[i].t);
        if (!names[i]) s = tensor_fail(STATUS_OOM, "checkpoint: out of memory");
    }
    if (!s) s = nn_adamw_state_collect(o, names + L->ps->n, ts + L->ps->n, mk, mv, mbuf);
    if (!s) {
        snprintf(stepbuf, sizeof stepbuf, "%lld", (long long)step);
        mk[NN_ADAMW_META] = "pretrain.step", mv[NN_ADAMW_META] = stepbuf;
        mk[NN_ADAMW_META + 1] = "pretrain.stage", mv[NN_ADAMW_META + 1] = stage_names[L->stage];
        s = safetensors_save(path, n, (const char *const *)names, ts, NN_ADAMW_META + 2, mk, mv);
    }
    for (int i = 0; i < n && names && ts; i++) {
        free(names[i]);
        tensor_free(ts[i]);
    }
    free(names);
    free(ts);
    return s;
}

/* *step = the checkpoint's step when resuming from one, else 0 */
static enum status ckpt_load(const struct loop *L, struct nn_adamw *o, int64_t *step)
{
    *step = 0;
    char path[1100];
    enum status s = ckpt_path(L, path, sizeof path);
    if (s || !L->c->resume || !nn_file_exists(path)) return s;
    struct safetensors *st = safetensors_open(path);
    if (!st) return tensor_status();
    const char *stg = safetensors_metadata(st, "pretrain.stage"), *sv = safetensors_metadata(st, "pretrain.step");
    char *end = NULL;
    long long v = sv ? strtoll(sv, &end, 10) : -1;
    if (!stg || strcmp(stg, stage_names[L->stage]) || !sv || *end || v < 0)
        s = tensor_fail(STATUS_FORMAT, "%s: not a '%s' checkpoint of draft-pretrain (metadata pretrain.stage/step)", path,
                        stage_names[L->stage]);
    if (!s) s = nn_params_load(L->ps, st, "", true);
    if (!s) s = nn_adamw_state_read(o, st);
    if (!s && o->step != v)
        s = tensor_fail(STATUS_FORMAT, "%s: optimizer step %lld differs from pretrain.step %lld", path, (long long)o->step, v);
    safetensors_close(st);
    if (s) return s;
    *step = v;
    return STATUS_OK;
}

static void progress_line(const struct loop *L, int64_t step, int64_t total, double loss, double sps, bool final)
{
    if (!L->c->progress) return;
    bool tty = isatty(2);
    int64_t every = total / 50 > 0 ? total / 50 : 1;
    if (!tty && !final && step % every) return;
    int width = 24, fill = total > 0 ? (int)(width * step / total) : width;
    char bar[32];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
    bar[width] = 0;
    double eta = sps * (double)(total - step);
    fprintf(stderr, "%s[%-4s] %6lld/%-6lld [%s] loss %.4f  %.3f s/step  ETA %d:%02d:%02d%s", tty ? "\r" : "",
            stage_names[L->stage], (long long)step, (long long)total, bar, loss, sps, (int)(eta / 3600),
            (int)fmod(eta / 60, 60), (int)fmod(eta, 60), tty && !final ? "" : "\n");
    fflush(stderr);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static enum status train_loop(const struct loop *L, struct draft_pretrain_stats *st)
{
    const struct draft_pretrain_config *c = L->c;
    struct nn_adamw o;
    struct nn_adamw_config oc = nn_adamw_config_default();
    oc.lr = L->opt->lr;
    oc.warmup_steps = L->opt->warmup;
    oc.max_grad_norm = 1.0;
    nn_params_set_trainable(L->ps, true);
    memset(st, 0, sizeof *st);
    st->first_loss = st->last_loss = st->eval_loss = NAN;
    st->n_params = nn_params_count(L->ps);
    enum status s = nn_adamw_init(&o, &oc, L->ps);
    int64_t step = 0;
    if (!s) s = ckpt_load(L, &o, &step);
    const int64_t total = L->opt->steps;
    if (!s && step > total)
        s = tensor_fail(STATUS_VALUE, "%s/ckpt-%s.safetensors is at step %lld, past the %lld steps asked for", c->out_dir,
                        stage_names[L->stage], (long long)step, (long long)total);
    if (!s && step > 0 && c->progress)
        fprintf(stderr, "[%-4s] resuming at step %lld of %lld\n", stage_names[L->stage], (long long)step, (long long)total);
    double t0 = now_s(), tail_sum = 0;
    int tail_n = 0;
    const int64_t tail_from = total - 20;
    while (!s && step < total) {
        if (stop_requested) {
            st->stopped = true;
            break;
        }
        ag_rng_set(mix64(c->seed ^ (0x1000u * (unsigned)L->stage)), (uint64_t)step << 24);
        tensor_scope_begin();
        struct tensor *loss = L->loss(L->ctx, step);
        double lv = loss ? tensor_get_flat(loss, 0) : NAN;
        if (!loss) s = tensor_status();
        else if (!isfinite(lv))
            s = tensor_fail(STATUS_VALUE, "pretrain %s: the loss is %g at step %lld; lower the learning rate (now %g) or "
                            "resume from the last checkpoint", stage_names[L->stage], lv, (long long)step, L->opt->lr);
        else s = ag_backward(loss, NULL, false);
        tensor_scope_end();
        if (!s) s = nn_adamw_step(&o, NULL, NULL);
        if (s) break;
        if (L->after) L->after(L->ctx);
        step++;
        st->steps_done++;
        if (st->steps_done == 1) st->first_loss = lv;
        if (step > tail_from) tail_sum += lv, tail_n++;
        double sps = (now_s() - t0) / st->steps_done;
        progress_line(L, step, total, lv, sps, step == total);
        if (c->eval_every > 0 && step % c->eval_every == 0 && step < total && L->eval && c->progress)
            fprintf(stderr, "%s[%-4s] step %lld held-out loss %.4f\n", isatty(2) ? "\n" : "", stage_names[L->stage],
                    (long long)step, L->eval(L->ctx));
        if (c->ckpt_every > 0 && step % c->ckpt_every == 0 && step < total) s = ckpt_save(L, &o, step);
    }
    if (st->steps_done) st->sec_per_step = (now_s() - t0) / st->steps_done;
    st->last_loss = tail_n ? tail_sum / tail_n : NAN;
    st->step = step;
    if (!s && (st->steps_done > 0 || st->stopped)) s = ckpt_save(L, &o, step);
    if (!s && st->stopped && c->progress)
        fprintf(stderr, "\n[%-4s] stopped at step %lld: checkpoint written, continue with --resume\n", stage_names[L->stage],
                (long long)step);
    if (!s && !st->stopped && L->eval) {
        st->eval_loss = L->eval(L->ctx);
        if (c->progress) fprintf(stderr, "[%-4s] held-out loss %.4f\n", stage_names[L->stage], st->eval_loss);
    }
    nn_adamw_free(&o);
    nn_params_set_trainable(L->ps, false);
    return s;
}

/* ---------------------------------------------------------------- configs as JSON */

static void int_list(char *buf, size_t n, int k, const int64_t *v)
{
    size_t p = 0;
    for (int i = 0; i < k && p < n; i++) p += (size_t)snprintf(buf + p, n - p, "%s%lld", i ? ", " : "", (long long)v[i]);
}

static void text_config_fill(const struct draft_pretrain_config *c, int vocab, int eos, struct clip_text_config *t)
{
    memset(t, 0, sizeof *t);
    t->vocab_size = vocab, t->hidden_size = c->text_hidden, t->intermediate_size = c->text_mlp;
    t->num_hidden_layers = (int)c->text_layers, t->num_attention_heads = (int)c->text_heads;
    t->max_position_embeddings = CLIP_CONTEXT, t->layer_norm_eps = 1e-5, t->hidden_act = CLIP_ACT_QUICK_GELU;
    t->eos_token_id = eos;
}

static void vision_config_fill(const struct draft_pretrain_config *c, struct clip_vision_config *v)
{
    memset(v, 0, sizeof *v);
    v->hidden_size = c->vision_hidden, v->intermediate_size = c->vision_mlp;
    v->num_hidden_layers = (int)c->vision_layers, v->num_attention_heads = (int)c->vision_heads;
    v->num_channels = 3, v->image_size = 32, v->patch_size = c->patch_size, v->projection_dim = c->projection_dim;
    v->layer_norm_eps = 1e-5, v->hidden_act = CLIP_ACT_QUICK_GELU;
}

/* the keys clip_text_config_read accepts */
static char *text_config_json(const struct clip_text_config *t, int bos, const char *indent)
{
    char *s = NULL;
    if (asprintf(&s,
                 "{\n%s  \"architectures\": [\"CLIPTextModel\"],\n%s  \"model_type\": \"clip_text_model\",\n"
                 "%s  \"vocab_size\": %lld,\n%s  \"hidden_size\": %lld,\n%s  \"intermediate_size\": %lld,\n"
                 "%s  \"num_hidden_layers\": %d,\n%s  \"num_attention_heads\": %d,\n%s  \"max_position_embeddings\": %lld,\n"
                 "%s  \"layer_norm_eps\": 1e-05,\n%s  \"hidden_act\": \"quick_gelu\",\n%s  \"bos_token_id\": %d,\n"
                 "%s  \"eos_token_id\": %lld,\n%s  \"pad_token_id\": %lld\n%s}",
                 indent, indent, indent, (long long)t->vocab_size, indent, (long long)t->hidden_size, indent,
                 (long long)t->intermediate_size, indent, t->num_hidden_layers, indent, t->num_attention_heads, indent,
                 (long long)t->max_position_embeddings, indent, indent, indent, bos, indent, (long long)t->eos_token_id,
                 indent, (long long)t->eos_token_id, indent) < 0)
        return NULL;
    return s;
}

static char *vision_config_json(const struct clip_vision_config *v, const char *indent)
{
    char *s = NULL;
    if (asprintf(&s,
                 "{\n%s  \"model_type\": \"clip_vision_model\",\n%s  \"hidden_size\": %lld,\n%s  \"intermediate_size\": %lld,\n"
                 "%s  \"num_hidden_layers\": %d,\n%s  \"num_attention_heads\": %d,\n%s  \"num_channels\": 3,\n"
                 "%s  \"image_size\": %lld,\n%s  \"patch_size\": %lld,\n%s  \"projection_dim\": %lld,\n"
                 "%s  \"layer_norm_eps\": 1e-05,\n%s  \"hidden_act\": \"quick_gelu\"\n%s}",
                 indent, indent, (long long)v->hidden_size, indent, (long long)v->intermediate_size, indent,
                 v->num_hidden_layers, indent, v->num_attention_heads, indent, indent, (long long)v->image_size, indent,
                 (long long)v->patch_size, indent, (long long)v->projection_dim, indent, indent, indent) < 0)
        return NULL;
    return s;
}

static char *vae_config_json(const struct draft_pretrain_config *c, double scaling)
{
    char ch[256], down[256] = "", up[256] = "";
    int_list(ch, sizeof ch, c->vae_n_blocks, c->vae_channels);
    for (int i = 0; i < c->vae_n_blocks; i++) {
        strcat(down, i ? ", \"DownEncoderBlock2D\"" : "\"DownEncoderBlock2D\"");
        strcat(up, i ? ", \"UpDecoderBlock2D\"" : "\"UpDecoderBlock2D\"");
    }
    char *s = NULL;
    if (asprintf(&s,
                 "{\n  \"_class_name\": \"AutoencoderKL\",\n  \"act_fn\": \"silu\",\n  \"block_out_channels\": [%s],\n"
                 "  \"down_block_types\": [%s],\n  \"up_block_types\": [%s],\n  \"in_channels\": 3,\n  \"out_channels\": 3,\n"
                 "  \"latent_channels\": %d,\n  \"layers_per_block\": %d,\n  \"norm_num_groups\": %d,\n  \"sample_size\": 32,\n"
                 "  \"scaling_factor\": %.9g\n}\n",
                 ch, down, up, c->latent_channels, c->vae_layers, c->vae_groups, scaling) < 0)
        return NULL;
    return s;
}

static char *unet_config_json(const struct draft_pretrain_config *c, int64_t cross_dim)
{
    char ch[256], down[512] = "", up[512] = "";
    int nb = c->unet_n_blocks;
    int_list(ch, sizeof ch, nb, c->unet_channels);
    for (int i = 0; i < nb; i++) {
        if (i) strcat(down, ", "), strcat(up, ", ");
        strcat(down, i < nb - 1 ? "\"CrossAttnDownBlock2D\"" : "\"DownBlock2D\"");
        strcat(up, i == 0 ? "\"UpBlock2D\"" : "\"CrossAttnUpBlock2D\"");
    }
    char *s = NULL;
    if (asprintf(&s,
                 "{\n  \"_class_name\": \"UNet2DConditionModel\",\n  \"act_fn\": \"silu\",\n  \"attention_head_dim\": %d,\n"
                 "  \"block_out_channels\": [%s],\n  \"center_input_sample\": false,\n  \"cross_attention_dim\": %lld,\n"
                 "  \"down_block_types\": [%s],\n  \"downsample_padding\": 1,\n  \"flip_sin_to_cos\": true,\n"
                 "  \"freq_shift\": 0,\n  \"in_channels\": %d,\n  \"layers_per_block\": %d,\n  \"mid_block_scale_factor\": 1,\n"
                 "  \"norm_eps\": 1e-05,\n  \"norm_num_groups\": %d,\n  \"out_channels\": %d,\n  \"sample_size\": %d,\n"
                 "  \"up_block_types\": [%s]\n}\n",
                 c->unet_heads, ch, (long long)cross_dim, down, c->latent_channels, c->unet_layers, c->unet_groups,
                 c->latent_channels, 32 >> (c->vae_n_blocks - 1), up) < 0)
        return NULL;
    return s;
}

static const char scheduler_json[] =
    "{\n  \"_class_name\": \"DDIMScheduler\",\n  \"beta_end\": 0.012,\n  \"beta_schedule\": \"scaled_linear\",\n"
    "  \"beta_start\": 0.00085,\n  \"clip_sample\": false,\n  \"num_train_timesteps\": 1000,\n"
    "  \"prediction_type\": \"epsilon\",\n  \"set_alpha_to_one\": false,\n  \"steps_offset\": 1\n}\n";

static const char model_index_json[] =
    "{\n  \"_class_name\": \"StableDiffusionPipeline\",\n  \"scheduler\": [\"diffusers\", \"DDIMScheduler\"],\n"
    "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n  \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"],\n"
    "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n}\n";

static enum status unet_init_json(struct sd_unet *u, const char *json, struct nn_params *ps)
{
    struct nn_config cfg;
    enum status s = nn_config_parse(&cfg, json, strlen(json), "unet config");
    if (!s) {
        s = sd_unet_init(u, &cfg, ps);
        nn_config_free(&cfg);
    }
    return s;
}

static void vae_config_fill(const struct draft_pretrain_config *c, struct sd_vae_config *v)
{
    memset(v, 0, sizeof *v);
    v->in_channels = v->out_channels = 3, v->latent_channels = c->latent_channels;
    v->n_blocks = c->vae_n_blocks;
    for (int i = 0; i < c->vae_n_blocks; i++) v->block_out_channels[i] = c->vae_channels[i];
    v->layers_per_block = c->vae_layers, v->norm_num_groups = c->vae_groups, v->norm_eps = 1e-6;
    v->scaling_factor = 1, v->sample_size = 32;
    v->use_quant_conv = v->use_post_quant_conv = v->mid_block_add_attention = true;
}

enum status draft_pretrain_count(const struct draft_pretrain_config *c, int vocab_size, struct draft_pretrain_sizes *out)
{
    memset(out, 0, sizeof *out);
    enum status s = draft_pretrain_config_check(c);
    if (s) return s;
    struct clip_text_config tc;
    struct clip_vision_config vc;
    struct sd_vae_config va;
    text_config_fill(c, vocab_size, vocab_size - 1, &tc);
    vision_config_fill(c, &vc);
    vae_config_fill(c, &va);
    struct nn_params ps;
    struct clip_text_model tm;
    struct clip_vision_model vm;
    struct sd_vae vae;
    struct sd_unet u;
    memset(&tm, 0, sizeof tm), memset(&vm, 0, sizeof vm), memset(&vae, 0, sizeof vae), memset(&u, 0, sizeof u);
    nn_params_init(&ps, DTYPE_F32, DEVICE_CPU);
    s = clip_text_init(&tm, &tc, &ps, "");
    out->text = nn_params_count(&ps);
    clip_text_free(&tm);
    nn_params_free(&ps);
    nn_params_init(&ps, DTYPE_F32, DEVICE_CPU);
    if (!s) s = clip_vision_init(&vm, &vc, &ps, "");
    out->vision = nn_params_count(&ps) + c->text_hidden * c->projection_dim + 1;   /* + text_projection, logit_scale */
    clip_vision_free(&vm);
    nn_params_free(&ps);
    nn_params_init(&ps, DTYPE_F32, DEVICE_CPU);
    if (!s) s = sd_vae_init_config(&vae, &va, &ps);
    out->vae = nn_params_count(&ps);
    nn_params_free(&ps);
    nn_params_init(&ps, DTYPE_F32, DEVICE_CPU);
    char *uj = s ? NULL : unet_config_json(c, c->text_hidden);
    if (!s && !uj) s = tensor_fail(STATUS_OOM, "out of memory");
    if (!s) s = unet_init_json(&u, uj, &ps);
    free(uj);
    out->unet = nn_params_count(&ps);
    sd_unet_free(&u);
    nn_params_free(&ps);
    return s;
}

/* ---------------------------------------------------------------- stage: BPE */

static enum status model_dir(const struct draft_pretrain_config *c, const char *sub, char *buf, size_t n)
{
    if (snprintf(buf, n, "%s/model%s%s", c->out_dir, sub ? "/" : "", sub ? sub : "") >= (int)n)
        return tensor_fail(STATUS_IO, "%s: path too long", c->out_dir);
    return nn_mkdir_p(buf);
}

static enum status split(const struct draft_pretrain_config *c, const struct draft_dataset *d, int **train, int *n_train,
                         int **held, int *n_held)
{
    if (!d || d->n < 1) return tensor_fail(STATUS_VALUE, "pretrain: the dataset is empty");
    if (d->size != 32) return tensor_fail(STATUS_VALUE, "pretrain: the model is 32x32; the dataset has %dx%d images", d->size, d->size);
    enum status s = draft_dataset_split(d, c->held_modulus, train, n_train, held, n_held);
    if (!s && *n_train < 1) {
        free(*train), free(*held);
        *train = *held = NULL;
        s = tensor_fail(STATUS_VALUE, "pretrain: no training items after the held-out split");
    }
    return s;
}

enum status draft_pretrain_bpe(const struct draft_pretrain_config *c, const struct draft_dataset *d)
{
    enum status s = draft_pretrain_config_check(c);
    int *train = NULL, *held = NULL, nt = 0, nh = 0;
    if (!s) s = split(c, d, &train, &nt, &held, &nh);
    char dir[1100];
    if (!s) s = model_dir(c, "tokenizer", dir, sizeof dir);
    const char **texts = s ? NULL : malloc(sizeof *texts * (size_t)nt);
    if (!s && !texts) s = tensor_fail(STATUS_OOM, "pretrain bpe: out of memory");
    for (int i = 0; !s && i < nt; i++) texts[i] = d->captions[train[i]];
    int n_merges = 0, n_vocab = 0;
    if (!s) s = draft_bpe_learn(texts, nt, c->vocab_size, 2, dir, &n_merges, &n_vocab);
    if (!s && c->progress) fprintf(stderr, "[bpe ] %d merges, vocabulary of %d tokens -> %s\n", n_merges, n_vocab, dir);
    free(texts);
    free(train), free(held);
    return s;
}

static struct clip_tokenizer *load_tokenizer(const struct draft_pretrain_config *c)
{
    char v[1100], m[1100];
    PATHF(v, "%s/model/tokenizer/vocab.json", c->out_dir);
    PATHF(m, "%s/model/tokenizer/merges.txt", c->out_dir);
    if (!nn_file_exists(v) || !nn_file_exists(m)) {
        tensor_fail(STATUS_IO, "pretrain: no tokenizer in %s/model/tokenizer (run the bpe stage first)", c->out_dir);
        return NULL;
    }
    return clip_tokenizer_load(v, m);
}

/* ---------------------------------------------------------------- stage: CLIP */

struct clip_ctx {
    const struct draft_pretrain_config *c;
    const struct draft_dataset *d;
    struct clip_text_model tm;
    struct clip_vision_model vm;
    struct nn_linear tproj;
    struct tensor *logit_scale;
    int32_t *ids;        /* [d->n][77] */
    int *len;            /* ids up to and including the eos */
    int *train, n_train, *held, n_held;
    int *idx;
};

static struct tensor *clip_batch_loss(struct clip_ctx *x, int n, const int *idx)
{
    int L = 2;
    for (int i = 0; i < n; i++) L = x->len[idx[i]] > L ? x->len[idx[i]] : L;
    /* the causal mask makes outputs up to the eos independent of the padding after it: the
     * pooled embedding of the first L positions equals the 77-token one */
    int32_t *ids = malloc(sizeof *ids * (size_t)n * (size_t)L);
    int64_t *tg = malloc(sizeof *tg * (size_t)n);
    if (!ids || !tg) {
        free(ids), free(tg);
        tensor_fail(STATUS_OOM, "pretrain clip: out of memory");
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        memcpy(ids + (size_t)i * L, x->ids + (size_t)idx[i] * CLIP_CONTEXT, sizeof *ids * (size_t)L);
        tg[i] = i;
    }
    tensor_scope_begin();
    struct tensor *tids = tensor_from_data(DTYPE_I32, 2, (int64_t[]){n, L}, ids);
    struct tensor *target = tensor_from_data(DTYPE_I64, 1, (int64_t[]){n}, tg);
    free(ids), free(tg);
    struct tensor *img = draft_dataset_batch(x->d, n, idx, DTYPE_F32);
    struct tensor *ie = ag_normalize(clip_vision_forward(&x->vm, draft_clip_preprocess(img, x->vm.cfg.image_size)), 1, 1e-12);
    struct tensor *te = ag_normalize(nn_linear_forward(&x->tproj, clip_text_pooled(&x->tm, tids, clip_text_forward(&x->tm, tids))),
                                     1, 1e-12);
    struct tensor *logits = ag_mul(ag_matmul(ie, ag_transpose(te, 0, 1)), ag_exp(x->logit_scale));
    struct tensor *loss = ag_scale(ag_add(ag_cross_entropy(logits, target), ag_cross_entropy(ag_transpose(logits, 0, 1), target)), 0.5);
    return tensor_scope_return(loss);
}

static struct tensor *clip_loss(void *ctx, int64_t step)
{
    struct clip_ctx *x = ctx;
    batch_indices(x->c, DRAFT_PT_CLIP, step, x->train, x->n_train, x->c->clip.batch, x->idx);
    return clip_batch_loss(x, x->c->clip.batch, x->idx);
}

static void clip_after(void *ctx)
{
    struct clip_ctx *x = ctx;   /* CLIP clamps the temperature at 100 */
    double v = tensor_get_flat(x->logit_scale, 0);
    if (v > log(100.0)) tensor_fill_(x->logit_scale, log(100.0));
    else if (v < 0) tensor_fill_(x->logit_scale, 0);
}

static double clip_eval(void *ctx)
{
    struct clip_ctx *x = ctx;
    if (x->n_held < 2) return NAN;
    int n = x->n_held < x->c->clip.batch ? x->n_held : x->c->clip.batch;
    ag_no_grad_begin();
    tensor_scope_begin();
    struct tensor *l = clip_batch_loss(x, n, x->held);
    double v = l ? tensor_get_flat(l, 0) : NAN;
    tensor_scope_end();
    ag_no_grad_end();
    return v;
}

static enum status save_prefixed(const struct nn_params *ps, const char *prefix, const char *path)
{
    int n = 0;
    const char **names = malloc(sizeof *names * (size_t)ps->n);
    struct tensor **ts = malloc(sizeof *ts * (size_t)ps->n);
    if (!names || !ts) {
        free(names), free(ts);
        return tensor_fail(STATUS_OOM, "%s: out of memory", path);
    }
    for (int i = 0; i < ps->n; i++)
        if (!strncmp(ps->v[i].name, prefix, strlen(prefix))) names[n] = ps->v[i].name, ts[n++] = ps->v[i].t;
    enum status s = safetensors_save(path, n, names, ts, 0, NULL, NULL);
    free(names), free(ts);
    return s;
}

enum status draft_pretrain_clip(const struct draft_pretrain_config *c, const struct draft_dataset *d,
                                struct draft_pretrain_stats *stats)
{
    struct draft_pretrain_stats st_local;
    if (!stats) stats = &st_local;
    memset(stats, 0, sizeof *stats);
    struct clip_ctx x;
    memset(&x, 0, sizeof x);
    x.c = c, x.d = d;
    struct nn_params ps;
    nn_params_init(&ps, DTYPE_F32, DEVICE_CPU);
    struct clip_tokenizer *tok = NULL;
    bool text_init = false, vision_init = false;
    enum status s = draft_pretrain_config_check(c);
    if (!s) s = split(c, d, &x.train, &x.n_train, &x.held, &x.n_held);
    if (!s && !(tok = load_tokenizer(c))) s = tensor_status();
    struct clip_text_config tc;
    struct clip_vision_config vc;
    if (!s) {
        text_config_fill(c, clip_vocab_size(tok), clip_eos_id(tok), &tc);
        vision_config_fill(c, &vc);
        text_init = true;
        s = clip_text_init(&x.tm, &tc, &ps, "");
    }
    if (!s) s = (vision_init = true, clip_vision_init(&x.vm, &vc, &ps, ""));
    if (!s) s = nn_linear_init(&x.tproj, &ps, "text_projection", tc.hidden_size, c->projection_dim, false);
    if (!s && !(x.logit_scale = nn_param_new(&ps, "", "logit_scale", 0, NULL))) s = tensor_status();
    if (!s) s = nn_params_init_default(&ps, c->seed * 7 + 1);
    if (!s) s = tensor_fill_(x.logit_scale, log(1 / 0.07));
    x.ids = s ? NULL : malloc(sizeof *x.ids * (size_t)d->n * CLIP_CONTEXT);
    x.len = s ? NULL : malloc(sizeof *x.len * (size_t)d->n);
    x.idx = s ? NULL : malloc(sizeof *x.idx * (size_t)c->clip.batch);
    if (!s && (!x.ids || !x.len || !x.idx)) s = tensor_fail(STATUS_OOM, "pretrain clip: out of memory");
    for (int i = 0; !s && i < d->n; i++) {
        int32_t *row = x.ids + (size_t)i * CLIP_CONTEXT;
        s = clip_tokenize_77(tok, d->captions[i], row);
        x.len[i] = CLIP_CONTEXT;
        for (int k = 1; k < CLIP_CONTEXT; k++)
            if (row[k] == clip_eos_id(tok)) {
                x.len[i] = k + 1;
                break;
            }
    }
    if (!s) {
        struct loop L = {c, DRAFT_PT_CLIP, &ps, &c->clip, clip_loss, clip_after, clip_eval, &x};
        s = train_loop(&L, stats);
    }
    /* outputs: the CLIPModel folder and the pipeline's text encoder (the same text tower) */
    char dir[1100], path[1300];
    if (!s && !stats->stopped) {
        char *tj = text_config_json(&tc, clip_bos_id(tok), "  "), *vj = vision_config_json(&vc, "  ");
        s = model_dir(c, "clip", dir, sizeof dir);
        if (!s && (!tj || !vj)) s = tensor_fail(STATUS_OOM, "out of memory");
        if (!s) PATHF(path, "%s/config.json", dir);
        if (!s) s = write_textf(path, "{\n  \"architectures\": [\"CLIPModel\"],\n  \"model_type\": \"clip\",\n"
                                       "  \"projection_dim\": %lld,\n  \"logit_scale_init_value\": 2.6592,\n"
                                       "  \"text_config\": %s,\n  \"vision_config\": %s\n}\n",
                                (long long)c->projection_dim, tj, vj);
        free(tj), free(vj);
        if (!s) PATHF(path, "%s/model.safetensors", dir);
        if (!s) s = nn_params_save(&ps, path);
        const char *files[] = {"vocab.json", "merges.txt"};
        for (int i = 0; !s && i < 2; i++) {
            char from[1300];
            PATHF(from, "%s/model/tokenizer/%s", c->out_dir, files[i]);
            PATHF(path, "%s/%s", dir, files[i]);
            s = copy_file(from, path);
        }
        if (!s) s = model_dir(c, "text_encoder", dir, sizeof dir);
        tj = s ? NULL : text_config_json(&tc, clip_bos_id(tok), "");
        if (!s && !tj) s = tensor_fail(STATUS_OOM, "out of memory");
        if (!s) PATHF(path, "%s/config.json", dir);
        if (!s) s = write_textf(path, "%s\n", tj);
        free(tj);
        if (!s) PATHF(path, "%s/model.safetensors", dir);
        if (!s) s = save_prefixed(&ps, "text_model.", path);
    }
    if (text_init) clip_text_free(&x.tm);
    if (vision_init) clip_vision_free(&x.vm);
    nn_params_free(&ps);
    clip_tokenizer_free(tok);
    free(x.ids), free(x.len), free(x.idx), free(x.train), free(x.held);
    return s;
}

/* ---------------------------------------------------------------- stage: VAE */

struct vae_ctx {
    const struct draft_pretrain_config *c;
    const struct draft_dataset *d;
    struct sd_vae vae;
    int *train, n_train, *held, n_held;
    int *idx;
};

static struct tensor *vae_loss(void *ctx, int64_t step)
{
    struct vae_ctx *x = ctx;
    const int B = x->c->vae.batch;
    batch_indices(x->c, DRAFT_PT_VAE, step, x->train, x->n_train, B, x->idx);
    tensor_scope_begin();
    struct tensor *img = draft_dataset_batch(x->d, B, x->idx, DTYPE_F32);
    struct tensor *mean = NULL, *logvar = NULL;
    if (sd_vae_encode(&x->vae, img, &mean, &logvar)) return tensor_scope_return(NULL);
    struct tensor *z = ag_add(mean, ag_mul(ag_exp(ag_scale(logvar, 0.5)), ag_randn(DTYPE_F32, 4, mean->shape, DEVICE_CPU)));
    struct tensor *rec = ag_mse_loss(sd_vae_decode(&x->vae, z), img);
    /* KL(N(mean, var) || N(0, 1)) per latent element, averaged */
    struct tensor *kl = ag_mean(ag_scale(ag_sub(ag_add(ag_square(mean), ag_exp(logvar)), ag_affine(logvar, 1, 1)), 0.5), 0, NULL,
                                false);
    return tensor_scope_return(ag_add(rec, ag_scale(kl, x->c->kl_weight)));
}

/* reconstruction MSE of the held-out items through the posterior mean */
static double vae_eval(void *ctx)
{
    struct vae_ctx *x = ctx;
    if (x->n_held < 1) return NAN;
    double sum = 0;
    int done = 0;
    ag_no_grad_begin();
    for (int i = 0; i < x->n_held; i += 64) {
        int n = x->n_held - i < 64 ? x->n_held - i : 64;
        tensor_scope_begin();
        struct tensor *img = draft_dataset_batch(x->d, n, x->held + i, DTYPE_F32), *mean = NULL, *logvar = NULL;
        struct tensor *l = sd_vae_encode(&x->vae, img, &mean, &logvar) ? NULL : ag_mse_loss(sd_vae_decode(&x->vae, mean), img);
        /* mean, logvar: owned by the open scope */
        double v = l ? tensor_get_flat(l, 0) : NAN;
        tensor_scope_end();
        sum += v * n, done += n;
    }
    ag_no_grad_end();
    return sum / done;
}

/* std of sampled latents over the training items (SD: 1 / std -> scaling_factor) */
static enum status vae_latent_std(struct vae_ctx *x, double *std)
{
    double s1 = 0, s2 = 0, cnt = 0;
    enum status s = STATUS_OK;
    ag_no_grad_begin();
    ag_rng_set(mix64(x->c->seed ^ 0x5ca1e), 0);
    for (int i = 0; !s && i < x->n_train; i += 64) {
        int n = x->n_train - i < 64 ? x->n_train - i : 64;
        tensor_scope_begin();
        struct tensor *img = draft_dataset_batch(x->d, n, x->train + i, DTYPE_F32), *mean = NULL, *logvar = NULL;
        s = sd_vae_encode(&x->vae, img, &mean, &logvar);
        /* mean, logvar: owned by the open scope */
        struct tensor *z = s ? NULL : ag_contiguous(ag_add(mean, ag_mul(ag_exp(ag_scale(logvar, 0.5)),
                                                                        ag_randn(DTYPE_F32, 4, mean->shape, DEVICE_CPU))));
        if (!s && !z) s = tensor_status();
        if (!s) {
            const float *p = tensor_data_ptr(z);
            for (int64_t k = 0; k < tensor_numel(z); k++) s1 += p[k], s2 += (double)p[k] * p[k], cnt++;
        }
        tensor_scope_end();
    }
    ag_no_grad_end();
    double var = cnt > 1 ? (s2 - s1 * s1 / cnt) / (cnt - 1) : 0;
    if (!s && !(var > 0)) s = tensor_fail(STATUS_VALUE, "pretrain vae: the latents have zero variance");
    *std = sqrt(var);
    return s;
}

enum status draft_pretrain_vae(const struct draft_pretrain_config *c, const struct draft_dataset *d,
                               struct draft_pretrain_stats *stats)
{
    struct draft_pretrain_stats st_local;
    if (!stats) stats = &st_local;
    memset(stats, 0, sizeof *stats);
    struct vae_ctx x;
    memset(&x, 0, sizeof x);
    x.c = c, x.d = d;
    struct nn_params ps;
    nn_params_init(&ps, DTYPE_F32, DEVICE_CPU);
    enum status s = draft_pretrain_config_check(c);
    if (!s) s = split(c, d, &x.train, &x.n_train, &x.held, &x.n_held);
    struct sd_vae_config vc;
    vae_config_fill(c, &vc);
    if (!s) s = sd_vae_init_config(&x.vae, &vc, &ps);
    if (!s) s = nn_params_init_default(&ps, c->seed * 7 + 2);
    x.idx = s ? NULL : malloc(sizeof *x.idx * (size_t)c->vae.batch);
    if (!s && !x.idx) s = tensor_fail(STATUS_OOM, "pretrain vae: out of memory");
    if (!s) {
        struct loop L = {c, DRAFT_PT_VAE, &ps, &c->vae, vae_loss, NULL, vae_eval, &x};
        s = train_loop(&L, stats);
    }
    if (!s && !stats->stopped) {
        double std = 0;
        s = vae_latent_std(&x, &std);
        char dir[1100], path[1300];
        if (!s) s = model_dir(c, "vae", dir, sizeof dir);
        char *j = s ? NULL : vae_config_json(c, 1 / std);
        if (!s && !j) s = tensor_fail(STATUS_OOM, "out of memory");
        if (!s) PATHF(path, "%s/config.json", dir);
        if (!s) s = write_textf(path, "%s", j);
        free(j);
        if (!s) PATHF(path, "%s/diffusion_pytorch_model.safetensors", dir);
        if (!s) s = nn_params_save(&ps, path);
        if (!s && c->progress) fprintf(stderr, "[vae ] latent std %.4f -> scaling_factor %.5f\n", std, 1 / std);
    }
    nn_params_free(&ps);
    free(x.idx), free(x.train), free(x.held);
    return s;
}

/* ---------------------------------------------------------------- stage: UNet */

struct unet_ctx {
    const struct draft_pretrain_config *c;
    struct sd_unet unet;
    struct sd_ddim sched;
    double scaling;
    int64_t lat_numel, emb_numel;   /* per item */
    int64_t lat_shape[3], emb_shape[2];
    float *lat_mean, *lat_std;      /* [d->n][lat_numel] */
    float *emb, *emb_empty;         /* [d->n][emb_numel], [emb_numel] */
    int *train, n_train, *held, n_held;
    int *idx;
};

/* the loss of items idx[0..n) with timesteps/dropout from (seed, key, step) */
static struct tensor *unet_batch_loss(struct unet_ctx *x, int n, const int *idx, uint64_t key, int64_t step, bool drop)
{
    float *lm = malloc(sizeof *lm * (size_t)(n * x->lat_numel)), *ls = malloc(sizeof *ls * (size_t)(n * x->lat_numel));
    float *em = malloc(sizeof *em * (size_t)(n * x->emb_numel));
    int64_t *ts = malloc(sizeof *ts * (size_t)n);
    if (!lm || !ls || !em || !ts) {
        free(lm), free(ls), free(em), free(ts);
        tensor_fail(STATUS_OOM, "pretrain unet: out of memory");
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        size_t L = (size_t)x->lat_numel, E = (size_t)x->emb_numel;
        memcpy(lm + i * L, x->lat_mean + (size_t)idx[i] * L, sizeof *lm * L);
        memcpy(ls + i * L, x->lat_std + (size_t)idx[i] * L, sizeof *ls * L);
        uint64_t h = hash4(x->c->seed, key, (uint64_t)step, (uint64_t)i);
        ts[i] = (int64_t)(h % 1000);
        bool empty = drop && (double)(h >> 11) * 0x1.0p-53 < x->c->cond_dropout;
        memcpy(em + i * E, empty ? x->emb_empty : x->emb + (size_t)idx[i] * E, sizeof *em * E);
    }
    tensor_scope_begin();
    int64_t ls4[4] = {n, x->lat_shape[0], x->lat_shape[1], x->lat_shape[2]}, es3[3] = {n, x->emb_shape[0], x->emb_shape[1]};
    struct tensor *mean = tensor_from_data(DTYPE_F32, 4, ls4, lm), *std = tensor_from_data(DTYPE_F32, 4, ls4, ls);
    struct tensor *ctxt = tensor_from_data(DTYPE_F32, 3, es3, em);
    struct tensor *t = tensor_from_data(DTYPE_I64, 1, (int64_t[]){n}, ts);
    free(lm), free(ls), free(em), free(ts);
    struct tensor *lat = ag_scale(ag_add(mean, ag_mul(std, ag_randn(DTYPE_F32, 4, ls4, DEVICE_CPU))), x->scaling);
    struct tensor *noise = ag_randn(DTYPE_F32, 4, ls4, DEVICE_CPU);
    return tensor_scope_return(sd_ddpm_loss(&x->unet, &x->sched, lat, t, noise, ctxt));
}

static struct tensor *unet_loss(void *ctx, int64_t step)
{
    struct unet_ctx *x = ctx;
    batch_indices(x->c, DRAFT_PT_UNET, step, x->train, x->n_train, x->c->unet.batch, x->idx);
    return unet_batch_loss(x, x->c->unet.batch, x->idx, DRAFT_PT_UNET, step, true);
}

static double unet_eval(void *ctx)
{
    struct unet_ctx *x = ctx;
    if (x->n_held < 1) return NAN;
    uint64_t s0, o0;
    ag_rng_get(&s0, &o0);
    ag_rng_set(mix64(x->c->seed ^ 0xe7a1), 0);
    double sum = 0;
    int done = 0, n_all = x->n_held < 256 ? x->n_held : 256;
    ag_no_grad_begin();
    for (int i = 0; i < n_all; i += 64) {
        int n = n_all - i < 64 ? n_all - i : 64;
        tensor_scope_begin();
        struct tensor *l = unet_batch_loss(x, n, x->held + i, 0xe7a1, i, false);
        sum += (l ? tensor_get_flat(l, 0) : NAN) * n, done += n;
        tensor_scope_end();
    }
    ag_no_grad_end();
    ag_rng_set(s0, o0);
    return sum / done;
}

/* text embeddings [77, D] of every caption and of "", and the VAE posterior of every image */
static enum status unet_precompute(struct unet_ctx *x, const struct draft_dataset *d)
{
    const struct draft_pretrain_config *c = x->c;
    char a[1300], b[1300];
    struct clip_tokenizer *tok = load_tokenizer(c);
    struct nn_params tp, vp;
    nn_params_init(&tp, DTYPE_F32, DEVICE_CPU);
    nn_params_init(&vp, DTYPE_F32, DEVICE_CPU);
    struct clip_text_model tm;
    struct sd_vae vae;
    memset(&tm, 0, sizeof tm);
    memset(&vae, 0, sizeof vae);
    struct clip_text_config tc;
    enum status s = tok ? STATUS_OK : tensor_status();
    bool tm_init = false;
    PATHF(a, "%s/model/text_encoder/config.json", c->out_dir);
    PATHF(b, "%s/model/text_encoder/model.safetensors", c->out_dir);
    if (!s && (!nn_file_exists(a) || !nn_file_exists(b)))
        s = tensor_fail(STATUS_IO, "pretrain unet: no text encoder in %s/model/text_encoder (run the clip stage first)", c->out_dir);
    if (!s) s = clip_text_config_load(&tc, a);
    if (!s) s = (tm_init = true, clip_text_init(&tm, &tc, &tp, ""));
    struct nn_weights *tw = NULL;
    if (!s && !(tw = nn_weights_open(b))) s = tensor_status();
    if (!s) s = clip_params_load(&tp, tw, "");
    nn_weights_close(tw);
    PATHF(a, "%s/model/vae/config.json", c->out_dir);
    PATHF(b, "%s/model/vae/diffusion_pytorch_model.safetensors", c->out_dir);
    if (!s && (!nn_file_exists(a) || !nn_file_exists(b)))
        s = tensor_fail(STATUS_IO, "pretrain unet: no VAE in %s/model/vae (run the vae stage first)", c->out_dir);
    if (!s) s = sd_vae_init(&vae, a, &vp);
    if (!s) s = sd_vae_load_file(&vae, b);
    if (!s && vae.cfg.latent_channels != c->latent_channels)
        s = tensor_fail(STATUS_VALUE, "pretrain unet: %s has %d latent channels, the config %d", a, vae.cfg.latent_channels,
                        c->latent_channels);
    if (!s) {
        x->scaling = vae.cfg.scaling_factor;
        int64_t h = 32 >> (vae.cfg.n_blocks - 1);
        x->lat_shape[0] = vae.cfg.latent_channels, x->lat_shape[1] = h, x->lat_shape[2] = h;
        x->lat_numel = vae.cfg.latent_channels * h * h;
        x->emb_shape[0] = CLIP_CONTEXT, x->emb_shape[1] = tc.hidden_size;
        x->emb_numel = CLIP_CONTEXT * tc.hidden_size;
        x->lat_mean = malloc(sizeof(float) * (size_t)(d->n * x->lat_numel));
        x->lat_std = malloc(sizeof(float) * (size_t)(d->n * x->lat_numel));
        x->emb = malloc(sizeof(float) * (size_t)(d->n * x->emb_numel));
        x->emb_empty = malloc(sizeof(float) * (size_t)x->emb_numel);
        if (!x->lat_mean || !x->lat_std || !x->emb || !x->emb_empty) s = tensor_fail(STATUS_OOM, "pretrain unet: out of memory");
    }
    int32_t *ids = s ? NULL : malloc(sizeof *ids * 64 * CLIP_CONTEXT);
    int *all = s ? NULL : malloc(sizeof *all * 64);
    if (!s && (!ids || !all)) s = tensor_fail(STATUS_OOM, "pretrain unet: out of memory");
    ag_no_grad_begin();
    for (int i0 = -1; !s && i0 < d->n; i0 += (i0 < 0 ? 1 : 64)) {
        /* i0 = -1: the empty caption alone */
        int n = i0 < 0 ? 1 : (d->n - i0 < 64 ? d->n - i0 : 64);
        for (int k = 0; !s && k < n; k++) s = clip_tokenize_77(tok, i0 < 0 ? "" : d->captions[i0 + k], ids + k * CLIP_CONTEXT);
        tensor_scope_begin();
        struct tensor *e = s ? NULL : ag_contiguous(clip_text_forward(&tm, tensor_from_data(DTYPE_I32, 2, (int64_t[]){n, CLIP_CONTEXT}, ids)));
        if (!s && !e) s = tensor_status();
        if (!s) memcpy(i0 < 0 ? x->emb_empty : x->emb + (size_t)i0 * x->emb_numel, tensor_data_ptr(e), sizeof(float) * (size_t)(n * x->emb_numel));
        if (!s && i0 >= 0) {
            for (int k = 0; k < n; k++) all[k] = i0 + k;
            struct tensor *mean = NULL, *logvar = NULL;
            s = sd_vae_encode(&vae, draft_dataset_batch(d, n, all, DTYPE_F32), &mean, &logvar);
            /* mean, logvar: owned by the open scope */
            struct tensor *m = s ? NULL : ag_contiguous(mean), *sd = s ? NULL : ag_contiguous(ag_exp(ag_scale(logvar, 0.5)));
            if (!s && (!m || !sd)) s = tensor_status();
            if (!s) {
                memcpy(x->lat_mean + (size_t)i0 * x->lat_numel, tensor_data_ptr(m), sizeof(float) * (size_t)(n * x->lat_numel));
                memcpy(x->lat_std + (size_t)i0 * x->lat_numel, tensor_data_ptr(sd), sizeof(float) * (size_t)(n * x->lat_numel));
            }
        }
        tensor_scope_end();
    }
    ag_no_grad_end();
    free(ids), free(all);
    if (tm_init) clip_text_free(&tm);
    nn_params_free(&tp);
    nn_params_free(&vp);
    clip_tokenizer_free(tok);
    if (!s && (int64_t)tc.hidden_size != c->text_hidden)
        s = tensor_fail(STATUS_VALUE, "pretrain unet: the text encoder is %lld wide, the config says %lld", (long long)tc.hidden_size,
                        (long long)c->text_hidden);
    return s;
}

enum status draft_pretrain_unet(const struct draft_pretrain_config *c, const struct draft_dataset *d,
                                struct draft_pretrain_stats *stats)
{
    struct draft_pretrain_stats st_local;
    if (!stats) stats = &st_local;
    memset(stats, 0, sizeof *stats);
    struct unet_ctx x;
    memset(&x, 0, sizeof x);
    x.c = c;
    sd_ddim_init_default(&x.sched);
    struct nn_params ps;
    nn_params_init(&ps, DTYPE_F32, DEVICE_CPU);
    enum status s = draft_pretrain_config_check(c);
    if (!s) s = split(c, d, &x.train, &x.n_train, &x.held, &x.n_held);
    if (!s) s = unet_precompute(&x, d);
    char dir[1100], path[1300];
    char *uj = s ? NULL : unet_config_json(c, c->text_hidden);
    if (!s && !uj) s = tensor_fail(STATUS_OOM, "out of memory");
    if (!s) s = model_dir(c, "unet", dir, sizeof dir);
    if (!s) PATHF(path, "%s/config.json", dir);
    if (!s) s = write_textf(path, "%s", uj);
    if (!s) s = sd_unet_init_file(&x.unet, path, &ps);
    free(uj);
    if (!s) s = nn_params_init_default(&ps, c->seed * 7 + 3);
    x.idx = s ? NULL : malloc(sizeof *x.idx * (size_t)c->unet.batch);
    if (!s && !x.idx) s = tensor_fail(STATUS_OOM, "pretrain unet: out of memory");
    if (!s) {
        struct loop L = {c, DRAFT_PT_UNET, &ps, &c->unet, unet_loss, NULL, unet_eval, &x};
        s = train_loop(&L, stats);
    }
    if (!s && !stats->stopped) {
        PATHF(path, "%s/diffusion_pytorch_model.safetensors", dir);
        s = nn_params_save(&ps, path);
        if (!s) s = model_dir(c, "scheduler", dir, sizeof dir);
        if (!s) PATHF(path, "%s/scheduler_config.json", dir);
        if (!s) s = write_textf(path, "%s", scheduler_json);
        if (!s) s = model_dir(c, NULL, dir, sizeof dir);
        if (!s) PATHF(path, "%s/model_index.json", dir);
        if (!s) s = write_textf(path, "%s", model_index_json);
    }
    sd_unet_free(&x.unet);
    sd_ddim_free(&x.sched);
    nn_params_free(&ps);
    free(x.idx), free(x.train), free(x.held);
    free(x.lat_mean), free(x.lat_std), free(x.emb), free(x.emb_empty);
    if (!s && !stats->stopped && c->n_samples > 0) {
        PATHF(path, "%s/samples.png", c->out_dir);
        s = draft_pretrain_samples(c, d, path);
    }
    return s;
}

/* ---------------------------------------------------------------- samples and export */

static const char *const fixed_prompts[] = {"red apple", "fire", "blue heart", "grinning face", "green tree", "yellow star"};
#define N_FIXED ((int)(sizeof fixed_prompts / sizeof *fixed_prompts))

enum status draft_pretrain_samples(const struct draft_pretrain_config *c, const struct draft_dataset *d, const char *png_path)
{
    int n = c->n_samples;
    if (n < 1) return tensor_fail(STATUS_VALUE, "pretrain samples: n_samples must be >= 1");
    int *train = NULL, *held = NULL, nt = 0, nh = 0;
    enum status s = split(c, d, &train, &nt, &held, &nh);
    const char **prompts = s ? NULL : calloc((size_t)n, sizeof *prompts);
    if (!s && !prompts) s = tensor_fail(STATUS_OOM, "out of memory");
    /* half held-out captions (spread over the split), the rest fixed prompts */
    int n_fixed = n / 2 < N_FIXED ? n / 2 : N_FIXED, n_held = nh < n - n_fixed ? nh : n - n_fixed;
    n_fixed = n - n_held < N_FIXED ? n - n_held : N_FIXED;
    n = n_held + n_fixed;
    for (int i = 0; !s && i < n_held; i++) prompts[i] = d->captions[held[(int64_t)i * nh / n_held]];
    for (int i = 0; !s && i < n_fixed; i++) prompts[n_held + i] = fixed_prompts[i];
    struct sd_pipeline p;
    char dir[1100];
    bool loaded = false;
    if (!s) PATHF(dir, "%s/model", c->out_dir);
    if (!s) s = (loaded = true, sd_pipeline_load(&p, dir, DTYPE_F32, DEVICE_CPU));
    if (!s) {
        const char **empty = calloc((size_t)n, sizeof *empty);
        if (!empty) s = tensor_fail(STATUS_OOM, "out of memory");
        for (int i = 0; !s && i < n; i++) empty[i] = "";
        ag_no_grad_begin();
        tensor_scope_begin();
        uint64_t s0, o0;
        ag_rng_get(&s0, &o0);
        ag_rng_set(mix64(c->seed ^ 0x5a3b1e), 0);
        int64_t h = sd_pipeline_latent_size(&p, 32);
        struct tensor *init = s ? NULL : ag_randn(DTYPE_F32, 4, (int64_t[]){n, p.vae.cfg.latent_channels, h, h}, DEVICE_CPU);
        ag_rng_set(s0, o0);
        struct tensor *ctx = s ? NULL : sd_pipeline_context(&p, sd_pipeline_tokenize(&p, n, empty), sd_pipeline_tokenize(&p, n, prompts));
        struct sd_sample_opts so = {c->sample_steps, c->guidance, 0};
        struct tensor *img = s ? NULL : sd_pipeline_sample(&p, init, ctx, &so, NULL);
        if (!s && !img) s = tensor_status();
        if (!s) s = draft_grid_save(png_path, img, n < 8 ? n : 8, 0, prompts);
        tensor_scope_end();
        ag_no_grad_end();
        free(empty);
        if (!s && c->progress) fprintf(stderr, "[unet] samples of %d prompts -> %s\n", n, png_path);
    }
    if (loaded) sd_pipeline_free(&p);
    free(prompts), free(train), free(held);
    return s;
}

/* a safetensors copy with its f32 tensors stored as dt (the others as they are) */
static enum status copy_safetensors_as(const char *from, const char *to, enum dtype dt)
{
    struct safetensors *st = safetensors_open(from);
    if (!st) return tensor_status();
    const char **names = calloc((size_t)st->n + 1, sizeof *names);
    struct tensor **ts = calloc((size_t)st->n + 1, sizeof *ts);
    enum status s = names && ts ? STATUS_OK : tensor_fail(STATUS_OOM, "%s: out of memory", from);
    for (int i = 0; !s && i < st->n; i++) {
        const struct safetensors_entry *e = &st->entries[i];
        names[i] = e->name;
        if (!(ts[i] = safetensors_load(st, e->name, e->dtype == DTYPE_F32 ? dt : e->dtype, DEVICE_CPU))) s = tensor_status();
    }
    if (!s) s = safetensors_save(to, st->n, names, ts, st->n_meta, (const char *const *)st->meta_keys,
                                 (const char *const *)st->meta_values);
    for (int i = 0; ts && i < st->n; i++) tensor_free(ts[i]);
    free(names), free(ts);
    safetensors_close(st);
    return s;
}

enum status draft_pretrain_export(const char *out_dir, const char *dest, const char *command, enum dtype dt)
{
    if (dt != DTYPE_F32 && dt != DTYPE_F16 && dt != DTYPE_BF16)
        return tensor_fail(STATUS_VALUE, "pretrain export: weights are stored as f32, f16 or bf16, not %s", dtype_name(dt));
    static const char *const files[] = {
        "model_index.json", "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json", "text_encoder/config.json", "text_encoder/model.safetensors",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json", "clip/config.json",
        "clip/model.safetensors", "clip/vocab.json", "clip/merges.txt",
    };
    if (!out_dir || !dest || !*dest) return tensor_fail(STATUS_VALUE, "pretrain export: a run folder and a destination are needed");
    char from[1300], to[1300];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        PATHF(from, "%s/model/%s", out_dir, files[i]);
        if (!nn_file_exists(from))
            return tensor_fail(STATUS_IO, "pretrain export: %s is missing (run every stage first)", from);
    }
    enum status s = STATUS_OK;
    for (size_t i = 0; !s && i < sizeof files / sizeof *files; i++) {
        PATHF(from, "%s/model/%s", out_dir, files[i]);
        PATHF(to, "%s/%s", dest, files[i]);
        char *slash = strrchr(to, '/');
        *slash = 0;
        s = nn_mkdir_p(to);
        *slash = '/';
        const size_t n = strlen(from);
        if (!s) s = dt != DTYPE_F32 && n > 12 && !strcmp(from + n - 12, ".safetensors") ? copy_safetensors_as(from, to, dt)
                                                                                       : copy_file(from, to);
    }
    if (!s && command) {
        PATHF(to, "%s/PRETRAIN_COMMAND.txt", dest);
        s = write_textf(to, "%s\n", command);
    }
    return s;
}
