/* image.c — tensor → RGB, PNG via libpng, captioned grids via FreeType (see image.h). */
#include "draft/image.h"
#include "nn/file.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef DRAFT_HAVE_PNG
#include <png.h>
#endif
#ifdef DRAFT_HAVE_FREETYPE
#include <ft2build.h>
#include FT_FREETYPE_H
#endif

/* larger images are refused rather than risking size overflow (64 Mpixel) */
#define MAX_PIXELS ((int64_t)1 << 26)

enum status draft_image_alloc(struct draft_image *im, int w, int h, uint8_t fill)
{
    im->w = im->h = 0;
    im->rgb = NULL;
    if (w < 1 || h < 1 || (int64_t)w * h > MAX_PIXELS)
        return tensor_fail(STATUS_VALUE, "draft_image_alloc: size %dx%d out of range (1..%lld pixels)", w, h,
                           (long long)MAX_PIXELS);
    size_t bytes = (size_t)w * (size_t)h * 3;
    im->rgb = malloc(bytes);
    if (!im->rgb) return tensor_fail(STATUS_OOM, "draft_image_alloc: out of memory for %dx%d", w, h);
    memset(im->rgb, fill, bytes);
    im->w = w;
    im->h = h;
    return STATUS_OK;
}

void draft_image_free(struct draft_image *im)
{
    if (!im) return;
    free(im->rgb);
    im->rgb = NULL;
    im->w = im->h = 0;
}

/* ---------------------------------------------------------------- tensor → image */

static uint8_t to_u8(float x)
{
    /* float32 like diffusers: (x/2 + 0.5).clamp(0, 1) * 255, then numpy's round: ties to even
     * (rint in the default rounding mode), so our PNG bytes equal diffusers' */
    float v = x / 2.0f + 0.5f;
    if (!(v > 0.0f)) v = 0.0f;   /* also NaN */
    if (v > 1.0f) v = 1.0f;
    float p = v * 255.0f;
    return (uint8_t)rint((double)p);
}

/* image b of `images` checked ([B,3,H,W], float, b in range, a size we take) and, inside the
 * caller's tensor scope, as a contiguous float32 [3,H,W] tensor on the CPU in *c (the views do not
 * modify `images`) */
static enum status image_cpu_f32(const char *fn, const struct tensor *images, int b, struct tensor **c)
{
    *c = NULL;
    if (!images) return tensor_status() ? tensor_status() : tensor_fail(STATUS_VALUE, "%s: NULL images", fn);
    char sb[64];
    if (images->ndim != 4 || images->shape[1] != 3 || !dtype_is_float(images->dtype))
        return tensor_fail(STATUS_SHAPE, "%s: expected a float [B,3,H,W] tensor, got %s %s", fn, dtype_name(images->dtype),
                           tensor_shape_str(images, sb, sizeof sb));
    if (b < 0 || b >= images->shape[0])
        return tensor_fail(STATUS_VALUE, "%s: image %d out of range (batch of %lld)", fn, b, (long long)images->shape[0]);
    int64_t H = images->shape[2], W = images->shape[3];
    if (H < 1 || W < 1 || H * W > MAX_PIXELS)
        return tensor_fail(STATUS_SHAPE, "%s: image size %lldx%lld out of range", fn, (long long)W, (long long)H);
    /* float32, as diffusers converts too */
    struct tensor *one = tensor_select((struct tensor *)images, 0, b);
    struct tensor *cpu = one ? tensor_to_device(one, DEVICE_CPU) : NULL;
    struct tensor *f = cpu ? tensor_to_dtype(cpu, DTYPE_F32) : NULL;
    *c = f ? tensor_contiguous(f) : NULL;
    return *c ? STATUS_OK : tensor_status();
}

enum status draft_image_from_tensor(const struct tensor *images, int b, struct draft_image *out)
{
    out->w = out->h = 0;
    out->rgb = NULL;
    tensor_scope_begin();
    struct tensor *c = NULL;
    enum status s = image_cpu_f32("draft_image_from_tensor", images, b, &c);
    const int64_t H = c ? c->shape[1] : 0, W = c ? c->shape[2] : 0;
    if (!s) s = draft_image_alloc(out, (int)W, (int)H, 0);
    if (!s) {
        const float *src = tensor_data_ptr(c);
        size_t plane = (size_t)H * (size_t)W;
        for (size_t i = 0; i < plane; i++)
            for (int ch = 0; ch < 3; ch++) out->rgb[i * 3 + ch] = to_u8(src[ch * plane + i]);
    }
    tensor_scope_end();
    return s;
}

int64_t draft_image_nonfinite(const struct tensor *images, int b)
{
    tensor_scope_begin();
    struct tensor *c = NULL;
    int64_t n = image_cpu_f32("draft_image_nonfinite", images, b, &c) ? -1 : 0;
    if (c) {
        const float *src = tensor_data_ptr(c);
        for (int64_t i = 0, m = tensor_numel(c); i < m; i++) n += !isfinite(src[i]);
    }
    tensor_scope_end();
    return n;
}

struct tensor *draft_image_to_tensor(const struct draft_image *ims, int n, enum dtype dt, enum device dev)
{
    if (!ims || n < 1) {
        tensor_fail(STATUS_VALUE, "draft_image_to_tensor: no images (n = %d)", n);
        return NULL;
    }
    const int W = ims[0].w, H = ims[0].h;
    for (int i = 0; i < n; i++)
        if (!ims[i].rgb || ims[i].w != W || ims[i].h != H || W < 1 || H < 1) {
            tensor_fail(STATUS_SHAPE, "draft_image_to_tensor: image %d is %dx%d, image 0 %dx%d (one size in a batch)", i,
                        ims[i].w, ims[i].h, W, H);
            return NULL;
        }
    tensor_scope_begin();
    struct tensor *t = tensor_empty(DTYPE_F32, 4, (int64_t[]){n, 3, H, W}, DEVICE_CPU);
    if (t) {
        float *dst = tensor_data_ptr(t);
        const size_t plane = (size_t)H * (size_t)W;
        for (int i = 0; i < n; i++)   /* HWC bytes -> CHW planes */
            for (size_t k = 0; k < plane; k++)
                for (int ch = 0; ch < 3; ch++)
                    dst[((size_t)i * 3 + (size_t)ch) * plane + k] = ims[i].rgb[k * 3 + ch] / 255.0f * 2.0f - 1.0f;
    }
    struct tensor *d = t ? tensor_to_device(t, dev) : NULL;
    d = d ? tensor_to_dtype(d, dt) : NULL;
    return tensor_scope_return(d);
}

/* ---------------------------------------------------------------- atomic files */

enum status draft_file_write_atomic(const char *path, const void *data, size_t n)
{
    return nn_file_write_atomic(path, 1, &data, &n);
}

/* ---------------------------------------------------------------- PNG */

#ifdef DRAFT_HAVE_PNG

/* libpng reports errors through this: keep the message, jump back */
struct png_ctx {
    char msg[256];
    /* encoding target */
    uint8_t *buf;
    size_t len, cap;
    bool oom;
};

static void png_err(png_structp png, png_const_charp msg)
{
    struct png_ctx *c = png_get_error_ptr(png);
    if (c) snprintf(c->msg, sizeof c->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_warn(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;   /* warnings (e.g. a known-bad sRGB profile) do not stop reading */
}

static void png_mem_write(png_structp png, png_bytep data, png_size_t n)
{
    struct png_ctx *c = png_get_error_ptr(png);
    if (c->len + n > c->cap) {
        size_t cap = c->cap ? c->cap : 1 << 16;
        while (cap < c->len + n) cap *= 2;
        uint8_t *nb = realloc(c->buf, cap);
        if (!nb) {
            c->oom = true;
            png_error(png, "out of memory");
        }
        c->buf = nb;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, data, n);
    c->len += n;
}

static void png_mem_flush(png_structp png) { (void)png; }

enum status draft_png_write(const char *path, const struct draft_image *im)
{
    if (!im || !im->rgb || im->w < 1 || im->h < 1)
        return tensor_fail(STATUS_VALUE, "draft_png_write %s: empty image", path);
    struct png_ctx ctx = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &ctx, png_err, png_warn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    png_bytep *rows = malloc(sizeof *rows * (size_t)im->h);
    volatile bool ok = false;   /* set after setjmp */
    if (png && info && rows) {
        for (int y = 0; y < im->h; y++) rows[y] = im->rgb + (size_t)y * (size_t)im->w * 3;
        if (!setjmp(png_jmpbuf(png))) {
            png_set_write_fn(png, &ctx, png_mem_write, png_mem_flush);
            png_set_IHDR(png, info, (png_uint_32)im->w, (png_uint_32)im->h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                         PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
            png_set_rows(png, info, rows);
            png_write_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
            ok = true;
        }
    }
    bool no_mem = !png || !info || !rows || ctx.oom;
    if (png) png_destroy_write_struct(&png, info ? &info : NULL);
    free(rows);
    enum status s;
    if (ok)
        s = draft_file_write_atomic(path, ctx.buf, ctx.len);
    else if (no_mem)
        s = tensor_fail(STATUS_OOM, "draft_png_write %s: out of memory (%dx%d)", path, im->w, im->h);
    else
        s = tensor_fail(STATUS_INTERNAL, "draft_png_write %s: libpng: %s", path, ctx.msg);
    free(ctx.buf);
    return s;
}

enum status draft_png_read(const char *path, struct draft_image *out)
{
    out->w = out->h = 0;
    out->rgb = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return tensor_fail(STATUS_IO, "cannot open %s: %s", path, strerror(errno));
    uint8_t sig[8];
    size_t got = fread(sig, 1, 8, f);
    if (got != 8 || png_sig_cmp(sig, 0, 8)) {
        fclose(f);
        return tensor_fail(STATUS_FORMAT, "%s: not a PNG file (bad signature)", path);
    }
    struct png_ctx ctx = {0};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, png_err, png_warn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    /* modified after setjmp, read after a longjmp: volatile */
    uint8_t *volatile pix = NULL;
    png_bytep *volatile rows = NULL;
    volatile int W = 0, H = 0;
    enum status s = STATUS_OOM;
    if (!png || !info) {
        tensor_fail(s, "reading %s: out of memory", path);
    } else if (setjmp(png_jmpbuf(png))) {
        s = tensor_fail(STATUS_FORMAT, "%s: corrupt or truncated PNG (libpng: %s)", path, ctx.msg);
    } else {
        png_init_io(png, f);
        png_set_sig_bytes(png, 8);
        png_read_info(png, info);
        png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
        int bits = png_get_bit_depth(png, info), type = png_get_color_type(png, info);
        if (w < 1 || h < 1 || (int64_t)w * h > MAX_PIXELS) {
            s = tensor_fail(STATUS_FORMAT, "%s: image size %ux%u out of range (at most %lld pixels)", path,
                            (unsigned)w, (unsigned)h, (long long)MAX_PIXELS);
        } else {
            if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
            if (type == PNG_COLOR_TYPE_GRAY && bits < 8) png_set_expand_gray_1_2_4_to_8(png);
            if (bits == 16) png_set_scale_16(png);
            if (type == PNG_COLOR_TYPE_GRAY || type == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
            png_set_strip_alpha(png);   /* also drops tRNS: no expansion to alpha was asked for */
            png_set_interlace_handling(png);
            png_read_update_info(png, info);
            if (png_get_rowbytes(png, info) != (size_t)w * 3) {
                s = tensor_fail(STATUS_FORMAT, "%s: unsupported PNG layout (colour type %d, %d bits)", path, type, bits);
            } else {
                W = (int)w;
                H = (int)h;
                pix = malloc((size_t)w * h * 3);
                rows = malloc(sizeof(png_bytep) * h);
                if (!pix || !rows) {
                    tensor_fail(s, "reading %s: out of memory for %ux%u", path, (unsigned)w, (unsigned)h);
                } else {
                    for (png_uint_32 y = 0; y < h; y++) rows[y] = pix + (size_t)y * w * 3;
                    png_read_image(png, rows);
                    png_read_end(png, NULL);
                    s = STATUS_OK;
                }
            }
        }
    }
    if (png) png_destroy_read_struct(&png, info ? &info : NULL, NULL);
    fclose(f);
    free(rows);
    if (s) {
        free(pix);
        return s;
    }
    out->w = W;
    out->h = H;
    out->rgb = pix;
    return STATUS_OK;
}

#else /* !DRAFT_HAVE_PNG */

enum status draft_png_write(const char *path, const struct draft_image *im)
{
    (void)im;
    return tensor_fail(STATUS_DEVICE, "cannot write %s: built without libpng (install libpng-dev and reconfigure)", path);
}

enum status draft_png_read(const char *path, struct draft_image *out)
{
    out->w = out->h = 0;
    out->rgb = NULL;
    return tensor_fail(STATUS_DEVICE, "cannot read %s: built without libpng (install libpng-dev and reconfigure)", path);
}

#endif

/* ---------------------------------------------------------------- captions */

#define DEFAULT_FONT "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"

const char *draft_font_path(void)
{
    const char *e = getenv("DRAFT_FONT");
    return e && *e ? e : DEFAULT_FONT;
}

static void warn_once(const char *fmt, const char *arg)
{
    static atomic_int warned;
    if (atomic_exchange(&warned, 1)) return;
    fprintf(stderr, "draft: warning: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
}

#ifdef DRAFT_HAVE_FREETYPE

/* UTF-8 → code points (invalid bytes become U+FFFD; control characters and newlines become
 * spaces). Returns the count; `cp` has room for strlen(s). */
static int utf8_decode(const char *s, uint32_t *cp)
{
    const uint8_t *p = (const uint8_t *)s;
    int n = 0;
    while (*p) {
        uint32_t c = *p, min = 0;
        int extra = 0;
        if (c < 0x80) extra = 0;
        else if ((c & 0xE0) == 0xC0) extra = 1, c &= 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0) extra = 2, c &= 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0) extra = 3, c &= 0x07, min = 0x10000;
        else extra = -1;
        p++;
        bool ok = extra >= 0;
        for (int k = 0; ok && k < extra; k++, p++) {
            if ((*p & 0xC0) != 0x80) ok = false;
            else c = c << 6 | (*p & 0x3F);
        }
        if (!ok || c < min || c > 0x10FFFF || (c >= 0xD800 && c < 0xE000)) c = 0xFFFD;
        if (c < 0x20 || c == 0x7F) c = ' ';
        cp[n++] = c;
    }
    return n;
}

struct font {
    FT_Library lib;
    FT_Face face;
    int asc;   /* ascender in pixels */
};

static bool font_open(struct font *f)
{
    memset(f, 0, sizeof *f);
    const char *path = draft_font_path();
    if (FT_Init_FreeType(&f->lib)) {
        f->lib = NULL;
        warn_once("FreeType failed to initialise; grid captions are skipped%s", "");
        return false;
    }
    if (FT_New_Face(f->lib, path, 0, &f->face) || FT_Set_Pixel_Sizes(f->face, 0, DRAFT_GRID_FONT_PX)) {
        if (f->face) FT_Done_Face(f->face);
        FT_Done_FreeType(f->lib);
        memset(f, 0, sizeof *f);
        warn_once("cannot load the caption font %s; grid captions are skipped (install the Debian package "
                  "fonts-dejavu-core, or set DRAFT_FONT to a .ttf file)",
                  path);
        return false;
    }
    f->asc = (int)((f->face->size->metrics.ascender + 63) >> 6);
    if (f->asc > DRAFT_GRID_LINE_H) f->asc = DRAFT_GRID_LINE_H;
    return true;
}

static void font_close(struct font *f)
{
    if (f->face) FT_Done_Face(f->face);
    if (f->lib) FT_Done_FreeType(f->lib);
}

/* advance of code point c in 26.6 pixels (0 if the glyph cannot be loaded) */
static long advance(struct font *f, uint32_t c)
{
    return FT_Load_Char(f->face, c, FT_LOAD_DEFAULT) ? 0 : f->face->glyph->advance.x;
}

static long span_width(const long *adv, int a, int b)
{
    long w = 0;
    for (int i = a; i < b; i++) w += adv[i];
    return w;
}

/* draws cps[a..b) (plus "…" if `ellipsis`) with its left end at x, baseline at y, clipped to
 * the box [bx0,bx1)×[by0,by1) */
static void draw_run(struct font *f, struct draft_image *im, const uint32_t *cps, int a, int b, bool ellipsis, long x26,
                     int y, int bx0, int bx1, int by0, int by1)
{
    static const uint8_t ink[3] = {20, 20, 20};
    for (int i = a; i < b + (ellipsis ? 1 : 0); i++) {
        uint32_t c = i < b ? cps[i] : 0x2026;
        if (FT_Load_Char(f->face, c, FT_LOAD_RENDER)) continue;
        FT_GlyphSlot g = f->face->glyph;
        const FT_Bitmap *bm = &g->bitmap;
        if (bm->pixel_mode == FT_PIXEL_MODE_GRAY && bm->pitch > 0) {
            int gx = (int)(x26 >> 6) + g->bitmap_left, gy = y - g->bitmap_top;
            for (unsigned r = 0; r < bm->rows; r++) {
                int py = gy + (int)r;
                if (py < by0 || py >= by1) continue;
                for (unsigned col = 0; col < bm->width; col++) {
                    int px = gx + (int)col;
                    if (px < bx0 || px >= bx1) continue;
                    unsigned a8 = bm->buffer[(size_t)r * (size_t)bm->pitch + col];
                    if (!a8) continue;
                    uint8_t *d = im->rgb + ((size_t)py * (size_t)im->w + (size_t)px) * 3;
                    for (int k = 0; k < 3; k++) d[k] = (uint8_t)((d[k] * (255 - a8) + ink[k] * a8 + 127) / 255);
                }
            }
        }
        x26 += g->advance.x;
    }
}

/* the caption of one tile in the box [x0, x0+w) × [y0, y0+DRAFT_GRID_CAPTION_H) */
static enum status draw_caption(struct font *f, struct draft_image *im, const char *text, int x0, int w, int y0)
{
    size_t len = strlen(text);
    if (!len) return STATUS_OK;
    uint32_t *cps = malloc(sizeof *cps * len);
    long *adv = malloc(sizeof *adv * len);
    if (!cps || !adv) {
        free(cps);
        free(adv);
        return tensor_fail(STATUS_OOM, "draft_grid: out of memory for a caption of %zu bytes", len);
    }
    int n = utf8_decode(text, cps);
    for (int i = 0; i < n; i++) adv[i] = advance(f, cps[i]);
    const int pad = 2;
    long maxw = (long)(w - 2 * pad) * 64;
    int line_a[2], line_b[2], n_lines = 0, pos = 0;
    bool ellipsis = false;
    for (int li = 0; li < 2; li++) {
        while (pos < n && cps[pos] == ' ') pos++;
        if (pos >= n) break;
        int end = pos, brk = -1;
        long lw = 0;
        while (end < n && lw + adv[end] <= maxw) {
            lw += adv[end++];
            if (end < n && cps[end] == ' ') brk = end;
        }
        int b;
        if (end == n) b = n;
        else if (brk > pos) b = brk;   /* break at the last space that fits */
        else if (end == pos) b = pos + 1;   /* one glyph wider than the tile: clipped */
        else b = end;   /* one word longer than the line: break inside it */
        line_a[n_lines] = pos;
        line_b[n_lines++] = b;
        pos = b;
    }
    while (pos < n && cps[pos] == ' ') pos++;
    if (pos < n && n_lines == 2) {   /* text left over: end the second line in "…" */
        ellipsis = true;
        long el = advance(f, 0x2026);
        int a = line_a[1], b = line_b[1];
        while (b > a && span_width(adv, a, b) + el > maxw) b--;
        while (b > a && cps[b - 1] == ' ') b--;
        line_b[1] = b;
    }
    for (int li = 0; li < n_lines; li++) {
        bool el = ellipsis && li == 1;
        long lw = span_width(adv, line_a[li], line_b[li]) + (el ? advance(f, 0x2026) : 0);
        long x26 = (long)x0 * 64 + ((long)w * 64 - lw) / 2;
        if (x26 < (long)(x0 + pad) * 64) x26 = (long)(x0 + pad) * 64;
        x26 = (x26 + 32) & ~63L;   /* whole pixels: hinted glyphs stay crisp */
        int base = y0 + 2 + li * DRAFT_GRID_LINE_H + f->asc;
        draw_run(f, im, cps, line_a[li], line_b[li], el, x26, base, x0, x0 + w, y0, y0 + DRAFT_GRID_CAPTION_H);
    }
    free(cps);
    free(adv);
    return STATUS_OK;
}

#endif /* DRAFT_HAVE_FREETYPE */

bool draft_captions_available(void)
{
#ifdef DRAFT_HAVE_FREETYPE
    FT_Library lib;
    if (FT_Init_FreeType(&lib)) return false;
    FT_Face face;
    bool ok = !FT_New_Face(lib, draft_font_path(), 0, &face);
    if (ok) FT_Done_Face(face);
    FT_Done_FreeType(lib);
    return ok;
#else
    return false;
#endif
}

/* ---------------------------------------------------------------- grids */

enum status draft_grid(const struct draft_image *ims, int n, int cols, int upscale, const char *const *labels,
                       struct draft_image *out)
{
    out->w = out->h = 0;
    out->rgb = NULL;
    if (n < 1 || !ims) return tensor_fail(STATUS_VALUE, "draft_grid: no images (n=%d)", n);
    int w = ims[0].w, h = ims[0].h;
    for (int i = 0; i < n; i++) {
        if (!ims[i].rgb || ims[i].w < 1 || ims[i].h < 1)
            return tensor_fail(STATUS_VALUE, "draft_grid: image %d is empty", i);
        if (ims[i].w != w || ims[i].h != h)
            return tensor_fail(STATUS_SHAPE, "draft_grid: image %d is %dx%d, image 0 is %dx%d (all must be the same size)",
                               i, ims[i].w, ims[i].h, w, h);
    }
    if (upscale < 0 || upscale > DRAFT_GRID_MAX_UPSCALE)
        return tensor_fail(STATUS_VALUE, "draft_grid: upscale %d out of range (0 = automatic, 1..%d)", upscale,
                           DRAFT_GRID_MAX_UPSCALE);
    if (upscale == 0) {
        upscale = (DRAFT_GRID_AUTO_WIDTH + w - 1) / w;
        if (upscale < 1) upscale = 1;
        if (upscale > DRAFT_GRID_MAX_UPSCALE) upscale = DRAFT_GRID_MAX_UPSCALE;
    }
    if (cols <= 0) {
        cols = 1;
        while (cols * cols < n) cols++;
    }
    if (cols > n) cols = n;
    int rows = (n + cols - 1) / cols, G = DRAFT_GRID_GAP, K = labels ? DRAFT_GRID_CAPTION_H : 0;
    int64_t tw = (int64_t)w * upscale, th = (int64_t)h * upscale;
    int64_t W = cols * tw + (int64_t)(cols + 1) * G, H = rows * (th + K) + (int64_t)(rows + 1) * G;
    if (W * H > MAX_PIXELS)
        return tensor_fail(STATUS_VALUE, "draft_grid: a %lldx%lld grid is too large (at most %lld pixels); lower upscale",
                           (long long)W, (long long)H, (long long)MAX_PIXELS);
    enum status s = draft_image_alloc(out, (int)W, (int)H, DRAFT_GRID_BG);
    if (s) return s;
    for (int i = 0; i < n; i++) {
        int64_t x0 = G + (i % cols) * (tw + G), y0 = G + (i / cols) * (th + K + G);
        for (int64_t y = 0; y < th; y++) {
            uint8_t *d = out->rgb + ((size_t)(y0 + y) * (size_t)W + (size_t)x0) * 3;
            const uint8_t *src = ims[i].rgb + (size_t)(y / upscale) * (size_t)w * 3;
            for (int64_t x = 0; x < tw; x++) memcpy(d + x * 3, src + (x / upscale) * 3, 3);
        }
    }
    if (!labels) return STATUS_OK;
#ifdef DRAFT_HAVE_FREETYPE
    struct font f;
    if (!font_open(&f)) return STATUS_OK;
    for (int i = 0; i < n && !s; i++) {
        if (!labels[i]) continue;
        int x0 = G + (i % cols) * (int)(tw + G), y0 = G + (i / cols) * (int)(th + K + G) + (int)th;
        s = draw_caption(&f, out, labels[i], x0, (int)tw, y0);
    }
    font_close(&f);
    if (s) draft_image_free(out);
    return s;
#else
    warn_once("this build has no FreeType: grid captions are skipped (install libfreetype-dev and "
              "fonts-dejavu-core, then reconfigure)%s",
              "");
    return STATUS_OK;
#endif
}

enum status draft_grid_save(const char *path, const struct tensor *images, int cols, int upscale,
                            const char *const *labels)
{
    if (!images) return tensor_status() ? tensor_status() : tensor_fail(STATUS_VALUE, "draft_grid_save %s: NULL images", path);
    if (images->ndim != 4 || images->shape[0] < 1 || images->shape[0] > 4096) {
        char sb[64];
        return tensor_fail(STATUS_SHAPE, "draft_grid_save %s: expected [B,3,H,W] with 1 <= B <= 4096, got %s", path,
                           tensor_shape_str(images, sb, sizeof sb));
    }
    int n = (int)images->shape[0];
    struct draft_image *ims = calloc((size_t)n, sizeof *ims);
    if (!ims) return tensor_fail(STATUS_OOM, "draft_grid_save %s: out of memory", path);
    enum status s = STATUS_OK;
    for (int i = 0; i < n && !s; i++) s = draft_image_from_tensor(images, i, &ims[i]);
    struct draft_image grid = {0};
    if (!s) s = draft_grid(ims, n, cols, upscale, labels, &grid);
    if (!s) s = draft_png_write(path, &grid);
    draft_image_free(&grid);
    for (int i = 0; i < n; i++) draft_image_free(&ims[i]);
    free(ims);
    return s;
}
