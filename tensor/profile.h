/* profile.h — where the time goes: every backend call, timed and summed by op.
 *
 * While profiling is on, backend_for()/backend_of() hand out a wrapping table that times
 * each call of the real backend and adds it to one entry per (op, sub-op, device, dtype,
 * and for matrix products the precision switch). GPU calls are synchronised before and
 * after, so an entry holds the op's own time, launch included, not the queueing of other
 * work; a profiled run is therefore slower than a plain one. A call made from inside
 * another call (a backend using its own table) counts toward the outer one only.
 *
 * DRAFT_PROFILE=1 in the environment turns it on from the first op and prints the table
 * to stderr at exit (DRAFT_PROFILE=shapes: one entry per operand shape as well); programs can
 * also start, stop, read and print it themselves.
 */
#ifndef TENSOR_PROFILE_H
#define TENSOR_PROFILE_H

#include "tensor/tensor.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

struct profile_entry {
    char op[48];       /* e.g. "conv2d 3x3", "binary add", "matmul", "raw_alloc" */
    enum device device;
    char dtype[16];    /* the output's dtype; "f32/tf32" or "f32/bf16" for products under the
                        * precision switch; "-" where there is no tensor (raw_alloc) */
    char shapes[112];  /* shapes mode: the defining operands, e.g. "[2,320,64,64] [320,320,3,3]"
                        * for conv2d (x, w), "[4096,320] [320,1280]" for matmul (a, b), q and k for
                        * attention; else "" */
    int64_t calls;
    double seconds;
};

void tensor_profile_start(void);   /* record from now on (adds to what is recorded) */
void tensor_profile_stop(void);
/* key the entries on the operands' shapes too (DRAFT_PROFILE=shapes): one entry per shape */
void tensor_profile_record_shapes(bool on);
bool tensor_profile_active(void);
void tensor_profile_reset(void);   /* forget what was recorded */
/* copies up to `max` entries, the longest total first; returns how many there are in all */
int tensor_profile_entries(struct profile_entry *out, int max);
/* the table, the longest total first, with each entry's share of the profiled time */
void tensor_profile_print(FILE *f);

#ifdef __cplusplus
}
#endif

#endif
