/*
 * metrics.h — a registry of counters, gauges and histograms with labels,
 * rendered in the Prometheus text exposition format 0.0.4 for /metrics.
 *
 *   metrics *reg;  metrics_new(&reg);
 *   static const char *const lbl[] = {"workflow", "outcome"};
 *   metric *sagas;
 *   metrics_counter(reg, "skald_sagas_finished_total",
 *                   "Sagas that reached a final state.", lbl, 2, &sagas);
 *   metrics_inc(sagas, (const char *const[]){"trip", "completed"});
 *   buf b = BUF_INIT;  metrics_render(reg, &b);  ... buf_free(&b);
 *
 * A metric has a fixed list of label names, given when it is registered;
 * every observation passes one value per name (NULL when there are none).
 * Each distinct tuple of values is a series, created on first use (the only
 * allocation; later observations of that series allocate nothing). A
 * metric holds at most METRICS_SERIES_MAX series; observations of new
 * tuples beyond that are dropped (a runaway label must not eat the heap).
 * A metric without labels has its one series from registration, so it
 * renders as 0 before anything is observed.
 *
 * Intended Skald metrics (registered by the daemon, not here):
 *   skald_sagas_started_total{workflow}                      counter
 *   skald_sagas_finished_total{workflow,outcome}             counter
 *       outcome: completed | compensated | failed | cancelled
 *   skald_step_duration_seconds{workflow,step,outcome}       histogram
 *   skald_step_retries_total{workflow,step}                  counter
 *   skald_compensations_total{workflow,step,outcome}         counter
 *   skald_queue_depth{task_type}                             gauge
 *   skald_lease_recoveries_total                             counter
 *   skald_breaker_state{task_type}   0 closed, 1 half-open, 2 open  gauge
 *   skald_breaker_opens_total{task_type}                     counter
 *   skald_bulkhead_in_use{bulkhead}                          gauge
 *   skald_bulkhead_capacity{bulkhead}                        gauge
 *   skald_gpu_healthy{gpu}           1 healthy, 0 not        gauge
 *   skald_gpu_errors_total{gpu,kind}                         counter
 *   skald_http_requests_total{method,route,code}             counter
 *   skald_http_request_duration_seconds{route}               histogram
 *   skald_http_ratelimited_total                             counter
 *
 * Thread: any. The registry has a mutex for its list of metrics; each
 * metric has a mutex for its series table; values are atomics, updated
 * after the series is found. Register metrics before other threads use
 * them; a metric lives as long as its registry.
 */
#ifndef SKALD_OBS_METRICS_H
#define SKALD_OBS_METRICS_H

#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"
#include "common/err.h"

#define METRICS_LABELS_MAX 8
#define METRICS_BUCKETS_MAX 64
#define METRICS_SERIES_MAX 10000

typedef enum metric_type {
  METRIC_COUNTER,
  METRIC_GAUGE,
  METRIC_HISTOGRAM
} metric_type;

typedef struct metrics metrics;
typedef struct metric metric;
typedef struct metric_series metric_series;

/* Errors: SK_ENOMEM. */
int metrics_new(metrics **out) SK_MUST_CHECK;
/* Frees the registry and every metric and series in it. NULL is ok. */
void metrics_free(metrics *reg);

/* Register a metric; *out is owned by the registry. name must match
 * [a-zA-Z_:][a-zA-Z0-9_:]*, each label name [a-zA-Z_][a-zA-Z0-9_]* without
 * a leading "__" (and not "le" for histograms), nlabels <=
 * METRICS_LABELS_MAX; help is any text (copied). Histogram bounds are
 * finite and strictly increasing (1..METRICS_BUCKETS_MAX of them); the
 * +Inf bucket is implicit. Errors: SK_EINVAL, SK_EEXIST (name taken),
 * SK_ENOMEM. */
int metrics_counter(metrics *reg, const char *name, const char *help,
                    const char *const *labels, size_t nlabels, metric **out);
int metrics_gauge(metrics *reg, const char *name, const char *help,
                  const char *const *labels, size_t nlabels, metric **out);
int metrics_histogram(metrics *reg, const char *name, const char *help,
                      const char *const *labels, size_t nlabels,
                      const double *bounds, size_t nbounds, metric **out);

/* Observations. values has one non-NULL string per label name (NULL when
 * the metric has none). A NULL metric, a NULL value, an operation of the
 * wrong type, a negative or NaN counter increment, or a series beyond
 * METRICS_SERIES_MAX is ignored. */
void metrics_inc(metric *m, const char *const *values);            /* counter +1 */
void metrics_add(metric *m, const char *const *values, double v);  /* counter, gauge */
void metrics_set(metric *m, const char *const *values, double v);  /* gauge */
void metrics_observe(metric *m, const char *const *values, double v); /* histogram */

/* The series for values, created if need be, for hot paths that observe
 * the same labels again and again (the handle lives as long as the
 * registry). Errors: SK_EINVAL (NULL value), SK_ETOOBIG (series limit),
 * SK_ENOMEM. */
int metrics_series(metric *m, const char *const *values, metric_series **out);
void metrics_series_add(metric_series *s, double v);
void metrics_series_set(metric_series *s, double v);
void metrics_series_observe(metric_series *s, double v);

/* The current value of a counter or gauge series (0 if it does not exist),
 * or the observation count of a histogram series. For tests and health. */
double metrics_value(metric *m, const char *const *values);

/* Appends the whole registry in the text exposition format 0.0.4
 * (Content-Type: text/plain; version=0.0.4), metrics in registration
 * order, series in creation order. Errors: SK_ENOMEM. */
int metrics_render(metrics *reg, buf *out);

#endif /* SKALD_OBS_METRICS_H */
