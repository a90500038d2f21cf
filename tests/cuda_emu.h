/* cuda_emu.h — just enough of CUDA, on the host, to run the device code of the kernel headers in
 * tensor/cuda (attention, norm, conv2d, matmul) in a test without a GPU (tests/test_..._emu.cpp):
 * each thread of a block is an OS thread, __syncthreads and the warp collectives are barriers,
 * and emu_mma_bf16 / emu_mma_tf32 implement the fragment layouts of PTX's mma.sync.m16n8k16 bf16
 * (A: a0..a7 at row g / g+8, columns 2t, 2t+1 and +8; B: rows 2t, 2t+1 and +8 of column g;
 * C: row g / g+8, columns 2t, 2t+1, where g = lane / 4 and t = lane % 4) and m16n8k8 tf32 (the
 * same in 32-bit words, one element each), summing in f32.
 * Thread-block clusters: the blocks of one cluster run at the same time, each with its own
 * dynamic shared memory, barriers and warps; cooperative_groups::this_cluster() gives the rank,
 * the cluster barrier and map_shared_rank (the same offset in another block's shared memory).
 * cp.async copies at once. Clusters run one after another. Static __shared__ variables are one
 * copy per kernel, so only kernels launched without clusters may use them. Not part of the
 * engine. */
#ifndef TESTS_CUDA_EMU_H
#define TESTS_CUDA_EMU_H

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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
inline thread_local emu_dim3 threadIdx, blockIdx;
inline thread_local unsigned emu_slot;   /* this thread's block within its cluster */
inline emu_dim3 blockDim, gridDim;
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) double2 {
    double x, y;
};
struct alignas(8) uint2 {
    uint32_t x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline uint2 make_uint2(uint32_t x, uint32_t y) { return uint2{x, y}; }
inline double2 make_double2(double x, double y) { return double2{x, y}; }

constexpr int kEmuMaxWarps = 16, kEmuMaxCluster = 8;
constexpr size_t kEmuSmemPerBlock = 227 * 1024;   /* sm_90's most per block */
inline unsigned emu_cluster_size = 1;
inline pthread_barrier_t emu_cluster_bar, emu_block_bar[kEmuMaxCluster], emu_warp_bar[kEmuMaxCluster][kEmuMaxWarps];
inline uint64_t emu_shfl[kEmuMaxCluster][kEmuMaxWarps][32];
inline uint32_t emu_mma_a[kEmuMaxCluster][kEmuMaxWarps][32][4], emu_mma_b[kEmuMaxCluster][kEmuMaxWarps][32][2];
alignas(16) inline unsigned char emu_dyn_smem[kEmuMaxCluster][kEmuSmemPerBlock];
/* the dynamic shared memory of the launches in an emu_smem_scope: each block of a cluster gets a
 * heap buffer of exactly the bytes the device launch asks for, filled with 0xff (NaN as floats),
 * so that an access past it is an ASan error and a read of what the kernel never wrote shows; else
 * (no scope) each gets the whole static buffer above */
inline size_t emu_smem_bytes = 0;
inline unsigned char *emu_smem_heap[kEmuMaxCluster];
inline unsigned char *emu_smem(unsigned slot) { return emu_smem_bytes ? emu_smem_heap[slot] : emu_dyn_smem[slot]; }
struct emu_smem_scope {
    explicit emu_smem_scope(size_t bytes) { emu_smem_bytes = bytes; }
    ~emu_smem_scope() { emu_smem_bytes = 0; }
};
#define DYN_SMEM(type, name) type *name = reinterpret_cast<type *>(emu_smem(emu_slot))

inline void __syncthreads() { pthread_barrier_wait(&emu_block_bar[emu_slot]); }
inline void emu_warp_sync() { pthread_barrier_wait(&emu_warp_bar[emu_slot][threadIdx.x / 32]); }

/* lane l of the warp gets the value of lane src(l) (or its own where src is out of range) */
template <class T, class F> T emu_shuffle(T v, F src)
{
    static_assert(sizeof(T) <= 8, "shuffled values are at most 8 bytes");
    const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32, s = src(l);
    memcpy(&emu_shfl[emu_slot][w][l], &v, sizeof v);
    emu_warp_sync();
    T r = v;
    if (s < 32) memcpy(&r, &emu_shfl[emu_slot][w][s], sizeof r);
    emu_warp_sync();
    return r;
}
template <class T> T __shfl_xor_sync(unsigned, T v, int m)
{
    return emu_shuffle(v, [m](unsigned l) { return l ^ (unsigned)m; });
}
template <class T> T __shfl_down_sync(unsigned, T v, int d)
{
    return emu_shuffle(v, [d](unsigned l) { return l + (unsigned)d; });
}
template <class T> T __shfl_sync(unsigned, T v, int src)
{
    return emu_shuffle(v, [src](unsigned) { return (unsigned)src; });
}

inline uint32_t __float_as_uint(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}
template <class T> T __ldg(const T *p) { return *p; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

/* cp.async: the copy happens at once, so waiting is free; an address not aligned to the copy's
 * size (a fault on the device) stops the test. zfill: the last zfill bytes are zeros, not read. */
inline void __pipeline_memcpy_async(void *dst, const void *src, size_t n, size_t zfill = 0)
{
    if (((uintptr_t)dst | (uintptr_t)src) % n || zfill > n) {
        fprintf(stderr, "cuda_emu: cp.async of %zu bytes (zfill %zu) from %p to %p is misaligned\n", n, zfill, src, dst);
        abort();
    }
    memcpy(dst, src, n - zfill);
    memset((unsigned char *)dst + (n - zfill), 0, zfill);
}
inline void __pipeline_commit() {}
inline void __pipeline_wait_prior(int) {}

namespace cooperative_groups {
struct cluster_group {
    unsigned block_rank() const { return emu_slot; }
    unsigned num_blocks() const { return emu_cluster_size; }
    void sync() const { pthread_barrier_wait(&emu_cluster_bar); }
    /* split barrier: arriving is free here, waiting waits for every thread to reach the wait */
    struct arrival_token {};
    arrival_token barrier_arrive() const { return arrival_token{}; }
    void barrier_wait() const { pthread_barrier_wait(&emu_cluster_bar); }
    /* the address p has in block `rank`'s shared memory (p must be in this block's) */
    template <class T> T *map_shared_rank(T *p, int rank) const
    {
        const size_t off = (size_t)(reinterpret_cast<unsigned char *>(p) - emu_smem(emu_slot));
        return reinterpret_cast<T *>(emu_smem((unsigned)rank) + off);
    }
};
inline cluster_group this_cluster() { return cluster_group{}; }
}  // namespace cooperative_groups

/* xorshift: the tests' deterministic inputs, in [-1, 1) */
inline double emu_urand(uint64_t &s)
{
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return (double)(s >> 11) / 9007199254740992.0 * 2 - 1;
}

inline float emu_bf16(uint32_t h)
{
    const uint32_t u = (h & 0xffffu) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* one warp-wide mma.sync with f32 accumulation, c += A B, over 32-bit words holding EPW elements
 * each along k (the k step is 8 EPW): the lanes' fragments are exchanged, then each lane sums
 * its C elements; elem(word, i) is element i of a word as f32 */
template <unsigned EPW, class Elem>
inline void emu_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, Elem elem)
{
    const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32, g = l / 4, t = l % 4, k0 = emu_slot;
    memcpy(emu_mma_a[k0][w][l], a, sizeof a);
    emu_mma_b[k0][w][l][0] = b0;
    emu_mma_b[k0][w][l][1] = b1;
    emu_warp_sync();
    for (unsigned e = 0; e < 4; e++) {
        const unsigned row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        float acc = 0;
        for (unsigned k = 0; k < 8 * EPW; k++) {
            const unsigned kw = k / EPW, i = k % EPW;   /* word kw of the step (lane column kw % 4, register kw / 4) */
            const uint32_t aw = emu_mma_a[k0][w][(row % 8) * 4 + kw % 4][(row >= 8 ? 1 : 0) + (kw >= 4 ? 2 : 0)];
            const uint32_t bw = emu_mma_b[k0][w][col * 4 + kw % 4][kw >= 4 ? 1 : 0];
            acc += elem(aw, i) * elem(bw, i);
        }
        c[e] += acc;
    }
    emu_warp_sync();
}

/* mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32 */
inline void emu_mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    emu_mma<2>(c, a, b0, b1, [](uint32_t wd, unsigned i) { return emu_bf16(i ? wd >> 16 : wd); });
}

/* mma.sync.m16n8k8.row.col.f32.tf32.tf32.f32: each input read as tf32 (its 13 low bits ignored) */
inline void emu_mma_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    emu_mma<1>(c, a, b0, b1, [](uint32_t wd, unsigned) { return __uint_as_float(wd & 0xffffe000u); });
}

/* run body() over a grid of grid.x * grid.y * grid.z blocks of `threads` threads (<= 512) in
 * clusters of `cluster` blocks along x (grid.x % cluster == 0): one OS thread per CUDA thread of a
 * cluster, reused from cluster to cluster (barriers between clusters) */
template <class F> void emu_launch(emu_dim3 grid, unsigned cluster, unsigned threads, F body)
{
    const unsigned warps = (threads + 31) / 32, all = cluster * threads;
    pthread_barrier_t grid_bar;
    pthread_barrier_init(&grid_bar, nullptr, all);
    pthread_barrier_init(&emu_cluster_bar, nullptr, all);
    for (unsigned b = 0; b < cluster; b++) {
        pthread_barrier_init(&emu_block_bar[b], nullptr, threads);
        for (unsigned w = 0; w < warps; w++) pthread_barrier_init(&emu_warp_bar[b][w], nullptr, 32);
    }
    blockDim.x = threads;
    gridDim = grid;
    emu_cluster_size = cluster;
    for (unsigned b = 0; b < cluster && emu_smem_bytes; b++) {   /* new[] is 16-byte aligned, and exact for ASan */
        emu_smem_heap[b] = new unsigned char[emu_smem_bytes];
        memset(emu_smem_heap[b], 0xff, emu_smem_bytes);
    }
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < all; t++) ts.emplace_back([t, threads, cluster, grid, &grid_bar, &body] {
        threadIdx.x = t % threads;
        emu_slot = t / threads;
        for (unsigned bz = 0; bz < grid.z; bz++)
            for (unsigned by = 0; by < grid.y; by++)
                for (unsigned bx = 0; bx < grid.x; bx += cluster) {
                    blockIdx.x = bx + emu_slot;
                    blockIdx.y = by;
                    blockIdx.z = bz;
                    pthread_barrier_wait(&grid_bar);   /* the previous cluster is done */
                    body();
                    pthread_barrier_wait(&grid_bar);
                }
    });
    for (auto &th : ts) th.join();
    for (unsigned b = 0; b < cluster && emu_smem_bytes; b++) delete[] emu_smem_heap[b];
    pthread_barrier_destroy(&grid_bar);
    pthread_barrier_destroy(&emu_cluster_bar);
    for (unsigned b = 0; b < cluster; b++) {
        pthread_barrier_destroy(&emu_block_bar[b]);
        for (unsigned w = 0; w < warps; w++) pthread_barrier_destroy(&emu_warp_bar[b][w]);
    }
}

/* a grid of gx * gy blocks in clusters of `cluster` along x */
template <class F> void emu_launch(unsigned gx, unsigned gy, unsigned cluster, unsigned threads, F body)
{
    emu_launch(emu_dim3{gx, gy, 1}, cluster, threads, body);
}

/* a one-dimensional grid of single blocks */
template <class F> void emu_launch(unsigned grid, unsigned threads, F body) { emu_launch(emu_dim3{grid, 1, 1}, 1, threads, body); }

#endif
