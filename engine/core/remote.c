/*
 * remote.c — remote workers: long-poll, heartbeat, complete, fail
 * (remote.h).
 *
 * Polls lease with their own statement (taskqueue_dequeue_any) on the
 * engine's query connection, held only for that statement: waiting between
 * tries happens on the engine's generation condition variable, which every
 * commit and every NOTIFY bumps. Results are ops for the group commit.
 *
 * Thread: API threads.
 */
#include "core/remote.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/json.h"
#include "common/uuid.h"
#include "store/taskqueue.h"

void remote_task_id(const store_lease *l, char buf[REMOTE_TASK_ID_MAX]) {
  snprintf(buf, REMOTE_TASK_ID_MAX, "%s.%d.%s.%d", l->saga_id, l->step,
           task_kind_name(l->kind), l->attempt);
}

int remote_task_id_parse(const char *id, store_lease *l) {
  memset(l, 0, sizeof(*l));
  if (id == NULL || strlen(id) < 36 + 6 || strlen(id) >= REMOTE_TASK_ID_MAX ||
      id[36] != '.')
    return SK_EINVAL;
  memcpy(l->saga_id, id, 36);
  l->saga_id[36] = '\0';
  if (!uuid_valid(l->saga_id))
    return SK_EINVAL;
  char kind[12];
  int step, attempt, used = 0;
  if (sscanf(id + 37, "%d.%11[a-z].%d%n", &step, kind, &attempt, &used) != 3 ||
      id[37 + used] != '\0' || step < 0 || step > 100000 || attempt < 1)
    return SK_EINVAL;
  if (strcmp(kind, "fwd") == 0)
    l->kind = TASK_KIND_FWD;
  else if (strcmp(kind, "comp") == 0)
    l->kind = TASK_KIND_COMP;
  else if (strcmp(kind, "fallback") == 0)
    l->kind = TASK_KIND_FALLBACK;
  else
    return SK_EINVAL;
  l->step = step;
  l->attempt = attempt;
  return SK_OK;
}

static void wait_for_news(struct sk_engine *e, uint64_t gen, int64_t ms) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_nsec += (long)(ms % 1000) * 1000000L;
  ts.tv_sec += ms / 1000 + ts.tv_nsec / 1000000000L;
  ts.tv_nsec %= 1000000000L;
  pthread_mutex_lock(&e->mu);
  while (e->gen == gen && pthread_cond_timedwait(&e->gen_cv, &e->mu, &ts) == 0)
    ;
  pthread_mutex_unlock(&e->mu);
}

/* One lease attempt: GPU-aware when the worker reported its GPUs. */
static int poll_once(struct sk_engine *e, const remote_poll_req *req,
                     leased_task **out, task_needs **needs, size_t *n_out,
                     sk_error *err) {
  if (req->gpus == NULL)
    return taskqueue_dequeue_any(e->query_conn, req->worker_id,
                                 e->o.lease_ttl_ms, req->task_types,
                                 req->n_task_types, req->max, out, n_out,
                                 err);
  int64_t caps[GPU_MAX];
  unsigned n_caps = 0, idle = 0;
  placement_envelope(req->gpus, caps, &n_caps, &idle);
  dequeue_gpu_fit fit = {.caps = caps, .n_caps = n_caps, .idle = idle};
  return taskqueue_dequeue_any_gpu(e->query_conn, req->worker_id,
                                   e->o.lease_ttl_ms, req->task_types,
                                   req->n_task_types, req->max, &fit, out,
                                   needs, n_out, err);
}

int remote_poll(struct sk_engine *e, const remote_poll_req *req,
                leased_task **out, task_needs **needs, size_t *n_out,
                sk_error *err) {
  *out = NULL;
  *needs = NULL;
  *n_out = 0;
  if (req->worker_id == NULL || req->worker_id[0] == '\0' ||
      strlen(req->worker_id) > SK_NAME_MAX)
    return sk_error_set(err, SK_EINVAL, "worker_id must be 1 to %d bytes",
                        SK_NAME_MAX);
  if (req->n_task_types == 0)
    return sk_error_set(err, SK_EINVAL, "task_types must not be empty");
  for (size_t i = 0; i < req->n_task_types; i++)
    if (!def_name_valid(req->task_types[i]))
      return sk_error_set(err, SK_EINVAL,
                          "task type \"%s\" does not match [a-z0-9_.-]{1,128}",
                          req->task_types[i]);
  if (req->max < 1 || req->max > REMOTE_MAX_TASKS)
    return sk_error_set(err, SK_EINVAL, "max must be between 1 and %d",
                        REMOTE_MAX_TASKS);
  if (req->wait_ms < 0 || req->wait_ms > REMOTE_MAX_WAIT_MS)
    return sk_error_set(err, SK_EINVAL, "wait_ms must be between 0 and %d",
                        REMOTE_MAX_WAIT_MS);
  int64_t end = clock_mono_ms() + req->wait_ms;
  for (;;) {
    pthread_mutex_lock(&e->mu);
    uint64_t gen = e->gen;
    pthread_mutex_unlock(&e->mu);
    engine_q_lock(e);
    int rc = poll_once(e, req, out, needs, n_out, err);
    engine_q_unlock(e);
    if (rc != SK_OK || *n_out > 0 || atomic_load(&e->polls_closed))
      return rc;
    int64_t left = end - clock_mono_ms();
    if (left <= 0)
      return SK_OK;
    /* Retries come due without a notification: look at least every
     * 250 ms. */
    wait_for_news(e, gen, left < 250 ? left : 250);
  }
}

void engine_close_polls(struct sk_engine *e) {
  atomic_store(&e->polls_closed, true);
  pthread_mutex_lock(&e->mu);
  e->gen++;
  pthread_cond_broadcast(&e->gen_cv);
  pthread_mutex_unlock(&e->mu);
}

int remote_heartbeat(struct sk_engine *e, const char *task_id, int64_t token,
                     bool *cancel, sk_error *err) {
  store_lease l;
  if (remote_task_id_parse(task_id, &l) != SK_OK)
    return sk_error_set(err, SK_EINVAL, "malformed task id");
  l.token = token;
  bool lost = true, cx = false;
  engine_q_lock(e);
  int rc = taskqueue_renew(e->query_conn, &l, 1, e->o.lease_ttl_ms, &lost,
                           &cx, err);
  engine_q_unlock(e);
  if (rc != SK_OK)
    return rc;
  if (cancel != NULL)
    *cancel = cx;
  if (lost)
    return sk_error_set(err, SK_ELEASE, "the lease of task %s is no longer "
                                        "held",
                        task_id);
  return SK_OK;
}

static int submit_result(struct sk_engine *e, const char *task_id,
                         store_op *op, sk_error *err) {
  int rc = loop_submit_op(e, op, err);
  if (rc == SK_OK && op->rc == SK_ELEASE)
    rc = sk_error_set(err, SK_ELEASE,
                      "the lease of task %s is no longer held; the result "
                      "was dropped",
                      task_id);
  else if (rc == SK_OK && op->rc == SK_ENOENT)
    rc = sk_error_set(err, SK_ENOENT, "the saga of task %s does not exist",
                      task_id);
  else if (rc == SK_OK && op->rc != SK_OK)
    rc = sk_error_set(err, op->rc, "could not record the result of %s: %s",
                      task_id, sk_strerror(op->rc));
  store_op_clear(op);
  return rc;
}

int remote_complete(struct sk_engine *e, const char *task_id, int64_t token,
                    const char *output_json, sk_error *err) {
  store_op op;
  memset(&op, 0, sizeof(op));
  op.type = STORE_OP_RESULT;
  if (remote_task_id_parse(task_id, &op.lease) != SK_OK)
    return sk_error_set(err, SK_EINVAL, "malformed task id");
  op.lease.token = token;
  op.ok = true;
  if (output_json != NULL) {
    size_t len = strlen(output_json);
    if (len > SK_PAYLOAD_MAX)
      return sk_error_set(err, SK_ETOOBIG, "output exceeds %d bytes",
                          SK_PAYLOAD_MAX);
    cJSON *doc = json_parse_exact(output_json, len);
    if (doc == NULL)
      return sk_error_set(err, SK_EJSON, "output is not valid JSON");
    op.output = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    if (op.output == NULL)
      return sk_error_set(err, SK_ENOMEM, NULL);
  }
  return submit_result(e, task_id, &op, err);
}

int remote_fail(struct sk_engine *e, const char *task_id, int64_t token,
                const char *type, const char *message, bool retryable,
                sk_error *err) {
  if (type == NULL || type[0] == '\0' || strlen(type) > SK_NAME_MAX)
    return sk_error_set(err, SK_EINVAL, "error.type must be 1 to %d bytes",
                        SK_NAME_MAX);
  store_op op;
  memset(&op, 0, sizeof(op));
  op.type = STORE_OP_RESULT;
  if (remote_task_id_parse(task_id, &op.lease) != SK_OK)
    return sk_error_set(err, SK_EINVAL, "malformed task id");
  op.lease.token = token;
  op.ok = false;
  op.err_type = strdup(type);
  op.err_message = strndup(message != NULL ? message : "", 4096);
  op.err_retryable = retryable;
  if (op.err_type == NULL || op.err_message == NULL) {
    store_op_clear(&op);
    return sk_error_set(err, SK_ENOMEM, NULL);
  }
  return submit_result(e, task_id, &op, err);
}
