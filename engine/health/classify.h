/*
 * classify.h — GPU health: readings → verdict, and the hysteresis machine.
 *
 * classify_gpu() is a pure function from one sample's readings (plus the
 * previous sample, for rates) to FAIL / WARN / OK with a reason.
 * classify_step() feeds a verdict into the per-GPU state machine:
 *
 *   UNKNOWN   initial, stale, or no provider: no new GPU leases.
 *   any → UNHEALTHY  at once on one FAIL. Sticky: it clears only when the
 *             fault is gone and `clear_unhealthy_after` clean samples follow
 *             (then → HEALTHY). A WARN sample while sticky restarts the count.
 *   HEALTHY → DEGRADED  after `degrade_after_warns` consecutive WARN samples
 *             (`degrade_after_pending` for hardware-pending flags: row remap
 *             or page retirement pending).
 *   DEGRADED → HEALTHY  after `clear_degraded_after` consecutive clean ones.
 *   UNKNOWN → HEALTHY on a clean sample, → DEGRADED on a WARN one (we know
 *             nothing better), back to UNHEALTHY if it was sticky.
 *
 * A verdict with node_wide set (XID 79, recovery NODE_REBOOT, driver not
 * loaded, library/driver mismatch, fewer GPUs than expected) also makes the
 * node DRAINING; that is sticky until an operator undrains.
 *
 * Pure: time is passed in; nothing here does I/O apart from logging state
 * changes. Thread: the caller's (the sampler holds its lock around it).
 */
#ifndef SKALD_HEALTH_CLASSIFY_H
#define SKALD_HEALTH_CLASSIFY_H

#include <stdbool.h>
#include <stdint.h>

#include "health/gpu.h"

#define CLASSIFY_LEVEL_MAP(X)                                                  \
  X(OK, "ok")                                                                  \
  X(WARN, "warn")                                                              \
  X(FAIL, "fail")

typedef enum classify_level {
#define CLASSIFY_LEVEL_ENUM(name, str) CLASSIFY_##name,
  CLASSIFY_LEVEL_MAP(CLASSIFY_LEVEL_ENUM)
#undef CLASSIFY_LEVEL_ENUM
} classify_level;

#define CLASSIFY_APP_XIDS_MAX 16

typedef struct classify_config {
  int64_t interval_ms;            /* sampling interval (5000) */
  unsigned stale_intervals;       /* missed intervals → UNKNOWN (3) */
  unsigned degrade_after_warns;   /* (2) */
  unsigned degrade_after_pending; /* (1) */
  unsigned clear_degraded_after;  /* (12) */
  unsigned clear_unhealthy_after; /* (12) */
  int temp_warn_margin_c;         /* WARN at slowdown − margin (5) */
  int temp_slowdown_c;            /* used when the device has none (0 = off) */
  int temp_shutdown_c;            /* used when the device has none (0 = off) */
  unsigned retired_pages_fail;    /* SBE+DBE retired pages (63) */
  double pcie_replays_per_min;    /* WARN above (16: Gen4 x16, 0.96/lane) */
  unsigned app_xid_warn_count;    /* app XIDs in the window (3) */
  int64_t app_xid_window_ms;      /* (600000) */
  unsigned app_xids[CLASSIFY_APP_XIDS_MAX]; /* {13,31,43,45,68,109} */
  unsigned n_app_xids;
} classify_config;

typedef struct classify_verdict {
  classify_level level;
  bool node_wide;  /* the fault concerns the whole node: drain it */
  bool hw_pending; /* a WARN from a hardware-pending flag (degrades at once) */
  char reason[GPU_REASON_MAX];
} classify_verdict;

const char *classify_level_name(classify_level l);
/* Defaults as listed above. */
void classify_config_init(classify_config *cfg);
/* Whether xid is an application XID (a step failure, not a GPU fault). */
bool classify_xid_is_app(const classify_config *cfg, unsigned xid);

/* Classifies one sample. prev (may be NULL) is the previous sample of the
 * same GPU, used only for the PCIe replay rate. Never fails. */
void classify_gpu(const gpu_readings *cur, const gpu_readings *prev,
                  const classify_config *cfg, classify_verdict *out);
/* Node-level faults of a report: node_rc and missing GPUs. Sets out to OK
 * when there are none. */
void classify_node(const node_gpu_report *r, const classify_config *cfg,
                   classify_verdict *out);

/* Feeds one verdict into g's state machine at now_ms. Returns true if the
 * state changed. */
bool classify_step(gpu_health *g, const classify_verdict *v,
                   const classify_config *cfg, int64_t now_ms);
/* Marks g UNKNOWN (stale report, provider gone) with reason; an UNHEALTHY
 * GPU stays sticky so it cannot come back HEALTHY by going silent. Returns
 * true if the state changed. */
bool classify_mark_stale(gpu_health *g, const char *reason, int64_t now_ms);
/* Whether a report last received at last_ms is stale at now_ms (more than
 * stale_intervals × interval_ms ago). */
bool classify_is_stale(int64_t last_ms, int64_t now_ms,
                       const classify_config *cfg);
/* If r (received at r->recv_mono_ms) is stale at now_ms, marks all its GPUs
 * UNKNOWN. Returns true if it was stale. */
bool classify_apply_staleness(node_gpu_report *r, int64_t now_ms,
                              const classify_config *cfg);
/* Operator undrain of one GPU: forgets stickiness and makes it UNKNOWN, so
 * the next clean sample makes it HEALTHY (a fault still present makes it
 * UNHEALTHY again at once). Returns true if the state changed. */
bool classify_undrain(gpu_health *g, int64_t now_ms);
/* Applies a node-level verdict: a node-wide one sets draining (sticky). */
void classify_node_step(node_gpu_report *r, const classify_verdict *v);

#endif /* SKALD_HEALTH_CLASSIFY_H */
