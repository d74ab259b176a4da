/*
 * test_saga_evolve.c — saga_evolve / saga_fold / saga_apply: the effect of
 * every event, refusals (wrong seq, impossible events, bad payloads) that
 * leave the state untouched, the name tables, and a randomized driver that
 * runs thousands of sagas of random workflows through the decider and
 * checks the invariants of the log and the state.
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

/* ---- the randomized driver
 * ------------------------------------------------------------ */

static uint64_t rnd(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}
static int pick(uint64_t *s, int n) { return (int)(rnd(s) % (uint64_t)n); }
static bool chance(uint64_t *s, int percent) { return pick(s, 100) < percent; }

static def_action *random_action(uint64_t *r, const char *type) {
  def_action *a = calloc(1, sizeof(def_action));
  if (chance(r, 80)) {
    a->kind = DEF_KIND_TASK;
    a->task_type = strdup(type);
  } else {
    a->kind = DEF_KIND_HTTP;
    a->http.method = strdup("POST");
    a->http.url = strdup("http://x/${saga.id}");
  }
  a->has_retry = chance(r, 50);
  a->retry.set = DEF_RETRY_MAX_ATTEMPTS;
  a->retry.max_attempts = pick(r, 4); /* 0 = unlimited */
  return a;
}

static void random_leaf(uint64_t *r, def_step *s, int *names) {
  char name[32];
  snprintf(name, sizeof(name), "s%d", (*names)++);
  s->name = strdup(name);
  int k = pick(r, 10);
  s->action.kind = k == 0   ? DEF_KIND_SLEEP
                   : k == 1 ? DEF_KIND_HTTP
                            : DEF_KIND_TASK;
  if (s->action.kind == DEF_KIND_TASK)
    s->action.task_type = strdup("t");
  else if (s->action.kind == DEF_KIND_SLEEP)
    s->action.sleep_ms = pick(r, 100);
  else {
    s->action.http.method = strdup("POST");
    s->action.http.url = strdup("http://x/${saga.id}/${input.n}");
  }
  if (*names > 1 && chance(r, 30))
    s->action.input_json =
        strdup("{\"p\":\"${steps.s0.output.v}\",\"n\":\"${saga.attempt}\"}");
  s->action.has_retry = chance(r, 70);
  s->action.retry.set = DEF_RETRY_MAX_ATTEMPTS;
  s->action.retry.max_attempts = pick(r, 5); /* 0 = unlimited */
  if (chance(r, 60)) {
    s->compensate = random_action(r, "c");
    s->compensate->kind = DEF_KIND_TASK;
  }
  s->compensate_on_failure = chance(r, 25);
  if (s->action.kind != DEF_KIND_SLEEP && chance(r, 30)) {
    s->fallback = random_action(r, "f");
    s->fallback_on_breaker_open = chance(r, 50);
    if (chance(r, 40))
      s->fallback_compensate = random_action(r, "fc");
  }
}

/* n steps; some of them parallel groups (nested up to `depth` more). */
static void random_steps(uint64_t *r, def_step *steps, size_t n, int depth,
                         int *names) {
  for (size_t i = 0; i < n; i++) {
    def_step *s = &steps[i];
    if (depth > 0 && chance(r, depth > 1 ? 25 : 10)) {
      char name[32];
      snprintf(name, sizeof(name), "s%d", (*names)++);
      s->name = strdup(name);
      s->action.kind = DEF_KIND_PARALLEL;
      s->n_branches = (size_t)(1 + pick(r, 3));
      s->branches = calloc(s->n_branches, sizeof(def_branch));
      for (size_t b = 0; b < s->n_branches; b++) {
        s->branches[b].n_steps = (size_t)(1 + pick(r, 3));
        s->branches[b].steps =
            calloc(s->branches[b].n_steps, sizeof(def_step));
        random_steps(r, s->branches[b].steps, s->branches[b].n_steps,
                     depth - 1, names);
      }
    } else {
      random_leaf(r, s, names);
    }
  }
}

static def_workflow *random_wf(uint64_t *r) {
  def_workflow *wf = def_workflow_new();
  wf->name = strdup("rnd");
  wf->version = 1;
  wf->n_steps = (size_t)(1 + pick(r, 6));
  wf->steps = calloc(wf->n_steps, sizeof(def_step));
  wf->on_failure =
      chance(r, 20) ? DEF_ON_FAILURE_PAUSE : DEF_ON_FAILURE_COMPENSATE;
  if (chance(r, 20))
    wf->timeout_ms = 50 + pick(r, 3000);
  if (chance(r, 30)) {
    wf->has_default_retry = true;
    wf->default_retry.set = DEF_RETRY_NON_RETRYABLE;
    wf->default_retry.non_retryable_errors = calloc(1, sizeof(char *));
    wf->default_retry.non_retryable_errors[0] = strdup("Fatal");
    wf->default_retry.n_non_retryable = 1;
  }
  int names = 0;
  random_steps(r, wf->steps, wf->n_steps, chance(r, 40) ? 2 : 0, &names);
  return wf;
}

/* The definition's steps by flat index (saga.h). */
static void flatten(const def_step *steps, size_t n, const def_step **out,
                    size_t *k) {
  for (size_t i = 0; i < n; i++) {
    out[(*k)++] = &steps[i];
    for (size_t b = 0; b < steps[i].n_branches; b++)
      flatten(steps[i].branches[b].steps, steps[i].branches[b].n_steps, out,
              k);
  }
}

#define MAX_PENDING 64

typedef struct driver {
  def_workflow *wf;
  const def_step *flat[256];
  size_t n_flat;
  saga_state st;
  saga_rng rng;
  int64_t now;
  saga_event *log;
  size_t n_log, cap_log;
  saga_task pending[MAX_PENDING]; /* the tasks in flight */
  size_t n_pending;
  int iter;
} driver;

static void check_round_trip(const saga_state *st) {
  char *a = snap(st), *b;
  saga_state back;
  cr_assert_eq(saga_state_from_json(a, &back), SK_OK);
  b = snap(&back);
  cr_assert_str_eq(a, b, "state JSON does not round-trip");
  free(a);
  free(b);
  saga_state_clear(&back);
}

/* The task is the attempt the state expects a result for. */
static bool task_live(const saga_state *st, const saga_task *t) {
  const saga_step_state *s = &st->steps[t->step];
  if (t->kind == TASK_KIND_COMP)
    return st->status == SAGA_STATUS_COMPENSATING &&
           s->status == STEP_STATUS_COMPENSATING &&
           t->attempt == s->comp_attempts;
  bool fb = t->kind == TASK_KIND_FALLBACK;
  return st->status == SAGA_STATUS_RUNNING &&
         s->status == STEP_STATUS_SCHEDULED && (s->fb_attempts > 0) == fb &&
         t->attempt == (fb ? s->fb_attempts : s->attempts);
}

static void drop_pending(driver *dv, size_t i) {
  saga_task_clear(&dv->pending[i]);
  dv->pending[i] = dv->pending[--dv->n_pending];
}

/* Applies a decision, logs it, tracks the tasks in flight, checks it. */
static void take(driver *dv, saga_decision *d) {
  cr_assert_eq(saga_apply(&dv->st, d), SK_OK, "evolve refused decider output");
  for (size_t i = 0; i < d->n_events; i++) {
    if (dv->n_log == dv->cap_log) {
      dv->cap_log = dv->cap_log ? dv->cap_log * 2 : 64;
      dv->log = realloc(dv->log, dv->cap_log * sizeof(saga_event));
    }
    saga_event e = d->events[i];
    e.node = e.node ? strdup(e.node) : NULL;
    e.payload = strdup(e.payload);
    dv->log[dv->n_log++] = e;
  }
  for (size_t i = 0; i < d->n_tasks; i++) {
    saga_task *t = &d->tasks[i];
    cr_assert_geq(t->available_at_ms, dv->now);
    cr_assert(task_live(&dv->st, t), "task %d/%d/%d not what the state expects",
              t->step, t->kind, t->attempt);
    cr_assert_lt(dv->n_pending, MAX_PENDING);
    dv->pending[dv->n_pending++] = *t;
    memset(t, 0, sizeof(*t));
  }
  d->n_tasks = 0;
  for (size_t i = 1; i < d->n_cancel_steps; i++)
    cr_assert_lt(d->cancel_steps[i - 1], d->cancel_steps[i]);
  for (size_t i = dv->n_pending; i-- > 0;) {
    if (!task_live(&dv->st, &dv->pending[i]))
      drop_pending(dv, i);
  }
  if (dv->st.status == SAGA_STATUS_COMPENSATING)
    cr_assert_leq(dv->n_pending, 1, "compensations run one at a time");
  saga_decision_clear(d);
  check_round_trip(&dv->st);
}

static void send_result(driver *dv, uint64_t *r) {
  size_t which = (size_t)pick(r, (int)dv->n_pending);
  if (dv->now < dv->pending[which].available_at_ms)
    dv->now = dv->pending[which].available_at_ms;
  saga_task *t = &dv->pending[which];
  saga_result res = {.step = t->step, .kind = t->kind, .attempt = t->attempt};
  static const char *types[] = {"Flaky", "Fatal", "Timeout", "Cancelled"};
  bool late = dv->iter > 300; /* make sure every saga ends */
  res.ok = late || chance(r, t->kind == TASK_KIND_COMP ? 55 : 65);
  res.output =
      chance(r, 50) ? "{\"v\":[1,\"x\"]}" : (chance(r, 50) ? "null" : "7");
  res.err_type = types[pick(r, 4)];
  res.err_message = "m";
  res.err_retryable = chance(r, 80);
  saga_decision d;
  int rc;
  if (chance(r, 10)) { /* a stale duplicate first */
    saga_result stale = res;
    stale.attempt += chance(r, 50) ? 1 : -1;
    rc =
        saga_decide_result(dv->wf, &dv->st, &stale, "n", dv->now, &dv->rng, &d);
    cr_assert_eq(rc, SK_ESTATE);
    cr_assert_eq(d.n_events, 0);
  }
  rc = saga_decide_result(dv->wf, &dv->st, &res, "n", dv->now, &dv->rng, &d);
  cr_assert_eq(rc, SK_OK, "result refused: %s", sk_err_name(rc));
  drop_pending(dv, which);
  take(dv, &d);
}

static int breaker_moves;

/* The breaker of a waiting forward task opens: its fallback runs at once
 * when it has on_breaker_open. */
static bool breaker_open(driver *dv, uint64_t *r) {
  for (size_t i = 0; i < dv->n_pending; i++) {
    saga_task *t = &dv->pending[i];
    const def_step *s = dv->flat[t->step];
    if (t->kind != TASK_KIND_FWD || s->fallback == NULL ||
        !s->fallback_on_breaker_open || !chance(r, 50))
      continue;
    saga_decision d;
    int step = t->step;
    int rc = saga_decide_breaker_open(dv->wf, &dv->st, step, "n", dv->now,
                                      &dv->rng, &d);
    if (rc == SK_ESTATE) { /* stopping: the saga takes no fallback now */
      cr_assert_eq(d.n_events, 0);
      return false;
    }
    cr_assert_eq(rc, SK_OK, "breaker_open refused: %s", sk_err_name(rc));
    cr_assert_eq(d.n_cancel_steps, 1);
    cr_assert_eq(d.cancel_steps[0], step);
    drop_pending(dv, i); /* the caller deletes the waiting task */
    take(dv, &d);
    breaker_moves++;
    return true;
  }
  return false;
}

static void operator_action(driver *dv, uint64_t *r) {
  saga_decision d;
  int rc;
  const saga_state *st = &dv->st;
  if (st->status == SAGA_STATUS_PAUSED && chance(r, 60)) {
    saga_replay req = {0};
    if (chance(r, 50)) {
      int k = pick(r, st->cursor + 1);
      while (st->steps[k].parent >= 0) /* resume at a top-level step */
        k--;
      req.from_step = st->steps[k].name;
    }
    if (chance(r, 30))
      req.step_input = "{\"fixed\":1}";
    rc = saga_decide_replay(dv->wf, st, &req, "op", dv->now, &dv->rng, &d);
  } else if (st->status == SAGA_STATUS_FAILED) {
    rc = saga_decide_replay(dv->wf, st, NULL, "op", dv->now, &dv->rng, &d);
  } else {
    rc = saga_decide_cancel(dv->wf, st, "op", "op", dv->now, &dv->rng, &d);
  }
  cr_assert_eq(rc, SK_OK, "operator action refused: %s", sk_err_name(rc));
  take(dv, &d);
}

/* Compensation order: newest first by completion (the seq of the event
 * that ended each step's forward run), within a compensation phase,
 * except that a resume_compensation replay reschedules the stuck step. */
static void check_log(const driver *dv) {
  int64_t fin[256] = {0};
  int64_t last = INT64_MAX;
  int last_step = -1;
  bool replayed = false;
  for (size_t i = 0; i < dv->n_log; i++) {
    const saga_event *e = &dv->log[i];
    cr_assert_eq(e->seq, (int64_t)i + 1);
    if (e->type == SAGA_EV_STEP_COMPLETED ||
        (e->type == SAGA_EV_STEP_FAILED &&
         strstr(e->payload, "\"final\":true") != NULL))
      fin[e->step] = e->seq;
    if (e->type == SAGA_EV_COMPENSATION_STARTED)
      last = INT64_MAX;
    if (e->type == SAGA_EV_REPLAYED) {
      replayed = strstr(e->payload, "resume_compensation") != NULL;
      if (!replayed)
        for (size_t k = (size_t)e->step; k < dv->n_flat; k++)
          fin[k] = 0;
    }
    if (e->type == SAGA_EV_COMPENSATION_SCHEDULED) {
      if (replayed)
        cr_assert_eq(e->step, last_step);
      else
        cr_assert_lt(fin[e->step], last, "compensation not newest first");
      last = fin[e->step];
      last_step = e->step;
      replayed = false;
    }
  }
}

static void check_final(const driver *dv) {
  const saga_state *st = &dv->st;
  saga_state folded;
  cr_assert_eq(saga_fold(dv->log, dv->n_log, &folded), SK_OK);
  char *a = snap(st), *b = snap(&folded);
  cr_assert_str_eq(a, b, "fold != step-by-step apply");
  free(a);
  free(b);
  saga_state_clear(&folded);
  check_log(dv);
  if (st->status == SAGA_STATUS_COMPLETED) {
    for (size_t i = 0; i < st->n_steps; i++)
      cr_assert_eq(st->steps[i].status, STEP_STATUS_COMPLETED);
    cr_assert_not_null(st->output);
  }
  if (st->status == SAGA_STATUS_COMPENSATED ||
      st->status == SAGA_STATUS_CANCELLED) {
    for (size_t i = 0; i < st->n_steps; i++) {
      const def_step *ds = dv->flat[i];
      const def_action *comp =
          st->steps[i].by_fallback && ds->fallback_compensate != NULL
              ? ds->fallback_compensate
              : ds->compensate;
      step_status s = st->steps[i].status;
      /* exactly the completed steps with a compensation were undone */
      if (s == STEP_STATUS_COMPLETED)
        cr_assert_null(comp, "completed step %zu not compensated", i);
      if (s == STEP_STATUS_COMPENSATED)
        cr_assert_not_null(comp);
      cr_assert(s != STEP_STATUS_PENDING && s != STEP_STATUS_SCHEDULED &&
                s != STEP_STATUS_COMPENSATING &&
                s != STEP_STATUS_COMPENSATION_FAILED);
    }
    cr_assert_eq(st->status == SAGA_STATUS_CANCELLED, st->cancel_requested);
  }
}

static struct {
  int status[SAGA_STATUS_CANCELLED + 1];
  int events[SAGA_EV__COUNT];
  int parallel, by_fallback;
} coverage;

static void drive_one(uint64_t seed) {
  uint64_t r = seed * 2654435761u + 1;
  driver dv;
  memset(&dv, 0, sizeof(dv));
  dv.wf = random_wf(&r);
  flatten(dv.wf->steps, dv.wf->n_steps, dv.flat, &dv.n_flat);
  dv.rng.s = seed + 1;
  dv.now = T0;
  saga_state_init(&dv.st);
  saga_decision d;
  cr_assert_eq(saga_decide_start(dv.wf, "sid", "{\"n\":3}", NULL, NULL, dv.now,
                                 &dv.rng, &d),
               SK_OK);
  take(&dv, &d);
  cr_assert_eq(dv.st.n_steps, dv.n_flat);
  int operator_moves = 0, max_moves = pick(&r, 5);
  for (dv.iter = 0; dv.iter < 3000; dv.iter++) {
    dv.now += pick(&r, 400);
    saga_status s = dv.st.status;
    bool stuck = s == SAGA_STATUS_PAUSED || s == SAGA_STATUS_FAILED;
    if (stuck && operator_moves >= max_moves)
      break;
    if (!stuck && saga_status_settled(s))
      break;
    if (stuck || (chance(&r, 4) && operator_moves < max_moves &&
                  !dv.st.cancel_requested)) {
      operator_moves++;
      operator_action(&dv, &r);
      continue;
    }
    cr_assert(dv.n_pending > 0,
              "running saga with nothing in flight (status %s)",
              saga_status_name(s));
    if (chance(&r, 10) && breaker_open(&dv, &r))
      continue;
    send_result(&dv, &r);
  }
  cr_assert(saga_status_settled(dv.st.status), "saga did not settle");
  if (dv.st.phase == SAGA_PHASE_DONE && chance(&r, 20)) {
    cr_assert_eq(saga_decide_link(&dv.st, "new-run", "op", dv.now, &d), SK_OK);
    take(&dv, &d);
  }
  check_final(&dv);
  coverage.status[dv.st.status]++;
  for (size_t i = 0; i < dv.n_flat; i++) {
    coverage.parallel += dv.flat[i]->n_branches > 0;
    coverage.by_fallback += dv.st.steps[i].by_fallback;
  }
  for (size_t i = 0; i < dv.n_log; i++)
    coverage.events[dv.log[i].type]++;
  for (size_t i = 0; i < dv.n_log; i++)
    saga_event_clear(&dv.log[i]);
  free(dv.log);
  while (dv.n_pending > 0)
    drop_pending(&dv, 0);
  saga_state_clear(&dv.st);
  def_workflow_unref(dv.wf);
}

Test(random, thousands_of_sagas, .timeout = 600) {
  for (uint64_t seed = 1; seed <= 3000; seed++)
    drive_one(seed);
  /* The driver must reach every ending and every event the decider makes
   * (Replayed new_run is the caller's, not the decider's). */
  for (int i = SAGA_STATUS_COMPLETED; i <= SAGA_STATUS_CANCELLED; i++) {
    cr_log_info("%s: %d", saga_status_name((saga_status)i), coverage.status[i]);
    cr_expect_gt(coverage.status[i], 20, "%s reached too rarely",
                 saga_status_name((saga_status)i));
  }
  for (int i = 0; i < SAGA_EV__COUNT; i++) {
    cr_log_info("%s: %d", saga_event_name((saga_event_type)i),
                coverage.events[i]);
    cr_expect_gt(coverage.events[i], 20, "%s emitted too rarely",
                 saga_event_name((saga_event_type)i));
  }
  cr_expect_gt(coverage.parallel, 200, "too few parallel groups");
  cr_expect_gt(coverage.by_fallback, 50, "too few steps done by fallback");
  cr_expect_gt(breaker_moves, 50, "too few breaker openings");
}
