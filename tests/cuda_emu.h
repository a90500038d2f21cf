/* cuda_emu.h — just enough of CUDA, on the host, to run the device code of attention_kernels.cuh in
 * a test without a GPU (tests/test_attention_emu.cpp): each thread of a block is an OS thread,
 * __syncthreads and the warp collectives are barriers, and emu_mma_bf16 implements the fragment
 * layout of PTX's mma.sync.m16n8k16.row.col bf16 (A: a0..a7 at row g / g+8, columns 2t, 2t+1 and
 * +8; B: rows 2t, 2t+1 and +8 of column g; C: row g / g+8, columns 2t, 2t+1, where g = lane / 4 and
 * t = lane % 4), summing in f32. Blocks run one after another. Not part of the engine. */
#ifndef TESTS_CUDA_EMU_H
#define TESTS_CUDA_EMU_H

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __restrict__
#define __shared__ static   /* function-local arrays: one copy, shared by the block's threads */

struct emu_dim3 {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local emu_dim3 threadIdx;
inline emu_dim3 blockIdx, blockDim, gridDim;
struct alignas(16) float4 {
    float x, y, z, w;
};

constexpr int kEmuMaxWarps = 8;
inline pthread_barrier_t emu_block_bar, emu_warp_bar[kEmuMaxWarps];
inline float emu_shfl[kEmuMaxWarps][32];
inline uint32_t emu_mma_a[kEmuMaxWarps][32][4], emu_mma_b[kEmuMaxWarps][32][2];
alignas(16) inline unsigned char emu_dyn_smem[256 * 1024];
#define DYN_SMEM(type, name) type *name = reinterpret_cast<type *>(emu_dyn_smem)

inline void __syncthreads() { pthread_barrier_wait(&emu_block_bar); }
inline void emu_warp_sync() { pthread_barrier_wait(&emu_warp_bar[threadIdx.x / 32]); }

inline float __shfl_xor_sync(unsigned, float v, int m)
{
    const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
    emu_shfl[w][l] = v;
    emu_warp_sync();
    const float r = emu_shfl[w][l ^ (unsigned)m];
    emu_warp_sync();
    return r;
}

inline float __shfl_down_sync(unsigned, float v, int d)
{
    const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
    emu_shfl[w][l] = v;
    emu_warp_sync();
    const float r = l + (unsigned)d < 32 ? emu_shfl[w][l + (unsigned)d] : v;
    emu_warp_sync();
    return r;
}

inline uint32_t __float_as_uint(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
inline float __ldg(const float *p) { return *p; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

inline float emu_bf16(uint32_t h)
{
    const uint32_t u = (h & 0xffffu) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* one warp-wide mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32: c += A B */
inline void emu_mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32, g = l / 4, t = l % 4;
    memcpy(emu_mma_a[w][l], a, sizeof a);
    emu_mma_b[w][l][0] = b0;
    emu_mma_b[w][l][1] = b1;
    emu_warp_sync();
    for (unsigned e = 0; e < 4; e++) {
        const unsigned row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        float acc = 0;
        for (unsigned k = 0; k < 16; k++) {
            const uint32_t aw = emu_mma_a[w][(row % 8) * 4 + (k % 8) / 2][(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)];
            const uint32_t bw = emu_mma_b[w][col * 4 + (k % 8) / 2][k >= 8 ? 1 : 0];
            acc += emu_bf16((k & 1) ? aw >> 16 : aw) * emu_bf16((k & 1) ? bw >> 16 : bw);
        }
        c[e] += acc;
    }
    emu_warp_sync();
}

/* run body() as a grid of `grid` one-dimensional blocks of `threads` threads (<= 256): one OS
 * thread per CUDA thread, reused from block to block (barriers between blocks) */
template <class F> void emu_launch(unsigned grid, unsigned threads, F body)
{
    const unsigned warps = (threads + 31) / 32;
    pthread_barrier_t grid_bar;
    pthread_barrier_init(&grid_bar, nullptr, threads);
    pthread_barrier_init(&emu_block_bar, nullptr, threads);
    for (unsigned w = 0; w < warps; w++) pthread_barrier_init(&emu_warp_bar[w], nullptr, 32);
    blockDim.x = threads;
    gridDim.x = grid;
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < threads; t++) ts.emplace_back([t, grid, &grid_bar, &body] {
        threadIdx.x = t;
        for (unsigned bx = 0; bx < grid; bx++) {
            if (t == 0) blockIdx.x = bx;
            pthread_barrier_wait(&grid_bar);   /* blockIdx is set; the previous block is done */
            body();
            pthread_barrier_wait(&grid_bar);
        }
    });
    for (auto &th : ts) th.join();
    pthread_barrier_destroy(&grid_bar);
    pthread_barrier_destroy(&emu_block_bar);
    for (unsigned w = 0; w < warps; w++) pthread_barrier_destroy(&emu_warp_bar[w]);
}

#endif
