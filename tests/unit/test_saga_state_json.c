/*
 * test_saga_state_json.c — the canonical JSON of a saga state: exact text,
 * key order, embedded JSON values, escaping, exact round trips, and the
 * refusals of malformed documents.
 */
#include <criterion/criterion.h>

#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "saga/saga.h"

static char *to_json(const saga_state *st) {
  char *s = NULL;
  cr_assert_eq(saga_state_to_json(st, &s), SK_OK);
  return s;
}

/* from_json(text) then to_json must give text back. */
static void expect_round_trip(const char *text) {
  saga_state st;
  cr_assert_eq(saga_state_from_json(text, &st), SK_OK, "%s", text);
  char *back = to_json(&st);
  cr_expect_str_eq(back, text);
  free(back);
  saga_state_clear(&st);
}

Test(state_json, init_state_exact_text) {
  saga_state st;
  saga_state_init(&st);
  char *s = to_json(&st);
  cr_expect_str_eq(
      s,
      "{\"id\":\"\",\"workflow\":null,\"version\":0,\"idempotency_key\":null,"
      "\"status\":\"running\",\"phase\":\"forward\",\"cursor\":-1,\"input\":"
      "null,"
      "\"error\":null,\"output\":null,\"created_ms\":0,\"updated_ms\":0,"
      "\"deadline_ms\":0,\"last_seq\":0,\"cancel_requested\":false,"
      "\"replay_of\":null,\"replayed_by\":null,\"steps\":[]}");
  expect_round_trip(s);
  free(s);
}

static void fill(saga_state *st) {
  saga_state_init(st);
  strcpy(st->id, "6f1c2a4e-0000-4000-8000-000000000001");
  st->workflow = strdup("trip \"booking\"\n");
  st->version = 3;
  st->idempotency_key = strdup("key\\1\x01");
  st->status = SAGA_STATUS_COMPENSATING;
  st->phase = SAGA_PHASE_COMPENSATING;
  st->cursor = 1;
  st->input = strdup("{\"a\":[1,2,{\"b\":null}],\"s\":\"\xc3\xa9\"}");
  st->error =
      strdup("{\"type\":\"Fatal\",\"message\":\"x\",\"retryable\":false}");
  st->created_ms = 1700000000000;
  st->updated_ms = 1700000000123;
  st->deadline_ms = 1700000600000;
  st->last_seq = 9;
  st->cancel_requested = true;
  st->replay_of = strdup("old");
  st->n_steps = 2;
  st->steps = calloc(2, sizeof(saga_step_state));
  st->steps[0].name = strdup("a");
  st->steps[0].status = STEP_STATUS_COMPENSATING;
  st->steps[0].attempts = 2;
  st->steps[0].comp_attempts = 4;
  st->steps[0].output = strdup("{\"id\":7}");
  st->steps[0].error = strdup("{\"type\":\"Flaky\"}");
  st->steps[0].comp_error = strdup("{\"type\":\"Down\"}");
  st->steps[0].input_override = strdup("[true]");
  st->steps[0].by_fallback = true;
  st->steps[0].scheduled_ms = 11;
  st->steps[0].finished_ms = 12;
  st->steps[0].available_at_ms = 13;
  st->steps[0].parent = -1;
  st->steps[0].branch = -1;
  st->steps[0].fb_attempts = 1;
  st->steps[0].finished_seq = 8;
  st->steps[1].name = strdup("b");
  st->steps[1].parent = 0;
  st->steps[1].branch = 1;
  st->steps[1].status = STEP_STATUS_FAILED;
  st->steps[1].output = strdup("\"text\"");
}

static char *to_json_full(const saga_state *st) {
  char *s = NULL;
  cr_assert_eq(saga_state_to_json_full(st, &s), SK_OK);
  return s;
}

/* The stored form leaves out a step's keys that hold the reader's
 * defaults; it reads back to the same state as the full form. */
Test(state_json, stored_form_omits_step_defaults) {
  saga_state st;
  fill(&st);
  char *s = to_json(&st);
  cr_expect(strstr(s, "{\"name\":\"b\",\"status\":\"failed\",\"parent\":0,"
                      "\"branch\":1,\"output\":\"text\"}]}") != NULL,
            "%s", s);
  cr_expect(strstr(s, "\"available_at_ms\":13}") != NULL, "%s", s);
  saga_state a, b;
  cr_assert_eq(saga_state_from_json(s, &a), SK_OK);
  char *full = to_json_full(&st);
  cr_assert_eq(saga_state_from_json(full, &b), SK_OK);
  char *sa = to_json_full(&a), *sb = to_json_full(&b);
  cr_expect_str_eq(sa, sb, "the two forms read back differently");
  cr_expect_str_eq(sa, full);
  char *again = to_json(&a);
  cr_expect_str_eq(again, s, "the stored form is not canonical");
  free(again);
  free(sa);
  free(sb);
  free(full);
  free(s);
  saga_state_clear(&a);
  saga_state_clear(&b);
  saga_state_clear(&st);
}

Test(state_json, full_state_exact_text_and_round_trip) {
  saga_state st;
  fill(&st);
  char *s = to_json_full(&st);
  cr_expect_str_eq(
      s,
      "{\"id\":\"6f1c2a4e-0000-4000-8000-000000000001\","
      "\"workflow\":\"trip \\\"booking\\\"\\n\",\"version\":3,"
      "\"idempotency_key\":\"key\\\\1\\u0001\",\"status\":\"compensating\","
      "\"phase\":\"compensating\",\"cursor\":1,"
      "\"input\":{\"a\":[1,2,{\"b\":null}],\"s\":\"\xc3\xa9\"},"
      "\"error\":{\"type\":\"Fatal\",\"message\":\"x\",\"retryable\":false},"
      "\"output\":null,\"created_ms\":1700000000000,\"updated_ms\":"
      "1700000000123,"
      "\"deadline_ms\":1700000600000,\"last_seq\":9,\"cancel_requested\":true,"
      "\"replay_of\":\"old\",\"replayed_by\":null,\"steps\":["
      "{\"name\":\"a\",\"status\":\"compensating\",\"parent\":-1,"
      "\"branch\":-1,\"attempts\":2,\"comp_attempts\":4,\"fb_attempts\":1,"
      "\"output\":{\"id\":7},\"error\":{\"type\":\"Flaky\"},\"comp_error\":{"
      "\"type\":\"Down\"},"
      "\"input_override\":[true],\"by_fallback\":true,\"scheduled_ms\":11,"
      "\"finished_ms\":12,\"finished_seq\":8,\"available_at_ms\":13},"
      "{\"name\":\"b\",\"status\":\"failed\",\"parent\":0,\"branch\":1,"
      "\"attempts\":0,\"comp_attempts\":0,\"fb_attempts\":0,"
      "\"output\":\"text\",\"error\":null,\"comp_error\":null,\"input_"
      "override\":null,"
      "\"by_fallback\":false,\"scheduled_ms\":0,\"finished_ms\":0,"
      "\"finished_seq\":0,\"available_at_ms\":0}]}");
  saga_state back;
  cr_assert_eq(saga_state_from_json(s, &back), SK_OK);
  cr_expect_str_eq(back.id, st.id);
  cr_expect_str_eq(back.workflow, st.workflow);
  cr_expect_str_eq(back.idempotency_key, st.idempotency_key);
  cr_expect_eq(back.status, SAGA_STATUS_COMPENSATING);
  cr_expect_eq(back.phase, SAGA_PHASE_COMPENSATING);
  cr_expect_eq(back.n_steps, 2);
  cr_expect_str_eq(back.steps[0].output, "{\"id\":7}");
  cr_expect_str_eq(back.steps[0].input_override, "[true]");
  cr_expect_str_eq(back.steps[1].output, "\"text\"");
  cr_expect_null(back.steps[1].error);
  cr_expect(back.steps[0].by_fallback);
  cr_expect_eq(back.steps[0].parent, -1);
  cr_expect_eq(back.steps[1].parent, 0);
  cr_expect_eq(back.steps[1].branch, 1);
  cr_expect_eq(back.steps[0].fb_attempts, 1);
  cr_expect_eq(back.steps[0].finished_seq, 8);
  cr_expect(back.cancel_requested);
  cr_expect_eq(back.deadline_ms, 1700000600000);
  char *again = to_json_full(&back);
  cr_expect_str_eq(again, s);
  free(again);
  free(s);
  saga_state_clear(&back);
  saga_state_clear(&st);
}

Test(state_json, every_status_and_phase_round_trips) {
  for (int s = 0; s <= SAGA_STATUS_CANCELLED; s++) {
    for (int p = 0; p <= SAGA_PHASE_DONE; p++) {
      saga_state st;
      fill(&st);
      st.status = (saga_status)s;
      st.phase = (saga_phase)p;
      st.steps[1].status = (step_status)((s + p) % (STEP_STATUS_SKIPPED + 1));
      char *text = to_json(&st);
      expect_round_trip(text);
      free(text);
      saga_state_clear(&st);
    }
  }
}

Test(state_json, large_and_negative_numbers) {
  saga_state st;
  fill(&st);
  st.last_seq = 9007199254740991LL;
  st.cursor = -1;
  st.created_ms = -5;
  char *text = to_json(&st);
  saga_state back;
  cr_assert_eq(saga_state_from_json(text, &back), SK_OK);
  cr_expect_eq(back.last_seq, 9007199254740991LL);
  cr_expect_eq(back.cursor, -1);
  cr_expect_eq(back.created_ms, -5);
  free(text);
  saga_state_clear(&back);
  saga_state_clear(&st);
}

Test(state_json, malformed_documents) {
  const char *bad[] = {
      "",
      "[]",
      "{\"status\":\"running\",\"phase\":\"forward\"}", /* no steps */
      "{\"status\":\"walking\",\"phase\":\"forward\",\"steps\":[]}",
      "{\"status\":\"running\",\"phase\":\"sideways\",\"steps\":[]}",
      "{\"status\":\"running\",\"phase\":\"forward\",\"steps\":[{}]}",
      "{\"status\":\"running\",\"phase\":\"forward\",\"steps\":[1]}",
      "{\"status\":\"running\",\"phase\":\"forward\",\"steps\":"
      "[{\"name\":\"a\",\"status\":\"nope\"}]}",
      "{\"status\":\"running\",\"phase\":\"forward\",\"steps\":"
      "[{\"name\":\"a\",\"status\":\"pending\",\"attempts\":1.5}]}",
      "{\"status\":\"running\",\"phase\":\"forward\",\"steps\":"
      "[{\"name\":\"a\",\"status\":\"pending\",\"attempts\":99999999999}]}",
      "{\"status\":\"running\",\"phase\":\"forward\",\"steps\":[],\"last_seq\":"
      "\"1\"}",
      "{\"status\":\"running\",\"phase\":\"forward\",\"steps\":[],\"last_seq\":"
      "1e300}",
      "{\"status\":\"running\",\"phase\":\"forward\",\"steps\":[],\"workflow\":"
      "5}",
      "{\"status\":\"running\",\"phase\":\"forward\",\"steps\":[],\"cancel_"
      "requested\":1}",
      "{\"status\":\"running\",\"phase\":\"forward\",\"steps\":[],\"id\":"
      "\"0123456789012345678901234567890123456789\"}",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
    saga_state st;
    cr_expect_eq(saga_state_from_json(bad[i], &st), SK_EJSON, "case %zu", i);
    cr_expect_null(st.steps);
    cr_expect_null(st.workflow);
  }
  saga_state st;
  cr_expect_eq(saga_state_from_json(NULL, &st), SK_EINVAL);
  char *out;
  cr_expect_eq(saga_state_to_json(NULL, &out), SK_EINVAL);
}

/* Embedded JSON values come back as compact cJSON text (the form evolve
 * stores), so a non-canonical document is normalised once. */
Test(state_json, embedded_values_are_normalised) {
  saga_state st;
  cr_assert_eq(
      saga_state_from_json(
          "{ \"status\" : \"running\", \"phase\":\"forward\", \"steps\":[],"
          " \"input\": { \"s\" : \"\\u00e9\", \"n\" : [ 1 , 2 ] } }",
          &st),
      SK_OK);
  cr_expect_str_eq(st.input, "{\"s\":\"\xc3\xa9\",\"n\":[1,2]}");
  char *text = to_json(&st);
  expect_round_trip(text);
  free(text);
  saga_state_clear(&st);
}

Test(state_json, absent_optional_keys_take_defaults) {
  saga_state st;
  cr_assert_eq(saga_state_from_json(
                   "{\"status\":\"paused\",\"phase\":\"forward\",\"steps\":"
                   "[{\"name\":\"x\",\"status\":\"failed\"}]}",
                   &st),
               SK_OK);
  cr_expect_eq(st.status, SAGA_STATUS_PAUSED);
  cr_expect_eq(st.steps[0].parent, -1); /* top level unless told */
  cr_expect_eq(st.steps[0].branch, -1);
  cr_expect_eq(st.cursor, -1);
  cr_expect_eq(st.n_steps, 1);
  cr_expect_eq(st.steps[0].status, STEP_STATUS_FAILED);
  cr_expect_null(st.steps[0].output);
  saga_state_clear(&st);
}

Test(state_json, equal_states_equal_bytes) {
  saga_state a, b;
  fill(&a);
  fill(&b);
  char *x = to_json(&a), *y = to_json(&b);
  cr_expect_str_eq(x, y);
  b.steps[1].attempts = 1;
  char *z = to_json(&b);
  cr_expect_str_neq(x, z);
  free(x);
  free(y);
  free(z);
  saga_state_clear(&a);
  saga_state_clear(&b);
}
