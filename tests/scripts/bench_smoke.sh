#!/usr/bin/env bash
# bench_smoke.sh — the benchmark's CI smoke run: a few sagas through the
# real bench program on a fresh database of the test server. It asserts
# only that every saga completed (the bench exits non-zero otherwise);
# timings are reported, never asserted.
# Usage: bench_smoke.sh BENCH_BINARY
set -euo pipefail
bench=$1
: "${SKALD_TEST_DATABASE_URL:?run the suite with scripts/test.sh}"
db="skald_bench_smoke_$$"
psql "$SKALD_TEST_DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
trap 'psql "$SKALD_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
"$bench" --sagas 50 --steps 5 --concurrency 8 --workers 4 \
  --stats-settle-ms 0 --timeout 120 \
  --database-url "${SKALD_TEST_DATABASE_URL%/*}/$db"
