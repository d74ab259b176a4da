/*
 * test_migrate.c — store/migrate.c against a real PostgreSQL: from empty,
 * twice is a no-op, eight processes at once apply each migration exactly
 * once, and a database newer than the binary is refused.
 */
#include "store/migrate.h"

#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pgtest.h"
#include "store/db.h"

static char ci[1024];

static void mig_setup(void) {
  cr_assert_eq(pgtest_fresh_db(ci, sizeof(ci)), 0);
}
static void mig_teardown(void) { pgtest_drop_db(ci); }

TestSuite(migrate, .init = mig_setup, .fini = mig_teardown, .timeout = 300);

static PGconn *connect_ok(void) {
  sk_error err;
  PGconn *c = NULL;
  cr_assert_eq(db_connect(ci, &c, &err), 0, "%s", err.message);
  return c;
}

Test(migrate, latest_version_is_the_newest_embedded) {
  cr_assert_gt(migrations_embedded_count, 0);
  int latest = migrate_latest_version();
  cr_assert_eq(latest,
               migrations_embedded[migrations_embedded_count - 1].version);
  for (size_t i = 1; i < migrations_embedded_count; i++)
    cr_assert_lt(migrations_embedded[i - 1].version,
                 migrations_embedded[i].version, "embedded out of order");
}

Test(migrate, from_empty_then_again_is_a_noop) {
  PGconn *c = connect_ok();
  sk_error err;
  int v = -1, applied = -1;
  cr_assert_eq(migrate_current_version(c, &v, &err), 0, "%s", err.message);
  cr_assert_eq(v, 0);

  cr_assert_eq(migrate_apply(c, &applied, &err), 0, "%s", err.message);
  cr_assert_eq(applied, (int)migrations_embedded_count);
  cr_assert_eq(migrate_current_version(c, &v, &err), 0, "%s", err.message);
  cr_assert_eq(v, migrate_latest_version());
  cr_assert_eq(pgtest_scalar(ci, "SELECT count(*) FROM "
                                 "skald_schema_migrations"),
               (long long)migrations_embedded_count);
  cr_assert_eq(pgtest_scalar(ci, "SELECT count(*) FROM "
                                 "skald_schema_migrations WHERE name = "
                                 "'0001_saga_log' AND applied_at <= now()"),
               1);
  /* The schema of 0001 is really there. */
  cr_assert_eq(pgtest_scalar(ci, "SELECT (to_regclass('saga_events') IS NOT "
                                 "NULL AND to_regclass('sagas') IS NOT "
                                 "NULL)::int"),
               1);

  cr_assert_eq(migrate_apply(c, &applied, &err), 0, "%s", err.message);
  cr_assert_eq(applied, 0);
  cr_assert_eq(migrate_apply(c, NULL, &err), 0, "%s", err.message);
  cr_assert_eq(pgtest_scalar(ci, "SELECT count(*) FROM "
                                 "skald_schema_migrations"),
               (long long)migrations_embedded_count);
  /* The advisory lock is released after each run. */
  cr_assert_eq(pgtest_scalar(ci, "SELECT count(*) FROM pg_locks WHERE "
                                 "locktype = 'advisory' AND database = "
                                 "(SELECT oid FROM pg_database WHERE "
                                 "datname = current_database())"),
               0);
  PQfinish(c);
}

/* A child: waits for the start signal, migrates, exits with how many it
 * applied (0..100) or 200+ on error. */
static void migrate_child(int go_fd) {
  char b;
  if (read(go_fd, &b, 1) < 0)
    _exit(250);
  sk_error err;
  PGconn *c = NULL;
  if (db_connect(ci, &c, &err) != 0) {
    fprintf(stderr, "child: %s\n", err.message);
    _exit(201);
  }
  int applied = 0;
  int rc = migrate_apply(c, &applied, &err);
  if (rc != 0)
    fprintf(stderr, "child: %s\n", err.message);
  PQfinish(c);
  _exit(rc != 0 ? 202 : applied);
}

Test(migrate, eight_processes_apply_each_migration_once) {
  enum { N = 8 };
  int go[2];
  cr_assert_eq(pipe(go), 0);
  pid_t pids[N];
  for (int i = 0; i < N; i++) {
    pids[i] = fork();
    cr_assert_geq(pids[i], 0);
    if (pids[i] == 0) {
      close(go[1]);
      migrate_child(go[0]);
    }
  }
  close(go[0]);
  close(go[1]); /* EOF: every child starts at once */

  int total = 0;
  for (int i = 0; i < N; i++) {
    int st = 0;
    cr_assert_eq(waitpid(pids[i], &st, 0), pids[i]);
    cr_assert(WIFEXITED(st), "child %d died", i);
    cr_assert_lt(WEXITSTATUS(st), 200, "child %d failed: %d", i,
                 WEXITSTATUS(st));
    total += WEXITSTATUS(st);
  }
  cr_assert_eq(total, (int)migrations_embedded_count);
  cr_assert_eq(pgtest_scalar(ci, "SELECT count(*) FROM "
                                 "skald_schema_migrations"),
               (long long)migrations_embedded_count);
  cr_assert_eq(pgtest_scalar(ci, "SELECT max(version) FROM "
                                 "skald_schema_migrations"),
               migrate_latest_version());
}

Test(migrate, newer_schema_is_refused) {
  PGconn *c = connect_ok();
  sk_error err;
  cr_assert_eq(migrate_apply(c, NULL, &err), 0, "%s", err.message);
  pgtest_exec(ci, "INSERT INTO skald_schema_migrations (version, name) "
                  "VALUES (9999, '9999_from_the_future')");

  int applied = -1;
  cr_assert_eq(migrate_apply(c, &applied, &err), SK_EMIGRATION);
  cr_assert_eq(err.code, SK_EMIGRATION);
  cr_assert_eq(applied, 0);
  char want[160];
  snprintf(want, sizeof(want),
           "database schema version 9999 is newer than this binary (newest "
           "migration %d); upgrade skald",
           migrate_latest_version());
  cr_assert_str_eq(err.message, want);

  int v = 0;
  cr_assert_eq(migrate_current_version(c, &v, &err), 0, "%s", err.message);
  cr_assert_eq(v, 9999);
  /* Refusal releases the lock and leaves the connection usable. */
  cr_assert_eq(pgtest_scalar(ci, "SELECT count(*) FROM pg_locks WHERE "
                                 "locktype = 'advisory' AND database = "
                                 "(SELECT oid FROM pg_database WHERE "
                                 "datname = current_database())"),
               0);
  cr_assert_eq(PQtransactionStatus(c), PQTRANS_IDLE);
  PQfinish(c);
}

Test(migrate, refuses_a_connection_inside_a_transaction) {
  PGconn *c = connect_ok();
  sk_error err;
  cr_assert_eq(db_exec(c, "BEGIN", &err), 0, "%s", err.message);
  cr_assert_eq(migrate_apply(c, NULL, &err), SK_EDB);
  cr_assert_eq(db_exec(c, "ROLLBACK", &err), 0, "%s", err.message);
  cr_assert_eq(pgtest_scalar(ci, "SELECT count(*) FROM pg_tables WHERE "
                                 "tablename = 'skald_schema_migrations'"),
               0);
  PQfinish(c);
}
