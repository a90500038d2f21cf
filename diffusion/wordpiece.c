/* wordpiece.c — BERT's uncased WordPiece tokenizer (see wordpiece.h for the algorithm). Text is
 * handled as code points, as the reference's Python strings; a word goes back to UTF-8 for the
 * vocabulary lookups, which use an open-addressing table of the token strings. */
#include "diffusion/wordpiece.h"
#include "diffusion/unicode.h"
#include "nn/file.h"

#include <stdlib.h>
#include <string.h>

#include "diffusion/wordpiece_tables.h"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_WORD_CHARS 100   /* WordpieceTokenizer's max_input_chars_per_word */
#define MAX_SPECIALS 16

struct wp_tokenizer {
    char **tok;   /* id -> token (owned) */
    int n, cap;
    int32_t *slot;   /* hash slots: an id or -1 */
    size_t nslot;
    int32_t special[MAX_SPECIALS];
    int nspecial;
    int32_t pad, unk, cls, sep;
};

/* ---------------------------------------------------------------- vocabulary */

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

/* the slot of token s[0..n): where it is, or the empty slot where it would go */
static size_t slot_of(const struct wp_tokenizer *t, const char *s, size_t n)
{
    size_t i = (size_t)fnv1a(s, n) & (t->nslot - 1);
    for (;; i = (i + 1) & (t->nslot - 1)) {
        const int32_t id = t->slot[i];
        if (id < 0 || (strlen(t->tok[id]) == n && !memcmp(t->tok[id], s, n))) return i;
    }
}

static int32_t find(const struct wp_tokenizer *t, const char *s, size_t n)
{
    return t->slot[slot_of(t, s, n)];
}

/* append token s[0..n) as the next id (not in the table yet) */
static enum status push_token(struct wp_tokenizer *t, const char *s, size_t n, const char *label)
{
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 1024;
        char **v = realloc(t->tok, sizeof *v * (size_t)cap);
        if (!v) return tensor_fail(STATUS_OOM, "%s: out of memory", label);
        t->tok = v, t->cap = cap;
    }
    if ((size_t)t->n + 1 > t->nslot / 2) {   /* keep the table at most half full */
        size_t ns = t->nslot ? 2 * t->nslot : 4096;
        int32_t *sl = malloc(sizeof *sl * ns);
        if (!sl) return tensor_fail(STATUS_OOM, "%s: out of memory", label);
        for (size_t i = 0; i < ns; i++) sl[i] = -1;
        int32_t *old = t->slot;
        t->slot = sl, t->nslot = ns;
        for (int id = 0; id < t->n; id++) t->slot[slot_of(t, t->tok[id], strlen(t->tok[id]))] = id;
        free(old);
    }
    char *c = malloc(n + 1);
    if (!c) return tensor_fail(STATUS_OOM, "%s: out of memory", label);
    memcpy(c, s, n);
    c[n] = 0;
    t->tok[t->n] = c;
    t->slot[slot_of(t, s, n)] = t->n;
    t->n++;
    return STATUS_OK;
}

void wp_tokenizer_free(struct wp_tokenizer *t)
{
    if (!t) return;
    for (int i = 0; i < t->n; i++) free(t->tok[i]);
    free(t->tok);
    free(t->slot);
    free(t);
}

int wp_vocab_size(const struct wp_tokenizer *t) { return t ? t->n : 0; }

int32_t wp_token_id(const struct wp_tokenizer *t, const char *token)
{
    return t && token && t->nslot ? find(t, token, strlen(token)) : -1;
}

static enum status add_special_id(struct wp_tokenizer *t, int32_t id, const char *label)
{
    if (t->nspecial == MAX_SPECIALS) return tensor_fail(STATUS_VALUE, "%s: more than %d special tokens", label, MAX_SPECIALS);
    t->special[t->nspecial++] = id;
    return STATUS_OK;
}

int32_t wp_add_special(struct wp_tokenizer *t, const char *token)
{
    if (!t || !token || !*token) {
        tensor_fail(STATUS_VALUE, "wp_add_special: a tokenizer and a non-empty token are needed");
        return -1;
    }
    int32_t id = wp_token_id(t, token);
    if (id < 0) {
        if (push_token(t, token, strlen(token), "wp_add_special")) return -1;
        id = t->n - 1;
    }
    for (int i = 0; i < t->nspecial; i++)
        if (t->special[i] == id) return id;
    return add_special_id(t, id, "wp_add_special") ? -1 : id;
}

struct wp_tokenizer *wp_tokenizer_from_memory(const char *vocab_txt, size_t len, const char *label)
{
    struct wp_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        tensor_fail(STATUS_OOM, "%s: out of memory", label);
        return NULL;
    }
    enum status s = STATUS_OK;
    /* readlines() and rstrip("\n"): a last line without a newline still counts */
    for (size_t i = 0; !s && i < len;) {
        const char *nl = memchr(vocab_txt + i, '\n', len - i);
        const size_t e = nl ? (size_t)(nl - vocab_txt) : len;
        int32_t seen = t->nslot ? find(t, vocab_txt + i, e - i) : -1;
        if (memchr(vocab_txt + i, 0, e - i))
            s = tensor_fail(STATUS_FORMAT, "%s: line %d holds a NUL byte", label, t->n + 1);
        else if (seen >= 0)   /* the reference's ids would no longer be line numbers */
            s = tensor_fail(STATUS_FORMAT, "%s: line %d repeats the token '%s' of line %d", label, t->n + 1,
                            t->tok[seen], seen + 1);
        else s = push_token(t, vocab_txt + i, e - i, label);
        i = e + 1;
    }
    static const char *const required[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]"};
    int32_t *ids[] = {&t->pad, &t->unk, &t->cls, &t->sep};
    for (size_t k = 0; !s && k < NELEM(required); k++) {
        *ids[k] = wp_token_id(t, required[k]);
        if (*ids[k] < 0) s = tensor_fail(STATUS_FORMAT, "%s: no %s token in the vocabulary", label, required[k]);
        else s = add_special_id(t, *ids[k], label);
    }
    const int32_t mask = wp_token_id(t, "[MASK]");
    if (!s && mask >= 0) s = add_special_id(t, mask, label);
    if (s) {
        wp_tokenizer_free(t);
        return NULL;
    }
    return t;
}

struct wp_tokenizer *wp_tokenizer_load(const char *vocab_txt_path)
{
    size_t len;
    char *txt = nn_file_read(vocab_txt_path, (size_t)64 << 20, &len);
    if (!txt) return NULL;
    struct wp_tokenizer *t = wp_tokenizer_from_memory(txt, len, vocab_txt_path);
    free(txt);
    return t;
}

/* ---------------------------------------------------------------- character classes */

static bool in_table(const struct wp_range *r, size_t n, uint32_t c)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        const size_t mid = (lo + hi) / 2;
        if (c < r[mid].lo) hi = mid;
        else if (c > r[mid].hi) lo = mid + 1;
        else return true;
    }
    return false;
}

#define IN(table, c) in_table(table, NELEM(table), c)

static bool is_control(uint32_t c) { return IN(wp_control, c); }   /* \t \n \r are not in it */
static bool is_whitespace(uint32_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || IN(wp_zs, c); }
static bool is_punct(uint32_t c)
{
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126) ||
           IN(wp_punct, c);
}
static bool is_mark(uint32_t c) { return IN(wp_mn, c); }

/* _is_chinese_char: the CJK Unified Ideographs blocks, not Japanese or Korean scripts */
static bool is_cjk(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

static int ccc_of(uint32_t c)   /* canonical combining class of a code point that is not Mn */
{
    for (size_t i = 0; i < NELEM(wp_ccc); i++)
        if (wp_ccc[i].cp == c) return wp_ccc[i].ccc;
    return 0;
}

/* NFD of c without its marks (Mn), appended to out */
static void push_stripped(struct cpbuf *out, uint32_t c)
{
    if (c >= 0xAC00 && c <= 0xD7A3) {   /* Hangul syllable: L V [T] jamo (Unicode 3.12) */
        const uint32_t s = c - 0xAC00;
        uc_cp_push(out, 0x1100 + s / 588);
        uc_cp_push(out, 0x1161 + (s % 588) / 28);
        if (s % 28) uc_cp_push(out, 0x11A7 + s % 28);
        return;
    }
    size_t lo = 0, hi = NELEM(wp_nfd);
    while (lo < hi) {
        const size_t mid = (lo + hi) / 2;
        if (c < wp_nfd[mid].cp) hi = mid;
        else if (c > wp_nfd[mid].cp) lo = mid + 1;
        else {
            for (int k = 0; k < wp_nfd[mid].n; k++) {
                const uint32_t d = wp_nfd_pool[wp_nfd[mid].at + k];
                if (!is_mark(d)) uc_cp_push(out, d);
            }
            return;
        }
    }
    if (!is_mark(c)) uc_cp_push(out, c);
}

/* ---------------------------------------------------------------- tokenize */

/* how many code points of s[0..n) the UTF-8 string p matches from the start (stops at a
 * difference or at the end of either) */
static size_t match_len(const char *p, const uint32_t *s, size_t n, bool *whole)
{
    size_t m = 0, j = 0;
    const size_t pl = strlen(p);
    while (m < pl && j < n) {
        uint32_t c;
        const int l = uc_utf8_decode((const uint8_t *)p + m, pl - m, &c);
        if (!l || c != s[j]) break;
        m += (size_t)l, j++;
    }
    *whole = m == pl;
    return j;
}

static bool same_text(const char *p, const uint32_t *s, size_t n)
{
    bool whole;
    return match_len(p, s, n, &whole) == n && whole;
}

struct out { int32_t *ids; int max, n; };

static void emit(struct out *o, int32_t id)
{
    if (o->n < o->max) o->ids[o->n] = id;
    o->n++;
}

/* WordpieceTokenizer on one punctuation-free piece (code points w[0..n)) */
static bool wordpiece(const struct wp_tokenizer *t, const uint32_t *w, size_t n, struct out *o)
{
    if (n > MAX_WORD_CHARS) {
        emit(o, t->unk);
        return true;
    }
    /* the word's UTF-8 with each code point's byte offset; a candidate piece is copied after "##"
     * when it continues the word */
    char buf[4 * MAX_WORD_CHARS], piece[2 + 4 * MAX_WORD_CHARS] = "##";
    size_t off[MAX_WORD_CHARS + 1];
    off[0] = 0;
    for (size_t i = 0; i < n; i++) off[i + 1] = off[i] + (size_t)uc_utf8_encode(w[i], (uint8_t *)buf + off[i]);
    int32_t pieces[MAX_WORD_CHARS];
    int np = 0;
    for (size_t start = 0; start < n;) {
        int32_t id = -1;
        size_t end = n;
        for (; end > start; end--) {
            const size_t len = off[end] - off[start];
            if (!start) id = find(t, buf, len);
            else memcpy(piece + 2, buf + off[start], len), id = find(t, piece, len + 2);
            if (id >= 0) break;
        }
        if (id < 0) {   /* a piece no token covers: the whole word is unknown */
            emit(o, t->unk);
            return true;
        }
        pieces[np++] = id;
        start = end;
    }
    for (int i = 0; i < np; i++) emit(o, pieces[i]);
    return true;
}

/* BasicTokenizer on a text without special tokens, then WordPiece */
static bool basic(const struct wp_tokenizer *t, const uint32_t *s, size_t n, struct out *o)
{
    struct cpbuf a = {0}, w = {0}, x = {0};
    for (size_t i = 0; i < n; i++) {   /* _clean_text, _tokenize_chinese_chars */
        const uint32_t c = s[i];
        if (c == 0 || c == 0xFFFD || is_control(c)) continue;
        if (is_whitespace(c)) uc_cp_push(&a, ' ');
        else if (is_cjk(c)) uc_cp_push(&a, ' '), uc_cp_push(&a, c), uc_cp_push(&a, ' ');
        else uc_cp_push(&a, c);
    }
    for (size_t i = 0; i < a.n && !a.oom;) {
        while (i < a.n && uc_is_pyspace(a.v[i])) i++;
        size_t e = i;
        while (e < a.n && !uc_is_pyspace(a.v[e])) e++;
        if (e == i) break;
        /* a special token made whole by the cleaning stays whole (never_split) */
        int32_t whole = -1;
        for (int k = 0; whole < 0 && k < t->nspecial; k++)
            if (same_text(t->tok[t->special[k]], a.v + i, e - i)) whole = t->special[k];
        if (whole >= 0) {
            emit(o, whole);
            i = e;
            continue;
        }
        /* lower(), then NFD without the marks */
        w.n = 0;
        for (size_t k = i; k < e; k++) {
            uint32_t l[2];
            const int m = uc_py_lower(a.v + i, e - i, k - i, l);
            for (int j = 0; j < m; j++) push_stripped(&w, l[j]);
        }
        /* the canonical order of what is left: runs of combining characters by class (stable) */
        for (size_t k = 1; k < w.n; k++) {
            const int ck = ccc_of(w.v[k]);
            for (size_t j = k; ck && j > 0 && ccc_of(w.v[j - 1]) > ck; j--) {
                const uint32_t tmp = w.v[j];
                w.v[j] = w.v[j - 1], w.v[j - 1] = tmp;
            }
        }
        /* _run_split_on_punc, then WordPiece on each piece */
        x.n = 0;
        for (size_t k = 0; k <= w.n && !w.oom; k++) {
            if (k == w.n || is_punct(w.v[k])) {
                if (x.n) wordpiece(t, x.v, x.n, o);
                x.n = 0;
                if (k < w.n) wordpiece(t, &w.v[k], 1, o);
            } else {
                uc_cp_push(&x, w.v[k]);
            }
        }
        i = e;
    }
    const bool ok = !a.oom && !w.oom && !x.oom;
    free(a.v);
    free(w.v);
    free(x.v);
    return ok;
}

int wp_tokenize(const struct wp_tokenizer *t, const char *utf8, int32_t *ids, int max)
{
    if (!t || !utf8) {
        tensor_fail(STATUS_VALUE, "wp_tokenize: NULL tokenizer or text");
        return -1;
    }
    if (max < 0 || (max > 0 && !ids)) {
        tensor_fail(STATUS_VALUE, "wp_tokenize: bad output buffer (max %d)", max);
        return -1;
    }
    struct cpbuf s = {0};
    if (!uc_decode_text(utf8, "wp_tokenize", &s)) {
        free(s.v);
        return -1;
    }
    /* the special tokens, cut out where they stand (the longest at the earliest place) */
    struct out o = {ids, max, 0};
    bool ok = true;
    size_t from = 0;
    for (size_t i = 0; ok && i < s.n; i++) {
        int32_t best = -1;
        size_t best_len = 0;
        for (int k = 0; k < t->nspecial; k++) {
            bool whole;
            const size_t m = match_len(t->tok[t->special[k]], s.v + i, s.n - i, &whole);
            if (whole && m > best_len) best = t->special[k], best_len = m;
        }
        if (best < 0) continue;
        ok = basic(t, s.v + from, i - from, &o);
        emit(&o, best);
        i += best_len - 1;
        from = i + 1;
    }
    if (ok && from < s.n) ok = basic(t, s.v + from, s.n - from, &o);   /* s.v is NULL for an empty text */
    free(s.v);
    if (!ok) {
        tensor_fail(STATUS_OOM, "wp_tokenize: out of memory");
        return -1;
    }
    return o.n;
}

enum status wp_encode(const struct wp_tokenizer *t, const char *utf8, int32_t *ids, int32_t *mask, int length)
{
    if (!t || !ids || length < 2) return tensor_fail(STATUS_VALUE, "wp_encode: a tokenizer and room for [CLS] and [SEP] are needed");
    const int n = wp_tokenize(t, utf8, ids + 1, length - 2);
    if (n < 0) return tensor_status();
    const int k = n < length - 2 ? n : length - 2;
    ids[0] = t->cls;
    ids[1 + k] = t->sep;
    for (int i = 2 + k; i < length; i++) ids[i] = t->pad;
    for (int i = 0; mask && i < length; i++) mask[i] = i < 2 + k;
    return STATUS_OK;
}
