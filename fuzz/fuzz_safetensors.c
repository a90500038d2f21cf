/* fuzz_safetensors.c — libFuzzer target: arbitrary bytes as a safetensors file. Parsing must
 * accept or reject without a crash; every accepted tensor is then loaded (converted to f32
 * where the engine has the dtype) and must stay inside the buffer. */
#include <stdint.h>
#include <stdlib.h>

#include "nn/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct safetensors *st = safetensors_parse(data, size, "fuzz.safetensors");
    if (!st) return 0;
    for (int i = 0; i < st->n; i++) {
        const struct safetensors_entry *e = &st->entries[i];
        if (e->end - e->begin > (1u << 20)) continue;   /* keep each input fast */
        tensor_scope_begin();
        struct tensor *t = safetensors_load(st, e->name, DTYPE_F32, DEVICE_CPU);
        if (t && e->dtype == DTYPE_COUNT) abort();   /* an unloadable dtype must be refused */
        tensor_scope_end();
    }
    if (tensor_live_count() != 0) abort();
    safetensors_close(st);
    return 0;
}
