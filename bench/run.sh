#!/usr/bin/env bash
# run.sh — builds a Release bench and runs the benchmark suite.
#
#   bench/run.sh          the whole suite, each part BENCH_RUNS (3) times,
#                         medians and min–max:
#                           curve     latency (1 in flight) and throughput at
#                                     1, 16, 256 and 4096 sagas in flight
#                           recovery  10,000 sagas in flight, SIGKILL, restart
#                                     (build-bench/skald_bench_recovery)
#                           http      run starts over the API with wrk
#                                     (bench/http.sh)
#                           biglog    throughput on an empty log and with 10
#                                     million events in it (bench/biglog.sh)
#   bench/run.sh --smoke  50 sagas, 8 in flight, once; fails only if a saga
#                         did not complete (no timing is asserted)
# BENCH_PARTS picks parts (default "curve recovery http biglog").
#
# Database: SKALD_DATABASE_URL if set, else the embedded PostgreSQL in a
# fresh data directory under /tmp (stopped and removed on exit).
# Environment: BENCH_RUNS (3), BENCH_WORKERS (1024: the workers at 4096 in
# flight; the other rows set their own), BENCH_SETTLE_MS (11000),
# BENCH_EXTRA (more bench flags for every run).
# Raw results (one JSON line per run) go to bench/results/<date>.jsonl.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/build-bench"
RUNS="${BENCH_RUNS:-3}"
WORKERS="${BENCH_WORKERS:-1024}"
SETTLE="${BENCH_SETTLE_MS:-11000}"
EXTRA="${BENCH_EXTRA:-}"
PARTS="${BENCH_PARTS:-curve recovery http biglog}"
SMOKE=0
case "${1:-}" in
  --smoke) SMOKE=1 ;;
  "") ;;
  *) echo "usage: bench/run.sh [--smoke]" >&2; exit 2 ;;
esac

echo "== building $BUILD (Release, no sanitizers)" >&2
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSKALD_TESTS=OFF \
  -DSKALD_ASAN=OFF -DSKALD_UBSAN=OFF -DSKALD_TSAN=OFF >/dev/null
cmake --build "$BUILD" --target skald_bench skald_bench_recovery -j "$(nproc)" \
  >/dev/null
BENCH="$BUILD/skald_bench"

DATA=""
DB_ARGS=()
cleanup() {
  if [ -n "$DATA" ]; then
    local pgdir ctl
    ctl="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)/pg_ctl"
    for pgdir in "$DATA"/*/pg; do
      [ -f "$pgdir/postmaster.pid" ] || continue
      if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$ctl" -D "$pgdir" stop -m fast >/dev/null 2>&1 || true
      else
        "$ctl" -D "$pgdir" stop -m fast >/dev/null 2>&1 || true
      fi
    done
    rm -rf "$DATA"
  fi
}
trap cleanup EXIT
if [ -n "${SKALD_DATABASE_URL:-}" ]; then
  echo "== database: SKALD_DATABASE_URL" >&2
else
  DATA="$(mktemp -d /tmp/skald-bench.XXXXXX)"
  chmod 755 "$DATA" # the embedded server runs as "postgres" when we are root
  DB_ARGS=(--data-dir "$DATA/db")
  echo "== database: embedded PostgreSQL in $DATA/db" >&2
fi

if [ "$SMOKE" = 1 ]; then
  # shellcheck disable=SC2086
  out="$("$BENCH" "${DB_ARGS[@]}" --sagas 50 --concurrency 8 --workers 4 \
    --stats-settle-ms 0 --json $EXTRA)"
  echo "$out"
  case "$out" in
    *'"completed":50,"not_completed":0'*) echo "smoke: ok" ;;
    *) echo "smoke: not every saga completed" >&2; exit 1 ;;
  esac
  exit 0
fi

mkdir -p "$ROOT/bench/results"
RESULTS="$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ).jsonl"
part() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# name | bench flags (N chosen so one run takes seconds, not minutes; above
# 256 in flight new sagas keep arriving while others finish: N = 3 C)
CONFIGS=(
  "latency  c=1|--concurrency 1 --sagas 300 --warmup 30 --workers 16"
  "throughput c=1|--concurrency 1 --sagas 300 --workers 16"
  "throughput c=16|--concurrency 16 --sagas 4000 --workers 16"
  "throughput c=256|--concurrency 256 --sagas 20000 --workers 256"
  "throughput c=512|--concurrency 512 --sagas 30000 --workers 512"
  "throughput c=1024|--concurrency 1024 --sagas 30000 --workers 1024"
  "throughput c=4096|--concurrency 4096 --sagas 12288 --workers $WORKERS"
)
part curve || CONFIGS=()
for cfg in "${CONFIGS[@]}"; do
  name="${cfg%%|*}"
  flags="${cfg#*|}"
  for i in $(seq 1 "$RUNS"); do
    cmd="$BENCH ${DB_ARGS[*]} $flags --stats-settle-ms $SETTLE --json $EXTRA"
    echo "== $name run $i: $cmd" >&2
    # shellcheck disable=SC2086
    line="$($cmd)" || { echo "run failed: $cmd" >&2; exit 1; }
    echo "$line" >&2
    printf '%s\t%s\n' "$name" "$line" >>"$RESULTS"
  done
done

# Median and min–max per configuration, from the JSON lines.
[ "${#CONFIGS[@]}" -gt 0 ] && awk -F'\t' '
function field(s, k,   m) {
  if (match(s, "\"" k "\":[-0-9.]+")) {
    m = substr(s, RSTART, RLENGTH); sub(/.*:/, "", m); return m + 0
  }
  return 0
}
function stat(name, k, fmt,   n, i, j, t, v) {
  n = cnt[name]
  for (i = 1; i <= n; i++) v[i] = field(line[name, i], k)
  for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
    if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
  if (n % 2) med = v[(n + 1) / 2]; else med = (v[n / 2] + v[n / 2 + 1]) / 2
  return sprintf(fmt " (" fmt "–" fmt ")", med, v[1], v[n])
}
{ if (!($1 in cnt)) order[++norder] = $1; line[$1, ++cnt[$1]] = $2 }
END {
  printf "%-18s %-22s %-22s %-22s %-24s %-24s %-22s %-22s\n", "configuration",
    "sagas/s", "steps/s", "p50 ms", "p99 ms", "max ms", "commits/step",
    "group commits/step"
  for (o = 1; o <= norder; o++) {
    n = order[o]
    printf "%-18s %-22s %-22s %-22s %-24s %-24s %-22s %-22s\n", n,
      stat(n, "sagas_per_s", "%.1f"), stat(n, "steps_per_s", "%.0f"),
      stat(n, "p50", "%.1f"), stat(n, "p99", "%.1f"), stat(n, "max", "%.1f"),
      stat(n, "commits_per_step", "%.3f"),
      stat(n, "group_commits_per_step", "%.3f")
  }
  printf "(median (min–max) over %d runs each; raw: %s)\n", cnt[order[1]], FILENAME
}' "$RESULTS"

if part recovery; then
  REC="$ROOT/bench/results/recovery-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
  for i in $(seq 1 "$RUNS"); do
    rec_db=("${DB_ARGS[@]}")
    [ -n "$DATA" ] && rec_db=(--data-dir "$DATA/recovery")
    cmd="$BUILD/skald_bench_recovery ${rec_db[*]} --sagas 10000 --workers 256 --step-sleep-ms 1000 --json"
    echo "== recovery run $i: $cmd" >&2
    # shellcheck disable=SC2086
    line="$($cmd)" || { echo "run failed: $cmd" >&2; exit 1; }
    echo "$line" >&2
    echo "$line" >>"$REC"
  done
  awk '
function field(s, k,   m) {
  if (match(s, "\"" k "\":[-0-9.]+")) {
    m = substr(s, RSTART, RLENGTH); sub(/.*:/, "", m); return m + 0
  }
  return 0
}
function stat(k, fmt,   i, j, t, v) {
  for (i = 1; i <= n; i++) v[i] = field(l[i], k)
  for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
    if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
  if (n % 2) med = v[(n + 1) / 2]; else med = (v[n / 2] + v[n / 2 + 1]) / 2
  return sprintf(fmt " (" fmt "–" fmt ")", med, v[1], v[n])
}
{ l[++n] = $0 }
END {
  print "recovery, 10,000 sagas in flight, SIGKILL and restart: median (min–max)"
  print "  in flight at the kill       " stat("in_flight_at_kill", "%.0f")
  print "  restart -> first step ms    " stat("first_resumed_step_ms", "%.0f")
  print "  restart -> last saga ms     " stat("last_completed_ms", "%.0f")
  print "  drain steps/s               " stat("drain_steps_per_s", "%.0f")
}' "$REC"
fi

if part http; then
  BENCH_RUNS="$RUNS" "$ROOT/bench/http.sh"
fi

if part biglog; then
  BENCH_RUNS="$RUNS" "$ROOT/bench/biglog.sh"
fi
