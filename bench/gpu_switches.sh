#!/usr/bin/env bash
# gpu_switches.sh TESTLOG OURS — one line per kernel-variant switch (tensor/README.md): its
# test_cuda cases (ok / failed, by their label tags) and its benchmark rows against the rows of
# the kernels it replaces (ours ms, variant / base), then whether it can become the default: every
# case passed and no row slower than 1.02x of its base. Making it the default is changing the
# `def` of its cuda_switch call (the file named on its line); the line says what that def is now
# (opt-in, default, or an expression: by size), read from the source.
# GPU_SWITCHES_DEFS="NAME=opt-in;NAME=default;..." stands in for the source (tests/test_gpu_scripts.sh)
defs=${GPU_SWITCHES_DEFS:-$(grep -ho 'cuda_switch("DRAFT_[A-Z0-9_]*", [^)]*)' "$(dirname "$0")"/../tensor/cuda/*.cu |
    sed -E 's/^cuda_switch\("([A-Z0-9_]+)", (.*)\)$/\1=\2/; s/=false$/=opt-in/; s/=true$/=default/; s/=(.*[^a-z-].*)$/=by size/' |
    tr '\n' ';')}
awk -v defs="$defs" '
FNR == NR {   # test_cuda lines: "cuda <label> <dtype> fwd rel=... bwd rel=... ok|FAILED"
    if ($1 != "cuda") next
    for (i = 1; i <= ns; i++) if ($2 ~ pat[i]) { if ($0 ~ / ok$/) ok[i]++; else bad[i]++ }
    next
}
$1 == "RESULT" { ms[$2] = $3 }
BEGIN {
    ns = 19
    sw[1] = "DRAFT_ATTN_MMA";      pat[1] = "_mma[],]";         file[1] = "tensor/cuda/attention.cu"
    sw[2] = "DRAFT_ATTN_FUSED_DQ"; pat[2] = "fused_dq";         file[2] = "tensor/cuda/attention.cu"
    sw[3] = "DRAFT_GN_FUSED_BWD";  pat[3] = "fused_bwd";        file[3] = "tensor/cuda/norm.cu"
    sw[4] = "DRAFT_CONV_ROWSHIFT"; pat[4] = "rowshift";         file[4] = "tensor/cuda/conv2d.cu"
    sw[5] = "DRAFT_CONV_PIPELINE"; pat[5] = "pipeline";         file[5] = "tensor/cuda/conv2d.cu"
    sw[6] = "DRAFT_CONV_IMPLICIT"; pat[6] = "implicit";         file[6] = "tensor/cuda/conv2d.cu"
    sw[7] = "DRAFT_MATMUL_FAST_BF16"; pat[7] = "fast16bf";      file[7] = "tensor/cuda/matmul.cu"
    sw[8] = "DRAFT_CONV_HALO";     pat[8] = "halo";             file[8] = "tensor/cuda/conv2d.cu"
    sw[9] = "DRAFT_GN_REG";        pat[9] = "gn_reg";           file[9] = "tensor/cuda/norm.cu"
    sw[10] = "DRAFT_ATTN_VEC4";    pat[10] = "_vec4";           file[10] = "tensor/cuda/attention.cu"
    sw[11] = "DRAFT_CONV_WINOGRAD"; pat[11] = "winograd";       file[11] = "tensor/cuda/conv2d.cu"
    sw[12] = "DRAFT_ATTN_PACKED";  pat[12] = "_packed";         file[12] = "tensor/cuda/attention.cu"
    sw[13] = "DRAFT_GN_SUMS";      pat[13] = "gn_sums";         file[13] = "tensor/cuda/norm.cu"
    sw[14] = "DRAFT_CONV_AUTOCAST_TF32"; pat[14] = "autocast_tf32"; file[14] = "tensor/cuda/conv2d.cu"
    sw[15] = "DRAFT_GN_STAGED";    pat[15] = "gn_staged,";      file[15] = "tensor/cuda/norm.cu"
    sw[16] = "DRAFT_GN_FUSED_WB";  pat[16] = "gn_fused_wb";     file[16] = "tensor/cuda/norm.cu"
    sw[17] = "DRAFT_GN_STAGED_BWD"; pat[17] = "gn_staged_bwd";  file[17] = "tensor/cuda/norm.cu"
    sw[18] = "DRAFT_CONV_AUTOCAST_WINO"; pat[18] = "autocast_wino"; file[18] = "tensor/cuda/conv2d.cu"
    sw[19] = "DRAFT_GN_PDL";       pat[19] = "gn_pdl";          file[19] = "tensor/cuda/norm.cu"
    # variant row = base row + suffix
    n = split(defs, dv, ";")
    for (i = 1; i <= n; i++) if (dv[i] != "") { split(dv[i], kv, "="); now[kv[1]] = kv[2] }
    for (i = 1; i <= ns; i++) if (!(sw[i] in now)) now[sw[i]] = "unknown"
    suf[1] = "_mma"; suf[2] = "_fused_dq"; suf[3] = "_fused_bwd"; suf[4] = "_rowshift"; suf[5] = "_pipe"; suf[6] = "_implicit"; suf[7] = "_fast16bf"; suf[8] = "_halo"; suf[9] = "_reg"; suf[10] = "_vec4"; suf[11] = "_wino"; suf[12] = "_packed"; suf[13] = "_sums"; suf[14] = "_actf32"; suf[15] = "_staged"; suf[16] = "_wb"; suf[17] = "_stbwd"; suf[18] = "_acwino"; suf[19] = "_pdl"
}
END {
    for (i = 1; i <= ns; i++) {
        rows = ""; worst = 0; nrow = 0
        for (k in ms) {
            if (!index(k, suf[i])) continue
            base = k; sub(suf[i], "", base)
            if (!(base in ms) || ms[base] <= 0) continue
            r = ms[k] / ms[base]; nrow++
            if (r > worst) worst = r
            rows = rows sprintf(" %s %.3f/%.3f=%.2f;", base, ms[k], ms[base], r)
        }
        good = bad[i] + 0 == 0 && ok[i] + 0 > 0 && nrow > 0 && worst <= 1.02
        if (now[sw[i]] == "opt-in") verdict = good ? "make default (" file[i] ")" : "keep opt-in"
        else if (now[sw[i]] == "default") verdict = good ? "keep default" : "default, but check: make opt-in again? (" file[i] ")"
        else verdict = "keep as it is (" now[sw[i]] ", " file[i] ")"
        printf "%-22s [%s] tests %d ok %d failed; rows (variant/base ms):%s -> %s\n", sw[i], now[sw[i]], ok[i], bad[i],
               rows == "" ? " none" : rows, verdict
    }
}' "$1" "$2"
