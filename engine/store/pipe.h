/*
 * pipe.h — libpq pipeline mode for a sequence of statements that go to the
 * server in one write and come back in one read.
 *
 * A group commit is a dozen statements; sent one at a time each costs a
 * round trip (two context switches on each side, and the server idles in
 * between). In a pipe they are queued, sent with one Sync, and their
 * results read in order, each handed to the reader given with it.
 *
 *   db_pipe p;
 *   db_pipe_open(&p, conn, err);
 *   db_pipe_send(&p, "BEGIN", 0, NULL, "could not begin", NULL, NULL);
 *   db_pipe_send(&p, sql, n, params, "could not lock", read_lock, ctx);
 *   rc = db_pipe_run(&p);      // sync, read every result, leave the mode
 *
 * The first failure wins: its error goes to err, the statements after it
 * are skipped by the server (PGRES_PIPELINE_ABORTED), their readers are not
 * called, and db_pipe_run returns its code once every result is consumed.
 * An explicit transaction that failed inside a pipe is left aborted: the
 * caller rolls it back as after any failed statement.
 *
 * Thread: the caller's; the connection belongs to the pipe until run.
 */
#ifndef SKALD_STORE_PIPE_H
#define SKALD_STORE_PIPE_H

#include <libpq-fe.h>

#include "common/err.h"

#define DB_PIPE_MAX 24

/* Reads one statement's result (TUPLES_OK or COMMAND_OK); returns SK_OK or
 * an error code (with err set). The result is cleared by the pipe. */
typedef int (*db_pipe_reader)(const PGresult *r, void *ctx, sk_error *err);

/* A statement prepared once per connection (a session) and executed by
 * name after that: no parse and no plan per use. name is unique in the
 * program and sql is a string literal (both must outlive every
 * connection). */
typedef struct db_stmt {
  const char *name;
  const char *sql;
  int n_params;
} db_stmt;

typedef struct db_pipe {
  PGconn *c;
  sk_error *err;
  int rc; /* the first failure, SK_OK while none */
  int n;
  struct {
    const char *what;
    db_pipe_reader read;
    void *ctx;
  } st[DB_PIPE_MAX];
  int n_prep; /* Prepares queued in this pipe, in order */
  struct {
    struct stmt_set *set;
    const struct db_stmt *s;
  } prep[DB_PIPE_MAX];
} db_pipe;

/* Enters pipeline mode on c. */
int db_pipe_open(db_pipe *p, PGconn *c, sk_error *err);

/* Queues one statement with text parameters. A failure to queue is kept
 * and reported by db_pipe_run. */
void db_pipe_send(db_pipe *p, const char *sql, int n_params,
                  const char *const *params, const char *what,
                  db_pipe_reader read, void *ctx);

/* Like db_pipe_send, for a prepared statement: the first use on a
 * connection also queues its Prepare (remembered once it succeeded; a new
 * or reset connection starts empty). */
void db_pipe_send_stmt(db_pipe *p, const db_stmt *s, const char *const *params,
                       const char *what, db_pipe_reader read, void *ctx);

/* The same with per-parameter lengths and formats (1: binary), as
 * PQsendQueryPrepared takes them; NULL for all-text. */
void db_pipe_send_stmt_fmt(db_pipe *p, const db_stmt *s,
                           const char *const *params, const int *lengths,
                           const int *formats, const char *what,
                           db_pipe_reader read, void *ctx);

/* Sends the Sync, reads every queued statement's result in order, leaves
 * pipeline mode. Returns SK_OK or the first failure's code. */
int db_pipe_run(db_pipe *p);

#endif /* SKALD_STORE_PIPE_H */
