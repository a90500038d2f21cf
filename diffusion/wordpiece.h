/* wordpiece.h — BERT's uncased WordPiece tokenizer, as transformers' BertTokenizer
 * (tokenization_bert_legacy.py: BasicTokenizer + WordpieceTokenizer) with do_lower_case: what
 * BLIP, and so ImageReward, tokenizes prompts with (bert-base-uncased's vocab.txt).
 *
 * The algorithm, in the reference's order:
 *  - special tokens ([PAD] [UNK] [CLS] [SEP] [MASK], and tokens added with wp_add_special) are cut
 *    out of the text where they appear literally (case-sensitive, the longest at the earliest
 *    place), as the added-tokens trie does;
 *  - _clean_text: NUL, U+FFFD and control characters (category C*, but \t \n \r) are dropped,
 *    whitespace (space \t \n \r and category Zs) becomes a space;
 *  - _tokenize_chinese_chars: a space on each side of a CJK ideograph;
 *  - split on str.isspace(); each word lower-cased (str.lower()), then NFD with the marks (Mn)
 *    dropped (_run_strip_accents), then cut at each punctuation character (ASCII symbols and
 *    category P*), which stands alone;
 *  - WordPiece: greedy longest match from the left, continuations prefixed "##"; a word that
 *    cannot be covered, or longer than 100 code points, is [UNK].
 * The reference NFC-normalises before lower-casing; NFD then undoes it, so it is not repeated.
 */
#ifndef DIFFUSION_WORDPIECE_H
#define DIFFUSION_WORDPIECE_H

#include "tensor/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

struct wp_tokenizer;

/* vocab.txt: one token a line, its id the line number (0-based), no token twice; it must hold
 * [PAD] [UNK] [CLS] [SEP]. NULL with a message naming the file and line on error. */
struct wp_tokenizer *wp_tokenizer_load(const char *vocab_txt_path);
struct wp_tokenizer *wp_tokenizer_from_memory(const char *vocab_txt, size_t len, const char *label);
void wp_tokenizer_free(struct wp_tokenizer *t);
/* a special token after the vocabulary (BLIP adds [DEC] and [ENC]): its id, or -1 on error */
int32_t wp_add_special(struct wp_tokenizer *t, const char *token);
int wp_vocab_size(const struct wp_tokenizer *t);   /* with the added tokens */
int32_t wp_token_id(const struct wp_tokenizer *t, const char *token);   /* -1 when absent */

/* ids of `utf8` without [CLS]/[SEP]: writes at most max ids and returns how many the whole text
 * has (like clip_tokenize), or -1 on error (invalid UTF-8, text over 256 MiB, out of memory) */
int wp_tokenize(const struct wp_tokenizer *t, const char *utf8, int32_t *ids, int max);
/* BertTokenizer(text, padding="max_length", truncation=True, max_length=length): [CLS], the first
 * length - 2 ids at most, [SEP], then [PAD]; mask 1 on the text's positions and 0 on the padding
 * (mask may be NULL) */
enum status wp_encode(const struct wp_tokenizer *t, const char *utf8, int32_t *ids, int32_t *mask, int length);

#ifdef __cplusplus
}
#endif

#endif
