/* cpu.h — shared helpers of the CPU kernels: a strided multi-operand iterator and the
 * kernel entry points that backend_cpu.c puts in the table. */
#ifndef TENSOR_CPU_H
#define TENSOR_CPU_H

#include "tensor/backend.h"

#include <omp.h>

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* Below this many elements a loop runs on one thread: spawning costs more than it saves. */
#define CPU_PAR_MIN 32768

/* Iterates up to 4 same-shape operands. Dims of size 1 are dropped and neighbouring dims
 * that are contiguous in every operand are merged, so a contiguous tensor becomes one dim
 * and the inner loop is as long as possible. Offsets and strides are in elements. */
struct cpu_iter {
    int nops, ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    int64_t stride[4][TENSOR_MAX_DIMS];
    int64_t base[4];
    int64_t inner, outer;          /* inner = shape[ndim-1]; outer = product of the rest */
    int64_t inner_stride[4];
};

static inline void cpu_iter_init(struct cpu_iter *it, int nops, const struct tensor *const *ts)
{
    const struct tensor *t0 = ts[0];
    it->nops = nops;
    it->ndim = 0;
    for (int k = 0; k < nops; k++) it->base[k] = ts[k]->offset;
    for (int d = 0; d < t0->ndim; d++) {
        if (t0->shape[d] == 1) continue;
        int nd = it->ndim;
        bool merge = nd > 0;
        for (int k = 0; k < nops && merge; k++)
            merge = it->stride[k][nd - 1] == ts[k]->stride[d] * t0->shape[d];
        if (merge) {
            it->shape[nd - 1] *= t0->shape[d];
            for (int k = 0; k < nops; k++) it->stride[k][nd - 1] = ts[k]->stride[d];
        } else {
            it->shape[nd] = t0->shape[d];
            for (int k = 0; k < nops; k++) it->stride[k][nd] = ts[k]->stride[d];
            it->ndim++;
        }
    }
    if (it->ndim == 0) {   /* a scalar, or all dims of size 1 */
        it->ndim = 1;
        it->shape[0] = 1;
        for (int k = 0; k < nops; k++) it->stride[k][0] = 1;
    }
    for (int d = 0; d < t0->ndim; d++)
        if (t0->shape[d] == 0) it->shape[0] = 0;
    it->inner = it->shape[it->ndim - 1];
    it->outer = 1;
    for (int d = 0; d < it->ndim - 1; d++) it->outer *= it->shape[d];
    for (int k = 0; k < nops; k++) it->inner_stride[k] = it->stride[k][it->ndim - 1];
}

/* element offsets of the start of inner row `o`, and its index in the outer dims (idx may be NULL) */
static inline void cpu_iter_locate(const struct cpu_iter *it, int64_t o, int64_t *off, int64_t *idx)
{
    for (int k = 0; k < it->nops; k++) off[k] = it->base[k];
    for (int d = it->ndim - 2; d >= 0; d--) {
        int64_t i = o % it->shape[d];
        o /= it->shape[d];
        if (idx) idx[d] = i;
        for (int k = 0; k < it->nops; k++) off[k] += i * it->stride[k][d];
    }
}

static inline void cpu_iter_offsets(const struct cpu_iter *it, int64_t o, int64_t *off)
{
    cpu_iter_locate(it, o, off, NULL);
}

/* Work items of a parallel elementwise loop. A long inner row (a contiguous tensor is one,
 * after merging) is cut into pieces of at most CPU_CHUNK elements, so that it still spreads
 * over the threads; short rows are grouped, about CPU_CHUNK elements an item, so that the
 * divisions that find a row's offsets run once an item, and the rows after the first are
 * stepped to (a permuted [8,4,256,16] copy is 8192 rows of 16 elements). Every element is
 * computed alone, so the cut changes no result. */
#define CPU_CHUNK 16384

struct cpu_rows {
    int64_t off[4];                    /* element offsets of the current row's start */
    int64_t idx[TENSOR_MAX_DIMS];      /* its index in the outer dims */
    int64_t n, len;                    /* rows left in the item (this one included); elements a row */
};

static inline int64_t cpu_iter_rows_per_item(const struct cpu_iter *it)
{
    return it->inner >= CPU_CHUNK ? 1 : CPU_CHUNK / it->inner;
}

static inline int64_t cpu_iter_items(const struct cpu_iter *it)
{
    if (it->inner == 0 || it->outer == 0) return 0;
    if (it->inner >= CPU_CHUNK) return it->outer * ((it->inner + CPU_CHUNK - 1) / CPU_CHUNK);
    const int64_t rows = cpu_iter_rows_per_item(it);
    return (it->outer + rows - 1) / rows;
}

/* the first row of work item w: r->off, r->len, and r->n rows to go (cpu_iter_next steps) */
static inline void cpu_iter_item(const struct cpu_iter *it, int64_t w, struct cpu_rows *r)
{
    int64_t row, s = 0;
    if (it->inner >= CPU_CHUNK) {
        const int64_t per_row = (it->inner + CPU_CHUNK - 1) / CPU_CHUNK;
        row = w / per_row;
        s = (w % per_row) * CPU_CHUNK;
        r->n = 1;
        r->len = it->inner - s < CPU_CHUNK ? it->inner - s : CPU_CHUNK;
    } else {
        const int64_t rows = cpu_iter_rows_per_item(it);
        row = w * rows;
        r->n = it->outer - row < rows ? it->outer - row : rows;
        r->len = it->inner;
    }
    cpu_iter_locate(it, row, r->off, r->idx);
    for (int k = 0; k < it->nops; k++) r->off[k] += s * it->inner_stride[k];
}

/* the next row of the item (r->n counts down; past the last, r->off is not to be used) */
static inline void cpu_iter_next(const struct cpu_iter *it, struct cpu_rows *r)
{
    if (--r->n <= 0) return;
    for (int d = it->ndim - 2; d >= 0; d--) {
        for (int k = 0; k < it->nops; k++) r->off[k] += it->stride[k][d];
        if (++r->idx[d] < it->shape[d]) return;
        for (int k = 0; k < it->nops; k++) r->off[k] -= it->shape[d] * it->stride[k][d];
        r->idx[d] = 0;
    }
}

#define CPU_PTR(T, t) ((T *)(t)->storage->data)

/* vecmath.c: f32 GELU and SiLU (forward, backward) on a contiguous row with libmvec; false
 * when it does not apply (another op, a stride, no libmvec, or baseline-only for tests) */
bool cpu_vec_unary_f32(enum unary_op op, float *o, int64_t so, const float *a, int64_t sa, int64_t n);
bool cpu_vec_unary_bwd_f32(enum unary_op op, float *dx, int64_t sdx, const float *dy, int64_t sdy, const float *x,
                           int64_t sx, int64_t n);
void cpu_elementwise_baseline_only(bool on);   /* tests: the scalar loops only */

/* kernels (one file each family) */
enum status cpu_copy(struct tensor *dst, const struct tensor *src);
enum status cpu_fill(struct tensor *dst, double value);
enum status cpu_unary(enum unary_op op, struct tensor *out, const struct tensor *a, const double *p);
enum status cpu_unary_backward(enum unary_op op, struct tensor *dx, const struct tensor *dy,
                               const struct tensor *x, const struct tensor *y, const double *p);
enum status cpu_binary(enum binary_op op, struct tensor *out, const struct tensor *a, const struct tensor *b);
enum status cpu_where(struct tensor *out, const struct tensor *cond, const struct tensor *a, const struct tensor *b);
enum status cpu_reduce(enum reduce_op op, struct tensor *out, const struct tensor *a);
enum status cpu_matmul(struct tensor *out, const struct tensor *a, const struct tensor *b, double alpha, double beta);
enum status cpu_softmax(struct tensor *out, const struct tensor *x, bool log);
enum status cpu_softmax_backward(struct tensor *dx, const struct tensor *dy, const struct tensor *y, bool log);
enum status cpu_embedding(struct tensor *out, const struct tensor *weight, const struct tensor *ids);
enum status cpu_embedding_backward(struct tensor *dweight, const struct tensor *dy, const struct tensor *ids);
enum status cpu_conv2d(struct tensor *out, const struct tensor *x, const struct tensor *w,
                       const struct tensor *bias, const struct conv2d_params *p);
enum status cpu_conv2d_backward_input(struct tensor *dx, const struct tensor *dy, const struct tensor *w,
                                      const struct conv2d_params *p);
enum status cpu_conv2d_backward_weight(struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                       const struct tensor *x, const struct conv2d_params *p);
enum status cpu_layer_norm(struct tensor *out, struct tensor *mean, struct tensor *rstd, const struct tensor *x,
                           const struct tensor *w, const struct tensor *b, double eps);
enum status cpu_layer_norm_backward(struct tensor *dx, struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                    const struct tensor *x, const struct tensor *w, const struct tensor *mean,
                                    const struct tensor *rstd);
enum status cpu_group_norm(struct tensor *out, struct tensor *mean, struct tensor *rstd, const struct tensor *x,
                           const struct tensor *w, const struct tensor *b, int groups, double eps);
enum status cpu_group_norm_backward(struct tensor *dx, struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                    const struct tensor *x, const struct tensor *w, const struct tensor *mean,
                                    const struct tensor *rstd, int groups);
enum status cpu_attention(struct tensor *out, struct tensor *lse, const struct tensor *q, const struct tensor *k,
                          const struct tensor *v, double scale, bool causal);
enum status cpu_attention_backward(struct tensor *dq, struct tensor *dk, struct tensor *dv, const struct tensor *dout,
                                   const struct tensor *q, const struct tensor *k, const struct tensor *v,
                                   const struct tensor *out, const struct tensor *lse, double scale, bool causal);
enum status cpu_resize(struct tensor *out, const struct tensor *x, enum resize_mode mode, bool align_corners);
enum status cpu_resize_backward(struct tensor *dx, const struct tensor *dy, enum resize_mode mode, bool align_corners);
enum status cpu_avg_pool2d(struct tensor *out, const struct tensor *x, const struct pool2d_params *p);
enum status cpu_avg_pool2d_backward(struct tensor *dx, const struct tensor *dy, const struct pool2d_params *p);
enum status cpu_random(struct tensor *out, uint64_t seed, uint64_t offset, bool normal);

/* dtype guard used by float kernels */
/* Call before a BLAS call that may run inside one of our parallel regions. OpenBLAS (OpenMP
 * build) threads itself unless omp_in_parallel(), which is false inside a region whose if()
 * clause made it inactive: it then starts a nested team, and libgomp creates (and destroys)
 * threads for every such call, oversubscribing the cores (a small DRaFT step ran 7x slower on
 * 2 threads than on 1). Setting nthreads to 1 changes only the current implicit task's ICV, so
 * BLAS runs single-threaded here and nowhere else; outside any region it does nothing. */
static inline void cpu_blas_serial_in_region(void)
{
    if (omp_get_level() > 0) omp_set_num_threads(1);
}

static inline enum status cpu_need_float(const struct tensor *t, const char *op)
{
    if (t->dtype == DTYPE_F32 || t->dtype == DTYPE_F64) return STATUS_OK;
    return tensor_fail(STATUS_DTYPE, "%s: dtype %s is not supported on the CPU (use f32 or f64; "
                       "f16/bf16 are storage types: convert with tensor_to_dtype)", op, dtype_name(t->dtype));
}

#endif
