/* draft-bpe-learn — learns a small BPE vocabulary in CLIP's file format (vocab.json, merges.txt,
 * tokenizer_config.json, special_tokens_map.json) from captions, so diffusion/tokenizer.h's
 * clip_tokenizer_load reads it.
 *
 * Usage: draft-bpe-learn [--vocab-size N] [--min-count N] --out DIR INPUT
 *   INPUT  a dataset file from draft-emoji-data (its captions), or a text file, one caption a line
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "diffusion/tokenizer.h"
#include "draft/dataset.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: draft-bpe-learn [--vocab-size N] [--min-count N] --out DIR INPUT\n"
               "  --vocab-size N  total tokens incl. 512 byte tokens and 2 specials (default 1024)\n"
               "  --min-count N   stop when no pair occurs N times (default 2)\n"
               "  --out DIR       output folder (created)\n"
               "  INPUT           dataset .bin from draft-emoji-data, or text with one caption per line\n");
}

static bool is_dataset(const char *path)
{
    FILE *f = fopen(path, "rb");
    char m[8] = {0};
    bool r = f && fread(m, 1, 8, f) == 8 && !memcmp(m, "DRAFTEMJ", 8);
    if (f) fclose(f);
    return r;
}

/* lines of a text file (empty lines skipped); returns count or -1 */
static int read_lines(const char *path, char ***out)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "draft-bpe-learn: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    char **v = NULL, *line = NULL;
    size_t lcap = 0;
    int n = 0, cap = 0;
    ssize_t l;
    while ((l = getline(&line, &lcap, f)) >= 0) {
        while (l > 0 && (line[l - 1] == '\n' || line[l - 1] == '\r')) line[--l] = 0;
        if (l == 0) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            char **nv = realloc(v, sizeof *v * (size_t)cap);
            if (!nv) break;
            v = nv;
        }
        v[n++] = strdup(line);
    }
    free(line);
    fclose(f);
    *out = v;
    return n;
}

int main(int argc, char **argv)
{
    int vocab = 1024, min_count = 2;
    const char *out = NULL, *in = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (a[0] == '-' && a[1] == '-') {
            if (i + 1 >= argc) {
                fprintf(stderr, "draft-bpe-learn: %s needs a value\n", a);
                return 2;
            }
            const char *v = argv[++i];
            char *end;
            if (!strcmp(a, "--out")) out = v;
            else if (!strcmp(a, "--vocab-size") || !strcmp(a, "--min-count")) {
                long x = strtol(v, &end, 10);
                if (*end || x < 1 || x > 1000000) {
                    fprintf(stderr, "draft-bpe-learn: %s %s: expected a positive integer\n", a, v);
                    return 2;
                }
                *(a[2] == 'v' ? &vocab : &min_count) = (int)x;
            } else {
                fprintf(stderr, "draft-bpe-learn: unknown argument %s\n", a);
                usage(stderr);
                return 2;
            }
        } else if (!in) in = a;
        else {
            fprintf(stderr, "draft-bpe-learn: more than one input (%s, %s)\n", in, a);
            return 2;
        }
    }
    if (!out || !in) {
        usage(stderr);
        return 2;
    }
    if (mkdir(out, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "draft-bpe-learn: cannot create %s: %s\n", out, strerror(errno));
        return 1;
    }
    struct draft_dataset d = {0};
    char **lines = NULL;
    const char *const *texts;
    int n;
    if (is_dataset(in)) {
        if (draft_dataset_load(&d, in)) {
            fprintf(stderr, "draft-bpe-learn: %s\n", tensor_error());
            return 1;
        }
        texts = (const char *const *)d.captions;
        n = d.n;
    } else {
        if ((n = read_lines(in, &lines)) < 0) return 1;
        texts = (const char *const *)lines;
    }
    int n_merges = 0, n_vocab = 0, rc = 0;
    if (draft_bpe_learn(texts, n, vocab, min_count, out, &n_merges, &n_vocab)) {
        fprintf(stderr, "draft-bpe-learn: %s\n", tensor_error());
        rc = 1;
    } else {
        printf("learnt %d merges from %d captions: %s/vocab.json (%d tokens), %s/merges.txt\n", n_merges, n, out, n_vocab,
               out);
        /* a few tokenizations, read back through the project's tokenizer */
        char vp[4096], mp[4096];
        snprintf(vp, sizeof vp, "%s/vocab.json", out);
        snprintf(mp, sizeof mp, "%s/merges.txt", out);
        struct clip_tokenizer *tok = clip_tokenizer_load(vp, mp);
        if (!tok) {
            fprintf(stderr, "draft-bpe-learn: the written files do not load: %s\n", tensor_error());
            rc = 1;
        }
        long total = 0;
        for (int i = 0; tok && i < n; i++) {
            int32_t ids[256];
            int m = clip_tokenize(tok, texts[i], ids, 256);
            total += m;
            if (i % (n / 6 + 1) == 0) {
                printf("  \"%s\" ->", texts[i]);
                for (int j = 0; j < m && j < 256; j++) printf(" %d", ids[j]);
                printf("\n");
            }
        }
        if (tok && n) printf("mean tokens per caption: %.2f\n", (double)total / n);
        clip_tokenizer_free(tok);
    }
    draft_dataset_free(&d);
    for (int i = 0; lines && i < n; i++) free(lines[i]);
    free(lines);
    return rc;
}
