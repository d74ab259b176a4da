/*
 * test_parallel_flow.c — parallel groups and fallbacks through the whole
 * engine (decider, group commit, queue, bulkheads) on a real PostgreSQL:
 *   - branches run concurrently and join; later steps see branch outputs;
 *   - a branch failing for good stops its siblings and compensates every
 *     completed step of every branch, newest first by completion;
 *   - a fallback completes a failed step and the saga goes on.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <skald/skald.h>

#include "pgtest.h"

static char db[512];
static sk_engine *e;
static atomic_int running, max_running;
static char last_input[512];

static void setup(void) {
  cr_assert_eq(pgtest_fresh_db(db, sizeof(db)), 0);
  sk_engine_options o;
  sk_engine_options_init(&o);
  o.database_url = db;
  o.poll_interval_ms = 100;
  o.default_concurrency = 8;
  o.log_level = 1;
  sk_error err = {0};
  cr_assert_eq(sk_engine_open(&o, &e, &err), SK_OK, "%s", err.message);
  atomic_store(&running, 0);
  atomic_store(&max_running, 0);
}

static void teardown(void) {
  sk_engine_close(e);
  pgtest_drop_db(db);
}

/* Sleeps 150 ms, tracking how many run at once; fails on "fail":true in
 * its input, or when the saga was cancelled. */
static int work(const sk_task *t, sk_task_result *r, void *ud) {
  int now = atomic_fetch_add(&running, 1) + 1;
  int seen = atomic_load(&max_running);
  while (now > seen && !atomic_compare_exchange_weak(&max_running, &seen, now))
    ;
  if (strcmp(t->step, "after") == 0)
    snprintf(last_input, sizeof(last_input), "%s", t->input);
  for (int i = 0; i < 15 && !sk_task_cancelled(t); i++)
    usleep(10000);
  atomic_fetch_sub(&running, 1);
  cJSON *in = cJSON_Parse(t->input);
  bool fail = cJSON_IsTrue(cJSON_GetObjectItem(in, "fail"));
  cJSON_Delete(in);
  if (fail && !t->is_compensation)
    return sk_result_error(r, "Broken", "this step always fails", false);
  char out[96];
  snprintf(out, sizeof(out), "{\"by\":\"%s\"}", t->step);
  return sk_result_ok(r, out);
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

static sk_status run(const char *wf, const char *input, char id[SK_ID_LEN]) {
  sk_error err = {0};
  cr_assert_eq(sk_run_start(e, wf, input, NULL, id, NULL, &err), SK_OK, "%s",
               err.message);
  sk_status st;
  cr_assert_eq(sk_saga_wait(e, id, 30000, &st), SK_OK);
  return st;
}

static const char *GROUP =
    "{\"name\":\"fanout\",\"version\":1,\"steps\":["
    "{\"name\":\"before\",\"task\":\"w\",\"compensate\":{\"task\":\"w\"}},"
    "{\"name\":\"group\",\"parallel\":["
    " [{\"name\":\"a1\",\"task\":\"w\",\"compensate\":{\"task\":\"w\"}},"
    "  {\"name\":\"a2\",\"task\":\"w\",\"compensate\":{\"task\":\"w\"}}],"
    " [{\"name\":\"b1\",\"task\":\"w\",\"compensate\":{\"task\":\"w\"}},"
    "  {\"name\":\"b2\",\"task\":\"w\",\"input\":{\"fail\":\"${input.fail}\"},"
    "   \"compensate\":{\"task\":\"w\"}}]]},"
    "{\"name\":\"after\",\"task\":\"w\","
    " \"input\":{\"a\":\"${steps.a2.output.by}\",\"b\":\"${steps.b1.output.by}\"}}]}";

Test(parallel_flow, branches_run_together_and_join, .init = setup,
     .fini = teardown, .timeout = 60) {
  cr_assert_eq(sk_engine_register_task(e, "w", work, NULL), SK_OK);
  register_json(GROUP);
  cr_assert_eq(sk_engine_start(e), SK_OK);
  char id[SK_ID_LEN];
  cr_assert_eq(run("fanout", "{\"fail\":false}", id), SK_STATUS_COMPLETED);
  cr_assert_geq(atomic_load(&max_running), 2, "branches did not overlap");
  cJSON *in = cJSON_Parse(last_input);
  cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(in, "a")), "a2",
                   "branch outputs did not reach the next step: %s",
                   last_input);
  cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(in, "b")), "b1");
  cJSON_Delete(in);
}

Test(parallel_flow, a_failing_branch_compensates_everything_newest_first,
     .init = setup, .fini = teardown, .timeout = 60) {
  cr_assert_eq(sk_engine_register_task(e, "w", work, NULL), SK_OK);
  register_json(GROUP);
  cr_assert_eq(sk_engine_start(e), SK_OK);
  char id[SK_ID_LEN];
  cr_assert_eq(run("fanout", "{\"fail\":true}", id), SK_STATUS_COMPENSATED);
  /* Every completed forward step was compensated, in the reverse order of
   * the seqs of their completions. */
  char sql[600];
  snprintf(sql, sizeof(sql),
           "SELECT count(*) FROM (SELECT c.seq AS cs, f.seq AS fs, "
           "  lag(f.seq) OVER (ORDER BY c.seq) AS prev_fs "
           "  FROM saga_events c JOIN saga_events f ON f.saga_id = c.saga_id "
           "  AND f.step = c.step AND f.type = 'StepCompleted' "
           "  WHERE c.saga_id = '%s' AND c.type = 'CompensationCompleted') x "
           "WHERE prev_fs IS NOT NULL AND fs > prev_fs",
           id);
  cr_assert_eq(pgtest_scalar(db, sql), 0, "a compensation out of order");
  snprintf(sql, sizeof(sql),
           "SELECT (SELECT count(*) FROM saga_events WHERE saga_id = '%1$s' "
           "AND type = 'StepCompleted' AND step IN (SELECT step FROM "
           "saga_events WHERE saga_id = '%1$s' AND type = 'StepCompleted' "
           "AND payload->'output' ? 'by')) - (SELECT count(*) FROM "
           "saga_events WHERE saga_id = '%1$s' AND type = "
           "'CompensationCompleted')",
           id);
  cr_assert_eq(pgtest_scalar(db, sql), 0,
               "completed steps and compensations differ");
  cr_assert_eq(pgtest_scalar(db, "SELECT count(*) FROM tasks"), 0);
}

static int always_fail(const sk_task *t, sk_task_result *r, void *ud) {
  return sk_result_error(r, "Down", "the primary is down", false);
}

static int cached(const sk_task *t, sk_task_result *r, void *ud) {
  return sk_result_ok(r, "{\"price\":42,\"source\":\"cache\"}");
}

Test(parallel_flow, fallback_completes_a_failed_step, .init = setup,
     .fini = teardown, .timeout = 60) {
  cr_assert_eq(sk_engine_register_task(e, "w", work, NULL), SK_OK);
  cr_assert_eq(sk_engine_register_task(e, "price.live", always_fail, NULL),
               SK_OK);
  cr_assert_eq(sk_engine_register_task(e, "price.cached", cached, NULL),
               SK_OK);
  register_json("{\"name\":\"quote\",\"version\":1,\"steps\":["
                "{\"name\":\"price\",\"task\":\"price.live\","
                " \"fallback\":{\"task\":\"price.cached\"}},"
                "{\"name\":\"after\",\"task\":\"w\","
                " \"input\":{\"p\":\"${steps.price.output.price}\"}}]}");
  cr_assert_eq(sk_engine_start(e), SK_OK);
  char id[SK_ID_LEN];
  cr_assert_eq(run("quote", "{}", id), SK_STATUS_COMPLETED);
  cr_assert(strstr(last_input, "42") != NULL,
            "the fallback's output did not become the step's: %s", last_input);
  char *view = NULL;
  cr_assert_eq(sk_saga_get_json(e, id, &view), SK_OK);
  cr_assert(strstr(view, "\"by_fallback\": true") != NULL ||
                strstr(view, "\"by_fallback\":true") != NULL,
            "the view does not say the step completed by fallback: %s", view);
  sk_free(view);
}
