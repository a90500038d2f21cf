#!/usr/bin/env bash
# test_gpu_scripts.sh — the scripts that read a GPU run's output (bench/join_gpu_bench.sh,
# bench/gpu_targets.sh, bench/gpu_switches.sh), on made-up results, and that scripts/gpu-check.sh
# parses, in CI: a GPU session has 15 minutes and must not find them broken. Run from the
# repository root.
set -u
fail=0
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
check() {   # check NAME FILE PATTERN: FILE has a line matching PATTERN (extended regex)
    if grep -qE -- "$3" "$2"; then echo "ok   $1"; else echo "FAIL $1: no line matching '$3' in:"; cat "$2"; fail=1; fi
}

cat > "$t/ours" <<'R'
RESULT conv2d_320c_64px_fwd 0.163 92.7 TFLOP/s
RESULT conv2d_320c_64px_fwd_rowshift 0.100 151.0 TFLOP/s
RESULT conv2d_640c_32px_fwd 0.109 139.0 TFLOP/s
RESULT conv2d_640c_32px_fwd_rowshift 0.120 126.0 TFLOP/s
RESULT conv2d_640c_32px_fwd_implicit 0.090 168.0 TFLOP/s
RESULT conv2d_640c_32px_fwd_implicit_bm128 0.200 75.0 TFLOP/s
RESULT conv2d_320c_64px_fwd_pipe 0.150 100.0 TFLOP/s
RESULT attention_fwd 2.367 18.1 TFLOP/s
RESULT attention_fwdbwd 9.363 16.1 TFLOP/s
RESULT attention_fwdbwd_fused_dq 8.100 18.6 TFLOP/s
RESULT attention_fwd_mma 0.600 71.6 TFLOP/s
RESULT attention_fwdbwd_mma 3.100 48.5 TFLOP/s
RESULT group_norm_fwd 0.018 1138.0 GB/s
RESULT group_norm_fwd_cl4 0.015 1400.0 GB/s
RESULT group_norm_fwdbwd 0.051 1020.0 GB/s
RESULT group_norm_fwdbwd_fused_bwd 0.041 1280.0 GB/s
RESULT copy_10M 0.012 1697.0 GB/s
RESULT copy_64M 0.135 3977.0 GB/s
RESULT add_64M 0.196 4118.0 GB/s
R
cat > "$t/torch" <<'R'
RESULT conv2d_320c_64px_fwd 0.107 140.8 TFLOP/s
RESULT conv2d_640c_32px_fwd 0.135 112.0 TFLOP/s
RESULT attention_fwd 2.124 20.2 TFLOP/s
RESULT attention_fwdbwd 7.113 21.1 TFLOP/s
R
cat > "$t/testlog" <<'R'
cuda attention[3xtf32_mma,large,tiles,130x200x40] f32 fwd rel=1.0e-07 bwd rel=2.0e-07 ok
cuda attention[bf16_mma] f32 fwd rel=1.0e-03 bwd rel=2.0e-03 ok
cuda attention[fused_dq,causal] f32 fwd rel=1.0e-07 bwd rel=2.0e-07 FAILED
cuda group_norm[fused_bwd,groups=3] f32 fwd rel=1.0e-07 bwd rel=2.0e-07 ok
cuda conv2d[3x3,rowshift] f32 fwd rel=1.0e-07 bwd rel=2.0e-07 ok
cuda conv2d[3x3,workspace=1K,pipeline] f32 fwd rel=1.0e-07 bwd rel=2.0e-07 ok
cuda conv2d[3x3,implicit,tf32,bm=128] f32 fwd rel=3.0e-04 bwd rel=2.0e-07 ok
R
bench/join_gpu_bench.sh "$t/ours" "$t/torch" > "$t/join" 2>&1
check "join: ratio of a paired row" "$t/join" '^conv2d_320c_64px_fwd +0\.163 +0\.107 +1\.52 '
check "join: a row torch lacks" "$t/join" '^attention_fwd_mma +0\.600 +- +- '
bench/gpu_targets.sh "$t/ours" "$t/torch" > "$t/targets" 2>&1
check "targets: best variant met" "$t/targets" '^conv2d_320c_64px_fwd +0\.93x torch .* met +best: conv2d_320c_64px_fwd_rowshift'
check "targets: attention fwd+bwd on the mma row" "$t/targets" '^attention_fwdbwd +0\.44x .* met +best: attention_fwdbwd_mma'
check "targets: group_norm on the cluster row" "$t/targets" '^group_norm_fwd +82% of copy_10M .* met +best: group_norm_fwd_cl4'
check "targets: a missed one" "$t/targets" '^group_norm_fwdbwd +75% of copy_10M .* MISSED'
check "targets: the implicit conv row" "$t/targets" '^conv2d_640c_32px_fwd +0\.67x torch .* met +best: conv2d_640c_32px_fwd_implicit$'
check "targets: a missing row" "$t/targets" '^conv2d_1280c_16px_fwd +no result'
check "targets: the count" "$t/targets" '^targets: [0-9]+ met, [0-9]+ missed$'
bench/gpu_switches.sh "$t/testlog" "$t/ours" > "$t/switches" 2>&1
check "switches: faster everywhere, tests pass" "$t/switches" '^DRAFT_ATTN_MMA +tests 2 ok 0 failed.*make default \(tensor/cuda/attention.cu\)'
check "switches: a failed case keeps it opt-in" "$t/switches" '^DRAFT_ATTN_FUSED_DQ +tests 0 ok 1 failed.*keep opt-in'
check "switches: one slower row keeps it opt-in" "$t/switches" '^DRAFT_CONV_ROWSHIFT .*conv2d_640c_32px_fwd 0\.120/0\.109=1\.10.*keep opt-in'
check "switches: group_norm" "$t/switches" '^DRAFT_GN_FUSED_BWD +tests 1 ok 0 failed.*=0\.80;.*make default \(tensor/cuda/norm.cu\)'
check "switches: implicit conv (its bm128 row has no base)" "$t/switches" '^DRAFT_CONV_IMPLICIT +tests 1 ok 0 failed; rows \(variant/base ms\): conv2d_640c_32px_fwd 0\.090/0\.109=0\.83; -> make default \(tensor/cuda/conv2d.cu\)'
# every kernel-variant switch (a cuda_switch call in tensor/cuda; DRAFT_GN_TWOPASS is the tests'
# fallback, not an opt-in kernel) has rows in bench_gpu (its list, which gpu-check's per-switch
# processes come from) and a line in gpu_switches.sh
for sw in $(grep -ohE 'cuda_switch\("DRAFT_[A-Z0-9_]+", (true|false)\)' tensor/cuda/*.cu | grep -oE 'DRAFT_[A-Z0-9_]+' | sort -u); do
    [ "$sw" = DRAFT_GN_TWOPASS ] && continue
    if grep -q "\"$sw\"" bench/bench_gpu.c && grep -q "\"$sw\"" bench/gpu_switches.sh; then echo "ok   $sw in bench_gpu and gpu_switches.sh"
    else echo "FAIL $sw: missing from bench/bench_gpu.c's switches or bench/gpu_switches.sh"; fail=1; fi
done
for s in scripts/gpu-check.sh bench/join_gpu_bench.sh bench/gpu_targets.sh bench/gpu_switches.sh; do
    if bash -n "$s"; then echo "ok   $s parses"; else echo "FAIL $s does not parse"; fail=1; fi
done
exit $fail
