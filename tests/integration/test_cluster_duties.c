/*
 * test_cluster_duties.c — what the cluster does beyond running steps, on a
 * real PostgreSQL:
 *   - a GPU step that fits no live node waits, and its saga view says why;
 *   - the singleton duties (one node at a time, through a session advisory
 *     lock) forget dead nodes and, with a retention, purge old finished
 *     sagas while keeping the ones that need an operator;
 *   - when the node holding the duties goes away, another takes them over.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <skald/skald.h>

#include "pgtest.h"

static char db[512];

static void setup(void) { cr_assert_eq(pgtest_fresh_db(db, sizeof(db)), 0); }
static void teardown(void) { pgtest_drop_db(db); }

static int ok(const sk_task *t, sk_task_result *r, void *ud) {
  return sk_result_ok(r, "{}");
}

static int broken(const sk_task *t, sk_task_result *r, void *ud) {
  return sk_result_error(r, "Broken", "always", false);
}

static sk_engine *open_engine(const char *node, int retention_days) {
  sk_engine_options o;
  sk_engine_options_init(&o);
  o.database_url = db;
  o.node_name = node;
  o.lease_ttl_ms = 600; /* renewals (and duty tries) every 200 ms */
  o.poll_interval_ms = 100;
  o.retention_days = retention_days;
  o.log_level = 1;
  o.allow_unknown_task_types = true;
  sk_engine *e = NULL;
  sk_error err = {0};
  cr_assert_eq(sk_engine_open(&o, &e, &err), SK_OK, "%s", err.message);
  return e;
}

static void register_json(sk_engine *e, const char *spec) {
  sk_workflow *wf = NULL;
  sk_error err = {0};
  cr_assert_eq(sk_workflow_from_json(spec, &wf, NULL, &err), SK_OK, "%s",
               err.message);
  cr_assert_eq(sk_engine_register_workflow(e, wf, &err), SK_OK, "%s",
               err.message);
  sk_workflow_free(wf);
}

/* Polls sql until it yields want (or the deadline passes); returns it. */
static long long await_scalar(const char *sql, long long want, int ms) {
  long long v = pgtest_scalar(db, sql);
  for (int i = 0; i < ms / 100 && v != want; i++) {
    usleep(100000);
    v = pgtest_scalar(db, sql);
  }
  return v;
}

Test(cluster, a_gpu_step_that_fits_nowhere_waits_and_says_why,
     .init = setup, .fini = teardown, .timeout = 60) {
  setenv("SKALD_GPU_PROVIDER", "none", 1);
  sk_engine *e = open_engine("no-gpus", 0);
  cr_assert_eq(sk_engine_register_task(e, "train", ok, NULL), SK_OK);
  register_json(e, "{\"name\":\"gpu_job\",\"version\":1,\"steps\":[{\"name\":"
                   "\"train\",\"task\":\"train\",\"resources\":{\"gpus\":2,"
                   "\"gpu_memory_mb\":16000}}]}");
  cr_assert_eq(sk_engine_start(e), SK_OK);
  char id[SK_ID_LEN];
  cr_assert_eq(sk_run_start(e, "gpu_job", "{}", NULL, id, NULL, NULL), SK_OK);
  sk_status st;
  cr_assert_eq(sk_saga_wait(e, id, 1500, &st), SK_ETIMEDOUT,
               "a GPU step ran on a node without GPUs");
  char *view = NULL;
  cr_assert_eq(sk_saga_get_json(e, id, &view), SK_OK);
  cr_assert(strstr(view, "no live node has 2 healthy GPU(s) with 16000 MB") !=
                NULL,
            "the view does not say why the step waits: %s", view);
  sk_free(view);
  sk_engine_close(e);
  unsetenv("SKALD_GPU_PROVIDER");
}

Test(cluster, duties_forget_dead_nodes_and_purge_old_sagas, .init = setup,
     .fini = teardown, .timeout = 120) {
  sk_engine *e = open_engine("keeper", 1);
  cr_assert_eq(sk_engine_register_task(e, "ok", ok, NULL), SK_OK);
  cr_assert_eq(sk_engine_register_task(e, "broken", broken, NULL), SK_OK);
  register_json(e, "{\"name\":\"done\",\"version\":1,\"steps\":[{\"name\":"
                   "\"a\",\"task\":\"ok\"}]}");
  register_json(e, "{\"name\":\"stuck\",\"version\":1,\"on_failure\":\"pause\","
                   "\"steps\":[{\"name\":\"a\",\"task\":\"broken\"}]}");
  cr_assert_eq(sk_engine_start(e), SK_OK);
  char done[SK_ID_LEN], stuck[SK_ID_LEN];
  sk_status st;
  cr_assert_eq(sk_run_start(e, "done", "{}", NULL, done, NULL, NULL), SK_OK);
  cr_assert_eq(sk_run_start(e, "stuck", "{}", NULL, stuck, NULL, NULL), SK_OK);
  cr_assert_eq(sk_saga_wait(e, done, 10000, &st), SK_OK);
  cr_assert_eq(sk_saga_wait(e, stuck, 10000, &st), SK_OK);
  cr_assert_eq(st, SK_STATUS_PAUSED);
  /* Age both as retention sees them: finished two days ago, and created
   * before that (ids are UUIDv7: their first 48 bits are the creation
   * time in ms, which bounds retention's scan). */
  pgtest_exec(db, "UPDATE sagas SET updated_at = now() - interval '2 days'");
  char aged[SK_ID_LEN];
  unsigned long long ms =
      (unsigned long long)time(NULL) * 1000ULL - 3ULL * 86400000ULL;
  snprintf(aged, sizeof(aged), "%08llx-%04llx%s", ms >> 16, ms & 0xffff,
           done + 13);
  char move[600];
  snprintf(move, sizeof(move),
           "UPDATE saga_events SET saga_id = '%s' WHERE saga_id = '%s'; "
           "UPDATE saga_idempotency SET saga_id = '%s' WHERE saga_id = '%s'; "
           "UPDATE sagas SET id = '%s' WHERE id = '%s'",
           aged, done, aged, done, aged, done);
  pgtest_exec(db, move);
  memcpy(done, aged, sizeof(done));
  pgtest_exec(db, "INSERT INTO nodes (name, heartbeat_at) VALUES ('ghost', "
                  "now() - interval '1 hour')");
  /* The first duty run comes with the first renewal; later ones every 10 s. */
  cr_assert_eq(await_scalar("SELECT count(*) FROM nodes WHERE name = 'ghost'",
                            0, 15000),
               0, "a dead node was not forgotten");
  char sql[200];
  snprintf(sql, sizeof(sql),
           "SELECT count(*) FROM saga_events WHERE saga_id = '%s'", done);
  cr_assert_eq(await_scalar(sql, 0, 15000), 0,
               "an old completed saga was not purged");
  snprintf(sql, sizeof(sql), "SELECT count(*) FROM sagas WHERE id = '%s'",
           stuck);
  cr_assert_eq(pgtest_scalar(db, sql), 1,
               "a paused saga (waiting for an operator) was purged");
  sk_engine_close(e);
}

Test(cluster, another_node_takes_the_duties_over, .init = setup,
     .fini = teardown, .timeout = 120) {
  sk_engine *a = open_engine("first", 0);
  cr_assert_eq(sk_engine_start(a), SK_OK);
  usleep(500000); /* a holds the duties now */
  sk_engine *b = open_engine("second", 0);
  cr_assert_eq(sk_engine_start(b), SK_OK);
  cr_assert_eq(pgtest_scalar(db, "SELECT count(*) FROM pg_locks WHERE "
                                 "locktype = 'advisory' AND granted AND "
                                 "classid = 1710432 AND objid = 1414309240 "
                                 "AND database = (SELECT oid FROM pg_database "
                                 "WHERE datname = current_database())"),
               1, "exactly one node holds the duties");
  sk_engine_close(a);
  pgtest_exec(db, "INSERT INTO nodes (name, heartbeat_at) VALUES ('ghost2', "
                  "now() - interval '1 hour')");
  cr_assert_eq(await_scalar("SELECT count(*) FROM nodes WHERE name = "
                            "'ghost2'",
                            0, 25000),
               0, "nobody took the duties over");
  sk_engine_close(b);
}
