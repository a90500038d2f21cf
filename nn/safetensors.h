/* safetensors.h — read and write the safetensors format (huggingface/safetensors).
 *
 * Layout: u64 little-endian N, then N bytes of JSON header
 *   {"__metadata__": {"k": "v", ...}, "<name>": {"dtype": "F32", "shape": [..],
 *    "data_offsets": [begin, end]}, ...}
 * then the byte buffer; offsets are relative to its start. Reading maps the file and
 * converts one tensor at a time on request (lazy: only what is asked for is touched), so
 * loading a model never holds a second full copy. Every malformed header, offset or
 * shape is an error naming the file and the tensor, never a crash. Writing pads the header
 * with spaces to a multiple of 8 and lays tensors back to back, covering the buffer.
 */
#ifndef NN_SAFETENSORS_H
#define NN_SAFETENSORS_H

#include "tensor/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

struct safetensors_entry {
    char *name;
    enum dtype dtype;       /* DTYPE_COUNT when the file's dtype has no engine equivalent */
    char file_dtype[8];     /* as written in the file: "F32", "BF16", "U8", ... */
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    uint64_t begin, end;    /* byte range in the data buffer */
};

struct safetensors {
    char *path;
    void *map;              /* the whole file, read-only */
    size_t map_size;
    const unsigned char *data;   /* start of the byte buffer */
    uint64_t data_size;
    int n;
    struct safetensors_entry *entries;   /* in file order */
    int n_meta;
    char **meta_keys, **meta_values;
};

/* open and validate; NULL with an error naming the file and the problem */
struct safetensors *safetensors_open(const char *path);
/* parse from memory (the buffer must outlive the result); `label` names it in errors */
struct safetensors *safetensors_parse(const void *bytes, size_t size, const char *label);
void safetensors_close(struct safetensors *st);
const struct safetensors_entry *safetensors_find(const struct safetensors *st, const char *name);
const char *safetensors_metadata(const struct safetensors *st, const char *key);
/* a new tensor on `dev` holding `name` converted to `dt`; NULL with an error if missing or
 * unsupported */
struct tensor *safetensors_load(const struct safetensors *st, const char *name, enum dtype dt, enum device dev);
/* load into an existing tensor (shape must match exactly; dtype converted) */
enum status safetensors_load_into(const struct safetensors *st, const char *name, struct tensor *dst);

/* write n tensors (any device, any strides) with optional metadata pairs (n_meta keys and
 * values); written to a temporary file and renamed, so a crash never leaves half a file */
enum status safetensors_save(const char *path, int n, const char *const *names, struct tensor *const *tensors,
                             int n_meta, const char *const *meta_keys, const char *const *meta_values);

#ifdef __cplusplus
}
#endif

#endif
