#!/usr/bin/env bash
# http.sh — run starts per second over the HTTP API, with p50 / p99 latency
# and a check that nothing was lost.
#
#   bench/http.sh
#
# Builds `skald` (Release, build-bench/), starts the daemon on a free
# loopback port with the rate limit off, and for each of BENCH_RUNS runs:
#   1. registers a fresh workflow bench_http_<stamp>_r<i> (BENCH_STEPS durable
#      `sleep` steps of BENCH_SLEEP_MS ms: the only step kind the daemon runs
#      by itself, with no remote worker and no service to call);
#   2. runs wrk with bench/http_start.lua, which POSTs
#      /v1/workflows/<name>/runs for BENCH_DURATION s on BENCH_CONNECTIONS
#      connections, then lets every request in flight be answered (so wrk's
#      hard stop abandons none) and records the saga_id of every 2xx;
#   3. checks that the saga ids answered with 2xx are exactly the sagas of
#      that workflow in the database (none lost, none extra), then waits for
#      them to drain and checks that every one reached `completed`.
# Prints per run and a summary (median and min–max); one JSON line per run
# goes to bench/results/http-<date>.jsonl. Latency is per request, from
# writing it to reading the answer, over all answers (non-2xx too); wrk's
# own distribution is "corrected" for coordinated omission (synthetic
# samples added for slow answers), so the script reports it and, next to
# it, the distribution as measured (the correction undone in
# http_start.lua). Exits 1 if a start was lost, a
# saga did not complete, or a run failed; 2 on bad settings.
#
# Database: SKALD_DATABASE_URL (or SKALD_DATABASE_URL_FILE) if set, else the
# embedded PostgreSQL in a fresh data directory under /tmp (stopped and
# removed on exit). The check reads the `sagas` table with psql.
# Auth: with no API key in the database (the embedded default) none is
# needed on loopback. If the database has keys, SKALD_API_KEY is used, or
# else a temporary key is created with skaldctl and revoked at the end.
#
# Environment (defaults):
#   BENCH_RUNS (3)            runs
#   BENCH_THREADS (2)         wrk -t
#   BENCH_CONNECTIONS (64)    wrk -c (closed loop: one request in flight each)
#   BENCH_DURATION (10)       seconds of starts per run
#   BENCH_GRACE (15)          seconds wrk waits at most for the last answers
#   BENCH_TIMEOUT (10)        wrk --timeout, seconds
#   BENCH_STEPS (1)           sleep steps per saga
#   BENCH_SLEEP_MS (5)        ms per sleep step
#   BENCH_IDEMPOTENCY (0)     1: a unique idempotency_key on every start
#   BENCH_RATE_LIMIT (0)      the daemon's --rate-limit (0 = off)
#   BENCH_DRAIN_S (300)       seconds to wait for a run's sagas to finish
#   BENCH_KEEP (0)            1: keep the data directory and daemon log
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/build-bench"
LUA="$ROOT/bench/http_start.lua"
RUNS="${BENCH_RUNS:-3}"
THREADS="${BENCH_THREADS:-2}"
CONNS="${BENCH_CONNECTIONS:-64}"
DURATION="${BENCH_DURATION:-10}"
GRACE="${BENCH_GRACE:-15}"
TIMEOUT="${BENCH_TIMEOUT:-10}"
STEPS="${BENCH_STEPS:-1}"
SLEEP_MS="${BENCH_SLEEP_MS:-5}"
IDEM="${BENCH_IDEMPOTENCY:-0}"
RATE="${BENCH_RATE_LIMIT:-0}"
DRAIN="${BENCH_DRAIN_S:-300}"
KEEP="${BENCH_KEEP:-0}"

die() { echo "http.sh: $*" >&2; exit 1; }
for v in RUNS THREADS CONNS DURATION GRACE TIMEOUT STEPS SLEEP_MS IDEM RATE \
  DRAIN KEEP; do
  case "${!v}" in
    '' | *[!0-9]*) echo "http.sh: $v must be a whole number, not '${!v}'" >&2
      exit 2 ;;
  esac
done
if [ "$RUNS" -lt 1 ] || [ "$THREADS" -lt 1 ] || [ "$CONNS" -lt "$THREADS" ] ||
  [ "$DURATION" -lt 1 ] || [ "$STEPS" -lt 1 ] || [ "$TIMEOUT" -lt 1 ]; then
  echo "http.sh: need BENCH_RUNS, BENCH_THREADS, BENCH_DURATION, BENCH_STEPS," \
    "BENCH_TIMEOUT >= 1 and BENCH_CONNECTIONS >= BENCH_THREADS" >&2
  exit 2
fi

# ---- tools -------------------------------------------------------------------

need_pkg() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    die "'$1' is missing; install it with: sudo apt-get install -y $2"
  fi
  echo "== installing $2 (apt-get)" >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >/dev/null; then
    if ! { apt-get update >/dev/null &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >/dev/null; }; then
      die "could not install $2 with apt-get"
    fi
  fi
  command -v "$1" >/dev/null 2>&1 || die "'$1' still missing after installing $2"
}
need_pkg wrk wrk
need_pkg psql postgresql-client
need_pkg curl curl

echo "== building $BUILD (Release, no sanitizers)" >&2
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSKALD_TESTS=OFF \
  -DSKALD_ASAN=OFF -DSKALD_UBSAN=OFF -DSKALD_TSAN=OFF >/dev/null
if ! blog="$(cmake --build "$BUILD" --target skald skaldctl -j "$(nproc)" 2>&1)"
then
  printf '%s\n' "$blog" | tail -30 >&2
  die "build failed"
fi
SKALD="$BUILD/skald"
SKALDCTL="$BUILD/skaldctl"

# ---- daemon, database, cleanup -------------------------------------------------

WORK="$(mktemp -d /tmp/skald-http.XXXXXX)"
chmod 755 "$WORK" # the embedded server runs as "postgres" when we are root
LOG="$WORK/skald.log"
DAEMON_PID=""
WRK_PID=""
KEY_ID=""
DB_URL=""
DAEMON_RC=""

pg_stop_embedded() {
  local pgdir="$WORK/db/pg" ctl owner
  [ -f "$pgdir/postmaster.pid" ] || return 0
  ctl="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -1)/pg_ctl"
  owner="$(stat -c %U "$pgdir")"
  echo "== stopping the embedded PostgreSQL left running" >&2
  if [ "$(id -u)" = 0 ] && [ "$owner" != root ]; then
    runuser -u "$owner" -- "$ctl" -D "$pgdir" stop -m fast >/dev/null 2>&1 || true
  else
    "$ctl" -D "$pgdir" stop -m fast >/dev/null 2>&1 || true
  fi
}

stop_daemon() {
  [ -n "$DAEMON_PID" ] || return 0
  local pid="$DAEMON_PID" i
  DAEMON_PID=""
  if kill -TERM "$pid" 2>/dev/null; then
    for i in $(seq 1 600); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "http.sh: skald did not stop within 60 s of SIGTERM; SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  DAEMON_RC=0
  wait "$pid" 2>/dev/null || DAEMON_RC=$?
}

cleanup() {
  local rc=$?
  set +e
  if [ -n "$WRK_PID" ]; then
    kill -TERM "$WRK_PID" 2>/dev/null
    wait "$WRK_PID" 2>/dev/null
  fi
  if [ -n "$KEY_ID" ] && [ -n "$DB_URL" ]; then
    "$SKALDCTL" --database-url "$DB_URL" keys revoke "$KEY_ID" >/dev/null 2>&1 ||
      echo "http.sh: could not revoke the temporary API key $KEY_ID" >&2
  fi
  stop_daemon
  pg_stop_embedded
  if [ "$KEEP" = 1 ]; then
    echo "== kept $WORK (daemon log: $LOG)" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

DAEMON_ARGS=(--listen 127.0.0.1:0 --rate-limit "$RATE"
  --node-name "bench-http-$$")
if [ -n "${SKALD_DATABASE_URL:-}" ] || [ -n "${SKALD_DATABASE_URL_FILE:-}" ]; then
  DB_KIND="SKALD_DATABASE_URL"
  DB_URL="${SKALD_DATABASE_URL:-}"
  [ -n "$DB_URL" ] || DB_URL="$(cat "$SKALD_DATABASE_URL_FILE")"
  # The daemon reads SKALD_DATABASE_URL(_FILE) itself: no secret in argv.
  DAEMON_ARGS+=(--data-dir "$WORK/db")
  echo "== database: SKALD_DATABASE_URL" >&2
else
  DB_KIND="embedded"
  DAEMON_ARGS+=(--data-dir "$WORK/db")
  echo "== database: embedded PostgreSQL in $WORK/db" >&2
fi

# A value from the daemon's JSON log lines: logval MESSAGE KEY.
logval() {
  grep -F "\"$1\"" "$LOG" 2>/dev/null | head -1 |
    sed -n "s/.*\"$2\":\"\{0,1\}\([^\",}]*\).*/\1/p" || true
}

echo "== starting skald ${DAEMON_ARGS[*]}" >&2
"$SKALD" "${DAEMON_ARGS[@]}" 2>"$LOG" &
DAEMON_PID=$!
PORT=""
for _ in $(seq 1 1200); do
  PORT="$(logval "skald is listening" port)"
  [ -n "$PORT" ] && break
  if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
    tail -20 "$LOG" >&2
    die "skald exited during start-up"
  fi
  sleep 0.1
done
[ -n "$PORT" ] || { tail -20 "$LOG" >&2; die "skald did not listen within 120 s"; }
BASE="http://127.0.0.1:$PORT"
if [ "$DB_KIND" = embedded ]; then
  SOCK="$(logval "started embedded postgresql" socket_dir)"
  [ -n "$SOCK" ] || SOCK="$WORK/db/run"
  DB_URL="host=$SOCK port=5432 dbname=skald user=skald"
fi
AUTH="$(logval "skald is listening" auth)"
echo "== skald pid $DAEMON_PID listening on $BASE (auth: $AUTH)" >&2

if [ "$AUTH" = "api keys" ] && [ -z "${SKALD_API_KEY:-}" ]; then
  if [ -n "${SKALD_API_KEY_FILE:-}" ]; then
    SKALD_API_KEY="$(cat "$SKALD_API_KEY_FILE")"
  else
    if ! kj="$("$SKALDCTL" --database-url "$DB_URL" --json keys create \
      "bench-http-$(date -u +%Y%m%d%H%M%S)" 2>"$WORK/keys.err")"; then
      cat "$WORK/keys.err" >&2
      die "could not create an API key"
    fi
    KEY_ID="$(printf '%s' "$kj" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')"
    SKALD_API_KEY="$(printf '%s' "$kj" | sed -n 's/.*"key":"\([^"]*\)".*/\1/p')"
    echo "== the database has API keys: created temporary key $KEY_ID" >&2
  fi
fi
export SKALD_API_KEY="${SKALD_API_KEY:-}"
CURL_AUTH=()
[ -n "$SKALD_API_KEY" ] && CURL_AUTH=(-H "Authorization: Bearer $SKALD_API_KEY")

ready="$(curl -s -o /dev/null -w '%{http_code}' "$BASE/health/ready")" || true
[ "$ready" = 200 ] || die "GET /health/ready answered '$ready'"

sql() { psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$DB_URL" "$@"; }
sql -c 'SELECT 1' >/dev/null || die "psql cannot reach the database"

# ---- runs --------------------------------------------------------------------

mkdir -p "$ROOT/bench/results"
DATE="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS="$ROOT/bench/results/http-$DATE.jsonl"
STAMP="$(date -u +%Y%m%dt%H%M%S)"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$ROOT" status --porcelain -- engine sdk tools 2>/dev/null)" ]; then
  COMMIT="$COMMIT+dirty"
fi
STEPS_JSON=""
for s in $(seq 1 "$STEPS"); do
  STEPS_JSON="$STEPS_JSON${STEPS_JSON:+,}{\"name\":\"sleep_$s\",\"sleep\":{\"ms\":$SLEEP_MS}}"
done
# A JSON number field of a line: jnum LINE KEY.
jnum() { printf '%s' "$1" | sed -n "s/.*\"$2\":\(-\{0,1\}[0-9.]*\).*/\1/p"; }
jstrf() { # a JSON string field, escapes of quotes and backslashes undone
  printf '%s' "$1" | sed -n -e 's/.*"'"$2"'":"\(\([^"\]\|\\.\)*\)".*/\1/;T' \
    -e 's/\\\(["\]\)/\1/g;p'
}

echo "== $RUNS run(s): wrk -t$THREADS -c$CONNS, ${DURATION}s of starts each" \
  "(+ up to ${GRACE}s for the last answers), workflow: $STEPS sleep step(s)" \
  "of ${SLEEP_MS} ms, idempotency keys: $([ "$IDEM" = 1 ] && echo yes || echo no)," \
  "rate limit: $RATE, database: $DB_KIND, commit $COMMIT"
FAILED=0
for i in $(seq 1 "$RUNS"); do
  WF="bench_http_${STAMP}_r$i"
  spec="{\"name\":\"$WF\",\"version\":1,\"description\":\"bench/http.sh:"
  spec="$spec $STEPS sleep step(s) of $SLEEP_MS ms\",\"steps\":[$STEPS_JSON]}"
  code="$(curl -s -o "$WORK/register.out" -w '%{http_code}' -X POST \
    -H 'Content-Type: application/json' "${CURL_AUTH[@]}" \
    --data "$spec" "$BASE/v1/workflows")" || true
  if [ "$code" != 201 ]; then
    cat "$WORK/register.out" >&2 2>/dev/null || true
    die "registering $WF answered '$code'"
  fi

  IDS="$WORK/ids-r$i"
  mkdir -p "$IDS"
  KEYP=""
  [ "$IDEM" = 1 ] && KEYP="${STAMP}-r$i"
  load="$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "== run $i: wrk -t$THREADS -c$CONNS -d$((DURATION + GRACE))s" \
    "--timeout ${TIMEOUT}s --latency -s bench/http_start.lua $BASE/v1/workflows/$WF/runs" \
    "(starts for ${DURATION}s; load average $load)" >&2
  t_start="$(date +%s.%N)"
  BENCH_LUA_DURATION_MS=$((DURATION * 1000)) BENCH_LUA_IDS_DIR="$IDS" \
    BENCH_LUA_THREADS="$THREADS" BENCH_LUA_CONNECTIONS="$CONNS" \
    BENCH_LUA_KEY_PREFIX="$KEYP" \
    wrk -t"$THREADS" -c"$CONNS" -d"$((DURATION + GRACE))s" \
    --timeout "${TIMEOUT}s" --latency -s "$LUA" \
    "$BASE/v1/workflows/$WF/runs" >"$WORK/wrk-r$i.out" 2>&1 &
  WRK_PID=$!
  wrc=0
  wait "$WRK_PID" || wrc=$?
  WRK_PID=""
  sed -e '/^HTTPBENCH /d' -e 's/^/   | /' "$WORK/wrk-r$i.out" >&2
  line="$(sed -n 's/^HTTPBENCH //p' "$WORK/wrk-r$i.out" | tail -1)"
  if [ "$wrc" != 0 ] || [ -z "$line" ]; then
    echo "run $i: wrk failed (exit $wrc, no summary line)" >&2
    FAILED=1
    continue
  fi
  kill -0 "$DAEMON_PID" 2>/dev/null || { tail -20 "$LOG" >&2; die "skald died during run $i"; }

  # Nothing lost: the 2xx saga ids == the sagas of this workflow.
  { cat "$IDS"/ids.* 2>/dev/null || true; } | sort >"$WORK/acked"
  sort -u "$WORK/acked" >"$WORK/acked.u"
  sql -c "SELECT id FROM sagas WHERE workflow = '$WF'" |
    sort >"$WORK/db_ids" || die "could not read the sagas of $WF"
  acked_n=$(wc -l <"$WORK/acked")
  acked_u=$(wc -l <"$WORK/acked.u")
  db_n=$(wc -l <"$WORK/db_ids")
  lost=$(comm -23 "$WORK/acked.u" "$WORK/db_ids" | wc -l)
  extra=$(comm -13 "$WORK/acked.u" "$WORK/db_ids" | wc -l)
  ok201=$(jnum "$line" ok_201)
  ex200=$(jnum "$line" existing_200)
  unanswered=$(jnum "$line" unanswered)
  noid=$(jnum "$line" ok_without_id)

  # Wait for the drain: nothing left running or compensating.
  t_wrk_end="$(date +%s.%N)"
  pending=-1
  while :; do
    pending="$(sql -c "SELECT count(*) FROM sagas WHERE workflow = '$WF'
      AND status IN ('running', 'compensating')")"
    [ "$pending" = 0 ] && break
    if awk -v a="$(date +%s.%N)" -v b="$t_wrk_end" -v d="$DRAIN" \
      'BEGIN { exit !(a - b > d) }'; then
      break
    fi
    sleep 0.2
  done
  t_drained="$(date +%s.%N)"
  drain_s="$(awk -v a="$t_drained" -v b="$t_wrk_end" 'BEGIN { printf "%.1f", a - b }')"
  total_s="$(awk -v a="$t_drained" -v b="$t_start" 'BEGIN { printf "%.1f", a - b }')"
  statuses="$(sql -F '=' -c "SELECT status, count(*) FROM sagas
    WHERE workflow = '$WF' GROUP BY 1 ORDER BY 1" | paste -sd' ' -)"
  completed="$(sql -c "SELECT count(*) FROM sagas WHERE
    workflow = '$WF' AND status = 'completed'")"
  not_completed=$((db_n - completed))
  warn_n=$(grep -c '"level":"warning"' "$LOG" || true)
  err_n=$(grep -c '"level":"error"' "$LOG" || true)

  verdict="ok"
  problems=()
  [ "$lost" = 0 ] || problems+=("$lost answered 2xx but not in the database (LOST)")
  [ "$acked_n" = "$acked_u" ] || problems+=("$((acked_n - acked_u)) saga ids answered twice")
  [ "$noid" = 0 ] || problems+=("$noid 2xx answers without a saga_id")
  [ "$acked_n" = "$((ok201 + ex200 - noid))" ] ||
    problems+=("ids recorded ($acked_n) != 2xx answers ($((ok201 + ex200)))")
  notes=()
  if [ "$extra" != 0 ]; then
    # A request whose answer never came back (a socket error, or wrk's hard
    # stop at -d) may still have started its saga: not lost, but counted.
    if [ "$extra" -le "$unanswered" ]; then
      notes+=("$extra sagas in the database got no answer (requests left unanswered: $unanswered; not lost, but 2xx count != sagas)")
    else
      problems+=("$extra sagas in the database that no 2xx answered ($unanswered requests unanswered)")
    fi
  fi
  [ "$not_completed" = 0 ] || problems+=("$not_completed of $db_n sagas not completed after ${drain_s}s ($statuses)")
  [ "$db_n" -gt 0 ] || problems+=("no saga was started")
  raw_count=$(jnum "$line" raw_count)
  [ "$raw_count" = "$(jnum "$line" wrk_requests)" ] ||
    echo "http.sh: warning: run $i: undoing wrk's latency correction gave" \
      "$raw_count samples for $(jnum "$line" wrk_requests) requests" >&2
  if [ "${#problems[@]}" -gt 0 ]; then
    verdict="FAIL"
    FAILED=1
  fi

  out="${line%\}},\"run\":$i,\"workflow\":\"$WF\",\"date\":\"$DATE\""
  out="$out,\"commit\":\"$COMMIT\",\"database\":\"$DB_KIND\",\"connections\":$CONNS"
  out="$out,\"duration_s\":$DURATION,\"steps\":$STEPS,\"sleep_ms\":$SLEEP_MS"
  out="$out,\"idempotency_keys\":$([ "$IDEM" = 1 ] && echo true || echo false)"
  out="$out,\"rate_limit\":$RATE,\"loadavg\":\"$load\",\"acked_ids\":$acked_n"
  out="$out,\"db_sagas\":$db_n,\"lost\":$lost,\"extra\":$extra"
  out="$out,\"completed\":$completed,\"not_completed\":$not_completed"
  out="$out,\"drain_s\":$drain_s,\"start_to_drained_s\":$total_s"
  out="$out,\"statuses\":\"$statuses\",\"daemon_log_warnings\":$warn_n"
  out="$out,\"daemon_log_errors\":$err_n,\"verdict\":\"$verdict\"}"
  printf '%s\n' "$out" >>"$RESULTS"

  printf 'run %d: %s starts/s (%s x 201 in %s s); latency (wrk) p50 %s ms, p99 %s ms, max %s ms' \
    "$i" "$(jnum "$line" starts_per_s)" "$ok201" "$(jnum "$line" window_s)" \
    "$(jnum "$line" p50_ms)" "$(jnum "$line" p99_ms)" "$(jnum "$line" max_ms)"
  r50="$(jnum "$line" raw_p50_ms)"
  r99="$(jnum "$line" raw_p99_ms)"
  printf ' (as measured, without wrk'"'"'s correction: p50 %s ms, p99 %s ms)\n' \
    "${r50:-n/a}" "${r99:-n/a}"
  printf '       non-2xx %s (429: %s, other 4xx: %s, 5xx: %s); socket errors %s' \
    "$(jnum "$line" non2xx)" "$(jnum "$line" status_429)" \
    "$(jnum "$line" status_4xx)" "$(jnum "$line" status_5xx)" \
    "$(jnum "$line" socket_errors)"
  printf ' (connect %s, read %s, write %s, timeout %s)\n' \
    "$(jnum "$line" err_connect)" "$(jnum "$line" err_read)" \
    "$(jnum "$line" err_write)" "$(jnum "$line" err_timeout)"
  printf '       nothing lost: %s answered 2xx, %s sagas of %s in the database, lost %s, extra %s;' \
    "$acked_n" "$db_n" "$WF" "$lost" "$extra"
  printf ' %s/%s completed (drained %s s after wrk; %s); daemon log so far: %s warnings, %s errors -> %s\n' \
    "$completed" "$db_n" "$drain_s" "$statuses" "$warn_n" "$err_n" "$verdict"
  sample="$(jstrf "$line" first_non2xx)"
  [ -z "$sample" ] || echo "       first non-2xx answer: $sample"
  for p in "${notes[@]}"; do echo "       note: $p"; done
  for p in "${problems[@]}"; do echo "       problem: $p"; done
done

# ---- summary -------------------------------------------------------------------

if [ -s "$RESULTS" ]; then
  awk '
  function field(s, k,   m) {
    if (match(s, "\"" k "\":[-0-9.]+")) {
      m = substr(s, RSTART, RLENGTH); sub(/.*:/, "", m); return m + 0
    }
    return 0
  }
  function stat(k, fmt,   i, j, t, v, med) {
    for (i = 1; i <= n; i++) v[i] = field(line[i], k)
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
      if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    if (n % 2) med = v[(n + 1) / 2]; else med = (v[n / 2] + v[n / 2 + 1]) / 2
    return sprintf(fmt " (" fmt "–" fmt ")", med, v[1], v[n])
  }
  function sum(k,   i, s) { for (i = 1; i <= n; i++) s += field(line[i], k); return s }
  { line[++n] = $0 }
  END {
    printf "\nsummary over %d run(s), median (min–max):\n", n
    printf "  starts/s (201)       %s\n", stat("starts_per_s", "%.1f")
    printf "  latency p50 ms       %s\n", stat("p50_ms", "%.2f")
    printf "  latency p99 ms       %s\n", stat("p99_ms", "%.2f")
    printf "  latency max ms       %s\n", stat("max_ms", "%.2f")
    printf "  raw p50 ms           %s   (as measured: wrk'"'"'s CO correction undone)\n", stat("raw_p50_ms", "%.2f")
    printf "  raw p99 ms           %s\n", stat("raw_p99_ms", "%.2f")
    printf "  non-2xx              %s\n", stat("non2xx", "%d")
    printf "  socket errors        %s\n", stat("socket_errors", "%d")
    printf "  drain after wrk, s   %s\n", stat("drain_s", "%.1f")
    printf "  total: %d started (201), %d in the database, %d lost, %d extra, %d not completed\n",
      sum("ok_201"), sum("db_sagas"), sum("lost"), sum("extra"), sum("not_completed")
    printf "  raw: %s\n", FILENAME
  }' "$RESULTS"
fi

echo "== stopping skald (SIGTERM)" >&2
stop_daemon
if [ "$DAEMON_RC" != 0 ]; then
  echo "http.sh: skald exited with status $DAEMON_RC after SIGTERM" >&2
  FAILED=1
fi
warn_n=$(grep -c '"level":"warning"' "$LOG" || true)
err_n=$(grep -c '"level":"error"' "$LOG" || true)
echo "daemon log: $warn_n warnings, $err_n errors; exit status $DAEMON_RC after SIGTERM"
if [ "$((warn_n + err_n))" -gt 0 ]; then
  grep -E '"level":"(warning|error)"' "$LOG" |
    sed 's/.*"msg":"\([^"]*\)".*/\1/' | sort | uniq -c | sort -rn | head -10 |
    sed 's/^/  /'
fi
if [ "$FAILED" != 0 ]; then
  echo "RESULT: FAIL (see the problems above)"
  exit 1
fi
echo "RESULT: ok — nothing lost, every saga completed"
