#!/usr/bin/env bash
# run.sh — builds a Release bench and runs the benchmark suite.
#
#   bench/run.sh          latency (1 in flight) and throughput at 1, 16, 256
#                         and 4096 sagas in flight, each BENCH_RUNS (3) times;
#                         prints medians and min–max
#   bench/run.sh --smoke  50 sagas, 8 in flight, once; fails only if a saga
#                         did not complete (no timing is asserted)
#
# Database: SKALD_DATABASE_URL if set, else the embedded PostgreSQL in a
# fresh data directory under /tmp (stopped and removed on exit).
# Environment: BENCH_RUNS (3), BENCH_WORKERS (16), BENCH_SETTLE_MS (11000),
# BENCH_EXTRA (more bench flags for every run).
# Raw results (one JSON line per run) go to bench/results/<date>.jsonl.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/build-bench"
RUNS="${BENCH_RUNS:-3}"
WORKERS="${BENCH_WORKERS:-16}"
SETTLE="${BENCH_SETTLE_MS:-11000}"
EXTRA="${BENCH_EXTRA:-}"
SMOKE=0
case "${1:-}" in
  --smoke) SMOKE=1 ;;
  "") ;;
  *) echo "usage: bench/run.sh [--smoke]" >&2; exit 2 ;;
esac

echo "== building $BUILD (Release, no sanitizers)" >&2
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSKALD_TESTS=OFF \
  -DSKALD_ASAN=OFF -DSKALD_UBSAN=OFF -DSKALD_TSAN=OFF >/dev/null
cmake --build "$BUILD" --target skald_bench -j "$(nproc)" >/dev/null
BENCH="$BUILD/skald_bench"

DATA=""
DB_ARGS=()
cleanup() {
  if [ -n "$DATA" ]; then
    local pgdir="$DATA/db/pg"
    if [ -f "$pgdir/postmaster.pid" ]; then
      local ctl
      ctl="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)/pg_ctl"
      if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$ctl" -D "$pgdir" stop -m fast >/dev/null 2>&1 || true
      else
        "$ctl" -D "$pgdir" stop -m fast >/dev/null 2>&1 || true
      fi
    fi
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
# name | bench flags (N chosen so one run takes seconds, not minutes, where
# the engine allows)
CONFIGS=(
  "latency  c=1|--concurrency 1 --sagas 200 --warmup 20"
  "throughput c=1|--concurrency 1 --sagas 200"
  "throughput c=16|--concurrency 16 --sagas 2000"
  "throughput c=256|--concurrency 256 --sagas 2000"
  "throughput c=4096|--concurrency 4096 --sagas 4096"
)
for cfg in "${CONFIGS[@]}"; do
  name="${cfg%%|*}"
  flags="${cfg#*|}"
  for i in $(seq 1 "$RUNS"); do
    cmd="$BENCH ${DB_ARGS[*]} $flags --workers $WORKERS --stats-settle-ms $SETTLE --json $EXTRA"
    echo "== $name run $i: $cmd" >&2
    # shellcheck disable=SC2086
    line="$($cmd)" || { echo "run failed: $cmd" >&2; exit 1; }
    echo "$line" >&2
    printf '%s\t%s\n' "$name" "$line" >>"$RESULTS"
  done
done

# Median and min–max per configuration, from the JSON lines.
awk -F'\t' '
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
