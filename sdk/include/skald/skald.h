/*
 * skald.h — the public C SDK of Skald, a durable saga orchestration engine.
 *
 * A program that links libskald opens an engine (on its embedded PostgreSQL
 * or on a database URL), registers task handlers and workflows, starts runs
 * (sagas) and reads their state and event history. The engine records every
 * transition in an event-sourced log in PostgreSQL, so a saga survives any
 * crash of the process and resumes from its last committed transition.
 *
 * Conventions
 *   - Every call that can fail returns int: SK_OK (0) or a negative SK_E*
 *     code from the table below. sk_strerror() and sk_err_name() describe it.
 *   - Where detail matters, a call fills an optional sk_error (may be NULL).
 *   - "const char *" arguments are borrowed for the duration of the call.
 *     Strings returned through "char **" are owned by the caller and freed
 *     with sk_free().
 *   - JSON crosses this boundary as UTF-8 text.
 *   - The SDK never aborts on allocation failure; it returns SK_ENOMEM.
 *
 * Thread safety
 *   - sk_engine_* and sk_run_* / sk_saga_* functions may be called from any
 *     thread once the engine is open. Handlers and bulkheads must be
 *     registered before sk_engine_start() / sk_engine_run(); workflows may
 *     be registered at any time (a new version while the engine runs).
 *   - Handlers run on worker threads of their bulkhead, never on the thread
 *     that called sk_engine_run().
 */
#ifndef SKALD_H
#define SKALD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SKALD_VERSION_MAJOR 0
#define SKALD_VERSION_MINOR 1
#define SKALD_VERSION_PATCH 0
#define SKALD_VERSION_STRING "0.1.0"

#if defined(__GNUC__)
#define SK_EXPORT __attribute__((visibility("default")))
#else
#define SK_EXPORT
#endif

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

/* X(NAME, value, message). One table: the names, the numbers and the
 * messages that logs, the API and the SDK report are always the same. */
#define SK_ERRNO_MAP(X)                                                        \
  X(OK, 0, "success")                                                          \
  X(EINVAL, -1, "invalid argument")                                            \
  X(ENOMEM, -2, "out of memory")                                               \
  X(ENOENT, -3, "not found")                                                   \
  X(EEXIST, -4, "already exists")                                              \
  X(ECONFLICT, -5, "conflicts with existing state")                            \
  X(EDB, -6, "database error")                                                 \
  X(ETOOBIG, -7, "payload too large")                                          \
  X(ENOTSUP, -8, "not supported")                                              \
  X(ESTATE, -9, "not allowed in the current state")                            \
  X(ETIMEDOUT, -10, "timed out")                                               \
  X(EIO, -11, "input/output error")                                            \
  X(ESHUTDOWN, -12, "engine is shutting down")                                 \
  X(ELEASE, -13, "lease lost")                                                 \
  X(EUNAVAIL, -14, "service unavailable")                                      \
  X(EINVALSPEC, -15, "invalid workflow definition")                            \
  X(ENOHANDLER, -16, "no handler registered for task type")                    \
  X(EMIGRATION, -17, "database schema is newer than this binary")             \
  X(EJSON, -18, "malformed JSON")                                              \
  X(EINTERNAL, -19, "internal error")

typedef enum sk_errno {
#define SK_ERRNO_ENUM(name, val, msg) SK_##name = (val),
  SK_ERRNO_MAP(SK_ERRNO_ENUM)
#undef SK_ERRNO_ENUM
} sk_errno;

/* Human-readable message for a code ("invalid argument"); never NULL. */
SK_EXPORT const char *sk_strerror(int code);
/* Symbolic name for a code ("SK_EINVAL"); never NULL. */
SK_EXPORT const char *sk_err_name(int code);

#define SK_ERROR_MESSAGE_MAX 512
#define SK_ERROR_PATH_MAX 256

/* Detail for a failed call. code repeats the return value; message says what
 * went wrong in the PostgreSQL message style; sqlstate is set for database
 * errors; path is a JSON Pointer for definition errors (first problem). */
typedef struct sk_error {
  int code;
  char message[SK_ERROR_MESSAGE_MAX];
  char sqlstate[6];
  char path[SK_ERROR_PATH_MAX];
} sk_error;

/* Frees memory the SDK handed to the caller (char ** outputs). NULL is ok. */
SK_EXPORT void sk_free(void *p);

/* ------------------------------------------------------------------------ */
/* Limits                                                                    */
/* ------------------------------------------------------------------------ */

#define SK_NAME_MAX 128              /* workflow, step, task type, bulkhead */
#define SK_ID_LEN 37                 /* UUID text + NUL */
#define SK_PAYLOAD_MAX (1024 * 1024) /* input/output JSON, bytes */
#define SK_IDEMPOTENCY_KEY_MAX 256
#define SK_STEPS_MAX 256
#define SK_JSON_DEPTH_MAX 64

/* ------------------------------------------------------------------------ */
/* Engine                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct sk_engine sk_engine;

typedef struct sk_engine_options {
  /* libpq connection string; NULL → the embedded default: a private
   * PostgreSQL in data_dir, started on open and stopped on close. */
  const char *database_url;
  /* Where the embedded PostgreSQL lives. NULL → "./.skald". */
  const char *data_dir;
  /* This node's name in the nodes table. NULL → "<hostname>-<pid>". A
   * process started under the name of a dead one takes that process's
   * leases back at once (while a live process holds the name, nothing is
   * taken), so give long-lived nodes a stable name. */
  const char *node_name;
  /* How long a leased task stays with this node without renewal; the node
   * renews leases of running tasks every lease_ttl_ms / 3. After a crash,
   * other nodes take over the tasks once this passes. Default 15000. */
  int lease_ttl_ms;
  /* Upper bound on how long an idle engine waits before it looks for due
   * work it was not notified of (retries coming due). Default 1000. */
  int poll_interval_ms;
  /* Most results committed in one group commit. Default 1024. */
  int max_batch;
  /* Circuit breaker per task type: consecutive failures that open it, and
   * how long it stays open before one half-open probe. Defaults 5, 5000. */
  int breaker_failure_threshold;
  int breaker_open_ms;
  /* Worker threads of the "default" bulkhead. Default 8. */
  int default_concurrency;
  /* Log level: 0 error, 1 warning, 2 info, 3 debug. Default 2. */
  int log_level;
  /* By default, registering a workflow whose task types (steps and
   * compensations) have no handler on this engine, or whose bulkheads are
   * not declared on it, fails with SK_ENOHANDLER, which catches typos. Set
   * this when other nodes run those types. */
  bool allow_unknown_task_types;
  /* Completed, compensated and cancelled sagas last updated longer ago
   * than this many days are deleted (with their events) by whichever node
   * holds the cluster's singleton duties. 0 keeps them forever (default). */
  int retention_days;
  /* GPUs (docs/gpu.md). Where readings come from: "nvml", "fake" or
   * "none"; NULL → SKALD_GPU_PROVIDER, else nvml when libnvidia-ml loads,
   * else none (this node runs no GPU steps; nothing else changes). */
  const char *gpu_provider;
  /* How steps are placed on GPUs: 0 bin-pack (default), 1 spread.
   * SKALD_GPU_PLACEMENT=spread also selects spreading. */
  int gpu_placement;
  /* Use DEGRADED GPUs when healthy ones cannot fit a step (last resort). */
  bool gpu_allow_degraded;
  /* How often GPUs are sampled; 0 → 5000 ms. */
  int gpu_sample_interval_ms;
} sk_engine_options;

/* Fills o with the defaults above (all pointers NULL). */
SK_EXPORT void sk_engine_options_init(sk_engine_options *o);

/* Opens an engine: connects (starting the embedded PostgreSQL if no URL is
 * given), applies pending migrations under an advisory lock, and registers
 * this node. On success *out owns the engine; close it with
 * sk_engine_close(). Errors: SK_EINVAL, SK_EDB, SK_EMIGRATION, SK_EIO. */
SK_EXPORT int sk_engine_open(const sk_engine_options *o, sk_engine **out,
                             sk_error *err);

/* Declares a bulkhead: a named pool of `concurrency` worker threads. Steps
 * name their bulkhead; the default one is "default". Must be called before
 * the engine starts. Errors: SK_EINVAL, SK_EEXIST, SK_ESTATE. */
SK_EXPORT int sk_engine_add_bulkhead(sk_engine *e, const char *name,
                                     int concurrency);

/* Starts the engine loop on a background thread and returns. */
SK_EXPORT int sk_engine_start(sk_engine *e);
/* Runs the engine loop on the calling thread until sk_engine_stop(). */
SK_EXPORT int sk_engine_run(sk_engine *e);
/* Asks the engine to stop: no new tasks are leased, running handlers are
 * asked to cancel and waited for, their results are committed, and leases
 * of anything unfinished are handed back. Safe from any thread and from a
 * signal handler's deferred context (not from the handler itself). */
SK_EXPORT int sk_engine_stop(sk_engine *e);
/* Stops (if running), waits, releases everything and, for the embedded
 * default, stops the private PostgreSQL. NULL is ok. */
SK_EXPORT void sk_engine_close(sk_engine *e);

/* ------------------------------------------------------------------------ */
/* Task handlers                                                             */
/* ------------------------------------------------------------------------ */

/* What a handler is given. Everything is borrowed for the call. */
typedef struct sk_task {
  const char *saga_id;
  const char *workflow;
  const char *step;        /* step name */
  const char *task_type;   /* the registered type that selected the handler */
  const char *input;       /* JSON text of the rendered input */
  const char *idempotency_key; /* "<saga_id>:<step>:fwd|comp", stable */
  int attempt;             /* 1-based */
  bool is_compensation;
  int64_t deadline_ms;     /* wall clock (ms since epoch) the attempt ends */
  const char *gpus;        /* GPUs given to the attempt ("0,1"), or "" */
  const void *impl;        /* private: the attempt's cancel flag */
} sk_task;

/* The GPUs this attempt was given, CUDA_VISIBLE_DEVICES style ("0,1"), or
 * "" when the step asked for none (the same as t->gpus). Valid for the
 * handler's call, in-process and on remote workers alike. */
SK_EXPORT const char *sk_task_gpus(const sk_task *t);

/* What a handler reports. Fill it with sk_result_ok / sk_result_error. */
typedef struct sk_task_result sk_task_result;

/* True once the attempt should stop: the saga was cancelled, the attempt
 * timed out, the lease was lost or the engine is shutting down. A long
 * handler should check it at its checkpoints and return. */
SK_EXPORT bool sk_task_cancelled(const sk_task *t);

/* Success with an output (JSON text; NULL means null). Copies the output.
 * Errors: SK_EJSON (not valid JSON), SK_ETOOBIG (over SK_PAYLOAD_MAX),
 * SK_ENOMEM. On SK_EJSON / SK_ETOOBIG the result becomes a non-retryable
 * "InvalidOutput" failure, so bad output is never recorded as success. */
SK_EXPORT int sk_result_ok(sk_task_result *r, const char *output_json);
/* Failure. type names the error ("InsufficientFunds"); a type listed in the
 * step's non_retryable_errors is never retried, and retryable=false fails the
 * step at once. */
SK_EXPORT int sk_result_error(sk_task_result *r, const char *type,
                              const char *message, bool retryable);

/* A handler returns 0 after filling r. Returning non-zero without filling r
 * is reported as a retryable "HandlerError". A handler that fills nothing and
 * returns 0 succeeds with output null. */
typedef int (*sk_task_fn)(const sk_task *t, sk_task_result *r, void *udata);

/* Registers the handler for a task type. Must be called before start.
 * Errors: SK_EINVAL (bad name, NULL fn), SK_EEXIST, SK_ESTATE. */
SK_EXPORT int sk_engine_register_task(sk_engine *e, const char *task_type,
                                      sk_task_fn fn, void *udata);

/* ------------------------------------------------------------------------ */
/* Workflows                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct sk_workflow sk_workflow;

typedef enum sk_on_failure {
  SK_ON_FAILURE_COMPENSATE = 0,
  SK_ON_FAILURE_PAUSE = 1
} sk_on_failure;

/* A retry policy. Start from sk_retry_init(), which marks every field
 * "not set" (inherited from the workflow defaults, then the built-ins). */
typedef struct sk_retry {
  int max_attempts;             /* ≥ 1; 1 = no retry; 0 = not set */
  int64_t initial_interval_ms;  /* first backoff ≥ 0; -1 = not set */
  double backoff_coefficient;   /* ≥ 1; 0 = not set */
  int64_t max_interval_ms;      /* cap ≥ 0; -1 = not set */
  double jitter;                /* 0..1; -1 = not set */
  const char *const *non_retryable_errors; /* n strings; NULL = not set */
  size_t n_non_retryable;
} sk_retry;

/* Sets every field of r to "not set". */
SK_EXPORT void sk_retry_init(sk_retry *r);

/* Starts a workflow definition named `name` (pattern [a-z0-9_.-]{1,128}) at
 * `version` (≥ 1). Errors: SK_EINVAL, SK_ENOMEM. */
SK_EXPORT int sk_workflow_new(const char *name, int version, sk_workflow **out);
/* Builds a definition from a JSON workflow spec (workflow-spec.md). Every
 * problem is reported; err gets the first, and problems_json (if not NULL)
 * receives a JSON array of {"path","message"} for all of them. */
SK_EXPORT int sk_workflow_from_json(const char *spec_json, sk_workflow **out,
                                    char **problems_json, sk_error *err);
/* The definition as a JSON workflow spec (caller frees with sk_free). */
SK_EXPORT int sk_workflow_to_json(const sk_workflow *wf, char **json_out);
SK_EXPORT void sk_workflow_free(sk_workflow *wf);

SK_EXPORT int sk_workflow_set_description(sk_workflow *wf, const char *text);
SK_EXPORT int sk_workflow_set_on_failure(sk_workflow *wf, sk_on_failure f);
/* Whole-saga deadline (ms); 0 = none. */
SK_EXPORT int sk_workflow_set_timeout(sk_workflow *wf, int64_t timeout_ms);
SK_EXPORT int sk_workflow_set_default_retry(sk_workflow *wf, const sk_retry *r);
SK_EXPORT int sk_workflow_set_default_timeout(sk_workflow *wf,
                                              int64_t timeout_ms);

/* Appends a `task` step executed by the handler of task_type. */
SK_EXPORT int sk_workflow_add_step(sk_workflow *wf, const char *name,
                                   const char *task_type);
/* Appends a durable `sleep` step. */
SK_EXPORT int sk_workflow_add_sleep(sk_workflow *wf, const char *name,
                                    int64_t ms);
/* Per-step settings; `step` names a step added before. input_template is
 * templated JSON text (workflow-spec.md "Templates"). */
SK_EXPORT int sk_workflow_step_input(sk_workflow *wf, const char *step,
                                     const char *input_template);
SK_EXPORT int sk_workflow_step_compensate(sk_workflow *wf, const char *step,
                                          const char *task_type,
                                          const char *input_template);
SK_EXPORT int sk_workflow_step_retry(sk_workflow *wf, const char *step,
                                     const sk_retry *r);
SK_EXPORT int sk_workflow_step_compensation_retry(sk_workflow *wf,
                                                  const char *step,
                                                  const sk_retry *r);
SK_EXPORT int sk_workflow_step_timeout(sk_workflow *wf, const char *step,
                                       int64_t timeout_ms);
SK_EXPORT int sk_workflow_step_bulkhead(sk_workflow *wf, const char *step,
                                        const char *bulkhead);
SK_EXPORT int sk_workflow_step_compensate_on_failure(sk_workflow *wf,
                                                     const char *step,
                                                     bool on);

/* Validates the definition and registers it with the engine (and the
 * database, where (name, version) is immutable). Registering the same
 * definition again is fine; a different one for an existing (name, version)
 * fails with SK_ECONFLICT. Invalid: SK_EINVALSPEC with err->path. A task
 * type with no handler here: SK_ENOHANDLER (see allow_unknown_task_types).
 * Steps of kinds this engine cannot run yet (parallel, http, fallback):
 * SK_ENOTSUP. The engine keeps its own copy; wf stays the caller's. */
SK_EXPORT int sk_engine_register_workflow(sk_engine *e, const sk_workflow *wf,
                                          sk_error *err);

/* ------------------------------------------------------------------------ */
/* Runs (sagas)                                                              */
/* ------------------------------------------------------------------------ */

typedef enum sk_status {
  SK_STATUS_RUNNING = 0,
  SK_STATUS_COMPENSATING,
  SK_STATUS_COMPLETED,
  SK_STATUS_COMPENSATED,
  SK_STATUS_FAILED,
  SK_STATUS_PAUSED,
  SK_STATUS_CANCELLED
} sk_status;

/* "running", "compensating", ... */
SK_EXPORT const char *sk_status_name(sk_status s);
/* True for completed, compensated, failed, paused and cancelled. */
SK_EXPORT bool sk_status_is_settled(sk_status s);

typedef struct sk_run_options {
  int version;                  /* 0 = latest registered */
  const char *idempotency_key;  /* NULL = none */
} sk_run_options;

/* Starts a saga of `workflow` with input (JSON object text; NULL = {}).
 * saga_id receives the new saga's id — or, if idempotency_key was used
 * before for this workflow, the first saga's id, with *existed = true.
 * The start is durable when this returns. Errors: SK_EINVAL, SK_ENOENT
 * (workflow), SK_EJSON, SK_ETOOBIG, SK_EDB, SK_ESHUTDOWN. */
SK_EXPORT int sk_run_start(sk_engine *e, const char *workflow,
                           const char *input_json, const sk_run_options *o,
                           char saga_id[SK_ID_LEN], bool *existed,
                           sk_error *err);

/* Requests cancellation. Errors: SK_ENOENT, SK_ESTATE (already finished). */
SK_EXPORT int sk_saga_cancel(sk_engine *e, const char *saga_id, sk_error *err);

typedef struct sk_replay_options {
  /* paused: resume at this step (an earlier one than the failed step, or
   * NULL for the failed step itself); its steps from there on run again */
  const char *from_step;
  /* paused: the input (JSON) of the step it resumes at, correcting it */
  const char *step_input;
  /* compensated / cancelled: the input (JSON object) of the new run; NULL
   * keeps the old saga's input */
  const char *input;
} sk_replay_options;

/* Replays a saga that needs it:
 *   failed      → its stuck compensation is retried (attempts afresh);
 *   paused      → it resumes forward from the failed step (or from_step);
 *   compensated, cancelled → a new run of the same version starts, with
 *                 the same or a corrected input, linked both ways
 *                 (replay_of / replayed_by); new_saga_id receives its id.
 * new_saga_id (may be NULL) is set to "" for in-place replays. Errors:
 * SK_EINVAL (options that do not fit the status, bad JSON), SK_ENOENT,
 * SK_ESTATE (running, compensating or completed: nothing to replay). */
SK_EXPORT int sk_saga_replay(sk_engine *e, const char *saga_id,
                             const sk_replay_options *o,
                             char new_saga_id[SK_ID_LEN], sk_error *err);

/* The saga's current status. Errors: SK_EINVAL, SK_ENOENT, SK_EDB. */
SK_EXPORT int sk_saga_status(sk_engine *e, const char *saga_id,
                             sk_status *out);
/* Waits until the saga is settled or timeout_ms passes (SK_ETIMEDOUT). */
SK_EXPORT int sk_saga_wait(sk_engine *e, const char *saga_id,
                           int64_t timeout_ms, sk_status *out);
/* The saga view as JSON, the same as GET /v1/sagas/{id}: status, steps
 * (status, attempts, outputs, errors, timings), input, error, links
 * (replay_of / replayed_by) and "tasks": the work queued or running for it
 * (attempt, lease owner, and "waiting_for" when a GPU step fits no node). */
SK_EXPORT int sk_saga_get_json(sk_engine *e, const char *saga_id,
                               char **json_out);
/* The saga's events with seq > after_seq, in order, as a JSON array. */
SK_EXPORT int sk_saga_events_json(sk_engine *e, const char *saga_id,
                                  int64_t after_seq, char **json_out);

/* ------------------------------------------------------------------------ */
/* Remote workers                                                            */
/* ------------------------------------------------------------------------ */

/* A remote worker runs task handlers for a Skald daemon over HTTP
 * (POST /v1/tasks/poll, heartbeat, complete, fail), with no database
 * access. Handlers are the same sk_task_fn as in-process ones. While a
 * handler runs, its lease is renewed; if the lease is lost or the saga is
 * cancelled, sk_task_cancelled() turns true and its result is refused by
 * the daemon (fencing). */
typedef struct sk_worker sk_worker;

typedef struct sk_worker_options {
  const char *url;        /* the daemon, e.g. "http://127.0.0.1:7070" */
  const char *api_key;    /* NULL when the daemon requires none */
  const char *worker_id;  /* NULL → "<hostname>-<pid>" */
  int concurrency;        /* handler threads; default 4 */
  int poll_wait_ms;       /* long-poll wait; default 10000 */
  int log_level;          /* as sk_engine_options; default 2 */
  /* The GPUs this worker offers, reported in every poll as a JSON array:
   * [{"index": 0, "state": "healthy", "memory_total_mb": 81920,
   *   "memory_free_mb": 80000, "utilization": 3}, ...]. NULL: none, so the
   * worker receives only steps without GPU needs. A GPU step's handler
   * learns which GPUs it got from sk_task_gpus(). */
  const char *gpus_json;
} sk_worker_options;

SK_EXPORT void sk_worker_options_init(sk_worker_options *o);
/* Errors: SK_EINVAL (no url, bad settings), SK_ENOMEM. */
SK_EXPORT int sk_worker_new(const sk_worker_options *o, sk_worker **out,
                            sk_error *err);
/* Before sk_worker_run. Errors: SK_EINVAL, SK_EEXIST, SK_ESTATE. */
SK_EXPORT int sk_worker_register_task(sk_worker *w, const char *task_type,
                                      sk_task_fn fn, void *udata);
/* Polls and runs tasks until sk_worker_stop(); returns SK_OK after a stop.
 * A daemon that cannot be reached is retried with backoff. */
SK_EXPORT int sk_worker_run(sk_worker *w);
/* Asks run to return once running handlers finish (async-signal-safe). */
SK_EXPORT int sk_worker_stop(sk_worker *w);
SK_EXPORT void sk_worker_free(sk_worker *w);

#ifdef __cplusplus
}
#endif

#endif /* SKALD_H */
