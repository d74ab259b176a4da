/*
 * pgtest.c — throwaway databases for integration tests (see pgtest.h).
 *
 * A conninfo for a new database is the admin conninfo re-written as
 * key='value' pairs (URL or key=value input alike, via PQconninfoParse) with
 * dbname replaced. Names are unique per process, call and run:
 * skald_test_<pid>_<counter>_<random>.
 *
 * Thread: the test's.
 */
#include "pgtest.h"

#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ENV_URL "SKALD_TEST_DATABASE_URL"

static const char *admin_url(void) {
  const char *url = getenv(ENV_URL);
  if (url == NULL || url[0] == '\0') {
    fprintf(stderr,
            "pgtest: %s is not set. Integration tests need a PostgreSQL "
            "server; run them with scripts/test.sh (it starts one and sets "
            "%s).\n",
            ENV_URL, ENV_URL);
    return NULL;
  }
  return url;
}

/* Appends " key='value'" (escaped) to out; false if it does not fit. */
static bool put_kv(char *out, size_t len, size_t *at, const char *k,
                   const char *v) {
  int n = snprintf(out + *at, len - *at, "%s%s='", *at > 0 ? " " : "", k);
  if (n < 0 || (size_t)n >= len - *at)
    return false;
  *at += (size_t)n;
  for (const char *p = v; *p != '\0'; p++) {
    if (*at + 3 >= len)
      return false;
    if (*p == '\'' || *p == '\\')
      out[(*at)++] = '\\';
    out[(*at)++] = *p;
  }
  if (*at + 2 > len)
    return false;
  out[(*at)++] = '\'';
  out[*at] = '\0';
  return true;
}

/* base with dbname replaced by db, into out. */
static int with_dbname(const char *base, const char *db, char *out,
                       size_t len) {
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(base, &perr);
  if (opts == NULL) {
    fprintf(stderr, "pgtest: cannot parse %s: %s", ENV_URL,
            perr != NULL ? perr : "out of memory\n");
    PQfreemem(perr);
    return -1;
  }
  size_t at = 0;
  bool ok = len > 0;
  if (ok)
    out[0] = '\0';
  for (PQconninfoOption *o = opts; ok && o->keyword != NULL; o++)
    if (o->val != NULL && strcmp(o->keyword, "dbname") != 0)
      ok = put_kv(out, len, &at, o->keyword, o->val);
  if (ok)
    ok = put_kv(out, len, &at, "dbname", db);
  PQconninfoFree(opts);
  if (!ok)
    fprintf(stderr, "pgtest: conninfo buffer too small\n");
  return ok ? 0 : -1;
}

/* The dbname of conninfo into out (empty if none). */
static void dbname_of(const char *conninfo, char *out, size_t len) {
  out[0] = '\0';
  PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
  for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++)
    if (strcmp(o->keyword, "dbname") == 0 && o->val != NULL)
      snprintf(out, len, "%s", o->val);
  PQconninfoFree(opts);
}

static PGconn *connect_or_print(const char *conninfo) {
  PGconn *c = PQconnectdb(conninfo);
  if (c == NULL || PQstatus(c) != CONNECTION_OK) {
    fprintf(stderr, "pgtest: could not connect: %s",
            c != NULL ? PQerrorMessage(c) : "out of memory\n");
    PQfinish(c);
    return NULL;
  }
  return c;
}

/* Runs one utility statement on the admin database; 0 or -1 (printed). */
static int admin_exec(const char *sql) {
  const char *url = admin_url();
  if (url == NULL)
    return -1;
  PGconn *c = connect_or_print(url);
  if (c == NULL)
    return -1;
  PGresult *res = PQexec(c, sql);
  int rc = PQresultStatus(res) == PGRES_COMMAND_OK ? 0 : -1;
  if (rc != 0)
    fprintf(stderr, "pgtest: %s: %s", sql, PQerrorMessage(c));
  PQclear(res);
  PQfinish(c);
  return rc;
}

int pgtest_fresh_db(char *conninfo_out, size_t len) {
  static unsigned counter;
  const char *url = admin_url();
  if (url == NULL)
    return -1;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  unsigned rnd = (unsigned)ts.tv_nsec ^ ((unsigned)ts.tv_sec << 10) ^
                 ((unsigned)getpid() << 16);
  char name[64], sql[128];
  snprintf(name, sizeof(name), "skald_test_%ld_%u_%08x", (long)getpid(),
           ++counter, rnd);
  snprintf(sql, sizeof(sql), "CREATE DATABASE \"%s\"", name);
  if (admin_exec(sql) != 0)
    return -1;
  return with_dbname(url, name, conninfo_out, len);
}

void pgtest_drop_db(const char *conninfo) {
  char name[128], sql[256];
  if (conninfo == NULL || conninfo[0] == '\0')
    return; /* pgtest_fresh_db failed: nothing to drop */
  dbname_of(conninfo, name, sizeof(name));
  /* Only ever drop what pgtest_fresh_db made. */
  if (strncmp(name, "skald_test_", 11) != 0 || strchr(name, '"') != NULL) {
    fprintf(stderr, "pgtest: refusing to drop database \"%s\"\n", name);
    return;
  }
  snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)",
           name);
  (void)admin_exec(sql);
}

int pgtest_exec(const char *conninfo, const char *sql) {
  PGconn *c = connect_or_print(conninfo);
  if (c == NULL)
    cr_assert_fail("pgtest_exec: could not connect");
  PGresult *res = PQexec(c, sql);
  ExecStatusType st = PQresultStatus(res);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(res));
    PQclear(res);
    PQfinish(c);
    cr_assert_fail("pgtest_exec(%s) failed: %s", sql, msg);
  }
  PQclear(res);
  PQfinish(c);
  return 0;
}

long long pgtest_scalar(const char *conninfo, const char *sql) {
  PGconn *c = connect_or_print(conninfo);
  if (c == NULL)
    cr_assert_fail("pgtest_scalar: could not connect");
  PGresult *res = PQexec(c, sql);
  char msg[512] = "";
  long long v = 0;
  if (PQresultStatus(res) != PGRES_TUPLES_OK)
    snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(res));
  else if (PQntuples(res) != 1 || PQnfields(res) != 1)
    snprintf(msg, sizeof(msg), "%d rows x %d columns, want one value",
             PQntuples(res), PQnfields(res));
  else
    v = PQgetisnull(res, 0, 0) ? LLONG_MIN : atoll(PQgetvalue(res, 0, 0));
  PQclear(res);
  PQfinish(c);
  if (msg[0] != '\0')
    cr_assert_fail("pgtest_scalar(%s) failed: %s", sql, msg);
  return v;
}
