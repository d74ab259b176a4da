/*
 * test_nvml_loader.c — health/provider_nvml.c against a stub
 * libnvidia-ml.so.1 compiled here at test time (no CMake target): the
 * source is tests/fixtures/nvml_stub/nvml_stub.c, built with
 * `$CC -shared -fPIC` (CC from the environment, else `cc`) in two variants
 * and loaded through SKALD_NVML_LIB:
 *   legacy: only nvmlInit / nvmlDeviceGetCount / ...HandleByIndex, and the
 *           optional symbols missing → the fallback path and "unsupported";
 *   v2:     the _v2 names and every optional symbol; GPU 1 is lost.
 * Also: a library that does not exist yields provider `none` with a reason.
 */
#include "health/health.h"
#include "health/provider.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"

static char dir[64];

static void quiet(void) { log_set_level(LOG_ERROR); }

/* Builds the stub with -D<variant> into a fresh temp dir; returns the path
 * of the .so (static buffer). */
static const char *build_stub(const char *variant) {
  static char lib[128];
  snprintf(dir, sizeof dir, "/tmp/skald-nvml-stub-XXXXXX");
  cr_assert_not_null(mkdtemp(dir));
  snprintf(lib, sizeof lib, "%s/libnvidia-ml.so.1", dir);
  const char *cc = getenv("CC");
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "%s -shared -fPIC -O0 -D%s -o %s %s/nvml_stub/nvml_stub.c",
           cc != NULL && *cc != '\0' ? cc : "cc", variant, lib,
           SKALD_FIXTURES_DIR);
  cr_assert_eq(system(cmd), 0, "could not build the stub: %s", cmd);
  return lib;
}

static void cleanup(void) {
  if (dir[0] == '\0')
    return;
  char path[128];
  snprintf(path, sizeof path, "%s/libnvidia-ml.so.1", dir);
  unlink(path);
  rmdir(dir);
}

TestSuite(nvml_loader, .init = quiet, .fini = cleanup);

static void open_nvml(gpu_provider *p, const char *lib) {
  setenv("SKALD_NVML_LIB", lib, 1);
  provider_nvml_init(p, NULL);
  cr_assert_eq(p->kind, GPU_PROVIDER_NVML);
  cr_assert_eq(p->open(p), 0, "%s", p->reason);
}

Test(nvml_loader, legacy_names_and_missing_optionals) {
  gpu_provider p;
  open_nvml(&p, build_stub("STUB_LEGACY"));
  cr_expect_eq(provider_nvml_uses_v2(&p), 0);
  char missing[512];
  unsigned n = provider_nvml_missing(&p, missing, sizeof missing);
  cr_expect(n > 0);
  cr_expect(strstr(missing, "nvmlDeviceGetPowerUsage") != NULL, "%s", missing);
  cr_expect(strstr(missing, "nvmlDeviceGetTotalEccErrors") != NULL);
  cr_expect(strstr(missing, "nvmlDeviceGetRemappedRows") != NULL);
  cr_expect(strstr(missing, "nvmlEventSetWait_v2") != NULL);
  /* found through the legacy ThrottleReasons name */
  cr_expect(strstr(missing, "ClocksEventReasons") == NULL, "%s", missing);

  node_gpu_report r;
  memset(&r, 0, sizeof r);
  cr_assert_eq(p.sample(&p, &r), 0);
  cr_expect_eq(r.node_rc, 0);
  cr_assert_eq(r.n_gpus, 2);
  const gpu_readings *g = &r.gpu[0].r;
  cr_expect_str_eq(g->uuid, "GPU-stub-0");
  cr_expect_str_eq(r.gpu[1].r.uuid, "GPU-stub-1");
  cr_expect_str_eq(g->name, "Stub H100");
  cr_expect_eq(g->mem_total, 85899345920ULL);
  cr_expect_eq(g->mem_used, 1073741824ULL);
  cr_expect_eq(g->mem_free, 85899345920ULL - 1073741824ULL);
  cr_expect_eq(g->util_gpu, 37);
  cr_expect_eq(g->util_mem, 12);
  cr_expect_eq(g->temp_c, 45);
  cr_expect_eq(g->temp_slowdown_c, 87);
  cr_expect_eq(g->temp_shutdown_c, 92);
  cr_expect_eq(g->clock_events, 0x1);
  cr_expect(g->valid & GPU_F_CLOCK_EVENTS);
  cr_expect(!(g->valid & (GPU_F_POWER | GPU_F_ECC_VOL | GPU_F_REMAP |
                          GPU_F_RETIRED | GPU_F_PCIE_REPLAY)));
  cr_expect_eq(g->last_rc, 0);
  unsigned gpu, xid;
  uint64_t type;
  cr_expect_eq(p.wait_event(&p, &gpu, &xid, &type, 10), SK_ENOTSUP);
  classify_config cfg;
  classify_config_init(&cfg);
  classify_verdict v;
  classify_gpu(g, NULL, &cfg, &v);
  cr_expect_eq(v.level, CLASSIFY_OK, "%s", v.reason);
  p.close(&p);
}

Test(nvml_loader, v2_names_all_readings_and_a_lost_gpu) {
  gpu_provider p;
  open_nvml(&p, build_stub("STUB_V2"));
  cr_expect_eq(provider_nvml_uses_v2(&p), 1);
  char missing[512];
  cr_expect_eq(provider_nvml_missing(&p, missing, sizeof missing), 0, "%s",
               missing);
  node_gpu_report r;
  memset(&r, 0, sizeof r);
  cr_assert_eq(p.sample(&p, &r), 0);
  cr_assert_eq(r.n_gpus, 2);
  const gpu_readings *g = &r.gpu[0].r, *lost = &r.gpu[1].r;
  cr_expect_eq(g->power_mw, 250000);
  cr_expect_eq(g->power_limit_mw, 700000);
  cr_expect_eq(g->clock_events, 0x5);
  cr_expect_eq(g->ecc_vol_unc, 0);
  cr_expect_eq(g->ecc_vol_corr, 3);
  cr_expect_eq(g->ecc_agg_unc, 2);
  cr_expect(g->valid & GPU_F_ECC_VOL);
  cr_expect_eq(g->retired_sbe, 2); /* from the size query */
  cr_expect_eq(g->retired_dbe, 1);
  cr_expect_eq(g->retired_pending, 0);
  cr_expect_eq(g->remap_unc, 1);
  cr_expect_eq(g->remap_pending, 0);
  cr_expect_eq(g->remap_failed, 0);
  cr_expect_eq(g->pcie_replay, 7);
  cr_expect_eq(g->last_rc, 0);
  cr_expect_eq(lost->last_rc, GPU_RC_GPU_IS_LOST);
  cr_expect(!(lost->valid & GPU_F_MEM));
  cr_expect(!(lost->valid & GPU_F_PCIE_REPLAY)); /* NOT_SUPPORTED: absent */
  classify_config cfg;
  classify_config_init(&cfg);
  classify_verdict v;
  classify_gpu(g, NULL, &cfg, &v);
  cr_expect_eq(v.level, CLASSIFY_OK, "%s", v.reason); /* SwPowerCap: no fact */
  classify_gpu(lost, NULL, &cfg, &v);
  cr_expect_eq(v.level, CLASSIFY_FAIL);
  cr_expect_str_eq(v.reason, "gpu is lost");

  unsigned gpu = 9, xid = 0;
  uint64_t type = 0;
  cr_expect_eq(p.wait_event(&p, &gpu, &xid, &type, 10), 0);
  cr_expect_eq(gpu, 0);
  cr_expect_eq(xid, 13);
  cr_expect_eq(type, PROVIDER_EVENT_XID);
  cr_expect_eq(p.wait_event(&p, &gpu, &xid, &type, 10), SK_ETIMEDOUT);
  p.close(&p);
}

Test(nvml_loader, health_verdicts_through_the_sampler) {
  setenv("SKALD_NVML_LIB", build_stub("STUB_V2"), 1);
  setenv("SKALD_GPU_PROVIDER", "nvml", 1);
  health_options o;
  health_options_init(&o);
  o.event_thread = false;
  health *h = NULL;
  sk_error err = {0};
  cr_assert_eq(health_new(&o, &h, &err), 0, "%s", err.message);
  cr_assert_eq(health_sample_now(h), 0);
  node_gpu_report r;
  health_snapshot(h, &r);
  cr_expect_eq(r.provider, GPU_PROVIDER_NVML);
  cr_assert_eq(r.n_gpus, 2);
  cr_expect_eq(r.gpu[0].state, GH_HEALTHY, "%s", r.gpu[0].reason);
  cr_expect_eq(r.gpu[0].r.last_xid, 13); /* app XID drained, no fault */
  cr_expect_eq(r.gpu[1].state, GH_UNHEALTHY);
  cr_expect_str_eq(r.gpu[1].reason, "gpu is lost");
  cr_expect(!r.draining);
  health_free(h);
}

Test(nvml_loader, default_selection_loads_nvml_when_present) {
  setenv("SKALD_NVML_LIB", build_stub("STUB_LEGACY"), 1);
  unsetenv("SKALD_GPU_PROVIDER");
  gpu_provider p;
  sk_error err = {0};
  cr_assert_eq(provider_select(&p, NULL, &err), 0);
  cr_expect_eq(p.kind, GPU_PROVIDER_NVML);
  p.close(&p);
}

Test(nvml_loader, missing_library_is_provider_none_with_reason) {
  setenv("SKALD_NVML_LIB", "/nonexistent/libnvidia-ml.so.1", 1);
  unsetenv("SKALD_GPU_PROVIDER");
  gpu_provider p;
  sk_error err = {0};
  cr_assert_eq(provider_select(&p, NULL, &err), 0);
  cr_expect_eq(p.kind, GPU_PROVIDER_NONE);
  cr_expect(strstr(p.reason, "nvml not available") != NULL, "%s", p.reason);
  cr_expect(strstr(p.reason, "/nonexistent/libnvidia-ml.so.1") != NULL);
  p.close(&p);

  /* Asked for by name: the sampler still ends up with none, and says why. */
  health_options o;
  health_options_init(&o);
  o.provider = "nvml";
  health *h = NULL;
  cr_assert_eq(health_new(&o, &h, &err), 0);
  cr_expect_eq(health_sample_now(h), 0);
  node_gpu_report r;
  health_snapshot(h, &r);
  cr_expect_eq(r.provider, GPU_PROVIDER_NONE);
  cr_expect_eq(r.n_gpus, 0);
  cr_expect(strstr(r.provider_reason, "could not load nvml") != NULL, "%s",
            r.provider_reason);
  health_free(h);
}

Test(nvml_loader, library_without_required_symbols_is_refused) {
  /* libm has none of NVML's symbols. */
  gpu_provider p;
  setenv("SKALD_NVML_LIB", "libm.so.6", 1);
  provider_nvml_init(&p, NULL);
  cr_expect_eq(p.open(&p), SK_ENOTSUP);
  cr_expect_str_eq(p.reason, "nvml library lacks required nvmlInit");
  p.close(&p);
}
