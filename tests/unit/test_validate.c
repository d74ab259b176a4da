/*
 * test_validate.c — the semantic validator (engine/spec/validate.c) on
 * definitions built in code, as the SDK builder builds them, and the
 * problem list (engine/spec/problems.c). The JSON fixtures that cover every
 * rule through the parser live in test_spec_json.c.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec/def.h"
#include "spec/problems.h"
#include "spec/validate.h"

/* ---- building definitions in code ------------------------------------------
 */

static def_step *add_step(def_step **steps, size_t *n, const char *name,
                          const char *task) {
  *steps = realloc(*steps, (*n + 1) * sizeof(def_step));
  cr_assert_not_null(*steps);
  def_step *s = &(*steps)[(*n)++];
  memset(s, 0, sizeof(*s));
  s->name = name != NULL ? strdup(name) : NULL;
  s->action.kind = DEF_KIND_TASK;
  s->action.task_type = task != NULL ? strdup(task) : NULL;
  return s;
}

static def_workflow *base(void) {
  def_workflow *wf = def_workflow_new();
  wf->name = strdup("wf");
  wf->version = 1;
  add_step(&wf->steps, &wf->n_steps, "a", "t.a");
  add_step(&wf->steps, &wf->n_steps, "b", "t.b");
  return wf;
}

static def_action *task_action(const char *task, const char *input) {
  def_action *a = calloc(1, sizeof(*a));
  a->kind = DEF_KIND_TASK;
  a->task_type = strdup(task);
  a->input_json = input != NULL ? strdup(input) : NULL;
  return a;
}

/* Validates and checks the exact list of problem paths, in order. */
static void expect_paths(const def_workflow *wf, const char *const *paths,
                         size_t n) {
  def_problems p;
  def_problems_init(&p);
  int added = def_validate(wf, &p);
  for (size_t i = 0; i < p.n && i < n; i++)
    cr_expect_str_eq(p.items[i].path, paths[i], "problem %zu: %s (%s)", i,
                     p.items[i].path, p.items[i].message);
  cr_assert_eq((size_t)added, n, "got %d problems, want %zu (first: %s %s)",
               added, n, p.n ? p.items[0].path : "",
               p.n ? p.items[0].message : "");
  cr_assert_eq(p.n, n);
  def_problems_clear(&p);
}

#define EXPECT(wf, ...)                                                        \
  do {                                                                         \
    const char *const paths_[] = {__VA_ARGS__};                                \
    expect_paths((wf), paths_, sizeof(paths_) / sizeof(paths_[0]));            \
  } while (0)

Test(validate, valid_definition_has_no_problems) {
  def_workflow *wf = base();
  wf->steps[1].action.input_json = strdup("{\"x\":\"${steps.a.output.id}\"}");
  wf->steps[1].compensate = task_action("t.undo", "\"${steps.b.output}\"");
  wf->steps[1].compensate_on_failure = true;
  def_problems p;
  def_problems_init(&p);
  cr_assert_eq(def_validate(wf, &p), 0);
  cr_assert_eq(p.n, 0);
  def_problems_clear(&p);
  def_workflow_unref(wf);
}

Test(validate, workflow_fields) {
  def_workflow *wf = base();
  free(wf->name);
  wf->name = NULL;
  wf->version = 0;
  wf->description = malloc(4098);
  memset(wf->description, 'd', 4097);
  wf->description[4097] = '\0';
  wf->on_failure = (def_on_failure)7;
  wf->timeout_ms = -1;
  wf->default_timeout_ms = -2;
  EXPECT(wf, "/name", "/version", "/description", "/on_failure", "/timeout_ms",
         "/defaults/timeout_ms");
  def_workflow_unref(wf);
}

Test(validate, no_steps) {
  def_workflow *wf = def_workflow_new();
  wf->name = strdup("Bad!");
  wf->version = 1;
  EXPECT(wf, "/name", "/steps");
  def_workflow_unref(wf);
}

Test(validate, returns_count_added_not_total) {
  def_workflow *wf = base();
  wf->version = -3;
  def_problems p;
  def_problems_init(&p);
  def_problems_add(&p, "/x", "earlier problem");
  cr_assert_eq(def_validate(wf, &p), 1);
  cr_assert_eq(p.n, 2);
  cr_assert_str_eq(p.items[1].path, "/version");
  cr_assert_str_eq(p.items[1].message, "must be at least 1");
  def_problems_clear(&p);
  def_workflow_unref(wf);
}

Test(validate, retry_rules_use_set_bits) {
  def_workflow *wf = base();
  /* Zero values that were not given are not problems... */
  wf->has_default_retry = true;
  def_problems p;
  def_problems_init(&p);
  cr_assert_eq(def_validate(wf, &p), 0);
  def_problems_clear(&p);
  /* ...the same values given explicitly are. */
  wf->default_retry.set = DEF_RETRY_MAX_ATTEMPTS | DEF_RETRY_COEFFICIENT |
                          DEF_RETRY_INITIAL | DEF_RETRY_MAX_INTERVAL;
  wf->default_retry.initial_interval_ms = 10;
  wf->default_retry.max_interval_ms = 5;
  def_step *s = &wf->steps[0];
  s->action.has_retry = true;
  s->action.retry.set = DEF_RETRY_JITTER | DEF_RETRY_NON_RETRYABLE;
  s->action.retry.jitter = -0.5;
  s->action.retry.non_retryable_errors = calloc(2, sizeof(char *));
  s->action.retry.non_retryable_errors[0] = strdup("Ok");
  s->action.retry.non_retryable_errors[1] = strdup("");
  s->action.retry.n_non_retryable = 2;
  EXPECT(wf, "/defaults/retry/max_attempts",
         "/defaults/retry/backoff_coefficient",
         "/defaults/retry/max_interval_ms", "/steps/0/retry/jitter",
         "/steps/0/retry/non_retryable_errors/1");
  def_workflow_unref(wf);
}

Test(validate, actions_built_in_code) {
  def_workflow *wf = base();
  def_step *a = &wf->steps[0];
  a->compensate = task_action("t.undo", "{\"x\":\"${steps.b.output}\"}");
  a->compensate->timeout_ms = -1;
  a->compensate->kind = DEF_KIND_SLEEP; /* not a task or http action */
  def_step *b = &wf->steps[1];
  b->fallback_compensate = task_action("t.fb", NULL); /* without fallback */
  b->action.input_json = strdup("{not json");
  b->bulkhead = strdup("Pool");
  b->gpus = 65;
  b->gpu_memory_mb = -1;
  b->action.timeout_ms = -4;
  EXPECT(wf, "/steps/0/compensate", "/steps/0/compensate/input/x",
         "/steps/0/compensate/timeout_ms", "/steps/1/input",
         "/steps/1/timeout_ms", "/steps/1/bulkhead", "/steps/1/resources/gpus",
         "/steps/1/resources/gpu_memory_mb", "/steps/1/fallback");
  def_workflow_unref(wf);
}

Test(validate, http_rules) {
  def_workflow *wf = base();
  def_step *s = &wf->steps[1];
  free(s->action.task_type);
  s->action.task_type = NULL;
  s->action.kind = DEF_KIND_HTTP;
  s->action.http.method = strdup("get");
  s->action.http.url = strdup("localhost/${steps.b.output}");
  s->action.http.headers_json = strdup("{\"A\":\"x\",\"B\":2}");
  s->action.http.body_json = strdup("{\"q\":\"${saga.nope}\"}");
  s->action.http.success_codes = malloc(2 * sizeof(int));
  s->action.http.success_codes[0] = 204;
  s->action.http.success_codes[1] = 600;
  s->action.http.n_success_codes = 2;
  EXPECT(wf, "/steps/1/http/method", "/steps/1/http/url", "/steps/1/http/url",
         "/steps/1/http/headers/B", "/steps/1/http/body/q",
         "/steps/1/http/success_codes/1");
  def_workflow_unref(wf);
}

Test(validate, sleep_and_parallel_cannot_undo) {
  def_workflow *wf = base();
  def_step *s = &wf->steps[0];
  free(s->action.task_type);
  s->action.task_type = NULL;
  s->action.kind = DEF_KIND_SLEEP;
  s->action.sleep_ms = INT64_C(31536000001);
  s->compensate = task_action("t.undo", NULL);
  s->fallback = task_action("t.fb", NULL);
  s->compensate_on_failure = true;
  EXPECT(wf, "/steps/0/sleep/ms", "/steps/0/compensate", "/steps/0/fallback");
  def_workflow_unref(wf);
}

/* A parallel step in code with n branches of the given step names. */
static def_step *make_parallel(def_step *s, size_t n_branches) {
  free(s->action.task_type);
  s->action.task_type = NULL;
  s->action.kind = DEF_KIND_PARALLEL;
  s->branches = calloc(n_branches, sizeof(def_branch));
  s->n_branches = n_branches;
  return s;
}

Test(validate, parallel_scopes_and_uniqueness) {
  def_workflow *wf = base();
  def_step *p = make_parallel(&wf->steps[1], 3);
  def_branch *br = p->branches;
  add_step(&br[0].steps, &br[0].n_steps, "x", "t");
  def_step *y = add_step(&br[0].steps, &br[0].n_steps, "y", "t");
  y->action.input_json = strdup("[\"${steps.x.output}\",\"${steps.a.output}\","
                                "\"${steps.z.output}\",\"${steps.b.output}\"]");
  def_step *z = add_step(&br[1].steps, &br[1].n_steps, "z", "t");
  z->compensate =
      task_action("t", "[\"${steps.z.output}\",\"${steps.y.output}\"]");
  add_step(&br[1].steps, &br[1].n_steps, "a", "t"); /* duplicate of top a */
  /* br[2] stays empty. */
  def_step *c = add_step(&wf->steps, &wf->n_steps, "c", "t");
  c->action.input_json = strdup("[\"${steps.y.output}\",\"${steps.z.output}\","
                                "\"${steps.b.output}\"]");
  EXPECT(wf, "/steps/1/parallel/0/1/input/2", "/steps/1/parallel/0/1/input/3",
         "/steps/1/parallel/1/0/compensate/input/1",
         "/steps/1/parallel/1/1/name", "/steps/1/parallel/2");
  def_workflow_unref(wf);
}

Test(validate, parallel_depth_limit_and_empty) {
  def_workflow *wf = base();
  def_step *s = &wf->steps[1];
  char name[16];
  for (int level = 1; level <= 5; level++) {
    make_parallel(s, 1);
    snprintf(name, sizeof(name), "n%d", level);
    s = add_step(&s->branches[0].steps, &s->branches[0].n_steps, name, "t");
  }
  make_parallel(s, 0); /* level 6 and no branches */
  EXPECT(
      wf,
      "/steps/1/parallel/0/0/parallel/0/0/parallel/0/0/parallel/0/0/parallel",
      "/steps/1/parallel/0/0/parallel/0/0/parallel/0/0/parallel/0/0/parallel"
      "/0/0/parallel",
      "/steps/1/parallel/0/0/parallel/0/0/parallel/0/0/parallel/0/0/parallel"
      "/0/0/parallel");
  def_workflow_unref(wf);
}

Test(validate, step_count_includes_nested) {
  def_workflow *wf = base();
  def_step *p = make_parallel(&wf->steps[1], 1);
  char name[16];
  for (int i = 0; i < SK_STEPS_MAX - 2; i++) {
    snprintf(name, sizeof(name), "s%d", i);
    add_step(&p->branches[0].steps, &p->branches[0].n_steps, name, "t");
  }
  def_problems q;
  def_problems_init(&q);
  cr_assert_eq(def_validate(wf, &q), 0); /* exactly SK_STEPS_MAX */
  add_step(&p->branches[0].steps, &p->branches[0].n_steps, "one.more", "t");
  cr_assert_eq(def_validate(wf, &q), 1);
  cr_assert_str_eq(q.items[0].path, "/steps");
  cr_assert_not_null(strstr(q.items[0].message, "257"));
  def_problems_clear(&q);
  def_workflow_unref(wf);
}

Test(validate, missing_task_types) {
  def_workflow *wf = base();
  free(wf->steps[0].action.task_type);
  wf->steps[0].action.task_type = NULL;
  free(wf->steps[1].name);
  wf->steps[1].name = NULL;
  wf->steps[1].compensate = calloc(1, sizeof(def_action));
  EXPECT(wf, "/steps/0", "/steps/1/name", "/steps/1/compensate");
  def_workflow_unref(wf);
}

Test(validate, null_definition) {
  def_problems p;
  def_problems_init(&p);
  cr_assert_eq(def_validate(NULL, &p), 1);
  cr_assert_str_eq(p.items[0].path, "");
  def_problems_clear(&p);
}

/* ---- problems.c -------------------------------------------------------------
 */

Test(problems, add_format_and_json) {
  def_problems p;
  def_problems_init(&p);
  def_problems_add(&p, "/steps/2/retry/max_attempts", "must be at least %d", 1);
  def_problems_add(&p, NULL, "quote \"%s\"\n", "x");
  cr_assert_eq(p.n, 2);
  cr_assert_str_eq(p.items[1].path, "");
  char *json = def_problems_to_json(&p);
  cr_assert_str_eq(json,
                   "[{\"path\":\"/steps/2/retry/max_attempts\",\"message\":"
                   "\"must be at least 1\"},{\"path\":\"\",\"message\":"
                   "\"quote \\\"x\\\"\\n\"}]");
  free(json);
  def_problems_clear(&p);
  cr_assert_eq(p.n, 0);
  cr_assert_null(p.items);
  json = def_problems_to_json(&p);
  cr_assert_str_eq(json, "[]");
  free(json);
  def_problems_add(NULL, "/x", "ignored");
}

Test(problems, to_error) {
  def_problems p;
  def_problems_init(&p);
  sk_error err;
  cr_assert_eq(def_problems_to_error(&p, &err), SK_OK);
  def_problems_add(&p, "/name", "must not be empty");
  cr_assert_eq(def_problems_to_error(&p, &err), SK_EINVALSPEC);
  cr_assert_eq(err.code, SK_EINVALSPEC);
  cr_assert_str_eq(err.message, "must not be empty");
  cr_assert_str_eq(err.path, "/name");
  def_problems_add(&p, "/version", "must be at least 1");
  def_problems_to_error(&p, &err);
  cr_assert_str_eq(err.message, "must not be empty (and 1 more problem)");
  def_problems_add(&p, "/steps", "x");
  def_problems_to_error(&p, &err);
  cr_assert_str_eq(err.message, "must not be empty (and 2 more problems)");
  cr_assert_eq(def_problems_to_error(&p, NULL), SK_EINVALSPEC);
  def_problems_clear(&p);
}

Test(problems, counted_beyond_the_cap) {
  def_problems p;
  def_problems_init(&p);
  for (int i = 0; i < DEF_PROBLEMS_MAX + 50; i++)
    def_problems_add(&p, "/steps", "problem %d", i);
  cr_assert_eq(p.n, DEF_PROBLEMS_MAX + 50);
  cr_assert_leq(p.cap, DEF_PROBLEMS_MAX);
  cr_assert_str_eq(p.items[DEF_PROBLEMS_MAX - 1].message, "problem 199");
  char *json = def_problems_to_json(&p);
  cr_assert_not_null(strstr(json, "problem 199"));
  cr_assert_null(strstr(json, "problem 200"));
  free(json);
  sk_error err;
  def_problems_to_error(&p, &err);
  cr_assert_str_eq(err.message, "problem 0 (and 249 more problems)");
  def_problems_clear(&p);
}
