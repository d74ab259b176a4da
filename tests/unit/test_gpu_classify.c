/*
 * test_gpu_classify.c — health/classify.c classify_gpu() and
 * classify_node(): one table row per FAIL / WARN rule of docs/gpu.md, the
 * things that must NOT count (saturation, application XIDs, benign clock
 * reasons, fields whose valid bit is clear = NOT_SUPPORTED), and priority
 * (a FAIL's reason wins over a WARN's).
 *
 * Readings start all-zero with no valid bits; each row sets only what it
 * is about, so a row tests exactly one rule.
 */
#include "health/classify.h"

#include <criterion/criterion.h>
#include <string.h>

#include "common/log.h"

static void quiet(void) { log_set_level(LOG_ERROR); }

TestSuite(gpu_classify, .init = quiet);

#define TEMPS (GPU_F_TEMP | GPU_F_TEMP_SLOWDOWN | GPU_F_TEMP_SHUTDOWN)

typedef struct row {
  const char *name;
  gpu_readings r;
  classify_level level;
  bool node_wide, hw_pending;
  const char *reason; /* substring */
} row;

static const row rows[] = {
    /* ---- FAIL ---- */
    {"gpu is lost", {.last_rc = 15}, CLASSIFY_FAIL, false, false, "gpu is lost"},
    {"reset required", {.last_rc = 16}, CLASSIFY_FAIL, false, false, "reset required"},
    {"corrupted inforom", {.last_rc = 14}, CLASSIFY_FAIL, false, false, "inforom"},
    {"driver not loaded rc", {.last_rc = 9}, CLASSIFY_FAIL, true, false, "driver not loaded"},
    {"rm version mismatch", {.last_rc = 18}, CLASSIFY_FAIL, true, false, "versions differ"},
    {"xid 48 dbe", {.xid_new = 48}, CLASSIFY_FAIL, false, false, "critical xid 48"},
    {"xid 74 nvlink", {.xid_new = 74}, CLASSIFY_FAIL, false, false, "critical xid 74"},
    {"xid 79 off the bus", {.xid_new = 79}, CLASSIFY_FAIL, true, false, "xid 79"},
    {"xid 95 uncontained", {.xid_new = 95}, CLASSIFY_FAIL, false, false, "xid 95"},
    {"xid 119 gsp", {.xid_new = 119}, CLASSIFY_FAIL, false, false, "xid 119"},
    {"xid 120 gsp", {.xid_new = 120}, CLASSIFY_FAIL, false, false, "xid 120"},
    {"xid 140", {.xid_new = 140}, CLASSIFY_FAIL, false, false, "xid 140"},
    {"xid 64", {.xid_new = 64}, CLASSIFY_FAIL, false, false, "xid 64"},
    {"xid 999 unknown", {.xid_new = 999}, CLASSIFY_FAIL, false, false, "xid 999"},
    {"volatile dbe", {.valid = GPU_F_ECC_VOL, .ecc_vol_unc = 1}, CLASSIFY_FAIL, false, false, "uncorrected volatile"},
    {"remap failed", {.valid = GPU_F_REMAP, .remap_failed = 1}, CLASSIFY_FAIL, false, false, "remapping failed"},
    {"63 retired pages", {.valid = GPU_F_RETIRED, .retired_sbe = 40, .retired_dbe = 23}, CLASSIFY_FAIL, false, false, "63 retired"},
    {"at shutdown temp", {.valid = TEMPS, .temp_c = 92, .temp_slowdown_c = 87, .temp_shutdown_c = 92}, CLASSIFY_FAIL, false, false, "shutdown"},
    {"recovery gpu reset", {.valid = GPU_F_RECOVERY, .recovery_action = 1}, CLASSIFY_FAIL, false, false, "reset"},
    {"recovery node reboot", {.valid = GPU_F_RECOVERY, .recovery_action = 2}, CLASSIFY_FAIL, true, false, "reboot"},
    {"recovery drain and reset", {.valid = GPU_F_RECOVERY, .recovery_action = 4}, CLASSIFY_FAIL, false, false, "reset"},
    /* ---- WARN ---- */
    {"remap pending", {.valid = GPU_F_REMAP, .remap_pending = 1}, CLASSIFY_WARN, false, true, "remapping pending"},
    {"retirement pending", {.valid = GPU_F_RETIRED_PENDING, .retired_pending = 1}, CLASSIFY_WARN, false, true, "retirement pending"},
    {"hw slowdown", {.valid = GPU_F_CLOCK_EVENTS, .clock_events = 0x8}, CLASSIFY_WARN, false, false, "hardware slowdown"},
    {"hw thermal", {.valid = GPU_F_CLOCK_EVENTS, .clock_events = 0x40}, CLASSIFY_WARN, false, false, "0x40"},
    {"hw power brake", {.valid = GPU_F_CLOCK_EVENTS, .clock_events = 0x80}, CLASSIFY_WARN, false, false, "0x80"},
    {"near slowdown", {.valid = TEMPS, .temp_c = 82, .temp_slowdown_c = 87, .temp_shutdown_c = 92}, CLASSIFY_WARN, false, false, "near slowdown"},
    {"xid 94 contained", {.xid_new = 94}, CLASSIFY_WARN, false, false, "xid 94"},
    {"xid 63 remap", {.xid_new = 63}, CLASSIFY_WARN, false, false, "xid 63"},
    {"3 app xids", {.app_xids_10min = 3}, CLASSIFY_WARN, false, false, "3 application xids"},
    {"recovery drain p2p", {.valid = GPU_F_RECOVERY, .recovery_action = 3}, CLASSIFY_WARN, false, false, "p2p"},
    /* ---- OK: not health facts ---- */
    {"clean", {.valid = GPU_F_MEM | GPU_F_UTIL}, CLASSIFY_OK, false, false, "ok"},
    {"saturated memory and util", {.valid = GPU_F_MEM | GPU_F_UTIL, .mem_total = 80, .mem_used = 80, .mem_free = 0, .util_gpu = 100, .util_mem = 100}, CLASSIFY_OK, false, false, "ok"},
    {"app xid 13", {.xid_new = 13, .app_xids_10min = 1}, CLASSIFY_OK, false, false, "ok"},
    {"app xid 31", {.xid_new = 31}, CLASSIFY_OK, false, false, "ok"},
    {"app xid 43", {.xid_new = 43}, CLASSIFY_OK, false, false, "ok"},
    {"app xid 45", {.xid_new = 45}, CLASSIFY_OK, false, false, "ok"},
    {"app xid 68", {.xid_new = 68}, CLASSIFY_OK, false, false, "ok"},
    {"app xid 109", {.xid_new = 109}, CLASSIFY_OK, false, false, "ok"},
    {"2 app xids", {.app_xids_10min = 2}, CLASSIFY_OK, false, false, "ok"},
    {"benign and sw clock reasons", {.valid = GPU_F_CLOCK_EVENTS, .clock_events = 0x1 | 0x2 | 0x4 | 0x10 | 0x20}, CLASSIFY_OK, false, false, "ok"},
    {"below warn margin", {.valid = TEMPS, .temp_c = 81, .temp_slowdown_c = 87, .temp_shutdown_c = 92}, CLASSIFY_OK, false, false, "ok"},
    {"62 retired pages", {.valid = GPU_F_RETIRED, .retired_sbe = 62}, CLASSIFY_OK, false, false, "ok"},
    {"corrected and aggregate ecc", {.valid = GPU_F_ECC_VOL | GPU_F_ECC_AGG, .ecc_vol_corr = 1000, .ecc_agg_unc = 5}, CLASSIFY_OK, false, false, "ok"},
    {"uncorrected remapped rows only", {.valid = GPU_F_REMAP, .remap_unc = 100}, CLASSIFY_OK, false, false, "ok"},
    {"recovery none", {.valid = GPU_F_RECOVERY, .recovery_action = 0}, CLASSIFY_OK, false, false, "ok"},
    {"rc not supported", {.last_rc = 3}, CLASSIFY_OK, false, false, "ok"},
    {"rc no permission", {.last_rc = 4}, CLASSIFY_OK, false, false, "ok"},
    {"rc unknown is no fact", {.last_rc = 999}, CLASSIFY_OK, false, false, "ok"},
    /* NOT_SUPPORTED: the value is there but its valid bit is clear. */
    {"unsupported ecc", {.ecc_vol_unc = 9}, CLASSIFY_OK, false, false, "ok"},
    {"unsupported remap", {.remap_failed = 1, .remap_pending = 1}, CLASSIFY_OK, false, false, "ok"},
    {"unsupported retired", {.retired_sbe = 100, .retired_pending = 1}, CLASSIFY_OK, false, false, "ok"},
    {"unsupported temp", {.valid = GPU_F_TEMP_SLOWDOWN | GPU_F_TEMP_SHUTDOWN, .temp_c = 200, .temp_slowdown_c = 87, .temp_shutdown_c = 92}, CLASSIFY_OK, false, false, "ok"},
    {"temp without thresholds", {.valid = GPU_F_TEMP, .temp_c = 200}, CLASSIFY_OK, false, false, "ok"},
    {"unsupported clocks", {.clock_events = 0xff}, CLASSIFY_OK, false, false, "ok"},
    {"unsupported recovery", {.recovery_action = 2}, CLASSIFY_OK, false, false, "ok"},
    /* ---- priority ---- */
    {"fail beats warn", {.valid = GPU_F_CLOCK_EVENTS | GPU_F_ECC_VOL, .clock_events = 0x40, .ecc_vol_unc = 2}, CLASSIFY_FAIL, false, false, "uncorrected"},
    {"rc beats everything", {.last_rc = 15, .xid_new = 48}, CLASSIFY_FAIL, false, false, "gpu is lost"},
};

Test(gpu_classify, table) {
  classify_config cfg;
  classify_config_init(&cfg);
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    const row *w = &rows[i];
    classify_verdict v;
    classify_gpu(&w->r, NULL, &cfg, &v);
    cr_expect_eq(v.level, w->level, "%s: level %s, want %s (%s)", w->name,
                 classify_level_name(v.level), classify_level_name(w->level),
                 v.reason);
    cr_expect_eq(v.node_wide, w->node_wide, "%s: node_wide", w->name);
    if (w->level == CLASSIFY_WARN)
      cr_expect_eq(v.hw_pending, w->hw_pending, "%s: hw_pending", w->name);
    cr_expect(strstr(v.reason, w->reason) != NULL, "%s: reason \"%s\"",
              w->name, v.reason);
  }
}

Test(gpu_classify, config_thresholds_when_device_has_none) {
  classify_config cfg;
  classify_config_init(&cfg);
  gpu_readings r = {.valid = GPU_F_TEMP, .temp_c = 80};
  classify_verdict v;
  classify_gpu(&r, NULL, &cfg, &v);
  cr_expect_eq(v.level, CLASSIFY_OK); /* no thresholds at all: no rule */
  cfg.temp_slowdown_c = 85;
  cfg.temp_shutdown_c = 90;
  classify_gpu(&r, NULL, &cfg, &v);
  cr_expect_eq(v.level, CLASSIFY_WARN);
  r.temp_c = 90;
  classify_gpu(&r, NULL, &cfg, &v);
  cr_expect_eq(v.level, CLASSIFY_FAIL);
}

Test(gpu_classify, pcie_replay_rate_uses_previous_sample) {
  classify_config cfg;
  classify_config_init(&cfg); /* 16 per minute */
  gpu_readings prev = {.valid = GPU_F_PCIE_REPLAY, .pcie_replay = 100,
                       .sample_ms = 0};
  gpu_readings cur = prev;
  classify_verdict v;
  cur.sample_ms = 60000;
  cur.pcie_replay = 116; /* exactly 16/min: fine */
  classify_gpu(&cur, &prev, &cfg, &v);
  cr_expect_eq(v.level, CLASSIFY_OK, "%s", v.reason);
  cur.pcie_replay = 117;
  classify_gpu(&cur, &prev, &cfg, &v);
  cr_expect_eq(v.level, CLASSIFY_WARN);
  cr_expect(strstr(v.reason, "pcie") != NULL);
  classify_gpu(&cur, NULL, &cfg, &v); /* no previous sample: no rate */
  cr_expect_eq(v.level, CLASSIFY_OK);
  cur.pcie_replay = 5; /* counter reset */
  classify_gpu(&cur, &prev, &cfg, &v);
  cr_expect_eq(v.level, CLASSIFY_OK);
  cur = prev; /* 5 s later, 2 replays = 24/min */
  cur.sample_ms = 5000;
  cur.pcie_replay = 102;
  classify_gpu(&cur, &prev, &cfg, &v);
  cr_expect_eq(v.level, CLASSIFY_WARN);
  cur.valid = 0; /* unsupported now */
  classify_gpu(&cur, &prev, &cfg, &v);
  cr_expect_eq(v.level, CLASSIFY_OK);
}

Test(gpu_classify, app_xid_list_is_configurable) {
  classify_config cfg;
  classify_config_init(&cfg);
  cr_expect(classify_xid_is_app(&cfg, 13));
  cr_expect(!classify_xid_is_app(&cfg, 48));
  cfg.app_xids[cfg.n_app_xids++] = 48;
  gpu_readings r = {.xid_new = 48};
  classify_verdict v;
  classify_gpu(&r, NULL, &cfg, &v);
  cr_expect_eq(v.level, CLASSIFY_OK);
}

Test(gpu_classify, node_faults) {
  classify_config cfg;
  classify_config_init(&cfg);
  node_gpu_report r;
  memset(&r, 0, sizeof r);
  classify_verdict v;
  r.expected_gpus = 2;
  r.n_gpus = 2;
  classify_node(&r, &cfg, &v);
  cr_expect_eq(v.level, CLASSIFY_OK);
  r.n_gpus = 1;
  classify_node(&r, &cfg, &v);
  cr_expect_eq(v.level, CLASSIFY_FAIL);
  cr_expect(v.node_wide);
  cr_expect_str_eq(v.reason, "1 gpus found, 2 expected");
  r.n_gpus = 0;
  r.node_rc = 9;
  classify_node(&r, &cfg, &v);
  cr_expect_eq(v.level, CLASSIFY_FAIL);
  cr_expect(v.node_wide);
  cr_expect_str_eq(v.reason, "driver not loaded");
  r.node_rc = 10; /* a timeout is not a fault */
  r.n_gpus = 2;
  classify_node(&r, &cfg, &v);
  cr_expect_eq(v.level, CLASSIFY_OK);
}
