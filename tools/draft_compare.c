/* draft_compare.c — `draft-compare`: several draft-run folders side by side in one HTML page.
 *
 *   draft-compare runs/lv runs/k1 runs/full                       by optimiser step
 *   draft-compare --x queries --out cmp.html runs/lv runs/refl     by reward queries (sample efficiency)
 *
 * Thin over draft_compare_html (draft/report.h): it reads each folder's metrics.jsonl and
 * config.json, and writes a table and the curves of every run on shared axes. */
#include "draft/report.h"
#include "draft/run.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: draft-compare [--x step|queries|seconds] [--out FILE] RUN_DIR RUN_DIR...\n"
            "Compares draft-run folders (up to %d): a table of each run's method, reward, held-out reward and\n"
            "diversity before and after, steps, reward queries, training time and peak memory, and the curves\n"
            "of all runs on shared axes, as one self-contained HTML file.\n"
            "  --x X        the curves' x axis: step (the default), queries (reward queries: steps x batch x\n"
            "               accum, x lv_n for DRaFT-LV; needs each run's config.json) or seconds (the\n"
            "               training steps' summed times)\n"
            "  --out FILE   the HTML file to write (default: compare.html)\n"
            "  --version    the version, the commit and the backends\n",
            DRAFT_COMPARE_MAX_RUNS);
}

int main(int argc, char **argv)
{
    const char *out = "compare.html", *dirs[DRAFT_COMPARE_MAX_RUNS];
    enum draft_compare_x x = DRAFT_COMPARE_STEP;
    int n = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (draft_tool_info_flag(a, usage)) return 0;   /* --version, --help */
        if (!strcmp(a, "--x") || !strcmp(a, "--out")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "draft-compare: %s needs a value (see --help)\n", a);
                return 2;
            }
            const char *v = argv[++i];
            if (!strcmp(a, "--out") && !v[0]) {
                fprintf(stderr, "draft-compare: --out is empty: give the HTML file to write\n");
                return 2;
            }
            if (!strcmp(a, "--out")) out = v;
            else if (!strcmp(v, "step")) x = DRAFT_COMPARE_STEP;
            else if (!strcmp(v, "queries")) x = DRAFT_COMPARE_QUERIES;
            else if (!strcmp(v, "seconds")) x = DRAFT_COMPARE_SECONDS;
            else {
                fprintf(stderr, "draft-compare: --x is step, queries or seconds, got '%s'\n", v);
                return 2;
            }
        } else if (!strncmp(a, "--", 2)) {
            fprintf(stderr, "draft-compare: unknown option '%s' (see --help)\n", a);
            return 2;
        } else if (n == DRAFT_COMPARE_MAX_RUNS) {
            fprintf(stderr, "draft-compare: at most %d runs\n", DRAFT_COMPARE_MAX_RUNS);
            return 2;
        } else {
            dirs[n++] = a;
        }
    }
    if (!n) {
        usage(stderr);
        return 2;
    }
    if (draft_compare_html(out, n, dirs, x)) {
        fprintf(stderr, "draft-compare: %s\n", tensor_error());
        return 1;
    }
    printf("compared %d run%s: %s\n", n, n > 1 ? "s" : "", out);
    return 0;
}
