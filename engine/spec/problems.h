/*
 * problems.h — the list of problems a parser or validator collects.
 *
 * Parsers and validators never stop at the first problem: they add each one
 * with a JSON Pointer (RFC 6901) to the offending field and go on, so a user
 * sees everything wrong with a spec at once. Example:
 *   {"path": "/steps/2/retry/max_attempts", "message": "must be at least 1"}
 *
 * Thread: the caller's.
 */
#ifndef SKALD_SPEC_PROBLEMS_H
#define SKALD_SPEC_PROBLEMS_H

#include <stdbool.h>
#include <stddef.h>

#include "common/err.h"

typedef struct def_problem {
  char *path;     /* JSON Pointer, "" for the whole document */
  char *message;  /* lowercase, no trailing period */
} def_problem;

typedef struct def_problems {
  def_problem *items;
  size_t n;
  size_t cap;
  bool oom;       /* an allocation failed; some problems may be missing */
} def_problems;

#define DEF_PROBLEMS_MAX 200 /* more than this are counted, not kept */

void def_problems_init(def_problems *p);
void def_problems_clear(def_problems *p);
void def_problems_add(def_problems *p, const char *path, const char *fmt, ...)
    SK_PRINTF(3, 4);
/* [{"path":..,"message":..},...] as JSON text (malloc'd); NULL on OOM. */
char *def_problems_to_json(const def_problems *p);
/* Fills err with SK_EINVALSPEC, the first problem's message and path, and a
 * count ("... (and 3 more problems)"). Returns SK_EINVALSPEC, or SK_OK if
 * there are none. */
int def_problems_to_error(const def_problems *p, sk_error *err);

#endif /* SKALD_SPEC_PROBLEMS_H */
