/*
 * test_http_steps.c — `http` steps run by the engine itself (libcurl on the
 * engine loop) against a real HTTP service over loopback (build/
 * demo_service, started per test), on a real PostgreSQL:
 *   - a JSON response becomes the step's output; later templates use it;
 *     every request carries the step's idempotency key;
 *   - 503 is retried, 402 is not and compensates earlier http steps with
 *     their own http compensations, newest first;
 *   - success_codes turn a 402 into success;
 *   - a host that refuses connections opens its circuit breaker: further
 *     attempts are deferred, not spent, until the breaker may probe.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <skald/skald.h>

#include "daemon.h"
#include "pgtest.h"
#include "testutil.h"

static char db[512];
static sk_engine *e;
static pid_t svc;
static int port;
static char svc_log[64];

static void setup(void) {
  cr_assert_eq(pgtest_fresh_db(db, sizeof(db)), 0);
  port = skd_free_port();
  snprintf(svc_log, sizeof(svc_log), "/tmp/skald-svc-%d.log", (int)getpid());
  svc = fork();
  if (svc == 0) {
    int fd = open(svc_log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    char listen[32];
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    execl(SKALD_BINARY_DIR "/demo_service", "demo_service", "--listen", listen,
          (char *)NULL);
    _exit(127);
  }
  skd_sleep_ms(300);
  sk_engine_options o;
  sk_engine_options_init(&o);
  o.database_url = db;
  o.poll_interval_ms = 100;
  o.breaker_failure_threshold = 2;
  o.breaker_open_ms = 2000;
  o.log_level = 1;
  sk_error err = {0};
  cr_assert_eq(sk_engine_open(&o, &e, &err), SK_OK, "%s", err.message);
}

static void teardown(void) {
  sk_engine_close(e);
  kill(svc, SIGTERM);
  int st;
  waitpid(svc, &st, 0);
  unlink(svc_log);
  pgtest_drop_db(db);
}

/* Registers a spec (with PORT replaced by the service's port). */
static void register_spec(const char *tmpl) {
  char spec[4096], num[16];
  snprintf(num, sizeof(num), "%d", port);
  const char *p = tmpl;
  size_t n = 0;
  while (*p && n + 16 < sizeof(spec)) {
    if (strncmp(p, "PORT", 4) == 0) {
      n += (size_t)snprintf(spec + n, sizeof(spec) - n, "%s", num);
      p += 4;
    } else {
      spec[n++] = *p++;
    }
  }
  spec[n] = '\0';
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
  cr_assert_eq(sk_saga_wait(e, id, 30000, &st), SK_OK, "saga did not settle");
  return st;
}

static const char *TRIP =
    "{\"name\":\"http_trip\",\"version\":1,"
    "\"defaults\":{\"retry\":{\"max_attempts\":4,\"initial_interval_ms\":20}},"
    "\"steps\":["
    "{\"name\":\"flight\",\"http\":{\"method\":\"POST\","
    "\"url\":\"http://127.0.0.1:PORT/flights\",\"body\":{\"to\":\"${input.to}\"}},"
    "\"compensate\":{\"http\":{\"method\":\"DELETE\","
    "\"url\":\"http://127.0.0.1:PORT/flights/${steps.flight.output.id}\"}}},"
    "{\"name\":\"hotel\",\"http\":{\"method\":\"POST\","
    "\"url\":\"http://127.0.0.1:PORT/hotels\",\"body\":{\"flaky\":true}},"
    "\"compensate\":{\"http\":{\"method\":\"DELETE\","
    "\"url\":\"http://127.0.0.1:PORT/hotels/${steps.hotel.output.id}\"}}},"
    "{\"name\":\"pay\",\"http\":{\"method\":\"POST\","
    "\"url\":\"http://127.0.0.1:PORT/payments\",\"body\":{\"card\":\"${input.card}\"}}}]}";

Test(http_steps, outputs_retries_and_http_compensations, .init = setup,
     .fini = teardown, .timeout = 120) {
  register_spec(TRIP);
  cr_assert_eq(sk_engine_start(e), SK_OK);
  char ok[SK_ID_LEN], bad[SK_ID_LEN];
  cr_assert_eq(run("http_trip", "{\"to\":\"LIS\",\"card\":\"ok\"}", ok),
               SK_STATUS_COMPLETED);
  cr_assert_eq(run("http_trip", "{\"to\":\"ROM\",\"card\":\"declined\"}", bad),
               SK_STATUS_COMPENSATED);
  char *view = NULL;
  cr_assert_eq(sk_saga_get_json(e, ok, &view), SK_OK);
  cr_assert(strstr(view, "\"FL-") != NULL, "the response became the output");
  sk_free(view);
  char *log = testutil_read_file(svc_log, NULL);
  cr_assert_not_null(log);
  char key[128];
  snprintf(key, sizeof(key), "key=%s:flight:fwd", ok);
  cr_assert(strstr(log, key) != NULL, "no Idempotency-Key %s in:\n%s", key,
            log);
  snprintf(key, sizeof(key), "503  key=%s:hotel:fwd", ok);
  cr_assert(strstr(log, key) != NULL, "the 503 was not retried");
  /* The declined trip: hotel undone before flight, by their http
   * compensations, each with its comp key. */
  char hkey[128], fkey[128];
  snprintf(hkey, sizeof(hkey), "key=%s:hotel:comp", bad);
  snprintf(fkey, sizeof(fkey), "key=%s:flight:comp", bad);
  const char *h = strstr(log, hkey), *f = strstr(log, fkey);
  cr_assert(h != NULL && f != NULL && h < f, "compensations:\n%s", log);
  snprintf(key, sizeof(key), "402  key=%s:pay:fwd", bad);
  const char *first = strstr(log, key);
  cr_assert(first != NULL && strstr(first + 1, key) == NULL,
            "a 402 must not be retried");
  free(log);
}

Test(http_steps, success_codes_accept_a_4xx, .init = setup, .fini = teardown,
     .timeout = 60) {
  register_spec("{\"name\":\"pay402\",\"version\":1,\"steps\":["
                "{\"name\":\"pay\",\"http\":{\"method\":\"POST\","
                "\"url\":\"http://127.0.0.1:PORT/payments\","
                "\"body\":{\"card\":\"declined\"},\"success_codes\":[402]}}]}");
  cr_assert_eq(sk_engine_start(e), SK_OK);
  char id[SK_ID_LEN];
  cr_assert_eq(run("pay402", "{}", id), SK_STATUS_COMPLETED);
}

Test(http_steps, an_open_host_breaker_spends_no_attempts, .init = setup,
     .fini = teardown, .timeout = 60) {
  int dead = skd_free_port(); /* nobody listens there */
  char spec[512];
  snprintf(spec, sizeof(spec),
           "{\"name\":\"dead\",\"version\":1,\"steps\":[{\"name\":\"call\","
           "\"http\":{\"method\":\"GET\",\"url\":\"http://127.0.0.1:%d/x\"},"
           "\"retry\":{\"max_attempts\":20,\"initial_interval_ms\":10,"
           "\"backoff_coefficient\":1,\"jitter\":0}}]}",
           dead);
  register_spec(spec);
  cr_assert_eq(sk_engine_start(e), SK_OK);
  char id[SK_ID_LEN];
  sk_error err = {0};
  cr_assert_eq(sk_run_start(e, "dead", "{}", NULL, id, NULL, &err), SK_OK);
  skd_sleep_ms(1200);
  char sql[200];
  snprintf(sql, sizeof(sql),
           "SELECT count(*) FROM saga_events WHERE saga_id = '%s' AND type = "
           "'StepFailed'",
           id);
  /* Two refused connections open the breaker (threshold 2); with 10 ms
   * retries, 20 attempts would be gone in well under a second otherwise. */
  long long failed = pgtest_scalar(db, sql);
  cr_assert_eq(failed, 2, "%lld attempts spent while the breaker was open",
               failed);
  /* After open_ms (2 s) one half-open probe goes out; it fails, and the
   * breaker opens again for another 2 s: exactly one more attempt. */
  for (int i = 0; i < 60 && failed < 3; i++) {
    skd_sleep_ms(100);
    failed = pgtest_scalar(db, sql);
  }
  cr_assert_eq(failed, 3, "the half-open probe: %lld attempts", failed);
  skd_sleep_ms(500);
  failed = pgtest_scalar(db, sql);
  cr_assert_eq(failed, 3, "attempts spent after the probe failed: %lld",
               failed);
}
