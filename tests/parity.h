/* parity.h — comparing against the reference implementations' golden files
 * (../shared/parity, or DRAFT_PARITY_DIR), with the tolerance its README defines:
 *   ||ours - golden|| <= rtol * ||golden|| + 1e-6 * S * sqrt(n)
 * rtol = 1e-4 for forward values, 1e-3 for gradients; S = RMS of all entries of that kind in
 * the file (all grad.* tensors together, or the output tensor). */
#ifndef TESTS_PARITY_H
#define TESTS_PARITY_H

#include "nn/safetensors.h"
#include "tests/harness.h"

#define PARITY_RTOL_FWD 1e-4
#define PARITY_RTOL_GRAD 1e-3

/* the parity folder, or NULL after printing "SKIP: <reason>" when `relpath` inside it is
 * missing; the path of relpath goes to buf */
const char *parity_path(const char *relpath, char *buf, size_t n);
/* RMS over all entries of the tensors whose names start with `prefix` */
double parity_rms(const struct safetensors *st, const char *prefix);
/* compare; prints "parity <label> ok|FAILED err=... bound=... (rel=...)"; returns pass */
bool parity_check(const char *label, const struct tensor *ours, const struct tensor *golden, double rtol, double S);
/* load golden tensor `name` from st as f32 (test failure if missing) */
struct tensor *parity_load(const struct safetensors *st, const char *name);
/* the same on device dev */
struct tensor *parity_load_on(const struct safetensors *st, const char *name, enum device dev);
/* the device a model's parity test runs on: the CPU, or with DRAFT_TEST_DEVICE=cuda the GPU
 * (scripts/gpu-check.sh: the reference's golden values against the CUDA backend, not only against
 * our CPU). false, after printing "SKIP: <reason>", when that device cannot be used here. */
bool parity_device(enum device *dev);

#endif
