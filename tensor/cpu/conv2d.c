/* conv2d.c — placeholder until the tiled im2col kernel lands. */
#include "tensor/cpu/cpu.h"
enum status cpu_conv2d(struct tensor *out, const struct tensor *x, const struct tensor *w, const struct tensor *bias,
                       const struct conv2d_params *p)
{ (void)out; (void)x; (void)w; (void)bias; (void)p; return tensor_fail(STATUS_INTERNAL, "conv2d: not implemented"); }
enum status cpu_conv2d_backward_input(struct tensor *dx, const struct tensor *dy, const struct tensor *w,
                                      const struct conv2d_params *p)
{ (void)dx; (void)dy; (void)w; (void)p; return tensor_fail(STATUS_INTERNAL, "conv2d: not implemented"); }
enum status cpu_conv2d_backward_weight(struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                       const struct tensor *x, const struct conv2d_params *p)
{ (void)dw; (void)db; (void)dy; (void)x; (void)p; return tensor_fail(STATUS_INTERNAL, "conv2d: not implemented"); }
