/* torch_save.h — write a torch.save zip (as PyTorch >= 1.6 does: archive/data.pkl, a protocol-2
 * pickle of {name: _rebuild_tensor_v2(...)}, plus one storage entry per tensor) so loader
 * tests can build .pth/.ckpt files of any model without Python. */
#ifndef TESTS_TORCH_SAVE_H
#define TESTS_TORCH_SAVE_H

#include "tensor/tensor.h"

/* tensors are written as FloatStorage (f32), contiguous; with lightning = true the dict sits
 * under "state_dict" of a CompVis-style top-level dict (epoch, global_step). */
void test_torch_save(const char *path, int n, const char *const *names, struct tensor *const *tensors, bool lightning);

#endif
