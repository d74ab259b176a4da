/*
 * httpcall.h — runs `http` tasks with libcurl's multi interface on a libuv
 * loop: one httpcall per loop, many calls in flight, results back on the
 * loop thread.
 *
 * A call's input is the task input the decider renders for an http action:
 *   {"method": "POST", "url": "https://h/p", "headers": {...}, "body": ...}
 * Its outcome follows the workflow spec (`http` step kind):
 *   - a status in success_codes (default: any 2xx) → ok; output = the
 *     response body when it is valid JSON, else {"status": N, "body": "<text,
 *     first 64 KiB>"}, or {"status": N} for an empty body;
 *   - otherwise an error {type, message, retryable}:
 *       HttpStatus        retryable for 408, 429 and 5xx; not for other 4xx,
 *                         for 3xx (redirects are never followed) or for a
 *                         2xx that success_codes leaves out;
 *       Timeout           no complete answer within timeout_ms (retryable);
 *       ConnectionError   refused, reset, closed mid-response, DNS, TLS
 *                         (retryable);
 *       ResponseTooLarge  body over HTTPCALL_RESPONSE_MAX (not retryable);
 *       InvalidRequest    input not an object, bad method / url / scheme /
 *                         headers (not retryable);
 *       Cancelled         httpcall_cancel, the cancel flag, or httpcall_close
 *                         (not retryable, as the decider's own Cancelled).
 *
 * Every request carries `Idempotency-Key: <key>`, `User-Agent:
 * skald/<version>` (unless the headers set one) and, for a JSON body,
 * `Content-Type: application/json` (unless the headers set one). A string
 * body is sent as its raw text (default type text/plain; charset=utf-8),
 * any other JSON body compact. Only http and https; no redirects; no
 * signals.
 *
 * Thread: everything here runs on the loop thread only, callbacks included.
 */
#ifndef SKALD_EXEC_HTTPCALL_H
#define SKALD_EXEC_HTTPCALL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/err.h"

#define HTTPCALL_RESPONSE_MAX SK_PAYLOAD_MAX    /* body bytes kept, 1 MiB */
#define HTTPCALL_TEXT_BODY_MAX (64 * 1024)      /* non-JSON body in output */
#define HTTPCALL_DEFAULT_TIMEOUT_MS 30000       /* timeout_ms <= 0 */
#define HTTPCALL_TICK_MS 50                     /* cancel-flag polling */
#define HTTPCALL_MESSAGE_MAX 1024
#define HTTPCALL_KEY_MAX 320                    /* breaker key buffer */

typedef struct httpcall httpcall;

/* What a finished call hands back. Valid for the duration of the done
 * callback; the callback may take `output` (set it to NULL, then free() it
 * later); whatever is left is freed after the callback returns. */
typedef struct httpcall_outcome {
  bool ok;
  int status;              /* HTTP status; 0 when there was no response */
  char *output;            /* ok: compact JSON text (malloc'd) */
  const char *err_type;    /* !ok: static string ("HttpStatus", ...) */
  char err_message[HTTPCALL_MESSAGE_MAX]; /* !ok: lowercase, no url path */
  bool retryable;          /* !ok */
  int64_t retry_after_s;   /* Retry-After in seconds (date → delta); -1 if
                            * absent or unparseable; any status */
} httpcall_outcome;

/* id: what httpcall_start returned. Runs on the loop thread, never inside
 * httpcall_start/cancel/close. It may start or cancel other calls and may
 * call httpcall_close. */
typedef void (*httpcall_done_fn)(uint64_t id, httpcall_outcome *out,
                                 void *ud);
typedef void (*httpcall_close_fn)(httpcall *hc);

typedef struct httpcall_request {
  const char *input_json;       /* {"method","url","headers","body"} */
  const char *idempotency_key;  /* required, sent as Idempotency-Key */
  int64_t timeout_ms;           /* whole call; <= 0 → default */
  const int *success_codes;     /* NULL → any 2xx */
  size_t n_success_codes;
  /* Optional: a flag another thread may set; checked every
   * HTTPCALL_TICK_MS; must outlive the call (until its callback). */
  atomic_bool *cancel;
} httpcall_request;

typedef struct hc_call hc_call;
typedef struct hc_sock hc_sock;

/* Embed in the owner; fields are private. */
struct httpcall {
  uv_loop_t *loop;
  void *multi;            /* CURLM * */
  uv_timer_t curl_timer;  /* CURLMOPT_TIMERFUNCTION */
  uv_timer_t tick;        /* cancel flags, deferred outcomes, close */
  hc_call *calls;         /* in flight or outcome pending */
  hc_sock *socks;         /* uv_poll handles for curl's sockets */
  uint64_t next_id;
  size_t n_calls;
  int pending_closes;     /* uv_close callbacks still to come */
  bool closing;
  bool torn_down;
  httpcall_close_fn close_cb;
  void *data;             /* for the owner */
};

/* Sets up hc on loop (curl_global_init happens once per process).
 * Errors: SK_EINVAL, SK_ENOMEM, SK_EINTERNAL (curl refused). On error
 * nothing needs closing. */
int httpcall_init(httpcall *hc, uv_loop_t *loop) SK_MUST_CHECK;

/* Starts a call. The request is copied; nothing in it need outlive this
 * call except *cancel. On 0, cb runs exactly once, later, on the loop
 * thread (an invalid request is reported there as InvalidRequest); *id_out
 * (optional) gets the call's id. On error cb never runs.
 * Errors: SK_EINVAL (NULL hc/req/cb/input/key, or a key with CR/LF or over
 * SK_IDEMPOTENCY_KEY_MAX), SK_ESHUTDOWN (closing), SK_ENOMEM,
 * SK_EINTERNAL (curl refused the handle). */
int httpcall_start(httpcall *hc, const httpcall_request *req,
                   httpcall_done_fn cb, void *ud, uint64_t *id_out)
    SK_MUST_CHECK;

/* Asks the call to stop; its callback runs later with "Cancelled" (or with
 * its real outcome if that was already decided). SK_ENOENT when no call
 * with that id is pending (already finished). */
int httpcall_cancel(httpcall *hc, uint64_t id);

/* Number of calls whose callback has not run yet. */
size_t httpcall_active(const httpcall *hc);

/* Starts closing: every pending call finishes with "Cancelled" (calls whose
 * outcome was already decided get that one), curl is cleaned up, all
 * handles are closed, then cb (optional) runs; after it no callback of
 * this hc runs and its memory may be reused. SK_ESTATE if already closing. */
int httpcall_close(httpcall *hc, httpcall_close_fn cb);

/* The circuit-breaker key of a url: "scheme://host:port", scheme and host
 * lowercase, port explicit (default 80/443), IPv6 hosts in brackets.
 * Errors: SK_EINVAL (not an absolute http/https url), SK_ETOOBIG (len too
 * small; HTTPCALL_KEY_MAX fits any DNS name), SK_ENOMEM. */
int httpcall_breaker_key(const char *url, char *buf, size_t len);

/* Same, from an http task's input JSON ({"url": ...}). */
int httpcall_breaker_key_input(const char *input_json, char *buf, size_t len);

#endif /* SKALD_EXEC_HTTPCALL_H */
