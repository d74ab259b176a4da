/*
 * routes_sagas.c — runs and sagas: start a run (idempotent), read a saga,
 * list sagas (keyset pagination), its events, cancel, replay one, replay in
 * bulk. Everything goes through the SDK's calls or the store's reads, so
 * the API and the SDK can never disagree.
 *
 * Thread: the work functions run on API threads.
 */
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_call.h"
#include "common/buf.h"
#include "common/uuid.h"
#include "core/engine.h"
#include "store/queries.h"

/* Prints a JSON value compact (malloc'd) or NULL. */
static char *print(const cJSON *v) {
  return v != NULL ? cJSON_PrintUnformatted(v) : NULL;
}

static void w_start(api_call *c) {
  static const char *const allowed[] = {"input", "idempotency_key", "version",
                                        NULL};
  if (!api_only_fields(c, allowed))
    return;
  if (!def_name_valid(c->param)) {
    api_fail(c, 400, "invalid_request",
             "workflow name must match [a-z0-9_.-]{1,128}");
    return;
  }
  const cJSON *input = api_field(c, "input");
  if (input != NULL && !cJSON_IsObject(input)) {
    api_fail(c, 400, "invalid_request", "input must be a JSON object");
    return;
  }
  bool bad = false;
  const char *key = api_string(c, "idempotency_key", &bad);
  long long version = 0;
  if (bad) {
    api_fail(c, 400, "invalid_request", "idempotency_key must be a string");
    return;
  }
  if (!api_int_field(c, "version", 1, 2147483647, &version))
    return;
  char *in = print(input);
  sk_run_options ro = {.version = (int)version, .idempotency_key = key};
  char id[SK_ID_LEN];
  bool existed = false;
  sk_error err = {0};
  /* The status comes back from the commit itself: no second query. */
  sk_status st = SK_STATUS_RUNNING;
  int rc = engine_run_start(c->e, c->param, in, &ro, id, &existed, &st, &err);
  free(in);
  if (rc != SK_OK) {
    api_fail_sk(c, rc, &err);
    return;
  }
  char *json = NULL;
  if (asprintf(&json, "{\"saga_id\":\"%s\",\"status\":\"%s\"}", id,
               sk_status_name(st)) < 0)
    json = NULL;
  api_ok(c, existed ? 200 : 201, json);
}

static bool valid_id(api_call *c) {
  if (uuid_valid(c->param))
    return true;
  api_fail(c, 400, "invalid_request", "saga id must be a UUID");
  return false;
}

static void w_get(api_call *c) {
  if (!valid_id(c))
    return;
  char *json = NULL;
  sk_error err = {0};
  engine_q_lock(c->e);
  int rc = queries_saga_view(c->e->query_conn, c->param, &json, &err);
  engine_q_unlock(c->e);
  if (rc != SK_OK)
    api_fail_sk(c, rc, &err);
  else
    api_ok(c, 200, json);
}

static void w_list(api_call *c) {
  const char *status = c->query[0], *workflow = c->query[1];
  const char *cursor = c->query[3];
  long limit = 50;
  saga_status st;
  if (status != NULL && saga_status_parse(status, &st) != SK_OK) {
    api_fail(c, 400, "invalid_request", "unknown status \"%s\"", status);
    return;
  }
  if (workflow != NULL && !def_name_valid(workflow)) {
    api_fail(c, 400, "invalid_request", "workflow must be a workflow name");
    return;
  }
  if (!api_query_int(c->query[2], 1, 1000, &limit)) {
    api_fail(c, 400, "invalid_request", "limit must be between 1 and 1000");
    return;
  }
  if (cursor != NULL && !uuid_valid(cursor)) {
    api_fail(c, 400, "invalid_request", "cursor is not one this API gave");
    return;
  }
  char *json = NULL;
  sk_error err = {0};
  engine_q_lock(c->e);
  int rc = queries_list_sagas(c->e->query_conn, status, workflow, (int)limit,
                              cursor, &json, &err);
  engine_q_unlock(c->e);
  if (rc != SK_OK)
    api_fail_sk(c, rc, &err);
  else
    api_ok(c, 200, json);
}

static void w_events(api_call *c) {
  if (!valid_id(c))
    return;
  long after = 0;
  if (!api_query_int(c->query[0], 0, 2147483647, &after)) {
    api_fail(c, 400, "invalid_request", "after_seq must be 0 or more");
    return;
  }
  char *events = NULL;
  int rc = sk_saga_events_json(c->e, c->param, after, &events);
  if (rc != SK_OK) {
    sk_error err = {0};
    sk_error_set(&err, rc, "saga %s: %s", c->param, sk_strerror(rc));
    api_fail_sk(c, rc, &err);
    return;
  }
  char *json = NULL;
  if (asprintf(&json, "{\"saga_id\":\"%s\",\"events\":%s}", c->param, events) <
      0)
    json = NULL;
  free(events);
  api_ok(c, 200, json);
}

static void w_cancel(api_call *c) {
  if (!valid_id(c))
    return;
  sk_error err = {0};
  int rc = sk_saga_cancel(c->e, c->param, &err);
  if (rc != SK_OK) {
    api_fail_sk(c, rc, &err);
    return;
  }
  sk_status st = SK_STATUS_RUNNING;
  sk_saga_status(c->e, c->param, &st);
  char *json = NULL;
  if (asprintf(&json,
               "{\"saga_id\":\"%s\",\"status\":\"%s\","
               "\"cancel_requested\":true}",
               c->param, sk_status_name(st)) < 0)
    json = NULL;
  api_ok(c, 202, json);
}

/* Replays one saga; fills *out with {saga_id,status[,new_saga_id]}. */
static int replay_one(api_call *c, const char *id, const sk_replay_options *o,
                      char **out, sk_error *err) {
  char new_id[SK_ID_LEN];
  int rc = sk_saga_replay(c->e, id, o, new_id, err);
  if (rc != SK_OK)
    return rc;
  sk_status st = SK_STATUS_RUNNING;
  sk_saga_status(c->e, new_id[0] ? new_id : id, &st);
  int n = new_id[0] ? asprintf(out,
                               "{\"saga_id\":\"%s\",\"new_saga_id\":\"%s\","
                               "\"status\":\"%s\"}",
                               id, new_id, sk_status_name(st))
                    : asprintf(out, "{\"saga_id\":\"%s\",\"status\":\"%s\"}",
                               id, sk_status_name(st));
  if (n < 0)
    *out = NULL;
  return new_id[0] ? 1 : 0; /* 1: a new run */
}

static void w_replay(api_call *c) {
  static const char *const allowed[] = {"from_step", "step_input", "input",
                                        NULL};
  if (!valid_id(c) || !api_only_fields(c, allowed))
    return;
  bool bad = false;
  const char *from = api_string(c, "from_step", &bad);
  const cJSON *input = api_field(c, "input");
  if (bad || (input != NULL && !cJSON_IsObject(input))) {
    api_fail(c, 400, "invalid_request",
             "from_step must be a string and input a JSON object");
    return;
  }
  char *step_input = print(api_field(c, "step_input"));
  char *in = print(input);
  sk_replay_options o = {
      .from_step = from, .step_input = step_input, .input = in};
  char *json = NULL;
  sk_error err = {0};
  int rc = replay_one(c, c->param, &o, &json, &err);
  free(step_input);
  free(in);
  if (rc < 0)
    api_fail_sk(c, rc, &err);
  else
    api_ok(c, rc == 1 ? 201 : 200, json);
}

static void w_bulk_replay(api_call *c) {
  static const char *const allowed[] = {"status", "workflow", "limit", NULL};
  if (!api_only_fields(c, allowed))
    return;
  bool bad = false;
  const char *status = api_string(c, "status", &bad);
  const char *workflow = api_string(c, "workflow", &bad);
  long long limit = 100;
  saga_status st;
  if (bad || status == NULL || saga_status_parse(status, &st) != SK_OK ||
      !(st == SAGA_STATUS_FAILED || st == SAGA_STATUS_PAUSED ||
        st == SAGA_STATUS_COMPENSATED || st == SAGA_STATUS_CANCELLED)) {
    api_fail(c, 400, "invalid_request",
             "status must be failed, paused, compensated or cancelled");
    return;
  }
  if (workflow != NULL && !def_name_valid(workflow)) {
    api_fail(c, 400, "invalid_request", "workflow must be a workflow name");
    return;
  }
  if (!api_int_field(c, "limit", 1, 1000, &limit))
    return;
  char(*ids)[37] = NULL;
  size_t n = 0;
  sk_error err = {0};
  engine_q_lock(c->e);
  int rc = queries_saga_ids(c->e->query_conn, status, workflow, (int)limit,
                            &ids, &n, &err);
  engine_q_unlock(c->e);
  if (rc != SK_OK) {
    api_fail_sk(c, rc, &err);
    return;
  }
  buf ok = BUF_INIT, failed = BUF_INIT;
  for (size_t i = 0; i < n; i++) {
    char *one = NULL;
    sk_error e1 = {0};
    if (replay_one(c, ids[i], NULL, &one, &e1) >= 0) {
      buf_puts(&ok, ok.len ? "," : "");
      buf_puts(&ok, one != NULL ? one : "null");
    } else {
      buf_printf(&failed,
                 "%s{\"saga_id\":\"%s\",\"message\":", failed.len ? "," : "",
                 ids[i]);
      buf_json_str(&failed, e1.message);
      buf_putc(&failed, '}');
    }
    free(one);
  }
  free(ids);
  char *json = NULL;
  if (asprintf(&json, "{\"replayed\":[%s],\"errors\":[%s]}",
               ok.data ? ok.data : "", failed.data ? failed.data : "") < 0)
    json = NULL;
  buf_free(&ok);
  buf_free(&failed);
  api_ok(c, 200, json);
}

const api_route api_routes_sagas[] = {
    {.method = HTTP_POST,
     .pattern = "/v1/workflows/{name}/runs",
     .work = w_start},
    {.method = HTTP_GET,
     .pattern = "/v1/sagas",
     .work = w_list,
     .query = {"status", "workflow", "limit", "cursor"}},
    {.method = HTTP_POST,
     .pattern = "/v1/sagas/replay",
     .work = w_bulk_replay,
     .needs_body = true},
    {.method = HTTP_GET, .pattern = "/v1/sagas/{id}", .work = w_get},
    {.method = HTTP_GET,
     .pattern = "/v1/sagas/{id}/events",
     .work = w_events,
     .query = {"after_seq"}},
    {.method = HTTP_POST, .pattern = "/v1/sagas/{id}/cancel", .work = w_cancel},
    {.method = HTTP_POST, .pattern = "/v1/sagas/{id}/replay", .work = w_replay},
    {0}};
