/* mma.cuh — the tensor-core primitives shared by the kernel headers (attention_kernels.cuh,
 * conv2d_kernels.cuh): mma.sync m16n8k16 bf16 and m16n8k8 tf32 with f32 accumulation, and the
 * f32 -> bf16x2 / tf32 roundings their operands go through. On the host (tests/cuda_emu.h first)
 * the mma calls run the emulation, which implements PTX's fragment layouts (lane = 4 g + t):
 * A [16 rows][8 words]: a0 = (g, t), a1 = (g+8, t), a2 = (g, t+4), a3 = (g+8, t+4); B [8 words][8
 * columns]: b0 = (t, g), b1 = (t+4, g); C [16][8] f32: c0, c1 = (g, 2t and 2t+1), c2, c3 = (g+8, ..).
 * A word holds 2 bf16 (m16n8k16) or 1 f32 read as tf32 (m16n8k8). Needs <stdint.h>. */
#ifndef TENSOR_CUDA_MMA_CUH
#define TENSOR_CUDA_MMA_CUH
__device__ __forceinline__ uint32_t bf16x2(float lo, float hi)
{
    const uint32_t a = __float_as_uint(lo), b = __float_as_uint(hi);
    /* round to nearest even (finite inputs; inf stays inf, NaN stays NaN through the top bits) */
    const uint32_t ra = (a + 0x7fffu + ((a >> 16) & 1u)) >> 16, rb = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
    return (ra & 0xffffu) | (rb << 16);
}

/* c[16x8] += a b: a row-major, b column-major (A: 4 words, B: 2 words per thread); the host
 * emulation (tests/cuda_emu.h) implements the same fragment layouts in C++ */
#ifdef __CUDACC__
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#else
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    emu_mma_bf16(c, a, b0, b1);
}
__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    emu_mma_tf32(c, a, b0, b1);
}
#endif

/* x rounded to tf32 (to nearest, ties away from zero: cvt.rna's rounding for finite x; inf stays
 * inf), in an f32 container with 13 low zero bits. Two integer operations at full rate, where
 * cvt.rna.tf32 would go through the conversion unit: the 3xTF32 kernels split every B fragment
 * they load. */
__device__ __forceinline__ uint32_t to_tf32(float x) { return (__float_as_uint(x) + 0x1000u) & 0xffffe000u; }

#endif
