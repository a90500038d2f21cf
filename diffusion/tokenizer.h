/* tokenizer.h — the CLIP BPE tokenizer that Stable Diffusion 1.x uses (openai
 * clip/simple_tokenizer.py; HF CLIPTokenizer is the same algorithm), exact against the reference.
 *
 * Text → ids, in the reference's order:
 *   1. html.unescape(html.unescape(text)), then str.strip()            (no ftfy: see below)
 *   2. re.sub(r'\s+', ' ', text).strip(), then str.lower() (Python's, with the final-sigma rule)
 *   3. pre-tokenise with  <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|
 *                         [\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+      (regex module, IGNORECASE)
 *   4. each pre-token: UTF-8 bytes → byte-chars, last one + "</w>", merge the adjacent pair of
 *      lowest rank (all its occurrences, left to right) until no ranked pair is left, map to ids.
 *      A pre-token spelling a special token ("<|startoftext|>") becomes that token's id.
 *
 * ftfy: the reference runs ftfy.fix_text first; we do not (neither did the golden file's
 * reference run). ftfy changes only mojibake, ligatures (ﬁ → fi), curly quotes and the like, so
 * the ids differ from an ftfy-enabled reference for such text only. (HF's CLIPTokenizer without
 * ftfy is not this either: it falls back to BERT's BasicTokenizer, which also splits CJK
 * ideographs apart, drops control characters and NFC-normalises.)
 *
 * A loaded tokenizer is read-only: concurrent calls are safe. BPE is quadratic in the length of
 * one pre-token (as in the reference); prompts are short.
 *
 * Input text must be valid UTF-8 (no overlong forms, surrogates or code points above U+10FFFF):
 * invalid input is an error (STATUS_VALUE naming the byte offset), not silently replaced.
 * Character classes and case maps come from generated tables (unicode_tables.h,
 * html_entities.h) that record what Python 3.11 and the `regex` module do.
 *
 * Errors go through tensor_fail() (tensor/tensor.h): read them with tensor_error(). */
#ifndef DIFFUSION_TOKENIZER_H
#define DIFFUSION_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tensor/tensor.h"

#define CLIP_CONTEXT 77          /* SD 1.x text length: bos + 75 ids + eos, padded */
#define CLIP_MAX_CONTENT 75
/* the reference reads merges.txt lines [1 : 49152-256-2+1]: at most this many merges */
#define CLIP_MAX_MERGES 48894

struct clip_tokenizer;

/* vocab.json (HF: {"token": id, ...}, ids dense in 0..n-1) and merges.txt (a "#version" header
 * line, then "left right" per line, rank = order; lines past CLIP_MAX_MERGES are ignored, as in
 * the reference). Every merge's parts and result must be in the vocabulary, as must the 512 byte
 * tokens ("x" and "x</w>") and "<|startoftext|>" / "<|endoftext|>". NULL on error, with a
 * message naming the file and line (or the offending token). */
struct clip_tokenizer *clip_tokenizer_load(const char *vocab_json_path, const char *merges_txt_path);
/* the same from memory; `vocab_label` / `merges_label` name the sources in error messages */
struct clip_tokenizer *clip_tokenizer_from_memory(const char *vocab_json, size_t vocab_len, const char *vocab_label,
                                                  const char *merges_txt, size_t merges_len, const char *merges_label);
void clip_tokenizer_free(struct clip_tokenizer *tok);

/* ids of `utf8` without bos/eos. Writes at most `max` ids to `ids` (may be NULL when max is 0)
 * and returns how many ids the whole text has (like snprintf: a result > max means truncated),
 * or -1 on error (invalid UTF-8, text longer than 256 MiB, out of memory). */
int clip_tokenize(const struct clip_tokenizer *tok, const char *utf8, int32_t *ids, int max);
/* SD 1.x framing (HF CLIPTokenizer, padding="max_length", truncation=True, max_length=77):
 * bos, the first 75 ids at most, eos, then eos as padding up to 77. */
enum status clip_tokenize_77(const struct clip_tokenizer *tok, const char *utf8, int32_t out[CLIP_CONTEXT]);
/* the same framing at any length >= 2 with any padding id: bos, the first length - 2 ids at most,
 * eos, then pad (OWL-ViT's processor: length 16, pad 0) */
enum status clip_tokenize_padded(const struct clip_tokenizer *tok, const char *utf8, int32_t *out, int length,
                                 int32_t pad);
/* the reference's decode: tokens concatenated, byte-chars back to bytes, decoded as UTF-8 with
 * U+FFFD for invalid sequences (as Python's errors="replace"), "</w>" → " ". Returns a string
 * to free() or NULL on error (an id outside the vocabulary, or a token holding byte 0, which no
 * text produces and a C string cannot hold). */
char *clip_decode(const struct clip_tokenizer *tok, const int32_t *ids, int n);

int clip_vocab_size(const struct clip_tokenizer *tok);
/* the same vocabulary (every id's string), merges (pair, rank and result) and bos/eos: whatever
 * the files' formatting, the two tokenize every text alike */
bool clip_tokenizer_same(const struct clip_tokenizer *a, const struct clip_tokenizer *b);
int32_t clip_bos_id(const struct clip_tokenizer *tok);   /* 49406 for CLIP */
int32_t clip_eos_id(const struct clip_tokenizer *tok);   /* 49407, also the SD pad */
/* the id of a vocabulary string (e.g. "a</w>"), or -1 */
int32_t clip_token_id(const struct clip_tokenizer *tok, const char *token);
/* bytes_to_unicode(): the code point that stands for byte b in vocab/merges strings */
uint32_t clip_byte_to_unicode(uint8_t b);

#endif
