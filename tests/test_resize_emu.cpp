/* test_resize_emu.cpp — the CUDA backend's resize and avg_pool2d kernels
 * (tensor/cuda/resize_kernels.cuh, with resize.cu's host taps and their CSR transpose) run on the
 * host through tests/cuda_emu.h, against the CPU backend: what test_cuda compares on a GPU,
 * without one. Every mode (nearest, bilinear, bicubic; align_corners both ways) at sizes up,
 * down, mixed and of one pixel, f32 and f64, forward and backward; avg_pool2d with and without
 * padding, strides 1 to 3, count_include_pad both ways. The input is a channels-last view
 * (strided), and each kernel runs on the grid resize.cu launches and on one of 2 x 1 blocks in
 * y and z, which makes every thread loop over channels and images (on a GPU only past 65535).
 * One line per case; exits non-zero on any bound exceeded. */
#include "tests/cuda_emu.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <vector>

#include "tensor/backend.h"
#include "tensor/cuda/resize_kernels.cuh"

namespace {

uint64_t rng = 0x6a09e667f3bcc908ull;
int failures = 0;

/* max |a - b| / max |b| over n elements of two tensors' dense data */
template <class T> double rel_err(const T *a, const T *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite((double)a[i])) return INFINITY;
        num = fmax(num, fabs((double)a[i] - (double)b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return num / (den > 0 ? den : 1);
}

/* [N, C, H, W] random, as a channels-last view (strides C*H*W... permuted): strided for the kernels */
template <class T> struct tensor *random_nhwc(int64_t N, int64_t C, int64_t H, int64_t W)
{
    const enum dtype dt = sizeof(T) == 4 ? DTYPE_F32 : DTYPE_F64;
    const int64_t shape[4] = {N, H, W, C};
    struct tensor *t = tensor_empty(dt, 4, shape, DEVICE_CPU);
    T *p = (T *)t->storage->data;
    for (int64_t i = 0; i < N * C * H * W; i++) p[i] = (T)emu_urand(rng);
    const int perm[4] = {0, 3, 1, 2};
    struct tensor *v = tensor_permute(t, perm);
    tensor_free(t);
    return v;
}

template <class T> struct tensor *dense(int64_t N, int64_t C, int64_t H, int64_t W)
{
    const int64_t shape[4] = {N, C, H, W};
    struct tensor *t = tensor_empty(sizeof(T) == 4 ? DTYPE_F32 : DTYPE_F64, 4, shape, DEVICE_CPU);
    memset(t->storage->data, 0xff, (size_t)(N * C * H * W) * sizeof(T));   /* NaN: an element never written shows */
    return t;
}

/* a case's tensors: x and dy random channels-last views, the CPU's out and dx (ref, dref), and the
 * emulated out and dx of one grid (fresh, NaN-filled) */
template <class T> struct case_io {
    int64_t N, C, H, W, OH, OW;
    struct tensor *x, *ref, *dy, *dref, *out = nullptr, *dx = nullptr;
    case_io(int64_t N_, int64_t C_, int64_t H_, int64_t W_, int64_t OH_, int64_t OW_)
        : N(N_), C(C_), H(H_), W(W_), OH(OH_), OW(OW_)
    {
        x = random_nhwc<T>(N, C, H, W), ref = dense<T>(N, C, OH, OW), dy = random_nhwc<T>(N, C, OH, OW);
        dref = dense<T>(N, C, H, W);
    }
    ~case_io()
    {
        for (struct tensor *t : {x, ref, dy, dref, out, dx}) tensor_free(t);
    }
    void fresh()
    {
        tensor_free(out);
        tensor_free(dx);
        out = dense<T>(N, C, OH, OW), dx = dense<T>(N, C, H, W);
    }
    /* the emulated out and dx against the CPU's: one line, "emu LABEL,GRID grid] vs CPU: ..." */
    void judge(const char *label, bool small, bool cpu_ok, double bound) const
    {
        const double e = rel_err((const T *)out->storage->data, (const T *)ref->storage->data, N * C * OH * OW);
        const double eb = rel_err((const T *)dx->storage->data, (const T *)dref->storage->data, N * C * H * W);
        const bool ok = cpu_ok && e <= bound && eb <= bound;
        failures += !ok;
        printf("emu %s,%s grid] vs CPU: out rel=%.1e dx rel=%.1e (bound %.0e) %s\n", label, small ? "2x1" : "full", e, eb, bound,
               ok ? "ok" : "FAILED");
    }
};

/* resize.cu's grid: x over a plane's pixels, y over channels (resize forward: about 8 a thread), z
 * over images; small = 2 blocks in y and 1 in z */
emu_dim3 grid_of(int64_t pixels, int64_t N, int64_t C, bool small, int64_t per_y)
{
    const int64_t gy = (C + per_y - 1) / per_y, gz = N;
    return emu_dim3{(unsigned)((pixels + 255) / 256), small ? 2u : (unsigned)(gy < 65535 ? gy : 65535),
                    small ? 1u : (unsigned)(gz < 65535 ? gz : 65535)};
}

const char *mode_name(enum resize_mode m) { return m == RESIZE_NEAREST ? "nearest" : m == RESIZE_BILINEAR ? "bilinear" : "bicubic"; }

template <class T> void resize_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW, enum resize_mode mode,
                                    bool align)
{
    const struct backend *cpu = backend_for(DEVICE_CPU);
    case_io<T> io(N, C, H, W, OH, OW);
    const bool cpu_ok = !cpu->resize(io.ref, io.x, mode, align) && !cpu->resize_backward(io.dref, io.dy, mode, align);
    /* the forward, as resize_fwd_run: taps per axis, NT of them */
    std::vector<int> hi, wi, hoff, ho, woff, wo;
    std::vector<T> hw, ww, hew, wew;
    const int nt = axis_taps<T>(H, OH, mode, align, hi, hw);
    axis_taps<T>(W, OW, mode, align, wi, ww);
    axis_transpose<T>(H, OH, nt, hi, hw, hoff, ho, hew);
    axis_transpose<T>(W, OW, nt, wi, ww, woff, wo, wew);
    char label[128];
    snprintf(label, sizeof label, "resize[%s,%s%s,[%lld,%lld,%lld,%lld]->[%lld,%lld]", sizeof(T) == 4 ? "f32" : "f64", mode_name(mode),
             align ? ",align_corners" : "", (long long)N, (long long)C, (long long)H, (long long)W, (long long)OH, (long long)OW);
    /* f64: the CPU's bits so far (the same taps, the same sums in the same order); f32: the
     * same taps rounded to float once, summed in float where the CPU sums in double: up to 16
     * products (bicubic), 2.1e-7 seen. Taps from float coordinates (torch's f32 rule) give 1.3e-6 */
    const double bound = sizeof(T) == 8 ? 1e-14 : 6e-7;
    for (int small = 0; small < 2; small++) {
        io.fresh();
        const view4<T> o = make_view<T>(io.out), d = make_view<T>(io.dx);
        const view4<const T> xv = make_view<const T>(io.x), gv = make_view<const T>(io.dy);
        emu_launch(grid_of(OH * OW, N, C, small, 8), 1, 256, [&] {
            if (nt == 1) resize_fwd_kernel<T, 1>(o, xv, N, C, (int)OW, (int)(OH * OW), hi.data(), hw.data(), wi.data(), ww.data());
            else if (nt == 2) resize_fwd_kernel<T, 2>(o, xv, N, C, (int)OW, (int)(OH * OW), hi.data(), hw.data(), wi.data(), ww.data());
            else resize_fwd_kernel<T, 4>(o, xv, N, C, (int)OW, (int)(OH * OW), hi.data(), hw.data(), wi.data(), ww.data());
        });
        emu_launch(grid_of(H * W, N, C, small, 1), 1, 256, [&] {
            resize_bwd_kernel<T>(d, gv, N, C, (int)W, (int)(H * W), hoff.data(), ho.data(), hew.data(), woff.data(), wo.data(),
                                 wew.data());
        });
        io.judge(label, small, cpu_ok, bound);
    }
}

template <class T> void pool_case(int64_t N, int64_t C, int64_t H, int64_t W, const struct pool2d_params &p)
{
    const struct backend *cpu = backend_for(DEVICE_CPU);
    const int64_t OH = (H + 2 * p.pad_h - p.kernel_h) / p.stride_h + 1, OW = (W + 2 * p.pad_w - p.kernel_w) / p.stride_w + 1;
    case_io<T> io(N, C, H, W, OH, OW);
    const bool cpu_ok = !cpu->avg_pool2d(io.ref, io.x, &p) && !cpu->avg_pool2d_backward(io.dref, io.dy, &p);
    const pool q = {p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.count_include_pad};
    char label[128];
    snprintf(label, sizeof label, "avg_pool2d[%s,[%lld,%lld,%lld,%lld],k%dx%d,s%dx%d,p%dx%d%s", sizeof(T) == 4 ? "f32" : "f64",
             (long long)N, (long long)C, (long long)H, (long long)W, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h,
             p.pad_w, p.count_include_pad ? ",include_pad" : "");
    const double bound = sizeof(T) == 4 ? 1e-6 : 1e-14;
    for (int small = 0; small < 2; small++) {
        io.fresh();
        const view4<T> o = make_view<T>(io.out), d = make_view<T>(io.dx);
        const view4<const T> xv = make_view<const T>(io.x), gv = make_view<const T>(io.dy);
        emu_launch(grid_of(OH * OW, N, C, small, 1), 1, 256,
                   [&] { pool_fwd_kernel<T>(o, xv, N, C, (int)H, (int)W, (int)OW, (int)(OH * OW), q); });
        emu_launch(grid_of(H * W, N, C, small, 1), 1, 256,
                   [&] { pool_bwd_kernel<T>(d, gv, N, C, (int)H, (int)W, (int)OH, (int)OW, q); });
        io.judge(label, small, cpu_ok, bound);
    }
}

}  // namespace

int main()
{
    /* up 2x (the VAE's and UNet's nearest upsampling), down, mixed, from and to a single pixel */
    const int64_t sizes[][4] = {{5, 7, 10, 14}, {8, 9, 3, 4}, {6, 6, 13, 5}, {1, 4, 3, 1}, {4, 3, 4, 3}};
    for (const auto &s : sizes)
        for (enum resize_mode m : {RESIZE_NEAREST, RESIZE_BILINEAR, RESIZE_BICUBIC})
            for (int align = 0; align < (m == RESIZE_NEAREST ? 1 : 2); align++) {
                resize_case<float>(2, 5, s[0], s[1], s[2], s[3], m, align);
                resize_case<double>(2, 3, s[0], s[1], s[2], s[3], m, align);
            }
    const struct pool2d_params pools[] = {
        {2, 2, 2, 2, 0, 0, true},  {3, 3, 1, 1, 1, 1, true}, {3, 3, 2, 2, 1, 1, false},
        {3, 2, 3, 1, 1, 1, false}, {2, 3, 1, 2, 0, 1, true},
    };
    for (const struct pool2d_params &p : pools) {
        pool_case<float>(2, 5, 9, 7, p);
        pool_case<double>(1, 3, 8, 11, p);
    }
    const int64_t live = tensor_live_count();
    if (live) printf("emu resize: %lld tensors leaked FAILED\n", (long long)live);
    printf("%d failed\n", failures + (live != 0));
    return failures || live ? 1 : 0;
}
