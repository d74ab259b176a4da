/*
 * remote.h — the engine side of remote workers (http-api.md "Remote
 * workers"): long-poll for tasks, heartbeat, complete, fail.
 *
 * A remote task is identified by task_id
 * "<saga_id>.<step>.<fwd|comp|fallback>.<attempt>"
 * plus its lease token; results go through the same group commit as
 * in-process ones and are fenced the same way (SK_ELEASE = lease lost).
 *
 * Thread: any (API threads); blocking.
 */
#ifndef SKALD_CORE_REMOTE_H
#define SKALD_CORE_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/engine.h"
#include "sched/placement.h"
#include "store/taskqueue.h"

#define REMOTE_TASK_ID_MAX 64
#define REMOTE_MAX_TASKS 100
#define REMOTE_MAX_WAIT_MS 60000

typedef struct remote_poll_req {
  const char *worker_id;          /* becomes the lease owner */
  const char *const *task_types;
  size_t n_task_types;
  int max;                        /* 1..REMOTE_MAX_TASKS */
  int64_t wait_ms;                /* 0..REMOTE_MAX_WAIT_MS */
  /* The worker's GPUs as it reported them, or NULL: a worker that reports
   * none receives only tasks without GPU needs. */
  const placement_node *gpus;
} remote_poll_req;

/* Leases up to max tasks of the given types, waiting up to wait_ms for
 * some to come due (woken by commits and notifications); at most one of
 * them needs GPUs, and only one that fits the reported GPUs. *out is the
 * caller's (leased_task_clear each, then free), and so is *needs (one per
 * task, or NULL). */
int remote_poll(struct sk_engine *e, const remote_poll_req *req,
                leased_task **out, task_needs **needs, size_t *n_out,
                sk_error *err);

void remote_task_id(const store_lease *l, char buf[REMOTE_TASK_ID_MAX]);
/* Parses a task id into l (token left 0). SK_EINVAL if malformed. */
int remote_task_id_parse(const char *id, store_lease *l);

/* Extends the lease. SK_ELEASE if it was lost; *cancel (may be NULL) says
 * whether the saga asked the attempt to stop. */
int remote_heartbeat(struct sk_engine *e, const char *task_id, int64_t token,
                     bool *cancel, sk_error *err);
/* Completes the attempt with output (JSON text or NULL). SK_ELEASE if the
 * lease moved on (the result was dropped), SK_EJSON / SK_ETOOBIG for bad
 * output. */
int remote_complete(struct sk_engine *e, const char *task_id, int64_t token,
                    const char *output_json, sk_error *err);
/* Fails the attempt. type is required; retryable as in handlers. */
int remote_fail(struct sk_engine *e, const char *task_id, int64_t token,
                const char *type, const char *message, bool retryable,
                sk_error *err);

#endif /* SKALD_CORE_REMOTE_H */
