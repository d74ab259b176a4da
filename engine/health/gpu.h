/*
 * gpu.h — the per-GPU health record and the node's GPU report.
 *
 * A gpu_health is two halves: `r`, the readings a provider filled in for one
 * sample (what NVML or the fake script said), and the state the hysteresis
 * machine in classify.c keeps across samples. Providers only ever write `r`;
 * only classify_step() / classify_mark_stale() write the state half.
 *
 * `r.valid` has one GPU_F_* bit per field that was actually read; a field
 * whose bit is clear was unsupported (NVML_ERROR_NOT_SUPPORTED,
 * NO_PERMISSION, a missing symbol) and is never a fault by itself.
 *
 * Return codes in `r.last_rc` / `node_rc` are NVML's own numbers (GPU_RC_*),
 * so logs match NVIDIA's documentation.
 */
#ifndef SKALD_HEALTH_GPU_H
#define SKALD_HEALTH_GPU_H

#include <stdbool.h>
#include <stdint.h>

#define GPU_MAX 16
#define GPU_UUID_MAX 96 /* NVML_DEVICE_UUID_V2_BUFFER_SIZE */
#define GPU_NAME_MAX 96 /* NVML_DEVICE_NAME_V2_BUFFER_SIZE */
#define GPU_REASON_MAX 96

/* X(NAME, "name"): one list, so logs, JSON and code say the same word. */
#define GH_STATE_MAP(X)                                                        \
  X(UNKNOWN, "unknown")                                                        \
  X(HEALTHY, "healthy")                                                        \
  X(DEGRADED, "degraded")                                                      \
  X(UNHEALTHY, "unhealthy")

typedef enum gh_state {
#define GH_STATE_ENUM(name, str) GH_##name,
  GH_STATE_MAP(GH_STATE_ENUM)
#undef GH_STATE_ENUM
} gh_state;

static inline const char *gpu_state_name(gh_state s) {
  switch (s) {
#define GH_STATE_CASE(name, str)                                               \
  case GH_##name:                                                              \
    return str;
    GH_STATE_MAP(GH_STATE_CASE)
#undef GH_STATE_CASE
  }
  return "unknown";
}

/* NVML return codes we act on (values from nvml.h). */
enum {
  GPU_RC_SUCCESS = 0,
  GPU_RC_UNINITIALIZED = 1,
  GPU_RC_INVALID_ARGUMENT = 2,
  GPU_RC_NOT_SUPPORTED = 3,
  GPU_RC_NO_PERMISSION = 4,
  GPU_RC_NOT_FOUND = 6,
  GPU_RC_INSUFFICIENT_SIZE = 7,
  GPU_RC_DRIVER_NOT_LOADED = 9,
  GPU_RC_TIMEOUT = 10,
  GPU_RC_LIBRARY_NOT_FOUND = 12,
  GPU_RC_FUNCTION_NOT_FOUND = 13,
  GPU_RC_CORRUPTED_INFOROM = 14,
  GPU_RC_GPU_IS_LOST = 15,
  GPU_RC_RESET_REQUIRED = 16,
  GPU_RC_LIB_RM_VERSION_MISMATCH = 18,
  GPU_RC_NO_DATA = 21,
  GPU_RC_UNKNOWN = 999
};

/* A return code that is itself a fact about the GPU's health. */
static inline bool gpu_rc_is_health_fact(int rc) {
  return rc == GPU_RC_GPU_IS_LOST || rc == GPU_RC_RESET_REQUIRED ||
         rc == GPU_RC_CORRUPTED_INFOROM;
}
/* A return code that says the whole node's driver stack is broken. */
static inline bool gpu_rc_is_node_wide(int rc) {
  return rc == GPU_RC_DRIVER_NOT_LOADED || rc == GPU_RC_LIB_RM_VERSION_MISMATCH;
}

/* Clock event reason bits (nvmlClocksEventReason*). */
#define GPU_CLOCK_GPU_IDLE 0x1ULL
#define GPU_CLOCK_APP_SETTING 0x2ULL
#define GPU_CLOCK_SW_POWER_CAP 0x4ULL
#define GPU_CLOCK_HW_SLOWDOWN 0x8ULL
#define GPU_CLOCK_SYNC_BOOST 0x10ULL
#define GPU_CLOCK_SW_THERMAL 0x20ULL
#define GPU_CLOCK_HW_THERMAL 0x40ULL
#define GPU_CLOCK_HW_POWER_BRAKE 0x80ULL

/* nvmlDeviceGpuRecoveryAction_t */
enum {
  GPU_RECOVERY_NONE = 0,
  GPU_RECOVERY_GPU_RESET = 1,
  GPU_RECOVERY_NODE_REBOOT = 2,
  GPU_RECOVERY_DRAIN_P2P = 3,
  GPU_RECOVERY_DRAIN_AND_RESET = 4
};

/* One bit per reading in gpu_readings.valid. */
enum {
  GPU_F_NAME = 1u << 0,
  GPU_F_MEM = 1u << 1,
  GPU_F_UTIL = 1u << 2,
  GPU_F_TEMP = 1u << 3,
  GPU_F_TEMP_SLOWDOWN = 1u << 4,
  GPU_F_TEMP_SHUTDOWN = 1u << 5,
  GPU_F_POWER = 1u << 6,
  GPU_F_POWER_LIMIT = 1u << 7,
  GPU_F_CLOCK_EVENTS = 1u << 8,
  GPU_F_ECC_VOL = 1u << 9,
  GPU_F_ECC_AGG = 1u << 10,
  GPU_F_RETIRED = 1u << 11,
  GPU_F_RETIRED_PENDING = 1u << 12,
  GPU_F_REMAP = 1u << 13,
  GPU_F_PCIE_REPLAY = 1u << 14,
  GPU_F_RECOVERY = 1u << 15
};

typedef struct gpu_readings {
  char uuid[GPU_UUID_MAX], name[GPU_NAME_MAX];
  unsigned index;
  uint64_t mem_total, mem_used, mem_free;       /* bytes */
  unsigned util_gpu, util_mem;                  /* % */
  int temp_c, temp_slowdown_c, temp_shutdown_c; /* -1 = unsupported */
  unsigned power_mw, power_limit_mw;
  uint64_t clock_events; /* GPU_CLOCK_* bitmask */
  uint64_t ecc_vol_unc, ecc_vol_corr, ecc_agg_unc;
  unsigned retired_sbe, retired_dbe;
  int retired_pending;
  unsigned remap_unc;
  int remap_pending, remap_failed;
  unsigned pcie_replay;
  int recovery_action; /* GPU_RECOVERY_* */
  /* XIDs: xid_new is the worst XID that arrived since the previous sample
   * (0 = none) and is what classification looks at; last_xid/last_xid_ms
   * are kept for display; app_xids_10min counts application XIDs in the
   * sliding window. The sampler fills these from wait_event(), never the
   * provider's sample(). */
  unsigned xid_new, last_xid;
  int64_t last_xid_ms;
  unsigned app_xids_10min;
  uint32_t valid;   /* GPU_F_* bits that returned SUCCESS */
  int last_rc;      /* worst NVML return code of this sample (GPU_RC_*) */
  int64_t sample_ms; /* when sampled (sampler's clock) */
} gpu_readings;

typedef struct gpu_health {
  gpu_readings r;
  gh_state state;
  char reason[GPU_REASON_MAX];
  unsigned good_streak, bad_streak; /* consecutive clean / WARN samples */
  bool sticky;          /* was UNHEALTHY and has not yet recovered */
  int64_t since_ms;     /* when `state` was entered */
  int64_t recovered_ms; /* last DEGRADED|UNHEALTHY → HEALTHY (flap penalty) */
  unsigned transitions; /* state changes so far (metrics, flap detection) */
} gpu_health;

/* X(NAME, "name") of the providers. */
#define GPU_PROVIDER_MAP(X)                                                    \
  X(NONE, "none")                                                              \
  X(NVML, "nvml")                                                              \
  X(FAKE, "fake")

typedef enum gpu_provider_kind {
#define GPU_PROVIDER_ENUM(name, str) GPU_PROVIDER_##name,
  GPU_PROVIDER_MAP(GPU_PROVIDER_ENUM)
#undef GPU_PROVIDER_ENUM
} gpu_provider_kind;

static inline const char *gpu_provider_name(int kind) {
  switch (kind) {
#define GPU_PROVIDER_CASE(name, str)                                           \
  case GPU_PROVIDER_##name:                                                    \
    return str;
    GPU_PROVIDER_MAP(GPU_PROVIDER_CASE)
#undef GPU_PROVIDER_CASE
  }
  return "none";
}

typedef struct node_gpu_report {
  char node_id[64];
  uint64_t seq;          /* monotonically increasing per sample */
  int64_t agent_ms;      /* agent's clock, informational only */
  int64_t recv_mono_ms;  /* receiver's CLOCK_MONOTONIC; judges staleness */
  int provider;          /* gpu_provider_kind */
  int node_rc;           /* NVML rc of init/count (GPU_RC_*), 0 = fine */
  unsigned expected_gpus, n_gpus;
  bool draining;         /* node-wide fault seen; sticky until undrained */
  char drain_reason[GPU_REASON_MAX];
  char provider_reason[160]; /* why provider is `none`, or "" */
  gpu_health gpu[GPU_MAX];
} node_gpu_report;

#endif /* SKALD_HEALTH_GPU_H */
