/*
 * api_call.h — one API request on its way through the bridge (api.h):
 * inputs copied on the loop thread, work done on an API thread, the result
 * written on the loop thread. Shared by api.c and the routes_*.c files.
 */
#ifndef SKALD_API_API_CALL_H
#define SKALD_API_API_CALL_H

#include <cjson/cJSON.h>
#include <stdbool.h>

#include "api/api.h"
#include "api/http_server.h"
#include "core/engine.h"
#include "exec/pool.h"

#define API_QUERY_MAX 6

typedef struct api_call api_call;
typedef void (*api_work_fn)(api_call *c);

/* A route of the API: its pattern and what it does. */
typedef struct api_route {
  int method;
  const char *pattern;
  api_work_fn work;
  bool needs_body;        /* a JSON object body is required */
  bool public;            /* no API key needed (health) */
  const char *query[API_QUERY_MAX]; /* query keys to copy */
} api_route;

struct api_call {
  pool_link link;                 /* first: the API pool's queue link */
  api *a;
  sk_engine *e;
  http_request *req;
  const api_route *route;
  /* inputs, copied on the loop thread */
  char *param;                    /* the route's one path parameter */
  char *query[API_QUERY_MAX];     /* values of route->query keys */
  char *body;
  char *authorization;
  char client[64];                /* rate-limit key when auth is off */
  cJSON *json;                    /* parsed body (API thread) */
  /* outputs */
  int status;
  char *out;                      /* response body (malloc'd) */
  const char *content_type;       /* NULL: application/json */
  char code[40];                  /* error code when status >= 400 */
  char message[SK_ERROR_MESSAGE_MAX];
  char *details;                  /* JSON array text or NULL */
  char retry_after[24];           /* rate limit headers when set */
  char rl_limit[24], rl_remaining[24], rl_reset[24];
  api_call *next_done;
};

/* Outputs. api_ok takes ownership of json (may be NULL: "{}"). */
void api_ok(api_call *c, int status, char *json);
void api_fail(api_call *c, int status, const char *code, const char *fmt, ...)
    SK_PRINTF(4, 5);
/* Maps an engine error to its HTTP status and code, using err's message. */
void api_fail_sk(api_call *c, int rc, const sk_error *err);

/* Body helpers (API thread): the parsed body's field or NULL. */
const cJSON *api_field(const api_call *c, const char *name);
/* A string field: NULL if absent; *bad set if present but not a string. */
const char *api_string(const api_call *c, const char *name, bool *bad);

/* Parses an optional integer query value in [min, max] into *out (left
 * alone when s is NULL); false if malformed or out of range. */
bool api_query_int(const char *s, long min, long max, long *out);
/* An integer body field in [min, max]; absent → *out untouched. false if
 * present but not such an integer (and fails the call naming it). */
bool api_int_field(api_call *c, const char *name, long long min,
                   long long max, long long *out);

/* True if the body has no fields but these (NULL-terminated); otherwise
 * fails the call naming the first unknown one. */
bool api_only_fields(api_call *c, const char *const *allowed);

/* The route tables of each area, ended by a {0} entry. */
extern const api_route api_routes_workflows[];
extern const api_route api_routes_sagas[];
extern const api_route api_routes_tasks[];
extern const api_route api_routes_ops[];

#endif /* SKALD_API_API_CALL_H */
