/*
 * engine_metrics.h — the engine's Prometheus metrics, on obs/metrics.h.
 *
 * From the database at scrape time: sagas by status, queue depth (due,
 * unleased tasks) by task type. From this node as things happen: step
 * durations, retries (attempts after the first), compensations, lease
 * recoveries (tasks leased again after a lease expired), breaker states and
 * openings, bulkhead use and capacity, group commits, ops per commit and
 * fenced results.
 *
 * Thread: observations on the loop thread; rendering on any thread.
 */
#ifndef SKALD_OBS_ENGINE_METRICS_H
#define SKALD_OBS_ENGINE_METRICS_H

#include <stdbool.h>

#include "sched/breaker.h"

struct sk_engine;
typedef struct engine_metrics engine_metrics;

int engine_metrics_new(engine_metrics **out);
void engine_metrics_free(engine_metrics *m);

/* An attempt finished on this node. outcome: ok | error | timeout. */
void engine_metrics_attempt(engine_metrics *m, const char *workflow,
                            const char *step, bool compensation,
                            const char *outcome, double seconds);
/* A task was dispatched; attempt > 1 counts a retry, deliveries > 1 a lease
 * recovery. */
void engine_metrics_dispatch(engine_metrics *m, const char *workflow,
                             const char *step, int attempt, int deliveries);
void engine_metrics_breaker(engine_metrics *m, const char *task_type,
                            const breaker *b);

/* The whole exposition (malloc'd). Reads the database through the
 * engine's query connection. Errors: SK_EDB, SK_ENOMEM. */
int engine_metrics_render(struct sk_engine *e, char **text);

#endif /* SKALD_OBS_ENGINE_METRICS_H */
