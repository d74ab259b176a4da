/*
 * buf.c — growable buffer (see buf.h). Thread: any; a buf is not shared.
 */
#include "common/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_init(buf *b) { *b = (buf)BUF_INIT; }

void buf_free(buf *b) {
  free(b->data);
  buf_init(b);
}

void buf_reset(buf *b) {
  b->len = 0;
  if (b->data != NULL)
    b->data[0] = '\0';
}

bool buf_ok(const buf *b) { return !b->oom; }

static bool reserve(buf *b, size_t extra) {
  if (b->oom)
    return false;
  if (b->len + extra + 1 <= b->cap)
    return true;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < b->len + extra + 1)
    cap *= 2;
  char *p = realloc(b->data, cap);
  if (p == NULL) {
    b->oom = true;
    return false;
  }
  b->data = p;
  b->cap = cap;
  return true;
}

void buf_append(buf *b, const void *p, size_t n) {
  if (!reserve(b, n))
    return;
  memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
}

void buf_puts(buf *b, const char *s) { buf_append(b, s, strlen(s)); }

void buf_putc(buf *b, char c) {
  if (b->len + 2 <= b->cap) { /* room for c and the NUL: the common case */
    b->data[b->len++] = c;
    b->data[b->len] = '\0';
    return;
  }
  buf_append(b, &c, 1);
}

void buf_put_i64(buf *b, int64_t v) {
  char tmp[24];
  char *end = tmp + sizeof(tmp), *p = end;
  uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
  do {
    *--p = (char)('0' + u % 10);
    u /= 10;
  } while (u != 0);
  if (v < 0)
    *--p = '-';
  buf_append(b, p, (size_t)(end - p));
}

void buf_printf(buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char tmp[256];
  int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  if (n < 0)
    return;
  if ((size_t)n < sizeof(tmp)) {
    buf_append(b, tmp, (size_t)n);
    return;
  }
  if (!reserve(b, (size_t)n))
    return;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

/* True for the bytes a JSON string can hold as they are. */
static bool json_plain(unsigned char c) {
  return c >= 0x20 && c != '"' && c != '\\';
}

void buf_json_str(buf *b, const char *s) {
  buf_putc(b, '"');
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    const unsigned char *run = p;
    while (json_plain(*p))
      p++;
    if (p > run) /* a run of plain bytes in one copy */
      buf_append(b, run, (size_t)(p - run));
    if (*p == '\0')
      break;
    switch (*p) {
    case '"':
      buf_puts(b, "\\\"");
      break;
    case '\\':
      buf_puts(b, "\\\\");
      break;
    case '\n':
      buf_puts(b, "\\n");
      break;
    case '\r':
      buf_puts(b, "\\r");
      break;
    case '\t':
      buf_puts(b, "\\t");
      break;
    default: /* the other control characters: plain bytes were copied */
      buf_printf(b, "\\u%04x", *p);
    }
  }
  buf_putc(b, '"');
}

char *buf_steal(buf *b) {
  if (b->oom) {
    buf_free(b);
    return NULL;
  }
  char *p = b->data;
  if (p == NULL)
    p = strdup("");
  buf_init(b);
  return p;
}
