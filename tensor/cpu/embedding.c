/* embedding.c — row gather and its deterministic scatter-add backward. */
#include "tensor/cpu/cpu.h"

static int64_t id_at(const struct tensor *ids, int64_t i)
{
    return ids->dtype == DTYPE_I64 ? (int64_t)tensor_get_flat(ids, i) : (int64_t)tensor_get_flat(ids, i);
}

enum status cpu_embedding(struct tensor *out, const struct tensor *weight, const struct tensor *ids)
{
    const int64_t n = tensor_numel(ids), V = weight->shape[0], D = weight->shape[1];
    const size_t esz = dtype_size(weight->dtype);
    for (int64_t i = 0; i < n; i++) {
        int64_t id = id_at(ids, i);
        if (id < 0 || id >= V)
            return tensor_fail(STATUS_VALUE, "embedding: id %lld at position %lld is outside the table of %lld rows",
                               (long long)id, (long long)i, (long long)V);
    }
#pragma omp parallel for schedule(static) if (n * D >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        int64_t id = id_at(ids, i);
        const char *src = (const char *)weight->storage->data + (weight->offset + id * weight->stride[0]) * (int64_t)esz;
        char *dst = (char *)out->storage->data + (out->offset + i * out->stride[0]) * (int64_t)esz;
        if (weight->stride[1] == 1 && out->stride[1] == 1) memcpy(dst, src, (size_t)D * esz);
        else
            for (int64_t j = 0; j < D; j++)
                memcpy(dst + j * out->stride[1] * (int64_t)esz, src + j * weight->stride[1] * (int64_t)esz, esz);
    }
    return STATUS_OK;
}

enum status cpu_embedding_backward(struct tensor *dweight, const struct tensor *dy, const struct tensor *ids)
{
    enum status s;
    if ((s = cpu_need_float(dy, "embedding_backward"))) return s;
    const int64_t n = tensor_numel(ids), D = dweight->shape[1];
    /* parallel over the feature dim, ids in order: deterministic, no atomics */
#pragma omp parallel for schedule(static) if (n * D >= CPU_PAR_MIN)
    for (int64_t j = 0; j < D; j++) {
        for (int64_t i = 0; i < n; i++) {
            int64_t id = id_at(ids, i);
            int64_t dst = dweight->offset + id * dweight->stride[0] + j * dweight->stride[1];
            int64_t src = dy->offset + i * dy->stride[0] + j * dy->stride[1];
            if (dy->dtype == DTYPE_F32) CPU_PTR(float, dweight)[dst] += CPU_PTR(const float, dy)[src];
            else CPU_PTR(double, dweight)[dst] += CPU_PTR(const double, dy)[src];
        }
    }
    return STATUS_OK;
}
