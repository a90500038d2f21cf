#!/usr/bin/env bash
# test.sh [--sanitize] [--verbose] — build and run every test suite; the last line is
# "N passed, N failed, N skipped" (suites). --sanitize builds build-asan with AddressSanitizer
# and UndefinedBehaviorSanitizer (leaks checked; CUDA off: nothing runs it without a GPU) and runs
# the same suites there.
set -uo pipefail
cd "$(dirname "$0")/.."
build=build
args=()
verbose=()
for a in "$@"; do
    case "$a" in
    --sanitize) build=build-asan; args=(-Db_sanitize=address,undefined -Dbuildtype=debugoptimized -Db_lundef=false -Dcuda=disabled) ;;
    --verbose) verbose=(--verbose) ;;
    *) echo "test.sh: unknown option $a" >&2; exit 2 ;;
    esac
done
scripts/setup.sh "$build" "${args[@]}" || exit 1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# Check forks each test by default; without a fork the sanitizers see the whole process
[ "$build" = build-asan ] && export CK_FORK=no
out=$(mktemp)
meson test -C "$build" --print-errorlogs "${verbose[@]}" 2>&1 | tee "$out"
log="$build/meson-logs/testlog.txt"
ok=$(grep -c "^gradcheck .* ok " "$log" 2>/dev/null)
bad=$(grep -c "^gradcheck .* FAILED" "$log" 2>/dev/null)
echo "gradcheck cases: $ok ok, $bad failed (every line is in $log)"
passed=$(grep -cE "^ *[0-9]+/[0-9]+ +[^ ]+ +OK " "$out")
failed=$(grep -cE "^ *[0-9]+/[0-9]+ +[^ ]+ +(FAIL|TIMEOUT|ERROR|UNEXPECTEDPASS) " "$out")
skipped=$(grep -cE "^ *[0-9]+/[0-9]+ +[^ ]+ +(SKIP|EXPECTEDFAIL) " "$out")
rm -f "$out"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
