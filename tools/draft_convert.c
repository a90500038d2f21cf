/* draft_convert.c — `draft-convert`: a Stable Diffusion 1.x/2.x/XL model or LoRA into the files other tools read.
 *
 *   draft-convert --ckpt sd-v1-4.ckpt --model CONFIGS --out sd14        original checkpoint -> diffusers folder
 *   draft-convert --model sd14 --lora run/lora.safetensors:0.8 --out sd14-draft   LoRA merged into the weights
 *   draft-convert --model sd14 --lora run/lora.safetensors --lora-out k.safetensors --format kohya
 *
 * Thin over diffusion/: sd_pipeline_load(_single_file), sd_lora_load/combine/merge/save and
 * sd_pipeline_save. The folder loads in diffusers and transformers as in this project. */
#include "diffusion/lora.h"
#include "draft/run.h"
#include "nn/file.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LORAS 16

static void usage(FILE *f)
{
    fprintf(f,
            "usage: draft-convert [--model DIR] [--ckpt FILE] [--lora FILE[:S] ...] (--out DIR | --lora-out FILE)\n"
            "                     [options]\n"
            "Writes a Stable Diffusion 1.x/2.x/XL model as a diffusers folder (configs, tokenizer, scheduler and\n"
            "safetensors weights under diffusers' names, as diffusers and transformers read them), or LoRA\n"
            "files as one adapter in another format.\n"
            "  --model DIR        diffusers folder: configs, tokenizer, scheduler (and weights unless --ckpt);\n"
            "                     without it, the embedded emoji model (models/emoji)\n"
            "  --ckpt FILE        original single-file weights (sd-v1-4.ckpt, SD 2.x's v2-1_768-ema-pruned.ckpt,\n"
            "                     SDXL's sd_xl_base_1.0.safetensors, or a .safetensors with their keys)\n"
            "  --lora FILE[:S]    a LoRA file (diffusers/PEFT or kohya names) with scale S (default 1);\n"
            "                     repeatable: several LoRAs are combined into one adapter\n"
            "  --out DIR          the diffusers folder to write (new, or empty), the LoRAs merged into the UNet\n"
            "  --dtype D          f32, f16 or bf16: the weights' dtype in --out (default f32; a merge is computed\n"
            "                     in f64 and rounded once)\n"
            "  --lora-out FILE    the --lora files, scaled and combined, as one adapter in FILE\n"
            "  --format F         peft (diffusers' load_lora_weights; the default) or kohya (A1111, ComfyUI)\n"
            "  --version          the version, the commit and the backends\n");
}

int main(int argc, char **argv)
{
    const char *model = NULL, *ckpt = NULL, *out = NULL, *lora_out = NULL;
    char lora_paths[MAX_LORAS][PATH_MAX];
    const char *lora_path_ptrs[MAX_LORAS];
    double lora_scales[MAX_LORAS];
    int n_loras = 0;
    enum dtype dtype = DTYPE_F32;
    enum sd_lora_format format = SD_LORA_PEFT;
    char embedded[1024];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (draft_tool_info_flag(a, usage)) return 0;   /* --version, --help */
        if (strncmp(a, "--", 2) || i + 1 >= argc) {
            fprintf(stderr, "draft-convert: %s '%s' (see --help)\n",
                    strncmp(a, "--", 2) ? "unexpected argument" : "missing value for", a);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--ckpt")) ckpt = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--lora-out")) lora_out = v;
        else if (!strcmp(a, "--dtype")) {
            if (!strcmp(v, "f32")) dtype = DTYPE_F32;
            else if (!strcmp(v, "f16")) dtype = DTYPE_F16;
            else if (!strcmp(v, "bf16")) dtype = DTYPE_BF16;
            else {
                fprintf(stderr, "draft-convert: --dtype is f32, f16 or bf16, got '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--format")) {
            if (!strcmp(v, "peft")) format = SD_LORA_PEFT;
            else if (!strcmp(v, "kohya")) format = SD_LORA_KOHYA;
            else {
                fprintf(stderr, "draft-convert: --format is peft or kohya, got '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--lora")) {
            if (n_loras == MAX_LORAS) {
                fprintf(stderr, "draft-convert: more than %d --lora\n", MAX_LORAS);
                return 2;
            }
            const int k = draft_lora_arg_parse_list(v, lora_paths[n_loras], PATH_MAX, &lora_scales[n_loras], 1);
            if (k <= 0) {
                fprintf(stderr, "draft-convert: --lora '%s': %s\n", v,
                        k == -2 ? "what follows the last ':' is not a scale (a number)"
                        : k ? "one scale per file (draft-sample sweeps a list)" : "the path is too long");
                return 2;
            }
            lora_path_ptrs[n_loras] = lora_paths[n_loras];
            n_loras++;
        } else {
            fprintf(stderr, "draft-convert: unknown option '%s' (see --help)\n", a);
            return 2;
        }
    }
    if (!out && !lora_out) {
        fprintf(stderr, "draft-convert: nothing to write: give --out DIR or --lora-out FILE (see --help)\n");
        return 2;
    }
    if (lora_out && !n_loras) {
        fprintf(stderr, "draft-convert: --lora-out needs at least one --lora\n");
        return 2;
    }
    /* what the writes would refuse, said before a model is loaded (a .ckpt takes a while) */
    if ((out && !*out) || (lora_out && !*lora_out)) {
        fprintf(stderr, "draft-convert: %s is empty (see --help)\n", out && !*out ? "--out" : "--lora-out");
        return 2;
    }
    if ((out && sd_pipeline_save_check(out)) || (lora_out && nn_file_check_writable(lora_out))) {
        fprintf(stderr, "draft-convert: %s\n", tensor_error());
        return 1;
    }
    if (!model && ckpt) {
        fprintf(stderr, "draft-convert: --ckpt needs --model for the configs and tokenizer (see --help)\n");
        return 2;
    }
    if (!model) {
        if (draft_embedded_model(embedded, sizeof embedded)) {
            fprintf(stderr, "draft-convert: %s\n", tensor_error());
            return 1;
        }
        model = embedded;
    }

    struct sd_pipeline p;
    struct sd_lora combined;
    memset(&combined, 0, sizeof combined);
    enum status s = ckpt ? sd_pipeline_load_single_file(&p, ckpt, model, dtype, DEVICE_CPU)
                         : sd_pipeline_load(&p, model, dtype, DEVICE_CPU);
    if (!s && n_loras) s = sd_lora_load_combined(&combined, &p.unet, n_loras, lora_path_ptrs, lora_scales);
    if (!s && lora_out) {
        s = sd_lora_save(&combined, lora_out, format);
        if (!s)
            fprintf(stderr, "draft-convert: %s: %d LoRA file%s as one %s adapter of rank %d\n", lora_out, n_loras,
                    n_loras == 1 ? "" : "s", format == SD_LORA_KOHYA ? "kohya" : "diffusers/PEFT", combined.rank);
    }
    if (!s && out) {
        if (n_loras) s = sd_lora_merge(&combined, &p.unet, 1.0);
        if (!s) s = sd_pipeline_save(&p, out);
        if (!s)
            fprintf(stderr, "draft-convert: %s: a diffusers folder (%s weights%s%s)\n", out, dtype_name(dtype),
                    ckpt ? ", from " : "", ckpt ? ckpt : "");
    }
    if (s) fprintf(stderr, "draft-convert: %s\n", tensor_error());
    sd_lora_free(&combined);
    sd_pipeline_free(&p);
    return s ? 1 : 0;
}
