/* ldm.h — the original CompVis / LDM single-file layout (sd-v1-4.ckpt, or a .safetensors
 * holding the same keys): the name of each diffusers parameter there (SD14.md §1.4).
 *
 *   UNet          model.diffusion_model.<input_blocks / middle_block / output_blocks ...>
 *   VAE           first_stage_model.<encoder.down.i.block.j ...; decoder.up.(n-1-i) ...>
 *   text encoder  cond_stage_model.transformer.<the transformers names>   (SD 1.x)
 *                 cond_stage_model.model.<OpenCLIP's text tower>          (SD 2.x; clip_openclip_text_load)
 *                 conditioner.embedders.0.transformer.<transformers names> (SDXL's first)
 *                 conditioner.embedders.1.model.<OpenCLIP's text tower>    (SDXL's second)
 *
 * The maps are written from the block structure (layers per block, which up blocks have
 * attentions), not from a table, so any SD 1.x-shaped config maps. */
#ifndef DIFFUSION_LDM_H
#define DIFFUSION_LDM_H

#include "diffusion/unet.h"
#include "diffusion/vae.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SD_LDM_UNET_PREFIX "model.diffusion_model."
#define SD_LDM_VAE_PREFIX "first_stage_model."
#define SD_LDM_TEXT_PREFIX "cond_stage_model.transformer."
#define SD_LDM_OPENCLIP_PREFIX "cond_stage_model.model."
#define SD_LDM_XL_TEXT_PREFIX "conditioner.embedders.0.transformer."
#define SD_LDM_XL_OPENCLIP_PREFIX "conditioner.embedders.1.model."

/* diffusers UNet parameter name -> LDM key (with prefix); false if the name is not a UNet
 * parameter of this structure. ctx: the struct sd_unet. */
bool sd_ldm_unet_key(void *unet, const char *name, char *key, size_t n);
/* diffusers VAE parameter name -> LDM key (with prefix). ctx: the struct sd_vae. */
bool sd_ldm_vae_key(void *vae, const char *name, char *key, size_t n);
/* transformers CLIPTextModel parameter name -> LDM key (with prefix). ctx unused. */
bool sd_ldm_text_key(void *unused, const char *name, char *key, size_t n);
/* the same for SDXL's first text encoder (SD_LDM_XL_TEXT_PREFIX). ctx unused. */
bool sd_ldm_xl_text_key(void *unused, const char *name, char *key, size_t n);

#ifdef __cplusplus
}
#endif

#endif
