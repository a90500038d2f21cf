/* parity.c — golden-file comparisons with the parity README's tolerance. */
#include "tests/parity.h"

#ifdef TENSOR_HAVE_CUDA
#include "tensor/cuda/cuda.h"
#endif

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *parity_path(const char *relpath, char *buf, size_t n)
{
    const char *dir = getenv("DRAFT_PARITY_DIR");
    if (!dir || !*dir) dir = "../shared/parity";
    snprintf(buf, n, "%s/%s", dir, relpath);
    if (access(buf, R_OK)) {
        printf("SKIP: parity data %s not found (set DRAFT_PARITY_DIR to a parity folder)\n", buf);
        return NULL;
    }
    return buf;
}

double parity_rms(const struct safetensors *st, const char *prefix)
{
    double ss = 0;
    int64_t cnt = 0;
    size_t pl = strlen(prefix);
    for (int i = 0; i < st->n; i++) {
        if (strncmp(st->entries[i].name, prefix, pl)) continue;
        tensor_scope_begin();
        struct tensor *t = safetensors_load(st, st->entries[i].name, DTYPE_F64, DEVICE_CPU);
        if (t) {
            const double *p = tensor_data_ptr(t);
            int64_t m = tensor_numel(t);
            for (int64_t j = 0; j < m; j++) ss += p[j] * p[j];
            cnt += m;
        }
        tensor_scope_end();
    }
    return cnt ? sqrt(ss / (double)cnt) : 0.0;
}

bool parity_check(const char *label, const struct tensor *ours, const struct tensor *golden, double rtol, double S)
{
    if (!ours || !golden || tensor_numel(ours) != tensor_numel(golden)) {
        printf("parity %s FAILED: %s\n", label, !ours ? "no result" : "element counts differ");
        return false;
    }
    tensor_scope_begin();
    const struct tensor *o = test_on_host(ours);
    if (!o) {
        printf("parity %s FAILED: no host copy: %s\n", label, tensor_error());
        tensor_scope_end();
        return false;
    }
    double num = 0, den = 0;
    int64_t n = tensor_numel(golden);
    for (int64_t i = 0; i < n; i++) {
        double a = tensor_get_flat(o, i), b = tensor_get_flat(golden, i);
        num += (a - b) * (a - b);
        den += b * b;
    }
    tensor_scope_end();
    double err = sqrt(num), bound = rtol * sqrt(den) + 1e-6 * S * sqrt((double)n);
    bool ok = err <= bound;
    printf("parity %s %s err=%.3e bound=%.3e rel=%.2e\n", label, ok ? "ok" : "FAILED", err, bound, err / fmax(sqrt(den), 1e-30));
    return ok;
}

struct tensor *parity_load(const struct safetensors *st, const char *name)
{
    struct tensor *t = safetensors_load(st, name, DTYPE_F32, DEVICE_CPU);
    ck_assert_msg(t != NULL, "golden tensor: %s", tensor_error());
    return t;
}

struct tensor *parity_load_on(const struct safetensors *st, const char *name, enum device dev)
{
    struct tensor *t = safetensors_load(st, name, DTYPE_F32, dev);
    ck_assert_msg(t != NULL, "golden tensor: %s", tensor_error());
    return t;
}

bool parity_device(enum device *dev)
{
    const char *e = getenv("DRAFT_TEST_DEVICE");
    *dev = DEVICE_CPU;
    if (!e || !*e || !strcmp(e, "cpu")) return true;
    if (strcmp(e, "cuda")) {
        printf("SKIP: DRAFT_TEST_DEVICE=%s is neither cpu nor cuda\n", e);
        return false;
    }
#ifdef TENSOR_HAVE_CUDA
    if (cuda_init()) {
        printf("SKIP: DRAFT_TEST_DEVICE=cuda, but no usable CUDA device: %s\n", tensor_error());
        return false;
    }
    *dev = DEVICE_CUDA;
    return true;
#else
    printf("SKIP: DRAFT_TEST_DEVICE=cuda, but this build has no CUDA backend\n");
    return false;
#endif
}
