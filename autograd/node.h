/* node.h — what an op implementation needs to record itself in the graph.
 *
 * Adding an op (see docs/architecture.md): a kernel in each backend (tensor/backend.h),
 * a forward function here in autograd/ that checks shapes, allocates the output, calls the
 * kernel and records a node with ag_record, a backward rule next to it, and a gradcheck
 * case in tests/test_gradcheck.c.
 */
#ifndef AUTOGRAD_NODE_H
#define AUTOGRAD_NODE_H

#include "autograd/autograd.h"

#define AG_MAX_SAVED 6

struct ag_meta {
    enum dtype dtype;
    enum device device;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
};

struct ag_node;
/* grad_out[j]: gradient of output j (never NULL: zeros where no gradient arrived).
 * grad_in[i]: set to the gradient of input i, or leave NULL when input i needs none
 * (the engine pre-sets needs[i]; computing a gradient nobody needs is wasted work). */
typedef enum status (*ag_backward_fn)(struct ag_node *n, struct tensor *const *grad_out, struct tensor **grad_in);

struct ag_node {
    int refcount;
    const char *name;
    ag_backward_fn backward;
    int n_inputs, n_outputs;
    struct ag_node **in_node;     /* producer of input i (NULL: needs no gradient) */
    int *in_index;                /* which output of in_node[i] */
    struct ag_meta *in_meta;      /* shape of input i, so rules can shape gradients */
    struct ag_meta *out_meta;
    bool *needs;                  /* needs[i] = in_node[i] != NULL */
    struct tensor *saved[AG_MAX_SAVED];
    int n_saved;
    int64_t ip[8];                /* integer parameters of the op */
    double fp[4];                 /* float parameters */
    void *ctx;                    /* op-owned context, freed with ctx_free */
    void (*ctx_free)(void *ctx);
    struct tensor *leaf;          /* for a leaf's accumulator: the leaf (weak reference) */
    bool released;
    /* engine scratch */
    struct tensor **grads;        /* accumulated gradient of each output */
    int deps;
    int mark;
};

/* true when grad mode is on and some input requires a gradient */
bool ag_needs_grad(int n, struct tensor *const *in);
/* record a node for outputs `out` computed from inputs `in` (NULL inputs are allowed and
 * get no edge); returns the node so the op can save tensors and parameters, or NULL when
 * nothing needs recording. */
struct ag_node *ag_record(const char *name, ag_backward_fn fn, int n_in, struct tensor *const *in, int n_out,
                          struct tensor *const *out);
/* keep t (a new reference) for the backward; returns its index in n->saved */
int ag_save(struct ag_node *n, struct tensor *t);
void ag_meta_of(struct ag_meta *m, const struct tensor *t);
/* zeros / an empty tensor shaped like an input of the node */
struct tensor *ag_zeros_meta(const struct ag_meta *m);
/* checks used by ops: return false with an error set */
bool ag_check_same_device(const char *op, int n, struct tensor *const *ts);
bool ag_check_float(const char *op, const struct tensor *t);
bool ag_check_ndim(const char *op, const struct tensor *t, int ndim, const char *what);
/* Mixed storage (ag_storage_cast, autograd.h): linear and conv2d cast a half-precision parameter
 * inside the op, so the node can save the bf16/f16 p and cast it again in the backward (a frozen
 * half model then never keeps f32 copies of its weights in a graph). ag_compute_copy: p in x's
 * dtype (p itself, or a scope-owned cast copy). */
struct tensor *ag_compute_copy(struct tensor *p, const struct tensor *x);
/* report a kernel missing on a backend */
enum status ag_no_kernel(const char *op, const struct tensor *t);

#endif
