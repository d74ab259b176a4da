/*
 * sagastore.h — the group commit: many sagas' transitions in one transaction.
 *
 * A batch holds operations (start a saga, a task result, a cancel request, a
 * replay request). sagastore_commit() locks the touched sagas, fences the
 * results against their lease tokens, runs the pure decider for each
 * operation, and writes every resulting event, projection and task in ONE
 * transaction with multi-row statements (unnest of array parameters). A
 * transition is therefore never half-applied, and commits per step fall
 * far below one under load.
 *
 * New tasks that are due at once and that this node can run right away
 * (env->claim says so) are inserted already leased to this node and
 * returned in batch->claimed: the hand-off to the workers needs no dequeue
 * round trip. Other due tasks are announced with NOTIFY skald_tasks.
 *
 * Thread: the caller's (a libuv threadpool thread); the connection is used
 * by this call alone.
 */
#ifndef SKALD_STORE_SAGASTORE_H
#define SKALD_STORE_SAGASTORE_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "saga/saga.h"
#include "spec/def.h"

#define SAGASTORE_NOTIFY_CHANNEL "skald_tasks"

/* Identifies one leased task; token fences its result. */
typedef struct store_lease {
  char saga_id[37];
  int step;
  task_kind kind;
  int attempt;
  int64_t token;
} store_lease;

/* A task leased to this node (by a dequeue or by a commit's claim). */
typedef struct leased_task {
  store_lease lease;
  char *workflow;
  char *step_name;
  def_kind action;
  char *task_type;
  char *bulkhead;
  char *input;
  int64_t timeout_ms;
  int deliveries;
  bool cancel_requested;
} leased_task;

void leased_task_clear(leased_task *t);

typedef enum store_op_type {
  STORE_OP_START = 0,
  STORE_OP_RESULT,
  STORE_OP_CANCEL,
  STORE_OP_REPLAY,
  /* The breaker of step lease.step's forward task is open: run its
   * on_breaker_open fallback now (saga_decide_breaker_open), dropping the
   * waiting forward task. rc SK_EINVAL / SK_ESTATE: not applicable. */
  STORE_OP_BREAKER_OPEN
} store_op_type;

typedef struct store_op {
  store_op_type type;
  /* START: wf is borrowed (the caller holds a reference). saga_id is the
   * new id on input and the saga's id on output (the first saga's if the
   * idempotency key was used before). */
  const def_workflow *wf;
  char saga_id[37];
  char *input;               /* JSON object text (owned) */
  char *idempotency_key;     /* owned, NULL = none */
  char *replay_of;           /* owned, NULL = none */
  /* RESULT */
  store_lease lease;
  bool ok;
  char *output;              /* owned JSON text or NULL */
  char *err_type;            /* owned */
  char *err_message;         /* owned */
  bool err_retryable;
  /* CANCEL */
  char *reason;              /* owned */
  /* REPLAY: a failed saga resumes its compensation and a paused one its
   * forward steps, in place (from_step, step_input). A compensated or
   * cancelled saga is replayed as a new run with id new_saga_id (set by the
   * caller), the same version and its input (or `input` when given), linked
   * both ways. */
  char *from_step;           /* owned */
  char *step_input;          /* owned */
  char new_saga_id[37];
  bool replayed_new;         /* out: a new run was started */
  /* out */
  int rc;                    /* SK_OK; SK_ELEASE fenced; SK_ESTATE not
                                allowed / stale; SK_ENOENT no such saga */
  bool existed;              /* START: idempotency key hit */
  saga_status status;        /* the saga's status after the op */
} store_op;

void store_op_clear(store_op *op);

typedef struct store_env {
  const char *node;
  int64_t now_ms;
  saga_rng *rng;
  int lease_ttl_ms;
  /* The definition of (name, version): borrowed, valid for the call. May
   * load it through conn (inside the transaction). NULL if unknown. */
  const def_workflow *(*get_def)(void *ud, PGconn *conn, const char *name,
                                 int version);
  /* Called before each attempt of the transaction: forget earlier claims. */
  void (*claims_reset)(void *ud);
  /* May this node take task t now? true reserves a worker slot for it. */
  bool (*claim)(void *ud, const saga_task *t);
  void *ud;
  /* Projections kept between commits (statecache.h), or NULL. */
  struct state_cache *cache;
} store_env;

typedef struct store_batch {
  store_op *ops;
  size_t n_ops;
  /* out */
  leased_task *claimed;
  size_t n_claimed;
  int64_t next_due_ms;       /* earliest future available_at inserted; 0 none */
  size_t n_unclaimed_due;    /* due tasks inserted that were not claimed */
  size_t n_events;           /* events appended */
  size_t n_fenced;           /* results dropped by fencing */
  int attempts;              /* transaction attempts it took */
} store_batch;

/* Commits the batch (retrying transient errors a few times). Each op's rc
 * says what happened to it. On SK_EDB nothing was written and the ops may
 * be committed again later; claimed is empty. */
int sagastore_commit(PGconn *conn, store_batch *b, const store_env *env,
                     sk_error *err);

/* The columns (of tasks AS t) that sagastore_read_task_row reads, in order. */
#define SAGASTORE_TASK_COLUMNS                                                 \
  "t.saga_id::text, t.step, t.kind, t.attempt, t.lease_token, t.workflow, "    \
  "t.step_name, t.action, t.task_type, t.bulkhead, t.input::text, "            \
  "t.timeout_ms, t.deliveries, t.cancel_requested"

/* Reads one row of SAGASTORE_TASK_COLUMNS into *t. SK_ENOMEM on OOM. */
int sagastore_read_task_row(const PGresult *r, int row, leased_task *t);

/* Frees batch outputs (claimed tasks); not the ops. */
void store_batch_clear_out(store_batch *b);

#endif /* SKALD_STORE_SAGASTORE_H */
