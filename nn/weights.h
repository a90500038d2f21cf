/* weights.h — one reader over the two weight containers a user brings: safetensors files
 * and PyTorch torch.save zips (.bin / .pth / .ckpt, through the restricted unpickler).
 *
 * A model loads by asking, for each of its parameter names, which key of the file holds it
 * (a name map: identity for diffusers files, the CompVis names for an original .ckpt), then
 * checks that nothing it was given is left over. A file tensor may carry extra trailing
 * dimensions of size 1 (the original VAE's 1x1-conv attention projections where diffusers
 * has linear layers): they are squeezed when the parameter lacks them, nothing else is. */
#ifndef NN_WEIGHTS_H
#define NN_WEIGHTS_H

#include "nn/module.h"

#ifdef __cplusplus
extern "C" {
#endif

struct nn_weights;

/* open by content: a safetensors header or a zip archive (torch.save); NULL with an error */
struct nn_weights *nn_weights_open(const char *path);
void nn_weights_close(struct nn_weights *w);
const char *nn_weights_path(const struct nn_weights *w);
int nn_weights_count(const struct nn_weights *w);
const char *nn_weights_name(const struct nn_weights *w, int i);
bool nn_weights_has(const struct nn_weights *w, const char *name);
/* index of tensor `name` (as nn_weights_name counts), -1 when absent */
int nn_weights_find(const struct nn_weights *w, const char *name);
/* the file's shape of tensor `name`; false when absent */
bool nn_weights_shape(const struct nn_weights *w, const char *name, int *ndim, int64_t shape[TENSOR_MAX_DIMS]);
/* tensor `name` as it is in the file (shape and all), contiguous on the CPU in dt; NULL with an
 * error. For loaders that must reshape what they read (split a fused q/k/v, transpose). */
struct tensor *nn_weights_load(const struct nn_weights *w, const char *name, enum dtype dt);
/* copy tensor `name` into dst (dtype converted; shape equal up to trailing 1-dims of the file) */
enum status nn_weights_load_into(const struct nn_weights *w, const char *name, struct tensor *dst);

/* key of parameter `param` in the file; false when the map has no key for it */
typedef bool (*nn_name_map_fn)(void *ctx, const char *param, char *key, size_t n);

/* Load every parameter of ps from w through map (NULL: identity). Then every file tensor
 * whose name starts with `owned_prefix` (NULL: all) must have been used, unless
 * skip(name) says it is not a weight (EMA copies, schedule buffers); used[] (optional, one
 * flag per file tensor) collects the tensors used across several calls. */
enum status nn_params_load_mapped(struct nn_params *ps, const struct nn_weights *w, nn_name_map_fn map, void *ctx,
                                  bool *used);
/* after all components loaded: report the first tensor under owned_prefix nobody used */
enum status nn_weights_check_used(const struct nn_weights *w, const bool *used, const char *owned_prefix,
                                  bool (*skip)(const char *name));

#ifdef __cplusplus
}
#endif

#endif
