/*
 * bench_util.h — small helpers shared by the benchmark programs
 * (skald_bench.c, skald_bench_recovery.c): fatal errors, argument parsing,
 * sleeping. Each program sets bench_prog (the prefix of its messages).
 *
 * Thread: any (die and bad_arg exit the process).
 */
#ifndef SKALD_BENCH_UTIL_H
#define SKALD_BENCH_UTIL_H

#include <skald/skald.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static const char *bench_prog = "bench";

static inline void sleep_ms(int ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

/* Prints "<prog>: <message>" and exits 1 (a failed run). */
static inline void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", bench_prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

/* Prints "<prog>: <message>" and exits 2 (bad arguments). */
static inline void bad_arg(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", bench_prog);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n(see %s --help)\n", bench_prog);
  va_end(ap);
  exit(2);
}

/* The integer value v of flag, within [lo, hi], or exit 2. */
static inline long long parse_int(const char *flag, const char *v, long long lo,
                                  long long hi) {
  if (v == NULL)
    bad_arg("%s needs a value", flag);
  errno = 0;
  char *end = NULL;
  long long x = strtoll(v, &end, 10);
  if (errno != 0 || end == v || *end != '\0' || x < lo || x > hi)
    bad_arg("%s must be an integer from %lld to %lld, not \"%s\"", flag, lo, hi,
            v);
  return x;
}

/* The non-empty value v of flag, or exit 2. */
static inline const char *parse_str(const char *flag, const char *v) {
  if (v == NULL || v[0] == '\0')
    bad_arg("%s needs a non-empty value", flag);
  return v;
}

/* Opens an engine with eo, registers fn for task type `task`, registers
 * `workflow` v1 as `steps` task steps s1..sK of that type and starts the
 * engine; exits 1 with the reason on any failure. */
static inline sk_engine *bench_open_engine(const sk_engine_options *eo,
                                           const char *workflow,
                                           const char *task, int steps,
                                           sk_task_fn fn, void *ud) {
  sk_engine *e = NULL;
  sk_error err = {0};
  int rc = sk_engine_open(eo, &e, &err);
  if (rc != SK_OK)
    die("could not open the engine: %s",
        err.message[0] ? err.message : sk_strerror(rc));
  rc = sk_engine_register_task(e, task, fn, ud);
  if (rc != SK_OK)
    die("could not register the %s handler: %s", task, sk_strerror(rc));
  sk_workflow *wf = NULL;
  rc = sk_workflow_new(workflow, 1, &wf);
  for (int i = 1; i <= steps && rc == SK_OK; i++) {
    char name[16];
    snprintf(name, sizeof(name), "s%d", i);
    rc = sk_workflow_add_step(wf, name, task);
  }
  if (rc == SK_OK)
    rc = sk_engine_register_workflow(e, wf, &err);
  sk_workflow_free(wf);
  if (rc == SK_ECONFLICT)
    die("this database already holds %s v1 with another number of steps; "
        "use --steps as before or a fresh database",
        workflow);
  if (rc != SK_OK)
    die("could not register the workflow: %s",
        err.message[0] ? err.message : sk_strerror(rc));
  rc = sk_engine_start(e);
  if (rc != SK_OK)
    die("could not start the engine: %s", sk_strerror(rc));
  return e;
}

#endif /* SKALD_BENCH_UTIL_H */
