/*
 * test_breaker_fallback.c — a fallback with on_breaker_open runs at once
 * when its step's circuit breaker is open (workflow-spec.md "Fallback"),
 * through the whole engine on a real PostgreSQL: the primary fails twice,
 * its breaker opens, and the waiting retry goes to the fallback instead of
 * waiting out the breaker or spending the remaining attempts. A step
 * without such a fallback just waits.
 */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <skald/skald.h>

#include "common/clock.h"
#include "pgtest.h"

static char db[512];
static sk_engine *e;
static atomic_int primary_calls;

static void setup(void) {
  cr_assert_eq(pgtest_fresh_db(db, sizeof(db)), 0);
  sk_engine_options o;
  sk_engine_options_init(&o);
  o.database_url = db;
  o.poll_interval_ms = 100;
  o.breaker_failure_threshold = 2;
  o.breaker_open_ms = 10000; /* far longer than the test waits */
  o.log_level = 1;
  sk_error err = {0};
  cr_assert_eq(sk_engine_open(&o, &e, &err), SK_OK, "%s", err.message);
  atomic_store(&primary_calls, 0);
}

static void teardown(void) {
  sk_engine_close(e);
  pgtest_drop_db(db);
}

static int flaky(const sk_task *t, sk_task_result *r, void *ud) {
  atomic_fetch_add(&primary_calls, 1);
  return sk_result_error(r, "Unavailable", "the pricing service is down",
                         true);
}

static int cached(const sk_task *t, sk_task_result *r, void *ud) {
  return sk_result_ok(r, "{\"price\":42,\"source\":\"cache\"}");
}

static void register_json(const char *spec) {
  sk_workflow *wf = NULL;
  sk_error err = {0};
  cr_assert_eq(sk_workflow_from_json(spec, &wf, NULL, &err), SK_OK, "%s",
               err.message);
  cr_assert_eq(sk_engine_register_workflow(e, wf, &err), SK_OK, "%s (%s)",
               err.message, err.path);
  sk_workflow_free(wf);
}

Test(breaker_fallback, an_open_breaker_runs_the_fallback_at_once,
     .init = setup, .fini = teardown, .timeout = 60) {
  cr_assert_eq(sk_engine_register_task(e, "price.live", flaky, NULL), SK_OK);
  cr_assert_eq(sk_engine_register_task(e, "price.cached", cached, NULL),
               SK_OK);
  register_json("{\"name\":\"quote\",\"version\":1,\"steps\":[{\"name\":"
                "\"price\",\"task\":\"price.live\",\"retry\":{\"max_attempts\":"
                "10,\"initial_interval_ms\":50,\"backoff_coefficient\":1,"
                "\"jitter\":0},\"fallback\":{\"task\":\"price.cached\","
                "\"on_breaker_open\":true}}]}");
  cr_assert_eq(sk_engine_start(e), SK_OK);
  char id[SK_ID_LEN];
  sk_error err = {0};
  int64_t t0 = clock_mono_ms();
  cr_assert_eq(sk_run_start(e, "quote", "{}", NULL, id, NULL, &err), SK_OK);
  sk_status st;
  cr_assert_eq(sk_saga_wait(e, id, 8000, &st), SK_OK,
               "the saga waited for the breaker instead of its fallback");
  cr_assert_eq(st, SK_STATUS_COMPLETED);
  cr_assert_lt(clock_mono_ms() - t0, 8000);
  cr_assert_eq(atomic_load(&primary_calls), 2,
               "attempts were spent on an open breaker: %d",
               atomic_load(&primary_calls));
  char sql[256];
  snprintf(sql, sizeof(sql),
           "SELECT count(*) FROM saga_events WHERE saga_id = '%s' AND type = "
           "'StepFailed' AND payload->'error'->>'type' = 'BreakerOpen'",
           id);
  cr_assert_eq(pgtest_scalar(db, sql), 1, "no BreakerOpen event");
  char *view = NULL;
  cr_assert_eq(sk_saga_get_json(e, id, &view), SK_OK);
  cr_assert(strstr(view, "cache") != NULL, "fallback output missing: %s",
            view);
  sk_free(view);
  cr_assert_eq(pgtest_scalar(db, "SELECT count(*) FROM tasks"), 0,
               "the waiting forward task was not dropped");
}

Test(breaker_fallback, without_such_a_fallback_the_step_waits,
     .init = setup, .fini = teardown, .timeout = 60) {
  cr_assert_eq(sk_engine_register_task(e, "price.live", flaky, NULL), SK_OK);
  cr_assert_eq(sk_engine_register_task(e, "price.cached", cached, NULL),
               SK_OK);
  register_json("{\"name\":\"quote2\",\"version\":1,\"steps\":[{\"name\":"
                "\"price\",\"task\":\"price.live\",\"retry\":{\"max_attempts\":"
                "10,\"initial_interval_ms\":50,\"backoff_coefficient\":1,"
                "\"jitter\":0},\"fallback\":{\"task\":\"price.cached\"}}]}");
  cr_assert_eq(sk_engine_start(e), SK_OK);
  char id[SK_ID_LEN];
  cr_assert_eq(sk_run_start(e, "quote2", "{}", NULL, id, NULL, NULL), SK_OK);
  sk_status st;
  cr_assert_eq(sk_saga_wait(e, id, 1500, &st), SK_ETIMEDOUT);
  cr_assert_eq(st, SK_STATUS_RUNNING, "the step waits for the breaker");
  cr_assert_eq(atomic_load(&primary_calls), 2, "no attempt while open");
}
