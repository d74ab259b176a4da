/*
 * test_breaker.c — sched/breaker.c: every transition of the circuit breaker
 * (closed → open → half-open → closed | open), driven by scripts of
 * operations with the clock passed in, so nothing here sleeps.
 *
 * A script is a list of steps; each step does one thing to the breaker and
 * then checks the whole observable state (state, consecutive failures,
 * whether the probe is out, times opened, and for ALLOW the answer).
 */
#include "sched/breaker.h"

#include <criterion/criterion.h>
#include <string.h>

#include "common/log.h"

static void quiet(void) { log_set_level(LOG_ERROR); }

TestSuite(breaker, .init = quiet);

typedef enum op {
  OP_ALLOW,    /* breaker_allow(now); checks `allow` */
  OP_DISPATCH, /* breaker_on_dispatch() */
  OP_OK,       /* breaker_record(success) */
  OP_FAIL,     /* breaker_record(counted failure: retryable or timeout) */
  OP_BIZ,      /* breaker_record(non-counted failure: a business error) */
  OP_END
} op;

typedef struct step {
  op op;
  int64_t now;
  int allow;           /* OP_ALLOW only */
  breaker_state state; /* after the step */
  int failures;
  bool probe_out;
  uint64_t opens;
  int64_t opened_at; /* checked when state != CLOSED */
} step;

#define C BREAKER_STATE_CLOSED
#define O BREAKER_STATE_OPEN
#define H BREAKER_STATE_HALF_OPEN

typedef struct script {
  const char *name;
  int threshold;
  int64_t open_ms;
  step steps[16];
} script;

/* threshold 2, open for 500 ms unless said otherwise. */
static const script scripts[] = {
    {"closed lets everything through; success keeps it closed",
     2,
     500,
     {{OP_ALLOW, 0, -1, C, 0, false, 0, 0},
      {OP_DISPATCH, 0, 0, C, 0, false, 0, 0},
      {OP_OK, 1, 0, C, 0, false, 0, 0},
      {OP_ALLOW, 2, -1, C, 0, false, 0, 0},
      {OP_END, 0, 0, 0, 0, false, 0, 0}}},
    {"closed: counted failures below the threshold stay closed",
     3,
     500,
     {{OP_FAIL, 10, 0, C, 1, false, 0, 0},
      {OP_FAIL, 11, 0, C, 2, false, 0, 0},
      {OP_ALLOW, 12, -1, C, 2, false, 0, 0},
      {OP_END, 0, 0, 0, 0, false, 0, 0}}},
    {"closed: a success resets the consecutive count",
     2,
     500,
     {{OP_FAIL, 10, 0, C, 1, false, 0, 0},
      {OP_OK, 11, 0, C, 0, false, 0, 0},
      {OP_FAIL, 12, 0, C, 1, false, 0, 0},
      {OP_ALLOW, 13, -1, C, 1, false, 0, 0},
      {OP_END, 0, 0, 0, 0, false, 0, 0}}},
    {"closed: a business error neither counts nor resets",
     2,
     500,
     {{OP_FAIL, 10, 0, C, 1, false, 0, 0},
      {OP_BIZ, 11, 0, C, 1, false, 0, 0},
      {OP_BIZ, 12, 0, C, 1, false, 0, 0},
      {OP_FAIL, 13, 0, O, 2, false, 1, 13}, /* second counted: opens */
      {OP_END, 0, 0, 0, 0, false, 0, 0}}},
    {"closed → open at the threshold; open refuses until open_ms",
     2,
     500,
     {{OP_FAIL, 100, 0, C, 1, false, 0, 0},
      {OP_FAIL, 200, 0, O, 2, false, 1, 200},
      {OP_ALLOW, 200, 0, O, 2, false, 1, 200},
      {OP_ALLOW, 699, 0, O, 2, false, 1, 200},
      {OP_END, 0, 0, 0, 0, false, 0, 0}}},
    {"open → half-open exactly when open_ms have passed; one probe",
     2,
     500,
     {{OP_FAIL, 100, 0, C, 1, false, 0, 0},
      {OP_FAIL, 200, 0, O, 2, false, 1, 200},
      {OP_ALLOW, 700, 1, H, 2, false, 1, 200},
      {OP_ALLOW, 701, 1, H, 2, false, 1, 200}, /* not dispatched yet */
      {OP_DISPATCH, 702, 0, H, 2, true, 1, 200},
      {OP_ALLOW, 703, 0, H, 2, true, 1, 200}, /* probe out: none */
      {OP_ALLOW, 99999, 0, H, 2, true, 1, 200},
      {OP_END, 0, 0, 0, 0, false, 0, 0}}},
    {"open: late results of earlier attempts change nothing",
     1,
     500,
     {{OP_FAIL, 100, 0, O, 1, false, 1, 100},
      {OP_OK, 150, 0, O, 1, false, 1, 100},
      {OP_FAIL, 160, 0, O, 1, false, 1, 100},
      {OP_BIZ, 170, 0, O, 1, false, 1, 100},
      {OP_ALLOW, 599, 0, O, 1, false, 1, 100},
      {OP_END, 0, 0, 0, 0, false, 0, 0}}},
    {"half-open: the probe's success closes it and clears the count",
     2,
     500,
     {{OP_FAIL, 0, 0, C, 1, false, 0, 0},
      {OP_FAIL, 0, 0, O, 2, false, 1, 0},
      {OP_ALLOW, 500, 1, H, 2, false, 1, 0},
      {OP_DISPATCH, 500, 0, H, 2, true, 1, 0},
      {OP_OK, 520, 0, C, 0, false, 1, 0},
      {OP_ALLOW, 521, -1, C, 0, false, 1, 0},
      {OP_FAIL, 530, 0, C, 1, false, 1, 0}, /* counting starts afresh */
      {OP_END, 0, 0, 0, 0, false, 0, 0}}},
    {"half-open: the probe's counted failure opens it again",
     2,
     500,
     {{OP_FAIL, 0, 0, C, 1, false, 0, 0},
      {OP_FAIL, 10, 0, O, 2, false, 1, 10},
      {OP_ALLOW, 510, 1, H, 2, false, 1, 10},
      {OP_DISPATCH, 510, 0, H, 2, true, 1, 10},
      {OP_FAIL, 600, 0, O, 2, false, 2, 600},
      {OP_ALLOW, 1099, 0, O, 2, false, 2, 600}, /* a new full open_ms */
      {OP_ALLOW, 1100, 1, H, 2, false, 2, 600},
      {OP_END, 0, 0, 0, 0, false, 0, 0}}},
    {"half-open: a business error lets another probe go",
     2,
     500,
     {{OP_FAIL, 0, 0, C, 1, false, 0, 0},
      {OP_FAIL, 0, 0, O, 2, false, 1, 0},
      {OP_ALLOW, 500, 1, H, 2, false, 1, 0},
      {OP_DISPATCH, 500, 0, H, 2, true, 1, 0},
      {OP_BIZ, 510, 0, H, 2, false, 1, 0},
      {OP_ALLOW, 511, 1, H, 2, false, 1, 0},
      {OP_DISPATCH, 511, 0, H, 2, true, 1, 0},
      {OP_OK, 520, 0, C, 0, false, 1, 0},
      {OP_END, 0, 0, 0, 0, false, 0, 0}}},
    {"threshold 1 opens on the first counted failure",
     1,
     50,
     {{OP_FAIL, 5, 0, O, 1, false, 1, 5},
      {OP_ALLOW, 54, 0, O, 1, false, 1, 5},
      {OP_ALLOW, 55, 1, H, 1, false, 1, 5},
      {OP_END, 0, 0, 0, 0, false, 0, 0}}},
    {"dispatch while closed marks no probe",
     2,
     500,
     {{OP_DISPATCH, 0, 0, C, 0, false, 0, 0},
      {OP_DISPATCH, 0, 0, C, 0, false, 0, 0},
      {OP_ALLOW, 0, -1, C, 0, false, 0, 0},
      {OP_END, 0, 0, 0, 0, false, 0, 0}}},
    {"zero or negative settings are clamped to 1",
     0,
     0,
     {{OP_FAIL, 7, 0, O, 1, false, 1, 7},
      {OP_ALLOW, 7, 0, O, 1, false, 1, 7},
      {OP_ALLOW, 8, 1, H, 1, false, 1, 7},
      {OP_END, 0, 0, 0, 0, false, 0, 0}}},
};

static const char *op_name(op o) {
  static const char *const names[] = {"allow", "dispatch", "ok",
                                      "fail",  "biz",      "end"};
  return names[o];
}

Test(breaker, scripted_transitions) {
  for (size_t s = 0; s < sizeof(scripts) / sizeof(scripts[0]); s++) {
    const script *sc = &scripts[s];
    breaker b;
    breaker_init(&b, sc->threshold, sc->open_ms);
    cr_assert_eq(b.state, BREAKER_STATE_CLOSED, "[%s] init", sc->name);
    cr_assert_eq(b.failures, 0);
    cr_assert_eq(b.opens, 0);
    for (size_t i = 0; sc->steps[i].op != OP_END; i++) {
      const step *st = &sc->steps[i];
      int got = 0;
      switch (st->op) {
      case OP_ALLOW:
        got = breaker_allow(&b, st->now);
        cr_assert_eq(got, st->allow, "[%s] step %zu allow: got %d want %d",
                     sc->name, i, got, st->allow);
        break;
      case OP_DISPATCH:
        breaker_on_dispatch(&b);
        break;
      case OP_OK:
        breaker_record(&b, true, false, st->now);
        break;
      case OP_FAIL:
        breaker_record(&b, false, true, st->now);
        break;
      case OP_BIZ:
        breaker_record(&b, false, false, st->now);
        break;
      case OP_END:
        break;
      }
      cr_assert_eq(b.state, st->state, "[%s] step %zu (%s): state %s want %s",
                   sc->name, i, op_name(st->op), breaker_state_name(b.state),
                   breaker_state_name(st->state));
      cr_assert_eq(b.failures, st->failures,
                   "[%s] step %zu (%s): failures %d want %d", sc->name, i,
                   op_name(st->op), b.failures, st->failures);
      cr_assert_eq(b.probe_out, st->probe_out,
                   "[%s] step %zu (%s): probe_out %d want %d", sc->name, i,
                   op_name(st->op), b.probe_out, st->probe_out);
      cr_assert_eq(b.opens, st->opens,
                   "[%s] step %zu (%s): opens %llu want %llu", sc->name, i,
                   op_name(st->op), (unsigned long long)b.opens,
                   (unsigned long long)st->opens);
      if (b.state != BREAKER_STATE_CLOSED)
        cr_assert_eq(b.opened_at_ms, st->opened_at,
                     "[%s] step %zu (%s): opened_at %lld want %lld", sc->name,
                     i, op_name(st->op), (long long)b.opened_at_ms,
                     (long long)st->opened_at);
    }
  }
}

Test(breaker, init_clamps_and_state_names) {
  static const struct {
    int threshold;
    int64_t open_ms;
    int want_threshold;
    int64_t want_open_ms;
  } cases[] = {{5, 5000, 5, 5000},
               {1, 1, 1, 1},
               {0, 0, 1, 1},
               {-3, -10, 1, 1},
               {2, 500, 2, 500}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    breaker b;
    memset(&b, 0x5a, sizeof(b)); /* init must overwrite every field */
    breaker_init(&b, cases[i].threshold, cases[i].open_ms);
    cr_assert_eq(b.threshold, cases[i].want_threshold, "case %zu", i);
    cr_assert_eq(b.open_ms, cases[i].want_open_ms, "case %zu", i);
    cr_assert_eq(b.state, BREAKER_STATE_CLOSED);
    cr_assert_eq(b.failures, 0);
    cr_assert_eq(b.opened_at_ms, 0);
    cr_assert_not(b.probe_out);
    cr_assert_eq(b.opens, 0);
  }
  cr_assert_str_eq(breaker_state_name(BREAKER_STATE_CLOSED), "closed");
  cr_assert_str_eq(breaker_state_name(BREAKER_STATE_OPEN), "open");
  cr_assert_str_eq(breaker_state_name(BREAKER_STATE_HALF_OPEN), "half_open");
  cr_assert_str_eq(breaker_state_name((breaker_state)42), "unknown");
}

/* The full cycle many times over: opens are counted, and the breaker never
 * lets more than one probe out per half-open period. */
Test(breaker, repeated_cycles_count_opens) {
  breaker b;
  breaker_init(&b, 3, 100);
  int64_t now = 0;
  for (int cycle = 1; cycle <= 20; cycle++) {
    for (int k = 0; k < 3; k++)
      breaker_record(&b, false, true, now);
    cr_assert_eq(b.state, BREAKER_STATE_OPEN);
    cr_assert_eq(b.opens, (uint64_t)(2 * cycle - 1));
    cr_assert_eq(breaker_allow(&b, now + 99), 0);
    cr_assert_eq(breaker_allow(&b, now + 100), 1);
    breaker_on_dispatch(&b);
    int dispatched = 1;
    for (int k = 0; k < 5; k++)
      dispatched += breaker_allow(&b, now + 100 + k) > 0;
    cr_assert_eq(dispatched, 1, "one probe per half-open period");
    breaker_record(&b, false, true, now + 150); /* the probe fails */
    cr_assert_eq(b.state, BREAKER_STATE_OPEN);
    cr_assert_eq(b.opens, (uint64_t)(2 * cycle));
    cr_assert_eq(breaker_allow(&b, now + 250), 1);
    breaker_on_dispatch(&b);
    breaker_record(&b, true, false, now + 260); /* the next one succeeds */
    cr_assert_eq(b.state, BREAKER_STATE_CLOSED);
    now += 1000;
  }
}
