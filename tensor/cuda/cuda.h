/* cuda.h — the CUDA backend's internal interface: checked calls, the stream, and the
 * kernel entry points that backend_cuda.cu puts in the table (same contracts as cpu.h). */
#ifndef TENSOR_CUDA_H
#define TENSOR_CUDA_H

#include "tensor/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Register the CUDA backend if a device is present. Returns STATUS_OK, or STATUS_DEVICE
 * with a message saying why not (no driver, no device). Safe to call more than once. */
enum status cuda_init(void);
bool cuda_available(void);
/* the stream all kernels run on; synchronise before reading results on the host */
void *cuda_stream(void);
enum status cuda_synchronize(void);
/* PRECISION_BF16 (tensor_set_precision): `count` f32 matrices (batch stride sb, 0 = one shared
 * matrix) of `outer` runs of `inner` contiguous elements at stride ld, packed into a new bf16
 * tensor *buf [count or 1, outer, inner] (tensor_free it once the GEMM is queued) */
enum status cuda_pack_bf16(struct tensor **buf, const float *src, int64_t count, int64_t sb, int64_t outer, int64_t inner,
                           int64_t ld);
/* the same for a cuBLAS (column-major) GEMM operand op(X) [rows, cols] at *p with leading dim
 * *ld and batch stride *stride: all three are replaced by the packed copy's */
enum status cuda_gemm_bf16_operand(struct tensor **buf, const void **p, int64_t *ld, int64_t *stride, bool op_t,
                                   int64_t rows, int64_t cols, int64_t count);

enum status cuda_copy(struct tensor *dst, const struct tensor *src);
enum status cuda_fill(struct tensor *dst, double value);
enum status cuda_unary(enum unary_op op, struct tensor *out, const struct tensor *a, const double *p);
enum status cuda_unary_backward(enum unary_op op, struct tensor *dx, const struct tensor *dy,
                                const struct tensor *x, const struct tensor *y, const double *p);
enum status cuda_binary(enum binary_op op, struct tensor *out, const struct tensor *a, const struct tensor *b);
enum status cuda_where(struct tensor *out, const struct tensor *cond, const struct tensor *a, const struct tensor *b);
enum status cuda_reduce(enum reduce_op op, struct tensor *out, const struct tensor *a);
enum status cuda_matmul(struct tensor *out, const struct tensor *a, const struct tensor *b, double alpha, double beta);
enum status cuda_softmax(struct tensor *out, const struct tensor *x, bool log);
enum status cuda_softmax_backward(struct tensor *dx, const struct tensor *dy, const struct tensor *y, bool log);
enum status cuda_embedding(struct tensor *out, const struct tensor *weight, const struct tensor *ids);
enum status cuda_embedding_backward(struct tensor *dweight, const struct tensor *dy, const struct tensor *ids);
enum status cuda_random(struct tensor *out, uint64_t seed, uint64_t offset, bool normal);
/* in conv2d.cu, norm.cu, attention.cu, resize.cu */
enum status cuda_conv2d(struct tensor *out, const struct tensor *x, const struct tensor *w,
                        const struct tensor *bias, const struct conv2d_params *p);
enum status cuda_conv2d_backward_input(struct tensor *dx, const struct tensor *dy, const struct tensor *w,
                                       const struct conv2d_params *p);
enum status cuda_conv2d_backward_weight(struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                        const struct tensor *x, const struct conv2d_params *p);
enum status cuda_layer_norm(struct tensor *out, struct tensor *mean, struct tensor *rstd, const struct tensor *x,
                            const struct tensor *w, const struct tensor *b, double eps);
enum status cuda_layer_norm_backward(struct tensor *dx, struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                     const struct tensor *x, const struct tensor *w, const struct tensor *mean,
                                     const struct tensor *rstd);
enum status cuda_group_norm(struct tensor *out, struct tensor *mean, struct tensor *rstd, const struct tensor *x,
                            const struct tensor *w, const struct tensor *b, int groups, double eps);
enum status cuda_group_norm_backward(struct tensor *dx, struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                     const struct tensor *x, const struct tensor *w, const struct tensor *mean,
                                     const struct tensor *rstd, int groups);
enum status cuda_attention(struct tensor *out, struct tensor *lse, const struct tensor *q, const struct tensor *k,
                           const struct tensor *v, double scale, bool causal);
enum status cuda_attention_backward(struct tensor *dq, struct tensor *dk, struct tensor *dv, const struct tensor *dout,
                                    const struct tensor *q, const struct tensor *k, const struct tensor *v,
                                    const struct tensor *out, const struct tensor *lse, double scale, bool causal);
enum status cuda_resize(struct tensor *out, const struct tensor *x, enum resize_mode mode, bool align_corners);
enum status cuda_resize_backward(struct tensor *dx, const struct tensor *dy, enum resize_mode mode, bool align_corners);
enum status cuda_avg_pool2d(struct tensor *out, const struct tensor *x, const struct pool2d_params *p);
enum status cuda_avg_pool2d_backward(struct tensor *dx, const struct tensor *dy, const struct pool2d_params *p);

#ifdef __cplusplus
}
#endif

/* Checked calls: on failure set an error naming the call, file and line, and return it. */
#define CUDA_TRY(call)                                                                                     \
    do {                                                                                                   \
        cudaError_t e_ = (call);                                                                           \
        if (e_ != cudaSuccess)                                                                             \
            return tensor_fail(STATUS_DEVICE, "CUDA error %s (%s) in %s at %s:%d", cudaGetErrorName(e_),   \
                               cudaGetErrorString(e_), #call, __FILE__, __LINE__);                         \
    } while (0)
/* after a kernel launch */
#define CUDA_LAUNCHED() CUDA_TRY(cudaGetLastError())

#endif
