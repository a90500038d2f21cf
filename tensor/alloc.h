/* alloc.h — the caching allocator with memory accounting, one per device.
 *
 * Freed blocks are kept and handed out again (no system allocation in a hot loop after the
 * first iteration): blocks up to 1 MiB in size-class free lists, larger ones cut out of shared
 * segments, best fit, split and merged (alloc.c); on the CPU, a request over 10 MiB that fits in
 * no free block first gives the wholly free segments back. Every byte is counted: live bytes now and at peak, bytes
 * held in the cache, allocation and cache-hit counts. A limit (DRAFT_MEMORY_LIMIT=2G in the
 * environment, or mem_set_limit) makes an over-budget allocation fail with a message naming
 * the request and the usage instead of swapping.
 */
#ifndef TENSOR_ALLOC_H
#define TENSOR_ALLOC_H

#include <stdint.h>
#include <stdio.h>
#include "tensor/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

struct mem_stats {
    int64_t live_bytes;      /* bytes in blocks handed out (rounded to the size class) */
    int64_t peak_bytes;      /* max of live_bytes since start or the last mem_reset_peak */
    int64_t cached_bytes;    /* bytes in freed blocks kept for reuse */
    int64_t reserved_bytes;  /* live + cached: what the device really holds */
    int64_t limit_bytes;     /* 0 = none */
    int64_t n_allocs;        /* requests served */
    int64_t n_cache_hits;    /* requests served from the cache */
    int64_t n_device_allocs; /* requests that went to the device allocator */
};

/* returns NULL with an error set on failure; *rounded receives the block size (what the
 * accounting counts and mem_free takes back); only the `bytes` asked for may be used */
void *mem_alloc(enum device dev, size_t bytes, size_t *rounded);
void mem_free(enum device dev, void *p, size_t rounded);
void mem_get_stats(enum device dev, struct mem_stats *s);
void mem_reset_peak(enum device dev);
void mem_set_limit(enum device dev, int64_t bytes);
void mem_empty_cache(enum device dev);
void mem_print_stats(FILE *f, enum device dev);
/* "1.5G", "512M", "4096" -> bytes; -1 if malformed */
int64_t mem_parse_size(const char *s);
/* human-readable size into buf */
const char *mem_format(int64_t bytes, char *buf, size_t n);

#ifdef __cplusplus
}
#endif

#endif
