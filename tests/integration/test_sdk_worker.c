/*
 * test_sdk_worker.c — the SDK's remote-worker mode against the real daemon
 * over loopback: the same sk_task_fn handlers as in-process, fed over HTTP.
 *
 *   - sagas started over HTTP complete through a worker's handlers, inputs
 *     and idempotency keys arrive as in-process, a non-retryable failure
 *     is compensated by the worker in reverse order;
 *   - a handler running past its lease keeps it through heartbeats;
 *   - cancelling the saga turns sk_task_cancelled() true in the handler;
 *   - sk_worker_stop returns promptly even during a long poll;
 *   - bad options are refused.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <skald/skald.h>

#include "daemon.h"
#include "pgtest.h"

static char db[512];
static skd_daemon d;
static sk_worker *w;
static pthread_t wth;
static atomic_int comp_order[8];
static atomic_int n_comp;
static atomic_bool saw_cancel;
static char seen_key[160];

static void setup(void) {
  skd_global_init();
  cr_assert_eq(pgtest_fresh_db(db, sizeof(db)), 0);
  skd_start(&d, db, 0, "1500", "worker-test");
  atomic_store(&n_comp, 0);
  atomic_store(&saw_cancel, false);
}

static void teardown(void) {
  if (w != NULL) {
    sk_worker_stop(w);
    pthread_join(wth, NULL);
    sk_worker_free(w);
    w = NULL;
  }
  char why[256] = "";
  bool clean = skd_log_clean(&d, why, sizeof(why));
  cr_expect_eq(skd_stop(&d), 0, "the daemon did not exit 0");
  cr_expect(clean, "daemon log: %s", why);
  pgtest_drop_db(db);
}

static int reserve(const sk_task *t, sk_task_result *r, void *ud) {
  if (strcmp(t->step, "a") == 0)
    snprintf(seen_key, sizeof(seen_key), "%s", t->idempotency_key);
  char out[128];
  snprintf(out, sizeof(out), "{\"step\":\"%s\",\"echo\":%s}", t->step,
           t->input);
  return sk_result_ok(r, out);
}

static int charge(const sk_task *t, sk_task_result *r, void *ud) {
  if (strstr(t->input, "declined") != NULL)
    return sk_result_error(r, "Declined", "card declined", false);
  return sk_result_ok(r, "{\"paid\":true}");
}

static int undo(const sk_task *t, sk_task_result *r, void *ud) {
  int i = atomic_fetch_add(&n_comp, 1);
  if (i < 8)
    atomic_store(&comp_order[i], t->step[0]);
  return sk_result_ok(r, "{}");
}

/* Runs 3 s (twice the lease) unless cancelled. */
static int slow(const sk_task *t, sk_task_result *r, void *ud) {
  for (int i = 0; i < 300; i++) {
    if (sk_task_cancelled(t)) {
      atomic_store(&saw_cancel, true);
      return sk_result_error(r, "Cancelled", "stopped on request", false);
    }
    usleep(10000);
  }
  return sk_result_ok(r, "{\"slow\":true}");
}

static void *run_worker(void *arg) {
  sk_worker_run(arg);
  return NULL;
}

static void start_worker(void) {
  sk_worker_options o;
  sk_worker_options_init(&o);
  o.url = d.base;
  o.worker_id = "test-worker";
  o.concurrency = 4;
  o.poll_wait_ms = 2000;
  o.log_level = 1;
  sk_error err = {0};
  cr_assert_eq(sk_worker_new(&o, &w, &err), SK_OK, "%s", err.message);
  cr_assert_eq(sk_worker_register_task(w, "w.reserve", reserve, NULL), SK_OK);
  cr_assert_eq(sk_worker_register_task(w, "w.charge", charge, NULL), SK_OK);
  cr_assert_eq(sk_worker_register_task(w, "w.undo", undo, NULL), SK_OK);
  cr_assert_eq(sk_worker_register_task(w, "w.slow", slow, NULL), SK_OK);
  cr_assert_eq(sk_worker_register_task(w, "w.slow", slow, NULL), SK_EEXIST);
  cr_assert_eq(pthread_create(&wth, NULL, run_worker, w), 0);
}

static void post_ok(const char *path, const char *body, long want,
                    skd_resp *r) {
  skd_post(&d, path, body, r);
  cr_assert_eq(r->status, want, "%s: %ld %s", path, r->status, r->body);
}

static const char *start_run(const char *wf, const char *input, char *id) {
  char body[256];
  snprintf(body, sizeof(body), "{\"input\":%s}", input);
  char path[96];
  snprintf(path, sizeof(path), "/v1/workflows/%s/runs", wf);
  skd_resp r = {0};
  post_ok(path, body, 201, &r);
  snprintf(id, 37, "%s",
           cJSON_GetStringValue(cJSON_GetObjectItem(r.json, "saga_id")));
  skd_resp_free(&r);
  return id;
}

/* Waits for a saga's status to be one of the settled ones; returns it. */
static void wait_status(const char *id, const char *want, int64_t ms) {
  char path[96], status[32] = "";
  snprintf(path, sizeof(path), "/v1/sagas/%s", id);
  for (int64_t end = skd_now_ms() + ms; skd_now_ms() < end;) {
    skd_resp r = {0};
    skd_get(&d, path, &r);
    snprintf(status, sizeof(status), "%s",
             cJSON_GetStringValue(cJSON_GetObjectItem(r.json, "status"))
                 ? cJSON_GetStringValue(cJSON_GetObjectItem(r.json, "status"))
                 : "");
    skd_resp_free(&r);
    if (strcmp(status, want) == 0)
      return;
    skd_sleep_ms(50);
  }
  cr_assert_fail("saga %s is %s, wanted %s", id, status, want);
}

static const char *SPEC =
    "{\"name\":\"wtrip\",\"version\":1,\"steps\":["
    "{\"name\":\"a\",\"task\":\"w.reserve\",\"compensate\":{\"task\":\"w.undo\"}},"
    "{\"name\":\"b\",\"task\":\"w.reserve\",\"compensate\":{\"task\":\"w.undo\"}},"
    "{\"name\":\"c\",\"task\":\"w.charge\"}]}";

Test(sdk_worker, runs_sagas_and_compensations, .init = setup,
     .fini = teardown, .timeout = 120) {
  skd_resp r = {0};
  post_ok("/v1/workflows", SPEC, 201, &r);
  skd_resp_free(&r);
  start_worker();
  char ok[37], bad[37];
  start_run("wtrip", "{\"card\":\"fine\"}", ok);
  start_run("wtrip", "{\"card\":\"declined\"}", bad);
  wait_status(ok, "completed", 20000);
  wait_status(bad, "compensated", 20000);
  /* The last "a" attempt belonged to one of the two sagas; its key is
   * exactly "<saga_id>:a:fwd", as for in-process handlers. */
  char want_ok[128], want_bad[128];
  snprintf(want_ok, sizeof(want_ok), "%s:a:fwd", ok);
  snprintf(want_bad, sizeof(want_bad), "%s:a:fwd", bad);
  cr_assert(strcmp(seen_key, want_ok) == 0 || strcmp(seen_key, want_bad) == 0,
            "idempotency key %s", seen_key);
  cr_assert_eq(atomic_load(&n_comp), 2);
  cr_assert_eq(atomic_load(&comp_order[0]), 'b', "newest first");
  cr_assert_eq(atomic_load(&comp_order[1]), 'a');
  char path[96];
  snprintf(path, sizeof(path), "/v1/sagas/%s", ok);
  skd_get(&d, path, &r);
  cr_assert(strstr(r.body, "\"card\"") != NULL, "outputs echo the input: %s",
            r.body);
  skd_resp_free(&r);
}

Test(sdk_worker, heartbeats_keep_a_long_handler_s_lease, .init = setup,
     .fini = teardown, .timeout = 120) {
  skd_resp r = {0};
  post_ok("/v1/workflows",
          "{\"name\":\"wslow\",\"version\":1,\"steps\":[{\"name\":\"s\","
          "\"task\":\"w.slow\"}]}",
          201, &r);
  skd_resp_free(&r);
  start_worker();
  char id[37];
  start_run("wslow", "{}", id);
  wait_status(id, "completed", 20000);
  char sql[200];
  snprintf(sql, sizeof(sql),
           "SELECT count(*) FROM saga_events WHERE saga_id = '%s' AND type = "
           "'StepFailed'",
           id);
  cr_assert_eq(pgtest_scalar(db, sql), 0,
               "a 3 s handler with a 1.5 s lease lost its lease");
}

Test(sdk_worker, cancel_reaches_the_handler, .init = setup, .fini = teardown,
     .timeout = 120) {
  skd_resp r = {0};
  post_ok("/v1/workflows",
          "{\"name\":\"wslow\",\"version\":1,\"steps\":[{\"name\":\"s\","
          "\"task\":\"w.slow\"}]}",
          201, &r);
  skd_resp_free(&r);
  start_worker();
  char id[37];
  start_run("wslow", "{}", id);
  skd_sleep_ms(400);
  char path[96];
  snprintf(path, sizeof(path), "/v1/sagas/%s/cancel", id);
  post_ok(path, "{}", 202, &r);
  skd_resp_free(&r);
  wait_status(id, "cancelled", 20000);
  cr_assert(atomic_load(&saw_cancel), "sk_task_cancelled never turned true");
}

Test(sdk_worker, stops_promptly_and_refuses_bad_options, .init = setup,
     .fini = teardown, .timeout = 60) {
  start_worker();
  skd_sleep_ms(300); /* in a long poll now */
  int64_t t0 = skd_now_ms();
  sk_worker_stop(w);
  pthread_join(wth, NULL);
  cr_assert_lt(skd_now_ms() - t0, 1500, "stop took %lld ms",
               (long long)(skd_now_ms() - t0));
  sk_worker_free(w);
  w = NULL;
  sk_worker_options o;
  sk_worker_options_init(&o);
  sk_worker *x = NULL;
  sk_error err = {0};
  cr_assert_eq(sk_worker_new(&o, &x, &err), SK_EINVAL, "no url");
  o.url = "ftp://x";
  cr_assert_eq(sk_worker_new(&o, &x, &err), SK_EINVAL, "bad scheme");
  o.url = d.base;
  o.concurrency = 0;
  cr_assert_eq(sk_worker_new(&o, &x, &err), SK_EINVAL, "no threads");
  o.concurrency = 1;
  cr_assert_eq(sk_worker_new(&o, &x, &err), SK_OK);
  cr_assert_eq(sk_worker_run(x), SK_EINVAL, "no handlers");
  cr_assert_eq(sk_worker_register_task(x, "Bad Name", slow, NULL), SK_EINVAL);
  sk_worker_free(x);
}

/* ---- GPU steps and remote workers ---------------------------------------- */

static char gpu_seen[64];
static atomic_int gpu_by_small, gpu_by_big;

static int gpu_step(const sk_task *t, sk_task_result *r, void *ud) {
  atomic_fetch_add((atomic_int *)ud, 1);
  snprintf(gpu_seen, sizeof(gpu_seen), "%s", sk_task_gpus(t));
  return sk_result_ok(r, "{}");
}

static sk_worker *gpu_worker(const char *id, const char *gpus, atomic_int *n,
                             pthread_t *th) {
  sk_worker_options o;
  sk_worker_options_init(&o);
  o.url = d.base;
  o.worker_id = id;
  o.poll_wait_ms = 500;
  o.log_level = 1;
  o.gpus_json = gpus;
  sk_worker *x = NULL;
  sk_error err = {0};
  cr_assert_eq(sk_worker_new(&o, &x, &err), SK_OK, "%s", err.message);
  cr_assert_eq(sk_worker_register_task(x, "w.gpu", gpu_step, n), SK_OK);
  cr_assert_eq(pthread_create(th, NULL, run_worker, x), 0);
  return x;
}

Test(sdk_worker, gpu_steps_go_only_to_workers_whose_gpus_fit, .init = setup,
     .fini = teardown, .timeout = 120) {
  skd_resp r = {0};
  post_ok("/v1/workflows",
          "{\"name\":\"wgpu\",\"version\":1,\"steps\":[{\"name\":\"train\","
          "\"task\":\"w.gpu\",\"resources\":{\"gpus\":1,"
          "\"gpu_memory_mb\":20000}}]}",
          201, &r);
  skd_resp_free(&r);
  atomic_store(&gpu_by_small, 0);
  atomic_store(&gpu_by_big, 0);
  /* One worker without GPUs, one with a GPU too small, one that fits (its
   * GPU 1 is unhealthy, GPU 2 is the one that fits). */
  pthread_t t1, t2, t3;
  sk_worker *none = gpu_worker("no-gpus", NULL, &gpu_by_small, &t1);
  sk_worker *small = gpu_worker(
      "small",
      "[{\"index\":0,\"state\":\"healthy\",\"memory_total_mb\":16000,"
      "\"memory_free_mb\":16000}]",
      &gpu_by_small, &t2);
  sk_worker *big = gpu_worker(
      "big",
      "[{\"index\":1,\"state\":\"unhealthy\",\"memory_total_mb\":81920,"
      "\"memory_free_mb\":81920},{\"index\":2,\"state\":\"healthy\","
      "\"memory_total_mb\":81920,\"memory_free_mb\":81920}]",
      &gpu_by_big, &t3);
  char ids[4][37];
  for (int i = 0; i < 4; i++)
    start_run("wgpu", "{}", ids[i]);
  for (int i = 0; i < 4; i++)
    wait_status(ids[i], "completed", 20000);
  sk_worker *all[3] = {none, small, big};
  pthread_t ths[3] = {t1, t2, t3};
  for (int i = 0; i < 3; i++) {
    sk_worker_stop(all[i]);
    pthread_join(ths[i], NULL);
    sk_worker_free(all[i]);
  }
  cr_assert_eq(atomic_load(&gpu_by_small), 0,
               "a worker whose GPUs do not fit got a GPU step");
  cr_assert_eq(atomic_load(&gpu_by_big), 4);
  cr_assert_str_eq(gpu_seen, "2", "the handler was told the wrong GPU");
}
