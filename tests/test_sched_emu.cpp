/* test_sched_emu.cpp — the emulator's own promise (tests/cuda_emu.h): a kernel that leaves out a
 * barrier or a cp.async wait gives a wrong result in some launch, the same kernel with it never
 * does, and a barrier some threads never reach stops the launch instead of hanging it. Each race
 * below runs in 8 launches (both fiber orders, both cp.async landings) and must show in at least
 * one; each kernel with its barrier must be right in all 8. Each of the scheduler's rules (the
 * alternating order, the warp first, the hand-over at a completed barrier, the two cp.async
 * landings) is what some case here needs: with it taken out, that case fails. Also: shuffles
 * with a width below 32 follow PTX's segment rule. */
#include "cuda_emu.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

int failures = 0;
constexpr unsigned kT = 128;   /* threads: 4 warps */
constexpr int kLaunches = 8;

/* RAW: each thread writes its slot, then reads the next thread's (the last its own), or the
 * previous one's (the first its own): each shows in one of the two fiber orders only */
__global__ void raw_kernel(float *out, bool sync, int step)
{
    DYN_SMEM(float, s);
    s[threadIdx.x] = (float)threadIdx.x;
    if (sync) __syncthreads();
    out[threadIdx.x] = s[min(max((int)threadIdx.x + step, 0), (int)kT - 1)];
}

/* WAR: two rounds of "each warp writes its slot, everyone sums the slots"; without the second
 * barrier a warp overwrites its slot before the others have read the first round's value */
__global__ void war_kernel(float *out, bool sync)
{
    DYN_SMEM(float, s);
    const unsigned w = threadIdx.x / 32;
    float acc = 0;
    for (int r = 1; r <= 2; r++) {
        if (threadIdx.x % 32 == 0) s[w] = (float)(r * 10 + w);
        __syncthreads();
        for (unsigned i = 0; i < kT / 32; i++) acc += s[i];
        if (sync) __syncthreads();
    }
    out[threadIdx.x] = acc;
}

/* the same through a warp-shuffle block sum called twice (group_norm's block_sum2): the warps
 * drift apart through their shuffles, one runs into the second sum while another still reads
 * the first */
__device__ float block_sum(float v, float *red, bool sync)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    float r = 0;
    for (unsigned i = 0; i < kT / 32; i++) r += red[i];
    if (sync) __syncthreads();
    return r;
}
__global__ void drift_kernel(float *out, bool sync)
{
    DYN_SMEM(float, s);
    const float a = block_sum((float)threadIdx.x, s, sync);
    out[threadIdx.x] = a + block_sum(1.f, s, sync);
}

/* cp.async RAW: each thread issues the copy of its slot, all pass a barrier, each waits for its
 * own copy and reads its neighbour's: the barrier came too early to order the copies */
__global__ void copy_raw_kernel(float *out, const float *in, bool sync)
{
    DYN_SMEM(float, s);
    __pipeline_memcpy_async(s + threadIdx.x, in + threadIdx.x, sizeof(float));
    __pipeline_commit();
    __syncthreads();
    __pipeline_wait_prior(0);
    if (sync) __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % kT];
}

/* cp.async WAR, double-buffered as the attention kernels are: tile t + 1 is copied into the
 * other stage while tile t is read; without the barrier before the copy, a thread's copy of
 * tile t + 1 lands on the stage that its neighbour still reads tile t - 1 from */
__global__ void copy_war_kernel(float *out, const float *in, bool sync)
{
    DYN_SMEM(float, s);   /* [2][kT] */
    constexpr int tiles = 4;
    __pipeline_memcpy_async(s + threadIdx.x, in + threadIdx.x, sizeof(float));
    __pipeline_commit();
    float acc = 0;
    for (int t = 0; t < tiles; t++) {
        if (sync || t == 0) __syncthreads();   /* the stage tile t + 1 goes to has been read */
        if (t + 1 < tiles) {
            __pipeline_memcpy_async(s + ((t + 1) % 2) * kT + threadIdx.x, in + (t + 1) * kT + threadIdx.x, sizeof(float));
            __pipeline_commit();
            __pipeline_wait_prior(1);
        } else {
            __pipeline_wait_prior(0);
        }
        __syncthreads();   /* tile t is in */
        acc += s[(t % 2) * kT + (threadIdx.x + 37) % kT];
    }
    out[threadIdx.x] = acc;
}

/* the split cluster barrier (group_norm's pattern): arrive first, write, wait, read; the wait
 * only waits for every thread to have arrived, so what they wrote after arriving needs a
 * __syncthreads of its own */
__global__ void cluster_kernel(float *out, bool sync)
{
    DYN_SMEM(float, s);
    cooperative_groups::cluster_group cl = cooperative_groups::this_cluster();
    cl.barrier_arrive();
    s[threadIdx.x] = (float)(blockIdx.x * 1000 + threadIdx.x);
    if (sync) __syncthreads();
    cl.barrier_wait();
    out[blockIdx.x * kT + threadIdx.x] = s[(threadIdx.x + 5) % kT];
}

/* a kernel's 8 launches: how many gave the expected result */
template <class K> int right_launches(const char *name, size_t smem, unsigned blocks, unsigned cluster, const std::vector<float> &want,
                                      K kernel)
{
    int right = 0;
    for (int l = 0; l < kLaunches; l++) {
        std::vector<float> out(want.size(), NAN);
        const emu_smem_scope sc(smem);
        emu_launch(emu_dim3{blocks, 1, 1}, cluster, kT, [&] { kernel(out.data()); });
        right += out == want;
    }
    printf("emu sched %-28s right in %d of %d launches\n", name, right, kLaunches);
    return right;
}

void expect(bool ok, const char *what)
{
    if (!ok) {
        printf("emu sched FAILED: %s\n", what);
        failures++;
    }
}

}  // namespace

int main()
{
    std::vector<float> in(4 * kT);
    for (size_t i = 0; i < in.size(); i++) in[i] = (float)(i * 3 + 1);
    std::vector<float> raw(kT), rawp(kT), war(kT), drift(kT, (float)(kT * (kT - 1) / 2 + kT)), craw(kT), cwar(kT, 0.f), clu(2 * kT);
    for (unsigned t = 0; t < kT; t++) {
        raw[t] = (float)(t + 1 < kT ? t + 1 : t);
        rawp[t] = (float)(t > 0 ? t - 1 : t);
        war[t] = 0;
        for (int r = 1; r <= 2; r++)
            for (unsigned w = 0; w < kT / 32; w++) war[t] += (float)(r * 10 + w);
        craw[t] = in[(t + 1) % kT];
        for (int k = 0; k < 4; k++) cwar[t] += in[k * kT + (t + 37) % kT];
        for (unsigned b = 0; b < 2; b++) clu[b * kT + t] = (float)(b * 1000 + (t + 5) % kT);
    }
    const size_t f = sizeof(float);
    for (bool sync : {true, false}) {
        char n[7][48];
        const char *tag = sync ? "with barrier" : "without";
        snprintf(n[0], 48, "raw next %s", tag);
        snprintf(n[6], 48, "raw previous %s", tag);
        snprintf(n[1], 48, "war %s", tag);
        snprintf(n[2], 48, "cp.async raw %s", tag);
        snprintf(n[3], 48, "cp.async war %s", tag);
        snprintf(n[4], 48, "cluster %s", tag);
        snprintf(n[5], 48, "warp drift %s", tag);
        const int r[7] = {
            right_launches(n[0], kT * f, 1, 1, raw, [&](float *o) { raw_kernel(o, sync, 1); }),
            right_launches(n[1], kT * f, 1, 1, war, [&](float *o) { war_kernel(o, sync); }),
            right_launches(n[2], kT * f, 1, 1, craw, [&](float *o) { copy_raw_kernel(o, in.data(), sync); }),
            right_launches(n[3], 2 * kT * f, 1, 1, cwar, [&](float *o) { copy_war_kernel(o, in.data(), sync); }),
            right_launches(n[4], kT * f, 2, 2, clu, [&](float *o) { cluster_kernel(o, sync); }),
            right_launches(n[5], (kT / 32) * f, 1, 1, drift, [&](float *o) { drift_kernel(o, sync); }),
            right_launches(n[6], kT * f, 1, 1, rawp, [&](float *o) { raw_kernel(o, sync, -1); }),
        };
        for (int i = 0; i < 7; i++) expect(sync ? r[i] == kLaunches : r[i] < kLaunches, n[i]);
    }
    /* shuffles over segments of 8 lanes (the width argument), against PTX's rule for
     * shfl.sync with c = ((32 - w) << 8) | 31: lanes [min, max] = [l & ~(w-1), that | (w-1)];
     * bfly and down read lane j only if j <= max (else the own value), idx reads min | src */
    {
        std::vector<float> got(3 * kT, NAN), want(3 * kT);
        for (unsigned t = 0; t < kT; t++) {
            const unsigned l = t % 32, lo = l & ~7u, hi = lo | 7u, base = t - l;
            const unsigned jx = l ^ 8u, jd = l + 3u, ji = lo | (13u & 7u);
            want[3 * t] = (float)(base + (jx <= hi ? jx : l));
            want[3 * t + 1] = (float)(base + (jd <= hi ? jd : l));
            want[3 * t + 2] = (float)(base + ji);
        }
        emu_launch(1, kT, [&] {
            const float v = (float)threadIdx.x;
            got[3 * threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 8, 8);
            got[3 * threadIdx.x + 1] = __shfl_down_sync(0xffffffffu, v, 3, 8);
            got[3 * threadIdx.x + 2] = __shfl_sync(0xffffffffu, v, 13, 8);
        });
        printf("emu sched shuffles of width 8 (xor 8, down 3, lane 13): %s\n", got == want ? "as PTX's rule" : "WRONG");
        expect(got == want, "shuffles of width 8");
    }
    /* a barrier that a quarter of the threads skip: the child must stop (abort), not hang */
    fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        alarm(20);   /* a hang ends in SIGALRM, which fails the check below */
        if (!freopen("/dev/null", "w", stderr)) _exit(3);
        emu_launch(1, kT, [&] {
            if (threadIdx.x < 3 * kT / 4) __syncthreads();
        });
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    const bool aborted = WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
    printf("emu sched deadlock reported: %s\n", aborted ? "yes" : "no");
    expect(aborted, "a barrier some threads skip stops the launch");
    printf("%d failed\n", failures);
    return failures ? 1 : 0;
}
