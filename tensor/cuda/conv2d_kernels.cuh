/* conv2d_kernels.cuh — the im2col and col2im kernels of conv2d.cu. Included by conv2d.cu inside its
 * anonymous namespace, and by tests/test_conv_emu.cpp on the host, where tests/cuda_emu.h stands in
 * for the CUDA built-ins: so CI, which has no GPU, checks their index arithmetic (stride, padding,
 * dilation, pixel tiles, V = 4 runs that wrap rows) and the bf16 im2col's packing against a plain
 * loop. Needs <stdint.h>, tensor/half.h and, on the host, cuda_emu.h first. */
#ifndef TENSOR_CUDA_CONV2D_KERNELS_CUH
#define TENSOR_CUDA_CONV2D_KERNELS_CUH

struct kgeom {   /* what the kernels need, as 32-bit where the host checked it fits */
    int C, H, W, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, KK, K, HW, OHW;
};

constexpr int kIm2colThreads = 256;

/* the im2col element: T itself, or (CT = uint16_t) its bf16 rounding for PRECISION_BF16 GEMMs */
template <typename CT, typename T> __device__ __forceinline__ CT col_value(T v)
{
    if constexpr (sizeof(CT) == 2) return half_f32_bits_to_bf16(__float_as_uint((float)v));
    else return v;
}

/* col[i][k][p] = x[n0+i, c, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw] (0 outside), for the pixels
 * p0 .. p0+pc of images n0 .. n0+nb; grid.x = K rows, grid.y covers pc in V-wide runs, grid.z = nb */
template <typename T, typename CT, int V>
__global__ void __launch_bounds__(kIm2colThreads)
im2col_kernel(CT *__restrict__ col, const T *__restrict__ x, kgeom g, int64_t n0, int p0, int pc)
{
    const int k = blockIdx.x;
    const int64_t i = blockIdx.z, r = i * g.K + k;
    const int p = (blockIdx.y * kIm2colThreads + threadIdx.x) * V;
    if (p >= pc) return;
    const int c = k / g.KK, kk = k % g.KK, kh = kk / g.KW, kw = kk % g.KW;
    const T *xp = x + ((n0 + i) * g.C + c) * (int64_t)g.HW;
    const int hoff = kh * g.dh - g.pt, woff = kw * g.dw - g.pl;
    const int q = p0 + p;
    int oh = q / g.OW, ow = q % g.OW;
    T v[V];
#pragma unroll
    for (int j = 0; j < V; j++) {
        const int ih = oh * g.sh + hoff, iw = ow * g.sw + woff;
        v[j] = ((unsigned)ih < (unsigned)g.H && (unsigned)iw < (unsigned)g.W) ? __ldg(xp + ih * g.W + iw) : T(0);
        if (++ow == g.OW) { ow = 0; oh++; }
    }
    CT *dst = col + r * pc + p;
    if constexpr (V == 4 && sizeof(CT) == 4) {
        *reinterpret_cast<float4 *>(dst) = make_float4(v[0], v[1], v[2], v[3]);
    } else if constexpr (V == 4 && sizeof(CT) == 2) {   /* 4 bf16 in one 8-byte store */
        uint2 u;
        u.x = (uint32_t)col_value<CT>(v[0]) | (uint32_t)col_value<CT>(v[1]) << 16;
        u.y = (uint32_t)col_value<CT>(v[2]) | (uint32_t)col_value<CT>(v[3]) << 16;
        *reinterpret_cast<uint2 *>(dst) = u;
    } else {
#pragma unroll
        for (int j = 0; j < V; j++)
            if (p + j < pc) dst[j] = col_value<CT>(v[j]);
    }
}

/* dx[n0+i, c0+ci, ih, iw] = sum over (kh, kw) of dcol[i][ci*KK + kh*KW + kw][oh*OW + ow] where
 * ih = oh*sh - pt + kh*dh, iw = ow*sw - pl + kw*dw; dcol is [nb][cc*KK][OHW] */
template <typename T>
__global__ void __launch_bounds__(256)
col2im_kernel(T *__restrict__ dx, const T *__restrict__ dcol, kgeom g, int64_t n0, int c0, int cc, int64_t nb)
{
    const int pix = blockIdx.x * blockDim.x + threadIdx.x;
    if (pix >= g.HW) return;
    const int ih = pix / g.W, iw = pix % g.W;
    for (int64_t i = blockIdx.z; i < nb; i += gridDim.z)
    for (int ci = blockIdx.y; ci < cc; ci += gridDim.y) {
        const T *dc = dcol + (i * cc + ci) * (int64_t)g.KK * g.OHW;
        T acc = 0;
        for (int kh = 0; kh < g.KH; kh++) {
            int th = ih + g.pt - kh * g.dh;
            if (th < 0) break;   /* th only decreases with kh */
            if (th % g.sh) continue;
            th /= g.sh;
            if (th >= g.OH) continue;
            for (int kw = 0; kw < g.KW; kw++) {
                int tw = iw + g.pl - kw * g.dw;
                if (tw < 0) break;
                if (tw % g.sw) continue;
                tw /= g.sw;
                if (tw >= g.OW) continue;
                acc += dc[(int64_t)(kh * g.KW + kw) * g.OHW + th * g.OW + tw];
            }
        }
        dx[((n0 + i) * g.C + c0 + ci) * (int64_t)g.HW + pix] = acc;
    }
}

#endif
