/* tokenizer.c — CLIP BPE tokenizer (see tokenizer.h for the algorithm and its reference).
 *
 * Text is handled as an array of code points from the strict UTF-8 decode to the
 * pre-tokeniser, so every Python string operation of the reference (html.unescape, strip,
 * re.sub, lower, the regex) is mirrored on the same units it works on. Each pre-token then goes
 * back to UTF-8 bytes for the byte-level BPE, which runs on token ids: a merge is looked up by
 * its (left id, right id) pair in an open-addressing table giving (rank, merged id). */
#include "diffusion/tokenizer.h"
#include "diffusion/unicode.h"
#include "nn/file.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/html_entities.h"
#include "diffusion/unicode_tables.h"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_TEXT_BYTES ((size_t)256 << 20)

/* ---------------------------------------------------------------- byte-level alphabet */

/* bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes (controls,
 * space, 0x7F-0xA0, 0xAD) map to U+0100.. in increasing byte order */
uint32_t clip_byte_to_unicode(uint8_t b)
{
    /* printable bytes are themselves; the 68 others, in byte order, become 256, 257, ...:
     * 0x00-0x20 (33), 0x7F-0xA0 (34), 0xAD. Written as ranges, not a count, so that the
     * compiler sees the result is < BYTE_CHAR_END where it indexes a table (GCC's
     * -Warray-bounds could not once the counting loop was inlined) */
    if (b <= 0x20) return 256u + b;
    if (b >= 0x7F && b <= 0xA0) return 256u + 33u + (uint32_t)(b - 0x7F);
    if (b == 0xAD) return 256u + 67u;
    return b;
}

#define BYTE_CHAR_END 324   /* byte-chars are < 256 + 68 */

/* ---------------------------------------------------------------- UTF-8 */

/* strict decode of one code point at s[0..n); returns its length or 0 when invalid */
static int utf8_decode(const uint8_t *s, size_t n, uint32_t *cp)
{
    uint8_t b = s[0];
    if (b < 0x80) { *cp = b; return 1; }
    int len;
    uint32_t c, min;
    if (b >= 0xC2 && b <= 0xDF) { len = 2; c = b & 0x1F; min = 0x80; }
    else if (b >= 0xE0 && b <= 0xEF) { len = 3; c = b & 0x0F; min = 0x800; }
    else if (b >= 0xF0 && b <= 0xF4) { len = 4; c = b & 0x07; min = 0x10000; }
    else return 0;
    if ((size_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    *cp = c;
    return len;
}

static int utf8_encode(uint32_t c, uint8_t *o)
{
    if (c < 0x80) { o[0] = (uint8_t)c; return 1; }
    if (c < 0x800) { o[0] = (uint8_t)(0xC0 | (c >> 6)); o[1] = (uint8_t)(0x80 | (c & 0x3F)); return 2; }
    if (c < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (c >> 12));
        o[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | (c >> 18));
    o[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (c & 0x3F));
    return 4;
}

/* ---------------------------------------------------------------- growable buffers */

void uc_cp_push(struct cpbuf *b, uint32_t c)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        uint32_t *v = b->oom ? NULL : realloc(b->v, cap * sizeof *v);
        if (!v) { b->oom = true; return; }
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = c;
}

struct bytebuf { char *v; size_t n, cap; bool oom; };

static void byte_push(struct bytebuf *b, const void *src, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *v = b->oom ? NULL : realloc(b->v, cap);
        if (!v) { b->oom = true; return; }
        b->v = v;
        b->cap = cap;
    }
    memcpy(b->v + b->n, src, n);
    b->n += n;
    b->v[b->n] = 0;
}

/* ---------------------------------------------------------------- character classes */

static bool in_ranges(const struct uc_range *r, size_t n, uint32_t c)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < r[mid].lo) hi = mid;
        else if (c > r[mid].hi) lo = mid + 1;
        else return true;
    }
    return false;
}

#define IN(table, c) in_ranges(table, NELEM(table), c)

static bool is_letter(uint32_t c) { return c < 0x80 ? ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') : IN(uc_letter, c); }
static bool is_number(uint32_t c) { return c < 0x80 ? (c >= '0' && c <= '9') : IN(uc_number, c); }
static bool is_space(uint32_t c) { return IN(uc_space, c); }        /* regex \s */
static bool is_pyspace(uint32_t c) { return IN(uc_pyspace, c); }    /* str.isspace() */
/* [^\s\p{L}\p{N}] under IGNORECASE (U+0345 folds to a letter and so matches no class) */
static bool is_punct(uint32_t c) { return !is_space(c) && !is_letter(c) && !is_number(c) && !IN(uc_unmatched, c); }

static uint32_t lower_simple(uint32_t c)
{
    if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
    size_t lo = 0, hi = NELEM(uc_lower);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const struct uc_lower_run *r = &uc_lower[mid];
        if (c < r->lo) hi = mid;
        else if (c > r->hi) lo = mid + 1;
        else return (c - r->lo) % r->stride ? c : (uint32_t)((int32_t)c + r->delta);
    }
    return c;
}

/* does code point c match the ASCII character ch under the regex module's IGNORECASE? */
static bool ci_eq(uint32_t c, char ch)
{
    if (c == (uint8_t)ch) return true;
    if (ch < 'a' || ch > 'z') return false;
    if (c == (uint32_t)(ch - 32)) return true;
    for (size_t i = 0; i < NELEM(uc_ascii_fold); i++)
        if (uc_ascii_fold[i].cp == c && uc_ascii_fold[i].ascii == (uint32_t)ch) return true;
    return false;
}

/* ---------------------------------------------------------------- cleanup */

static int entity_cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const struct html_entity *)elem)->name);
}

/* the entity named by code points s[0..n) (ASCII only), or NULL */
static const struct html_entity *entity_find(const uint32_t *s, size_t n)
{
    char name[40];
    if (n >= sizeof name) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] >= 0x80) return NULL;
        name[i] = (char)s[i];
    }
    name[n] = 0;
    return bsearch(name, html_entities, NELEM(html_entities), sizeof html_entities[0], entity_cmp);
}

static void push_utf8(struct cpbuf *o, const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        uint32_t c = 0;
        int len = utf8_decode((const uint8_t *)s + i, n - i, &c);
        if (!len) break;   /* the generated table is valid UTF-8 */
        uc_cp_push(o, c);
        i += (size_t)len;
    }
}

static bool is_hex(uint32_t c) { return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f'); }
static uint32_t hex_val(uint32_t c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

/* html.unescape(): replaces  &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)  matches
 * as Python's _replace_charref does (HTML5 rules, longest legacy-name prefix) */
static void html_unescape(const uint32_t *s, size_t n, struct cpbuf *o)
{
    for (size_t i = 0; i < n;) {
        if (s[i] != '&' || i + 1 >= n) { uc_cp_push(o, s[i++]); continue; }
        size_t j = i + 1;
        if (s[j] == '#') {
            bool hex = j + 2 < n && (s[j + 1] == 'x' || s[j + 1] == 'X') && is_hex(s[j + 2]);
            bool dec = j + 1 < n && s[j + 1] >= '0' && s[j + 1] <= '9';
            if (!hex && !dec) { uc_cp_push(o, s[i++]); continue; }
            uint32_t num = 0;   /* saturates above U+10FFFF: Python's int is unbounded */
            size_t k = j + (hex ? 2 : 1);
            for (; k < n && (hex ? is_hex(s[k]) : (s[k] >= '0' && s[k] <= '9')); k++) {
                uint64_t v = (uint64_t)num * (hex ? 16 : 10) + (hex ? hex_val(s[k]) : s[k] - '0');
                num = v > 0x110000 ? 0x110000 : (uint32_t)v;
            }
            if (k < n && s[k] == ';') k++;
            i = k;
            size_t r;
            for (r = 0; r < NELEM(html_invalid_charrefs); r++)
                if (html_invalid_charrefs[r].cp == num) break;
            if (r < NELEM(html_invalid_charrefs)) { uc_cp_push(o, html_invalid_charrefs[r].repl); continue; }
            if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) { uc_cp_push(o, 0xFFFD); continue; }
            bool drop = false;
            for (r = 0; r < NELEM(html_invalid_codepoints); r++)
                if (html_invalid_codepoints[r] == num) drop = true;
            if (!drop) uc_cp_push(o, num);
            continue;
        }
        /* a name: up to 32 code points other than \t \n \f space < & # ; — then an optional ';' */
        size_t k = j;
        while (k < n && k - j < 32 && s[k] != '\t' && s[k] != '\n' && s[k] != '\f' && s[k] != ' ' && s[k] != '<' &&
               s[k] != '&' && s[k] != '#' && s[k] != ';')
            k++;
        if (k == j) { uc_cp_push(o, s[i++]); continue; }
        if (k < n && s[k] == ';') k++;
        const struct html_entity *e = entity_find(s + j, k - j);
        size_t used = k - j;
        for (size_t x = k - j - 1; !e && x >= 2; x--) {   /* longest prefix: legacy names without ';' */
            e = entity_find(s + j, x);
            used = x;
        }
        if (!e) {   /* no reference: the text stays */
            for (size_t m = i; m < k; m++) uc_cp_push(o, s[m]);
        } else {
            push_utf8(o, e->utf8);
            for (size_t m = j + used; m < k; m++) uc_cp_push(o, s[m]);
        }
        i = k;
    }
}

/* CPython's Final_Sigma test for a capital sigma at s[i] */
static bool final_sigma(const uint32_t *s, size_t n, size_t i)
{
    size_t j = i;
    while (j > 0 && IN(uc_case_ignorable, s[j - 1])) j--;
    if (j == 0 || !IN(uc_cased, s[j - 1])) return false;
    j = i + 1;
    while (j < n && IN(uc_case_ignorable, s[j])) j++;
    return j == n || !IN(uc_cased, s[j]);
}

/* ---------------------------------------------------------------- shared with wordpiece.c (unicode.h) */

int uc_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) { return utf8_decode(s, n, cp); }
int uc_utf8_encode(uint32_t c, uint8_t *o) { return utf8_encode(c, o); }

bool uc_decode_text(const char *utf8, const char *who, struct cpbuf *out)
{
    const size_t len = strlen(utf8);
    if (len > MAX_TEXT_BYTES) return !tensor_fail(STATUS_VALUE, "%s: text of %zu bytes is too long", who, len);
    for (size_t i = 0; i < len;) {
        uint32_t c = 0;
        const int l = utf8_decode((const uint8_t *)utf8 + i, len - i, &c);
        if (!l) return !tensor_fail(STATUS_VALUE, "%s: invalid UTF-8 at byte %zu (0x%02X)", who, i, (uint8_t)utf8[i]);
        uc_cp_push(out, c);
        i += (size_t)l;
    }
    return out->oom ? !tensor_fail(STATUS_OOM, "%s: out of memory", who) : true;
}
bool uc_is_pyspace(uint32_t c) { return is_pyspace(c); }

int uc_py_lower(const uint32_t *s, size_t n, size_t i, uint32_t out[2])
{
    const uint32_t c = s[i];
    if (c == 0x130) {   /* the one full mapping that is not one code point */
        out[0] = 'i', out[1] = 0x307;
        return 2;
    }
    out[0] = c == 0x3A3 ? (final_sigma(s, n, i) ? 0x3C2 : 0x3C3) : lower_simple(c);
    return 1;
}

/* basic_clean (without ftfy) + whitespace_clean + lower(): code points in, code points out */
static bool clean_text(const uint32_t *s, size_t n, struct cpbuf *out)
{
    struct cpbuf a = {0}, b = {0};
    html_unescape(s, n, &a);
    html_unescape(a.v, a.n, &b);
    bool ok = !a.oom && !b.oom;
    /* strip(), then runs of regex-\s → ' ', then strip() again */
    size_t lo = 0, hi = b.n;
    while (lo < hi && is_pyspace(b.v[lo])) lo++;
    while (hi > lo && is_pyspace(b.v[hi - 1])) hi--;
    a.n = 0;
    for (size_t i = lo; i < hi;) {
        if (is_space(b.v[i])) {
            uc_cp_push(&a, ' ');
            while (i < hi && is_space(b.v[i])) i++;
        } else {
            uc_cp_push(&a, b.v[i++]);
        }
    }
    lo = 0;
    hi = a.n;
    while (lo < hi && is_pyspace(a.v[lo])) lo++;
    while (hi > lo && is_pyspace(a.v[hi - 1])) hi--;
    /* str.lower(): full mapping (U+0130 → i + U+0307) and the final-sigma context */
    for (size_t i = lo; i < hi; i++) {
        uint32_t l[2];
        const int k = uc_py_lower(a.v + lo, hi - lo, i - lo, l);
        for (int j = 0; j < k; j++) uc_cp_push(out, l[j]);
    }
    ok = ok && !a.oom && !out->oom;
    free(a.v);
    free(b.v);
    return ok;
}

/* ---------------------------------------------------------------- the tokenizer */

struct merge_slot {
    uint64_t key;     /* (left id << 32) | right id */
    int32_t rank;     /* -1: empty slot */
    int32_t merged;
};

struct clip_tokenizer {
    int n_vocab;
    char *arena;             /* the token strings, NUL-terminated */
    const char **tokens;     /* [n_vocab] id → string */
    uint32_t *token_len;     /* [n_vocab] */
    uint32_t *vocab_slots;   /* open addressing, id + 1 (0 = empty) */
    size_t vocab_mask;
    struct merge_slot *merges;
    size_t merge_mask;
    int n_merges;
    int32_t byte_id[256], byte_end_id[256];   /* "x" and "x</w>" for each byte */
    int16_t byte_of_char[BYTE_CHAR_END];      /* byte-char code point → byte, -1 if none */
    int32_t bos, eos;
};

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;   /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;   /* murmur3 finaliser */
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static int32_t vocab_find(const struct clip_tokenizer *t, const char *s, size_t n)
{
    for (size_t h = hash_bytes(s, n) & t->vocab_mask;; h = (h + 1) & t->vocab_mask) {
        uint32_t v = t->vocab_slots[h];
        if (!v) return -1;
        if (t->token_len[v - 1] == n && !memcmp(t->tokens[v - 1], s, n)) return (int32_t)(v - 1);
    }
}

static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

static const struct merge_slot *merge_find(const struct clip_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = pair_key(a, b);
    for (size_t h = hash_u64(key) & t->merge_mask;; h = (h + 1) & t->merge_mask) {
        const struct merge_slot *s = &t->merges[h];
        if (s->rank < 0) return NULL;
        if (s->key == key) return s;
    }
}

bool clip_tokenizer_same(const struct clip_tokenizer *a, const struct clip_tokenizer *b)
{
    if (!a || !b || a->n_vocab != b->n_vocab || a->n_merges != b->n_merges || a->bos != b->bos || a->eos != b->eos)
        return false;
    for (int i = 0; i < a->n_vocab; i++)
        if (a->token_len[i] != b->token_len[i] || memcmp(a->tokens[i], b->tokens[i], a->token_len[i])) return false;
    for (size_t i = 0; a->merges && i <= a->merge_mask; i++) {
        const struct merge_slot *m = &a->merges[i];
        if (m->rank < 0) continue;
        const struct merge_slot *o = merge_find(b, (int32_t)(m->key >> 32), (int32_t)(m->key & 0xffffffffu));
        if (!o || o->rank != m->rank || o->merged != m->merged) return false;
    }
    return true;
}

int clip_vocab_size(const struct clip_tokenizer *tok) { return tok ? tok->n_vocab : 0; }
int32_t clip_bos_id(const struct clip_tokenizer *tok) { return tok ? tok->bos : -1; }
int32_t clip_eos_id(const struct clip_tokenizer *tok) { return tok ? tok->eos : -1; }
int32_t clip_token_id(const struct clip_tokenizer *tok, const char *token)
{
    return tok && token ? vocab_find(tok, token, strlen(token)) : -1;
}

void clip_tokenizer_free(struct clip_tokenizer *tok)
{
    if (!tok) return;
    free(tok->arena);
    free(tok->tokens);
    free(tok->token_len);
    free(tok->vocab_slots);
    free(tok->merges);
    free(tok);
}

static size_t table_size(size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;   /* load factor <= 1/2 */
    return cap;
}

static int line_of(const char *buf, const char *at)
{
    int line = 1;
    for (const char *p = buf; p < at; p++) line += *p == '\n';
    return line;
}

static enum status load_vocab(struct clip_tokenizer *t, const char *json, size_t len, const char *label)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        if (!end || end < json || end > json + len) end = json;
        return tensor_fail(STATUS_FORMAT, "%s:%d: invalid JSON", label, line_of(json, end));
    }
    enum status st = STATUS_OK;
    if (!cJSON_IsObject(root)) { st = tensor_fail(STATUS_FORMAT, "%s:1: not a JSON object of token ids", label); goto done; }
    int n = cJSON_GetArraySize(root);
    if (n < 514) { st = tensor_fail(STATUS_FORMAT, "%s: %d tokens, need the 512 byte tokens and 2 specials", label, n); goto done; }
    size_t bytes = 0;
    for (cJSON *e = root->child; e; e = e->next) bytes += strlen(e->string) + 1;
    t->n_vocab = n;
    t->arena = malloc(bytes);
    t->tokens = calloc((size_t)n, sizeof *t->tokens);
    t->token_len = calloc((size_t)n, sizeof *t->token_len);
    t->vocab_mask = table_size((size_t)n) - 1;
    t->vocab_slots = calloc(t->vocab_mask + 1, sizeof *t->vocab_slots);
    if (!t->arena || !t->tokens || !t->token_len || !t->vocab_slots) { st = tensor_fail(STATUS_OOM, "%s: out of memory", label); goto done; }
    char *p = t->arena;
    for (cJSON *e = root->child; e; e = e->next) {
        double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (!(v >= 0 && v < n && v == (double)(int)v)) {
            st = tensor_fail(STATUS_FORMAT, "%s: token \"%.60s\": id must be an integer in [0, %d)", label, e->string, n);
            goto done;
        }
        int id = (int)v;
        if (t->tokens[id]) {
            st = tensor_fail(STATUS_FORMAT, "%s: id %d used by both \"%.60s\" and \"%.60s\"", label, id, t->tokens[id], e->string);
            goto done;
        }
        size_t l = strlen(e->string);
        if (vocab_find(t, e->string, l) >= 0) {   /* cJSON keeps duplicate keys */
            st = tensor_fail(STATUS_FORMAT, "%s: token \"%.60s\" appears twice", label, e->string);
            goto done;
        }
        memcpy(p, e->string, l + 1);
        t->tokens[id] = p;
        t->token_len[id] = (uint32_t)l;
        p += l + 1;
        size_t h = hash_bytes(e->string, l) & t->vocab_mask;
        while (t->vocab_slots[h]) h = (h + 1) & t->vocab_mask;
        t->vocab_slots[h] = (uint32_t)id + 1;
    }
    /* the 256 byte-chars, alone and as word ends */
    for (int c = 0; c < BYTE_CHAR_END; c++) t->byte_of_char[c] = -1;
    for (int b = 0; b < 256; b++) {
        uint8_t u[8];
        int l = utf8_encode(clip_byte_to_unicode((uint8_t)b), u);
        t->byte_of_char[clip_byte_to_unicode((uint8_t)b)] = (int16_t)b;
        memcpy(u + l, "</w>", 4);
        t->byte_id[b] = vocab_find(t, (const char *)u, (size_t)l);
        t->byte_end_id[b] = vocab_find(t, (const char *)u, (size_t)l + 4);
        if (t->byte_id[b] < 0 || t->byte_end_id[b] < 0) {
            st = tensor_fail(STATUS_FORMAT, "%s: byte token \"%.*s%s\" (byte 0x%02X) missing", label, l, (const char *)u,
                             t->byte_id[b] < 0 ? "" : "</w>", b);
            goto done;
        }
    }
    t->bos = vocab_find(t, "<|startoftext|>", 15);
    t->eos = vocab_find(t, "<|endoftext|>", 13);
    if (t->bos < 0 || t->eos < 0)
        st = tensor_fail(STATUS_FORMAT, "%s: special token %s missing", label, t->bos < 0 ? "<|startoftext|>" : "<|endoftext|>");
done:
    cJSON_Delete(root);
    return st;
}

static enum status load_merges(struct clip_tokenizer *t, const char *txt, size_t len, const char *label)
{
    /* count lines to size the table; trailing blank lines are ignored (the reference strips) */
    size_t end = len;
    while (end > 0 && (txt[end - 1] == '\n' || txt[end - 1] == '\r' || txt[end - 1] == ' ' || txt[end - 1] == '\t')) end--;
    if (len == 0 || txt[0] != '#')
        return tensor_fail(STATUS_FORMAT, "%s:1: expected a \"#version\" header line", label);
    size_t lines = 1;
    for (size_t i = 0; i < end; i++) lines += txt[i] == '\n';
    size_t n = lines - 1 < CLIP_MAX_MERGES ? lines - 1 : CLIP_MAX_MERGES;
    t->merge_mask = table_size(n) - 1;
    t->merges = malloc((t->merge_mask + 1) * sizeof *t->merges);
    if (!t->merges) return tensor_fail(STATUS_OOM, "%s: out of memory", label);
    for (size_t i = 0; i <= t->merge_mask; i++) t->merges[i].rank = -1;
    const char *p = memchr(txt, '\n', end);
    int line = 1;
    for (size_t rank = 0; rank < n; rank++) {
        const char *s = p + 1, *e = memchr(s, '\n', (size_t)(txt + end - s));
        if (!e) e = txt + end;
        p = e;
        line++;
        /* two fields separated by whitespace (str.split()) */
        const char *f[3] = {0};
        size_t fl[3] = {0};
        int nf = 0;
        for (const char *q = s; q < e;) {
            if (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\v' || *q == '\f') { q++; continue; }
            const char *w = q;
            while (q < e && !(*q == ' ' || *q == '\t' || *q == '\r' || *q == '\v' || *q == '\f')) q++;
            if (nf < 3) { f[nf] = w; fl[nf] = (size_t)(q - w); }
            nf++;
        }
        if (nf != 2) return tensor_fail(STATUS_FORMAT, "%s:%d: expected two tokens, found %d", label, line, nf);
        char joined[512];
        if (fl[0] + fl[1] >= sizeof joined) return tensor_fail(STATUS_FORMAT, "%s:%d: merge too long", label, line);
        memcpy(joined, f[0], fl[0]);
        memcpy(joined + fl[0], f[1], fl[1]);
        int32_t a = vocab_find(t, f[0], fl[0]), b = vocab_find(t, f[1], fl[1]);
        int32_t m = vocab_find(t, joined, fl[0] + fl[1]);
        if (a < 0 || b < 0 || m < 0)
            return tensor_fail(STATUS_FORMAT, "%s:%d: \"%.*s\" is not in the vocabulary", label, line,
                               (int)(a < 0 ? fl[0] : b < 0 ? fl[1] : fl[0] + fl[1]), a < 0 ? f[0] : b < 0 ? f[1] : joined);
        uint64_t key = pair_key(a, b);
        size_t h = hash_u64(key) & t->merge_mask;
        while (t->merges[h].rank >= 0 && t->merges[h].key != key) h = (h + 1) & t->merge_mask;
        /* a repeated pair keeps its last rank, as the reference's dict does */
        t->merges[h] = (struct merge_slot){.key = key, .rank = (int32_t)rank, .merged = m};
    }
    t->n_merges = (int)n;
    return STATUS_OK;
}

struct clip_tokenizer *clip_tokenizer_from_memory(const char *vocab_json, size_t vocab_len, const char *vocab_label,
                                                  const char *merges_txt, size_t merges_len, const char *merges_label)
{
    if (!vocab_label) vocab_label = "vocab.json";
    if (!merges_label) merges_label = "merges.txt";
    if (!vocab_json || !merges_txt) { tensor_fail(STATUS_VALUE, "clip_tokenizer: NULL vocabulary or merges"); return NULL; }
    struct clip_tokenizer *t = calloc(1, sizeof *t);
    if (!t) { tensor_fail(STATUS_OOM, "clip_tokenizer: out of memory"); return NULL; }
    if (load_vocab(t, vocab_json, vocab_len, vocab_label) || load_merges(t, merges_txt, merges_len, merges_label)) {
        clip_tokenizer_free(t);
        return NULL;
    }
    return t;
}

struct clip_tokenizer *clip_tokenizer_load(const char *vocab_json_path, const char *merges_txt_path)
{
    if (!vocab_json_path || !merges_txt_path) { tensor_fail(STATUS_VALUE, "clip_tokenizer_load: NULL path"); return NULL; }
    size_t vl = 0, ml = 0;
    char *v = nn_file_read(vocab_json_path, (size_t)64 << 20, &vl);
    char *m = v ? nn_file_read(merges_txt_path, (size_t)64 << 20, &ml) : NULL;
    struct clip_tokenizer *t = m ? clip_tokenizer_from_memory(v, vl, vocab_json_path, m, ml, merges_txt_path) : NULL;
    free(v);
    free(m);
    return t;
}

/* BPE of one pre-token's bytes into w[0..n) (room for n ids); returns the piece count */
static size_t bpe_word(const struct clip_tokenizer *t, const uint8_t *bytes, size_t n, int32_t *w)
{
    for (size_t i = 0; i + 1 < n; i++) w[i] = t->byte_id[bytes[i]];
    w[n - 1] = t->byte_end_id[bytes[n - 1]];
    size_t m = n;
    while (m > 1) {
        /* the lowest-ranked adjacent pair ... */
        const struct merge_slot *best = NULL;
        int32_t a = 0, b = 0;
        for (size_t i = 0; i + 1 < m; i++) {
            const struct merge_slot *s = merge_find(t, w[i], w[i + 1]);
            if (s && (!best || s->rank < best->rank)) { best = s; a = w[i]; b = w[i + 1]; }
        }
        if (!best) break;
        /* ... merged wherever it occurs, left to right without overlap */
        size_t j = 0;
        for (size_t i = 0; i < m;) {
            if (i + 1 < m && w[i] == a && w[i + 1] == b) { w[j++] = best->merged; i += 2; }
            else w[j++] = w[i++];
        }
        m = j;
    }
    return m;
}

static bool match_literal(const uint32_t *s, size_t n, size_t i, const char *lit)
{
    size_t l = strlen(lit);
    if (n - i < l) return false;
    for (size_t k = 0; k < l; k++)
        if (!ci_eq(s[i + k], lit[k])) return false;
    return true;
}

/* the pre-token starting at s[i] (s[i] not skipped): its end, or i when s[i] starts none */
static size_t pretoken_end(const uint32_t *s, size_t n, size_t i)
{
    static const char *const lits[] = {"<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    for (size_t k = 0; k < NELEM(lits); k++)
        if (match_literal(s, n, i, lits[k])) return i + strlen(lits[k]);
    size_t j = i;
    if (is_letter(s[i])) {
        while (j < n && is_letter(s[j])) j++;
    } else if (is_number(s[i])) {
        j++;
    } else if (is_punct(s[i])) {
        while (j < n && is_punct(s[j])) j++;
    }
    return j;
}

/* ids of utf8 into ids[0..max); returns the total count, or -1. stop_at >= 0: stop once that
 * many ids are known (the count is then a lower bound) */
static int tokenize(const struct clip_tokenizer *t, const char *utf8, int32_t *ids, int max, int stop_at)
{
    if (!t || !utf8) { tensor_fail(STATUS_VALUE, "clip_tokenize: NULL tokenizer or text"); return -1; }
    if (max < 0 || (max > 0 && !ids)) { tensor_fail(STATUS_VALUE, "clip_tokenize: bad output buffer (max %d)", max); return -1; }
    struct cpbuf text = {0}, clean = {0};
    if (!uc_decode_text(utf8, "clip_tokenize", &text)) {
        free(text.v);
        return -1;
    }
    bool ok = clean_text(text.v, text.n, &clean);
    free(text.v);
    /* word bytes and their BPE pieces; a word of n bytes has at most n pieces */
    uint8_t *bytes = ok ? malloc(4 * clean.n + 1) : NULL;
    int32_t *w = ok ? malloc((4 * clean.n + 1) * sizeof *w) : NULL;
    ok = ok && bytes && w;
    int count = 0;
    for (size_t i = 0; ok && i < clean.n && (stop_at < 0 || count < stop_at);) {
        size_t e = pretoken_end(clean.v, clean.n, i);
        if (e == i) { i++; continue; }   /* whitespace, U+0345 */
        size_t nb = 0;
        for (size_t k = i; k < e; k++) nb += (size_t)utf8_encode(clean.v[k], bytes + nb);
        i = e;
        size_t np;
        /* the reference's BPE cache holds the two specials as themselves */
        if (nb == 15 && !memcmp(bytes, "<|startoftext|>", 15)) { w[0] = t->bos; np = 1; }
        else if (nb == 13 && !memcmp(bytes, "<|endoftext|>", 13)) { w[0] = t->eos; np = 1; }
        else np = bpe_word(t, bytes, nb, w);
        for (size_t k = 0; k < np; k++, count++)
            if (count < max) ids[count] = w[k];
    }
    free(bytes);
    free(w);
    free(clean.v);
    if (!ok) { tensor_fail(STATUS_OOM, "clip_tokenize: out of memory"); return -1; }
    return count;
}

int clip_tokenize(const struct clip_tokenizer *tok, const char *utf8, int32_t *ids, int max)
{
    return tokenize(tok, utf8, ids, max, -1);
}

enum status clip_tokenize_padded(const struct clip_tokenizer *tok, const char *utf8, int32_t *out, int length,
                                 int32_t pad)
{
    if (!out || length < 2) return tensor_fail(STATUS_VALUE, "clip_tokenize_padded: room for bos and eos is needed");
    int n = tokenize(tok, utf8, out + 1, length - 2, length - 2);
    if (n < 0) return tensor_status();
    if (n > length - 2) n = length - 2;
    out[0] = tok->bos;
    out[1 + n] = tok->eos;
    for (int i = 2 + n; i < length; i++) out[i] = pad;
    return STATUS_OK;
}

enum status clip_tokenize_77(const struct clip_tokenizer *tok, const char *utf8, int32_t out[CLIP_CONTEXT])
{
    if (!tok || !out) return tensor_fail(STATUS_VALUE, "clip_tokenize_77: NULL tokenizer or output");
    return clip_tokenize_padded(tok, utf8, out, CLIP_CONTEXT, tok->eos);
}

/* Python's bytes.decode("utf-8", errors="replace"): one U+FFFD per maximal invalid subpart */
static void utf8_decode_replace(const uint8_t *s, size_t n, struct bytebuf *o)
{
    static const uint8_t fffd[3] = {0xEF, 0xBF, 0xBD};
    for (size_t i = 0; i < n;) {
        uint8_t b = s[i];
        if (b < 0x80) { byte_push(o, s + i, 1); i++; continue; }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;   /* allowed range of the second byte */
        if (b >= 0xC2 && b <= 0xDF) need = 1;
        else if (b >= 0xE0 && b <= 0xEF) { need = 2; if (b == 0xE0) lo = 0xA0; if (b == 0xED) hi = 0x9F; }
        else if (b >= 0xF0 && b <= 0xF4) { need = 3; if (b == 0xF0) lo = 0x90; if (b == 0xF4) hi = 0x8F; }
        else { byte_push(o, fffd, 3); i++; continue; }
        size_t k = 1;
        for (; k <= need && i + k < n; k++) {
            uint8_t c = s[i + k];
            if (k == 1 ? (c < lo || c > hi) : (c & 0xC0) != 0x80) break;
        }
        if (k == need + 1) byte_push(o, s + i, k);
        else byte_push(o, fffd, 3);
        i += k;
    }
}

char *clip_decode(const struct clip_tokenizer *tok, const int32_t *ids, int n)
{
    if (!tok || n < 0 || (n > 0 && !ids)) { tensor_fail(STATUS_VALUE, "clip_decode: bad arguments"); return NULL; }
    struct bytebuf raw = {0}, text = {0};
    byte_push(&raw, "", 0);
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tok->n_vocab) {
            free(raw.v);
            tensor_fail(STATUS_VALUE, "clip_decode: id %d at position %d outside the vocabulary of %d", ids[i], i, tok->n_vocab);
            return NULL;
        }
        /* token string → byte-chars → bytes */
        const uint8_t *s = (const uint8_t *)tok->tokens[ids[i]];
        size_t l = tok->token_len[ids[i]];
        for (size_t k = 0; k < l;) {
            uint32_t c = 0;
            int cl = utf8_decode(s + k, l - k, &c);
            int byte = cl && c < BYTE_CHAR_END ? tok->byte_of_char[c] : -1;
            if (byte < 0) {
                free(raw.v);
                tensor_fail(STATUS_VALUE, "clip_decode: token %d (\"%.60s\") is not made of byte characters", ids[i], tok->tokens[ids[i]]);
                return NULL;
            }
            if (byte == 0) {   /* no text tokenizes to it; a C string cannot hold it */
                free(raw.v);
                tensor_fail(STATUS_VALUE, "clip_decode: token %d at position %d stands for a NUL byte", ids[i], i);
                return NULL;
            }
            uint8_t by = (uint8_t)byte;
            byte_push(&raw, &by, 1);
            k += (size_t)cl;
        }
    }
    utf8_decode_replace((const uint8_t *)raw.v, raw.n, &text);
    byte_push(&text, "", 0);
    bool oom = raw.oom || text.oom;
    free(raw.v);
    if (oom) { free(text.v); tensor_fail(STATUS_OOM, "clip_decode: out of memory"); return NULL; }
    /* "</w>" → " " (ASCII, so replacing in the UTF-8 text equals Python's str.replace) */
    char *o = text.v;
    size_t j = 0;
    for (size_t i = 0; i < text.n;) {
        if (i + 4 <= text.n && !memcmp(text.v + i, "</w>", 4)) { o[j++] = ' '; i += 4; }
        else o[j++] = text.v[i++];
    }
    o[j] = 0;
    return o;
}
