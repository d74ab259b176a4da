/*
 * http_server.c — the listener, "host:port" parsing, graceful stop, and the
 * request/response API handlers see. Connections live in http_conn.c.
 *
 * Invariants: the stop callback runs once, after the listener, the stop
 * timer and every connection are closed; nconns counts connections whose
 * handles are not yet closed. A response is built in its request's arena
 * and buffers and serialized by http_conn.c when it reaches the head of
 * the queue.
 *
 * Thread: the loop thread only (http_parse_listen and the config helpers
 * are pure).
 */
#include "api/http_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/json_limits.h"
#include "common/log.h"

void http_server_config_init(http_server_config *c) {
  memset(c, 0, sizeof(*c));
  c->max_body = 1024 * 1024;
  c->max_header_bytes = 16 * 1024;
  c->max_headers = 100;
  c->max_url = 8 * 1024;
  c->request_timeout_ms = 10000;
  c->idle_timeout_ms = 60000;
  c->linger_ms = 2000;
  c->max_conns = 1024;
  c->max_pipeline = 16;
}

/* ---- listen address ---- */

static int parse_port(const char *p, int *port, sk_error *err) {
  char *end;
  errno = 0;
  long v = strtol(p, &end, 10);
  if (*p == '\0' || *end != '\0' || errno != 0 || v < 0 || v > 65535 ||
      p[0] == '+' || p[0] == '-')
    return sk_error_set(err, SK_EINVAL,
                        "listen port must be a number from 0 to 65535");
  *port = (int)v;
  return SK_OK;
}

int http_parse_listen(const char *text, struct sockaddr_storage *out,
                      sk_error *err) {
  char host[64];
  const char *colon, *hs;
  size_t hlen;
  int port = 0;
  if (text == NULL || out == NULL)
    return sk_error_set(err, SK_EINVAL, "listen address is missing");
  memset(out, 0, sizeof(*out));
  if (text[0] == '[') { /* [v6]:port */
    const char *close = strchr(text, ']');
    if (close == NULL || close[1] != ':')
      return sk_error_set(err, SK_EINVAL,
                          "listen address \"%.64s\" must be [IPv6]:port", text);
    hs = text + 1;
    hlen = (size_t)(close - hs);
    colon = close + 1;
  } else {
    colon = strrchr(text, ':');
    if (colon == NULL || strchr(text, ':') != colon)
      return sk_error_set(err, SK_EINVAL,
                          "listen address \"%.64s\" must be host:port", text);
    hs = text;
    hlen = (size_t)(colon - text);
  }
  if (hlen == 0 || hlen >= sizeof(host))
    return sk_error_set(err, SK_EINVAL, "listen host is empty or too long");
  memcpy(host, hs, hlen);
  host[hlen] = '\0';
  if (parse_port(colon + 1, &port, err) != 0)
    return SK_EINVAL;
  if (strcmp(host, "localhost") == 0)
    snprintf(host, sizeof(host), "127.0.0.1");
  if (text[0] == '[' &&
      uv_ip6_addr(host, port, (struct sockaddr_in6 *)out) == 0)
    return SK_OK;
  if (text[0] != '[' && uv_ip4_addr(host, port, (struct sockaddr_in *)out) == 0)
    return SK_OK;
  return sk_error_set(err, SK_EINVAL,
                      "listen host \"%s\" is not an IP address (use an IPv4 "
                      "literal, [IPv6] or localhost)",
                      host);
}

/* ---- server ---- */

int http_server_new(uv_loop_t *loop, const http_server_config *cfg,
                    const router *routes, http_server **out) {
  if (loop == NULL || routes == NULL || out == NULL)
    return SK_EINVAL;
  http_server *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return SK_ENOMEM;
  s->loop = loop;
  if (cfg != NULL)
    s->cfg = *cfg;
  else
    http_server_config_init(&s->cfg);
  if (s->cfg.max_headers < 1 || s->cfg.max_conns < 1 ||
      s->cfg.max_pipeline < 1 || s->cfg.request_timeout_ms == 0 ||
      s->cfg.idle_timeout_ms == 0) {
    free(s);
    return SK_EINVAL;
  }
  s->routes = routes;
  *out = s;
  return SK_OK;
}

static void maybe_done(http_server *s);

static void on_listener_closed(uv_handle_t *h) {
  http_server *s = h->data;
  s->listener_open = false;
  maybe_done(s);
}

static void on_connection(uv_stream_t *l, int status) {
  http_server *s = l->data;
  if (status < 0) {
    log_write(LOG_WARNING, "could not accept http connection", "error",
              uv_strerror(status), NULL);
    return;
  }
  if (!s->stopping)
    http_conn_accept(s);
}

int http_server_listen(http_server *s, const char *host_port, sk_error *err) {
  struct sockaddr_storage ss;
  int rc;
  if (s->listening || s->stopping || s->listener_open)
    return sk_error_set(err, SK_ESTATE, "http server is already listening");
  if (http_parse_listen(host_port, &ss, err) != 0)
    return SK_EINVAL;
  if ((rc = uv_tcp_init(s->loop, &s->listener)) != 0)
    return sk_error_set(err, SK_EIO, "could not create socket: %s",
                        uv_strerror(rc));
  s->listener.data = s;
  s->listener_open = true;
  if ((rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&ss, 0)) != 0 ||
      (rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection)) != 0)
    goto failed;
  struct sockaddr_storage bound;
  int len = sizeof(bound);
  if ((rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound,
                               &len)) != 0)
    goto failed;
  s->port = ntohs(bound.ss_family == AF_INET6
                      ? ((struct sockaddr_in6 *)&bound)->sin6_port
                      : ((struct sockaddr_in *)&bound)->sin_port);
  s->listening = true;
  log_write(LOG_INFO, "http server listening", "address", host_port, "#port",
            (int64_t)s->port, NULL);
  return SK_OK;
failed:
  s->listener_closing = true;
  uv_close((uv_handle_t *)&s->listener, on_listener_closed);
  return sk_error_set(err, SK_EIO, "could not listen on %s: %s", host_port,
                      uv_strerror(rc));
}

int http_server_port(const http_server *s) {
  return s->listening ? s->port : 0;
}

static void on_stop_timer_closed(uv_handle_t *h);

/* Finishes a stop once nothing is left: the grace timer is closed as soon
 * as the last connection is gone, then the callback runs. */
static void maybe_done(http_server *s) {
  if (!s->stopping || s->nconns > 0)
    return;
  if (s->timer_open && !s->timer_closing) {
    s->timer_closing = true;
    uv_close((uv_handle_t *)&s->stop_timer, on_stop_timer_closed);
  }
  if (s->listener_open || s->timer_open || s->stop_cb == NULL)
    return;
  http_server_stop_cb cb = s->stop_cb;
  s->stop_cb = NULL;
  log_write(LOG_INFO, "http server stopped", NULL);
  cb(s, s->stop_ud);
}

void http_server_conn_gone(http_server *s, http_conn *c) {
  (void)c; /* already unlinked by http_conn.c */
  s->nconns--;
  maybe_done(s);
}

static void on_stop_timer_closed(uv_handle_t *h) {
  http_server *s = h->data;
  s->timer_open = false;
  maybe_done(s);
}

/* The grace period is over: close whatever is left. */
static void on_stop_timeout(uv_timer_t *t) {
  http_server *s = t->data;
  if (s->nconns > 0)
    log_write(LOG_WARNING, "closing http connections still busy at shutdown",
              "#connections", (int64_t)s->nconns, NULL);
  for (http_conn *c = s->conns, *next; c != NULL; c = next) {
    next = http_conn_next(c);
    http_conn_close(c);
  }
  /* The connections' close callbacks end the stop (maybe_done). */
}

int http_server_stop(http_server *s, uint64_t timeout_ms,
                     http_server_stop_cb cb, void *udata) {
  if (cb == NULL)
    return SK_EINVAL;
  if (s->stopping)
    return SK_ESTATE;
  s->stopping = true;
  s->stop_cb = cb;
  s->stop_ud = udata;
  if (s->listener_open && !s->listener_closing) {
    s->listener_closing = true;
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
  }
  for (http_conn *c = s->conns, *next; c != NULL; c = next) {
    next = http_conn_next(c); /* c may unlink itself on close */
    http_conn_stop(c);
  }
  uv_timer_init(s->loop, &s->stop_timer);
  s->stop_timer.data = s;
  s->timer_open = true;
  uv_timer_start(&s->stop_timer, on_stop_timeout, timeout_ms, 0);
  maybe_done(s); /* nothing busy: closes the timer now */
  return SK_OK;
}

void http_server_free(http_server *s) {
  if (s == NULL)
    return;
  /* Freeing with handles open would leave libuv pointing at freed memory. */
  if (s->listener_open || s->timer_open || s->nconns > 0) {
    log_write(LOG_ERROR, "http server freed while still open", NULL);
    abort();
  }
  free(s);
}

/* ---- requests and their arena ---- */

void *http_request_alloc(http_request *req, size_t size) {
  size = (size + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
  http_arena_block *b = req->arena;
  if (b == NULL || b->cap - b->used < size) {
    size_t cap = size > 4096 ? size : 4096;
    b = malloc(sizeof(*b) + cap);
    if (b == NULL)
      return NULL;
    b->cap = cap;
    b->used = 0;
    /* An oversized block goes behind the current one so the current one's
     * free space stays usable. */
    if (size > 4096 && req->arena != NULL) {
      b->next = req->arena->next;
      req->arena->next = b;
    } else {
      b->next = req->arena;
      req->arena = b;
    }
  }
  void *p = (char *)b->data + b->used;
  b->used += size;
  return p;
}

char *http_request_strdup(http_request *req, const char *s) {
  size_t n = strlen(s) + 1;
  char *p = http_request_alloc(req, n);
  if (p != NULL)
    memcpy(p, s, n);
  return p;
}

http_request *http_server_request_new(http_conn *c) {
  http_request *req = calloc(1, sizeof(*req));
  if (req == NULL)
    return NULL;
  req->conn = c;
  req->keep_alive = true;
  req->path = "/";
  buf_init(&req->url);
  buf_init(&req->body);
  buf_init(&req->head);
  buf_init(&req->resp.body);
  req->resp.req = req;
  req->resp.status = 200;
  return req;
}

void http_server_request_free(http_request *req) {
  if (req == NULL)
    return;
  for (http_arena_block *b = req->arena, *n; b != NULL; b = n) {
    n = b->next;
    free(b);
  }
  buf_free(&req->url);
  buf_free(&req->body);
  buf_free(&req->head);
  buf_free(&req->resp.body);
  free(req);
}

/* ---- request accessors ---- */

int http_request_method(const http_request *req) { return req->method; }

const char *http_request_path(const http_request *req) { return req->path; }

const char *http_request_header(const http_request *req, const char *name) {
  for (int i = 0; i < req->nheaders; i++)
    if (strcasecmp(req->headers[i].name, name) == 0)
      return req->headers[i].value;
  return NULL;
}

const char *http_request_param(const http_request *req, const char *name) {
  for (int i = 0; i < req->match.nparams; i++)
    if (strcmp(req->match.params[i].key, name) == 0)
      return req->match.params[i].value;
  return NULL;
}

const char *http_request_query(const http_request *req, const char *key) {
  for (int i = 0; i < req->nquery; i++)
    if (strcmp(req->query[i].key, key) == 0)
      return req->query[i].value;
  return NULL;
}

const char *http_request_body(const http_request *req, size_t *len) {
  if (len != NULL)
    *len = req->body.len;
  return req->body.data != NULL ? req->body.data : "";
}

int http_request_json_check(http_request *req, int max_depth) {
  size_t len;
  const char *body = http_request_body(req, &len);
  int rc = json_check(body, len, max_depth);
  if (rc == SK_ETOOBIG && len > SK_PAYLOAD_MAX) {
    http_response_error(&req->resp, 413, "payload_too_large",
                        "request body is too large");
  } else if (rc == SK_ETOOBIG) {
    char msg[96];
    snprintf(msg, sizeof(msg), "JSON body nests deeper than %d levels",
             max_depth);
    http_response_error(&req->resp, 400, "invalid_json", msg);
  } else if (rc != SK_OK) {
    http_response_error(&req->resp, 400, "invalid_json",
                        "request body is not valid JSON");
  }
  return rc;
}

void http_request_defer(http_request *req) { req->deferred = true; }

void http_respond(http_request *req) {
  if (!req->deferred || req->done) {
    log_write(LOG_ERROR, "http_respond on a request that was not deferred",
              NULL);
    return;
  }
  req->done = true;
  if (req->conn == NULL)
    http_server_request_free(req); /* the client is gone */
  else
    http_conn_flush(req->conn);
}

bool http_request_aborted(const http_request *req) { return req->conn == NULL; }

http_response *http_request_response(http_request *req) { return &req->resp; }

/* ---- responses ---- */

void http_response_status(http_response *resp, int status) {
  resp->status = status;
}

static bool header_text_ok(const char *s) {
  for (; *s != '\0'; s++)
    if (*s == '\r' || *s == '\n')
      return false;
  return true;
}

int http_response_header(http_response *resp, const char *name,
                         const char *value) {
  if (name == NULL || value == NULL || name[0] == '\0' ||
      !header_text_ok(name) || !header_text_ok(value) ||
      strchr(name, ':') != NULL || strcasecmp(name, "Content-Length") == 0 ||
      strcasecmp(name, "Connection") == 0)
    return SK_EINVAL;
  http_request *req = resp->req;
  http_resp_header *h = http_request_alloc(req, sizeof(*h));
  if (h == NULL || (h->name = http_request_strdup(req, name)) == NULL ||
      (h->value = http_request_strdup(req, value)) == NULL)
    return SK_ENOMEM;
  h->next = NULL;
  if (resp->headers_tail != NULL)
    resp->headers_tail->next = h;
  else
    resp->headers = h;
  resp->headers_tail = h;
  return SK_OK;
}

void http_response_body(http_response *resp, const char *content_type,
                        const void *data, size_t len) {
  resp->content_type =
      content_type ? http_request_strdup(resp->req, content_type) : NULL;
  buf_reset(&resp->body);
  buf_append(&resp->body, data, len);
}

void http_response_json(http_response *resp, int status, const char *json) {
  resp->status = status;
  http_response_body(resp, "application/json", json, strlen(json));
}

void http_response_error(http_response *resp, int status, const char *code,
                         const char *message) {
  buf b = BUF_INIT;
  buf_puts(&b, "{\"error\":{\"code\":");
  buf_json_str(&b, code);
  buf_puts(&b, ",\"message\":");
  buf_json_str(&b, message);
  buf_puts(&b, ",\"details\":[]}}");
  resp->status = status;
  http_response_body(resp, "application/json", b.data ? b.data : "", b.len);
  buf_free(&b);
}
