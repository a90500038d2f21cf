/* micro_unet.c — see micro_unet.h */
#include "tests/micro_unet.h"
#include "tests/harness.h"

#include <math.h>
#include <string.h>

void test_micro_unet_build(const char *json, struct nn_params *ps64, struct nn_params *ps32, struct sd_unet *u64,
                           struct sd_unet *u32)
{
    struct nn_config c;
    enum dtype dts[2] = {DTYPE_F64, DTYPE_F32};
    struct nn_params *pss[2] = {ps64, ps32};
    struct sd_unet *us[2] = {u64, u32};
    for (int k = 0; k < 2; k++) {
        nn_params_init(pss[k], dts[k], DEVICE_CPU);
        ck_assert_int_eq(nn_config_parse(&c, json, strlen(json), "micro"), STATUS_OK);
        ck_assert_msg(sd_unet_init(us[k], &c, pss[k]) == STATUS_OK, "%s", tensor_error());
        nn_config_free(&c);
    }
    /* random weights of a sensible scale, norm weights away from 1 and biases away from 0 */
    tensor_scope_begin();
    for (int i = 0; i < ps64->n; i++) {
        struct tensor *p = ps64->v[i].t;
        double s = 1.0;
        if (p->ndim >= 2) {
            int64_t fan = 1;
            for (int d = 1; d < p->ndim; d++) fan *= p->shape[d];
            s = 1.5 / sqrt((double)fan);
        }
        const bool normw = p->ndim == 1 && strstr(ps64->v[i].name, "norm") && strstr(ps64->v[i].name, ".weight");
        struct tensor *r = test_uniform(DTYPE_F64, p->ndim, p->shape, normw ? 0.5 : -0.5 * s, normw ? 1.5 : 0.5 * s);
        ck_assert_int_eq(tensor_copy_(p, r), STATUS_OK);
        ck_assert_int_eq(tensor_copy_(ps32->v[i].t, r), STATUS_OK);
    }
    tensor_scope_end();
}

void test_micro_unet_free(struct nn_params *ps64, struct nn_params *ps32, struct sd_unet *u64, struct sd_unet *u32)
{
    sd_unet_free(u64);
    sd_unet_free(u32);
    nn_params_free(ps64);
    nn_params_free(ps32);
}
