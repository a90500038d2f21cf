#!/usr/bin/env bash
# gpu-check.sh — one call on a GPU machine: build, run the GPU test suite (and the CPU suites),
# run the GPU benchmarks, print a short table last.
#
# The GPU machine has CUDA, meson, ninja and PyTorch but none of our Debian libraries and no
# network, so the build uses Debian packages unpacked here first into .deps/root (ignored by
# git, carried along with the call):
#   scripts/gpu-check.sh --prepare        # on the development machine (needs apt)
#   device run: carry [".deps"], command: scripts/gpu-check.sh
# The parity data (../shared/parity, 48 MB) does not travel with the call: a copy in ./shared/parity
# does, and then the parity tests and a 2-iteration `draft-run --device cuda` on its tiny model run too.
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
    rm -rf "$ROOT/usr/share" "$ROOT"/usr/lib/x86_64-linux-gnu/openblas-openmp/{libblas.so*,liblapack.so*,cmake} .deps/debs
    du -sh .deps
    exit 0
fi
[ -d "$ROOT" ] || { echo "gpu-check: $ROOT is missing: run scripts/gpu-check.sh --prepare first and carry .deps"; exit 2; }

LIB=$ROOT/usr/lib/x86_64-linux-gnu
command -v pkg-config >/dev/null || export PATH=$PATH:$ROOT/usr/bin
export PKG_CONFIG_PATH=$LIB/pkgconfig PKG_CONFIG_SYSROOT_DIR=$ROOT
export LD_LIBRARY_PATH=$LIB:$LIB/openblas-openmp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
OUTDIR=${OUT:-/tmp/gpu-check}
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUTDIR/gpu.txt"

# the parity data: ../shared does not travel to the GPU machine; a copy in ./shared/parity does
if [ -z "${DRAFT_PARITY_DIR:-}" ] && [ ! -d ../shared/parity ] && [ -d shared/parity ]; then
    export DRAFT_PARITY_DIR=$PWD/shared/parity
fi
PARITY=${DRAFT_PARITY_DIR:-../shared/parity}

t0=$(date +%s)
if [ ! -f build-gpu/build.ninja ]; then
    meson setup build-gpu -Ddeps_root="$ROOT" -Dcuda=enabled > "$OUTDIR/setup.log" 2>&1 || { tail -40 "$OUTDIR/setup.log"; exit 1; }
fi
ninja -C build-gpu > "$OUTDIR/build.log" 2>&1 || { grep -E "error" -A3 "$OUTDIR/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"

# every suite (the GPU one included) in parallel; the GPU suite prints one line per op
meson test -C build-gpu --num-processes 8 --timeout-multiplier 2 --print-errorlogs > "$OUTDIR/test.log" 2>&1
test_rc=$?
cp build-gpu/meson-logs/testlog.txt "$OUTDIR/testlog.txt" 2>/dev/null
grep -E "^cuda .*(FAIL|fail)" "$OUTDIR/testlog.txt" | head -40
echo "cuda cases: $(grep -cE '^cuda .* ok' "$OUTDIR/testlog.txt") ok, $(grep -cE '^cuda .*(FAIL|fail)' "$OUTDIR/testlog.txt") failed"
grep -E "^ *[0-9]+/[0-9]+ " "$OUTDIR/test.log"
cuda_rc=$(grep -qE "^ *[0-9]+/[0-9]+ +(draft:)?cuda +OK" "$OUTDIR/test.log" && echo 0 || echo 1)

# DRaFT end to end on the GPU: 2 iterations on the tiny parity model (as tests/test_tools.sh on the CPU)
run_line="skipped: no $PARITY/tiny-sd"
run_rc=0
if [ -f "$PARITY/tiny-sd/model_index.json" ]; then
    ./build-gpu/tools/draft-run --device cuda --model "$PARITY/tiny-sd" --steps 2 --iters 2 --batch 1 --size 64 \
        --eval-images 2 --reward red --no-progress --out "$OUTDIR/draft-run-cuda" > "$OUTDIR/draft-run-cuda.log" 2>&1
    run_rc=$?
    run_line=$(tail -n 1 "$OUTDIR/draft-run-cuda.log")
    [ $run_rc -eq 0 ] || run_line="FAILED (exit $run_rc): $run_line"
fi

bench_rc=0
if [ -x build-gpu/bench/bench_gpu ]; then
    ./build-gpu/bench/bench_gpu > "$OUTDIR/bench-ours.txt" 2>&1 || bench_rc=$?
    python3 bench/torch_gpu.py > "$OUTDIR/bench-torch.txt" 2>&1 || true
fi

echo
echo "== summary ($(cat "$OUTDIR/gpu.txt")) =="
printf "%-12s %s\n" "cuda suite" "$([ "$cuda_rc" -eq 0 ] && echo passed || echo FAILED)"
printf "%-12s %s\n" "all suites" "$([ $test_rc -eq 0 ] && echo passed || echo FAILED)"
printf "%-12s %s\n" "draft-run" "$run_line"
if [ -f "$OUTDIR/bench-ours.txt" ]; then
    bench/join_gpu_bench.sh "$OUTDIR/bench-ours.txt" "$OUTDIR/bench-torch.txt" 2>/dev/null || cat "$OUTDIR/bench-ours.txt"
fi
[ "$cuda_rc" -eq 0 ] && [ $test_rc -eq 0 ] && [ $run_rc -eq 0 ] && [ $bench_rc -eq 0 ]
