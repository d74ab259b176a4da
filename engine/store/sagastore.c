/*
 * sagastore.c — the group commit (see sagastore.h): the transaction and
 * the decisions. What a commit reads and checks is in commit_reads.c, what
 * it writes in commit_writes.c (commit_int.h ties the three).
 *
 * One attempt of the transaction, the careful way (two round trips, libpq
 * pipeline mode):
 *   1. lock the row of every saga the batch touches, in id order (two
 *      nodes never deadlock), and load the projections the state cache
 *      does not hold (a cached one whose row moved on is read too);
 *   2. fence results: DELETE the task rows whose lease token still matches
 *      (the rest are dropped as stale);
 *   3. claim the idempotency keys of starts (a used key becomes a lookup
 *      of the first saga);
 *   4. run the pure decider for each op in order, evolving the states;
 *   5. write events, new and changed projections, new tasks, cancel marks
 *      (one multi-row statement each), NOTIFY, COMMIT.
 * When every touched saga is in the state cache, the attempt is ONE
 * pipeline instead: 4 first, on the cached states, assuming every lease
 * holds and every key is new; then checks that assert 1–3 (SQLSTATE SK001
 * stops the transaction before any write) and 5. A failed check redoes
 * the batch the careful way.
 * A transient error rolls everything back and the attempt starts over from
 * the database's state, so a retry can never apply an op twice.
 *
 * Thread: a libuv threadpool thread (or any caller's); the connection and
 * the batch belong to this call.
 */
#include "store/sagastore.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "store/commit_int.h"
#include "store/statecache.h"

#define COMMIT_MAX_TRIES 5

void leased_task_clear(leased_task *t) {
  if (t == NULL)
    return;
  free(t->workflow);
  free(t->step_name);
  free(t->task_type);
  free(t->bulkhead);
  free(t->input);
  memset(t, 0, sizeof(*t));
}

void store_op_clear(store_op *op) {
  if (op == NULL)
    return;
  free(op->input);
  free(op->idempotency_key);
  free(op->replay_of);
  free(op->output);
  free(op->err_type);
  free(op->err_message);
  free(op->reason);
  free(op->from_step);
  free(op->step_input);
  memset(op, 0, sizeof(*op));
}

void store_batch_clear_out(store_batch *b) {
  for (size_t i = 0; i < b->n_claimed; i++)
    leased_task_clear(&b->claimed[i]);
  free(b->claimed);
  b->claimed = NULL;
  b->n_claimed = 0;
}

/* ---- touched sagas ------------------------------------------------------- */

static void attempt_free(attempt *a) {
  for (size_t i = 0; i < a->n_t; i++)
    saga_state_clear(&a->t[i].st);
  free(a->t);
  writes_free(&a->w);
  memset(a, 0, sizeof(*a));
}

/* Collects the distinct saga ids of non-start ops, sorted. */
static int collect_touched(const store_batch *b, attempt *a,
                           state_cache *cache) {
  /* Room for every loaded saga plus every saga a start or a new-run
   * replay adds. */
  a->t = calloc(b->n_ops ? 2 * b->n_ops : 1, sizeof(touched));
  if (a->t == NULL)
    return SK_ENOMEM;
  for (size_t i = 0; i < b->n_ops; i++) {
    const store_op *op = &b->ops[i];
    if (op->type == STORE_OP_START)
      continue;
    const char *id =
        op->type == STORE_OP_RESULT ? op->lease.saga_id : op->saga_id;
    snprintf(a->t[a->n_t].id, sizeof(a->t[a->n_t].id), "%s", id);
    saga_state_init(&a->t[a->n_t].st);
    a->n_t++;
  }
  qsort(a->t, a->n_t, sizeof(touched), touched_cmp);
  size_t k = 0;
  for (size_t i = 0; i < a->n_t; i++) {
    if (k > 0 && strcmp(a->t[k - 1].id, a->t[i].id) == 0)
      continue;
    a->t[k++] = a->t[i];
  }
  a->n_t = k;
  a->n_loaded = k;
  for (size_t i = 0; i < k; i++)
    a->t[i].cached = state_cache_take(cache, a->t[i].id, &a->t[i].st);
  return SK_OK;
}

/* ---- step 4: decisions -----------------------------------------------------
 */

/* Records a decision's writes and evolves the touched state through it. */
static int take_decision(attempt *a, touched *t, const store_env *env,
                         const saga_decision *d) {
  for (size_t i = 0; i < d->n_events; i++)
    writes_add_event(&a->w, t->id, &d->events[i]);
  int rc = saga_apply(&t->st, d);
  if (rc != SK_OK)
    return rc;
  for (size_t i = 0; i < d->n_tasks; i++)
    writes_add_task(&a->w, env, &t->st, &d->tasks[i]);
  for (size_t i = 0; i < d->n_cancel_steps; i++) {
    pgarr_add_str(&a->w.cx_saga, t->id);
    pgarr_add_i64(&a->w.cx_step, d->cancel_steps[i]);
    a->w.n_cancels++;
  }
  t->dirty = true;
  return SK_OK;
}

static int decide_start(attempt *a, store_op *op, const store_env *env) {
  saga_decision d;
  saga_decision_init(&d);
  int rc =
      saga_decide_start(op->wf, op->saga_id, op->input, op->idempotency_key,
                        op->replay_of, env->now_ms, env->rng, &d);
  if (rc != SK_OK) {
    saga_decision_clear(&d);
    return rc;
  }
  /* The batch's touched array is sized for every op, so there is room. */
  touched *t = &a->t[a->n_t];
  memset(t, 0, sizeof(*t));
  snprintf(t->id, sizeof(t->id), "%s", op->saga_id);
  saga_state_init(&t->st);
  t->is_new = true;
  rc = take_decision(a, t, env, &d);
  saga_decision_clear(&d);
  if (rc == SK_OK) {
    a->n_t++;
    op->status = t->st.status;
  } else {
    saga_state_clear(&t->st);
  }
  return rc;
}

static touched *find_any(attempt *a, const char *id) {
  touched *t = touched_find(a, id);
  if (t != NULL)
    return t;
  /* Sagas started in this batch sit unsorted after the loaded ones. */
  for (size_t i = a->n_loaded; i < a->n_t; i++)
    if (strcmp(a->t[i].id, id) == 0)
      return &a->t[i];
  return NULL;
}

/* Replays a compensated or cancelled saga as a new run of the same version
 * with the same (or the given) input, and links the two. */
static int replay_new_run(attempt *a, touched *old, store_op *op,
                          const def_workflow *wf, const store_env *env) {
  if (op->from_step != NULL || op->step_input != NULL)
    return SK_EINVAL; /* those resume a paused saga in place */
  if (old->st.replayed_by != NULL)
    return SK_ESTATE; /* replayed already: replay its new run instead */
  store_op start;
  memset(&start, 0, sizeof(start));
  start.type = STORE_OP_START;
  start.wf = wf;
  memcpy(start.saga_id, op->new_saga_id, sizeof(start.saga_id));
  start.input = op->input != NULL ? op->input : old->st.input;
  start.replay_of = old->id;
  int rc = decide_start(a, &start, env);
  if (rc != SK_OK)
    return rc;
  saga_decision d;
  saga_decision_init(&d);
  rc = saga_decide_link(&old->st, op->new_saga_id, env->node, env->now_ms, &d);
  if (rc == SK_OK)
    rc = take_decision(a, old, env, &d);
  saga_decision_clear(&d);
  op->replayed_new = rc == SK_OK;
  return rc;
}

static int decide_existing(attempt *a, store_op *op, const store_env *env,
                           PGconn *c) {
  const char *id =
      op->type == STORE_OP_RESULT ? op->lease.saga_id : op->saga_id;
  touched *t = find_any(a, id);
  if (t == NULL || (!t->found && !t->is_new))
    return SK_ENOENT;
  const def_workflow *wf =
      env->get_def(env->ud, c, t->st.workflow, t->st.version);
  if (wf == NULL) {
    log_write(LOG_ERROR, "workflow definition not found", "saga_id", id,
              "workflow", t->st.workflow, "#version", (int64_t)t->st.version,
              NULL);
    return SK_ENOENT;
  }
  saga_decision d;
  saga_decision_init(&d);
  int rc;
  switch (op->type) {
  case STORE_OP_RESULT: {
    saga_result r = {.step = op->lease.step,
                     .kind = op->lease.kind,
                     .attempt = op->lease.attempt,
                     .ok = op->ok,
                     .output = op->output,
                     .err_type = op->err_type,
                     .err_message = op->err_message,
                     .err_retryable = op->err_retryable,
                     .node = env->node};
    rc = saga_decide_result(wf, &t->st, &r, env->node, env->now_ms, env->rng,
                            &d);
    break;
  }
  case STORE_OP_CANCEL:
    rc = saga_decide_cancel(wf, &t->st, op->reason, env->node, env->now_ms,
                            env->rng, &d);
    break;
  case STORE_OP_BREAKER_OPEN:
    rc = saga_decide_breaker_open(wf, &t->st, op->lease.step, env->node,
                                  env->now_ms, env->rng, &d);
    if (rc == SK_OK) {
      pgarr_add_str(&a->w.dl_saga, t->id);
      pgarr_add_i64(&a->w.dl_step, op->lease.step);
      a->w.n_drops++;
    }
    break;
  case STORE_OP_REPLAY: {
    if (t->st.status == SAGA_STATUS_COMPENSATED ||
        t->st.status == SAGA_STATUS_CANCELLED) {
      rc = replay_new_run(a, t, op, wf, env);
      break;
    }
    if (op->input != NULL) {
      rc = SK_EINVAL; /* a new input belongs to a new run */
      break;
    }
    saga_replay req = {.from_step = op->from_step,
                       .step_input = op->step_input};
    rc = saga_decide_replay(wf, &t->st, &req, env->node, env->now_ms, env->rng,
                            &d);
    break;
  }
  default:
    rc = SK_EINTERNAL;
  }
  if (rc == SK_OK)
    rc = take_decision(a, t, env, &d);
  saga_decision_clear(&d);
  op->status = t->st.status;
  return rc;
}

static int decide_all(PGconn *c, store_batch *b, attempt *a,
                      const store_env *env) {
  for (size_t i = 0; i < b->n_ops; i++) {
    store_op *op = &b->ops[i];
    switch (op->type) {
    case STORE_OP_START:
      op->rc = op->existed ? SK_OK : decide_start(a, op, env);
      break;
    case STORE_OP_RESULT:
      if (op->rc == SK_OK)
        op->rc = decide_existing(a, op, env, c);
      break;
    case STORE_OP_CANCEL:
    case STORE_OP_REPLAY:
    case STORE_OP_BREAKER_OPEN:
      op->rc = decide_existing(a, op, env, c);
      break;
    }
    if (op->rc == SK_ENOMEM)
      return SK_ENOMEM;
  }
  return writes_ok(&a->w) ? SK_OK : SK_ENOMEM;
}

/* ---- step 5: writes ---------------------------------------------------------
 */

/* ---- the transaction -------------------------------------------------------
 */

static void reset_outputs(store_batch *b) {
  store_batch_clear_out(b);
  b->next_due_ms = 0;
  b->n_unclaimed_due = 0;
  b->n_events = 0;
  b->n_fenced = 0;
  for (size_t i = 0; i < b->n_ops; i++) {
    b->ops[i].rc = SK_OK;
    b->ops[i].existed = false;
    b->ops[i].replayed_new = false;
  }
}

static bool all_cached(const attempt *a) {
  for (size_t i = 0; i < a->n_loaded; i++)
    if (!a->t[i].cached)
      return false;
  return true;
}

static int commit_fast(PGconn *c, store_batch *b, attempt *a,
                       const store_env *env, bool *began, bool *stale,
                       sk_error *err) {
  db_pipe pp;
  int rc = db_pipe_open(&pp, c, err);
  if (rc != SK_OK)
    return rc;
  *began = true;
  db_pipe_send(&pp, "BEGIN", 0, NULL, "could not begin", NULL, NULL);
  commit_send_expect_sagas(&pp, a); /* before decide_all moves the seqs on */
  commit_send_expect_leases(&pp, b);
  commit_send_expect_keys(&pp, b);
  for (size_t i = 0; i < a->n_loaded; i++)
    a->t[i].found = true; /* as checked above */
  for (size_t i = 0; i < b->n_ops; i++)
    b->ops[i].rc = SK_OK; /* every lease holds, every key is new */
  rc = pp.rc == SK_OK ? decide_all(c, b, a, env) : pp.rc;
  claims_ctx claims = {.b = b, .w = &a->w};
  if (rc != SK_OK && pp.rc == SK_OK)
    pp.rc = rc; /* nothing more is sent; run reads what was */
  commit_send_writes(&pp, a, &claims, env);
  rc = db_pipe_run(&pp);
  *stale = rc == SK_EDB && err != NULL && strcmp(err->sqlstate, "SK001") == 0;
  return rc;
}

/* The careful commit, two round trips: (BEGIN, lock and load, fence, claim
 * keys), then the decisions here, then (every write, NOTIFY, COMMIT). Only
 * a start whose key was used before costs a third (the lookup of the first
 * saga), and a cached state that moved on one more (its read). */
static int commit_careful(PGconn *c, store_batch *b, attempt *a,
                          const store_env *env, bool *began, sk_error *err) {
  fence_ctx fence = {.by_token =
                         calloc(b->n_ops ? b->n_ops : 1, sizeof(token_ref))};
  keys_ctx keys = {0};
  int rc = fence.by_token != NULL ? SK_OK : SK_ENOMEM;
  db_pipe pp;
  if (rc == SK_OK)
    rc = db_pipe_open(&pp, c, err);
  if (rc == SK_OK) {
    *began = true;
    db_pipe_send(&pp, "BEGIN", 0, NULL, "could not begin", NULL, NULL);
    commit_send_lock(&pp, a);
    commit_send_fence(&pp, b, &fence);
    commit_send_keys(&pp, b, &keys);
    rc = db_pipe_run(&pp);
  }
  bool any_existed = false;
  for (size_t i = 0; i < keys.n; i++)
    any_existed = any_existed || keys.ops[i]->existed;
  if (rc == SK_OK && any_existed)
    rc = commit_lookup_keys(c, b, err);
  if (rc == SK_OK)
    rc = commit_read_stale(c, a, err);
  if (rc == SK_OK)
    rc = decide_all(c, b, a, env);
  claims_ctx claims = {.b = b, .w = &a->w};
  if (rc == SK_OK)
    rc = db_pipe_open(&pp, c, err);
  if (rc == SK_OK) {
    commit_send_writes(&pp, a, &claims, env);
    rc = db_pipe_run(&pp);
  }
  free(fence.by_token);
  free(keys.ops);
  return rc;
}

/* One attempt of the transaction; with use_cache, the one-round-trip
 * commit when every saga's state is cached (*stale: redo without). */
static int commit_once(PGconn *c, store_batch *b, const store_env *env,
                       bool use_cache, bool *stale, sk_error *err) {
  attempt a;
  memset(&a, 0, sizeof(a));
  writes_init(&a.w);
  reset_outputs(b);
  *stale = false;
  if (env->claims_reset != NULL)
    env->claims_reset(env->ud);
  bool began = false;
  int rc = collect_touched(b, &a, use_cache ? env->cache : NULL);
  if (rc == SK_OK && use_cache && env->cache != NULL && all_cached(&a))
    rc = commit_fast(c, b, &a, env, &began, stale, err);
  else if (rc == SK_OK)
    rc = commit_careful(c, b, &a, env, &began, err);
  if (rc != SK_OK) {
    if (began && PQstatus(c) == CONNECTION_OK)
      db_exec(c, "ROLLBACK", NULL);
    store_batch_clear_out(b);
  } else {
    /* Committed: the states are current; keep them for the next step. */
    for (size_t i = 0; i < a.n_t; i++)
      if (a.t[i].found || a.t[i].is_new)
        state_cache_put(env->cache, &a.t[i].st);
    b->n_events = a.w.n_events;
    b->next_due_ms = a.w.next_due_ms;
    b->n_unclaimed_due = a.w.n_unclaimed_due + a.w.n_cancels;
    for (size_t i = 0; i < b->n_ops; i++)
      if (b->ops[i].rc == SK_ELEASE)
        b->n_fenced++;
  }
  if (rc == SK_ENOMEM)
    sk_error_set(err, rc, "out of memory in group commit");
  attempt_free(&a);
  return rc;
}

int sagastore_commit(PGconn *c, store_batch *b, const store_env *env,
                     sk_error *err) {
  int rc = SK_OK;
  bool use_cache = true;
  for (b->attempts = 1; b->attempts <= COMMIT_MAX_TRIES; b->attempts++) {
    sk_error e = {0};
    bool stale = false;
    rc = commit_once(c, b, env, use_cache, &stale, &e);
    if (rc == SK_OK)
      return SK_OK;
    if (stale) { /* not a failure: the careful way, at once */
      use_cache = false;
      b->attempts--;
      continue;
    }
    if (err != NULL)
      *err = e;
    /* Only transient SQL errors on a live connection are retried here;
     * a broken connection is the caller's to re-establish. */
    if (rc != SK_EDB || !db_sqlstate_transient(e.sqlstate) ||
        PQstatus(c) != CONNECTION_OK)
      break;
    log_write(LOG_WARNING, "group commit hit a transient error, retrying",
              "sqlstate", e.sqlstate, "#attempt", (int64_t)b->attempts, NULL);
  }
  return rc;
}
