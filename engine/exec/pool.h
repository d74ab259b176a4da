/*
 * pool.h — a bulkhead: a named pool of worker threads with its own queue.
 *
 * Jobs are intrusive (they begin with a pool_link) and owned by the
 * submitter; the pool only runs them. A slow or stuck dependency can fill
 * its own pool's threads, never another pool's (Redis' bio.c is the model).
 *
 * Thread: pool_submit / pool_load / pool_take_queued / pool_stop are called
 * from the engine loop thread; `run` is called on the pool's threads.
 */
#ifndef SKALD_EXEC_POOL_H
#define SKALD_EXEC_POOL_H

#include <stddef.h>

typedef struct pool_link {
  struct pool_link *next;
} pool_link;

typedef struct pool pool;

/* run(job, ud) executes one job on a worker thread. */
typedef void (*pool_run_fn)(pool_link *job, void *ud);

/* Starts `threads` workers. Errors: SK_EINVAL, SK_ENOMEM, SK_EIO (thread
 * creation failed; none are left running). */
int pool_new(const char *name, int threads, pool_run_fn run, void *ud,
             pool **out);
/* Queues a job (FIFO). SK_ESHUTDOWN after pool_stop. */
int pool_submit(pool *p, pool_link *job);
/* Jobs queued or running. */
size_t pool_load(pool *p);
int pool_threads(const pool *p);
const char *pool_name(const pool *p);
/* Removes every queued (not started) job and returns them as a list. */
pool_link *pool_take_queued(pool *p);
/* Stops accepting, lets running jobs finish, joins the threads. Queued jobs
 * still run unless taken first. Idempotent. */
void pool_stop(pool *p);
/* Stops (if needed) and frees. NULL is ok. */
void pool_free(pool *p);

#endif /* SKALD_EXEC_POOL_H */
