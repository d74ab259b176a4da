/*
 * test_engine_lifecycle.c — how engines start, stop and wake, on a real
 * PostgreSQL:
 *   - LISTEN/NOTIFY wakes an idle engine: with a 60 s poll interval, a saga
 *     started through another engine is picked up at once;
 *   - sk_engine_run runs in the foreground until another thread stops it;
 *   - a stopped engine strands nothing: its running attempt is finished
 *     and committed, and everything else is runnable by another engine at
 *     once, not after the (60 s) lease expires;
 *   - stop/close in every state are safe.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <skald/skald.h>

#include "common/clock.h"
#include "pgtest.h"

static char db[512];

static void setup(void) { cr_assert_eq(pgtest_fresh_db(db, sizeof(db)), 0); }
static void teardown(void) { pgtest_drop_db(db); }

static atomic_int runs;
static atomic_int slow_started;

static int noop(const sk_task *t, sk_task_result *r, void *ud) {
  atomic_fetch_add(&runs, 1);
  return sk_result_ok(r, "{}");
}

/* Blocks until cancelled or 1 s passes; used to fill a bulkhead. */
static int slow(const sk_task *t, sk_task_result *r, void *ud) {
  atomic_fetch_add(&slow_started, 1);
  for (int i = 0; i < 100 && !sk_task_cancelled(t); i++)
    usleep(10000);
  return sk_result_ok(r, "{}");
}

static sk_engine *open_engine(const char *node, int poll_ms, int lease_ms,
                              int concurrency) {
  sk_engine_options o;
  sk_engine_options_init(&o);
  o.database_url = db;
  o.node_name = node;
  o.poll_interval_ms = poll_ms;
  o.lease_ttl_ms = lease_ms;
  o.default_concurrency = concurrency;
  o.log_level = 1;
  sk_engine *e = NULL;
  sk_error err = {0};
  cr_assert_eq(sk_engine_open(&o, &e, &err), SK_OK, "%s", err.message);
  return e;
}

static void register_wf(sk_engine *e, const char *type) {
  cr_assert_eq(sk_engine_register_task(e, type, strcmp(type, "slow") == 0
                                                    ? slow
                                                    : noop,
                                       NULL),
               SK_OK);
  sk_workflow *wf = NULL;
  char name[32];
  snprintf(name, sizeof(name), "wf_%s", type);
  cr_assert_eq(sk_workflow_new(name, 1, &wf), SK_OK);
  cr_assert_eq(sk_workflow_add_step(wf, "one", type), SK_OK);
  cr_assert_eq(sk_workflow_add_step(wf, "two", type), SK_OK);
  sk_error err = {0};
  cr_assert_eq(sk_engine_register_workflow(e, wf, &err), SK_OK, "%s",
               err.message);
  sk_workflow_free(wf);
}

Test(lifecycle, notify_wakes_an_idle_engine, .init = setup, .fini = teardown,
     .timeout = 60) {
  sk_engine *worker = open_engine("worker", 60000, 15000, 4);
  register_wf(worker, "noop");
  cr_assert_eq(sk_engine_start(worker), SK_OK);
  usleep(300000); /* past its first poll: from now on only NOTIFY wakes it */

  sk_engine *client = open_engine("client", 60000, 15000, 1);
  register_wf(client, "noop"); /* never started: it only writes */
  char id[SK_ID_LEN];
  sk_error err = {0};
  int64_t t0 = clock_mono_ms();
  cr_assert_eq(sk_run_start(client, "wf_noop", "{}", NULL, id, NULL, &err),
               SK_OK, "%s", err.message);
  sk_status st;
  cr_assert_eq(sk_saga_wait(client, id, 10000, &st), SK_OK,
               "the idle engine was not woken (poll interval is 60 s)");
  int64_t took = clock_mono_ms() - t0;
  cr_assert_eq(st, SK_STATUS_COMPLETED);
  cr_assert_lt(took, 5000, "took %lld ms", (long long)took);
  sk_engine_close(client);
  sk_engine_close(worker);
}

static void *stop_later(void *arg) {
  usleep(300000);
  sk_engine_stop(arg);
  return NULL;
}

Test(lifecycle, foreground_run_until_stopped, .init = setup, .fini = teardown,
     .timeout = 60) {
  sk_engine *e = open_engine("fg", 100, 15000, 2);
  register_wf(e, "noop");
  char id[SK_ID_LEN];
  cr_assert_eq(sk_run_start(e, "wf_noop", "{}", NULL, id, NULL, NULL), SK_OK);
  pthread_t th;
  pthread_create(&th, NULL, stop_later, e);
  cr_assert_eq(sk_engine_run(e), SK_OK);
  pthread_join(th, NULL);
  sk_status st;
  cr_assert_eq(sk_saga_status(e, id, &st), SK_OK);
  cr_assert_eq(st, SK_STATUS_COMPLETED, "the foreground loop ran the saga");
  cr_assert_eq(sk_engine_run(e), SK_ESTATE, "a stopped engine cannot rerun");
  sk_engine_close(e);
}

Test(lifecycle, stopped_engine_strands_no_work, .init = setup,
     .fini = teardown, .timeout = 120) {
  atomic_store(&slow_started, 0);
  /* One worker thread and many sagas: most tasks wait in the pool queue or
   * the database while the first runs. */
  sk_engine *a = open_engine("a", 100, 60000, 1);
  register_wf(a, "slow");
  cr_assert_eq(sk_engine_start(a), SK_OK);
  char ids[6][SK_ID_LEN];
  for (int i = 0; i < 6; i++)
    cr_assert_eq(sk_run_start(a, "wf_slow", "{}", NULL, ids[i], NULL, NULL),
                 SK_OK);
  for (int i = 0; i < 200 && atomic_load(&slow_started) == 0; i++)
    usleep(10000);
  sk_engine_close(a); /* waits for the running handler, hands back the rest */

  /* With a 60 s lease, anything still leased to the stopped engine could
   * not run within the waits below. */
  sk_engine *b = open_engine("b", 100, 60000, 6);
  register_wf(b, "slow");
  cr_assert_eq(sk_engine_start(b), SK_OK);
  for (int i = 0; i < 6; i++) {
    sk_status st;
    cr_assert_eq(sk_saga_wait(b, ids[i], 30000, &st), SK_OK,
                 "saga %d waited for an expired lease", i);
    cr_assert_eq(st, SK_STATUS_COMPLETED);
  }
  sk_engine_close(b);
}

Test(lifecycle, stop_and_close_in_every_state, .init = setup,
     .fini = teardown, .timeout = 60) {
  sk_engine *e = open_engine("s1", 100, 15000, 1);
  cr_assert_eq(sk_engine_stop(e), SK_OK, "stop before start");
  cr_assert_eq(sk_engine_start(e), SK_ESTATE, "start after stop");
  sk_engine_close(e);
  e = open_engine("s2", 100, 15000, 1);
  sk_engine_close(e); /* close without start */
  e = open_engine("s3", 100, 15000, 1);
  cr_assert_eq(sk_engine_start(e), SK_OK);
  cr_assert_eq(sk_engine_start(e), SK_ESTATE, "double start");
  cr_assert_eq(sk_engine_stop(e), SK_OK);
  cr_assert_eq(sk_engine_stop(e), SK_OK, "double stop");
  sk_engine_close(e);
  sk_engine_close(NULL);
  cr_assert_eq(sk_engine_stop(NULL), SK_EINVAL);
}

Test(lifecycle, notify_survives_a_terminated_connection, .init = setup,
     .fini = teardown, .timeout = 60) {
  sk_engine *worker = open_engine("worker2", 60000, 15000, 4);
  register_wf(worker, "noop");
  cr_assert_eq(sk_engine_start(worker), SK_OK);
  usleep(300000);
  /* Kill the worker's LISTEN connection (and every other of its backends:
   * the engine must reconnect them all). */
  pgtest_exec(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE datname = current_database() "
                  "AND pid <> pg_backend_pid()");
  usleep(1500000); /* reconnects within about a second */

  sk_engine *client = open_engine("client2", 60000, 15000, 1);
  register_wf(client, "noop");
  char id[SK_ID_LEN];
  sk_error err = {0};
  cr_assert_eq(sk_run_start(client, "wf_noop", "{}", NULL, id, NULL, &err),
               SK_OK, "%s", err.message);
  sk_status st;
  cr_assert_eq(sk_saga_wait(client, id, 10000, &st), SK_OK,
               "after losing its connections the idle engine was not woken");
  cr_assert_eq(st, SK_STATUS_COMPLETED);
  sk_engine_close(client);
  sk_engine_close(worker);
}
