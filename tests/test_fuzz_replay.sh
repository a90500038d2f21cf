#!/usr/bin/env bash
# The fuzz targets (fuzz/) on mutants of their seeds, without libFuzzer (fuzz/replay.c): every
# input a user can hand us as a file, thousands of damaged variants per run, under the sanitizers
# in the ASan build. Arguments: the replay programs of fuzz/meson.build, in its order. The seed
# of the mutation sequence changes daily (printed, so a failure can be replayed with -s).
set -u
[ $# -eq 7 ] || { echo "usage: $0 tokenizer tokenizer_files safetensors config pickle lora compare (replay programs)"; exit 2; }
tok=$(realpath "$1") files=$(realpath "$2") st=$(realpath "$3") cfg=$(realpath "$4") pkl=$(realpath "$5")
lora=$(realpath "$6") cmp=$(realpath "$7")
cd "$(dirname "$0")/.." || exit 2   # the seeds are named from the repository root
seed=${FUZZ_REPLAY_SEED:-$(date -u +%Y%m%d)}
n=${FUZZ_REPLAY_N:-2000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# the tokenizer files in the target's format, vocab.json NUL merges.txt: the embedded model's own,
# and the tiny vocabulary the target writes itself
{ cat models/emoji/tokenizer/vocab.json && printf '\0' && cat models/emoji/tokenizer/merges.txt; } > "$tmp/emoji-tokenizer" || exit 2
fails=0
run() {
    local name=$1; shift
    if out=$("$@" 2>&1); then
        echo "ok   $name: ${out##*$'\n'}"
    else
        echo "FAIL $name:"; echo "$out" | tail -n 30; fails=$((fails + 1))
    fi
}
run tokenizer "$tok" -n "$((4 * n))" -s "$seed" fuzz/seeds/tokenizer/*
run tokenizer_files env FUZZ_SEED_OUT="$tmp/tiny-tokenizer" "$files" -n "$n" -s "$seed" "$tmp/emoji-tokenizer"
run tokenizer_files_tiny "$files" -n "$n" -s "$seed" "$tmp/tiny-tokenizer"
run safetensors "$st" -n "$((4 * n))" -s "$seed" fuzz/seeds/safetensors/*
run config "$cfg" -n "$n" -s "$seed" models/emoji/*/config.json models/emoji/scheduler/scheduler_config.json
run pickle "$pkl" -n "$((4 * n))" -s "$seed" fuzz/seeds/pickle/*
# the LoRA seeds: the target writes a PEFT and a kohya file of a random adapter (on one mutant of
# another seed, so that run checks something too)
run lora_seeds env FUZZ_SEED_OUT="$tmp" "$lora" -n 1 -s "$seed" fuzz/seeds/safetensors/small.safetensors
run lora "$lora" -n "$((2 * n))" -s "$seed" "$tmp"/lora-peft.safetensors "$tmp"/lora-kohya.safetensors
run compare "$cmp" -n "$n" -s "$seed" fuzz/seeds/compare/*
echo "fuzz_replay: seed $seed, $fails failed"
[ "$fails" -eq 0 ]
