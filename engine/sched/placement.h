/*
 * placement.h — which of a node's GPUs a step gets, if any (pure).
 *
 * The input is one node's view of its GPUs: each GPU's health state, the
 * free memory NVML reports and what the node itself has reserved for the
 * attempts it runs there. A step needs `gpus` distinct GPUs, each with
 * `mem_mb` MB free; mem_mb 0 means "whole GPUs": only GPUs nobody else
 * holds fit, and the reservation then takes the whole GPU.
 *
 * Free memory of a GPU is the smaller of NVML's figure and the node's own
 * unreserved accounting (total − reserved), because NVML lags new leases.
 *
 * Only HEALTHY GPUs are used; DEGRADED ones only when allow_degraded is set
 * and healthy ones alone cannot fit the step (a last resort). A draining
 * node fits nothing. Among fitting GPUs placement prefers the healthiest
 * (no recent recovery), then, with PLACEMENT_BINPACK (the default), the
 * fullest one that still fits (fewest free MB: keeps whole GPUs free for
 * multi-GPU steps), or with PLACEMENT_SPREAD the emptiest one; then lower
 * utilisation, then the lower index.
 *
 * Pure: no I/O, no clock, no allocation. Thread: the caller's.
 */
#ifndef SKALD_SCHED_PLACEMENT_H
#define SKALD_SCHED_PLACEMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "health/gpu.h"

typedef enum placement_policy {
  PLACEMENT_BINPACK = 0,
  PLACEMENT_SPREAD = 1
} placement_policy;

typedef struct placement_gpu {
  unsigned index;
  gh_state state;
  int64_t nvml_free_mb;  /* NVML's free memory; -1 = unknown (use total) */
  int64_t total_mb;      /* 0 = unknown: memory requests never fit */
  int64_t reserved_mb;   /* this node's reservations on the GPU */
  unsigned holders;      /* attempts placed on it now */
  unsigned util;         /* %, 0 if unknown */
  bool recently_recovered; /* flap penalty */
} placement_gpu;

typedef struct placement_node {
  placement_gpu gpu[GPU_MAX];
  unsigned n;
  bool draining;
  bool allow_degraded;
  placement_policy policy;
} placement_node;

/* Free MB of g for placement: min(NVML free, total − reserved), ≥ 0. */
int64_t placement_free_mb(const placement_gpu *g);
/* What one GPU gives up for a step asking mem_mb (0: the whole GPU). */
int64_t placement_reserve_mb(const placement_gpu *g, int64_t mem_mb);

/* Picks `gpus` GPUs for a step needing mem_mb on each. On success writes
 * their indexes (GPU numbers, not array slots) to out[0..gpus) in preferred
 * order and returns true; *degraded tells whether the last resort was
 * used. gpus must be 1..GPU_MAX. Returns false when the step does not fit
 * now (nothing is written). */
bool placement_pick(const placement_node *n, int gpus, int64_t mem_mb,
                    unsigned out[], bool *degraded);

/* The node's fit envelope for the dequeue: caps[k-1] is the largest
 * per-GPU memory request (MB) that k GPUs can take at once (0 < k ≤ *n_caps)
 * and *idle the number of usable GPUs that nobody holds (for whole-GPU
 * steps). A draining node gets *n_caps = 0 and *idle = 0. caps has room for
 * GPU_MAX entries. */
void placement_envelope(const placement_node *n, int64_t caps[GPU_MAX],
                        unsigned *n_caps, unsigned *idle);

/* Writes "0,1" style GPU lists (CUDA_VISIBLE_DEVICES form). */
void placement_format(const unsigned *idx, unsigned n, char *buf, size_t len);

#endif /* SKALD_SCHED_PLACEMENT_H */
