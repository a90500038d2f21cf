/* matmul.cu — batched matmul through cuBLAS (strided-batched GEMM).
 *
 * cuBLAS is column-major; a row-major [R, C] matrix with row stride ld is, to it, the
 * column-major [C, R] matrix with the same ld. So out = a @ b (row-major) is computed as
 * out^T = b^T a^T, and a transposed view (unit stride on its row dim) is simply read with
 * op = T: permuted operands cost no copy. An output that is itself stored transposed is
 * computed directly as column-major out = a b. Only operands whose inner two dims are both
 * strided are copied first. The batch dims (already expanded: broadcast ones have stride 0)
 * become the batch of one strided-batched call when they collapse to one dim, else a loop of
 * such calls over the outer ones.
 *
 * f32 computes as tensor_precision() says: exact f32, TF32 on tensor cores, or bf16 (each operand
 * packed into a bf16 copy first, f32 accumulation into the f32 output); bf16/f16 tensors (a, b
 * and out of one dtype) with f32 accumulation; f64 in f64. */
#include "tensor/cuda/common.cuh"
#include "tensor/half.h"
#include "tensor/cuda/matmul_kernels.cuh"

struct mat_layout {
    bool trans;   /* unit stride on the row dim (column-major storage) */
    int64_t ld;
};

/* can the last two dims [R, C] be read as a BLAS matrix? (the CPU backend's rule) */
static bool blas_layout(const struct tensor *t, struct mat_layout *l)
{
    int64_t r = t->shape[t->ndim - 2], c = t->shape[t->ndim - 1];
    int64_t sr = t->stride[t->ndim - 2], sc = t->stride[t->ndim - 1];
    if ((sc == 1 || c == 1) && sr >= (c > 1 ? c : 1) && sr > 0) { l->trans = false; l->ld = sr; return true; }
    if ((sr == 1 || r == 1) && sc >= (r > 1 ? r : 1) && sc > 0) { l->trans = true; l->ld = sc; return true; }
    if (r == 1 && c == 1) { l->trans = false; l->ld = 1; return true; }
    return false;
}

/* ---------------------------------------------------------------- bf16 operands */

/* PRECISION_BF16: `count` f32 matrices (batch stride sb, 0 = one shared matrix) of `outer` runs of
 * `inner` contiguous elements at stride ld, packed into a new bf16 tensor *buf [count or 1, outer,
 * inner] (tensor_free it once the GEMM is queued) */
static enum status pack_bf16(struct tensor **buf, const float *src, int64_t count, int64_t sb, int64_t outer,
                             int64_t inner, int64_t ld)
{
    if (sb == 0) count = 1;
    const int64_t shape[3] = {count, outer, inner};
    if (!(*buf = tensor_keep(tensor_empty(DTYPE_BF16, 3, shape, DEVICE_CUDA)))) return tensor_status();
    const int64_t rows = count * outer;
    if (rows == 0 || inner == 0) return STATUS_OK;
    const bool v4 = inner % 4 == 0 && ld % 4 == 0 && sb % 4 == 0 && (uintptr_t)src % 16 == 0;
    const dim3 grid(cu_blocks(v4 ? inner / 4 : inner, CU_THREADS), (unsigned)(rows < 65535 ? rows : 65535));
    uint16_t *dst = (uint16_t *)cu_ptr(*buf);
    if (v4) pack_bf16_kernel<4><<<grid, CU_THREADS, 0, cu_stream()>>>(dst, src, rows, outer, inner, ld, sb);
    else pack_bf16_kernel<1><<<grid, CU_THREADS, 0, cu_stream()>>>(dst, src, rows, outer, inner, ld, sb);
    CUDA_LAUNCHED();
    return STATUS_OK;
}

/* the same for a column-major GEMM operand op(X) [rows, cols] at *p with leading dim *ld and batch
 * stride *stride: all three are replaced by the packed copy's */
static enum status gemm_bf16_operand(struct tensor **buf, const void **p, int64_t *ld, int64_t *stride, bool op_t,
                                     int64_t rows, int64_t cols, int64_t count)
{
    /* column-major storage: op N holds rows x cols, op T cols x rows; a stored column is the
     * contiguous run */
    const int64_t inner = op_t ? cols : rows, outer = op_t ? rows : cols;
    enum status s = pack_bf16(buf, (const float *)*p, count, *stride, outer, inner, *ld);
    if (s) return s;
    *p = cu_ptr(*buf);
    *ld = inner > 0 ? inner : 1;
    *stride = *stride ? outer * inner : 0;
    return STATUS_OK;
}

/* ---------------------------------------------------------------- GEMM */

static cudaDataType_t cu_blas_type(enum dtype dt)
{
    switch (dt) {
    case DTYPE_F64: return CUDA_R_64F;
    case DTYPE_BF16: return CUDA_R_16BF;
    case DTYPE_F16: return CUDA_R_16F;
    default: return CUDA_R_32F;
    }
}

/* a_bf16 / b_bf16: that operand is already a bf16 copy (dt is then f32 and the GEMM runs on bf16
 * operands, the other one packed here whatever the precision switch says) */
static enum status gemm_run(enum dtype dt, bool a_bf16, bool b_bf16, bool trans_a, bool trans_b, int64_t m, int64_t n,
                            int64_t k, double alpha, const void *A, int64_t lda, int64_t sA, const void *B, int64_t ldb,
                            int64_t sB, double beta, void *C, int64_t ldc, int64_t sC, int64_t count)
{
    const cublasOperation_t ta = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasHandle_t h = cuda_blas_handle();
    const bool f64 = dt == DTYPE_F64;
    const float alpha_f = (float)alpha, beta_f = (float)beta;
    const void *al = f64 ? (const void *)&alpha : (const void *)&alpha_f;
    const void *be = f64 ? (const void *)&beta : (const void *)&beta_f;
    cudaDataType_t tab = cu_blas_type(dt);
    const cudaDataType_t tc = cu_blas_type(dt);
    cublasComputeType_t ct = f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
    struct tensor *abuf = NULL, *bbuf = NULL;
    enum status s = STATUS_OK;
    if (dt == DTYPE_F32 && tensor_precision() == PRECISION_TF32) ct = CUBLAS_COMPUTE_32F_FAST_TF32;
    /* DRAFT_MATMUL_FAST_BF16 unset: FAST_16BF where a side of the product is at most 1280, the
     * packed copies else. H200, 2026-11-27: a DRaFT-LV step of SD 1.4 under autocast (every GEMM
     * has such a side: widths 320-1280 in the UNet, 768 and 1024 in the encoders) took 5.29 s
     * with FAST_16BF against 6.31 s with the copies, and the feed-forward product [8192,320] x
     * [320,2560] 0.075 against 0.082 ms; but 8192^3 took 2.77 against 2.34 ms, so a large square
     * product keeps the copies. The crossover between is not measured. */
    const int64_t side = m < n ? (m < k ? m : k) : (n < k ? n : k);
    if (dt == DTYPE_F32 && !a_bf16 && !b_bf16 && tensor_precision() == PRECISION_BF16 &&
        cuda_switch("DRAFT_MATMUL_FAST_BF16", side <= 1280)) {
        /* cuBLAS rounds the f32 operands itself as it loads them (to bf16, or where it prefers to
         * TF32): no packed copies, no extra pass over either operand */
        ct = CUBLAS_COMPUTE_32F_FAST_16BF;
    } else if (dt == DTYPE_F32 && (a_bf16 || b_bf16 || tensor_precision() == PRECISION_BF16)) {
        if (!a_bf16) s = gemm_bf16_operand(&abuf, &A, &lda, &sA, trans_a, m, k, count);
        if (!s && !b_bf16) s = gemm_bf16_operand(&bbuf, &B, &ldb, &sB, trans_b, k, n, count);
        tab = CUDA_R_16BF;
        ct = CUBLAS_COMPUTE_32F;
    }
    if (!s) {
        const cublasStatus_t e = cublasGemmStridedBatchedEx_64(h, ta, tb, m, n, k, al, A, tab, lda, sA, B, tab, ldb, sB, be,
                                                               C, tc, ldc, sC, count, ct, CUBLAS_GEMM_DEFAULT);
        if (e != CUBLAS_STATUS_SUCCESS)
            s = tensor_fail(STATUS_DEVICE, "cuBLAS error %s (%d) in a %s GEMM [%lld x %lld x %lld] x %lld",
                            cublasGetStatusName(e), (int)e, tab == CUDA_R_16BF ? "bf16" : dtype_name(dt), (long long)m,
                            (long long)n, (long long)k, (long long)count);
    }
    tensor_free(abuf);   /* queued behind the GEMM on the one stream: safe to hand back now */
    tensor_free(bbuf);
    return s;
}

enum status cuda_gemm(enum dtype dt, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                      const void *A, int64_t lda, int64_t sA, const void *B, int64_t ldb, int64_t sB, double beta, void *C,
                      int64_t ldc, int64_t sC, int64_t count)
{
    return gemm_run(dt, false, false, trans_a, trans_b, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, count);
}

enum status cuda_gemm_bf16(bool a_bf16, bool b_bf16, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                           double alpha, const void *A, int64_t lda, int64_t sA, const void *B, int64_t ldb, int64_t sB,
                           double beta, float *C, int64_t ldc, int64_t sC, int64_t count)
{
    return gemm_run(DTYPE_F32, a_bf16, b_bf16, trans_a, trans_b, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC,
                    count);
}

/* one strided-batched GEMM: out[i] = alpha a[i] b[i] + beta out[i], i < count, all row-major
 * [M,K] [K,N] -> [M,N] as described by the layouts */
static enum status gemm(enum dtype dt, int64_t M, int64_t N, int64_t K, double alpha, const char *pa,
                        const struct mat_layout *la, int64_t sa, const char *pb, const struct mat_layout *lb, int64_t sb,
                        double beta, char *po, const struct mat_layout *lo, int64_t so, int64_t count)
{
    if (!lo->trans)   /* column-major out^T [N, M] = b^T [N, K] a^T [K, M] */
        return cuda_gemm(dt, lb->trans, la->trans, N, M, K, alpha, pb, lb->ld, sb, pa, la->ld, sa, beta, po, lo->ld, so,
                         count);
    /* column-major out [M, N] = a [M, K] b [K, N] */
    return cuda_gemm(dt, !la->trans, !lb->trans, M, N, K, alpha, pa, la->ld, sa, pb, lb->ld, sb, beta, po, lo->ld, so,
                     count);
}

enum status cuda_matmul(struct tensor *out, const struct tensor *a, const struct tensor *b, double alpha, double beta)
{
    enum status s;
    if (a->dtype != DTYPE_BF16 && a->dtype != DTYPE_F16 && (s = cu_need_float(a, "matmul"))) return s;
    if (a->dtype != b->dtype || out->dtype != a->dtype)
        return tensor_fail(STATUS_DTYPE, "matmul: dtype mismatch (%s, %s -> %s)", dtype_name(a->dtype),
                           dtype_name(b->dtype), dtype_name(out->dtype));
    const int nd = out->ndim;
    if (nd < 2 || a->ndim != nd || b->ndim != nd)
        return tensor_fail(STATUS_SHAPE, "matmul: operands must have the output's %d dims (>= 2)", nd);
    const int64_t M = out->shape[nd - 2], N = out->shape[nd - 1], K = a->shape[nd - 1];
    if (M == 0 || N == 0 || tensor_numel(out) == 0) return STATUS_OK;
    if (K == 0) {   /* an empty sum: out = beta * out */
        const double p[2] = {beta, 0};
        if (beta != 0 && out->dtype != DTYPE_F32 && out->dtype != DTYPE_F64)
            return tensor_fail(STATUS_DTYPE, "matmul: K = 0 with beta != 0 needs f32/f64 (got %s)", dtype_name(out->dtype));
        return beta == 0 ? cuda_fill(out, 0) : cuda_unary(UNARY_AFFINE, out, out, p);
    }
    /* operands cuBLAS cannot read get a contiguous copy (rare: both inner dims strided); so does
     * an output whose batch dims overlap (stride 0), which no GEMM may write */
    struct tensor *ac = NULL, *bc = NULL, *oc = NULL;
    struct mat_layout la, lb, lo;
    bool out_ok = blas_layout(out, &lo);
    for (int d = 0; d < nd - 2 && out_ok; d++) out_ok = out->shape[d] == 1 || out->stride[d] != 0;
    if (!blas_layout(a, &la)) {
        if (!(ac = tensor_keep(tensor_clone(a)))) return tensor_status();
        a = ac;
        blas_layout(a, &la);
    }
    if (!blas_layout(b, &lb)) {
        if (!(bc = tensor_keep(tensor_clone(b)))) { tensor_free(ac); return tensor_status(); }
        b = bc;
        blas_layout(b, &lb);
    }
    struct tensor *o = out;
    if (!out_ok) {
        oc = tensor_keep(beta != 0 ? tensor_clone(out) : tensor_empty(out->dtype, out->ndim, out->shape, DEVICE_CUDA));
        if (!oc) { tensor_free(ac); tensor_free(bc); return tensor_status(); }
        o = oc;
        blas_layout(o, &lo);
    }
    /* the batch dims of (o, a, b), collapsed; the innermost becomes the GEMM batch */
    struct tensor bo = *o, ba = *a, bb = *b;
    bo.ndim = ba.ndim = bb.ndim = nd - 2;
    const struct tensor *ts[3] = {&bo, &ba, &bb};
    cu_iter<3> it;
    cu_iter_init<3>(&it, ts);
    const int64_t count = it.shape[0], so = it.stride[0][0], sa = it.stride[1][0], sb = it.stride[2][0];
    const int64_t nouter = count ? it.numel / count : 0;
    const size_t esz = dtype_size(a->dtype);
    char *po = cu_ptr(o);
    const char *pa = cu_ptr(a), *pb = cu_ptr(b);
    s = STATUS_OK;
    for (int64_t outer = 0; outer < nouter && !s; outer++) {
        /* offsets of this outer batch index over dims 1.. (innermost first) */
        int64_t rem = outer, off[3] = {0, 0, 0};
        for (int d = 1; d < it.ndim; d++) {
            int64_t i = rem % it.shape[d];
            rem /= it.shape[d];
            for (int k = 0; k < 3; k++) off[k] += i * it.stride[k][d];
        }
        s = gemm(a->dtype, M, N, K, alpha, pa + off[1] * (int64_t)esz, &la, sa, pb + off[2] * (int64_t)esz, &lb, sb, beta,
                 po + off[0] * (int64_t)esz, &lo, so, count);
    }
    if (!s && oc) s = cuda_copy(out, oc);
    tensor_free(ac);
    tensor_free(bc);
    tensor_free(oc);
    return s;
}
