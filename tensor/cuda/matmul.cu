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
 * f32 computes in f32, or in TF32 on tensor cores when cuda_tf32() is on; f64 in f64. */
#include "tensor/cuda/common.cuh"

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

/* one strided-batched GEMM: out[i] = alpha a[i] b[i] + beta out[i], i < count, all row-major
 * [M,K] [K,N] -> [M,N] as described by the layouts */
static enum status gemm(enum dtype dt, int64_t M, int64_t N, int64_t K, double alpha, const char *pa,
                        const struct mat_layout *la, int64_t sa, const char *pb, const struct mat_layout *lb, int64_t sb,
                        double beta, char *po, const struct mat_layout *lo, int64_t so, int64_t count)
{
    cublasHandle_t h = cuda_blas_handle();
    const bool f32 = dt == DTYPE_F32;
    const cudaDataType_t ty = f32 ? CUDA_R_32F : CUDA_R_64F;
    const cublasComputeType_t ct = !f32 ? CUBLAS_COMPUTE_64F : cuda_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    const float alpha_f = (float)alpha, beta_f = (float)beta;
    const void *al = f32 ? (const void *)&alpha_f : (const void *)&alpha, *be = f32 ? (const void *)&beta_f : (const void *)&beta;
    if (!lo->trans) {
        /* column-major out^T [N, M] = b^T [N, K] a^T [K, M] */
        const cublasOperation_t opb = lb->trans ? CUBLAS_OP_T : CUBLAS_OP_N, opa = la->trans ? CUBLAS_OP_T : CUBLAS_OP_N;
        CUBLAS_TRY(cublasGemmStridedBatchedEx_64(h, opb, opa, N, M, K, al, pb, ty, lb->ld, sb, pa, ty, la->ld, sa, be, po,
                                                 ty, lo->ld, so, count, ct, CUBLAS_GEMM_DEFAULT));
    } else {
        /* column-major out [M, N] = a [M, K] b [K, N] */
        const cublasOperation_t opa = la->trans ? CUBLAS_OP_N : CUBLAS_OP_T, opb = lb->trans ? CUBLAS_OP_N : CUBLAS_OP_T;
        CUBLAS_TRY(cublasGemmStridedBatchedEx_64(h, opa, opb, M, N, K, al, pa, ty, la->ld, sa, pb, ty, lb->ld, sb, be, po,
                                                 ty, lo->ld, so, count, ct, CUBLAS_GEMM_DEFAULT));
    }
    return STATUS_OK;
}

enum status cuda_matmul(struct tensor *out, const struct tensor *a, const struct tensor *b, double alpha, double beta)
{
    enum status s;
    if ((s = cu_need_float(a, "matmul"))) return s;
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
