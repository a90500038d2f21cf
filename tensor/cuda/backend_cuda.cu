/* backend_cuda.cu — the CUDA backend's table, device discovery, raw memory, host transfers,
 * the stream and the cuBLAS handle. */
#include "tensor/cuda/common.cuh"

#include <cuda_profiler_api.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

/* Everything runs on one non-blocking stream, so kernels are ordered among themselves and a
 * block freed to the caching allocator can be handed out again at once: any later use of it
 * is queued behind the kernels that still read it. */
static cudaStream_t g_stream;
static cublasHandle_t g_blas;

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static enum status g_init_status = STATUS_DEVICE;
static char g_init_msg[512];

void *cuda_stream(void) { return (void *)g_stream; }
cublasHandle_t cuda_blas_handle(void) { return g_blas; }

enum status cuda_synchronize(void)
{
    CUDA_TRY(cudaStreamSynchronize(g_stream));
    return STATUS_OK;
}

bool cuda_switch(const char *name, bool def)
{
    const char *e = getenv(name);
    return e && *e ? *e == '1' : def;
}

int cuda_sm_count(void)
{
    static int n = 0;
    if (!n) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
            n = 132;
    }
    return n;
}

static cudaEvent_t g_timer[2];

enum status cuda_timer_begin(void)
{
    for (int i = 0; i < 2; i++)
        if (!g_timer[i]) CUDA_TRY(cudaEventCreate(&g_timer[i]));
    CUDA_TRY(cudaEventRecord(g_timer[0], g_stream));
    return STATUS_OK;
}

enum status cuda_timer_end(double *ms)
{
    float t = 0;
    if (!g_timer[0] || !g_timer[1]) return tensor_fail(STATUS_VALUE, "cuda_timer_end: no cuda_timer_begin before");
    CUDA_TRY(cudaEventRecord(g_timer[1], g_stream));
    CUDA_TRY(cudaEventSynchronize(g_timer[1]));
    CUDA_TRY(cudaEventElapsedTime(&t, g_timer[0], g_timer[1]));
    *ms = t;
    return STATUS_OK;
}

enum status cuda_profiler_mark(bool start)
{
    CUDA_TRY(cudaStreamSynchronize(g_stream));
    CUDA_TRY(start ? cudaProfilerStart() : cudaProfilerStop());
    return STATUS_OK;
}

/* "<name> (sm_XY, N GiB), driver X.Y, runtime X.Y, cuBLAS X.Y.Z" */
static void cuda_describe(char *buf, size_t n)
{
    int dev = 0, drv = 0, rt = 0, bl[3] = {0, 0, 0};
    cudaDeviceProp pr;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&pr, dev) != cudaSuccess ||
        cudaDriverGetVersion(&drv) != cudaSuccess || cudaRuntimeGetVersion(&rt) != cudaSuccess) {
        snprintf(buf, n, "the device did not answer");
        return;
    }
    const libraryPropertyType what[3] = {MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL};
    for (int i = 0; i < 3; i++)
        if (cublasGetProperty(what[i], &bl[i]) != CUBLAS_STATUS_SUCCESS) bl[i] = -1;
    snprintf(buf, n, "%s (sm_%d%d, %.0f GiB), driver %d.%d, runtime %d.%d, cuBLAS %d.%d.%d", pr.name, pr.major, pr.minor,
             (double)pr.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), drv / 1000, drv % 1000 / 10, rt / 1000,
             rt % 1000 / 10, bl[0], bl[1], bl[2]);
}

static enum status cuda_memory(int64_t *available, int64_t *total)
{
    size_t fr = 0, tot = 0;
    CUDA_TRY(cudaMemGetInfo(&fr, &tot));
    *available = (int64_t)fr, *total = (int64_t)tot;
    return STATUS_OK;
}

static void *cuda_raw_alloc(size_t bytes)
{
    void *p = NULL;
    /* plain device memory (never managed); out of memory is reported by alloc.c with the
     * size and the usage, so only clear the (non-sticky) error here */
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    return p;
}

static void cuda_raw_free(void *p)
{
    /* cudaFree waits for the device, so no kernel still reads the block */
    cudaError_t e = cudaFree(p);
    if (e != cudaSuccess) {
        fprintf(stderr, "draft: cudaFree failed: %s\n", cudaGetErrorString(e));
        (void)cudaGetLastError();
    }
}

/* Transfers go through the stream, behind the kernels that produce or consume the bytes, and
 * wait for completion: the host buffer may be reused as soon as we return. */
static enum status cuda_upload(void *dst, const void *src, size_t bytes)
{
    if (!bytes) return STATUS_OK;
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g_stream));
    CUDA_TRY(cudaStreamSynchronize(g_stream));
    return STATUS_OK;
}

static enum status cuda_download(void *dst, const void *src, size_t bytes)
{
    if (!bytes) return STATUS_OK;
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g_stream));
    CUDA_TRY(cudaStreamSynchronize(g_stream));
    return STATUS_OK;
}

const struct backend backend_cuda = {
    .name = "cuda",
    .device = DEVICE_CUDA,
    .raw_alloc = cuda_raw_alloc,
    .raw_free = cuda_raw_free,
    .copy = cuda_copy,
    .fill = cuda_fill,
    .upload = cuda_upload,
    .download = cuda_download,
    .unary = cuda_unary,
    .unary_backward = cuda_unary_backward,
    .binary = cuda_binary,
    .where = cuda_where,
    .reduce = cuda_reduce,
    .matmul = cuda_matmul,
    .conv2d = cuda_conv2d,
    .conv2d_backward_input = cuda_conv2d_backward_input,
    .conv2d_backward_weight = cuda_conv2d_backward_weight,
    .softmax = cuda_softmax,
    .softmax_backward = cuda_softmax_backward,
    .layer_norm = cuda_layer_norm,
    .layer_norm_backward = cuda_layer_norm_backward,
    .group_norm = cuda_group_norm,
    .group_norm_backward = cuda_group_norm_backward,
    .attention = cuda_attention,
    .attention_backward = cuda_attention_backward,
    .resize = cuda_resize,
    .resize_backward = cuda_resize_backward,
    .avg_pool2d = cuda_avg_pool2d,
    .avg_pool2d_backward = cuda_avg_pool2d_backward,
    .embedding = cuda_embedding,
    .embedding_backward = cuda_embedding_backward,
    .random = cuda_random,
    .synchronize = cuda_synchronize,
    .describe = cuda_describe,
    .memory = cuda_memory,
};

static void init_once(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        (void)cudaGetLastError();
        snprintf(g_init_msg, sizeof g_init_msg, "CUDA: no usable device (%s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount found 0 devices");
        return;
    }
    const char *step = "cudaSetDevice";
    if ((e = cudaSetDevice(0)) == cudaSuccess) {
        step = "cudaStreamCreateWithFlags";
        e = cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking);
    }
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(g_init_msg, sizeof g_init_msg, "CUDA: %s failed: %s", step, cudaGetErrorString(e));
        return;
    }
    cublasStatus_t b = cublasCreate(&g_blas);
    if (b == CUBLAS_STATUS_SUCCESS) b = cublasSetStream(g_blas, g_stream);
    if (b != CUBLAS_STATUS_SUCCESS) {
        snprintf(g_init_msg, sizeof g_init_msg, "CUDA: cuBLAS initialisation failed: %s", cublasGetStatusName(b));
        return;
    }
    g_init_status = STATUS_OK;
    backend_register(DEVICE_CUDA, &backend_cuda);
}

enum status cuda_init(void)
{
    pthread_once(&g_once, init_once);
    if (g_init_status) return tensor_fail(g_init_status, "%s", g_init_msg);
    return STATUS_OK;
}

bool cuda_available(void)
{
    pthread_once(&g_once, init_once);
    return g_init_status == STATUS_OK;
}
