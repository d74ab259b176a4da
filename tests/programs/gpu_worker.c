/*
 * gpu_worker.c — an engine process with fake GPUs, for the multi-node GPU
 * test (tests/integration/test_gpu_cluster.c).
 *
 * The GPUs come from the fake provider: the test sets SKALD_GPU_PROVIDER=
 * fake and SKALD_GPU_FAKE_SCRIPT for each process. The process registers
 * "gpu_wf": c1 (no GPU) → g1 (1 GPU, 8000 MB) → g2 (2 GPUs, 20000 MB each)
 * → c2 (no GPU), every step with max_attempts 1, so any attempt that counts
 * as a failure fails the saga. It starts --sagas sagas with idempotency keys
 * "<prefix>-<i>" (every process starts the same ones) and exits 0 once all
 * are settled.
 *
 * GPU steps run --step-ms, checking sk_task_cancelled every 20 ms. Each
 * execution appends one line to --log with a single write(2):
 *   START <saga> <step> <attempt> <node> <gpus> <wall_ms>
 *   END   <saga> <step> <attempt> <node> <gpus> <wall_ms> <ok|cancelled>
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <skald/skald.h>

static int log_fd = -1;
static const char *node_name = "?";
static int step_ms = 800;

static long long wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void log_line(const char *what, const sk_task *t, const char *tail) {
  char line[512];
  const char *g = sk_task_gpus(t);
  int n = snprintf(line, sizeof(line), "%s %s %s %d %s %s %lld%s%s\n", what,
                   t->saga_id, t->step, t->attempt, node_name,
                   g[0] != '\0' ? g : "-", wall_ms(), tail[0] ? " " : "",
                   tail);
  if (write(log_fd, line, (size_t)n) != n)
    _exit(3);
}

static int cpu_fn(const sk_task *t, sk_task_result *r, void *ud) {
  (void)ud;
  log_line("START", t, "");
  log_line("END", t, "ok");
  return sk_result_ok(r, "{}");
}

static int gpu_fn(const sk_task *t, sk_task_result *r, void *ud) {
  (void)ud;
  log_line("START", t, "");
  for (int waited = 0; waited < step_ms; waited += 20) {
    if (sk_task_cancelled(t)) {
      log_line("END", t, "cancelled");
      return sk_result_error(r, "Cancelled", "asked to stop", true);
    }
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
  }
  log_line("END", t, "ok");
  return sk_result_ok(r, "{}");
}

#define ONCE "\"retry\": {\"max_attempts\": 1}"
static const char *const SPEC =
    "{\"name\": \"gpu_wf\", \"version\": 1, \"steps\": ["
    "  {\"name\": \"c1\", \"task\": \"gpu.cpu\", " ONCE "},"
    "  {\"name\": \"g1\", \"task\": \"gpu.work\", " ONCE ","
    "   \"resources\": {\"gpus\": 1, \"gpu_memory_mb\": 8000}},"
    "  {\"name\": \"g2\", \"task\": \"gpu.work\", " ONCE ","
    "   \"resources\": {\"gpus\": 2, \"gpu_memory_mb\": 20000}},"
    "  {\"name\": \"c2\", \"task\": \"gpu.cpu\", " ONCE "}]}";

static int register_all(sk_engine *e) {
  sk_workflow *wf = NULL;
  sk_error err = {0};
  int rc = sk_engine_register_task(e, "gpu.cpu", cpu_fn, NULL);
  if (rc == SK_OK)
    rc = sk_engine_register_task(e, "gpu.work", gpu_fn, NULL);
  if (rc == SK_OK)
    rc = sk_workflow_from_json(SPEC, &wf, NULL, &err);
  if (rc == SK_OK)
    rc = sk_engine_register_workflow(e, wf, &err);
  if (rc != SK_OK)
    fprintf(stderr, "gpu_worker: could not register: %s\n", err.message);
  sk_workflow_free(wf);
  return rc;
}

typedef struct args {
  const char *db, *log, *prefix, *node;
  int sagas, lease_ms;
} args;

static int parse_args(int argc, char **argv, args *a) {
  *a = (args){.prefix = "g", .sagas = 20, .lease_ms = 1000};
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
    else if (strcmp(argv[i], "--step-ms") == 0)
      step_ms = atoi(argv[i + 1]);
    else
      return -1;
  }
  return a->db && a->log && a->node && a->sagas > 0 ? 0 : -1;
}

static int run_sagas(sk_engine *e, const args *a) {
  char (*ids)[SK_ID_LEN] = calloc((size_t)a->sagas, SK_ID_LEN);
  int rc = ids != NULL ? SK_OK : SK_ENOMEM;
  sk_error err = {0};
  for (int i = 0; i < a->sagas && rc == SK_OK; i++) {
    char key[64];
    snprintf(key, sizeof(key), "%s-%d", a->prefix, i);
    sk_run_options ro = {.version = 1, .idempotency_key = key};
    rc = sk_run_start(e, "gpu_wf", "{}", &ro, ids[i], NULL, &err);
    if (rc != SK_OK)
      fprintf(stderr, "gpu_worker: start %d failed: %s\n", i, err.message);
  }
  for (int i = 0; i < a->sagas && rc == SK_OK; i++) {
    sk_status st;
    rc = sk_saga_wait(e, ids[i], 600000, &st);
  }
  free(ids);
  return rc;
}

int main(int argc, char **argv) {
  args a;
  if (parse_args(argc, argv, &a) != 0) {
    fprintf(stderr, "usage: gpu_worker --db URL --log FILE --node NAME "
                    "[--sagas N] [--prefix P] [--lease-ms MS] "
                    "[--step-ms MS]\n");
    return 2;
  }
  node_name = a.node;
  log_fd = open(a.log, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (log_fd < 0) {
    perror("gpu_worker: open log");
    return 2;
  }
  sk_engine_options o;
  sk_engine_options_init(&o);
  o.database_url = a.db;
  o.node_name = a.node;
  o.lease_ttl_ms = a.lease_ms;
  o.poll_interval_ms = 100;
  o.default_concurrency = 8;
  o.gpu_sample_interval_ms = 100;
  o.log_level = 1;
  sk_engine *e = NULL;
  sk_error err = {0};
  if (sk_engine_open(&o, &e, &err) != SK_OK) {
    fprintf(stderr, "gpu_worker: could not open: %s\n", err.message);
    return 1;
  }
  int rc = register_all(e);
  if (rc == SK_OK)
    rc = sk_engine_start(e);
  if (rc == SK_OK)
    rc = run_sagas(e, &a);
  sk_engine_close(e);
  close(log_fd);
  return rc == SK_OK ? 0 : 1;
}
