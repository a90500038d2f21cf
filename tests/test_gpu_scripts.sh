#!/usr/bin/env bash
# test_gpu_scripts.sh — the scripts that read a GPU run's output (bench/join_gpu_bench.sh,
# bench/gpu_targets.sh, bench/gpu_switches.sh, bench/ncu_summary.py, bench/join_sd14_step.sh), on made-up results, and that scripts/gpu-check.sh
# parses, in CI: a GPU session has 15 minutes and must not find them broken. Also: every CUDA
# kernel sits in a header that an emulation suite runs. Run from the repository root.
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
RESULT conv2d_1280c_16px_fwdbwd 0.470 100.0 TFLOP/s
RESULT conv2d_1280c_16px_fwdbwd_halo 0.400 120.0 TFLOP/s
RESULT conv2d_1280c_16px_fwdbwd_halo_bm64 0.380 125.0 TFLOP/s
RESULT conv2d_640c_32px_fwd_wino 0.095 160.0 TFLOP/s
RESULT conv2d_640c_32px_fwd_wino_ws256m 0.100 150.0 TFLOP/s
RESULT conv2d_320c_64px_fwd_f32 0.420 36.0 TFLOP/s
RESULT conv2d_320c_64px_fwd_f32_wino 0.200 75.0 TFLOP/s
RESULT attention_fwd 2.367 18.1 TFLOP/s
RESULT attention_fwdbwd 9.363 16.1 TFLOP/s
RESULT attention_fwdbwd_fused_dq 8.100 18.6 TFLOP/s
RESULT attention_fwd_mma 0.600 71.6 TFLOP/s
RESULT attention_fwdbwd_mma 3.100 48.5 TFLOP/s
RESULT attention_fwd_autocast 1.000 42.0 TFLOP/s
RESULT attention_fwd_autocast_vec4 0.800 52.0 TFLOP/s
RESULT attention_fwd_mma_vec4 0.550 78.0 TFLOP/s
RESULT attention_fwd_autocast_packed 0.700 60.0 TFLOP/s
RESULT attention_fwd_tf32 1.200 36.0 TFLOP/s
RESULT attention_fwd_tf32_packed 1.300 33.0 TFLOP/s
RESULT group_norm_fwd 0.018 1138.0 GB/s
RESULT group_norm_fwd_cl4 0.015 1400.0 GB/s
RESULT group_norm_fwd_reg 0.016 1300.0 GB/s
RESULT group_norm_fwd_reg_burst20 0.010 2100.0 GB/s
RESULT group_norm_fwdbwd 0.051 1020.0 GB/s
RESULT group_norm_fwdbwd_fused_bwd 0.041 1280.0 GB/s
RESULT copy_10M 0.012 1697.0 GB/s
RESULT copy_10M_burst20 0.008 2600.0 GB/s
RESULT group_norm_fwd_raw_burst20 0.010 2097.2 GB/s
RESULT copy_4B 0.0036 0.002 GB/s
RESULT launch_empty_gn_grid 0.0041 0 GB/s
RESULT launch_empty_gn_cluster 0.0052 0 GB/s
RESULT group_norm_bwd_raw_burst20 0.016 1966.1 GB/s
RESULT copy_64M 0.135 3977.0 GB/s
RESULT add_64M 0.196 4118.0 GB/s
R
cat > "$t/torch" <<'R'
RESULT conv2d_320c_64px_fwd 0.107 140.8 TFLOP/s
RESULT conv2d_640c_32px_fwd 0.135 112.0 TFLOP/s
RESULT conv2d_1280c_16px_fwdbwd 0.768 53.0 TFLOP/s
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
cuda conv2d[3x3,c16,halo,tf32,bm=64] f32 fwd rel=3.0e-04 bwd rel=3.0e-04 ok
cuda conv2d[3x3,pad=1,winograd] f32 fwd rel=1.0e-07 bwd rel=1.0e-07 ok
cuda conv2d[large,3x3,winograd,tf32] f32 fwd rel=5.0e-04 bwd rel=5.0e-04 ok
cuda group_norm[gn_reg,sd,groups=32] f32 fwd rel=1.0e-07 bwd rel=2.0e-07 ok
cuda attention[bf16_mma_vec4,large,tiles,130x200x40] f32 fwd rel=1.0e-03 bwd rel=2.0e-03 ok
cuda attention[bf16_mma_packed,large,tiles,130x200x40] f32 fwd rel=1.0e-03 bwd rel=2.0e-03 ok
cuda attention[3xtf32_mma_packed] f32 fwd rel=1.0e-07 bwd rel=2.0e-07 ok
R
bench/join_gpu_bench.sh "$t/ours" "$t/torch" > "$t/join" 2>&1
check "join: ratio of a paired row" "$t/join" '^conv2d_320c_64px_fwd +0\.163 +0\.107 +1\.52 '
check "join: a row torch lacks" "$t/join" '^attention_fwd_mma +0\.600 +- +- '
bench/gpu_targets.sh "$t/ours" "$t/torch" > "$t/targets" 2>&1
check "targets: best variant met" "$t/targets" '^conv2d_320c_64px_fwd +0\.93x torch .* met +best: conv2d_320c_64px_fwd_rowshift'
check "targets: attention fwd+bwd on the mma row" "$t/targets" '^attention_fwdbwd +0\.44x .* met +best: attention_fwdbwd_mma'
check "targets: group_norm on the cluster row" "$t/targets" '^group_norm_fwd +82% of copy_10M .* met +best: group_norm_fwd_cl4'
check "targets: a variant's burst row (no base burst row)" "$t/targets" '^group_norm_fwd_burst20 +81% of copy_10M_burst20 .* met +best: group_norm_fwd_reg_burst20$'
check "targets: a missed one" "$t/targets" '^group_norm_fwdbwd +75% of copy_10M .* MISSED'
check "targets: the implicit conv row" "$t/targets" '^conv2d_640c_32px_fwd +0\.67x torch .* met +best: conv2d_640c_32px_fwd_implicit$'
check "targets: a missing row" "$t/targets" '^conv2d_1280c_16px_fwd +no result'
check "targets: the halo conv's forced tile" "$t/targets" '^conv2d_1280c_16px_fwdbwd +0\.49x torch .* met +best: conv2d_1280c_16px_fwdbwd_halo_bm64$'
check "targets: the count" "$t/targets" '^targets: [0-9]+ met, [0-9]+ missed$'
check "targets: group_norm kernels alone, not counted" "$t/targets" '^group_norm kernels \(burst\) +80% / 77% of copy_10M_burst20 .*not counted'
check "targets: the single call's budget and floors" "$t/targets" '^group_norm_fwd single-call budget +15\.0 us for 80% of copy_10M; floors: empty launch 5\.2 us \(clusters\), 4\.1 \(none\), copy_4B 3\.6; left 9\.8 us$'
# every switch opt-in (as they all were before the first GPU run measured them)
all_optin="DRAFT_ATTN_MMA=opt-in;DRAFT_ATTN_FUSED_DQ=opt-in;DRAFT_GN_FUSED_BWD=opt-in;DRAFT_CONV_ROWSHIFT=opt-in;"
all_optin="${all_optin}DRAFT_CONV_PIPELINE=opt-in;DRAFT_CONV_IMPLICIT=opt-in;DRAFT_MATMUL_FAST_BF16=opt-in;DRAFT_CONV_HALO=opt-in;DRAFT_GN_REG=opt-in;DRAFT_ATTN_VEC4=opt-in;DRAFT_CONV_WINOGRAD=opt-in;DRAFT_ATTN_PACKED=opt-in;"
GPU_SWITCHES_DEFS=$all_optin bench/gpu_switches.sh "$t/testlog" "$t/ours" > "$t/switches" 2>&1
check "switches: faster everywhere, tests pass" "$t/switches" '^DRAFT_ATTN_MMA +\[opt-in\] tests 2 ok 0 failed.*make default \(tensor/cuda/attention.cu\)'
check "switches: a failed case keeps it opt-in" "$t/switches" '^DRAFT_ATTN_FUSED_DQ +\[opt-in\] tests 0 ok 1 failed.*keep opt-in'
check "switches: one slower row keeps it opt-in" "$t/switches" '^DRAFT_CONV_ROWSHIFT .*conv2d_640c_32px_fwd 0\.120/0\.109=1\.10.*keep opt-in'
check "switches: group_norm" "$t/switches" '^DRAFT_GN_FUSED_BWD +\[opt-in\] tests 1 ok 0 failed.*=0\.80;.*make default \(tensor/cuda/norm.cu\)'
check "switches: float4 attention loads (two switches on: the row's base has the first)" "$t/switches" '^DRAFT_ATTN_VEC4 +\[opt-in\] tests 1 ok 0 failed; rows \(variant/base ms\):.* attention_fwd_autocast 0\.800/1\.000=0\.80;.* -> make default \(tensor/cuda/attention.cu\)'
check "switches: its rows do not count for ATTN_MMA" "$t/switches" '^DRAFT_ATTN_MMA +\[opt-in\] tests 2 ok 0 failed'
check "targets: the float4 row" "$t/targets" '^attention_fwd +0\.26x .* met +best: attention_fwd_mma_vec4$'
check "switches: register group_norm" "$t/switches" '^DRAFT_GN_REG +\[opt-in\] tests 1 ok 0 failed; rows \(variant/base ms\): group_norm_fwd 0\.016/0\.018=0\.89; -> make default \(tensor/cuda/norm.cu\)'
check "switches: halo conv (its bm64 row has no base)" "$t/switches" '^DRAFT_CONV_HALO +\[opt-in\] tests 1 ok 0 failed; rows \(variant/base ms\): conv2d_1280c_16px_fwdbwd 0\.400/0\.470=0\.85; -> make default \(tensor/cuda/conv2d.cu\)'
check "switches: implicit conv (its bm128 row has no base)" "$t/switches" '^DRAFT_CONV_IMPLICIT +\[opt-in\] tests 1 ok 0 failed; rows \(variant/base ms\): conv2d_640c_32px_fwd 0\.090/0\.109=0\.83; -> make default \(tensor/cuda/conv2d.cu\)'
check "switches: Winograd (its f32 row; its ws256m row has no base)" "$t/switches" '^DRAFT_CONV_WINOGRAD +\[opt-in\] tests 2 ok 0 failed; rows \(variant/base ms\):( conv2d_320c_64px_fwd_f32 0\.200/0\.420=0\.48;| conv2d_640c_32px_fwd 0\.095/0\.109=0\.87;){2} -> make default \(tensor/cuda/conv2d.cu\)'
check "switches: packed attention (one row slower keeps it opt-in)" "$t/switches" '^DRAFT_ATTN_PACKED +\[opt-in\] tests 2 ok 0 failed; rows \(variant/base ms\):( attention_fwd_autocast 0\.700/1\.000=0\.70;| attention_fwd_tf32 1\.300/1\.200=1\.08;){2} -> keep opt-in$'
check "switches: its rows do not count for ATTN_MMA or ATTN_VEC4" "$t/switches" '^DRAFT_ATTN_VEC4 +\[opt-in\] tests 1 ok 0 failed; rows \(variant/base ms\):( attention_fwd_mma 0\.550/0\.600=0\.92;| attention_fwd_autocast 0\.800/1\.000=0\.80;){2} -> make default'
# a switch that is the default already: kept when it passes, flagged when a case fails or a row is slower
GPU_SWITCHES_DEFS="DRAFT_ATTN_MMA=default;DRAFT_ATTN_FUSED_DQ=default;DRAFT_CONV_ROWSHIFT=default;DRAFT_MATMUL_FAST_BF16=by size;" \
    bench/gpu_switches.sh "$t/testlog" "$t/ours" > "$t/switches2" 2>&1
check "switches: a default that passes stays" "$t/switches2" '^DRAFT_ATTN_MMA +\[default\] .*-> keep default$'
check "switches: a default with a failed case" "$t/switches2" '^DRAFT_ATTN_FUSED_DQ +\[default\] .*make opt-in again\? \(tensor/cuda/attention.cu\)'
check "switches: a slower default" "$t/switches2" '^DRAFT_CONV_ROWSHIFT +\[default\] .*make opt-in again\?'
check "switches: a rule" "$t/switches2" '^DRAFT_MATMUL_FAST_BF16 +\[by size\] .*keep as it is \(by size, tensor/cuda/matmul.cu\)'
# and from the source: every switch's def is read (none unknown)
bench/gpu_switches.sh "$t/testlog" "$t/ours" > "$t/switches3" 2>&1
n_sw=$(grep -ho 'cuda_switch("DRAFT_[A-Z0-9_]*"' tensor/cuda/*.cu | grep -v DRAFT_GN_TWOPASS | sort -u | wc -l)   # TWOPASS: the tests' own (below)
if grep -q '\[unknown\]' "$t/switches3" || [ "$(grep -c '^DRAFT_' "$t/switches3")" -ne "$n_sw" ]; then
    echo "FAIL switches: a def not read from tensor/cuda:"; cat "$t/switches3"; fail=1
else echo "ok   switches: every def read from tensor/cuda"; fi
# ncu_summary.py on a made-up Nsight Compute table: a kernel name with commas inside quotes, two
# kernels' shares, durations in two units, ncu's own lines before the table (meson needs python3,
# so CI has it)
if command -v python3 > /dev/null; then
    cat > "$t/ncu.csv" <<'R'
==PROF== Connected to process 1 (bench_gpu)
"ID","Process ID","Kernel Name","Block Size","Grid Size","Section Name","Metric Name","Metric Unit","Metric Value","Rule Name","Rule Type","Rule Description"
"0","1","void (anonymous namespace)::im2col<float, int>(const float *, geom)","(256, 1, 1)","(1024, 1, 1)","SOL","Duration","usecond","30.00"
"0","1","void (anonymous namespace)::im2col<float, int>(const float *, geom)","(256, 1, 1)","(1024, 1, 1)","SOL","DRAM Throughput","%","1,081.5"
"1","1","sm90_xmma_gemm_tf32","(384, 1, 1)","(3, 32, 1)","SOL","Duration","msecond","0.09"
"1","1","sm90_xmma_gemm_tf32","(384, 1, 1)","(3, 32, 1)","Occupancy","Achieved Occupancy","%","12.4"
"1","1","sm90_xmma_gemm_tf32","(384, 1, 1)","(3, 32, 1)","WarpStateStats","Warp Cycles Per Issued Instruction","cycle","23.51"
"1","1","sm90_xmma_gemm_tf32","(384, 1, 1)","(3, 32, 1)","SchedulerStats","One or More Eligible","%","21.6"
"1","1","sm90_xmma_gemm_tf32","(384, 1, 1)","(3, 32, 1)","WarpStateStats","","","","CPIStall","WRN","On average, each warp of this kernel spends 9.8 cycles being stalled waiting for a scoreboard dependency on a L1TEX operation."
R
    python3 bench/ncu_summary.py ours:conv "$t/ncu.csv" torch:conv "$t/none.csv" > "$t/ncu" 2>&1
    check "ncu: a kernel, its share and name" "$t/ncu" '^ours:conv +30\.0 +25 +- +- +1081\.5 .*\(1024, 1, 1\)x\(256, 1, 1\)  im2col<float, int>$'
    check "ncu: a duration in ms" "$t/ncu" '^ours:conv +90\.0 +75 +- +- +- +12\.4 '
    check "ncu: the total" "$t/ncu" '^ours:conv +120\.0 total over 2 kernels'
    check "ncu: a missing profile" "$t/ncu" '^torch:conv +no profile'
    check "ncu: the warps' stall line" "$t/ncu" '^ours:conv +cycles/issue 23\.5, eligible 22%; On average, each warp of this kernel spends 9\.8 cycles being stalled waiting for a scoreboard dependency on a L1TEX operation\.$'
fi
# every kernel-variant switch (a cuda_switch call in tensor/cuda; DRAFT_GN_TWOPASS is the tests'
# fallback, not an opt-in kernel) has rows in bench_gpu (its list, which gpu-check's per-switch
# processes come from) and a line in gpu_switches.sh
for sw in $(grep -ohE 'cuda_switch\("DRAFT_[A-Z0-9_]+",' tensor/cuda/*.cu | grep -oE 'DRAFT_[A-Z0-9_]+' | sort -u); do
    [ "$sw" = DRAFT_GN_TWOPASS ] && continue
    if grep -q "\"$sw\"" bench/bench_gpu.c && grep -q "\"$sw\"" bench/gpu_switches.sh; then echo "ok   $sw in bench_gpu and gpu_switches.sh"
    else echo "FAIL $sw: missing from bench/bench_gpu.c's switches or bench/gpu_switches.sh"; fail=1; fi
done
# the end-to-end table (GPU_CHECK_E2E): both sides of a precision paired, a side missing shown as -
cat > "$t/e2e" <<'R'
bench_sd14_step: a line that is not a result
sd14_step: device=cuda precision=tf32 method=lv B=4 size=512 T=50 dtype=f32 weights=5.12GiB peak=37.60GiB act=32.48GiB seconds=6.20 seconds_next=5.90 sample_s=4.10 rss=2.00GiB reward=vit-aesthetic
sd14_step: side=torch device=cuda precision=tf32 method=lv B=4 size=512 T=50 weights=5.20GiB peak=20.10GiB act=14.90GiB seconds=9.10 seconds_next=4.80 sample_s=3.00 reward=vit-aesthetic torch=2.11.0 diffusers=0.42.1 transformers=5.17.0
sd14_step: device=cuda precision=bf16 method=lv B=4 size=512 T=50 dtype=f32 weights=5.12GiB peak=30.00GiB act=25GiB seconds=5.30 sample_s=4.10 rss=2.00GiB reward=vit-aesthetic
R
bench/join_sd14_step.sh "$t/e2e" > "$t/e2e.out" 2>&1
check "e2e: the title" "$t/e2e.out" '^DRaFT step, SD 1\.4 architecture \(method lv, B 4, 512 px, T 50\), ours vs PyTorch \+ diffusers \(torch 2\.11\.0, diffusers 0\.42\.1\)$'
check "e2e: a paired row" "$t/e2e.out" '^tf32 +6\.20 +5\.90 +9\.10 +4\.80 +1\.23 +37\.60GiB +20\.10GiB$'
check "e2e: one side only" "$t/e2e.out" '^bf16 +5\.30 +- +- +- +- +30\.00GiB +-$'
# every CUDA kernel is in a tensor/cuda/*_kernels.cuh header (none in a .cu file) and named in an
# emulation suite (tests/test_*_emu.cpp), so CI runs it without a GPU
in_cu=$(grep -l "__global__" tensor/cuda/*.cu)
if [ -n "$in_cu" ]; then echo "FAIL kernels defined in .cu files (move them into a *_kernels.cuh header and an emu test): $in_cu"; fail=1
else echo "ok   no kernel defined in a .cu file"; fi
n_k=0
for k in $(perl -0ne 'while (/__global__\s+(?:void\s+)?(?:__launch_bounds__\([^)]*\)\s*)?(?:void\s+)?(\w+)\s*\(/g) { print "$1\n" }' tensor/cuda/*.cuh | sort -u); do
    n_k=$((n_k + 1))
    grep -qw "$k" tests/test_*_emu.cpp || { echo "FAIL kernel $k is in no tests/test_*_emu.cpp"; fail=1; }
done
[ "$n_k" -gt 50 ] && echo "ok   all $n_k kernels of tensor/cuda/*.cuh are named in an emulation suite" || { echo "FAIL only $n_k kernels found"; fail=1; }
for s in scripts/gpu-check.sh bench/join_gpu_bench.sh bench/gpu_targets.sh bench/gpu_switches.sh bench/join_sd14_step.sh; do
    if bash -n "$s"; then echo "ok   $s parses"; else echo "FAIL $s does not parse"; fail=1; fi
done
exit $fail
