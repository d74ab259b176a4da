/*
 * test_replay.c — replaying sagas that need an operator, through the SDK,
 * on a real PostgreSQL:
 *   paused      → resumes at the failed step, or an earlier one with a
 *                 corrected input;
 *   failed      → the stuck compensation is retried;
 *   compensated → a new run with a corrected input, linked both ways;
 *   anything else, or options that do not fit → refused, nothing written.
 */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <skald/skald.h>

#include "pgtest.h"

static char db[512];
static sk_engine *e;
static atomic_bool charge_fails;   /* "charge" fails (non-retryable) */
static atomic_bool refund_fails;   /* "refund" fails (non-retryable) */
static char last_charge_input[512];

static atomic_int reserve_runs;

static int ok(const sk_task *t, sk_task_result *r, void *ud) {
  if (strcmp(t->step, "reserve") == 0 && !t->is_compensation)
    atomic_fetch_add(&reserve_runs, 1);
  return sk_result_ok(r, "{\"done\": true}");
}

static int charge(const sk_task *t, sk_task_result *r, void *ud) {
  snprintf(last_charge_input, sizeof(last_charge_input), "%s", t->input);
  if (atomic_load(&charge_fails) || strstr(t->input, "\"bad\"") != NULL)
    return sk_result_error(r, "Declined", "declined", false);
  return sk_result_ok(r, "{\"charged\": true}");
}

static int refund(const sk_task *t, sk_task_result *r, void *ud) {
  if (atomic_load(&refund_fails))
    return sk_result_error(r, "RefundBroken", "refunds are down", false);
  return sk_result_ok(r, "{\"refunded\": true}");
}

static void add_workflow(const char *name, bool pause) {
  sk_workflow *wf = NULL;
  cr_assert_eq(sk_workflow_new(name, 1, &wf), SK_OK);
  if (pause)
    cr_assert_eq(sk_workflow_set_on_failure(wf, SK_ON_FAILURE_PAUSE), SK_OK);
  cr_assert_eq(sk_workflow_add_step(wf, "reserve", "ok"), SK_OK);
  cr_assert_eq(sk_workflow_step_compensate(wf, "reserve", "refund", NULL),
               SK_OK);
  cr_assert_eq(sk_workflow_add_step(wf, "charge", "charge"), SK_OK);
  cr_assert_eq(sk_workflow_add_step(wf, "notify", "ok"), SK_OK);
  sk_error err = {0};
  cr_assert_eq(sk_engine_register_workflow(e, wf, &err), SK_OK, "%s",
               err.message);
  sk_workflow_free(wf);
}

static void setup(void) {
  cr_assert_eq(pgtest_fresh_db(db, sizeof(db)), 0);
  sk_engine_options o;
  sk_engine_options_init(&o);
  o.database_url = db;
  o.poll_interval_ms = 100;
  o.log_level = 1;
  sk_error err = {0};
  cr_assert_eq(sk_engine_open(&o, &e, &err), SK_OK, "%s", err.message);
  cr_assert_eq(sk_engine_register_task(e, "ok", ok, NULL), SK_OK);
  cr_assert_eq(sk_engine_register_task(e, "charge", charge, NULL), SK_OK);
  cr_assert_eq(sk_engine_register_task(e, "refund", refund, NULL), SK_OK);
  add_workflow("pay_pause", true);
  add_workflow("pay", false);
  cr_assert_eq(sk_engine_start(e), SK_OK);
  atomic_store(&charge_fails, false);
  atomic_store(&refund_fails, false);
}

static void teardown(void) {
  sk_engine_close(e);
  pgtest_drop_db(db);
}

static sk_status run(const char *wf, const char *input, char id[SK_ID_LEN]) {
  sk_error err = {0};
  cr_assert_eq(sk_run_start(e, wf, input, NULL, id, NULL, &err), SK_OK, "%s",
               err.message);
  sk_status st;
  cr_assert_eq(sk_saga_wait(e, id, 20000, &st), SK_OK);
  return st;
}

Test(replay, paused_resumes_at_the_failed_step, .init = setup,
     .fini = teardown, .timeout = 60) {
  char id[SK_ID_LEN];
  atomic_store(&charge_fails, true);
  cr_assert_eq(run("pay_pause", "{}", id), SK_STATUS_PAUSED);
  atomic_store(&charge_fails, false);
  char new_id[SK_ID_LEN];
  sk_error err = {0};
  cr_assert_eq(sk_saga_replay(e, id, NULL, new_id, &err), SK_OK, "%s",
               err.message);
  cr_assert_str_eq(new_id, "", "an in-place replay starts no new saga");
  sk_status st;
  cr_assert_eq(sk_saga_wait(e, id, 20000, &st), SK_OK);
  cr_assert_eq(st, SK_STATUS_COMPLETED);
  cr_assert_eq(pgtest_scalar(db, "SELECT count(*) FROM saga_events WHERE "
                                 "type = 'Replayed'"),
               1);
}

Test(replay, paused_resumes_with_a_corrected_step_input, .init = setup,
     .fini = teardown, .timeout = 60) {
  char id[SK_ID_LEN];
  cr_assert_eq(run("pay_pause", "{\"card\": \"bad\"}", id), SK_STATUS_PAUSED);
  sk_replay_options ro = {.from_step = "charge",
                          .step_input = "{\"card\": \"good\"}"};
  sk_error err = {0};
  cr_assert_eq(sk_saga_replay(e, id, &ro, NULL, &err), SK_OK, "%s",
               err.message);
  sk_status st;
  cr_assert_eq(sk_saga_wait(e, id, 20000, &st), SK_OK);
  cr_assert_eq(st, SK_STATUS_COMPLETED);
  cr_assert(strstr(last_charge_input, "good") != NULL,
            "the corrected input was not used: %s", last_charge_input);
}

Test(replay, paused_resumes_from_an_earlier_step, .init = setup,
     .fini = teardown, .timeout = 60) {
  char id[SK_ID_LEN];
  atomic_store(&reserve_runs, 0);
  atomic_store(&charge_fails, true);
  cr_assert_eq(run("pay_pause", "{}", id), SK_STATUS_PAUSED);
  cr_assert_eq(atomic_load(&reserve_runs), 1);
  atomic_store(&charge_fails, false);
  sk_replay_options ro = {.from_step = "reserve"};
  sk_error err = {0};
  cr_assert_eq(sk_saga_replay(e, id, &ro, NULL, &err), SK_OK, "%s",
               err.message);
  sk_status st;
  cr_assert_eq(sk_saga_wait(e, id, 20000, &st), SK_OK);
  cr_assert_eq(st, SK_STATUS_COMPLETED);
  cr_assert_eq(atomic_load(&reserve_runs), 2, "reserve ran again");
}

Test(replay, failed_retries_the_stuck_compensation, .init = setup,
     .fini = teardown, .timeout = 60) {
  char id[SK_ID_LEN];
  atomic_store(&charge_fails, true);
  atomic_store(&refund_fails, true);
  cr_assert_eq(run("pay", "{}", id), SK_STATUS_FAILED);
  atomic_store(&refund_fails, false);
  sk_error err = {0};
  cr_assert_eq(sk_saga_replay(e, id, NULL, NULL, &err), SK_OK, "%s",
               err.message);
  sk_status st;
  cr_assert_eq(sk_saga_wait(e, id, 20000, &st), SK_OK);
  cr_assert_eq(st, SK_STATUS_COMPENSATED);
}

Test(replay, compensated_starts_a_linked_new_run, .init = setup,
     .fini = teardown, .timeout = 60) {
  char id[SK_ID_LEN];
  cr_assert_eq(run("pay", "{\"card\": \"bad\"}", id), SK_STATUS_COMPENSATED);
  sk_replay_options ro = {.input = "{\"card\": \"good\"}"};
  char new_id[SK_ID_LEN];
  sk_error err = {0};
  cr_assert_eq(sk_saga_replay(e, id, &ro, new_id, &err), SK_OK, "%s",
               err.message);
  cr_assert_neq(strcmp(new_id, id), 0);
  cr_assert_eq(strlen(new_id), 36);
  sk_status st;
  cr_assert_eq(sk_saga_wait(e, new_id, 20000, &st), SK_OK);
  cr_assert_eq(st, SK_STATUS_COMPLETED);
  char *old_view = NULL, *new_view = NULL;
  cr_assert_eq(sk_saga_get_json(e, id, &old_view), SK_OK);
  cr_assert_eq(sk_saga_get_json(e, new_id, &new_view), SK_OK);
  cr_assert(strstr(old_view, new_id) != NULL, "old saga not linked: %s",
            old_view);
  cr_assert(strstr(new_view, id) != NULL, "new saga not linked: %s",
            new_view);
  cr_assert(strstr(new_view, "good") != NULL);
  sk_free(old_view);
  sk_free(new_view);
  sk_status old_st;
  cr_assert_eq(sk_saga_status(e, id, &old_st), SK_OK);
  cr_assert_eq(old_st, SK_STATUS_COMPENSATED, "the old saga stays as it was");
}

Test(replay, refused_when_nothing_to_replay_or_options_do_not_fit,
     .init = setup, .fini = teardown, .timeout = 60) {
  char done[SK_ID_LEN], comp[SK_ID_LEN], paused[SK_ID_LEN];
  cr_assert_eq(run("pay", "{}", done), SK_STATUS_COMPLETED);
  cr_assert_eq(run("pay", "{\"card\": \"bad\"}", comp), SK_STATUS_COMPENSATED);
  cr_assert_eq(run("pay_pause", "{\"card\": \"bad\"}", paused),
               SK_STATUS_PAUSED);
  long long before = pgtest_scalar(db, "SELECT count(*) FROM saga_events");
  sk_error err = {0};
  cr_assert_eq(sk_saga_replay(e, done, NULL, NULL, &err), SK_ESTATE);
  cr_assert(strstr(err.message, "completed") != NULL, "%s", err.message);
  sk_replay_options from = {.from_step = "charge"};
  cr_assert_eq(sk_saga_replay(e, comp, &from, NULL, &err), SK_EINVAL);
  sk_replay_options input = {.input = "{\"x\": 1}"};
  cr_assert_eq(sk_saga_replay(e, paused, &input, NULL, &err), SK_EINVAL);
  sk_replay_options later = {.from_step = "notify"};
  cr_assert_eq(sk_saga_replay(e, paused, &later, NULL, &err), SK_EINVAL,
               "from_step after the failed step");
  sk_replay_options unknown = {.from_step = "nope"};
  cr_assert_eq(sk_saga_replay(e, paused, &unknown, NULL, &err), SK_EINVAL);
  sk_replay_options badjson = {.step_input = "{nope"};
  cr_assert_eq(sk_saga_replay(e, paused, &badjson, NULL, &err), SK_EJSON);
  cr_assert_eq(sk_saga_replay(e, "not-a-uuid", NULL, NULL, &err), SK_EINVAL);
  cr_assert_eq(sk_saga_replay(e, "01a204e1-9412-7b73-90e7-648b94a1e298", NULL,
                              NULL, &err),
               SK_ENOENT);
  cr_assert_eq(pgtest_scalar(db, "SELECT count(*) FROM saga_events"), before,
               "a refused replay wrote events");
}
