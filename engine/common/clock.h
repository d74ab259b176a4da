/*
 * clock.h — the engine's clocks, behind a seam so tests can drive time.
 *
 * clock_now_ms() is wall-clock milliseconds since the epoch (what the saga
 * log records and what available_at is computed from); clock_mono_ms() is
 * CLOCK_MONOTONIC for measuring intervals. A test may install a fake wall
 * clock with clock_set_fake(); it applies process-wide.
 */
#ifndef SKALD_COMMON_CLOCK_H
#define SKALD_COMMON_CLOCK_H

#include <stdint.h>

int64_t clock_now_ms(void);
int64_t clock_mono_ms(void);
int64_t clock_mono_us(void);
/* fn = NULL restores the real clock. */
void clock_set_fake(int64_t (*fn)(void));

#endif /* SKALD_COMMON_CLOCK_H */
