/*
 * test_buf.c — the growable buffer's writers that the hot path uses:
 * integers without stdio, JSON strings copied in runs, and array literals.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/buf.h"
#include "store/db.h"

Test(buf, put_i64_prints_like_printf) {
  int64_t vs[] = {0,          1,         -1,       9, 10, 1234567890123LL,
                  -987654321, INT64_MAX, INT64_MIN};
  for (size_t i = 0; i < sizeof(vs) / sizeof(vs[0]); i++) {
    buf b = BUF_INIT;
    buf_put_i64(&b, vs[i]);
    char want[32];
    snprintf(want, sizeof(want), "%" PRId64, vs[i]);
    cr_assert_str_eq(b.data, want);
    buf_free(&b);
  }
}

Test(buf, json_str_escapes_and_copies_runs) {
  buf b = BUF_INIT;
  buf_json_str(&b, "plain text, then \"quoted\" \\ and\n\t\r\x01 é end");
  cr_assert_str_eq(b.data, "\"plain text, then \\\"quoted\\\" \\\\ and\\n\\t\\r"
                           "\\u0001 é end\"");
  buf_reset(&b);
  buf_json_str(&b, "");
  cr_assert_str_eq(b.data, "\"\"");
  buf_reset(&b);
  buf_json_str(&b, "\"");
  cr_assert_str_eq(b.data, "\"\\\"\"");
  buf_free(&b);
}

Test(buf, putc_grows_past_any_capacity) {
  buf b = BUF_INIT;
  for (int i = 0; i < 10000; i++)
    buf_putc(&b, (char)('a' + i % 26));
  cr_assert_eq(b.len, 10000);
  cr_assert_eq(strlen(b.data), 10000);
  cr_assert_eq(b.data[9999], 'a' + 9999 % 26);
  buf_free(&b);
}

Test(buf, array_literal_quotes_every_string) {
  pgarr a;
  pgarr_init(&a);
  pgarr_add_str(&a, "x");
  pgarr_add_str(&a, "a\"b\\c");
  pgarr_add_str(&a, NULL);
  pgarr_add_str(&a, "");
  pgarr_add_i64(&a, -42);
  cr_assert_str_eq(pgarr_get(&a), "{\"x\",\"a\\\"b\\\\c\",NULL,\"\",-42}");
  pgarr_free(&a);
}

static uint32_t be32(const char *p) {
  const unsigned char *u = (const unsigned char *)p;
  return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 |
         u[3];
}

/* PostgreSQL's binary array format (array_recv): ndim, has-nulls, element
 * type, then size and lower bound per dimension, then length + bytes per
 * element, -1 for NULL. */
Test(buf, binary_text_array_layout) {
  pgarr a;
  pgarr_init_text_bin(&a);
  pgarr_add_str(&a, "{\"k\":\"v\\\\\"}");
  pgarr_add_str(&a, NULL);
  pgarr_add_str(&a, "");
  const char *d = pgarr_get(&a);
  cr_assert_not_null(d);
  cr_assert_eq(be32(d), 1);      /* ndim */
  cr_assert_eq(be32(d + 4), 1);  /* has nulls */
  cr_assert_eq(be32(d + 8), 25); /* text */
  cr_assert_eq(be32(d + 12), 3); /* elements */
  cr_assert_eq(be32(d + 16), 1); /* lower bound */
  size_t n0 = strlen("{\"k\":\"v\\\\\"}");
  cr_assert_eq(be32(d + 20), n0);
  cr_assert(memcmp(d + 24, "{\"k\":\"v\\\\\"}", n0) == 0, "copied as is");
  cr_assert_eq(be32(d + 24 + n0), 0xffffffffu); /* NULL */
  cr_assert_eq(be32(d + 28 + n0), 0);           /* "" */
  cr_assert_eq(pgarr_len(&a), (int)(32 + n0));
  cr_assert_eq(pgarr_get(&a), d, "a second get changes nothing");
  cr_assert_eq(pgarr_len(&a), (int)(32 + n0));
  pgarr_free(&a);

  pgarr e;
  pgarr_init_text_bin(&e);
  const char *z = pgarr_get(&e);
  cr_assert_eq(pgarr_len(&e), 12, "the empty array has no dimensions");
  cr_assert_eq(be32(z), 0);
  cr_assert_eq(be32(z + 8), 25);
  pgarr_get(&e);
  cr_assert_eq(pgarr_len(&e), 12);
  pgarr_free(&e);
}
