/* lora.h — LoRA adapters on the UNet's attention projections (PEFT / diffusers semantics).
 *
 * An adapter holds, per target module, A = lora_A [r, in] and B = lora_B [out, r]; attached,
 * the projection computes y = W x + b + scale * alpha / r * B (A x) (sd_proj_forward).
 * A starts kaiming-uniform like PEFT (nn.init.kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(in),
 * 1/sqrt(in))) and B at zero, so a fresh adapter leaves the UNet unchanged.
 *
 * Files: diffusers/PEFT ("unet.<module>.lora_A.weight", alpha and rank in the safetensors
 * metadata) or kohya/A1111/ComfyUI ("lora_unet_<module with _>.lora_down.weight", ".lora_up",
 * ".alpha" scalar). Loading also reads PEFT keys without "unet.", and the older diffusers
 * attention-processor keys ("<attn>.processor.to_q_lora.down.weight"); text-encoder tensors
 * ("text_encoder.*", "lora_te*") are ignored.
 */
#ifndef DIFFUSION_LORA_H
#define DIFFUSION_LORA_H

#include "diffusion/unet.h"

#ifdef __cplusplus
extern "C" {
#endif

struct sd_lora_module {
    char name[160];          /* module path, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" */
    char kohya[200];         /* its kohya/A1111 key stem (sd_lora_kohya_stem), "" = from the name */
    int64_t in, out;
    struct tensor *A, *B;    /* borrowed from params: [rank, in], [out, rank] */
};

struct sd_lora {
    int rank;
    double alpha;            /* effective factor alpha / rank */
    int n;                   /* modules, in the UNet's parameter order */
    struct sd_lora_module *mods;
    /* "<module>.lora_A.weight" [r,in] and "<module>.lora_B.weight" [out,r] */
    struct nn_params params;
};

/* A new adapter of `rank` on every UNet projection whose name ends in one of the comma
 * separated `targets` suffixes (NULL: "to_q,to_k,to_v,to_out.0"), dtype dt (f32 or f64) on the
 * UNet's device. A is drawn from the engine's Philox stream with `seed` (the global generator
 * is restored afterwards), B is zero; all parameters require grad. */
enum status sd_lora_init(struct sd_lora *l, const struct sd_unet *u, int rank, double alpha, const char *targets,
                         enum dtype dt, uint64_t seed);
void sd_lora_free(struct sd_lora *l);   /* safe on a zeroed or failed adapter */

/* Point each target projection at the adapter with lora_scale = scale * alpha / rank. The
 * adapter must outlive the attachment. Shapes are checked; f32/f64 bases need the adapter in
 * their dtype. sd_lora_detach clears every projection of the UNet. */
enum status sd_lora_attach(const struct sd_lora *l, struct sd_unet *u, double scale);
void sd_lora_detach(struct sd_unet *u);

/* One adapter of rank sum(r_i) equal to sum_i scales[i] * alpha_i / r_i * B_i A_i: A's are
 * stacked (scaled) along the rank, B's side by side; out->alpha = out->rank, so attach it with
 * scale 1. Modules missing from an adapter count as zero. out gets the first adapter's dtype
 * and its parameters do not require grad. */
enum status sd_lora_combine(struct sd_lora *out, int n, const struct sd_lora *const *loras, const double *scales);

/* W += scale * alpha / r * B A in place (computed in f64, rounded once to W's dtype: f32, f64,
 * bf16 or f16). unmerge subtracts the same product: exact inverse in f64, within one rounding
 * of W's dtype otherwise. */
enum status sd_lora_merge(const struct sd_lora *l, struct sd_unet *u, double scale);
enum status sd_lora_unmerge(const struct sd_lora *l, struct sd_unet *u, double scale);

enum sd_lora_format {
    SD_LORA_PEFT,    /* diffusers load_lora_weights: "unet.<module>.lora_A.weight" / "lora_B.weight";
                      * metadata "lora_alpha", "rank" */
    SD_LORA_KOHYA,   /* "lora_unet_<module, '.' -> '_'>.lora_down.weight" / ".lora_up.weight" / ".alpha" (f32 scalar) */
};

/* "lora_unet_down_blocks_0_..._attn1_to_out_0" into buf */
const char *sd_lora_kohya_name(char *buf, size_t n, const char *module);
/* the kohya/A1111 key stem of a UNet projection as kohya's sd-scripts names it: diffusers' module
 * path for SD 1.x/2.x (sd_lora_kohya_name), Stability's original one for SDXL, whose UNet sd-scripts
 * builds in that layout ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"); files in
 * either naming load into either UNet */
const char *sd_lora_kohya_stem(char *buf, size_t n, const struct sd_unet *u, const char *module);

/* write atomically (temporary file + rename) in the adapter's dtype */
enum status sd_lora_save(const struct sd_lora *l, const char *path, enum sd_lora_format fmt);
/* Read any of the formats above; every module must exist in u and every shape must fit (errors
 * name the file, the tensor, expected vs got). rank comes from the shapes, alpha from the
 * ".alpha" tensors or the "lora_alpha" metadata, else alpha = rank. Parameters are f64 for an
 * f64 UNet, else f32, and require grad (training can resume). Modules with another rank or
 * alpha than the first are zero-padded to the largest rank with their alpha/r folded into A. */
enum status sd_lora_load(struct sd_lora *l, const struct sd_unet *u, const char *path);
/* n files (sd_lora_load), each with its scale, as one adapter (sd_lora_combine) */
enum status sd_lora_load_combined(struct sd_lora *out, const struct sd_unet *u, int n, const char *const *paths,
                                  const double *scales);

#ifdef __cplusplus
}
#endif

#endif
