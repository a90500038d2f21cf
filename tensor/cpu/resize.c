/* resize.c — placeholder until the resize / pooling kernels land. */
#include "tensor/cpu/cpu.h"
enum status cpu_resize(struct tensor *out, const struct tensor *x, enum resize_mode mode, bool align_corners)
{ (void)out; (void)x; (void)mode; (void)align_corners; return tensor_fail(STATUS_INTERNAL, "resize: not implemented"); }
enum status cpu_resize_backward(struct tensor *dx, const struct tensor *dy, enum resize_mode mode, bool align_corners)
{ (void)dx; (void)dy; (void)mode; (void)align_corners; return tensor_fail(STATUS_INTERNAL, "resize: not implemented"); }
enum status cpu_avg_pool2d(struct tensor *out, const struct tensor *x, const struct pool2d_params *p)
{ (void)out; (void)x; (void)p; return tensor_fail(STATUS_INTERNAL, "avg_pool2d: not implemented"); }
enum status cpu_avg_pool2d_backward(struct tensor *dx, const struct tensor *dy, const struct pool2d_params *p)
{ (void)dx; (void)dy; (void)p; return tensor_fail(STATUS_INTERNAL, "avg_pool2d: not implemented"); }
