/* conv2d_kernels.cuh — the kernels of conv2d.cu: im2col, col2im, row-shift, implicit-GEMM, halo-tile,
 * Winograd and the bias's fill and gradient. Included by conv2d.cu
 * inside its anonymous namespace, and by tests/test_conv_emu.cpp on the host, where
 * tests/cuda_emu.h stands in for the CUDA built-ins: so CI, which has no GPU, checks their index
 * arithmetic (stride, padding, dilation, pixel tiles, V = 4 runs that wrap rows) and the bf16
 * im2col's packing against a plain loop, and the row-shift forward (its partial im2col, weight
 * reorder, GEMM plan and crop) against a direct convolution, and the implicit-GEMM forward on
 * tensor cores and the Winograd transforms against float64. Needs <stdint.h>, tensor/half.h, <cuda_pipeline.h> and, on the
 * host, cuda_emu.h first. */
#ifndef TENSOR_CUDA_CONV2D_KERNELS_CUH
#define TENSOR_CUDA_CONV2D_KERNELS_CUH

#if defined(__CUDACC__) && !defined(DYN_SMEM)
#define DYN_SMEM(type, name) extern __shared__ type name[]
#endif

#include "tensor/cuda/mma.cuh"

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

/* ---------------------------------------------------------------- implicit-GEMM forward (tensor cores) */

/* The forward as one kernel that never writes an im2col (DRAFT_CONV_IMPLICIT=1, f32, groups 1).
 * GEMM view: out[o][p] = bias[o] + sum_k w[o][k] col[k][p], p = n*OHW + q over all images, k =
 * (c, kh, kw) as im2col's rows. A block computes a BM x 128 tile (BM = 64 or 128 output
 * channels, 2 threads per channel row); per k step of 16, the weights' [BM][16] slice arrives by
 * 16-byte cp.async and the [16][128] slice of col is gathered from x by 4-byte cp.async (each
 * thread keeps one pixel, so a warp reads 32 neighbouring pixels of one input row; zeros for the
 * padding), kIgStages steps in flight. Warps of 32 x 64 multiply on tensor cores, the operands
 * rounded as they leave shared memory, in one of three modes (enum ig_mode):
 *  - IG_TF32 (PRECISION_TF32): m16n8k8 tf32, one product per pair;
 *  - IG_3XTF32 (PRECISION_F32): the same instruction, three products, hi*hi + hi*lo + lo*hi with
 *    hi = tf32(v) and lo = v - hi: f32's accuracy, as the 3xTF32 attention;
 *  - IG_BF16 (PRECISION_BF16, autocast): m16n8k16 bf16, pairs of k packed into one word.
 * The bias is added in the epilogue. Shared memory pitches make every fragment load
 * conflict-free: tf32 reads A words (row g, column t): pitch 20 puts them on banks 20g + t; B
 * words (row t, column g): pitch 136 on 8t + g. bf16 reads A as 8-byte pairs (row g, columns 2t,
 * 2t+1): pitch 24 gives each half-warp 16 distinct bank pairs; B rows 2t and 2t+1 at column g:
 * pitch 132 puts them on 8t + g and 8t + 4 + g. */
constexpr int kIgBN = 128, kIgBK = 16, kIgStages = 3;

/* an N-byte cp.async (N = 4 or 16) of *src to *dst when `in`, else N zero bytes (nothing read):
 * one instruction, the source size a register (cuda_pipeline.h's zero-fill branches between two);
 * 16 bytes bypass L1 (.cg, the only cache mode for that size) */
template <int N> __device__ __forceinline__ void cp_async_zfill(float *dst, const float *src, bool in)
{
    static_assert(N == 4 || N == 16, "cp.async sizes used here");
#ifdef __CUDACC__
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    if constexpr (N == 4)
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(in ? 4 : 0) : "memory");
    else
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(in ? 16 : 0) : "memory");
#else
    __pipeline_memcpy_async(dst, src, N, in ? 0 : N);
#endif
}

enum ig_mode { IG_TF32, IG_3XTF32, IG_BF16 };

__host__ __device__ constexpr int ig_threads(int BM) { return 2 * BM; }
__host__ __device__ constexpr int ig_apitch(int M) { return M == IG_BF16 ? kIgBK + 8 : kIgBK + 4; }
__host__ __device__ constexpr int ig_bpitch(int M) { return M == IG_BF16 ? kIgBN + 4 : kIgBN + 8; }
__host__ __device__ constexpr int ig_stage_words(int BM, int M) { return BM * ig_apitch(M) + kIgBK * ig_bpitch(M); }
__host__ __device__ constexpr size_t ig_smem_bytes(int BM, int M) { return sizeof(float) * kIgStages * ig_stage_words(BM, M); }

/* P = N * OHW pixels; vec_a: w is 16-byte aligned and K % 4 == 0 (16-byte weight copies); KH*KW <=
 * 64. TAP (C % 16 == 0): the reduction runs in tap-major order, k = kk*C + c, over weights laid out
 * so (conv_weight_layout_kernel): a k step is then one tap over 16 channels, whose bounds test is the
 * same for all 16 and whose addresses are HW apart, so a gathered element costs one zero-filling
 * cp.async and an add (the channel-major order decodes and tests every element). Split-K: with
 * gridDim.z = S > 1, block z sums k steps z*kps .. (z+1)*kps into its own partial output
 * out + z * N*O*OHW (bias null), and split_sum_kernel adds them up in order (so the result does
 * not depend on timing, unlike atomics). */
template <int BM, int MODE, bool TAP>
__global__ void __launch_bounds__(2 * BM)
conv_implicit_kernel(float *__restrict__ out, const float *__restrict__ x, const float *__restrict__ w,
                     const float *__restrict__ bias, kgeom g, int O, int64_t P, int vec_a, int kps)
{
    constexpr int T = ig_threads(BM), R = kIgBK * kIgBN / T;   /* col rows per thread per step: 16 or 8 */
    constexpr int AP = ig_apitch(MODE), BP = ig_bpitch(MODE), SW = ig_stage_words(BM, MODE);
    static_assert(kIgBN % 32 == 0 && T % kIgBN == 0 && BM % 32 == 0, "tile shape");
    DYN_SMEM(float, ig_smem);
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, gq = lane / 4, tq = lane % 4;
    const int wm = warp / 2, wn = warp % 2;   /* BM/32 warps along channels x 2 along pixels */
    const int o0 = blockIdx.y * BM;
    const int64_t p0 = (int64_t)blockIdx.x * kIgBN;

    /* this thread's col column (pixel) and rows. Decoded once: the pixel's input origin and which
     * of the KK kernel taps land inside the image (bit kh*KW + kw of vmask; KK <= 64, none for a
     * pixel past the end), so a gathered element costs a mask test and an add */
    const int bcol = tid % kIgBN, brow0 = tid / kIgBN * R;
    const int64_t pix = p0 + bcol;
    uint64_t vmask = 0;
    int pix_off = 0;   /* ih0 * W + iw0: negative in the padding, only used with a tap inside */
    const float *xn = x;
    if (pix < P) {
        const int64_t n = pix / g.OHW;
        const int q = (int)(pix - n * g.OHW), ih0 = q / g.OW * g.sh - g.pt, iw0 = q % g.OW * g.sw - g.pl;
        for (int kh = 0; kh < g.KH; kh++)
            for (int kw = 0; kw < g.KW; kw++)
                if ((unsigned)(ih0 + kh * g.dh) < (unsigned)g.H && (unsigned)(iw0 + kw * g.dw) < (unsigned)g.W)
                    vmask |= 1ull << (kh * g.KW + kw);
        pix_off = ih0 * g.W + iw0;
        xn = x + n * g.C * (int64_t)g.HW;
    }
    const int row_step = g.dh * g.W - g.KW * g.dw;   /* tap offset change from (kh, KW-1) to (kh+1, 0), less dw */
    /* this block's k steps: all, or (split-K, gridDim.z > 1) the z-th run of `kps` of them */
    const int kt0 = (int)blockIdx.z * kps, left = (g.K + kIgBK - 1) / kIgBK - kt0;
    const int nk = left < 0 ? 0 : left < kps ? left : kps;
    /* TAP: the tap and first channel of the next step to load (load_step runs over kt0, kt0+1, ...
     * in order) */
    int tap_k = TAP ? kt0 * kIgBK / g.C : 0, tap_c = TAP ? kt0 * kIgBK % g.C : 0;

    auto load_step = [&](int stage, int kt) {
        float *As = ig_smem + stage * SW, *Bs = As + BM * AP;
        const int k0 = kt * kIgBK;
#pragma unroll
        for (int i = 0; i < BM * kIgBK / 4 / T; i++) {   /* A: runs of 4 along k, 2 per thread */
            const unsigned v = (unsigned)(tid + i * T);
            const int r = (int)(v / (kIgBK / 4)), kc = (int)(v % (kIgBK / 4)) * 4, o = o0 + r, k = k0 + kc;
            float *dst = As + r * AP + kc;
            const float *src = w + (int64_t)o * g.K + k;
            if ((TAP || vec_a) && o < O && k < g.K) {   /* TAP: a permuted copy, aligned, K % 16 == 0 */
                __pipeline_memcpy_async(dst, src, 16);
            } else {
                for (int j = 0; j < 4; j++) {
                    if (o < O && k + j < g.K) __pipeline_memcpy_async(dst + j, src + j, 4);
                    else dst[j] = 0.f;
                }
            }
        }
        if constexpr (TAP) {   /* B: tap tk of channels tc .. tc+R at this thread's pixel */
            const int tk = tap_k, tc = tap_c + brow0, tkh = tk / g.KW, tkw = tk - tkh * g.KW;
            if ((tap_c += kIgBK) == g.C) tap_c = 0, tap_k++;
            const bool in = vmask >> tk & 1u;   /* else zeros: the copies read nothing (from x) */
            const int64_t step = in ? g.HW : 0;
            const float *src = in ? xn + (int64_t)tc * g.HW + pix_off + tkh * g.dh * g.W + tkw * g.dw : x;
            float *dst = Bs + brow0 * BP + bcol;
#pragma unroll
            for (int j = 0; j < R; j++, src += step) cp_async_zfill<4>(dst + j * BP, src, in);
            return;
        }
        /* B: rows brow0 .. brow0+R of this step at this thread's pixel: row k = (c, kk), kk = kh*KW + kw
         * reading x[c][ih0 + kh*dh][iw0 + kw*dw], i.e. xn + c*HW + pix_off + off */
        int k = k0 + brow0;
        const int c = k / g.KK;
        int kk = k - c * g.KK, kw = kk % g.KW, off = kk / g.KW * g.dh * g.W + kw * g.dw;
        int64_t cb = (int64_t)c * g.HW + pix_off;
        for (int j = 0; j < R; j++, k++) {
            float *dst = Bs + (brow0 + j) * BP + bcol;
            if (k < g.K && (vmask >> kk & 1u)) __pipeline_memcpy_async(dst, xn + cb + off, 4);
            else *dst = 0.f;
            off += g.dw;
            if (++kw == g.KW) { kw = 0; off += row_step; }
            if (++kk == g.KK) { kk = 0; off = 0; cb += g.HW; }
        }
    };

    float acc[2][8][4];
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 8; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0.f;

    for (int s = 0; s < kIgStages - 1; s++) {
        if (s < nk) load_step(s, kt0 + s);
        __pipeline_commit();
    }
    for (int kt = 0; kt < nk; kt++) {
        __pipeline_wait_prior(kIgStages - 2);   /* step kt has landed (this thread's copies) */
        __syncthreads();                        /* ... everyone's; and step kt-1's buffer is free */
        if (kt + kIgStages - 1 < nk) load_step((kt + kIgStages - 1) % kIgStages, kt0 + kt + kIgStages - 1);
        __pipeline_commit();
        const float *As = ig_smem + kt % kIgStages * SW, *Bs = As + BM * AP;
        if constexpr (MODE == IG_BF16) {
#pragma unroll
            for (int k16 = 0; k16 < kIgBK; k16 += 16) {
                uint32_t a[2][4];   /* rows g, g+8 x columns 2t, 2t+1 and 2t+8, 2t+9, as bf16 pairs */
#pragma unroll
                for (int mi = 0; mi < 2; mi++) {
                    const float *ap = As + (wm * 32 + mi * 16 + gq) * AP + k16 + 2 * tq;
                    const float2 v0 = *reinterpret_cast<const float2 *>(ap), v1 = *reinterpret_cast<const float2 *>(ap + 8 * AP);
                    const float2 v2 = *reinterpret_cast<const float2 *>(ap + 8), v3 = *reinterpret_cast<const float2 *>(ap + 8 * AP + 8);
                    a[mi][0] = bf16x2(v0.x, v0.y), a[mi][1] = bf16x2(v1.x, v1.y);
                    a[mi][2] = bf16x2(v2.x, v2.y), a[mi][3] = bf16x2(v3.x, v3.y);
                }
#pragma unroll
                for (int ni = 0; ni < 8; ni++) {   /* rows 2t, 2t+1 and 2t+8, 2t+9 of column g */
                    const float *bp = Bs + (k16 + 2 * tq) * BP + wn * 64 + ni * 8 + gq;
                    const uint32_t b0 = bf16x2(bp[0], bp[BP]), b1 = bf16x2(bp[8 * BP], bp[9 * BP]);
#pragma unroll
                    for (int mi = 0; mi < 2; mi++) mma_bf16(acc[mi][ni], a[mi], b0, b1);
                }
            }
        } else {
#pragma unroll
            for (int k8 = 0; k8 < kIgBK; k8 += 8) {
                uint32_t ahi[2][4], alo[2][4];
#pragma unroll
                for (int mi = 0; mi < 2; mi++) {
                    const float *ap = As + (wm * 32 + mi * 16 + gq) * AP + k8 + tq;
                    const float av[4] = {ap[0], ap[8 * AP], ap[4], ap[8 * AP + 4]};
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        ahi[mi][i] = to_tf32(av[i]);
                        alo[mi][i] = MODE == IG_3XTF32 ? __float_as_uint(av[i] - __uint_as_float(ahi[mi][i])) : 0u;
                    }
                }
#pragma unroll
                for (int ni = 0; ni < 8; ni++) {
                    const float *bp = Bs + (k8 + tq) * BP + wn * 64 + ni * 8 + gq;
                    const float b0 = bp[0], b1 = bp[4 * BP];
                    const uint32_t h0 = to_tf32(b0), h1 = to_tf32(b1);
#pragma unroll
                    for (int mi = 0; mi < 2; mi++) {
                        if (MODE == IG_3XTF32) {   /* the small terms first */
                            mma_tf32(acc[mi][ni], alo[mi], h0, h1);
                            mma_tf32(acc[mi][ni], ahi[mi], __float_as_uint(b0 - __uint_as_float(h0)),
                                     __float_as_uint(b1 - __uint_as_float(h1)));
                        }
                        mma_tf32(acc[mi][ni], ahi[mi], h0, h1);
                    }
                }
            }
        }
    }
    __pipeline_wait_prior(0);   /* no copy outlives the kernel (the trailing groups are empty) */

    /* epilogue: C fragment (mi, ni) holds channels row g / g+8 and pixels 2t, 2t+1 */
    out += (int64_t)blockIdx.z * P * O;   /* split-K: this split's partial output */
#pragma unroll
    for (int ni = 0; ni < 8; ni++) {
        const int64_t pp = p0 + wn * 64 + ni * 8 + 2 * tq;
        if (pp >= P) continue;
        const int64_t n = pp / g.OHW, q = pp - n * g.OHW;
        /* the second pixel: same image unless q is the image's last */
        const int64_t n1 = q + 1 < g.OHW ? n : n + 1, q1 = q + 1 < g.OHW ? q + 1 : 0;
        const bool second = pp + 1 < P,
                   pair = second && n1 == n && q % 2 == 0 && g.OHW % 2 == 0 && ((uintptr_t)out & 7) == 0;
#pragma unroll
        for (int mi = 0; mi < 2; mi++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int o = o0 + wm * 32 + mi * 16 + gq + 8 * h;
                if (o >= O) continue;
                const float bv = bias ? bias[o] : 0.f;
                const float v0 = acc[mi][ni][2 * h] + bv, v1 = acc[mi][ni][2 * h + 1] + bv;
                float *dst = out + (n * O + o) * (int64_t)g.OHW + q;
                if (pair) {   /* 8-byte aligned: out is, and (n O + o) OHW + q is even */
                    *reinterpret_cast<float2 *>(dst) = make_float2(v0, v1);
                } else {
                    *dst = v0;
                    if (second) out[(n1 * O + o) * (int64_t)g.OHW + q1] = v1;
                }
            }
    }
}

/* split-K plan for a depth K and S requested splits: kps k steps per split, S of them non-empty */
struct ig_split {
    int kps, S;
};
__host__ __device__ inline ig_split ig_split_plan(int K, int S)
{
    const int nk = (K + kIgBK - 1) / kIgBK, kps = (nk + S - 1) / S;
    return ig_split{kps > 0 ? kps : 1, kps > 0 ? (nk + kps - 1) / kps : 1};
}

/* out[i] = bias[channel of i] + sum over z < S of part[z][i], i < n = N*O*OHW, in z order; V = 4:
 * float4 runs where split_sum_v4 says (a run stays in one channel; out 16-byte aligned; part, a
 * workspace of its own, always is) */
inline bool split_sum_v4(int64_t n, int64_t OHW, const float *out)
{
    return n % 4 == 0 && OHW % 4 == 0 && ((uintptr_t)out & 15) == 0;
}

template <int V>
__global__ void __launch_bounds__(256)
split_sum_kernel(float *__restrict__ out, const float *__restrict__ part, int S, int64_t n, const float *__restrict__ bias,
                 int64_t OHW, int O)
{
    const int64_t i = ((int64_t)blockIdx.x * 256 + threadIdx.x) * V;
    if (i >= n) return;
    const float b = bias ? bias[i / OHW % O] : 0.f;
    if constexpr (V == 4) {
        float4 a = make_float4(b, b, b, b);
        for (int z = 0; z < S; z++) {
            const float4 v = *reinterpret_cast<const float4 *>(part + z * n + i);
            a.x += v.x, a.y += v.y, a.z += v.z, a.w += v.w;
        }
        *reinterpret_cast<float4 *>(out + i) = a;
    } else {
        float a = b;
        for (int z = 0; z < S; z++) a += part[z * n + i];
        out[i] = a;
    }
}

/* The backward input of a stride-1 convolution is the forward convolution of dy with the weights
 * channel-transposed and flipped, wt[c][o][kh][kw] = w[o][c][KH-1-kh][KW-1-kw]:
 *   dx[c][ih][iw] = sum over o, kh, kw of wt[c][o][kh][kw] dy[o][ih - pt' + kh dh][iw - pl' + kw dw]
 * with pt' = dh (KH-1) - pt and pl' = dw (KW-1) - pl (negative is fine: the kernels' bounds
 * checks do the cropping), so conv_implicit_kernel runs it with dgrad_geom(g) and O' = C. */
__host__ __device__ inline kgeom dgrad_geom(const kgeom &g, int O)
{
    kgeom t = g;
    t.C = O, t.H = g.OH, t.W = g.OW, t.OH = g.H, t.OW = g.W, t.sh = t.sw = 1;
    t.pt = g.dh * (g.KH - 1) - g.pt, t.pl = g.dw * (g.KW - 1) - g.pl;
    t.K = O * g.KK, t.HW = g.OH * g.OW, t.OHW = g.H * g.W;
    return t;
}

/* the weights as conv_implicit_kernel reads them, from w [O][C][KH][KW] (kk = kh*KW + kw): the
 * forward's (o' = o, c' = c), or with flip the backward input's (o' = c, c' = o, taps mirrored,
 * wt above); in the TAP order wp[o'][kk][c'], else wp[o'][c'][kk]. One thread per element. */
template <typename T>
__global__ void __launch_bounds__(256)
conv_weight_layout_kernel(T *__restrict__ wp, const T *__restrict__ w, int64_t O, int64_t C, int KH, int KW, bool flip,
                          bool tap)
{
    const int KK = KH * KW;
    const int64_t e = (int64_t)blockIdx.x * 256 + threadIdx.x, Cp = flip ? O : C;
    if (e >= O * C * KK) return;
    const int64_t cp = tap ? e % Cp : e / KK % Cp, op = e / ((int64_t)Cp * KK);
    const int kk = (int)(tap ? e / Cp % KK : e % KK);
    wp[e] = flip ? w[(cp * C + op) * KK + (KK - 1 - kk)] : w[(op * C + cp) * KK + kk];
}


/* ---------------------------------------------------------------- halo-tile forward (tensor cores, TF32) */

/* DRAFT_CONV_HALO=1: a 3x3, stride-1, dilation-1, groups-1 f32 convolution under TF32 as one kernel
 * that stages, per step of 8 input channels, the input tile a block's pixels read (its halo) in
 * shared memory once, and reads each of the 9 taps' operand straight out of it: no im2col, not even
 * in shared memory. Against conv_implicit_kernel, which gathers a [16][128] slice of im2col per k
 * step element by element (4-byte copies, 4.8x the halo's elements), a step here is 72 deep (9 taps x 8
 * channels) and its copies are 16 bytes wide: the weights' [BM][72] slice, pre-ordered by
 * conv_halo_weight_kernel into the A fragments' register order and pre-rounded to tf32 (one LDS.128
 * per fragment), and the halo, (4 + 2) rows x 40 columns of 8 channels, 16-byte aligned runs of
 * the input rows (a run is all inside or all outside the image when W % 4 == 0: a zero-filling
 * copy), rounded to tf32 in place by the thread that copied it.
 * Block: BM output channels x 128 pixels (4 output rows x 32 columns of one image); BM/32 x 2 warps
 * of 32 channels x 64 pixels (2 output rows); kHaloStages steps in flight.
 * Bank conflicts: a B fragment (rows k = t, t+4: channels; column g: 8 consecutive pixels of one
 * row) reads words t*kHaloPlane + g + const, and kHaloPlane = 248 = 24 (mod 32) puts the 32 lanes on
 * 32 banks for every tap; A fragments are 512 contiguous bytes per warp. */
constexpr int kHaloTW = 32, kHaloTH = 4, kHaloCC = 8, kHaloStages = 3;
constexpr int kHaloRows = kHaloTH + 2, kHaloCols = 40;           /* 3 + 32 + 2 columns rounded up to 4 */
constexpr int kHaloPlane = 248;                                  /* >= 6 x 40, = 24 (mod 32), % 4 == 0 */
constexpr int kHaloKG = 9 * kHaloCC / 8;                         /* k8 groups per step: 9 taps x 8 channels */
constexpr int kHaloRuns = kHaloCC * kHaloRows * (kHaloCols / 4); /* 16-byte runs of halo per step: 480 */
static_assert(kHaloPlane >= kHaloRows * kHaloCols && kHaloPlane % 32 == 24 && kHaloPlane % 4 == 0, "halo plane");
__host__ __device__ constexpr int halo_threads(int BM) { return 2 * BM; }
/* the halo word (from the stage's halo start) of B fragment register b0 of lane (g = lane / 4,
 * t = lane % 4) for pixel column ni of warp column wn at tap (kh, kw): channel plane t, row
 * 2 wn + ni / 4 + kh, column (ni % 4) * 8 + g + kw + cshift; b1 is kHaloPlane * 4 further (channel
 * t + 4). Linear in its arguments, so the kernel adds a lane part and a tap part. */
__host__ __device__ constexpr int halo_b_word(int lane, int wn, int ni, int kh, int kw, int cshift)
{
    return lane % 4 * kHaloPlane + (2 * wn + ni / 4 + kh) * kHaloCols + ni % 4 * 8 + lane / 4 + kw + cshift;
}
__host__ __device__ constexpr int halo_stage_words(int BM) { return BM * 9 * kHaloCC + kHaloCC * kHaloPlane; }
__host__ __device__ constexpr size_t halo_smem_bytes(int BM) { return sizeof(float) * kHaloStages * halo_stage_words(BM); }

/* wp for conv_halo_kernel, from w [O][C][3][3] (C % 8 == 0): per 16 output channels mt and k8 group
 * kg = chunk * 9 + tap (8 channels chunk*8 .. +8 at tap = kh*3 + kw), the 32 lanes' A fragments
 * (a0..a3 = rows g, g+8, g, g+8 x columns t, t, t+4, t+4), rounded to tf32, zeros from O to Opad
 * (a multiple of the kernel's BM, so that its last channel block reads only what is here):
 *   wp[((mt * NKG + kg) * 32 + lane) * 4 + i],  mt < Opad / 16,  NKG = C / 8 * 9.
 * flip: the backward input's operand instead, wt[c][o][kh][kw] = w[o][c][2-kh][2-kw] (dgrad_geom)
 * with O = the forward's C and C = the forward's O. One thread per word. */
__global__ void __launch_bounds__(256)
conv_halo_weight_kernel(float *__restrict__ wp, const float *__restrict__ w, int O, int Opad, int C, bool flip)
{
    const int NKG = C / 8 * 9;
    const int64_t e = (int64_t)blockIdx.x * 256 + threadIdx.x, total = (int64_t)Opad / 16 * NKG * 128;
    if (e >= total) return;
    const int i = (int)(e % 4), lane = (int)(e / 4 % 32), kg = (int)(e / 128 % NKG), mt = (int)(e / (128 * (int64_t)NKG));
    const int o = mt * 16 + lane / 4 + 8 * (i & 1), c = kg / 9 * 8 + lane % 4 + 4 * (i >> 1), tap = kg % 9;
    float v = 0.f;
    if (o < O) v = flip ? w[((int64_t)c * O + o) * 9 + (8 - tap)] : w[((int64_t)o * C + c) * 9 + tap];
    wp[e] = __uint_as_float(to_tf32(v));
}

/* out[n][o][oh][ow] = bias[o] + sum over c, kh, kw of w[o][c][kh][kw] x[n][c][oh - pt + kh][ow - pl + kw]
 * (0 outside the image), in TF32 (operands rounded to nearest, f32 sums). g: the geometry (KH = KW
 * = 3, stride and dilation 1, C % 8 == 0, W % 4 == 0, x 16-byte aligned: the host checks); wp from
 * conv_halo_weight_kernel. Grid: x = tiles of 4 x 32 output pixels (row-major over the image), y =
 * BM channels, z = images. */
template <int BM>
__global__ void __launch_bounds__(2 * BM)
conv_halo_kernel(float *__restrict__ out, const float *__restrict__ x, const float *__restrict__ wp,
                 const float *__restrict__ bias, kgeom g, int O)
{
    constexpr int T = halo_threads(BM), SW = halo_stage_words(BM), AW = BM * 9 * kHaloCC;
    constexpr int NH = (kHaloRuns + T - 1) / T, NA = AW / 4 / T;   /* 16-byte copies per thread per step */
    static_assert(BM % 32 == 0 && AW / 4 % T == 0, "tile shape");
    DYN_SMEM(float, hs_smem);
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, gq = lane / 4, tq = lane % 4;
    const int wm = warp / 2, wn = warp % 2;   /* 32 channels x 64 pixels (output rows 2 wn, 2 wn + 1) */
    const int tiles_w = (g.OW + kHaloTW - 1) / kHaloTW;
    const int oh0 = (int)blockIdx.x / tiles_w * kHaloTH, ow0 = (int)blockIdx.x % tiles_w * kHaloTW;
    const int o0 = (int)blockIdx.y * BM, n = (int)blockIdx.z;
    const int cshift = (4 - g.pl % 4) % 4;   /* ow0 - pl - cshift: the halo's first column, % 4 == 0 */
    const int hc0 = ow0 - g.pl - cshift, hr0 = oh0 - g.pt;
    const int nsteps = g.C / kHaloCC, NKG = nsteps * kHaloKG;

    /* this thread's halo runs, the same in every step but for the channel offset: e = (c, row, run)
     * at word h_dst of the plane (-1: no run) from word h_src of the step's channels (-1: outside
     * the image, zeros) */
    int h_src[NH], h_dst[NH];
#pragma unroll
    for (int i = 0; i < NH; i++) {
        const int e = tid + i * T, run = e % (kHaloCols / 4), row = e / (kHaloCols / 4) % kHaloRows,
                  c = e / (kHaloCols / 4 * kHaloRows);
        const int ih = hr0 + row, iw = hc0 + run * 4;
        const bool in = e < kHaloRuns && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
        h_src[i] = in ? c * g.HW + ih * g.W + iw : -1;
        h_dst[i] = e < kHaloRuns ? c * kHaloPlane + row * kHaloCols + run * 4 : -1;
    }
    const float *xn = x + (int64_t)n * g.C * g.HW;
    /* the weights of this block's BM/16 channel tiles: runs of 9 k8 groups (a step) per tile */
    const float *wblk = wp + (int64_t)(o0 / 16) * NKG * 128;

    auto load_step = [&](int stage, int s) {
        float *As = hs_smem + stage * SW, *Hs = As + AW;
#pragma unroll
        for (int i = 0; i < NA; i++) {   /* A: tile mtl's 9 groups x 128 words, contiguous in wp */
            const int e = tid + i * T, mtl = e / (kHaloKG * 32), r = e % (kHaloKG * 32);
            cp_async_zfill<16>(As + e * 4, wblk + ((int64_t)mtl * NKG + s * kHaloKG) * 128 + r * 4, true);
        }
        const float *xs = xn + (int64_t)s * kHaloCC * g.HW;
#pragma unroll
        for (int i = 0; i < NH; i++)
            if (h_dst[i] >= 0) cp_async_zfill<16>(Hs + h_dst[i], h_src[i] >= 0 ? xs + h_src[i] : x, h_src[i] >= 0);
    };

    float acc[2][8][4];
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 8; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0.f;

    for (int s = 0; s < kHaloStages - 1; s++) {
        if (s < nsteps) load_step(s, s);
        __pipeline_commit();
    }
    for (int s = 0; s < nsteps; s++) {
        __pipeline_wait_prior(kHaloStages - 2);   /* step s has landed (this thread's copies) */
        float *As = hs_smem + s % kHaloStages * SW, *Hs = As + AW;
#pragma unroll
        for (int i = 0; i < NH; i++)   /* round this thread's halo runs to tf32, in place */
            if (h_dst[i] >= 0) {
                float4 *p = reinterpret_cast<float4 *>(Hs + h_dst[i]);
                float4 v = *p;
                v.x = __uint_as_float(to_tf32(v.x)), v.y = __uint_as_float(to_tf32(v.y));
                v.z = __uint_as_float(to_tf32(v.z)), v.w = __uint_as_float(to_tf32(v.w));
                *p = v;
            }
        __syncthreads();   /* ... everyone's, rounded; and step s-1's buffer is free */
        if (s + kHaloStages - 1 < nsteps) load_step((s + kHaloStages - 1) % kHaloStages, s + kHaloStages - 1);
        __pipeline_commit();
        /* B fragment of pixel column ni: output row 2 wn + ni / 4, column (ni % 4) * 8 + g; word
         * (row + kh) * kHaloCols + column + kw + cshift of channel plane t (b0) and t + 4 (b1) */
        const float *hb = Hs + halo_b_word(lane, wn, 0, 0, 0, cshift);
        const float *ab = As + (wm * 2 * kHaloKG * 32 + lane) * 4;
#pragma unroll
        for (int kg = 0; kg < kHaloKG; kg++) {
            const int kh = kg / 3, kw = kg % 3;   /* kHaloCC == 8: one group per tap */
            uint32_t a[2][4];
#pragma unroll
            for (int mi = 0; mi < 2; mi++) {
                const float4 v = *reinterpret_cast<const float4 *>(ab + (mi * kHaloKG + kg) * 128);
                a[mi][0] = __float_as_uint(v.x), a[mi][1] = __float_as_uint(v.y);
                a[mi][2] = __float_as_uint(v.z), a[mi][3] = __float_as_uint(v.w);
            }
#pragma unroll
            for (int ni = 0; ni < 8; ni++) {
                const float *bp = hb + halo_b_word(0, 0, ni, kh, kw, 0);
                const uint32_t b0 = __float_as_uint(bp[0]), b1 = __float_as_uint(bp[4 * kHaloPlane]);
#pragma unroll
                for (int mi = 0; mi < 2; mi++) mma_tf32(acc[mi][ni], a[mi], b0, b1);
            }
        }
    }
    __pipeline_wait_prior(0);   /* no copy outlives the kernel (the trailing groups are empty) */

    /* epilogue: C fragment (mi, ni) holds channels g / g+8 and the pixel pair 2t, 2t+1 of column ni */
    const bool pairs = g.OW % 2 == 0 && ((uintptr_t)out & 7) == 0;
#pragma unroll
    for (int ni = 0; ni < 8; ni++) {
        const int oh = oh0 + 2 * wn + ni / 4, ow = ow0 + (ni % 4) * 8 + 2 * tq;
        if (oh >= g.OH || ow >= g.OW) continue;
#pragma unroll
        for (int mi = 0; mi < 2; mi++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int o = o0 + wm * 32 + mi * 16 + gq + 8 * h;
                if (o >= O) continue;
                const float bv = bias ? bias[o] : 0.f;
                float *dst = out + (((int64_t)n * O + o) * g.OH + oh) * g.OW + ow;
                const float v0 = acc[mi][ni][2 * h] + bv, v1 = acc[mi][ni][2 * h + 1] + bv;
                if (pairs) {   /* ow even, OW even: both in the row, 8-byte aligned */
                    *reinterpret_cast<float2 *>(dst) = make_float2(v0, v1);
                } else {
                    dst[0] = v0;
                    if (ow + 1 < g.OW) dst[1] = v1;
                }
            }
    }
}

/* ---------------------------------------------------------------- Winograd F(2x2, 3x3)
 * A 3x3 stride-1 convolution as 16 GEMMs (conv2d.cu, DRAFT_CONV_WINOGRAD): each 2x2 block of
 * output pixels (a tile) is  Y = A^T [ U . (B^T d B) ] A  for every pair of channels, summed over
 * the input channels, with d the 4x4 input patch the block reads and U = G g G^T the 3x3 weights
 * g transformed (Lavin and Gray, 2015):
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
 *   A^T = [1 1 1 0; 0 1 -1 -1].
 * The sum over channels at each of the 16 positions xi of the 4x4 transform is a GEMM:
 * M[xi][o][p] = sum over c of U[xi][o][c] V[xi][c][p], where V[xi][c][p] is tile p's transformed
 * input: 2.25x fewer products than the direct convolution (16 instead of 36 per tile), and GEMMs
 * of K = C whose size does not depend on the 3x3 (the im2col GEMM's K is 9 C).
 * Tiles are q = (n * TH + ty) * TW + tx over all images (TH = ceil(OH / 2), TW = ceil(OW / 2)); a
 * chunk of pc tiles from q0 is stored at row stride ld (>= pc, a multiple of 4: wino_plan):
 *   U[xi][o][c] (16 x O x C), V[xi][c][p] (16 x C x ld), M[xi][o][p] (16 x O x ld). */
struct wino_chunks {
    int64_t tiles, ld, n;   /* all tiles, the tiles of a chunk (its row stride), the chunk count */
};

/* the chunks of a workspace of `bytes` for V and M together (at least 128 tiles each, whatever
 * the bound: smaller GEMMs would waste more than the memory saves), as even as a multiple of 4 allows */
__host__ __device__ inline wino_chunks wino_plan(int64_t N, int OH, int OW, int C, int O, size_t bytes)
{
    const int64_t tiles = N * ((OH + 1) / 2) * ((OW + 1) / 2), per = (int64_t)16 * (C + O) * (int64_t)sizeof(float);
    int64_t most = (int64_t)bytes / per / 4 * 4;
    most = most < 128 ? 128 : most;
    const int64_t n = (tiles + most - 1) / most, ld = ((tiles + n - 1) / n + 3) / 4 * 4;
    return wino_chunks{tiles, ld, (tiles + ld - 1) / ld};
}

/* U[xi][o][c] = (G g G^T)[xi] of g = w[o][c] (w [O][C][3][3]), or with flip the backward input's
 * operand: g = w[c][o] mirrored (w [C][O][3][3], the forward's; O and C as in dgrad_geom). In f64,
 * rounded once. One thread per (o, c), c fastest. VT: float, or uint16_t for bf16 bits (the
 * operands of DRAFT_CONV_AUTOCAST_WINO's bf16 GEMMs, rounded once more, to nearest even). */
template <typename VT>
__global__ void __launch_bounds__(256)
wino_weight_kernel(VT *__restrict__ U, const float *__restrict__ w, int O, int C, bool flip)
{
    const int64_t e = (int64_t)blockIdx.x * 256 + threadIdx.x, OC = (int64_t)O * C;
    if (e >= OC) return;
    const int64_t o = e / C, c = e % C;
    double g[3][3], s[4][3];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) g[i][j] = flip ? w[(c * O + o) * 9 + 8 - (3 * i + j)] : w[e * 9 + 3 * i + j];
    for (int j = 0; j < 3; j++) {   /* s = G g */
        s[0][j] = g[0][j];
        s[1][j] = 0.5 * (g[0][j] + g[1][j] + g[2][j]);
        s[2][j] = 0.5 * (g[0][j] - g[1][j] + g[2][j]);
        s[3][j] = g[2][j];
    }
    for (int i = 0; i < 4; i++) {   /* U = s G^T */
        VT *u = U + (int64_t)4 * i * OC + e;
        u[0] = col_value<VT>((float)s[i][0]);
        u[OC] = col_value<VT>((float)(0.5 * (s[i][0] + s[i][1] + s[i][2])));
        u[2 * OC] = col_value<VT>((float)(0.5 * (s[i][0] - s[i][1] + s[i][2])));
        u[3 * OC] = col_value<VT>((float)s[i][2]);
    }
}

/* the tile of chunk position p (tile q0 + p): image n, tile row ty and column tx */
__device__ __forceinline__ void wino_tile(const kgeom &g, int64_t q, int *n, int *ty, int *tx)
{
    const int TW = (g.OW + 1) / 2, per = (g.OH + 1) / 2 * TW;
    *n = (int)(q / per);
    const int r = (int)(q % per);
    *ty = r / TW, *tx = r % TW;
}

/* V[xi][c][p] = (B^T d B)[xi] of the 4x4 patch of x [N][C][H][W] from row 2 ty - pt, column
 * 2 tx - pl (0 outside the image), for the pc tiles of the chunk at q0. Grid: x = 256 tiles (the
 * stores coalesce along p), y = channels (looping past 65535). VT: as wino_weight_kernel's. */
template <typename VT>
__global__ void __launch_bounds__(256)
wino_input_kernel(VT *__restrict__ V, const float *__restrict__ x, kgeom g, int64_t q0, int pc, int64_t ld)
{
    const int p = (int)blockIdx.x * 256 + (int)threadIdx.x;
    if (p >= pc) return;
    int n, ty, tx;
    wino_tile(g, q0 + p, &n, &ty, &tx);
    const int h0 = 2 * ty - g.pt, w0 = 2 * tx - g.pl;
    const int64_t plane = (int64_t)g.C * ld;
    for (int c = (int)blockIdx.y; c < g.C; c += (int)gridDim.y) {
        const float *xc = x + ((int64_t)n * g.C + c) * g.HW;
        float d[4][4], t[4][4];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) {
                const int ih = h0 + i, iw = w0 + j;
                d[i][j] = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W ? xc[(int64_t)ih * g.W + iw] : 0.f;
            }
        for (int j = 0; j < 4; j++) {   /* t = B^T d */
            t[0][j] = d[0][j] - d[2][j];
            t[1][j] = d[1][j] + d[2][j];
            t[2][j] = d[2][j] - d[1][j];
            t[3][j] = d[1][j] - d[3][j];
        }
        VT *v = V + (int64_t)c * ld + p;
        for (int i = 0; i < 4; i++) {   /* V = t B */
            v[(4 * i) * plane] = col_value<VT>(t[i][0] - t[i][2]);
            v[(4 * i + 1) * plane] = col_value<VT>(t[i][1] + t[i][2]);
            v[(4 * i + 2) * plane] = col_value<VT>(t[i][2] - t[i][1]);
            v[(4 * i + 3) * plane] = col_value<VT>(t[i][1] - t[i][3]);
        }
    }
}

/* out[n][o][2 ty + a][2 tx + b] = bias[o] + (A^T M A)[a][b] of M[.][o][p] for the chunk's tiles
 * (only the pixels inside OH x OW). pairs: OW even and out 8-byte aligned (float2 stores). Grid:
 * x = 256 tiles, y = output channels (looping past 65535). */
__global__ void __launch_bounds__(256)
wino_output_kernel(float *__restrict__ out, const float *__restrict__ M, const float *__restrict__ bias, kgeom g, int O,
                   int64_t q0, int pc, int64_t ld, bool pairs)
{
    const int p = (int)blockIdx.x * 256 + (int)threadIdx.x;
    if (p >= pc) return;
    int n, ty, tx;
    wino_tile(g, q0 + p, &n, &ty, &tx);
    const int oh = 2 * ty, ow = 2 * tx;
    const int64_t plane = (int64_t)O * ld;
    for (int o = (int)blockIdx.y; o < O; o += (int)gridDim.y) {
        const float *mp = M + (int64_t)o * ld + p;
        float m[4][4], r[2][4];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) m[i][j] = mp[(4 * i + j) * plane];
        for (int j = 0; j < 4; j++) {   /* r = A^T m */
            r[0][j] = m[0][j] + m[1][j] + m[2][j];
            r[1][j] = m[1][j] - m[2][j] - m[3][j];
        }
        const float bv = bias ? bias[o] : 0.f;
        float *dst = out + (((int64_t)n * O + o) * g.OH + oh) * g.OW + ow;
        for (int a = 0; a < 2 && oh + a < g.OH; a++) {   /* Y = r A */
            const float y0 = r[a][0] + r[a][1] + r[a][2] + bv, y1 = r[a][1] - r[a][2] - r[a][3] + bv;
            if (pairs) {
                *reinterpret_cast<float2 *>(dst + a * g.OW) = make_float2(y0, y1);
            } else {
                dst[a * g.OW] = y0;
                if (ow + 1 < g.OW) dst[a * g.OW + 1] = y1;
            }
        }
    }
}

/* ---------------------------------------------------------------- bias */

/* out[n, o, :] = bias[o] */
template <typename T>
__global__ void __launch_bounds__(256)
bias_fill_kernel(T *__restrict__ out, const T *__restrict__ bias, int64_t N, int64_t O, int64_t OHW)
{
    const int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= OHW) return;
    for (int64_t n = blockIdx.z; n < N; n += gridDim.z)
        for (int64_t o = blockIdx.y; o < O; o += gridDim.y) out[(n * O + o) * OHW + p] = bias[o];
}

/* db[o] = sum over n, pixels of dy[n, o, :]: one block per channel, fixed-order tree */
template <typename T>
__global__ void __launch_bounds__(256)
bias_grad_kernel(T *__restrict__ db, int64_t sdb, const T *__restrict__ dy, int64_t N, int64_t O, int64_t OHW)
{
    __shared__ double part[8];
    const int64_t o = blockIdx.x;
    double acc = 0;
    for (int64_t n = 0; n < N; n++) {
        const T *g = dy + (n * O + o) * OHW;
        for (int64_t p = threadIdx.x; p < OHW; p += 256) acc += (double)g[p];
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = part[0];
        for (int i = 1; i < 8; i++) s += part[i];
        db[o * sdb] = (T)s;
    }
}

#endif
