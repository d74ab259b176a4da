/*
 * sagacheck.c — post-run checks of the saga log (see sagacheck.h).
 *
 * Reads the whole event log of the checked sagas with one query and the
 * workers' execution log, then checks each saga against what its input
 * (see tests/programs/crash_worker.c) dictates.
 */
#include "sagacheck.h"

#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/queries.h"

#define STEPS 5

typedef struct exec_line {
  char saga[37];
  char step[16];
  char kind[8];
  char key[128];
  long pid;
  bool ok;
} exec_line;

static exec_line *read_exec_log(const char *path, size_t *n) {
  FILE *f = fopen(path, "r");
  cr_assert_not_null(f, "cannot read execution log %s", path);
  size_t cap = 1024;
  exec_line *v = malloc(cap * sizeof(*v));
  *n = 0;
  char line[512];
  while (fgets(line, sizeof(line), f) != NULL) {
    if (strncmp(line, "EXEC ", 5) != 0)
      continue;
    if (*n == cap) {
      cap *= 2;
      v = realloc(v, cap * sizeof(*v));
    }
    exec_line *e = &v[*n];
    int attempt;
    char res[8];
    int got = sscanf(line, "EXEC %36s %15s %7s %d %127s %ld %7s", e->saga,
                     e->step, e->kind, &attempt, e->key, &e->pid, res);
    cr_assert_eq(got, 7, "malformed execution line: %s", line);
    e->ok = strcmp(res, "ok") == 0;
    (*n)++;
  }
  fclose(f);
  return v;
}

/* Per saga, what the log says. */
typedef struct saga_view {
  char id[37];
  char status[16];
  int completions[STEPS];     /* StepCompleted count per step */
  int comp_done[STEPS + 1];   /* CompensationCompleted steps, in order */
  int n_comp_done;
  int terminal;               /* terminal events */
  bool last_is_terminal;
  bool seq_ok;
  bool exec_fwd[STEPS], exec_comp[STEPS];
} saga_view;

static int expected_fail_at(int i) { return i % 4 == 0 ? 1 + (i / 4) % 5 : 0; }

static PGresult *must_query(PGconn *c, const char *sql, int np,
                            const char **p) {
  PGresult *r = PQexecParams(c, sql, np, NULL, p, NULL, NULL, 0);
  cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "query failed: %s",
               PQerrorMessage(c));
  return r;
}

static void load_views(PGconn *c, const char *prefix, int n, saga_view *v) {
  char pat[80];
  snprintf(pat, sizeof(pat), "%s-%%", prefix);
  const char *p[1] = {pat};
  PGresult *r = must_query(
      c,
      "SELECT split_part(i.key, '-', 2)::int, s.id::text, s.status, "
      "  e.seq, e.type, coalesce(e.step, -1) "
      "FROM saga_idempotency i JOIN sagas s ON s.id = i.saga_id "
      "JOIN saga_events e ON e.saga_id = s.id "
      "WHERE i.workflow = 'crash_wf' AND i.key LIKE $1 "
      "ORDER BY 1, e.seq",
      1, p);
  long last_seq[4096] = {0};
  cr_assert(n <= 4096);
  for (int row = 0; row < PQntuples(r); row++) {
    int i = atoi(PQgetvalue(r, row, 0));
    cr_assert(i >= 0 && i < n, "unexpected saga key index %d", i);
    saga_view *s = &v[i];
    snprintf(s->id, sizeof(s->id), "%s", PQgetvalue(r, row, 1));
    snprintf(s->status, sizeof(s->status), "%s", PQgetvalue(r, row, 2));
    long seq = atol(PQgetvalue(r, row, 3));
    const char *type = PQgetvalue(r, row, 4);
    int step = atoi(PQgetvalue(r, row, 5));
    if (seq != last_seq[i] + 1)
      s->seq_ok = false;
    last_seq[i] = seq;
    bool term = strcmp(type, "SagaCompleted") == 0 ||
                strcmp(type, "SagaCompensated") == 0 ||
                strcmp(type, "SagaFailed") == 0 ||
                strcmp(type, "SagaCancelled") == 0;
    s->terminal += term;
    s->last_is_terminal = term;
    if (strcmp(type, "StepCompleted") == 0 && step >= 0 && step < STEPS)
      s->completions[step]++;
    if (strcmp(type, "CompensationCompleted") == 0 && s->n_comp_done < STEPS + 1)
      s->comp_done[s->n_comp_done++] = step;
  }
  PQclear(r);
}

static void check_saga(int i, const saga_view *s, sagacheck_stats *st) {
  int f = expected_fail_at(i);
  cr_assert(s->id[0] != '\0', "saga %d was never started", i);
  cr_assert(s->seq_ok, "saga %s: event seq is not contiguous from 1", s->id);
  cr_assert_eq(s->terminal, 1, "saga %s: %d terminal events", s->id,
               s->terminal);
  cr_assert(s->last_is_terminal, "saga %s: terminal event is not last", s->id);
  int completed_upto = f == 0 ? STEPS : f - 1; /* steps 0..completed_upto-1 */
  for (int k = 0; k < STEPS; k++) {
    int want = k < completed_upto ? 1 : 0;
    cr_assert_eq(s->completions[k], want,
                 "saga %s (i=%d, fail_at=%d): step %d completed %d times",
                 s->id, i, f, k, s->completions[k]);
    if (want)
      cr_assert(s->exec_fwd[k], "saga %s: step %d completed without a "
                "successful execution", s->id, k);
  }
  if (f == 0) {
    cr_assert_str_eq(s->status, "completed", "saga %s (i=%d)", s->id, i);
    cr_assert_eq(s->n_comp_done, 0, "saga %s compensated a completed saga",
                 s->id);
    st->completed++;
    return;
  }
  cr_assert_str_eq(s->status, "compensated", "saga %s (i=%d, fail_at=%d)",
                   s->id, i, f);
  cr_assert_eq(s->n_comp_done, completed_upto,
               "saga %s: %d compensations for %d completed steps", s->id,
               s->n_comp_done, completed_upto);
  for (int k = 0; k < s->n_comp_done; k++) {
    cr_assert_eq(s->comp_done[k], completed_upto - 1 - k,
                 "saga %s: compensation %d undid step %d (want %d): not "
                 "newest-first",
                 s->id, k, s->comp_done[k], completed_upto - 1 - k);
    cr_assert(s->exec_comp[s->comp_done[k]],
              "saga %s: compensation of step %d recorded without execution",
              s->id, s->comp_done[k]);
  }
  st->compensated++;
}

/* Every execution's key must be exactly "<saga>:<step>:<kind>". */
static void check_exec_lines(exec_line *ex, size_t n_ex, saga_view *v, int n,
                             sagacheck_stats *st) {
  long pids[64];
  size_t n_pids = 0;
  for (size_t k = 0; k < n_ex; k++) {
    exec_line *e = &ex[k];
    char want[128];
    snprintf(want, sizeof(want), "%s:%s:%s", e->saga, e->step, e->kind);
    cr_assert_str_eq(e->key, want, "execution carried key %s, want %s",
                     e->key, want);
    bool seen = false;
    for (size_t p = 0; p < n_pids; p++)
      seen |= pids[p] == e->pid;
    if (!seen && n_pids < 64)
      pids[n_pids++] = e->pid;
    if (!e->ok)
      continue;
    int step = atoi(e->step + 1) - 1;
    for (int i = 0; i < n; i++) {
      if (strcmp(v[i].id, e->saga) != 0 || step < 0 || step >= STEPS)
        continue;
      if (strcmp(e->kind, "fwd") == 0)
        v[i].exec_fwd[step] = true;
      else
        v[i].exec_comp[step] = true;
      break;
    }
  }
  st->executions = n_ex;
  st->pids = n_pids;
}

void sagacheck_crash_wf(const char *conninfo, const char *log_path,
                        const char *prefix, int n, sagacheck_stats *stats) {
  memset(stats, 0, sizeof(*stats));
  PGconn *c = PQconnectdb(conninfo);
  cr_assert_eq(PQstatus(c), CONNECTION_OK, "cannot connect: %s",
               PQerrorMessage(c));
  saga_view *v = calloc((size_t)n, sizeof(*v));
  for (int i = 0; i < n; i++)
    v[i].seq_ok = true;
  load_views(c, prefix, n, v);
  size_t n_ex = 0;
  exec_line *ex = read_exec_log(log_path, &n_ex);
  check_exec_lines(ex, n_ex, v, n, stats);
  for (int i = 0; i < n; i++)
    check_saga(i, &v[i], stats);
  stats->sagas = (size_t)n;

  PGresult *r = must_query(c, "SELECT count(*) FROM tasks", 0, NULL);
  cr_assert_str_eq(PQgetvalue(r, 0, 0), "0", "tasks left in the queue");
  PQclear(r);
  verify_report rep;
  sk_error err = {0};
  cr_assert_eq(queries_verify(c, NULL, &rep, &err), SK_OK, "verify: %s",
               err.message);
  cr_assert_geq(rep.checked, (size_t)n);
  cr_assert_eq(rep.mismatched, 0,
               "%zu projections differ from the fold of their events "
               "(first: %s)",
               rep.mismatched, rep.first_mismatch);
  free(ex);
  free(v);
  PQfinish(c);
}
