/*
 * test_backoff.c — saga_backoff_ms and the jitter PRNG: the exponential
 * sequence, the cap, jitter bounds, determinism, and guarded arithmetic for
 * huge attempts and nonsense policies (no UB under UBSan).
 */
#include <criterion/criterion.h>

#include <limits.h>
#include <math.h>
#include <stdint.h>

#include "saga/saga.h"

static def_retry policy(int64_t initial, double coeff, int64_t cap,
                        double jitter) {
  def_retry p = {.max_attempts = 5,
                 .initial_interval_ms = initial,
                 .backoff_coefficient = coeff,
                 .max_interval_ms = cap,
                 .jitter = jitter};
  return p;
}

Test(backoff, exponential_then_capped_without_jitter) {
  def_retry p = policy(100, 2.0, 1000, 0);
  saga_rng r = {7};
  int64_t want[] = {100, 200, 400, 800, 1000, 1000, 1000};
  for (int n = 2; n < 9; n++)
    cr_expect_eq(saga_backoff_ms(&p, n, &r), want[n - 2], "attempt %d", n);
}

Test(backoff, attempt_below_two_is_initial) {
  def_retry p = policy(250, 3.0, 10000, 0);
  saga_rng r = {7};
  cr_expect_eq(saga_backoff_ms(&p, 1, &r), 250);
  cr_expect_eq(saga_backoff_ms(&p, 0, &r), 250);
  cr_expect_eq(saga_backoff_ms(&p, -5, &r), 250);
}

Test(backoff, jitter_bounds) {
  def_retry p = policy(100, 2.0, 10000, 0.2);
  saga_rng r = {12345};
  for (int n = 2; n < 14; n++) {
    double base = fmin(100.0 * pow(2.0, n - 2), 10000.0);
    int64_t lo = INT64_MAX, hi = 0;
    for (int i = 0; i < 2000; i++) {
      int64_t d = saga_backoff_ms(&p, n, &r);
      cr_assert_geq(d, (int64_t)floor(base * 0.9), "attempt %d: %lld", n,
                    (long long)d);
      cr_assert_leq(d, (int64_t)ceil(base * 1.1), "attempt %d: %lld", n,
                    (long long)d);
      lo = d < lo ? d : lo;
      hi = d > hi ? d : hi;
    }
    /* the jitter actually spreads the delays */
    cr_expect_lt(lo, (int64_t)(base * 0.93));
    cr_expect_gt(hi, (int64_t)(base * 1.07));
  }
}

Test(backoff, full_jitter_never_negative) {
  def_retry p = policy(1, 1.0, 1, 1.0);
  saga_rng r = {3};
  for (int i = 0; i < 10000; i++) {
    int64_t d = saga_backoff_ms(&p, 2, &r);
    cr_assert_geq(d, 0);
    cr_assert_leq(d, 2);
  }
}

Test(backoff, monotonic_cap) {
  def_retry p = policy(7, 1.7, 5000, 0);
  saga_rng r = {1};
  int64_t prev = 0;
  for (int n = 2; n < 200; n++) {
    int64_t d = saga_backoff_ms(&p, n, &r);
    cr_assert_geq(d, prev, "attempt %d", n);
    cr_assert_leq(d, 5000);
    prev = d;
  }
  cr_expect_eq(prev, 5000);
}

Test(backoff, huge_attempts_and_intervals_are_bounded) {
  def_retry p = policy(100, 10.0, INT64_MAX, 0.5);
  saga_rng r = {9};
  int64_t d = saga_backoff_ms(&p, INT_MAX, &r);
  cr_expect_geq(d, 0);
  cr_expect_leq(d, (int64_t)1.5e12);
  p = policy(INT64_MAX, 1e308, INT64_MAX, 0);
  d = saga_backoff_ms(&p, INT_MAX, &r);
  cr_expect_eq(d, (int64_t)1e12);
  p = policy(100, 2.0, 1000, 0.2);
  for (int n = 1000; n < 1000000; n *= 3)
    cr_expect_leq(saga_backoff_ms(&p, n, &r), 1100);
}

Test(backoff, nonsense_policies) {
  saga_rng r = {5};
  def_retry p = policy(0, 2.0, 1000, 0.2);
  cr_expect_eq(saga_backoff_ms(&p, 5, &r), 0);
  p = policy(-10, 2.0, 1000, 0.2);
  cr_expect_eq(saga_backoff_ms(&p, 5, &r), 0);
  p = policy(100, 0.5, 1000, 0); /* coefficient below 1 acts as 1 */
  cr_expect_eq(saga_backoff_ms(&p, 5, &r), 100);
  p = policy(100, NAN, 1000, NAN);
  cr_expect_eq(saga_backoff_ms(&p, 5, &r), 100);
  p = policy(100, 2.0, 1000, 7.0); /* jitter above 1 acts as 1 */
  for (int i = 0; i < 1000; i++) {
    int64_t d = saga_backoff_ms(&p, 2, &r);
    cr_assert_geq(d, 50);
    cr_assert_leq(d, 150);
  }
  p = policy(100, 2.0, -1, 0); /* a negative cap means none */
  cr_expect_eq(saga_backoff_ms(&p, 4, &r), 400);
  p = policy(100, 1.0, 1000, 0);
  cr_expect_eq(saga_backoff_ms(&p, 50, &r), 100);
}

Test(backoff, deterministic_per_seed) {
  def_retry p = policy(100, 2.0, 10000, 0.5);
  saga_rng a = {77}, b = {77}, c = {78};
  bool differ = false;
  for (int n = 2; n < 50; n++) {
    int64_t x = saga_backoff_ms(&p, n, &a);
    cr_assert_eq(x, saga_backoff_ms(&p, n, &b));
    differ |= x != saga_backoff_ms(&p, n, &c);
  }
  cr_expect(differ);
  /* exactly one draw per backoff, jitter or not */
  saga_rng d = {77}, e = {77};
  def_retry nj = policy(100, 2.0, 10000, 0);
  saga_backoff_ms(&nj, 3, &d);
  saga_rng_next(&e);
  cr_expect_eq(d.s, e.s);
}

Test(rng, xorshift_star) {
  saga_rng r = {1};
  /* xorshift64* reference values for seed 1 */
  cr_expect_eq(saga_rng_next(&r), 0x47E4CE4B896CDD1Dull);
  saga_rng z = {0};
  uint64_t first = saga_rng_next(&z);
  cr_expect_neq(first, 0);
  cr_expect_neq(z.s, 0, "a zero seed must not stay stuck");
  saga_rng u = {42};
  double sum = 0;
  for (int i = 0; i < 100000; i++) {
    double x = saga_rng_unit(&u);
    cr_assert(x >= 0.0 && x < 1.0);
    sum += x;
  }
  cr_expect(fabs(sum / 100000 - 0.5) < 0.01, "mean %f", sum / 100000);
}
