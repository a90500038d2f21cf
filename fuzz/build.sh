#!/usr/bin/env bash
# Builds the libFuzzer targets into build-fuzz/ with clang (14 or newer): ASan + UBSan + libFuzzer.
# Usage: fuzz/build.sh [target...]   (default: all of them). Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang >/dev/null || { echo "fuzz/build.sh: needs clang (apt-get install clang)"; exit 1; }
mkdir -p build-fuzz
FLAGS=(-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -std=c11 -D_GNU_SOURCE
       -Wall -Wextra -Werror -I.)
ENGINE=(tensor/tensor.c tensor/alloc.c tensor/profile.c tensor/cpu/*.c)
BLAS=(-isystem /usr/include/x86_64-linux-gnu/openblas-openmp -fopenmp -L/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas)
build() {
    local t=$1; shift
    echo "fuzz/build.sh: build-fuzz/$t"
    clang "${FLAGS[@]}" "fuzz/$t.c" "$@" -o "build-fuzz/$t"
}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_tokenizer fuzz_tokenizer_files fuzz_safetensors fuzz_config fuzz_pickle fuzz_lora fuzz_compare)
for t in "${targets[@]}"; do
    case $t in
    # the tokenizer targets stand in for tensor.c's error reporting (fuzz/tiny_vocab.h)
    fuzz_tokenizer | fuzz_tokenizer_files) build "$t" diffusion/tokenizer.c diffusion/wordpiece.c nn/file.c -lcjson ;;
    fuzz_safetensors) build "$t" nn/safetensors.c nn/file.c "${ENGINE[@]}" "${BLAS[@]}" -lcjson -lm ;;
    fuzz_config) build "$t" nn/config.c nn/file.c "${ENGINE[@]}" "${BLAS[@]}" -lcjson -lm ;;
    fuzz_pickle) build "$t" nn/pickle.c nn/file.c "${ENGINE[@]}" "${BLAS[@]}" -lcjson -lzip -lm ;;
    fuzz_lora) build "$t" diffusion/lora.c diffusion/ldm.c nn/safetensors.c nn/module.c nn/file.c autograd/*.c "${ENGINE[@]}" "${BLAS[@]}" \
        -lcjson -lm ;;
    # report.c's page writer without libpng (image.c then has no PNG code to pull in)
    fuzz_compare) build "$t" draft/report.c draft/image.c nn/file.c "${ENGINE[@]}" "${BLAS[@]}" -lcjson -lm ;;
    *) echo "fuzz/build.sh: unknown target $t"; exit 2 ;;
    esac
done
