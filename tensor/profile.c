/* profile.c — the timing table that wraps a backend while profiling is on (profile.h).
 *
 * One wrapper per backend entry: look up the real table of the call's device, synchronise
 * (GPU), read the clock, call, synchronise, read the clock, add to the entry of the call's
 * key. Entries live in one static array (no allocation: the allocator itself is profiled). */
#include "tensor/profile.h"
#include "tensor/backend.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum prof_op {
    P_RAW_ALLOC, P_RAW_FREE, P_COPY, P_FILL, P_UPLOAD, P_DOWNLOAD, P_UNARY, P_UNARY_BWD, P_BINARY, P_WHERE,
    P_REDUCE, P_MATMUL, P_CONV2D, P_CONV2D_BWD_INPUT, P_CONV2D_BWD_WEIGHT, P_SOFTMAX, P_SOFTMAX_BWD,
    P_LAYER_NORM, P_LAYER_NORM_BWD, P_GROUP_NORM, P_GROUP_NORM_BWD, P_ATTENTION, P_ATTENTION_BWD, P_RESIZE,
    P_RESIZE_BWD, P_AVG_POOL2D, P_AVG_POOL2D_BWD, P_EMBEDDING, P_EMBEDDING_BWD, P_RANDOM, P_COUNT
};
static const char *const prof_op_names[P_COUNT] = {
    "raw_alloc", "raw_free", "copy", "fill", "upload", "download", "unary", "unary_backward", "binary", "where",
    "reduce", "matmul", "conv2d", "conv2d_backward_input", "conv2d_backward_weight", "softmax", "softmax_backward",
    "layer_norm", "layer_norm_backward", "group_norm", "group_norm_backward", "attention", "attention_backward",
    "resize", "resize_backward", "avg_pool2d", "avg_pool2d_backward", "embedding", "embedding_backward", "random"};

struct key {
    int op, sub;      /* sub: unary/binary/reduce op, the conv's kernel size, softmax's log, ... */
    int device;
    int dtype;        /* -1: no tensor */
    int precision;    /* -1: not a matrix product */
    int ndim[2];      /* shapes mode: the op's one or two defining operands (0: none) */
    int64_t shape[2][TENSOR_MAX_DIMS];
};

/* entries in the order first seen, found through an open-addressing hash of their keys */
#define MAX_ENTRIES 2048
#define N_SLOTS 4096
static struct {
    struct key k;
    int64_t calls;
    double seconds;
} entries[MAX_ENTRIES];
static int slots[N_SLOTS];               /* entry index + 1; 0: empty */
static int n_entries;
static int dropped;                      /* calls that found the table full */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int state = -1;                   /* -1: DRAFT_PROFILE not read yet, 0 off, 1 on */
static bool with_shapes;                 /* key on the operands' shapes too */
static double t_on, seconds_on;          /* when profiling last started; time on before that */
static _Thread_local int depth;          /* > 0 inside a profiled call */

/* the wrapped tables, and the real ones they were built from */
static struct backend wrapped[DEVICE_COUNT];
static const struct backend *real[DEVICE_COUNT];

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint32_t key_hash(const struct key *k)
{
    const unsigned char *p = (const unsigned char *)k;
    uint32_t h = 2166136261u;   /* FNV-1a */
    for (size_t i = 0; i < sizeof *k; i++) h = (h ^ p[i]) * 16777619u;
    return h;
}

static void record(const struct key *k, double seconds)
{
    pthread_mutex_lock(&lock);
    uint32_t h = key_hash(k) % N_SLOTS;
    while (slots[h] && memcmp(&entries[slots[h] - 1].k, k, sizeof *k)) h = (h + 1) % N_SLOTS;
    if (!slots[h]) {
        if (n_entries == MAX_ENTRIES) { dropped++; pthread_mutex_unlock(&lock); return; }
        memset(&entries[n_entries], 0, sizeof entries[n_entries]);
        entries[n_entries].k = *k;
        slots[h] = ++n_entries;
    }
    entries[slots[h] - 1].calls++;
    entries[slots[h] - 1].seconds += seconds;
    pthread_mutex_unlock(&lock);
}

/* t: the tensor whose dtype names the entry; s0, s1: the operands whose shapes describe the call */
static void record_call(int op, int sub, enum device dev, const struct tensor *t, const struct tensor *s0,
                        const struct tensor *s1, bool product, double seconds)
{
    struct key k;
    memset(&k, 0, sizeof k);   /* keys are hashed and compared as bytes */
    k.op = op;
    k.sub = sub;
    k.device = (int)dev;
    k.dtype = t ? (int)t->dtype : -1;
    k.precision = product && t && t->dtype == DTYPE_F32 && dev != DEVICE_CPU ? (int)tensor_precision() : -1;
    if (with_shapes) {
        const struct tensor *sh[2] = {s0, s1};
        for (int i = 0; i < 2; i++)
            if (sh[i]) {
                k.ndim[i] = sh[i]->ndim;
                memcpy(k.shape[i], sh[i]->shape, (size_t)sh[i]->ndim * sizeof(int64_t));
            }
    }
    record(&k, seconds);
}

/* STMT as the outermost call, timed and recorded under the key (the arguments of record_call) */
#define TIMED(STMT, ...)                                                                                               \
    do {                                                                                                               \
        depth++;                                                                                                       \
        const double t0_ = now();                                                                                      \
        STMT;                                                                                                          \
        const double t1_ = now();                                                                                      \
        depth--;                                                                                                       \
        record_call(__VA_ARGS__, t1_ - t0_);                                                                           \
    } while (0)

/* the call itself: outermost calls are timed (GPU work synchronised on both sides) */
#define PROFILED(dev, OP, SUB, T, S0, S1, PRODUCT, CALL)                                                               \
    do {                                                                                                               \
        const struct backend *b_ = real[dev];                                                                          \
        if (depth || state != 1) return b_->CALL;                                                                      \
        if (b_->synchronize) {                                                                                         \
            enum status s0_ = b_->synchronize();                                                                       \
            if (s0_) return s0_;                                                                                       \
        }                                                                                                              \
        enum status s_;                                                                                                \
        TIMED(s_ = b_->CALL; if (!s_ && b_->synchronize) s_ = b_->synchronize(), OP, SUB, dev, T, S0, S1, PRODUCT);    \
        return s_;                                                                                                     \
    } while (0)

static enum device dev_of(const struct tensor *t) { return t->storage->device; }

/* ---- raw memory and transfers: no tensor, so one wrapper per device ---- */

#define DEVICE_WRAPPERS(D, DEV)                                                                                        \
    static void *raw_alloc_##D(size_t bytes)                                                                           \
    {                                                                                                                  \
        if (depth || state != 1) return real[DEV]->raw_alloc(bytes);                                                   \
        void *p;                                                                                                       \
        TIMED(p = real[DEV]->raw_alloc(bytes), P_RAW_ALLOC, 0, DEV, NULL, NULL, NULL, false);                          \
        return p;                                                                                                      \
    }                                                                                                                  \
    static void raw_free_##D(void *p)                                                                                  \
    {                                                                                                                  \
        if (depth || state != 1) real[DEV]->raw_free(p);                                                               \
        else TIMED(real[DEV]->raw_free(p), P_RAW_FREE, 0, DEV, NULL, NULL, NULL, false);                               \
    }                                                                                                                  \
    static enum status upload_##D(void *dst, const void *src, size_t bytes)                                            \
    {                                                                                                                  \
        PROFILED(DEV, P_UPLOAD, 0, NULL, NULL, NULL, false, upload(dst, src, bytes));                                  \
    }                                                                                                                  \
    static enum status download_##D(void *dst, const void *src, size_t bytes)                                          \
    {                                                                                                                  \
        PROFILED(DEV, P_DOWNLOAD, 0, NULL, NULL, NULL, false, download(dst, src, bytes));                              \
    }
DEVICE_WRAPPERS(cpu, DEVICE_CPU)
DEVICE_WRAPPERS(cuda, DEVICE_CUDA)

/* ---- tensor calls: the device of the first tensor ---- */

static enum status w_copy(struct tensor *dst, const struct tensor *src)
{
    PROFILED(dev_of(dst), P_COPY, src->dtype == dst->dtype ? -1 : (int)src->dtype, dst, dst, NULL, false, copy(dst, src));
}
static enum status w_fill(struct tensor *dst, double value)
{
    PROFILED(dev_of(dst), P_FILL, 0, dst, dst, NULL, false, fill(dst, value));
}
static enum status w_unary(enum unary_op op, struct tensor *out, const struct tensor *a, const double *p)
{
    PROFILED(dev_of(out), P_UNARY, (int)op, out, out, NULL, false, unary(op, out, a, p));
}
static enum status w_unary_backward(enum unary_op op, struct tensor *dx, const struct tensor *dy,
                                    const struct tensor *x, const struct tensor *y, const double *p)
{
    PROFILED(dev_of(dx), P_UNARY_BWD, (int)op, dx, dx, NULL, false, unary_backward(op, dx, dy, x, y, p));
}
static enum status w_binary(enum binary_op op, struct tensor *out, const struct tensor *a, const struct tensor *b)
{
    PROFILED(dev_of(out), P_BINARY, (int)op, out, out, NULL, false, binary(op, out, a, b));
}
static enum status w_where(struct tensor *out, const struct tensor *cond, const struct tensor *a,
                           const struct tensor *b)
{
    PROFILED(dev_of(out), P_WHERE, 0, out, out, NULL, false, where(out, cond, a, b));
}
static enum status w_reduce(enum reduce_op op, struct tensor *out, const struct tensor *a)
{
    /* the input's dtype: argmax writes i64 */
    PROFILED(dev_of(out), P_REDUCE, (int)op, a, a, out, false, reduce(op, out, a));
}
static enum status w_matmul(struct tensor *out, const struct tensor *a, const struct tensor *b, double alpha,
                            double beta)
{
    PROFILED(dev_of(out), P_MATMUL, 0, out, a, b, true, matmul(out, a, b, alpha, beta));
}
static int kernel_sub(const struct tensor *w) { return (int)(w->shape[2] * 256 + w->shape[3]); }
static enum status w_conv2d(struct tensor *out, const struct tensor *x, const struct tensor *w,
                            const struct tensor *bias, const struct conv2d_params *p)
{
    PROFILED(dev_of(out), P_CONV2D, kernel_sub(w), out, x, w, true, conv2d(out, x, w, bias, p));
}
static enum status w_conv2d_backward_input(struct tensor *dx, const struct tensor *dy, const struct tensor *w,
                                           const struct conv2d_params *p)
{
    PROFILED(dev_of(dx), P_CONV2D_BWD_INPUT, kernel_sub(w), dx, dx, w, true, conv2d_backward_input(dx, dy, w, p));
}
static enum status w_conv2d_backward_weight(struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                            const struct tensor *x, const struct conv2d_params *p)
{
    PROFILED(dev_of(dw), P_CONV2D_BWD_WEIGHT, kernel_sub(dw), dw, x, dw, true, conv2d_backward_weight(dw, db, dy, x, p));
}
static enum status w_softmax(struct tensor *out, const struct tensor *x, bool log)
{
    PROFILED(dev_of(out), P_SOFTMAX, log, out, out, NULL, false, softmax(out, x, log));
}
static enum status w_softmax_backward(struct tensor *dx, const struct tensor *dy, const struct tensor *y, bool log)
{
    PROFILED(dev_of(dx), P_SOFTMAX_BWD, log, dx, dx, NULL, false, softmax_backward(dx, dy, y, log));
}
static enum status w_layer_norm(struct tensor *out, struct tensor *mean, struct tensor *rstd, const struct tensor *x,
                                const struct tensor *w, const struct tensor *b, double eps)
{
    PROFILED(dev_of(out), P_LAYER_NORM, 0, out, x, NULL, false, layer_norm(out, mean, rstd, x, w, b, eps));
}
static enum status w_layer_norm_backward(struct tensor *dx, struct tensor *dw, struct tensor *db,
                                         const struct tensor *dy, const struct tensor *x, const struct tensor *w,
                                         const struct tensor *mean, const struct tensor *rstd)
{
    PROFILED(dev_of(x), P_LAYER_NORM_BWD, 0, x, x, NULL, false, layer_norm_backward(dx, dw, db, dy, x, w, mean, rstd));
}
static enum status w_group_norm(struct tensor *out, struct tensor *mean, struct tensor *rstd, const struct tensor *x,
                                const struct tensor *w, const struct tensor *b, int groups, double eps)
{
    PROFILED(dev_of(out), P_GROUP_NORM, 0, out, x, NULL, false, group_norm(out, mean, rstd, x, w, b, groups, eps));
}
static enum status w_group_norm_backward(struct tensor *dx, struct tensor *dw, struct tensor *db,
                                         const struct tensor *dy, const struct tensor *x, const struct tensor *w,
                                         const struct tensor *mean, const struct tensor *rstd, int groups)
{
    PROFILED(dev_of(x), P_GROUP_NORM_BWD, 0, x, x, NULL, false, group_norm_backward(dx, dw, db, dy, x, w, mean, rstd, groups));
}
static enum status w_attention(struct tensor *out, struct tensor *lse, const struct tensor *q, const struct tensor *k,
                               const struct tensor *v, double scale, bool causal)
{
    PROFILED(dev_of(out), P_ATTENTION, causal, out, q, k, true, attention(out, lse, q, k, v, scale, causal));
}
static enum status w_attention_backward(struct tensor *dq, struct tensor *dk, struct tensor *dv,
                                        const struct tensor *dout, const struct tensor *q, const struct tensor *k,
                                        const struct tensor *v, const struct tensor *out, const struct tensor *lse,
                                        double scale, bool causal)
{
    PROFILED(dev_of(q), P_ATTENTION_BWD, causal, q, q, k, true,
             attention_backward(dq, dk, dv, dout, q, k, v, out, lse, scale, causal));
}
static enum status w_resize(struct tensor *out, const struct tensor *x, enum resize_mode mode, bool align_corners)
{
    PROFILED(dev_of(out), P_RESIZE, (int)mode, out, x, out, false, resize(out, x, mode, align_corners));
}
static enum status w_resize_backward(struct tensor *dx, const struct tensor *dy, enum resize_mode mode,
                                     bool align_corners)
{
    PROFILED(dev_of(dx), P_RESIZE_BWD, (int)mode, dx, dx, dy, false, resize_backward(dx, dy, mode, align_corners));
}
static enum status w_avg_pool2d(struct tensor *out, const struct tensor *x, const struct pool2d_params *p)
{
    PROFILED(dev_of(out), P_AVG_POOL2D, 0, out, x, out, false, avg_pool2d(out, x, p));
}
static enum status w_avg_pool2d_backward(struct tensor *dx, const struct tensor *dy, const struct pool2d_params *p)
{
    PROFILED(dev_of(dx), P_AVG_POOL2D_BWD, 0, dx, dx, dy, false, avg_pool2d_backward(dx, dy, p));
}
static enum status w_embedding(struct tensor *out, const struct tensor *weight, const struct tensor *ids)
{
    PROFILED(dev_of(out), P_EMBEDDING, 0, out, out, NULL, false, embedding(out, weight, ids));
}
static enum status w_embedding_backward(struct tensor *dweight, const struct tensor *dy, const struct tensor *ids)
{
    PROFILED(dev_of(dweight), P_EMBEDDING_BWD, 0, dweight, dy, NULL, false, embedding_backward(dweight, dy, ids));
}
static enum status w_random(struct tensor *out, uint64_t seed, uint64_t offset, bool normal)
{
    PROFILED(dev_of(out), P_RANDOM, normal, out, out, NULL, false, random(out, seed, offset, normal));
}

/* a wrapper for every entry the real table has (a NULL entry stays NULL) */
static void wrap(enum device dev, const struct backend *b)
{
    struct backend *w = &wrapped[dev];
    *w = *b;
    real[dev] = b;
#define W(field, fn)                                                                                                   \
    if (b->field) w->field = fn
    W(raw_alloc, dev == DEVICE_CPU ? raw_alloc_cpu : raw_alloc_cuda);
    W(raw_free, dev == DEVICE_CPU ? raw_free_cpu : raw_free_cuda);
    W(upload, dev == DEVICE_CPU ? upload_cpu : upload_cuda);
    W(download, dev == DEVICE_CPU ? download_cpu : download_cuda);
    W(copy, w_copy);
    W(fill, w_fill);
    W(unary, w_unary);
    W(unary_backward, w_unary_backward);
    W(binary, w_binary);
    W(where, w_where);
    W(reduce, w_reduce);
    W(matmul, w_matmul);
    W(conv2d, w_conv2d);
    W(conv2d_backward_input, w_conv2d_backward_input);
    W(conv2d_backward_weight, w_conv2d_backward_weight);
    W(softmax, w_softmax);
    W(softmax_backward, w_softmax_backward);
    W(layer_norm, w_layer_norm);
    W(layer_norm_backward, w_layer_norm_backward);
    W(group_norm, w_group_norm);
    W(group_norm_backward, w_group_norm_backward);
    W(attention, w_attention);
    W(attention_backward, w_attention_backward);
    W(resize, w_resize);
    W(resize_backward, w_resize_backward);
    W(avg_pool2d, w_avg_pool2d);
    W(avg_pool2d_backward, w_avg_pool2d_backward);
    W(embedding, w_embedding);
    W(embedding_backward, w_embedding_backward);
    W(random, w_random);
#undef W
}

static void print_at_exit(void) { tensor_profile_print(stderr); }

static void read_env(void)
{
    const char *e = getenv("DRAFT_PROFILE");
    state = e && *e && strcmp(e, "0") ? 1 : 0;
    with_shapes = e && !strcmp(e, "shapes");
    if (state == 1) {
        t_on = now();
        atexit(print_at_exit);
    }
}

const struct backend *profile_wrap(const struct backend *b)
{
    if (state < 0) read_env();
    /* a table built while profiling stays in use after a stop: calls made through it then go
     * straight to the real backend */
    if (!b || (state == 0 && real[b->device] != b)) return b;
    if (real[b->device] != b) {
        pthread_mutex_lock(&lock);
        if (real[b->device] != b) wrap(b->device, b);
        pthread_mutex_unlock(&lock);
    }
    return state == 1 ? &wrapped[b->device] : b;
}

/* ---------------------------------------------------------------- control and report */

void tensor_profile_start(void)
{
    if (state < 0) read_env();
    if (state != 1) t_on = now();
    state = 1;
}
void tensor_profile_stop(void)
{
    if (state < 0) read_env();
    if (state == 1) seconds_on += now() - t_on;
    state = 0;
}
void tensor_profile_record_shapes(bool on)
{
    if (state < 0) read_env();
    with_shapes = on;
}
bool tensor_profile_active(void)
{
    if (state < 0) read_env();
    return state == 1;
}
void tensor_profile_reset(void)
{
    pthread_mutex_lock(&lock);
    n_entries = 0;
    memset(slots, 0, sizeof slots);
    dropped = 0;
    seconds_on = 0;
    t_on = now();
    pthread_mutex_unlock(&lock);
}

static void entry_name(const struct key *k, char *op, size_t n_op, char *dt, size_t n_dt)
{
    const char *base = prof_op_names[k->op];
    switch (k->op) {
    case P_UNARY:
    case P_UNARY_BWD: snprintf(op, n_op, "%s %s", base, unary_op_name((enum unary_op)k->sub)); break;
    case P_BINARY: snprintf(op, n_op, "%s %s", base, binary_op_name((enum binary_op)k->sub)); break;
    case P_REDUCE:
        snprintf(op, n_op, "%s %s", base, k->sub == REDUCE_SUM ? "sum" : k->sub == REDUCE_MAX ? "max" : "argmax");
        break;
    case P_CONV2D:
    case P_CONV2D_BWD_INPUT:
    case P_CONV2D_BWD_WEIGHT: snprintf(op, n_op, "%s %dx%d", base, k->sub / 256, k->sub % 256); break;
    case P_SOFTMAX:
    case P_SOFTMAX_BWD: snprintf(op, n_op, "%s%s", k->sub ? "log_" : "", base); break;
    case P_ATTENTION:
    case P_ATTENTION_BWD: snprintf(op, n_op, "%s%s", base, k->sub ? " causal" : ""); break;
    case P_RESIZE:
    case P_RESIZE_BWD:
        snprintf(op, n_op, "%s %s", base,
                 k->sub == RESIZE_NEAREST ? "nearest" : k->sub == RESIZE_BILINEAR ? "bilinear" : "bicubic");
        break;
    case P_RANDOM: snprintf(op, n_op, "%s %s", base, k->sub ? "normal" : "uniform"); break;
    case P_COPY:
        if (k->sub >= 0) snprintf(op, n_op, "%s from %s", base, dtype_name((enum dtype)k->sub));
        else snprintf(op, n_op, "%s", base);
        break;
    default: snprintf(op, n_op, "%s", base);
    }
    if (k->dtype < 0) snprintf(dt, n_dt, "-");
    else if (k->precision < 0 || k->precision == PRECISION_F32) snprintf(dt, n_dt, "%s", dtype_name((enum dtype)k->dtype));
    else snprintf(dt, n_dt, "%s/%s", dtype_name((enum dtype)k->dtype), precision_name((enum precision)k->precision));
}

static void shapes_str(const struct key *k, char *buf, size_t n)
{
    size_t len = 0;
    buf[0] = 0;
    for (int i = 0; i < 2; i++) {
        if (!k->ndim[i]) continue;
        for (int d = 0; d < k->ndim[i] && len + 24 < n; d++)
            len += (size_t)snprintf(buf + len, n - len, "%s%lld", d ? "," : (len ? " [" : "["), (long long)k->shape[i][d]);
        if (len + 2 < n) len += (size_t)snprintf(buf + len, n - len, "]");
    }
}

static int by_seconds(const void *a, const void *b)
{
    const struct profile_entry *x = a, *y = b;
    if (x->seconds != y->seconds) return x->seconds < y->seconds ? 1 : -1;
    const int c = strcmp(x->op, y->op);
    return c ? c : strcmp(x->shapes, y->shapes);
}

/* all entries, sorted; *out must hold MAX_ENTRIES */
static int snapshot(struct profile_entry *out, int *n_dropped)
{
    pthread_mutex_lock(&lock);
    const int n = n_entries;
    for (int i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof out[i]);
        entry_name(&entries[i].k, out[i].op, sizeof out[i].op, out[i].dtype, sizeof out[i].dtype);
        shapes_str(&entries[i].k, out[i].shapes, sizeof out[i].shapes);
        out[i].device = (enum device)entries[i].k.device;
        out[i].calls = entries[i].calls;
        out[i].seconds = entries[i].seconds;
    }
    if (n_dropped) *n_dropped = dropped;
    pthread_mutex_unlock(&lock);
    qsort(out, (size_t)n, sizeof *out, by_seconds);
    return n;
}

static struct profile_entry snap[MAX_ENTRIES];   /* static: the report runs at exit, maybe out of memory */

int tensor_profile_entries(struct profile_entry *out, int max)
{
    const int n = snapshot(snap, NULL);
    for (int i = 0; i < n && i < max; i++) out[i] = snap[i];
    return n;
}

static void print_rows(FILE *f, const struct profile_entry *e, int n, double total, bool shapes)
{
    fprintf(f, "%-34s %-6s %-10s %10s %12s %11s %6s%s\n", "op", "device", "dtype", "calls", "total ms", "mean us", "%",
            shapes ? "  shapes" : "");
    for (int i = 0; i < n; i++)
        fprintf(f, "%-34s %-6s %-10s %10lld %12.3f %11.2f %6.2f%s%s\n", e[i].op, device_name(e[i].device), e[i].dtype,
                (long long)e[i].calls, 1e3 * e[i].seconds, 1e6 * e[i].seconds / (double)e[i].calls,
                total > 0 ? 100 * e[i].seconds / total : 0.0, shapes ? "  " : "", shapes ? e[i].shapes : "");
}

static struct profile_entry merged[MAX_ENTRIES];

void tensor_profile_print(FILE *f)
{
    int n_dropped = 0;
    const int n = snapshot(snap, &n_dropped);
    double total = 0;
    int64_t calls = 0;
    for (int i = 0; i < n; i++) { total += snap[i].seconds; calls += snap[i].calls; }
    const double on = seconds_on + (state == 1 ? now() - t_on : 0);
    fprintf(f, "profile: %lld backend calls, %.3f s in them of %.3f s profiled (the rest: graph, allocator, host code;"
            " GPU calls synchronised on both sides)\n", (long long)calls, total, on);
    /* by op (the entries of all shapes of one op merged), then by shape where recorded */
    int m = 0;
    bool any_shapes = false;
    for (int i = 0; i < n; i++) {
        any_shapes |= snap[i].shapes[0] != 0;
        int j = 0;
        while (j < m && (strcmp(merged[j].op, snap[i].op) || merged[j].device != snap[i].device ||
                         strcmp(merged[j].dtype, snap[i].dtype)))
            j++;
        if (j == m) { merged[m] = snap[i]; merged[m++].shapes[0] = 0; }
        else { merged[j].calls += snap[i].calls; merged[j].seconds += snap[i].seconds; }
    }
    qsort(merged, (size_t)m, sizeof *merged, by_seconds);
    print_rows(f, merged, m, total, false);
    if (any_shapes) {
        fprintf(f, "by shape:\n");
        print_rows(f, snap, n, total, true);
    }
    if (n_dropped) fprintf(f, "(%d calls not recorded: more than %d kinds of call)\n", n_dropped, MAX_ENTRIES);
}
