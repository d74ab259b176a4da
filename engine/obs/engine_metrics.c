/*
 * engine_metrics.c — the engine's metrics (see engine_metrics.h).
 *
 * Gauges that describe the cluster (sagas by status, queue depth) are read
 * from PostgreSQL at scrape time, so every node reports the same truth;
 * counters and histograms describe this node's own work.
 *
 * Thread: observations on the loop thread; render on API threads.
 */
#include "obs/engine_metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "core/engine.h"
#include "obs/metrics.h"
#include "store/db.h"

struct engine_metrics {
  metrics *reg;
  metric *step_seconds, *retries, *comps, *recoveries, *breaker_state,
      *breaker_opens, *bh_in_use, *bh_capacity, *commits, *ops, *fenced,
      *sagas, *queue, *gpu_state, *gpu_mem_free, *gpu_temp, *gpu_util,
      *node_draining;
};

static const double SECONDS[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                 0.1,   0.25,   0.5,   1,    2.5,   5,
                                 10,    30,     60,    300};

int engine_metrics_new(engine_metrics **out) {
  engine_metrics *m = calloc(1, sizeof(*m));
  if (m == NULL || metrics_new(&m->reg) != SK_OK) {
    free(m);
    return SK_ENOMEM;
  }
  static const char *const wss[] = {"workflow", "step", "outcome"};
  static const char *const ws[] = {"workflow", "step"};
  static const char *const tt[] = {"task_type"};
  static const char *const bh[] = {"bulkhead"};
  static const char *const st[] = {"status"};
  int rc = metrics_histogram(m->reg, "skald_step_duration_seconds",
                             "Duration of step attempts run on this node.",
                             wss, 3, SECONDS,
                             sizeof(SECONDS) / sizeof(SECONDS[0]),
                             &m->step_seconds);
  rc = rc ? rc : metrics_counter(m->reg, "skald_step_retries_total",
                                 "Attempts after the first, dispatched here.",
                                 ws, 2, &m->retries);
  rc = rc ? rc : metrics_counter(m->reg, "skald_compensations_total",
                                 "Compensation attempts run on this node.",
                                 wss, 3, &m->comps);
  rc = rc ? rc : metrics_counter(m->reg, "skald_lease_recoveries_total",
                                 "Tasks leased again after a lease expired.",
                                 NULL, 0, &m->recoveries);
  rc = rc ? rc : metrics_gauge(m->reg, "skald_breaker_state",
                               "Circuit breaker: 0 closed, 1 half-open, 2 "
                               "open.",
                               tt, 1, &m->breaker_state);
  rc = rc ? rc : metrics_counter(m->reg, "skald_breaker_opens_total",
                                 "Times a circuit breaker opened.", tt, 1,
                                 &m->breaker_opens);
  rc = rc ? rc : metrics_gauge(m->reg, "skald_bulkhead_in_use",
                               "Tasks queued or running in a bulkhead.", bh,
                               1, &m->bh_in_use);
  rc = rc ? rc : metrics_gauge(m->reg, "skald_bulkhead_capacity",
                               "Worker threads of a bulkhead.", bh, 1,
                               &m->bh_capacity);
  rc = rc ? rc : metrics_gauge(m->reg, "skald_group_commits",
                               "Group commits by this node.", NULL, 0,
                               &m->commits);
  rc = rc ? rc : metrics_gauge(m->reg, "skald_group_commit_ops",
                               "Operations committed by this node's group "
                               "commits.",
                               NULL, 0, &m->ops);
  rc = rc ? rc : metrics_gauge(m->reg, "skald_fenced_results",
                               "Results dropped because their lease had "
                               "moved on.",
                               NULL, 0, &m->fenced);
  rc = rc ? rc : metrics_gauge(m->reg, "skald_sagas",
                               "Sagas by status (cluster-wide).", st, 1,
                               &m->sagas);
  rc = rc ? rc : metrics_gauge(m->reg, "skald_queue_depth",
                               "Due tasks waiting for a lease "
                               "(cluster-wide).",
                               tt, 1, &m->queue);
  static const char *const gpu[] = {"gpu"};
  rc = rc ? rc : metrics_gauge(m->reg, "skald_gpu_state",
                               "GPU health on this node: 0 unknown, 1 "
                               "healthy, 2 degraded, 3 unhealthy.",
                               gpu, 1, &m->gpu_state);
  rc = rc ? rc : metrics_gauge(m->reg, "skald_gpu_memory_free_bytes",
                               "Free GPU memory as the provider reports it.",
                               gpu, 1, &m->gpu_mem_free);
  rc = rc ? rc : metrics_gauge(m->reg, "skald_gpu_temperature_celsius",
                               "GPU temperature.", gpu, 1, &m->gpu_temp);
  rc = rc ? rc : metrics_gauge(m->reg, "skald_gpu_utilization_percent",
                               "GPU utilization over the last sample.", gpu,
                               1, &m->gpu_util);
  rc = rc ? rc : metrics_gauge(m->reg, "skald_node_draining",
                               "1 while this node takes no new GPU work "
                               "(a node-wide GPU fault).",
                               NULL, 0, &m->node_draining);
  if (rc != SK_OK) {
    engine_metrics_free(m);
    return rc;
  }
  *out = m;
  return SK_OK;
}

void engine_metrics_free(engine_metrics *m) {
  if (m == NULL)
    return;
  metrics_free(m->reg);
  free(m);
}

void engine_metrics_attempt(engine_metrics *m, const char *workflow,
                            const char *step, bool compensation,
                            const char *outcome, double seconds) {
  if (m == NULL)
    return;
  const char *v[3] = {workflow, step, outcome};
  if (compensation)
    metrics_inc(m->comps, v);
  else
    metrics_observe(m->step_seconds, v, seconds);
}

void engine_metrics_dispatch(engine_metrics *m, const char *workflow,
                             const char *step, int attempt, int deliveries) {
  if (m == NULL)
    return;
  const char *v[2] = {workflow, step};
  if (attempt > 1)
    metrics_inc(m->retries, v);
  if (deliveries > 1)
    metrics_inc(m->recoveries, NULL);
}

void engine_metrics_breaker(engine_metrics *m, const char *task_type,
                            const breaker *b) {
  if (m == NULL)
    return;
  const char *v[1] = {task_type};
  double s = b->state == BREAKER_STATE_OPEN        ? 2
             : b->state == BREAKER_STATE_HALF_OPEN ? 1
                                                   : 0;
  metrics_set(m->breaker_state, v, s);
  double opens = metrics_value(m->breaker_opens, v);
  if ((double)b->opens > opens)
    metrics_add(m->breaker_opens, v, (double)b->opens - opens);
}

/* Sets a gauge from the rows (label, value) of a query. */
static int gauge_from_query(PGconn *c, metric *g, const char *sql) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    PQclear(r);
    return SK_EDB;
  }
  for (int i = 0; i < PQntuples(r); i++) {
    const char *v[1] = {PQgetvalue(r, i, 0)};
    metrics_set(g, v, atof(PQgetvalue(r, i, 1)));
  }
  PQclear(r);
  return SK_OK;
}

/* This node's GPUs from its health sampler (nothing without one). */
static void gpu_gauges(struct sk_engine *e, engine_metrics *m) {
  if (e->gpu_health == NULL)
    return;
  node_gpu_report *r = malloc(sizeof(*r));
  if (r == NULL)
    return;
  health_snapshot(e->gpu_health, r);
  metrics_set(m->node_draining, NULL, r->draining ? 1 : 0);
  for (unsigned i = 0; i < r->n_gpus && i < GPU_MAX; i++) {
    const gpu_health *g = &r->gpu[i];
    char idx[16];
    snprintf(idx, sizeof(idx), "%u", g->r.index);
    const char *v[1] = {idx};
    double state = g->state == GH_HEALTHY     ? 1
                   : g->state == GH_DEGRADED  ? 2
                   : g->state == GH_UNHEALTHY ? 3
                                              : 0;
    metrics_set(m->gpu_state, v, state);
    if (g->r.valid & GPU_F_MEM)
      metrics_set(m->gpu_mem_free, v, (double)g->r.mem_free);
    if (g->r.valid & GPU_F_TEMP)
      metrics_set(m->gpu_temp, v, g->r.temp_c);
    if (g->r.valid & GPU_F_UTIL)
      metrics_set(m->gpu_util, v, g->r.util_gpu);
  }
  free(r);
}

int engine_metrics_render(struct sk_engine *e, char **text) {
  engine_metrics *m = e->metrics;
  gpu_gauges(e, m);
  for (size_t i = 0; i < e->n_bulkheads; i++) {
    const char *v[1] = {e->bulkheads[i].name};
    double load = e->bulkheads[i].pool ? (double)pool_load(e->bulkheads[i].pool)
                                       : 0;
    metrics_set(m->bh_in_use, v, load);
    metrics_set(m->bh_capacity, v, e->bulkheads[i].concurrency);
  }
  metrics_set(m->commits, NULL, (double)atomic_load(&e->n_commits));
  metrics_set(m->ops, NULL, (double)atomic_load(&e->n_ops_committed));
  metrics_set(m->fenced, NULL, (double)atomic_load(&e->n_fenced));
  /* Statuses that have no saga read 0, not absent. */
  for (int s = 0; s <= SAGA_STATUS_CANCELLED; s++) {
    const char *v[1] = {saga_status_name((saga_status)s)};
    metrics_set(m->sagas, v, 0);
  }
  engine_q_lock(e);
  int rc = gauge_from_query(e->query_conn, m->sagas,
                            "SELECT status, count(*) FROM sagas GROUP BY 1");
  if (rc == SK_OK)
    rc = gauge_from_query(e->query_conn, m->queue,
                          "SELECT CASE action WHEN 'task' THEN task_type "
                          "ELSE action END, count(*) FROM tasks "
                          "WHERE available_at <= now() GROUP BY 1");
  engine_q_unlock(e);
  if (rc != SK_OK)
    return rc;
  buf b = BUF_INIT;
  rc = metrics_render(m->reg, &b);
  if (rc != SK_OK) {
    buf_free(&b);
    return rc;
  }
  *text = buf_steal(&b);
  return *text != NULL ? SK_OK : SK_ENOMEM;
}
