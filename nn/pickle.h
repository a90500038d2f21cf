/* pickle.h — read PyTorch `torch.save` files (.pth state dicts, CompVis .ckpt) without
 * executing anything.
 *
 * A torch.save file is a zip: `<dir>/data.pkl` (a pickle describing the object) plus one
 * entry `<dir>/data/<key>` per storage (raw little-endian bytes). The pickle is interpreted
 * by a small stack machine that accepts a whitelist of opcodes and of globals:
 *   collections.OrderedDict, torch._utils._rebuild_tensor_v2 / _rebuild_tensor /
 *   _rebuild_parameter, torch.<Float|Double|Half|BFloat16|Long|Int|Short|Char|Byte|Bool>Storage.
 * Storages arrive through BINPERSID as ('storage', type, key, location, numel); the
 * location ('cpu', 'cuda:0', ...) is ignored. Anything else (another opcode, another
 * global, REDUCE of anything but a whitelisted callable) is an error naming the opcode and
 * its byte offset. Nothing is ever called, imported or evaluated.
 *
 * Naming: nested dicts are flattened with '.' ({"a": {"b": t}} lists "a.b"). When the top
 * level holds a dict under "state_dict" (CompVis / Lightning .ckpt: {"epoch", "global_step",
 * "state_dict": {...}}), only that dict is listed and the "state_dict." prefix is dropped,
 * so names match the checkpoint keys of SD14.md §1.4. Non-tensor values (ints, strings,
 * _metadata) are not listed. EMA copies and schedule buffers ARE listed;
 * torch_ckpt_name_unused() says which names a model loader should skip.
 *
 * Only the zip format (torch >= 1.6, and every SD 1.x .ckpt) is read; the legacy tar/raw
 * pickle format is refused as "not a readable zip". A torch_file is not thread-safe.
 */
#ifndef NN_PICKLE_H
#define NN_PICKLE_H

#include "tensor/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

struct torch_entry {
    char *name;
    enum dtype dtype;            /* DTYPE_COUNT when the storage type has no engine dtype */
    const char *storage_type;    /* "FloatStorage", ... (static string) */
    size_t elem_size;            /* bytes per storage element */
    char *key;                   /* storage key: data at <dir>/data/<key> */
    int64_t storage_numel;       /* as declared in the pickle */
    int64_t offset;              /* storage offset, in elements */
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    int64_t stride[TENSOR_MAX_DIMS];   /* in elements, all >= 0 */
};

struct torch_pickle {
    int n;
    struct torch_entry *entries;   /* in pickle order */
};

/* interpret a pickle held in memory; NULL with an error (opcode name and byte offset) on any
 * unsupported or malformed input. Every tensor's view is checked to lie inside its declared
 * storage numel. `label` names the input in messages. */
struct torch_pickle *torch_pickle_parse(const void *bytes, size_t size, const char *label);
void torch_pickle_free(struct torch_pickle *p);

struct torch_file;

/* open a torch.save zip, parse its data.pkl and check that every referenced storage entry
 * exists and holds at least numel * elem_size bytes; NULL with an error otherwise */
struct torch_file *torch_file_open(const char *path);
void torch_file_close(struct torch_file *f);
int torch_file_count(const struct torch_file *f);
const char *torch_file_name(const struct torch_file *f, int i);   /* NULL if out of range */
const struct torch_entry *torch_file_entry(const struct torch_file *f, int i);
const struct torch_entry *torch_file_find(const struct torch_file *f, const char *name);
/* a new contiguous CPU tensor holding `name` converted to `dt`; NULL with an error */
struct tensor *torch_file_load(const struct torch_file *f, const char *name, enum dtype dt);

/* true for CompVis .ckpt entries that are not model weights (SD14.md §1.4): model_ema.*,
 * the DDPM schedule buffers, and the CLIP position_ids buffer */
bool torch_ckpt_name_unused(const char *name);

#ifdef __cplusplus
}
#endif

#endif
