/*
 * chaos.h — fault injection infrastructure for tests/chaos/.
 *
 *   - chaos_pg: a private PostgreSQL cluster per scenario (initdb, start,
 *     stop/kill, restart, promote, a synchronous streaming standby made with
 *     pg_basebackup). When the test runs as root the server programs run as
 *     the "postgres" user, as scripts/test.sh and engine/store/pgembed.c do.
 *   - chaos_fleet: N tests/programs/crash_worker processes on one database
 *     and one execution log, killed, stopped, resumed and respawned.
 *   - chaos_flap: an HTTP target in the test process that flaps (refuses
 *     connections, answers 503, resets, hangs past the step timeout) and
 *     records every effect per Idempotency-Key.
 *   - chaos_check_sagas: the sagacheck invariants for any linear workflow.
 *   - budgets: bounded mode (CI) by default; SKALD_CHAOS_SOAK_FAULTS=N and/or
 *     SKALD_CHAOS_SOAK_SECONDS=S make every scenario repeat rounds until
 *     its share of the fault budget or of the time is spent.
 *   - SKALD_CHAOS_REPORT=FILE appends one line of figures per scenario run.
 *
 * Every wait is bounded. Everything a scenario starts (clusters, processes,
 * temp directories) is stopped and removed by chaos_env_cleanup, which the
 * tests call from .fini so it runs on failure too.
 *
 * Thread: the test's, except chaos_flap (its own threads; its counters are
 * atomic and its effect table is locked).
 */
#ifndef SKALD_TESTS_CHAOS_H
#define SKALD_TESTS_CHAOS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- clock, randomness, budgets ---- */

int64_t chaos_now_ms(void);
void chaos_sleep_ms(long ms);
/* The seed (SKALD_TEST_SEED or time^pid), logged so a failure can be
 * replayed; seeds rand(). */
unsigned chaos_seed(void);
/* Uniform in [lo, hi]. */
long chaos_rand(long lo, long hi);

/* True when a soak budget is set. */
bool chaos_soak(void);
/* Per scenario: the fault budget (bounded: bounded_faults; soak:
 * SKALD_CHAOS_SOAK_FAULTS / n_scenarios, at least bounded_faults) and the
 * time budget in ms (bounded: 0 = one round; soak:
 * SKALD_CHAOS_SOAK_SECONDS*1000 / n_scenarios). */
long chaos_fault_budget(long bounded_faults);
int64_t chaos_time_budget_ms(void);
/* True while another round should run after `rounds` done with `faults`
 * injected since started_ms. */
bool chaos_more_rounds(int rounds, long faults, long budget,
                       int64_t started_ms);

/* ---- figures ---- */

enum chaos_fault {
  FAULT_SIGKILL_NODE,
  FAULT_TERMINATE_BACKENDS,
  FAULT_PG_RESTART_FAST,
  FAULT_PG_RESTART_IMMEDIATE,
  FAULT_SIGSTOP_PAST_LEASE,
  FAULT_HTTP_REFUSE,
  FAULT_HTTP_503,
  FAULT_HTTP_RESET,
  FAULT_HTTP_HANG,
  FAULT_PG_FAILOVER,
  FAULT_SIGKILL_DAEMON,
  FAULT_KINDS
};

typedef struct chaos_stats {
  const char *scenario;
  long faults[FAULT_KINDS];
  long rounds;
  long sagas, completed, compensated;
  long executions;       /* step/compensation executions logged */
  long respawns;         /* worker processes started again */
  long lost, duplicated, out_of_order; /* always 0 when the checks pass */
  int64_t started_ms;
  /* load scenario only */
  long requests, request_errors, accepted;
  double p50_ms, p99_ms, max_ms;
} chaos_stats;

void chaos_stats_init(chaos_stats *s, const char *scenario);
long chaos_stats_faults(const chaos_stats *s);
const char *chaos_fault_name(int kind);
/* Logs the figures and appends them to SKALD_CHAOS_REPORT when set. */
void chaos_stats_report(const chaos_stats *s);

/* ---- the environment of one scenario ---- */

typedef struct chaos_pg {
  char data[320];     /* data directory */
  char log[320];
  char sock[320];     /* unix socket directory */
  int port;
  bool running;
  bool inited;
} chaos_pg;

#define CHAOS_MAX_PG 2

typedef struct chaos_env {
  char dir[256];      /* /tmp/skald-chaos-XXXXXX, removed by cleanup */
  chaos_pg pg[CHAOS_MAX_PG];
  pid_t children[16]; /* processes to kill on cleanup */
  size_t n_children;
} chaos_env;

/* Makes the temp directory (owned by postgres when root). */
void chaos_env_init(chaos_env *e);
/* Kills registered children, stops clusters (fast, then immediate) and
 * removes the directory; keeps it when SKALD_TEST_KEEP is set. Safe to call
 * twice and on a half-made environment. */
void chaos_env_cleanup(chaos_env *e);
void chaos_env_track(chaos_env *e, pid_t pid);
void chaos_env_untrack(chaos_env *e, pid_t pid);

/* initdb into e->dir/<name>; a free port. Aborts the test on failure. */
void chaos_pg_init(chaos_env *e, chaos_pg *pg, const char *name);
/* Starts it (extra: more "-c k=v" server options, may be NULL); waits until
 * it accepts connections (or, for a standby, until it runs). Returns 0, or
 * -1 after logging the server log's tail. */
int chaos_pg_start(chaos_pg *pg, const char *extra);
/* pg_ctl stop -m fast|immediate. */
int chaos_pg_stop(chaos_pg *pg, const char *mode);
int chaos_pg_restart(chaos_pg *pg, const char *mode, const char *extra);
int chaos_pg_promote(chaos_pg *pg);
/* A streaming standby of primary named application_name "standby1" into
 * e->dir/<name> with pg_basebackup -R, started. Aborts on failure. */
void chaos_pg_standby(chaos_env *e, chaos_pg *standby, const chaos_pg *primary,
                      const char *name, const char *extra);
/* "host=127.0.0.1 port=P user=postgres dbname=postgres connect_timeout=3" */
void chaos_pg_conninfo(const chaos_pg *pg, char *out, size_t len);

/* Terminates every other backend on conninfo's database; the number
 * terminated, or -1 when it could not connect. */
int chaos_terminate_backends(const char *conninfo);
/* Waits up to timeout_ms for conninfo to accept a read-write connection. */
bool chaos_wait_writable(const char *conninfo, int timeout_ms);

/* ---- crash_worker fleets ---- */

#define CHAOS_MAX_NODES 4

typedef struct chaos_fleet {
  chaos_env *env;
  char db[512];
  char log[320];     /* execution log (EXEC lines) */
  char out[320];     /* workers' stderr */
  char prefix[32];
  int sagas, lease_ms, workers, n;
  pid_t pid[CHAOS_MAX_NODES];
  bool stopped[CHAOS_MAX_NODES];
  bool done[CHAOS_MAX_NODES];  /* exited 0: every saga settled */
  long respawns;
} chaos_fleet;

void chaos_fleet_init(chaos_fleet *f, chaos_env *e, const char *db,
                      const char *prefix, int n_nodes, int sagas,
                      int lease_ms);
void chaos_fleet_spawn(chaos_fleet *f, int node);
void chaos_fleet_start(chaos_fleet *f);
/* Reaps exited nodes; a node that exited badly (e.g. it lost the database
 * while opening) is started again unless every saga is done. True once
 * some node exited 0 (all sagas settled). */
bool chaos_fleet_poll(chaos_fleet *f);
void chaos_fleet_kill(chaos_fleet *f, int node);
/* A running, not stopped node at random, or -1. */
int chaos_fleet_pick(const chaos_fleet *f);
long chaos_fleet_lines(const chaos_fleet *f);
/* Waits until the execution log grew by `lines` (bounded). */
void chaos_fleet_wait_progress(chaos_fleet *f, long lines, int timeout_ms);
/* After the faults: resumes stopped nodes, lets every node finish, starts a
 * fresh node when none is alive, and requires an exit 0 within timeout_s
 * (the test fails naming stuck sagas otherwise). Then kills whatever is
 * left. */
void chaos_fleet_drain(chaos_fleet *f, int timeout_s);
void chaos_fleet_dump(const chaos_fleet *f);

/* ---- invariant checks for any linear workflow ---- */

/* Expected fate of saga index i: 0 = completes, k = step k (1-based)
 * fails for good so steps 1..k-1 are compensated newest-first. */
typedef int (*chaos_expect_fn)(int i);

/* Checks sagas with idempotency keys "<prefix>-<i>", i < n, of workflow:
 * every one exists and is terminal with the status its input dictates,
 * contiguous seq ending in one terminal event, each step completed exactly
 * once (or not at all past the failure), compensations exactly for the
 * completed steps newest-first, projections == fold of events, and no task
 * left for them. ids (may be NULL) gets each saga id (37 bytes each). */
void chaos_check_sagas(const char *conninfo, const char *workflow,
                       const char *prefix, int n, int steps,
                       chaos_expect_fn expect, char (*ids)[37],
                       chaos_stats *st);

/* crash_wf's fate of saga i (see tests/programs/crash_worker.c). */
extern chaos_expect_fn chaos_crash_expect;

/* One fault on a running fleet; returns the number of faults injected
 * (already counted in st->faults by the injector). */
typedef long (*chaos_inject_fn)(chaos_fleet *f, chaos_stats *st, void *ud);

/* One round of crash_wf under faults: starts `nodes` crash_workers on db
 * for sagas "<prefix>-0..", injects up to fault_budget faults with random
 * gaps in [min_gap_ms, max_gap_ms] while work remains, drains (every saga
 * must settle once the faults stop), then runs chaos_check_sagas and
 * sagacheck_crash_wf (idempotency keys of every execution). */
void chaos_crash_round(chaos_env *e, const char *db, const char *prefix,
                       int nodes, int sagas, int lease_ms, long fault_budget,
                       long min_gap_ms, long max_gap_ms, chaos_inject_fn inject,
                       void *ud, chaos_stats *st);

/* ---- a flapping HTTP target ---- */

enum chaos_flap_mode {
  FLAP_OK, FLAP_REFUSE, FLAP_503, FLAP_RESET, FLAP_HANG
};

typedef struct chaos_flap chaos_flap;

/* Listens on 127.0.0.1:<free port>:
 *   POST /res/<name>     → 201 {"id":"<name>-<n>"} (first answer repeated
 *                          for a repeated Idempotency-Key);
 *   DELETE /res/<id>     → 200 {"cancelled":"<id>"} (same);
 *   POST /fail           → 402 {"error":"declined"} (not retryable).
 * In FLAP_HANG the effect is applied but the answer never comes (the
 * connection is held past any step timeout): a lost response. */
chaos_flap *chaos_flap_start(void);
int chaos_flap_port(const chaos_flap *f);
void chaos_flap_set(chaos_flap *f, enum chaos_flap_mode m);
/* Effects applied for key (creates or cancels), and requests seen. */
int chaos_flap_effects(chaos_flap *f, const char *key);
long chaos_flap_requests(const chaos_flap *f);
/* Keys that carried a different path for the same key (must be 0). */
long chaos_flap_key_conflicts(const chaos_flap *f);
void chaos_flap_stop(chaos_flap *f);

#endif /* SKALD_TESTS_CHAOS_H */
