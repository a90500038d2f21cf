/* dataset.h — the captioned emoji image set and the BPE vocabulary learnt from its captions.
 *
 * Data (nothing of it is committed; `draft-emoji-data` builds it on demand into data/):
 *   images   fonts-noto-color-emoji's NotoColorEmoji.ttf (font: SIL Open Font License 1.1;
 *            the noto-emoji sources: Apache-2.0), rendered with FreeType from the font's CBDT
 *            colour bitmaps, composited onto white and area-downsampled.
 *   captions unicode-data's emoji/emoji-test.txt (Unicode License, "Data Files and Software"):
 *            the emoji name ("grinning face"), its group ("Smileys & Emotion") and subgroup
 *            ("face-smiling"). Kept: status fully-qualified, no skin-tone modifier.
 *
 * File format (all integers little-endian), version 1:
 *   0   char[8]  "DRAFTEMJ"
 *   8   u32      version (1)
 *   12  u32      n        items
 *   16  u32      size     images are size×size, 3 channels (RGB)
 *   20  u32      channels (3)
 *   24  u64      string bytes S
 *   32  u8[n*size*size*3]   pixels, per item HWC (row-major, r g b), 0..255
 *   ..  u8[S]    per item four NUL-terminated UTF-8 strings: caption, group, subgroup, code
 *                points ("1F468 200D 1F469")
 *   ..  u64      FNV-1a 64 of every byte before it
 * A reader accepts only a file of exactly this length whose checksum matches.
 *
 * Errors go through tensor_fail(): read them with tensor_error(). */
#ifndef DRAFT_DATASET_H
#define DRAFT_DATASET_H

#include <stdbool.h>
#include <stdint.h>

#include "tensor/tensor.h"

#define DRAFT_DATASET_VERSION 1
#define DRAFT_DATASET_MAX_SIZE 1024
#define DRAFT_DATASET_MAX_ITEMS (1 << 22)

struct draft_dataset {
    int n, size;
    uint8_t *pixels;   /* n × size × size × 3, HWC per item (pixel (y,x) channel c at ((i*size+y)*size+x)*3+c) */
    char **captions;   /* n strings each (all owned by the dataset) */
    char **groups;
    char **subgroups;
    char **codes;      /* code points in hex, space-separated */
};

/* An empty dataset of n items (pixels zeroed, strings ""), to be filled by a writer. */
enum status draft_dataset_init(struct draft_dataset *d, int n, int size);
/* Sets item i's strings (copied). */
enum status draft_dataset_set_text(struct draft_dataset *d, int i, const char *caption, const char *group,
                                   const char *subgroup, const char *codes);
/* Reads and validates a dataset file (magic, version, sizes, exact length, checksum, strings).
 * On error `d` is left empty (safe to free) and the message names the file and what is wrong. */
enum status draft_dataset_load(struct draft_dataset *d, const char *path);
/* Writes atomically: a temporary file next to `path`, then rename. */
enum status draft_dataset_save(const struct draft_dataset *d, const char *path);
void draft_dataset_free(struct draft_dataset *d);   /* frees contents; `d` becomes empty */

/* Items indices[0..n) as a new [n, 3, size, size] CPU tensor of `dt` (f32/f64/f16/bf16), values
 * pixel/127.5 - 1 in [-1, 1]. NULL on a bad index or dtype. */
struct tensor *draft_dataset_batch(const struct draft_dataset *d, int n, const int *indices, enum dtype dt);
/* Deterministic split by caption: item i is held out when FNV-1a(caption) % modulus == 0, so an
 * item keeps its side when the dataset is rebuilt or reordered. Fills malloc'd index arrays
 * (ascending; either may be NULL when its count is 0). modulus >= 2. */
enum status draft_dataset_split(const struct draft_dataset *d, int modulus, int **train, int *n_train, int **held,
                                int *n_held);
bool draft_dataset_is_heldout(const char *caption, int modulus);

/* ---- emoji rendering (needs FreeType at build time; otherwise these fail with a message) ---- */

#define DRAFT_EMOJI_MAX_CPS 16

struct draft_emoji {
    uint32_t cps[DRAFT_EMOJI_MAX_CPS];
    int n_cps;
    char *name, *group, *subgroup;
};

/* Parses emoji-test.txt: the fully-qualified lines without a skin-tone modifier (U+1F3FB..1F3FF),
 * in file order. `n_lines_fq` (may be NULL) gets the number of fully-qualified lines seen. */
enum status draft_emoji_list_load(const char *path, struct draft_emoji **out, int *n, int *n_lines_fq);
void draft_emoji_list_free(struct draft_emoji *e, int n);

struct draft_emoji_font;
struct draft_emoji_font *draft_emoji_font_open(const char *ttf_path);   /* NULL + message on error */
void draft_emoji_font_close(struct draft_emoji_font *f);
/* The glyph of a code point sequence: cmap, then the font's GSUB ligatures (ZWJ sequences,
 * flags, keycaps); U+FE0F is dropped when the sequence only forms one glyph without it.
 * Returns the glyph id, 0 when the sequence does not map to one glyph, -1 on error. */
int draft_emoji_glyph(const struct draft_emoji_font *f, const uint32_t *cps, int n_cps);
/* Renders glyph `gid` onto white, centred on a square canvas of the strike's size, area-averaged
 * to size×size; writes size*size*3 bytes HWC RGB. */
enum status draft_emoji_render(const struct draft_emoji_font *f, int gid, int size, uint8_t *rgb);

struct draft_emoji_counts {
    int fully_qualified;   /* fully-qualified lines in the file */
    int candidates;        /* of those, without skin tone */
    int no_glyph;          /* candidates that do not form a single glyph */
    int rendered;          /* items in the dataset */
};
/* The whole build: list, font, render every candidate to `size`. */
enum status draft_emoji_build(const char *emoji_test_path, const char *font_path, int size, struct draft_dataset *d,
                              struct draft_emoji_counts *counts);

/* ---- BPE vocabulary in CLIP's file format ---- */

/* Learns BPE merges from `texts` (lower-cased and pre-tokenised exactly as clip_tokenize does)
 * and writes out_dir/vocab.json (256 byte tokens in bytes_to_unicode order, the same with
 * "</w>", the merge results in order, "<|startoftext|>", "<|endoftext|>"), merges.txt
 * ("#version: 0.2" then "left right" per line), tokenizer_config.json and
 * special_tokens_map.json. Stops at `vocab_size` tokens or when no pair occurs `min_count`
 * times. Ties: highest count, then the smaller (left, right) by byte order. `n_merges` (may be
 * NULL) gets the number learnt, `n_vocab` the vocabulary size written. */
enum status draft_bpe_learn(const char *const *texts, int n_texts, int vocab_size, int min_count, const char *out_dir,
                            int *n_merges, int *n_vocab);

#endif
