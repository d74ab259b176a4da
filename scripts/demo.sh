#!/usr/bin/env bash
# demo.sh — THE main job of the README. It installs what is missing, builds
# Skald, then:
#   1. starts the skald daemon on the embedded default (a private PostgreSQL
#      in ./.skald that skald starts and stops itself) and a small local
#      booking service (build/demo_service) that the workflow calls over HTTP;
#   2. applies sdk/examples/specs/trip_http.json with skaldctl;
#   3. starts two trips: one completes (its hotel is retried once after a
#      503), one has its card declined, so the hotel and the flight are
#      compensated, newest first;
#   4. prints each saga's timeline with skaldctl, and what the booking
#      service saw;
#   5. stops everything cleanly (SIGTERM; skald exits 0).
# It then runs the C SDK example (build/trip_booking) on the same embedded
# database, the in-process way of using Skald.
#
# Ports: SKALD_DEMO_PORT (default 7070) and 9000 for the booking service.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/bootstrap.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSKALD_TESTS=OFF \
  >/dev/null
cmake --build build -j"$(nproc 2>/dev/null || echo 2)" \
  --target skald skaldctl demo_service trip_booking >/dev/null

port=${SKALD_DEMO_PORT:-7070}
export SKALD_URL="http://127.0.0.1:$port"
logs=$(mktemp -d /tmp/skald-demo.XXXXXX)
skald_pid=""
svc_pid=""
stop_all() {
  [ -n "$skald_pid" ] && kill -TERM "$skald_pid" 2>/dev/null &&
    wait "$skald_pid" 2>/dev/null || true
  [ -n "$svc_pid" ] && kill -TERM "$svc_pid" 2>/dev/null &&
    wait "$svc_pid" 2>/dev/null || true
}
trap stop_all EXIT

echo "== starting the booking service on 127.0.0.1:9000"
build/demo_service --listen 127.0.0.1:9000 >"$logs/service.log" 2>&1 &
svc_pid=$!

echo "== starting skald on 127.0.0.1:$port (embedded PostgreSQL in ./.skald)"
build/skald --listen "127.0.0.1:$port" --data-dir "$root/.skald" \
  2>"$logs/skald.log" &
skald_pid=$!
for _ in $(seq 1 100); do
  build/skaldctl health >/dev/null 2>&1 && break
  if ! kill -0 "$skald_pid" 2>/dev/null; then
    echo "skald did not start; its log:" >&2
    cat "$logs/skald.log" >&2
    exit 1
  fi
  sleep 0.3
done
build/skaldctl health

echo
echo "== skaldctl apply sdk/examples/specs/trip_http.json"
build/skaldctl apply sdk/examples/specs/trip_http.json

stamp=$(date +%s)
# start --wait prints the saga id, then its final status; it exits 0 for
# completed and 3 for compensated, both expected here.
run_trip() {
  local out rc=0
  out=$(build/skaldctl start trip_http --key "$1-$stamp" --input "$2" \
    --wait 30) || rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then
    echo "skaldctl start failed ($rc): $out" >&2
    exit 1
  fi
  head -1 <<<"$out"
}
echo
echo "== a trip that completes (Oslo → Lisbon, card ok)"
ok_id=$(run_trip ada '{"from": "OSL", "to": "LIS", "card": "ok"}')
echo "saga $ok_id"
echo "== a trip whose payment is declined (Oslo → Rome)"
bad_id=$(run_trip bob '{"from": "OSL", "to": "ROM", "card": "declined"}')
echo "saga $bad_id"

for id in "$ok_id" "$bad_id"; do
  echo
  build/skaldctl get "$id"
  build/skaldctl timeline "$id"
done

echo
echo "== what the booking service saw (note the retried hotel and the"
echo "   compensations in reverse order)"
grep -v "listening" "$logs/service.log" || true

echo
echo "== stopping skald (SIGTERM)"
kill -TERM "$skald_pid"
wait "$skald_pid" && echo "skald exited 0"
skald_pid=""

echo
echo "== the same engine in-process, through the C SDK (build/trip_booking)"
SKALD_DATA_DIR="$root/.skald" build/trip_booking
rm -rf "$logs"
