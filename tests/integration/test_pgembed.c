/*
 * test_pgembed.c — store/pgembed.c with real PostgreSQL binaries: first
 * start (initdb), data surviving a restart, reuse of a running server
 * without owning it, recovery after SIGKILL of the postmaster, the /tmp
 * socket dir for long data dirs, and (as root) a data dir the server user
 * cannot reach.
 *
 * Each test works in its own directory under /tmp; the fixture's fini stops
 * any server left there (immediate mode) and removes the directory.
 */
#include "store/pgembed.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char tmpdir[256];

static void embed_setup(void) {
  snprintf(tmpdir, sizeof(tmpdir), "/tmp/skald-pgembed-XXXXXX");
  cr_assert_not_null(mkdtemp(tmpdir));
  /* As root the server runs as "postgres", which must traverse to here. */
  cr_assert_eq(chmod(tmpdir, 0755), 0);
}

/* Best-effort cleanup of a failed test: stop whatever server is left under
 * tmpdir, then remove it. Paths come from mkdtemp: no shell quoting needed. */
static void embed_teardown(void) {
  char cmd[1024];
  snprintf(cmd, sizeof(cmd),
           "for d in $(find %s -maxdepth 3 -name postmaster.pid -printf "
           "'%%h\\n' 2>/dev/null); do "
           "if [ \"$(id -u)\" = 0 ]; then R='runuser -u postgres --'; "
           "else R=; fi; "
           "$R \"$(pg_config --bindir)/pg_ctl\" -D \"$d\" -m immediate -w "
           "stop >/dev/null 2>&1; done; rm -rf %s",
           tmpdir, tmpdir);
  if (system(cmd) != 0)
    fprintf(stderr, "cleanup of %s failed\n", tmpdir);
}

TestSuite(pgembed, .init = embed_setup, .fini = embed_teardown, .timeout = 600);

static PGconn *connect_ok(const char *conninfo) {
  PGconn *c = PQconnectdb(conninfo);
  cr_assert_eq(PQstatus(c), CONNECTION_OK, "%s", PQerrorMessage(c));
  return c;
}

static void exec_ok(const char *conninfo, const char *sql) {
  PGconn *c = connect_ok(conninfo);
  PGresult *res = PQexec(c, sql);
  ExecStatusType st = PQresultStatus(res);
  cr_assert(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql,
            PQresultErrorMessage(res));
  PQclear(res);
  PQfinish(c);
}

static long long scalar(const char *conninfo, const char *sql) {
  PGconn *c = connect_ok(conninfo);
  PGresult *res = PQexec(c, sql);
  cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s: %s", sql,
               PQresultErrorMessage(res));
  long long v = atoll(PQgetvalue(res, 0, 0));
  PQclear(res);
  PQfinish(c);
  return v;
}

static bool can_connect(const char *conninfo) {
  PGconn *c = PQconnectdb(conninfo);
  bool ok = PQstatus(c) == CONNECTION_OK;
  PQfinish(c);
  return ok;
}

static pgembed *start_ok(const char *dir, char **conninfo) {
  pgembed *pg = NULL;
  sk_error err;
  int rc = pgembed_start(dir, &pg, conninfo, &err);
  cr_assert_eq(rc, 0, "pgembed_start: %s", err.message);
  cr_assert_not_null(pg);
  cr_assert_not_null(*conninfo);
  return pg;
}

static long postmaster_pid(const char *data_dir) {
  char path[512];
  snprintf(path, sizeof(path), "%s/pg/postmaster.pid", data_dir);
  FILE *f = fopen(path, "r");
  cr_assert_not_null(f, "no %s", path);
  long pid = 0;
  cr_assert_eq(fscanf(f, "%ld", &pid), 1);
  fclose(f);
  return pid;
}

/* Gone, or a zombie nobody has reaped yet. */
static bool process_gone(long pid) {
  char path[64], stat[256] = "";
  snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return true;
  size_t n = fread(stat, 1, sizeof(stat) - 1, f);
  fclose(f);
  stat[n] = '\0';
  const char *p = strrchr(stat, ')');
  return p != NULL && p[1] == ' ' && p[2] == 'Z';
}

Test(pgembed, rejects_bad_arguments) {
  pgembed *pg = (pgembed *)1;
  char *ci = (char *)1;
  sk_error err;
  cr_assert_eq(pgembed_start("", &pg, &ci, &err), SK_EINVAL);
  cr_assert_null(pg);
  cr_assert_null(ci);
  cr_assert_eq(pgembed_start(NULL, &pg, &ci, &err), SK_EINVAL);
  pgembed_stop(NULL);
}

Test(pgembed, failed_initdb_names_the_step_and_the_log) {
  char dir[512], junk[600];
  snprintf(dir, sizeof(dir), "%s/data", tmpdir);
  snprintf(junk, sizeof(junk), "%s/pg", dir);
  cr_assert_eq(mkdir(dir, 0755), 0);
  cr_assert_eq(mkdir(junk, 0700), 0);
  snprintf(junk, sizeof(junk), "%s/pg/not-a-cluster", dir);
  FILE *f = fopen(junk, "w");
  cr_assert_not_null(f);
  fclose(f);

  pgembed *pg = NULL;
  char *ci = NULL;
  sk_error err;
  cr_assert_eq(pgembed_start(dir, &pg, &ci, &err), SK_EIO);
  cr_assert_null(pg);
  cr_assert(strstr(err.message, "initdb") != NULL, "%s", err.message);
  cr_assert(strstr(err.message, "/data/pg.log") != NULL, "%s", err.message);
}

Test(pgembed, lifecycle_restart_reuse_and_sigkill) {
  char dir[512];
  snprintf(dir, sizeof(dir), "%s/data", tmpdir);

  /* First start: initdb, server, database "skald". */
  char *ci = NULL;
  pgembed *pg = start_ok(dir, &ci);
  char want[600];
  snprintf(want, sizeof(want), "host=%s/run port=5432 dbname=skald user=skald",
           dir);
  cr_assert_str_eq(ci, want);
  cr_assert_eq(scalar(ci, "SELECT (current_user = 'skald')::int"), 1);
  exec_ok(ci, "CREATE TABLE survives (x int); INSERT INTO survives "
              "VALUES (42)");
  cr_assert_eq(scalar(ci, "SELECT count(*) FROM pg_settings WHERE name = "
                          "'fsync' AND setting = 'on'"),
               1);
  cr_assert_eq(scalar(ci, "SELECT count(*) FROM pg_settings WHERE name = "
                          "'listen_addresses' AND setting = ''"),
               1);
  cr_assert_eq(scalar(ci, "SELECT setting::int FROM pg_settings WHERE name = "
                          "'max_connections'"),
               200);
  pgembed_stop(pg);
  cr_assert_not(can_connect(ci), "server still up after its owner stopped");

  /* Restart reuses the cluster: the data is still there. */
  char *ci2 = NULL;
  pg = start_ok(dir, &ci2);
  cr_assert_str_eq(ci2, ci);
  cr_assert_eq(scalar(ci, "SELECT x FROM survives"), 42);

  /* A second handle while it runs reuses it and does not own it. */
  char *ci3 = NULL;
  pgembed *other = start_ok(dir, &ci3);
  cr_assert_str_eq(ci3, ci);
  pgembed_stop(other);
  cr_assert(can_connect(ci), "a non-owner stopped the server");

  /* SIGKILL of the postmaster; the next start recovers. */
  long pid = postmaster_pid(dir);
  cr_assert_eq(kill((pid_t)pid, SIGKILL), 0, "kill %ld: %s", pid,
               strerror(errno));
  for (int i = 0; i < 100 && !process_gone(pid); i++)
    usleep(100 * 1000);
  cr_assert(process_gone(pid));
  char *ci4 = NULL;
  pgembed *again = start_ok(dir, &ci4);
  cr_assert_eq(scalar(ci4, "SELECT x FROM survives"), 42);
  cr_assert_neq(postmaster_pid(dir), pid);
  /* The first owner's server died; it must not stop the new one. */
  pgembed_stop(pg);
  cr_assert(can_connect(ci), "an old owner stopped a newer server");
  pgembed_stop(again);
  cr_assert_not(can_connect(ci), "server still up after its owner stopped");
  free(ci);
  free(ci2);
  free(ci3);
  free(ci4);
}

Test(pgembed, long_data_dir_gets_a_short_socket_dir) {
  char dir[512];
  snprintf(dir, sizeof(dir),
           "%s/a-rather-long-directory-name-for-the-data/"
           "and-another-level-to-pass-one-hundred-bytes",
           tmpdir);
  cr_assert_gt(strlen(dir) + strlen("/run/.s.PGSQL.5432"), 100);
  char *ci = NULL;
  pgembed *pg = start_ok(dir, &ci);
  cr_assert(strncmp(ci, "host=/tmp/skald-", 16) == 0, "%s", ci);
  cr_assert_eq(scalar(ci, "SELECT 1"), 1);

  /* Same data dir, same socket dir: a second start finds it. */
  char *ci2 = NULL;
  pgembed *other = start_ok(dir, &ci2);
  cr_assert_str_eq(ci2, ci);
  pgembed_stop(other);
  pgembed_stop(pg);
  cr_assert_not(can_connect(ci));
  free(ci);
  free(ci2);
}

Test(pgembed, unreachable_data_dir_is_explained) {
  if (geteuid() != 0) {
    embed_teardown(); /* a skipped test gets no fini */
    cr_skip_test("only root switches to the postgres user");
  }
  char locked[512], dir[600];
  snprintf(locked, sizeof(locked), "%s/locked", tmpdir);
  cr_assert_eq(mkdir(locked, 0700), 0);
  snprintf(dir, sizeof(dir), "%s/data", locked);

  pgembed *pg = NULL;
  char *ci = NULL;
  sk_error err;
  cr_assert_eq(pgembed_start(dir, &pg, &ci, &err), SK_EIO);
  cr_assert_null(pg);
  cr_assert_null(ci);
  cr_assert(strstr(err.message, dir) != NULL, "%s", err.message);
  cr_assert(strstr(err.message, "--data-dir") != NULL, "%s", err.message);
  cr_assert(strstr(err.message, "postgres") != NULL, "%s", err.message);
}

/* A child: starts, reports, waits for the parent's go, stops, exits 0. */
static void concurrent_child(const char *dir, int started_fd, int go_fd) {
  pgembed *pg = NULL;
  char *ci = NULL;
  sk_error err;
  int rc = pgembed_start(dir, &pg, &ci, &err);
  if (rc != 0)
    fprintf(stderr, "child: %s\n", err.message);
  char b = rc == 0 ? 'y' : 'n';
  if (write(started_fd, &b, 1) != 1 || read(go_fd, &b, 1) < 0)
    _exit(3);
  pgembed_stop(pg);
  free(ci);
  _exit(rc == 0 ? 0 : 1);
}

Test(pgembed, concurrent_first_starts_share_one_server) {
  enum { N = 3 };
  char dir[512];
  snprintf(dir, sizeof(dir), "%s/data", tmpdir);
  int started[2], go[2];
  cr_assert_eq(pipe(started), 0);
  cr_assert_eq(pipe(go), 0);
  pid_t pids[N];
  for (int i = 0; i < N; i++) {
    pids[i] = fork();
    cr_assert_geq(pids[i], 0);
    if (pids[i] == 0) {
      close(started[0]);
      close(go[1]);
      concurrent_child(dir, started[1], go[0]);
    }
  }
  close(started[1]);
  close(go[0]);
  for (int i = 0; i < N; i++) {
    char b = 0;
    cr_assert_eq(read(started[0], &b, 1), 1);
    cr_assert_eq(b, 'y', "a concurrent start failed");
  }
  char ci[600];
  snprintf(ci, sizeof(ci), "host=%s/run port=5432 dbname=skald user=skald",
           dir);
  cr_assert(can_connect(ci));
  close(go[1]); /* every child stops its handle; only the owner stops it */
  for (int i = 0; i < N; i++) {
    int st = 0;
    cr_assert_eq(waitpid(pids[i], &st, 0), pids[i]);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d failed", i);
  }
  close(started[0]);
  cr_assert_not(can_connect(ci), "no child owned the server");
}
