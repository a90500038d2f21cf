/* random_kernels.cuh — random.cu's kernel: a thread per Philox block of 4 numbers of the stream
 * (tensor/philox.h), written through the output's strides. Included by random.cu (compiled with
 * -fmad=false, which keeps philox.h's double arithmetic bit-identical with the CPU), and by
 * tests/test_ew_emu.cpp on the host through tests/cuda_emu.h, against the CPU backend. Needs
 * tensor/philox.h and iter.cuh. */
#ifndef TENSOR_CUDA_RANDOM_KERNELS_CUH
#define TENSOR_CUDA_RANDOM_KERNELS_CUH

/* one thread per Philox block of 4 numbers; element i of the output (row-major logical order)
 * takes stream position offset + i */
template <typename T>
__global__ void k_random(char *out, cu_iter<1> it, bool contig, uint64_t seed, uint64_t first, int64_t skip,
                         int64_t nblocks, bool normal)
{
    const int64_t n = it.numel;
    for (int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; b < nblocks; b += (int64_t)gridDim.x * blockDim.x) {
        uint32_t x[4];
        double v[4];
        philox_block(seed, first + (uint64_t)b, x);
        if (normal) philox_normal4(x, v);
        else
            for (int l = 0; l < 4; l++) v[l] = philox_uniform(x[l]);
        for (int l = 0; l < 4; l++) {
            const int64_t i = b * 4 + l - skip;
            if (i < 0 || i >= n) continue;
            int64_t off[1] = {i};
            if (!contig) cu_offsets<1, int64_t>(it, i, off);
            reinterpret_cast<T *>(out)[off[0]] = (T)v[l];
        }
    }
}

#endif
