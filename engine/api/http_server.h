/*
 * http_server.h — the HTTP/1.1 server core of the API: a libuv TCP listener,
 * connections parsed with http_parser, limits, keep-alive, pipelining,
 * deferred responses and graceful shutdown. Routes come from router.h.
 *
 *   http_server *s;
 *   http_server_config cfg;
 *   http_server_config_init(&cfg);
 *   if (http_server_new(loop, &cfg, routes, &s) == 0 &&
 *       http_server_listen(s, "127.0.0.1:7070", &err) == 0) ...
 *   http_server_stop(s, 5000, on_stopped, ud);  ... on_stopped: free
 *
 * Every error response is {"error":{"code","message","details":[]}} with
 * the status of spec/http-api.md. Every response carries Content-Length,
 * Content-Type when it has a body, and "Connection: close" when the server
 * closes after it. What the connection answers by itself:
 *
 *   400 bad_request         malformed HTTP (request line, unknown method,
 *                           header syntax, lengths, chunking), a URL not in
 *                           origin form, "." / ".." segments, bad escapes,
 *                           control bytes; closes. Invalid path parameters
 *                           (see router.h) also get 400 but keep the
 *                           connection.
 *   404 not_found           no route for the path (keeps the connection)
 *   405 method_not_allowed  route exists for other methods; Allow header
 *   408 request_timeout     request not complete within request_timeout_ms
 *   413 payload_too_large   Content-Length or chunked body over max_body
 *   414 uri_too_long        URL over max_url
 *   431 headers_too_large   header bytes or count over the limits
 *   503 unavailable         over max_conns (then closed)
 *   505 http_version_not_supported  anything but HTTP/1.0 and HTTP/1.1
 *
 * The limits are judged where the answer cannot depend on how TCP split
 * the request into reads (http_tally.h): at the end of the head, at the
 * end of the message, and every 4 KiB of the stream, so a request past a
 * limit is refused within 4 KiB of it, or at the end of its head (or
 * body) if that comes first.
 *
 * Errors that end the connection are followed by a lingering close (FIN,
 * then the rest of the request is drained for linger_ms) so the client
 * reads the response instead of a reset. Idle keep-alive connections are
 * closed silently after idle_timeout_ms. Not supported: upgrades and
 * CONNECT (answered, then closed), "Expect: 100-continue" (the client
 * just sends the body after its own wait). Chunked trailer fields are
 * kept as headers and count against the header limits.
 *
 * Thread: everything here runs on the loop thread, except that
 * http_parse_listen and the config helpers are pure.
 */
#ifndef SKALD_API_HTTP_SERVER_H
#define SKALD_API_HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sys/socket.h>
#include <uv.h>

#include "api/router.h"
#include "common/buf.h"
#include "common/err.h"

typedef struct http_server_config {
  size_t max_body;             /* bytes; 1 MiB; over → 413 */
  size_t max_header_bytes;     /* names + values; 16 KiB; over → 431 */
  int max_headers;             /* 100; over → 431 */
  size_t max_url;              /* 8 KiB; over → 414 */
  uint64_t request_timeout_ms; /* first byte to last; 10 s; over → 408 */
  uint64_t idle_timeout_ms;    /* keep-alive idle; 60 s; then closed */
  uint64_t linger_ms;          /* drain after the last response; 2 s */
  int max_conns;               /* 1024; over → 503 then close */
  int max_pipeline;            /* queued requests per connection; 16 */
} http_server_config;

typedef struct http_server http_server;
typedef void (*http_server_stop_cb)(http_server *s, void *udata);

/* Fills the defaults above. */
void http_server_config_init(http_server_config *c);

/* Parses "host:port" where host is an IPv4 literal, "[IPv6]" literal or
 * "localhost", and port 0..65535 (0: ephemeral). Errors: SK_EINVAL with a
 * message in err ("listen address must be host:port", ...). */
int http_parse_listen(const char *text, struct sockaddr_storage *out,
                      sk_error *err) SK_MUST_CHECK;

/* Creates a server on loop; cfg is copied, routes is borrowed and must
 * outlive the server. Errors: SK_EINVAL, SK_ENOMEM. */
int http_server_new(uv_loop_t *loop, const http_server_config *cfg,
                    const router *routes, http_server **out) SK_MUST_CHECK;

/* Binds and listens. Errors: SK_EINVAL (bad address, message in err),
 * SK_EIO (bind/listen failed, message in err), SK_ESTATE (already
 * listening or stopped). After SK_EIO the listener handle is closing: run
 * the loop (or stop the server) before http_server_free. */
int http_server_listen(http_server *s, const char *host_port,
                       sk_error *err) SK_MUST_CHECK;

/* The bound port (useful after listening on port 0); 0 if not listening. */
int http_server_port(const http_server *s);

/* Stops accepting, closes idle connections, lets requests in flight finish
 * (their responses say Connection: close) and, after timeout_ms, closes the
 * rest. cb runs once every handle of the server is closed; then, and only
 * then, http_server_free may be called. Errors: SK_EINVAL (NULL cb),
 * SK_ESTATE (already stopping); on error cb never runs. */
int http_server_stop(http_server *s, uint64_t timeout_ms,
                     http_server_stop_cb cb, void *udata) SK_MUST_CHECK;

/* Frees a server that never listened or whose stop callback has run. */
void http_server_free(http_server *s);

/* ---- requests (borrowed by handlers until the response is written) ---- */

int http_request_method(const http_request *req);       /* enum http_method */
const char *http_request_path(const http_request *req); /* raw, no query */
/* First header with this name (case-insensitive), or NULL. */
const char *http_request_header(const http_request *req, const char *name);
/* Decoded path parameter of the route ("id" for {id}), or NULL. */
const char *http_request_param(const http_request *req, const char *name);
/* Decoded query parameter (first with this key), or NULL. */
const char *http_request_query(const http_request *req, const char *key);
/* The body (NUL-terminated; "" when empty); *len may be NULL. */
const char *http_request_body(const http_request *req, size_t *len);

/* Memory from the request's arena, freed in one go once the response is
 * written (or the connection is gone). NULL on OOM. */
void *http_request_alloc(http_request *req, size_t size);
char *http_request_strdup(http_request *req, const char *s);

/* Checks the body with json_check(max_depth) and, when it fails, fills an
 * error response (400 invalid_json, or 413 payload_too_large). Returns 0
 * when the handler may parse the body with cJSON. */
int http_request_json_check(http_request *req, int max_depth);

/* Called inside a handler: the response is completed later by
 * http_respond(), on the loop thread (a worker thread hands its result back
 * through uv_async_t or uv_queue_work's after-callback). Responses still
 * leave in request order; the request and its arena stay valid until
 * http_respond. */
void http_request_defer(http_request *req);
/* Completes a deferred response. If the connection was closed meanwhile
 * the request is just freed. req must not be used afterwards. */
void http_respond(http_request *req);
/* True when the client is gone; the handler may still call http_respond. */
bool http_request_aborted(const http_request *req);
http_response *http_request_response(http_request *req);

/* ---- responses ---- */

void http_response_status(http_response *resp, int status);
/* Adds a header (copied). CR/LF in name or value → SK_EINVAL. Content-Length
 * and Connection are the server's: SK_EINVAL. */
int http_response_header(http_response *resp, const char *name,
                         const char *value);
/* Sets the body (copied) with its content type (NULL: none). */
void http_response_body(http_response *resp, const char *content_type,
                        const void *data, size_t len);
/* Status and a JSON body (copied) with Content-Type application/json. */
void http_response_json(http_response *resp, int status, const char *json);
/* Status and {"error":{"code","message","details":[]}}. */
void http_response_error(http_response *resp, int status, const char *code,
                         const char *message);

/* ---- private: shared by http_server.c and http_conn.c only ---- */

typedef struct http_conn http_conn;

#define HTTP_QUERY_MAX 32

/* A request's arena: blocks freed together with the request. */
typedef struct http_arena_block {
  struct http_arena_block *next;
  size_t used, cap;
  max_align_t data[];
} http_arena_block;

typedef struct http_header {
  const char *name, *value;
} http_header;

typedef struct http_resp_header {
  struct http_resp_header *next;
  const char *name, *value;
} http_resp_header;

struct http_response {
  http_request *req;
  int status;
  const char *content_type;
  http_resp_header *headers, *headers_tail;
  buf body;
};

struct http_request {
  http_conn *conn; /* NULL once orphaned */
  http_request *next;
  http_arena_block *arena;
  int method;
  bool keep_alive, deferred, done, close_after, http10;
  const char *path;
  router_kv query[HTTP_QUERY_MAX];
  int nquery;
  router_match match;
  http_header *headers;
  int nheaders;
  buf url, body, head;
  http_response resp;
};

struct http_server {
  uv_loop_t *loop;
  http_server_config cfg;
  const router *routes;
  uv_tcp_t listener;
  uv_timer_t stop_timer;
  bool listening, stopping, listener_open, listener_closing;
  bool timer_open, timer_closing;
  int port;
  int nconns;
  http_conn *conns; /* all live connections, doubly linked */
  http_server_stop_cb stop_cb;
  void *stop_ud;
  char rbuf[65536]; /* shared read buffer: parsing copies what it keeps */
};

/* http_conn.c: accepts one connection from the listener (refusing it with
 * 503 when over max_conns). */
void http_conn_accept(http_server *s);
/* http_conn.c: on stop, closes the connection if idle, else marks it to
 * close after its in-flight requests. */
void http_conn_stop(http_conn *c);
/* http_conn.c: closes the connection now. */
void http_conn_close(http_conn *c);
http_conn *http_conn_next(const http_conn *c);
/* http_conn.c: writes ready responses at the head of the queue. */
void http_conn_flush(http_conn *c);
/* http_server.c: a request for c with its own arena; NULL on OOM. */
http_request *http_server_request_new(http_conn *c);
/* http_server.c: frees a request, its arena and buffers; NULL is a no-op. */
void http_server_request_free(http_request *req);
/* http_server.c: a connection was freed; may finish a stop. */
void http_server_conn_gone(http_server *s, http_conn *c);

#endif /* SKALD_API_HTTP_SERVER_H */
