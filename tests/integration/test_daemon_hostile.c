/*
 * test_daemon_hostile.c — a table of malformed and hostile requests against
 * the real daemon, each with the status and error code spec/http-api.md
 * promises; then the daemon must still serve, no rejected request may have
 * created a saga, and the sagas started by valid requests in between must be
 * intact (projection = fold of events) and still run to completion.
 *
 * Requests curl can send go through curl; the rest (header floods, huge
 * URLs, broken framing, a slowloris client) go over a raw socket.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <unistd.h>

#include "daemon.h"
#include "pgtest.h"
#include "store/queries.h"

static char db[512];
static skd_daemon d;

static void setup(void) {
  skd_global_init();
  cr_assert_eq(pgtest_fresh_db(db, sizeof(db)), 0);
  skd_start(&d, db, 0, NULL, "e2e-hostile");
}

static void teardown(void) {
  int st = skd_stop(&d);
  if (st != 0)
    skd_dump_log(&d);
  pgtest_drop_db(db);
  char why[2048] = "";
  bool clean = skd_log_clean(&d, why, sizeof(why));
  if (getenv("SKALD_TEST_KEEP") == NULL && clean)
    unlink(d.log_path);
  cr_assert(clean, "the daemon's log shows a sanitizer report (%s): %s",
            d.log_path, why);
}

static const char *jstr(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* ---- generated bodies and raw requests ------------------------------ */

static char *gen_repeat(const char *head, const char *unit, size_t n,
                        const char *tail, size_t *len) {
  size_t hl = strlen(head), ul = strlen(unit), tl = strlen(tail);
  size_t total = hl + ul * n + tl;
  char *s = malloc(total + 1);
  cr_assert_not_null(s);
  memcpy(s, head, hl);
  for (size_t i = 0; i < n; i++)
    memcpy(s + hl + i * ul, unit, ul);
  memcpy(s + hl + ul * n, tail, tl);
  s[total] = '\0';
  *len = total;
  return s;
}

/* 10000 levels of arrays as the run input. */
static char *gen_deep(size_t *len) {
  size_t n = 10000;
  char *s = malloc(2 * n + 64);
  cr_assert_not_null(s);
  size_t at = (size_t)sprintf(s, "{\"input\":{\"a\":");
  for (size_t i = 0; i < n; i++)
    s[at++] = '[';
  for (size_t i = 0; i < n; i++)
    s[at++] = ']';
  at += (size_t)sprintf(s + at, "}}");
  s[at] = '\0';
  *len = at;
  return s;
}

static char *gen_deep_spec(size_t *len) {
  size_t n = 10000;
  char *s = malloc(6 * n + 128);
  cr_assert_not_null(s);
  size_t at = (size_t)sprintf(s, "{\"name\":\"deep\",\"version\":1,\"x\":");
  for (size_t i = 0; i < n; i++)
    s[at++] = '{', s[at++] = '"', s[at++] = 'a', s[at++] = '"',
    s[at++] = ':';
  s[at++] = '1';
  for (size_t i = 0; i < n; i++)
    s[at++] = '}';
  s[at++] = '}';
  s[at] = '\0';
  *len = at;
  return s;
}

/* A run whose input is a string of 1.2 MB. */
static char *gen_huge_run(size_t *len) {
  return gen_repeat("{\"input\":{\"s\":\"", "x", 1200 * 1000, "\"}}", len);
}

static char *raw_huge_body(size_t *len) {
  size_t blen = 1100 * 1024;
  char head[256];
  snprintf(head, sizeof(head),
           "POST /v1/workflows HTTP/1.1\r\nHost: x\r\nContent-Type: "
           "application/json\r\nContent-Length: %zu\r\n\r\n{\"name\":\"",
           blen);
  return gen_repeat(head, "a", blen - 12, "\",\"v\":1}", len);
}

static char *raw_huge_chunked(size_t *len) {
  /* Two chunks of 700 KiB: the total passes 1 MiB. */
  size_t n = 700 * 1024;
  char *chunk = malloc(n + 1);
  cr_assert_not_null(chunk);
  memset(chunk, ' ', n);
  chunk[n] = '\0';
  char *s = NULL;
  int r = asprintf(&s,
                   "POST /v1/workflows HTTP/1.1\r\nHost: x\r\nTransfer-"
                   "Encoding: chunked\r\n\r\n%zx\r\n%s\r\n%zx\r\n%s\r\n0\r\n"
                   "\r\n",
                   n, chunk, n, chunk);
  free(chunk);
  cr_assert_geq(r, 0);
  *len = (size_t)r;
  return s;
}

static char *raw_header_flood(size_t *len) {
  return gen_repeat("GET /health HTTP/1.1\r\nHost: x\r\n", "X-Flood: 1\r\n",
                    1000, "\r\n", len);
}

static char *raw_huge_header(size_t *len) {
  return gen_repeat("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ", "b",
                    20 * 1024, "\r\n\r\n", len);
}

static char *raw_long_url(size_t *len) {
  return gen_repeat("GET /v1/sagas?x=", "a", 10 * 1024,
                    " HTTP/1.1\r\nHost: x\r\n\r\n", len);
}

static char *raw_long_path(size_t *len) {
  return gen_repeat("GET /v1/workflows/", "a", 9 * 1024,
                    " HTTP/1.1\r\nHost: x\r\n\r\n", len);
}

static char *raw_nul_body(size_t *len) {
  static const char req[] =
      "POST /v1/workflows/hostile_wf/runs HTTP/1.1\r\nHost: x\r\n"
      "Content-Type: application/json\r\nContent-Length: 15\r\n"
      "Connection: close\r\n\r\n{\"input\":{}\0}  ";
  char *s = malloc(sizeof(req));
  cr_assert_not_null(s);
  memcpy(s, req, sizeof(req));
  *len = sizeof(req) - 1;
  return s;
}

/* ---- the table ---
 *
 * Paths whose encoded segments decode to "/", ".." or NUL are refused by
 * the router itself (400 bad_request, "invalid request URL") before any
 * route sees them; other bad parameters are 400 invalid_request. */
/* ------------------------------------------------------- */

typedef enum { VIA_CURL, VIA_RAW } via;

typedef struct hcase {
  const char *name;
  via how;
  const char *method;
  const char *path; /* {SAGA} and {TASK} are substituted */
  const char *body; /* curl: body (NULL none); raw: the whole request */
  char *(*gen)(size_t *len); /* curl: body; raw: request */
  long status;               /* 0: the server closes without an answer */
  long status_alt;           /* another acceptable status, or 0 */
  const char *code;          /* error code, or NULL not checked */
  const char *allow;         /* 405: methods Allow must list (space-sep) */
} hcase;

#define C(n, m, p, b, st, cd)                                                  \
  {.name = n, .how = VIA_CURL, .method = m, .path = p, .body = b,             \
   .status = st, .code = cd}
#define CG(n, m, p, g, st, cd)                                                 \
  {.name = n, .how = VIA_CURL, .method = m, .path = p, .gen = g,              \
   .status = st, .code = cd}
#define R(n, b, st, alt)                                                       \
  {.name = n, .how = VIA_RAW, .body = b, .status = st, .status_alt = alt}
#define RG(n, g, st, cd)                                                       \
  {.name = n, .how = VIA_RAW, .gen = g, .status = st, .code = cd}

#define STEP_OK "{\"name\":\"s\",\"task\":\"e2e.a\"}"

static const hcase cases[] = {
    /* --- bodies that are not one JSON object --- */
    C("bad json", "POST", "/v1/workflows", "{\"name\":", 400, "invalid_json"),
    C("trailing garbage", "POST", "/v1/workflows",
      "{\"name\":\"tg\",\"version\":1,\"steps\":[" STEP_OK "]} junk", 400,
      "invalid_json"),
    C("two objects", "POST", "/v1/workflows/hostile_wf/runs",
      "{\"input\":{}}{\"input\":{}}", 400, "invalid_json"),
    C("array body", "POST", "/v1/workflows/hostile_wf/runs", "[1,2]", 400,
      "invalid_json"),
    C("null body", "POST", "/v1/workflows/hostile_wf/runs", "null", 400,
      "invalid_json"),
    C("empty register", "POST", "/v1/workflows", "", 400, "invalid_json"),
    C("unterminated string", "POST", "/v1/tasks/poll", "{\"worker_id\":\"w",
      400, "invalid_json"),
    C("bad escape", "POST", "/v1/workflows/hostile_wf/runs",
      "{\"input\":{\"a\":\"\\q\"}}", 400, "invalid_json"),
    CG("deep nesting run", "POST", "/v1/workflows/hostile_wf/runs", gen_deep,
       400, "invalid_json"),
    CG("deep nesting spec", "POST", "/v1/workflows", gen_deep_spec, 400,
       "invalid_json"),
    CG("huge run body", "POST", "/v1/workflows/hostile_wf/runs", gen_huge_run,
       413, "payload_too_large"),
    RG("huge body raw", raw_huge_body, 413, NULL),
    RG("huge chunked body", raw_huge_chunked, 413, NULL),
    RG("NUL in body", raw_nul_body, 400, "invalid_json"),

    /* --- invalid specs, one kind each --- */
    C("spec bad name", "POST", "/v1/workflows",
      "{\"name\":\"Bad Name!\",\"version\":1,\"steps\":[" STEP_OK "]}", 400,
      "invalid_spec"),
    C("spec version 0", "POST", "/v1/workflows",
      "{\"name\":\"v0\",\"version\":0,\"steps\":[" STEP_OK "]}", 400,
      "invalid_spec"),
    C("spec version string", "POST", "/v1/workflows",
      "{\"name\":\"vs\",\"version\":\"1\",\"steps\":[" STEP_OK "]}", 400,
      "invalid_spec"),
    C("spec version fraction", "POST", "/v1/workflows",
      "{\"name\":\"vf\",\"version\":1.5,\"steps\":[" STEP_OK "]}", 400,
      "invalid_spec"),
    C("spec no steps", "POST", "/v1/workflows",
      "{\"name\":\"ns\",\"version\":1,\"steps\":[]}", 400, "invalid_spec"),
    C("spec steps missing", "POST", "/v1/workflows",
      "{\"name\":\"nm\",\"version\":1}", 400, "invalid_spec"),
    C("spec duplicate steps", "POST", "/v1/workflows",
      "{\"name\":\"dup\",\"version\":1,\"steps\":[" STEP_OK "," STEP_OK "]}",
      400, "invalid_spec"),
    C("spec template later step", "POST", "/v1/workflows",
      "{\"name\":\"fwd\",\"version\":1,\"steps\":[{\"name\":\"a\",\"task\":"
      "\"t.a\",\"input\":{\"x\":\"${steps.b.output.y}\"}},{\"name\":\"b\","
      "\"task\":\"t.b\"}]}",
      400, "invalid_spec"),
    C("spec template self", "POST", "/v1/workflows",
      "{\"name\":\"slf\",\"version\":1,\"steps\":[{\"name\":\"a\",\"task\":"
      "\"t.a\",\"input\":{\"x\":\"${steps.a.output.y}\"}}]}",
      400, "invalid_spec"),
    C("spec retry max_attempts 0", "POST", "/v1/workflows",
      "{\"name\":\"r0\",\"version\":1,\"steps\":[{\"name\":\"a\",\"task\":"
      "\"t.a\",\"retry\":{\"max_attempts\":0}}]}",
      400, "invalid_spec"),
    C("spec retry coefficient < 1", "POST", "/v1/workflows",
      "{\"name\":\"r1\",\"version\":1,\"steps\":[{\"name\":\"a\",\"task\":"
      "\"t.a\",\"retry\":{\"backoff_coefficient\":0.5}}]}",
      400, "invalid_spec"),
    C("spec retry jitter > 1", "POST", "/v1/workflows",
      "{\"name\":\"r2\",\"version\":1,\"steps\":[{\"name\":\"a\",\"task\":"
      "\"t.a\",\"retry\":{\"jitter\":2}}]}",
      400, "invalid_spec"),
    C("spec retry negative interval", "POST", "/v1/workflows",
      "{\"name\":\"r3\",\"version\":1,\"steps\":[{\"name\":\"a\",\"task\":"
      "\"t.a\",\"retry\":{\"initial_interval_ms\":-5}}]}",
      400, "invalid_spec"),
    C("spec unknown top field", "POST", "/v1/workflows",
      "{\"name\":\"uf\",\"version\":1,\"bogus\":1,\"steps\":[" STEP_OK "]}",
      400, "invalid_spec"),
    C("spec unknown step field", "POST", "/v1/workflows",
      "{\"name\":\"us\",\"version\":1,\"steps\":[{\"name\":\"a\",\"task\":"
      "\"t.a\",\"tsak\":1}]}",
      400, "invalid_spec"),
    C("spec two kinds", "POST", "/v1/workflows",
      "{\"name\":\"tk\",\"version\":1,\"steps\":[{\"name\":\"a\",\"task\":"
      "\"t.a\",\"sleep\":{\"ms\":5}}]}",
      400, "invalid_spec"),
    C("spec on_failure bogus", "POST", "/v1/workflows",
      "{\"name\":\"of\",\"version\":1,\"on_failure\":\"explode\",\"steps\":["
      STEP_OK "]}",
      400, "invalid_spec"),

    /* --- runs --- */
    C("runs bad workflow name", "POST", "/v1/workflows/BAD%20NAME/runs",
      "{\"input\":{}}", 400, "invalid_request"),
    C("runs traversal name", "POST", "/v1/workflows/..%2F..%2Fetc/runs",
      "{\"input\":{}}", 400, "bad_request"),
    C("runs input array", "POST", "/v1/workflows/hostile_wf/runs",
      "{\"input\":[1]}", 400, "invalid_request"),
    C("runs input string", "POST", "/v1/workflows/hostile_wf/runs",
      "{\"input\":\"x\"}", 400, "invalid_request"),
    C("runs key number", "POST", "/v1/workflows/hostile_wf/runs",
      "{\"input\":{},\"idempotency_key\":5}", 400, "invalid_request"),
    C("runs version string", "POST", "/v1/workflows/hostile_wf/runs",
      "{\"input\":{},\"version\":\"1\"}", 400, "invalid_request"),
    C("runs version 0", "POST", "/v1/workflows/hostile_wf/runs",
      "{\"input\":{},\"version\":0}", 400, "invalid_request"),
    C("runs version fraction", "POST", "/v1/workflows/hostile_wf/runs",
      "{\"input\":{},\"version\":1.5}", 400, "invalid_request"),
    C("runs version huge", "POST", "/v1/workflows/hostile_wf/runs",
      "{\"input\":{},\"version\":1e300}", 400, "invalid_request"),
    C("runs unknown field", "POST", "/v1/workflows/hostile_wf/runs",
      "{\"inputs\":{}}", 400, "invalid_request"),
    C("runs unknown workflow", "POST", "/v1/workflows/no_such_wf/runs",
      "{\"input\":{}}", 404, "not_found"),
    C("runs unknown version", "POST", "/v1/workflows/hostile_wf/runs",
      "{\"input\":{},\"version\":99}", 404, "not_found"),

    /* --- saga paths and queries --- */
    C("saga bad uuid", "GET", "/v1/sagas/not-a-uuid", NULL, 400,
      "invalid_request"),
    C("saga traversal", "GET", "/v1/sagas/..%2F..%2Fetc", NULL, 400,
      "bad_request"),
    C("saga uuid with NUL", "GET",
      "/v1/sagas/00000000-0000-7000-8000-00000000000%00", NULL, 400,
      "bad_request"),
    C("saga sql injection", "GET", "/v1/sagas/'%20OR%201=1--", NULL, 400,
      "invalid_request"),
    C("events bad uuid", "GET", "/v1/sagas/xyz/events", NULL, 400,
      "invalid_request"),
    C("events after_seq text", "GET", "/v1/sagas/{SAGA}/events?after_seq=abc",
      NULL, 400, "invalid_request"),
    C("events after_seq negative", "GET",
      "/v1/sagas/{SAGA}/events?after_seq=-3", NULL, 400, "invalid_request"),
    C("list limit text", "GET", "/v1/sagas?limit=ten", NULL, 400,
      "invalid_request"),
    C("list limit huge", "GET", "/v1/sagas?limit=99999999999999999999", NULL,
      400, "invalid_request"),
    C("list bad cursor", "GET", "/v1/sagas?cursor=..%2F..%2Fetc", NULL, 400,
      "invalid_request"),
    C("list bad status", "GET", "/v1/sagas?status=zombie", NULL, 400,
      "invalid_request"),
    C("list bad workflow", "GET", "/v1/sagas?workflow=Robert');DROP", NULL,
      400, "invalid_request"),
    C("cancel bad uuid", "POST", "/v1/sagas/1234/cancel", NULL, 400,
      "invalid_request"),
    C("cancel unknown saga", "POST",
      "/v1/sagas/00000000-0000-7000-8000-000000000000/cancel", NULL, 404,
      "not_found"),
    C("replay bad uuid", "POST", "/v1/sagas/..%2Fx/replay", NULL, 400,
      "bad_request"),
    C("replay from_step number", "POST", "/v1/sagas/{SAGA}/replay",
      "{\"from_step\":3}", 400, "invalid_request"),
    C("replay input array", "POST", "/v1/sagas/{SAGA}/replay",
      "{\"input\":[]}", 400, "invalid_request"),
    C("replay unknown field", "POST", "/v1/sagas/{SAGA}/replay",
      "{\"from\":\"a\"}", 400, "invalid_request"),
    C("replay garbage", "POST", "/v1/sagas/{SAGA}/replay", "{]", 400,
      "invalid_json"),
    C("replay running saga", "POST", "/v1/sagas/{SAGA}/replay", NULL, 409,
      "invalid_state"),
    C("bulk replay bad status", "POST", "/v1/sagas/replay",
      "{\"status\":\"bogus\"}", 400, "invalid_request"),
    C("bulk replay running", "POST", "/v1/sagas/replay",
      "{\"status\":\"running\"}", 400, "invalid_request"),
    C("bulk replay no status", "POST", "/v1/sagas/replay", "{}", 400,
      "invalid_request"),
    C("bulk replay status number", "POST", "/v1/sagas/replay",
      "{\"status\":1}", 400, "invalid_request"),
    C("bulk replay limit 0", "POST", "/v1/sagas/replay",
      "{\"status\":\"failed\",\"limit\":0}", 400, "invalid_request"),
    C("bulk replay limit text", "POST", "/v1/sagas/replay",
      "{\"status\":\"failed\",\"limit\":\"5\"}", 400, "invalid_request"),
    C("bulk replay unknown field", "POST", "/v1/sagas/replay",
      "{\"status\":\"failed\",\"all\":true}", 400, "invalid_request"),
    C("bulk replay bad workflow", "POST", "/v1/sagas/replay",
      "{\"status\":\"failed\",\"workflow\":\"../x\"}", 400,
      "invalid_request"),

    /* --- tasks --- */
    C("poll worker_id number", "POST", "/v1/tasks/poll",
      "{\"worker_id\":1,\"task_types\":[\"e2e.a\"]}", 400, "invalid_request"),
    C("poll no worker_id", "POST", "/v1/tasks/poll",
      "{\"task_types\":[\"e2e.a\"]}", 400, "invalid_request"),
    C("poll task_types string", "POST", "/v1/tasks/poll",
      "{\"worker_id\":\"w\",\"task_types\":\"e2e.a\"}", 400,
      "invalid_request"),
    C("poll task_types empty", "POST", "/v1/tasks/poll",
      "{\"worker_id\":\"w\",\"task_types\":[]}", 400, "invalid_request"),
    C("poll task_types numbers", "POST", "/v1/tasks/poll",
      "{\"worker_id\":\"w\",\"task_types\":[1]}", 400, "invalid_request"),
    C("poll task type bad name", "POST", "/v1/tasks/poll",
      "{\"worker_id\":\"w\",\"task_types\":[\"BAD TYPE\"]}", 400,
      "invalid_request"),
    C("poll max 0", "POST", "/v1/tasks/poll",
      "{\"worker_id\":\"w\",\"task_types\":[\"e2e.zz\"],\"max\":0}", 400,
      "invalid_request"),
    C("poll max too big", "POST", "/v1/tasks/poll",
      "{\"worker_id\":\"w\",\"task_types\":[\"e2e.zz\"],\"max\":100000}", 400,
      "invalid_request"),
    C("poll wait_ms negative", "POST", "/v1/tasks/poll",
      "{\"worker_id\":\"w\",\"task_types\":[\"e2e.zz\"],\"wait_ms\":-1}", 400,
      "invalid_request"),
    C("poll wait_ms too long", "POST", "/v1/tasks/poll",
      "{\"worker_id\":\"w\",\"task_types\":[\"e2e.zz\"],\"wait_ms\":"
      "99999999}",
      400, "invalid_request"),
    C("poll wait_ms string", "POST", "/v1/tasks/poll",
      "{\"worker_id\":\"w\",\"task_types\":[\"e2e.zz\"],\"wait_ms\":\"5\"}",
      400, "invalid_request"),
    C("poll unknown field", "POST", "/v1/tasks/poll",
      "{\"worker_id\":\"w\",\"task_types\":[\"e2e.zz\"],\"sneaky\":1}", 400,
      "invalid_request"),
    C("poll empty body", "POST", "/v1/tasks/poll", NULL, 400, "invalid_json"),
    C("complete bad task id", "POST", "/v1/tasks/nope/complete",
      "{\"lease_token\":1,\"output\":{}}", 400, "invalid_request"),
    C("complete traversal id", "POST", "/v1/tasks/..%2F..%2Fetc/complete",
      "{\"lease_token\":1,\"output\":{}}", 400, "bad_request"),
    C("complete bad kind in id", "POST",
      "/v1/tasks/00000000-0000-7000-8000-000000000000.0.evil.1/complete",
      "{\"lease_token\":1,\"output\":{}}", 400, "invalid_request"),
    C("complete wrong token", "POST", "/v1/tasks/{TASK}/complete",
      "{\"lease_token\":987654321,\"output\":{}}", 409, "lease_lost"),
    C("complete unknown task", "POST",
      "/v1/tasks/00000000-0000-7000-8000-000000000000.0.fwd.1/complete",
      "{\"lease_token\":1,\"output\":{}}", 409, "lease_lost"),
    C("complete token string", "POST", "/v1/tasks/{TASK}/complete",
      "{\"lease_token\":\"1\",\"output\":{}}", 400, "invalid_request"),
    C("complete token missing", "POST", "/v1/tasks/{TASK}/complete",
      "{\"output\":{}}", 400, "invalid_request"),
    C("complete token negative", "POST", "/v1/tasks/{TASK}/complete",
      "{\"lease_token\":-1,\"output\":{}}", 400, "invalid_request"),
    C("complete token fraction", "POST", "/v1/tasks/{TASK}/complete",
      "{\"lease_token\":1.5,\"output\":{}}", 400, "invalid_request"),
    C("complete unknown field", "POST", "/v1/tasks/{TASK}/complete",
      "{\"lease_token\":1,\"output\":{},\"extra\":1}", 400,
      "invalid_request"),
    C("fail error string", "POST", "/v1/tasks/{TASK}/fail",
      "{\"lease_token\":1,\"error\":\"boom\"}", 400, "invalid_request"),
    C("fail error no type", "POST", "/v1/tasks/{TASK}/fail",
      "{\"lease_token\":1,\"error\":{\"message\":\"m\"}}", 400,
      "invalid_request"),
    C("fail retryable string", "POST", "/v1/tasks/{TASK}/fail",
      "{\"lease_token\":1,\"error\":{\"type\":\"T\",\"retryable\":\"yes\"}}",
      400, "invalid_request"),
    C("fail message number", "POST", "/v1/tasks/{TASK}/fail",
      "{\"lease_token\":1,\"error\":{\"type\":\"T\",\"message\":5}}", 400,
      "invalid_request"),
    C("fail wrong token", "POST", "/v1/tasks/{TASK}/fail",
      "{\"lease_token\":987654321,\"error\":{\"type\":\"T\"}}", 409,
      "lease_lost"),
    C("heartbeat wrong token", "POST", "/v1/tasks/{TASK}/heartbeat",
      "{\"lease_token\":987654321}", 409, "lease_lost"),
    C("heartbeat bad id", "POST", "/v1/tasks/%2e%2e/heartbeat",
      "{\"lease_token\":1}", 400, "bad_request"),
    C("heartbeat empty body", "POST", "/v1/tasks/{TASK}/heartbeat", NULL, 400,
      "invalid_json"),

    /* --- routing --- */
    {.name = "DELETE workflows", .how = VIA_CURL, .method = "DELETE",
     .path = "/v1/workflows", .status = 405, .code = "method_not_allowed",
     .allow = "GET POST"},
    {.name = "PUT saga", .how = VIA_CURL, .method = "PUT",
     .path = "/v1/sagas/{SAGA}", .body = "{}", .status = 405,
     .code = "method_not_allowed", .allow = "GET"},
    {.name = "GET poll", .how = VIA_CURL, .method = "GET",
     .path = "/v1/tasks/poll", .status = 405, .code = "method_not_allowed",
     .allow = "POST"},
    {.name = "DELETE health", .how = VIA_CURL, .method = "DELETE",
     .path = "/health", .status = 405, .code = "method_not_allowed",
     .allow = "GET"},
    C("unknown route", "GET", "/v2/sagas", NULL, 404, "not_found"),
    C("unknown deep route", "GET", "/v1/sagas/x/y/z", NULL, 404, "not_found"),
    C("root", "GET", "/", NULL, 404, "not_found"),

    /* --- HTTP framing and limits (raw) --- */
    RG("1000 headers", raw_header_flood, 431, NULL),
    RG("20 KiB header", raw_huge_header, 431, NULL),
    RG("10 KiB URL", raw_long_url, 414, NULL),
    RG("9 KiB path", raw_long_path, 414, NULL),
    R("garbage request line", "HELLO THERE\r\n\r\n", 400, 0),
    R("binary junk", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
      400, 0),
    R("bad content-length", "POST /v1/tasks/poll HTTP/1.1\r\nHost: x\r\n"
      "Content-Length: abc\r\n\r\n{}", 400, 0),
    R("two content-lengths", "POST /v1/tasks/poll HTTP/1.1\r\nHost: x\r\n"
      "Content-Length: 2\r\nContent-Length: 5\r\n\r\n{}", 400, 0),
    R("bad chunk size", "POST /v1/tasks/poll HTTP/1.1\r\nHost: x\r\n"
      "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400, 0),
    R("HTTP/9.9", "GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 505, 400),
    R("header without colon", "GET /health HTTP/1.1\r\nHost x\r\n\r\n", 400,
      0),
    R("bare LF in header value",
      "GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400, 0),
};

/* Replaces {SAGA} and {TASK} in path (into out). */
static void subst(const char *path, const char *saga, const char *task,
                  char *out, size_t len) {
  size_t at = 0;
  for (const char *p = path; *p != '\0' && at + 1 < len;) {
    if (strncmp(p, "{SAGA}", 6) == 0) {
      at += (size_t)snprintf(out + at, len - at, "%s", saga);
      p += 6;
    } else if (strncmp(p, "{TASK}", 6) == 0) {
      at += (size_t)snprintf(out + at, len - at, "%s", task);
      p += 6;
    } else {
      out[at++] = *p++;
    }
  }
  out[at < len ? at : len - 1] = '\0';
}

static char *start_valid(void) {
  skd_resp r;
  skd_post(&d, "/v1/workflows/hostile_wf/runs", "{\"input\":{\"x\":1}}", &r);
  cr_assert_eq(r.status, 201, "a valid start failed: %ld %s", r.status,
               r.body);
  char *id = strdup(jstr(r.json, "saga_id"));
  skd_resp_free(&r);
  return id;
}

/* Runs one case; returns false (and describes it in why) on a mismatch. */
static bool run_case(const hcase *c, const char *saga, const char *task,
                     char *why, size_t wlen) {
  long status = -1;
  char code[64] = "";
  char allow[256] = "";
  bool has_allow = false;
  char *reply = NULL;
  if (c->how == VIA_CURL) {
    char path[512];
    subst(c->path, saga, task, path, sizeof(path));
    size_t glen = 0;
    char *gen = c->gen != NULL ? c->gen(&glen) : NULL;
    skd_resp r;
    int rc = skd_http(&d, c->method, path, gen != NULL ? gen : c->body, NULL,
                      20000, &r);
    free(gen);
    status = rc == 0 ? r.status : 0;
    snprintf(code, sizeof(code), "%s", skd_error_code(&r));
    has_allow = skd_header(&r, "Allow", allow, sizeof(allow));
    reply = strdup(r.body);
    if (status >= 400 && r.json == NULL)
      snprintf(code, sizeof(code), "<body is not JSON>");
    skd_resp_free(&r);
  } else {
    size_t len = 0;
    char *req = c->gen != NULL ? c->gen(&len) : strdup(c->body);
    if (c->gen == NULL)
      len = strlen(c->body);
    int st = skd_raw(d.port, req, len, 15000, &reply);
    free(req);
    status = st;
    const char *b = reply != NULL ? strstr(reply, "\r\n\r\n") : NULL;
    if (b != NULL) {
      cJSON *j = cJSON_Parse(b + 4);
      const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
      const char *cd = jstr(e, "code");
      snprintf(code, sizeof(code), "%s", cd != NULL ? cd : "");
      cJSON_Delete(j);
    }
  }
  bool ok = status == c->status || (c->status_alt && status == c->status_alt);
  if (ok && c->code != NULL && strcmp(code, c->code) != 0)
    ok = false;
  if (ok && c->allow != NULL) {
    char want[64];
    snprintf(want, sizeof(want), "%s", c->allow);
    for (char *s = NULL, *m = strtok_r(want, " ", &s); m && ok;
         m = strtok_r(NULL, " ", &s))
      ok = has_allow && strstr(allow, m) != NULL;
  }
  if (!ok)
    snprintf(why, wlen,
             "[%s] %s %s: want %ld%s%s (code %s%s%s), got %ld (code '%s', "
             "Allow '%s'): %.300s",
             c->name, c->how == VIA_CURL ? c->method : "raw",
             c->how == VIA_CURL ? c->path : "", c->status,
             c->status_alt ? " or " : "", c->status_alt ? "alt" : "",
             c->code ? c->code : "-", c->allow ? ", Allow " : "",
             c->allow ? c->allow : "", status, code, allow,
             reply != NULL ? reply : "");
  free(reply);
  return ok;
}

static void verify_all(void) {
  PGconn *c = PQconnectdb(db);
  cr_assert_eq(PQstatus(c), CONNECTION_OK, "%s", PQerrorMessage(c));
  verify_report rep = {0};
  sk_error err = {0};
  int rc = queries_verify(c, NULL, &rep, &err);
  PQfinish(c);
  cr_assert_eq(rc, 0, "queries_verify: %s", err.message);
  cr_assert_eq(rep.mismatched, 0,
               "%zu of %zu projections differ from the fold (first %s)",
               rep.mismatched, rep.checked, rep.first_mismatch);
}

/* Completes every task of the given types until the sagas are done. */
static void drain(char **ids, size_t n) {
  int64_t end = skd_now_ms() + 30000;
  size_t done = 0;
  while (skd_now_ms() < end && done < n) {
    skd_resp r;
    skd_http(&d, "POST", "/v1/tasks/poll",
             "{\"worker_id\":\"drain\",\"task_types\":[\"e2e.a\",\"e2e.b\"],"
             "\"max\":50,\"wait_ms\":200}",
             NULL, 10000, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(r.json, "tasks")) {
      char path[320], body[128];
      snprintf(path, sizeof(path), "/v1/tasks/%s/complete",
               jstr(t, "task_id"));
      snprintf(body, sizeof(body), "{\"lease_token\":%.0f,\"output\":{}}",
               cJSON_GetObjectItemCaseSensitive(t, "lease_token")->valuedouble);
      skd_resp c;
      skd_post(&d, path, body, &c);
      cr_assert_eq(c.status, 200, "%s", c.body);
      skd_resp_free(&c);
    }
    skd_resp_free(&r);
    done = 0;
    for (size_t i = 0; i < n; i++) {
      char sql[160];
      snprintf(sql, sizeof(sql),
               "SELECT count(*) FROM sagas WHERE id = '%s' AND status = "
               "'completed'",
               ids[i]);
      done += (size_t)pgtest_scalar(db, sql);
    }
  }
  cr_assert_eq(done, n, "%zu of %zu valid sagas completed", done, n);
}

Test(daemon_hostile, table, .init = setup, .fini = teardown, .timeout = 110) {
  size_t n_cases = sizeof(cases) / sizeof(cases[0]);
  cr_assert_geq(n_cases, 40);
  skd_resp r;
  skd_post(&d, "/v1/workflows",
           "{\"name\":\"hostile_wf\",\"version\":1,\"steps\":["
           "{\"name\":\"a\",\"task\":\"e2e.a\",\"input\":{\"x\":\"${input.x}"
           "\"}},{\"name\":\"b\",\"task\":\"e2e.b\"}]}",
           &r);
  cr_assert_eq(r.status, 201, "%s", r.body);
  skd_resp_free(&r);
  /* A saga whose first task a worker holds: the target of task cases. */
  char *ids[64];
  size_t n_ids = 0;
  ids[n_ids++] = start_valid();
  skd_http(&d, "POST", "/v1/tasks/poll",
           "{\"worker_id\":\"holder\",\"task_types\":[\"e2e.a\"],\"max\":1,"
           "\"wait_ms\":5000}",
           NULL, 10000, &r);
  const cJSON *t0 =
      cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r.json, "tasks"), 0);
  cr_assert_not_null(t0, "the holder got no task: %s", r.body);
  char task[256], saga[37];
  snprintf(task, sizeof(task), "%s", jstr(t0, "task_id"));
  snprintf(saga, sizeof(saga), "%s", jstr(t0, "saga_id"));
  double token = cJSON_GetObjectItemCaseSensitive(t0, "lease_token")->valuedouble;
  skd_resp_free(&r);
  long long sagas_before = pgtest_scalar(db, "SELECT count(*) FROM sagas");
  long long events_before = pgtest_scalar(
      db, "SELECT count(*) FROM saga_events WHERE saga_id IN (SELECT id FROM "
          "sagas)");
  (void)events_before;

  size_t failures = 0;
  char why[1024];
  for (size_t i = 0; i < n_cases; i++) {
    if (!run_case(&cases[i], saga, task, why, sizeof(why))) {
      cr_log_error("%s", why);
      failures++;
    }
    /* The daemon still answers after each case. */
    skd_resp h;
    skd_http(&d, "GET", "/health", NULL, NULL, 5000, &h);
    cr_assert_eq(h.status, 200, "/health after [%s]: %ld", cases[i].name,
                 h.status);
    skd_resp_free(&h);
    if (i % 10 == 9 && n_ids < 64)
      ids[n_ids++] = start_valid();
  }
  cr_log_info("%zu hostile cases, %zu mismatches", n_cases, failures);

  /* No rejected request created a saga. */
  long long sagas_after = pgtest_scalar(db, "SELECT count(*) FROM sagas");
  cr_assert_eq(sagas_after, sagas_before + (long long)(n_ids - 1),
               "sagas: %lld before, %lld after, %zu valid starts",
               sagas_before, sagas_after, n_ids - 1);
  /* The held task is still held with its lease (nothing fenced it). */
  char path[320], body[128];
  snprintf(path, sizeof(path), "/v1/tasks/%s/complete", task);
  snprintf(body, sizeof(body), "{\"lease_token\":%.0f,\"output\":{}}", token);
  skd_post(&d, path, body, &r);
  cr_assert_eq(r.status, 200, "the held task's real lease was lost: %ld %s",
               r.status, r.body);
  skd_resp_free(&r);
  verify_all();
  drain(ids, n_ids);
  verify_all();
  for (size_t i = 0; i < n_ids; i++)
    free(ids[i]);
  cr_assert_eq(failures, 0, "%zu of %zu hostile cases got the wrong answer",
               failures, n_cases);
}

/* A client that trickles its headers gets 408 once the request timeout
 * (10 s) passes, and the daemon serves others meanwhile. */
Test(daemon_hostile, slowloris, .init = setup, .fini = teardown,
     .timeout = 60) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert_geq(fd, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons((uint16_t)d.port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  int64_t t0 = skd_now_ms();
  const char *head = "GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ";
  cr_assert_eq(send(fd, head, strlen(head), MSG_NOSIGNAL),
               (ssize_t)strlen(head));
  char buf[4096];
  size_t got = 0;
  bool closed = false;
  int64_t end = t0 + 20000;
  while (skd_now_ms() < end && !closed) {
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    if (poll(&pf, 1, 500) > 0) {
      ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
      if (n <= 0)
        closed = true;
      else
        got += (size_t)n;
      continue;
    }
    send(fd, "a", 1, MSG_NOSIGNAL); /* one byte every 500 ms */
    /* Others are served meanwhile. */
    skd_resp h;
    skd_http(&d, "GET", "/health", NULL, NULL, 2000, &h);
    cr_assert_eq(h.status, 200, "the daemon stalled behind a slow client");
    skd_resp_free(&h);
  }
  int64_t took = skd_now_ms() - t0;
  close(fd);
  buf[got] = '\0';
  cr_assert(got > 12 && strncmp(buf, "HTTP/1.1 408", 12) == 0,
            "slowloris: want 408, got after %lld ms: '%s'", (long long)took,
            buf);
  cr_assert_geq(took, 9000, "408 came too early (%lld ms)", (long long)took);
  cr_assert_leq(took, 13000, "408 came too late (%lld ms)", (long long)took);
}

/* Pipelined requests on one connection are answered in order. */
Test(daemon_hostile, pipelining, .init = setup, .fini = teardown,
     .timeout = 30) {
  const char *req =
      "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /v1/sagas/nope HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /v1/workflows HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  char *reply = NULL;
  int st = skd_raw(d.port, req, strlen(req), 10000, &reply);
  cr_assert_eq(st, 200, "first of the pipeline: %s", reply);
  /* skd_raw stops after the first complete response; read all with a
   * plain connection instead. */
  free(reply);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons((uint16_t)d.port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  cr_assert_eq(send(fd, req, strlen(req), MSG_NOSIGNAL),
               (ssize_t)strlen(req));
  char buf[16384];
  size_t got = 0;
  int64_t end = skd_now_ms() + 10000;
  while (skd_now_ms() < end && got < sizeof(buf) - 1) {
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    if (poll(&pf, 1, 200) <= 0)
      continue;
    ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
    if (n <= 0)
      break;
    got += (size_t)n;
  }
  close(fd);
  buf[got] = '\0';
  const char *want[] = {"HTTP/1.1 200", "HTTP/1.1 400", "HTTP/1.1 404",
                        "HTTP/1.1 200"};
  const char *p = buf;
  for (size_t i = 0; i < 4; i++) {
    const char *q = strstr(p, "HTTP/1.1 ");
    cr_assert_not_null(q, "response %zu missing: %s", i, buf);
    cr_assert(strncmp(q, want[i], 12) == 0, "response %zu: want %s: %s", i,
              want[i], buf);
    p = q + 12;
  }
}
