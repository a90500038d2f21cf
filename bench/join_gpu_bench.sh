#!/usr/bin/env bash
# join_gpu_bench.sh OURS TORCH — pair RESULT lines by name: ours ms, torch ms, ratio, figures.
awk '
FNR == NR && $1 == "RESULT" { ours[$2] = $3; of[$2] = $4 " " $5; order[n++] = $2; next }
$1 == "RESULT" { th[$2] = $3; tf[$2] = $4 " " $5 }
END {
    printf "%-44s %10s %10s %7s  %-16s %-16s\n", "case", "ours ms", "torch ms", "ratio", "ours", "torch"
    for (i = 0; i < n; i++) {
        k = order[i]; r = (k in th && ours[k] != "n/a" && th[k] > 0) ? sprintf("%.2f", ours[k] / th[k]) : "-"
        printf "%-44s %10s %10s %7s  %-16s %-16s\n", k, ours[k], (k in th ? th[k] : "-"), r, of[k], (k in tf ? tf[k] : "")
    }
}' "$1" "$2"
