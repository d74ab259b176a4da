/*
 * test_http_tally.c — the request limit counts and the stream cut points
 * that make an HTTP answer independent of how the bytes were split
 * (engine/api/http_tally.h). Over real sockets, the same property is
 * tested by test_http_server's limits_answer_the_same_whatever_the_split.
 */
#include <criterion/criterion.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "api/http_tally.h"

static http_server_config limits(void) {
  http_server_config cfg;
  http_server_config_init(&cfg);
  cfg.max_url = 10;
  cfg.max_header_bytes = 20;
  cfg.max_headers = 2;
  cfg.max_body = 30;
  return cfg;
}

Test(http_tally, keeps_bytes_up_to_each_limit) {
  http_server_config cfg = limits();
  http_tally t;
  http_tally_reset(&t);
  http_refusal why;
  cr_assert(http_tally_url(&t, &cfg, 6));
  cr_assert(http_tally_url(&t, &cfg, 4), "exactly the limit is allowed");
  cr_assert(http_tally_header_bytes(&t, &cfg, 20));
  cr_assert(http_tally_header_line(&t, &cfg));
  cr_assert(http_tally_header_line(&t, &cfg));
  cr_assert(http_tally_body(&t, &cfg, 30));
  cr_assert_not(http_tally_over(&t, &cfg, &why));

  cr_assert_not(http_tally_body(&t, &cfg, 1));
  cr_assert(http_tally_over(&t, &cfg, &why));
  cr_assert_eq(why.status, 413);
  cr_assert_str_eq(why.code, "payload_too_large");
}

/* Whatever the order the limits were passed in, the answer is the first
 * of URL, header bytes, header lines and body: the split cannot change it. */
Test(http_tally, refusal_order_is_fixed) {
  http_server_config cfg = limits();
  http_tally t;
  http_refusal why;

  http_tally_reset(&t);
  (void)http_tally_body(&t, &cfg, 31);
  (void)http_tally_header_line(&t, &cfg);
  (void)http_tally_header_line(&t, &cfg);
  cr_assert_not(http_tally_header_line(&t, &cfg));
  cr_assert(http_tally_over(&t, &cfg, &why));
  cr_assert_eq(why.status, 431);
  cr_assert_str_eq(why.message, "too many request headers");

  cr_assert_not(http_tally_header_bytes(&t, &cfg, 21));
  cr_assert(http_tally_over(&t, &cfg, &why));
  cr_assert_eq(why.status, 431);
  cr_assert_str_eq(why.message, "request headers are too large");

  cr_assert_not(http_tally_url(&t, &cfg, 11));
  cr_assert(http_tally_over(&t, &cfg, &why));
  cr_assert_eq(why.status, 414);
  cr_assert_str_eq(why.code, "uri_too_long");

  http_tally_reset(&t);
  cr_assert_not(http_tally_over(&t, &cfg, &why), "reset clears every count");
}

Test(http_tally, counts_saturate_instead_of_wrapping) {
  http_server_config cfg = limits();
  http_tally t;
  http_tally_reset(&t);
  cr_assert_not(http_tally_url(&t, &cfg, SIZE_MAX - 1));
  cr_assert_not(http_tally_url(&t, &cfg, 5), "a wrapped count would pass");
  cr_assert_eq(t.url, SIZE_MAX);
  t.headers = INT_MAX;
  cr_assert_not(http_tally_header_line(&t, &cfg));
  cr_assert_eq(t.headers, INT_MAX);
}

/* Pieces never cross a stride boundary, so every split of the stream has a
 * parser return (and a flush) at each boundary. */
Test(http_tally, pieces_end_at_every_stride_boundary) {
  const uint64_t S = HTTP_TALLY_STRIDE;
  cr_assert_eq(http_tally_piece(0, 10), 10);
  cr_assert_eq(http_tally_piece(0, 3 * S), S);
  cr_assert_eq(http_tally_piece(S - 1, 100), 1);
  cr_assert_eq(http_tally_piece(S, 100), 100);
  cr_assert_eq(http_tally_piece(5 * S + 7, 2 * S), S - 7);
  cr_assert(http_tally_checkpoint(0));
  cr_assert(http_tally_checkpoint(7 * S));
  cr_assert_not(http_tally_checkpoint(7 * S + 1));

  /* Walking any read split piece by piece lands on every boundary. */
  const size_t reads[] = {1, 4095, 4097, 3, 9000, 8192, 17};
  uint64_t off = 0, next_boundary = S;
  for (size_t i = 0; i < sizeof(reads) / sizeof(reads[0]); i++) {
    size_t left = reads[i];
    while (left > 0) {
      size_t p = http_tally_piece(off, left);
      cr_assert_gt(p, 0);
      cr_assert_leq(off + p, next_boundary, "a piece crossed %llu",
                    (unsigned long long)next_boundary);
      off += p;
      left -= p;
      if (off == next_boundary) {
        cr_assert(http_tally_checkpoint(off));
        next_boundary += S;
      }
    }
  }
}
