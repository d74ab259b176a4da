/*
 * queries.c — reads and small writes outside the group commit (queries.h).
 *
 * Every statement is parameterised. Results are cleared in the function
 * that received them.
 *
 * Thread: the caller's; the connection belongs to the call.
 */
#include "store/queries.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "store/db.h"

/* Runs a parameterised query expecting rows; on failure fills err. */
static PGresult *query(PGconn *c, const char *sql, int n, const char **p,
                       const char *what, int *rc, sk_error *err) {
  PGresult *r = PQexecParams(c, sql, n, NULL, p, NULL, NULL, 0);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    *rc = db_fail(c, r, what, err);
    PQclear(r);
    return NULL;
  }
  *rc = SK_OK;
  return r;
}

int queries_register_def(PGconn *c, const char *name, int version,
                         const char *spec_json, bool *created, sk_error *err) {
  char ver[16];
  snprintf(ver, sizeof(ver), "%d", version);
  const char *p[3] = {name, ver, spec_json};
  int rc;
  PGresult *r =
      query(c,
            "INSERT INTO workflow_defs (name, version, spec, spec_sha256) "
            "VALUES ($1, $2::int, $3::jsonb, "
            "  encode(sha256(convert_to($3::jsonb::text, 'UTF8')), 'hex')) "
            "ON CONFLICT (name, version) DO NOTHING RETURNING 1",
            3, p, "could not register workflow", &rc, err);
  if (r == NULL)
    return rc;
  bool inserted = PQntuples(r) == 1;
  PQclear(r);
  if (created != NULL)
    *created = inserted;
  if (inserted)
    return SK_OK;
  /* A second statement on purpose: when another node registers the same
   * version at the same moment, the INSERT waits for it, but the rest of
   * that statement could not see its row; this one can. */
  r = query(c,
            "SELECT spec = $3::jsonb FROM workflow_defs "
            "WHERE name = $1 AND version = $2::int",
            3, p, "could not register workflow", &rc, err);
  if (r == NULL)
    return rc;
  bool same = PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
  PQclear(r);
  if (same)
    return SK_OK;
  return sk_error_set(err, SK_ECONFLICT,
                      "workflow %s version %d is already registered with a "
                      "different definition",
                      name, version);
}

int queries_load_def(PGconn *c, const char *name, int version, char **spec_json,
                     int *version_out, sk_error *err) {
  char ver[16];
  snprintf(ver, sizeof(ver), "%d", version);
  const char *p[2] = {name, ver};
  int rc;
  PGresult *r = query(c,
                      "SELECT spec::text, version FROM workflow_defs "
                      "WHERE name = $1 AND ($2::int = 0 OR version = $2::int) "
                      "ORDER BY version DESC LIMIT 1",
                      2, p, "could not load workflow", &rc, err);
  if (r == NULL)
    return rc;
  if (PQntuples(r) == 0) {
    PQclear(r);
    if (version == 0)
      return sk_error_set(err, SK_ENOENT, "workflow %s is not registered",
                          name);
    return sk_error_set(err, SK_ENOENT,
                        "workflow %s version %d is not registered", name,
                        version);
  }
  *spec_json = strdup(PQgetvalue(r, 0, 0));
  if (version_out != NULL)
    *version_out = atoi(PQgetvalue(r, 0, 1));
  PQclear(r);
  return *spec_json != NULL ? SK_OK : sk_error_set(err, SK_ENOMEM, NULL);
}

int queries_saga_state(PGconn *c, const char *id, char **state_json,
                       saga_status *status, sk_error *err) {
  const char *p[1] = {id};
  int rc;
  /* A status check (sk_saga_wait polls it) must not ship the whole state. */
  PGresult *r = query(
      c,
      state_json != NULL ? "SELECT state::text, status FROM sagas WHERE id = $1"
                         : "SELECT NULL, status FROM sagas WHERE id = $1",
      1, p, "could not read saga", &rc, err);
  if (r == NULL)
    return rc;
  if (PQntuples(r) == 0) {
    PQclear(r);
    return sk_error_set(err, SK_ENOENT, "saga %s does not exist", id);
  }
  if (status != NULL &&
      saga_status_parse(PQgetvalue(r, 0, 1), status) != SK_OK) {
    PQclear(r);
    return sk_error_set(err, SK_EINTERNAL, "saga %s has an unknown status", id);
  }
  if (state_json != NULL) {
    *state_json = strdup(PQgetvalue(r, 0, 0));
    if (*state_json == NULL) {
      PQclear(r);
      return sk_error_set(err, SK_ENOMEM, NULL);
    }
  }
  PQclear(r);
  return SK_OK;
}

int queries_events_json(PGconn *c, const char *id, int64_t after_seq,
                        char **json, sk_error *err) {
  char after[32];
  snprintf(after, sizeof(after), "%lld", (long long)after_seq);
  const char *p[2] = {id, after};
  int rc;
  PGresult *r = query(
      c,
      "SELECT EXISTS (SELECT 1 FROM sagas WHERE id = $1), "
      "  coalesce((SELECT json_agg(json_build_object('seq', seq, 'type', "
      "  type, 'step', step, 'attempt', attempt, 'node', node, 'payload', "
      "  payload, 'created_at', created_at) ORDER BY seq)::text "
      "  FROM saga_events WHERE saga_id = $1 AND seq > $2::bigint), '[]')",
      2, p, "could not read saga events", &rc, err);
  if (r == NULL)
    return rc;
  if (PQgetvalue(r, 0, 0)[0] != 't') {
    PQclear(r);
    return sk_error_set(err, SK_ENOENT, "saga %s does not exist", id);
  }
  *json = strdup(PQgetvalue(r, 0, 1));
  PQclear(r);
  return *json != NULL ? SK_OK : sk_error_set(err, SK_ENOMEM, NULL);
}

static int read_event(PGresult *r, int i, saga_event *ev) {
  memset(ev, 0, sizeof(*ev));
  ev->seq = atoll(PQgetvalue(r, i, 0));
  if (saga_event_parse(PQgetvalue(r, i, 1), &ev->type) != SK_OK)
    return SK_EINVAL;
  ev->step = PQgetisnull(r, i, 2) ? -1 : atoi(PQgetvalue(r, i, 2));
  ev->attempt = PQgetisnull(r, i, 3) ? 0 : atoi(PQgetvalue(r, i, 3));
  ev->node = PQgetisnull(r, i, 4) ? NULL : strdup(PQgetvalue(r, i, 4));
  ev->payload = strdup(PQgetvalue(r, i, 5));
  ev->ts_ms = atoll(PQgetvalue(r, i, 6));
  if (ev->payload == NULL || (!PQgetisnull(r, i, 4) && ev->node == NULL))
    return SK_ENOMEM;
  return SK_OK;
}

int queries_load_events(PGconn *c, const char *id, saga_event **events,
                        size_t *n, sk_error *err) {
  *events = NULL;
  *n = 0;
  const char *p[1] = {id};
  int rc;
  PGresult *r = query(c,
                      "SELECT seq, type, step, attempt, node, payload::text, "
                      "  (extract(epoch FROM created_at) * 1000)::bigint "
                      "FROM saga_events WHERE saga_id = $1 ORDER BY seq",
                      1, p, "could not read saga events", &rc, err);
  if (r == NULL)
    return rc;
  int rows = PQntuples(r);
  if (rows > 0) {
    *events = calloc((size_t)rows, sizeof(saga_event));
    if (*events == NULL) {
      PQclear(r);
      return sk_error_set(err, SK_ENOMEM, NULL);
    }
  }
  for (int i = 0; i < rows && rc == SK_OK; i++) {
    rc = read_event(r, i, &(*events)[i]);
    *n = (size_t)i + 1;
  }
  PQclear(r);
  if (rc != SK_OK)
    return sk_error_set(err, rc, "could not decode event of saga %s", id);
  return SK_OK;
}

/* Folds one saga's events and asks the database whether the result equals
 * the stored projection. */
static int verify_one(PGconn *c, const char *id, bool *equal, sk_error *err) {
  saga_event *evs = NULL;
  size_t n = 0;
  int rc = queries_load_events(c, id, &evs, &n, err);
  saga_state st;
  saga_state_init(&st);
  char *json = NULL;
  if (rc == SK_OK) {
    rc = saga_fold(evs, n, &st);
    if (rc != SK_OK)
      sk_error_set(err, rc, "events of saga %s do not fold", id);
  }
  if (rc == SK_OK)
    rc = saga_state_to_json_full(&st, &json);
  if (rc == SK_OK) {
    /* Both sides in the full form, compared as JSON values: a row written
     * by an older version (every key present) or in the stored form, and
     * the fold, whose embedded outputs come back from jsonb payloads with
     * their keys in jsonb's order, must mean the same state. */
    const char *p[1] = {id};
    PGresult *r = query(c, "SELECT state FROM sagas WHERE id = $1", 1, p,
                        "could not read the projection", &rc, err);
    char *stored_json = NULL;
    if (r != NULL) {
      saga_state stored;
      saga_state_init(&stored);
      *equal = false;
      if (PQntuples(r) == 1 &&
          saga_state_from_json(PQgetvalue(r, 0, 0), &stored) == SK_OK)
        rc = saga_state_to_json_full(&stored, &stored_json);
      saga_state_clear(&stored);
      PQclear(r);
    }
    if (rc == SK_OK && stored_json != NULL) {
      const char *q[2] = {stored_json, json};
      r = query(c, "SELECT $1::jsonb = $2::jsonb", 2, q,
                "could not compare projection", &rc, err);
      if (r != NULL) {
        *equal = PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
      }
    }
    free(stored_json);
  }
  if (rc == SK_EINVAL || rc == SK_ESTATE || rc == SK_ECONFLICT ||
      rc == SK_EJSON) {
    *equal = false; /* an unfoldable log is a mismatch, not a crash */
    rc = SK_OK;
  }
  free(json);
  saga_state_clear(&st);
  for (size_t i = 0; i < n; i++)
    saga_event_clear(&evs[i]);
  free(evs);
  return rc;
}

int queries_verify(PGconn *c, const char *id, verify_report *rep,
                   sk_error *err) {
  memset(rep, 0, sizeof(*rep));
  const char *p[1] = {id};
  int rc;
  PGresult *r = query(c,
                      "SELECT id::text FROM sagas WHERE $1::uuid IS NULL OR "
                      "id = $1::uuid ORDER BY sagas.id",
                      1, p, "could not list sagas", &rc, err);
  if (r == NULL)
    return rc;
  for (int i = 0; i < PQntuples(r) && rc == SK_OK; i++) {
    bool equal = false;
    rc = verify_one(c, PQgetvalue(r, i, 0), &equal, err);
    if (rc != SK_OK)
      break;
    rep->checked++;
    if (!equal) {
      if (rep->mismatched == 0)
        snprintf(rep->first_mismatch, sizeof(rep->first_mismatch), "%s",
                 PQgetvalue(r, i, 0));
      rep->mismatched++;
      log_write(LOG_WARNING, "projection differs from the fold of its events",
                "saga_id", PQgetvalue(r, i, 0), NULL);
    }
  }
  PQclear(r);
  return rc;
}

int queries_node_heartbeat(PGconn *c, const char *node,
                           const char *capacity_json, sk_error *err) {
  const char *p[2] = {node, capacity_json != NULL ? capacity_json : "{}"};
  PGresult *r =
      PQexecParams(c,
                   "INSERT INTO nodes (name, capacity) VALUES ($1, $2::jsonb) "
                   "ON CONFLICT (name) DO UPDATE SET heartbeat_at = now(), "
                   "capacity = excluded.capacity",
                   2, NULL, p, NULL, NULL, 0);
  int rc = SK_OK;
  if (PQresultStatus(r) != PGRES_COMMAND_OK)
    rc = db_fail(c, r, "could not record node heartbeat", err);
  PQclear(r);
  return rc;
}

/* Runs a query returning one text value (JSON) into *json. */
static int query_json(PGconn *c, const char *sql, int n, const char **p,
                      const char *what, char **json, sk_error *err) {
  int rc;
  PGresult *r = query(c, sql, n, p, what, &rc, err);
  if (r == NULL)
    return rc;
  if (PQntuples(r) == 0 || PQgetisnull(r, 0, 0)) {
    PQclear(r);
    return SK_ENOENT;
  }
  *json = strdup(PQgetvalue(r, 0, 0));
  PQclear(r);
  return *json != NULL ? SK_OK : sk_error_set(err, SK_ENOMEM, NULL);
}

int queries_list_workflows(PGconn *c, char **json, sk_error *err) {
  return query_json(
      c,
      "SELECT coalesce(json_agg(json_build_object('name', name, 'versions', "
      "  versions) ORDER BY name), '[]')::text FROM ("
      "  SELECT name, array_agg(version ORDER BY version) AS versions "
      "  FROM workflow_defs GROUP BY name) w",
      0, NULL, "could not list workflows", json, err);
}

int queries_saga_view(PGconn *c, const char *id, char **json, sk_error *err) {
  const char *p[1] = {id};
  /* The stored state is the compact form; the view shows every key, so
   * the state is rebuilt here and the row's other fields appended. */
  int rc;
  PGresult *r = query(
      c,
      "SELECT s.state, jsonb_build_object('created_at', "
      "s.created_at, "
      "  'updated_at', s.updated_at, 'tasks', coalesce((SELECT jsonb_agg("
      "  jsonb_build_object('step', t.step, 'step_name', t.step_name, "
      "  'kind', CASE t.kind WHEN 0 THEN 'fwd' WHEN 1 THEN 'comp' "
      "  ELSE 'fallback' END, 'attempt', t.attempt, "
      "  'available_at', t.available_at, 'lease_owner', t.lease_owner, "
      "  'leased', t.lease_owner IS NOT NULL AND t.available_at > now(), "
      "  'deliveries', t.deliveries, 'cancel_requested', t.cancel_requested, "
      "  'gpus', t.gpus, 'gpu_memory_mb', t.gpu_memory_mb, "
      /* A due GPU task that no live, non-draining node's healthy GPUs fit
       * waits; the view says why instead of leaving the user to guess. */
      "  'waiting_for', CASE WHEN t.gpus > 0 AND t.available_at <= now() "
      "    AND NOT EXISTS (SELECT 1 FROM nodes n "
      "      WHERE n.heartbeat_at > now() - interval '60 seconds' "
      "      AND NOT coalesce((n.capacity->>'draining')::bool, false) "
      "      AND (SELECT count(*) FROM jsonb_array_elements("
      "             coalesce(n.capacity->'gpus', '[]'::jsonb)) g "
      "           WHERE g->>'state' = 'healthy' AND (t.gpu_memory_mb = 0 "
      "             OR coalesce((g->>'free_mb')::bigint, 0) >= "
      "                t.gpu_memory_mb)) >= t.gpus) "
      "    THEN format('gpus: no live node has %s healthy GPU(s) with %s MB "
      "      free each', t.gpus, t.gpu_memory_mb) END) "
      "  ORDER BY t.step, t.kind) FROM tasks t WHERE t.saga_id = s.id), "
      "  '[]'::jsonb))::text FROM sagas s WHERE s.id = $1",
      1, p, "could not read saga", &rc, err);
  if (r == NULL)
    return rc;
  if (PQntuples(r) == 0) {
    PQclear(r);
    return sk_error_set(err, SK_ENOENT, "saga %s does not exist", id);
  }
  saga_state st;
  saga_state_init(&st);
  char *full = NULL;
  rc = saga_state_from_json(PQgetvalue(r, 0, 0), &st);
  if (rc == SK_OK)
    rc = saga_state_to_json_full(&st, &full);
  saga_state_clear(&st);
  const char *extra = PQgetvalue(r, 0, 1); /* {"created_at":…} */
  size_t nf = full != NULL ? strlen(full) : 0, ne = strlen(extra);
  if (rc == SK_OK && nf >= 2 && ne > 2 && extra[0] == '{') {
    /* {state…} + {extra…} -> {state…,extra…} */
    *json = malloc(nf + ne + 1);
    if (*json == NULL) {
      rc = sk_error_set(err, SK_ENOMEM, NULL);
    } else {
      memcpy(*json, full, nf - 1);
      (*json)[nf - 1] = ',';
      memcpy(*json + nf, extra + 1, ne); /* with its NUL */
    }
  } else if (rc == SK_OK) {
    rc = sk_error_set(err, SK_EINTERNAL, "saga %s: malformed view", id);
  } else {
    sk_error_set(err, rc, "saga %s: unreadable projection", id);
  }
  free(full);
  PQclear(r);
  return rc;
}

int queries_list_sagas(PGconn *c, const char *status, const char *workflow,
                       int limit, const char *cursor, char **json,
                       sk_error *err) {
  char lim[16];
  snprintf(lim, sizeof(lim), "%d", limit);
  const char *p[4] = {status, workflow, lim, cursor};
  return query_json(
      c,
      "WITH page AS (SELECT id, workflow, version, status, created_at, "
      "  updated_at FROM sagas WHERE ($1::text IS NULL OR status = $1) "
      "  AND ($2::text IS NULL OR workflow = $2) "
      "  AND ($4::uuid IS NULL OR id < $4::uuid) "
      "  ORDER BY id DESC LIMIT $3::int + 1), "
      "numbered AS (SELECT *, row_number() OVER (ORDER BY id DESC) AS n "
      "  FROM page) "
      "SELECT json_build_object('sagas', coalesce((SELECT json_agg("
      "  json_build_object('id', id, 'workflow', workflow, 'version', version, "
      "  'status', status, 'created_at', created_at, 'updated_at', updated_at) "
      "  ORDER BY id DESC) FROM numbered WHERE n <= $3::int), '[]'), "
      "  'next_cursor', (SELECT id FROM numbered WHERE n = $3::int "
      "  AND EXISTS (SELECT 1 FROM numbered WHERE n > $3::int)))::text",
      4, p, "could not list sagas", json, err);
}

int queries_saga_ids(PGconn *c, const char *status, const char *workflow,
                     int limit, char (**ids)[37], size_t *n, sk_error *err) {
  *ids = NULL;
  *n = 0;
  char lim[16];
  snprintf(lim, sizeof(lim), "%d", limit);
  const char *p[3] = {status, workflow, lim};
  int rc;
  PGresult *r = query(c,
                      "SELECT id::text FROM sagas WHERE status = $1 "
                      "AND ($2::text IS NULL OR workflow = $2) "
                      "AND state::jsonb->>'replayed_by' IS NULL "
                      "ORDER BY sagas.id LIMIT $3::int",
                      3, p, "could not select sagas", &rc, err);
  if (r == NULL)
    return rc;
  int rows = PQntuples(r);
  if (rows > 0) {
    *ids = calloc((size_t)rows, 37);
    if (*ids == NULL) {
      PQclear(r);
      return sk_error_set(err, SK_ENOMEM, NULL);
    }
  }
  for (int i = 0; i < rows; i++)
    snprintf((*ids)[i], 37, "%s", PQgetvalue(r, i, 0));
  *n = (size_t)rows;
  PQclear(r);
  return SK_OK;
}

int queries_list_nodes(PGconn *c, int64_t stale_ms, char **json,
                       sk_error *err) {
  char stale[32];
  snprintf(stale, sizeof(stale), "%lld", (long long)stale_ms);
  const char *p[1] = {stale};
  return query_json(
      c,
      "SELECT coalesce(json_agg(json_build_object('name', name, "
      "  'alive', now() - heartbeat_at < make_interval(secs => "
      "    $1::bigint / 1000.0), "
      "  'started_at', started_at, 'heartbeat_at', heartbeat_at, "
      "  'heartbeat_age_ms', (extract(epoch FROM now() - heartbeat_at) "
      "  * 1000)::bigint, 'capacity', capacity, 'info', info) ORDER BY name), "
      "  '[]')::text FROM nodes",
      1, p, "could not list nodes", json, err);
}

int queries_singleton_duties(PGconn *c, int64_t reap_after_ms,
                             int retention_days, size_t *reaped, size_t *purged,
                             sk_error *err) {
  *reaped = *purged = 0;
  int rc;
  PGresult *r = query(c, "SELECT pg_try_advisory_lock(7346250916341112)", 0,
                      NULL, "could not take the singleton lock", &rc, err);
  if (r == NULL)
    return rc;
  bool mine = PQgetvalue(r, 0, 0)[0] == 't';
  PQclear(r);
  if (!mine)
    return SK_ESTATE; /* another node holds the duties */
  char reap[32], days[16];
  snprintf(reap, sizeof(reap), "%lld", (long long)reap_after_ms);
  snprintf(days, sizeof(days), "%d", retention_days);
  const char *p1[1] = {reap};
  r = query(c,
            "WITH d AS (DELETE FROM nodes WHERE heartbeat_at < now() - "
            "  make_interval(secs => $1::bigint / 1000.0) RETURNING 1) "
            "SELECT count(*) FROM d",
            1, p1, "could not reap dead nodes", &rc, err);
  if (r == NULL)
    return rc;
  *reaped = (size_t)atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  if (retention_days <= 0)
    return SK_OK;
  /* Finished sagas older than the retention, a bounded batch per run;
   * failed and paused ones wait for an operator and are kept. */
  const char *p2[1] = {days};
  r = query(c,
            /* A saga finished before the cutoff was created before it, and
             * ids are UUIDv7 (creation time first): the id bound keeps the
             * index scan (sagas_pkey) to the old ones, however big the
             * table. */
            "WITH cut AS (SELECT now() - make_interval(days => $1::int) AS t), "
            "old AS (SELECT id FROM sagas, cut WHERE status IN ('completed', "
            "  'compensated', 'cancelled') AND id < (lpad(to_hex(("
            "  extract(epoch FROM cut.t) * 1000)::bigint), 12, '0') || "
            "  repeat('0', 20))::uuid AND updated_at < cut.t LIMIT 1000), "
            "ev AS (DELETE FROM saga_events e USING old WHERE e.saga_id = "
            "  old.id), "
            "ik AS (DELETE FROM saga_idempotency i USING old WHERE "
            "  i.saga_id = old.id), "
            "s AS (DELETE FROM sagas x USING old WHERE x.id = old.id "
            "  RETURNING 1) SELECT count(*) FROM s",
            1, p2, "could not purge old sagas", &rc, err);
  if (r == NULL)
    return rc;
  *purged = (size_t)atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return SK_OK;
}
