/*
 * pgtest.h — throwaway databases for integration tests.
 *
 * The server comes from SKALD_TEST_DATABASE_URL (a libpq URL or conninfo for
 * a role that may CREATE DATABASE), which scripts/test.sh sets after starting
 * a private PostgreSQL. Without it the helpers fail loudly and say so.
 *
 * Thread: the test's; each call opens and closes its own connection.
 */
#ifndef SKALD_TESTS_PGTEST_H
#define SKALD_TESTS_PGTEST_H

#include <stddef.h>

/* Creates an empty database skald_test_<pid>_<counter>_<random> and writes
 * a conninfo for it to conninfo_out. Returns 0, or -1 (the reason printed
 * to stderr) when SKALD_TEST_DATABASE_URL is unset or the server refuses. */
int pgtest_fresh_db(char *conninfo_out, size_t len)
    __attribute__((warn_unused_result));

/* Drops the database named by conninfo (connections to it are terminated;
 * an empty conninfo, left by a failed pgtest_fresh_db, is ignored).
 * Errors are printed, never fatal: cleanup must not hide the real failure. */
void pgtest_drop_db(const char *conninfo);

/* Runs sql (simple protocol; several statements allowed) on conninfo.
 * Aborts the current test, printing the SQL error, if it fails. Returns 0. */
int pgtest_exec(const char *conninfo, const char *sql);

/* Runs sql and returns the single value it yields as an integer (LLONG_MIN
 * for NULL). Aborts the current test if it fails or is not one value. */
long long pgtest_scalar(const char *conninfo, const char *sql);

#endif /* SKALD_TESTS_PGTEST_H */
