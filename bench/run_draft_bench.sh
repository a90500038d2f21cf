#!/usr/bin/env bash
# run_draft_bench.sh — the tiny parity model's UNet and one DRaFT step, engine vs PyTorch + diffusers.
#
# Builds bench/bench_draft (meson/ninja, build dir build-bench2, release, no CUDA) if needed,
# then for --rounds rounds runs every case once on each side, alternating which side goes
# first (A B, B A, ...), with the same thread count; each run is a fresh process that reports
# the median of --reps timed steps after --warmup and the peak RSS increase of its first step.
# Prints one table, last: per case and side the median over rounds of the per-run medians,
# the ratio ours/torch, the peak RSS increase of a step on both sides (median over rounds), and
# our allocator's peak, plus the reward J of each side (same inputs: the values must agree).
#
# usage: bench/run_draft_bench.sh [--threads N] [--reps N] [--warmup N] [--rounds N] [--steps T]
#                                 [--size PX] [--cases id,id] [--full50]
#   cases: unet_fwd unet_fwdbwd lv k1 k10 (default all); --full50 adds one memory run per side of
#   full DRaFT with T = K = 50 (--reps 0: the measured first step only; slow on the torch side).
#   PYTHON=/path/to/python picks the interpreter (default: .whl/venv/bin/python, then python3,
#   /usr/bin/python3: the first that imports torch and diffusers). Without them: torch n/a.
set -euo pipefail

THREADS=2 REPS=3 WARMUP=1 ROUNDS=2 STEPS=10 SIZE=64 CASES="unet_fwd,unet_fwdbwd,lv,k1,k10" FULL50=0
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) THREADS=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --steps) STEPS=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --cases) CASES=$2; shift 2 ;;
        --full50) FULL50=1; shift ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run_draft_bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
BUILD=build-bench2
if [ ! -f "$BUILD/build.ninja" ]; then meson setup "$BUILD" -Dcuda=disabled --buildtype=release >/dev/null; fi
ninja -C "$BUILD" bench/bench_draft >/dev/null

export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

PY=""
for cand in ${PYTHON:-} .whl/venv/bin/python python3 /usr/bin/python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import torch, diffusers' >/dev/null 2>&1; then PY=$cand; break; fi
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

cpu_busy() {   # CPUs kept busy by other processes (a 1 s sample of /proc/stat)
    local a b
    a=$(head -1 /proc/stat); sleep 1; b=$(head -1 /proc/stat)
    awk -v a="$a" -v b="$b" -v n="$(nproc)" 'BEGIN {
        split(a, x, " "); split(b, y, " "); tot = 0; idle = (y[5] - x[5]) + (y[6] - x[6])
        for (i = 2; i <= 9; i++) tot += y[i] - x[i]
        printf "%.2f", (tot > 0 ? n * (tot - idle) / tot : 0) }'
}
cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
echo "machine: ${cpu:-unknown} ($(nproc) logical CPUs), threads used: $THREADS"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), CPUs busy with other work at start: $(cpu_busy), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -z "$PY" ] && echo "torch + diffusers: not found (set PYTHON=...); torch column will be n/a"

common=(--threads "$THREADS" --steps "$STEPS" --size "$SIZE")
ours() { "./$BUILD/bench/bench_draft" "$@" | grep '^RESULT' | sed 's/^/ours\t/'; }
theirs() {
    [ -n "$PY" ] || return 0
    "$PY" bench/torch_draft.py "$@" 2>/dev/null | awk -F'\t' '
        $1 == "torch_version" || $1 == "diffusers_version" { print > "/dev/stderr" }
        $1 == "RESULT" { print "torch\t" $0 }' 2>>"$TMP/versions"
}
IFS=, read -r -a case_list <<<"$CASES"
for r in $(seq 1 "$ROUNDS"); do
    for c in "${case_list[@]}"; do
        args=(--case "$c" --reps "$REPS" --warmup "$WARMUP" "${common[@]}")
        echo "round $r/$ROUNDS: $c (busy $(cpu_busy))..." >&2
        if [ $((r % 2)) -eq 1 ]; then ours "${args[@]}" >>"$TMP/results"; theirs "${args[@]}" >>"$TMP/results"
        else theirs "${args[@]}" >>"$TMP/results"; ours "${args[@]}" >>"$TMP/results"; fi
    done
done
if [ "$FULL50" = 1 ]; then
    args=(--case full --reps 0 --threads "$THREADS" --steps 50 --size "$SIZE")
    echo "full DRaFT T=K=50: memory run (busy $(cpu_busy))..." >&2
    ours "${args[@]}" | sed 's/\tfull\t/\tfull_T50\t/' >>"$TMP/results"
    theirs "${args[@]}" | sed 's/\tfull\t/\tfull_T50\t/' >>"$TMP/results"
fi
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -f "$TMP/versions" ] && sort -u "$TMP/versions" | tr '\n' ' ' && echo

# join: per (case, side) the median over rounds of the run medians and of the RSS peaks
awk -F"\t" -v threads="$THREADS" -v rounds="$ROUNDS" -v reps="$REPS" -v warmup="$WARMUP" -v steps="$STEPS" -v size="$SIZE" '
function median(s,    a, n, i, j, t) {
    n = split(s, a, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{
    side = $1; c = $3
    if (!(c in seen)) { seen[c] = 1; order[++nc] = c }
    ms[side, c] = ms[side, c] " " $4; rss[side, c] = rss[side, c] " " $5; J[side, c] = $6
    if (side == "ours") alloc[c] = alloc[c] " " $7
}
END {
    printf "method: f32, %d threads; per run the median of %d timed steps after %d warm-up (full_T50: one step); median over %d rounds (alternating order)\n", threads, reps, warmup, rounds
    printf "DRaFT: T = %d DDIM steps (full_T50: 50), guidance 7.5, batch 2, %dx%d images, LoRA rank 4, checkpointed UNet calls and VAE blocks\n\n", steps, size, size
    fmt = "| %-12s | %10s | %10s | %6s | %12s | %12s | %11s | %-25s |\n"
    printf fmt, "case", "ours ms", "torch ms", "ratio", "ours RSS MiB", "torch RSS MiB", "ours alloc MiB", "reward J ours / torch"
    printf "|%s|%s|%s|%s|%s|%s|%s|%s|\n", "--------------", "-----------:", "-----------:", "-------:", "-------------:", "--------------:", "---------------:", "---------------------------"
    for (i = 1; i <= nc; i++) {
        c = order[i]
        o = (("ours", c) in ms) ? median(ms["ours", c]) : ""
        t = (("torch", c) in ms) ? median(ms["torch", c]) : ""
        printf fmt, c, o == "" ? "n/a" : sprintf("%.1f", o), t == "" ? "n/a" : sprintf("%.1f", t),
            (o != "" && t != "" && t > 0) ? sprintf("%.2f", o / t) : "-",
            o == "" ? "n/a" : sprintf("%.1f", median(rss["ours", c])), t == "" ? "n/a" : sprintf("%.1f", median(rss["torch", c])),
            (c in alloc) ? sprintf("%.1f", median(alloc[c])) : "n/a",
            (J["ours", c] == "nan" || J["ours", c] == "") ? "-" : J["ours", c] " / " J["torch", c]
    }
    printf "\nratio = ours/torch (< 1: ours faster). RSS MiB: peak RSS increase during the first step of a fresh process\n"
    printf "(VmHWM after - VmRSS before, VmHWM reset via /proc/self/clear_refs), both sides. alloc MiB: the engine allocator'"'"'s peak live bytes above the start.\n"
}' "$TMP/results"
