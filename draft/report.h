/* report.h — the run report: an SVG line chart, sample-diversity measures and a self-contained
 * HTML page (inline CSS and SVG, images by relative path).
 *
 * Errors go through tensor_fail(): read them with tensor_error(). */
#ifndef DRAFT_REPORT_H
#define DRAFT_REPORT_H

#include "tensor/tensor.h"

/* A standalone SVG document (no XML prolog, so it can also be inlined into HTML), malloc'd;
 * NULL with a message on bad arguments or out of memory.
 * `x` has n values; `ys[k]` (k < n_series) has n values, NaN/inf marking gaps (a NULL series is
 * skipped). Each series is one <g> holding one <polyline> per run of finite points (so one
 * polyline per series when there are no gaps) and a <circle> for each isolated point. Axes get
 * ticks at round numbers (1, 2 or 5 × 10^k) covering the finite data; n = 0 or no finite data
 * draws empty axes with "no data". `series_names`, `title`, `xlabel`, `ylabel` may be NULL;
 * all text is XML-escaped. */
char *draft_svg_line_chart(const double *x, const double *const *ys, const char *const *series_names, int n_series,
                           int n, const char *title, const char *xlabel, const char *ylabel);
/* The same with an x of its own for each series: series k has ns[k] points (xs[k][i], ys[k][i]). */
char *draft_svg_chart_xy(const double *const *xs, const double *const *ys, const int *ns, const char *const *series_names,
                         int n_series, const char *title, const char *xlabel, const char *ylabel);

/* Diversity of a batch of samples, to make reward hacking visible (the fine-tuned model
 * collapsing to one image that scores well). `images` is [B,3,H,W] in [-1,1], any float dtype,
 * device and strides; B >= 2, else NaN with a message.
 *
 * draft_diversity: mean over the B(B-1)/2 pairs i<j of RMS(x_i - x_j) / 2, where RMS is the
 *   root mean square over all 3·H·W values. 0 for identical images; 1 only for pairs that
 *   are pixel-wise opposite extremes (-1 vs +1); two independent uniform images give about 0.41.
 * draft_pixel_std: mean over the 3·H·W positions of the standard deviation across the B samples
 *   (population std, divide by B), in [-1,1] units (so in [0,1]). It is the usual cheap
 *   "per-pixel variance" collapse check; for B = 2 it is mean|x_0 - x_1| / 2.
 * Both are pixel-space measures: they see colour and layout changes, not semantic ones (a
 * feature-space measure such as LPIPS or CLIP-embedding distances would need a model). */
double draft_diversity(const struct tensor *images);
/* Diversity in a model's feature space: mean over the pairs i<j of 1 - cos(e_i, e_j) for
 * embeddings [B, P] (draft_reward_image_embeds: CLIP's image embeddings), B >= 2, else NaN with a
 * message. 0 for samples the model sees as one; it falls when the samples converge on one
 * subject or layout, which a pixel measure misses when their colours spread at the same time. */
double draft_feature_diversity(const struct tensor *embeds);
double draft_pixel_std(const struct tensor *images);

/* One intermediate sample grid of the run. */
struct draft_report_grid {
    int step;
    const char *png;   /* path relative to the HTML file */
};

/* One term of a sum reward: its spec (without the weight), weight and unweighted mean scores. */
struct draft_report_term {
    const char *spec;
    double weight, before, after;
};

/* One held-out image: its prompt and reward before and after. */
struct draft_report_image {
    const char *prompt;
    double before, after;
};

/* One file of the run folder: its path relative to the page, and what it is for. */
struct draft_report_file {
    const char *path, *what;
};
/* Everything the HTML report shows. Strings are UTF-8 and may be NULL (section left out);
 * numbers may be NaN (shown as "n/a"). */
struct draft_report {
    const char *title;
    int n_settings;                      /* the run's settings, shown as a key/value table */
    const char *const *setting_keys;
    const char *const *setting_values;
    const char *chart_svg;               /* inlined as is: trusted markup (draft_svg_line_chart's output) */
    const char *before_png, *after_png;  /* sample grids before and after fine-tuning (relative paths) */
    int n_grids;                         /* intermediate grids, in step order */
    const struct draft_report_grid *grids;
    double reward_before, reward_after;
    double diversity_before, diversity_after;   /* draft_diversity of the before/after samples */
    const char *eval_reward;             /* a second reward's spec, scored on the same samples (NULL: none) */
    double eval_reward_before, eval_reward_after;
    const char *summary;                 /* the final one-line summary */
    int n_terms;                         /* a sum reward's terms, each unweighted, under the reward's row */
    const struct draft_report_term *terms;
    const char *diversity_model;         /* the spec whose image embeddings also measure diversity (NULL: none) */
    double clip_diversity_before, clip_diversity_after;   /* draft_feature_diversity in them */
    int n_images;                        /* each held-out image's reward, in the grids' order */
    const struct draft_report_image *images;
    const char *best_metric;             /* --keep-best's metric (NULL: none), its best value and step */
    double best_value;
    int best_step;
    const char *measures_html;           /* inlined as is: draft_run_measures_html's charts (NULL or "": none) */
    int n_files;                         /* the run folder's files, linked with what each is for */
    const struct draft_report_file *files;
    int n_eval_terms;                    /* a sum eval reward's terms, each unweighted, under its row */
    const struct draft_report_term *eval_terms;
};

/* Writes the report as one self-contained HTML file, atomically (temporary file, then rename).
 * All text is HTML-escaped; image paths are percent-encoded in src and escaped in captions. */
enum status draft_report_html(const char *path, const struct draft_report *r);

/* Several draft-run folders side by side, in one self-contained HTML file written atomically: a
 * table (method, reward spec, held-out reward and diversity before and after, the eval reward,
 * steps, reward queries, training seconds, peak memory) and charts of the held-out reward, the
 * training batches' reward and gradient norm, the diversity and the eval reward, each run one series, against
 * x = the step, the reward queries (steps x batch x accum, x lv_n for DRaFT-LV) or the summed
 * step times. Reads <dir>/metrics.jsonl and <dir>/config.json (config.json is needed only for the
 * reward queries). Errors name the file and line. */
/* The measures of a run folder's metrics.jsonl by step, as HTML to inline (one SVG chart each,
 * trusted markup, malloc'd): from 3 evaluations on (before and after alone are the results
 * table), the pixel diversity, the CLIP diversity and the eval reward where the evaluations have
 * them, and each of the first n_terms terms of a sum reward (titled with term_names[k] where
 * given); from 3 training steps on, the gradient norm before clipping. "" when there is nothing to
 * draw. NULL with a message naming the file and line on error. */
char *draft_run_measures_html(const char *run_dir, int n_terms, const char *const *term_names);
/* One combination of a draft-sample sweep of LoRA scales, and what its images measured (NaN:
 * not measured). */
struct draft_sweep_row {
    const double *scales;     /* one per LoRA */
    const char *dir;          /* its folder, relative to the page */
    double reward, diversity, clip_diversity;
};
/* The sweep as one self-contained HTML page, written atomically: a table (the scales, the mean
 * reward, the pixel and CLIP diversity, each combination's folder), the grid image (relative
 * path; NULL: none), and for a sweep of one LoRA the reward and the diversities against its
 * scale (the paper's "LoRA scaling": reward up, diversity down). reward_spec and div_spec may be
 * NULL (not measured). */
enum status draft_sweep_html(const char *path, int n_loras, const char *const *lora_paths, int n_rows,
                             const struct draft_sweep_row *rows, const char *reward_spec, const char *div_spec,
                             const char *grid_png);
#define DRAFT_COMPARE_MAX_RUNS 8
enum draft_compare_x { DRAFT_COMPARE_STEP, DRAFT_COMPARE_QUERIES, DRAFT_COMPARE_SECONDS };
enum status draft_compare_html(const char *path, int n_runs, const char *const *run_dirs, enum draft_compare_x x);

#endif
