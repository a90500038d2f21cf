/* op_conv.c — placeholder until conv2d lands. */
#include "autograd/node.h"
struct conv2d_params conv2d_params_default(void)
{
    return (struct conv2d_params){.stride_h = 1, .stride_w = 1, .dil_h = 1, .dil_w = 1, .groups = 1};
}
struct tensor *ag_conv2d(struct tensor *x, struct tensor *w, struct tensor *b, const struct conv2d_params *p)
{ (void)x; (void)w; (void)b; (void)p; tensor_fail(STATUS_INTERNAL, "conv2d: not implemented"); return NULL; }
