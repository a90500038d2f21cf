/* random.c — fills a tensor from the Philox stream (see philox.h); blocks in parallel, so
 * the result does not depend on the thread count. */
#include "tensor/cpu/cpu.h"
#include "tensor/philox.h"

enum status cpu_random(struct tensor *out, uint64_t seed, uint64_t offset, bool normal)
{
    enum status s;
    if ((s = cpu_need_float(out, "random"))) return s;
    const int64_t n = tensor_numel(out);
    const uint64_t first = offset / 4, skip = offset % 4;
    const int64_t nblocks = (int64_t)((skip + (uint64_t)n + 3) / 4);
    const bool contig = tensor_is_contiguous(out);
#pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
    for (int64_t b = 0; b < nblocks; b++) {
        uint32_t x[4];
        double v[4];
        philox_block(seed, first + (uint64_t)b, x);
        if (normal) philox_normal4(x, v);
        else
            for (int l = 0; l < 4; l++) v[l] = philox_uniform(x[l]);
        for (int l = 0; l < 4; l++) {
            int64_t i = b * 4 + l - (int64_t)skip;
            if (i < 0 || i >= n) continue;
            if (contig) {
                if (out->dtype == DTYPE_F32) CPU_PTR(float, out)[out->offset + i] = (float)v[l];
                else CPU_PTR(double, out)[out->offset + i] = v[l];
            } else {
                tensor_set_flat(out, i, v[l]);
            }
        }
    }
    return STATUS_OK;
}
