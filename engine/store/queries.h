/*
 * queries.h — the store's reads and small writes outside the group commit:
 * workflow definitions, saga views and event histories, the projection
 * check (verify), and node heartbeats.
 *
 * Thread: the caller's; the connection belongs to the call.
 */
#ifndef SKALD_STORE_QUERIES_H
#define SKALD_STORE_QUERIES_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "saga/saga.h"
#include "spec/def.h"

/* Stores a definition (canonical spec JSON). The same spec again is fine
 * (*created = false); a different one for an existing (name, version) →
 * SK_ECONFLICT. created may be NULL. */
int queries_register_def(PGconn *c, const char *name, int version,
                         const char *spec_json, bool *created, sk_error *err);

/* The stored spec JSON of (name, version); version 0 = the latest.
 * *version_out (may be NULL) gets the version found. SK_ENOENT if none. */
int queries_load_def(PGconn *c, const char *name, int version,
                     char **spec_json, int *version_out, sk_error *err);

/* The projection (canonical state JSON) and status. SK_ENOENT if none. */
int queries_saga_state(PGconn *c, const char *id, char **state_json,
                       saga_status *status, sk_error *err);

/* The saga's events with seq > after_seq as a JSON array of
 * {seq,type,step,attempt,node,payload,created_at}. SK_ENOENT if no saga. */
int queries_events_json(PGconn *c, const char *id, int64_t after_seq,
                        char **json, sk_error *err);

/* All events of a saga, in order, as saga_event values (for folding). */
int queries_load_events(PGconn *c, const char *id, saga_event **events,
                        size_t *n, sk_error *err);

typedef struct verify_report {
  size_t checked;
  size_t mismatched;
  char first_mismatch[37];   /* "" if none */
} verify_report;

/* Rebuilds every saga's state from its events alone (saga_fold) and
 * compares it with the stored projection (as jsonb, so formatting does not
 * matter). id = NULL checks every saga. */
int queries_verify(PGconn *c, const char *id, verify_report *rep,
                   sk_error *err);

/* Workflows with their versions: [{"name", "versions": [1, 2]}, ...]. */
int queries_list_workflows(PGconn *c, char **json, sk_error *err);

/* The saga view: its projection plus "tasks" (queued or running work with
 * lease owner, attempt, available_at). SK_ENOENT if none. */
int queries_saga_view(PGconn *c, const char *id, char **json, sk_error *err);

/* Sagas newest first, optionally filtered by status and workflow, after
 * `cursor` (the last id of the previous page, or NULL). *json is
 * {"sagas": [{id, workflow, version, status, created_at, updated_at}],
 *  "next_cursor": id or null}. limit 1..1000. */
int queries_list_sagas(PGconn *c, const char *status, const char *workflow,
                       int limit, const char *cursor, char **json,
                       sk_error *err);

/* Ids of sagas in `status` (optionally of `workflow`) that have not been
 * replayed as a new run yet, oldest first, at most limit; *ids is a
 * malloc'd array of SK_ID_LEN strings. */
int queries_saga_ids(PGconn *c, const char *status, const char *workflow,
                     int limit, char (**ids)[37], size_t *n, sk_error *err);

/* Nodes with their heartbeat age: [{"name","alive","started_at",
 * "heartbeat_at","heartbeat_age_ms","capacity","info"}]; alive means a
 * heartbeat within stale_ms. */
int queries_list_nodes(PGconn *c, int64_t stale_ms, char **json,
                       sk_error *err);

/* The cluster's singleton duties, run by whichever node holds a
 * session-level advisory lock (it stays held while that node's connection
 * lives; when the node dies the next node to try takes over): forgets
 * nodes silent for reap_after_ms, and, with retention_days > 0, deletes
 * completed, compensated and cancelled sagas (with their events and keys)
 * last updated longer ago, 1000 per run. SK_ESTATE when another node holds
 * the duties. */
int queries_singleton_duties(PGconn *c, int64_t reap_after_ms,
                             int retention_days, size_t *reaped,
                             size_t *purged, sk_error *err);

/* Upserts this node's row with a fresh heartbeat. */
int queries_node_heartbeat(PGconn *c, const char *node,
                           const char *capacity_json, sk_error *err);

#endif /* SKALD_STORE_QUERIES_H */
