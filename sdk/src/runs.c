/*
 * runs.c — the SDK's run and saga calls: start (idempotent), cancel,
 * status, wait, view and event history.
 *
 * Every argument is checked before anything is written: a bad id, a bad
 * name, input that is not a JSON object or is too large is refused with a
 * clear code and message, and nothing is half-written (the start itself is
 * one transaction of the group commit).
 *
 * Thread: any; database reads share the engine's query connection under
 * its mutex.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/err.h"
#include "common/json.h"
#include "common/uuid.h"
#include "core/engine.h"
#include "store/queries.h"

const char *sk_status_name(sk_status s) {
  if ((int)s < 0 || s > SK_STATUS_CANCELLED)
    return "unknown";
  return saga_status_name((saga_status)s);
}

bool sk_status_is_settled(sk_status s) {
  return saga_status_settled((saga_status)s);
}

/* Parses and normalises a JSON object input ("{}" for NULL). */
static int normalise_input(const char *input, char **out, sk_error *err) {
  if (input == NULL)
    input = "{}";
  size_t len = strlen(input);
  if (len > SK_PAYLOAD_MAX)
    return sk_error_set(err, SK_ETOOBIG, "input is %zu bytes; the limit is %d",
                        len, SK_PAYLOAD_MAX);
  cJSON *doc = json_parse_exact(input, len);
  if (doc == NULL)
    return sk_error_set(err, SK_EJSON, "input is not valid JSON");
  if (!cJSON_IsObject(doc)) {
    cJSON_Delete(doc);
    return sk_error_set(err, SK_EJSON, "input must be a JSON object");
  }
  *out = cJSON_PrintUnformatted(doc);
  cJSON_Delete(doc);
  return *out != NULL ? SK_OK : sk_error_set(err, SK_ENOMEM, NULL);
}

int engine_run_start(sk_engine *e, const char *workflow, const char *input_json,
                     const sk_run_options *o, char saga_id[SK_ID_LEN],
                     bool *existed, sk_status *status, sk_error *err) {
  if (e == NULL || saga_id == NULL)
    return sk_error_set(err, SK_EINVAL, "engine and saga_id must not be NULL");
  if (!def_name_valid(workflow))
    return sk_error_set(err, SK_EINVAL,
                        "workflow name must match [a-z0-9_.-]{1,128}");
  int version = o != NULL ? o->version : 0;
  const char *key = o != NULL ? o->idempotency_key : NULL;
  if (version < 0)
    return sk_error_set(err, SK_EINVAL, "version must be 0 (latest) or more");
  if (key != NULL && (key[0] == '\0' || strlen(key) > SK_IDEMPOTENCY_KEY_MAX))
    return sk_error_set(err, SK_EINVAL, "idempotency key must be 1 to %d bytes",
                        SK_IDEMPOTENCY_KEY_MAX);
  store_op op;
  memset(&op, 0, sizeof(op));
  op.type = STORE_OP_START;
  int rc = normalise_input(input_json, &op.input, err);
  if (rc != SK_OK)
    return rc;
  def_workflow *wf = NULL;
  rc = engine_get_workflow(e, NULL, workflow, version, &wf, err);
  if (rc == SK_OK && key != NULL && (op.idempotency_key = strdup(key)) == NULL)
    rc = sk_error_set(err, SK_ENOMEM, NULL);
  if (rc == SK_OK) {
    op.wf = wf;
    uuid_v7(op.saga_id);
    rc = loop_submit_op(e, &op, err);
    if (rc == SK_OK && op.rc != SK_OK)
      rc = sk_error_set(err, op.rc, "could not start the saga: %s",
                        sk_strerror(op.rc));
  }
  if (rc == SK_OK) {
    memcpy(saga_id, op.saga_id, SK_ID_LEN);
    if (existed != NULL)
      *existed = op.existed;
    if (status != NULL) /* saga_status has sk_status's order */
      *status = (sk_status)op.status;
  }
  op.wf = NULL;
  store_op_clear(&op);
  def_workflow_unref(wf);
  return rc;
}

int sk_run_start(sk_engine *e, const char *workflow, const char *input_json,
                 const sk_run_options *o, char saga_id[SK_ID_LEN],
                 bool *existed, sk_error *err) {
  return engine_run_start(e, workflow, input_json, o, saga_id, existed, NULL,
                          err);
}

static int check_id(const char *id, sk_error *err) {
  if (!uuid_valid(id))
    return sk_error_set(err, SK_EINVAL, "saga id must be a UUID");
  return SK_OK;
}

/* Checks the engine and the id, and prepares an op of `type` on that saga. */
static int saga_op(sk_engine *e, const char *saga_id, store_op_type type,
                   store_op *op, sk_error *err) {
  memset(op, 0, sizeof(*op));
  if (e == NULL)
    return sk_error_set(err, SK_EINVAL, "engine must not be NULL");
  int rc = check_id(saga_id, err);
  if (rc != SK_OK)
    return rc;
  op->type = type;
  memcpy(op->saga_id, saga_id, SK_ID_LEN);
  return SK_OK;
}

int sk_saga_cancel(sk_engine *e, const char *saga_id, sk_error *err) {
  store_op op;
  int rc = saga_op(e, saga_id, STORE_OP_CANCEL, &op, err);
  if (rc != SK_OK)
    return rc;
  op.reason = strdup("cancel requested through the SDK");
  rc = loop_submit_op(e, &op, err);
  if (rc == SK_OK) {
    if (op.rc == SK_ENOENT)
      rc = sk_error_set(err, SK_ENOENT, "saga %s does not exist", saga_id);
    else if (op.rc == SK_ESTATE)
      rc = sk_error_set(err, SK_ESTATE, "saga %s is already finished", saga_id);
    else if (op.rc != SK_OK)
      rc = sk_error_set(err, op.rc, "could not cancel saga %s", saga_id);
  }
  store_op_clear(&op);
  return rc;
}

/* Copies an optional JSON text after checking it parses (and, for run
 * inputs, is an object). */
static int optional_json(const char *text, bool object, const char *what,
                         char **out, sk_error *err) {
  *out = NULL;
  if (text == NULL)
    return SK_OK;
  if (object)
    return normalise_input(text, out, err);
  size_t len = strlen(text);
  if (len > SK_PAYLOAD_MAX)
    return sk_error_set(err, SK_ETOOBIG, "%s exceeds %d bytes", what,
                        SK_PAYLOAD_MAX);
  cJSON *doc = json_parse_exact(text, len);
  if (doc == NULL)
    return sk_error_set(err, SK_EJSON, "%s is not valid JSON", what);
  *out = cJSON_PrintUnformatted(doc);
  cJSON_Delete(doc);
  return *out != NULL ? SK_OK : sk_error_set(err, SK_ENOMEM, NULL);
}

int sk_saga_replay(sk_engine *e, const char *saga_id,
                   const sk_replay_options *o, char new_saga_id[SK_ID_LEN],
                   sk_error *err) {
  if (new_saga_id != NULL)
    new_saga_id[0] = '\0';
  store_op op;
  int rc = saga_op(e, saga_id, STORE_OP_REPLAY, &op, err);
  if (rc != SK_OK)
    return rc;
  uuid_v7(op.new_saga_id);
  if (o != NULL && o->from_step != NULL) {
    if (!def_name_valid(o->from_step))
      return sk_error_set(err, SK_EINVAL, "from_step is not a step name");
    if ((op.from_step = strdup(o->from_step)) == NULL)
      return sk_error_set(err, SK_ENOMEM, NULL);
  }
  if (o != NULL)
    rc = optional_json(o->step_input, false, "step_input", &op.step_input, err);
  if (rc == SK_OK && o != NULL)
    rc = optional_json(o->input, true, "input", &op.input, err);
  if (rc == SK_OK)
    rc = loop_submit_op(e, &op, err);
  if (rc == SK_OK && op.rc != SK_OK) {
    if (op.rc == SK_ENOENT)
      rc = sk_error_set(err, SK_ENOENT, "saga %s does not exist", saga_id);
    else if (op.rc == SK_ESTATE)
      rc = sk_error_set(err, SK_ESTATE,
                        "saga %s is %s: only failed, paused, compensated and "
                        "cancelled sagas can be replayed, and a compensated "
                        "or cancelled one only once (replay its new run)",
                        saga_id, sk_status_name((sk_status)op.status));
    else if (op.rc == SK_EINVAL)
      rc = sk_error_set(err, SK_EINVAL,
                        "replay options do not fit saga %s (%s): from_step "
                        "and step_input resume a paused saga, input starts "
                        "a new run of a compensated or cancelled one",
                        saga_id, sk_status_name((sk_status)op.status));
    else
      rc = sk_error_set(err, op.rc, "could not replay saga %s: %s", saga_id,
                        sk_strerror(op.rc));
  }
  if (rc == SK_OK && op.replayed_new && new_saga_id != NULL)
    memcpy(new_saga_id, op.new_saga_id, SK_ID_LEN);
  store_op_clear(&op);
  return rc;
}

int sk_saga_status(sk_engine *e, const char *saga_id, sk_status *out) {
  if (e == NULL || out == NULL || !uuid_valid(saga_id))
    return SK_EINVAL;
  saga_status st;
  engine_q_lock(e);
  int rc = queries_saga_state(e->query_conn, saga_id, NULL, &st, NULL);
  engine_q_unlock(e);
  if (rc == SK_OK)
    *out = (sk_status)st;
  return rc;
}

int sk_saga_wait(sk_engine *e, const char *saga_id, int64_t timeout_ms,
                 sk_status *out) {
  if (e == NULL || out == NULL || !uuid_valid(saga_id) || timeout_ms < 0)
    return SK_EINVAL;
  int64_t end = clock_mono_ms() + timeout_ms;
  for (;;) {
    pthread_mutex_lock(&e->mu);
    uint64_t gen = e->gen;
    pthread_mutex_unlock(&e->mu);
    int rc = sk_saga_status(e, saga_id, out);
    if (rc != SK_OK || sk_status_is_settled(*out))
      return rc;
    int64_t left = end - clock_mono_ms();
    if (left <= 0)
      return SK_ETIMEDOUT;
    /* Woken by this node's commits; other nodes' progress is seen within
     * the 50 ms re-check. */
    int64_t wait = left < 50 ? left : 50;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)(wait % 1000) * 1000000L;
    ts.tv_sec += wait / 1000 + ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&e->mu);
    while (e->gen == gen &&
           pthread_cond_timedwait(&e->gen_cv, &e->mu, &ts) == 0)
      ;
    pthread_mutex_unlock(&e->mu);
  }
}

int sk_saga_get_json(sk_engine *e, const char *saga_id, char **json_out) {
  if (e == NULL || json_out == NULL || !uuid_valid(saga_id))
    return SK_EINVAL;
  /* The same view as GET /v1/sagas/{id}: the projection plus the queued or
   * running tasks (lease, attempt, why a GPU step waits). */
  engine_q_lock(e);
  int rc = queries_saga_view(e->query_conn, saga_id, json_out, NULL);
  engine_q_unlock(e);
  return rc;
}

int sk_saga_events_json(sk_engine *e, const char *saga_id, int64_t after_seq,
                        char **json_out) {
  if (e == NULL || json_out == NULL || !uuid_valid(saga_id) || after_seq < 0)
    return SK_EINVAL;
  engine_q_lock(e);
  int rc =
      queries_events_json(e->query_conn, saga_id, after_seq, json_out, NULL);
  engine_q_unlock(e);
  return rc;
}
