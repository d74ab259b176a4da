/*
 * provider_fake.c — a scripted GPU provider, so every health transition is
 * tested without a GPU (see provider.h and docs/gpu.md for the format):
 *
 *   gpus 2 mem_total=85899345920 slowdown=87 shutdown=92
 *   0     0 temp=45 util=10 mem_used=1073741824
 *   5000  0 temp=88 clock_events=0x40
 *   10000 1 xid=79
 *   15000 0 rc=15
 *   20000 node rc=9
 *
 * Line 1 sets the GPU count and readings shared by every GPU; later lines
 * are "time-ms gpu|node key=value...", times never decreasing. A value
 * persists until a later line changes it; "-" makes a field unsupported.
 * xid=N is an event, reported by wait_event() at its time, never by
 * sample(). Parsing is strict: the first problem fails with its line number.
 *
 * Invariants: lines[] and events[] are sorted by time; `next_line` and
 * `next_event` only move forward; `mu` guards all mutable state, since
 * sample() and wait_event() run on different threads.
 */
#include "health/provider.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/err.h"

/* X(ID, "key", valid bit) for per-GPU keys. */
#define FAKE_KEY_MAP(X)                                                        \
  X(TEMP, "temp", GPU_F_TEMP)                                                  \
  X(SLOWDOWN, "slowdown", GPU_F_TEMP_SLOWDOWN)                                 \
  X(SHUTDOWN, "shutdown", GPU_F_TEMP_SHUTDOWN)                                 \
  X(UTIL, "util", GPU_F_UTIL)                                                  \
  X(UTIL_MEM, "util_mem", GPU_F_UTIL)                                          \
  X(MEM_TOTAL, "mem_total", GPU_F_MEM)                                         \
  X(MEM_USED, "mem_used", GPU_F_MEM)                                           \
  X(POWER, "power", GPU_F_POWER)                                               \
  X(POWER_LIMIT, "power_limit", GPU_F_POWER_LIMIT)                             \
  X(CLOCK_EVENTS, "clock_events", GPU_F_CLOCK_EVENTS)                          \
  X(ECC_VOL_UNC, "ecc_vol_unc", GPU_F_ECC_VOL)                                 \
  X(ECC_VOL_CORR, "ecc_vol_corr", GPU_F_ECC_VOL)                               \
  X(ECC_AGG_UNC, "ecc_agg_unc", GPU_F_ECC_AGG)                                 \
  X(RETIRED_SBE, "retired_sbe", GPU_F_RETIRED)                                 \
  X(RETIRED_DBE, "retired_dbe", GPU_F_RETIRED)                                 \
  X(RETIRED_PENDING, "retired_pending", GPU_F_RETIRED_PENDING)                 \
  X(REMAP_UNC, "remap_unc", GPU_F_REMAP)                                       \
  X(REMAP_PENDING, "remap_pending", GPU_F_REMAP)                               \
  X(REMAP_FAILED, "remap_failed", GPU_F_REMAP)                                 \
  X(PCIE_REPLAY, "pcie_replay", GPU_F_PCIE_REPLAY)                             \
  X(RECOVERY, "recovery", GPU_F_RECOVERY)                                      \
  X(RC, "rc", 0)                                                               \
  X(XID, "xid", 0)                                                             \
  X(NAME, "name", GPU_F_NAME)                                                  \
  X(UUID, "uuid", 0)

typedef enum fkey {
#define FAKE_KEY_ENUM(id, str, bit) K_##id,
  FAKE_KEY_MAP(FAKE_KEY_ENUM)
#undef FAKE_KEY_ENUM
      K_COUNT
} fkey;

static const struct {
  const char *name;
  uint32_t bit;
} keys[] = {
#define FAKE_KEY_ROW(id, str, bit) {str, bit},
    FAKE_KEY_MAP(FAKE_KEY_ROW)
#undef FAKE_KEY_ROW
};

#define NODE_TARGET (-1)
#define LINE_MAX_LEN 1024
#define FIELDS_MAX 32

typedef struct fkv {
  int key;  /* fkey, or for node lines 0 = rc, 1 = count */
  bool na;  /* "-": unsupported */
  uint64_t num;
  char str[GPU_NAME_MAX];
} fkv;

typedef struct fline {
  int64_t t;
  int target; /* GPU index or NODE_TARGET; -2 = header (all GPUs) */
  unsigned n;
  fkv kv[FIELDS_MAX];
} fline;

typedef struct fevent {
  int64_t t;
  unsigned gpu, xid;
} fevent;

typedef struct fake {
  pthread_mutex_t mu;
  fline *lines;
  size_t n_lines, next_line;
  fevent *events;
  size_t n_events, next_event;
  unsigned n_gpus, count; /* scripted GPUs; currently visible ones */
  int node_rc;
  gpu_readings gpu[GPU_MAX];
  provider_clock_fn now;
  void *clock_ctx;
  int64_t t0; /* clock at open() */
} fake;

/* ---- parsing ------------------------------------------------------------- */

static int parse_u64(const char *s, uint64_t *out) {
  if (*s == '\0' || *s == '-' || *s == '+')
    return -1;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno != 0 || *end != '\0')
    return -1;
  *out = v;
  return 0;
}

static int parse_kv(char *tok, bool node, unsigned ln, fkv *kv,
                    sk_error *err) {
  char *eq = strchr(tok, '=');
  if (eq == NULL || eq == tok)
    return sk_error_set(err, SK_EINVAL, "line %u: expected key=value, got \"%s\"",
                        ln, tok);
  *eq = '\0';
  const char *val = eq + 1;
  *kv = (fkv){.key = -1};
  if (node) {
    kv->key = strcmp(tok, "rc") == 0 ? 0 : strcmp(tok, "count") == 0 ? 1 : -1;
  } else {
    for (int k = 0; k < K_COUNT; k++)
      if (strcmp(tok, keys[k].name) == 0)
        kv->key = k;
  }
  if (kv->key < 0)
    return sk_error_set(err, SK_EINVAL, "line %u: unknown key \"%s\"", ln, tok);
  if (!node && (kv->key == K_NAME || kv->key == K_UUID)) {
    if (*val == '\0' || strlen(val) >= sizeof kv->str)
      return sk_error_set(err, SK_EINVAL, "line %u: bad value for %s", ln, tok);
    snprintf(kv->str, sizeof kv->str, "%s", val);
    return 0;
  }
  if (strcmp(val, "-") == 0 && !node && keys[kv->key].bit != 0) {
    kv->na = true;
    return 0;
  }
  if (parse_u64(val, &kv->num) != 0)
    return sk_error_set(err, SK_EINVAL, "line %u: bad number \"%s\" for %s", ln,
                        val, tok);
  return 0;
}

static int parse_header(char **tok, unsigned ntok, unsigned ln, fake *f,
                        fline *l, sk_error *err) {
  uint64_t n;
  if (ntok < 2 || strcmp(tok[0], "gpus") != 0)
    return sk_error_set(err, SK_EINVAL,
                        "line %u: script must start with \"gpus N\"", ln);
  if (parse_u64(tok[1], &n) != 0 || n > GPU_MAX)
    return sk_error_set(err, SK_EINVAL, "line %u: gpu count must be 0..%d", ln,
                        GPU_MAX);
  f->n_gpus = f->count = (unsigned)n;
  l->t = 0;
  l->target = -2;
  for (unsigned i = 2; i < ntok; i++) {
    int rc = parse_kv(tok[i], false, ln, &l->kv[l->n], err);
    if (rc != 0)
      return rc;
    if (l->kv[l->n].key == K_XID || l->kv[l->n].key == K_UUID)
      return sk_error_set(err, SK_EINVAL, "line %u: %s is per gpu", ln,
                          keys[l->kv[l->n].key].name);
    l->n++;
  }
  return 0;
}

static int parse_line(char **tok, unsigned ntok, unsigned ln, fake *f,
                      int64_t prev_t, fline *l, sk_error *err) {
  uint64_t t, g;
  if (ntok < 3)
    return sk_error_set(err, SK_EINVAL,
                        "line %u: expected \"time gpu key=value...\"", ln);
  if (parse_u64(tok[0], &t) != 0 || t > INT64_MAX / 2)
    return sk_error_set(err, SK_EINVAL, "line %u: bad time \"%s\"", ln, tok[0]);
  if ((int64_t)t < prev_t)
    return sk_error_set(err, SK_EINVAL,
                        "line %u: time %llu is before the previous line's %lld",
                        ln, (unsigned long long)t, (long long)prev_t);
  bool node = strcmp(tok[1], "node") == 0;
  if (!node && (parse_u64(tok[1], &g) != 0 || g >= f->n_gpus))
    return sk_error_set(err, SK_EINVAL,
                        "line %u: gpu \"%s\" is not node or 0..%u", ln, tok[1],
                        f->n_gpus == 0 ? 0 : f->n_gpus - 1);
  l->t = (int64_t)t;
  l->target = node ? NODE_TARGET : (int)g;
  for (unsigned i = 2; i < ntok; i++) {
    int rc = parse_kv(tok[i], node, ln, &l->kv[l->n], err);
    if (rc != 0)
      return rc;
    if (node && l->kv[l->n].key == 1 && l->kv[l->n].num > f->n_gpus)
      return sk_error_set(err, SK_EINVAL, "line %u: count above gpus %u", ln,
                          f->n_gpus);
    l->n++;
  }
  return 0;
}

/* Splits one line (comment stripped) into tokens; 0 tokens = blank. */
static int tokenize(char *s, char **tok, unsigned *ntok, unsigned ln,
                    sk_error *err) {
  char *hash = strchr(s, '#');
  if (hash != NULL)
    *hash = '\0';
  *ntok = 0;
  char *save = NULL;
  for (char *t = strtok_r(s, " \t\r", &save); t != NULL;
       t = strtok_r(NULL, " \t\r", &save)) {
    if (*ntok == FIELDS_MAX + 2)
      return sk_error_set(err, SK_EINVAL, "line %u: more than %d fields", ln,
                          FIELDS_MAX);
    tok[(*ntok)++] = t;
  }
  return 0;
}

static int add_events(fake *f, const fline *l) {
  for (unsigned i = 0; i < l->n; i++) {
    if (l->target < 0 || l->kv[i].key != K_XID)
      continue;
    fevent *ev = realloc(f->events, (f->n_events + 1) * sizeof *ev);
    if (ev == NULL)
      return SK_ENOMEM;
    f->events = ev;
    ev[f->n_events++] = (fevent){l->t, (unsigned)l->target,
                                 (unsigned)l->kv[i].num};
  }
  return 0;
}

static int parse_one(fake *f, char *s, unsigned ln, bool *have_header,
                     sk_error *err) {
  char *tok[FIELDS_MAX + 2];
  unsigned ntok;
  int rc = tokenize(s, tok, &ntok, ln, err);
  if (rc != 0 || ntok == 0)
    return rc;
  fline *lines = realloc(f->lines, (f->n_lines + 1) * sizeof *lines);
  if (lines == NULL)
    return sk_error_set(err, SK_ENOMEM, NULL);
  f->lines = lines;
  fline *l = &lines[f->n_lines];
  *l = (fline){0};
  int64_t prev_t = f->n_lines > 0 ? lines[f->n_lines - 1].t : 0;
  rc = *have_header ? parse_line(tok, ntok, ln, f, prev_t, l, err)
                    : parse_header(tok, ntok, ln, f, l, err);
  if (rc != 0)
    return rc;
  *have_header = true;
  f->n_lines++;
  if (add_events(f, l) != 0)
    return sk_error_set(err, SK_ENOMEM, NULL);
  return 0;
}

static int parse_script(fake *f, const char *text, sk_error *err) {
  bool have_header = false;
  unsigned ln = 0;
  const char *p = text;
  while (*p != '\0') {
    size_t len = strcspn(p, "\n;");
    ln++;
    if (len >= LINE_MAX_LEN)
      return sk_error_set(err, SK_EINVAL, "line %u: longer than %d bytes", ln,
                          LINE_MAX_LEN - 1);
    char s[LINE_MAX_LEN];
    memcpy(s, p, len);
    s[len] = '\0';
    int rc = parse_one(f, s, ln, &have_header, err);
    if (rc != 0)
      return rc;
    p += len;
    if (*p != '\0')
      p++;
  }
  if (!have_header)
    return sk_error_set(err, SK_EINVAL, "line %u: script has no \"gpus N\" line",
                        ln == 0 ? 1 : ln);
  return 0;
}

/* ---- running --------------------------------------------------------------- */

static int64_t fake_now(const fake *f) {
  int64_t t = f->now != NULL ? f->now(f->clock_ctx) : clock_mono_ms();
  return t - f->t0;
}

static void apply_gpu_kv(gpu_readings *g, const fkv *kv) {
  g->valid |= keys[kv->key].bit;
  if (kv->na) {
    g->valid &= ~keys[kv->key].bit;
    return;
  }
  uint64_t v = kv->num;
  switch ((fkey)kv->key) {
  case K_TEMP: g->temp_c = (int)v; break;
  case K_SLOWDOWN: g->temp_slowdown_c = (int)v; break;
  case K_SHUTDOWN: g->temp_shutdown_c = (int)v; break;
  case K_UTIL: g->util_gpu = (unsigned)v; break;
  case K_UTIL_MEM: g->util_mem = (unsigned)v; break;
  case K_MEM_TOTAL: g->mem_total = v; break;
  case K_MEM_USED: g->mem_used = v; break;
  case K_POWER: g->power_mw = (unsigned)v; break;
  case K_POWER_LIMIT: g->power_limit_mw = (unsigned)v; break;
  case K_CLOCK_EVENTS: g->clock_events = v; break;
  case K_ECC_VOL_UNC: g->ecc_vol_unc = v; break;
  case K_ECC_VOL_CORR: g->ecc_vol_corr = v; break;
  case K_ECC_AGG_UNC: g->ecc_agg_unc = v; break;
  case K_RETIRED_SBE: g->retired_sbe = (unsigned)v; break;
  case K_RETIRED_DBE: g->retired_dbe = (unsigned)v; break;
  case K_RETIRED_PENDING: g->retired_pending = v != 0; break;
  case K_REMAP_UNC: g->remap_unc = (unsigned)v; break;
  case K_REMAP_PENDING: g->remap_pending = v != 0; break;
  case K_REMAP_FAILED: g->remap_failed = v != 0; break;
  case K_PCIE_REPLAY: g->pcie_replay = (unsigned)v; break;
  case K_RECOVERY: g->recovery_action = (int)v; break;
  case K_RC: g->last_rc = (int)v; break;
  case K_NAME: snprintf(g->name, sizeof g->name, "%s", kv->str); break;
  case K_UUID: snprintf(g->uuid, sizeof g->uuid, "%s", kv->str); break;
  case K_XID: break; /* an event, see add_events() */
  case K_COUNT: break;
  }
  g->mem_free = g->mem_total > g->mem_used ? g->mem_total - g->mem_used : 0;
}

static void apply_line(fake *f, const fline *l) {
  for (unsigned i = 0; i < l->n; i++) {
    const fkv *kv = &l->kv[i];
    if (l->target == NODE_TARGET) {
      if (kv->key == 0)
        f->node_rc = (int)kv->num;
      else
        f->count = (unsigned)kv->num;
    } else if (l->target == -2) {
      for (unsigned g = 0; g < f->n_gpus; g++)
        apply_gpu_kv(&f->gpu[g], kv);
    } else {
      apply_gpu_kv(&f->gpu[l->target], kv);
    }
  }
}

static void advance(fake *f, int64_t now) {
  while (f->next_line < f->n_lines && f->lines[f->next_line].t <= now)
    apply_line(f, &f->lines[f->next_line++]);
}

static int fake_open(gpu_provider *p) {
  fake *f = p->impl;
  pthread_mutex_lock(&f->mu);
  f->t0 = 0;
  f->t0 = fake_now(f);
  f->next_line = f->next_event = 0;
  for (unsigned i = 0; i < GPU_MAX; i++) {
    f->gpu[i] = (gpu_readings){.index = i, .temp_c = -1,
                               .temp_slowdown_c = -1, .temp_shutdown_c = -1,
                               .valid = GPU_F_NAME};
    snprintf(f->gpu[i].uuid, sizeof f->gpu[i].uuid,
             "GPU-fake0000-0000-0000-0000-%012u", i);
    snprintf(f->gpu[i].name, sizeof f->gpu[i].name, "Skald Fake GPU");
  }
  advance(f, 0);
  pthread_mutex_unlock(&f->mu);
  return 0;
}

static int fake_sample(gpu_provider *p, node_gpu_report *out) {
  fake *f = p->impl;
  pthread_mutex_lock(&f->mu);
  int64_t now = fake_now(f);
  advance(f, now);
  out->node_rc = f->node_rc;
  out->n_gpus = f->node_rc != 0 ? 0 : f->count;
  for (unsigned i = 0; i < out->n_gpus; i++) {
    out->gpu[i].r = f->gpu[i];
    out->gpu[i].r.sample_ms = now;
  }
  pthread_mutex_unlock(&f->mu);
  return 0;
}

static int take_event(fake *f, int64_t now, unsigned *gpu, unsigned *xid,
                      uint64_t *type) {
  if (f->next_event >= f->n_events || f->events[f->next_event].t > now)
    return SK_ETIMEDOUT;
  const fevent *ev = &f->events[f->next_event++];
  *gpu = ev->gpu;
  *xid = ev->xid;
  *type = PROVIDER_EVENT_XID;
  return 0;
}

static int fake_wait_event(gpu_provider *p, unsigned *gpu, unsigned *xid,
                           uint64_t *type, unsigned timeout_ms) {
  fake *f = p->impl;
  int64_t waited = 0;
  for (;;) {
    pthread_mutex_lock(&f->mu);
    int64_t now = fake_now(f);
    advance(f, now);
    int rc = take_event(f, now, gpu, xid, type);
    pthread_mutex_unlock(&f->mu);
    /* An injected clock only moves when the test moves it: never sleep. */
    if (rc == 0 || f->now != NULL || waited >= timeout_ms)
      return rc;
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
    waited += 20;
  }
}

static void fake_close(gpu_provider *p) {
  fake *f = p->impl;
  if (f == NULL)
    return;
  pthread_mutex_destroy(&f->mu);
  free(f->lines);
  free(f->events);
  free(f);
  p->impl = NULL;
}

int provider_fake_init(gpu_provider *p, const char *text,
                       provider_clock_fn now, void *clock_ctx,
                       sk_error *err) {
  *p = (gpu_provider){.kind = GPU_PROVIDER_FAKE};
  fake *f = calloc(1, sizeof *f);
  if (f == NULL)
    return sk_error_set(err, SK_ENOMEM, NULL);
  pthread_mutex_init(&f->mu, NULL);
  f->now = now;
  f->clock_ctx = clock_ctx;
  p->impl = f;
  int rc = parse_script(f, text != NULL ? text : "", err);
  if (rc != 0) {
    snprintf(p->reason, sizeof p->reason, "fake gpu script is invalid");
    fake_close(p);
    return rc;
  }
  p->open = fake_open;
  p->sample = fake_sample;
  p->wait_event = fake_wait_event;
  p->close = fake_close;
  return 0;
}

static char *read_all(const char *path) {
  FILE *fp = fopen(path, "rb");
  if (fp == NULL)
    return NULL;
  char *data = NULL;
  size_t len = 0;
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, fp)) > 0) {
    char *d = realloc(data, len + n + 1);
    if (d == NULL) {
      free(data);
      fclose(fp);
      return NULL;
    }
    data = d;
    memcpy(data + len, chunk, n);
    len += n;
  }
  fclose(fp);
  if (data == NULL)
    data = calloc(1, 1);
  else
    data[len] = '\0';
  return data;
}

int provider_fake_init_env(gpu_provider *p, provider_clock_fn now,
                           void *clock_ctx, sk_error *err) {
  const char *path = getenv("SKALD_GPU_FAKE_SCRIPT");
  const char *inline_text = getenv("SKALD_GPU_FAKE");
  if (path != NULL && *path != '\0') {
    char *text = read_all(path);
    if (text == NULL) {
      *p = (gpu_provider){.kind = GPU_PROVIDER_FAKE};
      return sk_error_set(err, SK_EIO, "could not read fake gpu script");
    }
    int rc = provider_fake_init(p, text, now, clock_ctx, err);
    free(text);
    return rc;
  }
  if (inline_text != NULL && *inline_text != '\0')
    return provider_fake_init(p, inline_text, now, clock_ctx, err);
  *p = (gpu_provider){.kind = GPU_PROVIDER_FAKE};
  return sk_error_set(err, SK_EINVAL,
                      "SKALD_GPU_FAKE_SCRIPT or SKALD_GPU_FAKE must be set");
}
