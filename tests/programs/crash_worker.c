/*
 * crash_worker.c — an engine process for the crash and multi-node tests.
 *
 * It opens an engine on --db, registers the 5-step workflow "crash_wf"
 * (every step and compensation logs its execution), starts --sagas sagas
 * with idempotency keys "<prefix>-<i>" (so a restarted process starts
 * exactly the ones that were not started yet and gets the others back),
 * and runs until every one of them is settled, then exits 0. The tests kill
 * it with SIGKILL at random moments and start it again.
 *
 * Saga i's input decides its fate, so the tests know what to expect:
 *   fail_at   = 1 + (i / 4) % 5 when i % 4 == 0, else 0 (no failure):
 *               that step fails with a non-retryable error;
 *   flaky     = i % 3 == 0: the first attempt of every step fails with a
 *               retryable error (and the retry succeeds);
 *   comp_flaky= i % 5 == 0: the first attempt of every compensation fails.
 * Each execution appends one line to --log with a single write(2) (O_APPEND,
 * so lines from concurrent processes never interleave and survive SIGKILL):
 *   EXEC <saga_id> <step> <fwd|comp> <attempt> <idempotency_key> <pid> <ok|fail>
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <skald/skald.h>

static int log_fd = -1;

static void log_exec(const sk_task *t, bool ok) {
  char line[512];
  int n = snprintf(line, sizeof(line), "EXEC %s %s %s %d %s %ld %s\n",
                   t->saga_id, t->step, t->is_compensation ? "comp" : "fwd",
                   t->attempt, t->idempotency_key, (long)getpid(),
                   ok ? "ok" : "fail");
  if (write(log_fd, line, (size_t)n) != n)
    _exit(3); /* the test cannot judge a run whose log is incomplete */
}

static int input_int(const sk_task *t, const char *key) {
  cJSON *doc = cJSON_Parse(t->input);
  const cJSON *in = cJSON_GetObjectItem(doc, "input");
  if (in == NULL)
    in = doc; /* forward steps get the saga input itself */
  const cJSON *v = cJSON_GetObjectItem(in, key);
  int r = cJSON_IsNumber(v) ? v->valueint : 0;
  cJSON_Delete(doc);
  return r;
}

static void small_pause(void) {
  struct timespec ts = {0, (long)(rand() % 3000) * 1000L};
  nanosleep(&ts, NULL);
}

static int step_fn(const sk_task *t, sk_task_result *r, void *ud) {
  (void)ud;
  small_pause();
  int step_no = atoi(t->step + 1); /* "s3" → 3 */
  if (input_int(t, "flaky") && t->attempt == 1) {
    log_exec(t, false);
    return sk_result_error(r, "Flaky", "transient failure", true);
  }
  if (input_int(t, "fail_at") == step_no) {
    log_exec(t, false);
    return sk_result_error(r, "Rejected", "this step always fails", false);
  }
  log_exec(t, true);
  char out[128];
  snprintf(out, sizeof(out), "{\"step\": %d, \"pid\": %ld}", step_no,
           (long)getpid());
  return sk_result_ok(r, out);
}

static int undo_fn(const sk_task *t, sk_task_result *r, void *ud) {
  (void)ud;
  small_pause();
  if (input_int(t, "comp_flaky") && t->attempt == 1) {
    log_exec(t, false);
    return sk_result_error(r, "Flaky", "transient failure", true);
  }
  log_exec(t, true);
  return sk_result_ok(r, "{\"undone\": true}");
}

static int register_all(sk_engine *e) {
  sk_workflow *wf = NULL;
  int rc = sk_engine_register_task(e, "crash.step", step_fn, NULL);
  if (rc == SK_OK)
    rc = sk_engine_register_task(e, "crash.undo", undo_fn, NULL);
  if (rc == SK_OK)
    rc = sk_workflow_new("crash_wf", 1, &wf);
  sk_retry retry;
  sk_retry_init(&retry);
  retry.max_attempts = 3;
  retry.initial_interval_ms = 10;
  retry.max_interval_ms = 100;
  if (rc == SK_OK)
    rc = sk_workflow_set_default_retry(wf, &retry);
  for (int i = 1; i <= 5 && rc == SK_OK; i++) {
    char name[8];
    snprintf(name, sizeof(name), "s%d", i);
    rc = sk_workflow_add_step(wf, name, "crash.step");
    if (rc == SK_OK)
      rc = sk_workflow_step_compensate(wf, name, "crash.undo", NULL);
  }
  sk_error err = {0};
  if (rc == SK_OK)
    rc = sk_engine_register_workflow(e, wf, &err);
  if (rc != SK_OK)
    fprintf(stderr, "crash_worker: could not register: %s\n", err.message);
  sk_workflow_free(wf);
  return rc;
}

typedef struct args {
  const char *db, *log, *prefix, *node;
  int sagas, lease_ms, workers;
} args;

static int parse_args(int argc, char **argv, args *a) {
  *a = (args){.prefix = "c", .sagas = 200, .lease_ms = 1000, .workers = 8};
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--db") == 0)
      a->db = argv[i + 1];
    else if (strcmp(argv[i], "--log") == 0)
      a->log = argv[i + 1];
    else if (strcmp(argv[i], "--prefix") == 0)
      a->prefix = argv[i + 1];
    else if (strcmp(argv[i], "--node") == 0)
      a->node = argv[i + 1];
    else if (strcmp(argv[i], "--sagas") == 0)
      a->sagas = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--lease-ms") == 0)
      a->lease_ms = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--workers") == 0)
      a->workers = atoi(argv[i + 1]);
    else
      return -1;
  }
  return a->db && a->log && a->sagas > 0 && a->lease_ms >= 300 ? 0 : -1;
}

int main(int argc, char **argv) {
  args a;
  if (parse_args(argc, argv, &a) != 0) {
    fprintf(stderr, "usage: crash_worker --db URL --log FILE [--sagas N] "
                    "[--prefix P] [--node NAME] [--lease-ms MS] "
                    "[--workers N]\n");
    return 2;
  }
  srand((unsigned)getpid());
  log_fd = open(a.log, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (log_fd < 0) {
    perror("crash_worker: open log");
    return 2;
  }
  sk_engine_options o;
  sk_engine_options_init(&o);
  o.database_url = a.db;
  o.node_name = a.node;
  o.lease_ttl_ms = a.lease_ms;
  o.poll_interval_ms = 100;
  o.default_concurrency = a.workers;
  o.log_level = 1;
  sk_engine *e = NULL;
  sk_error err = {0};
  if (sk_engine_open(&o, &e, &err) != SK_OK) {
    fprintf(stderr, "crash_worker: could not open: %s\n", err.message);
    return 1;
  }
  int rc = register_all(e);
  if (rc == SK_OK)
    rc = sk_engine_start(e);
  char (*ids)[SK_ID_LEN] = calloc((size_t)a.sagas, SK_ID_LEN);
  for (int i = 0; i < a.sagas && rc == SK_OK; i++) {
    char key[64], input[160];
    snprintf(key, sizeof(key), "%s-%d", a.prefix, i);
    int fail_at = i % 4 == 0 ? 1 + (i / 4) % 5 : 0;
    snprintf(input, sizeof(input),
             "{\"i\": %d, \"fail_at\": %d, \"flaky\": %d, \"comp_flaky\": %d}",
             i, fail_at, i % 3 == 0, i % 5 == 0);
    sk_run_options ro = {.version = 1, .idempotency_key = key};
    rc = sk_run_start(e, "crash_wf", input, &ro, ids[i], NULL, &err);
    if (rc != SK_OK)
      fprintf(stderr, "crash_worker: start %d failed: %s\n", i, err.message);
  }
  for (int i = 0; i < a.sagas && rc == SK_OK; i++) {
    sk_status st;
    rc = sk_saga_wait(e, ids[i], 600000, &st);
  }
  free(ids);
  sk_engine_close(e);
  close(log_fd);
  return rc == SK_OK ? 0 : 1;
}
