#!/usr/bin/env bash
# test.sh — THE test command: bootstrap, build with -Werror + ASan + UBSan
# (Debug) into build-test, start a throwaway PostgreSQL for the integration
# tests, run ctest (extra arguments pass through: scripts/test.sh -L unit),
# stop PostgreSQL and remove its directory whatever happens.
#
# Then, for the whole suite, scripts/fuzz.sh runs each fuzz target briefly
# (SKALD_FUZZ_SECONDS, default 60; 0 skips it).
#
# The last lines are "N passed, N failed" (the fuzz run counted as one
# test) and then ctest's own summary ("100% tests passed, 0 tests failed
# out of N"); the exit code is ctest's, or 1 if only fuzzing failed.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
build="$root/build-test"

scripts/bootstrap.sh

jobs=$(nproc 2>/dev/null || echo 2)
cfg_log=$(mktemp)
if ! cmake -S "$root" -B "$build" -DSKALD_WERROR=ON -DSKALD_ASAN=ON \
    -DSKALD_UBSAN=ON -DCMAKE_BUILD_TYPE=Debug >"$cfg_log" 2>&1; then
  cat "$cfg_log"
  rm -f "$cfg_log"
  echo "test.sh: cmake configure failed" >&2
  exit 1
fi
rm -f "$cfg_log"
cmake --build "$build" -j"$jobs"

# ---- a throwaway PostgreSQL -------------------------------------------------
bindir=$(pg_config --bindir 2>/dev/null || true)
if [ ! -x "$bindir/initdb" ]; then
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
fi
if [ ! -x "$bindir/initdb" ]; then
  echo "test.sh: no PostgreSQL server binaries (initdb) found" >&2
  exit 1
fi

pgtmp=$(mktemp -d /tmp/skald-test-pg.XXXXXX)
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  # PostgreSQL refuses to run as root.
  chown postgres: "$pgtmp"
  as_pg=(runuser -u postgres --)
fi

cleanup() {
  if [ -f "$pgtmp/data/postmaster.pid" ]; then
    "${as_pg[@]}" "$bindir/pg_ctl" -D "$pgtmp/data" -m fast -w -t 30 stop \
      >/dev/null 2>&1 ||
      "${as_pg[@]}" "$bindir/pg_ctl" -D "$pgtmp/data" -m immediate -w stop \
        >/dev/null 2>&1 || true
  fi
  rm -rf "$pgtmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"${as_pg[@]}" "$bindir/initdb" -D "$pgtmp/data" -A trust -U postgres \
  -E UTF8 --locale=C >"$pgtmp/initdb.log" 2>&1 ||
  { cat "$pgtmp/initdb.log"; echo "test.sh: initdb failed" >&2; exit 1; }

# A free TCP port on 127.0.0.1, found now; retried if someone takes it first.
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
started=0
for _ in 1 2 3 4 5 6 7 8; do
  port=$((20000 + RANDOM % 40000))
  port_in_use "$port" && continue
  if "${as_pg[@]}" "$bindir/pg_ctl" -D "$pgtmp/data" -l "$pgtmp/pg.log" -w \
      -t 60 -o "-c listen_addresses=127.0.0.1 -p $port -k $pgtmp \
      -c fsync=on -c max_connections=300" start >/dev/null 2>&1; then
    started=1
    break
  fi
done
if [ $started -ne 1 ]; then
  cat "$pgtmp/pg.log" >&2 || true
  echo "test.sh: could not start PostgreSQL" >&2
  exit 1
fi

export SKALD_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$port/postgres"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# ---- the suite ----------------------------------------------------------------
ctest_log="$pgtmp/ctest.log"
set +e
(cd "$build" && ctest --output-on-failure "$@") 2>&1 | tee "$ctest_log"
rc=${PIPESTATUS[0]}
set -e

summary=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' \
  "$ctest_log" | tail -1 || true)
if [ -n "$summary" ]; then
  failed=$(sed -E 's/.* ([0-9]+) tests? failed out of.*/\1/' <<<"$summary")
  total=$(sed -E 's/.*out of ([0-9]+).*/\1/' <<<"$summary")
else
  failed=0
  total=0
  summary="0% tests passed, 0 tests failed out of 0"
  [ "$rc" -ne 0 ] && failed=1
fi

# Stop PostgreSQL now so nothing prints after the summary.
trap - EXIT INT TERM
cleanup

passed=$((total - failed))
[ "$passed" -lt 0 ] && passed=0

# ---- fuzzing (tests/fuzz, scripts/fuzz.sh) ----------------------------------
# A short libFuzzer run of each target (SKALD_FUZZ_SECONDS each, 60 by
# default; 0 skips), only for the whole suite (no ctest arguments). It
# counts as one more test in the "N passed, N failed" line, and its failure
# fails test.sh.
fuzz_seconds=${SKALD_FUZZ_SECONDS:-60}
if [ $# -eq 0 ] && [ "$fuzz_seconds" != 0 ]; then
  if scripts/fuzz.sh --seconds "$fuzz_seconds"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    [ "$rc" -eq 0 ] && rc=1
  fi
fi

echo "$passed passed, $failed failed"
echo "$summary"
exit "$rc"
