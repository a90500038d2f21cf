/* fuzz_tokenizer.c — libFuzzer target: arbitrary bytes through the CLIP tokenizer.
 *
 * The tokenizer comes from a small in-memory vocabulary (the 512 byte tokens, a few dozen
 * merges, the specials), or from $DRAFT_PARITY_DIR/tiny-sd/tokenizer/{vocab.json,merges.txt}
 * (the real CLIP vocabulary) when that variable is set. Each input, cut at its first NUL, goes
 * through clip_tokenize, clip_tokenize_77, clip_tokenize_padded (OWL-ViT's 16 ids) and clip_decode,
 * and through BERT's WordPiece (wp_tokenize, wp_encode) with a small vocabulary, and the results are
 * checked for consistency: the calls agree, the 77 ids are framed bos / content / eos..., OWL-ViT's
 * 16 bos / content / eos / 0..., every id is in the vocabulary, invalid UTF-8 is an error for all,
 * decoding what was tokenized succeeds.
 * Build and run: see fuzz/README.md. */
#define FUZZ_NAME "fuzz_tokenizer"   /* names the target in CHECK's message */
#include "fuzz/tiny_vocab.h"
#include "diffusion/wordpiece.h"

static struct clip_tokenizer *tok;
static struct wp_tokenizer *wp;

/* specials, the lower-case letters alone and as continuations, a few words and marks */
static struct wp_tokenizer *tiny_wordpiece(void)
{
    char v[2048] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n";
    for (char c = 'a'; c <= 'z'; c++) {
        char l[16];
        snprintf(l, sizeof l, "%c\n##%c\n", c, c);
        strcat(v, l);
    }
    strcat(v, "the\nphoto\n##ing\n.\n,\n!\n[\n]\n\xe7\x9a\x84\n");
    struct wp_tokenizer *t = wp_tokenizer_from_memory(v, strlen(v), "fuzz vocab");
    if (t && wp_add_special(t, "[DEC]") < 0) t = NULL;
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = getenv("DRAFT_PARITY_DIR");
    if (dir && *dir) {
        char vp[1024], mp[1024];
        snprintf(vp, sizeof vp, "%s/tiny-sd/tokenizer/vocab.json", dir);
        snprintf(mp, sizeof mp, "%s/tiny-sd/tokenizer/merges.txt", dir);
        tok = clip_tokenizer_load(vp, mp);
    } else {
        tok = tiny_tokenizer();
    }
    wp = tiny_wordpiece();
    if (!tok || !wp) {
        fprintf(stderr, "fuzz_tokenizer: cannot build the tokenizer: %s\n", fuzz_error);
        abort();
    }
    fprintf(stderr, "fuzz_tokenizer: vocabulary of %d tokens (%s)\n", clip_vocab_size(tok),
            dir && *dir ? "DRAFT_PARITY_DIR" : "in-memory");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;

    enum { CAP = 2 * CLIP_MAX_CONTENT };
    int32_t ids[CAP], out[CLIP_CONTEXT];
    int n = clip_tokenize(tok, text, ids, CAP);
    enum status st = clip_tokenize_77(tok, text, out);
    int32_t owl[16];
    enum status so = clip_tokenize_padded(tok, text, owl, 16, 0);
    int32_t wids[64], wenc[16], wmask[16];
    const int wn = wp_tokenize(wp, text, wids, 64);
    const enum status we = wp_encode(wp, text, wenc, wmask, 16);
    CHECK((wn < 0) == (n < 0) && (we != STATUS_OK) == (wn < 0));   /* both reject exactly invalid UTF-8 */
    if (wn >= 0) {
        const int kw = wn < 14 ? wn : 14, nv = wp_vocab_size(wp);
        for (int i = 0; i < wn && i < 64; i++) CHECK(wids[i] >= 0 && wids[i] < nv);
        CHECK(wenc[0] == wp_token_id(wp, "[CLS]") && wenc[1 + kw] == wp_token_id(wp, "[SEP]") && wmask[1 + kw] == 1);
        for (int i = 0; i < kw; i++) CHECK(wenc[1 + i] == wids[i] && wmask[1 + i] == 1);
        for (int i = 2 + kw; i < 16; i++) CHECK(wenc[i] == wp_token_id(wp, "[PAD]") && wmask[i] == 0);
    }
    if (n < 0) {
        CHECK(st != STATUS_OK);
        CHECK(so != STATUS_OK);
    } else {
        CHECK(so == STATUS_OK);
        const int ko = n < 14 ? n : 14;
        CHECK(owl[0] == clip_bos_id(tok) && owl[1 + ko] == clip_eos_id(tok));
        for (int i = 0; i < ko; i++) CHECK(owl[1 + i] == ids[i]);
        for (int i = 2 + ko; i < 16; i++) CHECK(owl[i] == 0);
        CHECK(st == STATUS_OK);
        int keep = n < CLIP_MAX_CONTENT ? n : CLIP_MAX_CONTENT, vocab = clip_vocab_size(tok);
        CHECK(out[0] == clip_bos_id(tok));
        for (int i = 0; i < keep; i++) CHECK(out[1 + i] == ids[i]);
        for (int i = 1 + keep; i < CLIP_CONTEXT; i++) CHECK(out[i] == clip_eos_id(tok));
        for (int i = 0; i < CLIP_CONTEXT; i++) CHECK(out[i] >= 0 && out[i] < vocab);
        int m = n < CAP ? n : CAP;
        char *d = clip_decode(tok, ids, m);
        CHECK(d != NULL);   /* no text tokenizes to a NUL byte */
        CHECK(strlen(d) <= 4 * size + 2 * (size_t)m);
        free(d);
    }
    free(text);
    return 0;
}
