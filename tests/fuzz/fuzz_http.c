/*
 * fuzz_http.c — libFuzzer target for the HTTP request path of the API.
 *
 * What runs: the bytes are a request stream (keep-alive, pipelining,
 * chunked bodies) fed to http_parser (the system libhttp-parser, the one
 * skald links) in pieces cut at the stride boundaries, as http_conn.c's
 * feed() does, with callbacks that do what engine/api/http_conn.c's do —
 * counting against the URL, header byte and count, and body limits with
 * http_tally.c (the engine's own code) and judging the request at the same
 * points, the HTTP/1.x check, the Content-Length limit, splitting the URL
 * into path and query,
 * percent-decoding the path and refusing "."/".." segments and control
 * bytes, decoding the query (router_parse_query, HTTP_QUERY_MAX pairs),
 * routing against the daemon's route table (a copy of api_routes_*,
 * checked against them by the regression test, through router_add /
 * router_match_path) and, for a routed request with a body, json_check at
 * SK_JSON_DEPTH_MAX as the API handler does. The limits are
 * http_server_config_init's defaults (copied, checked the same way).
 *
 * What does not run: http_conn.c's own callbacks are static and bound to
 * a libuv connection, so they are mirrored here rather than called, and
 * nothing of the response queue, timers or writes runs (those are covered
 * by tests/integration/test_http_server.c over real sockets). The engine
 * code exercised is router.c (router_url_decode, router_parse_query,
 * router_match_path, router_param_valid), http_tally.c and json_limits.c
 * (json_check).
 *
 * Invariants checked, besides no crash, leak or UB:
 *   - router_url_decode: the output is NUL-terminated, no longer than the
 *     input, and holds no NUL;
 *   - router_parse_query: at most HTTP_QUERY_MAX pairs, none with a
 *     control byte;
 *   - router_match_path: a match has a handler and every captured value
 *     passes router_param_valid; SK_ENOTSUP fills a terminated Allow list;
 *   - json_check: never passes a body that cJSON parses to a tree nested
 *     deeper than the limit, and never calls a body within the limit "too
 *     big" when cJSON parses it and it holds no control byte;
 *   - the outcome of the stream does not depend on how it is split into
 *     reads (fed whole, then in two pieces at a point taken from the data).
 *
 * Thread: the fuzzer's only thread.
 */
#include "fuzz_entry.h"

#include <cjson/cJSON.h>
#include <http_parser.h>
#include <stdbool.h>
#include <string.h>

#include <skald/skald.h>

#include "api/http_server.h" /* HTTP_QUERY_MAX, http_request */
#include "api/http_tally.h"
#include "api/json_limits.h"
#include "api/router.h"
#include "common/buf.h"

/* ---- the route table, built once ---------------------------------------- */

/* The daemon's routes (engine/api/routes_*.c). They are listed here because
 * the route tables live with the handlers, which pull in the whole engine
 * (libpq, libuv, libcurl) and the fuzz build links only the parsing code;
 * tests/unit/test_fuzz_regressions.c checks this list against
 * api_routes_* so it cannot drift. */
typedef struct fuzz_route {
  int method;
  const char *pattern;
} fuzz_route;

static const fuzz_route fuzz_http_routes[] = {
    {HTTP_POST, "/v1/workflows"},
    {HTTP_GET, "/v1/workflows"},
    {HTTP_GET, "/v1/workflows/{name}"},
    {HTTP_POST, "/v1/workflows/{name}/runs"},
    {HTTP_GET, "/v1/sagas"},
    {HTTP_POST, "/v1/sagas/replay"},
    {HTTP_GET, "/v1/sagas/{id}"},
    {HTTP_GET, "/v1/sagas/{id}/events"},
    {HTTP_POST, "/v1/sagas/{id}/cancel"},
    {HTTP_POST, "/v1/sagas/{id}/replay"},
    {HTTP_POST, "/v1/tasks/poll"},
    {HTTP_POST, "/v1/tasks/{task_id}/heartbeat"},
    {HTTP_POST, "/v1/tasks/{task_id}/complete"},
    {HTTP_POST, "/v1/tasks/{task_id}/fail"},
    {HTTP_GET, "/v1/nodes"},
    {HTTP_GET, "/health"},
    {HTTP_GET, "/health/ready"},
    {HTTP_GET, "/metrics"},
    {0, NULL},
};

/* http_server_config_init's defaults (engine/api/http_server.c), checked
 * against it by the regression test for the same reason. */
#define FUZZ_HTTP_MAX_BODY ((size_t)1024 * 1024)
#define FUZZ_HTTP_MAX_HEADER_BYTES ((size_t)16 * 1024)
#define FUZZ_HTTP_MAX_HEADERS 100
#define FUZZ_HTTP_MAX_URL ((size_t)8 * 1024)

static void no_handler(http_request *req, http_response *resp, void *ud) {
  (void)req;
  (void)resp;
  (void)ud;
}

static router *routes(void) {
  static router *r;
  if (r != NULL)
    return r;
  if (router_new(&r) != SK_OK)
    abort();
  for (const fuzz_route *rt = fuzz_http_routes; rt->pattern != NULL; rt++)
    if (router_add(r, rt->method, rt->pattern, no_handler, NULL) != SK_OK)
      abort();
  return r; /* kept for the life of the process */
}

/* ---- one connection's parse state, as in http_conn.c ---------------------- */

typedef struct conn {
  http_parser parser;
  http_server_config cfg; /* only the four limits are set */
  bool in_request, in_value, dead;
  http_tally tally;
  uint64_t stream_off;
  buf url, field, value, body;
  buf log; /* the outcome, one line per request, compared across splits */
  char *path;
} conn;

static conn *conn_of(http_parser *p) { return p->data; }

/* Ends parsing with the status the connection would answer. */
static int fail(conn *c, int status) {
  buf_printf(&c->log, "%d\n", status);
  c->dead = true;
  return -1;
}

static int on_message_begin(http_parser *p) {
  conn *c = conn_of(p);
  c->in_request = true;
  c->in_value = false;
  http_tally_reset(&c->tally);
  buf_reset(&c->url);
  buf_reset(&c->field);
  buf_reset(&c->value);
  buf_reset(&c->body);
  free(c->path);
  c->path = NULL;
  return 0;
}

/* http_conn.c's refuse_if_over, at the same judging points. */
static bool refuse_if_over(conn *c) {
  http_refusal why;
  if (!c->in_request || !http_tally_over(&c->tally, &c->cfg, &why))
    return false;
  (void)fail(c, why.status);
  return true;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  conn *c = conn_of(p);
  if (http_tally_url(&c->tally, &c->cfg, len))
    buf_append(&c->url, at, len);
  return 0;
}

static void commit_header(conn *c) {
  (void)http_tally_header_line(&c->tally, &c->cfg);
  buf_reset(&c->field);
  buf_reset(&c->value);
  c->in_value = false;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
  conn *c = conn_of(p);
  if (c->in_value)
    commit_header(c);
  if (http_tally_header_bytes(&c->tally, &c->cfg, len))
    buf_append(&c->field, at, len);
  return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  conn *c = conn_of(p);
  c->in_value = true;
  if (http_tally_header_bytes(&c->tally, &c->cfg, len))
    buf_append(&c->value, at, len);
  return 0;
}

static void check_decoded(const char *in, size_t len, const char *out,
                          size_t out_len) {
  FUZZ_CHECK(out_len <= len, "decoded %zu bytes from %zu", out_len, len);
  FUZZ_CHECK(out[out_len] == '\0', "decoded text is not terminated");
  FUZZ_CHECK(memchr(out, '\0', out_len) == NULL, "decoded text holds a NUL");
  (void)in;
}

/* http_conn.c's path_safe: decoded, no control bytes, no "." / "..". */
static bool path_safe(const char *path, size_t len) {
  char *dec = malloc(len + 1);
  size_t dlen = 0;
  bool ok = dec != NULL && router_url_decode(path, len, dec, &dlen, false) == 0;
  if (ok)
    check_decoded(path, len, dec, dlen);
  for (size_t i = 0; ok && i < dlen; i++)
    if ((unsigned char)dec[i] < 0x20 || dec[i] == 0x7f)
      ok = false;
  if (ok) {
    char *save = NULL;
    for (char *s = strtok_r(dec, "/", &save); s != NULL && ok;
         s = strtok_r(NULL, "/", &save))
      if (strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        ok = false;
  }
  free(dec);
  return ok;
}

/* http_conn.c's split_url: 0 or -1 (400). */
static int split_url(conn *c) {
  const char *url = c->url.data ? c->url.data : "";
  if (url[0] != '/')
    return -1;
  size_t plen = strcspn(url, "?#");
  c->path = strndup(url, plen);
  if (c->path == NULL || !path_safe(c->path, plen))
    return -1;
  if (url[plen] != '?')
    return 0;
  const char *qs = url + plen + 1;
  size_t qlen = strcspn(qs, "#");
  size_t slen = 3 * qlen + 2;
  char *scratch = malloc(slen);
  router_kv kv[HTTP_QUERY_MAX];
  int n = scratch ? router_parse_query(qs, qlen, scratch, slen, kv,
                                       HTTP_QUERY_MAX)
                  : -1;
  FUZZ_CHECK(n <= HTTP_QUERY_MAX, "%d query pairs", n);
  for (int i = 0; i < n; i++) {
    FUZZ_CHECK(kv[i].key != NULL && kv[i].value != NULL, "NULL query part");
    for (const char *s = kv[i].key; *s; s++)
      FUZZ_CHECK((unsigned char)*s >= 0x20, "control byte in a query key");
    for (const char *s = kv[i].value; *s; s++)
      FUZZ_CHECK((unsigned char)*s >= 0x20, "control byte in a query value");
  }
  free(scratch);
  return n < 0 ? -1 : 0;
}

static int on_headers_complete(http_parser *p) {
  conn *c = conn_of(p);
  if (c->in_value)
    commit_header(c);
  if (refuse_if_over(c))
    return -1;
  if (p->http_major != 1)
    return fail(c, 505);
  if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->cfg.max_body)
    return fail(c, 413);
  if (split_url(c) != 0)
    return fail(c, 400);
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  conn *c = conn_of(p);
  if (http_tally_body(&c->tally, &c->cfg, len))
    buf_append(&c->body, at, len);
  return 0;
}

static int body_depth(const cJSON *j) {
  int max = 0;
  for (const cJSON *ch = j->child; ch != NULL; ch = ch->next) {
    int d = body_depth(ch);
    if (d > max)
      max = d;
  }
  return (cJSON_IsArray(j) || cJSON_IsObject(j)) ? max + 1 : max;
}

/* The API handler's body check, compared with what cJSON makes of it. */
static int check_body(const char *body, size_t len) {
  int rc = json_check(body, len, SK_JSON_DEPTH_MAX);
  FUZZ_CHECK(rc == SK_OK || rc == SK_EJSON || rc == SK_ETOOBIG,
             "json_check returned %d", rc);
  /* The whole body must be one JSON text: cJSON would otherwise accept a
   * valid prefix followed by anything. */
  char *text = malloc(len + 1);
  if (text != NULL) {
    memcpy(text, body, len);
    text[len] = '\0';
  }
  cJSON *j = text ? cJSON_ParseWithLengthOpts(text, len + 1, NULL, true)
                  : NULL;
  free(text);
  if (j != NULL) {
    int d = body_depth(j);
    if (d > SK_JSON_DEPTH_MAX)
      FUZZ_CHECK(rc != SK_OK, "json_check passed a body %d deep", d);
    bool ctl = false;
    for (size_t i = 0; i < len && !ctl; i++)
      ctl = (unsigned char)body[i] < 0x20 && body[i] != ' ' &&
            body[i] != '\t' && body[i] != '\n' && body[i] != '\r';
    if (d <= SK_JSON_DEPTH_MAX && !ctl && memchr(body, '\0', len) == NULL)
      FUZZ_CHECK(rc != SK_ETOOBIG, "json_check calls a body %d deep too big",
                 d);
    cJSON_Delete(j);
  }
  return rc;
}

/* http_conn.c's dispatch (routing) and the API handler's json_check. */
static int on_message_complete(http_parser *p) {
  conn *c = conn_of(p);
  if (refuse_if_over(c))
    return -1;
  c->in_request = false;
  size_t len = strlen(c->path) + 1;
  char *scratch = malloc(len);
  router_match m;
  memset(&m, 0, sizeof(m));
  int status;
  int rc = scratch ? router_match_path(routes(), (int)p->method, c->path,
                                       scratch, len, &m)
                   : SK_ENOMEM;
  switch (rc) {
  case SK_OK:
    FUZZ_CHECK(m.fn == no_handler, "matched without the handler");
    FUZZ_CHECK(m.nparams >= 0 && m.nparams <= ROUTER_PARAMS_MAX, "%d params",
               m.nparams);
    for (int i = 0; i < m.nparams; i++)
      FUZZ_CHECK(m.params[i].key != NULL && m.params[i].value != NULL &&
                     router_param_valid(m.params[i].value,
                                        strlen(m.params[i].value)),
                 "invalid path parameter %d accepted", i);
    status = 200;
    if (c->body.len > 0) {
      int jrc = check_body(c->body.data, c->body.len);
      status = jrc == SK_OK ? 200 : jrc == SK_ETOOBIG ? 413 : 400;
    }
    break;
  case SK_ENOENT:
    status = 404;
    break;
  case SK_ENOTSUP:
    FUZZ_CHECK(memchr(m.allow, '\0', sizeof(m.allow)) != NULL &&
                   m.allow[0] != '\0',
               "405 without an Allow list");
    status = 405;
    break;
  case SK_EINVAL:
    status = 400;
    break;
  default:
    status = 503;
    break;
  }
  free(scratch);
  buf_printf(&c->log, "%d %s %s\n", status, http_method_str(p->method),
             c->path);
  /* A request that does not keep the connection alive is the last. */
  if (!http_should_keep_alive(p) || p->upgrade) {
    c->dead = true;
    return -1;
  }
  return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* http_conn.c's feed_piece: one piece, up to the next stride boundary;
 * false when parsing ends here. */
static bool feed_piece(conn *c, const char *data, size_t piece) {
  size_t n = http_parser_execute(&c->parser, &settings, data, piece);
  c->stream_off += n;
  enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
  if (c->dead)
    return false;
  if (e != HPE_OK) {
    (void)fail(c, e == HPE_HEADER_OVERFLOW ? 431 : 400);
    return false;
  }
  if (c->parser.upgrade && !c->in_request) {
    /* An upgrade is answered, then the connection closes (http_server.h).
     * http_parser sets .upgrade at the end of the headers, so this must wait
     * for the message to complete (an earlier http_conn.c tested .upgrade
     * alone and so dropped, unanswered, an Upgrade request whose body came
     * in a later read: regressions/http/upgrade_body_in_second_read.http). */
    c->dead = true;
    return false;
  }
  FUZZ_CHECK(n == piece, "parser stopped at %zu of %zu without an error", n,
             piece);
  return !(http_tally_checkpoint(c->stream_off) && refuse_if_over(c));
}

static void feed(conn *c, const char *data, size_t len) {
  while (!c->dead && len > 0) {
    size_t piece = http_tally_piece(c->stream_off, len);
    if (!feed_piece(c, data, piece))
      return;
    data += piece;
    len -= piece;
  }
}

/* Runs the stream fed in [0, split) and [split, size); the outcome lines. */
static char *run(const char *data, size_t size, size_t split) {
  conn c;
  memset(&c, 0, sizeof(c));
  c.cfg.max_body = FUZZ_HTTP_MAX_BODY;
  c.cfg.max_header_bytes = FUZZ_HTTP_MAX_HEADER_BYTES;
  c.cfg.max_url = FUZZ_HTTP_MAX_URL;
  c.cfg.max_headers = FUZZ_HTTP_MAX_HEADERS;
  buf_init(&c.url);
  buf_init(&c.field);
  buf_init(&c.value);
  buf_init(&c.body);
  buf_init(&c.log);
  http_parser_init(&c.parser, HTTP_REQUEST);
  c.parser.data = &c;
  feed(&c, data, split);
  feed(&c, data + split, size - split);
  if (!c.dead && c.in_request)
    buf_puts(&c.log, "cut short\n"); /* peer EOF mid-request: no answer */
  free(c.path);
  buf_free(&c.url);
  buf_free(&c.field);
  buf_free(&c.value);
  buf_free(&c.body);
  char *log = buf_steal(&c.log);
  return log != NULL ? log : strdup("");
}

int fuzz_http_one(const uint8_t *data, size_t size) {
  /* An exact-size copy: nothing may read past the bytes received. */
  char *copy = calloc(size ? size : 1, 1);
  if (copy == NULL)
    return 0;
  if (size)
    memcpy(copy, data, size);
  char *whole = run(copy, size, size);
  if (size > 1) {
    size_t split = 1 + (size_t)data[0] * 257 % (size - 1);
    char *pieces = run(copy, size, split);
    FUZZ_CHECK(whole == NULL || pieces == NULL || strcmp(whole, pieces) == 0,
               "outcome depends on the split at %zu:\n%s---\n%s", split,
               whole, pieces);
    free(pieces);
  }
  free(whole);
  free(copy);
  return 0;
}

#ifndef FUZZ_NO_MAIN
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fuzz_http_one(data, size);
}
#endif
