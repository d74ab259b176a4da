/*
 * json_limits.c — non-recursive depth and size pre-check (see
 * json_limits.h).
 *
 * Invariant: the scan keeps the open brackets in a fixed stack of
 * max_depth + 1 entries at most (bounded by SK_JSON_DEPTH_MAX * 16), so its
 * memory is bounded whatever the input.
 *
 * Thread: any.
 */
#include "api/json_limits.h"

#include <stdbool.h>

#define STACK_MAX (SK_JSON_DEPTH_MAX * 16)

/* Scans a string starting after its opening quote; returns the index just
 * past the closing quote, or 0 if it is unterminated or holds a raw control
 * character. */
static size_t skip_string(const char *s, size_t i, size_t len) {
  while (i < len) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"')
      return i + 1;
    if (c < 0x20)
      return 0;
    i += c == '\\' ? 2 : 1;
  }
  return 0;
}

int json_check(const char *body, size_t len, int max_depth) {
  char stack[STACK_MAX];
  int depth = 0;
  if (body == NULL || max_depth < 0)
    return SK_EINVAL;
  if (len > SK_PAYLOAD_MAX)
    return SK_ETOOBIG;
  if (max_depth > STACK_MAX)
    max_depth = STACK_MAX;
  for (size_t i = 0; i < len;) {
    char c = body[i];
    if (c == '"') {
      i = skip_string(body, i + 1, len);
      if (i == 0)
        return SK_EJSON;
      continue;
    }
    if (c == '[' || c == '{') {
      if (depth == max_depth)
        return SK_ETOOBIG;
      stack[depth++] = c == '[' ? ']' : '}';
    } else if (c == ']' || c == '}') {
      if (depth == 0 || stack[depth - 1] != c)
        return SK_EJSON;
      depth--;
    } else if (c == '\0') {
      return SK_EJSON;
    }
    i++;
  }
  return depth == 0 ? SK_OK : SK_EJSON;
}
