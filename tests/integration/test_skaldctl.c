/*
 * test_skaldctl.c — the CLI end to end: a real daemon (build/skald) on a
 * fresh database and a free loopback port, and build/skaldctl run as a real
 * process for every command, checking its exit code, stdout and stderr:
 * apply (created, unchanged, invalid with JSON Pointers, conflict), start
 * (idempotency key, --wait exit codes), get, list (--all across pages),
 * timeline (step names, not indexes), cancel, replay (errors, a new linked
 * run, bulk), nodes, health, keys (a daemon restarted with keys refuses
 * requests without one), verify, usage errors (2), an unreachable server
 * (5), and --help on every command.
 *
 * Each test starts its own daemon and database and stops the daemon with
 * SIGTERM, expecting a clean exit 0, then drops the database.
 */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pgtest.h"
#include "testutil.h"

#define CTL SKALD_BINARY_DIR "/skaldctl"
#define DAEMON SKALD_BINARY_DIR "/skald"
#define MAX_RESULTS 256
#define MAX_FILES 16

typedef struct result {
  int code;
  char *out;
  char *err;
} result;

static char ci[1024];
static char dir[64];
static char url[64];
static pid_t daemon_pid = -1;
static result *results[MAX_RESULTS];
static int nresults;
static char *files[MAX_FILES];
static int nfiles;

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  socklen_t len = sizeof(a);
  cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

static size_t discard(char *p, size_t s, size_t n, void *ud) { return s * n; }

static long http_get_status(const char *path) {
  CURL *h = curl_easy_init();
  char u[128];
  snprintf(u, sizeof(u), "%s%s", url, path);
  curl_easy_setopt(h, CURLOPT_URL, u);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 500L);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
  long st = 0;
  if (curl_easy_perform(h) == CURLE_OK)
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &st);
  curl_easy_cleanup(h);
  return st;
}

static size_t collect(char *p, size_t s, size_t n, void *ud) {
  char **out = ud;
  size_t have = *out != NULL ? strlen(*out) : 0;
  char *m = realloc(*out, have + s * n + 1);
  cr_assert_not_null(m);
  memcpy(m + have, p, s * n);
  m[have + s * n] = '\0';
  *out = m;
  return s * n;
}

/* POSTs JSON as a remote worker would; returns the body (caller frees). */
static char *http_post(const char *path, const char *body) {
  CURL *h = curl_easy_init();
  char u[256];
  snprintf(u, sizeof(u), "%s%s", url, path);
  struct curl_slist *hdr =
      curl_slist_append(NULL, "Content-Type: application/json");
  char *out = NULL;
  curl_easy_setopt(h, CURLOPT_URL, u);
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 10000L);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &out);
  long st = 0;
  cr_assert_eq(curl_easy_perform(h), CURLE_OK);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &st);
  curl_slist_free_all(hdr);
  curl_easy_cleanup(h);
  cr_assert_eq(st, 200, "POST %s: %ld %s", path, st, out ? out : "");
  return out;
}

/* Leases the next task of type `type` and fails it for good. */
static void fail_next_task(const char *type) {
  char body[256];
  snprintf(body, sizeof(body),
           "{\"worker_id\":\"ctl-test\",\"task_types\":[\"%s\"],"
           "\"max\":1,\"wait_ms\":10000}",
           type);
  char *got = http_post("/v1/tasks/poll", body);
  cJSON *j = cJSON_Parse(got);
  free(got);
  const cJSON *t = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "tasks"), 0);
  cr_assert_not_null(t, "no task of type %s was leased", type);
  char path[256];
  snprintf(path, sizeof(path), "/v1/tasks/%s/fail",
           cJSON_GetStringValue(cJSON_GetObjectItem(t, "task_id")));
  snprintf(body, sizeof(body),
           "{\"lease_token\":%.0f,\"error\":{\"type\":\"CardDeclined\","
           "\"message\":\"insufficient funds\",\"retryable\":false}}",
           cJSON_GetNumberValue(cJSON_GetObjectItem(t, "lease_token")));
  cJSON_Delete(j);
  free(http_post(path, body));
}

/* Starts the daemon on a free port; retries with another port if it dies
 * (a port taken between our probe and its bind). */
static void daemon_start(void) {
  for (int attempt = 0; attempt < 5; attempt++) {
    int port = free_port();
    char listen[32], log[96];
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    snprintf(url, sizeof(url), "http://%s", listen);
    snprintf(log, sizeof(log), "%s/daemon.log", dir);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
      int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
      dup2(fd, 2);
      dup2(open("/dev/null", O_WRONLY), 1);
      execl(DAEMON, DAEMON, "--database-url", ci, "--listen", listen,
            "--node-name", "ctl-test-node", "--log-level", "1", (char *)NULL);
      _exit(127);
    }
    for (int i = 0; i < 300; i++) { /* up to ~30 s */
      int st;
      if (waitpid(pid, &st, WNOHANG) == pid) {
        pid = -1;
        break;
      }
      if (http_get_status("/health") == 200) {
        daemon_pid = pid;
        return;
      }
      sleep_ms(100);
    }
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
    }
  }
  cr_assert_fail("the daemon did not start (see %s/daemon.log)", dir);
}

/* SIGTERM; returns the exit status (or -1 if it had to be killed). */
static int daemon_stop(void) {
  if (daemon_pid <= 0)
    return 0;
  kill(daemon_pid, SIGTERM);
  int st = 0;
  for (int i = 0; i < 200; i++) {
    if (waitpid(daemon_pid, &st, WNOHANG) == daemon_pid) {
      daemon_pid = -1;
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    sleep_ms(100);
  }
  kill(daemon_pid, SIGKILL);
  waitpid(daemon_pid, NULL, 0);
  daemon_pid = -1;
  return -1;
}

static void daemon_stop_clean(void) {
  cr_expect_eq(daemon_stop(), 0, "the daemon did not exit 0 on SIGTERM");
}

static char *slurp(const char *path) {
  char *s = testutil_read_file(path, NULL);
  return s != NULL ? s : strdup("");
}

/* Runs skaldctl with argv (NULL-terminated) and env assignments
 * ("NAME=value", NULL-terminated; may be NULL). The SKALD_* variables of
 * the test's own environment are cleared first. */
static result *run(const char *const *env, const char *const *argv) {
  char out[96], err[96];
  snprintf(out, sizeof(out), "%s/out", dir);
  snprintf(err, sizeof(err), "%s/err", dir);
  pid_t pid = fork();
  cr_assert(pid >= 0);
  if (pid == 0) {
    dup2(open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600), 1);
    dup2(open(err, O_WRONLY | O_CREAT | O_TRUNC, 0600), 2);
    dup2(open("/dev/null", O_RDONLY), 0);
    const char *clear[] = {"SKALD_URL", "SKALD_API_KEY", "SKALD_API_KEY_FILE",
                           "SKALD_DATABASE_URL", "SKALD_DATABASE_URL_FILE"};
    for (size_t i = 0; i < sizeof(clear) / sizeof(clear[0]); i++)
      unsetenv(clear[i]);
    for (int i = 0; env != NULL && env[i] != NULL; i++)
      putenv((char *)env[i]);
    execv(CTL, (char *const *)argv);
    _exit(127);
  }
  int st = 0;
  cr_assert_eq(waitpid(pid, &st, 0), pid);
  cr_assert(nresults < MAX_RESULTS);
  result *r = calloc(1, sizeof(*r));
  r->code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r->out = slurp(out);
  r->err = slurp(err);
  results[nresults++] = r;
  return r;
}

/* skaldctl --url <the daemon> args... */
static result *ctl(const char *first, ...) {
  const char *argv[32] = {CTL, "--url", url, first};
  int n = 4;
  va_list ap;
  va_start(ap, first);
  const char *a;
  while ((a = va_arg(ap, const char *)) != NULL && n < 31)
    argv[n++] = a;
  va_end(ap);
  argv[n] = NULL;
  return run(NULL, argv);
}

#define EXPECT_CODE(r, c)                                                      \
  cr_assert_eq((r)->code, (c), "exit %d, want %d\nstdout: %s\nstderr: %s",     \
               (r)->code, (c), (r)->out, (r)->err)
#define HAS(s, sub)                                                            \
  cr_assert(strstr((s), (sub)) != NULL, "no \"%s\" in:\n%s", (sub), (s))
#define HASNT(s, sub)                                                          \
  cr_assert(strstr((s), (sub)) == NULL, "unexpected \"%s\" in:\n%s", (sub), (s))

static const char *write_file(const char *name, const char *text) {
  char *p = NULL;
  cr_assert(asprintf(&p, "%s/%s", dir, name) > 0);
  FILE *f = fopen(p, "w");
  cr_assert_not_null(f);
  fputs(text, f);
  fclose(f);
  cr_assert(nfiles < MAX_FILES);
  files[nfiles++] = p;
  return p;
}

static const char *NAP = "{\"name\":\"napper\",\"version\":1,\"steps\":["
                         "{\"name\":\"nap\",\"sleep\":{\"ms\":50}},"
                         "{\"name\":\"second_nap\",\"sleep\":{\"ms\":20}}]}";
static const char *LONG =
    "{\"name\":\"longnap\",\"version\":1,\"steps\":["
    "{\"name\":\"wait_long\",\"sleep\":{\"ms\":600000}}]}";

/* The saga id on the first line of r's stdout. */
static void first_line(const result *r, char id[64]) {
  snprintf(id, 64, "%.*s", (int)strcspn(r->out, "\n"), r->out);
  cr_assert_eq(strlen(id), 36, "not a saga id: %s", r->out);
}

static void apply_specs(void) {
  EXPECT_CODE(ctl("apply", write_file("nap.json", NAP), NULL), 0);
  EXPECT_CODE(ctl("apply", write_file("long.json", LONG), NULL), 0);
}

/* Waits until saga id has status (via skaldctl get --json). */
static void wait_status(const char *id, const char *status) {
  for (int i = 0; i < 200; i++) {
    result *r = ctl("--json", "get", id, NULL);
    EXPECT_CODE(r, 0);
    cJSON *j = cJSON_Parse(r->out);
    bool ok = strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "status")),
                     status) == 0;
    cJSON_Delete(j);
    if (ok)
      return;
    sleep_ms(50);
  }
  cr_assert_fail("saga %s never became %s", id, status);
}

static void setup(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  snprintf(dir, sizeof(dir), "/tmp/skaldctl_test_XXXXXX");
  cr_assert_not_null(mkdtemp(dir));
  cr_assert_eq(pgtest_fresh_db(ci, sizeof(ci)), 0);
  daemon_start();
}

static void teardown(void) {
  daemon_stop();
  pgtest_drop_db(ci);
  for (int i = 0; i < nresults; i++) {
    free(results[i]->out);
    free(results[i]->err);
    free(results[i]);
  }
  nresults = 0;
  for (int i = 0; i < nfiles; i++) {
    unlink(files[i]);
    free(files[i]);
  }
  nfiles = 0;
  char p[128];
  const char *leftovers[] = {"out", "err", "daemon.log", "key"};
  for (size_t i = 0; i < sizeof(leftovers) / sizeof(leftovers[0]); i++) {
    snprintf(p, sizeof(p), "%s/%s", dir, leftovers[i]);
    unlink(p);
  }
  rmdir(dir);
  curl_global_cleanup();
}

TestSuite(skaldctl, .init = setup, .fini = teardown, .timeout = 90);

Test(skaldctl, help_usage_and_unreachable) {
  const char *cmds[] = {"apply",    "start",  "get",    "list",
                        "timeline", "cancel", "replay", "nodes",
                        "health",   "keys",   "verify"};
  for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
    result *r = ctl(cmds[i], "--help", NULL);
    EXPECT_CODE(r, 0);
    char want[32];
    snprintf(want, sizeof(want), "skaldctl %s", cmds[i]);
    HAS(r->out, want);
  }
  result *r = ctl("--help", NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "timeline SAGA_ID");

  /* Usage errors: exit 2 with the usage on stderr. */
  const char *const no_cmd[] = {CTL, NULL};
  EXPECT_CODE(run(NULL, no_cmd), 2);
  const char *bad[][4] = {{"bogus", NULL},
                          {"start", NULL},
                          {"get", NULL},
                          {"get", "a", "b", NULL},
                          {"list", "--limit", "0", NULL},
                          {"list", "--bogus", NULL},
                          {"start", "napper", "--input", "not json"},
                          {"start", "napper", "--input", "[1]"},
                          {"keys", "rotate", NULL},
                          {"keys", "create", NULL},
                          {"replay", NULL},
                          {"verify", NULL}};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    r = ctl(bad[i][0], bad[i][1], bad[i][2], bad[i][3], NULL);
    EXPECT_CODE(r, 2);
    HAS(r->err, "usage:");
  }
  const char *const bad_url[] = {CTL, "--url", "ftp://x", "health", NULL};
  EXPECT_CODE(run(NULL, bad_url), 2);

  /* Nothing listens on a port we just closed: exit 5, the URL named. */
  char closed[64];
  snprintf(closed, sizeof(closed), "http://127.0.0.1:%d", free_port());
  const char *const unreach[] = {CTL, "--url", closed, "list", NULL};
  r = run(NULL, unreach);
  EXPECT_CODE(r, 5);
  HAS(r->err, closed);
  char env[96];
  snprintf(env, sizeof(env), "SKALD_URL=%s", closed);
  const char *const envs[] = {env, NULL};
  const char *const health[] = {CTL, "health", NULL};
  EXPECT_CODE(run(envs, health), 5);
  daemon_stop_clean();
}

Test(skaldctl, apply) {
  const char *nap = write_file("nap.json", NAP);
  result *r = ctl("apply", nap, NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "created napper version 1");
  r = ctl("apply", nap, NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "unchanged napper version 1");
  r = ctl("--json", "apply", nap, NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "\"name\":\"napper\"");

  r = ctl("apply",
          write_file("bad.json", "{\"name\":\"Bad Name\",\"version\":0,"
                                 "\"steps\":[{\"name\":\"x\"}]}"),
          NULL);
  EXPECT_CODE(r, 1);
  HAS(r->err, "skaldctl: invalid_spec: ");
  HAS(r->err, "\n  /version: ");
  HAS(r->err, "\n  /name: ");
  HAS(r->err, "\n  /steps/0: ");

  r = ctl("apply",
          write_file("conflict.json",
                     "{\"name\":\"napper\",\"version\":1,\"steps\":["
                     "{\"name\":\"nap\",\"sleep\":{\"ms\":99}}]}"),
          NULL);
  EXPECT_CODE(r, 1);
  HAS(r->err, "skaldctl: version_conflict: ");
  r = ctl("apply", "/nonexistent/spec.json", NULL);
  cr_assert_neq(r->code, 0);
  HAS(r->err, "/nonexistent/spec.json");
  daemon_stop_clean();
}

Test(skaldctl, start_get_list_timeline) {
  apply_specs();
  result *r =
      ctl("start", "napper", "--input", "{\"a\":1}", "--wait", "20", NULL);
  EXPECT_CODE(r, 0);
  char id[64];
  first_line(r, id);
  HAS(r->out, "\ncompleted\n");

  r = ctl("get", id, NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, id);
  HAS(r->out, "completed");
  HAS(r->out, "second_nap");
  HAS(r->out, "{\"a\":1}");
  r = ctl("--json", "get", id, NULL);
  EXPECT_CODE(r, 0);
  cJSON *j = cJSON_Parse(r->out);
  cr_assert_not_null(j);
  cJSON_Delete(j);

  r = ctl("timeline", id, NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "SEQ");
  HAS(r->out, "SagaStarted");
  HAS(r->out, "StepCompleted  nap ");
  HAS(r->out, "second_nap");
  HAS(r->out, "SagaCompleted");
  HASNT(r->out, "#0");
  r = ctl("--json", "timeline", id, NULL);
  EXPECT_CODE(r, 0);
  j = cJSON_Parse(r->out);
  cr_assert(cJSON_GetArraySize(cJSON_GetObjectItem(j, "events")) >= 6);
  cJSON_Delete(j);

  /* An idempotency key gives the same saga back. */
  r = ctl("start", "napper", "--key", "order-7", NULL);
  EXPECT_CODE(r, 0);
  char k1[64], k2[64];
  first_line(r, k1);
  r = ctl("start", "napper", "--key", "order-7", "--wait", NULL);
  EXPECT_CODE(r, 0);
  first_line(r, k2);
  cr_assert_str_eq(k1, k2);
  r = ctl("start", "longnap", "--version", "1", NULL);
  EXPECT_CODE(r, 0);

  /* Three sagas: one page of one, then every page with --all. */
  r = ctl("list", "--limit", "1", NULL);
  EXPECT_CODE(r, 0);
  HAS(r->err, "--all");
  int lines = 0;
  for (const char *p = r->out; (p = strchr(p, '\n')) != NULL; p++)
    lines++;
  cr_assert_eq(lines, 2, "%s", r->out);
  r = ctl("list", "--all", "--limit", "1", NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, id);
  HAS(r->out, k1);
  HAS(r->out, "longnap");
  r = ctl("--json", "list", "--all", "--limit", "1", NULL);
  EXPECT_CODE(r, 0);
  j = cJSON_Parse(r->out);
  cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "sagas")), 3);
  cJSON_Delete(j);
  r = ctl("list", "--status", "completed", "--workflow", "napper", NULL);
  EXPECT_CODE(r, 0);
  HASNT(r->out, "longnap");
  HAS(r->out, id);
  r = ctl("list", "--status", "nonsense", NULL);
  EXPECT_CODE(r, 1);
  HAS(r->err, "skaldctl: invalid_request: ");

  r = ctl("start", "no_such_workflow", NULL);
  EXPECT_CODE(r, 1);
  HAS(r->err, "not_found");
  r = ctl("get", "00000000-0000-0000-0000-000000000000", NULL);
  EXPECT_CODE(r, 1);
  HAS(r->err, "skaldctl: not_found: ");
  r = ctl("timeline", "not-a-uuid", NULL);
  EXPECT_CODE(r, 1);
  daemon_stop_clean();
}

Test(skaldctl, cancel_and_replay) {
  apply_specs();
  result *r = ctl("start", "longnap", NULL);
  EXPECT_CODE(r, 0);
  char id[64];
  first_line(r, id);
  r = ctl("replay", id, NULL); /* running: not replayable */
  EXPECT_CODE(r, 1);
  HAS(r->err, "skaldctl: invalid_state: ");
  r = ctl("cancel", id, NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "cancel requested");
  wait_status(id, "cancelled");
  r = ctl("cancel", id, NULL);
  EXPECT_CODE(r, 1);
  HAS(r->err, "invalid_state");

  /* --wait on a saga that ends cancelled exits 3. */
  r = ctl("start", "longnap", "--key", "k-cancel", NULL);
  char k[64];
  first_line(r, k);
  EXPECT_CODE(ctl("cancel", k, NULL), 0);
  r = ctl("start", "longnap", "--key", "k-cancel", "--wait", "20", NULL);
  EXPECT_CODE(r, 3);
  HAS(r->out, "cancelled");
  /* … and one that is still running when time is up exits 6. */
  r = ctl("start", "longnap", "--wait", "1", NULL);
  EXPECT_CODE(r, 6);
  char running[64];
  first_line(r, running);

  r = ctl("replay", "not-a-uuid", NULL);
  EXPECT_CODE(r, 1);
  HAS(r->err, "invalid_request");
  r = ctl("replay", "00000000-0000-0000-0000-000000000000", NULL);
  EXPECT_CODE(r, 1);
  HAS(r->err, "not_found");
  r = ctl("replay", id, "--step-input", "{oops", NULL);
  EXPECT_CODE(r, 2);
  r = ctl("replay", id, "--status", "cancelled", NULL);
  EXPECT_CODE(r, 2);

  r = ctl("replay", id, "--input", "{\"fixed\":true}", NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "as new saga");
  r = ctl("get", id, NULL);
  HAS(r->out, "replayed by");

  /* Bulk: the other cancelled saga (k) is replayed; id was already. */
  r = ctl("replay", "--status", "cancelled", "--workflow", "longnap", "--limit",
          "10", NULL);
  HAS(r->out, k);
  HAS(r->out, "replayed");
  r = ctl("--json", "replay", "--status", "failed", NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "\"replayed\":[]");
  r = ctl("replay", "--status", "running", NULL);
  EXPECT_CODE(r, 1);
  HAS(r->err, "invalid_request");
  daemon_stop_clean();
}

Test(skaldctl, nodes_health_verify) {
  apply_specs();
  result *r = ctl("start", "napper", "--wait", "20", NULL);
  EXPECT_CODE(r, 0);
  char id[64];
  first_line(r, id);
  r = ctl("nodes", NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "ctl-test-node");
  r = ctl("--json", "nodes", NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "\"nodes\"");
  r = ctl("health", NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "ready");

  r = ctl("verify", "--database-url", ci, NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "checked 1 sagas, 0 mismatched");
  r = ctl("verify", "--database-url", ci, "--saga", id, NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "0 mismatched");
  char env[1100];
  snprintf(env, sizeof(env), "SKALD_DATABASE_URL=%s", ci);
  const char *const envs[] = {env, NULL};
  const char *const argv[] = {CTL, "--json", "verify", NULL};
  r = run(envs, argv);
  EXPECT_CODE(r, 0);
  HAS(r->out, "\"mismatched\":0");
  /* A projection that no longer matches its events is reported. */
  pgtest_exec(ci, "UPDATE sagas SET state = jsonb_set(state::jsonb, '{status}', "
                  "'\"failed\"')");
  r = ctl("verify", "--database-url", ci, NULL);
  EXPECT_CODE(r, 1);
  HAS(r->out, "1 mismatched");

  /* Once the daemon is gone: health cannot reach it. */
  daemon_stop_clean();
  r = ctl("health", NULL);
  EXPECT_CODE(r, 5);
}

Test(skaldctl, keys) {
  apply_specs();
  result *r = ctl("keys", "create", "ci-bot", "--database-url", ci, NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "sk_");
  HAS(r->err, "only once");
  char key[160];
  snprintf(key, sizeof(key), "%.*s", (int)strcspn(r->out, "\n"), r->out);
  r = ctl("keys", "list", "--database-url", ci, NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "ci-bot");
  HASNT(r->out, key + 16); /* never the secret */
  cJSON *j = NULL;
  r = ctl("--json", "keys", "list", "--database-url", ci, NULL);
  j = cJSON_Parse(r->out);
  char kid[32];
  snprintf(kid, sizeof(kid), "%s",
           cJSON_GetStringValue(
               cJSON_GetObjectItem(cJSON_GetArrayItem(j, 0), "id")));
  cJSON_Delete(j);
  const char *const no_db[] = {CTL, "keys", "list", NULL};
  EXPECT_CODE(run(NULL, no_db), 2);

  /* The daemon decides at start: restarted with a key, it wants one. */
  daemon_stop_clean();
  daemon_start();
  r = ctl("list", NULL);
  EXPECT_CODE(r, 1);
  HAS(r->err, "skaldctl: unauthorized: ");
  r = ctl("list", "--api-key",
          "sk_000000000000_"
          "0000",
          NULL);
  EXPECT_CODE(r, 1);
  r = ctl("--api-key", key, "list", NULL);
  EXPECT_CODE(r, 0);
  HASNT(r->out, key);
  HASNT(r->err, key);
  r = ctl("health", NULL); /* public */
  EXPECT_CODE(r, 0);
  char env[200];
  snprintf(env, sizeof(env), "SKALD_API_KEY=%s", key);
  const char *const envs[] = {env, NULL};
  char u[96];
  snprintf(u, sizeof(u), "%s", url);
  const char *const argv[] = {CTL, "--url", u, "nodes", NULL};
  EXPECT_CODE(run(envs, argv), 0);
  char keyfile[96], envf[128];
  snprintf(keyfile, sizeof(keyfile), "%s/key", dir);
  FILE *f = fopen(keyfile, "w");
  fprintf(f, "%s\n", key);
  fclose(f);
  snprintf(envf, sizeof(envf), "SKALD_API_KEY_FILE=%s", keyfile);
  const char *const envs2[] = {envf, NULL};
  r = run(envs2, argv);
  EXPECT_CODE(r, 0);
  HAS(r->out, "ctl-test-node");
  r = ctl("--api-key", key, "start", "napper", "--wait", "20", NULL);
  EXPECT_CODE(r, 0);

  /* A second key keeps the daemon requiring keys once the first is gone
   * (with none left it serves loopback without any). */
  r = ctl("keys", "create", "other", "--database-url", ci, NULL);
  EXPECT_CODE(r, 0);
  r = ctl("keys", "revoke", kid, "--database-url", ci, NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, kid);
  r = ctl("keys", "revoke", "ffffffffffff", "--database-url", ci, NULL);
  EXPECT_CODE(r, 1);
  r = ctl("--json", "keys", "list", "--database-url", ci, NULL);
  EXPECT_CODE(r, 0);
  j = cJSON_Parse(r->out);
  cr_assert(cJSON_IsString(
      cJSON_GetObjectItem(cJSON_GetArrayItem(j, 0), "revoked_at")));
  cJSON_Delete(j);
  /* A restarted daemon refuses the revoked key. */
  daemon_stop_clean();
  daemon_start();
  r = ctl("--api-key", key, "list", NULL);
  EXPECT_CODE(r, 1);
  HAS(r->err, "unauthorized");
  HASNT(r->err, key);
  daemon_stop_clean();
}

/* Failures come from a remote worker (the test, over the task API). */
Test(skaldctl, failed_steps) {
  EXPECT_CODE(
      ctl("apply",
          write_file("charge.json",
                     "{\"name\":\"charger\",\"version\":1,\"steps\":["
                     "{\"name\":\"warm_up\",\"sleep\":{\"ms\":10}},"
                     "{\"name\":\"charge_card\",\"task\":\"pay.charge\","
                     "\"retry\":{\"max_attempts\":1}}]}"),
          NULL),
      0);
  EXPECT_CODE(
      ctl("apply",
          write_file(
              "pause.json",
              "{\"name\":\"careful\",\"version\":1,\"on_failure\":\"pause\","
              "\"steps\":[{\"name\":\"ship_it\",\"task\":\"ship.send\","
              "\"retry\":{\"max_attempts\":1}}]}"),
          NULL),
      0);

  /* Compensated: --wait exits 3 and the timeline names the error. */
  result *r = ctl("start", "charger", "--key", "c1", NULL);
  EXPECT_CODE(r, 0);
  char id[64];
  first_line(r, id);
  fail_next_task("pay.charge");
  r = ctl("start", "charger", "--key", "c1", "--wait", "20", NULL);
  EXPECT_CODE(r, 3);
  HAS(r->out, "compensated");
  r = ctl("timeline", id, NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "StepFailed");
  HAS(r->out, "charge_card");
  HAS(r->out, "CardDeclined: insufficient funds");
  r = ctl("get", id, NULL);
  HAS(r->out, "CardDeclined: insufficient funds");

  /* Paused: --wait exits 4; replay resumes it with a corrected input. */
  r = ctl("start", "careful", "--key", "p1", NULL);
  char pid_[64];
  first_line(r, pid_);
  fail_next_task("ship.send");
  r = ctl("start", "careful", "--key", "p1", "--wait", "20", NULL);
  EXPECT_CODE(r, 4);
  HAS(r->out, "paused");
  r = ctl("replay", pid_, "--from-step", "no_such_step", NULL);
  EXPECT_CODE(r, 1);
  r = ctl("replay", pid_, "--step-input", "{\"address\":\"fixed\"}", NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "replayed");
  fail_next_task("ship.send");
  wait_status(pid_, "paused");
  r = ctl("replay", "--status", "paused", "--workflow", "careful", NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "1 replayed, 0 failed");
  r = ctl("verify", "--database-url", ci, NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "0 mismatched");
  daemon_stop_clean();
}

/* A cancelled (or compensated) saga that was already replayed has its new
 * run; replaying it again — one by one or in bulk — must not start a
 * second run and overwrite the replayed_by link ("linked both ways"). */
Test(skaldctl, a_replayed_saga_is_not_replayed_again) {
  apply_specs();
  result *r = ctl("start", "longnap", NULL);
  char id[64];
  first_line(r, id);
  EXPECT_CODE(ctl("cancel", id, NULL), 0);
  wait_status(id, "cancelled");
  r = ctl("replay", id, NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "as new saga");
  r = ctl("replay", id, NULL);
  EXPECT_CODE(r, 1); /* 409: already replayed */
  HAS(r->err, "invalid_state");
  r = ctl("replay", "--status", "cancelled", NULL);
  EXPECT_CODE(r, 0);
  HAS(r->out, "0 replayed, 0 failed");
  daemon_stop_clean();
}
