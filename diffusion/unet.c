/* unet.c — placeholder until the module lands. */
#include "nn/module.h"
int diffusion_unet_placeholder;
