/*
 * routes_workflows.c — /v1/workflows: register a spec (201 new, 200 the
 * same again, 409 a different body for an existing version, 400 with every
 * problem for an invalid one), list workflows, read a version's spec.
 *
 * Thread: the work functions run on API threads.
 */
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_call.h"
#include "spec/problems.h"
#include "spec/spec_json.h"
#include "store/queries.h"

static void w_register(api_call *c) {
  def_problems p;
  def_problems_init(&p);
  def_workflow *wf = NULL;
  int rc = spec_parse(c->body, strlen(c->body), &wf, &p);
  if (rc != SK_OK) {
    c->details = def_problems_to_json(&p);
    sk_error err = {0};
    def_problems_to_error(&p, &err);
    def_problems_clear(&p);
    if (rc == SK_ETOOBIG)
      api_fail(c, 413, "payload_too_large", "%s", err.message);
    else
      api_fail(c, 400, "invalid_spec", "%s", err.message);
    return;
  }
  def_problems_clear(&p);
  bool created = false;
  sk_error err = {0};
  rc = engine_register_def(c->e, wf, &created, &err);
  if (rc == SK_OK) {
    char *json = NULL;
    if (asprintf(&json, "{\"name\":\"%s\",\"version\":%d}", wf->name,
                 wf->version) < 0)
      json = NULL;
    api_ok(c, created ? 201 : 200, json);
  } else if (rc == SK_EINVALSPEC) {
    api_fail_sk(c, rc, &err);
    c->status = 400;
  } else {
    api_fail_sk(c, rc, &err);
  }
  def_workflow_unref(wf);
}

static void w_list(api_call *c) {
  char *json = NULL;
  sk_error err = {0};
  engine_q_lock(c->e);
  int rc = queries_list_workflows(c->e->query_conn, &json, &err);
  engine_q_unlock(c->e);
  if (rc != SK_OK) {
    api_fail_sk(c, rc, &err);
    return;
  }
  char *out = NULL;
  if (asprintf(&out, "{\"workflows\":%s}", json) < 0)
    out = NULL;
  free(json);
  api_ok(c, 200, out);
}

static void w_get(api_call *c) {
  if (!def_name_valid(c->param)) {
    api_fail(c, 400, "invalid_request",
             "workflow name must match [a-z0-9_.-]{1,128}");
    return;
  }
  long version = 0;
  if (!api_query_int(c->query[0], 1, 2147483647, &version)) {
    api_fail(c, 400, "invalid_request", "version must be a positive integer");
    return;
  }
  char *spec = NULL;
  sk_error err = {0};
  engine_q_lock(c->e);
  int rc = queries_load_def(c->e->query_conn, c->param, (int)version, &spec,
                            NULL, &err);
  engine_q_unlock(c->e);
  if (rc != SK_OK) {
    api_fail_sk(c, rc, &err);
    return;
  }
  api_ok(c, 200, spec);
}

const api_route api_routes_workflows[] = {
    {.method = HTTP_POST, .pattern = "/v1/workflows", .work = w_register,
     .needs_body = true},
    {.method = HTTP_GET, .pattern = "/v1/workflows", .work = w_list},
    {.method = HTTP_GET, .pattern = "/v1/workflows/{name}", .work = w_get,
     .query = {"version"}},
    {0}};
