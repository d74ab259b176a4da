/*
 * loop.c — the engine's event loop: dequeue, dispatch to bulkheads, results
 * back, group commit, lease renewal, timeouts, LISTEN/NOTIFY, stop.
 *
 * Invariants:
 *   - At most one commit, one dequeue and one aux (renew/heartbeat/release)
 *     job run at a time, each on its own connection, on libuv's threadpool.
 *   - Results accumulate while a commit is in flight; the next commit takes
 *     them all (up to max_batch). That is the group commit: under load many
 *     sagas' transitions share one transaction, idle it costs no waiting.
 *   - A dequeue asks only for as many tasks as bulkheads have free slots
 *     (minus slots promised to an in-flight commit's claims): backpressure
 *     lives in the dequeue, the backlog stays in PostgreSQL.
 *   - A job that timed out or lost its lease is abandoned: a failure (or
 *     nothing, for a lost lease) is committed at once and the late result
 *     is dropped when the handler finally returns.
 *
 * GPUs: steps with GPU needs are never claimed by a commit; they come
 * through a per-bulkhead GPU lane (limit 1) bounded by what fits this
 * node's healthy GPUs now (placement_envelope), get concrete GPUs at
 * dispatch (placement_pick) and hold a reservation until they leave the
 * in-flight list. The gpu timer copies the sampler's report; an attempt on
 * a GPU that turned unhealthy is cancelled and its lease handed back due at
 * once, with no result: the same attempt runs elsewhere and no retry is
 * spent (logged and counted as infra:gpu_unhealthy).
 *
 * Thread: the loop thread, except loop_wake and loop_submit_op (any) and
 * the *_work functions (threadpool).
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "core/engine.h"
#include "store/db.h"
#include "store/queries.h"
#include "store/taskqueue.h"

#define WATCHDOG_MS 50
#define SLEEP_LANE_LIMIT 256
#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 5000
#define GPU_TICK_MS 100         /* how often the loop reads the GPU report */
#define GPU_MISFIT_DELAY_MS 250 /* a GPU task that no longer fits waits */

static void maybe_commit(struct sk_engine *e);
static void maybe_dequeue(struct sk_engine *e);
static void maybe_finish(struct sk_engine *e);
static void due_cb(uv_timer_t *t);
static void retry_cb(uv_timer_t *t);
static void listen_reconnect(struct sk_engine *e);

/* ---- small helpers ----------------------------------------------------- */

static void ensure_conn(PGconn *c) {
  if (PQstatus(c) != CONNECTION_OK)
    PQreset(c);
}

static int push_result(struct sk_engine *e, store_op *op) {
  if (e->n_results == e->cap_results) {
    size_t cap = e->cap_results ? e->cap_results * 2 : 256;
    store_op *p = realloc(e->results, cap * sizeof(store_op));
    if (p == NULL) {
      /* The lease expires and another attempt runs: nothing is lost. */
      log_write(LOG_ERROR, "out of memory queueing a result", "saga_id",
                op->lease.saga_id, NULL);
      store_op_clear(op);
      return SK_ENOMEM;
    }
    e->results = p;
    e->cap_results = cap;
  }
  e->results[e->n_results++] = *op;
  memset(op, 0, sizeof(*op));
  return SK_OK;
}

static void inflight_add(struct sk_engine *e, exec_job *j) {
  j->prev_inflight = NULL;
  j->next_inflight = e->inflight;
  if (e->inflight != NULL)
    e->inflight->prev_inflight = j;
  e->inflight = j;
  e->n_inflight++;
}

static void gpu_unreserve(struct sk_engine *e, exec_job *j) {
  for (unsigned i = 0; i < j->n_gpus; i++) {
    unsigned g = j->gpu_idx[i];
    e->gpu_reserved_mb[g] -= j->gpu_res_mb[i];
    if (e->gpu_holders[g] > 0)
      e->gpu_holders[g]--;
  }
  j->n_gpus = 0;
}

static void inflight_remove(struct sk_engine *e, exec_job *j) {
  gpu_unreserve(e, j);
  if (j->prev_inflight != NULL)
    j->prev_inflight->next_inflight = j->next_inflight;
  else
    e->inflight = j->next_inflight;
  if (j->next_inflight != NULL)
    j->next_inflight->prev_inflight = j->prev_inflight;
  j->next_inflight = j->prev_inflight = NULL;
  e->n_inflight--;
}

static bool counted_failure(const store_op *op) {
  return !op->ok && (op->err_retryable ||
                     (op->err_type && strcmp(op->err_type, "Timeout") == 0));
}

/* Shows a breaker in the metrics when it changed since last shown. */
static void show_breaker(struct sk_engine *e, const char *name,
                         const breaker *b, breaker_shown *sh) {
  if (sh->valid && sh->state == b->state && sh->opens == b->opens)
    return;
  sh->valid = true;
  sh->state = b->state;
  sh->opens = b->opens;
  engine_metrics_breaker(e->metrics, name, b);
}

/* ---- http steps ---------------------------------------------------------- */

static void queue_release_after(struct sk_engine *e, const store_lease *l,
                                int64_t delay_ms);
static void start_release(struct sk_engine *e);
static void push_breaker_open(struct sk_engine *e, const char *saga_id,
                              int step);

/* The circuit breaker of the host an http task calls ("scheme://host:port"),
 * created on first use; -1 if the url has no host we can key on (httpcall
 * then reports the request as invalid). */
static int host_index(struct sk_engine *e, const char *input) {
  char key[HTTPCALL_KEY_MAX];
  if (httpcall_breaker_key_input(input, key, sizeof(key)) != SK_OK)
    return -1;
  for (size_t i = 0; i < e->n_hosts; i++)
    if (strcmp(e->hosts[i].key, key) == 0)
      return (int)i;
  host_breaker *p = realloc(e->hosts, (e->n_hosts + 1) * sizeof(*p));
  if (p == NULL)
    return -1;
  e->hosts = p;
  host_breaker *h = &p[e->n_hosts];
  memset(h, 0, sizeof(*h));
  snprintf(h->key, sizeof(h->key), "%s", key);
  breaker_init(&h->br, e->o.breaker_failure_threshold, e->o.breaker_open_ms);
  return (int)e->n_hosts++;
}

/* While the host's breaker is open, the task goes back to the queue, due
 * when the breaker may probe again: no attempt is spent on a host known to
 * be down. Returns true if it deferred the task. */
static bool defer_for_breaker(struct sk_engine *e, int host,
                              const leased_task *t) {
  if (host < 0)
    return false;
  breaker *br = &e->hosts[host].br;
  int64_t now = clock_now_ms();
  int allow = breaker_allow(br, now);
  show_breaker(e, e->hosts[host].key, br, &e->hosts[host].shown);
  if (allow != 0) {
    breaker_on_dispatch(br);
    return false;
  }
  int64_t wait = br->opened_at_ms + br->open_ms - now;
  log_write(LOG_DEBUG, "host circuit open; task deferred", "host",
            e->hosts[host].key, "saga_id", t->lease.saga_id, "#wait_ms", wait,
            NULL);
  queue_release_after(e, &t->lease, wait > 0 ? wait : 0);
  start_release(e);
  /* If its step has an on_breaker_open fallback, that runs now instead
   * (the store checks; without one this changes nothing). */
  if (t->lease.kind == TASK_KIND_FWD)
    push_breaker_open(e, t->lease.saga_id, t->lease.step);
  return true;
}

/* An http call finished (loop thread): record it like a handler's result. */
static void http_done(uint64_t id, httpcall_outcome *out, void *ud) {
  exec_job *j = ud;
  struct sk_engine *e = j->e;
  j->bh->http_inflight--;
  if (j->host >= 0 && !(j->shutdown_cancel && !out->ok)) {
    breaker *br = &e->hosts[j->host].br;
    breaker_record(br, out->ok, !out->ok && out->retryable, clock_now_ms());
    show_breaker(e, e->hosts[j->host].key, br, &e->hosts[j->host].shown);
  }
  if (out->ok) {
    j->result =
        (struct sk_task_result){.set = true, .ok = true, .output = out->output};
    out->output = NULL;
  } else {
    sk_result_error(&j->result, out->err_type, out->err_message,
                    out->retryable);
  }
  int expected = JOB_RUNNING;
  atomic_compare_exchange_strong(&j->state, &expected, JOB_DONE);
  /* Through the done list, like a worker's, so one path records results. */
  pthread_mutex_lock(&e->mu);
  j->next_done = e->done;
  e->done = j;
  pthread_mutex_unlock(&e->mu);
  loop_wake(e);
}

/* Starts an http task on the loop's httpcall; it holds a bulkhead slot
 * until its callback runs. */
static void dispatch_http(struct sk_engine *e, leased_task *t) {
  store_op op;
  int host = host_index(e, t->input);
  if (defer_for_breaker(e, host, t))
    return;
  bulkhead *bh = engine_find_bulkhead(e, t->bulkhead);
  exec_job *j = bh != NULL && e->http_up ? job_new(e, t, NULL, bh) : NULL;
  if (j == NULL) {
    job_failure_op(t, "NoBulkhead", "no such bulkhead on this node", true, &op);
    push_result(e, &op);
    return;
  }
  j->is_http = true;
  j->host = host;
  atomic_store(&j->state, JOB_RUNNING);
  atomic_store(&j->started_mono_ms, clock_mono_ms());
  j->deadline_wall_ms = clock_now_ms() + j->task.timeout_ms;
  int codes[32];
  size_t n_codes = 0;
  cJSON *in = cJSON_Parse(j->task.input);
  const cJSON *c;
  cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(in, "success_codes")) {
    if (cJSON_IsNumber(c) && n_codes < 32)
      codes[n_codes++] = c->valueint;
  }
  cJSON_Delete(in);
  httpcall_request req = {.input_json = j->task.input,
                          .idempotency_key = j->idem_key,
                          .timeout_ms = j->task.timeout_ms,
                          .success_codes = n_codes > 0 ? codes : NULL,
                          .n_success_codes = n_codes,
                          .cancel = &j->cancel};
  inflight_add(e, j);
  engine_metrics_dispatch(e->metrics, j->task.workflow, j->task.step_name,
                          j->task.lease.attempt, j->task.deliveries);
  if (httpcall_start(&e->http, &req, http_done, j, NULL) != SK_OK) {
    inflight_remove(e, j);
    job_failure_op(&j->task, "ShuttingDown", "the node is stopping", true, &op);
    push_result(e, &op);
    job_free(j);
    return;
  }
  bh->http_inflight++;
}

/* ---- dispatch ---------------------------------------------------------- */

/* Places a GPU task on this node's GPUs and reserves them for job j.
 * False if it does not fit (any more). */
static bool gpu_place(struct sk_engine *e, exec_job *j, const task_needs *n) {
  placement_node pn;
  engine_gpu_view(e, e->gpu_snap, e->gpu_reserved_mb, e->gpu_holders, &pn);
  unsigned idx[GPU_MAX];
  bool degraded = false;
  if (n->gpus > GPU_MAX ||
      !placement_pick(&pn, n->gpus, n->gpu_memory_mb, idx, &degraded))
    return false;
  j->n_gpus = (unsigned)n->gpus;
  for (unsigned i = 0; i < j->n_gpus; i++) {
    j->gpu_idx[i] = idx[i];
    j->gpu_res_mb[i] = placement_reserve_mb(&pn.gpu[idx[i]], n->gpu_memory_mb);
    e->gpu_reserved_mb[idx[i]] += j->gpu_res_mb[i];
    e->gpu_holders[idx[i]]++;
  }
  placement_format(idx, j->n_gpus, j->gpus, sizeof(j->gpus));
  if (degraded)
    log_write(LOG_WARNING, "step placed on a degraded gpu (last resort)",
              "saga_id", j->task.lease.saga_id, "step", j->task.step_name,
              "gpus", j->gpus, NULL);
  return true;
}

static void dispatch_task(struct sk_engine *e, leased_task *t,
                          const task_needs *needs);

/* Hands one leased task to its bulkhead, or settles it in the loop.
 * needs (NULL: none) are the task's resources. */
static void dispatch(struct sk_engine *e, leased_task *t,
                     const task_needs *needs) {
  store_op op;
  if (t->cancel_requested) {
    job_failure_op(t, "Cancelled", "the saga was cancelled", false, &op);
    push_result(e, &op);
  } else if (t->action == DEF_KIND_SLEEP) {
    job_success_op(t, &op);
    push_result(e, &op);
  } else if (t->action == DEF_KIND_HTTP) {
    dispatch_http(e, t);
  } else if (t->action != DEF_KIND_TASK) {
    job_failure_op(t, "UnsupportedStepKind",
                   "this engine cannot run this kind of step", false, &op);
    push_result(e, &op);
  } else {
    dispatch_task(e, t, needs);
  }
  leased_task_clear(t);
}

static void dispatch_task(struct sk_engine *e, leased_task *t,
                          const task_needs *needs) {
  store_op op;
  {
    handler *h = engine_find_handler(e, t->task_type);
    bulkhead *bh = engine_find_bulkhead(e, t->bulkhead);
    exec_job *j = (h && bh) ? job_new(e, t, h, bh) : NULL;
    if (j == NULL) {
      job_failure_op(t, "NoHandler", "no handler or bulkhead on this node",
                     true, &op);
      push_result(e, &op);
    } else if (needs != NULL && needs->gpus > 0 && !gpu_place(e, j, needs)) {
      /* The GPUs changed since the dequeue: hand it back, no attempt
       * spent; it waits a moment so this node does not spin on it. */
      queue_release_after(e, &j->task.lease, GPU_MISFIT_DELAY_MS);
      start_release(e);
      job_free(j);
    } else {
      inflight_add(e, j);
      breaker_on_dispatch(&h->br);
      engine_metrics_dispatch(e->metrics, j->task.workflow, j->task.step_name,
                              j->task.lease.attempt, j->task.deliveries);
      if (pool_submit(bh->pool, &j->link) != SK_OK) {
        inflight_remove(e, j);
        job_failure_op(&j->task, "ShuttingDown", "the node is stopping", true,
                       &op);
        push_result(e, &op);
        job_free(j);
      }
    }
  }
}

/* ---- finished jobs ------------------------------------------------------- */

static void start_release(struct sk_engine *e);

/* Remembers a lease to hand back, due again after delay_ms;
 * start_release sends them. */
static void queue_release_after(struct sk_engine *e, const store_lease *l,
                                int64_t delay_ms) {
  if (e->n_to_release == e->cap_to_release) {
    size_t cap = e->cap_to_release ? e->cap_to_release * 2 : 64;
    store_lease *p = realloc(e->to_release, cap * sizeof(*p));
    if (p != NULL)
      e->to_release = p;
    int64_t *d = realloc(e->release_delay, cap * sizeof(*d));
    if (d != NULL)
      e->release_delay = d;
    if (p == NULL || d == NULL)
      return; /* the lease expires instead: slower, nothing lost */
    e->cap_to_release = cap;
  }
  e->release_delay[e->n_to_release] = delay_ms;
  e->to_release[e->n_to_release++] = *l;
}

static void queue_release(struct sk_engine *e, const store_lease *l) {
  queue_release_after(e, l, 0);
}

static void collect_done(struct sk_engine *e) {
  pthread_mutex_lock(&e->mu);
  exec_job *list = e->done;
  e->done = NULL;
  pthread_mutex_unlock(&e->mu);
  int64_t now = clock_now_ms();
  while (list != NULL) {
    exec_job *j = list;
    list = j->next_done;
    inflight_remove(e, j);
    if (atomic_load(&j->state) != JOB_ABANDONED) {
      store_op op;
      job_to_op(j, &op);
      if (j->shutdown_cancel && !op.ok) {
        /* It stopped because we are stopping: another node runs the same
         * attempt; the user's retry budget is not spent on our shutdown. */
        queue_release(e, &j->task.lease);
        store_op_clear(&op);
      } else {
        int64_t started = atomic_load(&j->started_mono_ms);
        double secs =
            started > 0 ? (double)(clock_mono_ms() - started) / 1e3 : 0;
        engine_metrics_attempt(e->metrics, j->task.workflow, j->task.step_name,
                               j->task.lease.kind == TASK_KIND_COMP,
                               op.ok ? "ok" : "error", secs);
        if (j->h != NULL) {
          breaker_record(&j->h->br, op.ok, counted_failure(&op), now);
          show_breaker(e, j->h->task_type, &j->h->br, &j->h->shown);
        }
        push_result(e, &op);
      }
    }
    job_free(j);
  }
}

/* ---- group commit ------------------------------------------------------ */

typedef struct commit_work {
  uv_work_t req;
  struct sk_engine *e;
  int lane; /* which commit connection */
  store_batch batch;
  size_t n_results; /* ops[0..n_results) are results we own */
  api_op **api;     /* ops[n_results..) are shallow copies of these */
  size_t n_api;
  int *budget; /* per bulkhead, snapshot */
  int *budget_left;
  bool *type_ok; /* per handler: breaker closed */
  saga_rng rng;
  int rc;
  sk_error err;
} commit_work;

static const def_workflow *env_get_def(void *ud, PGconn *c, const char *name,
                                       int version) {
  commit_work *w = ud;
  def_workflow *wf = NULL;
  if (engine_get_workflow(w->e, c, name, version, &wf, NULL) != SK_OK)
    return NULL;
  /* The registry keeps its own reference for the engine's lifetime. */
  def_workflow_unref(wf);
  return wf;
}

static void env_claims_reset(void *ud) {
  commit_work *w = ud;
  for (size_t i = 0; i < w->e->n_bulkheads; i++)
    w->budget_left[i] = w->budget[i];
}

static bool env_claim(void *ud, const saga_task *t) {
  commit_work *w = ud;
  struct sk_engine *e = w->e;
  if (t->action == DEF_KIND_SLEEP)
    return true; /* settled by the loop itself, no worker slot */
  if (t->gpus > 0)
    return false; /* placed through the GPU lane, where GPUs are known */
  bool ok = t->action == DEF_KIND_HTTP && w->e->http_up;
  for (size_t i = 0; i < e->n_handlers && t->action == DEF_KIND_TASK; i++)
    if (strcmp(e->handlers[i].task_type, t->task_type) == 0) {
      ok = w->type_ok[i];
      break;
    }
  if (!ok)
    return false;
  const char *bname = t->bulkhead != NULL ? t->bulkhead : "default";
  for (size_t i = 0; i < e->n_bulkheads; i++)
    if (strcmp(e->bulkheads[i].name, bname) == 0) {
      if (w->budget_left[i] <= 0)
        return false;
      w->budget_left[i]--;
      return true;
    }
  return false;
}

static void commit_work_fn(uv_work_t *req) {
  commit_work *w = req->data;
  PGconn *c = w->e->commit_conn[w->lane];
  ensure_conn(c);
  store_env env = {.node = w->e->node,
                   .now_ms = clock_now_ms(),
                   .rng = &w->rng,
                   .lease_ttl_ms = w->e->o.lease_ttl_ms,
                   .get_def = env_get_def,
                   .claims_reset = env_claims_reset,
                   .claim = env_claim,
                   .ud = w,
                   .cache = w->e->state_cache};
  w->rc = sagastore_commit(c, &w->batch, &env, &w->err);
}

static void commit_work_free(commit_work *w) {
  for (size_t i = 0; i < w->n_results; i++)
    store_op_clear(&w->batch.ops[i]);
  store_batch_clear_out(&w->batch);
  free(w->batch.ops);
  free(w->api);
  free(w->budget);
  free(w->budget_left);
  free(w->type_ok);
  free(w);
}

static void finish_api_op(api_op *a, const store_op *res, int rc,
                          const sk_error *err) {
  a->op.rc = res->rc;
  a->op.existed = res->existed;
  a->op.replayed_new = res->replayed_new;
  a->op.status = res->status;
  memcpy(a->op.saga_id, res->saga_id, sizeof(a->op.saga_id));
  a->rc = rc;
  if (err != NULL)
    a->err = *err;
  a->done = true;
  pthread_cond_signal(&a->cv);
}

static void commit_succeeded(struct sk_engine *e, commit_work *w) {
  store_batch *b = &w->batch;
  for (size_t i = 0; i < w->n_results; i++)
    if (b->ops[i].rc == SK_ELEASE)
      log_write(LOG_INFO, "result dropped: lease no longer held", "saga_id",
                b->ops[i].lease.saga_id, "#step", (int64_t)b->ops[i].lease.step,
                "#attempt", (int64_t)b->ops[i].lease.attempt, NULL);
  atomic_fetch_add(&e->n_commits, 1);
  atomic_fetch_add(&e->n_ops_committed, b->n_ops);
  atomic_fetch_add(&e->n_fenced, b->n_fenced);
  pthread_mutex_lock(&e->mu);
  for (size_t i = 0; i < w->n_api; i++)
    finish_api_op(w->api[i], &b->ops[w->n_results + i], SK_OK, NULL);
  e->gen++;
  pthread_cond_broadcast(&e->gen_cv);
  pthread_mutex_unlock(&e->mu);
  for (size_t i = 0; i < b->n_claimed; i++)
    dispatch(e, &b->claimed[i], NULL); /* claims never need GPUs */
  /* Due work we could not claim is in the queue now: ask for it without
   * waiting for our own NOTIFY to come back. */
  if (b->n_unclaimed_due > 0)
    e->dequeue_wanted = true;
  if (b->next_due_ms > 0 &&
      (e->due_at_ms == 0 || b->next_due_ms < e->due_at_ms)) {
    int64_t delay = b->next_due_ms - clock_now_ms();
    e->due_at_ms = b->next_due_ms;
    uv_timer_start(&e->due_timer, due_cb, delay > 0 ? (uint64_t)delay : 0, 0);
  }
}

/* True if retrying the same batch may succeed: a transient SQL error, a
 * lost connection (reset before the next try) or a failed allocation. */
static bool failure_is_transient(struct sk_engine *e, const commit_work *w) {
  if (w->rc == SK_ENOMEM)
    return true;
  if (w->rc != SK_EDB)
    return false;
  return db_sqlstate_transient(w->err.sqlstate) ||
         PQstatus(e->commit_conn[w->lane]) != CONNECTION_OK;
}

/* A lone op that fails for a reason retrying cannot cure. A result is
 * dropped (its lease expires and the attempt runs again elsewhere, still
 * isolated); an API op returns the error to its caller. Everything else in
 * the engine goes on. */
static void drop_poison(struct sk_engine *e, commit_work *w) {
  store_op *op = &w->batch.ops[0];
  if (w->n_results == 1) {
    log_write(LOG_ERROR, "dropping a result that cannot be committed",
              "saga_id", op->lease.saga_id, "#step", (int64_t)op->lease.step,
              "error", w->err.message, "sqlstate", w->err.sqlstate, NULL);
    return; /* commit_work_free clears it */
  }
  pthread_mutex_lock(&e->mu);
  finish_api_op(w->api[0], op, w->rc, &w->err);
  pthread_mutex_unlock(&e->mu);
}

/* Puts a failed batch back: results to the front of the queue, API ops to
 * the front of theirs, and retries after a backoff. A batch that failed
 * for a non-transient reason is retried one op at a time, so one poison op
 * cannot hold up every other saga. */
static void commit_failed(struct sk_engine *e, commit_work *w) {
  bool transient = failure_is_transient(e, w);
  log_write(LOG_ERROR, "group commit failed", "error", w->err.message,
            "sqlstate", w->err.sqlstate, "#ops", (int64_t)w->batch.n_ops,
            "retry", transient ? "whole batch" : "one op at a time", NULL);
  if (!transient && w->batch.n_ops == 1) {
    drop_poison(e, w);
    return;
  }
  if (!transient && e->isolate_left < w->batch.n_ops)
    e->isolate_left = w->batch.n_ops;
  size_t n = w->n_results;
  if (n > 0) {
    store_op *merged = malloc((n + e->n_results + 1) * sizeof(store_op));
    if (merged != NULL) {
      memcpy(merged, w->batch.ops, n * sizeof(store_op));
      if (e->n_results > 0)
        memcpy(merged + n, e->results, e->n_results * sizeof(store_op));
      free(e->results);
      e->results = merged;
      e->n_results += n;
      e->cap_results = e->n_results + 1;
      w->n_results = 0; /* moved */
    }
  }
  pthread_mutex_lock(&e->mu);
  for (size_t i = w->n_api; i > 0; i--) {
    api_op *a = w->api[i - 1];
    a->next = e->api_head;
    e->api_head = a;
    if (e->api_tail == NULL)
      e->api_tail = a;
  }
  pthread_mutex_unlock(&e->mu);
  /* Back off while the database is away: 100 ms doubling to 5 s. A batch
   * being isolated goes on at once. */
  if (!transient)
    return;
  e->commit_backoff = true;
  e->retry_delay_ms =
      e->retry_delay_ms == 0 ? RETRY_MIN_MS : e->retry_delay_ms * 2;
  if (e->retry_delay_ms > RETRY_MAX_MS)
    e->retry_delay_ms = RETRY_MAX_MS;
  uv_timer_start(&e->retry_timer, retry_cb, (uint64_t)e->retry_delay_ms, 0);
}

static void commit_after(uv_work_t *req, int status) {
  commit_work *w = req->data;
  struct sk_engine *e = w->e;
  e->commit_busy[w->lane] = false;
  for (size_t i = 0; i < e->n_bulkheads; i++)
    e->bulkheads[i].reserved -= w->budget[i];
  if (w->rc == SK_OK) {
    e->retry_delay_ms = 0;
    commit_succeeded(e, w);
  } else {
    commit_failed(e, w);
  }
  commit_work_free(w);
  maybe_commit(e);
  maybe_dequeue(e);
  maybe_finish(e);
}

/* Takes up to max_batch API ops (under mu). */
static size_t take_api_ops(struct sk_engine *e, api_op **out, size_t max) {
  size_t n = 0;
  pthread_mutex_lock(&e->mu);
  while (e->api_head != NULL && n < max) {
    api_op *a = e->api_head;
    e->api_head = a->next;
    if (e->api_head == NULL)
      e->api_tail = NULL;
    a->next = NULL;
    out[n++] = a;
  }
  pthread_mutex_unlock(&e->mu);
  return n;
}

static bool api_pending(struct sk_engine *e) {
  pthread_mutex_lock(&e->mu);
  bool p = e->api_head != NULL;
  pthread_mutex_unlock(&e->mu);
  return p;
}

static commit_work *commit_work_new(struct sk_engine *e) {
  commit_work *w = calloc(1, sizeof(*w));
  size_t max = (size_t)e->o.max_batch;
  if (w == NULL)
    return NULL;
  w->e = e;
  w->req.data = w;
  w->batch.ops = calloc(max, sizeof(store_op));
  w->api = calloc(max, sizeof(api_op *));
  w->budget = calloc(e->n_bulkheads + 1, sizeof(int));
  w->budget_left = calloc(e->n_bulkheads + 1, sizeof(int));
  w->type_ok = calloc(e->n_handlers + 1, sizeof(bool));
  if (!w->batch.ops || !w->api || !w->budget || !w->budget_left ||
      !w->type_ok) {
    commit_work_free(w);
    return NULL;
  }
  w->rng.s = saga_rng_next(&e->rng) | 1;
  return w;
}

static int free_commit_lane(const struct sk_engine *e) {
  for (int i = 0; i < ENGINE_COMMIT_LANES; i++)
    if (!e->commit_busy[i])
      return i;
  return -1;
}

static bool any_commit_busy(const struct sk_engine *e) {
  for (int i = 0; i < ENGINE_COMMIT_LANES; i++)
    if (e->commit_busy[i])
      return true;
  return false;
}

/* True if at least n ops wait for a commit. */
static bool ops_waiting(struct sk_engine *e, size_t n) {
  if (e->n_results >= n)
    return true;
  size_t k = e->n_results;
  pthread_mutex_lock(&e->mu);
  for (const api_op *a = e->api_head; a != NULL && k < n; a = a->next)
    k++;
  pthread_mutex_unlock(&e->mu);
  return k >= n;
}

/* A second lane only opens for a batch worth a commit of its own: below
 * this the ops wait for the running commit, as with one lane, and the
 * commits per step stay low. */
#define LANE_MIN_OPS 32

static void maybe_commit(struct sk_engine *e) {
  int lane = free_commit_lane(e);
  if (lane < 0 || e->commit_backoff)
    return;
  if (any_commit_busy(e) && !ops_waiting(e, LANE_MIN_OPS))
    return;
  if (e->n_results == 0 && !api_pending(e))
    return;
  commit_work *w = commit_work_new(e);
  if (w == NULL)
    return; /* retried on the next wake-up */
  w->lane = lane;
  size_t max = e->isolate_left > 0 ? 1 : (size_t)e->o.max_batch;
  if (e->isolate_left > 0)
    e->isolate_left--;
  size_t nr = e->n_results < max ? e->n_results : max;
  if (nr > 0) {
    memcpy(w->batch.ops, e->results, nr * sizeof(store_op));
    memmove(e->results, e->results + nr,
            (e->n_results - nr) * sizeof(store_op));
    e->n_results -= nr;
  }
  w->n_results = nr;
  w->n_api = take_api_ops(e, w->api, max - nr);
  for (size_t i = 0; i < w->n_api; i++)
    w->batch.ops[nr + i] = w->api[i]->op; /* shallow: strings stay theirs */
  w->batch.n_ops = nr + w->n_api;
  bool stopping = atomic_load(&e->state) != ENGINE_STATE_RUNNING;
  int64_t now = clock_now_ms();
  for (size_t i = 0; i < e->n_bulkheads && !stopping; i++) {
    bulkhead *bh = &e->bulkheads[i];
    int free_slots = bh->concurrency - (int)pool_load(bh->pool) -
                     bh->http_inflight - bh->reserved;
    w->budget[i] = free_slots > 0 ? free_slots : 0;
    bh->reserved += w->budget[i];
  }
  for (size_t i = 0; i < e->n_handlers && !stopping; i++)
    w->type_ok[i] = breaker_allow(&e->handlers[i].br, now) < 0;
  e->commit_busy[lane] = true;
  if (uv_queue_work(&e->loop, &w->req, commit_work_fn, commit_after) != 0) {
    e->commit_busy[lane] = false;
    for (size_t i = 0; i < e->n_bulkheads; i++)
      e->bulkheads[i].reserved -= w->budget[i];
    commit_failed(e, w);
    commit_work_free(w);
  }
}

static void retry_cb(uv_timer_t *t) {
  struct sk_engine *e = t->data;
  e->commit_backoff = false;
  maybe_commit(e);
}

/* ---- dequeue ------------------------------------------------------------- */

typedef struct dequeue_work {
  uv_work_t req;
  struct sk_engine *e;
  dequeue_lane *lanes;
  size_t n_lanes;
  const char **types; /* shared by every task lane */
  size_t n_types;
  const char **probe;        /* half-open types, one lane each */
  int task_capacity;         /* sum of the task lanes' limits */
  int64_t gpu_caps[GPU_MAX]; /* this node's GPU envelope */
  leased_task *got;
  task_needs *needs;
  size_t n_got;
  int rc;
  sk_error err;
} dequeue_work;

static void dequeue_work_fn(uv_work_t *req) {
  dequeue_work *w = req->data;
  ensure_conn(w->e->dequeue_conn);
  w->rc = taskqueue_dequeue_needs(w->e->dequeue_conn, w->e->node,
                                  w->e->o.lease_ttl_ms, w->lanes, w->n_lanes,
                                  &w->got, &w->needs, &w->n_got, &w->err);
}

static void dequeue_work_free(dequeue_work *w) {
  for (size_t i = 0; i < w->n_got; i++)
    leased_task_clear(&w->got[i]);
  free(w->got);
  free(w->needs);
  free(w->lanes);
  free(w->types);
  free(w->probe);
  free(w);
}

static void dequeue_after(uv_work_t *req, int status) {
  dequeue_work *w = req->data;
  struct sk_engine *e = w->e;
  e->dequeue_busy = false;
  atomic_fetch_add(&e->n_dequeues, 1);
  if (w->rc != SK_OK) {
    log_write(LOG_ERROR, "could not lease tasks", "error", w->err.message,
              "sqlstate", w->err.sqlstate, NULL);
  } else {
    /* Full task lanes (or a full sleep lane) mean more may be waiting: ask
     * again as soon as slots free up. */
    int tasks = 0, sleeps = 0, gpu_tasks = 0;
    for (size_t i = 0; i < w->n_got; i++) {
      if (w->got[i].action == DEF_KIND_SLEEP)
        sleeps++;
      else
        tasks++;
      if (w->needs != NULL && w->needs[i].gpus > 0)
        gpu_tasks++;
    }
    /* A GPU lane takes one task at a time: look again for the next. */
    if ((w->task_capacity > 0 && tasks >= w->task_capacity) ||
        sleeps >= SLEEP_LANE_LIMIT || gpu_tasks > 0)
      e->dequeue_wanted = true;
    for (size_t i = 0; i < w->n_got; i++)
      dispatch(e, &w->got[i], w->needs != NULL ? &w->needs[i] : NULL);
  }
  dequeue_work_free(w);
  maybe_commit(e);
  maybe_dequeue(e);
  maybe_finish(e);
}

/* What fits this node's GPUs now (nothing when draining or without GPUs). */
static dequeue_gpu_fit gpu_fit(struct sk_engine *e, dequeue_work *w) {
  placement_node pn;
  engine_gpu_view(e, e->gpu_snap, e->gpu_reserved_mb, e->gpu_holders, &pn);
  dequeue_gpu_fit f = {.caps = w->gpu_caps};
  placement_envelope(&pn, w->gpu_caps, &f.n_caps, &f.idle);
  return f;
}

static bool build_lanes(struct sk_engine *e, dequeue_work *w) {
  int64_t now = clock_now_ms();
  size_t cap = e->n_bulkheads * (e->n_handlers + 2) + 1;
  w->lanes = calloc(cap, sizeof(dequeue_lane));
  w->types = calloc(e->n_handlers + 1, sizeof(char *));
  w->probe = calloc(e->n_handlers + 1, sizeof(char *));
  if (!w->lanes || !w->types || !w->probe)
    return false;
  size_t n_probe = 0;
  for (size_t i = 0; i < e->n_handlers; i++) {
    int allow = breaker_allow(&e->handlers[i].br, now);
    show_breaker(e, e->handlers[i].task_type, &e->handlers[i].br,
                 &e->handlers[i].shown);
    if (allow < 0)
      w->types[w->n_types++] = e->handlers[i].task_type;
    else if (allow > 0)
      w->probe[n_probe++] = e->handlers[i].task_type;
  }
  dequeue_gpu_fit fit = gpu_fit(e, w);
  bool gpus = fit.n_caps > 0 || fit.idle > 0;
  for (size_t i = 0; i < e->n_bulkheads; i++) {
    bulkhead *bh = &e->bulkheads[i];
    int free_slots = bh->concurrency - (int)pool_load(bh->pool) -
                     bh->http_inflight - bh->reserved;
    if (free_slots <= 0)
      continue;
    /* Handler types with closed breakers and http tasks, under one
     * limit: the bulkhead's free slots. */
    w->lanes[w->n_lanes++] = (dequeue_lane){.kind = DEQUEUE_WORK,
                                            .bulkhead = bh->name,
                                            .types = w->types,
                                            .n_types = w->n_types,
                                            .limit = free_slots};
    w->task_capacity += free_slots;
    if (gpus && w->n_types > 0)
      w->lanes[w->n_lanes++] = (dequeue_lane){.kind = DEQUEUE_WORK,
                                              .bulkhead = bh->name,
                                              .types = w->types,
                                              .n_types = w->n_types,
                                              .limit = 1,
                                              .gpu_mode = DEQUEUE_GPU_ONLY,
                                              .gpu = fit};
    for (size_t k = 0; k < n_probe; k++) {
      w->lanes[w->n_lanes++] = (dequeue_lane){.kind = DEQUEUE_TASKS,
                                              .bulkhead = bh->name,
                                              .types = &w->probe[k],
                                              .n_types = 1,
                                              .limit = 1,
                                              .gpu_mode = DEQUEUE_GPU_ANY,
                                              .gpu = fit};
      w->task_capacity++;
    }
  }
  w->lanes[w->n_lanes++] =
      (dequeue_lane){.kind = DEQUEUE_SLEEPS, .limit = SLEEP_LANE_LIMIT};
  return true;
}

/* Leases due tasks when they are wanted and slots are free. With every slot
 * busy (or promised to a commit's claims) the wish is kept, not spent: the
 * next freed slot or finished commit calls this again. `force` (the poll
 * timer) also runs a sleeps-only dequeue, so durable timers come due even
 * on a node whose workers are all busy. */
static void dequeue_if(struct sk_engine *e, bool force) {
  if (e->dequeue_busy && force)
    e->dequeue_forced = true; /* run it once the one in flight is back */
  if (e->dequeue_busy || !(e->dequeue_wanted || force) ||
      atomic_load(&e->state) != ENGINE_STATE_RUNNING)
    return;
  e->dequeue_forced = false;
  dequeue_work *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return;
  w->e = e;
  w->req.data = w;
  if (!build_lanes(e, w)) {
    dequeue_work_free(w);
    return;
  }
  if (w->task_capacity == 0 && !force) {
    dequeue_work_free(w);
    return;
  }
  if (w->task_capacity > 0)
    e->dequeue_wanted = false;
  e->dequeue_busy = true;
  if (uv_queue_work(&e->loop, &w->req, dequeue_work_fn, dequeue_after) != 0) {
    e->dequeue_busy = false;
    e->dequeue_wanted = true;
    dequeue_work_free(w);
  }
}

static void maybe_dequeue(struct sk_engine *e) {
  dequeue_if(e, e->dequeue_forced);
}

/* ---- lease renewal, heartbeat, release ---------------------------------- */

typedef struct aux_work {
  uv_work_t req;
  struct sk_engine *e;
  exec_job **jobs; /* renew these (still in flight when we return) */
  store_lease *leases;
  int64_t *delays; /* release: due again after this many ms */
  bool *lost, *cancel;
  size_t n;
  bool release;   /* hand the leases back instead */
  bool duties;    /* also try the cluster's singleton duties */
  char *capacity; /* heartbeat: the node's capacity JSON */
  int rc;
  sk_error err;
} aux_work;

static void aux_work_fn(uv_work_t *req) {
  aux_work *w = req->data;
  struct sk_engine *e = w->e;
  ensure_conn(e->aux_conn);
  if (w->release) {
    w->rc = taskqueue_release(e->aux_conn, w->leases, w->delays, w->n, &w->err);
    return;
  }
  w->rc = taskqueue_renew(e->aux_conn, w->leases, w->n, e->o.lease_ttl_ms,
                          w->lost, w->cancel, &w->err);
  char cap[64];
  snprintf(cap, sizeof(cap), "{\"inflight\": %zu}", w->n);
  queries_node_heartbeat(e->aux_conn, e->node,
                         w->capacity != NULL ? w->capacity : cap, NULL);
  if (w->duties) {
    /* Forget nodes silent for 40 leases (10 minutes at least). */
    int64_t reap = 40LL * e->o.lease_ttl_ms;
    size_t reaped = 0, purged = 0;
    sk_error derr = {0};
    if (queries_singleton_duties(e->aux_conn, reap < 600000 ? 600000 : reap,
                                 e->o.retention_days, &reaped, &purged,
                                 &derr) == SK_OK &&
        (reaped > 0 || purged > 0))
      log_write(LOG_INFO, "singleton duties", "#nodes_reaped", (int64_t)reaped,
                "#sagas_purged", (int64_t)purged, NULL);
  }
}

static void aux_work_free(aux_work *w) {
  free(w->capacity);
  free(w->jobs);
  free(w->leases);
  free(w->delays);
  free(w->lost);
  free(w->cancel);
  free(w);
}

static bool job_in_flight(struct sk_engine *e, exec_job *j) {
  for (exec_job *x = e->inflight; x != NULL; x = x->next_inflight)
    if (x == j)
      return true;
  return false;
}

static void aux_after(uv_work_t *req, int status) {
  aux_work *w = req->data;
  struct sk_engine *e = w->e;
  e->aux_busy = false;
  if (w->rc != SK_OK) {
    log_write(LOG_ERROR,
              w->release ? "could not hand back leases"
                         : "could not renew leases",
              "error", w->err.message, NULL);
  } else if (!w->release) {
    /* Jobs may have finished meanwhile; only touch those still here. */
    collect_done(e);
    for (size_t i = 0; i < w->n; i++) {
      exec_job *j = w->jobs[i];
      if (!job_in_flight(e, j))
        continue;
      if (w->lost[i]) {
        atomic_store(&j->cancel, true);
        atomic_store(&j->state, JOB_ABANDONED);
        log_write(LOG_WARNING, "lease lost; abandoning the attempt", "saga_id",
                  j->task.lease.saga_id, "step", j->task.step_name, NULL);
      } else if (w->cancel[i]) {
        atomic_store(&j->cancel, true);
      }
    }
  }
  aux_work_free(w);
  start_release(e);
  maybe_commit(e);
  maybe_finish(e);
}

static aux_work *aux_work_new(struct sk_engine *e, size_t n) {
  aux_work *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return NULL;
  w->e = e;
  w->req.data = w;
  w->jobs = calloc(n + 1, sizeof(exec_job *));
  w->leases = calloc(n + 1, sizeof(store_lease));
  w->delays = calloc(n + 1, sizeof(int64_t));
  w->lost = calloc(n + 1, sizeof(bool));
  w->cancel = calloc(n + 1, sizeof(bool));
  if (!w->jobs || !w->leases || !w->delays || !w->lost || !w->cancel) {
    aux_work_free(w);
    return NULL;
  }
  return w;
}

static void start_aux(struct sk_engine *e, aux_work *w) {
  e->aux_busy = true;
  if (uv_queue_work(&e->loop, &w->req, aux_work_fn, aux_after) != 0) {
    e->aux_busy = false;
    aux_work_free(w);
  }
}

/* Sends the queued hand-backs when the aux connection is free. */
static void start_release(struct sk_engine *e) {
  if (e->aux_busy || e->n_to_release == 0)
    return;
  aux_work *w = aux_work_new(e, e->n_to_release);
  if (w == NULL)
    return;
  memcpy(w->leases, e->to_release, e->n_to_release * sizeof(store_lease));
  memcpy(w->delays, e->release_delay, e->n_to_release * sizeof(int64_t));
  w->n = e->n_to_release;
  w->release = true;
  e->n_to_release = 0;
  start_aux(e, w);
}

/* The heartbeat's capacity: in-flight count, bulkheads, and the GPU report
 * (health_report_json) with this node's reservations and the free memory
 * placement uses per GPU. NULL on OOM (the heartbeat then says less). */
static char *capacity_json(struct sk_engine *e) {
  char *gj = health_report_json(e->gpu_snap);
  cJSON *root = cJSON_CreateObject();
  cJSON *gpu = gj != NULL ? cJSON_Parse(gj) : NULL;
  free(gj);
  cJSON *bhs = cJSON_AddObjectToObject(root, "bulkheads");
  for (size_t i = 0; i < e->n_bulkheads && bhs != NULL; i++)
    cJSON_AddNumberToObject(bhs, e->bulkheads[i].name,
                            e->bulkheads[i].concurrency);
  cJSON_AddNumberToObject(root, "inflight", (double)e->n_inflight);
  placement_node pn;
  engine_gpu_view(e, e->gpu_snap, e->gpu_reserved_mb, e->gpu_holders, &pn);
  cJSON *list = cJSON_GetObjectItemCaseSensitive(gpu, "gpus");
  unsigned i = 0;
  cJSON *g;
  cJSON_ArrayForEach(g, list) {
    if (i >= pn.n)
      break;
    cJSON_AddNumberToObject(g, "free_mb",
                            (double)placement_free_mb(&pn.gpu[i]));
    cJSON_AddNumberToObject(g, "reserved_mb", (double)pn.gpu[i].reserved_mb);
    cJSON_AddNumberToObject(g, "holders", pn.gpu[i].holders);
    i++;
  }
  cJSON *item = gpu != NULL ? gpu->child : NULL;
  while (item != NULL) { /* move gpus, draining, provider... to the top */
    cJSON *next = item->next;
    cJSON_AddItemToObject(root, item->string,
                          cJSON_DetachItemViaPointer(gpu, item));
    item = next;
  }
  cJSON_Delete(gpu);
  char *out = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return out;
}

static void renew_cb(uv_timer_t *t) {
  struct sk_engine *e = t->data;
  if (e->aux_busy)
    return;
  int64_t now = clock_mono_ms();
  bool duties = now - e->duties_at_ms >= 10000;
  if (duties)
    e->duties_at_ms = now;
  aux_work *w = aux_work_new(e, e->n_inflight);
  if (w == NULL)
    return;
  w->capacity = capacity_json(e);
  w->duties = duties;
  for (exec_job *j = e->inflight; j != NULL; j = j->next_inflight) {
    if (atomic_load(&j->state) == JOB_ABANDONED)
      continue;
    w->jobs[w->n] = j;
    w->leases[w->n] = j->task.lease;
    w->n++;
  }
  start_aux(e, w);
}

/* ---- GPU health ------------------------------------------------------------
 */

static bool job_on_unhealthy_gpu(struct sk_engine *e, const exec_job *j) {
  for (unsigned i = 0; i < j->n_gpus; i++) {
    unsigned g = j->gpu_idx[i];
    if (g >= e->gpu_snap->n_gpus || e->gpu_snap->gpu[g].state == GH_UNHEALTHY)
      return true;
  }
  return false;
}

/* Cancels an attempt whose GPU turned unhealthy and hands its lease back,
 * due at once, without a result: no retry is spent, the same attempt runs
 * elsewhere. The job stays in flight (holding its reservation) until its
 * handler returns; its late result is dropped. */
static void move_off_gpu(struct sk_engine *e, exec_job *j) {
  int st = atomic_load(&j->state);
  if (st == JOB_ABANDONED || st == JOB_DONE || j->gpu_moved)
    return;
  if (!atomic_compare_exchange_strong(&j->state, &st, JOB_ABANDONED))
    return;
  j->gpu_moved = true;
  atomic_store(&j->cancel, true);
  queue_release(e, &j->task.lease);
  atomic_fetch_add(&e->n_gpu_moved, 1);
  engine_metrics_attempt(e->metrics, j->task.workflow, j->task.step_name,
                         j->task.lease.kind == TASK_KIND_COMP,
                         "infra:gpu_unhealthy", 0);
  log_write(LOG_WARNING, "gpu unhealthy; moving the attempt elsewhere",
            "saga_id", j->task.lease.saga_id, "step", j->task.step_name,
            "#attempt", (int64_t)j->task.lease.attempt, "gpus", j->gpus,
            "error_type", "infra:gpu_unhealthy", NULL);
}

/* Reads the sampler's report; moves attempts off unhealthy GPUs; asks for
 * a dequeue when what fits may have changed. */
static void gpu_cb(uv_timer_t *t) {
  struct sk_engine *e = t->data;
  uint64_t seq = e->gpu_snap->seq;
  bool draining = e->gpu_snap->draining;
  health_snapshot(e->gpu_health, e->gpu_snap);
  if (e->gpu_snap->draining && !draining)
    log_write(LOG_WARNING, "node draining: no new gpu steps", "reason",
              e->gpu_snap->drain_reason, NULL);
  bool moved = false;
  for (exec_job *j = e->inflight; j != NULL; j = j->next_inflight)
    if (j->n_gpus > 0 && !j->gpu_moved && job_on_unhealthy_gpu(e, j)) {
      move_off_gpu(e, j);
      moved = true;
    }
  if (moved)
    start_release(e);
  if (e->gpu_snap->seq != seq)
    e->dequeue_wanted = true;
  maybe_dequeue(e);
}

/* ---- timeouts --------------------------------------------------------------
 */

static void watchdog_cb(uv_timer_t *t) {
  struct sk_engine *e = t->data;
  listen_reconnect(e);
  int64_t now = clock_mono_ms();
  bool any = false;
  for (exec_job *j = e->inflight; j != NULL; j = j->next_inflight) {
    int64_t started = atomic_load(&j->started_mono_ms);
    if (j->is_http || started == 0 || now - started < j->task.timeout_ms)
      continue; /* curl enforces an http call's timeout itself */
    int expected = JOB_RUNNING;
    if (!atomic_compare_exchange_strong(&j->state, &expected, JOB_ABANDONED))
      continue;
    atomic_store(&j->cancel, true);
    store_op op;
    char msg[128];
    snprintf(msg, sizeof(msg), "attempt timed out after %lld ms",
             (long long)j->task.timeout_ms);
    job_failure_op(&j->task, "Timeout", msg, true, &op);
    breaker_record(&j->h->br, false, true, clock_now_ms());
    show_breaker(e, j->h->task_type, &j->h->br, &j->h->shown);
    engine_metrics_attempt(e->metrics, j->task.workflow, j->task.step_name,
                           j->task.lease.kind == TASK_KIND_COMP, "timeout",
                           (double)(now - started) / 1e3);
    log_write(LOG_WARNING, "attempt timed out", "saga_id",
              j->task.lease.saga_id, "step", j->task.step_name, "#attempt",
              (int64_t)j->task.lease.attempt, NULL);
    push_result(e, &op);
    any = true;
  }
  if (any)
    maybe_commit(e);
}

/* ---- wake-ups
 * ---------------------------------------------------------------- */

/* ---- fallbacks on an open breaker ------------------------------------------
 */

/* A fallback with on_breaker_open runs at once when its step's breaker is
 * open (workflow-spec.md "Fallback"): the loop looks for waiting forward
 * tasks of such types and hands each to the group commit as a
 * STORE_OP_BREAKER_OPEN, which runs the decider and drops the task. */
typedef struct scan_work {
  uv_work_t req;
  struct sk_engine *e;
  const char *types[64];
  size_t n_types;
  char (*ids)[37];
  int *steps;
  size_t n;
} scan_work;

static void scan_work_fn(uv_work_t *req) {
  scan_work *w = req->data;
  PGconn *c = w->e->aux_conn;
  ensure_conn(c);
  pgarr t;
  pgarr_init(&t);
  for (size_t i = 0; i < w->n_types; i++)
    pgarr_add_str(&t, w->types[i]);
  const char *p[1] = {pgarr_get(&t)};
  PGresult *r =
      p[0] == NULL
          ? NULL
          : PQexecParams(
                c,
                "SELECT saga_id::text, step FROM tasks WHERE action = 'task' "
                "AND kind = 0 AND task_type = ANY($1::text[]) "
                "AND available_at <= now() AND NOT cancel_requested "
                "ORDER BY available_at LIMIT 100",
                1, NULL, p, NULL, NULL, 0);
  pgarr_free(&t);
  int rows = PQresultStatus(r) == PGRES_TUPLES_OK ? PQntuples(r) : 0;
  w->ids = rows > 0 ? calloc((size_t)rows, 37) : NULL;
  w->steps = rows > 0 ? calloc((size_t)rows, sizeof(int)) : NULL;
  for (int i = 0; i < rows && w->ids != NULL && w->steps != NULL; i++) {
    snprintf(w->ids[i], 37, "%s", PQgetvalue(r, i, 0));
    w->steps[i] = atoi(PQgetvalue(r, i, 1));
    w->n++;
  }
  PQclear(r);
}

/* Queues a breaker-open op for the forward task of (saga, step). */
static void push_breaker_open(struct sk_engine *e, const char *saga_id,
                              int step) {
  store_op op;
  memset(&op, 0, sizeof(op));
  op.type = STORE_OP_BREAKER_OPEN;
  snprintf(op.saga_id, sizeof(op.saga_id), "%s", saga_id);
  op.lease.step = step;
  push_result(e, &op);
}

static void scan_after(uv_work_t *req, int status) {
  scan_work *w = req->data;
  struct sk_engine *e = w->e;
  e->aux_busy = false;
  for (size_t i = 0; i < w->n; i++)
    push_breaker_open(e, w->ids[i], w->steps[i]);
  free(w->ids);
  free(w->steps);
  free(w);
  start_release(e);
  maybe_commit(e);
  maybe_finish(e);
}

static void scan_breaker_fallbacks(struct sk_engine *e) {
  if (e->aux_busy || atomic_load(&e->state) != ENGINE_STATE_RUNNING)
    return;
  scan_work *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return;
  for (size_t i = 0; i < e->n_handlers && w->n_types < 64; i++)
    if (e->handlers[i].br.state == BREAKER_STATE_OPEN &&
        engine_type_has_breaker_fallback(e, e->handlers[i].task_type))
      w->types[w->n_types++] = e->handlers[i].task_type;
  if (w->n_types == 0) {
    free(w);
    return;
  }
  w->e = e;
  w->req.data = w;
  e->aux_busy = true;
  if (uv_queue_work(&e->loop, &w->req, scan_work_fn, scan_after) != 0) {
    e->aux_busy = false;
    free(w);
  }
}

static void poll_cb(uv_timer_t *t) {
  struct sk_engine *e = t->data;
  e->dequeue_wanted = true;
  dequeue_if(e, true);
  scan_breaker_fallbacks(e);
}

static void due_cb(uv_timer_t *t) {
  struct sk_engine *e = t->data;
  e->due_at_ms = 0;
  e->dequeue_wanted = true;
  /* What came due may be a durable timer (sleep), which needs no worker
   * slot: look even when every slot is busy, or this node has none. */
  dequeue_if(e, true);
}

static void listen_closed_cb(uv_handle_t *h) {
  struct sk_engine *e = h->data;
  e->handles_open--;
  e->listen_active = false;
  maybe_finish(e);
}

static void listen_cb(uv_poll_t *p, int status, int events) {
  struct sk_engine *e = p->data;
  if (status < 0 || !PQconsumeInput(e->listen_conn)) {
    /* The poll timer reconnects; until then polling covers. */
    log_write(LOG_WARNING,
              "lost the notification connection; polling until "
              "it is back",
              NULL);
    if (!uv_is_closing((uv_handle_t *)&e->listen_poll))
      uv_close((uv_handle_t *)&e->listen_poll, listen_closed_cb);
    return;
  }
  PGnotify *n;
  bool any = false;
  while ((n = PQnotifies(e->listen_conn)) != NULL) {
    PQfreemem(n);
    any = true;
  }
  if (any) {
    e->dequeue_wanted = true;
    /* Remote workers long-polling through this node look again. */
    pthread_mutex_lock(&e->mu);
    e->gen++;
    pthread_cond_broadcast(&e->gen_cv);
    pthread_mutex_unlock(&e->mu);
  }
  maybe_dequeue(e);
}

static int listen_start(struct sk_engine *e) {
  if (uv_poll_init(&e->loop, &e->listen_poll, PQsocket(e->listen_conn)) != 0)
    return SK_EIO;
  e->listen_poll.data = e;
  e->handles_open++;
  e->listen_active = true;
  uv_poll_start(&e->listen_poll, UV_READABLE, listen_cb);
  return SK_OK;
}

typedef struct listen_work {
  uv_work_t req;
  struct sk_engine *e;
  int rc;
} listen_work;

static void listen_work_fn(uv_work_t *req) {
  listen_work *w = req->data;
  PQreset(w->e->listen_conn);
  w->rc =
      PQstatus(w->e->listen_conn) == CONNECTION_OK
          ? db_exec(w->e->listen_conn, "LISTEN " SAGASTORE_NOTIFY_CHANNEL, NULL)
          : SK_EDB;
}

static void listen_after(uv_work_t *req, int status) {
  listen_work *w = req->data;
  struct sk_engine *e = w->e;
  e->listen_busy = false;
  if (w->rc == SK_OK && atomic_load(&e->state) == ENGINE_STATE_RUNNING &&
      listen_start(e) == SK_OK) {
    log_write(LOG_INFO, "notification connection is back", NULL);
    e->dequeue_wanted = true; /* whatever was announced meanwhile */
  }
  free(w);
  maybe_dequeue(e);
  maybe_finish(e);
}

/* Called from the watchdog (at most once a second while the connection is
 * down): re-establishes LISTEN off the loop thread. */
static void listen_reconnect(struct sk_engine *e) {
  int64_t now = clock_mono_ms();
  if (e->listen_active || e->listen_busy || now - e->listen_tried_ms < 1000 ||
      atomic_load(&e->state) != ENGINE_STATE_RUNNING)
    return;
  e->listen_tried_ms = now;
  listen_work *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return;
  w->e = e;
  w->req.data = w;
  e->listen_busy = true;
  if (uv_queue_work(&e->loop, &w->req, listen_work_fn, listen_after) != 0) {
    e->listen_busy = false;
    free(w);
  }
}

/* On stop: queued jobs are handed back at once, running ones are asked to
 * stop (sk_task_cancelled) and their results waited for. */
static void stop_jobs(struct sk_engine *e) {
  for (size_t i = 0; i < e->n_bulkheads; i++) {
    pool_link *l = pool_take_queued(e->bulkheads[i].pool);
    while (l != NULL) {
      exec_job *j = (exec_job *)l;
      l = l->next;
      queue_release(e, &j->task.lease);
      inflight_remove(e, j);
      job_free(j);
    }
  }
  for (exec_job *j = e->inflight; j != NULL; j = j->next_inflight) {
    if (!j->shutdown_cancel) {
      j->shutdown_cancel = true;
      atomic_store(&j->cancel, true);
    }
  }
  start_release(e);
}

static void wake_cb(uv_async_t *h) {
  struct sk_engine *e = h->data;
  collect_done(e);
  if (atomic_load(&e->state) == ENGINE_STATE_STOPPING)
    stop_jobs(e);
  start_release(e);
  maybe_commit(e);
  maybe_dequeue(e);
  maybe_finish(e);
}

void loop_wake(struct sk_engine *e) { uv_async_send(&e->wake); }

/* ---- start and stop
 * ----------------------------------------------------------- */

static void close_cb(uv_handle_t *h) {
  struct sk_engine *e = h->data;
  e->handles_open--;
}

static void close_handle(struct sk_engine *e, uv_handle_t *h) {
  if (!uv_is_closing(h))
    uv_close(h, close_cb);
}

/* When stopping and nothing is left in flight, closes every handle so that
 * uv_run returns. */
static void maybe_finish(struct sk_engine *e) {
  if (atomic_load(&e->state) != ENGINE_STATE_STOPPING)
    return;
  if (e->n_inflight > 0 || e->n_results > 0 || e->n_to_release > 0 ||
      any_commit_busy(e) || e->dequeue_busy || e->aux_busy || e->listen_busy ||
      api_pending(e))
    return;
  if (uv_is_closing((uv_handle_t *)&e->wake))
    return;
  close_handle(e, (uv_handle_t *)&e->wake);
  close_handle(e, (uv_handle_t *)&e->poll_timer);
  close_handle(e, (uv_handle_t *)&e->due_timer);
  close_handle(e, (uv_handle_t *)&e->renew_timer);
  close_handle(e, (uv_handle_t *)&e->watchdog_timer);
  close_handle(e, (uv_handle_t *)&e->retry_timer);
  close_handle(e, (uv_handle_t *)&e->gpu_timer);
  if (e->listen_active)
    close_handle(e, (uv_handle_t *)&e->listen_poll);
  if (e->http_up) {
    e->http_up = false;
    httpcall_close(&e->http, NULL);
  }
}

static int connect_all(struct sk_engine *e, sk_error *err) {
  _Static_assert(ENGINE_COMMIT_LANES == 2, "list every commit connection");
  PGconn **conns[] = {&e->commit_conn[0], &e->commit_conn[1], &e->dequeue_conn,
                      &e->aux_conn, &e->listen_conn};
  for (size_t i = 0; i < sizeof(conns) / sizeof(conns[0]); i++) {
    if (*conns[i] != NULL)
      continue;
    int rc = db_connect(e->conninfo, conns[i], err);
    if (rc != SK_OK)
      return rc;
  }
  return db_exec(e->listen_conn, "LISTEN " SAGASTORE_NOTIFY_CHANNEL, err);
}

/* A process restarted under the same node name takes its predecessor's
 * leases back at once rather than after the lease TTL. The name is held
 * on the notification connection (idle, and open while the loop runs). */
static void reclaim_own(struct sk_engine *e) {
  sk_error err = {0};
  bool in_use = false;
  int n = 0;
  if (taskqueue_reclaim_own(e->listen_conn, e->node, &in_use, &n, &err) !=
      SK_OK)
    log_write(LOG_WARNING, "could not hand back earlier leases of this node",
              "error", err.message, NULL);
  else if (in_use)
    log_write(LOG_WARNING,
              "another live process uses this node name; its leases are "
              "left to expire",
              "node", e->node, NULL);
  else if (n > 0)
    log_write(LOG_INFO, "handed back the leases of a previous process", "node",
              e->node, "#tasks", (int64_t)n, NULL);
}

int loop_init(struct sk_engine *e) {
  sk_error err = {0};
  int rc = connect_all(e, &err);
  if (rc != SK_OK) {
    log_write(LOG_ERROR, "could not connect the engine loop", "error",
              err.message, NULL);
    return rc;
  }
  reclaim_own(e);
  if (uv_loop_init(&e->loop) != 0)
    return SK_EIO;
  uv_handle_t *hs[] = {
      (uv_handle_t *)&e->wake,           (uv_handle_t *)&e->poll_timer,
      (uv_handle_t *)&e->due_timer,      (uv_handle_t *)&e->renew_timer,
      (uv_handle_t *)&e->watchdog_timer, (uv_handle_t *)&e->retry_timer,
      (uv_handle_t *)&e->gpu_timer};
  uv_async_init(&e->loop, &e->wake, wake_cb);
  uv_timer_init(&e->loop, &e->poll_timer);
  uv_timer_init(&e->loop, &e->due_timer);
  uv_timer_init(&e->loop, &e->renew_timer);
  uv_timer_init(&e->loop, &e->watchdog_timer);
  uv_timer_init(&e->loop, &e->retry_timer);
  uv_timer_init(&e->loop, &e->gpu_timer);
  for (size_t i = 0; i < sizeof(hs) / sizeof(hs[0]); i++) {
    hs[i]->data = e;
    e->handles_open++;
  }
  e->listen_active = false;
  if (listen_start(e) != SK_OK)
    log_write(LOG_WARNING,
              "cannot watch the notification connection; "
              "polling",
              NULL);
  e->http_up = httpcall_init(&e->http, &e->loop) == SK_OK;
  if (!e->http_up)
    log_write(LOG_WARNING,
              "http steps cannot run on this node (libcurl "
              "could not start)",
              NULL);
  uint64_t poll = (uint64_t)e->o.poll_interval_ms;
  uv_timer_start(&e->poll_timer, poll_cb, 0, poll);
  uint64_t renew = (uint64_t)(e->o.lease_ttl_ms / 3);
  uv_timer_start(&e->renew_timer, renew_cb, renew, renew);
  uv_timer_start(&e->watchdog_timer, watchdog_cb, WATCHDOG_MS, WATCHDOG_MS);
  if (e->gpu_sampling)
    uv_timer_start(&e->gpu_timer, gpu_cb, GPU_TICK_MS, GPU_TICK_MS);
  e->dequeue_wanted = true;
  return SK_OK;
}

/* Commits API ops left behind when the loop ended, on query_conn. */
static void drain_api_direct(struct sk_engine *e);

int loop_run(struct sk_engine *e) {
  log_write(LOG_INFO, "engine loop started", NULL);
  uv_run(&e->loop, UV_RUN_DEFAULT);
  pthread_mutex_lock(&e->mu);
  e->loop_running = false;
  pthread_mutex_unlock(&e->mu);
  drain_api_direct(e);
  int rc = uv_loop_close(&e->loop);
  if (rc != 0)
    log_write(LOG_WARNING, "engine loop closed with handles open", NULL);
  log_write(LOG_INFO, "engine loop stopped", NULL);
  return SK_OK;
}

/* ---- API ops
 * ----------------------------------------------------------------- */

static const def_workflow *direct_get_def(void *ud, PGconn *c, const char *name,
                                          int version) {
  def_workflow *wf = NULL;
  if (engine_get_workflow(ud, c, name, version, &wf, NULL) != SK_OK)
    return NULL;
  def_workflow_unref(wf); /* the registry keeps one */
  return wf;
}

static int commit_direct(struct sk_engine *e, store_op *op, sk_error *err) {
  engine_q_lock(e);
  ensure_conn(e->query_conn);
  saga_rng rng;
  pthread_mutex_lock(&e->mu);
  rng.s = saga_rng_next(&e->rng) | 1;
  pthread_mutex_unlock(&e->mu);
  store_batch b = {.ops = op, .n_ops = 1};
  store_env env = {.node = e->node,
                   .now_ms = clock_now_ms(),
                   .rng = &rng,
                   .lease_ttl_ms = e->o.lease_ttl_ms,
                   .get_def = direct_get_def,
                   .ud = e};
  int rc = sagastore_commit(e->query_conn, &b, &env, err);
  store_batch_clear_out(&b);
  engine_q_unlock(e);
  pthread_mutex_lock(&e->mu);
  e->gen++;
  pthread_cond_broadcast(&e->gen_cv);
  pthread_mutex_unlock(&e->mu);
  return rc;
}

static void drain_api_direct(struct sk_engine *e) {
  for (;;) {
    pthread_mutex_lock(&e->mu);
    api_op *a = e->api_head;
    if (a != NULL) {
      e->api_head = a->next;
      if (e->api_head == NULL)
        e->api_tail = NULL;
    }
    pthread_mutex_unlock(&e->mu);
    if (a == NULL)
      return;
    sk_error err = {0};
    int rc = commit_direct(e, &a->op, &err);
    pthread_mutex_lock(&e->mu);
    a->rc = rc;
    a->err = err;
    a->done = true;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&e->mu);
  }
}

int loop_submit_op(struct sk_engine *e, store_op *op, sk_error *err) {
  pthread_mutex_lock(&e->mu);
  if (!e->loop_running) {
    pthread_mutex_unlock(&e->mu);
    return commit_direct(e, op, err);
  }
  api_op a;
  memset(&a, 0, sizeof(a));
  a.op = *op;
  pthread_cond_init(&a.cv, NULL);
  if (e->api_tail != NULL)
    e->api_tail->next = &a;
  else
    e->api_head = &a;
  e->api_tail = &a;
  pthread_mutex_unlock(&e->mu);
  loop_wake(e);
  pthread_mutex_lock(&e->mu);
  while (!a.done)
    pthread_cond_wait(&a.cv, &e->mu);
  pthread_mutex_unlock(&e->mu);
  pthread_cond_destroy(&a.cv);
  op->rc = a.op.rc;
  op->existed = a.op.existed;
  op->replayed_new = a.op.replayed_new;
  op->status = a.op.status;
  memcpy(op->saga_id, a.op.saga_id, sizeof(op->saga_id));
  if (a.rc != SK_OK && err != NULL)
    *err = a.err;
  return a.rc;
}
