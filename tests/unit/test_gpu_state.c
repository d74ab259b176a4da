/*
 * test_gpu_state.c — health/classify.c's hysteresis machine: sequences of
 * verdicts with the clock passed in, checking the state after each one.
 * Covers flapping (never two WARNs in a row), degrade after 2 WARNs (1 for
 * hardware-pending flags), recovery after exactly 12 clean samples, sticky
 * UNHEALTHY (WARN restarts the count; going stale does not launder it),
 * staleness after 3 missed intervals, node draining on XID 79 and on a
 * driver that is not loaded, and operator undrain.
 */
#include "health/classify.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"

static void quiet(void) { log_set_level(LOG_ERROR); }

TestSuite(gpu_state, .init = quiet);

static classify_config cfg;
static int64_t now;

static void setup(void) {
  quiet();
  classify_config_init(&cfg);
  now = 0;
}

static gpu_health fresh(void) {
  gpu_health g;
  memset(&g, 0, sizeof g);
  g.state = GH_UNKNOWN;
  return g;
}

/* One sample with a verdict of `level` 5 s after the previous one. */
static gh_state feed(gpu_health *g, classify_level level, bool pending) {
  classify_verdict v = {.level = level, .hw_pending = pending};
  snprintf(v.reason, sizeof v.reason, "%s", level == CLASSIFY_OK ? "ok"
                                           : level == CLASSIFY_WARN ? "warm"
                                                                    : "broken");
  now += 5000;
  classify_step(g, &v, &cfg, now);
  return g->state;
}

static void feed_n(gpu_health *g, classify_level level, int n) {
  for (int i = 0; i < n; i++)
    feed(g, level, false);
}

Test(gpu_state, unknown_to_healthy_on_first_clean_sample, .init = setup) {
  gpu_health g = fresh();
  cr_expect_eq(feed(&g, CLASSIFY_OK, false), GH_HEALTHY);
  cr_expect_eq(g.transitions, 1);
  cr_expect_eq(g.since_ms, 5000);
}

Test(gpu_state, unknown_with_warn_is_degraded, .init = setup) {
  gpu_health g = fresh();
  cr_expect_eq(feed(&g, CLASSIFY_WARN, false), GH_DEGRADED);
}

Test(gpu_state, two_consecutive_warns_degrade, .init = setup) {
  gpu_health g = fresh();
  feed(&g, CLASSIFY_OK, false);
  cr_expect_eq(feed(&g, CLASSIFY_WARN, false), GH_HEALTHY);
  cr_expect_eq(feed(&g, CLASSIFY_WARN, false), GH_DEGRADED);
  cr_expect_str_eq(g.reason, "warm");
}

Test(gpu_state, flapping_never_degrades, .init = setup) {
  gpu_health g = fresh();
  feed(&g, CLASSIFY_OK, false);
  for (int i = 0; i < 20; i++) {
    cr_expect_eq(feed(&g, CLASSIFY_WARN, false), GH_HEALTHY);
    cr_expect_eq(feed(&g, CLASSIFY_OK, false), GH_HEALTHY);
  }
  cr_expect_eq(g.transitions, 1);
}

Test(gpu_state, hardware_pending_degrades_at_once, .init = setup) {
  gpu_health g = fresh();
  feed(&g, CLASSIFY_OK, false);
  cr_expect_eq(feed(&g, CLASSIFY_WARN, true), GH_DEGRADED);
}

Test(gpu_state, recovery_after_exactly_12_clean, .init = setup) {
  gpu_health g = fresh();
  feed(&g, CLASSIFY_OK, false);
  feed_n(&g, CLASSIFY_WARN, 2);
  cr_assert_eq(g.state, GH_DEGRADED);
  feed_n(&g, CLASSIFY_OK, 11);
  cr_expect_eq(g.state, GH_DEGRADED);
  cr_expect_eq(feed(&g, CLASSIFY_OK, false), GH_HEALTHY);
  cr_expect_eq(g.recovered_ms, now);
  cr_expect_str_eq(g.reason, "recovered");
}

Test(gpu_state, warn_restarts_recovery_count, .init = setup) {
  gpu_health g = fresh();
  feed(&g, CLASSIFY_WARN, false);
  feed_n(&g, CLASSIFY_OK, 10);
  feed(&g, CLASSIFY_WARN, false);
  feed_n(&g, CLASSIFY_OK, 11);
  cr_expect_eq(g.state, GH_DEGRADED);
  cr_expect_eq(feed(&g, CLASSIFY_OK, false), GH_HEALTHY);
}

Test(gpu_state, one_fail_is_unhealthy_from_any_state, .init = setup) {
  gh_state from[] = {GH_UNKNOWN, GH_HEALTHY, GH_DEGRADED};
  for (size_t i = 0; i < 3; i++) {
    gpu_health g = fresh();
    g.state = from[i];
    cr_expect_eq(feed(&g, CLASSIFY_FAIL, false), GH_UNHEALTHY);
    cr_expect(g.sticky);
    cr_expect_str_eq(g.reason, "broken");
  }
}

Test(gpu_state, unhealthy_is_sticky, .init = setup) {
  gpu_health g = fresh();
  feed(&g, CLASSIFY_OK, false);
  feed(&g, CLASSIFY_FAIL, false);
  feed_n(&g, CLASSIFY_OK, 11);
  cr_expect_eq(g.state, GH_UNHEALTHY);
  feed(&g, CLASSIFY_WARN, false); /* e.g. remap still pending */
  cr_expect_eq(g.state, GH_UNHEALTHY);
  cr_expect_str_eq(g.reason, "broken"); /* keeps the fault's reason */
  feed(&g, CLASSIFY_FAIL, false);       /* fault back: count restarts */
  feed_n(&g, CLASSIFY_OK, 11);
  cr_expect_eq(g.state, GH_UNHEALTHY);
  cr_expect_eq(feed(&g, CLASSIFY_OK, false), GH_HEALTHY);
  cr_expect(!g.sticky);
  cr_expect_eq(g.recovered_ms, now);
}

Test(gpu_state, configurable_counts, .init = setup) {
  cfg.degrade_after_warns = 3;
  cfg.clear_unhealthy_after = 2;
  gpu_health g = fresh();
  feed(&g, CLASSIFY_OK, false);
  feed_n(&g, CLASSIFY_WARN, 2);
  cr_expect_eq(g.state, GH_HEALTHY);
  cr_expect_eq(feed(&g, CLASSIFY_WARN, false), GH_DEGRADED);
  feed(&g, CLASSIFY_FAIL, false);
  feed(&g, CLASSIFY_OK, false);
  cr_expect_eq(feed(&g, CLASSIFY_OK, false), GH_HEALTHY);
}

Test(gpu_state, stale_after_three_missed_intervals, .init = setup) {
  cr_expect(!classify_is_stale(0, 15000, &cfg));
  cr_expect(classify_is_stale(0, 15001, &cfg));
  node_gpu_report r;
  memset(&r, 0, sizeof r);
  r.n_gpus = 2;
  r.recv_mono_ms = 1000;
  r.gpu[0] = fresh();
  r.gpu[1] = fresh();
  feed(&r.gpu[0], CLASSIFY_OK, false);
  feed(&r.gpu[1], CLASSIFY_FAIL, false);
  cr_expect(!classify_apply_staleness(&r, 16000, &cfg));
  cr_expect_eq(r.gpu[0].state, GH_HEALTHY);
  cr_expect(classify_apply_staleness(&r, 16001, &cfg));
  cr_expect_eq(r.gpu[0].state, GH_UNKNOWN);
  cr_expect_eq(r.gpu[1].state, GH_UNKNOWN);
  cr_expect_str_eq(r.gpu[0].reason, "report is stale");
  /* Reports resume: the healthy GPU is healthy again at once; the one that
   * was unhealthy goes back to UNHEALTHY and needs its 12 clean samples. */
  cr_expect_eq(feed(&r.gpu[0], CLASSIFY_OK, false), GH_HEALTHY);
  cr_expect_eq(feed(&r.gpu[1], CLASSIFY_OK, false), GH_UNHEALTHY);
  feed_n(&r.gpu[1], CLASSIFY_OK, 11);
  cr_expect_eq(r.gpu[1].state, GH_HEALTHY);
}

Test(gpu_state, stale_sticky_gpu_with_warn_is_unhealthy, .init = setup) {
  gpu_health g = fresh();
  feed(&g, CLASSIFY_FAIL, false);
  classify_mark_stale(&g, "report is stale", now);
  cr_expect_eq(feed(&g, CLASSIFY_WARN, false), GH_UNHEALTHY);
}

Test(gpu_state, node_drains_on_xid_79, .init = setup) {
  node_gpu_report r;
  memset(&r, 0, sizeof r);
  r.n_gpus = 1;
  r.gpu[0] = fresh();
  gpu_readings rd = {.xid_new = 79};
  classify_verdict v;
  classify_gpu(&rd, NULL, &cfg, &v);
  classify_step(&r.gpu[0], &v, &cfg, 5000);
  classify_node_step(&r, &v);
  cr_expect_eq(r.gpu[0].state, GH_UNHEALTHY);
  cr_expect(r.draining);
  cr_expect_str_eq(r.drain_reason, "xid 79: gpu fell off the bus");
  /* a later clean verdict does not undrain */
  classify_verdict ok = {.level = CLASSIFY_OK};
  classify_node_step(&r, &ok);
  cr_expect(r.draining);
}

Test(gpu_state, node_drains_when_driver_not_loaded, .init = setup) {
  node_gpu_report r;
  memset(&r, 0, sizeof r);
  r.node_rc = 9;
  classify_verdict v;
  classify_node(&r, &cfg, &v);
  classify_node_step(&r, &v);
  cr_expect(r.draining);
  cr_expect_str_eq(r.drain_reason, "driver not loaded");
}

Test(gpu_state, per_gpu_fault_does_not_drain, .init = setup) {
  node_gpu_report r;
  memset(&r, 0, sizeof r);
  gpu_readings rd = {.valid = GPU_F_ECC_VOL, .ecc_vol_unc = 1};
  classify_verdict v;
  classify_gpu(&rd, NULL, &cfg, &v);
  classify_node_step(&r, &v);
  cr_expect(!r.draining);
}

Test(gpu_state, undrain_clears_stickiness, .init = setup) {
  gpu_health g = fresh();
  feed(&g, CLASSIFY_FAIL, false);
  cr_expect(classify_undrain(&g, now));
  cr_expect_eq(g.state, GH_UNKNOWN);
  cr_expect_str_eq(g.reason, "undrained by operator");
  cr_expect_eq(feed(&g, CLASSIFY_OK, false), GH_HEALTHY);
  gpu_health h = fresh();
  feed(&h, CLASSIFY_FAIL, false);
  classify_undrain(&h, now);
  cr_expect_eq(feed(&h, CLASSIFY_FAIL, false), GH_UNHEALTHY);
}
