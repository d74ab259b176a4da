/*
 * test_daemon_crash.c — SIGKILL the real daemon while sagas started over
 * HTTP are in flight, some of them inside a durable sleep; restart it on the
 * same database and port. A remote worker (a thread of this test, speaking
 * HTTP only) keeps polling through the outage. Then every saga must have
 * completed, the sleep must not have been skipped (its StepCompleted comes
 * at least its duration after its StepScheduled), no step completion may be
 * recorded twice, event sequences must be contiguous, and every projection
 * must equal the fold of its events (queries_verify).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "pgtest.h"
#include "store/queries.h"

#define SLEEP_MS 1500
#define N_BEFORE 24
#define N_AFTER 6
#define N_SAGAS (N_BEFORE + N_AFTER)

static char db[512];
static skd_daemon d;

static void setup(void) {
  skd_global_init();
  cr_assert_eq(pgtest_fresh_db(db, sizeof(db)), 0);
  skd_start(&d, db, 0, "1000", "e2e-crash");
}

static void teardown(void) {
  int st = skd_stop(&d);
  if (st != 0)
    skd_dump_log(&d);
  pgtest_drop_db(db);
  char why[2048] = "";
  bool clean = skd_log_clean(&d, why, sizeof(why));
  if (getenv("SKALD_TEST_KEEP") == NULL && clean)
    unlink(d.log_path);
  cr_assert(clean, "the daemon's log shows a sanitizer report (%s): %s",
            d.log_path, why);
}

static const char *jstr(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* ---- the remote worker --------------------------------------------- */

typedef struct worker {
  pthread_t th;
  atomic_bool stop;
  atomic_long polls, refused, completed, lost;
} worker;

/* Completes one task, retrying while the daemon is down (bounded). */
static void complete_task(worker *w, const cJSON *t) {
  char path[320], body[512];
  snprintf(path, sizeof(path), "/v1/tasks/%s/complete", jstr(t, "task_id"));
  snprintf(body, sizeof(body),
           "{\"lease_token\":%.0f,\"output\":{\"step\":\"%s\",\"saga\":"
           "\"%s\"}}",
           cJSON_GetObjectItemCaseSensitive(t, "lease_token")->valuedouble,
           jstr(t, "step"), jstr(t, "saga_id"));
  int64_t end = skd_now_ms() + 20000;
  while (skd_now_ms() < end && !atomic_load(&w->stop)) {
    skd_resp r;
    int rc = skd_http(&d, "POST", path, body, NULL, 5000, &r);
    long st = r.status;
    skd_resp_free(&r);
    if (rc == 0 && st == 200) {
      atomic_fetch_add(&w->completed, 1);
      return;
    }
    if (rc == 0 && st == 409) { /* fenced: someone else has it now */
      atomic_fetch_add(&w->lost, 1);
      return;
    }
    atomic_fetch_add(&w->refused, 1);
    skd_sleep_ms(100);
  }
}

static void *worker_main(void *ud) {
  worker *w = ud;
  while (!atomic_load(&w->stop)) {
    skd_resp r;
    int rc = skd_http(&d, "POST", "/v1/tasks/poll",
                      "{\"worker_id\":\"crash-worker\",\"task_types\":"
                      "[\"e2e.a\",\"e2e.b\"],\"max\":8,\"wait_ms\":300}",
                      NULL, 5000, &r);
    atomic_fetch_add(&w->polls, 1);
    if (rc != 0 || r.status != 200) {
      /* Connection refused while the daemon is down: retry. */
      atomic_fetch_add(&w->refused, 1);
      skd_resp_free(&r);
      skd_sleep_ms(100);
      continue;
    }
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(r.json, "tasks"))
      complete_task(w, t);
    skd_resp_free(&r);
  }
  return NULL;
}

static void start_run(char ids[][37], int i) {
  char body[128];
  snprintf(body, sizeof(body),
           "{\"input\":{\"n\":%d},\"idempotency_key\":\"crash-%d\"}", i, i);
  skd_resp r;
  skd_post(&d, "/v1/workflows/crash_e2e/runs", body, &r);
  cr_assert(r.status == 201, "start %d: %ld %s", i, r.status, r.body);
  snprintf(ids[i], 37, "%s", jstr(r.json, "saga_id"));
  skd_resp_free(&r);
}

static long long in_sleep_now(void) {
  /* Sagas whose sleep step is scheduled but not completed. */
  return pgtest_scalar(
      db, "SELECT count(*) FROM saga_events s WHERE s.type = 'StepScheduled' "
          "AND s.step = 1 AND NOT EXISTS (SELECT 1 FROM saga_events c WHERE "
          "c.saga_id = s.saga_id AND c.step = 1 AND c.type = "
          "'StepCompleted')");
}

Test(daemon_crash, sigkill_mid_flight, .init = setup, .fini = teardown,
     .timeout = 110) {
  skd_resp r;
  skd_post(&d, "/v1/workflows",
           "{\"name\":\"crash_e2e\",\"version\":1,\"steps\":["
           "{\"name\":\"a\",\"task\":\"e2e.a\",\"input\":{\"n\":\"${input.n}"
           "\"}},"
           "{\"name\":\"nap\",\"sleep\":{\"ms\":1500}},"
           "{\"name\":\"b\",\"task\":\"e2e.b\",\"input\":{\"a\":\"${steps.a."
           "output.step}\"}}]}",
           &r);
  cr_assert_eq(r.status, 201, "%s", r.body);
  skd_resp_free(&r);

  worker w = {0};
  cr_assert_eq(pthread_create(&w.th, NULL, worker_main, &w), 0);
  char ids[N_SAGAS][37];
  for (int i = 0; i < N_BEFORE; i++) {
    start_run(ids, i);
    skd_sleep_ms(80); /* spread over ~2 s: some past the sleep, some in it */
  }
  /* Kill once some sagas are inside the sleep and some are past it. */
  long long sleeping = 0, past = 0;
  int64_t end = skd_now_ms() + 10000;
  while (skd_now_ms() < end &&
         ((sleeping = in_sleep_now()) < 3 ||
          (past = pgtest_scalar(db, "SELECT count(*) FROM saga_events WHERE "
                                    "type = 'StepCompleted' AND step = 1")) <
              1))
    skd_sleep_ms(20);
  cr_assert_geq(sleeping, 3, "no saga reached the sleep");
  cr_assert_geq(past, 1, "no saga got past the sleep");
  long long done_before =
      pgtest_scalar(db, "SELECT count(*) FROM sagas WHERE status = "
                        "'completed'");
  skd_kill(&d);
  int64_t killed_at = skd_now_ms();
  cr_log_info("killed with %lld sagas inside the sleep, %lld past it, %lld "
              "completed",
              sleeping, past, done_before);
  skd_sleep_ms(500); /* the worker meets connection refused meanwhile */
  skd_restart(&d);
  cr_log_info("restarted after %lld ms",
              (long long)(skd_now_ms() - killed_at));
  for (int i = N_BEFORE; i < N_SAGAS; i++)
    start_run(ids, i);
  /* Starting again with the same keys gives the same sagas. */
  for (int i = 0; i < N_SAGAS; i += 7) {
    char body[128];
    snprintf(body, sizeof(body),
             "{\"input\":{\"n\":%d},\"idempotency_key\":\"crash-%d\"}", i, i);
    skd_post(&d, "/v1/workflows/crash_e2e/runs", body, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_assert_str_eq(jstr(r.json, "saga_id"), ids[i]);
    skd_resp_free(&r);
  }

  /* Every saga completes. */
  long long completed = 0;
  end = skd_now_ms() + 60000;
  while (skd_now_ms() < end &&
         (completed = pgtest_scalar(db, "SELECT count(*) FROM sagas WHERE "
                                        "status = 'completed'")) < N_SAGAS)
    skd_sleep_ms(100);
  atomic_store(&w.stop, true);
  pthread_join(w.th, NULL);
  cr_log_info("worker: %ld polls, %ld refused, %ld completed, %ld fenced",
              atomic_load(&w.polls), atomic_load(&w.refused),
              atomic_load(&w.completed), atomic_load(&w.lost));
  if (completed != N_SAGAS)
    skd_dump_log(&d);
  cr_assert_eq(completed, N_SAGAS, "%lld of %d sagas completed", completed,
               N_SAGAS);
  cr_assert_eq(pgtest_scalar(db, "SELECT count(*) FROM sagas"), N_SAGAS);
  cr_assert_gt(atomic_load(&w.refused), 0,
               "the worker never saw the daemon down");

  for (int i = 0; i < N_SAGAS; i++) {
    char sql[640];
    /* One StepCompleted per step, exactly. */
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM (SELECT step FROM saga_events WHERE "
             "saga_id = '%s' AND type = 'StepCompleted' GROUP BY step "
             "HAVING count(*) <> 1) x",
             ids[i]);
    cr_assert_eq(pgtest_scalar(db, sql), 0,
                 "saga %s: a step completion is duplicated", ids[i]);
    snprintf(sql, sizeof(sql),
             "SELECT count(DISTINCT step) FROM saga_events WHERE saga_id = "
             "'%s' AND type = 'StepCompleted'",
             ids[i]);
    cr_assert_eq(pgtest_scalar(db, sql), 3, "saga %s: not every step ran",
                 ids[i]);
    /* The sleep was not skipped. */
    snprintf(sql, sizeof(sql),
             "SELECT floor(extract(epoch FROM (c.created_at - "
             "s.created_at)) * 1000)::bigint FROM saga_events s, saga_events "
             "c WHERE s.saga_id = '%s' AND c.saga_id = s.saga_id AND s.step "
             "= 1 AND c.step = 1 AND s.type = 'StepScheduled' AND c.type = "
             "'StepCompleted'",
             ids[i]);
    long long slept = pgtest_scalar(db, sql);
    cr_assert_geq(slept, SLEEP_MS - 1, "saga %s slept only %lld ms", ids[i],
                  slept);
    /* Contiguous sequence numbers, one terminal event, last. */
    snprintf(sql, sizeof(sql),
             "SELECT (count(*) = max(seq) AND min(seq) = 1)::int FROM "
             "saga_events WHERE saga_id = '%s'",
             ids[i]);
    cr_assert_eq(pgtest_scalar(db, sql), 1, "saga %s: seq has gaps", ids[i]);
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM saga_events WHERE saga_id = '%s' AND type "
             "= 'SagaCompleted' AND seq = (SELECT max(seq) FROM saga_events "
             "WHERE saga_id = '%s')",
             ids[i], ids[i]);
    cr_assert_eq(pgtest_scalar(db, sql), 1, "saga %s: no final SagaCompleted",
                 ids[i]);
  }
  cr_assert_eq(pgtest_scalar(db, "SELECT count(*) FROM tasks"), 0,
               "tasks are left in the queue");
  PGconn *c = PQconnectdb(db);
  cr_assert_eq(PQstatus(c), CONNECTION_OK, "%s", PQerrorMessage(c));
  verify_report rep = {0};
  sk_error err = {0};
  int rc = queries_verify(c, NULL, &rep, &err);
  PQfinish(c);
  cr_assert_eq(rc, 0, "queries_verify: %s", err.message);
  cr_assert_eq(rep.checked, N_SAGAS);
  cr_assert_eq(rep.mismatched, 0,
               "%zu of %zu projections differ from the fold (first %s)",
               rep.mismatched, rep.checked, rep.first_mismatch);
}
