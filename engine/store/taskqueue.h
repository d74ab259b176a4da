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
  DEQUEUE_TASKS = 0, /* action task of the given types */
  DEQUEUE_WORK = 1,  /* those, and http tasks (run by the engine
                        itself), under one limit */
  DEQUEUE_SLEEPS = 2 /* due durable timers, any bulkhead */
} dequeue_kind;

/* Which tasks with GPU needs (tasks.gpus > 0) a lane takes. A task with
 * gpus = 0 needs no GPU (gpu_memory_mb is per GPU and ignored then). */
typedef enum dequeue_gpu_mode {
  DEQUEUE_GPU_NONE = 0, /* only tasks without GPU needs (default) */
  DEQUEUE_GPU_ANY = 1,  /* those, and GPU tasks that fit */
  DEQUEUE_GPU_ONLY = 2  /* only GPU tasks that fit */
} dequeue_gpu_mode;

/* What fits a node's GPUs now (placement_envelope): k GPUs can each give
 * caps[k-1] MB; `idle` GPUs are held by nobody (for whole-GPU tasks,
 * gpu_memory_mb = 0). Exact for one task: lanes that take GPU tasks should
 * have limit 1, so two tasks never share the same room. */
typedef struct dequeue_gpu_fit {
  const int64_t *caps;
  unsigned n_caps;
  unsigned idle;
} dequeue_gpu_fit;

typedef struct dequeue_lane {
  dequeue_kind kind;
  const char *bulkhead;     /* ignored for sleeps */
  const char *const *types; /* DEQUEUE_TASKS: types runnable here */
  size_t n_types;
  int limit;
  dequeue_gpu_mode gpu_mode; /* tasks and work lanes */
  dequeue_gpu_fit gpu;       /* with DEQUEUE_GPU_ANY / _ONLY */
} dequeue_lane;

/* A leased task's resources (tasks.gpus, tasks.gpu_memory_mb). */
typedef struct task_needs {
  int gpus;
  int64_t gpu_memory_mb;
} task_needs;

/* Leases due tasks for `node` for lease_ttl_ms. *out (malloc'd, *n_out
 * entries) is the caller's; free each with leased_task_clear, then free().
 * Errors: SK_EDB, SK_ENOMEM. */
int taskqueue_dequeue(PGconn *conn, const char *node, int lease_ttl_ms,
                      const dequeue_lane *lanes, size_t n_lanes,
                      leased_task **out, size_t *n_out, sk_error *err);

/* Same, also returning each leased task's resources: *needs (malloc'd,
 * *n_out entries, NULL when none) is the caller's to free(). */
int taskqueue_dequeue_needs(PGconn *conn, const char *node, int lease_ttl_ms,
                            const dequeue_lane *lanes, size_t n_lanes,
                            leased_task **out, task_needs **needs,
                            size_t *n_out, sk_error *err);

/* Leases up to `limit` due tasks of the given types in any bulkhead for a
 * remote worker (`node` is its worker id). Same ownership as above. Only
 * tasks without GPU needs are leased (see taskqueue_dequeue_any_gpu). */
int taskqueue_dequeue_any(PGconn *conn, const char *node, int lease_ttl_ms,
                          const char *const *types, size_t n_types, int limit,
                          leased_task **out, size_t *n_out, sk_error *err);

/* Same for a worker that reported its GPUs: at most one GPU task that fits
 * `fit` (leased first), then tasks without GPU needs up to `limit` in all.
 * *needs as for taskqueue_dequeue_needs. fit NULL: no GPU tasks. */
int taskqueue_dequeue_any_gpu(PGconn *conn, const char *node, int lease_ttl_ms,
                              const char *const *types, size_t n_types,
                              int limit, const dequeue_gpu_fit *fit,
                              leased_task **out, task_needs **needs,
                              size_t *n_out, sk_error *err);

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

/* At start: takes the node name (a session advisory lock on conn, held as
 * long as the session lives) and, when no other live session holds it,
 * hands back every lease still in the name of node, made by an earlier
 * process under the same name that died (SIGKILL, crash, power loss): its
 * work is due at once instead of after the lease TTL. *in_use is set when
 * another live session holds the name (its leases are left alone); *n the
 * leases handed back. A late result of a dead process is still fenced: the
 * next lease of the task gets a new token. */
int taskqueue_reclaim_own(PGconn *conn, const char *node, bool *in_use, int *n,
                          sk_error *err);

#endif /* SKALD_STORE_TASKQUEUE_H */
