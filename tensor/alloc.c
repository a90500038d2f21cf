/* alloc.c — size-class caching allocator with per-device accounting. */
#include "tensor/alloc.h"
#include "tensor/backend.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Size classes: 256-byte steps below 4 KiB, then four steps per power of two, so a block
 * wastes at most 25% and a class is found in O(1). */
#define N_CLASSES 256

struct free_block {
    void *p;
    struct free_block *next;
};

struct device_pool {
    pthread_mutex_t lock;
    struct free_block *free_lists[N_CLASSES];
    struct free_block *spare;   /* recycled list nodes */
    struct mem_stats s;
    bool limit_read;
};

static struct device_pool pools[DEVICE_COUNT] = {
    [DEVICE_CPU] = {.lock = PTHREAD_MUTEX_INITIALIZER},
    [DEVICE_CUDA] = {.lock = PTHREAD_MUTEX_INITIALIZER},
};

static int size_class(size_t bytes, size_t *rounded)
{
    if (bytes <= 4096) {
        size_t r = (bytes + 255) / 256 * 256;
        if (r == 0) r = 256;
        *rounded = r;
        return (int)(r / 256) - 1;   /* 0..15 */
    }
    int k = 63 - __builtin_clzll((unsigned long long)(bytes - 1));   /* 2^k < bytes <= 2^(k+1) */
    size_t base = (size_t)1 << k, step = base / 4;
    size_t i = (bytes - base + step - 1) / step;   /* 1..4 */
    *rounded = base + i * step;
    int c = 16 + (k - 12) * 4 + (int)(i - 1);
    return c < N_CLASSES ? c : -1;   /* -1: too big to cache, allocate exactly */
}

int64_t mem_parse_size(const char *s)
{
    if (!s || !*s) return -1;
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0) return -1;
    double mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = 1024.0; end++; break;
    case 'm': case 'M': mul = 1024.0 * 1024; end++; break;
    case 'g': case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: break;
    }
    if (*end == 'i') end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return -1;
    /* "inf", "nan" and sizes past int64 would make the conversion undefined */
    if (!(v * mul < 9.2e18)) return -1;
    return (int64_t)(v * mul);
}

const char *mem_format(int64_t bytes, char *buf, size_t n)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int i = 0;
    while (v >= 1024 && i < 4) { v /= 1024; i++; }
    snprintf(buf, n, i ? "%.2f %s" : "%.0f %s", v, u[i]);
    return buf;
}

static void read_limit(struct device_pool *pool, enum device dev)
{
    if (pool->limit_read) return;
    pool->limit_read = true;
    const char *env = getenv(dev == DEVICE_CPU ? "DRAFT_MEMORY_LIMIT" : "DRAFT_CUDA_MEMORY_LIMIT");
    if (env) {
        int64_t v = mem_parse_size(env);
        if (v > 0) pool->s.limit_bytes = v;
        else fprintf(stderr, "draft: ignoring malformed memory limit '%s' (expected e.g. 2G, 512M)\n", env);
    }
}

static void release_cache_locked(struct device_pool *pool, const struct backend *b)
{
    for (int c = 0; c < N_CLASSES; c++) {
        while (pool->free_lists[c]) {
            struct free_block *fb = pool->free_lists[c];
            pool->free_lists[c] = fb->next;
            b->raw_free(fb->p);
            fb->next = pool->spare;
            pool->spare = fb;
        }
    }
    pool->s.reserved_bytes -= pool->s.cached_bytes;
    pool->s.cached_bytes = 0;
}

void *mem_alloc(enum device dev, size_t bytes, size_t *rounded)
{
    const struct backend *b = backend_for(dev);
    if (!b) { tensor_fail(STATUS_DEVICE, "device %s is not available in this build", device_name(dev)); return NULL; }
    struct device_pool *pool = &pools[dev];
    size_t r;
    int c = size_class(bytes, &r);
    if (c < 0) r = (bytes + 4095) / 4096 * 4096;
    pthread_mutex_lock(&pool->lock);
    read_limit(pool, dev);
    pool->s.n_allocs++;
    void *p = NULL;
    if (c >= 0 && pool->free_lists[c]) {
        struct free_block *fb = pool->free_lists[c];
        pool->free_lists[c] = fb->next;
        p = fb->p;
        fb->next = pool->spare;
        pool->spare = fb;
        pool->s.cached_bytes -= (int64_t)r;
        pool->s.n_cache_hits++;
    } else {
        if (pool->s.limit_bytes && pool->s.reserved_bytes + (int64_t)r > pool->s.limit_bytes)
            release_cache_locked(pool, b);
        if (pool->s.limit_bytes && pool->s.reserved_bytes + (int64_t)r > pool->s.limit_bytes) {
            char a[32], l[32], lim[32], pk[32];
            tensor_fail(STATUS_OOM, "%s memory limit reached: asked for %s with %s live (peak %s), limit %s "
                        "(raise DRAFT_%sMEMORY_LIMIT or lower the batch size)", device_name(dev),
                        mem_format((int64_t)r, a, sizeof a), mem_format(pool->s.live_bytes, l, sizeof l),
                        mem_format(pool->s.peak_bytes, pk, sizeof pk), mem_format(pool->s.limit_bytes, lim, sizeof lim),
                        dev == DEVICE_CPU ? "" : "CUDA_");
            pthread_mutex_unlock(&pool->lock);
            return NULL;
        }
        p = b->raw_alloc(r);
        if (!p) {   /* the device is full: give the cache back and try once more */
            release_cache_locked(pool, b);
            p = b->raw_alloc(r);
        }
        if (!p) {
            char a[32], l[32], pk[32];
            tensor_fail(STATUS_OOM, "out of %s memory: asked for %s with %s live (peak %s)", device_name(dev),
                        mem_format((int64_t)r, a, sizeof a), mem_format(pool->s.live_bytes, l, sizeof l),
                        mem_format(pool->s.peak_bytes, pk, sizeof pk));
            pthread_mutex_unlock(&pool->lock);
            return NULL;
        }
        pool->s.n_device_allocs++;
        pool->s.reserved_bytes += (int64_t)r;
    }
    pool->s.live_bytes += (int64_t)r;
    if (pool->s.live_bytes > pool->s.peak_bytes) pool->s.peak_bytes = pool->s.live_bytes;
    pthread_mutex_unlock(&pool->lock);
    *rounded = r;
    return p;
}

void mem_free(enum device dev, void *p, size_t rounded)
{
    if (!p) return;
    const struct backend *b = backend_for(dev);
    struct device_pool *pool = &pools[dev];
    size_t r;
    int c = size_class(rounded, &r);
    pthread_mutex_lock(&pool->lock);
    pool->s.live_bytes -= (int64_t)rounded;
    struct free_block *fb = pool->spare;
    if (fb) pool->spare = fb->next;
    else fb = malloc(sizeof *fb);
    if (c >= 0 && r == rounded && fb) {
        fb->p = p;
        fb->next = pool->free_lists[c];
        pool->free_lists[c] = fb;
        pool->s.cached_bytes += (int64_t)rounded;
    } else {
        if (fb) { fb->next = pool->spare; pool->spare = fb; }
        b->raw_free(p);
        pool->s.reserved_bytes -= (int64_t)rounded;
    }
    pthread_mutex_unlock(&pool->lock);
}

void mem_get_stats(enum device dev, struct mem_stats *s)
{
    pthread_mutex_lock(&pools[dev].lock);
    read_limit(&pools[dev], dev);
    *s = pools[dev].s;
    pthread_mutex_unlock(&pools[dev].lock);
}

void mem_reset_peak(enum device dev)
{
    pthread_mutex_lock(&pools[dev].lock);
    pools[dev].s.peak_bytes = pools[dev].s.live_bytes;
    pthread_mutex_unlock(&pools[dev].lock);
}

void mem_set_limit(enum device dev, int64_t bytes)
{
    pthread_mutex_lock(&pools[dev].lock);
    pools[dev].limit_read = true;
    pools[dev].s.limit_bytes = bytes > 0 ? bytes : 0;
    pthread_mutex_unlock(&pools[dev].lock);
}

void mem_empty_cache(enum device dev)
{
    const struct backend *b = backend_for(dev);
    if (!b) return;
    pthread_mutex_lock(&pools[dev].lock);
    release_cache_locked(&pools[dev], b);
    while (pools[dev].spare) {
        struct free_block *fb = pools[dev].spare;
        pools[dev].spare = fb->next;
        free(fb);
    }
    pthread_mutex_unlock(&pools[dev].lock);
}

void mem_print_stats(FILE *f, enum device dev)
{
    struct mem_stats s;
    mem_get_stats(dev, &s);
    char a[32], b[32], c[32], d[32];
    fprintf(f, "memory %s: live %s, peak %s, cached %s, limit %s; %lld allocations, %lld cache hits (%.1f%%)\n",
            device_name(dev), mem_format(s.live_bytes, a, sizeof a), mem_format(s.peak_bytes, b, sizeof b),
            mem_format(s.cached_bytes, c, sizeof c), s.limit_bytes ? mem_format(s.limit_bytes, d, sizeof d) : "none",
            (long long)s.n_allocs, (long long)s.n_cache_hits,
            s.n_allocs ? 100.0 * (double)s.n_cache_hits / (double)s.n_allocs : 0.0);
}
