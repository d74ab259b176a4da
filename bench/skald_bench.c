/*
 * skald_bench.c — throughput and latency of the engine, run in-process.
 *
 * Runs N sagas of the workflow "bench_noop" v1 (K task steps of type "noop"
 * whose handler returns {} at once) with C sagas in flight, and prints
 * sagas/s, steps/s, saga latency (sk_run_start called → saga seen settled)
 * and database transactions per step.
 *
 * Keeping C in flight. sk_run_start blocks until its group commit, so S
 * starter threads (S = min(C, --starters)) share C slots: a starter takes a
 * free slot, notes t0, starts a saga, registers it and takes the next slot.
 * The slot comes back when the saga settles, so at most C are in flight.
 *
 * Seeing sagas settle (--wait monitor, the default). sk_saga_wait in every
 * starter costs one status query per waiter after EVERY group commit, all
 * on the engine's one query connection: at C = 4096 that is thousands of
 * queries per commit competing with the engine for the same CPUs and
 * connection, which measures the waiting, not the engine. Instead the noop
 * handler marks a saga a candidate when its LAST step runs; one monitor
 * thread, woken by the engine after every group commit (its gen condition,
 * an internal), reads the status of the candidates in one query on its own
 * connection, and once a second sweeps every saga in flight, so a saga
 * that settles some other way (compensated, failed) is still seen.
 * --wait sdk instead runs C threads that each start and sk_saga_wait, to
 * measure the difference (see bench/README.md).
 *
 * Counting transactions (read at idle, before and after the measured run):
 *   - xact_commit of pg_stat_database for this database: EVERY committed
 *     transaction of every connection, read-only ones included. Backends
 *     publish their counts at most once a second and an idle one only after
 *     10 s (PGSTAT_IDLE_INTERVAL in PostgreSQL 15), so each read waits
 *     --stats-settle-ms (11 s) at idle first. The bench's own transactions
 *     (its monitor's queries and one stats read) are subtracted; the
 *     engine's idle traffic during the settle wait (a dequeue poll a second,
 *     lease renewal and heartbeat every 5 s) is not.
 *   - write transactions: the delta of the next transaction id (xmax of the
 *     current snapshot). Only transactions that write get one; exact and
 *     immediate.
 *   - group commits: the engine's own counter of committed group commits.
 *
 * Threads: main (setup, stats, report), starters, the monitor, and the
 * engine's workers (the handler). Shared bench state is under bench.mu.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <skald/skald.h>

#include "bench_util.h"
#include "core/engine.h" /* conninfo, the commit condition, counters */

#define WORKFLOW "bench_noop"
#define TASK_TYPE "noop"
#define SWEEP_MS 1000
#define GEN_WAIT_MS 50
#define STARTER_STACK (256 * 1024)

typedef enum wait_mode { WAIT_MONITOR = 0, WAIT_SDK } wait_mode;

typedef struct options {
  long long sagas;
  int steps;
  int concurrency;
  int workers;
  int starters;
  long long warmup;
  int timeout_s;
  int settle_ms;
  int poll_ms; /* 0 = the engine's default */
  wait_mode wait;
  bool json;
  const char *database_url;
  const char *data_dir;
} options;

/* One saga in flight, known by the starter (registered) and/or the handler
 * (candidate) — the handler may run before the starter gets to register. */
typedef struct entry {
  char id[SK_ID_LEN];
  long long ordinal;
  int64_t t0_ns;
  int64_t settled_ns; /* seen settled before it was registered */
  sk_status status;
  bool registered, candidate, settled, done;
  struct entry *next; /* hash chain */
} entry;

typedef struct phase {
  long long n;      /* sagas in this phase */
  long long next;   /* next ordinal to start */
  long long n_done; /* settled or failed to start */
  long long n_bad;  /* not completed */
  int64_t *lat_ns;  /* per ordinal */
  int64_t t_start_ns, t_end_ns;
  char key_prefix[64];
} phase;

typedef struct bench {
  options o;
  sk_engine *e;
  char last_step[16];
  bool track; /* handler marks candidates (monitor mode) */

  pthread_mutex_t mu;
  pthread_cond_t slot_cv; /* a slot came free / abort */
  pthread_cond_t done_cv; /* the phase finished */
  int free_slots;
  bool abort;
  bool monitor_stop;
  phase *ph;
  entry **buckets;
  size_t n_buckets; /* power of two */
  entry **cands;    /* candidates not yet seen settled */
  size_t n_cands, cap_cands;
  bool reported_start_error;

  PGconn *mon_conn;
  long long mon_queries; /* transactions the monitor ran */
} bench;

/* ---- small helpers --------------------------------------------------------
 */

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void deadline_in(struct timespec *ts, int ms) {
  clock_gettime(CLOCK_REALTIME, ts);
  ts->tv_nsec += (long)(ms % 1000) * 1000000L;
  ts->tv_sec += ms / 1000 + ts->tv_nsec / 1000000000L;
  ts->tv_nsec %= 1000000000L;
}

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (p == NULL)
    die("out of memory");
  return p;
}

/* ---- arguments ------------------------------------------------------------
 */

static void usage(FILE *f) {
  fputs(
      "usage: skald_bench [options]\n"
      "  --sagas N          sagas measured (default 2000)\n"
      "  --steps K          no-op steps per saga, 1..256 (default 5)\n"
      "  --concurrency C    sagas in flight at once (default 64)\n"
      "  --workers W        threads of the default bulkhead (default 16)\n"
      "  --warmup N         sagas run before measuring (default 0)\n"
      "  --wait MODE        monitor (one query per commit for all sagas) or\n"
      "                     sdk (sk_saga_wait per saga, C threads); default "
      "monitor\n"
      "  --starters S       starter threads in monitor mode (default "
      "min(C, 256))\n"
      "  --database-url URL libpq URL (default: $SKALD_DATABASE_URL, else the\n"
      "                     embedded PostgreSQL in --data-dir)\n"
      "  --data-dir DIR     embedded PostgreSQL home (default ./.skald-bench)\n"
      "  --timeout S        give up after S seconds per phase (default 600)\n"
      "  --stats-settle-ms MS  idle wait before reading pg_stat_database\n"
      "                     (default 11000; 0 = read at once, inexact)\n"
      "  --poll-ms MS       the engine's poll_interval_ms (default: its own)\n"
      "  --json             print one JSON line of results\n"
      "  --help\n",
      f);
}

static void parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof(*o));
  o->sagas = 2000;
  o->steps = 5;
  o->concurrency = 64;
  o->workers = 16;
  o->starters = 0;
  o->warmup = 0;
  o->timeout_s = 600;
  o->settle_ms = 11000;
  o->wait = WAIT_MONITOR;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    bool takes = true;
    if (strcmp(a, "--sagas") == 0)
      o->sagas = parse_int(a, v, 1, 100000000);
    else if (strcmp(a, "--steps") == 0)
      o->steps = (int)parse_int(a, v, 1, SK_STEPS_MAX);
    else if (strcmp(a, "--concurrency") == 0)
      o->concurrency = (int)parse_int(a, v, 1, 65536);
    else if (strcmp(a, "--workers") == 0)
      o->workers = (int)parse_int(a, v, 1, 4096);
    else if (strcmp(a, "--starters") == 0)
      o->starters = (int)parse_int(a, v, 1, 4096);
    else if (strcmp(a, "--warmup") == 0)
      o->warmup = parse_int(a, v, 0, 100000000);
    else if (strcmp(a, "--timeout") == 0)
      o->timeout_s = (int)parse_int(a, v, 1, 86400);
    else if (strcmp(a, "--poll-ms") == 0)
      o->poll_ms = (int)parse_int(a, v, 10, 60000);
    else if (strcmp(a, "--stats-settle-ms") == 0)
      o->settle_ms = (int)parse_int(a, v, 0, 120000);
    else if (strcmp(a, "--wait") == 0) {
      if (v != NULL && strcmp(v, "monitor") == 0)
        o->wait = WAIT_MONITOR;
      else if (v != NULL && strcmp(v, "sdk") == 0)
        o->wait = WAIT_SDK;
      else
        bad_arg("--wait must be \"monitor\" or \"sdk\"");
    } else if (strcmp(a, "--database-url") == 0) {
      if (v == NULL || v[0] == '\0')
        bad_arg("--database-url needs a non-empty value");
      o->database_url = v;
    } else if (strcmp(a, "--data-dir") == 0) {
      if (v == NULL || v[0] == '\0')
        bad_arg("--data-dir needs a non-empty value");
      o->data_dir = v;
    } else if (strcmp(a, "--json") == 0) {
      o->json = true;
      takes = false;
    } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      exit(0);
    } else {
      bad_arg("unknown argument \"%s\"", a);
    }
    if (takes)
      i++;
  }
  if (o->wait == WAIT_SDK && o->concurrency > 8192)
    bad_arg("--wait sdk runs one thread per saga in flight; --concurrency "
            "must be at most 8192 with it");
  if (o->wait == WAIT_SDK && o->starters != 0)
    bad_arg("--starters applies to --wait monitor only");
  if (o->starters == 0)
    o->starters = o->concurrency < 256 ? o->concurrency : 256;
  if (o->starters > o->concurrency)
    o->starters = o->concurrency;
  if (o->database_url == NULL) {
    const char *env = getenv("SKALD_DATABASE_URL");
    if (env != NULL && env[0] != '\0')
      o->database_url = env;
  }
  if (o->database_url == NULL && o->data_dir == NULL)
    o->data_dir = "./.skald-bench";
}

/* ---- the in-flight table (under b->mu) ------------------------------------
 */

static size_t hash_id(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return (size_t)h;
}

static entry *table_find(bench *b, const char *id, bool create) {
  entry **slot = &b->buckets[hash_id(id) & (b->n_buckets - 1)];
  for (entry *x = *slot; x != NULL; x = x->next)
    if (strcmp(x->id, id) == 0)
      return x;
  if (!create)
    return NULL;
  entry *x = xcalloc(1, sizeof(*x));
  snprintf(x->id, sizeof(x->id), "%s", id);
  x->next = *slot;
  *slot = x;
  return x;
}

static void table_unlink(bench *b, entry *x) {
  entry **p = &b->buckets[hash_id(x->id) & (b->n_buckets - 1)];
  while (*p != x)
    p = &(*p)->next;
  *p = x->next;
}

/* Records a settled, registered saga and frees its slot. A candidate stays
 * allocated until the monitor drops it from its list. */
static void complete(bench *b, entry *x, int64_t t_end, sk_status st) {
  phase *ph = b->ph;
  x->done = true;
  table_unlink(b, x);
  ph->lat_ns[x->ordinal] = t_end - x->t0_ns;
  if (t_end > ph->t_end_ns)
    ph->t_end_ns = t_end;
  if (st != SK_STATUS_COMPLETED)
    ph->n_bad++;
  ph->n_done++;
  b->free_slots++;
  pthread_cond_signal(&b->slot_cv);
  if (ph->n_done == ph->n)
    pthread_cond_broadcast(&b->done_cv);
  if (!x->candidate)
    free(x);
}

/* ---- the task handler (worker threads) ------------------------------------
 */

static int noop_task(const sk_task *t, sk_task_result *r, void *ud) {
  bench *b = ud;
  if (b->track && !t->is_compensation && strcmp(t->step, b->last_step) == 0) {
    pthread_mutex_lock(&b->mu);
    entry *x = table_find(b, t->saga_id, true);
    if (!x->candidate) {
      if (b->n_cands == b->cap_cands) {
        size_t cap = b->cap_cands ? b->cap_cands * 2 : 1024;
        entry **p = realloc(b->cands, cap * sizeof(*p));
        if (p == NULL)
          die("out of memory");
        b->cands = p;
        b->cap_cands = cap;
      }
      x->candidate = true;
      b->cands[b->n_cands++] = x;
    }
    pthread_mutex_unlock(&b->mu);
  }
  return sk_result_ok(r, "{}");
}

/* ---- the monitor ------------------------------------------------------------
 */

typedef struct idbuf {
  char *s;
  size_t len, cap;
  size_t n;
} idbuf;

static void idbuf_add(idbuf *ib, const char *id) {
  size_t need = ib->len + SK_ID_LEN + 3;
  if (need > ib->cap) {
    size_t cap = ib->cap ? ib->cap * 2 : 4096;
    while (cap < need)
      cap *= 2;
    char *p = realloc(ib->s, cap);
    if (p == NULL)
      die("out of memory");
    ib->s = p;
    ib->cap = cap;
  }
  ib->s[ib->len++] = ib->n == 0 ? '{' : ',';
  size_t l = strlen(id);
  memcpy(ib->s + ib->len, id, l);
  ib->len += l;
  ib->n++;
  ib->s[ib->len] = '}';
  ib->s[ib->len + 1] = '\0';
}

static bool parse_status(const char *s, sk_status *out) {
  for (int i = SK_STATUS_RUNNING; i <= SK_STATUS_CANCELLED; i++)
    if (strcmp(s, sk_status_name((sk_status)i)) == 0) {
      *out = (sk_status)i;
      return true;
    }
  return false;
}

/* Waits until the engine committed again (or GEN_WAIT_MS passed). */
static void wait_commit(sk_engine *e, uint64_t *seen) {
  struct timespec ts;
  deadline_in(&ts, GEN_WAIT_MS);
  pthread_mutex_lock(&e->mu);
  while (e->gen == *seen &&
         pthread_cond_timedwait(&e->gen_cv, &e->mu, &ts) == 0)
    ;
  *seen = e->gen;
  pthread_mutex_unlock(&e->mu);
}

/* Reads the statuses of the ids in ib and settles those that are done. */
static void check_ids(bench *b, idbuf *ib) {
  const char *params[1] = {ib->s};
  PGresult *r = PQexecParams(b->mon_conn,
                             "SELECT id::text, status FROM sagas "
                             "WHERE id = ANY($1::uuid[])",
                             1, NULL, params, NULL, NULL, 0);
  int64_t t_end = now_ns();
  pthread_mutex_lock(&b->mu);
  b->mon_queries++;
  pthread_mutex_unlock(&b->mu);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    fprintf(stderr, "bench: could not read saga statuses: %s",
            PQerrorMessage(b->mon_conn));
    PQclear(r);
    if (PQstatus(b->mon_conn) != CONNECTION_OK)
      PQreset(b->mon_conn);
    return;
  }
  pthread_mutex_lock(&b->mu);
  for (int i = 0; i < PQntuples(r); i++) {
    sk_status st;
    if (!parse_status(PQgetvalue(r, i, 1), &st) || !sk_status_is_settled(st))
      continue;
    entry *x = table_find(b, PQgetvalue(r, i, 0), false);
    if (x == NULL || x->done || x->settled)
      continue;
    if (x->registered) {
      complete(b, x, t_end, st);
    } else {
      x->settled = true; /* its starter completes it on registering */
      x->settled_ns = t_end;
      x->status = st;
    }
  }
  /* Drop candidates that are finished; they were kept for this list. */
  size_t k = 0;
  for (size_t i = 0; i < b->n_cands; i++) {
    entry *x = b->cands[i];
    if (x->done)
      free(x);
    else
      b->cands[k++] = x;
  }
  b->n_cands = k;
  pthread_mutex_unlock(&b->mu);
  PQclear(r);
}

static void *monitor_main(void *arg) {
  bench *b = arg;
  idbuf ib = {0};
  uint64_t seen = 0;
  int64_t last_sweep = now_ns();
  for (;;) {
    wait_commit(b->e, &seen);
    bool sweep = now_ns() - last_sweep >= (int64_t)SWEEP_MS * 1000000;
    ib.len = ib.n = 0;
    pthread_mutex_lock(&b->mu);
    if (b->monitor_stop) {
      pthread_mutex_unlock(&b->mu);
      break;
    }
    if (sweep) {
      for (size_t i = 0; i < b->n_buckets; i++)
        for (entry *x = b->buckets[i]; x != NULL; x = x->next)
          if (x->registered && !x->done)
            idbuf_add(&ib, x->id);
    } else {
      for (size_t i = 0; i < b->n_cands; i++)
        if (!b->cands[i]->settled && !b->cands[i]->done)
          idbuf_add(&ib, b->cands[i]->id);
    }
    pthread_mutex_unlock(&b->mu);
    if (sweep)
      last_sweep = now_ns();
    if (ib.n > 0)
      check_ids(b, &ib);
  }
  free(ib.s);
  return NULL;
}

/* ---- starters
 * ---------------------------------------------------------------- */

/* Takes the next ordinal (and, in monitor mode, a slot); -1 when done. */
static long long take_next(bench *b, bool slot) {
  pthread_mutex_lock(&b->mu);
  while (slot && b->free_slots == 0 && !b->abort)
    pthread_cond_wait(&b->slot_cv, &b->mu);
  long long i = -1;
  if (!b->abort && b->ph->next < b->ph->n) {
    i = b->ph->next++;
    if (slot)
      b->free_slots--;
  }
  pthread_mutex_unlock(&b->mu);
  return i;
}

/* Starts saga number i. On failure counts it as not completed. */
static int start_one(bench *b, long long i, char id[SK_ID_LEN], int64_t *t0) {
  char key[128];
  snprintf(key, sizeof(key), "%s-%lld", b->ph->key_prefix, i);
  sk_run_options ro = {.version = 1, .idempotency_key = key};
  sk_error err = {0};
  bool existed = false;
  *t0 = now_ns();
  int rc = sk_run_start(b->e, WORKFLOW, "{}", &ro, id, &existed, &err);
  if (rc == SK_OK && existed) {
    rc = SK_EEXIST;
    snprintf(err.message, sizeof(err.message),
             "idempotency key %s was used before", key);
  }
  if (rc != SK_OK) {
    pthread_mutex_lock(&b->mu);
    if (!b->reported_start_error)
      fprintf(stderr, "bench: could not start a saga: %s (%s)\n",
              err.message[0] ? err.message : sk_strerror(rc), sk_err_name(rc));
    b->reported_start_error = true;
    b->ph->n_bad++;
    b->ph->n_done++;
    b->free_slots++;
    pthread_cond_signal(&b->slot_cv);
    if (b->ph->n_done == b->ph->n)
      pthread_cond_broadcast(&b->done_cv);
    pthread_mutex_unlock(&b->mu);
  }
  return rc;
}

static void *starter_monitor_main(void *arg) {
  bench *b = arg;
  long long i;
  while ((i = take_next(b, true)) >= 0) {
    char id[SK_ID_LEN];
    int64_t t0;
    if (start_one(b, i, id, &t0) != SK_OK)
      continue;
    pthread_mutex_lock(&b->mu);
    entry *x = table_find(b, id, true);
    x->registered = true;
    x->ordinal = i;
    x->t0_ns = t0;
    if (x->settled)
      complete(b, x, x->settled_ns, x->status);
    pthread_mutex_unlock(&b->mu);
  }
  return NULL;
}

static void *starter_sdk_main(void *arg) {
  bench *b = arg;
  long long i;
  while ((i = take_next(b, false)) >= 0) {
    char id[SK_ID_LEN];
    int64_t t0;
    if (start_one(b, i, id, &t0) != SK_OK)
      continue;
    sk_status st = SK_STATUS_RUNNING;
    int rc = sk_saga_wait(b->e, id, (int64_t)b->o.timeout_s * 1000, &st);
    int64_t t_end = now_ns();
    pthread_mutex_lock(&b->mu);
    phase *ph = b->ph;
    ph->lat_ns[i] = t_end - t0;
    if (t_end > ph->t_end_ns)
      ph->t_end_ns = t_end;
    if (rc != SK_OK || st != SK_STATUS_COMPLETED)
      ph->n_bad++;
    ph->n_done++;
    if (ph->n_done == ph->n)
      pthread_cond_broadcast(&b->done_cv);
    pthread_mutex_unlock(&b->mu);
  }
  return NULL;
}

/* ---- one phase (warmup or measured)
 * ------------------------------------------ */

static void free_table(bench *b) {
  for (size_t i = 0; i < b->n_buckets; i++) {
    entry *x = b->buckets[i];
    while (x != NULL) {
      entry *nx = x->next;
      if (!x->candidate)
        free(x);
      x = nx;
    }
    b->buckets[i] = NULL;
  }
  for (size_t i = 0; i < b->n_cands; i++)
    free(b->cands[i]);
  b->n_cands = 0;
}

/* Runs ph to the end (or the timeout). Returns false on timeout. */
static bool run_phase(bench *b, phase *ph, const char *tag) {
  const options *o = &b->o;
  snprintf(ph->key_prefix, sizeof(ph->key_prefix), "bench-%ld-%" PRId64 "-%s",
           (long)getpid(), now_ns(), tag);
  ph->lat_ns = xcalloc((size_t)ph->n, sizeof(int64_t));
  b->ph = ph;
  b->abort = false;
  b->monitor_stop = false;
  b->free_slots = o->concurrency;
  b->track = o->wait == WAIT_MONITOR;

  pthread_t mon;
  if (b->track && pthread_create(&mon, NULL, monitor_main, b) != 0)
    die("could not start the monitor thread");
  int nthreads = o->wait == WAIT_MONITOR ? o->starters : o->concurrency;
  if (nthreads > ph->n)
    nthreads = (int)ph->n;
  pthread_t *th = xcalloc((size_t)nthreads, sizeof(pthread_t));
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, STARTER_STACK);
  ph->t_start_ns = now_ns();
  int started = 0;
  for (; started < nthreads; started++)
    if (pthread_create(&th[started], &attr,
                       b->track ? starter_monitor_main : starter_sdk_main,
                       b) != 0)
      break;
  pthread_attr_destroy(&attr);
  if (started == 0)
    die("could not start starter threads");

  struct timespec ts;
  deadline_in(&ts, o->timeout_s * 1000);
  bool ok = true;
  pthread_mutex_lock(&b->mu);
  while (ph->n_done < ph->n && ok)
    if (pthread_cond_timedwait(&b->done_cv, &b->mu, &ts) == ETIMEDOUT)
      ok = false;
  if (!ok) {
    b->abort = true;
    pthread_cond_broadcast(&b->slot_cv);
  }
  pthread_mutex_unlock(&b->mu);
  if (!ok)
    fprintf(stderr,
            "bench: %s phase timed out after %d s with %lld of %lld sagas "
            "settled\n",
            tag, o->timeout_s, ph->n_done, ph->n);
  /* In sdk mode a starter may still sit in sk_saga_wait (its own timeout
   * is the same), so joining is bounded. */
  for (int i = 0; i < started; i++)
    pthread_join(th[i], NULL);
  free(th);
  if (b->track) {
    pthread_mutex_lock(&b->mu);
    b->monitor_stop = true;
    pthread_mutex_unlock(&b->mu);
    pthread_join(mon, NULL);
  }
  pthread_mutex_lock(&b->mu);
  free_table(b);
  pthread_mutex_unlock(&b->mu);
  return ok;
}

/* ---- database statistics ---------------------------------------------------
 */

typedef struct dbstats {
  long long xact_commit, xact_rollback, next_xid;
  unsigned long long group_commits, ops_committed, dequeues;
} dbstats;

static PGresult *must_exec(PGconn *c, const char *sql, ExecStatusType want) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != want)
    die("statistics query failed: %s", PQerrorMessage(c));
  return r;
}

/* One transaction: clear this backend's stats snapshot, then read. The
 * transaction itself shows up in the NEXT read (it commits after it). */
static void read_stats(bench *b, PGconn *c, dbstats *s) {
  if (b->o.settle_ms > 0)
    sleep_ms(b->o.settle_ms);
  PQclear(must_exec(c, "BEGIN", PGRES_COMMAND_OK));
  PQclear(must_exec(c, "SELECT pg_stat_clear_snapshot()", PGRES_TUPLES_OK));
  PGresult *r =
      must_exec(c,
                "SELECT xact_commit, xact_rollback, "
                "pg_snapshot_xmax(pg_current_snapshot())::text::bigint "
                "FROM pg_stat_database WHERE datname = current_database()",
                PGRES_TUPLES_OK);
  if (PQntuples(r) != 1)
    die("pg_stat_database has no row for this database");
  s->xact_commit = atoll(PQgetvalue(r, 0, 0));
  s->xact_rollback = atoll(PQgetvalue(r, 0, 1));
  s->next_xid = atoll(PQgetvalue(r, 0, 2));
  PQclear(r);
  PQclear(must_exec(c, "COMMIT", PGRES_COMMAND_OK));
  s->group_commits = atomic_load(&b->e->n_commits);
  s->ops_committed = atomic_load(&b->e->n_ops_committed);
  s->dequeues = atomic_load(&b->e->n_dequeues);
}

/* ---- setup
 * ---------------------------------------------------------------------- */

static void setup_engine(bench *b) {
  const options *o = &b->o;
  sk_engine_options eo;
  sk_engine_options_init(&eo);
  eo.database_url = o->database_url;
  eo.data_dir = o->data_dir;
  eo.default_concurrency = o->workers;
  eo.log_level = 1;
  if (o->poll_ms > 0)
    eo.poll_interval_ms = o->poll_ms;
  snprintf(b->last_step, sizeof(b->last_step), "s%d", o->steps);
  b->e = bench_open_engine(&eo, WORKFLOW, TASK_TYPE, o->steps, noop_task, b);
}

/* ---- report
 * --------------------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static double pct_ms(const int64_t *sorted, size_t n, double q) {
  if (n == 0)
    return 0;
  size_t rank = (size_t)(q * (double)n + 0.999999); /* nearest rank */
  if (rank < 1)
    rank = 1;
  if (rank > n)
    rank = n;
  return (double)sorted[rank - 1] / 1e6;
}

static void report(const bench *b, const phase *ph, const dbstats *s0,
                   const dbstats *s1, long long own_xacts) {
  const options *o = &b->o;
  size_t n = 0;
  int64_t *lat = xcalloc((size_t)ph->n, sizeof(int64_t));
  for (long long i = 0; i < ph->n; i++)
    if (ph->lat_ns[i] > 0)
      lat[n++] = ph->lat_ns[i];
  qsort(lat, n, sizeof(int64_t), cmp_i64);
  double mean = 0;
  for (size_t i = 0; i < n; i++)
    mean += (double)lat[i] / 1e6;
  mean = n ? mean / (double)n : 0;
  double secs = (double)(ph->t_end_ns - ph->t_start_ns) / 1e9;
  double steps = (double)ph->n * o->steps;
  long long xacts = s1->xact_commit - s0->xact_commit;
  long long engine_xacts = xacts - own_xacts;
  long long writes = s1->next_xid - s0->next_xid;
  unsigned long long gc = s1->group_commits - s0->group_commits;
  unsigned long long ops = s1->ops_committed - s0->ops_committed;
  unsigned long long dq = s1->dequeues - s0->dequeues;
  long long completed = ph->n - ph->n_bad;
  double p50 = pct_ms(lat, n, 0.50), p99 = pct_ms(lat, n, 0.99),
         mx = n ? (double)lat[n - 1] / 1e6 : 0;
  /* Without the settle wait the counts are not all published yet. */
  char cps[32] = "null";
  if (o->settle_ms >= 10500)
    snprintf(cps, sizeof(cps), "%.4f", (double)engine_xacts / steps);
  if (o->json) {
    printf("{\"sagas\":%lld,\"steps\":%d,\"concurrency\":%d,\"workers\":%d,"
           "\"wait\":\"%s\",\"starters\":%d,\"completed\":%lld,"
           "\"not_completed\":%lld,\"elapsed_s\":%.3f,\"sagas_per_s\":%.1f,"
           "\"steps_per_s\":%.1f,\"latency_ms\":{\"p50\":%.2f,\"p99\":%.2f,"
           "\"max\":%.2f,\"mean\":%.2f},\"xact_commit\":%lld,"
           "\"bench_xacts\":%lld,\"xact_rollback\":%lld,"
           "\"commits_per_step\":%s,\"write_xacts\":%lld,"
           "\"write_xacts_per_step\":%.4f,\"group_commits\":%llu,"
           "\"group_commits_per_step\":%.4f,\"ops_per_group_commit\":%.1f,"
           "\"dequeues\":%llu,\"stats_settle_ms\":%d}\n",
           ph->n, o->steps, o->concurrency, o->workers,
           o->wait == WAIT_SDK ? "sdk" : "monitor",
           o->wait == WAIT_SDK ? o->concurrency : o->starters, completed,
           ph->n_bad, secs, (double)ph->n / secs, steps / secs, p50, p99, mx,
           mean, xacts, own_xacts, s1->xact_rollback - s0->xact_rollback, cps,
           writes, (double)writes / steps, gc, (double)gc / steps,
           gc ? (double)ops / (double)gc : 0.0, dq, o->settle_ms);
  } else {
    printf("bench_noop: %lld sagas x %d steps, %d in flight, %d workers, "
           "wait=%s\n",
           ph->n, o->steps, o->concurrency, o->workers,
           o->wait == WAIT_SDK ? "sdk" : "monitor");
    printf("  completed         %lld of %lld\n", completed, ph->n);
    printf("  elapsed           %.3f s\n", secs);
    printf("  throughput        %.1f sagas/s, %.1f steps/s\n",
           (double)ph->n / secs, steps / secs);
    printf("  saga latency      p50 %.2f ms, p99 %.2f ms, max %.2f ms "
           "(mean %.2f)\n",
           p50, p99, mx, mean);
    printf("  commits per step  %.4f  (%lld transactions in pg_stat_database"
           " minus %lld of the bench's own, / %.0f steps)\n",
           (double)engine_xacts / steps, xacts, own_xacts, steps);
    printf("  write xacts/step  %.4f  (%lld transaction ids assigned)\n",
           (double)writes / steps, writes);
    printf("  group commits     %.4f per step (%llu, %.1f ops each), "
           "%llu dequeues\n",
           (double)gc / steps, gc, gc ? (double)ops / (double)gc : 0.0, dq);
    if (o->settle_ms < 10500)
      printf("  note: --stats-settle-ms %d < 10500: pg_stat_database may "
             "not yet count the last second of work\n",
             o->settle_ms);
  }
  free(lat);
}

int main(int argc, char **argv) {
  bench b;
  memset(&b, 0, sizeof(b));
  bench_prog = "skald_bench";
  parse_args(argc, argv, &b.o);
  pthread_mutex_init(&b.mu, NULL);
  pthread_cond_init(&b.slot_cv, NULL);
  pthread_cond_init(&b.done_cv, NULL);
  b.n_buckets = 1024;
  while (b.n_buckets < (size_t)b.o.concurrency * 4)
    b.n_buckets *= 2;
  b.buckets = xcalloc(b.n_buckets, sizeof(entry *));

  setup_engine(&b);
  const char *conninfo = b.e->conninfo;
  PGconn *stats = PQconnectdb(conninfo);
  if (PQstatus(stats) != CONNECTION_OK)
    die("could not connect for statistics: %s", PQerrorMessage(stats));
  b.mon_conn = PQconnectdb(conninfo);
  if (PQstatus(b.mon_conn) != CONNECTION_OK)
    die("could not connect the monitor: %s", PQerrorMessage(b.mon_conn));

  bool ok = true;
  if (b.o.warmup > 0) {
    phase w = {.n = b.o.warmup};
    ok = run_phase(&b, &w, "warmup") && w.n_bad == 0;
    if (!ok)
      fprintf(stderr, "bench: %lld warmup sagas did not complete\n",
              w.n_bad + (w.n - w.n_done));
    free(w.lat_ns);
  }
  phase ph = {.n = b.o.sagas};
  dbstats s0 = {0}, s1 = {0};
  if (ok) {
    read_stats(&b, stats, &s0);
    long long q0 = b.mon_queries;
    ok = run_phase(&b, &ph, "run");
    long long own = b.mon_queries - q0 + 1; /* + the first stats read */
    read_stats(&b, stats, &s1);
    report(&b, &ph, &s0, &s1, own);
    if (ph.n_bad > 0 || ph.n_done < ph.n) {
      fprintf(stderr, "bench: %lld of %lld sagas did not complete\n",
              ph.n_bad + (ph.n - ph.n_done), ph.n);
      ok = false;
    }
  }
  free(ph.lat_ns);
  PQfinish(b.mon_conn);
  PQfinish(stats);
  sk_engine_close(b.e);
  free(b.buckets);
  free(b.cands);
  pthread_cond_destroy(&b.done_cv);
  pthread_cond_destroy(&b.slot_cv);
  pthread_mutex_destroy(&b.mu);
  return ok ? 0 : 1;
}
