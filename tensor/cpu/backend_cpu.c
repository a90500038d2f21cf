/* backend_cpu.c — the CPU backend's function table. */
#include "tensor/cpu/cpu.h"
#include <cblas.h>

#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define HUGE_PAGE ((size_t)2 << 20)

/* Blocks of 2 MiB and more (the allocator's segments: multiples of 2 MiB) start on a 2 MiB
 * boundary and are marked for transparent huge pages. Their first touch then faults once per
 * 2 MiB instead of once per 4 KiB, and the GEMMs miss the TLB less: one SD 1.4 DRaFT-LV step
 * at 256 px on 2 cores, whole process, 0.92x wall time and 0.68x system time
 * (docs/performance.md). Only advice: where the kernel has THP off ("never") nothing changes,
 * and where it is "always" the alignment alone lets it. DRAFT_HUGEPAGES=0 turns it off (for
 * measurements); the caller holds the allocator's lock, so the one getenv is not raced. */
static bool hugepages_on(void)
{
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("DRAFT_HUGEPAGES");
        on = !(e && !strcmp(e, "0"));
    }
    return on;
}

static void *cpu_raw_alloc(size_t bytes)
{
    void *p = NULL;
    if (bytes >= HUGE_PAGE && hugepages_on()) {
        if (posix_memalign(&p, HUGE_PAGE, bytes)) return NULL;
        (void)madvise(p, bytes & ~(HUGE_PAGE - 1), MADV_HUGEPAGE);   /* EINVAL without THP: fine */
        return p;
    }
    /* 64-byte alignment: full cache lines and AVX-512 loads */
    return posix_memalign(&p, 64, bytes) == 0 ? p : NULL;
}

static void cpu_raw_free(void *p) { free(p); }

/* "<model name>, <threads> threads; <OpenBLAS's build configuration: "OpenBLAS 0.3.21 ...">" */
static void cpu_describe(char *buf, size_t n)
{
    char model[160] = "unknown CPU", line[512];
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f)) {
        const char *c = strchr(line, ':');
        if (!strncmp(line, "model name", 10) && c) {
            snprintf(model, sizeof model, "%s", c + 1 + strspn(c + 1, " \t"));
            model[strcspn(model, "\n")] = 0;
            break;
        }
    }
    if (f) fclose(f);
    const char *blas = openblas_get_config();
    snprintf(buf, n, "%s, %d threads; %s", model, tensor_num_threads(), blas ? blas : "OpenBLAS (unknown version)");
}

/* MemAvailable and MemTotal of /proc/meminfo (kB) */
static enum status cpu_memory(int64_t *available, int64_t *total)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return tensor_fail(STATUS_DEVICE, "cpu: /proc/meminfo cannot be read");
    long long a = -1, t = -1, v;
    char line[256], key[64];
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "%63[^:]: %lld", key, &v) == 2) {
            if (!strcmp(key, "MemAvailable")) a = v;
            if (!strcmp(key, "MemTotal")) t = v;
        }
    fclose(f);
    if (a < 0 || t < 0) return tensor_fail(STATUS_DEVICE, "cpu: /proc/meminfo has no MemAvailable or MemTotal");
    *available = (int64_t)a * 1024, *total = (int64_t)t * 1024;
    return STATUS_OK;
}

const struct backend backend_cpu = {
    .name = "cpu",
    .device = DEVICE_CPU,
    .raw_alloc = cpu_raw_alloc,
    .raw_free = cpu_raw_free,
    .copy = cpu_copy,
    .fill = cpu_fill,
    .unary = cpu_unary,
    .unary_backward = cpu_unary_backward,
    .binary = cpu_binary,
    .where = cpu_where,
    .reduce = cpu_reduce,
    .matmul = cpu_matmul,
    .conv2d = cpu_conv2d,
    .conv2d_backward_input = cpu_conv2d_backward_input,
    .conv2d_backward_weight = cpu_conv2d_backward_weight,
    .softmax = cpu_softmax,
    .softmax_backward = cpu_softmax_backward,
    .layer_norm = cpu_layer_norm,
    .layer_norm_backward = cpu_layer_norm_backward,
    .group_norm = cpu_group_norm,
    .group_norm_backward = cpu_group_norm_backward,
    .attention = cpu_attention,
    .attention_backward = cpu_attention_backward,
    .resize = cpu_resize,
    .resize_backward = cpu_resize_backward,
    .avg_pool2d = cpu_avg_pool2d,
    .avg_pool2d_backward = cpu_avg_pool2d_backward,
    .embedding = cpu_embedding,
    .embedding_backward = cpu_embedding_backward,
    .random = cpu_random,
    .describe = cpu_describe,
    .memory = cpu_memory,
};

void tensor_set_num_threads(int n)
{
    if (n < 1) n = 1;
    omp_set_num_threads(n);
}

int tensor_num_threads(void) { return omp_get_max_threads(); }
