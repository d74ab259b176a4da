/*
 * health.c — the GPU health sampler (see health.h).
 *
 * Invariants: `report` and the per-GPU event bookkeeping change only under
 * `mu`; the provider's sample() runs under `sample_mu` (one sample at a
 * time) but outside `mu`, so readers never wait on NVML. A GPU that was in
 * a previous sample and is missing from this one stays in the report,
 * UNHEALTHY with "gpu missing".
 *
 * Threads: the sampler thread (every interval, or at once when the event
 * thread saw something), the event thread (blocks in wait_event), and any
 * reader (snapshot/json).
 */
#include "health/health.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/log.h"

#define APP_XID_RING 32

typedef struct gpu_events {
  unsigned pending_xid;              /* worst XID since the last sample */
  unsigned last_xid;
  int64_t last_xid_ms;
  int64_t app_at[APP_XID_RING];      /* times of recent application XIDs */
  unsigned app_next;
} gpu_events;

struct health {
  health_options o;
  char node_id[64];
  gpu_provider prov;
  pthread_mutex_t mu, sample_mu;
  pthread_cond_t cv;
  node_gpu_report report;  /* guarded by mu */
  node_gpu_report scratch; /* guarded by sample_mu */
  gpu_events ev[GPU_MAX];
  bool have_prev;          /* a sample has been classified */
  bool events_broken;      /* wait_event failed: every GPU suspect */
  bool stop, wake, started, event_started;
  pthread_t sampler, eventer;
};

static int64_t now_ms(const health *h) {
  return h->o.now != NULL ? h->o.now(h->o.clock_ctx) : clock_mono_ms();
}

void health_options_init(health_options *o) {
  *o = (health_options){.event_thread = true, .event_timeout_ms = 5000};
  classify_config_init(&o->cfg);
}

/* XID severity for keeping the worst one between samples. */
static int xid_rank(const classify_config *cfg, unsigned xid) {
  if (xid == 0)
    return 0;
  if (xid == 79)
    return 4;
  if (classify_xid_is_app(cfg, xid))
    return 1;
  return xid == 94 || xid == 63 ? 2 : 3;
}

/* Records one event (under mu). */
static void record_event(health *h, unsigned gpu, unsigned xid, uint64_t type,
                         int64_t now) {
  if (gpu >= GPU_MAX || xid == 0)
    return; /* ECC events only prompt a sample; the counters tell the rest */
  gpu_events *e = &h->ev[gpu];
  log_write(LOG_WARNING, "gpu xid event", "#index", (int64_t)gpu, "#xid",
            (int64_t)xid, NULL);
  e->last_xid = xid;
  e->last_xid_ms = now;
  if (classify_xid_is_app(&h->o.cfg, xid))
    e->app_at[e->app_next++ % APP_XID_RING] = now;
  if (xid_rank(&h->o.cfg, xid) > xid_rank(&h->o.cfg, e->pending_xid))
    e->pending_xid = xid;
}

static unsigned app_xids_in_window(const health *h, const gpu_events *e,
                                   int64_t now) {
  unsigned n = 0;
  unsigned filled = e->app_next < APP_XID_RING ? e->app_next : APP_XID_RING;
  for (unsigned i = 0; i < filled; i++)
    if (now - e->app_at[i] <= h->o.cfg.app_xid_window_ms)
      n++;
  return n;
}

static void drain_events(health *h) {
  for (int i = 0; i < 64; i++) {
    unsigned gpu = 0, xid = 0;
    uint64_t type = 0;
    int rc = h->prov.wait_event(&h->prov, &gpu, &xid, &type, 0);
    if (rc != 0)
      return;
    pthread_mutex_lock(&h->mu);
    record_event(h, gpu, xid, type, now_ms(h));
    pthread_mutex_unlock(&h->mu);
  }
}

/* Classifies GPU i of the new sample into the report (under mu). */
static void merge_gpu(health *h, unsigned i, const gpu_readings *src,
                      int64_t now) {
  gpu_health *g = &h->report.gpu[i];
  bool had_prev = h->have_prev && i < h->report.n_gpus &&
                  strcmp(g->r.uuid, src->uuid) == 0;
  gpu_readings prev = g->r;
  if (i >= h->report.n_gpus || !had_prev) {
    if (i < h->report.n_gpus && g->r.uuid[0] != '\0' && src->uuid[0] != '\0')
      log_write(LOG_WARNING, "gpu changed identity", "#index", (int64_t)i,
                "old", g->r.uuid, "new", src->uuid, NULL);
    if (i >= h->report.n_gpus)
      *g = (gpu_health){.state = GH_UNKNOWN, .since_ms = now};
  }
  gpu_events *e = &h->ev[i];
  g->r = *src;
  g->r.index = i;
  g->r.sample_ms = now;
  g->r.xid_new = e->pending_xid;
  g->r.last_xid = e->last_xid;
  g->r.last_xid_ms = e->last_xid_ms;
  g->r.app_xids_10min = app_xids_in_window(h, e, now);
  e->pending_xid = 0;
  classify_verdict v;
  classify_gpu(&g->r, had_prev ? &prev : NULL, &h->o.cfg, &v);
  if (h->events_broken && v.level != CLASSIFY_FAIL) {
    v.level = CLASSIFY_FAIL;
    snprintf(v.reason, sizeof v.reason, "gpu event wait failed");
  }
  classify_step(g, &v, &h->o.cfg, now);
  classify_node_step(&h->report, &v);
}

/* Folds a fresh sample (h->scratch) into the report (under mu). */
static void merge(health *h, int64_t now) {
  node_gpu_report *s = &h->scratch, *r = &h->report;
  if (r->expected_gpus == 0 && s->node_rc == 0)
    r->expected_gpus = h->o.expected_gpus != 0 ? h->o.expected_gpus : s->n_gpus;
  s->expected_gpus = r->expected_gpus;
  classify_verdict nv;
  classify_node(s, &h->o.cfg, &nv);
  unsigned old_n = r->n_gpus;
  for (unsigned i = 0; i < s->n_gpus && i < GPU_MAX; i++)
    merge_gpu(h, i, &s->gpu[i].r, now);
  /* GPUs that vanished (or all of them, when the driver is gone). */
  unsigned keep = old_n > r->expected_gpus ? old_n : r->expected_gpus;
  for (unsigned i = s->n_gpus; i < keep && i < GPU_MAX; i++) {
    classify_verdict gone = nv;
    gone.level = CLASSIFY_FAIL;
    if (nv.level != CLASSIFY_FAIL)
      snprintf(gone.reason, sizeof gone.reason, "gpu missing");
    if (i >= old_n)
      r->gpu[i] = (gpu_health){.state = GH_UNKNOWN, .r = {.index = i}};
    classify_step(&r->gpu[i], &gone, &h->o.cfg, now);
  }
  r->n_gpus = s->n_gpus > keep ? s->n_gpus : keep;
  if (r->n_gpus > GPU_MAX)
    r->n_gpus = GPU_MAX;
  classify_node_step(r, &nv);
  r->node_rc = s->node_rc;
  r->seq++;
  r->agent_ms = now;
  r->recv_mono_ms = now;
  h->have_prev = true;
}

int health_sample_now(health *h) {
  pthread_mutex_lock(&h->sample_mu);
  if (!h->event_started)
    drain_events(h);
  memset(&h->scratch, 0, sizeof h->scratch);
  int rc = h->prov.sample(&h->prov, &h->scratch);
  if (rc != 0) {
    log_write(LOG_WARNING, "could not sample gpus", "error", sk_err_name(rc),
              NULL);
  } else {
    pthread_mutex_lock(&h->mu);
    merge(h, now_ms(h));
    pthread_mutex_unlock(&h->mu);
  }
  pthread_mutex_unlock(&h->sample_mu);
  return rc;
}

/* ---- threads ------------------------------------------------------------- */

static void *sampler_main(void *arg) {
  health *h = arg;
  pthread_mutex_lock(&h->mu);
  while (!h->stop) {
    pthread_mutex_unlock(&h->mu);
    health_sample_now(h);
    pthread_mutex_lock(&h->mu);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = ts.tv_nsec + (h->o.cfg.interval_ms % 1000) * 1000000;
    ts.tv_sec += (time_t)(h->o.cfg.interval_ms / 1000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    while (!h->stop && !h->wake)
      if (pthread_cond_timedwait(&h->cv, &h->mu, &ts) != 0)
        break;
    h->wake = false;
  }
  pthread_mutex_unlock(&h->mu);
  return NULL;
}

static void *event_main(void *arg) {
  health *h = arg;
  for (;;) {
    pthread_mutex_lock(&h->mu);
    bool stop = h->stop;
    pthread_mutex_unlock(&h->mu);
    if (stop)
      return NULL;
    unsigned gpu = 0, xid = 0;
    uint64_t type = 0;
    int rc = h->prov.wait_event(&h->prov, &gpu, &xid, &type,
                                h->o.event_timeout_ms);
    if (rc == SK_ENOTSUP)
      return NULL;
    if (rc == SK_ETIMEDOUT)
      continue;
    pthread_mutex_lock(&h->mu);
    if (rc == 0)
      record_event(h, gpu, xid, type, now_ms(h));
    else
      h->events_broken = true; /* as k8s-device-plugin: all GPUs suspect */
    h->wake = true;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
    if (rc != 0) {
      struct timespec ts = {1, 0};
      nanosleep(&ts, NULL);
    }
  }
}

int health_start(health *h) {
  pthread_mutex_lock(&h->mu);
  bool started = h->started;
  h->started = true;
  pthread_mutex_unlock(&h->mu);
  if (started)
    return SK_ESTATE;
  if (h->o.event_thread && h->prov.kind != GPU_PROVIDER_NONE) {
    /* Set before the sampler starts (it must not drain events then);
     * under sample_mu because health_sample_now reads it there. */
    pthread_mutex_lock(&h->sample_mu);
    h->event_started =
        pthread_create(&h->eventer, NULL, event_main, h) == 0;
    pthread_mutex_unlock(&h->sample_mu);
  }
  if (pthread_create(&h->sampler, NULL, sampler_main, h) != 0)
    return SK_ENOMEM;
  return 0;
}

/* ---- lifecycle ----------------------------------------------------------- */

static int open_provider(health *h, const health_options *o, sk_error *err) {
  int rc = 0;
  if (o->custom != NULL)
    h->prov = *o->custom;
  else
    rc = provider_select(&h->prov, o->provider, err);
  if (rc != 0) {
    if (h->prov.close != NULL)
      h->prov.close(&h->prov);
    h->prov = (gpu_provider){0};
    return rc;
  }
  if (h->prov.open(&h->prov) != 0) {
    char why[PROVIDER_REASON_MAX];
    snprintf(why, sizeof why, "%s", h->prov.reason);
    log_write(LOG_WARNING, "gpu provider unavailable; no gpus", "provider",
              gpu_provider_name(h->prov.kind), "reason", why, NULL);
    h->prov.close(&h->prov);
    provider_none_init(&h->prov, why);
  }
  return 0;
}

int health_new(const health_options *o, health **out, sk_error *err) {
  *out = NULL;
  health *h = calloc(1, sizeof *h);
  if (h == NULL) {
    if (o->custom != NULL && o->custom->close != NULL)
      o->custom->close(o->custom); /* ownership moved to us */
    return sk_error_set(err, SK_ENOMEM, NULL);
  }
  h->o = *o;
  snprintf(h->node_id, sizeof h->node_id, "%s",
           o->node_id != NULL ? o->node_id : "");
  h->o.node_id = h->node_id;
  if (h->o.cfg.interval_ms <= 0)
    h->o.cfg.interval_ms = 5000;
  pthread_mutex_init(&h->mu, NULL);
  pthread_mutex_init(&h->sample_mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&h->cv, &ca);
  pthread_condattr_destroy(&ca);
  int rc = open_provider(h, o, err);
  if (rc != 0) {
    h->prov.close = NULL;
    health_free(h);
    return rc;
  }
  snprintf(h->report.node_id, sizeof h->report.node_id, "%s", h->node_id);
  h->report.provider = h->prov.kind;
  snprintf(h->report.provider_reason, sizeof h->report.provider_reason, "%s",
           h->prov.kind == GPU_PROVIDER_NONE ? h->prov.reason : "");
  h->report.recv_mono_ms = now_ms(h);
  *out = h;
  return 0;
}

void health_free(health *h) {
  if (h == NULL)
    return;
  pthread_mutex_lock(&h->mu);
  h->stop = true;
  pthread_cond_broadcast(&h->cv);
  bool started = h->started;
  pthread_mutex_unlock(&h->mu);
  if (started) {
    pthread_join(h->sampler, NULL);
    if (h->event_started)
      pthread_join(h->eventer, NULL);
  }
  if (h->prov.close != NULL)
    h->prov.close(&h->prov);
  pthread_cond_destroy(&h->cv);
  pthread_mutex_destroy(&h->sample_mu);
  pthread_mutex_destroy(&h->mu);
  free(h);
}

void health_snapshot(health *h, node_gpu_report *out) {
  pthread_mutex_lock(&h->mu);
  classify_apply_staleness(&h->report, now_ms(h), &h->o.cfg);
  *out = h->report;
  pthread_mutex_unlock(&h->mu);
}

void health_undrain(health *h) {
  pthread_mutex_lock(&h->mu);
  int64_t now = now_ms(h);
  if (h->report.draining)
    log_write(LOG_INFO, "gpu node undrained", "node", h->node_id, NULL);
  h->report.draining = false;
  h->report.drain_reason[0] = '\0';
  h->events_broken = false;
  for (unsigned i = 0; i < h->report.n_gpus; i++)
    if (h->report.gpu[i].sticky || h->report.gpu[i].state == GH_UNHEALTHY)
      classify_undrain(&h->report.gpu[i], now);
  pthread_mutex_unlock(&h->mu);
}

/* ---- JSON ------------------------------------------------------------------ */

static void json_str(buf *b, const char *s) {
  if (s == NULL)
    buf_puts(b, "null");
  else
    buf_json_str(b, s);
}

static void json_u64(buf *b, const char *k, uint64_t v, bool valid) {
  if (valid)
    buf_printf(b, ",\"%s\":%llu", k, (unsigned long long)v);
  else
    buf_printf(b, ",\"%s\":null", k);
}

static void json_readings(buf *b, const gpu_readings *r) {
  uint32_t f = r->valid;
  buf_printf(b, "{\"sample_ms\":%lld", (long long)r->sample_ms);
  json_u64(b, "mem_total", r->mem_total, f & GPU_F_MEM);
  json_u64(b, "mem_used", r->mem_used, f & GPU_F_MEM);
  json_u64(b, "mem_free", r->mem_free, f & GPU_F_MEM);
  json_u64(b, "util_gpu", r->util_gpu, f & GPU_F_UTIL);
  json_u64(b, "util_mem", r->util_mem, f & GPU_F_UTIL);
  json_u64(b, "temp_c", (uint64_t)r->temp_c, f & GPU_F_TEMP);
  json_u64(b, "temp_slowdown_c", (uint64_t)r->temp_slowdown_c,
           f & GPU_F_TEMP_SLOWDOWN);
  json_u64(b, "temp_shutdown_c", (uint64_t)r->temp_shutdown_c,
           f & GPU_F_TEMP_SHUTDOWN);
  json_u64(b, "power_mw", r->power_mw, f & GPU_F_POWER);
  json_u64(b, "power_limit_mw", r->power_limit_mw, f & GPU_F_POWER_LIMIT);
  json_u64(b, "clock_events", r->clock_events, f & GPU_F_CLOCK_EVENTS);
  json_u64(b, "ecc_vol_unc", r->ecc_vol_unc, f & GPU_F_ECC_VOL);
  json_u64(b, "ecc_vol_corr", r->ecc_vol_corr, f & GPU_F_ECC_VOL);
  json_u64(b, "ecc_agg_unc", r->ecc_agg_unc, f & GPU_F_ECC_AGG);
  json_u64(b, "retired_sbe", r->retired_sbe, f & GPU_F_RETIRED);
  json_u64(b, "retired_dbe", r->retired_dbe, f & GPU_F_RETIRED);
  json_u64(b, "retired_pending", (uint64_t)r->retired_pending,
           f & GPU_F_RETIRED_PENDING);
  json_u64(b, "remap_unc", r->remap_unc, f & GPU_F_REMAP);
  json_u64(b, "remap_pending", (uint64_t)r->remap_pending, f & GPU_F_REMAP);
  json_u64(b, "remap_failed", (uint64_t)r->remap_failed, f & GPU_F_REMAP);
  json_u64(b, "pcie_replay", r->pcie_replay, f & GPU_F_PCIE_REPLAY);
  json_u64(b, "last_xid", r->last_xid, r->last_xid != 0);
  buf_printf(b, ",\"app_xids_10min\":%u,\"last_rc\":%d}", r->app_xids_10min,
             r->last_rc);
}

char *health_report_json(const node_gpu_report *r) {
  buf b = BUF_INIT;
  buf_puts(&b, "{\"node_id\":");
  json_str(&b, r->node_id);
  buf_puts(&b, ",\"provider\":");
  json_str(&b, gpu_provider_name(r->provider));
  buf_puts(&b, ",\"provider_reason\":");
  json_str(&b, r->provider_reason[0] != '\0' ? r->provider_reason : NULL);
  buf_printf(&b, ",\"seq\":%llu,\"node_rc\":%d,\"expected_gpus\":%u",
             (unsigned long long)r->seq, r->node_rc, r->expected_gpus);
  buf_printf(&b, ",\"draining\":%s,\"drain_reason\":",
             r->draining ? "true" : "false");
  json_str(&b, r->draining ? r->drain_reason : NULL);
  buf_puts(&b, ",\"gpus\":[");
  for (unsigned i = 0; i < r->n_gpus && i < GPU_MAX; i++) {
    const gpu_health *g = &r->gpu[i];
    buf_printf(&b, "%s{\"index\":%u,\"uuid\":", i > 0 ? "," : "", g->r.index);
    json_str(&b, g->r.uuid);
    buf_puts(&b, ",\"name\":");
    json_str(&b, (g->r.valid & GPU_F_NAME) ? g->r.name : NULL);
    buf_printf(&b, ",\"state\":\"%s\",\"reason\":", gpu_state_name(g->state));
    json_str(&b, g->reason);
    buf_printf(&b, ",\"since_ms\":%lld,\"transitions\":%u,\"readings\":",
               (long long)g->since_ms, g->transitions);
    json_readings(&b, &g->r);
    buf_putc(&b, '}');
  }
  buf_puts(&b, "]}");
  if (!buf_ok(&b)) {
    buf_free(&b);
    return NULL;
  }
  return buf_steal(&b);
}

char *health_json(health *h) {
  node_gpu_report *r = malloc(sizeof *r);
  if (r == NULL)
    return NULL;
  health_snapshot(h, r);
  char *s = health_report_json(r);
  free(r);
  return s;
}
