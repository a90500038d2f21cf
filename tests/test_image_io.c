/* test_image_io.c — draft/image.h and draft/report.h: tensor → 8-bit conversion (rounding at
 * the edges and at exact ties, clamping, NaN, dtypes, non-contiguous views), PNG round trips
 * (and reading grey/palette/RGBA files written with libpng directly), truncated and corrupt
 * PNGs, grid geometry and pixel placement, captions (when the font is installed; skipped with a
 * reason otherwise), the SVG chart, the diversity measures against hand-computed values and
 * the HTML report. With DRAFT_REPORT_DEMO=DIR set, also writes a demo report into DIR. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#if __has_include(<png.h>)
#include <png.h>
#define HAVE_PNG_H 1
#endif

#include "draft/image.h"
#include "draft/report.h"
#include "tests/harness.h"

static char tmpdir[64];

static void tmp_setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/draft_imgio_XXXXXX");
    ck_assert(mkdtemp(tmpdir) != NULL);
}

/* removes every file in tmpdir (there are no subfolders), then the folder; a leftover
 * temporary file from an atomic write would make rmdir fail */
static int count_files(void);
static void tmp_teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -f %s/*", tmpdir);
    ck_assert(system(cmd) == 0);
    ck_assert(rmdir(tmpdir) == 0);
}

static int count_files(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "ls -A %s | wc -l", tmpdir);
    FILE *p = popen(cmd, "r");
    ck_assert(p != NULL);
    int n = -1;
    ck_assert(fscanf(p, "%d", &n) == 1);
    pclose(p);
    return n;
}

static char *path_in(const char *name)
{
    static char p[4][128];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", tmpdir, name);
    return p[k];
}

static bool word_char(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'; }

/* a non-finite number printed anywhere: "nan", "inf" or "infinity" in any case as a token of its
 * own ("-nan", ">inf<"), not inside a word or a name (a page's temporary path ends in mkdtemp's
 * random letters, "draft_compare_INf8Gu" once: no value) */
static bool has_nonfinite(const char *s)
{
    for (const char *p = s; *p; p++) {
        if (p > s && word_char(p[-1])) continue;
        const size_t n = !strncasecmp(p, "infinity", 8) ? 8 : !strncasecmp(p, "nan", 3) || !strncasecmp(p, "inf", 3) ? 3 : 0;
        if (n && !word_char(p[n])) return true;
    }
    return false;
}

static int count_str(const char *hay, const char *needle)
{
    int c = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) c++;
    return c;
}

/* xorshift bytes, seeded from the suite seed */
static uint64_t rng_state;
static uint32_t rnd(void)
{
    if (!rng_state) rng_state = test_seed() | 1;
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

static void random_image(struct draft_image *im, int w, int h)
{
    ck_assert_int_eq(draft_image_alloc(im, w, h, 0), STATUS_OK);
    for (size_t i = 0; i < (size_t)w * h * 3; i++) im->rgb[i] = (uint8_t)rnd();
}

static uint8_t px(const struct draft_image *im, int x, int y, int c) { return im->rgb[((size_t)y * im->w + x) * 3 + c]; }

static bool png_available(void)
{
    struct draft_image im;
    ck_assert_int_eq(draft_image_alloc(&im, 1, 1, 0), STATUS_OK);
    enum status s = draft_png_write(path_in("probe.png"), &im);
    draft_image_free(&im);
    unlink(path_in("probe.png"));
    if (s) printf("SKIP PNG checks: %s\n", tensor_error());
    return s == STATUS_OK;
}

/* ---------------------------------------------------------------- tensor → image */

/* expected bytes for values known exactly: -1 → 0, +1 → 255, x = 2k/255 - 1 → k, just above /
 * below the midpoint of k and k+1 → k+1 / k, out of range clamps, NaN → 0 */
START_TEST(test_from_tensor_values)
{
    LEAK_CHECK_BEGIN();
    enum { N = 12 };
    double x[N], want[N];
    int n = 0;
    x[n] = -1, want[n++] = 0;
    x[n] = 1, want[n++] = 255;
    x[n] = 0, want[n++] = 128;   /* p = 127.5 exactly: ties to even */
    x[n] = -7.5, want[n++] = 0;
    x[n] = 3, want[n++] = 255;
    x[n] = NAN, want[n++] = 0;
    x[n] = 2 * 37 / 255.0 - 1, want[n++] = 37;
    x[n] = 2 * (200.5 / 255.0) - 1 + 1e-4, want[n++] = 201;   /* p ≈ 200.5128 */
    x[n] = 2 * (200.5 / 255.0) - 1 - 1e-4, want[n++] = 200;   /* p ≈ 200.4872 */
    x[n] = 2 * (0.4 / 255.0) - 1, want[n++] = 0;
    x[n] = 2 * (254.6 / 255.0) - 1, want[n++] = 255;
    /* float32 x whose p = fl(fl(x/2+0.5)*255) is exactly 64.5: numpy's round (ties to even,
     * what diffusers uses) gives 64, half up would give 65 */
    x[n] = -0x1.f9f9f8p-2, want[n++] = 64;
    ck_assert_int_eq(n, N);
    /* [2,3,1,N]: image 1 channel c holds x; image 0 holds -x (to see b selects) */
    struct tensor *t = tensor_zeros(DTYPE_F64, TENSOR_SHAPE(2, 3, 1, N), DEVICE_CPU);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < N; i++) {
            tensor_set_flat(t, (int64_t)(3 + c) * N + i, x[i]);
            tensor_set_flat(t, (int64_t)c * N + i, c == 0 ? 1.0 : -1.0);
        }
    struct draft_image im;
    ck_assert_int_eq(draft_image_from_tensor(t, 1, &im), STATUS_OK);
    ck_assert_int_eq(im.w, N);
    ck_assert_int_eq(im.h, 1);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < 3; c++) ck_assert_msg(px(&im, i, 0, c) == want[i], "x=%a c=%d: got %d want %g", x[i], c, px(&im, i, 0, c), want[i]);
    draft_image_free(&im);
    ck_assert_int_eq(draft_image_from_tensor(t, 0, &im), STATUS_OK);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(px(&im, i, 0, 0), 255);
        ck_assert_int_eq(px(&im, i, 0, 1), 0);
    }
    draft_image_free(&im);
    /* the same bytes from f32, f16 and bf16 where the value is representable (±1, 0, clamps) */
    enum dtype dts[] = {DTYPE_F32, DTYPE_F16, DTYPE_BF16};
    for (int d = 0; d < 3; d++) {
        struct tensor *c = tensor_to_dtype(t, dts[d]);
        ck_assert_int_eq(draft_image_from_tensor(c, 1, &im), STATUS_OK);
        for (int i = 0; i < 6; i++) ck_assert_int_eq(px(&im, i, 0, 2), want[i]);
        draft_image_free(&im);
        tensor_free(c);
    }
    /* errors: bad index, bad shape, integer dtype, NULL — an error, `out` empty */
    ck_assert_int_ne(draft_image_from_tensor(t, 2, &im), STATUS_OK);
    ck_assert(im.rgb == NULL && im.w == 0);
    ck_assert_int_ne(draft_image_from_tensor(t, -1, &im), STATUS_OK);
    struct tensor *bad = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(1, 4, 2, 2), DEVICE_CPU);
    ck_assert_int_ne(draft_image_from_tensor(bad, 0, &im), STATUS_OK);
    ck_assert_msg(strstr(tensor_error(), "[1,4,2,2]") != NULL, "message: %s", tensor_error());
    tensor_free(bad);
    bad = tensor_zeros(DTYPE_I32, TENSOR_SHAPE(1, 3, 2, 2), DEVICE_CPU);
    ck_assert_int_ne(draft_image_from_tensor(bad, 0, &im), STATUS_OK);
    tensor_free(bad);
    tensor_clear_error();
    ck_assert_int_ne(draft_image_from_tensor(NULL, 0, &im), STATUS_OK);
    /* the values a diverged sampling leaves: image 1 has one NaN in each of its 3 channels;
     * then an infinity in image 0 and in a channel of image 1 (counted in f16 too) */
    ck_assert_int_eq(draft_image_nonfinite(t, 0), 0);
    ck_assert_int_eq(draft_image_nonfinite(t, 1), 3);
    tensor_set_flat(t, 5, INFINITY);
    tensor_set_flat(t, (int64_t)4 * N + 2, -INFINITY);
    ck_assert_int_eq(draft_image_nonfinite(t, 0), 1);
    ck_assert_int_eq(draft_image_nonfinite(t, 1), 4);
    struct tensor *h = tensor_to_dtype(t, DTYPE_F16);
    ck_assert_int_eq(draft_image_nonfinite(h, 1), 4);
    tensor_free(h);
    ck_assert_int_eq(draft_image_nonfinite(t, 2), -1);
    ck_assert_msg(strstr(tensor_error(), "draft_image_nonfinite: image 2 out of range") != NULL, "%s", tensor_error());
    ck_assert_int_eq(draft_image_nonfinite(NULL, 0), -1);
    tensor_clear_error();
    tensor_free(t);
    LEAK_CHECK_END();
}
END_TEST

/* a permuted [B,H,W,3] buffer and test_noncontig's reversed storage give the same bytes as
 * the contiguous tensor, and every pixel lands at (y, x) channel c */
START_TEST(test_from_tensor_noncontig)
{
    LEAK_CHECK_BEGIN();
    const int B = 2, H = 5, W = 7;
    struct tensor *t = test_uniform(DTYPE_F32, TENSOR_SHAPE(B, 3, H, W), -1.2, 1.2);
    struct tensor *nc = test_noncontig(t);
    ck_assert(!tensor_is_contiguous(nc));
    /* HWC storage viewed as CHW */
    struct tensor *hwc = tensor_empty(DTYPE_F32, TENSOR_SHAPE(B, H, W, 3), DEVICE_CPU);
    struct tensor *chw = tensor_permute(hwc, (int[]){0, 3, 1, 2});
    ck_assert_int_eq(tensor_copy_(chw, t), STATUS_OK);
    ck_assert(!tensor_is_contiguous(chw));
    for (int b = 0; b < B; b++) {
        struct draft_image a, c, d;
        ck_assert_int_eq(draft_image_from_tensor(t, b, &a), STATUS_OK);
        ck_assert_int_eq(draft_image_from_tensor(nc, b, &c), STATUS_OK);
        ck_assert_int_eq(draft_image_from_tensor(chw, b, &d), STATUS_OK);
        ck_assert(c.w == W && c.h == H && d.w == W && d.h == H);
        ck_assert(memcmp(a.rgb, c.rgb, (size_t)W * H * 3) == 0);
        ck_assert(memcmp(a.rgb, d.rgb, (size_t)W * H * 3) == 0);
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int ch = 0; ch < 3; ch++) {
                    double v = tensor_get(t, (int64_t[]){b, ch, y, x});
                    double p = fmin(fmax(v / 2 + 0.5, 0), 1) * 255;
                    /* away from ties the exact value decides (float32 steps are far below 1e-3) */
                    if (fabs(p - floor(p) - 0.5) > 1e-3)
                        ck_assert_int_eq(px(&a, x, y, ch), (int)floor(p + 0.5));
                }
        draft_image_free(&a);
        draft_image_free(&c);
        draft_image_free(&d);
    }
    tensor_free(chw);
    tensor_free(hwc);
    tensor_free(nc);
    tensor_free(t);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- PNG */

START_TEST(test_png_roundtrip)
{
    if (!png_available()) return;
    int sizes[][2] = {{1, 1}, {37, 23}, {256, 3}};
    for (int k = 0; k < 3; k++) {
        struct draft_image a, b;
        random_image(&a, sizes[k][0], sizes[k][1]);
        const char *p = path_in("rt.png");
        ck_assert_msg(draft_png_write(p, &a) == STATUS_OK, "%s", tensor_error());
        ck_assert_int_eq(count_files(), 1);   /* no temporary left behind */
        ck_assert_msg(draft_png_read(p, &b) == STATUS_OK, "%s", tensor_error());
        ck_assert_int_eq(b.w, a.w);
        ck_assert_int_eq(b.h, a.h);
        ck_assert(memcmp(a.rgb, b.rgb, (size_t)a.w * a.h * 3) == 0);
        draft_image_free(&a);
        draft_image_free(&b);
    }
    /* overwriting an existing file works; a missing folder is an error naming the path */
    struct draft_image a;
    random_image(&a, 4, 4);
    ck_assert_int_eq(draft_png_write(path_in("rt.png"), &a), STATUS_OK);
    const char *bad = path_in("no/such/dir/x.png");
    ck_assert_int_eq(draft_png_write(bad, &a), STATUS_IO);
    ck_assert_msg(strstr(tensor_error(), bad) != NULL, "message: %s", tensor_error());
    struct draft_image empty = {0};
    ck_assert_int_ne(draft_png_write(path_in("e.png"), &empty), STATUS_OK);
    draft_image_free(&a);
}
END_TEST

#ifdef HAVE_PNG_H
/* a w×h PNG of colour type `type` with bit depth `bits`, pixels from `pix` (already in that
 * format, rows packed), an optional palette */
static void write_raw_png(const char *path, int w, int h, int type, int bits, const uint8_t *pix, const png_color *pal,
                          int n_pal, bool interlace)
{
    FILE *f = fopen(path, "wb");
    ck_assert(f != NULL);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    ck_assert(!setjmp(png_jmpbuf(png)));
    png_init_io(png, f);
    png_set_IHDR(png, info, w, h, bits, type, interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (pal) png_set_PLTE(png, info, pal, n_pal);
    png_write_info(png, info);
    int ch = type == PNG_COLOR_TYPE_RGB ? 3 : type == PNG_COLOR_TYPE_RGBA ? 4 : type == PNG_COLOR_TYPE_GRAY_ALPHA ? 2 : 1;
    size_t rowbytes = ((size_t)w * ch * bits + 7) / 8;
    png_bytep *rows = malloc(sizeof *rows * h);
    for (int y = 0; y < h; y++) rows[y] = (png_bytep)pix + y * rowbytes;
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);
    fclose(f);
}
#endif

/* grey, grey+alpha, palette, RGBA, 16-bit and interlaced files come back as the RGB they show */
START_TEST(test_png_read_formats)
{
#ifndef HAVE_PNG_H
    printf("SKIP png formats: png.h not available to the test\n");
#else
    if (!png_available()) return;
    const int w = 5, h = 3, n = w * h;
    uint8_t grey[15], ga[30], idx[15], rgba[60], rgb16[90], rgb[45];
    png_color pal[4] = {{10, 20, 30}, {200, 100, 0}, {0, 255, 7}, {1, 2, 3}};
    for (int i = 0; i < n; i++) {
        grey[i] = (uint8_t)rnd();
        ga[2 * i] = grey[i], ga[2 * i + 1] = (uint8_t)rnd();
        idx[i] = (uint8_t)(rnd() % 4);
        for (int c = 0; c < 4; c++) rgba[4 * i + c] = (uint8_t)rnd();
        for (int c = 0; c < 3; c++) {
            rgb[3 * i + c] = (uint8_t)rnd();
            rgb16[6 * i + 2 * c] = rgb[3 * i + c], rgb16[6 * i + 2 * c + 1] = rgb[3 * i + c];   /* v*257: scales back exactly */
        }
    }
    struct draft_image im;
    write_raw_png(path_in("g.png"), w, h, PNG_COLOR_TYPE_GRAY, 8, grey, NULL, 0, false);
    ck_assert_msg(draft_png_read(path_in("g.png"), &im) == STATUS_OK, "%s", tensor_error());
    for (int i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) ck_assert_int_eq(im.rgb[3 * i + c], grey[i]);
    draft_image_free(&im);
    write_raw_png(path_in("ga.png"), w, h, PNG_COLOR_TYPE_GRAY_ALPHA, 8, ga, NULL, 0, true);
    ck_assert_msg(draft_png_read(path_in("ga.png"), &im) == STATUS_OK, "%s", tensor_error());
    for (int i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) ck_assert_int_eq(im.rgb[3 * i + c], grey[i]);
    draft_image_free(&im);
    write_raw_png(path_in("p.png"), w, h, PNG_COLOR_TYPE_PALETTE, 8, idx, pal, 4, false);
    ck_assert_msg(draft_png_read(path_in("p.png"), &im) == STATUS_OK, "%s", tensor_error());
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(im.rgb[3 * i], pal[idx[i]].red);
        ck_assert_int_eq(im.rgb[3 * i + 1], pal[idx[i]].green);
        ck_assert_int_eq(im.rgb[3 * i + 2], pal[idx[i]].blue);
    }
    draft_image_free(&im);
    write_raw_png(path_in("a.png"), w, h, PNG_COLOR_TYPE_RGBA, 8, rgba, NULL, 0, true);
    ck_assert_msg(draft_png_read(path_in("a.png"), &im) == STATUS_OK, "%s", tensor_error());
    for (int i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) ck_assert_int_eq(im.rgb[3 * i + c], rgba[4 * i + c]);
    draft_image_free(&im);
    write_raw_png(path_in("16.png"), w, h, PNG_COLOR_TYPE_RGB, 16, rgb16, NULL, 0, false);
    ck_assert_msg(draft_png_read(path_in("16.png"), &im) == STATUS_OK, "%s", tensor_error());
    ck_assert(im.w == w && im.h == h && memcmp(im.rgb, rgb, sizeof rgb) == 0);
    draft_image_free(&im);
#endif
}
END_TEST

/* every truncation of a valid file, flipped bytes, garbage, an empty and a missing file: an
 * error with the path in the message and an empty image, never a crash */
START_TEST(test_png_corrupt)
{
    if (!png_available()) return;
    struct draft_image a, b;
    random_image(&a, 19, 11);
    const char *good = path_in("good.png"), *bad = path_in("bad.png");
    ck_assert_int_eq(draft_png_write(good, &a), STATUS_OK);
    size_t n;
    uint8_t *bytes = test_slurp(good, &n);
    int errors = 0;
    for (size_t len = 0; len < n; len++) {
        test_spit(bad, bytes, len);
        enum status s = draft_png_read(bad, &b);
        ck_assert_msg(s != STATUS_OK, "truncated to %zu of %zu bytes but read fine", len, n);
        ck_assert(b.rgb == NULL && b.w == 0 && b.h == 0);
        ck_assert_msg(strstr(tensor_error(), bad) != NULL, "message without the path: %s", tensor_error());
        errors++;
    }
    ck_assert_int_eq(errors, (int)n);
    /* flip each byte after the signature in turn: the file has only critical chunks (IHDR,
     * IDAT, IEND), whose lengths, types and CRCs libpng checks, so every flip is an error */
    for (size_t i = 8; i < n; i++) {
        uint8_t *c = malloc(n);
        memcpy(c, bytes, n);
        c[i] ^= 0x5A;
        test_spit(bad, c, n);
        free(c);
        enum status s = draft_png_read(bad, &b);
        ck_assert_msg(s != STATUS_OK, "byte %zu of %zu flipped but the file read fine", i, n);
        ck_assert(b.rgb == NULL);
    }
    test_spit(bad, "this is not a png file at all", 29);
    ck_assert_int_eq(draft_png_read(bad, &b), STATUS_FORMAT);
    test_spit(bad, "", 0);
    ck_assert_int_eq(draft_png_read(bad, &b), STATUS_FORMAT);
    ck_assert_int_eq(draft_png_read(path_in("missing.png"), &b), STATUS_IO);
    ck_assert_msg(strstr(tensor_error(), "missing.png") != NULL, "message: %s", tensor_error());
    free(bytes);
    draft_image_free(&a);
}
END_TEST

/* ---------------------------------------------------------------- grids */

/* tile i's pixel (x, y) of the grid must be source pixel (x/u, y/u); gaps and empty cells
 * are background */
static void check_grid(const struct draft_image *g, const struct draft_image *ims, int n, int cols, int u, int K)
{
    const int G = DRAFT_GRID_GAP;
    int w = ims[0].w, h = ims[0].h, tw = w * u, th = h * u, rows = (n + cols - 1) / cols;
    ck_assert_int_eq(g->w, cols * tw + (cols + 1) * G);
    ck_assert_int_eq(g->h, rows * (th + K) + (rows + 1) * G);
    /* which pixels belong to a tile */
    uint8_t *owned = calloc((size_t)g->w * g->h, 1);
    for (int i = 0; i < n; i++) {
        int x0 = G + (i % cols) * (tw + G), y0 = G + (i / cols) * (th + K + G);
        for (int y = 0; y < th; y++)
            for (int x = 0; x < tw; x++) {
                owned[(size_t)(y0 + y) * g->w + x0 + x] = 1;
                for (int c = 0; c < 3; c++)
                    ck_assert_msg(px(g, x0 + x, y0 + y, c) == px(&ims[i], x / u, y / u, c), "tile %d pixel (%d,%d)", i, x, y);
            }
        for (int y = th; y < th + K; y++)
            for (int x = 0; x < tw; x++) owned[(size_t)(y0 + y) * g->w + x0 + x] = 2;   /* caption box */
    }
    for (int y = 0; y < g->h; y++)
        for (int x = 0; x < g->w; x++)
            if (!owned[(size_t)y * g->w + x])
                for (int c = 0; c < 3; c++) ck_assert_msg(px(g, x, y, c) == DRAFT_GRID_BG, "background at (%d,%d)", x, y);
    free(owned);
}

/* ink (non-background pixels) inside the caption box [x0,x0+w)×[y0+ya, y0+yb) */
static int ink_in(const struct draft_image *g, int x0, int w, int y0, int ya, int yb)
{
    int k = 0;
    for (int y = y0 + ya; y < y0 + yb; y++)
        for (int x = x0; x < x0 + w; x++)
            if (px(g, x, y, 0) != DRAFT_GRID_BG) k++;
    return k;
}

START_TEST(test_grid_geometry)
{
    struct draft_image ims[7], g;
    for (int i = 0; i < 7; i++) random_image(&ims[i], 4, 3);
    /* 5 tiles, 3 columns, ×2: 2 rows, one empty cell */
    ck_assert_int_eq(draft_grid(ims, 5, 3, 2, NULL, &g), STATUS_OK);
    ck_assert_int_eq(g.w, 3 * 8 + 4 * DRAFT_GRID_GAP);
    ck_assert_int_eq(g.h, 2 * 6 + 3 * DRAFT_GRID_GAP);
    check_grid(&g, ims, 5, 3, 2, 0);
    draft_image_free(&g);
    /* cols 0 → ceil(sqrt(7)) = 3; cols > n → n; upscale 1 */
    ck_assert_int_eq(draft_grid(ims, 7, 0, 1, NULL, &g), STATUS_OK);
    check_grid(&g, ims, 7, 3, 1, 0);
    draft_image_free(&g);
    ck_assert_int_eq(draft_grid(ims, 2, 10, 3, NULL, &g), STATUS_OK);
    check_grid(&g, ims, 2, 2, 3, 0);
    draft_image_free(&g);
    /* labels add the caption strip under every row; NULL entries are allowed. The font is
     * pointed at a missing file so that the boxes stay background and check_grid sees all. */
    const char *old = getenv("DRAFT_FONT");
    char *saved = old ? strdup(old) : NULL;
    setenv("DRAFT_FONT", "/nonexistent/font.ttf", 1);
    const char *labels[5] = {"one", NULL, "three", "", "five"};
    ck_assert_int_eq(draft_grid(ims, 5, 2, 1, labels, &g), STATUS_OK);
    ck_assert_int_eq(g.h, 3 * (3 + DRAFT_GRID_CAPTION_H) + 4 * DRAFT_GRID_GAP);
    check_grid(&g, ims, 5, 2, 1, DRAFT_GRID_CAPTION_H);
    for (int i = 0; i < 5; i++)   /* no font: the caption boxes stay empty */
        ck_assert_int_eq(ink_in(&g, DRAFT_GRID_GAP + (i % 2) * (4 + DRAFT_GRID_GAP), 4,
                                DRAFT_GRID_GAP + (i / 2) * (3 + DRAFT_GRID_CAPTION_H + DRAFT_GRID_GAP) + 3, 0,
                                DRAFT_GRID_CAPTION_H),
                         0);
    draft_image_free(&g);
    if (saved) setenv("DRAFT_FONT", saved, 1);
    else unsetenv("DRAFT_FONT");
    free(saved);
    /* upscale 0: tiles at least DRAFT_GRID_AUTO_WIDTH wide: 4 px → ×16 (the maximum); 32 → ×4 */
    ck_assert_int_eq(draft_grid(ims, 1, 1, 0, NULL, &g), STATUS_OK);
    ck_assert_int_eq(g.w, 4 * DRAFT_GRID_MAX_UPSCALE + 2 * DRAFT_GRID_GAP);
    draft_image_free(&g);
    struct draft_image big;
    random_image(&big, 32, 32);
    ck_assert_int_eq(draft_grid(&big, 1, 1, 0, NULL, &g), STATUS_OK);
    ck_assert_int_eq(g.w, 128 + 2 * DRAFT_GRID_GAP);
    check_grid(&g, &big, 1, 1, 4, 0);
    draft_image_free(&g);
    /* errors: sizes differ, no images, upscale out of range */
    ck_assert_int_eq(draft_grid((struct draft_image[]){ims[0], big}, 2, 2, 1, NULL, &g), STATUS_SHAPE);
    ck_assert_msg(strstr(tensor_error(), "image 1 is 32x32") != NULL, "message: %s", tensor_error());
    ck_assert(g.rgb == NULL);
    ck_assert_int_ne(draft_grid(ims, 0, 1, 1, NULL, &g), STATUS_OK);
    ck_assert_int_ne(draft_grid(ims, 2, 1, DRAFT_GRID_MAX_UPSCALE + 1, NULL, &g), STATUS_OK);
    ck_assert_int_ne(draft_grid(ims, 2, 1, -1, NULL, &g), STATUS_OK);
    draft_image_free(&big);
    for (int i = 0; i < 7; i++) draft_image_free(&ims[i]);
}
END_TEST

START_TEST(test_grid_labels)
{
    if (!draft_captions_available()) {
        printf("SKIP caption rendering: no FreeType in this build or font %s does not load (install "
               "libfreetype-dev and fonts-dejavu-core, or set DRAFT_FONT)\n",
               draft_font_path());
        return;
    }
    struct draft_image ims[4], g;
    for (int i = 0; i < 4; i++) random_image(&ims[i], 32, 32);
    const char *labels[4] = {"red apple", NULL,
                             "a very long caption that cannot possibly fit into two lines of a small tile, so it ends in an ellipsis",
                             "grüne Äpfel ✓ and a word-that-is-far-too-long-for-one-line-of-text"};
    ck_assert_int_eq(draft_grid(ims, 4, 4, 4, labels, &g), STATUS_OK);
    check_grid(&g, ims, 4, 4, 4, DRAFT_GRID_CAPTION_H);   /* tiles untouched, gaps clean */
    const int G = DRAFT_GRID_GAP, tw = 128, y0 = G + 128, L = DRAFT_GRID_LINE_H;
    int first[4], second[4];
    for (int i = 0; i < 4; i++) {
        int x0 = G + i * (tw + G);
        first[i] = ink_in(&g, x0, tw, y0, 0, 2 + L);
        second[i] = ink_in(&g, x0, tw, y0, 2 + L, DRAFT_GRID_CAPTION_H);
    }
    ck_assert_msg(first[0] > 20 && second[0] == 0, "short caption: %d / %d ink pixels", first[0], second[0]);
    ck_assert_msg(first[1] == 0 && second[1] == 0, "NULL caption drew %d / %d", first[1], second[1]);
    ck_assert_msg(first[2] > 20 && second[2] > 20, "long caption: %d / %d", first[2], second[2]);
    ck_assert_msg(first[3] > 20 && second[3] > 20, "long word: %d / %d", first[3], second[3]);
    /* a centred short caption leaves both ends of its box empty */
    ck_assert_int_eq(ink_in(&g, G, 10, y0, 0, DRAFT_GRID_CAPTION_H), 0);
    ck_assert_int_eq(ink_in(&g, G + tw - 10, 10, y0, 0, DRAFT_GRID_CAPTION_H), 0);
    draft_image_free(&g);
    for (int i = 0; i < 4; i++) draft_image_free(&ims[i]);
}
END_TEST

/* draft_grid_save: tensor → grid → PNG, read back and compared with the parts */
START_TEST(test_grid_save)
{
    if (!png_available()) return;
    LEAK_CHECK_BEGIN();
    struct tensor *t = test_uniform(DTYPE_F32, TENSOR_SHAPE(3, 3, 6, 5), -1, 1);
    ck_assert_msg(draft_grid_save(path_in("grid.png"), t, 2, 2, NULL) == STATUS_OK, "%s", tensor_error());
    struct draft_image g, ims[3];
    ck_assert_int_eq(draft_png_read(path_in("grid.png"), &g), STATUS_OK);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(draft_image_from_tensor(t, i, &ims[i]), STATUS_OK);
    check_grid(&g, ims, 3, 2, 2, 0);
    for (int i = 0; i < 3; i++) draft_image_free(&ims[i]);
    draft_image_free(&g);
    ck_assert_int_ne(draft_grid_save(path_in("x.png"), NULL, 2, 2, NULL), STATUS_OK);
    tensor_free(t);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- SVG */

START_TEST(test_svg_chart)
{
    enum { N = 50 };
    double x[N], a[N], b[N], c[N];
    for (int i = 0; i < N; i++) {
        x[i] = 2 * i;   /* 0..98 */
        a[i] = 0.13 + 0.7 * i / (N - 1);
        b[i] = 0.5 + 0.1 * sin(i);
        c[i] = i == 20 || i == 21 ? NAN : 0.3;
    }
    c[40] = INFINITY;   /* a single point between two gaps... */
    c[39] = NAN;        /* ...made isolated: c[41..49] still a run */
    const double *ys[3] = {a, b, c};
    const char *names[3] = {"reward", "loss <train>", "aesthetic & co"};
    /* the checker itself: printf's spellings count, words and names do not */
    ck_assert(has_nonfinite("x=\"-nan\"") && has_nonfinite(">inf<") && has_nonfinite("NaN") && has_nonfinite("-Infinity,"));
    ck_assert(!has_nonfinite("information infinite nano") && !has_nonfinite("/tmp/draft_compare_INf8Gu/a") &&
              !has_nonfinite("x2nan _inf"));
    char *s = draft_svg_line_chart(x, ys, names, 2, N, "title a<b", "step", "value");
    ck_assert_msg(s != NULL, "%s", tensor_error());
    ck_assert(strncmp(s, "<svg xmlns=\"http://www.w3.org/2000/svg\"", 39) == 0);
    ck_assert(strstr(s, "</svg>\n") != NULL && strstr(s, "</svg>\n")[7] == 0);
    ck_assert_int_eq(count_str(s, "<polyline"), 2);
    ck_assert(strstr(s, "title a&lt;b") != NULL && strstr(s, "a<b") == NULL);
    ck_assert(strstr(s, "loss &lt;train&gt;") != NULL);
    /* x 0..98 → ticks every 20 up to 100; y 0.13..0.83 → every 0.1 or 0.2 from 0.1/0.0 */
    ck_assert(strstr(s, ">20</text>") && strstr(s, ">100</text>"));
    ck_assert_msg(strstr(s, ">0.4</text>") && strstr(s, ">0.8</text>"), "%s", s);
    ck_assert(!strstr(s, ">0.45</text>"));
    free(s);
    /* series c: runs 0..19, 22..38, 41..49 → 3 polylines; no NaN/inf text anywhere */
    s = draft_svg_line_chart(x, ys, names, 3, N, NULL, NULL, NULL);
    ck_assert(s != NULL);
    ck_assert_int_eq(count_str(s, "<polyline"), 2 + 3);
    ck_assert(!has_nonfinite(s));
    ck_assert(strstr(s, "aesthetic &amp; co") != NULL);
    free(s);
    /* an isolated point is a circle */
    double x3[3] = {0, 1, 2}, y3[3] = {1, NAN, 2};
    const double *ys3[1] = {y3};
    s = draft_svg_line_chart(x3, ys3, NULL, 1, 3, "t", "x", "y");
    ck_assert_int_eq(count_str(s, "<polyline"), 0);
    ck_assert_int_eq(count_str(s, "<circle"), 2);
    ck_assert(strstr(s, "series 1") != NULL);
    free(s);
    /* n = 1 and n = 0 and all-NaN: valid documents */
    s = draft_svg_line_chart(x3, ys3, NULL, 1, 1, "one", NULL, NULL);
    ck_assert(s && count_str(s, "<circle") == 1 && !has_nonfinite(s));
    free(s);
    s = draft_svg_line_chart(NULL, NULL, NULL, 0, 0, "empty", NULL, NULL);
    ck_assert(s && strstr(s, "no data") && count_str(s, "<polyline") == 0);
    free(s);
    double nan3[3] = {NAN, NAN, NAN};
    const double *ysn[1] = {nan3};
    s = draft_svg_line_chart(x3, ysn, NULL, 1, 3, NULL, NULL, NULL);
    ck_assert(s && strstr(s, "no data") && !has_nonfinite(s));
    free(s);
    /* a constant series still gets an axis with distinct ticks */
    double k3[3] = {5, 5, 5};
    const double *ysk[1] = {k3};
    s = draft_svg_line_chart(x3, ysk, NULL, 1, 3, NULL, NULL, NULL);
    ck_assert(s && count_str(s, "<polyline") == 1 && strstr(s, ">5.0</text>"));
    free(s);
    ck_assert(draft_svg_line_chart(NULL, ys, NULL, 1, 3, NULL, NULL, NULL) == NULL);
    ck_assert(draft_svg_line_chart(x, ys, NULL, 1, -1, NULL, NULL, NULL) == NULL);
    /* values at the ends of the double range, or closer together than their own spacing, where
     * the round steps overflow or vanish (a run's metrics.jsonl can hold "seconds": 1.7e308; the
     * tick loops never ended and the page grew until the process was killed): a page with finite
     * coordinates and a few ticks */
    const double xe[4][3] = {{0, 2.1, 1.66891e308}, {-1e308, 0, 1e308}, {DBL_MAX, DBL_MAX, DBL_MAX},
                             {1e17, nextafter(1e17, 2e17), 1e17}};
    const double ye[4][3] = {{0.3, 0.4, 0.5}, {-DBL_MAX, 1, DBL_MAX}, {5e-324, 5e-324, 5e-324}, {1, 2, 3}};
    for (int k = 0; k < 4; k++) {
        const double *yk[1] = {ye[k]};
        s = draft_svg_line_chart(xe[k], yk, NULL, 1, 3, NULL, NULL, NULL);
        ck_assert_msg(s != NULL, "case %d: %s", k, tensor_error());
        ck_assert_msg(!has_nonfinite(s) && count_str(s, "<polyline") == 1, "case %d: %d polylines, non-finite %d: %.600s", k, count_str(s, "<polyline"), has_nonfinite(s), strstr(s, "<g class=\"series") ? strstr(s, "<g class=\"series") : s);
        ck_assert_msg(count_str(s, "<text") <= 2 * 32, "case %d: %d labels", k, count_str(s, "<text"));
        free(s);
    }
    /* series with x values of their own: each one line over its own points; the x axis spans both */
    double xa[3] = {0, 10, 20}, ya[3] = {1, 2, 3}, xb[2] = {5, 300}, yb[2] = {2, 2.5};
    const double *xs2[2] = {xa, xb}, *ys2[2] = {ya, yb};
    const int ns2[2] = {3, 2};
    s = draft_svg_chart_xy(xs2, ys2, ns2, NULL, 2, NULL, NULL, NULL);
    ck_assert_msg(s && count_str(s, "<polyline") == 2 && count_str(s, "<circle") == 0, "%s", s ? s : tensor_error());
    ck_assert(strstr(s, ">300</text>") && !has_nonfinite(s));
    free(s);
    const int nbad[2] = {3, -1};
    ck_assert(draft_svg_chart_xy(xs2, ys2, nbad, NULL, 2, NULL, NULL, NULL) == NULL);
}
END_TEST

/* ---------------------------------------------------------------- several runs compared */

static void write_text(const char *dir, const char *name, const char *text)
{
    char p[300];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    ck_assert(f != NULL);
    fputs(text, f);
    ck_assert(fclose(f) == 0);
}

static char *make_run(const char *root, const char *name, const char *config, const char *metrics)
{
    static char d[16][300];   /* a ring: the last 16 folders stay valid */
    static int k;
    k = (k + 1) % 16;
    snprintf(d[k], sizeof d[k], "%s/%s", root, name);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", d[k]);
    ck_assert(system(cmd) == 0);
    if (config) write_text(d[k], "config.json", config);
    if (metrics) write_text(d[k], "metrics.jsonl", metrics);
    return d[k];
}

START_TEST(test_compare_html)
{
    char root[64] = "/tmp/draft_compare_XXXXXX";
    ck_assert(mkdtemp(root) != NULL);
    /* LV: 2 x 3 x 2 = 12 reward queries a step; the second step's reward diverged (null) */
    const char *a = make_run(root, "a/run",
                             "{\"method\": \"lv\", \"batch\": 2, \"accum\": 3, \"lv-n\": 2, \"reward\": \"red\", "
                             "\"eval-reward\": \"brightness=0.5\"}",
                             "{\"step\": 0, \"eval\": true, \"reward\": 0.1, \"diversity\": 0.4, \"eval_reward\": 0.5, "
                             "\"clip_diversity\": 0.9}\n"
                             "{\"step\": 1, \"reward\": 0.12, \"seconds\": 1.5, \"peak_mib\": 100}\n"
                             "{\"step\": 2, \"reward\": null, \"seconds\": 2.0, \"peak_mib\": 120.5}\n"
                             "{\"step\": 2, \"eval\": true, \"reward\": 0.2, \"diversity\": 0.3, \"eval_reward\": 0.45, "
                             "\"clip_diversity\": 0.7}\n");
    /* K: 4 queries a step, and the same folder name as a's */
    const char *b = make_run(root, "b/run", "{\"method\": \"k\", \"batch\": 4, \"accum\": 1, \"reward\": \"red\"}",
                             "{\"step\": 0, \"eval\": true, \"reward\": 0.1, \"diversity\": 0.4}\n"
                             "{\"step\": 1, \"reward\": 0.1, \"seconds\": 1, \"peak_mib\": 50}\n\n"
                             "{\"step\": 2, \"reward\": 0.1, \"seconds\": 1, \"peak_mib\": 50}\n"
                             "{\"step\": 3, \"reward\": 0.3, \"seconds\": 1, \"peak_mib\": 50}\n"
                             "{\"step\": 3, \"eval\": true, \"reward\": 0.25, \"diversity\": 0.35}\n");
    char out[128];
    snprintf(out, sizeof out, "%s/cmp.html", root);
    const char *runs[2] = {a, b};
    ck_assert_msg(draft_compare_html(out, 2, runs, DRAFT_COMPARE_QUERIES) == STATUS_OK, "%s", tensor_error());
    size_t n;
    char *h = (char *)test_slurp(out, &n);
    char want[600];
    /* a's row: full path (the last components clash), lv, 0.1 -> 0.2, 24 queries, 3.5 s, 120.5 MiB */
    snprintf(want, sizeof want,
             "<tr><th>%s</th><td>lv</td><td><code>red</code></td><td class=\"num\">0.1000</td><td class=\"num\">0.2000</td>"
             "<td class=\"num\">+0.1000</td><td class=\"num\">0.4000</td><td class=\"num\">0.3000</td>"
             "<td class=\"num\">0.9000</td><td class=\"num\">0.7000</td><td><code>"
             "brightness=0.5</code></td><td class=\"num\">0.5000</td><td class=\"num\">0.4500</td><td class=\"num\">2</td>"
             "<td class=\"num\">24</td><td class=\"num\">3.5</td><td class=\"num\">120.5</td></tr>", a);
    ck_assert_msg(strstr(h, want), "%s\nlacks\n%s", h, want);
    snprintf(want, sizeof want, "<td class=\"num\">3</td><td class=\"num\">12</td><td class=\"num\">3.0</td>"
                                "<td class=\"num\">50.0</td></tr>");
    ck_assert_msg(strstr(h, want), "%s", h);
    ck_assert(strstr(h, "reward queries</text>") && !strstr(h, "different rewards"));
    /* the options that differ: method, batch, accum, lv-n (b has none), eval-reward; reward agrees */
    ck_assert_msg(strstr(h, "<tr><th>method</th><td><code>lv</code></td><td><code>k</code></td></tr>") &&
                  strstr(h, "<tr><th>batch</th><td><code>2</code></td><td><code>4</code></td></tr>") &&
                  strstr(h, "<tr><th>lv-n</th><td><code>2</code></td><td><code>(not set)</code></td></tr>") &&
                  !strstr(h, "<tr><th>reward</th>"), "%s", h);
    /* held-out, training reward and gradient norm, diversity, CLIP diversity, eval reward */
    ck_assert_int_eq(count_str(h, "<svg"), 6);
    ck_assert(strstr(h, "gradient norm of the training steps (before clipping)"));
    /* b has no CLIP diversity: n/a in its row */
    ck_assert(strstr(h, "<td class=\"num\">0.3500</td><td class=\"num\">n/a</td><td class=\"num\">n/a</td>"));
    ck_assert(!has_nonfinite(h));
    free(h);
    /* by seconds: the x axis is the summed step times (3.5 s at most: ticks to 4) */
    ck_assert(draft_compare_html(out, 2, runs, DRAFT_COMPARE_SECONDS) == STATUS_OK);
    h = (char *)test_slurp(out, &n);
    ck_assert(strstr(h, "training seconds</text>") && strstr(h, ">4</text>") && !strstr(h, ">24</text>") && !strstr(h, ">5</text>"));
    free(h);
    /* another reward: said at the top; no eval reward anywhere: no such column or chart */
    const char *c = make_run(root, "c", "{\"method\": \"full\", \"batch\": 1, \"reward\": \"jpeg\"}",
                             "{\"step\": 0, \"eval\": true, \"reward\": 1, \"diversity\": 0.4}\n");
    const char *bc[2] = {b, c};
    ck_assert(draft_compare_html(out, 2, bc, DRAFT_COMPARE_STEP) == STATUS_OK);
    h = (char *)test_slurp(out, &n);
    ck_assert(strstr(h, "different rewards") && !strstr(h, "eval reward") && count_str(h, "<svg") == 4);
    ck_assert(strstr(h, "<tr><th>c</th><td>full</td>"));
    ck_assert(strstr(h, "<tr><th>reward</th><td><code>red</code></td><td><code>jpeg</code></td></tr>"));
    free(h);
    /* two runs of one sum reward: a chart per term, titled with its part of the spec */
    const char *sa = make_run(root, "sa", "{\"method\": \"lv\", \"batch\": 1, \"reward\": \"sum:red;0.5*jpeg\"}",
                              "{\"step\": 0, \"eval\": true, \"reward\": 1, \"diversity\": 0.4, \"reward_terms\": [1, 2]}\n"
                              "{\"step\": 1, \"eval\": true, \"reward\": 2, \"diversity\": 0.3, \"reward_terms\": [3, 4]}\n");
    const char *sb = make_run(root, "sb", "{\"method\": \"k\", \"batch\": 1, \"reward\": \"sum:red;0.5*jpeg\"}",
                              "{\"step\": 0, \"eval\": true, \"reward\": 1, \"diversity\": 0.4, \"reward_terms\": [1, 2]}\n");
    const char *sab[2] = {sa, sb};
    ck_assert(draft_compare_html(out, 2, sab, DRAFT_COMPARE_STEP) == STATUS_OK);
    h = (char *)test_slurp(out, &n);
    ck_assert_int_eq(count_str(h, "<svg"), 4 + 2);
    ck_assert_msg(strstr(h, "<h2>term 1: red on the held-out seeds (unweighted)</h2>") &&
                  strstr(h, "<h2>term 2: 0.5*jpeg on the held-out seeds (unweighted)</h2>"), "%s", h);
    free(h);
    const char *sbc[2] = {sb, c};   /* another reward: the terms do not compare, no such chart */
    ck_assert(draft_compare_html(out, 2, sbc, DRAFT_COMPARE_STEP) == STATUS_OK);
    h = (char *)test_slurp(out, &n);
    ck_assert(count_str(h, "<svg") == 4 && !strstr(h, "term 1"));
    free(h);
    /* errors name the file (and line) */
    const char *bad = make_run(root, "bad", NULL, "{\"step\": 0, \"eval\": true, \"reward\": 1}\n{\"step\": 1, oops\n");
    const char *noeval = make_run(root, "noeval", NULL, "{\"step\": 1, \"reward\": 1}\n");
    const char *huge = make_run(root, "huge", NULL, "{\"step\": 0, \"eval\": true, \"reward\": 1}\n{\"step\": 1e300}\n");
    const char *nocfg = make_run(root, "nocfg", NULL, "{\"step\": 0, \"eval\": true, \"reward\": 1}\n");
    static const struct { int which; enum draft_compare_x x; const char *want; } cases[] = {
        {0, DRAFT_COMPARE_STEP, "bad/metrics.jsonl:2: not a metrics line"},
        {1, DRAFT_COMPARE_STEP, "noeval/metrics.jsonl: no evaluation line"},
        {2, DRAFT_COMPARE_QUERIES, "nocfg has no config.json"},
        {3, DRAFT_COMPARE_STEP, "missing/metrics.jsonl"},
        {4, DRAFT_COMPARE_STEP, "huge/metrics.jsonl:2: not a metrics line"},
    };
    char missing[128];
    snprintf(missing, sizeof missing, "%s/missing", root);
    const char *dirs[5] = {bad, noeval, nocfg, missing, huge};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *r2[2] = {a, dirs[cases[i].which]};
        ck_assert(draft_compare_html(out, 2, r2, cases[i].x) != STATUS_OK);
        ck_assert_msg(strstr(tensor_error(), cases[i].want), "'%s' lacks '%s'", tensor_error(), cases[i].want);
    }
    ck_assert(draft_compare_html(out, 1, &nocfg, DRAFT_COMPARE_STEP) == STATUS_OK);   /* by step it needs none */
    const char *aa[2] = {a, a};   /* the same folder twice: nothing differs */
    ck_assert(draft_compare_html(out, 2, aa, DRAFT_COMPARE_STEP) == STATUS_OK);
    h = (char *)test_slurp(out, &n);
    ck_assert(strstr(h, "agree on every option") && !strstr(h, "Settings that differ"));
    free(h);
    ck_assert(draft_compare_html(out, 0, runs, DRAFT_COMPARE_STEP) == STATUS_VALUE);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    ck_assert(system(cmd) == 0);
}
END_TEST

/* the run report's charts of the held-out measures: one per measure the evaluations have, one per
 * term of a sum reward; nothing for before and after alone; errors name the file and line */
START_TEST(test_run_measures_html)
{
    char root[64] = "/tmp/draft_measures_XXXXXX";
    ck_assert(mkdtemp(root) != NULL);
    const char *a = make_run(root, "a", NULL,
                             "{\"step\": 0, \"eval\": true, \"reward\": 0.1, \"diversity\": 0.4, \"eval_reward\": 0.5, "
                             "\"clip_diversity\": 0.9, \"reward_terms\": [0.1, 0.2]}\n"
                             "{\"step\": 1, \"reward\": 0.12, \"reward_terms\": [0.3, 0.4]}\n"
                             "{\"step\": 1, \"eval\": true, \"reward\": 0.2, \"diversity\": 0.3, \"eval_reward\": 0.45, "
                             "\"clip_diversity\": 0.8, \"reward_terms\": [0.15, null]}\n"
                             "{\"step\": 2, \"eval\": true, \"reward\": 0.3, \"diversity\": 0.2, \"eval_reward\": 0.4, "
                             "\"clip_diversity\": 0.7, \"reward_terms\": [0.2, 0.25]}\n");
    char *h = draft_run_measures_html(a, 2, (const char *[]){"red", NULL});
    ck_assert_msg(h != NULL, "%s", tensor_error());
    /* diversity, CLIP diversity, eval reward, the two terms */
    ck_assert_int_eq(count_str(h, "<svg"), 5);
    ck_assert(strstr(h, ">term 1: red<") && strstr(h, ">term 2<") && strstr(h, ">eval reward on the held-out seeds<"));
    /* term 2's null at step 1 leaves two isolated points; every other series is one line */
    ck_assert_int_eq(count_str(h, "<polyline"), 4);
    ck_assert_int_eq(count_str(h, "<circle"), 2);
    free(h);
    h = draft_run_measures_html(a, 1, NULL);   /* the first term only */
    ck_assert(h && count_str(h, "<svg") == 4 && strstr(h, ">term 1<") && !strstr(h, ">term 2"));
    free(h);
    /* no eval reward, no CLIP diversity, no terms: the pixel diversity alone */
    const char *b = make_run(root, "b", NULL,
                             "{\"step\": 0, \"eval\": true, \"reward\": 1, \"diversity\": 0.4}\n"
                             "{\"step\": 5, \"eval\": true, \"reward\": 2, \"diversity\": 0.3}\n"
                             "{\"step\": 9, \"eval\": true, \"reward\": 3, \"diversity\": 0.2}\n");
    h = draft_run_measures_html(b, 2, NULL);
    ck_assert(h && count_str(h, "<svg") == 1 && strstr(h, ">diversity of the held-out samples<"));
    free(h);
    /* three training steps: their gradient norm too (a null one is a gap) */
    const char *g = make_run(root, "g", NULL,
                             "{\"step\": 0, \"eval\": true, \"reward\": 1, \"diversity\": 0.4}\n"
                             "{\"step\": 1, \"reward\": 1, \"grad_norm\": 0.5}\n{\"step\": 2, \"reward\": 1, \"grad_norm\": 2.5}\n"
                             "{\"step\": 3, \"reward\": 1, \"grad_norm\": 7}\n"
                             "{\"step\": 3, \"eval\": true, \"reward\": 2, \"diversity\": 0.3}\n");
    h = draft_run_measures_html(g, 0, NULL);
    ck_assert(h && count_str(h, "<svg") == 1 && strstr(h, ">gradient norm of the training steps (before clipping)<") &&
              count_str(h, "<polyline") == 1);
    free(h);
    /* before and after only: nothing to draw */
    const char *c = make_run(root, "c", NULL,
                             "{\"step\": 0, \"eval\": true, \"reward\": 1, \"diversity\": 0.4, \"reward_terms\": [1]}\n"
                             "{\"step\": 1, \"eval\": true, \"reward\": 2, \"diversity\": 0.3, \"reward_terms\": [2]}\n");
    h = draft_run_measures_html(c, 1, NULL);
    ck_assert(h && !h[0]);
    free(h);
    const char *bad = make_run(root, "bad", NULL, "{\"step\": 0, \"eval\": true, \"reward\": 1}\n{\"step\": 1, oops\n");
    ck_assert(draft_run_measures_html(bad, 0, NULL) == NULL);
    ck_assert_msg(strstr(tensor_error(), "bad/metrics.jsonl:2: not a metrics line"), "%s", tensor_error());
    ck_assert(draft_run_measures_html(NULL, 0, NULL) == NULL && draft_run_measures_html(a, -1, NULL) == NULL);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    ck_assert(system(cmd) == 0);
}
END_TEST

/* images back to a tensor: p/255 * 2 - 1 in CHW order, the inverse of draft_image_from_tensor */
START_TEST(test_to_tensor)
{
    LEAK_CHECK_BEGIN();
    struct tensor *x = test_uniform(DTYPE_F32, TENSOR_SHAPE(3, 3, 5, 7), -1.2, 1.2);
    struct draft_image ims[3] = {{0}};
    for (int b = 0; b < 3; b++) ck_assert(draft_image_from_tensor(x, b, &ims[b]) == STATUS_OK);
    ims[1].rgb[(2 * 7 + 4) * 3 + 1] = 0, ims[1].rgb[0] = 255, ims[2].rgb[5] = 128;   /* known values */
    struct tensor *y = draft_image_to_tensor(ims, 3, DTYPE_F64, DEVICE_CPU);
    ck_assert_msg(y && y->dtype == DTYPE_F64 && y->shape[0] == 3 && y->shape[1] == 3 && y->shape[2] == 5 &&
                  y->shape[3] == 7, "%s", tensor_error());
    ck_assert(tensor_get(y, (int64_t[]){1, 1, 2, 4}) == -1.0);   /* green of (y=2, x=4) */
    ck_assert(tensor_get(y, (int64_t[]){1, 0, 0, 0}) == 1.0);
    ck_assert_msg(fabs(tensor_get(y, (int64_t[]){2, 2, 0, 1}) - (128.0f / 255.0f * 2.0f - 1.0f)) < 1e-7, "%g",
                  tensor_get(y, (int64_t[]){2, 2, 0, 1}));   /* byte 5 = pixel 1, blue */
    for (int b = 0; b < 3; b++) {   /* and back: the same bytes */
        struct draft_image back = {0};
        ck_assert(draft_image_from_tensor(y, b, &back) == STATUS_OK);
        ck_assert(back.w == 7 && back.h == 5 && !memcmp(back.rgb, ims[b].rgb, 5 * 7 * 3));
        draft_image_free(&back);
    }
    tensor_free(y);
    ims[2].w = 5, ims[2].h = 7;   /* another size in the batch: refused, naming both */
    ck_assert(draft_image_to_tensor(ims, 3, DTYPE_F32, DEVICE_CPU) == NULL);
    ck_assert_msg(strstr(tensor_error(), "image 2 is 5x7, image 0 7x5"), "%s", tensor_error());
    ck_assert(draft_image_to_tensor(ims, 0, DTYPE_F32, DEVICE_CPU) == NULL);
    for (int b = 0; b < 3; b++) draft_image_free(&ims[b]);
    tensor_free(x);
    LEAK_CHECK_END();
}
END_TEST

/* the sweep page: a row per combination; for one LoRA, charts against its scale */
START_TEST(test_sweep_html)
{
    char root[64] = "/tmp/draft_sweep_XXXXXX";
    ck_assert(mkdtemp(root) != NULL);
    char out[128];
    snprintf(out, sizeof out, "%s/sweep.html", root);
    const double sc[3][2] = {{0, 1}, {0.5, 1}, {2, 0}};
    struct draft_sweep_row rows[3] = {{sc[0], "scale_0", 0.1, 0.4, 0.9}, {sc[1], "scale_0.5", 0.2, 0.35, NAN},
                                      {sc[2], "scale_2 <&>", 0.3, 0.3, 0.7}};
    ck_assert_msg(draft_sweep_html(out, 1, (const char *[]){"a <b>.safetensors"}, 3, rows, "red", "clip", "sweep.png") ==
                  STATUS_OK, "%s", tensor_error());
    size_t n;
    char *h = (char *)test_slurp(out, &n);
    ck_assert_int_eq(count_str(h, "<svg"), 2);   /* reward, and the two diversities, against the scale */
    ck_assert_msg(strstr(h, "<tr><td class=\"num\">0.5</td><td class=\"num\">0.2000</td><td class=\"num\">0.3500</td>"
                            "<td class=\"num\">n/a</td>") && strstr(h, "a &lt;b&gt;.safetensors") &&
                  strstr(h, "scale_2 &lt;&amp;&gt;") && strstr(h, "src=\"sweep.png\""), "%s", h);
    ck_assert(!has_nonfinite(h));
    free(h);
    /* two LoRAs, no reward, no diversity model: the table alone */
    ck_assert(draft_sweep_html(out, 2, (const char *[]){"a", "b"}, 3, rows, NULL, NULL, NULL) == STATUS_OK);
    h = (char *)test_slurp(out, &n);
    ck_assert(count_str(h, "<svg") == 0 && count_str(h, "<tr>") == 4 && !strstr(h, "<th>reward") && !strstr(h, "<img"));
    ck_assert(strstr(h, "<td class=\"num\">0.5</td><td class=\"num\">1</td><td class=\"num\">0.3500</td><td><a"));
    free(h);
    ck_assert(draft_sweep_html(out, 1, (const char *[]){"a"}, 0, rows, NULL, NULL, NULL) == STATUS_VALUE);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    ck_assert(system(cmd) == 0);
}
END_TEST

/* ---------------------------------------------------------------- diversity */

START_TEST(test_diversity)
{
    LEAK_CHECK_BEGIN();
    /* identical images (an expanded view: stride 0 over the batch) → 0 */
    struct tensor *one = test_uniform(DTYPE_F32, TENSOR_SHAPE(1, 3, 4, 4), -1, 1);
    struct tensor *same = tensor_expand(one, TENSOR_SHAPE(5, 3, 4, 4));
    ck_assert(draft_diversity(same) == 0);
    ck_assert(draft_pixel_std(same) == 0);
    /* two images of 6 values, a = 0, b = (1, -1, 0.5, 0, 0, 0):
     * RMS(a-b) = sqrt(2.25/6), diversity = sqrt(0.375)/2; pixel std = mean |a-b|/2 = 2.5/2/6 */
    double vals[12] = {0, 0, 0, 0, 0, 0, 1, -1, 0.5, 0, 0, 0};
    struct tensor *two = tensor_from_data(DTYPE_F64, TENSOR_SHAPE(2, 3, 1, 2), vals);
    ck_assert_double_eq_tol(draft_diversity(two), sqrt(0.375) / 2, 1e-15);
    ck_assert_double_eq_tol(draft_pixel_std(two), 2.5 / 12, 1e-15);
    /* three constant images 0, +1, -1: pairs 0.5, 0.5, 1 → 2/3; std of {0,1,-1} = sqrt(2/3) */
    struct tensor *three = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(3, 3, 2, 2), DEVICE_CPU);
    for (int i = 0; i < 12; i++) tensor_set_flat(three, 12 + i, 1), tensor_set_flat(three, 24 + i, -1);
    ck_assert_double_eq_tol(draft_diversity(three), 2.0 / 3, 1e-15);
    ck_assert_double_eq_tol(draft_pixel_std(three), sqrt(2.0 / 3), 1e-15);
    /* the same on a non-contiguous copy and in bf16 (values exact there) */
    struct tensor *nc = test_noncontig(three);
    struct tensor *bf = tensor_to_dtype(three, DTYPE_BF16);
    ck_assert_double_eq_tol(draft_diversity(nc), 2.0 / 3, 1e-15);
    ck_assert_double_eq_tol(draft_diversity(bf), 2.0 / 3, 1e-15);
    /* B = 1 and a bad shape: NaN with a message */
    ck_assert(isnan(draft_diversity(one)));
    ck_assert_msg(strstr(tensor_error(), "B >= 2") != NULL, "message: %s", tensor_error());
    ck_assert(isnan(draft_pixel_std(one)));
    /* in embeddings: mean pairwise 1 - cos; (1,0), (0,2), (1,1): 1, 1 - 1/sqrt2, 1 - 1/sqrt2; scale-free */
    struct tensor *emb = tensor_from_data(DTYPE_F64, 2, (int64_t[]){3, 2}, (double[]){1, 0, 0, 2, 1, 1});
    struct tensor *emb32 = tensor_to_dtype(emb, DTYPE_F32);
    const double fd = (1 + 2 * (1 - 1 / sqrt(2.0))) / 3;
    ck_assert_double_eq_tol(draft_feature_diversity(emb), fd, 1e-15);
    ck_assert_double_eq_tol(draft_feature_diversity(emb32), fd, 1e-7);
    struct tensor *emb1 = tensor_narrow(emb, 0, 0, 1);
    ck_assert(isnan(draft_feature_diversity(emb1)) && strstr(tensor_error(), "B >= 2"));
    tensor_free(emb1);
    tensor_free(emb32);
    tensor_free(emb);
    tensor_free(bf);
    tensor_free(nc);
    tensor_free(three);
    tensor_free(two);
    tensor_free(same);
    tensor_free(one);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- HTML */

START_TEST(test_report_html)
{
    const char *keys[3] = {"learning rate", "prompt", "reward"};
    const char *values[3] = {"1e-4", "a <b>cat</b> & \"dog\"", "aesthetic"};
    struct draft_report_grid grids[2] = {{10, "grids/step_10.png"}, {20, "grids/step 20&x.png"}};
    double x[3] = {0, 10, 20}, y[3] = {5.1, 5.4, 5.9};
    const double *ys[1] = {y};
    char *svg = draft_svg_line_chart(x, ys, (const char *[]){"reward"}, 1, 3, "reward", "step", NULL);
    struct draft_report r = {
        .title = "Run <script>alert(1)</script>",
        .n_settings = 3,
        .setting_keys = keys,
        .setting_values = values,
        .chart_svg = svg,
        .before_png = "before.png",
        .after_png = "after.png",
        .n_grids = 2,
        .grids = grids,
        .reward_before = 5.1,
        .reward_after = 5.9,
        .diversity_before = 0.4,
        .diversity_after = NAN,
        .eval_reward = "hpsv2:<a>,b",
        .eval_reward_before = 0.25,
        .eval_reward_after = 0.2,
        .summary = "reward 5.10 -> 5.90 (+0.80) <ok>",
        .n_terms = 2,
        .terms = (struct draft_report_term[]){{"aesthetic:<d>,h", 1, 5.0, 6.0}, {"clip:d,text=x", -0.5, 0.3, 0.2}},
        .n_images = 2,
        .images = (struct draft_report_image[]){{"a <cat>", 5.0, 5.5}, {"a dog", 6.0, NAN}},
        .n_files = 2,
        .files = (struct draft_report_file[]){{"lora.safetensors", "the LoRA"}, {"loras & more", "snapshots <all>"}},
    };
    const char *p = path_in("report.html");
    ck_assert_msg(draft_report_html(p, &r) == STATUS_OK, "%s", tensor_error());
    ck_assert_int_eq(count_files(), 1);
    size_t n;
    char *h = (char *)test_slurp(p, &n);
    ck_assert(strncmp(h, "<!DOCTYPE html>", 15) == 0);
    ck_assert(strstr(h, "Run &lt;script&gt;alert(1)&lt;/script&gt;") != NULL);
    ck_assert(strstr(h, "<script") == NULL);
    ck_assert(strstr(h, "a &lt;b&gt;cat&lt;/b&gt; &amp; &quot;dog&quot;") != NULL);
    ck_assert(strstr(h, "<th>learning rate</th><td>1e-4</td>") != NULL);
    ck_assert(strstr(h, "src=\"before.png\"") && strstr(h, "src=\"after.png\""));
    ck_assert(strstr(h, "src=\"grids/step_10.png\""));
    ck_assert_msg(strstr(h, "src=\"grids/step%2020%26x.png\""), "%s", h);
    ck_assert(strstr(h, "step 20&amp;x.png"));
    ck_assert(strstr(h, "step 10") && strstr(h, "step 20"));
    ck_assert(strstr(h, svg) != NULL);   /* inline, unchanged */
    ck_assert(strstr(h, "&lt;ok&gt;") != NULL);
    ck_assert(strstr(h, "5.1000") && strstr(h, "5.9000") && strstr(h, "+0.8000"));
    ck_assert(strstr(h, "n/a") != NULL);   /* NaN diversity after */
    ck_assert_msg(strstr(h, "<th>eval reward <code>hpsv2:&lt;a&gt;,b</code></th><td class=\"num\">0.2500</td>"), "%s", h);
    ck_assert(strstr(h, "-0.0500"));
    /* a sum's terms: under the reward, before the eval reward, each with its weight and spec */
    const char *t1 = strstr(h, "term 1, 1 &times; <code>aesthetic:&lt;d&gt;,h</code></th><td class=\"num\">5.0000</td>");
    const char *t2 = strstr(h, "term 2, -0.5 &times; <code>clip:d,text=x</code></th><td class=\"num\">0.3000</td>");
    ck_assert_msg(t1 && t2 && t1 < t2 && t2 < strstr(h, "eval reward"), "%s", h);
    ck_assert(strstr(h, "+1.0000") && strstr(h, "-0.1000"));
    ck_assert_msg(strstr(h, "<tr><td class=\"num\">0</td><td>a &lt;cat&gt;</td><td class=\"num\">5.0000</td>"
                            "<td class=\"num\">5.5000</td><td class=\"num\">+0.5000</td></tr>") &&
                  strstr(h, "<tr><td class=\"num\">1</td><td>a dog</td><td class=\"num\">6.0000</td>"
                            "<td class=\"num\">n/a</td>"), "%s", h);
    ck_assert_msg(strstr(h, "<tr><td><a href=\"lora.safetensors\"><code>lora.safetensors</code></a></td><td>the LoRA</td>") &&
                  strstr(h, "<a href=\"loras%20%26%20more\"><code>loras &amp; more</code></a></td><td>snapshots &lt;all&gt;"),
                  "%s", h);
    ck_assert(strstr(h, "</html>\n") != NULL);
    free(h);
    /* everything optional left out still gives a page; a bad folder is an error with the path */
    struct draft_report empty = {.reward_before = NAN, .reward_after = NAN, .diversity_before = NAN, .diversity_after = NAN};
    ck_assert_int_eq(draft_report_html(path_in("empty.html"), &empty), STATUS_OK);
    const char *bad = path_in("nope/r.html");
    ck_assert_int_eq(draft_report_html(bad, &r), STATUS_IO);
    ck_assert(strstr(tensor_error(), bad) != NULL);
    r.n_terms = 1, r.terms = NULL;
    ck_assert_int_eq(draft_report_html(path_in("x.html"), &r), STATUS_VALUE);
    r.n_terms = 0;
    r.n_grids = 3, r.grids = NULL;
    ck_assert_int_eq(draft_report_html(path_in("x.html"), &r), STATUS_VALUE);
    free(svg);
}
END_TEST

/* ---------------------------------------------------------------- demo */

static const char *demo_captions[] = {"grinning face", "red apple", "a cat wearing sunglasses on a beach at sunset",
                                      "rocket", "green heart", "snowman without snow", "hot beverage",
                                      "a very long caption that keeps going well past what two lines can hold"};

/* smooth colourful 32×32 test patterns: a gradient and a disc per image */
static void demo_images(struct tensor *t, int phase)
{
    int64_t B = t->shape[0], S = t->shape[2];
    for (int64_t b = 0; b < B; b++) {
        double cx = (double)(rnd() % S), cy = (double)(rnd() % S), r = 5 + rnd() % 10;
        double col[3] = {(rnd() % 200) / 100.0 - 1, (rnd() % 200) / 100.0 - 1, (rnd() % 200) / 100.0 - 1};
        for (int64_t y = 0; y < S; y++)
            for (int64_t x = 0; x < S; x++)
                for (int c = 0; c < 3; c++) {
                    double v = (double)(x + y) / (2 * S) * (c == phase % 3 ? 1.6 : 0.4) - 0.6;
                    if ((x - cx) * (x - cx) + (y - cy) * (y - cy) < r * r) v = col[c];
                    tensor_set_flat(t, ((b * 3 + c) * S + y) * S + x, v);
                }
    }
}

START_TEST(test_demo_report)
{
    const char *dir = getenv("DRAFT_REPORT_DEMO");
    if (!dir || !*dir) {
        printf("SKIP demo report: set DRAFT_REPORT_DEMO=DIR to write one\n");
        return;
    }
    mkdir(dir, 0777);
    char p[3][512];
    struct tensor *t = tensor_zeros(DTYPE_F32, TENSOR_SHAPE(8, 3, 32, 32), DEVICE_CPU);
    demo_images(t, 0);
    double div_before = draft_diversity(t);
    snprintf(p[0], sizeof p[0], "%s/before.png", dir);
    ck_assert_msg(draft_grid_save(p[0], t, 4, 0, demo_captions) == STATUS_OK, "%s", tensor_error());
    demo_images(t, 1);
    snprintf(p[1], sizeof p[1], "%s/step_50.png", dir);
    ck_assert_int_eq(draft_grid_save(p[1], t, 4, 0, demo_captions), STATUS_OK);
    demo_images(t, 2);
    double div_after = draft_diversity(t);
    snprintf(p[2], sizeof p[2], "%s/after.png", dir);
    ck_assert_int_eq(draft_grid_save(p[2], t, 4, 0, demo_captions), STATUS_OK);
    tensor_free(t);
    enum { N = 100 };
    double x[N], rw[N], ls[N];
    double acc = 5.0;
    for (int i = 0; i < N; i++) {
        x[i] = i;
        acc += 0.02 + ((int)(rnd() % 1000) - 500) / 5000.0;
        rw[i] = acc;
        ls[i] = i == 30 ? NAN : 1.0 / (1 + 0.05 * i) + (rnd() % 100) / 1000.0;
    }
    const double *ys[2] = {rw, ls};
    char *svg = draft_svg_line_chart(x, ys, (const char *[]){"reward (aesthetic)", "loss"}, 2, N,
                                     "Training <demo>", "step", "value");
    ck_assert(svg != NULL);
    snprintf(p[0], sizeof p[0], "%s/chart.svg", dir);
    ck_assert_int_eq(draft_file_write_atomic(p[0], svg, strlen(svg)), STATUS_OK);
    const char *keys[] = {"model", "reward", "steps", "lr", "LoRA rank"};
    const char *vals[] = {"demo (random patterns)", "aesthetic", "100", "1e-4", "4"};
    struct draft_report_grid grids[1] = {{50, "step_50.png"}};
    struct draft_report r = {"DRaFT demo report", 5, keys, vals, svg, "before.png", "after.png", 1, grids,
                             rw[0], rw[N - 1], div_before, div_after, "aesthetic", 5.25, 6.5,
                             "demo: random chart and pattern grids", 0, NULL, NULL, NAN, NAN, 0, NULL, NULL, NAN, -1,
                             NULL, 0, NULL, 0, NULL};
    snprintf(p[0], sizeof p[0], "%s/report.html", dir);
    ck_assert_int_eq(draft_report_html(p[0], &r), STATUS_OK);
    printf("demo report: %s (grids %s/before.png, after.png, step_50.png; chart.svg)\n", p[0], dir);
    free(svg);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("image_io");
    TCase *tc = tcase_create("image");
    tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
    tcase_add_test(tc, test_from_tensor_values);
    tcase_add_test(tc, test_from_tensor_noncontig);
    tcase_add_test(tc, test_to_tensor);
    tcase_add_test(tc, test_png_roundtrip);
    tcase_add_test(tc, test_png_read_formats);
    tcase_add_test(tc, test_png_corrupt);
    tcase_add_test(tc, test_grid_geometry);
    tcase_add_test(tc, test_grid_labels);
    tcase_add_test(tc, test_grid_save);
    suite_add_tcase(s, tc);
    TCase *tr = tcase_create("report");
    tcase_add_checked_fixture(tr, tmp_setup, tmp_teardown);
    tcase_add_test(tr, test_svg_chart);
    tcase_add_test(tr, test_diversity);
    tcase_add_test(tr, test_report_html);
    tcase_add_test(tr, test_compare_html);
    tcase_add_test(tr, test_run_measures_html);
    tcase_add_test(tr, test_sweep_html);
    tcase_add_test(tr, test_demo_report);
    suite_add_tcase(s, tr);
    return test_run_suite(s);
}
