/*
 * migrate.c — applies the embedded schema migrations (see migrate.h).
 *
 * Protocol, all on the caller's connection:
 *   1. pg_advisory_lock(MIGRATE_LOCK_KEY), session level, so nodes that start
 *      together queue up here and the first one does the work;
 *   2. create skald_schema_migrations if missing;
 *   3. refuse a database whose newest recorded version is above the newest
 *      embedded one (an old binary never runs on a newer schema);
 *   4. apply every embedded migration not yet recorded, in version order,
 *      each in its own transaction together with the row that records it;
 *   5. pg_advisory_unlock, on every path once the lock was taken (the lock
 *      also goes away with the session if the connection is lost).
 *
 * Invariants: a migration and its record commit together or not at all; the
 * version primary key turns any second apply of a version into an error
 * rather than a silent double apply.
 *
 * Thread: the caller's; uses only the connection it is given.
 */
#include "store/migrate.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/clock.h"
#include "common/log.h"
#include "store/db.h"

/* "SkaldMig" in ASCII; fixed forever, other singletons use other keys. */
#define MIGRATE_LOCK_KEY "6011005245823215975"

int migrate_latest_version(void) {
  int latest = 0;
  for (size_t i = 0; i < migrations_embedded_count; i++)
    if (migrations_embedded[i].version > latest)
      latest = migrations_embedded[i].version;
  return latest;
}

/* Runs a parameterised statement that returns nothing worth reading. */
static int exec_params(PGconn *conn, const char *sql, int n,
                       const char *const *params, const char *what,
                       sk_error *err) {
  PGresult *res = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
  ExecStatusType st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
  int rc = 0;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
    rc = db_fail(conn, res, what, err);
  PQclear(res);
  return rc;
}

/* Runs a parameterised query returning one integer cell (NULL reads 0). */
static int query_int(PGconn *conn, const char *sql, int n,
                     const char *const *params, int *out, const char *what,
                     sk_error *err) {
  PGresult *res = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
  int rc = 0;
  if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
    rc = db_fail(conn, res, what, err);
  } else if (PQntuples(res) != 1 || PQnfields(res) != 1) {
    rc = sk_error_set(err, SK_EDB, "%s: unexpected result shape", what);
  } else {
    *out = PQgetisnull(res, 0, 0) ? 0 : atoi(PQgetvalue(res, 0, 0));
  }
  PQclear(res);
  return rc;
}

int migrate_current_version(PGconn *conn, int *version, sk_error *err) {
  const char *what = "could not read schema version";
  int exists = 0;
  *version = 0;
  int rc = query_int(conn,
                     "SELECT (to_regclass('skald_schema_migrations') IS NOT "
                     "NULL)::int",
                     0, NULL, &exists, what, err);
  if (rc != 0 || !exists)
    return rc;
  return query_int(conn,
                   "SELECT coalesce(max(version), 0) FROM "
                   "skald_schema_migrations",
                   0, NULL, version, what, err);
}

static void rollback(PGconn *conn) {
  PGresult *res = PQexec(conn, "ROLLBACK");
  PQclear(res);
}

/* Applies one migration and records it, in one transaction. */
static int apply_one(PGconn *conn, const migration_file *m, sk_error *err) {
  char what[160];
  char ver[16];
  snprintf(what, sizeof(what), "could not apply migration %s", m->name);
  snprintf(ver, sizeof(ver), "%d", m->version);
  const char *const params[] = {ver, m->name};
  int64_t t0 = clock_mono_ms();

  int rc = db_exec(conn, "BEGIN", err);
  if (rc != 0)
    return rc;
  PGresult *res = PQexec(conn, m->sql); /* embedded DDL: no parameters */
  ExecStatusType st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK &&
      st != PGRES_EMPTY_QUERY)
    rc = db_fail(conn, res, what, err);
  PQclear(res);
  if (rc == 0)
    rc = exec_params(conn,
                     "INSERT INTO skald_schema_migrations (version, name) "
                     "VALUES ($1::int, $2)",
                     2, params, what, err);
  if (rc == 0)
    rc = exec_params(conn, "COMMIT", 0, NULL, what, err);
  if (rc != 0) {
    rollback(conn);
    log_write(LOG_ERROR, "could not apply schema migration", "#version",
              (int64_t)m->version, "name", m->name, "error",
              err != NULL ? err->message : NULL, NULL);
    return rc;
  }
  log_write(LOG_INFO, "applied schema migration", "#version",
            (int64_t)m->version, "name", m->name, "#duration_ms",
            clock_mono_ms() - t0, NULL);
  return 0;
}

/* Applies every embedded migration not yet recorded; the lock is held. */
static int apply_pending(PGconn *conn, int *count, sk_error *err) {
  /* The lock is held, so checking first cannot race with another node. */
  int exists = 0;
  int rc = query_int(conn,
                     "SELECT (to_regclass('skald_schema_migrations') IS NOT "
                     "NULL)::int",
                     0, NULL, &exists, "could not read schema version", err);
  if (rc == 0 && !exists)
    rc = exec_params(conn,
                     "CREATE TABLE skald_schema_migrations ("
                     " version int PRIMARY KEY,"
                     " name text NOT NULL,"
                     " applied_at timestamptz NOT NULL DEFAULT now())",
                     0, NULL, "could not create skald_schema_migrations", err);
  int current = 0;
  if (rc == 0)
    rc = migrate_current_version(conn, &current, err);
  if (rc != 0)
    return rc;
  int latest = migrate_latest_version();
  if (current > latest) {
    log_write(LOG_ERROR, "database schema is newer than this binary",
              "#schema_version", (int64_t)current, "#newest_migration",
              (int64_t)latest, NULL);
    return sk_error_set(err, SK_EMIGRATION,
                        "database schema version %d is newer than this "
                        "binary (newest migration %d); upgrade skald",
                        current, latest);
  }
  for (size_t i = 0; i < migrations_embedded_count; i++) {
    const migration_file *m = &migrations_embedded[i];
    char ver[16];
    snprintf(ver, sizeof(ver), "%d", m->version);
    const char *const params[] = {ver};
    int recorded = 0;
    rc = query_int(conn,
                   "SELECT count(*)::int FROM skald_schema_migrations "
                   "WHERE version = $1::int",
                   1, params, &recorded, "could not read schema version", err);
    if (rc == 0 && !recorded)
      rc = apply_one(conn, m, err);
    if (rc != 0)
      return rc;
    if (!recorded)
      (*count)++;
  }
  return 0;
}

int migrate_apply(PGconn *conn, int *applied, sk_error *err) {
  const char *const key[] = {MIGRATE_LOCK_KEY};
  int count = 0;
  if (applied != NULL)
    *applied = 0;
  if (PQtransactionStatus(conn) != PQTRANS_IDLE)
    return sk_error_set(err, SK_EDB,
                        "could not apply migrations: the "
                        "connection is not idle");

  int rc = exec_params(conn, "SELECT pg_advisory_lock($1::bigint)", 1, key,
                       "could not take the migration lock", err);
  if (rc != 0)
    return rc;
  rc = apply_pending(conn, &count, err);
  if (PQstatus(conn) == CONNECTION_OK) {
    /* Unlock even after a failure; a failed unlock must not hide rc. */
    sk_error unlock_err;
    int urc = exec_params(conn, "SELECT pg_advisory_unlock($1::bigint)", 1, key,
                          "could not release the migration lock", &unlock_err);
    if (rc == 0 && urc != 0) {
      if (err != NULL)
        *err = unlock_err;
      rc = urc;
    }
  }
  if (applied != NULL)
    *applied = count;
  if (rc == 0 && count == 0)
    log_write(LOG_DEBUG, "database schema is up to date", "#schema_version",
              (int64_t)migrate_latest_version(), NULL);
  return rc;
}
