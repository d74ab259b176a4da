/*
 * sagacheck.h — checks the promises of DESIGN.md on a database after a run
 * of tests/programs/crash_worker (possibly killed and restarted, possibly
 * on several nodes):
 *   - every saga reached the status its input dictates;
 *   - each step's completion is recorded exactly once;
 *   - compensations ran newest-first, exactly for the completed steps;
 *   - every execution of a step carried the same idempotency key
 *     "<saga_id>:<step>:fwd|comp", and every recorded completion has an
 *     execution behind it;
 *   - event sequence numbers are contiguous and end with one terminal event;
 *   - the projection equals the fold of the events (queries_verify);
 *   - no task is left in the queue.
 * Failures are reported with Criterion assertions naming the saga.
 */
#ifndef SKALD_TESTS_SAGACHECK_H
#define SKALD_TESTS_SAGACHECK_H

#include <stddef.h>

typedef struct sagacheck_stats {
  size_t sagas, completed, compensated;
  size_t executions, pids;   /* EXEC lines, distinct processes in them */
} sagacheck_stats;

/* Checks sagas "<prefix>-0" .. "<prefix>-<n-1>" of workflow crash_wf. */
void sagacheck_crash_wf(const char *conninfo, const char *log_path,
                        const char *prefix, int n, sagacheck_stats *stats);

#endif /* SKALD_TESTS_SAGACHECK_H */
