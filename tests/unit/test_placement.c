/*
 * test_placement.c — GPU fit and choice (engine/sched/placement.c):
 * healthy only, degraded as a last resort, free memory as the minimum of
 * NVML and our own accounting, whole-GPU requests, bin-pack vs spread,
 * draining, and the dequeue envelope.
 */
#include "sched/placement.h"

#include <criterion/criterion.h>
#include <string.h>

static placement_node node(unsigned n, int64_t total_mb) {
  placement_node p;
  memset(&p, 0, sizeof(p));
  p.n = n;
  for (unsigned i = 0; i < n; i++) {
    p.gpu[i].index = i;
    p.gpu[i].state = GH_HEALTHY;
    p.gpu[i].nvml_free_mb = total_mb;
    p.gpu[i].total_mb = total_mb;
  }
  return p;
}

Test(placement, free_is_min_of_nvml_and_accounting) {
  placement_gpu g = {.nvml_free_mb = 70000, .total_mb = 80000,
                     .reserved_mb = 20000};
  cr_assert_eq(placement_free_mb(&g), 60000);
  g.nvml_free_mb = 50000;
  cr_assert_eq(placement_free_mb(&g), 50000);
  g.nvml_free_mb = -1; /* unknown: our accounting */
  cr_assert_eq(placement_free_mb(&g), 60000);
  g.reserved_mb = 90000;
  cr_assert_eq(placement_free_mb(&g), 0);
}

Test(placement, only_healthy_gpus) {
  placement_node n = node(3, 16000);
  n.gpu[0].state = GH_UNHEALTHY;
  n.gpu[1].state = GH_UNKNOWN;
  unsigned out[GPU_MAX];
  bool deg = true;
  cr_assert(placement_pick(&n, 1, 8000, out, &deg));
  cr_assert_eq(out[0], 2);
  cr_assert_not(deg);
  cr_assert_not(placement_pick(&n, 2, 8000, out, NULL));
}

Test(placement, degraded_only_as_last_resort) {
  placement_node n = node(2, 16000);
  n.gpu[0].state = GH_DEGRADED;
  unsigned out[GPU_MAX];
  bool deg = false;
  cr_assert_not(placement_pick(&n, 2, 1000, out, &deg));
  n.allow_degraded = true;
  cr_assert(placement_pick(&n, 1, 1000, out, &deg));
  cr_assert_eq(out[0], 1, "a healthy GPU wins while one fits");
  cr_assert_not(deg);
  cr_assert(placement_pick(&n, 2, 1000, out, &deg));
  cr_assert(deg);
  cr_assert_eq(out[0], 1);
  cr_assert_eq(out[1], 0);
}

Test(placement, binpack_prefers_fullest_that_fits) {
  placement_node n = node(3, 16000);
  n.gpu[1].reserved_mb = 6000;  /* 10000 free */
  n.gpu[2].reserved_mb = 12000; /* 4000 free: too small */
  unsigned out[GPU_MAX];
  cr_assert(placement_pick(&n, 1, 8000, out, NULL));
  cr_assert_eq(out[0], 1);
  n.policy = PLACEMENT_SPREAD;
  cr_assert(placement_pick(&n, 1, 8000, out, NULL));
  cr_assert_eq(out[0], 0);
}

Test(placement, nvml_lag_is_respected) {
  placement_node n = node(1, 16000);
  n.gpu[0].nvml_free_mb = 5000; /* someone else uses the GPU */
  unsigned out[GPU_MAX];
  cr_assert_not(placement_pick(&n, 1, 8000, out, NULL));
  cr_assert(placement_pick(&n, 1, 4000, out, NULL));
}

Test(placement, whole_gpu_requests) {
  placement_node n = node(2, 16000);
  n.gpu[0].holders = 1;
  n.gpu[0].reserved_mb = 1000;
  unsigned out[GPU_MAX];
  cr_assert(placement_pick(&n, 1, 0, out, NULL));
  cr_assert_eq(out[0], 1);
  cr_assert_not(placement_pick(&n, 2, 0, out, NULL));
  cr_assert_eq(placement_reserve_mb(&n.gpu[1], 0), 16000);
  cr_assert_eq(placement_reserve_mb(&n.gpu[1], 300), 300);
}

Test(placement, draining_fits_nothing) {
  placement_node n = node(4, 80000);
  n.draining = true;
  unsigned out[GPU_MAX];
  cr_assert_not(placement_pick(&n, 1, 1, out, NULL));
  int64_t caps[GPU_MAX];
  unsigned nc = 9, idle = 9;
  placement_envelope(&n, caps, &nc, &idle);
  cr_assert_eq(nc, 0);
  cr_assert_eq(idle, 0);
}

Test(placement, envelope_matches_pick) {
  placement_node n = node(4, 16000);
  n.gpu[0].reserved_mb = 10000; /* 6000 */
  n.gpu[0].holders = 1;
  n.gpu[1].state = GH_UNHEALTHY;
  n.gpu[2].nvml_free_mb = 9000; /* 9000 */
  int64_t caps[GPU_MAX];
  unsigned nc = 0, idle = 0;
  placement_envelope(&n, caps, &nc, &idle);
  cr_assert_eq(nc, 3);
  cr_assert_eq(caps[0], 16000);
  cr_assert_eq(caps[1], 9000);
  cr_assert_eq(caps[2], 6000);
  cr_assert_eq(idle, 2);
  unsigned out[GPU_MAX];
  for (unsigned k = 1; k <= 3; k++) {
    cr_assert(placement_pick(&n, (int)k, caps[k - 1], out, NULL));
    cr_assert_not(placement_pick(&n, (int)k, caps[k - 1] + 1, out, NULL));
  }
}

Test(placement, format) {
  unsigned idx[3] = {2, 0, 11};
  char buf[32];
  placement_format(idx, 3, buf, sizeof(buf));
  cr_assert_str_eq(buf, "2,0,11");
  placement_format(idx, 0, buf, sizeof(buf));
  cr_assert_str_eq(buf, "");
}
