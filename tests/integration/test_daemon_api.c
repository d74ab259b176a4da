/*
 * test_daemon_api.c — every endpoint of spec/http-api.md through a real HTTP
 * client against the real daemon (build/skald) on a fresh PostgreSQL
 * database, with the test playing the remote worker.
 *
 * Each test starts its own daemon on its own database and a free loopback
 * port; every wait is bounded by a deadline.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>
#include <ctype.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "pgtest.h"
#include "store/queries.h"

static char db[512];
static skd_daemon d;

static void setup(void) {
  skd_global_init();
  cr_assert_eq(pgtest_fresh_db(db, sizeof(db)), 0);
  skd_start(&d, db, 0, NULL, "e2e-api");
}

static void setup_short_lease(void) {
  skd_global_init();
  cr_assert_eq(pgtest_fresh_db(db, sizeof(db)), 0);
  skd_start(&d, db, 0, "1000", "e2e-api");
}

static void teardown(void) {
  int st = skd_stop(&d);
  if (st != 0)
    skd_dump_log(&d);
  pgtest_drop_db(db);
  char why[2048] = "";
  bool clean = skd_log_clean(&d, why, sizeof(why));
  if (getenv("SKALD_TEST_KEEP") == NULL && clean)
    unlink(d.log_path);
  cr_assert(clean, "the daemon's log shows a sanitizer report (%s): %s",
            d.log_path, why);
}

/* ---- helpers ---------------------------------------------------------- */

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...) {
  va_list ap;
  va_start(ap, f);
  char *s = NULL;
  if (vasprintf(&s, f, ap) < 0)
    s = NULL;
  va_end(ap);
  cr_assert_not_null(s);
  return s;
}

static long long scalar(const char *sql) { return pgtest_scalar(db, sql); }

static const char *jstr(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double jnum(const cJSON *o, const char *k, double dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

/* POST expecting a status; returns the response (caller frees). */
static void post_expect(const char *path, const char *body, long want,
                        skd_resp *r) {
  skd_post(&d, path, body, r);
  cr_assert_eq(r->status, want, "POST %s %s: want %ld, got %ld: %s", path,
               body, want, r->status, r->body);
}

static void get_expect(const char *path, long want, skd_resp *r) {
  skd_get(&d, path, r);
  cr_assert_eq(r->status, want, "GET %s: want %ld, got %ld: %s", path, want,
               r->status, r->body);
}

static void register_wf(const char *spec) {
  skd_resp r;
  skd_post(&d, "/v1/workflows", spec, &r);
  if (r.status == 422 && strcmp(skd_error_code(&r), "unsupported") == 0) {
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", r.body);
    skd_resp_free(&r);
    cr_skip_test("this build does not support the workflow: %s", msg);
  }
  cr_assert(r.status == 201 || r.status == 200,
            "register: got %ld: %s\nspec: %s", r.status, r.body, spec);
  skd_resp_free(&r);
}

/* Starts a run; returns the saga id into id[37]. */
static void start_run(const char *wf, const char *body, char id[37]) {
  char path[256];
  snprintf(path, sizeof(path), "/v1/workflows/%s/runs", wf);
  skd_resp r;
  post_expect(path, body, 201, &r);
  const char *s = jstr(r.json, "saga_id");
  cr_assert_not_null(s, "no saga_id in %s", r.body);
  snprintf(id, 37, "%s", s);
  skd_resp_free(&r);
}

/* GET /v1/sagas/{id} (caller frees). */
static cJSON *saga_view(const char *id) {
  char path[128];
  snprintf(path, sizeof(path), "/v1/sagas/%s", id);
  skd_resp r;
  get_expect(path, 200, &r);
  cJSON *j = r.json;
  r.json = NULL;
  skd_resp_free(&r);
  cr_assert_not_null(j);
  return j;
}

static void wait_status(const char *id, const char *want, int timeout_ms) {
  int64_t end = skd_now_ms() + timeout_ms;
  char last[64] = "";
  while (skd_now_ms() < end) {
    cJSON *v = saga_view(id);
    const char *st = jstr(v, "status");
    snprintf(last, sizeof(last), "%s", st ? st : "?");
    cJSON_Delete(v);
    if (strcmp(last, want) == 0)
      return;
    skd_sleep_ms(50);
  }
  cr_assert_fail("saga %s: status %s, wanted %s within %d ms", id, last,
                 want, timeout_ms);
}

typedef struct task {
  char id[256];
  long long token;
  char saga[37];
  char step[64];
  char kind[16];
  char type[64];
  int attempt;
  char *input; /* JSON */
} task;

static void task_free(task *t) {
  free(t->input);
  t->input = NULL;
}

/* Polls once; returns how many tasks (≤ max) were filled. */
static int poll_tasks(const char *worker, const char *types_json, int max,
                      int wait_ms, task *out) {
  char *body = fmt("{\"worker_id\":\"%s\",\"task_types\":%s,\"max\":%d,"
                   "\"wait_ms\":%d}",
                   worker, types_json, max, wait_ms);
  skd_resp r;
  skd_http(&d, "POST", "/v1/tasks/poll", body, NULL, wait_ms + 10000, &r);
  cr_assert_eq(r.status, 200, "poll %s: got %ld: %s", body, r.status, r.body);
  free(body);
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(r.json, "tasks");
  cr_assert(cJSON_IsArray(arr), "poll: no tasks array: %s", r.body);
  int n = 0;
  const cJSON *t;
  cJSON_ArrayForEach(t, arr) {
    cr_assert_lt(n, max, "poll returned more than max tasks");
    task *x = &out[n++];
    memset(x, 0, sizeof(*x));
    snprintf(x->id, sizeof(x->id), "%s", jstr(t, "task_id"));
    x->token = (long long)jnum(t, "lease_token", 0);
    snprintf(x->saga, sizeof(x->saga), "%s", jstr(t, "saga_id"));
    snprintf(x->step, sizeof(x->step), "%s", jstr(t, "step"));
    snprintf(x->kind, sizeof(x->kind), "%s", jstr(t, "kind"));
    snprintf(x->type, sizeof(x->type), "%s", jstr(t, "task_type"));
    x->attempt = (int)jnum(t, "attempt", 0);
    x->input =
        cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(t, "input"));
    cr_assert_gt(x->token, 0, "lease_token missing: %s", r.body);
    cr_assert_not_null(jstr(t, "idempotency_key"));
  }
  skd_resp_free(&r);
  return n;
}

/* Polls (repeatedly, bounded) until one task comes. */
static void poll_one(const char *worker, const char *types_json, task *t) {
  int64_t end = skd_now_ms() + 15000;
  while (skd_now_ms() < end) {
    if (poll_tasks(worker, types_json, 1, 2000, t) == 1)
      return;
  }
  cr_assert_fail("no task of %s within 15 s", types_json);
}

static long complete(const task *t, const char *output) {
  char path[320];
  snprintf(path, sizeof(path), "/v1/tasks/%s/complete", t->id);
  char *body = fmt("{\"lease_token\":%lld,\"output\":%s}", t->token, output);
  skd_resp r;
  skd_post(&d, path, body, &r);
  long st = r.status;
  if (st != 200)
    cr_log_info("complete %s: %ld %s", t->id, st, r.body);
  free(body);
  skd_resp_free(&r);
  return st;
}

static long fail_task(const task *t, const char *type, bool retryable) {
  char path[320];
  snprintf(path, sizeof(path), "/v1/tasks/%s/fail", t->id);
  char *body = fmt("{\"lease_token\":%lld,\"error\":{\"type\":\"%s\","
                   "\"message\":\"test says no\",\"retryable\":%s}}",
                   t->token, type, retryable ? "true" : "false");
  skd_resp r;
  skd_post(&d, path, body, &r);
  long st = r.status;
  free(body);
  skd_resp_free(&r);
  return st;
}

static long long count_events(const char *id, const char *type, int step) {
  char sql[512];
  if (step >= 0)
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM saga_events WHERE saga_id = '%s' AND "
             "type = '%s' AND step = %d",
             id, type, step);
  else
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM saga_events WHERE saga_id = '%s' AND "
             "type = '%s'",
             id, type);
  return scalar(sql);
}

static void verify_all(void) {
  PGconn *c = PQconnectdb(db);
  cr_assert_eq(PQstatus(c), CONNECTION_OK, "%s", PQerrorMessage(c));
  verify_report rep = {0};
  sk_error err = {0};
  int rc = queries_verify(c, NULL, &rep, &err);
  PQfinish(c);
  cr_assert_eq(rc, 0, "queries_verify: %s", err.message);
  cr_assert_eq(rep.mismatched, 0,
               "%zu of %zu projections differ from the fold (first %s)",
               rep.mismatched, rep.checked, rep.first_mismatch);
}

#define TWO_STEP(name, extra)                                                  \
  "{\"name\":\"" name "\",\"version\":1" extra ",\"defaults\":{\"retry\":{"   \
  "\"max_attempts\":3,\"initial_interval_ms\":50,\"max_interval_ms\":100}},"  \
  "\"steps\":["                                                               \
  "{\"name\":\"a\",\"task\":\"e2e.a\",\"input\":{\"x\":\"${input.x}\"},"      \
  "\"compensate\":{\"task\":\"e2e.undo_a\",\"retry\":{\"max_attempts\":1}}}," \
  "{\"name\":\"b\",\"task\":\"e2e.b\",\"input\":{\"a\":"                       \
  "\"${steps.a.output.v}\"},"                                                 \
  "\"compensate\":{\"task\":\"e2e.undo_b\"}}]}"

/* ---- workflows --------------------------------------------------------- */

Test(daemon_api, workflows, .init = setup, .fini = teardown, .timeout = 60) {
  const char *spec = TWO_STEP("wf_reg", "");
  skd_resp r;
  post_expect("/v1/workflows", spec, 201, &r);
  cr_assert_str_eq(jstr(r.json, "name"), "wf_reg");
  cr_assert_eq(jnum(r.json, "version", 0), 1);
  skd_resp_free(&r);
  post_expect("/v1/workflows", spec, 200, &r);
  skd_resp_free(&r);
  /* Same (name, version), different body. */
  post_expect("/v1/workflows",
              "{\"name\":\"wf_reg\",\"version\":1,\"steps\":[{\"name\":"
              "\"only\",\"task\":\"e2e.a\"}]}",
              409, &r);
  cr_assert_str_eq(skd_error_code(&r), "version_conflict");
  skd_resp_free(&r);
  cr_assert_eq(scalar("SELECT count(*) FROM workflow_defs"), 1);
  /* Version 2. */
  post_expect("/v1/workflows",
              "{\"name\":\"wf_reg\",\"version\":2,\"steps\":[{\"name\":"
              "\"only\",\"task\":\"e2e.a\"}]}",
              201, &r);
  skd_resp_free(&r);

  /* Invalid: every problem listed with a JSON Pointer. */
  post_expect("/v1/workflows",
              "{\"name\":\"Bad Name\",\"version\":0,\"steps\":[{\"name\":"
              "\"s\",\"task\":\"e2e.a\",\"retry\":{\"max_attempts\":0}}]}",
              400, &r);
  cr_assert_str_eq(skd_error_code(&r), "invalid_spec");
  const cJSON *det = cJSON_GetObjectItemCaseSensitive(
      cJSON_GetObjectItemCaseSensitive(r.json, "error"), "details");
  cr_assert(cJSON_IsArray(det) && cJSON_GetArraySize(det) >= 3,
            "want >= 3 problems: %s", r.body);
  bool p_name = false, p_ver = false, p_retry = false;
  const cJSON *p;
  cJSON_ArrayForEach(p, det) {
    const char *path = jstr(p, "path");
    cr_assert_not_null(path, "problem without path: %s", r.body);
    cr_assert_not_null(jstr(p, "message"));
    p_name |= strcmp(path, "/name") == 0;
    p_ver |= strcmp(path, "/version") == 0;
    p_retry |= strcmp(path, "/steps/0/retry/max_attempts") == 0;
  }
  cr_assert(p_name && p_ver && p_retry, "paths missing: %s", r.body);
  skd_resp_free(&r);

  /* List. */
  get_expect("/v1/workflows", 200, &r);
  const cJSON *wfs = cJSON_GetObjectItemCaseSensitive(r.json, "workflows");
  cr_assert(cJSON_IsArray(wfs) && cJSON_GetArraySize(wfs) == 1, "%s", r.body);
  const cJSON *w0 = cJSON_GetArrayItem(wfs, 0);
  cr_assert_str_eq(jstr(w0, "name"), "wf_reg");
  const cJSON *vs = cJSON_GetObjectItemCaseSensitive(w0, "versions");
  cr_assert(cJSON_IsArray(vs) && cJSON_GetArraySize(vs) == 2, "%s", r.body);
  skd_resp_free(&r);

  /* Latest, then ?version=1. */
  get_expect("/v1/workflows/wf_reg", 200, &r);
  cr_assert_eq(jnum(r.json, "version", 0), 2, "%s", r.body);
  skd_resp_free(&r);
  get_expect("/v1/workflows/wf_reg?version=1", 200, &r);
  cr_assert_eq(jnum(r.json, "version", 0), 1, "%s", r.body);
  const cJSON *steps = cJSON_GetObjectItemCaseSensitive(r.json, "steps");
  cr_assert_eq(cJSON_GetArraySize(steps), 2, "%s", r.body);
  skd_resp_free(&r);
  get_expect("/v1/workflows/wf_reg?version=7", 404, &r);
  cr_assert_str_eq(skd_error_code(&r), "not_found");
  skd_resp_free(&r);
  get_expect("/v1/workflows/nope", 404, &r);
  skd_resp_free(&r);
  get_expect("/v1/workflows/wf_reg?version=x", 400, &r);
  skd_resp_free(&r);
}

/* ---- runs, idempotency, listing, events -------------------------------- */

Test(daemon_api, runs_idempotent, .init = setup, .fini = teardown,
     .timeout = 60) {
  register_wf(TWO_STEP("wf_idem", ""));
  char id1[37], id2[37];
  start_run("wf_idem", "{\"input\":{\"x\":1},\"idempotency_key\":\"k-1\"}",
            id1);
  skd_resp r;
  for (int i = 0; i < 3; i++) {
    post_expect("/v1/workflows/wf_idem/runs",
                "{\"input\":{\"x\":1},\"idempotency_key\":\"k-1\"}", 200, &r);
    cr_assert_str_eq(jstr(r.json, "saga_id"), id1);
    skd_resp_free(&r);
  }
  cr_assert_eq(scalar("SELECT count(*) FROM sagas"), 1);
  start_run("wf_idem", "{\"input\":{\"x\":2},\"idempotency_key\":\"k-2\"}",
            id2);
  cr_assert_str_neq(id1, id2);
  cr_assert_eq(scalar("SELECT count(*) FROM sagas"), 2);
  /* Explicit version; unknown workflow / version. */
  post_expect("/v1/workflows/wf_idem/runs", "{\"input\":{},\"version\":1}",
              201, &r);
  skd_resp_free(&r);
  post_expect("/v1/workflows/wf_idem/runs", "{\"version\":9}", 404, &r);
  skd_resp_free(&r);
  post_expect("/v1/workflows/nope/runs", "{}", 404, &r);
  skd_resp_free(&r);
  cr_assert_eq(scalar("SELECT count(*) FROM sagas"), 3);

  /* The saga view. */
  cJSON *v = saga_view(id1);
  cr_assert_str_eq(jstr(v, "workflow"), "wf_idem");
  cr_assert_eq(jnum(v, "version", 0), 1);
  cr_assert_str_eq(jstr(v, "status"), "running");
  cr_assert_not_null(jstr(v, "phase"));
  const cJSON *in = cJSON_GetObjectItemCaseSensitive(v, "input");
  cr_assert_eq(jnum(in, "x", 0), 1);
  const cJSON *steps = cJSON_GetObjectItemCaseSensitive(v, "steps");
  cr_assert_eq(cJSON_GetArraySize(steps), 2);
  cr_assert_str_eq(jstr(cJSON_GetArrayItem(steps, 0), "name"), "a");
  cr_assert(cJSON_HasObjectItem(v, "replay_of"));
  cr_assert(cJSON_HasObjectItem(v, "replayed_by"));
  cJSON_Delete(v);
  get_expect("/v1/sagas/00000000-0000-7000-8000-000000000000", 404, &r);
  cr_assert_str_eq(skd_error_code(&r), "not_found");
  skd_resp_free(&r);
}

Test(daemon_api, list_pagination, .init = setup, .fini = teardown,
     .timeout = 60) {
  register_wf(TWO_STEP("wf_list", ""));
  register_wf(TWO_STEP("wf_other", ""));
  char ids[5][37];
  for (int i = 0; i < 5; i++) {
    start_run("wf_list", "{\"input\":{\"x\":1}}", ids[i]);
    skd_sleep_ms(5);
  }
  char other[37];
  start_run("wf_other", "{\"input\":{\"x\":1}}", other);
  /* Walk the pages of two. */
  char seen[8][37];
  int n_seen = 0, pages = 0;
  char cursor[64] = "";
  for (;;) {
    char path[256];
    snprintf(path, sizeof(path), "/v1/sagas?workflow=wf_list&limit=2%s%s",
             cursor[0] ? "&cursor=" : "", cursor);
    skd_resp r;
    get_expect(path, 200, &r);
    pages++;
    cr_assert_leq(pages, 4, "pagination does not end");
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(r.json, "sagas");
    cr_assert(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) <= 2, "%s",
              r.body);
    const cJSON *s;
    cJSON_ArrayForEach(s, arr) {
      cr_assert_lt(n_seen, 5, "more sagas than started: %s", r.body);
      snprintf(seen[n_seen++], 37, "%s", jstr(s, "id"));
      cr_assert_str_eq(jstr(s, "workflow"), "wf_list");
    }
    const char *next = jstr(r.json, "next_cursor");
    if (next == NULL) {
      skd_resp_free(&r);
      break;
    }
    snprintf(cursor, sizeof(cursor), "%s", next);
    skd_resp_free(&r);
  }
  cr_assert_eq(n_seen, 5, "saw %d of 5 sagas", n_seen);
  for (int i = 0; i < 5; i++)
    cr_assert_str_eq(seen[i], ids[4 - i], "page order: position %d", i);
  /* Status filter and bad parameters. */
  skd_resp r;
  get_expect("/v1/sagas?status=completed", 200, &r);
  cr_assert_eq(cJSON_GetArraySize(
                   cJSON_GetObjectItemCaseSensitive(r.json, "sagas")),
               0);
  skd_resp_free(&r);
  get_expect("/v1/sagas?status=running&limit=1000", 200, &r);
  cr_assert_eq(cJSON_GetArraySize(
                   cJSON_GetObjectItemCaseSensitive(r.json, "sagas")),
               6);
  skd_resp_free(&r);
  get_expect("/v1/sagas?status=bogus", 400, &r);
  skd_resp_free(&r);
  get_expect("/v1/sagas?limit=0", 400, &r);
  skd_resp_free(&r);
  get_expect("/v1/sagas?limit=1001", 400, &r);
  skd_resp_free(&r);
  get_expect("/v1/sagas?cursor=notauuid", 400, &r);
  skd_resp_free(&r);
}

/* ---- the remote worker flow --------------------------------------------- */

typedef struct poll_arg {
  task t;
  int n;
  int64_t returned_ms;
} poll_arg;

static void *poll_thread(void *ud) {
  poll_arg *a = ud;
  a->n = poll_tasks("w-long", "[\"e2e.a\"]", 1, 8000, &a->t);
  a->returned_ms = skd_now_ms();
  return NULL;
}

Test(daemon_api, worker_flow_and_events, .init = setup, .fini = teardown,
     .timeout = 90) {
  register_wf(
      "{\"name\":\"wf_flow\",\"version\":1,\"steps\":["
      "{\"name\":\"a\",\"task\":\"e2e.a\",\"input\":{\"x\":\"${input.x}\"}},"
      "{\"name\":\"nap\",\"sleep\":{\"ms\":300}},"
      "{\"name\":\"b\",\"task\":\"e2e.b\",\"input\":{\"a\":\"${steps.a."
      "output.v}\",\"k\":\"id-${input.x}\"}}]}");
  /* Long poll: a worker already waiting gets the task within 1 s. */
  poll_arg pa = {0};
  pthread_t th;
  cr_assert_eq(pthread_create(&th, NULL, poll_thread, &pa), 0);
  skd_sleep_ms(500);
  int64_t t0 = skd_now_ms();
  char id[37];
  start_run("wf_flow", "{\"input\":{\"x\":7}}", id);
  pthread_join(th, NULL);
  cr_assert_eq(pa.n, 1, "the long poll returned no task");
  cr_assert_lt(pa.returned_ms - t0, 1000,
               "the long poll took %lld ms after the start",
               (long long)(pa.returned_ms - t0));
  task *t = &pa.t;
  cr_assert_str_eq(t->saga, id);
  cr_assert_str_eq(t->step, "a");
  cr_assert_str_eq(t->kind, "fwd");
  cr_assert_eq(t->attempt, 1);
  cr_assert_str_eq(t->input, "{\"x\":7}");

  /* Heartbeat. */
  char path[320];
  snprintf(path, sizeof(path), "/v1/tasks/%s/heartbeat", t->id);
  char *hb = fmt("{\"lease_token\":%lld}", t->token);
  skd_resp r;
  post_expect(path, hb, 200, &r);
  cr_assert(cJSON_IsFalse(
                cJSON_GetObjectItemCaseSensitive(r.json, "cancel_requested")),
            "%s", r.body);
  skd_resp_free(&r);
  char *hb_bad = fmt("{\"lease_token\":%lld}", t->token + 1000);
  post_expect(path, hb_bad, 409, &r);
  cr_assert_str_eq(skd_error_code(&r), "lease_lost");
  skd_resp_free(&r);
  free(hb_bad);

  cr_assert_eq(complete(t, "{\"v\":\"A\"}"), 200);
  /* Completing twice with the same lease is refused (the lease is gone). */
  long again = complete(t, "{\"v\":\"other\"}");
  cr_assert_eq(again, 409, "a second complete got %ld", again);
  post_expect(path, hb, 409, &r);
  skd_resp_free(&r);
  free(hb);
  task_free(t);

  task tb;
  poll_one("w1", "[\"e2e.b\"]", &tb);
  cr_assert_str_eq(tb.step, "b");
  cr_assert_str_eq(tb.input, "{\"a\":\"A\",\"k\":\"id-7\"}");
  cr_assert_eq(complete(&tb, "{\"done\":true}"), 200);
  task_free(&tb);
  wait_status(id, "completed", 10000);
  cJSON *v = saga_view(id);
  const cJSON *steps = cJSON_GetObjectItemCaseSensitive(v, "steps");
  const cJSON *s;
  cJSON_ArrayForEach(s, steps) {
    cr_assert_str_eq(jstr(s, "status"), "completed", "step %s",
                     jstr(s, "name"));
  }
  cJSON_Delete(v);

  /* Events: in order, contiguous; after_seq skips. */
  snprintf(path, sizeof(path), "/v1/sagas/%s/events", id);
  get_expect(path, 200, &r);
  const cJSON *evs = cJSON_GetObjectItemCaseSensitive(r.json, "events");
  int n = cJSON_GetArraySize(evs);
  cr_assert_geq(n, 7, "%s", r.body);
  for (int i = 0; i < n; i++)
    cr_assert_eq(jnum(cJSON_GetArrayItem(evs, i), "seq", 0), i + 1);
  cr_assert_str_eq(jstr(cJSON_GetArrayItem(evs, 0), "type"), "SagaStarted");
  cr_assert_str_eq(jstr(cJSON_GetArrayItem(evs, n - 1), "type"),
                   "SagaCompleted");
  skd_resp_free(&r);
  snprintf(path, sizeof(path), "/v1/sagas/%s/events?after_seq=%d", id, n - 2);
  get_expect(path, 200, &r);
  evs = cJSON_GetObjectItemCaseSensitive(r.json, "events");
  cr_assert_eq(cJSON_GetArraySize(evs), 2, "%s", r.body);
  cr_assert_eq(jnum(cJSON_GetArrayItem(evs, 0), "seq", 0), n - 1);
  skd_resp_free(&r);
  snprintf(path, sizeof(path), "/v1/sagas/%s/events?after_seq=%d", id, n);
  get_expect(path, 200, &r);
  cr_assert_eq(cJSON_GetArraySize(
                   cJSON_GetObjectItemCaseSensitive(r.json, "events")),
               0);
  skd_resp_free(&r);
  snprintf(path, sizeof(path), "/v1/sagas/%s/events?after_seq=-1", id);
  get_expect(path, 400, &r);
  skd_resp_free(&r);
  get_expect("/v1/sagas/00000000-0000-7000-8000-000000000000/events", 404,
             &r);
  skd_resp_free(&r);
  /* Sleep honoured: b scheduled ≥ 300 ms after nap was. */
  char *gsql =
      fmt("SELECT (extract(epoch FROM (c.created_at - s.created_at)) * "
          "1000)::bigint FROM saga_events s, saga_events c WHERE "
          "s.saga_id = '%s' AND c.saga_id = s.saga_id AND s.step = 1 AND "
          "c.step = 1 AND s.type = 'StepScheduled' AND c.type = "
          "'StepCompleted'",
          id);
  long long gap = scalar(gsql);
  free(gsql);
  cr_assert_geq(gap, 290, "the sleep lasted %lld ms", gap);
  verify_all();
}

Test(daemon_api, fail_retry_and_compensate, .init = setup, .fini = teardown,
     .timeout = 90) {
  register_wf(
      "{\"name\":\"wf_fail\",\"version\":1,\"defaults\":{\"retry\":{"
      "\"max_attempts\":3,\"initial_interval_ms\":50,\"max_interval_ms\":"
      "100}},\"steps\":["
      "{\"name\":\"a\",\"task\":\"e2e.a\",\"compensate\":{\"task\":"
      "\"e2e.undo_a\"}},"
      "{\"name\":\"b\",\"task\":\"e2e.b\",\"compensate\":{\"task\":"
      "\"e2e.undo_b\"}},"
      "{\"name\":\"c\",\"task\":\"e2e.c\",\"compensate\":{\"task\":"
      "\"e2e.undo_c\"}}]}");
  char id[37];
  start_run("wf_fail", "{\"input\":{}}", id);
  task t;
  poll_one("w1", "[\"e2e.a\"]", &t);
  cr_assert_eq(t.attempt, 1);
  /* Retryable failure → a new attempt, numbered 2. */
  cr_assert_eq(fail_task(&t, "Flaky", true), 200);
  task_free(&t);
  poll_one("w1", "[\"e2e.a\"]", &t);
  cr_assert_str_eq(t.step, "a");
  cr_assert_eq(t.attempt, 2, "the retry came as attempt %d", t.attempt);
  cr_assert_eq(complete(&t, "{\"a\":1}"), 200);
  task_free(&t);
  poll_one("w1", "[\"e2e.b\"]", &t);
  cr_assert_eq(complete(&t, "{\"b\":1}"), 200);
  task_free(&t);
  poll_one("w1", "[\"e2e.c\"]", &t);
  cr_assert_eq(fail_task(&t, "Declined", false), 200);
  task_free(&t);
  /* Compensations in reverse: undo_b, then undo_a; c never completed. */
  const char *comp_types = "[\"e2e.undo_a\",\"e2e.undo_b\",\"e2e.undo_c\"]";
  poll_one("w1", comp_types, &t);
  cr_assert_str_eq(t.type, "e2e.undo_b");
  cr_assert_str_eq(t.kind, "comp");
  /* undo_a must not be handed out while undo_b is outstanding. */
  task early;
  cr_assert_eq(poll_tasks("w2", comp_types, 1, 300, &early), 0,
               "a second compensation was leased before the first ended");
  cr_assert_eq(complete(&t, "{}"), 200);
  task_free(&t);
  poll_one("w1", comp_types, &t);
  cr_assert_str_eq(t.type, "e2e.undo_a");
  cr_assert_eq(complete(&t, "{}"), 200);
  task_free(&t);
  wait_status(id, "compensated", 10000);
  cr_assert_eq(count_events(id, "CompensationCompleted", -1), 2);
  cr_assert_eq(count_events(id, "StepCompleted", -1), 2);
  /* The failure with an invalid body changes nothing. */
  verify_all();
}

/* A worker dies holding a task: a second worker gets it after the lease
 * expires, and the first worker's late result is fenced off. */
Test(daemon_api, lease_lost, .init = setup_short_lease, .fini = teardown,
     .timeout = 90) {
  register_wf("{\"name\":\"wf_lease\",\"version\":1,\"steps\":["
              "{\"name\":\"a\",\"task\":\"e2e.a\"},"
              "{\"name\":\"b\",\"task\":\"e2e.b\"}]}");
  char id[37];
  start_run("wf_lease", "{\"input\":{}}", id);
  task t1, t2;
  poll_one("dying", "[\"e2e.a\"]", &t1);
  int64_t got1 = skd_now_ms();
  /* The second worker waits; it may only get the task after expiry. */
  poll_one("healthy", "[\"e2e.a\"]", &t2);
  int64_t got2 = skd_now_ms();
  cr_assert_geq(got2 - got1, 900, "the task was re-leased after %lld ms",
                (long long)(got2 - got1));
  cr_assert_str_eq(t2.saga, id);
  cr_assert_str_eq(t2.step, "a");
  cr_assert_neq(t1.token, t2.token);
  cr_assert_eq(complete(&t2, "{\"by\":\"healthy\"}"), 200);
  /* The late answer. */
  char path[320];
  snprintf(path, sizeof(path), "/v1/tasks/%s/complete", t1.id);
  char *body = fmt("{\"lease_token\":%lld,\"output\":{\"by\":\"dying\"}}",
                   t1.token);
  skd_resp r;
  post_expect(path, body, 409, &r);
  cr_assert_str_eq(skd_error_code(&r), "lease_lost");
  skd_resp_free(&r);
  free(body);
  task tb;
  poll_one("healthy", "[\"e2e.b\"]", &tb);
  cr_assert_eq(complete(&tb, "{}"), 200);
  wait_status(id, "completed", 10000);
  cr_assert_eq(count_events(id, "StepCompleted", 0), 1);
  cJSON *v = saga_view(id);
  const cJSON *a = cJSON_GetArrayItem(
      cJSON_GetObjectItemCaseSensitive(v, "steps"), 0);
  cr_assert_str_eq(jstr(cJSON_GetObjectItemCaseSensitive(a, "output"), "by"),
                   "healthy");
  cJSON_Delete(v);
  task_free(&t1);
  task_free(&t2);
  task_free(&tb);
  verify_all();
}

/* Many clients start the same key at once: one saga, one 201. */
typedef struct race_arg {
  long status;
  char id[37];
} race_arg;

static void *race_start(void *ud) {
  race_arg *a = ud;
  skd_resp r;
  skd_post(&d, "/v1/workflows/wf_race/runs",
           "{\"input\":{\"x\":1},\"idempotency_key\":\"same-key\"}", &r);
  a->status = r.status;
  const char *s = jstr(r.json, "saga_id");
  snprintf(a->id, sizeof(a->id), "%s", s != NULL ? s : "");
  skd_resp_free(&r);
  return NULL;
}

Test(daemon_api, idempotency_race, .init = setup, .fini = teardown,
     .timeout = 60) {
  register_wf(TWO_STEP("wf_race", ""));
  enum { N = 16 };
  pthread_t th[N];
  race_arg a[N];
  memset(a, 0, sizeof(a));
  for (int i = 0; i < N; i++)
    cr_assert_eq(pthread_create(&th[i], NULL, race_start, &a[i]), 0);
  for (int i = 0; i < N; i++)
    pthread_join(th[i], NULL);
  int created = 0;
  for (int i = 0; i < N; i++) {
    cr_assert(a[i].status == 201 || a[i].status == 200,
              "concurrent start %d: %ld", i, a[i].status);
    created += a[i].status == 201;
    cr_assert_str_eq(a[i].id, a[0].id, "two sagas for one key");
  }
  cr_assert_eq(created, 1, "%d starts answered 201", created);
  cr_assert_eq(scalar("SELECT count(*) FROM sagas"), 1);
  cr_assert_eq(scalar("SELECT count(*) FROM saga_events WHERE type = "
                      "'SagaStarted'"),
               1);
}

/* Sagas started back to back (same millisecond) still list newest first,
 * and a walk with small pages sees each exactly once. */
Test(daemon_api, list_same_millisecond, .init = setup, .fini = teardown,
     .timeout = 60) {
  register_wf(TWO_STEP("wf_fast", ""));
  enum { N = 20 };
  char ids[N][37];
  for (int i = 0; i < N; i++)
    start_run("wf_fast", "{\"input\":{\"x\":1}}", ids[i]);
  char cursor[64] = "";
  int seen = 0;
  for (int page = 0; page < N; page++) {
    char path[256];
    snprintf(path, sizeof(path), "/v1/sagas?limit=3%s%s",
             cursor[0] ? "&cursor=" : "", cursor);
    skd_resp r;
    get_expect(path, 200, &r);
    const cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(r.json, "sagas")) {
      cr_assert_lt(seen, N, "more sagas listed than exist");
      cr_assert_str_eq(jstr(s, "id"), ids[N - 1 - seen],
                       "position %d is not the %d-th newest", seen, seen);
      seen++;
    }
    const char *next = jstr(r.json, "next_cursor");
    snprintf(cursor, sizeof(cursor), "%s", next != NULL ? next : "");
    skd_resp_free(&r);
    if (cursor[0] == '\0')
      break;
  }
  cr_assert_eq(seen, N);
}

/* A poll with nothing to do returns empty after about wait_ms. */
Test(daemon_api, poll_waits, .init = setup, .fini = teardown,
     .timeout = 60) {
  task t;
  int64_t t0 = skd_now_ms();
  int n = poll_tasks("idle", "[\"e2e.nothing\"]", 1, 1000, &t);
  int64_t took = skd_now_ms() - t0;
  cr_assert_eq(n, 0);
  cr_assert_geq(took, 900, "the long poll returned after %lld ms",
                (long long)took);
  cr_assert_leq(took, 3000, "the long poll returned after %lld ms",
                (long long)took);
  t0 = skd_now_ms();
  n = poll_tasks("idle", "[\"e2e.nothing\"]", 1, 0, &t);
  cr_assert_eq(n, 0);
  cr_assert_lt(skd_now_ms() - t0, 1000, "wait_ms 0 must not wait");
}

/* Heartbeats keep a lease alive well past its TTL. */
Test(daemon_api, heartbeat_keeps_lease, .init = setup_short_lease,
     .fini = teardown, .timeout = 60) {
  register_wf("{\"name\":\"wf_hb\",\"version\":1,\"steps\":["
              "{\"name\":\"a\",\"task\":\"e2e.a\"}]}");
  char id[37];
  start_run("wf_hb", "{\"input\":{}}", id);
  task t;
  poll_one("slow", "[\"e2e.a\"]", &t);
  char path[320];
  snprintf(path, sizeof(path), "/v1/tasks/%s/heartbeat", t.id);
  char *hb = fmt("{\"lease_token\":%lld}", t.token);
  int64_t end = skd_now_ms() + 3000;
  while (skd_now_ms() < end) {
    skd_resp r;
    post_expect(path, hb, 200, &r);
    skd_resp_free(&r);
    /* Nobody else may get the task meanwhile. */
    task other;
    cr_assert_eq(poll_tasks("thief", "[\"e2e.a\"]", 1, 300, &other), 0,
                 "a heartbeated task was leased to another worker");
  }
  free(hb);
  cr_assert_eq(complete(&t, "{}"), 200);
  task_free(&t);
  wait_status(id, "completed", 10000);
  cr_assert_eq(count_events(id, "StepCompleted", 0), 1);
}

/* Cancelling a saga inside a long sleep does not wait for the timer. */
Test(daemon_api, cancel_during_sleep, .init = setup, .fini = teardown,
     .timeout = 60) {
  register_wf("{\"name\":\"wf_nap\",\"version\":1,\"steps\":["
              "{\"name\":\"a\",\"task\":\"e2e.a\",\"compensate\":{\"task\":"
              "\"e2e.undo_a\"}},{\"name\":\"nap\",\"sleep\":{\"ms\":30000}},"
              "{\"name\":\"b\",\"task\":\"e2e.b\"}]}");
  char id[37];
  start_run("wf_nap", "{\"input\":{}}", id);
  task t;
  poll_one("w1", "[\"e2e.a\"]", &t);
  cr_assert_eq(complete(&t, "{}"), 200);
  task_free(&t);
  int64_t end = skd_now_ms() + 5000;
  while (skd_now_ms() < end && count_events(id, "StepScheduled", 1) == 0)
    skd_sleep_ms(20);
  cr_assert_eq(count_events(id, "StepScheduled", 1), 1);
  char path[128];
  snprintf(path, sizeof(path), "/v1/sagas/%s/cancel", id);
  skd_resp r;
  skd_post(&d, path, NULL, &r);
  cr_assert(r.status == 202 || r.status == 200, "%ld %s", r.status, r.body);
  skd_resp_free(&r);
  poll_one("w1", "[\"e2e.undo_a\",\"e2e.b\"]", &t);
  cr_assert_str_eq(t.type, "e2e.undo_a");
  cr_assert_eq(complete(&t, "{}"), 200);
  task_free(&t);
  wait_status(id, "cancelled", 5000);
  cr_assert_eq(count_events(id, "StepCompleted", 2), 0, "b ran after cancel");
  verify_all();
}

/* SIGTERM while a worker's long poll is in flight: the poll is answered
 * and the daemon exits 0 promptly (within its 10 s stop timeout), rather
 * than holding shutdown for the rest of wait_ms. */
typedef struct lp_arg {
  long status;
  int64_t returned_ms;
} lp_arg;

static void *long_poll(void *ud) {
  lp_arg *a = ud;
  skd_resp r;
  skd_http(&d, "POST", "/v1/tasks/poll",
           "{\"worker_id\":\"lp\",\"task_types\":[\"e2e.never\"],"
           "\"wait_ms\":25000}",
           NULL, 40000, &r);
  a->status = r.status;
  a->returned_ms = skd_now_ms();
  skd_resp_free(&r);
  return NULL;
}

Test(daemon_api, shutdown_with_long_poll, .init = setup, .fini = teardown,
     .timeout = 90) {
  lp_arg a = {0};
  pthread_t th;
  cr_assert_eq(pthread_create(&th, NULL, long_poll, &a), 0);
  skd_sleep_ms(500);
  int64_t t0 = skd_now_ms();
  int st = skd_stop(&d); /* SIGTERM; SIGKILL after 15 s */
  int64_t took = skd_now_ms() - t0;
  pthread_join(th, NULL);
  cr_log_info("stop took %lld ms; the poll got %ld after %lld ms",
              (long long)took, a.status, (long long)(a.returned_ms - t0));
  cr_assert_eq(st, 0,
               "skald did not exit 0 within 15 s of SIGTERM with a long "
               "poll in flight (wait status %d, %lld ms)",
               st, (long long)took);
  cr_assert(a.status == 200 || a.status == 503,
            "the in-flight poll got no answer (status %ld)", a.status);
}

/* ---- cancel and replay ------------------------------------------------- */

Test(daemon_api, cancel, .init = setup, .fini = teardown, .timeout = 90) {
  register_wf(TWO_STEP("wf_cancel", ""));
  char id[37];
  start_run("wf_cancel", "{\"input\":{\"x\":1}}", id);
  task t;
  poll_one("w1", "[\"e2e.a\"]", &t);
  cr_assert_eq(complete(&t, "{\"v\":\"A\"}"), 200);
  task_free(&t);
  poll_one("w1", "[\"e2e.b\"]", &t); /* the worker holds b */
  char path[128];
  snprintf(path, sizeof(path), "/v1/sagas/%s/cancel", id);
  skd_resp r;
  skd_post(&d, path, NULL, &r);
  cr_assert(r.status == 202 || r.status == 200, "cancel: %ld %s", r.status,
            r.body);
  skd_resp_free(&r);
  /* The worker learns it at its next heartbeat and stops. */
  char hp[320];
  snprintf(hp, sizeof(hp), "/v1/tasks/%s/heartbeat", t.id);
  char *hb = fmt("{\"lease_token\":%lld}", t.token);
  post_expect(hp, hb, 200, &r);
  cr_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
                r.json, "cancel_requested")),
            "heartbeat after cancel: %s", r.body);
  skd_resp_free(&r);
  free(hb);
  long fs = fail_task(&t, "Cancelled", false);
  cr_assert(fs == 200 || fs == 409, "fail after cancel: %ld", fs);
  task_free(&t);
  /* a is compensated. */
  poll_one("w1", "[\"e2e.undo_a\",\"e2e.undo_b\"]", &t);
  cr_assert_str_eq(t.type, "e2e.undo_a");
  cr_assert_eq(complete(&t, "{}"), 200);
  task_free(&t);
  wait_status(id, "cancelled", 10000);
  skd_post(&d, path, NULL, &r);
  cr_assert_eq(r.status, 409, "cancel of a cancelled saga: %ld %s", r.status,
               r.body);
  skd_resp_free(&r);
  skd_post(&d, "/v1/sagas/00000000-0000-7000-8000-000000000000/cancel", NULL,
           &r);
  cr_assert_eq(r.status, 404, "%s", r.body);
  skd_resp_free(&r);
  verify_all();
}

/* Drives a saga of TWO_STEP-shape workflow `wf` to paused (on_failure
 * pause): a completes, b fails for good. */
static void to_paused(const char *wf, char id[37]) {
  start_run(wf, "{\"input\":{\"x\":1}}", id);
  task t;
  poll_one("w1", "[\"e2e.a\"]", &t);
  cr_assert_eq(complete(&t, "{\"v\":\"A\"}"), 200);
  task_free(&t);
  poll_one("w1", "[\"e2e.b\"]", &t);
  cr_assert_eq(fail_task(&t, "Broken", false), 200);
  task_free(&t);
  wait_status(id, "paused", 10000);
}

static long replay(const char *id, const char *body, skd_resp *r) {
  char path[128];
  snprintf(path, sizeof(path), "/v1/sagas/%s/replay", id);
  skd_post(&d, path, body, r);
  return r->status;
}

Test(daemon_api, replay_paused, .init = setup, .fini = teardown,
     .timeout = 90) {
  register_wf(TWO_STEP("wf_pause", ",\"on_failure\":\"pause\""));
  char id[37];
  to_paused("wf_pause", id);
  skd_resp r;
  cr_assert_eq(replay(id, NULL, &r), 200, "%s", r.body);
  skd_resp_free(&r);
  task t;
  poll_one("w1", "[\"e2e.a\",\"e2e.b\"]", &t);
  cr_assert_str_eq(t.step, "b", "resume must start at the failed step");
  cr_assert_eq(complete(&t, "{}"), 200);
  task_free(&t);
  wait_status(id, "completed", 10000);
  cr_assert_eq(count_events(id, "StepCompleted", 0), 1);

  /* from_step + step_input. */
  char id2[37];
  to_paused("wf_pause", id2);
  cr_assert_eq(replay(id2,
                      "{\"from_step\":\"a\",\"step_input\":{\"fixed\":true}}",
                      &r),
               200, "%s", r.body);
  skd_resp_free(&r);
  poll_one("w1", "[\"e2e.a\",\"e2e.b\"]", &t);
  cr_assert_str_eq(t.step, "a");
  cr_assert_str_eq(t.input, "{\"fixed\":true}");
  cr_assert_eq(complete(&t, "{\"v\":\"A2\"}"), 200);
  task_free(&t);
  poll_one("w1", "[\"e2e.b\"]", &t);
  cr_assert_str_eq(t.input, "{\"a\":\"A2\"}");
  cr_assert_eq(complete(&t, "{}"), 200);
  task_free(&t);
  wait_status(id2, "completed", 10000);
  /* Replaying a completed or running saga → 409. */
  cr_assert_eq(replay(id2, NULL, &r), 409, "%s", r.body);
  cr_assert_str_eq(skd_error_code(&r), "invalid_state");
  skd_resp_free(&r);
  char id3[37];
  start_run("wf_pause", "{\"input\":{\"x\":1}}", id3);
  cr_assert_eq(replay(id3, NULL, &r), 409, "replay of running: %s", r.body);
  skd_resp_free(&r);
  verify_all();
}

Test(daemon_api, replay_failed_and_compensated, .init = setup,
     .fini = teardown, .timeout = 90) {
  register_wf(TWO_STEP("wf_rf", ""));
  /* failed: b fails for good, undo_a (max_attempts 1) fails for good. */
  char id[37];
  start_run("wf_rf", "{\"input\":{\"x\":1}}", id);
  task t;
  poll_one("w1", "[\"e2e.a\"]", &t);
  cr_assert_eq(complete(&t, "{\"v\":\"A\"}"), 200);
  task_free(&t);
  poll_one("w1", "[\"e2e.b\"]", &t);
  cr_assert_eq(fail_task(&t, "Broken", false), 200);
  task_free(&t);
  poll_one("w1", "[\"e2e.undo_a\"]", &t);
  cr_assert_eq(fail_task(&t, "UndoBroken", false), 200);
  task_free(&t);
  wait_status(id, "failed", 10000);
  skd_resp r;
  cr_assert_eq(replay(id, NULL, &r), 200, "%s", r.body);
  skd_resp_free(&r);
  poll_one("w1", "[\"e2e.undo_a\",\"e2e.a\",\"e2e.b\"]", &t);
  cr_assert_str_eq(t.type, "e2e.undo_a");
  cr_assert_eq(complete(&t, "{}"), 200);
  task_free(&t);
  wait_status(id, "compensated", 10000);

  /* compensated: a new run with a corrected input, linked both ways. */
  cr_assert_eq(replay(id, "{\"input\":{\"x\":2}}", &r), 201, "%s", r.body);
  const char *nid = jstr(r.json, "new_saga_id");
  cr_assert_not_null(nid, "%s", r.body);
  char new_id[37];
  snprintf(new_id, sizeof(new_id), "%s", nid);
  skd_resp_free(&r);
  cr_assert_str_neq(new_id, id);
  cJSON *ov = saga_view(id), *nv = saga_view(new_id);
  cr_assert_str_eq(jstr(ov, "replayed_by"), new_id);
  cr_assert_str_eq(jstr(nv, "replay_of"), id);
  cr_assert_eq(jnum(nv, "version", 0), 1);
  cr_assert_eq(jnum(cJSON_GetObjectItemCaseSensitive(nv, "input"), "x", 0),
               2);
  cJSON_Delete(ov);
  cJSON_Delete(nv);
  poll_one("w1", "[\"e2e.a\"]", &t);
  cr_assert_str_eq(t.saga, new_id);
  cr_assert_str_eq(t.input, "{\"x\":2}");
  cr_assert_eq(complete(&t, "{\"v\":\"B\"}"), 200);
  task_free(&t);
  poll_one("w1", "[\"e2e.b\"]", &t);
  cr_assert_eq(complete(&t, "{}"), 200);
  task_free(&t);
  wait_status(new_id, "completed", 10000);
  /* The old one cannot be replayed into a second new run... it is
   * compensated, so a replay is a new run again; a completed one is 409. */
  cr_assert_eq(replay(new_id, NULL, &r), 409, "%s", r.body);
  skd_resp_free(&r);
  verify_all();
}

Test(daemon_api, bulk_replay, .init = setup, .fini = teardown,
     .timeout = 90) {
  register_wf(TWO_STEP("wf_bulk", ",\"on_failure\":\"pause\""));
  char a[37], b[37];
  to_paused("wf_bulk", a);
  to_paused("wf_bulk", b);
  skd_resp r;
  post_expect("/v1/sagas/replay",
              "{\"status\":\"paused\",\"workflow\":\"wf_bulk\",\"limit\":10}",
              200, &r);
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(r.json, "replayed");
  cr_assert(cJSON_IsArray(arr), "%s", r.body);
  cr_assert_eq(cJSON_GetArraySize(arr), 2, "%s", r.body);
  bool ha = false, hb = false;
  const cJSON *x;
  cJSON_ArrayForEach(x, arr) {
    const char *sid = jstr(x, "saga_id");
    cr_assert_not_null(sid, "%s", r.body);
    ha |= strcmp(sid, a) == 0;
    hb |= strcmp(sid, b) == 0;
  }
  cr_assert(ha && hb, "both paused sagas are touched: %s", r.body);
  skd_resp_free(&r);
  for (int i = 0; i < 2; i++) {
    task t;
    poll_one("w1", "[\"e2e.b\"]", &t);
    cr_assert_eq(complete(&t, "{}"), 200);
    task_free(&t);
  }
  wait_status(a, "completed", 10000);
  wait_status(b, "completed", 10000);
  /* Nothing left to replay. */
  post_expect("/v1/sagas/replay", "{\"status\":\"paused\"}", 200, &r);
  cr_assert_eq(cJSON_GetArraySize(
                   cJSON_GetObjectItemCaseSensitive(r.json, "replayed")),
               0, "%s", r.body);
  skd_resp_free(&r);
  post_expect("/v1/sagas/replay", "{\"status\":\"running\"}", 400, &r);
  skd_resp_free(&r);
  verify_all();
}

/* ---- operations -------------------------------------------------------- */

/* Checks one line of the Prometheus text exposition format (0.0.4). */
static bool metric_name_ok(const char **p) {
  const char *s = *p;
  if (!(isalpha((unsigned char)*s) || *s == '_' || *s == ':'))
    return false;
  while (isalnum((unsigned char)*s) || *s == '_' || *s == ':')
    s++;
  *p = s;
  return true;
}

static bool value_ok(const char *s) {
  if (strcmp(s, "+Inf") == 0 || strcmp(s, "-Inf") == 0 ||
      strcmp(s, "NaN") == 0)
    return true;
  char *end = NULL;
  strtod(s, &end);
  return end != s && *end == '\0';
}

static void check_metric_line(const char *line, int lineno) {
  if (line[0] == '\0')
    return;
  if (line[0] == '#') {
    if (strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0) {
      const char *p = line + 7;
      cr_assert(metric_name_ok(&p), "line %d: bad name: %s", lineno, line);
      if (strncmp(line, "# TYPE ", 7) == 0) {
        cr_assert(*p == ' ', "line %d: %s", lineno, line);
        p++;
        cr_assert(strcmp(p, "counter") == 0 || strcmp(p, "gauge") == 0 ||
                      strcmp(p, "histogram") == 0 ||
                      strcmp(p, "summary") == 0 || strcmp(p, "untyped") == 0,
                  "line %d: bad type: %s", lineno, line);
      } else {
        cr_assert(*p == ' ' || *p == '\0', "line %d: %s", lineno, line);
        for (; *p; p++) /* HELP escapes only \\ and \n */
          if (*p == '\\')
            cr_assert(p[1] == '\\' || p[1] == 'n', "line %d: bad escape: %s",
                      lineno, line);
            else
              continue;
      }
    }
    return;
  }
  const char *p = line;
  cr_assert(metric_name_ok(&p), "line %d: bad metric name: %s", lineno, line);
  if (*p == '{') {
    p++;
    while (*p != '}') {
      cr_assert(isalpha((unsigned char)*p) || *p == '_',
                "line %d: bad label name: %s", lineno, line);
      while (isalnum((unsigned char)*p) || *p == '_')
        p++;
      cr_assert(*p == '=' && p[1] == '"', "line %d: bad label: %s", lineno,
                line);
      p += 2;
      while (*p != '"') {
        cr_assert(*p != '\0' && *p != '\n', "line %d: open label value: %s",
                  lineno, line);
        if (*p == '\\') {
          cr_assert(p[1] == '\\' || p[1] == '"' || p[1] == 'n',
                    "line %d: bad escape in label value: %s", lineno, line);
          p++;
        }
        p++;
      }
      p++;
      if (*p == ',')
        p++;
      else
        cr_assert(*p == '}', "line %d: bad label list: %s", lineno, line);
    }
    p++;
  }
  cr_assert(*p == ' ', "line %d: no value: %s", lineno, line);
  p++;
  char val[64];
  size_t n = strcspn(p, " ");
  cr_assert_lt(n, sizeof(val), "line %d", lineno);
  memcpy(val, p, n);
  val[n] = '\0';
  cr_assert(value_ok(val), "line %d: bad value '%s': %s", lineno, val, line);
  p += n;
  if (*p == ' ') { /* optional timestamp */
    p++;
    char *end = NULL;
    strtoll(p, &end, 10);
    cr_assert(end != p && *end == '\0', "line %d: bad timestamp: %s", lineno,
              line);
  }
}

/* The value of skald_sagas{status="<st>"} in text, or -1. */
static double sagas_gauge(const char *text, const char *st) {
  char key[96];
  snprintf(key, sizeof(key), "skald_sagas{status=\"%s\"} ", st);
  const char *p = strstr(text, key);
  if (p == NULL || (p != text && p[-1] != '\n'))
    return -1;
  return strtod(p + strlen(key), NULL);
}

Test(daemon_api, ops, .init = setup, .fini = teardown, .timeout = 60) {
  register_wf(TWO_STEP("wf_ops", ",\"on_failure\":\"pause\""));
  char id[37], id2[37];
  to_paused("wf_ops", id);
  start_run("wf_ops", "{\"input\":{\"x\":1}}", id2);
  start_run("wf_ops", "{\"input\":{\"x\":1}}", id2);
  skd_resp r;
  get_expect("/health", 200, &r);
  skd_resp_free(&r);
  get_expect("/health/ready", 200, &r);
  cr_assert_str_eq(jstr(r.json, "status"), "ready", "%s", r.body);
  skd_resp_free(&r);
  get_expect("/v1/nodes", 200, &r);
  const cJSON *nodes = cJSON_GetObjectItemCaseSensitive(r.json, "nodes");
  cr_assert(cJSON_IsArray(nodes), "%s", r.body);
  bool found = false;
  const cJSON *nd;
  cJSON_ArrayForEach(nd, nodes) {
    const char *name = jstr(nd, "name");
    found |= name != NULL && strcmp(name, "e2e-api") == 0;
  }
  cr_assert(found, "node e2e-api not listed: %s", r.body);
  skd_resp_free(&r);

  get_expect("/metrics", 200, &r);
  char ct[128];
  cr_assert(skd_header(&r, "Content-Type", ct, sizeof(ct)));
  cr_assert(strncmp(ct, "text/plain", 10) == 0, "content type %s", ct);
  char *text = strdup(r.body);
  skd_resp_free(&r);
  int lineno = 0;
  size_t lines = 0;
  for (char *save = NULL, *line = strtok_r(text, "\n", &save); line != NULL;
       line = strtok_r(NULL, "\n", &save)) {
    check_metric_line(line, ++lineno);
    lines++;
  }
  free(text);
  cr_assert_gt(lines, 10);
  /* skald_sagas matches the database (retry: sagas may move meanwhile). */
  static const char *const sts[] = {"running",   "compensating", "completed",
                                    "compensated", "failed",     "paused",
                                    "cancelled"};
  bool match = false;
  char why[256] = "";
  for (int tries = 0; tries < 20 && !match; tries++) {
    get_expect("/metrics", 200, &r);
    match = true;
    for (size_t i = 0; i < sizeof(sts) / sizeof(sts[0]); i++) {
      char sql[128];
      snprintf(sql, sizeof(sql),
               "SELECT count(*) FROM sagas WHERE status = '%s'", sts[i]);
      long long want = scalar(sql);
      double got = sagas_gauge(r.body, sts[i]);
      if (got != (double)want) {
        match = false;
        snprintf(why, sizeof(why), "skald_sagas{status=\"%s\"} = %g, db %lld",
                 sts[i], got, want);
      }
    }
    skd_resp_free(&r);
    if (!match)
      skd_sleep_ms(100);
  }
  cr_assert(match, "%s", why);
  cr_assert_eq(scalar("SELECT count(*) FROM sagas WHERE status='paused'"), 1);
  cr_assert_eq(scalar("SELECT count(*) FROM sagas WHERE status='running'"),
               2);
  /* Graceful stop exits 0. */
  int st = skd_stop(&d);
  if (st != 0)
    skd_dump_log(&d);
  cr_assert_eq(st, 0, "skald did not exit 0 on SIGTERM (wait status %d)", st);
}
