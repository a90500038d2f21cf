/* vae.c — placeholder until the module lands. */
#include "nn/module.h"
int diffusion_vae_placeholder;
