#!/usr/bin/env bash
# test_tools.sh DRAFT_RUN DRAFT_SAMPLE DRAFT_CONVERT DRAFT_COMPARE DRAFT_SCORE — the command-line tools as a user runs them:
# --help lists every option, bad flags and values are refused with a message and exit status 2,
# and (with the parity model) a short draft-run, a draft-sample with two LoRA files and
# draft-convert's folder and LoRA outputs work end to end.
set -u
run=$1 sample=$2 convert=$3 compare=$4 score=$5
fail=0
check() { if eval "$2"; then echo "ok: $1"; else echo "FAILED: $1"; fail=1; fi; }
# two JSON-lines files of scores ("reward": x on each line) agree line by line to $3 (and have 2+ lines)
close_scores() { paste -d ' ' <(sed 's/.*"reward":\([^,}]*\).*/\1/' "$1") <(sed 's/.*"reward":\([^,}]*\).*/\1/' "$2") |
                 awk -v t="$3" '{ d = $1 - $2; n++; if ((d < 0 ? -d : d) > t) bad = 1 } END { exit bad || n < 2 }'; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$run" --help >"$tmp/help.raw" 2>&1
check "draft-run --help exits 0" "[ $? -eq 0 ]"
check "draft-run --help fits in 100 columns (the model's path aside)" "! awk 'length > 100' '$tmp/help.raw' | grep -v 'models/emoji' | grep -q ."
# an option's help continues on lines indented by 21 spaces: one line per option to grep
awk '/^                     [^ ]/ { sub(/^ +/, " "); line = line $0; next } { if (have) print line; line = $0; have = 1 }
     END { if (have) print line }' "$tmp/help.raw" >"$tmp/help"
for opt in model ckpt reward eval-reward prompts negative-prompt clip-skip out method k lv-n steps guidance eta checkpoint checkpoint-blocks lora-rank lora-targets init-lora lr grad-clip \
           warmup lr-decay lr-min skip-nonfinite accum batch iters seed size eval-images save-every lora-every max-minutes resume dry-run device precision; do
    check "--help lists --$opt with its default" "grep -q -- '--$opt.*(default: ' '$tmp/help'"
done
# --version: the project's version, the commit of the build's source, the CPU and its BLAS
src_commit=$(git -C "$(dirname "$0")" rev-parse --short=7 HEAD 2>/dev/null || true)
for t in "$run" "$sample" "$convert" "$compare" "$score"; do
    "$t" --version >"$tmp/o" 2>&1; rc=$?
    check "$(basename "$t") --version: the version, the commit${src_commit:+ ($src_commit)} and the backends" \
          "[ $rc -eq 0 ] && grep -Eq '^draft [0-9]+\.[0-9]+\.[0-9]+ \(git [^)]+\); cpu: .*, [0-9]+ threads; .*; cuda: ' '$tmp/o' && \
           { [ -z '$src_commit' ] || grep -q '(git [^)]*$src_commit' '$tmp/o'; }"
done
"$run" --bogus >"$tmp/o" 2>&1; rc=$?
check "unknown flag: exit 2 and a message" "[ $rc -eq 2 ] && grep -q \"unknown option '--bogus'\" '$tmp/o'"
"$run" --lr nope >"$tmp/o" 2>&1; rc=$?
check "bad number: exit 2 and a message" "[ $rc -eq 2 ] && grep -q 'expects a finite number' '$tmp/o'"
"$run" --method sideways >"$tmp/o" 2>&1; rc=$?
check "bad method: exit 2" "[ $rc -eq 2 ] && grep -q 'is not one of' '$tmp/o'"
"$run" --precision fp8 >"$tmp/o" 2>&1; rc=$?
check "bad precision: exit 2 and the choices" "[ $rc -eq 2 ] && grep -q \"'fp8' is not f32, tf32 or bf16\" '$tmp/o'"
echo '{"lr": 0.001, "nonsense": 1}' >"$tmp/c.json"
"$run" --config "$tmp/c.json" >"$tmp/o" 2>&1; rc=$?
check "unknown config key: exit 2" "[ $rc -eq 2 ] && grep -q 'unknown key \"nonsense\"' '$tmp/o'"
echo '{"iters": 3, "lr": 0.001, "iters": 4}' >"$tmp/c.json"
"$run" --config "$tmp/c.json" --model /nonexistent >"$tmp/o" 2>&1; rc=$?   # (a missing check: exit 1 there)
check "a key twice in a --config file: exit 2, named" "[ $rc -eq 2 ] && grep -q 'key \"iters\" appears twice' '$tmp/o'"
echo '{"batch": 1e300}' >"$tmp/c.json"
"$run" --config "$tmp/c.json" --model /nonexistent >"$tmp/o" 2>&1; rc=$?
check "a huge integer in a --config file: exit 2, as a number" "[ $rc -eq 2 ] && grep -q -- \"--batch expects an integer, got '1.0*1e+300'\" '$tmp/o'"
printf '{\n  "lr": 0.001,\n  "iters": 3,\n}\n' >"$tmp/c.json"
"$run" --config "$tmp/c.json" >"$tmp/o" 2>&1; rc=$?
check "a --config file with a trailing comma: exit 2, its line named" "[ $rc -eq 2 ] && grep -q 'c.json:4:[0-9]*: invalid JSON' '$tmp/o'"
"$run" --model /nonexistent >"$tmp/o" 2>&1; rc=$?
check "missing model folder: exit 1 and the path" "[ $rc -eq 1 ] && grep -q '/nonexistent' '$tmp/o'"
"$run" --size 512x >"$tmp/o" 2>&1; rc=$?
check "bad --size: exit 2 and the forms it takes" "[ $rc -eq 2 ] && grep -q 'expects a size in pixels (512, or width x height' '$tmp/o'"
echo '{"size": "96x64"}' >"$tmp/c.json"
"$run" --config "$tmp/c.json" --model /nonexistent >"$tmp/o" 2>&1; rc=$?
check "--size WxH in a --config file is read (the run then stops at the missing model)" \
      "[ $rc -eq 1 ] && grep -q '/nonexistent' '$tmp/o'"
echo '{"size": "96x64x2"}' >"$tmp/c.json"
"$run" --config "$tmp/c.json" --model /nonexistent >"$tmp/o" 2>&1; rc=$?
check "a bad size in a --config file: exit 2" "[ $rc -eq 2 ] && grep -q 'expects a size in pixels' '$tmp/o'"
"$sample" --help >/dev/null 2>&1
check "draft-sample --help exits 0" "[ $? -eq 0 ]"
"$sample" --model x --n 0 >"$tmp/o" 2>&1; rc=$?
check "draft-sample bad --n: exit 2" "[ $rc -eq 2 ]"
"$sample" --model x --guidance inf >"$tmp/o" 2>&1; rc=$?
check "draft-sample --guidance inf: exit 2" "[ $rc -eq 2 ] && grep -q \"expects a finite number, got 'inf'\" '$tmp/o'"
"$score" --help >"$tmp/o" 2>&1
check "draft-score --help exits 0" "[ $? -eq 0 ] && grep -q 'usage: draft-score' '$tmp/o'"
"$score" a.png >"$tmp/o" 2>&1; rc=$?
check "draft-score without --reward: exit 2" "[ $rc -eq 2 ] && grep -q 'no --reward' '$tmp/o'"
"$score" --reward red "$tmp/missing.png" >"$tmp/o" 2>&1; rc=$?
check "draft-score of a missing image: exit 1, naming it" "[ $rc -eq 1 ] && grep -q 'missing.png' '$tmp/o'"
printf 'not a png' >"$tmp/bad.png"
"$score" --reward red "$tmp/bad.png" >"$tmp/o" 2>&1; rc=$?
check "draft-score of a corrupt image: exit 1, naming it" "[ $rc -eq 1 ] && grep -q 'bad.png' '$tmp/o'"
"$convert" --help >/dev/null 2>&1
check "draft-convert --help exits 0" "[ $? -eq 0 ]"
"$convert" --model x >"$tmp/o" 2>&1; rc=$?
check "draft-convert with nothing to write: exit 2" "[ $rc -eq 2 ] && grep -q 'nothing to write' '$tmp/o'"
"$convert" --out x --lora a.safetensors:0,1 >"$tmp/o" 2>&1; rc=$?
check "draft-convert --lora with a list of scales: exit 2" "[ $rc -eq 2 ] && grep -q 'one scale per file' '$tmp/o'"
"$convert" --out x --format gif >"$tmp/o" 2>&1; rc=$?
check "draft-convert bad --format: exit 2" "[ $rc -eq 2 ] && grep -q 'peft or kohya' '$tmp/o'"
"$convert" --model /nonexistent --out "$tmp/never" >"$tmp/o" 2>&1; rc=$?
check "draft-convert missing model: exit 1 and the path, nothing written" "[ $rc -eq 1 ] && grep -q '/nonexistent' '$tmp/o' && [ ! -e '$tmp/never' ]"
"$run" --model /nonexistent --reward 'sum:red;0.5*colourful' --out "$tmp/np0" >"$tmp/o" 2>&1; rc=$?
"$run" --model /nonexistent --eval-reward 'brightness=high' --out "$tmp/np0" >"$tmp/o2" 2>&1; rc2=$?
check "draft-run with a mistyped reward spec: exit 1, the term named, before the model and the run folder" \
      "[ $rc -eq 1 ] && grep -q \"term 'colourful': unknown reward spec 'colourful'\" '$tmp/o' && [ $rc2 -eq 1 ] && \
       grep -q \"^draft-run: --eval-reward: reward spec 'brightness=high': 'high' is not a number\" '$tmp/o2' && [ ! -e '$tmp/np0' ]"
"$run" --model /nonexistent --init-lora "$tmp/no_lora.safetensors" --out "$tmp/np0" >"$tmp/o" 2>&1; rc=$?
check "draft-run with a missing --init-lora: exit 1, named, before the model and the run folder" \
      "[ $rc -eq 1 ] && grep -q -- '--init-lora: .*no_lora.safetensors is not a file' '$tmp/o' && [ ! -e '$tmp/np0' ]"
"$run" --model /nonexistent --prompts "$tmp/no_prompts.txt" --out "$tmp/np0" >"$tmp/o" 2>&1; rc=$?
check "draft-run with a missing --prompts file: exit 1, named, before the model and the run folder" \
      "[ $rc -eq 1 ] && grep -q 'no_prompts.txt: cannot open the prompt file' '$tmp/o' && [ ! -e '$tmp/np0' ]"
# what the writes would refuse is said before any model is loaded (here: none that would load)
mkdir -p "$tmp/full" && : >"$tmp/full/x"
"$convert" --model /nonexistent --out "$tmp/full" >"$tmp/o" 2>&1; rc=$?
"$convert" --model /nonexistent --lora a.safetensors --lora-out "$tmp/full/x/k.safetensors" >"$tmp/o2" 2>&1; rc2=$?
"$convert" --out "" >"$tmp/o3" 2>&1; rc3=$?
check "draft-convert: a non-empty --out, a --lora-out through a file, an empty --out: refused before loading" \
      "[ $rc -eq 1 ] && grep -q 'full: the folder exists and is not empty' '$tmp/o' && [ $rc2 -eq 1 ] && \
       grep -q 'cannot write .*full/x/k.safetensors: .*full/x is not a folder' '$tmp/o2' && [ $rc3 -eq 2 ] && grep -q -- '--out is empty' '$tmp/o3'"

"$compare" --help >"$tmp/o" 2>&1
check "draft-compare --help exits 0" "[ $? -eq 0 ] && grep -q 'usage: draft-compare' '$tmp/o'"
"$compare" >"$tmp/o" 2>&1; rc=$?
check "draft-compare without runs: exit 2 and the usage" "[ $rc -eq 2 ] && grep -q 'usage: draft-compare' '$tmp/o'"
"$compare" --x minutes a b >"$tmp/o" 2>&1; rc=$?
check "draft-compare --x minutes: exit 2, naming the choices" "[ $rc -eq 2 ] && grep -q 'step, queries or seconds' '$tmp/o'"
"$compare" --bogus a >"$tmp/o" 2>&1; rc=$?
check "draft-compare unknown option: exit 2" "[ $rc -eq 2 ] && grep -q \"unknown option '--bogus'\" '$tmp/o'"

model=${DRAFT_PARITY_DIR:-../shared/parity}/tiny-sd
if [ -f "$model/model_index.json" ]; then
    "$run" --model "$model" --steps 2 --iters 2 --batch 1 --size 64 --eval-images 2 --reward red \
           --no-progress --out "$tmp/run" >"$tmp/o" 2>&1; rc=$?
    check "draft-run on the tiny model" "[ $rc -eq 0 ] && tail -n 1 '$tmp/o' | grep -Eq '^final: reward_before=[-0-9.]+ reward_after=[-0-9.]+ steps=2 seconds=[0-9.]+$'"
    check "the report and the checkpoint name the engine" \
          "grep -q '<th>engine</th><td>draft [0-9.]* (git ' '$tmp/run/report.html' && grep -q 'draft.engine' '$tmp/run/checkpoint.safetensors'"
    for f in before.png after.png metrics.jsonl checkpoint.safetensors lora.safetensors lora_kohya.safetensors report.html; do
        check "run folder has $f" "[ -s '$tmp/run/$f' ]"
    done
    # --dry-run: one evaluation and one step measured, nothing written; its step is the run's first
    # step (same set-up, same order), so its peak is the one metrics.jsonl has for step 1
    "$run" --model "$model" --steps 2 --iters 2 --batch 1 --size 64 --eval-images 2 --reward red \
           --no-progress --dry-run --out "$tmp/dry" >"$tmp/o" 2>&1; rc=$?
    dp=$(sed -n 's/^dry-run: .*step_peak_mib=\([0-9.]*\) .*/\1/p' "$tmp/o")
    rp=$(sed -n 's/^{"step": 1, .*"peak_mib": \([0-9.]*\).*/\1/p' "$tmp/run/metrics.jsonl")
    check "draft-run --dry-run: nothing written, the step's peak is the run's first step's ($dp MiB, $rp MiB)" \
          "[ $rc -eq 0 ] && [ ! -e '$tmp/dry' ] && [ -n '$dp' ] && [ '$dp' = '$rp' ] && \
           grep -q 'the run: 2 steps and 2 evaluations' '$tmp/o' && grep -q \"the cpu's memory: .* for this run\" '$tmp/o' && \
           grep -Eq 'available_mib=[0-9.]+ fit_batch=[1-9][0-9]*$' '$tmp/o'"
    cp "$tmp/run/checkpoint.safetensors" "$tmp/ck.before"; cp "$tmp/run/metrics.jsonl" "$tmp/m.before"
    "$run" --model "$model" --steps 2 --iters 5 --eval-every 2 --batch 1 --size 64 --eval-images 2 --reward red \
           --no-progress --dry-run --resume --out "$tmp/run" >"$tmp/o" 2>&1; rc=$?
    check "--dry-run --resume: the steps and evaluations left (3 and 2: step 4, after), the run folder untouched" \
          "[ $rc -eq 0 ] && grep -q 'would resume at step 2/5' '$tmp/o' && grep -q 'the run: 3 steps and 2 evaluations' '$tmp/o' && \
           cmp -s '$tmp/ck.before' '$tmp/run/checkpoint.safetensors' && cmp -s '$tmp/m.before' '$tmp/run/metrics.jsonl'"
    # the batch it says would fit under a limit does fit (measured at batch 1, tried at that batch)
    DRAFT_MEMORY_LIMIT=120M "$run" --model "$model" --steps 2 --iters 2 --batch 1 --size 64 --eval-images 2 --reward red \
           --no-progress --dry-run --out "$tmp/dry" >"$tmp/o" 2>&1; rc=$?
    fb=$(sed -n 's/^dry-run: .* fit_batch=\([0-9]*\)$/\1/p' "$tmp/o")
    DRAFT_MEMORY_LIMIT=120M "$run" --model "$model" --steps 2 --iters 2 --batch "${fb:-1}" --size 64 --eval-images 2 --reward red \
           --no-progress --dry-run --out "$tmp/dry" >"$tmp/o2" 2>&1; rc2=$?
    check "--dry-run under DRAFT_MEMORY_LIMIT=120M: the micro-batch it estimates ($fb) fits" \
          "[ $rc -eq 0 ] && [ -n '$fb' ] && [ '$fb' -gt 1 ] && [ $rc2 -eq 0 ] && grep -q 'the limit)' '$tmp/o'"
    DRAFT_MEMORY_LIMIT=48M "$run" --model "$model" --steps 2 --iters 2 --batch 4 --size 64 --eval-images 2 --reward red \
           --no-progress --dry-run --out "$tmp/dry" >"$tmp/o" 2>&1; rc=$?
    check "--dry-run over a memory limit: exit 1, the limit, and what to change" \
          "[ $rc -eq 1 ] && grep -q 'memory limit reached' '$tmp/o' && grep -q 'to lower the peak: --batch 2 --accum 2' '$tmp/o'"
    # --init-lora: a new run from a run's LoRA evaluates, before its first step, what that run's
    # last evaluation measured (the same LoRA on the same held-out seeds); both file formats
    eval_reward() { grep '"eval": true' "$1" | sed -n "$2"'s/.*"reward": \([^,]*\),.*/\1/p'; }
    ra=$(eval_reward "$tmp/run/metrics.jsonl" '$')
    il="--steps 2 --iters 1 --batch 1 --size 64 --eval-images 2 --reward red --no-progress --lora-rank 3"
    "$run" --model "$model" $il --init-lora "$tmp/run/lora.safetensors" --out "$tmp/il1" >"$tmp/o" 2>&1; rc=$?
    "$run" --model "$model" $il --init-lora "$tmp/run/lora_kohya.safetensors" --out "$tmp/il2" >/dev/null 2>&1
    r1=$(eval_reward "$tmp/il1/metrics.jsonl" 1); r2=$(eval_reward "$tmp/il2/metrics.jsonl" 1)
    r0=$(eval_reward "$tmp/run/metrics.jsonl" 1)
    check "draft-run --init-lora: it starts where the LoRA's run ended ($ra; from scratch $r0), from either format" \
          "[ $rc -eq 0 ] && [ -n '$ra' ] && [ '$r1' = '$ra' ] && [ '$r2' = '$ra' ] && [ '$ra' != '$r0' ] && \
           grep -q '8 / 8 / from .*lora.safetensors' '$tmp/il1/report.html'"
    "$run" --model "$model" $il --init-lora "$tmp/run" --iters 0 --out "$tmp/il0" >"$tmp/o" 2>&1; rc=$?   # the folder: its LoRA
    check "--iters 0 --init-lora evaluates a LoRA once: before = after = its run's last evaluation ($ra)" \
          "[ $rc -eq 0 ] && [ \"\$(eval_reward '$tmp/il0/metrics.jsonl' 1)\" = '$ra' ] && [ \"\$(eval_reward '$tmp/il0/metrics.jsonl' 2)\" = '$ra' ] && \
           cmp -s '$tmp/il0/before.png' '$tmp/il0/after.png' && tail -n 1 '$tmp/o' | grep -q ' steps=0 '"
    "$run" --model "$model" $il --init-lora "$tmp/run/lora_kohya.safetensors" --out "$tmp/il1" --iters 2 --resume >"$tmp/o" 2>&1; rc=$?
    check "--resume with another --init-lora: refused" "[ $rc -ne 0 ] && grep -q \"started from --init-lora '.*/lora.safetensors'\" '$tmp/o'"
    # a new run into a finished run's folder is refused (its LoRA unchanged); --overwrite replaces it
    cp "$tmp/il1/lora.safetensors" "$tmp/il1.lora"
    "$run" --model "$model" $il --out "$tmp/il1" >"$tmp/o" 2>&1; rc=$?
    check "a new run into an earlier run's --out: exit 1, what to do, the LoRA unchanged" \
          "[ $rc -eq 1 ] && grep -q 'holds an earlier run (lora.safetensors): --resume continues it, --overwrite replaces it' '$tmp/o' && \
           cmp -s '$tmp/il1.lora' '$tmp/il1/lora.safetensors'"
    # a dry run there measures, then says the run itself would be refused; a path it could not
    # create ends it before it measures anything
    "$run" --model "$model" $il --dry-run --out "$tmp/il1" >"$tmp/o" 2>&1; rc=$?
    check "--dry-run into an earlier run's --out: measured, and the run's refusal said" \
          "[ $rc -eq 0 ] && grep -q '^dry-run: step_seconds=' '$tmp/o' && \
           grep -q 'il1 holds an earlier run (lora.safetensors): the run itself needs --resume' '$tmp/o'"
    "$run" --model "$model" $il --dry-run --out "$tmp/il1/lora.safetensors/x" >"$tmp/o" 2>&1; rc=$?
    check "--dry-run with a file in --out's path: exit 1 before measuring, naming the file" \
          "[ $rc -eq 1 ] && grep -q 'il1/lora.safetensors exists and is not a folder' '$tmp/o' && ! grep -q '^dry-run:' '$tmp/o'"
    "$run" --model "$model" $il --dry-run --out "" >"$tmp/o" 2>&1; rc=$?
    check "--out '': exit 1, said" "[ $rc -eq 1 ] && grep -q -- '--out is empty' '$tmp/o'"
    "$run" --model "$model" $il --overwrite --out "$tmp/il1" >"$tmp/o" 2>&1; rc=$?
    check "--overwrite replaces it (a fresh LoRA, no --init-lora)" \
          "[ $rc -eq 0 ] && ! cmp -s '$tmp/il1.lora' '$tmp/il1/lora.safetensors' && grep -q '\"overwrite\":[[:space:]]*false' '$tmp/il1/config.json'"
    "$run" --model "$model" $il --init-lora "$tmp/nothing.safetensors" --out "$tmp/il3" >"$tmp/o" 2>&1; rc=$?
    check "--init-lora of a missing file: exit 1, naming it" "[ $rc -eq 1 ] && grep -q -- '--init-lora: .*nothing.safetensors' '$tmp/o'"
    # --lora-every keeps the LoRA of every N-th step (the last one is lora.safetensors); --max-minutes
    # ends training early and still evaluates, writes the LoRA and the report
    "$run" --model "$model" --steps 2 --iters 2 --batch 1 --size 64 --eval-images 2 --reward red --no-progress \
           --lora-every 1 --out "$tmp/le" >"$tmp/o" 2>&1; rc=$?
    check "draft-run --lora-every 1: loras/step_00001 and step_00002, the last equal to lora.safetensors" \
          "[ $rc -eq 0 ] && [ -s '$tmp/le/loras/step_00001.safetensors' ] && \
           cmp -s '$tmp/le/loras/step_00002.safetensors' '$tmp/le/lora.safetensors' && \
           ! cmp -s '$tmp/le/loras/step_00001.safetensors' '$tmp/le/lora.safetensors' && \
           grep -q 'href=\"loras\"' '$tmp/le/report.html' && grep -q 'href=\"lora_kohya.safetensors\"' '$tmp/le/report.html' && \
           ! grep -q 'href=\"lora_best.safetensors\"' '$tmp/le/report.html'"
    "$run" --model "$model" --steps 2 --iters 50 --batch 1 --size 64 --eval-images 2 --reward red --no-progress \
           --max-minutes 0.00001 --out "$tmp/mm" >"$tmp/o" 2>&1; rc=$?
    check "draft-run --max-minutes: one step, then the final evaluation, LoRA and report" \
          "[ $rc -eq 0 ] && grep -q 'max-minutes 1e-05 reached at step 1 of 50' '$tmp/o' && tail -n 1 '$tmp/o' | grep -q ' steps=1 ' && \
           [ -s '$tmp/mm/report.html' ] && [ -s '$tmp/mm/lora.safetensors' ] && [ \$(grep -c '\"eval\": true' '$tmp/mm/metrics.jsonl') -eq 2 ]"
    "$run" --model "$model" --steps 2 --iters 2 --batch 1 --size 64 --eval-images 2 --reward red --no-progress \
           --resume --out "$tmp/mm" >"$tmp/o" 2>&1; rc=$?
    check "... and --resume continues from there" "[ $rc -eq 0 ] && grep -q 'resumed at step 1/2' '$tmp/o' && tail -n 1 '$tmp/o' | grep -q ' steps=2 '"
    # DRTune: k = 2 trained steps of 4, at an offset drawn per step; the LoRA gets a gradient
    "$run" --model "$model" --method drtune --k 2 --steps 4 --iters 2 --batch 1 --size 64 --eval-images 2 \
           --reward red --no-progress --out "$tmp/drt" >"$tmp/o" 2>&1; rc=$?
    check "draft-run --method drtune" "[ $rc -eq 0 ] && grep -q 'drtune' '$tmp/drt/report.html' && \
           grep -Eq '\"grad_norm\": [0-9.]*[1-9]' '$tmp/drt/metrics.jsonl'"
    # --eval-reward: a second reward on the held-out samples; before training it is what a run
    # trained on that reward measures as its own reward
    "$run" --model "$model" --reward red --eval-reward brightness=0.5 --steps 2 --iters 1 --batch 1 --size 64 \
           --eval-images 2 --no-progress --out "$tmp/ev" >"$tmp/o" 2>&1; rc=$?
    "$run" --model "$model" --reward brightness=0.5 --steps 2 --iters 1 --batch 1 --size 64 --eval-images 2 \
           --no-progress --out "$tmp/ev2" >/dev/null 2>&1
    ev=$(head -n 1 "$tmp/ev/metrics.jsonl" | sed -n 's/.*"eval_reward": \([^}]*\)}.*/\1/p')
    ev2=$(head -n 1 "$tmp/ev2/metrics.jsonl" | sed -n 's/.*"reward": \([^,]*\),.*/\1/p')
    check "draft-run --eval-reward: the held-out samples scored by both" "[ $rc -eq 0 ] && [ -n '$ev' ] && [ '$ev' = '$ev2' ] && \
           [ \$(grep -c '\"eval_reward\"' '$tmp/ev/metrics.jsonl') -eq 2 ] && grep -q 'eval reward <code>brightness=0.5' '$tmp/ev/report.html' && \
           ! grep -q 'eval_reward' '$tmp/ev2/metrics.jsonl'"
    # a sum reward: each line of metrics.jsonl has its terms, unweighted, and the reward is their
    # weighted sum; the report has a row each, and a resumed run keeps their values before training
    sumr="sum:red;-2*brightness=0.5"
    "$run" --model "$model" --reward "$sumr" --steps 2 --iters 1 --batch 1 --size 64 --eval-images 2 \
           --no-progress --out "$tmp/sum" >"$tmp/o" 2>&1; rc=$?
    "$run" --model "$model" --reward "$sumr" --steps 2 --iters 2 --batch 1 --size 64 --eval-images 2 \
           --no-progress --out "$tmp/sum" --resume >>"$tmp/o" 2>&1; rc2=$?
    sum_ok=$(awk '{ if (!match($0, /"reward": [-0-9.e]+/)) { bad = 1; next }
                    r = substr($0, RSTART + 10, RLENGTH - 10)
                    if (!match($0, /"reward_terms": \[[-0-9.e]+, [-0-9.e]+\]/)) { bad = 1; next }
                    split(substr($0, RSTART + 17, RLENGTH - 18), t, ", ")
                    d = r - (t[1] - 2 * t[2]); if (d < 0) d = -d
                    if (d > 1e-8 || t[1] == t[2]) bad = 1; n++ }
                  END { print (bad || n != 5) ? "no" : "yes" }' "$tmp/sum/metrics.jsonl")
    check "draft-run with a sum reward: every metrics line has its terms, weighted they sum to the reward" \
          "[ $rc -eq 0 ] && [ $rc2 -eq 0 ] && [ '$sum_ok' = yes ] && grep -q 'reward term 2, -2 \* brightness: -0.0' '$tmp/o'"
    check "the report charts the held-out measures of its three evaluations (two before the resume): diversity, each term" \
          "grep -q '>diversity of the held-out samples<' '$tmp/sum/report.html' && grep -q '>term 1: red<' '$tmp/sum/report.html' && \
           grep -q '>term 2: brightness=0.5<' '$tmp/sum/report.html' && ! grep -q '>diversity of the held-out' '$tmp/run/report.html'"
    # eval_scores.jsonl: each held-out image before and after; their mean is the evaluation's reward
    # (the 'before' values kept through --resume)
    ok_scores=$(awk -v r0="$(head -n 1 "$tmp/sum/metrics.jsonl" | sed -n 's/.*"reward": \([^,]*\),.*/\1/p')" \
                    -v r1="$(tail -n 1 "$tmp/sum/metrics.jsonl" | sed -n 's/.*"reward": \([^,]*\),.*/\1/p')" '
        /"before":null|"after":null/ { bad = 1 }
        { match($0, /"before":[-0-9.e]+/); b += substr($0, RSTART + 9, RLENGTH - 9)
          match($0, /"after":[-0-9.e]+/); a += substr($0, RSTART + 8, RLENGTH - 8); n++ }
        END { d0 = b / n - r0; d1 = a / n - r1; if (d0 < 0) d0 = -d0; if (d1 < 0) d1 = -d1
              print (bad || n != 2 || d0 > 1e-8 || d1 > 1e-8) ? "no" : "yes" }' "$tmp/sum/eval_scores.jsonl")
    check "eval_scores.jsonl: each held-out image, averaging to the evaluations (after --resume too)" \
          "[ '$ok_scores' = yes ] && grep -q 'Each held-out image' '$tmp/sum/report.html'"
    check "the report of a resumed sum run shows each term before and after" \
          "grep -Eq 'term 1, 1 &times; <code>red</code></th><td class=\"num\">-0\.[0-9]+</td><td class=\"num\">-0\.[0-9]+' '$tmp/sum/report.html' && \
           grep -q 'term 2, -2 &times; <code>brightness=0.5</code>' '$tmp/sum/report.html'"
    # <out>/config.json holds every option; --config reads it back to the same run (metrics equal
    # but for the timings), a seed past 2^53 and a non-square size included
    "$run" --model "$model" --steps 2 --iters 2 --batch 1 --size 64x128 --eval-images 2 --reward "sum:red;0.3*brightness=0.4" \
           --lr 3.14159265358979e-4 --lora-rank 2 --seed 18446744073709551615 --no-progress --out "$tmp/cj1" >/dev/null 2>&1; rc=$?
    "$run" --config "$tmp/cj1/config.json" --out "$tmp/cj2" >/dev/null 2>&1; rc2=$?
    check "draft-run writes config.json, and --config of it repeats the run" \
          "[ $rc -eq 0 ] && [ $rc2 -eq 0 ] && grep -q '\"seed\":.*\"18446744073709551615\"' '$tmp/cj1/config.json' && \
           grep -q '\"out\":.*\"$tmp/cj2\"' '$tmp/cj2/config.json' && [ \$(wc -l < '$tmp/cj1/metrics.jsonl') -eq 4 ] && \
           cmp -s <(sed 's/\"seconds\": [0-9.]*//' '$tmp/cj1/metrics.jsonl') <(sed 's/\"seconds\": [0-9.]*//' '$tmp/cj2/metrics.jsonl')"
    check "config.json of a resumed run starts it again (resume false)" "grep -q '\"resume\":.*false' '$tmp/sum/config.json'"
    # draft-compare: the runs above side by side; by reward queries (config.json gives them)
    "$compare" --x queries --out "$tmp/cmp.html" "$tmp/sum" "$tmp/cj1" "$tmp/cj2/" >"$tmp/o" 2>&1; rc=$?
    check "draft-compare by reward queries" "[ $rc -eq 0 ] && grep -q 'compared 3 runs' '$tmp/o' && \
           grep -q '<tr><th>cj2</th><td>lv</td>' '$tmp/cmp.html' && grep -q 'different rewards' '$tmp/cmp.html' && \
           grep -q 'reward queries</text>' '$tmp/cmp.html'"
    "$compare" "$tmp/sum" "$tmp/nothere" --out "$tmp/cmp2.html" >"$tmp/o" 2>&1; rc=$?
    check "draft-compare with a missing run folder: exit 1, naming it, nothing written" \
          "[ $rc -eq 1 ] && grep -q 'nothere/metrics.jsonl' '$tmp/o' && [ ! -e '$tmp/cmp2.html' ]"
    # --keep-best: lora_best.safetensors is the LoRA of the evaluation with the highest value. Trained on
    # red, kept by the negated red, the best is the untrained LoRA (step 0); kept by red, the last one
    kb="--reward red --steps 2 --iters 3 --eval-every 1 --batch 1 --size 64 --eval-images 2 --lr 0.01 --no-progress"
    argmax() { awk -v k="\"$2\": " '/"eval": true/ { i = index($0, k); if (!i) next; split(substr($0, i + length(k)), a, /[,}]/)
               st = $0; sub(/.*"step": /, "", st); sub(/,.*/, "", st); if (n++ == 0 || a[1] + 0 > m) { m = a[1] + 0; s = st } }
               END { print s }' "$1"; }
    "$run" --model "$model" $kb --eval-reward "sum:-1*red" --keep-best eval-reward --out "$tmp/kb1" >"$tmp/o" 2>&1; rc=$?
    s1=$(argmax "$tmp/kb1/metrics.jsonl" eval_reward)
    check "--keep-best eval-reward: the LoRA of the best held-out eval reward (step $s1)" \
          "[ $rc -eq 0 ] && [ '$s1' = 0 ] && grep -q 'the best held-out eval-reward, .*, was at step 0: ' '$tmp/o' && \
           ! cmp -s '$tmp/kb1/lora_best.safetensors' '$tmp/kb1/lora.safetensors' && grep -q 'the LoRA at step 0' '$tmp/kb1/report.html'"
    "$run" --model "$model" $kb --eval-reward "sum:-1*red" --keep-best eval-reward --out "$tmp/kb1" --iters 4 --resume \
           >"$tmp/o" 2>&1; rc=$?
    check "--keep-best after --resume: the best so far is kept (still step 0)" \
          "[ $rc -eq 0 ] && grep -q 'the best held-out eval-reward, .*, was at step 0: ' '$tmp/o'"
    "$run" --model "$model" $kb --keep-best reward --out "$tmp/kb2" >"$tmp/o" 2>&1; rc=$?
    s2=$(argmax "$tmp/kb2/metrics.jsonl" reward)
    check "--keep-best reward: the LoRA of the best held-out reward (step $s2)" \
          "[ $rc -eq 0 ] && [ -n '$s2' ] && grep -q \"was at step $s2: \" '$tmp/o' && \
           { [ '$s2' != 3 ] || cmp -s '$tmp/kb2/lora_best.safetensors' '$tmp/kb2/lora.safetensors'; }"
    "$run" --model "$model" $kb --keep-best eval-reward --out "$tmp/kb3" >"$tmp/o" 2>&1; rc=$?
    check "--keep-best eval-reward without --eval-reward: refused" "[ $rc -eq 1 ] && grep -q 'needs an --eval-reward' '$tmp/o'"
    # --eval-prompts: the held-out evaluation scores its own prompts; its first line is what a run
    # trained on those prompts measures, and not what the training prompts give
    printf 'a blue car\n# a comment\na green tree\n' >"$tmp/eval_prompts.txt"
    ep="--steps 2 --iters 1 --batch 1 --size 64 --eval-images 3 --reward red --no-progress"
    "$run" --model "$model" $ep --eval-prompts "$tmp/eval_prompts.txt" --out "$tmp/ep1" >"$tmp/o" 2>&1; rc=$?
    "$run" --model "$model" $ep --prompts "$tmp/eval_prompts.txt" --out "$tmp/ep2" >/dev/null 2>&1
    "$run" --model "$model" $ep --out "$tmp/ep3" >/dev/null 2>&1
    e1=$(head -n 1 "$tmp/ep1/metrics.jsonl"); e2=$(head -n 1 "$tmp/ep2/metrics.jsonl"); e3=$(head -n 1 "$tmp/ep3/metrics.jsonl")
    check "draft-run --eval-prompts: the held-out set is scored on those prompts" \
          "[ $rc -eq 0 ] && [ -n '$e1' ] && [ '$e1' = '$e2' ] && [ '$e1' != '$e3' ] && \
           grep -q 'eval_prompts.txt' '$tmp/ep1/report.html'"
    # --lr-decay: metrics.jsonl logs each step's own learning rate (warm-up 2, then cosine from 0.01
    # to 0.001 over the 4 steps: 0.005, 0.01, 0.01, 0.0055), computed here from the formula
    ld="--steps 2 --iters 4 --batch 1 --size 64 --eval-images 1 --reward red --no-progress --lr 0.01 --warmup 2 --lr-min 0.001"
    "$run" --model "$model" $ld --lr-decay cosine --save-every 2 --out "$tmp/ld" >"$tmp/o" 2>&1; rc=$?
    lr_bad=$(awk '/"lr": / { s = $0; sub(/.*"step": /, "", s); sub(/,.*/, "", s); l = $0; sub(/.*"lr": /, "", l); sub(/,.*/, "", l)
                 k = s - 1; w = 2; n = 4 - w; t = (k - w) / n; t = t < 0 ? 0 : t > 1 ? 1 : t
                 e = k + 1 < w ? 0.01 * (k + 1) / w : 0.001 + 0.009 * (1 + cos(3.14159265358979 * t)) / 2
                 m++; if ((l - e) > 1e-6 * e || (e - l) > 1e-6 * e) bad = bad " step " s ": " l " (want " e ")" }
                 END { print m == 4 ? bad : "only " m + 0 " steps" }' "$tmp/ld/metrics.jsonl")
    check "--lr-decay cosine with a warm-up: each step logs the rate it used${lr_bad:+ (got$lr_bad)}" \
          "[ $rc -eq 0 ] && [ -z '$lr_bad' ] && grep -q '\"lr-decay\":[[:space:]]*\"cosine\"' '$tmp/ld/config.json' && \
           grep -q '0.01 (cosine decay to 0.001)' '$tmp/ld/report.html'"
    "$run" --model "$model" $ld --lr-decay cosine --iters 6 --out "$tmp/ld" --resume >"$tmp/o" 2>&1; rc=$?
    check "--resume with other --iters under a decay: refused, naming both schedules" \
          "[ $rc -ne 0 ] && grep -q \"learning-rate schedule '--lr 0.01 --lr-decay cosine --lr-min 0.001 --warmup 2 --iters 4'\" '$tmp/o'"
    # --skip-nonfinite: a reward weighted 1e36 overflows every gradient norm. Each such step makes no
    # update and the run goes on (up to N in a row, the count kept through --resume); one more stops it
    nf="--reward sum:1e36*red --steps 2 --batch 1 --size 64 --eval-images 1 --no-progress"
    "$run" --model "$model" $nf --iters 2 --skip-nonfinite 5 --out "$tmp/nf" >"$tmp/o" 2>&1; rc1=$?
    "$run" --model "$model" $nf --iters 4 --skip-nonfinite 5 --out "$tmp/nf" --resume >"$tmp/o" 2>&1; rc=$?
    fin=$(grep '^final:' "$tmp/o")
    check "--skip-nonfinite: 4 steps skipped, no update (reward after = before), the count kept through --resume" \
          "[ $rc1 -eq 0 ] && [ $rc -eq 0 ] && [ \$(grep -c '\"skipped\": true' '$tmp/nf/metrics.jsonl') -eq 4 ] && \
           [ -n \"\$(echo '$fin' | awk -F'[= ]' '\$3 == \$5')\" ] && grep -q '4 of the 4 steps made no update' '$tmp/o' && \
           grep -q '4 (4 skipped: the gradient was not finite)' '$tmp/nf/report.html'"
    "$run" --model "$model" $nf --iters 5 --out "$tmp/nf2" >"$tmp/o" 2>&1; rc=$?
    check "--skip-nonfinite 3 (the default): the 4th non-finite step in a row stops the run, saying so" \
          "[ $rc -eq 1 ] && [ \$(grep -c 'skipped (' '$tmp/o') -eq 3 ] && grep -q 'step 4: adamw: the gradient norm is inf' '$tmp/o' && \
           grep -q '4 steps in a row had a gradient that was not finite' '$tmp/o'"
    # a reward that is not finite (guidance 1e308 overflows the sampling): the run stops at once, saying why
    "$run" --model "$model" --guidance 1e308 --steps 2 --batch 1 --size 64 --eval-images 1 --no-progress --iters 1 \
           --reward red --out "$tmp/gd" >"$tmp/o" 2>&1; rc=$?
    check "a non-finite reward (guidance 1e308) stops the run with the cause, not a bare nan" \
          "[ $rc -eq 1 ] && grep -q 'objective: the reward is NaN: the sampling diverged' '$tmp/o' && ! grep -qi -- '-nan' '$tmp/o' && \
           grep -q 'reward before NaN on 1 held-out seed$' '$tmp/o' && grep -q 'warning: the held-out reward is not finite before any training' '$tmp/o'"
    # a machine other programs keep busy (a spinning loop on every CPU): draft-run says so after a
    # step, with the remedy, unless a wait policy was chosen (meson sets OMP_WAIT_POLICY=PASSIVE)
    hogs=()
    for _ in $(seq "$(nproc)"); do sh -c 'while :; do :; done' & hogs+=($!); done
    bm="--steps 2 --batch 1 --size 64 --iters 1 --eval-images 1 --eval-every 0 --reward red --no-progress"
    env -u OMP_WAIT_POLICY OMP_NUM_THREADS=2 "$run" --model "$model" $bm --out "$tmp/bm1" >"$tmp/o" 2>&1; rc=$?
    env OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 "$run" --model "$model" $bm --out "$tmp/bm2" >"$tmp/o2" 2>&1; rc2=$?
    env -u OMP_WAIT_POLICY OMP_NUM_THREADS=2 "$run" --model "$model" $bm --dry-run --out "$tmp/bm3" >"$tmp/o3" 2>&1; rc3=$?
    kill "${hogs[@]}" 2>/dev/null; wait "${hogs[@]}" 2>/dev/null
    check "a busy machine: the step's share of its threads' time, and OMP_WAIT_POLICY=PASSIVE, said once" \
          "[ $rc -eq 0 ] && [ \$(grep -c \"of its 2 threads' time: other programs are using these CPUs. OMP_WAIT_POLICY=PASSIVE\" '$tmp/o') -eq 1 ]"
    check "a busy machine with OMP_WAIT_POLICY set: nothing said" "[ $rc2 -eq 0 ] && ! grep -q \"threads' time\" '$tmp/o2'"
    check "a busy machine: --dry-run says so too, beside its projection" \
          "[ $rc3 -eq 0 ] && grep -q \"threads' time: other programs\" '$tmp/o3' && grep -q '^dry-run: step_seconds=' '$tmp/o3'"
    "$run" --lr-decay exponential >"$tmp/o" 2>&1; rc=$?
    check "--lr-decay exponential: exit 2 and a message" "[ $rc -eq 2 ] && grep -q 'is not constant, linear or cosine' '$tmp/o'"
    # --resume refuses what would make its values incomparable with the checkpoint's 'before'
    "$run" --model "$model" $ep --eval-prompts "$tmp/eval_prompts.txt" --out "$tmp/ep1" --iters 2 --resume >"$tmp/o" 2>&1; rc=$?
    check "--resume with the same held-out set continues" "[ $rc -eq 0 ] && grep -q 'resumed at step 1/2' '$tmp/o'"
    "$run" --model "$model" $ep --eval-prompts @emoji --out "$tmp/ep1" --iters 3 --resume >"$tmp/o" 2>&1; rc=$?
    check "--resume with other --eval-prompts: refused, naming them" \
          "[ $rc -ne 0 ] && grep -q 'another held-out set' '$tmp/o' && grep -q '3 images of @emoji' '$tmp/o'"
    "$run" --model "$model" $ep --eval-prompts "$tmp/eval_prompts.txt" --eval-images 4 --out "$tmp/ep1" --iters 3 --resume >"$tmp/o" 2>&1; rc=$?
    check "--resume with another --eval-images: refused" "[ $rc -ne 0 ] && grep -q ', 4 images of' '$tmp/o'"
    "$run" --model "$model" $ep --eval-prompts "$tmp/eval_prompts.txt" --reward brightness=0.5 --out "$tmp/ep1" --iters 3 \
           --resume >"$tmp/o" 2>&1; rc=$?
    check "--resume with another --reward: refused, naming both" \
          "[ $rc -ne 0 ] && grep -q \"trained with --reward 'red', this run has 'brightness=0.5'\" '$tmp/o'"
    # --negative-prompt in training and evaluation: the one training prompt as its own negative
    # evaluates, before training, what --guidance 1 does; --resume refuses another sampler
    printf 'a cat\n' >"$tmp/one_prompt.txt"
    nr="--steps 2 --iters 1 --batch 1 --size 64 --eval-images 2 --reward red --no-progress --prompts $tmp/one_prompt.txt"
    "$run" --model "$model" $nr --negative-prompt "a cat" --out "$tmp/nr1" >"$tmp/o" 2>&1; rc=$?
    "$run" --model "$model" $nr --guidance 1 --out "$tmp/nr2" >/dev/null 2>&1
    "$run" --model "$model" $nr --out "$tmp/nr3" >/dev/null 2>&1
    first_reward() { head -n 1 "$1/metrics.jsonl" | sed 's/.*"reward": *\([-0-9.e]*\).*/\1/'; }
    r1=$(first_reward "$tmp/nr1"); r2=$(first_reward "$tmp/nr2"); r3=$(first_reward "$tmp/nr3")
    check "draft-run --negative-prompt: the prompt as its own negative evaluates what --guidance 1 does ($r1, $r2; default $r3)" \
          "[ $rc -eq 0 ] && [ -n '$r1' ] && awk -v a='$r1' -v b='$r2' -v c='$r3' 'BEGIN { d = a - b; e = c - b; m = a < 0 ? -a : a
                                                        exit !((d < 0 ? -d : d) <= 1e-5 * m && (e < 0 ? -e : e) > 1e-4 * m) }' && \
           grep -Eq '\"negative-prompt\":[[:space:]]*\"a cat\"' '$tmp/nr1/config.json' && \
           grep -q 'negative prompt</th><td>a cat<' '$tmp/nr1/report.html'"
    "$run" --model "$model" $nr --negative-prompt "a dog" --out "$tmp/nr1" --iters 2 --resume >"$tmp/o" 2>&1; rc=$?
    check "--resume with another --negative-prompt: refused, naming both" \
          "[ $rc -ne 0 ] && grep -q \"negative-prompt 'a cat', this run has .*negative-prompt 'a dog'\" '$tmp/o'"
    "$run" --model "$model" $nr --negative-prompt "a cat" --steps 3 --out "$tmp/nr1" --iters 2 --resume >"$tmp/o" 2>&1; rc=$?
    check "--resume with another --steps: refused" "[ $rc -ne 0 ] && grep -q 'was sampled with --steps 2 .*this run has --steps 3' '$tmp/o'"
    "$run" --model "$model" $nr --negative-prompt "a cat" --out "$tmp/nr1" --iters 2 --resume >"$tmp/o" 2>&1; rc=$?
    check "--resume with the same sampler continues" "[ $rc -eq 0 ] && grep -q 'resumed at step 1/2' '$tmp/o'"
    "$run" --model "$model" $nr --negative-prompt "a cat" --clip-skip 1 --out "$tmp/nr1" --iters 3 --resume >"$tmp/o" 2>&1; rc=$?
    check "--resume with another --clip-skip: refused" "[ $rc -ne 0 ] && grep -q 'this run has .*--clip-skip 1' '$tmp/o'"
    "$run" --model "$model" $nr --clip-skip 99 --out "$tmp/cs99" >"$tmp/o" 2>&1; rc=$?
    check "--clip-skip past the text encoder's layers: exit 1, the range" \
          "[ $rc -eq 1 ] && grep -Eq \"clip skip 99: the text encoder's [0-9]+ layers leave 0 \\.\\. [0-9]+\" '$tmp/o'"
    # a sum as --eval-reward: each evaluation has its terms, weighted they give eval_reward; after a
    # resume the report still has their 'before' values
    et="--steps 2 --batch 1 --size 64 --eval-images 2 --reward red --eval-reward sum:red;-2*brightness=0.5 --no-progress"
    "$run" --model "$model" $et --iters 1 --out "$tmp/et" >"$tmp/o" 2>&1; rc=$?
    "$run" --model "$model" $et --iters 2 --resume --out "$tmp/et" >>"$tmp/o" 2>&1; rc2=$?
    et_ok=$(awk '/"eval": true/ {
               n++; e = $0; sub(/.*"eval_reward": /, "", e); sub(/,.*/, "", e)
               t = $0; sub(/.*"eval_reward_terms": \[/, "", t); sub(/\].*/, "", t); split(t, v, ", ")
               d = e - (v[1] - 2 * v[2]); if (d < 0) d = -d; if (d > 1e-6) bad = 1 }
             END { print (bad || n != 3) ? "no" : "yes" }' "$tmp/et/metrics.jsonl")
    check "--eval-reward sum:...: each evaluation's terms, weighted, give its eval reward; the report keeps them through --resume" \
          "[ $rc -eq 0 ] && [ $rc2 -eq 0 ] && [ '$et_ok' = yes ] && grep -q 'eval reward term 2, -2 \* brightness' '$tmp/o' && \
           grep -Eq 'eval term 2, -2 &times; <code>brightness=0.5</code></th><td class=\"num\">-?[0-9]' '$tmp/et/report.html'"
    # --lora-targets: the cross-attention's keys and values only
    "$run" --model "$model" --lora-targets attn2.to_k,attn2.to_v --steps 2 --iters 1 --batch 1 --size 64 --eval-images 1 \
           --reward red --no-progress --out "$tmp/lt" >"$tmp/o" 2>&1; rc=$?
    check "draft-run --lora-targets" "[ $rc -eq 0 ] && grep -q 'attn2.to_k.lora_A' '$tmp/lt/lora.safetensors' && \
           ! grep -q 'attn1\|to_q\|to_out' '$tmp/lt/lora.safetensors' && grep -q 'attn2.to_k,attn2.to_v' '$tmp/lt/report.html'"
    "$run" --model "$model" --lora-targets to_nothing --steps 2 --iters 1 --out "$tmp/lt2" >"$tmp/o" 2>&1; rc=$?
    check "--lora-targets matching nothing: refused" "[ $rc -ne 0 ] && grep -q \"no projection of the UNet matches targets 'to_nothing'\" '$tmp/o'"
    "$run" --model "$model" --method drtune --k 5 --steps 4 --out "$tmp/drt2" >"$tmp/o" 2>&1; rc=$?
    check "drtune with k > steps: refused, naming k" "[ $rc -ne 0 ] && grep -q 'k must be in \[1, steps = 4\], got 5' '$tmp/o'"
    "$sample" --model "$model" --prompt "a red apple" --prompt "a cat" --n 2 --steps 2 --size 64 --batch 1 \
              --lora "$tmp/run/lora.safetensors:0.5" --lora "$tmp/run/lora_kohya.safetensors:0.5" \
              --out "$tmp/s" >"$tmp/o" 2>&1; rc=$?
    check "draft-sample with two LoRA files" "[ $rc -eq 0 ] && [ -s '$tmp/s/grid.png' ] && [ -s '$tmp/s/0003.png' ]"
    "$sample" --model "$model" --prompt "a cat" --seed 3 --steps 2 --size 64 \
              --lora "$tmp/run/lora.safetensors:0.5" --lora "$tmp/run/lora_kohya.safetensors:0.5" \
              --out "$tmp/s1" >/dev/null 2>&1
    check "image k depends only on seed + k (same --batch)" "cmp -s '$tmp/s/0003.png' '$tmp/s1/0000.png'"
    "$sample" --model "$model" --prompt "a cat" --seed 3 --steps 2 --size 64 --lora "$tmp/run:0.5" --out "$tmp/sd1" >/dev/null 2>&1
    "$sample" --model "$model" --prompt "a cat" --seed 3 --steps 2 --size 64 --lora "$tmp/run/lora.safetensors:0.5" \
              --out "$tmp/sd2" >/dev/null 2>&1
    check "--lora with a run folder: its lora.safetensors" "[ -s '$tmp/sd1/0000.png' ] && cmp -s '$tmp/sd1/0000.png' '$tmp/sd2/0000.png'"
    "$sample" --model "$model" --prompt "a cat" --steps 2 --size 64 --lora "$tmp/run:0,5x" --out "$tmp/sd3" >"$tmp/o" 2>&1; rc=$?
    check "--lora with a mistyped scale after an existing path: exit 2, said so" \
          "[ $rc -eq 2 ] && grep -q \"what follows the last ':' is not a scale\" '$tmp/o' && [ ! -e '$tmp/sd3' ]"
    # --reward scores every image: one line each, the same score for the same image in another batch
    "$sample" --model "$model" --prompt "a red apple" --prompt "a cat" --n 2 --steps 2 --size 64 --batch 1 \
              --reward red --out "$tmp/sr" >"$tmp/o" 2>&1; rc=$?
    check "draft-sample --reward writes scores.jsonl" "[ $rc -eq 0 ] && [ \$(wc -l < '$tmp/sr/scores.jsonl') -eq 4 ] && \
           grep -q '\"image\":\"0003.png\",\"prompt\":\"a cat\",\"reward\":' '$tmp/sr/scores.jsonl' && grep -q 'reward red: mean' '$tmp/o' && \
           grep -Eq '4 images and grid.png in .* \\(diversity 0\\.[0-9]{4}\\)' '$tmp/o'"
    "$sample" --model "$model" --prompt "a cat" --seed 3 --steps 2 --size 64 --batch 1 --reward red --out "$tmp/sr1" >/dev/null 2>&1
    check "... image 3's score alone is image 3's score" "[ \"\$(sed -n 4p '$tmp/sr/scores.jsonl' | sed 's/.*reward//')\" = \"\$(sed -n 1p '$tmp/sr1/scores.jsonl' | sed 's/.*reward//')\" ]"
    # draft-score: the PNGs scored again give the samples' scores, up to the 8-bit rounding
    "$score" --reward red "$tmp/sr/0000.png" "$tmp/sr/0001.png" "$tmp/sr/0002.png" "$tmp/sr/0003.png" \
             --out "$tmp/score.jsonl" >"$tmp/o" 2>&1; rc=$?
    check "draft-score: the samples' PNGs score what draft-sample scored (to 1e-3: 8-bit pixels)" \
          "[ $rc -eq 0 ] && close_scores '$tmp/sr/scores.jsonl' '$tmp/score.jsonl' 1e-3 && \
           ! close_scores '$tmp/sr/scores.jsonl' '$tmp/score.jsonl' 1e-9 && grep -q 'diversity 0\.[0-9]* over the 4 images of 64x64' '$tmp/o'"
    # --out: refused before any scoring when it cannot be written; a failed run leaves it as it was
    "$score" --reward red "$tmp/sr/0000.png" --out "$tmp/score.jsonl/x" >"$tmp/o" 2>&1; rc=$?
    check "draft-score --out through a file: exit 1 before scoring, said" \
          "[ $rc -eq 1 ] && grep -q 'cannot write .*score.jsonl/x: .*score.jsonl is not a folder' '$tmp/o' && ! grep -q 'mean' '$tmp/o'"
    cp "$tmp/score.jsonl" "$tmp/score.keep"
    "$score" --reward red "$tmp/sr/0000.png" "$tmp/bad.png" --out "$tmp/score.jsonl" >"$tmp/o" 2>&1; rc=$?
    check "draft-score failing (a PNG that does not read): the earlier --out file unchanged" "[ $rc -eq 1 ] && cmp -s '$tmp/score.keep' '$tmp/score.jsonl'"
    "$score" --reward "sum:red;0.5*brightness=0.5" "$tmp/sr/0000.png" "$tmp/sr/0001.png" >"$tmp/score3.jsonl" 2>/dev/null; rc=$?
    sum_terms=$(awk -F'"reward":|,"reward_terms":\\[|,|\\]' '{ d = $3 - ($4 + 0.5 * $5); if (d < 0) d = -d; if (d > 1e-7) bad = 1; n++ }   # f32 sums
                                                             END { print (bad || n != 2) ? "no" : "yes" }' "$tmp/score3.jsonl")
    check "draft-score with a sum reward: each image's terms, their weighted sum the reward" "[ $rc -eq 0 ] && [ '$sum_terms' = yes ]"
    "$sample" --model "$model" --prompt "a cat" --steps 2 --size 64 --reward sharpness --out "$tmp/sr2" >"$tmp/o" 2>&1; rc=$?
    check "draft-sample bad --reward: exit 1 before the model and the folder" "[ $rc -eq 1 ] && grep -q 'unknown reward spec' '$tmp/o' && [ ! -e '$tmp/sr2' ]"
    # --negative-prompt: with the prompt itself as the negative, guidance has nothing to steer away
    # from (eps_uncond = eps_cond), so the images are the unguided ones (--guidance 1); with the
    # empty default they are not
    np="--model $model --prompt cat --n 2 --steps 2 --size 64 --reward red"
    "$sample" $np --guidance 1 --out "$tmp/np1" >/dev/null 2>&1
    "$sample" $np --negative-prompt cat --out "$tmp/np2" >/dev/null 2>&1
    "$sample" $np --out "$tmp/np3" >/dev/null 2>&1
    # two scores.jsonl files hold the same 2 rewards to 1e-5 relative
    same() { paste -d ' ' <(sed 's/.*"reward"://; s/}//' "$1") <(sed 's/.*"reward"://; s/}//' "$2") |
             awk '{ d = $1 - $2; m = $1 < 0 ? -$1 : $1; n++; if ((d < 0 ? -d : d) > 1e-5 * m) bad = 1 } END { exit bad || n != 2 }'; }
    check "draft-sample --negative-prompt: the prompt as its own negative samples what --guidance 1 does" \
          "same '$tmp/np1/scores.jsonl' '$tmp/np2/scores.jsonl' && ! same '$tmp/np1/scores.jsonl' '$tmp/np3/scores.jsonl'"
    # a sweep of LoRA scales: every combination samples the same seeds; each equals the call with
    # those scales alone, scale 0 the base model, bit for bit
    sw="--model $model --prompt cat --prompt dog --steps 2 --size 64 --reward red"
    "$sample" $sw --lora "$tmp/run/lora.safetensors:0,0.5" --lora "$tmp/run/lora_kohya.safetensors:0,1,2" \
              --out "$tmp/sw" >"$tmp/o" 2>&1; rc=$?
    "$sample" $sw --lora "$tmp/run/lora.safetensors:0.5" --lora "$tmp/run/lora_kohya.safetensors:2" --out "$tmp/sw1" >/dev/null 2>&1
    "$sample" $sw --out "$tmp/sw0" >/dev/null 2>&1
    r05=$(sed -n 's/.*"scales":\[0.5,2\],"dir":"scale_0.5_2","reward":\([^,]*\),.*/\1/p' "$tmp/sw/sweep.jsonl")
    m05=$(awk -F'"reward":' '{ sub(/}.*/, "", $2); s += $2; n++ } END { printf "%.6g", s / n }' "$tmp/sw1/scores.jsonl")
    check "draft-sample --lora F:S1,S2: the 6 combinations, each the images of its scales alone ($r05 ~ $m05)" \
          "[ $rc -eq 0 ] && [ \$(ls -d '$tmp/sw'/scale_* | wc -l) -eq 6 ] && [ \$(wc -l < '$tmp/sw/sweep.jsonl') -eq 6 ] && \
           [ -s '$tmp/sw/sweep.png' ] && cmp -s '$tmp/sw/scale_0.5_2/0001.png' '$tmp/sw1/0001.png' && \
           cmp -s '$tmp/sw/scale_0_0/0000.png' '$tmp/sw0/0000.png' && ! cmp -s '$tmp/sw/scale_0.5_2/0000.png' '$tmp/sw0/0000.png' && \
           [ -n '$r05' ] && [ \"\$(printf '%.6g' '$r05')\" = '$m05' ] && grep -q '^  0.5, 2 ' '$tmp/o' && \
           [ \$(grep -c '<tr><td class=\"num\">' '$tmp/sw/sweep.html') -eq 6 ] && grep -q 'href=\"scale_0.5_2/grid.png\"' '$tmp/sw/sweep.html'"
    # one image a combination: no diversity, said as the page says it (the table printed "nan")
    "$sample" --model $model --prompt cat --steps 2 --size 64 --lora "$tmp/run/lora.safetensors:0,1" --out "$tmp/sw3" >"$tmp/o" 2>&1; rc=$?
    check "a sweep of one image a combination: diversity n/a, not nan" \
          "[ $rc -eq 0 ] && grep -Eq '^  1 +n/a$' '$tmp/o' && grep -q 'diversity: n/a with one image' '$tmp/o' && \
           ! grep -Eqi '(^|[^[:alnum:]_])nan([^[:alnum:]_]|\$)' '$tmp/o'"
    # a LoRA scale that makes the sampling diverge: the images are written, and the user told
    "$sample" --model $model --prompt cat --steps 2 --size 64 --lora "$tmp/run/lora.safetensors:1e308" --out "$tmp/sw4" >"$tmp/o" 2>&1; rc=$?
    check "draft-sample: a diverged sampling (LoRA scale 1e308) warns, naming the image" \
          "[ $rc -eq 0 ] && [ -s '$tmp/sw4/0000.png' ] && grep -q 'warning: .*/sw4/0000.png has [0-9]* NaN or infinite values of 12288' '$tmp/o'"
    "$sample" $sw --lora "$tmp/run/lora.safetensors:1,2,3,4,5" --lora "$tmp/run/lora.safetensors:1,2,3,4" --out "$tmp/sw2" >"$tmp/o" 2>&1; rc=$?
    check "a sweep of more than 16 combinations: exit 2" "[ $rc -eq 2 ] && grep -q 'more than 16 combinations' '$tmp/o'"
    "$sample" $sw --merge --lora "$tmp/run/lora.safetensors:0,1" --out "$tmp/sw2" >"$tmp/o" 2>&1; rc=$?
    check "a sweep with --merge: exit 2" "[ $rc -eq 2 ] && grep -q -- '--merge takes one scale per --lora' '$tmp/o'"
    # draft-convert: the LoRA merged into a new diffusers folder samples what --merge samples, bit for bit
    "$convert" --model "$model" --lora "$tmp/run/lora.safetensors:0.7" --out "$tmp/conv" >"$tmp/o" 2>&1; rc=$?
    check "draft-convert --out: a folder with the LoRA merged" "[ $rc -eq 0 ] && [ -s '$tmp/conv/unet/diffusion_pytorch_model.safetensors' ] && [ -s '$tmp/conv/tokenizer/vocab.json' ]"
    "$sample" --model "$tmp/conv" --prompt "a cat" --seed 3 --steps 2 --size 64 --out "$tmp/sc" >/dev/null 2>&1
    "$sample" --model "$model" --prompt "a cat" --seed 3 --steps 2 --size 64 --lora "$tmp/run/lora.safetensors:0.7" \
              --merge --out "$tmp/sm" >/dev/null 2>&1
    check "the converted folder samples what --lora --merge samples" "[ -s '$tmp/sc/0000.png' ] && cmp -s '$tmp/sc/0000.png' '$tmp/sm/0000.png'"
    "$sample" --model "$model" --prompt "a cat" --seed 3 --steps 2 --size 64 --out "$tmp/s0" >/dev/null 2>&1
    check "... and not what the base model samples" "[ -s '$tmp/s0/0000.png' ] && ! cmp -s '$tmp/sc/0000.png' '$tmp/s0/0000.png'"
    "$convert" --model "$model" --out "$tmp/conv" >"$tmp/o" 2>&1; rc=$?
    check "draft-convert refuses a folder that is not empty" "[ $rc -eq 1 ] && grep -q 'exists and is not empty' '$tmp/o'"
    "$convert" --model "$model" --dtype f16 --out "$tmp/conv16" >/dev/null 2>&1; rc=$?
    check "draft-convert --dtype f16 writes F16 weights" "[ $rc -eq 0 ] && head -c 4000 '$tmp/conv16/unet/diffusion_pytorch_model.safetensors' | grep -q '\"F16\"'"
    # a LoRA in kohya's format applies as the original does
    "$convert" --model "$model" --lora "$tmp/run/lora.safetensors" --lora-out "$tmp/k.safetensors" --format kohya \
               >"$tmp/o" 2>&1; rc=$?
    check "draft-convert --lora-out --format kohya" "[ $rc -eq 0 ] && grep -q 'lora_unet_' '$tmp/k.safetensors'"
    "$sample" --model "$model" --prompt "a cat" --seed 3 --steps 2 --size 64 --lora "$tmp/k.safetensors" \
              --out "$tmp/sk" >/dev/null 2>&1
    "$sample" --model "$model" --prompt "a cat" --seed 3 --steps 2 --size 64 --lora "$tmp/run/lora.safetensors" \
              --out "$tmp/sl" >/dev/null 2>&1
    check "the converted LoRA samples what the original does" "[ -s '$tmp/sk/0000.png' ] && cmp -s '$tmp/sk/0000.png' '$tmp/sl/0000.png'"
    # Ctrl-C, and SIGTERM (a scheduler's notice before its kill): the run saves a checkpoint after
    # the current step, says how to continue, and exits with 128 + the signal
    for sig in INT:130:Ctrl-C TERM:143:SIGTERM; do
        name=${sig%%:*} code=$(echo "$sig" | cut -d: -f2) what=${sig##*:}
        "$run" --model "$model" --steps 2 --iters 200 --batch 1 --size 64 --eval-images 2 --reward red \
               --no-progress --save-every 0 --out "$tmp/sig$name" >"$tmp/sig$name.log" 2>&1 &
        pid=$!
        for _ in $(seq 1 600); do grep -q '"step": 1,' "$tmp/sig$name/metrics.jsonl" 2>/dev/null && break; sleep 0.1; done
        kill -"$name" $pid
        wait $pid; rc=$?
        check "$what: exit $code and a checkpoint" "[ $rc -eq $code ] && [ -s '$tmp/sig$name/checkpoint.safetensors' ] && \
               grep -q 'continue with --resume' '$tmp/sig$name.log'"
    done
    "$run" --model "$model" --steps 2 --iters 3 --batch 1 --size 64 --eval-images 2 --reward red \
           --no-progress --resume --out "$tmp/sigINT" >"$tmp/o" 2>&1; rc=$?
    check "--resume after Ctrl-C finishes the run" "[ $rc -eq 0 ] && tail -n 1 '$tmp/o' | grep -q 'steps=3 '"
    # --resume with only --out (and a new --iters): the run's own config.json gives the rest
    "$run" --model "$model" --steps 2 --iters 1 --batch 1 --size 64 --eval-images 2 --reward red --lora-rank 3 \
           --negative-prompt blurry --no-progress --out "$tmp/own" >/dev/null 2>&1
    "$run" --resume --out "$tmp/own" --iters 2 --no-progress >"$tmp/o" 2>&1; rc=$?
    check "draft-run --resume --out DIR: the run's own options, the flags given now on top" \
          "[ $rc -eq 0 ] && grep -q 'the options of .*own/config.json' '$tmp/o' && grep -q 'resumed at step 1/2' '$tmp/o' && \
           tail -n 1 '$tmp/o' | grep -q ' steps=2 ' && grep -q '<td>3 / 8 / to_q' '$tmp/own/report.html'"
else
    echo "SKIP: $model not found (the end-to-end part needs the parity model)"
fi
# the embedded default: no --model means the shipped emoji model (models/emoji) and its preset
emb=$(cd "$(dirname "$0")/.." && pwd)/models/emoji
if [ -f "$emb/model_index.json" ]; then
    "$run" --iters 2 --steps 3 --eval-images 2 --batch 2 --no-progress --out "$tmp/demo" >"$tmp/o" 2>&1; rc=$?
    check "draft-run with no --model runs the embedded model" \
          "[ $rc -eq 0 ] && grep -q 'the embedded emoji model in ' '$tmp/o' && tail -n 1 '$tmp/o' | grep -Eq '^final: .* steps=2 '"
    check "the embedded preset applies (@emoji prompts)" "grep -q '@emoji' '$tmp/demo/report.html'"
    check "the embedded preset measures diversity in its CLIP's embeddings too" \
          "[ \$(grep -Ec '\"clip_diversity\": (0|1)\.[0-9]+' '$tmp/demo/metrics.jsonl') -eq 2 ] && \
           grep -Eq 'CLIP diversity [01]\.[0-9]+ -> [01]\.[0-9]+' '$tmp/o' && grep -q 'diversity in the embeddings of <code>clip' '$tmp/demo/report.html'"
    "$run" --iters 1 --steps 3 --eval-images 2 --batch 1 --reward clip:text=fire --diversity-model clip:text=fire \
           --no-progress --out "$tmp/clip" >"$tmp/o" 2>&1; rc=$?
    check "--reward clip:text=fire uses the embedded CLIP (and, the same spec, measures diversity with it)" \
          "[ $rc -eq 0 ] && tail -n 1 '$tmp/o' | grep -q '^final: ' && grep -q 'clip_diversity' '$tmp/clip/metrics.jsonl'"
    "$run" --iters 1 --steps 3 --eval-images 2 --diversity-model red --no-progress --out "$tmp/divred" >"$tmp/o" 2>&1; rc=$?
    check "--diversity-model red: refused, it has no image tower" "[ $rc -eq 1 ] && grep -q 'reward red has no image tower' '$tmp/o'"
    DRAFT_PROFILE=1 "$sample" --prompt "red apple" --steps 3 --out "$tmp/es" >"$tmp/o" 2>&1; rc=$?
    check "draft-sample with no --model samples the embedded model" "[ $rc -eq 0 ] && [ -s '$tmp/es/grid.png' ]"
    "$sample" --prompt "red apple" --prompt "rocket" --steps 2 --diversity-model clip --out "$tmp/esd" >"$tmp/o2" 2>&1; rc=$?
    check "draft-sample --diversity-model clip: the embedded CLIP's diversity" \
          "[ $rc -eq 0 ] && grep -Eq 'CLIP diversity [01]\.[0-9]{4}\)' '$tmp/o2'"
    # draft-score with a reward that reads the prompt (the embedded model's CLIP), and the diversity in its embeddings
    "$sample" --prompt "red apple" --prompt rocket --steps 2 --reward clip --out "$tmp/esc" >/dev/null 2>&1
    printf 'red apple\nrocket\n' >"$tmp/esc_prompts.txt"
    "$score" --reward clip --prompts "$tmp/esc_prompts.txt" --diversity-model clip "$tmp/esc/0000.png" "$tmp/esc/0001.png" \
             >"$tmp/score2.jsonl" 2>"$tmp/o3"; rc=$?
    check "draft-score --reward clip --prompts: each image against its prompt, as draft-sample scored it (to 2e-3)" \
          "[ $rc -eq 0 ] && close_scores '$tmp/esc/scores.jsonl' '$tmp/score2.jsonl' 2e-3 && \
           grep -q '\"prompt\":\"rocket\"' '$tmp/score2.jsonl' && grep -Eq 'CLIP diversity [01]\.[0-9]{4}' '$tmp/o3'"
    "$score" --reward clip "$tmp/esc" >"$tmp/score4.jsonl" 2>"$tmp/o3"; rc=$?
    check "draft-score of draft-sample's folder: its PNGs (not the grid) with the prompts it wrote" \
          "[ $rc -eq 0 ] && [ \$(wc -l < '$tmp/score4.jsonl') -eq 2 ] && cmp -s '$tmp/score2.jsonl' '$tmp/score4.jsonl' && \
           grep -q 'the prompts of .*prompts.txt' '$tmp/o3'"
    "$score" --reward clip "$tmp/esc/0000.png" >"$tmp/o3" 2>&1; rc=$?
    check "draft-score, a prompt-reading reward without prompts: exit 1, saying how to give them" \
          "[ $rc -eq 1 ] && grep -q -- '--prompt or --prompts' '$tmp/o3'"
    "$score" --reward clip --prompts "$tmp/esc_prompts.txt" "$tmp/esc/0000.png" >"$tmp/o3" 2>&1; rc=$?
    check "draft-score with 2 prompts for 1 image: exit 2" "[ $rc -eq 2 ] && grep -q 'has 2 prompts for 1 images' '$tmp/o3'"
    check "DRAFT_PROFILE=1 prints the time per op at exit" \
          "grep -q '^profile: ' '$tmp/o' && grep -Eq '^conv2d 3x3 +cpu +f32 ' '$tmp/o' && grep -Eq '^attention +cpu ' '$tmp/o'"
    # non-square: the PNG's IHDR holds width then height (big-endian 32-bit at bytes 16 and 20)
    "$sample" --prompt "taxi" --steps 2 --size 64x32 --out "$tmp/ns/a/b" >"$tmp/o" 2>&1; rc=$?
    wh=$(od -An -tu1 -j16 -N8 "$tmp/ns/a/b/0000.png" 2>/dev/null | awk '{print ($3*256+$4) "x" ($7*256+$8)}')
    check "draft-sample --size 64x32 writes a 64 x 32 image (into a new nested --out)" "[ $rc -eq 0 ] && [ '$wh' = 64x32 ]"
    # classify:text=...: the embedded model's own CLIP as a zero-shot classifier; log p <= 0, and the
    # image's prompt (taxi, from the folder's prompts.txt) as its target class
    "$score" --reward 'classify:text=|a red apple|a cat|fire' "$tmp/ns/a/b" >"$tmp/o" 2>&1; rc=$?
    "$score" --reward 'classify:text=fire|taxi' "$tmp/ns/a/b" >"$tmp/o2" 2>&1; rc2=$?
    lp=$(sed -n 's/.*"prompt":"taxi","reward":\([^}]*\)}$/\1/p' "$tmp/o"); lf=$(sed -n 's/.*"reward":\([^}]*\)}$/\1/p' "$tmp/o2")
    check "draft-score --reward classify:text=...: log p of the prompt's class ($lp) and of another ($lf), both <= 0" \
          "[ $rc -eq 0 ] && [ $rc2 -eq 0 ] && awk -v a='$lp' -v b='$lf' 'BEGIN { exit !(a != \"\" && b != \"\" && a <= 0 && b <= 0 && a > -100 && b > -100) }'"
    # the model rewards without their files say which file is missing, and what folder they take
    mkdir -p "$tmp/noir"
    "$score" --reward "imagereward:$tmp/noir" "$tmp/ns/a/b" >"$tmp/o" 2>&1; rc=$?
    "$score" --reward "detect:$emb/clip,text=a cat" "$tmp/ns/a/b" >"$tmp/o2" 2>&1; rc2=$?
    check "draft-score --reward imagereward:<empty folder> / detect:<a CLIP folder>: exit 1, the file and the folder kind named" \
          "[ $rc -eq 1 ] && grep -q 'has no ImageReward.pt' '$tmp/o' && [ $rc2 -eq 1 ] && grep -q \"is not 'owlvit' or 'owlv2'\" '$tmp/o2'"
    "$sample" --prompt "taxi" --steps 2 --out "$tmp/ns/a/b/0000.png/c" >"$tmp/o" 2>&1; rc=$?
    check "draft-sample --out through a file: exit 1 before sampling, the file named" \
          "[ $rc -eq 1 ] && grep -q '0000.png exists and is not a folder' '$tmp/o' && ! grep -q 'images' '$tmp/o'"
    "$sample" --prompt "taxi" --out "" >"$tmp/o" 2>&1; rc=$?
    "$compare" --out "" "$tmp/ns" >"$tmp/o2" 2>&1; rc2=$?
    check "draft-sample and draft-compare --out '': exit 2, said" \
          "[ $rc -eq 2 ] && [ $rc2 -eq 2 ] && grep -q -- '--out is empty' '$tmp/o' && grep -q -- '--out is empty' '$tmp/o2'"
    "$sample" --prompt "taxi" --steps 2 --size 64x36 --out "$tmp/ns" >"$tmp/o" 2>&1; rc=$?
    check "draft-sample --size 64x36: exit 1, both sides named" "[ $rc -eq 1 ] && grep -q -- '--size 64x36: width and height must be multiples of' '$tmp/o'"
else
    echo "SKIP: $emb not found (the embedded model is not in this checkout)"
fi
exit $fail
