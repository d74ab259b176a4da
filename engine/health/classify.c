/*
 * classify.c — GPU health rules and the per-GPU hysteresis machine (see
 * classify.h and docs/gpu.md).
 *
 * Rules follow docs/gpu.md: DCGM's FAIL set is the minimum, k8s-device-plugin
 * decides which XIDs are the application's, and saturation (memory full,
 * util high) is never a health fact. A field whose GPU_F_* bit is clear was
 * not read and is skipped.
 *
 * Invariants: every state change goes through set_state(), which logs it;
 * the sticky flag is set on entering UNHEALTHY and cleared only when the
 * GPU has recovered to HEALTHY.
 *
 * Thread: the caller's; pure apart from logging.
 */
#include "health/classify.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"

const char *classify_level_name(classify_level l) {
  switch (l) {
#define CLASSIFY_LEVEL_CASE(name, str)                                         \
  case CLASSIFY_##name:                                                        \
    return str;
    CLASSIFY_LEVEL_MAP(CLASSIFY_LEVEL_CASE)
#undef CLASSIFY_LEVEL_CASE
  }
  return "ok";
}

void classify_config_init(classify_config *cfg) {
  static const unsigned app[] = {13, 31, 43, 45, 68, 109};
  *cfg = (classify_config){
      .interval_ms = 5000,
      .stale_intervals = 3,
      .degrade_after_warns = 2,
      .degrade_after_pending = 1,
      .clear_degraded_after = 12,
      .clear_unhealthy_after = 12,
      .temp_warn_margin_c = 5,
      .retired_pages_fail = 63,
      .pcie_replays_per_min = 16.0,
      .app_xid_warn_count = 3,
      .app_xid_window_ms = 600000,
  };
  memcpy(cfg->app_xids, app, sizeof app);
  cfg->n_app_xids = sizeof app / sizeof app[0];
}

bool classify_xid_is_app(const classify_config *cfg, unsigned xid) {
  for (unsigned i = 0; i < cfg->n_app_xids && i < CLASSIFY_APP_XIDS_MAX; i++)
    if (cfg->app_xids[i] == xid)
      return true;
  return false;
}

/* Records a finding: the verdict keeps the worst level and, within it, the
 * first reason (rules run most-serious first). */
static void SK_PRINTF(5, 6) note(classify_verdict *v, classify_level level,
                                 bool node_wide, bool hw_pending,
                                 const char *fmt, ...) {
  v->node_wide |= node_wide;
  if (level == CLASSIFY_WARN)
    v->hw_pending |= hw_pending;
  if (level <= v->level)
    return;
  v->level = level;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(v->reason, sizeof v->reason, fmt, ap);
  va_end(ap);
}

static void rc_name(int rc, char *out, size_t n) {
  switch (rc) {
  case GPU_RC_GPU_IS_LOST:
    snprintf(out, n, "gpu is lost");
    break;
  case GPU_RC_RESET_REQUIRED:
    snprintf(out, n, "gpu reset required");
    break;
  case GPU_RC_CORRUPTED_INFOROM:
    snprintf(out, n, "corrupted inforom");
    break;
  case GPU_RC_DRIVER_NOT_LOADED:
    snprintf(out, n, "driver not loaded");
    break;
  case GPU_RC_LIB_RM_VERSION_MISMATCH:
    snprintf(out, n, "nvml library and driver versions differ");
    break;
  default:
    snprintf(out, n, "nvml error %d", rc);
  }
}

static void check_xid(const gpu_readings *g, const classify_config *cfg,
                      classify_verdict *v) {
  unsigned x = g->xid_new;
  if (x != 0) {
    if (x == 79)
      note(v, CLASSIFY_FAIL, true, false, "xid 79: gpu fell off the bus");
    else if (x == 94 || x == 63)
      note(v, CLASSIFY_WARN, false, false, "xid %u", x);
    else if (!classify_xid_is_app(cfg, x))
      note(v, CLASSIFY_FAIL, false, false, "critical xid %u", x);
  }
  if (cfg->app_xid_warn_count > 0 && g->app_xids_10min >= cfg->app_xid_warn_count)
    note(v, CLASSIFY_WARN, false, false, "%u application xids in window",
         g->app_xids_10min);
}

static void check_temp(const gpu_readings *g, const classify_config *cfg,
                       classify_verdict *v) {
  if (!(g->valid & GPU_F_TEMP))
    return;
  int shut = (g->valid & GPU_F_TEMP_SHUTDOWN) ? g->temp_shutdown_c
                                               : cfg->temp_shutdown_c;
  int slow = (g->valid & GPU_F_TEMP_SLOWDOWN) ? g->temp_slowdown_c
                                               : cfg->temp_slowdown_c;
  if (shut > 0 && g->temp_c >= shut)
    note(v, CLASSIFY_FAIL, false, false, "temperature %d c at shutdown %d c",
         g->temp_c, shut);
  else if (slow > 0 && g->temp_c >= slow - cfg->temp_warn_margin_c)
    note(v, CLASSIFY_WARN, false, false, "temperature %d c near slowdown %d c",
         g->temp_c, slow);
}

static void check_memory(const gpu_readings *g, const classify_config *cfg,
                         classify_verdict *v) {
  if ((g->valid & GPU_F_ECC_VOL) && g->ecc_vol_unc > 0)
    note(v, CLASSIFY_FAIL, false, false, "%llu uncorrected volatile ecc errors",
         (unsigned long long)g->ecc_vol_unc);
  if ((g->valid & GPU_F_REMAP) && g->remap_failed)
    note(v, CLASSIFY_FAIL, false, false, "row remapping failed");
  if ((g->valid & GPU_F_RETIRED) &&
      g->retired_sbe + g->retired_dbe >= cfg->retired_pages_fail)
    note(v, CLASSIFY_FAIL, false, false, "%u retired pages",
         g->retired_sbe + g->retired_dbe);
  if ((g->valid & GPU_F_REMAP) && g->remap_pending)
    note(v, CLASSIFY_WARN, false, true, "row remapping pending");
  if ((g->valid & GPU_F_RETIRED_PENDING) && g->retired_pending)
    note(v, CLASSIFY_WARN, false, true, "page retirement pending");
}

static void check_recovery(const gpu_readings *g, classify_verdict *v) {
  if (!(g->valid & GPU_F_RECOVERY))
    return;
  switch (g->recovery_action) {
  case GPU_RECOVERY_NODE_REBOOT:
    note(v, CLASSIFY_FAIL, true, false, "driver asks for a node reboot");
    break;
  case GPU_RECOVERY_GPU_RESET:
  case GPU_RECOVERY_DRAIN_AND_RESET:
    note(v, CLASSIFY_FAIL, false, false, "driver asks for a gpu reset");
    break;
  case GPU_RECOVERY_DRAIN_P2P:
    note(v, CLASSIFY_WARN, false, false, "driver asks to drain p2p");
    break;
  default:
    break;
  }
}

static void check_pcie(const gpu_readings *cur, const gpu_readings *prev,
                       const classify_config *cfg, classify_verdict *v) {
  if (prev == NULL || !(cur->valid & GPU_F_PCIE_REPLAY) ||
      !(prev->valid & GPU_F_PCIE_REPLAY) || cfg->pcie_replays_per_min <= 0)
    return;
  int64_t dt = cur->sample_ms - prev->sample_ms;
  if (dt <= 0 || cur->pcie_replay < prev->pcie_replay)
    return; /* same sample, or the counter was reset */
  double per_min = (double)(cur->pcie_replay - prev->pcie_replay) * 60000.0 /
                   (double)dt;
  if (per_min > ceil(cfg->pcie_replays_per_min))
    note(v, CLASSIFY_WARN, false, false, "%.0f pcie replays per minute",
         per_min);
}

void classify_gpu(const gpu_readings *cur, const gpu_readings *prev,
                  const classify_config *cfg, classify_verdict *out) {
  *out = (classify_verdict){.level = CLASSIFY_OK};
  if (gpu_rc_is_health_fact(cur->last_rc) || gpu_rc_is_node_wide(cur->last_rc)) {
    char name[64];
    rc_name(cur->last_rc, name, sizeof name);
    note(out, CLASSIFY_FAIL, gpu_rc_is_node_wide(cur->last_rc), false, "%s",
         name);
  }
  check_xid(cur, cfg, out);
  check_recovery(cur, out);
  check_memory(cur, cfg, out);
  check_temp(cur, cfg, out);
  if ((cur->valid & GPU_F_CLOCK_EVENTS) &&
      (cur->clock_events & (GPU_CLOCK_HW_SLOWDOWN | GPU_CLOCK_HW_THERMAL |
                            GPU_CLOCK_HW_POWER_BRAKE)))
    note(out, CLASSIFY_WARN, false, false, "hardware slowdown (clocks 0x%llx)",
         (unsigned long long)cur->clock_events);
  check_pcie(cur, prev, cfg, out);
  if (out->level == CLASSIFY_OK)
    snprintf(out->reason, sizeof out->reason, "ok");
}

void classify_node(const node_gpu_report *r, const classify_config *cfg,
                   classify_verdict *out) {
  *out = (classify_verdict){.level = CLASSIFY_OK};
  if (r->node_rc != 0 && r->node_rc != GPU_RC_TIMEOUT) {
    char name[64];
    rc_name(r->node_rc, name, sizeof name);
    note(out, CLASSIFY_FAIL, gpu_rc_is_node_wide(r->node_rc), false, "%s",
         name);
  }
  if (r->expected_gpus > 0 && r->n_gpus < r->expected_gpus)
    note(out, CLASSIFY_FAIL, true, false, "%u gpus found, %u expected",
         r->n_gpus, r->expected_gpus);
  if (out->level == CLASSIFY_OK)
    snprintf(out->reason, sizeof out->reason, "ok");
}

/* The one place a GPU's state changes. */
static bool set_state(gpu_health *g, gh_state to, const char *reason,
                      int64_t now_ms) {
  snprintf(g->reason, sizeof g->reason, "%s", reason);
  if (g->state == to)
    return false;
  log_write(to == GH_HEALTHY ? LOG_INFO : LOG_WARNING,
            "gpu health changed state", "uuid", g->r.uuid, "#index",
            (int64_t)g->r.index, "from", gpu_state_name(g->state), "to",
            gpu_state_name(to), "reason", reason, NULL);
  if (to == GH_HEALTHY &&
      (g->state == GH_DEGRADED || g->state == GH_UNHEALTHY))
    g->recovered_ms = now_ms;
  if (to == GH_UNHEALTHY)
    g->sticky = true;
  if (to == GH_HEALTHY)
    g->sticky = false;
  g->state = to;
  g->since_ms = now_ms;
  g->transitions++;
  return true;
}

static bool step_clean(gpu_health *g, const classify_config *cfg,
                       int64_t now_ms) {
  g->good_streak++;
  g->bad_streak = 0;
  switch (g->state) {
  case GH_UNKNOWN:
    if (g->sticky)
      return set_state(g, GH_UNHEALTHY, "was unhealthy before going stale",
                       now_ms);
    return set_state(g, GH_HEALTHY, "ok", now_ms);
  case GH_HEALTHY:
    return set_state(g, GH_HEALTHY, "ok", now_ms);
  case GH_DEGRADED:
    if (g->good_streak >= cfg->clear_degraded_after)
      return set_state(g, GH_HEALTHY, "recovered", now_ms);
    return false;
  case GH_UNHEALTHY:
    if (g->good_streak >= cfg->clear_unhealthy_after)
      return set_state(g, GH_HEALTHY, "recovered", now_ms);
    return false;
  }
  return false;
}

static bool step_warn(gpu_health *g, const classify_verdict *v,
                      const classify_config *cfg, int64_t now_ms) {
  g->good_streak = 0;
  g->bad_streak++;
  unsigned need = v->hw_pending ? cfg->degrade_after_pending
                                : cfg->degrade_after_warns;
  switch (g->state) {
  case GH_UNKNOWN:
    if (g->sticky)
      return set_state(g, GH_UNHEALTHY, "was unhealthy before going stale",
                       now_ms);
    return set_state(g, GH_DEGRADED, v->reason, now_ms);
  case GH_HEALTHY:
    if (g->bad_streak >= need)
      return set_state(g, GH_DEGRADED, v->reason, now_ms);
    return false;
  case GH_DEGRADED:
    return set_state(g, GH_DEGRADED, v->reason, now_ms);
  case GH_UNHEALTHY:
    return false; /* sticky: keep the reason of the fault */
  }
  return false;
}

bool classify_step(gpu_health *g, const classify_verdict *v,
                   const classify_config *cfg, int64_t now_ms) {
  switch (v->level) {
  case CLASSIFY_FAIL:
    g->good_streak = 0;
    g->bad_streak++;
    return set_state(g, GH_UNHEALTHY, v->reason, now_ms);
  case CLASSIFY_WARN:
    return step_warn(g, v, cfg, now_ms);
  case CLASSIFY_OK:
    return step_clean(g, cfg, now_ms);
  }
  return false;
}

bool classify_mark_stale(gpu_health *g, const char *reason, int64_t now_ms) {
  g->good_streak = 0;
  g->bad_streak = 0;
  return set_state(g, GH_UNKNOWN, reason, now_ms);
}

bool classify_undrain(gpu_health *g, int64_t now_ms) {
  g->sticky = false;
  g->good_streak = 0;
  g->bad_streak = 0;
  return set_state(g, GH_UNKNOWN, "undrained by operator", now_ms);
}

bool classify_is_stale(int64_t last_ms, int64_t now_ms,
                       const classify_config *cfg) {
  int64_t limit = (int64_t)cfg->stale_intervals * cfg->interval_ms;
  return now_ms - last_ms > limit;
}

bool classify_apply_staleness(node_gpu_report *r, int64_t now_ms,
                              const classify_config *cfg) {
  if (!classify_is_stale(r->recv_mono_ms, now_ms, cfg))
    return false;
  for (unsigned i = 0; i < r->n_gpus && i < GPU_MAX; i++)
    classify_mark_stale(&r->gpu[i], "report is stale", now_ms);
  return true;
}

void classify_node_step(node_gpu_report *r, const classify_verdict *v) {
  if (!v->node_wide || r->draining)
    return;
  r->draining = true;
  snprintf(r->drain_reason, sizeof r->drain_reason, "%s", v->reason);
  log_write(LOG_WARNING, "gpu node draining", "node", r->node_id, "reason",
            v->reason, NULL);
}
