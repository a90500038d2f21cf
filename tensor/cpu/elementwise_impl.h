/* elementwise_impl.h — unary, binary and where kernels for one float type.
 * Included by elementwise.c with T (float or double) and SUF (f32, f64) defined; <tgmath.h>
 * makes exp(x) mean expf for float, so each formula is written once. */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)

/* ---- unary forward: one loop per op so the compiler sees a plain body */
static void CAT(unary_row, SUF)(enum unary_op op, T *po, int64_t so, const T *pa, int64_t sa, int64_t n, const double *p)
{
#if VEC_F32
    if (cpu_vec_unary_f32(op, po, so, pa, sa, n)) return;
#endif
#define LOOP(EXPR) for (int64_t i = 0; i < n; i++) { T x = pa[i * sa]; po[i * so] = (EXPR); } break
    const T p0 = p ? (T)p[0] : (T)0, p1 = p ? (T)p[1] : (T)0;
    const T k_sqrt1_2 = (T)0.70710678118654752440, k_gelu = (T)0.79788456080286535588;
    switch (op) {
    case UNARY_NEG: LOOP(-x);
    case UNARY_ABS: LOOP(fabs(x));
    case UNARY_EXP: LOOP(exp(x));
    case UNARY_LOG: LOOP(log(x));
    case UNARY_SQRT: LOOP(sqrt(x));
    case UNARY_RSQRT: LOOP((T)1 / sqrt(x));
    case UNARY_SIN: LOOP(sin(x));
    case UNARY_COS: LOOP(cos(x));
    case UNARY_TANH: LOOP(tanh(x));
    case UNARY_SIGMOID: LOOP((T)1 / ((T)1 + exp(-x)));
    case UNARY_SILU: LOOP(x / ((T)1 + exp(-x)));
    case UNARY_RELU: LOOP(x > 0 ? x : (T)0);
    case UNARY_GELU: LOOP((T)0.5 * x * ((T)1 + erf(x * k_sqrt1_2)));
    case UNARY_GELU_TANH: LOOP((T)0.5 * x * ((T)1 + tanh(k_gelu * (x + (T)0.044715 * x * x * x))));
    case UNARY_QUICK_GELU: LOOP(x / ((T)1 + exp((T)-1.702 * x)));
    case UNARY_POW: LOOP(pow(x, p0));
    case UNARY_CLAMP: LOOP(x < p0 ? p0 : x > p1 ? p1 : x);
    case UNARY_AFFINE: LOOP(p0 * x + p1);
    case UNARY_SQUARE: LOOP(x * x);
    case UNARY_RECIPROCAL: LOOP((T)1 / x);
    default: break;
    }
#undef LOOP
}

/* ---- unary backward: dx = dy * f'(x); y = f(x) where the rule is cheaper with it */
static void CAT(unary_bwd_row, SUF)(enum unary_op op, T *pdx, int64_t sdx, const T *pdy, int64_t sdy, const T *px,
                                    int64_t sx, const T *py, int64_t sy, int64_t n, const double *p)
{
#define LOOP(EXPR) for (int64_t i = 0; i < n; i++) { T g = pdy[i * sdy]; T x = px ? px[i * sx] : (T)0; \
                                                     T y = py ? py[i * sy] : (T)0; (void)x; (void)y; pdx[i * sdx] = (EXPR); } break
#if VEC_F32
    if (cpu_vec_unary_bwd_f32(op, pdx, sdx, pdy, sdy, px, sx, n)) return;
#endif
    const T p0 = p ? (T)p[0] : (T)0, p1 = p ? (T)p[1] : (T)0;
    const T k_sqrt1_2 = (T)0.70710678118654752440, k_gelu = (T)0.79788456080286535588;
    const T k_inv_sqrt2pi = (T)0.39894228040143267794;
    switch (op) {
    case UNARY_NEG: LOOP(-g);
    case UNARY_ABS: LOOP(x > 0 ? g : x < 0 ? -g : (T)0);
    case UNARY_EXP: LOOP(g * y);
    case UNARY_LOG: LOOP(g / x);
    case UNARY_SQRT: LOOP(g * (T)0.5 / y);
    case UNARY_RSQRT: LOOP(g * (T)-0.5 * y * y * y);
    case UNARY_SIN: LOOP(g * cos(x));
    case UNARY_COS: LOOP(-g * sin(x));
    case UNARY_TANH: LOOP(g * ((T)1 - y * y));
    case UNARY_SIGMOID: LOOP(g * y * ((T)1 - y));
    case UNARY_SILU: { for (int64_t i = 0; i < n; i++) {
            T x = px[i * sx], s = (T)1 / ((T)1 + exp(-x));
            pdx[i * sdx] = pdy[i * sdy] * s * ((T)1 + x * ((T)1 - s));
        } break; }
    case UNARY_RELU: LOOP(x > 0 ? g : (T)0);
    case UNARY_GELU: LOOP(g * ((T)0.5 * ((T)1 + erf(x * k_sqrt1_2)) + x * k_inv_sqrt2pi * exp((T)-0.5 * x * x)));
    case UNARY_GELU_TANH: { for (int64_t i = 0; i < n; i++) {
            T x = px[i * sx], u = k_gelu * (x + (T)0.044715 * x * x * x), t = tanh(u);
            T du = k_gelu * ((T)1 + (T)3 * (T)0.044715 * x * x);
            pdx[i * sdx] = pdy[i * sdy] * ((T)0.5 * ((T)1 + t) + (T)0.5 * x * ((T)1 - t * t) * du);
        } break; }
    case UNARY_QUICK_GELU: { for (int64_t i = 0; i < n; i++) {
            T x = px[i * sx], s = (T)1 / ((T)1 + exp((T)-1.702 * x));
            pdx[i * sdx] = pdy[i * sdy] * (s + (T)1.702 * x * s * ((T)1 - s));
        } break; }
    case UNARY_POW: LOOP(g * p0 * pow(x, p0 - (T)1));
    case UNARY_CLAMP: LOOP(x >= p0 && x <= p1 ? g : (T)0);
    case UNARY_AFFINE: LOOP(g * p0);
    case UNARY_SQUARE: LOOP(g * (T)2 * x);
    case UNARY_RECIPROCAL: LOOP(-g * y * y);
    default: break;
    }
#undef LOOP
}

static void CAT(binary_row, SUF)(enum binary_op op, T *po, int64_t so, const T *pa, int64_t sa, const T *pb, int64_t sb,
                                 int64_t n)
{
#define LOOP(EXPR) for (int64_t i = 0; i < n; i++) { T a = pa[i * sa], b = pb[i * sb]; po[i * so] = (EXPR); } break
    switch (op) {
    case BINARY_ADD: LOOP(a + b);
    case BINARY_SUB: LOOP(a - b);
    case BINARY_MUL: LOOP(a * b);
    case BINARY_DIV: LOOP(a / b);
    case BINARY_MAXIMUM: LOOP(a != a ? a : (a >= b ? a : b));   /* NaN propagates, as in torch */
    case BINARY_MINIMUM: LOOP(a != a ? a : (a <= b ? a : b));
    case BINARY_GT: LOOP(a > b ? (T)1 : (T)0);
    case BINARY_GE: LOOP(a >= b ? (T)1 : (T)0);
    case BINARY_EQ: LOOP(a == b ? (T)1 : (T)0);
    default: break;
    }
#undef LOOP
}

static void CAT(unary_run, SUF)(enum unary_op op, struct tensor *out, const struct tensor *a, const double *p)
{
    struct cpu_iter it;
    const struct tensor *ts[2] = {out, a};
    cpu_iter_init(&it, 2, ts);
    T *po = CPU_PTR(T, out);
    const T *pa = CPU_PTR(const T, a);
    const int64_t items = cpu_iter_items(&it);
#pragma omp parallel for schedule(static) if (it.outer * it.inner >= CPU_PAR_MIN)
    for (int64_t w = 0; w < items; w++) {
        struct cpu_rows r;
        for (cpu_iter_item(&it, w, &r); r.n > 0; cpu_iter_next(&it, &r))
            CAT(unary_row, SUF)(op, po + r.off[0], it.inner_stride[0], pa + r.off[1], it.inner_stride[1], r.len, p);
    }
}

static void CAT(unary_bwd_run, SUF)(enum unary_op op, struct tensor *dx, const struct tensor *dy, const struct tensor *x,
                                    const struct tensor *y, const double *p)
{
    /* x or y may be NULL: iterate dy in their place and pass NULL pointers to the row */
    struct cpu_iter it;
    const struct tensor *ts[4] = {dx, dy, x ? x : dy, y ? y : dy};
    cpu_iter_init(&it, 4, ts);
    T *pdx = CPU_PTR(T, dx);
    const T *pdy = CPU_PTR(const T, dy), *px = x ? CPU_PTR(const T, x) : NULL, *py = y ? CPU_PTR(const T, y) : NULL;
    const int64_t items = cpu_iter_items(&it);
#pragma omp parallel for schedule(static) if (it.outer * it.inner >= CPU_PAR_MIN)
    for (int64_t w = 0; w < items; w++) {
        struct cpu_rows r;
        for (cpu_iter_item(&it, w, &r); r.n > 0; cpu_iter_next(&it, &r))
            CAT(unary_bwd_row, SUF)(op, pdx + r.off[0], it.inner_stride[0], pdy + r.off[1], it.inner_stride[1],
                                    px ? px + r.off[2] : NULL, it.inner_stride[2], py ? py + r.off[3] : NULL,
                                    it.inner_stride[3], r.len, p);
    }
}

static void CAT(binary_run, SUF)(enum binary_op op, struct tensor *out, const struct tensor *a, const struct tensor *b)
{
    struct cpu_iter it;
    const struct tensor *ts[3] = {out, a, b};
    cpu_iter_init(&it, 3, ts);
    T *po = CPU_PTR(T, out);
    const T *pa = CPU_PTR(const T, a), *pb = CPU_PTR(const T, b);
    const int64_t items = cpu_iter_items(&it);
#pragma omp parallel for schedule(static) if (it.outer * it.inner >= CPU_PAR_MIN)
    for (int64_t w = 0; w < items; w++) {
        struct cpu_rows r;
        for (cpu_iter_item(&it, w, &r); r.n > 0; cpu_iter_next(&it, &r))
            CAT(binary_row, SUF)(op, po + r.off[0], it.inner_stride[0], pa + r.off[1], it.inner_stride[1],
                                 pb + r.off[2], it.inner_stride[2], r.len);
    }
}

static void CAT(where_run, SUF)(struct tensor *out, const struct tensor *cond, const struct tensor *a, const struct tensor *b)
{
    struct cpu_iter it;
    const struct tensor *ts[4] = {out, cond, a, b};
    cpu_iter_init(&it, 4, ts);
    T *po = CPU_PTR(T, out);
    const T *pc = CPU_PTR(const T, cond), *pa = CPU_PTR(const T, a), *pb = CPU_PTR(const T, b);
    const int64_t items = cpu_iter_items(&it);
#pragma omp parallel for schedule(static) if (it.outer * it.inner >= CPU_PAR_MIN)
    for (int64_t w = 0; w < items; w++) {
        struct cpu_rows r;
        for (cpu_iter_item(&it, w, &r); r.n > 0; cpu_iter_next(&it, &r)) {
            const int64_t *off = r.off;
            for (int64_t i = 0; i < r.len; i++)
                po[off[0] + i * it.inner_stride[0]] = pc[off[1] + i * it.inner_stride[1]] != 0
                                                          ? pa[off[2] + i * it.inner_stride[2]]
                                                          : pb[off[3] + i * it.inner_stride[3]];
        }
    }
}

#undef CAT
#undef CAT_
