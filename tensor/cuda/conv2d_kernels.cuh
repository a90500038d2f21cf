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

/* ---------------------------------------------------------------- row-shift forward (stride_h 1) */

/* The forward as KH GEMMs over a partial im2col that expands only the kernel columns: with
 * Hp = OH + dh*(KH-1) input rows (padding included) and rows of Wq = OW rounded up to 8 columns,
 *   cols[i][c*KW + kw][h*Wq + ow] = x[n0+i, c, h - pt, ow*sw - pl + kw*dw]   (0 outside, ow >= OW),
 * and for each kernel row kh the GEMM reads `cols` shifted by kh*dh whole rows (kh*dh*Wq elements,
 * so every operand stays 16-byte aligned), giving the output pixel (oh, ow) at column oh*Wq + ow:
 *   dst_g[:, o] (+)= cols_g[:, shifted by kh*dh rows] @ wk[kh][o][Cg*KW]
 * When OW % 8 == 0 (every SD UNet shape) Wq == OW and dst is the output itself, bias pre-filled;
 * else dst is a padded output that a crop copies out, adding the bias. The partial im2col is KH
 * times smaller than im2col's (KW copies of x, not KH*KW); the GEMMs are Cg*KW deep. */
struct rs_geom {
    int64_t Wq, Hp, plane, m, k;   /* row pitch, input rows, one (c, kw) plane, GEMM rows (pixels), depth */
};

__host__ __device__ inline rs_geom rowshift_geom(const kgeom &g, int64_t Cg)
{
    const int64_t Wq = (g.OW + 7) / 8 * 8, Hp = g.OH + (int64_t)g.dh * (g.KH - 1);
    return rs_geom{Wq, Hp, Hp * Wq, (int64_t)g.OH * Wq, Cg * g.KW};
}

/* cols as above for images n0 .. n0+nb: grid.x over the plane, grid.y over C*KW, grid.z over nb */
template <typename T, typename CT>
__global__ void __launch_bounds__(256)
rowshift_kernel(CT *__restrict__ cols, const T *__restrict__ x, kgeom g, int64_t n0, int64_t Wq, int64_t Hp)
{
    const int64_t plane = Hp * Wq, j = (int64_t)blockIdx.x * 256 + threadIdx.x;
    if (j >= plane) return;
    const int r = blockIdx.y, c = r / g.KW, kw = r % g.KW;
    const int64_t i = blockIdx.z;
    const int ow = (int)(j % Wq), ih = (int)(j / Wq) - g.pt, iw = ow * g.sw - g.pl + kw * g.dw;
    const T v = (ow < g.OW && (unsigned)ih < (unsigned)g.H && (unsigned)iw < (unsigned)g.W)
                    ? __ldg(x + ((n0 + i) * g.C + c) * (int64_t)g.HW + (int64_t)ih * g.W + iw)
                    : T(0);
    cols[(i * g.C * g.KW + r) * plane + j] = col_value<CT>(v);
}

/* wk[kh][o][c*KW + kw] = w[o][c][kh][kw] (w: [O, Cg, KH, KW]); one thread per element */
template <typename T>
__global__ void __launch_bounds__(256)
rowshift_weight_kernel(T *__restrict__ wk, const T *__restrict__ w, int64_t O, int64_t Cg, int KH, int KW)
{
    const int64_t e = (int64_t)blockIdx.x * 256 + threadIdx.x, n = O * Cg * KH * KW;
    if (e >= n) return;
    const int kw = (int)(e % KW), kh = (int)(e / KW % KH);
    const int64_t c = e / ((int64_t)KW * KH) % Cg, o = e / ((int64_t)KW * KH * Cg);
    wk[((int64_t)kh * O + o) * Cg * KW + c * KW + kw] = w[e];
}

/* out[n0+i, o, oh, ow] = opad[i][o][oh*Wq + ow] (+ bias[o]): grid.x over OHW, grid.y over O, grid.z over nb */
template <typename T>
__global__ void __launch_bounds__(256)
rowshift_crop_kernel(T *__restrict__ out, const T *__restrict__ opad, const T *__restrict__ bias, kgeom g, int64_t n0,
                     int64_t O, int64_t Wq)
{
    const int p = blockIdx.x * 256 + threadIdx.x;
    if (p >= g.OHW) return;
    const int64_t o = blockIdx.y, i = blockIdx.z;
    const int oh = p / g.OW, ow = p % g.OW;
    T v = opad[(i * O + o) * g.OH * Wq + (int64_t)oh * Wq + ow];
    if (bias) v += bias[o];
    out[((n0 + i) * O + o) * (int64_t)g.OHW + p] = v;
}

/* The KH * G GEMMs of one tile of nb images, in order, as column-major strided-batched calls
 * gemm(m, n, k, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch) with C = A B + beta C into
 * dst [nb][O][OH*Wq]: the first kernel row with beta0 (1: dst holds the bias; 0: overwrite), the
 * others accumulate. Host code, shared by conv2d.cu (cuBLAS) and tests/test_conv_emu.cpp (a plain
 * loop), so the test checks these offsets and strides. */
template <typename T, typename CT, class Gemm>
int rowshift_gemms(const kgeom &g, int64_t G, int64_t O, const CT *cols, const T *wk, T *dst, T beta0, int64_t nb,
                   Gemm gemm)
{
    const int64_t Cg = g.C / G, Og = O / G;
    const rs_geom r = rowshift_geom(g, Cg);
    for (int kh = 0; kh < g.KH; kh++)
        for (int64_t gi = 0; gi < G; gi++) {
            const int e = gemm(r.m, Og, r.k, cols + gi * r.k * r.plane + (int64_t)kh * g.dh * r.Wq, r.plane,
                               g.C * g.KW * r.plane, wk + ((int64_t)kh * O + gi * Og) * r.k, r.k, (int64_t)0,
                               kh ? T(1) : beta0, dst + gi * Og * r.m, r.m, O * r.m, nb);
            if (e) return e;
        }
    return 0;
}

#endif
