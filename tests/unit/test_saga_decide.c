/*
 * test_saga_decide.c — every transition of the saga decider, driven through
 * small definitions built in C. Each scenario applies the decisions to a
 * state (saga_apply) and, at the end, checks that folding the whole log
 * gives the same state (canonical JSON), so every decision here is also a
 * test that evolve accepts what the decider emits.
 */
#include <criterion/criterion.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "saga/saga.h"
#include "spec/def.h"

#define T0 1700000000000LL
#define SAGA_ID "6f1c2a4e-0000-4000-8000-000000000001"

/* ---- definitions ------------------------------------------------------------
 */

static def_workflow *wf_new(size_t n) {
  def_workflow *wf = def_workflow_new();
  cr_assert_not_null(wf);
  wf->name = strdup("wf");
  wf->version = 1;
  wf->steps = calloc(n ? n : 1, sizeof(def_step));
  wf->n_steps = n;
  return wf;
}

static def_step *task(def_workflow *wf, size_t i, const char *name,
                      const char *type) {
  def_step *s = &wf->steps[i];
  s->name = strdup(name);
  s->action.kind = DEF_KIND_TASK;
  s->action.task_type = strdup(type);
  return s;
}

static def_action *comp(def_step *s, const char *type) {
  s->compensate = calloc(1, sizeof(def_action));
  s->compensate->kind = DEF_KIND_TASK;
  s->compensate->task_type = strdup(type);
  return s->compensate;
}

static void retry_max(def_action *a, int max) {
  a->has_retry = true;
  a->retry.set |= DEF_RETRY_MAX_ATTEMPTS;
  a->retry.max_attempts = max;
}

static void no_jitter(def_action *a) {
  a->has_retry = true;
  a->retry.set |= DEF_RETRY_JITTER;
  a->retry.jitter = 0;
}

/* a, b, c, d: tasks t.a.. with compensations c.a.. on the steps in `comps`
 * (a string of step letters). */
static def_workflow *wf_chain(size_t n, const char *comps) {
  def_workflow *wf = wf_new(n);
  for (size_t i = 0; i < n; i++) {
    char name[2] = {(char)('a' + i), 0}, type[8], ctype[8];
    snprintf(type, sizeof(type), "t.%s", name);
    snprintf(ctype, sizeof(ctype), "c.%s", name);
    def_step *s = task(wf, i, name, type);
    if (strchr(comps, name[0]) != NULL)
      comp(s, ctype);
  }
  return wf;
}

/* ---- the harness
 * -------------------------------------------------------------- */

typedef struct run {
  def_workflow *wf;
  saga_state st;
  saga_rng rng;
  int64_t now;
  saga_decision d;
  saga_event *log;
  size_t n_log;
} run;

static void log_decision(run *r) {
  r->log = realloc(r->log, (r->n_log + r->d.n_events) * sizeof(saga_event));
  for (size_t i = 0; i < r->d.n_events; i++) {
    saga_event e = r->d.events[i];
    e.node = e.node ? strdup(e.node) : NULL;
    e.payload = strdup(e.payload);
    r->log[r->n_log++] = e;
  }
}

static void apply(run *r) {
  cr_assert_eq(saga_apply(&r->st, &r->d), SK_OK, "decision does not evolve");
  log_decision(r);
}

static void run_init(run *r, def_workflow *wf) {
  memset(r, 0, sizeof(*r));
  r->wf = wf;
  r->rng.s = 42;
  r->now = T0;
  saga_state_init(&r->st);
  saga_decision_init(&r->d);
}

static void start(run *r, const char *input) {
  saga_decision_clear(&r->d);
  int rc = saga_decide_start(r->wf, SAGA_ID, input, NULL, NULL, r->now, &r->rng,
                             &r->d);
  cr_assert_eq(rc, SK_OK, "start: %s", sk_err_name(rc));
  apply(r);
}

static int result(run *r, int step, task_kind kind, int attempt, bool ok,
                  const char *output_or_type, bool retryable) {
  saga_result res = {.step = step, .kind = kind, .attempt = attempt, .ok = ok};
  if (ok)
    res.output = output_or_type;
  else {
    res.err_type = output_or_type;
    res.err_message = "boom";
    res.err_retryable = retryable;
  }
  saga_decision_clear(&r->d);
  int rc =
      saga_decide_result(r->wf, &r->st, &res, "node-1", r->now, &r->rng, &r->d);
  if (rc == SK_OK)
    apply(r);
  return rc;
}

static void ok_fwd(run *r, int step, int attempt, const char *out) {
  cr_assert_eq(result(r, step, TASK_KIND_FWD, attempt, true, out, false),
               SK_OK);
}
static void fail_fwd(run *r, int step, int attempt, const char *type,
                     bool retryable) {
  cr_assert_eq(result(r, step, TASK_KIND_FWD, attempt, false, type, retryable),
               SK_OK);
}
static void ok_comp(run *r, int step, int attempt) {
  cr_assert_eq(result(r, step, TASK_KIND_COMP, attempt, true,
                      "{\"undone\":true}", false),
               SK_OK);
}
static void fail_comp(run *r, int step, int attempt, bool retryable) {
  cr_assert_eq(
      result(r, step, TASK_KIND_COMP, attempt, false, "Down", retryable),
      SK_OK);
}

static int cancel(run *r, const char *reason) {
  saga_decision_clear(&r->d);
  int rc = saga_decide_cancel(r->wf, &r->st, reason, "node-1", r->now, &r->rng,
                              &r->d);
  if (rc == SK_OK)
    apply(r);
  return rc;
}

static int replay(run *r, const char *from, const char *input) {
  saga_replay req = {.from_step = from, .step_input = input};
  saga_decision_clear(&r->d);
  int rc =
      saga_decide_replay(r->wf, &r->st, &req, "node-1", r->now, &r->rng, &r->d);
  if (rc == SK_OK)
    apply(r);
  return rc;
}

/* The one step a decision tells to stop, -1 if none. */
static int cancel_of(const saga_decision *d) {
  cr_assert_leq(d->n_cancel_steps, 1);
  return d->n_cancel_steps ? d->cancel_steps[0] : -1;
}

/* The event types of the last decision, "A,B,C". */
static const char *types(run *r) {
  static char s[1024];
  s[0] = 0;
  for (size_t i = 0; i < r->d.n_events; i++) {
    if (i)
      strcat(s, ",");
    strcat(s, saga_event_name(r->d.events[i].type));
  }
  return s;
}

static cJSON *payload(run *r, size_t i) {
  cr_assert_lt(i, r->d.n_events);
  cJSON *p = cJSON_Parse(r->d.events[i].payload);
  cr_assert_not_null(p);
  return p;
}

/* Compact text of payload field `key` of event i. */
static char *field(run *r, size_t i, const char *key) {
  cJSON *p = payload(r, i);
  cJSON *it = cJSON_GetObjectItemCaseSensitive(p, key);
  char *s = it ? cJSON_PrintUnformatted(it) : strdup("<absent>");
  cJSON_Delete(p);
  return s;
}

#define expect_field(r, i, key, want)                                          \
  do {                                                                         \
    char *got_ = field(r, i, key);                                             \
    cr_expect_str_eq(got_, want, "event %zu field %s", (size_t)(i), key);      \
    free(got_);                                                                \
  } while (0)

#define expect_types(r, want) cr_expect_str_eq(types(r), want)

static void run_finish(run *r) {
  saga_state folded;
  cr_assert_eq(saga_fold(r->log, r->n_log, &folded), SK_OK);
  char *a, *b;
  cr_assert_eq(saga_state_to_json(&r->st, &a), SK_OK);
  cr_assert_eq(saga_state_to_json(&folded, &b), SK_OK);
  cr_expect_str_eq(a, b, "fold differs from step-by-step apply");
  for (size_t i = 0; i < r->n_log; i++) {
    cr_expect_eq(r->log[i].seq, (int64_t)i + 1, "seq not contiguous");
    saga_event_clear(&r->log[i]);
  }
  free(a);
  free(b);
  free(r->log);
  saga_state_clear(&folded);
  saga_state_clear(&r->st);
  saga_decision_clear(&r->d);
  def_workflow_unref(r->wf);
}

/* ---- start
 * ------------------------------------------------------------------------- */

Test(decide_start, started_and_first_step_scheduled) {
  run r;
  run_init(&r, wf_chain(2, "a"));
  start(&r, "{\"amount\": 5}");
  expect_types(&r, "SagaStarted,StepScheduled");
  cr_expect_eq(r.d.events[0].seq, 1);
  cr_expect_eq(r.d.events[1].seq, 2);
  cr_expect_eq(r.d.events[0].ts_ms, T0);
  cr_expect_eq(r.d.events[0].step, -1);
  cr_expect_eq(r.d.events[1].step, 0);
  cr_expect_eq(r.d.events[1].attempt, 1);
  expect_field(&r, 0, "id", "\"" SAGA_ID "\"");
  expect_field(&r, 0, "workflow", "\"wf\"");
  expect_field(&r, 0, "version", "1");
  expect_field(&r, 0, "input", "{\"amount\":5}");
  expect_field(&r, 0, "steps", "[\"a\",\"b\"]");
  expect_field(&r, 0, "deadline_ms", "0");
  expect_field(&r, 0, "idempotency_key", "null");
  expect_field(&r, 0, "replay_of", "null");
  expect_field(&r, 1, "available_at_ms", "1700000000000");
  cr_assert_eq(r.d.n_tasks, 1);
  saga_task *t = &r.d.tasks[0];
  cr_expect_eq(t->step, 0);
  cr_expect_eq(t->kind, TASK_KIND_FWD);
  cr_expect_eq(t->attempt, 1);
  cr_expect_eq(t->action, DEF_KIND_TASK);
  cr_expect_str_eq(t->task_type, "t.a");
  cr_expect_str_eq(t->input, "{\"amount\":5}");
  cr_expect_str_eq(t->bulkhead, "default");
  cr_expect_eq(t->available_at_ms, T0);
  cr_expect_eq(t->timeout_ms, DEF_DEFAULT_TIMEOUT_MS);
  cr_expect_eq(cancel_of(&r.d), -1);
  cr_expect_str_eq(r.st.id, SAGA_ID);
  cr_expect_eq(r.st.status, SAGA_STATUS_RUNNING);
  cr_expect_eq(r.st.steps[0].status, STEP_STATUS_SCHEDULED);
  cr_expect_eq(r.st.steps[1].status, STEP_STATUS_PENDING);
  cr_expect_eq(r.st.created_ms, T0);
  run_finish(&r);
}

Test(decide_start, keys_and_replay_of_recorded) {
  def_workflow *wf = wf_chain(1, "");
  saga_state st;
  saga_state_init(&st);
  saga_decision d;
  saga_rng rng = {1};
  cr_assert_eq(
      saga_decide_start(wf, SAGA_ID, NULL, "k-1", "old-id", T0, &rng, &d),
      SK_OK);
  cr_assert_eq(saga_apply(&st, &d), SK_OK);
  cr_expect_str_eq(st.idempotency_key, "k-1");
  cr_expect_str_eq(st.replay_of, "old-id");
  cr_expect_str_eq(st.input, "{}");
  saga_decision_clear(&d);
  saga_state_clear(&st);
  def_workflow_unref(wf);
}

Test(decide_start, refuses_bad_input_and_unsupported_steps) {
  def_workflow *wf = wf_chain(2, "");
  saga_decision d;
  saga_rng rng = {1};
  cr_expect_eq(saga_decide_start(wf, SAGA_ID, "[1]", NULL, NULL, T0, &rng, &d),
               SK_EJSON);
  cr_expect_eq(d.n_events, 0);
  cr_expect_eq(saga_decide_start(wf, SAGA_ID, "{", NULL, NULL, T0, &rng, &d),
               SK_EJSON);
  cr_expect_eq(
      saga_decide_start(wf, SAGA_ID, "\"s\"", NULL, NULL, T0, &rng, &d),
      SK_EJSON);
  cr_expect_eq(saga_decide_start(NULL, SAGA_ID, "{}", NULL, NULL, T0, &rng, &d),
               SK_EINVAL);
  cr_expect_eq(saga_decide_start(wf, NULL, "{}", NULL, NULL, T0, &rng, &d),
               SK_EINVAL);
  /* a fallback must be a task or an http call */
  wf->steps[1].fallback = calloc(1, sizeof(def_action));
  wf->steps[1].fallback->kind = DEF_KIND_SLEEP;
  cr_expect_eq(saga_decide_start(wf, SAGA_ID, "{}", NULL, NULL, T0, &rng, &d),
               SK_ENOTSUP);
  cr_expect_eq(d.n_events, 0);
  def_action_clear(wf->steps[1].fallback);
  free(wf->steps[1].fallback);
  wf->steps[1].fallback = NULL;
  /* a parallel step without branches */
  wf->steps[1].action.kind = DEF_KIND_PARALLEL;
  cr_expect_eq(saga_decide_start(wf, SAGA_ID, "{}", NULL, NULL, T0, &rng, &d),
               SK_ENOTSUP);
  def_workflow_unref(wf);
}

Test(decide_start, no_steps_completes_at_once) {
  run r;
  run_init(&r, wf_new(0));
  start(&r, "{}");
  expect_types(&r, "SagaStarted,SagaCompleted");
  expect_field(&r, 1, "output", "{}");
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPLETED);
  run_finish(&r);
}

Test(decide_start, deadline_and_timeout_cap) {
  def_workflow *wf = wf_chain(1, "");
  wf->timeout_ms = 1000;
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  expect_field(&r, 0, "deadline_ms", "1700000001000");
  cr_expect_eq(r.st.deadline_ms, T0 + 1000);
  cr_expect_eq(r.d.tasks[0].timeout_ms, 1000);
  run_finish(&r);
}

Test(decide_start, step_resources_bulkhead_timeout) {
  def_workflow *wf = wf_chain(1, "a");
  wf->steps[0].bulkhead = strdup("gpu");
  wf->steps[0].gpus = 2;
  wf->steps[0].gpu_memory_mb = 8000;
  wf->steps[0].action.timeout_ms = 1234;
  wf->default_timeout_ms = 999;
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  saga_task *t = &r.d.tasks[0];
  cr_expect_str_eq(t->bulkhead, "gpu");
  cr_expect_eq(t->gpus, 2);
  cr_expect_eq(t->gpu_memory_mb, 8000);
  cr_expect_eq(t->timeout_ms, 1234);
  /* The compensation runs in the same bulkhead, without the GPUs, with the
   * workflow default timeout. */
  fail_fwd(&r, 0, 1, "Fatal", false);
  expect_types(&r, "StepFailed,CompensationStarted,SagaCompensated");
  run_finish(&r);

  wf = wf_chain(1, "a");
  wf->steps[0].bulkhead = strdup("gpu");
  wf->steps[0].gpus = 2;
  wf->steps[0].compensate_on_failure = true;
  wf->default_timeout_ms = 999;
  run_init(&r, wf);
  start(&r, "{}");
  fail_fwd(&r, 0, 1, "Fatal", false);
  expect_types(&r, "StepFailed,CompensationStarted,CompensationScheduled");
  t = &r.d.tasks[0];
  cr_expect_eq(t->kind, TASK_KIND_COMP);
  cr_expect_str_eq(t->task_type, "c.a");
  cr_expect_str_eq(t->bulkhead, "gpu");
  cr_expect_eq(t->gpus, 0);
  cr_expect_eq(t->timeout_ms, 999);
  run_finish(&r);
}

/* ---- templates, sleep, http
 * ---------------------------------------------------------- */

Test(decide_inputs, templates_render_saga_and_step_values) {
  def_workflow *wf = wf_chain(2, "");
  wf->steps[0].action.input_json =
      strdup("{\"x\":\"${input.a.b}\",\"id\":\"${saga.id}\",\"n\":\"${saga."
             "attempt}\"}");
  wf->steps[1].action.input_json = strdup(
      "{\"prev\":\"${steps.a.output.id}\",\"s\":\"id=${steps.a.output.id}\"}");
  run r;
  run_init(&r, wf);
  start(&r, "{\"a\":{\"b\":[1,2]}}");
  cr_expect_str_eq(r.d.tasks[0].input,
                   "{\"x\":[1,2],\"id\":\"" SAGA_ID "\",\"n\":1}");
  fail_fwd(&r, 0, 1, "Flaky", true);
  cr_expect_str_eq(r.d.tasks[0].input,
                   "{\"x\":[1,2],\"id\":\"" SAGA_ID "\",\"n\":2}");
  ok_fwd(&r, 0, 2, "{\"id\":77}");
  cr_expect_str_eq(r.d.tasks[0].input, "{\"prev\":77,\"s\":\"id=77\"}");
  run_finish(&r);
}

Test(decide_inputs, sleep_task) {
  def_workflow *wf = wf_chain(2, "");
  def_action_clear(&wf->steps[1].action);
  wf->steps[1].action.kind = DEF_KIND_SLEEP;
  wf->steps[1].action.sleep_ms = 5000;
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "1");
  expect_types(&r, "StepCompleted,StepScheduled");
  expect_field(&r, 1, "available_at_ms", "1700000005000");
  saga_task *t = &r.d.tasks[0];
  cr_expect_eq(t->action, DEF_KIND_SLEEP);
  cr_expect_str_eq(t->task_type, "");
  cr_expect_eq(t->available_at_ms, T0 + 5000);
  cr_expect_eq(r.st.steps[1].available_at_ms, T0 + 5000);
  r.now = T0 + 5000;
  ok_fwd(&r, 1, 1, NULL);
  expect_types(&r, "StepCompleted,SagaCompleted");
  expect_field(&r, 1, "output", "{\"a\":1,\"b\":null}");
  cr_expect_null(r.st.steps[1].output);
  run_finish(&r);
}

Test(decide_inputs, http_request_rendered) {
  def_workflow *wf = wf_chain(1, "");
  def_action *a = &wf->steps[0].action;
  def_action_clear(a);
  a->kind = DEF_KIND_HTTP;
  a->http.method = strdup("POST");
  a->http.url = strdup("http://127.0.0.1:9000/hotels/${input.city}");
  a->http.headers_json = strdup("{\"X-Saga\":\"${saga.id}\"}");
  a->http.body_json =
      strdup("{\"city\":\"${input.city}\",\"n\":\"${input.n}\"}");
  def_step *s = &wf->steps[0];
  s->compensate = calloc(1, sizeof(def_action));
  s->compensate->kind = DEF_KIND_HTTP;
  s->compensate->http.method = strdup("DELETE");
  s->compensate->http.url = strdup("${input.n}");
  s->compensate_on_failure = true;
  run r;
  run_init(&r, wf);
  start(&r, "{\"city\":\"oslo\",\"n\":3}");
  saga_task *t = &r.d.tasks[0];
  cr_expect_eq(t->action, DEF_KIND_HTTP);
  cr_expect_str_eq(t->task_type, "");
  cr_expect_str_eq(
      t->input,
      "{\"method\":\"POST\",\"url\":\"http://127.0.0.1:9000/hotels/oslo\","
      "\"headers\":{\"X-Saga\":\"" SAGA_ID "\"},"
      "\"body\":{\"city\":\"oslo\",\"n\":3}}");
  fail_fwd(&r, 0, 1, "HttpError", false);
  t = &r.d.tasks[0];
  cr_expect_eq(t->action, DEF_KIND_HTTP);
  /* A url that is one template of a number still becomes a string. */
  cr_expect_str_eq(
      t->input,
      "{\"method\":\"DELETE\",\"url\":\"3\",\"headers\":{},\"body\":null}");
  run_finish(&r);
}

Test(decide_inputs, default_compensation_input) {
  def_workflow *wf = wf_chain(2, "a");
  run r;
  run_init(&r, wf);
  start(&r, "{\"k\":1}");
  ok_fwd(&r, 0, 1, "{\"id\":\"x\"}");
  fail_fwd(&r, 1, 1, "Fatal", false);
  expect_types(&r, "StepFailed,CompensationStarted,CompensationScheduled");
  cr_expect_str_eq(r.d.tasks[0].input,
                   "{\"input\":{\"k\":1},\"output\":{\"id\":\"x\"}}");
  run_finish(&r);
}

Test(decide_inputs, compensation_template_sees_own_output) {
  def_workflow *wf = wf_chain(2, "a");
  wf->steps[0].compensate->input_json =
      strdup("{\"booking\":\"${steps.a.output.id}\"}");
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{\"id\":\"B-1\"}");
  fail_fwd(&r, 1, 1, "Fatal", false);
  cr_expect_str_eq(r.d.tasks[0].input, "{\"booking\":\"B-1\"}");
  fail_comp(&r, 0, 1, true);
  cr_expect_str_eq(r.d.tasks[0].input, "{\"booking\":\"B-1\"}");
  run_finish(&r);
}

Test(decide_inputs, template_error_on_first_step) {
  def_workflow *wf = wf_chain(1, "a");
  wf->steps[0].action.input_json = strdup("{\"x\":\"${nope}\"}");
  wf->steps[0].compensate_on_failure = true;
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  /* Never scheduled: fails at attempt 0, and nothing to compensate (not even
   * itself: it never ran). */
  expect_types(&r,
               "SagaStarted,StepFailed,CompensationStarted,SagaCompensated");
  cr_expect_eq(r.d.n_tasks, 0);
  cr_expect_eq(r.d.events[1].attempt, 0);
  cJSON *p = payload(&r, 1);
  cJSON *e = cJSON_GetObjectItem(p, "error");
  cr_expect_str_eq(cJSON_GetObjectItem(e, "type")->valuestring,
                   "TemplateError");
  cr_expect(cJSON_IsFalse(cJSON_GetObjectItem(e, "retryable")));
  cr_expect(cJSON_IsTrue(cJSON_GetObjectItem(p, "final")));
  cJSON_Delete(p);
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPENSATED);
  cr_expect_eq(r.st.steps[0].status, STEP_STATUS_FAILED);
  run_finish(&r);
}

Test(decide_inputs, template_error_on_next_step_compensates) {
  def_workflow *wf = wf_chain(2, "a");
  wf->steps[1].action.input_json = strdup("{\"x\":\"${steps.a.output\"}");
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  expect_types(
      &r, "StepCompleted,StepFailed,CompensationStarted,CompensationScheduled");
  cr_expect_eq(r.d.events[1].step, 1);
  cr_expect_eq(r.d.n_tasks, 1);
  cr_expect_eq(r.d.tasks[0].step, 0);
  ok_comp(&r, 0, 1);
  expect_types(&r, "CompensationCompleted,SagaCompensated");
  run_finish(&r);
}

Test(decide_inputs, template_error_in_compensation_fails_saga) {
  def_workflow *wf = wf_chain(2, "a");
  wf->steps[0].compensate->input_json = strdup("{\"x\":\"${bad.root}\"}");
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  fail_fwd(&r, 1, 1, "Fatal", false);
  expect_types(&r, "StepFailed,CompensationStarted,CompensationScheduled,"
                   "CompensationFailed,SagaFailed");
  cr_expect_eq(r.d.n_tasks, 0);
  cr_expect_eq(r.st.status, SAGA_STATUS_FAILED);
  cr_expect_eq(r.st.steps[0].status, STEP_STATUS_COMPENSATION_FAILED);
  run_finish(&r);
}

/* ---- forward
 * ------------------------------------------------------------------------- */

Test(decide_forward, happy_path_completes_with_outputs) {
  run r;
  run_init(&r, wf_chain(3, "abc"));
  start(&r, "{}");
  r.now += 10;
  ok_fwd(&r, 0, 1, "{\"id\": 1}");
  expect_types(&r, "StepCompleted,StepScheduled");
  expect_field(&r, 0, "output", "{\"id\":1}");
  expect_field(&r, 0, "by_fallback", "false");
  cr_expect_eq(r.d.events[0].seq, 3);
  cr_expect_str_eq(r.d.events[0].node, "node-1");
  cr_expect_eq(r.d.events[1].step, 1);
  cr_expect_eq(r.d.tasks[0].step, 1);
  cr_expect_eq(r.st.steps[0].finished_ms, T0 + 10);
  ok_fwd(&r, 1, 1, "\"two\"");
  ok_fwd(&r, 2, 1, "[3]");
  expect_types(&r, "StepCompleted,SagaCompleted");
  expect_field(&r, 1, "output", "{\"a\":{\"id\":1},\"b\":\"two\",\"c\":[3]}");
  cr_expect_eq(r.d.n_tasks, 0);
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPLETED);
  cr_expect_eq(r.st.phase, SAGA_PHASE_DONE);
  cr_expect_eq(r.st.cursor, -1);
  cr_expect_str_eq(r.st.output, "{\"a\":{\"id\":1},\"b\":\"two\",\"c\":[3]}");
  cr_expect_str_eq(r.st.steps[0].output, "{\"id\":1}");
  run_finish(&r);
}

Test(decide_forward, retry_then_success) {
  def_workflow *wf = wf_chain(1, "");
  no_jitter(&wf->steps[0].action);
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  fail_fwd(&r, 0, 1, "Flaky", true);
  expect_types(&r, "StepFailed,RetryScheduled");
  expect_field(&r, 0, "final", "false");
  expect_field(&r, 0, "error",
               "{\"type\":\"Flaky\",\"message\":\"boom\",\"retryable\":true}");
  cr_expect_eq(r.d.events[0].attempt, 1);
  cr_expect_eq(r.d.events[1].attempt, 2);
  expect_field(&r, 1, "kind", "\"fwd\"");
  expect_field(&r, 1, "delay_ms", "100");
  expect_field(&r, 1, "available_at_ms", "1700000000100");
  cr_assert_eq(r.d.n_tasks, 1);
  cr_expect_eq(r.d.tasks[0].attempt, 2);
  cr_expect_eq(r.d.tasks[0].available_at_ms, T0 + 100);
  cr_expect_eq(r.st.steps[0].status, STEP_STATUS_SCHEDULED);
  cr_expect_eq(r.st.steps[0].attempts, 2);
  cr_expect_eq(r.st.steps[0].scheduled_ms, T0);
  cr_expect_eq(r.st.steps[0].available_at_ms, T0 + 100);
  cr_expect_not_null(r.st.steps[0].error);
  fail_fwd(&r, 0, 2, "Flaky", true);
  expect_field(&r, 1, "delay_ms", "200");
  ok_fwd(&r, 0, 3, "{}");
  expect_types(&r, "StepCompleted,SagaCompleted");
  run_finish(&r);
}

Test(decide_forward, attempts_exhausted) {
  def_workflow *wf = wf_chain(2, "a");
  retry_max(&wf->steps[1].action, 2);
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  fail_fwd(&r, 1, 1, "Flaky", true);
  expect_types(&r, "StepFailed,RetryScheduled");
  fail_fwd(&r, 1, 2, "Flaky", true);
  expect_types(&r, "StepFailed,CompensationStarted,CompensationScheduled");
  expect_field(&r, 0, "final", "true");
  expect_field(&r, 1, "reason",
               "{\"type\":\"Flaky\",\"message\":\"boom\",\"retryable\":true}");
  cr_expect_eq(r.st.steps[1].status, STEP_STATUS_FAILED);
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPENSATING);
  cr_expect_eq(r.st.phase, SAGA_PHASE_COMPENSATING);
  cr_expect_str_eq(
      r.st.error,
      "{\"type\":\"Flaky\",\"message\":\"boom\",\"retryable\":true}");
  run_finish(&r);
}

Test(decide_forward, default_three_attempts) {
  run r;
  run_init(&r, wf_chain(1, ""));
  start(&r, "{}");
  fail_fwd(&r, 0, 1, "X", true);
  fail_fwd(&r, 0, 2, "X", true);
  fail_fwd(&r, 0, 3, "X", true);
  expect_types(&r, "StepFailed,CompensationStarted,SagaCompensated");
  run_finish(&r);
}

Test(decide_forward, non_retryable_types_and_flags) {
  const char *why[] = {"ValidationError", "Cancelled", "NotRetryable"};
  for (int k = 0; k < 3; k++) {
    def_workflow *wf = wf_chain(1, "");
    wf->has_default_retry = true;
    wf->default_retry.set = DEF_RETRY_NON_RETRYABLE | DEF_RETRY_MAX_ATTEMPTS;
    wf->default_retry.max_attempts = 10;
    wf->default_retry.non_retryable_errors = calloc(1, sizeof(char *));
    wf->default_retry.non_retryable_errors[0] = strdup("ValidationError");
    wf->default_retry.n_non_retryable = 1;
    run r;
    run_init(&r, wf);
    start(&r, "{}");
    fail_fwd(&r, 0, 1, why[k], k != 2);
    expect_types(&r, "StepFailed,CompensationStarted,SagaCompensated");
    expect_field(&r, 0, "final", "true");
    run_finish(&r);
  }
}

Test(decide_forward, unlimited_forward_attempts) {
  def_workflow *wf = wf_chain(1, "");
  retry_max(&wf->steps[0].action, 0);
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  for (int a = 1; a <= 50; a++) {
    fail_fwd(&r, 0, a, "X", true);
    expect_types(&r, "StepFailed,RetryScheduled");
  }
  ok_fwd(&r, 0, 51, "{}");
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPLETED);
  run_finish(&r);
}

Test(decide_forward, invalid_output_json) {
  run r;
  run_init(&r, wf_chain(1, ""));
  start(&r, "{}");
  cr_expect_eq(result(&r, 0, TASK_KIND_FWD, 1, true, "{nope", false), SK_EJSON);
  cr_expect_eq(r.d.n_events, 0);
  run_finish(&r);
}

Test(decide_forward, output_null_and_missing_error_fields) {
  run r;
  run_init(&r, wf_chain(2, ""));
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "null");
  cr_expect_null(r.st.steps[0].output);
  saga_result res = {
      .step = 1, .kind = TASK_KIND_FWD, .attempt = 1, .ok = false};
  saga_decision_clear(&r.d);
  cr_assert_eq(saga_decide_result(r.wf, &r.st, &res, NULL, r.now, &r.rng, &r.d),
               SK_OK);
  apply(&r);
  expect_field(&r, 0, "error",
               "{\"type\":\"Error\",\"message\":\"\",\"retryable\":false}");
  cr_expect_null(r.d.events[0].node);
  run_finish(&r);
}

/* ---- deadlines
 * ------------------------------------------------------------------------- */

Test(decide_deadline, next_step_after_deadline_times_out) {
  def_workflow *wf = wf_chain(3, "ab");
  wf->timeout_ms = 1000;
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  r.now = T0 + 999;
  ok_fwd(&r, 0, 1, "{}");
  expect_types(&r, "StepCompleted,StepScheduled");
  cr_expect_eq(r.d.tasks[0].timeout_ms, 1);
  r.now = T0 + 1000;
  ok_fwd(&r, 1, 1, "{}");
  expect_types(
      &r, "StepCompleted,StepFailed,CompensationStarted,CompensationScheduled");
  cr_expect_eq(r.d.events[1].step, 2);
  cr_expect_eq(r.d.events[1].attempt, 0);
  cJSON *p = payload(&r, 1);
  cr_expect_str_eq(
      cJSON_GetObjectItem(cJSON_GetObjectItem(p, "error"), "type")->valuestring,
      "SagaTimeout");
  cJSON_Delete(p);
  cr_expect_eq(r.d.events[3].step, 1);
  cr_expect_eq(r.st.steps[2].status, STEP_STATUS_FAILED);
  cr_expect_eq(r.st.steps[2].attempts, 0);
  /* Compensations ignore the deadline. */
  r.now = T0 + 100000;
  fail_comp(&r, 1, 1, true);
  expect_types(&r, "CompensationFailed,RetryScheduled");
  ok_comp(&r, 1, 2);
  ok_comp(&r, 0, 1);
  expect_types(&r, "CompensationCompleted,SagaCompensated");
  cr_expect_eq(r.st.steps[2].status, STEP_STATUS_FAILED);
  run_finish(&r);
}

Test(decide_deadline, retry_past_deadline_becomes_saga_timeout) {
  def_workflow *wf = wf_chain(1, "");
  wf->timeout_ms = 1000;
  no_jitter(&wf->steps[0].action);
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  r.now = T0 + 899; /* + 100 backoff = 999 < 1000: allowed */
  fail_fwd(&r, 0, 1, "Flaky", true);
  expect_types(&r, "StepFailed,RetryScheduled");
  cr_expect_eq(r.d.tasks[0].timeout_ms, 101);
  r.now = T0 + 800; /* + 200 = 1000: not before the deadline */
  fail_fwd(&r, 0, 2, "Flaky", true);
  expect_types(&r, "StepFailed,CompensationStarted,SagaCompensated");
  cJSON *p = payload(&r, 0);
  cJSON *e = cJSON_GetObjectItem(p, "error");
  cr_expect_str_eq(cJSON_GetObjectItem(e, "type")->valuestring, "SagaTimeout");
  cr_expect(cJSON_IsFalse(cJSON_GetObjectItem(e, "retryable")));
  cr_expect_not_null(
      strstr(cJSON_GetObjectItem(e, "message")->valuestring, "Flaky"));
  cJSON_Delete(p);
  run_finish(&r);
}

Test(decide_deadline, non_retryable_error_keeps_its_type) {
  def_workflow *wf = wf_chain(1, "");
  wf->timeout_ms = 10;
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  r.now = T0 + 5;
  fail_fwd(&r, 0, 1, "Fatal", false);
  expect_field(&r, 0, "error",
               "{\"type\":\"Fatal\",\"message\":\"boom\",\"retryable\":false}");
  run_finish(&r);
}

/* ---- compensation
 * ------------------------------------------------------------------------- */

Test(decide_comp, strict_reverse_order_skipping_non_compensable) {
  run r;
  run_init(&r, wf_chain(5, "abd"));
  start(&r, "{}");
  for (int i = 0; i < 4; i++)
    ok_fwd(&r, i, 1, "{}");
  fail_fwd(&r, 4, 1, "Fatal", false);
  expect_types(&r, "StepFailed,CompensationStarted,CompensationScheduled");
  cr_expect_eq(r.d.events[1].step, -1);
  cr_expect_eq(r.d.events[2].step, 3);
  cr_expect_eq(r.d.events[2].attempt, 1);
  cr_expect_eq(r.d.tasks[0].kind, TASK_KIND_COMP);
  cr_expect_str_eq(r.d.tasks[0].task_type, "c.d");
  cr_expect_eq(r.st.cursor, 3);
  ok_comp(&r, 3, 1);
  expect_types(&r, "CompensationCompleted,CompensationScheduled");
  expect_field(&r, 0, "output", "{\"undone\":true}");
  cr_expect_eq(r.d.events[1].step, 1);
  ok_comp(&r, 1, 1);
  cr_expect_eq(r.d.events[1].step, 0);
  ok_comp(&r, 0, 1);
  expect_types(&r, "CompensationCompleted,SagaCompensated");
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPENSATED);
  cr_expect_eq(r.st.phase, SAGA_PHASE_DONE);
  step_status want[] = {STEP_STATUS_COMPENSATED, STEP_STATUS_COMPENSATED,
                        STEP_STATUS_COMPLETED, STEP_STATUS_COMPENSATED,
                        STEP_STATUS_FAILED};
  for (int i = 0; i < 5; i++)
    cr_expect_eq(r.st.steps[i].status, want[i], "step %d", i);
  run_finish(&r);
}

Test(decide_comp, pending_steps_become_skipped) {
  run r;
  run_init(&r, wf_chain(4, "a"));
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  fail_fwd(&r, 1, 1, "Fatal", false);
  ok_comp(&r, 0, 1);
  cr_expect_eq(r.st.steps[2].status, STEP_STATUS_SKIPPED);
  cr_expect_eq(r.st.steps[3].status, STEP_STATUS_SKIPPED);
  run_finish(&r);
}

Test(decide_comp, compensate_on_failure_goes_first) {
  def_workflow *wf = wf_chain(3, "abc");
  wf->steps[2].compensate_on_failure = true;
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  ok_fwd(&r, 1, 1, "{}");
  fail_fwd(&r, 2, 1, "Fatal", false);
  cr_expect_eq(r.d.events[2].step, 2);
  cr_expect_str_eq(r.d.tasks[0].input, "{\"input\":{},\"output\":null}");
  ok_comp(&r, 2, 1);
  cr_expect_eq(r.d.events[1].step, 1);
  ok_comp(&r, 1, 1);
  ok_comp(&r, 0, 1);
  cr_expect_eq(r.st.steps[2].status, STEP_STATUS_COMPENSATED);
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPENSATED);
  run_finish(&r);
}

Test(decide_comp, compensate_on_failure_without_compensate) {
  def_workflow *wf = wf_chain(2, "a");
  wf->steps[1].compensate_on_failure = true;
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  fail_fwd(&r, 1, 1, "Fatal", false);
  cr_expect_eq(r.d.events[2].step, 0);
  run_finish(&r);
}

Test(decide_comp, nothing_to_compensate) {
  run r;
  run_init(&r, wf_chain(2, ""));
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  fail_fwd(&r, 1, 1, "Fatal", false);
  expect_types(&r, "StepFailed,CompensationStarted,SagaCompensated");
  cr_expect_eq(r.st.steps[0].status, STEP_STATUS_COMPLETED);
  run_finish(&r);
}

Test(decide_comp, unlimited_retries_then_success) {
  run r;
  run_init(&r, wf_chain(2, "a"));
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  fail_fwd(&r, 1, 1, "Fatal", false);
  for (int a = 1; a <= 30; a++) {
    fail_comp(&r, 0, a, true);
    expect_types(&r, "CompensationFailed,RetryScheduled");
    expect_field(&r, 0, "final", "false");
    expect_field(&r, 1, "kind", "\"comp\"");
    cr_expect_eq(r.d.events[1].attempt, a + 1);
    cr_expect_eq(r.d.tasks[0].attempt, a + 1);
    cr_expect_eq(r.d.tasks[0].kind, TASK_KIND_COMP);
    /* capped at 60 s, ± 10 % jitter */
    cr_expect_leq(r.d.tasks[0].available_at_ms - r.now, 66000);
    cr_expect_eq(r.st.steps[0].comp_attempts, a + 1);
    cr_expect_not_null(r.st.steps[0].comp_error);
  }
  ok_comp(&r, 0, 31);
  expect_types(&r, "CompensationCompleted,SagaCompensated");
  run_finish(&r);
}

Test(decide_comp, exhausted_fails_the_saga) {
  def_workflow *wf = wf_chain(3, "abc");
  retry_max(wf->steps[1].compensate, 2);
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  ok_fwd(&r, 1, 1, "{}");
  fail_fwd(&r, 2, 1, "Fatal", false);
  fail_comp(&r, 1, 1, true);
  expect_types(&r, "CompensationFailed,RetryScheduled");
  fail_comp(&r, 1, 2, true);
  expect_types(&r, "CompensationFailed,SagaFailed");
  expect_field(&r, 0, "final", "true");
  expect_field(&r, 1, "error",
               "{\"type\":\"Down\",\"message\":\"boom\",\"retryable\":true}");
  cr_expect_eq(r.d.n_tasks, 0);
  cr_expect_eq(r.st.status, SAGA_STATUS_FAILED);
  cr_expect_eq(r.st.phase, SAGA_PHASE_COMPENSATING);
  cr_expect_eq(r.st.cursor, 1);
  cr_expect_eq(r.st.steps[1].status, STEP_STATUS_COMPENSATION_FAILED);
  cr_expect_eq(r.st.steps[0].status, STEP_STATUS_COMPLETED);
  run_finish(&r);
}

Test(decide_comp, non_retryable_compensation_error) {
  run r;
  run_init(&r, wf_chain(2, "a"));
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  fail_fwd(&r, 1, 1, "Fatal", false);
  fail_comp(&r, 0, 1, false);
  expect_types(&r, "CompensationFailed,SagaFailed");
  run_finish(&r);
}

Test(decide_comp, workflow_default_max_attempts_not_applied_to_comp) {
  def_workflow *wf = wf_chain(2, "a");
  wf->has_default_retry = true;
  wf->default_retry.set = DEF_RETRY_MAX_ATTEMPTS;
  wf->default_retry.max_attempts = 1;
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  fail_fwd(&r, 1, 1, "Flaky", true);
  expect_types(&r, "StepFailed,CompensationStarted,CompensationScheduled");
  fail_comp(&r, 0, 1, true);
  expect_types(&r, "CompensationFailed,RetryScheduled");
  run_finish(&r);
}

/* ---- pause
 * ----------------------------------------------------------------------------------
 */

static void to_paused(run *r, size_t n, int fail_at) {
  def_workflow *wf = wf_chain(n, "abcd");
  wf->on_failure = DEF_ON_FAILURE_PAUSE;
  run_init(r, wf);
  start(r, "{\"v\":1}");
  for (int i = 0; i < fail_at; i++)
    ok_fwd(r, i, 1, "{\"i\":1}");
  fail_fwd(r, fail_at, 1, "Fatal", false);
}

Test(decide_pause, pauses_instead_of_compensating) {
  run r;
  to_paused(&r, 4, 2);
  expect_types(&r, "StepFailed,SagaPaused");
  expect_field(&r, 1, "error",
               "{\"type\":\"Fatal\",\"message\":\"boom\",\"retryable\":false}");
  cr_expect_eq(r.st.status, SAGA_STATUS_PAUSED);
  cr_expect_eq(r.st.phase, SAGA_PHASE_FORWARD);
  cr_expect_eq(r.st.cursor, 2);
  cr_expect_eq(r.st.steps[3].status, STEP_STATUS_PENDING);
  cr_expect_not_null(r.st.error);
  cr_expect_eq(result(&r, 2, TASK_KIND_FWD, 1, true, "{}", false), SK_ESTATE);
  run_finish(&r);
}

/* ---- cancel
 * ---------------------------------------------------------------------------------
 */

Test(decide_cancel, running_step_in_flight_then_success) {
  run r;
  run_init(&r, wf_chain(3, "ab"));
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  cr_assert_eq(cancel(&r, "user asked"), SK_OK);
  expect_types(&r, "CancelRequested");
  expect_field(&r, 0, "reason", "\"user asked\"");
  cr_expect_eq(cancel_of(&r.d), 1);
  cr_expect_eq(r.d.n_tasks, 0);
  cr_expect(r.st.cancel_requested);
  cr_expect_eq(r.st.status, SAGA_STATUS_RUNNING);
  /* idempotent */
  cr_expect_eq(cancel(&r, "again"), SK_OK);
  cr_expect_eq(r.d.n_events, 0);
  cr_expect_eq(cancel_of(&r.d), -1);
  ok_fwd(&r, 1, 1, "{}");
  expect_types(&r, "StepCompleted,CompensationStarted,CompensationScheduled");
  cJSON *p = payload(&r, 1);
  cr_expect_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(p, "reason"), "type")
                       ->valuestring,
                   "Cancelled");
  cJSON_Delete(p);
  cr_expect_eq(r.d.events[2].step, 1);
  ok_comp(&r, 1, 1);
  ok_comp(&r, 0, 1);
  expect_types(&r, "CompensationCompleted,SagaCancelled");
  cr_expect_eq(r.st.status, SAGA_STATUS_CANCELLED);
  cr_expect_eq(r.st.steps[2].status, STEP_STATUS_SKIPPED);
  cr_expect_eq(cancel(&r, NULL), SK_ESTATE);
  run_finish(&r);
}

Test(decide_cancel, last_step_success_after_cancel_still_compensates) {
  run r;
  run_init(&r, wf_chain(1, "a"));
  start(&r, "{}");
  cr_assert_eq(cancel(&r, NULL), SK_OK);
  expect_field(&r, 0, "reason", "null");
  ok_fwd(&r, 0, 1, "{}");
  expect_types(&r, "StepCompleted,CompensationStarted,CompensationScheduled");
  ok_comp(&r, 0, 1);
  expect_types(&r, "CompensationCompleted,SagaCancelled");
  run_finish(&r);
}

Test(decide_cancel, failure_after_cancel_is_not_retried) {
  def_workflow *wf = wf_chain(2, "a");
  wf->on_failure = DEF_ON_FAILURE_PAUSE; /* cancel wins over pause */
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  fail_fwd(&r, 1, 1, "Flaky", true);
  cr_assert_eq(cancel(&r, "stop"), SK_OK);
  cr_expect_eq(cancel_of(&r.d), 1); /* its retry is queued */
  fail_fwd(&r, 1, 2, "Flaky", true);
  expect_types(&r, "StepFailed,CompensationStarted,CompensationScheduled");
  expect_field(&r, 0, "final", "true");
  ok_comp(&r, 0, 1);
  expect_types(&r, "CompensationCompleted,SagaCancelled");
  run_finish(&r);
}

Test(decide_cancel, cancelled_error_from_worker) {
  run r;
  run_init(&r, wf_chain(1, ""));
  start(&r, "{}");
  cr_assert_eq(cancel(&r, "x"), SK_OK);
  fail_fwd(&r, 0, 1, "Cancelled", true);
  expect_types(&r, "StepFailed,CompensationStarted,SagaCancelled");
  run_finish(&r);
}

Test(decide_cancel, while_compensating) {
  run r;
  run_init(&r, wf_chain(3, "ab"));
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  ok_fwd(&r, 1, 1, "{}");
  fail_fwd(&r, 2, 1, "Fatal", false);
  cr_assert_eq(cancel(&r, "x"), SK_OK);
  expect_types(&r, "CancelRequested");
  cr_expect_eq(cancel_of(&r.d), -1);
  cr_expect_eq(r.d.n_tasks, 0);
  ok_comp(&r, 1, 1);
  ok_comp(&r, 0, 1);
  expect_types(&r, "CompensationCompleted,SagaCancelled");
  run_finish(&r);
}

Test(decide_cancel, paused_compensates_at_once) {
  run r;
  to_paused(&r, 4, 2);
  r.wf->steps[2].compensate_on_failure = true;
  cr_assert_eq(cancel(&r, "give up"), SK_OK);
  expect_types(&r, "CancelRequested,CompensationStarted,CompensationScheduled");
  expect_field(
      &r, 1, "reason",
      "{\"type\":\"Cancelled\",\"message\":\"give up\",\"retryable\":false}");
  cr_expect_eq(r.d.events[2].step, 2);
  cr_expect_eq(cancel_of(&r.d), -1);
  ok_comp(&r, 2, 1);
  ok_comp(&r, 1, 1);
  ok_comp(&r, 0, 1);
  expect_types(&r, "CompensationCompleted,SagaCancelled");
  cr_expect_eq(r.st.steps[3].status, STEP_STATUS_SKIPPED);
  run_finish(&r);
}

Test(decide_cancel, paused_with_nothing_to_compensate) {
  def_workflow *wf = wf_chain(1, "");
  wf->on_failure = DEF_ON_FAILURE_PAUSE;
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  fail_fwd(&r, 0, 1, "Fatal", false);
  cr_assert_eq(cancel(&r, NULL), SK_OK);
  expect_types(&r, "CancelRequested,CompensationStarted,SagaCancelled");
  run_finish(&r);
}

Test(decide_cancel, settled_statuses_refuse) {
  run r;
  /* completed */
  run_init(&r, wf_chain(1, ""));
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  cr_expect_eq(cancel(&r, NULL), SK_ESTATE);
  cr_expect_eq(r.d.n_events, 0);
  run_finish(&r);
  /* compensated */
  run_init(&r, wf_chain(1, ""));
  start(&r, "{}");
  fail_fwd(&r, 0, 1, "F", false);
  cr_expect_eq(cancel(&r, NULL), SK_ESTATE);
  run_finish(&r);
  /* failed */
  def_workflow *wf = wf_chain(2, "a");
  retry_max(wf->steps[0].compensate, 1);
  run_init(&r, wf);
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  fail_fwd(&r, 1, 1, "F", false);
  fail_comp(&r, 0, 1, true);
  cr_expect_eq(r.st.status, SAGA_STATUS_FAILED);
  cr_expect_eq(cancel(&r, NULL), SK_ESTATE);
  run_finish(&r);
}

/* ---- replay
 * ----------------------------------------------------------------------------------
 */

static void to_failed(run *r) {
  def_workflow *wf = wf_chain(3, "abc");
  retry_max(wf->steps[1].compensate, 2);
  run_init(r, wf);
  start(r, "{}");
  ok_fwd(r, 0, 1, "{}");
  ok_fwd(r, 1, 1, "{}");
  fail_fwd(r, 2, 1, "Fatal", false);
  fail_comp(r, 1, 1, true);
  fail_comp(r, 1, 2, true);
  cr_assert_eq(r->st.status, SAGA_STATUS_FAILED);
}

Test(decide_replay, failed_resumes_compensation) {
  run r;
  to_failed(&r);
  cr_expect_eq(replay(&r, "a", NULL), SK_EINVAL);
  cr_expect_eq(r.d.n_events, 0);
  cr_expect_eq(replay(&r, NULL, "{}"), SK_EINVAL);
  r.now += 1000;
  cr_assert_eq(replay(&r, NULL, NULL), SK_OK);
  expect_types(&r, "Replayed,CompensationScheduled");
  expect_field(&r, 0, "mode", "\"resume_compensation\"");
  cr_expect_eq(r.d.events[0].step, 1);
  cr_expect_eq(r.d.events[1].step, 1);
  cr_expect_eq(r.d.events[1].attempt, 1);
  cr_expect_eq(r.d.tasks[0].attempt, 1);
  cr_expect_eq(r.d.tasks[0].kind, TASK_KIND_COMP);
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPENSATING);
  cr_expect_eq(r.st.steps[1].comp_attempts, 1);
  cr_expect_eq(r.st.steps[1].status, STEP_STATUS_COMPENSATING);
  /* attempts are counted afresh: two more failures allowed */
  fail_comp(&r, 1, 1, true);
  expect_types(&r, "CompensationFailed,RetryScheduled");
  ok_comp(&r, 1, 2);
  ok_comp(&r, 0, 1);
  expect_types(&r, "CompensationCompleted,SagaCompensated");
  run_finish(&r);
}

Test(decide_replay, paused_resumes_at_failed_step) {
  run r;
  to_paused(&r, 4, 2);
  r.now += 5000;
  cr_assert_eq(replay(&r, NULL, NULL), SK_OK);
  expect_types(&r, "Replayed,StepScheduled");
  expect_field(&r, 0, "mode", "\"resume\"");
  expect_field(&r, 0, "from_step", "\"c\"");
  expect_field(&r, 0, "step_input", "null");
  cr_expect_eq(r.d.events[1].step, 2);
  cr_expect_eq(r.d.events[1].attempt, 1);
  cr_expect_str_eq(r.d.tasks[0].input, "{\"v\":1}");
  cr_expect_eq(r.st.status, SAGA_STATUS_RUNNING);
  cr_expect_null(r.st.error);
  cr_expect_eq(r.st.steps[2].status, STEP_STATUS_SCHEDULED);
  cr_expect_eq(r.st.steps[2].attempts, 1);
  cr_expect_null(r.st.steps[2].error);
  cr_expect_eq(r.st.steps[2].scheduled_ms, T0 + 5000);
  cr_expect_eq(r.st.steps[1].status, STEP_STATUS_COMPLETED);
  ok_fwd(&r, 2, 1, "{}");
  ok_fwd(&r, 3, 1, "{}");
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPLETED);
  run_finish(&r);
}

Test(decide_replay, paused_from_earlier_step_with_input) {
  run r;
  to_paused(&r, 4, 2);
  cr_expect_eq(replay(&r, "d", NULL), SK_EINVAL);
  cr_expect_eq(replay(&r, "zz", NULL), SK_EINVAL);
  cr_expect_eq(replay(&r, "b", "{bad"), SK_EJSON);
  cr_expect_eq(r.d.n_events, 0);
  cr_assert_eq(replay(&r, "b", "{ \"fixed\": true }"), SK_OK);
  expect_types(&r, "Replayed,StepScheduled");
  expect_field(&r, 0, "from_step", "\"b\"");
  expect_field(&r, 0, "step_input", "{\"fixed\":true}");
  cr_expect_eq(r.d.events[0].step, 1);
  cr_expect_eq(r.d.events[1].step, 1);
  cr_expect_str_eq(r.d.tasks[0].input, "{\"fixed\":true}");
  cr_expect_eq(r.st.steps[1].status, STEP_STATUS_SCHEDULED);
  cr_expect_null(r.st.steps[1].output);
  cr_expect_eq(r.st.steps[2].status, STEP_STATUS_PENDING);
  cr_expect_eq(r.st.steps[2].attempts, 0);
  cr_expect_null(r.st.steps[2].error);
  cr_expect_str_eq(r.st.steps[1].input_override, "{\"fixed\":true}");
  /* the override holds for the step's retries too */
  fail_fwd(&r, 1, 1, "Flaky", true);
  cr_expect_str_eq(r.d.tasks[0].input, "{\"fixed\":true}");
  ok_fwd(&r, 1, 2, "{}");
  cr_expect_str_eq(r.d.tasks[0].input, "{\"v\":1}");
  ok_fwd(&r, 2, 1, "{}");
  ok_fwd(&r, 3, 1, "{}");
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPLETED);
  run_finish(&r);
}

Test(decide_replay, paused_again_after_failing_again) {
  run r;
  to_paused(&r, 2, 1);
  cr_assert_eq(replay(&r, "a", NULL), SK_OK);
  ok_fwd(&r, 0, 1, "{}");
  fail_fwd(&r, 1, 1, "Fatal", false);
  expect_types(&r, "StepFailed,SagaPaused");
  cr_assert_eq(replay(&r, NULL, "[1]"), SK_OK);
  cr_expect_str_eq(r.d.tasks[0].input, "[1]");
  run_finish(&r);
}

Test(decide_replay, resume_after_deadline_times_out_again) {
  def_workflow *wf = wf_chain(2, "");
  wf->on_failure = DEF_ON_FAILURE_PAUSE;
  wf->timeout_ms = 100;
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  fail_fwd(&r, 0, 1, "Fatal", false);
  r.now = T0 + 200;
  cr_assert_eq(replay(&r, NULL, NULL), SK_OK);
  expect_types(&r, "Replayed,StepFailed,SagaPaused");
  cr_expect_eq(r.st.status, SAGA_STATUS_PAUSED);
  run_finish(&r);
}

Test(decide_replay, other_statuses_refuse) {
  run r;
  run_init(&r, wf_chain(2, ""));
  start(&r, "{}");
  cr_expect_eq(replay(&r, NULL, NULL), SK_ESTATE); /* running */
  ok_fwd(&r, 0, 1, "{}");
  fail_fwd(&r, 1, 1, "F", false);
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPENSATED);
  cr_expect_eq(replay(&r, NULL, NULL), SK_ESTATE);
  run_finish(&r);

  run_init(&r, wf_chain(2, "a"));
  start(&r, "{}");
  ok_fwd(&r, 0, 1, "{}");
  fail_fwd(&r, 1, 1, "F", false);
  cr_expect_eq(replay(&r, NULL, NULL), SK_ESTATE); /* compensating */
  run_finish(&r);
}

Test(decide_replay, link_settled_saga) {
  run r;
  run_init(&r, wf_chain(1, ""));
  start(&r, "{}");
  saga_decision_clear(&r.d);
  cr_expect_eq(saga_decide_link(&r.st, "new-id", "n", r.now, &r.d), SK_ESTATE);
  fail_fwd(&r, 0, 1, "F", false);
  saga_decision_clear(&r.d);
  cr_assert_eq(saga_decide_link(&r.st, "new-id", "n", r.now, &r.d), SK_OK);
  apply(&r);
  expect_types(&r, "ReplayLinked");
  expect_field(&r, 0, "replayed_by", "\"new-id\"");
  cr_expect_str_eq(r.st.replayed_by, "new-id");
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPENSATED);
  run_finish(&r);
}

/* ---- stale results
 * ----------------------------------------------------------------------------
 */

Test(decide_stale, every_kind_is_refused_with_empty_decision) {
  def_workflow *wf = wf_chain(3, "ab");
  run r;
  run_init(&r, wf);
  start(&r, "{}");
  fail_fwd(&r, 0, 1, "Flaky", true);
  struct {
    int step;
    task_kind kind;
    int attempt;
  } bad[] = {
      {0, TASK_KIND_FWD, 1},  /* superseded attempt */
      {0, TASK_KIND_FWD, 3},  /* future attempt */
      {1, TASK_KIND_FWD, 1},  /* not the cursor */
      {0, TASK_KIND_COMP, 2}, /* wrong kind */
      {-1, TASK_KIND_FWD, 2}, {7, TASK_KIND_FWD, 2},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    cr_expect_eq(
        result(&r, bad[i].step, bad[i].kind, bad[i].attempt, true, "{}", false),
        SK_ESTATE, "case %zu", i);
    cr_expect_eq(r.d.n_events, 0);
    cr_expect_eq(r.d.n_tasks, 0);
  }
  ok_fwd(&r, 0, 2, "{}");
  ok_fwd(&r, 1, 1, "{}");
  /* a duplicate of a delivered result */
  cr_expect_eq(result(&r, 1, TASK_KIND_FWD, 1, true, "{}", false), SK_ESTATE);
  fail_fwd(&r, 2, 1, "F", false);
  /* compensating: forward results and wrong comp attempts are stale */
  cr_expect_eq(result(&r, 2, TASK_KIND_FWD, 1, false, "F", false), SK_ESTATE);
  cr_expect_eq(result(&r, 1, TASK_KIND_FWD, 1, true, "{}", false), SK_ESTATE);
  cr_expect_eq(result(&r, 1, TASK_KIND_COMP, 2, true, "{}", false), SK_ESTATE);
  cr_expect_eq(result(&r, 0, TASK_KIND_COMP, 1, true, "{}", false), SK_ESTATE);
  ok_comp(&r, 1, 1);
  ok_comp(&r, 0, 1);
  /* settled */
  cr_expect_eq(result(&r, 0, TASK_KIND_COMP, 1, true, "{}", false), SK_ESTATE);
  cr_expect_eq(result(&r, 2, TASK_KIND_FWD, 1, true, "{}", false), SK_ESTATE);
  run_finish(&r);
}

Test(decide_stale, mismatched_definition) {
  run r;
  run_init(&r, wf_chain(2, ""));
  start(&r, "{}");
  def_workflow *other = wf_chain(3, "");
  saga_result res = {
      .step = 0, .kind = TASK_KIND_FWD, .attempt = 1, .ok = true};
  saga_decision d;
  cr_expect_eq(saga_decide_result(other, &r.st, &res, NULL, T0, &r.rng, &d),
               SK_EINVAL);
  other->n_steps = 2;
  other->version = 2;
  cr_expect_eq(saga_decide_result(other, &r.st, &res, NULL, T0, &r.rng, &d),
               SK_EINVAL);
  cr_expect_eq(saga_decide_cancel(other, &r.st, NULL, NULL, T0, &r.rng, &d),
               SK_EINVAL);
  other->n_steps = 3;
  def_workflow_unref(other);
  run_finish(&r);
}

/* ---- determinism
 * ---------------------------------------------------------------------------------
 */

static char *decision_text(const saga_decision *d) {
  size_t cap = 1 << 16;
  char *s = calloc(1, cap);
  size_t n = 0;
  for (size_t i = 0; i < d->n_events; i++) {
    const saga_event *e = &d->events[i];
    n += (size_t)snprintf(s + n, cap - n, "E%lld|%d|%d|%d|%s|%s|%lld\n",
                          (long long)e->seq, e->type, e->step, e->attempt,
                          e->node ? e->node : "-", e->payload,
                          (long long)e->ts_ms);
  }
  for (size_t i = 0; i < d->n_tasks; i++) {
    const saga_task *t = &d->tasks[i];
    n += (size_t)snprintf(
        s + n, cap - n, "T%d|%d|%d|%d|%s|%s|%s|%lld|%lld|%d|%lld\n", t->step,
        t->kind, t->attempt, t->action, t->task_type, t->input, t->bulkhead,
        (long long)t->available_at_ms, (long long)t->timeout_ms, t->gpus,
        (long long)t->gpu_memory_mb);
  }
  snprintf(s + n, cap - n, "C%d", cancel_of(d));
  return s;
}

static char *script(uint64_t seed) {
  def_workflow *wf = wf_chain(3, "abc");
  run r;
  run_init(&r, wf);
  r.rng.s = seed;
  size_t cap = 1 << 20, n = 0;
  char *all = calloc(1, cap);
  start(&r, "{\"x\":1}");
#define TAKE()                                                                 \
  do {                                                                         \
    char *t_ = decision_text(&r.d);                                            \
    n += (size_t)snprintf(all + n, cap - n, "%s\n", t_);                       \
    free(t_);                                                                  \
  } while (0)
  TAKE();
  ok_fwd(&r, 0, 1, "{\"a\":1}");
  TAKE();
  fail_fwd(&r, 1, 1, "Flaky", true);
  TAKE();
  fail_fwd(&r, 1, 2, "Flaky", true);
  TAKE();
  fail_fwd(&r, 1, 3, "Flaky", true);
  TAKE();
  fail_comp(&r, 0, 1, true);
  TAKE();
  ok_comp(&r, 0, 2);
  TAKE();
#undef TAKE
  run_finish(&r);
  return all;
}

Test(decide_determinism, same_inputs_same_bytes) {
  char *a = script(99), *b = script(99), *c = script(100);
  cr_expect_str_eq(a, b);
  cr_expect_str_neq(a, c, "the seed drives the jitter");
  free(a);
  free(b);
  free(c);
}

Test(decide_misc, idempotency_key_and_names) {
  char buf[SK_ID_LEN + SK_NAME_MAX + 8];
  saga_idempotency_key(SAGA_ID, "reserve", TASK_KIND_FWD, buf, sizeof(buf));
  cr_expect_str_eq(buf, SAGA_ID ":reserve:fwd");
  saga_idempotency_key(SAGA_ID, "reserve", TASK_KIND_COMP, buf, sizeof(buf));
  cr_expect_str_eq(buf, SAGA_ID ":reserve:comp");
  cr_expect_str_eq(task_kind_name(TASK_KIND_FWD), "fwd");
  cr_expect_str_eq(task_kind_name(TASK_KIND_COMP), "comp");
}
