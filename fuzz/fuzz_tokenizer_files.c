/* fuzz_tokenizer_files.c — libFuzzer target: arbitrary bytes as a tokenizer's vocab.json and
 * merges.txt (what `--model` folders and the tokenizer tools read from disk).
 *
 * The input up to its first NUL byte is vocab.json, the rest merges.txt (no NUL: an empty
 * merges.txt). Each goes in its own exact-size buffer, so reading past either end is a sanitizer
 * report. clip_tokenizer_from_memory must refuse with a message, or accept a tokenizer that
 * works: bos/eos and every byte token in the vocabulary, and a few prompts tokenize to ids inside
 * it and decode again. The vocab.json part is also read as a WordPiece vocab.txt
 * (wp_tokenizer_from_memory), with the same rule: a refusal with a message, or a tokenizer whose
 * ids stay inside it and whose framing is [CLS] ... [SEP] [PAD]... Seed: FUZZ_SEED_OUT=<file> writes the tiny vocabulary's pair of files in
 * this format before fuzzing starts. Build and run: see fuzz/README.md. */
#define FUZZ_NAME "fuzz_tokenizer_files"   /* names the target in CHECK's message */
#include "fuzz/tiny_vocab.h"
#include "diffusion/wordpiece.h"

/* bytes as a WordPiece vocab.txt: refused with a message, or a tokenizer that works */
static void wordpiece_check(const char *v, size_t vn)
{
    fuzz_error[0] = 0;
    fuzz_status = STATUS_OK;
    struct wp_tokenizer *w = wp_tokenizer_from_memory(v, vn, "vocab.txt");
    if (!w) {
        CHECK(fuzz_status != STATUS_OK && fuzz_error[0]);
        return;
    }
    const int nv = wp_vocab_size(w);
    const int32_t cls = wp_token_id(w, "[CLS]"), sep = wp_token_id(w, "[SEP]"), pad = wp_token_id(w, "[PAD]");
    CHECK(cls >= 0 && sep >= 0 && pad >= 0 && wp_token_id(w, "[UNK]") >= 0);
    static const char *const texts[] = {"a photo of a cat", "Caf\xC3\xA9 [CLS] x[SEP]y \xE7\x9A\x84!", "", "##a ##"};
    for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
        int32_t ids[64], e[12], m[12];
        const int n = wp_tokenize(w, texts[k], ids, 64);
        CHECK(n >= 0 && n <= 64);
        for (int i = 0; i < n; i++) CHECK(ids[i] >= 0 && ids[i] < nv);
        CHECK(wp_encode(w, texts[k], e, m, 12) == STATUS_OK);
        const int kk = n < 10 ? n : 10;
        CHECK(e[0] == cls && e[1 + kk] == sep && m[1 + kk] == 1);
        for (int i = 2 + kk; i < 12; i++) CHECK(e[i] == pad && m[i] == 0);
    }
    wp_tokenizer_free(w);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *seed = getenv("FUZZ_SEED_OUT");
    if (seed && *seed) {
        char *v, *m;
        size_t vn, mn;
        tiny_vocab_files(&v, &vn, &m, &mn);
        FILE *f = fopen(seed, "wb");
        CHECK(f && fwrite(v, 1, vn, f) == vn && fputc(0, f) == 0 && fwrite(m, 1, mn, f) == mn && !fclose(f));
        fprintf(stderr, "fuzz_tokenizer_files: wrote the seed %s (%zu + 1 + %zu bytes)\n", seed, vn, mn);
        free(v);
        free(m);
    }
    return 0;
}

static char *copy_exact(const uint8_t *p, size_t n)
{
    char *c = malloc(n ? n : 1);
    CHECK(c);
    if (n) memcpy(c, p, n);
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    const size_t vn = nul ? (size_t)(nul - data) : size, mn = nul ? size - vn - 1 : 0;
    char *v = copy_exact(data, vn), *m = copy_exact(nul ? nul + 1 : data, mn);
    wordpiece_check(v, vn);
    fuzz_error[0] = 0;
    fuzz_status = STATUS_OK;
    struct clip_tokenizer *t = clip_tokenizer_from_memory(v, vn, "vocab.json", m, mn, "merges.txt");
    free(v);
    free(m);
    if (!t) {
        CHECK(fuzz_status != STATUS_OK && fuzz_error[0]);   /* a refusal says why */
        return 0;
    }
    const int vocab = clip_vocab_size(t);
    CHECK(vocab >= 514);
    CHECK(clip_bos_id(t) >= 0 && clip_bos_id(t) < vocab && clip_eos_id(t) >= 0 && clip_eos_id(t) < vocab);
    CHECK(clip_bos_id(t) != clip_eos_id(t));
    static const char *const prompts[] = {
        "a photo of a cat", "it's 123 &amp; <|startoftext|>x<|endoftext|>", "\xC3\x89t\xC3\xA9 \xE2\x98\x83 caaaaaaat",
        "", "   \t\n ", "the the the theing of", "!!!??..."};
    for (size_t k = 0; k < sizeof prompts / sizeof prompts[0]; k++) {
        int32_t ids[256], out[CLIP_CONTEXT];
        const int n = clip_tokenize(t, prompts[k], ids, 256);
        CHECK(n >= 0 && n <= 256);   /* each prompt has fewer ids than bytes: BPE only merges */
        for (int i = 0; i < n; i++) CHECK(ids[i] >= 0 && ids[i] < vocab);
        CHECK(clip_tokenize_77(t, prompts[k], out) == STATUS_OK);
        CHECK(out[0] == clip_bos_id(t));
        for (int i = 0; i < CLIP_CONTEXT; i++) CHECK(out[i] >= 0 && out[i] < vocab);
        char *d = clip_decode(t, ids, n);
        CHECK(d != NULL);
        free(d);
    }
    clip_tokenizer_free(t);
    return 0;
}
