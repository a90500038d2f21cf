/* resize.cu — resize (nearest / bilinear / bicubic) and avg_pool2d, forward and backward, for
 * the CUDA backend.
 *
 * Algorithm. Every mode of resize is separable: out[oh, ow] = sum_a wh[oh, a] * sum_b ww[ow, b]
 * * x[ih(oh, a), iw(ow, b)] with 1 (nearest), 2 (bilinear) or 4 (bicubic) taps per axis. The
 * taps are computed on the host by torch.nn.functional.interpolate's rules, as the CPU backend
 * computes them (the source coordinate and the weights in double for both dtypes, where torch's
 * f32 takes float; nearest's index in float, as torch; bicubic A = -0.75 with clamped borders),
 * and uploaded as small per-axis tables (resize_kernels.cuh, which tests/test_resize_emu.cpp runs
 * on the CPU against the CPU backend). The
 * forward gives each thread one output pixel for a run of channels. The backward is the
 * transpose, evaluated as a gather: per axis a CSR list of (output index, weight) for each
 * input index, so each dx element sums its own contributions. avg_pool2d (torch semantics,
 * floor mode: the window clipped to the padded then to the real image, divisor by
 * count_include_pad) is analytic; its backward gathers over the windows containing each pixel.
 * Memory: the tables are O(H + W + OH + OW) entries; all tensors are read and written through
 * their strides, so no copies are made.
 * Determinism: gathers only (no atomics); every sum runs in a fixed order.
 * Measured on an H200 (f32, nearest 2x [2,512,256,256] -> 512x512): forward 0.65 ms, backward
 * 0.73 ms (torch 0.71 / 0.60 ms). */
#include "tensor/cuda/cuda.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

namespace {

#include "tensor/cuda/resize_kernels.cuh"

enum status need_float(const struct tensor *t, const char *op)
{
    if (t->dtype == DTYPE_F32 || t->dtype == DTYPE_F64) return STATUS_OK;
    return tensor_fail(STATUS_DTYPE, "%s: dtype %s is not supported on CUDA (use f32 or f64)", op, dtype_name(t->dtype));
}

enum status check_pair(const struct tensor *out, const struct tensor *in, const char *op)
{
    enum status s = STATUS_OK;
    if ((s = need_float(in, op))) return s;
    if (out->dtype != in->dtype)
        return tensor_fail(STATUS_DTYPE, "%s: dtypes differ (%s and %s)", op, dtype_name(out->dtype), dtype_name(in->dtype));
    if (out->ndim != 4 || in->ndim != 4 || out->shape[0] != in->shape[0] || out->shape[1] != in->shape[1])
        return tensor_fail(STATUS_SHAPE, "%s: expected [N,C,H,W] tensors with the same N and C", op);
    if (out->shape[2] > INT32_MAX || out->shape[3] > INT32_MAX || in->shape[2] > INT32_MAX || in->shape[3] > INT32_MAX ||
        out->shape[2] * out->shape[3] > INT32_MAX || in->shape[2] * in->shape[3] > INT32_MAX)
        return tensor_fail(STATUS_SHAPE, "%s: image too large", op);
    return STATUS_OK;
}

/* grid: x over the pixels of a plane, y over channels, z over images (y and z loop past 65535),
 * so no thread divides a 64-bit plane index */
dim3 plane_grid(int64_t pixels, int64_t N, int64_t C, int threads)
{
    const int64_t gy = C < 65535 ? C : 65535, gz = N < 65535 ? N : 65535;
    return dim3((unsigned)((pixels + threads - 1) / threads), (unsigned)(gy > 0 ? gy : 1), (unsigned)(gz > 0 ? gz : 1));
}

/* packs host arrays into one device buffer (owned by the enclosing scope) */
struct packer {
    std::vector<unsigned char> host;
    template <typename E> size_t add(const std::vector<E> &v)
    {
        size_t at = (host.size() + 15) / 16 * 16;
        host.resize(at + v.size() * sizeof(E) + 16);
        if (!v.empty()) memcpy(host.data() + at, v.data(), v.size() * sizeof(E));
        return at;
    }
    unsigned char *upload(enum status *s)
    {
        int64_t n = (int64_t)((host.size() + 7) / 8);
        if (n < 1) n = 1;
        struct tensor *t = tensor_empty(DTYPE_F64, 1, &n, DEVICE_CUDA);
        if (!t) { *s = tensor_status() ? tensor_status() : STATUS_OOM; return NULL; }
        unsigned char *d = (unsigned char *)t->storage->data;
        /* pageable source: the call returns once the bytes are staged, so `host` may go away */
        cudaError_t e = cudaMemcpyAsync(d, host.data(), host.size(), cudaMemcpyHostToDevice, (cudaStream_t)cuda_stream());
        if (e != cudaSuccess) {
            *s = tensor_fail(STATUS_DEVICE, "CUDA error %s (%s) in cudaMemcpyAsync at %s:%d", cudaGetErrorName(e),
                             cudaGetErrorString(e), __FILE__, __LINE__);
            return NULL;
        }
        return d;
    }
};

template <typename T>
enum status resize_fwd_run(struct tensor *out, const struct tensor *x, enum resize_mode mode, bool align_corners)
{
    enum status s = STATUS_OK;
    const int64_t H = x->shape[2], W = x->shape[3], OH = out->shape[2], OW = out->shape[3];
    const int64_t N = x->shape[0], C = x->shape[1];
    std::vector<int> hi, wi;
    std::vector<T> hw, ww;
    const int nt = axis_taps<T>(H, OH, mode, align_corners, hi, hw);
    axis_taps<T>(W, OW, mode, align_corners, wi, ww);
    packer pk;
    const size_t ohi = pk.add(hi), ohw = pk.add(hw), owi = pk.add(wi), oww = pk.add(ww);
    unsigned char *d = pk.upload(&s);
    if (!d) return s;
    dim3 grid = plane_grid(OH * OW, N, C, 256);
    grid.y = (unsigned)((C + 7) / 8 < 65535 ? (C + 7) / 8 : 65535);   /* about 8 channels per thread */
    cudaStream_t st = (cudaStream_t)cuda_stream();
    view4<T> o = make_view<T>(out);
    view4<const T> xv = make_view<const T>(x);
    const int *dhi = (const int *)(d + ohi), *dwi = (const int *)(d + owi);
    const T *dhw = (const T *)(d + ohw), *dww = (const T *)(d + oww);
    if (nt == 1) resize_fwd_kernel<T, 1><<<grid, 256, 0, st>>>(o, xv, N, C, (int)OW, (int)(OH * OW), dhi, dhw, dwi, dww);
    else if (nt == 2) resize_fwd_kernel<T, 2><<<grid, 256, 0, st>>>(o, xv, N, C, (int)OW, (int)(OH * OW), dhi, dhw, dwi, dww);
    else resize_fwd_kernel<T, 4><<<grid, 256, 0, st>>>(o, xv, N, C, (int)OW, (int)(OH * OW), dhi, dhw, dwi, dww);
    CUDA_LAUNCHED();
    return STATUS_OK;
}

template <typename T>
enum status resize_bwd_run(struct tensor *dx, const struct tensor *dy, enum resize_mode mode, bool align_corners)
{
    enum status s = STATUS_OK;
    const int64_t H = dx->shape[2], W = dx->shape[3], OH = dy->shape[2], OW = dy->shape[3];
    const int64_t N = dx->shape[0], C = dx->shape[1];
    std::vector<int> hi, wi, hoff, ho, woff, wo;
    std::vector<T> hw, ww, hew, wew;
    const int nt = axis_taps<T>(H, OH, mode, align_corners, hi, hw);
    axis_taps<T>(W, OW, mode, align_corners, wi, ww);
    axis_transpose<T>(H, OH, nt, hi, hw, hoff, ho, hew);
    axis_transpose<T>(W, OW, nt, wi, ww, woff, wo, wew);
    packer pk;
    const size_t a = pk.add(hoff), b = pk.add(ho), c = pk.add(hew), e = pk.add(woff), f = pk.add(wo), g = pk.add(wew);
    unsigned char *d = pk.upload(&s);
    if (!d) return s;
    const dim3 grid = plane_grid(H * W, N, C, 256);
    resize_bwd_kernel<T><<<grid, 256, 0, (cudaStream_t)cuda_stream()>>>(
        make_view<T>(dx), make_view<const T>(dy), N, C, (int)W, (int)(H * W), (const int *)(d + a),
        (const int *)(d + b), (const T *)(d + c), (const int *)(d + e), (const int *)(d + f), (const T *)(d + g));
    CUDA_LAUNCHED();
    return STATUS_OK;
}

enum status pool_check(const struct pool2d_params *p, const char *op)
{
    if (!p || p->kernel_h <= 0 || p->kernel_w <= 0 || p->stride_h <= 0 || p->stride_w <= 0 || p->pad_h < 0 || p->pad_w < 0 ||
        p->pad_h * 2 > p->kernel_h || p->pad_w * 2 > p->kernel_w)
        return tensor_fail(STATUS_VALUE, "%s: bad parameters (kernel > 0, stride > 0, 0 <= pad <= kernel/2)", op);
    return STATUS_OK;
}

}  // namespace

/* ---------------------------------------------------------------- entry points */

extern "C" enum status cuda_resize(struct tensor *out, const struct tensor *x, enum resize_mode mode, bool align_corners)
{
    enum status s = STATUS_OK;
    if ((s = check_pair(out, x, "resize"))) return s;
    if (tensor_numel(out) == 0) return STATUS_OK;
    if (tensor_numel(x) == 0) return tensor_fail(STATUS_SHAPE, "resize: empty input for a non-empty output");
    tensor_scope_begin();
    s = x->dtype == DTYPE_F32 ? resize_fwd_run<float>(out, x, mode, align_corners)
                              : resize_fwd_run<double>(out, x, mode, align_corners);
    tensor_scope_end();
    return s;
}

extern "C" enum status cuda_resize_backward(struct tensor *dx, const struct tensor *dy, enum resize_mode mode,
                                            bool align_corners)
{
    enum status s = STATUS_OK;
    if ((s = check_pair(dx, dy, "resize_backward"))) return s;
    if (tensor_numel(dx) == 0) return STATUS_OK;
    if (tensor_numel(dy) == 0) return cuda_fill(dx, 0);
    tensor_scope_begin();
    s = dy->dtype == DTYPE_F32 ? resize_bwd_run<float>(dx, dy, mode, align_corners)
                               : resize_bwd_run<double>(dx, dy, mode, align_corners);
    tensor_scope_end();
    return s;
}

extern "C" enum status cuda_avg_pool2d(struct tensor *out, const struct tensor *x, const struct pool2d_params *p)
{
    enum status s = STATUS_OK;
    if ((s = check_pair(out, x, "avg_pool2d")) || (s = pool_check(p, "avg_pool2d"))) return s;
    if (tensor_numel(out) == 0) return STATUS_OK;
    const int64_t H = x->shape[2], W = x->shape[3], OH = out->shape[2], OW = out->shape[3];
    const int64_t N = x->shape[0], C = x->shape[1];
    const pool q = {p->kernel_h, p->kernel_w, p->stride_h, p->stride_w, p->pad_h, p->pad_w, p->count_include_pad};
    const dim3 grid = plane_grid(OH * OW, N, C, 256);
    cudaStream_t st = (cudaStream_t)cuda_stream();
    if (x->dtype == DTYPE_F32)
        pool_fwd_kernel<float><<<grid, 256, 0, st>>>(make_view<float>(out), make_view<const float>(x), N, C,
                                                    (int)H, (int)W, (int)OW, (int)(OH * OW), q);
    else
        pool_fwd_kernel<double><<<grid, 256, 0, st>>>(make_view<double>(out), make_view<const double>(x), N, C,
                                                     (int)H, (int)W, (int)OW, (int)(OH * OW), q);
    CUDA_LAUNCHED();
    return STATUS_OK;
}

extern "C" enum status cuda_avg_pool2d_backward(struct tensor *dx, const struct tensor *dy, const struct pool2d_params *p)
{
    enum status s = STATUS_OK;
    if ((s = check_pair(dx, dy, "avg_pool2d_backward")) || (s = pool_check(p, "avg_pool2d_backward"))) return s;
    if (tensor_numel(dx) == 0) return STATUS_OK;
    const int64_t H = dx->shape[2], W = dx->shape[3], OH = dy->shape[2], OW = dy->shape[3];
    const int64_t N = dx->shape[0], C = dx->shape[1];
    const pool q = {p->kernel_h, p->kernel_w, p->stride_h, p->stride_w, p->pad_h, p->pad_w, p->count_include_pad};
    const dim3 grid = plane_grid(H * W, N, C, 256);
    cudaStream_t st = (cudaStream_t)cuda_stream();
    if (dy->dtype == DTYPE_F32)
        pool_bwd_kernel<float><<<grid, 256, 0, st>>>(make_view<float>(dx), make_view<const float>(dy), N, C,
                                                    (int)H, (int)W, (int)OH, (int)OW, q);
    else
        pool_bwd_kernel<double><<<grid, 256, 0, st>>>(make_view<double>(dx), make_view<const double>(dy), N, C,
                                                     (int)H, (int)W, (int)OH, (int)OW, q);
    CUDA_LAUNCHED();
    return STATUS_OK;
}
