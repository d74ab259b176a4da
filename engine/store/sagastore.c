/*
 * sagastore.c — the group commit (see sagastore.h).
 *
 * One attempt of the transaction:
 *   1. lock the projections of every saga the batch touches, in id order
 *      (SELECT ... ORDER BY id FOR UPDATE), so two nodes never deadlock;
 *   2. fence results: DELETE the task rows whose lease token still matches
 *      (RETURNING tells which results are current; the rest are dropped);
 *   3. claim idempotency keys of starts (INSERT ... ON CONFLICT DO NOTHING);
 *   4. run the pure decider for each op in order, evolving the in-memory
 *      states;
 *   5. write events, new and changed projections, new tasks and cancel
 *      marks with one multi-row statement each, NOTIFY, COMMIT.
 * A transient error rolls everything back and the attempt starts over from
 * the database's state, so a retry can never apply an op twice.
 *
 * Thread: a libuv threadpool thread (or any caller's); the connection and
 * the batch belong to this call.
 */
#include "store/sagastore.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/log.h"
#include "store/db.h"
#include "store/pipe.h"
#include "store/statecache.h"

#define COMMIT_MAX_TRIES 5

/* The in-memory state of one touched saga during an attempt. */
typedef struct touched {
  char id[37];
  saga_state st;
  bool found;  /* exists in the database */
  bool is_new; /* started by this batch */
  bool dirty;  /* changed by this batch */
  bool cached; /* st came from the state cache (seq still to check) */
  bool stale;  /* cached, but the row moved on: read it */
} touched;

/* Everything one attempt writes, as array literals for unnest(). */
typedef struct writes {
  pgarr ev_saga, ev_seq, ev_type, ev_step, ev_attempt, ev_node, ev_payload,
      ev_ts;
  size_t n_events;
  pgarr tk_saga, tk_step, tk_kind, tk_attempt, tk_workflow, tk_step_name,
      tk_action, tk_type, tk_bulkhead, tk_avail, tk_input, tk_timeout, tk_gpus,
      tk_gpu_mem, tk_claim;
  size_t n_tasks;
  size_t n_claims;
  size_t n_unclaimed_due;
  pgarr cx_saga, cx_step;
  size_t n_cancels;
  pgarr dl_saga, dl_step; /* waiting forward tasks to drop */
  size_t n_drops;
  bool notify;
  int64_t next_due_ms;
} writes;

typedef struct attempt {
  touched *t;
  size_t n_t; /* loaded (sorted by id) first, then started ones */
  size_t n_loaded;
  writes w;
} attempt;

#define WRITES_ARRAYS(X)                                                       \
  X(ev_saga)                                                                   \
  X(ev_seq)                                                                    \
  X(ev_type)                                                                   \
  X(ev_step)                                                                   \
  X(ev_attempt) X(ev_node) X(ev_payload) X(ev_ts) X(tk_saga) X(tk_step)        \
      X(tk_kind) X(tk_attempt) X(tk_workflow) X(tk_step_name) X(tk_action)     \
          X(tk_type) X(tk_bulkhead) X(tk_avail) X(tk_input) X(tk_timeout)      \
              X(tk_gpus) X(tk_gpu_mem) X(tk_claim) X(cx_saga) X(cx_step)       \
                  X(dl_saga) X(dl_step)

static void writes_init(writes *w) {
  memset(w, 0, sizeof(*w));
#define W_INIT(f) pgarr_init(&w->f);
  WRITES_ARRAYS(W_INIT)
#undef W_INIT
  /* The JSON-bearing arrays go in binary: no escaping of every quote on
   * this side, no character-by-character array_in on the server's. */
  pgarr_init_text_bin(&w->ev_payload);
  pgarr_init_text_bin(&w->tk_input);
}

static void writes_free(writes *w) {
#define W_FREE(f) pgarr_free(&w->f);
  WRITES_ARRAYS(W_FREE)
#undef W_FREE
}

static bool writes_ok(writes *w) {
#define W_OK(f) &&pgarr_get(&w->f) != NULL
  return true WRITES_ARRAYS(W_OK);
#undef W_OK
}

void leased_task_clear(leased_task *t) {
  if (t == NULL)
    return;
  free(t->workflow);
  free(t->step_name);
  free(t->task_type);
  free(t->bulkhead);
  free(t->input);
  memset(t, 0, sizeof(*t));
}

void store_op_clear(store_op *op) {
  if (op == NULL)
    return;
  free(op->input);
  free(op->idempotency_key);
  free(op->replay_of);
  free(op->output);
  free(op->err_type);
  free(op->err_message);
  free(op->reason);
  free(op->from_step);
  free(op->step_input);
  memset(op, 0, sizeof(*op));
}

void store_batch_clear_out(store_batch *b) {
  for (size_t i = 0; i < b->n_claimed; i++)
    leased_task_clear(&b->claimed[i]);
  free(b->claimed);
  b->claimed = NULL;
  b->n_claimed = 0;
}

/* ---- the statements (prepared once per connection) -------------------- */

/* $2: the sagas whose state the cache holds; their rows only say whether
 * it is still current. */
static const db_stmt sk_lock_sagas = {
    "sk_lock_sagas",
    "SELECT id::text, last_seq, "
    "CASE WHEN id = ANY($2::uuid[]) THEN NULL ELSE state END FROM sagas "
    "WHERE id = ANY($1::uuid[]) ORDER BY sagas.id FOR UPDATE",
    2};

static const db_stmt sk_read_sagas = {
    "sk_read_sagas",
    "SELECT id::text, state FROM sagas WHERE id = ANY($1::uuid[])", 1};

/* The one-round-trip commit's checks (skald_expect raises SK001). */
static const db_stmt sk_expect_sagas = {
    "sk_expect_sagas",
    "SELECT skald_expect(count(*) = cardinality($1::uuid[]) "
    "AND bool_and(l.last_seq = x.q), 'projections') "
    "FROM (SELECT id, last_seq FROM sagas WHERE id = ANY($1::uuid[]) "
    "ORDER BY id FOR UPDATE) l "
    "JOIN unnest($1::uuid[], $2::bigint[]) AS x(i, q) ON x.i = l.id",
    2};

static const db_stmt sk_expect_leases = {
    "sk_expect_leases",
    "WITH d AS (DELETE FROM tasks t USING unnest($1::uuid[], $2::int[], "
    "$3::smallint[], $4::bigint[]) AS r(s, st, k, tok) "
    "WHERE t.saga_id = r.s AND t.step = r.st AND t.kind = r.k "
    "AND t.lease_token = r.tok RETURNING 1) "
    "SELECT skald_expect((SELECT count(*) FROM d) = "
    "cardinality($4::bigint[]), 'leases')",
    4};

static const db_stmt sk_expect_keys = {
    "sk_expect_keys",
    "WITH k AS (INSERT INTO saga_idempotency (workflow, key, saga_id) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[]) "
    "ON CONFLICT DO NOTHING RETURNING 1) "
    "SELECT skald_expect((SELECT count(*) FROM k) = "
    "cardinality($3::uuid[]), 'idempotency keys')",
    3};

static const db_stmt sk_fence_results = {
    "sk_fence_results",
    "DELETE FROM tasks t USING unnest($1::uuid[], $2::int[], "
    "$3::smallint[], $4::bigint[]) AS r(s, st, k, tok) "
    "WHERE t.saga_id = r.s AND t.step = r.st AND t.kind = r.k "
    "AND t.lease_token = r.tok "
    "RETURNING t.saga_id::text, t.step, t.kind, t.lease_token",
    4};

static const db_stmt sk_insert_keys = {
    "sk_insert_keys",
    "INSERT INTO saga_idempotency (workflow, key, saga_id) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[]) "
    "ON CONFLICT DO NOTHING RETURNING saga_id::text",
    3};

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

/* ---- touched sagas ------------------------------------------------------- */

static int touched_cmp(const void *a, const void *b) {
  return strcmp(((const touched *)a)->id, ((const touched *)b)->id);
}

static touched *touched_find(attempt *a, const char *id) {
  touched key;
  snprintf(key.id, sizeof(key.id), "%s", id);
  return bsearch(&key, a->t, a->n_loaded, sizeof(touched), touched_cmp);
}

static void attempt_free(attempt *a) {
  for (size_t i = 0; i < a->n_t; i++)
    saga_state_clear(&a->t[i].st);
  free(a->t);
  writes_free(&a->w);
  memset(a, 0, sizeof(*a));
}

/* Collects the distinct saga ids of non-start ops, sorted. */
static int collect_touched(const store_batch *b, attempt *a,
                           state_cache *cache) {
  /* Room for every loaded saga plus every saga a start or a new-run
   * replay adds. */
  a->t = calloc(b->n_ops ? 2 * b->n_ops : 1, sizeof(touched));
  if (a->t == NULL)
    return SK_ENOMEM;
  for (size_t i = 0; i < b->n_ops; i++) {
    const store_op *op = &b->ops[i];
    if (op->type == STORE_OP_START)
      continue;
    const char *id =
        op->type == STORE_OP_RESULT ? op->lease.saga_id : op->saga_id;
    snprintf(a->t[a->n_t].id, sizeof(a->t[a->n_t].id), "%s", id);
    saga_state_init(&a->t[a->n_t].st);
    a->n_t++;
  }
  qsort(a->t, a->n_t, sizeof(touched), touched_cmp);
  size_t k = 0;
  for (size_t i = 0; i < a->n_t; i++) {
    if (k > 0 && strcmp(a->t[k - 1].id, a->t[i].id) == 0)
      continue;
    a->t[k++] = a->t[i];
  }
  a->n_t = k;
  a->n_loaded = k;
  for (size_t i = 0; i < k; i++)
    a->t[i].cached = state_cache_take(cache, a->t[i].id, &a->t[i].st);
  return SK_OK;
}

/* Step 1: lock and load the projections. */
static int load_state(touched *t, const char *json, sk_error *err) {
  saga_state_clear(&t->st);
  int rc = saga_state_from_json(json, &t->st);
  if (rc != SK_OK)
    return sk_error_set(err, rc, "could not read the projection of saga %s",
                        t->id);
  t->found = true;
  return SK_OK;
}

static int read_lock(const PGresult *r, void *ctx, sk_error *err) {
  attempt *a = ctx;
  for (int i = 0; i < PQntuples(r); i++) {
    touched *t = touched_find(a, PQgetvalue(r, i, 0));
    if (t == NULL)
      continue;
    if (t->cached) {
      t->found = atoll(PQgetvalue(r, i, 1)) == t->st.last_seq;
      t->stale = !t->found;
      continue;
    }
    int rc = load_state(t, PQgetvalue(r, i, 2), err);
    if (rc != SK_OK)
      return rc;
  }
  /* A cached state whose row is gone (or moved on) is of no use. */
  for (size_t i = 0; i < a->n_loaded; i++)
    if (a->t[i].cached && !a->t[i].found)
      saga_state_clear(&a->t[i].st);
  return SK_OK;
}

static void send_lock(db_pipe *p, attempt *a) {
  if (a->n_t == 0)
    return;
  pgarr ids, cached;
  pgarr_init(&ids);
  pgarr_init(&cached);
  for (size_t i = 0; i < a->n_t; i++) {
    pgarr_add_str(&ids, a->t[i].id);
    if (a->t[i].cached)
      pgarr_add_str(&cached, a->t[i].id);
  }
  const char *params[2] = {pgarr_get(&ids), pgarr_get(&cached)};
  if (params[0] == NULL || params[1] == NULL)
    p->rc = SK_ENOMEM;
  db_pipe_send_stmt(p, &sk_lock_sagas, params, "could not lock sagas",
                    read_lock, a);
  pgarr_free(&ids);
  pgarr_free(&cached);
}

static int read_stale_rows(const PGresult *r, void *ctx, sk_error *err) {
  attempt *a = ctx;
  for (int i = 0; i < PQntuples(r); i++) {
    touched *t = touched_find(a, PQgetvalue(r, i, 0));
    if (t == NULL || !t->stale)
      continue;
    int rc = load_state(t, PQgetvalue(r, i, 1), err);
    if (rc != SK_OK)
      return rc;
    t->stale = false;
  }
  return SK_OK;
}

/* The sagas whose cached state was stale (rows locked already). Rare: only
 * when another node or an operator moved them on. */
static int read_stale(PGconn *c, attempt *a, sk_error *err) {
  pgarr ids;
  pgarr_init(&ids);
  for (size_t i = 0; i < a->n_loaded; i++)
    if (a->t[i].stale)
      pgarr_add_str(&ids, a->t[i].id);
  if (ids.n == 0) {
    pgarr_free(&ids);
    return SK_OK;
  }
  const char *params[1] = {pgarr_get(&ids)};
  int rc = SK_OK;
  db_pipe p;
  if (params[0] == NULL)
    rc = SK_ENOMEM;
  if (rc == SK_OK)
    rc = db_pipe_open(&p, c, err);
  if (rc == SK_OK) {
    db_pipe_send_stmt(&p, &sk_read_sagas, params, "could not read sagas",
                      read_stale_rows, a);
    rc = db_pipe_run(&p);
  }
  pgarr_free(&ids);
  return rc;
}

/* Step 2: fence results. An op whose task row is not deleted is stale.
 * Lease tokens are unique (one sequence), so the rows the DELETE returns
 * are matched to ops by token (then checked field by field). */
typedef struct token_ref {
  long long token;
  size_t op;
} token_ref;

typedef struct fence_ctx {
  store_batch *b;
  token_ref *by_token; /* the result ops, sorted by token */
  size_t n;
} fence_ctx;

static int by_token_cmp(const void *x, const void *y) {
  long long a = ((const token_ref *)x)->token;
  long long b = ((const token_ref *)y)->token;
  return (a > b) - (a < b);
}

static int read_fence(const PGresult *r, void *ctx, sk_error *err) {
  (void)err;
  fence_ctx *f = ctx;
  for (int i = 0; i < PQntuples(r); i++) {
    const char *sid = PQgetvalue(r, i, 0);
    int step = atoi(PQgetvalue(r, i, 1));
    int kind = atoi(PQgetvalue(r, i, 2));
    long long token = atoll(PQgetvalue(r, i, 3));
    size_t lo = 0, hi = f->n;
    while (lo < hi) { /* first op with this token */
      size_t mid = lo + (hi - lo) / 2;
      if (f->by_token[mid].token < token)
        lo = mid + 1;
      else
        hi = mid;
    }
    for (; lo < f->n; lo++) {
      if (f->by_token[lo].token != token)
        break;
      store_op *op = &f->b->ops[f->by_token[lo].op];
      if (op->rc == SK_ELEASE && op->lease.step == step &&
          (int)op->lease.kind == kind && strcmp(op->lease.saga_id, sid) == 0) {
        op->rc = SK_OK;
        break;
      }
    }
  }
  return SK_OK;
}

/* by_token is filled here and must outlive the pipe. */
static void send_fence(db_pipe *p, store_batch *b, fence_ctx *f) {
  pgarr s, st, k, tok;
  pgarr_init(&s);
  pgarr_init(&st);
  pgarr_init(&k);
  pgarr_init(&tok);
  f->b = b;
  f->n = 0;
  for (size_t i = 0; i < b->n_ops; i++) {
    store_op *op = &b->ops[i];
    if (op->type != STORE_OP_RESULT)
      continue;
    op->rc = SK_ELEASE; /* until the DELETE says otherwise */
    pgarr_add_str(&s, op->lease.saga_id);
    pgarr_add_i64(&st, op->lease.step);
    pgarr_add_i64(&k, op->lease.kind);
    pgarr_add_i64(&tok, op->lease.token);
    f->by_token[f->n].token = op->lease.token;
    f->by_token[f->n++].op = i;
  }
  if (f->n > 0) {
    qsort(f->by_token, f->n, sizeof(token_ref), by_token_cmp);
    const char *params[4] = {pgarr_get(&s), pgarr_get(&st), pgarr_get(&k),
                             pgarr_get(&tok)};
    if (!params[0] || !params[1] || !params[2] || !params[3])
      p->rc = SK_ENOMEM;
    db_pipe_send_stmt(p, &sk_fence_results, params,
                      "could not fence task results", read_fence, f);
  }
  pgarr_free(&s);
  pgarr_free(&st);
  pgarr_free(&k);
  pgarr_free(&tok);
}

/* Step 3: idempotency keys of starts. A key seen before turns the start
 * into a lookup of the first saga.
 *
 * Two statements on purpose: when another transaction inserts the same key
 * concurrently, ON CONFLICT DO NOTHING waits for it to commit, but the rest
 * of that statement still reads with the old snapshot and cannot see its
 * row. The lookup of the keys we did not insert is a new statement, so (in
 * READ COMMITTED) it sees the committed winner. */
static int key_arrays(const store_batch *b, pgarr *wf, pgarr *key, pgarr *id,
                      bool only_existing) {
  size_t n = 0;
  for (size_t i = 0; i < b->n_ops; i++) {
    const store_op *op = &b->ops[i];
    if (op->type != STORE_OP_START || op->idempotency_key == NULL ||
        (only_existing && !op->existed))
      continue;
    pgarr_add_str(wf, op->wf->name);
    pgarr_add_str(key, op->idempotency_key);
    if (id != NULL)
      pgarr_add_str(id, op->saga_id);
    n++;
  }
  return (int)n;
}

/* The starts with a key, sorted by their new saga id, to match the rows
 * the INSERT returns. */
typedef struct keys_ctx {
  store_op **ops;
  size_t n;
} keys_ctx;

static int by_saga_id_cmp(const void *x, const void *y) {
  return strcmp((*(store_op *const *)x)->saga_id,
                (*(store_op *const *)y)->saga_id);
}

static int read_keys(const PGresult *r, void *ctx, sk_error *err) {
  (void)err;
  keys_ctx *k = ctx;
  /* Ours are the rows returned with our own new id; a duplicate within the
   * batch is not returned and so looks like an earlier start. */
  for (size_t i = 0; i < k->n; i++)
    k->ops[i]->existed = true;
  for (int row = 0; row < PQntuples(r); row++) {
    store_op key, *kp = &key;
    snprintf(key.saga_id, sizeof(key.saga_id), "%s", PQgetvalue(r, row, 0));
    store_op **hit =
        bsearch(&kp, k->ops, k->n, sizeof(*k->ops), by_saga_id_cmp);
    if (hit != NULL)
      (*hit)->existed = false;
  }
  return SK_OK;
}

/* k->ops is allocated here (room for every op) and freed by the caller. */
static void send_keys(db_pipe *p, store_batch *b, keys_ctx *k) {
  pgarr wf, key, id;
  pgarr_init(&wf);
  pgarr_init(&key);
  pgarr_init(&id);
  k->n = 0;
  if (key_arrays(b, &wf, &key, &id, false) > 0) {
    k->ops = calloc(b->n_ops, sizeof(*k->ops));
    if (k->ops == NULL) {
      p->rc = SK_ENOMEM;
    } else {
      for (size_t i = 0; i < b->n_ops; i++)
        if (b->ops[i].type == STORE_OP_START &&
            b->ops[i].idempotency_key != NULL)
          k->ops[k->n++] = &b->ops[i];
      qsort(k->ops, k->n, sizeof(*k->ops), by_saga_id_cmp);
    }
    const char *params[3] = {pgarr_get(&wf), pgarr_get(&key), pgarr_get(&id)};
    if (!params[0] || !params[1] || !params[2])
      p->rc = SK_ENOMEM;
    db_pipe_send_stmt(p, &sk_insert_keys, params,
                      "could not record idempotency keys", read_keys, k);
  }
  pgarr_free(&wf);
  pgarr_free(&key);
  pgarr_free(&id);
}

static int lookup_keys(PGconn *c, store_batch *b, sk_error *err) {
  pgarr wf, key;
  pgarr_init(&wf);
  pgarr_init(&key);
  int rc = SK_OK;
  if (key_arrays(b, &wf, &key, NULL, true) == 0)
    goto done;
  const char *params[2] = {pgarr_get(&wf), pgarr_get(&key)};
  if (!params[0] || !params[1]) {
    rc = SK_ENOMEM;
    goto done;
  }
  PGresult *r = PQexecParams(
      c,
      "SELECT i.workflow, i.key, i.saga_id::text, s.status "
      "FROM unnest($1::text[], $2::text[]) AS u(w, k) "
      "JOIN saga_idempotency i ON i.workflow = u.w AND i.key = u.k "
      "LEFT JOIN sagas s ON s.id = i.saga_id",
      2, NULL, params, NULL, NULL, 0);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    rc = db_fail(c, r, "could not look up idempotency keys", err);
    PQclear(r);
    goto done;
  }
  for (size_t i = 0; i < b->n_ops && rc == SK_OK; i++) {
    store_op *op = &b->ops[i];
    if (op->type != STORE_OP_START || !op->existed)
      continue;
    int row = 0;
    for (; row < PQntuples(r); row++)
      if (strcmp(PQgetvalue(r, row, 0), op->wf->name) == 0 &&
          strcmp(PQgetvalue(r, row, 1), op->idempotency_key) == 0)
        break;
    if (row == PQntuples(r)) {
      rc = sk_error_set(err, SK_EINTERNAL,
                        "idempotency key vanished during a start");
      break;
    }
    snprintf(op->saga_id, sizeof(op->saga_id), "%s", PQgetvalue(r, row, 2));
    op->status = SAGA_STATUS_RUNNING; /* started earlier in this batch */
    if (!PQgetisnull(r, row, 3))
      saga_status_parse(PQgetvalue(r, row, 3), &op->status);
  }
  PQclear(r);
done:
  pgarr_free(&wf);
  pgarr_free(&key);
  return rc;
}

/* ---- step 4: decisions -----------------------------------------------------
 */

static void add_event(writes *w, const char *saga_id, const saga_event *ev) {
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

static void add_task(writes *w, const store_env *env, const saga_state *st,
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

/* Records a decision's writes and evolves the touched state through it. */
static int take_decision(attempt *a, touched *t, const store_env *env,
                         const saga_decision *d) {
  for (size_t i = 0; i < d->n_events; i++)
    add_event(&a->w, t->id, &d->events[i]);
  int rc = saga_apply(&t->st, d);
  if (rc != SK_OK)
    return rc;
  for (size_t i = 0; i < d->n_tasks; i++)
    add_task(&a->w, env, &t->st, &d->tasks[i]);
  for (size_t i = 0; i < d->n_cancel_steps; i++) {
    pgarr_add_str(&a->w.cx_saga, t->id);
    pgarr_add_i64(&a->w.cx_step, d->cancel_steps[i]);
    a->w.n_cancels++;
  }
  t->dirty = true;
  return SK_OK;
}

static int decide_start(attempt *a, store_op *op, const store_env *env) {
  saga_decision d;
  saga_decision_init(&d);
  int rc =
      saga_decide_start(op->wf, op->saga_id, op->input, op->idempotency_key,
                        op->replay_of, env->now_ms, env->rng, &d);
  if (rc != SK_OK) {
    saga_decision_clear(&d);
    return rc;
  }
  /* The batch's touched array is sized for every op, so there is room. */
  touched *t = &a->t[a->n_t];
  memset(t, 0, sizeof(*t));
  snprintf(t->id, sizeof(t->id), "%s", op->saga_id);
  saga_state_init(&t->st);
  t->is_new = true;
  rc = take_decision(a, t, env, &d);
  saga_decision_clear(&d);
  if (rc == SK_OK) {
    a->n_t++;
    op->status = t->st.status;
  } else {
    saga_state_clear(&t->st);
  }
  return rc;
}

static touched *find_any(attempt *a, const char *id) {
  touched *t = touched_find(a, id);
  if (t != NULL)
    return t;
  /* Sagas started in this batch sit unsorted after the loaded ones. */
  for (size_t i = a->n_loaded; i < a->n_t; i++)
    if (strcmp(a->t[i].id, id) == 0)
      return &a->t[i];
  return NULL;
}

/* Replays a compensated or cancelled saga as a new run of the same version
 * with the same (or the given) input, and links the two. */
static int replay_new_run(attempt *a, touched *old, store_op *op,
                          const def_workflow *wf, const store_env *env) {
  if (op->from_step != NULL || op->step_input != NULL)
    return SK_EINVAL; /* those resume a paused saga in place */
  if (old->st.replayed_by != NULL)
    return SK_ESTATE; /* replayed already: replay its new run instead */
  store_op start;
  memset(&start, 0, sizeof(start));
  start.type = STORE_OP_START;
  start.wf = wf;
  memcpy(start.saga_id, op->new_saga_id, sizeof(start.saga_id));
  start.input = op->input != NULL ? op->input : old->st.input;
  start.replay_of = old->id;
  int rc = decide_start(a, &start, env);
  if (rc != SK_OK)
    return rc;
  saga_decision d;
  saga_decision_init(&d);
  rc = saga_decide_link(&old->st, op->new_saga_id, env->node, env->now_ms, &d);
  if (rc == SK_OK)
    rc = take_decision(a, old, env, &d);
  saga_decision_clear(&d);
  op->replayed_new = rc == SK_OK;
  return rc;
}

static int decide_existing(attempt *a, store_op *op, const store_env *env,
                           PGconn *c) {
  const char *id =
      op->type == STORE_OP_RESULT ? op->lease.saga_id : op->saga_id;
  touched *t = find_any(a, id);
  if (t == NULL || (!t->found && !t->is_new))
    return SK_ENOENT;
  const def_workflow *wf =
      env->get_def(env->ud, c, t->st.workflow, t->st.version);
  if (wf == NULL) {
    log_write(LOG_ERROR, "workflow definition not found", "saga_id", id,
              "workflow", t->st.workflow, "#version", (int64_t)t->st.version,
              NULL);
    return SK_ENOENT;
  }
  saga_decision d;
  saga_decision_init(&d);
  int rc;
  switch (op->type) {
  case STORE_OP_RESULT: {
    saga_result r = {.step = op->lease.step,
                     .kind = op->lease.kind,
                     .attempt = op->lease.attempt,
                     .ok = op->ok,
                     .output = op->output,
                     .err_type = op->err_type,
                     .err_message = op->err_message,
                     .err_retryable = op->err_retryable,
                     .node = env->node};
    rc = saga_decide_result(wf, &t->st, &r, env->node, env->now_ms, env->rng,
                            &d);
    break;
  }
  case STORE_OP_CANCEL:
    rc = saga_decide_cancel(wf, &t->st, op->reason, env->node, env->now_ms,
                            env->rng, &d);
    break;
  case STORE_OP_BREAKER_OPEN:
    rc = saga_decide_breaker_open(wf, &t->st, op->lease.step, env->node,
                                  env->now_ms, env->rng, &d);
    if (rc == SK_OK) {
      pgarr_add_str(&a->w.dl_saga, t->id);
      pgarr_add_i64(&a->w.dl_step, op->lease.step);
      a->w.n_drops++;
    }
    break;
  case STORE_OP_REPLAY: {
    if (t->st.status == SAGA_STATUS_COMPENSATED ||
        t->st.status == SAGA_STATUS_CANCELLED) {
      rc = replay_new_run(a, t, op, wf, env);
      break;
    }
    if (op->input != NULL) {
      rc = SK_EINVAL; /* a new input belongs to a new run */
      break;
    }
    saga_replay req = {.from_step = op->from_step,
                       .step_input = op->step_input};
    rc = saga_decide_replay(wf, &t->st, &req, env->node, env->now_ms, env->rng,
                            &d);
    break;
  }
  default:
    rc = SK_EINTERNAL;
  }
  if (rc == SK_OK)
    rc = take_decision(a, t, env, &d);
  saga_decision_clear(&d);
  op->status = t->st.status;
  return rc;
}

static int decide_all(PGconn *c, store_batch *b, attempt *a,
                      const store_env *env) {
  for (size_t i = 0; i < b->n_ops; i++) {
    store_op *op = &b->ops[i];
    switch (op->type) {
    case STORE_OP_START:
      op->rc = op->existed ? SK_OK : decide_start(a, op, env);
      break;
    case STORE_OP_RESULT:
      if (op->rc == SK_OK)
        op->rc = decide_existing(a, op, env, c);
      break;
    case STORE_OP_CANCEL:
    case STORE_OP_REPLAY:
    case STORE_OP_BREAKER_OPEN:
      op->rc = decide_existing(a, op, env, c);
      break;
    }
    if (op->rc == SK_ENOMEM)
      return SK_ENOMEM;
  }
  return writes_ok(&a->w) ? SK_OK : SK_ENOMEM;
}

/* ---- step 5: writes ---------------------------------------------------------
 */

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

typedef struct claims_ctx {
  store_batch *b;
  writes *w;
} claims_ctx;

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
static void send_writes(db_pipe *pp, attempt *a, claims_ctx *cc,
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

/* ---- the transaction -------------------------------------------------------
 */

static void reset_outputs(store_batch *b) {
  store_batch_clear_out(b);
  b->next_due_ms = 0;
  b->n_unclaimed_due = 0;
  b->n_events = 0;
  b->n_fenced = 0;
  for (size_t i = 0; i < b->n_ops; i++) {
    b->ops[i].rc = SK_OK;
    b->ops[i].existed = false;
    b->ops[i].replayed_new = false;
  }
}

/* The one-round-trip commit (every saga it touches is in the state
 * cache): decide on the cached states assuming every lease still holds and
 * every idempotency key is new, then send the checks of those assumptions
 * and every write in one pipeline. A check that fails (SK001) stops the
 * transaction before any write and *stale is set: the caller redoes the
 * commit the careful way. */
static void send_expect_sagas(db_pipe *p, const attempt *a) {
  if (a->n_loaded == 0)
    return;
  pgarr ids, seqs;
  pgarr_init(&ids);
  pgarr_init(&seqs);
  for (size_t i = 0; i < a->n_loaded; i++) {
    pgarr_add_str(&ids, a->t[i].id);
    pgarr_add_i64(&seqs, a->t[i].st.last_seq);
  }
  const char *params[2] = {pgarr_get(&ids), pgarr_get(&seqs)};
  if (params[0] == NULL || params[1] == NULL)
    p->rc = SK_ENOMEM;
  db_pipe_send_stmt(p, &sk_expect_sagas, params, "could not lock sagas", NULL,
                    NULL);
  pgarr_free(&ids);
  pgarr_free(&seqs);
}

static void send_expect_leases(db_pipe *p, store_batch *b) {
  pgarr s, st, k, tok;
  pgarr_init(&s);
  pgarr_init(&st);
  pgarr_init(&k);
  pgarr_init(&tok);
  size_t n = 0;
  for (size_t i = 0; i < b->n_ops; i++) {
    store_op *op = &b->ops[i];
    if (op->type != STORE_OP_RESULT)
      continue;
    pgarr_add_str(&s, op->lease.saga_id);
    pgarr_add_i64(&st, op->lease.step);
    pgarr_add_i64(&k, op->lease.kind);
    pgarr_add_i64(&tok, op->lease.token);
    n++;
  }
  if (n > 0) {
    const char *params[4] = {pgarr_get(&s), pgarr_get(&st), pgarr_get(&k),
                             pgarr_get(&tok)};
    if (!params[0] || !params[1] || !params[2] || !params[3])
      p->rc = SK_ENOMEM;
    db_pipe_send_stmt(p, &sk_expect_leases, params,
                      "could not fence task results", NULL, NULL);
  }
  pgarr_free(&s);
  pgarr_free(&st);
  pgarr_free(&k);
  pgarr_free(&tok);
}

static void send_expect_keys(db_pipe *p, const store_batch *b) {
  pgarr wf, key, id;
  pgarr_init(&wf);
  pgarr_init(&key);
  pgarr_init(&id);
  if (key_arrays(b, &wf, &key, &id, false) > 0) {
    const char *params[3] = {pgarr_get(&wf), pgarr_get(&key), pgarr_get(&id)};
    if (!params[0] || !params[1] || !params[2])
      p->rc = SK_ENOMEM;
    db_pipe_send_stmt(p, &sk_expect_keys, params,
                      "could not record idempotency keys", NULL, NULL);
  }
  pgarr_free(&wf);
  pgarr_free(&key);
  pgarr_free(&id);
}

static bool all_cached(const attempt *a) {
  for (size_t i = 0; i < a->n_loaded; i++)
    if (!a->t[i].cached)
      return false;
  return true;
}

static int commit_fast(PGconn *c, store_batch *b, attempt *a,
                       const store_env *env, bool *began, bool *stale,
                       sk_error *err) {
  db_pipe pp;
  int rc = db_pipe_open(&pp, c, err);
  if (rc != SK_OK)
    return rc;
  *began = true;
  db_pipe_send(&pp, "BEGIN", 0, NULL, "could not begin", NULL, NULL);
  send_expect_sagas(&pp, a); /* before decide_all moves the seqs on */
  send_expect_leases(&pp, b);
  send_expect_keys(&pp, b);
  for (size_t i = 0; i < a->n_loaded; i++)
    a->t[i].found = true; /* as checked above */
  for (size_t i = 0; i < b->n_ops; i++)
    b->ops[i].rc = SK_OK; /* every lease holds, every key is new */
  rc = pp.rc == SK_OK ? decide_all(c, b, a, env) : pp.rc;
  claims_ctx claims = {.b = b, .w = &a->w};
  if (rc != SK_OK && pp.rc == SK_OK)
    pp.rc = rc; /* nothing more is sent; run reads what was */
  send_writes(&pp, a, &claims, env);
  rc = db_pipe_run(&pp);
  *stale = rc == SK_EDB && err != NULL && strcmp(err->sqlstate, "SK001") == 0;
  return rc;
}

/* The careful commit, two round trips: (BEGIN, lock and load, fence, claim
 * keys), then the decisions here, then (every write, NOTIFY, COMMIT). Only
 * a start whose key was used before costs a third (the lookup of the first
 * saga), and a cached state that moved on one more (its read). */
static int commit_careful(PGconn *c, store_batch *b, attempt *a,
                          const store_env *env, bool *began, sk_error *err) {
  fence_ctx fence = {.by_token =
                         calloc(b->n_ops ? b->n_ops : 1, sizeof(token_ref))};
  keys_ctx keys = {0};
  int rc = fence.by_token != NULL ? SK_OK : SK_ENOMEM;
  db_pipe pp;
  if (rc == SK_OK)
    rc = db_pipe_open(&pp, c, err);
  if (rc == SK_OK) {
    *began = true;
    db_pipe_send(&pp, "BEGIN", 0, NULL, "could not begin", NULL, NULL);
    send_lock(&pp, a);
    send_fence(&pp, b, &fence);
    send_keys(&pp, b, &keys);
    rc = db_pipe_run(&pp);
  }
  bool any_existed = false;
  for (size_t i = 0; i < keys.n; i++)
    any_existed = any_existed || keys.ops[i]->existed;
  if (rc == SK_OK && any_existed)
    rc = lookup_keys(c, b, err);
  if (rc == SK_OK)
    rc = read_stale(c, a, err);
  if (rc == SK_OK)
    rc = decide_all(c, b, a, env);
  claims_ctx claims = {.b = b, .w = &a->w};
  if (rc == SK_OK)
    rc = db_pipe_open(&pp, c, err);
  if (rc == SK_OK) {
    send_writes(&pp, a, &claims, env);
    rc = db_pipe_run(&pp);
  }
  free(fence.by_token);
  free(keys.ops);
  return rc;
}

/* One attempt of the transaction; with use_cache, the one-round-trip
 * commit when every saga's state is cached (*stale: redo without). */
static int commit_once(PGconn *c, store_batch *b, const store_env *env,
                       bool use_cache, bool *stale, sk_error *err) {
  attempt a;
  memset(&a, 0, sizeof(a));
  writes_init(&a.w);
  reset_outputs(b);
  *stale = false;
  if (env->claims_reset != NULL)
    env->claims_reset(env->ud);
  bool began = false;
  int rc = collect_touched(b, &a, use_cache ? env->cache : NULL);
  if (rc == SK_OK && use_cache && env->cache != NULL && all_cached(&a))
    rc = commit_fast(c, b, &a, env, &began, stale, err);
  else if (rc == SK_OK)
    rc = commit_careful(c, b, &a, env, &began, err);
  if (rc != SK_OK) {
    if (began && PQstatus(c) == CONNECTION_OK)
      db_exec(c, "ROLLBACK", NULL);
    store_batch_clear_out(b);
  } else {
    /* Committed: the states are current; keep them for the next step. */
    for (size_t i = 0; i < a.n_t; i++)
      if (a.t[i].found || a.t[i].is_new)
        state_cache_put(env->cache, &a.t[i].st);
    b->n_events = a.w.n_events;
    b->next_due_ms = a.w.next_due_ms;
    b->n_unclaimed_due = a.w.n_unclaimed_due + a.w.n_cancels;
    for (size_t i = 0; i < b->n_ops; i++)
      if (b->ops[i].rc == SK_ELEASE)
        b->n_fenced++;
  }
  if (rc == SK_ENOMEM)
    sk_error_set(err, rc, "out of memory in group commit");
  attempt_free(&a);
  return rc;
}

int sagastore_commit(PGconn *c, store_batch *b, const store_env *env,
                     sk_error *err) {
  int rc = SK_OK;
  bool use_cache = true;
  for (b->attempts = 1; b->attempts <= COMMIT_MAX_TRIES; b->attempts++) {
    sk_error e = {0};
    bool stale = false;
    rc = commit_once(c, b, env, use_cache, &stale, &e);
    if (rc == SK_OK)
      return SK_OK;
    if (stale) { /* not a failure: the careful way, at once */
      use_cache = false;
      b->attempts--;
      continue;
    }
    if (err != NULL)
      *err = e;
    /* Only transient SQL errors on a live connection are retried here;
     * a broken connection is the caller's to re-establish. */
    if (rc != SK_EDB || !db_sqlstate_transient(e.sqlstate) ||
        PQstatus(c) != CONNECTION_OK)
      break;
    log_write(LOG_WARNING, "group commit hit a transient error, retrying",
              "sqlstate", e.sqlstate, "#attempt", (int64_t)b->attempts, NULL);
  }
  return rc;
}
