/*
 * err.c — names and messages of Skald's error codes (the SK_ERRNO_MAP table
 * in skald.h) and the sk_error filler used across the engine.
 *
 * Thread: any; pure functions over constant tables.
 */
#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *sk_strerror(int code) {
  switch (code) {
#define SK_STRERROR_CASE(name, val, msg)                                       \
  case SK_##name:                                                              \
    return msg;
    SK_ERRNO_MAP(SK_STRERROR_CASE)
#undef SK_STRERROR_CASE
  }
  return "unknown error";
}

const char *sk_err_name(int code) {
  switch (code) {
#define SK_ERRNAME_CASE(name, val, msg)                                        \
  case SK_##name:                                                              \
    return "SK_" #name;
    SK_ERRNO_MAP(SK_ERRNAME_CASE)
#undef SK_ERRNAME_CASE
  }
  return "SK_UNKNOWN";
}

int sk_error_set(sk_error *err, int code, const char *fmt, ...) {
  if (err == NULL)
    return code;
  memset(err, 0, sizeof(*err));
  err->code = code;
  if (fmt == NULL) {
    snprintf(err->message, sizeof(err->message), "%s", sk_strerror(code));
  } else {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
  }
  return code;
}

void sk_error_set_path(sk_error *err, const char *path) {
  if (err != NULL && path != NULL)
    snprintf(err->path, sizeof(err->path), "%s", path);
}

void sk_free(void *p) { free(p); }
