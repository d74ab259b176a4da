/*
 * buf.h — a growable byte buffer for building SQL arrays, JSON and text.
 *
 * A failed allocation sets `oom` and turns later appends into no-ops, so
 * callers check once at the end (buf_ok) instead of after every append.
 * The content is always NUL-terminated when data is not NULL.
 */
#ifndef SKALD_COMMON_BUF_H
#define SKALD_COMMON_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef struct buf {
  char *data;
  size_t len;
  size_t cap;
  bool oom;
} buf;

#define BUF_INIT                                                               \
  { NULL, 0, 0, false }

void buf_init(buf *b);
void buf_free(buf *b);
void buf_reset(buf *b);    /* len = 0, keeps capacity */
bool buf_ok(const buf *b); /* no allocation failed */
void buf_append(buf *b, const void *p, size_t n);
void buf_puts(buf *b, const char *s);
void buf_putc(buf *b, char c);
/* Appends the decimal form of v (what "%" PRId64 prints, without stdio). */
void buf_put_i64(buf *b, int64_t v);
void buf_printf(buf *b, const char *fmt, ...) SK_PRINTF(2, 3);
/* Appends s as a JSON string literal (quotes included, escaped). */
void buf_json_str(buf *b, const char *s);
/* Hands the content to the caller (malloc'd, NUL-terminated; "" if empty)
 * and resets b. NULL on OOM. */
char *buf_steal(buf *b);

#endif /* SKALD_COMMON_BUF_H */
