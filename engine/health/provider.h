/*
 * provider.h — where GPU readings come from: NVML (dlopen'd), a scripted
 * fake, or none.
 *
 * A provider is a small struct of function pointers (h2o's handler style)
 * with its state in `impl`. Contract:
 *   open()        0 or a negative SK_E*; on failure `reason` says why and
 *                 close() must still be called.
 *   sample()      fills out->n_gpus, out->node_rc and out->gpu[i].r (only
 *                 the readings half; never XIDs). 0, or a negative SK_E* when
 *                 the provider could not sample at all.
 *   wait_event()  blocks up to timeout_ms for one XID / ECC event: 0 with
 *                 *gpu (index), *xid and *type set; SK_ETIMEDOUT when none
 *                 came; SK_ENOTSUP when the provider has no events; another
 *                 negative SK_E* when waiting failed (every GPU is suspect).
 *   close()       releases everything; safe after a failed open.
 * sample() and wait_event() may be called from two threads at once (the
 * sampler and the event thread); open/close only while neither runs.
 *
 * Selection (provider_select): name "nvml", "fake" or "none"; NULL reads
 * SKALD_GPU_PROVIDER; unset means nvml if libnvidia-ml loads, else none.
 * The fake reads SKALD_GPU_FAKE_SCRIPT (a path) or SKALD_GPU_FAKE (the
 * script inline, ';' may separate lines). SKALD_NVML_LIB overrides the
 * library path.
 */
#ifndef SKALD_HEALTH_PROVIDER_H
#define SKALD_HEALTH_PROVIDER_H

#include <stddef.h>
#include <stdint.h>

#include <skald/skald.h>

#include "health/gpu.h"

#define PROVIDER_REASON_MAX 160

typedef struct gpu_provider {
  int (*open)(struct gpu_provider *);
  int (*sample)(struct gpu_provider *, node_gpu_report *out);
  int (*wait_event)(struct gpu_provider *, unsigned *gpu, unsigned *xid,
                    uint64_t *type, unsigned timeout_ms);
  void (*close)(struct gpu_provider *);
  void *impl;
  int kind;                          /* gpu_provider_kind */
  char reason[PROVIDER_REASON_MAX];  /* why it is none / failed to open */
} gpu_provider;

/* Event types (nvmlEventType*). */
#define PROVIDER_EVENT_SBE 0x1ULL
#define PROVIDER_EVENT_DBE 0x2ULL
#define PROVIDER_EVENT_XID 0x8ULL

/* ---- selection (provider_nvml.c) ----------------------------------------- */

/* Sets p up (not opened) as the provider named `name` (NULL: environment,
 * then default). An unknown name is SK_EINVAL; a fake without a script or
 * with a bad one is SK_EINVAL with err filled. nvml that cannot be loaded
 * when it was the default becomes `none` with p->reason set (not an error);
 * when asked for by name it is still `nvml` and open() fails with reason. */
int provider_select(gpu_provider *p, const char *name, sk_error *err);
/* The `none` provider: samples zero GPUs; reason is copied. */
void provider_none_init(gpu_provider *p, const char *reason);

/* ---- NVML (provider_nvml.c) ---------------------------------------------- */

/* Sets p up as NVML; lib_path NULL → SKALD_NVML_LIB → "libnvidia-ml.so.1".
 * The library is loaded by open(). */
void provider_nvml_init(gpu_provider *p, const char *lib_path);
/* How many optional symbols the loaded library lacks, and their names
 * (comma-separated, "" if none) — for tests and the startup log. */
unsigned provider_nvml_missing(const gpu_provider *p, char *names, size_t n);
/* Whether the _v2 names were found (1) or the legacy ones (0) for init. */
int provider_nvml_uses_v2(const gpu_provider *p);

/* ---- fake (provider_fake.c) ---------------------------------------------- */

typedef int64_t (*provider_clock_fn)(void *ctx);

/* Parses `text` (the script; see docs/gpu.md) and sets p up as the fake.
 * now (NULL: the monotonic clock) gives the time; script times are ms since
 * open(). Errors: SK_EINVAL with err->message "line N: ..." for the first
 * problem; SK_ENOMEM. */
int provider_fake_init(gpu_provider *p, const char *text,
                       provider_clock_fn now, void *clock_ctx,
                       sk_error *err);
/* Same, reading SKALD_GPU_FAKE_SCRIPT or SKALD_GPU_FAKE. SK_EINVAL if
 * neither is set; SK_EIO if the file cannot be read. */
int provider_fake_init_env(gpu_provider *p, provider_clock_fn now,
                           void *clock_ctx, sk_error *err);

#endif /* SKALD_HEALTH_PROVIDER_H */
