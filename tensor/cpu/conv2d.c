/* conv2d.c — 2-D convolution (stride, asymmetric padding, dilation, groups), forward and
 * backward, as OpenBLAS GEMMs.
 *
 * Per image n and group g, with K = C/g*KH*KW rows and P = OH*OW output positions:
 *   forward         out[O/g, P]  = W[O/g, K] @ col[K, P] (+ bias)
 *   backward input  dcol[K, P]   = W^T @ dy[O/g, P], then col2im adds dcol into dx
 *   backward weight dW[O/g, K]  += dy[O/g, P] @ col^T, over images in order
 * col (im2col) is never built for a whole image: P is cut into tiles of about TILE_COLS
 * positions and the channels of a tile into chunks whose im2col fits WS_BYTES, so the
 * workspace is WS_BYTES per thread whatever the input size. A 1x1, stride-1, unpadded conv
 * reads x itself as col (no copy at all). 3x3 stride-1 convs with enough channels take a
 * Winograd F(2x2,3x3) path for all three instead (2.25x fewer flops, section below), with
 * a workspace of WINO_WS_BYTES per thread. GEMMs with few input channels (K <= 80, as SD's
 * conv_in) or few columns (images of few pixels, Winograd's small tile blocks) skip BLAS for a
 * register-blocked AVX-512 kernel (section "register-blocked kernel").
 *
 * Parallelism: work is cut into independent items (tiles of the output, channel chunks of
 * dx or dW, ...), one single-threaded GEMM at a time per thread. On this OpenBLAS (OpenMP
 * build) a GEMM inside our parallel region runs on one thread, and several single-threaded
 * GEMMs beat one BLAS-threaded GEMM on tiles this size by far (2x measured on 2 cores).
 * Items write disjoint outputs, each accumulated in a fixed order, and how the work is cut
 * depends only on the shapes, never on the thread count: results are bit-identical for
 * any number of threads. */
#include "tensor/cpu/cpu.h"

#include <cblas.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <immintrin.h>
#endif

#define WS_BYTES (1 << 20)   /* im2col workspace per thread: about an L2 */
#define TILE_COLS 256        /* output positions per tile: enough for an efficient GEMM */
#define PAR_ITEMS 8          /* aim for at least this many independent items (up to 8 threads) */
#define PAR_MIN_MACS (8 * (int64_t)CPU_PAR_MIN)   /* smaller convs run on one thread */
#define PARTIAL_BYTES (8 << 20)   /* partial dW sums of the position-split backward weight */

struct geom {
    int64_t N, C, H, W, O, OH, OW, KH, KW;
    int64_t G, Cg, Og, KK, K, P;   /* groups, channels and outputs per group, KH*KW, Cg*KK, OH*OW */
    int64_t sh, sw, pt, pl, dh, dw;
    int64_t tile, ntiles;          /* positions per tile, tiles per image */
    bool direct;                   /* 1x1, stride 1, no padding: col is x itself */
    bool f32;
    size_t esz;
};

static inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* element offset -> address */
static inline void *at(const struct tensor *t, int64_t off)
{
    return (char *)t->storage->data + (size_t)(t->offset + off) * dtype_size(t->dtype);
}

/* Can t be read as a BLAS matrix whose rows run along dim d and whose columns are dims
 * (d, ndim) flattened (e.g. w [O,C/g,KH,KW] as [O, K], or one image of dy as [O, P])?
 * Needs the trailing dims row-major contiguous (size-1 dims ignored) and rows that do not
 * overlap (an expanded dim has stride 0). Sets the leading dimension. */
static bool as_matrix(const struct tensor *t, int d, int64_t *ld)
{
    int64_t run = 1;
    for (int i = t->ndim - 1; i > d; i--) {
        if (t->shape[i] != 1 && t->stride[i] != run) return false;
        run *= t->shape[i];
    }
    if (t->shape[d] != 1 && t->stride[d] < run) return false;
    *ld = t->shape[d] == 1 ? max64(run, 1) : t->stride[d];
    return true;
}

/* t itself if it reads as a matrix (see as_matrix), else a contiguous copy in *tmp (the
 * caller frees it); NULL on allocation failure */
static const struct tensor *matrix_or_copy(const struct tensor *t, int d, int64_t *ld, struct tensor **tmp)
{
    *tmp = NULL;
    if (as_matrix(t, d, ld)) return t;
    *tmp = tensor_keep(tensor_clone(t));
    if (*tmp) as_matrix(*tmp, d, ld);
    return *tmp;
}

/* an output that does not read as a matrix is computed into a contiguous temporary */
static struct tensor *matrix_or_temp(struct tensor *t, int d, int64_t *ld, struct tensor **tmp)
{
    *tmp = NULL;
    if (as_matrix(t, d, ld)) return t;
    *tmp = tensor_keep(tensor_empty_like(t));
    if (*tmp) as_matrix(*tmp, d, ld);
    return *tmp;
}

/* cut the P positions into equal tiles of about `cols` (no small remainder) */
static void plan_tiles(struct geom *g, int64_t cols)
{
    g->ntiles = ceil_div(g->P, max64(1, cols));
    g->tile = ceil_div(g->P, g->ntiles);
}

static enum status geom_init(struct geom *g, const struct tensor *x, const struct tensor *w,
                             const struct conv2d_params *p, const char *op)
{
    enum status s;
    if ((s = cpu_need_float(x, op))) return s;
    if (x->dtype != w->dtype) return tensor_fail(STATUS_DTYPE, "%s: dtype mismatch (%s, %s)", op,
                                                 dtype_name(x->dtype), dtype_name(w->dtype));
    if (x->ndim != 4 || w->ndim != 4 || p->groups < 1 || p->stride_h < 1 || p->stride_w < 1 || p->dil_h < 1 ||
        p->dil_w < 1 || p->pad_top < 0 || p->pad_bottom < 0 || p->pad_left < 0 || p->pad_right < 0)
        return tensor_fail(STATUS_SHAPE, "%s: needs x [N,C,H,W], w [O,C/g,KH,KW] and valid params", op);
    *g = (struct geom){
        .N = x->shape[0], .C = x->shape[1], .H = x->shape[2], .W = x->shape[3],
        .O = w->shape[0], .KH = w->shape[2], .KW = w->shape[3], .G = p->groups,
        .sh = p->stride_h, .sw = p->stride_w, .pt = p->pad_top, .pl = p->pad_left, .dh = p->dil_h, .dw = p->dil_w,
        .f32 = x->dtype == DTYPE_F32, .esz = dtype_size(x->dtype),
    };
    g->OH = (g->H + p->pad_top + p->pad_bottom - g->dh * (g->KH - 1) - 1) / g->sh + 1;
    g->OW = (g->W + p->pad_left + p->pad_right - g->dw * (g->KW - 1) - 1) / g->sw + 1;
    g->Cg = w->shape[1];
    g->Og = g->O / g->G;
    g->KK = g->KH * g->KW;
    g->K = g->Cg * g->KK;
    g->P = g->OH * g->OW;
    if (g->C != g->Cg * g->G || g->O % g->G || g->KH < 1 || g->KW < 1 || g->OH < 1 || g->OW < 1)
        return tensor_fail(STATUS_SHAPE, "%s: x [%lld,%lld,%lld,%lld] and w [%lld,%lld,%lld,%lld] with groups=%d "
                           "do not fit", op, (long long)g->N, (long long)g->C, (long long)g->H, (long long)g->W,
                           (long long)g->O, (long long)g->Cg, (long long)g->KH, (long long)g->KW, p->groups);
    g->direct = g->KK == 1 && g->sh == 1 && g->sw == 1 && g->pt == 0 && g->pl == 0 && p->pad_bottom == 0 &&
                p->pad_right == 0;
    plan_tiles(g, TILE_COLS);
    return STATUS_OK;
}

static bool shape_is(const struct tensor *t, int64_t a, int64_t b, int64_t c, int64_t d)
{
    return t->ndim == 4 && t->shape[0] == a && t->shape[1] == b && t->shape[2] == c && t->shape[3] == d;
}

/* channels per im2col chunk of `cols` columns within WS_BYTES, balanced over nc */
static int64_t chunk_channels(const struct geom *g, int64_t nc, int64_t cols)
{
    if (nc <= 0) return 1;   /* no input channels: nothing to chunk (and no division by zero) */
    const int64_t fit = max64(1, WS_BYTES / (int64_t)(g->KK * cols * g->esz));
    return ceil_div(nc, ceil_div(nc, fit));
}

/* input-channel chunks of the backward passes: enough items for the threads over `base` items
 * ((image or image batch, group) pairs for the input, groups for the weight), each chunk keeping
 * at least 64 rows of W^T (columns of dW) so its GEMM stays efficient */
static int64_t input_chunks(const struct geom *g, int64_t base)
{
    return base >= PAR_ITEMS ? 1 : max64(1, min64(ceil_div(PAR_ITEMS, base), min64(g->Cg, g->K / 64)));
}

/* C[r][0:np] (rows ldc apart) = bias[o0 + r] for no rows, or 0 without a bias when K = 0 (nothing
 * will be summed into it); returns the GEMM's beta: 1 if C now holds a start, else 0 */
static double start_from_bias(const struct geom *g, void *C, int64_t ldc, int64_t no, int64_t np,
                              const struct tensor *bias, int64_t o0)
{
    if (!bias && g->K != 0) return 0;
    for (int64_t r = 0; r < no; r++) {
        const int64_t boff = bias ? bias->offset + (o0 + r) * bias->stride[0] : 0;
        if (g->f32) {
            const float v = bias ? CPU_PTR(const float, bias)[boff] : 0;
            for (int64_t j = 0; j < np; j++) ((float *)C)[r * ldc + j] = v;
        } else {
            const double v = bias ? CPU_PTR(const double, bias)[boff] : 0;
            for (int64_t j = 0; j < np; j++) ((double *)C)[r * ldc + j] = v;
        }
    }
    return 1;
}

/* ---------------------------------------------------------------- im2col / col2im */

/* valid output columns [lo, hi) of kernel column kw: 0 <= ow*sw - pl + kw*dw < W */
static inline void valid_cols(const struct geom *g, int64_t kw, int64_t *lo, int64_t *hi)
{
    const int64_t off = kw * g->dw - g->pl;
    *lo = off >= 0 ? 0 : ceil_div(-off, g->sw);
    *hi = g->W - 1 - off < 0 ? 0 : min64(g->OW, (g->W - 1 - off) / g->sw + 1);
    if (*hi < *lo) *hi = *lo;
}

/* col[(c*KH + kh)*KW + kw][j] = x[c, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw] (0 outside),
 * for channels [0, nc) of x (x points at channel 0) and positions p0 + j, j in [0, np); col's
 * rows lie ld apart. x may have any strides. */
#define DEFINE_IM2COL(T, SUF)                                                                                 \
    static void im2col_##SUF(T *col, const T *x, const int64_t *xs, int64_t nc, const struct geom *g,       \
                             int64_t p0, int64_t np, int64_t ld)                                            \
    {                                                                                                       \
        for (int64_t c = 0; c < nc; c++)                                                                    \
            for (int64_t kh = 0; kh < g->KH; kh++)                                                          \
                for (int64_t kw = 0; kw < g->KW; kw++) {                                                    \
                    T *row = col + ((c * g->KH + kh) * g->KW + kw) * ld;                                    \
                    int64_t lo, hi;                                                                         \
                    valid_cols(g, kw, &lo, &hi);                                                            \
                    const int64_t iw0 = kw * g->dw - g->pl;                                                 \
                    for (int64_t j = 0, p = p0; j < np;) {                                                  \
                        const int64_t oh = p / g->OW, ow = p % g->OW, seg = min64(g->OW - ow, np - j);      \
                        const int64_t ih = oh * g->sh - g->pt + kh * g->dh;                                 \
                        T *dst = row + j - ow; /* indexed by ow */                                          \
                        if (ih < 0 || ih >= g->H) {                                                         \
                            for (int64_t q = ow; q < ow + seg; q++) dst[q] = 0;                             \
                        } else {                                                                            \
                            const int64_t a = min64(max64(ow, lo), ow + seg), b = max64(min64(ow + seg, hi), a); \
                            const T *src = x + c * xs[0] + ih * xs[1];                                      \
                            for (int64_t q = ow; q < a; q++) dst[q] = 0;                                    \
                            if (g->sw == 1 && xs[2] == 1) {                                                 \
                                const T *s1 = src + iw0;                                                    \
                                for (int64_t q = a; q < b; q++) dst[q] = s1[q];                             \
                            } else {                                                                        \
                                for (int64_t q = a; q < b; q++) dst[q] = src[(q * g->sw + iw0) * xs[2]];    \
                            }                                                                               \
                            for (int64_t q = b; q < ow + seg; q++) dst[q] = 0;                              \
                        }                                                                                   \
                        j += seg;                                                                           \
                        p += seg;                                                                           \
                    }                                                                                       \
                }                                                                                           \
    }                                                                                                       \
    /* the adjoint: dx[c, ih, iw] += col[...][j] over the same index map; dx has flat [H,W] */              \
    static void col2im_##SUF(T *dx, int64_t dxc, const T *col, int64_t nc, const struct geom *g, int64_t p0, \
                             int64_t np, int64_t ld)                                                        \
    {                                                                                                       \
        for (int64_t c = 0; c < nc; c++)                                                                    \
            for (int64_t kh = 0; kh < g->KH; kh++)                                                          \
                for (int64_t kw = 0; kw < g->KW; kw++) {                                                    \
                    const T *row = col + ((c * g->KH + kh) * g->KW + kw) * ld;                              \
                    int64_t lo, hi;                                                                         \
                    valid_cols(g, kw, &lo, &hi);                                                            \
                    const int64_t iw0 = kw * g->dw - g->pl;                                                 \
                    for (int64_t j = 0, p = p0; j < np;) {                                                  \
                        const int64_t oh = p / g->OW, ow = p % g->OW, seg = min64(g->OW - ow, np - j);      \
                        const int64_t ih = oh * g->sh - g->pt + kh * g->dh;                                 \
                        if (ih >= 0 && ih < g->H) {                                                         \
                            const int64_t a = min64(max64(ow, lo), ow + seg), b = max64(min64(ow + seg, hi), a); \
                            const T *src = row + j - ow;                                                    \
                            T *d = dx + c * dxc + ih * g->W + iw0;                                          \
                            if (g->sw == 1) {                                                               \
                                for (int64_t q = a; q < b; q++) d[q] += src[q];                             \
                            } else {                                                                        \
                                for (int64_t q = a; q < b; q++) d[q * g->sw] += src[q];                     \
                            }                                                                               \
                        }                                                                                   \
                        j += seg;                                                                           \
                        p += seg;                                                                           \
                    }                                                                                       \
                }                                                                                           \
    }
DEFINE_IM2COL(float, f32)
DEFINE_IM2COL(double, f64)

static void im2col(const struct geom *g, void *col, const void *x, const int64_t *xs, int64_t nc, int64_t p0,
                   int64_t np, int64_t ld)
{
    if (g->f32) im2col_f32(col, x, xs, nc, g, p0, np, ld);
    else im2col_f64(col, x, xs, nc, g, p0, np, ld);
}

static void col2im(const struct geom *g, void *dx, int64_t dxc, const void *col, int64_t nc, int64_t p0, int64_t np,
                   int64_t ld)
{
    if (g->f32) col2im_f32(dx, dxc, col, nc, g, p0, np, ld);
    else col2im_f64(dx, dxc, col, nc, g, p0, np, ld);
}

/* Whole images of few positions (the batched paths below) go through a table instead: for each
 * tap (kh, kw) and output position, the offset it reads in the image's channel, or -1 in the
 * padding. The general loops above cost a division and a few branches per row segment, and a
 * 4x4 image has 4 segments of 4 per tap: their im2col took two thirds of the time of the GEMM
 * it feeds ([8,256,4,4] -> 128). Same values and, for col2im, the same additions in the same
 * order (c, kh, kw, position). */
#define TAP_TABLE_MAX 8192   /* KK * P entries */

/* offsets for row stride rs and column stride cs, or NULL (too large: the general loops) */
static int64_t *tap_table(const struct geom *g, int64_t rs, int64_t cs)
{
    if (g->KK * g->P > TAP_TABLE_MAX) return NULL;
    int64_t *tab = malloc(sizeof *tab * (size_t)(g->KK * g->P));
    if (!tab) return NULL;
    for (int64_t kh = 0; kh < g->KH; kh++)
        for (int64_t kw = 0; kw < g->KW; kw++)
            for (int64_t p = 0; p < g->P; p++) {
                const int64_t ih = p / g->OW * g->sh - g->pt + kh * g->dh, iw = p % g->OW * g->sw - g->pl + kw * g->dw;
                tab[(kh * g->KW + kw) * g->P + p] = ih >= 0 && ih < g->H && iw >= 0 && iw < g->W ? ih * rs + iw * cs : -1;
            }
    return tab;
}

#define DEFINE_TAPS(T, SUF)                                                                                   \
    /* col[c*KK + t][j] = x[c][tab[t][j]] (0 at -1), channels cs apart */                                    \
    static void im2col_taps_##SUF(T *col, const T *x, int64_t cs, int64_t nc, const int64_t *tab, int64_t KK, \
                                  int64_t P, int64_t ld)                                                    \
    {                                                                                                       \
        for (int64_t c = 0; c < nc; c++)                                                                    \
            for (int64_t t = 0; t < KK; t++) {                                                              \
                const T *xc = x + c * cs;                                                                   \
                const int64_t *o = tab + t * P;                                                             \
                T *row = col + (c * KK + t) * ld;                                                           \
                for (int64_t j = 0; j < P; j++) row[j] = o[j] >= 0 ? xc[o[j]] : 0;                          \
            }                                                                                               \
    }                                                                                                       \
    /* the adjoint: dx[c][tab[t][j]] += col[c*KK + t][j] */                                                  \
    static void col2im_taps_##SUF(T *dx, int64_t dxc, const T *col, int64_t nc, const int64_t *tab, int64_t KK, \
                                  int64_t P, int64_t ld)                                                    \
    {                                                                                                       \
        for (int64_t c = 0; c < nc; c++)                                                                    \
            for (int64_t t = 0; t < KK; t++) {                                                              \
                T *d = dx + c * dxc;                                                                        \
                const int64_t *o = tab + t * P;                                                             \
                const T *row = col + (c * KK + t) * ld;                                                     \
                for (int64_t j = 0; j < P; j++)                                                             \
                    if (o[j] >= 0) d[o[j]] += row[j];                                                       \
            }                                                                                               \
    }
DEFINE_TAPS(float, f32)
DEFINE_TAPS(double, f64)

/* one whole image's im2col (x at its channel 0, strides xs) into col (rows ld apart) */
static void im2col_image(const struct geom *g, const int64_t *tab, void *col, const void *x, const int64_t *xs,
                         int64_t nc, int64_t ld)
{
    if (!tab) im2col(g, col, x, xs, nc, 0, g->P, ld);
    else if (g->f32) im2col_taps_f32(col, x, xs[0], nc, tab, g->KK, g->P, ld);
    else im2col_taps_f64(col, x, xs[0], nc, tab, g->KK, g->P, ld);
}

/* one whole image's col2im (dx flat [H, W] per channel, channels dxc apart) */
static void col2im_image(const struct geom *g, const int64_t *tab, void *dx, int64_t dxc, const void *col,
                         int64_t nc, int64_t ld)
{
    if (!tab) col2im(g, dx, dxc, col, nc, 0, g->P, ld);
    else if (g->f32) col2im_taps_f32(dx, dxc, col, nc, tab, g->KK, g->P, ld);
    else col2im_taps_f64(dx, dxc, col, nc, tab, g->KK, g->P, ld);
}

/* C[M,N] = op(A) @ op(B) + beta*C, row-major, single BLAS call */
static void gemm(bool f32, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void *A, int64_t lda,
                 const void *B, int64_t ldb, double beta, void *C, int64_t ldc)
{
    if (M <= 0 || N <= 0) return;
    const CBLAS_TRANSPOSE TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
    cpu_blas_serial_in_region();
    lda = max64(lda, 1);
    ldb = max64(ldb, 1);
    ldc = max64(ldc, 1);
    if (f32)
        cblas_sgemm(CblasRowMajor, TA, TB, (blasint)M, (blasint)N, (blasint)K, 1.0f, A, (blasint)lda, B,
                    (blasint)ldb, (float)beta, C, (blasint)ldc);
    else
        cblas_dgemm(CblasRowMajor, TA, TB, (blasint)M, (blasint)N, (blasint)K, 1.0, A, (blasint)lda, B,
                    (blasint)ldb, beta, C, (blasint)ldc);
}

/* ---------------------------------------------------------------- register-blocked kernel */

/* A GEMM with few columns is too thin for BLAS, which packs both operands for every call: SD's
 * conv_in (K = 4*9 = 36 rows: packing, bias fill and a staged copy-out cost about a third of the
 * time) and the few-pixel convs of the UNet's lowest level (a batch of 4x4 images is 64 columns
 * against K = 11520: BLAS packs 59 MB of weights for them). This kernel instead keeps a 12x32
 * block of the output in AVX-512 registers, runs the multiply-adds with A broadcast from memory
 * and B read in place, adds the bias (or what C holds) and stores the block once. K is cut
 * into blocks of THIN_KC, each summed in registers from 0 and then added to C (one chain of
 * 6300 products had 4x BLAS's rounding error); a block's B panel stays in L2 across the row
 * blocks and the row block's A in L1 across the column blocks.
 * Measured on one Zen 4 core (sgemm 1024^3: 97 GFLOP/s): M x N x K = 128 x 64 x 2304 (the
 * [8,256,4,4] forward) 116 against BLAS's 96 GFLOP/s; 1284 x 64 x 11520 112 against 79;
 * 1284 x 32 x 11520 113 against 61; but 1284 x 256 x 11520 91 against 97, so BLAS keeps the
 * wide tiles. Chosen at run time (CPUs without AVX-512 take the BLAS path); tests switch it
 * off to compare both paths. */
#define THIN_K_MAX 80     /* up to this K, any number of columns (conv_in): K = 108 was a tie */
#define THIN_COLS 128     /* up to this many columns, any K */
#define THIN_KC 256      /* each block summed from 0, then added to C: short chains, as BLAS's */
#if defined(__x86_64__) && defined(__GNUC__)
#define THIN_AVX512 1
#define T512 __attribute__((target("avx512f")))

/* MR rows x up to 32 columns (masks m0, m1 pick the valid ones): C = A @ B + start, start = C
 * (acc), else the bias (none: 0), added after the sum; A[r, k] at A[r * lda + k], or at
 * A[k * lda + r] (SUF t: A^T stored, as the backward input's W^T) */
#define DEFINE_THIN_TILE(MR, SUF, AIDX)                                                                       \
    T512 static void thin_tile_##MR##SUF(int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb, \
                                         const float *bias, int64_t bs, bool acc, float *C, int64_t ldc,     \
                                         __mmask16 m0, __mmask16 m1, bool stream)                            \
    {                                                                                                        \
        __m512 c0[MR], c1[MR];                                                                               \
        _Pragma("GCC unroll 12") for (int r = 0; r < MR; r++) c0[r] = c1[r] = _mm512_setzero_ps();          \
        for (int64_t k = 0; k < K; k++) {                                                                    \
            const __m512 b0 = _mm512_maskz_loadu_ps(m0, B + k * ldb);                                       \
            const __m512 b1 = _mm512_maskz_loadu_ps(m1, B + k * ldb + 16);                                  \
            _Pragma("GCC unroll 12") for (int r = 0; r < MR; r++) {                                          \
                const __m512 a = _mm512_set1_ps(A[AIDX]);                                                    \
                c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);                                                       \
                c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);                                                       \
            }                                                                                                \
        }                                                                                                    \
        _Pragma("GCC unroll 12") for (int r = 0; r < MR; r++) {                                              \
            float *c = C + r * ldc;                                                                          \
            if (acc) {                                                                                       \
                c0[r] = _mm512_add_ps(c0[r], _mm512_maskz_loadu_ps(m0, c));                                  \
                c1[r] = _mm512_add_ps(c1[r], _mm512_maskz_loadu_ps(m1, c + 16));                             \
            } else if (bias) {                                                                               \
                c0[r] = _mm512_add_ps(c0[r], _mm512_set1_ps(bias[r * bs]));                                  \
                c1[r] = _mm512_add_ps(c1[r], _mm512_set1_ps(bias[r * bs]));                                  \
            }                                                                                                \
            if (stream && !((uintptr_t)c & 63)) {   /* whole, aligned cache lines: no read-for-write */      \
                _mm512_stream_ps(c, c0[r]);                                                                  \
                _mm512_stream_ps(c + 16, c1[r]);                                                             \
            } else {                                                                                         \
                _mm512_mask_storeu_ps(c, m0, c0[r]);                                                         \
                _mm512_mask_storeu_ps(c + 16, m1, c1[r]);                                                    \
            }                                                                                                \
        }                                                                                                    \
    }
DEFINE_THIN_TILE(12, n, r * lda + k)
DEFINE_THIN_TILE(4, n, r * lda + k)
DEFINE_THIN_TILE(1, n, r * lda + k)
DEFINE_THIN_TILE(12, t, k * lda + r)
DEFINE_THIN_TILE(4, t, k * lda + r)
DEFINE_THIN_TILE(1, t, k * lda + r)

/* C[no, np] (row stride ldc) = start + op(A)[no, K] @ B[K, np] (ldb), start = C (acc), else
 * bias[o] (stride bs; none: 0); op(A) = A [no, K] (lda), or with ta the transpose of A [K, no].
 * stream: write whole cache lines past the cache (an output nothing reads soon). */
T512 static void thin_gemm(bool ta, int64_t no, int64_t np, int64_t K, const float *A, int64_t lda, const float *B,
                           int64_t ldb, const float *bias, int64_t bs, bool acc, float *C, int64_t ldc, bool stream)
{
    int64_t k0 = 0;
    do {   /* once with K = 0: the start alone */
        const int64_t kc = min64(THIN_KC, K - k0);
        const bool start = acc || k0 > 0, last = k0 + kc >= K;
        const float *Ak = A + (ta ? k0 * lda : k0), *Bk = B + k0 * ldb;
        for (int64_t r = 0; r < no;) {
            const int64_t mr = no - r >= 12 ? 12 : no - r >= 4 ? 4 : 1;
            const float *Ar = Ak + (ta ? r : r * lda), *br = bias ? bias + r * bs : NULL;
            for (int64_t j = 0; j < np; j += 32) {
                const int64_t w = min64(32, np - j);
                const __mmask16 m0 = (__mmask16)(w >= 16 ? 0xFFFF : (1u << w) - 1);
                const __mmask16 m1 = (__mmask16)(w >= 32 ? 0xFFFF : w > 16 ? (1u << (w - 16)) - 1 : 0);
                const bool st = stream && last && w == 32;
                float *Cb = C + r * ldc + j;
                if (mr == 12 && ta) thin_tile_12t(kc, Ar, lda, Bk + j, ldb, br, bs, start, Cb, ldc, m0, m1, st);
                else if (mr == 12) thin_tile_12n(kc, Ar, lda, Bk + j, ldb, br, bs, start, Cb, ldc, m0, m1, st);
                else if (mr == 4 && ta) thin_tile_4t(kc, Ar, lda, Bk + j, ldb, br, bs, start, Cb, ldc, m0, m1, st);
                else if (mr == 4) thin_tile_4n(kc, Ar, lda, Bk + j, ldb, br, bs, start, Cb, ldc, m0, m1, st);
                else if (ta) thin_tile_1t(kc, Ar, lda, Bk + j, ldb, br, bs, start, Cb, ldc, m0, m1, st);
                else thin_tile_1n(kc, Ar, lda, Bk + j, ldb, br, bs, start, Cb, ldc, m0, m1, st);
            }
            r += mr;
        }
    } while ((k0 += THIN_KC) < K);
    if (stream) _mm_sfence();   /* streamed stores are weakly ordered: make them visible before the barrier */
}
#endif

/* Tests switch the kernel off to check the BLAS path on an AVX-512 machine. Internal:
 * declared where used, not in a header. */
static bool conv_baseline_only;
void cpu_conv2d_baseline_only(bool on);
void cpu_conv2d_baseline_only(bool on) { conv_baseline_only = on; }

/* whether a GEMM of `cols` columns takes the register-blocked kernel */
static bool thin_fits(const struct geom *g, int64_t cols)
{
#ifdef THIN_AVX512
    return g->f32 && (g->K <= THIN_K_MAX || cols <= THIN_COLS) && !conv_baseline_only &&
           __builtin_cpu_supports("avx512f");
#else
    (void)g, (void)cols;
    return false;
#endif
}

/* C[M, N] = beta * C + op(A)[M, K] @ B[K, N] (beta 0 or 1), op(A) = A or A^T (ta): through the
 * register-blocked kernel where it wins, else BLAS */
static void conv_gemm(const struct geom *g, bool ta, int64_t M, int64_t N, int64_t K, const void *A, int64_t lda,
                      const void *B, int64_t ldb, double beta, void *C, int64_t ldc)
{
#ifdef THIN_AVX512
    if (thin_fits(g, N)) {
        if (M > 0 && N > 0) thin_gemm(ta, M, N, K, A, lda, B, ldb, NULL, 0, beta != 0, C, ldc, false);
        return;
    }
#endif
    gemm(g->f32, ta, false, M, N, K, A, lda, B, ldb, beta, C, ldc);
}

/* per-thread im2col workspace (through the caching allocator: no page faults per call) */
static struct tensor *workspace(const struct geom *g, int64_t elems_per_thread, int64_t *stride)
{
    *stride = (elems_per_thread + 15) & ~(int64_t)15;   /* 64-byte apart */
    return tensor_keep(tensor_empty(g->f32 ? DTYPE_F32 : DTYPE_F64, TENSOR_SHAPE(*stride * omp_get_max_threads()),
                                    DEVICE_CPU));
}

/* ---------------------------------------------------------------- Winograd F(2x2, 3x3) */

/* A 3x3, stride-1, undilated conv with enough input channels goes through Winograd's
 * minimal filtering instead: each 2x2 output tile comes from a 4x4 input patch d as
 *     y = A^T [ (G w G^T) .* (B^T d B) ] A,
 * so summed over channels the 16 elementwise products become 16 GEMMs per tile block,
 *     M[xi] [O/g, tiles] = U[xi] [O/g, C/g] @ V[xi] [C/g, tiles],   xi = 0..15,
 * with 16 multiplies per (o, c, tile) instead of im2col's 36: 2.25x fewer flops (measured
 * 1.4-1.8x faster from 16 to 640 channels). The transforms use only 0, +-1 and +-1/2, so
 * rounding stays within a small factor of the direct sum. The backward input of such a
 * conv is again one (dy with the kernel rotated 180 degrees, in and out channels swapped,
 * padding 2 - p), so it takes the same path; the weight gradient has its own (below). */
#define WINO_MIN_CH 16               /* input channels per group: below, im2col is faster */
#define WINO_MIN_TILES 16            /* tiles per image */
#define WINO_MAX_BYTES (32 << 20)    /* the transformed weights (16/9 of w): up to 640x640 f32 */

static bool wino_fits(const struct geom *g)
{
    return g->KH == 3 && g->KW == 3 && g->sh == 1 && g->sw == 1 && g->dh == 1 && g->dw == 1 &&
           g->Cg >= WINO_MIN_CH && 16 * g->O * g->Cg * (int64_t)g->esz <= WINO_MAX_BYTES &&
           ceil_div(g->OH, 2) * ceil_div(g->OW, 2) >= WINO_MIN_TILES;
}

/* U[gi][xi][o][c] = (G k G^T)[xi] for the 3x3 kernel k = w[gi*Og + o][c], contiguous, with
 * G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]. The 16 planes of U lie a multiple of 4 KiB apart
 * for common sizes, so writing all 16 per kernel would thrash one L1 set: blocks of kernels
 * go through a local buffer and out as whole rows. */
#define WINO_WBLK 64
#define DEFINE_WINO_WEIGHTS(T, SUF)                                                                           \
    static void wino_weights_##SUF(const struct geom *g, const T *w, const int64_t *ws, T *U)                \
    {                                                                                                       \
        const int64_t R = g->Og, S = g->Cg;                                                                 \
        _Pragma("omp parallel for schedule(static) if (g->O * S * 16 >= CPU_PAR_MIN)")                      \
        for (int64_t o = 0; o < g->O; o++) {                                                                \
            const int64_t gi = o / R, r = o % R;                                                            \
            T buf[16][WINO_WBLK];                                                                           \
            for (int64_t c0 = 0; c0 < S; c0 += WINO_WBLK) {                                                 \
                const int64_t nc = min64(WINO_WBLK, S - c0);                                                \
                for (int64_t c = 0; c < nc; c++) {                                                          \
                    const T *kp = w + o * ws[0] + (c0 + c) * ws[1];                                         \
                    T k[3][3], t[4][3];                                                                     \
                    for (int a = 0; a < 3; a++)                                                             \
                        for (int b = 0; b < 3; b++) k[a][b] = kp[a * ws[2] + b * ws[3]];                    \
                    for (int b = 0; b < 3; b++) {                                                           \
                        t[0][b] = k[0][b];                                                                  \
                        t[1][b] = (T)0.5 * (k[0][b] + k[1][b] + k[2][b]);                                   \
                        t[2][b] = (T)0.5 * (k[0][b] - k[1][b] + k[2][b]);                                   \
                        t[3][b] = k[2][b];                                                                  \
                    }                                                                                       \
                    for (int a = 0; a < 4; a++) {                                                           \
                        buf[a * 4 + 0][c] = t[a][0];                                                        \
                        buf[a * 4 + 1][c] = (T)0.5 * (t[a][0] + t[a][1] + t[a][2]);                         \
                        buf[a * 4 + 2][c] = (T)0.5 * (t[a][0] - t[a][1] + t[a][2]);                         \
                        buf[a * 4 + 3][c] = t[a][2];                                                        \
                    }                                                                                       \
                }                                                                                           \
                for (int xi = 0; xi < 16; xi++)                                                             \
                    memcpy(U + ((gi * 16 + xi) * R + r) * S + c0, buf[xi], (size_t)nc * sizeof(T));         \
            }                                                                                               \
        }                                                                                                   \
    }
DEFINE_WINO_WEIGHTS(float, f32)
DEFINE_WINO_WEIGHTS(double, f64)

/* The input and output transforms work on row segments of tiles (tile row th, tiles
 * [tw0, tw0 + ns)), so every step is a loop over contiguous arrays the compiler vectorises.
 *
 * Input: V[xi][c][j0 + j] = (B^T d B)[xi] of tile (th, tw0 + j), for channels [0, nc) of x
 * (x points at channel 0, any strides), B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
 * The 4 input rows of the segment are copied zero-padded into r, combined down the rows
 * (B^T) into u, then across (B) with stride-2 reads. */
#define WINO_SEG 256   /* tiles per row segment at most: bounds the stack buffers */
#define DEFINE_WINO(T, SUF)                                                                                   \
    __attribute__((always_inline)) static inline void wino_input_body_##SUF(                                \
        T *V, int64_t ldc, int64_t ldxi, const T *x, const int64_t *xs, int64_t nc, const struct geom *g,       \
        int64_t th, int64_t tw0, int64_t ns, int64_t j0)                                                    \
    {                                                                                                       \
        const int64_t L = 2 * ns + 2, iw0 = 2 * tw0 - g->pl;                                                \
        /* valid columns [k_lo, k_hi) of the segment: 0 <= iw0 + k < W */                                  \
        const int64_t k_lo = min64(L, max64(0, -iw0)), k_hi = max64(k_lo, min64(L, g->W - iw0));            \
        T r[4][2 * WINO_SEG + 2], u[4][2 * WINO_SEG + 2];                                                   \
        for (int64_t c = 0; c < nc; c++) {                                                                  \
            for (int a = 0; a < 4; a++) {                                                                   \
                const int64_t ih = 2 * th - g->pt + a;                                                      \
                T *ra = r[a];                                                                               \
                if (ih < 0 || ih >= g->H) {                                                                 \
                    for (int64_t k = 0; k < L; k++) ra[k] = 0;                                              \
                    continue;                                                                               \
                }                                                                                           \
                const T *src = x + c * xs[0] + ih * xs[1] + iw0 * xs[2];                                    \
                for (int64_t k = 0; k < k_lo; k++) ra[k] = 0;                                               \
                if (xs[2] == 1)                                                                             \
                    for (int64_t k = k_lo; k < k_hi; k++) ra[k] = src[k];                                   \
                else                                                                                        \
                    for (int64_t k = k_lo; k < k_hi; k++) ra[k] = src[k * xs[2]];                           \
                for (int64_t k = k_hi; k < L; k++) ra[k] = 0;                                               \
            }                                                                                               \
            for (int64_t k = 0; k < L; k++) {                                                               \
                u[0][k] = r[0][k] - r[2][k];                                                                \
                u[1][k] = r[1][k] + r[2][k];                                                                \
                u[2][k] = r[2][k] - r[1][k];                                                                \
                u[3][k] = r[1][k] - r[3][k];                                                                \
            }                                                                                               \
            for (int a = 0; a < 4; a++) {                                                                   \
                const T *ua = u[a];                                                                         \
                T *v0 = V + (a * 4) * ldxi + c * ldc + j0, *v1 = v0 + ldxi, *v2 = v1 + ldxi, *v3 = v2 + ldxi; \
                for (int64_t j = 0; j < ns; j++) {                                                          \
                    v0[j] = ua[2 * j] - ua[2 * j + 2];                                                      \
                    v1[j] = ua[2 * j + 1] + ua[2 * j + 2];                                                  \
                    v2[j] = ua[2 * j + 2] - ua[2 * j + 1];                                                  \
                    v3[j] = ua[2 * j + 1] - ua[2 * j + 3];                                                  \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
    }                                                                                                       \
    /* Segments of 2 and 4 tiles (rows of images 7-8 pixels wide, pieces of rows at a block's    \
     * edge) take copies of the loops with the width a constant, which the compiler unrolls:    \
     * the general loops of 6 or 10 elements were mostly loop control. */                          \
    static void wino_input_##SUF(T *V, int64_t ldc, int64_t ldxi, const T *x, const int64_t *xs, int64_t nc, \
                                 const struct geom *g, int64_t th, int64_t tw0, int64_t ns, int64_t j0)     \
    {                                                                                                       \
        if (ns == 2) wino_input_body_##SUF(V, ldc, ldxi, x, xs, nc, g, th, tw0, 2, j0);                     \
        else if (ns == 4) wino_input_body_##SUF(V, ldc, ldxi, x, xs, nc, g, th, tw0, 4, j0);                \
        else wino_input_body_##SUF(V, ldc, ldxi, x, xs, nc, g, th, tw0, ns, j0);                            \
    }                                                                                                       \
    /* Output: out[o] (flat [OH, OW], channel stride ldo) for the segment's 2x2 tiles from       \
     * M[xi][o][j0 + j] through A^T = [1 1 1 0; 0 1 -1 -1], plus bias[o * bs] (or none). */     \
    __attribute__((always_inline)) static inline void wino_output_body_##SUF(                               \
        T *out, int64_t ldo, const T *M, int64_t ldc, int64_t ldxi, int64_t no, const T *bias, int64_t bs,      \
        const struct geom *g, int64_t th, int64_t tw0, int64_t ns, int64_t j0)                              \
    {                                                                                                       \
        T y[2][2 * WINO_SEG];                                                                               \
        const int64_t ow0 = 2 * tw0, nw = min64(2 * ns, g->OW - ow0);                                       \
        for (int64_t o = 0; o < no; o++) {                                                                  \
            const T b0 = bias ? bias[o * bs] : 0;                                                           \
            const T *m = M + o * ldc + j0;                                                                  \
            for (int a = 0; a < 2; a++) {                                                                   \
                /* row a of A^T m: s_b = m[a][b] + m[a+1][b] + m[a+2][b] (a = 0) or      \
                 * m[1][b] - m[2][b] - m[3][b] (a = 1); then across the columns with A */ \
                const T sg = a ? -1 : 1;                                                                    \
                const T *m0 = m + (a ? 4 : 0) * ldxi, *m1 = m + (a ? 8 : 4) * ldxi, *m2 = m + (a ? 12 : 8) * ldxi; \
                T *ya = y[a];                                                                               \
                for (int64_t j = 0; j < ns; j++) {                                                          \
                    const T s0 = m0[j] + sg * (m1[j] + m2[j]);                                              \
                    const T s1 = m0[ldxi + j] + sg * (m1[ldxi + j] + m2[ldxi + j]);                         \
                    const T s2 = m0[2 * ldxi + j] + sg * (m1[2 * ldxi + j] + m2[2 * ldxi + j]);             \
                    const T s3 = m0[3 * ldxi + j] + sg * (m1[3 * ldxi + j] + m2[3 * ldxi + j]);             \
                    ya[2 * j] = b0 + (s0 + s1 + s2);                                                        \
                    ya[2 * j + 1] = b0 + (s1 - s2 - s3);                                                    \
                }                                                                                           \
                const int64_t oh = 2 * th + a;                                                              \
                /* a whole row of the segment as a copy of constant size (inlined when ns is) */         \
                if (oh >= g->OH) continue;                                                                  \
                if (nw == 2 * ns) memcpy(out + o * ldo + oh * g->OW + ow0, ya, (size_t)(2 * ns) * sizeof(T)); \
                else memcpy(out + o * ldo + oh * g->OW + ow0, ya, (size_t)nw * sizeof(T));                  \
            }                                                                                               \
        }                                                                                                   \
    }                                                                                                       \
    static void wino_output_##SUF(T *out, int64_t ldo, const T *M, int64_t ldc, int64_t ldxi, int64_t no,    \
                                  const T *bias, int64_t bs, const struct geom *g, int64_t th, int64_t tw0, \
                                  int64_t ns, int64_t j0)                                                   \
    {                                                                                                       \
        if (ns == 2) wino_output_body_##SUF(out, ldo, M, ldc, ldxi, no, bias, bs, g, th, tw0, 2, j0);       \
        else if (ns == 4) wino_output_body_##SUF(out, ldo, M, ldc, ldxi, no, bias, bs, g, th, tw0, 4, j0);  \
        else wino_output_body_##SUF(out, ldo, M, ldc, ldxi, no, bias, bs, g, th, tw0, ns, j0);              \
    }
DEFINE_WINO(float, f32)
DEFINE_WINO(double, f64)

#define WINO_WS_BYTES (4 << 20)   /* per thread: transformed inputs and products of a tile block */
#define WINO_TILES 256            /* tiles per block, at most */
#define WINO_MIN_BLOCK 64         /* tiles per block, at least, when splitting for the threads */

/* the 16 planes of V and M lie one cache line off a multiple of the block size, so that
 * walking all 16 at once does not pile onto one L1 set */
static int64_t plane_stride(int64_t n) { return ((n + 15) & ~(int64_t)15) + 16; }

/* out (flat [OH, OW] per channel, channel stride ldo) = the conv of x (any strides) in
 * geometry g (3x3, stride 1), plus bias. U holds the transformed weights: of this conv, or
 * with flip, of the conv this one is the backward input of. Rotating a kernel 180 degrees
 * swaps rows 0 and 3 of G, so its transform is U with xi's row and column indices mapped
 * 0<->3; swapping in and out channels transposes each U[xi]: no second transform needed. */
static enum status wino_run(const struct geom *g, struct tensor *out, int64_t ldo, const struct tensor *x,
                            const void *U, bool flip, const struct tensor *bias)
{
    static const int rot[4] = {3, 1, 2, 0};
    const int64_t TW = ceil_div(g->OW, 2), TT = ceil_div(g->OH, 2) * TW, T_all = g->N * TT;
    /* Blocks of Tb tiles, numbered across images. A block needs 16*Tb*(cc + O) elements:
     * the products for all O and the transformed inputs of a chunk of cc input channels.
     * Each GEMM packs its U[xi] again, so blocks should be as large as the budget allows. */
    const int64_t per_tile = 16 * (int64_t)g->esz;
    int64_t Tb = min64(min64(T_all, WINO_TILES), max64(16, WINO_WS_BYTES * 3 / 4 / (per_tile * g->O)));
    /* Up to PAR_ITEMS blocks of at least WINO_MIN_BLOCK tiles, where the budget alone would give
     * fewer: one block runs its transforms on one thread and each small GEMM threaded inside
     * BLAS ([8,256,8,8] -> 128: 128 tiles in one block, 1.9x torch's time; in two blocks 1.0x).
     * A rule of the shape alone, not of the thread count: results stay bit-identical on any. */
    Tb = min64(Tb, max64(WINO_MIN_BLOCK, ceil_div(T_all, PAR_ITEMS)));
    const int64_t nb = ceil_div(T_all, Tb);
    Tb = ceil_div(T_all, nb);
    const int64_t cc = min64(g->Cg, max64(16, (WINO_WS_BYTES - per_tile * g->O * Tb) / (per_tile * Tb)));
    const int64_t ldxi_v = plane_stride(cc * Tb), ldxi_m = plane_stride(g->O * Tb);
    int64_t ws_stride;
    struct tensor *ws = workspace(g, 16 * (ldxi_v + ldxi_m), &ws_stride);
    if (!ws) return tensor_status();
    const int64_t xs[3] = {x->stride[1], x->stride[2], x->stride[3]};
    const int64_t macs = g->N * g->O * g->P * g->K;
#pragma omp parallel for schedule(dynamic, 1) if (nb > 1 && macs >= PAR_MIN_MACS)
    for (int64_t blk = 0; blk < nb; blk++) {
        const int64_t t0 = blk * Tb, nt = min64(Tb, T_all - t0);
        char *V = (char *)ws->storage->data + (size_t)(omp_get_thread_num() * ws_stride) * g->esz;
        char *M = V + (size_t)(16 * ldxi_v) * g->esz;
        for (int64_t gi = 0; gi < g->G; gi++)
            for (int64_t c0 = 0; c0 < g->Cg; c0 += cc) {
                const int64_t nc = min64(cc, g->Cg - c0);
                for (int64_t t = t0; t < t0 + nt;) {   /* row segments */
                    const int64_t n = t / TT, th = t % TT / TW, tw = t % TW;
                    const int64_t ns = min64(min64(TW - tw, t0 + nt - t), WINO_SEG);
                    const void *xp = at(x, n * x->stride[0] + (gi * g->Cg + c0) * x->stride[1]);
                    if (g->f32) wino_input_f32((float *)V, Tb, ldxi_v, xp, xs, nc, g, th, tw, ns, t - t0);
                    else wino_input_f64((double *)V, Tb, ldxi_v, xp, xs, nc, g, th, tw, ns, t - t0);
                    t += ns;
                }
                for (int xi = 0; xi < 16; xi++) {
                    /* A = U[xi] [Og, Cg] columns c0.., or U[rot xi] stored [Cg, Og] read transposed */
                    const int64_t ua = flip ? ((gi * 16 + rot[xi / 4] * 4 + rot[xi % 4]) * g->Cg + c0) * g->Og
                                            : ((gi * 16 + xi) * g->Og) * g->Cg + c0;
                    conv_gemm(g, flip, g->Og, nt, nc, (const char *)U + (size_t)ua * g->esz,
                         flip ? g->Og : g->Cg, V + (size_t)(xi * ldxi_v) * g->esz, Tb, c0 ? 1 : 0,
                         M + (size_t)(xi * ldxi_m + gi * g->Og * Tb) * g->esz, Tb);
                }
            }
        const int64_t bs = bias ? bias->stride[0] : 0;
        const void *bp = bias ? at(bias, 0) : NULL;
        for (int64_t t = t0; t < t0 + nt;) {
            const int64_t n = t / TT, th = t % TT / TW, tw = t % TW;
            const int64_t ns = min64(min64(TW - tw, t0 + nt - t), WINO_SEG);
            void *op = at(out, n * out->stride[0]);
            if (g->f32) wino_output_f32(op, ldo, (const float *)M, Tb, ldxi_m, g->O, bp, bs, g, th, tw, ns, t - t0);
            else wino_output_f64(op, ldo, (const double *)M, Tb, ldxi_m, g->O, bp, bs, g, th, tw, ns, t - t0);
            t += ns;
        }
    }
    tensor_free(ws);
    return STATUS_OK;
}

/* Weight gradient on the same tiles. For one tile, y = A^T [U .* V] A with U = G k G^T, so
 *     dL/dk = G^T [ (A dy A^T) .* V ] G,
 * and summed over tiles the 16 products are again GEMMs (reducing over tiles this time):
 *     What[xi] [O/g, C/g] += Y[xi] [O/g, tiles] @ V[xi]^T [tiles, C/g],   Y = A dy A^T,
 * followed by dW = G^T What G per (o, c). */
#define DEFINE_WINO_GRAD(T, SUF)                                                                              \
    /* Y[xi][j0 + j] = (A y A^T)[xi] for the 2x2 blocks y of one channel of dy (dy points at the    \
     * channel, strides ds[0] rows, ds[1] columns) in tile row th, tiles [tw0, tw0 + ns); A^T = [1 1 1 0; \
     * 0 1 -1 -1]. Positions past the output's edge count as 0. */                                  \
    static void wino_dy_##SUF(T *Y, int64_t ldxi, const T *dy, const int64_t *ds, const struct geom *g,      \
                              int64_t th, int64_t tw0, int64_t ns, int64_t j0)                              \
    {                                                                                                       \
        T r[2][2 * WINO_SEG];                                                                               \
        const int64_t ow0 = 2 * tw0, nw = min64(2 * ns, g->OW - ow0);                                       \
        for (int a = 0; a < 2; a++) {                                                                       \
            const int64_t oh = 2 * th + a;                                                                  \
            int64_t k = 0;                                                                                  \
            if (oh < g->OH)                                                                                 \
                for (const T *src = dy + oh * ds[0] + ow0 * ds[1]; k < nw; k++) r[a][k] = src[k * ds[1]];   \
            for (; k < 2 * ns; k++) r[a][k] = 0;                                                            \
        }                                                                                                   \
        for (int64_t j = 0; j < ns; j++) {                                                                  \
            /* rows of A y: y0, y0 + y1, y0 - y1, -y1 (y0, y1 the block's rows), then each row    \
             * (p, q) times A^T: p, p + q, p - q, -q */                                           \
            const T y00 = r[0][2 * j], y01 = r[0][2 * j + 1], y10 = r[1][2 * j], y11 = r[1][2 * j + 1];     \
            const T p[4] = {y00, y00 + y10, y00 - y10, -y10}, q[4] = {y01, y01 + y11, y01 - y11, -y11};     \
            for (int a = 0; a < 4; a++) {                                                                   \
                T *ya = Y + 4 * a * ldxi + j0 + j;                                                          \
                ya[0] = p[a];                                                                               \
                ya[ldxi] = p[a] + q[a];                                                                     \
                ya[2 * ldxi] = p[a] - q[a];                                                                 \
                ya[3 * ldxi] = -q[a];                                                                       \
            }                                                                                               \
        }                                                                                                   \
    }                                                                                                       \
    /* dW[gi*Og + o][c] (3x3, rows of dw ld apart) = G^T What[gi][.][o][c] G, What [G][16][Og][Cg] */       \
    static void wino_dw_##SUF(const struct geom *g, const T *What, T *dw, int64_t ld)                        \
    {                                                                                                       \
        const int64_t R = g->Og, S = g->Cg;                                                                 \
        _Pragma("omp parallel for schedule(static) if (g->O * S * 16 >= CPU_PAR_MIN)")                      \
        for (int64_t o = 0; o < g->O; o++) {                                                                \
            const int64_t gi = o / R, r = o % R;                                                            \
            T buf[16][WINO_WBLK];                                                                           \
            for (int64_t c0 = 0; c0 < S; c0 += WINO_WBLK) {                                                 \
                const int64_t nc = min64(WINO_WBLK, S - c0);                                                \
                for (int xi = 0; xi < 16; xi++)                                                             \
                    memcpy(buf[xi], What + ((gi * 16 + xi) * R + r) * S + c0, (size_t)nc * sizeof(T));      \
                for (int64_t c = 0; c < nc; c++) {                                                          \
                    T t[3][4];                                                                              \
                    for (int b = 0; b < 4; b++) {   /* t = G^T What, G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1] */ \
                        const T w0 = buf[b][c], w1 = buf[4 + b][c], w2 = buf[8 + b][c], w3 = buf[12 + b][c];  \
                        t[0][b] = w0 + (T)0.5 * (w1 + w2);                                                  \
                        t[1][b] = (T)0.5 * (w1 - w2);                                                       \
                        t[2][b] = (T)0.5 * (w1 + w2) + w3;                                                  \
                    }                                                                                       \
                    T *d = dw + o * ld + (c0 + c) * 9;                                                      \
                    for (int a = 0; a < 3; a++) {   /* then t G */                                          \
                        d[a * 3 + 0] = t[a][0] + (T)0.5 * (t[a][1] + t[a][2]);                              \
                        d[a * 3 + 1] = (T)0.5 * (t[a][1] - t[a][2]);                                        \
                        d[a * 3 + 2] = (T)0.5 * (t[a][1] + t[a][2]) + t[a][3];                              \
                    }                                                                                       \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
    }
DEFINE_WINO_GRAD(float, f32)
DEFINE_WINO_GRAD(double, f64)

/* dW (as [O, K], rows ldc apart) of the conv with geometry g (3x3, stride 1), from dy and x
 * (any strides). Tile blocks run in order, each in two parallel steps: the transforms Y of
 * dy and V of x, by channel; then one GEMM per (group, xi), each adding into its own plane
 * of What, so every product is packed once and 16 equal items keep the threads busy. */
static enum status wino_weight_grad(const struct geom *g, struct tensor *dwm, int64_t ldc, const struct tensor *dy,
                                    const struct tensor *x)
{
    const int64_t TW = ceil_div(g->OW, 2), TT = ceil_div(g->OH, 2) * TW, T_all = g->N * TT;
    /* a block of Tb tiles holds 16*Tb*(O + C) transformed values (shared by the threads) */
    const int64_t per_tile = 16 * (int64_t)g->esz * (g->O + g->C);
    int64_t Tb = min64(min64(T_all, WINO_TILES), max64(16, 2 * WINO_WS_BYTES / per_tile));
    const int64_t nb = ceil_div(T_all, Tb);
    Tb = ceil_div(T_all, nb);
    const int64_t ldxi_y = plane_stride(g->O * Tb), ldxi_v = plane_stride(g->C * Tb);
    const enum dtype dt = g->f32 ? DTYPE_F32 : DTYPE_F64;
    struct tensor *YV = tensor_keep(tensor_empty(dt, TENSOR_SHAPE(16 * (ldxi_y + ldxi_v)), DEVICE_CPU));
    struct tensor *Wh = tensor_keep(tensor_empty(dt, TENSOR_SHAPE(16 * g->O * g->Cg), DEVICE_CPU));
    if (!YV || !Wh) {
        tensor_free(YV); tensor_free(Wh);
        return tensor_status();
    }
    char *Y = YV->storage->data, *V = Y + (size_t)(16 * ldxi_y) * g->esz, *Whp = Wh->storage->data;
    const int64_t xs[3] = {x->stride[1], x->stride[2], x->stride[3]}, ds[2] = {dy->stride[2], dy->stride[3]};
    const int64_t macs = g->N * g->O * g->P * g->K;
#pragma omp parallel if (macs >= PAR_MIN_MACS)
    for (int64_t blk = 0; blk < nb; blk++) {
        const int64_t t0 = blk * Tb, nt = min64(Tb, T_all - t0);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < g->O + g->C; r++)   /* rows: output channels of dy, then input channels of x */
            for (int64_t t = t0; t < t0 + nt;) {      /* row segments of tiles */
                const int64_t n = t / TT, th = t % TT / TW, tw = t % TW;
                const int64_t ns = min64(min64(TW - tw, t0 + nt - t), WINO_SEG);
                if (r < g->O) {
                    const void *dp = at(dy, n * dy->stride[0] + r * dy->stride[1]);
                    if (g->f32) wino_dy_f32((float *)Y + r * Tb, ldxi_y, dp, ds, g, th, tw, ns, t - t0);
                    else wino_dy_f64((double *)Y + r * Tb, ldxi_y, dp, ds, g, th, tw, ns, t - t0);
                } else {
                    const int64_t c = r - g->O;
                    const void *xp = at(x, n * x->stride[0] + c * x->stride[1]);
                    if (g->f32) wino_input_f32((float *)V + c * Tb, Tb, ldxi_v, xp, xs, 1, g, th, tw, ns, t - t0);
                    else wino_input_f64((double *)V + c * Tb, Tb, ldxi_v, xp, xs, 1, g, th, tw, ns, t - t0);
                }
                t += ns;
            }
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < g->G * 16; it++) {   /* What[gi][xi] += Y[xi][gi*Og..] @ V[xi][gi*Cg..]^T */
            const int64_t gi = it / 16, xi = it % 16;
            gemm(g->f32, false, true, g->Og, g->Cg, nt, Y + (size_t)(xi * ldxi_y + gi * g->Og * Tb) * g->esz, Tb,
                 V + (size_t)(xi * ldxi_v + gi * g->Cg * Tb) * g->esz, Tb, blk ? 1 : 0,
                 Whp + (size_t)(it * g->Og * g->Cg) * g->esz, g->Cg);
        }
    }
    if (g->f32) wino_dw_f32(g, (const float *)Whp, at(dwm, 0), ldc);
    else wino_dw_f64(g, (const double *)Whp, at(dwm, 0), ldc);
    tensor_free(YV);
    tensor_free(Wh);
    return STATUS_OK;
}

/* the transformed weights U of w (geometry g of the forward conv), through the caching allocator */
static struct tensor *wino_transform(const struct geom *g, const struct tensor *w)
{
    struct tensor *U = tensor_keep(tensor_empty(w->dtype, TENSOR_SHAPE(16 * g->O * g->Cg), DEVICE_CPU));
    if (!U) return NULL;
    if (g->f32) wino_weights_f32(g, at(w, 0), w->stride, U->storage->data);
    else wino_weights_f64(g, at(w, 0), w->stride, U->storage->data);
    return U;
}

/* dst[r][0:n] = src[r][0:n] for no rows (leading dimensions ld, ls), with non-temporal
 * stores where the SIMD alignment allows: an output written once should not first be
 * read into the cache (the write-allocate doubles the traffic of a memory-bound conv) */
static void stream_rows(bool f32, void *dst, int64_t ld, const void *src, int64_t ls, int64_t no, int64_t n)
{
    for (int64_t r = 0; r < no; r++) {
        int64_t j = 0;
        if (f32) {
            float *d = (float *)dst + r * ld;
            const float *s = (const float *)src + r * ls;
#ifdef __SSE2__
            for (; j < n && ((uintptr_t)(d + j) & 15); j++) d[j] = s[j];
            for (; j + 4 <= n; j += 4) _mm_stream_ps(d + j, _mm_loadu_ps(s + j));
#endif
            for (; j < n; j++) d[j] = s[j];
        } else {
            double *d = (double *)dst + r * ld;
            const double *s = (const double *)src + r * ls;
#ifdef __SSE2__
            for (; j < n && ((uintptr_t)(d + j) & 15); j++) d[j] = s[j];
            for (; j + 2 <= n; j += 2) _mm_stream_pd(d + j, _mm_loadu_pd(s + j));
#endif
            for (; j < n; j++) d[j] = s[j];
        }
    }
#ifdef __SSE2__
    _mm_sfence();   /* streamed stores are weakly ordered: make them visible before the barrier */
#endif
}


/* ---------------------------------------------------------------- few positions per image */

/* An image of at most SMALL_P output positions makes a GEMM of that many columns: too thin for
 * BLAS, which also packs the weights again for every image. Such convs take batches of images
 * instead, their positions side by side as the columns of one GEMM (at least SMALL_COLS of them,
 * and two images), through a staging block copied out image by image; the backward input gathers
 * dy the same way. Measured on 2 threads (Zen 4), ms before -> after: [4,1280,4,4] -> 1280
 * forward 20.0 -> 16.7, backward input 21.4 -> 12.6; [4,1280,8,8] backward input 49.0 -> 42.9;
 * [8,256,4,4] -> 128 forward 0.73 -> 0.64. The batches, like everything else here, depend on the
 * shapes only. */
#define SMALL_P (TILE_COLS / 2)
#define SMALL_COLS 64

/* images per batch (1: this path does not apply) */
static int64_t small_batch(const struct geom *g)
{
    if (g->direct || g->P > SMALL_P || g->N < 2) return 1;
    const int64_t nb = min64(g->N, max64(2, SMALL_COLS / g->P)), nbatch = ceil_div(g->N, nb);
    return ceil_div(g->N, nbatch);   /* balanced batches */
}

/* images per batch of the backward weight, whose GEMMs sum over the batch's positions: as many
 * as TILE_COLS columns hold (1: this path does not apply) */
static int64_t weight_batch(const struct geom *g)
{
    if (g->direct || g->P > SMALL_P || g->N < 2) return 1;
    const int64_t nb = min64(g->N, max64(2, TILE_COLS / g->P)), nbatch = ceil_div(g->N, nb);
    return ceil_div(g->N, nbatch);
}

/* out[n] (as [O, P], row stride ldc) = W (as [O, K], lda) conv x + bias, nb images a GEMM */
static enum status conv_forward_batched(const struct geom *g, struct tensor *o, int64_t ldc, const struct tensor *x,
                                        const struct tensor *wm, int64_t lda, const struct tensor *bias, int64_t nb)
{
    const int64_t nbatch = ceil_div(g->N, nb), cols = nb * g->P, base = nbatch * g->G;
    /* output-channel chunks of at least 128 rows: each repeats the im2col, which at 4x4 costs
     * about as much as a GEMM of 128 rows ([8,256,4,4] -> 128: 2.2x slower in 4 chunks than in 1) */
    const int64_t och = base >= PAR_ITEMS ? 1 : min64(ceil_div(PAR_ITEMS, base), max64(1, g->Og / 128));
    const int64_t oper = ceil_div(g->Og, och), n_oc = ceil_div(g->Og, oper);
    const int64_t csub = chunk_channels(g, g->Cg, cols);
    int64_t ws_stride;
    struct tensor *ws = workspace(g, csub * g->KK * cols + oper * cols, &ws_stride);
    if (!ws) return tensor_status();
    const int64_t xs[3] = {x->stride[1], x->stride[2], x->stride[3]};
    int64_t *tab = tap_table(g, xs[1], xs[2]);
    const int64_t items = base * n_oc, macs = g->N * g->O * g->P * g->K;
#pragma omp parallel for schedule(dynamic, 1) if (items > 1 && macs >= PAR_MIN_MACS)
    for (int64_t it = 0; it < items; it++) {
        const int64_t oc = it % n_oc, gi = it / n_oc % g->G, n0 = it / n_oc / g->G * nb;
        const int64_t nn = min64(nb, g->N - n0), np = nn * g->P;
        const int64_t o0 = gi * g->Og + oc * oper, no = min64(oper, g->Og - oc * oper);
        char *col = (char *)ws->storage->data + (size_t)(omp_get_thread_num() * ws_stride) * g->esz;
        char *C = col + (size_t)(csub * g->KK * cols) * g->esz;   /* [no, np] */
        double beta = start_from_bias(g, C, np, no, np, bias, o0);
        for (int64_t c0 = 0; c0 < g->Cg; c0 += csub) {
            const int64_t nc = min64(csub, g->Cg - c0);
            for (int64_t i = 0; i < nn; i++)
                im2col_image(g, tab, col + (size_t)(i * g->P) * g->esz,
                             at(x, (n0 + i) * x->stride[0] + (gi * g->Cg + c0) * x->stride[1]), xs, nc, np);
            conv_gemm(g, false, no, np, nc * g->KK, at(wm, o0 * lda + c0 * g->KK), lda, col, np, beta, C, np);
            beta = 1;
        }
        for (int64_t i = 0; i < nn; i++)
            for (int64_t r = 0; r < no; r++)
                memcpy(at(o, (n0 + i) * o->stride[0] + (o0 + r) * ldc), C + (size_t)(r * np + i * g->P) * g->esz,
                       (size_t)g->P * g->esz);
    }
    tensor_free(ws);
    free(tab);
    return STATUS_OK;
}

/* dx[n] (channels dxc apart, flat [H, W]) = the adjoint of conv by W (as [O, K], lda) applied
 * to dy[n] (as [O, P], ldb), nb images a GEMM */
static enum status conv_backward_input_batched(const struct geom *g, struct tensor *d, int64_t dxc,
                                               const struct tensor *dym, int64_t ldb, const struct tensor *wm,
                                               int64_t lda, int64_t nb)
{
    const int64_t nbatch = ceil_div(g->N, nb), cols = nb * g->P, base = nbatch * g->G;
    const int64_t cch = input_chunks(g, base);
    const int64_t cper = ceil_div(g->Cg, cch), n_cc = ceil_div(g->Cg, cper);
    const int64_t csub = chunk_channels(g, cper, cols);
    int64_t ws_stride;
    struct tensor *ws = workspace(g, g->Og * cols + csub * g->KK * cols, &ws_stride);
    if (!ws) return tensor_status();
    int64_t *tab = tap_table(g, g->W, 1);
    const int64_t items = base * n_cc, macs = g->N * g->O * g->P * g->K;
#pragma omp parallel for schedule(dynamic, 1) if (items > 1 && macs >= PAR_MIN_MACS)
    for (int64_t it = 0; it < items; it++) {
        const int64_t cc = it % n_cc, gi = it / n_cc % g->G, n0 = it / n_cc / g->G * nb;
        const int64_t nn = min64(nb, g->N - n0), np = nn * g->P;
        const int64_t c0 = cc * cper, nc = min64(cper, g->Cg - c0);
        char *dyb = (char *)ws->storage->data + (size_t)(omp_get_thread_num() * ws_stride) * g->esz;   /* [Og, np] */
        char *col = dyb + (size_t)(g->Og * cols) * g->esz;
        for (int64_t i = 0; i < nn; i++)
            for (int64_t r = 0; r < g->Og; r++)
                memcpy(dyb + (size_t)(r * np + i * g->P) * g->esz, at(dym, (n0 + i) * dym->stride[0] + (gi * g->Og + r) * ldb),
                       (size_t)g->P * g->esz);
        for (int64_t i = 0; i < nn; i++)
            for (int64_t c = 0; c < nc; c++)
                memset(at(d, (n0 + i) * d->stride[0] + (gi * g->Cg + c0 + c) * dxc), 0, (size_t)(g->H * g->W) * g->esz);
        for (int64_t s0 = 0; s0 < nc; s0 += csub) {
            const int64_t ns = min64(csub, nc - s0);
            conv_gemm(g, true, ns * g->KK, np, g->Og, at(wm, gi * g->Og * lda + (c0 + s0) * g->KK), lda, dyb, np, 0,
                 col, np);
            for (int64_t i = 0; i < nn; i++)
                col2im_image(g, tab, at(d, (n0 + i) * d->stride[0] + (gi * g->Cg + c0 + s0) * dxc), dxc,
                             col + (size_t)(i * g->P) * g->esz, ns, np);
        }
    }
    tensor_free(ws);
    free(tab);
    return STATUS_OK;
}

/* dW (as [O, K], row stride ldc) = sum over images of dy[n] (as [O, P], ldb) @ col[n]^T, nb
 * images a GEMM: the positions of a batch are the GEMM's reduction, where one image each gave
 * a reduction of P (16 at 4x4) and a pass over the whole dW block per image. Items: (group,
 * input-channel chunk), each summing its batches in order. */
static enum status conv_backward_weight_batched(const struct geom *g, struct tensor *dwm, int64_t ldc,
                                                const struct tensor *dym, int64_t ldb, const struct tensor *x,
                                                int64_t nb)
{
    const int64_t nbatch = ceil_div(g->N, nb), cols = nb * g->P;
    const int64_t cch = input_chunks(g, g->G);
    const int64_t cper = ceil_div(g->Cg, cch), n_cc = ceil_div(g->Cg, cper);
    const int64_t csub = chunk_channels(g, cper, cols);
    int64_t ws_stride;
    struct tensor *ws = workspace(g, g->Og * cols + csub * g->KK * cols, &ws_stride);
    if (!ws) return tensor_status();
    const int64_t xs[3] = {x->stride[1], x->stride[2], x->stride[3]};
    int64_t *tab = tap_table(g, xs[1], xs[2]);
    const int64_t items = g->G * n_cc, macs = g->N * g->O * g->P * g->K;
#pragma omp parallel for schedule(dynamic, 1) if (items > 1 && macs >= PAR_MIN_MACS)
    for (int64_t it = 0; it < items; it++) {
        const int64_t cc = it % n_cc, gi = it / n_cc;
        const int64_t c0 = cc * cper, nc = min64(cper, g->Cg - c0);
        char *dyb = (char *)ws->storage->data + (size_t)(omp_get_thread_num() * ws_stride) * g->esz;   /* [Og, np] */
        char *col = dyb + (size_t)(g->Og * cols) * g->esz;
        for (int64_t bi = 0; bi < nbatch; bi++) {
            const int64_t n0 = bi * nb, nn = min64(nb, g->N - n0), np = nn * g->P;
            for (int64_t i = 0; i < nn; i++)
                for (int64_t r = 0; r < g->Og; r++)
                    memcpy(dyb + (size_t)(r * np + i * g->P) * g->esz,
                           at(dym, (n0 + i) * dym->stride[0] + (gi * g->Og + r) * ldb), (size_t)g->P * g->esz);
            for (int64_t s0 = 0; s0 < nc; s0 += csub) {
                const int64_t ns = min64(csub, nc - s0);
                for (int64_t i = 0; i < nn; i++)
                    im2col_image(g, tab, col + (size_t)(i * g->P) * g->esz,
                                 at(x, (n0 + i) * x->stride[0] + (gi * g->Cg + c0 + s0) * x->stride[1]), xs, ns, np);
                gemm(g->f32, false, true, g->Og, ns * g->KK, np, dyb, np, col, np, bi ? 1 : 0,
                     at(dwm, gi * g->Og * ldc + (c0 + s0) * g->KK), ldc);
            }
        }
    }
    free(tab);
    tensor_free(ws);
    return STATUS_OK;
}

/* ---------------------------------------------------------------- forward */

enum status cpu_conv2d(struct tensor *out, const struct tensor *x, const struct tensor *w, const struct tensor *bias,
                       const struct conv2d_params *p)
{
    struct geom g;
    enum status s;
    if ((s = geom_init(&g, x, w, p, "conv2d"))) return s;
    if (!shape_is(out, g.N, g.O, g.OH, g.OW) || out->dtype != x->dtype ||
        (bias && (bias->ndim != 1 || bias->shape[0] != g.O || bias->dtype != x->dtype)))
        return tensor_fail(STATUS_SHAPE, "conv2d: output or bias does not fit");
    if (g.N == 0 || g.O == 0) return STATUS_OK;
    int64_t lda, ldc, ldx = 0, ws_stride = 0;
    struct tensor *wtmp, *otmp, *ws = NULL;
    struct tensor *o = matrix_or_temp(out, 1, &ldc, &otmp);        /* out[n] as [O, P] */
    if (!o) return tensor_status();
    if (wino_fits(&g)) {
        struct tensor *U = wino_transform(&g, w);
        s = U ? wino_run(&g, o, ldc, x, U->storage->data, false, bias) : tensor_status();
        if (!s && otmp) s = cpu_copy(out, otmp);
        tensor_free(U);
        tensor_free(otmp);
        return s;
    }
    const struct tensor *wm = matrix_or_copy(w, 0, &lda, &wtmp);   /* W as [O, K] */
    const int64_t nb = g.K <= THIN_K_MAX && thin_fits(&g, g.tile) ? 1 : small_batch(&g);
    if (nb > 1) {
        s = wm ? conv_forward_batched(&g, o, ldc, x, wm, lda, bias, nb) : tensor_status();
        if (!s && otmp) s = cpu_copy(out, otmp);
        tensor_free(wtmp);
        tensor_free(otmp);
        return s;
    }
    const bool direct = g.direct && as_matrix(x, 1, &ldx);         /* x[n] as [C, P] is col */
    const int64_t csub = chunk_channels(&g, g.Cg, g.tile);
    /* items: (image, group, tile, output-channel chunk); O is split only when images x
     * groups x tiles are too few to keep the threads busy (each chunk repeats the im2col) */
    const int64_t base_items = g.N * g.G * g.ntiles;
    const int64_t och = base_items >= PAR_ITEMS ? 1 : min64(ceil_div(PAR_ITEMS, base_items), max64(1, g.Og / 32));
    const int64_t oper = ceil_div(g.Og, och), n_oc = ceil_div(g.Og, oper);
    /* With a small K the conv is bound by writing the output: each tile is then summed in a
     * scratch block (in cache) and streamed out; the register-blocked kernel streams its own
     * blocks out. */
    const bool thin = !direct && thin_fits(&g, g.tile);
    const bool staged = !direct && !thin && g.K <= 256 && oper * g.tile * (int64_t)g.esz <= WS_BYTES / 2;
    if (!direct) ws = workspace(&g, csub * g.KK * g.tile + (staged ? oper * g.tile : 0), &ws_stride);
    if (!wm || !o || (!direct && !ws)) {
        tensor_free(wtmp); tensor_free(otmp); tensor_free(ws);
        return tensor_status();
    }
    const int64_t items = base_items * n_oc;
    const int64_t xs[3] = {x->stride[1], x->stride[2], x->stride[3]};
    const int64_t macs = g.N * g.O * g.P * g.K;
#pragma omp parallel for schedule(dynamic, 1) if (items > 1 && macs >= PAR_MIN_MACS)
    for (int64_t it = 0; it < items; it++) {
        const int64_t oc = it % n_oc, t = it / n_oc % g.ntiles, gi = it / n_oc / g.ntiles % g.G,
                      n = it / n_oc / g.ntiles / g.G;
        const int64_t p0 = t * g.tile, np = min64(g.tile, g.P - p0);
        const int64_t o0 = gi * g.Og + oc * oper, no = min64(oper, g.Og - oc * oper);
        char *col = ws ? (char *)ws->storage->data + (size_t)(omp_get_thread_num() * ws_stride) * g.esz : NULL;
        char *Cout = at(o, n * o->stride[0] + o0 * ldc + p0);   /* out[n, o0.., p0..] */
        char *C = staged ? col + (size_t)(csub * g.KK * g.tile) * g.esz : Cout;
        const int64_t ldC = staged ? np : ldc;
        const char *A = at(wm, o0 * lda);
        const int64_t xoff = n * x->stride[0] + gi * g.Cg * x->stride[1];
#ifdef THIN_AVX512
        if (thin) {   /* the first chunk starts from the bias, the last streams the blocks out */
            const float *bp = bias ? CPU_PTR(const float, bias) + bias->offset + o0 * bias->stride[0] : NULL;
            for (int64_t c0 = 0; c0 < g.Cg || c0 == 0; c0 += csub) {   /* once if no channels: the bias */
                const int64_t nc = min64(csub, g.Cg - c0);
                im2col(&g, col, at(x, xoff + c0 * x->stride[1]), xs, nc, p0, np, np);
                thin_gemm(false, no, np, nc * g.KK, (const float *)A + c0 * g.KK, lda, (const float *)col, np,
                          c0 ? NULL : bp, bias ? bias->stride[0] : 0, c0 > 0, (float *)Cout, ldc, c0 + nc >= g.Cg);
            }
            continue;
        }
#endif
        double beta = start_from_bias(&g, C, ldC, no, np, bias, o0);   /* the accumulator starts from the bias */
        if (direct) {
            conv_gemm(&g, false, no, np, g.Cg, A, lda, at(x, xoff + p0), ldx, beta, C, ldC);
            continue;
        }
        for (int64_t c0 = 0; c0 < g.Cg; c0 += csub) {
            const int64_t nc = min64(csub, g.Cg - c0);
            im2col(&g, col, at(x, xoff + c0 * x->stride[1]), xs, nc, p0, np, np);
            conv_gemm(&g, false, no, np, nc * g.KK, A + (size_t)(c0 * g.KK) * g.esz, lda, col, np, beta, C, ldC);
            beta = 1;
        }
        if (staged) stream_rows(g.f32, Cout, ldc, C, ldC, no, np);
    }
    s = otmp ? cpu_copy(out, otmp) : STATUS_OK;
    tensor_free(wtmp);
    tensor_free(otmp);
    tensor_free(ws);
    return s;
}

/* ---------------------------------------------------------------- backward input */

enum status cpu_conv2d_backward_input(struct tensor *dx, const struct tensor *dy, const struct tensor *w,
                                      const struct conv2d_params *p)
{
    struct geom g;
    enum status s;
    if ((s = geom_init(&g, dx, w, p, "conv2d_backward_input"))) return s;
    if (!shape_is(dy, g.N, g.O, g.OH, g.OW) || dy->dtype != dx->dtype)
        return tensor_fail(STATUS_SHAPE, "conv2d_backward_input: dy does not fit");
    if (g.N == 0 || g.C == 0) return STATUS_OK;
    if (g.O == 0) return cpu_fill(dx, 0);
    int64_t lda, ldb, dxc, ws_stride = 0;
    struct tensor *wtmp, *dytmp, *dxtmp, *ws = NULL;
    struct tensor *d = matrix_or_temp(dx, 1, &dxc, &dxtmp);
    if (!d) return tensor_status();
    if (wino_fits(&g) && g.pt <= 2 && g.pl <= 2 && p->pad_bottom <= 2 && p->pad_right <= 2) {
        /* dx = conv(dy, w rotated 180 degrees with in/out channels swapped, padding 2 - p) */
        struct geom t = g;
        t.C = g.O; t.O = g.C; t.Cg = g.Og; t.Og = g.Cg;
        t.H = g.OH; t.W = g.OW; t.OH = g.H; t.OW = g.W;
        t.pt = 2 - g.pt; t.pl = 2 - g.pl;
        t.K = t.Cg * 9; t.P = t.OH * t.OW;
        struct tensor *U = wino_transform(&g, w);
        s = U ? wino_run(&t, d, dxc, dy, U->storage->data, true, NULL) : tensor_status();
        if (!s && dxtmp) s = cpu_copy(dx, dxtmp);
        tensor_free(U);
        tensor_free(dxtmp);
        return s;
    }
    const struct tensor *wm = matrix_or_copy(w, 0, &lda, &wtmp), *dym = matrix_or_copy(dy, 1, &ldb, &dytmp);
    const int64_t nb = small_batch(&g);
    if (nb > 1) {
        s = wm && dym ? conv_backward_input_batched(&g, d, dxc, dym, ldb, wm, lda, nb) : tensor_status();
        if (!s && dxtmp) s = cpu_copy(dx, dxtmp);
        tensor_free(wtmp);
        tensor_free(dytmp);
        tensor_free(dxtmp);
        return s;
    }
    /* items: (image, group, input-channel chunk), each owning its slice of dx, so col2im
     * never races */
    const int64_t base_items = g.N * g.G, cch = input_chunks(&g, base_items);
    const int64_t cper = ceil_div(g.Cg, cch), n_cc = ceil_div(g.Cg, cper);
    const int64_t csub = chunk_channels(&g, cper, g.tile);
    if (!g.direct) ws = workspace(&g, csub * g.KK * g.tile, &ws_stride);
    if (!wm || !dym || !d || (!g.direct && !ws)) {
        tensor_free(wtmp); tensor_free(dytmp); tensor_free(dxtmp); tensor_free(ws);
        return tensor_status();
    }
    const int64_t items = base_items * n_cc;
    const int64_t macs = g.N * g.O * g.P * g.K;
#pragma omp parallel for schedule(dynamic, 1) if (items > 1 && macs >= PAR_MIN_MACS)
    for (int64_t it = 0; it < items; it++) {
        const int64_t cc = it % n_cc, gi = it / n_cc % g.G, n = it / n_cc / g.G;
        const int64_t c0 = cc * cper, nc = min64(cper, g.Cg - c0);
        char *dxp = at(d, n * d->stride[0] + (gi * g.Cg + c0) * dxc);
        const char *A = at(wm, gi * g.Og * lda + c0 * g.KK);   /* W[g*Og.., c0*KK..], read transposed */
        const char *dyp = at(dym, n * dym->stride[0] + gi * g.Og * ldb);
        if (g.direct) {   /* dx[c, p] = sum_o W[o, c] dy[o, p], straight into dx */
            conv_gemm(&g, true, nc, g.P, g.Og, A, lda, dyp, ldb, 0, dxp, dxc);
            continue;
        }
        for (int64_t c = 0; c < nc; c++) memset(dxp + (size_t)(c * dxc) * g.esz, 0, (size_t)(g.H * g.W) * g.esz);
        char *col = (char *)ws->storage->data + (size_t)(omp_get_thread_num() * ws_stride) * g.esz;
        for (int64_t t = 0; t < g.ntiles; t++) {
            const int64_t p0 = t * g.tile, np = min64(g.tile, g.P - p0);
            for (int64_t s0 = 0; s0 < nc; s0 += csub) {
                const int64_t ns = min64(csub, nc - s0);
                conv_gemm(&g, true, ns * g.KK, np, g.Og, A + (size_t)(s0 * g.KK) * g.esz, lda,
                     dyp + (size_t)p0 * g.esz, ldb, 0, col, np);
                col2im(&g, dxp + (size_t)(s0 * dxc) * g.esz, dxc, col, ns, p0, np, np);
            }
        }
    }
    s = dxtmp ? cpu_copy(dx, dxtmp) : STATUS_OK;
    tensor_free(wtmp);
    tensor_free(dytmp);
    tensor_free(dxtmp);
    tensor_free(ws);
    return s;
}

/* ---------------------------------------------------------------- backward weight */

/* db[o] = sum over images and positions of dy[n, o, :] in double, in a fixed order: 8
 * running sums (so the loop vectorises) added up at the end */
#define DEFINE_ROW_SUM(T, SUF)                                                                                \
    static double row_sum_##SUF(const T *r, int64_t n)                                                      \
    {                                                                                                       \
        double acc[8] = {0};                                                                                \
        int64_t j = 0;                                                                                      \
        for (; j + 8 <= n; j += 8)                                                                          \
            for (int k = 0; k < 8; k++) acc[k] += r[j + k];                                                 \
        for (; j < n; j++) acc[0] += r[j];                                                                  \
        return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));           \
    }
DEFINE_ROW_SUM(float, f32)
DEFINE_ROW_SUM(double, f64)

static void bias_grad(const struct geom *g, struct tensor *db, const struct tensor *dy, int64_t ld)
{
#pragma omp parallel for schedule(static) if (g->N * g->O * g->P >= CPU_PAR_MIN)
    for (int64_t o = 0; o < g->O; o++) {
        double acc = 0;
        for (int64_t n = 0; n < g->N; n++) {
            const int64_t off = dy->offset + n * dy->stride[0] + o * ld;
            acc += g->f32 ? row_sum_f32(CPU_PTR(const float, dy) + off, g->P)
                          : row_sum_f64(CPU_PTR(const double, dy) + off, g->P);
        }
        const int64_t i = db->offset + o * db->stride[0];
        if (g->f32) CPU_PTR(float, db)[i] = (float)acc;
        else CPU_PTR(double, db)[i] = acc;
    }
}

enum status cpu_conv2d_backward_weight(struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                       const struct tensor *x, const struct conv2d_params *p)
{
    struct geom g;
    enum status s;
    if ((s = geom_init(&g, x, dw, p, "conv2d_backward_weight"))) return s;
    if (!shape_is(dy, g.N, g.O, g.OH, g.OW) || dy->dtype != x->dtype ||
        (db && (db->ndim != 1 || db->shape[0] != g.O || db->dtype != x->dtype)))
        return tensor_fail(STATUS_SHAPE, "conv2d_backward_weight: dy or db does not fit");
    if (g.O == 0) return STATUS_OK;
    int64_t lda, ldc, ldx = 0, ws_stride = 0;
    struct tensor *dytmp, *dwtmp = NULL, *ws = NULL;
    const struct tensor *dym = matrix_or_copy(dy, 1, &lda, &dytmp);   /* dy[n] as [O, P] */
    if (!dym) return tensor_status();
    if (db) bias_grad(&g, db, dym, lda);
    if (g.N == 0 || g.K == 0) {
        tensor_free(dytmp);
        return cpu_fill(dw, 0);
    }
    struct tensor *dwm = matrix_or_temp(dw, 0, &ldc, &dwtmp);         /* dW as [O, K] */
    if (dwm && wino_fits(&g)) {
        s = wino_weight_grad(&g, dwm, ldc, dym, x);
        if (!s && dwtmp) s = cpu_copy(dw, dwtmp);
        tensor_free(dytmp);
        tensor_free(dwtmp);
        return s;
    }
    const int64_t nbw = weight_batch(&g);
    if (dwm && nbw > 1) {
        s = conv_backward_weight_batched(&g, dwm, ldc, dym, lda, x, nbw);
        if (!s && dwtmp) s = cpu_copy(dw, dwtmp);
        tensor_free(dytmp);
        tensor_free(dwtmp);
        return s;
    }
    /* items: (group, input-channel chunk, output-channel chunk, position chunk), each
     * summing its products over images and tiles in order. Splitting input channels costs
     * nothing extra, so it comes first. With a small K (few channels) the rest of the split
     * goes over positions instead: each chunk sums into its own partial dW and the partials
     * are added in chunk order afterwards (cheap, as dW is small then). Otherwise it goes
     * over output channels, which repeats the im2col (free on the direct 1x1 path). */
    const bool direct = g.direct && as_matrix(x, 1, &ldx);
    const int64_t want = g.G >= PAR_ITEMS ? 1 : ceil_div(PAR_ITEMS, g.G);
    const int64_t cch = input_chunks(&g, g.G);
    const int64_t rest = ceil_div(want, cch);
    /* positions are this GEMM's reduction: with a small K, take as many per tile as the
     * workspace holds (fewer, larger GEMMs), but leave enough tiles to split over */
    plan_tiles(&g, max64(TILE_COLS, min64(WS_BYTES / (int64_t)(g.K * g.esz), ceil_div(g.N * g.P, rest))));
    const int64_t seq = g.N * g.ntiles;   /* (image, tile) pairs */
    const bool split_p = rest > 1 && !direct && seq > 1 &&
                         min64(rest, seq) * g.O * g.K * (int64_t)g.esz <= PARTIAL_BYTES;
    const int64_t och = split_p ? 1 : max64(1, min64(rest, g.Og / 32));
    const int64_t pch = split_p ? min64(rest, seq) : 1;
    const int64_t cper = ceil_div(g.Cg, cch), n_cc = ceil_div(g.Cg, cper);
    const int64_t oper = ceil_div(g.Og, och), n_oc = ceil_div(g.Og, oper);
    const int64_t pper = ceil_div(seq, pch), n_pc = ceil_div(seq, pper);
    const int64_t csub = chunk_channels(&g, cper, g.tile);
    struct tensor *part = NULL;
    if (!direct) ws = workspace(&g, csub * g.KK * g.tile, &ws_stride);
    if (n_pc > 1) part = tensor_keep(tensor_empty(x->dtype, TENSOR_SHAPE(n_pc * g.O * g.K), DEVICE_CPU));
    if (!dwm || (!direct && !ws) || (n_pc > 1 && !part)) {
        tensor_free(dytmp); tensor_free(dwtmp); tensor_free(ws); tensor_free(part);
        return tensor_status();
    }
    const int64_t items = g.G * n_cc * n_oc * n_pc;
    const int64_t xs[3] = {x->stride[1], x->stride[2], x->stride[3]};
    const int64_t macs = g.N * g.O * g.P * g.K;
#pragma omp parallel for schedule(dynamic, 1) if (items > 1 && macs >= PAR_MIN_MACS)
    for (int64_t it = 0; it < items; it++) {
        const int64_t pc = it % n_pc, oc = it / n_pc % n_oc, cc = it / n_pc / n_oc % n_cc, gi = it / n_pc / n_oc / n_cc;
        const int64_t c0 = cc * cper, nc = min64(cper, g.Cg - c0);
        const int64_t o0 = gi * g.Og + oc * oper, no = min64(oper, g.Og - oc * oper);
        /* the block of dW, or of this position chunk's partial dW ([O, K], contiguous) */
        char *C = part ? (char *)part->storage->data + (size_t)((pc * g.O + o0) * g.K + c0 * g.KK) * g.esz
                       : at(dwm, o0 * ldc + c0 * g.KK);
        const int64_t ldC = part ? g.K : ldc;
        char *col = ws ? (char *)ws->storage->data + (size_t)(omp_get_thread_num() * ws_stride) * g.esz : NULL;
        const int64_t i0 = pc * pper, i1 = min64(seq, i0 + pper);
        for (int64_t i = i0; i < i1; i++) {
            const int64_t n = i / g.ntiles, t = i % g.ntiles;
            const int64_t p0 = t * g.tile, np = min64(g.tile, g.P - p0);
            const char *A = at(dym, n * dym->stride[0] + o0 * lda);
            const int64_t xoff = n * x->stride[0] + (gi * g.Cg + c0) * x->stride[1];
            const double beta = i == i0 ? 0 : 1;
            if (direct) {   /* dW[o, c] += dy[o, p] x[c, p] */
                gemm(g.f32, false, true, no, nc, np, A + (size_t)p0 * g.esz, lda, at(x, xoff + p0), ldx, beta, C, ldC);
                continue;
            }
            for (int64_t s0 = 0; s0 < nc; s0 += csub) {
                const int64_t ns = min64(csub, nc - s0);
                im2col(&g, col, at(x, xoff + s0 * x->stride[1]), xs, ns, p0, np, np);
                gemm(g.f32, false, true, no, ns * g.KK, np, A + (size_t)p0 * g.esz, lda, col, np, beta,
                     C + (size_t)(s0 * g.KK) * g.esz, ldC);
            }
        }
    }
    if (part) {   /* dW = partial 0 + partial 1 + ..., in that order */
        const int64_t OK = g.O * g.K;
#pragma omp parallel for schedule(static) if (OK * n_pc >= CPU_PAR_MIN)
        for (int64_t o = 0; o < g.O; o++)
            for (int64_t k = 0; k < g.K; k++) {
                double acc = 0;
                for (int64_t pc = 0; pc < n_pc; pc++) {
                    const int64_t i = pc * OK + o * g.K + k;
                    acc += g.f32 ? (double)CPU_PTR(const float, part)[i] : CPU_PTR(const double, part)[i];
                }
                const int64_t d = dwm->offset + o * ldc + k;
                if (g.f32) CPU_PTR(float, dwm)[d] = (float)acc;
                else CPU_PTR(double, dwm)[d] = acc;
            }
        tensor_free(part);
    }
    s = dwtmp ? cpu_copy(dw, dwtmp) : STATUS_OK;
    tensor_free(dytmp);
    tensor_free(dwtmp);
    tensor_free(ws);
    return s;
}
