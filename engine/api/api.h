/*
 * api.h — the HTTP API of the daemon (spec/http-api.md): the routes, and
 * the bridge that runs their blocking work off the HTTP loop.
 *
 * A route handler runs on the HTTP loop thread: it copies what the request
 * carries (path parameters, query, body, Authorization) into an api_call
 * and hands it to the API thread pool. There the call authenticates,
 * applies the per-key rate limit, and does its work against the engine
 * (database reads, commits through the engine's group commit). The result
 * goes back to the loop through a uv_async_t, where the response is
 * written. The loop never blocks; an API thread never touches a loop
 * object.
 *
 * Thread: api_new / api_close / the handlers on the HTTP loop thread; work
 * functions on API threads.
 */
#ifndef SKALD_API_API_H
#define SKALD_API_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include <skald/skald.h>

#include "api/router.h"
#include "common/err.h"

typedef struct api api;

typedef struct api_config {
  int threads;            /* API threads (long polls hold one each); 32 */
  bool require_auth;      /* Bearer keys required (the daemon sets this
                             when any key exists or it listens beyond
                             loopback) */
  double rate_per_sec;    /* per key (or per client when auth is off); 0 =
                             no limit; default 200 */
  double rate_burst;      /* default 400 */
} api_config;

void api_config_init(api_config *c);

/* Builds the routes and starts the API threads. The engine is borrowed and
 * must outlive the api. Errors: SK_ENOMEM, SK_EIO. */
int api_new(uv_loop_t *loop, sk_engine *engine, const api_config *cfg,
            api **out) SK_MUST_CHECK;
const router *api_router(const api *a);
/* Waits for the API threads (after the HTTP server has stopped, so no new
 * calls arrive), then closes the async handle; cb runs when it is closed,
 * after which api_free may be called. */
void api_close(api *a, void (*cb)(api *a, void *ud), void *ud);
void api_free(api *a);

#endif /* SKALD_API_API_H */
