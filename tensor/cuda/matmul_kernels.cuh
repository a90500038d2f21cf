/* matmul_kernels.cuh — the kernel of matmul.cu: the bf16 packing of f32 GEMM operands. Included by
 * matmul.cu, and by tests/test_conv_emu.cpp on the host through tests/cuda_emu.h, so CI, which has
 * no GPU, checks its row/batch indexing and the order of the bf16 halves in its 8-byte stores.
 * Needs <stdint.h>, tensor/half.h and, on the host, cuda_emu.h first. */
#ifndef TENSOR_CUDA_MATMUL_KERNELS_CUH
#define TENSOR_CUDA_MATMUL_KERNELS_CUH

namespace {

/* two f32 as bf16 halves of one word, lo first (little-endian: the lower address) */
__device__ __forceinline__ uint32_t bf16_pair(float lo, float hi)
{
    return (uint32_t)half_f32_bits_to_bf16(__float_as_uint(lo)) | (uint32_t)half_f32_bits_to_bf16(__float_as_uint(hi)) << 16;
}

/* rows (b, o) over grid y, the contiguous `inner` elements of a row over grid x, V at a time: V = 4
 * (one 16-byte load, one 8-byte store) when inner, ld, sb and src are multiples of 4 floats. The
 * scalar version (one 2-byte store per thread) ran at about a fifth of the copy rate on an H200. */
template <int V>
__global__ void pack_bf16_kernel(uint16_t *dst, const float *src, int64_t rows, int64_t outer, int64_t inner, int64_t ld,
                                 int64_t sb)
{
    const int64_t nv = inner / V;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const float *s = src + (r / outer) * sb + (r % outer) * ld;
        uint16_t *d = dst + r * inner;
        for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < nv; j += (int64_t)gridDim.x * blockDim.x) {
            if constexpr (V == 4) {
                const float4 f = __ldg(reinterpret_cast<const float4 *>(s) + j);
                reinterpret_cast<uint2 *>(d)[j] = make_uint2(bf16_pair(f.x, f.y), bf16_pair(f.z, f.w));
            } else {
                d[j] = half_f32_bits_to_bf16(__float_as_uint(s[j]));
            }
        }
    }
}

}  // namespace

#endif
