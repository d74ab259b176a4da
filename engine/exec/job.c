/*
 * job.c — one attempt of a task on this node: running the handler on a
 * bulkhead thread, the handler-facing SDK calls (sk_task_cancelled,
 * sk_result_ok, sk_result_error), and turning outcomes into store ops.
 *
 * A job is owned by the loop. job_run() runs on a worker thread and touches
 * only the job; when the handler returns, the job is pushed onto the
 * engine's done list under e->mu and the loop is woken. A job the loop has
 * abandoned (timed out, lease lost) still runs to its end; its result is
 * then dropped by the loop.
 *
 * Thread: job_run on a worker thread; the rest on the loop thread.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/json.h"
#include "common/log.h"
#include "core/engine.h"

exec_job *job_new(struct sk_engine *e, leased_task *t, handler *h,
                  bulkhead *bh) {
  exec_job *j = calloc(1, sizeof(*j));
  if (j == NULL)
    return NULL;
  j->e = e;
  j->task = *t; /* takes ownership of the strings */
  memset(t, 0, sizeof(*t));
  j->h = h;
  j->bh = bh;
  saga_idempotency_key(j->task.lease.saga_id, j->task.step_name,
                       j->task.lease.kind, j->idem_key, sizeof(j->idem_key));
  atomic_init(&j->cancel, j->task.cancel_requested);
  atomic_init(&j->state, JOB_QUEUED);
  atomic_init(&j->started_mono_ms, 0);
  return j;
}

static void result_clear(struct sk_task_result *r) {
  free(r->output);
  free(r->err_type);
  free(r->err_message);
  memset(r, 0, sizeof(*r));
}

void job_free(exec_job *j) {
  if (j == NULL)
    return;
  leased_task_clear(&j->task);
  result_clear(&j->result);
  free(j);
}

/* impl is the attempt's cancel flag, for in-process jobs and remote
 * workers alike. */
bool sk_task_cancelled(const sk_task *t) {
  if (t == NULL || t->impl == NULL)
    return false;
  return atomic_load((atomic_bool *)t->impl);
}

/* Records a refused output as a non-retryable failure, so a handler that
 * ignores the return code cannot turn bad output into a silent success. */
static int refuse_output(sk_task_result *r, int code, const char *why) {
  if (sk_result_error(r, "InvalidOutput", why, false) != SK_OK)
    return SK_ENOMEM;
  return code;
}

int sk_result_ok(sk_task_result *r, const char *output_json) {
  if (r == NULL)
    return SK_EINVAL;
  char *norm = NULL;
  if (output_json != NULL) {
    size_t len = strlen(output_json);
    if (len > SK_PAYLOAD_MAX)
      return refuse_output(r, SK_ETOOBIG, "output exceeds 1 MiB");
    cJSON *doc = json_parse_exact(output_json, len);
    if (doc == NULL)
      return refuse_output(r, SK_EJSON, "output is not valid JSON");
    norm = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    if (norm == NULL)
      return SK_ENOMEM;
  }
  result_clear(r);
  r->set = true;
  r->ok = true;
  r->output = norm;
  return SK_OK;
}

int sk_result_error(sk_task_result *r, const char *type, const char *message,
                    bool retryable) {
  if (r == NULL || type == NULL || type[0] == '\0' ||
      strlen(type) > SK_NAME_MAX)
    return SK_EINVAL;
  char *t = strdup(type);
  /* Messages are for people; very long ones are cut, not refused. */
  char *m = strndup(message != NULL ? message : "", 4096);
  if (t == NULL || m == NULL) {
    free(t);
    free(m);
    return SK_ENOMEM;
  }
  result_clear(r);
  r->set = true;
  r->ok = false;
  r->err_type = t;
  r->err_message = m;
  r->retryable = retryable;
  return SK_OK;
}

void job_run(pool_link *link, void *ud) {
  exec_job *j = (exec_job *)link;
  struct sk_engine *e = ud;
  int expected = JOB_QUEUED;
  if (atomic_compare_exchange_strong(&j->state, &expected, JOB_RUNNING)) {
    j->deadline_wall_ms = clock_now_ms() + j->task.timeout_ms;
    atomic_store(&j->started_mono_ms, clock_mono_ms());
    sk_task t = {.saga_id = j->task.lease.saga_id,
                 .workflow = j->task.workflow,
                 .step = j->task.step_name,
                 .task_type = j->task.task_type,
                 .input = j->task.input,
                 .idempotency_key = j->idem_key,
                 .attempt = j->task.lease.attempt,
                 .is_compensation = j->task.lease.kind == TASK_KIND_COMP,
                 .deadline_ms = j->deadline_wall_ms,
                 .gpus = j->gpus,
                 .impl = &j->cancel};
    int rc = j->h->fn(&t, &j->result, j->h->udata);
    if (!j->result.set) {
      if (rc == 0)
        sk_result_ok(&j->result, NULL);
      else if (sk_result_error(&j->result, "HandlerError",
                               "handler returned an error without a result",
                               true) != SK_OK)
        j->result.set = false; /* OOM: reported as a failure below */
    }
    expected = JOB_RUNNING;
    atomic_compare_exchange_strong(&j->state, &expected, JOB_DONE);
  }
  pthread_mutex_lock(&e->mu);
  j->next_done = e->done;
  e->done = j;
  pthread_mutex_unlock(&e->mu);
  loop_wake(e);
}

static void op_from_lease(const leased_task *t, store_op *op) {
  memset(op, 0, sizeof(*op));
  op->type = STORE_OP_RESULT;
  op->lease = t->lease;
}

void job_to_op(exec_job *j, store_op *op) {
  op_from_lease(&j->task, op);
  if (!j->result.set) {
    op->ok = false;
    op->err_type = strdup("OutOfMemory");
    op->err_message = strdup("could not record the handler's result");
    op->err_retryable = true;
    return;
  }
  op->ok = j->result.ok;
  op->output = j->result.output;
  op->err_type = j->result.err_type;
  op->err_message = j->result.err_message;
  op->err_retryable = j->result.retryable;
  j->result.output = j->result.err_type = j->result.err_message = NULL;
}

void job_failure_op(const leased_task *t, const char *type,
                    const char *message, bool retryable, store_op *op) {
  op_from_lease(t, op);
  op->ok = false;
  op->err_type = strdup(type);
  op->err_message = strdup(message);
  op->err_retryable = retryable;
}

void job_success_op(const leased_task *t, store_op *op) {
  op_from_lease(t, op);
  op->ok = true;
  op->output = NULL;
}
