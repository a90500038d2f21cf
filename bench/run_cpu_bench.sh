#!/usr/bin/env bash
# run_cpu_bench.sh — engine ops vs PyTorch on this CPU, same shapes, same thread count.
#
# Builds bench/bench_ops (meson/ninja, build dir build-bench) if needed, then runs
# bench_ops and bench/torch_ops.py alternately for --rounds rounds with the same thread
# count, and prints one table, last: ours ms, torch ms, ratio (ours/torch) and our GFLOP/s
# next to raw OpenBLAS sgemm. Each side reports the median of --reps runs per round; the
# table keeps each side's best round median, which filters out rounds disturbed by other
# load on the machine (it also prints how busy the CPUs were at the start).
#
# usage: bench/run_cpu_bench.sh [--threads N] [--reps N] [--warmup N] [--rounds N] [--only id,id]
#   PYTHON=/path/to/python picks the interpreter (default: the first of python3,
#   /usr/bin/python3 that can import torch). Without torch the torch column is n/a.
set -euo pipefail

THREADS=2 REPS=10 WARMUP=2 ROUNDS=3 ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) THREADS=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run_cpu_bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
BUILD=build-bench
if [ ! -f "$BUILD/build.ninja" ]; then meson setup "$BUILD" >/dev/null; fi
ninja -C "$BUILD" bench/bench_ops >/dev/null

export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

PY=""
for cand in ${PYTHON:-} python3 /usr/bin/python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import torch' >/dev/null 2>&1; then PY=$cand; break; fi
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
only_args=()
[ -n "$ONLY" ] && only_args=(--only "$ONLY")
common=(--threads "$THREADS" --reps "$REPS" --warmup "$WARMUP" "${only_args[@]}")

# CPUs kept busy by other processes just before we start (a 1 s sample of /proc/stat)
cpu_busy() {
    local a b
    a=$(head -1 /proc/stat); sleep 1; b=$(head -1 /proc/stat)
    awk -v a="$a" -v b="$b" -v n="$(nproc)" 'BEGIN {
        split(a, x, " "); split(b, y, " "); tot = 0; idle = (y[5] - x[5]) + (y[6] - x[6])
        for (i = 2; i <= 9; i++) tot += y[i] - x[i]
        printf "%.2f", (tot > 0 ? n * (tot - idle) / tot : 0) }'
}
BUSY0=$(cpu_busy)
cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
echo "machine: ${cpu:-unknown} ($(nproc) logical CPUs), threads used: $THREADS"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), CPUs busy with other work at start: $BUSY0, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -z "$PY" ] && echo "torch: not found (set PYTHON=...); torch column will be n/a"
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS: engine..." >&2
    "./$BUILD/bench/bench_ops" --tsv "${common[@]}" >"$TMP/ours.$r"
    if [ -n "$PY" ]; then
        echo "round $r/$ROUNDS: torch ($PY)..." >&2
        "$PY" bench/torch_ops.py "${common[@]}" >"$TMP/torch.$r"
    fi
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
if awk -v b="$BUSY0" -v n="$(nproc)" -v t="$THREADS" 'BEGIN { exit !(b > n - t + 0.3) }'; then
    echo "WARNING: other work kept $BUSY0 of $(nproc) CPUs busy at the start: numbers are unreliable, rerun when idle"
fi

# join: per (side, id, mode) the best round median; sgemm: the best round
awk -F'\t' -v rounds="$ROUNDS" -v reps="$REPS" -v warmup="$WARMUP" '
function best(old, new) { return (old == "" || new + 0 < old + 0) ? new : old }
FILENAME ~ /ours/ && $1 == "sgemm" { sg_ms = best(sg_ms, $2) }
FILENAME ~ /ours/ && $1 == "ours" {
    k = $2 SUBSEP $3
    if (!(k in shape)) { keys[++nk] = k; shape[k] = $4; id[k] = $2; mode[k] = $3; gflop[k] = $6 }
    if ($5 == "nan") { if (!(k in oerr)) oerr[k] = $7 } else ours[k] = best(ours[k], $5)
}
FILENAME ~ /torch/ && $1 == "torch_version" { tver = $2 }
FILENAME ~ /torch/ && $1 == "attention_impl" { timpl = $2 }
FILENAME ~ /torch/ && $1 == "torch" {
    k = $2 SUBSEP $3
    if ($4 == "nan") { if (!(k in terr)) terr[k] = $5 } else theirs[k] = best(theirs[k], $4)
}
END {
    sg = sg_ms > 0 ? 2 * 1024 ^ 3 / 1e9 / (sg_ms / 1e3) : 0
    printf "torch: %s; attention in torch: %s\n", tver == "" ? "n/a" : tver, timpl == "" ? "n/a" : timpl
    printf "method: f32, median of %d runs after %d warm-up, best of %d rounds per side\n", reps, warmup, rounds
    printf "OpenBLAS cblas_sgemm 1024^3: %.2f ms = %.1f GFLOP/s\n\n", sg_ms, sg
    fmt = "| %-10s | %-34s | %-7s | %9s | %9s | %6s | %-21s |\n"
    printf fmt, "op", "shape", "pass", "ours ms", "torch ms", "ratio", "GFLOP/s ours / sgemm"
    printf "|%s|%s|%s|%s|%s|%s|%s|\n", "------------", "------------------------------------", "---------", "----------:", "----------:", "-------:", "-----------------------"
    for (i = 1; i <= nk; i++) {
        k = keys[i]
        o = (k in ours) ? sprintf("%.2f", ours[k]) : "n/a (" oerr[k] ")"
        t = (k in theirs) ? sprintf("%.2f", theirs[k]) : (k in terr ? "n/a (" terr[k] ")" : "n/a")
        r = ((k in ours) && (k in theirs) && theirs[k] > 0) ? sprintf("%.2f", ours[k] / theirs[k]) : "-"
        g = ((k in ours) && gflop[k] > 0) ? sprintf("%.1f / %.1f", gflop[k] / (ours[k] / 1e3), sg) : "- (memory-bound)"
        if (!(k in ours)) g = "-"
        printf fmt, id[k], shape[k], mode[k], o, t, r, g
    }
    printf "\nratio = ours/torch (< 1: ours faster). GFLOP/s are nominal: fwd+bwd counted as 3x fwd.\n"
}' "$TMP"/ours.* $( [ -n "$PY" ] && ls "$TMP"/torch.* )
