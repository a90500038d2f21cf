/* draft-emoji-data — builds the captioned emoji image set (data/emoji-<size>.bin by default).
 *
 * Sources (Debian packages; nothing of them is committed, the file is rebuilt on demand):
 *   fonts-noto-color-emoji  NotoColorEmoji.ttf — font under the SIL Open Font License 1.1, the
 *                           noto-emoji project's other files under Apache-2.0
 *                           (/usr/share/doc/fonts-noto-color-emoji/copyright)
 *   unicode-data            emoji/emoji-test.txt — Unicode License Agreement, Data Files and
 *                           Software (/usr/share/doc/unicode-data/copyright)
 * Images made from the font are a rendering of OFL'd glyphs; the OFL allows using and
 * redistributing such output. The file format is described in draft/dataset.h.
 *
 * Usage: draft-emoji-data [--size 32|64] [--out PATH] [--emoji-test PATH] [--font PATH]
 *                         [--preview PNG]   (an 8×8 grid of the first 64 items, captions listed)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#ifdef DRAFT_HAVE_PNG
#include <png.h>
#endif

#include "draft/dataset.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: draft-emoji-data [--size N] [--out PATH] [--emoji-test PATH] [--font PATH] [--preview PNG]\n"
               "  --size N          image side, 8..256 (default 32)\n"
               "  --out PATH        dataset file (default data/emoji-<size>.bin)\n"
               "  --emoji-test PATH default /usr/share/unicode/emoji/emoji-test.txt (package unicode-data)\n"
               "  --font PATH       default /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf\n"
               "                    (package fonts-noto-color-emoji)\n"
               "  --preview PNG     also write an 8x8 grid of the first 64 items and list their captions\n");
}

/* mkdir of the folder part of `path` (one level: data/) */
static int make_parent(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path) return 0;
    char dir[4096];
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "draft-emoji-data: cannot create folder %s: %s\n", dir, strerror(errno));
        return -1;
    }
    return 0;
}

static int write_preview(const struct draft_dataset *d, const char *path)
{
#ifdef DRAFT_HAVE_PNG
    int cols = 8, n = d->n < 64 ? d->n : 64, rows = (n + cols - 1) / cols, S = d->size, pad = 2;
    int W = cols * (S + pad) + pad, H = rows * (S + pad) + pad;
    uint8_t *img = malloc((size_t)W * (size_t)H * 3);
    if (!img) return -1;
    memset(img, 128, (size_t)W * (size_t)H * 3);   /* grey gutters show the white backgrounds */
    for (int i = 0; i < n; i++) {
        int x0 = pad + (i % cols) * (S + pad), y0 = pad + (i / cols) * (S + pad);
        for (int y = 0; y < S; y++)
            memcpy(img + ((size_t)(y0 + y) * (size_t)W + (size_t)x0) * 3, d->pixels + ((size_t)i * S * S + (size_t)y * S) * 3,
                   (size_t)S * 3);
    }
    FILE *f = fopen(path, "wb");
    png_structp png = f ? png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL) : NULL;
    png_infop info = png ? png_create_info_struct(png) : NULL;
    int rc = -1;
    if (info && !setjmp(png_jmpbuf(png))) {
        png_init_io(png, f);
        png_set_IHDR(png, info, (png_uint_32)W, (png_uint_32)H, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                     PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
        png_write_info(png, info);
        for (int y = 0; y < H; y++) png_write_row(png, img + (size_t)y * (size_t)W * 3);
        png_write_end(png, NULL);
        rc = 0;
    }
    if (png) png_destroy_write_struct(&png, info ? &info : NULL);
    if (f && fclose(f) != 0) rc = -1;
    free(img);
    if (rc) {
        fprintf(stderr, "draft-emoji-data: cannot write %s\n", path);
        return -1;
    }
    printf("preview: %s (%dx%d, 8 per row); captions, row by row:\n", path, W, H);
    for (int i = 0; i < n; i++) printf("  %2d %-6s %s\n", i, d->codes[i], d->captions[i]);
    return 0;
#else
    (void)d;
    fprintf(stderr, "draft-emoji-data: built without libpng, cannot write the preview %s\n", path);
    return -1;
#endif
}

int main(int argc, char **argv)
{
    int size = 32;
    const char *out = NULL, *preview = NULL;
    const char *text = "/usr/share/unicode/emoji/emoji-test.txt";
    const char *font = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "draft-emoji-data: unknown or incomplete argument %s\n", a);
            usage(stderr);
            return 2;
        }
        if (!strcmp(a, "--size")) {
            char *end;
            long s = strtol(v, &end, 10);
            if (*end || s < 8 || s > 256) {
                fprintf(stderr, "draft-emoji-data: --size %s: expected an integer in 8..256\n", v);
                return 2;
            }
            size = (int)s;
        } else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--emoji-test")) text = v;
        else if (!strcmp(a, "--font")) font = v;
        else if (!strcmp(a, "--preview")) preview = v;
        else {
            fprintf(stderr, "draft-emoji-data: unknown argument %s\n", a);
            usage(stderr);
            return 2;
        }
        i++;
    }
    char def[64];
    if (!out) {
        snprintf(def, sizeof def, "data/emoji-%d.bin", size);
        out = def;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct draft_dataset d;
    struct draft_emoji_counts c;
    if (draft_emoji_build(text, font, size, &d, &c)) {
        fprintf(stderr, "draft-emoji-data: %s\n", tensor_error());
        return 1;
    }
    if (make_parent(out) || draft_dataset_save(&d, out)) {
        if (tensor_status()) fprintf(stderr, "draft-emoji-data: %s\n", tensor_error());
        draft_dataset_free(&d);
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    struct stat st;
    long long bytes = stat(out, &st) == 0 ? (long long)st.st_size : -1;
    printf("emoji-test: %d fully-qualified lines, %d without skin tone, %d not one glyph in the font (skipped)\n",
           c.fully_qualified, c.candidates, c.no_glyph);
    printf("wrote %s: %d items of %dx%d RGB, %lld bytes, %.2f s\n", out, c.rendered, size, size, bytes,
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    int rc = preview && write_preview(&d, preview) ? 1 : 0;
    draft_dataset_free(&d);
    return rc;
}
