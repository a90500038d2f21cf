/* tensor.h — strided tensors, storage, errors and scopes.
 *
 * A tensor is a view: dtype, shape, element strides and an element offset into a
 * reference-counted storage that lives on one device. Views (reshape, permute, narrow,
 * expand, ...) share storage and cost no copy; every kernel honours strides.
 *
 * Ownership, in one rule: every function that returns a `struct tensor *` returns a new
 * reference. With no scope open the caller owns it and releases it with tensor_free().
 * With a scope open (tensor_scope_begin) the innermost scope owns it and releases it at
 * tensor_scope_end(); tensor_keep(t) takes it out of the scope, to the caller.
 *
 * Errors: functions return NULL (or a non-zero status) and set a thread-local message,
 * read with tensor_error(). A NULL input makes an op return NULL without overwriting the
 * first message, so a chain of calls can be checked once at the end.
 */
#ifndef TENSOR_TENSOR_H
#define TENSOR_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TENSOR_MAX_DIMS 8

enum dtype { DTYPE_F32, DTYPE_F64, DTYPE_F16, DTYPE_BF16, DTYPE_I32, DTYPE_I64, DTYPE_COUNT };
enum device { DEVICE_CPU, DEVICE_CUDA, DEVICE_COUNT };

enum status {
    STATUS_OK = 0,
    STATUS_SHAPE,    /* shapes do not fit the op */
    STATUS_DTYPE,    /* dtype not supported or mismatched */
    STATUS_DEVICE,   /* tensors on different devices, or device unavailable */
    STATUS_OOM,      /* allocation failed or memory limit reached */
    STATUS_VALUE,    /* bad argument value */
    STATUS_GRAPH,    /* autograd misuse (released graph, no grad, ...) */
    STATUS_IO,       /* file errors */
    STATUS_FORMAT,   /* malformed file content */
    STATUS_INTERNAL,
};

struct storage {
    void *data;
    size_t bytes;
    enum device device;
    int refcount;
    bool external;   /* memory not owned (e.g. an mmap'd file); not freed */
};

struct ag_node;

struct tensor {
    enum dtype dtype;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    int64_t stride[TENSOR_MAX_DIMS];   /* in elements */
    int64_t offset;                    /* in elements, into storage */
    struct storage *storage;
    int refcount;
    /* autograd (owned by autograd/, opaque here) */
    bool requires_grad;
    struct ag_node *node;   /* producer node (or leaf accumulator), strong reference */
    int out_index;          /* which output of `node` this is */
    struct tensor *grad;    /* accumulated gradient of a leaf */
    char name[48];
};

/* ---- errors ---- */
const char *tensor_error(void);
enum status tensor_status(void);
/* printf-style: sets the message and status; returns the status for `return tensor_fail(...)` */
enum status tensor_fail(enum status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tensor_clear_error(void);

/* ---- dtypes ---- */
size_t dtype_size(enum dtype dt);
const char *dtype_name(enum dtype dt);
bool dtype_is_float(enum dtype dt);
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);   /* round to nearest even */
const char *device_name(enum device d);

/* ---- matrix-product precision (a run-time switch, like PyTorch's allow_tf32 / autocast) ----
 * How the GPU computes the products of f32 matmuls and of conv2d's GEMMs, forward and backward:
 *   PRECISION_F32   exact f32 (the default; what the CPU always does)
 *   PRECISION_TF32  TF32 tensor cores: operands rounded to a 10-bit mantissa, f32 accumulation
 *   PRECISION_BF16  autocast: operands rounded to bf16, f32 accumulation, f32 results; norms,
 *                   softmax, attention, elementwise ops and losses stay f32
 * Tensors keep their dtype: only the products lose bits. The CPU backend ignores it. */
enum precision { PRECISION_F32, PRECISION_TF32, PRECISION_BF16 };
void tensor_set_precision(enum precision p);
enum precision tensor_precision(void);
const char *precision_name(enum precision p);
bool precision_parse(const char *s, enum precision *p);   /* "f32" | "tf32" | "bf16" */

/* ---- creation ---- */
struct tensor *tensor_empty(enum dtype dt, int ndim, const int64_t *shape, enum device dev);
struct tensor *tensor_zeros(enum dtype dt, int ndim, const int64_t *shape, enum device dev);
struct tensor *tensor_full(enum dtype dt, int ndim, const int64_t *shape, double value, enum device dev);
struct tensor *tensor_empty_like(const struct tensor *t);
struct tensor *tensor_zeros_like(const struct tensor *t);
/* copies n values from host memory of type `dt` (contiguous, row-major) */
struct tensor *tensor_from_data(enum dtype dt, int ndim, const int64_t *shape, const void *data);
struct tensor *tensor_scalar(enum dtype dt, double value);
/* wraps external host memory (not freed); `owner_hint` is kept for messages only */
struct tensor *tensor_wrap(enum dtype dt, int ndim, const int64_t *shape, void *data);

/* shape helpers: TENSOR_SHAPE(2, 3) -> (int)2, (int64_t[]){2, 3} */
#define TENSOR_SHAPE(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

/* ---- references and scopes ---- */
struct tensor *tensor_ref(struct tensor *t);   /* +1, returns t */
void tensor_free(struct tensor *t);            /* -1, frees at zero; NULL is fine */
void tensor_scope_begin(void);
void tensor_scope_end(void);
/* take t out of the innermost scope: the caller now owns that reference */
struct tensor *tensor_keep(struct tensor *t);
/* end the innermost scope but hand t to the enclosing one (or to the caller if none):
 * the usual last line of a function that computes inside its own scope */
struct tensor *tensor_scope_return(struct tensor *t);
/* register a reference the caller owns with the current scope (no-op without a scope) */
struct tensor *tensor_autorelease(struct tensor *t);

/* live counters: tests assert they come back to their starting values */
int64_t tensor_live_count(void);
int64_t storage_live_count(void);

/* ---- queries ---- */
int64_t tensor_numel(const struct tensor *t);
bool tensor_is_contiguous(const struct tensor *t);
bool tensor_same_shape(const struct tensor *a, const struct tensor *b);
enum device tensor_device(const struct tensor *t);
/* "[2,3,4]" into buf */
const char *tensor_shape_str(const struct tensor *t, char *buf, size_t n);
void *tensor_data_ptr(const struct tensor *t);   /* address of element 0 (host tensors) */
/* element access for tests and small host code (any dtype, any strides) */
double tensor_get(const struct tensor *t, const int64_t *index);
double tensor_get_flat(const struct tensor *t, int64_t i);   /* i in row-major logical order */
void tensor_set_flat(struct tensor *t, int64_t i, double v);
void tensor_set_name(struct tensor *t, const char *name);

/* ---- views (share storage; no autograd — see autograd.h for differentiable ones) ---- */
struct tensor *tensor_view(struct tensor *t, int ndim, const int64_t *shape);  /* NULL if strides do not allow */
struct tensor *tensor_reshape(struct tensor *t, int ndim, const int64_t *shape); /* view or copy */
struct tensor *tensor_permute(struct tensor *t, const int *perm);
struct tensor *tensor_transpose(struct tensor *t, int d0, int d1);
struct tensor *tensor_narrow(struct tensor *t, int dim, int64_t start, int64_t length);
struct tensor *tensor_select(struct tensor *t, int dim, int64_t index);  /* drops dim */
struct tensor *tensor_expand(struct tensor *t, int ndim, const int64_t *shape);
struct tensor *tensor_squeeze(struct tensor *t, int dim);
struct tensor *tensor_unsqueeze(struct tensor *t, int dim);
struct tensor *tensor_alias(struct tensor *t);   /* same view, new tensor struct */
struct tensor *tensor_contiguous(struct tensor *t);  /* returns a ref to t itself if already contiguous */
struct tensor *tensor_clone(const struct tensor *t);
struct tensor *tensor_to_dtype(const struct tensor *t, enum dtype dt);
struct tensor *tensor_to_device(const struct tensor *t, enum device dev);

/* copy src into dst (same shape; dtype cast and device transfer allowed) */
enum status tensor_copy_(struct tensor *dst, const struct tensor *src);
enum status tensor_fill_(struct tensor *dst, double value);

/* normalise a possibly negative dim; sets an error and returns -1 if out of range */
int tensor_dim(const struct tensor *t, int dim, const char *op);
/* broadcast two shapes (numpy rules); returns ndim or -1 with an error naming op */
int tensor_broadcast_shape(const struct tensor *a, const struct tensor *b, int64_t *out, const char *op);

/* ---- threads and determinism ---- */
void tensor_set_num_threads(int n);
int tensor_num_threads(void);
/* One line on what a device's backend runs on (the CPU's model, threads and BLAS; the GPU's
 * name, memory, driver, runtime and cuBLAS) into buf, which is returned; "not available" where
 * the backend is not built or has no device. */
const char *tensor_backend_describe(enum device dev, char *buf, size_t n);
/* The device's memory in bytes: *available, what new allocations could still get (the CPU:
 * MemAvailable of /proc/meminfo; CUDA: cudaMemGetInfo's free), and *total. Memory the caching
 * allocator already holds is in neither's "available". STATUS_DEVICE where unknown. */
enum status tensor_device_memory(enum device dev, int64_t *available, int64_t *total);
/* in deterministic mode repeated runs give bit-identical results (CPU kernels always do;
 * backends with atomics switch to ordered reductions) */
void tensor_set_deterministic(bool on);
bool tensor_deterministic(void);

#ifdef __cplusplus
}
#endif

#endif
