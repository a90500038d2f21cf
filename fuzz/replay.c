/* replay.c — a main() for the fuzz targets without libFuzzer, so they build with the project
 * (meson: fuzz/meson.build) and run in every `meson test` (suite fuzz_replay), sanitizers
 * included in the ASan build.
 *
 *   <target>_replay [-n N] [-s SEED] [-t SECONDS] [-k K [-o OUT]] FILE...
 *
 * Each FILE goes to LLVMFuzzerTestOneInput as it is, then N mutants of it (default 500): a
 * deterministic xorshift sequence of one to four edits each (bit flips, special bytes, bytes
 * copied from elsewhere in the input, erased, duplicated or inserted ranges, runs of digits,
 * truncation). No coverage feedback: a regression
 * check that is cheap enough for CI, not a replacement for a libFuzzer campaign (README.md).
 * A target that fails aborts; the handler names the file and mutant first, and `-k K -o OUT`
 * writes that mutant (the K-th of FILE under the same seed) to OUT and runs only it. An input
 * that runs longer than -t SECONDS (default 10; 0: no limit) fails too: a loop that never ends
 * would otherwise grow until the machine kills the process, with no mutant named. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));
void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

static struct {
    const char *file;
    long mutant;   /* -1: the file as it is */
    uint64_t seed;
} cur;

static void say(const char *s) { (void)!write(2, s, strlen(s)); }

/* async-signal-safe: no stdio */
static void report(void)
{
    char num[2][24];
    uint64_t v[2] = {(uint64_t)(cur.mutant < 0 ? 0 : cur.mutant), cur.seed};
    for (int i = 0; i < 2; i++) {
        char tmp[24];
        int n = 0;
        do { tmp[n++] = (char)('0' + v[i] % 10); v[i] /= 10; } while (v[i]);
        for (int j = 0; j < n; j++) num[i][j] = tmp[n - 1 - j];
        num[i][n] = 0;
    }
    say("fuzz_replay: the target failed on ");
    say(cur.file ? cur.file : "?");
    if (cur.mutant < 0) {
        say(" (unmutated)\n");
        return;
    }
    say(", mutant ");
    say(num[0]);
    say(" (seed ");
    say(num[1]);
    say("); write it with: -s ");
    say(num[1]);
    say(" -k ");
    say(num[0]);
    say(" -o FILE\n");
}

static void on_signal(int sig)
{
    if (sig == SIGALRM) say("fuzz_replay: one input ran past the time limit (-t): a hang or a runaway loop\n");
    report();
    signal(sig, SIG_DFL);
    raise(sig);
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static size_t below(uint64_t *s, size_t n) { return n ? (size_t)(rng_next(s) % n) : 0; }

/* one edit of buf[0..*n) in place (capacity cap) */
static void mutate_once(uint64_t *s, uint8_t *buf, size_t *n, size_t cap)
{
    static const uint8_t special[] = {0, 0xff, 0x7f, 0x80, '0', '9', '-', '"', '\\', '{', '}', '[', ']', ',',
                                      ':', '\n', ' ', '.', 'e', '(', 'q', 'X', 'K', 'J', 0x80, 0x8c, 0x95};
    static const char *const runs[] = {"99999999999999999999", "-1", "1e308", "4294967296", "0", "18446744073709551615",
                                       "\\u0000", "</w>", "\xf0\x9f\x98\x80", "\xff\xfe"};
    const size_t len = *n;
    switch (below(s, 8)) {
    case 0:   /* flip a bit */
        if (len) buf[below(s, len)] ^= (uint8_t)(1u << below(s, 8));
        break;
    case 1:   /* a special byte */
        if (len) buf[below(s, len)] = special[below(s, sizeof special)];
        break;
    case 2: { /* erase a range */
        if (!len) break;
        size_t at = below(s, len), l = 1 + below(s, (len - at) < 64 ? len - at : 64);
        memmove(buf + at, buf + at + l, len - at - l);
        *n = len - l;
        break;
    }
    case 3: { /* duplicate a range somewhere */
        if (!len) break;
        size_t from = below(s, len), l = 1 + below(s, (len - from) < 64 ? len - from : 64), to = below(s, len + 1);
        if (len + l > cap) break;
        uint8_t tmp[64];
        memcpy(tmp, buf + from, l);
        memmove(buf + to + l, buf + to, len - to);
        memcpy(buf + to, tmp, l);
        *n = len + l;
        break;
    }
    case 4: { /* insert a run */
        const char *r = runs[below(s, sizeof runs / sizeof runs[0])];
        size_t l = strlen(r), to = below(s, len + 1);
        if (len + l > cap) break;
        memmove(buf + to + l, buf + to, len - to);
        memcpy(buf + to, r, l);
        *n = len + l;
        break;
    }
    case 5:   /* overwrite with a run */
        if (len) {
            const char *r = runs[below(s, sizeof runs / sizeof runs[0])];
            size_t at = below(s, len), l = strlen(r);
            memcpy(buf + at, r, l < len - at ? l : len - at);
        }
        break;
    case 6:   /* a byte copied from elsewhere in the input (keeps text looking like the format) */
        if (len) buf[below(s, len)] = buf[below(s, len)];
        break;
    default:  /* truncate */
        *n = below(s, len + 1);
        break;
    }
}

static uint8_t *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, len = 0;
    uint8_t *b = malloc(cap);
    for (size_t got; b && (got = fread(b + len, 1, cap - len, f)) > 0;) {
        len += got;
        if (len == cap) {
            uint8_t *nb = realloc(b, cap *= 2);
            if (!nb) { free(b); b = NULL; }
            else b = nb;
        }
    }
    fclose(f);
    *n = len;
    return b;
}

int main(int argc, char **argv)
{
    long n_mutants = 500, only = -1, limit_s = 10;
    uint64_t seed = 0x5eed;
    const char *out = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "n:s:k:o:t:")) != -1) {
        if (opt == 'n') n_mutants = strtol(optarg, NULL, 10);
        else if (opt == 't') limit_s = strtol(optarg, NULL, 10);
        else if (opt == 's') seed = strtoull(optarg, NULL, 10);
        else if (opt == 'k') only = strtol(optarg, NULL, 10);
        else if (opt == 'o') out = optarg;
        else {
            fprintf(stderr, "usage: %s [-n N] [-s SEED] [-t SECONDS] [-k K [-o OUT]] FILE...\n", argv[0]);
            return 2;
        }
    }
    if (optind >= argc || n_mutants < 0 || limit_s < 0 || (out && only < 0)) {
        fprintf(stderr, "usage: %s [-n N] [-s SEED] [-t SECONDS] [-k K [-o OUT]] FILE... (-o needs -k)\n", argv[0]);
        return 2;
    }
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(report);
    signal(SIGABRT, on_signal);
    signal(SIGSEGV, on_signal);
    signal(SIGBUS, on_signal);
    signal(SIGFPE, on_signal);
    signal(SIGALRM, on_signal);
    long runs = 0;
    for (int a = optind; a < argc; a++) {
        size_t n0 = 0;
        uint8_t *orig = read_all(argv[a], &n0);
        if (!orig) {
            fprintf(stderr, "fuzz_replay: cannot read %s\n", argv[a]);
            return 2;
        }
        const size_t cap = 2 * n0 + 256;
        uint8_t *buf = malloc(cap), *input = NULL;
        if (!buf) return 2;
        cur.file = argv[a];
        cur.seed = seed;
        /* each file's sequence from its name, not its place in the list, so that `-k K` with the
         * file alone gives the mutant a run over several named */
        const char *name = strrchr(argv[a], '/') ? strrchr(argv[a], '/') + 1 : argv[a];
        uint64_t h = 0xcbf29ce484222325ULL;   /* FNV-1a */
        for (const char *c = name; *c; c++) h = (h ^ (unsigned char)*c) * 0x100000001b3ULL;
        uint64_t s = seed ^ (0x9E3779B97F4A7C15ULL * (h | 1));
        for (long k = -1; k < n_mutants && (only < 0 || k <= only); k++) {
            size_t n = n0;
            memcpy(buf, orig, n0);
            if (k >= 0)
                for (int e = 0, edits = 1 + (int)below(&s, 4); e < edits; e++) mutate_once(&s, buf, &n, cap);
            if (only >= 0 && k != only) continue;
            if (out) {
                FILE *f = fopen(out, "wb");
                if (!f || fwrite(buf, 1, n, f) != n || fclose(f)) {
                    fprintf(stderr, "fuzz_replay: cannot write %s\n", out);
                    return 2;
                }
            }
            /* an exact-size copy, so that reading past the end is a sanitizer report */
            input = malloc(n ? n : 1);
            if (!input) return 2;
            memcpy(input, buf, n);
            cur.mutant = k;
            alarm((unsigned)limit_s);   /* 0: no limit */
            LLVMFuzzerTestOneInput(input, n);
            alarm(0);
            free(input);
            runs++;
        }
        free(buf);
        free(orig);
    }
    printf("fuzz_replay %s: %ld inputs from %d files, seed %llu: no failure\n", argv[0], runs, argc - optind,
           (unsigned long long)seed);
    return 0;
}
