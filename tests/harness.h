/* harness.h — what every test suite shares: random inputs, the gradient checker, tensor
 * comparisons and the leak check. */
#ifndef TESTS_HARNESS_H
#define TESTS_HARNESS_H

#include <check.h>
#include <stdio.h>

#include "autograd/autograd.h"

/* the seed of this run: GRADCHECK_SEED from the environment, else fresh (printed once) */
uint64_t test_seed(void);
/* uniform in [lo, hi), shape given; f64 unless dt says otherwise */
struct tensor *test_uniform(enum dtype dt, int ndim, const int64_t *shape, double lo, double hi);
/* the same values, but stored transposed so the returned view is not contiguous */
struct tensor *test_noncontig(struct tensor *t);
/* ||a - b|| / max(||b||, tiny) over all elements (any dtypes; GPU tensors read from host copies) */
double test_rel_err(const struct tensor *a, const struct tensor *b);
/* t itself on the CPU, else a host copy of it in the current tensor scope (NULL on failure): a
 * result on the GPU is read from there */
const struct tensor *test_on_host(const struct tensor *t);
double test_max_abs_diff(const struct tensor *a, const struct tensor *b);

/* A differentiable function of n tensors, for the checker. */
typedef struct tensor *(*gc_fn)(struct tensor *const *in, void *ctx);

struct gc_opts {
    double tol;        /* bound on max_rel of analytic vs numeric (f64); 0 = 1e-6 */
    double f32_tol;    /* bound on the f32 path vs the f64 result (norm-wise); 0 = 1e-4, <0 skips */
    double h;          /* finite-difference step; 0 = 1e-6 */
    unsigned nograd;   /* bitmask of inputs that get no gradient (ints, masks) */
};

/* Checks d(sum(f(in) * R))/d(in) against central differences in f64, where R is a fixed
 * random tensor, and compares f evaluated in f32 with the f64 result (outputs and
 * gradients). Prints one line: "gradcheck <label> ok max_rel=... f32_rel=...".
 * Inputs must be f64 CPU tensors (views allowed). Returns true when within bounds. */
bool gradcheck(const char *label, gc_fn f, void *ctx, int n, struct tensor *const *in, const struct gc_opts *o);

/* leak check: record counters at the start of a test and assert they return */
#define LEAK_CHECK_BEGIN() int64_t leak_t0_ = tensor_live_count(), leak_s0_ = storage_live_count()
#define LEAK_CHECK_END()                                                                               \
    do {                                                                                               \
        ck_assert_msg(tensor_live_count() == leak_t0_, "leaked %lld tensors",                          \
                      (long long)(tensor_live_count() - leak_t0_));                                    \
        ck_assert_msg(storage_live_count() == leak_s0_, "leaked %lld storages",                        \
                      (long long)(storage_live_count() - leak_s0_));                                   \
    } while (0)

/* a whole file (NUL-terminated, *n excludes it; malloc'd) / a file written from memory; both
 * fail the test on an I/O error */
unsigned char *test_slurp(const char *path, size_t *n);
void test_spit(const char *path, const void *data, size_t n);

/* out = "<the run's scratch directory>/name": one directory per test_run_suite, shared by the
 * forked tests and removed with everything in it when the suite ends */
void test_tmp_path(char *out, size_t n, const char *name);

/* run a suite; returns the process exit status (0 = all passed) */
int test_run_suite(Suite *s);

#endif
