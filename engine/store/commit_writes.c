/*
 * commit_writes.c — what a group commit writes (see commit_int.h): the
 * arrays the decisions fill (events, new and changed projections, tasks,
 * cancel marks, dropped tasks) and the statements that send them, one
 * multi-row statement each, then NOTIFY and COMMIT.
 *
 * The JSON-bearing arrays (projections, event payloads, task inputs) go in
 * PostgreSQL's binary array format (db.h, pgarr_init_text_bin).
 *
 * Thread: the committing thread's.
 */
#include "store/commit_int.h"

#include <stdlib.h>

/* clang-format off */
#define WRITES_ARRAYS(X)                                                       \
  X(ev_saga) X(ev_seq) X(ev_type) X(ev_step) X(ev_attempt) X(ev_node)          \
  X(ev_payload) X(ev_ts) X(tk_saga) X(tk_step) X(tk_kind) X(tk_attempt)        \
  X(tk_workflow) X(tk_step_name) X(tk_action) X(tk_type) X(tk_bulkhead)        \
  X(tk_avail) X(tk_input) X(tk_timeout) X(tk_gpus) X(tk_gpu_mem) X(tk_claim)   \
  X(cx_saga) X(cx_step) X(dl_saga) X(dl_step)
/* clang-format on */

/* ---- the statements ------------------------------------------------------ */

static const db_stmt sk_append_events = {
    "sk_append_events",
    "INSERT INTO saga_events (saga_id, seq, type, step, attempt, node, "
    "payload, created_at) "
    "SELECT s, q, t, st, a, n, p::jsonb, to_timestamp(ts / 1000.0) "
    "FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::int[], "
    "$5::int[], $6::text[], $7::text[], $8::bigint[]) "
    "AS u(s, q, t, st, a, n, p, ts)",
    8};

static const db_stmt sk_insert_sagas = {
    "sk_insert_sagas",
    "INSERT INTO sagas (id, workflow, version, status, last_seq, state, "
    "created_at, updated_at) "
    "SELECT i, w, v, s, q, st, to_timestamp(c / 1000.0), "
    "to_timestamp(u / 1000.0) "
    "FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], "
    "$5::bigint[], $6::text[], $7::bigint[], $8::bigint[]) "
    "AS x(i, w, v, s, q, st, c, u)",
    8};

static const db_stmt sk_update_sagas = {
    "sk_update_sagas",
    "UPDATE sagas s SET status = x.st, last_seq = x.q, "
    "state = x.j, updated_at = to_timestamp(x.u / 1000.0) "
    "FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], "
    "$5::bigint[]) AS x(i, st, q, j, u) WHERE s.id = x.i",
    5};

static const db_stmt sk_enqueue_tasks = {
    "sk_enqueue_tasks",
    "INSERT INTO tasks AS t (saga_id, step, kind, attempt, workflow, "
    "step_name, action, task_type, bulkhead, available_at, input, "
    "timeout_ms, gpus, gpu_memory_mb, lease_owner, lease_token, leased_at, "
    "deliveries) "
    "SELECT s, st, k, a, w, sn, ac, ty, bh, "
    "  CASE WHEN cl THEN now() + make_interval(secs => $17::int / 1000.0) "
    "       ELSE to_timestamp(av / 1000.0) END, "
    "  i::jsonb, tm, g, gm, "
    "  CASE WHEN cl THEN $16 END, "
    "  CASE WHEN cl THEN nextval('lease_token_seq') END, "
    "  CASE WHEN cl THEN now() END, "
    "  CASE WHEN cl THEN 1 ELSE 0 END "
    "FROM unnest($1::uuid[], $2::int[], $3::smallint[], $4::int[], "
    "$5::text[], $6::text[], $7::text[], $8::text[], $9::text[], "
    "$10::bigint[], $11::text[], $12::bigint[], $13::int[], $14::bigint[], "
    "$15::bool[]) AS x(s, st, k, a, w, sn, ac, ty, bh, av, i, tm, g, gm, cl) "
    "ON CONFLICT (saga_id, step, kind) DO UPDATE SET "
    "  attempt = excluded.attempt, action = excluded.action, "
    "  task_type = excluded.task_type, bulkhead = excluded.bulkhead, "
    "  available_at = excluded.available_at, input = excluded.input, "
    "  timeout_ms = excluded.timeout_ms, lease_owner = excluded.lease_owner, "
    "  lease_token = excluded.lease_token, leased_at = excluded.leased_at, "
    "  deliveries = excluded.deliveries, cancel_requested = false "
    "RETURNING " SAGASTORE_TASK_COLUMNS ", "
    "  t.lease_owner = $16 AND t.lease_token IS NOT NULL",
    17};

static const db_stmt sk_mark_cancels = {
    "sk_mark_cancels",
    "UPDATE tasks t SET cancel_requested = true, "
    "available_at = CASE WHEN t.lease_token IS NULL THEN now() "
    "ELSE t.available_at END "
    "FROM unnest($1::uuid[], $2::int[]) AS x(s, st) "
    "WHERE t.saga_id = x.s AND t.step = x.st AND t.kind IN (0, 2)",
    2};

static const db_stmt sk_drop_waiting = {
    "sk_drop_waiting",
    "DELETE FROM tasks t USING unnest($1::uuid[], $2::int[]) AS x(s, st) "
    "WHERE t.saga_id = x.s AND t.step = x.st AND t.kind = 0 "
    "AND (t.lease_owner IS NULL OR t.available_at <= now())",
    2};

void writes_init(writes *w) {
  memset(w, 0, sizeof(*w));
#define W_INIT(f) pgarr_init(&w->f);
  WRITES_ARRAYS(W_INIT)
#undef W_INIT
  /* The JSON-bearing arrays go in binary: no escaping of every quote on
   * this side, no character-by-character array_in on the server's. */
  pgarr_init_text_bin(&w->ev_payload);
  pgarr_init_text_bin(&w->tk_input);
}

void writes_free(writes *w) {
#define W_FREE(f) pgarr_free(&w->f);
  WRITES_ARRAYS(W_FREE)
#undef W_FREE
}

bool writes_ok(writes *w) {
#define W_OK(f) &&pgarr_get(&w->f) != NULL
  return true WRITES_ARRAYS(W_OK);
#undef W_OK
}

void writes_add_event(writes *w, const char *saga_id, const saga_event *ev) {
  pgarr_add_str(&w->ev_saga, saga_id);
  pgarr_add_i64(&w->ev_seq, ev->seq);
  pgarr_add_str(&w->ev_type, saga_event_name(ev->type));
  if (ev->step >= 0)
    pgarr_add_i64(&w->ev_step, ev->step);
  else
    pgarr_add_str(&w->ev_step, NULL);
  if (ev->attempt > 0)
    pgarr_add_i64(&w->ev_attempt, ev->attempt);
  else
    pgarr_add_str(&w->ev_attempt, NULL);
  pgarr_add_str(&w->ev_node, ev->node);
  pgarr_add_str(&w->ev_payload, ev->payload != NULL ? ev->payload : "{}");
  pgarr_add_i64(&w->ev_ts, ev->ts_ms);
  w->n_events++;
}

void writes_add_task(writes *w, const store_env *env, const saga_state *st,
                     const saga_task *t) {
  bool due = t->available_at_ms <= env->now_ms;
  bool claim = due && env->claim != NULL && env->claim(env->ud, t);
  pgarr_add_str(&w->tk_saga, st->id);
  pgarr_add_i64(&w->tk_step, t->step);
  pgarr_add_i64(&w->tk_kind, t->kind);
  pgarr_add_i64(&w->tk_attempt, t->attempt);
  pgarr_add_str(&w->tk_workflow, st->workflow);
  pgarr_add_str(&w->tk_step_name, st->steps[t->step].name);
  pgarr_add_str(&w->tk_action, def_kind_name(t->action));
  pgarr_add_str(&w->tk_type, t->task_type != NULL ? t->task_type : "");
  pgarr_add_str(&w->tk_bulkhead, t->bulkhead != NULL ? t->bulkhead : "default");
  pgarr_add_i64(&w->tk_avail, t->available_at_ms);
  pgarr_add_str(&w->tk_input, t->input != NULL ? t->input : "null");
  pgarr_add_i64(&w->tk_timeout, t->timeout_ms);
  pgarr_add_i64(&w->tk_gpus, t->gpus);
  pgarr_add_i64(&w->tk_gpu_mem, t->gpu_memory_mb);
  pgarr_add_bool(&w->tk_claim, claim);
  w->n_tasks++;
  if (claim) {
    w->n_claims++;
  } else if (due) {
    w->notify = true;
    w->n_unclaimed_due++;
  } else if (w->next_due_ms == 0 || t->available_at_ms < w->next_due_ms) {
    w->next_due_ms = t->available_at_ms;
  }
}

static void send_events(db_pipe *pp, writes *w) {
  if (w->n_events == 0)
    return;
  const char *p[8] = {pgarr_get(&w->ev_saga),    pgarr_get(&w->ev_seq),
                      pgarr_get(&w->ev_type),    pgarr_get(&w->ev_step),
                      pgarr_get(&w->ev_attempt), pgarr_get(&w->ev_node),
                      pgarr_get(&w->ev_payload), pgarr_get(&w->ev_ts)};
  int len[8] = {0}, fmt[8] = {0};
  len[6] = pgarr_len(&w->ev_payload); /* binary text[]: see writes_init */
  fmt[6] = 1;
  db_pipe_send_stmt_fmt(pp, &sk_append_events, p, len, fmt,
                        "could not append saga events", NULL, NULL);
}

static int send_projections(db_pipe *pp, attempt *a) {
  pgarr nid, nwf, nver, nstatus, nseq, nstate, ncreated, nupdated;
  pgarr uid, ustatus, useq, ustate, uupdated;
  pgarr *all[] = {&nid,    &nwf,      &nver,     &nstatus, &nseq,
                  &nstate, &ncreated, &nupdated, &uid,     &ustatus,
                  &useq,   &ustate,   &uupdated};
  size_t nall = sizeof(all) / sizeof(all[0]);
  for (size_t i = 0; i < nall; i++)
    pgarr_init(all[i]);
  pgarr_init_text_bin(&nstate); /* the states: binary, see writes_init */
  pgarr_init_text_bin(&ustate);
  size_t n_new = 0, n_upd = 0;
  int rc = SK_OK;
  for (size_t i = 0; i < a->n_t && rc == SK_OK; i++) {
    touched *t = &a->t[i];
    if (!t->dirty)
      continue;
    char *json = NULL;
    rc = saga_state_to_json(&t->st, &json);
    if (rc != SK_OK)
      break;
    if (t->is_new) {
      pgarr_add_str(&nid, t->id);
      pgarr_add_str(&nwf, t->st.workflow);
      pgarr_add_i64(&nver, t->st.version);
      pgarr_add_str(&nstatus, saga_status_name(t->st.status));
      pgarr_add_i64(&nseq, t->st.last_seq);
      pgarr_add_str(&nstate, json);
      pgarr_add_i64(&ncreated, t->st.created_ms);
      pgarr_add_i64(&nupdated, t->st.updated_ms);
      n_new++;
    } else {
      pgarr_add_str(&uid, t->id);
      pgarr_add_str(&ustatus, saga_status_name(t->st.status));
      pgarr_add_i64(&useq, t->st.last_seq);
      pgarr_add_str(&ustate, json);
      pgarr_add_i64(&uupdated, t->st.updated_ms);
      n_upd++;
    }
    free(json);
  }
  if (rc == SK_OK && n_new > 0) {
    const char *p[8] = {pgarr_get(&nid),      pgarr_get(&nwf),
                        pgarr_get(&nver),     pgarr_get(&nstatus),
                        pgarr_get(&nseq),     pgarr_get(&nstate),
                        pgarr_get(&ncreated), pgarr_get(&nupdated)};
    int len[8] = {0}, fmt[8] = {0};
    len[5] = pgarr_len(&nstate);
    fmt[5] = 1;
    db_pipe_send_stmt_fmt(pp, &sk_insert_sagas, p, len, fmt,
                          "could not insert sagas", NULL, NULL);
  }
  if (rc == SK_OK && n_upd > 0) {
    const char *p[5] = {pgarr_get(&uid), pgarr_get(&ustatus), pgarr_get(&useq),
                        pgarr_get(&ustate), pgarr_get(&uupdated)};
    int len[5] = {0}, fmt[5] = {0};
    len[3] = pgarr_len(&ustate);
    fmt[3] = 1;
    db_pipe_send_stmt_fmt(pp, &sk_update_sagas, p, len, fmt,
                          "could not update sagas", NULL, NULL);
  }
  for (size_t i = 0; i < nall; i++)
    pgarr_free(all[i]);
  return rc;
}

static int parse_kind(const char *s, def_kind *out) {
  if (strcmp(s, "task") == 0)
    *out = DEF_KIND_TASK;
  else if (strcmp(s, "sleep") == 0)
    *out = DEF_KIND_SLEEP;
  else if (strcmp(s, "http") == 0)
    *out = DEF_KIND_HTTP;
  else
    return SK_EINVAL;
  return SK_OK;
}

int sagastore_read_task_row(const PGresult *r, int row, leased_task *t) {
  memset(t, 0, sizeof(*t));
  snprintf(t->lease.saga_id, sizeof(t->lease.saga_id), "%s",
           PQgetvalue(r, row, 0));
  t->lease.step = atoi(PQgetvalue(r, row, 1));
  t->lease.kind = (task_kind)atoi(PQgetvalue(r, row, 2));
  t->lease.attempt = atoi(PQgetvalue(r, row, 3));
  t->lease.token = atoll(PQgetvalue(r, row, 4));
  t->workflow = strdup(PQgetvalue(r, row, 5));
  t->step_name = strdup(PQgetvalue(r, row, 6));
  if (parse_kind(PQgetvalue(r, row, 7), &t->action) != SK_OK)
    t->action = DEF_KIND_TASK;
  t->task_type = strdup(PQgetvalue(r, row, 8));
  t->bulkhead = strdup(PQgetvalue(r, row, 9));
  t->input = strdup(PQgetvalue(r, row, 10));
  t->timeout_ms = atoll(PQgetvalue(r, row, 11));
  t->deliveries = atoi(PQgetvalue(r, row, 12));
  t->cancel_requested = PQgetvalue(r, row, 13)[0] == 't';
  if (!t->workflow || !t->step_name || !t->task_type || !t->bulkhead ||
      !t->input) {
    leased_task_clear(t);
    return SK_ENOMEM;
  }
  return SK_OK;
}

static int read_claims(const PGresult *r, void *ctx, sk_error *err) {
  (void)err;
  claims_ctx *cc = ctx;
  store_batch *b = cc->b;
  int rc = SK_OK;
  int n = PQntuples(r);
  if (cc->w->n_claims > 0) {
    b->claimed = calloc(cc->w->n_claims, sizeof(leased_task));
    if (b->claimed == NULL)
      rc = SK_ENOMEM;
  }
  for (int i = 0; i < n && rc == SK_OK; i++) {
    if (PQgetvalue(r, i, 14)[0] != 't')
      continue;
    if (b->n_claimed >= cc->w->n_claims)
      break;
    rc = sagastore_read_task_row(r, i, &b->claimed[b->n_claimed]);
    if (rc == SK_OK)
      b->n_claimed++;
  }
  return rc;
}

static void send_tasks(db_pipe *pp, claims_ctx *cc, const store_env *env) {
  writes *w = cc->w;
  if (w->n_tasks == 0)
    return;
  char node_ttl[32];
  snprintf(node_ttl, sizeof(node_ttl), "%d", env->lease_ttl_ms);
  const char *p[17] = {pgarr_get(&w->tk_saga),
                       pgarr_get(&w->tk_step),
                       pgarr_get(&w->tk_kind),
                       pgarr_get(&w->tk_attempt),
                       pgarr_get(&w->tk_workflow),
                       pgarr_get(&w->tk_step_name),
                       pgarr_get(&w->tk_action),
                       pgarr_get(&w->tk_type),
                       pgarr_get(&w->tk_bulkhead),
                       pgarr_get(&w->tk_avail),
                       pgarr_get(&w->tk_input),
                       pgarr_get(&w->tk_timeout),
                       pgarr_get(&w->tk_gpus),
                       pgarr_get(&w->tk_gpu_mem),
                       pgarr_get(&w->tk_claim),
                       env->node,
                       node_ttl};
  int len[17] = {0}, fmt[17] = {0};
  len[10] = pgarr_len(&w->tk_input);
  fmt[10] = 1;
  db_pipe_send_stmt_fmt(pp, &sk_enqueue_tasks, p, len, fmt,
                        "could not enqueue tasks", read_claims, cc);
}

static void send_cancels(db_pipe *pp, writes *w) {
  if (w->n_cancels == 0)
    return;
  const char *p[2] = {pgarr_get(&w->cx_saga), pgarr_get(&w->cx_step)};
  /* An unleased task (waiting out a backoff) becomes due now so a node
   * picks it up, sees the flag and reports it cancelled at once. */
  db_pipe_send_stmt(pp, &sk_mark_cancels, p, "could not mark tasks cancelled",
                    NULL, NULL);
  w->notify = true;
}

/* Drops the waiting (unleased) forward tasks whose step went to its
 * fallback because a breaker is open; a leased one stays marked cancelled
 * and its late result is stale. */
static void send_drops(db_pipe *pp, writes *w) {
  if (w->n_drops == 0)
    return;
  const char *p[2] = {pgarr_get(&w->dl_saga), pgarr_get(&w->dl_step)};
  db_pipe_send_stmt(pp, &sk_drop_waiting, p, "could not drop waiting tasks",
                    NULL, NULL);
}

/* Queues every write of the attempt, the NOTIFY and the COMMIT. */
void commit_send_writes(db_pipe *pp, attempt *a, claims_ctx *cc,
                        const store_env *env) {
  send_events(pp, &a->w);
  int rc = send_projections(pp, a);
  if (rc != SK_OK && pp->rc == SK_OK)
    pp->rc = rc;
  send_tasks(pp, cc, env);
  send_cancels(pp, &a->w);
  send_drops(pp, &a->w);
  if (a->w.notify)
    db_pipe_send(pp, "NOTIFY " SAGASTORE_NOTIFY_CHANNEL, 0, NULL,
                 "could not notify", NULL, NULL);
  db_pipe_send(pp, "COMMIT", 0, NULL, "could not commit", NULL, NULL);
}
