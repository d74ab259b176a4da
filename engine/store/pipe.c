/*
 * pipe.c — libpq pipeline mode for a sequence of statements (see pipe.h).
 *
 * Invariant: when db_pipe_run returns on a live connection, every result
 * the server sent for the pipe has been read and the connection is out of
 * pipeline mode, so the next caller can use it as usual (a ROLLBACK, say).
 *
 * Thread: the caller's.
 */
#include "store/pipe.h"

#include <libpq-events.h>
#include <stdlib.h>
#include <string.h>

#include "store/db.h"

/* ---- prepared statements, per connection ------------------------------------
 * The names prepared on a session hang off the PGconn as libpq instance
 * data: a reset (PQreset) empties the list, PQfinish frees it. */

#define STMTS_MAX 32

typedef struct stmt_set {
  const db_stmt *done[STMTS_MAX];
  int n;
} stmt_set;

static int stmt_events(PGEventId id, void *info, void *pass) {
  (void)pass;
  switch (id) {
  case PGEVT_REGISTER: {
    PGEventRegister *ev = info;
    stmt_set *set = calloc(1, sizeof(*set));
    return set != NULL && PQsetInstanceData(ev->conn, stmt_events, set);
  }
  case PGEVT_CONNRESET: {
    PGEventConnReset *ev = info;
    stmt_set *set = PQinstanceData(ev->conn, stmt_events);
    if (set != NULL)
      set->n = 0;
    return 1;
  }
  case PGEVT_CONNDESTROY: {
    PGEventConnDestroy *ev = info;
    free(PQinstanceData(ev->conn, stmt_events));
    return 1;
  }
  default:
    return 1;
  }
}

static stmt_set *stmts_of(PGconn *c) {
  stmt_set *set = PQinstanceData(c, stmt_events);
  if (set == NULL &&
      PQregisterEventProc(c, stmt_events, "skald prepared statements", NULL))
    set = PQinstanceData(c, stmt_events);
  return set;
}

/* A Prepare succeeded: remember the first one still pending (their
 * results come back in the order they were queued). */
static int read_prepared(const PGresult *r, void *ctx, sk_error *err) {
  (void)r;
  (void)err;
  db_pipe *p = ctx;
  for (int i = 0; i < p->n_prep; i++) {
    stmt_set *set = p->prep[i].set;
    if (set != NULL && set->n < STMTS_MAX && p->prep[i].s != NULL) {
      set->done[set->n++] = p->prep[i].s;
      p->prep[i].s = NULL; /* once */
      break;
    }
  }
  return SK_OK;
}

int db_pipe_open(db_pipe *p, PGconn *c, sk_error *err) {
  p->c = c;
  p->err = err;
  p->rc = SK_OK;
  p->n = 0;
  p->n_prep = 0;
  if (PQenterPipelineMode(c) != 1)
    return p->rc = db_fail(c, NULL, "could not enter pipeline mode", err);
  return SK_OK;
}

/* The three ways a statement is queued. */
typedef enum send_kind { SEND_UNNAMED, SEND_PREPARE, SEND_PREPARED } send_kind;

/* Queues one message and records whose result will come back for it. */
static void queue(db_pipe *p, send_kind k, const db_stmt *s, const char *sql,
                  int n_params, const char *const *params, const int *lengths,
                  const int *formats, const char *what, db_pipe_reader read,
                  void *ctx) {
  if (p->rc != SK_OK)
    return;
  if (p->n == DB_PIPE_MAX) {
    p->rc = sk_error_set(p->err, SK_EINTERNAL, "pipeline too long");
    return;
  }
  int ok = 0;
  switch (k) {
  case SEND_UNNAMED:
    ok = PQsendQueryParams(p->c, sql, n_params, NULL, params, lengths, formats,
                           0);
    break;
  case SEND_PREPARE:
    ok = PQsendPrepare(p->c, s->name, s->sql, s->n_params, NULL);
    break;
  case SEND_PREPARED:
    ok = PQsendQueryPrepared(p->c, s->name, s->n_params, params, lengths,
                             formats, 0);
    break;
  }
  if (ok != 1) {
    p->rc = db_fail(p->c, NULL, what, p->err);
    return;
  }
  p->st[p->n].what = what;
  p->st[p->n].read = read;
  p->st[p->n].ctx = ctx;
  p->n++;
}

void db_pipe_send(db_pipe *p, const char *sql, int n_params,
                  const char *const *params, const char *what,
                  db_pipe_reader read, void *ctx) {
  queue(p, SEND_UNNAMED, NULL, sql, n_params, params, NULL, NULL, what, read,
        ctx);
}

void db_pipe_send_stmt(db_pipe *p, const db_stmt *s, const char *const *params,
                       const char *what, db_pipe_reader read, void *ctx) {
  db_pipe_send_stmt_fmt(p, s, params, NULL, NULL, what, read, ctx);
}

void db_pipe_send_stmt_fmt(db_pipe *p, const db_stmt *s,
                           const char *const *params, const int *lengths,
                           const int *formats, const char *what,
                           db_pipe_reader read, void *ctx) {
  if (p->rc != SK_OK)
    return;
  stmt_set *set = stmts_of(p->c);
  bool prepared = false;
  for (int i = 0; set != NULL && i < set->n && !prepared; i++)
    prepared = set->done[i] == s;
  for (int i = 0; i < p->n_prep && !prepared; i++)
    prepared = p->prep[i].s == s; /* queued earlier in this pipe */
  if (!prepared && (set == NULL || p->n_prep == DB_PIPE_MAX)) {
    /* Cannot remember it: run it unnamed. */
    queue(p, SEND_UNNAMED, NULL, s->sql, s->n_params, params, lengths, formats,
          what, read, ctx);
    return;
  }
  if (!prepared) {
    queue(p, SEND_PREPARE, s, NULL, 0, NULL, NULL, NULL, what, read_prepared,
          p);
    if (p->rc != SK_OK)
      return;
    p->prep[p->n_prep].set = set;
    p->prep[p->n_prep].s = s;
    p->n_prep++;
  }
  queue(p, SEND_PREPARED, s, NULL, 0, params, lengths, formats, what, read,
        ctx);
}

/* Reads up to and including the Sync's result. False if the connection
 * gave out first. */
static bool drain_to_sync(PGconn *c) {
  int nulls = 0;
  while (nulls < 2) {
    PGresult *r = PQgetResult(c);
    if (r == NULL) {
      if (PQstatus(c) != CONNECTION_OK)
        return false;
      nulls++; /* one NULL ends each statement's results */
      continue;
    }
    nulls = 0;
    ExecStatusType s = PQresultStatus(r);
    PQclear(r);
    if (s == PGRES_PIPELINE_SYNC)
      return true;
  }
  return false;
}

int db_pipe_run(db_pipe *p) {
  PGconn *c = p->c;
  if (PQpipelineSync(c) != 1) {
    if (p->rc == SK_OK)
      p->rc = db_fail(c, NULL, "could not send a pipeline", p->err);
    PQexitPipelineMode(c);
    return p->rc;
  }
  bool synced = false;
  for (int i = 0; i < p->n; i++) {
    PGresult *r = PQgetResult(c);
    if (r == NULL) { /* the connection broke */
      if (p->rc == SK_OK)
        p->rc = db_fail(c, NULL, p->st[i].what, p->err);
      PQexitPipelineMode(c);
      return p->rc;
    }
    ExecStatusType s = PQresultStatus(r);
    if (s == PGRES_TUPLES_OK || s == PGRES_COMMAND_OK) {
      if (p->rc == SK_OK && p->st[i].read != NULL)
        p->rc = p->st[i].read(r, p->st[i].ctx, p->err);
    } else if (s != PGRES_PIPELINE_ABORTED && p->rc == SK_OK) {
      p->rc = db_fail(c, r, p->st[i].what, p->err);
    }
    PQclear(r);
    if (s == PGRES_PIPELINE_SYNC) { /* cannot happen before the last */
      synced = true;
      break;
    }
    /* The NULL that ends this statement's results (one result each: no
     * single-row mode, no COPY). */
    r = PQgetResult(c);
    if (r != NULL) {
      if (p->rc == SK_OK)
        p->rc = sk_error_set(p->err, SK_EINTERNAL, "%s: more than one result",
                             p->st[i].what);
      PQclear(r);
    }
  }
  if (!synced && !drain_to_sync(c) && p->rc == SK_OK)
    p->rc = db_fail(c, NULL, "the connection broke in a pipeline", p->err);
  if (PQexitPipelineMode(c) != 1 && p->rc == SK_OK)
    p->rc = db_fail(c, NULL, "could not leave pipeline mode", p->err);
  return p->rc;
}
