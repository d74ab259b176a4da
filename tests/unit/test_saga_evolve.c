/*
 * test_saga_evolve.c — saga_evolve / saga_fold / saga_apply: the effect of
 * every event, refusals (wrong seq, impossible events, bad payloads) that
 * leave the state untouched, the name tables, parallel groups and
 * fallbacks. The randomized driver is in test_saga_random.c.
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

/* ---- hand-written events
 * ------------------------------------------------------ */

static saga_event mk(int64_t seq, saga_event_type type, int step, int attempt,
                     const char *payload) {
  saga_event e = {.seq = seq,
                  .type = type,
                  .step = step,
                  .attempt = attempt,
                  .payload = (char *)payload,
                  .ts_ms = T0 + seq};
  return e;
}

static char *snap(const saga_state *st) {
  char *s = NULL;
  cr_assert_eq(saga_state_to_json(st, &s), SK_OK);
  return s;
}

/* Applies; asserts the code; on failure asserts the state is unchanged. */
static void expect_evolve(saga_state *st, saga_event e, int want) {
  char *before = snap(st);
  int rc = saga_evolve(st, &e);
  cr_expect_eq(rc, want, "%s (seq %lld): got %s, want %s",
               saga_event_name(e.type), (long long)e.seq, sk_err_name(rc),
               sk_err_name(want));
  if (rc != SK_OK) {
    char *after = snap(st);
    cr_expect_str_eq(after, before, "state changed by a refused event");
    free(after);
  }
  free(before);
}

#define STARTED                                                                \
  "{\"id\":\"s-1\",\"workflow\":\"wf\",\"version\":2,\"input\":{\"k\":1},"     \
  "\"steps\":[\"a\",\"b\",\"c\"],\"deadline_ms\":0,\"idempotency_key\":"       \
  "\"ik\","                                                                    \
  "\"replay_of\":null}"
#define AT "{\"available_at_ms\":5}"
#define ERR "{\"error\":{\"type\":\"X\",\"message\":\"m\",\"retryable\":true}"

static void started(saga_state *st) {
  saga_state_init(st);
  expect_evolve(st, mk(1, SAGA_EV_SAGA_STARTED, -1, 0, STARTED), SK_OK);
}

Test(evolve, saga_started_fields) {
  saga_state st;
  started(&st);
  cr_expect_str_eq(st.id, "s-1");
  cr_expect_str_eq(st.workflow, "wf");
  cr_expect_eq(st.version, 2);
  cr_expect_str_eq(st.input, "{\"k\":1}");
  cr_expect_str_eq(st.idempotency_key, "ik");
  cr_expect_null(st.replay_of);
  cr_expect_eq(st.n_steps, 3);
  cr_expect_str_eq(st.steps[2].name, "c");
  cr_expect_eq(st.steps[0].status, STEP_STATUS_PENDING);
  cr_expect_eq(st.status, SAGA_STATUS_RUNNING);
  cr_expect_eq(st.phase, SAGA_PHASE_FORWARD);
  cr_expect_eq(st.created_ms, T0 + 1);
  cr_expect_eq(st.updated_ms, T0 + 1);
  cr_expect_eq(st.last_seq, 1);
  /* twice */
  expect_evolve(&st, mk(2, SAGA_EV_SAGA_STARTED, -1, 0, STARTED), SK_ESTATE);
  saga_state_clear(&st);
}

Test(evolve, seq_must_follow) {
  saga_state st;
  saga_state_init(&st);
  expect_evolve(&st, mk(2, SAGA_EV_SAGA_STARTED, -1, 0, STARTED), SK_ECONFLICT);
  expect_evolve(&st, mk(0, SAGA_EV_SAGA_STARTED, -1, 0, STARTED), SK_ECONFLICT);
  started(&st);
  expect_evolve(&st, mk(1, SAGA_EV_STEP_SCHEDULED, 0, 1, AT), SK_ECONFLICT);
  expect_evolve(&st, mk(3, SAGA_EV_STEP_SCHEDULED, 0, 1, AT), SK_ECONFLICT);
  expect_evolve(&st, mk(2, SAGA_EV_STEP_SCHEDULED, 0, 1, AT), SK_OK);
  saga_state_clear(&st);
}

Test(evolve, nothing_before_started) {
  saga_state st;
  saga_state_init(&st);
  for (int t = 1; t < SAGA_EV__COUNT; t++)
    expect_evolve(&st, mk(1, (saga_event_type)t, 0, 1, AT), SK_ESTATE);
  saga_state_clear(&st);
}

Test(evolve, bad_payloads) {
  saga_state st;
  saga_state_init(&st);
  const char *bad_start[] = {
      "",
      "nope",
      "[]",
      "{\"workflow\":\"wf\"}",
      "{\"workflow\":1,\"version\":1,\"input\":{},\"steps\":[]}",
      "{\"workflow\":\"w\",\"version\":1,\"input\":[],\"steps\":[]}",
      "{\"workflow\":\"w\",\"version\":1.5,\"input\":{},\"steps\":[]}",
      "{\"workflow\":\"w\",\"version\":1,\"input\":{},\"steps\":[1]}",
      "{\"workflow\":\"w\",\"version\":1,\"input\":{},\"steps\":{}}",
      "{\"workflow\":\"w\",\"version\":1,\"input\":{},\"steps\":[],\"id\":7}",
      "{\"workflow\":\"w\",\"version\":1,\"input\":{},\"steps\":[],"
      "\"id\":\"0123456789012345678901234567890123456789\"}",
      "{\"workflow\":\"w\",\"version\":1,\"input\":{},\"steps\":[],\"deadline_"
      "ms\":\"x\"}",
  };
  for (size_t i = 0; i < sizeof(bad_start) / sizeof(*bad_start); i++)
    expect_evolve(&st, mk(1, SAGA_EV_SAGA_STARTED, -1, 0, bad_start[i]),
                  SK_EJSON);
  saga_event nul = mk(1, SAGA_EV_SAGA_STARTED, -1, 0, NULL);
  cr_expect_eq(saga_evolve(&st, &nul), SK_EJSON);
  started(&st);
  expect_evolve(&st, mk(2, SAGA_EV_STEP_SCHEDULED, 0, 1, "{}"), SK_EJSON);
  expect_evolve(
      &st, mk(2, SAGA_EV_STEP_SCHEDULED, 0, 1, "{\"available_at_ms\":1e300}"),
      SK_EJSON);
  expect_evolve(&st, mk(2, SAGA_EV_STEP_SCHEDULED, 0, 1, AT), SK_OK);
  expect_evolve(&st, mk(3, SAGA_EV_STEP_COMPLETED, 0, 1, "{}"), SK_EJSON);
  expect_evolve(
      &st,
      mk(3, SAGA_EV_STEP_COMPLETED, 0, 1, "{\"output\":1,\"by_fallback\":0}"),
      SK_EJSON);
  expect_evolve(
      &st, mk(3, SAGA_EV_STEP_FAILED, 0, 1, "{\"error\":\"x\",\"final\":true}"),
      SK_EJSON);
  expect_evolve(&st, mk(3, SAGA_EV_STEP_FAILED, 0, 1, "{\"error\":{}}"),
                SK_EJSON);
  expect_evolve(&st,
                mk(3, SAGA_EV_RETRY_SCHEDULED, 0, 2,
                   "{\"kind\":\"x\",\"available_at_ms\":1}"),
                SK_EJSON);
  expect_evolve(&st, mk(3, SAGA_EV_RETRY_SCHEDULED, 0, 2, "{\"kind\":\"fwd\"}"),
                SK_EJSON);
  expect_evolve(&st, mk(3, SAGA_EV_CANCEL_REQUESTED, -1, 0, "{\"reason\":5}"),
                SK_EJSON);
  expect_evolve(&st, mk(3, SAGA_EV_REPLAYED, -1, 0, "{\"mode\":\"warp\"}"),
                SK_EJSON);
  expect_evolve(&st, mk(3, SAGA_EV_SAGA_COMPLETED, -1, 0, "{}"), SK_ESTATE);
  saga_event bad_type = mk(3, SAGA_EV__COUNT, -1, 0, "{}");
  cr_expect_eq(saga_evolve(&st, &bad_type), SK_EINVAL);
  cr_expect_eq(saga_evolve(NULL, &bad_type), SK_EINVAL);
  saga_state_clear(&st);
}

/* One full hand-written life: every event type and its effect. */
Test(evolve, every_event_effect) {
  saga_state st;
  started(&st);
  int64_t s = 2;
  expect_evolve(&st, mk(s, SAGA_EV_STEP_COMPLETED, 0, 1, "{\"output\":1}"),
                SK_ESTATE);
  expect_evolve(&st, mk(s, SAGA_EV_STEP_SCHEDULED, 1, 1, AT),
                SK_ESTATE); /* not next */
  expect_evolve(&st, mk(s, SAGA_EV_STEP_SCHEDULED, 0, 2, AT),
                SK_ESTATE); /* attempt */
  expect_evolve(&st, mk(s, SAGA_EV_STEP_SCHEDULED, 9, 1, AT), SK_ESTATE);
  s = 2;
  expect_evolve(&st, mk(s++, SAGA_EV_STEP_SCHEDULED, 0, 1, AT), SK_OK);
  cr_expect_eq(st.steps[0].status, STEP_STATUS_SCHEDULED);
  cr_expect_eq(st.steps[0].attempts, 1);
  cr_expect_eq(st.steps[0].scheduled_ms, T0 + 2);
  cr_expect_eq(st.steps[0].available_at_ms, 5);
  cr_expect_eq(st.cursor, 0);
  expect_evolve(&st, mk(s, SAGA_EV_STEP_FAILED, 0, 2, ERR ",\"final\":false}"),
                SK_ESTATE);
  expect_evolve(
      &st, mk(s++, SAGA_EV_STEP_FAILED, 0, 1, ERR ",\"final\":false}"), SK_OK);
  cr_expect_eq(st.steps[0].status, STEP_STATUS_SCHEDULED);
  cr_expect_str_eq(st.steps[0].error,
                   "{\"type\":\"X\",\"message\":\"m\",\"retryable\":true}");
  expect_evolve(&st,
                mk(s, SAGA_EV_RETRY_SCHEDULED, 0, 3,
                   "{\"kind\":\"fwd\",\"available_at_ms\":9}"),
                SK_ESTATE);
  expect_evolve(&st,
                mk(s, SAGA_EV_RETRY_SCHEDULED, 0, 2,
                   "{\"kind\":\"comp\",\"available_at_ms\":9}"),
                SK_ESTATE);
  expect_evolve(&st,
                mk(s++, SAGA_EV_RETRY_SCHEDULED, 0, 2,
                   "{\"kind\":\"fwd\",\"available_at_ms\":9,\"delay_ms\":4}"),
                SK_OK);
  cr_expect_eq(st.steps[0].attempts, 2);
  cr_expect_eq(st.steps[0].available_at_ms, 9);
  cr_expect_eq(st.steps[0].scheduled_ms, T0 + 2);
  expect_evolve(&st, mk(s, SAGA_EV_STEP_COMPLETED, 0, 1, "{\"output\":1}"),
                SK_ESTATE);
  expect_evolve(
      &st, mk(s++, SAGA_EV_STEP_COMPLETED, 0, 2, "{\"output\": {\"id\" : 7}}"),
      SK_OK);
  cr_expect_eq(st.steps[0].status, STEP_STATUS_COMPLETED);
  cr_expect_str_eq(st.steps[0].output, "{\"id\":7}");
  cr_expect_eq(st.steps[0].finished_ms, T0 + 5);
  expect_evolve(&st, mk(s, SAGA_EV_SAGA_COMPLETED, -1, 0, "{\"output\":{}}"),
                SK_ESTATE);
  expect_evolve(&st, mk(s, SAGA_EV_COMPENSATION_SCHEDULED, 0, 1, AT),
                SK_ESTATE);
  expect_evolve(&st, mk(s++, SAGA_EV_STEP_SCHEDULED, 1, 1, AT), SK_OK);
  expect_evolve(&st,
                mk(s, SAGA_EV_COMPENSATION_STARTED, -1, 0,
                   "{\"reason\":{\"type\":\"X\"}}"),
                SK_ESTATE);
  expect_evolve(&st, mk(s++, SAGA_EV_STEP_FAILED, 1, 1, ERR ",\"final\":true}"),
                SK_OK);
  cr_expect_eq(st.steps[1].status, STEP_STATUS_FAILED);
  cr_expect_eq(st.steps[1].finished_ms, T0 + 7);
  expect_evolve(&st, mk(s, SAGA_EV_SAGA_COMPENSATED, -1, 0, "{}"), SK_ESTATE);
  expect_evolve(&st,
                mk(s++, SAGA_EV_CANCEL_REQUESTED, -1, 0, "{\"reason\":\"r\"}"),
                SK_OK);
  cr_expect(st.cancel_requested);
  expect_evolve(&st, mk(s, SAGA_EV_CANCEL_REQUESTED, -1, 0, "{}"), SK_ESTATE);
  expect_evolve(&st,
                mk(s++, SAGA_EV_COMPENSATION_STARTED, -1, 0,
                   "{\"reason\":{\"type\":\"Cancelled\"}}"),
                SK_OK);
  cr_expect_eq(st.status, SAGA_STATUS_COMPENSATING);
  cr_expect_eq(st.phase, SAGA_PHASE_COMPENSATING);
  cr_expect_str_eq(st.error, "{\"type\":\"Cancelled\"}");
  expect_evolve(&st, mk(s, SAGA_EV_COMPENSATION_SCHEDULED, 2, 1, AT),
                SK_ESTATE); /* pending */
  expect_evolve(&st, mk(s, SAGA_EV_COMPENSATION_SCHEDULED, 0, 2, AT),
                SK_ESTATE);
  expect_evolve(&st, mk(s++, SAGA_EV_COMPENSATION_SCHEDULED, 0, 1, AT), SK_OK);
  cr_expect_eq(st.steps[0].status, STEP_STATUS_COMPENSATING);
  cr_expect_eq(st.steps[0].comp_attempts, 1);
  cr_expect_eq(st.cursor, 0);
  expect_evolve(&st, mk(s, SAGA_EV_COMPENSATION_SCHEDULED, 1, 1, AT),
                SK_ESTATE); /* one at a time */
  expect_evolve(
      &st, mk(s++, SAGA_EV_COMPENSATION_FAILED, 0, 1, ERR ",\"final\":false}"),
      SK_OK);
  cr_expect_not_null(st.steps[0].comp_error);
  expect_evolve(&st,
                mk(s++, SAGA_EV_RETRY_SCHEDULED, 0, 2,
                   "{\"kind\":\"comp\",\"available_at_ms\":11}"),
                SK_OK);
  cr_expect_eq(st.steps[0].comp_attempts, 2);
  expect_evolve(&st, mk(s, SAGA_EV_SAGA_CANCELLED, -1, 0, "{}"), SK_ESTATE);
  expect_evolve(&st, mk(s, SAGA_EV_SAGA_FAILED, -1, 0, ERR "}"), SK_ESTATE);
  expect_evolve(
      &st, mk(s++, SAGA_EV_COMPENSATION_FAILED, 0, 2, ERR ",\"final\":true}"),
      SK_OK);
  cr_expect_eq(st.steps[0].status, STEP_STATUS_COMPENSATION_FAILED);
  expect_evolve(&st, mk(s, SAGA_EV_SAGA_CANCELLED, -1, 0, "{}"), SK_ESTATE);
  expect_evolve(&st, mk(s++, SAGA_EV_SAGA_FAILED, -1, 0, ERR "}"), SK_OK);
  cr_expect_eq(st.status, SAGA_STATUS_FAILED);
  cr_expect_eq(st.phase, SAGA_PHASE_COMPENSATING);
  cr_expect_eq(st.cursor, 0);
  cr_expect_eq(st.steps[2].status, STEP_STATUS_PENDING);
  expect_evolve(&st,
                mk(s, SAGA_EV_REPLAY_LINKED, -1, 0, "{\"replayed_by\":\"n\"}"),
                SK_ESTATE);
  expect_evolve(
      &st, mk(s, SAGA_EV_REPLAYED, 1, 0, "{\"mode\":\"resume_compensation\"}"),
      SK_ESTATE);
  expect_evolve(&st,
                mk(s, SAGA_EV_REPLAYED, 0, 0,
                   "{\"mode\":\"resume\",\"from_step\":\"a\"}"),
                SK_ESTATE);
  expect_evolve(
      &st,
      mk(s++, SAGA_EV_REPLAYED, 0, 0, "{\"mode\":\"resume_compensation\"}"),
      SK_OK);
  cr_expect_eq(st.status, SAGA_STATUS_COMPENSATING);
  cr_expect_eq(st.steps[0].comp_attempts, 0);
  expect_evolve(&st, mk(s++, SAGA_EV_COMPENSATION_SCHEDULED, 0, 1, AT), SK_OK);
  expect_evolve(
      &st, mk(s, SAGA_EV_COMPENSATION_COMPLETED, 0, 2, "{\"output\":null}"),
      SK_ESTATE);
  expect_evolve(
      &st, mk(s++, SAGA_EV_COMPENSATION_COMPLETED, 0, 1, "{\"output\":null}"),
      SK_OK);
  cr_expect_eq(st.steps[0].status, STEP_STATUS_COMPENSATED);
  expect_evolve(&st, mk(s, SAGA_EV_SAGA_COMPENSATED, -1, 0, "{}"),
                SK_ESTATE); /* cancel asked */
  expect_evolve(&st, mk(s++, SAGA_EV_SAGA_CANCELLED, -1, 0, "{}"), SK_OK);
  cr_expect_eq(st.status, SAGA_STATUS_CANCELLED);
  cr_expect_eq(st.phase, SAGA_PHASE_DONE);
  cr_expect_eq(st.cursor, -1);
  cr_expect_eq(st.steps[1].status, STEP_STATUS_FAILED);
  cr_expect_eq(st.steps[2].status, STEP_STATUS_SKIPPED);
  expect_evolve(&st, mk(s, SAGA_EV_CANCEL_REQUESTED, -1, 0, "{}"), SK_ESTATE);
  expect_evolve(&st, mk(s, SAGA_EV_REPLAY_LINKED, -1, 0, "{}"), SK_EJSON);
  expect_evolve(
      &st, mk(s++, SAGA_EV_REPLAY_LINKED, -1, 0, "{\"replayed_by\":\"n-1\"}"),
      SK_OK);
  cr_expect_str_eq(st.replayed_by, "n-1");
  expect_evolve(&st,
                mk(s++, SAGA_EV_REPLAYED, -1, 0,
                   "{\"mode\":\"new_run\",\"new_saga_id\":\"n-2\"}"),
                SK_OK);
  cr_expect_str_eq(st.replayed_by, "n-2");
  cr_expect_eq(st.last_seq, s - 1);
  cr_expect_eq(st.updated_ms, T0 + s - 1);
  saga_state_clear(&st);
}

Test(evolve, pause_and_resume) {
  saga_state st;
  started(&st);
  int64_t s = 2;
  expect_evolve(&st, mk(s++, SAGA_EV_STEP_SCHEDULED, 0, 1, AT), SK_OK);
  expect_evolve(&st, mk(s++, SAGA_EV_STEP_COMPLETED, 0, 1, "{\"output\":1}"),
                SK_OK);
  expect_evolve(&st, mk(s++, SAGA_EV_STEP_SCHEDULED, 1, 1, AT), SK_OK);
  expect_evolve(&st, mk(s, SAGA_EV_SAGA_PAUSED, -1, 0, ERR "}"), SK_ESTATE);
  expect_evolve(&st, mk(s++, SAGA_EV_STEP_FAILED, 1, 1, ERR ",\"final\":true}"),
                SK_OK);
  expect_evolve(&st, mk(s++, SAGA_EV_SAGA_PAUSED, -1, 0, ERR "}"), SK_OK);
  cr_expect_eq(st.status, SAGA_STATUS_PAUSED);
  cr_expect_eq(st.phase, SAGA_PHASE_FORWARD);
  cr_expect_eq(st.steps[2].status, STEP_STATUS_PENDING);
  expect_evolve(&st, mk(s, SAGA_EV_STEP_SCHEDULED, 2, 1, AT), SK_ESTATE);
  expect_evolve(&st,
                mk(s, SAGA_EV_REPLAYED, -1, 0,
                   "{\"mode\":\"resume\",\"from_step\":\"c\"}"),
                SK_ESTATE);
  expect_evolve(&st,
                mk(s, SAGA_EV_REPLAYED, -1, 0,
                   "{\"mode\":\"resume\",\"from_step\":\"zz\"}"),
                SK_ESTATE);
  expect_evolve(&st, mk(s, SAGA_EV_REPLAYED, -1, 0, "{\"mode\":\"resume\"}"),
                SK_EJSON);
  expect_evolve(&st,
                mk(s, SAGA_EV_REPLAYED, 1, 0,
                   "{\"mode\":\"resume\",\"from_step\":\"a\"}"),
                SK_ESTATE);
  expect_evolve(&st,
                mk(s++, SAGA_EV_REPLAYED, 0, 0,
                   "{\"mode\":\"resume\",\"from_step\":\"a\",\"step_input\":{"
                   "\"z\" : 1}}"),
                SK_OK);
  cr_expect_eq(st.status, SAGA_STATUS_RUNNING);
  cr_expect_null(st.error);
  cr_expect_eq(st.cursor, 0);
  for (int i = 0; i < 3; i++) {
    cr_expect_eq(st.steps[i].status, STEP_STATUS_PENDING);
    cr_expect_eq(st.steps[i].attempts, 0);
    cr_expect_null(st.steps[i].output);
    cr_expect_null(st.steps[i].error);
  }
  cr_expect_str_eq(st.steps[0].input_override, "{\"z\":1}");
  expect_evolve(&st, mk(s++, SAGA_EV_STEP_SCHEDULED, 0, 1, AT), SK_OK);
  saga_state_clear(&st);
}

Test(evolve, unscheduled_failure_and_completion_rules) {
  saga_state st;
  started(&st);
  int64_t s = 2;
  /* attempt 0 failure only for the next pending step, only final */
  expect_evolve(&st, mk(s, SAGA_EV_STEP_FAILED, 1, 0, ERR ",\"final\":true}"),
                SK_ESTATE);
  expect_evolve(&st, mk(s, SAGA_EV_STEP_FAILED, 0, 0, ERR ",\"final\":false}"),
                SK_ESTATE);
  expect_evolve(&st, mk(s++, SAGA_EV_STEP_FAILED, 0, 0, ERR ",\"final\":true}"),
                SK_OK);
  cr_expect_eq(st.steps[0].status, STEP_STATUS_FAILED);
  cr_expect_eq(st.steps[0].attempts, 0);
  expect_evolve(&st,
                mk(s++, SAGA_EV_COMPENSATION_STARTED, -1, 0, "{\"reason\":{}}"),
                SK_OK);
  expect_evolve(&st, mk(s, SAGA_EV_SAGA_CANCELLED, -1, 0, "{}"), SK_ESTATE);
  expect_evolve(&st, mk(s, SAGA_EV_STEP_SCHEDULED, 1, 1, AT), SK_ESTATE);
  expect_evolve(&st, mk(s++, SAGA_EV_SAGA_COMPENSATED, -1, 0, "{}"), SK_OK);
  cr_expect_eq(st.status, SAGA_STATUS_COMPENSATED);
  cr_expect_eq(st.steps[1].status, STEP_STATUS_SKIPPED);
  saga_state_clear(&st);
}

Test(evolve, completed_saga_output) {
  saga_state st;
  saga_state_init(&st);
  expect_evolve(
      &st,
      mk(1, SAGA_EV_SAGA_STARTED, -1, 0,
         "{\"workflow\":\"w\",\"version\":1,\"input\":{},\"steps\":[\"a\"]}"),
      SK_OK);
  cr_expect_str_eq(st.id, "");
  expect_evolve(&st, mk(2, SAGA_EV_STEP_SCHEDULED, 0, 1, AT), SK_OK);
  /* by_fallback only completes a fallback attempt */
  expect_evolve(&st,
                mk(3, SAGA_EV_STEP_COMPLETED, 0, 1,
                   "{\"output\":\"x\",\"by_fallback\":true}"),
                SK_ESTATE);
  expect_evolve(&st,
                mk(3, SAGA_EV_STEP_FAILED, 0, 1,
                   "{\"error\":{\"type\":\"E\"},\"final\":false}"),
                SK_OK);
  expect_evolve(&st, mk(4, SAGA_EV_FALLBACK_SCHEDULED, 0, 1, AT), SK_OK);
  expect_evolve(&st,
                mk(5, SAGA_EV_STEP_COMPLETED, 0, 1,
                   "{\"output\":\"x\",\"by_fallback\":false}"),
                SK_ESTATE);
  expect_evolve(&st,
                mk(5, SAGA_EV_STEP_COMPLETED, 0, 1,
                   "{\"output\":\"x\",\"by_fallback\":true}"),
                SK_OK);
  cr_expect(st.steps[0].by_fallback);
  cr_expect_eq(st.steps[0].finished_seq, 5);
  expect_evolve(&st, mk(6, SAGA_EV_SAGA_COMPLETED, -1, 0, "{\"output\":[]}"),
                SK_EJSON);
  expect_evolve(
      &st, mk(6, SAGA_EV_SAGA_COMPLETED, -1, 0, "{\"output\":{\"a\":\"x\"}}"),
      SK_OK);
  cr_expect_str_eq(st.output, "{\"a\":\"x\"}");
  cr_expect_eq(st.status, SAGA_STATUS_COMPLETED);
  expect_evolve(&st, mk(7, SAGA_EV_CANCEL_REQUESTED, -1, 0, "{}"), SK_ESTATE);
  saga_state_clear(&st);
}

/* 0 a, 1 p, 2 x, 3 y, 4 z */
#define TREE                                                                   \
  "{\"workflow\":\"wf\",\"version\":1,\"input\":{},"                           \
  "\"steps\":[\"a\",\"p\",\"x\",\"y\",\"z\"],"                                 \
  "\"parents\":[-1,-1,1,1,1],\"branches\":[-1,-1,0,0,1]}"
#define OUT "{\"output\":1,\"by_fallback\":false}"
#define FINAL "{\"error\":{\"type\":\"F\"},\"final\":true}"

Test(evolve, tree_in_saga_started) {
  static const char *bad[] = {
      /* a parent must precede its step */
      "{\"workflow\":\"w\",\"version\":1,\"input\":{},\"steps\":[\"a\",\"b\"],"
      "\"parents\":[1,-1],\"branches\":[0,-1]}",
      /* parent and branch go together */
      "{\"workflow\":\"w\",\"version\":1,\"input\":{},\"steps\":[\"a\",\"b\"],"
      "\"parents\":[-1,0],\"branches\":[-1,-1]}",
      /* one without the other */
      "{\"workflow\":\"w\",\"version\":1,\"input\":{},\"steps\":[\"a\",\"b\"],"
      "\"parents\":[-1,0]}",
      /* wrong length, wrong type */
      "{\"workflow\":\"w\",\"version\":1,\"input\":{},\"steps\":[\"a\",\"b\"],"
      "\"parents\":[-1],\"branches\":[-1]}",
      "{\"workflow\":\"w\",\"version\":1,\"input\":{},\"steps\":[\"a\",\"b\"],"
      "\"parents\":[-1,0.5],\"branches\":[-1,0]}",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    saga_state st;
    saga_state_init(&st);
    expect_evolve(&st, mk(1, SAGA_EV_SAGA_STARTED, -1, 0, bad[i]), SK_EJSON);
    saga_state_clear(&st);
  }
  saga_state st;
  saga_state_init(&st);
  expect_evolve(&st, mk(1, SAGA_EV_SAGA_STARTED, -1, 0, TREE), SK_OK);
  cr_expect_eq(st.steps[0].parent, -1);
  cr_expect_eq(st.steps[3].parent, 1);
  cr_expect_eq(st.steps[4].branch, 1);
  saga_state_clear(&st);
}

Test(evolve, group_rules) {
  saga_state st;
  saga_state_init(&st);
  expect_evolve(&st, mk(1, SAGA_EV_SAGA_STARTED, -1, 0, TREE), SK_OK);
  /* a branch step starts only inside its running group */
  expect_evolve(&st, mk(2, SAGA_EV_STEP_SCHEDULED, 2, 1, AT), SK_ESTATE);
  expect_evolve(&st, mk(2, SAGA_EV_STEP_SCHEDULED, 0, 1, AT), SK_OK);
  expect_evolve(&st, mk(3, SAGA_EV_STEP_COMPLETED, 0, 1, OUT), SK_OK);
  expect_evolve(&st, mk(4, SAGA_EV_STEP_SCHEDULED, 1, 1, AT), SK_OK);
  expect_evolve(&st, mk(5, SAGA_EV_STEP_SCHEDULED, 3, 1, AT), SK_ESTATE);
  expect_evolve(&st, mk(5, SAGA_EV_STEP_SCHEDULED, 2, 1, AT), SK_OK);
  expect_evolve(&st, mk(6, SAGA_EV_STEP_SCHEDULED, 4, 1, AT), SK_OK);
  /* two in flight: either may report */
  expect_evolve(&st, mk(7, SAGA_EV_STEP_COMPLETED, 4, 1, OUT), SK_OK);
  cr_expect_eq(st.steps[4].finished_seq, 7);
  /* the group completes only when every branch has */
  expect_evolve(&st, mk(8, SAGA_EV_STEP_COMPLETED, 1, 1, OUT), SK_ESTATE);
  expect_evolve(&st, mk(8, SAGA_EV_STEP_FAILED, 1, 1, FINAL), SK_ESTATE);
  expect_evolve(&st, mk(8, SAGA_EV_STEP_FAILED, 2, 1, FINAL), SK_OK);
  /* stopping: nothing new starts, nothing is retried */
  expect_evolve(&st, mk(9, SAGA_EV_STEP_SCHEDULED, 3, 1, AT), SK_ESTATE);
  expect_evolve(&st,
                mk(9, SAGA_EV_COMPENSATION_STARTED, -1, 0,
                   "{\"reason\":{\"type\":\"F\"}}"),
                SK_ESTATE); /* the group still runs */
  expect_evolve(&st, mk(9, SAGA_EV_STEP_FAILED, 1, 1, FINAL), SK_OK);
  expect_evolve(&st, mk(10, SAGA_EV_SAGA_PAUSED, -1, 0, "{\"error\":{}}"),
                SK_OK);
  cr_expect_eq(st.cursor, 1);
  /* resume only at a top-level step; the group runs again whole */
  expect_evolve(&st,
                mk(11, SAGA_EV_REPLAYED, 2, 0,
                   "{\"mode\":\"resume\",\"from_step\":\"x\"}"),
                SK_ESTATE);
  expect_evolve(&st,
                mk(11, SAGA_EV_REPLAYED, 1, 0,
                   "{\"mode\":\"resume\",\"from_step\":\"p\"}"),
                SK_OK);
  cr_expect_eq(st.steps[4].status, STEP_STATUS_PENDING);
  cr_expect_eq(st.steps[4].finished_seq, 0);
  cr_expect_eq(st.steps[4].parent, 1);
  saga_state_clear(&st);
}

Test(evolve, fallback_events) {
  saga_state st;
  started(&st);
  expect_evolve(&st, mk(2, SAGA_EV_FALLBACK_SCHEDULED, 0, 1, AT), SK_ESTATE);
  expect_evolve(&st, mk(2, SAGA_EV_STEP_SCHEDULED, 0, 1, AT), SK_OK);
  expect_evolve(&st, mk(3, SAGA_EV_FALLBACK_SCHEDULED, 0, 2, AT), SK_ESTATE);
  expect_evolve(&st, mk(3, SAGA_EV_FALLBACK_SCHEDULED, 0, 1, "{}"), SK_EJSON);
  expect_evolve(&st, mk(3, SAGA_EV_FALLBACK_SCHEDULED, 0, 1, AT), SK_OK);
  cr_expect_eq(st.steps[0].fb_attempts, 1);
  expect_evolve(&st, mk(4, SAGA_EV_FALLBACK_SCHEDULED, 0, 1, AT), SK_ESTATE);
  /* forward attempts are over */
  expect_evolve(&st, mk(4, SAGA_EV_STEP_FAILED, 0, 1, ERR ",\"final\":false}"),
                SK_ESTATE);
  expect_evolve(&st,
                mk(4, SAGA_EV_RETRY_SCHEDULED, 0, 2,
                   "{\"kind\":\"fwd\",\"available_at_ms\":1}"),
                SK_ESTATE);
  expect_evolve(&st,
                mk(4, SAGA_EV_FALLBACK_FAILED, 0, 2, ERR ",\"final\":false}"),
                SK_ESTATE);
  expect_evolve(&st, mk(4, SAGA_EV_FALLBACK_FAILED, 0, 1, "{\"final\":false}"),
                SK_EJSON);
  expect_evolve(&st,
                mk(4, SAGA_EV_FALLBACK_FAILED, 0, 1, ERR ",\"final\":false}"),
                SK_OK);
  expect_evolve(&st,
                mk(5, SAGA_EV_RETRY_SCHEDULED, 0, 2,
                   "{\"kind\":\"fallback\",\"available_at_ms\":1}"),
                SK_OK);
  cr_expect_eq(st.steps[0].fb_attempts, 2);
  cr_expect_eq(st.steps[0].attempts, 1);
  expect_evolve(
      &st, mk(6, SAGA_EV_FALLBACK_FAILED, 0, 2, ERR ",\"final\":true}"), SK_OK);
  cr_expect_eq(st.steps[0].status, STEP_STATUS_SCHEDULED);
  /* the step's final failure carries the forward attempts */
  expect_evolve(&st, mk(7, SAGA_EV_STEP_FAILED, 0, 2, ERR ",\"final\":true}"),
                SK_ESTATE);
  expect_evolve(&st, mk(7, SAGA_EV_STEP_FAILED, 0, 1, ERR ",\"final\":true}"),
                SK_OK);
  cr_expect_eq(st.steps[0].status, STEP_STATUS_FAILED);
  cr_expect_eq(st.steps[0].finished_seq, 7);
  saga_state_clear(&st);
}

Test(evolve, fold_stops_at_first_error) {
  saga_event evs[] = {
      mk(1, SAGA_EV_SAGA_STARTED, -1, 0, STARTED),
      mk(2, SAGA_EV_STEP_SCHEDULED, 0, 1, AT),
      mk(3, SAGA_EV_STEP_COMPLETED, 1, 1, "{\"output\":1}"),
  };
  saga_state st;
  cr_expect_eq(saga_fold(evs, 2, &st), SK_OK);
  cr_expect_eq(st.last_seq, 2);
  saga_state_clear(&st);
  cr_expect_eq(saga_fold(evs, 3, &st), SK_ESTATE);
  cr_expect_null(st.workflow);
  cr_expect_eq(st.last_seq, 0);
  saga_state_clear(&st);
}

Test(names, tables_round_trip) {
  for (int i = 0; i <= SAGA_STATUS_CANCELLED; i++) {
    saga_status s;
    cr_expect_eq(saga_status_parse(saga_status_name((saga_status)i), &s),
                 SK_OK);
    cr_expect_eq((int)s, i);
  }
  for (int i = 0; i <= STEP_STATUS_SKIPPED; i++) {
    step_status s;
    cr_expect_eq(step_status_parse(step_status_name((step_status)i), &s),
                 SK_OK);
    cr_expect_eq((int)s, i);
  }
  for (int i = 0; i < SAGA_EV__COUNT; i++) {
    saga_event_type t;
    cr_expect_eq(saga_event_parse(saga_event_name((saga_event_type)i), &t),
                 SK_OK);
    cr_expect_eq((int)t, i);
  }
  saga_status s;
  step_status ss;
  saga_event_type t;
  cr_expect_eq(saga_status_parse("Running", &s), SK_EINVAL);
  cr_expect_eq(saga_status_parse(NULL, &s), SK_EINVAL);
  cr_expect_eq(step_status_parse("done", &ss), SK_EINVAL);
  cr_expect_eq(saga_event_parse("StepStarted", &t), SK_EINVAL);
  cr_expect_str_eq(saga_status_name((saga_status)99), "unknown");
  cr_expect_str_eq(saga_event_name(SAGA_EV__COUNT), "unknown");
  cr_expect_str_eq(saga_status_name(SAGA_STATUS_COMPENSATED), "compensated");
  cr_expect_str_eq(step_status_name(STEP_STATUS_COMPENSATION_FAILED),
                   "compensation_failed");
  cr_expect_str_eq(saga_event_name(SAGA_EV_COMPENSATION_SCHEDULED),
                   "CompensationScheduled");
  cr_expect(saga_status_settled(SAGA_STATUS_PAUSED));
  cr_expect(saga_status_settled(SAGA_STATUS_FAILED));
  cr_expect_not(saga_status_settled(SAGA_STATUS_RUNNING));
  cr_expect_not(saga_status_settled(SAGA_STATUS_COMPENSATING));
}
