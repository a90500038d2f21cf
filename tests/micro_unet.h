/* micro_unet.h — a UNet from a small config.json text, built twice (f64 and f32) with the same
 * random weights of a sensible scale (norm weights in [0.5, 1.5], the rest U(±0.75/sqrt(fan_in)))
 * for float64 gradient checks and their f32 comparison (tests/harness.h gradcheck). */
#ifndef TESTS_MICRO_UNET_H
#define TESTS_MICRO_UNET_H

#include "diffusion/unet.h"

void test_micro_unet_build(const char *json, struct nn_params *ps64, struct nn_params *ps32, struct sd_unet *u64,
                           struct sd_unet *u32);
void test_micro_unet_free(struct nn_params *ps64, struct nn_params *ps32, struct sd_unet *u64, struct sd_unet *u32);

#endif
