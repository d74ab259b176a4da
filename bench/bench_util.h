/*
 * bench_util.h — small helpers shared by the benchmark programs
 * (skald_bench.c, skald_bench_recovery.c): fatal errors, argument parsing,
 * sleeping. Each program sets bench_prog (the prefix of its messages).
 *
 * Thread: any (die and bad_arg exit the process).
 */
#ifndef SKALD_BENCH_UTIL_H
#define SKALD_BENCH_UTIL_H

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

#endif /* SKALD_BENCH_UTIL_H */
