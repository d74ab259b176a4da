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

/* Stores a definition (canonical spec JSON). The same spec again is fine;
 * a different one for an existing (name, version) → SK_ECONFLICT. */
int queries_register_def(PGconn *c, const char *name, int version,
                         const char *spec_json, sk_error *err);

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

/* Upserts this node's row with a fresh heartbeat. */
int queries_node_heartbeat(PGconn *c, const char *node,
                           const char *capacity_json, sk_error *err);

#endif /* SKALD_STORE_QUERIES_H */
