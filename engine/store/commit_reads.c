/*
 * commit_reads.c — what a group commit locks, reads and checks before it
 * writes (see commit_int.h): the touched sagas' rows (and projections not
 * in the state cache), the fencing of results by lease token, the claim of
 * idempotency keys, and the one-round-trip commit's checks of the same.
 *
 * Every statement is prepared once per connection (pipe.h).
 *
 * Thread: the committing thread's.
 */
#include "store/commit_int.h"

#include <stdlib.h>

/* ---- the statements ------------------------------------------------------ */

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

void commit_send_lock(db_pipe *p, attempt *a) {
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
int commit_read_stale(PGconn *c, attempt *a, sk_error *err) {
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
/* Queues stmt over the leases of the batch's results (saga, step, kind,
 * token arrays); with f, also indexes the results by token and marks them
 * stale until the statement's rows say otherwise. */
static void send_leases(db_pipe *p, store_batch *b, const db_stmt *stmt,
                        fence_ctx *f) {
  pgarr a[4];
  for (int i = 0; i < 4; i++)
    pgarr_init(&a[i]);
  size_t n = 0;
  for (size_t i = 0; i < b->n_ops; i++) {
    store_op *op = &b->ops[i];
    if (op->type != STORE_OP_RESULT)
      continue;
    pgarr_add_str(&a[0], op->lease.saga_id);
    pgarr_add_i64(&a[1], op->lease.step);
    pgarr_add_i64(&a[2], op->lease.kind);
    pgarr_add_i64(&a[3], op->lease.token);
    if (f != NULL) {
      op->rc = SK_ELEASE; /* until the DELETE says otherwise */
      f->by_token[n].token = op->lease.token;
      f->by_token[n].op = i;
    }
    n++;
  }
  if (f != NULL) {
    f->b = b;
    f->n = n;
    qsort(f->by_token, n, sizeof(token_ref), by_token_cmp);
  }
  if (n > 0) {
    const char *params[4] = {pgarr_get(&a[0]), pgarr_get(&a[1]),
                             pgarr_get(&a[2]), pgarr_get(&a[3])};
    if (!params[0] || !params[1] || !params[2] || !params[3])
      p->rc = SK_ENOMEM;
    db_pipe_send_stmt(p, stmt, params, "could not fence task results",
                      f != NULL ? read_fence : NULL, f);
  }
  for (int i = 0; i < 4; i++)
    pgarr_free(&a[i]);
}

void commit_send_fence(db_pipe *p, store_batch *b, fence_ctx *f) {
  send_leases(p, b, &sk_fence_results, f);
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
/* Queues stmt over the starts' keys (workflow, key, new saga id arrays);
 * with k, also indexes those starts by saga id for read_keys (k->ops is
 * allocated here). */
static void send_key_claims(db_pipe *p, const store_batch *b,
                            const db_stmt *stmt, keys_ctx *k) {
  pgarr wf, key, id;
  pgarr_init(&wf);
  pgarr_init(&key);
  pgarr_init(&id);
  if (k != NULL)
    k->n = 0;
  if (key_arrays(b, &wf, &key, &id, false) > 0) {
    if (k != NULL) {
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
    }
    const char *params[3] = {pgarr_get(&wf), pgarr_get(&key), pgarr_get(&id)};
    if (!params[0] || !params[1] || !params[2])
      p->rc = SK_ENOMEM;
    db_pipe_send_stmt(p, stmt, params, "could not record idempotency keys",
                      k != NULL ? read_keys : NULL, k);
  }
  pgarr_free(&wf);
  pgarr_free(&key);
  pgarr_free(&id);
}

void commit_send_keys(db_pipe *p, store_batch *b, keys_ctx *k) {
  send_key_claims(p, b, &sk_insert_keys, k);
}

int commit_lookup_keys(PGconn *c, store_batch *b, sk_error *err) {
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

/* The one-round-trip commit (every saga it touches is in the state
 * cache): decide on the cached states assuming every lease still holds and
 * every idempotency key is new, then send the checks of those assumptions
 * and every write in one pipeline. A check that fails (SK001) stops the
 * transaction before any write and *stale is set: the caller redoes the
 * commit the careful way. */
void commit_send_expect_sagas(db_pipe *p, const attempt *a) {
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

void commit_send_expect_leases(db_pipe *p, store_batch *b) {
  send_leases(p, b, &sk_expect_leases, NULL);
}

void commit_send_expect_keys(db_pipe *p, const store_batch *b) {
  send_key_claims(p, b, &sk_expect_keys, NULL);
}
