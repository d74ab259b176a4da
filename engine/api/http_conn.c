/*
 * http_conn.c — one HTTP/1.1 connection: parsing with http_parser, limits,
 * the in-order response queue (keep-alive, pipelining, deferred handlers)
 * and the close path.
 *
 * Invariants:
 *   - The state changes only in set_state(), which refuses and logs moves
 *     the table below does not allow: READING → HANDLING | WRITING |
 *     CLOSING; HANDLING → WRITING | CLOSING; WRITING → READING | HANDLING |
 *     LINGERING | CLOSING; LINGERING → CLOSING.
 *   - Requests sit in one queue in arrival order; only the head may be
 *     written and at most one write is in flight, so responses leave in
 *     order whatever order handlers finish in.
 *   - A request and its arena are freed once its response is written, or
 *     when the connection closes; a deferred request whose connection
 *     closed is orphaned (conn = NULL) and freed by http_respond().
 *   - The two handles are closed together and the connection is freed in
 *     the last close callback, never before.
 *   - Errors the connection answers itself (400, 408, 413, 414, 431, 503,
 *     505) are queued like responses, end parsing and close the connection
 *     after being written, with a lingering close so the client can read
 *     them.
 *   - The answer to a request does not depend on how its bytes were split
 *     into reads: callbacks only count against the limits, and the request
 *     is judged where the counts cannot depend on the split (http_tally.h),
 *     with the parser's input cut at every HTTP_TALLY_STRIDE bytes of the
 *     stream (stream_off counts what the parser consumed).
 *
 * Thread: the loop thread only.
 */
#include "api/http_server.h"

#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/http_tally.h"
#include "api/json_limits.h"
#include "common/buf.h"
#include "common/log.h"

#define CONN_STATE_MAP(X)                                                      \
  X(READING, "reading")                                                        \
  X(HANDLING, "handling")                                                      \
  X(WRITING, "writing")                                                        \
  X(LINGERING, "lingering")                                                    \
  X(CLOSING, "closing")

typedef enum conn_state {
#define CONN_STATE_ENUM(name, str) CONN_STATE_##name,
  CONN_STATE_MAP(CONN_STATE_ENUM)
#undef CONN_STATE_ENUM
} conn_state;

struct http_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_write_t wreq;
  uv_shutdown_t sreq;
  http_server *srv;
  http_conn *prev, *next;
  conn_state state;
  int open_handles;
  http_parser parser;
  http_request *cur; /* being parsed */
  http_request *qhead, *qtail;
  int nqueue;
  buf field, value, pending;
  bool in_value, parse_dead, reading, peer_eof, stop_requested;
  bool close_after_write;
  http_tally tally; /* the current request's counts */
  uint64_t stream_off;
  uint64_t req_start, idle_start, write_start, linger_start;
};

static const char *state_name(conn_state s) {
  switch (s) {
#define CONN_STATE_NAME(name, str)                                             \
  case CONN_STATE_##name:                                                      \
    return str;
    CONN_STATE_MAP(CONN_STATE_NAME)
#undef CONN_STATE_NAME
  }
  return "unknown";
}

static void conn_timer_update(http_conn *c);
static void flush(http_conn *c);

void http_conn_flush(http_conn *c) { flush(c); }

/* The one place the state changes. */
static int set_state(http_conn *c, conn_state to) {
  static const unsigned allowed[] = {
      [CONN_STATE_READING] = 1u << CONN_STATE_HANDLING |
                             1u << CONN_STATE_WRITING |
                             1u << CONN_STATE_CLOSING,
      [CONN_STATE_HANDLING] =
          1u << CONN_STATE_WRITING | 1u << CONN_STATE_CLOSING,
      [CONN_STATE_WRITING] =
          1u << CONN_STATE_READING | 1u << CONN_STATE_HANDLING |
          1u << CONN_STATE_LINGERING | 1u << CONN_STATE_CLOSING,
      [CONN_STATE_LINGERING] = 1u << CONN_STATE_CLOSING,
      [CONN_STATE_CLOSING] = 0,
  };
  if (c->state == to)
    return 0;
  if ((allowed[c->state] & (1u << to)) == 0) {
    log_write(LOG_ERROR, "refused impossible http connection state change",
              "from", state_name(c->state), "to", state_name(to), NULL);
    return SK_ESTATE;
  }
  log_write(LOG_DEBUG, "http connection state change", "from",
            state_name(c->state), "to", state_name(to), NULL);
  c->state = to;
  if (to == CONN_STATE_READING)
    c->idle_start = uv_now(c->srv->loop);
  else if (to == CONN_STATE_WRITING)
    c->write_start = uv_now(c->srv->loop);
  else if (to == CONN_STATE_LINGERING)
    c->linger_start = uv_now(c->srv->loop);
  conn_timer_update(c);
  return 0;
}

static void enqueue(http_conn *c, http_request *req) {
  req->next = NULL;
  if (c->qtail != NULL)
    c->qtail->next = req;
  else
    c->qhead = req;
  c->qtail = req;
  c->nqueue++;
}

static http_request *dequeue(http_conn *c) {
  http_request *req = c->qhead;
  if (req != NULL) {
    c->qhead = req->next;
    if (c->qhead == NULL)
      c->qtail = NULL;
    c->nqueue--;
  }
  return req;
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  http_conn *c = h->data;
  /* One shared buffer: parsing copies whatever it keeps before returning. */
  *b = uv_buf_init(c->srv->rbuf, sizeof(c->srv->rbuf));
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b);

static void read_on(http_conn *c) {
  if (!c->reading &&
      uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
    c->reading = true;
}

static void read_off(http_conn *c) {
  if (c->reading)
    uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = false;
}

/* Ends parsing for good: the connection closes after the queued responses. */
static void stop_parsing(http_conn *c) {
  c->parse_dead = true;
  read_off(c);
  http_server_request_free(c->cur);
  c->cur = NULL;
  buf_reset(&c->pending);
}

/* Answers with an error of the connection's own and closes after it. */
static void conn_fail(http_conn *c, int status, const char *code,
                      const char *message) {
  if (c->parse_dead || c->state == CONN_STATE_CLOSING)
    return;
  stop_parsing(c);
  http_request *req = http_server_request_new(c);
  if (req == NULL) {
    http_conn_close(c);
    return;
  }
  log_write(LOG_INFO, "refused http request", "code", code, "#status",
            (int64_t)status, NULL);
  req->done = true;
  req->close_after = true;
  http_response_error(&req->resp, status, code, message);
  enqueue(c, req);
  flush(c);
}

static void fail_parser(http_conn *c, enum http_errno e) {
  switch (e) {
  case HPE_HEADER_OVERFLOW:
    conn_fail(c, 431, "headers_too_large", "request headers are too large");
    break;
  default:
    conn_fail(c, 400, "bad_request", http_errno_description(e));
    break;
  }
}

static http_conn *conn_of(http_parser *p) { return p->data; }

static int on_message_begin(http_parser *p) {
  http_conn *c = conn_of(p);
  c->cur = http_server_request_new(c);
  if (c->cur == NULL) {
    conn_fail(c, 503, "unavailable", "out of memory");
    return -1;
  }
  http_tally_reset(&c->tally);
  c->in_value = false;
  buf_reset(&c->field);
  buf_reset(&c->value);
  c->req_start = uv_now(c->srv->loop);
  conn_timer_update(c);
  return 0;
}

/* Answers the current request's refusal if it is past a limit; called
 * only at the judging points of http_tally.h. */
static bool refuse_if_over(http_conn *c) {
  http_refusal why;
  if (c->cur == NULL || !http_tally_over(&c->tally, &c->srv->cfg, &why))
    return false;
  conn_fail(c, why.status, why.code, why.message);
  return true;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  http_conn *c = conn_of(p);
  if (http_tally_url(&c->tally, &c->srv->cfg, len))
    buf_append(&c->cur->url, at, len);
  return 0;
}

static int commit_header(http_conn *c) {
  http_request *req = c->cur;
  int max = c->srv->cfg.max_headers;
  if (!http_tally_header_line(&c->tally, &c->srv->cfg)) {
    /* One too many: refused at the next judging point. */
    buf_reset(&c->field);
    buf_reset(&c->value);
    c->in_value = false;
    return 0;
  }
  if (req->headers == NULL)
    req->headers = http_request_alloc(req, (size_t)max * sizeof(http_header));
  const char *name = c->field.data ? c->field.data : "";
  const char *value = c->value.data ? c->value.data : "";
  http_header *h = req->headers ? &req->headers[req->nheaders] : NULL;
  if (h == NULL || (h->name = http_request_strdup(req, name)) == NULL ||
      (h->value = http_request_strdup(req, value)) == NULL) {
    conn_fail(c, 503, "unavailable", "out of memory");
    return -1;
  }
  req->nheaders++;
  buf_reset(&c->field);
  buf_reset(&c->value);
  c->in_value = false;
  return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
  http_conn *c = conn_of(p);
  if (c->in_value && commit_header(c) != 0)
    return -1;
  if (http_tally_header_bytes(&c->tally, &c->srv->cfg, len))
    buf_append(&c->field, at, len);
  return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  http_conn *c = conn_of(p);
  c->in_value = true;
  if (http_tally_header_bytes(&c->tally, &c->srv->cfg, len))
    buf_append(&c->value, at, len);
  return 0;
}

/* Refuses "." and ".." segments and control characters anywhere in the
 * decoded path; literal segments are matched raw by the router. */
static bool path_safe(http_request *req, const char *path, size_t len) {
  char *dec = http_request_alloc(req, len + 1);
  size_t dlen;
  if (dec == NULL || router_url_decode(path, len, dec, &dlen, false) != 0)
    return false;
  for (size_t i = 0; i < dlen; i++)
    if ((unsigned char)dec[i] < 0x20 || dec[i] == 0x7f)
      return false;
  for (char *s = strtok(dec, "/"); s != NULL; s = strtok(NULL, "/"))
    if (strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
      return false;
  return true;
}

/* Splits the URL into path and decoded query. */
static int split_url(http_request *req) {
  const char *url = req->url.data ? req->url.data : "";
  if (url[0] != '/')
    return -1;
  size_t plen = strcspn(url, "?#");
  char *path = http_request_alloc(req, plen + 1);
  if (path == NULL)
    return -1;
  memcpy(path, url, plen);
  path[plen] = '\0';
  req->path = path;
  if (!path_safe(req, path, plen))
    return -1;
  if (url[plen] != '?')
    return 0;
  const char *qs = url + plen + 1;
  size_t qlen = strcspn(qs, "#");
  char *scratch = http_request_alloc(req, 3 * qlen + 2);
  if (scratch == NULL)
    return -1;
  int n = router_parse_query(qs, qlen, scratch, 3 * qlen + 2, req->query,
                             HTTP_QUERY_MAX);
  if (n < 0)
    return -1;
  req->nquery = n;
  return 0;
}

static int on_headers_complete(http_parser *p) {
  http_conn *c = conn_of(p);
  http_request *req = c->cur;
  if (c->in_value && commit_header(c) != 0)
    return -1;
  if (refuse_if_over(c))
    return -1;
  if (p->http_major != 1) {
    conn_fail(c, 505, "http_version_not_supported",
              "only HTTP/1.0 and HTTP/1.1 are supported");
    return -1;
  }
  if ((p->flags & F_CONTENTLENGTH) &&
      p->content_length > c->srv->cfg.max_body) {
    conn_fail(c, 413, "payload_too_large", "request body is too large");
    return -1;
  }
  if (split_url(req) != 0) {
    conn_fail(c, 400, "bad_request", "invalid request URL");
    return -1;
  }
  req->method = (int)p->method;
  req->http10 = p->http_minor == 0;
  /* No upgrades or tunnels here: answer, then close. */
  req->keep_alive = http_should_keep_alive(p) != 0 && !p->upgrade;
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  http_conn *c = conn_of(p);
  if (!http_tally_body(&c->tally, &c->srv->cfg, len))
    return 0; /* refused at the next judging point */
  buf_append(&c->cur->body, at, len);
  if (!buf_ok(&c->cur->body)) {
    conn_fail(c, 503, "unavailable", "out of memory");
    return -1;
  }
  return 0;
}

static void dispatch(http_conn *c, http_request *req);

static int on_message_complete(http_parser *p) {
  http_conn *c = conn_of(p);
  if (refuse_if_over(c))
    return -1;
  http_request *req = c->cur;
  c->cur = NULL;
  enqueue(c, req);
  if (!req->keep_alive || c->stop_requested) {
    /* Nothing after this request will be answered. */
    c->parse_dead = true;
    read_off(c);
    http_parser_pause(p, 1);
  } else if (c->nqueue >= c->srv->cfg.max_pipeline) {
    http_parser_pause(p, 1); /* back-pressure: resumed in on_write */
  }
  dispatch(c, req);
  conn_timer_update(c);
  return c->state == CONN_STATE_CLOSING ? -1 : 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Parses one piece, which ends at or before the next stride boundary;
 * the bytes the parser consumed, or 0 when parsing of this read ends here
 * (paused with the rest kept, failed, upgraded or closed). */
static size_t feed_piece(http_conn *c, const char *data, size_t piece,
                         size_t len) {
  size_t n = http_parser_execute(&c->parser, &parser_settings, data, piece);
  c->stream_off += n;
  if (c->state == CONN_STATE_CLOSING)
    return 0;
  enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
  if (e == HPE_PAUSED) {
    if (!c->parse_dead) { /* keep the rest for when the queue drains */
      buf_append(&c->pending, data + n, len - n);
      read_off(c);
      if (!buf_ok(&c->pending))
        http_conn_close(c);
    }
    return 0;
  }
  if (e != HPE_OK) {
    fail_parser(c, e);
    return 0;
  }
  if (c->parser.upgrade && c->cur == NULL) {
    /* No upgrades here: answer what was parsed, then close. http_parser
     * flags an upgrade once the headers are in, so wait until the request
     * (its body may come in later reads) is complete (found by fuzzing). */
    c->parse_dead = true;
    read_off(c);
    flush(c);
    return 0;
  }
  /* Every open element was flushed at this boundary, so the counts are
   * those of any other split of the stream. */
  if (http_tally_checkpoint(c->stream_off) && refuse_if_over(c))
    return 0;
  return n;
}

static void feed(http_conn *c, const char *data, size_t len) {
  while (len > 0) {
    size_t n = feed_piece(c, data, http_tally_piece(c->stream_off, len), len);
    if (n == 0)
      break;
    data += n;
    len -= n;
  }
  if (c->state != CONN_STATE_CLOSING)
    conn_timer_update(c);
}

/* Parses bytes kept while the pipeline was full. */
static void resume_parsing(http_conn *c) {
  if (c->parse_dead || c->nqueue >= c->srv->cfg.max_pipeline)
    return;
  if (HTTP_PARSER_ERRNO(&c->parser) == HPE_PAUSED)
    http_parser_pause(&c->parser, 0);
  if (c->pending.len > 0) {
    buf rest = c->pending; /* feed may refill c->pending */
    buf_init(&c->pending);
    feed(c, rest.data, rest.len);
    buf_free(&rest);
  }
  if (c->state != CONN_STATE_CLOSING && !c->parse_dead && !c->peer_eof &&
      HTTP_PARSER_ERRNO(&c->parser) == HPE_OK)
    read_on(c);
}

static void on_peer_eof(http_conn *c) {
  c->peer_eof = true;
  read_off(c);
  if (c->cur != NULL) /* a request cut short cannot be answered */
    stop_parsing(c);
  c->parse_dead = true;
  if (c->qhead == NULL)
    http_conn_close(c);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b) {
  http_conn *c = st->data;
  if (nread == 0)
    return;
  if (nread < 0) {
    if (nread == UV_EOF && c->state != CONN_STATE_LINGERING)
      on_peer_eof(c);
    else
      http_conn_close(c);
    return;
  }
  if (c->state == CONN_STATE_LINGERING || c->parse_dead)
    return; /* draining */
  feed(c, b->base, (size_t)nread);
}

/* ---- handling and writing ---- */

static void dispatch(http_conn *c, http_request *req) {
  size_t len = strlen(req->path) + 1;
  char *scratch = http_request_alloc(req, len);
  http_response *resp = &req->resp;
  int rc = scratch == NULL
               ? SK_ENOMEM
               : router_match_path(c->srv->routes, req->method, req->path,
                                   scratch, len, &req->match);
  switch (rc) {
  case SK_OK:
    req->match.fn(req, resp, req->match.udata);
    break;
  case SK_ENOENT:
    http_response_error(resp, 404, "not_found", "no such resource");
    break;
  case SK_ENOTSUP:
    http_response_error(resp, 405, "method_not_allowed",
                        "method not allowed for this resource");
    (void)http_response_header(resp, "Allow", req->match.allow);
    break;
  case SK_EINVAL:
    http_response_error(resp, 400, "bad_request", "invalid path parameter");
    break;
  default:
    http_response_error(resp, 503, "unavailable", "out of memory");
    break;
  }
  if (!req->deferred)
    req->done = true;
  flush(c);
}

/* Whether the connection ends after req's response. */
static bool closes_after(const http_conn *c, const http_request *req) {
  if (req->close_after || !req->keep_alive)
    return true;
  return req->next == NULL && c->cur == NULL &&
         (c->peer_eof || c->stop_requested || c->parse_dead);
}

static void serialize(http_conn *c, http_request *req, bool closing) {
  http_response *r = &req->resp;
  buf *h = &req->head;
  const char *reason = http_status_str((enum http_status)r->status);
  buf_printf(h, "HTTP/1.1 %d %s\r\n", r->status, reason);
  if (r->content_type != NULL)
    buf_printf(h, "Content-Type: %s\r\n", r->content_type);
  buf_printf(h, "Content-Length: %zu\r\n", r->body.len);
  for (const http_resp_header *x = r->headers; x != NULL; x = x->next)
    buf_printf(h, "%s: %s\r\n", x->name, x->value);
  if (closing)
    buf_puts(h, "Connection: close\r\n");
  else if (req->http10)
    buf_puts(h, "Connection: keep-alive\r\n");
  buf_puts(h, "\r\n");
}

static void begin_linger(http_conn *c);

static void on_write(uv_write_t *w, int status) {
  http_conn *c = w->data;
  if (c->state == CONN_STATE_CLOSING)
    return; /* the queue was already freed by http_conn_close */
  http_server_request_free(dequeue(c));
  if (status < 0) {
    http_conn_close(c);
    return;
  }
  if (c->close_after_write) {
    begin_linger(c);
    return;
  }
  (void)set_state(c,
                  c->qhead != NULL ? CONN_STATE_HANDLING : CONN_STATE_READING);
  resume_parsing(c);
  flush(c);
}

static void write_head(http_conn *c, http_request *req) {
  bool closing = closes_after(c, req);
  serialize(c, req, closing);
  if (!buf_ok(&req->head) || !buf_ok(&req->resp.body)) {
    http_conn_close(c);
    return;
  }
  if (closing) {
    c->close_after_write = true;
    c->parse_dead = true;
    read_off(c);
  }
  uv_buf_t bufs[2];
  unsigned n = 1;
  bufs[0] = uv_buf_init(req->head.data, (unsigned)req->head.len);
  if (req->resp.body.len > 0 && req->method != HTTP_HEAD)
    bufs[n++] = uv_buf_init(req->resp.body.data, (unsigned)req->resp.body.len);
  c->wreq.data = c;
  if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, n, on_write) != 0) {
    http_conn_close(c);
    return;
  }
  (void)set_state(c, CONN_STATE_WRITING);
}

/* Writes the head of the queue if it is ready; otherwise settles the
 * state (handling, reading, or closing when nothing more will come). */
static void flush(http_conn *c) {
  if (c->state == CONN_STATE_WRITING || c->state == CONN_STATE_LINGERING ||
      c->state == CONN_STATE_CLOSING)
    return;
  http_request *req = c->qhead;
  if (req == NULL) {
    if (c->peer_eof || c->stop_requested || c->parse_dead)
      http_conn_close(c);
    else
      (void)set_state(c, CONN_STATE_READING);
    return;
  }
  if (req->done)
    write_head(c, req);
  else
    (void)set_state(c, CONN_STATE_HANDLING);
}

/* ---- closing ---- */

static void on_shutdown(uv_shutdown_t *s, int status) {
  http_conn *c = s->data;
  if (c->state == CONN_STATE_CLOSING)
    return;
  if (status < 0 || c->peer_eof)
    http_conn_close(c);
  else
    read_on(c); /* drain until EOF or the linger timer */
}

/* Sends FIN and drains what the client still sends, so that closing with
 * unread data does not reset the connection before the client has read
 * the last response. */
static void begin_linger(http_conn *c) {
  if (c->peer_eof || set_state(c, CONN_STATE_LINGERING) != 0) {
    http_conn_close(c);
    return;
  }
  c->sreq.data = c;
  if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
    http_conn_close(c);
}

static void on_handle_closed(uv_handle_t *h) {
  http_conn *c = h->data;
  if (--c->open_handles > 0)
    return;
  buf_free(&c->field);
  buf_free(&c->value);
  buf_free(&c->pending);
  http_server *s = c->srv;
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  http_server_conn_gone(s, c);
  free(c);
}

void http_conn_close(http_conn *c) {
  if (c->state == CONN_STATE_CLOSING || set_state(c, CONN_STATE_CLOSING) != 0)
    return;
  read_off(c);
  http_server_request_free(c->cur);
  c->cur = NULL;
  for (http_request *req = c->qhead, *next; req != NULL; req = next) {
    next = req->next;
    if (req->deferred && !req->done)
      req->conn = NULL; /* orphan: freed by http_respond */
    else
      http_server_request_free(req);
  }
  c->qhead = c->qtail = NULL;
  c->nqueue = 0;
  uv_timer_stop(&c->timer);
  c->open_handles = 2;
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

/* ---- timers ---- */

static void on_timer(uv_timer_t *t) {
  http_conn *c = t->data;
  uint64_t now = uv_now(c->srv->loop);
  const http_server_config *cfg = &c->srv->cfg;
  switch (c->state) {
  case CONN_STATE_READING:
  case CONN_STATE_HANDLING:
    if (c->cur != NULL && now - c->req_start >= cfg->request_timeout_ms)
      conn_fail(c, 408, "request_timeout", "request was not received in time");
    else if (c->state == CONN_STATE_READING && c->qhead == NULL)
      http_conn_close(c); /* idle */
    else
      conn_timer_update(c);
    break;
  case CONN_STATE_WRITING:   /* the client does not read */
  case CONN_STATE_LINGERING: /* drained long enough */
    http_conn_close(c);
    break;
  case CONN_STATE_CLOSING:
    break;
  }
}

/* Arms the one timer for the nearest deadline of the current state. */
static void conn_timer_update(http_conn *c) {
  const http_server_config *cfg = &c->srv->cfg;
  uint64_t now = uv_now(c->srv->loop), deadline = 0;
  switch (c->state) {
  case CONN_STATE_READING:
  case CONN_STATE_HANDLING:
    if (c->cur != NULL)
      deadline = c->req_start + cfg->request_timeout_ms;
    else if (c->state == CONN_STATE_READING && c->qhead == NULL)
      deadline = c->idle_start + cfg->idle_timeout_ms;
    break;
  case CONN_STATE_WRITING:
    deadline = c->write_start + cfg->request_timeout_ms;
    break;
  case CONN_STATE_LINGERING:
    deadline = c->linger_start + cfg->linger_ms;
    break;
  case CONN_STATE_CLOSING:
    break;
  }
  if (deadline == 0)
    uv_timer_stop(&c->timer);
  else
    uv_timer_start(&c->timer, on_timer, deadline > now ? deadline - now : 0, 0);
}

/* ---- server side ---- */

static void close_unaccepted(uv_handle_t *h) { free(h); }

void http_conn_accept(http_server *s) {
  http_conn *c = calloc(1, sizeof(*c));
  if (c == NULL || uv_tcp_init(s->loop, &c->tcp) != 0) {
    free(c);
    log_write(LOG_ERROR, "could not accept http connection", NULL);
    return;
  }
  c->srv = s;
  c->tcp.data = c->timer.data = c;
  c->open_handles = 1;
  if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)&c->tcp) != 0) {
    uv_close((uv_handle_t *)&c->tcp, close_unaccepted);
    return;
  }
  if (s->nconns >= s->cfg.max_conns + 64) { /* no room even to say 503 */
    uv_close((uv_handle_t *)&c->tcp, close_unaccepted);
    return;
  }
  uv_timer_init(s->loop, &c->timer);
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  c->next = s->conns;
  if (s->conns != NULL)
    s->conns->prev = c;
  s->conns = c;
  s->nconns++;
  c->state = CONN_STATE_READING;
  c->idle_start = uv_now(s->loop);
  if (s->nconns > s->cfg.max_conns) {
    conn_fail(c, 503, "unavailable", "too many connections");
    return;
  }
  read_on(c);
  conn_timer_update(c);
}

void http_conn_stop(http_conn *c) {
  c->stop_requested = true;
  if (c->state == CONN_STATE_LINGERING ||
      (c->state == CONN_STATE_READING && c->qhead == NULL && c->cur == NULL)) {
    http_conn_close(c);
    return;
  }
  if (c->cur == NULL) { /* no request half-read: take no new ones */
    c->parse_dead = true;
    read_off(c);
  }
}

http_conn *http_conn_next(const http_conn *c) { return c->next; }
