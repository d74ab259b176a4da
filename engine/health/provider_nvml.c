/*
 * provider_nvml.c — GPU readings from NVML, loaded at run time with dlopen
 * so Skald builds and runs without a GPU, a driver or NVML headers; plus the
 * `none` provider and provider_select(), which lives here because the
 * default choice depends on whether the library loads.
 *
 * The ~10 NVML types we need are declared below, copied from nvml.h (see
 * docs/gpu.md). Required symbols: init (nvmlInit_v2, else nvmlInit),
 * shutdown, count and handle-by-index (_v2, else legacy), UUID and
 * nvmlErrorString. Every other symbol is optional: NULL means the field is
 * unsupported, and the missing ones are logged once at open.
 *
 * Return codes: GPU_IS_LOST / RESET_REQUIRED / CORRUPTED_INFOROM are health
 * facts recorded in last_rc; NOT_SUPPORTED / NO_PERMISSION mean the field is
 * absent. Names of codes come from our own table, never nvmlErrorString on
 * a failure path (the library may be the thing that is broken).
 *
 * Invariants: `dev` and `count` change only under `mu`; the library stays
 * loaded from open() to close(). Thread: sample() on the sampler thread,
 * wait_event() on the event thread; NVML itself is thread-safe.
 */
#include "health/provider.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"

/* ---- NVML types, as in nvml.h ---------------------------------------------- */
typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct nvmlEventSet_st *nvmlEventSet_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct {
  nvmlDevice_t device;
  unsigned long long eventType, eventData;
  unsigned int gpuInstanceId, computeInstanceId;
} nvmlEventData_t;
typedef int nvmlEnableState_t;

enum { NVML_TEMPERATURE_GPU = 0 };
enum { NVML_TEMP_THRESHOLD_SHUTDOWN = 0, NVML_TEMP_THRESHOLD_SLOWDOWN = 1 };
enum { NVML_MEMORY_ERROR_TYPE_CORRECTED = 0, NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1 };
enum { NVML_VOLATILE_ECC = 0, NVML_AGGREGATE_ECC = 1 };
enum { NVML_PAGE_RETIREMENT_CAUSE_SBE = 0, NVML_PAGE_RETIREMENT_CAUSE_DBE = 1 };

typedef nvmlReturn_t (*fn_void)(void);
typedef const char *(*fn_errstr)(nvmlReturn_t);
typedef nvmlReturn_t (*fn_count)(unsigned int *);
typedef nvmlReturn_t (*fn_handle)(unsigned int, nvmlDevice_t *);
typedef nvmlReturn_t (*fn_str)(nvmlDevice_t, char *, unsigned int);
typedef nvmlReturn_t (*fn_mem)(nvmlDevice_t, nvmlMemory_t *);
typedef nvmlReturn_t (*fn_util)(nvmlDevice_t, nvmlUtilization_t *);
typedef nvmlReturn_t (*fn_temp)(nvmlDevice_t, int, unsigned int *);
typedef nvmlReturn_t (*fn_uint)(nvmlDevice_t, unsigned int *);
typedef nvmlReturn_t (*fn_ull)(nvmlDevice_t, unsigned long long *);
typedef nvmlReturn_t (*fn_ecc)(nvmlDevice_t, int, int, unsigned long long *);
typedef nvmlReturn_t (*fn_retired)(nvmlDevice_t, int, unsigned int *,
                                   unsigned long long *);
typedef nvmlReturn_t (*fn_enable)(nvmlDevice_t, nvmlEnableState_t *);
typedef nvmlReturn_t (*fn_remap)(nvmlDevice_t, unsigned int *, unsigned int *,
                                 unsigned int *, unsigned int *);
typedef nvmlReturn_t (*fn_evcreate)(nvmlEventSet_t *);
typedef nvmlReturn_t (*fn_evreg)(nvmlDevice_t, unsigned long long,
                                 nvmlEventSet_t);
typedef nvmlReturn_t (*fn_evwait)(nvmlEventSet_t, nvmlEventData_t *,
                                  unsigned int);
typedef nvmlReturn_t (*fn_evfree)(nvmlEventSet_t);

typedef struct nvml {
  char path[256];
  void *lib;
  pthread_mutex_t mu;
  bool v2, initialized;
  /* required */
  fn_void init, shutdown;
  fn_errstr error_string;
  fn_count count;
  fn_handle handle;
  fn_str uuid;
  /* optional: NULL = unsupported */
  fn_str name;
  fn_mem memory;
  fn_util util;
  fn_temp temp, temp_threshold;
  fn_uint power, power_limit, pcie_replay;
  fn_ull clock_events;
  fn_ecc ecc;
  fn_retired retired;
  fn_enable retired_pending;
  fn_remap remap;
  fn_evcreate ev_create;
  fn_ull ev_supported;
  fn_evreg ev_register;
  fn_evwait ev_wait;
  fn_evfree ev_free;
  char missing[512];
  unsigned n_missing;
  nvmlEventSet_t evset; /* NULL: no events */
  unsigned n_dev;
  nvmlDevice_t dev[GPU_MAX];
} nvml;

static const char *rc_str(nvmlReturn_t rc) {
  switch (rc) {
  case 0: return "NVML_SUCCESS";
  case 1: return "NVML_ERROR_UNINITIALIZED";
  case 2: return "NVML_ERROR_INVALID_ARGUMENT";
  case 3: return "NVML_ERROR_NOT_SUPPORTED";
  case 4: return "NVML_ERROR_NO_PERMISSION";
  case 6: return "NVML_ERROR_NOT_FOUND";
  case 7: return "NVML_ERROR_INSUFFICIENT_SIZE";
  case 9: return "NVML_ERROR_DRIVER_NOT_LOADED";
  case 10: return "NVML_ERROR_TIMEOUT";
  case 12: return "NVML_ERROR_LIBRARY_NOT_FOUND";
  case 13: return "NVML_ERROR_FUNCTION_NOT_FOUND";
  case 14: return "NVML_ERROR_CORRUPTED_INFOROM";
  case 15: return "NVML_ERROR_GPU_IS_LOST";
  case 16: return "NVML_ERROR_RESET_REQUIRED";
  case 18: return "NVML_ERROR_LIB_RM_VERSION_MISMATCH";
  case 21: return "NVML_ERROR_NO_DATA";
  default: return "NVML_ERROR_UNKNOWN";
  }
}

/* ---- loading --------------------------------------------------------------- */

/* Looks up `a`, else `b` (the legacy name; may be NULL). */
static void *sym2(nvml *n, const char *a, const char *b, bool *used_a) {
  void *f = dlsym(n->lib, a);
  if (used_a != NULL)
    *used_a = f != NULL;
  if (f == NULL && b != NULL)
    f = dlsym(n->lib, b);
  return f;
}

static void *opt(nvml *n, const char *a, const char *b) {
  void *f = sym2(n, a, b, NULL);
  if (f == NULL) {
    size_t len = strlen(n->missing);
    snprintf(n->missing + len, sizeof n->missing - len, "%s%s",
             len > 0 ? "," : "", a);
    n->n_missing++;
  }
  return f;
}

/* Function pointers from dlsym: POSIX guarantees the conversion works. */
#define SYM(n, field, type, a, b) ((n)->field = (type)sym2((n), (a), (b), NULL))
#define OPT(n, field, type, a, b) ((n)->field = (type)opt((n), (a), (b)))

static int load_required(nvml *n, gpu_provider *p) {
  bool v2 = false;
  n->init = (fn_void)sym2(n, "nvmlInit_v2", "nvmlInit", &v2);
  n->v2 = v2;
  SYM(n, shutdown, fn_void, "nvmlShutdown", NULL);
  SYM(n, error_string, fn_errstr, "nvmlErrorString", NULL);
  SYM(n, count, fn_count, "nvmlDeviceGetCount_v2", "nvmlDeviceGetCount");
  SYM(n, handle, fn_handle, "nvmlDeviceGetHandleByIndex_v2",
      "nvmlDeviceGetHandleByIndex");
  SYM(n, uuid, fn_str, "nvmlDeviceGetUUID", NULL);
  const char *lack = n->init == NULL            ? "nvmlInit"
                     : n->shutdown == NULL      ? "nvmlShutdown"
                     : n->error_string == NULL  ? "nvmlErrorString"
                     : n->count == NULL         ? "nvmlDeviceGetCount"
                     : n->handle == NULL        ? "nvmlDeviceGetHandleByIndex"
                     : n->uuid == NULL          ? "nvmlDeviceGetUUID"
                                                : NULL;
  if (lack == NULL)
    return 0;
  snprintf(p->reason, sizeof p->reason, "nvml library lacks required %s",
           lack);
  return SK_ENOTSUP;
}

static void load_optional(nvml *n) {
  OPT(n, name, fn_str, "nvmlDeviceGetName", NULL);
  OPT(n, memory, fn_mem, "nvmlDeviceGetMemoryInfo", NULL);
  OPT(n, util, fn_util, "nvmlDeviceGetUtilizationRates", NULL);
  OPT(n, temp, fn_temp, "nvmlDeviceGetTemperature", NULL);
  OPT(n, temp_threshold, fn_temp, "nvmlDeviceGetTemperatureThreshold", NULL);
  OPT(n, power, fn_uint, "nvmlDeviceGetPowerUsage", NULL);
  OPT(n, power_limit, fn_uint, "nvmlDeviceGetEnforcedPowerLimit", NULL);
  OPT(n, clock_events, fn_ull, "nvmlDeviceGetCurrentClocksEventReasons",
      "nvmlDeviceGetCurrentClocksThrottleReasons");
  OPT(n, ecc, fn_ecc, "nvmlDeviceGetTotalEccErrors", NULL);
  OPT(n, retired, fn_retired, "nvmlDeviceGetRetiredPages", NULL);
  OPT(n, retired_pending, fn_enable, "nvmlDeviceGetRetiredPagesPendingStatus",
      NULL);
  OPT(n, remap, fn_remap, "nvmlDeviceGetRemappedRows", NULL);
  OPT(n, pcie_replay, fn_uint, "nvmlDeviceGetPcieReplayCounter", NULL);
  OPT(n, ev_create, fn_evcreate, "nvmlEventSetCreate", NULL);
  OPT(n, ev_supported, fn_ull, "nvmlDeviceGetSupportedEventTypes", NULL);
  OPT(n, ev_register, fn_evreg, "nvmlDeviceRegisterEvents", NULL);
  OPT(n, ev_wait, fn_evwait, "nvmlEventSetWait_v2", "nvmlEventSetWait");
  OPT(n, ev_free, fn_evfree, "nvmlEventSetFree", NULL);
}

/* Registers XID and ECC events on every GPU the mask allows; no events at
 * all is fine (wait_event then says SK_ENOTSUP). Called with the device
 * list fresh and no event thread waiting yet. */
static void setup_events(nvml *n) {
  nvmlEventSet_t set = NULL;
  if (n->ev_create == NULL || n->ev_register == NULL || n->ev_wait == NULL ||
      n->ev_create(&set) != 0)
    return;
  unsigned registered = 0;
  for (unsigned i = 0; i < n->n_dev; i++) {
    unsigned long long want = PROVIDER_EVENT_XID | PROVIDER_EVENT_DBE |
                              PROVIDER_EVENT_SBE, have = want;
    if (n->ev_supported != NULL && n->ev_supported(n->dev[i], &have) != 0)
      have = 0;
    nvmlReturn_t rc = n->ev_register(n->dev[i], want & have, set);
    if (rc == 0)
      registered++;
    else
      log_write(LOG_WARNING, "could not register gpu events", "#index",
                (int64_t)i, "error", rc_str(rc), NULL);
  }
  if (registered == 0) {
    if (n->ev_free != NULL)
      n->ev_free(set);
    return;
  }
  pthread_mutex_lock(&n->mu); /* the event thread reads it */
  n->evset = set;
  pthread_mutex_unlock(&n->mu);
}

/* (Re)reads the device count and handles; 0 or the NVML rc of count(). */
static nvmlReturn_t refresh_devices(nvml *n, nvmlReturn_t *handle_rc) {
  unsigned cnt = 0;
  nvmlReturn_t rc = n->count(&cnt);
  pthread_mutex_lock(&n->mu);
  if (rc != 0)
    cnt = 0;
  n->n_dev = cnt > GPU_MAX ? GPU_MAX : cnt;
  for (unsigned i = 0; i < n->n_dev; i++) {
    handle_rc[i] = n->handle(i, &n->dev[i]);
    if (handle_rc[i] != 0)
      n->dev[i] = NULL;
  }
  pthread_mutex_unlock(&n->mu);
  return rc;
}

static nvmlReturn_t try_init(nvml *n) {
  if (n->initialized)
    return 0;
  nvmlReturn_t rc = n->init();
  if (rc != 0)
    return rc;
  n->initialized = true;
  nvmlReturn_t hrc[GPU_MAX];
  if (refresh_devices(n, hrc) == 0)
    setup_events(n);
  return 0;
}

static int nvml_open(gpu_provider *p) {
  nvml *n = p->impl;
  n->lib = dlopen(n->path, RTLD_NOW | RTLD_LOCAL);
  if (n->lib == NULL) {
    const char *e = dlerror();
    /* dlerror() names the path already. */
    snprintf(p->reason, sizeof p->reason, "could not load nvml: %.130s",
             e != NULL ? e : n->path);
    return SK_EUNAVAIL;
  }
  int rc = load_required(n, p);
  if (rc != 0)
    return rc;
  load_optional(n);
  if (n->n_missing > 0)
    log_write(LOG_WARNING, "nvml lacks optional symbols; fields unsupported",
              "symbols", n->missing, NULL);
  nvmlReturn_t irc = try_init(n);
  if (irc != 0) /* retried on every sample; the node reports it meanwhile */
    log_write(LOG_WARNING, "could not initialize nvml", "error", rc_str(irc),
              NULL);
  return 0;
}

/* ---- sampling -------------------------------------------------------------- */

static int rc_rank(int rc) {
  if (gpu_rc_is_health_fact(rc))
    return 3;
  if (gpu_rc_is_node_wide(rc))
    return 2;
  if (rc == 0 || rc == GPU_RC_NOT_SUPPORTED || rc == GPU_RC_NO_PERMISSION ||
      rc == GPU_RC_FUNCTION_NOT_FOUND)
    return 0;
  return 1;
}

/* Whether a read worked; on failure keeps the worst rc as last_rc. */
static bool ok(gpu_readings *g, nvmlReturn_t rc, uint32_t bit) {
  if (rc == 0) {
    g->valid |= bit;
    return true;
  }
  if (rc_rank(rc) > rc_rank(g->last_rc))
    g->last_rc = rc;
  return false;
}

static void read_thermal_power(nvml *n, nvmlDevice_t d, gpu_readings *g) {
  unsigned v = 0;
  if (n->temp != NULL && ok(g, n->temp(d, NVML_TEMPERATURE_GPU, &v), GPU_F_TEMP))
    g->temp_c = (int)v;
  if (n->temp_threshold != NULL &&
      ok(g, n->temp_threshold(d, NVML_TEMP_THRESHOLD_SLOWDOWN, &v),
         GPU_F_TEMP_SLOWDOWN))
    g->temp_slowdown_c = (int)v;
  if (n->temp_threshold != NULL &&
      ok(g, n->temp_threshold(d, NVML_TEMP_THRESHOLD_SHUTDOWN, &v),
         GPU_F_TEMP_SHUTDOWN))
    g->temp_shutdown_c = (int)v;
  if (n->power != NULL && ok(g, n->power(d, &v), GPU_F_POWER))
    g->power_mw = v;
  if (n->power_limit != NULL && ok(g, n->power_limit(d, &v), GPU_F_POWER_LIMIT))
    g->power_limit_mw = v;
  unsigned long long ce = 0;
  if (n->clock_events != NULL && ok(g, n->clock_events(d, &ce), GPU_F_CLOCK_EVENTS))
    g->clock_events = ce;
}

static void read_memory_errors(nvml *n, nvmlDevice_t d, gpu_readings *g) {
  unsigned long long c = 0;
  if (n->ecc != NULL) {
    if (ok(g, n->ecc(d, NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC, &c),
           GPU_F_ECC_VOL)) {
      g->ecc_vol_unc = c;
      if (n->ecc(d, NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_VOLATILE_ECC, &c) == 0)
        g->ecc_vol_corr = c;
    }
    if (ok(g, n->ecc(d, NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_AGGREGATE_ECC, &c),
           GPU_F_ECC_AGG))
      g->ecc_agg_unc = c;
  }
  if (n->retired != NULL) {
    unsigned sbe = 0, dbe = 0; /* pageCount 0: a size query */
    nvmlReturn_t r1 = n->retired(d, NVML_PAGE_RETIREMENT_CAUSE_SBE, &sbe, NULL);
    nvmlReturn_t r2 = n->retired(d, NVML_PAGE_RETIREMENT_CAUSE_DBE, &dbe, NULL);
    r1 = r1 == GPU_RC_INSUFFICIENT_SIZE ? 0 : r1;
    r2 = r2 == GPU_RC_INSUFFICIENT_SIZE ? 0 : r2;
    if (ok(g, r1 != 0 ? r1 : r2, GPU_F_RETIRED)) {
      g->retired_sbe = sbe;
      g->retired_dbe = dbe;
    }
  }
  nvmlEnableState_t pend = 0;
  if (n->retired_pending != NULL &&
      ok(g, n->retired_pending(d, &pend), GPU_F_RETIRED_PENDING))
    g->retired_pending = pend != 0;
  unsigned corr = 0, unc = 0, rp = 0, rf = 0;
  if (n->remap != NULL && ok(g, n->remap(d, &corr, &unc, &rp, &rf), GPU_F_REMAP)) {
    g->remap_unc = unc;
    g->remap_pending = rp != 0;
    g->remap_failed = rf != 0;
  }
  unsigned replay = 0;
  if (n->pcie_replay != NULL && ok(g, n->pcie_replay(d, &replay), GPU_F_PCIE_REPLAY))
    g->pcie_replay = replay;
}

static void read_gpu(nvml *n, unsigned i, nvmlDevice_t d, nvmlReturn_t hrc,
                     gpu_readings *g) {
  *g = (gpu_readings){.index = i, .temp_c = -1, .temp_slowdown_c = -1,
                      .temp_shutdown_c = -1};
  if (!ok(g, hrc, 0))
    return;
  ok(g, n->uuid(d, g->uuid, sizeof g->uuid), 0);
  if (n->name != NULL)
    ok(g, n->name(d, g->name, sizeof g->name), GPU_F_NAME);
  nvmlMemory_t m;
  if (n->memory != NULL && ok(g, n->memory(d, &m), GPU_F_MEM)) {
    g->mem_total = m.total;
    g->mem_free = m.free;
    g->mem_used = m.used;
  }
  nvmlUtilization_t u;
  if (n->util != NULL && ok(g, n->util(d, &u), GPU_F_UTIL)) {
    g->util_gpu = u.gpu;
    g->util_mem = u.memory;
  }
  read_thermal_power(n, d, g);
  read_memory_errors(n, d, g);
}

static int nvml_sample(gpu_provider *p, node_gpu_report *out) {
  nvml *n = p->impl;
  out->n_gpus = 0;
  out->node_rc = try_init(n);
  if (out->node_rc != 0)
    return 0;
  nvmlReturn_t hrc[GPU_MAX];
  out->node_rc = refresh_devices(n, hrc);
  if (out->node_rc != 0)
    return 0;
  pthread_mutex_lock(&n->mu);
  unsigned cnt = n->n_dev;
  nvmlDevice_t dev[GPU_MAX];
  memcpy(dev, n->dev, sizeof dev);
  pthread_mutex_unlock(&n->mu);
  for (unsigned i = 0; i < cnt; i++)
    read_gpu(n, i, dev[i], hrc[i], &out->gpu[i].r);
  out->n_gpus = cnt;
  return 0;
}

static int nvml_wait_event(gpu_provider *p, unsigned *gpu, unsigned *xid,
                           uint64_t *type, unsigned timeout_ms) {
  nvml *n = p->impl;
  pthread_mutex_lock(&n->mu);
  nvmlEventSet_t set = n->evset;
  pthread_mutex_unlock(&n->mu);
  if (set == NULL)
    return SK_ENOTSUP;
  nvmlEventData_t ev;
  memset(&ev, 0, sizeof ev);
  nvmlReturn_t rc = n->ev_wait(set, &ev, timeout_ms);
  if (rc == GPU_RC_TIMEOUT)
    return SK_ETIMEDOUT;
  if (rc != 0) {
    log_write(LOG_WARNING, "could not wait for gpu events", "error",
              rc_str(rc), NULL);
    return SK_EIO;
  }
  *gpu = UINT32_MAX;
  pthread_mutex_lock(&n->mu);
  for (unsigned i = 0; i < n->n_dev; i++)
    if (n->dev[i] == ev.device)
      *gpu = i;
  pthread_mutex_unlock(&n->mu);
  *type = ev.eventType;
  *xid = ev.eventType == PROVIDER_EVENT_XID ? (unsigned)ev.eventData : 0;
  return *gpu == UINT32_MAX ? SK_EIO : 0; /* k8s: unknown device → suspect */
}

static void nvml_close(gpu_provider *p) {
  nvml *n = p->impl;
  if (n == NULL)
    return;
  if (n->evset != NULL && n->ev_free != NULL)
    n->ev_free(n->evset);
  if (n->initialized && n->shutdown != NULL)
    n->shutdown();
  if (n->lib != NULL)
    dlclose(n->lib);
  pthread_mutex_destroy(&n->mu);
  free(n);
  p->impl = NULL;
}

void provider_nvml_init(gpu_provider *p, const char *lib_path) {
  *p = (gpu_provider){.kind = GPU_PROVIDER_NVML};
  nvml *n = calloc(1, sizeof *n);
  if (n == NULL)
    abort(); /* daemon side: OOM at start-up aborts (STYLE.md) */
  pthread_mutex_init(&n->mu, NULL);
  const char *env = getenv("SKALD_NVML_LIB");
  const char *path = lib_path != NULL ? lib_path
                     : env != NULL && *env != '\0' ? env
                                                   : "libnvidia-ml.so.1";
  snprintf(n->path, sizeof n->path, "%s", path);
  p->impl = n;
  p->open = nvml_open;
  p->sample = nvml_sample;
  p->wait_event = nvml_wait_event;
  p->close = nvml_close;
}

unsigned provider_nvml_missing(const gpu_provider *p, char *names, size_t n) {
  const nvml *nv = p->kind == GPU_PROVIDER_NVML ? p->impl : NULL;
  if (names != NULL && n > 0)
    snprintf(names, n, "%s", nv != NULL ? nv->missing : "");
  return nv != NULL ? nv->n_missing : 0;
}

int provider_nvml_uses_v2(const gpu_provider *p) {
  const nvml *nv = p->kind == GPU_PROVIDER_NVML ? p->impl : NULL;
  return nv != NULL && nv->v2 ? 1 : 0;
}

/* ---- none and selection ---------------------------------------------------- */

static int none_open(gpu_provider *p) { return 0; }

static int none_sample(gpu_provider *p, node_gpu_report *out) {
  out->n_gpus = 0;
  out->node_rc = 0;
  return 0;
}

static int none_wait_event(gpu_provider *p, unsigned *gpu, unsigned *xid,
                           uint64_t *type, unsigned timeout_ms) {
  return SK_ENOTSUP;
}

static void none_close(gpu_provider *p) {}

void provider_none_init(gpu_provider *p, const char *reason) {
  *p = (gpu_provider){.open = none_open, .sample = none_sample,
                      .wait_event = none_wait_event, .close = none_close,
                      .kind = GPU_PROVIDER_NONE};
  snprintf(p->reason, sizeof p->reason, "%s",
           reason != NULL ? reason : "no gpu provider");
}

static void select_default(gpu_provider *p) {
  const char *env = getenv("SKALD_NVML_LIB");
  const char *path = env != NULL && *env != '\0' ? env : "libnvidia-ml.so.1";
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (lib != NULL) {
    dlclose(lib);
    provider_nvml_init(p, path);
    return;
  }
  const char *e = dlerror();
  char why[PROVIDER_REASON_MAX];
  snprintf(why, sizeof why, "nvml not available: %s",
           e != NULL ? e : "could not load library");
  provider_none_init(p, why);
}

int provider_select(gpu_provider *p, const char *name, sk_error *err) {
  if (name == NULL)
    name = getenv("SKALD_GPU_PROVIDER");
  if (name == NULL || *name == '\0') {
    select_default(p);
  } else if (strcmp(name, "nvml") == 0) {
    provider_nvml_init(p, NULL);
  } else if (strcmp(name, "fake") == 0) {
    return provider_fake_init_env(p, NULL, NULL, err);
  } else if (strcmp(name, "none") == 0) {
    provider_none_init(p, "gpu provider set to none");
  } else {
    provider_none_init(p, "unknown gpu provider");
    return sk_error_set(err, SK_EINVAL,
                        "unknown gpu provider \"%s\" (nvml, fake or none)",
                        name);
  }
  log_write(LOG_INFO, "gpu provider selected", "provider",
            gpu_provider_name(p->kind), "reason",
            p->reason[0] != '\0' ? p->reason : NULL, NULL);
  return 0;
}
