/*
 * engine.h — the engine's internals, shared by core/, exec/job.c and sdk/.
 *
 * Threads and ownership:
 *   - The loop thread (sk_engine_run or the thread of sk_engine_start) owns
 *     everything marked [loop]: in-flight jobs, pending result ops, timers,
 *     breakers, the commit and dequeue work in flight.
 *   - Worker threads (one pool per bulkhead) run handlers and hand finished
 *     jobs back through `done` under `mu`, then wake the loop (uv_async).
 *   - API threads (sk_run_start, sk_saga_cancel...) hand operations to the
 *     loop through `api_ops` under `mu` and wait on their own condition; when
 *     the loop is not running they commit on `query_conn` themselves.
 *   - Database work runs on libuv's threadpool with a connection per kind of
 *     work (commit, dequeue, aux), so no connection is ever shared.
 */
#ifndef SKALD_CORE_ENGINE_H
#define SKALD_CORE_ENGINE_H

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <uv.h>

#include <skald/skald.h>

#include "exec/httpcall.h"
#include "exec/pool.h"
#include "health/health.h"
#include "obs/engine_metrics.h"
#include "saga/saga.h"
#include "sched/breaker.h"
#include "sched/placement.h"
#include "spec/def.h"
#include "store/pgembed.h"
#include "store/sagastore.h"

#define ENGINE_STATE_MAP(X)                                                    \
  X(IDLE, "idle") /* open, loop not running */                                 \
  X(RUNNING, "running")                                                        \
  X(STOPPING, "stopping")                                                      \
  X(STOPPED, "stopped")

typedef enum engine_state {
#define ENGINE_STATE_ENUM(name, str) ENGINE_STATE_##name,
  ENGINE_STATE_MAP(ENGINE_STATE_ENUM)
#undef ENGINE_STATE_ENUM
} engine_state;

/* What the metrics last showed of a breaker, so the loop updates them only
 * when the breaker changed (not on every dequeue and call). [loop] */
typedef struct breaker_shown {
  bool valid;
  breaker_state state;
  uint64_t opens;
} breaker_shown;

typedef struct handler {
  char *task_type;
  sk_task_fn fn;
  void *udata;
  breaker br; /* [loop] */
  breaker_shown shown;
} handler;

/* A circuit breaker for one HTTP host ("scheme://host:port"). */
typedef struct host_breaker {
  char key[HTTPCALL_KEY_MAX];
  breaker br;
  breaker_shown shown;
} host_breaker;

typedef struct bulkhead {
  char *name;
  int concurrency;
  pool *pool;
  int reserved;      /* [loop] slots promised to a commit's claims */
  int http_inflight; /* [loop] http calls running on the loop */
} bulkhead;

/* What a handler reports (sk_task_result in skald.h). */
struct sk_task_result {
  bool set;
  bool ok;
  char *output; /* normalised JSON text or NULL */
  char *err_type;
  char *err_message;
  bool retryable;
};

typedef enum job_state {
  JOB_QUEUED = 0,
  JOB_RUNNING,
  JOB_DONE,
  JOB_ABANDONED /* timed out or lease lost: its result is dropped */
} job_state;

/* One attempt of a task on this node. Owned by the loop; a worker touches
 * it only between pool start and pushing it to `done`. */
typedef struct exec_job {
  pool_link link; /* first: intrusive pool link */
  struct sk_engine *e;
  leased_task task;
  handler *h;
  bulkhead *bh;
  char idem_key[SK_ID_LEN + SK_NAME_MAX + 16]; /* ...:fallback */
  atomic_bool cancel;                          /* sk_task_cancelled() */
  atomic_int state;                            /* job_state */
  atomic_llong started_mono_ms;                /* 0 until a worker starts it */
  int64_t deadline_wall_ms;                    /* set when started */
  bool shutdown_cancel; /* [loop] asked to stop by sk_engine_stop */
  bool is_http;         /* run by httpcall on the loop, no handler */
  int host;             /* http: index in e->hosts, or -1 */
  unsigned n_gpus;      /* GPUs placed on (slots of the report) */
  unsigned gpu_idx[GPU_MAX];
  int64_t gpu_res_mb[GPU_MAX]; /* reserved on each, until inflight_remove */
  char gpus[GPU_MAX * 3 + 1];  /* "0,1": what sk_task_gpus() returns */
  bool gpu_moved;              /* [loop] cancelled: infra:gpu_unhealthy */
  struct sk_task_result result;
  struct exec_job *next_inflight; /* [loop] */
  struct exec_job *prev_inflight; /* [loop] */
  struct exec_job *next_done;     /* under e->mu */
} exec_job;

/* An operation handed to the loop by an API thread. */
typedef struct api_op {
  store_op op;
  bool done;
  int rc;
  sk_error err;
  pthread_cond_t cv;
  struct api_op *next;
} api_op;

struct sk_engine {
  sk_engine_options o;
  char *database_url;
  char *data_dir;
  char node[SK_NAME_MAX + 1];
  pgembed *pg;
  char *conninfo;

  handler *handlers;
  size_t n_handlers;
  bulkhead *bulkheads;
  size_t n_bulkheads;

  pthread_mutex_t wf_mu; /* guards wfs */
  def_workflow **wfs;
  size_t n_wfs, cap_wfs;

  pthread_mutex_t q_mu; /* guards query_conn */
  PGconn *query_conn;

  pthread_mutex_t mu;    /* guards done, api_ops, state, gen */
  pthread_cond_t gen_cv; /* signalled after every commit and on
                            every notification (long polls) */
  uint64_t gen;
  exec_job *done;
  api_op *api_head, *api_tail;
  _Atomic engine_state state;
  atomic_bool polls_closed; /* long polls answer at once (shutdown) */
  bool loop_running;
  pthread_t thread;
  bool thread_started;

  /* [loop] */
  uv_loop_t loop;
  uv_async_t wake;
  uv_timer_t poll_timer;
  uv_timer_t due_timer;
  uv_timer_t renew_timer;
  uv_timer_t watchdog_timer;
  uv_timer_t retry_timer;
  uv_poll_t listen_poll;
  httpcall http; /* http steps, on this loop */
  bool http_up;
  bool listen_active;      /* listen_poll is initialised (not closed) */
  bool listen_busy;        /* a reconnect of listen_conn is in flight */
  int64_t listen_tried_ms; /* last reconnect attempt (monotonic) */
  size_t isolate_left;     /* commit this many ops one at a time */
  /* Group commits in flight at once, each on its own connection: while one
   * is in the database the loop fills the next, so neither side idles.
   * Batches that touch the same saga serialise on its row lock. */
#define ENGINE_COMMIT_LANES 2
  struct state_cache *state_cache; /* projections between commits, or NULL */
  PGconn *commit_conn[ENGINE_COMMIT_LANES];
  bool commit_busy[ENGINE_COMMIT_LANES];
  PGconn *dequeue_conn, *aux_conn, *listen_conn;
  bool dequeue_busy, aux_busy;
  bool dequeue_wanted;
  bool dequeue_forced;
  int64_t duties_at_ms; /* last try of the singleton duties */ /* a timer asked
                      for a forced dequeue while one was in flight */
  bool commit_backoff;
  int64_t retry_delay_ms;
  int64_t due_at_ms;
  exec_job *inflight;
  size_t n_inflight;
  store_op *results; /* results waiting for a commit */
  size_t n_results, cap_results;
  store_lease *to_release; /* leases to hand back */
  int64_t *release_delay;  /* ... due again after this many ms */
  size_t n_to_release, cap_to_release;
  host_breaker *hosts; /* per HTTP host, grows; [loop] */
  size_t n_hosts;
  saga_rng rng;
  int handles_open;

  engine_metrics *metrics;

  /* GPUs: the sampler (always set after open; provider none = 0 GPUs), the
   * loop's latest copy of its report and this node's reservations. */
  health *gpu_health;
  bool gpu_sampling;                /* the sampler's threads run */
  node_gpu_report *gpu_snap;        /* [loop] */
  int64_t gpu_reserved_mb[GPU_MAX]; /* [loop] */
  unsigned gpu_holders[GPU_MAX];    /* [loop] */
  uv_timer_t gpu_timer;
  atomic_ullong n_gpu_moved; /* attempts moved off unhealthy GPUs */

  /* statistics */
  atomic_ullong n_commits, n_ops_committed, n_fenced, n_dequeues;
};

/* Locks the query connection for the caller (API threads share it) and
 * re-establishes it first if it was lost (a restarted database, a
 * terminated backend): a failed request is answered, the next one works. */
void engine_q_lock(struct sk_engine *e);
void engine_q_unlock(struct sk_engine *e);

/* ---- registry (engine.c) ---- */
handler *engine_find_handler(struct sk_engine *e, const char *task_type);
bulkhead *engine_find_bulkhead(struct sk_engine *e, const char *name);
/* A registered (or stored) definition, with a reference for the caller.
 * version 0 = latest. Loads from the database through conn when not known
 * (conn may be NULL: then query_conn is used). SK_ENOENT if none. */
int engine_get_workflow(struct sk_engine *e, PGconn *conn, const char *name,
                        int version, def_workflow **out, sk_error *err);

/* Validates a definition, refuses features this engine cannot run
 * (SK_ENOTSUP), stores it (immutable per name and version: SK_ECONFLICT)
 * and adds a copy to the registry. */
int engine_register_def(struct sk_engine *e, const def_workflow *src,
                        bool *created, sk_error *err);

/* Fills a placement view of the report r with this node's reservations
 * (NULL arrays: none) and the engine's placement options. */
void engine_gpu_view(const struct sk_engine *e, const node_gpu_report *r,
                     const int64_t *reserved_mb, const unsigned *holders,
                     placement_node *out);

/* Makes waiting and future long polls return at once, empty: called first
 * on shutdown so a remote worker's poll never holds the daemon up. */
void engine_close_polls(struct sk_engine *e);

/* True if a registered workflow runs task_type in a step whose fallback
 * has on_breaker_open (the loop then looks for such waiting tasks while
 * that type's breaker is open). */
bool engine_type_has_breaker_fallback(struct sk_engine *e,
                                      const char *task_type);

/* ---- loop (loop.c) ---- */
int loop_init(struct sk_engine *e);
/* Runs the loop until stopped; closes its handles before returning. */
int loop_run(struct sk_engine *e);
/* Wakes the loop (any thread). */
void loop_wake(struct sk_engine *e);
/* Hands an op to the loop (or commits it directly when the loop is not
 * running) and waits for it. The op's out fields are filled. */
int loop_submit_op(struct sk_engine *e, store_op *op, sk_error *err);

/* ---- jobs (exec/job.c) ---- */
exec_job *job_new(struct sk_engine *e, leased_task *t, handler *h,
                  bulkhead *bh);
void job_free(exec_job *j);
/* Runs the handler (pool_run_fn). */
void job_run(pool_link *link, void *ud);
/* Turns a finished job into a RESULT op (moves strings out of the job). */
void job_to_op(exec_job *j, store_op *op);
/* Builds a synthetic failure op for a lease (timeout, cancel, no handler). */
void job_failure_op(const leased_task *t, const char *type, const char *message,
                    bool retryable, store_op *op);
/* A successful op with null output (sleep tasks). */
void job_success_op(const leased_task *t, store_op *op);

/* sk_run_start that also says the saga's status as the commit left it
 * (for an existing key: the first saga's status then). sdk/src/runs.c. */
int engine_run_start(sk_engine *e, const char *workflow, const char *input_json,
                     const sk_run_options *o, char saga_id[SK_ID_LEN],
                     bool *existed, sk_status *status, sk_error *err);

#endif /* SKALD_CORE_ENGINE_H */
