/* attention_kernels.cuh — the device code of attention.cu: the f32 flash-attention kernels (forward,
 * dK/dV with the optional fused dQ partials, dQ, the ordered dQ sum, D = rowsum(dO * O)), the
 * tensor-core forward and backward (bf16, tf32 and 3xTF32), the f64 kernels (a thread a row) and the
 * wide-head path (D > 256). Included by attention.cu inside its anonymous namespace, and
 * by tests/test_attention_emu.cpp on the host, where tests/cuda_emu.h stands in for the CUDA
 * built-ins (threads, barriers, warp shuffles, the mma fragment layout): so CI, which has no GPU,
 * runs these kernels' index and softmax logic against a float64 reference. Needs <stdint.h>,
 * <math.h>, <cuda_pipeline.h> (the packed forward) and, on the host, cuda_emu.h first. */
#ifndef TENSOR_CUDA_ATTENTION_KERNELS_CUH
#define TENSOR_CUDA_ATTENTION_KERNELS_CUH

#ifdef __CUDACC__
#define DYN_SMEM(type, name) extern __shared__ type name[]
#endif

constexpr int kThreads = 256;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

/* a [B, H, rows, cols] operand: base pointer and element strides */
template <typename T> struct opnd {
    T *p;
    int64_t sb, sh, sl, sd;
    __host__ __device__ T *at(int b, int h) const { return p + b * sb + h * sh; }
};

struct dims {
    int B, H, L, S, D, Dv;
    int causal;
    double scale;
    int bh0;   /* the fused dK/dV/dQ kernel: first (b, h) of this launch (a chunk of the heads) */
    int vec4;  /* the tensor-core kernels: tiles in float4 runs where rows_vec4 (DRAFT_ATTN_VEC4) */
};

/* ---------------------------------------------------------------- tile configuration */

template <int DP> struct cfg {
    static constexpr int LD = DP + 4;              /* smem pitch of [rows][DP] tiles: 16-byte rows, no bank conflicts */
    static constexpr int BM = 64;                  /* query rows per block (forward, dQ) */
    static constexpr int BN = DP <= 128 ? 64 : 32; /* key rows per tile */
    static constexpr int PLD = BN + 4;
    /* dK/dV kernel: BN key rows per block (thread rows), BMK query rows per tile */
    static constexpr int BMK = DP <= 64 ? 64 : 32;
    static constexpr int TYK = BN / 4, TXK = kThreads / TYK;
    static constexpr int PTLD = BMK + 4;
    static_assert(DP % 16 == 0 && DP % TXK == 0 && BMK % TXK == 0, "tile shape");
    static constexpr size_t fwd_smem = sizeof(float) * (size_t)(BM * LD + 2 * BN * LD + BM * PLD);
    static constexpr size_t dq_smem = sizeof(float) * (size_t)(2 * BM * LD + 2 * BN * LD + BM * PLD + 2 * BM);
    static constexpr size_t dkdv_smem = sizeof(float) * (size_t)(2 * BN * LD + 2 * BMK * LD + 2 * BN * PTLD + 2 * BMK);
    /* fused dQ: dS once more, [query][key], as the A operand of dQ_part = dS K */
    static constexpr int RQ = BMK * 16 / kThreads;   /* query rows per thread in dQ_part */
    static_assert(RQ >= 1 && RQ * kThreads == BMK * 16, "dQ tile shape");
    static constexpr size_t dkdv_dq_smem = dkdv_smem + sizeof(float) * (size_t)(BMK * PLD);
};

/* sm[r][d] = mul * src[row0 + r, d] for r < nrows, d < ncols, zero elsewhere ([ROWS][DP] tile) */
template <int ROWS, int DP, int LD>
__device__ __forceinline__ void load_tile(float *sm, const float *src, int64_t sl, int64_t sd, int nrows, int ncols, float mul)
{
    for (int idx = threadIdx.x; idx < ROWS * DP; idx += kThreads) {
        const int r = idx / DP, d = idx - r * DP;
        float v = 0.f;
        if (r < nrows && d < ncols) v = src[(int64_t)r * sl + (int64_t)d * sd] * mul;
        sm[r * LD + d] = v;
    }
}

/* acc[i][j] += sum_k A[i*LDA + k] * B[j*CS*LDB + k]  (both operands k-contiguous, K % 4 == 0) */
template <int R, int C, int K, int LDA, int LDB, int CS>
__device__ __forceinline__ void mm_nt(float (&acc)[R][C], const float *A, const float *B)
{
#pragma unroll 2
    for (int k = 0; k < K; k += 4) {
        float4 a[R], b[C];
#pragma unroll
        for (int i = 0; i < R; i++) a[i] = *reinterpret_cast<const float4 *>(A + i * LDA + k);
#pragma unroll
        for (int j = 0; j < C; j++) b[j] = *reinterpret_cast<const float4 *>(B + j * CS * LDB + k);
#pragma unroll
        for (int i = 0; i < R; i++)
#pragma unroll
            for (int j = 0; j < C; j++) {
                acc[i][j] = fmaf(a[i].x, b[j].x, acc[i][j]);
                acc[i][j] = fmaf(a[i].y, b[j].y, acc[i][j]);
                acc[i][j] = fmaf(a[i].z, b[j].z, acc[i][j]);
                acc[i][j] = fmaf(a[i].w, b[j].w, acc[i][j]);
            }
    }
}

/* acc[i][j] += sum_k A[i*LDA + k] * B[k*LDB + j*CS]  (A k-contiguous, K % 4 == 0) */
template <int R, int C, int K, int LDA, int LDB, int CS>
__device__ __forceinline__ void mm_nn(float (&acc)[R][C], const float *A, const float *B)
{
#pragma unroll 2
    for (int k = 0; k < K; k += 4) {
        float4 a[R];
#pragma unroll
        for (int i = 0; i < R; i++) a[i] = *reinterpret_cast<const float4 *>(A + i * LDA + k);
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            float b[C];
#pragma unroll
            for (int j = 0; j < C; j++) b[j] = B[(k + kk) * LDB + j * CS];
#pragma unroll
            for (int i = 0; i < R; i++) {
                const float av = kk == 0 ? a[i].x : kk == 1 ? a[i].y : kk == 2 ? a[i].z : a[i].w;
#pragma unroll
                for (int j = 0; j < C; j++) acc[i][j] = fmaf(av, b[j], acc[i][j]);
            }
        }
    }
}

__device__ __forceinline__ float sum16(float v)
{
    v += __shfl_xor_sync(0xffffffffu, v, 8);
    v += __shfl_xor_sync(0xffffffffu, v, 4);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v;
}

__device__ __forceinline__ float max16(float v)
{
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 8));
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return v;
}

/* ---------------------------------------------------------------- f32 forward */

template <int DP>
__global__ void __launch_bounds__(kThreads)
attn_fwd_kernel(opnd<float> out, float *__restrict__ lse, int64_t lsb, int64_t lsh, int64_t lsl, opnd<const float> q,
                opnd<const float> k, opnd<const float> v, dims dm)
{
    using C = cfg<DP>;
    constexpr int BM = C::BM, BN = C::BN, LD = C::LD, PLD = C::PLD, CS = BN / 16, CO = DP / 16;
    DYN_SMEM(float4, smem4);
    float *Qs = reinterpret_cast<float *>(smem4), *Ks = Qs + BM * LD, *Vs = Ks + BN * LD, *Ps = Vs + BN * LD;

    const int ntiles = (dm.L + BM - 1) / BM;
    const int tile = ntiles - 1 - (int)(blockIdx.x % ntiles);   /* heaviest (causal) tiles first */
    const int bh = (int)(blockIdx.x / ntiles), b = bh / dm.H, h = bh % dm.H;
    const int q0 = tile * BM, tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int off = dm.S - dm.L;   /* causal: key j visible to query i iff j <= i + off */

    load_tile<BM, DP, LD>(Qs, q.at(b, h) + (int64_t)q0 * q.sl, q.sl, q.sd, dm.L - q0, dm.D, (float)dm.scale * kLog2e);

    float m[4], l[4], o[4][CO];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        m[i] = -INFINITY;
        l[i] = 0.f;
#pragma unroll
        for (int j = 0; j < CO; j++) o[i][j] = 0.f;
    }
    const int n_end = dm.causal ? min(dm.S, q0 + BM + off) : dm.S;
    const float *kb = k.at(b, h), *vb = v.at(b, h);
    for (int k0 = 0; k0 < n_end; k0 += BN) {
        __syncthreads();   /* the previous tile's Ks/Vs/Ps are consumed */
        load_tile<BN, DP, LD>(Ks, kb + (int64_t)k0 * k.sl, k.sl, k.sd, dm.S - k0, dm.D, 1.f);
        load_tile<BN, DP, LD>(Vs, vb + (int64_t)k0 * v.sl, v.sl, v.sd, dm.S - k0, dm.Dv, 1.f);
        __syncthreads();
        float s[4][CS];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < CS; j++) s[i][j] = 0.f;
        mm_nt<4, CS, DP, LD, LD, 16>(s, Qs + ty * 4 * LD, Ks + tx * LD);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int qi = q0 + ty * 4 + i;
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < CS; j++) {
                const int kj = k0 + tx + 16 * j;
                if (kj >= dm.S || (dm.causal && kj > qi + off)) s[i][j] = -INFINITY;
                mx = fmaxf(mx, s[i][j]);
            }
            mx = max16(mx);
            const float mn = fmaxf(m[i], mx), mu = mn == -INFINITY ? 0.f : mn;
            const float alpha = exp2f(m[i] - mu);
            m[i] = mn;
            float rs = 0.f;
#pragma unroll
            for (int j = 0; j < CS; j++) {
                const float p = exp2f(s[i][j] - mu);
                rs += p;
                Ps[(ty * 4 + i) * PLD + tx + 16 * j] = p;
            }
            l[i] = l[i] * alpha + rs;
#pragma unroll
            for (int j = 0; j < CO; j++) o[i][j] *= alpha;
        }
        __syncthreads();
        mm_nn<4, CO, BN, PLD, LD, 16>(o, Ps + ty * 4 * PLD, Vs + tx);
    }
    float *ob = out.at(b, h);
    float *lb = lse + b * lsb + h * lsh;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float lt = sum16(l[i]);
        const int qi = q0 + ty * 4 + i;
        if (qi >= dm.L) continue;
        const float inv = lt > 0.f ? 1.f / lt : 0.f;
#pragma unroll
        for (int j = 0; j < CO; j++) {
            const int d = tx + 16 * j;
            if (d < dm.Dv) ob[(int64_t)qi * out.sl + (int64_t)d * out.sd] = o[i][j] * inv;
        }
        if (tx == 0) lb[(int64_t)qi * lsl] = lt > 0.f ? (m[i] + log2f(lt)) * kLn2 : -INFINITY;
    }
}

/* ---------------------------------------------------------------- tensor-core forward */

/* The forward and backward on tensor cores (mma.sync), for head dims up to 64 (SD's 40 pads to
 * 48; CLIP's 64; the forward also 80, SD's second level), in one of three element policies, chosen by tensor_precision():
 *  - PRECISION_BF16 (autocast puts attention in bf16): m16n8k16 bf16 -> f32 (mma_bf16_ops);
 *  - PRECISION_TF32: m16n8k8 tf32 -> f32, one product per pair: TF32's accuracy, as the matmuls;
 *  - PRECISION_F32: the same instruction, three products per pair, hi*hi + hi*lo + lo*hi with
 *    hi = tf32(x) and lo = x - hi: f32's accuracy (CUTLASS's "fast f32", which PyTorch's f32
 *    memory-efficient attention uses on sm80 and later).
 * Softmax, row sums and all accumulators are f32. Opt-in (DRAFT_ATTN_MMA=1) until a GPU run has
 * checked and measured them.
 * Both instructions have one fragment layout when counted in 32-bit words (lane = 4 g + t):
 * A [16 rows][8 words]: a0 = (g, t), a1 = (g+8, t), a2 = (g, t+4), a3 = (g+8, t+4); B [8 words][8
 * columns]: b0 = (t, g), b1 = (t+4, g); C [16][8] f32: c0, c1 = (g, 2t and 2t+1), c2, c3 = (g+8, ..).
 * A word holds 2 bf16 or 1 f32 (read as tf32), so the kernels are written once, in words, and the
 * policy says what a word holds and how to multiply. Tiles sit in shared memory as words with a
 * row pitch of 4 (mod 8) words, which makes the fragment loads conflict-free.
 * Register reuse (FlashAttention-2): the C fragments of a product whose columns are the k of the
 * next (S's keys for P V) become that product's A fragment without passing through shared
 * memory. In bf16 two C octets are one A fragment as they stand. In tf32 one octet is, once k is
 * relabelled: A's slot t takes C's column 2t and slot t + 4 column 2t + 1, so the B tile of such a
 * product keeps its row j at position reuse_pos(j). */
constexpr int kMmaThreads = 128;

#include "tensor/cuda/mma.cuh"

/* bf16: a word holds 2 elements along k; m16n8k16 */
struct mma_bf16_ops {
    static constexpr int EPW = 2;   /* elements per word */
    struct frag {
        uint32_t a[4];
    };
    __device__ static uint32_t word(float x0, float x1) { return bf16x2(x0, x1); }
    __device__ static void prep(frag &f, const uint32_t (&w)[4])
    {
#pragma unroll
        for (int i = 0; i < 4; i++) f.a[i] = w[i];
    }
    __device__ static void mma(float (&c)[4], const frag &f, uint32_t b0, uint32_t b1) { mma_bf16(c, f.a, b0, b1); }
    /* C octets c[0] and c[1] (16 columns) as one A fragment, k along those columns */
    __device__ static void c_to_a(frag &f, const float (*c)[4])
    {
        f.a[0] = bf16x2(c[0][0], c[0][1]);
        f.a[1] = bf16x2(c[0][2], c[0][3]);
        f.a[2] = bf16x2(c[1][0], c[1][1]);
        f.a[3] = bf16x2(c[1][2], c[1][3]);
    }
    __device__ static int reuse_pos(int j) { return j; }
    __device__ static int reuse_inv(int p) { return p; }
    /* element (row, col) of a word tile of pitch pw */
    __device__ static void put(uint32_t *t, int pw, int row, int col, float x)
    {
        reinterpret_cast<uint16_t *>(t)[row * 2 * pw + col] = (uint16_t)(bf16x2(x, 0.f) & 0xffffu);
    }
};

/* tf32: a word holds one f32; m16n8k8, X3: three products per pair (f32 accuracy), else one */
template <bool X3> struct mma_tf32_ops {
    static constexpr int EPW = 1;
    struct frag {
        uint32_t hi[4], lo[4];   /* lo: X3 only */
    };
    __device__ static uint32_t word(float x0, float) { return __float_as_uint(x0); }
    /* hi = tf32(x) and lo = x - hi (exact in f32); the tensor core reads lo as tf32 by dropping
     * its 13 low bits, an error of at most 2^-10 |lo| <= 2^-21 |x| (CUTLASS's "fast f32" split) */
    __device__ static void prep(frag &f, const uint32_t (&w)[4])
    {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float x = __uint_as_float(w[i]);
            f.hi[i] = to_tf32(x);
            f.lo[i] = X3 ? __float_as_uint(x - __uint_as_float(f.hi[i])) : 0u;
        }
    }
    __device__ static void mma(float (&c)[4], const frag &f, uint32_t b0, uint32_t b1)
    {
        const float x0 = __uint_as_float(b0), x1 = __uint_as_float(b1);
        const uint32_t h0 = to_tf32(x0), h1 = to_tf32(x1);
        if (X3) {   /* the small terms first */
            mma_tf32(c, f.lo, h0, h1);
            mma_tf32(c, f.hi, __float_as_uint(x0 - __uint_as_float(h0)), __float_as_uint(x1 - __uint_as_float(h1)));
        }
        mma_tf32(c, f.hi, h0, h1);
    }
    /* C octet c[0] as one A fragment: slot t takes column 2t, slot t + 4 column 2t + 1 */
    __device__ static void c_to_a(frag &f, const float (*c)[4])
    {
        const uint32_t w[4] = {__float_as_uint(c[0][0]), __float_as_uint(c[0][2]), __float_as_uint(c[0][1]),
                               __float_as_uint(c[0][3])};
        prep(f, w);
    }
    /* where row j of a reuse product's B tile goes: (2i, 2i + 1) of an octet to (i, i + 4) */
    __device__ static int reuse_pos(int j) { return (j & ~7) | ((j & 1) << 2) | ((j & 7) >> 1); }
    /* the row j at position p: reuse_inv(reuse_pos(j)) == j */
    __device__ static int reuse_inv(int p) { return (p & ~7) | ((p & 3) << 1) | ((p >> 2) & 1); }
    __device__ static void put(uint32_t *t, int pw, int row, int col, float x) { t[row * pw + col] = __float_as_uint(x); }
};

/* whether rows of src (row stride sl, element stride sd) can be read in float4 runs up to ncols:
 * contiguous rows, 16-byte aligned, ncols % 4 == 0 (a run is all inside or all outside) */
__device__ __forceinline__ bool rows_vec4(const float *src, int64_t sl, int64_t sd, int ncols)
{
    return sd == 1 && sl % 4 == 0 && ncols % 4 == 0 && ((uintptr_t)src & 15) == 0;
}

/* dst[r][w] = the words of src[row0 + r][EPW w ..] for a [64][DP] tile, zero past nrows / ncols;
 * pitch DP / EPW + 4 words. Where rows_vec4, one float4 load per 4 elements (a quarter of the
 * loads and index arithmetic: the tensor-core kernels' tile loads are most of their instructions
 * at SD's head dims) */
template <int DP, class E>
__device__ __forceinline__ void load_words(uint32_t *dst, const float *src, int64_t sl, int64_t sd, int nrows, int ncols,
                                           bool vec4)
{
    constexpr int W = DP / E::EPW, PW = W + 4;
    if (vec4 && rows_vec4(src, sl, sd, ncols)) {
        constexpr int Q = DP / 4;   /* float4 per row */
        for (int idx = threadIdx.x; idx < 64 * Q; idx += kMmaThreads) {
            const int r = idx / Q, d = idx % Q * 4;
            float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
            if (r < nrows && d < ncols) v = *reinterpret_cast<const float4 *>(src + (int64_t)r * sl + d);
            uint32_t *o = dst + r * PW + d / E::EPW;
            if constexpr (E::EPW == 2) {
                o[0] = E::word(v.x, v.y), o[1] = E::word(v.z, v.w);
            } else {
                o[0] = E::word(v.x, 0.f), o[1] = E::word(v.y, 0.f), o[2] = E::word(v.z, 0.f), o[3] = E::word(v.w, 0.f);
            }
        }
        return;
    }
    for (int idx = threadIdx.x; idx < 64 * W; idx += kMmaThreads) {
        const int r = idx / W, w = idx % W, d = E::EPW * w;
        const float *row = src + (int64_t)r * sl;
        const float x0 = r < nrows && d < ncols ? row[(int64_t)d * sd] : 0.f;
        const float x1 = E::EPW == 2 && r < nrows && d + 1 < ncols ? row[(int64_t)(d + 1) * sd] : 0.f;
        dst[r * PW + w] = E::word(x0, x1);
    }
}

/* Transposed word tiles ([DP][64 / EPW], pitch 64 / EPW + 4 = 4 (mod 32)) are written by (column
 * d, position p) pairs numbered so that a warp's 32 stores cover 8 columns x 4 consecutive
 * positions: words 4 d + p (mod 32), 32 banks. (In d-major order a warp's stores were PT words apart
 * and fell on 8 banks: 4 ways conflicted.) transposed_at(idx) gives pair idx < (64 / EPW) * DP. */
template <int DP, class E> __device__ __forceinline__ void transposed_at(int idx, int &d, int &p)
{
    constexpr int NP4 = 64 / E::EPW / 4;   /* groups of 4 positions */
    const int lo = idx % 32, hi = idx / 32;
    d = hi / NP4 * 8 + lo % 8;
    p = hi % NP4 * 4 + lo / 8;
}

/* The same for float4 runs of 4 columns (DRAFT_ATTN_VEC4's V): pair idx < (64 / EPW) * (DP / 4) is
 * columns d .. d+3 (d % 4 == 0) at position p, a warp's 32 covering 2 runs x 16 positions: the
 * stores of column d + i fall on words 4 d + 4 i + p (mod 32), 32 banks for each i, and the loads
 * read 32 contiguous bytes of each of 16 key rows */
template <int DP, class E> __device__ __forceinline__ void transposed4_at(int idx, int &d, int &p)
{
    constexpr int NP16 = 64 / E::EPW / 16;   /* groups of 16 positions */
    const int lo = idx % 32, hi = idx / 32;
    p = hi % NP16 * 16 + lo % 16;
    d = (hi / NP16 * 2 + lo / 16) * 4;
}

/* dst[d][pos(j)] = element (j, d) of a [64][DP] word tile already in shared memory, as a [DP][64]
 * word tile (pitch 64 / EPW + 4), pos = reuse_pos for the B tile of a register-reuse product (so
 * REUSE), else j: the transposed copy costs no second read of global memory */
template <int DP, class E, bool REUSE> __device__ __forceinline__ void transpose_words(uint32_t *dst, const uint32_t *src)
{
    constexpr int PW = DP / E::EPW + 4, PT = 64 / E::EPW + 4;
    static_assert(DP % 8 == 0, "transposed tiles: 8 columns per warp store");
    for (int idx = threadIdx.x; idx < 64 / E::EPW * DP; idx += kMmaThreads) {
        int d, p;
        transposed_at<DP, E>(idx, d, p);
        const int j = REUSE ? E::reuse_inv(p) : p;
        if constexpr (E::EPW == 2) {   /* element pairs (2j, 2j + 1) of column d */
            const int sh = (d & 1) * 16;
            const uint32_t lo = (src[2 * j * PW + d / 2] >> sh) & 0xffffu, hi = (src[(2 * j + 1) * PW + d / 2] >> sh) & 0xffffu;
            dst[d * PT + p] = lo | hi << 16;
        } else {
            dst[d * PT + p] = src[j * PW + d];
        }
    }
}

/* The A fragment words of one warp (g = lane / 4, t = lane % 4) from a word tile of pitch pw: rows
 * r0 and r0 + 8 (r0 = 16 * warp + g), words w0 .. w0 + 7 */
__device__ __forceinline__ void frag_a(uint32_t (&a)[4], const uint32_t *t, int pw, int r0, int w0, int tq)
{
    a[0] = t[r0 * pw + w0 + tq];
    a[1] = t[(r0 + 8) * pw + w0 + tq];
    a[2] = t[r0 * pw + w0 + 4 + tq];
    a[3] = t[(r0 + 8) * pw + w0 + 4 + tq];
}

/* c += a b, with the B fragment from row n (= n-octet * 8 + g) of a tile stored with k along the
 * row (words w0 .. w0 + 7) */
template <class E>
__device__ __forceinline__ void mma_tile(float (&c)[4], const typename E::frag &a, const uint32_t *t, int pw, int n, int w0,
                                         int tq)
{
    E::mma(c, a, t[n * pw + w0 + tq], t[n * pw + w0 + 4 + tq]);
}

/* dst[row0 + 8 i][d] = mul[i] * acc's C fragments (rows row0, row0 + 8; d = 8 nd + 2 t + e), for
 * rows < nrows and d < ncols, at strides sl, sd */
template <int ND>
__device__ __forceinline__ void store_c(float *dst, int64_t sl, int64_t sd, const float (&acc)[ND][4], int row0, int nrows,
                                        int ncols, const float (&mul)[2], int tq)
{
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int r = row0 + 8 * i;
        if (r >= nrows) continue;
#pragma unroll
        for (int nd = 0; nd < ND; nd++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int d = nd * 8 + 2 * tq + e;
                if (d < ncols) dst[(int64_t)r * sl + (int64_t)d * sd] = acc[nd][2 * i + e] * mul[i];
            }
    }
}

/* DRAFT_ATTN_PACKED: K and V of every head written once, before the forward, in the words its
 * shared-memory tiles hold, so that each block copies its tiles with 16-byte cp.async, two tiles
 * in flight (the next one's copy under this one's products), instead of loading, converting and
 * (V) transposing every tile again in each of the L / 64 blocks of a head:
 *   Kp[bh][s][w]     = E::word of k[s][EPW w], k[s][EPW w + 1]   (W = DP / EPW words a row,
 *                      s < Sp = the keys rounded up to 64; zero past S and D)
 *   Vp[bh][t][d][p]  = E::word of v[t*64 + EPW j][d], v[t*64 + EPW j + 1][d], j = reuse_inv(p)
 *                      (64 / EPW words a column; zero past S and Dv)
 * the same words load_words and the transposed loads write, so the forward's sums are the same
 * bits. bh = b * H + h. One thread per word. attn_pack_rows_kernel writes the first kind for
 * `rows` rows of x (zero to rows_pad and past ncols), attn_pack_cols_kernel the second (transposed,
 * in tiles of 64 rows); the backward packs Q and dO both ways (attn_bwd_pack). */
template <int DP, class E>
__global__ void __launch_bounds__(256)
attn_pack_rows_kernel(uint32_t *__restrict__ P, opnd<const float> x, int heads, int H, int rows, int ncols, int rows_pad)
{
    constexpr int W = DP / E::EPW;
    const int64_t e = (int64_t)blockIdx.x * 256 + threadIdx.x, total = (int64_t)heads * rows_pad * W;
    if (e >= total) return;
    const int w = (int)(e % W), s = (int)(e / W % rows_pad), bh = (int)(e / ((int64_t)W * rows_pad)), d = E::EPW * w;
    const float *row = x.at(bh / H, bh % H) + (int64_t)s * x.sl;
    const float x0 = s < rows && d < ncols ? row[(int64_t)d * x.sd] : 0.f;
    const float x1 = E::EPW == 2 && s < rows && d + 1 < ncols ? row[(int64_t)(d + 1) * x.sd] : 0.f;
    P[e] = E::word(x0, x1);
}

template <int DP, class E>
__global__ void __launch_bounds__(256)
attn_pack_cols_kernel(uint32_t *__restrict__ P, opnd<const float> x, int heads, int H, int rows, int ncols, int ntiles)
{
    constexpr int PT = 64 / E::EPW;
    const int64_t e = (int64_t)blockIdx.x * 256 + threadIdx.x, total = (int64_t)heads * ntiles * DP * PT;
    if (e >= total) return;
    const int p = (int)(e % PT), d = (int)(e / PT % DP), t = (int)(e / ((int64_t)PT * DP) % ntiles);
    const int bh = (int)(e / ((int64_t)PT * DP * ntiles));
    const int kj = t * 64 + E::EPW * E::reuse_inv(p);
    const float *xb = x.at(bh / H, bh % H);
    const float x0 = kj < rows && d < ncols ? xb[(int64_t)kj * x.sl + (int64_t)d * x.sd] : 0.f;
    const float x1 = E::EPW == 2 && kj + 1 < rows && d < ncols ? xb[(int64_t)(kj + 1) * x.sl + (int64_t)d * x.sd] : 0.f;
    P[e] = E::word(x0, x1);
}

/* the packed forward's dynamic shared memory: two stages of the K and V^T word tiles */
template <int DP, class E> __host__ __device__ constexpr size_t attn_packed_smem()
{
    return sizeof(uint32_t) * 2 * (size_t)(64 * (DP / E::EPW + 4) + DP * (64 / E::EPW + 4));
}

/* 16-byte cp.async copies of a packed tile into shared memory: 64 rows of DP / EPW words to pitch
 * DP / EPW + 4 (attn_pack_rows_kernel's), or DP columns of 64 / EPW words to pitch 64 / EPW + 4
 * (attn_pack_cols_kernel's); the caller commits */
template <int DP, int EPW> __device__ __forceinline__ void attn_copy_rows(uint32_t *dst, const uint32_t *src)
{
    constexpr int W4 = DP / EPW / 4, PW = DP / EPW + 4, N = 64 * W4;
#pragma unroll
    for (int i = 0; i < (N + kMmaThreads - 1) / kMmaThreads; i++) {
        const int idx = (int)threadIdx.x + i * kMmaThreads;
        if (N % kMmaThreads == 0 || idx < N) __pipeline_memcpy_async(dst + idx / W4 * PW + idx % W4 * 4, src + 4 * idx, 16);
    }
}

template <int DP, int EPW> __device__ __forceinline__ void attn_copy_cols(uint32_t *dst, const uint32_t *src)
{
    constexpr int P4 = 64 / EPW / 4, PT = 64 / EPW + 4, N = DP * P4;
#pragma unroll
    for (int i = 0; i < (N + kMmaThreads - 1) / kMmaThreads; i++) {
        const int idx = (int)threadIdx.x + i * kMmaThreads;
        if (N % kMmaThreads == 0 || idx < N) __pipeline_memcpy_async(dst + idx / P4 * PT + idx % P4 * 4, src + 4 * idx, 16);
    }
}

/* the packed forward's copy of one key tile into a stage: K rows, then the V^T columns, committed
 * as one group */
template <int DP, int EPW> __device__ __forceinline__ void attn_copy_tile(uint32_t *st, const uint32_t *kp, const uint32_t *vp)
{
    attn_copy_rows<DP, EPW>(st, kp);
    attn_copy_cols<DP, EPW>(st + 64 * (DP / EPW + 4), vp);
    __pipeline_commit();
}

/* A block of 4 warps owns 64 query rows, 16 per warp, and streams 64-key tiles: K row-major and
 * V transposed (keys along the row: it is P V's B tile), as words in shared memory */
template <int DP, class E, bool PK = false>
__global__ void __launch_bounds__(kMmaThreads)
attn_fwd_mma_kernel(opnd<float> out, float *__restrict__ lse, int64_t lsb, int64_t lsh, int64_t lsl, opnd<const float> q,
                    opnd<const float> k, opnd<const float> v, dims dm, const uint32_t *__restrict__ Kp = nullptr,
                    const uint32_t *__restrict__ Vp = nullptr)
{
    constexpr int EPW = E::EPW, BM = 64, BN = 64, KC = DP / (8 * EPW), NT = BN / 8, ND = DP / 8;
    constexpr int PW = DP / EPW + 4, PV = BN / EPW + 4;   /* pitches in 32-bit words */
    static_assert(DP % 16 == 0 && DP <= 80, "mma forward: head dims up to 80");
    constexpr int STAGE = BN * PW + DP * PV;   /* PK: a stage's words, K then V^T */
    uint32_t *Ks, *Vt;   /* Q passes through Ks first */
    if constexpr (PK) {   /* two stages in dynamic shared memory (attn_packed_smem) */
        DYN_SMEM(uint32_t, attn_pk_smem);
        Ks = attn_pk_smem, Vt = Ks + BN * PW;
    } else {
        __shared__ uint32_t Ks_[BN * PW], Vt_[DP * PV];
        Ks = Ks_, Vt = Vt_;
    }

    const int ntiles = (dm.L + BM - 1) / BM;
    const int tile = ntiles - 1 - (int)(blockIdx.x % ntiles);   /* heaviest (causal) tiles first */
    const int bh = (int)(blockIdx.x / ntiles), b = bh / dm.H, h = bh % dm.H;
    const int q0 = tile * BM, off = dm.S - dm.L;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gq = lane / 4, tq = lane % 4;
    const float sl2 = (float)dm.scale * kLog2e;

    load_words<DP, E>(Ks, q.at(b, h) + (int64_t)q0 * q.sl, q.sl, q.sd, dm.L - q0, dm.D, dm.vec4);   /* zero past L and D */
    __syncthreads();
    typename E::frag qf[KC];
    const int r0 = warp * 16 + gq;   /* this thread's rows in the tile: r0 and r0 + 8 */
#pragma unroll
    for (int kc = 0; kc < KC; kc++) {
        uint32_t w[4];
        frag_a(w, Ks, PW, r0, kc * 8, tq);
        E::prep(qf[kc], w);
    }

    float o[ND][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int nd = 0; nd < ND; nd++) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
    const int qi0 = q0 + r0, qi1 = qi0 + 8;
    const int n_end = dm.causal ? min(dm.S, q0 + BM + off) : dm.S;
    const float *kb = k.at(b, h), *vb = v.at(b, h);
    /* PK: the packed words of this head, and key tile k0's 16-byte runs into the stage at
     * `to` (K rows, then V^T columns; committed as one group) */
    const uint32_t *kph = nullptr, *vph = nullptr;
    if constexpr (PK) {
        const int64_t ntk = (dm.S + BN - 1) / BN;
        kph = Kp + (int64_t)bh * ntk * BN * (DP / EPW), vph = Vp + (int64_t)bh * ntk * DP * (BN / EPW);
        __syncthreads();   /* Q's fragments are taken from stage 0 */
        if (n_end > 0) attn_copy_tile<DP, EPW>(Ks, kph, vph);
    }
    uint32_t *const stage0 = Ks;
    int it = 0;
    for (int k0 = 0; k0 < n_end; k0 += BN, it++) {
        if constexpr (PK) {   /* the next tile's copy in flight while this one is used */
            if (k0 + BN < n_end) {
                const int64_t t1 = k0 / BN + 1;
                attn_copy_tile<DP, EPW>(stage0 + ((it + 1) & 1) * STAGE, kph + t1 * BN * (DP / EPW), vph + t1 * DP * (BN / EPW));
                __pipeline_wait_prior(1);
            } else {
                __pipeline_wait_prior(0);
            }
            __syncthreads();   /* tile it is in, for every thread */
            Ks = stage0 + (it & 1) * STAGE, Vt = Ks + BN * PW;
        } else {
            __syncthreads();   /* Q's fragments, or the previous tile's Ks / Vt, are taken */
            load_words<DP, E>(Ks, kb + (int64_t)k0 * k.sl, k.sl, k.sd, dm.S - k0, dm.D, dm.vec4);
            if (dm.vec4 && rows_vec4(vb + (int64_t)k0 * v.sl, v.sl, v.sd, dm.Dv)) {
                /* float4 runs: a warp reads 8 columns of 16 key rows (EPW 2: twice), 32 bytes per
                 * row, and stores each column's 16 positions: words 4 d + p (mod 32), 32 banks */
                for (int idx = threadIdx.x; idx < (BN / EPW) * (DP / 4); idx += kMmaThreads) {
                    int d, p;
                    transposed4_at<DP, E>(idx, d, p);
                    const int kj = k0 + EPW * E::reuse_inv(p);   /* keys EPW j .. of columns d .. d+3 */
                    float4 a = make_float4(0.f, 0.f, 0.f, 0.f), c = a;
                    if (d < dm.Dv && kj < dm.S) a = *reinterpret_cast<const float4 *>(vb + (int64_t)kj * v.sl + d);
                    if (EPW == 2 && d < dm.Dv && kj + 1 < dm.S)
                        c = *reinterpret_cast<const float4 *>(vb + (int64_t)(kj + 1) * v.sl + d);
                    Vt[d * PV + p] = E::word(a.x, c.x), Vt[(d + 1) * PV + p] = E::word(a.y, c.y);
                    Vt[(d + 2) * PV + p] = E::word(a.z, c.z), Vt[(d + 3) * PV + p] = E::word(a.w, c.w);
                }
            } else {
                for (int idx = threadIdx.x; idx < (BN / EPW) * DP; idx += kMmaThreads) {
                    int d, p;   /* a warp: 8 columns x 4 positions (transposed_at): 8 floats of 4 or 8 key rows */
                    transposed_at<DP, E>(idx, d, p);
                    const int kj = k0 + EPW * E::reuse_inv(p);   /* keys EPW j .. of column d */
                    const float x0 = kj < dm.S && d < dm.Dv ? vb[(int64_t)kj * v.sl + (int64_t)d * v.sd] : 0.f;
                    const float x1 =
                        EPW == 2 && kj + 1 < dm.S && d < dm.Dv ? vb[(int64_t)(kj + 1) * v.sl + (int64_t)d * v.sd] : 0.f;
                    Vt[d * PV + p] = E::word(x0, x1);
                }
            }
            __syncthreads();
        }
        /* S = Q K^T for this warp's 16 rows x 64 keys: NT octets of keys */
        float sc[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
            for (int kc = 0; kc < KC; kc++) mma_tile<E>(sc[nt], qf[kc], Ks, PW, nt * 8 + gq, kc * 8, tq);
        }
        /* online softmax (base 2) on rows qi0 (c0, c1) and qi1 (c2, c3) */
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int kj = k0 + nt * 8 + 2 * tq + (e & 1), qi = e < 2 ? qi0 : qi1;
                const bool ok = kj < dm.S && !(dm.causal && kj > qi + off);
                sc[nt][e] = ok ? sc[nt][e] * sl2 : -INFINITY;
                mx[e >> 1] = fmaxf(mx[e >> 1], sc[nt][e]);
            }
        float alpha[2], mu[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {   /* the 4 threads of a quad share a row */
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            const float mn = fmaxf(m[i], mx[i]);
            mu[i] = mn == -INFINITY ? 0.f : mn;
            alpha[i] = exp2f(m[i] - mu[i]);
            m[i] = mn;
            l[i] *= alpha[i];
        }
#pragma unroll
        for (int nd = 0; nd < ND; nd++) {
            o[nd][0] *= alpha[0];
            o[nd][1] *= alpha[0];
            o[nd][2] *= alpha[1];
            o[nd][3] *= alpha[1];
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                sc[nt][e] = exp2f(sc[nt][e] - mu[e >> 1]);
                l[e >> 1] += sc[nt][e];
            }
        /* O += P V, one k step (EPW octets of S = one A fragment) at a time */
#pragma unroll
        for (int kc = 0; kc < BN / (8 * EPW); kc++) {
            typename E::frag pa;
            E::c_to_a(pa, &sc[EPW * kc]);
#pragma unroll
            for (int nd = 0; nd < ND; nd++) mma_tile<E>(o[nd], pa, Vt, PV, nd * 8 + gq, kc * 8, tq);
        }
        if constexpr (PK) __syncthreads();   /* stage it & 1 is free for tile it + 2's copy */
    }
    (void)it;
    float lt[2], inv[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {   /* the row sums over the quad */
        lt[i] = l[i];
        lt[i] += __shfl_xor_sync(0xffffffffu, lt[i], 1);
        lt[i] += __shfl_xor_sync(0xffffffffu, lt[i], 2);
        inv[i] = lt[i] > 0.f ? 1.f / lt[i] : 0.f;
    }
    store_c<ND>(out.at(b, h) + (int64_t)q0 * out.sl, out.sl, out.sd, o, r0, dm.L - q0, dm.Dv, inv, tq);
    float *lb = lse + b * lsb + h * lsh;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int qi = i ? qi1 : qi0;
        if (tq == 0 && qi < dm.L) lb[(int64_t)qi * lsl] = lt[i] > 0.f ? (m[i] + log2f(lt[i])) * kLn2 : -INFINITY;
    }
}

/* ---------------------------------------------------------------- tensor-core backward */

/* The backward under the same switch, FlashAttention-2's key-block order: a block of 4 warps owns
 * 64 keys (16 per warp) and visits every query tile; per tile each warp forms S^T = K Q^T and
 * dP^T = V dO^T for its keys (mma), P^T and dS^T = P^T (dP^T - D) in registers, then dV += P^T dO
 * and dK += dS^T Q from those same registers (register reuse: k is the query). dQ: dS goes to
 * shared memory once, and each warp forms 16 query rows of this key tile's share dS K, written
 * unscaled to dqp[lbh][tile][L][D] like the f32 fused kernel's partials; the reduce kernel sums
 * them in key-tile order (no atomics). Operands that serve as the B side with the sum over queries
 * or keys (Q, dO, K) are kept transposed as well. */
/* DRAFT_ATTN_PACKED, backward: Q and dO of every head packed once per call, both as rows (the
 * words load_words writes) and transposed (transpose_words' with the reuse order), and each query
 * tile's lse * log2(e) (-inf past L) and D (0 past L), in one buffer of words at offsets off[0..4]
 * (off[5]: the total), for heads heads of ntq query tiles:
 *   Q rows, dO rows [heads][ntq * 64][DP / EPW]; Q^T, dO^T [heads][ntq][DP][64 / EPW];
 *   lse, D [heads][ntq][2][64] (floats) */
template <int DP, class E> __host__ __device__ inline void attn_bwd_pack_offsets(int64_t heads, int ntq, int64_t (&off)[6])
{
    const int64_t r = heads * ntq * 64 * (DP / E::EPW), c = heads * ntq * DP * (64 / E::EPW);
    off[0] = 0, off[1] = r, off[2] = 2 * r, off[3] = 2 * r + c, off[4] = 2 * r + 2 * c, off[5] = off[4] + heads * ntq * 128;
}

__global__ void __launch_bounds__(256)
attn_pack_lse_d_kernel(float *__restrict__ P, const float *__restrict__ lse, int64_t lsb, int64_t lsh, int64_t lsl,
                       const float *__restrict__ Dvec, dims dm, int ntq)
{
    const int64_t e = (int64_t)blockIdx.x * 256 + threadIdx.x, total = (int64_t)dm.B * dm.H * ntq * 128;
    if (e >= total) return;
    const int i = (int)(e % 128), t = (int)(e / 128 % ntq), bh = (int)(e / (128 * (int64_t)ntq)), r = t * 64 + i % 64;
    if (i < 64) P[e] = r < dm.L ? lse[(bh / dm.H) * lsb + (bh % dm.H) * lsh + (int64_t)r * lsl] * kLog2e : -INFINITY;
    else P[e] = r < dm.L ? Dvec[(int64_t)bh * dm.L + r] : 0.f;
}

/* the packed backward's copy of query tile t into a stage (Q, dO rows; Q^T, dO^T columns; lse and
 * D), from a head's packed operands p[0..4], committed as one group */
template <int DP, int EPW>
__device__ __forceinline__ void attn_bwd_copy_tile(uint32_t *to, const uint32_t *const (&p)[5], int t)
{
    constexpr int PW = DP / EPW + 4, PT = 64 / EPW + 4, RW = 64 * (DP / EPW), CW = DP * (64 / EPW);
    attn_copy_rows<DP, EPW>(to, p[0] + (int64_t)t * RW);
    attn_copy_rows<DP, EPW>(to + 64 * PW, p[1] + (int64_t)t * RW);
    attn_copy_cols<DP, EPW>(to + 2 * 64 * PW, p[2] + (int64_t)t * CW);
    attn_copy_cols<DP, EPW>(to + 2 * 64 * PW + DP * PT, p[3] + (int64_t)t * CW);
    if (threadIdx.x < 32)
        __pipeline_memcpy_async(to + 2 * 64 * PW + 2 * DP * PT + 4 * threadIdx.x, p[4] + (int64_t)t * 128 + 4 * threadIdx.x, 16);
    __pipeline_commit();
}

template <int DP, class E> struct mma_bwd_cfg {
    static constexpr int PW = DP / E::EPW + 4, PT = 64 / E::EPW + 4;   /* words per row: [64][DP] and [DP][64] tiles */
    /* Q and dO [64][PW] (K and V pass through them first), Kt, Qt, dOt [DP][PT], dS [64][PT], lse, D */
    static constexpr size_t smem = sizeof(uint32_t) * (size_t)(2 * 64 * PW + 3 * DP * PT + 64 * PT) + sizeof(float) * 128;
    /* packed (PK): two stages of Q, dO, Qt, dOt, lse and D (K and V pass through the first), Kt, dS */
    static constexpr int SW = 2 * 64 * PW + 2 * DP * PT + 128;
    static constexpr size_t smem_packed = sizeof(uint32_t) * (size_t)(2 * SW + DP * PT + 64 * PT);
};

template <int DP, class E, bool PK = false>
__global__ void __launch_bounds__(kMmaThreads)
attn_bwd_mma_kernel(opnd<float> dk, opnd<float> dv, opnd<const float> q, opnd<const float> k, opnd<const float> v,
                    opnd<const float> dout, const float *__restrict__ lse, int64_t lsb, int64_t lsh, int64_t lsl,
                    const float *__restrict__ Dvec, dims dm, float *__restrict__ dqp, const uint32_t *__restrict__ pk = nullptr)
{
    using M = mma_bwd_cfg<DP, E>;
    constexpr int EPW = E::EPW, PW = M::PW, PT = M::PT, KC = DP / (8 * EPW), ND = DP / 8, NQ = 64 / 8, QC = 64 / (8 * EPW);
    constexpr int SW = M::SW;
    static_assert(DP % 16 == 0 && DP <= 64, "mma backward: head dims up to 64");
    DYN_SMEM(uint32_t, smw);
    uint32_t *Qs = smw, *dOs = Qs + 64 * PW, *Ks = Qs, *Vs = dOs, *Kt, *Qt, *dOt, *dSs;
    float *lse2, *Ds;
    if constexpr (PK) {   /* stage s at smw + s * SW: Q, dO, Qt, dOt, lse, D; then Kt and dS */
        Qt = dOs + 64 * PW, dOt = Qt + DP * PT, lse2 = reinterpret_cast<float *>(dOt + DP * PT), Ds = lse2 + 64;
        Kt = smw + 2 * SW, dSs = Kt + DP * PT;
    } else {
        Kt = dOs + 64 * PW, Qt = Kt + DP * PT, dOt = Qt + DP * PT, dSs = dOt + DP * PT;
        lse2 = reinterpret_cast<float *>(dSs + 64 * PT), Ds = lse2 + 64;
        (void)SW;
    }

    const int ntiles = (dm.S + 63) / 64;
    const int tile = (int)(blockIdx.x % ntiles);
    const int lbh = (int)(blockIdx.x / ntiles), bh = dm.bh0 + lbh, b = bh / dm.H, h = bh % dm.H;
    const int k0 = tile * 64, off = dm.S - dm.L;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gq = lane / 4, tq = lane % 4;
    const float sl2 = (float)dm.scale * kLog2e;

    const float *kb = k.at(b, h) + (int64_t)k0 * k.sl, *vb = v.at(b, h) + (int64_t)k0 * v.sl;
    load_words<DP, E>(Ks, kb, k.sl, k.sd, dm.S - k0, dm.D, dm.vec4);
    load_words<DP, E>(Vs, vb, v.sl, v.sd, dm.S - k0, dm.Dv, dm.vec4);
    __syncthreads();
    transpose_words<DP, E, false>(Kt, Ks);
    const int r0 = warp * 16 + gq;   /* this thread's keys in the tile: r0 and r0 + 8 */
    uint32_t kf[KC][4], vf[KC][4];   /* as stored: E::prep makes them A fragments at each use */
#pragma unroll
    for (int kc = 0; kc < KC; kc++) {
        frag_a(kf[kc], Ks, PW, r0, kc * 8, tq);
        frag_a(vf[kc], Vs, PW, r0, kc * 8, tq);
    }
    float dka[ND][4], dva[ND][4];
#pragma unroll
    for (int nd = 0; nd < ND; nd++)
#pragma unroll
        for (int e = 0; e < 4; e++) dka[nd][e] = dva[nd][e] = 0.f;

    int m_begin = dm.causal ? max(0, k0 - off) : 0;
    m_begin = m_begin / 64 * 64;
    const float *qbh = q.at(b, h), *gbh = dout.at(b, h);
    const float *lb = lse + b * lsb + h * lsh, *db = Dvec + (int64_t)bh * dm.L;
    /* PK: this head's packed Q, dO, Q^T, dO^T and lse / D (attn_bwd_pack_offsets) */
    const uint32_t *pk_head[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
    if constexpr (PK) {
        const int ntq = (dm.L + 63) / 64;
        int64_t off[6];
        attn_bwd_pack_offsets<DP, E>((int64_t)dm.B * dm.H, ntq, off);
        const int64_t rw = (int64_t)ntq * 64 * (DP / EPW), cw = (int64_t)ntq * DP * (64 / EPW);
        pk_head[0] = pk + off[0] + bh * rw, pk_head[1] = pk + off[1] + bh * rw;
        pk_head[2] = pk + off[2] + bh * cw, pk_head[3] = pk + off[3] + bh * cw, pk_head[4] = pk + off[4] + (int64_t)bh * ntq * 128;
        __syncthreads();   /* K, V and their fragments are taken from stage 0 */
        if (m_begin < dm.L) attn_bwd_copy_tile<DP, EPW>(smw, pk_head, m_begin / 64);
    }
    int it = 0;
    for (int q0 = m_begin; q0 < dm.L; q0 += 64, it++) {
        if constexpr (PK) {   /* the next query tile's copy in flight while this one is used */
            __syncthreads();   /* the previous tile's stage and dS are taken */
            if (q0 + 64 < dm.L) {
                attn_bwd_copy_tile<DP, EPW>(smw + ((it + 1) & 1) * SW, pk_head, q0 / 64 + 1);
                __pipeline_wait_prior(1);
            } else {
                __pipeline_wait_prior(0);
            }
            __syncthreads();   /* tile it is in, for every thread */
            Qs = smw + (it & 1) * SW, dOs = Qs + 64 * PW, Qt = dOs + 64 * PW, dOt = Qt + DP * PT;
            lse2 = reinterpret_cast<float *>(dOt + DP * PT), Ds = lse2 + 64;
        } else {
            __syncthreads();   /* K and V (first tile), or the previous tile's Q, dO and dS, are taken */
            const float *qt = qbh + (int64_t)q0 * q.sl, *gt = gbh + (int64_t)q0 * dout.sl;
            load_words<DP, E>(Qs, qt, q.sl, q.sd, dm.L - q0, dm.D, dm.vec4);
            load_words<DP, E>(dOs, gt, dout.sl, dout.sd, dm.L - q0, dm.Dv, dm.vec4);
            for (int r = threadIdx.x; r < 64; r += kMmaThreads) {
                const bool in = q0 + r < dm.L;
                lse2[r] = in ? lb[(int64_t)(q0 + r) * lsl] * kLog2e : -INFINITY;
                Ds[r] = in ? db[q0 + r] : 0.f;
            }
            __syncthreads();
            transpose_words<DP, E, true>(Qt, Qs);
            transpose_words<DP, E, true>(dOt, dOs);
            __syncthreads();
        }
        /* per half of the query tile (32 queries: fewer live registers), S^T and dP^T for this
         * warp's 16 keys (mma); P^T into st and dS^T into dpt, dS also to shared memory as
         * [query][key]; then dV += P^T dO and dK += dS^T Q, one k step of queries at a time */
#pragma unroll 1
        for (int qh = 0; qh < 2; qh++) {
            float st[NQ / 2][4], dpt[NQ / 2][4];
#pragma unroll
            for (int nt = 0; nt < NQ / 2; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) st[nt][e] = dpt[nt][e] = 0.f;
#pragma unroll
            for (int kc = 0; kc < KC; kc++) {
                typename E::frag a;
                E::prep(a, kf[kc]);
#pragma unroll
                for (int nt = 0; nt < NQ / 2; nt++) mma_tile<E>(st[nt], a, Qs, PW, (qh * NQ / 2 + nt) * 8 + gq, kc * 8, tq);
                E::prep(a, vf[kc]);
#pragma unroll
                for (int nt = 0; nt < NQ / 2; nt++) mma_tile<E>(dpt[nt], a, dOs, PW, (qh * NQ / 2 + nt) * 8 + gq, kc * 8, tq);
            }
#pragma unroll
            for (int nt = 0; nt < NQ / 2; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int kr = r0 + (e >> 1) * 8, ql = (qh * NQ / 2 + nt) * 8 + 2 * tq + (e & 1);
                    const int kj = k0 + kr, qm = q0 + ql;
                    const float l2 = lse2[ql];
                    const bool ok = kj < dm.S && qm < dm.L && l2 != -INFINITY && !(dm.causal && kj > qm + off);
                    const float p = ok ? exp2f(st[nt][e] * sl2 - l2) : 0.f;
                    const float ds = p * (dpt[nt][e] - Ds[ql]);
                    st[nt][e] = p;
                    dpt[nt][e] = ds;
                    E::put(dSs, PT, ql, kr, ds);
                }
#pragma unroll
            for (int qc = 0; qc < QC / 2; qc++) {
                typename E::frag pa, sa;
                E::c_to_a(pa, &st[EPW * qc]);
                E::c_to_a(sa, &dpt[EPW * qc]);
                const int w0 = (qh * QC / 2 + qc) * 8;
#pragma unroll
                for (int nd = 0; nd < ND; nd++) {
                    mma_tile<E>(dva[nd], pa, dOt, PT, nd * 8 + gq, w0, tq);
                    mma_tile<E>(dka[nd], sa, Qt, PT, nd * 8 + gq, w0, tq);
                }
            }
        }
        if (!dqp) continue;
        __syncthreads();   /* every warp's dS is in shared memory */
        /* this key tile's share of dQ for queries warp*16 + (gq, gq + 8): dS [16 x 64 keys] K */
        float dqa[ND][4];
#pragma unroll
        for (int nd = 0; nd < ND; nd++) dqa[nd][0] = dqa[nd][1] = dqa[nd][2] = dqa[nd][3] = 0.f;
#pragma unroll
        for (int kc = 0; kc < QC; kc++) {
            uint32_t w[4];
            frag_a(w, dSs, PT, r0, kc * 8, tq);
            typename E::frag a;
            E::prep(a, w);
#pragma unroll
            for (int nd = 0; nd < ND; nd++) mma_tile<E>(dqa[nd], a, Kt, PT, nd * 8 + gq, kc * 8, tq);
        }
        const float one[2] = {1.f, 1.f};
        store_c<ND>(dqp + (((int64_t)lbh * ntiles + tile) * dm.L + q0) * dm.D, dm.D, 1, dqa, r0, dm.L - q0, dm.D, one, tq);
    }
    const float scale[2] = {(float)dm.scale, (float)dm.scale}, one[2] = {1.f, 1.f};
    if (dk.p) store_c<ND>(dk.at(b, h) + (int64_t)k0 * dk.sl, dk.sl, dk.sd, dka, r0, dm.S - k0, dm.D, scale, tq);
    if (dv.p) store_c<ND>(dv.at(b, h) + (int64_t)k0 * dv.sl, dv.sl, dv.sd, dva, r0, dm.S - k0, dm.Dv, one, tq);
}

/* ---------------------------------------------------------------- backward: D = rowsum(dO * O) */

template <typename T>
__global__ void attn_bwd_pre_kernel(T *__restrict__ Dv_out, opnd<const T> dout, opnd<const T> out, dims dm)
{
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= (int64_t)dm.B * dm.H * dm.L) return;
    const int i = (int)(row % dm.L), bh = (int)(row / dm.L), b = bh / dm.H, h = bh % dm.H;
    const T *g = dout.at(b, h) + (int64_t)i * dout.sl, *o = out.at(b, h) + (int64_t)i * out.sl;
    T acc = 0;
    for (int d = lane; d < dm.Dv; d += 32) acc += g[(int64_t)d * dout.sd] * o[(int64_t)d * out.sd];
#pragma unroll
    for (int s = 16; s > 0; s >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, s);
    if (lane == 0) Dv_out[row] = acc;
}

/* ---------------------------------------------------------------- f32 backward: dK, dV */

/* FQ (fused dQ): the block also forms this key tile's share of dQ, dQ_part = dS K for every query
 * tile it visits, and writes it unscaled to dqp[(bh - bh0) * ntiles + tile][L][D]; the reduce
 * kernel below sums the shares in tile order. That replaces the dQ kernel's second recomputation
 * of S and dP (5 instead of 7 tile products) at the price of the partials' memory traffic. */
template <int DP, bool FQ>
__global__ void __launch_bounds__(kThreads)
attn_bwd_dkdv_kernel(opnd<float> dk, opnd<float> dv, opnd<const float> q, opnd<const float> k, opnd<const float> v,
                     opnd<const float> dout, const float *__restrict__ lse, int64_t lsb, int64_t lsh, int64_t lsl,
                     const float *__restrict__ Dvec, dims dm, float *__restrict__ dqp)
{
    using C = cfg<DP>;
    constexpr int BN = C::BN, BMK = C::BMK, LD = C::LD, PTLD = C::PTLD, TX = C::TXK, PLD = C::PLD, RQ = C::RQ;
    constexpr int CQ = BMK / TX, CA = DP / TX, CO = DP / 16;
    DYN_SMEM(float4, smem4);
    float *Ks = reinterpret_cast<float *>(smem4), *Vs = Ks + BN * LD, *Qs = Vs + BN * LD, *dOs = Qs + BMK * LD;
    float *Pts = dOs + BMK * LD, *dSts = Pts + BN * PTLD, *lse2 = dSts + BN * PTLD, *Ds = lse2 + BMK;
    float *dSq = Ds + BMK;   /* FQ only: [BMK][PLD] */

    const int ntiles = (dm.S + BN - 1) / BN;
    const int tile = (int)(blockIdx.x % ntiles);
    const int lbh = (int)(blockIdx.x / ntiles), bh = dm.bh0 + lbh, b = bh / dm.H, h = bh % dm.H;
    const int k0 = tile * BN, tx = threadIdx.x % TX, ty = threadIdx.x / TX;
    const int off = dm.S - dm.L;
    const float sl2 = (float)dm.scale * kLog2e;

    load_tile<BN, DP, LD>(Ks, k.at(b, h) + (int64_t)k0 * k.sl, k.sl, k.sd, dm.S - k0, dm.D, 1.f);
    load_tile<BN, DP, LD>(Vs, v.at(b, h) + (int64_t)k0 * v.sl, v.sl, v.sd, dm.S - k0, dm.Dv, 1.f);

    float ak[4][CA], av[4][CA];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < CA; j++) ak[i][j] = av[i][j] = 0.f;

    int m_begin = dm.causal ? max(0, k0 - off) : 0;
    m_begin = m_begin / BMK * BMK;
    const float *qb = q.at(b, h), *gb = dout.at(b, h);
    const float *lb = lse + b * lsb + h * lsh, *db = Dvec + (int64_t)bh * dm.L;
    for (int q0 = m_begin; q0 < dm.L; q0 += BMK) {
        __syncthreads();
        load_tile<BMK, DP, LD>(Qs, qb + (int64_t)q0 * q.sl, q.sl, q.sd, dm.L - q0, dm.D, 1.f);
        load_tile<BMK, DP, LD>(dOs, gb + (int64_t)q0 * dout.sl, dout.sl, dout.sd, dm.L - q0, dm.Dv, 1.f);
        for (int r = threadIdx.x; r < BMK; r += kThreads) {
            const bool in = q0 + r < dm.L;
            lse2[r] = in ? lb[(int64_t)(q0 + r) * lsl] * kLog2e : -INFINITY;
            Ds[r] = in ? db[q0 + r] : 0.f;
        }
        __syncthreads();
        float st[4][CQ], dpt[4][CQ];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < CQ; j++) st[i][j] = dpt[i][j] = 0.f;
        mm_nt<4, CQ, DP, LD, LD, TX>(st, Ks + ty * 4 * LD, Qs + tx * LD);
        mm_nt<4, CQ, DP, LD, LD, TX>(dpt, Vs + ty * 4 * LD, dOs + tx * LD);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int kn = k0 + ty * 4 + i;
#pragma unroll
            for (int j = 0; j < CQ; j++) {
                const int mc = tx + TX * j, qm = q0 + mc;
                const float l2 = lse2[mc];
                const bool ok = kn < dm.S && qm < dm.L && l2 != -INFINITY && !(dm.causal && kn > qm + off);
                const float p = ok ? exp2f(st[i][j] * sl2 - l2) : 0.f;
                const float ds = p * (dpt[i][j] - Ds[mc]);
                Pts[(ty * 4 + i) * PTLD + mc] = p;
                dSts[(ty * 4 + i) * PTLD + mc] = ds;
                if (FQ) dSq[mc * PLD + ty * 4 + i] = ds;
            }
        }
        __syncthreads();
        mm_nn<4, CA, BMK, PTLD, LD, TX>(av, Pts + ty * 4 * PTLD, dOs + tx);
        mm_nn<4, CA, BMK, PTLD, LD, TX>(ak, dSts + ty * 4 * PTLD, Qs + tx);
        if (FQ) {
            /* rows tq*RQ.. of dQ_part [BMK][DP]: columns tc + 16 j */
            const int tc = threadIdx.x % 16, tq = threadIdx.x / 16;
            float aq[RQ][CO];
#pragma unroll
            for (int i = 0; i < RQ; i++)
#pragma unroll
                for (int j = 0; j < CO; j++) aq[i][j] = 0.f;
            mm_nn<RQ, CO, BN, PLD, LD, 16>(aq, dSq + tq * RQ * PLD, Ks + tc);
            float *pb = dqp + ((int64_t)lbh * ntiles + tile) * dm.L * dm.D;
#pragma unroll
            for (int i = 0; i < RQ; i++) {
                const int qm = q0 + tq * RQ + i;
                if (qm >= dm.L) continue;
#pragma unroll
                for (int j = 0; j < CO; j++) {
                    const int d = tc + 16 * j;
                    if (d < dm.D) pb[(int64_t)qm * dm.D + d] = aq[i][j];
                }
            }
        }
    }
    float *dkb = dk.p ? dk.at(b, h) : nullptr, *dvb = dv.p ? dv.at(b, h) : nullptr;
    const float scale = (float)dm.scale;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int kn = k0 + ty * 4 + i;
        if (kn >= dm.S) continue;
#pragma unroll
        for (int j = 0; j < CA; j++) {
            const int d = tx + TX * j;
            if (dkb && d < dm.D) dkb[(int64_t)kn * dk.sl + (int64_t)d * dk.sd] = ak[i][j] * scale;
            if (dvb && d < dm.Dv) dvb[(int64_t)kn * dv.sl + (int64_t)d * dv.sd] = av[i][j];
        }
    }
}

/* dq[bh0 + lbh, m, d] = scale * sum over key tiles t (in order) of dqp[lbh][t][m][d], for the
 * `heads` heads of one fused launch. Under a causal mask key tile t skipped the query tiles
 * before its first visible one (their partials were never written): the sum stops there. */
__global__ void attn_bwd_dq_reduce_kernel(opnd<float> dq, const float *__restrict__ dqp, int heads, int ntiles, int BN,
                                          int BMK, dims dm)
{
    const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (int64_t)heads * dm.L * dm.D) return;
    const int d = (int)(e % dm.D), m = (int)(e / dm.D % dm.L), lbh = (int)(e / ((int64_t)dm.D * dm.L));
    const int bh = dm.bh0 + lbh, b = bh / dm.H, h = bh % dm.H;
    const int qt = m / BMK * BMK, off = dm.S - dm.L;
    const float *p = dqp + (int64_t)lbh * ntiles * dm.L * dm.D + (int64_t)m * dm.D + d;
    float acc = 0.f;
    for (int t = 0; t < ntiles; t++) {
        if (dm.causal && max(0, t * BN - off) / BMK * BMK > qt) break;   /* this tile's m_begin */
        acc += p[(int64_t)t * dm.L * dm.D];
    }
    dq.at(b, h)[(int64_t)m * dq.sl + (int64_t)d * dq.sd] = acc * (float)dm.scale;
}

/* ---------------------------------------------------------------- f32 backward: dQ */

template <int DP>
__global__ void __launch_bounds__(kThreads)
attn_bwd_dq_kernel(opnd<float> dq, opnd<const float> q, opnd<const float> k, opnd<const float> v, opnd<const float> dout,
                   const float *__restrict__ lse, int64_t lsb, int64_t lsh, int64_t lsl, const float *__restrict__ Dvec,
                   dims dm)
{
    using C = cfg<DP>;
    constexpr int BM = C::BM, BN = C::BN, LD = C::LD, PLD = C::PLD, CS = BN / 16, CO = DP / 16;
    DYN_SMEM(float4, smem4);
    float *Qs = reinterpret_cast<float *>(smem4), *dOs = Qs + BM * LD, *Ks = dOs + BM * LD, *Vs = Ks + BN * LD;
    float *dSs = Vs + BN * LD, *lse2 = dSs + BM * PLD, *Ds = lse2 + BM;

    const int ntiles = (dm.L + BM - 1) / BM;
    const int tile = ntiles - 1 - (int)(blockIdx.x % ntiles);
    const int bh = (int)(blockIdx.x / ntiles), b = bh / dm.H, h = bh % dm.H;
    const int q0 = tile * BM, tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int off = dm.S - dm.L;
    const float sl2 = (float)dm.scale * kLog2e;

    load_tile<BM, DP, LD>(Qs, q.at(b, h) + (int64_t)q0 * q.sl, q.sl, q.sd, dm.L - q0, dm.D, 1.f);
    load_tile<BM, DP, LD>(dOs, dout.at(b, h) + (int64_t)q0 * dout.sl, dout.sl, dout.sd, dm.L - q0, dm.Dv, 1.f);
    {
        const float *lb = lse + b * lsb + h * lsh, *db = Dvec + (int64_t)bh * dm.L;
        for (int r = threadIdx.x; r < BM; r += kThreads) {
            const bool in = q0 + r < dm.L;
            lse2[r] = in ? lb[(int64_t)(q0 + r) * lsl] * kLog2e : -INFINITY;
            Ds[r] = in ? db[q0 + r] : 0.f;
        }
    }
    float a[4][CO];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < CO; j++) a[i][j] = 0.f;
    const int n_end = dm.causal ? min(dm.S, q0 + BM + off) : dm.S;
    const float *kb = k.at(b, h), *vb = v.at(b, h);
    for (int k0 = 0; k0 < n_end; k0 += BN) {
        __syncthreads();
        load_tile<BN, DP, LD>(Ks, kb + (int64_t)k0 * k.sl, k.sl, k.sd, dm.S - k0, dm.D, 1.f);
        load_tile<BN, DP, LD>(Vs, vb + (int64_t)k0 * v.sl, v.sl, v.sd, dm.S - k0, dm.Dv, 1.f);
        __syncthreads();
        float s[4][CS], dp[4][CS];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < CS; j++) s[i][j] = dp[i][j] = 0.f;
        mm_nt<4, CS, DP, LD, LD, 16>(s, Qs + ty * 4 * LD, Ks + tx * LD);
        mm_nt<4, CS, DP, LD, LD, 16>(dp, dOs + ty * 4 * LD, Vs + tx * LD);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = ty * 4 + i, qm = q0 + r;
            const float l2 = lse2[r], dd = Ds[r];
#pragma unroll
            for (int j = 0; j < CS; j++) {
                const int kn = k0 + tx + 16 * j;
                const bool ok = kn < dm.S && qm < dm.L && l2 != -INFINITY && !(dm.causal && kn > qm + off);
                const float p = ok ? exp2f(s[i][j] * sl2 - l2) : 0.f;
                dSs[r * PLD + tx + 16 * j] = p * (dp[i][j] - dd);
            }
        }
        __syncthreads();
        mm_nn<4, CO, BN, PLD, LD, 16>(a, dSs + ty * 4 * PLD, Ks + tx);
    }
    float *qo = dq.at(b, h);
    const float scale = (float)dm.scale;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int qm = q0 + ty * 4 + i;
        if (qm >= dm.L) continue;
#pragma unroll
        for (int j = 0; j < CO; j++) {
            const int d = tx + 16 * j;
            if (d < dm.D) qo[(int64_t)qm * dq.sl + (int64_t)d * dq.sd] = a[i][j] * scale;
        }
    }
}

/* ---------------------------------------------------------------- simple kernels (f64 up to D = 256) */

/* a thread per query row; online softmax with the output row as accumulator */
template <typename T>
__global__ void attn_fwd_simple_kernel(opnd<T> out, T *__restrict__ lse, int64_t lsb, int64_t lsh, int64_t lsl,
                                       opnd<const T> q, opnd<const T> k, opnd<const T> v, dims dm)
{
    const int64_t row = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= (int64_t)dm.B * dm.H * dm.L) return;
    const int i = (int)(row % dm.L), bh = (int)(row / dm.L), b = bh / dm.H, h = bh % dm.H;
    const T *qr = q.at(b, h) + (int64_t)i * q.sl, *kb = k.at(b, h), *vb = v.at(b, h);
    T *o = out.at(b, h) + (int64_t)i * out.sl;
    const T scale = (T)dm.scale;
    for (int d = 0; d < dm.Dv; d++) o[(int64_t)d * out.sd] = 0;
    T m = -INFINITY, l = 0;
    const int jend = dm.causal ? min(dm.S, i + dm.S - dm.L + 1) : dm.S;
    for (int j = 0; j < jend; j++) {
        const T *kr = kb + (int64_t)j * k.sl, *vr = vb + (int64_t)j * v.sl;
        T s = 0;
        for (int d = 0; d < dm.D; d++) s += qr[(int64_t)d * q.sd] * kr[(int64_t)d * k.sd];
        s *= scale;
        if (s > m) {
            const T c = exp(m - s);
            l *= c;
            for (int d = 0; d < dm.Dv; d++) o[(int64_t)d * out.sd] *= c;
            m = s;
        }
        const T p = exp(s - m);
        l += p;
        for (int d = 0; d < dm.Dv; d++) o[(int64_t)d * out.sd] += p * vr[(int64_t)d * v.sd];
    }
    const T inv = l > 0 ? T(1) / l : T(0);
    for (int d = 0; d < dm.Dv; d++) o[(int64_t)d * out.sd] *= inv;
    lse[b * lsb + h * lsh + (int64_t)i * lsl] = l > 0 ? m + log(l) : (T)-INFINITY;
}

template <typename T>
__global__ void attn_bwd_dq_simple_kernel(opnd<T> dq, opnd<const T> q, opnd<const T> k, opnd<const T> v,
                                          opnd<const T> dout, const T *__restrict__ lse, int64_t lsb, int64_t lsh,
                                          int64_t lsl, const T *__restrict__ Dvec, dims dm)
{
    const int64_t row = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= (int64_t)dm.B * dm.H * dm.L) return;
    const int i = (int)(row % dm.L), bh = (int)(row / dm.L), b = bh / dm.H, h = bh % dm.H;
    const T *qr = q.at(b, h) + (int64_t)i * q.sl, *gr = dout.at(b, h) + (int64_t)i * dout.sl;
    const T *kb = k.at(b, h), *vb = v.at(b, h);
    T *o = dq.at(b, h) + (int64_t)i * dq.sl;
    const T scale = (T)dm.scale, ls = lse[b * lsb + h * lsh + (int64_t)i * lsl], Di = Dvec[row];
    for (int d = 0; d < dm.D; d++) o[(int64_t)d * dq.sd] = 0;
    if (ls == (T)-INFINITY) return;
    const int jend = dm.causal ? min(dm.S, i + dm.S - dm.L + 1) : dm.S;
    for (int j = 0; j < jend; j++) {
        const T *kr = kb + (int64_t)j * k.sl, *vr = vb + (int64_t)j * v.sl;
        T s = 0, dp = 0;
        for (int d = 0; d < dm.D; d++) s += qr[(int64_t)d * q.sd] * kr[(int64_t)d * k.sd];
        for (int d = 0; d < dm.Dv; d++) dp += gr[(int64_t)d * dout.sd] * vr[(int64_t)d * v.sd];
        const T p = exp(s * scale - ls), ds = p * (dp - Di) * scale;
        for (int d = 0; d < dm.D; d++) o[(int64_t)d * dq.sd] += ds * kr[(int64_t)d * k.sd];
    }
}

template <typename T>
__global__ void attn_bwd_dkdv_simple_kernel(opnd<T> dk, opnd<T> dv, opnd<const T> q, opnd<const T> k, opnd<const T> v,
                                            opnd<const T> dout, const T *__restrict__ lse, int64_t lsb, int64_t lsh,
                                            int64_t lsl, const T *__restrict__ Dvec, dims dm)
{
    const int64_t row = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= (int64_t)dm.B * dm.H * dm.S) return;
    const int j = (int)(row % dm.S), bh = (int)(row / dm.S), b = bh / dm.H, h = bh % dm.H;
    const T *kr = k.at(b, h) + (int64_t)j * k.sl, *vr = v.at(b, h) + (int64_t)j * v.sl;
    const T *qb = q.at(b, h), *gb = dout.at(b, h);
    T *ok = dk.p ? dk.at(b, h) + (int64_t)j * dk.sl : nullptr, *ov = dv.p ? dv.at(b, h) + (int64_t)j * dv.sl : nullptr;
    const T scale = (T)dm.scale;
    if (ok)
        for (int d = 0; d < dm.D; d++) ok[(int64_t)d * dk.sd] = 0;
    if (ov)
        for (int d = 0; d < dm.Dv; d++) ov[(int64_t)d * dv.sd] = 0;
    const int ibegin = dm.causal ? max(0, j - (dm.S - dm.L)) : 0;
    for (int i = ibegin; i < dm.L; i++) {
        const T ls = lse[b * lsb + h * lsh + (int64_t)i * lsl];
        if (ls == (T)-INFINITY) continue;
        const T *qr = qb + (int64_t)i * q.sl, *gr = gb + (int64_t)i * dout.sl;
        T s = 0, dp = 0;
        for (int d = 0; d < dm.D; d++) s += qr[(int64_t)d * q.sd] * kr[(int64_t)d * k.sd];
        for (int d = 0; d < dm.Dv; d++) dp += gr[(int64_t)d * dout.sd] * vr[(int64_t)d * v.sd];
        const T p = exp(s * scale - ls), ds = p * (dp - Dvec[(int64_t)bh * dm.L + i]) * scale;
        if (ov)
            for (int d = 0; d < dm.Dv; d++) ov[(int64_t)d * dv.sd] += p * gr[(int64_t)d * dout.sd];
        if (ok)
            for (int d = 0; d < dm.D; d++) ok[(int64_t)d * dk.sd] += ds * qr[(int64_t)d * q.sd];
    }
}

/* ---------------------------------------------------------------- wide heads (D > 256): GEMMs */

/* Head dims over 256 (the VAE's one 512-wide head at 64x64 latents: L = S = 4096) do not fit the
 * tiled kernels' registers and shared memory. They run as GEMMs over blocks of queries, with
 * the scores of one block against all keys in a workspace ([heads][nr][S], never the whole
 * L x S when it exceeds the workspace bound) and row kernels between the GEMMs:
 *  - forward, per block: S = Q K^T (GEMM); softmax rows in place, with lse; O = P V (GEMM);
 *  - backward, per block: S = Q K^T and dP = dO V^T (GEMMs); P = exp(scale S - lse) and
 *    scale dS = scale P (dP - D) in place (one elementwise kernel); dQ = (scale dS) K,
 *    dK += (scale dS)^T Q and dV += P^T dO (GEMMs, the first block with beta 0).
 * The GEMMs are column-major (cuBLAS's convention, cuda_gemm in cuda.h); `gemm` is cuda_gemm on
 * the GPU and a plain loop in tests/test_attention_emu.cpp. Every operand needs unit stride
 * along its last dim (the caller copies the others). */

/* block max / sum over kThreads threads; every thread gets the result. red: [kThreads / 32] */
template <typename T, bool MAX> __device__ __forceinline__ T wide_block_reduce(T v, T *red)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const T u = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? (u > v ? u : v) : v + u;
    }
    __syncthreads();   /* red's previous use is over */
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    v = red[0];
#pragma unroll
    for (int i = 1; i < kThreads / 32; i++) v = MAX ? (red[i] > v ? red[i] : v) : v + red[i];
    return v;
}

/* one block per score row r of s [nr rows per head]: query q0 + r % nr of head r / nr; the row
 * becomes softmax(scale * s) over the visible keys (0 elsewhere) and lse[head, query] its
 * log-sum-exp (-inf, and a zero row, when no key is visible) */
template <typename T>
__global__ void __launch_bounds__(kThreads)
attn_wide_softmax_kernel(T *__restrict__ s, T *__restrict__ lse, int64_t lsh, int64_t lsl, int nr, int q0, dims dm)
{
    __shared__ T red[kThreads / 32];
    const int r = (int)blockIdx.x, h = r / nr, qi = q0 + r % nr;
    T *row = s + (int64_t)r * dm.S;
    const int jend = dm.causal ? min(dm.S, max(0, qi + dm.S - dm.L + 1)) : dm.S;   /* keys j < jend are visible */
    const T scale = (T)dm.scale;
    T m = -INFINITY;
    for (int j = threadIdx.x; j < jend; j += kThreads) m = row[j] * scale > m ? row[j] * scale : m;
    m = wide_block_reduce<T, true>(m, red);
    T sum = 0;
    for (int j = threadIdx.x; j < dm.S; j += kThreads) {
        const T e = j < jend ? exp(row[j] * scale - m) : T(0);
        row[j] = e;
        sum += e;
    }
    sum = wide_block_reduce<T, false>(sum, red);
    const T inv = sum > 0 ? T(1) / sum : T(0);
    for (int j = threadIdx.x; j < jend; j += kThreads) row[j] *= inv;
    if (threadIdx.x == 0) lse[h * lsh + (int64_t)qi * lsl] = sum > 0 ? m + log(sum) : (T)-INFINITY;
}

/* element e of the [heads][nr][S] block: s (scores) -> P, dp -> scale * P * (dP - D) */
template <typename T>
__global__ void attn_wide_ds_kernel(T *__restrict__ s, T *__restrict__ dp, const T *__restrict__ lse, int64_t lsh,
                                    int64_t lsl, const T *__restrict__ Dh, int nr, int q0, int64_t n, dims dm)
{
    const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    const int j = (int)(e % dm.S), r = (int)(e / dm.S), h = r / nr, qi = q0 + r % nr;
    const T l = lse[h * lsh + (int64_t)qi * lsl];
    const bool ok = l != (T)-INFINITY && !(dm.causal && j > qi + dm.S - dm.L);
    const T p = ok ? exp(s[e] * (T)dm.scale - l) : T(0);
    s[e] = p;
    dp[e] = p * (dp[e] - Dh[(int64_t)h * dm.L + qi]) * (T)dm.scale;
}

/* query rows per block: the workspace (`ws_elems` elements; the backward needs two blocks) holds
 * heads * nr * S scores */
inline int wide_rows(const dims &dm, int64_t ws_elems, int nbuf)
{
    const int64_t per_row = (int64_t)dm.H * dm.S * nbuf;
    int64_t nr = per_row > 0 ? ws_elems / per_row : dm.L;
    return (int)(nr < 1 ? 1 : nr > dm.L ? dm.L : nr);
}

/* gemm(trans_a, trans_b, m, n, k, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, count) as cuda_gemm
 * (alpha 1); softmax(s, lse_b, nr, q0) and ds(s, dp, lse_b, D_b, nr, q0) launch the row kernels
 * over one batch index's heads. Return the first non-zero status. */
template <typename T, class Gemm, class Softmax>
int attn_wide_forward(opnd<T> out, T *lse, int64_t lsb, opnd<const T> q, opnd<const T> k, opnd<const T> v, const dims &dm,
                      T *ws, int64_t ws_elems, Gemm gemm, Softmax softmax)
{
    const int nr_max = wide_rows(dm, ws_elems, 1);
    for (int b = 0; b < dm.B; b++)
        for (int q0 = 0; q0 < dm.L; q0 += nr_max) {
            const int nr = min(nr_max, dm.L - q0);
            const int64_t sS = (int64_t)nr * dm.S;
            const T *qb = q.at(b, 0) + (int64_t)q0 * q.sl;
            int e;
            /* S^T [S x nr] = K [S x D] Q_blk^T: K is column-major D x S (ld sl), Q_blk D x nr */
            if ((e = gemm(true, false, dm.S, nr, dm.D, k.at(b, 0), k.sl, k.sh, qb, q.sl, q.sh, T(0), ws, dm.S, sS, dm.H)))
                return e;
            if ((e = softmax(ws, lse + b * lsb, nr, q0))) return e;
            /* O_blk^T [Dv x nr] = V^T [Dv x S] P^T [S x nr] */
            if ((e = gemm(false, false, dm.Dv, nr, dm.S, v.at(b, 0), v.sl, v.sh, ws, dm.S, sS, T(0),
                          out.at(b, 0) + (int64_t)q0 * out.sl, out.sl, out.sh, dm.H)))
                return e;
        }
    return 0;
}

template <typename T, class Gemm, class Ds>
int attn_wide_backward(opnd<T> dq, opnd<T> dk, opnd<T> dv, opnd<const T> q, opnd<const T> k, opnd<const T> v,
                       opnd<const T> dout, const T *lse, int64_t lsb, const T *Dvec, const dims &dm, T *ws,
                       int64_t ws_elems, Gemm gemm, Ds ds)
{
    const int nr_max = wide_rows(dm, ws_elems, 2);
    for (int b = 0; b < dm.B; b++)
        for (int q0 = 0; q0 < dm.L; q0 += nr_max) {
            const int nr = min(nr_max, dm.L - q0);
            const int64_t sS = (int64_t)nr * dm.S;
            T *sb = ws, *pb = ws + sS * dm.H;
            const T *qb = q.at(b, 0) + (int64_t)q0 * q.sl, *gb = dout.at(b, 0) + (int64_t)q0 * dout.sl;
            const T beta = q0 ? T(1) : T(0);
            int e;
            if ((e = gemm(true, false, dm.S, nr, dm.D, k.at(b, 0), k.sl, k.sh, qb, q.sl, q.sh, T(0), sb, dm.S, sS, dm.H)))
                return e;
            /* dP^T [S x nr] = V [S x Dv] dO_blk^T */
            if ((e = gemm(true, false, dm.S, nr, dm.Dv, v.at(b, 0), v.sl, v.sh, gb, dout.sl, dout.sh, T(0), pb, dm.S, sS,
                          dm.H)))
                return e;
            if ((e = ds(sb, pb, lse + b * lsb, Dvec + (int64_t)b * dm.H * dm.L, nr, q0))) return e;
            /* dQ_blk^T [D x nr] = K^T [D x S] (scale dS)^T [S x nr] */
            if (dq.p && (e = gemm(false, false, dm.D, nr, dm.S, k.at(b, 0), k.sl, k.sh, pb, dm.S, sS, T(0),
                                  dq.at(b, 0) + (int64_t)q0 * dq.sl, dq.sl, dq.sh, dm.H)))
                return e;
            /* dK^T [D x S] (+)= Q_blk^T [D x nr] (scale dS) [nr x S] */
            if (dk.p && (e = gemm(false, true, dm.D, dm.S, nr, qb, q.sl, q.sh, pb, dm.S, sS, beta, dk.at(b, 0), dk.sl,
                                  dk.sh, dm.H)))
                return e;
            /* dV^T [Dv x S] (+)= dO_blk^T [Dv x nr] P [nr x S] */
            if (dv.p && (e = gemm(false, true, dm.Dv, dm.S, nr, gb, dout.sl, dout.sh, sb, dm.S, sS, beta, dv.at(b, 0),
                                  dv.sl, dv.sh, dm.H)))
                return e;
        }
    return 0;
}

#endif
