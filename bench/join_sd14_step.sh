#!/usr/bin/env bash
# join_sd14_step.sh LOG — the end-to-end table of scripts/gpu-check.sh's GPU_CHECK_E2E phase: the
# "sd14_step:" lines of bench_sd14_step (ours) and bench/torch_sd14_step.py (side=torch, PyTorch +
# diffusers) in LOG, paired by precision: each side's first step and warm step (the median of the
# steps after the first) in seconds, the ratio of the warm steps (ours / torch: < 1, ours faster)
# and each side's peak memory (ours: the allocator's peak live bytes; torch: max_memory_allocated).
awk '
function val(key,    i, kv) {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == key) return substr($i, length(key) + 2) }
    return "-"
}
function secs(s) { return s == "-" ? -1 : s + 0 }
$1 == "sd14_step:" {
    side = val("side") == "torch" ? "torch" : "ours"
    p = val("precision")
    if (!(p in seen)) { seen[p] = 1; order[n++] = p }
    first[side, p] = val("seconds"); nxt[side, p] = val("seconds_next"); peak[side, p] = val("peak")
    if (side == "torch") ver = "torch " val("torch") ", diffusers " val("diffusers")
    shape = "method " val("method") ", B " val("B") ", " val("size") " px, T " val("T")
}
END {
    if (!n) { print "no sd14_step lines"; exit 1 }
    printf "DRaFT step, SD 1.4 architecture (%s), ours vs PyTorch + diffusers (%s)\n", shape, ver
    printf "%-10s %12s %12s %12s %12s %8s %12s %12s\n", "precision", "ours 1st s", "ours warm s", "torch 1st s",
           "torch warm s", "ratio", "ours peak", "torch peak"
    for (i = 0; i < n; i++) {
        p = order[i]
        ow = ("ours", p) in nxt ? nxt["ours", p] : "-"; tw = ("torch", p) in nxt ? nxt["torch", p] : "-"
        r = (secs(ow) > 0 && secs(tw) > 0) ? sprintf("%.2f", ow / tw) : "-"
        printf "%-10s %12s %12s %12s %12s %8s %12s %12s\n", p, (("ours", p) in first ? first["ours", p] : "-"), ow,
               (("torch", p) in first ? first["torch", p] : "-"), tw, r, (("ours", p) in peak ? peak["ours", p] : "-"),
               (("torch", p) in peak ? peak["torch", p] : "-")
    }
}' "$1"
