/*
 * test_saga_fallback.c — per-step fallbacks in the decider
 * (workflow-spec.md "Fallback"): a step that fails for good runs its
 * fallback; its output becomes the step's, the step completes by fallback
 * and the saga goes on; the compensation stays as declared unless
 * fallback.compensate overrides it; a fallback that fails for good fails
 * the step. And saga_decide_breaker_open: an open breaker sends a waiting
 * step to its fallback at once. Every scenario ends with fold == apply.
 */
#include <criterion/criterion.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "saga/saga.h"
#include "spec/spec_json.h"

#define SAGA_ID "6f1c2a4e-0000-4000-8000-00000000000f"
#include "saga_run.h"

static void ok_fb(run *r, int step, const char *out) {
  cr_assert_eq(result(r, step, TASK_KIND_FALLBACK,
                      r->st.steps[step].fb_attempts, true, out, false),
               SK_OK, "fallback result of step %d refused", step);
}

static void fail_fb(run *r, int step, const char *type, bool retryable) {
  cr_assert_eq(result(r, step, TASK_KIND_FALLBACK,
                      r->st.steps[step].fb_attempts, false, type, retryable),
               SK_OK);
}

static int breaker(run *r, int step) {
  saga_decision_clear(&r->d);
  int rc = saga_decide_breaker_open(r->wf, &r->st, step, "node-1", r->now,
                                    &r->rng, &r->d);
  if (rc == SK_OK)
    apply(r);
  return rc;
}

/* 0 a (fallback), 1 b */
#define PRICE(fallback_extra, extra)                                           \
  "{\"name\":\"wf\",\"version\":1,\"steps\":["                                 \
  "{\"name\":\"a\",\"task\":\"price.live\",\"retry\":{\"max_attempts\":2,"     \
  "\"jitter\":0},\"compensate\":{\"task\":\"price.release\"},"                 \
  "\"fallback\":{\"task\":\"price.cached\",\"input\":{\"n\":\"${input.n}"      \
  "\"}" fallback_extra "}" extra "},"                                          \
  "{\"name\":\"b\",\"task\":\"t.b\",\"input\":{\"p\":"                         \
  "\"${steps.a.output.price}\"}}]}"

Test(fallback, exhausted_step_runs_fallback_and_saga_goes_on) {
  run r;
  run_init(&r, PRICE("", ""));
  fail_fwd(&r, 0, "Flaky", true);
  expect_types(&r, "StepFailed(0),RetryScheduled(0)");
  fail_fwd(&r, 0, "Flaky", true);
  expect_types(&r, "StepFailed(0),FallbackScheduled(0)");
  expect_field(&r, 0, "final", "false");
  cr_assert_eq(r.d.n_tasks, 1);
  saga_task *t = &r.d.tasks[0];
  cr_expect_eq(t->kind, TASK_KIND_FALLBACK);
  cr_expect_eq(t->attempt, 1);
  cr_expect_str_eq(t->task_type, "price.cached");
  cr_expect_str_eq(t->input, "{\"n\":3}");
  cr_expect_eq(t->gpus, 0);
  cr_expect_eq(r.st.steps[0].status, STEP_STATUS_SCHEDULED);
  cr_expect_eq(r.st.steps[0].fb_attempts, 1);
  /* the forward attempt is over: its late result is stale */
  cr_expect_eq(result(&r, 0, TASK_KIND_FWD, 2, true, "{}", false), SK_ESTATE);
  ok_fb(&r, 0, "{\"price\":9}");
  expect_types(&r, "StepCompleted(0),StepScheduled(1)");
  expect_field(&r, 0, "by_fallback", "true");
  expect_field(&r, 0, "output", "{\"price\":9}");
  cr_expect_eq(r.d.events[0].attempt, 1);
  cr_expect(r.st.steps[0].by_fallback);
  cr_assert_eq(r.d.n_tasks, 1);
  cr_expect_str_eq(r.d.tasks[0].input, "{\"p\":9}");
  /* b fails: a's declared compensation runs, on the fallback's output */
  fail_fwd(&r, 1, "Fatal", false);
  expect_types(&r, "StepFailed(1),CompensationStarted(-1),"
                   "CompensationScheduled(0)");
  cr_assert_eq(r.d.n_tasks, 1);
  cr_expect_str_eq(r.d.tasks[0].task_type, "price.release");
  cr_expect_str_eq(r.d.tasks[0].input,
                   "{\"input\":{\"n\":3},\"output\":{\"price\":9}}");
  ok_comp(&r, 0);
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPENSATED);
  run_finish(&r);
}

Test(fallback, idempotency_key_and_kind_name) {
  char buf[SK_ID_LEN + SK_NAME_MAX + 12];
  saga_idempotency_key("sid", "a", TASK_KIND_FALLBACK, buf, sizeof(buf));
  cr_expect_str_eq(buf, "sid:a:fallback");
  cr_expect_str_eq(task_kind_name(TASK_KIND_FALLBACK), "fallback");
}

Test(fallback, fallback_compensate_overrides) {
  run r;
  run_init(&r, PRICE(",\"compensate\":{\"task\":\"cache.forget\"}", ""));
  fail_fwd(&r, 0, "Fatal", false); /* non-retryable: the fallback at once */
  expect_types(&r, "StepFailed(0),FallbackScheduled(0)");
  ok_fb(&r, 0, "{\"price\":1}");
  fail_fwd(&r, 1, "Fatal", false);
  cr_assert_eq(r.d.n_tasks, 1);
  cr_expect_str_eq(r.d.tasks[0].task_type, "cache.forget");
  ok_comp(&r, 0);
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPENSATED);
  run_finish(&r);
}

Test(fallback, override_unused_when_forward_succeeds) {
  run r;
  run_init(&r, PRICE(",\"compensate\":{\"task\":\"cache.forget\"}", ""));
  ok_fwd(&r, 0, "{\"price\":1}");
  expect_field(&r, 0, "by_fallback", "false");
  fail_fwd(&r, 1, "Fatal", false);
  cr_expect_str_eq(r.d.tasks[0].task_type, "price.release");
  ok_comp(&r, 0);
  run_finish(&r);
}

Test(fallback, fallback_retries_then_fails_the_step) {
  run r;
  run_init(&r, PRICE(",\"retry\":{\"max_attempts\":2}",
                     ",\"compensate_on_failure\":true"));
  fail_fwd(&r, 0, "Fatal", false);
  fail_fb(&r, 0, "Down", true);
  expect_types(&r, "FallbackFailed(0),RetryScheduled(0)");
  expect_field(&r, 1, "kind", "\"fallback\"");
  cr_assert_eq(r.d.n_tasks, 1);
  cr_expect_eq(r.d.tasks[0].kind, TASK_KIND_FALLBACK);
  cr_expect_eq(r.d.tasks[0].attempt, 2);
  cr_expect_eq(r.st.steps[0].fb_attempts, 2);
  fail_fb(&r, 0, "Down", true);
  expect_types(&r, "FallbackFailed(0),StepFailed(0),CompensationStarted(-1),"
                   "CompensationScheduled(0)");
  expect_field(&r, 0, "final", "true");
  expect_field(&r, 1, "final", "true");
  cr_expect_eq(r.d.events[1].attempt, 1, "the forward attempts");
  cr_expect_eq(r.st.steps[0].status, STEP_STATUS_COMPENSATING);
  cr_expect_not(r.st.steps[0].by_fallback);
  ok_comp(&r, 0);
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPENSATED);
  run_finish(&r);
}

Test(fallback, fallback_retry_policy_defaults_to_workflow) {
  run r;
  run_init(&r, "{\"name\":\"wf\",\"version\":1,\"defaults\":{\"retry\":{"
               "\"max_attempts\":1}},\"on_failure\":\"pause\",\"steps\":["
               "{\"name\":\"a\",\"task\":\"t\",\"retry\":{\"max_attempts\":5},"
               "\"fallback\":{\"task\":\"f\"}}]}");
  fail_fwd(&r, 0, "Fatal", false);
  cr_expect_str_eq(r.d.tasks[0].input, "{\"n\":3}", "default input");
  fail_fb(&r, 0, "Down", true); /* workflow default: 1 attempt */
  expect_types(&r, "FallbackFailed(0),StepFailed(0),SagaPaused(-1)");
  run_finish(&r);
}

Test(fallback, not_used_on_cancel_or_saga_timeout) {
  run r;
  run_init(&r, PRICE("", ""));
  saga_decision_clear(&r.d);
  cr_assert_eq(saga_decide_cancel(r.wf, &r.st, "u", "op", r.now, &r.rng, &r.d),
               SK_OK);
  apply(&r);
  fail_fwd(&r, 0, "Fatal", false);
  expect_types(&r, "StepFailed(0),CompensationStarted(-1),SagaCancelled(-1)");
  run_finish(&r);

  run_init(&r,
           "{\"name\":\"wf\",\"version\":1,\"timeout_ms\":100,"
           "\"steps\":[{\"name\":\"a\",\"task\":\"t\",\"retry\":{"
           "\"initial_interval_ms\":1000},\"fallback\":{\"task\":\"f\"}}]}");
  fail_fwd(&r, 0, "Flaky", true); /* the retry would pass the deadline */
  expect_types(&r, "StepFailed(0),CompensationStarted(-1),SagaCompensated(-1)");
  char *e = field(&r, 0, "error");
  cr_expect(strstr(e, "SagaTimeout") != NULL, "%s", e);
  free(e);
  run_finish(&r);
}

Test(fallback, cancel_while_fallback_runs) {
  run r;
  run_init(&r, PRICE("", ""));
  fail_fwd(&r, 0, "Fatal", false);
  saga_decision_clear(&r.d);
  cr_assert_eq(saga_decide_cancel(r.wf, &r.st, "u", "op", r.now, &r.rng, &r.d),
               SK_OK);
  apply(&r);
  cr_expect_str_eq(cancels(&r), "0");
  ok_fb(&r, 0, "{\"price\":2}");
  expect_types(&r, "StepCompleted(0),CompensationStarted(-1),"
                   "CompensationScheduled(0)");
  ok_comp(&r, 0);
  cr_expect_eq(r.st.status, SAGA_STATUS_CANCELLED);
  run_finish(&r);
}

Test(fallback, http_fallback_request_rendered) {
  run r;
  run_init(&r, "{\"name\":\"wf\",\"version\":1,\"steps\":["
               "{\"name\":\"a\",\"task\":\"t\",\"retry\":{\"max_attempts\":1},"
               "\"fallback\":{\"http\":{\"method\":\"GET\",\"url\":"
               "\"http://127.0.0.1:9/p/${input.n}\"},\"timeout_ms\":777}}]}");
  fail_fwd(&r, 0, "Down", true);
  cr_assert_eq(r.d.n_tasks, 1);
  cr_expect_eq(r.d.tasks[0].action, DEF_KIND_HTTP);
  cr_expect_eq(r.d.tasks[0].timeout_ms, 777);
  cr_expect_str_eq(r.d.tasks[0].input,
                   "{\"method\":\"GET\",\"url\":\"http://127.0.0.1:9/p/3\","
                   "\"headers\":{},\"body\":null}");
  ok_fb(&r, 0, "{\"p\":1}");
  expect_types(&r, "StepCompleted(0),SagaCompleted(-1)");
  run_finish(&r);
}

/* ---- breaker open ---------------------------------------------------------
 */

Test(fallback, breaker_open_runs_fallback_at_once) {
  run r;
  run_init(&r, PRICE(",\"on_breaker_open\":true", ""));
  cr_assert_eq(breaker(&r, 0), SK_OK);
  expect_types(&r, "StepFailed(0),FallbackScheduled(0)");
  expect_field(&r, 0, "error",
               "{\"type\":\"BreakerOpen\",\"message\":\"circuit breaker open; "
               "running the fallback\",\"retryable\":false}");
  expect_field(&r, 0, "final", "false");
  cr_expect_str_eq(cancels(&r), "0", "the waiting forward task goes");
  cr_assert_eq(r.d.n_tasks, 1);
  cr_expect_eq(r.d.tasks[0].kind, TASK_KIND_FALLBACK);
  cr_expect_eq(r.d.tasks[0].available_at_ms, r.now);
  /* a late result of the forward task is stale; breaker again: refused */
  cr_expect_eq(result(&r, 0, TASK_KIND_FWD, 1, true, "{}", false), SK_ESTATE);
  cr_expect_eq(breaker(&r, 0), SK_ESTATE);
  ok_fb(&r, 0, "{\"price\":4}");
  cr_expect(r.st.steps[0].by_fallback);
  ok_fwd(&r, 1, "{}");
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPLETED);
  cr_expect_eq(breaker(&r, 0), SK_ESTATE);
  run_finish(&r);
}

Test(fallback, breaker_open_refusals) {
  run r;
  run_init(&r, PRICE("", "")); /* no on_breaker_open */
  cr_expect_eq(breaker(&r, 0), SK_EINVAL);
  cr_expect_eq(breaker(&r, 1), SK_EINVAL);
  cr_expect_eq(breaker(&r, 7), SK_EINVAL);
  cr_expect_eq(breaker(&r, -1), SK_EINVAL);
  cr_expect_eq(r.d.n_events, 0);
  run_finish(&r);

  run_init(&r, PRICE(",\"on_breaker_open\":true", ""));
  saga_decision_clear(&r.d);
  cr_assert_eq(saga_decide_cancel(r.wf, &r.st, "u", "op", r.now, &r.rng, &r.d),
               SK_OK);
  apply(&r);
  cr_expect_eq(breaker(&r, 0), SK_ESTATE, "no fallback once cancelled");
  ok_fwd(&r, 0, "{}");
  run_finish(&r);
}

Test(fallback, in_a_parallel_branch) {
  run r;
  /* 0 p, 1 x, 2 y */
  run_init(&r, "{\"name\":\"wf\",\"version\":1,\"steps\":["
               "{\"name\":\"p\",\"parallel\":["
               "[{\"name\":\"x\",\"task\":\"t\",\"retry\":{\"max_attempts\":"
               "1},\"fallback\":{\"task\":\"f\",\"on_breaker_open\":true}}],"
               "[{\"name\":\"y\",\"task\":\"t\"}]]}]}");
  cr_assert_eq(breaker(&r, 1), SK_OK);
  ok_fwd(&r, 2, "2");
  ok_fb(&r, 1, "1");
  expect_types(&r, "StepCompleted(1),StepCompleted(0),SagaCompleted(-1)");
  expect_field(&r, 1, "output", "{\"x\":1,\"y\":2}");
  run_finish(&r);

  /* a sibling failing for good: the fallback is not started */
  run_init(&r, "{\"name\":\"wf\",\"version\":1,\"steps\":["
               "{\"name\":\"p\",\"parallel\":["
               "[{\"name\":\"x\",\"task\":\"t\",\"retry\":{\"max_attempts\":"
               "1},\"fallback\":{\"task\":\"f\"}}],"
               "[{\"name\":\"y\",\"task\":\"t\"}]]}]}");
  fail_fwd(&r, 2, "Fatal", false);
  fail_fwd(&r, 1, "Down", true);
  expect_types(&r, "StepFailed(1),StepFailed(0),CompensationStarted(-1),"
                   "SagaCompensated(-1)");
  run_finish(&r);
}
