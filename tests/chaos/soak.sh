#!/usr/bin/env bash
# soak.sh — the chaos suite as a soak: every scenario repeats rounds until
# its share of the fault budget is injected (or its time cap is spent), on
# one core's worth of load (one scenario at a time, --jobs 1). Prints one
# line of figures per scenario and appends them to $SKALD_CHAOS_REPORT.
#
#   tests/chaos/soak.sh [BUILD_DIR]          # default build-test
#   SOAK_SCALE=2 tests/chaos/soak.sh         # twice the faults
#
# It needs no PostgreSQL of its own: each scenario starts private clusters.
set -uo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-test}
scale=${SOAK_SCALE:-1}
report=${SKALD_CHAOS_REPORT:-$PWD/build-chaos-soak.report}
export SKALD_CHAOS_REPORT=$report
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# binary  test  faults (per scale)  time cap in s
runs=(
  "test_chaos_nodes chaos_nodes/sigkill 550 300"
  "test_chaos_db chaos_db/terminate_backends 250 300"
  "test_chaos_db chaos_db/pg_restart 80 300"
  "test_chaos_nodes chaos_nodes/sigstop_past_lease 60 300"
  "test_chaos_db chaos_db/failover 4 300"
  "test_chaos_http chaos_http/flapping_target 80 300"
  "test_chaos_http chaos_http/load_under_faults 50 300"
)
failed=0
start=$(date +%s)
for r in "${runs[@]}"; do
  read -r bin filter faults secs <<<"$r"
  # chaos_fault_budget gives each scenario 1/7 of SKALD_CHAOS_SOAK_FAULTS.
  SKALD_CHAOS_SOAK_FAULTS=$((faults * scale * 7)) \
  SKALD_CHAOS_SOAK_SECONDS=$((secs * scale * 7)) \
    "$build/$bin" --jobs 1 --verbose=0 --filter "$filter" 2>&1 |
    grep -E '^(chaos: scenario|\[FAIL\]|\[----\].*(Assertion|violation))' ||
    true
  [ "${PIPESTATUS[0]}" -eq 0 ] || { failed=1; echo "soak: $filter FAILED"; }
done
echo "soak: $(( $(date +%s) - start )) s; report in $report"
exit $failed
