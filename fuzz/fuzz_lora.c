/* fuzz_lora.c — libFuzzer target: arbitrary bytes as a LoRA file (what `--lora`, `--init-lora`
 * and draft-convert read) for a stand-in UNet: four attention projections named and shaped like
 * SD's, with no weights (sd_lora_load reads only their names and sizes). The loader must refuse
 * with a message or accept; an accepted adapter must have complete, finite-alpha modules, save in
 * both formats (diffusers/PEFT and kohya) and load back from each with the same rank, alpha and
 * values, and nothing may leak. Seeds: FUZZ_SEED_OUT=<folder> writes a PEFT and a kohya file of a
 * random adapter there (lora-peft.safetensors, lora-kohya.safetensors) before fuzzing starts.
 * Build and run: see fuzz/README.md. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diffusion/lora.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_lora: check failed: %s (line %d): %s\n", #c, __LINE__, tensor_error()); \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static struct sd_proj g_projs[4];
static struct sd_proj *g_proj_ptrs[4];
static struct sd_unet g_unet;
static char g_in[256], g_out[256];

static void cleanup(void)
{
    unlink(g_in);
    unlink(g_out);
}

static void proj_set(int i, const char *name, int64_t in, int64_t out)
{
    snprintf(g_projs[i].name, sizeof g_projs[i].name, "%s", name);
    g_projs[i].in_features = in;
    g_projs[i].out_features = out;
    g_proj_ptrs[i] = &g_projs[i];
}

static void write_file(const char *path, const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    CHECK(f && (size == 0 || fwrite(data, 1, size, f) == size) && fclose(f) == 0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    proj_set(0, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 8, 8);
    proj_set(1, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", 6, 8);   /* from the text */
    proj_set(2, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0", 8, 8);
    proj_set(3, "mid_block.attentions.0.transformer_blocks.0.attn1.to_v", 12, 12);
    g_unet.n_projs = g_unet.cap_projs = 4;
    g_unet.projs = g_proj_ptrs;
    const char *dir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(g_in, sizeof g_in, "%s/fuzz_lora_%d_in.safetensors", dir, (int)getpid());
    snprintf(g_out, sizeof g_out, "%s/fuzz_lora_%d_out.safetensors", dir, (int)getpid());
    atexit(cleanup);
    const char *seed = getenv("FUZZ_SEED_OUT");
    if (seed && *seed) {   /* rank 3, alpha 1.5, on three of the four projections; B not zero */
        struct sd_lora l;
        CHECK(sd_lora_init(&l, &g_unet, 3, 1.5, "to_q,to_k,to_v", DTYPE_F32, 7) == STATUS_OK);
        for (int i = 0; i < l.n; i++) {
            struct tensor *B = l.mods[i].B;
            for (int64_t j = 0; j < tensor_numel(B); j++) tensor_set_flat(B, j, 0.01 * (double)(j % 7) - 0.02);
        }
        char p[512];
        snprintf(p, sizeof p, "%s/lora-peft.safetensors", seed);
        CHECK(sd_lora_save(&l, p, SD_LORA_PEFT) == STATUS_OK);
        snprintf(p, sizeof p, "%s/lora-kohya.safetensors", seed);
        CHECK(sd_lora_save(&l, p, SD_LORA_KOHYA) == STATUS_OK);
        fprintf(stderr, "fuzz_lora: wrote the seeds %s/lora-{peft,kohya}.safetensors\n", seed);
        sd_lora_free(&l);
    }
    return 0;
}

/* b, loaded from a file a was saved to, holds a's adapter: rank, alpha (kohya keeps it as an f32
 * scalar) and every value of every module */
static void check_same(const struct sd_lora *a, const struct sd_lora *b, bool f32_alpha)
{
    CHECK(b->n == a->n && b->rank == a->rank);
    CHECK(f32_alpha ? fabs(b->alpha - a->alpha) <= 1e-6 * fabs(a->alpha) : b->alpha == a->alpha);
    for (int i = 0; i < a->n; i++) {
        CHECK(!strcmp(a->mods[i].name, b->mods[i].name));
        const struct tensor *t[2][2] = {{a->mods[i].A, a->mods[i].B}, {b->mods[i].A, b->mods[i].B}};
        for (int k = 0; k < 2; k++) {
            CHECK(tensor_same_shape(t[0][k], t[1][k]));
            for (int64_t j = 0; j < tensor_numel(t[0][k]); j++) {
                const double x = tensor_get_flat(t[0][k], j), y = tensor_get_flat(t[1][k], j);
                CHECK(x == y || (isnan(x) && isnan(y)));
            }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > (1u << 16)) return 0;   /* keep each input fast */
    write_file(g_in, data, size);
    struct sd_lora l;
    if (sd_lora_load(&l, &g_unet, g_in) != STATUS_OK) {
        CHECK(tensor_error()[0] && l.n == 0);
        sd_lora_free(&l);
        tensor_clear_error();
    } else {
        CHECK(l.n > 0 && l.n <= 4 && l.rank > 0 && l.alpha > 0 && isfinite(l.alpha));
        for (int i = 0; i < l.n; i++)
            CHECK(l.mods[i].A && l.mods[i].B && l.mods[i].A->shape[0] == l.rank && l.mods[i].B->shape[1] == l.rank);
        const enum sd_lora_format fmts[2] = {SD_LORA_PEFT, SD_LORA_KOHYA};
        for (int f = 0; f < 2; f++) {
            CHECK(sd_lora_save(&l, g_out, fmts[f]) == STATUS_OK);
            struct sd_lora back;
            CHECK(sd_lora_load(&back, &g_unet, g_out) == STATUS_OK);
            check_same(&l, &back, fmts[f] == SD_LORA_KOHYA);
            sd_lora_free(&back);
        }
        sd_lora_free(&l);
    }
    CHECK(tensor_live_count() == 0);
    return 0;
}
