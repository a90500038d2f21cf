/* cuda_emu.h — just enough of CUDA, on the host, to run the device code of the kernel headers in
 * tensor/cuda (attention, norm, conv2d, matmul) in a test without a GPU (tests/test_..._emu.cpp):
 * each CUDA thread of a cluster is a fiber (its own stack; all of a launch's fibers take turns on
 * the calling OS thread), __syncthreads and the warp collectives are barriers at which a fiber
 * hands over to the next, and emu_mma_bf16 / emu_mma_tf32 implement the fragment layouts of PTX's mma.sync.m16n8k16 bf16
 * (A: a0..a7 at row g / g+8, columns 2t, 2t+1 and +8; B: rows 2t, 2t+1 and +8 of column g;
 * C: row g / g+8, columns 2t, 2t+1, where g = lane / 4 and t = lane % 4) and m16n8k8 tf32 (the
 * same in 32-bit words, one element each), summing in f32.
 * Thread-block clusters: the blocks of one cluster run at the same time, each with its own
 * dynamic shared memory, barriers and warps; cooperative_groups::this_cluster() gives the rank,
 * the cluster barrier and map_shared_rank (the same offset in another block's shared memory).
 * A cp.async copy lands at its issue or at its thread's wait (see __pipeline_memcpy_async).
 * Clusters run one after another. Static __shared__ variables are one copy per kernel, so only
 * kernels launched without clusters may use them.
 * Why fibers and not OS threads: a barrier then costs a user-space switch (x86-64: a few
 * instructions; elsewhere swapcontext), not a futex wake-up and a trip through the kernel's
 * scheduler (the attention suite made 26 million of those: 100 s for 2 s of work). And the
 * schedule is deterministic and chosen to expose a missing barrier: a fiber runs until it
 * blocks; the next comes from its own warp while one is runnable (warps drift apart on a GPU
 * too); the fiber that completes a block, cluster or grid barrier lets the other warps run
 * first; and clusters take the fibers in one order or the other (emu_set_mode). A read of another
 * thread's shared-memory write with no barrier between them then sees the stale value (or the
 * launch's NaN fill), and so does a write (or a cp.async copy) that overtakes another warp's read
 * of the old value. A barrier that not every thread reaches is reported as a deadlock instead of
 * hanging the test. tests/test_sched_emu.cpp checks each of these rules.
 * Not part of the engine. */
#ifndef TESTS_CUDA_EMU_H
#define TESTS_CUDA_EMU_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#ifdef EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if !defined(__x86_64__) || defined(EMU_FIBER_UCONTEXT)
#define EMU_UCONTEXT 1
#include <ucontext.h>
#endif

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
/* the running fiber's; saved and restored at every switch */
inline emu_dim3 threadIdx, blockIdx;
inline unsigned emu_slot;   /* this thread's block within its cluster */
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

/* ---- fibers ---- */
struct emu_barrier {
    unsigned n = 0, count = 0, gen = 0;   /* n fibers; count arrived; gen counts completions */
    bool hand_over = false;               /* the fiber that completes a phase lets another warp run first */
};
struct emu_copy {
    void *dst;
    const void *src;
    size_t n, zfill;
    unsigned group;
};
struct emu_fiber {
    void *sp = nullptr;   /* saved stack pointer (x86-64 switch) */
#ifdef EMU_UCONTEXT
    ucontext_t uc;
#endif
    unsigned char *stack = nullptr;   /* lowest usable byte; nullptr for the launching thread */
    size_t stack_size = 0;
    emu_dim3 tid, bid;
    unsigned slot = 0;
    const emu_barrier *wait = nullptr;   /* blocked until wait->gen != wait_gen */
    unsigned wait_gen = 0;
    bool cl_arrived = false;   /* arrived at the cluster barrier (barrier_arrive), not yet waited */
    unsigned cl_phase = 0;
    std::vector<emu_copy> copies;   /* cp.async copies not landed yet */
    unsigned group = 0;             /* the group new copies join (groups below it are committed) */
    bool done = false;
};
constexpr size_t kEmuFiberStack = 256 * 1024;   /* kernels keep their fragments and tiles' indices here */
inline emu_fiber emu_host_fiber;                 /* the thread that called emu_launch */
inline std::vector<emu_fiber> emu_fibers;
inline emu_fiber *emu_cur = &emu_host_fiber, *emu_prev = nullptr;
inline unsigned emu_cur_i = 0;
inline int emu_dir = 1;                          /* +1 or -1: the order fibers take turns in */
inline bool emu_copy_late = false;               /* cp.async's even groups land at the wait (odd: at the issue) */
inline unsigned emu_clusters = 0;                /* clusters run so far, over all launches */
/* the schedule of the k-th cluster run: the order from the Thue-Morse sequence of k, the cp.async
 * landing from that of k / 2. Neither is periodic, so a test whose launches repeat in any cycle
 * still meets each kernel in both orders and both landings, and any 8 clusters in a row have both
 * of each */
inline void emu_set_mode(unsigned k)
{
    emu_dir = __builtin_popcount(k) % 2 ? -1 : 1;
    emu_copy_late = __builtin_popcount(k / 2) % 2;
}
inline void (*emu_body_fn)(void *);
inline void *emu_body_arg;

#ifndef EMU_UCONTEXT
/* emu_ctx_switch(&from->sp, to->sp): pushes the callee-saved registers of the System V ABI,
 * saves the stack pointer, loads the other one and pops its registers (MXCSR and the x87 control
 * word are callee-saved too, but nothing here changes them). A new fiber's stack holds six zero
 * registers and emu_fiber_main as the return address. */
extern "C" void emu_ctx_switch(void **save_sp, void *new_sp);
__asm__(".pushsection .text\n"
        ".p2align 4\n"
        ".type emu_ctx_switch, @function\n"
        "emu_ctx_switch:\n"
        "    pushq %rbp\n    pushq %rbx\n    pushq %r12\n    pushq %r13\n    pushq %r14\n    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n    popq %r14\n    popq %r13\n    popq %r12\n    popq %rbx\n    popq %rbp\n"
        "    ret\n"
        ".size emu_ctx_switch, .-emu_ctx_switch\n"
        ".popsection\n");
#endif

#ifdef EMU_ASAN
/* the arriving side of a switch, in the fiber that now runs: ASan learns the stack it left (the
 * launching thread's is recorded the first time) */
inline void emu_asan_arrived(void *fake)
{
    const void *pb;
    size_t ps;
    __sanitizer_finish_switch_fiber(fake, &pb, &ps);
    if (!emu_prev->stack_size) emu_prev->stack = (unsigned char *)pb, emu_prev->stack_size = ps;
}
#endif

/* hand the OS thread to fiber `to` (the calling fiber resumes when someone switches back) */
inline void emu_switch(emu_fiber *to)
{
    emu_fiber *from = emu_cur;
    from->tid = threadIdx;
    from->bid = blockIdx;
    from->slot = emu_slot;
    emu_prev = from;
    emu_cur = to;
#ifdef EMU_ASAN
    void *fake = nullptr;   /* a finished fiber's fake stack is released (nullptr) */
    __sanitizer_start_switch_fiber(from->done ? nullptr : &fake, to->stack, to->stack_size);
#endif
#ifdef EMU_UCONTEXT
    swapcontext(&from->uc, &to->uc);
#else
    emu_ctx_switch(&from->sp, to->sp);
#endif
#ifdef EMU_ASAN
    emu_asan_arrived(fake);
#endif
    threadIdx = from->tid;
    blockIdx = from->bid;
    emu_slot = from->slot;
}

inline bool emu_runnable(const emu_fiber &f) { return !f.done && (!f.wait || f.wait->gen != f.wait_gen); }

/* switch to fiber i if it can run; true once the calling fiber has been switched back to */
inline bool emu_try_run(unsigned i)
{
    emu_fiber &f = emu_fibers[i];
    if (!emu_runnable(f)) return false;
    f.wait = nullptr;
    emu_cur_i = i;
    emu_switch(&f);
    return true;
}

/* the calling fiber is blocked or done: run the next runnable one, or go back to the launching
 * thread when all are done. The next one is taken from the same warp while it has one, so a warp
 * runs ahead of the others as far as its barriers let it (on a GPU warps do drift apart): a warp
 * that overwrites shared memory before the other warps have read it shows. */
inline void emu_yield()
{
    const unsigned n = (unsigned)emu_fibers.size(), w0 = emu_cur_i / 32 * 32, wn = n - w0 < 32 ? n - w0 : 32;
    for (unsigned k = 1; k < wn; k++) {
        const unsigned l = emu_cur_i - w0;
        if (emu_try_run(w0 + (emu_dir > 0 ? (l + k) % wn : (l + wn - k) % wn))) return;
    }
    for (unsigned k = 1; k <= n; k++)
        if (emu_try_run(emu_dir > 0 ? (emu_cur_i + k) % n : (emu_cur_i + n - k) % n)) return;
    for (const emu_fiber &f : emu_fibers)
        if (!f.done) {
            fprintf(stderr, "cuda_emu: deadlock: thread %u of block (%u,%u,%u) waits at a barrier that not all its threads reach\n",
                    f.tid.x, f.bid.x, f.bid.y, f.bid.z);
            abort();
        }
    emu_switch(&emu_host_fiber);
}

inline emu_barrier emu_cluster_bar, emu_grid_bar, emu_block_bar[kEmuMaxCluster], emu_warp_bar[kEmuMaxCluster][kEmuMaxWarps];

/* the calling fiber stays runnable but lets the fibers from the next warp on run first */
inline void emu_hand_over()
{
    const unsigned n = (unsigned)emu_fibers.size(), w0 = emu_cur_i / 32 * 32;
    for (unsigned k = 0; k < n; k++) {
        const unsigned i = emu_dir > 0 ? (w0 + 32 + k) % n : (w0 + 2 * n - 1 - k) % n;
        if (i == emu_cur_i || emu_try_run(i)) return;
    }
}

inline void emu_barrier_init(emu_barrier &b, unsigned n, bool hand_over) { b = emu_barrier{n, 0, 0, hand_over}; }

/* arrive; returns the phase the arrival counts towards (complete once b.gen moves past it). The
 * fiber that completes a block, cluster or grid barrier hands over to another warp (see the top
 * of the file): what it writes next, before its next barrier, is then late for them. */
inline unsigned emu_barrier_arrive(emu_barrier &b)
{
    const unsigned g = b.gen;
    if (++b.count == b.n) {   /* the waiting are runnable again */
        b.count = 0;
        b.gen++;
        if (&b == &emu_grid_bar && b.gen % 2) emu_set_mode(emu_clusters++);   /* a cluster starts */
        if (b.hand_over) emu_hand_over();
    }
    return g;
}

/* wait for phase g to complete (at once if it has) */
inline void emu_barrier_await(const emu_barrier &b, unsigned g)
{
    if (b.gen != g) return;
    emu_fiber &f = emu_fibers[emu_cur_i];
    f.wait = &b;
    f.wait_gen = g;
    emu_yield();
}

inline void emu_barrier_wait(emu_barrier &b) { emu_barrier_await(b, emu_barrier_arrive(b)); }

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

inline void __syncthreads() { emu_barrier_wait(emu_block_bar[emu_slot]); }
inline void emu_warp_sync() { emu_barrier_wait(emu_warp_bar[emu_slot][threadIdx.x / 32]); }

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
/* with a width w < 32 the warp is w-lane segments, as on the device: xor may read an earlier
 * segment but a later one gives the lane its own value; down stops at its segment's end; the
 * indexed form reads lane src % w of its own segment */
template <class T> T __shfl_xor_sync(unsigned, T v, int m, int w = 32)
{
    return emu_shuffle(v, [m, w](unsigned l) {
        const unsigned s = l ^ (unsigned)m;
        return s / (unsigned)w > l / (unsigned)w ? l : s;
    });
}
template <class T> T __shfl_down_sync(unsigned, T v, int d, int w = 32)
{
    return emu_shuffle(v, [d, w](unsigned l) { return l % (unsigned)w + (unsigned)d >= (unsigned)w ? l : l + (unsigned)d; });
}
template <class T> T __shfl_sync(unsigned, T v, int src, int w = 32)
{
    return emu_shuffle(v, [src, w](unsigned l) { return l / (unsigned)w * (unsigned)w + (unsigned)src % (unsigned)w; });
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
template <class T> T __ldcg(const T *p) { return *p; }
/* one OS thread: memory is coherent, a fence orders nothing more */
inline void __threadfence() {}
/* the fibers take turns on one OS thread: a plain read-modify-write is atomic */
inline unsigned atomicInc(unsigned *p, unsigned limit)
{
    const unsigned old = *p;
    *p = old >= limit ? 0u : old + 1u;
    return old;
}
template <class T> T atomicMin(T *p, T v)
{
    const T old = *p;
    if (v < old) *p = v;
    return old;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline int64_t min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max(int64_t a, int64_t b) { return a > b ? a : b; }

/* cp.async: on the device a copy lands at some time between its issue and its thread's wait for
 * its group (__pipeline_wait_prior). Here it lands at one of the two ends: groups alternate, and
 * which starts depends on the cluster (emu_set_mode). At the wait, a read of shared memory that
 * another thread's copy fills shows a missing wait or barrier as the old contents; at the issue,
 * a copy into memory that other threads still read shows a missing barrier before it. An address not aligned to the copy's size
 * (a fault on the device) stops the test. zfill: the last zfill bytes are zeros, not read. */
inline void emu_copy_land(const emu_copy &c)
{
    memcpy(c.dst, c.src, c.n - c.zfill);
    memset((unsigned char *)c.dst + (c.n - c.zfill), 0, c.zfill);
}
inline void __pipeline_memcpy_async(void *dst, const void *src, size_t n, size_t zfill = 0)
{
    if (((uintptr_t)dst | (uintptr_t)src) % n || zfill > n) {
        fprintf(stderr, "cuda_emu: cp.async of %zu bytes (zfill %zu) from %p to %p is misaligned\n", n, zfill, src, dst);
        abort();
    }
    emu_fiber &f = emu_fibers[emu_cur_i];
    const emu_copy c{dst, src, n, zfill, f.group};
    if (emu_copy_late != (f.group % 2 == 1)) f.copies.push_back(c);
    else emu_copy_land(c);
}
/* the copies issued since the last commit are one group */
inline void __pipeline_commit() { emu_fibers[emu_cur_i].group++; }
/* all but the newest n committed groups land */
inline void __pipeline_wait_prior(int n)
{
    emu_fiber &f = emu_fibers[emu_cur_i];
    size_t keep = 0;
    for (const emu_copy &c : f.copies)
        if (c.group + (unsigned)n < f.group) {
            emu_copy_land(c);
        } else {
            f.copies[keep++] = c;
        }
    f.copies.resize(keep);
}

namespace cooperative_groups {
struct cluster_group {
    unsigned block_rank() const { return emu_slot; }
    unsigned num_blocks() const { return emu_cluster_size; }
    void sync() const
    {
        if (emu_fibers[emu_cur_i].cl_arrived) {
            fprintf(stderr, "cuda_emu: cluster sync between barrier_arrive and barrier_wait\n");
            abort();
        }
        emu_barrier_wait(emu_cluster_bar);
    }
    /* split barrier: barrier_wait waits for every thread of the cluster to have arrived, not to
     * have reached the wait, so what a thread writes between its arrive and its wait is not
     * ordered by it (as on the device: a kernel needs __syncthreads for that) */
    struct arrival_token {};
    arrival_token barrier_arrive() const
    {
        emu_fiber &f = emu_fibers[emu_cur_i];
        if (f.cl_arrived) {
            fprintf(stderr, "cuda_emu: barrier_arrive twice without barrier_wait\n");
            abort();
        }
        f.cl_arrived = true;
        f.cl_phase = emu_barrier_arrive(emu_cluster_bar);
        return arrival_token{};
    }
    void barrier_wait() const
    {
        emu_fiber &f = emu_fibers[emu_cur_i];
        if (!f.cl_arrived) f.cl_phase = emu_barrier_arrive(emu_cluster_bar);   /* arrive and wait */
        f.cl_arrived = false;
        emu_barrier_await(emu_cluster_bar, f.cl_phase);
    }
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

inline emu_dim3 emu_grid;

/* a fiber's life: every cluster of the grid in turn, with the launch's other fibers (barriers
 * between clusters), then done */
[[noreturn]] inline void emu_fiber_main()
{
#ifdef EMU_ASAN
    emu_asan_arrived(nullptr);
#endif
    threadIdx = emu_cur->tid;
    emu_slot = emu_cur->slot;
    for (unsigned bz = 0; bz < emu_grid.z; bz++)
        for (unsigned by = 0; by < emu_grid.y; by++)
            for (unsigned bx = 0; bx < emu_grid.x; bx += emu_cluster_size) {
                blockIdx.x = bx + emu_slot;
                blockIdx.y = by;
                blockIdx.z = bz;
                emu_barrier_wait(emu_grid_bar);   /* the previous cluster is done */
                emu_body_fn(emu_body_arg);
                if (!emu_cur->copies.empty()) {
                    fprintf(stderr, "cuda_emu: thread %u of block (%u,%u,%u) ends with %zu cp.async copies not waited for\n",
                            threadIdx.x, blockIdx.x, blockIdx.y, blockIdx.z, emu_cur->copies.size());
                    abort();
                }
                emu_cur->group = 0;
                emu_barrier_wait(emu_grid_bar);
            }
    emu_cur->done = true;
    emu_yield();
    abort();   /* a finished fiber is never resumed */
}

/* stacks, kept from launch to launch (each with a guard page below it) */
inline std::vector<unsigned char *> emu_stacks;
inline unsigned char *emu_stack(size_t i)
{
    while (emu_stacks.size() <= i) {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        void *m = mmap(nullptr, kEmuFiberStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED || mprotect(m, page, PROT_NONE) != 0) {
            fprintf(stderr, "cuda_emu: cannot map a fiber stack of %zu bytes\n", kEmuFiberStack);
            abort();
        }
        emu_stacks.push_back((unsigned char *)m + page);
    }
#ifdef EMU_ASAN   /* a finished fiber's last frames were never returned from: their redzones stay poisoned */
    __asan_unpoison_memory_region(emu_stacks[i], kEmuFiberStack);
#endif
    return emu_stacks[i];
}

/* run body() over a grid of grid.x * grid.y * grid.z blocks of `threads` threads (<= 512) in
 * clusters of `cluster` blocks along x (grid.x % cluster == 0): one fiber per CUDA thread of a
 * cluster, reused from cluster to cluster; returns when every fiber has run the whole grid */
template <class F> void emu_launch(emu_dim3 grid, unsigned cluster, unsigned threads, F body)
{
    const unsigned warps = (threads + 31) / 32, all = cluster * threads;
    if (threads == 0 || warps > (unsigned)kEmuMaxWarps || cluster == 0 || cluster > (unsigned)kEmuMaxCluster || grid.x % cluster) {
        fprintf(stderr, "cuda_emu: launch of %u threads in clusters of %u (grid.x %u) is out of the emulator's range\n", threads,
                cluster, grid.x);
        abort();
    }
    emu_barrier_init(emu_grid_bar, all, true);
    emu_barrier_init(emu_cluster_bar, all, true);
    for (unsigned b = 0; b < cluster; b++) {
        emu_barrier_init(emu_block_bar[b], threads, true);
        for (unsigned w = 0; w < warps; w++) emu_barrier_init(emu_warp_bar[b][w], 32, false);
    }
    blockDim.x = threads;
    gridDim = grid;
    emu_grid = grid;
    emu_cluster_size = cluster;
    for (unsigned b = 0; b < cluster && emu_smem_bytes; b++) {   /* new[] is 16-byte aligned, and exact for ASan */
        emu_smem_heap[b] = new unsigned char[emu_smem_bytes];
        memset(emu_smem_heap[b], 0xff, emu_smem_bytes);
    }
    emu_body_fn = [](void *f) { (*static_cast<F *>(f))(); };
    emu_body_arg = &body;
    emu_fibers.assign(all, emu_fiber{});
    for (unsigned t = 0; t < all; t++) {
        emu_fiber &f = emu_fibers[t];
        f.tid.x = t % threads;
        f.slot = t / threads;
        f.stack = emu_stack(t);
        f.stack_size = kEmuFiberStack;
#ifdef EMU_UCONTEXT
        getcontext(&f.uc);
        f.uc.uc_stack.ss_sp = f.stack;
        f.uc.uc_stack.ss_size = f.stack_size;
        f.uc.uc_link = nullptr;
        makecontext(&f.uc, emu_fiber_main, 0);
#else
        void **top = (void **)(f.stack + f.stack_size);   /* 16-byte aligned */
        top[-1] = nullptr;                                /* emu_fiber_main's return address: never used */
        top[-2] = (void *)&emu_fiber_main;                /* where emu_ctx_switch's ret goes */
        for (int r = 3; r <= 8; r++) top[-r] = nullptr;   /* rbp rbx r12-r15 */
        f.sp = top - 8;
#endif
    }
    emu_set_mode(emu_clusters);   /* the first cluster's (the grid barrier before it sets it again) */
    emu_cur_i = emu_dir > 0 ? 0 : all - 1;
    emu_switch(&emu_fibers[emu_cur_i]);   /* back when all are done */
    emu_fibers.clear();
    for (unsigned b = 0; b < cluster && emu_smem_bytes; b++) delete[] emu_smem_heap[b];
}

/* a grid of gx * gy blocks in clusters of `cluster` along x */
template <class F> void emu_launch(unsigned gx, unsigned gy, unsigned cluster, unsigned threads, F body)
{
    emu_launch(emu_dim3{gx, gy, 1}, cluster, threads, body);
}

/* a one-dimensional grid of single blocks */
template <class F> void emu_launch(unsigned grid, unsigned threads, F body) { emu_launch(emu_dim3{grid, 1, 1}, 1, threads, body); }

#endif
