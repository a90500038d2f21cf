/* fuzz_compare.c — libFuzzer target: arbitrary bytes as a draft-run folder's metrics.jsonl and
 * config.json (split at the first NUL; no NUL: no config.json), read by draft_compare_html by
 * step, by reward queries and by seconds, and by draft_run_measures_html. A refusal must carry
 * a message; an accepted folder gives a page. The folder and the page live in one temporary folder, removed at exit. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "draft/report.h"

static char dir[64], metrics[96], config[96], page[96];

static void cleanup(void)
{
    unlink(metrics);
    unlink(config);
    unlink(page);
    rmdir(dir);
}

static void setup(void)
{
    if (dir[0]) return;
    snprintf(dir, sizeof dir, "/tmp/fuzz_compare_XXXXXX");
    if (!mkdtemp(dir)) abort();
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
    snprintf(config, sizeof config, "%s/config.json", dir);
    snprintf(page, sizeof page, "%s/page.html", dir);
    atexit(cleanup);
}

static void write_file(const char *path, const uint8_t *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    const uint8_t *nul = memchr(data, 0, size);
    const size_t nm = nul ? (size_t)(nul - data) : size;
    write_file(metrics, data, nm);
    if (nul) write_file(config, nul + 1, size - nm - 1);
    else unlink(config);
    const char *runs[2] = {dir, dir};
    for (int x = DRAFT_COMPARE_STEP; x <= DRAFT_COMPARE_SECONDS; x++) {
        unlink(page);
        if (draft_compare_html(page, 2, runs, (enum draft_compare_x)x) == STATUS_OK) {
            if (access(page, R_OK)) abort();   /* accepted: a page */
        } else if (!tensor_error()[0] || !access(page, F_OK)) {
            abort();   /* refused: a message, and no page */
        }
    }
    /* the run report's charts of the same metrics: a refusal carries a message */
    char *h = draft_run_measures_html(dir, 3, (const char *[]){"a", NULL, "c"});
    if (!h && !tensor_error()[0]) abort();
    free(h);
    return 0;
}
