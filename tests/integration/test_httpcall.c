/*
 * test_httpcall.c — http tasks against a real HTTP server on 127.0.0.1.
 *
 * The server is written here: a listening thread and one thread per
 * connection, blocking sockets, one request per connection, scripted
 * responses per path (status, extra headers, body, delay, or a broken
 * answer: close without a response, close mid-body, close-delimited body).
 * It records every request (method, target, header block, body) so the
 * tests assert on what actually went over the wire. A real uv loop drives
 * httpcall; every test ends by closing it and checking uv_loop_close() == 0.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "common/clock.h"
#include "exec/httpcall.h"

/* ---- the scripted server ------------------------------------------------ */

enum { MODE_NORMAL, MODE_CLOSE, MODE_PARTIAL, MODE_NOLEN };

typedef struct route {
  const char *path;
  int status;
  const char *headers; /* extra raw lines, each ending in \r\n */
  const char *body;    /* NULL = empty */
  size_t body_len;     /* 0 = strlen(body) */
  int delay_ms;
  int mode;
} route;

typedef struct rec {
  char method[16];
  char target[256];
  char *head; /* header lines as received */
  char *body;
  size_t body_len;
} rec;

#define MAX_ROUTES 48
#define MAX_RECS 256
#define MAX_CONNS 1024

static struct {
  int fd;
  int port;
  pthread_t thr;
  atomic_bool stop;
  route routes[MAX_ROUTES];
  int n_routes;
  pthread_mutex_t mu;
  rec recs[MAX_RECS];
  int n_recs;
  pthread_t conns[MAX_CONNS];
  int n_conns;
} srv;

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void add_route(route r) {
  cr_assert_lt(srv.n_routes, MAX_ROUTES);
  srv.routes[srv.n_routes++] = r;
}

static const route *find_route(const char *target) {
  size_t n = strcspn(target, "?");
  for (int i = 0; i < srv.n_routes; i++)
    if (strlen(srv.routes[i].path) == n &&
        strncmp(srv.routes[i].path, target, n) == 0)
      return &srv.routes[i];
  return NULL;
}

static void send_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0)
      return;
    p += w;
    n -= (size_t)w;
  }
}

/* Reads one request; false if the client went away first. */
static bool read_request(int fd, rec *r) {
  size_t cap = 65536, len = 0;
  char *b = malloc(cap + 1);
  char *end = NULL;
  while (end == NULL) {
    if (len == cap) {
      free(b);
      return false;
    }
    ssize_t n = recv(fd, b + len, cap - len, 0);
    if (n <= 0) {
      free(b);
      return false;
    }
    len += (size_t)n;
    b[len] = '\0';
    end = strstr(b, "\r\n\r\n");
  }
  size_t head_len = (size_t)(end - b) + 4;
  sscanf(b, "%15s %255s", r->method, r->target);
  char *line = strstr(b, "\r\n") + 2;
  r->head = strndup(line, head_len - (size_t)(line - b));
  size_t clen = 0;
  for (char *p = r->head; p != NULL && *p; p = strstr(p, "\r\n")) {
    if (*p == '\r')
      p += 2;
    if (strncasecmp(p, "Content-Length:", 15) == 0)
      clen = strtoul(p + 15, NULL, 10);
  }
  r->body = malloc(clen + 1);
  size_t have = len - head_len;
  memcpy(r->body, b + head_len, have);
  while (have < clen) {
    ssize_t n = recv(fd, r->body + have, clen - have, 0);
    if (n <= 0)
      break;
    have += (size_t)n;
  }
  r->body[have] = '\0';
  r->body_len = have;
  free(b);
  return true;
}

static void *conn_main(void *arg) {
  int fd = (int)(intptr_t)arg;
  rec r = {{0}, {0}, NULL, NULL, 0};
  if (!read_request(fd, &r)) {
    close(fd);
    return NULL;
  }
  const route *rt = find_route(r.target);
  pthread_mutex_lock(&srv.mu);
  if (srv.n_recs < MAX_RECS) {
    srv.recs[srv.n_recs++] = r;
  } else {
    free(r.head);
    free(r.body);
  }
  pthread_mutex_unlock(&srv.mu);
  route none = {"", 404, NULL, "no such route", 0, 0, MODE_NORMAL};
  if (rt == NULL)
    rt = &none;
  for (int waited = 0; waited < rt->delay_ms && !atomic_load(&srv.stop);
       waited += 10)
    sleep_ms(10);
  if (rt->mode == MODE_CLOSE) {
    close(fd);
    return NULL;
  }
  size_t blen = rt->body == NULL ? 0
                : rt->body_len ? rt->body_len
                               : strlen(rt->body);
  char head[1024];
  int n = snprintf(head, sizeof(head), "HTTP/1.1 %d Scripted\r\n"
                   "Connection: close\r\n%s", rt->status,
                   rt->headers ? rt->headers : "");
  if (rt->mode != MODE_NOLEN && rt->status != 204)
    n += snprintf(head + n, sizeof(head) - (size_t)n,
                  "Content-Length: %zu\r\n", blen);
  n += snprintf(head + n, sizeof(head) - (size_t)n, "\r\n");
  send_all(fd, head, (size_t)n);
  if (rt->status != 204)
    send_all(fd, rt->body, rt->mode == MODE_PARTIAL ? blen / 2 : blen);
  if (rt->mode == MODE_PARTIAL)
    sleep_ms(50); /* the client has read the half before the close */
  shutdown(fd, SHUT_WR);
  close(fd);
  return NULL;
}

static void *server_main(void *arg) {
  (void)arg;
  while (!atomic_load(&srv.stop)) {
    struct pollfd p = {srv.fd, POLLIN, 0};
    if (poll(&p, 1, 20) <= 0)
      continue;
    int c = accept(srv.fd, NULL, NULL);
    if (c < 0)
      continue;
    if (srv.n_conns == MAX_CONNS) {
      close(c);
      continue;
    }
    pthread_create(&srv.conns[srv.n_conns++], NULL, conn_main,
                   (void *)(intptr_t)c);
  }
  for (int i = 0; i < srv.n_conns; i++)
    pthread_join(srv.conns[i], NULL);
  return NULL;
}

static void server_start(void) {
  srv.fd = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert_geq(srv.fd, 0);
  int one = 1;
  setsockopt(srv.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(bind(srv.fd, (struct sockaddr *)&a, sizeof(a)), 0);
  cr_assert_eq(listen(srv.fd, 256), 0);
  socklen_t al = sizeof(a);
  getsockname(srv.fd, (struct sockaddr *)&a, &al);
  srv.port = ntohs(a.sin_port);
  pthread_mutex_init(&srv.mu, NULL);
  atomic_store(&srv.stop, false);
  pthread_create(&srv.thr, NULL, server_main, NULL);
}

static void server_stop(void) {
  atomic_store(&srv.stop, true);
  pthread_join(srv.thr, NULL);
  close(srv.fd);
  for (int i = 0; i < srv.n_recs; i++) {
    free(srv.recs[i].head);
    free(srv.recs[i].body);
  }
  srv.n_recs = 0;
  srv.n_conns = 0;
  srv.n_routes = 0;
  pthread_mutex_destroy(&srv.mu);
}

/* The last request the server saw for a target (path and query). */
static rec last_rec(const char *target) {
  rec out = {{0}, {0}, NULL, NULL, 0};
  pthread_mutex_lock(&srv.mu);
  for (int i = srv.n_recs - 1; i >= 0; i--) {
    if (strcmp(srv.recs[i].target, target) == 0) {
      out = srv.recs[i];
      break;
    }
  }
  pthread_mutex_unlock(&srv.mu);
  cr_assert_not_null(out.head, "server got no request for %s", target);
  return out;
}

static int count_header(const rec *r, const char *line) {
  int n = 0;
  size_t l = strlen(line);
  for (const char *p = r->head; (p = strcasestr(p, line)) != NULL; p += l)
    if ((p == r->head || p[-1] == '\n') && p[l] == '\r')
      n++;
  return n;
}

/* ---- the loop side ------------------------------------------------------ */

static uv_loop_t loop;
static httpcall hc;
static bool hc_closed;
static bool close_cb_ran;

typedef struct result {
  int count;
  bool done;
  uint64_t id;
  bool ok;
  int status;
  char *output;
  char type[64];
  char msg[HTTPCALL_MESSAGE_MAX];
  bool retryable;
  int64_t retry_after;
} result;

static void on_done(uint64_t id, httpcall_outcome *o, void *ud) {
  result *r = ud;
  r->count++;
  r->done = true;
  r->id = id;
  r->ok = o->ok;
  r->status = o->status;
  free(r->output);
  r->output = o->output;
  o->output = NULL; /* taken */
  snprintf(r->type, sizeof(r->type), "%s", o->ok ? "" : o->err_type);
  snprintf(r->msg, sizeof(r->msg), "%s", o->ok ? "" : o->err_message);
  r->retryable = o->retryable;
  r->retry_after = o->retry_after_s;
}

static void on_closed(httpcall *h) {
  cr_assert_eq(h, &hc);
  close_cb_ran = true;
}

static void setup(void) {
  /* curl honours proxy variables; the test talks to loopback directly. */
  unsetenv("http_proxy");
  unsetenv("https_proxy");
  unsetenv("all_proxy");
  unsetenv("ALL_PROXY");
  unsetenv("HTTPS_PROXY");
  server_start();
  cr_assert_eq(uv_loop_init(&loop), 0);
  cr_assert_eq(httpcall_init(&hc, &loop), 0);
  hc_closed = false;
  close_cb_ran = false;
}

static void close_hc(void) {
  if (!hc_closed) {
    cr_assert_eq(httpcall_close(&hc, on_closed), 0);
    hc_closed = true;
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  cr_assert(close_cb_ran, "close callback did not run");
  cr_assert_eq(uv_loop_close(&loop), 0, "loop did not close clean");
}

static void teardown(void) {
  close_hc();
  server_stop();
}

TestSuite(httpcall, .init = setup, .fini = teardown, .timeout = 60);

static char *input_for(const char *method, const char *target,
                       const char *headers, const char *body) {
  char *s = NULL;
  cr_assert_gt(asprintf(&s,
                        "{\"method\":\"%s\",\"url\":\"http://127.0.0.1:%d%s\","
                        "\"headers\":%s,\"body\":%s}",
                        method, srv.port, target, headers ? headers : "{}",
                        body ? body : "null"),
               0);
  return s;
}

static void run_until(const result *r, int n) {
  while (r->count < n)
    uv_run(&loop, UV_RUN_ONCE);
}

static result call_full(const char *input, int64_t timeout_ms,
                        const int *codes, size_t n_codes) {
  result r = {0};
  httpcall_request req = {.input_json = input,
                          .idempotency_key = "saga-1/step/fwd/1",
                          .timeout_ms = timeout_ms,
                          .success_codes = codes,
                          .n_success_codes = n_codes};
  cr_assert_eq(httpcall_start(&hc, &req, on_done, &r, &r.id), 0);
  cr_assert_eq(r.count, 0, "callback ran inside httpcall_start");
  run_until(&r, 1);
  cr_assert_eq(r.count, 1);
  return r;
}

static result call_get(const char *target) {
  char *in = input_for("GET", target, NULL, NULL);
  result r = call_full(in, 5000, NULL, 0);
  free(in);
  return r;
}

static void result_free(result *r) {
  free(r->output);
  r->output = NULL;
}

/* ---- outputs ------------------------------------------------------------ */

Test(httpcall, json_body_becomes_output) {
  add_route((route){"/json", 200, "Content-Type: application/json\r\n",
                    "{ \"id\": 7,\n \"ok\": true, \"tags\": [\"a\"] }\n", 0, 0,
                    MODE_NORMAL});
  result r = call_get("/json");
  cr_assert(r.ok, "%s: %s", r.type, r.msg);
  cr_assert_eq(r.status, 200);
  cr_assert_str_eq(r.output, "{\"id\":7,\"ok\":true,\"tags\":[\"a\"]}");
  cr_assert_eq(r.retry_after, -1);
  result_free(&r);
}

Test(httpcall, text_body_is_wrapped) {
  add_route((route){"/text", 200, NULL, "hello\n\"world\"\t\\", 0, 0,
                    MODE_NORMAL});
  add_route((route){"/trailing", 200, NULL, "{} and more", 0, 0, MODE_NORMAL});
  add_route((route){"/binary", 200, NULL, "a\0b\xff\xc3\xa9", 6, 0,
                    MODE_NORMAL});
  result r = call_get("/text");
  cr_assert(r.ok);
  cr_assert_str_eq(
      r.output, "{\"status\":200,\"body\":\"hello\\n\\\"world\\\"\\t\\\\\"}");
  result_free(&r);
  r = call_get("/trailing");
  cr_assert_str_eq(r.output, "{\"status\":200,\"body\":\"{} and more\"}");
  result_free(&r);
  r = call_get("/binary");
  cr_assert_str_eq(r.output,
                   "{\"status\":200,\"body\":\"a\\ufffdb\\ufffd\xc3\xa9\"}");
  result_free(&r);
}

Test(httpcall, long_text_body_is_truncated_to_64k) {
  /* Static: the server thread may still be sending the rest of it after
   * the client has read what it keeps (freeing it raced with that send). */
  static char big[100 * 1024 + 1];
  size_t n = 100 * 1024;
  memset(big, 'x', n);
  big[HTTPCALL_TEXT_BODY_MAX - 1] = '\xc3'; /* é split by the cut */
  big[HTTPCALL_TEXT_BODY_MAX] = '\xa9';
  big[n] = '\0';
  add_route((route){"/long", 200, NULL, big, n, 0, MODE_NORMAL});
  result r = call_get("/long");
  cr_assert(r.ok);
  const char *b = strstr(r.output, "\"body\":\"") + 8;
  /* 65535 bytes: the split character is dropped whole. */
  cr_assert_eq(strlen(b), (size_t)HTTPCALL_TEXT_BODY_MAX - 1 + 2);
  cr_assert_str_eq(b + HTTPCALL_TEXT_BODY_MAX - 1, "\"}");
  result_free(&r);
}

Test(httpcall, empty_body_gives_status_only) {
  add_route((route){"/empty", 200, NULL, NULL, 0, 0, MODE_NORMAL});
  add_route((route){"/nocontent", 204, NULL, NULL, 0, 0, MODE_NORMAL});
  result r = call_get("/empty");
  cr_assert(r.ok);
  cr_assert_str_eq(r.output, "{\"status\":200}");
  result_free(&r);
  r = call_get("/nocontent");
  cr_assert(r.ok);
  cr_assert_str_eq(r.output, "{\"status\":204}");
  result_free(&r);
}

/* ---- classification ----------------------------------------------------- */

Test(httpcall, status_classes) {
  static const struct {
    int status;
    bool ok, retryable;
  } cases[] = {{200, true, false},  {201, true, false},  {204, true, false},
               {301, false, false}, {400, false, false}, {404, false, false},
               {408, false, true},  {409, false, false}, {429, false, true},
               {500, false, true},  {503, false, true}};
  static char paths[sizeof(cases) / sizeof(*cases)][16];
  for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
    snprintf(paths[i], sizeof(paths[i]), "/s%d", cases[i].status);
    add_route((route){paths[i], cases[i].status,
                      cases[i].status == 301 ? "Location: /elsewhere\r\n"
                                             : NULL,
                      "{\"error\":\"scripted\"}", 0, 0, MODE_NORMAL});
  }
  add_route((route){"/elsewhere", 200, NULL, "{}", 0, 0, MODE_NORMAL});
  for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
    result r = call_get(paths[i]);
    cr_assert_eq(r.status, cases[i].status);
    cr_assert_eq(r.ok, cases[i].ok, "status %d", cases[i].status);
    if (!r.ok) {
      char want[16];
      snprintf(want, sizeof(want), "%d", cases[i].status);
      cr_assert_str_eq(r.type, "HttpStatus");
      cr_assert_eq(r.retryable, cases[i].retryable, "status %d",
                   cases[i].status);
      cr_assert_not_null(strstr(r.msg, want), "%s", r.msg);
      cr_assert_null(strstr(r.msg, paths[i]), "path leaked: %s", r.msg);
    }
    result_free(&r);
  }
  pthread_mutex_lock(&srv.mu);
  for (int i = 0; i < srv.n_recs; i++)
    cr_assert_str_neq(srv.recs[i].target, "/elsewhere", "followed redirect");
  pthread_mutex_unlock(&srv.mu);
}

Test(httpcall, retry_after_is_reported) {
  add_route((route){"/busy", 429, "Retry-After: 7\r\n", NULL, 0, 0,
                    MODE_NORMAL});
  char hdr[128];
  time_t later = time(NULL) + 120;
  struct tm tm;
  gmtime_r(&later, &tm);
  strftime(hdr, sizeof(hdr), "Retry-After: %a, %d %b %Y %H:%M:%S GMT\r\n",
           &tm);
  add_route((route){"/down", 503, hdr, "down", 0, 0, MODE_NORMAL});
  result r = call_get("/busy");
  cr_assert(!r.ok);
  cr_assert(r.retryable);
  cr_assert_eq(r.retry_after, 7);
  r = call_get("/down");
  cr_assert(!r.ok);
  cr_assert(r.retryable);
  cr_assert(r.retry_after >= 115 && r.retry_after <= 121, "%lld",
            (long long)r.retry_after);
}

Test(httpcall, success_codes_override) {
  add_route((route){"/missing", 404, NULL, "{\"gone\":true}", 0, 0,
                    MODE_NORMAL});
  add_route((route){"/created", 201, NULL, "{}", 0, 0, MODE_NORMAL});
  const int codes[] = {200, 404};
  char *in = input_for("GET", "/missing", NULL, NULL);
  result r = call_full(in, 5000, codes, 2);
  free(in);
  cr_assert(r.ok);
  cr_assert_str_eq(r.output, "{\"gone\":true}");
  result_free(&r);
  in = input_for("GET", "/created", NULL, NULL);
  r = call_full(in, 5000, codes, 2);
  free(in);
  cr_assert(!r.ok);
  cr_assert_str_eq(r.type, "HttpStatus");
  cr_assert(!r.retryable);
}

/* ---- what goes over the wire -------------------------------------------- */

Test(httpcall, request_is_sent_exactly) {
  add_route((route){"/echo", 201, NULL, "{\"id\":\"r1\"}", 0, 0,
                    MODE_NORMAL});
  char *in = input_for(
      "post", "/echo?q=1",
      "{\"X-Trace\":\"abc 123\",\"X-Num\":42,\"Idempotency-Key\":\"mine\"}",
      "{\"a\": 1, \"b\": [true, null], \"c\": \"x\"}");
  result r = call_full(in, 5000, NULL, 0);
  free(in);
  cr_assert(r.ok, "%s: %s", r.type, r.msg);
  cr_assert_str_eq(r.output, "{\"id\":\"r1\"}");
  rec q = last_rec("/echo?q=1");
  cr_assert_str_eq(q.method, "POST");
  cr_assert_str_eq(q.body, "{\"a\":1,\"b\":[true,null],\"c\":\"x\"}");
  cr_assert_eq(count_header(&q, "Idempotency-Key: saga-1/step/fwd/1"), 1,
               "%s", q.head);
  cr_assert_null(strstr(q.head, "mine"));
  cr_assert_eq(count_header(&q, "Content-Type: application/json"), 1, "%s",
               q.head);
  cr_assert_eq(count_header(&q, "User-Agent: skald/" SKALD_VERSION_STRING), 1);
  cr_assert_eq(count_header(&q, "X-Trace: abc 123"), 1);
  cr_assert_eq(count_header(&q, "X-Num: 42"), 1);
  cr_assert_null(strcasestr(q.head, "Expect:"));
  result_free(&r);
}

Test(httpcall, string_body_and_methods) {
  add_route((route){"/put", 200, NULL, NULL, 0, 0, MODE_NORMAL});
  add_route((route){"/del", 200, NULL, NULL, 0, 0, MODE_NORMAL});
  add_route((route){"/get", 200, NULL, NULL, 0, 0, MODE_NORMAL});
  add_route((route){"/patch", 200, NULL, NULL, 0, 0, MODE_NORMAL});
  char *in = input_for("PUT", "/put",
                       "{\"Content-Type\":\"text/csv\",\"User-Agent\":\"me\"}",
                       "\"a,b\\n1,2\"");
  result r = call_full(in, 5000, NULL, 0);
  free(in);
  cr_assert(r.ok);
  rec q = last_rec("/put");
  cr_assert_str_eq(q.method, "PUT");
  cr_assert_str_eq(q.body, "a,b\n1,2");
  cr_assert_eq(count_header(&q, "Content-Type: text/csv"), 1, "%s", q.head);
  cr_assert_eq(count_header(&q, "User-Agent: me"), 1, "%s", q.head);
  cr_assert_null(strcasestr(q.head, "skald/"));
  result_free(&r);

  r = call_get("/get");
  q = last_rec("/get");
  cr_assert_str_eq(q.method, "GET");
  cr_assert_null(strcasestr(q.head, "Content-Type"), "%s", q.head);
  cr_assert_eq(q.body_len, 0);
  result_free(&r);

  in = input_for("DELETE", "/del", NULL, NULL);
  r = call_full(in, 5000, NULL, 0);
  free(in);
  q = last_rec("/del");
  cr_assert_str_eq(q.method, "DELETE");
  cr_assert_eq(q.body_len, 0);
  result_free(&r);

  in = input_for("PATCH", "/patch", NULL, NULL);
  r = call_full(in, 5000, NULL, 0);
  free(in);
  q = last_rec("/patch");
  cr_assert_str_eq(q.method, "PATCH");
  cr_assert_eq(count_header(&q, "Content-Length: 0"), 1, "%s", q.head);
  cr_assert_null(strcasestr(q.head, "urlencoded"), "%s", q.head);
  result_free(&r);
}

/* ---- failures ----------------------------------------------------------- */

Test(httpcall, timeout_is_retryable) {
  add_route((route){"/slow", 200, NULL, "{}", 0, 3000, MODE_NORMAL});
  char *in = input_for("GET", "/slow", NULL, NULL);
  int64_t t0 = clock_mono_ms();
  result r = call_full(in, 200, NULL, 0);
  free(in);
  int64_t took = clock_mono_ms() - t0;
  cr_assert(!r.ok);
  cr_assert_str_eq(r.type, "Timeout");
  cr_assert(r.retryable);
  cr_assert(took >= 150 && took < 2000, "took %lld ms", (long long)took);
}

Test(httpcall, connection_refused_is_retryable) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, (struct sockaddr *)&a, sizeof(a));
  socklen_t al = sizeof(a);
  getsockname(fd, (struct sockaddr *)&a, &al);
  close(fd); /* nobody listens there now */
  char in[256];
  snprintf(in, sizeof(in),
           "{\"method\":\"GET\",\"url\":\"http://127.0.0.1:%d/\"}",
           ntohs(a.sin_port));
  result r = call_full(in, 5000, NULL, 0);
  cr_assert(!r.ok);
  cr_assert_str_eq(r.type, "ConnectionError");
  cr_assert(r.retryable);
  cr_assert_eq(r.status, 0);
}

Test(httpcall, broken_responses_are_connection_errors) {
  add_route((route){"/hangup", 200, NULL, NULL, 0, 0, MODE_CLOSE});
  add_route((route){"/half", 200, NULL, "{\"truncated\": true}", 0, 0,
                    MODE_PARTIAL});
  result r = call_get("/hangup");
  cr_assert(!r.ok);
  cr_assert_str_eq(r.type, "ConnectionError");
  cr_assert(r.retryable);
  r = call_get("/half");
  cr_assert(!r.ok);
  cr_assert_str_eq(r.type, "ConnectionError", "%s: %s", r.type, r.msg);
  cr_assert(r.retryable);
}

Test(httpcall, response_too_large) {
  size_t n = 2 * 1024 * 1024;
  char *big = malloc(n);
  memset(big, 'y', n);
  add_route((route){"/big", 200, NULL, big, n, 0, MODE_NORMAL});
  add_route((route){"/bignolen", 200, NULL, big, n, 0, MODE_NOLEN});
  result r = call_get("/big");
  cr_assert(!r.ok);
  cr_assert_str_eq(r.type, "ResponseTooLarge");
  cr_assert(!r.retryable);
  r = call_get("/bignolen");
  cr_assert(!r.ok);
  cr_assert_str_eq(r.type, "ResponseTooLarge", "%s: %s", r.type, r.msg);
  cr_assert(!r.retryable);
  close_hc(); /* before big is freed: conn threads may still send it */
  server_stop();
  server_start();
  cr_assert_eq(uv_loop_init(&loop), 0);
  cr_assert_eq(httpcall_init(&hc, &loop), 0);
  hc_closed = false;
  close_cb_ran = false;
  free(big);
}

Test(httpcall, invalid_requests_are_not_retryable) {
  char url[64];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", srv.port);
  char *bad[16];
  int n = 0;
  bad[n++] = strdup("not json");
  bad[n++] = strdup("[1, 2]");
  bad[n++] = strdup("{\"method\":\"GET\"}");
  bad[n++] = strdup("{\"method\":\"GET\",\"url\":42}");
  bad[n++] = strdup("{\"method\":\"FETCH\",\"url\":\"http://127.0.0.1/\"}");
  bad[n++] = strdup("{\"method\":7,\"url\":\"http://127.0.0.1/\"}");
  bad[n++] = strdup("{\"url\":\"ftp://127.0.0.1/x\"}");
  bad[n++] = strdup("{\"url\":\"file:///etc/passwd\"}");
  bad[n++] = strdup("{\"url\":\"not a url\"}");
  bad[n++] = strdup("{\"url\":\"/relative/path\"}");
  bad[n++] = input_for("GET", "/x", "[\"a\"]", NULL);
  bad[n++] = input_for("GET", "/x", "{\"Bad Name\":\"v\"}", NULL);
  bad[n++] = input_for("GET", "/x", "{\"X-A\":\"v\\r\\nX-Injected: 1\"}", NULL);
  bad[n++] = input_for("GET", "/x", "{\"X-A\":{\"nested\":1}}", NULL);
  bad[n++] = input_for("POST", "/x", "{\"Content-Length\":\"5\"}", "\"hello\"");
  for (int i = 0; i < n; i++) {
    result r = call_full(bad[i], 5000, NULL, 0);
    cr_assert(!r.ok, "%s", bad[i]);
    cr_assert_str_eq(r.type, "InvalidRequest", "%s → %s", bad[i], r.type);
    cr_assert(!r.retryable);
    cr_assert_eq(r.status, 0);
    free(bad[i]);
  }
  pthread_mutex_lock(&srv.mu);
  cr_assert_eq(srv.n_recs, 0, "an invalid request reached the server");
  pthread_mutex_unlock(&srv.mu);
}

Test(httpcall, start_refuses_bad_arguments) {
  result r = {0};
  httpcall_request req = {.input_json = "{}", .idempotency_key = "k"};
  cr_assert_eq(httpcall_start(&hc, NULL, on_done, &r, NULL), SK_EINVAL);
  cr_assert_eq(httpcall_start(&hc, &req, NULL, &r, NULL), SK_EINVAL);
  req.idempotency_key = NULL;
  cr_assert_eq(httpcall_start(&hc, &req, on_done, &r, NULL), SK_EINVAL);
  req.idempotency_key = "a\r\nX-Injected: 1";
  cr_assert_eq(httpcall_start(&hc, &req, on_done, &r, NULL), SK_EINVAL);
  cr_assert_eq(httpcall_cancel(&hc, 12345), SK_ENOENT);
  uv_run(&loop, UV_RUN_NOWAIT);
  cr_assert_eq(r.count, 0);
}

/* ---- concurrency, cancel, close ---------------------------------------- */

Test(httpcall, fifty_concurrent_calls) {
  add_route((route){"/c", 200, NULL, "{\"n\":1}", 0, 100, MODE_NORMAL});
  enum { N = 50 };
  static result rs[N];
  char *in = input_for("GET", "/c", NULL, NULL);
  httpcall_request req = {.input_json = in, .idempotency_key = "k",
                          .timeout_ms = 10000};
  int64_t t0 = clock_mono_ms();
  for (int i = 0; i < N; i++)
    cr_assert_eq(httpcall_start(&hc, &req, on_done, &rs[i], NULL), 0);
  free(in);
  cr_assert_eq(httpcall_active(&hc), (size_t)N);
  for (int i = 0; i < N; i++)
    run_until(&rs[i], 1);
  int64_t took = clock_mono_ms() - t0;
  for (int i = 0; i < N; i++) {
    cr_assert_eq(rs[i].count, 1);
    cr_assert(rs[i].ok, "%d: %s %s", i, rs[i].type, rs[i].msg);
    cr_assert_str_eq(rs[i].output, "{\"n\":1}");
    result_free(&rs[i]);
  }
  cr_assert_eq(httpcall_active(&hc), 0);
  /* concurrent, not one after the other (50 × 100 ms) */
  cr_assert_lt(took, 2500, "took %lld ms", (long long)took);
}

static void cancel_by_id(uv_timer_t *t) {
  result *r = t->data;
  cr_assert_eq(httpcall_cancel(&hc, r->id), 0);
  uv_close((uv_handle_t *)t, NULL);
}

Test(httpcall, cancel_in_flight) {
  add_route((route){"/slow", 200, NULL, "{}", 0, 3000, MODE_NORMAL});
  char *in = input_for("GET", "/slow", NULL, NULL);
  result r = {0};
  httpcall_request req = {.input_json = in, .idempotency_key = "k",
                          .timeout_ms = 10000};
  cr_assert_eq(httpcall_start(&hc, &req, on_done, &r, &r.id), 0);
  free(in);
  static uv_timer_t t; /* closed after this function returns */
  uv_timer_init(&loop, &t);
  t.data = &r;
  uv_timer_start(&t, cancel_by_id, 100, 0);
  int64_t t0 = clock_mono_ms();
  run_until(&r, 1);
  int64_t took = clock_mono_ms() - t0;
  cr_assert(!r.ok);
  cr_assert_str_eq(r.type, "Cancelled");
  cr_assert(!r.retryable);
  cr_assert_lt(took, 1500);
  cr_assert_eq(httpcall_cancel(&hc, r.id), SK_ENOENT);
}

static void set_flag(uv_timer_t *t) {
  atomic_store((atomic_bool *)t->data, true);
  uv_close((uv_handle_t *)t, NULL);
}

Test(httpcall, cancel_flag) {
  add_route((route){"/slow", 200, NULL, "{}", 0, 3000, MODE_NORMAL});
  char *in = input_for("GET", "/slow", NULL, NULL);
  atomic_bool flag;
  atomic_init(&flag, false);
  result r = {0};
  httpcall_request req = {.input_json = in, .idempotency_key = "k",
                          .timeout_ms = 10000, .cancel = &flag};
  cr_assert_eq(httpcall_start(&hc, &req, on_done, &r, NULL), 0);
  free(in);
  static uv_timer_t t; /* closed after this function returns */
  uv_timer_init(&loop, &t);
  t.data = &flag;
  uv_timer_start(&t, set_flag, 100, 0);
  int64_t t0 = clock_mono_ms();
  run_until(&r, 1);
  cr_assert_str_eq(r.type, "Cancelled");
  cr_assert_lt(clock_mono_ms() - t0, 1500);
}

static void close_now(uv_timer_t *t) {
  cr_assert_eq(httpcall_close(&hc, on_closed), 0);
  cr_assert_eq(httpcall_close(&hc, on_closed), SK_ESTATE);
  hc_closed = true;
  uv_close((uv_handle_t *)t, NULL);
}

Test(httpcall, close_with_calls_in_flight) {
  add_route((route){"/slow", 200, NULL, "{}", 0, 3000, MODE_NORMAL});
  enum { N = 5 };
  static result rs[N];
  char *in = input_for("GET", "/slow", NULL, NULL);
  httpcall_request req = {.input_json = in, .idempotency_key = "k",
                          .timeout_ms = 10000};
  for (int i = 0; i < N; i++)
    cr_assert_eq(httpcall_start(&hc, &req, on_done, &rs[i], NULL), 0);
  static uv_timer_t t; /* closed after this function returns */
  uv_timer_init(&loop, &t);
  uv_timer_start(&t, close_now, 100, 0);
  int64_t t0 = clock_mono_ms();
  uv_run(&loop, UV_RUN_DEFAULT); /* returns once every handle is closed */
  cr_assert_lt(clock_mono_ms() - t0, 1500);
  cr_assert(close_cb_ran);
  for (int i = 0; i < N; i++) {
    cr_assert_eq(rs[i].count, 1);
    cr_assert_str_eq(rs[i].type, "Cancelled");
  }
  result late = {0};
  cr_assert_eq(httpcall_start(&hc, &req, on_done, &late, NULL), SK_ESHUTDOWN);
  free(in);
  /* teardown checks uv_loop_close() == 0 */
}

static result chain[2];
static char *chain_input;

static void chain_second(uint64_t id, httpcall_outcome *o, void *ud) {
  on_done(id, o, ud);
  cr_assert_eq(httpcall_close(&hc, on_closed), 0);
  hc_closed = true;
}

static void chain_first(uint64_t id, httpcall_outcome *o, void *ud) {
  on_done(id, o, ud);
  httpcall_request req = {.input_json = chain_input, .idempotency_key = "k2"};
  cr_assert_eq(httpcall_start(&hc, &req, chain_second, &chain[1], NULL), 0);
}

Test(httpcall, callbacks_may_start_and_close) {
  add_route((route){"/a", 200, NULL, "[1]", 0, 0, MODE_NORMAL});
  chain_input = input_for("GET", "/a", NULL, NULL);
  httpcall_request req = {.input_json = chain_input, .idempotency_key = "k1"};
  cr_assert_eq(httpcall_start(&hc, &req, chain_first, &chain[0], NULL), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  cr_assert(close_cb_ran);
  cr_assert(chain[0].ok && chain[1].ok);
  cr_assert_str_eq(chain[1].output, "[1]");
  result_free(&chain[0]);
  result_free(&chain[1]);
  free(chain_input);
}

/* ---- breaker keys -------------------------------------------------------- */

Test(httpcall, breaker_key) {
  char k[HTTPCALL_KEY_MAX];
  cr_assert_eq(httpcall_breaker_key("http://Example.COM/x?token=s", k,
                                    sizeof(k)), 0);
  cr_assert_str_eq(k, "http://example.com:80");
  cr_assert_eq(httpcall_breaker_key("HTTPS://api.test:8443/v1", k, sizeof(k)),
               0);
  cr_assert_str_eq(k, "https://api.test:8443");
  cr_assert_eq(httpcall_breaker_key("https://u:p@h.test/", k, sizeof(k)), 0);
  cr_assert_str_eq(k, "https://h.test:443");
  cr_assert_eq(httpcall_breaker_key("http://[::1]:9000/", k, sizeof(k)), 0);
  cr_assert_str_eq(k, "http://[::1]:9000");
  cr_assert_eq(httpcall_breaker_key("ftp://h.test/", k, sizeof(k)), SK_EINVAL);
  cr_assert_eq(httpcall_breaker_key("nope", k, sizeof(k)), SK_EINVAL);
  cr_assert_eq(httpcall_breaker_key("http://h.test/", k, 8), SK_ETOOBIG);
  cr_assert_eq(httpcall_breaker_key_input(
                   "{\"method\":\"GET\",\"url\":\"http://h.test:81/a\"}", k,
                   sizeof(k)),
               0);
  cr_assert_str_eq(k, "http://h.test:81");
  cr_assert_eq(httpcall_breaker_key_input("{}", k, sizeof(k)), SK_EINVAL);
}
