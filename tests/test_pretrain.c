/* test_pretrain.c — the pre-training stages of the embedded model on a synthetic 16-image set
 * written here (no fonts, no shared data): each stage learns (overfitting one repeated batch
 * lowers its loss), a resumed run ends with the same weights as an uninterrupted one, the
 * exported folder loads as a pipeline and samples, its clip/ folder works as a reward, and
 * bad settings are refused. */
#include "tests/harness.h"
#include "diffusion/pipeline.h"
#include "draft/pretrain.h"
#include "draft/reward.h"
#include "nn/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* 16 images 32x32: a coloured disc or square on white, captioned by colour and shape */
static void make_dataset(struct draft_dataset *d)
{
    static const char *const colours[4] = {"red", "green", "blue", "yellow"};
    static const uint8_t rgb[4][3] = {{220, 30, 30}, {30, 200, 40}, {30, 60, 220}, {240, 220, 30}};
    static const char *const shapes[4] = {"circle", "square", "small circle", "small square"};
    ck_assert_int_eq(draft_dataset_init(d, 16, 32), STATUS_OK);
    for (int i = 0; i < 16; i++) {
        const int c = i % 4, sh = i / 4, r = sh >= 2 ? 7 : 12;
        uint8_t *px = d->pixels + (size_t)i * 32 * 32 * 3;
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++) {
                const int dx = x - 16, dy = y - 16;
                const bool in = (sh % 2 == 0) ? dx * dx + dy * dy <= r * r : abs(dx) <= r && abs(dy) <= r;
                for (int k = 0; k < 3; k++) px[(y * 32 + x) * 3 + k] = in ? rgb[c][k] : 255;
            }
        char cap[64];
        snprintf(cap, sizeof cap, "%s %s", colours[c], shapes[sh]);
        ck_assert_int_eq(draft_dataset_set_text(d, i, cap, "Shapes", "test", "0000"), STATUS_OK);
    }
}

static void small_config(struct draft_pretrain_config *c, const char *out)
{
    draft_pretrain_config_default(c);
    c->out_dir = out;
    c->progress = 0;
    c->overfit = true;
    c->held_modulus = 4;
    c->vocab_size = 600;
    c->text_hidden = 32, c->text_layers = 1, c->text_heads = 2, c->text_mlp = 64;
    c->vision_hidden = 32, c->vision_layers = 1, c->vision_heads = 2, c->vision_mlp = 64;
    c->patch_size = 8, c->projection_dim = 16;
    c->vae_channels[0] = 16, c->vae_channels[1] = 32, c->vae_groups = 8;
    c->unet_n_blocks = 2, c->unet_channels[0] = 32, c->unet_channels[1] = 32, c->unet_heads = 2, c->unet_groups = 8;
    c->clip = (struct draft_pretrain_opt){12, 8, 3e-3, 0};
    c->vae = (struct draft_pretrain_opt){12, 8, 3e-3, 0};
    c->unet = (struct draft_pretrain_opt){12, 8, 2e-3, 0};
    c->ckpt_every = 4;
    c->n_samples = 2, c->sample_steps = 2;
}

static void run_all(const struct draft_pretrain_config *c, const struct draft_dataset *d, bool check_learning)
{
    struct draft_pretrain_stats st;
    ck_assert_msg(draft_pretrain_bpe(c, d) == STATUS_OK, "bpe: %s", tensor_error());
    enum status (*stage[3])(const struct draft_pretrain_config *, const struct draft_dataset *,
                            struct draft_pretrain_stats *) = {draft_pretrain_clip, draft_pretrain_vae, draft_pretrain_unet};
    static const char *const names[3] = {"clip", "vae", "unet"};
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(stage[i](c, d, &st) == STATUS_OK, "%s: %s", names[i], tensor_error());
        printf("pretrain %s: loss %.5g -> %.5g in %d steps (%lld parameters, %.3f s/step)\n", names[i], st.first_loss,
               st.last_loss, st.steps_done, (long long)st.n_params, st.sec_per_step);
        if (check_learning) {
            ck_assert_msg(isfinite(st.first_loss) && isfinite(st.last_loss), "%s: non-finite loss", names[i]);
            ck_assert_msg(st.last_loss < st.first_loss, "%s did not learn: %g -> %g", names[i], st.first_loss,
                          st.last_loss);
        }
    }
}

/* dir_a/file and dir_b/file hold the same bytes */
static void assert_same_bytes(const char *dir_a, const char *dir_b, const char *file, const char *what)
{
    char pa[400], pb[400];
    snprintf(pa, sizeof pa, "%s/%s", dir_a, file);
    snprintf(pb, sizeof pb, "%s/%s", dir_b, file);
    size_t na, nb;
    unsigned char *da = test_slurp(pa, &na), *db = test_slurp(pb, &nb);
    ck_assert_msg(da && db && na == nb && !memcmp(da, db, na), "%s: %s", file, what);
    free(da);
    free(db);
}

START_TEST(test_stages_learn_and_resume)
{
    LEAK_CHECK_BEGIN();
    struct draft_dataset d;
    make_dataset(&d);
    char a[128], b[128], cmd[700], pa[300], pb[300];
    snprintf(a, sizeof a, "/tmp/draft_pt_a_%d", (int)getpid());
    snprintf(b, sizeof b, "/tmp/draft_pt_b_%d", (int)getpid());
    struct draft_pretrain_config c;
    small_config(&c, a);
    run_all(&c, &d, true);

    /* interrupted after 4 UNet steps (as a stop request would leave it), then resumed */
    small_config(&c, b);
    c.unet.steps = 4;
    run_all(&c, &d, false);
    small_config(&c, b);
    c.resume = true;
    struct draft_pretrain_stats st;
    ck_assert_msg(draft_pretrain_unet(&c, &d, &st) == STATUS_OK, "%s", tensor_error());
    ck_assert_int_eq(st.step, 12);
    static const char *const files[] = {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                                        "text_encoder/model.safetensors", "tokenizer/vocab.json"};
    snprintf(pa, sizeof pa, "%s/model", a);
    snprintf(pb, sizeof pb, "%s/model", b);
    for (int i = 0; i < 4; i++) assert_same_bytes(pa, pb, files[i], "differs between the resumed and the uninterrupted run");

    /* the folder is a pipeline: load, sample the right shape; clip/ is a reward */
    snprintf(pa, sizeof pa, "%s/model", a);
    struct sd_pipeline p;
    ck_assert_msg(sd_pipeline_load(&p, pa, DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
    tensor_scope_begin();
    const char *pr[2] = {"red circle", "blue square"}, *empty[2] = {"", ""};
    struct tensor *ctx = sd_pipeline_context(&p, sd_pipeline_tokenize(&p, 2, empty), sd_pipeline_tokenize(&p, 2, pr));
    const int64_t h = sd_pipeline_latent_size(&p, 32);
    struct tensor *x = ag_randn(DTYPE_F32, TENSOR_SHAPE(2, p.unet.in_channels, h, h), DEVICE_CPU);
    struct sd_sample_opts o = {.steps = 2, .guidance = 3.0, .eta = 0.0};
    ag_no_grad_begin();
    struct tensor *img = sd_pipeline_sample(&p, x, ctx, &o, NULL);
    ag_no_grad_end();
    ck_assert_msg(img != NULL, "%s", tensor_error());
    ck_assert_int_eq(img->shape[1], 3);
    ck_assert_int_eq(img->shape[2], 32);
    snprintf(cmd, sizeof cmd, "clip:%s/model/clip,text=red", a);
    struct draft_reward *r = draft_reward_create(cmd);
    ck_assert_msg(r != NULL, "%s", tensor_error());
    struct tensor *sc = draft_reward_score(r, img, pr);
    ck_assert_msg(sc != NULL && sc->shape[0] == 2, "%s", tensor_error());
    ck_assert(isfinite(tensor_get_flat(sc, 0)));
    draft_reward_free(r);
    tensor_scope_end();
    sd_pipeline_free(&p);
    snprintf(pa, sizeof pa, "%s/samples.png", a);
    ck_assert_int_eq(access(pa, R_OK), 0);

    /* export: f32 is a byte copy; f16 stores each f32 tensor rounded to f16 (the i64 ones as
     * they are), and the folder loads as a pipeline */
    char e[160];
    snprintf(e, sizeof e, "/tmp/draft_pt_e_%d", (int)getpid());
    ck_assert_msg(draft_pretrain_export(a, e, "draft-pretrain --test", DTYPE_F32) == STATUS_OK, "%s", tensor_error());
    snprintf(pa, sizeof pa, "%s/model", a);
    for (int i = 0; i < 4; i++) assert_same_bytes(pa, e, files[i], "the f32 export is not a copy");
    ck_assert_int_eq(draft_pretrain_export(a, e, NULL, DTYPE_I64), STATUS_VALUE);
    ck_assert_msg(draft_pretrain_export(a, e, "draft-pretrain --test", DTYPE_F16) == STATUS_OK, "%s", tensor_error());
    snprintf(pa, sizeof pa, "%s/model/unet/diffusion_pytorch_model.safetensors", a);
    snprintf(pb, sizeof pb, "%s/unet/diffusion_pytorch_model.safetensors", e);
    struct safetensors *sa = safetensors_open(pa), *sb = safetensors_open(pb);
    ck_assert(sa && sb);
    ck_assert_int_eq(sa->n, sb->n);
    for (int i = 0; i < sa->n; i++) {
        const struct safetensors_entry *eb = safetensors_find(sb, sa->entries[i].name);
        ck_assert_msg(eb && eb->dtype == DTYPE_F16, "%s: not stored as f16", sa->entries[i].name);
        tensor_scope_begin();
        struct tensor *want = tensor_to_dtype(safetensors_load(sa, eb->name, DTYPE_F32, DEVICE_CPU), DTYPE_F16);
        struct tensor *got = safetensors_load(sb, eb->name, DTYPE_F16, DEVICE_CPU);
        ck_assert(want && got && tensor_numel(want) == tensor_numel(got));
        ck_assert_msg(!memcmp(tensor_data_ptr(want), tensor_data_ptr(got), (size_t)tensor_numel(got) * 2), "%s: not f16(f32)", eb->name);
        tensor_scope_end();
    }
    safetensors_close(sa);
    safetensors_close(sb);
    snprintf(pb, sizeof pb, "%s/PRETRAIN_COMMAND.txt", e);
    ck_assert_int_eq(access(pb, R_OK), 0);
    ck_assert_msg(sd_pipeline_load(&p, e, DTYPE_F32, DEVICE_CPU) == STATUS_OK, "%s", tensor_error());
    sd_pipeline_free(&p);

    snprintf(cmd, sizeof cmd, "rm -rf %s %s %s", a, b, e);
    ck_assert_int_eq(system(cmd), 0);
    draft_dataset_free(&d);
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_bad_config)
{
    LEAK_CHECK_BEGIN();
    struct draft_pretrain_config c;
    small_config(&c, "/tmp/unused");
    c.vocab_size = 10;
    ck_assert_int_ne(draft_pretrain_config_check(&c), STATUS_OK);
    ck_assert_msg(strstr(tensor_error(), "vocab_size") != NULL, "%s", tensor_error());
    small_config(&c, "/tmp/unused");
    c.text_heads = 3;
    ck_assert_int_ne(draft_pretrain_config_check(&c), STATUS_OK);
    small_config(&c, "/tmp/unused");
    c.unet.lr = 0;
    ck_assert_int_ne(draft_pretrain_config_check(&c), STATUS_OK);
    ck_assert_msg(strstr(tensor_error(), "unet") != NULL, "%s", tensor_error());
    small_config(&c, "");
    ck_assert_int_ne(draft_pretrain_config_check(&c), STATUS_OK);
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("pretrain");
    TCase *tc = tcase_create("pretrain");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_bad_config);
    tcase_add_test(tc, test_stages_learn_and_resume);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
