/*
 * test_ratelimit.c — api/ratelimit.c: refill, burst, the values behind the
 * Retry-After and X-RateLimit-* headers, LRU eviction in a bounded table,
 * argument checks, and many threads taking from shared and private keys.
 * Time is passed in, so nothing here sleeps.
 */
#include "api/ratelimit.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static ratelimit *make(double rate, int64_t burst, size_t keys) {
  ratelimit *rl = NULL;
  cr_assert_eq(ratelimit_new(rate, burst, keys, &rl), 0);
  cr_assert_not_null(rl);
  return rl;
}

static ratelimit_result take(ratelimit *rl, const char *key, int64_t now) {
  ratelimit_result r;
  cr_assert_eq(ratelimit_take(rl, key, now, &r), 0);
  return r;
}

/* Evaluates r once (it is often a take() call). */
#define EXPECT_RES(r, a, lim, rem, reset, retry)                               \
  do {                                                                         \
    ratelimit_result r_ = (r);                                                 \
    cr_expect_eq(r_.allowed, (a), "allowed");                                  \
    cr_expect_eq(r_.limit, (lim), "limit %lld", (long long)r_.limit);          \
    cr_expect_eq(r_.remaining, (rem), "remaining %lld",                        \
                 (long long)r_.remaining);                                     \
    cr_expect_eq(r_.reset_s, (reset), "reset %lld", (long long)r_.reset_s);    \
    cr_expect_eq(r_.retry_after_s, (retry), "retry %lld",                      \
                 (long long)r_.retry_after_s);                                 \
  } while (0)

Test(ratelimit, rejects_bad_arguments) {
  ratelimit *rl = (ratelimit *)1;
  cr_expect_eq(ratelimit_new(0, 5, 10, &rl), SK_EINVAL);
  cr_expect_null(rl);
  cr_expect_eq(ratelimit_new(-1, 5, 10, &rl), SK_EINVAL);
  cr_expect_eq(ratelimit_new(1e7, 5, 10, &rl), SK_EINVAL);
  cr_expect_eq(ratelimit_new(1, 0, 10, &rl), SK_EINVAL);
  cr_expect_eq(ratelimit_new(1, RATELIMIT_BURST_MAX + 1, 10, &rl), SK_EINVAL);
  cr_expect_eq(ratelimit_new(1, 5, 0, &rl), SK_EINVAL);

  rl = make(1, 5, 10);
  ratelimit_result r;
  char longkey[RATELIMIT_KEY_MAX + 1];
  memset(longkey, 'k', sizeof(longkey) - 1);
  longkey[sizeof(longkey) - 1] = '\0';
  cr_expect_eq(ratelimit_take(rl, longkey, 0, &r), SK_EINVAL);
  longkey[RATELIMIT_KEY_MAX - 1] = '\0'; /* 63 bytes: fine */
  cr_expect_eq(ratelimit_take(rl, longkey, 0, &r), 0);
  cr_expect_eq(ratelimit_take(rl, "", 0, &r), SK_EINVAL);
  cr_expect_eq(ratelimit_take(rl, NULL, 0, &r), SK_EINVAL);
  cr_expect_eq(ratelimit_peek(rl, NULL, 0, &r), SK_EINVAL);
  cr_expect_not(r.allowed);
  ratelimit_free(rl);
  ratelimit_free(NULL);
}

Test(ratelimit, burst_then_denied_with_headers) {
  ratelimit *rl = make(1, 5, 10);
  EXPECT_RES(take(rl, "k", 0), true, 5, 4, 1, 0);
  EXPECT_RES(take(rl, "k", 0), true, 5, 3, 2, 0);
  EXPECT_RES(take(rl, "k", 0), true, 5, 2, 3, 0);
  EXPECT_RES(take(rl, "k", 0), true, 5, 1, 4, 0);
  EXPECT_RES(take(rl, "k", 0), true, 5, 0, 5, 0);
  EXPECT_RES(take(rl, "k", 0), false, 5, 0, 5, 1);
  /* 1 ms short of a token: still denied, Retry-After rounds up to 1 s. */
  EXPECT_RES(take(rl, "k", 999), false, 5, 0, 5, 1);
  EXPECT_RES(take(rl, "k", 1000), true, 5, 0, 5, 0);
  /* Other keys have their own bucket. */
  EXPECT_RES(take(rl, "other", 1000), true, 5, 4, 1, 0);
  ratelimit_free(rl);
}

Test(ratelimit, refill_is_proportional_and_capped) {
  ratelimit *rl = make(10, 20, 4); /* 10/s: one token per 100 ms */
  for (int i = 0; i < 20; i++)
    cr_assert(take(rl, "k", 0).allowed);
  cr_assert_not(take(rl, "k", 0).allowed);
  /* 550 ms → 5.5 tokens: 5 whole ones. */
  ratelimit_result p;
  cr_assert_eq(ratelimit_peek(rl, "k", 550, &p), 0);
  cr_expect_eq(p.remaining, 5);
  cr_expect(p.allowed);
  cr_expect_eq(p.reset_s, 2); /* 14.5 tokens → 1450 ms → 2 s */
  for (int i = 0; i < 5; i++)
    cr_assert(take(rl, "k", 550).allowed);
  ratelimit_result r = take(rl, "k", 550);
  /* 0.5 token left: 50 ms to the next one, rounded up to 1 s. */
  EXPECT_RES(r, false, 20, 0, 2, 1);
  /* A long idle time fills the bucket to the burst, never beyond. */
  cr_assert_eq(ratelimit_peek(rl, "k", 1000000000000LL, &p), 0);
  EXPECT_RES(p, true, 20, 20, 0, 0);
  int allowed = 0;
  for (int i = 0; i < 30; i++)
    allowed += take(rl, "k", 1000000000000LL).allowed;
  cr_expect_eq(allowed, 20);
  ratelimit_free(rl);
}

Test(ratelimit, slow_rate_retry_after_and_reset) {
  ratelimit *rl = make(0.5, 2, 4); /* one token per 2 s */
  EXPECT_RES(take(rl, "k", 0), true, 2, 1, 2, 0);
  EXPECT_RES(take(rl, "k", 0), true, 2, 0, 4, 0);
  EXPECT_RES(take(rl, "k", 0), false, 2, 0, 4, 2);
  EXPECT_RES(take(rl, "k", 1500), false, 2, 0, 3, 1);
  EXPECT_RES(take(rl, "k", 2000), true, 2, 0, 4, 0);
  ratelimit_free(rl);
}

Test(ratelimit, clock_going_backwards_refills_nothing) {
  ratelimit *rl = make(1, 1, 4);
  cr_assert(take(rl, "k", 10000).allowed);
  cr_expect_not(take(rl, "k", 5000).allowed);
  cr_expect_not(take(rl, "k", 10999).allowed);
  cr_expect(take(rl, "k", 11000).allowed);
  ratelimit_free(rl);
}

Test(ratelimit, peek_takes_nothing) {
  ratelimit *rl = make(1, 3, 4);
  ratelimit_result p;
  cr_assert_eq(ratelimit_peek(rl, "new", 0, &p), 0);
  EXPECT_RES(p, true, 3, 3, 0, 0);
  cr_expect_eq(ratelimit_count(rl), 0);
  take(rl, "k", 0);
  for (int i = 0; i < 5; i++) {
    cr_assert_eq(ratelimit_peek(rl, "k", 0, &p), 0);
    EXPECT_RES(p, true, 3, 2, 1, 0);
  }
  ratelimit_free(rl);
}

Test(ratelimit, evicts_least_recently_used) {
  ratelimit *rl = make(0.001, 1, 3);
  cr_assert(take(rl, "a", 0).allowed);
  cr_assert(take(rl, "b", 0).allowed);
  cr_assert(take(rl, "c", 0).allowed);
  cr_assert_eq(ratelimit_count(rl), 3);
  cr_assert_not(take(rl, "a", 1).allowed); /* a is now the most recent */
  cr_assert(take(rl, "d", 2).allowed);     /* evicts b */
  cr_assert_eq(ratelimit_count(rl), 3);
  /* b was forgotten, so it starts full again; that evicts c. */
  cr_expect(take(rl, "b", 3).allowed);
  cr_expect_not(take(rl, "a", 4).allowed);
  cr_expect_not(take(rl, "d", 5).allowed);
  cr_expect_not(take(rl, "b", 6).allowed);
  cr_expect(take(rl, "c", 7).allowed); /* evicted, back full */
  cr_expect_eq(ratelimit_count(rl), 3);
  ratelimit_free(rl);
}

Test(ratelimit, many_keys_keep_only_the_newest) {
  ratelimit *rl = make(0.001, 2, 100);
  char key[32];
  for (int i = 0; i < 1000; i++) {
    snprintf(key, sizeof(key), "key-%d", i);
    cr_assert(take(rl, key, i).allowed);
  }
  cr_assert_eq(ratelimit_count(rl), 100);
  ratelimit_result p;
  for (int i = 0; i < 1000; i++) {
    snprintf(key, sizeof(key), "key-%d", i);
    cr_assert_eq(ratelimit_peek(rl, key, 1000, &p), 0);
    cr_assert_eq(p.remaining, i >= 900 ? 1 : 2, "%s", key);
  }
  ratelimit_free(rl);
}

typedef struct worker {
  ratelimit *rl;
  int id;
  int allowed_shared;
  int allowed_own;
} worker;

#define THREADS 8
#define ROUNDS 2000

static void *work(void *arg) {
  worker *w = arg;
  char own[32];
  snprintf(own, sizeof(own), "own-%d", w->id);
  for (int i = 0; i < ROUNDS; i++) {
    ratelimit_result r;
    if (ratelimit_take(w->rl, "shared", 0, &r) == 0 && r.allowed)
      w->allowed_shared++;
    if (ratelimit_take(w->rl, own, 0, &r) == 0 && r.allowed)
      w->allowed_own++;
    char churn[32]; /* forces evictions of other keys while others run */
    snprintf(churn, sizeof(churn), "churn-%d-%d", w->id, i % 7);
    (void)ratelimit_take(w->rl, churn, 0, &r);
  }
  return NULL;
}

Test(ratelimit, many_threads_never_over_admit) {
  /* Time stands still, so exactly `burst` requests pass per key. Room for
   * the shared and own keys plus churn: own keys may still be evicted and
   * come back full, so they are bounded only from below. */
  ratelimit *rl = make(1, 5000, 64);
  pthread_t t[THREADS];
  worker w[THREADS];
  for (int i = 0; i < THREADS; i++) {
    w[i] = (worker){.rl = rl, .id = i};
    cr_assert_eq(pthread_create(&t[i], NULL, work, &w[i]), 0);
  }
  int shared = 0;
  for (int i = 0; i < THREADS; i++) {
    pthread_join(t[i], NULL);
    shared += w[i].allowed_shared;
    cr_expect_eq(w[i].allowed_own, ROUNDS, "own keys have 5000 tokens");
  }
  /* The shared key is touched constantly, so it is never the LRU victim. */
  cr_expect_eq(shared, 5000);
  cr_expect_leq(ratelimit_count(rl), 64);
  ratelimit_free(rl);
}
