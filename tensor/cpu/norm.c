/* norm.c — placeholder until the layer_norm / group_norm kernels land. */
#include "tensor/cpu/cpu.h"
enum status cpu_layer_norm(struct tensor *out, struct tensor *mean, struct tensor *rstd, const struct tensor *x,
                           const struct tensor *w, const struct tensor *b, double eps)
{ (void)out; (void)mean; (void)rstd; (void)x; (void)w; (void)b; (void)eps; return tensor_fail(STATUS_INTERNAL, "layer_norm: not implemented"); }
enum status cpu_layer_norm_backward(struct tensor *dx, struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                    const struct tensor *x, const struct tensor *w, const struct tensor *mean,
                                    const struct tensor *rstd)
{ (void)dx; (void)dw; (void)db; (void)dy; (void)x; (void)w; (void)mean; (void)rstd; return tensor_fail(STATUS_INTERNAL, "layer_norm: not implemented"); }
enum status cpu_group_norm(struct tensor *out, struct tensor *mean, struct tensor *rstd, const struct tensor *x,
                           const struct tensor *w, const struct tensor *b, int groups, double eps)
{ (void)out; (void)mean; (void)rstd; (void)x; (void)w; (void)b; (void)groups; (void)eps; return tensor_fail(STATUS_INTERNAL, "group_norm: not implemented"); }
enum status cpu_group_norm_backward(struct tensor *dx, struct tensor *dw, struct tensor *db, const struct tensor *dy,
                                    const struct tensor *x, const struct tensor *w, const struct tensor *mean,
                                    const struct tensor *rstd, int groups)
{ (void)dx; (void)dw; (void)db; (void)dy; (void)x; (void)w; (void)mean; (void)rstd; (void)groups; return tensor_fail(STATUS_INTERNAL, "group_norm: not implemented"); }
