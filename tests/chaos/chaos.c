/*
 * chaos.c — fault injection infrastructure (see chaos.h).
 *
 * PostgreSQL programs run through run_prog: fork, drop to "postgres" when
 * root (PostgreSQL refuses root), exec, wait with a deadline (killed past
 * it). crash_worker children get PR_SET_PDEATHSIG so they never outlive a
 * test process that Criterion killed.
 */
#include "chaos.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "sagacheck.h"
#include "store/queries.h"

/* ---- clock, randomness, budgets ---- */

int64_t chaos_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void chaos_sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

unsigned chaos_seed(void) {
  const char *s = getenv("SKALD_TEST_SEED");
  unsigned v = s != NULL ? (unsigned)strtoul(s, NULL, 10)
                         : (unsigned)time(NULL) ^ ((unsigned)getpid() << 8);
  cr_log_info("seed %u (set SKALD_TEST_SEED to replay)", v);
  fprintf(stderr, "chaos: seed %u (set SKALD_TEST_SEED to replay)\n", v);
  srand(v);
  return v;
}

long chaos_rand(long lo, long hi) {
  return hi <= lo ? lo : lo + rand() % (hi - lo + 1);
}

static long env_long(const char *name) {
  const char *s = getenv(name);
  return s != NULL && s[0] != '\0' ? strtol(s, NULL, 10) : 0;
}

#define N_SCENARIOS 7

bool chaos_soak(void) {
  return env_long("SKALD_CHAOS_SOAK_FAULTS") > 0 ||
         env_long("SKALD_CHAOS_SOAK_SECONDS") > 0;
}

long chaos_fault_budget(long bounded_faults) {
  long total = env_long("SKALD_CHAOS_SOAK_FAULTS");
  if (total <= 0)
    return bounded_faults;
  long share = (total + N_SCENARIOS - 1) / N_SCENARIOS;
  return share > bounded_faults ? share : bounded_faults;
}

int64_t chaos_time_budget_ms(void) {
  long secs = env_long("SKALD_CHAOS_SOAK_SECONDS");
  return secs > 0 ? (int64_t)secs * 1000 / N_SCENARIOS : 0;
}

bool chaos_more_rounds(int rounds, long faults, long budget,
                       int64_t started_ms) {
  if (rounds == 0)
    return true;
  if (!chaos_soak())
    return false;
  /* Soak: go on until every budget that is set is spent (the first one
   * spent ends it). */
  int64_t tb = chaos_time_budget_ms();
  bool time_left = tb == 0 || chaos_now_ms() - started_ms < tb;
  bool faults_left =
      env_long("SKALD_CHAOS_SOAK_FAULTS") <= 0 || faults < budget;
  return time_left && faults_left;
}

/* ---- figures ---- */

static const char *fault_names[FAULT_KINDS] = {
    "sigkill_node",     "terminate_backends", "pg_restart_fast",
    "pg_restart_immediate", "sigstop_past_lease", "http_refuse",
    "http_503",         "http_reset",         "http_hang",
    "pg_failover",      "sigkill_daemon"};

const char *chaos_fault_name(int kind) {
  return kind >= 0 && kind < FAULT_KINDS ? fault_names[kind] : "?";
}

void chaos_stats_init(chaos_stats *s, const char *scenario) {
  memset(s, 0, sizeof(*s));
  s->scenario = scenario;
  s->started_ms = chaos_now_ms();
}

long chaos_stats_faults(const chaos_stats *s) {
  long n = 0;
  for (int k = 0; k < FAULT_KINDS; k++)
    n += s->faults[k];
  return n;
}

void chaos_stats_report(const chaos_stats *s) {
  char line[2048];
  int at = snprintf(line, sizeof(line),
                    "scenario=%s mode=%s rounds=%ld secs=%.1f faults=%ld",
                    s->scenario, chaos_soak() ? "soak" : "bounded", s->rounds,
                    (double)(chaos_now_ms() - s->started_ms) / 1000.0,
                    chaos_stats_faults(s));
  for (int k = 0; k < FAULT_KINDS && at < (int)sizeof(line); k++)
    if (s->faults[k] > 0)
      at += snprintf(line + at, sizeof(line) - (size_t)at, " %s=%ld",
                     fault_names[k], s->faults[k]);
  if (at < (int)sizeof(line))
    at += snprintf(line + at, sizeof(line) - (size_t)at,
                   " sagas=%ld completed=%ld compensated=%ld executions=%ld "
                   "respawns=%ld lost=%ld duplicated=%ld out_of_order=%ld",
                   s->sagas, s->completed, s->compensated, s->executions,
                   s->respawns, s->lost, s->duplicated, s->out_of_order);
  if (s->requests > 0 && at < (int)sizeof(line))
    snprintf(line + at, sizeof(line) - (size_t)at,
             " requests=%ld request_errors=%ld error_rate=%.4f accepted=%ld "
             "p50_ms=%.1f p99_ms=%.1f max_ms=%.1f",
             s->requests, s->request_errors,
             (double)s->request_errors / (double)s->requests, s->accepted,
             s->p50_ms, s->p99_ms, s->max_ms);
  cr_log_info("%s", line);
  fprintf(stderr, "chaos: %s\n", line);
  const char *path = getenv("SKALD_CHAOS_REPORT");
  if (path != NULL && path[0] != '\0') {
    FILE *f = fopen(path, "a");
    if (f != NULL) {
      fprintf(f, "%s\n", line);
      fclose(f);
    }
  }
}

/* ---- running programs ---- */

static const char *pg_bindir(void) {
  static char dir[128];
  if (dir[0] != '\0')
    return dir;
  for (int v = 30; v >= 10; v--) {
    char cand[160];
    snprintf(cand, sizeof(cand), "/usr/lib/postgresql/%d/bin/initdb", v);
    if (access(cand, X_OK) == 0) {
      snprintf(dir, sizeof(dir), "/usr/lib/postgresql/%d/bin", v);
      return dir;
    }
  }
  snprintf(dir, sizeof(dir), "/usr/bin");
  return dir;
}

static bool pg_ids(uid_t *uid, gid_t *gid) {
  if (getuid() != 0)
    return false;
  struct passwd *pw = getpwnam("postgres");
  if (pw == NULL)
    pw = getpwnam("nobody");
  cr_assert_not_null(pw, "running as root and no postgres/nobody user");
  *uid = pw->pw_uid;
  *gid = pw->pw_gid;
  return true;
}

/* Runs bindir/argv[0] (as postgres when root), output appended to log;
 * waits up to timeout_ms. Returns the exit status, or -1. */
static int run_prog(const char *const *argv, const char *log, int timeout_ms) {
  uid_t uid = 0;
  gid_t gid = 0;
  bool drop = pg_ids(&uid, &gid);
  char path[256];
  snprintf(path, sizeof(path), "%s/%s", pg_bindir(), argv[0]);
  pid_t pid = fork();
  if (pid < 0)
    return -1;
  if (pid == 0) {
    /* Drop first: the server appends to the same log as postgres. */
    if (drop && (setgroups(0, NULL) != 0 || setgid(gid) != 0 ||
                 setuid(uid) != 0))
      _exit(126);
    int fd = open(log != NULL ? log : "/dev/null",
                  O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    execv(path, (char *const *)argv);
    _exit(127);
  }
  int64_t end = chaos_now_ms() + timeout_ms;
  int st = 0;
  for (;;) {
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid)
      return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    if (r < 0 && errno != EINTR)
      return -1;
    if (chaos_now_ms() > end) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      return -1;
    }
    chaos_sleep_ms(20);
  }
}

static void log_tail(const char *path, int lines) {
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return;
  char *ring[64] = {0};
  if (lines > 64)
    lines = 64;
  size_t n = 0;
  char line[1024];
  while (fgets(line, sizeof(line), f) != NULL) {
    free(ring[n % (size_t)lines]);
    ring[n % (size_t)lines] = strdup(line);
    n++;
  }
  fclose(f);
  for (size_t i = n > (size_t)lines ? n - (size_t)lines : 0; i < n; i++) {
    cr_log_error("%s: %s", path, ring[i % (size_t)lines]);
    fprintf(stderr, "%s: %s", path, ring[i % (size_t)lines]);
  }
  for (int i = 0; i < lines; i++)
    free(ring[i]);
}

/* ---- environment ---- */

void chaos_env_init(chaos_env *e) {
  memset(e, 0, sizeof(*e));
  snprintf(e->dir, sizeof(e->dir), "/tmp/skald-chaos-XXXXXX");
  cr_assert_not_null(mkdtemp(e->dir), "mkdtemp: %s", strerror(errno));
  chmod(e->dir, 0755);
  uid_t uid;
  gid_t gid;
  if (pg_ids(&uid, &gid))
    cr_assert_eq(chown(e->dir, uid, gid), 0, "chown: %s", strerror(errno));
}

void chaos_env_track(chaos_env *e, pid_t pid) {
  if (e->n_children < sizeof(e->children) / sizeof(e->children[0]))
    e->children[e->n_children++] = pid;
}

void chaos_env_untrack(chaos_env *e, pid_t pid) {
  for (size_t i = 0; i < e->n_children; i++)
    if (e->children[i] == pid) {
      e->children[i] = e->children[--e->n_children];
      return;
    }
}

void chaos_env_cleanup(chaos_env *e) {
  for (size_t i = 0; i < e->n_children; i++) {
    kill(e->children[i], SIGCONT);
    kill(e->children[i], SIGKILL);
    waitpid(e->children[i], NULL, 0);
  }
  e->n_children = 0;
  for (int i = 0; i < CHAOS_MAX_PG; i++) {
    chaos_pg *pg = &e->pg[i];
    char pidfile[400];
    snprintf(pidfile, sizeof(pidfile), "%s/postmaster.pid", pg->data);
    if (pg->inited && access(pidfile, F_OK) == 0 &&
        chaos_pg_stop(pg, "fast") != 0)
      chaos_pg_stop(pg, "immediate");
    pg->inited = false;
  }
  if (e->dir[0] != '\0' && getenv("SKALD_TEST_KEEP") == NULL &&
      strncmp(e->dir, "/tmp/skald-chaos-", 17) == 0) {
    pid_t pid = fork();
    if (pid == 0) {
      execlp("rm", "rm", "-rf", e->dir, (char *)NULL);
      _exit(127);
    }
    if (pid > 0)
      waitpid(pid, NULL, 0);
  }
  e->dir[0] = '\0';
}

/* ---- PostgreSQL ---- */

void chaos_pg_conninfo(const chaos_pg *pg, char *out, size_t len) {
  snprintf(out, len,
           "host=127.0.0.1 port=%d user=postgres dbname=postgres "
           "connect_timeout=3",
           pg->port);
}

static void pg_paths(chaos_env *e, chaos_pg *pg, const char *name) {
  memset(pg, 0, sizeof(*pg));
  snprintf(pg->data, sizeof(pg->data), "%s/%s", e->dir, name);
  snprintf(pg->log, sizeof(pg->log), "%s/%s.log", e->dir, name);
  snprintf(pg->sock, sizeof(pg->sock), "%s", e->dir);
  pg->port = skd_free_port();
}

void chaos_pg_init(chaos_env *e, chaos_pg *pg, const char *name) {
  pg_paths(e, pg, name);
  const char *argv[] = {"initdb", "-D",  pg->data, "-A", "trust", "-U",
                        "postgres", "-E", "UTF8", "--locale=C", "--no-sync",
                        NULL};
  int rc = run_prog(argv, pg->log, 120000);
  if (rc != 0)
    log_tail(pg->log, 20);
  cr_assert_eq(rc, 0, "initdb %s failed", pg->data);
  pg->inited = true;
}

int chaos_pg_start(chaos_pg *pg, const char *extra) {
  char opts[1024];
  snprintf(opts, sizeof(opts),
           "-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off "
           "-c max_connections=100 -c shared_buffers=32MB "
           "-c wal_sender_timeout=5s -c wal_receiver_timeout=5s %s",
           pg->port, pg->sock, extra != NULL ? extra : "");
  const char *argv[] = {"pg_ctl", "-D", pg->data, "-l", pg->log, "-w",
                        "-t", "60", "-o", opts, "start", NULL};
  int rc = run_prog(argv, NULL, 90000);
  if (rc != 0) {
    log_tail(pg->log, 20);
    return -1;
  }
  pg->running = true;
  return 0;
}

int chaos_pg_stop(chaos_pg *pg, const char *mode) {
  const char *argv[] = {"pg_ctl", "-D", pg->data, "-m", mode, "-w",
                        "-t", "30", "stop", NULL};
  int rc = run_prog(argv, NULL, 45000);
  if (rc == 0)
    pg->running = false;
  return rc == 0 ? 0 : -1;
}

int chaos_pg_restart(chaos_pg *pg, const char *mode, const char *extra) {
  if (chaos_pg_stop(pg, mode) != 0 && chaos_pg_stop(pg, "immediate") != 0)
    return -1;
  return chaos_pg_start(pg, extra);
}

int chaos_pg_promote(chaos_pg *pg) {
  const char *argv[] = {"pg_ctl", "-D", pg->data, "-w", "-t", "60",
                        "promote", NULL};
  int rc = run_prog(argv, pg->log, 90000);
  return rc == 0 ? 0 : -1;
}

void chaos_pg_standby(chaos_env *e, chaos_pg *standby, const chaos_pg *primary,
                      const char *name, const char *extra) {
  pg_paths(e, standby, name);
  char port[16];
  snprintf(port, sizeof(port), "%d", primary->port);
  const char *argv[] = {"pg_basebackup", "-h", "127.0.0.1", "-p", port,
                        "-U", "postgres", "-D", standby->data, "-R",
                        "-X", "stream", "-c", "fast", "--no-sync", NULL};
  int rc = run_prog(argv, standby->log, 120000);
  if (rc != 0)
    log_tail(standby->log, 20);
  cr_assert_eq(rc, 0, "pg_basebackup failed");
  standby->inited = true;
  char conf[400];
  snprintf(conf, sizeof(conf), "%s/postgresql.auto.conf", standby->data);
  FILE *f = fopen(conf, "a");
  cr_assert_not_null(f, "cannot append to %s", conf);
  fprintf(f,
          "primary_conninfo = 'host=127.0.0.1 port=%d user=postgres "
          "application_name=standby1'\n",
          primary->port);
  fclose(f);
  cr_assert_eq(chaos_pg_start(standby, extra), 0, "standby did not start");
}

static PGconn *try_connect(const char *conninfo) {
  PGconn *c = PQconnectdb(conninfo);
  if (PQstatus(c) != CONNECTION_OK) {
    PQfinish(c);
    return NULL;
  }
  return c;
}

int chaos_terminate_backends(const char *conninfo) {
  PGconn *c = try_connect(conninfo);
  if (c == NULL)
    return -1;
  PGresult *r = PQexec(
      c, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
         "WHERE datname = current_database() AND pid <> pg_backend_pid() "
         "AND backend_type = 'client backend'");
  int n = PQresultStatus(r) == PGRES_TUPLES_OK ? atoi(PQgetvalue(r, 0, 0))
                                               : -1;
  PQclear(r);
  PQfinish(c);
  return n;
}

bool chaos_wait_writable(const char *conninfo, int timeout_ms) {
  int64_t end = chaos_now_ms() + timeout_ms;
  while (chaos_now_ms() < end) {
    PGconn *c = try_connect(conninfo);
    if (c != NULL) {
      PGresult *r = PQexec(c, "SELECT pg_is_in_recovery()");
      bool ok = PQresultStatus(r) == PGRES_TUPLES_OK &&
                strcmp(PQgetvalue(r, 0, 0), "f") == 0;
      PQclear(r);
      PQfinish(c);
      if (ok)
        return true;
    }
    chaos_sleep_ms(100);
  }
  return false;
}

/* ---- fleets ---- */

void chaos_fleet_init(chaos_fleet *f, chaos_env *e, const char *db,
                      const char *prefix, int n_nodes, int sagas,
                      int lease_ms) {
  memset(f, 0, sizeof(*f));
  cr_assert(n_nodes >= 1 && n_nodes <= CHAOS_MAX_NODES);
  f->env = e;
  snprintf(f->db, sizeof(f->db), "%s", db);
  snprintf(f->prefix, sizeof(f->prefix), "%s", prefix);
  snprintf(f->log, sizeof(f->log), "%s/%s.exec.log", e->dir, prefix);
  snprintf(f->out, sizeof(f->out), "%s/%s.out.log", e->dir, prefix);
  unlink(f->log);
  unlink(f->out);
  f->n = n_nodes;
  f->sagas = sagas;
  f->lease_ms = lease_ms;
  f->workers = 8;
}

void chaos_fleet_spawn(chaos_fleet *f, int node) {
  char sagas[16], lease[16], workers[16], name[32];
  snprintf(sagas, sizeof(sagas), "%d", f->sagas);
  snprintf(lease, sizeof(lease), "%d", f->lease_ms);
  snprintf(workers, sizeof(workers), "%d", f->workers);
  snprintf(name, sizeof(name), "node-%d", node);
  pid_t parent = getpid();
  pid_t pid = fork();
  cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
      _exit(125);
    int fd = open(f->out, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    execl(SKALD_BINARY_DIR "/crash_worker", "crash_worker", "--db", f->db,
          "--log", f->log, "--prefix", f->prefix, "--sagas", sagas, "--node",
          name, "--lease-ms", lease, "--workers", workers, (char *)NULL);
    _exit(127);
  }
  f->pid[node] = pid;
  f->stopped[node] = false;
  chaos_env_track(f->env, pid);
}

void chaos_fleet_start(chaos_fleet *f) {
  for (int i = 0; i < f->n; i++)
    chaos_fleet_spawn(f, i);
}

static bool any_done(const chaos_fleet *f) {
  for (int i = 0; i < f->n; i++)
    if (f->done[i])
      return true;
  return false;
}

bool chaos_fleet_poll(chaos_fleet *f) {
  for (int i = 0; i < f->n; i++) {
    if (f->pid[i] > 0) {
      int st;
      pid_t r = waitpid(f->pid[i], &st, WNOHANG);
      if (r != f->pid[i])
        continue;
      chaos_env_untrack(f->env, f->pid[i]);
      f->pid[i] = 0;
      if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        f->done[i] = true;
    }
    if (f->pid[i] == 0 && !f->done[i] && !any_done(f)) {
      chaos_fleet_spawn(f, i);
      f->respawns++;
    }
  }
  return any_done(f);
}

void chaos_fleet_kill(chaos_fleet *f, int node) {
  pid_t pid = f->pid[node];
  if (pid <= 0)
    return;
  kill(pid, SIGKILL);
  kill(pid, SIGCONT);
  waitpid(pid, NULL, 0);
  chaos_env_untrack(f->env, pid);
  f->pid[node] = 0;
  f->stopped[node] = false;
}

int chaos_fleet_pick(const chaos_fleet *f) {
  int cand[CHAOS_MAX_NODES], n = 0;
  for (int i = 0; i < f->n; i++)
    if (f->pid[i] > 0 && !f->stopped[i])
      cand[n++] = i;
  return n == 0 ? -1 : cand[rand() % n];
}

long chaos_fleet_lines(const chaos_fleet *f) {
  FILE *fp = fopen(f->log, "r");
  if (fp == NULL)
    return 0;
  long n = 0;
  char buf[65536];
  size_t got;
  while ((got = fread(buf, 1, sizeof(buf), fp)) > 0)
    for (size_t i = 0; i < got; i++)
      n += buf[i] == '\n';
  fclose(fp);
  return n;
}

void chaos_fleet_wait_progress(chaos_fleet *f, long lines, int timeout_ms) {
  long before = chaos_fleet_lines(f);
  int64_t end = chaos_now_ms() + timeout_ms;
  while (chaos_now_ms() < end && chaos_fleet_lines(f) - before < lines &&
         !chaos_fleet_poll(f))
    chaos_sleep_ms(20);
}

void chaos_fleet_dump(const chaos_fleet *f) { log_tail(f->out, 30); }

static void log_unsettled(const char *conninfo) {
  PGconn *c = try_connect(conninfo);
  if (c == NULL) {
    cr_log_error("cannot connect to list unsettled sagas");
    return;
  }
  PGresult *r = PQexec(c, "SELECT s.id, s.status, i.key FROM sagas s "
                          "LEFT JOIN saga_idempotency i ON i.saga_id = s.id "
                          "WHERE s.status IN ('running', 'compensating') "
                          "ORDER BY i.key LIMIT 10");
  for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r);
       i++) {
    cr_log_error("unsettled saga %s (%s) key %s", PQgetvalue(r, i, 0),
                 PQgetvalue(r, i, 1), PQgetvalue(r, i, 2));
    fprintf(stderr, "chaos: unsettled saga %s (%s) key %s\n",
            PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2));
  }
  PQclear(r);
  PQfinish(c);
}

void chaos_fleet_drain(chaos_fleet *f, int timeout_s) {
  for (int i = 0; i < f->n; i++)
    if (f->pid[i] > 0 && f->stopped[i]) {
      kill(f->pid[i], SIGCONT);
      f->stopped[i] = false;
    }
  int64_t end = chaos_now_ms() + (int64_t)timeout_s * 1000;
  bool done = false;
  while (chaos_now_ms() < end) {
    done = chaos_fleet_poll(f);
    bool alive = false;
    for (int i = 0; i < f->n; i++)
      alive |= f->pid[i] > 0;
    if (done && !alive)
      break;
    if (done && chaos_now_ms() > end - (int64_t)timeout_s * 1000 + 30000)
      break; /* settled; stragglers get 30 s, then they are killed */
    chaos_sleep_ms(50);
  }
  for (int i = 0; i < f->n; i++)
    chaos_fleet_kill(f, i);
  if (!done) {
    chaos_fleet_dump(f);
    log_unsettled(f->db);
  }
  cr_assert(done, "%s: sagas did not all settle within %d s after the faults "
            "stopped (lost or stuck sagas; see above)", f->prefix, timeout_s);
}

/* ---- invariant checks ---- */

typedef struct view {
  char id[37];
  char status[16];
  int completions[16];
  int comp[17];
  int n_comp;
  int terminal;
  bool last_terminal, seq_ok, seen;
} view;

static bool is_terminal_event(const char *t) {
  return strcmp(t, "SagaCompleted") == 0 ||
         strcmp(t, "SagaCompensated") == 0 || strcmp(t, "SagaFailed") == 0 ||
         strcmp(t, "SagaCancelled") == 0;
}

#define VIOLATION(counter, ...)                                               \
  do {                                                                        \
    (counter)++;                                                              \
    if (shown++ < 20) {                                                       \
      cr_log_error(__VA_ARGS__);                                              \
      fprintf(stderr, "chaos: violation: ");                                  \
      fprintf(stderr, __VA_ARGS__);                                           \
      fprintf(stderr, "\n");                                                  \
    }                                                                         \
  } while (0)

void chaos_check_sagas(const char *conninfo, const char *workflow,
                       const char *prefix, int n, int steps,
                       chaos_expect_fn expect, char (*ids)[37],
                       chaos_stats *st) {
  cr_assert(steps > 0 && steps <= 15);
  PGconn *c = NULL;
  for (int t = 0; t < 100 && c == NULL; t++) {
    c = try_connect(conninfo);
    if (c == NULL)
      chaos_sleep_ms(100);
  }
  cr_assert_not_null(c, "check: cannot connect to %s", conninfo);
  view *v = calloc((size_t)n, sizeof(*v));
  cr_assert_not_null(v);
  for (int i = 0; i < n; i++)
    v[i].seq_ok = true;
  char pat[64];
  snprintf(pat, sizeof(pat), "%s-%%", prefix);
  const char *p[2] = {workflow, pat};
  PGresult *r = PQexecParams(
      c,
      "SELECT split_part(i.key, '-', 2)::int, s.id::text, s.status, e.seq, "
      "  e.type, coalesce(e.step, -1) "
      "FROM saga_idempotency i JOIN sagas s ON s.id = i.saga_id "
      "JOIN saga_events e ON e.saga_id = s.id "
      "WHERE i.workflow = $1 AND i.key LIKE $2 ORDER BY 1, e.seq",
      2, NULL, p, NULL, NULL, 0);
  cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "check query: %s",
               PQerrorMessage(c));
  long *last_seq = calloc((size_t)n, sizeof(long));
  for (int row = 0; row < PQntuples(r); row++) {
    int i = atoi(PQgetvalue(r, row, 0));
    cr_assert(i >= 0 && i < n, "unexpected key index %d", i);
    view *s = &v[i];
    s->seen = true;
    snprintf(s->id, sizeof(s->id), "%s", PQgetvalue(r, row, 1));
    snprintf(s->status, sizeof(s->status), "%s", PQgetvalue(r, row, 2));
    long seq = atol(PQgetvalue(r, row, 3));
    const char *type = PQgetvalue(r, row, 4);
    int step = atoi(PQgetvalue(r, row, 5));
    if (seq != last_seq[i] + 1)
      s->seq_ok = false;
    last_seq[i] = seq;
    bool term = is_terminal_event(type);
    s->terminal += term;
    s->last_terminal = term;
    if (strcmp(type, "StepCompleted") == 0 && step >= 0 && step < steps)
      s->completions[step]++;
    if (strcmp(type, "CompensationCompleted") == 0 && s->n_comp < 16)
      s->comp[s->n_comp++] = step;
  }
  PQclear(r);
  free(last_seq);

  int shown = 0;
  long lost = 0, dup = 0, ooo = 0, wrong = 0;
  for (int i = 0; i < n; i++) {
    view *s = &v[i];
    if (ids != NULL)
      snprintf(ids[i], 37, "%s", s->id);
    if (!s->seen) {
      VIOLATION(lost, "%s-%d: saga missing", prefix, i);
      continue;
    }
    int fail = expect(i);
    int upto = fail == 0 ? steps : fail - 1;
    const char *want = fail == 0 ? "completed" : "compensated";
    if (strcmp(s->status, want) != 0)
      VIOLATION(lost, "saga %s (%s-%d): status %s, want %s", s->id, prefix, i,
                s->status, want);
    if (!s->seq_ok || s->terminal != 1 || !s->last_terminal)
      VIOLATION(wrong, "saga %s: %d terminal events, seq contiguous %d, "
                "terminal last %d", s->id, s->terminal, s->seq_ok,
                s->last_terminal);
    for (int k = 0; k < steps; k++) {
      int w = k < upto ? 1 : 0;
      if (s->completions[k] > w)
        VIOLATION(dup, "saga %s (%s-%d): step %d completed %d times (want %d)",
                  s->id, prefix, i, k, s->completions[k], w);
      else if (s->completions[k] < w)
        VIOLATION(lost, "saga %s (%s-%d): step %d completed %d times (want %d)",
                  s->id, prefix, i, k, s->completions[k], w);
    }
    int want_comp = fail == 0 ? 0 : upto;
    if (s->n_comp != want_comp)
      VIOLATION(ooo, "saga %s (%s-%d): %d compensations for %d completed "
                "steps", s->id, prefix, i, s->n_comp, want_comp);
    for (int k = 0; k < s->n_comp && k < want_comp; k++)
      if (s->comp[k] != upto - 1 - k)
        VIOLATION(ooo, "saga %s: compensation %d undid step %d (want %d): "
                  "not newest-first", s->id, k, s->comp[k], upto - 1 - k);
    if (strcmp(s->status, "completed") == 0)
      st->completed++;
    else if (strcmp(s->status, "compensated") == 0)
      st->compensated++;
  }
  st->sagas += n;
  st->lost += lost;
  st->duplicated += dup;
  st->out_of_order += ooo;

  r = PQexec(c, "SELECT count(*) FROM tasks");
  cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK);
  long left = atol(PQgetvalue(r, 0, 0));
  PQclear(r);
  verify_report rep;
  sk_error err = {0};
  int vrc = queries_verify(c, NULL, &rep, &err);
  PQfinish(c);
  free(v);
  if (lost + dup + ooo + wrong > 0)
    chaos_stats_report(st);
  cr_assert_eq(lost, 0, "%ld sagas lost or not settled as their input "
               "dictates (see above)", lost);
  cr_assert_eq(dup, 0, "%ld duplicated step completions (see above)", dup);
  cr_assert_eq(ooo, 0, "%ld missing or out-of-order compensations (see above)",
               ooo);
  cr_assert_eq(wrong, 0, "%ld sagas with a malformed event log", wrong);
  cr_assert_eq(left, 0, "%ld tasks left in the queue", left);
  cr_assert_eq(vrc, SK_OK, "verify: %s", err.message);
  cr_assert_eq(rep.mismatched, 0,
               "%zu projections differ from the fold of their events "
               "(first: %s)", rep.mismatched, rep.first_mismatch);
}

/* ---- the flapping HTTP target ---- */

typedef struct effect {
  char key[200];
  char path[200];
  int status;
  char body[160];
  bool applied;
} effect;

struct chaos_flap {
  int port;
  int lfd;
  atomic_int mode;
  atomic_bool stop;
  atomic_int active;
  atomic_long requests;
  pthread_t th;
  pthread_mutex_t mu;
  effect *fx;
  size_t n_fx, cap_fx;
  long next_id;
  long conflicts;
};

/* CLOEXEC: the daemon, forked after the target starts, must not inherit
 * the listener (it would keep the port listening while "refused"). */
static int flap_listen(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 128) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* The stored (or new) answer for a request; status 0 = no such route. */
static void flap_apply(chaos_flap *f, const char *method, const char *path,
                       const char *key, int *status, char *body, size_t blen) {
  pthread_mutex_lock(&f->mu);
  for (size_t i = 0; key[0] != '\0' && i < f->n_fx; i++)
    if (strcmp(f->fx[i].key, key) == 0) {
      if (strcmp(f->fx[i].path, path) != 0)
        f->conflicts++;
      *status = f->fx[i].status;
      snprintf(body, blen, "%s", f->fx[i].body);
      pthread_mutex_unlock(&f->mu);
      return;
    }
  bool applied = false;
  if (strcmp(method, "POST") == 0 && strcmp(path, "/fail") == 0) {
    *status = 402;
    snprintf(body, blen, "{\"error\":\"declined\"}");
  } else if (strcmp(method, "POST") == 0 && strncmp(path, "/res/", 5) == 0) {
    *status = 201;
    snprintf(body, blen, "{\"id\":\"%.40s-%ld\"}", path + 5, ++f->next_id);
    applied = true;
  } else if (strcmp(method, "DELETE") == 0 && strncmp(path, "/res/", 5) == 0) {
    *status = 200;
    snprintf(body, blen, "{\"cancelled\":\"%.60s\"}", path + 5);
    applied = true;
  } else {
    *status = 404;
    snprintf(body, blen, "{\"error\":\"no route\"}");
  }
  if (key[0] != '\0') {
    if (f->n_fx == f->cap_fx) {
      f->cap_fx = f->cap_fx ? f->cap_fx * 2 : 256;
      f->fx = realloc(f->fx, f->cap_fx * sizeof(*f->fx));
    }
    effect *e = &f->fx[f->n_fx++];
    /* Long values are cut on purpose: the checker compares prefixes. */
    snprintf(e->key, sizeof(e->key), "%.*s", (int)sizeof(e->key) - 1, key);
    snprintf(e->path, sizeof(e->path), "%.*s", (int)sizeof(e->path) - 1,
             path);
    e->status = *status;
    snprintf(e->body, sizeof(e->body), "%.*s", (int)sizeof(e->body) - 1,
             body);
    e->applied = applied;
  }
  pthread_mutex_unlock(&f->mu);
}

typedef struct conn_arg {
  chaos_flap *f;
  int fd;
} conn_arg;

static void send_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0)
      return;
    p += w;
    n -= (size_t)w;
  }
}

static void *flap_conn(void *ud) {
  conn_arg *a = ud;
  chaos_flap *f = a->f;
  int fd = a->fd;
  free(a);
  struct timeval tv = {2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[8192];
  size_t len = 0;
  char *eoh = NULL;
  size_t need = 0;
  for (;;) {
    ssize_t r = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
    if (r <= 0)
      break;
    len += (size_t)r;
    buf[len] = '\0';
    if (eoh == NULL && (eoh = strstr(buf, "\r\n\r\n")) != NULL) {
      const char *cl = strcasestr(buf, "\r\nContent-Length:");
      need = (size_t)(eoh - buf) + 4 +
             (cl != NULL && cl < eoh ? strtoul(cl + 17, NULL, 10) : 0);
    }
    if (eoh != NULL && len >= need)
      break;
    if (len >= sizeof(buf) - 1)
      break;
  }
  if (eoh == NULL)
    goto out;
  atomic_fetch_add(&f->requests, 1);
  char method[16] = "", path[256] = "", key[200] = "";
  sscanf(buf, "%15s %255s", method, path);
  const char *k = strcasestr(buf, "\r\nIdempotency-Key:");
  if (k != NULL && k < eoh) {
    k += 18;
    while (*k == ' ')
      k++;
    size_t kl = strcspn(k, "\r\n");
    snprintf(key, sizeof(key), "%.*s", (int)kl, k);
  }
  int mode = atomic_load(&f->mode);
  int status = 0;
  char body[256];
  if (mode == FLAP_RESET) {
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    goto out;
  }
  if (mode == FLAP_503) {
    status = 503;
    snprintf(body, sizeof(body), "{\"error\":\"flapping\"}");
  } else {
    flap_apply(f, method, path, key, &status, body, sizeof(body));
  }
  if (mode == FLAP_HANG) {
    /* The effect happened; the answer never comes (past the step timeout). */
    int64_t t0 = chaos_now_ms();
    while (!atomic_load(&f->stop) && chaos_now_ms() - t0 < 3000 &&
           (atomic_load(&f->mode) == FLAP_HANG || chaos_now_ms() - t0 < 1000))
      chaos_sleep_ms(20);
    goto out;
  }
  char head[256];
  size_t bl = strlen(body);
  int hl = snprintf(head, sizeof(head),
                    "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                    "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                    status, bl);
  send_all(fd, head, (size_t)hl);
  send_all(fd, body, bl);
out:
  close(fd);
  atomic_fetch_sub(&f->active, 1);
  return NULL;
}

static void *flap_main(void *ud) {
  chaos_flap *f = ud;
  while (!atomic_load(&f->stop)) {
    int mode = atomic_load(&f->mode);
    if (mode == FLAP_REFUSE && f->lfd >= 0) {
      close(f->lfd);
      f->lfd = -1;
    } else if (mode != FLAP_REFUSE && f->lfd < 0) {
      f->lfd = flap_listen(f->port);
    }
    if (f->lfd < 0) {
      chaos_sleep_ms(10);
      continue;
    }
    struct pollfd pf = {.fd = f->lfd, .events = POLLIN};
    if (poll(&pf, 1, 20) <= 0)
      continue;
    int fd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC); /* blocking */
    if (fd < 0)
      continue;
    conn_arg *a = malloc(sizeof(*a));
    a->f = f;
    a->fd = fd;
    atomic_fetch_add(&f->active, 1);
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &at, flap_conn, a) != 0) {
      close(fd);
      free(a);
      atomic_fetch_sub(&f->active, 1);
    }
    pthread_attr_destroy(&at);
  }
  if (f->lfd >= 0)
    close(f->lfd);
  f->lfd = -1;
  return NULL;
}

chaos_flap *chaos_flap_start(void) {
  chaos_flap *f = calloc(1, sizeof(*f));
  cr_assert_not_null(f);
  pthread_mutex_init(&f->mu, NULL);
  for (int t = 0; t < 20 && f->lfd <= 0; t++) {
    f->port = skd_free_port();
    f->lfd = flap_listen(f->port);
  }
  cr_assert_geq(f->lfd, 0, "flap server: cannot listen");
  atomic_store(&f->mode, FLAP_OK);
  cr_assert_eq(pthread_create(&f->th, NULL, flap_main, f), 0);
  return f;
}

int chaos_flap_port(const chaos_flap *f) { return f->port; }

void chaos_flap_set(chaos_flap *f, enum chaos_flap_mode m) {
  atomic_store(&f->mode, (int)m);
}

int chaos_flap_effects(chaos_flap *f, const char *key) {
  int n = 0;
  pthread_mutex_lock(&f->mu);
  for (size_t i = 0; i < f->n_fx; i++)
    n += f->fx[i].applied && strcmp(f->fx[i].key, key) == 0;
  pthread_mutex_unlock(&f->mu);
  return n;
}

long chaos_flap_requests(const chaos_flap *f) {
  return atomic_load(&((chaos_flap *)f)->requests);
}

long chaos_flap_key_conflicts(const chaos_flap *f) {
  chaos_flap *m = (chaos_flap *)f;
  pthread_mutex_lock(&m->mu);
  long n = m->conflicts;
  pthread_mutex_unlock(&m->mu);
  return n;
}

void chaos_flap_stop(chaos_flap *f) {
  if (f == NULL)
    return;
  atomic_store(&f->stop, true);
  pthread_join(f->th, NULL);
  for (int t = 0; t < 250 && atomic_load(&f->active) > 0; t++)
    chaos_sleep_ms(20);
  if (atomic_load(&f->active) > 0)
    return; /* a handler is still out: leak rather than free under it */
  pthread_mutex_destroy(&f->mu);
  free(f->fx);
  free(f);
}

/* ---- crash_wf rounds ---- */

static int crash_expect(int i) { return i % 4 == 0 ? 1 + (i / 4) % 5 : 0; }

chaos_expect_fn chaos_crash_expect = crash_expect;

void chaos_crash_round(chaos_env *e, const char *db, const char *prefix,
                       int nodes, int sagas, int lease_ms, long fault_budget,
                       long min_gap_ms, long max_gap_ms, chaos_inject_fn inject,
                       void *ud, chaos_stats *st) {
  chaos_fleet f;
  chaos_fleet_init(&f, e, db, prefix, nodes, sagas, lease_ms);
  chaos_fleet_start(&f);
  /* Faults start once the run is under way. */
  chaos_fleet_wait_progress(&f, 20, 60000);
  long injected = 0;
  int64_t hard_end = chaos_now_ms() + 240000;
  while (injected < fault_budget && chaos_now_ms() < hard_end) {
    int64_t gap_end = chaos_now_ms() + chaos_rand(min_gap_ms, max_gap_ms);
    bool done = false;
    while (!done && chaos_now_ms() < gap_end) {
      done = chaos_fleet_poll(&f);
      chaos_sleep_ms(10);
    }
    if (done)
      break;
    injected += inject(&f, st, ud);
  }
  chaos_fleet_drain(&f, 300);
  st->respawns += f.respawns;
  st->rounds++;
  chaos_check_sagas(db, "crash_wf", prefix, sagas, 5, crash_expect, NULL, st);
  sagacheck_stats ss;
  sagacheck_crash_wf(db, f.log, prefix, sagas, &ss);
  st->executions += (long)ss.executions;
}
