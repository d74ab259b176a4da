/*
 * skald_bench_recovery.c — recovery after a crash: with N sagas in flight
 * the engine process is SIGKILLed and restarted; every saga must resume and
 * the backlog drain. Reports the time from the restart to the first resumed
 * step and to the last completed saga.
 *
 * Three processes, one program. The parent (the default mode) re-executes
 * itself (/proc/self/exe) with the internal flag --child-phase:
 *   load    opens an engine under a FIXED node name (--node-name), registers
 *           "bench_recovery" v1 (K task steps of type "noop" whose handler
 *           sleeps --step-sleep-ms), starts N sagas from S starter threads
 *           (sk_run_start blocks until its group commit), prints "READY n"
 *           once every start has committed, and runs on until killed.
 *   resume  opens an engine under the same node name on the same database,
 *           registers the same workflow (handler returns {} at once), prints
 *           "STARTED <ms>" (CLOCK_REALTIME) once the engine runs, starts no
 *           saga, and on SIGTERM stops the engine cleanly and prints
 *           "HANDLED <handler calls>".
 * The parent starts load, SIGKILLs it as soon as it reads READY, waits for
 * the killed process's database sessions to end (a COMMIT already sent may
 * still land), snapshots what is in flight, notes t_restart (CLOCK_REALTIME)
 * and starts resume. It polls the database every 20 ms until no saga of the
 * run is running or compensating, stops resume, then checks and reports.
 *
 * The figures come from the database, not from the polling: the engine
 * stamps events and sagas from CLOCK_REALTIME of this same machine, so they
 * compare with t_restart directly.
 *   first_resumed_step_ms  min(created_at) of the run's StepCompleted events
 *                          at or after t_restart, minus t_restart
 *   last_completed_ms      max(updated_at) of the run's sagas, minus
 *                          t_restart (sagas updated before it excluded)
 *   drain_steps_per_s      StepCompleted events at or after t_restart /
 *                          last_completed_ms
 * The run's sagas are those of the workflow created at or after the moment
 * the parent started load; the parent refuses a database that still holds
 * unsettled sagas of the workflow (they would be resumed too).
 *
 * Checks after draining (exit 1 if one fails): exactly N sagas in the run,
 * all completed; exactly one StepCompleted per (saga, step), N*K in all;
 * no task row left for the run's sagas; resume stopped cleanly.
 *
 * Database. --database-url (or $SKALD_DATABASE_URL), else the embedded
 * PostgreSQL in --data-dir. The PARENT starts the embedded server
 * (pgembed_start, as the engine does) and so owns it: both children find it
 * running and reuse it, the SIGKILL of load leaves it untouched, and the
 * parent stops it at exit on every path (pgembed_stop). No orphans: each
 * child gets PR_SET_PDEATHSIG (SIGTERM), and the parent's exit handler kills
 * and reaps a child still running. Only a SIGKILL of the parent itself
 * leaves the embedded server up (stop it with pg_ctl -D <dir>/pg stop, as
 * bench/run.sh's cleanup does; a later run would reuse it and leave it up).
 *
 * Threads: the parent has one. A child has main (setup, then sigwait),
 * starters (load) and the engine's threads (the handler).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <skald/skald.h>

#include "bench_util.h"
#include "common/log.h"    /* quieter pgembed logs in the parent */
#include "store/pgembed.h" /* the parent owns the embedded server */

#define WORKFLOW "bench_recovery"
#define TASK_TYPE "noop"
#define POLL_MS 20
#define PROGRESS_MS 5000
#define SESSIONS_WAIT_MS 10000
#define STOP_WAIT_MS 60000
#define STARTER_STACK (256 * 1024)

typedef enum phase { PHASE_PARENT = 0, PHASE_LOAD, PHASE_RESUME } phase;

typedef struct options {
  long long sagas;
  int steps;
  int workers;
  int starters;
  int step_sleep_ms;
  int lease_ttl_ms; /* 0 = the engine's default */
  int timeout_s;
  bool json;
  const char *node_name;
  const char *database_url;
  const char *data_dir;
  phase phase;         /* internal: --child-phase */
  const char *run_tag; /* internal: idempotency key prefix (load) */
} options;

/* ---- small helpers ------------------------------------------------------- */

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- arguments ----------------------------------------------------------- */

static void usage(FILE *f) {
  fputs(
      "usage: skald_bench_recovery [options]\n"
      "  --sagas N          sagas in flight at the kill (default 10000)\n"
      "  --steps K          task steps per saga, 1..256 (default 5)\n"
      "  --workers W        threads of the default bulkhead (default 64)\n"
      "  --starters S       threads starting sagas in the load phase\n"
      "                     (default min(N, 256))\n"
      "  --step-sleep-ms MS handler sleep in the load phase (default 2);\n"
      "                     after the restart the handler returns at once\n"
      "  --node-name NAME   the engine's node name, the same before and after\n"
      "                     the kill (default bench-recovery-node)\n"
      "  --lease-ttl-ms MS  the engine's lease_ttl_ms (default: its own)\n"
      "  --database-url URL libpq URL (default: $SKALD_DATABASE_URL, else the\n"
      "                     embedded PostgreSQL in --data-dir)\n"
      "  --data-dir DIR     embedded PostgreSQL home (default\n"
      "                     ./.skald-bench-recovery)\n"
      "  --timeout S        give up after S seconds per phase (default 300)\n"
      "  --json             print one JSON line of results\n"
      "  --help\n",
      f);
}

static void parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof(*o));
  o->sagas = 10000;
  o->steps = 5;
  o->workers = 64;
  o->step_sleep_ms = 2;
  o->timeout_s = 300;
  o->node_name = "bench-recovery-node";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    bool takes = true;
    if (strcmp(a, "--sagas") == 0)
      o->sagas = parse_int(a, v, 1, 10000000);
    else if (strcmp(a, "--steps") == 0)
      o->steps = (int)parse_int(a, v, 1, SK_STEPS_MAX);
    else if (strcmp(a, "--workers") == 0)
      o->workers = (int)parse_int(a, v, 1, 4096);
    else if (strcmp(a, "--starters") == 0)
      o->starters = (int)parse_int(a, v, 1, 4096);
    else if (strcmp(a, "--step-sleep-ms") == 0)
      o->step_sleep_ms = (int)parse_int(a, v, 0, 600000);
    else if (strcmp(a, "--lease-ttl-ms") == 0)
      o->lease_ttl_ms = (int)parse_int(a, v, 300, 3600000);
    else if (strcmp(a, "--timeout") == 0)
      o->timeout_s = (int)parse_int(a, v, 1, 86400);
    else if (strcmp(a, "--node-name") == 0) {
      o->node_name = parse_str(a, v);
      if (strlen(o->node_name) > SK_NAME_MAX)
        bad_arg("--node-name must be at most %d bytes", SK_NAME_MAX);
    } else if (strcmp(a, "--database-url") == 0)
      o->database_url = parse_str(a, v);
    else if (strcmp(a, "--data-dir") == 0)
      o->data_dir = parse_str(a, v);
    else if (strcmp(a, "--run-tag") == 0)
      o->run_tag = parse_str(a, v);
    else if (strcmp(a, "--child-phase") == 0) {
      if (v != NULL && strcmp(v, "load") == 0)
        o->phase = PHASE_LOAD;
      else if (v != NULL && strcmp(v, "resume") == 0)
        o->phase = PHASE_RESUME;
      else
        bad_arg("--child-phase must be \"load\" or \"resume\"");
    } else if (strcmp(a, "--json") == 0) {
      o->json = true;
      takes = false;
    } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      exit(0);
    } else {
      bad_arg("unknown argument \"%s\"", a);
    }
    if (takes)
      i++;
  }
  if (o->database_url != NULL && o->data_dir != NULL)
    bad_arg("give --database-url or --data-dir, not both");
  if (o->phase == PHASE_LOAD && o->run_tag == NULL)
    bad_arg("--child-phase load needs --run-tag");
  if (o->starters == 0)
    o->starters = o->sagas < 256 ? (int)o->sagas : 256;
  if (o->starters > o->sagas)
    o->starters = (int)o->sagas;
  /* An explicit --data-dir wins over the environment's URL. */
  if (o->database_url == NULL && o->data_dir == NULL) {
    const char *env = getenv("SKALD_DATABASE_URL");
    if (env != NULL && env[0] != '\0')
      o->database_url = env;
  }
  if (o->database_url == NULL && o->data_dir == NULL)
    o->data_dir = "./.skald-bench-recovery";
}

/* ======================================================================== */
/* Children                                                                  */
/* ======================================================================== */

typedef struct child {
  const options *o;
  sk_engine *e;
  int sleep_ms;          /* handler sleep (load only) */
  atomic_ullong handled; /* handler calls */
  atomic_llong next;     /* next saga ordinal to start */
  atomic_llong started;  /* starts committed */
  atomic_bool failed;    /* a start failed: stop starting */
  pthread_mutex_t mu;    /* the first start error is reported once */
} child;

static int noop_task(const sk_task *t, sk_task_result *r, void *ud) {
  child *c = ud;
  (void)t;
  atomic_fetch_add(&c->handled, 1);
  if (c->sleep_ms > 0)
    sleep_ms(c->sleep_ms);
  return sk_result_ok(r, "{}");
}

static void child_open_engine(child *c) {
  const options *o = c->o;
  sk_engine_options eo;
  sk_engine_options_init(&eo);
  eo.database_url = o->database_url;
  eo.data_dir = o->data_dir;
  eo.node_name = o->node_name;
  eo.default_concurrency = o->workers;
  eo.gpu_provider = "none"; /* no GPU steps here: no sampling thread */
  eo.log_level = 1;
  if (o->lease_ttl_ms > 0)
    eo.lease_ttl_ms = o->lease_ttl_ms;
  c->e = bench_open_engine(&eo, WORKFLOW, TASK_TYPE, o->steps, noop_task, c);
}

static void *starter_main(void *arg) {
  child *c = arg;
  const options *o = c->o;
  for (;;) {
    long long i = atomic_fetch_add(&c->next, 1);
    if (i >= o->sagas || atomic_load(&c->failed))
      break;
    char key[160], id[SK_ID_LEN];
    snprintf(key, sizeof(key), "%s-%lld", o->run_tag, i);
    sk_run_options ro = {.version = 1, .idempotency_key = key};
    sk_error err = {0};
    bool existed = false;
    int rc = sk_run_start(c->e, WORKFLOW, "{}", &ro, id, &existed, &err);
    if (rc == SK_OK && existed) {
      rc = SK_EEXIST;
      snprintf(err.message, sizeof(err.message),
               "idempotency key %s was used before", key);
    }
    if (rc != SK_OK) {
      pthread_mutex_lock(&c->mu);
      if (!atomic_exchange(&c->failed, true))
        fprintf(stderr, "%s: could not start a saga: %s (%s)\n", bench_prog,
                err.message[0] ? err.message : sk_strerror(rc),
                sk_err_name(rc));
      pthread_mutex_unlock(&c->mu);
      break;
    }
    atomic_fetch_add(&c->started, 1);
  }
  return NULL;
}

/* Starts every saga; returns once all starts committed (or one failed). */
static void child_load(child *c) {
  const options *o = c->o;
  pthread_t *th = calloc((size_t)o->starters, sizeof(pthread_t));
  if (th == NULL)
    die("out of memory");
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, STARTER_STACK);
  int n = 0;
  for (; n < o->starters; n++)
    if (pthread_create(&th[n], &attr, starter_main, c) != 0)
      break;
  pthread_attr_destroy(&attr);
  if (n == 0)
    die("could not start starter threads");
  for (int i = 0; i < n; i++)
    pthread_join(th[i], NULL);
  free(th);
  if (atomic_load(&c->failed) || atomic_load(&c->started) != o->sagas)
    die("only %lld of %lld sagas started", (long long)atomic_load(&c->started),
        o->sagas);
}

static int child_main(const options *o) {
  bench_prog = o->phase == PHASE_LOAD ? "bench-recovery[load]"
                                      : "bench-recovery[resume]";
  /* Every thread the engine creates inherits this mask, so SIGTERM and
   * SIGINT reach only the sigwait below. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, NULL);

  child c;
  memset(&c, 0, sizeof(c));
  c.o = o;
  c.sleep_ms = o->phase == PHASE_LOAD ? o->step_sleep_ms : 0;
  atomic_init(&c.handled, 0);
  atomic_init(&c.next, 0);
  atomic_init(&c.started, 0);
  atomic_init(&c.failed, false);
  pthread_mutex_init(&c.mu, NULL);
  child_open_engine(&c);
  if (o->phase == PHASE_LOAD) {
    child_load(&c);
    printf("READY %lld\n", (long long)atomic_load(&c.started));
  } else {
    printf("STARTED %" PRId64 "\n", wall_ms());
  }
  fflush(stdout);

  int sig = 0;
  while (sigwait(&set, &sig) != 0)
    ;
  sk_engine_close(c.e); /* stops: results committed, leases handed back */
  printf("HANDLED %llu\n", (unsigned long long)atomic_load(&c.handled));
  fflush(stdout);
  pthread_mutex_destroy(&c.mu);
  return 0;
}

/* ======================================================================== */
/* Parent                                                                    */
/* ======================================================================== */

/* What the exit handler must undo, on every path out of the parent. */
static struct {
  pid_t child;
  int child_fd;
  PGconn *conn;
  pgembed *pg;
  char *conninfo;
} g = {.child = 0, .child_fd = -1};

static volatile sig_atomic_t g_interrupted;

static void on_signal(int sig) {
  (void)sig;
  g_interrupted = 1;
}

static void parent_cleanup(void) {
  if (g.child > 0) {
    kill(g.child, SIGKILL);
    while (waitpid(g.child, NULL, 0) < 0 && errno == EINTR)
      ;
    g.child = 0;
  }
  if (g.child_fd >= 0)
    close(g.child_fd);
  g.child_fd = -1;
  PQfinish(g.conn);
  g.conn = NULL;
  pgembed_stop(g.pg); /* stops the server only if we started it */
  g.pg = NULL;
  free(g.conninfo);
  g.conninfo = NULL;
}

static void check_interrupted(void) {
  if (g_interrupted)
    die("interrupted");
}

/* ---- children: spawn, read lines, reap ----------------------------------- */

typedef struct linebuf {
  char buf[512];
  size_t len;
  bool eof;
} linebuf;

/* Takes one complete line out of lb into out (without the newline). */
static bool take_line(linebuf *lb, char *out, size_t n) {
  char *nl = memchr(lb->buf, '\n', lb->len);
  if (nl == NULL)
    return false;
  size_t l = (size_t)(nl - lb->buf);
  snprintf(out, n, "%.*s", (int)l, lb->buf);
  memmove(lb->buf, nl + 1, lb->len - l - 1);
  lb->len -= l + 1;
  return true;
}

/* A line from the child's stdout, waiting at most wait_ms. */
static bool read_line(linebuf *lb, int wait_ms, char *out, size_t n) {
  if (take_line(lb, out, n))
    return true;
  if (lb->eof)
    return false;
  struct pollfd p = {.fd = g.child_fd, .events = POLLIN};
  if (poll(&p, 1, wait_ms) <= 0)
    return false;
  if (lb->len == sizeof(lb->buf))
    lb->len = 0; /* a line this long is not ours: drop it */
  ssize_t r = read(g.child_fd, lb->buf + lb->len, sizeof(lb->buf) - lb->len);
  if (r == 0)
    lb->eof = true;
  else if (r > 0)
    lb->len += (size_t)r;
  return take_line(lb, out, n);
}

static void describe_status(int st, char *out, size_t n) {
  if (WIFEXITED(st))
    snprintf(out, n, "exited with status %d", WEXITSTATUS(st));
  else if (WIFSIGNALED(st))
    snprintf(out, n, "was killed by signal %d", WTERMSIG(st));
  else
    snprintf(out, n, "ended (wait status %d)", st);
}

/* Dies if the child ended on its own. */
static void check_child_alive(const char *what) {
  int st = 0;
  pid_t r = waitpid(g.child, &st, WNOHANG);
  if (r == g.child) {
    char how[64];
    describe_status(st, how, sizeof(how));
    g.child = 0;
    die("the %s child %s", what, how);
  }
}

/* Starts this program again as a child of the given phase, its stdout a
 * pipe to us (g.child_fd). Everything is formatted before the fork. */
static void spawn_child(const options *o, const char *ph, const char *tag) {
  char n_sagas[32], n_steps[32], n_workers[32], n_starters[32], n_sleep[32],
      n_ttl[32];
  snprintf(n_sagas, sizeof(n_sagas), "%lld", o->sagas);
  snprintf(n_steps, sizeof(n_steps), "%d", o->steps);
  snprintf(n_workers, sizeof(n_workers), "%d", o->workers);
  snprintf(n_starters, sizeof(n_starters), "%d", o->starters);
  snprintf(n_sleep, sizeof(n_sleep), "%d", o->step_sleep_ms);
  snprintf(n_ttl, sizeof(n_ttl), "%d", o->lease_ttl_ms);
  const char *argv[32];
  int a = 0;
  argv[a++] = "skald_bench_recovery";
  argv[a++] = "--child-phase";
  argv[a++] = ph;
  argv[a++] = "--sagas";
  argv[a++] = n_sagas;
  argv[a++] = "--steps";
  argv[a++] = n_steps;
  argv[a++] = "--workers";
  argv[a++] = n_workers;
  argv[a++] = "--starters";
  argv[a++] = n_starters;
  argv[a++] = "--step-sleep-ms";
  argv[a++] = n_sleep;
  argv[a++] = "--node-name";
  argv[a++] = o->node_name;
  if (o->lease_ttl_ms > 0) {
    argv[a++] = "--lease-ttl-ms";
    argv[a++] = n_ttl;
  }
  argv[a++] = "--run-tag";
  argv[a++] = tag;
  argv[a++] = o->database_url != NULL ? "--database-url" : "--data-dir";
  argv[a++] = o->database_url != NULL ? o->database_url : o->data_dir;
  argv[a] = NULL;

  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0)
    die("could not create a pipe: %s", strerror(errno));
  fflush(NULL);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0)
    die("could not fork: %s", strerror(errno));
  if (pid == 0) {
    /* Only async-signal-safe calls until exec. SIGTERM when we die: the
     * child stops its engine cleanly; nothing outlives the parent. */
    if (dup2(fds[1], STDOUT_FILENO) < 0 ||
        prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent)
      _exit(126);
    execv("/proc/self/exe", (char *const *)argv);
    _exit(127);
  }
  close(fds[1]);
  g.child = pid;
  g.child_fd = fds[0];
}

/* SIGTERMs the resume child and reaps it; its last line says how many
 * handler calls it made. Returns false if it did not stop cleanly. */
static bool stop_child(linebuf *lb, long long *handled) {
  kill(g.child, SIGTERM);
  int64_t deadline = mono_ms() + STOP_WAIT_MS;
  char line[512];
  while (!lb->eof && mono_ms() < deadline) {
    if (read_line(lb, 200, line, sizeof(line)) &&
        strncmp(line, "HANDLED ", 8) == 0)
      *handled = atoll(line + 8);
  }
  while (take_line(lb, line, sizeof(line)))
    if (strncmp(line, "HANDLED ", 8) == 0)
      *handled = atoll(line + 8);
  int st = 0;
  pid_t r;
  while ((r = waitpid(g.child, &st, lb->eof ? 0 : WNOHANG)) < 0 &&
         errno == EINTR)
    ;
  if (r != g.child) {
    fprintf(stderr,
            "%s: the resume child did not stop within %d s; "
            "killing it\n",
            bench_prog, STOP_WAIT_MS / 1000);
    return false; /* the exit handler kills and reaps it */
  }
  g.child = 0;
  close(g.child_fd);
  g.child_fd = -1;
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    char how[64];
    describe_status(st, how, sizeof(how));
    fprintf(stderr, "%s: the resume child %s on stop\n", bench_prog, how);
    return false;
  }
  return true;
}

/* ---- queries ------------------------------------------------------------- */

/* The run's sagas: $1 the workflow, $2 the load start (ms since epoch). The
 * engine stores created_at as to_timestamp(ms / 1000.0), the same rounding. */
#define RUN_SAGAS                                                              \
  "workflow = $1 AND created_at >= to_timestamp($2::bigint / 1000.0)"
#define RUN_SAGAS_S                                                            \
  "s.workflow = $1 AND s.created_at >= to_timestamp($2::bigint / 1000.0)"

static PGresult *query(const char *sql, int n, const char *const *params) {
  PGresult *r = PQexecParams(g.conn, sql, n, NULL, params, NULL, NULL, 0);
  ExecStatusType s = PQresultStatus(r);
  if (s != PGRES_TUPLES_OK && s != PGRES_COMMAND_OK) {
    fprintf(stderr, "%s: query failed: %s", bench_prog, PQerrorMessage(g.conn));
    PQclear(r);
    die("(the query was: %.120s...)", sql);
  }
  return r;
}

/* Column c of row 0 as an integer; null → -1. */
static long long val(const PGresult *r, int c) {
  if (PQntuples(r) < 1 || PQgetisnull(r, 0, c))
    return -1;
  return atoll(PQgetvalue(r, 0, c));
}

static void connect_db(const options *o) {
  if (o->database_url != NULL) {
    g.conninfo = strdup(o->database_url);
    if (g.conninfo == NULL)
      die("out of memory");
  } else {
    sk_error err = {0};
    int rc = pgembed_start(o->data_dir, &g.pg, &g.conninfo, &err);
    if (rc != SK_OK)
      die("could not start the embedded PostgreSQL: %s",
          err.message[0] ? err.message : sk_strerror(rc));
  }
  const char *const keys[] = {"dbname", "fallback_application_name", NULL};
  const char *const vals[] = {g.conninfo, "skald_bench_recovery", NULL};
  g.conn = PQconnectdbParams(keys, vals, 1);
  if (PQstatus(g.conn) != CONNECTION_OK)
    die("could not connect to the database: %s", PQerrorMessage(g.conn));
}

/* Unsettled sagas of the workflow from an earlier run would be resumed by
 * our node too and muddle every figure. */
static void check_fresh(void) {
  PGresult *r = query("SELECT to_regclass('sagas') IS NOT NULL", 0, NULL);
  bool have = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
  PQclear(r);
  if (!have)
    return;
  const char *p[1] = {WORKFLOW};
  r = query("SELECT count(*) FROM sagas WHERE workflow = $1 "
            "AND status IN ('running', 'compensating')",
            1, p);
  long long n = val(r, 0);
  PQclear(r);
  if (n > 0)
    die("the database holds %lld unsettled %s sagas of an earlier run; "
        "use a fresh database",
        n, WORKFLOW);
}

/* After the SIGKILL the server may still be finishing the dead process's
 * last statements (a COMMIT already sent still commits); wait until its
 * sessions are gone so the snapshot is final. */
static void wait_sessions_gone(void) {
  int64_t deadline = mono_ms() + SESSIONS_WAIT_MS;
  for (;;) {
    PGresult *r = query("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                        "current_database() AND application_name = 'skald' "
                        "AND pid <> pg_backend_pid()",
                        0, NULL);
    long long n = val(r, 0);
    PQclear(r);
    if (n == 0)
      return;
    if (mono_ms() >= deadline) {
      fprintf(stderr,
              "%s: %lld sessions named \"skald\" still open %d s after the "
              "kill (another engine on this database?); going on\n",
              bench_prog, n, SESSIONS_WAIT_MS / 1000);
      return;
    }
    sleep_ms(20);
  }
}

typedef struct figures {
  int64_t t_load, t_ready, t_kill, t_restart, t_started;
  /* at the kill */
  long long sagas_at_kill, in_flight_at_kill, steps_done_at_kill;
  long long tasks_at_kill, leased_at_kill;
  long long lease_expiry_lo, lease_expiry_hi; /* ms since epoch; 0 = none */
  /* after draining (ms relative to t_restart; -1 = none) */
  long long sagas, completed, other_status;
  long long step_events, distinct_steps, steps_after_restart;
  long long first_step_ms, last_completed_ms, last_step_ms;
  long long leased_done, leased_first_ms, leased_last_ms;
  long long last_unleased_ms; /* last completed of the sagas not leased */
  long long tasks_left, handled;
  bool stopped_clean;
} figures;

static void snapshot_at_kill(const char *const p[2], figures *f) {
  PGresult *r =
      query("SELECT count(*), count(*) FILTER (WHERE status <> 'completed'), "
            "  (SELECT count(*) FROM saga_events e JOIN sagas s "
            "     ON s.id = e.saga_id AND " RUN_SAGAS_S
            "   WHERE e.type = 'StepCompleted') "
            "FROM sagas WHERE " RUN_SAGAS,
            2, p);
  f->sagas_at_kill = val(r, 0);
  f->in_flight_at_kill = val(r, 1);
  f->steps_done_at_kill = val(r, 2);
  PQclear(r);
  /* The forward tasks that the dead node held leases on, and when those
   * leases run out (available_at of a leased task is its lease expiry). */
  PQclear(query("CREATE TEMP TABLE leased_at_kill AS "
                "SELECT t.saga_id, t.step, t.available_at FROM tasks t "
                "JOIN sagas s ON s.id = t.saga_id AND " RUN_SAGAS_S
                " WHERE t.kind = 0 AND t.lease_owner IS NOT NULL",
                2, p));
  r = query("SELECT count(*), l.n, l.lo, l.hi FROM tasks t "
            "JOIN sagas s ON s.id = t.saga_id AND " RUN_SAGAS_S ", "
            "  (SELECT count(*) AS n, "
            "   min((extract(epoch FROM available_at) * 1000)::bigint) AS lo, "
            "   max((extract(epoch FROM available_at) * 1000)::bigint) AS hi "
            "   FROM leased_at_kill) l "
            "GROUP BY l.n, l.lo, l.hi",
            2, p);
  f->tasks_at_kill = PQntuples(r) > 0 ? val(r, 0) : 0;
  f->leased_at_kill = PQntuples(r) > 0 ? val(r, 1) : 0;
  f->lease_expiry_lo =
      PQntuples(r) > 0 && !PQgetisnull(r, 0, 2) ? val(r, 2) : 0;
  f->lease_expiry_hi =
      PQntuples(r) > 0 && !PQgetisnull(r, 0, 3) ? val(r, 3) : 0;
  PQclear(r);
}

/* Polls until no saga of the run is running or compensating. */
static void wait_drained(const options *o, const char *const p[2], linebuf *lb,
                         figures *f) {
  int64_t start = mono_ms(), deadline = start + (int64_t)o->timeout_s * 1000;
  int64_t next_progress = start + PROGRESS_MS;
  char line[512];
  for (;;) {
    check_interrupted();
    check_child_alive("resume");
    while (read_line(lb, 0, line, sizeof(line)))
      if (strncmp(line, "STARTED ", 8) == 0)
        f->t_started = atoll(line + 8);
    /* LIMIT 1 on the status index: cheap however many remain, so the
     * polling itself does not slow the drain it measures. */
    PGresult *r = query("SELECT 1 FROM sagas WHERE status IN ('running', "
                        "'compensating') AND " RUN_SAGAS " LIMIT 1",
                        2, p);
    bool left = PQntuples(r) > 0;
    PQclear(r);
    if (!left)
      return;
    int64_t now = mono_ms();
    if (now >= next_progress || now >= deadline) {
      r = query("SELECT count(*) FROM sagas WHERE status IN ('running', "
                "'compensating') AND " RUN_SAGAS,
                2, p);
      long long n = val(r, 0);
      PQclear(r);
      if (now >= deadline)
        die("%lld sagas still unsettled %d s after the restart", n,
            o->timeout_s);
      fprintf(stderr, "%s: %.1f s after the restart: %lld sagas unsettled\n",
              bench_prog, (double)(now - start) / 1000.0, n);
      next_progress = now + PROGRESS_MS;
    }
    sleep_ms(POLL_MS);
  }
}

/* Everything is read after the resume child stopped: nothing changes. */
static void read_figures(const char *const p[2], figures *f) {
  char t_restart[32];
  snprintf(t_restart, sizeof(t_restart), "%" PRId64, f->t_restart);
  const char *p3[3] = {p[0], p[1], t_restart};
  PGresult *r = query(
      "WITH s AS (SELECT id, status, updated_at FROM sagas WHERE " RUN_SAGAS
      "), ev AS (SELECT e.saga_id, e.step, "
      "  (extract(epoch FROM e.created_at) * 1000)::bigint AS ms "
      "  FROM saga_events e JOIN s ON s.id = e.saga_id "
      "  WHERE e.type = 'StepCompleted') "
      "SELECT (SELECT count(*) FROM s), "
      "  (SELECT count(*) FROM s WHERE status = 'completed'), "
      "  (SELECT max((extract(epoch FROM updated_at) * 1000)::bigint) "
      "     - $3::bigint FROM s "
      "   WHERE (extract(epoch FROM updated_at) * 1000)::bigint "
      "     >= $3::bigint), "
      "  (SELECT count(*) FROM ev), "
      "  (SELECT count(*) FROM (SELECT DISTINCT saga_id, step FROM ev) d), "
      "  (SELECT count(*) FROM ev WHERE ms >= $3::bigint), "
      "  (SELECT min(ms) - $3::bigint FROM ev WHERE ms >= $3::bigint), "
      "  (SELECT max(ms) - $3::bigint FROM ev WHERE ms >= $3::bigint), "
      "  (SELECT count(*) FROM tasks t JOIN s ON s.id = t.saga_id)",
      3, p3);
  f->sagas = val(r, 0);
  f->completed = val(r, 1);
  f->last_completed_ms = val(r, 2);
  f->step_events = val(r, 3);
  f->distinct_steps = val(r, 4);
  f->steps_after_restart = val(r, 5);
  f->first_step_ms = val(r, 6);
  f->last_step_ms = val(r, 7);
  f->tasks_left = val(r, 8);
  PQclear(r);
  f->other_status = f->sagas - f->completed;
  /* When the steps whose leases died with the killed node completed. */
  r = query("SELECT count(*), min(ms) - $1::bigint, max(ms) - $1::bigint FROM ("
            "  SELECT (extract(epoch FROM e.created_at) * 1000)::bigint AS ms "
            "  FROM leased_at_kill l JOIN saga_events e "
            "    ON e.saga_id = l.saga_id AND e.step = l.step "
            "  WHERE e.type = 'StepCompleted') x",
            1, (const char *const[]){t_restart});
  f->leased_done = val(r, 0);
  f->leased_first_ms = PQgetisnull(r, 0, 1) ? -1 : val(r, 1);
  f->leased_last_ms = PQgetisnull(r, 0, 2) ? -1 : val(r, 2);
  PQclear(r);
  /* The backlog without them: what recovery takes when no lease waits. */
  r = query("SELECT max(ms) - $3::bigint FROM ("
            "  SELECT (extract(epoch FROM updated_at) * 1000)::bigint AS ms "
            "  FROM sagas s WHERE " RUN_SAGAS_S " AND NOT EXISTS ("
            "    SELECT 1 FROM leased_at_kill l WHERE l.saga_id = s.id)) x "
            "WHERE ms >= $3::bigint",
            3, p3);
  f->last_unleased_ms = val(r, 0);
  PQclear(r);
}

/* ---- report ----------------------------------------------------------------
 */

static void json_str(const char *s) {
  putchar('"');
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      printf("\\%c", ch);
    else if (ch < 0x20)
      printf("\\u%04x", ch);
    else
      putchar(ch);
  }
  putchar('"');
}

/* A relative time in ms, or null. */
static void json_ms(const char *key, long long ms) {
  if (ms < 0)
    printf(",\"%s\":null", key);
  else
    printf(",\"%s\":%lld", key, ms);
}

/* A signed time relative to t_restart from an absolute one (0 = none). */
static void json_rel(const char *key, long long abs_ms, int64_t t0) {
  if (abs_ms == 0)
    printf(",\"%s\":null", key);
  else
    printf(",\"%s\":%lld", key, abs_ms - (long long)t0);
}

static void fmt_ms(char *out, size_t n, long long ms) {
  if (ms < 0)
    snprintf(out, n, "none");
  else
    snprintf(out, n, "%lld ms", ms);
}

static double drain_rate(const figures *f) {
  if (f->last_completed_ms <= 0)
    return 0;
  return (double)f->steps_after_restart / ((double)f->last_completed_ms / 1e3);
}

static void report(const options *o, int ttl, const figures *f, bool ok) {
  long long started_ms = f->t_started > 0 ? f->t_started - f->t_restart : -1;
  if (o->json) {
    printf("{\"sagas\":%lld,\"steps\":%d,\"workers\":%d,\"starters\":%d,"
           "\"step_sleep_ms\":%d,\"node_name\":",
           o->sagas, o->steps, o->workers, o->starters, o->step_sleep_ms);
    json_str(o->node_name);
    printf(",\"lease_ttl_ms\":%d,\"load_s\":%.3f,\"in_flight_at_kill\":%lld,"
           "\"steps_done_at_kill\":%lld,\"tasks_at_kill\":%lld,"
           "\"leased_at_kill\":%lld",
           ttl, (double)(f->t_ready - f->t_load) / 1e3, f->in_flight_at_kill,
           f->steps_done_at_kill, f->tasks_at_kill, f->leased_at_kill);
    printf(",\"kill_to_restart_ms\":%lld",
           (long long)(f->t_restart - f->t_kill));
    json_rel("lease_expiry_first_ms", f->lease_expiry_lo, f->t_restart);
    json_rel("lease_expiry_last_ms", f->lease_expiry_hi, f->t_restart);
    json_ms("resume_engine_started_ms", started_ms);
    json_ms("first_resumed_step_ms", f->first_step_ms);
    json_ms("last_completed_ms", f->last_completed_ms);
    json_ms("last_step_ms", f->last_step_ms);
    json_ms("last_completed_not_leased_ms", f->last_unleased_ms);
    json_ms("leased_first_done_ms", f->leased_first_ms);
    json_ms("leased_last_done_ms", f->leased_last_ms);
    printf(",\"steps_after_restart\":%lld,\"drain_steps_per_s\":%.1f,"
           "\"handler_calls_after_restart\":%lld,\"completed\":%lld,"
           "\"not_completed\":%lld,\"step_completed_events\":%lld,"
           "\"duplicate_steps\":%lld,\"missing_steps\":%lld,"
           "\"tasks_left\":%lld,\"resume_stopped_clean\":%s,\"ok\":%s}\n",
           f->steps_after_restart, drain_rate(f), f->handled, f->completed,
           o->sagas - f->completed, f->step_events,
           f->step_events - f->distinct_steps,
           o->sagas * o->steps - f->distinct_steps, f->tasks_left,
           f->stopped_clean ? "true" : "false", ok ? "true" : "false");
    return;
  }
  char a[32], b[32], c[32], d[32], e[32];
  fmt_ms(a, sizeof(a), f->first_step_ms);
  fmt_ms(b, sizeof(b), f->last_completed_ms);
  fmt_ms(c, sizeof(c), started_ms);
  fmt_ms(d, sizeof(d), f->leased_first_ms);
  fmt_ms(e, sizeof(e), f->leased_last_ms);
  printf("bench_recovery: %lld sagas x %d steps, %d workers, node %s, "
         "lease ttl %d ms: %lld in flight at the kill; after the restart "
         "first resumed step %s, last completed saga %s, %.1f steps/s\n",
         o->sagas, o->steps, o->workers, o->node_name, ttl,
         f->in_flight_at_kill, a, b, drain_rate(f));
  printf("  load              %.3f s to start %lld sagas (step sleep %d ms)\n",
         (double)(f->t_ready - f->t_load) / 1e3, o->sagas, o->step_sleep_ms);
  printf("  at the kill       %lld of %lld sagas not completed, %lld steps "
         "done, %lld tasks queued of which %lld leased\n",
         f->in_flight_at_kill, f->sagas_at_kill, f->steps_done_at_kill,
         f->tasks_at_kill, f->leased_at_kill);
  printf("  restart           %lld ms after the kill; engine running after "
         "%s, first step %s, last saga %s\n",
         (long long)(f->t_restart - f->t_kill), c, a, b);
  if (f->leased_at_kill > 0)
    printf("  leased at kill    %lld leases expiring %+lld..%+lld ms from the "
           "restart; completed after it: first %s, last %s\n",
           f->leased_at_kill, f->lease_expiry_lo - (long long)f->t_restart,
           f->lease_expiry_hi - (long long)f->t_restart, d, e);
  fmt_ms(d, sizeof(d), f->last_unleased_ms);
  printf("  not leased        the last saga with no lease at the kill "
         "completed %s after the restart\n",
         d);
  printf("  drain             %lld steps after the restart (%lld handler "
         "calls), %.1f steps/s over the last completed time\n",
         f->steps_after_restart, f->handled, drain_rate(f));
  printf("  checks            %lld/%lld completed, %lld StepCompleted "
         "events (%lld duplicate, %lld missing), %lld tasks left: %s\n",
         f->completed, o->sagas, f->step_events,
         f->step_events - f->distinct_steps,
         o->sagas * o->steps - f->distinct_steps, f->tasks_left,
         ok ? "ok" : "FAILED");
}

/* The checks; prints each failure. */
static bool check(const options *o, const figures *f) {
  bool ok = true;
  long long want = o->sagas * o->steps;
  if (f->sagas != o->sagas) {
    fprintf(stderr, "%s: check failed: the run has %lld sagas, not %lld\n",
            bench_prog, f->sagas, o->sagas);
    ok = false;
  }
  if (f->other_status != 0) {
    fprintf(stderr, "%s: check failed: %lld sagas did not complete\n",
            bench_prog, f->other_status);
    ok = false;
  }
  if (f->step_events != f->distinct_steps) {
    fprintf(stderr, "%s: check failed: %lld steps completed more than once\n",
            bench_prog, f->step_events - f->distinct_steps);
    ok = false;
  }
  if (f->distinct_steps != want) {
    fprintf(stderr,
            "%s: check failed: %lld (saga, step) pairs completed, not %lld\n",
            bench_prog, f->distinct_steps, want);
    ok = false;
  }
  if (f->steps_done_at_kill + f->steps_after_restart != f->step_events) {
    fprintf(stderr,
            "%s: check failed: %lld steps done at the kill + %lld after the "
            "restart != %lld events (a step stamped between kill and "
            "restart?)\n",
            bench_prog, f->steps_done_at_kill, f->steps_after_restart,
            f->step_events);
    ok = false;
  }
  if (f->tasks_left != 0) {
    fprintf(stderr, "%s: check failed: %lld task rows left\n", bench_prog,
            f->tasks_left);
    ok = false;
  }
  if (!f->stopped_clean) {
    fprintf(stderr,
            "%s: check failed: the resume child did not stop "
            "cleanly\n",
            bench_prog);
    ok = false;
  }
  if (f->in_flight_at_kill == 0)
    fprintf(stderr,
            "%s: note: every saga completed before the kill; there "
            "was nothing to recover (raise --step-sleep-ms)\n",
            bench_prog);
  return ok;
}

/* Starts load and returns once it printed READY; dies if it cannot. */
static void run_load(const options *o, const char *tag, figures *f) {
  linebuf lb = {.len = 0};
  f->t_load = wall_ms();
  spawn_child(o, "load", tag);
  int64_t deadline = mono_ms() + (int64_t)o->timeout_s * 1000;
  char line[512];
  for (;;) {
    check_interrupted();
    if (read_line(&lb, 100, line, sizeof(line))) {
      if (strncmp(line, "READY ", 6) == 0)
        break;
      continue;
    }
    check_child_alive("load");
    if (mono_ms() >= deadline)
      die("the load child did not start %lld sagas within %d s", o->sagas,
          o->timeout_s);
  }
  f->t_ready = wall_ms();
  kill(g.child, SIGKILL);
  while (waitpid(g.child, NULL, 0) < 0 && errno == EINTR)
    ;
  f->t_kill = wall_ms();
  g.child = 0;
  close(g.child_fd);
  g.child_fd = -1;
}

static int parent_main(const options *o) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal; /* no SA_RESTART: sleeps and polls return */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  if (atexit(parent_cleanup) != 0)
    die("could not register the exit handler");
  /* The children must use the database we read, not the environment's. */
  if (o->data_dir != NULL)
    unsetenv("SKALD_DATABASE_URL");
  log_set_level(LOG_WARNING);

  sk_engine_options defaults;
  sk_engine_options_init(&defaults);
  int ttl = o->lease_ttl_ms > 0 ? o->lease_ttl_ms : defaults.lease_ttl_ms;
  char tag[96];
  snprintf(tag, sizeof(tag), "recovery-%ld-%" PRId64, (long)getpid(),
           wall_ms());

  connect_db(o);
  check_fresh();
  figures f;
  memset(&f, 0, sizeof(f));
  f.handled = -1;
  run_load(o, tag, &f);

  char t_load[32];
  snprintf(t_load, sizeof(t_load), "%" PRId64, f.t_load);
  const char *p[2] = {WORKFLOW, t_load};
  wait_sessions_gone();
  snapshot_at_kill(p, &f);
  fprintf(stderr,
          "%s: killed the load child after %.3f s: %lld of %lld sagas in "
          "flight, %lld tasks queued, %lld leased; restarting\n",
          bench_prog, (double)(f.t_ready - f.t_load) / 1e3, f.in_flight_at_kill,
          f.sagas_at_kill, f.tasks_at_kill, f.leased_at_kill);

  f.t_restart = wall_ms();
  spawn_child(o, "resume", tag);
  linebuf lb = {.len = 0};
  wait_drained(o, p, &lb, &f);
  f.stopped_clean = stop_child(&lb, &f.handled);
  read_figures(p, &f);
  bool ok = check(o, &f);
  report(o, ttl, &f, ok);
  fflush(stdout);
  if (!ok)
    die("recovery checks failed");
  return 0; /* parent_cleanup stops the embedded server */
}

int main(int argc, char **argv) {
  options o;
  bench_prog = "skald_bench_recovery";
  parse_args(argc, argv, &o);
  if (o.phase != PHASE_PARENT)
    return child_main(&o);
  return parent_main(&o);
}
