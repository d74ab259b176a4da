/*
 * clock.c — real and fake clocks (see clock.h). Thread: any.
 */
#include "common/clock.h"

#include <stdatomic.h>
#include <stddef.h>
#include <time.h>

/* Static storage starts as NULL (no initializer: clang refuses a constant
 * initializer for an _Atomic pointer to function). */
static _Atomic(int64_t (*)(void)) fake_now;

int64_t clock_now_ms(void) {
  int64_t (*fn)(void) = atomic_load(&fake_now);
  if (fn != NULL)
    return fn();
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t clock_mono_ms(void) { return clock_mono_us() / 1000; }

int64_t clock_mono_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void clock_set_fake(int64_t (*fn)(void)) { atomic_store(&fake_now, fn); }
