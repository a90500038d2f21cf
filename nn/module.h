/* module.h — named parameters and the basic layers.
 *
 * A model owns one `struct nn_params`: every parameter under its checkpoint key
 * ("down_blocks.0.resnets.1.conv1.weight"), so binding weights is matching names and a model
 * file reads like the diffusers module it mirrors. Layers are plain structs that borrow
 * their parameters from the store; their forward functions are ag_ ops.
 */
#ifndef NN_MODULE_H
#define NN_MODULE_H

#include "autograd/autograd.h"
#include "nn/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

struct nn_param {
    char *name;
    struct tensor *t;
};

struct nn_params {
    struct nn_param *v;
    int n, cap;
    enum dtype dtype;     /* dtype new parameters get */
    enum device device;
};

void nn_params_init(struct nn_params *ps, enum dtype dt, enum device dev);
/* the dtype activations have for parameters stored in `storage`: f32 for bf16/f16 (the layers
 * cast their weights per use), else the same */
enum dtype nn_compute_dtype(enum dtype storage);
/* a parameter used directly in activations' arithmetic: p cast to x's dtype where p is stored
 * narrower (bf16/f16 with f32 activations), else p itself */
struct tensor *nn_param_as(struct tensor *p, const struct tensor *x);
void nn_params_free(struct nn_params *ps);
/* a new zero parameter "<prefix>.<name>" (prefix may be ""); NULL on error (duplicate name) */
struct tensor *nn_param_new(struct nn_params *ps, const char *prefix, const char *name, int ndim, const int64_t *shape);
struct tensor *nn_param_find(const struct nn_params *ps, const char *name);
int64_t nn_params_count(const struct nn_params *ps);   /* number of scalars */
void nn_params_set_trainable(struct nn_params *ps, bool on);
/* convert every parameter to dt (e.g. a frozen bf16 base) */
enum status nn_params_to_dtype(struct nn_params *ps, enum dtype dt);
/* Load every parameter from the file; names must match exactly (file keys are
 * `key_prefix` + parameter name). Missing, unexpected and mis-shaped tensors are errors
 * that name the file, the tensor, and expected vs got shapes; with allow_extra, tensors in
 * the file that the model does not have are ignored instead. */
enum status nn_params_load(struct nn_params *ps, const struct safetensors *st, const char *key_prefix, bool allow_extra);
/* write all parameters to a safetensors file */
enum status nn_params_save(const struct nn_params *ps, const char *path);
/* fill with the default PyTorch-style initialisation: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
 * for weights and biases, ones/zeros for norm weights/biases (names ending in norm*.weight) */
enum status nn_params_init_default(struct nn_params *ps, uint64_t seed);

/* "<prefix>.<name>" into buf (or just name when prefix is empty) */
const char *nn_name(char *buf, size_t n, const char *prefix, const char *name);

struct nn_linear {
    struct tensor *weight, *bias;   /* [out, in], [out] or NULL */
};
enum status nn_linear_init(struct nn_linear *l, struct nn_params *ps, const char *prefix, int64_t in, int64_t out, bool bias);
struct tensor *nn_linear_forward(const struct nn_linear *l, struct tensor *x);

struct nn_conv2d {
    struct tensor *weight, *bias;   /* [out, in/groups, k, k], [out] or NULL */
    struct conv2d_params p;
};
enum status nn_conv2d_init(struct nn_conv2d *c, struct nn_params *ps, const char *prefix, int64_t in, int64_t out,
                           int kernel, int stride, int padding, bool bias);
struct tensor *nn_conv2d_forward(const struct nn_conv2d *c, struct tensor *x);

struct nn_group_norm {
    struct tensor *weight, *bias;
    int groups;
    double eps;
};
enum status nn_group_norm_init(struct nn_group_norm *g, struct nn_params *ps, const char *prefix, int groups,
                               int64_t channels, double eps);
struct tensor *nn_group_norm_forward(const struct nn_group_norm *g, struct tensor *x);

struct nn_layer_norm {
    struct tensor *weight, *bias;
    double eps;
};
enum status nn_layer_norm_init(struct nn_layer_norm *l, struct nn_params *ps, const char *prefix, int64_t dim, double eps);
struct tensor *nn_layer_norm_forward(const struct nn_layer_norm *l, struct tensor *x);

struct nn_embedding {
    struct tensor *weight;   /* [rows, dim] */
};
enum status nn_embedding_init(struct nn_embedding *e, struct nn_params *ps, const char *prefix, int64_t rows, int64_t dim);
struct tensor *nn_embedding_forward(const struct nn_embedding *e, struct tensor *ids);

#ifdef __cplusplus
}
#endif

#endif
