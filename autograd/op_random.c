/* op_random.c — the global Philox generator and the ops that draw from it. */
#include "autograd/node.h"

#include <pthread.h>

static uint64_t rng_seed = 0x5eed, rng_offset;
static pthread_mutex_t rng_lock = PTHREAD_MUTEX_INITIALIZER;

void ag_rng_seed(uint64_t seed) { ag_rng_set(seed, 0); }

void ag_rng_get(uint64_t *seed, uint64_t *offset)
{
    pthread_mutex_lock(&rng_lock);
    *seed = rng_seed;
    *offset = rng_offset;
    pthread_mutex_unlock(&rng_lock);
}

void ag_rng_set(uint64_t seed, uint64_t offset)
{
    pthread_mutex_lock(&rng_lock);
    rng_seed = seed;
    rng_offset = (offset + 3) / 4 * 4;
    pthread_mutex_unlock(&rng_lock);
}

/* reserve n numbers of the stream; returns their first position */
static uint64_t rng_take(int64_t n, uint64_t *seed)
{
    pthread_mutex_lock(&rng_lock);
    uint64_t o = rng_offset;
    *seed = rng_seed;
    rng_offset += ((uint64_t)n + 3) / 4 * 4;
    pthread_mutex_unlock(&rng_lock);
    return o;
}

static struct tensor *draw(enum dtype dt, int ndim, const int64_t *shape, enum device dev, bool normal)
{
    if (dt != DTYPE_F32 && dt != DTYPE_F64) {
        tensor_fail(STATUS_DTYPE, "%s: dtype %s not supported (f32 or f64)", normal ? "randn" : "rand", dtype_name(dt));
        return NULL;
    }
    struct tensor *t = tensor_empty(dt, ndim, shape, dev);
    if (!t) return NULL;
    uint64_t seed, off = rng_take(tensor_numel(t), &seed);
    if (backend_of(t)->random(t, seed, off, normal)) {
        tensor_free(tensor_keep(t));
        return NULL;
    }
    return t;
}

struct tensor *ag_rand(enum dtype dt, int ndim, const int64_t *shape, enum device dev) { return draw(dt, ndim, shape, dev, false); }
struct tensor *ag_randn(enum dtype dt, int ndim, const int64_t *shape, enum device dev) { return draw(dt, ndim, shape, dev, true); }
