#!/usr/bin/env bash
# fuzz.sh — builds the libFuzzer targets (tests/fuzz/fuzz_*.c) with clang,
# -fsanitize=fuzzer,address,undefined, into build-fuzz/ and runs each in
# turn for N seconds on one core (default 60):
#
#   scripts/fuzz.sh                   # every target, 60 s each
#   scripts/fuzz.sh --seconds 20      # shorter
#   scripts/fuzz.sh --seconds 900 spec  # one target, longer (by hand)
#
# Each target starts from its seed corpus (tests/fuzz/corpus/<target>, read
# only) plus what earlier runs found (build-fuzz/corpus/<target>). A crash,
# leak, timeout or broken invariant is saved under
# tests/fuzz/regressions/<target>/ (replayed from then on by
# tests/unit/test_fuzz_regressions.c) and makes the script exit 1. Prints
# executions per target and the total; the last line is the verdict.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
build="$root/build-fuzz"

seconds=60
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=${2:?--seconds needs a number}; shift 2 ;;
    --seconds=*) seconds=${1#--seconds=}; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    spec|template|http) targets+=("$1"); shift ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ ${#targets[@]} -eq 0 ] && targets=(spec template http)
case "$seconds" in ''|*[!0-9]*) echo "fuzz.sh: bad --seconds" >&2; exit 2 ;; esac

# Longest input per target: the largest seed spec is ~15 KB; HTTP inputs must
# be able to cross the 8 KiB URL and 16 KiB header limits.
max_len() {
  case "$1" in
    spec) echo 16384 ;;
    template) echo 4096 ;;
    http) echo 20480 ;;
  esac
}

scripts/bootstrap.sh --fuzz
log=$(mktemp)
if ! CC=clang cmake -S "$root" -B "$build" -DSKALD_FUZZ=ON -DSKALD_TESTS=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$log" 2>&1 ||
   ! cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)" \
    --target "${targets[@]/#/fuzz_}" >>"$log" 2>&1; then
  cat "$log"
  rm -f "$log"
  echo "fuzz.sh: build failed" >&2
  exit 1
fi
rm -f "$log"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:symbolize=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

total=0
failed=0
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t"
  regress="$root/tests/fuzz/regressions/$t"
  mkdir -p "$corpus" "$regress"
  tlog="$build/fuzz_$t.log"
  start=$(date +%s)
  set +e
  "$build/fuzz_$t" -max_total_time="$seconds" -max_len="$(max_len "$t")" \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$regress/" "$corpus" "$root/tests/fuzz/corpus/$t" \
    >"$tlog" 2>&1
  rc=$?
  set -e
  wall=$(($(date +%s) - start))
  execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' \
    "$tlog" | tail -1)
  if [ -z "$execs" ]; then # killed before the final stats: last status line
    execs=$(sed -nE 's/^#([0-9]+).*/\1/p' "$tlog" | tail -1)
  fi
  execs=${execs:-0}
  rate=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$tlog" |
    tail -1)
  units=$(find "$corpus" -type f | wc -l)
  total=$((total + execs))
  if [ $rc -eq 0 ]; then
    echo "fuzz $t: ok, $execs executions in ${wall}s (${rate:-?}/s)," \
         "corpus $units files"
  else
    failed=$((failed + 1))
    echo "fuzz $t: FAILED (exit $rc) after $execs executions in ${wall}s"
    grep -E 'invariant broken|ERROR: |SUMMARY: |Test unit written to' \
      "$tlog" | head -8 | sed 's/^/  /'
    echo "  full log: $tlog"
  fi
done

echo "fuzz: $total executions in total, $failed of ${#targets[@]} targets failed"
[ $failed -eq 0 ]
