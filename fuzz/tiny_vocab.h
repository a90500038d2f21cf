/* tiny_vocab.h — shared by the tokenizer fuzz targets: stand-ins for tensor.c's error
 * reporting (the targets compile only tokenizer.c), CHECK (define FUZZ_NAME first) and a small in-memory CLIP vocabulary (the
 * 512 byte tokens, a few dozen merges, the two specials). Static functions: include it once. */
#ifndef DRAFT_FUZZ_TINY_VOCAB_H
#define DRAFT_FUZZ_TINY_VOCAB_H
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/tokenizer.h"

/* a failed consistency check: say which and abort, so libFuzzer (or replay.c) keeps the input */
#define CHECK(c)                                                                                      \
    do {                                                                                              \
        if (!(c)) {                                                                                   \
            fprintf(stderr, FUZZ_NAME ": check failed: %s (%s:%d)\n", #c, __FILE__, __LINE__); \
            abort();                                                                                  \
        }                                                                                             \
    } while (0)

/* The tokenizer reports errors through tensor.c; the fuzz build compiles only tokenizer.c, so
 * these two stand in for it. */
static char fuzz_error[512];
static enum status fuzz_status;

enum status tensor_fail(enum status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fuzz_error, sizeof fuzz_error, fmt, ap);
    va_end(ap);
    fuzz_status = s;
    return s;
}

enum status tensor_status(void) { return fuzz_status; }

static const char *const fuzz_merges[] = {
    "t h", "i n", "a n", "e r", "o n", "r e", "th e</w>", "an d</w>", "in g</w>", "o f</w>", "e r</w>", "c a",
    "ca t</w>", "a a", "aa aa", "aa a</w>", "' s</w>", "< |", "1 2", "12 3</w>", "e s</w>", "o o", "o o</w>",
    "oo oo</w>", "\xC3\x83 \xC2\xA9</w>", "\xC3\xA3 \xC4\xA3", "ph oto</w>", "p h", "o to</w>", "t o</w>",
};

static void append(char **buf, size_t *n, size_t *cap, const char *s)
{
    size_t l = strlen(s);
    while (*n + l + 1 > *cap) {
        *cap = *cap ? 2 * *cap : 4096;
        *buf = realloc(*buf, *cap);
        if (!*buf) abort();
    }
    memcpy(*buf + *n, s, l + 1);
    *n += l;
}

/* a JSON string literal of the UTF-8 text s (only '"' and '\\' need escaping here) */
static void append_key(char **buf, size_t *n, size_t *cap, const char *s, int id)
{
    char tmp[96];
    size_t j = 0;
    tmp[j++] = '"';
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') tmp[j++] = '\\';
        tmp[j++] = *s;
    }
    snprintf(tmp + j, sizeof tmp - j, "\": %d,", id);
    append(buf, n, cap, tmp);
}

static int utf8_of(uint32_t c, char *o)
{
    if (c < 0x80) { o[0] = (char)c; o[1] = 0; return 1; }
    o[0] = (char)(0xC0 | (c >> 6));   /* byte-chars are below U+0800 */
    o[1] = (char)(0x80 | (c & 0x3F));
    o[2] = 0;
    return 2;
}

/* the files of the tiny tokenizer: *v = vocab.json, *m = merges.txt (malloc'd, NUL-terminated) */
static void tiny_vocab_files(char **v, size_t *vn, char **m, size_t *mn)
{
    size_t vc = 0, mc = 0;
    *v = *m = NULL;
    *vn = *mn = 0;
    int id = 0;
    char tok[64];
    append(v, vn, &vc, "{");
    for (int end = 0; end < 2; end++)
        for (int b = 0; b < 256; b++) {
            utf8_of(clip_byte_to_unicode((uint8_t)b), tok);
            if (end) strcat(tok, "</w>");
            append_key(v, vn, &vc, tok, id++);
        }
    append(m, mn, &mc, "#version: 0.2\n");
    for (size_t i = 0; i < sizeof fuzz_merges / sizeof fuzz_merges[0]; i++) {
        const char *sp = strchr(fuzz_merges[i], ' ');
        snprintf(tok, sizeof tok, "%.*s%s", (int)(sp - fuzz_merges[i]), fuzz_merges[i], sp + 1);
        bool seen = false;   /* an earlier merge may already have made this token */
        for (size_t k = 0; k < i; k++) {
            const char *sk = strchr(fuzz_merges[k], ' ');
            size_t lk = (size_t)(sk - fuzz_merges[k]);
            if (strlen(tok) == lk + strlen(sk + 1) && !strncmp(tok, fuzz_merges[k], lk) && !strcmp(tok + lk, sk + 1)) seen = true;
        }
        if (!seen) append_key(v, vn, &vc, tok, id++);
        append(m, mn, &mc, fuzz_merges[i]);
        append(m, mn, &mc, "\n");
    }
    char tail[96];
    snprintf(tail, sizeof tail, "\"<|startoftext|>\": %d, \"<|endoftext|>\": %d}", id, id + 1);
    append(v, vn, &vc, tail);
}

static inline struct clip_tokenizer *tiny_tokenizer(void)   /* inline: not every target uses it */
{
    char *v, *m;
    size_t vn, mn;
    tiny_vocab_files(&v, &vn, &m, &mn);
    struct clip_tokenizer *t = clip_tokenizer_from_memory(v, vn, "fuzz vocab.json", m, mn, "fuzz merges.txt");
    free(v);
    free(m);
    return t;
}

#endif
