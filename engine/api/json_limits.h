/*
 * json_limits.h — a cheap pre-check of a JSON body before cJSON parses it.
 *
 * cJSON recurses once per nesting level, so a body like "[[[[...]]]]" 10000
 * deep must be refused before it reaches the parser. json_check scans the
 * text once, without recursion, tracking strings and bracket nesting.
 *
 * Thread: any; no state.
 */
#ifndef SKALD_API_JSON_LIMITS_H
#define SKALD_API_JSON_LIMITS_H

#include <stddef.h>

#include "common/err.h"

/* Checks that body[0..len) is at most SK_PAYLOAD_MAX bytes, nests arrays and
 * objects at most max_depth deep, has balanced brackets outside strings,
 * terminated strings and no raw control characters inside them. It does not
 * validate the grammar: cJSON still does that. Returns 0, SK_ETOOBIG (too
 * large or too deep) or SK_EJSON (unbalanced or unterminated). */
int json_check(const char *body, size_t len, int max_depth);

#endif /* SKALD_API_JSON_LIMITS_H */
