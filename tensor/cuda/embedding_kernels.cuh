/* embedding_kernels.cuh — embedding.cu's kernels: the row gather (recording the first position
 * of an id outside the table), the sort keys of the backward and its per-run sums over the
 * stably sorted ids. Included by embedding.cu, and by tests/test_ew_emu.cpp on the host through
 * tests/cuda_emu.h (a stable host sort standing in for CUB's), against the CPU backend. Needs
 * <stdint.h>. */
#ifndef TENSOR_CUDA_EMBEDDING_KERNELS_CUH
#define TENSOR_CUDA_EMBEDDING_KERNELS_CUH

__device__ __forceinline__ int64_t id_at(const char *ids, bool i64, int64_t i, int64_t st)
{
    return i64 ? reinterpret_cast<const int64_t *>(ids)[i * st] : (int64_t)reinterpret_cast<const int32_t *>(ids)[i * st];
}

/* out[i, j] = weight[ids[i], j]; an id outside [0, V) is not read, and the smallest position
 * holding one is recorded in *bad (the min is the same whatever the order) */
template <typename U>
__global__ void k_embedding(char *out, int64_t so0, int64_t so1, const char *w, int64_t sw0, int64_t sw1,
                            const char *ids, bool i64, int64_t sid, int64_t n, int64_t D, int64_t V,
                            unsigned long long *bad)
{
    const int64_t total = n * D;
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = t / D, j = t - i * D, id = id_at(ids, i64, i, sid);
        if (id < 0 || id >= V) {
            if (j == 0) atomicMin(bad, (unsigned long long)i);
            continue;
        }
        reinterpret_cast<U *>(out)[i * so0 + j * so1] = reinterpret_cast<const U *>(w)[id * sw0 + j * sw1];
    }
}

/* keys: the id, or V for an id outside the table (sorted last and skipped) */
static __global__ void k_embed_keys(unsigned long long *keys, int64_t *pos, const char *ids, bool i64, int64_t sid, int64_t n,
                             int64_t V)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t id = id_at(ids, i64, i, sid);
        keys[i] = (unsigned long long)(id < 0 || id >= V ? V : id);
        pos[i] = i;
    }
}

/* thread (s, j): if sorted entry s starts a run of equal ids, add that run's dy rows, in
 * position order, into dweight[id, j] */
template <typename T>
__global__ void k_embed_bwd(T *dw, int64_t sw0, int64_t sw1, const T *dy, int64_t sy0, int64_t sy1,
                            const unsigned long long *keys, const int64_t *pos, int64_t n, int64_t D, int64_t V)
{
    const int64_t total = n * D;
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
        const int64_t s = t / D, j = t - s * D;
        const unsigned long long key = keys[s];
        if ((int64_t)key >= V || (s > 0 && keys[s - 1] == key)) continue;
        T *dst = dw + (int64_t)key * sw0 + j * sw1;
        T acc = *dst;
        for (int64_t r = s; r < n && keys[r] == key; r++) acc += dy[pos[r] * sy0 + j * sy1];
        *dst = acc;
    }
}

#endif
