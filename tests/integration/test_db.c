/*
 * test_db.c — store/db.c against a real PostgreSQL: connect errors that
 * never leak the password, the transient-error table, db_fail/db_exec, and
 * pgarr literals round-tripped through the server.
 */
#include "store/db.h"

#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <stdint.h>
#include <string.h>

#include "pgtest.h"

static char ci[1024];

static void db_setup(void) { cr_assert_eq(pgtest_fresh_db(ci, sizeof(ci)), 0); }
static void db_teardown(void) { pgtest_drop_db(ci); }

TestSuite(db, .init = db_setup, .fini = db_teardown, .timeout = 120);

/* --- connecting ---------------------------------------------------------- */

static void expect_connect_fails(const char *conninfo) {
  sk_error err;
  PGconn *c = (PGconn *)1;
  int rc = db_connect(conninfo, &c, &err);
  cr_assert_eq(rc, SK_EDB, "rc %d for %s", rc, conninfo);
  cr_assert_eq(err.code, SK_EDB);
  cr_assert_null(c);
  cr_assert(strstr(err.message, "could not connect") != NULL, "%s",
            err.message);
  cr_assert(strstr(err.message, "s3cr3tpw") == NULL, "password leaked: %s",
            err.message);
  cr_assert(strstr(err.message, "dbname=") == NULL, "conninfo leaked: %s",
            err.message);
}

Test(db, connect_errors_never_show_the_password) {
  expect_connect_fails("host=127.0.0.1 port=1 dbname=x user=u "
                       "password=s3cr3tpw connect_timeout=5");
  expect_connect_fails("postgresql://u:s3cr3tpw@127.0.0.1:1/x"
                       "?connect_timeout=5");
  expect_connect_fails("host=/nonexistent/skald dbname=x password=s3cr3tpw");
  /* Unparsable: libpq would quote the text after the broken keyword. */
  expect_connect_fails("host=127.0.0.1 password s3cr3tpw");
  expect_connect_fails("postgresql://u:s3cr3tpw@127.0.0.1:1/x?bogus=1");
  /* The server itself rejects: unknown database. */
  char bad[1200];
  snprintf(bad, sizeof(bad), "%s dbname=skald_no_such_db password=s3cr3tpw",
           ci);
  expect_connect_fails(bad);
}

Test(db, connect_sets_application_name_unless_given) {
  sk_error err;
  PGconn *c = NULL;
  cr_assert_eq(db_connect(ci, &c, &err), 0, "%s", err.message);
  cr_assert_str_eq(PQparameterStatus(c, "application_name"), "skald");
  PQfinish(c);

  char mine[1200];
  snprintf(mine, sizeof(mine), "%s application_name=mytool", ci);
  cr_assert_eq(db_connect(mine, &c, &err), 0, "%s", err.message);
  cr_assert_str_eq(PQparameterStatus(c, "application_name"), "mytool");
  PQfinish(c);
}

/* --- transient classification -------------------------------------------- */

Test(db, sqlstate_transient_table) {
  static const struct {
    const char *state;
    bool transient;
  } cases[] = {
      {"40001", true},   {"40P01", true},  {"08000", true},  {"08003", true},
      {"08006", true},   {"08001", true},  {"08004", true},  {"08P01", true},
      {"57P01", true},   {"57P02", true},  {"57P03", true},  {"53300", true},
      {"23505", false},  {"23503", false}, {"42P01", false}, {"42601", false},
      {"40002", false},  {"40003", false}, {"57014", false}, {"53200", false},
      {"53100", false},  {"22012", false}, {"XX000", false}, {"P0001", false},
      {"", false},       {NULL, false},    {"08", false},    {"0800", false},
      {"080000", false}, {"4000", false},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    cr_expect_eq(db_sqlstate_transient(cases[i].state), cases[i].transient,
                 "sqlstate %s", cases[i].state ? cases[i].state : "(null)");
}

Test(db, fail_fills_message_and_sqlstate) {
  sk_error err;
  PGconn *c = NULL;
  cr_assert_eq(db_connect(ci, &c, &err), 0, "%s", err.message);
  PGresult *res = PQexec(c, "SELECT 1/0");
  cr_assert_eq(PQresultStatus(res), PGRES_FATAL_ERROR);
  cr_assert_not(db_is_transient(c, res));
  cr_assert_eq(db_fail(c, res, "could not divide", &err), SK_EDB);
  PQclear(res);
  cr_assert_eq(err.code, SK_EDB);
  cr_assert_str_eq(err.sqlstate, "22012");
  cr_assert_str_eq(err.message, "could not divide: division by zero");

  cr_assert_eq(
      db_exec(c, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)", &err), 0,
      "%s", err.message);
  cr_assert_eq(db_exec(c, "INSERT INTO t VALUES ('x')", &err), SK_EDB);
  cr_assert_str_eq(err.sqlstate, "22P02");
  cr_assert(strncmp(err.message, "could not execute statement: ", 29) == 0,
            "%s", err.message);
  cr_assert_eq(db_fail(c, NULL, "nothing", NULL), SK_EDB); /* NULL err ok */
  PQfinish(c);
}

Test(db, terminated_connection_is_transient) {
  sk_error err;
  PGconn *victim = NULL, *killer = NULL;
  cr_assert_eq(db_connect(ci, &victim, &err), 0, "%s", err.message);
  cr_assert_eq(db_connect(ci, &killer, &err), 0, "%s", err.message);
  char pid[32];
  snprintf(pid, sizeof(pid), "%d", PQbackendPID(victim));
  const char *const params[] = {pid};
  PGresult *res = PQexecParams(killer, "SELECT pg_terminate_backend($1::int)",
                               1, NULL, params, NULL, NULL, 0);
  cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK);
  PQclear(res);

  res = PQexec(victim, "SELECT 1");
  cr_assert_neq(PQresultStatus(res), PGRES_TUPLES_OK);
  cr_assert(db_is_transient(victim, res));
  db_fail(victim, res, "could not select", &err);
  cr_assert(db_sqlstate_transient(err.sqlstate), "sqlstate '%s'", err.sqlstate);
  PQclear(res);
  cr_assert(db_is_transient(victim, NULL));
  PQfinish(victim);
  PQfinish(killer);
}

/* --- pgarr --------------------------------------------------------------- */

static const char *const strings[] = {
    "plain",
    "",
    NULL,
    "NULL",
    "null",
    "with \"double\" quotes",
    "'single'",
    "back\\slash\\",
    "\\\"",
    "a,b,c",
    "{braces}",
    "}",
    "{",
    "  spaced  ",
    "tab\there",
    "new\nline",
    "ünïcødé ✓ 日本語 🎉",
    "{\"json\": [1, \"two\", null, {\"k\": \"v\\\"q\\\\\"}], \"e\": {}}",
    NULL,
};
#define NSTRINGS (sizeof(strings) / sizeof(strings[0]))

/* Checks that literal, cast to type[], comes back element by element as
 * want (NULL entries are SQL NULLs). */
static void roundtrip(PGconn *c, const char *literal, const char *type,
                      const char *const *want, size_t n) {
  char sql[256];
  snprintf(sql, sizeof(sql),
           "SELECT x::text, i FROM unnest($1::%s[]) WITH ORDINALITY "
           "AS t(x, i) ORDER BY i",
           type);
  const char *const params[] = {literal};
  PGresult *res = PQexecParams(c, sql, 1, NULL, params, NULL, NULL, 0);
  cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s for %s",
               PQresultErrorMessage(res), literal);
  cr_assert_eq((size_t)PQntuples(res), n, "literal %s", literal);
  for (size_t i = 0; i < n; i++) {
    if (want[i] == NULL) {
      cr_expect(PQgetisnull(res, (int)i, 0), "element %zu not NULL", i);
    } else {
      cr_expect(!PQgetisnull(res, (int)i, 0), "element %zu NULL", i);
      cr_expect_str_eq(PQgetvalue(res, (int)i, 0), want[i], "element %zu", i);
    }
  }
  PQclear(res);
}

Test(db, pgarr_strings_roundtrip) {
  sk_error err;
  PGconn *c = NULL;
  cr_assert_eq(db_connect(ci, &c, &err), 0, "%s", err.message);
  pgarr a;
  pgarr_init(&a);
  cr_assert_str_eq(pgarr_get(&a), "{}");
  roundtrip(c, pgarr_get(&a), "text", NULL, 0);

  /* Build in two halves with a pgarr_get between: it must stay usable. */
  for (size_t i = 0; i < NSTRINGS / 2; i++)
    pgarr_add_str(&a, strings[i]);
  cr_assert_not_null(pgarr_get(&a));
  roundtrip(c, pgarr_get(&a), "text", strings, NSTRINGS / 2);
  for (size_t i = NSTRINGS / 2; i < NSTRINGS; i++)
    pgarr_add_str(&a, strings[i]);
  cr_assert_eq(a.n, NSTRINGS);
  roundtrip(c, pgarr_get(&a), "text", strings, NSTRINGS);

  /* Also as a whole array: the server's own text of it parses back equal. */
  const char *const params[] = {pgarr_get(&a)};
  PGresult *res =
      PQexecParams(c, "SELECT $1::text[] = $1::text[]::text::text[]", 1, NULL,
                   params, NULL, NULL, 0);
  cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s",
               PQresultErrorMessage(res));
  cr_assert_str_eq(PQgetvalue(res, 0, 0), "t");
  PQclear(res);

  pgarr_reset(&a);
  cr_assert_eq(a.n, 0);
  cr_assert_str_eq(pgarr_get(&a), "{}");
  pgarr_add_str(&a, "");
  const char *const one_empty[] = {""};
  roundtrip(c, pgarr_get(&a), "text", one_empty, 1);
  pgarr_free(&a);
  PQfinish(c);
}

Test(db, pgarr_numbers_and_bools_roundtrip) {
  sk_error err;
  PGconn *c = NULL;
  cr_assert_eq(db_connect(ci, &c, &err), 0, "%s", err.message);
  pgarr a;
  pgarr_init(&a);
  const int64_t nums[] = {0, 1, -1, 42, INT64_MAX, INT64_MIN};
  const char *const want_nums[] = {
      "0", "1", "-1", "42", "9223372036854775807", "-9223372036854775808"};
  for (size_t i = 0; i < 6; i++)
    pgarr_add_i64(&a, nums[i]);
  roundtrip(c, pgarr_get(&a), "bigint", want_nums, 6);

  pgarr_reset(&a);
  pgarr_add_bool(&a, true);
  pgarr_add_bool(&a, false);
  pgarr_add_str(&a, NULL);
  const char *const want_bools[] = {"true", "false", NULL};
  roundtrip(c, pgarr_get(&a), "boolean", want_bools, 3);
  pgarr_free(&a);
  PQfinish(c);
}
