/* op_image.c — placeholder until resize / pooling land. */
#include "autograd/node.h"
struct tensor *ag_upsample_nearest2x(struct tensor *x) { (void)x; tensor_fail(STATUS_INTERNAL, "upsample: not implemented"); return NULL; }
struct tensor *ag_resize(struct tensor *x, int64_t out_h, int64_t out_w, enum resize_mode mode, bool align_corners)
{ (void)x; (void)out_h; (void)out_w; (void)mode; (void)align_corners; tensor_fail(STATUS_INTERNAL, "resize: not implemented"); return NULL; }
struct tensor *ag_avg_pool2d(struct tensor *x, const struct pool2d_params *p) { (void)x; (void)p; tensor_fail(STATUS_INTERNAL, "avg_pool2d: not implemented"); return NULL; }
