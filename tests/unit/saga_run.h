/*
 * saga_run.h — a harness for driving the pure decider through a saga in
 * unit tests: start a run from a JSON spec, feed results, and check at the
 * end that the fold of the whole log equals the state built step by step
 * (and that its JSON round-trips). Shared by test_saga_parallel.c and
 * test_saga_fallback.c; the includer defines SAGA_ID first.
 */
#ifndef SKALD_TESTS_SAGA_RUN_H
#define SKALD_TESTS_SAGA_RUN_H

#include <criterion/criterion.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "saga/saga.h"
#include "spec/spec_json.h"

#ifndef SAGA_ID
#error "define SAGA_ID before including saga_run.h"
#endif

#define T0 1700000000000LL

/* ---- the harness --------------------------------------------------------- */

static inline def_workflow *wf_json(const char *json) {
  def_workflow *wf = NULL;
  def_problems p;
  def_problems_init(&p);
  int rc = spec_parse(json, strlen(json), &wf, &p);
  cr_assert_eq(rc, SK_OK, "spec refused: %s", sk_err_name(rc));
  def_problems_clear(&p);
  return wf;
}

typedef struct run {
  def_workflow *wf;
  saga_state st;
  saga_rng rng;
  int64_t now;
  saga_decision d;
  saga_event *log;
  size_t n_log;
} run;

static inline void apply(run *r) {
  cr_assert_eq(saga_apply(&r->st, &r->d), SK_OK, "decision does not evolve");
  r->log = realloc(r->log, (r->n_log + r->d.n_events) * sizeof(saga_event));
  for (size_t i = 0; i < r->d.n_events; i++) {
    saga_event e = r->d.events[i];
    e.node = e.node ? strdup(e.node) : NULL;
    e.payload = strdup(e.payload);
    r->log[r->n_log++] = e;
  }
}

static inline void run_start(run *r, def_workflow *wf) {
  memset(r, 0, sizeof(*r));
  r->wf = wf;
  r->rng.s = 7;
  r->now = T0;
  saga_state_init(&r->st);
  saga_decision_init(&r->d);
  int rc = saga_decide_start(r->wf, SAGA_ID, "{\"n\":3}", NULL, NULL, r->now,
                             &r->rng, &r->d);
  cr_assert_eq(rc, SK_OK, "start: %s", sk_err_name(rc));
  apply(r);
}

static inline void run_init(run *r, const char *spec) {
  run_start(r, wf_json(spec));
}

static inline int result(run *r, int step, task_kind kind, int attempt, bool ok,
                         const char *output_or_type, bool retryable) {
  saga_result res = {.step = step, .kind = kind, .attempt = attempt, .ok = ok};
  if (ok)
    res.output = output_or_type;
  else {
    res.err_type = output_or_type;
    res.err_message = "boom";
    res.err_retryable = retryable;
  }
  saga_decision_clear(&r->d);
  int rc =
      saga_decide_result(r->wf, &r->st, &res, "node-1", r->now, &r->rng, &r->d);
  if (rc == SK_OK)
    apply(r);
  return rc;
}

static inline void ok_fwd(run *r, int step, const char *out) {
  cr_assert_eq(result(r, step, TASK_KIND_FWD, r->st.steps[step].attempts, true,
                      out, false),
               SK_OK, "result of step %d refused", step);
}

static inline void fail_fwd(run *r, int step, const char *type,
                            bool retryable) {
  cr_assert_eq(result(r, step, TASK_KIND_FWD, r->st.steps[step].attempts, false,
                      type, retryable),
               SK_OK, "failure of step %d refused", step);
}

static inline void ok_comp(run *r, int step) {
  cr_assert_eq(result(r, step, TASK_KIND_COMP, r->st.steps[step].comp_attempts,
                      true, "{}", false),
               SK_OK);
}

static inline const char *types(run *r) {
  static char s[2048];
  s[0] = 0;
  for (size_t i = 0; i < r->d.n_events; i++) {
    char one[64];
    snprintf(one, sizeof(one), "%s%s(%d)", i ? "," : "",
             saga_event_name(r->d.events[i].type), r->d.events[i].step);
    strcat(s, one);
  }
  return s;
}

#define expect_types(r, want) cr_expect_str_eq(types(r), want)

static inline char *field(run *r, size_t i, const char *key) {
  cr_assert_lt(i, r->d.n_events);
  cJSON *p = cJSON_Parse(r->d.events[i].payload);
  cJSON *it = cJSON_GetObjectItemCaseSensitive(p, key);
  char *s = it ? cJSON_PrintUnformatted(it) : strdup("<absent>");
  cJSON_Delete(p);
  return s;
}

#define expect_field(r, i, key, want)                                          \
  do {                                                                         \
    char *got_ = field(r, i, key);                                             \
    cr_expect_str_eq(got_, want, "event %zu field %s", (size_t)(i), key);      \
    free(got_);                                                                \
  } while (0)

static inline const char *cancels(run *r) {
  static char s[256];
  s[0] = 0;
  for (size_t i = 0; i < r->d.n_cancel_steps; i++) {
    char one[16];
    snprintf(one, sizeof(one), "%s%d", i ? "," : "", r->d.cancel_steps[i]);
    strcat(s, one);
  }
  return s;
}

static inline void run_finish(run *r) {
  saga_state folded;
  cr_assert_eq(saga_fold(r->log, r->n_log, &folded), SK_OK);
  char *a, *b;
  cr_assert_eq(saga_state_to_json(&r->st, &a), SK_OK);
  cr_assert_eq(saga_state_to_json(&folded, &b), SK_OK);
  cr_expect_str_eq(a, b, "fold differs from step-by-step apply");
  saga_state back;
  cr_assert_eq(saga_state_from_json(a, &back), SK_OK);
  char *c;
  cr_assert_eq(saga_state_to_json(&back, &c), SK_OK);
  cr_expect_str_eq(a, c, "state JSON does not round-trip");
  for (size_t i = 0; i < r->n_log; i++)
    saga_event_clear(&r->log[i]);
  free(a);
  free(b);
  free(c);
  free(r->log);
  saga_state_clear(&back);
  saga_state_clear(&folded);
  saga_state_clear(&r->st);
  saga_decision_clear(&r->d);
  def_workflow_unref(r->wf);
}

#endif /* SKALD_TESTS_SAGA_RUN_H */
