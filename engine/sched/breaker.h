/*
 * breaker.h — a circuit breaker (closed → open → half-open → closed).
 *
 * Closed: everything passes; `threshold` consecutive counted failures open
 * it. Open: nothing is dequeued (no attempt is spent) until open_ms have
 * passed; then half-open: exactly one probe may be dispatched; its success
 * closes the breaker, its failure opens it again for another open_ms.
 * Counted failures are retryable ones (timeouts, infrastructure errors); a
 * business error (non-retryable) says nothing about the dependency's health
 * and resets nothing.
 *
 * Pure: time is passed in. Thread: the engine loop thread.
 */
#ifndef SKALD_SCHED_BREAKER_H
#define SKALD_SCHED_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

#define BREAKER_STATE_MAP(X)                                                   \
  X(CLOSED, "closed")                                                          \
  X(OPEN, "open")                                                              \
  X(HALF_OPEN, "half_open")

typedef enum breaker_state {
#define BREAKER_STATE_ENUM(name, str) BREAKER_STATE_##name,
  BREAKER_STATE_MAP(BREAKER_STATE_ENUM)
#undef BREAKER_STATE_ENUM
} breaker_state;

typedef struct breaker {
  breaker_state state;
  int threshold;
  int64_t open_ms;
  int failures;          /* consecutive counted failures while closed */
  int64_t opened_at_ms;
  bool probe_out;        /* half-open: the probe is dispatched */
  uint64_t opens;        /* times it opened (metrics) */
} breaker;

const char *breaker_state_name(breaker_state s);
void breaker_init(breaker *b, int threshold, int64_t open_ms);
/* How many tasks may be dispatched now: -1 = no limit, 0 = none, 1 = the
 * half-open probe. Moves open → half-open when open_ms have passed. */
int breaker_allow(breaker *b, int64_t now_ms);
/* A task was dispatched (marks the half-open probe as out). */
void breaker_on_dispatch(breaker *b);
/* An attempt finished. counted_failure: a retryable failure or timeout. */
void breaker_record(breaker *b, bool success, bool counted_failure,
                    int64_t now_ms);

#endif /* SKALD_SCHED_BREAKER_H */
