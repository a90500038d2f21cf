/* clip.c — placeholder until the module lands. */
#include "nn/module.h"
int diffusion_clip_placeholder;
