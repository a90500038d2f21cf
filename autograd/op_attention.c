/* op_attention.c — placeholder until attention lands. */
#include "autograd/node.h"
struct tensor *ag_attention(struct tensor *q, struct tensor *k, struct tensor *v, double scale, bool causal)
{ (void)q; (void)k; (void)v; (void)scale; (void)causal; tensor_fail(STATUS_INTERNAL, "attention: not implemented"); return NULL; }
