/*
 * test_def.c — the definition model (engine/spec/def.c): lifetime, deep
 * copies, look-ups and the effective retry / timeout / bulkhead policies.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "spec/def.h"
#include "spec/spec_json.h"

static const char *const SPEC =
    "{\"name\":\"wf\",\"version\":3,\"description\":\"d\",\"timeout_ms\":9,"
    "\"defaults\":{\"timeout_ms\":5000,\"retry\":{\"max_attempts\":7,"
    "\"initial_interval_ms\":50,\"jitter\":0.5,\"max_interval_ms\":900,"
    "\"non_retryable_errors\":[\"Fatal\"]}},"
    "\"steps\":["
    "{\"name\":\"a\",\"task\":\"t.a\"},"
    "{\"name\":\"b\",\"task\":\"t.b\",\"retry\":{\"max_attempts\":2,"
    "\"backoff_coefficient\":3,\"non_retryable_errors\":[\"Nope\",\"Bad\"]},"
    "\"timeout_ms\":77,\"bulkhead\":\"pool\","
    "\"compensate\":{\"task\":\"t.undo\",\"timeout_ms\":88}},"
    "{\"name\":\"c\",\"task\":\"t.c\",\"compensate\":{\"task\":\"t.undo\","
    "\"retry\":{\"max_attempts\":4,\"max_interval_ms\":1234}}},"
    "{\"name\":\"p\",\"parallel\":[[{\"name\":\"x\",\"task\":\"t.x\","
    "\"fallback\":{\"http\":{\"method\":\"GET\",\"url\":\"http://h\","
    "\"headers\":{\"A\":\"b\"},\"success_codes\":[200,204]},"
    "\"compensate\":{\"task\":\"t.fb\"}}}]]}]}";

static def_workflow *parse(const char *text) {
  def_problems p;
  def_problems_init(&p);
  def_workflow *wf = NULL;
  int rc = spec_parse(text, strlen(text), &wf, &p);
  cr_assert_eq(rc, SK_OK, "spec_parse: %d (%s)", rc,
               p.n ? p.items[0].message : "");
  def_problems_clear(&p);
  return wf;
}

Test(def, new_is_empty_with_one_ref) {
  def_workflow *wf = def_workflow_new();
  cr_assert_not_null(wf);
  cr_assert_eq(atomic_load(&wf->refs), 1);
  cr_assert_null(wf->name);
  cr_assert_eq(wf->n_steps, 0);
  cr_assert_eq(wf->on_failure, DEF_ON_FAILURE_COMPENSATE);
  def_workflow_unref(wf);
  def_workflow_unref(NULL);
}

Test(def, ref_and_unref_count) {
  def_workflow *wf = parse(SPEC);
  cr_assert_eq(def_workflow_ref(wf), wf);
  cr_assert_eq(atomic_load(&wf->refs), 2);
  def_workflow_unref(wf);
  cr_assert_eq(atomic_load(&wf->refs), 1);
  cr_assert_str_eq(wf->name, "wf"); /* still alive */
  def_workflow_unref(wf);           /* freed: ASan checks no leak */
  cr_assert_null(def_workflow_ref(NULL));
}

Test(def, kind_names) {
  cr_assert_str_eq(def_kind_name(DEF_KIND_TASK), "task");
  cr_assert_str_eq(def_kind_name(DEF_KIND_HTTP), "http");
  cr_assert_str_eq(def_kind_name(DEF_KIND_SLEEP), "sleep");
  cr_assert_str_eq(def_kind_name(DEF_KIND_PARALLEL), "parallel");
  cr_assert_str_eq(def_kind_name((def_kind)42), "unknown");
}

Test(def, name_pattern) {
  char long_ok[SK_NAME_MAX + 2];
  memset(long_ok, 'a', sizeof(long_ok));
  long_ok[SK_NAME_MAX] = '\0';
  cr_assert(def_name_valid(long_ok));
  long_ok[SK_NAME_MAX] = 'a';
  long_ok[SK_NAME_MAX + 1] = '\0';
  cr_assert_not(def_name_valid(long_ok));
  cr_assert(def_name_valid("a"));
  cr_assert(def_name_valid("flight.reserve-2_x"));
  cr_assert(def_name_valid("..."));
  cr_assert_not(def_name_valid(""));
  cr_assert_not(def_name_valid(NULL));
  cr_assert_not(def_name_valid("Upper"));
  cr_assert_not(def_name_valid("with space"));
  cr_assert_not(def_name_valid("slash/no"));
  cr_assert_not(def_name_valid("\xc3\xa9t\xc3\xa9"));
}

Test(def, clone_is_deep_and_equal) {
  def_workflow *wf = parse(SPEC);
  def_workflow *c = def_workflow_clone(wf);
  cr_assert_not_null(c);
  cr_assert_eq(atomic_load(&c->refs), 1);
  cr_assert(def_equal(wf, c));
  cr_assert_neq(c->name, wf->name);
  cr_assert_neq(c->steps, wf->steps);
  cr_assert_neq(c->steps[1].action.retry.non_retryable_errors,
                wf->steps[1].action.retry.non_retryable_errors);
  const def_step *x = &c->steps[3].branches[0].steps[0];
  cr_assert_str_eq(x->name, "x");
  cr_assert_not_null(x->fallback);
  cr_assert_eq(x->fallback->http.n_success_codes, 2);
  cr_assert_eq(x->fallback->http.success_codes[1], 204);
  cr_assert_str_eq(x->fallback_compensate->task_type, "t.fb");
  cr_assert_neq(x->fallback->http.success_codes,
                wf->steps[3].branches[0].steps[0].fallback->http.success_codes);
  /* Changing the original leaves the clone alone. */
  wf->steps[0].name[0] = 'z';
  wf->steps[3].branches[0].steps[0].fallback->http.success_codes[1] = 500;
  cr_assert_str_eq(c->steps[0].name, "a");
  cr_assert_eq(x->fallback->http.success_codes[1], 204);
  cr_assert_not(def_equal(wf, c));
  def_workflow_unref(wf);
  def_workflow_unref(c);
  cr_assert_null(def_workflow_clone(NULL));
}

Test(def, step_index_top_level_only) {
  def_workflow *wf = parse(SPEC);
  cr_assert_eq(def_step_index(wf, "a"), 0);
  cr_assert_eq(def_step_index(wf, "c"), 2);
  cr_assert_eq(def_step_index(wf, "p"), 3);
  cr_assert_eq(def_step_index(wf, "x"), -1); /* nested */
  cr_assert_eq(def_step_index(wf, "nope"), -1);
  cr_assert_eq(def_step_index(wf, NULL), -1);
  cr_assert_eq(def_step_index(NULL, "a"), -1);
  def_workflow_unref(wf);
}

Test(def, effective_retry_builtins_without_defaults) {
  def_workflow *wf = parse("{\"name\":\"w\",\"version\":1,\"steps\":"
                           "[{\"name\":\"a\",\"task\":\"t\"}]}");
  def_retry r;
  def_effective_retry(wf, &wf->steps[0], false, &r);
  cr_assert_eq(r.max_attempts, DEF_DEFAULT_MAX_ATTEMPTS);
  cr_assert_eq(r.initial_interval_ms, DEF_DEFAULT_INITIAL_INTERVAL_MS);
  cr_assert_float_eq(r.backoff_coefficient, DEF_DEFAULT_BACKOFF_COEFFICIENT,
                     1e-12);
  cr_assert_eq(r.max_interval_ms, DEF_DEFAULT_MAX_INTERVAL_MS);
  cr_assert_float_eq(r.jitter, DEF_DEFAULT_JITTER, 1e-12);
  cr_assert_eq(r.n_non_retryable, 0);
  cr_assert_eq(r.set & 0x3f, 0x3f);
  /* A compensation without a policy: unlimited, capped at 60 s. */
  def_effective_retry(wf, &wf->steps[0], true, &r);
  cr_assert_eq(r.max_attempts, 0);
  cr_assert_eq(r.max_interval_ms, DEF_DEFAULT_COMP_MAX_INTERVAL_MS);
  cr_assert_eq(r.initial_interval_ms, DEF_DEFAULT_INITIAL_INTERVAL_MS);
  def_workflow_unref(wf);
}

Test(def, effective_retry_merges_step_defaults_builtins) {
  def_workflow *wf = parse(SPEC);
  def_retry r;
  /* a: only workflow defaults, then built-ins. */
  def_effective_retry(wf, &wf->steps[0], false, &r);
  cr_assert_eq(r.max_attempts, 7);
  cr_assert_eq(r.initial_interval_ms, 50);
  cr_assert_float_eq(r.backoff_coefficient, 2.0, 1e-12);
  cr_assert_eq(r.max_interval_ms, 900);
  cr_assert_float_eq(r.jitter, 0.5, 1e-12);
  cr_assert_eq(r.n_non_retryable, 1);
  cr_assert_str_eq(r.non_retryable_errors[0], "Fatal");
  /* b: the step's fields win, field by field. */
  def_effective_retry(wf, &wf->steps[1], false, &r);
  cr_assert_eq(r.max_attempts, 2);
  cr_assert_float_eq(r.backoff_coefficient, 3.0, 1e-12);
  cr_assert_eq(r.initial_interval_ms, 50);
  cr_assert_eq(r.n_non_retryable, 2);
  cr_assert_eq(r.non_retryable_errors,
               wf->steps[1].action.retry.non_retryable_errors); /* borrowed */
  cr_assert(def_retry_is_non_retryable(&r, "Bad"));
  cr_assert_not(def_retry_is_non_retryable(&r, "Fatal"));
  /* b's compensation: no own policy; defaults but not their attempts/cap. */
  def_effective_retry(wf, &wf->steps[1], true, &r);
  cr_assert_eq(r.max_attempts, 0);
  cr_assert_eq(r.max_interval_ms, DEF_DEFAULT_COMP_MAX_INTERVAL_MS);
  cr_assert_eq(r.initial_interval_ms, 50);
  cr_assert_float_eq(r.jitter, 0.5, 1e-12);
  cr_assert_str_eq(r.non_retryable_errors[0], "Fatal");
  /* c's compensation has its own attempts and cap. */
  def_effective_retry(wf, &wf->steps[2], true, &r);
  cr_assert_eq(r.max_attempts, 4);
  cr_assert_eq(r.max_interval_ms, 1234);
  def_workflow_unref(wf);
}

Test(def, effective_timeout) {
  def_workflow *wf = parse(SPEC);
  cr_assert_eq(def_effective_timeout(wf, &wf->steps[0], false), 5000);
  cr_assert_eq(def_effective_timeout(wf, &wf->steps[1], false), 77);
  cr_assert_eq(def_effective_timeout(wf, &wf->steps[1], true), 88);
  cr_assert_eq(def_effective_timeout(wf, &wf->steps[2], true), 5000);
  cr_assert_eq(def_effective_timeout(wf, &wf->steps[0], true), 5000);
  wf->default_timeout_ms = 0;
  cr_assert_eq(def_effective_timeout(wf, &wf->steps[0], false),
               DEF_DEFAULT_TIMEOUT_MS);
  def_workflow_unref(wf);
}

Test(def, bulkhead_default) {
  def_workflow *wf = parse(SPEC);
  cr_assert_str_eq(def_step_bulkhead(&wf->steps[0]), "default");
  cr_assert_str_eq(def_step_bulkhead(&wf->steps[1]), "pool");
  def_workflow_unref(wf);
}

Test(def, non_retryable_lookup) {
  char *errs[] = {"A", "B"};
  def_retry r = {.non_retryable_errors = errs, .n_non_retryable = 2};
  cr_assert(def_retry_is_non_retryable(&r, "B"));
  cr_assert_not(def_retry_is_non_retryable(&r, "b"));
  cr_assert_not(def_retry_is_non_retryable(&r, NULL));
  cr_assert_not(def_retry_is_non_retryable(NULL, "A"));
}

Test(def, retry_copy_is_deep) {
  char *errs[] = {"A", "Bee"};
  def_retry src = {.set = DEF_RETRY_MAX_ATTEMPTS | DEF_RETRY_NON_RETRYABLE,
                   .max_attempts = 9,
                   .non_retryable_errors = errs,
                   .n_non_retryable = 2};
  def_retry dst;
  cr_assert_eq(def_retry_copy(&dst, &src), SK_OK);
  cr_assert_eq(dst.set, src.set);
  cr_assert_eq(dst.max_attempts, 9);
  cr_assert_eq(dst.n_non_retryable, 2);
  cr_assert_neq(dst.non_retryable_errors, errs);
  cr_assert_neq(dst.non_retryable_errors[1], errs[1]);
  cr_assert_str_eq(dst.non_retryable_errors[1], "Bee");
  def_retry_clear(&dst);
  cr_assert_null(dst.non_retryable_errors);
  cr_assert_eq(dst.n_non_retryable, 0);
}

Test(def, clear_functions_accept_empty_and_null) {
  def_step s;
  memset(&s, 0, sizeof(s));
  def_step_clear(&s);
  def_step_clear(NULL);
  def_action a;
  memset(&a, 0, sizeof(a));
  a.task_type = strdup("t");
  a.input_json = strdup("{}");
  def_action_clear(&a);
  cr_assert_null(a.task_type);
  cr_assert_null(a.input_json);
  def_action_clear(NULL);
  def_retry_clear(NULL);
}
