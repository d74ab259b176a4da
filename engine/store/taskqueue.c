/*
 * taskqueue.c — dequeue, renew and release of task leases (taskqueue.h).
 *
 * All lanes of one dequeue run in one statement: each lane is a LATERAL
 * subquery with its own LIMIT and FOR UPDATE SKIP LOCKED over the index
 * tasks_ready (bulkhead, available_at), so the cost is proportional to what
 * is leased, not to the backlog, which stays durable in the table.
 *
 * Thread: the caller's; the connection belongs to the call.
 */
#include "store/taskqueue.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/db.h"

static int read_leased(PGconn *c, PGresult *r, leased_task **out,
                       task_needs **needs, size_t *n_out, sk_error *err);

/* Whether a task's GPU needs fit a lane (gm: its gpu_mode, idle, caps: its
 * envelope). A task without GPU needs fits every lane but a GPU-only one. */
#define GPU_FIT(gm, idle, caps)                                                \
  "(CASE WHEN gpus = 0 THEN " gm " <> 2 WHEN " gm " = 0 THEN false "           \
  "  WHEN gpu_memory_mb = 0 THEN gpus <= " idle " "                            \
  "  ELSE gpus <= cardinality(" caps ") "                                      \
  "  AND gpu_memory_mb <= (" caps ")[gpus] END)"

#define TASK_RETURNING                                                         \
  "RETURNING " SAGASTORE_TASK_COLUMNS ", t.gpus, t.gpu_memory_mb"

/* Lanes travel as parallel arrays; a lane's types (and GPU caps) are
 * array-literal strings so that one statement serves every lane. */
typedef struct lane_params {
  pgarr bulkhead, types, kinds, limits, gmode, gidle, gcaps;
} lane_params;

/* The lane's GPU envelope as an array literal ("{16000,9000}"). */
static int caps_literal(const dequeue_gpu_fit *f, pgarr *out) {
  pgarr c;
  pgarr_init(&c);
  for (unsigned k = 0; k < f->n_caps; k++)
    pgarr_add_i64(&c, f->caps[k]);
  const char *lit = f->n_caps > 0 ? pgarr_get(&c) : "{}";
  pgarr_add_str(out, lit != NULL ? lit : "{}");
  pgarr_free(&c);
  return lit != NULL ? SK_OK : SK_ENOMEM;
}

static int build_lanes(const dequeue_lane *lanes, size_t n, lane_params *p) {
  pgarr_init(&p->bulkhead);
  pgarr_init(&p->types);
  pgarr_init(&p->kinds);
  pgarr_init(&p->limits);
  pgarr_init(&p->gmode);
  pgarr_init(&p->gidle);
  pgarr_init(&p->gcaps);
  for (size_t i = 0; i < n; i++) {
    pgarr t;
    pgarr_init(&t);
    for (size_t j = 0; j < lanes[i].n_types; j++)
      pgarr_add_str(&t, lanes[i].types[j]);
    const char *lit = pgarr_get(&t);
    pgarr_add_str(&p->bulkhead, lanes[i].bulkhead);
    pgarr_add_str(&p->types, lit != NULL ? lit : "{}");
    pgarr_add_i64(&p->kinds, lanes[i].kind);
    pgarr_add_i64(&p->limits, lanes[i].limit);
    pgarr_add_i64(&p->gmode, lanes[i].gpu_mode);
    pgarr_add_i64(&p->gidle, lanes[i].gpu.idle);
    int rc = caps_literal(&lanes[i].gpu, &p->gcaps);
    pgarr_free(&t);
    if (lit == NULL || rc != SK_OK)
      return SK_ENOMEM;
  }
  if (!pgarr_get(&p->bulkhead) || !pgarr_get(&p->types) ||
      !pgarr_get(&p->kinds) || !pgarr_get(&p->limits) ||
      !pgarr_get(&p->gmode) || !pgarr_get(&p->gidle) || !pgarr_get(&p->gcaps))
    return SK_ENOMEM;
  return SK_OK;
}

static void free_lanes(lane_params *p) {
  pgarr_free(&p->bulkhead);
  pgarr_free(&p->types);
  pgarr_free(&p->kinds);
  pgarr_free(&p->limits);
  pgarr_free(&p->gmode);
  pgarr_free(&p->gidle);
  pgarr_free(&p->gcaps);
}

int taskqueue_dequeue(PGconn *c, const char *node, int lease_ttl_ms,
                      const dequeue_lane *lanes, size_t n_lanes,
                      leased_task **out, size_t *n_out, sk_error *err) {
  return taskqueue_dequeue_needs(c, node, lease_ttl_ms, lanes, n_lanes, out,
                                 NULL, n_out, err);
}

int taskqueue_dequeue_needs(PGconn *c, const char *node, int lease_ttl_ms,
                            const dequeue_lane *lanes, size_t n_lanes,
                            leased_task **out, task_needs **needs,
                            size_t *n_out, sk_error *err) {
  *out = NULL;
  *n_out = 0;
  if (needs != NULL)
    *needs = NULL;
  if (n_lanes == 0)
    return SK_OK;
  lane_params lp;
  int rc = build_lanes(lanes, n_lanes, &lp);
  if (rc != SK_OK) {
    free_lanes(&lp);
    return sk_error_set(err, rc, NULL);
  }
  char ttl[32];
  snprintf(ttl, sizeof(ttl), "%d", lease_ttl_ms);
  const char *params[9] = {pgarr_get(&lp.bulkhead),
                           pgarr_get(&lp.types),
                           pgarr_get(&lp.kinds),
                           pgarr_get(&lp.limits),
                           node,
                           ttl,
                           pgarr_get(&lp.gmode),
                           pgarr_get(&lp.gidle),
                           pgarr_get(&lp.gcaps)};
  PGresult
      *r = PQexecParams(c,
                        "WITH lanes AS (SELECT * FROM unnest($1::text[], "
                        "$2::text[], "
                        "  $3::int[], $4::int[], $7::int[], $8::int[], "
                        "$9::text[]) "
                        "  AS l(bh, types, kind, lim, gm, gidle, gcaps)), "
                        "picked AS (SELECT p.saga_id, p.step, p.kind FROM "
                        "lanes, LATERAL ("
                        "  SELECT saga_id, step, kind FROM tasks "
                        "  WHERE ((lanes.kind IN (0, 1) AND bulkhead = "
                        "lanes.bh "
                        "          AND action = 'task' AND task_type = "
                        "ANY(lanes.types::text[]) "
                        "          AND " GPU_FIT(
                            "lanes.gm", "lanes.gidle",
                            "lanes.gcaps::bigint[]") ") "
                                                     "      OR (lanes.kind = 1 "
                                                     "AND bulkhead = lanes.bh "
                                                     "AND action = 'http' "
                                                     "          AND " GPU_FIT(
                                                         "lanes.gm",
                                                         "lanes.gidle",
                                                         "lanes.gcaps::bigint["
                                                         "]") ") "
                                                              "      OR "
                                                              "(lanes.kind = 2 "
                                                              "AND action = "
                                                              "'sleep')) "
                                                              "    AND "
                                                              "available_at <= "
                                                              "now() "
                                                              "  ORDER BY "
                                                              "available_at "
                                                              "LIMIT lanes.lim "
                                                              "FOR UPDATE SKIP "
                                                              "LOCKED) p) "
                                                              "UPDATE tasks t "
                                                              "SET lease_owner "
                                                              "= $5, "
                                                              "  lease_token = "
                                                              "nextval('lease_"
                                                              "token_seq'), "
                                                              "leased_at = "
                                                              "now(), "
                                                              "  available_at "
                                                              "= now() + "
                                                              "make_interval("
                                                              "secs => $6::int "
                                                              "/ 1000.0), "
                                                              "  deliveries = "
                                                              "t.deliveries + "
                                                              "1 "
                                                              "FROM picked "
                                                              "WHERE t.saga_id "
                                                              "= "
                                                              "picked.saga_id "
                                                              "AND t.step = "
                                                              "picked.step "
                                                              "  AND t.kind = "
                                                              "picked."
                                                              "kind"
                                                              " " TASK_RETURNING,
                        9, NULL, params, NULL, NULL, 0);
  free_lanes(&lp);
  return read_leased(c, r, out, needs, n_out, err);
}

/* Reads the leased rows of r (clearing it) into a new array. */
static int read_leased(PGconn *c, PGresult *r, leased_task **out,
                       task_needs **needs, size_t *n_out, sk_error *err) {
  int rc = SK_OK;
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    rc = db_fail(c, r, "could not lease tasks", err);
    PQclear(r);
    return rc;
  }
  int n = PQntuples(r);
  if (n > 0) {
    *out = calloc((size_t)n, sizeof(leased_task));
    if (needs != NULL)
      *needs = calloc((size_t)n, sizeof(task_needs));
    if (*out == NULL || (needs != NULL && *needs == NULL)) {
      PQclear(r);
      return sk_error_set(err, SK_ENOMEM, NULL);
    }
  }
  int cols = PQnfields(r);
  for (int i = 0; i < n; i++) {
    rc = sagastore_read_task_row(r, i, &(*out)[*n_out]);
    if (rc != SK_OK)
      break;
    if (needs != NULL && cols >= 16) {
      (*needs)[*n_out].gpus = atoi(PQgetvalue(r, i, cols - 2));
      (*needs)[*n_out].gpu_memory_mb = atoll(PQgetvalue(r, i, cols - 1));
    }
    (*n_out)++;
  }
  PQclear(r);
  /* Rows leased but not read (OOM) expire like a crashed node's. */
  return rc == SK_OK ? SK_OK : sk_error_set(err, rc, NULL);
}

/* One lease statement for remote workers: tasks of the given types in any
 * bulkhead whose GPU needs match `mode` and `fit`. */
static int dequeue_any_mode(PGconn *c, const char *node, int lease_ttl_ms,
                            const char *const *types, size_t n_types, int limit,
                            dequeue_gpu_mode mode, const dequeue_gpu_fit *fit,
                            leased_task **out, task_needs **needs,
                            size_t *n_out, sk_error *err) {
  pgarr t, caps;
  pgarr_init(&t);
  pgarr_init(&caps);
  for (size_t i = 0; i < n_types; i++)
    pgarr_add_str(&t, types[i]);
  for (unsigned k = 0; fit != NULL && k < fit->n_caps; k++)
    pgarr_add_i64(&caps, fit->caps[k]);
  const char *caps_lit =
      fit != NULL && fit->n_caps > 0 ? pgarr_get(&caps) : "{}";
  char ttl[32], lim[16], gm[8], idle[16];
  snprintf(ttl, sizeof(ttl), "%d", lease_ttl_ms);
  snprintf(lim, sizeof(lim), "%d", limit);
  snprintf(gm, sizeof(gm), "%d", (int)mode);
  snprintf(idle, sizeof(idle), "%u", fit != NULL ? fit->idle : 0);
  const char *params[7] = {pgarr_get(&t), lim, node, ttl, gm, idle, caps_lit};
  if (params[0] == NULL || params[6] == NULL) {
    pgarr_free(&t);
    pgarr_free(&caps);
    return sk_error_set(err, SK_ENOMEM, NULL);
  }
  PGresult *r = PQexecParams(
      c,
      "WITH picked AS (SELECT saga_id, step, kind FROM tasks "
      "  WHERE action = 'task' AND task_type = ANY($1::text[]) "
      "  AND " GPU_FIT(
          "$5::int", "$6::int",
          "$7::bigint[]") " "
                          "  AND available_at <= now() ORDER BY available_at "
                          "LIMIT $2::int "
                          "  FOR UPDATE SKIP LOCKED) "
                          "UPDATE tasks t SET lease_owner = $3, "
                          "  lease_token = nextval('lease_token_seq'), "
                          "leased_at = now(), "
                          "  available_at = now() + make_interval(secs => "
                          "$4::int / 1000.0), "
                          "  deliveries = t.deliveries + 1 "
                          "FROM picked WHERE t.saga_id = picked.saga_id AND "
                          "t.step = picked.step "
                          "  AND t.kind = picked.kind " TASK_RETURNING,
      7, NULL, params, NULL, NULL, 0);
  pgarr_free(&t);
  pgarr_free(&caps);
  return read_leased(c, r, out, needs, n_out, err);
}

int taskqueue_dequeue_any(PGconn *c, const char *node, int lease_ttl_ms,
                          const char *const *types, size_t n_types, int limit,
                          leased_task **out, size_t *n_out, sk_error *err) {
  return taskqueue_dequeue_any_gpu(c, node, lease_ttl_ms, types, n_types, limit,
                                   NULL, out, NULL, n_out, err);
}

/* Appends b (nb entries) to a (na entries); frees b's arrays. */
static int append_leased(leased_task **a, task_needs **an, size_t *na,
                         leased_task *b, task_needs *bn, size_t nb) {
  if (nb == 0) {
    free(b);
    free(bn);
    return SK_OK;
  }
  leased_task *x = realloc(*a, (*na + nb) * sizeof(*x));
  task_needs *xn = an != NULL ? realloc(*an, (*na + nb) * sizeof(*xn)) : NULL;
  if (x != NULL)
    *a = x;
  if (xn != NULL)
    *an = xn;
  if (x == NULL || (an != NULL && xn == NULL)) {
    /* Unread leases expire like a crashed node's. */
    for (size_t i = 0; i < nb; i++)
      leased_task_clear(&b[i]);
    free(b);
    free(bn);
    return SK_ENOMEM;
  }
  memcpy(*a + *na, b, nb * sizeof(*b));
  if (an != NULL && bn != NULL)
    memcpy(*an + *na, bn, nb * sizeof(*bn));
  *na += nb;
  free(b);
  free(bn);
  return SK_OK;
}

int taskqueue_dequeue_any_gpu(PGconn *c, const char *node, int lease_ttl_ms,
                              const char *const *types, size_t n_types,
                              int limit, const dequeue_gpu_fit *fit,
                              leased_task **out, task_needs **needs,
                              size_t *n_out, sk_error *err) {
  *out = NULL;
  *n_out = 0;
  if (needs != NULL)
    *needs = NULL;
  if (n_types == 0 || limit <= 0)
    return SK_OK;
  if (fit != NULL && (fit->n_caps > 0 || fit->idle > 0)) {
    int rc = dequeue_any_mode(c, node, lease_ttl_ms, types, n_types, 1,
                              DEQUEUE_GPU_ONLY, fit, out, needs, n_out, err);
    if (rc != SK_OK || (size_t)limit <= *n_out)
      return rc;
  }
  leased_task *more = NULL;
  task_needs *more_n = NULL;
  size_t n_more = 0;
  int rc = dequeue_any_mode(c, node, lease_ttl_ms, types, n_types,
                            limit - (int)*n_out, DEQUEUE_GPU_NONE, NULL, &more,
                            needs != NULL ? &more_n : NULL, &n_more, err);
  if (rc != SK_OK) /* keep the GPU task already leased, if any */
    return *n_out > 0 ? SK_OK : rc;
  rc = append_leased(out, needs, n_out, more, more_n, n_more);
  return rc == SK_OK ? SK_OK : sk_error_set(err, rc, NULL);
}

static int lease_arrays(const store_lease *l, size_t n, pgarr a[4]) {
  for (int i = 0; i < 4; i++)
    pgarr_init(&a[i]);
  for (size_t i = 0; i < n; i++) {
    pgarr_add_str(&a[0], l[i].saga_id);
    pgarr_add_i64(&a[1], l[i].step);
    pgarr_add_i64(&a[2], l[i].kind);
    pgarr_add_i64(&a[3], l[i].token);
  }
  for (int i = 0; i < 4; i++)
    if (pgarr_get(&a[i]) == NULL)
      return SK_ENOMEM;
  return SK_OK;
}

static void lease_arrays_free(pgarr a[4]) {
  for (int i = 0; i < 4; i++)
    pgarr_free(&a[i]);
}

int taskqueue_renew(PGconn *c, const store_lease *leases, size_t n,
                    int lease_ttl_ms, bool *lost, bool *cancel, sk_error *err) {
  for (size_t i = 0; i < n; i++) {
    lost[i] = true;
    cancel[i] = false;
  }
  if (n == 0)
    return SK_OK;
  pgarr a[4];
  int rc = lease_arrays(leases, n, a);
  if (rc != SK_OK) {
    lease_arrays_free(a);
    return sk_error_set(err, rc, NULL);
  }
  char ttl[32];
  snprintf(ttl, sizeof(ttl), "%d", lease_ttl_ms);
  const char *params[5] = {pgarr_get(&a[0]), pgarr_get(&a[1]), pgarr_get(&a[2]),
                           pgarr_get(&a[3]), ttl};
  PGresult *r = PQexecParams(
      c,
      "WITH x AS (SELECT * FROM unnest($1::uuid[], $2::int[], $3::smallint[], "
      "  $4::bigint[]) WITH ORDINALITY AS x(s, st, k, tok, ord)), "
      "u AS (UPDATE tasks t SET available_at = now() + "
      "  make_interval(secs => $5::int / 1000.0) FROM x "
      "  WHERE t.saga_id = x.s AND t.step = x.st AND t.kind = x.k "
      "  AND t.lease_token = x.tok RETURNING x.ord, t.cancel_requested) "
      "SELECT ord, cancel_requested FROM u",
      5, NULL, params, NULL, NULL, 0);
  lease_arrays_free(a);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    rc = db_fail(c, r, "could not renew leases", err);
    PQclear(r);
    return rc;
  }
  for (int i = 0; i < PQntuples(r); i++) {
    long ord = atol(PQgetvalue(r, i, 0));
    if (ord < 1 || (size_t)ord > n)
      continue;
    lost[ord - 1] = false;
    cancel[ord - 1] = PQgetvalue(r, i, 1)[0] == 't';
  }
  PQclear(r);
  return SK_OK;
}

int taskqueue_release(PGconn *c, const store_lease *leases,
                      const int64_t *delays_ms, size_t n, sk_error *err) {
  if (n == 0)
    return SK_OK;
  pgarr a[4], delays;
  pgarr_init(&delays);
  for (size_t i = 0; i < n; i++)
    pgarr_add_i64(&delays, delays_ms != NULL ? delays_ms[i] : 0);
  int rc = lease_arrays(leases, n, a);
  if (rc != SK_OK || pgarr_get(&delays) == NULL) {
    lease_arrays_free(a);
    pgarr_free(&delays);
    return sk_error_set(err, SK_ENOMEM, NULL);
  }
  const char *params[5] = {pgarr_get(&a[0]), pgarr_get(&a[1]), pgarr_get(&a[2]),
                           pgarr_get(&a[3]), pgarr_get(&delays)};
  /* The token stays: a late result from this lease is still fenced once
   * another node leases the task with a new token; until then nobody holds
   * it, and it is due at once. */
  PGresult *r = PQexecParams(
      c,
      "UPDATE tasks t SET lease_owner = NULL, "
      "  available_at = now() + make_interval(secs => x.d / 1000.0) "
      "FROM unnest($1::uuid[], $2::int[], $3::smallint[], $4::bigint[], "
      "$5::bigint[]) AS x(s, st, k, tok, d) WHERE t.saga_id = x.s "
      "AND t.step = x.st AND t.kind = x.k AND t.lease_token = x.tok",
      5, NULL, params, NULL, NULL, 0);
  lease_arrays_free(a);
  pgarr_free(&delays);
  if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    rc = db_fail(c, r, "could not release leases", err);
    PQclear(r);
    return rc;
  }
  PQclear(r);
  return SK_OK;
}

int taskqueue_reclaim_own(PGconn *c, const char *node, bool *in_use, int *n,
                          sk_error *err) {
  *in_use = false;
  *n = 0;
  const char *params[1] = {node};
  PGresult *r = PQexecParams(
      c,
      "SELECT pg_try_advisory_lock(hashtextextended('skald node ' || $1, 0))",
      1, NULL, params, NULL, NULL, 0);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    int rc = db_fail(c, r, "could not take the node name", err);
    PQclear(r);
    return rc;
  }
  *in_use = PQgetvalue(r, 0, 0)[0] != 't';
  PQclear(r);
  if (*in_use)
    return SK_OK;
  r = PQexecParams(c,
                   /* due at once, in its old place in the queue */
                   "UPDATE tasks SET lease_owner = NULL, "
                   "available_at = least(coalesce(leased_at, now()), now()) "
                   "WHERE lease_owner = $1",
                   1, NULL, params, NULL, NULL, 0);
  if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    int rc =
        db_fail(c, r, "could not hand back the leases of a dead process", err);
    PQclear(r);
    return rc;
  }
  *n = atoi(PQcmdTuples(r));
  PQclear(r);
  return SK_OK;
}
