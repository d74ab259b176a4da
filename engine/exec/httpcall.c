/*
 * httpcall.c — `http` tasks on libcurl's multi interface, driven by libuv:
 * curl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION → one
 * uv_poll_t per socket) and when to wake it (CURLMOPT_TIMERFUNCTION → one
 * uv_timer_t); libuv tells curl what happened (curl_multi_socket_action).
 *
 * Invariants:
 *   - A call is in hc->calls from httpcall_start until its callback runs,
 *     in one of two states: RUNNING (its easy handle is in the multi) or
 *     DECIDED (its outcome is known, delivered on the next tick). Every
 *     callback runs from call_finish(), which first takes the easy handle
 *     out of the multi and the call out of the list, so a callback never
 *     runs inside a curl callback nor inside an httpcall_* function.
 *   - Cancels (by id, by flag) and close are never acted on at once: they
 *     are noticed by the tick timer, which repeats every HTTPCALL_TICK_MS
 *     while calls exist and is kicked to 0 ms when there is news.
 *   - Close: the tick finishes every call, then tears down (curl first, as
 *     curl_multi_cleanup still reports sockets to remove), then closes the
 *     two timers; each uv_close counts in pending_closes and the owner's
 *     close callback runs when the last one has come back.
 *   - Messages carry the method and the origin (scheme://host:port), never
 *     the url's path or query, which may hold secrets.
 *
 * Thread: the loop thread only (curl_global_init is done once under
 * pthread_once).
 */
#include "exec/httpcall.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/buf.h"

enum { CALL_RUNNING, CALL_DECIDED };
enum { BUILD_OK = 0, BUILD_INVALID = 1 };

struct hc_call {
  hc_call *prev, *next;
  httpcall *hc;
  uint64_t id;
  int state;
  bool cancel_requested;
  atomic_bool *cancel_flag;
  CURL *easy;                  /* non-NULL while in the multi */
  struct curl_slist *headers;
  char *body;                  /* request body, NULL = none */
  size_t body_len;
  buf resp;                    /* response body, at most RESPONSE_MAX */
  bool too_large;
  int64_t retry_after_s;
  int64_t timeout_ms;
  int *success;
  size_t n_success;
  char method[8];
  char origin[HTTPCALL_KEY_MAX];
  char errbuf[CURL_ERROR_SIZE];
  httpcall_outcome out;        /* filled when DECIDED */
  httpcall_done_fn cb;
  void *ud;
};

struct hc_sock {
  hc_sock *prev, *next;
  httpcall *hc;
  curl_socket_t fd;
  uv_poll_t poll;
};

static const char *const METHODS[] = {"GET",   "POST",   "PUT",
                                      "PATCH", "DELETE", "HEAD"};

/* ---- process-wide curl setup ------------------------------------------- */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT;

static void global_init(void) {
  global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- outcomes ---------------------------------------------------------- */

static void set_error(hc_call *c, const char *type, bool retryable,
                      const char *fmt, ...) SK_PRINTF(4, 5);

static void set_error(hc_call *c, const char *type, bool retryable,
                      const char *fmt, ...) {
  free(c->out.output);
  c->out.output = NULL;
  c->out.ok = false;
  c->out.err_type = type;
  c->out.retryable = retryable;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->out.err_message, sizeof(c->out.err_message), fmt, ap);
  va_end(ap);
  c->state = CALL_DECIDED;
}

/* Length of the valid UTF-8 sequence at p, or 0 (invalid, truncated,
 * overlong, surrogate, above U+10FFFF). */
static size_t utf8_seq(const unsigned char *p, size_t n) {
  unsigned c = p[0];
  if (c < 0x80)
    return 1;
  size_t len;
  unsigned cp;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
    cp = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    cp = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (n < len)
    return 0;
  for (size_t i = 1; i < len; i++) {
    if ((p[i] & 0xC0) != 0x80)
      return 0;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
      (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
    return 0;
  return len;
}

/* Text a JSON parser may see: valid UTF-8 without NUL bytes. */
static bool json_candidate(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  for (size_t i = 0; i < n;) {
    size_t k = p[i] == 0 ? 0 : utf8_seq(p + i, n - i);
    if (k == 0)
      return false;
    i += k;
  }
  return true;
}

/* Appends the first `max` bytes of p as a JSON string literal. Invalid
 * UTF-8 and NUL become U+FFFD (PostgreSQL's jsonb takes neither); a
 * character the cut would split is left out. */
static void json_text(buf *b, const char *s, size_t n, size_t max) {
  const unsigned char *p = (const unsigned char *)s;
  buf_putc(b, '"');
  for (size_t i = 0; i < n && i < max;) {
    unsigned c = p[i];
    size_t k = c == 0 ? 0 : utf8_seq(p + i, n - i);
    if (k == 0) {
      buf_puts(b, "\\ufffd");
      i++;
      continue;
    }
    if (i + k > max)
      break;
    if (c == '"' || c == '\\') {
      buf_putc(b, '\\');
      buf_putc(b, (char)c);
    } else if (c == '\n') {
      buf_puts(b, "\\n");
    } else if (c == '\r') {
      buf_puts(b, "\\r");
    } else if (c == '\t') {
      buf_puts(b, "\\t");
    } else if (c < 0x20 || c == 0x7F) {
      buf_printf(b, "\\u%04x", c);
    } else {
      buf_append(b, p + i, k);
    }
    i += k;
  }
  buf_putc(b, '"');
}

/* The ok output: the body if it is JSON, else {"status","body"} or
 * {"status"}. NULL on OOM. */
static char *success_output(const hc_call *c, int status) {
  const char *data = c->resp.data;
  size_t len = c->resp.len;
  if (len > 0 && json_candidate(data, len)) {
    const char *end = NULL;
    cJSON *doc = cJSON_ParseWithOpts(data, &end, true);
    if (doc != NULL) {
      char *text = cJSON_PrintUnformatted(doc);
      cJSON_Delete(doc);
      return text;
    }
  }
  buf b = BUF_INIT;
  buf_printf(&b, "{\"status\":%d", status);
  if (len > 0) {
    buf_puts(&b, ",\"body\":");
    json_text(&b, data, len, HTTPCALL_TEXT_BODY_MAX);
  }
  buf_putc(&b, '}');
  if (!buf_ok(&b)) {
    buf_free(&b);
    return NULL;
  }
  return buf_steal(&b);
}

/* A short, ASCII-only excerpt of the body for an error message. */
static void body_snippet(const hc_call *c, char *out, size_t size) {
  size_t n = c->resp.len < size - 1 ? c->resp.len : size - 1;
  if (n > 200)
    n = 200;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)c->resp.data[i];
    out[i] = ch < 0x20 || ch >= 0x7F ? ' ' : (char)ch;
  }
  out[n] = '\0';
}

static bool is_success(const hc_call *c, long status) {
  if (c->success == NULL)
    return status >= 200 && status <= 299;
  for (size_t i = 0; i < c->n_success; i++)
    if (c->success[i] == status)
      return true;
  return false;
}

static void decide_status(hc_call *c, long status) {
  if (is_success(c, status)) {
    char *text = success_output(c, (int)status);
    if (text == NULL) {
      set_error(c, "InternalError", true, "out of memory building output");
    } else if (strlen(text) > SK_PAYLOAD_MAX) {
      free(text);
      set_error(c, "ResponseTooLarge", false,
                "response body from %s exceeds %d bytes", c->origin,
                SK_PAYLOAD_MAX);
    } else {
      c->out.ok = true;
      c->out.output = text;
      c->state = CALL_DECIDED;
    }
    return;
  }
  bool retryable = status == 408 || status == 429 ||
                   (status >= 500 && status <= 599);
  char snip[256];
  body_snippet(c, snip, sizeof(snip));
  set_error(c, "HttpStatus", retryable, "http status %ld from %s %s%s%s",
            status, c->method, c->origin, snip[0] ? ": " : "", snip);
}

/* Turns a finished transfer into the call's outcome. */
static void decide_transfer(hc_call *c, CURLcode res) {
  long status = 0;
  curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
  c->out.status = (int)status;
  c->out.retry_after_s = c->retry_after_s;
  const char *detail = c->errbuf[0] ? c->errbuf : curl_easy_strerror(res);
  if (c->too_large || res == CURLE_FILESIZE_EXCEEDED) {
    set_error(c, "ResponseTooLarge", false,
              "response body from %s exceeds %d bytes", c->origin,
              HTTPCALL_RESPONSE_MAX);
  } else if (res == CURLE_OPERATION_TIMEDOUT) {
    set_error(c, "Timeout", true, "no response from %s %s within %lld ms",
              c->method, c->origin, (long long)c->timeout_ms);
  } else if (res == CURLE_WRITE_ERROR || res == CURLE_OUT_OF_MEMORY) {
    set_error(c, "InternalError", true, "out of memory reading response");
  } else if (res == CURLE_UNSUPPORTED_PROTOCOL || res == CURLE_URL_MALFORMAT) {
    set_error(c, "InvalidRequest", false, "url refused: %s", detail);
  } else if (res != CURLE_OK) {
    set_error(c, "ConnectionError", true, "could not complete %s %s: %s",
              c->method, c->origin, detail);
  } else {
    decide_status(c, status);
  }
}

/* ---- calls ------------------------------------------------------------- */

static void call_free(hc_call *c) {
  if (c->easy != NULL)
    curl_easy_cleanup(c->easy);
  curl_slist_free_all(c->headers);
  free(c->body);
  buf_free(&c->resp);
  free(c->success);
  free(c->out.output);
  free(c);
}

static void call_link(httpcall *hc, hc_call *c) {
  c->prev = NULL;
  c->next = hc->calls;
  if (hc->calls != NULL)
    hc->calls->prev = c;
  hc->calls = c;
  hc->n_calls++;
}

static void call_unlink(httpcall *hc, hc_call *c) {
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    hc->calls = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  c->prev = c->next = NULL;
  hc->n_calls--;
}

/* Delivers c's outcome and frees it. */
static void call_finish(hc_call *c) {
  httpcall *hc = c->hc;
  if (c->easy != NULL) {
    curl_multi_remove_handle(hc->multi, c->easy);
    curl_easy_cleanup(c->easy);
    c->easy = NULL;
  }
  call_unlink(hc, c);
  c->cb(c->id, &c->out, c->ud);
  call_free(c);
}

static void tick_cb(uv_timer_t *t);

/* Makes the tick run soon (now = true) or keeps it repeating. */
static void tick_arm(httpcall *hc, bool now) {
  if (now)
    uv_timer_start(&hc->tick, tick_cb, 0, HTTPCALL_TICK_MS);
  else if (!uv_is_active((uv_handle_t *)&hc->tick))
    uv_timer_start(&hc->tick, tick_cb, HTTPCALL_TICK_MS, HTTPCALL_TICK_MS);
}

/* Delivers every finished transfer curl has queued. */
static void drain_done(httpcall *hc) {
  CURLMsg *m;
  int left;
  while (hc->multi != NULL &&
         (m = curl_multi_info_read(hc->multi, &left)) != NULL) {
    if (m->msg != CURLMSG_DONE)
      continue;
    char *priv = NULL;
    CURLcode res = m->data.result; /* m dies with remove_handle */
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
    hc_call *c = (hc_call *)priv;
    decide_transfer(c, res);
    call_finish(c);
  }
}

/* ---- libuv ↔ curl ------------------------------------------------------ */

static void closed_one(httpcall *hc) {
  if (--hc->pending_closes == 0 && hc->torn_down && hc->close_cb != NULL) {
    httpcall_close_fn cb = hc->close_cb;
    hc->close_cb = NULL;
    cb(hc);
  }
}

static void timer_closed(uv_handle_t *h) { closed_one(h->data); }

static void sock_closed(uv_handle_t *h) {
  hc_sock *k = h->data;
  httpcall *hc = k->hc;
  free(k);
  closed_one(hc);
}

static void sock_close(hc_sock *k) {
  httpcall *hc = k->hc;
  if (k->prev != NULL)
    k->prev->next = k->next;
  else
    hc->socks = k->next;
  if (k->next != NULL)
    k->next->prev = k->prev;
  uv_poll_stop(&k->poll);
  hc->pending_closes++;
  uv_close((uv_handle_t *)&k->poll, sock_closed);
}

static void poll_cb(uv_poll_t *p, int status, int events) {
  hc_sock *k = p->data;
  httpcall *hc = k->hc;
  int flags = 0;
  if (status < 0) {
    flags = CURL_CSELECT_ERR;
  } else {
    if (events & UV_READABLE)
      flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
      flags |= CURL_CSELECT_OUT;
  }
  int running;
  /* k may be closed by curl in here; use only hc afterwards. */
  curl_multi_socket_action(hc->multi, k->fd, flags, &running);
  drain_done(hc);
}

static void curl_timer_cb(uv_timer_t *t) {
  httpcall *hc = t->data;
  int running;
  curl_multi_socket_action(hc->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  drain_done(hc);
}

/* CURLMOPT_SOCKETFUNCTION: watch s for what curl asks. */
static int socket_fn(CURL *easy, curl_socket_t s, int what, void *userp,
                     void *socketp) {
  httpcall *hc = userp;
  hc_sock *k = socketp;
  if (what == CURL_POLL_REMOVE) {
    /* curl forgets socketp itself after REMOVE. */
    if (k != NULL)
      sock_close(k);
    return 0;
  }
  if (k == NULL) {
    k = calloc(1, sizeof(*k));
    if (k == NULL)
      return -1;
    if (uv_poll_init_socket(hc->loop, &k->poll, s) != 0) {
      free(k);
      return -1;
    }
    k->hc = hc;
    k->fd = s;
    k->poll.data = k;
    k->next = hc->socks;
    if (hc->socks != NULL)
      hc->socks->prev = k;
    hc->socks = k;
    curl_multi_assign(hc->multi, s, k);
  }
  int ev = 0;
  if (what & CURL_POLL_IN)
    ev |= UV_READABLE;
  if (what & CURL_POLL_OUT)
    ev |= UV_WRITABLE;
  return uv_poll_start(&k->poll, ev, poll_cb) == 0 ? 0 : -1;
}

/* CURLMOPT_TIMERFUNCTION: wake curl after timeout_ms (-1: never). */
static int timer_fn(CURLM *multi, long timeout_ms, void *userp) {
  httpcall *hc = userp;
  if (hc->torn_down)
    return 0;
  if (timeout_ms < 0)
    uv_timer_stop(&hc->curl_timer);
  else
    uv_timer_start(&hc->curl_timer, curl_timer_cb, (uint64_t)timeout_ms, 0);
  return 0;
}

static void teardown(httpcall *hc) {
  hc->torn_down = true;
  uv_timer_stop(&hc->curl_timer);
  /* Closes cached connections, reporting their sockets to socket_fn. */
  curl_multi_cleanup(hc->multi);
  hc->multi = NULL;
  while (hc->socks != NULL)
    sock_close(hc->socks);
  hc->pending_closes += 2;
  uv_close((uv_handle_t *)&hc->curl_timer, timer_closed);
  uv_close((uv_handle_t *)&hc->tick, timer_closed);
}

static void tick_cb(uv_timer_t *t) {
  httpcall *hc = t->data;
  hc_call *next;
  /* Callbacks may prepend new calls (never while closing) and set cancel
   * flags, but only this loop and drain_done remove calls. */
  for (hc_call *c = hc->calls; c != NULL; c = next) {
    next = c->next;
    if (c->state == CALL_RUNNING &&
        (hc->closing || c->cancel_requested ||
         (c->cancel_flag != NULL && atomic_load(c->cancel_flag)))) {
      long status = 0;
      curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
      c->out.status = (int)status;
      c->out.retry_after_s = c->retry_after_s;
      /* not retryable, like the decider's own Cancelled */
      set_error(c, "Cancelled", false, "http call %s %s cancelled", c->method,
                c->origin);
    }
    if (c->state == CALL_DECIDED)
      call_finish(c);
  }
  if (hc->closing && hc->calls == NULL)
    teardown(hc);
  else if (hc->calls == NULL)
    uv_timer_stop(&hc->tick);
}

/* ---- building a request ------------------------------------------------ */

static int invalid(hc_call *c, const char *fmt, ...) SK_PRINTF(2, 3);

static int invalid(hc_call *c, const char *fmt, ...) {
  c->out.ok = false;
  c->out.err_type = "InvalidRequest";
  c->out.retryable = false;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->out.err_message, sizeof(c->out.err_message), fmt, ap);
  va_end(ap);
  c->state = CALL_DECIDED;
  return BUILD_INVALID;
}

/* RFC 9110 token. */
static bool header_name_ok(const char *s) {
  if (*s == '\0' || strlen(s) > 256)
    return false;
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch <= 0x20 || ch >= 0x7F || strchr("\"(),/:;<=>?@[\\]{}", ch))
      return false;
  }
  return true;
}

static bool header_value_ok(const char *s) {
  if (strlen(s) > 8192)
    return false;
  for (; *s; s++)
    if (*s == '\r' || *s == '\n')
      return false;
  return true;
}

/* Appends "Name: value"; value "" sends the header empty ("Name;" in
 * curl's syntax), value NULL stops curl from sending its own ("Name:"). */
static int add_header(hc_call *c, const char *name, const char *value) {
  buf b = BUF_INIT;
  buf_puts(&b, name);
  if (value == NULL) {
    buf_putc(&b, ':');
  } else if (value[0] == '\0') {
    buf_putc(&b, ';');
  } else {
    buf_puts(&b, ": ");
    buf_puts(&b, value);
  }
  if (!buf_ok(&b)) {
    buf_free(&b);
    return SK_ENOMEM;
  }
  struct curl_slist *l = curl_slist_append(c->headers, b.data);
  buf_free(&b);
  if (l == NULL)
    return SK_ENOMEM;
  c->headers = l;
  return 0;
}

typedef struct hdr_seen {
  bool content_type, expect;
} hdr_seen;

static int build_headers(hc_call *c, const cJSON *h, hdr_seen *seen) {
  if (h == NULL || cJSON_IsNull(h))
    return BUILD_OK;
  if (!cJSON_IsObject(h))
    return invalid(c, "http headers must be a JSON object");
  const cJSON *it;
  cJSON_ArrayForEach(it, h) {
    const char *name = it->string;
    char num[64];
    const char *value;
    if (!header_name_ok(name))
      return invalid(c, "invalid http header name \"%.64s\"", name);
    if (cJSON_IsString(it)) {
      value = it->valuestring;
    } else if (cJSON_IsNumber(it)) {
      double d = it->valuedouble;
      if (d > -1e15 && d < 1e15 && d == (double)(long long)d)
        snprintf(num, sizeof(num), "%lld", (long long)d);
      else
        snprintf(num, sizeof(num), "%.17g", d);
      value = num;
    } else if (cJSON_IsBool(it)) {
      value = cJSON_IsTrue(it) ? "true" : "false";
    } else {
      return invalid(c, "http header \"%.64s\" must be a string", name);
    }
    if (!header_value_ok(value))
      return invalid(c, "invalid value for http header \"%.64s\"", name);
    if (strcasecmp(name, "Content-Length") == 0 ||
        strcasecmp(name, "Transfer-Encoding") == 0)
      return invalid(c, "http header \"%.64s\" is set by the engine", name);
    if (strcasecmp(name, "Idempotency-Key") == 0)
      continue; /* the engine's key is the one that dedupes */
    if (strcasecmp(name, "Content-Type") == 0)
      seen->content_type = true;
    if (strcasecmp(name, "Expect") == 0)
      seen->expect = true;
    int rc = add_header(c, name, value);
    if (rc != 0)
      return rc;
  }
  return BUILD_OK;
}

static int build_body(hc_call *c, const cJSON *body, const char **ctype) {
  *ctype = NULL;
  if (body == NULL || cJSON_IsNull(body))
    return BUILD_OK;
  if (cJSON_IsString(body)) {
    c->body = strdup(body->valuestring);
    *ctype = "text/plain; charset=utf-8";
  } else {
    c->body = cJSON_PrintUnformatted(body);
    *ctype = "application/json";
  }
  if (c->body == NULL)
    return SK_ENOMEM;
  c->body_len = strlen(c->body);
  return BUILD_OK;
}

/* "method": one of METHODS, any case; absent or null → GET. */
static int parse_method(hc_call *c, const cJSON *m) {
  const char *method = "GET";
  if (m != NULL && !cJSON_IsNull(m)) {
    method = NULL;
    for (size_t i = 0; i < sizeof(METHODS) / sizeof(*METHODS); i++)
      if (cJSON_IsString(m) && strcasecmp(m->valuestring, METHODS[i]) == 0)
        method = METHODS[i];
    if (method == NULL)
      return invalid(c, "unsupported http method \"%.16s\"",
                     cJSON_IsString(m) ? m->valuestring : "(not a string)");
  }
  snprintf(c->method, sizeof(c->method), "%s", method);
  return BUILD_OK;
}

/* Parses the task input into method, origin, headers and body. Returns
 * BUILD_OK, BUILD_INVALID (outcome set) or a negative code. */
static int build(hc_call *c, const httpcall_request *req) {
  cJSON *in = cJSON_Parse(req->input_json);
  int rc = BUILD_OK;
  hdr_seen seen = {false, false};
  const char *ctype = NULL;
  if (in == NULL || !cJSON_IsObject(in)) {
    rc = invalid(c, "http task input is not a JSON object");
    goto done;
  }
  rc = parse_method(c, cJSON_GetObjectItemCaseSensitive(in, "method"));
  if (rc != BUILD_OK)
    goto done;
  const cJSON *u = cJSON_GetObjectItemCaseSensitive(in, "url");
  if (!cJSON_IsString(u)) {
    rc = invalid(c, "http task input has no url");
    goto done;
  }
  rc = httpcall_breaker_key(u->valuestring, c->origin, sizeof(c->origin));
  if (rc == SK_EINVAL || rc == SK_ETOOBIG) {
    rc = invalid(c, "url is not an absolute http or https url");
    goto done;
  }
  if (rc != 0)
    goto done;
  rc = build_headers(c, cJSON_GetObjectItemCaseSensitive(in, "headers"), &seen);
  if (rc != BUILD_OK)
    goto done;
  rc = build_body(c, cJSON_GetObjectItemCaseSensitive(in, "body"), &ctype);
  if (rc != BUILD_OK)
    goto done;
  if (!seen.content_type)
    rc = add_header(c, "Content-Type", ctype); /* NULL: no form default */
  if (rc == 0 && !seen.expect)
    rc = add_header(c, "Expect", NULL); /* no 100-continue round trip */
  if (rc == 0)
    rc = add_header(c, "Idempotency-Key", req->idempotency_key);
  if (rc == 0) {
    c->easy = curl_easy_init();
    if (c->easy == NULL)
      rc = SK_ENOMEM;
    else if (curl_easy_setopt(c->easy, CURLOPT_URL, u->valuestring) !=
             CURLE_OK)
      rc = invalid(c, "url is not an absolute http or https url");
  }
done:
  cJSON_Delete(in);
  return rc;
}

static size_t write_fn(char *p, size_t size, size_t n, void *ud) {
  hc_call *c = ud;
  size_t len = size * n;
  if (len > HTTPCALL_RESPONSE_MAX - c->resp.len) {
    c->too_large = true;
    return 0; /* != len: curl stops with CURLE_WRITE_ERROR */
  }
  buf_append(&c->resp, p, len);
  return buf_ok(&c->resp) ? len : 0;
}

static size_t header_fn(char *p, size_t size, size_t n, void *ud) {
  hc_call *c = ud;
  size_t len = size * n;
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    c->retry_after_s = -1; /* a new response (after a 1xx) */
  } else if (len > 12 && strncasecmp(p, "Retry-After:", 12) == 0) {
    char v[128];
    size_t i = 12, j = 0;
    while (i < len && (p[i] == ' ' || p[i] == '\t'))
      i++;
    while (i < len && j < sizeof(v) - 1 && p[i] != '\r' && p[i] != '\n')
      v[j++] = p[i++];
    while (j > 0 && (v[j - 1] == ' ' || v[j - 1] == '\t'))
      j--;
    v[j] = '\0';
    if (j > 0 && strspn(v, "0123456789") == j) {
      long long s = j > 9 ? 999999999LL : strtoll(v, NULL, 10);
      c->retry_after_s = s;
    } else if (j > 0) {
      time_t t = curl_getdate(v, NULL);
      if (t != (time_t)-1) {
        time_t now = time(NULL);
        c->retry_after_s = t > now ? (int64_t)(t - now) : 0;
      }
    }
  }
  return len;
}

#define SETOPT(opt, val)                                                       \
  do {                                                                         \
    if (curl_easy_setopt(e, opt, val) != CURLE_OK)                             \
      return SK_EINTERNAL;                                                     \
  } while (0)

static int easy_setup(hc_call *c) {
  CURL *e = c->easy;
  SETOPT(CURLOPT_PRIVATE, (char *)c);
  SETOPT(CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
  SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
  SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
  SETOPT(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
  SETOPT(CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
  SETOPT(CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
  SETOPT(CURLOPT_USERAGENT, "skald/" SKALD_VERSION_STRING);
  SETOPT(CURLOPT_HTTPHEADER, c->headers);
  SETOPT(CURLOPT_WRITEFUNCTION, write_fn);
  SETOPT(CURLOPT_WRITEDATA, c);
  SETOPT(CURLOPT_HEADERFUNCTION, header_fn);
  SETOPT(CURLOPT_HEADERDATA, c);
  SETOPT(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)HTTPCALL_RESPONSE_MAX);
  SETOPT(CURLOPT_ERRORBUFFER, c->errbuf);
  const char *m = c->method;
  if (strcmp(m, "HEAD") == 0) {
    SETOPT(CURLOPT_NOBODY, 1L);
    return 0;
  }
  if (strcmp(m, "GET") == 0 && c->body == NULL) {
    SETOPT(CURLOPT_HTTPGET, 1L);
    return 0;
  }
  if (strcmp(m, "POST") != 0)
    SETOPT(CURLOPT_CUSTOMREQUEST, m);
  if (c->body != NULL || strcmp(m, "DELETE") != 0) {
    /* POST/PUT/PATCH always send a length, 0 for no body. */
    SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->body_len);
    SETOPT(CURLOPT_POSTFIELDS, c->body != NULL ? c->body : "");
  }
  return 0;
}

/* ---- API --------------------------------------------------------------- */

int httpcall_init(httpcall *hc, uv_loop_t *loop) {
  if (hc == NULL || loop == NULL)
    return SK_EINVAL;
  memset(hc, 0, sizeof(*hc));
  pthread_once(&global_once, global_init);
  if (global_rc != CURLE_OK)
    return SK_EINTERNAL;
  CURLM *m = curl_multi_init();
  if (m == NULL)
    return SK_ENOMEM;
  if (curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, socket_fn) != CURLM_OK ||
      curl_multi_setopt(m, CURLMOPT_SOCKETDATA, hc) != CURLM_OK ||
      curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, timer_fn) != CURLM_OK ||
      curl_multi_setopt(m, CURLMOPT_TIMERDATA, hc) != CURLM_OK) {
    curl_multi_cleanup(m);
    return SK_EINTERNAL;
  }
  hc->loop = loop;
  hc->multi = m;
  hc->next_id = 1;
  /* uv_timer_init cannot fail. */
  uv_timer_init(loop, &hc->curl_timer);
  uv_timer_init(loop, &hc->tick);
  hc->curl_timer.data = hc;
  hc->tick.data = hc;
  return 0;
}

static bool key_ok(const char *k) {
  size_t n = strlen(k);
  return n > 0 && n <= SK_IDEMPOTENCY_KEY_MAX && strpbrk(k, "\r\n") == NULL;
}

int httpcall_start(httpcall *hc, const httpcall_request *req,
                   httpcall_done_fn cb, void *ud, uint64_t *id_out) {
  if (hc == NULL || req == NULL || cb == NULL || req->input_json == NULL ||
      req->idempotency_key == NULL || !key_ok(req->idempotency_key))
    return SK_EINVAL;
  if (hc->closing || hc->torn_down)
    return SK_ESHUTDOWN;
  hc_call *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return SK_ENOMEM;
  c->hc = hc;
  c->cb = cb;
  c->ud = ud;
  c->cancel_flag = req->cancel;
  c->retry_after_s = -1;
  c->out.retry_after_s = -1;
  c->timeout_ms = req->timeout_ms > 0 ? req->timeout_ms
                                      : HTTPCALL_DEFAULT_TIMEOUT_MS;
  buf_init(&c->resp);
  if (req->success_codes != NULL) {
    c->success = malloc((req->n_success_codes + 1) * sizeof(int));
    if (c->success == NULL) {
      call_free(c);
      return SK_ENOMEM;
    }
    memcpy(c->success, req->success_codes,
           req->n_success_codes * sizeof(int));
    c->n_success = req->n_success_codes;
  }
  int rc = build(c, req);
  if (rc == BUILD_OK) {
    rc = easy_setup(c);
    if (rc == 0 && curl_multi_add_handle(hc->multi, c->easy) != CURLM_OK)
      rc = SK_EINTERNAL;
  }
  if (rc < 0) {
    call_free(c);
    return rc;
  }
  if (c->state == CALL_DECIDED && c->easy != NULL) {
    curl_easy_cleanup(c->easy); /* invalid after curl_easy_init */
    c->easy = NULL;
  }
  c->id = hc->next_id++;
  call_link(hc, c);
  tick_arm(hc, c->state == CALL_DECIDED);
  if (id_out != NULL)
    *id_out = c->id;
  return 0;
}

int httpcall_cancel(httpcall *hc, uint64_t id) {
  if (hc == NULL)
    return SK_EINVAL;
  for (hc_call *c = hc->calls; c != NULL; c = c->next) {
    if (c->id == id) {
      c->cancel_requested = true;
      tick_arm(hc, true);
      return 0;
    }
  }
  return SK_ENOENT;
}

size_t httpcall_active(const httpcall *hc) {
  return hc != NULL ? hc->n_calls : 0;
}

int httpcall_close(httpcall *hc, httpcall_close_fn cb) {
  if (hc == NULL)
    return SK_EINVAL;
  if (hc->closing)
    return SK_ESTATE;
  hc->closing = true;
  hc->close_cb = cb;
  tick_arm(hc, true);
  return 0;
}

static void lower(char *s) {
  for (; *s; s++)
    if (*s >= 'A' && *s <= 'Z')
      *s = (char)(*s - 'A' + 'a');
}

int httpcall_breaker_key(const char *url, char *out, size_t len) {
  if (url == NULL || out == NULL || len == 0)
    return SK_EINVAL;
  pthread_once(&global_once, global_init);
  CURLU *u = curl_url();
  if (u == NULL)
    return SK_ENOMEM;
  char *scheme = NULL, *host = NULL, *port = NULL;
  int rc = SK_EINVAL;
  CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
  if (uc == CURLUE_OUT_OF_MEMORY)
    rc = SK_ENOMEM;
  if (uc != CURLUE_OK)
    goto done;
  if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK)
    goto done;
  lower(scheme);
  lower(host);
  if ((strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0) ||
      host[0] == '\0')
    goto done;
  int n = snprintf(out, len, "%s://%s:%s", scheme, host, port);
  rc = n >= 0 && (size_t)n < len ? 0 : SK_ETOOBIG;
done:
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return rc;
}

int httpcall_breaker_key_input(const char *input_json, char *out, size_t len) {
  if (input_json == NULL)
    return SK_EINVAL;
  cJSON *in = cJSON_Parse(input_json);
  if (in == NULL)
    return SK_EINVAL;
  const cJSON *u = cJSON_GetObjectItemCaseSensitive(in, "url");
  int rc = cJSON_IsString(u) ? httpcall_breaker_key(u->valuestring, out, len)
                             : SK_EINVAL;
  cJSON_Delete(in);
  return rc;
}
