/* resize_kernels.cuh — resize.cu's host taps (torch's source-index rules per mode, and their
 * transpose into per-input CSR lists for the backward) and its kernels: resize forward (a thread an
 * output pixel, for a run of channels) and backward (a gather over the CSR lists), avg_pool2d
 * forward and backward. Included by resize.cu inside its anonymous namespace, and by
 * tests/test_resize_emu.cpp on the host through tests/cuda_emu.h. Needs <math.h>, <stdint.h>,
 * <vector> and tensor/tensor.h (enum resize_mode). */
#ifndef TENSOR_CUDA_RESIZE_KERNELS_CUH
#define TENSOR_CUDA_RESIZE_KERNELS_CUH

/* a 4-D [N, C, H, W] tensor: base pointer and element strides */
template <typename T> struct view4 {
    T *p;
    int64_t sn, sc, sh, sw;
};

/* ---------------------------------------------------------------- resize taps (host) */

/* the view of a 4-D tensor (T may be const) */
template <typename T> view4<T> make_view(const struct tensor *t)
{
    return view4<T>{(T *)t->storage->data + t->offset, t->stride[0], t->stride[1], t->stride[2], t->stride[3]};
}

constexpr int kMaxTaps = 4;

template <typename A> A cubic1(A x, A a) { return ((a + 2) * x - (a + 3)) * x * x + 1; }
template <typename A> A cubic2(A x, A a) { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a; }

/* torch's area_pixel_compute_scale / area_pixel_compute_source_index */
template <typename A> A area_scale(int64_t in, int64_t out, bool align_corners)
{
    if (align_corners) return out > 1 ? (A)(in - 1) / (A)(out - 1) : A(0);
    return (A)in / (A)out;
}
template <typename A> A source_index(A scale, int64_t dst, bool align_corners, bool cubic)
{
    if (align_corners) return scale * (A)dst;
    A src = scale * ((A)dst + (A)0.5) - (A)0.5;
    return (!cubic && src < 0) ? A(0) : src;
}

/* taps of one axis: idx[o * kMaxTaps + t], w[...] for t < ntaps */
template <typename T>
int axis_taps(int64_t in, int64_t out, enum resize_mode mode, bool align_corners, std::vector<int> &idx,
              std::vector<T> &w)
{
    idx.assign((size_t)out * kMaxTaps, 0);
    w.assign((size_t)out * kMaxTaps, T(0));
    if (mode == RESIZE_NEAREST) {
        const float scale = (float)in / (float)out;
        for (int64_t o = 0; o < out; o++) {
            int64_t i;
            if (out == in) i = o;
            else if (out == 2 * in) i = o >> 1;
            else {
                i = (int64_t)floorf((float)o * scale);
                if (i > in - 1) i = in - 1;
            }
            idx[o * kMaxTaps] = (int)i;
            w[o * kMaxTaps] = T(1);
        }
        return 1;
    }
    /* source coordinates and weights in double for both dtypes, as the CPU backend (tensor/cpu/resize.c)
     * computes them: torch's f32 takes float, up to ~3e-5 px off at 512 px; the weights are then
     * rounded to T once */
    typedef double A;
    const A scale = area_scale<A>(in, out, align_corners);
    if (mode == RESIZE_BILINEAR) {
        for (int64_t o = 0; o < out; o++) {
            const A r = source_index<A>(scale, o, align_corners, false);
            const int64_t i0 = (int64_t)r;
            const int64_t i1 = i0 + (i0 < in - 1 ? 1 : 0);
            const A l1 = r - (A)i0, l0 = A(1) - l1;
            idx[o * kMaxTaps] = (int)i0;
            w[o * kMaxTaps] = (T)l0;
            idx[o * kMaxTaps + 1] = (int)i1;
            w[o * kMaxTaps + 1] = (T)l1;
        }
        return 2;
    }
    const A a = A(-0.75);
    for (int64_t o = 0; o < out; o++) {
        const A r = source_index<A>(scale, o, align_corners, true);
        const A fl = floor(r);
        const int64_t i = (int64_t)fl;
        const A t = r - fl;
        const A c[4] = {cubic2<A>(t + A(1), a), cubic1<A>(t, a), cubic1<A>(A(1) - t, a), cubic2<A>(A(1) - t + A(1), a)};
        for (int k = 0; k < 4; k++) {
            int64_t j = i - 1 + k;
            j = j < 0 ? 0 : j > in - 1 ? in - 1 : j;
            idx[o * kMaxTaps + k] = (int)j;
            w[o * kMaxTaps + k] = (T)c[k];
        }
    }
    return 4;
}

/* transpose of the taps: for each input index i, entries off[i] .. off[i+1] of (output index, weight),
 * in increasing output index (then tap) order */
template <typename T>
void axis_transpose(int64_t in, int64_t out, int ntaps, const std::vector<int> &idx, const std::vector<T> &w,
                    std::vector<int> &off, std::vector<int> &eo, std::vector<T> &ew)
{
    off.assign((size_t)in + 1, 0);
    for (int64_t o = 0; o < out; o++)
        for (int t = 0; t < ntaps; t++) off[(size_t)idx[o * kMaxTaps + t] + 1]++;
    for (int64_t i = 0; i < in; i++) off[i + 1] += off[i];
    std::vector<int> fill(off.begin(), off.end() - 1);
    eo.assign((size_t)off[in], 0);
    ew.assign((size_t)off[in], T(0));
    for (int64_t o = 0; o < out; o++)
        for (int t = 0; t < ntaps; t++) {
            const int i = idx[o * kMaxTaps + t];
            eo[fill[i]] = (int)o;
            ew[fill[i]] = w[o * kMaxTaps + t];
            fill[i]++;
        }
}

/* ---------------------------------------------------------------- resize kernels */

/* a thread computes one output pixel for a run of channels (taps and offsets computed once) */
template <typename T, int NT>
__global__ void __launch_bounds__(256)
resize_fwd_kernel(view4<T> out, view4<const T> x, int64_t N, int64_t C, int OW, int OHW, const int *__restrict__ hi,
                  const T *__restrict__ hw, const int *__restrict__ wi, const T *__restrict__ ww)
{
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= OHW) return;
    const int oh = p / OW, ow = p - oh * OW;
    int64_t off[NT][NT];
    T wh[NT], wv[NT];
#pragma unroll
    for (int a = 0; a < NT; a++) {
        wh[a] = hw[oh * kMaxTaps + a];
        wv[a] = ww[ow * kMaxTaps + a];
    }
#pragma unroll
    for (int a = 0; a < NT; a++)
#pragma unroll
        for (int b = 0; b < NT; b++) off[a][b] = hi[oh * kMaxTaps + a] * x.sh + wi[ow * kMaxTaps + b] * x.sw;
    const int64_t xstep = gridDim.y * x.sc, ostep = gridDim.y * out.sc;
    for (int64_t n = blockIdx.z; n < N; n += gridDim.z) {
        const T *xp = x.p + n * x.sn + blockIdx.y * x.sc;
        T *op = out.p + n * out.sn + blockIdx.y * out.sc + oh * out.sh + ow * out.sw;
        for (int64_t c = blockIdx.y; c < C; c += gridDim.y, xp += xstep, op += ostep) {
            T acc = 0;
#pragma unroll
            for (int a = 0; a < NT; a++) {
                T r = 0;
#pragma unroll
                for (int b = 0; b < NT; b++) r += wv[b] * xp[off[a][b]];
                acc += wh[a] * r;
            }
            *op = acc;
        }
    }
}

template <typename T>
__global__ void __launch_bounds__(256)
resize_bwd_kernel(view4<T> dx, view4<const T> dy, int64_t N, int64_t C, int W, int HW, const int *__restrict__ hoff,
                  const int *__restrict__ ho, const T *__restrict__ hw, const int *__restrict__ woff,
                  const int *__restrict__ wo, const T *__restrict__ ww)
{
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= HW) return;
    const int ih = p / W, iw = p % W;
    const int h0 = hoff[ih], h1 = hoff[ih + 1], w0 = woff[iw], w1 = woff[iw + 1];
    for (int64_t n = blockIdx.z; n < N; n += gridDim.z)
        for (int64_t c = blockIdx.y; c < C; c += gridDim.y) {
            const T *g = dy.p + n * dy.sn + c * dy.sc;
            T acc = 0;
            for (int a = h0; a < h1; a++) {
                const T *row = g + ho[a] * dy.sh;
                T r = 0;
                for (int b = w0; b < w1; b++) r += ww[b] * row[wo[b] * dy.sw];
                acc += hw[a] * r;
            }
            dx.p[n * dx.sn + c * dx.sc + ih * dx.sh + iw * dx.sw] = acc;
        }
}

/* ---------------------------------------------------------------- avg_pool2d */

struct pool {
    int kh, kw, sh, sw, ph, pw;
    bool include_pad;
};

template <typename T>
__global__ void __launch_bounds__(256)
pool_fwd_kernel(view4<T> out, view4<const T> x, int64_t N, int64_t C, int H, int W, int OW, int OHW, pool p)
{
    const int q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= OHW) return;
    const int oh = q / OW, ow = q % OW;
    int hs = oh * p.sh - p.ph, ws = ow * p.sw - p.pw;
    int he = min(hs + p.kh, H + p.ph), we = min(ws + p.kw, W + p.pw);
    const int pool_size = (he - hs) * (we - ws);
    hs = max(hs, 0);
    ws = max(ws, 0);
    he = min(he, H);
    we = min(we, W);
    const int div = p.include_pad ? pool_size : (he - hs) * (we - ws);
    for (int64_t n = blockIdx.z; n < N; n += gridDim.z)
        for (int64_t c = blockIdx.y; c < C; c += gridDim.y) {
            const T *xp = x.p + n * x.sn + c * x.sc;
            T acc = 0;
            for (int h = hs; h < he; h++)
                for (int w = ws; w < we; w++) acc += xp[h * x.sh + w * x.sw];
            out.p[n * out.sn + c * out.sc + oh * out.sh + ow * out.sw] = div > 0 ? acc / (T)div : T(0);
        }
}

/* dx[h, w] = sum over windows (oh, ow) containing (h, w) of dy[oh, ow] / divisor(oh, ow) */
template <typename T>
__global__ void __launch_bounds__(256)
pool_bwd_kernel(view4<T> dx, view4<const T> dy, int64_t N, int64_t C, int H, int W, int OH, int OW, pool p)
{
    const int q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= H * W) return;
    const int h = q / W, w = q % W;
    const int oh0 = (h + p.ph < p.kh) ? 0 : (h + p.ph - p.kh) / p.sh + 1, oh1 = min((h + p.ph) / p.sh + 1, OH);
    const int ow0 = (w + p.pw < p.kw) ? 0 : (w + p.pw - p.kw) / p.sw + 1, ow1 = min((w + p.pw) / p.sw + 1, OW);
    for (int64_t n = blockIdx.z; n < N; n += gridDim.z)
        for (int64_t c = blockIdx.y; c < C; c += gridDim.y) {
            const T *g = dy.p + n * dy.sn + c * dy.sc;
            T acc = 0;
            for (int oh = oh0; oh < oh1; oh++) {
                int hs = oh * p.sh - p.ph, he = min(hs + p.kh, H + p.ph);
                const int ph = he - hs;
                hs = max(hs, 0);
                he = min(he, H);
                for (int ow = ow0; ow < ow1; ow++) {
                    int ws = ow * p.sw - p.pw, we = min(ws + p.kw, W + p.pw);
                    const int pw = we - ws;
                    ws = max(ws, 0);
                    we = min(we, W);
                    const int div = p.include_pad ? ph * pw : (he - hs) * (we - ws);
                    acc += g[oh * dy.sh + ow * dy.sw] / (T)div;
                }
            }
            dx.p[n * dx.sn + c * dx.sc + h * dx.sh + w * dx.sw] = acc;
        }
}

#endif
