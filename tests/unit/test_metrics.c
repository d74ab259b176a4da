/*
 * test_metrics.c — obs/metrics.c: registration checks, exact rendering of
 * counters, gauges and histograms in the text exposition format 0.0.4
 * (escaping, number formatting, cumulative buckets with +Inf, _sum and
 * _count), a validator that checks every rendered line against the
 * format's grammar, and concurrent observations from threads that must sum
 * exactly.
 */
#include "obs/metrics.h"

#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a validator for the text exposition format ------------------------ */

static bool is_name(const char **p, bool colon) {
  const char *s = *p;
  if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_' ||
        (colon && *s == ':')))
    return false;
  while ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
         (*s >= '0' && *s <= '9') || *s == '_' || (colon && *s == ':'))
    s++;
  *p = s;
  return true;
}

static bool is_value(const char *s, const char *end) {
  size_t n = (size_t)(end - s);
  if (n == 0)
    return false;
  if ((n == 4 && (!strncmp(s, "+Inf", 4) || !strncmp(s, "-Inf", 4))) ||
      (n == 3 && !strncmp(s, "NaN", 3)))
    return true;
  char tmp[64];
  if (n >= sizeof(tmp))
    return false;
  memcpy(tmp, s, n);
  tmp[n] = '\0';
  char *e;
  strtod(tmp, &e);
  return *e == '\0' && strpbrk(tmp, "xXpP") == NULL; /* no hex floats */
}

/* label="value" pairs; escapes \\ \" \n only. */
static bool is_labels(const char **p) {
  const char *s = *p + 1; /* after '{' */
  while (*s != '}') {
    if (!is_name(&s, false) || *s++ != '=' || *s++ != '"')
      return false;
    for (; *s != '"'; s++) {
      if (*s == '\0' || *s == '\n')
        return false;
      if (*s == '\\' && (s[1] != '\\' && s[1] != '"' && s[1] != 'n'))
        return false;
      if (*s == '\\')
        s++;
    }
    s++;
    if (*s == ',')
      s++;
    else if (*s != '}')
      return false;
  }
  *p = s + 1;
  return true;
}

static bool is_help_text(const char *s) {
  for (; *s; s++)
    if (*s == '\\' && s[1] != '\\' && s[1] != 'n')
      return false;
    else if (*s == '\\')
      s++;
  return true;
}

/* One line (no '\n'). NULL if valid, else why not. */
static const char *check_line(const char *line) {
  if (line[0] == '\0')
    return "empty line";
  if (!strncmp(line, "# HELP ", 7)) {
    const char *p = line + 7;
    if (!is_name(&p, true) || (*p != ' ' && *p != '\0'))
      return "bad HELP name";
    return is_help_text(p) ? NULL : "bad HELP escape";
  }
  if (!strncmp(line, "# TYPE ", 7)) {
    const char *p = line + 7;
    if (!is_name(&p, true) || *p++ != ' ')
      return "bad TYPE name";
    static const char *const types[] = {"counter", "gauge", "histogram",
                                        "summary", "untyped"};
    for (size_t i = 0; i < 5; i++)
      if (!strcmp(p, types[i]))
        return NULL;
    return "bad TYPE";
  }
  if (line[0] == '#')
    return NULL; /* a comment */
  const char *p = line;
  if (!is_name(&p, true))
    return "bad metric name";
  if (*p == '{' && !is_labels(&p))
    return "bad labels";
  if (*p++ != ' ')
    return "no space before value";
  const char *end = strchr(p, ' ');
  if (end == NULL)
    end = p + strlen(p);
  if (!is_value(p, end))
    return "bad value";
  if (*end == ' ') { /* optional timestamp: an integer */
    const char *t = end + 1;
    if (*t == '-')
      t++;
    if (*t == '\0')
      return "bad timestamp";
    for (; *t; t++)
      if (*t < '0' || *t > '9')
        return "bad timestamp";
  }
  return NULL;
}

/* Every line valid, the text ends in '\n', and each metric's TYPE comes
 * before its samples and only once. */
static void assert_valid_exposition(const char *text) {
  cr_assert(text[0] == '\0' || text[strlen(text) - 1] == '\n',
            "must end with a newline");
  char *copy = strdup(text);
  cr_assert_not_null(copy);
  char typed[64][128];
  size_t ntyped = 0;
  int lineno = 0;
  char *save = NULL;
  for (char *line = strtok_r(copy, "\n", &save); line != NULL;
       line = strtok_r(NULL, "\n", &save)) {
    lineno++;
    const char *why = check_line(line);
    cr_assert_null(why, "line %d: %s: [%s]", lineno, why, line);
    if (!strncmp(line, "# TYPE ", 7)) {
      char name[128];
      sscanf(line + 7, "%127s", name);
      for (size_t i = 0; i < ntyped; i++)
        cr_assert_str_neq(typed[i], name, "TYPE twice for %s", name);
      cr_assert_lt(ntyped, 64);
      snprintf(typed[ntyped++], sizeof(typed[0]), "%s", name);
    } else if (line[0] != '#') {
      bool found = false;
      for (size_t i = 0; i < ntyped && !found; i++)
        found = !strncmp(line, typed[i], strlen(typed[i]));
      cr_assert(found, "line %d: sample before its TYPE: %s", lineno, line);
    }
  }
  free(copy);
}

/* ---- helpers -------------------------------------------------------------- */

static metrics *reg;

static void setup(void) { cr_assert_eq(metrics_new(&reg), 0); }
static void teardown(void) { metrics_free(reg); }

TestSuite(metrics, .init = setup, .fini = teardown);

static char *render(void) {
  buf b = BUF_INIT;
  cr_assert_eq(metrics_render(reg, &b), 0);
  char *s = buf_steal(&b);
  cr_assert_not_null(s);
  assert_valid_exposition(s);
  return s;
}

#define L(...) ((const char *const[]){__VA_ARGS__})

/* ---- tests ---------------------------------------------------------------- */

Test(metrics, rejects_bad_definitions) {
  metric *m = (metric *)1;
  cr_expect_eq(metrics_counter(reg, "9bad", "h", NULL, 0, &m), SK_EINVAL);
  cr_expect_null(m);
  cr_expect_eq(metrics_counter(reg, "", "h", NULL, 0, &m), SK_EINVAL);
  cr_expect_eq(metrics_counter(reg, "a-b", "h", NULL, 0, &m), SK_EINVAL);
  cr_expect_eq(metrics_counter(reg, "ok", "h", L("a:b"), 1, &m), SK_EINVAL);
  cr_expect_eq(metrics_counter(reg, "ok", "h", L("__x"), 1, &m), SK_EINVAL);
  cr_expect_eq(metrics_counter(reg, "ok", "h", L("a", "a"), 2, &m),
               SK_EINVAL);
  const double b[] = {1, 2};
  const double unsorted[] = {2, 1};
  const double inf[] = {1, INFINITY};
  cr_expect_eq(metrics_histogram(reg, "h", "h", L("le"), 1, b, 2, &m),
               SK_EINVAL);
  cr_expect_eq(metrics_histogram(reg, "h", "h", NULL, 0, unsorted, 2, &m),
               SK_EINVAL);
  cr_expect_eq(metrics_histogram(reg, "h", "h", NULL, 0, inf, 2, &m),
               SK_EINVAL);
  cr_expect_eq(metrics_histogram(reg, "h", "h", NULL, 0, b, 0, &m), SK_EINVAL);
  cr_expect_eq(metrics_counter(reg, "ns:ok_total", "h", L("a"), 1, &m), 0);
  cr_expect_eq(metrics_gauge(reg, "ns:ok_total", "h", NULL, 0, &m), SK_EEXIST);
  cr_expect_null(m);
  char *s = render();
  cr_expect_str_eq(s, "# HELP ns:ok_total h\n# TYPE ns:ok_total counter\n");
  free(s);
}

Test(metrics, renders_counters_and_gauges_exactly) {
  metric *sagas, *depth, *recov;
  cr_assert_eq(metrics_counter(reg, "skald_sagas_finished_total",
                               "Sagas that reached a final state.",
                               L("workflow", "outcome"), 2, &sagas), 0);
  cr_assert_eq(metrics_gauge(reg, "skald_queue_depth", "Ready tasks.",
                             L("task_type"), 1, &depth), 0);
  cr_assert_eq(metrics_counter(reg, "skald_lease_recoveries_total",
                               "Leases taken over from dead nodes.", NULL, 0,
                               &recov), 0);
  metrics_inc(sagas, L("trip", "completed"));
  metrics_inc(sagas, L("trip", "completed"));
  metrics_inc(sagas, L("trip", "compensated"));
  metrics_add(sagas, L("refund", "completed"), 2.5);
  metrics_add(sagas, L("refund", "completed"), -7); /* ignored */
  metrics_set(depth, L("charge"), 12);
  metrics_set(depth, L("charge"), 7);
  metrics_add(depth, L("ship"), -3);
  metrics_observe(depth, L("charge"), 1); /* wrong type: ignored */
  metrics_inc(NULL, NULL);
  metrics_inc(sagas, L("missing", NULL)); /* NULL value: ignored */
  char *s = render();
  cr_expect_str_eq(s,
                   "# HELP skald_sagas_finished_total Sagas that reached a "
                   "final state.\n"
                   "# TYPE skald_sagas_finished_total counter\n"
                   "skald_sagas_finished_total{workflow=\"trip\",outcome="
                   "\"completed\"} 2\n"
                   "skald_sagas_finished_total{workflow=\"trip\",outcome="
                   "\"compensated\"} 1\n"
                   "skald_sagas_finished_total{workflow=\"refund\",outcome="
                   "\"completed\"} 2.5\n"
                   "# HELP skald_queue_depth Ready tasks.\n"
                   "# TYPE skald_queue_depth gauge\n"
                   "skald_queue_depth{task_type=\"charge\"} 7\n"
                   "skald_queue_depth{task_type=\"ship\"} -3\n"
                   "# HELP skald_lease_recoveries_total Leases taken over "
                   "from dead nodes.\n"
                   "# TYPE skald_lease_recoveries_total counter\n"
                   "skald_lease_recoveries_total 0\n");
  free(s);
  cr_expect_eq(metrics_value(sagas, L("trip", "completed")), 2);
  cr_expect_eq(metrics_value(depth, L("charge")), 7);
  /* Reading a series that does not exist creates nothing. */
  cr_expect_eq(metrics_value(depth, L("nope")), 0);
  char *again = render();
  cr_expect_null(strstr(again, "nope"));
  free(again);
}

Test(metrics, escapes_label_values_and_help) {
  metric *m;
  cr_assert_eq(metrics_gauge(reg, "esc", "back\\slash and\nnewline \"q\"",
                             L("v"), 1, &m), 0);
  metrics_set(m, L("a\\b\"c\nd"), 1);
  metrics_set(m, L(""), 0.1);
  metrics_set(m, L("x"), INFINITY);
  metrics_set(m, L("y"), -INFINITY);
  metrics_set(m, L("z"), NAN);
  metrics_set(m, L("big"), 1e21);
  metrics_set(m, L("third"), 1.0 / 3);
  char *s = render();
  cr_expect_str_eq(s,
                   "# HELP esc back\\\\slash and\\nnewline \"q\"\n"
                   "# TYPE esc gauge\n"
                   "esc{v=\"a\\\\b\\\"c\\nd\"} 1\n"
                   "esc{v=\"\"} 0.1\n"
                   "esc{v=\"x\"} +Inf\n"
                   "esc{v=\"y\"} -Inf\n"
                   "esc{v=\"z\"} NaN\n"
                   "esc{v=\"big\"} 1e+21\n"
                   "esc{v=\"third\"} 0.3333333333333333\n");
  free(s);
}

Test(metrics, renders_histograms_cumulatively) {
  metric *h, *plain;
  const double bounds[] = {0.005, 0.1, 1, 2.5};
  cr_assert_eq(metrics_histogram(reg, "skald_step_duration_seconds",
                                 "Step execution time.", L("step"), 1, bounds,
                                 4, &h), 0);
  cr_assert_eq(metrics_histogram(reg, "plain_seconds", "No labels.", NULL, 0,
                                 bounds + 2, 1, &plain), 0);
  metrics_observe(h, L("charge"), 0.005); /* le is inclusive */
  metrics_observe(h, L("charge"), 0.05);
  metrics_observe(h, L("charge"), 0.5);
  metrics_observe(h, L("charge"), 0.5);
  metrics_observe(h, L("charge"), 10);
  metrics_observe(h, L("charge"), NAN); /* ignored */
  metrics_observe(plain, NULL, 3);
  char *s = render();
  cr_expect_str_eq(
      s, "# HELP skald_step_duration_seconds Step execution time.\n"
         "# TYPE skald_step_duration_seconds histogram\n"
         "skald_step_duration_seconds_bucket{step=\"charge\",le=\"0.005\"} 1\n"
         "skald_step_duration_seconds_bucket{step=\"charge\",le=\"0.1\"} 2\n"
         "skald_step_duration_seconds_bucket{step=\"charge\",le=\"1\"} 4\n"
         "skald_step_duration_seconds_bucket{step=\"charge\",le=\"2.5\"} 4\n"
         "skald_step_duration_seconds_bucket{step=\"charge\",le=\"+Inf\"} 5\n"
         "skald_step_duration_seconds_sum{step=\"charge\"} 11.055\n"
         "skald_step_duration_seconds_count{step=\"charge\"} 5\n"
         "# HELP plain_seconds No labels.\n"
         "# TYPE plain_seconds histogram\n"
         "plain_seconds_bucket{le=\"1\"} 0\n"
         "plain_seconds_bucket{le=\"+Inf\"} 1\n"
         "plain_seconds_sum 3\n"
         "plain_seconds_count 1\n");
  free(s);
  cr_expect_eq(metrics_value(h, L("charge")), 5);
}

Test(metrics, series_handles_and_growth) {
  metric *m;
  cr_assert_eq(metrics_counter(reg, "many_total", "h", L("k"), 1, &m), 0);
  char v[32];
  for (int round = 0; round < 3; round++)
    for (int i = 0; i < 500; i++) {
      snprintf(v, sizeof(v), "v%d", i);
      metrics_inc(m, L(v));
    }
  for (int i = 0; i < 500; i++) {
    snprintf(v, sizeof(v), "v%d", i);
    cr_assert_eq(metrics_value(m, L(v)), 3, "%s", v);
  }
  metric_series *s1, *s2;
  cr_assert_eq(metrics_series(m, L("v7"), &s1), 0);
  cr_assert_eq(metrics_series(m, L("v7"), &s2), 0);
  cr_assert_eq(s1, s2);
  metrics_series_add(s1, 4);
  cr_expect_eq(metrics_value(m, L("v7")), 7);
  cr_expect_eq(metrics_series(m, L(NULL), &s1), SK_EINVAL);
  char *s = render();
  free(s);
}

Test(metrics, series_limit_drops_new_tuples) {
  metric *m;
  cr_assert_eq(metrics_counter(reg, "capped_total", "h", L("k"), 1, &m), 0);
  char v[32];
  for (int i = 0; i < METRICS_SERIES_MAX; i++) {
    snprintf(v, sizeof(v), "%d", i);
    metrics_inc(m, L(v));
  }
  metric_series *s;
  cr_expect_eq(metrics_series(m, L("one-too-many"), &s), SK_ETOOBIG);
  cr_expect_null(s);
  metrics_inc(m, L("one-too-many"));
  metrics_inc(m, L("0")); /* existing series still count */
  cr_expect_eq(metrics_value(m, L("0")), 2);
}

#define THREADS 8
#define ROUNDS 20000

typedef struct shared {
  metric *c, *g, *h;
} shared;

static void *hammer(void *arg) {
  shared *sh = arg;
  const char *const lbl[] = {"x"};
  metric_series *fast;
  if (metrics_series(sh->c, L("fast"), &fast) != 0)
    return NULL;
  for (int i = 0; i < ROUNDS; i++) {
    metrics_inc(sh->c, lbl);
    metrics_series_add(fast, 1);
    metrics_add(sh->g, NULL, 1);
    metrics_add(sh->g, NULL, -0.5);
    metrics_observe(sh->h, NULL, (i % 4) * 0.5); /* 0, 0.5, 1, 1.5 */
  }
  return NULL;
}

Test(metrics, concurrent_observations_sum_exactly) {
  shared sh;
  const double bounds[] = {0.5, 1};
  cr_assert_eq(metrics_counter(reg, "c_total", "h", L("k"), 1, &sh.c), 0);
  cr_assert_eq(metrics_gauge(reg, "g", "h", NULL, 0, &sh.g), 0);
  cr_assert_eq(metrics_histogram(reg, "hist", "h", NULL, 0, bounds, 2, &sh.h),
               0);
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++)
    cr_assert_eq(pthread_create(&t[i], NULL, hammer, &sh), 0);
  for (int i = 0; i < 3; i++) { /* render while they run */
    char *s = render();
    free(s);
  }
  for (int i = 0; i < THREADS; i++)
    pthread_join(t[i], NULL);
  double n = (double)THREADS * ROUNDS;
  cr_expect_eq(metrics_value(sh.c, L("x")), n);
  cr_expect_eq(metrics_value(sh.c, L("fast")), n);
  cr_expect_eq(metrics_value(sh.g, NULL), n * 0.5);
  cr_expect_eq(metrics_value(sh.h, NULL), n);
  char *s = render();
  char want[512];
  snprintf(want, sizeof(want),
           "# HELP hist h\n# TYPE hist histogram\n"
           "hist_bucket{le=\"0.5\"} %d\nhist_bucket{le=\"1\"} %d\n"
           "hist_bucket{le=\"+Inf\"} %d\nhist_sum %d\nhist_count %d\n",
           THREADS * ROUNDS / 2, THREADS * ROUNDS * 3 / 4, THREADS * ROUNDS,
           THREADS * ROUNDS * 3 / 4, THREADS * ROUNDS);
  cr_expect_not_null(strstr(s, want), "%s", s);
  free(s);
}

Test(metrics, validator_rejects_bad_lines) {
  static const char *const bad[] = {
      "",
      "9abc 1",
      "abc",
      "abc 1x",
      "abc{a=\"x} 1",
      "abc{a=\"\\t\"} 1",
      "abc{a=x} 1",
      "abc{-a=\"x\"} 1",
      "abc 1 12.5",
      "# TYPE abc nonsense",
      "# HELP abc bad \\t escape",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    cr_expect_not_null(check_line(bad[i]), "accepted [%s]", bad[i]);
  static const char *const good[] = {
      "abc 1",        "abc{} 1",         "abc{a=\"x\",} +Inf",
      "a:b_c 1e-05",  "abc 1 1700000000", "# free comment",
      "abc{a=\"\\\"\\n\\\\\"} NaN",
  };
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
    cr_expect_null(check_line(good[i]), "refused [%s]", good[i]);
}
