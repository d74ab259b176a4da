/*
 * routes_ops.c — cluster and operations: /v1/nodes, /health (liveness),
 * /health/ready (database reachable and schema current), /metrics.
 *
 * Thread: the work functions run on API threads.
 */
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_call.h"
#include "obs/engine_metrics.h"
#include "store/migrate.h"
#include "store/queries.h"

static void w_nodes(api_call *c) {
  char *json = NULL;
  sk_error err = {0};
  engine_q_lock(c->e);
  /* A node beats every lease_ttl/3: three missed beats and it is dead. */
  int rc = queries_list_nodes(c->e->query_conn, c->e->o.lease_ttl_ms, &json,
                              &err);
  engine_q_unlock(c->e);
  if (rc != SK_OK) {
    api_fail_sk(c, rc, &err);
    return;
  }
  char *out = NULL;
  if (asprintf(&out, "{\"nodes\":%s}", json) < 0)
    out = NULL;
  free(json);
  api_ok(c, 200, out);
}

static void w_health(api_call *c) {
  api_ok(c, 200, strdup("{\"status\":\"ok\"}"));
}

static void w_ready(api_call *c) {
  int version = 0;
  sk_error err = {0};
  engine_q_lock(c->e);
  int rc = migrate_current_version(c->e->query_conn, &version, &err);
  engine_q_unlock(c->e);
  int latest = migrate_latest_version();
  if (rc != SK_OK) {
    api_fail(c, 503, "not_ready", "the database is not reachable: %s",
             err.message);
  } else if (version != latest) {
    api_fail(c, 503, "not_ready",
             "the schema is at version %d; this binary needs %d", version,
             latest);
  } else {
    char *json = NULL;
    if (asprintf(&json, "{\"status\":\"ready\",\"schema_version\":%d}",
                 version) < 0)
      json = NULL;
    api_ok(c, 200, json);
  }
}

static void w_metrics(api_call *c) {
  char *text = NULL;
  int rc = engine_metrics_render(c->e, &text);
  if (rc != SK_OK) {
    api_fail_sk(c, rc, NULL);
    return;
  }
  c->content_type = "text/plain; version=0.0.4; charset=utf-8";
  api_ok(c, 200, text);
}

const api_route api_routes_ops[] = {
    {.method = HTTP_GET, .pattern = "/v1/nodes", .work = w_nodes},
    {.method = HTTP_GET, .pattern = "/health", .work = w_health,
     .public = true},
    {.method = HTTP_GET, .pattern = "/health/ready", .work = w_ready,
     .public = true},
    {.method = HTTP_GET, .pattern = "/metrics", .work = w_metrics,
     .public = true},
    {0}};
