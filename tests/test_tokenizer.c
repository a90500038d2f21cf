/* test_tokenizer.c — the CLIP BPE tokenizer: the golden prompts of the reference (parity folder,
 * real CLIP vocabulary) and standalone tests on a tiny vocabulary written to a temporary folder:
 * merge ranks, "</w>", truncation and padding, the cleanup and pre-tokeniser (seen through
 * decode), invalid UTF-8, and malformed vocab.json / merges.txt. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diffusion/tokenizer.h"
#include "diffusion/wordpiece.h"
#include "tests/harness.h"
#include "tests/parity.h"

/* ---------------------------------------------------------------- files */

static char tmpdir[64];

static void write_file(const char *name, const char *text, char *path, size_t n)
{
    snprintf(path, n, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static void tmp_setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/draft_tok_XXXXXX");
    ck_assert(mkdtemp(tmpdir) != NULL);
}

static void tmp_teardown(void)
{
    const char *names[] = {"vocab.json", "merges.txt"};
    char p[128];
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", tmpdir, names[i]);
        unlink(p);
    }
    rmdir(tmpdir);
}

/* ---------------------------------------------------------------- a tiny vocabulary */

static void byte_char(uint8_t b, char *out)
{
    uint32_t c = clip_byte_to_unicode(b);
    if (c < 0x80) { out[0] = (char)c; out[1] = 0; }
    else { out[0] = (char)(0xC0 | (c >> 6)); out[1] = (char)(0x80 | (c & 0x3F)); out[2] = 0; }
}

/* vocab.json with the 512 byte tokens, the results of `merges` ("left right" pairs) and the
 * two specials; `skip` names a token to leave out (NULL: none). Returns malloc'd JSON. */
static char *tiny_vocab_json(const char *const *merges, int n_merges, const char *skip)
{
    cJSON *o = cJSON_CreateObject();
    int id = 0;
    char tok[64];
    for (int b = 0; b < 256; b++) {
        byte_char((uint8_t)b, tok);
        if (!skip || strcmp(tok, skip)) cJSON_AddNumberToObject(o, tok, id++);
    }
    for (int b = 0; b < 256; b++) {
        byte_char((uint8_t)b, tok);
        strcat(tok, "</w>");
        if (!skip || strcmp(tok, skip)) cJSON_AddNumberToObject(o, tok, id++);
    }
    for (int i = 0; i < n_merges; i++) {
        const char *sp = strchr(merges[i], ' ');
        snprintf(tok, sizeof tok, "%.*s%s", (int)(sp - merges[i]), merges[i], sp + 1);
        if (!cJSON_GetObjectItemCaseSensitive(o, tok)) cJSON_AddNumberToObject(o, tok, id++);
    }
    if (!skip || strcmp(skip, "<|startoftext|>")) cJSON_AddNumberToObject(o, "<|startoftext|>", id++);
    if (!skip || strcmp(skip, "<|endoftext|>")) cJSON_AddNumberToObject(o, "<|endoftext|>", id++);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static char *merges_txt(const char *const *merges, int n)
{
    size_t len = 16;
    for (int i = 0; i < n; i++) len += strlen(merges[i]) + 1;
    char *s = malloc(len);
    strcpy(s, "#version: 0.2\n");
    for (int i = 0; i < n; i++) { strcat(s, merges[i]); strcat(s, "\n"); }
    return s;
}

static struct clip_tokenizer *tiny_tokenizer(const char *const *merges, int n)
{
    char *v = tiny_vocab_json(merges, n, NULL), *m = merges_txt(merges, n);
    char vp[128], mp[128];
    write_file("vocab.json", v, vp, sizeof vp);
    write_file("merges.txt", m, mp, sizeof mp);
    free(v);
    free(m);
    struct clip_tokenizer *t = clip_tokenizer_load(vp, mp);
    ck_assert_msg(t != NULL, "tiny tokenizer: %s", tensor_error());
    return t;
}

static const char *const tiny_merges[] = {"b c</w>", "a b", "a bc</w>", "a a", "a b</w>", "c a", "ca t</w>"};

static int32_t id_of(const struct clip_tokenizer *t, const char *tok)
{
    int32_t id = clip_token_id(t, tok);
    ck_assert_msg(id >= 0, "token %s not in the tiny vocabulary", tok);
    return id;
}

/* tokenize text and compare with the listed tokens */
static void expect_tokens(const struct clip_tokenizer *t, const char *text, int n, const char *const *toks)
{
    int32_t ids[32];
    int got = clip_tokenize(t, text, ids, 32);
    ck_assert_msg(got == n, "\"%s\": %d ids, expected %d (%s)", text, got, n, got < 0 ? tensor_error() : "");
    for (int i = 0; i < n; i++)
        ck_assert_msg(ids[i] == id_of(t, toks[i]), "\"%s\": id %d is %d, expected %s", text, i, ids[i], toks[i]);
    printf("tokenizer bpe \"%s\" -> %d tokens ok\n", text, n);
}

/* ---------------------------------------------------------------- standalone tests */

START_TEST(test_bpe_ranks)
{
    LEAK_CHECK_BEGIN();
    tmp_setup();
    struct clip_tokenizer *t = tiny_tokenizer(tiny_merges, 7);
    /* "b c</w>" ranks before "a b", so abc → a + bc</w> → abc</w> */
    expect_tokens(t, "abc", 1, (const char *const[]){"abc</w>"});
    /* the word end: "ab" merges through "a b</w>", not "a b" */
    expect_tokens(t, "ab", 1, (const char *const[]){"ab</w>"});
    expect_tokens(t, "abab", 2, (const char *const[]){"ab", "ab</w>"});
    /* all occurrences of the best pair, left to right, without overlap */
    expect_tokens(t, "aaa", 2, (const char *const[]){"aa", "a</w>"});
    expect_tokens(t, "aaaa", 3, (const char *const[]){"aa", "a", "a</w>"});
    /* single characters get "</w>"; words are lower-cased and split */
    expect_tokens(t, "A  cat", 2, (const char *const[]){"a</w>", "cat</w>"});
    expect_tokens(t, "cats", 3, (const char *const[]){"ca", "t", "s</w>"});
    clip_tokenizer_free(t);

    /* the other rank order: "a b" first leaves ab + c</w> (no merge "ab c</w>") */
    static const char *const swapped[] = {"a b", "b c</w>", "a bc</w>"};
    t = tiny_tokenizer(swapped, 3);
    expect_tokens(t, "abc", 2, (const char *const[]){"ab", "c</w>"});
    /* special tokens written in the text become their ids, other spellings do not */
    int32_t ids[32];
    ck_assert_int_eq(clip_tokenize(t, "<|startoftext|>a <|endoftext|>", ids, 32), 3);
    ck_assert_int_eq(ids[0], clip_bos_id(t));
    ck_assert_int_eq(ids[1], id_of(t, "a</w>"));
    ck_assert_int_eq(ids[2], clip_eos_id(t));
    ck_assert_int_gt(clip_tokenize(t, "<|\xC5\xBFtartoftext|>", ids, 32), 1);   /* U+017F folds to s */
    clip_tokenizer_free(t);
    tmp_teardown();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_frame_77)
{
    LEAK_CHECK_BEGIN();
    tmp_setup();
    struct clip_tokenizer *t = tiny_tokenizer(tiny_merges, 7);
    int32_t bos = clip_bos_id(t), eos = clip_eos_id(t), a = id_of(t, "a</w>"), cat = id_of(t, "cat</w>");
    int32_t out[CLIP_CONTEXT];

    /* padding: bos, ids, eos, then eos */
    ck_assert_int_eq(clip_tokenize_77(t, "a cat", out), STATUS_OK);
    ck_assert_int_eq(out[0], bos);
    ck_assert_int_eq(out[1], a);
    ck_assert_int_eq(out[2], cat);
    for (int i = 3; i < CLIP_CONTEXT; i++) ck_assert_int_eq(out[i], eos);
    ck_assert_int_eq(clip_tokenize_77(t, "", out), STATUS_OK);
    ck_assert_int_eq(out[0], bos);
    for (int i = 1; i < CLIP_CONTEXT; i++) ck_assert_int_eq(out[i], eos);
    printf("tokenizer frame padding ok\n");

    /* truncation: 80 words keep the first 75, then eos, no padding */
    char text[80 * 4 + 1] = "";
    for (int i = 0; i < 80; i++) strcat(text, i % 2 ? "cat " : "a ");
    int32_t ids[100];
    ck_assert_int_eq(clip_tokenize(t, text, NULL, 0), 80);   /* counts like snprintf */
    ck_assert_int_eq(clip_tokenize(t, text, ids, 10), 80);
    ck_assert_int_eq(ids[9], cat);
    ck_assert_int_eq(clip_tokenize_77(t, text, out), STATUS_OK);
    ck_assert_int_eq(out[0], bos);
    for (int i = 0; i < CLIP_MAX_CONTENT; i++) ck_assert_int_eq(out[1 + i], i % 2 ? cat : a);
    ck_assert_int_eq(out[CLIP_CONTEXT - 1], eos);
    /* exactly 75 ids: no truncation, eos last */
    text[0] = 0;
    for (int i = 0; i < 75; i++) strcat(text, "cat ");
    ck_assert_int_eq(clip_tokenize_77(t, text, out), STATUS_OK);
    ck_assert_int_eq(out[75], cat);
    ck_assert_int_eq(out[76], eos);
    printf("tokenizer frame truncation 80 -> 75 ok\n");

    /* OWL-ViT's framing: 16 ids padded with 0; the 80 words cut at 14; the shortest frame is bos, eos */
    int32_t o16[16];
    ck_assert_int_eq(clip_tokenize_padded(t, "a cat", o16, 16, 0), STATUS_OK);
    ck_assert(o16[0] == bos && o16[1] == a && o16[2] == cat && o16[3] == eos);
    for (int i = 4; i < 16; i++) ck_assert_int_eq(o16[i], 0);
    text[0] = 0;
    for (int i = 0; i < 80; i++) strcat(text, i % 2 ? "cat " : "a ");
    ck_assert_int_eq(clip_tokenize_padded(t, text, o16, 16, 0), STATUS_OK);
    for (int i = 0; i < 14; i++) ck_assert_int_eq(o16[1 + i], i % 2 ? cat : a);
    ck_assert_int_eq(o16[15], eos);
    ck_assert_int_eq(clip_tokenize_padded(t, "a cat", o16, 2, 0), STATUS_OK);
    ck_assert(o16[0] == bos && o16[1] == eos);
    ck_assert_int_eq(clip_tokenize_padded(t, "a cat", o16, 1, 0), STATUS_VALUE);
    ck_assert_int_eq(clip_tokenize_padded(t, "a \xff", o16, 16, 0), STATUS_VALUE);
    printf("tokenizer frame of 16 padded with 0 ok\n");
    clip_tokenizer_free(t);
    tmp_teardown();
    LEAK_CHECK_END();
}
END_TEST

/* the cleanup (html.unescape twice, strip, whitespace, lower) and the pre-tokeniser, seen
 * through decode: with a vocabulary of bytes every pre-token decodes to itself plus a space.
 * The expected strings are what openai's simple_tokenizer (without ftfy) gives. */
START_TEST(test_cleanup_pretokenize)
{
    LEAK_CHECK_BEGIN();
    tmp_setup();
    struct clip_tokenizer *t = tiny_tokenizer(tiny_merges, 7);
    static const struct { const char *what, *in, *out; } cases[] = {
        {"case+whitespace", "A Photo  Of\tA\nCAT ", "a photo of a cat "},
        {"contractions", "it's ISN'T we'll they'd've 'S", "it 's isn 't we 'll they 'd 've 's "},
        {"digits", "3.14 1,000", "3 . 1 4 1 , 0 0 0 "},
        {"punctuation", "hyper-realistic, f/1.8", "hyper - realistic , f / 1 . 8 "},
        {"html entities",
         "&amp; &lt;b&gt; &amp;lt; &notit; &#65;&#x42;&#X43 &#128; x&#1;y &#xD800; &ampx &#0; &#99999999999; "
         "&NotEqualTilde; &AElig &bogus;",
         "& < b > < \xC2\xAC it ; abc \xE2\x82\xAC xy \xEF\xBF\xBD & x \xEF\xBF\xBD \xEF\xBF\xBD "
         "\xE2\x89\x82\xCC\xB8 \xC3\xA6 & bogus ; "},
        {"greek final sigma", "\xCE\x9F\xCE\x94\xCE\x9F\xCE\xA3 \xCE\xA3\xCE\x91 \xCE\xA3. A\xCE\xA3.",
         "\xCE\xBF\xCE\xB4\xCE\xBF\xCF\x82 \xCF\x83\xCE\xB1 \xCF\x83 . a\xCF\x82 . "},
        {"dotted capital I", "\xC4\xB0", "i \xCC\x87 "},
        {"U+0345 matches no class", "a\xCD\x85" "b", "a b "},
        {"isspace strip vs regex \\s", "\x1c a \x1c", "a "},
        {"U+001C inside", "a\x1c" "b", "a \x1c b "},
        {"CJK letters", "\xE6\x9D\xB1\xE4\xBA\xAC\xE3\x82\xBF\xE3\x83\xAF\xE3\x83\xBC",
         "\xE6\x9D\xB1\xE4\xBA\xAC\xE3\x82\xBF\xE3\x83\xAF\xE3\x83\xBC "},
        {"emoji run", "\xF0\x9F\x90\xB1\xF0\x9F\x9A\x80!", "\xF0\x9F\x90\xB1\xF0\x9F\x9A\x80! "},
        {"unicode spaces", "x\xC2\xA0y\xE3\x80\x80z\xE2\x80\xA8w", "x y z w "},
        {"specials", "<|startoftext|>a <|endoftext|> <|\xC5\xBFtartoftext|>",
         "<|startoftext|>a <|endoftext|><|\xC5\xBFtartoftext|> "},
        {"long s", "\xC5\xBF'\xC5\xBF", "\xC5\xBF '\xC5\xBF "},
        {"latin accents", "\xC3\x9Cn\xC3\xAF\x63\xC3\xB6\x64\xC3\xA9 \xC3\x80\xC3\x89\xC3\x8E\xC3\x95\xC3\x9C \xC3\x9F \xEF\xAC\x81",
         "\xC3\xBCn\xC3\xAF\x63\xC3\xB6\x64\xC3\xA9 \xC3\xA0\xC3\xA9\xC3\xAE\xC3\xB5\xC3\xBC \xC3\x9F \xEF\xAC\x81 "},
        {"cyrillic", "\xD0\x9F\xD1\x80\xD0\x98\xD0\x92\xD0\x95\xD0\xA2", "\xD0\xBF\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 "},
        {"only whitespace", "\t \n ", ""},
    };
    int32_t ids[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int n = clip_tokenize(t, cases[i].in, ids, 256);
        ck_assert_msg(n >= 0 && n <= 256, "%s: %s", cases[i].what, tensor_error());
        char *d = clip_decode(t, ids, n);
        ck_assert_msg(d != NULL, "%s: %s", cases[i].what, tensor_error());
        ck_assert_msg(!strcmp(d, cases[i].out), "%s: decoded \"%s\", expected \"%s\"", cases[i].what, d, cases[i].out);
        printf("tokenizer clean %s ok (%d tokens)\n", cases[i].what, n);
        free(d);
    }
    clip_tokenizer_free(t);
    tmp_teardown();
    LEAK_CHECK_END();
}
END_TEST

START_TEST(test_invalid_utf8)
{
    LEAK_CHECK_BEGIN();
    tmp_setup();
    struct clip_tokenizer *t = tiny_tokenizer(tiny_merges, 7);
    static const char *const bad[] = {
        "\xff", "a\xc3", "abc\xc3(", "\xe0\x80\x80" /* overlong */, "\xc0\xaf", "\xed\xa0\x80" /* surrogate */,
        "\xf4\x90\x80\x80" /* > U+10FFFF */, "\x80", "ok \xf0\x9f\x98",
    };
    int32_t ids[8], out[CLIP_CONTEXT];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tensor_clear_error();
        ck_assert_int_eq(clip_tokenize(t, bad[i], ids, 8), -1);
        ck_assert_msg(strstr(tensor_error(), "invalid UTF-8 at byte"), "message: %s", tensor_error());
        ck_assert_int_eq(clip_tokenize_77(t, bad[i], out), STATUS_VALUE);
    }
    printf("tokenizer invalid UTF-8: %zu inputs rejected ok (%s)\n", sizeof bad / sizeof bad[0], tensor_error());
    /* decode: an id outside the vocabulary is an error; invalid byte sequences become U+FFFD */
    int32_t far[1] = {clip_vocab_size(t)};
    ck_assert_ptr_null(clip_decode(t, far, 1));
    ck_assert_ptr_nonnull(strstr(tensor_error(), "outside the vocabulary"));
    char tok[8];
    byte_char(0xff, tok);
    int32_t ff[2] = {id_of(t, tok), id_of(t, "a</w>")};
    char *d = clip_decode(t, ff, 2);
    ck_assert_str_eq(d, "\xEF\xBF\xBD" "a ");
    free(d);
    clip_tokenizer_free(t);
    tmp_teardown();
    LEAK_CHECK_END();
}
END_TEST

/* the vocabulary JSON with token `tok` given the id `id` */
static char *vocab_with(const char *json, const char *tok, double id)
{
    cJSON *o = cJSON_Parse(json);
    ck_assert(cJSON_ReplaceItemInObjectCaseSensitive(o, tok, cJSON_CreateNumber(id)));
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* load a tokenizer from the given texts; expect failure with all `needles` in the message */
static void expect_load_error(const char *vocab, const char *merges, const char *needle1, const char *needle2)
{
    char vp[128], mp[128];
    write_file("vocab.json", vocab, vp, sizeof vp);
    write_file("merges.txt", merges, mp, sizeof mp);
    tensor_clear_error();
    struct clip_tokenizer *t = clip_tokenizer_load(vp, mp);
    ck_assert_msg(t == NULL, "loaded despite expecting \"%s\"", needle2);
    const char *e = tensor_error();
    ck_assert_msg(strstr(e, needle1) && strstr(e, needle2), "message \"%s\" lacks \"%s\" / \"%s\"", e, needle1, needle2);
    printf("tokenizer load error ok: %s\n", e);
}

START_TEST(test_load_errors)
{
    LEAK_CHECK_BEGIN();
    tmp_setup();
    char *good_v = tiny_vocab_json(tiny_merges, 7, NULL), *good_m = merges_txt(tiny_merges, 7);

    /* vocab.json */
    expect_load_error("{\n \"a\": 0,\n \"b\": ,\n}\n", good_m, "vocab.json:3:", "invalid JSON");
    expect_load_error("[1, 2]", good_m, "vocab.json", "not a JSON object");
    expect_load_error("{\"a\": 0}", good_m, "vocab.json", "need the 512 byte tokens");
    char *v = vocab_with(good_v, "abc</w>", 1.5);
    expect_load_error(v, good_m, "vocab.json", "token \"abc</w>\": id must be an integer");
    free(v);
    v = vocab_with(good_v, "a</w>", 0);   /* the id of "!" */
    expect_load_error(v, good_m, "vocab.json", "id 0 used by both");
    free(v);
    v = tiny_vocab_json(tiny_merges, 7, "A");
    expect_load_error(v, good_m, "vocab.json", "byte token \"A\" (byte 0x41) missing");
    free(v);
    v = tiny_vocab_json(tiny_merges, 7, "<|endoftext|>");
    expect_load_error(v, good_m, "vocab.json", "<|endoftext|> missing");
    free(v);

    /* merges.txt */
    expect_load_error(good_v, "b c</w>\n", "merges.txt:1:", "#version");
    expect_load_error(good_v, "#version: 0.2\nb c</w>\na b c\n", "merges.txt:3:", "expected two tokens, found 3");
    expect_load_error(good_v, "#version: 0.2\nb c</w>\n\na b\n", "merges.txt:3:", "found 0");
    expect_load_error(good_v, "#version: 0.2\nzz q\n", "merges.txt:2:", "\"zz\" is not in the vocabulary");
    expect_load_error(good_v, "#version: 0.2\nq z\n", "merges.txt:2:", "\"qz\" is not in the vocabulary");

    /* missing files */
    tensor_clear_error();
    ck_assert_ptr_null(clip_tokenizer_load("/nonexistent/vocab.json", "/nonexistent/merges.txt"));
    ck_assert_ptr_nonnull(strstr(tensor_error(), "/nonexistent/vocab.json: cannot open"));
    ck_assert_int_eq(tensor_status(), STATUS_IO);

    /* CRLF line ends and trailing blank lines are accepted */
    char vp[128], mp[128];
    write_file("vocab.json", good_v, vp, sizeof vp);
    write_file("merges.txt", "#version: 0.2\r\nb c</w>\r\na b\r\n\r\n\n", mp, sizeof mp);
    struct clip_tokenizer *t = clip_tokenizer_load(vp, mp);
    ck_assert_msg(t != NULL, "%s", tensor_error());
    expect_tokens(t, "abc", 2, (const char *const[]){"a", "bc</w>"});
    clip_tokenizer_free(t);
    free(good_v);
    free(good_m);
    tmp_teardown();
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- golden (real vocabulary) */

static struct clip_tokenizer *real_tokenizer(void)
{
    char vp[512], mp[512];
    if (!parity_path("tiny-sd/tokenizer/vocab.json", vp, sizeof vp)) return NULL;
    if (!parity_path("tiny-sd/tokenizer/merges.txt", mp, sizeof mp)) return NULL;
    struct clip_tokenizer *t = clip_tokenizer_load(vp, mp);
    ck_assert_msg(t != NULL, "%s", tensor_error());
    return t;
}

static bool json_ids_equal(const cJSON *arr, const int32_t *ids, int n)
{
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) != n) return false;
    int i = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++)
        if (!cJSON_IsNumber(e) || e->valuedouble != ids[i]) return false;
    return true;
}

/* the prompt on one line: control characters escaped, cut after ~40 bytes at a character start */
static void show_prompt(const char *p, char *out, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; p[i] && j + 8 < n; i++) {
        if (i >= 40 && (p[i] & 0xC0) != 0x80) { strcpy(out + j, "..."); j += 3; break; }
        if ((unsigned char)p[i] < 0x20) j += (size_t)snprintf(out + j, n - j, "\\x%02x", (unsigned char)p[i]);
        else out[j++] = p[i];
    }
    out[j] = 0;
}

START_TEST(test_golden)
{
    LEAK_CHECK_BEGIN();
    struct clip_tokenizer *t = real_tokenizer();
    char path[512];
    if (!t || !parity_path("golden/tokenizer.json", path, sizeof path)) {
        clip_tokenizer_free(t);
        return;
    }
    ck_assert_int_eq(clip_vocab_size(t), 49408);
    ck_assert_int_eq(clip_bos_id(t), 49406);
    ck_assert_int_eq(clip_eos_id(t), 49407);
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    ck_assert_int_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
    buf[len] = 0;
    fclose(f);
    cJSON *root = cJSON_Parse(buf);
    free(buf);
    ck_assert_msg(cJSON_IsArray(root), "%s: not a JSON array", path);
    int total = 0, passed = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        const char *prompt = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "prompt"));
        const char *want_dec = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "decoded"));
        ck_assert_ptr_nonnull(prompt);
        int32_t ids[512], out[CLIP_CONTEXT];
        int n = clip_tokenize(t, prompt, ids, 512);
        ck_assert_msg(n >= 0 && n <= 512, "%s", tensor_error());
        bool ok_ids = json_ids_equal(cJSON_GetObjectItemCaseSensitive(e, "ids"), ids, n);
        bool ok_77 = clip_tokenize_77(t, prompt, out) == STATUS_OK &&
                     json_ids_equal(cJSON_GetObjectItemCaseSensitive(e, "input_ids_77"), out, CLIP_CONTEXT);
        char *dec = clip_decode(t, ids, n);
        bool ok_dec = dec && want_dec && !strcmp(dec, want_dec);
        free(dec);
        bool ok = ok_ids && ok_77 && ok_dec;
        char shown[64];
        show_prompt(prompt, shown, sizeof shown);
        printf("tokenizer golden \"%s\" ids=%d %s%s%s%s\n", shown, n,
               ok ? "ok" : "FAILED", ok_ids ? "" : " ids", ok_77 ? "" : " input_ids_77", ok_dec ? "" : " decoded");
        total++;
        passed += ok;
    }
    cJSON_Delete(root);
    printf("tokenizer golden: %d/%d prompts exact (ids, input_ids_77, decoded)\n", passed, total);
    ck_assert_int_gt(total, 0);
    ck_assert_int_eq(passed, total);

    /* the test vectors of the spec (SD14.md §3) */
    static const struct { const char *text; int n; int32_t ids[10]; } vec[] = {
        {"a photo of a cat", 7, {49406, 320, 1125, 539, 320, 2368, 49407}},
        {"Hello, World!", 6, {49406, 3306, 267, 1002, 256, 49407}},
        {"", 2, {49406, 49407}},
        {"A photo of a cat.", 8, {49406, 320, 1125, 539, 320, 2368, 269, 49407}},
        {"a photograph of an astronaut riding a horse", 10, {49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407}},
        {"a cat's toy", 6, {49406, 320, 2368, 568, 5988, 49407}},
        {"dog", 3, {49406, 1929, 49407}},
        {"an apple", 4, {49406, 550, 3055, 49407}},
    };
    for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) {
        int32_t out[CLIP_CONTEXT];
        ck_assert_int_eq(clip_tokenize_77(t, vec[i].text, out), STATUS_OK);
        for (int k = 0; k < CLIP_CONTEXT; k++)
            ck_assert_msg(out[k] == (k < vec[i].n ? vec[i].ids[k] : 49407), "\"%s\": position %d is %d", vec[i].text, k, out[k]);
    }
    printf("tokenizer spec vectors: %zu ok\n", sizeof vec / sizeof vec[0]);
    clip_tokenizer_free(t);
    LEAK_CHECK_END();
}
END_TEST

/* ---------------------------------------------------------------- BERT WordPiece */

static const char wp_vocab[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nphoto\nof\ncat\nplay\n##ing\nun\n##aff\n"
                               "##able\ncafe\n,\n.\n!\n[\n]\n\xe7\x9a\x84\nx\n##x\ni\nstrasse\nabc\n\xcf\x83\xcf\x82\n";

/* the ids of text under this vocabulary, as token strings joined by spaces */
static void wp_expect(const struct wp_tokenizer *t, const char *text, const char *want)
{
    int32_t ids[256];
    const int n = wp_tokenize(t, text, ids, 256);
    ck_assert_msg(n >= 0 && n <= 256, "'%s': %s", text, tensor_error());
    char got[2048] = "";
    for (int i = 0; i < n; i++) {
        char one[64];
        snprintf(one, sizeof one, "%s%d", i ? " " : "", ids[i]);
        strcat(got, one);
    }
    /* want: token strings -> their ids */
    char buf[1024], ids_want[2048] = "";
    snprintf(buf, sizeof buf, "%s", want);
    int k = 0;
    for (char *sv = NULL, *w = strtok_r(buf, " ", &sv); w; w = strtok_r(NULL, " ", &sv), k++) {
        const int32_t id = wp_token_id(t, w);
        ck_assert_msg(id >= 0, "expected token '%s' is not in the vocabulary", w);
        char one[64];
        snprintf(one, sizeof one, "%s%d", k ? " " : "", id);
        strcat(ids_want, one);
    }
    ck_assert_msg(!strcmp(got, ids_want), "'%s': ids %s, expected %s (%s)", text, got, ids_want, want);
}

START_TEST(test_wordpiece)
{
    LEAK_CHECK_BEGIN();
    struct wp_tokenizer *t = wp_tokenizer_from_memory(wp_vocab, sizeof wp_vocab - 1, "test vocab");
    ck_assert_msg(t, "%s", tensor_error());
    ck_assert_int_eq(wp_vocab_size(t), 27);
    ck_assert_int_eq(wp_add_special(t, "[DEC]"), 27);
    ck_assert_int_eq(wp_add_special(t, "[DEC]"), 27);
    wp_expect(t, "A Photo of a CAT.", "a photo of a cat .");
    wp_expect(t, "unaffable playing", "un ##aff ##able play ##ing");
    wp_expect(t, "Caf\xc3\xa9!", "cafe !");                       /* accents stripped, punctuation alone */
    wp_expect(t, "cafe\xcc\x81", "cafe");                          /* a combining accent: the same */
    wp_expect(t, "unknown cats", "[UNK] [UNK]");                   /* no covering pieces: the whole word */
    wp_expect(t, "\xe7\x9a\x84\xe7\x9a\x84x", "\xe7\x9a\x84 \xe7\x9a\x84 x");   /* CJK ideographs stand alone */
    wp_expect(t, "[CLS] a[SEP][cls] [DEC]x", "[CLS] a [SEP] [ [UNK] ] [DEC] x");   /* specials: literal, cased */
    wp_expect(t, "c\x01" "at a\xe3\x80\x80" "cat\t\n", "cat a cat");   /* controls dropped, Zs is a space */
    wp_expect(t, "\xc4\xb0 STRASSE \xce\xa3\xce\xa3", "i strasse \xcf\x83\xcf\x82");   /* lower(): i + U+0307, final sigma */
    wp_expect(t, "", "");
    char longw[120] = "";
    for (int i = 0; i < 100; i++) strcat(longw, "x");
    int32_t ids[128];
    ck_assert_int_eq(wp_tokenize(t, longw, ids, 128), 100);   /* x ##x ... */
    ck_assert(ids[0] == wp_token_id(t, "x") && ids[99] == wp_token_id(t, "##x"));
    strcat(longw, "x");
    wp_expect(t, longw, "[UNK]");                                 /* over 100 characters */
    ck_assert_int_eq(wp_tokenize(t, "a a a", ids, 1), 3);          /* counts like snprintf */
    /* framing: [CLS] ... [SEP] [PAD]..., the mask on the text; truncated to length - 2 */
    int32_t e[8], m[8];
    ck_assert_int_eq(wp_encode(t, "a photo", e, m, 8), STATUS_OK);
    const int32_t want_e[8] = {2, 5, 6, 3, 0, 0, 0, 0}, want_m[8] = {1, 1, 1, 1, 0, 0, 0, 0};
    for (int i = 0; i < 8; i++) ck_assert(e[i] == want_e[i] && m[i] == want_m[i]);
    ck_assert_int_eq(wp_encode(t, "a a a a a a a a a", e, m, 8), STATUS_OK);
    ck_assert(e[0] == 2 && e[6] == 5 && e[7] == 3 && m[7] == 1);
    ck_assert_int_eq(wp_encode(t, "a", e, NULL, 1), STATUS_VALUE);
    ck_assert_int_eq(wp_tokenize(t, "a \xff", ids, 128), -1);
    ck_assert(strstr(tensor_error(), "invalid UTF-8 at byte 2"));
    wp_tokenizer_free(t);
    /* vocabularies refused: a token twice, no [CLS] */
    static const char dup[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\na\nb\na\n", nocls[] = "[PAD]\n[UNK]\n[SEP]\n";
    ck_assert(wp_tokenizer_from_memory(dup, sizeof dup - 1, "dup.txt") == NULL);
    ck_assert_msg(strstr(tensor_error(), "dup.txt: line 7 repeats the token 'a' of line 5"), "%s", tensor_error());
    ck_assert(wp_tokenizer_from_memory(nocls, sizeof nocls - 1, "nocls.txt") == NULL);
    ck_assert(strstr(tensor_error(), "nocls.txt: no [CLS] token"));
    ck_assert(wp_tokenizer_load("/nonexistent/vocab.txt") == NULL);
    printf("wordpiece ok\n");
    LEAK_CHECK_END();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("standalone");
    tcase_add_test(tc, test_bpe_ranks);
    tcase_add_test(tc, test_frame_77);
    tcase_add_test(tc, test_cleanup_pretokenize);
    tcase_add_test(tc, test_invalid_utf8);
    tcase_add_test(tc, test_load_errors);
    tcase_add_test(tc, test_wordpiece);
    suite_add_tcase(s, tc);
    TCase *tg = tcase_create("golden");
    tcase_set_timeout(tg, 120);
    tcase_add_test(tg, test_golden);
    suite_add_tcase(s, tg);
    return test_run_suite(s);
}
