/*
 * routes_tasks.c — remote workers (http-api.md "Remote workers"): long-poll
 * for tasks, heartbeat, complete, fail. A result whose lease moved on is
 * refused with 409 lease_lost and changes nothing.
 *
 * Thread: the work functions run on API threads (a long poll holds one).
 */
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_call.h"
#include "common/buf.h"
#include "core/remote.h"

static void task_json(buf *b, const leased_task *t, int64_t ttl_ms,
                      const char *gpus) {
  char id[REMOTE_TASK_ID_MAX];
  char key[SK_ID_LEN + SK_NAME_MAX + 16];
  remote_task_id(&t->lease, id);
  saga_idempotency_key(t->lease.saga_id, t->step_name, t->lease.kind, key,
                       sizeof(key));
  buf_puts(b, "{\"task_id\":");
  buf_json_str(b, id);
  buf_printf(b, ",\"lease_token\":%lld,\"saga_id\":\"%s\",\"workflow\":",
             (long long)t->lease.token, t->lease.saga_id);
  buf_json_str(b, t->workflow);
  buf_puts(b, ",\"step\":");
  buf_json_str(b, t->step_name);
  buf_printf(b, ",\"kind\":\"%s\",\"task_type\":",
             task_kind_name(t->lease.kind));
  buf_json_str(b, t->task_type);
  buf_puts(b, ",\"input\":");
  buf_puts(b, t->input);
  buf_puts(b, ",\"idempotency_key\":");
  buf_json_str(b, key);
  buf_printf(b, ",\"attempt\":%d,\"deadline_ms\":%lld,\"lease_ms\":%lld,"
             "\"gpus\":\"%s\"}",
             t->lease.attempt, (long long)t->timeout_ms, (long long)ttl_ms,
             gpus);
}

/* Reads the worker's GPUs from the poll body's "node": {"gpus": [{"index",
 * "state", "memory_total_mb", "memory_free_mb", "utilization"}]} into a
 * placement view. false (and the call failed) when malformed. */
static bool read_gpus(api_call *c, placement_node *n, bool *any) {
  memset(n, 0, sizeof(*n));
  *any = false;
  const cJSON *node = api_field(c, "node");
  const cJSON *gpus = cJSON_GetObjectItemCaseSensitive(node, "gpus");
  if (node == NULL || gpus == NULL)
    return true;
  if (!cJSON_IsObject(node) || !cJSON_IsArray(gpus) ||
      cJSON_GetArraySize(gpus) > GPU_MAX) {
    api_fail(c, 400, "invalid_request",
             "node.gpus must be an array of at most %d GPUs", GPU_MAX);
    return false;
  }
  const cJSON *g;
  cJSON_ArrayForEach(g, gpus) {
    const cJSON *idx = cJSON_GetObjectItemCaseSensitive(g, "index");
    const char *st = cJSON_GetStringValue(
        cJSON_GetObjectItemCaseSensitive(g, "state"));
    const cJSON *tot = cJSON_GetObjectItemCaseSensitive(g, "memory_total_mb");
    const cJSON *fr = cJSON_GetObjectItemCaseSensitive(g, "memory_free_mb");
    const cJSON *ut = cJSON_GetObjectItemCaseSensitive(g, "utilization");
    gh_state state = GH_UNKNOWN;
    for (int k = GH_UNKNOWN; k <= GH_UNHEALTHY; k++)
      if (st != NULL && strcmp(st, gpu_state_name((gh_state)k)) == 0)
        state = (gh_state)k;
    if (!cJSON_IsNumber(idx) || idx->valuedouble < 0 ||
        idx->valuedouble >= GPU_MAX || st == NULL ||
        (tot != NULL && !cJSON_IsNumber(tot)) ||
        (fr != NULL && !cJSON_IsNumber(fr))) {
      api_fail(c, 400, "invalid_request",
               "each of node.gpus needs an index (0..%d), a state and "
               "numeric memory_total_mb / memory_free_mb",
               GPU_MAX - 1);
      return false;
    }
    placement_gpu *p = &n->gpu[n->n++];
    p->index = (unsigned)idx->valuedouble;
    p->state = state;
    p->total_mb = tot != NULL ? (int64_t)tot->valuedouble : 0;
    p->nvml_free_mb = fr != NULL ? (int64_t)fr->valuedouble : -1;
    p->util = cJSON_IsNumber(ut) ? (unsigned)ut->valuedouble : 0;
  }
  n->policy = PLACEMENT_BINPACK;
  *any = true;
  return true;
}

static void w_poll(api_call *c) {
  static const char *const allowed[] = {"worker_id", "task_types", "max",
                                        "wait_ms", "node", NULL};
  if (!api_only_fields(c, allowed))
    return;
  bool bad = false;
  const char *worker = api_string(c, "worker_id", &bad);
  const cJSON *types = api_field(c, "task_types");
  long long max = 1, wait = 0;
  if (bad || worker == NULL) {
    api_fail(c, 400, "invalid_request", "worker_id must be a string");
    return;
  }
  if (!cJSON_IsArray(types) || cJSON_GetArraySize(types) < 1 ||
      cJSON_GetArraySize(types) > 64) {
    api_fail(c, 400, "invalid_request",
             "task_types must be an array of 1 to 64 task types");
    return;
  }
  if (!api_int_field(c, "max", 1, REMOTE_MAX_TASKS, &max) ||
      !api_int_field(c, "wait_ms", 0, REMOTE_MAX_WAIT_MS, &wait))
    return;
  const char *tt[64];
  size_t n = 0;
  const cJSON *t;
  cJSON_ArrayForEach(t, types) {
    if (!cJSON_IsString(t)) {
      api_fail(c, 400, "invalid_request", "task_types must hold strings");
      return;
    }
    tt[n++] = t->valuestring;
  }
  placement_node gpus;
  bool has_gpus = false;
  if (!read_gpus(c, &gpus, &has_gpus))
    return;
  remote_poll_req req = {.worker_id = worker, .task_types = tt,
                         .n_task_types = n, .max = (int)max,
                         .wait_ms = wait, .gpus = has_gpus ? &gpus : NULL};
  leased_task *got = NULL;
  task_needs *needs = NULL;
  size_t n_got = 0;
  sk_error err = {0};
  int rc = remote_poll(c->e, &req, &got, &needs, &n_got, &err);
  if (rc != SK_OK) {
    api_fail_sk(c, rc, &err);
    return;
  }
  buf b = BUF_INIT;
  buf_puts(&b, "{\"tasks\":[");
  for (size_t i = 0; i < n_got; i++) {
    if (i > 0)
      buf_putc(&b, ',');
    /* Which of the worker's GPUs a GPU task gets (the dequeue leased only
     * one that fits them). */
    char given[GPU_MAX * 3 + 1] = "";
    if (needs != NULL && needs[i].gpus > 0 && needs[i].gpus <= GPU_MAX) {
      unsigned idx[GPU_MAX];
      bool degraded = false;
      if (placement_pick(&gpus, needs[i].gpus, needs[i].gpu_memory_mb, idx,
                         &degraded))
        placement_format(idx, (unsigned)needs[i].gpus, given, sizeof(given));
    }
    task_json(&b, &got[i], c->e->o.lease_ttl_ms, given);
    leased_task_clear(&got[i]);
  }
  free(got);
  free(needs);
  buf_puts(&b, "]}");
  api_ok(c, 200, buf_steal(&b));
}

static bool lease_token(api_call *c, long long *token) {
  const cJSON *v = api_field(c, "lease_token");
  if (v == NULL) {
    api_fail(c, 400, "invalid_request", "lease_token is required");
    return false;
  }
  return api_int_field(c, "lease_token", 1, 9007199254740991LL, token);
}

static void w_heartbeat(api_call *c) {
  static const char *const allowed[] = {"lease_token", NULL};
  long long token = 0;
  if (!api_only_fields(c, allowed) || !lease_token(c, &token))
    return;
  bool cancel = false;
  sk_error err = {0};
  int rc = remote_heartbeat(c->e, c->param, token, &cancel, &err);
  if (rc != SK_OK) {
    api_fail_sk(c, rc, &err);
    return;
  }
  api_ok(c, 200,
         strdup(cancel ? "{\"cancel_requested\":true}"
                       : "{\"cancel_requested\":false}"));
}

static void w_complete(api_call *c) {
  static const char *const allowed[] = {"lease_token", "output", NULL};
  long long token = 0;
  if (!api_only_fields(c, allowed) || !lease_token(c, &token))
    return;
  const cJSON *out = api_field(c, "output");
  char *output = out != NULL ? cJSON_PrintUnformatted(out) : NULL;
  sk_error err = {0};
  int rc = remote_complete(c->e, c->param, token, output, &err);
  free(output);
  if (rc != SK_OK)
    api_fail_sk(c, rc, &err);
  else
    api_ok(c, 200, strdup("{\"accepted\":true}"));
}

static void w_fail(api_call *c) {
  static const char *const allowed[] = {"lease_token", "error", NULL};
  long long token = 0;
  if (!api_only_fields(c, allowed) || !lease_token(c, &token))
    return;
  const cJSON *e = api_field(c, "error");
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(e, "type");
  const cJSON *msg = cJSON_GetObjectItemCaseSensitive(e, "message");
  const cJSON *retry = cJSON_GetObjectItemCaseSensitive(e, "retryable");
  if (!cJSON_IsObject(e) || !cJSON_IsString(type) ||
      (msg != NULL && !cJSON_IsString(msg)) ||
      (retry != NULL && !cJSON_IsBool(retry))) {
    api_fail(c, 400, "invalid_request",
             "error must be {\"type\": string, \"message\": string, "
             "\"retryable\": bool}");
    return;
  }
  sk_error err = {0};
  int rc = remote_fail(c->e, c->param, token, type->valuestring,
                       msg != NULL ? msg->valuestring : "",
                       retry == NULL || cJSON_IsTrue(retry), &err);
  if (rc != SK_OK)
    api_fail_sk(c, rc, &err);
  else
    api_ok(c, 200, strdup("{\"accepted\":true}"));
}

const api_route api_routes_tasks[] = {
    {.method = HTTP_POST, .pattern = "/v1/tasks/poll", .work = w_poll,
     .needs_body = true},
    {.method = HTTP_POST, .pattern = "/v1/tasks/{task_id}/heartbeat",
     .work = w_heartbeat, .needs_body = true},
    {.method = HTTP_POST, .pattern = "/v1/tasks/{task_id}/complete",
     .work = w_complete, .needs_body = true},
    {.method = HTTP_POST, .pattern = "/v1/tasks/{task_id}/fail",
     .work = w_fail, .needs_body = true},
    {0}};
