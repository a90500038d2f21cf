/* unicode.h — the Python string semantics both tokenizers need (implemented in tokenizer.c, which
 * holds the generated tables): strict UTF-8, str.isspace() and str.lower(). Internal to diffusion/. */
#ifndef DIFFUSION_UNICODE_H
#define DIFFUSION_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* a growable array of code points; oom once an allocation failed (pushes then do nothing) */
struct cpbuf { uint32_t *v; size_t n, cap; bool oom; };
void uc_cp_push(struct cpbuf *b, uint32_t c);

/* strict decode of one code point at s[0..n): its length, or 0 when invalid (overlong,
 * surrogate, past U+10FFFF, cut short) */
int uc_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);
/* a whole text (at most 256 MiB) as code points into out (empty on entry; the caller frees out->v,
 * also on failure); false with a message naming `who` on invalid UTF-8, a text too long or out of
 * memory */
bool uc_decode_text(const char *utf8, const char *who, struct cpbuf *out);
/* the UTF-8 of c into o[0..4): its length */
int uc_utf8_encode(uint32_t c, uint8_t *o);
bool uc_is_pyspace(uint32_t c);   /* str.isspace() */
/* str.lower() of s[i] within s[0..n) (the context decides a capital sigma's form): 1 or 2 code
 * points into out (U+0130 lowers to i U+0307) */
int uc_py_lower(const uint32_t *s, size_t n, size_t i, uint32_t out[2]);

#endif
