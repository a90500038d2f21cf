/* fuzz_pickle.c — libFuzzer target: arbitrary bytes as the data.pkl of a torch.save file.
 * The restricted unpickler must accept or reject without a crash, a leak or a hang, and every
 * accepted tensor must have a well-formed description whose view lies inside its storage. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nn/pickle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct torch_pickle *tp = torch_pickle_parse(data, size, "fuzz.pkl");
    if (!tp) {
        if (!tensor_error()[0]) abort();   /* a refusal always says why */
        return 0;
    }
    for (int i = 0; i < tp->n; i++) {
        const struct torch_entry *e = &tp->entries[i];
        if (!e->name || !e->key || !e->key[0] || !e->storage_type) abort();
        if (e->ndim < 0 || e->ndim > TENSOR_MAX_DIMS || e->offset < 0 || e->storage_numel < 0) abort();
        if (e->elem_size != 1 && e->elem_size != 2 && e->elem_size != 4 && e->elem_size != 8) abort();
        if (e->dtype != DTYPE_COUNT && dtype_size(e->dtype) != e->elem_size) abort();
        /* recompute the extent in unsigned 128-bit arithmetic: it must fit the storage */
        unsigned __int128 last = (unsigned __int128)e->offset;
        int empty = 0;
        for (int d = 0; d < e->ndim; d++) {
            if (e->shape[d] < 0 || e->stride[d] < 0) abort();
            if (e->shape[d] == 0) empty = 1;
            else last += (unsigned __int128)(e->shape[d] - 1) * (unsigned __int128)e->stride[d];
        }
        if (empty ? e->offset > e->storage_numel : last >= (unsigned __int128)e->storage_numel) abort();
        for (int j = 0; j < i; j++)
            if (!strcmp(tp->entries[j].name, e->name)) abort();   /* names are unique */
    }
    torch_pickle_free(tp);
    return 0;
}
