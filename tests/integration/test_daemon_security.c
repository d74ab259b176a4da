/*
 * test_daemon_security.c — API keys and limits of the real daemon
 * (http-api.md "Security and limits"), over loopback:
 *   - with no key it refuses to listen beyond loopback, and says why;
 *   - once a key exists every API route needs it (401 without, or with a
 *     wrong or revoked one), health stays public, and beyond loopback it
 *     listens;
 *   - the per-key rate limit answers 429 with Retry-After and the
 *     X-RateLimit-* headers.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api/auth.h"
#include "daemon.h"
#include "pgtest.h"
#include "store/migrate.h"

static char db[512];
static skd_daemon d;

static void setup(void) {
  skd_global_init();
  cr_assert_eq(pgtest_fresh_db(db, sizeof(db)), 0);
}

static void teardown(void) {
  if (d.pid != 0)
    skd_stop(&d);
  unsetenv("SKALD_RATE_LIMIT");
  unsetenv("SKALD_RATE_BURST");
  pgtest_drop_db(db);
}

/* Creates a key directly in the database (what `skaldctl keys create`
 * does); returns it (malloc'd) and its id. */
static char *make_key(char id[AUTH_ID_LEN + 1]) {
  PGconn *c = PQconnectdb(db);
  cr_assert_eq(PQstatus(c), CONNECTION_OK);
  sk_error err = {0};
  cr_assert_eq(migrate_apply(c, NULL, &err), SK_OK, "%s", err.message);
  char *key = NULL;
  cr_assert_eq(auth_key_create(c, "test", &key, id, &err), SK_OK, "%s",
               err.message);
  PQfinish(c);
  return key;
}

/* Runs the daemon on 0.0.0.0:port in the foreground of a child; returns
 * its pid. Its stderr goes to log. */
static pid_t spawn_any(int port, const char *log) {
  pid_t pid = fork();
  cr_assert_neq(pid, -1);
  if (pid == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, STDERR_FILENO);
    char listen[64];
    snprintf(listen, sizeof(listen), "0.0.0.0:%d", port);
    execl(SKALD_BINARY_DIR "/skald", "skald", "--database-url", db,
          "--listen", listen, (char *)NULL);
    _exit(127);
  }
  return pid;
}

static bool log_has(const char *path, const char *needle) {
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return false;
  char line[2048];
  bool found = false;
  while (!found && fgets(line, sizeof(line), f) != NULL)
    found = strstr(line, needle) != NULL;
  fclose(f);
  return found;
}

Test(security, refuses_beyond_loopback_without_keys, .init = setup,
     .fini = teardown, .timeout = 60) {
  char log[64];
  snprintf(log, sizeof(log), "/tmp/skald-sec-%d.log", (int)getpid());
  pid_t pid = spawn_any(skd_free_port(), log);
  int st = 0;
  for (int i = 0; i < 300 && waitpid(pid, &st, WNOHANG) == 0; i++)
    skd_sleep_ms(100);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0,
            "the daemon listened beyond loopback without keys");
  cr_assert(log_has(log, "refusing to listen beyond loopback"),
            "the refusal does not say why");
  unlink(log);
}

static long status_of(const char *path, const char *auth) {
  char hdr[512];
  const char *h[2] = {hdr, NULL};
  if (auth != NULL)
    snprintf(hdr, sizeof(hdr), "Authorization: %s", auth);
  skd_resp r = {0};
  skd_http(&d, "GET", path, NULL, auth != NULL ? h : NULL, 0, &r);
  long s = r.status;
  if (s == 401)
    cr_assert_str_eq(skd_error_code(&r), "unauthorized");
  skd_resp_free(&r);
  return s;
}

Test(security, keys_guard_every_route_but_health, .init = setup,
     .fini = teardown, .timeout = 90) {
  char id[AUTH_ID_LEN + 1];
  char *key = make_key(id);
  skd_start(&d, db, 0, NULL, "sec");
  char bearer[256], wrong[256];
  snprintf(bearer, sizeof(bearer), "Bearer %s", key);
  snprintf(wrong, sizeof(wrong), "Bearer %.*sx", (int)strlen(key) - 1, key);
  cr_assert_eq(status_of("/v1/workflows", NULL), 401);
  cr_assert_eq(status_of("/v1/workflows", "Basic Zm9vOmJhcg=="), 401);
  cr_assert_eq(status_of("/v1/workflows", wrong), 401);
  cr_assert_eq(status_of("/v1/nodes", NULL), 401);
  cr_assert_eq(status_of("/v1/workflows", bearer), 200);
  cr_assert_eq(status_of("/health", NULL), 200, "liveness stays public");
  cr_assert_eq(status_of("/health/ready", NULL), 200);

  /* With a key, beyond loopback is allowed. */
  skd_stop(&d);
  char log[64];
  snprintf(log, sizeof(log), "/tmp/skald-sec-%d.log", (int)getpid());
  int port = skd_free_port();
  pid_t pid = spawn_any(port, log);
  d.port = port;
  snprintf(d.base, sizeof(d.base), "http://127.0.0.1:%d", port);
  long s = 0;
  for (int i = 0; i < 100 && s != 200; i++) {
    skd_sleep_ms(100);
    s = status_of("/v1/workflows", bearer);
  }
  cr_assert_eq(s, 200, "beyond loopback with a key it must serve");
  kill(pid, SIGTERM);
  int st;
  waitpid(pid, &st, 0);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  unlink(log);

  /* A revoked key stops working while other keys still do (after the
   * restart, the cache of verified keys is empty). */
  char id2[AUTH_ID_LEN + 1];
  char *key2 = make_key(id2);
  PGconn *c = PQconnectdb(db);
  sk_error err = {0};
  cr_assert_eq(auth_key_revoke(c, id, &err), SK_OK);
  PQfinish(c);
  skd_start(&d, db, 0, NULL, "sec2");
  char bearer2[256];
  snprintf(bearer2, sizeof(bearer2), "Bearer %s", key2);
  cr_assert_eq(status_of("/v1/workflows", bearer), 401, "revoked key");
  cr_assert_eq(status_of("/v1/workflows", bearer2), 200);
  free(key);
  free(key2);
}

Test(security, rate_limit_answers_429_with_headers, .init = setup,
     .fini = teardown, .timeout = 60) {
  setenv("SKALD_RATE_LIMIT", "1", 1);
  setenv("SKALD_RATE_BURST", "3", 1);
  skd_start(&d, db, 0, NULL, "rl");
  long last = 0;
  skd_resp r = {0};
  for (int i = 0; i < 4; i++) {
    skd_resp_free(&r);
    memset(&r, 0, sizeof(r));
    skd_get(&d, "/v1/workflows", &r);
    last = r.status;
    if (i < 3)
      cr_assert_eq(r.status, 200, "request %d within the burst", i + 1);
  }
  cr_assert_eq(last, 429);
  cr_assert_str_eq(skd_error_code(&r), "rate_limited");
  char v[32];
  cr_assert(skd_header(&r, "Retry-After", v, sizeof(v)));
  cr_assert_geq(atoi(v), 1);
  cr_assert(skd_header(&r, "X-RateLimit-Limit", v, sizeof(v)));
  cr_assert_str_eq(v, "3");
  cr_assert(skd_header(&r, "X-RateLimit-Remaining", v, sizeof(v)));
  cr_assert_str_eq(v, "0");
  cr_assert(skd_header(&r, "X-RateLimit-Reset", v, sizeof(v)));
  skd_resp_free(&r);
  /* Health is not rate limited. */
  for (int i = 0; i < 5; i++)
    cr_assert_eq(status_of("/health", NULL), 200);
}
