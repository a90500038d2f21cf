/* test_optim.c — AdamW against a float64 reference written here in plain loops (weight
 * decay, clipping, warm-up, accumulation, a parameter without gradient), the state
 * round trip (save, reload, continue == uninterrupted, bit for bit), and errors (non-finite
 * gradients leave everything unchanged, bad configs, bad state files). */
#include "tests/harness.h"
#include "nn/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *tmp_path(const char *name)
{
    static char p[512];
    test_tmp_path(p, sizeof p, name);
    return p;
}

#define NP 3   /* two used parameters and one that never gets a gradient */
static const int64_t sizes[NP] = {12, 5, 4};

/* a store with "w" [3,4], "b" [5], "unused" [4], random values */
static void make_params(struct nn_params *ps, enum dtype dt, const double *init)
{
    nn_params_init(ps, dt, DEVICE_CPU);
    struct tensor *w = nn_param_new(ps, "layer", "w", TENSOR_SHAPE(3, 4));
    struct tensor *b = nn_param_new(ps, "layer", "b", TENSOR_SHAPE(5));
    struct tensor *u = nn_param_new(ps, "layer", "unused", TENSOR_SHAPE(4));
    ck_assert(w && b && u);
    int64_t off = 0;
    for (int i = 0; i < NP; i++)
        for (int64_t j = 0; j < sizes[i]; j++) tensor_set_flat(ps->v[i].t, j, init[off++]);
    nn_params_set_trainable(ps, true);
}

/* loss = sum_i sum(p_i * R_i + 0.5 p_i^2) over the used parameters: grad = R + p */
static void backward_pass(struct nn_params *ps, const double *R)
{
    tensor_scope_begin();
    struct tensor *loss = NULL;
    int64_t off = 0;
    for (int i = 0; i < 2; i++) {
        struct tensor *p = ps->v[i].t;
        struct tensor *r = tensor_to_dtype(tensor_from_data(DTYPE_F64, p->ndim, p->shape, R + off), p->dtype);
        struct tensor *li = ag_sum(ag_add(ag_mul(p, r), ag_scale(ag_square(p), 0.5)), 0, NULL, false);
        loss = loss ? ag_add(loss, li) : li;
        off += sizes[i];
    }
    ck_assert_msg(ag_backward(loss, NULL, false) == STATUS_OK, "%s", tensor_error());
    tensor_scope_end();
}

/* the float64 reference: torch.optim.AdamW + clip_grad_norm_ + warm-up + accumulation */
struct ref {
    double p[21], m[21], v[21];
    int64_t step;
};

/* the learning rate of update k, written another way than nn_adamw_lr_at: i updates into a decay
 * of n, linear (n - i) / n, cosine cos^2(pi i / 2n) = (1 + cos(pi i / n)) / 2 */
static double ref_lr(const struct nn_adamw_config *c, int64_t k)
{
    const int64_t w = c->warmup_steps;
    if (w > 0 && k + 1 < w) return c->lr * (double)(k + 1) / (double)w;
    if (c->decay == NN_LR_CONSTANT) return c->lr;
    const int64_t n = c->decay_steps - w, i = k - w < 0 ? 0 : k - w;
    if (n <= 0 || i >= n) return c->lr_min;
    const double f = c->decay == NN_LR_LINEAR ? (double)(n - i) / (double)n : pow(cos(M_PI * (double)i / (2.0 * (double)n)), 2);
    return c->lr_min + (c->lr - c->lr_min) * f;
}

static void ref_update(struct ref *r, const struct nn_adamw_config *c, int n_micro, const double *const *R)
{
    const int n_used = (int)(sizes[0] + sizes[1]);
    double g[21] = {0}, sq = 0;
    for (int j = 0; j < n_used; j++) {
        double s = 0;
        for (int k = 0; k < n_micro; k++) s += R[k][j] + r->p[j];   /* p is fixed across micro-batches */
        g[j] = n_micro > 1 ? s * (1.0 / n_micro) : s;
        sq += g[j] * g[j];
    }
    const double norm = sqrt(sq);
    const double coef = c->max_grad_norm > 0 ? fmin(1.0, c->max_grad_norm / (norm + 1e-6)) : 1.0;
    const double lr = ref_lr(c, r->step);
    const int64_t t = ++r->step;
    const double bc1 = 1 - pow(c->beta1, (double)t), bc2 = 1 - pow(c->beta2, (double)t);
    for (int j = 0; j < n_used; j++) {
        const double gj = g[j] * coef;
        r->p[j] *= 1 - lr * c->weight_decay;
        r->m[j] = r->m[j] + (1 - c->beta1) * (gj - r->m[j]);
        r->v[j] = c->beta2 * r->v[j] + (1 - c->beta2) * gj * gj;
        r->p[j] -= lr / bc1 * r->m[j] / (sqrt(r->v[j]) / sqrt(bc2) + c->eps);
    }
}

static void random_values(double *x, int n, double lo, double hi)
{
    tensor_scope_begin();
    struct tensor *u = test_uniform(DTYPE_F64, TENSOR_SHAPE(n), lo, hi);
    for (int i = 0; i < n; i++) x[i] = tensor_get_flat(u, i);
    tensor_scope_end();
}

START_TEST(test_reference)
{
    LEAK_CHECK_BEGIN();
    struct nn_adamw_config base = nn_adamw_config_default();
    base.lr = 0.05;   /* large enough that every term matters */
    struct { const char *label; double wd, clip; int warmup, accum; enum nn_lr_decay decay; double lr_min; } cases[] = {
        {"defaults+wd", 1e-2, 0, 0, 1, NN_LR_CONSTANT, 0},  {"wd=0.1,clip=0.5", 0.1, 0.5, 0, 1, NN_LR_CONSTANT, 0},
        {"warmup=3", 1e-2, 0, 3, 1, NN_LR_CONSTANT, 0},     {"accum=3", 1e-2, 0, 0, 3, NN_LR_CONSTANT, 0},
        {"all: wd,clip=1,warmup=2,accum=2", 0.05, 1.0, 2, 2, NN_LR_CONSTANT, 0},
        {"no wd, loose clip=100", 0, 100, 0, 1, NN_LR_CONSTANT, 0},
        /* decays over 5 of the 6 updates, so the last runs at lr_min */
        {"warmup=2, cosine to 0.01", 1e-2, 0, 2, 1, NN_LR_COSINE, 0.01}, {"linear to 0, accum=2", 1e-2, 0, 0, 2, NN_LR_LINEAR, 0},
    };
    const enum dtype dts[2] = {DTYPE_F64, DTYPE_F32};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
        for (int di = 0; di < 2; di++) {
            struct nn_adamw_config c = base;
            c.weight_decay = cases[ci].wd;
            c.max_grad_norm = cases[ci].clip;
            c.warmup_steps = cases[ci].warmup;
            c.accum_steps = cases[ci].accum;
            c.decay = cases[ci].decay;
            c.decay_steps = 5;
            c.lr_min = cases[ci].lr_min;
            double init[21];
            random_values(init, 21, -1, 1);
            struct nn_params ps;
            make_params(&ps, dts[di], init);
            struct ref r = {.step = 0};
            for (int j = 0; j < 21; j++) r.p[j] = dts[di] == DTYPE_F32 ? (double)(float)init[j] : init[j];
            struct nn_adamw o;
            ck_assert_msg(nn_adamw_init(&o, &c, &ps) == STATUS_OK, "%s", tensor_error());
            ck_assert_int_eq(o.n, 3);
            const double unused0 = tensor_get_flat(ps.v[2].t, 0);
            double max_err = 0, min_norm = 1e300, max_norm = 0;
            for (int upd = 0; upd < 6; upd++) {
                double Rk[3][17];
                const double *Rp[3];
                for (int k = 0; k < c.accum_steps; k++) {
                    random_values(Rk[k], 17, -2, 2);
                    if (dts[di] == DTYPE_F32)
                        for (int j = 0; j < 17; j++) Rk[k][j] = (double)(float)Rk[k][j];
                    Rp[k] = Rk[k];
                    backward_pass(&ps, Rk[k]);
                    bool updated = true;
                    double gn = -1;
                    ck_assert_msg(nn_adamw_step(&o, &updated, &gn) == STATUS_OK, "%s", tensor_error());
                    ck_assert(updated == (k == c.accum_steps - 1));
                    if (updated) { min_norm = fmin(min_norm, gn); max_norm = fmax(max_norm, gn); }
                    else ck_assert(ps.v[0].t->grad != NULL);   /* accumulating */
                }
                ck_assert_ptr_null(ps.v[0].t->grad);   /* dropped after the update */
                ref_update(&r, &c, c.accum_steps, Rp);
                ck_assert_int_eq(o.step, upd + 1);
                /* parameters and moments against the reference, normwise per quantity:
                 * max |a - b| over max |b|. Elementwise relative error is the wrong yardstick:
                 * m is a running sum of gradients of either sign, so an element near zero
                 * carries the rounding of terms as large as the largest gradient. */
                double err[3] = {0}, scale[3] = {0};
                int64_t off = 0;
                for (int i = 0; i < 2; i++)
                    for (int64_t j = 0; j < sizes[i]; j++, off++) {
                        const double a[3] = {tensor_get_flat(ps.v[i].t, j), tensor_get_flat(o.m[i], j), tensor_get_flat(o.v[i], j)};
                        const double b[3] = {r.p[off], r.m[off], r.v[off]};
                        for (int q = 0; q < 3; q++) {
                            err[q] = fmax(err[q], fabs(a[q] - b[q]));
                            scale[q] = fmax(scale[q], fabs(b[q]));
                        }
                    }
                for (int q = 0; q < 3; q++) max_err = fmax(max_err, err[q] / scale[q]);
            }
            /* the unused parameter: no gradient, no decay, no state */
            ck_assert(tensor_get_flat(ps.v[2].t, 0) == unused0);
            ck_assert_int_eq(o.param_step[2], 0);
            ck_assert_int_eq(o.param_step[0], 6);
            /* 64 unit roundoffs of the dtype: 400 seeds gave at most 8.5 (f32) and 9.5 (f64) */
            const double tol = 64 * (dts[di] == DTYPE_F64 ? 0x1p-53 : 0x1p-24);
            printf("adamw %-32s %s: 6 updates, normwise err vs f64 reference %.2e (tol %.1e), grad norm %.3f..%.3f\n",
                   cases[ci].label, dtype_name(dts[di]), max_err, tol, min_norm, max_norm);
            ck_assert_msg(max_err < tol, "%s %s: normwise err %.3e", cases[ci].label, dtype_name(dts[di]), max_err);
            if (cases[ci].clip == 0.5) ck_assert(min_norm > 0.5);   /* clipping was active */
            nn_adamw_free(&o);
            nn_params_free(&ps);
        }
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_accum_equals_mean)
{
    /* accum=3 over three backward passes == one update on the mean gradient (set by hand) */
    LEAK_CHECK_BEGIN();
    double init[21], R[3][17];
    random_values(init, 21, -1, 1);
    for (int k = 0; k < 3; k++) random_values(R[k], 17, -2, 2);
    struct nn_adamw_config c = nn_adamw_config_default();
    c.lr = 0.01;
    c.max_grad_norm = 1.0;
    struct nn_params pa, pb;
    make_params(&pa, DTYPE_F64, init);
    make_params(&pb, DTYPE_F64, init);
    struct nn_adamw oa, ob;
    c.accum_steps = 3;
    ck_assert_int_eq(nn_adamw_init(&oa, &c, &pa), STATUS_OK);
    c.accum_steps = 1;
    ck_assert_int_eq(nn_adamw_init(&ob, &c, &pb), STATUS_OK);
    double na = 0, nb = 0;
    for (int k = 0; k < 3; k++) {
        backward_pass(&pa, R[k]);
        ck_assert_int_eq(nn_adamw_step(&oa, NULL, &na), STATUS_OK);
    }
    /* mean gradient: mean(R) + p */
    double mean[17];
    for (int j = 0; j < 17; j++) mean[j] = (R[0][j] + R[1][j] + R[2][j]) / 3.0;
    backward_pass(&pb, mean);
    ck_assert_int_eq(nn_adamw_step(&ob, NULL, &nb), STATUS_OK);
    double maxd = 0;
    for (int i = 0; i < 2; i++)
        for (int64_t j = 0; j < sizes[i]; j++) maxd = fmax(maxd, fabs(tensor_get_flat(pa.v[i].t, j) - tensor_get_flat(pb.v[i].t, j)));
    printf("adamw accum=3 vs mean gradient: grad norm %.6f vs %.6f, max |dp| = %.2e\n", na, nb, maxd);
    ck_assert(fabs(na - nb) < 1e-12 * nb);
    ck_assert(maxd < 1e-14);
    nn_adamw_free(&oa);
    nn_adamw_free(&ob);
    nn_params_free(&pa);
    nn_params_free(&pb);
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_state_round_trip)
{
    LEAK_CHECK_BEGIN();
    double init[21], R[10][17];
    random_values(init, 21, -1, 1);
    for (int k = 0; k < 10; k++) random_values(R[k], 17, -2, 2);
    struct nn_adamw_config c = nn_adamw_config_default();
    c.lr = 0.02;
    c.max_grad_norm = 0.8;
    c.warmup_steps = 4;
    c.accum_steps = 2;
    /* uninterrupted: 10 backward passes = 5 updates */
    struct nn_params pa;
    struct nn_adamw oa;
    make_params(&pa, DTYPE_F32, init);
    ck_assert_int_eq(nn_adamw_init(&oa, &c, &pa), STATUS_OK);
    for (int k = 0; k < 10; k++) {
        backward_pass(&pa, R[k]);
        ck_assert_int_eq(nn_adamw_step(&oa, NULL, NULL), STATUS_OK);
    }
    /* interrupted after 3 updates: save params + state, rebuild everything, load, go on */
    struct nn_params pb;
    struct nn_adamw ob;
    make_params(&pb, DTYPE_F32, init);
    ck_assert_int_eq(nn_adamw_init(&ob, &c, &pb), STATUS_OK);
    for (int k = 0; k < 6; k++) {
        backward_pass(&pb, R[k]);
        ck_assert_int_eq(nn_adamw_step(&ob, NULL, NULL), STATUS_OK);
    }
    char pp[512], sp[512];
    snprintf(pp, sizeof pp, "%s", tmp_path("params.safetensors"));
    snprintf(sp, sizeof sp, "%s", tmp_path("adamw.safetensors"));
    ck_assert_int_eq(nn_params_save(&pb, pp), STATUS_OK);
    ck_assert_msg(nn_adamw_state_save(&ob, sp) == STATUS_OK, "%s", tensor_error());
    nn_adamw_free(&ob);
    nn_params_free(&pb);

    struct safetensors *st = safetensors_open(sp);
    ck_assert_ptr_nonnull(st);
    ck_assert_ptr_nonnull(safetensors_find(st, "adamw.m.layer.w"));
    ck_assert_ptr_nonnull(safetensors_find(st, "adamw.v.layer.b"));
    ck_assert_str_eq(safetensors_metadata(st, "adamw.step"), "3");
    ck_assert_str_eq(safetensors_metadata(st, "adamw.micro"), "0");
    safetensors_close(st);

    double zeros[21] = {0};
    make_params(&pb, DTYPE_F32, zeros);
    struct safetensors *pst = safetensors_open(pp);
    ck_assert_ptr_nonnull(pst);
    ck_assert_msg(nn_params_load(&pb, pst, "", false) == STATUS_OK, "%s", tensor_error());
    safetensors_close(pst);
    ck_assert_int_eq(nn_adamw_init(&ob, &c, &pb), STATUS_OK);
    ck_assert_msg(nn_adamw_state_load(&ob, sp) == STATUS_OK, "%s", tensor_error());
    ck_assert_int_eq(ob.step, 3);
    for (int k = 6; k < 10; k++) {
        backward_pass(&pb, R[k]);
        ck_assert_int_eq(nn_adamw_step(&ob, NULL, NULL), STATUS_OK);
    }
    ck_assert_int_eq(ob.step, oa.step);
    for (int i = 0; i < NP; i++) {
        ck_assert_msg(test_max_abs_diff(pa.v[i].t, pb.v[i].t) == 0, "%s differs after resume", pa.v[i].name);
        ck_assert(test_max_abs_diff(oa.m[i], ob.m[i]) == 0 && test_max_abs_diff(oa.v[i], ob.v[i]) == 0);
    }
    printf("adamw state round trip: 3 updates + save/load + 2 updates == 5 uninterrupted updates, bit for bit\n");

    /* a state file for other parameters is refused, naming the tensor */
    struct nn_params pc;
    nn_params_init(&pc, DTYPE_F32, DEVICE_CPU);
    ck_assert_ptr_nonnull(nn_param_new(&pc, "other", "w", TENSOR_SHAPE(2)));
    nn_params_set_trainable(&pc, true);
    struct nn_adamw oc;
    ck_assert_int_eq(nn_adamw_init(&oc, &c, &pc), STATUS_OK);
    ck_assert_int_ne(nn_adamw_state_load(&oc, sp), STATUS_OK);
    printf("rejected state: %s\n", tensor_error());
    ck_assert(strstr(tensor_error(), "param_step") || strstr(tensor_error(), "adamw.m.other.w"));
    nn_adamw_free(&oc);
    nn_params_free(&pc);
    /* and one whose moments have another shape */
    nn_params_init(&pc, DTYPE_F32, DEVICE_CPU);
    ck_assert_ptr_nonnull(nn_param_new(&pc, "layer", "w", TENSOR_SHAPE(4, 3)));
    ck_assert_ptr_nonnull(nn_param_new(&pc, "layer", "b", TENSOR_SHAPE(5)));
    ck_assert_ptr_nonnull(nn_param_new(&pc, "layer", "unused", TENSOR_SHAPE(4)));
    nn_params_set_trainable(&pc, true);
    ck_assert_int_eq(nn_adamw_init(&oc, &c, &pc), STATUS_OK);
    ck_assert_int_ne(nn_adamw_state_load(&oc, sp), STATUS_OK);
    printf("rejected state: %s\n", tensor_error());
    ck_assert(strstr(tensor_error(), "adamw.m.layer.w") != NULL);
    ck_assert_int_eq(oc.step, 0);
    nn_adamw_free(&oc);
    nn_params_free(&pc);

    unlink(pp);
    unlink(sp);
    nn_adamw_free(&oa);
    nn_adamw_free(&ob);
    nn_params_free(&pa);
    nn_params_free(&pb);
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_errors)
{
    LEAK_CHECK_BEGIN();
    double init[21], R[17];
    random_values(init, 21, -1, 1);
    random_values(R, 17, -1, 1);
    struct nn_params ps;
    make_params(&ps, DTYPE_F32, init);
    struct nn_adamw o;
    struct nn_adamw_config c = nn_adamw_config_default();
    ck_assert_int_eq(nn_adamw_init(&o, &c, &ps), STATUS_OK);
    /* one good update so the moments are non-zero */
    backward_pass(&ps, R);
    ck_assert_int_eq(nn_adamw_step(&o, NULL, NULL), STATUS_OK);
    struct tensor *p0 = tensor_clone(ps.v[0].t), *m0 = tensor_clone(o.m[0]), *v0 = tensor_clone(o.v[0]);
    for (int bad = 0; bad < 2; bad++) {
        R[3] = bad ? NAN : INFINITY;
        backward_pass(&ps, R);
        bool updated = true;
        double gn = 0;
        ck_assert_int_eq(nn_adamw_step(&o, &updated, &gn), STATUS_VALUE);
        printf("non-finite gradient: %s\n", tensor_error());
        ck_assert(strstr(tensor_error(), "gradient norm") != NULL);
        ck_assert(!updated && !isfinite(gn));
        ck_assert(test_max_abs_diff(ps.v[0].t, p0) == 0 && test_max_abs_diff(o.m[0], m0) == 0 && test_max_abs_diff(o.v[0], v0) == 0);
        ck_assert_int_eq(o.step, 1);
        ck_assert_ptr_null(ps.v[0].t->grad);
    }
    tensor_free(p0);
    tensor_free(m0);
    tensor_free(v0);
    nn_adamw_free(&o);
    /* bad configs */
    struct { struct nn_adamw_config c; const char *needle; } bad[8];
    for (int i = 0; i < 8; i++) bad[i].c = nn_adamw_config_default();
    bad[0].c.lr = -1; bad[0].needle = "lr";
    bad[1].c.beta1 = 1; bad[1].needle = "beta1";
    bad[2].c.beta2 = -0.1; bad[2].needle = "beta2";
    bad[3].c.accum_steps = 0; bad[3].needle = "accum_steps";
    bad[4].c.max_grad_norm = -1; bad[4].needle = "max_grad_norm";
    bad[5].c.warmup_steps = -2; bad[5].needle = "warmup_steps";
    bad[6].c.decay = NN_LR_COSINE; bad[6].needle = "decay_steps";                        /* no span */
    bad[7].c.decay = NN_LR_LINEAR; bad[7].c.decay_steps = 9; bad[7].c.lr_min = 1; bad[7].needle = "lr_min";   /* > lr */
    for (int i = 0; i < 8; i++) {
        ck_assert_int_eq(nn_adamw_init(&o, &bad[i].c, &ps), STATUS_VALUE);
        ck_assert_msg(strstr(tensor_error(), bad[i].needle) != NULL, "%s", tensor_error());
        nn_adamw_free(&o);
    }
    /* the warm-up schedule: lr/w, 2lr/w, ..., lr */
    c.warmup_steps = 4;
    ck_assert_int_eq(nn_adamw_init(&o, &c, &ps), STATUS_OK);
    for (int k = 0; k < 6; k++) {
        ck_assert(fabs(nn_adamw_lr(&o) - c.lr * fmin(1.0, (k + 1) / 4.0)) < 1e-20);
        o.step++;
    }
    nn_adamw_free(&o);
    /* warm-up 2 then cosine over 6 updates from 1 to 0.1: 0.5, 1, 1, then down to 0.1 at update 6 and after;
     * every decay reaches lr_min exactly, and names parse back */
    struct nn_adamw_config d = nn_adamw_config_default();
    d.lr = 1;
    d.warmup_steps = 2;
    d.decay = NN_LR_COSINE;
    d.decay_steps = 6;
    d.lr_min = 0.1;
    const double want[8] = {0.5, 1, 1, 0.1 + 0.9 * (1 + sqrt(0.5)) / 2, 0.55, 0.1 + 0.9 * (1 - sqrt(0.5)) / 2, 0.1, 0.1};
    for (int k = 0; k < 8; k++)
        ck_assert_msg(fabs(nn_adamw_lr_at(&d, k) - want[k]) < 1e-15, "cosine update %d: %.17g", k, nn_adamw_lr_at(&d, k));
    d.decay = NN_LR_LINEAR;
    ck_assert(fabs(nn_adamw_lr_at(&d, 3) - 0.775) < 1e-15 && nn_adamw_lr_at(&d, 6) == 0.1 && nn_adamw_lr_at(&d, 99) == 0.1);
    for (int k = 0; k < 3; k++) {
        enum nn_lr_decay e;
        ck_assert(nn_lr_decay_parse(nn_lr_decay_name((enum nn_lr_decay)k), &e) && e == (enum nn_lr_decay)k);
    }
    enum nn_lr_decay e;
    ck_assert(!nn_lr_decay_parse("exponential", &e));
    nn_params_free(&ps);
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("optim");
    TCase *tc = tcase_create("optim");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_reference);
    tcase_add_test(tc, test_accum_equals_mean);
    tcase_add_test(tc, test_state_round_trip);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
