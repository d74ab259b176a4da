/*
 * placement.c — GPU fit and choice for one node (placement.h).
 *
 * Two passes: healthy GPUs only, then (if allowed) healthy and degraded
 * ones. Each pass filters the GPUs that fit the per-GPU request, sorts them
 * by preference and takes the first `gpus`. With at most GPU_MAX (16) GPUs
 * an insertion sort is all that is needed.
 *
 * Pure: no I/O, no clock, no allocation. Thread: the caller's.
 */
#include "sched/placement.h"

#include <stdio.h>

int64_t placement_free_mb(const placement_gpu *g) {
  int64_t own = g->total_mb - g->reserved_mb;
  int64_t f = g->nvml_free_mb >= 0 && g->nvml_free_mb < own ? g->nvml_free_mb
                                                            : own;
  return f > 0 ? f : 0;
}

int64_t placement_reserve_mb(const placement_gpu *g, int64_t mem_mb) {
  return mem_mb > 0 ? mem_mb : (g->total_mb > 0 ? g->total_mb : 1);
}

static bool usable(const placement_gpu *g, bool with_degraded) {
  return g->state == GH_HEALTHY || (with_degraded && g->state == GH_DEGRADED);
}

static bool fits(const placement_gpu *g, int64_t mem_mb) {
  if (mem_mb <= 0)
    return g->holders == 0 && g->reserved_mb == 0;
  return placement_free_mb(g) >= mem_mb;
}

/* True if a is preferred over b. */
static bool better(const placement_gpu *a, const placement_gpu *b,
                   placement_policy policy) {
  if (a->state != b->state)
    return a->state == GH_HEALTHY;
  if (a->recently_recovered != b->recently_recovered)
    return !a->recently_recovered;
  int64_t fa = placement_free_mb(a), fb = placement_free_mb(b);
  if (fa != fb)
    return policy == PLACEMENT_SPREAD ? fa > fb : fa < fb;
  if (a->util != b->util)
    return a->util < b->util;
  return a->index < b->index;
}

static unsigned candidates(const placement_node *n, int64_t mem_mb,
                           bool with_degraded, const placement_gpu *c[]) {
  unsigned k = 0;
  for (unsigned i = 0; i < n->n && i < GPU_MAX; i++) {
    const placement_gpu *g = &n->gpu[i];
    if (!usable(g, with_degraded) || !fits(g, mem_mb))
      continue;
    unsigned j = k++;
    while (j > 0 && better(g, c[j - 1], n->policy)) {
      c[j] = c[j - 1];
      j--;
    }
    c[j] = g;
  }
  return k;
}

bool placement_pick(const placement_node *n, int gpus, int64_t mem_mb,
                    unsigned out[], bool *degraded) {
  if (degraded != NULL)
    *degraded = false;
  if (n->draining || gpus < 1 || gpus > GPU_MAX)
    return false;
  for (int pass = 0; pass < 2; pass++) {
    bool with_degraded = pass == 1;
    if (with_degraded && !n->allow_degraded)
      break;
    const placement_gpu *c[GPU_MAX];
    unsigned k = candidates(n, mem_mb, with_degraded, c);
    if (k < (unsigned)gpus)
      continue;
    for (int i = 0; i < gpus; i++) {
      out[i] = c[i]->index;
      if (degraded != NULL && c[i]->state == GH_DEGRADED)
        *degraded = true;
    }
    return true;
  }
  return false;
}

void placement_envelope(const placement_node *n, int64_t caps[GPU_MAX],
                        unsigned *n_caps, unsigned *idle) {
  *n_caps = 0;
  *idle = 0;
  if (n->draining)
    return;
  for (unsigned i = 0; i < n->n && i < GPU_MAX; i++) {
    const placement_gpu *g = &n->gpu[i];
    if (!usable(g, n->allow_degraded))
      continue;
    if (g->holders == 0 && g->reserved_mb == 0)
      (*idle)++;
    int64_t f = placement_free_mb(g);
    unsigned j = (*n_caps)++;
    while (j > 0 && caps[j - 1] < f) { /* descending */
      caps[j] = caps[j - 1];
      j--;
    }
    caps[j] = f;
  }
}

void placement_format(const unsigned *idx, unsigned n, char *buf, size_t len) {
  size_t used = 0;
  if (len == 0)
    return;
  buf[0] = '\0';
  for (unsigned i = 0; i < n && used < len; i++) {
    int w = snprintf(buf + used, len - used, i == 0 ? "%u" : ",%u", idx[i]);
    if (w < 0)
      return;
    used += (size_t)w;
  }
}
