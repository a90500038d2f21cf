#!/usr/bin/env bash
# gpu-check.sh — one call on a GPU machine: build, run the GPU test suite (and the CPU suites),
# run the GPU benchmarks, print a short table last.
#
# The GPU machine has CUDA, meson, ninja and PyTorch but none of our Debian libraries and no
# network, so the build uses Debian packages unpacked here first into .deps/root and packed into
# .deps/root.tgz (14 MB instead of 46: the tree, the carried paths and all fit the 64 MiB a call
# carries with room to spare; ignored by git), which the call unpacks where it runs:
#   scripts/gpu-check.sh --prepare        # on the development machine (needs apt)
#   device run: carry [".deps"], command: scripts/gpu-check.sh
# The parity data (../shared/parity, 48 MB) does not travel with the call: a copy in ./shared/parity
# of what fits does (carry "shared/parity"): the sd14/ configs (the SD 1.4 step runs) and the tiny
# UNet with its golden values (26 MB: the UNet parity test runs on the GPU):
#   mkdir -p shared/parity/tiny-sd shared/parity/golden && cp -r ../shared/parity/sd14 shared/parity/ &&
#   cp -r ../shared/parity/tiny-sd/unet shared/parity/tiny-sd/ && cp ../shared/parity/golden/unet.safetensors shared/parity/golden/
# Switches: GPU_CHECK_ALL=1 (every suite), GPU_CHECK_DEMO=0 / GPU_CHECK_SD14=0 / GPU_CHECK_BENCH=0
# (skip the demo runs / the SD 1.4 steps / the op benchmarks: a quick tests-and-table call),
# GPU_CHECK_PROFILE=0 (skip the TF32 and bf16 SD 1.4 steps once more under DRAFT_PROFILE=shapes: time per op and per shape),
# GPU_CHECK_NCU=0 (skip the last phase: Nsight Compute on the rows that miss their targets, ours and torch's),
# GPU_CHECK_TESTS=0 (skip the GPU test suites), GPU_CHECK_TARGETS="tests/test_cuda bench/bench_gpu" (build only
# these; the phases of programs not built are left out), GPU_CHECK_NCU_ROWS="row ..." (profile these rows),
# GPU_CHECK_GROUPS="DRAFT_X ..." (only these switches' variant rows),
# GPU_CHECK_E2E=1 (a call of its own: one DRaFT-LV step of SD 1.4, ours against PyTorch + diffusers
# (bench/torch_sd14_step.py) on the same card in tf32, bf16 and f32, three steps a process, and
# nothing else unless asked; the machine has PyTorch but not diffusers: --prepare downloads its wheel
# into .wheels, which that call carries (carry [".deps", ".wheels"]; the tiny UNet and golden file
# need not travel then: 6 MB more would not fit beside them),
# GPU_CHECK_BUDGET=N (seconds from the start of the build by which the summary must be out; 450 by default,
# so that a call ends within the issue's 8 minutes; a device call may run 600 s, so 540 fits one).
# After the build and the tests, the op benchmarks come first (the issue's targets), then the demo
# and the SD 1.4 steps, each only if it still fits the budget; every program runs under a timeout.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD/.deps/root
if [ "${1:-}" = --prepare ]; then
    rm -rf .deps && mkdir -p .deps/debs "$ROOT"
    (cd .deps/debs && apt-get download libopenblas0-openmp libopenblas-openmp-dev libgfortran5 libgomp1 check \
        libsubunit0 libsubunit-dev libcjson1 libcjson-dev libpng16-16 libpng-dev zlib1g-dev libzip4 libzip-dev \
        libbz2-1.0 libssl3 pkgconf pkgconf-bin libpkgconf3)
    for f in .deps/debs/*.deb; do dpkg -x "$f" "$ROOT"; done
    # keep what the build needs: no static archives, docs, or the separate LAPACK
    find "$ROOT" -name '*.a' ! -name 'libcheck_pic.a' -delete   # Check ships only a static library
    # libzip needs libssl3's libcrypto only: its libssl and modules would take the carry's last MiB
    rm -rf "$ROOT/usr/share" "$ROOT"/usr/lib/x86_64-linux-gnu/openblas-openmp/{libblas.so*,liblapack.so*,cmake} .deps/debs \
        "$ROOT"/usr/lib/x86_64-linux-gnu/{libssl.so*,engines-3,ossl-modules}
    tar czf .deps/root.tgz -C .deps root && rm -rf "$ROOT"
    du -sh .deps
    # the end-to-end comparison's diffusers (pure Python; everything it needs is on the GPU machine)
    rm -rf .wheels && mkdir -p .wheels
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .wheels "diffusers==${GPU_CHECK_DIFFUSERS:-0.42.1}" ||
        echo "gpu-check: could not download the diffusers wheel: GPU_CHECK_E2E=1 will skip its torch side"
    du -sh .wheels
    exit 0
fi
[ -d "$ROOT" ] || [ ! -f .deps/root.tgz ] || tar xzf .deps/root.tgz -C .deps || exit 2
[ -d "$ROOT" ] || { echo "gpu-check: $ROOT is missing: run scripts/gpu-check.sh --prepare first and carry .deps"; exit 2; }

LIB=$ROOT/usr/lib/x86_64-linux-gnu
command -v pkg-config >/dev/null || export PATH=$PATH:$ROOT/usr/bin
# PKG_CONFIG_LIBDIR, not _PATH: only the carried packages, never a half-installed system one (its
# .pc file found, its headers not under the sysroot)
export PKG_CONFIG_LIBDIR=$LIB/pkgconfig PKG_CONFIG_SYSROOT_DIR=$ROOT
export LD_LIBRARY_PATH=$LIB:$LIB/openblas-openmp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
OUTDIR=${OUT:-/tmp/gpu-check}
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUTDIR/gpu.txt"

# the parity data: ../shared does not travel to the GPU machine; a copy in ./shared/parity does
if [ -z "${DRAFT_PARITY_DIR:-}" ] && [ ! -d ../shared/parity ] && [ -d shared/parity ]; then
    export DRAFT_PARITY_DIR=$PWD/shared/parity
fi
PARITY=${DRAFT_PARITY_DIR:-../shared/parity}

# GPU_CHECK_E2E=1: that comparison alone, unless a phase is asked for by name
if [ "${GPU_CHECK_E2E:-0}" = 1 ]; then
    : "${GPU_CHECK_TESTS:=0}" "${GPU_CHECK_BENCH:=0}" "${GPU_CHECK_DEMO:=0}" "${GPU_CHECK_SD14:=0}" "${GPU_CHECK_NCU:=0}"
fi
t0=$(date +%s)
# the time budget: a device call may run 600 s, and the summary must come out before then, so each
# phase after the build runs only if its usual length still fits (GPU_CHECK_BUDGET seconds from
# here, 450 by default); what is left out is named in the summary
budget=${GPU_CHECK_BUDGET:-450}
skipped=()
fits() {   # fits SECONDS WHAT: true if SECONDS are still left, else records WHAT as skipped
    local left=$(( budget - ($(date +%s) - t0) ))
    [ "$left" -ge "$1" ] && return 0
    skipped+=("$2 (${left} s left)"); echo "skipped: $2 (${left} s left of the ${budget} s budget)"; return 1
}
cap() {    # cap SECONDS: a program's timeout, SECONDS or what is left of the budget less 15 s for the summary
    local left=$(( budget - ($(date +%s) - t0) - 15 ))
    [ "$left" -lt 10 ] && left=10
    [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}
if [ ! -f build-gpu/build.ninja ]; then
    meson setup build-gpu -Ddeps_root="$ROOT" -Dcuda=enabled > "$OUTDIR/setup.log" 2>&1 || { tail -40 "$OUTDIR/setup.log"; exit 1; }
fi
# GPU_CHECK_ALL=1 builds and runs every suite (the CPU ones are CI's job); by default only what
# has GPU cases, to spend the machine's minutes on the GPU
if [ "${GPU_CHECK_ALL:-0}" = 1 ]; then targets=(); else
    targets=(tests/test_cuda tests/test_draft tests/test_unet tools/draft-run bench/bench_gpu bench/bench_sd14_step); fi
# GPU_CHECK_TARGETS="tests/test_cuda bench/bench_gpu": only these (a short call: the build is most of
# its time); a phase whose program was not built is left out and named in the summary
[ -z "${GPU_CHECK_TARGETS:-}" ] || read -r -a targets <<< "$GPU_CHECK_TARGETS"
[ "${GPU_CHECK_E2E:-0}" = 1 ] && [ "${GPU_CHECK_TESTS:-1}" = 0 ] && [ "${GPU_CHECK_BENCH:-1}" = 0 ] && targets=(bench/bench_sd14_step)
ninja -C build-gpu "${targets[@]}" > "$OUTDIR/build.log" 2>&1 || { grep -E "error" -A3 "$OUTDIR/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"

# the GPU suites: test_cuda (every op, cpu vs cuda) and test_draft's cuda case (draft-run on
# cuda vs cpu); with GPU_CHECK_ALL=1 every suite, in parallel. Every program runs under a timeout:
# a kernel that hangs must cost its own phase, not the call's summary.
test_rc=0
: > "$OUTDIR/testlog.txt"
if [ "${GPU_CHECK_TESTS:-1}" = 0 ]; then
    skipped+=("the GPU test suites (GPU_CHECK_TESTS=0)")
elif [ "${GPU_CHECK_ALL:-0}" = 1 ]; then
    meson test -C build-gpu --num-processes 8 --timeout-multiplier 2 --print-errorlogs > "$OUTDIR/test.log" 2>&1
    test_rc=$?
    cp build-gpu/meson-logs/testlog.txt "$OUTDIR/testlog.txt" 2>/dev/null
    grep -E "^ *[0-9]+/[0-9]+ " "$OUTDIR/test.log"
else
    OMP_NUM_THREADS=4 CK_DEFAULT_TIMEOUT=600 timeout $(cap 300) ./build-gpu/tests/test_cuda > "$OUTDIR/testlog.txt" 2>&1
    test_rc=$?
    if [ -x build-gpu/tests/test_draft ]; then
        OMP_NUM_THREADS=4 CK_DEFAULT_TIMEOUT=600 CK_RUN_CASE=cuda timeout $(cap 150) ./build-gpu/tests/test_draft \
            > "$OUTDIR/test-draft.txt" 2>&1 || test_rc=$((test_rc | 2))
        grep -E "^draft |[0-9]+%: Checks" "$OUTDIR/test-draft.txt"
    else skipped+=("test_draft's cuda case (not built: GPU_CHECK_TARGETS)"); fi
fi
# the UNet against the reference's golden values (diffusers, f32: forward and every gradient) on
# the GPU, where the parity data for it came along
unet_parity=""
parity_rc=0
if [ -f "$PARITY/golden/unet.safetensors" ] && [ -x build-gpu/tests/test_unet ] && [ "${GPU_CHECK_TESTS:-1}" = 1 ]; then
    DRAFT_TEST_DEVICE=cuda CK_RUN_CASE=parity OMP_NUM_THREADS=4 CK_DEFAULT_TIMEOUT=600 timeout $(cap 120) \
        ./build-gpu/tests/test_unet > "$OUTDIR/test-unet-parity.txt" 2>&1 || parity_rc=$?
    unet_parity="$(grep -E "^parity summary|^SKIP|FAILED" "$OUTDIR/test-unet-parity.txt" | head -n 3 | tr '\n' ' ')"
    echo "unet parity: $unet_parity"
fi
grep -E "^cuda .*(FAIL|fail)" "$OUTDIR/testlog.txt" | head -40
cuda_ok=$(grep -cE '^cuda .* ok' "$OUTDIR/testlog.txt"); cuda_bad=$(grep -cE '^cuda .*(FAIL|fail)' "$OUTDIR/testlog.txt")
# a failed run again without the switches' own cases: do the default kernels pass on their own?
# (a device fault in one kernel makes every later CUDA call fail)
defaults=""
if [ $test_rc -ne 0 ] && [ -x build-gpu/tests/test_cuda ] && fits 150 "test_cuda, defaults only"; then
    DRAFT_TEST_DEFAULTS_ONLY=1 OMP_NUM_THREADS=4 CK_DEFAULT_TIMEOUT=600 timeout $(cap 150) ./build-gpu/tests/test_cuda \
        > "$OUTDIR/testlog-defaults.txt" 2>&1
    defaults="defaults only (rc $?): $(grep -cE '^cuda .* ok' "$OUTDIR/testlog-defaults.txt") ok, $(grep -cE '^cuda .*(FAIL|fail)' "$OUTDIR/testlog-defaults.txt") failed"
    echo "$defaults"
fi
grep -E "[0-9]+%: Checks" "$OUTDIR/testlog.txt"
echo "cuda cases: $cuda_ok ok, $cuda_bad failed"
echo "tests: $(( $(date +%s) - t0 )) s"

# the op benchmarks, bench_gpu against torch_gpu.py (GPU_CHECK_BENCH=0 skips them), before the
# end-to-end runs: the issue's targets are read from them
bench_rc=0
if [ -x build-gpu/bench/bench_gpu ] && [ "${GPU_CHECK_BENCH:-1}" = 1 ]; then
    # the base rows first (every switch off: the kernels each switch replaces), then PyTorch's, then
    # each switch's in a process of its own: a fault in a switch's kernel fails every later CUDA call of its process, and must not take
    # other rows with it
    timeout $(cap 150) ./build-gpu/bench/bench_gpu defaults > "$OUTDIR/bench-ours.txt" 2>&1 || bench_rc=$?
    if fits 60 "torch_gpu.py"; then timeout $(cap 150) python3 bench/torch_gpu.py > "$OUTDIR/bench-torch.txt" 2>&1; fi
    # GPU_CHECK_GROUPS="DRAFT_X ...": only these switches' variant rows (bench_gpu groups lists them all)
    for group in ${GPU_CHECK_GROUPS:-$(./build-gpu/bench/bench_gpu groups)}; do
        fits 40 "bench_gpu variants $group" || continue
        timeout $(cap 90) ./build-gpu/bench/bench_gpu variants "$group" >> "$OUTDIR/bench-ours.txt" 2>&1 || bench_rc=$?
    done
    echo "benchmarks: $(( $(date +%s) - t0 )) s"
fi

# DRaFT end to end on the GPU: `make demo`'s run (the embedded model, default preset) on cuda, in
# each matrix-product precision (f32 must give the CPU's numbers: 0.3939 -> 0.5397)
demo=()
run_rc=0
for pr in f32 tf32 bf16; do
    [ "${GPU_CHECK_DEMO:-1}" = 1 ] || break   # GPU_CHECK_DEMO=0 skips the demo runs
    [ -x build-gpu/tools/draft-run ] || { skipped+=("the demo runs (draft-run not built)"); break; }
    fits 60 "demo $pr" || continue
    timeout $(cap 120) ./build-gpu/tools/draft-run --device cuda --precision $pr --no-progress --out "$OUTDIR/demo-$pr" \
        > "$OUTDIR/demo-$pr.log" 2>&1
    rc=$?
    line="$(grep -E "^reward on" "$OUTDIR/demo-$pr.log" | tail -n 1) ($(grep -oE "seconds=[0-9.]+" "$OUTDIR/demo-$pr.log" | tail -n 1))"
    [ $rc -eq 0 ] || { line="FAILED (exit $rc): $(tail -n 1 "$OUTDIR/demo-$pr.log")"; run_rc=$rc; }
    demo+=("$pr: $line")
    echo "demo on cuda, $pr: $line"
done

# one DRaFT step of the real SD 1.4 architecture (random weights) on the GPU: needs the configs
# in $PARITY/sd14 (140 KB); the paper's setting (LV, batch 4, T = 50, the aesthetic reward's
# ViT-L/14) in each precision
sd14=()
sd14_step() {   # sd14_step LABEL ARGS...: one step (variables set in front of the call apply), its line kept
    local line
    line=$(timeout $(cap 150) ./build-gpu/bench/bench_sd14_step --device cuda --method lv "${@:2}" 2>&1 |
           tee -a "$OUTDIR/sd14.log" | grep -E "^sd14_step:|bench_sd14_step:" | tail -n 1)
    sd14+=("$1${line:-FAILED: ${*:2}}")
    echo "$1${line:-FAILED: ${*:2}}"
}
[ -x build-gpu/bench/bench_sd14_step ] || [ "${GPU_CHECK_SD14:-1}" = 0 ] || { GPU_CHECK_SD14=0; skipped+=("the SD 1.4 steps (bench_sd14_step not built)"); }
if [ -f "$PARITY/sd14/unet.config.json" ] && [ "${GPU_CHECK_SD14:-1}" = 1 ]; then   # GPU_CHECK_SD14=0 skips
    for args in "--batch 1 --steps 2" "--batch 4 --steps 50 --reward-vit --precision f32" \
                "--batch 4 --steps 50 --reward-vit --precision tf32" "--batch 4 --steps 50 --reward-vit --precision bf16"; do
        fits 60 "sd14 step $args" || continue
        sd14_step "" $args
    done
    # the bf16 and TF32 steps again with opt-in kernels not yet made defaults on: what they give
    # end to end, beside their rows and tests in switches.txt (last, so that a fault costs nothing else)
    if fits 60 "sd14 step bf16, opt-ins"; then   # the bf16 step's 3x3 convolutions as TF32's
        DRAFT_CONV_AUTOCAST_TF32=1 sd14_step "opt-ins (CONV_AUTOCAST_TF32): " --batch 4 --steps 50 --reward-vit --precision bf16
    fi
    if fits 60 "sd14 step bf16, Winograd in bf16"; then   # or as Winograd with bf16 products
        DRAFT_CONV_AUTOCAST_WINO=1 sd14_step "opt-ins (CONV_AUTOCAST_WINO): " --batch 4 --steps 50 --reward-vit --precision bf16
    fi
    if fits 60 "sd14 step tf32, group_norm opt-ins"; then   # the staged group_norm, dw/db in its backward
        DRAFT_GN_STAGED=1 DRAFT_GN_FUSED_WB=1 DRAFT_GN_STAGED_BWD=1 DRAFT_GN_PDL=1 sd14_step "opt-ins (GN_STAGED, FUSED_WB, STAGED_BWD, PDL): " \
            --batch 4 --steps 50 --reward-vit --precision tf32
    fi
    # GPU_CHECK_PROFILE=1 (the default): the TF32 and bf16 steps again under DRAFT_PROFILE=shapes (tensor/profile.h):
    # time per op kind and per shape, in $OUT/sd14-profile-*.txt, the top of each in the summary
    for pr in tf32 bf16; do
        [ "${GPU_CHECK_PROFILE:-1}" = 1 ] || break
        fits 90 "sd14 profile $pr" || continue
        DRAFT_PROFILE=shapes timeout $(cap 150) ./build-gpu/bench/bench_sd14_step --device cuda --method lv --batch 4 --steps 50 \
            --reward-vit --precision $pr > "$OUTDIR/sd14-profile-$pr.txt" 2>&1
    done
fi

# GPU_CHECK_E2E=1: one DRaFT-LV step of SD 1.4 (batch 4, T = 50, the aesthetic reward's ViT-L/14;
# random weights), ours against PyTorch + diffusers (bench/torch_sd14_step.py) in each precision,
# each side in a process of its own with 3 steps (the first, and the median of the warm ones)
e2e_rc=0
e2e_fail=()
if [ "${GPU_CHECK_E2E:-0}" = 1 ]; then
    if ls .wheels/*.whl > /dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site \
            .wheels/*.whl > "$OUTDIR/e2e-pip.log" 2>&1 && export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
    fi
    torch_side=1
    if ! python3 -c "import diffusers, transformers" > "$OUTDIR/e2e-import.log" 2>&1; then
        torch_side=0
        skipped+=("e2e torch side: $(tail -n 1 "$OUTDIR/e2e-import.log" | cut -c1-100) (carry .wheels: scripts/gpu-check.sh --prepare)")
    fi
    e2e_args=(--device cuda --method lv --batch 4 --steps 50 --reward-vit --reps 3)
    e2e_run() {   # e2e_run SIDE PRECISION PROGRAM...: one side's step, its output kept; a failure named in the summary
        local log="$OUTDIR/e2e-$1-$2.log"
        PYTHONUNBUFFERED=1 timeout $(cap 240) "${@:3}" "${e2e_args[@]}" --precision $2 > "$log" 2>&1
        local rc=$?
        cat "$log" >> "$OUTDIR/e2e.log"
        grep "^sd14_step:" "$log" | tail -n 1
        [ $rc -eq 0 ] || { e2e_rc=1; e2e_fail+=("$1 $2 (exit $rc): $(tail -n 1 "$log" | cut -c1-120)"); }
    }
    for pr in tf32 bf16 f32; do
        fits 150 "e2e $pr" || continue
        e2e_run ours $pr ./build-gpu/bench/bench_sd14_step
        [ $torch_side = 1 ] || continue
        fits 60 "e2e torch $pr" || continue
        e2e_run torch $pr python3 bench/torch_sd14_step.py
    done
    echo "e2e: $(( $(date +%s) - t0 )) s"
fi

# Nsight Compute on the rows that miss their target (GPU_CHECK_NCU=0 skips): one profile per row
# and side (bench_gpu's BENCH_GPU_ONLY, torch_gpu.py's BENCH_ONLY: the row's calls alone inside the
# profiler's window), summed up by bench/ncu_summary.py: each kernel's time and what bounds it
# (the defaults' rows of what is still behind: group_norm, and attention under bf16 autocast, with torch's)
ncu_rows=(group_norm_fwd_sums group_norm_fwd_sums_staged group_norm_fwdbwd_fused_bwd_sums attention_fwd_autocast
          attention_fwd_autocast_packed_vec4 attention_fwdbwd_autocast_packed_vec4)
[ -z "${GPU_CHECK_NCU_ROWS:-}" ] || read -r -a ncu_rows <<< "$GPU_CHECK_NCU_ROWS"   # GPU_CHECK_NCU_ROWS="row row ...": these instead
ncu_args=()
ncu_works=""
if [ "${GPU_CHECK_NCU:-1}" = 1 ] && command -v ncu > /dev/null && [ -x build-gpu/bench/bench_gpu ]; then
    for row in "${ncu_rows[@]}"; do
        for side in ours torch; do
            case $side/$row in torch/attention_fwd_mma | torch/*_halo | torch/*_wino | torch/*_reg | torch/*_vec4 | torch/*_packed | torch/*_sums | torch/*_staged | torch/*_fused_bwd) continue ;; esac   # the base row's
            fits 40 "ncu $side $row" || continue
            prog=(./build-gpu/bench/bench_gpu); [ $side = torch ] && prog=(python3 bench/torch_gpu.py)
            # group_norm's kernels are latency-bound (15% of issue, 21% of DRAM), and our bf16
            # attention runs at 59 TFLOP/s against PyTorch's 81: where their warps stall, and (attention)
            # what the pipes do (the exp on the SFU against the mma)
            extra=()
            case $row in
                group_norm*) extra=(--section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis) ;;
                attention*autocast*) extra=(--section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis) ;;
            esac
            BENCH_GPU_ONLY=$row BENCH_ONLY=$row timeout $(cap 60) ncu --profile-from-start off --clock-control none \
                --section SpeedOfLight --section Occupancy --section LaunchStats ${extra[@]+"${extra[@]}"} --csv --page details "${prog[@]}" \
                > "$OUTDIR/ncu-$side-$row.csv" 2>&1
            ncu_args+=("$side:$row" "$OUTDIR/ncu-$side-$row.csv")
            # no metrics in the first profile (no permission for the counters, say): the rest would
            # fail alike, each costing a process start, so the phase ends here
            if [ -z "$ncu_works" ]; then
                if grep -q '"Duration"' "$OUTDIR/ncu-$side-$row.csv"; then ncu_works=1; else
                    skipped+=("ncu: no metrics in the first profile: $(grep -m1 -iE 'err|fail' "$OUTDIR/ncu-$side-$row.csv" | cut -c1-120)")
                    break 2
                fi
            fi
        done
    done
    [ ${#ncu_args[@]} -eq 0 ] || python3 bench/ncu_summary.py "${ncu_args[@]}" > "$OUTDIR/ncu-summary.txt" 2>&1
    echo "ncu: $(( $(date +%s) - t0 )) s"
fi

echo
# the long tables first, the verdicts and the one-line results last (what a tail of the output
# shows); all of it also in $OUTDIR/summary.txt
{
for pr in tf32 bf16; do
    [ -f "$OUTDIR/sd14-profile-$pr.txt" ] || continue
    echo "sd14 step, $pr, DRAFT_PROFILE (top 12):"
    grep -A13 "^profile:" "$OUTDIR/sd14-profile-$pr.txt" | head -n 14
done
if [ -f "$OUTDIR/ncu-summary.txt" ]; then
    echo "Nsight Compute, per kernel of each row (ours and torch's):"
    cat "$OUTDIR/ncu-summary.txt"
    echo
fi
if [ -f "$OUTDIR/e2e.log" ]; then
    bench/join_sd14_step.sh "$OUTDIR/e2e.log"
    echo
fi
if [ -f "$OUTDIR/bench-ours.txt" ]; then
    bench/join_gpu_bench.sh "$OUTDIR/bench-ours.txt" "$OUTDIR/bench-torch.txt" 2>/dev/null || cat "$OUTDIR/bench-ours.txt"
    echo
fi
echo "== summary ($(cat "$OUTDIR/gpu.txt")) =="
if [ -f "$OUTDIR/bench-ours.txt" ]; then
    bench/gpu_targets.sh "$OUTDIR/bench-ours.txt" "$OUTDIR/bench-torch.txt" | tee "$OUTDIR/targets.txt"
    grep '^INFO ' "$OUTDIR/bench-ours.txt" | cut -c6-   # how the group_norm kernels launch and fit
    echo
    bench/gpu_switches.sh "$OUTDIR/testlog.txt" "$OUTDIR/bench-ours.txt" | tee "$OUTDIR/switches.txt"
    echo
fi
[ "${GPU_CHECK_TESTS:-1}" = 0 ] || printf "%-12s %s\n" "cuda suite" "$cuda_ok ok, $cuda_bad failed$([ $test_rc -eq 0 ] || echo ", FAILED (rc $test_rc)")"
[ -z "$defaults" ] || printf "%-12s %s\n" "cuda suite" "$defaults"
[ -z "$unet_parity" ] || printf "%-12s %s\n" "unet parity" "$unet_parity$([ $parity_rc -eq 0 ] || echo "(rc $parity_rc)")"
for l in "${skipped[@]}"; do printf "%-12s %s\n" "skipped" "$l"; done
for l in "${demo[@]}"; do printf "%-12s %s\n" "demo cuda" "$l"; done
for l in "${sd14[@]}"; do printf "%-12s %s\n" "sd14 step" "$l"; done
for l in "${e2e_fail[@]}"; do printf "%-12s %s\n" "e2e FAILED" "$l"; done
} 2>&1 | tee "$OUTDIR/summary.txt"
[ $test_rc -eq 0 ] && [ $parity_rc -eq 0 ] && [ $run_rc -eq 0 ] && [ $bench_rc -eq 0 ] && [ $e2e_rc -eq 0 ]
