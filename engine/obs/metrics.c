/*
 * metrics.c — the metrics registry and its Prometheus text rendering
 * (metrics.h).
 *
 * Invariants: a series, once created, is never freed or moved before the
 * registry is, so handles stay valid without locks. A series is in exactly
 * one hash chain of its metric and in its metric's creation-ordered list.
 * Values are _Atomic uint64_t: counters and gauges hold the bits of a
 * double (updated with compare-and-swap), histogram buckets hold counts of
 * observations that fell in that bucket alone (made cumulative when
 * rendered). _count is rendered as the sum of the bucket counts, so it
 * always equals the +Inf bucket even while observations run.
 *
 * Thread: any. reg->mu guards the metric list; m->mu guards the series
 * table of m. Lock order: reg->mu, then m->mu. Atomics are updated outside
 * both.
 */
#include "obs/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct metric_series {
  metric *m;
  metric_series *chain; /* next in the hash chain */
  metric_series *next;  /* next in creation order */
  uint32_t hash;
  char **values;        /* nlabels strings, one allocation with the series */
  _Atomic uint64_t value; /* counter/gauge: double bits; histogram: sum */
  _Atomic uint64_t *buckets; /* histogram: nbounds + 1 counts */
};

struct metric {
  pthread_mutex_t mu;
  metric_type type;
  char *name;
  char *help;
  size_t nlabels;
  char *labels[METRICS_LABELS_MAX];
  size_t nbounds;
  double *bounds;
  metric_series **heads; /* hash chains, nheads (a power of two) */
  size_t nheads;
  size_t nseries;
  metric_series *first, *last;
  metric *next; /* registration order */
};

struct metrics {
  pthread_mutex_t mu;
  metric *first, *last;
};

/* ---- atomics on doubles ------------------------------------------------- */

static uint64_t dbits(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof(u));
  return u;
}

static double bitsd(uint64_t u) {
  double d;
  memcpy(&d, &u, sizeof(d));
  return d;
}

static void atomic_add_double(_Atomic uint64_t *p, double v) {
  uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
  while (!atomic_compare_exchange_weak_explicit(p, &old,
                                                dbits(bitsd(old) + v),
                                                memory_order_relaxed,
                                                memory_order_relaxed))
    ;
}

/* ---- registry ------------------------------------------------------------ */

int metrics_new(metrics **out) {
  *out = calloc(1, sizeof(**out));
  if (*out == NULL)
    return SK_ENOMEM;
  if (pthread_mutex_init(&(*out)->mu, NULL) != 0) {
    free(*out);
    *out = NULL;
    return SK_ENOMEM;
  }
  return SK_OK;
}

static void metric_free(metric *m) {
  for (metric_series *s = m->first, *n; s != NULL; s = n) {
    n = s->next;
    free(s);
  }
  for (size_t i = 0; i < m->nlabels; i++)
    free(m->labels[i]);
  pthread_mutex_destroy(&m->mu);
  free(m->heads);
  free(m->bounds);
  free(m->name);
  free(m->help);
  free(m);
}

void metrics_free(metrics *reg) {
  if (reg == NULL)
    return;
  for (metric *m = reg->first, *n; m != NULL; m = n) {
    n = m->next;
    metric_free(m);
  }
  pthread_mutex_destroy(&reg->mu);
  free(reg);
}

static bool name_ok(const char *s, bool colon) {
  if (s == NULL || s[0] == '\0' || (s[0] >= '0' && s[0] <= '9'))
    return false;
  for (; *s; s++) {
    char c = *s;
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || (colon && c == ':');
    if (!ok)
      return false;
  }
  return true;
}

static int check_def(metric_type type, const char *name,
                     const char *const *labels, size_t nlabels,
                     const double *bounds, size_t nbounds) {
  if (!name_ok(name, true) || nlabels > METRICS_LABELS_MAX ||
      (nlabels > 0 && labels == NULL))
    return SK_EINVAL;
  for (size_t i = 0; i < nlabels; i++) {
    if (!name_ok(labels[i], false) || strncmp(labels[i], "__", 2) == 0 ||
        (type == METRIC_HISTOGRAM && strcmp(labels[i], "le") == 0))
      return SK_EINVAL;
    for (size_t j = 0; j < i; j++)
      if (strcmp(labels[i], labels[j]) == 0)
        return SK_EINVAL;
  }
  if (type != METRIC_HISTOGRAM)
    return SK_OK;
  if (bounds == NULL || nbounds < 1 || nbounds > METRICS_BUCKETS_MAX)
    return SK_EINVAL;
  for (size_t i = 0; i < nbounds; i++)
    if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
      return SK_EINVAL;
  return SK_OK;
}

static metric *metric_alloc(metric_type type, const char *name,
                            const char *help, const char *const *labels,
                            size_t nlabels, const double *bounds,
                            size_t nbounds) {
  metric *m = calloc(1, sizeof(*m));
  if (m == NULL)
    return NULL;
  if (pthread_mutex_init(&m->mu, NULL) != 0) {
    free(m);
    return NULL;
  }
  m->type = type;
  m->name = strdup(name);
  m->help = strdup(help != NULL ? help : "");
  m->nheads = 16;
  m->heads = calloc(m->nheads, sizeof(*m->heads));
  bool ok = m->name != NULL && m->help != NULL && m->heads != NULL;
  for (size_t i = 0; i < nlabels && ok; i++) {
    m->labels[i] = strdup(labels[i]);
    m->nlabels = i + 1;
    ok = m->labels[i] != NULL;
  }
  if (ok && type == METRIC_HISTOGRAM) {
    m->bounds = malloc(nbounds * sizeof(double));
    ok = m->bounds != NULL;
    if (ok) {
      memcpy(m->bounds, bounds, nbounds * sizeof(double));
      m->nbounds = nbounds;
    }
  }
  if (!ok) {
    metric_free(m);
    return NULL;
  }
  return m;
}

static metric *find_metric(const metrics *reg, const char *name) {
  for (metric *m = reg->first; m != NULL; m = m->next)
    if (strcmp(m->name, name) == 0)
      return m;
  return NULL;
}

static int series_get(metric *m, const char *const *values, bool create,
                      metric_series **out);

static int define(metrics *reg, metric_type type, const char *name,
                  const char *help, const char *const *labels, size_t nlabels,
                  const double *bounds, size_t nbounds, metric **out) {
  *out = NULL;
  int rc = check_def(type, name, labels, nlabels, bounds, nbounds);
  if (rc != SK_OK)
    return rc;
  metric *m = metric_alloc(type, name, help, labels, nlabels, bounds, nbounds);
  metric_series *s;
  if (m == NULL || (nlabels == 0 && series_get(m, NULL, true, &s) != SK_OK)) {
    if (m != NULL)
      metric_free(m);
    return SK_ENOMEM;
  }
  pthread_mutex_lock(&reg->mu);
  if (find_metric(reg, name) != NULL) {
    pthread_mutex_unlock(&reg->mu);
    metric_free(m);
    return SK_EEXIST;
  }
  if (reg->last != NULL)
    reg->last->next = m;
  else
    reg->first = m;
  reg->last = m;
  pthread_mutex_unlock(&reg->mu);
  *out = m;
  return SK_OK;
}

int metrics_counter(metrics *reg, const char *name, const char *help,
                    const char *const *labels, size_t nlabels, metric **out) {
  return define(reg, METRIC_COUNTER, name, help, labels, nlabels, NULL, 0,
                out);
}

int metrics_gauge(metrics *reg, const char *name, const char *help,
                  const char *const *labels, size_t nlabels, metric **out) {
  return define(reg, METRIC_GAUGE, name, help, labels, nlabels, NULL, 0, out);
}

int metrics_histogram(metrics *reg, const char *name, const char *help,
                      const char *const *labels, size_t nlabels,
                      const double *bounds, size_t nbounds, metric **out) {
  return define(reg, METRIC_HISTOGRAM, name, help, labels, nlabels, bounds,
                nbounds, out);
}

/* ---- series ------------------------------------------------------------- */

static uint32_t hash_values(const metric *m, const char *const *values) {
  uint32_t h = 2166136261u; /* FNV-1a, 0xff between values */
  for (size_t i = 0; i < m->nlabels; i++) {
    for (const char *p = values[i]; *p; p++)
      h = (h ^ (uint8_t)*p) * 16777619u;
    h = (h ^ 0xffu) * 16777619u;
  }
  return h;
}

static bool same_values(const metric *m, const metric_series *s,
                        const char *const *values) {
  for (size_t i = 0; i < m->nlabels; i++)
    if (strcmp(s->values[i], values[i]) != 0)
      return false;
  return true;
}

/* One allocation: the series, its value pointers, its buckets, the
 * strings. */
static metric_series *series_alloc(metric *m, const char *const *values) {
  size_t nb = m->type == METRIC_HISTOGRAM ? m->nbounds + 1 : 0;
  size_t size = sizeof(metric_series) + nb * sizeof(_Atomic uint64_t) +
                m->nlabels * sizeof(char *);
  for (size_t i = 0; i < m->nlabels; i++)
    size += strlen(values[i]) + 1;
  metric_series *s = calloc(1, size);
  if (s == NULL)
    return NULL;
  s->m = m;
  s->buckets = (_Atomic uint64_t *)(s + 1);
  for (size_t i = 0; i < nb; i++)
    atomic_init(&s->buckets[i], 0);
  atomic_init(&s->value, dbits(0.0));
  s->values = (char **)(s->buckets + nb);
  char *p = (char *)(s->values + m->nlabels);
  for (size_t i = 0; i < m->nlabels; i++) {
    size_t n = strlen(values[i]) + 1;
    memcpy(p, values[i], n);
    s->values[i] = p;
    p += n;
  }
  return s;
}

/* Doubles the chains when they get long. Called with m->mu held. */
static void maybe_grow(metric *m) {
  if (m->nseries < 2 * m->nheads)
    return;
  size_t n = m->nheads * 4;
  metric_series **heads = calloc(n, sizeof(*heads));
  if (heads == NULL)
    return; /* longer chains, still correct */
  for (metric_series *s = m->first; s != NULL; s = s->next) {
    s->chain = heads[s->hash & (n - 1)];
    heads[s->hash & (n - 1)] = s;
  }
  free(m->heads);
  m->heads = heads;
  m->nheads = n;
}

/* Adds a new series to the chains and the creation list (m->mu held). */
static void link_series(metric *m, metric_series *s, uint32_t h) {
  s->hash = h;
  s->chain = m->heads[h & (m->nheads - 1)];
  m->heads[h & (m->nheads - 1)] = s;
  if (m->last != NULL)
    m->last->next = s;
  else
    m->first = s;
  m->last = s;
  m->nseries++;
  maybe_grow(m);
}

/* Finds the series of values; creates it when create is set (else a
 * missing one is SK_ENOENT). */
static int series_get(metric *m, const char *const *values, bool create,
                      metric_series **out) {
  for (size_t i = 0; i < m->nlabels; i++)
    if (values == NULL || values[i] == NULL)
      return SK_EINVAL;
  uint32_t h = hash_values(m, values);
  int rc = SK_OK;
  pthread_mutex_lock(&m->mu);
  metric_series *s = m->heads[h & (m->nheads - 1)];
  while (s != NULL && !(s->hash == h && same_values(m, s, values)))
    s = s->chain;
  if (s == NULL) {
    if (!create)
      rc = SK_ENOENT;
    else if (m->nseries >= METRICS_SERIES_MAX)
      rc = SK_ETOOBIG;
    else if ((s = series_alloc(m, values)) == NULL)
      rc = SK_ENOMEM;
    else
      link_series(m, s, h);
  }
  pthread_mutex_unlock(&m->mu);
  *out = rc == SK_OK ? s : NULL;
  return rc;
}

int metrics_series(metric *m, const char *const *values, metric_series **out) {
  *out = NULL;
  if (m == NULL)
    return SK_EINVAL;
  return series_get(m, values, true, out);
}

/* ---- observations -------------------------------------------------------- */

void metrics_series_add(metric_series *s, double v) {
  if (s == NULL || isnan(v))
    return;
  if (s->m->type == METRIC_COUNTER && !(v >= 0))
    return; /* counters only go up */
  if (s->m->type != METRIC_HISTOGRAM)
    atomic_add_double(&s->value, v);
}

void metrics_series_set(metric_series *s, double v) {
  if (s != NULL && s->m->type == METRIC_GAUGE)
    atomic_store_explicit(&s->value, dbits(v), memory_order_relaxed);
}

void metrics_series_observe(metric_series *s, double v) {
  if (s == NULL || s->m->type != METRIC_HISTOGRAM || isnan(v))
    return;
  const metric *m = s->m;
  size_t i = 0; /* le is inclusive: v goes in the first bucket with v <= le */
  while (i < m->nbounds && v > m->bounds[i])
    i++;
  atomic_fetch_add_explicit(&s->buckets[i], 1, memory_order_relaxed);
  atomic_add_double(&s->value, v);
}

static metric_series *lookup(metric *m, const char *const *values) {
  metric_series *s = NULL;
  if (m != NULL)
    (void)series_get(m, values, true, &s);
  return s;
}

void metrics_inc(metric *m, const char *const *values) {
  if (m != NULL && m->type == METRIC_COUNTER)
    metrics_series_add(lookup(m, values), 1.0);
}

void metrics_add(metric *m, const char *const *values, double v) {
  if (m != NULL && m->type != METRIC_HISTOGRAM)
    metrics_series_add(lookup(m, values), v);
}

void metrics_set(metric *m, const char *const *values, double v) {
  if (m != NULL && m->type == METRIC_GAUGE)
    metrics_series_set(lookup(m, values), v);
}

void metrics_observe(metric *m, const char *const *values, double v) {
  if (m != NULL && m->type == METRIC_HISTOGRAM)
    metrics_series_observe(lookup(m, values), v);
}

static uint64_t hist_count(const metric_series *s) {
  uint64_t n = 0;
  for (size_t i = 0; i <= s->m->nbounds; i++)
    n += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
  return n;
}

double metrics_value(metric *m, const char *const *values) {
  metric_series *s = NULL;
  if (m == NULL || series_get(m, values, false, &s) != SK_OK)
    return 0;
  if (m->type == METRIC_HISTOGRAM)
    return (double)hist_count(s);
  return bitsd(atomic_load_explicit(&s->value, memory_order_relaxed));
}

/* ---- rendering ----------------------------------------------------------- */

/* Whole numbers below 2^53 in plain digits (counters read best that way);
 * others as the shortest %g text that reads back as the same double, as
 * Go's strconv does for Prometheus clients; +Inf, -Inf, NaN. */
static void fmt_double(char *dst, size_t n, double v) {
  if (isnan(v)) {
    snprintf(dst, n, "NaN");
  } else if (isinf(v)) {
    snprintf(dst, n, "%s", v > 0 ? "+Inf" : "-Inf");
  } else if (fabs(v) < 9007199254740992.0 && v == floor(v)) {
    snprintf(dst, n, "%.0f", v);
  } else {
    for (int prec = 1; prec <= 17; prec++) {
      snprintf(dst, n, "%.*g", prec, v);
      if (strtod(dst, NULL) == v)
        break;
    }
  }
}

static void put_double(buf *b, double v) {
  char tmp[40];
  fmt_double(tmp, sizeof(tmp), v);
  buf_puts(b, tmp);
}

/* HELP text escapes backslash and newline; label values also '"'. */
static void put_escaped(buf *b, const char *s, bool quote) {
  for (; *s; s++) {
    if (*s == '\\')
      buf_puts(b, "\\\\");
    else if (*s == '\n')
      buf_puts(b, "\\n");
    else if (quote && *s == '"')
      buf_puts(b, "\\\"");
    else
      buf_putc(b, *s);
  }
}

/* {a="x",b="y"[,le="..."]} or nothing when there are no labels. */
static void put_labels(buf *b, const metric_series *s, const char *le) {
  const metric *m = s->m;
  if (m->nlabels == 0 && le == NULL)
    return;
  buf_putc(b, '{');
  for (size_t i = 0; i < m->nlabels; i++) {
    buf_printf(b, "%s%s=\"", i > 0 ? "," : "", m->labels[i]);
    put_escaped(b, s->values[i], true);
    buf_putc(b, '"');
  }
  if (le != NULL)
    buf_printf(b, "%sle=\"%s\"", m->nlabels > 0 ? "," : "", le);
  buf_putc(b, '}');
}

static void render_histogram(buf *b, const metric_series *s) {
  const metric *m = s->m;
  uint64_t cum = 0;
  char le[40];
  for (size_t i = 0; i <= m->nbounds; i++) {
    cum += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
    fmt_double(le, sizeof(le), i < m->nbounds ? m->bounds[i] : INFINITY);
    buf_printf(b, "%s_bucket", m->name);
    put_labels(b, s, le);
    buf_printf(b, " %llu\n", (unsigned long long)cum);
  }
  buf_printf(b, "%s_sum", m->name);
  put_labels(b, s, NULL);
  buf_putc(b, ' ');
  put_double(b, bitsd(atomic_load_explicit(&s->value, memory_order_relaxed)));
  buf_printf(b, "\n%s_count", m->name);
  put_labels(b, s, NULL);
  buf_printf(b, " %llu\n", (unsigned long long)cum);
}

static const char *type_name(metric_type t) {
  switch (t) {
  case METRIC_COUNTER:
    return "counter";
  case METRIC_GAUGE:
    return "gauge";
  case METRIC_HISTOGRAM:
    return "histogram";
  }
  return "untyped";
}

static void render_metric(buf *b, metric *m) {
  buf_printf(b, "# HELP %s ", m->name);
  put_escaped(b, m->help, false);
  buf_printf(b, "\n# TYPE %s %s\n", m->name, type_name(m->type));
  pthread_mutex_lock(&m->mu);
  for (const metric_series *s = m->first; s != NULL; s = s->next) {
    if (m->type == METRIC_HISTOGRAM) {
      render_histogram(b, s);
      continue;
    }
    buf_puts(b, m->name);
    put_labels(b, s, NULL);
    buf_putc(b, ' ');
    put_double(b, bitsd(atomic_load_explicit(&s->value, memory_order_relaxed)));
    buf_putc(b, '\n');
  }
  pthread_mutex_unlock(&m->mu);
}

int metrics_render(metrics *reg, buf *out) {
  pthread_mutex_lock(&reg->mu);
  for (metric *m = reg->first; m != NULL; m = m->next)
    render_metric(out, m);
  pthread_mutex_unlock(&reg->mu);
  return buf_ok(out) ? SK_OK : SK_ENOMEM;
}
