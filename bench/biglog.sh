#!/usr/bin/env bash
# biglog.sh — throughput with a big saga log vs an empty one.
#
# Acceptance point: "throughput with 10 million events already in the log
# stays within 20 % of an empty log". One command:
#
#   bench/biglog.sh
#
#   1. builds the Release bench (as bench/run.sh does);
#   2. creates a fresh database: the embedded PostgreSQL in a new data dir
#      under /tmp (started once by a tiny bench run, then kept running by this
#      script with the engine's own settings, so every run sees the same
#      server and cache), or, with SKALD_DATABASE_URL set, a database
#      skald_biglog_<pid> created (and dropped) in that server;
#   3. runs the throughput configuration once to warm up (BIGLOG_WARMUP), then
#      BENCH_RUNS times on the (almost) empty log;
#   4. fills the log to EVENTS events by cloning the sagas those runs left
#      behind (sagas rows, every event, idempotency rows) under new v7-shaped
#      saga ids whose timestamps lie 1 h, 2 h, ... in the past, in batches of
#      about BIGLOG_BATCH_EVENTS events, one transaction each; then VACUUM
#      ANALYZE and CHECKPOINT; prints fill time, row counts and sizes;
#   5. runs the same configuration BENCH_RUNS times on the filled log and
#      prints both medians (min–max), the ratio filled/empty and whether it is
#      within 20 %; appends JSON lines to bench/results/biglog-<date>.jsonl.
#      As a control against the machine drifting (it is shared) between the
#      baseline and the filled runs, the filled runs alternate (ABBA) with
#      runs on a second, empty database in the same server, and the ratio
#      filled/control is printed too;
#   6. (BIGLOG_EXPLAIN=1, the default) prints the plans of the engine's
#      statements on the filled log: every distinct statement of a short
#      bench run, captured with auto_explain (embedded database only: it
#      reads the server log), and EXPLAIN ANALYZE of the listing, status,
#      history and retention queries of engine/store/queries.c;
#   7. stops PostgreSQL and removes the data dir (or drops the database),
#      also on failure.
#
# Exit status: 0 when the measurement was made, whatever the ratio (a ratio
# outside 20 % is printed loudly); non-zero on a real error (build, a run
# whose sagas did not all complete, SQL errors).
#
# Environment (defaults in brackets):
#   EVENTS [10000000]            events in the log before the filled runs
#   BENCH_RUNS [3]               runs per phase
#   BENCH_CONCURRENCY [256]      --concurrency
#   BENCH_WORKERS [256]          --workers
#   BENCH_SAGAS [4000]           --sagas
#   BENCH_EXTRA []               more bench flags for every run
#   BIGLOG_BATCH_EVENTS [1000000]  events per fill transaction (about)
#   BIGLOG_WARMUP [1]            unmeasured runs before the baseline and
#                                before the control's runs
#   BIGLOG_EXPLAIN [1]           0 skips step 6
#   SKALD_DATABASE_URL []        use this server instead of the embedded one
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/build-bench"
RUNS="${BENCH_RUNS:-3}"
CONC="${BENCH_CONCURRENCY:-256}"
WORKERS="${BENCH_WORKERS:-256}"
SAGAS="${BENCH_SAGAS:-4000}"
EXTRA="${BENCH_EXTRA:-}"
EVENTS="${EVENTS:-10000000}"
BATCH_EVENTS="${BIGLOG_BATCH_EVENTS:-1000000}"
EXPLAIN="${BIGLOG_EXPLAIN:-1}"
WARMUP="${BIGLOG_WARMUP:-1}"
TOLERANCE_PCT=20
CLONE_SHIFT_MS=3600000 # clone k is k hours older than its template

for v in RUNS CONC WORKERS SAGAS EVENTS BATCH_EVENTS WARMUP; do
  case "${!v}" in
    '' | *[!0-9]*) echo "biglog: $v must be a non-negative integer" >&2; exit 2 ;;
  esac
done
[ "$RUNS" -ge 1 ] || { echo "biglog: BENCH_RUNS must be at least 1" >&2; exit 2; }
[ "$BATCH_EVENTS" -ge 1 ] || BATCH_EVENTS=1

say() { printf '%s\n' "$*" >&2; }
now_s() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }'; }

# ---- build --------------------------------------------------------------------
say "== building $BUILD (Release, no sanitizers)"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSKALD_TESTS=OFF \
  -DSKALD_ASAN=OFF -DSKALD_UBSAN=OFF -DSKALD_TSAN=OFF >/dev/null
cmake --build "$BUILD" --target skald_bench -j "$(nproc)" >/dev/null

# PostgreSQL binaries: the ones the engine's pgembed.c picks (pg_config
# --bindir, else the newest /usr/lib/postgresql/<n>/bin).
BINDIR="$(pg_config --bindir 2>/dev/null || true)"
if [ ! -x "$BINDIR/pg_ctl" ] || [ ! -x "$BINDIR/initdb" ]; then
  BINDIR="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
fi
PSQL_BIN="$BINDIR/psql"
[ -x "$PSQL_BIN" ] || PSQL_BIN="$(command -v psql || true)"
[ -n "$PSQL_BIN" ] || { echo "biglog: psql not found" >&2; exit 1; }

# ---- database -----------------------------------------------------------------
TMP=""        # our temp dir: a copy of the bench binary, the embedded db
DATA=""       # embedded: the data dir's parent (= TMP)
PGDIR=""      # embedded: the cluster
PGLOG=""      # embedded: the server log
PGUSER_OS=""  # embedded: the OS user running the server
ADMIN_URL=""  # URL mode: the server's own database, for CREATE/DROP DATABASE
DBNAME=""     # URL mode: our database
DROP_DBS=()   # URL mode: databases to drop on exit
CONN=""       # libpq conninfo/URL of the database the bench uses
DB_ARGS=()

as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u "${PGUSER_OS:-postgres}" -- "$@"
  else
    "$@"
  fi
}

cleanup() {
  local rc=$?
  set +e
  if [ -n "$DATA" ]; then
    if [ -f "$PGDIR/postmaster.pid" ]; then
      as_pg "$BINDIR/pg_ctl" -D "$PGDIR" stop -m fast -w -t 120 >/dev/null 2>&1
    fi
  fi
  [ -z "$TMP" ] || rm -rf "$TMP"
  local d
  for d in "${DROP_DBS[@]}"; do
    "$PSQL_BIN" -X -q -d "$ADMIN_URL" \
      -c "DROP DATABASE IF EXISTS \"$d\" WITH (FORCE)" >/dev/null 2>&1 ||
      say "biglog: could not drop database $d; drop it by hand"
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

TMP="$(mktemp -d /tmp/skald-biglog.XXXXXX)"
chmod 755 "$TMP" # the embedded server runs as "postgres" when we are root
# Every run uses this copy: build-bench/ is shared with bench/run.sh, which
# may rebuild it (from a changed tree) while this script runs.
cp "$BUILD/skald_bench" "$TMP/skald_bench"
BENCH="$TMP/skald_bench"

# The URL of database $2 on the server of URL/conninfo $1.
url_with_db() {
  case "$1" in
    postgres://* | postgresql://*)
      printf '%s' "$1" | sed -E "s#^(postgres(ql)?://[^/?]*)(/[^?]*)?(\\?.*)?\$#\\1/$2\\4#"
      ;;
    *) printf '%s dbname=%s' "$1" "$2" ;; # a later keyword wins
  esac
}

psql_q() { "$PSQL_BIN" -X -q -v ON_ERROR_STOP=1 -d "$CONN" "$@"; }
sql() { psql_q -At -c "$1"; }

start_embedded_server() {
  # With the options the engine itself started it with (pg_ctl_start() in
  # engine/store/pgembed.c), as the server recorded them in postmaster.opts
  # (binary, then each argument in double quotes; -D is given here).
  local opts
  if [ -f "$PGDIR/postmaster.opts" ]; then
    opts="$(sed -E 's/^[^ ]+ ?//; s/"-D" "[^"]*" ?//' "$PGDIR/postmaster.opts")"
  else # as in pgembed.c at the time of writing
    opts="-c listen_addresses='' -k '$RUNDIR' -c unix_socket_permissions=0777 -p 5432 -c max_connections=200 -c shared_buffers=256MB -c autovacuum_naptime=10 -c max_wal_size=4GB -c checkpoint_timeout=15min"
  fi
  say "   server options: $opts"
  as_pg "$BINDIR/pg_ctl" -D "$PGDIR" -l "$PGLOG" -w -t 60 -o "$opts" start >/dev/null
}

INIT_FLAGS="--sagas 20 --concurrency 8 --workers 4 --stats-settle-ms 0 --json"
if [ -n "${SKALD_DATABASE_URL:-}" ]; then
  DBNAME="skald_biglog_$$"
  ADMIN_URL="$SKALD_DATABASE_URL"
  say "== database: $DBNAME in the server of SKALD_DATABASE_URL"
  "$PSQL_BIN" -X -q -v ON_ERROR_STOP=1 -d "$ADMIN_URL" -c "CREATE DATABASE \"$DBNAME\""
  DROP_DBS+=("$DBNAME")
  CONN="$(url_with_db "$SKALD_DATABASE_URL" "$DBNAME")"
  DB_ARGS=(--database-url "$CONN")
  # shellcheck disable=SC2086
  "$BENCH" "${DB_ARGS[@]}" $EXTRA $INIT_FLAGS >/dev/null
else
  DATA="$TMP"
  PGDIR="$DATA/db/pg"
  PGLOG="$DATA/db/pg.log"
  RUNDIR="$DATA/db/run" # pgembed.c: <data>/run unless that is too long
  if [ $((${#RUNDIR} + 14)) -ge 100 ]; then
    echo "biglog: socket path $RUNDIR is too long" >&2
    exit 1
  fi
  DB_ARGS=(--data-dir "$DATA/db")
  CONN="host=$RUNDIR port=5432 user=skald dbname=skald"
  say "== database: embedded PostgreSQL in $DATA/db"
  # A tiny run initialises the cluster, the schema and the workflow; the
  # engine stops the server it started when it exits ...
  # shellcheck disable=SC2086
  "$BENCH" "${DB_ARGS[@]}" $EXTRA $INIT_FLAGS >/dev/null
  PGUSER_OS="$(stat -c %U "$PGDIR")"
  # ... so start it again, the same way; every later engine reuses it.
  start_embedded_server
fi
sql "SELECT 1" >/dev/null
say "   $(sql "SHOW server_version") ; shared_buffers $(sql "SHOW shared_buffers")"

GIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  GIT="$GIT+dirty"
fi
mkdir -p "$ROOT/bench/results"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS="$ROOT/bench/results/biglog-$STAMP.jsonl"
FLAGS="--concurrency $CONC --workers $WORKERS --sagas $SAGAS --stats-settle-ms 0 --json"

count_events() { "$PSQL_BIN" -X -q -At -v ON_ERROR_STOP=1 -d "$1" -c "SELECT count(*) FROM saga_events"; }
json_field() { # $1 json line, $2 key: the first numeric value of "key":
  printf '%s' "$1" | sed -nE "s/.*\"$2\":(-?[0-9.]+).*/\\1/p" | head -1
}

# run_one NAME I CONN BENCH-DB-ARGS...: one bench run of the configuration on
# the database CONN; its steps/s are appended to the array STEPS_<NAME>
# (NAME warmup: not kept).
# shellcheck disable=SC2034 # (filled through the nameref in run_one)
STEPS_warmup=()
STEPS_empty=()
STEPS_filled=()
STEPS_control=()
run_one() {
  local name="$1" i="$2" conn="$3" line ev sps
  shift 3
  local -n out="STEPS_$name"
  ev="$(count_events "$conn")"
  local cmd="$BENCH $* $FLAGS $EXTRA"
  say "== $name ($ev events in the log) run $i: $cmd"
  # shellcheck disable=SC2086
  line="$("$BENCH" "$@" $FLAGS $EXTRA)" ||
    { echo "biglog: run failed: $cmd" >&2; exit 1; }
  say "$line"
  sps="$(json_field "$line" steps_per_s)"
  [ -n "$sps" ] || { echo "biglog: no steps_per_s in the bench output" >&2; exit 1; }
  out+=("$sps")
  printf '{"biglog":"run","phase":"%s","run":%d,"log_events":%s,"git":"%s","bench":%s}\n' \
    "$name" "$i" "$ev" "$GIT" "$line" >>"$RESULTS"
}

# stats VALUES...: "median min max"
stats() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.1f %.1f %.1f\n", m, v[1], v[NR] }'
}

# ---- 3. baseline ---------------------------------------------------------------
sql "CHECKPOINT" >/dev/null
for i in $(seq 1 "$WARMUP"); do run_one warmup "$i" "$CONN" "${DB_ARGS[@]}"; done
for i in $(seq 1 "$RUNS"); do run_one empty "$i" "$CONN" "${DB_ARGS[@]}"; done

# ---- 4. fill ------------------------------------------------------------------
fill_start="$(now_s)"
say "== fill: cloning the sagas of the runs above until the log holds $EVENTS events"

bad="$(sql "SELECT count(*) FROM sagas WHERE status <> 'completed'")"
[ "$bad" = 0 ] || say "   note: $bad sagas not completed; they are not cloned"
ntasks="$(sql "SELECT count(*) FROM tasks")"
[ "$ntasks" = 0 ] || say "   note: $ntasks rows in tasks after the runs (expected none)"

# Columns of a table, "name|type" per line, in order (generated ones left out).
columns() {
  sql "SELECT attname || '|' || format_type(atttypid, atttypmod) FROM pg_attribute
       WHERE attrelid = '$1'::regclass AND attnum > 0 AND NOT attisdropped
         AND attgenerated = '' ORDER BY attnum"
}
# "col1, col2, ..." and "expr1, expr2, ..." for INSERT INTO $1 SELECT ... FROM
# <$1 AS $2> JOIN m: the clone's id, key and shifted timestamps replace the
# template's; the saga's id (and key) inside JSON columns are rewritten; the
# result is cast back to the column's type (jsonb today; works for text).
clone_lists() {
  local table="$1" a="$2" col typ expr
  CL_COLS=""
  CL_EXPRS=""
  while IFS='|' read -r col typ; do
    [ -n "$col" ] || continue
    case "$table:$col:$typ" in
      sagas:id:*) expr="m.new_id" ;;
      saga_events:saga_id:* | saga_idempotency:saga_id:*) expr="m.new_id" ;;
      saga_idempotency:key:*) expr="m.new_key" ;;
      *:"timestamp with time zone" | *:"timestamp without time zone")
        expr="$a.\"$col\" - m.shift" ;;
      sagas:state:* | saga_events:payload:* | *:json | *:jsonb)
        expr="replace(replace($a.\"$col\"::text, m.old_txt, m.new_txt), m.old_kq, m.new_kq)::$typ" ;;
      *) expr="$a.\"$col\"" ;;
    esac
    CL_COLS="${CL_COLS:+$CL_COLS, }\"$col\""
    CL_EXPRS="${CL_EXPRS:+$CL_EXPRS, }$expr"
  done < <(columns "$table")
}
clone_lists sagas s;            SAGAS_COLS="$CL_COLS"; SAGAS_EXPRS="$CL_EXPRS"
clone_lists saga_events e;      EV_COLS="$CL_COLS";    EV_EXPRS="$CL_EXPRS"
clone_lists saga_idempotency i; IK_COLS="$CL_COLS";    IK_EXPRS="$CL_EXPRS"
say "   sagas.state is $(sql "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
  WHERE attrelid = 'sagas'::regclass AND attname = 'state'"); saga_events.payload is \
$(sql "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
  WHERE attrelid = 'saga_events'::regclass AND attname = 'payload'")"

# The template: every completed saga, its idempotency key and event count.
psql_q -c "SET client_min_messages = warning" -c "
DROP TABLE IF EXISTS biglog_tpl;
CREATE UNLOGGED TABLE biglog_tpl AS
  SELECT row_number() OVER (ORDER BY s.id) AS rn, s.id,
         i.workflow AS ik_workflow, i.key AS ik_key,
         (SELECT count(*) FROM saga_events e WHERE e.saga_id = s.id) AS n_events,
         0::bigint AS cum
  FROM sagas s LEFT JOIN saga_idempotency i ON i.saga_id = s.id
  WHERE s.status = 'completed';
UPDATE biglog_tpl t SET cum = c.cum
  FROM (SELECT id, sum(n_events) OVER (ORDER BY rn) AS cum FROM biglog_tpl) c
  WHERE c.id = t.id;
ANALYZE biglog_tpl;" >/dev/null
read -r TPL_SAGAS TPL_EVENTS TPL_SPAN_MS < <(sql "SELECT count(*), coalesce(sum(n_events), 0),
  coalesce(max(('x' || substr(replace(id::text, '-', ''), 1, 12))::bit(48)::bigint)
         - min(('x' || substr(replace(id::text, '-', ''), 1, 12))::bit(48)::bigint), 0)
  FROM biglog_tpl" | tr '|' ' ')
say "   template: $TPL_SAGAS sagas, $TPL_EVENTS events (ids span $TPL_SPAN_MS ms)"
[ "$TPL_EVENTS" -gt 0 ] || { echo "biglog: nothing to clone" >&2; exit 1; }
nonv7="$(sql "SELECT count(*) FROM biglog_tpl WHERE substr(id::text, 15, 1) <> '7'")"
[ "$nonv7" = 0 ] || say "   note: $nonv7 template ids are not UUIDv7; their clones get gen_random_uuid()"
[ "$TPL_SPAN_MS" -lt "$CLONE_SHIFT_MS" ] ||
  say "   note: the template spans more than 1 h, so clones' id ranges overlap"

EV0="$(count_events "$CONN")"
NEED=$((EVENTS > EV0 ? EVENTS - EV0 : 0))
K_FULL=$((NEED / TPL_EVENTS))  # whole copies of the template
REM=$((NEED - K_FULL * TPL_EVENTS)) # then the first sagas of one more copy
K_ALL=$((K_FULL + (REM > 0 ? 1 : 0)))
PER_BATCH=$((BATCH_EVENTS / TPL_EVENTS))
[ "$PER_BATCH" -ge 1 ] || PER_BATCH=1
NBATCH=$(((K_ALL + PER_BATCH - 1) / PER_BATCH))
say "   $EV0 events now; $K_ALL copies ($K_FULL whole) in $NBATCH transactions"

b=0
k0=1
while [ "$k0" -le "$K_ALL" ]; do
  b=$((b + 1))
  k1=$((k0 + PER_BATCH - 1))
  [ "$k1" -le "$K_ALL" ] || k1="$K_ALL"
  t0="$(now_s)"
  # m: one row per clone (template saga x copy k) with its new id; v7-shaped
  # ids: the template's 48-bit ms timestamp minus k hours, version 7, RFC
  # variant, the rest from md5(template id, k) (deterministic, distinct).
  psql_q -c "
BEGIN;
SET LOCAL work_mem = '256MB';
SET LOCAL synchronous_commit = off;
CREATE TEMP TABLE m ON COMMIT DROP AS
  SELECT t.id AS old_id, t.ik_workflow, t.ik_key, k,
         x.new_id, x.new_id::text AS new_txt, t.id::text AS old_txt,
         t.ik_key || '-biglog' || k AS new_key,
         coalesce('\"' || t.ik_key || '\"', '') AS old_kq,
         coalesce('\"' || t.ik_key || '-biglog' || k || '\"', '') AS new_kq,
         make_interval(secs => k * $CLONE_SHIFT_MS / 1000.0) AS shift
  FROM biglog_tpl t
  CROSS JOIN generate_series($k0, $k1) AS k
  CROSS JOIN LATERAL (SELECT md5(t.id::text || ':' || k) AS h,
    ('x' || substr(replace(t.id::text, '-', ''), 1, 12))::bit(48)::bigint
      - k * $CLONE_SHIFT_MS::bigint AS ms) r
  CROSS JOIN LATERAL (SELECT CASE
    WHEN substr(t.id::text, 15, 1) = '7' AND r.ms > 0 THEN
      (lpad(to_hex(r.ms), 12, '0') || '7' || substr(r.h, 1, 3)
       || substr('89ab', 1 + get_byte(decode(r.h, 'hex'), 15) % 4, 1)
       || substr(r.h, 4, 15))::uuid
    ELSE gen_random_uuid() END AS new_id) x
  WHERE k <= $K_FULL OR t.cum - t.n_events < $REM;
ANALYZE m;
INSERT INTO sagas ($SAGAS_COLS)
  SELECT $SAGAS_EXPRS FROM m JOIN sagas s ON s.id = m.old_id ORDER BY m.new_id;
INSERT INTO saga_events ($EV_COLS)
  SELECT $EV_EXPRS FROM m JOIN saga_events e ON e.saga_id = m.old_id
  ORDER BY m.new_id, e.seq;
INSERT INTO saga_idempotency ($IK_COLS)
  SELECT $IK_EXPRS FROM m JOIN saga_idempotency i
    ON i.workflow = m.ik_workflow AND i.key = m.ik_key
  ORDER BY i.workflow, m.new_key;
COMMIT;" >/dev/null
  say "   batch $b/$NBATCH (copies $k0–$k1): $(secs_since "$t0") s, $(secs_since "$fill_start") s so far"
  k0=$((k1 + 1))
done
psql_q -c "DROP TABLE biglog_tpl" >/dev/null
FILL_S="$(secs_since "$fill_start")"
# Spot check of the clones (a sample of ~1 % of the pages): the id and key
# inside the JSON match the row's, the key row points back, the first event
# names the saga, and every saga has all its events.
read -r CHK_N CHK_BAD < <(sql "
SELECT count(*), count(*) FILTER (WHERE NOT ok) FROM (
  SELECT (s.state::jsonb->>'id')::uuid = s.id
     AND (s.state::jsonb->>'idempotency_key' IS NULL
          OR EXISTS (SELECT 1 FROM saga_idempotency i WHERE i.workflow = s.workflow
                     AND i.key = s.state::jsonb->>'idempotency_key' AND i.saga_id = s.id))
     AND (SELECT (e.payload::jsonb->>'id')::uuid = s.id FROM saga_events e
          WHERE e.saga_id = s.id AND e.seq = 1)
     AND (SELECT count(*) FROM saga_events e WHERE e.saga_id = s.id) = s.last_seq AS ok
  FROM sagas s TABLESAMPLE SYSTEM (1) LIMIT 5000) x" | tr '|' ' ')
say "   spot check: $CHK_BAD of $CHK_N sampled sagas inconsistent"
[ "$CHK_BAD" = 0 ] || { echo "biglog: the fill produced inconsistent sagas" >&2; exit 1; }
t0="$(now_s)"
say "== VACUUM ANALYZE, CHECKPOINT"
psql_q -c "VACUUM ANALYZE" >/dev/null
psql_q -c "CHECKPOINT" >/dev/null
VACUUM_S="$(secs_since "$t0")"

read -r EV1 NSAGAS NKEYS < <(sql "SELECT (SELECT count(*) FROM saga_events),
  (SELECT count(*) FROM sagas), (SELECT count(*) FROM saga_idempotency)" | tr '|' ' ')
SIZES="$(psql_q -c "
SELECT t.name AS \"table\",
       pg_size_pretty(sum(pg_table_size(p.relid))) AS \"heap+toast\",
       pg_size_pretty(sum(pg_indexes_size(p.relid))) AS indexes,
       pg_size_pretty(sum(pg_total_relation_size(p.relid))) AS total,
       count(*) AS relations
FROM unnest(array['saga_events', 'sagas', 'saga_idempotency', 'tasks']) AS t(name)
CROSS JOIN LATERAL (SELECT relid FROM pg_partition_tree(t.name::regclass)
    UNION SELECT t.name::regclass) p
GROUP BY t.name ORDER BY sum(pg_total_relation_size(p.relid)) DESC;")"
IDX_SIZES="$(psql_q -c "
SELECT i.indexrelid::regclass AS index, pg_size_pretty(pg_relation_size(i.indexrelid)) AS size
FROM pg_index i
WHERE i.indrelid IN (SELECT p.relid FROM unnest(array['saga_events', 'sagas',
  'saga_idempotency', 'tasks']) AS t(name)
  CROSS JOIN LATERAL (SELECT relid FROM pg_partition_tree(t.name::regclass)
    UNION SELECT t.name::regclass) p)
ORDER BY pg_relation_size(i.indexrelid) DESC;")"
SIZES_JSON="$(sql "SELECT json_object_agg(t.name, json_build_object(
  'table_bytes', s.tb, 'index_bytes', s.ib, 'total_bytes', s.tt))
FROM unnest(array['saga_events', 'sagas', 'saga_idempotency', 'tasks']) AS t(name)
CROSS JOIN LATERAL (SELECT sum(pg_table_size(p.relid)) AS tb,
  sum(pg_indexes_size(p.relid)) AS ib, sum(pg_total_relation_size(p.relid)) AS tt
  FROM (SELECT relid FROM pg_partition_tree(t.name::regclass)
    UNION SELECT t.name::regclass) p) s")"
DB_SIZE="$(sql "SELECT pg_size_pretty(pg_database_size(current_database()))")"
say "== filled: $EV1 events, $NSAGAS sagas, $NKEYS idempotency keys;"
say "   fill $FILL_S s, VACUUM ANALYZE + CHECKPOINT $VACUUM_S s; database $DB_SIZE"
say "$SIZES"
say "$IDX_SIZES"
printf '{"biglog":"fill","events":%s,"sagas":%s,"idempotency_keys":%s,"fill_s":%s,"vacuum_checkpoint_s":%s,"sizes":%s}\n' \
  "$EV1" "$NSAGAS" "$NKEYS" "$FILL_S" "$VACUUM_S" "$SIZES_JSON" >>"$RESULTS"

# ---- 5. filled ----------------------------------------------------------------
# The control: a second, empty database in the same server, whose runs
# alternate with the filled runs (ABBA), so that a drift of the machine
# (other work on it) over the many minutes since the baseline shows up.
if [ -n "$DATA" ]; then
  CTL_NAME="skald_control"
  sql "CREATE DATABASE $CTL_NAME" >/dev/null
  CTL_CONN="host=$RUNDIR port=5432 user=skald dbname=$CTL_NAME"
else
  CTL_NAME="${DBNAME}_control"
  "$PSQL_BIN" -X -q -v ON_ERROR_STOP=1 -d "$ADMIN_URL" -c "CREATE DATABASE \"$CTL_NAME\""
  DROP_DBS+=("$CTL_NAME")
  CTL_CONN="$(url_with_db "$SKALD_DATABASE_URL" "$CTL_NAME")"
fi
CTL_ARGS=(--database-url "$CTL_CONN")
# shellcheck disable=SC2086
"$BENCH" "${CTL_ARGS[@]}" $EXTRA $INIT_FLAGS >/dev/null # schema, workflow
for i in $(seq 1 "$WARMUP"); do run_one warmup "$i" "$CTL_CONN" "${CTL_ARGS[@]}"; done
for i in $(seq 1 "$RUNS"); do
  if [ $((i % 2)) = 1 ]; then
    run_one filled "$i" "$CONN" "${DB_ARGS[@]}"
    run_one control "$i" "$CTL_CONN" "${CTL_ARGS[@]}"
  else
    run_one control "$i" "$CTL_CONN" "${CTL_ARGS[@]}"
    run_one filled "$i" "$CONN" "${DB_ARGS[@]}"
  fi
done

read -r E_MED E_MIN E_MAX < <(stats "${STEPS_empty[@]}")
read -r F_MED F_MIN F_MAX < <(stats "${STEPS_filled[@]}")
read -r C_MED C_MIN C_MAX < <(stats "${STEPS_control[@]}")
ratio() { awk -v f="$1" -v e="$2" 'BEGIN { x = 0; if (e > 0) x = f / e; printf "%.3f", x }'; }
within() { awk -v r="$1" -v t="$TOLERANCE_PCT" 'BEGIN { w = "false"; if (r >= 1 - t / 100) w = "true"; print w }'; }
RATIO="$(ratio "$F_MED" "$E_MED")"
WITHIN="$(within "$RATIO")"
RATIO_C="$(ratio "$F_MED" "$C_MED")"
WITHIN_C="$(within "$RATIO_C")"
printf '{"biglog":"summary","date":"%s","git":"%s","flags":"%s","runs":%d,"log_events_filled":%s,"empty_steps_per_s":{"median":%s,"min":%s,"max":%s},"filled_steps_per_s":{"median":%s,"min":%s,"max":%s},"control_steps_per_s":{"median":%s,"min":%s,"max":%s},"ratio":%s,"within":%s,"ratio_vs_control":%s,"within_vs_control":%s,"tolerance_pct":%d}\n' \
  "$STAMP" "$GIT" "$FLAGS $EXTRA" "$RUNS" "$EV1" "$E_MED" "$E_MIN" "$E_MAX" \
  "$F_MED" "$F_MIN" "$F_MAX" "$C_MED" "$C_MIN" "$C_MAX" "$RATIO" "$WITHIN" \
  "$RATIO_C" "$WITHIN_C" "$TOLERANCE_PCT" >>"$RESULTS"

# ---- 6. plans -----------------------------------------------------------------
explain_hot() {
  # Every statement of a short bench run, with auto_explain (in the server
  # log); one plan per distinct statement: the run of median duration.
  local off
  sql "ALTER DATABASE skald SET session_preload_libraries = 'auto_explain'" >/dev/null
  for s in "log_min_duration = 0" "log_analyze = on" "log_buffers = on" \
    "log_timing = on" "log_nested_statements = off" "log_format = text"; do
    sql "ALTER DATABASE skald SET auto_explain.$s" >/dev/null
  done
  off="$(stat -c %s "$PGLOG")"
  # shellcheck disable=SC2086
  "$BENCH" "${DB_ARGS[@]}" --concurrency 64 --workers 64 --sagas 500 \
    --stats-settle-ms 0 --json $EXTRA >/dev/null ||
    { echo "biglog: the auto_explain run failed" >&2; exit 1; }
  sql "ALTER DATABASE skald RESET ALL" >/dev/null
  tail -c +"$((off + 1))" "$PGLOG" | awk '
    function flush() {
      if (q == "") return
      n = ++cnt[q]; dur[q, n] = d; plan[q, n] = p
      if (p ~ /Seq Scan/ && !(q in seqplan)) { seqplan[q] = p; seqdur[q] = d }
      if (p ~ /Seq Scan/) seq[q]++
      if (!(q in seen)) { seen[q] = 1; order[++nq] = q }
      q = ""
    }
    /LOG:  duration: [0-9.]+ ms  plan:/ {
      flush(); d = $0; sub(/.*duration: /, "", d); sub(/ ms.*/, "", d)
      d += 0; p = ""; inplan = 1; next
    }
    inplan && /^\tQuery Text: / { q = $0; sub(/^\tQuery Text: /, "", q); next }
    inplan && /^\t/ { p = p "  " substr($0, 2) "\n"; next }
    { flush(); inplan = 0 }
    END {
      flush()
      for (o = 1; o <= nq; o++) {
        k = order[o]; n = cnt[k]
        for (i = 1; i <= n; i++) idx[i] = i
        for (i = 2; i <= n; i++) for (j = i; j > 1 && dur[k, idx[j]] < dur[k, idx[j - 1]]; j--) {
          t = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = t }
        m = idx[int((n + 1) / 2)]
        printf "-- statement %d: %s\n", o, k
        printf "-- executions %d (%d with a Seq Scan); duration ms: median %.3f, max %.3f; plan of the median run:\n",
          n, seq[k] + 0, dur[k, m], dur[k, idx[n]]
        printf "%s", plan[k, m]
        if ((k in seqplan) && plan[k, m] !~ /Seq Scan/)
          printf "-- and the first plan with a Seq Scan (%.3f ms):\n%s", seqdur[k], seqplan[k]
        printf "\n"
      }
    }'
}

explain_queries() {
  local sj="state"
  case "$(sql "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
    WHERE attrelid = 'sagas'::regclass AND attname = 'state'")" in
    jsonb) ;;
    *) sj="state::jsonb" ;;
  esac
  local mid old
  mid="$(sql "SELECT id FROM sagas ORDER BY id DESC OFFSET (SELECT count(*) / 2 FROM sagas) LIMIT 1")"
  old="$(sql "SELECT id FROM sagas ORDER BY id LIMIT 1")"
  psql_q -c "SET client_min_messages = warning" -c "
PREPARE list_sagas(text, text, int, uuid) AS
WITH page AS (SELECT id, workflow, version, status, created_at,
  updated_at FROM sagas WHERE (\$1::text IS NULL OR status = \$1)
  AND (\$2::text IS NULL OR workflow = \$2)
  AND (\$4::uuid IS NULL OR id < \$4::uuid)
  ORDER BY id DESC LIMIT \$3::int + 1),
numbered AS (SELECT *, row_number() OVER (ORDER BY id DESC) AS n FROM page)
SELECT json_build_object('sagas', coalesce((SELECT json_agg(
  json_build_object('id', id, 'workflow', workflow, 'version', version,
  'status', status, 'created_at', created_at, 'updated_at', updated_at)
  ORDER BY id DESC) FROM numbered WHERE n <= \$3::int), '[]'),
  'next_cursor', (SELECT id FROM numbered WHERE n = \$3::int
  AND EXISTS (SELECT 1 FROM numbered WHERE n > \$3::int)))::text;
PREPARE saga_ids(text, text, int) AS
SELECT id::text FROM sagas WHERE status = \$1
  AND (\$2::text IS NULL OR workflow = \$2)
  AND $sj->>'replayed_by' IS NULL ORDER BY id LIMIT \$3::int;
PREPARE saga_state(uuid) AS SELECT state::text, status FROM sagas WHERE id = \$1;
PREPARE saga_history(uuid) AS
SELECT seq, type, step, attempt, node, payload::text,
  (extract(epoch FROM created_at) * 1000)::bigint
FROM saga_events WHERE saga_id = \$1 ORDER BY seq;
PREPARE purge(int) AS
WITH old AS (SELECT id FROM sagas WHERE status IN ('completed',
  'compensated', 'cancelled') AND updated_at < now() -
  make_interval(days => \$1::int) LIMIT 1000),
ev AS (DELETE FROM saga_events e USING old WHERE e.saga_id = old.id),
ik AS (DELETE FROM saga_idempotency i USING old WHERE i.saga_id = old.id),
s AS (DELETE FROM sagas x USING old WHERE x.id = old.id
  RETURNING 1) SELECT count(*) FROM s;" \
    -c "\\echo '-- queries_list_sagas: first page of status completed, 50 per page'" \
    -c "EXPLAIN (ANALYZE, BUFFERS) EXECUTE list_sagas('completed', NULL, 50, NULL)" \
    -c "\\echo '-- queries_list_sagas: a page in the middle (cursor $mid)'" \
    -c "EXPLAIN (ANALYZE, BUFFERS) EXECUTE list_sagas('completed', NULL, 50, '$mid')" \
    -c "\\echo '-- queries_list_sagas: status running (none left)'" \
    -c "EXPLAIN (ANALYZE, BUFFERS) EXECUTE list_sagas('running', NULL, 50, NULL)" \
    -c "\\echo '-- queries_list_sagas: no filter'" \
    -c "EXPLAIN (ANALYZE, BUFFERS) EXECUTE list_sagas(NULL, NULL, 50, NULL)" \
    -c "\\echo '-- queries_saga_ids: status completed, 100'" \
    -c "EXPLAIN (ANALYZE, BUFFERS) EXECUTE saga_ids('completed', NULL, 100)" \
    -c "\\echo '-- queries_saga_state: the oldest saga'" \
    -c "EXPLAIN (ANALYZE, BUFFERS) EXECUTE saga_state('$old')" \
    -c "\\echo '-- queries_saga_history (events of one saga)'" \
    -c "EXPLAIN (ANALYZE, BUFFERS) EXECUTE saga_history('$old')" \
    -c "\\echo '-- queries_singleton_duties purge, retention_days = 1 (rolled back)'" \
    -c "BEGIN" -c "EXPLAIN (ANALYZE, BUFFERS) EXECUTE purge(1)" -c "ROLLBACK" \
    -c "\\echo '-- queries_singleton_duties purge, retention_days = 30: nothing old enough (rolled back)'" \
    -c "BEGIN" -c "EXPLAIN (ANALYZE, BUFFERS) EXECUTE purge(30)" -c "ROLLBACK"
}

if [ "$EXPLAIN" = 1 ]; then
  say "== plans on the filled log"
  if [ -n "$DATA" ]; then
    say "-- every distinct statement of one bench run (--concurrency 64 --workers 64 --sagas 500), via auto_explain:"
    explain_hot >&2
  else
    say "-- (auto_explain capture skipped: it needs the server log of the embedded database)"
  fi
  say "-- engine/store/queries.c statements the bench does not run:"
  explain_queries >&2
fi

# ---- report -------------------------------------------------------------------
echo
echo "biglog: throughput with a big saga log vs an (almost) empty one"
echo "  bench:   $BENCH ${DB_ARGS[*]} $FLAGS $EXTRA   ($RUNS runs each; git $GIT)"
echo "  fill:    $EV0 -> $EV1 events ($NSAGAS sagas, $NKEYS idempotency keys) in $FILL_S s; VACUUM ANALYZE + CHECKPOINT $VACUUM_S s; database $DB_SIZE"
echo "  empty log, before the fill:        steps/s median $E_MED ($E_MIN–$E_MAX)   [${STEPS_empty[*]}]"
echo "  filled log:                        steps/s median $F_MED ($F_MIN–$F_MAX)   [${STEPS_filled[*]}]"
echo "  control (empty database, its runs  steps/s median $C_MED ($C_MIN–$C_MAX)   [${STEPS_control[*]}]"
echo "    alternating with the filled ones)"
echo "  ratio filled/empty:   $RATIO   within ${TOLERANCE_PCT} %: $([ "$WITHIN" = true ] && echo yes || echo NO)"
echo "  ratio filled/control: $RATIO_C   within ${TOLERANCE_PCT} %: $([ "$WITHIN_C" = true ] && echo yes || echo NO)"
if [ "$WITHIN" != true ] || [ "$WITHIN_C" != true ]; then
  echo "  !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  [ "$WITHIN" = true ] ||
    echo "  !!! NOT WITHIN ${TOLERANCE_PCT} %: the filled log is $(awk -v r="$RATIO" 'BEGIN { printf "%.0f", (1 - r) * 100 }') % slower than the empty log"
  [ "$WITHIN_C" = true ] ||
    echo "  !!! NOT WITHIN ${TOLERANCE_PCT} %: the filled log is $(awk -v r="$RATIO_C" 'BEGIN { printf "%.0f", (1 - r) * 100 }') % slower than the control"
  echo "  !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
fi
echo "  raw: $RESULTS"
