/*
 * router.h — a table of {method, pattern, handler} routes for the HTTP API.
 *
 * A pattern is a path whose segments are literals or `{name}` captures:
 *
 *   router_add(r, HTTP_GET, "/v1/sagas/{id}/events", saga_events, ctx);
 *
 * Matching compares raw segments against literals and percent-decodes the
 * captured ones. A captured value is refused (SK_EINVAL) when it decodes to
 * NUL, a control character, '/', '\\', invalid UTF-8 or contains "..".
 * Methods are http_parser's `enum http_method` values.
 *
 * Thread: build the table before the server starts; matching only reads it,
 * so any thread may match once building is done.
 */
#ifndef SKALD_API_ROUTER_H
#define SKALD_API_ROUTER_H

#include <stdbool.h>
#include <stddef.h>

#include "common/err.h"

#define ROUTER_SEGMENTS_MAX 16 /* segments in a pattern or a routed path */
#define ROUTER_PARAMS_MAX 8    /* captures in one pattern */
#define ROUTER_ALLOW_MAX 128   /* room for an Allow header value */

typedef struct http_request http_request;
typedef struct http_response http_response;

/* A route's handler. It fills resp (or calls http_request_defer() and
 * completes later with http_respond()); udata is the route's. */
typedef void (*http_handler_fn)(http_request *req, http_response *resp,
                                void *udata);

typedef struct router router;

/* A decoded key/value pair; both point into caller-owned storage. */
typedef struct router_kv {
  const char *key;
  const char *value;
} router_kv;

typedef struct router_match {
  http_handler_fn fn;
  void *udata;
  int nparams;
  router_kv params[ROUTER_PARAMS_MAX]; /* keys borrowed from the router */
  char allow[ROUTER_ALLOW_MAX];        /* on SK_ENOTSUP: "GET, POST" */
} router_match;

/* Creates an empty table. Errors: SK_ENOMEM. */
int router_new(router **out) SK_MUST_CHECK;
void router_free(router *r);

/* Adds a route; pattern is copied. Errors: SK_EINVAL (pattern not starting
 * with '/', empty or unterminated capture, too many segments or captures,
 * NULL fn), SK_EEXIST (same method and pattern), SK_ENOMEM. */
int router_add(router *r, int method, const char *pattern, http_handler_fn fn,
               void *udata) SK_MUST_CHECK;

/* Matches a raw (undecoded) path without its query string. Captured values
 * are decoded into scratch, which must hold at least strlen(path) + 1 bytes
 * and outlive the match. Returns 0 (m->fn set), SK_ENOENT (no pattern
 * matches the path), SK_ENOTSUP (patterns match but not for this method;
 * m->allow lists the methods), SK_EINVAL (a captured value is invalid). */
int router_match_path(const router *r, int method, const char *path,
                      char *scratch, size_t scratch_len, router_match *m);

/* Percent-decodes in[0..len) into out (room for len + 1 bytes) and
 * NUL-terminates it; '+' becomes ' ' when plus_is_space. Errors: SK_EINVAL
 * for a malformed escape or a decoded NUL. */
int router_url_decode(const char *in, size_t len, char *out, size_t *out_len,
                      bool plus_is_space);

/* True when a decoded path parameter is acceptable: valid UTF-8, no
 * control characters, no '/', '\\', and no "..". */
bool router_param_valid(const char *s, size_t len);

/* Splits and decodes a query string ("a=1&b=x%20y"; no leading '?') into at
 * most max pairs; a key without '=' gets "". Decoded text goes to scratch,
 * which needs at least 3 * len + 2 bytes. Returns the number of pairs, or
 * SK_EINVAL (bad escape, decoded NUL, control character or invalid UTF-8,
 * more than max pairs, scratch too small). */
int router_parse_query(const char *qs, size_t len, char *scratch,
                       size_t scratch_len, router_kv *out, int max);

#endif /* SKALD_API_ROUTER_H */
