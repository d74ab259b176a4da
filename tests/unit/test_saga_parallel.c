/*
 * test_saga_parallel.c — parallel groups in the decider: the flattening of
 * the step tree, branches running side by side, group completion, a
 * failure stopping the siblings, compensation newest first by completion
 * across branches, pause, cancel and resume around groups. Workflows come
 * from JSON specs (spec_parse, so they are validated too); every scenario
 * ends by checking fold == step-by-step apply.
 */
#include <criterion/criterion.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "saga/saga.h"
#include "spec/spec_json.h"

#define SAGA_ID "6f1c2a4e-0000-4000-8000-00000000000p"
#include "saga_run.h"

/* 0 a, 1 p, 2 x, 3 y, 4 z, 5 b */
#define TRIP                                                                   \
  "{\"name\":\"wf\",\"version\":1%s,\"steps\":["                               \
  "{\"name\":\"a\",\"task\":\"t.a\",\"compensate\":{\"task\":\"c.a\"}},"       \
  "{\"name\":\"p\",\"parallel\":["                                             \
  " [{\"name\":\"x\",\"task\":\"t.x\",\"compensate\":{\"task\":\"c.x\"}},"     \
  "  {\"name\":\"y\",\"task\":\"t.y\",\"input\":{\"v\":"                       \
  "\"${steps.x.output.v}\"},\"compensate\":{\"task\":\"c.y\"}}],"              \
  " [{\"name\":\"z\",\"task\":\"t.z\",\"compensate\":{\"task\":\"c.z\"}}]]},"  \
  "{\"name\":\"b\",\"task\":\"t.b\",\"input\":{\"g\":\"${steps.p.output}\","   \
  "\"y\":\"${steps.y.output}\"}}]}"

static void trip(run *r, const char *extra) {
  char spec[2048];
  snprintf(spec, sizeof(spec), TRIP, extra);
  run_init(r, spec);
}

/* ---- flattening and the happy path -------------------------------------- */

Test(parallel, flattened_and_branches_run_side_by_side) {
  run r;
  trip(&r, "");
  expect_types(&r, "SagaStarted(-1),StepScheduled(0)");
  expect_field(&r, 0, "steps", "[\"a\",\"p\",\"x\",\"y\",\"z\",\"b\"]");
  expect_field(&r, 0, "parents", "[-1,-1,1,1,1,-1]");
  expect_field(&r, 0, "branches", "[-1,-1,0,0,1,-1]");
  cr_assert_eq(r.st.n_steps, 6);
  cr_expect_eq(r.st.steps[3].parent, 1);
  cr_expect_eq(r.st.steps[4].branch, 1);

  ok_fwd(&r, 0, "{}");
  expect_types(&r, "StepCompleted(0),StepScheduled(1),StepScheduled(2),"
                   "StepScheduled(4)");
  cr_assert_eq(r.d.n_tasks, 2);
  cr_expect_eq(r.d.tasks[0].step, 2);
  cr_expect_str_eq(r.d.tasks[0].task_type, "t.x");
  cr_expect_eq(r.d.tasks[1].step, 4);
  cr_expect_eq(r.st.steps[1].status, STEP_STATUS_SCHEDULED);

  /* a result for the group itself is never expected */
  cr_expect_eq(result(&r, 1, TASK_KIND_FWD, 1, true, "{}", false), SK_ESTATE);

  ok_fwd(&r, 4, "{\"z\":1}");
  expect_types(&r, "StepCompleted(4)");
  cr_expect_eq(r.d.n_tasks, 0);

  ok_fwd(&r, 2, "{\"v\":5}");
  expect_types(&r, "StepCompleted(2),StepScheduled(3)");
  cr_assert_eq(r.d.n_tasks, 1);
  cr_expect_str_eq(r.d.tasks[0].input, "{\"v\":5}");

  ok_fwd(&r, 3, "\"yy\"");
  expect_types(&r, "StepCompleted(3),StepCompleted(1),StepScheduled(5)");
  expect_field(&r, 1, "output",
               "{\"x\":{\"v\":5},\"y\":\"yy\",\"z\":{\"z\":1}}");
  cr_assert_eq(r.d.n_tasks, 1);
  cr_expect_str_eq(r.d.tasks[0].input, "{\"g\":{\"x\":{\"v\":5},\"y\":\"yy\","
                                       "\"z\":{\"z\":1}},\"y\":\"yy\"}");
  ok_fwd(&r, 5, "null");
  expect_types(&r, "StepCompleted(5),SagaCompleted(-1)");
  run_finish(&r);
}

/* ---- failure in a branch --------------------------------------------------
 */

Test(parallel, failure_stops_siblings_then_compensates_newest_first) {
  run r;
  trip(&r, "");
  ok_fwd(&r, 0, "{}");
  fail_fwd(&r, 2, "Fatal", false);
  expect_types(&r, "StepFailed(2)");
  expect_field(&r, 0, "final", "true");
  cr_expect_str_eq(cancels(&r), "4", "the sibling in flight is told to stop");
  cr_expect_eq(r.d.n_tasks, 0);
  cr_expect_eq(r.st.status, SAGA_STATUS_RUNNING);
  /* the sibling's success is recorded, then the saga compensates */
  ok_fwd(&r, 4, "{}");
  expect_types(&r, "StepCompleted(4),StepFailed(1),CompensationStarted(-1),"
                   "CompensationScheduled(4)");
  expect_field(&r, 1, "error",
               "{\"type\":\"Fatal\",\"message\":\"boom\",\"retryable\":false}");
  cr_expect_eq(r.st.steps[3].status, STEP_STATUS_PENDING);
  ok_comp(&r, 4);
  expect_types(&r, "CompensationCompleted(4),CompensationScheduled(0)");
  ok_comp(&r, 0);
  expect_types(&r, "CompensationCompleted(0),SagaCompensated(-1)");
  cr_expect_eq(r.st.steps[2].status, STEP_STATUS_FAILED);
  cr_expect_eq(r.st.steps[3].status, STEP_STATUS_SKIPPED);
  cr_expect_eq(r.st.steps[1].status, STEP_STATUS_FAILED);
  run_finish(&r);
}

Test(parallel, compensation_follows_completion_order_across_branches) {
  run r;
  trip(&r, "");
  ok_fwd(&r, 0, "{}");
  ok_fwd(&r, 4, "{}");        /* z completes first */
  ok_fwd(&r, 2, "{\"v\":1}"); /* then x */
  fail_fwd(&r, 3, "Fatal", false);
  expect_types(&r, "StepFailed(3),StepFailed(1),CompensationStarted(-1),"
                   "CompensationScheduled(2)");
  cr_expect_eq(r.d.n_cancel_steps, 0);
  ok_comp(&r, 2);
  expect_types(&r, "CompensationCompleted(2),CompensationScheduled(4)");
  ok_comp(&r, 4);
  expect_types(&r, "CompensationCompleted(4),CompensationScheduled(0)");
  ok_comp(&r, 0);
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPENSATED);
  cr_expect_lt(r.st.steps[4].finished_seq, r.st.steps[2].finished_seq);
  run_finish(&r);
}

Test(parallel, sibling_failure_while_stopping_is_not_retried) {
  run r;
  trip(&r, "");
  ok_fwd(&r, 0, "{}");
  fail_fwd(&r, 4, "Fatal", false);
  cr_expect_str_eq(cancels(&r), "2");
  fail_fwd(&r, 2, "Cancelled", true);
  expect_types(&r, "StepFailed(2),StepFailed(1),CompensationStarted(-1),"
                   "CompensationScheduled(0)");
  /* the reason is the first failure, not the stopped sibling's */
  expect_field(&r, 2, "reason",
               "{\"type\":\"Fatal\",\"message\":\"boom\",\"retryable\":false}");
  ok_comp(&r, 0);
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPENSATED);
  run_finish(&r);
}

Test(parallel, pause_waits_for_siblings_then_resume_reruns_group) {
  run r;
  trip(&r, ",\"on_failure\":\"pause\"");
  ok_fwd(&r, 0, "{}");
  fail_fwd(&r, 2, "Fatal", false);
  cr_expect_eq(r.st.status, SAGA_STATUS_RUNNING);
  fail_fwd(&r, 4, "Flaky", true);
  expect_types(&r, "StepFailed(4),StepFailed(1),SagaPaused(-1)");
  cr_expect_eq(r.st.status, SAGA_STATUS_PAUSED);
  cr_expect_eq(r.st.cursor, 1);

  saga_replay req = {.from_step = "x"};
  saga_decision_clear(&r.d);
  cr_expect_eq(saga_decide_replay(r.wf, &r.st, &req, "op", r.now, &r.rng, &r.d),
               SK_EINVAL, "resume only at a top-level step");
  req.from_step = NULL;
  cr_assert_eq(saga_decide_replay(r.wf, &r.st, &req, "op", r.now, &r.rng, &r.d),
               SK_OK);
  apply(&r);
  expect_types(&r, "Replayed(1),StepScheduled(1),StepScheduled(2),"
                   "StepScheduled(4)");
  ok_fwd(&r, 2, "{\"v\":2}");
  ok_fwd(&r, 3, "{}");
  ok_fwd(&r, 4, "{}");
  ok_fwd(&r, 5, "{}");
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPLETED);
  run_finish(&r);
}

Test(parallel, cancel_stops_every_branch) {
  run r;
  trip(&r, "");
  ok_fwd(&r, 0, "{}");
  saga_decision_clear(&r.d);
  cr_assert_eq(
      saga_decide_cancel(r.wf, &r.st, "user", "op", r.now, &r.rng, &r.d),
      SK_OK);
  apply(&r);
  expect_types(&r, "CancelRequested(-1)");
  cr_expect_str_eq(cancels(&r), "2,4");
  ok_fwd(&r, 2, "{\"v\":1}");
  expect_types(&r, "StepCompleted(2)");
  cr_expect_eq(r.d.n_tasks, 0, "nothing new starts");
  fail_fwd(&r, 4, "Cancelled", true);
  expect_types(&r, "StepFailed(4),StepFailed(1),CompensationStarted(-1),"
                   "CompensationScheduled(2)");
  ok_comp(&r, 2);
  ok_comp(&r, 0);
  expect_types(&r, "CompensationCompleted(0),SagaCancelled(-1)");
  run_finish(&r);
}

Test(parallel, cancel_with_all_branches_done_but_group_open) {
  run r;
  trip(&r, "");
  ok_fwd(&r, 0, "{}");
  saga_decision_clear(&r.d);
  cr_assert_eq(
      saga_decide_cancel(r.wf, &r.st, "user", "op", r.now, &r.rng, &r.d),
      SK_OK);
  apply(&r);
  ok_fwd(&r, 4, "{}");
  ok_fwd(&r, 2, "{}");
  /* y never starts: the group fails as cancelled */
  expect_types(&r, "StepCompleted(2),StepFailed(1),CompensationStarted(-1),"
                   "CompensationScheduled(2)");
  expect_field(&r, 1, "error",
               "{\"type\":\"Cancelled\",\"message\":\"cancel requested\","
               "\"retryable\":false}");
  ok_comp(&r, 2);
  expect_types(&r, "CompensationCompleted(2),CompensationScheduled(4)");
  ok_comp(&r, 4);
  ok_comp(&r, 0);
  cr_expect_eq(r.st.status, SAGA_STATUS_CANCELLED);
  run_finish(&r);
}

Test(parallel, branch_that_cannot_start_stops_the_group) {
  run r;
  def_workflow *wf = wf_json(
      "{\"name\":\"wf\",\"version\":1,\"steps\":["
      "{\"name\":\"a\",\"task\":\"t.a\",\"compensate\":{\"task\":\"c\"}},"
      "{\"name\":\"p\",\"parallel\":["
      " [{\"name\":\"x\",\"task\":\"t.x\",\"compensate\":{\"task\":"
      "\"c\"}}],"
      " [{\"name\":\"z\",\"task\":\"t.z\"}],"
      " [{\"name\":\"w\",\"task\":\"t.w\"}]]}]}");
  /* z's input cannot render (the validator would refuse this template) */
  def_action *za = &wf->steps[1].branches[1].steps[0].action;
  za->input_json = strdup("{\"q\":\"${steps.\"}");
  run_start(&r, wf);
  ok_fwd(&r, 0, "7");
  expect_types(&r, "StepCompleted(0),StepScheduled(1),StepScheduled(2),"
                   "StepFailed(3)");
  char *err = field(&r, 3, "error");
  cr_expect(strstr(err, "\"TemplateError\"") != NULL, "%s", err);
  free(err);
  cr_expect_eq(r.d.n_tasks, 1, "w is not started");
  cr_expect_eq(r.d.n_cancel_steps, 0);
  ok_fwd(&r, 2, "{}");
  expect_types(&r, "StepCompleted(2),StepFailed(1),CompensationStarted(-1),"
                   "CompensationScheduled(2)");
  ok_comp(&r, 2);
  ok_comp(&r, 0);
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPENSATED);
  cr_expect_eq(r.st.steps[4].status, STEP_STATUS_SKIPPED);
  run_finish(&r);
}

Test(parallel, retries_inside_a_branch) {
  run r;
  trip(&r, "");
  ok_fwd(&r, 0, "{}");
  fail_fwd(&r, 4, "Flaky", true);
  expect_types(&r, "StepFailed(4),RetryScheduled(4)");
  cr_assert_eq(r.d.n_tasks, 1);
  cr_expect_eq(r.d.tasks[0].attempt, 2);
  ok_fwd(&r, 2, "{\"v\":1}");
  ok_fwd(&r, 4, "{}");
  expect_types(&r, "StepCompleted(4)");
  ok_fwd(&r, 3, "{}");
  expect_types(&r, "StepCompleted(3),StepCompleted(1),StepScheduled(5)");
  run_finish(&r);
}

/* ---- nesting ------------------------------------------------------------- */

/* Completes every task in flight (forward first), newest task first. */
static void drain_ok(run *r) {
  for (int guard = 0; guard < 100 && !saga_status_settled(r->st.status);
       guard++) {
    bool done = false;
    for (size_t k = r->st.n_steps; k-- > 0 && !done;) {
      const saga_step_state *s = &r->st.steps[k];
      bool leaf = k + 1 >= r->st.n_steps || r->st.steps[k + 1].parent != (int)k;
      if (leaf && s->status == STEP_STATUS_SCHEDULED) {
        char out[32];
        snprintf(out, sizeof(out), "{\"k\":%zu}", k);
        ok_fwd(r, (int)k, out);
        done = true;
      }
    }
    cr_assert(done, "nothing in flight");
  }
}

Test(parallel, nested_groups_complete_inside_out) {
  run r;
  /* 0 p, 1 q, 2 m, 3 n, 4 r, 5 s, 6 e */
  run_init(&r, "{\"name\":\"wf\",\"version\":1,\"steps\":["
               "{\"name\":\"p\",\"parallel\":["
               " [{\"name\":\"q\",\"parallel\":[[{\"name\":\"m\",\"task\":"
               "\"t\"}],[{\"name\":\"n\",\"task\":\"t\"}]]},"
               "  {\"name\":\"r\",\"task\":\"t\",\"input\":{\"q\":"
               "\"${steps.q.output}\"}}],"
               " [{\"name\":\"s\",\"task\":\"t\"}]]},"
               "{\"name\":\"e\",\"task\":\"t\"}]}");
  expect_types(&r, "SagaStarted(-1),StepScheduled(0),StepScheduled(1),"
                   "StepScheduled(2),StepScheduled(3),StepScheduled(5)");
  expect_field(&r, 0, "parents", "[-1,0,1,1,0,0,-1]");
  expect_field(&r, 0, "branches", "[-1,0,0,1,0,1,-1]");
  cr_expect_eq(r.d.n_tasks, 3);
  ok_fwd(&r, 2, "1");
  ok_fwd(&r, 3, "2");
  expect_types(&r, "StepCompleted(3),StepCompleted(1),StepScheduled(4)");
  cr_expect_str_eq(r.d.tasks[0].input, "{\"q\":{\"m\":1,\"n\":2}}");
  drain_ok(&r);
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPLETED);
  cr_expect_str_eq(r.st.output, "{\"p\":{\"q\":{\"m\":1,\"n\":2},\"r\":{\"k\":"
                                "4},\"s\":{\"k\":5}},\"q\":{\"m\":1,\"n\":2},"
                                "\"m\":1,\"n\":2,\"r\":{\"k\":4},\"s\":{\"k\":"
                                "5},\"e\":{\"k\":6}}");
  run_finish(&r);
}

Test(parallel, nested_failure_fails_groups_innermost_first) {
  run r;
  run_init(&r, "{\"name\":\"wf\",\"version\":1,\"steps\":["
               "{\"name\":\"p\",\"parallel\":["
               " [{\"name\":\"q\",\"parallel\":[[{\"name\":\"m\",\"task\":"
               "\"t\",\"compensate\":{\"task\":\"c\"}}],[{\"name\":\"n\","
               "\"task\":\"t\"}]]}],"
               " [{\"name\":\"s\",\"task\":\"t\",\"compensate\":{\"task\":"
               "\"c\"}}]]}]}");
  ok_fwd(&r, 2, "{}");
  fail_fwd(&r, 3, "Fatal", false);
  cr_expect_str_eq(cancels(&r), "4");
  ok_fwd(&r, 4, "{}");
  expect_types(&r, "StepCompleted(4),StepFailed(1),StepFailed(0),"
                   "CompensationStarted(-1),CompensationScheduled(4)");
  ok_comp(&r, 4);
  expect_types(&r, "CompensationCompleted(4),CompensationScheduled(2)");
  ok_comp(&r, 2);
  cr_expect_eq(r.st.status, SAGA_STATUS_COMPENSATED);
  run_finish(&r);
}

Test(parallel, mismatched_tree_is_refused) {
  run r;
  trip(&r, "");
  def_workflow *other =
      wf_json("{\"name\":\"wf\",\"version\":1,\"steps\":["
              "{\"name\":\"a\",\"task\":\"t\"},{\"name\":\"p\",\"task\":\"t\"},"
              "{\"name\":\"x\",\"task\":\"t\"},{\"name\":\"y\",\"task\":\"t\"},"
              "{\"name\":\"z\",\"task\":\"t\"},{\"name\":\"b\",\"task\":\"t\"}"
              "]}");
  saga_result res = {.step = 0,
                     .kind = TASK_KIND_FWD,
                     .attempt = 1,
                     .ok = true,
                     .output = "{}"};
  saga_decision d;
  cr_expect_eq(saga_decide_result(other, &r.st, &res, "n", r.now, &r.rng, &d),
               SK_EINVAL);
  cr_expect_eq(d.n_events, 0);
  def_workflow_unref(other);
  run_finish(&r);
}
