/*
 * test_sdk_flow.c — the happy paths (and the planned unhappy ones) of the
 * public SDK against a real PostgreSQL: a saga runs to completion, outputs
 * flow between steps through templates, retries back off, errors that must
 * not be retried are not, compensations run newest first, pause, cancel,
 * sleep, per-step and per-saga timeouts, idempotent starts, the event
 * history, bulkheads and the circuit breaker.
 *
 * Handlers record every call (input, key, attempt, times) so the tests
 * assert what handlers really received and when. Waits use sk_saga_wait
 * or poll with deadlines; nothing sleeps longer than the behaviour needs.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <skald/skald.h>

#include "pgtest.h"

#define WAIT_MS 20000
#define MAX_CALLS 128

/* ---- time ------------------------------------------------------------------
 */

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ---- what handlers saw
 * -------------------------------------------------------- */

typedef struct call {
  char saga[SK_ID_LEN];
  char workflow[64];
  char step[64];
  char type[64];
  char key[256];
  char input[1024];
  int attempt;
  bool comp;
  int64_t deadline_ms, wall_start;
  int64_t start, end; /* monotonic ms; end 0 while running */
  bool saw_cancel;
} call;

static pthread_mutex_t rec_mu = PTHREAD_MUTEX_INITIALIZER;
static call calls[MAX_CALLS];
static int n_calls;

static int rec_begin(const sk_task *t) {
  pthread_mutex_lock(&rec_mu);
  int i = n_calls < MAX_CALLS ? n_calls++ : MAX_CALLS - 1;
  call *c = &calls[i];
  memset(c, 0, sizeof(*c));
  snprintf(c->saga, sizeof(c->saga), "%s", t->saga_id);
  snprintf(c->workflow, sizeof(c->workflow), "%s", t->workflow);
  snprintf(c->step, sizeof(c->step), "%s", t->step);
  snprintf(c->type, sizeof(c->type), "%s", t->task_type);
  snprintf(c->key, sizeof(c->key), "%s", t->idempotency_key);
  snprintf(c->input, sizeof(c->input), "%s", t->input);
  c->attempt = t->attempt;
  c->comp = t->is_compensation;
  c->deadline_ms = t->deadline_ms;
  c->wall_start = wall_ms();
  c->start = mono_ms();
  pthread_mutex_unlock(&rec_mu);
  return i;
}

static void rec_end(int i, bool saw_cancel) {
  pthread_mutex_lock(&rec_mu);
  calls[i].end = mono_ms();
  calls[i].saw_cancel = saw_cancel;
  pthread_mutex_unlock(&rec_mu);
}

/* A copy of the k-th call (in start order) matching step/comp; false if
 * there is none. step NULL matches any. */
static bool find_call(const char *step, int comp, int k, call *out) {
  pthread_mutex_lock(&rec_mu);
  bool found = false;
  for (int i = 0; i < n_calls && !found; i++) {
    if (step != NULL && strcmp(calls[i].step, step) != 0)
      continue;
    if (comp >= 0 && calls[i].comp != (comp == 1))
      continue;
    if (k-- == 0) {
      *out = calls[i];
      found = true;
    }
  }
  pthread_mutex_unlock(&rec_mu);
  return found;
}

static int count_calls(const char *step, int comp) {
  call c;
  int n = 0;
  while (find_call(step, comp, n, &c))
    n++;
  return n;
}

/* Waits until `step` has at least n calls; false after ms. */
static bool wait_calls(const char *step, int comp, int n, int ms) {
  int64_t end = mono_ms() + ms;
  while (count_calls(step, comp) < n) {
    if (mono_ms() > end)
      return false;
    nap(5);
  }
  return true;
}

/* ---- a scripted handler
 * -------------------------------------------------------- */

typedef struct behave {
  int fail_attempts; /* attempts 1..n fail */
  bool always_fail;
  const char *fail_type; /* default "Transient" */
  bool fatal;            /* failures are retryable=false */
  int sleep_ms;          /* how long an attempt works */
  int sleep_attempts;    /* only attempts ≤ this work that long; 0 = all */
  bool until_cancel;     /* stop working once sk_task_cancelled() */
  const char *output;    /* JSON text; NULL = null */
  atomic_int active, max_active;
} behave;

static int h_script(const sk_task *t, sk_task_result *r, void *ud) {
  behave *b = ud;
  int idx = rec_begin(t);
  int now = atomic_fetch_add(&b->active, 1) + 1;
  int seen = atomic_load(&b->max_active);
  while (now > seen &&
         !atomic_compare_exchange_weak(&b->max_active, &seen, now))
    ;
  bool cancelled = false;
  if (b->sleep_ms > 0 &&
      (b->sleep_attempts == 0 || t->attempt <= b->sleep_attempts)) {
    int64_t end = mono_ms() + b->sleep_ms;
    while (mono_ms() < end) {
      if (b->until_cancel && sk_task_cancelled(t)) {
        cancelled = true;
        break;
      }
      nap(5);
    }
  }
  atomic_fetch_sub(&b->active, 1);
  int rc;
  if (cancelled)
    rc = sk_result_error(r, "Cancelled", "stopped on request", false);
  else if (b->always_fail || t->attempt <= b->fail_attempts)
    rc = sk_result_error(r, b->fail_type ? b->fail_type : "Transient",
                         "scripted failure", !b->fatal);
  else
    rc = sk_result_ok(r, b->output);
  rec_end(idx, cancelled);
  return rc;
}

/* ---- engine and database per test
 * ---------------------------------------------- */

static char ci[1024];
static sk_engine *eng;

static void db_setup(void) { cr_assert_eq(pgtest_fresh_db(ci, sizeof(ci)), 0); }

static void db_teardown(void) {
  sk_engine_close(eng);
  eng = NULL;
  pgtest_drop_db(ci);
}

TestSuite(sdk_flow, .init = db_setup, .fini = db_teardown, .timeout = 60);

static void open_engine_with(const sk_engine_options *extra) {
  sk_engine_options o;
  if (extra != NULL)
    o = *extra;
  else
    sk_engine_options_init(&o);
  o.database_url = ci;
  o.lease_ttl_ms = 900;
  o.poll_interval_ms = 50;
  o.log_level = 0;
  sk_error err;
  memset(&err, 0, sizeof(err));
  int rc = sk_engine_open(&o, &eng, &err);
  cr_assert_eq(rc, SK_OK, "open: %s", err.message);
}

static void open_engine(void) { open_engine_with(NULL); }

static void reg_task(const char *type, behave *b) {
  cr_assert_eq(sk_engine_register_task(eng, type, h_script, b), SK_OK, "%s",
               type);
}

static void reg_wf(sk_workflow *wf) {
  sk_error err;
  memset(&err, 0, sizeof(err));
  int rc = sk_engine_register_workflow(eng, wf, &err);
  cr_assert_eq(rc, SK_OK, "register: %s %s (%s)", sk_err_name(rc), err.message,
               err.path);
  sk_workflow_free(wf);
}

static sk_workflow *wf_new(const char *name) {
  sk_workflow *wf = NULL;
  cr_assert_eq(sk_workflow_new(name, 1, &wf), SK_OK);
  return wf;
}

#define OK(call) cr_assert_eq((call), SK_OK, "%s", #call)

static void start(const char *wf, const char *input, char id[SK_ID_LEN]) {
  sk_error err;
  memset(&err, 0, sizeof(err));
  bool existed = true;
  int rc = sk_run_start(eng, wf, input, NULL, id, &existed, &err);
  cr_assert_eq(rc, SK_OK, "start %s: %s", wf, err.message);
  cr_assert_not(existed);
}

static sk_status wait_settled(const char *id) {
  sk_status st = SK_STATUS_RUNNING;
  int rc = sk_saga_wait(eng, id, WAIT_MS, &st);
  cr_assert_eq(rc, SK_OK, "wait %s: %s", id, sk_err_name(rc));
  return st;
}

static void expect_status(const char *id, sk_status want) {
  sk_status st = wait_settled(id);
  cr_assert_eq(st, want, "saga %s is %s, want %s", id, sk_status_name(st),
               sk_status_name(want));
}

/* ---- JSON helpers
 * ----------------------------------------------------------------- */

static const cJSON *jget(const cJSON *o, const char *path) {
  char buf[256];
  snprintf(buf, sizeof(buf), "%s", path);
  const cJSON *cur = o;
  for (char *save = NULL, *k = strtok_r(buf, ".", &save); k && cur;
       k = strtok_r(NULL, ".", &save)) {
    if (cJSON_IsArray(cur))
      cur = cJSON_GetArrayItem(cur, atoi(k));
    else
      cur = cJSON_GetObjectItemCaseSensitive(cur, k);
  }
  return cur;
}

static const char *jstr(const cJSON *o, const char *path) {
  const char *s = cJSON_GetStringValue(jget(o, path));
  return s != NULL ? s : "(none)";
}

static double jnum(const cJSON *o, const char *path) {
  const cJSON *it = jget(o, path);
  cr_assert(cJSON_IsNumber(it), "%s is not a number", path);
  return it->valuedouble;
}

/* Asserts the JSON text `got` equals the JSON text `want`. */
static void expect_json(const char *got, const char *want, const char *what) {
  cJSON *g = cJSON_Parse(got), *w = cJSON_Parse(want);
  cr_assert_not_null(g, "%s: not JSON: %s", what, got);
  cr_assert_not_null(w, "%s: bad expectation", what);
  cr_expect(cJSON_Compare(g, w, true), "%s: got %s, want %s", what, got, want);
  cJSON_Delete(g);
  cJSON_Delete(w);
}

static cJSON *view(const char *id) {
  char *json = NULL;
  cr_assert_eq(sk_saga_get_json(eng, id, &json), SK_OK);
  cJSON *v = cJSON_Parse(json);
  cr_assert_not_null(v);
  sk_free(json);
  return v;
}

static cJSON *events(const char *id, int64_t after) {
  char *json = NULL;
  cr_assert_eq(sk_saga_events_json(eng, id, after, &json), SK_OK);
  cJSON *v = cJSON_Parse(json);
  cr_assert(cJSON_IsArray(v), "%s", json);
  sk_free(json);
  return v;
}

/* The types of the saga's events as "A,B,C". */
static void event_types(const char *id, char *out, size_t len) {
  cJSON *evs = events(id, 0);
  out[0] = '\0';
  const cJSON *ev;
  cJSON_ArrayForEach(ev, evs) {
    size_t at = strlen(out);
    snprintf(out + at, len - at, "%s%s", at ? "," : "", jstr(ev, "type"));
  }
  cJSON_Delete(evs);
}

/* The k-th event of `type` (for `step`, or any if step < -1). */
static cJSON *find_event(cJSON *evs, const char *type, int step, int k) {
  cJSON *ev;
  cJSON_ArrayForEach(ev, evs) {
    if (strcmp(jstr(ev, "type"), type) != 0)
      continue;
    const cJSON *s = jget(ev, "step");
    if (step >= -1 && !(cJSON_IsNumber(s) && s->valueint == step))
      continue;
    if (k-- == 0)
      return ev;
  }
  return NULL;
}

static sk_retry fast_retry(int max_attempts) {
  sk_retry r;
  sk_retry_init(&r);
  r.max_attempts = max_attempts;
  r.initial_interval_ms = 10;
  r.backoff_coefficient = 1.0;
  r.max_interval_ms = 10;
  r.jitter = 0;
  return r;
}

/* ======================================================================== */

static behave b_a = {.output = "{\"y\": 42, \"z\": \"hi\"}"};
static behave b_b = {.output = "{\"b\": true}"};
static behave b_c = {.output = NULL};

Test(sdk_flow, completes_and_passes_outputs_through_templates) {
  open_engine();
  reg_task("t.a", &b_a);
  reg_task("t.b", &b_b);
  reg_task("t.c", &b_c);
  sk_workflow *wf = wf_new("flow");
  OK(sk_workflow_add_step(wf, "a", "t.a"));
  OK(sk_workflow_step_input(
      wf, "a",
      "{\"x\": \"${input.a}\", \"id\": \"${saga.id}\", "
      "\"att\": \"${saga.attempt}\", \"deep\": \"${input.obj.k}\", "
      "\"item\": \"${input.obj.k.1}\", \"missing\": \"${input.nope}\", "
      "\"text\": \"saga ${saga.id} try ${saga.attempt}\"}"));
  OK(sk_workflow_add_step(wf, "b", "t.b"));
  OK(sk_workflow_step_input(wf, "b",
                            "{\"from_a\": \"${steps.a.output.y}\", "
                            "\"s\": \"pre-${steps.a.output.z}-post\", "
                            "\"whole\": \"${steps.a.output}\", "
                            "\"lit\": [1, {\"k\": null}]}"));
  OK(sk_workflow_add_step(wf, "c", "t.c"));
  reg_wf(wf);
  OK(sk_engine_start(eng));

  const char *input = "{\"a\": \"A\", \"obj\": {\"k\": [1, 2]}}";
  char id[SK_ID_LEN];
  int64_t t0 = wall_ms();
  start("flow", input, id);
  expect_status(id, SK_STATUS_COMPLETED);

  call a, b, c;
  cr_assert(find_call("a", 0, 0, &a));
  cr_assert(find_call("b", 0, 0, &b));
  cr_assert(find_call("c", 0, 0, &c));
  cr_expect_eq(count_calls(NULL, -1), 3, "each step ran once");
  char want[1024];
  snprintf(want, sizeof(want),
           "{\"x\": \"A\", \"id\": \"%s\", \"att\": 1, \"deep\": [1, 2], "
           "\"item\": 2, \"missing\": null, \"text\": \"saga %s try 1\"}",
           id, id);
  expect_json(a.input, want, "input of a");
  expect_json(b.input,
              "{\"from_a\": 42, \"s\": \"pre-hi-post\", "
              "\"whole\": {\"y\": 42, \"z\": \"hi\"}, "
              "\"lit\": [1, {\"k\": null}]}",
              "input of b");
  expect_json(c.input, input, "input of c (the saga input by default)");

  /* What else each handler was told. */
  const call *all[3] = {&a, &b, &c};
  const char *names[3] = {"a", "b", "c"};
  const char *types[3] = {"t.a", "t.b", "t.c"};
  for (int i = 0; i < 3; i++) {
    char key[300];
    snprintf(key, sizeof(key), "%s:%s:fwd", id, names[i]);
    cr_expect_str_eq(all[i]->saga, id);
    cr_expect_str_eq(all[i]->workflow, "flow");
    cr_expect_str_eq(all[i]->type, types[i]);
    cr_expect_str_eq(all[i]->key, key);
    cr_expect_eq(all[i]->attempt, 1);
    cr_expect_not(all[i]->comp);
    /* deadline = start + the default step timeout (30 s) */
    cr_expect_geq(all[i]->deadline_ms, t0 + 29000);
    cr_expect_leq(all[i]->deadline_ms, all[i]->wall_start + 30000 + 1000);
  }
  cr_expect_leq(a.end, b.start, "steps overlap");
  cr_expect_leq(b.end, c.start, "steps overlap");

  cJSON *v = view(id);
  cr_expect_str_eq(jstr(v, "status"), "completed");
  cr_expect_str_eq(jstr(v, "workflow"), "flow");
  cr_expect_eq((int)jnum(v, "version"), 1);
  cr_expect_str_eq(jstr(v, "id"), id);
  char *out = cJSON_PrintUnformatted(jget(v, "output"));
  expect_json(out,
              "{\"a\": {\"y\": 42, \"z\": \"hi\"}, \"b\": {\"b\": true}, "
              "\"c\": null}",
              "saga output");
  free(out);
  char *in = cJSON_PrintUnformatted(jget(v, "input"));
  expect_json(in, input, "saga input in the view");
  free(in);
  for (int i = 0; i < 3; i++) {
    char p[32];
    snprintf(p, sizeof(p), "steps.%d.status", i);
    cr_expect_str_eq(jstr(v, p), "completed");
    snprintf(p, sizeof(p), "steps.%d.name", i);
    cr_expect_str_eq(jstr(v, p), names[i]);
  }
  cJSON_Delete(v);
  char types_seen[1024];
  event_types(id, types_seen, sizeof(types_seen));
  cr_expect_str_eq(types_seen,
                   "SagaStarted,StepScheduled,StepCompleted,StepScheduled,"
                   "StepCompleted,StepScheduled,StepCompleted,SagaCompleted");
  cr_expect_eq(pgtest_scalar(ci, "SELECT count(*) FROM tasks"), 0);
}

static behave b_flaky = {
    .fail_attempts = 2, .fail_type = "Busy", .output = "{\"done\": 1}"};

Test(sdk_flow, retries_back_off_with_a_stable_idempotency_key) {
  open_engine();
  reg_task("t.flaky", &b_flaky);
  sk_workflow *wf = wf_new("retry");
  OK(sk_workflow_add_step(wf, "r", "t.flaky"));
  OK(sk_workflow_step_input(wf, "r", "{\"att\": \"${saga.attempt}\"}"));
  sk_retry r;
  sk_retry_init(&r);
  r.max_attempts = 5;
  r.initial_interval_ms = 60;
  r.backoff_coefficient = 2.0;
  r.max_interval_ms = 1000;
  r.jitter = 0;
  OK(sk_workflow_step_retry(wf, "r", &r));
  reg_wf(wf);
  OK(sk_engine_start(eng));
  char id[SK_ID_LEN];
  start("retry", "{}", id);
  expect_status(id, SK_STATUS_COMPLETED);

  cr_assert_eq(count_calls("r", 0), 3);
  call c[3];
  char key[300];
  snprintf(key, sizeof(key), "%s:r:fwd", id);
  for (int i = 0; i < 3; i++) {
    cr_assert(find_call("r", 0, i, &c[i]));
    cr_expect_eq(c[i].attempt, i + 1, "call %d was attempt %d", i,
                 c[i].attempt);
    cr_expect_str_eq(c[i].key, key, "the key changed between attempts");
    char want[32];
    snprintf(want, sizeof(want), "{\"att\": %d}", i + 1);
    expect_json(c[i].input, want, "${saga.attempt}");
  }
  /* Backoff 60 ms, then 120 ms (no jitter). */
  cr_expect_geq(c[1].start - c[0].end, 55, "first backoff %lld ms",
                (long long)(c[1].start - c[0].end));
  cr_expect_geq(c[2].start - c[1].end, 115, "second backoff %lld ms",
                (long long)(c[2].start - c[1].end));

  cJSON *evs = events(id, 0);
  for (int k = 0; k < 2; k++) {
    cJSON *f = find_event(evs, "StepFailed", 0, k);
    cr_assert_not_null(f);
    cr_expect_eq((int)jnum(f, "attempt"), k + 1);
    cr_expect_str_eq(jstr(f, "payload.error.type"), "Busy");
    cr_expect(cJSON_IsTrue(jget(f, "payload.error.retryable")));
    cr_expect(cJSON_IsFalse(jget(f, "payload.final")));
    cJSON *rs = find_event(evs, "RetryScheduled", 0, k);
    cr_assert_not_null(rs);
    cr_expect_eq((int)jnum(rs, "attempt"), k + 2);
    cr_expect_str_eq(jstr(rs, "payload.kind"), "fwd");
    cr_expect_eq((int)jnum(rs, "payload.delay_ms"), 60 << k);
  }
  cJSON *done = find_event(evs, "StepCompleted", 0, 0);
  cr_assert_not_null(done);
  cr_expect_eq((int)jnum(done, "attempt"), 3);
  cr_expect_eq((int)jnum(done, "payload.output.done"), 1);
  cJSON_Delete(evs);
  cJSON *v = view(id);
  cr_expect_eq((int)jnum(v, "steps.0.attempts"), 3);
  cJSON_Delete(v);
}

static behave b_listed = {.always_fail = true, .fail_type = "Fatal"};
static behave b_fatal = {
    .always_fail = true, .fail_type = "Nope", .fatal = true};
static behave b_undo = {.output = "{\"undone\": true}"};
static behave b_ok = {.output = "{\"ok\": 1}"};

Test(sdk_flow, errors_that_must_not_be_retried_fail_at_once) {
  open_engine();
  reg_task("t.listed", &b_listed);
  reg_task("t.fatal", &b_fatal);
  reg_task("t.ok", &b_ok);
  reg_task("t.undo", &b_undo);
  /* A type named in non_retryable_errors (workflow default), though the
   * handler says retryable. */
  sk_workflow *wf = wf_new("listed");
  sk_retry r = fast_retry(5);
  const char *never[] = {"Other", "Fatal"};
  r.non_retryable_errors = never;
  r.n_non_retryable = 2;
  OK(sk_workflow_set_default_retry(wf, &r));
  OK(sk_workflow_add_step(wf, "first", "t.ok"));
  OK(sk_workflow_step_compensate(wf, "first", "t.undo", NULL));
  OK(sk_workflow_add_step(wf, "s", "t.listed"));
  reg_wf(wf);
  /* retryable=false from the handler, with attempts to spare. */
  wf = wf_new("fatal");
  sk_retry r2 = fast_retry(5);
  OK(sk_workflow_add_step(wf, "s", "t.fatal"));
  OK(sk_workflow_step_retry(wf, "s", &r2));
  reg_wf(wf);
  OK(sk_engine_start(eng));

  char id1[SK_ID_LEN], id2[SK_ID_LEN];
  start("listed", "{}", id1);
  start("fatal", "{}", id2);
  expect_status(id1, SK_STATUS_COMPENSATED);
  expect_status(id2, SK_STATUS_COMPENSATED);
  cr_expect_eq(count_calls("s", 0), 2, "one attempt each");
  const char *ids[2] = {id1, id2};
  const char *types[2] = {"Fatal", "Nope"};
  for (int i = 0; i < 2; i++) {
    cJSON *v = view(ids[i]);
    int s = i == 0 ? 1 : 0;
    char p[64];
    snprintf(p, sizeof(p), "steps.%d.attempts", s);
    cr_expect_eq((int)jnum(v, p), 1);
    snprintf(p, sizeof(p), "steps.%d.status", s);
    cr_expect_str_eq(jstr(v, p), "failed");
    snprintf(p, sizeof(p), "steps.%d.error.type", s);
    cr_expect_str_eq(jstr(v, p), types[i]);
    cr_expect_str_eq(jstr(v, "error.type"), types[i]);
    cJSON_Delete(v);
    cJSON *evs = events(ids[i], 0);
    cr_expect_null(find_event(evs, "RetryScheduled", -2, 0));
    cJSON *f = find_event(evs, "StepFailed", s, 0);
    cr_assert_not_null(f);
    cr_expect(cJSON_IsTrue(jget(f, "payload.final")));
    cJSON_Delete(evs);
  }
  /* The completed first step of "listed" was undone. */
  cr_expect_eq(count_calls("first", 1), 1);
}

static behave b_always = {.always_fail = true, .fail_type = "Down"};

/* Builds a, b (each with a compensation t.undo, default input) and c that
 * always fails; c has a compensation too when comp_c. */
static void build_three(const char *name, bool comp_c) {
  sk_workflow *wf = wf_new(name);
  OK(sk_workflow_add_step(wf, "a", "t.a"));
  OK(sk_workflow_step_compensate(wf, "a", "t.undo", NULL));
  OK(sk_workflow_add_step(wf, "b", "t.b"));
  OK(sk_workflow_step_compensate(wf, "b", "t.undo", NULL));
  OK(sk_workflow_add_step(wf, "c", "t.always"));
  sk_retry r = fast_retry(3);
  OK(sk_workflow_step_retry(wf, "c", &r));
  if (comp_c) {
    OK(sk_workflow_step_compensate(wf, "c", "t.undo",
                                   "{\"c\": \"${steps.c.output}\", "
                                   "\"b\": \"${steps.b.output.b}\"}"));
    OK(sk_workflow_step_compensate_on_failure(wf, "c", true));
  }
  reg_wf(wf);
}

Test(sdk_flow, exhausted_attempts_compensate_in_reverse_order) {
  open_engine();
  reg_task("t.a", &b_a);
  reg_task("t.b", &b_b);
  reg_task("t.always", &b_always);
  reg_task("t.undo", &b_undo);
  build_three("three", false);
  OK(sk_engine_start(eng));
  const char *input = "{\"order\": 7}";
  char id[SK_ID_LEN];
  start("three", input, id);
  expect_status(id, SK_STATUS_COMPENSATED);

  cr_expect_eq(count_calls("c", 0), 3, "max_attempts 3");
  cr_assert_eq(count_calls(NULL, 1), 2, "a and b compensated, c not");
  call first, second;
  cr_assert(find_call(NULL, 1, 0, &first));
  cr_assert(find_call(NULL, 1, 1, &second));
  cr_expect_str_eq(first.step, "b", "newest first");
  cr_expect_str_eq(second.step, "a");
  cr_expect_leq(first.end, second.start);
  char key[300];
  snprintf(key, sizeof(key), "%s:b:comp", id);
  cr_expect_str_eq(first.key, key);
  cr_expect(first.comp);
  cr_expect_str_eq(first.type, "t.undo");
  /* The default compensation input: {"input": saga input, "output": …}. */
  expect_json(first.input,
              "{\"input\": {\"order\": 7}, \"output\": {\"b\": true}}",
              "compensation input of b");
  expect_json(second.input,
              "{\"input\": {\"order\": 7}, "
              "\"output\": {\"y\": 42, \"z\": \"hi\"}}",
              "compensation input of a");
  call c_last;
  cr_assert(find_call("c", 0, 2, &c_last));
  cr_expect_leq(c_last.end, first.start, "compensation before the failure");

  cJSON *v = view(id);
  cr_expect_str_eq(jstr(v, "steps.0.status"), "compensated");
  cr_expect_str_eq(jstr(v, "steps.1.status"), "compensated");
  cr_expect_str_eq(jstr(v, "steps.2.status"), "failed");
  cr_expect_str_eq(jstr(v, "steps.2.error.type"), "Down");
  cr_expect_eq((int)jnum(v, "steps.2.attempts"), 3);
  cr_expect_str_eq(jstr(v, "error.type"), "Down");
  cJSON_Delete(v);
  char types[2048];
  event_types(id, types, sizeof(types));
  cr_expect(strstr(types, "StepFailed,CompensationStarted,"
                          "CompensationScheduled,CompensationCompleted,"
                          "CompensationScheduled,CompensationCompleted,"
                          "SagaCompensated") != NULL,
            "%s", types);
  cJSON *evs = events(id, 0);
  cJSON *cs = find_event(evs, "CompensationScheduled", -2, 0);
  cr_assert_not_null(cs);
  cr_expect_eq((int)jnum(cs, "step"), 1);
  cs = find_event(evs, "CompensationScheduled", -2, 1);
  cr_expect_eq((int)jnum(cs, "step"), 0);
  cJSON *start_ev = find_event(evs, "CompensationStarted", -2, 0);
  cr_expect_str_eq(jstr(start_ev, "payload.reason.type"), "Down");
  cJSON_Delete(evs);
}

Test(sdk_flow, compensate_on_failure_undoes_the_failing_step_first) {
  open_engine();
  reg_task("t.a", &b_a);
  reg_task("t.b", &b_b);
  reg_task("t.always", &b_always);
  reg_task("t.undo", &b_undo);
  build_three("three_cof", true);
  OK(sk_engine_start(eng));
  char id[SK_ID_LEN];
  start("three_cof", "{}", id);
  expect_status(id, SK_STATUS_COMPENSATED);
  cr_assert_eq(count_calls(NULL, 1), 3);
  const char *order[3] = {"c", "b", "a"};
  for (int i = 0; i < 3; i++) {
    call c;
    cr_assert(find_call(NULL, 1, i, &c));
    cr_expect_str_eq(c.step, order[i], "compensation %d", i);
  }
  call cc;
  cr_assert(find_call("c", 1, 0, &cc));
  /* Its own template: a failed step has no output (null). */
  expect_json(cc.input, "{\"c\": null, \"b\": true}", "input of c's undo");
  cJSON *v = view(id);
  cr_expect_str_eq(jstr(v, "steps.2.status"), "compensated");
  cJSON_Delete(v);
}

Test(sdk_flow, on_failure_pause_stops_in_paused_and_cancel_compensates) {
  open_engine();
  reg_task("t.a", &b_a);
  reg_task("t.b", &b_b);
  reg_task("t.always", &b_always);
  reg_task("t.undo", &b_undo);
  sk_workflow *wf = wf_new("pausing");
  OK(sk_workflow_set_on_failure(wf, SK_ON_FAILURE_PAUSE));
  OK(sk_workflow_add_step(wf, "a", "t.a"));
  OK(sk_workflow_step_compensate(wf, "a", "t.undo", NULL));
  OK(sk_workflow_add_step(wf, "c", "t.always"));
  sk_retry r = fast_retry(2);
  OK(sk_workflow_step_retry(wf, "c", &r));
  reg_wf(wf);
  OK(sk_engine_start(eng));
  char id[SK_ID_LEN];
  start("pausing", "{}", id);
  expect_status(id, SK_STATUS_PAUSED);
  cr_expect_eq(count_calls("c", 0), 2);
  cr_expect_eq(count_calls(NULL, 1), 0, "a paused saga compensates nothing");
  sk_status st;
  OK(sk_saga_status(eng, id, &st));
  cr_expect_eq(st, SK_STATUS_PAUSED);
  cJSON *v = view(id);
  cr_expect_str_eq(jstr(v, "status"), "paused");
  cr_expect_str_eq(jstr(v, "steps.0.status"), "completed");
  cr_expect_str_eq(jstr(v, "steps.1.status"), "failed");
  cJSON_Delete(v);
  char types[1024];
  event_types(id, types, sizeof(types));
  cr_expect(strstr(types, "StepFailed,SagaPaused") != NULL, "%s", types);
  /* Paused is settled but not finished: cancel undoes the completed step. */
  sk_error err;
  memset(&err, 0, sizeof(err));
  OK(sk_saga_cancel(eng, id, &err));
  expect_status(id, SK_STATUS_CANCELLED);
  cr_expect_eq(count_calls("a", 1), 1);
}

static behave b_slow = {
    .sleep_ms = 10000, .until_cancel = true, .output = "{\"slow\": true}"};

Test(sdk_flow, cancel_stops_a_running_step_and_compensates) {
  open_engine();
  reg_task("t.a", &b_a);
  reg_task("t.slow", &b_slow);
  reg_task("t.undo", &b_undo);
  sk_workflow *wf = wf_new("cancelme");
  OK(sk_workflow_add_step(wf, "a", "t.a"));
  OK(sk_workflow_step_compensate(wf, "a", "t.undo", NULL));
  OK(sk_workflow_add_step(wf, "slow", "t.slow"));
  OK(sk_workflow_step_compensate(wf, "slow", "t.undo", NULL));
  OK(sk_workflow_add_step(wf, "never", "t.a"));
  reg_wf(wf);
  OK(sk_engine_start(eng));
  char id[SK_ID_LEN];
  start("cancelme", "{}", id);
  cr_assert(wait_calls("slow", 0, 1, 5000), "the slow step never started");
  sk_status st;
  OK(sk_saga_status(eng, id, &st));
  cr_expect_eq(st, SK_STATUS_RUNNING);
  int64_t t_cancel = mono_ms();
  sk_error err;
  memset(&err, 0, sizeof(err));
  OK(sk_saga_cancel(eng, id, &err));
  OK(sk_saga_cancel(eng, id, &err)); /* a second request is harmless */
  expect_status(id, SK_STATUS_CANCELLED);

  call slow;
  cr_assert(find_call("slow", 0, 0, &slow));
  cr_expect(slow.saw_cancel, "the handler never saw sk_task_cancelled()");
  cr_expect_lt(slow.end - t_cancel, 3000, "cancel took %lld ms to arrive",
               (long long)(slow.end - t_cancel));
  cr_expect_eq(count_calls("slow", 0), 1, "a cancelled step is not retried");
  cr_expect_eq(count_calls("never", 0), 0);
  cr_expect_eq(count_calls("slow", 1), 0, "the unfinished step is not undone");
  cr_expect_eq(count_calls("a", 1), 1, "the completed step is undone");

  cJSON *v = view(id);
  cr_expect_str_eq(jstr(v, "status"), "cancelled");
  cr_expect(cJSON_IsTrue(jget(v, "cancel_requested")));
  cr_expect_str_eq(jstr(v, "steps.0.status"), "compensated");
  cr_expect_str_eq(jstr(v, "steps.2.status"), "skipped");
  cJSON_Delete(v);
  cJSON *evs = events(id, 0);
  cr_expect_not_null(find_event(evs, "CancelRequested", -2, 0));
  cr_expect_null(find_event(evs, "CancelRequested", -2, 1),
                 "the second cancel appended an event");
  cJSON *cs = find_event(evs, "CompensationStarted", -2, 0);
  cr_assert_not_null(cs);
  cr_expect_str_eq(jstr(cs, "payload.reason.type"), "Cancelled");
  cr_expect_not_null(find_event(evs, "SagaCancelled", -2, 0));
  cJSON_Delete(evs);
  /* Finished now: a further cancel is refused. */
  cr_expect_eq(sk_saga_cancel(eng, id, NULL), SK_ESTATE);
}

Test(sdk_flow, sleep_steps_wait_durably) {
  open_engine();
  reg_task("t.a", &b_a);
  reg_task("t.b", &b_b);
  sk_workflow *wf = wf_new("sleepy");
  OK(sk_workflow_add_step(wf, "a", "t.a"));
  OK(sk_workflow_add_sleep(wf, "pause", 400));
  OK(sk_workflow_add_step(wf, "b", "t.b"));
  reg_wf(wf);
  OK(sk_engine_start(eng));
  char id[SK_ID_LEN];
  start("sleepy", "{}", id);
  expect_status(id, SK_STATUS_COMPLETED);
  call a, b;
  cr_assert(find_call("a", 0, 0, &a));
  cr_assert(find_call("b", 0, 0, &b));
  cr_expect_geq(b.start - a.end, 390, "slept %lld ms",
                (long long)(b.start - a.end));
  cr_expect_lt(b.start - a.end, 5000);
  cr_expect_eq(count_calls("pause", -1), 0, "a sleep runs no handler");
  cJSON *evs = events(id, 0);
  cJSON *sched = find_event(evs, "StepScheduled", 1, 0);
  cJSON *done_a = find_event(evs, "StepCompleted", 0, 0);
  cr_assert_not_null(sched);
  cr_assert_not_null(done_a);
  cJSON *done = find_event(evs, "StepCompleted", 1, 0);
  cr_assert_not_null(done);
  cr_expect(cJSON_IsNull(jget(done, "payload.output")));
  cJSON_Delete(evs);
  cJSON *v = view(id);
  cr_expect_str_eq(jstr(v, "steps.1.status"), "completed");
  double avail = jnum(v, "steps.1.available_at_ms");
  double sched_ms = jnum(v, "steps.1.scheduled_ms");
  cr_expect_geq(avail - sched_ms, 400, "timer due %g ms after scheduling",
                avail - sched_ms);
  cJSON_Delete(v);
}

static behave b_hang_once = {.sleep_ms = 3000,
                             .sleep_attempts = 1,
                             .until_cancel = true,
                             .output = "{\"second\": true}"};

Test(sdk_flow, a_step_timeout_fails_the_attempt_and_a_retry_succeeds) {
  open_engine();
  reg_task("t.hang", &b_hang_once);
  sk_workflow *wf = wf_new("timeouts");
  OK(sk_workflow_add_step(wf, "t", "t.hang"));
  OK(sk_workflow_step_timeout(wf, "t", 200));
  sk_retry r = fast_retry(3);
  OK(sk_workflow_step_retry(wf, "t", &r));
  reg_wf(wf);
  OK(sk_engine_start(eng));
  char id[SK_ID_LEN];
  start("timeouts", "{}", id);
  expect_status(id, SK_STATUS_COMPLETED);
  cr_assert(wait_calls("t", 0, 2, 5000));
  call c1, c2;
  cr_assert(find_call("t", 0, 0, &c1));
  cr_assert(find_call("t", 0, 1, &c2));
  cr_expect_eq(c1.attempt, 1);
  cr_expect_eq(c2.attempt, 2);
  cr_expect_leq(c1.deadline_ms - c1.wall_start, 250,
                "deadline_ms does not reflect timeout_ms");
  cr_expect_geq(c2.start - c1.start, 190, "retried before the timeout");
  cr_expect_lt(c2.start - c1.start, 2000,
               "the retry waited for the hung attempt");
  cJSON *evs = events(id, 0);
  cJSON *f = find_event(evs, "StepFailed", 0, 0);
  cr_assert_not_null(f);
  cr_expect_eq((int)jnum(f, "attempt"), 1);
  cr_expect_str_eq(jstr(f, "payload.error.type"), "Timeout");
  cr_expect(cJSON_IsTrue(jget(f, "payload.error.retryable")));
  cr_expect(cJSON_IsFalse(jget(f, "payload.final")));
  cJSON *ok = find_event(evs, "StepCompleted", 0, 0);
  cr_assert_not_null(ok);
  cr_expect_eq((int)jnum(ok, "attempt"), 2);
  int n_events = cJSON_GetArraySize(evs);
  cJSON_Delete(evs);
  /* The hung attempt was told to stop, and its late result changes
   * nothing. */
  int64_t end = mono_ms() + 5000;
  while (mono_ms() < end) {
    call again;
    cr_assert(find_call("t", 0, 0, &again));
    if (again.end != 0) {
      c1 = again;
      break;
    }
    nap(5);
  }
  cr_expect(c1.saw_cancel, "the timed-out attempt was not cancelled");
  nap(100);
  evs = events(id, 0);
  cr_expect_eq(cJSON_GetArraySize(evs), n_events, "late result recorded");
  cJSON_Delete(evs);
  sk_status st;
  OK(sk_saga_status(eng, id, &st));
  cr_expect_eq(st, SK_STATUS_COMPLETED);
}

Test(sdk_flow, a_saga_deadline_fails_the_step_and_compensates) {
  open_engine();
  reg_task("t.a", &b_a);
  reg_task("t.slow", &b_slow);
  reg_task("t.undo", &b_undo);
  sk_workflow *wf = wf_new("deadline");
  OK(sk_workflow_set_timeout(wf, 600));
  OK(sk_workflow_add_step(wf, "a", "t.a"));
  OK(sk_workflow_step_compensate(wf, "a", "t.undo", NULL));
  OK(sk_workflow_add_step(wf, "slow", "t.slow"));
  reg_wf(wf);
  OK(sk_engine_start(eng));
  char id[SK_ID_LEN];
  int64_t t0 = mono_ms();
  start("deadline", "{}", id);
  expect_status(id, SK_STATUS_COMPENSATED);
  int64_t took = mono_ms() - t0;
  cr_expect_geq(took, 550, "settled after %lld ms", (long long)took);
  cr_expect_lt(took, 5000, "settled after %lld ms", (long long)took);
  call slow;
  cr_assert(find_call("slow", 0, 0, &slow));
  /* The attempt's own deadline is capped by the saga's. */
  cr_expect_leq(slow.deadline_ms - slow.wall_start, 650);
  cr_expect_eq(count_calls("a", 1), 1);
  cJSON *v = view(id);
  cr_expect_gt(jnum(v, "deadline_ms"), 0);
  cr_expect_str_eq(jstr(v, "steps.1.status"), "failed");
  cr_expect_str_eq(jstr(v, "steps.1.error.type"), "SagaTimeout");
  cr_expect_str_eq(jstr(v, "error.type"), "SagaTimeout");
  cr_expect_str_eq(jstr(v, "steps.0.status"), "compensated");
  cJSON_Delete(v);
}

Test(sdk_flow, starting_with_a_used_key_returns_the_first_saga) {
  open_engine();
  reg_task("t.ok", &b_ok);
  sk_workflow *wf = wf_new("idem");
  OK(sk_workflow_add_step(wf, "s", "t.ok"));
  reg_wf(wf);
  wf = wf_new("idem2");
  OK(sk_workflow_add_step(wf, "s", "t.ok"));
  reg_wf(wf);
  OK(sk_engine_start(eng));
  sk_run_options ro = {.version = 0, .idempotency_key = "order-1001"};
  char id1[SK_ID_LEN], id2[SK_ID_LEN], id3[SK_ID_LEN], id4[SK_ID_LEN];
  bool existed = true;
  sk_error err;
  memset(&err, 0, sizeof(err));
  OK(sk_run_start(eng, "idem", "{\"n\": 1}", &ro, id1, &existed, &err));
  cr_expect_not(existed);
  existed = false;
  /* Same key, different input: the first saga, nothing new. */
  OK(sk_run_start(eng, "idem", "{\"n\": 2}", &ro, id2, &existed, &err));
  cr_expect(existed);
  cr_expect_str_eq(id2, id1);
  expect_status(id1, SK_STATUS_COMPLETED);
  /* Still the same after it finished. */
  OK(sk_run_start(eng, "idem", NULL, &ro, id3, &existed, &err));
  cr_expect(existed);
  cr_expect_str_eq(id3, id1);
  cr_expect_eq(pgtest_scalar(ci, "SELECT count(*) FROM sagas "
                                 "WHERE workflow = 'idem'"),
               1);
  cr_expect_eq(count_calls("s", 0), 1, "the step ran once");
  cJSON *v = view(id1);
  cr_expect_eq((int)jnum(v, "input.n"), 1);
  cr_expect_str_eq(jstr(v, "idempotency_key"), "order-1001");
  cJSON_Delete(v);
  /* Keys are per workflow. */
  OK(sk_run_start(eng, "idem2", NULL, &ro, id4, &existed, &err));
  cr_expect_not(existed);
  cr_expect_str_neq(id4, id1);
  expect_status(id4, SK_STATUS_COMPLETED);
  cr_expect_eq(pgtest_scalar(ci, "SELECT count(*) FROM sagas"), 2);
}

typedef struct racer {
  char id[SK_ID_LEN];
  bool existed;
  int rc;
} racer;

static void *race_start(void *arg) {
  racer *r = arg;
  sk_run_options ro = {.idempotency_key = "same-key"};
  r->rc = sk_run_start(eng, "race", "{}", &ro, r->id, &r->existed, NULL);
  return NULL;
}

Test(sdk_flow, concurrent_starts_with_one_key_make_one_saga) {
  open_engine();
  reg_task("t.ok", &b_ok);
  sk_workflow *wf = wf_new("race");
  OK(sk_workflow_add_step(wf, "s", "t.ok"));
  reg_wf(wf);
  OK(sk_engine_start(eng));
  enum { N = 6 };
  pthread_t th[N];
  racer rs[N];
  memset(rs, 0, sizeof(rs));
  for (int i = 0; i < N; i++)
    cr_assert_eq(pthread_create(&th[i], NULL, race_start, &rs[i]), 0);
  for (int i = 0; i < N; i++)
    pthread_join(th[i], NULL);
  int fresh = 0;
  for (int i = 0; i < N; i++) {
    cr_expect_eq(rs[i].rc, SK_OK, "start %d: %s", i, sk_err_name(rs[i].rc));
    cr_expect_str_eq(rs[i].id, rs[0].id, "start %d got another saga", i);
    fresh += !rs[i].existed;
  }
  cr_expect_eq(fresh, 1, "%d starts said they created the saga", fresh);
  expect_status(rs[0].id, SK_STATUS_COMPLETED);
  cr_expect_eq(pgtest_scalar(ci, "SELECT count(*) FROM sagas"), 1);
  cr_expect_eq(count_calls("s", 0), 1);
}

Test(sdk_flow, events_after_seq_page_through_the_history) {
  open_engine();
  reg_task("t.a", &b_a);
  reg_task("t.b", &b_b);
  sk_workflow *wf = wf_new("history");
  OK(sk_workflow_add_step(wf, "a", "t.a"));
  OK(sk_workflow_add_step(wf, "b", "t.b"));
  reg_wf(wf);
  OK(sk_engine_start(eng));
  char id[SK_ID_LEN];
  start("history", "{\"k\": \"v\"}", id);
  expect_status(id, SK_STATUS_COMPLETED);
  cJSON *all = events(id, 0);
  int n = cJSON_GetArraySize(all);
  cr_assert_eq(n, 6, "events: %d", n);
  for (int i = 0; i < n; i++) {
    cJSON *ev = cJSON_GetArrayItem(all, i);
    cr_expect_eq((int)jnum(ev, "seq"), i + 1, "seq not contiguous");
    cr_expect(cJSON_IsObject(jget(ev, "payload")));
    cr_expect_not_null(jget(ev, "created_at"));
  }
  cJSON *first = cJSON_GetArrayItem(all, 0);
  cr_expect_str_eq(jstr(first, "type"), "SagaStarted");
  cr_expect(cJSON_IsNull(jget(first, "step")), "saga events have no step");
  cr_expect(cJSON_IsNull(jget(first, "attempt")));
  cr_expect_str_eq(jstr(first, "payload.id"), id);
  cr_expect_str_eq(jstr(first, "payload.workflow"), "history");
  cr_expect_str_eq(jstr(first, "payload.steps.1"), "b");
  cr_expect_str_eq(jstr(first, "payload.input.k"), "v");
  cr_expect(cJSON_IsNull(jget(first, "payload.idempotency_key")));
  cJSON *sched = cJSON_GetArrayItem(all, 1);
  cr_expect_str_eq(jstr(sched, "type"), "StepScheduled");
  cr_expect_eq((int)jnum(sched, "step"), 0);
  cr_expect_eq((int)jnum(sched, "attempt"), 1);
  cr_expect(cJSON_IsNumber(jget(sched, "payload.available_at_ms")));
  cJSON *last = cJSON_GetArrayItem(all, n - 1);
  cr_expect_str_eq(jstr(last, "type"), "SagaCompleted");
  cr_expect_eq((int)jnum(last, "payload.output.a.y"), 42);

  cJSON *tail = events(id, 2);
  cr_assert_eq(cJSON_GetArraySize(tail), n - 2);
  cr_expect_eq((int)jnum(cJSON_GetArrayItem(tail, 0), "seq"), 3);
  char *t1 = cJSON_PrintUnformatted(cJSON_GetArrayItem(tail, 0));
  char *t2 = cJSON_PrintUnformatted(cJSON_GetArrayItem(all, 2));
  cr_expect_str_eq(t1, t2, "a page differs from the full history");
  free(t1);
  free(t2);
  cJSON_Delete(tail);
  tail = events(id, n - 1);
  cr_expect_eq(cJSON_GetArraySize(tail), 1);
  cJSON_Delete(tail);
  tail = events(id, n);
  cr_expect_eq(cJSON_GetArraySize(tail), 0);
  cJSON_Delete(tail);
  tail = events(id, 1000000);
  cr_expect_eq(cJSON_GetArraySize(tail), 0);
  cJSON_Delete(tail);
  cJSON_Delete(all);
  cJSON *v = view(id);
  cr_expect_eq((int)jnum(v, "last_seq"), n);
  cJSON_Delete(v);
}

static behave b_narrow = {.sleep_ms = 80, .output = "{}"};
static behave b_wide = {.sleep_ms = 150, .output = "{}"};
static behave b_quick = {.output = "{}"};

Test(sdk_flow, a_bulkhead_of_one_never_runs_two_steps_at_once) {
  open_engine();
  OK(sk_engine_add_bulkhead(eng, "narrow", 1));
  OK(sk_engine_add_bulkhead(eng, "wide", 4));
  reg_task("t.narrow", &b_narrow);
  reg_task("t.wide", &b_wide);
  reg_task("t.quick", &b_quick);
  sk_workflow *wf = wf_new("bh");
  OK(sk_workflow_add_step(wf, "n1", "t.narrow"));
  OK(sk_workflow_step_bulkhead(wf, "n1", "narrow"));
  OK(sk_workflow_add_step(wf, "n2", "t.narrow"));
  OK(sk_workflow_step_bulkhead(wf, "n2", "narrow"));
  reg_wf(wf);
  wf = wf_new("bh_wide");
  OK(sk_workflow_add_step(wf, "w", "t.wide"));
  OK(sk_workflow_step_bulkhead(wf, "w", "wide"));
  reg_wf(wf);
  wf = wf_new("bh_default");
  OK(sk_workflow_add_step(wf, "q", "t.quick"));
  reg_wf(wf);
  OK(sk_engine_start(eng));
  enum { N = 4 };
  char ids[N][SK_ID_LEN], wide[3][SK_ID_LEN], quick[SK_ID_LEN];
  for (int i = 0; i < N; i++)
    start("bh", "{}", ids[i]);
  for (int i = 0; i < 3; i++)
    start("bh_wide", "{}", wide[i]);
  /* The default bulkhead is not held up by the narrow one's queue. */
  start("bh_default", "{}", quick);
  expect_status(quick, SK_STATUS_COMPLETED);
  int narrow_done = 0;
  for (int i = 0; i < N; i++) {
    sk_status st;
    OK(sk_saga_status(eng, ids[i], &st));
    narrow_done += st == SK_STATUS_COMPLETED;
  }
  cr_expect_lt(narrow_done, N, "the default bulkhead waited for narrow");
  for (int i = 0; i < N; i++)
    expect_status(ids[i], SK_STATUS_COMPLETED);
  for (int i = 0; i < 3; i++)
    expect_status(wide[i], SK_STATUS_COMPLETED);
  cr_expect_eq(count_calls(NULL, 0), 2 * N + 3 + 1);
  cr_expect_eq(atomic_load(&b_narrow.max_active), 1,
               "%d steps of the narrow bulkhead overlapped",
               atomic_load(&b_narrow.max_active));
  /* The measurement can see overlap where it is allowed. */
  cr_expect_geq(atomic_load(&b_wide.max_active), 2);
  /* And from the recorded intervals: no two narrow calls overlap. */
  call c[2 * N];
  for (int i = 0; i < 2 * N; i++)
    cr_assert(find_call(i % 2 ? "n2" : "n1", 0, i / 2, &c[i]));
  for (int i = 0; i < 2 * N; i++)
    for (int k = i + 1; k < 2 * N; k++)
      cr_expect(c[i].end <= c[k].start || c[k].end <= c[i].start,
                "narrow calls %d and %d overlap", i, k);
}

/* Calls 1 and 2 (the first attempts of two sagas) meet, then fail with a
 * retryable error; later calls work for 150 ms and succeed. */
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_arrived;

static int h_breaker(const sk_task *t, sk_task_result *r, void *ud) {
  (void)ud;
  int idx = rec_begin(t);
  pthread_mutex_lock(&gate_mu);
  int me = ++gate_arrived;
  pthread_cond_broadcast(&gate_cv);
  if (me <= 2) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 3;
    while (gate_arrived < 2 &&
           pthread_cond_timedwait(&gate_cv, &gate_mu, &ts) == 0)
      ;
  }
  pthread_mutex_unlock(&gate_mu);
  int rc;
  if (me <= 2) {
    rc = sk_result_error(r, "Down", "dependency unavailable", true);
  } else {
    nap(150);
    rc = sk_result_ok(r, "{\"up\": true}");
  }
  rec_end(idx, false);
  return rc;
}

Test(sdk_flow, an_open_breaker_holds_attempts_then_lets_one_probe_through) {
  sk_engine_options o;
  sk_engine_options_init(&o);
  o.breaker_failure_threshold = 2;
  o.breaker_open_ms = 500;
  open_engine_with(&o);
  OK(sk_engine_register_task(eng, "t.dep", h_breaker, NULL));
  sk_workflow *wf = wf_new("breaker");
  OK(sk_workflow_add_step(wf, "s", "t.dep"));
  sk_retry r = fast_retry(10);
  OK(sk_workflow_step_retry(wf, "s", &r));
  reg_wf(wf);
  OK(sk_engine_start(eng));
  char a[SK_ID_LEN], b[SK_ID_LEN];
  start("breaker", "{}", a);
  start("breaker", "{}", b);
  expect_status(a, SK_STATUS_COMPLETED);
  expect_status(b, SK_STATUS_COMPLETED);

  cr_assert_eq(count_calls("s", 0), 4, "%d calls", count_calls("s", 0));
  call c[4];
  for (int i = 0; i < 4; i++)
    cr_assert(find_call("s", 0, i, &c[i]));
  cr_expect_eq(c[0].attempt, 1);
  cr_expect_eq(c[1].attempt, 1);
  cr_expect_str_neq(c[0].saga, c[1].saga);
  int64_t opened = c[0].end > c[1].end ? c[0].end : c[1].end;
  /* Retries were due 10 ms later, but nothing ran while the breaker was
   * open: the attempt counters were not burnt either. */
  cr_expect_geq(c[2].start - opened, 450, "probe after %lld ms",
                (long long)(c[2].start - opened));
  cr_expect_lt(c[2].start - opened, 2500, "probe after %lld ms",
               (long long)(c[2].start - opened));
  cr_expect_eq(c[2].attempt, 2);
  cr_expect_eq(c[3].attempt, 2);
  /* One probe: the other saga's attempt waited until it closed the
   * breaker. */
  cr_expect_geq(c[3].start, c[2].end, "a second attempt ran during the probe");
  cr_expect_str_neq(c[2].saga, c[3].saga);
  for (int k = 0; k < 2; k++) {
    cJSON *v = view(k == 0 ? a : b);
    cr_expect_eq((int)jnum(v, "steps.0.attempts"), 2);
    cJSON_Delete(v);
  }
}

/* skald.h: sk_engine_stop asks running handlers to cancel and waits for
 * them; sk_task_cancelled is true once "the engine is shutting down". */
static int h_until_stopped(const sk_task *t, sk_task_result *r, void *ud) {
  (void)ud;
  int idx = rec_begin(t);
  int64_t end = mono_ms() + 4000;
  bool saw = false;
  while (mono_ms() < end && !(saw = sk_task_cancelled(t)))
    nap(5);
  rec_end(idx, saw);
  return sk_result_error(r, "Interrupted", "the engine is stopping", true);
}

Test(sdk_flow, closing_the_engine_cancels_running_handlers) {
  open_engine();
  OK(sk_engine_register_task(eng, "t.long", h_until_stopped, NULL));
  sk_workflow *wf = wf_new("shutdown");
  OK(sk_workflow_add_step(wf, "s", "t.long"));
  reg_wf(wf);
  OK(sk_engine_start(eng));
  char id[SK_ID_LEN];
  start("shutdown", "{}", id);
  cr_assert(wait_calls("s", 0, 1, 5000));
  int64_t t0 = mono_ms();
  sk_engine_close(eng);
  eng = NULL;
  int64_t took = mono_ms() - t0;
  call c;
  cr_assert(find_call("s", 0, 0, &c));
  cr_expect(c.saw_cancel, "the handler was not asked to stop");
  cr_expect_lt(took, 2000, "closing waited %lld ms for the handler",
               (long long)took);
  /* Nothing is lost: the saga is still running, ready for another node. */
  char sql[256];
  snprintf(sql, sizeof(sql),
           "SELECT count(*) FROM sagas WHERE id = '%s' AND status = 'running'",
           id);
  cr_expect_eq(pgtest_scalar(ci, sql), 1);
  snprintf(sql, sizeof(sql), "SELECT count(*) FROM tasks WHERE saga_id = '%s'",
           id);
  cr_expect_eq(pgtest_scalar(ci, sql), 1);
}
