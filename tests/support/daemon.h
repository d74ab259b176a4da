/*
 * daemon.h — end-to-end test support: the real skald daemon as a child
 * process on a fresh database and a free loopback port, a small HTTP client
 * (libcurl) and a raw-socket client for requests curl will not send.
 *
 *   skd_daemon d;
 *   skd_start(&d, db, 0, "1000", "e2e");      // waits for GET /health
 *   skd_resp r;
 *   skd_post(&d, "/v1/workflows", spec, &r);   // r.status, r.body, r.json
 *   skd_resp_free(&r);
 *   skd_stop(&d);                               // SIGTERM; exit status
 *
 * Every wait is bounded. The daemon's stderr (its JSON log) goes to a file
 * whose tail is printed into the test log when a start fails.
 *
 * Thread: a skd_daemon belongs to one thread; skd_http may be called from
 * several threads at once (each call uses its own curl handle) once
 * skd_global_init ran.
 */
#ifndef SKALD_TESTS_DAEMON_H
#define SKALD_TESTS_DAEMON_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct skd_daemon {
  pid_t pid;              /* 0 when not running */
  int port;
  char db[512];           /* conninfo of its database */
  char base[64];          /* "http://127.0.0.1:<port>" */
  char log_path[256];     /* its stderr */
  char lease_ttl_ms[16];  /* "" = the daemon's default */
  char node[64];
} skd_daemon;

typedef struct skd_resp {
  long status;            /* 0 when the request could not be made */
  char *body;             /* NUL-terminated, never NULL after a call */
  size_t len;
  char *headers;          /* the raw response head */
  cJSON *json;            /* the body parsed, or NULL */
  double secs;            /* total time of the request */
} skd_resp;

/* curl_global_init, once per process. */
void skd_global_init(void);

/* A currently free loopback TCP port. */
int skd_free_port(void);

/* Starts build/skald on db at port (0: a free one) with the given lease TTL
 * ("" or NULL: default) and node name, and waits up to 30 s for /health.
 * Aborts the test (with the daemon's log) on failure. */
void skd_start(skd_daemon *d, const char *db, int port,
               const char *lease_ttl_ms, const char *node);
/* Starts again with the same settings (same port and database). */
void skd_restart(skd_daemon *d);
/* SIGTERM and wait (up to 15 s, then SIGKILL). Returns the wait status
 * (-1 if it had to be killed); 0 when it was not running. */
int skd_stop(skd_daemon *d);
/* SIGKILL now and reap. */
void skd_kill(skd_daemon *d);
/* Prints the last lines of the daemon's log into the test log. */
void skd_dump_log(const skd_daemon *d);

/* False (with the offending line in why) when the daemon's log shows a
 * sanitizer report (ASan, LSan, UBSan "runtime error:") or a crash. */
bool skd_log_clean(const skd_daemon *d, char *why, size_t len);

/* A request to d->base + path (body NULL: none). Returns 0, or -1 when no
 * HTTP answer came (connection refused, reset, timeout): r->status is 0.
 * timeout_ms 0 → 30 s. extra_headers: NULL-terminated list or NULL. */
int skd_http(const skd_daemon *d, const char *method, const char *path,
             const char *body, const char *const *extra_headers,
             long timeout_ms, skd_resp *r);
int skd_get(const skd_daemon *d, const char *path, skd_resp *r);
int skd_post(const skd_daemon *d, const char *path, const char *body,
             skd_resp *r);
void skd_resp_free(skd_resp *r);
/* Value of a response header (case-insensitive name) into out; false if
 * absent. */
bool skd_header(const skd_resp *r, const char *name, char *out, size_t len);
/* r->json's {"error":{"code"}} or "" when none. */
const char *skd_error_code(const skd_resp *r);

/* Raw socket: connects to port, sends len bytes of data (in one go), then
 * reads until the server closes or timeout_ms passes. Returns the HTTP
 * status of the first response, 0 if the server closed without one, -1 if
 * it could not connect or the read timed out. *reply (may be NULL) gets
 * what was read (malloc'd). */
int skd_raw(int port, const void *data, size_t len, int timeout_ms,
            char **reply);

/* Milliseconds of a monotonic clock. */
int64_t skd_now_ms(void);
void skd_sleep_ms(long ms);

#endif /* SKALD_TESTS_DAEMON_H */
