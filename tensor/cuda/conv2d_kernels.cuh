/* conv2d_kernels.cuh — the im2col, col2im and row-shift kernels of conv2d.cu. Included by conv2d.cu
 * inside its anonymous namespace, and by tests/test_conv_emu.cpp on the host, where
 * tests/cuda_emu.h stands in for the CUDA built-ins: so CI, which has no GPU, checks their index
 * arithmetic (stride, padding, dilation, pixel tiles, V = 4 runs that wrap rows) and the bf16
 * im2col's packing against a plain loop, and the row-shift forward (its partial im2col, weight
 * reorder, GEMM plan and crop) against a direct convolution. Needs <stdint.h>, tensor/half.h and,
 * on the host, cuda_emu.h first. */
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

/* ---------------------------------------------------------------- row-shift forward (stride_w 1) */

/* The forward as KW GEMMs over a partial im2col that expands only the kernel rows: with the input
 * rows padded to Wp = OW + dw*(KW-1) columns,
 *   rows[i][c*KH + kh][oh*Wp + u] = x[n0+i, c, oh*sh - pt + kh*dh, u - pl]   (0 outside),
 * and for each kernel column kw the GEMM reads `rows` shifted by kw*dw elements, so the pixel
 * (oh, ow) of that GEMM's output is column oh*Wp + ow of a padded output opad[i][o][OH*Wp]:
 *   opad_g[:, o] (+)= rows_g[:, shifted by kw*dw] @ wk[kw][o][Cg*KH]
 * The last dw*(KW-1) columns of each padded output row are never used (the crop drops them).
 * The partial im2col is KW times smaller than im2col's (KH copies of x, not KH*KW); the GEMMs
 * are Cg*KH deep and do (1 + dw*(KW-1)/OW) times the FLOPs. */
struct rs_geom {
    int64_t Wp, plane, m, k;   /* padded width, OH*Wp, GEMM rows (pixels) per image, GEMM depth */
};

__host__ __device__ inline rs_geom rowshift_geom(const kgeom &g, int64_t Cg)
{
    const int64_t Wp = g.OW + (int64_t)g.dw * (g.KW - 1), plane = (int64_t)g.OH * Wp;
    return rs_geom{Wp, plane, plane - (int64_t)g.dw * (g.KW - 1), Cg * g.KH};
}

/* rows as above for images n0 .. n0+nb: grid.x over the plane, grid.y over C*KH, grid.z over nb */
template <typename T, typename CT>
__global__ void __launch_bounds__(256)
rowshift_kernel(CT *__restrict__ rows, const T *__restrict__ x, kgeom g, int64_t n0, int64_t Wp)
{
    const int64_t plane = (int64_t)g.OH * Wp, j = (int64_t)blockIdx.x * 256 + threadIdx.x;
    if (j >= plane) return;
    const int r = blockIdx.y, c = r / g.KH, kh = r % g.KH;
    const int64_t i = blockIdx.z;
    const int oh = (int)(j / Wp), iw = (int)(j % Wp) - g.pl, ih = oh * g.sh - g.pt + kh * g.dh;
    const T v = ((unsigned)ih < (unsigned)g.H && (unsigned)iw < (unsigned)g.W)
                    ? __ldg(x + ((n0 + i) * g.C + c) * (int64_t)g.HW + (int64_t)ih * g.W + iw)
                    : T(0);
    rows[(i * g.C * g.KH + r) * plane + j] = col_value<CT>(v);
}

/* wk[kw][o][c*KH + kh] = w[o][c][kh][kw] (w: [O, Cg, KH, KW]); one thread per element */
template <typename T>
__global__ void __launch_bounds__(256)
rowshift_weight_kernel(T *__restrict__ wk, const T *__restrict__ w, int64_t O, int64_t Cg, int KH, int KW)
{
    const int64_t e = (int64_t)blockIdx.x * 256 + threadIdx.x, n = O * Cg * KH * KW;
    if (e >= n) return;
    const int kw = (int)(e % KW), kh = (int)(e / KW % KH);
    const int64_t c = e / ((int64_t)KW * KH) % Cg, o = e / ((int64_t)KW * KH * Cg);
    wk[((int64_t)kw * O + o) * Cg * KH + c * KH + kh] = w[e];
}

/* out[n0+i, o, oh, ow] = opad[i][o][oh*Wp + ow] (+ bias[o]): grid.x over OHW, grid.y over O, grid.z over nb */
template <typename T>
__global__ void __launch_bounds__(256)
rowshift_crop_kernel(T *__restrict__ out, const T *__restrict__ opad, const T *__restrict__ bias, kgeom g, int64_t n0,
                     int64_t O, int64_t Wp)
{
    const int p = blockIdx.x * 256 + threadIdx.x;
    if (p >= g.OHW) return;
    const int64_t o = blockIdx.y, i = blockIdx.z;
    const int oh = p / g.OW, ow = p % g.OW;
    T v = opad[(i * O + o) * g.OH * Wp + (int64_t)oh * Wp + ow];
    if (bias) v += bias[o];
    out[((n0 + i) * O + o) * (int64_t)g.OHW + p] = v;
}

/* The KW * G GEMMs of one tile of nb images, in order, as column-major strided-batched calls
 * gemm(m, n, k, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch) with C = A B (+ C): the first
 * kernel column overwrites opad, the others accumulate. Host code, shared by conv2d.cu (cuBLAS)
 * and tests/test_conv_emu.cpp (a plain loop), so the test checks these offsets and strides. */
template <typename T, typename CT, class Gemm>
int rowshift_gemms(const kgeom &g, int64_t G, int64_t O, const CT *rows, const T *wk, T *opad, int64_t nb, Gemm gemm)
{
    const int64_t Cg = g.C / G, Og = O / G;
    const rs_geom r = rowshift_geom(g, Cg);
    for (int kw = 0; kw < g.KW; kw++)
        for (int64_t gi = 0; gi < G; gi++) {
            const int e = gemm(r.m, Og, r.k, rows + gi * r.k * r.plane + (int64_t)kw * g.dw, r.plane, g.C * g.KH * r.plane,
                               wk + ((int64_t)kw * O + gi * Og) * r.k, r.k, (int64_t)0, kw ? T(1) : T(0),
                               opad + gi * Og * r.plane, r.plane, O * r.plane, nb);
            if (e) return e;
        }
    return 0;
}

#endif
