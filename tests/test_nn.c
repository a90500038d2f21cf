/* test_nn.c — the parameter store (names, loading with exact-name and shape checks, dtype
 * casting, saving), the basic layers, and config.json reading. */
#include "tests/harness.h"
#include "nn/config.h"
#include "nn/file.h"
#include "nn/module.h"
#include "tensor/alloc.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void build_small(struct nn_params *ps, struct nn_linear *l, struct nn_conv2d *c, struct nn_group_norm *g)
{
    ck_assert_int_eq(nn_linear_init(l, ps, "proj", 6, 4, true), STATUS_OK);
    ck_assert_int_eq(nn_conv2d_init(c, ps, "down.conv", 4, 8, 3, 2, 1, true), STATUS_OK);
    ck_assert_int_eq(nn_group_norm_init(g, ps, "down.norm", 4, 8, 1e-5), STATUS_OK);
}

START_TEST(test_params)
{
    LEAK_CHECK_BEGIN();
    struct nn_params ps;
    nn_params_init(&ps, DTYPE_F32, DEVICE_CPU);
    struct nn_linear l;
    struct nn_conv2d c;
    struct nn_group_norm g;
    build_small(&ps, &l, &c, &g);
    ck_assert_int_eq(ps.n, 6);
    ck_assert_int_eq(nn_params_count(&ps), 6 * 4 + 4 + 8 * 4 * 9 + 8 + 8 + 8);
    ck_assert_ptr_eq(nn_param_find(&ps, "down.conv.weight"), c.weight);
    ck_assert_str_eq(c.weight->name, "down.conv.weight");
    ck_assert_ptr_null(nn_param_new(&ps, "proj", "weight", TENSOR_SHAPE(1)));
    ck_assert(strstr(tensor_error(), "proj.weight") != NULL);
    ck_assert_int_eq(nn_params_init_default(&ps, 7), STATUS_OK);
    ck_assert_double_eq(tensor_get_flat(g.weight, 3), 1.0);
    ck_assert_double_eq(tensor_get_flat(g.bias, 3), 0.0);
    /* forward shapes through the layers */
    tensor_scope_begin();
    struct tensor *x = test_uniform(DTYPE_F32, TENSOR_SHAPE(2, 4, 9, 9), -1, 1);
    struct tensor *y = nn_group_norm_forward(&g, nn_conv2d_forward(&c, x));
    ck_assert_msg(y != NULL, "%s", tensor_error());
    ck_assert_int_eq(y->shape[1], 8);
    ck_assert_int_eq(y->shape[2], 5);
    struct tensor *z = nn_linear_forward(&l, test_uniform(DTYPE_F32, TENSOR_SHAPE(3, 6), -1, 1));
    ck_assert_int_eq(z->shape[1], 4);
    tensor_scope_end();
    /* to bf16 and back keeps names */
    ck_assert_int_eq(nn_params_to_dtype(&ps, DTYPE_BF16), STATUS_OK);
    ck_assert_int_eq(nn_param_find(&ps, "proj.weight")->dtype, DTYPE_BF16);
    ck_assert_ptr_eq(nn_param_find(&ps, "proj.weight"), l.weight);   /* layers keep valid pointers */
    ck_assert_int_eq(l.weight->dtype, DTYPE_BF16);
    nn_params_free(&ps);
    LEAK_CHECK_END();
}
END_TEST

/* live bytes of the CPU allocator */
static int64_t live_now(void)
{
    struct mem_stats m;
    mem_get_stats(DEVICE_CPU, &m);
    return m.live_bytes;
}

/* Half-precision storage with f32 activations: linear and conv2d give exactly the f32 layer
 * whose weights were rounded (forward and input gradient bit-identical; a weight gradient
 * arrives in the weight's dtype), and the graph keeps the bf16 weight, not an f32 copy. */
START_TEST(test_half_storage)
{
    LEAK_CHECK_BEGIN();
    for (int half = 0; half < 2; half++) {
        const enum dtype hd = half ? DTYPE_F16 : DTYPE_BF16;
        struct nn_params a, b;
        struct nn_linear la, lb;
        struct nn_conv2d ca, cb;
        nn_params_init(&a, DTYPE_F32, DEVICE_CPU);
        nn_params_init(&b, DTYPE_F32, DEVICE_CPU);
        ck_assert_int_eq(nn_linear_init(&la, &a, "l", 256, 512, true), STATUS_OK);
        ck_assert_int_eq(nn_conv2d_init(&ca, &a, "c", 32, 64, 3, 1, 1, true), STATUS_OK);
        ck_assert_int_eq(nn_linear_init(&lb, &b, "l", 256, 512, true), STATUS_OK);
        ck_assert_int_eq(nn_conv2d_init(&cb, &b, "c", 32, 64, 3, 1, 1, true), STATUS_OK);
        nn_params_init_default(&a, 11);
        nn_params_init_default(&b, 11);
        ck_assert_int_eq(nn_params_to_dtype(&a, hd), STATUS_OK);   /* a: rounded, computed in f32 */
        ck_assert_int_eq(nn_params_to_dtype(&a, DTYPE_F32), STATUS_OK);
        ck_assert_int_eq(nn_params_to_dtype(&b, hd), STATUS_OK);   /* b: stored half */
        ck_assert_int_eq(lb.weight->dtype, hd);
        for (int layer = 0; layer < 2; layer++) {
            tensor_scope_begin();
            struct tensor *x = layer ? test_uniform(DTYPE_F32, TENSOR_SHAPE(2, 32, 6, 6), -1, 1)
                                     : test_uniform(DTYPE_F32, TENSOR_SHAPE(4, 256), -1, 1);
            struct tensor *w = layer ? cb.weight : lb.weight;
            ck_assert_int_eq(ag_set_requires_grad(x, true), STATUS_OK);
            struct tensor *ya = layer ? nn_conv2d_forward(&ca, x) : nn_linear_forward(&la, x);
            ck_assert_ptr_nonnull(ya);
            struct tensor *r = test_uniform(DTYPE_F32, ya->ndim, ya->shape, -1, 1);
            ck_assert_int_eq(ag_backward(ya, r, false), STATUS_OK);
            struct tensor *gxa = tensor_clone(x->grad);
            ag_zero_grad(x);
            const int64_t before = live_now();
            struct tensor *yb = layer ? nn_conv2d_forward(&cb, x) : nn_linear_forward(&lb, x);
            ck_assert_msg(yb != NULL, "%s", tensor_error());
            const int64_t grew = live_now() - before, w32 = tensor_numel(w) * 4;
            ck_assert_msg(grew < w32 / 2, "%s %s: the graph holds %lld bytes (an f32 weight copy is %lld)",
                          layer ? "conv2d" : "linear", dtype_name(hd), (long long)grew, (long long)w32);
            ck_assert_int_eq(yb->dtype, DTYPE_F32);
            ck_assert_msg(test_max_abs_diff(ya, yb) == 0.0, "forward differs by %g", test_max_abs_diff(ya, yb));
            ck_assert_int_eq(ag_backward(yb, r, false), STATUS_OK);
            ck_assert_msg(test_max_abs_diff(gxa, x->grad) == 0.0, "input gradient differs");
            /* a trainable half weight: its gradient is the f32 one, rounded */
            struct tensor *wa = layer ? ca.weight : la.weight;
            ck_assert_int_eq(ag_set_requires_grad(wa, true), STATUS_OK);
            ck_assert_int_eq(ag_set_requires_grad(w, true), STATUS_OK);
            ck_assert_int_eq(ag_backward(layer ? nn_conv2d_forward(&ca, x) : nn_linear_forward(&la, x), r, false), STATUS_OK);
            ck_assert_int_eq(ag_backward(layer ? nn_conv2d_forward(&cb, x) : nn_linear_forward(&lb, x), r, false), STATUS_OK);
            ck_assert_int_eq(w->grad->dtype, hd);
            ck_assert_msg(test_max_abs_diff(tensor_to_dtype(wa->grad, hd), w->grad) == 0.0, "weight gradient differs");
            ag_set_requires_grad(wa, false);
            ag_set_requires_grad(w, false);
            ag_zero_grad(wa);
            ag_zero_grad(w);
            tensor_scope_end();
        }
        /* any other dtype mix is still an error */
        tensor_scope_begin();
        ck_assert_ptr_null(nn_linear_forward(&la, test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 256), -1, 1)));
        ck_assert_ptr_null(nn_linear_forward(&lb, test_uniform(DTYPE_F64, TENSOR_SHAPE(2, 256), -1, 1)));
        tensor_scope_end();
        nn_params_free(&a);
        nn_params_free(&b);
    }
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_load)
{
    LEAK_CHECK_BEGIN();
    struct nn_params a, b;
    struct nn_linear l1, l2;
    struct nn_conv2d c1, c2;
    struct nn_group_norm g1, g2;
    nn_params_init(&a, DTYPE_F32, DEVICE_CPU);
    nn_params_init(&b, DTYPE_F32, DEVICE_CPU);
    build_small(&a, &l1, &c1, &g1);
    build_small(&b, &l2, &c2, &g2);
    nn_params_init_default(&a, 3);
    char path[] = "/tmp/draft-test-nn-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(nn_params_save(&a, path), STATUS_OK);
    struct safetensors *st = safetensors_open(path);
    ck_assert_ptr_nonnull(st);
    ck_assert_int_eq(nn_params_load(&b, st, "", false), STATUS_OK);
    tensor_scope_begin();
    ck_assert_double_eq(test_max_abs_diff(c1.weight, c2.weight), 0.0);
    tensor_scope_end();
    /* a model with a parameter the file lacks */
    struct nn_linear extra;
    nn_linear_init(&extra, &b, "head", 2, 2, false);
    ck_assert_int_eq(nn_params_load(&b, st, "", false), STATUS_FORMAT);
    ck_assert(strstr(tensor_error(), "missing tensor 'head.weight'") && strstr(tensor_error(), path));
    /* a file with a tensor the model lacks */
    struct nn_params small;
    struct nn_linear only;
    nn_params_init(&small, DTYPE_F32, DEVICE_CPU);
    nn_linear_init(&only, &small, "proj", 6, 4, true);
    ck_assert_int_eq(nn_params_load(&small, st, "", false), STATUS_FORMAT);
    ck_assert(strstr(tensor_error(), "unexpected tensor") != NULL);
    ck_assert_int_eq(nn_params_load(&small, st, "", true), STATUS_OK);
    /* a shape mismatch names both shapes */
    struct nn_params wrong;
    struct nn_linear wl;
    nn_params_init(&wrong, DTYPE_F32, DEVICE_CPU);
    nn_linear_init(&wl, &wrong, "proj", 5, 4, true);
    ck_assert_int_eq(nn_params_load(&wrong, st, "", true), STATUS_SHAPE);
    ck_assert(strstr(tensor_error(), "proj.weight") && strstr(tensor_error(), "[4,6]") && strstr(tensor_error(), "[4,5]"));
    safetensors_close(st);
    unlink(path);
    nn_params_free(&a);
    nn_params_free(&b);
    nn_params_free(&small);
    nn_params_free(&wrong);
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_config)
{
    struct nn_config c;
    const char *json = "{\"_class_name\":\"X\",\"in_channels\":4,\"norm_eps\":1e-5,\"flip\":true,\"name\":\"unet\","
                       "\"blocks\":[320,640],\"heads\":8,\"types\":[\"A\",\"B\"],\"unused\":1}";
    ck_assert_int_eq(nn_config_parse(&c, json, strlen(json), "cfg.json"), STATUS_OK);
    ck_assert_int_eq(nn_config_int(&c, "in_channels", 0), 4);
    ck_assert_double_eq(nn_config_double(&c, "norm_eps", 0), 1e-5);
    ck_assert(nn_config_bool(&c, "flip", false));
    char buf[32];
    ck_assert_str_eq(nn_config_string(&c, "name", "", buf, sizeof buf), "unet");
    long long v[4];
    ck_assert_int_eq(nn_config_int_array(&c, "blocks", v, 4, false), 2);
    ck_assert_int_eq(v[1], 640);
    ck_assert_int_eq(nn_config_int_array(&c, "heads", v, 4, true), 1);
    char types[4][64];
    ck_assert_int_eq(nn_config_string_array(&c, "types", types, 4), 2);
    ck_assert_int_eq(nn_config_int(&c, "absent", 77), 77);
    ck_assert_int_eq(nn_config_finish(&c), STATUS_FORMAT);
    ck_assert(strstr(tensor_error(), "cfg.json") && strstr(tensor_error(), "'unused'"));
    const char *ign[1] = {"unused"};
    nn_config_ignore(&c, ign, 1);
    ck_assert_int_eq(nn_config_finish(&c), STATUS_OK);
    nn_config_free(&c);
    /* wrong types are remembered and reported */
    const char *bad = "{\"in_channels\":\"four\"}";
    ck_assert_int_eq(nn_config_parse(&c, bad, strlen(bad), "bad.json"), STATUS_OK);
    ck_assert_int_eq(nn_config_int(&c, "in_channels", 4), 4);
    ck_assert_int_eq(nn_config_finish(&c), STATUS_FORMAT);
    ck_assert(strstr(tensor_error(), "must be an integer") != NULL);
    nn_config_free(&c);
    ck_assert_int_eq(nn_config_parse(&c, "[1]", 3, "arr.json"), STATUS_FORMAT);
    ck_assert_int_eq(nn_config_load(&c, "/nonexistent/config.json"), STATUS_IO);
}
END_TEST

/* A hand-edited JSON file that does not parse is named with the line where it stops (and the
 * column and the text before it: where cJSON gave up, checked only for their form); valid JSON
 * that is not an object says what it is */
START_TEST(test_json_errors)
{
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"{\n  \"a\": 1,\n  \"b\": 2,\n}\n", "x.json:4:"},   /* trailing comma */
        {"{\"eps\": 1e-5,\n \"n\": four}", "x.json:2:"},
        {"{\n  \"a\": [1, 2,\n  \"b\": 3\n}", "x.json:3:"},   /* unclosed list */
        {"{\"a\": 1} {\"b\": 2}", "x.json:1:10: invalid JSON (after '{\"a\": 1} ')"},   /* text after the object */
        {"{\"a\": 1", "x.json:1:"},
        {"", "x.json: empty, not a JSON object"},
        {"[1, 2]", "x.json: a JSON array, not an object"},
        {"\"s\"", "x.json: a JSON string, not an object"},
        {"null", "x.json: JSON null, not an object"},
        {"{\"b\": 1, \"a\": 2, \"c\": {}, \"a\": 3}", "x.json: key \"a\" appears twice"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *t = cases[i].text, *want = cases[i].want;
        ck_assert_ptr_null(nn_json_object(t, strlen(t), "x.json"));
        const char *e = tensor_error();
        int line, col, n = 0;
        if (want[strlen(want) - 1] == ':')   /* a syntax error: the line, then ":col: invalid JSON (after '...')" */
            ck_assert_msg(!strncmp(e, want, strlen(want)) && sscanf(e, "x.json:%d:%d: invalid JSON (after '%n", &line,
                                                                    &col, &n) == 2 && n > 0 && e[strlen(e) - 2] == '\'',
                          "case %zu: '%s', want '%s<col>: invalid JSON (after '...')'", i, e, want);
        else
            ck_assert_msg(!strcmp(e, want), "case %zu: '%s', want '%s'", i, e, want);
    }
    /* whitespace around the object is fine; the text is read only up to len (no NUL needed) */
    const char *ok = "  {\"a\": [1, 2]}\n\n garbage past len";
    cJSON *root = nn_json_object(ok, strlen(ok) - strlen(" garbage past len"), "x.json");
    ck_assert_ptr_nonnull(root);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(root, "a")), 2);
    cJSON_Delete(root);
    /* the config reader reports through it */
    struct nn_config c;
    ck_assert_int_eq(nn_config_parse(&c, "{\"a\": 1,}", 9, "config.json"), STATUS_FORMAT);
    ck_assert(!strncmp(tensor_error(), "config.json:1:", 14) && strstr(tensor_error(), "invalid JSON"));
}
END_TEST

/* nn_mkdir_p_check says what nn_mkdir_p would do, creating nothing: a path through a file fails
 * alike in both; a new nested folder under a writable one, or an existing folder, passes */
START_TEST(test_mkdir_check)
{
    char root[] = "/tmp/draft-test-mkdir-XXXXXX", p[256];
    ck_assert_ptr_nonnull(mkdtemp(root));
    snprintf(p, sizeof p, "%s/a/b/c", root);
    ck_assert_int_eq(nn_mkdir_p_check(p), STATUS_OK);
    snprintf(p, sizeof p, "%s/a", root);
    ck_assert_int_ne(access(p, F_OK), 0);   /* nothing created */
    ck_assert_int_eq(nn_mkdir_p_check(root), STATUS_OK);
    snprintf(p, sizeof p, "%s/f", root);
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    snprintf(p, sizeof p, "%s/f/sub", root);
    ck_assert_int_eq(nn_mkdir_p_check(p), STATUS_IO);
    ck_assert_msg(strstr(tensor_error(), "/f exists and is not a folder") != NULL, "%s", tensor_error());
    ck_assert_int_eq(nn_mkdir_p(p), STATUS_IO);   /* the same verdict as the real thing */
    snprintf(p, sizeof p, "%s/f", root);
    ck_assert_int_eq(nn_mkdir_p_check(p), STATUS_IO);
    ck_assert_int_eq(nn_mkdir_p_check(""), STATUS_IO);
    ck_assert_int_eq(nn_mkdir_p(""), STATUS_IO);
    /* a file to write: into a folder that is there (the file there or not), not into a file or a folder */
    ck_assert_int_eq(nn_file_check_writable(p), STATUS_OK);   /* root/f, a file */
    snprintf(p, sizeof p, "%s/new.jsonl", root);
    ck_assert_int_eq(nn_file_check_writable(p), STATUS_OK);
    ck_assert_int_ne(access(p, F_OK), 0);   /* nothing created */
    snprintf(p, sizeof p, "%s/f/x", root);
    ck_assert_int_eq(nn_file_check_writable(p), STATUS_IO);
    ck_assert_msg(strstr(tensor_error(), "/f is not a folder") != NULL, "%s", tensor_error());
    snprintf(p, sizeof p, "%s/none/x", root);
    ck_assert_int_eq(nn_file_check_writable(p), STATUS_IO);
    ck_assert_int_eq(nn_file_check_writable(root), STATUS_IO);
    ck_assert_msg(strstr(tensor_error(), "it is a folder") != NULL, "%s", tensor_error());
    ck_assert_int_eq(nn_file_check_writable(""), STATUS_IO);
    snprintf(p, sizeof p, "%s/f", root);
    ck_assert_int_eq(unlink(p), 0);
    ck_assert_int_eq(rmdir(root), 0);
}
END_TEST

int main(void)
{
    test_seed();
    Suite *s = suite_create("nn");
    TCase *tc = tcase_create("nn");
    tcase_add_test(tc, test_params);
    tcase_add_test(tc, test_json_errors);
    tcase_add_test(tc, test_mkdir_check);
    tcase_add_test(tc, test_half_storage);
    tcase_add_test(tc, test_load);
    tcase_add_test(tc, test_config);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
