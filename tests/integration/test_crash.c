/*
 * test_crash.c — durability under SIGKILL, against a real PostgreSQL and
 * real engine processes (tests/programs/crash_worker).
 *
 *   sigkill_restart: one engine runs 200 sagas of 5 steps (some failing,
 *     some flaky, some with flaky compensations); it is SIGKILLed six
 *     times, each after a random amount of progress, and restarted; the
 *     last run finishes everything.
 *   two_nodes: two engines share one database and the same 200 sagas; one
 *     is SIGKILLed mid-run; the other finishes every saga once the dead
 *     node's leases expire.
 * Both then check every promise with sagacheck (see sagacheck.h),
 * including that every projection equals the fold of its events.
 *
 * The random kill points come from a seed printed in the test output, so a
 * failure can be replayed (SKALD_TEST_SEED).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pgtest.h"
#include "sagacheck.h"

#define N_SAGAS 200
#define LEASE_MS "1000"

static char db[512];
static char log_path[256];
static char out_path[256];

static void setup(void) {
  cr_assert_eq(pgtest_fresh_db(db, sizeof(db)), 0);
  snprintf(log_path, sizeof(log_path), "/tmp/skald-crash-%ld.log",
           (long)getpid());
  snprintf(out_path, sizeof(out_path), "/tmp/skald-crash-%ld.out",
           (long)getpid());
  unlink(log_path);
  unlink(out_path);
}

static void teardown(void) {
  pgtest_drop_db(db);
  if (getenv("SKALD_TEST_KEEP") == NULL) {
    unlink(log_path);
    unlink(out_path);
  }
}

static unsigned seed(void) {
  const char *s = getenv("SKALD_TEST_SEED");
  unsigned v = s != NULL ? (unsigned)strtoul(s, NULL, 10)
                         : (unsigned)time(NULL) ^ (unsigned)getpid();
  cr_log_info("seed %u (set SKALD_TEST_SEED to replay)", v);
  return v;
}

static pid_t spawn_worker(const char *prefix, const char *node) {
  pid_t pid = fork();
  cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
  if (pid == 0) {
    int fd = open(out_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    char n[16];
    snprintf(n, sizeof(n), "%d", N_SAGAS);
    execl(SKALD_BINARY_DIR "/crash_worker", "crash_worker", "--db", db,
          "--log", log_path, "--prefix", prefix, "--sagas", n, "--node", node,
          "--lease-ms", LEASE_MS, "--workers", "8", (char *)NULL);
    _exit(127);
  }
  return pid;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

static void kill_hard(pid_t pid) {
  kill(pid, SIGKILL);
  int st;
  waitpid(pid, &st, 0);
}

/* Prints the end of the workers' stderr into the test log. */
static void dump_output(void) {
  FILE *f = fopen(out_path, "r");
  if (f == NULL)
    return;
  char line[1024];
  while (fgets(line, sizeof(line), f) != NULL)
    cr_log_error("worker: %s", line);
  fclose(f);
}

/* Waits for a worker to finish on its own; it must exit 0. */
static void wait_clean_exit(pid_t pid, int timeout_s) {
  for (int waited = 0; waited < timeout_s * 10; waited++) {
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
      if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        dump_output();
      cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                "worker exited badly (status %d); see %s", st, out_path);
      return;
    }
    sleep_ms(100);
  }
  kill_hard(pid);
  cr_assert_fail("worker did not finish within %d s; see %s", timeout_s,
                 out_path);
}

static long count_lines(void) {
  FILE *f = fopen(log_path, "r");
  if (f == NULL)
    return 0;
  long n = 0;
  int ch;
  while ((ch = fgetc(f)) != EOF)
    n += ch == '\n';
  fclose(f);
  return n;
}

Test(crash, sigkill_restart, .init = setup, .fini = teardown, .timeout = 600) {
  srand(seed());
  int kills = 0;
  for (int round = 0; round < 6; round++) {
    pid_t pid = spawn_worker("k", "crashy");
    /* Kill after a random amount of progress rather than a random time: a
     * fast engine can finish all 200 sagas within any fixed delay, and then
     * the restarts would have nothing left to resume. Six rounds of at most
     * 120 executions leave most of the ~1,300 to the last run. */
    long target = count_lines() + 1 + rand() % 120;
    for (int w = 0; w < 3000 && count_lines() < target; w++)
      sleep_ms(5);
    kill_hard(pid);
    kills++;
  }
  pid_t last = spawn_worker("k", "crashy");
  wait_clean_exit(last, 300);
  sagacheck_stats st;
  sagacheck_crash_wf(db, log_path, "k", N_SAGAS, &st);
  cr_log_info("%d kills; %zu sagas: %zu completed, %zu compensated; %zu "
              "executions by %zu processes",
              kills, st.sagas, st.completed, st.compensated, st.executions,
              st.pids);
  cr_assert_eq(st.completed + st.compensated, (size_t)N_SAGAS);
  cr_assert_geq(st.pids, 2, "the run never spanned a restart");
}

/* Lines of the execution log written by process pid. */
static long lines_of(pid_t pid) {
  FILE *f = fopen(log_path, "r");
  if (f == NULL)
    return 0;
  char line[512], needle[32];
  snprintf(needle, sizeof(needle), " %ld ", (long)pid);
  long n = 0;
  while (fgets(line, sizeof(line), f) != NULL)
    n += strstr(line, needle) != NULL;
  fclose(f);
  return n;
}

Test(crash, two_nodes, .init = setup, .fini = teardown, .timeout = 600) {
  srand(seed());
  pid_t a = spawn_worker("t", "node-a");
  pid_t b = spawn_worker("t", "node-b");
  /* Kill A mid-run, once it has done a share of the work (on a loaded
   * machine it may start later than B). */
  sleep_ms(500 + rand() % 1000);
  for (int w = 0; w < 300 && lines_of(a) < 25; w++)
    sleep_ms(100);
  kill_hard(a);
  wait_clean_exit(b, 300);
  sagacheck_stats st;
  sagacheck_crash_wf(db, log_path, "t", N_SAGAS, &st);
  cr_log_info("%zu sagas: %zu completed, %zu compensated; %zu executions by "
              "%zu processes",
              st.sagas, st.completed, st.compensated, st.executions, st.pids);
  cr_assert_eq(st.completed + st.compensated, (size_t)N_SAGAS);
  cr_assert_eq(st.pids, 2, "both nodes should have run steps");
}
