/*
 * commit_int.h — the group commit's internals, shared by its three parts:
 *   sagastore.c      the transaction (fast and careful) and the decisions;
 *   commit_reads.c   what a commit locks, reads and checks (projections,
 *                    leases, idempotency keys);
 *   commit_writes.c  what it writes (events, projections, tasks, cancels).
 * Include from those three only; the store's interface is sagastore.h.
 *
 * Thread: the committing thread's; nothing here is shared.
 */
#ifndef SKALD_STORE_COMMIT_INT_H
#define SKALD_STORE_COMMIT_INT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/db.h"
#include "store/pipe.h"
#include "store/sagastore.h"

/* The in-memory state of one touched saga during an attempt. */
typedef struct touched {
  char id[37];
  saga_state st;
  bool found;  /* exists in the database */
  bool is_new; /* started by this batch */
  bool dirty;  /* changed by this batch */
  bool cached; /* st came from the state cache (seq still to check) */
  bool stale;  /* cached, but the row moved on: read it */
} touched;

/* Everything one attempt writes, as array literals for unnest(). */
typedef struct writes {
  pgarr ev_saga, ev_seq, ev_type, ev_step, ev_attempt, ev_node, ev_payload,
      ev_ts;
  size_t n_events;
  pgarr tk_saga, tk_step, tk_kind, tk_attempt, tk_workflow, tk_step_name,
      tk_action, tk_type, tk_bulkhead, tk_avail, tk_input, tk_timeout, tk_gpus,
      tk_gpu_mem, tk_claim;
  size_t n_tasks;
  size_t n_claims;
  size_t n_unclaimed_due;
  pgarr cx_saga, cx_step;
  size_t n_cancels;
  pgarr dl_saga, dl_step; /* waiting forward tasks to drop */
  size_t n_drops;
  bool notify;
  int64_t next_due_ms;
} writes;

typedef struct attempt {
  touched *t;
  size_t n_t; /* loaded (sorted by id) first, then started ones */
  size_t n_loaded;
  writes w;
} attempt;

static inline int touched_cmp(const void *a, const void *b) {
  return strcmp(((const touched *)a)->id, ((const touched *)b)->id);
}

static inline touched *touched_find(attempt *a, const char *id) {
  touched key;
  snprintf(key.id, sizeof(key.id), "%s", id);
  return bsearch(&key, a->t, a->n_loaded, sizeof(touched), touched_cmp);
}

/* Step 2: fence results. An op whose task row is not deleted is stale.
 * Lease tokens are unique (one sequence), so the rows the DELETE returns
 * are matched to ops by token (then checked field by field). */
typedef struct token_ref {
  long long token;
  size_t op;
} token_ref;

typedef struct fence_ctx {
  store_batch *b;
  token_ref *by_token; /* the result ops, sorted by token */
  size_t n;
} fence_ctx;

/* The starts with a key, sorted by their new saga id, to match the rows
 * the INSERT returns. */
typedef struct keys_ctx {
  store_op **ops;
  size_t n;
} keys_ctx;

typedef struct claims_ctx {
  store_batch *b;
  writes *w;
} claims_ctx;

/* ---- commit_reads.c ------------------------------------------------------ */

/* Queues the lock of every touched saga (and the read of those not cached). */
void commit_send_lock(db_pipe *p, attempt *a);
/* Reads the sagas whose cached state turned out stale (rows locked). */
int commit_read_stale(PGconn *c, attempt *a, sk_error *err);
/* Queues the fencing DELETE of the batch's results; f->by_token must have
 * room for every op and outlive the pipe. */
void commit_send_fence(db_pipe *p, store_batch *b, fence_ctx *f);
/* Queues the claim of the starts' keys; k->ops is allocated here. */
void commit_send_keys(db_pipe *p, store_batch *b, keys_ctx *k);
/* Looks up the first saga of every key a start found used. */
int commit_lookup_keys(PGconn *c, store_batch *b, sk_error *err);
/* The one-round-trip commit's checks (skald_expect raises SK001). */
void commit_send_expect_sagas(db_pipe *p, const attempt *a);
void commit_send_expect_leases(db_pipe *p, store_batch *b);
void commit_send_expect_keys(db_pipe *p, const store_batch *b);

/* ---- commit_writes.c ----------------------------------------------------- */

void writes_init(writes *w);
void writes_free(writes *w);
bool writes_ok(writes *w);
void writes_add_event(writes *w, const char *saga_id, const saga_event *ev);
/* Records a new task; claims it for this node when env->claim agrees. */
void writes_add_task(writes *w, const store_env *env, const saga_state *st,
                     const saga_task *t);
/* Queues every write of the attempt, the NOTIFY and the COMMIT. */
void commit_send_writes(db_pipe *pp, attempt *a, claims_ctx *cc,
                        const store_env *env);

#endif /* SKALD_STORE_COMMIT_INT_H */
