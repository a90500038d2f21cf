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
/* device time of the work queued on the stream between the two calls (CUDA events, as
 * torch.cuda.Event timing): benchmarks; cuda_timer_end waits for the work to finish */
enum status cuda_timer_begin(void);
enum status cuda_timer_end(double *ms);
/* the profiler's collection window (cudaProfilerStart / Stop): a program run under
 * `ncu --profile-from-start off` profiles only the kernels queued between the two (bench_gpu's
 * BENCH_GPU_ONLY rows); the queued work is finished first */
enum status cuda_profiler_mark(bool start);
/* a kernel-variant switch (tensor/README.md lists them): the environment variable's 1 or 0 when
 * it is set, else the compiled-in default `def`. Read at each call, so tests and benchmarks run
 * both variants whatever the default; making a variant the default is changing `def` at its one
 * call. */
bool cuda_switch(const char *name, bool def);
/* the device's multiprocessor count (132 if it cannot be read): grid sizing */
int cuda_sm_count(void);
/* column-major strided-batched C [m, n] = alpha op(A) [m, k] op(B) [k, n] + beta C, `count` times
 * (batch strides sA, sB, sC; 0 = shared), op = transpose when trans_*: f32 as tensor_precision()
 * says (exact, TF32, or bf16 copies of both operands with f32 accumulation and output), bf16/f16
 * (A, B and C of that dtype) with f32 accumulation, f64 in f64. matmul.cu; conv2d.cu's f32 GEMMs. */
enum status cuda_gemm(enum dtype dt, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                      const void *A, int64_t lda, int64_t sA, const void *B, int64_t ldb, int64_t sB, double beta, void *C,
                      int64_t ldc, int64_t sC, int64_t count);
/* the same on bf16 operands with f32 accumulation and an f32 C, where A (a_bf16) and/or B (b_bf16)
 * already are bf16 copies (conv2d.cu's im2col writes them so under PRECISION_BF16); an f32 operand
 * is packed to bf16 first */
enum status cuda_gemm_bf16(bool a_bf16, bool b_bf16, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                           double alpha, const void *A, int64_t lda, int64_t sA, const void *B, int64_t ldb, int64_t sB,
                           double beta, float *C, int64_t ldc, int64_t sC, int64_t count);

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
/* bench_gpu: the one-pass group_norm kernels' launch at x [N, C, HW] with G groups (cluster size,
 * registers, shared memory) and how many of their clusters fit on the device at once, a line per
 * kernel into buf (empty when G does not divide C) */
void cuda_group_norm_occupancy(char *buf, size_t n, int64_t N, int C, int G, int64_t HW);
/* bench_gpu: an empty kernel launched with the one-pass forward's grid, block and shared memory,
 * in its clusters or not (the single-call rows' launch floor) */
enum status cuda_group_norm_empty_launch(int64_t N, int C, int G, int64_t HW, bool cluster);
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
