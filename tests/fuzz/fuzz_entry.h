/*
 * fuzz_entry.h — the entry functions of the libFuzzer targets, shared by
 * the fuzzers (tests/fuzz/fuzz_*.c, built with clang -fsanitize=fuzzer when
 * SKALD_FUZZ=ON) and by tests/unit/test_fuzz_regressions.c, which compiles
 * the same sources with -DFUZZ_NO_MAIN and replays every corpus and
 * regression file through them under the normal ASan/UBSan build.
 *
 * Each entry runs one input and checks its invariants; a broken invariant
 * calls fuzz_fail(), which prints why and aborts (libFuzzer saves the input
 * as a crash; Criterion reports the test as crashed).
 *
 * Thread: the caller's; the targets keep only read-only state between runs
 * (fuzz_http builds its route table once).
 */
#ifndef SKALD_TESTS_FUZZ_ENTRY_H
#define SKALD_TESTS_FUZZ_ENTRY_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* The JSON spec parser, canonical writer and validator. */
int fuzz_spec_one(const uint8_t *data, size_t size);
/* The template engine: input is TEMPLATE \0 SAGA_INPUT \0 STEP_OUTPUT. */
int fuzz_template_one(const uint8_t *data, size_t size);
/* The HTTP request path: the bytes are a request stream. */
int fuzz_http_one(const uint8_t *data, size_t size);

/* Prints a broken invariant and aborts. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noreturn, format(printf, 1, 2), unused))
#endif
static void fuzz_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("fuzz invariant broken: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  fflush(stderr);
  abort();
}

/* How many problems a def_problems keeps: n counts every problem added,
 * but only the first DEF_PROBLEMS_MAX are stored (spec/problems.h). */
#define FUZZ_KEPT(p) ((p)->n < (p)->cap ? (p)->n : (p)->cap)

#define FUZZ_CHECK(cond, ...)                                                  \
  do {                                                                         \
    if (!(cond))                                                               \
      fuzz_fail(__VA_ARGS__);                                                  \
  } while (0)

#endif /* SKALD_TESTS_FUZZ_ENTRY_H */
