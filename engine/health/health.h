/*
 * health.h — the node's GPU health sampler.
 *
 * A health object owns a provider (NVML, fake or none), samples it every
 * interval on its own thread (health_start) or when asked
 * (health_sample_now), feeds each GPU's readings through classify_gpu() and
 * the hysteresis machine, and keeps the latest node_gpu_report. Readers get
 * a consistent copy with health_snapshot() or JSON with health_json() (the
 * body of /v1/nodes' "gpus" later).
 *
 * If the chosen provider cannot open (no libnvidia-ml, missing required
 * symbol) the object falls back to `none`: zero GPUs, and the report's
 * provider_reason says why. That is not an error: GPU steps are simply
 * unschedulable on such a node.
 *
 * Thread: all functions are thread-safe. With an injected clock
 * (options.now), tests drive everything with health_sample_now() and do
 * not call health_start().
 */
#ifndef SKALD_HEALTH_HEALTH_H
#define SKALD_HEALTH_HEALTH_H

#include <stdbool.h>
#include <stdint.h>

#include <skald/skald.h>

#include "health/classify.h"
#include "health/gpu.h"
#include "health/provider.h"

typedef struct health health;

typedef struct health_options {
  const char *provider;   /* "nvml"|"fake"|"none"; NULL: SKALD_GPU_PROVIDER */
  gpu_provider *custom;   /* set up, not opened; ownership moves to health
                             (even on failure); overrides `provider` */
  classify_config cfg;    /* thresholds; cfg.interval_ms is the period */
  const char *node_id;    /* copied; NULL = "" */
  unsigned expected_gpus; /* 0: the count found by the first sample */
  bool event_thread;      /* health_start also runs a wait_event thread */
  unsigned event_timeout_ms; /* wait_event timeout (5000) */
  provider_clock_fn now;  /* NULL: clock_mono_ms */
  void *clock_ctx;
} health_options;

/* Defaults: provider from the environment, classify_config_init(), event
 * thread on, 5000 ms event timeout, the monotonic clock. */
void health_options_init(health_options *o);

/* Creates the sampler and opens its provider. Errors: SK_EINVAL (unknown
 * provider name, bad fake script: err says which line), SK_EIO (fake script
 * unreadable), SK_ENOMEM. */
int health_new(const health_options *o, health **out, sk_error *err);
/* Starts the sampler thread (and the event thread when asked and the
 * provider has events). SK_ESTATE if already started. */
int health_start(health *h);
/* Takes one sample now: drains pending events when no event thread runs,
 * samples, classifies, updates the report. 0, or the provider's error (the
 * report then keeps its previous receive time and goes stale). */
int health_sample_now(health *h);
/* Copies the report (after applying staleness at the current time). */
void health_snapshot(health *h, node_gpu_report *out);
/* The report as JSON (malloc'd; free()); NULL on OOM. */
char *health_json(health *h);
/* Renders a report as JSON (malloc'd; free()); NULL on OOM. */
char *health_report_json(const node_gpu_report *r);
/* Operator undrain: clears the node's draining flag and every GPU's
 * stickiness (see classify_undrain). */
void health_undrain(health *h);
/* Stops threads, closes the provider, frees h. NULL is fine. */
void health_free(health *h);

#endif /* SKALD_HEALTH_HEALTH_H */
