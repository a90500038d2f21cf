/* dataset.c — the emoji dataset file, its FreeType renderer and the BPE learner (see dataset.h). */
#include "draft/dataset.h"
#include "nn/file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diffusion/tokenizer.h"

#ifdef DRAFT_HAVE_FREETYPE
#include <ft2build.h>
#include FT_FREETYPE_H
#include FT_TRUETYPE_TABLES_H
#include FT_TRUETYPE_TAGS_H
#endif

static const char magic[8] = {'D', 'R', 'A', 'F', 'T', 'E', 'M', 'J'};
enum { HEADER_BYTES = 32 };

/* ---------------------------------------------------------------- small helpers */

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}
#define FNV_INIT 0xcbf29ce484222325ull

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get32(const uint8_t *p) { return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t get64(const uint8_t *p) { return get32(p) | (uint64_t)get32(p + 4) << 32; }

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *r = malloc(n);
    if (r) memcpy(r, s, n);
    return r;
}

/* whole file into memory; NULL with a message (and the hint: how to make the file) */
static uint8_t *read_all(const char *path, size_t *len, const char *hint)
{
    char *buf = nn_file_read(path, (size_t)1 << 34, len);
    if (!buf && hint) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", tensor_error());
        tensor_fail(tensor_status(), "%s%s", msg, hint);
    }
    return (uint8_t *)buf;
}

static enum status write_atomic(const char *path, const void *const *parts, const size_t *lens, int n_parts)
{
    return nn_file_write_atomic(path, n_parts, parts, lens);
}

/* ---------------------------------------------------------------- dataset */

void draft_dataset_free(struct draft_dataset *d)
{
    if (!d) return;
    char **lists[4] = {d->captions, d->groups, d->subgroups, d->codes};
    for (int k = 0; k < 4; k++) {
        if (!lists[k]) continue;
        for (int i = 0; i < d->n; i++) free(lists[k][i]);
        free(lists[k]);
    }
    free(d->pixels);
    memset(d, 0, sizeof *d);
}

static size_t pixel_bytes(int n, int size) { return (size_t)n * (size_t)size * (size_t)size * 3; }

enum status draft_dataset_init(struct draft_dataset *d, int n, int size)
{
    memset(d, 0, sizeof *d);
    if (n < 0 || n > DRAFT_DATASET_MAX_ITEMS || size < 1 || size > DRAFT_DATASET_MAX_SIZE)
        return tensor_fail(STATUS_VALUE, "draft_dataset_init: n=%d (0..%d) size=%d (1..%d)", n, DRAFT_DATASET_MAX_ITEMS,
                           size, DRAFT_DATASET_MAX_SIZE);
    d->size = size;
    d->pixels = calloc(pixel_bytes(n, size) + 1, 1);
    char ***lists[4] = {&d->captions, &d->groups, &d->subgroups, &d->codes};
    for (int k = 0; k < 4; k++) *lists[k] = calloc((size_t)n + 1, sizeof(char *));
    bool ok = d->pixels && d->captions && d->groups && d->subgroups && d->codes;
    d->n = n;   /* free() walks n entries: all NULL until filled */
    for (int k = 0; k < 4 && ok; k++)
        for (int i = 0; i < n && ok; i++) ok = ((*lists[k])[i] = xstrdup("")) != NULL;
    if (!ok) {
        draft_dataset_free(d);
        return tensor_fail(STATUS_OOM, "draft_dataset_init: out of memory for %d items of %dx%d", n, size, size);
    }
    return STATUS_OK;
}

enum status draft_dataset_set_text(struct draft_dataset *d, int i, const char *caption, const char *group,
                                   const char *subgroup, const char *codes)
{
    if (i < 0 || i >= d->n) return tensor_fail(STATUS_VALUE, "draft_dataset_set_text: item %d of %d", i, d->n);
    char **slots[4] = {&d->captions[i], &d->groups[i], &d->subgroups[i], &d->codes[i]};
    const char *v[4] = {caption, group, subgroup, codes};
    for (int k = 0; k < 4; k++) {
        char *c = xstrdup(v[k] ? v[k] : "");
        if (!c) return tensor_fail(STATUS_OOM, "draft_dataset_set_text: out of memory");
        free(*slots[k]);
        *slots[k] = c;
    }
    return STATUS_OK;
}

enum status draft_dataset_save(const struct draft_dataset *d, const char *path)
{
    if (d->n < 0 || d->n > DRAFT_DATASET_MAX_ITEMS || d->size < 1 || d->size > DRAFT_DATASET_MAX_SIZE)
        return tensor_fail(STATUS_VALUE, "draft_dataset_save %s: n=%d size=%d out of range", path, d->n, d->size);
    size_t sbytes = 0;
    char **lists[4] = {d->captions, d->groups, d->subgroups, d->codes};
    for (int i = 0; i < d->n; i++)
        for (int k = 0; k < 4; k++) sbytes += strlen(lists[k][i]) + 1;
    char *strings = malloc(sbytes + 1);
    if (!strings) return tensor_fail(STATUS_OOM, "draft_dataset_save %s: out of memory", path);
    size_t o = 0;
    for (int i = 0; i < d->n; i++)
        for (int k = 0; k < 4; k++) {
            size_t l = strlen(lists[k][i]) + 1;
            memcpy(strings + o, lists[k][i], l);
            o += l;
        }
    uint8_t hdr[HEADER_BYTES] = {0}, tail[8];
    memcpy(hdr, magic, 8);
    put32(hdr + 8, DRAFT_DATASET_VERSION);
    put32(hdr + 12, (uint32_t)d->n);
    put32(hdr + 16, (uint32_t)d->size);
    put32(hdr + 20, 3);
    put64(hdr + 24, sbytes);
    size_t pb = pixel_bytes(d->n, d->size);
    uint64_t h = fnv1a(fnv1a(fnv1a(FNV_INIT, hdr, sizeof hdr), d->pixels, pb), strings, sbytes);
    put64(tail, h);
    const void *parts[4] = {hdr, d->pixels, strings, tail};
    size_t lens[4] = {sizeof hdr, pb, sbytes, sizeof tail};
    enum status s = write_atomic(path, parts, lens, 4);
    free(strings);
    return s;
}

enum status draft_dataset_load(struct draft_dataset *d, const char *path)
{
    memset(d, 0, sizeof *d);
    size_t len;
    uint8_t *buf = read_all(path, &len, " (build it with draft-emoji-data)");
    if (!buf) return tensor_status();
    enum status s = STATUS_FORMAT;
    if (len < HEADER_BYTES + 8 || memcmp(buf, magic, 8) != 0) {
        tensor_fail(s, "%s: not a dataset file (%zu bytes, expected the magic \"DRAFTEMJ\" and at least %d bytes)", path,
                    len, HEADER_BYTES + 8);
        goto out;
    }
    uint32_t ver = get32(buf + 8), n = get32(buf + 12), size = get32(buf + 16), ch = get32(buf + 20);
    uint64_t sbytes = get64(buf + 24);
    if (ver != DRAFT_DATASET_VERSION) {
        tensor_fail(s, "%s: format version %u, this reader knows %d (rebuild with draft-emoji-data)", path, ver,
                    DRAFT_DATASET_VERSION);
        goto out;
    }
    if (n > DRAFT_DATASET_MAX_ITEMS || size < 1 || size > DRAFT_DATASET_MAX_SIZE || ch != 3) {
        tensor_fail(s, "%s: header n=%u size=%u channels=%u; expected n <= %d, size 1..%d, 3 channels", path, n, size,
                    ch, DRAFT_DATASET_MAX_ITEMS, DRAFT_DATASET_MAX_SIZE);
        goto out;
    }
    size_t pb = pixel_bytes((int)n, (int)size);   /* < 2^22 * 2^20 * 3: no overflow in 64 bits */
    if (sbytes > len || (uint64_t)HEADER_BYTES + pb + sbytes + 8 != len) {
        tensor_fail(s, "%s: %zu bytes, but the header (n=%u, %ux%u, %llu string bytes) needs %llu: truncated or corrupt",
                    path, len, n, size, size, (unsigned long long)sbytes,
                    (unsigned long long)(HEADER_BYTES + pb + (sbytes > len ? 0 : sbytes) + 8));
        goto out;
    }
    if (fnv1a(FNV_INIT, buf, len - 8) != get64(buf + len - 8)) {
        tensor_fail(s, "%s: checksum mismatch: the file is corrupt (rebuild with draft-emoji-data)", path);
        goto out;
    }
    const char *str = (const char *)buf + HEADER_BYTES + pb;
    if (sbytes == 0 ? n != 0 : str[sbytes - 1] != 0) {
        tensor_fail(s, "%s: string table does not end with a NUL", path);
        goto out;
    }
    size_t count = 0;
    for (size_t i = 0; i < sbytes; i++) count += str[i] == 0;
    if (count != 4 * (size_t)n) {
        tensor_fail(s, "%s: string table has %zu strings, expected 4 per item = %u", path, count, 4 * n);
        goto out;
    }
    if ((s = draft_dataset_init(d, (int)n, (int)size)) != STATUS_OK) goto out;
    memcpy(d->pixels, buf + HEADER_BYTES, pb);
    for (uint32_t i = 0; i < n; i++) {
        const char *v[4];
        for (int k = 0; k < 4; k++) {
            v[k] = str;
            str += strlen(str) + 1;
        }
        if ((s = draft_dataset_set_text(d, (int)i, v[0], v[1], v[2], v[3])) != STATUS_OK) {
            draft_dataset_free(d);
            goto out;
        }
    }
    s = STATUS_OK;
out:
    free(buf);
    return s;
}

struct tensor *draft_dataset_batch(const struct draft_dataset *d, int n, const int *indices, enum dtype dt)
{
    if (dt != DTYPE_F32 && dt != DTYPE_F64 && dt != DTYPE_F16 && dt != DTYPE_BF16) {
        tensor_fail(STATUS_DTYPE, "draft_dataset_batch: dtype %s, expected a float dtype", dtype_name(dt));
        return NULL;
    }
    if (n < 1 || !indices) {
        tensor_fail(STATUS_VALUE, "draft_dataset_batch: batch of %d items", n);
        return NULL;
    }
    for (int b = 0; b < n; b++)
        if (indices[b] < 0 || indices[b] >= d->n) {
            tensor_fail(STATUS_VALUE, "draft_dataset_batch: index %d (position %d) outside 0..%d", indices[b], b, d->n - 1);
            return NULL;
        }
    int64_t S = d->size, plane = S * S;
    double *v = malloc(sizeof(double) * (size_t)n * 3 * (size_t)plane);
    if (!v) {
        tensor_fail(STATUS_OOM, "draft_dataset_batch: out of memory for %d items", n);
        return NULL;
    }
    for (int b = 0; b < n; b++) {   /* HWC bytes -> CHW */
        const uint8_t *px = d->pixels + (size_t)indices[b] * (size_t)plane * 3;
        for (int c = 0; c < 3; c++)
            for (int64_t p = 0; p < plane; p++) v[((int64_t)b * 3 + c) * plane + p] = px[p * 3 + c] / 127.5 - 1.0;
    }
    /* own scope: the f64 temporary belongs to it, whether or not the caller has one open */
    tensor_scope_begin();
    struct tensor *t = tensor_from_data(DTYPE_F64, 4, (int64_t[]){n, 3, S, S}, v);
    free(v);
    return tensor_scope_return(t && dt != DTYPE_F64 ? tensor_to_dtype(t, dt) : t);
}

bool draft_dataset_is_heldout(const char *caption, int modulus)
{
    return modulus >= 2 && fnv1a(FNV_INIT, caption, strlen(caption)) % (uint64_t)modulus == 0;
}

enum status draft_dataset_split(const struct draft_dataset *d, int modulus, int **train, int *n_train, int **held,
                                int *n_held)
{
    *train = *held = NULL;
    *n_train = *n_held = 0;
    if (modulus < 2) return tensor_fail(STATUS_VALUE, "draft_dataset_split: modulus %d, expected >= 2", modulus);
    int *tr = malloc(sizeof(int) * ((size_t)d->n + 1)), *he = malloc(sizeof(int) * ((size_t)d->n + 1));
    if (!tr || !he) {
        free(tr);
        free(he);
        return tensor_fail(STATUS_OOM, "draft_dataset_split: out of memory");
    }
    for (int i = 0; i < d->n; i++) {
        if (draft_dataset_is_heldout(d->captions[i], modulus)) he[(*n_held)++] = i;
        else tr[(*n_train)++] = i;
    }
    if (*n_train) *train = tr; else free(tr);
    if (*n_held) *held = he; else free(he);
    return STATUS_OK;
}

/* ---------------------------------------------------------------- emoji-test.txt */

void draft_emoji_list_free(struct draft_emoji *e, int n)
{
    if (!e) return;
    for (int i = 0; i < n; i++) {
        free(e[i].name);
        free(e[i].group);
        free(e[i].subgroup);
    }
    free(e);
}

/* trimmed copy of [a, b) */
static char *trimdup(const char *a, const char *b)
{
    while (a < b && (*a == ' ' || *a == '\t')) a++;
    while (b > a && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\r')) b--;
    char *r = malloc((size_t)(b - a) + 1);
    if (r) {
        memcpy(r, a, (size_t)(b - a));
        r[b - a] = 0;
    }
    return r;
}

enum status draft_emoji_list_load(const char *path, struct draft_emoji **out, int *n_out, int *n_lines_fq)
{
    *out = NULL;
    *n_out = 0;
    if (n_lines_fq) *n_lines_fq = 0;
    size_t len;
    char *buf = (char *)read_all(path, &len, " (Debian package unicode-data: apt-get install unicode-data)");
    if (!buf) return tensor_status();
    struct draft_emoji *v = NULL;
    int n = 0, cap = 0, lineno = 0, fq = 0;
    char *group = xstrdup(""), *subgroup = xstrdup("");
    enum status s = group && subgroup ? STATUS_OK : tensor_fail(STATUS_OOM, "%s: out of memory", path);
    for (char *line = buf; s == STATUS_OK && line < buf + len;) {
        char *eol = memchr(line, '\n', (size_t)(buf + len - line));
        if (!eol) eol = buf + len;
        *eol = 0;
        lineno++;
        char **hdr = !strncmp(line, "# group:", 8) ? &group : !strncmp(line, "# subgroup:", 11) ? &subgroup : NULL;
        if (hdr) {
            free(*hdr);
            *hdr = trimdup(strchr(line, ':') + 1, eol);
            if (!*hdr) s = tensor_fail(STATUS_OOM, "%s: out of memory", path);
        } else if (line[0] != '#' && line[0] != 0) {
            char *semi = strchr(line, ';'), *hash = strchr(line, '#');
            if (!semi || !hash || hash < semi) {
                s = tensor_fail(STATUS_FORMAT, "%s:%d: expected \"code points ; status # emoji name\"", path, lineno);
                break;
            }
            char *st = semi + 1;
            while (*st == ' ') st++;
            if (strncmp(st, "fully-qualified", 15) != 0 || (st[15] != ' ' && st[15] != '\t' && st[15] != '#')) {
                line = eol + 1;
                continue;
            }
            fq++;
            struct draft_emoji e = {0};
            bool skin = false;
            for (char *p = line; p < semi;) {
                while (p < semi && *p == ' ') p++;
                if (p >= semi) break;
                char *end;
                unsigned long cp = strtoul(p, &end, 16);
                if (end == p || cp > 0x10FFFF || e.n_cps == DRAFT_EMOJI_MAX_CPS) {
                    s = tensor_fail(STATUS_FORMAT, "%s:%d: bad code point list (hex, at most %d)", path, lineno,
                                    DRAFT_EMOJI_MAX_CPS);
                    break;
                }
                skin |= cp >= 0x1F3FB && cp <= 0x1F3FF;
                e.cps[e.n_cps++] = (uint32_t)cp;
                p = end;
            }
            if (s) break;
            /* "# 😀 E1.0 grinning face": the name follows the version token */
            char *c = hash + 1;
            while (*c == ' ') c++;
            while (*c && *c != ' ') c++;   /* the emoji itself */
            while (*c == ' ') c++;
            if (*c != 'E' || !strchr(c, ' ') || e.n_cps == 0) {
                s = tensor_fail(STATUS_FORMAT, "%s:%d: expected \"# <emoji> E<version> <name>\" after the status", path,
                                lineno);
                break;
            }
            c = strchr(c, ' ');
            if (skin) {
                line = eol + 1;
                continue;
            }
            if (n == cap) {
                cap = cap ? 2 * cap : 512;
                struct draft_emoji *nv = realloc(v, sizeof *v * (size_t)cap);
                if (!nv) {
                    s = tensor_fail(STATUS_OOM, "%s: out of memory", path);
                    break;
                }
                v = nv;
            }
            e.name = trimdup(c, eol);
            e.group = xstrdup(group);
            e.subgroup = xstrdup(subgroup);
            v[n++] = e;
            if (!e.name || !e.group || !e.subgroup) s = tensor_fail(STATUS_OOM, "%s: out of memory", path);
        }
        line = eol + 1;
    }
    free(group);
    free(subgroup);
    free(buf);
    if (s == STATUS_OK && n == 0) s = tensor_fail(STATUS_FORMAT, "%s: no fully-qualified emoji found", path);
    if (s) {
        draft_emoji_list_free(v, n);
        return s;
    }
    *out = v;
    *n_out = n;
    if (n_lines_fq) *n_lines_fq = fq;
    return STATUS_OK;
}

/* ---------------------------------------------------------------- FreeType + GSUB ligatures */

#ifdef DRAFT_HAVE_FREETYPE

struct lig {   /* one ligature: first glyph, the rest, the result */
    uint16_t first, result;
    int n_rest;
    const uint8_t *rest;   /* n_rest big-endian u16 inside gsub */
};

struct draft_emoji_font {
    FT_Library lib;
    FT_Face face;
    uint8_t *gsub;
    FT_ULong gsub_len;
    /* per type-4 lookup (in LookupList order), its ligatures in table order */
    int n_lookups;
    struct lig **ligs;
    int *n_ligs;
    int canvas;   /* square canvas side in strike pixels */
};

static unsigned be16(const struct draft_emoji_font *f, size_t off, bool *ok)
{
    if (off + 2 > f->gsub_len) {
        *ok = false;
        return 0;
    }
    return (unsigned)f->gsub[off] << 8 | f->gsub[off + 1];
}

static uint32_t be32(const struct draft_emoji_font *f, size_t off, bool *ok)
{
    return (uint32_t)be16(f, off, ok) << 16 | be16(f, off + 2, ok);
}

/* the coverage table's glyphs, in coverage-index order */
static int coverage_glyphs(const struct draft_emoji_font *f, size_t off, uint16_t **out, bool *ok)
{
    unsigned fmt = be16(f, off, ok), cnt = be16(f, off + 2, ok);
    uint16_t *g = NULL;
    int n = 0;
    if (fmt == 1) {
        g = malloc(sizeof *g * (cnt + 1));
        if (!g) return -1;
        for (unsigned i = 0; i < cnt; i++) g[n++] = (uint16_t)be16(f, off + 4 + 2 * i, ok);
    } else if (fmt == 2) {
        size_t total = 0;
        for (unsigned r = 0; r < cnt; r++) {
            unsigned a = be16(f, off + 4 + 6 * r, ok), b = be16(f, off + 6 + 6 * r, ok);
            if (b >= a) total += b - a + 1;
        }
        g = malloc(sizeof *g * (total + 1));
        if (!g) return -1;
        for (unsigned r = 0; r < cnt; r++) {
            unsigned a = be16(f, off + 4 + 6 * r, ok), b = be16(f, off + 6 + 6 * r, ok),
                     idx = be16(f, off + 8 + 6 * r, ok);
            for (unsigned x = a; x <= b && b >= a; x++)
                if (idx + (x - a) < total) g[idx + (x - a)] = (uint16_t)x;
            n = (int)total;
        }
    } else {
        *ok = false;
    }
    *out = g;
    return n;
}

/* collects the ligatures of one LigatureSubst format-1 subtable */
static bool add_lig_subtable(struct draft_emoji_font *f, size_t st, struct lig **ligs, int *n, int *cap, bool *ok)
{
    if (be16(f, st, ok) != 1) return true;
    uint16_t *cov;
    int n_cov = coverage_glyphs(f, st + be16(f, st + 2, ok), &cov, ok);
    if (n_cov < 0) return false;
    unsigned n_sets = be16(f, st + 4, ok);
    for (unsigned s = 0; s < n_sets && (int)s < n_cov && *ok; s++) {
        size_t set = st + be16(f, st + 6 + 2 * s, ok);
        unsigned n_l = be16(f, set, ok);
        for (unsigned l = 0; l < n_l && *ok; l++) {
            size_t lo = set + be16(f, set + 2 + 2 * l, ok);
            unsigned comp = be16(f, lo + 2, ok);
            if (comp < 1 || lo + 4 + 2 * (size_t)(comp - 1) > f->gsub_len) {
                *ok = false;
                break;
            }
            if (*n == *cap) {
                *cap = *cap ? 2 * *cap : 256;
                struct lig *nl = realloc(*ligs, sizeof **ligs * (size_t)*cap);
                if (!nl) {
                    free(cov);
                    return false;
                }
                *ligs = nl;
            }
            (*ligs)[(*n)++] = (struct lig){cov[s], (uint16_t)be16(f, lo, ok), (int)comp - 1, f->gsub + lo + 4};
        }
    }
    free(cov);
    return true;
}

/* every type-4 lookup (directly or through a type-7 extension), in LookupList order */
static enum status load_gsub(struct draft_emoji_font *f, const char *path)
{
    FT_ULong len = 0;
    if (FT_Load_Sfnt_Table(f->face, TTAG_GSUB, 0, NULL, &len) || len == 0) return STATUS_OK;   /* no ligatures */
    f->gsub = malloc(len);
    if (!f->gsub) return tensor_fail(STATUS_OOM, "%s: out of memory for GSUB", path);
    if (FT_Load_Sfnt_Table(f->face, TTAG_GSUB, 0, f->gsub, &len))
        return tensor_fail(STATUS_FORMAT, "%s: cannot read the GSUB table", path);
    f->gsub_len = len;
    bool ok = true;
    size_t ll = be16(f, 8, &ok);
    unsigned n_lookups = be16(f, ll, &ok);
    f->ligs = calloc(n_lookups + 1, sizeof *f->ligs);
    f->n_ligs = calloc(n_lookups + 1, sizeof *f->n_ligs);
    if (!f->ligs || !f->n_ligs) return tensor_fail(STATUS_OOM, "%s: out of memory for GSUB", path);
    for (unsigned i = 0; i < n_lookups && ok; i++) {
        size_t lk = ll + be16(f, ll + 2 + 2 * i, &ok);
        unsigned type = be16(f, lk, &ok), n_sub = be16(f, lk + 4, &ok);
        struct lig *ligs = NULL;
        int n = 0, cap = 0;
        for (unsigned s = 0; s < n_sub && ok; s++) {
            size_t st = lk + be16(f, lk + 6 + 2 * s, &ok);
            unsigned t = type;
            if (t == 7 && be16(f, st, &ok) == 1) {
                t = be16(f, st + 2, &ok);
                st += be32(f, st + 4, &ok);
            }
            if (t == 4 && !add_lig_subtable(f, st, &ligs, &n, &cap, &ok)) {
                free(ligs);
                return tensor_fail(STATUS_OOM, "%s: out of memory for GSUB", path);
            }
        }
        if (n) {
            f->ligs[f->n_lookups] = ligs;
            f->n_ligs[f->n_lookups++] = n;
        } else {
            free(ligs);
        }
    }
    if (!ok) return tensor_fail(STATUS_FORMAT, "%s: malformed GSUB table (an offset points outside it)", path);
    return STATUS_OK;
}

void draft_emoji_font_close(struct draft_emoji_font *f)
{
    if (!f) return;
    if (f->ligs)
        for (int i = 0; i < f->n_lookups; i++) free(f->ligs[i]);
    free(f->ligs);
    free(f->n_ligs);
    free(f->gsub);
    if (f->face) FT_Done_Face(f->face);
    if (f->lib) FT_Done_FreeType(f->lib);
    free(f);
}

struct draft_emoji_font *draft_emoji_font_open(const char *path)
{
    struct draft_emoji_font *f = calloc(1, sizeof *f);
    if (!f) {
        tensor_fail(STATUS_OOM, "draft_emoji_font_open: out of memory");
        return NULL;
    }
    FILE *probe = fopen(path, "rb");
    if (!probe) {
        tensor_fail(STATUS_IO, "cannot open %s: %s (Debian package fonts-noto-color-emoji: apt-get install "
                    "fonts-noto-color-emoji)", path, strerror(errno));
        goto fail;
    }
    fclose(probe);
    if (FT_Init_FreeType(&f->lib)) {
        tensor_fail(STATUS_INTERNAL, "FreeType initialisation failed");
        goto fail;
    }
    if (FT_New_Face(f->lib, path, 0, &f->face)) {
        tensor_fail(STATUS_FORMAT, "%s: FreeType cannot read this font", path);
        goto fail;
    }
    /* a colour bitmap font: one fixed strike, selected as is (no scaling by FreeType) */
    if (!FT_HAS_COLOR(f->face) || f->face->num_fixed_sizes < 1 || FT_Select_Size(f->face, 0)) {
        tensor_fail(STATUS_FORMAT, "%s: not a colour bitmap font (no colour strike); expected NotoColorEmoji.ttf", path);
        goto fail;
    }
    const FT_Bitmap_Size *bs = &f->face->available_sizes[0];
    f->canvas = bs->width > bs->height ? bs->width : bs->height;
    if (f->canvas < 1) f->canvas = (int)(bs->y_ppem >> 6);
    if (load_gsub(f, path)) goto fail;
    return f;
fail:
    draft_emoji_font_close(f);
    return NULL;
}

/* applies every ligature lookup once over the glyph string, as a shaper does */
static int apply_ligatures(const struct draft_emoji_font *f, uint16_t *g, int n)
{
    for (int k = 0; k < f->n_lookups; k++)
        for (int pos = 0; pos < n; pos++)
            for (int l = 0; l < f->n_ligs[k]; l++) {
                const struct lig *L = &f->ligs[k][l];
                if (L->first != g[pos] || pos + 1 + L->n_rest > n) continue;
                int j = 0;
                while (j < L->n_rest && g[pos + 1 + j] == (L->rest[2 * j] << 8 | L->rest[2 * j + 1])) j++;
                if (j < L->n_rest) continue;
                g[pos] = L->result;
                memmove(g + pos + 1, g + pos + 1 + L->n_rest, sizeof *g * (size_t)(n - pos - 1 - L->n_rest));
                n -= L->n_rest;
                break;
            }
    return n;
}

static int glyph_of(const struct draft_emoji_font *f, const uint32_t *cps, int n_cps, bool drop_fe0f)
{
    uint16_t g[DRAFT_EMOJI_MAX_CPS];
    int n = 0;
    for (int i = 0; i < n_cps && i < DRAFT_EMOJI_MAX_CPS; i++) {
        if (drop_fe0f && cps[i] == 0xFE0F) continue;
        FT_UInt gi = FT_Get_Char_Index(f->face, cps[i]);
        if (gi == 0 || gi > 0xFFFF) return 0;
        g[n++] = (uint16_t)gi;
    }
    if (n == 0) return 0;
    n = apply_ligatures(f, g, n);
    return n == 1 ? g[0] : 0;
}

int draft_emoji_glyph(const struct draft_emoji_font *f, const uint32_t *cps, int n_cps)
{
    if (!f || n_cps < 1 || n_cps > DRAFT_EMOJI_MAX_CPS) {
        tensor_fail(STATUS_VALUE, "draft_emoji_glyph: %d code points (1..%d)", n_cps, DRAFT_EMOJI_MAX_CPS);
        return -1;
    }
    int g = glyph_of(f, cps, n_cps, false);
    return g ? g : glyph_of(f, cps, n_cps, true);
}

enum status draft_emoji_render(const struct draft_emoji_font *f, int gid, int size, uint8_t *rgb)
{
    if (size < 1 || size > DRAFT_DATASET_MAX_SIZE || gid <= 0)
        return tensor_fail(STATUS_VALUE, "draft_emoji_render: glyph %d size %d", gid, size);
    if (FT_Load_Glyph(f->face, (FT_UInt)gid, FT_LOAD_COLOR) || FT_Render_Glyph(f->face->glyph, FT_RENDER_MODE_NORMAL))
        return tensor_fail(STATUS_FORMAT, "draft_emoji_render: FreeType cannot load glyph %d", gid);
    const FT_Bitmap *bm = &f->face->glyph->bitmap;
    if (bm->pixel_mode != FT_PIXEL_MODE_BGRA)
        return tensor_fail(STATUS_FORMAT, "draft_emoji_render: glyph %d is not a colour (BGRA) bitmap", gid);
    int w = (int)bm->width, h = (int)bm->rows;
    int C = f->canvas;
    if (w > C) C = w;
    if (h > C) C = h;
    /* canvas of C×C: white, the premultiplied BGRA bitmap composited over it, centred */
    float *canvas = malloc(sizeof(float) * (size_t)C * (size_t)C * 3);
    if (!canvas) return tensor_fail(STATUS_OOM, "draft_emoji_render: out of memory");
    for (size_t i = 0; i < (size_t)C * (size_t)C * 3; i++) canvas[i] = 255.0f;
    int ox = (C - w) / 2, oy = (C - h) / 2;
    for (int y = 0; y < h; y++) {
        const uint8_t *row = bm->buffer + (ptrdiff_t)y * bm->pitch;
        for (int x = 0; x < w; x++) {
            const uint8_t *p = row + 4 * x;   /* B G R A, premultiplied */
            float *o = canvas + ((size_t)(oy + y) * (size_t)C + (size_t)(ox + x)) * 3;
            int a = p[3];
            o[0] = (float)(p[2] + 255 - a);
            o[1] = (float)(p[1] + 255 - a);
            o[2] = (float)(p[0] + 255 - a);
        }
    }
    /* exact area average: output pixel [X, X+1) covers canvas [X*C/size, (X+1)*C/size) */
    double scale = (double)C / size;
    for (int Y = 0; Y < size; Y++) {
        double y0 = Y * scale, y1 = (Y + 1) * scale;
        for (int X = 0; X < size; X++) {
            double x0 = X * scale, x1 = (X + 1) * scale, acc[3] = {0, 0, 0};
            for (int y = (int)y0; y < C && y < y1; y++) {
                double wy = (y + 1 < y1 ? y + 1 : y1) - (y > y0 ? y : y0);
                for (int x = (int)x0; x < C && x < x1; x++) {
                    double wx = (x + 1 < x1 ? x + 1 : x1) - (x > x0 ? x : x0);
                    const float *p = canvas + ((size_t)y * (size_t)C + (size_t)x) * 3;
                    for (int c = 0; c < 3; c++) acc[c] += wx * wy * p[c];
                }
            }
            for (int c = 0; c < 3; c++) {
                double v = acc[c] / (scale * scale) + 0.5;
                rgb[((size_t)Y * (size_t)size + (size_t)X) * 3 + (size_t)c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        }
    }
    free(canvas);
    return STATUS_OK;
}

#else /* !DRAFT_HAVE_FREETYPE */

static enum status no_freetype(void)
{
    return tensor_fail(STATUS_DEVICE, "emoji rendering needs FreeType: install libfreetype-dev and reconfigure the build");
}
struct draft_emoji_font *draft_emoji_font_open(const char *ttf_path)
{
    (void)ttf_path;
    no_freetype();
    return NULL;
}
void draft_emoji_font_close(struct draft_emoji_font *f) { (void)f; }
int draft_emoji_glyph(const struct draft_emoji_font *f, const uint32_t *cps, int n_cps)
{
    (void)f, (void)cps, (void)n_cps;
    no_freetype();
    return -1;
}
enum status draft_emoji_render(const struct draft_emoji_font *f, int gid, int size, uint8_t *rgb)
{
    (void)f, (void)gid, (void)size, (void)rgb;
    return no_freetype();
}

#endif

enum status draft_emoji_build(const char *emoji_test_path, const char *font_path, int size, struct draft_dataset *d,
                              struct draft_emoji_counts *counts)
{
    memset(d, 0, sizeof *d);
    struct draft_emoji_counts c = {0};
    if (size < 1 || size > DRAFT_DATASET_MAX_SIZE)
        return tensor_fail(STATUS_VALUE, "draft_emoji_build: size %d (1..%d)", size, DRAFT_DATASET_MAX_SIZE);
    struct draft_emoji *e;
    int n;
    enum status s = draft_emoji_list_load(emoji_test_path, &e, &n, &c.fully_qualified);
    if (s) return s;
    c.candidates = n;
    struct draft_emoji_font *f = draft_emoji_font_open(font_path);
    int *gid = f ? malloc(sizeof(int) * (size_t)n) : NULL;
    if (!f || !gid) {
        if (f) tensor_fail(STATUS_OOM, "draft_emoji_build: out of memory");
        s = tensor_status();
        goto out;
    }
    for (int i = 0; i < n; i++) {
        gid[i] = draft_emoji_glyph(f, e[i].cps, e[i].n_cps);
        if (gid[i] < 0) {
            s = tensor_status();
            goto out;
        }
        if (gid[i] == 0) c.no_glyph++;
    }
    if ((s = draft_dataset_init(d, n - c.no_glyph, size)) != STATUS_OK) goto out;
    for (int i = 0, k = 0; i < n; i++) {
        if (!gid[i]) continue;
        char codes[DRAFT_EMOJI_MAX_CPS * 9 + 1] = "";
        for (int j = 0; j < e[i].n_cps; j++)
            snprintf(codes + strlen(codes), sizeof codes - strlen(codes), "%s%04X", j ? " " : "", (unsigned)e[i].cps[j]);
        s = draft_emoji_render(f, gid[i], size, d->pixels + pixel_bytes(k, size));
        if (!s) s = draft_dataset_set_text(d, k, e[i].name, e[i].group, e[i].subgroup, codes);
        if (s) {
            draft_dataset_free(d);
            goto out;
        }
        k++;
    }
    c.rendered = d->n;
out:
    free(gid);
    draft_emoji_font_close(f);
    draft_emoji_list_free(e, n);
    if (counts) *counts = c;
    return s;
}

/* ---------------------------------------------------------------- BPE learner */

/* bytes_to_unicode()'s order: printable Latin-1 bytes first, then the rest */
static void byte_order(uint8_t order[256])
{
    int k = 0;
    for (int b = 0; b < 256; b++)
        if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) order[k++] = (uint8_t)b;
    for (int b = 0; b < 256; b++)
        if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))) order[k++] = (uint8_t)b;
}

struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void sb_str(struct sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_json_str(struct sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') sb_put(b, "\\", 1);
        sb_put(b, s, 1);
    }
    sb_put(b, "\"", 1);
}

static void byte_token(uint8_t b, bool eow, char *out)
{
    uint32_t c = clip_byte_to_unicode(b);
    int k = 0;
    if (c < 0x80) out[k++] = (char)c;
    else {
        out[k++] = (char)(0xC0 | (c >> 6));
        out[k++] = (char)(0x80 | (c & 0x3F));
    }
    out[k] = 0;
    if (eow) strcat(out, "</w>");
}

/* vocab.json of `tokens` (ids = positions) */
static void json_vocab(struct sbuf *b, char *const *tokens, int n)
{
    sb_str(b, "{");
    for (int i = 0; i < n; i++) {
        char num[32];
        sb_json_str(b, tokens[i]);
        snprintf(num, sizeof num, ": %d%s", i, i + 1 < n ? ", " : "");
        sb_str(b, num);
    }
    sb_str(b, "}");
}

struct word {
    int32_t *sym;
    int n;
    int64_t count;
};

static int cmp_word(const void *a, const void *b)
{
    const struct word *x = a, *y = b;
    int n = x->n < y->n ? x->n : y->n;
    for (int i = 0; i < n; i++)
        if (x->sym[i] != y->sym[i]) return x->sym[i] < y->sym[i] ? -1 : 1;
    return (x->n > y->n) - (x->n < y->n);
}

struct pair {
    int32_t a, b;
    int64_t count;
};

static int cmp_pair(const void *p, const void *q)
{
    const struct pair *x = p, *y = q;
    if (x->a != y->a) return x->a < y->a ? -1 : 1;
    return (x->b > y->b) - (x->b < y->b);
}

static enum status write_text(const char *dir, const char *name, const char *text)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    const void *parts[1] = {text};
    size_t lens[1] = {strlen(text)};
    return write_atomic(path, parts, lens, 1);
}

enum status draft_bpe_learn(const char *const *texts, int n_texts, int vocab_size, int min_count, const char *out_dir,
                            int *n_merges_out, int *n_vocab_out)
{
    if (vocab_size < 514 || vocab_size > 512 + CLIP_MAX_MERGES + 2 || n_texts < 0 || min_count < 1)
        return tensor_fail(STATUS_VALUE, "draft_bpe_learn: vocab_size %d (514..%d), min_count %d (>= 1)", vocab_size,
                           512 + CLIP_MAX_MERGES + 2, min_count);
    struct stat st;
    if (stat(out_dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return tensor_fail(STATUS_IO, "draft_bpe_learn: output folder %s does not exist", out_dir);
    enum status s = STATUS_OK;
    uint8_t order[256];
    byte_order(order);
    /* symbol table: ids 0..511 the byte tokens, then merge results, as in vocab.json */
    int n_sym = 0, cap_sym = vocab_size;
    char **sym = calloc((size_t)cap_sym + 2, sizeof *sym);
    int32_t (*merges)[2] = malloc(sizeof *merges * (size_t)vocab_size);
    struct word *words = NULL;
    struct pair *pairs = NULL;
    struct clip_tokenizer *bytes_tok = NULL;
    struct sbuf vj = {0}, mt = {0};
    int n_words = 0, n_merges = 0;
    if (!sym || !merges) goto oom;
    for (int e = 0; e < 2; e++)
        for (int i = 0; i < 256; i++) {
            char t[16];
            byte_token(order[i], e, t);
            if (!(sym[n_sym++] = xstrdup(t))) goto oom;
        }
    /* pre-tokenise and lower-case with the tokenizer itself: a vocabulary of bytes only, no
     * merges, turns each pre-token into its bytes with "</w>" on the last one */
    sym[512] = "<|startoftext|>";
    sym[513] = "<|endoftext|>";
    json_vocab(&vj, sym, 514);
    sym[512] = sym[513] = NULL;
    if (vj.oom) goto oom;
    bytes_tok = clip_tokenizer_from_memory(vj.p, vj.n, "byte vocabulary", "#version: 0.2\n", 14, "no merges");
    if (!bytes_tok) {
        s = tensor_status();
        goto out;
    }
    int cap_words = 0;
    for (int t = 0; t < n_texts; t++) {
        int m = clip_tokenize(bytes_tok, texts[t], NULL, 0);
        if (m < 0) {
            s = tensor_fail(STATUS_VALUE, "draft_bpe_learn: text %d (\"%.60s\"): %s", t, texts[t], tensor_error());
            goto out;
        }
        int32_t *ids = malloc(sizeof *ids * ((size_t)m + 1));
        if (!ids) goto oom;
        clip_tokenize(bytes_tok, texts[t], ids, m);
        for (int i = 0, start = 0; i < m; i++) {
            if (ids[i] >= 512) {   /* a special token spelt in the text: not learnt */
                start = i + 1;
                continue;
            }
            if (ids[i] < 256) continue;
            if (n_words == cap_words) {
                cap_words = cap_words ? 2 * cap_words : 1024;
                struct word *nw = realloc(words, sizeof *words * (size_t)cap_words);
                if (!nw) {
                    free(ids);
                    goto oom;
                }
                words = nw;
            }
            struct word *w = &words[n_words];
            w->n = i + 1 - start;
            w->count = 1;
            if (!(w->sym = malloc(sizeof(int32_t) * (size_t)w->n))) {
                free(ids);
                goto oom;
            }
            memcpy(w->sym, ids + start, sizeof(int32_t) * (size_t)w->n);
            n_words++;
            start = i + 1;
        }
        free(ids);
    }
    /* unique words with counts */
    if (n_words) qsort(words, (size_t)n_words, sizeof *words, cmp_word);
    int u = 0;
    for (int i = 0; i < n_words; i++) {
        if (u && cmp_word(&words[u - 1], &words[i]) == 0) {
            words[u - 1].count++;
            free(words[i].sym);
        } else {
            words[u++] = words[i];
        }
    }
    n_words = u;
    size_t max_pairs = 0;
    for (int i = 0; i < n_words; i++) max_pairs += (size_t)words[i].n;
    pairs = malloc(sizeof *pairs * (max_pairs + 1));
    if (!pairs) goto oom;
    while (n_sym + 2 < vocab_size && n_merges < vocab_size && n_merges < CLIP_MAX_MERGES) {
        size_t np = 0;
        for (int i = 0; i < n_words; i++)
            for (int j = 0; j + 1 < words[i].n; j++) pairs[np++] = (struct pair){words[i].sym[j], words[i].sym[j + 1], words[i].count};
        if (np == 0) break;
        qsort(pairs, np, sizeof *pairs, cmp_pair);
        struct pair best = {-1, -1, 0};
        for (size_t i = 0; i < np;) {
            struct pair p = pairs[i];
            size_t j = i + 1;
            for (; j < np && pairs[j].a == p.a && pairs[j].b == p.b; j++) p.count += pairs[j].count;
            i = j;
            int c = 0;
            if (best.a >= 0 && p.count == best.count) {
                c = strcmp(sym[p.a], sym[best.a]);
                if (c == 0) c = strcmp(sym[p.b], sym[best.b]);
            }
            if (p.count > best.count || (p.count == best.count && c < 0)) best = p;
        }
        if (best.count < min_count) break;
        /* the merged string; an existing token of the same spelling is reused (vocab keys are unique) */
        size_t la = strlen(sym[best.a]), lb = strlen(sym[best.b]);
        char *joined = malloc(la + lb + 1);
        if (!joined) goto oom;
        memcpy(joined, sym[best.a], la);
        memcpy(joined + la, sym[best.b], lb + 1);
        int32_t id = -1;
        for (int k = 512; k < n_sym; k++)
            if (!strcmp(sym[k], joined)) id = k;
        if (id < 0) {
            id = n_sym;
            sym[n_sym++] = joined;
        } else {
            free(joined);
        }
        merges[n_merges][0] = best.a;
        merges[n_merges][1] = best.b;
        n_merges++;
        for (int i = 0; i < n_words; i++) {
            struct word *w = &words[i];
            int o = 0;
            for (int j = 0; j < w->n; j++) {
                if (j + 1 < w->n && w->sym[j] == best.a && w->sym[j + 1] == best.b) {
                    w->sym[o++] = id;
                    j++;
                } else {
                    w->sym[o++] = w->sym[j];
                }
            }
            w->n = o;
        }
    }
    /* files */
    sym[n_sym] = "<|startoftext|>";
    sym[n_sym + 1] = "<|endoftext|>";
    vj.n = 0;
    json_vocab(&vj, sym, n_sym + 2);
    sym[n_sym] = sym[n_sym + 1] = NULL;
    sb_str(&mt, "#version: 0.2\n");
    for (int k = 0; k < n_merges; k++) {
        sb_str(&mt, sym[merges[k][0]]);
        sb_str(&mt, " ");
        sb_str(&mt, sym[merges[k][1]]);
        sb_str(&mt, "\n");
    }
    if (vj.oom || mt.oom) goto oom;
    sb_str(&vj, "\n");
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\n  \"add_prefix_space\": false,\n  \"bos_token\": \"<|startoftext|>\",\n  \"do_lower_case\": true,\n"
             "  \"eos_token\": \"<|endoftext|>\",\n  \"errors\": \"replace\",\n  \"model_max_length\": %d,\n"
             "  \"pad_token\": \"<|endoftext|>\",\n  \"tokenizer_class\": \"CLIPTokenizer\",\n"
             "  \"unk_token\": \"<|endoftext|>\"\n}\n",
             CLIP_CONTEXT);
    const char *stm = "{\n  \"bos_token\": \"<|startoftext|>\",\n  \"eos_token\": \"<|endoftext|>\",\n"
                      "  \"pad_token\": \"<|endoftext|>\",\n  \"unk_token\": \"<|endoftext|>\"\n}\n";
    if ((s = write_text(out_dir, "vocab.json", vj.p)) || (s = write_text(out_dir, "merges.txt", mt.p)) ||
        (s = write_text(out_dir, "tokenizer_config.json", cfg)) || (s = write_text(out_dir, "special_tokens_map.json", stm)))
        goto out;
    if (n_merges_out) *n_merges_out = n_merges;
    if (n_vocab_out) *n_vocab_out = n_sym + 2;
    goto out;
oom:
    s = tensor_fail(STATUS_OOM, "draft_bpe_learn: out of memory");
out:
    clip_tokenizer_free(bytes_tok);
    for (int i = 0; i < n_words; i++) free(words[i].sym);
    free(words);
    free(pairs);
    if (sym)
        for (int i = 0; i < n_sym; i++) free(sym[i]);
    free(sym);
    free(merges);
    free(vj.p);
    free(mt.p);
    return s;
}
