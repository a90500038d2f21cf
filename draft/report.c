/* report.c — SVG line chart, diversity measures, HTML report (see report.h). */
#include "draft/report.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "draft/image.h"
#include "draft/reward.h"
#include "nn/file.h"

#include <cjson/cJSON.h>

/* ---------------------------------------------------------------- a growing string */

struct sbuf {
    char *s;
    size_t len, cap;
    bool oom;
};

static void sb_grow(struct sbuf *b, size_t add)
{
    if (b->oom) return;
    if (b->len + add + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + add + 1) cap *= 2;
    char *ns = realloc(b->s, cap);
    if (!ns) {
        b->oom = true;
        return;
    }
    b->s = ns;
    b->cap = cap;
}

static void sb_putn(struct sbuf *b, const char *s, size_t n)
{
    sb_grow(b, n);
    if (b->oom) return;
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

static void sb_puts(struct sbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
        return;
    }
    sb_grow(b, (size_t)n);
    if (b->oom) return;
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* text for XML/HTML content and attribute values */
static void sb_escape(struct sbuf *b, const char *s)
{
    if (!s) return;
    for (; *s; s++) {
        switch (*s) {
        case '&': sb_puts(b, "&amp;"); break;
        case '<': sb_puts(b, "&lt;"); break;
        case '>': sb_puts(b, "&gt;"); break;
        case '"': sb_puts(b, "&quot;"); break;
        case '\'': sb_puts(b, "&#39;"); break;
        default: sb_putn(b, s, 1);
        }
    }
}

/* a relative path as a URL: unreserved characters and '/' kept, everything else %XX */
static void sb_url(struct sbuf *b, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || strchr("-._~/", *p))
            sb_putn(b, (const char *)p, 1);
        else
            sb_printf(b, "%%%02X", *p);
    }
}

/* ---------------------------------------------------------------- SVG chart */

/* the "nice number" of Heckbert (Graphics Gems, 1990): 1, 2, 5 or 10 × 10^k near x */
static double nice_num(double x, bool round_it)
{
    double e = floor(log10(x)), f = x / pow(10, e), nf;
    if (round_it) nf = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
    else nf = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
    return nf * pow(10, e);
}

struct axis {
    double lo, hi, step;
    int decimals;   /* the ticks' digits after the point, or -1: "%.4g" */
};

/* at most this many ticks an axis: the loops over them stop there whatever the arithmetic did */
#define MAX_TICKS 32

/* round-number ticks covering [mn, mx] (finite), about `want` of them. Values near the ends of
 * the double range (a run's metrics can hold 1e308) overflow the round steps, and a window finer
 * than the values' own spacing gives steps of 0: then two ticks, at mn and mx, and a window those
 * span. */
static struct axis nice_axis(double mn, double mx, int want)
{
    if (!(mx > mn)) {   /* one value (or none): a unit-ish window around it */
        double pad = mn != 0 ? fabs(mn) * 0.1 : 1;
        mn -= pad;
        mx += pad;
    }
    double step = nice_num(nice_num(mx - mn, false) / (want - 1), true);
    struct axis a = {floor(mn / step) * step, ceil(mx / step) * step, step, 0};
    if (isfinite(step) && step > 0 && isfinite(a.lo) && isfinite(a.hi) && a.hi > a.lo &&
        a.hi / step - a.lo / step <= MAX_TICKS - 1) {
        int d = -(int)floor(log10(step) + 1e-9);
        a.decimals = d > 0 ? (d < 12 ? d : 12) : 0;
        return a;
    }
    mn = isfinite(mn) ? mn : -DBL_MAX, mx = isfinite(mx) ? mx : DBL_MAX;   /* the pad may have overflowed */
    if (!(mx > mn)) mx = nextafter(mn, DBL_MAX);   /* a value the pad could not move (the least subnormal) */
    if (!(mx > mn)) mn = nextafter(mx, -DBL_MAX);   /* or DBL_MAX itself */
    return (struct axis){mn, mx, mx / 2 - mn / 2, -1};   /* halves: mx - mn itself may overflow */
}

/* where v falls in [lo, hi], 0 to 1, in halves so that a span past DBL_MAX does not overflow (the
 * same value as (v - lo) / (hi - lo) otherwise: halving is exact) */
static double axis_frac(const struct axis *a, double v) { return (v / 2 - a->lo / 2) / (a->hi / 2 - a->lo / 2); }

/* tick i of the axis in *v, or false past its end (or past the finite doubles); in halves, as
 * axis_frac, so that a tick at DBL_MAX can be reached from -DBL_MAX */
static bool axis_tick(const struct axis *a, int i, double *v)
{
    *v = 2 * (a->lo / 2 + i * (a->step / 2));
    return i < MAX_TICKS && isfinite(*v) && !(*v > a->hi + a->step * 1e-6);
}

static void fmt_tick(char *buf, size_t n, double v, int decimals)
{
    if (decimals < 0) snprintf(buf, n, "%.4g", v);
    else snprintf(buf, n, "%.*f", decimals, v);
    if (strspn(buf, "-0.") == strlen(buf) && buf[0] == '-') memmove(buf, buf + 1, strlen(buf));   /* no "-0" */
}

static const char *const palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                      "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

char *draft_svg_line_chart(const double *x, const double *const *ys, const char *const *series_names, int n_series,
                           int n, const char *title, const char *xlabel, const char *ylabel)
{
    if (n < 0 || n_series < 0 || (n > 0 && (!x || (n_series > 0 && !ys)))) {
        tensor_fail(STATUS_VALUE, "draft_svg_line_chart: bad arguments (n=%d, n_series=%d, x %s, ys %s)", n, n_series,
                    x ? "given" : "NULL", ys ? "given" : "NULL");
        return NULL;
    }
    /* every series on the one x */
    const double **xs = malloc(sizeof *xs * (size_t)(n_series ? n_series : 1));
    int *ns = malloc(sizeof *ns * (size_t)(n_series ? n_series : 1));
    char *svg = NULL;
    if (!xs || !ns) tensor_fail(STATUS_OOM, "draft_svg_line_chart: out of memory");
    else {
        for (int k = 0; k < n_series; k++) xs[k] = x, ns[k] = n;
        svg = draft_svg_chart_xy(xs, n_series ? ys : NULL, ns, series_names, n_series, title, xlabel, ylabel);
    }
    free(xs);
    free(ns);
    return svg;
}

char *draft_svg_chart_xy(const double *const *xs, const double *const *ys, const int *ns, const char *const *series_names,
                         int n_series, const char *title, const char *xlabel, const char *ylabel)
{
    bool bad = n_series < 0 || (n_series > 0 && (!xs || !ys || !ns));
    for (int k = 0; k < n_series && !bad; k++) bad = ns[k] < 0 || (ns[k] > 0 && ys[k] && !xs[k]);
    if (bad) {
        tensor_fail(STATUS_VALUE, "draft_svg_chart_xy: bad arguments (n_series=%d, a negative count or NULL arrays)",
                    n_series);
        return NULL;
    }
    const int W = 760, H = 420, L = 72, R = W - 180, T = 44, B = H - 56;   /* plot box [L,R]×[T,B] */
    double xmn = INFINITY, xmx = -INFINITY, ymn = INFINITY, ymx = -INFINITY;
    int n_points = 0;
    for (int k = 0; k < n_series; k++) {
        if (!ys[k]) continue;
        n_points += ns[k];
        for (int i = 0; i < ns[k]; i++) {
            if (!isfinite(xs[k][i]) || !isfinite(ys[k][i])) continue;
            xmn = fmin(xmn, xs[k][i]);
            xmx = fmax(xmx, xs[k][i]);
            ymn = fmin(ymn, ys[k][i]);
            ymx = fmax(ymx, ys[k][i]);
        }
    }
    bool empty = !(xmn <= xmx);
    if (empty) xmn = ymn = 0, xmx = ymx = 1;
    struct axis ax = nice_axis(xmn, xmx, 7), ay = nice_axis(ymn, ymx, 6);
#define PX(v) (L + axis_frac(&ax, (v)) * (R - L))
#define PY(v) (B - axis_frac(&ay, (v)) * (B - T))

    struct sbuf b = {0};
    sb_printf(&b,
              "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
              "font-family=\"DejaVu Sans, Verdana, sans-serif\" font-size=\"12\">\n"
              "<rect width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n",
              W, H, W, H, W, H);
    if (title) {
        sb_printf(&b, "<text x=\"%d\" y=\"24\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">", (L + R) / 2);
        sb_escape(&b, title);
        sb_puts(&b, "</text>\n");
    }
    /* grid lines and tick labels */
    char tb[64];
    double v;
    sb_puts(&b, "<g class=\"axes\" stroke=\"#dddddd\" stroke-width=\"1\">\n");
    for (int i = 0; axis_tick(&ax, i, &v); i++) {
        sb_printf(&b, "<line x1=\"%.2f\" y1=\"%d\" x2=\"%.2f\" y2=\"%d\"/>\n", PX(v), T, PX(v), B);
    }
    for (int i = 0; axis_tick(&ay, i, &v); i++) {
        sb_printf(&b, "<line x1=\"%d\" y1=\"%.2f\" x2=\"%d\" y2=\"%.2f\"/>\n", L, PY(v), R, PY(v));
    }
    sb_puts(&b, "</g>\n<g class=\"ticks\" fill=\"#333333\">\n");
    for (int i = 0; axis_tick(&ax, i, &v); i++) {
        fmt_tick(tb, sizeof tb, v, ax.decimals);
        sb_printf(&b, "<text x=\"%.2f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", PX(v), B + 16, tb);
    }
    for (int i = 0; axis_tick(&ay, i, &v); i++) {
        fmt_tick(tb, sizeof tb, v, ay.decimals);
        sb_printf(&b, "<text x=\"%d\" y=\"%.2f\" text-anchor=\"end\" dominant-baseline=\"middle\">%s</text>\n", L - 6,
                  PY(v), tb);
    }
    sb_puts(&b, "</g>\n");
    sb_printf(&b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#333333\"/>\n", L, T, R - L,
              B - T);
    if (xlabel) {
        sb_printf(&b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">", (L + R) / 2, H - 16);
        sb_escape(&b, xlabel);
        sb_puts(&b, "</text>\n");
    }
    if (ylabel) {
        sb_printf(&b, "<text transform=\"translate(18 %d) rotate(-90)\" text-anchor=\"middle\">", (T + B) / 2);
        sb_escape(&b, ylabel);
        sb_puts(&b, "</text>\n");
    }
    if (empty)
        sb_printf(&b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"#999999\">no data</text>\n", (L + R) / 2,
                  (T + B) / 2);
    /* series: one polyline per run of finite points, a dot for a point on its own */
    for (int k = 0; k < n_series && !empty; k++) {
        if (!ys[k]) continue;
        const char *col = palette[k % 10];
        const double *x = xs[k];
        const int n = ns[k];
        sb_printf(&b, "<g class=\"series\" stroke=\"%s\" fill=\"%s\">\n", col, col);
        for (int i = 0; i < n;) {
            if (!isfinite(x[i]) || !isfinite(ys[k][i])) {
                i++;
                continue;
            }
            int j = i;
            while (j < n && isfinite(x[j]) && isfinite(ys[k][j])) j++;
            if (j - i == 1) {
                sb_printf(&b, "<circle cx=\"%.2f\" cy=\"%.2f\" r=\"2.5\" stroke=\"none\"/>\n", PX(x[i]), PY(ys[k][i]));
            } else {
                sb_puts(&b, "<polyline fill=\"none\" stroke-width=\"1.8\" stroke-linejoin=\"round\" points=\"");
                for (int t = i; t < j; t++) sb_printf(&b, "%s%.2f,%.2f", t > i ? " " : "", PX(x[t]), PY(ys[k][t]));
                sb_puts(&b, "\"/>\n");
            }
            i = j;
        }
        sb_puts(&b, "</g>\n");
    }
    /* legend, right of the plot */
    sb_puts(&b, "<g class=\"legend\">\n");
    for (int k = 0, row = 0; k < n_series; k++) {
        if (!ys[k]) continue;
        int y = T + 8 + row++ * 20;
        sb_printf(&b, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"3\"/>\n", R + 14, y,
                  R + 34, y, palette[k % 10]);
        sb_printf(&b, "<text x=\"%d\" y=\"%d\" dominant-baseline=\"middle\">", R + 40, y);
        if (series_names && series_names[k]) sb_escape(&b, series_names[k]);
        else sb_printf(&b, "series %d", k + 1);
        sb_puts(&b, "</text>\n");
    }
    sb_puts(&b, "</g>\n</svg>\n");
#undef PX
#undef PY
    if (b.oom) {
        free(b.s);
        tensor_fail(STATUS_OOM, "draft_svg_line_chart: out of memory (%d series, %d points)", n_series, n_points);
        return NULL;
    }
    return b.s;
}

/* ---------------------------------------------------------------- diversity */

/* images as a contiguous CPU float64 [B, N] copy in *out (a new reference); NULL with a message */
static struct tensor *as_rows(const struct tensor *images, const char *op)
{
    if (!images) {
        if (!tensor_status()) tensor_fail(STATUS_VALUE, "%s: NULL images", op);
        return NULL;
    }
    char sb[64];
    if (images->ndim != 4 || images->shape[1] != 3 || !dtype_is_float(images->dtype) || images->shape[0] < 2) {
        tensor_fail(STATUS_SHAPE, "%s: expected a float [B,3,H,W] tensor with B >= 2, got %s %s", op,
                    dtype_name(images->dtype), tensor_shape_str(images, sb, sizeof sb));
        return NULL;
    }
    tensor_scope_begin();
    struct tensor *cpu = tensor_to_device(images, DEVICE_CPU);
    struct tensor *f = cpu ? tensor_to_dtype(cpu, DTYPE_F64) : NULL;
    struct tensor *c = f ? tensor_contiguous(f) : NULL;
    return tensor_keep(tensor_scope_return(c));
}

double draft_diversity(const struct tensor *images)
{
    struct tensor *t = as_rows(images, "draft_diversity");
    if (!t) return NAN;
    int64_t B = t->shape[0], N = tensor_numel(t) / B;
    const double *p = tensor_data_ptr(t);
    double total = 0;
    for (int64_t i = 0; i < B; i++)
        for (int64_t j = i + 1; j < B; j++) {
            double ss = 0;
            const double *a = p + i * N, *c = p + j * N;
            for (int64_t k = 0; k < N; k++) ss += (a[k] - c[k]) * (a[k] - c[k]);
            total += sqrt(ss / (double)N) / 2;
        }
    tensor_free(t);
    return total / (double)(B * (B - 1) / 2);
}

double draft_feature_diversity(const struct tensor *embeds)
{
    char sb[64];
    if (!embeds || embeds->ndim != 2 || embeds->shape[0] < 2 || embeds->shape[1] < 1 || !dtype_is_float(embeds->dtype)) {
        if (embeds) tensor_fail(STATUS_SHAPE, "draft_feature_diversity: expected float embeddings [B, P] with B >= 2, got %s %s",
                                dtype_name(embeds->dtype), tensor_shape_str(embeds, sb, sizeof sb));
        else if (!tensor_status()) tensor_fail(STATUS_VALUE, "draft_feature_diversity: NULL embeddings");
        return NAN;
    }
    tensor_scope_begin();
    struct tensor *t = tensor_contiguous(tensor_to_dtype(tensor_to_device(embeds, DEVICE_CPU), DTYPE_F64));
    double total = NAN;
    if (t) {
        const int64_t B = t->shape[0], P = t->shape[1];
        const double *p = tensor_data_ptr(t);
        total = 0;
        for (int64_t i = 0; i < B; i++)
            for (int64_t j = i + 1; j < B; j++) {
                double dot = 0, ni = 0, nj = 0;
                for (int64_t k = 0; k < P; k++)
                    dot += p[i * P + k] * p[j * P + k], ni += p[i * P + k] * p[i * P + k], nj += p[j * P + k] * p[j * P + k];
                total += 1 - (ni > 0 && nj > 0 ? dot / sqrt(ni * nj) : 0);
            }
        total /= (double)(B * (B - 1) / 2);
    }
    tensor_scope_end();
    return total;
}

double draft_pixel_std(const struct tensor *images)
{
    struct tensor *t = as_rows(images, "draft_pixel_std");
    if (!t) return NAN;
    int64_t B = t->shape[0], N = tensor_numel(t) / B;
    const double *p = tensor_data_ptr(t);
    double total = 0;
    for (int64_t k = 0; k < N; k++) {
        double m = 0, v = 0;
        for (int64_t i = 0; i < B; i++) m += p[i * N + k];
        m /= (double)B;
        for (int64_t i = 0; i < B; i++) v += (p[i * N + k] - m) * (p[i * N + k] - m);
        total += sqrt(v / (double)B);
    }
    tensor_free(t);
    return total / (double)N;
}

/* ---------------------------------------------------------------- HTML */

static void sb_num(struct sbuf *b, double v)
{
    if (isnan(v)) sb_puts(b, "n/a");
    else sb_printf(b, "%.4f", v);
}

static void sb_delta(struct sbuf *b, double before, double after)
{
    if (isnan(before) || isnan(after)) {
        sb_puts(b, "n/a");
        return;
    }
    sb_printf(b, "%+.4f", after - before);
}

/* table cells: before, after and, with `change`, after - before */
static void sb_before_after(struct sbuf *b, double before, double after, bool change)
{
    sb_puts(b, "<td class=\"num\">");
    sb_num(b, before);
    sb_puts(b, "</td><td class=\"num\">");
    sb_num(b, after);
    sb_puts(b, "</td>");
    if (!change) return;
    sb_puts(b, "<td class=\"num\">");
    sb_delta(b, before, after);
    sb_puts(b, "</td>");
}

/* one row of the results table: label (and, escaped, code), before, after, change */
static void result_row(struct sbuf *b, const char *label, const char *code, double before, double after)
{
    sb_printf(b, "<tr><th>%s", label);
    if (code) {
        sb_puts(b, " <code>");
        sb_escape(b, code);
        sb_puts(b, "</code>");
    }
    sb_puts(b, "</th>");
    sb_before_after(b, before, after, true);
    sb_puts(b, "</tr>\n");
}

static void sb_figure(struct sbuf *b, const char *png, const char *caption)
{
    sb_puts(b, "<figure><img src=\"");
    sb_url(b, png);
    sb_puts(b, "\" alt=\"");
    sb_escape(b, caption);
    sb_puts(b, "\"><figcaption>");
    sb_escape(b, caption);
    sb_puts(b, " — <code>");
    sb_escape(b, png);
    sb_puts(b, "</code></figcaption></figure>\n");
}

/* a chart (a draft_svg_* result, owned: freed here) in its div, under an <h2> when a title is
 * given; a NULL svg is its maker's error, returned */
static enum status sb_chart(struct sbuf *b, const char *title, char *svg)
{
    if (!svg) return tensor_status();
    if (title) {
        sb_puts(b, "<h2>");
        sb_escape(b, title);
        sb_puts(b, "</h2>\n");
    }
    sb_puts(b, "<div class=\"chart\">\n");
    sb_puts(b, svg);
    sb_puts(b, "</div>\n");
    free(svg);
    return STATUS_OK;
}

static const char css[] =
    "body{font-family:'DejaVu Sans',Verdana,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}"
    "h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}td.num{text-align:right;font-family:monospace}"
    ".summary{font-size:1.1em;background:#f6f8ff;border-left:4px solid #4a6cd4;padding:.6em 1em}"
    "figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}"
    "figure img{max-width:100%;image-rendering:pixelated;border:1px solid #ccc}"
    "figcaption{font-size:.9em;color:#555}code{font-size:.95em}";

enum status draft_report_html(const char *path, const struct draft_report *r)
{
    if (!r) return tensor_fail(STATUS_VALUE, "draft_report_html %s: NULL report", path);
    if (r->n_settings < 0 || (r->n_settings > 0 && (!r->setting_keys || !r->setting_values)) || r->n_grids < 0 ||
        (r->n_grids > 0 && !r->grids) || r->n_terms < 0 || (r->n_terms > 0 && !r->terms) || r->n_images < 0 ||
        (r->n_images > 0 && !r->images))
        return tensor_fail(STATUS_VALUE,
                           "draft_report_html %s: bad counts (n_settings=%d, n_grids=%d, n_terms=%d, n_images=%d) or "
                           "NULL arrays", path, r->n_settings, r->n_grids, r->n_terms, r->n_images);
    const char *title = r->title ? r->title : "DRaFT run report";
    struct sbuf b = {0};
    sb_puts(&b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>");
    sb_escape(&b, title);
    sb_printf(&b, "</title>\n<style>%s</style>\n</head>\n<body>\n<h1>", css);
    sb_escape(&b, title);
    sb_puts(&b, "</h1>\n");
    if (r->summary) {
        sb_puts(&b, "<p class=\"summary\">");
        sb_escape(&b, r->summary);
        sb_puts(&b, "</p>\n");
    }
    sb_puts(&b, "<h2>Results</h2>\n<table>\n<tr><th></th><th>before</th><th>after</th><th>change</th></tr>\n");
    result_row(&b, "reward", NULL, r->reward_before, r->reward_after);
    result_row(&b, "diversity", NULL, r->diversity_before, r->diversity_after);
    if (r->diversity_model)
        result_row(&b, "diversity in the embeddings of", r->diversity_model, r->clip_diversity_before,
                   r->clip_diversity_after);
    for (int i = 0; i < r->n_terms; i++) {   /* a sum reward's terms, unweighted */
        char label[96];
        snprintf(label, sizeof label, "&nbsp;&nbsp;term %d, %g &times;", i + 1, r->terms[i].weight);
        result_row(&b, label, r->terms[i].spec, r->terms[i].before, r->terms[i].after);
    }
    if (r->eval_reward) result_row(&b, "eval reward", r->eval_reward, r->eval_reward_before, r->eval_reward_after);
    for (int i = 0; r->eval_reward && r->eval_terms && i < r->n_eval_terms; i++) {   /* its terms, unweighted */
        char label[96];
        snprintf(label, sizeof label, "&nbsp;&nbsp;eval term %d, %g &times;", i + 1, r->eval_terms[i].weight);
        result_row(&b, label, r->eval_terms[i].spec, r->eval_terms[i].before, r->eval_terms[i].after);
    }
    sb_puts(&b, "</table>\n<p><small>Diversity: mean pairwise RMS pixel distance between the samples, "
                "divided by 2 (0 = all samples identical). Diversity in embeddings: mean pairwise 1 - cosine of the "
                "model's image embeddings, which sees samples converge on one subject or layout even while their "
                "colours spread. A reward that rises while diversity collapses is a sign of reward hacking."
                "</small></p>\n");
    if (r->chart_svg) {
        sb_puts(&b, "<h2>Training curves</h2>\n<div class=\"chart\">\n");
        sb_puts(&b, r->chart_svg);
        sb_puts(&b, "</div>\n");
    }
    if (r->measures_html && r->measures_html[0]) {
        sb_puts(&b, "<h2>Measures during training</h2>\n");
        sb_puts(&b, r->measures_html);
    }
    if (r->before_png || r->after_png) {
        sb_puts(&b, "<h2>Samples before and after</h2>\n<div>\n");
        if (r->before_png) sb_figure(&b, r->before_png, "before fine-tuning");
        if (r->after_png) sb_figure(&b, r->after_png, "after fine-tuning");
        sb_puts(&b, "</div>\n");
    }
    if (r->best_metric) {
        sb_puts(&b, "<p><code>lora_best.safetensors</code>: ");
        if (r->best_step >= 0) {
            sb_printf(&b, "the LoRA at step %d, where the held-out ", r->best_step);
            sb_escape(&b, r->best_metric);
            sb_puts(&b, " was highest (");
            sb_num(&b, r->best_value);
            sb_puts(&b, ").</p>\n");
        } else {
            sb_puts(&b, "none (no evaluation had a finite value).</p>\n");
        }
    }
    if (r->n_images > 0) {   /* which prompts gained, which lost */
        sb_puts(&b, "<h2>Each held-out image</h2>\n<table>\n<tr><th>image</th><th>prompt</th><th>before</th>"
                    "<th>after</th><th>change</th></tr>\n");
        for (int i = 0; i < r->n_images; i++) {
            sb_printf(&b, "<tr><td class=\"num\">%d</td><td>", i);
            sb_escape(&b, r->images[i].prompt ? r->images[i].prompt : "");
            sb_puts(&b, "</td>");
            sb_before_after(&b, r->images[i].before, r->images[i].after, true);
            sb_puts(&b, "</tr>\n");
        }
        sb_puts(&b, "</table>\n");
    }
    if (r->n_grids > 0) {
        sb_puts(&b, "<h2>Samples during training</h2>\n<div>\n");
        for (int i = 0; i < r->n_grids; i++) {
            if (!r->grids[i].png) continue;
            char cap[48];
            snprintf(cap, sizeof cap, "step %d", r->grids[i].step);
            sb_figure(&b, r->grids[i].png, cap);
        }
        sb_puts(&b, "</div>\n");
    }
    if (r->n_files > 0 && r->files) {
        sb_puts(&b, "<h2>Files</h2>\n<table>\n");
        for (int i = 0; i < r->n_files; i++) {
            sb_puts(&b, "<tr><td><a href=\"");
            sb_url(&b, r->files[i].path ? r->files[i].path : "");
            sb_puts(&b, "\"><code>");
            sb_escape(&b, r->files[i].path ? r->files[i].path : "");
            sb_puts(&b, "</code></a></td><td>");
            sb_escape(&b, r->files[i].what ? r->files[i].what : "");
            sb_puts(&b, "</td></tr>\n");
        }
        sb_puts(&b, "</table>\n");
    }
    if (r->n_settings > 0) {
        sb_puts(&b, "<h2>Settings</h2>\n<table>\n");
        for (int i = 0; i < r->n_settings; i++) {
            sb_puts(&b, "<tr><th>");
            sb_escape(&b, r->setting_keys[i]);
            sb_puts(&b, "</th><td>");
            sb_escape(&b, r->setting_values[i]);
            sb_puts(&b, "</td></tr>\n");
        }
        sb_puts(&b, "</table>\n");
    }
    sb_puts(&b, "</body>\n</html>\n");
    enum status s = b.oom ? tensor_fail(STATUS_OOM, "draft_report_html %s: out of memory", path)
                          : draft_file_write_atomic(path, b.s, b.len);
    free(b.s);
    return s;
}

/* ---------------------------------------------------------------- several runs compared */

/* a growing array of doubles */
struct dvec {
    double *v;
    int n, cap;
};

static bool dvec_push(struct dvec *d, double x)
{
    if (d->n == d->cap) {
        const int cap = d->cap ? 2 * d->cap : 64;
        double *v = realloc(d->v, sizeof *v * (size_t)cap);
        if (!v) return false;
        d->v = v, d->cap = cap;
    }
    d->v[d->n++] = x;
    return true;
}

/* one run folder: what its config.json and metrics.jsonl say */
struct cmp_run {
    const char *dir;
    char label[300];
    char method[32];
    char reward[1100], eval_reward[1100];
    double queries_per_step;              /* reward queries of one optimiser step; NaN without config.json */
    struct dvec tx, ty, tg;               /* training steps: x, reward, gradient norm (before clipping) */
    struct dvec ex, ey, ediv, eheld, eclip;   /* evaluations: x, reward, diversity, eval reward, CLIP diversity */
    struct dvec eterm[DRAFT_REWARD_MAX_TERMS];   /* evaluations: a sum reward's terms (NaN where a line has none) */
    int n_terms;                          /* the most terms a line had */
    int steps;
    double seconds, peak_mib;             /* summed step times; the largest step peak */
    bool has_held, has_clip;
    cJSON *config;                        /* config.json as read (NULL without one) */
};

static void cmp_run_free(struct cmp_run *r)
{
    struct dvec *d[] = {&r->tx, &r->ty, &r->tg, &r->ex, &r->ey, &r->ediv, &r->eheld, &r->eclip};
    for (size_t i = 0; i < sizeof d / sizeof *d; i++) free(d[i]->v);
    for (int k = 0; k < DRAFT_REWARD_MAX_TERMS; k++) free(r->eterm[k].v);
    cJSON_Delete(r->config);
}

static double json_num(const cJSON *o, const char *key)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(it) ? it->valuedouble : NAN;   /* null (not finite when written) too */
}

static void json_str(const cJSON *o, const char *key, char *buf, size_t n)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    snprintf(buf, n, "%s", cJSON_IsString(it) ? it->valuestring : "");
}

/* <dir>/config.json (optional: runs before it was written have none) */
static enum status cmp_read_config(struct cmp_run *r)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/config.json", r->dir);
    r->queries_per_step = NAN;
    snprintf(r->method, sizeof r->method, "?");
    if (!nn_file_exists(path)) return STATUS_OK;
    cJSON *c = nn_json_file(path, (size_t)1 << 20);
    if (!c) return tensor_status();
    json_str(c, "method", r->method, sizeof r->method);
    json_str(c, "reward", r->reward, sizeof r->reward);
    json_str(c, "eval-reward", r->eval_reward, sizeof r->eval_reward);
    const double batch = json_num(c, "batch"), accum = json_num(c, "accum"), lv_n = json_num(c, "lv-n");
    /* DRaFT-LV scores lv_n re-noised copies of each image; every other method scores each image once */
    r->queries_per_step = batch * (accum > 0 ? accum : 1) * (!strcmp(r->method, "lv") ? lv_n : 1);
    r->config = c;
    return STATUS_OK;
}

/* <dir>/metrics.jsonl: training lines and evaluation lines ("eval": true), in order */
static enum status cmp_read_metrics(struct cmp_run *r, enum draft_compare_x xk)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", r->dir);
    size_t len;
    char *text = nn_file_read(path, (size_t)1 << 30, &len);
    if (!text) return tensor_status();
    enum status s = STATUS_OK;
    int line_no = 0;
    for (char *line = text, *next; line && *line && !s; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        line_no++;
        if (!line[strspn(line, " \t\r")]) continue;
        cJSON *o = cJSON_Parse(line);
        const double step = json_num(o, "step");
        if (!cJSON_IsObject(o) || !(step >= 0 && step <= INT_MAX)) {
            s = tensor_fail(STATUS_FORMAT, "%s:%d: not a metrics line (a JSON object with a \"step\")", path, line_no);
            cJSON_Delete(o);
            break;
        }
        const bool eval = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "eval"));
        if (!eval) {
            const double sec = json_num(o, "seconds"), peak = json_num(o, "peak_mib");
            if (isfinite(sec)) r->seconds += sec;
            if (isfinite(peak) && !(peak <= r->peak_mib)) r->peak_mib = peak;
            if (step > r->steps) r->steps = (int)step;
        }
        const double x = xk == DRAFT_COMPARE_QUERIES ? step * r->queries_per_step
                       : xk == DRAFT_COMPARE_SECONDS ? r->seconds : step;
        bool ok;
        if (eval) {
            const double held = json_num(o, "eval_reward");
            if (cJSON_GetObjectItemCaseSensitive(o, "eval_reward")) r->has_held = true;
            if (cJSON_GetObjectItemCaseSensitive(o, "clip_diversity")) r->has_clip = true;
            ok = dvec_push(&r->ex, x) && dvec_push(&r->ey, json_num(o, "reward")) &&
                 dvec_push(&r->ediv, json_num(o, "diversity")) && dvec_push(&r->eheld, held) &&
                 dvec_push(&r->eclip, json_num(o, "clip_diversity"));
            const cJSON *terms = cJSON_GetObjectItemCaseSensitive(o, "reward_terms");
            const int nt = cJSON_IsArray(terms) ? cJSON_GetArraySize(terms) : 0;
            if (nt > r->n_terms) r->n_terms = nt < DRAFT_REWARD_MAX_TERMS ? nt : DRAFT_REWARD_MAX_TERMS;
            for (int k = 0; k < DRAFT_REWARD_MAX_TERMS && ok; k++) {
                const cJSON *t = k < nt ? cJSON_GetArrayItem(terms, k) : NULL;
                ok = dvec_push(&r->eterm[k], cJSON_IsNumber(t) ? t->valuedouble : NAN);
            }
        } else {
            ok = dvec_push(&r->tx, x) && dvec_push(&r->ty, json_num(o, "reward")) && dvec_push(&r->tg, json_num(o, "grad_norm"));
        }
        cJSON_Delete(o);
        if (!ok) s = tensor_fail(STATUS_OOM, "%s: out of memory", path);
    }
    free(text);
    if (!s && !r->ex.n) s = tensor_fail(STATUS_FORMAT, "%s: no evaluation line (is it a draft-run folder?)", path);
    return s;
}

/* a path's last component (trailing '/' aside): [*b, *b + returned length) */
static int last_component(const char *d, const char **b)
{
    const char *e = d + strlen(d);
    while (e > d + 1 && e[-1] == '/') e--;
    *b = e;
    while (*b > d && (*b)[-1] != '/') (*b)--;
    return (int)(e - *b);
}

/* the run's name in legends and the table: the folder's last component, or the whole path
 * when another run has the same last component */
static void cmp_label(struct cmp_run *runs, int n, int i)
{
    const char *b, *bj;
    const int len = last_component(runs[i].dir, &b);
    snprintf(runs[i].label, sizeof runs[i].label, "%.*s", len, b);
    for (int j = 0; j < n; j++)
        if (j != i && last_component(runs[j].dir, &bj) == len && !strncmp(bj, b, (size_t)len))
            snprintf(runs[i].label, sizeof runs[i].label, "%s", runs[i].dir);
}

/* the k-th ';'-separated part of a "sum:" spec, weight included ("0.5*jpeg"); "" for another spec */
static void sum_term_text(const char *spec, int k, char *buf, size_t n)
{
    buf[0] = 0;
    if (strncmp(spec, "sum:", 4)) return;
    const char *p = spec + 4;
    for (int i = 0; i < k && p; i++) p = strchr(p, ';') ? strchr(p, ';') + 1 : NULL;
    if (p) snprintf(buf, n, "%.*s", (int)strcspn(p, ";"), p);
}

enum status draft_compare_html(const char *path, int n_runs, const char *const *run_dirs, enum draft_compare_x x)
{
    if (n_runs < 1 || n_runs > DRAFT_COMPARE_MAX_RUNS || !run_dirs)
        return tensor_fail(STATUS_VALUE, "draft_compare_html: 1 to %d runs, got %d", DRAFT_COMPARE_MAX_RUNS, n_runs);
    struct cmp_run runs[DRAFT_COMPARE_MAX_RUNS];
    memset(runs, 0, sizeof runs);
    for (int i = 0; i < n_runs; i++) {
        if (!run_dirs[i]) return tensor_fail(STATUS_VALUE, "draft_compare_html: run %d has no folder", i + 1);
        runs[i].dir = run_dirs[i];
        runs[i].peak_mib = NAN;
    }
    enum status s = STATUS_OK;
    for (int i = 0; i < n_runs && !s; i++) {
        if ((s = cmp_read_config(&runs[i]))) break;
        if (x == DRAFT_COMPARE_QUERIES && !runs[i].config) {
            s = tensor_fail(STATUS_VALUE, "%s has no config.json (draft-run writes it since 2026-11-28): its reward queries "
                                          "per step are unknown; compare by step or seconds", run_dirs[i]);
            break;
        }
        s = cmp_read_metrics(&runs[i], x);
    }
    const char *labels[DRAFT_COMPARE_MAX_RUNS];
    for (int i = 0; i < n_runs; i++) cmp_label(runs, n_runs, i), labels[i] = runs[i].label;
    static const char *const xlabel[] = {"step", "reward queries", "training seconds"};
    struct sbuf b = {0};
    bool any_held = false, any_clip = false, same_reward = true;
    for (int i = 0; i < n_runs && !s; i++) {
        any_held |= runs[i].has_held;
        any_clip |= runs[i].has_clip;
        same_reward &= !runs[i].config || !runs[0].config || !strcmp(runs[i].reward, runs[0].reward);
    }
    if (!s) {
        sb_printf(&b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>DRaFT runs compared"
                      "</title>\n<style>%s</style>\n</head>\n<body>\n<h1>DRaFT runs compared</h1>\n", css);
        if (!same_reward)
            sb_puts(&b, "<p class=\"summary\">These runs were trained on different rewards: their reward values do not "
                        "compare (see the reward column).</p>\n");
        sb_puts(&b, "<h2>Results on the held-out seeds</h2>\n<table>\n<tr><th>run</th><th>method</th><th>reward</th>"
                    "<th>before</th><th>after</th><th>change</th><th>diversity before</th><th>diversity after</th>");
        if (any_clip) sb_puts(&b, "<th>CLIP diversity before</th><th>CLIP diversity after</th>");
        if (any_held) sb_puts(&b, "<th>eval reward</th><th>before</th><th>after</th>");
        sb_puts(&b, "<th>steps</th><th>reward queries</th><th>training s</th><th>peak MiB</th></tr>\n");
        for (int i = 0; i < n_runs; i++) {
            const struct cmp_run *r = &runs[i];
            const int last = r->ex.n - 1;
            sb_puts(&b, "<tr><th>");
            sb_escape(&b, labels[i]);
            sb_puts(&b, "</th><td>");
            sb_escape(&b, r->method);
            sb_puts(&b, "</td><td><code>");
            sb_escape(&b, r->config ? r->reward : "?");
            sb_puts(&b, "</code></td>");
            sb_before_after(&b, r->ey.v[0], r->ey.v[last], true);
            sb_before_after(&b, r->ediv.v[0], r->ediv.v[last], false);
            if (any_clip) sb_before_after(&b, r->eclip.v[0], r->eclip.v[last], false);
            if (any_held) {
                sb_puts(&b, "<td><code>");
                sb_escape(&b, r->eval_reward);
                sb_puts(&b, "</code></td>");
                sb_before_after(&b, r->has_held ? r->eheld.v[0] : NAN, r->has_held ? r->eheld.v[last] : NAN, false);
            }
            sb_printf(&b, "<td class=\"num\">%d</td><td class=\"num\">", r->steps);
            if (isfinite(r->queries_per_step)) sb_printf(&b, "%.0f", r->steps * r->queries_per_step);
            else sb_puts(&b, "n/a");
            sb_printf(&b, "</td><td class=\"num\">%.1f</td><td class=\"num\">", r->seconds);
            if (isfinite(r->peak_mib)) sb_printf(&b, "%.1f", r->peak_mib);
            else sb_puts(&b, "n/a");
            sb_puts(&b, "</td></tr>\n");
        }
        sb_puts(&b, "</table>\n<p><small>before / after: the first and last evaluation in metrics.jsonl (fixed held-out "
                    "seeds). Reward queries: optimiser steps &times; batch &times; accumulation (&times; lv_n for "
                    "DRaFT-LV, which scores that many re-noised copies of each image). Training seconds: the steps' "
                    "own times, without evaluations. Diversity: mean pairwise RMS pixel distance / 2.</small></p>\n");
    }
    /* the options that differ between the runs (config.json; the run folder aside) */
    if (!s) {
        int n_cfg = 0, n_diff = 0;
        for (int i = 0; i < n_runs; i++) n_cfg += runs[i].config != NULL;
        for (int i = 0; i < n_runs && n_cfg > 1; i++) {
            for (const cJSON *it = runs[i].config ? runs[i].config->child : NULL; it; it = it->next) {
                bool seen = !it->string || !strcmp(it->string, "out") || !strcmp(it->string, "progress");
                for (int j = 0; j < i && !seen; j++)   /* a key is shown once, where it first appears */
                    seen = runs[j].config && cJSON_GetObjectItemCaseSensitive(runs[j].config, it->string);
                if (seen) continue;
                char *v[DRAFT_COMPARE_MAX_RUNS] = {0};
                bool differ = false;
                for (int j = 0; j < n_runs; j++) {
                    const cJSON *vj = runs[j].config ? cJSON_GetObjectItemCaseSensitive(runs[j].config, it->string) : NULL;
                    v[j] = !vj ? NULL : cJSON_IsString(vj) ? strdup(vj->valuestring) : cJSON_PrintUnformatted(vj);
                    if (vj && !v[j]) b.oom = true;
                    differ |= !v[j] != !v[0] || (v[j] && v[0] && strcmp(v[j], v[0]));
                }
                if (differ) {
                    if (!n_diff++)
                        sb_puts(&b, "<h2>Settings that differ</h2>\n<table>\n<tr><th>option</th>");
                    if (n_diff == 1) {
                        for (int j = 0; j < n_runs; j++) {
                            sb_puts(&b, "<th>");
                            sb_escape(&b, labels[j]);
                            sb_puts(&b, "</th>");
                        }
                        sb_puts(&b, "</tr>\n");
                    }
                    sb_puts(&b, "<tr><th>");
                    sb_escape(&b, it->string);
                    sb_puts(&b, "</th>");
                    for (int j = 0; j < n_runs; j++) {
                        sb_puts(&b, "<td><code>");
                        sb_escape(&b, !runs[j].config ? "(no config.json)" : v[j] ? v[j] : "(not set)");
                        sb_puts(&b, "</code></td>");
                    }
                    sb_puts(&b, "</tr>\n");
                }
                for (int j = 0; j < n_runs; j++) free(v[j]);
            }
        }
        if (n_diff) sb_puts(&b, "</table>\n");
        else if (n_cfg > 1) sb_puts(&b, "<p>The runs' config.json files agree on every option but the run folder.</p>\n");
    }
    /* the charts: each run a series on its own x */
    struct {
        const char *title, *ylabel;
        int which;   /* 0 held-out reward, 1 training reward, 2 diversity, 3 eval reward, 4 CLIP diversity, 5 |g| */
    } charts[] = {{"reward on the held-out seeds", "reward", 0},
                  {"reward of the training batches", "reward", 1},
                  {"gradient norm of the training steps (before clipping)", "|g|", 5},
                  {"diversity of the held-out samples", "diversity", 2},
                  {"diversity in image embeddings (--diversity-model)", "1 - cosine", 4},
                  {"eval reward on the held-out seeds", "eval reward", 3}};
    for (size_t c = 0; c < sizeof charts / sizeof *charts && !s; c++) {
        if ((charts[c].which == 3 && !any_held) || (charts[c].which == 4 && !any_clip)) continue;
        const double *xs[DRAFT_COMPARE_MAX_RUNS], *ys[DRAFT_COMPARE_MAX_RUNS];
        int ns[DRAFT_COMPARE_MAX_RUNS];
        for (int i = 0; i < n_runs; i++) {
            const struct cmp_run *r = &runs[i];
            const bool train = charts[c].which == 1 || charts[c].which == 5;
            xs[i] = train ? r->tx.v : r->ex.v;
            ns[i] = train ? r->tx.n : r->ex.n;
            const int w = charts[c].which;
            ys[i] = w == 1 ? r->ty.v : w == 5 ? r->tg.v : w == 0 ? r->ey.v : w == 2 ? r->ediv.v : w == 4 ? r->eclip.v : r->eheld.v;
            if ((w == 3 && !r->has_held) || (w == 4 && !r->has_clip)) ys[i] = NULL;
        }
        s = sb_chart(&b, charts[c].title,
                     draft_svg_chart_xy(xs, ys, ns, labels, n_runs, charts[c].title, xlabel[x], charts[c].ylabel));
    }
    /* a sum reward's terms, when every run has the same reward (else their terms do not compare) */
    int max_terms = 0;
    for (int i = 0; i < n_runs && !s; i++) max_terms = runs[i].n_terms > max_terms ? runs[i].n_terms : max_terms;
    for (int k = 0; k < max_terms && !s && same_reward; k++) {
        char part[300] = "", title[400];
        sum_term_text(runs[0].reward, k, part, sizeof part);
        snprintf(title, sizeof title, "term %d%s%s on the held-out seeds (unweighted)", k + 1, part[0] ? ": " : "", part);
        const double *xs[DRAFT_COMPARE_MAX_RUNS], *ys[DRAFT_COMPARE_MAX_RUNS];
        int ns[DRAFT_COMPARE_MAX_RUNS];
        for (int i = 0; i < n_runs; i++)
            xs[i] = runs[i].ex.v, ns[i] = runs[i].ex.n, ys[i] = k < runs[i].n_terms ? runs[i].eterm[k].v : NULL;
        s = sb_chart(&b, title, draft_svg_chart_xy(xs, ys, ns, labels, n_runs, title, xlabel[x], "unweighted score"));
    }
    if (!s) {
        sb_puts(&b, "<h2>Runs</h2>\n<table>\n");
        for (int i = 0; i < n_runs; i++) {
            sb_puts(&b, "<tr><th>");
            sb_escape(&b, labels[i]);
            sb_puts(&b, "</th><td><code>");
            sb_escape(&b, runs[i].dir);
            sb_puts(&b, "</code></td></tr>\n");
        }
        sb_puts(&b, "</table>\n</body>\n</html>\n");
        s = b.oom ? tensor_fail(STATUS_OOM, "draft_compare_html %s: out of memory", path)
                  : draft_file_write_atomic(path, b.s, b.len);
    }
    free(b.s);
    for (int i = 0; i < n_runs; i++) cmp_run_free(&runs[i]);
    return s;
}

char *draft_run_measures_html(const char *run_dir, int n_terms, const char *const *term_names)
{
    if (!run_dir || n_terms < 0) {
        tensor_fail(STATUS_VALUE, "draft_run_measures_html: no folder or n_terms %d < 0", n_terms);
        return NULL;
    }
    struct cmp_run r;
    memset(&r, 0, sizeof r);
    r.dir = run_dir;
    r.peak_mib = NAN;
    struct sbuf b = {0};
    enum status s = cmp_read_metrics(&r, DRAFT_COMPARE_STEP);
    sb_puts(&b, "");   /* "" when there is nothing to draw */
    /* before and after alone are the results table's two columns: a chart needs a point between */
    for (int c = 0; !s && r.ex.n >= 3 && c < 3 + n_terms && c < 3 + DRAFT_REWARD_MAX_TERMS; c++) {
        const double *y = c == 0 ? r.ediv.v : c == 1 ? (r.has_clip ? r.eclip.v : NULL)
                        : c == 2 ? (r.has_held ? r.eheld.v : NULL) : c - 3 < r.n_terms ? r.eterm[c - 3].v : NULL;
        if (!y) continue;
        char title[300];
        if (c == 0) snprintf(title, sizeof title, "diversity of the held-out samples");
        else if (c == 1) snprintf(title, sizeof title, "diversity in image embeddings (--diversity-model)");
        else if (c == 2) snprintf(title, sizeof title, "eval reward on the held-out seeds");
        else if (term_names && term_names[c - 3]) snprintf(title, sizeof title, "term %d: %s", c - 2, term_names[c - 3]);
        else snprintf(title, sizeof title, "term %d", c - 2);
        const char *ylabel = c == 0 ? "diversity" : c == 1 ? "1 - cosine" : c == 2 ? "eval reward" : "unweighted score";
        s = sb_chart(&b, NULL, draft_svg_line_chart(r.ex.v, &y, NULL, 1, r.ex.n, title, "step", ylabel));
    }
    if (!s && r.tx.n >= 3) {   /* DRaFT-K's gradients grow with K (DRAFT.md): the norm the clipping saw */
        const double *y = r.tg.v;
        s = sb_chart(&b, NULL, draft_svg_line_chart(r.tx.v, &y, NULL, 1, r.tx.n,
                                                    "gradient norm of the training steps (before clipping)", "step", "|g|"));
    }
    cmp_run_free(&r);
    if (!s && b.oom) s = tensor_fail(STATUS_OOM, "draft_run_measures_html %s: out of memory", run_dir);
    if (s) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

/* ---------------------------------------------------------------- a sweep of LoRA scales */

enum status draft_sweep_html(const char *path, int n_loras, const char *const *lora_paths, int n_rows,
                             const struct draft_sweep_row *rows, const char *reward_spec, const char *div_spec,
                             const char *grid_png)
{
    if (n_loras < 1 || n_rows < 1 || !lora_paths || !rows)
        return tensor_fail(STATUS_VALUE, "draft_sweep_html %s: %d LoRAs, %d rows", path, n_loras, n_rows);
    struct sbuf b = {0};
    sb_printf(&b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>LoRA scales swept"
                  "</title>\n<style>%s</style>\n</head>\n<body>\n<h1>LoRA scales swept</h1>\n<table>\n<tr>", css);
    for (int i = 0; i < n_loras; i++) {
        sb_puts(&b, "<th>scale of <code>");
        sb_escape(&b, lora_paths[i]);
        sb_puts(&b, "</code></th>");
    }
    if (reward_spec) {
        sb_puts(&b, "<th>reward <code>");
        sb_escape(&b, reward_spec);
        sb_puts(&b, "</code></th>");
    }
    sb_puts(&b, "<th>diversity</th>");
    if (div_spec) {
        sb_puts(&b, "<th>diversity in <code>");
        sb_escape(&b, div_spec);
        sb_puts(&b, "</code></th>");
    }
    sb_puts(&b, "<th>images</th></tr>\n");
    for (int r = 0; r < n_rows; r++) {
        sb_puts(&b, "<tr>");
        for (int i = 0; i < n_loras; i++) sb_printf(&b, "<td class=\"num\">%g</td>", rows[r].scales[i]);
        if (reward_spec) sb_puts(&b, "<td class=\"num\">"), sb_num(&b, rows[r].reward), sb_puts(&b, "</td>");
        sb_puts(&b, "<td class=\"num\">"), sb_num(&b, rows[r].diversity), sb_puts(&b, "</td>");
        if (div_spec) sb_puts(&b, "<td class=\"num\">"), sb_num(&b, rows[r].clip_diversity), sb_puts(&b, "</td>");
        sb_puts(&b, "<td><a href=\"");
        sb_url(&b, rows[r].dir ? rows[r].dir : "");
        sb_puts(&b, "/grid.png\">");
        sb_escape(&b, rows[r].dir ? rows[r].dir : "");
        sb_puts(&b, "</a></td></tr>\n");
    }
    sb_puts(&b, "</table>\n<p><small>Each combination samples the same seeds. Diversity: mean pairwise RMS pixel "
                "distance / 2; in embeddings: mean pairwise 1 - cosine. A reward that keeps rising with the scale while "
                "the diversity falls is the LoRA pushed into reward hacking.</small></p>\n");
    enum status s = STATUS_OK;
    if (n_loras == 1) {   /* against the one scale */
        double *x = malloc(sizeof *x * (size_t)n_rows), *yr = malloc(sizeof *yr * (size_t)n_rows),
               *yd = malloc(sizeof *yd * (size_t)n_rows), *yc = malloc(sizeof *yc * (size_t)n_rows);
        if (!x || !yr || !yd || !yc) s = tensor_fail(STATUS_OOM, "draft_sweep_html %s: out of memory", path);
        for (int r = 0; !s && r < n_rows; r++)
            x[r] = rows[r].scales[0], yr[r] = rows[r].reward, yd[r] = rows[r].diversity, yc[r] = rows[r].clip_diversity;
        if (!s && reward_spec)
            s = sb_chart(&b, NULL, draft_svg_line_chart(x, (const double *[]){yr}, NULL, 1, n_rows,
                                                        "mean reward against the LoRA's scale", "scale", "reward"));
        if (!s)
            s = sb_chart(&b, NULL, draft_svg_line_chart(x, (const double *[]){yd, div_spec ? yc : NULL},
                                                        (const char *[]){"pixel diversity", "diversity in embeddings"}, 2,
                                                        n_rows, "diversity against the LoRA's scale", "scale", "diversity"));
        free(x), free(yr), free(yd), free(yc);
    }
    if (!s && grid_png) {
        sb_puts(&b, "<h2>The first images of each combination</h2>\n");
        sb_figure(&b, grid_png, "a row per combination, in the table's order");
    }
    sb_puts(&b, "</body>\n</html>\n");
    if (!s) s = b.oom ? tensor_fail(STATUS_OOM, "draft_sweep_html %s: out of memory", path)
                      : draft_file_write_atomic(path, b.s, b.len);
    free(b.s);
    return s;
}
