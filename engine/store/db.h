/*
 * db.h — libpq helpers shared by the store: connecting, error reporting,
 * classifying transient errors, and building text-format array parameters.
 *
 * Transient errors (serialization failure 40001, deadlock 40P01, connection
 * exceptions class 08, admin shutdown 57P01..57P03, too many connections
 * 53300, or a connection that is no longer CONNECTION_OK) are classified
 * here and only here; callers retry those and nothing else.
 *
 * Thread: the caller's; a PGconn is never used by two threads at once.
 */
#ifndef SKALD_STORE_DB_H
#define SKALD_STORE_DB_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/err.h"

/* Connects with conninfo (a URL or key=value string), sets
 * application_name to "skald" (unless given) and checks the connection.
 * Errors: SK_EDB (err->message says why, without the conninfo). */
int db_connect(const char *conninfo, PGconn **out, sk_error *err);

/* Fills err from a failed result or connection (message, SQLSTATE) prefixed
 * with `what` ("could not append events"). Returns SK_EDB. res may be NULL. */
int db_fail(PGconn *conn, const PGresult *res, const char *what, sk_error *err);

/* True if the error of res / conn is transient (see above). */
bool db_is_transient(PGconn *conn, const PGresult *res);
/* Same for an SQLSTATE string (may be NULL / empty: false). */
bool db_sqlstate_transient(const char *sqlstate);

/* Runs a command (or several, simple protocol) that returns no rows.
 * Errors: SK_EDB. */
int db_exec(PGconn *conn, const char *sql, sk_error *err);

/* A PostgreSQL array literal in text format ("{...}") for $n::type[]
 * parameters, built element by element.
 *
 * A binary text[] (pgarr_init_text_bin) is PostgreSQL's binary array
 * format instead: each element is a length and the bytes as they are, so
 * neither side escapes or scans JSON for quotes (array_in was the top
 * database symbol of a busy engine, parsing the projections). Only
 * pgarr_add_str applies to it; send it with pgarr_len and format 1. */
typedef struct pgarr {
  buf b;
  size_t n;
  bool bin;      /* binary text[] */
  bool has_null; /* binary: a NULL element was added */
} pgarr;

void pgarr_init(pgarr *a);
void pgarr_init_text_bin(pgarr *a);
void pgarr_free(pgarr *a);
void pgarr_reset(pgarr *a);
/* NULL s adds a NULL element. */
void pgarr_add_str(pgarr *a, const char *s);
void pgarr_add_i64(pgarr *a, int64_t v);
void pgarr_add_bool(pgarr *a, bool v);
/* The literal; valid until the next change. NULL on OOM. */
const char *pgarr_get(pgarr *a);
/* Bytes of the value pgarr_get returned (binary arrays hold NULs). */
int pgarr_len(const pgarr *a);

#endif /* SKALD_STORE_DB_H */
