/* random.cu — fills a tensor from the Philox stream of philox.h, bit-identical with the CPU.
 * philox.h uses only integer ops and IEEE +, -, *, /, sqrt in double; this file is compiled
 * with -fmad=false so no multiply-add is fused, which would change the last bits. */
#include "tensor/cuda/common.cuh"
#include "tensor/philox.h"
#include "tensor/cuda/random_kernels.cuh"

enum status cuda_random(struct tensor *out, uint64_t seed, uint64_t offset, bool normal)
{
    enum status s;
    if ((s = cu_need_float(out, "random"))) return s;
    const struct tensor *ts[1] = {out};
    cu_iter<1> it;
    cu_iter_init<1>(&it, ts);
    const int64_t n = it.numel;
    if (n == 0) return STATUS_OK;
    const uint64_t first = offset / 4, skip = offset % 4;
    const int64_t nblocks = (int64_t)((skip + (uint64_t)n + 3) / 4);
    const bool contig = cu_iter_contiguous(&it);
    /* normals cost ~100 flops of double each: small blocks spread them over more SMs */
    const int threads = 128;
    const unsigned g = cu_blocks(nblocks, threads);
    if (out->dtype == DTYPE_F32)
        k_random<float><<<g, threads, 0, cu_stream()>>>(cu_ptr(out), it, contig, seed, first, (int64_t)skip, nblocks, normal);
    else
        k_random<double><<<g, threads, 0, cu_stream()>>>(cu_ptr(out), it, contig, seed, first, (int64_t)skip, nblocks, normal);
    CUDA_LAUNCHED();
    return STATUS_OK;
}
