#!/usr/bin/env bash
# valgrind_example.sh — the worked example must be valgrind clean: no
# invalid reads or writes, no use of uninitialised memory, no definite or
# indirect leaks. Sanitizer builds can't run under valgrind, so this builds
# the example without sanitizers in its own tree, then runs it on a fresh
# database of the test server (SKALD_TEST_DATABASE_URL).
# Usage: valgrind_example.sh SOURCE_DIR WORK_DIR
set -euo pipefail
src=$1
work=$2
: "${SKALD_TEST_DATABASE_URL:?run the suite with scripts/test.sh}"
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }

cmake -S "$src" -B "$work" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSKALD_TESTS=OFF >/dev/null
cmake --build "$work" -j2 --target trip_booking >/dev/null

db="skald_valgrind_$$"
psql "$SKALD_TEST_DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
trap 'psql "$SKALD_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
url="${SKALD_TEST_DATABASE_URL%/*}/$db"

SKALD_DATABASE_URL="$url" valgrind --error-exitcode=99 --leak-check=full \
  --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
  --track-origins=yes --quiet "$work/trip_booking"
echo "valgrind: the example ran clean"
