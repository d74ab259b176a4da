/*
 * taskqueue.h — leasing tasks from the ready queue, renewing and handing
 * back leases.
 *
 * A dequeue asks for at most `limit` due tasks per lane (a bulkhead and the
 * task types this node can run there now), locking candidates with
 * FOR UPDATE SKIP LOCKED so concurrent nodes never block on or double-lease
 * a row. Leasing sets a fresh token from lease_token_seq and moves
 * available_at to the lease expiry: when a node dies, its tasks simply
 * become due again for everyone.
 *
 * Thread: the caller's; the connection belongs to the call.
 */
#ifndef SKALD_STORE_TASKQUEUE_H
#define SKALD_STORE_TASKQUEUE_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/err.h"
#include "store/sagastore.h"

typedef enum dequeue_kind {
  DEQUEUE_TASKS = 0,           /* action task of the given types */
  DEQUEUE_WORK = 1,            /* those, and http tasks (run by the engine
                                  itself), under one limit */
  DEQUEUE_SLEEPS = 2           /* due durable timers, any bulkhead */
} dequeue_kind;

typedef struct dequeue_lane {
  dequeue_kind kind;
  const char *bulkhead;        /* ignored for sleeps */
  const char *const *types;    /* DEQUEUE_TASKS: types runnable here */
  size_t n_types;
  int limit;
} dequeue_lane;

/* Leases due tasks for `node` for lease_ttl_ms. *out (malloc'd, *n_out
 * entries) is the caller's; free each with leased_task_clear, then free().
 * Errors: SK_EDB, SK_ENOMEM. */
int taskqueue_dequeue(PGconn *conn, const char *node, int lease_ttl_ms,
                      const dequeue_lane *lanes, size_t n_lanes,
                      leased_task **out, size_t *n_out, sk_error *err);

/* Leases up to `limit` due tasks of the given types in any bulkhead for a
 * remote worker (`node` is its worker id). Same ownership as above. */
int taskqueue_dequeue_any(PGconn *conn, const char *node, int lease_ttl_ms,
                          const char *const *types, size_t n_types, int limit,
                          leased_task **out, size_t *n_out, sk_error *err);

/* Extends the leases still held (token matches) by lease_ttl_ms. For each
 * lease, lost[i] is set when it is no longer held and cancel[i] when the
 * task was asked to stop. Errors: SK_EDB, SK_ENOMEM. */
int taskqueue_renew(PGconn *conn, const store_lease *leases, size_t n,
                    int lease_ttl_ms, bool *lost, bool *cancel, sk_error *err);

/* Hands leases back: the tasks become due for any node at once, or after
 * delays_ms[i] when delays_ms is not NULL (a graceful shutdown hands back
 * work it did not start; an open circuit breaker defers work without
 * spending an attempt). */
int taskqueue_release(PGconn *conn, const store_lease *leases,
                      const int64_t *delays_ms, size_t n, sk_error *err);

#endif /* SKALD_STORE_TASKQUEUE_H */
