/*
 * api.c — the bridge between the HTTP loop and the engine (see api.h).
 *
 * Invariants:
 *   - A call's inputs are copied on the loop thread before it is queued;
 *     its request is touched again only on the loop thread, in flush().
 *   - Every queued call comes back through `done` exactly once, so every
 *     deferred request is answered (or freed, if its client left).
 *   - api_close() runs after the HTTP server stopped: the pool is stopped
 *     (running calls finish), then whatever came back is flushed.
 *
 * Thread: handle() and flush() on the HTTP loop thread; run_call() on API
 * threads.
 */
#include "api/api.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_call.h"
#include "api/auth.h"
#include "api/ratelimit.h"
#include "common/clock.h"
#include "common/json.h"
#include "common/log.h"

typedef struct route_ud {
  api *a;
  const api_route *r;
} route_ud;

struct api {
  uv_loop_t *loop;
  sk_engine *e;
  api_config cfg;
  router *routes;
  route_ud *uds;
  size_t n_uds;
  pool *pool;
  uv_async_t async;
  bool async_open;
  pthread_mutex_t mu;
  api_call *done;
  ratelimit *rl;
  auth_cache *auth;
  void (*close_cb)(api *a, void *ud);
  void *close_ud;
};

void api_config_init(api_config *c) {
  memset(c, 0, sizeof(*c));
  c->threads = 32;
  c->rate_per_sec = 200;
  c->rate_burst = 400;
}

/* ---- outputs ------------------------------------------------------------- */

void api_ok(api_call *c, int status, char *json) {
  free(c->out);
  c->status = status;
  c->out = json;
}

void api_fail(api_call *c, int status, const char *code, const char *fmt,
              ...) {
  c->status = status;
  snprintf(c->code, sizeof(c->code), "%s", code);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->message, sizeof(c->message), fmt, ap);
  va_end(ap);
}

void api_fail_sk(api_call *c, int rc, const sk_error *err) {
  const char *msg = err != NULL && err->message[0] ? err->message
                                                   : sk_strerror(rc);
  int status = 500;
  const char *code = "internal";
  switch (rc) {
  case SK_EINVAL: status = 400; code = "invalid_request"; break;
  case SK_EJSON: status = 400; code = "invalid_json"; break;
  case SK_EINVALSPEC: status = 400; code = "invalid_spec"; break;
  case SK_ENOENT: status = 404; code = "not_found"; break;
  case SK_EEXIST: status = 409; code = "conflict"; break;
  case SK_ECONFLICT: status = 409; code = "version_conflict"; break;
  case SK_ESTATE: status = 409; code = "invalid_state"; break;
  case SK_ELEASE: status = 409; code = "lease_lost"; break;
  case SK_ETOOBIG: status = 413; code = "payload_too_large"; break;
  case SK_ENOTSUP:
  case SK_ENOHANDLER: status = 422; code = "unsupported"; break;
  case SK_EDB:
  case SK_EUNAVAIL:
  case SK_ESHUTDOWN:
  case SK_ETIMEDOUT: status = 503; code = "unavailable"; break;
  default: break;
  }
  api_fail(c, status, code, "%s", msg);
  if (err != NULL && err->path[0] != '\0' && c->details == NULL) {
    buf b = BUF_INIT;
    buf_puts(&b, "[{\"path\":");
    buf_json_str(&b, err->path);
    buf_puts(&b, ",\"message\":");
    buf_json_str(&b, msg);
    buf_puts(&b, "}]");
    c->details = buf_steal(&b);
  }
}

const cJSON *api_field(const api_call *c, const char *name) {
  return c->json != NULL ? cJSON_GetObjectItemCaseSensitive(c->json, name)
                         : NULL;
}

const char *api_string(const api_call *c, const char *name, bool *bad) {
  const cJSON *v = api_field(c, name);
  if (v == NULL || cJSON_IsNull(v))
    return NULL;
  if (!cJSON_IsString(v)) {
    *bad = true;
    return NULL;
  }
  return v->valuestring;
}

bool api_query_int(const char *s, long min, long max, long *out) {
  if (s == NULL)
    return true;
  char *end = NULL;
  long v = strtol(s, &end, 10);
  if (s[0] == '\0' || *end != '\0' || v < min || v > max)
    return false;
  *out = v;
  return true;
}

bool api_int_field(api_call *c, const char *name, long long min,
                   long long max, long long *out) {
  const cJSON *v = api_field(c, name);
  if (v == NULL || cJSON_IsNull(v))
    return true;
  double d = cJSON_IsNumber(v) ? v->valuedouble : 0;
  if (!cJSON_IsNumber(v) || d != (double)(long long)d || d < (double)min ||
      d > (double)max) {
    api_fail(c, 400, "invalid_request",
             "%s must be an integer between %lld and %lld", name, min, max);
    return false;
  }
  *out = (long long)d;
  return true;
}

bool api_only_fields(api_call *c, const char *const *allowed) {
  const cJSON *f;
  cJSON_ArrayForEach(f, c->json) {
    bool known = false;
    for (size_t i = 0; allowed[i] != NULL && !known; i++)
      known = strcmp(f->string, allowed[i]) == 0;
    if (!known) {
      api_fail(c, 400, "invalid_request", "unknown field \"%s\"",
               f->string);
      return false;
    }
  }
  return true;
}

/* ---- API threads ------------------------------------------------------------ */

/* Bearer key check (when required) and the per-key rate limit. */
static bool admit(api_call *c) {
  char key_id[64] = "anonymous";
  if (c->a->cfg.require_auth && !c->route->public) {
    sk_error err = {0};
    engine_q_lock(c->e);
    int rc = auth_check(c->a->auth, c->e->query_conn, c->authorization,
                        key_id, &err);
    engine_q_unlock(c->e);
    if (rc != SK_OK) {
      if (rc == SK_EDB)
        api_fail(c, 503, "unavailable", "cannot check the API key now");
      else
        api_fail(c, 401, "unauthorized", "%s",
                 err.message[0] ? err.message
                                : "a valid API key is required "
                                  "(Authorization: Bearer <key>)");
      return false;
    }
  }
  if (c->a->rl == NULL || c->route->public)
    return true;
  ratelimit_result rr;
  bool ok = ratelimit_take(c->a->rl, key_id, clock_mono_ms(), &rr) == SK_OK &&
            rr.allowed;
  snprintf(c->rl_limit, sizeof(c->rl_limit), "%lld", (long long)rr.limit);
  snprintf(c->rl_remaining, sizeof(c->rl_remaining), "%lld",
           (long long)rr.remaining);
  snprintf(c->rl_reset, sizeof(c->rl_reset), "%lld",
           (long long)rr.reset_s);
  if (!ok) {
    snprintf(c->retry_after, sizeof(c->retry_after), "%lld",
             (long long)rr.retry_after_s);
    api_fail(c, 429, "rate_limited", "too many requests; retry in %lld s",
             (long long)rr.retry_after_s);
  }
  return ok;
}

static bool parse_body(api_call *c) {
  size_t len = c->body != NULL ? strlen(c->body) : 0;
  if (len == 0) {
    if (c->route->needs_body) {
      api_fail(c, 400, "invalid_json", "a JSON object body is required");
      return false;
    }
    return true;
  }
  c->json = json_parse_exact(c->body, len);
  if (c->json == NULL || !cJSON_IsObject(c->json)) {
    api_fail(c, 400, "invalid_json", "the body must be one JSON object");
    return false;
  }
  return true;
}

static void run_call(pool_link *link, void *ud) {
  api_call *c = (api_call *)link;
  api *a = ud;
  if (admit(c) && parse_body(c))
    c->route->work(c);
  if (c->status == 0)
    api_fail(c, 500, "internal", "the request produced no response");
  pthread_mutex_lock(&a->mu);
  c->next_done = a->done;
  a->done = c;
  pthread_mutex_unlock(&a->mu);
  uv_async_send(&a->async);
}

/* ---- the loop thread --------------------------------------------------------- */

static void call_free(api_call *c) {
  free(c->param);
  for (int i = 0; i < API_QUERY_MAX; i++)
    free(c->query[i]);
  free(c->body);
  free(c->authorization);
  free(c->out);
  free(c->details);
  cJSON_Delete(c->json);
  free(c);
}

static char *error_json(const api_call *c) {
  buf b = BUF_INIT;
  buf_puts(&b, "{\"error\":{\"code\":");
  buf_json_str(&b, c->code);
  buf_puts(&b, ",\"message\":");
  buf_json_str(&b, c->message);
  buf_puts(&b, ",\"details\":");
  buf_puts(&b, c->details != NULL ? c->details : "[]");
  buf_puts(&b, "}}");
  return buf_steal(&b);
}

static void respond(api_call *c) {
  http_response *resp = http_request_response(c->req);
  if (c->rl_limit[0] != '\0') {
    http_response_header(resp, "X-RateLimit-Limit", c->rl_limit);
    http_response_header(resp, "X-RateLimit-Remaining", c->rl_remaining);
    http_response_header(resp, "X-RateLimit-Reset", c->rl_reset);
  }
  if (c->retry_after[0] != '\0')
    http_response_header(resp, "Retry-After", c->retry_after);
  if (c->status >= 400) {
    char *json = error_json(c);
    http_response_json(resp, c->status, json != NULL ? json : "{}");
    free(json);
  } else if (c->content_type != NULL) {
    http_response_status(resp, c->status);
    http_response_body(resp, c->content_type, c->out,
                       c->out != NULL ? strlen(c->out) : 0);
  } else {
    http_response_json(resp, c->status, c->out != NULL ? c->out : "{}");
  }
  http_respond(c->req);
}

static void flush(api *a) {
  pthread_mutex_lock(&a->mu);
  api_call *list = a->done;
  a->done = NULL;
  pthread_mutex_unlock(&a->mu);
  while (list != NULL) {
    api_call *c = list;
    list = c->next_done;
    respond(c);
    call_free(c);
  }
}

static void async_cb(uv_async_t *h) { flush(h->data); }

static char *dup_or_null(const char *s) { return s != NULL ? strdup(s) : NULL; }

static const char *const PARAM_NAMES[] = {"id", "name", "task_id"};

static void handle(http_request *req, http_response *resp, void *ud) {
  route_ud *u = ud;
  const api_route *r = u->r;
  size_t len = 0;
  const char *body = http_request_body(req, &len);
  if (len > 0 && http_request_json_check(req, SK_JSON_DEPTH_MAX) != 0)
    return; /* the check wrote the error response */
  api_call *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    http_response_error(resp, 503, "unavailable", "out of memory");
    return;
  }
  c->a = u->a;
  c->e = u->a->e;
  c->req = req;
  c->route = r;
  for (size_t i = 0; i < 3 && c->param == NULL; i++)
    c->param = dup_or_null(http_request_param(req, PARAM_NAMES[i]));
  for (int i = 0; i < API_QUERY_MAX && r->query[i] != NULL; i++)
    c->query[i] = dup_or_null(http_request_query(req, r->query[i]));
  c->body = len > 0 ? strndup(body, len) : NULL;
  c->authorization = dup_or_null(http_request_header(req, "Authorization"));
  http_request_defer(req);
  if (pool_submit(u->a->pool, &c->link) != SK_OK) {
    api_fail(c, 503, "unavailable", "the server is shutting down");
    respond(c);
    call_free(c);
  }
}

/* ---- lifecycle ------------------------------------------------------------------ */

static int add_routes(api *a, const api_route *table) {
  for (const api_route *r = table; r->pattern != NULL; r++) {
    route_ud *u = &a->uds[a->n_uds++];
    u->a = a;
    u->r = r;
    int rc = router_add(a->routes, r->method, r->pattern, handle, u);
    if (rc != SK_OK)
      return rc;
  }
  return SK_OK;
}

static size_t count_routes(const api_route *t) {
  size_t n = 0;
  while (t[n].pattern != NULL)
    n++;
  return n;
}

int api_new(uv_loop_t *loop, sk_engine *engine, const api_config *cfg,
            api **out) {
  api *a = calloc(1, sizeof(*a));
  if (a == NULL)
    return SK_ENOMEM;
  a->loop = loop;
  a->e = engine;
  if (cfg != NULL)
    a->cfg = *cfg;
  else
    api_config_init(&a->cfg);
  pthread_mutex_init(&a->mu, NULL);
  const api_route *tables[] = {api_routes_workflows, api_routes_sagas,
                               api_routes_tasks, api_routes_ops};
  size_t n = 0;
  for (size_t i = 0; i < 4; i++)
    n += count_routes(tables[i]);
  int rc = router_new(&a->routes);
  if (rc == SK_OK && (a->uds = calloc(n, sizeof(route_ud))) == NULL)
    rc = SK_ENOMEM;
  for (size_t i = 0; i < 4 && rc == SK_OK; i++)
    rc = add_routes(a, tables[i]);
  if (rc == SK_OK && a->cfg.rate_per_sec > 0)
    rc = ratelimit_new(a->cfg.rate_per_sec, (int64_t)a->cfg.rate_burst, 10000,
                       &a->rl);
  if (rc == SK_OK)
    rc = auth_cache_new(10000, NULL, &a->auth);
  if (rc == SK_OK)
    rc = pool_new("api", a->cfg.threads, run_call, a, &a->pool);
  if (rc == SK_OK && uv_async_init(loop, &a->async, async_cb) != 0)
    rc = SK_EIO;
  if (rc != SK_OK) {
    api_free(a);
    return rc;
  }
  a->async.data = a;
  a->async_open = true;
  *out = a;
  return SK_OK;
}

const router *api_router(const api *a) { return a->routes; }

static void closed_cb(uv_handle_t *h) {
  api *a = h->data;
  a->async_open = false;
  if (a->close_cb != NULL)
    a->close_cb(a, a->close_ud);
}

void api_close(api *a, void (*cb)(api *a, void *ud), void *ud) {
  pool_stop(a->pool); /* running calls finish and come back */
  flush(a);
  a->close_cb = cb;
  a->close_ud = ud;
  uv_close((uv_handle_t *)&a->async, closed_cb);
}

void api_free(api *a) {
  if (a == NULL)
    return;
  pool_free(a->pool);
  ratelimit_free(a->rl);
  auth_cache_free(a->auth);
  router_free(a->routes);
  free(a->uds);
  pthread_mutex_destroy(&a->mu);
  free(a);
}
