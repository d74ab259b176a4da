/*
 * err.h — engine-side helpers for Skald's error codes. The codes themselves
 * are the SK_ERRNO_MAP table of the public header.
 */
#ifndef SKALD_COMMON_ERR_H
#define SKALD_COMMON_ERR_H

#include <skald/skald.h>

#if defined(__GNUC__)
#define SK_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define SK_MUST_CHECK __attribute__((warn_unused_result))
#else
#define SK_PRINTF(a, b)
#define SK_MUST_CHECK
#endif

/* Fills err (if not NULL) with code and a formatted message (NULL fmt: the
 * code's own message). Returns code, so callers can `return sk_error_set(..)`.
 */
int sk_error_set(sk_error *err, int code, const char *fmt, ...) SK_PRINTF(3, 4);
/* Sets err->path (JSON Pointer) if err is not NULL. */
void sk_error_set_path(sk_error *err, const char *path);

#endif /* SKALD_COMMON_ERR_H */
