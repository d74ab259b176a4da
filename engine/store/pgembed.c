/*
 * pgembed.c — the embedded default: a private PostgreSQL in the data dir
 * (see pgembed.h).
 *
 * Layout under the (absolute) data dir:
 *   pg/            the cluster (initdb on first use), owned by the server user
 *   run/           the Unix socket directory (no TCP listener at all); when
 *                  the socket path would not fit in sun_path, a short
 *                  /tmp/skald-<hash of the data dir> is used instead
 *   pg.log         initdb / pg_ctl / server output
 *   pgembed.lock   flock()ed while a process checks, initialises or starts
 *                  the cluster, so two engines starting together do not both
 *                  run initdb or pg_ctl start
 *
 * Invariants:
 *   - A handle stops the server only if this handle started it and the
 *     postmaster is still the one it started (postmaster.pid); a server
 *     found running (another engine, or one left by a killed process) is
 *     reused and left alone.
 *   - After a SIGKILL of the postmaster, a start removes lock files that
 *     name a zombie PID and retries while old backends die out; PostgreSQL's
 *     own shared-memory check still guards against two live servers.
 *   - PostgreSQL never runs as root: when euid is 0 every child (initdb,
 *     pg_ctl) drops to "postgres" (or "nobody") before exec.
 *   - Children get /dev/null as stdin, the log as stdout/stderr, and no other
 *     inherited descriptor, so the postmaster never holds our sockets/pipes.
 *   - Durability settings (fsync, synchronous_commit) stay at their defaults.
 *
 * Thread: the caller's. Forks children; only async-signal-safe calls run
 * between fork and exec (everything they need is computed before the fork).
 */
#include "store/pgembed.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libpq-fe.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/log.h"
#include "store/db.h"

#define PG_PORT "5432"
#define SOCKET_NAME "/.s.PGSQL." PG_PORT
/* sun_path is 108 bytes on Linux; stay clear of it. */
#define SOCKET_PATH_MAX 100
#define MAX_GROUPS 64

extern char **environ;

/* Who runs initdb and the server. */
typedef struct runas {
  bool drop; /* euid 0: switch to uid/gid/groups in the child */
  uid_t uid;
  gid_t gid;
  gid_t groups[MAX_GROUPS];
  int ngroups;
  char name[64];
} runas;

struct pgembed {
  char data[PATH_MAX];   /* absolute data dir */
  char pg[PATH_MAX];     /* cluster */
  char run[PATH_MAX];    /* socket dir */
  char log[PATH_MAX];    /* server log */
  char bindir[PATH_MAX]; /* PostgreSQL binaries */
  runas as;
  bool owned;   /* this handle started the server ... */
  long pid;     /* ... and this was its postmaster */
  bool tmp_run; /* run is the short /tmp fallback */
};

/* --- small helpers ------------------------------------------------------- */

static bool fmt_path(char *dst, size_t n, const char *a, const char *b) {
  int w = snprintf(dst, n, "%s%s", a, b);
  return w > 0 && (size_t)w < n;
}

static bool is_executable(const char *dir, const char *prog) {
  char p[PATH_MAX];
  return fmt_path(p, sizeof(p), dir, prog) && access(p, X_OK) == 0;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* mkdir -p; directories it creates get exactly `mode` (umask aside). */
static int mkdir_p(const char *path, mode_t mode) {
  char tmp[PATH_MAX];
  if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
    return -1;
  for (char *p = tmp + 1;; p++) {
    if (*p != '/' && *p != '\0')
      continue;
    char c = *p;
    *p = '\0';
    if (mkdir(tmp, mode) == 0) {
      if (chmod(tmp, mode) != 0)
        return -1;
    } else if (errno != EEXIST) {
      return -1;
    }
    *p = c;
    if (c == '\0')
      return 0;
  }
}

/* Appends a conninfo value, single-quoted when it needs to be. */
static void conninfo_value(buf *b, const char *v) {
  if (v[0] != '\0' && strpbrk(v, " \t\n'\\") == NULL) {
    buf_puts(b, v);
    return;
  }
  buf_putc(b, '\'');
  for (const char *p = v; *p != '\0'; p++) {
    if (*p == '\'' || *p == '\\')
      buf_putc(b, '\\');
    buf_putc(b, *p);
  }
  buf_putc(b, '\'');
}

/* "host=<run> port=5432 dbname=<db> user=skald" (malloc'd) or NULL. */
static char *make_conninfo(const pgembed *h, const char *db) {
  buf b = BUF_INIT;
  buf_puts(&b, "host=");
  conninfo_value(&b, h->run);
  buf_puts(&b, " port=" PG_PORT " dbname=");
  conninfo_value(&b, db);
  buf_puts(&b, " user=skald");
  if (!buf_ok(&b)) {
    buf_free(&b);
    return NULL;
  }
  return buf_steal(&b);
}

/* --- who runs PostgreSQL ------------------------------------------------- */

static int resolve_runas(runas *r, sk_error *err) {
  memset(r, 0, sizeof(*r));
  if (geteuid() != 0) {
    r->uid = geteuid();
    r->gid = getegid();
    return 0;
  }
  struct passwd *pw = getpwnam("postgres");
  if (pw == NULL)
    pw = getpwnam("nobody");
  if (pw == NULL)
    return sk_error_set(err, SK_EIO,
                        "could not start embedded PostgreSQL: running as "
                        "root and neither user \"postgres\" nor \"nobody\" "
                        "exists; create one or run skald as another user");
  r->drop = true;
  r->uid = pw->pw_uid;
  r->gid = pw->pw_gid;
  snprintf(r->name, sizeof(r->name), "%s", pw->pw_name);
  r->ngroups = MAX_GROUPS;
  if (getgrouplist(r->name, r->gid, r->groups, &r->ngroups) < 0) {
    r->groups[0] = r->gid;
    r->ngroups = 1;
  }
  return 0;
}

/* --- child processes ----------------------------------------------------- */

/* In the child, after fork: only async-signal-safe calls. */
static void child_exec(const runas *as, int logfd, long maxfd,
                       const char *const *argv, const char *check_path) {
  int devnull = open("/dev/null", O_RDONLY);
  if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(logfd, 1) < 0 ||
      dup2(logfd, 2) < 0)
    _exit(126);
    /* No inherited sockets or pipes: the postmaster outlives us. */
#ifdef SYS_close_range
  if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0)
#endif
    for (long fd = 3; fd < maxfd; fd++)
      close((int)fd);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  struct sigaction dfl;
  memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGPIPE, &dfl, NULL);
  sigaction(SIGCHLD, &dfl, NULL);
  if (as->drop && (setgroups((size_t)as->ngroups, as->groups) != 0 ||
                   setgid(as->gid) != 0 || setuid(as->uid) != 0))
    _exit(126);
  if (check_path != NULL)
    _exit(access(check_path, X_OK) == 0 ? 0 : 1);
  if (chdir("/") != 0)
    _exit(126);
  execve(argv[0], (char *const *)argv, environ);
  _exit(127);
}

/* Runs argv[0] (absolute) for `step` as the server user, output appended to
 * the log; or, with check_path (argv NULL), only tests that this user can
 * reach check_path. Returns the exit status, -1 if it could not run or was
 * killed. */
static int run_child(const pgembed *h, const char *step,
                     const char *const *argv, const char *check_path) {
  int logfd = -1;
  if (step != NULL)
    logfd = open(h->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (logfd < 0)
    logfd = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (logfd < 0)
    return -1;
  if (step != NULL) {
    char line[64];
    int n = snprintf(line, sizeof(line), "skald: running %s\n", step);
    if (n > 0 && write(logfd, line, (size_t)n) < 0) {
      /* best effort: the child's own output says more */
    }
  }
  long maxfd = sysconf(_SC_OPEN_MAX);
  if (maxfd < 0 || maxfd > 65536)
    maxfd = 65536;
  pid_t pid = fork();
  if (pid == 0)
    child_exec(&h->as, logfd, maxfd, argv, check_path);
  close(logfd);
  if (pid < 0)
    return -1;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR)
      return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* --- paths and directories ----------------------------------------------- */

/* pg_config --bindir, else the newest /usr/lib/postgresql/<n>/bin. */
static bool find_bindir(char *out, size_t n) {
  FILE *f = popen("pg_config --bindir 2>/dev/null", "r");
  if (f != NULL) {
    char line[PATH_MAX] = "";
    char *got = fgets(line, sizeof(line), f);
    pclose(f);
    line[strcspn(line, "\r\n")] = '\0';
    if (got != NULL && is_executable(line, "/initdb") &&
        is_executable(line, "/pg_ctl") && snprintf(out, n, "%s", line) < (int)n)
      return true;
  }
  DIR *d = opendir("/usr/lib/postgresql");
  long best = -1;
  if (d == NULL)
    return false;
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    char *end = NULL;
    long v = strtol(e->d_name, &end, 10);
    char cand[PATH_MAX];
    if (end == e->d_name || *end != '\0' || v <= best)
      continue;
    snprintf(cand, sizeof(cand), "/usr/lib/postgresql/%ld/bin", v);
    if (is_executable(cand, "/initdb") && is_executable(cand, "/pg_ctl") &&
        snprintf(out, n, "%s", cand) < (int)n)
      best = v;
  }
  closedir(d);
  return best >= 0;
}

/* FNV-1a: a stable short name for the /tmp socket dir of a data dir. */
static uint64_t fnv1a(const char *s) {
  uint64_t h = 14695981039346656037ULL;
  for (; *s != '\0'; s++) {
    h ^= (unsigned char)*s;
    h *= 1099511628211ULL;
  }
  return h;
}

/* Makes data dir, resolves it, and fills every path of h. */
static int setup_paths(pgembed *h, const char *data_dir, sk_error *err) {
  if (mkdir_p(data_dir, h->as.drop ? 0755 : 0700) != 0 ||
      realpath(data_dir, h->data) == NULL)
    return sk_error_set(err, SK_EIO,
                        "could not create data directory "
                        "\"%s\": %s",
                        data_dir, strerror(errno));
  /* pg_ctl hands -D and -l to /bin/sh inside double quotes. */
  if (strpbrk(h->data, "\"$`\\\n") != NULL)
    return sk_error_set(err, SK_EINVAL,
                        "data directory \"%s\" contains a "
                        "character pg_ctl cannot quote (\" $ ` \\ or "
                        "newline); choose another --data-dir",
                        h->data);
  if (!fmt_path(h->pg, sizeof(h->pg), h->data, "/pg") ||
      !fmt_path(h->log, sizeof(h->log), h->data, "/pg.log") ||
      !fmt_path(h->run, sizeof(h->run), h->data, "/run"))
    return sk_error_set(err, SK_EINVAL, "data directory path is too long");
  if (strlen(h->run) + strlen(SOCKET_NAME) >= SOCKET_PATH_MAX) {
    snprintf(h->run, sizeof(h->run), "/tmp/skald-%016llx",
             (unsigned long long)fnv1a(h->data));
    h->tmp_run = true;
    log_write(LOG_INFO,
              "socket path in the data directory would be too long; using "
              "a short socket directory",
              "data_dir", h->data, "socket_dir", h->run, NULL);
  }
  if (!find_bindir(h->bindir, sizeof(h->bindir)))
    return sk_error_set(err, SK_EIO,
                        "could not find the PostgreSQL server "
                        "binaries (initdb, pg_ctl): install PostgreSQL or "
                        "put pg_config on PATH");
  return 0;
}

/* Creates dir with mode if missing and gives it to the server user. A dir
 * in /tmp must not be someone else's (or a symlink). */
static int own_dir(const pgembed *h, const char *dir, mode_t mode,
                   sk_error *err) {
  struct stat st;
  if (mkdir(dir, mode) != 0 && errno != EEXIST)
    goto fail;
  if (lstat(dir, &st) != 0)
    goto fail;
  if (!S_ISDIR(st.st_mode) ||
      (st.st_uid != geteuid() && st.st_uid != h->as.uid))
    return sk_error_set(err, SK_EIO,
                        "\"%s\" is not a directory owned by "
                        "skald or the server user",
                        dir);
  if (h->as.drop && chown(dir, h->as.uid, h->as.gid) != 0)
    goto fail;
  return 0;
fail:
  return sk_error_set(err, SK_EIO, "could not prepare directory \"%s\": %s",
                      dir, strerror(errno));
}

static int prepare_dirs(const pgembed *h, sk_error *err) {
  int rc = own_dir(h, h->pg, 0700, err);
  if (rc == 0)
    rc = own_dir(h, h->run, 0755, err);
  if (rc != 0)
    return rc;
  int fd = open(h->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0 || (h->as.drop && fchown(fd, h->as.uid, h->as.gid) != 0)) {
    rc = sk_error_set(err, SK_EIO, "could not prepare log file \"%s\": %s",
                      h->log, strerror(errno));
  }
  if (fd >= 0)
    close(fd);
  return rc;
}

/* As root: can the server user reach the data dir at all? */
static int check_reach(const pgembed *h, sk_error *err) {
  if (!h->as.drop || run_child(h, NULL, NULL, h->data) == 0)
    return 0;
  return sk_error_set(err, SK_EIO,
                      "could not start embedded PostgreSQL: user \"%s\" "
                      "(PostgreSQL refuses to run as root) cannot reach "
                      "data directory \"%s\"; choose another --data-dir "
                      "that user can traverse (e.g. under /var/lib)",
                      h->as.name, h->data);
}

/* --- the server ---------------------------------------------------------- */

static bool try_connect(const pgembed *h, const char *db) {
  char *ci = make_conninfo(h, db);
  if (ci == NULL)
    return false;
  const char *const keys[] = {"dbname", "connect_timeout",
                              "fallback_application_name", NULL};
  const char *const vals[] = {ci, "10", "skald-pgembed", NULL};
  PGconn *c = PQconnectdbParams(keys, vals, 1);
  bool ok = c != NULL && PQstatus(c) == CONNECTION_OK;
  PQfinish(c);
  free(ci);
  return ok;
}

static bool wait_connect(const pgembed *h, long ms) {
  for (long waited = 0;; waited += 200) {
    if (try_connect(h, "postgres"))
      return true;
    if (waited >= ms)
      return false;
    sleep_ms(200);
  }
}

static int initdb(const pgembed *h, sk_error *err) {
  char ver[PATH_MAX], prog[PATH_MAX];
  if (fmt_path(ver, sizeof(ver), h->pg, "/PG_VERSION") &&
      access(ver, F_OK) == 0)
    return 0;
  if (!fmt_path(prog, sizeof(prog), h->bindir, "/initdb"))
    return sk_error_set(err, SK_EINVAL, "path too long");
  const char *const argv[] = {
      prog, "-D",   h->pg,        "-A", "trust", "--auth-local=trust",
      "-E", "UTF8", "--locale=C", "-U", "skald", NULL};
  log_write(LOG_INFO, "initialising embedded postgresql cluster", "dir", h->pg,
            NULL);
  if (run_child(h, "initdb", argv, NULL) != 0)
    return sk_error_set(err, SK_EIO,
                        "could not initialise embedded "
                        "PostgreSQL: initdb failed; see \"%s\"",
                        h->log);
  return 0;
}

/* pg_ctl start; the -o string goes through /bin/sh, so -k is quoted. */
static int pg_ctl_start(const pgembed *h) {
  char prog[PATH_MAX];
  if (!fmt_path(prog, sizeof(prog), h->bindir, "/pg_ctl"))
    return -1;
  buf o = BUF_INIT;
  buf_puts(&o, "-c listen_addresses='' -k '");
  for (const char *p = h->run; *p != '\0'; p++) {
    if (*p == '\'')
      buf_puts(&o, "'\\''");
    else
      buf_putc(&o, *p);
  }
  /* Durability stays at the defaults (fsync, synchronous_commit, full
   * page writes); these only spare a write-heavy log needless work:
   *   autovacuum_naptime  the ready queue churns a row per step: look often
   *   max_wal_size, checkpoint_timeout  a busy engine writes ~3 kB of WAL
   *     per step; with the defaults a checkpoint came every ~10 s, each
   *     followed by full-page images of every page touched again
   *   shared_buffers      backends were evicting dirty pages themselves */
  buf_puts(&o, "' -c unix_socket_permissions=0777 -p " PG_PORT
               " -c max_connections=200 -c shared_buffers=256MB"
               " -c autovacuum_naptime=10 -c max_wal_size=4GB"
               " -c checkpoint_timeout=15min");
  int st = -1;
  if (buf_ok(&o)) {
    const char *const argv[] = {prog, "-D", h->pg, "-l",   h->log,  "-w",
                                "-t", "60", "-o",  o.data, "start", NULL};
    st = run_child(h, "pg_ctl start", argv, NULL);
  }
  buf_free(&o);
  return st;
}

/* The PID on the first line of a postmaster lock file, or 0. */
static long lockfile_pid(const char *path) {
  FILE *f = fopen(path, "r");
  long pid = 0;
  if (f == NULL)
    return 0;
  if (fscanf(f, "%ld", &pid) != 1)
    pid = 0;
  fclose(f);
  return pid;
}

/* A zombie: dead, but kill(pid, 0) still succeeds until someone reaps it. */
static bool is_zombie(long pid) {
  char path[64], st[512];
  snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return false;
  size_t n = fread(st, 1, sizeof(st) - 1, f);
  fclose(f);
  st[n] = '\0';
  const char *p = strrchr(st, ')');
  return p != NULL && p[1] == ' ' && p[2] == 'Z';
}

/* A postmaster killed with SIGKILL whose parent (often PID 1 in a
 * container) has not reaped it yet looks alive to the new postmaster, which
 * then refuses to start. Its lock files are removed; PostgreSQL's own
 * shared-memory check still refuses while any old backend lives on. */
static void drop_zombie_lockfiles(const pgembed *h) {
  char pidfile[PATH_MAX], socklock[PATH_MAX];
  if (!fmt_path(pidfile, sizeof(pidfile), h->pg, "/postmaster.pid") ||
      !fmt_path(socklock, sizeof(socklock), h->run, SOCKET_NAME ".lock"))
    return;
  long pid = lockfile_pid(pidfile);
  if (pid <= 0 || !is_zombie(pid))
    return;
  log_write(LOG_WARNING, "removing lock files of a dead postmaster", "#pid",
            (int64_t)pid, "data_dir", h->data, NULL);
  unlink(pidfile);
  if (lockfile_pid(socklock) == pid)
    unlink(socklock);
}

/* Reuses a running server or starts one. A failed start is retried: after a
 * SIGKILL of the postmaster its children need a moment to notice and exit
 * before a new postmaster may take the data dir. */
static int ensure_running(pgembed *h, sk_error *err) {
  if (try_connect(h, "postgres")) {
    log_write(LOG_INFO, "reusing running embedded postgresql", "data_dir",
              h->data, NULL);
    return 0;
  }
  int rc = initdb(h, err);
  if (rc != 0)
    return rc;
  char pidfile[PATH_MAX];
  if (!fmt_path(pidfile, sizeof(pidfile), h->pg, "/postmaster.pid"))
    return sk_error_set(err, SK_EINVAL, "data directory path is too long");
  for (int attempt = 0; attempt < 4; attempt++) {
    drop_zombie_lockfiles(h);
    if (pg_ctl_start(h) == 0) {
      h->owned = true;
      h->pid = lockfile_pid(pidfile);
      log_write(LOG_INFO, "started embedded postgresql", "data_dir", h->data,
                "socket_dir", h->run, NULL);
      return 0;
    }
    /* Someone else's server may be coming up (crash recovery). */
    if (wait_connect(h, 2000)) {
      log_write(LOG_INFO, "reusing running embedded postgresql", "data_dir",
                h->data, NULL);
      return 0;
    }
    log_write(LOG_WARNING, "could not start embedded postgresql; retrying",
              "#attempt", (int64_t)attempt + 1, "log", h->log, NULL);
  }
  return sk_error_set(err, SK_EIO,
                      "could not start embedded PostgreSQL: "
                      "pg_ctl start failed; see \"%s\"",
                      h->log);
}

static int ensure_database(const pgembed *h, sk_error *err) {
  const char *what = "could not create database \"skald\" in embedded "
                     "PostgreSQL";
  char *ci = make_conninfo(h, "postgres");
  if (ci == NULL)
    return sk_error_set(err, SK_ENOMEM, NULL);
  PGconn *c = PQconnectdb(ci);
  free(ci);
  int rc = 0;
  PGresult *res = NULL;
  if (c == NULL)
    return sk_error_set(err, SK_ENOMEM, NULL);
  if (PQstatus(c) != CONNECTION_OK)
    goto fail;
  const char *const name[] = {"skald"};
  res = PQexecParams(c, "SELECT 1 FROM pg_database WHERE datname = $1", 1, NULL,
                     name, NULL, NULL, 0);
  if (PQresultStatus(res) != PGRES_TUPLES_OK)
    goto fail;
  if (PQntuples(res) == 0) {
    PQclear(res);
    res = PQexec(c, "CREATE DATABASE skald");
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    /* duplicate_database / unique_violation: another process won a race. */
    if (PQresultStatus(res) != PGRES_COMMAND_OK &&
        (state == NULL ||
         (strcmp(state, "42P04") != 0 && strcmp(state, "23505") != 0)))
      goto fail;
    log_write(LOG_INFO, "created database", "database", "skald", NULL);
  }
  goto done;
fail:
  db_fail(c, res, what, err);
  rc = SK_EIO;
  if (err != NULL)
    err->code = SK_EIO;
done:
  PQclear(res);
  PQfinish(c);
  return rc;
}

static void pg_ctl_stop(const pgembed *h) {
  char prog[PATH_MAX];
  if (!fmt_path(prog, sizeof(prog), h->bindir, "/pg_ctl"))
    return;
  const char *const argv[] = {prog, "-D", h->pg, "-m",   "fast",
                              "-w", "-t", "60",  "stop", NULL};
  if (run_child(h, "pg_ctl stop", argv, NULL) != 0)
    log_write(LOG_WARNING, "could not stop embedded postgresql", "log", h->log,
              NULL);
  else
    log_write(LOG_INFO, "stopped embedded postgresql", "data_dir", h->data,
              NULL);
}

/* --- entry points -------------------------------------------------------- */

static int lock_data_dir(const pgembed *h, int *fd, sk_error *err) {
  char path[PATH_MAX];
  if (!fmt_path(path, sizeof(path), h->data, "/pgembed.lock"))
    return sk_error_set(err, SK_EINVAL, "data directory path is too long");
  *fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (*fd < 0)
    return sk_error_set(err, SK_EIO, "could not open \"%s\": %s", path,
                        strerror(errno));
  while (flock(*fd, LOCK_EX) != 0) {
    if (errno != EINTR)
      return sk_error_set(err, SK_EIO, "could not lock \"%s\": %s", path,
                          strerror(errno));
  }
  return 0;
}

int pgembed_start(const char *data_dir, pgembed **out, char **conninfo,
                  sk_error *err) {
  *out = NULL;
  *conninfo = NULL;
  if (data_dir == NULL || data_dir[0] == '\0')
    return sk_error_set(err, SK_EINVAL, "no data directory given");
  pgembed *h = calloc(1, sizeof(*h));
  if (h == NULL)
    return sk_error_set(err, SK_ENOMEM, NULL);
  int lockfd = -1;
  int rc = resolve_runas(&h->as, err);
  if (rc == 0)
    rc = setup_paths(h, data_dir, err);
  if (rc == 0)
    rc = check_reach(h, err);
  if (rc == 0)
    rc = lock_data_dir(h, &lockfd, err);
  if (rc == 0)
    rc = prepare_dirs(h, err);
  if (rc == 0)
    rc = ensure_running(h, err);
  if (rc == 0)
    rc = ensure_database(h, err);
  if (rc == 0 && (*conninfo = make_conninfo(h, "skald")) == NULL)
    rc = sk_error_set(err, SK_ENOMEM, NULL);
  if (lockfd >= 0)
    close(lockfd); /* releases the flock */
  if (rc != 0) {
    pgembed_stop(h);
    return rc;
  }
  *out = h;
  return 0;
}

void pgembed_stop(pgembed *pg) {
  if (pg == NULL)
    return;
  char pidfile[PATH_MAX];
  /* Only the server this handle started: after a crash another process may
   * have started a new one on the same directory. */
  if (pg->owned &&
      fmt_path(pidfile, sizeof(pidfile), pg->pg, "/postmaster.pid")) {
    long now = lockfile_pid(pidfile);
    if (now != 0 && now == pg->pid) {
      pg_ctl_stop(pg);
      if (pg->tmp_run)
        rmdir(pg->run); /* empty once the server is down; else kept */
    } else if (now != 0) {
      log_write(LOG_INFO,
                "embedded postgresql was restarted elsewhere; "
                "leaving it running",
                "data_dir", pg->data, NULL);
    }
  }
  free(pg);
}
