/* attention.c — placeholder until the memory-efficient attention kernel lands. */
#include "tensor/cpu/cpu.h"
enum status cpu_attention(struct tensor *out, struct tensor *lse, const struct tensor *q, const struct tensor *k,
                          const struct tensor *v, double scale, bool causal)
{ (void)out; (void)lse; (void)q; (void)k; (void)v; (void)scale; (void)causal; return tensor_fail(STATUS_INTERNAL, "attention: not implemented"); }
enum status cpu_attention_backward(struct tensor *dq, struct tensor *dk, struct tensor *dv, const struct tensor *dout,
                                   const struct tensor *q, const struct tensor *k, const struct tensor *v,
                                   const struct tensor *out, const struct tensor *lse, double scale, bool causal)
{ (void)dq; (void)dk; (void)dv; (void)dout; (void)q; (void)k; (void)v; (void)out; (void)lse; (void)scale; (void)causal; return tensor_fail(STATUS_INTERNAL, "attention: not implemented"); }
