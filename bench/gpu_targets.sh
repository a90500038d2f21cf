#!/usr/bin/env bash
# gpu_targets.sh OURS TORCH — the GPU targets from bench_gpu's and torch_gpu.py's RESULT
# lines: conv2d and attention within 1.2x of PyTorch's time (the best of our variants: the
# default kernels and each opt-in switch's row, so the table says which switch to make the
# default), elementwise and group_norm at >= 80% of a same-size copy's bandwidth (ours, same
# call pattern: single calls against copy_10M, *_burst20 against copy_10M_burst20, add_64M against
# copy_64M; group_norm forward+backward: the best of its backwards and cluster sizes). One line per target,
# then "targets: N met, M missed".
awk '
FNR == NR && $1 == "RESULT" { ms[$2] = $3; gbs[$2] = $4; next }
$1 == "RESULT" { th[$2] = $3 }
function best(base, vars,    n, v, i, b, bn) {   # the fastest of base and base<var> rows
    b = (base in ms) ? ms[base] : -1; bn = base
    n = split(vars, v, " ")
    for (i = 1; i <= n; i++) if ((base v[i]) in ms && (b < 0 || ms[base v[i]] < b)) { b = ms[base v[i]]; bn = base v[i] }
    pick = bn
    return b
}
function time_target(base, vars,    o, r) {
    o = best(base, vars)
    if (o < 0 || !(base in th) || th[base] <= 0) { printf "%-36s %s\n", base, "no result"; missed++; return }
    r = o / th[base]
    printf "%-36s %5.2fx torch (<= 1.20) %-6s best: %s\n", base, r, (r <= 1.2 ? "met" : "MISSED"), pick
    if (r <= 1.2) met++; else missed++
}
function bw_target(row, alts, copy,    n, v, i, g, gn, r) {   # the best GB/s of row and the alts rows
    g = (row in gbs) ? gbs[row] : -1; gn = row
    n = split(alts, v, " ")
    for (i = 1; i <= n; i++) if (v[i] in gbs && gbs[v[i]] > g) { g = gbs[v[i]]; gn = v[i] }
    if (g < 0 || !(copy in gbs) || gbs[copy] <= 0) { printf "%-36s %s\n", row, "no result"; missed++; return }
    r = g / gbs[copy]
    printf "%-36s %5.0f%% of %-16s (>= 80%%) %-6s best: %s\n", row, 100 * r, copy, (r >= 0.8 ? "met" : "MISSED"), gn
    if (r >= 0.8) met++; else missed++
}
END {
    met = missed = 0
    iv = "_rowshift _implicit _implicit_bm128 _implicit_split1 _halo _halo_bm64 _halo_bm128 _ws16m _ws8m _wino _wino_ws256m"
    time_target("conv2d_320c_64px_fwd", "_pipe " iv)
    time_target("conv2d_320c_64px_fwdbwd", "_pipe " iv)
    time_target("conv2d_640c_32px_fwd", iv)
    time_target("conv2d_640c_32px_fwdbwd", iv)
    time_target("conv2d_1280c_16px_fwd", iv)
    time_target("conv2d_1280c_16px_fwdbwd", iv)
    time_target("attention_fwd", "_mma _mma_vec4 _mma_packed _mma_packed_vec4")
    time_target("attention_fwdbwd", "_fused_dq _mma _mma_vec4 _mma_packed _mma_packed_vec4")
    bw_target("add_64M", "", "copy_64M")
    bw_target("group_norm_fwd", "group_norm_fwd_cl1 group_norm_fwd_cl2 group_norm_fwd_cl4 group_norm_fwd_reg group_norm_fwd_reg_cl4" \
              " group_norm_fwd_sums group_norm_fwd_reg_sums group_norm_fwd_sums_cl4" \
              " group_norm_fwd_sums_staged group_norm_fwd_sums_staged_g1 group_norm_fwd_sums_staged_g4" \
              " group_norm_fwd_sums_pdl group_norm_fwd_sums_staged_pdl", "copy_10M")
    bw_target("group_norm_fwd_burst20", "group_norm_fwd_cl1_burst20 group_norm_fwd_cl2_burst20 group_norm_fwd_cl4_burst20" \
              " group_norm_fwd_reg_burst20 group_norm_fwd_reg_cl4_burst20 group_norm_fwd_sums_burst20" \
              " group_norm_fwd_reg_sums_burst20 group_norm_fwd_sums_cl4_burst20 group_norm_fwd_sums_staged_burst20" \
              " group_norm_fwd_sums_staged_g1_burst20 group_norm_fwd_sums_staged_g4_burst20" \
              " group_norm_fwd_sums_pdl_burst20 group_norm_fwd_sums_staged_pdl_burst20", "copy_10M_burst20")
    bw_target("group_norm_fwdbwd", "group_norm_fwdbwd_fused_bwd group_norm_fwdbwd_fused_bwd_cl4 group_norm_fwdbwd_cl1" \
              " group_norm_fwdbwd_fused_bwd_sums group_norm_fwdbwd_fused_bwd_reg_sums group_norm_fwdbwd_fused_bwd_sums_staged" \
              " group_norm_fwdbwd_fused_bwd_sums_wb group_norm_fwdbwd_fused_bwd_sums_staged_wb" \
              " group_norm_fwdbwd_fused_bwd_sums_stbwd group_norm_fwdbwd_fused_bwd_sums_staged_wb_stbwd" \
              " group_norm_fwdbwd_fused_bwd_sums_pdl group_norm_fwdbwd_fused_bwd_sums_staged_wb_stbwd_pdl", "copy_10M")
    bw_target("group_norm_fwdbwd_burst20",
              "group_norm_fwdbwd_fused_bwd_burst20 group_norm_fwdbwd_fused_bwd_cl4_burst20 group_norm_fwdbwd_cl1_burst20" \
              " group_norm_fwdbwd_fused_bwd_sums_burst20 group_norm_fwdbwd_fused_bwd_reg_sums_burst20" \
              " group_norm_fwdbwd_fused_bwd_sums_staged_burst20 group_norm_fwdbwd_fused_bwd_sums_wb_burst20" \
              " group_norm_fwdbwd_fused_bwd_sums_staged_wb_burst20 group_norm_fwdbwd_fused_bwd_sums_stbwd_burst20" \
              " group_norm_fwdbwd_fused_bwd_sums_staged_wb_stbwd_burst20 group_norm_fwdbwd_fused_bwd_sums_pdl_burst20" \
              " group_norm_fwdbwd_fused_bwd_sums_staged_wb_stbwd_pdl_burst20", "copy_10M_burst20")
    # not a target row: the group_norm kernels alone (backend calls, no autograd), like the copy
    # row they are compared with; says how much of the fwd+bwd rows is kernels and how much the rest
    f = "group_norm_fwd_raw_burst20"; b = "group_norm_bwd_raw_burst20"; c = "copy_10M_burst20"
    if ((f in ms) && (b in ms) && ms[f] > 0 && (c in ms) && ms[c] > 0)
        printf "%-36s %5.0f%% / %.0f%% of %s (fwd / fwd+bwd; kernels alone, not counted)\n", "group_norm kernels (burst)",
               100 * ms[c] / ms[f], 100 * 2.5 * ms[c] / (ms[f] + ms[b]), c   # 2 passes, 5 passes; the copy 2
    f = "group_norm_fwd_raw"; c = "copy_10M"
    if ((f in ms) && ms[f] > 0 && (c in ms) && ms[c] > 0)
        printf "%-36s %5.0f%% of %s (fwd, one call; kernel alone, not counted)\n", "group_norm kernel (single)", 100 * ms[c] / ms[f], c
    # not a target row: what a single call costs before any kernel body (empty kernels launched as
    # the forward is, and a 4-byte copy), against the single-call budget of the forward for 80% of copy_10M
    e = "launch_empty_gn_cluster"; c = "copy_10M"
    if ((e in ms) && ms[e] > 0 && (c in ms) && ms[c] > 0)
        printf "%-36s %.1f us for 80%% of %s; floors: empty launch %.1f us (clusters), %.1f (none), copy_4B %.1f; left %.1f us\n",
               "group_norm_fwd single-call budget", 1000 * ms[c] / 0.8, c, 1000 * ms[e],
               ("launch_empty_gn_grid" in ms) ? 1000 * ms["launch_empty_gn_grid"] : -1,
               ("copy_4B" in ms) ? 1000 * ms["copy_4B"] : -1, 1000 * (ms[c] / 0.8 - ms[e])
    printf "targets: %d met, %d missed\n", met, missed
}' "$1" "$2"
