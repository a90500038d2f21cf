/* image.h — 8-bit RGB images: from a sample tensor, to and from PNG (libpng), and captioned
 * grids (FreeType, DejaVu Sans) for run reports and sample sheets.
 *
 * Errors go through tensor_fail(): functions return a non-zero status and the message (read
 * with tensor_error()) names the file or argument and what is wrong. Nothing here aborts on a
 * bad file or argument. */
#ifndef DRAFT_IMAGE_H
#define DRAFT_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tensor/tensor.h"

struct draft_image {
    int w, h;
    uint8_t *rgb;   /* h × w × 3, row-major, r g b (pixel (y,x) channel c at (y*w+x)*3+c) */
};

/* A w×h image with every byte set to `fill`. */
enum status draft_image_alloc(struct draft_image *im, int w, int h, uint8_t fill);
void draft_image_free(struct draft_image *im);   /* frees the pixels; `im` becomes empty; NULL is fine */

/* Image b of `images` ([B,3,H,W], any float dtype, any device, any strides) as 8-bit RGB,
 * computed in float32 as diffusers does: v = clamp(x/2 + 0.5, 0, 1), p = v*255, then rounded as
 * numpy's round, which diffusers calls (ties to even), so the bytes equal diffusers'. NaN maps
 * to 0. */
enum status draft_image_from_tensor(const struct tensor *images, int b, struct draft_image *out);
/* How many of image b's values are NaN or infinite (what draft_image_from_tensor writes as 0 or
 * 255: a sampling that diverged), or -1 with the error set (the checks of draft_image_from_tensor) */
int64_t draft_image_nonfinite(const struct tensor *images, int b);

/* n images of one size as a float tensor [n,3,H,W] in [-1,1] (x = p/255 * 2 - 1, the inverse of
 * draft_image_from_tensor up to its rounding: from_tensor(to_tensor(im)) == im) of dtype dt on dev.
 * NULL with a message naming both sizes when the images differ in size. */
struct tensor *draft_image_to_tensor(const struct draft_image *ims, int n, enum dtype dt, enum device dev);

/* Writes an 8-bit RGB PNG atomically: encoded in memory, written to a temporary file next to
 * `path`, then renamed over it, so a reader never sees a partial file. */
enum status draft_png_write(const char *path, const struct draft_image *im);
/* Reads any 8-bit (or lower) PNG — RGB, RGBA, grey, grey+alpha, palette, interlaced or not — as
 * RGB; alpha is dropped, 16-bit samples are scaled to 8. A missing, truncated or corrupt file
 * is an error (STATUS_IO / STATUS_FORMAT); `out` is then empty. */
enum status draft_png_read(const char *path, struct draft_image *out);

/* Writes `n` bytes to `path` atomically (temporary file next to it, then rename). */
enum status draft_file_write_atomic(const char *path, const void *data, size_t n);

/* ---- grids ----
 * Geometry (all in output pixels), for n tiles of w×h, c columns, r = ceil(n/c) rows, upscale u:
 *   tile       T_w = w*u, T_h = h*u (nearest-neighbour upscaling)
 *   caption    K = DRAFT_GRID_CAPTION_H below every tile when labels are given, else 0
 *   canvas     W = c*T_w + (c+1)*G,  H = r*(T_h + K) + (r+1)*G   with G = DRAFT_GRID_GAP
 *   tile i     at x = G + (i%c)*(T_w+G), y = G + (i/c)*(T_h+K+G); its caption box is
 *              [x, x+T_w) × [y+T_h, y+T_h+K)
 * The background (gaps, caption boxes, empty cells) is grey DRAFT_GRID_BG. The geometry does
 * not depend on whether the font could be loaded. */
#define DRAFT_GRID_GAP 4
#define DRAFT_GRID_BG 240
#define DRAFT_GRID_FONT_PX 12                                /* DejaVu Sans pixel size */
#define DRAFT_GRID_LINE_H 15                                 /* caption line pitch */
#define DRAFT_GRID_CAPTION_H (2 * DRAFT_GRID_LINE_H + 4)     /* two lines + 2 px above and below */
#define DRAFT_GRID_AUTO_WIDTH 128                            /* upscale 0 aims tiles at least this wide */
#define DRAFT_GRID_MAX_UPSCALE 16

/* The font captions use: $DRAFT_FONT if set and non-empty, else
 * /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf (Debian package fonts-dejavu-core). */
const char *draft_font_path(void);
/* Whether grids can draw captions: the build has FreeType and draft_font_path() loads. */
bool draft_captions_available(void);

/* Tiles `ims[0..n)` (all the same size) into one image, `cols` per row (cols <= 0: ceil(sqrt(n));
 * more than n: n), each scaled up by `upscale` (1..DRAFT_GRID_MAX_UPSCALE; 0 = automatic, the
 * smallest factor making tiles at least DRAFT_GRID_AUTO_WIDTH wide, at most the maximum).
 * `labels` (NULL for none; a NULL entry for an empty caption) are UTF-8 captions drawn centred
 * below their tile, word-wrapped to the tile width, at most two lines, the second ending in "…"
 * when the text does not fit. If the font cannot be loaded (or the build has no FreeType) the
 * grid is made without text and a warning naming the package to install is printed once. */
enum status draft_grid(const struct draft_image *ims, int n, int cols, int upscale, const char *const *labels,
                       struct draft_image *out);

/* Convenience for trainers and tools: all B images of `images` ([B,3,H,W] in [-1,1]) as a grid
 * (arguments as for draft_grid) written to the PNG `path`. */
enum status draft_grid_save(const char *path, const struct tensor *images, int cols, int upscale,
                            const char *const *labels);

#endif
