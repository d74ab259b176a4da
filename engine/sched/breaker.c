/*
 * breaker.c — circuit breaker state machine (see breaker.h).
 *
 * Every state change goes through set_state(), which logs it; moves other
 * than closed→open, open→half_open, half_open→closed|open are impossible.
 *
 * Thread: the engine loop thread; pure apart from logging.
 */
#include "sched/breaker.h"

#include <stddef.h>

#include "common/log.h"

const char *breaker_state_name(breaker_state s) {
  switch (s) {
#define BREAKER_NAME_CASE(name, str)                                           \
  case BREAKER_STATE_##name:                                                   \
    return str;
    BREAKER_STATE_MAP(BREAKER_NAME_CASE)
#undef BREAKER_NAME_CASE
  }
  return "unknown";
}

void breaker_init(breaker *b, int threshold, int64_t open_ms) {
  *b = (breaker){.state = BREAKER_STATE_CLOSED,
                 .threshold = threshold > 0 ? threshold : 1,
                 .open_ms = open_ms > 0 ? open_ms : 1};
}

static void set_state(breaker *b, breaker_state to, int64_t now_ms) {
  if (b->state == to)
    return;
  log_write(LOG_INFO, "circuit breaker changed state", "from",
            breaker_state_name(b->state), "to", breaker_state_name(to), NULL);
  b->state = to;
  b->probe_out = false;
  if (to == BREAKER_STATE_OPEN) {
    b->opened_at_ms = now_ms;
    b->opens++;
  }
  if (to == BREAKER_STATE_CLOSED)
    b->failures = 0;
}

int breaker_allow(breaker *b, int64_t now_ms) {
  switch (b->state) {
  case BREAKER_STATE_CLOSED:
    return -1;
  case BREAKER_STATE_OPEN:
    if (now_ms - b->opened_at_ms < b->open_ms)
      return 0;
    set_state(b, BREAKER_STATE_HALF_OPEN, now_ms);
    return 1;
  case BREAKER_STATE_HALF_OPEN:
    return b->probe_out ? 0 : 1;
  }
  return 0;
}

void breaker_on_dispatch(breaker *b) {
  if (b->state == BREAKER_STATE_HALF_OPEN)
    b->probe_out = true;
}

void breaker_record(breaker *b, bool success, bool counted_failure,
                    int64_t now_ms) {
  switch (b->state) {
  case BREAKER_STATE_CLOSED:
    if (success) {
      b->failures = 0;
    } else if (counted_failure && ++b->failures >= b->threshold) {
      set_state(b, BREAKER_STATE_OPEN, now_ms);
    }
    break;
  case BREAKER_STATE_HALF_OPEN:
    if (success)
      set_state(b, BREAKER_STATE_CLOSED, now_ms);
    else if (counted_failure)
      set_state(b, BREAKER_STATE_OPEN, now_ms);
    else
      b->probe_out = false; /* a business error: let another probe go */
    break;
  case BREAKER_STATE_OPEN:
    /* Late results of attempts dispatched before it opened. */
    break;
  }
}
