/* matmul.c — batched matmul through OpenBLAS. Transposed operands are read through their
 * strides (CblasTrans), so a permuted view costs no copy; only operands whose inner two dims
 * are both strided are copied first. */
#include "tensor/cpu/cpu.h"

#include <cblas.h>
#include <omp.h>

struct mat_layout {
    bool trans;
    int64_t ld;
};

/* can the last two dims [R, C] be read as a BLAS matrix? */
static bool blas_layout(const struct tensor *t, struct mat_layout *l)
{
    int64_t r = t->shape[t->ndim - 2], c = t->shape[t->ndim - 1];
    int64_t sr = t->stride[t->ndim - 2], sc = t->stride[t->ndim - 1];
    if ((sc == 1 || c == 1) && sr >= (c > 1 ? c : 1) && sr > 0) { l->trans = false; l->ld = sr; return true; }
    if ((sr == 1 || r == 1) && sc >= (r > 1 ? r : 1) && sc > 0) { l->trans = true; l->ld = sc; return true; }
    if (r == 1 && c == 1) { l->trans = false; l->ld = 1; return true; }
    return false;
}

/* one product of a batched matmul: batch index bi of (o, a, b) */
struct batch_gemm {
    const struct cpu_iter *it;
    const struct tensor *a, *b, *o;
    const struct mat_layout *la, *lb, *lo;
    CBLAS_TRANSPOSE ta, tb;
    int64_t M, N, K;
    double alpha, beta;
    bool f32;
};

static void batch_gemm_run(const struct batch_gemm *g, int64_t bi)
{
    int64_t off[4];
    cpu_iter_offsets(g->it, bi / g->it->inner, off);
    const int64_t i = bi % g->it->inner;
    for (int k = 0; k < 3; k++) off[k] += i * g->it->inner_stride[k];
    const struct tensor *a = g->a, *b = g->b, *o = g->o;
    if (g->f32)
        cblas_sgemm(CblasRowMajor, g->ta, g->tb, (blasint)g->M, (blasint)g->N, (blasint)g->K, (float)g->alpha,
                    CPU_PTR(const float, a) + off[1], (blasint)g->la->ld, CPU_PTR(const float, b) + off[2],
                    (blasint)g->lb->ld, (float)g->beta, CPU_PTR(float, o) + off[0], (blasint)g->lo->ld);
    else
        cblas_dgemm(CblasRowMajor, g->ta, g->tb, (blasint)g->M, (blasint)g->N, (blasint)g->K, g->alpha,
                    CPU_PTR(const double, a) + off[1], (blasint)g->la->ld, CPU_PTR(const double, b) + off[2],
                    (blasint)g->lb->ld, g->beta, CPU_PTR(double, o) + off[0], (blasint)g->lo->ld);
}

enum status cpu_matmul(struct tensor *out, const struct tensor *a, const struct tensor *b, double alpha, double beta)
{
    enum status s;
    if ((s = cpu_need_float(a, "matmul"))) return s;
    if (a->dtype != b->dtype || out->dtype != a->dtype)
        return tensor_fail(STATUS_DTYPE, "matmul: dtype mismatch (%s, %s -> %s)", dtype_name(a->dtype),
                           dtype_name(b->dtype), dtype_name(out->dtype));
    const int nd = out->ndim;
    const int64_t M = out->shape[nd - 2], N = out->shape[nd - 1], K = a->shape[nd - 1];
    if (K == 0) {   /* an empty sum: out = beta * out */
        const double p[2] = {beta, 0};
        return beta == 0 ? cpu_fill(out, 0) : cpu_unary(UNARY_AFFINE, out, out, p);
    }
    /* operands BLAS cannot read get a contiguous copy (rare: both inner dims strided) */
    struct tensor *ac = NULL, *bc = NULL, *oc = NULL;
    struct mat_layout la, lb, lo;
    if (!blas_layout(a, &la)) { ac = tensor_keep(tensor_clone(a)); if (!ac) return tensor_status(); a = ac; blas_layout(a, &la); }
    if (!blas_layout(b, &lb)) { bc = tensor_keep(tensor_clone(b)); if (!bc) { tensor_free(ac); return tensor_status(); } b = bc; blas_layout(b, &lb); }
    struct tensor *o = out;
    if (!blas_layout(out, &lo) || lo.trans) {
        oc = tensor_keep(tensor_clone(out));
        if (!oc) { tensor_free(ac); tensor_free(bc); return tensor_status(); }
        o = oc;
        blas_layout(o, &lo);
    }
    /* batch iteration over the leading dims of (o, a, b) */
    struct tensor bo = *o, ba = *a, bb = *b;
    bo.ndim = ba.ndim = bb.ndim = nd - 2;
    struct cpu_iter it;
    const struct tensor *ts[3] = {&bo, &ba, &bb};
    cpu_iter_init(&it, 3, ts);
    const int64_t nbatch = it.outer * it.inner;
    const bool f32 = a->dtype == DTYPE_F32;
    const CBLAS_TRANSPOSE ta = la.trans ? CblasTrans : CblasNoTrans, tb = lb.trans ? CblasTrans : CblasNoTrans;
    /* many small products: one per thread (BLAS single-threaded inside); few large: BLAS threads,
     * called from outside any parallel region (inside even an inactive one OpenBLAS would start a
     * nested team, and libgomp creates threads for every nested team: see cpu.h) */
    const bool par_batches = nbatch >= 2 * omp_get_max_threads() && M * N * K <= 256 * 256 * 256;
    const struct batch_gemm bg = {&it, a, b, o, &la, &lb, &lo, ta, tb, M, N, K, alpha, beta, f32};
    if (M == 0 || N == 0) {
        /* nothing to compute */
    } else if (par_batches) {
#pragma omp parallel for schedule(static)
        for (int64_t bi = 0; bi < nbatch; bi++) {
            cpu_blas_serial_in_region();
            batch_gemm_run(&bg, bi);
        }
    } else {
        for (int64_t bi = 0; bi < nbatch; bi++) batch_gemm_run(&bg, bi);
    }
    if (oc) cpu_copy(out, oc);
    tensor_free(ac);
    tensor_free(bc);
    tensor_free(oc);
    return STATUS_OK;
}
