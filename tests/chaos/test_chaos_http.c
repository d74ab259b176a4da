/*
 * test_chaos_http.c — faults around the daemon and its HTTP targets
 * (docs/reliability.md).
 *
 *   flapping_target: the daemon (build/skald) runs a 3-step http workflow
 *     against chaos_flap, a target that flaps between refusing
 *     connections, 503, resets and hanging past the step timeout (having
 *     applied the effect: a lost response). Every saga must still settle
 *     as its input dictates, and the target must have seen exactly one
 *     effect per completed step and per compensation (idempotency keys).
 *   load_under_faults: client threads start runs over the HTTP API (each
 *     with its own idempotency key, retried on errors) while the daemon is
 *     SIGKILLed and restarted and its database connections are terminated.
 *     Reports the error rate and the latency of accepted starts, and proves
 *     every accepted run finished correctly and that a retried key never
 *     made a second saga.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chaos.h"
#include "daemon.h"
#include "pgtest.h"

static chaos_env env;
static char db[256];
static chaos_flap *flap;
static skd_daemon daemon_;
/* Per-round buffers, freed in teardown too (a failed assertion skips the
 * frees in the body). */
static char (*round_ids)[37], (*round_db_ids)[37];
static double *round_lat, *all_lat;

/* Only what cannot fail here: Criterion skips .fini when .init fails, so
 * the cluster, target and daemon are started by begin() in the body. */
static void setup(void) {
  memset(&daemon_, 0, sizeof(daemon_));
  flap = NULL;
  chaos_env_init(&env);
}

static void begin(void) {
  chaos_pg_init(&env, &env.pg[0], "pg");
  cr_assert_eq(chaos_pg_start(&env.pg[0], NULL), 0, "postgres did not start");
  chaos_pg_conninfo(&env.pg[0], db, sizeof(db));
  flap = chaos_flap_start();
  skd_start(&daemon_, db, 0, "2000", "chaos");
}

static void teardown(void) {
  free(round_ids);
  free(round_db_ids);
  free(round_lat);
  free(all_lat);
  round_ids = round_db_ids = NULL;
  round_lat = all_lat = NULL;
  char why[512] = "";
  bool clean = daemon_.pid <= 0 || skd_log_clean(&daemon_, why, sizeof(why));
  skd_stop(&daemon_);
  /* Its tail is in the test log already when something failed. */
  if (daemon_.log_path[0] != '\0' && getenv("SKALD_TEST_KEEP") == NULL)
    unlink(daemon_.log_path);
  chaos_flap_stop(flap);
  flap = NULL;
  chaos_env_cleanup(&env);
  if (!clean)
    cr_log_error("sanitizer report in the daemon log: %s", why);
}

static void register_spec(const char *spec) {
  skd_resp r;
  skd_post(&daemon_, "/v1/workflows", spec, &r);
  cr_assert(r.status == 201 || r.status == 200, "register: %ld %s", r.status,
            r.body);
  skd_resp_free(&r);
}

static long unsettled(const char *prefix, long *total) {
  char sql[512];
  snprintf(sql, sizeof(sql),
           "SELECT count(*) FILTER (WHERE s.status IN ('running', "
           "'compensating')) * 1000000 + count(*) FROM sagas s JOIN "
           "saga_idempotency i ON i.saga_id = s.id WHERE i.key LIKE '%s-%%'",
           prefix);
  long long v = pgtest_scalar(db, sql);
  *total = (long)(v % 1000000);
  return (long)(v / 1000000);
}

static void wait_settled(const char *prefix, int n, int timeout_s) {
  int64_t end = chaos_now_ms() + timeout_s * 1000L;
  long total = 0, left = 1;
  while (chaos_now_ms() < end) {
    left = unsettled(prefix, &total);
    if (left == 0 && total == n)
      return;
    chaos_sleep_ms(200);
  }
  long before = chaos_flap_requests(flap);
  chaos_sleep_ms(7000);
  cr_log_error("target requests in the last 7 s: %ld",
               chaos_flap_requests(flap) - before);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "ss -tan | grep -c ':%d ' >&2; ss -ltn | grep ':%d ' >&2",
           chaos_flap_port(flap), chaos_flap_port(flap));
  if (system(cmd) != 0)
    cr_log_error("no listener");
  skd_dump_log(&daemon_);
  cr_assert_fail("%s: %ld of %ld sagas still unsettled after %d s (want %d "
                 "settled)", prefix, left, total, timeout_s, n);
}

/* ---- flapping target ---- */

#define FLAP_SAGAS 60

static int flap_expect(int i) { return i % 3 == 0 ? 3 : 0; }

#define FLAP_SPEC \
    "{\"name\": \"chaos_http\", \"version\": 1," \
    " \"defaults\": {\"timeout_ms\": 400, \"retry\": {\"max_attempts\": 60," \
    "   \"initial_interval_ms\": 50, \"backoff_coefficient\": 2.0," \
    "   \"max_interval_ms\": 400, \"jitter\": 0.2}}," \
    " \"steps\": [" \
    "  {\"name\": \"a\", \"http\": {\"method\": \"POST\"," \
    "    \"url\": \"http://127.0.0.1:%d/res/a\", \"body\": {\"i\": \"${input.i}\"}}," \
    "   \"compensate\": {\"http\": {\"method\": \"DELETE\"," \
    "    \"url\": \"http://127.0.0.1:%d/res/${steps.a.output.id}\"}}}," \
    "  {\"name\": \"b\", \"http\": {\"method\": \"POST\"," \
    "    \"url\": \"http://127.0.0.1:%d/res/b\", \"body\": {\"i\": \"${input.i}\"}}," \
    "   \"compensate\": {\"http\": {\"method\": \"DELETE\"," \
    "    \"url\": \"http://127.0.0.1:%d/res/${steps.b.output.id}\"}}}," \
    "  {\"name\": \"c\", \"http\": {\"method\": \"POST\"," \
    "    \"url\": \"http://127.0.0.1:%d/${input.c}\", \"body\": {\"i\": \"${input.i}\"}}," \
    "   \"compensate\": {\"http\": {\"method\": \"DELETE\"," \
    "    \"url\": \"http://127.0.0.1:%d/res/${steps.c.output.id}\"}}}" \
    " ]}"

static void start_run(const char *wf, const char *prefix, int i,
                      const char *input) {
  char path[128], body[512];
  snprintf(path, sizeof(path), "/v1/workflows/%s/runs", wf);
  snprintf(body, sizeof(body), "{\"input\": %s, \"idempotency_key\": \"%s-%d\"}",
           input, prefix, i);
  skd_resp r;
  skd_post(&daemon_, path, body, &r);
  cr_assert(r.status == 201 || r.status == 200, "start: %ld %s", r.status,
            r.body);
  skd_resp_free(&r);
}

static void check_effects(char (*ids)[37], int n, const char *const *steps,
                          int n_steps, chaos_expect_fn expect) {
  int bad = 0;
  for (int i = 0; i < n; i++) {
    int fail = expect(i);
    int upto = fail == 0 ? n_steps : fail - 1;
    for (int k = 0; k < n_steps; k++) {
      char key[128];
      snprintf(key, sizeof(key), "%s:%s:fwd", ids[i], steps[k]);
      int want = k < upto ? 1 : 0;
      int got = chaos_flap_effects(flap, key);
      if (got != want && bad++ < 10)
        cr_log_error("%s: %d effects, want %d", key, got, want);
      snprintf(key, sizeof(key), "%s:%s:comp", ids[i], steps[k]);
      want = fail != 0 && k < upto ? 1 : 0;
      got = chaos_flap_effects(flap, key);
      if (got != want && bad++ < 10)
        cr_log_error("%s: %d effects, want %d", key, got, want);
    }
  }
  cr_assert_eq(bad, 0, "%d effects on the target differ from the saga log",
               bad);
  cr_assert_eq(chaos_flap_key_conflicts(flap), 0,
               "an idempotency key was reused for a different request");
}

Test(chaos_http, flapping_target, .init = setup, .fini = teardown,
     .timeout = 590) {
  chaos_seed();
  begin();
  int p = chaos_flap_port(flap);
  char spec[4096];
  snprintf(spec, sizeof(spec), FLAP_SPEC, p, p, p, p, p, p);
  register_spec(spec);
  chaos_stats st;
  chaos_stats_init(&st, "http_flapping_target");
  long budget = chaos_fault_budget(20);
  static const int kinds[] = {FAULT_HTTP_REFUSE, FAULT_HTTP_503,
                              FAULT_HTTP_RESET, FAULT_HTTP_HANG};
  static const enum chaos_flap_mode modes[] = {FLAP_REFUSE, FLAP_503,
                                               FLAP_RESET, FLAP_HANG};
  for (int r = 0; chaos_more_rounds(r, chaos_stats_faults(&st), budget,
                                    st.started_ms); r++) {
    char prefix[16];
    snprintf(prefix, sizeof(prefix), "h%d", r);
    chaos_flap_set(flap, FLAP_503); /* the target is down as runs start */
    st.faults[FAULT_HTTP_503]++;
    for (int i = 0; i < FLAP_SAGAS; i++) {
      char input[96];
      snprintf(input, sizeof(input), "{\"i\": %d, \"c\": \"%s\"}", i,
               flap_expect(i) ? "fail" : "res/c");
      start_run("chaos_http", prefix, i, input);
    }
    long total = 0;
    int64_t hard_end = chaos_now_ms() + 240000;
    while (chaos_stats_faults(&st) < budget && chaos_now_ms() < hard_end &&
           (unsettled(prefix, &total) > 0 || total < FLAP_SAGAS)) {
      int k = (int)chaos_rand(0, 3);
      chaos_flap_set(flap, modes[k]);
      st.faults[kinds[k]]++;
      chaos_sleep_ms(chaos_rand(300, 1000));
      chaos_flap_set(flap, FLAP_OK);
      chaos_sleep_ms(chaos_rand(200, 700));
    }
    chaos_flap_set(flap, FLAP_OK);
    wait_settled(prefix, FLAP_SAGAS, 120);
    free(round_ids);
    round_ids = calloc(FLAP_SAGAS, 37);
    chaos_check_sagas(db, "chaos_http", prefix, FLAP_SAGAS, 3, flap_expect,
                      round_ids, &st);
    static const char *const steps[] = {"a", "b", "c"};
    check_effects(round_ids, FLAP_SAGAS, steps, 3, flap_expect);
    st.rounds++;
  }
  st.executions = chaos_flap_requests(flap);
  chaos_stats_report(&st);
  char why[512];
  cr_assert(skd_log_clean(&daemon_, why, sizeof(why)), "daemon: %s", why);
}

/* ---- load under faults ---- */

#define LOAD_THREADS 4
#define LOAD_PER_THREAD 75

static int load_expect(int i) { return i % 4 == 0 ? 2 : 0; }

#define LOAD_SPEC \
    "{\"name\": \"chaos_load\", \"version\": 1," \
    " \"defaults\": {\"timeout_ms\": 2000, \"retry\": {\"max_attempts\": 30," \
    "   \"initial_interval_ms\": 50, \"max_interval_ms\": 500}}," \
    " \"steps\": [" \
    "  {\"name\": \"x\", \"http\": {\"method\": \"POST\"," \
    "    \"url\": \"http://127.0.0.1:%d/res/x\", \"body\": {\"i\": \"${input.i}\"}}," \
    "   \"compensate\": {\"http\": {\"method\": \"DELETE\"," \
    "    \"url\": \"http://127.0.0.1:%d/res/${steps.x.output.id}\"}}}," \
    "  {\"name\": \"y\", \"http\": {\"method\": \"POST\"," \
    "    \"url\": \"http://127.0.0.1:%d/${input.y}\", \"body\": {\"i\": \"${input.i}\"}}}" \
    " ]}"

typedef struct load_ctx {
  skd_daemon d;          /* a copy: only base is used */
  char prefix[16];
  int t;
  char (*ids)[37];       /* per key: the saga id the API answered */
  double *lat_ms;        /* per key: latency of the accepted start */
  long requests, errors;
} load_ctx;

static atomic_int load_running;
static atomic_bool load_gave_up; /* a key was refused for 60 s: stop */
static char load_last_error[512];
static pthread_mutex_t load_mu = PTHREAD_MUTEX_INITIALIZER;

static void *load_thread(void *ud) {
  load_ctx *c = ud;
  for (int j = 0; j < LOAD_PER_THREAD && !atomic_load(&load_gave_up); j++) {
    int i = c->t * LOAD_PER_THREAD + j;
    char body[256];
    snprintf(body, sizeof(body),
             "{\"input\": {\"i\": %d, \"y\": \"%s\"}, "
             "\"idempotency_key\": \"%s-%d\"}",
             i, load_expect(i) ? "fail" : "res/y", c->prefix, i);
    int64_t give_up = chaos_now_ms() + 60000;
    while (!atomic_load(&load_gave_up)) {
      if (chaos_now_ms() > give_up) {
        atomic_store(&load_gave_up, true);
        break;
      }
      skd_resp r;
      c->requests++;
      skd_http(&c->d, "POST", "/v1/workflows/chaos_load/runs", body, NULL,
               5000, &r);
      const cJSON *id = cJSON_GetObjectItemCaseSensitive(r.json, "saga_id");
      if ((r.status == 201 || r.status == 200) && cJSON_IsString(id)) {
        snprintf(c->ids[i], 37, "%s", id->valuestring);
        c->lat_ms[i] = r.secs * 1000.0;
        skd_resp_free(&r);
        chaos_sleep_ms(chaos_rand(40, 120)); /* a paced client */
        break;
      }
      c->errors++;
      pthread_mutex_lock(&load_mu);
      snprintf(load_last_error, sizeof(load_last_error), "%ld %s", r.status,
               r.body);
      pthread_mutex_unlock(&load_mu);
      skd_resp_free(&r);
      chaos_sleep_ms(chaos_rand(50, 150));
    }
  }
  atomic_fetch_sub(&load_running, 1);
  return NULL;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

Test(chaos_http, load_under_faults, .init = setup, .fini = teardown,
     .timeout = 590) {
  chaos_seed();
  begin();
  int p = chaos_flap_port(flap);
  char spec[4096];
  snprintf(spec, sizeof(spec), LOAD_SPEC, p, p, p);
  register_spec(spec);
  chaos_stats st;
  chaos_stats_init(&st, "load_under_faults");
  long budget = chaos_fault_budget(6);
  enum { N = LOAD_THREADS * LOAD_PER_THREAD };
  size_t n_lat = 0;
  for (int r = 0; chaos_more_rounds(r, chaos_stats_faults(&st), budget,
                                    st.started_ms); r++) {
    char prefix[16];
    snprintf(prefix, sizeof(prefix), "L%d", r);
    free(round_ids);
    free(round_lat);
    char(*ids)[37] = round_ids = calloc(N, 37);
    double *lat = round_lat = calloc(N, sizeof(double));
    load_ctx ctx[LOAD_THREADS];
    pthread_t th[LOAD_THREADS];
    atomic_store(&load_running, LOAD_THREADS);
    atomic_store(&load_gave_up, false);
    for (int t = 0; t < LOAD_THREADS; t++) {
      ctx[t] = (load_ctx){.d = daemon_, .t = t, .ids = ids, .lat_ms = lat};
      snprintf(ctx[t].prefix, sizeof(ctx[t].prefix), "%s", prefix);
      cr_assert_eq(pthread_create(&th[t], NULL, load_thread, &ctx[t]), 0);
    }
    long round_faults = 0;
    chaos_sleep_ms(300);
    while (atomic_load(&load_running) > 0 &&
           chaos_stats_faults(&st) < budget) {
      chaos_sleep_ms(chaos_rand(500, 1500));
      if (atomic_load(&load_running) == 0)
        break;
      /* The last fault of the budget always terminates the connections
       * while clients still start runs: the daemon must reconnect by
       * itself (no restart follows to hide it). */
      bool last = chaos_stats_faults(&st) == budget - 1;
      if (!last && chaos_rand(0, 1) == 0) {
        skd_kill(&daemon_);
        st.faults[FAULT_SIGKILL_DAEMON]++;
        chaos_sleep_ms(chaos_rand(100, 600));
        skd_restart(&daemon_);
      } else if (chaos_terminate_backends(db) >= 0) {
        st.faults[FAULT_TERMINATE_BACKENDS]++;
      }
      round_faults++;
    }
    for (int t = 0; t < LOAD_THREADS; t++) {
      pthread_join(th[t], NULL);
      st.requests += ctx[t].requests;
      st.request_errors += ctx[t].errors;
    }
    int not_accepted = 0;
    for (int i = 0; i < N; i++)
      not_accepted += ids[i][0] == '\0';
    if (not_accepted > 0)
      skd_dump_log(&daemon_);
    cr_assert_eq(not_accepted, 0,
                 "%d runs were never accepted: a start was refused for 60 s "
                 "after the faults (last answer: %s)",
                 not_accepted, load_last_error);
    st.accepted += N;
    all_lat = realloc(all_lat, (n_lat + N) * sizeof(double));
    memcpy(all_lat + n_lat, lat, N * sizeof(double));
    n_lat += N;
    wait_settled(prefix, N, 120);
    free(round_db_ids);
    char(*db_ids)[37] = round_db_ids = calloc(N, 37);
    chaos_check_sagas(db, "chaos_load", prefix, N, 2, load_expect, db_ids,
                      &st);
    for (int i = 0; i < N; i++)
      cr_assert_str_eq(ids[i], db_ids[i],
                       "%s-%d: the API answered saga %s but the key belongs "
                       "to %s (a retried start made a second saga?)",
                       prefix, i, ids[i], db_ids[i]);
    static const char *const steps[] = {"x", "y"};
    check_effects(db_ids, N, steps, 2, load_expect);
    st.rounds++;
    cr_log_info("round %d: %ld faults", r, round_faults);
  }
  if (n_lat > 0) {
    qsort(all_lat, n_lat, sizeof(double), cmp_double);
    st.p50_ms = all_lat[n_lat / 2];
    st.p99_ms = all_lat[(n_lat * 99) / 100 < n_lat ? (n_lat * 99) / 100
                                                   : n_lat - 1];
    st.max_ms = all_lat[n_lat - 1];
  }
  st.executions = chaos_flap_requests(flap);
  chaos_stats_report(&st);
  cr_assert_geq(chaos_stats_faults(&st), 2, "too few faults were injected");
  char why[512];
  cr_assert(skd_log_clean(&daemon_, why, sizeof(why)), "daemon: %s", why);
}
