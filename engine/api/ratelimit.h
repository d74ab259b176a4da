/*
 * ratelimit.h — per-key token buckets for the HTTP API (429 responses).
 *
 * Each key (an API key id, or the client address for loopback without
 * keys) has a bucket of `burst` tokens refilled at `rate_per_s` tokens per
 * second; a request takes one token or is denied. A new key starts full.
 * The table holds at most max_keys buckets: taking a new key beyond that
 * evicts the least recently used one (which then starts full again if it
 * comes back; a bounded table matters more than that leniency).
 *
 * Time is passed in (milliseconds, monotonic), so the limiter is pure and
 * tests drive it without sleeping. Token arithmetic is integer (1 token =
 * RATELIMIT_UNIT units) so results are exact and reproducible.
 *
 * Header values (ratelimit_result):
 *   X-RateLimit-Limit      limit      = burst
 *   X-RateLimit-Remaining  remaining  = whole tokens left after this request
 *   X-RateLimit-Reset      reset_s    = seconds until the bucket is full
 *                                       again (delta seconds, rounded up)
 *   Retry-After            retry_after_s (denied only) = seconds until one
 *                                       token is back, rounded up, >= 1
 *
 * Thread: any; one mutex guards the table. The table and all buckets are
 * allocated by ratelimit_new, so ratelimit_take never allocates.
 */
#ifndef SKALD_API_RATELIMIT_H
#define SKALD_API_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define RATELIMIT_UNIT 1000000000LL /* units per token */
#define RATELIMIT_KEY_MAX 64        /* a key is at most 63 bytes */
#define RATELIMIT_BURST_MAX 1000000
#define RATELIMIT_RATE_MIN 1e-6 /* tokens per second */
#define RATELIMIT_RATE_MAX 1e6

typedef struct ratelimit ratelimit;

typedef struct ratelimit_result {
  bool allowed;
  int64_t limit;         /* X-RateLimit-Limit */
  int64_t remaining;     /* X-RateLimit-Remaining */
  int64_t reset_s;       /* X-RateLimit-Reset (delta seconds) */
  int64_t retry_after_s; /* Retry-After; 0 when allowed */
} ratelimit_result;

/* A limiter with rate_per_s in [RATELIMIT_RATE_MIN, RATELIMIT_RATE_MAX],
 * burst in [1, RATELIMIT_BURST_MAX] and max_keys >= 1 buckets. *out is
 * owned by the caller (ratelimit_free). Errors: SK_EINVAL, SK_ENOMEM. */
int ratelimit_new(double rate_per_s, int64_t burst, size_t max_keys,
                  ratelimit **out) SK_MUST_CHECK;
void ratelimit_free(ratelimit *rl);

/* Takes one token from key's bucket at now_ms and fills *res (always, also
 * when denied). A clock that goes backwards refills nothing.
 * Errors: SK_EINVAL (NULL/empty key or one of RATELIMIT_KEY_MAX bytes or
 * more; *res is then zeroed and the caller should answer 400/401). */
int ratelimit_take(ratelimit *rl, const char *key, int64_t now_ms,
                   ratelimit_result *res);

/* Like ratelimit_take but takes nothing: what the headers would say now.
 * A key not in the table reads as a full bucket. Errors: SK_EINVAL. */
int ratelimit_peek(ratelimit *rl, const char *key, int64_t now_ms,
                   ratelimit_result *res);

/* How many keys have a bucket now (<= max_keys). */
size_t ratelimit_count(ratelimit *rl);

#endif /* SKALD_API_RATELIMIT_H */
