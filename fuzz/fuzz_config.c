/* fuzz_config.c — libFuzzer target: arbitrary bytes as a model config.json, read with the
 * getters a model uses (every type, lists, unknown-key check). */
#include <stdint.h>
#include <stdlib.h>

#include "nn/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct nn_config c;
    if (nn_config_parse(&c, (const char *)data, size, "fuzz.json")) return 0;
    long long ints[8];
    char buf[64], strs[4][64];
    nn_config_int(&c, "in_channels", 4);
    nn_config_double(&c, "norm_eps", 1e-5);
    nn_config_bool(&c, "flip_sin_to_cos", true);
    nn_config_string(&c, "act_fn", "silu", buf, sizeof buf);
    nn_config_int_array(&c, "block_out_channels", ints, 8, false);
    nn_config_int_array(&c, "attention_head_dim", ints, 8, true);
    nn_config_string_array(&c, "down_block_types", strs, 4);
    const char *ign[2] = {"sample_size", "_class_name"};
    nn_config_ignore(&c, ign, 2);
    nn_config_finish(&c);
    nn_config_free(&c);
    return 0;
}
