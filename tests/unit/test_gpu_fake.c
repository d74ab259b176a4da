/*
 * test_gpu_fake.c — health/provider_fake.c and the sampler (health.c) driven
 * by it: good scripts and what they sample, every parse error with its line
 * number, the inline and file forms from the environment, provider
 * selection, and a scripted run with a fake clock producing the expected
 * state transitions (degrade, XID 79 → unhealthy + node draining, recovery
 * after 12 clean samples, GPU lost, staleness), plus the JSON rendering.
 */
#include "health/health.h"
#include "health/provider.h"

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"

static void quiet(void) { log_set_level(LOG_ERROR); }

TestSuite(gpu_fake, .init = quiet);

static int64_t fake_t;
static int64_t fake_clock(void *ctx) { return fake_t; }

static const char *notes_script =
    "gpus 2 mem_total=85899345920 slowdown=87 shutdown=92\n"
    "0     0 temp=45 util=10 mem_used=1073741824\n"
    "5000  0 temp=88 clock_events=0x40        # -> DEGRADED after 2 samples\n"
    "10000 1 xid=79                           # event -> UNHEALTHY, DRAINING\n"
    "15000 0 rc=15                            # NVML_ERROR_GPU_IS_LOST\n";

static void open_fake(gpu_provider *p, const char *text) {
  sk_error err = {0};
  fake_t = 1000; /* script times are relative to open() */
  int rc = provider_fake_init(p, text, fake_clock, NULL, &err);
  cr_assert_eq(rc, 0, "%s", err.message);
  cr_assert_eq(p->open(p), 0);
}

Test(gpu_fake, samples_follow_the_script) {
  gpu_provider p;
  node_gpu_report r;
  open_fake(&p, notes_script);
  memset(&r, 0, sizeof r);
  cr_assert_eq(p.sample(&p, &r), 0);
  cr_assert_eq(r.n_gpus, 2);
  const gpu_readings *g0 = &r.gpu[0].r, *g1 = &r.gpu[1].r;
  cr_expect_eq(g0->temp_c, 45);
  cr_expect_eq(g0->util_gpu, 10);
  cr_expect_eq(g0->mem_total, 85899345920ULL);
  cr_expect_eq(g0->mem_used, 1073741824ULL);
  cr_expect_eq(g0->mem_free, 85899345920ULL - 1073741824ULL);
  cr_expect_eq(g0->temp_slowdown_c, 87);
  cr_expect_eq(g0->temp_shutdown_c, 92);
  cr_expect(g0->valid & GPU_F_TEMP);
  cr_expect(!(g1->valid & GPU_F_TEMP)); /* never scripted: unsupported */
  cr_expect(g1->valid & GPU_F_TEMP_SLOWDOWN);
  cr_expect_eq(g1->index, 1);
  cr_expect_neq(strcmp(g0->uuid, g1->uuid), 0);
  fake_t = 1000 + 4999;
  p.sample(&p, &r);
  cr_expect_eq(r.gpu[0].r.temp_c, 45);
  fake_t = 1000 + 5000;
  p.sample(&p, &r);
  cr_expect_eq(r.gpu[0].r.temp_c, 88);
  cr_expect_eq(r.gpu[0].r.clock_events, 0x40);
  cr_expect_eq(r.gpu[0].r.util_gpu, 10); /* values persist */
  cr_expect_eq(r.gpu[0].r.last_rc, 0);
  fake_t = 1000 + 15000;
  p.sample(&p, &r);
  cr_expect_eq(r.gpu[0].r.last_rc, 15);
  cr_expect_eq(r.gpu[1].r.xid_new, 0); /* XIDs never come from sample() */
  p.close(&p);
}

Test(gpu_fake, xids_are_events_at_their_time) {
  gpu_provider p;
  unsigned gpu = 9, xid = 9;
  uint64_t type = 0;
  open_fake(&p, notes_script);
  fake_t = 1000 + 9999;
  cr_expect_eq(p.wait_event(&p, &gpu, &xid, &type, 1000), SK_ETIMEDOUT);
  fake_t = 1000 + 10000;
  cr_expect_eq(p.wait_event(&p, &gpu, &xid, &type, 1000), 0);
  cr_expect_eq(gpu, 1);
  cr_expect_eq(xid, 79);
  cr_expect_eq(type, PROVIDER_EVENT_XID);
  cr_expect_eq(p.wait_event(&p, &gpu, &xid, &type, 1000), SK_ETIMEDOUT);
  p.close(&p);
}

Test(gpu_fake, unsupported_fields_and_node_lines) {
  gpu_provider p;
  node_gpu_report r;
  open_fake(&p, "gpus 2 temp=40 power=100000\n"
                "0 0 temp=-\n"
                "100 node count=1\n"
                "200 node rc=9\n"
                "300 node rc=0 count=2\n");
  memset(&r, 0, sizeof r);
  p.sample(&p, &r);
  cr_expect(!(r.gpu[0].r.valid & GPU_F_TEMP));
  cr_expect(r.gpu[1].r.valid & GPU_F_TEMP);
  cr_expect(r.gpu[0].r.valid & GPU_F_POWER);
  fake_t += 100;
  p.sample(&p, &r);
  cr_expect_eq(r.n_gpus, 1);
  fake_t += 100;
  p.sample(&p, &r);
  cr_expect_eq(r.node_rc, 9);
  cr_expect_eq(r.n_gpus, 0);
  fake_t += 100;
  p.sample(&p, &r);
  cr_expect_eq(r.node_rc, 0);
  cr_expect_eq(r.n_gpus, 2);
  p.close(&p);
}

typedef struct bad {
  const char *script, *message;
} bad;

static const bad bads[] = {
    {"", "line 1: script has no \"gpus N\" line"},
    {"# nothing but a comment\n", "line 1: script has no \"gpus N\" line"},
    {"0 0 temp=1", "line 1: script must start with \"gpus N\""},
    {"gpus 17", "line 1: gpu count must be 0..16"},
    {"gpus two", "line 1: gpu count must be 0..16"},
    {"gpus 2 xid=79", "line 1: xid is per gpu"},
    {"gpus 2 bogus=1", "line 1: unknown key \"bogus\""},
    {"gpus 2\n0 0 foo=1", "line 2: unknown key \"foo\""},
    {"gpus 2\n\n# c\n0 2 temp=1", "line 4: gpu \"2\" is not node or 0..1"},
    {"gpus 2\n0 -1 temp=1", "line 2: gpu \"-1\" is not node or 0..1"},
    {"gpus 2\n0 0 temp", "line 2: expected key=value, got \"temp\""},
    {"gpus 2\n0 0 =5", "line 2: expected key=value, got \"=5\""},
    {"gpus 2\n0 0 temp=hot", "line 2: bad number \"hot\" for temp"},
    {"gpus 2\n0 0 temp=-5", "line 2: bad number \"-5\" for temp"},
    {"gpus 2\n0 0 xid=-", "line 2: bad number \"-\" for xid"},
    {"gpus 2\n0 0 name=", "line 2: bad value for name"},
    {"gpus 2\n5000 0 temp=1\n4000 0 temp=2",
     "line 3: time 4000 is before the previous line's 5000"},
    {"gpus 2\n0 0", "line 2: expected \"time gpu key=value...\""},
    {"gpus 2\nsoon 0 temp=1", "line 2: bad time \"soon\""},
    {"gpus 2\n0 node foo=1", "line 2: unknown key \"foo\""},
    {"gpus 2\n0 node count=3", "line 2: count above gpus 2"},
    {"gpus 1;0 0 temp=40;5 0 bogus=1", "line 3: unknown key \"bogus\""},
};

Test(gpu_fake, every_parse_error_names_its_line) {
  for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
    gpu_provider p;
    sk_error err = {0};
    int rc = provider_fake_init(&p, bads[i].script, fake_clock, NULL, &err);
    cr_expect_eq(rc, SK_EINVAL, "script %zu", i);
    cr_expect_str_eq(err.message, bads[i].message, "script %zu", i);
    cr_expect_null(p.impl);
  }
}

Test(gpu_fake, long_line_is_an_error) {
  char script[2048] = "gpus 1\n0 0 name=";
  size_t n = strlen(script);
  memset(script + n, 'x', 1500);
  script[n + 1500] = '\0';
  gpu_provider p;
  sk_error err = {0};
  cr_expect_eq(provider_fake_init(&p, script, NULL, NULL, &err), SK_EINVAL);
  cr_expect_str_eq(err.message, "line 2: longer than 1023 bytes");
}

Test(gpu_fake, inline_form_from_environment) {
  setenv("SKALD_GPU_FAKE", "gpus 1 slowdown=80;0 0 temp=50 name=A100", 1);
  unsetenv("SKALD_GPU_FAKE_SCRIPT");
  gpu_provider p;
  sk_error err = {0};
  cr_assert_eq(provider_select(&p, "fake", &err), 0, "%s", err.message);
  cr_expect_eq(p.kind, GPU_PROVIDER_FAKE);
  cr_assert_eq(p.open(&p), 0);
  node_gpu_report r;
  memset(&r, 0, sizeof r);
  p.sample(&p, &r);
  cr_expect_eq(r.n_gpus, 1);
  cr_expect_eq(r.gpu[0].r.temp_c, 50);
  cr_expect_str_eq(r.gpu[0].r.name, "A100");
  p.close(&p);
}

Test(gpu_fake, script_file_from_environment) {
  char path[] = "/tmp/skald-gpu-fake-XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  FILE *f = fdopen(fd, "w");
  fputs(notes_script, f);
  fclose(f);
  setenv("SKALD_GPU_FAKE_SCRIPT", path, 1);
  setenv("SKALD_GPU_PROVIDER", "fake", 1);
  gpu_provider p;
  sk_error err = {0};
  cr_assert_eq(provider_select(&p, NULL, &err), 0, "%s", err.message);
  cr_expect_eq(p.kind, GPU_PROVIDER_FAKE);
  p.close(&p);
  unlink(path);
  cr_expect_eq(provider_select(&p, NULL, &err), SK_EIO);
  unsetenv("SKALD_GPU_FAKE_SCRIPT");
  unsetenv("SKALD_GPU_FAKE");
  cr_expect_eq(provider_select(&p, NULL, &err), SK_EINVAL);
  cr_expect(strstr(err.message, "SKALD_GPU_FAKE") != NULL);
}

Test(gpu_fake, selection_by_name) {
  gpu_provider p;
  sk_error err = {0};
  cr_expect_eq(provider_select(&p, "cuda", &err), SK_EINVAL);
  cr_expect_str_eq(err.message, "unknown gpu provider \"cuda\" (nvml, fake or none)");
  cr_expect_eq(provider_select(&p, "none", &err), 0);
  cr_expect_eq(p.kind, GPU_PROVIDER_NONE);
  cr_expect_str_eq(p.reason, "gpu provider set to none");
  unsigned gpu, xid;
  uint64_t type;
  cr_expect_eq(p.wait_event(&p, &gpu, &xid, &type, 10), SK_ENOTSUP);
  p.close(&p);
}

/* ---- a scripted run through the sampler --------------------------------- */

static const char *run_script =
    "gpus 2 mem_total=85899345920 slowdown=87 shutdown=92\n"
    "0     0 temp=45 util=10 mem_used=1073741824\n"
    "0     1 temp=40\n"
    "5000  0 temp=88 clock_events=0x40\n"
    "20000 1 xid=79\n"
    "25000 0 temp=50 clock_events=0\n"
    "30000 1 xid=13\n"
    "90000 0 rc=15\n";

static health *new_health(const char *script) {
  gpu_provider p;
  sk_error err = {0};
  fake_t = 0;
  cr_assert_eq(provider_fake_init(&p, script, fake_clock, NULL, &err), 0);
  health_options o;
  health_options_init(&o);
  o.custom = &p;
  o.now = fake_clock;
  o.node_id = "node-a";
  o.event_thread = false;
  health *h = NULL;
  cr_assert_eq(health_new(&o, &h, &err), 0, "%s", err.message);
  return h;
}

static void at(health *h, int64_t t, gh_state s0, gh_state s1, bool drain) {
  fake_t = t;
  cr_assert_eq(health_sample_now(h), 0);
  node_gpu_report r;
  health_snapshot(h, &r);
  cr_expect_eq(r.gpu[0].state, s0, "t=%lld gpu0 %s (%s)", (long long)t,
               gpu_state_name(r.gpu[0].state), r.gpu[0].reason);
  cr_expect_eq(r.gpu[1].state, s1, "t=%lld gpu1 %s (%s)", (long long)t,
               gpu_state_name(r.gpu[1].state), r.gpu[1].reason);
  cr_expect_eq(r.draining, drain, "t=%lld draining", (long long)t);
}

Test(gpu_fake, scripted_run_produces_the_transitions) {
  health *h = new_health(run_script);
  at(h, 0, GH_HEALTHY, GH_HEALTHY, false);
  at(h, 5000, GH_HEALTHY, GH_HEALTHY, false); /* first WARN */
  at(h, 10000, GH_DEGRADED, GH_HEALTHY, false);
  at(h, 15000, GH_DEGRADED, GH_HEALTHY, false);
  at(h, 20000, GH_DEGRADED, GH_UNHEALTHY, true); /* XID 79 */
  node_gpu_report r;
  health_snapshot(h, &r);
  cr_expect_str_eq(r.drain_reason, "xid 79: gpu fell off the bus");
  cr_expect_str_eq(r.gpu[1].reason, "xid 79: gpu fell off the bus");
  cr_expect_eq(r.gpu[1].r.last_xid, 79);
  cr_expect_eq(r.seq, 5);
  for (int64_t t = 25000; t < 80000; t += 5000) /* 11 clean samples */
    at(h, t, GH_DEGRADED, GH_UNHEALTHY, true);
  at(h, 80000, GH_HEALTHY, GH_HEALTHY, true); /* 12th; node stays drained */
  health_snapshot(h, &r);
  cr_expect_eq(r.gpu[1].r.last_xid, 13);
  cr_expect_eq(r.gpu[1].r.app_xids_10min, 1); /* app XID: no state change */
  at(h, 85000, GH_HEALTHY, GH_HEALTHY, true);
  at(h, 90000, GH_UNHEALTHY, GH_HEALTHY, true); /* GPU_IS_LOST */
  health_snapshot(h, &r);
  cr_expect_str_eq(r.gpu[0].reason, "gpu is lost");
  health_undrain(h);
  health_snapshot(h, &r);
  cr_expect(!r.draining);
  cr_expect_eq(r.gpu[0].state, GH_UNKNOWN);
  at(h, 95000, GH_UNHEALTHY, GH_HEALTHY, false); /* still lost */
  health_free(h);
}

Test(gpu_fake, silent_sampler_goes_unknown) {
  health *h = new_health(run_script);
  at(h, 0, GH_HEALTHY, GH_HEALTHY, false);
  node_gpu_report r;
  fake_t = 15000;
  health_snapshot(h, &r);
  cr_expect_eq(r.gpu[0].state, GH_HEALTHY);
  fake_t = 15001;
  health_snapshot(h, &r);
  cr_expect_eq(r.gpu[0].state, GH_UNKNOWN);
  cr_expect_eq(r.gpu[1].state, GH_UNKNOWN);
  cr_expect_str_eq(r.gpu[0].reason, "report is stale");
  health_free(h);
}

Test(gpu_fake, vanished_gpu_and_lost_driver) {
  health *h = new_health("gpus 2\n10000 node count=1\n20000 node rc=9\n");
  at(h, 0, GH_HEALTHY, GH_HEALTHY, false);
  at(h, 10000, GH_HEALTHY, GH_UNHEALTHY, true);
  node_gpu_report r;
  health_snapshot(h, &r);
  cr_expect_eq(r.n_gpus, 2);
  cr_expect_str_eq(r.gpu[1].reason, "1 gpus found, 2 expected");
  cr_expect_str_eq(r.drain_reason, "1 gpus found, 2 expected");
  at(h, 20000, GH_UNHEALTHY, GH_UNHEALTHY, true);
  health_snapshot(h, &r);
  cr_expect_str_eq(r.gpu[0].reason, "driver not loaded");
  cr_expect_eq(r.node_rc, 9);
  health_free(h);
}

Test(gpu_fake, json_rendering) {
  health *h = new_health(run_script);
  fake_t = 0;
  health_sample_now(h);
  char *js = health_json(h);
  cr_assert_not_null(js);
  cJSON *root = cJSON_Parse(js);
  cr_assert_not_null(root, "%s", js);
  cr_expect_str_eq(cJSON_GetObjectItem(root, "node_id")->valuestring, "node-a");
  cr_expect_str_eq(cJSON_GetObjectItem(root, "provider")->valuestring, "fake");
  cr_expect(cJSON_IsNull(cJSON_GetObjectItem(root, "provider_reason")));
  cr_expect(cJSON_IsFalse(cJSON_GetObjectItem(root, "draining")));
  cJSON *gpus = cJSON_GetObjectItem(root, "gpus");
  cr_assert_eq(cJSON_GetArraySize(gpus), 2);
  cJSON *g0 = cJSON_GetArrayItem(gpus, 0);
  cr_expect_str_eq(cJSON_GetObjectItem(g0, "state")->valuestring, "healthy");
  cJSON *rd = cJSON_GetObjectItem(g0, "readings");
  cr_expect_eq(cJSON_GetObjectItem(rd, "temp_c")->valuedouble, 45);
  cr_expect_eq(cJSON_GetObjectItem(rd, "mem_total")->valuedouble, 85899345920.0);
  cr_expect(cJSON_IsNull(cJSON_GetObjectItem(rd, "power_mw"))); /* unsupported */
  cJSON_Delete(root);
  free(js);
  health_free(h);
}

Test(gpu_fake, provider_none_has_no_gpus_and_a_reason) {
  health_options o;
  health_options_init(&o);
  o.provider = "none";
  health *h = NULL;
  sk_error err = {0};
  cr_assert_eq(health_new(&o, &h, &err), 0);
  cr_expect_eq(health_sample_now(h), 0);
  node_gpu_report r;
  health_snapshot(h, &r);
  cr_expect_eq(r.n_gpus, 0);
  cr_expect_eq(r.provider, GPU_PROVIDER_NONE);
  cr_expect_str_eq(r.provider_reason, "gpu provider set to none");
  cr_expect(!r.draining);
  health_free(h);
}

Test(gpu_fake, bad_script_fails_health_new) {
  setenv("SKALD_GPU_FAKE", "gpus 1\n0 0 tmp=3", 1);
  unsetenv("SKALD_GPU_FAKE_SCRIPT");
  health_options o;
  health_options_init(&o);
  o.provider = "fake";
  health *h = NULL;
  sk_error err = {0};
  cr_expect_eq(health_new(&o, &h, &err), SK_EINVAL);
  cr_expect_null(h);
  cr_expect_str_eq(err.message, "line 2: unknown key \"tmp\"");
}

Test(gpu_fake, sampler_thread_runs_and_stops) {
  setenv("SKALD_GPU_FAKE", "gpus 1;0 0 temp=40;50 0 xid=48", 1);
  unsetenv("SKALD_GPU_FAKE_SCRIPT");
  health_options o;
  health_options_init(&o);
  o.provider = "fake";
  o.cfg.interval_ms = 20;
  o.event_timeout_ms = 50;
  health *h = NULL;
  sk_error err = {0};
  cr_assert_eq(health_new(&o, &h, &err), 0, "%s", err.message);
  cr_assert_eq(health_start(h), 0);
  cr_expect_eq(health_start(h), SK_ESTATE);
  node_gpu_report r;
  for (int i = 0; i < 200; i++) { /* up to 2 s for the XID to land */
    usleep(10000);
    health_snapshot(h, &r);
    if (r.n_gpus == 1 && r.gpu[0].state == GH_UNHEALTHY)
      break;
  }
  cr_expect_eq(r.gpu[0].state, GH_UNHEALTHY);
  cr_expect_str_eq(r.gpu[0].reason, "critical xid 48");
  health_free(h);
}
