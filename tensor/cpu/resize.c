/* resize.c — image resampling (torch.nn.functional.interpolate 'nearest', 'bilinear',
 * 'bicubic', no antialias) and avg_pool2d, forward and backward, on [N,C,H,W].
 *
 * Resampling is separable: along each axis, output index o reads K input taps (1 nearest,
 * 2 bilinear, 4 bicubic) with fixed weights, so
 *     out[oy][ox] = sum_a sum_b wy[oy][a] * wx[ox][b] * x[iy[oy][a]][ix[ox][b]].
 * The backward is the transpose of that. Scattering it would need atomics or per-thread
 * planes to be parallel; instead each axis plan also lists, for every input index, the
 * (output, weight) pairs it feeds in increasing output order, so the backward gathers: every
 * dx element is a fixed-order sum written once, whatever thread computes it.
 * Source coordinates, weights and sums are in double for both dtypes: torch computes the
 * coordinates in float for f32, up to ~3e-5 px off at 512 px; here f32 results stay within
 * rounding (~1e-7) of the f64 ones. */
#include "tensor/cpu/cpu.h"

#include <math.h>
#include <stdlib.h>

/* ---------------------------------------------------------------- axis plans */

struct axis {
    int K;                  /* taps per output */
    int64_t n_in, n_out;
    int64_t *tap;           /* [n_out*K] input index of tap k of output o */
    double *w;              /* [n_out*K] its weight */
    int64_t *first;         /* [n_in+1] inverse lists: entries first[i] .. first[i+1]-1 */
    int64_t *inv_out;       /* [n_out*K] output index fed by input i */
    double *inv_w;          /* [n_out*K] with this weight */
};

static void axis_free(struct axis *a)
{
    free(a->tap);
    free(a->w);
    free(a->first);
    free(a->inv_out);
    free(a->inv_w);
}

/* torch's cubic convolution kernel with A = -0.75: |x| <= 1 and 1 < |x| < 2 pieces */
#define CUBIC_A (-0.75)
static double cubic1(double x) { return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1; }
static double cubic2(double x) { return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A; }

static int64_t clamp_index(int64_t i, int64_t n) { return i < 0 ? 0 : i >= n ? n - 1 : i; }

static enum status axis_plan(struct axis *a, int64_t n_in, int64_t n_out, enum resize_mode mode, bool align_corners)
{
    *a = (struct axis){.K = mode == RESIZE_NEAREST ? 1 : mode == RESIZE_BILINEAR ? 2 : 4, .n_in = n_in, .n_out = n_out};
    const int K = a->K;
    const size_t m = (size_t)(n_out * K);
    a->tap = malloc(m * sizeof *a->tap);
    a->w = malloc(m * sizeof *a->w);
    a->first = calloc((size_t)n_in + 1, sizeof *a->first);
    a->inv_out = malloc(m * sizeof *a->inv_out);
    a->inv_w = malloc(m * sizeof *a->inv_w);
    if (!a->tap || !a->w || !a->first || !a->inv_out || !a->inv_w) {
        axis_free(a);
        return tensor_fail(STATUS_OOM, "resize: out of host memory for the index tables");
    }
    /* torch's area_pixel_compute_scale / area_pixel_compute_source_index */
    const double scale = align_corners ? (n_out > 1 ? (double)(n_in - 1) / (double)(n_out - 1) : 0.0)
                                       : (double)n_in / (double)n_out;
    /* torch's nearest reads floorf(o * scale) with scale = (float)n_in / n_out, in float32
     * (its backward always, its forward for f32); exact floor(o * n_in / n_out) differs for
     * some sizes (2 -> 82: o = 41 reads 0, not 1). Both dtypes use this rule so they pick
     * the same pixels (torch 1.13's f64 NCHW forward alone multiplies in double). */
    const float nearest_scale = (float)n_in / (float)n_out;
    for (int64_t o = 0; o < n_out; o++) {
        int64_t *tap = a->tap + o * K;
        double *w = a->w + o * K;
        if (mode == RESIZE_NEAREST) {
            int64_t i = (int64_t)floorf((float)o * nearest_scale);
            tap[0] = i < n_in - 1 ? i : n_in - 1;
            w[0] = 1;
            continue;
        }
        double src = align_corners ? scale * (double)o : scale * ((double)o + 0.5) - 0.5;
        if (mode == RESIZE_BILINEAR) {
            if (src < 0) src = 0;   /* linear clamps the source index; cubic clamps taps */
            int64_t i0 = (int64_t)floor(src);
            if (i0 > n_in - 1) i0 = n_in - 1;
            double l1 = fmin(fmax(src - (double)i0, 0.0), 1.0);
            tap[0] = i0;
            tap[1] = i0 + (i0 < n_in - 1 ? 1 : 0);
            w[0] = 1 - l1;
            w[1] = l1;
        } else {
            double f = floor(src), t = src - f;
            int64_t i0 = (int64_t)f;
            w[0] = cubic2(t + 1);
            w[1] = cubic1(t);
            w[2] = cubic1(1 - t);
            w[3] = cubic2(2 - t);
            for (int k = 0; k < 4; k++) tap[k] = clamp_index(i0 - 1 + k, n_in);
        }
    }
    /* inverse lists by counting sort, filled in increasing (o, k) order */
    for (size_t j = 0; j < m; j++) a->first[a->tap[j] + 1]++;
    for (int64_t i = 0; i < n_in; i++) a->first[i + 1] += a->first[i];
    int64_t *fill = malloc((size_t)n_in * sizeof *fill);
    if (!fill) {
        axis_free(a);
        return tensor_fail(STATUS_OOM, "resize: out of host memory for the index tables");
    }
    memcpy(fill, a->first, (size_t)n_in * sizeof *fill);
    for (size_t j = 0; j < m; j++) {
        int64_t e = fill[a->tap[j]]++;
        a->inv_out[e] = (int64_t)j / K;
        a->inv_w[e] = a->w[j];
    }
    free(fill);
    return STATUS_OK;
}

/* ---------------------------------------------------------------- resize kernels */

/* element offset of plane p = n*C + c */
static inline int64_t plane_offset(const struct tensor *t, int64_t p)
{
    return t->offset + (p / t->shape[1]) * t->stride[0] + (p % t->shape[1]) * t->stride[1];
}

#define DEFINE_RESIZE(T, SUF)                                                                               \
    /* rows of the output in parallel: out row (p, oy) reads Ky input rows */                                \
    static void resize_fwd_##SUF(struct tensor *out, const struct tensor *x, const struct axis *ay,         \
                                 const struct axis *ax)                                                     \
    {                                                                                                       \
        const int64_t P = out->shape[0] * out->shape[1], OH = out->shape[2], OW = out->shape[3];             \
        const int Ky = ay->K, Kx = ax->K;                                                                    \
        const int64_t xs2 = x->stride[2], xs3 = x->stride[3], os2 = out->stride[2], os3 = out->stride[3];    \
        T *po = CPU_PTR(T, out);                                                                            \
        const T *px = CPU_PTR(const T, x);                                                                  \
        _Pragma("omp parallel for schedule(static) if (P * OH * OW * Ky * Kx >= CPU_PAR_MIN)")              \
        for (int64_t r = 0; r < P * OH; r++) {                                                              \
            const int64_t p = r / OH, oy = r % OH;                                                          \
            const T *xp = px + plane_offset(x, p);                                                          \
            T *orow = po + plane_offset(out, p) + oy * os2;                                                 \
            for (int64_t ox = 0; ox < OW; ox++) {                                                           \
                const int64_t *tx = ax->tap + ox * Kx;                                                      \
                const double *wx = ax->w + ox * Kx;                                                         \
                double acc = 0;                                                                             \
                for (int a = 0; a < Ky; a++) {                                                              \
                    const T *xr = xp + ay->tap[oy * Ky + a] * xs2;                                          \
                    double row = 0;                                                                         \
                    for (int b = 0; b < Kx; b++) row += wx[b] * (double)xr[tx[b] * xs3];                    \
                    acc += ay->w[oy * Ky + a] * row;                                                        \
                }                                                                                           \
                orow[ox * os3] = (T)acc;                                                                    \
            }                                                                                               \
        }                                                                                                   \
    }                                                                                                       \
    /* rows of dx in parallel: dx row (p, iy) gathers from the output rows it fed */                         \
    static void resize_bwd_##SUF(struct tensor *dx, const struct tensor *dy, const struct axis *ay,         \
                                 const struct axis *ax)                                                     \
    {                                                                                                       \
        const int64_t P = dx->shape[0] * dx->shape[1], H = dx->shape[2], W = dx->shape[3];                   \
        const int64_t ds2 = dy->stride[2], ds3 = dy->stride[3], xs2 = dx->stride[2], xs3 = dx->stride[3];    \
        T *pdx = CPU_PTR(T, dx);                                                                            \
        const T *pdy = CPU_PTR(const T, dy);                                                                \
        const int64_t work = P * dy->shape[2] * dy->shape[3] * ay->K * ax->K;                                \
        _Pragma("omp parallel for schedule(static) if (work >= CPU_PAR_MIN)")                               \
        for (int64_t r = 0; r < P * H; r++) {                                                               \
            const int64_t p = r / H, iy = r % H;                                                            \
            const T *gp = pdy + plane_offset(dy, p);                                                        \
            T *drow = pdx + plane_offset(dx, p) + iy * xs2;                                                 \
            for (int64_t ix = 0; ix < W; ix++) {                                                            \
                double acc = 0;                                                                             \
                for (int64_t e = ay->first[iy]; e < ay->first[iy + 1]; e++) {                               \
                    const T *gr = gp + ay->inv_out[e] * ds2;                                                \
                    double row = 0;                                                                         \
                    for (int64_t f = ax->first[ix]; f < ax->first[ix + 1]; f++)                             \
                        row += ax->inv_w[f] * (double)gr[ax->inv_out[f] * ds3];                             \
                    acc += ay->inv_w[e] * row;                                                              \
                }                                                                                           \
                drow[ix * xs3] = (T)acc;                                                                    \
            }                                                                                               \
        }                                                                                                   \
    }                                                                                                       \
    /* nearest, exactly 2x in both dims (the SD UNet / VAE upsampler): a copy, and its sum */                \
    static void up2_fwd_##SUF(struct tensor *out, const struct tensor *x)                                   \
    {                                                                                                       \
        const int64_t P = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3];                       \
        const int64_t xs2 = x->stride[2], xs3 = x->stride[3], os2 = out->stride[2], os3 = out->stride[3];    \
        T *po = CPU_PTR(T, out);                                                                            \
        const T *px = CPU_PTR(const T, x);                                                                  \
        _Pragma("omp parallel for schedule(static) if (P * H * W * 4 >= CPU_PAR_MIN)")                      \
        for (int64_t r = 0; r < P * H; r++) {                                                               \
            const int64_t p = r / H, iy = r % H;                                                            \
            const T *xr = px + plane_offset(x, p) + iy * xs2;                                               \
            T *o0 = po + plane_offset(out, p) + 2 * iy * os2, *o1 = o0 + os2;                               \
            if (xs3 == 1 && os3 == 1) {   /* widen one row, then duplicate it */                            \
                for (int64_t ix = 0; ix < W; ix++) o0[2 * ix] = o0[2 * ix + 1] = xr[ix];                    \
                memcpy(o1, o0, (size_t)(2 * W) * sizeof(T));                                                \
            } else {                                                                                        \
                for (int64_t ix = 0; ix < W; ix++) {                                                        \
                    const T v = xr[ix * xs3];                                                               \
                    o0[2 * ix * os3] = v; o0[(2 * ix + 1) * os3] = v;                                       \
                    o1[2 * ix * os3] = v; o1[(2 * ix + 1) * os3] = v;                                       \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
    }                                                                                                       \
    /* same summation order as the general gather, so both paths agree bit for bit */                       \
    static void up2_bwd_##SUF(struct tensor *dx, const struct tensor *dy)                                   \
    {                                                                                                       \
        const int64_t P = dx->shape[0] * dx->shape[1], H = dx->shape[2], W = dx->shape[3];                   \
        const int64_t xs2 = dx->stride[2], xs3 = dx->stride[3], ds2 = dy->stride[2], ds3 = dy->stride[3];    \
        T *pdx = CPU_PTR(T, dx);                                                                            \
        const T *pdy = CPU_PTR(const T, dy);                                                                \
        _Pragma("omp parallel for schedule(static) if (P * H * W * 4 >= CPU_PAR_MIN)")                      \
        for (int64_t r = 0; r < P * H; r++) {                                                               \
            const int64_t p = r / H, iy = r % H;                                                            \
            T *drow = pdx + plane_offset(dx, p) + iy * xs2;                                                 \
            const T *g0 = pdy + plane_offset(dy, p) + 2 * iy * ds2, *g1 = g0 + ds2;                         \
            if (xs3 == 1 && ds3 == 1) {                                                                     \
                for (int64_t ix = 0; ix < W; ix++)                                                          \
                    drow[ix] = (T)(((double)g0[2 * ix] + (double)g0[2 * ix + 1]) +                          \
                                   ((double)g1[2 * ix] + (double)g1[2 * ix + 1]));                          \
            } else {                                                                                        \
                for (int64_t ix = 0; ix < W; ix++) {                                                        \
                    const int64_t a = 2 * ix * ds3, b = a + ds3;                                            \
                    drow[ix * xs3] = (T)(((double)g0[a] + (double)g0[b]) + ((double)g1[a] + (double)g1[b])); \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
    }
DEFINE_RESIZE(float, f32)
DEFINE_RESIZE(double, f64)

static bool is_up2(const struct tensor *small, const struct tensor *big, enum resize_mode mode)
{
    return mode == RESIZE_NEAREST && big->shape[2] == 2 * small->shape[2] && big->shape[3] == 2 * small->shape[3];
}

static enum status check_images(const char *op, const struct tensor *a, const struct tensor *b)
{
    enum status s;
    if ((s = cpu_need_float(b, op))) return s;
    if (a->ndim != 4 || b->ndim != 4 || a->dtype != b->dtype || a->shape[0] != b->shape[0] ||
        a->shape[1] != b->shape[1])
        return tensor_fail(STATUS_SHAPE, "%s: needs two [N,C,*,*] tensors of one dtype with the same N and C", op);
    return STATUS_OK;
}

enum status cpu_resize(struct tensor *out, const struct tensor *x, enum resize_mode mode, bool align_corners)
{
    enum status s;
    if ((s = check_images("resize", out, x))) return s;
    if (tensor_numel(out) == 0) return STATUS_OK;
    if (x->shape[2] == 0 || x->shape[3] == 0)
        return tensor_fail(STATUS_SHAPE, "resize: cannot resample an empty image to a non-empty one");
    if (is_up2(x, out, mode)) {
        if (x->dtype == DTYPE_F32) up2_fwd_f32(out, x);
        else up2_fwd_f64(out, x);
        return STATUS_OK;
    }
    struct axis ay, ax;
    if ((s = axis_plan(&ay, x->shape[2], out->shape[2], mode, align_corners))) return s;
    if ((s = axis_plan(&ax, x->shape[3], out->shape[3], mode, align_corners))) { axis_free(&ay); return s; }
    if (x->dtype == DTYPE_F32) resize_fwd_f32(out, x, &ay, &ax);
    else resize_fwd_f64(out, x, &ay, &ax);
    axis_free(&ay);
    axis_free(&ax);
    return STATUS_OK;
}

enum status cpu_resize_backward(struct tensor *dx, const struct tensor *dy, enum resize_mode mode, bool align_corners)
{
    enum status s;
    if ((s = check_images("resize_backward", dx, dy))) return s;
    if (tensor_numel(dx) == 0) return STATUS_OK;
    if (tensor_numel(dy) == 0) return cpu_fill(dx, 0);
    if (is_up2(dx, dy, mode)) {
        if (dy->dtype == DTYPE_F32) up2_bwd_f32(dx, dy);
        else up2_bwd_f64(dx, dy);
        return STATUS_OK;
    }
    struct axis ay, ax;
    if ((s = axis_plan(&ay, dx->shape[2], dy->shape[2], mode, align_corners))) return s;
    if ((s = axis_plan(&ax, dx->shape[3], dy->shape[3], mode, align_corners))) { axis_free(&ay); return s; }
    if (dy->dtype == DTYPE_F32) resize_bwd_f32(dx, dy, &ay, &ax);
    else resize_bwd_f64(dx, dy, &ay, &ax);
    axis_free(&ay);
    axis_free(&ax);
    return STATUS_OK;
}

/* ---------------------------------------------------------------- avg_pool2d */

/* One axis of a pooling window, torch semantics (no ceil_mode): output o covers
 * [o*stride - pad, min(o*stride - pad + kernel, n + pad)), clipped to [lo, hi) inside the
 * input; `padded` is the unclipped length (the count_include_pad divisor). */
struct window { int64_t lo, hi, padded; };

static inline struct window pool_window(int64_t o, int64_t n, int k, int stride, int pad)
{
    int64_t start = o * stride - pad, end = start + k;
    if (end > n + pad) end = n + pad;
    struct window w = {start < 0 ? 0 : start, end < n ? end : n, end - start};
    return w;
}

static inline double pool_divisor(struct window wy, struct window wx, bool count_include_pad)
{
    return count_include_pad ? (double)(wy.padded * wx.padded) : (double)((wy.hi - wy.lo) * (wx.hi - wx.lo));
}

/* outputs o whose window holds input i: o*stride - pad <= i < o*stride - pad + kernel */
static inline void pool_range(int64_t i, int64_t n_out, int k, int stride, int pad, int64_t *lo, int64_t *hi)
{
    int64_t a = i + pad - k;   /* o > a / stride, floor division (a may be negative) */
    int64_t q = a >= 0 ? a / stride : -((-a + stride - 1) / stride);
    *lo = q + 1 > 0 ? q + 1 : 0;
    int64_t h = (i + pad) / stride + 1;
    *hi = h < n_out ? h : n_out;
}

#define DEFINE_POOL(T, SUF)                                                                                 \
    static void pool_fwd_##SUF(struct tensor *out, const struct tensor *x, const struct pool2d_params *q)   \
    {                                                                                                       \
        const int64_t P = out->shape[0] * out->shape[1], OH = out->shape[2], OW = out->shape[3];             \
        const int64_t H = x->shape[2], W = x->shape[3];                                                      \
        const int64_t xs2 = x->stride[2], xs3 = x->stride[3], os2 = out->stride[2], os3 = out->stride[3];    \
        T *po = CPU_PTR(T, out);                                                                            \
        const T *px = CPU_PTR(const T, x);                                                                  \
        _Pragma("omp parallel for schedule(static) if (P * OH * OW * q->kernel_h * q->kernel_w >= CPU_PAR_MIN)") \
        for (int64_t r = 0; r < P * OH; r++) {                                                              \
            const int64_t p = r / OH, oy = r % OH;                                                          \
            const struct window wy = pool_window(oy, H, q->kernel_h, q->stride_h, q->pad_h);                \
            const T *xp = px + plane_offset(x, p);                                                          \
            T *orow = po + plane_offset(out, p) + oy * os2;                                                 \
            for (int64_t ox = 0; ox < OW; ox++) {                                                           \
                const struct window wx = pool_window(ox, W, q->kernel_w, q->stride_w, q->pad_w);            \
                double sum = 0;                                                                             \
                for (int64_t iy = wy.lo; iy < wy.hi; iy++)                                                  \
                    for (int64_t ix = wx.lo; ix < wx.hi; ix++) sum += (double)xp[iy * xs2 + ix * xs3];      \
                orow[ox * os3] = (T)(sum / pool_divisor(wy, wx, q->count_include_pad));                     \
            }                                                                                               \
        }                                                                                                   \
    }                                                                                                       \
    /* dx[iy][ix] = sum of dy / divisor over the windows holding it, gathered in order */                    \
    static void pool_bwd_##SUF(struct tensor *dx, const struct tensor *dy, const struct pool2d_params *q)   \
    {                                                                                                       \
        const int64_t P = dx->shape[0] * dx->shape[1], H = dx->shape[2], W = dx->shape[3];                   \
        const int64_t OH = dy->shape[2], OW = dy->shape[3];                                                  \
        const int64_t xs2 = dx->stride[2], xs3 = dx->stride[3], ds2 = dy->stride[2], ds3 = dy->stride[3];    \
        T *pdx = CPU_PTR(T, dx);                                                                            \
        const T *pdy = CPU_PTR(const T, dy);                                                                \
        _Pragma("omp parallel for schedule(static) if (P * OH * OW * q->kernel_h * q->kernel_w >= CPU_PAR_MIN)") \
        for (int64_t r = 0; r < P * H; r++) {                                                               \
            const int64_t p = r / H, iy = r % H;                                                            \
            int64_t oy0, oy1;                                                                               \
            pool_range(iy, OH, q->kernel_h, q->stride_h, q->pad_h, &oy0, &oy1);                             \
            const T *gp = pdy + plane_offset(dy, p);                                                        \
            T *drow = pdx + plane_offset(dx, p) + iy * xs2;                                                 \
            for (int64_t ix = 0; ix < W; ix++) {                                                            \
                int64_t ox0, ox1;                                                                           \
                pool_range(ix, OW, q->kernel_w, q->stride_w, q->pad_w, &ox0, &ox1);                         \
                double sum = 0;                                                                             \
                for (int64_t oy = oy0; oy < oy1; oy++) {                                                    \
                    const struct window wy = pool_window(oy, H, q->kernel_h, q->stride_h, q->pad_h);        \
                    for (int64_t ox = ox0; ox < ox1; ox++) {                                                \
                        const struct window wx = pool_window(ox, W, q->kernel_w, q->stride_w, q->pad_w);    \
                        sum += (double)gp[oy * ds2 + ox * ds3] / pool_divisor(wy, wx, q->count_include_pad); \
                    }                                                                                       \
                }                                                                                           \
                drow[ix * xs3] = (T)sum;                                                                    \
            }                                                                                               \
        }                                                                                                   \
    }
DEFINE_POOL(float, f32)
DEFINE_POOL(double, f64)

/* the kernels divide by these: a bad table entry must not crash (ag_avg_pool2d explains) */
static enum status check_pool(const char *op, const struct tensor *x, const struct pool2d_params *p)
{
    if (p->kernel_h < 1 || p->kernel_w < 1 || p->stride_h < 1 || p->stride_w < 1 || p->pad_h < 0 || p->pad_w < 0 ||
        p->pad_h > p->kernel_h / 2 || p->pad_w > p->kernel_w / 2 || x->shape[2] < 1 || x->shape[3] < 1)
        return tensor_fail(STATUS_VALUE, "%s: invalid pooling parameters or empty image", op);
    return STATUS_OK;
}

enum status cpu_avg_pool2d(struct tensor *out, const struct tensor *x, const struct pool2d_params *p)
{
    enum status s;
    if ((s = check_images("avg_pool2d", out, x))) return s;
    if (tensor_numel(out) == 0) return STATUS_OK;
    if ((s = check_pool("avg_pool2d", x, p))) return s;
    if (x->dtype == DTYPE_F32) pool_fwd_f32(out, x, p);
    else pool_fwd_f64(out, x, p);
    return STATUS_OK;
}

enum status cpu_avg_pool2d_backward(struct tensor *dx, const struct tensor *dy, const struct pool2d_params *p)
{
    enum status s;
    if ((s = check_images("avg_pool2d_backward", dx, dy))) return s;
    if (tensor_numel(dx) == 0) return STATUS_OK;
    if (tensor_numel(dy) == 0) return cpu_fill(dx, 0);
    if ((s = check_pool("avg_pool2d_backward", dx, p))) return s;
    if (dy->dtype == DTYPE_F32) pool_bwd_f32(dx, dy, p);
    else pool_bwd_f64(dx, dy, p);
    return STATUS_OK;
}
