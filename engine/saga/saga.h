/*
 * saga.h — the saga state machine: state, events, and the pure decider.
 *
 * A saga's state is the fold of its events: saga_evolve(state, event) applies
 * one event. The decider functions (saga_decide_*) look at a definition, the
 * current state, one input (start, a task result, a cancel request, a replay
 * request) and the clock passed in, and return the events to append and the
 * tasks to enqueue. They do no I/O, read no clock and no global state: the
 * same inputs always give the same decision (jitter comes from the caller's
 * rng state), so every transition is tested without PostgreSQL.
 *
 * Event sequence numbers: a decision's events are numbered st->last_seq + 1,
 * + 2, ... in order. saga_apply() evolves a state through a decision.
 *
 * Step indexes (flattening). A definition's steps form a tree: a parallel
 * group holds branches, each a list of steps (which may hold groups). The
 * saga numbers every step of the tree, depth first in declaration order:
 * a group comes first, then branch 0's steps (each followed by its own
 * subtree), then branch 1's, ... then the step after the group. Example:
 *   steps [a, p{[x, y], [z]}, b]  ->  0 a, 1 p, 2 x, 3 y, 4 z, 5 b
 * with parent (flat index of the enclosing group, -1 at top level) and
 * branch (index of the branch in that group, -1 at top level):
 *   parent [-1, -1, 1, 1, 1, -1], branch [-1, -1, 0, 0, 1, -1].
 * Every step index in events, tasks, results and saga_state.steps is such a
 * flat index; names are unique workflow-wide, so ${steps.NAME.output} may
 * name nested steps. A group is a step entry of its own: scheduled when it
 * is reached (its first branch steps are scheduled in the same decision),
 * completed when all its branches are, failed when a step under it failed
 * for good (or a cancel stopped it) and nothing under it is in flight.
 *
 * Completion order: every step records finished_seq, the seq of the event
 * that ended its forward run (StepCompleted, or a final StepFailed).
 * Compensation runs newest first by finished_seq (for a sequential saga
 * that is the reverse step order).
 *
 * Thread: any; nothing here is shared.
 */
#ifndef SKALD_SAGA_SAGA_H
#define SKALD_SAGA_SAGA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spec/def.h"

/* ---- statuses ---------------------------------------------------------- */

#define SAGA_STATUS_MAP(X)                                                     \
  X(RUNNING, "running")                                                        \
  X(COMPENSATING, "compensating")                                              \
  X(COMPLETED, "completed")                                                    \
  X(COMPENSATED, "compensated")                                                \
  X(FAILED, "failed")                                                          \
  X(PAUSED, "paused")                                                          \
  X(CANCELLED, "cancelled")

/* Same order as sk_status in skald.h. */
typedef enum saga_status {
#define SAGA_STATUS_ENUM(name, str) SAGA_STATUS_##name,
  SAGA_STATUS_MAP(SAGA_STATUS_ENUM)
#undef SAGA_STATUS_ENUM
} saga_status;

#define STEP_STATUS_MAP(X)                                                     \
  X(PENDING, "pending")           /* not reached yet */                        \
  X(SCHEDULED, "scheduled")       /* a forward attempt is queued/running */    \
  X(COMPLETED, "completed")       /* forward succeeded (or by fallback) */     \
  X(FAILED, "failed")             /* forward failed for good */                \
  X(COMPENSATING, "compensating") /* a compensation attempt queued/running */  \
  X(COMPENSATED, "compensated")   /* compensation succeeded */                 \
  X(COMPENSATION_FAILED,                                                       \
    "compensation_failed") /* exhausted: needs operator */                     \
  X(SKIPPED, "skipped")    /* never ran (saga ended before it) */

typedef enum step_status {
#define STEP_STATUS_ENUM(name, str) STEP_STATUS_##name,
  STEP_STATUS_MAP(STEP_STATUS_ENUM)
#undef STEP_STATUS_ENUM
} step_status;

/* ---- events ------------------------------------------------------------ */

/* Payloads (JSON objects) per type:
 *  SagaStarted            {"id","workflow","version","input",
 *                          "steps":[names, flat order],"deadline_ms"(0=none),
 *                          "idempotency_key"(or null),"replay_of"(or null)}
 *                          plus, only when the workflow has a parallel
 *                          group, "parents":[int] and "branches":[int]
 *                          (same length as steps; absent = all -1): the
 *                          tree, so a fold needs no definition.
 *                          ("id" sets st->id; without it st->id is kept)
 *  StepScheduled          step, attempt; {"available_at_ms"} (a group:
 *                          attempt 1, followed by its branches' first steps)
 *  StepCompleted          step, attempt; {"output","by_fallback":bool}
 *                          by_fallback: the step's fallback succeeded;
 *                          attempt is then the fallback's attempt. A group
 *                          completes with attempt 1 and as output the
 *                          object {name: output} of its branches' steps.
 *  StepFailed             step, attempt; {"error":{type,message,retryable},
 *                          "final":bool}  final = the step failed for good;
 *                          attempt 0 = failed before it was ever scheduled
 *                          (TemplateError, SagaTimeout). A non-final one
 *                          before FallbackScheduled records the forward
 *                          error that sends the step to its fallback; a
 *                          final one after FallbackFailed{final} carries
 *                          the forward attempt count and the fallback error.
 *  FallbackScheduled      step, attempt 1; {"available_at_ms"} the step's
 *                          fallback is queued (task kind fallback)
 *  FallbackFailed         step, attempt; {"error":{...},"final":bool}
 *  RetryScheduled         step, attempt (the next one);
 *                          {"kind":"fwd"|"comp"|"fallback","available_at_ms",
 *                          "delay_ms"}
 *  CompensationStarted    step -1; {"reason": error object} the saga turns
 *                          to undoing its completed steps
 *  CompensationScheduled  step, attempt; {"available_at_ms"}
 *  CompensationCompleted  step, attempt; {"output"}
 *  CompensationFailed     step, attempt; {"error":{...},"final":bool}
 *  SagaCompleted          {"output": object of step outputs by name}
 *  SagaCompensated        {}
 *  SagaFailed             {"error":{...}} a compensation failed for good
 *  SagaPaused             {"error":{...}} on_failure = pause
 *  SagaCancelled          {}  cancelled and fully compensated
 *  CancelRequested        {"reason"}
 *  Replayed               {"mode":"resume_compensation"|"resume"|
 *                          "new_run", "from_step", "new_saga_id"(new_run)}
 *                          resume also carries "step_input" (JSON or null):
 *                          the input override of from_step's task
 *  ReplayLinked           {"replayed_by": id} on the old saga of a new run
 */
#define SAGA_EVENT_MAP(X)                                                      \
  X(SAGA_STARTED, "SagaStarted")                                               \
  X(STEP_SCHEDULED, "StepScheduled")                                           \
  X(STEP_COMPLETED, "StepCompleted")                                           \
  X(STEP_FAILED, "StepFailed")                                                 \
  X(RETRY_SCHEDULED, "RetryScheduled")                                         \
  X(COMPENSATION_STARTED, "CompensationStarted")                               \
  X(COMPENSATION_SCHEDULED, "CompensationScheduled")                           \
  X(COMPENSATION_COMPLETED, "CompensationCompleted")                           \
  X(COMPENSATION_FAILED, "CompensationFailed")                                 \
  X(SAGA_COMPLETED, "SagaCompleted")                                           \
  X(SAGA_COMPENSATED, "SagaCompensated")                                       \
  X(SAGA_FAILED, "SagaFailed")                                                 \
  X(SAGA_PAUSED, "SagaPaused")                                                 \
  X(SAGA_CANCELLED, "SagaCancelled")                                           \
  X(CANCEL_REQUESTED, "CancelRequested")                                       \
  X(REPLAYED, "Replayed")                                                      \
  X(REPLAY_LINKED, "ReplayLinked")                                             \
  X(FALLBACK_SCHEDULED, "FallbackScheduled")                                   \
  X(FALLBACK_FAILED, "FallbackFailed")

typedef enum saga_event_type {
#define SAGA_EVENT_ENUM(name, str) SAGA_EV_##name,
  SAGA_EVENT_MAP(SAGA_EVENT_ENUM)
#undef SAGA_EVENT_ENUM
      SAGA_EV__COUNT
} saga_event_type;

const char *saga_status_name(saga_status s);
int saga_status_parse(const char *s, saga_status *out); /* 0 / SK_EINVAL */
const char *step_status_name(step_status s);
int step_status_parse(const char *s, step_status *out);
const char *saga_event_name(saga_event_type t);
int saga_event_parse(const char *s, saga_event_type *out);
bool saga_status_settled(saga_status s); /* not running/compensating */

typedef struct saga_event {
  int64_t seq;
  saga_event_type type;
  int step;      /* flat step index (see top), -1 if none */
  int attempt;   /* 0 if none */
  char *node;    /* node that produced it, or NULL */
  char *payload; /* JSON object text, never NULL once built */
  int64_t ts_ms; /* engine clock, ms since epoch */
} saga_event;

void saga_event_clear(saga_event *ev);

/* ---- state -------------------------------------------------------------- */

typedef struct saga_step_state {
  char *name;
  step_status status;
  int parent;              /* flat index of the enclosing group, -1 if none */
  int branch;              /* branch index in that group, -1 if none */
  int attempts;            /* forward attempts scheduled so far */
  int comp_attempts;       /* compensation attempts scheduled so far */
  int fb_attempts;         /* fallback attempts scheduled so far (> 0: the
                              step runs its fallback now / ran it) */
  char *output;            /* JSON text of the forward output, or NULL */
  char *error;             /* JSON of the last forward (or fallback) error */
  char *comp_error;        /* JSON of the last compensation error, or NULL */
  bool by_fallback;        /* completed by its fallback */
  int64_t scheduled_ms;    /* first scheduling of the current phase */
  int64_t finished_ms;     /* forward completion/failure */
  int64_t finished_seq;    /* seq of the event that ended the forward run
                              (StepCompleted / final StepFailed), 0 if none */
  int64_t available_at_ms; /* when the queued attempt may run */
  char *input_override;    /* JSON input set by a resume replay (step_input)
                              for this step's forward attempts, or NULL */
} saga_step_state;

typedef enum saga_phase {
  SAGA_PHASE_FORWARD = 0,
  SAGA_PHASE_COMPENSATING = 1,
  SAGA_PHASE_DONE = 2
} saga_phase;

typedef struct saga_state {
  char id[37];
  char *workflow;
  int version;
  char *idempotency_key; /* or NULL */
  saga_status status;
  saga_phase phase;
  int cursor; /* forward: the step last scheduled or failed
                 (several may be in flight inside parallel
                 groups); compensating: the step being
                 compensated; done: -1 */
  saga_step_state *steps;
  size_t n_steps;
  char *input;  /* JSON text */
  char *error;  /* JSON of the error that ended forward progress */
  char *output; /* JSON object of step outputs when completed */
  int64_t created_ms;
  int64_t updated_ms;
  int64_t deadline_ms; /* 0 = none */
  int64_t last_seq;
  bool cancel_requested;
  char *replay_of;   /* saga id or NULL */
  char *replayed_by; /* saga id or NULL */
} saga_state;

/* A zeroed state (last_seq 0) ready to evolve a SagaStarted event into. */
void saga_state_init(saga_state *st);
void saga_state_clear(saga_state *st);
/* Applies one event. The event's seq must be st->last_seq + 1, else
 * SK_ECONFLICT; an event impossible in the current state gives SK_ESTATE;
 * a malformed payload SK_EJSON. On error st is unchanged. */
int saga_evolve(saga_state *st, const saga_event *ev);
/* Folds events[0..n) into a fresh state (the rebuild used by verify). */
int saga_fold(const saga_event *events, size_t n, saga_state *out);

/* The projection as canonical JSON (stable key order and formatting), the
 * form stored in sagas.state; equal states give byte-equal text. */
int saga_state_to_json(const saga_state *st, char **out);
/* The same with every key of every step present (the API's saga view):
 * parsed by saga_state_from_json to the same state. */
int saga_state_to_json_full(const saga_state *st, char **out);
int saga_state_from_json(const char *json, saga_state *out);
/* Deep copy of src into dst (dst is overwritten, not cleared first).
 * SK_ENOMEM leaves dst cleared. */
int saga_state_copy(saga_state *dst, const saga_state *src);

/* ---- decisions ----------------------------------------------------------- */

typedef enum task_kind {
  TASK_KIND_FWD = 0,
  TASK_KIND_COMP = 1,
  TASK_KIND_FALLBACK = 2 /* a step's fallback action */
} task_kind;

const char *task_kind_name(task_kind k); /* "fwd" / "comp" / "fallback" */

/* A task to put in the ready queue (one row of `tasks`). */
typedef struct saga_task {
  int step;
  task_kind kind;
  int attempt;
  def_kind action; /* TASK, SLEEP or HTTP (never PARALLEL: a group
                      has no task of its own) */
  char *task_type; /* handler type for TASK, "" otherwise */
  char *input;     /* rendered JSON input */
  char *bulkhead;
  int64_t available_at_ms;
  int64_t timeout_ms; /* per-attempt, already capped by the saga deadline */
  int gpus;
  int64_t gpu_memory_mb;
} saga_task;

void saga_task_clear(saga_task *t);

typedef struct saga_decision {
  saga_event *events;
  size_t n_events;
  saga_task *tasks; /* to insert */
  size_t n_tasks;
  /* The queued forward tasks (kind fwd) of these steps must be told to
   * stop: set tasks.cancel_requested and, if not leased, make them due now
   * (a cancel, or a failure in a parallel branch stopping its siblings).
   * saga_decide_breaker_open lists the step whose waiting forward task the
   * caller must delete. Ascending, no duplicates; NULL when none. A step
   * running its fallback may be listed too: its fallback task (kind
   * fallback) is then left to finish, and its result is taken as it comes. */
  int *cancel_steps;
  size_t n_cancel_steps;
} saga_decision;

void saga_decision_init(saga_decision *d);
void saga_decision_clear(saga_decision *d);

/* The outcome of one attempt of a task, as reported by a worker. */
typedef struct saga_result {
  int step;
  task_kind kind;
  int attempt;
  bool ok;
  const char *output;   /* JSON text or NULL (null) when ok */
  const char *err_type; /* when !ok; "Timeout", "Cancelled", ... */
  const char *err_message;
  bool err_retryable;
  const char *node; /* for the event */
} saga_result;

/* Deterministic PRNG state for jitter (xorshift64*). Seed non-zero. */
typedef struct saga_rng {
  uint64_t s;
} saga_rng;
uint64_t saga_rng_next(saga_rng *r);
/* Uniform in [0, 1). */
double saga_rng_unit(saga_rng *r);

/* The backoff before attempt `next_attempt` (≥ 2): initial × coeff^(n-2),
 * capped at max_interval, then randomised by ±jitter/2 of itself (so the
 * cap holds on average and never goes negative). */
int64_t saga_backoff_ms(const def_retry *p, int next_attempt, saga_rng *rng);

/* Start: SagaStarted + StepScheduled for step 0 (or SagaCompleted for a
 * workflow of no steps, which the validator forbids). input is a JSON
 * object text. new_id is the saga id to use. */
int saga_decide_start(const def_workflow *wf, const char *new_id,
                      const char *input, const char *idempotency_key,
                      const char *replay_of, int64_t now_ms, saga_rng *rng,
                      saga_decision *out);

/* A task result. A result that does not match what the state expects
 * (wrong step, kind or attempt, or saga already settled) yields an empty
 * decision and SK_ESTATE: the caller drops it (it is stale). */
int saga_decide_result(const def_workflow *wf, const saga_state *st,
                       const saga_result *r, const char *node, int64_t now_ms,
                       saga_rng *rng, saga_decision *out);

/* Cancel request. SK_ESTATE if the saga is settled. Running: the forward
 * steps in flight are told to stop (cancel_steps) and the saga compensates
 * once their results arrive; a paused saga compensates at once. */
int saga_decide_cancel(const def_workflow *wf, const saga_state *st,
                       const char *reason, const char *node, int64_t now_ms,
                       saga_rng *rng, saga_decision *out);

typedef struct saga_replay {
  const char *from_step;  /* paused: resume at this step (NULL = failed one) */
  const char *step_input; /* paused: input override for that step's task */
} saga_replay;

/* Replay in place: `failed` → reschedule the stuck compensation (attempts
 * counted afresh); `paused` → resume forward at the failed step or at
 * from_step (an earlier top-level step, else SK_EINVAL; steps from there on
 * are re-run, and a parallel group runs again whole — its completed branch
 * steps too, under the same idempotency keys). Other
 * statuses → SK_ESTATE (compensated/cancelled sagas are replayed as a new
 * run by the caller, linked with saga_decide_link). */
int saga_decide_replay(const def_workflow *wf, const saga_state *st,
                       const saga_replay *req, const char *node, int64_t now_ms,
                       saga_rng *rng, saga_decision *out);

/* The circuit breaker of `step`'s forward task is open. For a step whose
 * forward attempt is queued and not leased (the caller knows that; here:
 * in flight, not yet in its fallback) and whose fallback has
 * on_breaker_open, records that attempt as failed with
 * {"type":"BreakerOpen","retryable":false} (StepFailed, final false) and
 * schedules the fallback at once (FallbackScheduled + a fallback task).
 * The decision's cancel_steps names the step: the caller must delete (or
 * cancel) the waiting forward task in the same transaction; a late result
 * of it is stale. SK_ESTATE when the step is not in that state, the saga
 * is not running forward, a cancel was requested or a parallel sibling
 * failed; SK_EINVAL when the step has no such fallback. */
int saga_decide_breaker_open(const def_workflow *wf, const saga_state *st,
                             int step, const char *node, int64_t now_ms,
                             saga_rng *rng, saga_decision *out);

/* A ReplayLinked event on an old saga replayed as new run `new_id`. */
int saga_decide_link(const saga_state *st, const char *new_id, const char *node,
                     int64_t now_ms, saga_decision *out);

/* Applies every event of d to st (numbering must already match). */
int saga_apply(saga_state *st, const saga_decision *d);

/* The idempotency key of a step's task:
 * "<saga_id>:<step name>:fwd|comp|fallback".
 * buf must hold SK_ID_LEN + SK_NAME_MAX + 12 bytes. */
void saga_idempotency_key(const char *saga_id, const char *step_name,
                          task_kind kind, char *buf, size_t len);

#endif /* SKALD_SAGA_SAGA_H */
