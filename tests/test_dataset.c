/* test_dataset.c — the emoji dataset file (round trip, truncated / corrupt / hostile files),
 * batches and the held-out split, the BPE learner (a hand-computed case, determinism, and its
 * files loaded by clip_tokenizer_load round-tripping every caption), and — when the Debian font
 * and emoji-test.txt are installed — rendering real emoji (skipped with a reason otherwise). */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diffusion/tokenizer.h"
#include "draft/dataset.h"
#include "tests/harness.h"

#define FONT "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
#define EMOJI_TEST "/usr/share/unicode/emoji/emoji-test.txt"

static char tmpdir[64];

static void tmp_setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/draft_ds_XXXXXX");
    ck_assert(mkdtemp(tmpdir) != NULL);
}

static void tmp_teardown(void)
{
    const char *names[] = {"a.bin", "b.bin", "bad.bin", "vocab.json", "merges.txt", "tokenizer_config.json",
                           "special_tokens_map.json", "merges2.txt", "vocab2.json"};
    char p[128];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", tmpdir, names[i]);
        unlink(p);
    }
    rmdir(tmpdir);
}

static char *path_in(const char *name)
{
    static char p[4][128];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", tmpdir, name);
    return p[k];
}

/* a small dataset with a known pattern and UTF-8 strings */
static void synthetic(struct draft_dataset *d, int n, int size)
{
    ck_assert_int_eq(draft_dataset_init(d, n, size), STATUS_OK);
    for (size_t i = 0; i < (size_t)n * size * size * 3; i++) d->pixels[i] = (uint8_t)(i * 37 + i / 7);
    for (int i = 0; i < n; i++) {
        char cap[64], code[16];
        snprintf(cap, sizeof cap, "item %d piñata “quoted”", i);
        snprintf(code, sizeof code, "1F%03X", i);
        ck_assert_int_eq(draft_dataset_set_text(d, i, cap, i % 2 ? "Food & Drink" : "Flags", "sub-group", code), STATUS_OK);
    }
}

/* ---------------------------------------------------------------- dataset file */

START_TEST(test_roundtrip)
{
    LEAK_CHECK_BEGIN();
    tmp_setup();
    struct draft_dataset d, e;
    synthetic(&d, 5, 4);
    ck_assert_int_eq(draft_dataset_save(&d, path_in("a.bin")), STATUS_OK);
    ck_assert_msg(draft_dataset_load(&e, path_in("a.bin")) == STATUS_OK, "%s", tensor_error());
    ck_assert_int_eq(e.n, 5);
    ck_assert_int_eq(e.size, 4);
    ck_assert(memcmp(d.pixels, e.pixels, 5 * 4 * 4 * 3) == 0);
    for (int i = 0; i < 5; i++) {
        ck_assert_str_eq(d.captions[i], e.captions[i]);
        ck_assert_str_eq(d.groups[i], e.groups[i]);
        ck_assert_str_eq(d.subgroups[i], e.subgroups[i]);
        ck_assert_str_eq(d.codes[i], e.codes[i]);
    }
    /* the same dataset gives the same bytes; no temporary file is left behind */
    ck_assert_int_eq(draft_dataset_save(&e, path_in("b.bin")), STATUS_OK);
    size_t na, nb;
    uint8_t *a = test_slurp(path_in("a.bin"), &na), *b = test_slurp(path_in("b.bin"), &nb);
    ck_assert(na == nb && memcmp(a, b, na) == 0);
    size_t expect = 32 + 5 * 4 * 4 * 3 + 8;
    for (int i = 0; i < 5; i++)
        expect += strlen(d.captions[i]) + strlen(d.groups[i]) + strlen(d.subgroups[i]) + strlen(d.codes[i]) + 4;
    ck_assert_uint_eq(na, expect);
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path_in("a.bin"), (long)getpid());
    ck_assert(access(tmp, F_OK) != 0);
    free(a);
    free(b);
    /* an empty dataset round-trips too */
    struct draft_dataset z, z2;
    ck_assert_int_eq(draft_dataset_init(&z, 0, 8), STATUS_OK);
    ck_assert_int_eq(draft_dataset_save(&z, path_in("b.bin")), STATUS_OK);
    ck_assert_msg(draft_dataset_load(&z2, path_in("b.bin")) == STATUS_OK, "%s", tensor_error());
    ck_assert_int_eq(z2.n, 0);
    draft_dataset_free(&z);
    draft_dataset_free(&z2);
    draft_dataset_free(&d);
    draft_dataset_free(&e);
    tmp_teardown();
    LEAK_CHECK_END();
}
END_TEST

static void expect_load_error(const char *path, const char *needle, const char *what)
{
    struct draft_dataset e;
    enum status s = draft_dataset_load(&e, path);
    ck_assert_msg(s != STATUS_OK, "%s: loaded", what);
    ck_assert_msg(e.n == 0 && e.pixels == NULL, "%s: dataset not left empty", what);
    ck_assert_msg(strstr(tensor_error(), needle) != NULL, "%s: message \"%s\" lacks \"%s\"", what, tensor_error(), needle);
    draft_dataset_free(&e);
}

/* FNV-1a 64, as the file format documents it: to forge hostile files with valid checksums */
static uint64_t fnv(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}
static void reseal(uint8_t *b, size_t n)
{
    uint64_t h = fnv(b, n - 8);
    for (int i = 0; i < 8; i++) b[n - 8 + i] = (uint8_t)(h >> (8 * i));
}

START_TEST(test_corrupt_files)
{
    LEAK_CHECK_BEGIN();
    tmp_setup();
    struct draft_dataset d;
    synthetic(&d, 3, 4);
    ck_assert_int_eq(draft_dataset_save(&d, path_in("a.bin")), STATUS_OK);
    draft_dataset_free(&d);
    size_t n;
    uint8_t *b = test_slurp(path_in("a.bin"), &n);
    expect_load_error(path_in("missing.bin"), "missing.bin", "missing file");
    /* every truncation */
    for (size_t l = 0; l < n; l++) {
        test_spit(path_in("bad.bin"), b, l);
        char what[64];
        snprintf(what, sizeof what, "truncated to %zu of %zu", l, n);
        expect_load_error(path_in("bad.bin"), l < 40 ? "bad.bin" : "truncated or corrupt", what);
    }
    /* one extra byte, and every single-bit flip */
    uint8_t *c = malloc(n + 1);
    memcpy(c, b, n);
    c[n] = 0;
    test_spit(path_in("bad.bin"), c, n + 1);
    expect_load_error(path_in("bad.bin"), "truncated or corrupt", "extra byte");
    for (size_t i = 0; i < n; i++) {
        memcpy(c, b, n);
        c[i] ^= (uint8_t)(1u << (i % 8));
        test_spit(path_in("bad.bin"), c, n);
        char what[64];
        snprintf(what, sizeof what, "bit flip at byte %zu", i);
        expect_load_error(path_in("bad.bin"), "bad.bin", what);
    }
    /* hostile headers with valid checksums */
    memcpy(c, b, n);
    c[8] = 2;   /* version */
    reseal(c, n);
    test_spit(path_in("bad.bin"), c, n);
    expect_load_error(path_in("bad.bin"), "version 2", "version");
    memcpy(c, b, n);
    c[12] = c[13] = c[14] = c[15] = 0xFF;   /* n = 2^32-1 */
    reseal(c, n);
    test_spit(path_in("bad.bin"), c, n);
    expect_load_error(path_in("bad.bin"), "header n=4294967295", "huge n");
    memcpy(c, b, n);
    c[24 + 7] = 0x80;   /* string bytes near 2^63 */
    reseal(c, n);
    test_spit(path_in("bad.bin"), c, n);
    expect_load_error(path_in("bad.bin"), "truncated or corrupt", "huge string table");
    memcpy(c, b, n);
    c[n - 9] = 'x';   /* last string loses its NUL */
    reseal(c, n);
    test_spit(path_in("bad.bin"), c, n);
    expect_load_error(path_in("bad.bin"), "NUL", "unterminated strings");
    memcpy(c, b, n);
    c[32 + 3 * 4 * 4 * 3 + 1] = 0;   /* an extra NUL: 13 strings for 3 items */
    reseal(c, n);
    test_spit(path_in("bad.bin"), c, n);
    expect_load_error(path_in("bad.bin"), "13 strings", "string count");
    free(c);
    free(b);
    tmp_teardown();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_batch_and_split)
{
    LEAK_CHECK_BEGIN();
    struct draft_dataset d;
    synthetic(&d, 4, 3);
    int idx[3] = {2, 0, 2};
    struct tensor *t = draft_dataset_batch(&d, 3, idx, DTYPE_F32);
    ck_assert_msg(t != NULL, "%s", tensor_error());
    ck_assert_int_eq(t->ndim, 4);
    ck_assert(t->shape[0] == 3 && t->shape[1] == 3 && t->shape[2] == 3 && t->shape[3] == 3);
    double lo = 1, hi = -1;
    for (int b = 0; b < 3; b++)
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 3; y++)
                for (int x = 0; x < 3; x++) {
                    uint8_t p = d.pixels[(((size_t)idx[b] * 3 + y) * 3 + x) * 3 + c];
                    double v = tensor_get(t, (int64_t[]){b, c, y, x});
                    ck_assert_msg(v == (float)(p / 127.5 - 1.0), "[%d,%d,%d,%d] = %g, pixel %u", b, c, y, x, v, p);
                    lo = v < lo ? v : lo;
                    hi = v > hi ? v : hi;
                }
    ck_assert(lo >= -1 && hi <= 1);
    tensor_free(t);
    /* extremes map to -1 and 1 exactly */
    d.pixels[0] = 0;
    d.pixels[1] = 255;
    t = draft_dataset_batch(&d, 1, idx + 1, DTYPE_F64);
    ck_assert(t && tensor_get(t, (int64_t[]){0, 0, 0, 0}) == -1.0 && tensor_get(t, (int64_t[]){0, 1, 0, 0}) == 1.0);
    tensor_free(t);
    int bad = 4;
    ck_assert(draft_dataset_batch(&d, 1, &bad, DTYPE_F32) == NULL);
    ck_assert(strstr(tensor_error(), "index 4") != NULL);
    ck_assert(draft_dataset_batch(&d, 1, idx, DTYPE_I32) == NULL);
    /* inside a caller's scope (the converted batch is scope-owned; its f64 temporary was once
     * freed twice there) */
    tensor_scope_begin();
    t = draft_dataset_batch(&d, 2, idx, DTYPE_F32);
    ck_assert(t != NULL && t->dtype == DTYPE_F32 && t->shape[0] == 2);
    tensor_scope_end();
    draft_dataset_free(&d);

    /* split: a partition, stable under reordering, about 1 in 10 held out */
    struct draft_dataset s;
    ck_assert_int_eq(draft_dataset_init(&s, 1000, 1), STATUS_OK);
    for (int i = 0; i < 1000; i++) {
        char cap[32];
        snprintf(cap, sizeof cap, "caption %d", i);
        draft_dataset_set_text(&s, i, cap, "", "", "");
    }
    int *tr, *he, ntr, nhe;
    ck_assert_int_eq(draft_dataset_split(&s, 10, &tr, &ntr, &he, &nhe), STATUS_OK);
    ck_assert_int_eq(ntr + nhe, 1000);
    ck_assert_msg(nhe > 60 && nhe < 140, "held out %d of 1000 with modulus 10", nhe);
    for (int i = 0; i < nhe; i++) {
        ck_assert(draft_dataset_is_heldout(s.captions[he[i]], 10));
        ck_assert(i == 0 || he[i] > he[i - 1]);
    }
    for (int i = 0; i < ntr; i++) ck_assert(!draft_dataset_is_heldout(s.captions[tr[i]], 10));
    printf("split: %d train, %d held out of 1000 (modulus 10)\n", ntr, nhe);
    free(tr);
    free(he);
    ck_assert(draft_dataset_split(&s, 1, &tr, &ntr, &he, &nhe) != STATUS_OK);
    draft_dataset_free(&s);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- BPE */

START_TEST(test_bpe_hand_case)
{
    LEAK_CHECK_BEGIN();
    tmp_setup();
    /* words: "ab" ×3 → a b</w>; "abc" → a b c</w>. Pairs: (a, b</w>) 3 → first. Then (a, b) 1 and
     * (b, c</w>) 1 tie: "a" < "b" → "a b". Then (ab, c</w>) → "ab c</w>". */
    const char *texts[] = {"AB ab", "ab", "abc"};
    int nm, nv;
    ck_assert_msg(draft_bpe_learn(texts, 3, 517, 1, tmpdir, &nm, &nv) == STATUS_OK, "%s", tensor_error());
    ck_assert_int_eq(nm, 3);
    ck_assert_int_eq(nv, 517);
    size_t n;
    char *m = (char *)test_slurp(path_in("merges.txt"), &n);
    ck_assert_str_eq(m, "#version: 0.2\na b</w>\na b\nab c</w>\n");
    free(m);
    struct clip_tokenizer *t = clip_tokenizer_load(path_in("vocab.json"), path_in("merges.txt"));
    ck_assert_msg(t != NULL, "%s", tensor_error());
    ck_assert_int_eq(clip_vocab_size(t), 517);
    ck_assert_int_eq(clip_token_id(t, "!"), 0);        /* bytes_to_unicode order */
    ck_assert_int_eq(clip_token_id(t, "a"), 'a' - '!');
    ck_assert_int_eq(clip_token_id(t, "!</w>"), 256);
    ck_assert_int_eq(clip_token_id(t, "ab</w>"), 512);
    ck_assert_int_eq(clip_token_id(t, "ab"), 513);
    ck_assert_int_eq(clip_token_id(t, "abc</w>"), 514);
    ck_assert_int_eq(clip_bos_id(t), 515);
    ck_assert_int_eq(clip_eos_id(t), 516);
    int32_t ids[8];
    ck_assert_int_eq(clip_tokenize(t, "ABC ab", ids, 8), 2);
    ck_assert(ids[0] == 514 && ids[1] == 512);
    clip_tokenizer_free(t);
    /* min_count stops early; a bad vocabulary size is an error */
    ck_assert_int_eq(draft_bpe_learn(texts, 3, 517, 2, tmpdir, &nm, &nv), STATUS_OK);
    ck_assert_int_eq(nm, 1);
    ck_assert(draft_bpe_learn(texts, 3, 100, 1, tmpdir, &nm, &nv) != STATUS_OK);
    ck_assert(draft_bpe_learn(texts, 3, 600, 1, "/nonexistent/dir", &nm, &nv) != STATUS_OK);
    ck_assert(strstr(tensor_error(), "/nonexistent/dir") != NULL);
    const char *invalid[] = {"ok", "bad \xff byte"};
    ck_assert(draft_bpe_learn(invalid, 2, 600, 1, tmpdir, &nm, &nv) != STATUS_OK);
    ck_assert_msg(strstr(tensor_error(), "text 1") != NULL, "%s", tensor_error());
    tmp_teardown();
    LEAK_CHECK_END();
}
END_TEST

static const char *captions[] = {
    "grinning face", "grinning face with big eyes", "face with tears of joy", "red apple", "green apple", "taxi",
    "oncoming taxi", "flag: Côte d’Ivoire", "flag: United States", "flag: United Kingdom", "keycap: 1", "keycap: #",
    "man’s shoe", "woman's hat", "T-Rex", "piñata", "Japanese “application” button", "A button (blood type)",
    "red heart", "green heart", "blue heart", "heart on fire", "man: red hair", "woman: red hair", "face in clouds",
    "smiling face with hearts", "SMILING   face\twith  sunglasses", "clock 12 o'clock", "ΣΟΦΙΑ", "😀 emoji in text",
};
#define N_CAPTIONS ((int)(sizeof captions / sizeof captions[0]))

START_TEST(test_bpe_roundtrip)
{
    LEAK_CHECK_BEGIN();
    tmp_setup();
    int nm, nv;
    ck_assert_msg(draft_bpe_learn(captions, N_CAPTIONS, 600, 2, tmpdir, &nm, &nv) == STATUS_OK, "%s", tensor_error());
    ck_assert(nm > 0 && nv == 514 + nm);   /* this corpus runs out of pairs seen twice before 600 */
    size_t n1, n2, nvj;
    char *m1 = (char *)test_slurp(path_in("merges.txt"), &n1);
    char *vj = (char *)test_slurp(path_in("vocab.json"), &nvj);
    rename(path_in("merges.txt"), path_in("merges2.txt"));
    ck_assert_int_eq(draft_bpe_learn(captions, N_CAPTIONS, 600, 2, tmpdir, &nm, &nv), STATUS_OK);
    char *m2 = (char *)test_slurp(path_in("merges.txt"), &n2);
    ck_assert_msg(n1 == n2 && !memcmp(m1, m2, n1), "the learner is not deterministic");
    struct clip_tokenizer *t = clip_tokenizer_load(path_in("vocab.json"), path_in("merges.txt"));
    ck_assert_msg(t != NULL, "%s", tensor_error());
    /* the same vocabulary without merges tokenises to bytes: its decode is the cleaned,
     * lower-cased, pre-tokenised text the learnt ids must decode to as well */
    struct clip_tokenizer *bytes = clip_tokenizer_from_memory(vj, nvj, "vocab.json", "#version: 0.2\n", 14, "none");
    ck_assert_msg(bytes != NULL, "%s", tensor_error());
    ck_assert_int_eq(clip_token_id(t, "face</w>") >= 514, 1);   /* a frequent word is one token */
    int total = 0, total_bytes = 0;
    for (int i = 0; i < N_CAPTIONS; i++) {
        int32_t ids[128], bids[256];
        int k = clip_tokenize(t, captions[i], ids, 128), kb = clip_tokenize(bytes, captions[i], bids, 256);
        ck_assert(k > 0 && k <= 128 && kb > 0 && kb <= 256 && k <= kb);
        char *dec = clip_decode(t, ids, k), *ref = clip_decode(bytes, bids, kb);
        ck_assert_msg(dec && ref && !strcmp(dec, ref), "\"%s\": decodes to \"%s\", expected \"%s\"", captions[i], dec, ref);
        if (i < 4 || i == 7) printf("bpe: \"%s\" -> %d ids -> \"%s\"\n", captions[i], k, dec);
        free(dec);
        free(ref);
        total += k;
        total_bytes += kb;
    }
    printf("bpe: %d merges, %d tokens; %d ids for all captions vs %d bytes\n", nm, nv, total, total_bytes);
    ck_assert(total * 2 < total_bytes);
    clip_tokenizer_free(t);
    clip_tokenizer_free(bytes);
    free(m1);
    free(m2);
    free(vj);
    tmp_teardown();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- real emoji */

static bool have_data(void)
{
    if (access(FONT, R_OK) != 0 || access(EMOJI_TEST, R_OK) != 0) {
        printf("SKIP: %s or %s missing (Debian packages fonts-noto-color-emoji, unicode-data)\n", FONT, EMOJI_TEST);
        return false;
    }
    struct draft_emoji_font *f = draft_emoji_font_open(FONT);
    if (!f) {
        printf("SKIP: %s\n", tensor_error());
        return false;
    }
    draft_emoji_font_close(f);
    return true;
}

/* fraction of pixels that are clearly of `channel`'s colour */
static double colour_share(const uint8_t *rgb, int size, int channel)
{
    int hit = 0;
    for (int i = 0; i < size * size; i++) {
        const uint8_t *p = rgb + 3 * i;
        int o1 = p[(channel + 1) % 3], o2 = p[(channel + 2) % 3];
        hit += p[channel] > o1 + 40 && p[channel] > o2 + 40;
    }
    return (double)hit / (size * size);
}

START_TEST(test_render_real)
{
    if (!have_data()) return;
    LEAK_CHECK_BEGIN();
    struct draft_emoji_font *f = draft_emoji_font_open(FONT);
    ck_assert(f != NULL);
    uint8_t a[32 * 32 * 3], b[32 * 32 * 3];
    /* the flag is a third green, a third white, a third red, on a white canvas */
    struct { uint32_t cps[8]; int n, channel; double min_share; const char *name; } cases[] = {
        {{0x1F34E}, 1, 0, 0.2, "red apple"},
        {{0x1F34F}, 1, 1, 0.2, "green apple"},
        {{0x1F499}, 1, 2, 0.2, "blue heart"},
        {{0x1F1EE, 0x1F1F9}, 2, 1, 0.1, "flag: Italy (regional-indicator ligature), green"},
        {{0x1F1EE, 0x1F1F9}, 2, 0, 0.1, "flag: Italy (regional-indicator ligature), red"},
        {{0x2764, 0xFE0F, 0x200D, 0x1F525}, 4, 0, 0.2, "heart on fire (ZWJ ligature)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int g = draft_emoji_glyph(f, cases[i].cps, cases[i].n);
        ck_assert_msg(g > 0, "%s: no glyph", cases[i].name);
        ck_assert_int_eq(draft_emoji_render(f, g, 32, a), STATUS_OK);
        double share = colour_share(a, 32, cases[i].channel);
        printf("render: %s glyph %d, %.0f%% of pixels of its colour\n", cases[i].name, g, 100 * share);
        ck_assert_msg(share > cases[i].min_share, "%s: only %.2f of the pixels have its colour", cases[i].name, share);
        ck_assert_int_eq(draft_emoji_render(f, g, 32, b), STATUS_OK);
        ck_assert(memcmp(a, b, sizeof a) == 0);   /* deterministic */
        /* corners are background: white */
        ck_assert(a[0] == 255 && a[1] == 255 && a[2] == 255);
    }
    /* a ZWJ sequence's parts alone are different glyphs from the ligature */
    uint32_t fire[] = {0x2764, 0xFE0F, 0x200D, 0x1F525}, heart[] = {0x2764, 0xFE0F};
    ck_assert_int_ne(draft_emoji_glyph(f, fire, 4), draft_emoji_glyph(f, heart, 2));
    uint32_t none[] = {0x41, 0x200D, 0x42};   /* not an emoji sequence */
    ck_assert_int_eq(draft_emoji_glyph(f, none, 3), 0);
    draft_emoji_font_close(f);
    ck_assert(draft_emoji_font_open("/nonexistent/NotoColorEmoji.ttf") == NULL);
    ck_assert(strstr(tensor_error(), "fonts-noto-color-emoji") != NULL);
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_build_real)
{
    if (!have_data()) return;
    LEAK_CHECK_BEGIN();
    /* the first 20 emoji of the file: a copy of its head keeps the test fast */
    size_t n;
    char *txt = (char *)test_slurp(EMOJI_TEST, &n);
    char *cut = txt;
    for (int k = 0; k < 20 && cut; k++) {
        cut = strstr(cut + 1, "; fully-qualified");
    }
    ck_assert(cut != NULL);
    cut = strchr(cut, '\n');
    tmp_setup();
    test_spit(path_in("bad.bin"), txt, (size_t)(cut + 1 - txt));
    free(txt);
    struct draft_dataset d;
    struct draft_emoji_counts c;
    ck_assert_msg(draft_emoji_build(path_in("bad.bin"), FONT, 16, &d, &c) == STATUS_OK, "%s", tensor_error());
    ck_assert_int_eq(c.fully_qualified, 20);
    ck_assert_int_eq(c.candidates, 20);
    ck_assert_int_eq(c.rendered, 20);
    ck_assert_int_eq(d.n, 20);
    ck_assert_str_eq(d.captions[0], "grinning face");
    ck_assert_str_eq(d.groups[0], "Smileys & Emotion");
    ck_assert_str_eq(d.subgroups[0], "face-smiling");
    ck_assert_str_eq(d.codes[0], "1F600");
    for (int i = 0; i < d.n; i++) {   /* smileys: mostly yellow (red and green high, blue low) */
        int yellow = 0;
        for (int p = 0; p < 16 * 16; p++) {
            const uint8_t *q = d.pixels + ((size_t)i * 256 + (size_t)p) * 3;
            yellow += q[0] > 180 && q[1] > 120 && q[2] < 100;
        }
        ck_assert_msg(yellow > 256 / 5, "%s: %d yellow pixels of 256", d.captions[i], yellow);
    }
    draft_dataset_free(&d);
    /* missing inputs name the package */
    ck_assert(draft_emoji_build("/nonexistent/emoji-test.txt", FONT, 16, &d, &c) != STATUS_OK);
    ck_assert(strstr(tensor_error(), "unicode-data") != NULL);
    ck_assert(draft_emoji_build(path_in("bad.bin"), "/nonexistent.ttf", 16, &d, &c) != STATUS_OK);
    ck_assert(strstr(tensor_error(), "fonts-noto-color-emoji") != NULL);
    /* skin-tone lines are dropped, malformed lines are errors with the line number */
    const char *t2 = "# group: G\n# subgroup: s\n1F44B ; fully-qualified # 👋 E0.6 waving hand\n"
                     "1F44B 1F3FB ; fully-qualified # 👋🏻 E1.0 waving hand: light skin tone\n"
                     "1F44B ; unqualified # 👋 E0.6 waving hand\n";
    test_spit(path_in("bad.bin"), t2, strlen(t2));
    struct draft_emoji *e;
    int ne, fq;
    ck_assert_int_eq(draft_emoji_list_load(path_in("bad.bin"), &e, &ne, &fq), STATUS_OK);
    ck_assert(ne == 1 && fq == 2 && !strcmp(e[0].name, "waving hand") && !strcmp(e[0].group, "G"));
    draft_emoji_list_free(e, ne);
    test_spit(path_in("bad.bin"), "# x\n1F44B fully-qualified\n", 26);
    ck_assert(draft_emoji_list_load(path_in("bad.bin"), &e, &ne, &fq) != STATUS_OK);
    ck_assert_msg(strstr(tensor_error(), "bad.bin:2") != NULL, "%s", tensor_error());
    tmp_teardown();
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dataset");
    TCase *tc = tcase_create("file");
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_corrupt_files);
    tcase_add_test(tc, test_batch_and_split);
    suite_add_tcase(s, tc);
    TCase *tb = tcase_create("bpe");
    tcase_add_test(tb, test_bpe_hand_case);
    tcase_add_test(tb, test_bpe_roundtrip);
    suite_add_tcase(s, tb);
    TCase *tr = tcase_create("emoji");
    tcase_set_timeout(tr, 60);
    tcase_add_test(tr, test_render_real);
    tcase_add_test(tr, test_build_real);
    suite_add_tcase(s, tr);
    return test_run_suite(s);
}
