/*
 * test_sdk_errors.c — the "bad input" acceptance of the public SDK against a
 * real PostgreSQL.
 *
 * Every public function is called with NULLs, invalid names, versions,
 * retry values, JSON, sizes, keys and ids. For each refusal we check the
 * code, that err.message (where the call takes an sk_error) names the
 * problem, and that nothing was half-written: the builder's definition is
 * byte-for-byte the same (sk_workflow_to_json) and the database row counts
 * of sagas, saga_events, tasks, workflow_defs and saga_idempotency are
 * unchanged. Handlers that return bad output make their step fail with
 * "InvalidOutput", never a crash and never a recorded success.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <skald/skald.h>

#include "pgtest.h"

#define WAIT_MS 20000

static const char *jstr(const cJSON *o, const char *path);
static const cJSON *jget(const cJSON *o, const char *path);

static const char *const BAD_NAMES[] = {
    "", "Upper", "has space", "../x", "tab\there", "x/y", "naïve"};
static char name129[SK_NAME_MAX + 2];
static char name128[SK_NAME_MAX + 1];

static void names_init(void) {
  memset(name129, 'a', SK_NAME_MAX + 1);
  name129[SK_NAME_MAX + 1] = '\0';
  memset(name128, 'b', SK_NAME_MAX);
  name128[SK_NAME_MAX] = '\0';
}

/* A JSON text of exactly `len` bytes: {"a":"xxx…"}; caller frees. */
static char *big_json(size_t len) {
  char *s = malloc(len + 1);
  cr_assert_not_null(s);
  memset(s, 'x', len);
  memcpy(s, "{\"a\":\"", 6);
  s[len - 2] = '"';
  s[len - 1] = '}';
  s[len] = '\0';
  return s;
}

#define EXPECT_RC(call, want)                                                  \
  do {                                                                         \
    int rc_ = (call);                                                          \
    cr_expect_eq(rc_, (want), "%s: got %s, want %s", #call, sk_err_name(rc_),  \
                 sk_err_name(want));                                           \
  } while (0)

/* err must carry `code` and a message containing `word`. */
static void expect_err(const sk_error *err, int code, const char *word,
                       const char *what) {
  cr_expect_eq(err->code, code, "%s: err.code %s, want %s", what,
               sk_err_name(err->code), sk_err_name(code));
  cr_expect_neq(err->message[0], '\0', "%s: empty err.message", what);
  if (word != NULL)
    cr_expect(strstr(err->message, word) != NULL,
              "%s: err.message \"%s\" does not mention \"%s\"", what,
              err->message, word);
}

/* ======================================================================= */
/* Without a database: codes, names, the builder                            */
/* ======================================================================= */

TestSuite(sdk_api, .init = names_init, .timeout = 60);

Test(sdk_api, strerror_and_err_name_for_every_code) {
  static const struct {
    int code;
    const char *name;
    const char *msg;
  } table[] = {
#define ROW(n, v, m) {v, "SK_" #n, m},
      SK_ERRNO_MAP(ROW)
#undef ROW
  };
  size_t n = sizeof(table) / sizeof(table[0]);
  cr_assert_eq(n, 20, "the table has %zu codes", n);
  for (size_t i = 0; i < n; i++) {
    cr_expect_str_eq(sk_strerror(table[i].code), table[i].msg, "code %d",
                     table[i].code);
    cr_expect_str_eq(sk_err_name(table[i].code), table[i].name, "code %d",
                     table[i].code);
    /* Codes are 0 and then -1, -2, ... without gaps. */
    cr_expect_eq(table[i].code, -(int)i);
  }
  cr_expect_str_eq(sk_err_name(SK_EINVALSPEC), "SK_EINVALSPEC");
  cr_expect_str_eq(sk_strerror(SK_ENOHANDLER),
                   "no handler registered for task type");
  static const int unknown[] = {1, -20, -999, 42, -2147483647 - 1};
  for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
    cr_expect_str_eq(sk_strerror(unknown[i]), "unknown error");
    cr_expect_str_eq(sk_err_name(unknown[i]), "SK_UNKNOWN");
  }
}

Test(sdk_api, status_names_and_settled) {
  static const struct {
    sk_status s;
    const char *name;
    bool settled;
  } t[] = {{SK_STATUS_RUNNING, "running", false},
           {SK_STATUS_COMPENSATING, "compensating", false},
           {SK_STATUS_COMPLETED, "completed", true},
           {SK_STATUS_COMPENSATED, "compensated", true},
           {SK_STATUS_FAILED, "failed", true},
           {SK_STATUS_PAUSED, "paused", true},
           {SK_STATUS_CANCELLED, "cancelled", true}};
  for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
    cr_expect_str_eq(sk_status_name(t[i].s), t[i].name);
    cr_expect_eq(sk_status_is_settled(t[i].s), t[i].settled, "%s", t[i].name);
  }
  cr_expect_str_eq(sk_status_name((sk_status)99), "unknown");
  cr_expect_str_eq(sk_status_name((sk_status)-1), "unknown");
}

Test(sdk_api, null_tolerant_calls_do_nothing) {
  sk_free(NULL);
  sk_workflow_free(NULL);
  sk_engine_close(NULL);
  sk_retry_init(NULL);
  sk_engine_options_init(NULL);
  cr_expect_not(sk_task_cancelled(NULL));
  EXPECT_RC(sk_engine_start(NULL), SK_EINVAL);
  EXPECT_RC(sk_engine_run(NULL), SK_EINVAL);
  EXPECT_RC(sk_engine_stop(NULL), SK_EINVAL);
  EXPECT_RC(sk_engine_add_bulkhead(NULL, "b", 1), SK_EINVAL);
  EXPECT_RC(sk_engine_register_task(NULL, "t", NULL, NULL), SK_EINVAL);
  sk_error err;
  memset(&err, 0, sizeof(err));
  EXPECT_RC(sk_engine_register_workflow(NULL, NULL, &err), SK_EINVAL);
  expect_err(&err, SK_EINVAL, "NULL", "register_workflow(NULL)");
  EXPECT_RC(sk_engine_register_workflow(NULL, NULL, NULL), SK_EINVAL);
  char id[SK_ID_LEN];
  memset(&err, 0, sizeof(err));
  EXPECT_RC(sk_run_start(NULL, "w", NULL, NULL, id, NULL, &err), SK_EINVAL);
  expect_err(&err, SK_EINVAL, "NULL", "run_start(NULL engine)");
  memset(&err, 0, sizeof(err));
  EXPECT_RC(sk_saga_cancel(NULL, "x", &err), SK_EINVAL);
  expect_err(&err, SK_EINVAL, "engine", "cancel(NULL engine)");
  sk_status st;
  char *json = NULL;
  EXPECT_RC(sk_saga_status(NULL, "x", &st), SK_EINVAL);
  EXPECT_RC(sk_saga_wait(NULL, "x", 0, &st), SK_EINVAL);
  EXPECT_RC(sk_saga_get_json(NULL, "x", &json), SK_EINVAL);
  EXPECT_RC(sk_saga_events_json(NULL, "x", 0, &json), SK_EINVAL);
  cr_expect_null(json);
}

Test(sdk_api, options_init_sets_the_documented_defaults) {
  sk_engine_options o;
  memset(&o, 0x7f, sizeof(o));
  sk_engine_options_init(&o);
  cr_expect_null(o.database_url);
  cr_expect_null(o.data_dir);
  cr_expect_null(o.node_name);
  cr_expect_eq(o.lease_ttl_ms, 15000);
  cr_expect_eq(o.poll_interval_ms, 1000);
  cr_expect_eq(o.max_batch, 1024);
  cr_expect_eq(o.breaker_failure_threshold, 5);
  cr_expect_eq(o.breaker_open_ms, 5000);
  cr_expect_eq(o.default_concurrency, 8);
  cr_expect_eq(o.log_level, 2);
  cr_expect_not(o.allow_unknown_task_types);
  sk_retry r;
  memset(&r, 0x7f, sizeof(r));
  sk_retry_init(&r);
  cr_expect_eq(r.max_attempts, 0);
  cr_expect_eq(r.initial_interval_ms, -1);
  cr_expect_eq(r.backoff_coefficient, 0);
  cr_expect_eq(r.max_interval_ms, -1);
  cr_expect_eq(r.jitter, -1);
  cr_expect_null(r.non_retryable_errors);
  cr_expect_eq(r.n_non_retryable, 0);
}

Test(sdk_api, workflow_new_rejects_bad_names_and_versions) {
  struct {
    const char *name;
    int version;
    int want;
  } cases[] = {
      {NULL, 1, SK_EINVAL},
      {"", 1, SK_EINVAL},
      {"Upper", 1, SK_EINVAL},
      {name129, 1, SK_EINVAL},
      {"has space", 1, SK_EINVAL},
      {"../x", 1, SK_EINVAL},
      {"ok", 0, SK_EINVAL},
      {"ok", -1, SK_EINVAL},
      {"ok", -2147483647 - 1, SK_EINVAL},
      {name128, 1, SK_OK},
      {"a.b-c_9", 2147483647, SK_OK},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    sk_workflow *wf = (sk_workflow *)0x1;
    int rc = sk_workflow_new(cases[i].name, cases[i].version, &wf);
    cr_expect_eq(rc, cases[i].want, "case %zu (%s, %d): got %s", i,
                 cases[i].name ? cases[i].name : "NULL", cases[i].version,
                 sk_err_name(rc));
    if (rc == SK_OK)
      sk_workflow_free(wf);
    else
      cr_expect_null(wf, "case %zu: *out not cleared on failure", i);
  }
  EXPECT_RC(sk_workflow_new("ok", 1, NULL), SK_EINVAL);
}

/* A builder with a task step "a" (with a compensation) and a sleep "nap". */
static sk_workflow *base_workflow(void) {
  sk_workflow *wf = NULL;
  cr_assert_eq(sk_workflow_new("base", 1, &wf), SK_OK);
  cr_assert_eq(sk_workflow_add_step(wf, "a", "t.ok"), SK_OK);
  cr_assert_eq(sk_workflow_step_input(wf, "a", "{\"x\": \"${input.x}\"}"),
               SK_OK);
  cr_assert_eq(sk_workflow_step_compensate(wf, "a", "t.undo", "{\"u\": 1}"),
               SK_OK);
  cr_assert_eq(sk_workflow_add_sleep(wf, "nap", 10), SK_OK);
  return wf;
}

static char *to_json(const sk_workflow *wf) {
  char *j = NULL;
  cr_assert_eq(sk_workflow_to_json(wf, &j), SK_OK);
  cr_assert_not_null(j);
  return j;
}

/* Asserts the definition still serialises to `before`. */
static void expect_same(const sk_workflow *wf, const char *before,
                        const char *what) {
  char *now = to_json(wf);
  cr_expect_str_eq(now, before, "%s changed the definition", what);
  sk_free(now);
}

#define REFUSED(call, want)                                                    \
  do {                                                                         \
    EXPECT_RC(call, want);                                                     \
    expect_same(wf, before, #call);                                            \
  } while (0)

Test(sdk_api, builder_refuses_bad_arguments_and_changes_nothing) {
  sk_workflow *wf = base_workflow();
  char *before = to_json(wf);
  char desc[4098];
  memset(desc, 'd', 4097);
  desc[4097] = '\0';
  sk_retry r;
  sk_retry_init(&r);

  REFUSED(sk_workflow_set_description(NULL, "x"), SK_EINVAL);
  REFUSED(sk_workflow_set_description(wf, NULL), SK_EINVAL);
  REFUSED(sk_workflow_set_description(wf, desc), SK_EINVAL);
  REFUSED(sk_workflow_set_on_failure(NULL, SK_ON_FAILURE_PAUSE), SK_EINVAL);
  REFUSED(sk_workflow_set_on_failure(wf, (sk_on_failure)7), SK_EINVAL);
  REFUSED(sk_workflow_set_timeout(NULL, 1), SK_EINVAL);
  REFUSED(sk_workflow_set_timeout(wf, -1), SK_EINVAL);
  REFUSED(sk_workflow_set_default_timeout(NULL, 10), SK_EINVAL);
  REFUSED(sk_workflow_set_default_timeout(wf, 0), SK_EINVAL);
  REFUSED(sk_workflow_set_default_timeout(wf, -5), SK_EINVAL);
  REFUSED(sk_workflow_set_default_retry(NULL, &r), SK_EINVAL);
  REFUSED(sk_workflow_set_default_retry(wf, NULL), SK_EINVAL);

  REFUSED(sk_workflow_add_step(NULL, "b", "t.ok"), SK_EINVAL);
  REFUSED(sk_workflow_add_step(wf, NULL, "t.ok"), SK_EINVAL);
  REFUSED(sk_workflow_add_step(wf, "b", NULL), SK_EINVAL);
  for (size_t i = 0; i < sizeof(BAD_NAMES) / sizeof(BAD_NAMES[0]); i++) {
    REFUSED(sk_workflow_add_step(wf, BAD_NAMES[i], "t.ok"), SK_EINVAL);
    REFUSED(sk_workflow_add_step(wf, "b", BAD_NAMES[i]), SK_EINVAL);
    REFUSED(sk_workflow_add_sleep(wf, BAD_NAMES[i], 1), SK_EINVAL);
    REFUSED(sk_workflow_step_bulkhead(wf, "a", BAD_NAMES[i]), SK_EINVAL);
    REFUSED(sk_workflow_step_compensate(wf, "a", BAD_NAMES[i], NULL),
            SK_EINVAL);
  }
  REFUSED(sk_workflow_add_step(wf, name129, "t.ok"), SK_EINVAL);
  REFUSED(sk_workflow_add_step(wf, "b", name129), SK_EINVAL);
  REFUSED(sk_workflow_add_step(wf, "a", "t.ok"), SK_EEXIST);
  REFUSED(sk_workflow_add_step(wf, "nap", "t.ok"), SK_EEXIST);
  REFUSED(sk_workflow_add_sleep(wf, "a", 5), SK_EEXIST);
  REFUSED(sk_workflow_add_sleep(NULL, "s2", 5), SK_EINVAL);
  REFUSED(sk_workflow_add_sleep(wf, NULL, 5), SK_EINVAL);
  REFUSED(sk_workflow_add_sleep(wf, "s2", -1), SK_EINVAL);
  REFUSED(sk_workflow_add_sleep(wf, "s2", 31536000001LL), SK_EINVAL);

  REFUSED(sk_workflow_step_input(NULL, "a", "{}"), SK_EINVAL);
  REFUSED(sk_workflow_step_input(wf, NULL, "{}"), SK_EINVAL);
  REFUSED(sk_workflow_step_input(wf, "zzz", "{}"), SK_ENOENT);
  REFUSED(sk_workflow_step_input(wf, "a", NULL), SK_EINVAL);
  REFUSED(sk_workflow_step_input(wf, "nap", "{}"), SK_EINVAL);

  REFUSED(sk_workflow_step_compensate(NULL, "a", "t.undo", NULL), SK_EINVAL);
  REFUSED(sk_workflow_step_compensate(wf, NULL, "t.undo", NULL), SK_EINVAL);
  REFUSED(sk_workflow_step_compensate(wf, "zzz", "t.undo", NULL), SK_ENOENT);
  REFUSED(sk_workflow_step_compensate(wf, "a", NULL, NULL), SK_EINVAL);
  REFUSED(sk_workflow_step_compensate(wf, "nap", "t.undo", NULL), SK_EINVAL);

  REFUSED(sk_workflow_step_retry(NULL, "a", &r), SK_EINVAL);
  REFUSED(sk_workflow_step_retry(wf, NULL, &r), SK_EINVAL);
  REFUSED(sk_workflow_step_retry(wf, "a", NULL), SK_EINVAL);
  REFUSED(sk_workflow_step_retry(wf, "zzz", &r), SK_ENOENT);
  REFUSED(sk_workflow_step_retry(wf, "nap", &r), SK_EINVAL);
  REFUSED(sk_workflow_step_compensation_retry(NULL, "a", &r), SK_EINVAL);
  REFUSED(sk_workflow_step_compensation_retry(wf, NULL, &r), SK_EINVAL);
  REFUSED(sk_workflow_step_compensation_retry(wf, "a", NULL), SK_EINVAL);
  REFUSED(sk_workflow_step_compensation_retry(wf, "zzz", &r), SK_ENOENT);
  /* "nap" has no compensation to configure. */
  REFUSED(sk_workflow_step_compensation_retry(wf, "nap", &r), SK_ESTATE);

  REFUSED(sk_workflow_step_timeout(NULL, "a", 10), SK_EINVAL);
  REFUSED(sk_workflow_step_timeout(wf, NULL, 10), SK_EINVAL);
  REFUSED(sk_workflow_step_timeout(wf, "zzz", 10), SK_ENOENT);
  REFUSED(sk_workflow_step_timeout(wf, "a", 0), SK_EINVAL);
  REFUSED(sk_workflow_step_timeout(wf, "a", -1), SK_EINVAL);
  REFUSED(sk_workflow_step_timeout(wf, "nap", 10), SK_EINVAL);

  REFUSED(sk_workflow_step_bulkhead(NULL, "a", "b"), SK_EINVAL);
  REFUSED(sk_workflow_step_bulkhead(wf, NULL, "b"), SK_EINVAL);
  REFUSED(sk_workflow_step_bulkhead(wf, "zzz", "b"), SK_ENOENT);
  REFUSED(sk_workflow_step_bulkhead(wf, "a", NULL), SK_EINVAL);
  REFUSED(sk_workflow_step_bulkhead(wf, "a", name129), SK_EINVAL);

  REFUSED(sk_workflow_step_compensate_on_failure(NULL, "a", true), SK_EINVAL);
  REFUSED(sk_workflow_step_compensate_on_failure(wf, NULL, true), SK_EINVAL);
  REFUSED(sk_workflow_step_compensate_on_failure(wf, "zzz", true), SK_ENOENT);

  char *j = NULL;
  EXPECT_RC(sk_workflow_to_json(NULL, &j), SK_EINVAL);
  cr_expect_null(j);
  EXPECT_RC(sk_workflow_to_json(wf, NULL), SK_EINVAL);
  sk_free(before);
  sk_workflow_free(wf);
}

Test(sdk_api, builder_refuses_invalid_json_and_oversized_templates) {
  sk_workflow *wf = base_workflow();
  char *before = to_json(wf);
  static const char *const bad_json[] = {"",
                                         "{",
                                         "{\"a\":}",
                                         "{'a': 1}",
                                         "[1,]",
                                         "nul",
                                         "{\"a\": 1} trailing",
                                         "{\"a\": \"unterminated}"};
  for (size_t i = 0; i < sizeof(bad_json) / sizeof(bad_json[0]); i++) {
    int rc = sk_workflow_step_input(wf, "a", bad_json[i]);
    cr_expect_eq(rc, SK_EJSON, "step_input(%s): got %s", bad_json[i],
                 sk_err_name(rc));
    /* The compensation keeps its old input when the new one is refused. */
    rc = sk_workflow_step_compensate(wf, "a", "t.undo2", bad_json[i]);
    cr_expect_eq(rc, SK_EJSON, "step_compensate(%s): got %s", bad_json[i],
                 sk_err_name(rc));
    expect_same(wf, before, bad_json[i]);
    if (rc == SK_OK) { /* keep later cases independent of this one */
      sk_free(before);
      before = to_json(wf);
    }
  }
  char *big = big_json(SK_PAYLOAD_MAX + 1);
  REFUSED(sk_workflow_step_input(wf, "a", big), SK_ETOOBIG);
  REFUSED(sk_workflow_step_compensate(wf, "a", "t.undo2", big), SK_ETOOBIG);
  free(big);
  /* Exactly at the limit is accepted. */
  char *edge = big_json(SK_PAYLOAD_MAX);
  EXPECT_RC(sk_workflow_step_input(wf, "a", edge), SK_OK);
  free(edge);
  sk_free(before);
  sk_workflow_free(wf);
}

/* One invalid field on top of sk_retry_init(). */
typedef struct bad_retry {
  const char *what;
  void (*set)(sk_retry *r);
} bad_retry;

static const char *const nre_with_null[] = {"Fine", NULL};
static const char *const nre_empty[] = {""};
static const char *nre_long[1];

static void r_attempts(sk_retry *r) { r->max_attempts = -1; }
static void r_attempts_min(sk_retry *r) { r->max_attempts = -2147483647 - 1; }
static void r_coeff_half(sk_retry *r) { r->backoff_coefficient = 0.5; }
static void r_coeff_neg(sk_retry *r) { r->backoff_coefficient = -2; }
static void r_jitter_big(sk_retry *r) { r->jitter = 1.5; }
static void r_jitter_neg(sk_retry *r) { r->jitter = -0.5; }
static void r_initial_neg(sk_retry *r) { r->initial_interval_ms = -2; }
static void r_initial_very_neg(sk_retry *r) { r->initial_interval_ms = -1000; }
static void r_max_neg(sk_retry *r) { r->max_interval_ms = -2; }
static void r_nre_null_entry(sk_retry *r) {
  r->non_retryable_errors = nre_with_null;
  r->n_non_retryable = 2;
}
static void r_nre_empty(sk_retry *r) {
  r->non_retryable_errors = nre_empty;
  r->n_non_retryable = 1;
}
static void r_nre_long(sk_retry *r) {
  nre_long[0] = name129;
  r->non_retryable_errors = nre_long;
  r->n_non_retryable = 1;
}
static void r_nre_null_array(sk_retry *r) {
  r->non_retryable_errors = NULL;
  r->n_non_retryable = 1;
}

static const bad_retry bad_retries[] = {
    {"max_attempts -1", r_attempts},
    {"max_attempts INT_MIN", r_attempts_min},
    {"backoff_coefficient 0.5", r_coeff_half},
    {"backoff_coefficient -2", r_coeff_neg},
    {"jitter 1.5", r_jitter_big},
    {"jitter -0.5", r_jitter_neg},
    {"initial_interval_ms -2", r_initial_neg},
    {"initial_interval_ms -1000", r_initial_very_neg},
    {"max_interval_ms -2", r_max_neg},
    {"NULL entry in non_retryable_errors", r_nre_null_entry},
    {"empty non_retryable error", r_nre_empty},
    {"129-byte non_retryable error", r_nre_long},
    {"n_non_retryable 1 with a NULL array", r_nre_null_array},
};

Test(sdk_api, retry_policies_refuse_invalid_values) {
  sk_workflow *wf = base_workflow();
  char *before = to_json(wf);
  for (size_t i = 0; i < sizeof(bad_retries) / sizeof(bad_retries[0]); i++) {
    sk_retry r;
    sk_retry_init(&r);
    bad_retries[i].set(&r);
    int rc = sk_workflow_set_default_retry(wf, &r);
    cr_expect_eq(rc, SK_EINVAL, "default retry, %s: %s", bad_retries[i].what,
                 sk_err_name(rc));
    rc = sk_workflow_step_retry(wf, "a", &r);
    cr_expect_eq(rc, SK_EINVAL, "step retry, %s: %s", bad_retries[i].what,
                 sk_err_name(rc));
    rc = sk_workflow_step_compensation_retry(wf, "a", &r);
    cr_expect_eq(rc, SK_EINVAL, "compensation retry, %s: %s",
                 bad_retries[i].what, sk_err_name(rc));
    expect_same(wf, before, bad_retries[i].what);
  }
  /* The boundaries themselves are accepted. */
  sk_retry ok;
  sk_retry_init(&ok);
  ok.max_attempts = 1;
  ok.initial_interval_ms = 0;
  ok.backoff_coefficient = 1.0;
  ok.max_interval_ms = 0;
  ok.jitter = 1.0;
  EXPECT_RC(sk_workflow_step_retry(wf, "a", &ok), SK_OK);
  ok.jitter = 0.0;
  EXPECT_RC(sk_workflow_set_default_retry(wf, &ok), SK_OK);
  sk_free(before);
  sk_workflow_free(wf);
}

Test(sdk_api, from_json_reports_every_kind_of_problem) {
  sk_workflow *wf = (sk_workflow *)0x1;
  char *problems = (char *)0x1;
  sk_error err;

  memset(&err, 0, sizeof(err));
  EXPECT_RC(sk_workflow_from_json(NULL, &wf, &problems, &err), SK_EINVAL);
  expect_err(&err, SK_EINVAL, "NULL", "from_json(NULL)");
  cr_expect_null(problems);
  EXPECT_RC(sk_workflow_from_json("{}", NULL, NULL, NULL), SK_EINVAL);

  memset(&err, 0, sizeof(err));
  EXPECT_RC(sk_workflow_from_json("{\"name\": ", &wf, &problems, &err),
            SK_EJSON);
  expect_err(&err, SK_EJSON, "parse", "from_json(truncated)");
  cr_expect_null(wf);
  cr_assert_not_null(problems);
  cr_expect(strstr(problems, "could not parse JSON") != NULL, "%s", problems);
  sk_free(problems);

  /* Several problems: all listed, the first in err with its path. */
  memset(&err, 0, sizeof(err));
  const char *spec = "{\"name\": \"Bad Name\", \"version\": 0, \"steps\": ["
                     "{\"name\": \"a\", \"task\": \"t.ok\", \"retry\": "
                     "{\"max_attempts\": 0}}]}";
  EXPECT_RC(sk_workflow_from_json(spec, &wf, &problems, &err), SK_EINVALSPEC);
  cr_expect_eq(err.code, SK_EINVALSPEC);
  cr_expect(strstr(err.message, "more problem") != NULL, "%s", err.message);
  cr_assert_not_null(problems);
  cJSON *arr = cJSON_Parse(problems);
  cr_assert(cJSON_IsArray(arr), "%s", problems);
  cr_expect_geq(cJSON_GetArraySize(arr), 3, "%s", problems);
  /* err carries the first problem of the list. */
  cr_expect_str_eq(err.path, jstr(arr, "0.path"));
  cr_expect(strstr(err.message, jstr(arr, "0.message")) == err.message, "%s",
            err.message);
  cr_expect(strstr(problems, "\"/name\"") != NULL, "%s", problems);
  cr_expect(strstr(problems, "\"/version\"") != NULL, "%s", problems);
  cr_expect(strstr(problems, "/steps/0/retry/max_attempts") != NULL, "%s",
            problems);
  cJSON_Delete(arr);
  sk_free(problems);

  char *big = big_json(SK_PAYLOAD_MAX + 1);
  memset(&err, 0, sizeof(err));
  EXPECT_RC(sk_workflow_from_json(big, &wf, NULL, &err), SK_ETOOBIG);
  expect_err(&err, SK_ETOOBIG, "too large", "from_json(big)");
  free(big);
}

/* ======================================================================= */
/* Against PostgreSQL                                                       */
/* ======================================================================= */

static char ci[1024];
static sk_engine *eng;

/* Handler bookkeeping (handlers run on worker threads). */
static atomic_int rc_ok_null_r, rc_err_null_type, rc_err_empty_type,
    rc_err_long_type, rc_ok_bad_json, rc_ok_too_big, rc_err_ok_after;
static atomic_int calls_handler_error;

static int h_ok(const sk_task *t, sk_task_result *r, void *ud) {
  (void)t;
  (void)ud;
  return sk_result_ok(r, "{\"ok\": true}");
}

static int h_bad_json(const sk_task *t, sk_task_result *r, void *ud) {
  (void)t;
  (void)ud;
  atomic_store(&rc_ok_null_r, sk_result_ok(NULL, "{}"));
  atomic_store(&rc_err_null_type, sk_result_error(r, NULL, "m", true));
  atomic_store(&rc_err_empty_type, sk_result_error(r, "", "m", true));
  atomic_store(&rc_err_long_type, sk_result_error(r, name129, "m", true));
  int rc = sk_result_ok(r, "{\"half\": ");
  atomic_store(&rc_ok_bad_json, rc);
  return rc; /* a handler may pass the code on; the result stands */
}

static int h_too_big(const sk_task *t, sk_task_result *r, void *ud) {
  (void)t;
  (void)ud;
  size_t n = SK_PAYLOAD_MAX + 16;
  char *s = malloc(n + 1);
  if (s == NULL)
    return -1;
  memset(s, 'y', n);
  s[0] = '"';
  s[n - 1] = '"';
  s[n] = '\0';
  atomic_store(&rc_ok_too_big, sk_result_ok(r, s));
  free(s);
  return 0;
}

/* Fills a valid error, then tries to succeed with bad output: the bad
 * output must not leave the earlier error or a success behind. */
static int h_err_then_bad(const sk_task *t, sk_task_result *r, void *ud) {
  (void)t;
  (void)ud;
  sk_result_error(r, "Transient", "first", true);
  atomic_store(&rc_err_ok_after, sk_result_ok(r, "not json"));
  return 0;
}

static atomic_int rc_ok_trailing = -100;

static int h_trailing(const sk_task *t, sk_task_result *r, void *ud) {
  (void)t;
  (void)ud;
  atomic_store(&rc_ok_trailing, sk_result_ok(r, "{\"a\": 1} trailing"));
  return 0;
}

static int h_fail_without_result(const sk_task *t, sk_task_result *r,
                                 void *ud) {
  (void)ud;
  atomic_fetch_add(&calls_handler_error, 1);
  if (t->attempt == 1)
    return -1;
  return sk_result_ok(r, NULL);
}

static void db_setup(void) {
  names_init();
  cr_assert_eq(pgtest_fresh_db(ci, sizeof(ci)), 0);
  sk_engine_options o;
  sk_engine_options_init(&o);
  o.database_url = ci;
  o.lease_ttl_ms = 900;
  o.poll_interval_ms = 50;
  o.log_level = 0;
  o.node_name = "errors-node";
  sk_error err;
  memset(&err, 0, sizeof(err));
  int rc = sk_engine_open(&o, &eng, &err);
  cr_assert_eq(rc, SK_OK, "open: %s", err.message);
  cr_assert_eq(sk_engine_register_task(eng, "t.ok", h_ok, NULL), SK_OK);
  cr_assert_eq(sk_engine_register_task(eng, "t.undo", h_ok, NULL), SK_OK);
  cr_assert_eq(sk_engine_register_task(eng, "t.badjson", h_bad_json, NULL),
               SK_OK);
  cr_assert_eq(sk_engine_register_task(eng, "t.toobig", h_too_big, NULL),
               SK_OK);
  cr_assert_eq(sk_engine_register_task(eng, "t.errbad", h_err_then_bad, NULL),
               SK_OK);
  cr_assert_eq(
      sk_engine_register_task(eng, "t.noresult", h_fail_without_result, NULL),
      SK_OK);
  cr_assert_eq(sk_engine_register_task(eng, "t.trailing", h_trailing, NULL),
               SK_OK);
}

static void db_teardown(void) {
  sk_engine_close(eng);
  eng = NULL;
  pgtest_drop_db(ci);
}

TestSuite(sdk_errors, .init = db_setup, .fini = db_teardown, .timeout = 60);

typedef struct counts {
  long long sagas, events, tasks, defs, keys, nodes;
} counts;

static counts counts_now(void) {
  counts c;
  c.sagas = pgtest_scalar(ci, "SELECT count(*) FROM sagas");
  c.events = pgtest_scalar(ci, "SELECT count(*) FROM saga_events");
  c.tasks = pgtest_scalar(ci, "SELECT count(*) FROM tasks");
  c.defs = pgtest_scalar(ci, "SELECT count(*) FROM workflow_defs");
  c.keys = pgtest_scalar(ci, "SELECT count(*) FROM saga_idempotency");
  c.nodes = pgtest_scalar(ci, "SELECT count(*) FROM nodes");
  return c;
}

static void expect_counts(const counts *want, const char *what) {
  counts now = counts_now();
  cr_expect_eq(now.sagas, want->sagas, "%s: sagas %lld -> %lld", what,
               want->sagas, now.sagas);
  cr_expect_eq(now.events, want->events, "%s: saga_events %lld -> %lld", what,
               want->events, now.events);
  cr_expect_eq(now.tasks, want->tasks, "%s: tasks %lld -> %lld", what,
               want->tasks, now.tasks);
  cr_expect_eq(now.defs, want->defs, "%s: workflow_defs %lld -> %lld", what,
               want->defs, now.defs);
  cr_expect_eq(now.keys, want->keys, "%s: saga_idempotency %lld -> %lld", what,
               want->keys, now.keys);
}

/* Registers a one-step workflow `name` v1 running `task_type`. */
static void register_simple(const char *name, const char *task_type) {
  sk_workflow *wf = NULL;
  cr_assert_eq(sk_workflow_new(name, 1, &wf), SK_OK);
  cr_assert_eq(sk_workflow_add_step(wf, "only", task_type), SK_OK);
  sk_error err;
  memset(&err, 0, sizeof(err));
  int rc = sk_engine_register_workflow(eng, wf, &err);
  cr_assert_eq(rc, SK_OK, "register %s: %s", name, err.message);
  sk_workflow_free(wf);
}

static void start_ok(const char *wf, const char *input, char id[SK_ID_LEN]) {
  sk_error err;
  memset(&err, 0, sizeof(err));
  int rc = sk_run_start(eng, wf, input, NULL, id, NULL, &err);
  cr_assert_eq(rc, SK_OK, "start %s: %s (%s)", wf, sk_err_name(rc),
               err.message);
}

static sk_status wait_settled(const char *id) {
  sk_status st = SK_STATUS_RUNNING;
  int rc = sk_saga_wait(eng, id, WAIT_MS, &st);
  cr_assert_eq(rc, SK_OK, "wait %s: %s", id, sk_err_name(rc));
  return st;
}

static cJSON *saga_view(const char *id) {
  char *json = NULL;
  cr_assert_eq(sk_saga_get_json(eng, id, &json), SK_OK);
  cJSON *v = cJSON_Parse(json);
  cr_assert_not_null(v, "view is not JSON: %s", json);
  sk_free(json);
  return v;
}

static cJSON *saga_events(const char *id) {
  char *json = NULL;
  cr_assert_eq(sk_saga_events_json(eng, id, 0, &json), SK_OK);
  cJSON *v = cJSON_Parse(json);
  cr_assert(cJSON_IsArray(v), "events are not a JSON array: %s", json);
  sk_free(json);
  return v;
}

static const char *jstr(const cJSON *o, const char *path) {
  /* path: dot-separated keys, numbers index arrays */
  char buf[256];
  snprintf(buf, sizeof(buf), "%s", path);
  const cJSON *cur = o;
  for (char *save = NULL, *k = strtok_r(buf, ".", &save); k && cur;
       k = strtok_r(NULL, ".", &save)) {
    if (cJSON_IsArray(cur))
      cur = cJSON_GetArrayItem(cur, atoi(k));
    else
      cur = cJSON_GetObjectItemCaseSensitive(cur, k);
  }
  return cJSON_GetStringValue(cur);
}

static const cJSON *jget(const cJSON *o, const char *path) {
  char buf[256];
  snprintf(buf, sizeof(buf), "%s", path);
  const cJSON *cur = o;
  for (char *save = NULL, *k = strtok_r(buf, ".", &save); k && cur;
       k = strtok_r(NULL, ".", &save)) {
    if (cJSON_IsArray(cur))
      cur = cJSON_GetArrayItem(cur, atoi(k));
    else
      cur = cJSON_GetObjectItemCaseSensitive(cur, k);
  }
  return cur;
}

/* ---- engine options ---------------------------------------------------------
 */

typedef struct bad_opt {
  const char *what;
  void (*set)(sk_engine_options *o);
  const char *word;
} bad_opt;

static void o_lease_low(sk_engine_options *o) { o->lease_ttl_ms = 299; }
static void o_lease_high(sk_engine_options *o) { o->lease_ttl_ms = 3600001; }
static void o_poll_low(sk_engine_options *o) { o->poll_interval_ms = 9; }
static void o_poll_high(sk_engine_options *o) { o->poll_interval_ms = 60001; }
static void o_batch_zero(sk_engine_options *o) { o->max_batch = 0; }
static void o_batch_high(sk_engine_options *o) { o->max_batch = 65537; }
static void o_breaker_thr(sk_engine_options *o) {
  o->breaker_failure_threshold = 0;
}
static void o_breaker_ms(sk_engine_options *o) { o->breaker_open_ms = -1; }
static void o_conc_zero(sk_engine_options *o) { o->default_concurrency = 0; }
static void o_conc_high(sk_engine_options *o) { o->default_concurrency = 4097; }
static void o_node_empty(sk_engine_options *o) { o->node_name = ""; }
static void o_node_long(sk_engine_options *o) { o->node_name = name129; }

static const bad_opt bad_opts[] = {
    {"lease_ttl_ms 299", o_lease_low, "lease_ttl_ms"},
    {"lease_ttl_ms 3600001", o_lease_high, "lease_ttl_ms"},
    {"poll_interval_ms 9", o_poll_low, "poll_interval_ms"},
    {"poll_interval_ms 60001", o_poll_high, "poll_interval_ms"},
    {"max_batch 0", o_batch_zero, "max_batch"},
    {"max_batch 65537", o_batch_high, "max_batch"},
    {"breaker threshold 0", o_breaker_thr, "breaker"},
    {"breaker_open_ms -1", o_breaker_ms, "breaker"},
    {"default_concurrency 0", o_conc_zero, "default_concurrency"},
    {"default_concurrency 4097", o_conc_high, "default_concurrency"},
    {"node_name empty", o_node_empty, "node_name"},
    {"node_name 129 bytes", o_node_long, "node_name"},
};

Test(sdk_errors, engine_open_refuses_bad_options) {
  counts c0 = counts_now();
  for (size_t i = 0; i < sizeof(bad_opts) / sizeof(bad_opts[0]); i++) {
    sk_engine_options o;
    sk_engine_options_init(&o);
    o.database_url = ci;
    o.log_level = 0;
    bad_opts[i].set(&o);
    sk_engine *e = (sk_engine *)0x1;
    sk_error err;
    memset(&err, 0, sizeof(err));
    int rc = sk_engine_open(&o, &e, &err);
    cr_expect_eq(rc, SK_EINVAL, "%s: %s", bad_opts[i].what, sk_err_name(rc));
    cr_expect_null(e, "%s: *out not cleared", bad_opts[i].what);
    expect_err(&err, SK_EINVAL, bad_opts[i].word, bad_opts[i].what);
  }
  sk_error err;
  memset(&err, 0, sizeof(err));
  EXPECT_RC(sk_engine_open(NULL, NULL, &err), SK_EINVAL);
  expect_err(&err, SK_EINVAL, "NULL", "open(NULL out)");
  cr_expect_eq(counts_now().nodes, c0.nodes, "a refused open wrote a node");

  /* An unreachable database: SK_EDB, the password never in the message. */
  sk_engine_options o;
  sk_engine_options_init(&o);
  o.database_url = "postgresql://u:s3cr3tpw@127.0.0.1:1/x?connect_timeout=5";
  o.log_level = 0;
  sk_engine *e = (sk_engine *)0x1;
  memset(&err, 0, sizeof(err));
  EXPECT_RC(sk_engine_open(&o, &e, &err), SK_EDB);
  cr_expect_null(e);
  expect_err(&err, SK_EDB, "could not connect", "open(unreachable)");
  cr_expect(strstr(err.message, "s3cr3tpw") == NULL, "password leaked: %s",
            err.message);
}

/* ---- bulkheads and handlers -----------------------------------------------
 */

Test(sdk_errors, bulkheads_and_handlers_refuse_bad_registrations) {
  for (size_t i = 0; i < sizeof(BAD_NAMES) / sizeof(BAD_NAMES[0]); i++) {
    EXPECT_RC(sk_engine_add_bulkhead(eng, BAD_NAMES[i], 1), SK_EINVAL);
    EXPECT_RC(sk_engine_register_task(eng, BAD_NAMES[i], h_ok, NULL),
              SK_EINVAL);
  }
  EXPECT_RC(sk_engine_add_bulkhead(eng, NULL, 1), SK_EINVAL);
  EXPECT_RC(sk_engine_add_bulkhead(eng, name129, 1), SK_EINVAL);
  EXPECT_RC(sk_engine_add_bulkhead(eng, "pool", 0), SK_EINVAL);
  EXPECT_RC(sk_engine_add_bulkhead(eng, "pool", -1), SK_EINVAL);
  EXPECT_RC(sk_engine_add_bulkhead(eng, "pool", 4097), SK_EINVAL);
  EXPECT_RC(sk_engine_add_bulkhead(eng, "default", 2), SK_EEXIST);
  EXPECT_RC(sk_engine_add_bulkhead(eng, "pool", 2), SK_OK);
  EXPECT_RC(sk_engine_add_bulkhead(eng, "pool", 2), SK_EEXIST);
  EXPECT_RC(sk_engine_add_bulkhead(eng, name128, 4096), SK_OK);

  EXPECT_RC(sk_engine_register_task(eng, NULL, h_ok, NULL), SK_EINVAL);
  EXPECT_RC(sk_engine_register_task(eng, name129, h_ok, NULL), SK_EINVAL);
  EXPECT_RC(sk_engine_register_task(eng, "t.new", NULL, NULL), SK_EINVAL);
  EXPECT_RC(sk_engine_register_task(eng, "t.ok", h_ok, NULL), SK_EEXIST);
  EXPECT_RC(sk_engine_register_task(eng, name128, h_ok, NULL), SK_OK);
}

Test(sdk_errors, registration_after_start_is_refused) {
  register_simple("before", "t.ok");
  cr_assert_eq(sk_engine_start(eng), SK_OK);
  EXPECT_RC(sk_engine_start(eng), SK_ESTATE);
  EXPECT_RC(sk_engine_run(eng), SK_ESTATE);
  EXPECT_RC(sk_engine_register_task(eng, "t.late", h_ok, NULL), SK_ESTATE);
  EXPECT_RC(sk_engine_add_bulkhead(eng, "late", 1), SK_ESTATE);
  /* The engine still works. */
  char id[SK_ID_LEN];
  start_ok("before", NULL, id);
  cr_expect_eq(wait_settled(id), SK_STATUS_COMPLETED);
}

/* skald.h: "Registration (handlers, bulkheads, workflows) must happen before
 * sk_engine_start()". A workflow registered late must be refused like a
 * late handler, and leave nothing in workflow_defs. */
/* Workflows may be registered while the engine runs (a new version is
 * deployed without a restart); handlers and bulkheads may not. */
Test(sdk_errors, registration_while_running) {
  cr_assert_eq(sk_engine_start(eng), SK_OK);
  sk_workflow *wf = NULL;
  cr_assert_eq(sk_workflow_new("late", 1, &wf), SK_OK);
  cr_assert_eq(sk_workflow_add_step(wf, "a", "t.ok"), SK_OK);
  sk_error err;
  memset(&err, 0, sizeof(err));
  cr_assert_eq(sk_engine_register_workflow(eng, wf, &err), SK_OK, "%s",
               err.message);
  sk_workflow_free(wf);
  char id[SK_ID_LEN];
  cr_assert_eq(sk_run_start(eng, "late", NULL, NULL, id, NULL, &err), SK_OK,
               "%s", err.message);
  sk_status st;
  cr_assert_eq(sk_saga_wait(eng, id, 20000, &st), SK_OK);
  cr_assert_eq(st, SK_STATUS_COMPLETED);

  counts c0 = counts_now();
  cr_expect_eq(sk_engine_register_task(eng, "t.late", h_ok, NULL),
               SK_ESTATE);
  cr_expect_eq(sk_engine_add_bulkhead(eng, "late", 2), SK_ESTATE);
  expect_counts(&c0, "handler or bulkhead after start");
}

/* ---- registering workflows --------------------------------------------------
 */

/* Registers wf expecting a refusal; checks code, message word, path and that
 * neither the database nor the engine's registry learnt the workflow. */
static void expect_register_refused(sk_workflow *wf, const char *name, int code,
                                    const char *word, const char *path) {
  counts c0 = counts_now();
  sk_error err;
  memset(&err, 0, sizeof(err));
  int rc = sk_engine_register_workflow(eng, wf, &err);
  cr_expect_eq(rc, code, "register %s: got %s (%s), want %s", name,
               sk_err_name(rc), err.message, sk_err_name(code));
  expect_err(&err, code, word, name);
  if (path != NULL)
    cr_expect_str_eq(err.path, path, "register %s: path", name);
  expect_counts(&c0, name);
  char id[SK_ID_LEN];
  sk_error e2;
  memset(&e2, 0, sizeof(e2));
  cr_expect_eq(sk_run_start(eng, name, NULL, NULL, id, NULL, &e2), SK_ENOENT,
               "a refused workflow %s can be started", name);
  sk_workflow_free(wf);
}

static sk_workflow *wf_new(const char *name) {
  sk_workflow *wf = NULL;
  cr_assert_eq(sk_workflow_new(name, 1, &wf), SK_OK);
  return wf;
}

Test(sdk_errors, register_workflow_refuses_invalid_definitions) {
  sk_error err;
  memset(&err, 0, sizeof(err));
  EXPECT_RC(sk_engine_register_workflow(eng, NULL, &err), SK_EINVAL);
  expect_err(&err, SK_EINVAL, "NULL", "register(NULL wf)");

  /* No steps at all. */
  expect_register_refused(wf_new("empty"), "empty", SK_EINVALSPEC, "step",
                          "/steps");

  /* An unknown task type in step 1 (and one in a compensation). */
  sk_workflow *wf = wf_new("unknown_task");
  cr_assert_eq(sk_workflow_add_step(wf, "a", "t.ok"), SK_OK);
  cr_assert_eq(sk_workflow_add_step(wf, "b", "t.nobody"), SK_OK);
  expect_register_refused(wf, "unknown_task", SK_ENOHANDLER, "t.nobody",
                          "/steps/1/task");
  wf = wf_new("unknown_comp");
  cr_assert_eq(sk_workflow_add_step(wf, "a", "t.ok"), SK_OK);
  cr_assert_eq(sk_workflow_step_compensate(wf, "a", "t.nobody", NULL), SK_OK);
  expect_register_refused(wf, "unknown_comp", SK_ENOHANDLER, "t.nobody",
                          "/steps/0/compensate/task");

  /* A template that refers to a later step. */
  wf = wf_new("forward_ref");
  cr_assert_eq(sk_workflow_add_step(wf, "a", "t.ok"), SK_OK);
  cr_assert_eq(sk_workflow_add_step(wf, "b", "t.ok"), SK_OK);
  cr_assert_eq(sk_workflow_step_input(
                   wf, "a", "{\"x\": {\"y\": \"${steps.b.output.z}\"}}"),
               SK_OK);
  expect_register_refused(wf, "forward_ref", SK_EINVALSPEC, "precede",
                          "/steps/0/input/x/y");

  /* A template that refers to the step itself. */
  wf = wf_new("self_ref");
  cr_assert_eq(sk_workflow_add_step(wf, "a", "t.ok"), SK_OK);
  cr_assert_eq(sk_workflow_step_input(wf, "a", "[\"${steps.a.output}\"]"),
               SK_OK);
  expect_register_refused(wf, "self_ref", SK_EINVALSPEC, "precede",
                          "/steps/0/input/0");

  /* A template of bad syntax and one of an unknown root. */
  wf = wf_new("bad_template");
  cr_assert_eq(sk_workflow_add_step(wf, "a", "t.ok"), SK_OK);
  cr_assert_eq(sk_workflow_step_input(wf, "a", "{\"x\": \"${input.a\"}"),
               SK_OK);
  expect_register_refused(wf, "bad_template", SK_EINVALSPEC, "template",
                          "/steps/0/input/x");
  wf = wf_new("bad_root");
  cr_assert_eq(sk_workflow_add_step(wf, "a", "t.ok"), SK_OK);
  cr_assert_eq(sk_workflow_step_input(wf, "a", "{\"x\": \"${env.HOME}\"}"),
               SK_OK);
  expect_register_refused(wf, "bad_root", SK_EINVALSPEC, "template",
                          "/steps/0/input/x");

  /* compensate_on_failure without a compensation. */
  wf = wf_new("cof");
  cr_assert_eq(sk_workflow_add_step(wf, "a", "t.ok"), SK_OK);
  cr_assert_eq(sk_workflow_step_compensate_on_failure(wf, "a", true), SK_OK);
  expect_register_refused(wf, "cof", SK_EINVALSPEC, "compensate",
                          "/steps/0/compensate_on_failure");

  /* max_interval below initial_interval in one policy. */
  wf = wf_new("intervals");
  cr_assert_eq(sk_workflow_add_step(wf, "a", "t.ok"), SK_OK);
  sk_retry r;
  sk_retry_init(&r);
  r.initial_interval_ms = 500;
  r.max_interval_ms = 100;
  cr_assert_eq(sk_workflow_step_retry(wf, "a", &r), SK_OK);
  expect_register_refused(wf, "intervals", SK_EINVALSPEC, NULL,
                          "/steps/0/retry/max_interval_ms");

  /* Every step kind runs now; what the engine refuses is a task type it
   * has no handler for, wherever it hides: in a branch, in a fallback. */
  static const char *const hidden[] = {
      "{\"name\": \"par_step\", \"version\": 1, \"steps\": [{\"name\": \"p\","
      " \"parallel\": [[{\"name\": \"a\", \"task\": \"t.ok\"}],"
      " [{\"name\": \"b\", \"task\": \"t.nope\"}]]}]}",
      "{\"name\": \"fb_step\", \"version\": 1, \"steps\": [{\"name\": \"a\","
      " \"task\": \"t.ok\", \"fallback\": {\"task\": \"t.nope\"}}]}"};
  static const char *const hidden_names[] = {"par_step", "fb_step"};
  static const char *const hidden_paths[] = {"/steps/0/parallel/1/0/task",
                                             "/steps/0/fallback/task"};
  for (size_t i = 0; i < 2; i++) {
    memset(&err, 0, sizeof(err));
    int rc = sk_workflow_from_json(hidden[i], &wf, NULL, &err);
    cr_assert_eq(rc, SK_OK, "%s: %s", hidden_names[i], err.message);
    expect_register_refused(wf, hidden_names[i], SK_ENOHANDLER, "t.nope",
                            hidden_paths[i]);
  }
}

/* With allow_unknown_task_types, types other nodes run are accepted. */
Test(sdk_errors, allow_unknown_task_types_accepts_foreign_types) {
  sk_engine_options o;
  sk_engine_options_init(&o);
  o.database_url = ci;
  o.log_level = 0;
  o.node_name = "other-node";
  o.allow_unknown_task_types = true;
  sk_engine *other = NULL;
  sk_error err;
  memset(&err, 0, sizeof(err));
  cr_assert_eq(sk_engine_open(&o, &other, &err), SK_OK, "%s", err.message);
  sk_workflow *wf = wf_new("foreign");
  cr_assert_eq(sk_workflow_add_step(wf, "a", "t.elsewhere"), SK_OK);
  EXPECT_RC(sk_engine_register_workflow(other, wf, &err), SK_OK);
  /* The same definition on this engine, which has no such handler. */
  memset(&err, 0, sizeof(err));
  EXPECT_RC(sk_engine_register_workflow(eng, wf, &err), SK_ENOHANDLER);
  cr_expect_str_eq(err.path, "/steps/0/task");
  sk_workflow_free(wf);
  sk_engine_close(other);
  cr_expect_eq(pgtest_scalar(ci, "SELECT count(*) FROM workflow_defs "
                                 "WHERE name = 'foreign'"),
               1);
}

Test(sdk_errors, register_same_name_and_version_conflicts_unless_equal) {
  sk_workflow *wf = wf_new("dup");
  cr_assert_eq(sk_workflow_add_step(wf, "a", "t.ok"), SK_OK);
  sk_error err;
  memset(&err, 0, sizeof(err));
  cr_assert_eq(sk_engine_register_workflow(eng, wf, &err), SK_OK, "%s",
               err.message);
  /* The same definition again (and a separately built equal one): fine. */
  EXPECT_RC(sk_engine_register_workflow(eng, wf, &err), SK_OK);
  sk_workflow *same = wf_new("dup");
  cr_assert_eq(sk_workflow_add_step(same, "a", "t.ok"), SK_OK);
  EXPECT_RC(sk_engine_register_workflow(eng, same, &err), SK_OK);
  sk_workflow_free(same);
  cr_expect_eq(pgtest_scalar(ci, "SELECT count(*) FROM workflow_defs "
                                 "WHERE name = 'dup'"),
               1);
  char *stored_before = NULL;
  cr_assert_eq(sk_workflow_to_json(wf, &stored_before), SK_OK);
  long long sha0 = pgtest_scalar(
      ci, "SELECT hashtext(spec::text) FROM workflow_defs WHERE name = 'dup'");

  /* A different definition under (dup, 1): a conflict, nothing changes. */
  cr_assert_eq(sk_workflow_add_step(wf, "b", "t.ok"), SK_OK);
  counts c0 = counts_now();
  memset(&err, 0, sizeof(err));
  EXPECT_RC(sk_engine_register_workflow(eng, wf, &err), SK_ECONFLICT);
  expect_err(&err, SK_ECONFLICT, "different definition", "register(dup v1')");
  expect_counts(&c0, "conflicting register");
  cr_expect_eq(pgtest_scalar(ci, "SELECT hashtext(spec::text) FROM "
                                 "workflow_defs WHERE name = 'dup'"),
               sha0, "the stored definition changed");
  /* Runs still get the first definition: one step. */
  cr_assert_eq(sk_engine_start(eng), SK_OK);
  char id[SK_ID_LEN];
  start_ok("dup", NULL, id);
  cr_expect_eq(wait_settled(id), SK_STATUS_COMPLETED);
  cJSON *v = saga_view(id);
  cr_expect_eq(cJSON_GetArraySize(cJSON_GetObjectItem(v, "steps")), 1);
  cJSON_Delete(v);
  sk_free(stored_before);
  sk_workflow_free(wf);
}

/* ---- starting runs
 * ------------------------------------------------------------ */

Test(sdk_errors, run_start_refuses_bad_input_and_writes_nothing) {
  register_simple("shop", "t.ok");
  cr_assert_eq(sk_engine_start(eng), SK_OK);
  char *big = big_json(SK_PAYLOAD_MAX + 1);
  char key257[SK_IDEMPOTENCY_KEY_MAX + 2];
  memset(key257, 'k', sizeof(key257) - 1);
  key257[sizeof(key257) - 1] = '\0';
  struct {
    const char *what;
    const char *wf;
    const char *input;
    int version;
    const char *key;
    bool null_id;
    int want;
    const char *word;
  } cases[] = {
      {"NULL saga_id", "shop", NULL, 0, NULL, true, SK_EINVAL, "saga_id"},
      {"NULL workflow", NULL, NULL, 0, NULL, false, SK_EINVAL, "workflow"},
      {"empty workflow", "", NULL, 0, NULL, false, SK_EINVAL, "workflow"},
      {"uppercase workflow", "Shop", NULL, 0, NULL, false, SK_EINVAL,
       "workflow"},
      {"129-byte workflow", name129, NULL, 0, NULL, false, SK_EINVAL,
       "workflow"},
      {"workflow with a space", "my shop", NULL, 0, NULL, false, SK_EINVAL,
       "workflow"},
      {"workflow ../x", "../x", NULL, 0, NULL, false, SK_EINVAL, "workflow"},
      {"unknown workflow", "nope", NULL, 0, NULL, false, SK_ENOENT,
       "not registered"},
      {"unknown version", "shop", NULL, 99, NULL, false, SK_ENOENT,
       "not registered"},
      {"version -1", "shop", NULL, -1, NULL, false, SK_EINVAL, "version"},
      {"input not JSON", "shop", "{\"a\": ", 0, NULL, false, SK_EJSON, "JSON"},
      {"input empty text", "shop", "", 0, NULL, false, SK_EJSON, "JSON"},
      {"input an array", "shop", "[1, 2]", 0, NULL, false, SK_EJSON, "object"},
      {"input a number", "shop", "42", 0, NULL, false, SK_EJSON, "object"},
      {"input a string", "shop", "\"s\"", 0, NULL, false, SK_EJSON, "object"},
      {"input null", "shop", "null", 0, NULL, false, SK_EJSON, "object"},
      {"input with trailing text", "shop", "{\"a\": 1} trailing", 0, NULL,
       false, SK_EJSON, "JSON"},
      {"input over the limit", "shop", big, 0, NULL, false, SK_ETOOBIG,
       "limit"},
      {"empty idempotency key", "shop", NULL, 0, "", false, SK_EINVAL,
       "idempotency key"},
      {"257-byte idempotency key", "shop", NULL, 0, key257, false, SK_EINVAL,
       "idempotency key"},
      {"bad input and unknown workflow", "nope", "[", 0, NULL, false, SK_EJSON,
       "JSON"},
  };
  counts c0 = counts_now();
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    counts before = counts_now();
    sk_run_options ro = {.version = cases[i].version,
                         .idempotency_key = cases[i].key};
    char id[SK_ID_LEN] = "untouched";
    bool existed = true;
    sk_error err;
    memset(&err, 0, sizeof(err));
    int rc = sk_run_start(eng, cases[i].wf, cases[i].input, &ro,
                          cases[i].null_id ? NULL : id, &existed, &err);
    cr_expect_eq(rc, cases[i].want, "%s: got %s (%s)", cases[i].what,
                 sk_err_name(rc), err.message);
    expect_err(&err, cases[i].want, cases[i].word, cases[i].what);
    cr_expect_str_eq(id, "untouched", "%s: saga_id written on failure",
                     cases[i].what);
    expect_counts(&before, cases[i].what);
  }
  free(big);
  c0 = counts_now();

  /* The edges that are allowed: a 256-byte key, NULL options and outputs. */
  char key256[SK_IDEMPOTENCY_KEY_MAX + 1];
  memset(key256, 'k', SK_IDEMPOTENCY_KEY_MAX);
  key256[SK_IDEMPOTENCY_KEY_MAX] = '\0';
  sk_run_options ro = {.version = 1, .idempotency_key = key256};
  char id[SK_ID_LEN];
  EXPECT_RC(sk_run_start(eng, "shop", "{}", &ro, id, NULL, NULL), SK_OK);
  EXPECT_RC(sk_run_start(eng, "shop", NULL, NULL, id, NULL, NULL), SK_OK);
  cr_expect_eq(counts_now().sagas, c0.sagas + 2);
  cr_expect_eq(counts_now().keys, c0.keys + 1);
}

/* ---- saga ids
 * ----------------------------------------------------------------- */

Test(sdk_errors, saga_calls_refuse_bad_and_unknown_ids) {
  register_simple("ids", "t.ok");
  cr_assert_eq(sk_engine_start(eng), SK_OK);
  char real[SK_ID_LEN];
  start_ok("ids", NULL, real);
  cr_assert_eq(wait_settled(real), SK_STATUS_COMPLETED);
  counts c0 = counts_now();
  static const char *const bad_ids[] = {
      NULL,
      "",
      "not-a-uuid",
      "../x",
      "0190b3c2-7d1e-7abc-8def-0123456789a",    /* 35 */
      "0190b3c2-7d1e-7abc-8def-0123456789abc",  /* 37 */
      "0190b3c2x7d1e-7abc-8def-0123456789ab",   /* no dash */
      "0190b3c2-7d1e-7abc-8def-0123456789ag",   /* not hex */
      "0190b3c2-7d1e-7abc-8def-0123456789ab'--" /* injection-shaped */
  };
  for (size_t i = 0; i < sizeof(bad_ids) / sizeof(bad_ids[0]); i++) {
    const char *id = bad_ids[i];
    const char *shown = id ? id : "NULL";
    sk_error err;
    memset(&err, 0, sizeof(err));
    int rc = sk_saga_cancel(eng, id, &err);
    cr_expect_eq(rc, SK_EINVAL, "cancel(%s): %s", shown, sk_err_name(rc));
    expect_err(&err, SK_EINVAL, "UUID", shown);
    sk_status st;
    char *json = NULL;
    EXPECT_RC(sk_saga_status(eng, id, &st), SK_EINVAL);
    EXPECT_RC(sk_saga_wait(eng, id, 10, &st), SK_EINVAL);
    EXPECT_RC(sk_saga_get_json(eng, id, &json), SK_EINVAL);
    EXPECT_RC(sk_saga_events_json(eng, id, 0, &json), SK_EINVAL);
    cr_expect_null(json);
  }
  /* NULL outputs and bad numbers on a real id. */
  sk_status st;
  char *json = NULL;
  EXPECT_RC(sk_saga_status(eng, real, NULL), SK_EINVAL);
  EXPECT_RC(sk_saga_wait(eng, real, 10, NULL), SK_EINVAL);
  EXPECT_RC(sk_saga_wait(eng, real, -1, &st), SK_EINVAL);
  EXPECT_RC(sk_saga_get_json(eng, real, NULL), SK_EINVAL);
  EXPECT_RC(sk_saga_events_json(eng, real, 0, NULL), SK_EINVAL);
  EXPECT_RC(sk_saga_events_json(eng, real, -1, &json), SK_EINVAL);
  cr_expect_null(json);

  /* A well-formed id of no saga. */
  const char *ghost = "0190b3c2-7d1e-7abc-8def-0123456789ab";
  sk_error err;
  memset(&err, 0, sizeof(err));
  EXPECT_RC(sk_saga_cancel(eng, ghost, &err), SK_ENOENT);
  expect_err(&err, SK_ENOENT, "does not exist", "cancel(ghost)");
  EXPECT_RC(sk_saga_status(eng, ghost, &st), SK_ENOENT);
  EXPECT_RC(sk_saga_wait(eng, ghost, 10, &st), SK_ENOENT);
  EXPECT_RC(sk_saga_get_json(eng, ghost, &json), SK_ENOENT);
  EXPECT_RC(sk_saga_events_json(eng, ghost, 0, &json), SK_ENOENT);
  cr_expect_null(json);
  /* Upper-case hex is the same UUID text form, just not a saga here. */
  EXPECT_RC(sk_saga_status(eng, "0190B3C2-7D1E-7ABC-8DEF-0123456789AB", &st),
            SK_ENOENT);
  expect_counts(&c0, "bad saga ids");
}

Test(sdk_errors, cancel_of_a_finished_saga_is_refused) {
  register_simple("done", "t.ok");
  cr_assert_eq(sk_engine_start(eng), SK_OK);
  char id[SK_ID_LEN];
  start_ok("done", NULL, id);
  cr_assert_eq(wait_settled(id), SK_STATUS_COMPLETED);
  counts c0 = counts_now();
  long long seq0 = pgtest_scalar(ci, "SELECT max(last_seq) FROM sagas");
  for (int i = 0; i < 2; i++) {
    sk_error err;
    memset(&err, 0, sizeof(err));
    EXPECT_RC(sk_saga_cancel(eng, id, &err), SK_ESTATE);
    expect_err(&err, SK_ESTATE, "already finished", "cancel(completed)");
    EXPECT_RC(sk_saga_cancel(eng, id, NULL), SK_ESTATE);
  }
  expect_counts(&c0, "cancel of a completed saga");
  cr_expect_eq(pgtest_scalar(ci, "SELECT max(last_seq) FROM sagas"), seq0);
  sk_status st;
  EXPECT_RC(sk_saga_status(eng, id, &st), SK_OK);
  cr_expect_eq(st, SK_STATUS_COMPLETED);
}

Test(sdk_errors, wait_times_out_without_changing_anything) {
  /* Not started: the saga stays running, the wait ends on time. */
  register_simple("idle", "t.ok");
  char id[SK_ID_LEN];
  start_ok("idle", NULL, id);
  sk_status st = SK_STATUS_FAILED;
  EXPECT_RC(sk_saga_wait(eng, id, 100, &st), SK_ETIMEDOUT);
  cr_expect_eq(st, SK_STATUS_RUNNING);
  EXPECT_RC(sk_saga_wait(eng, id, 0, &st), SK_ETIMEDOUT);
}

/* ---- bad handler output
 * ---------------------------------------------------------- */

/* The saga of a one-step workflow running task_type ends compensated with
 * the step failed for good by `type` after one attempt, never completed. */
static void expect_step_failed_with(const char *wfname, const char *type,
                                    const char *word) {
  char id[SK_ID_LEN];
  start_ok(wfname, "{\"n\": 1}", id);
  cr_assert_eq(wait_settled(id), SK_STATUS_COMPENSATED, "%s", wfname);
  cJSON *v = saga_view(id);
  cr_expect_str_eq(jstr(v, "status"), "compensated");
  cr_expect_str_eq(jstr(v, "steps.0.status"), "failed");
  cr_expect_str_eq(jstr(v, "steps.0.error.type"), type);
  cr_expect(cJSON_IsFalse(jget(v, "steps.0.error.retryable")));
  const char *msg = jstr(v, "steps.0.error.message");
  cr_expect(msg != NULL && strstr(msg, word) != NULL, "message %s",
            msg ? msg : "(none)");
  cr_expect(cJSON_IsNull(jget(v, "steps.0.output")));
  cr_expect_eq(jget(v, "steps.0.attempts")->valueint, 1);
  cJSON_Delete(v);
  cJSON *evs = saga_events(id);
  int failed = 0, completed = 0;
  const cJSON *ev;
  cJSON_ArrayForEach(ev, evs) {
    const char *t = jstr(ev, "type");
    if (strcmp(t, "StepCompleted") == 0)
      completed++;
    if (strcmp(t, "StepFailed") == 0) {
      failed++;
      cr_expect_str_eq(jstr(ev, "payload.error.type"), type);
      cr_expect(cJSON_IsTrue(jget(ev, "payload.final")));
    }
  }
  cr_expect_eq(completed, 0, "bad output recorded as a success");
  cr_expect_eq(failed, 1);
  cJSON_Delete(evs);
  cr_expect_eq(pgtest_scalar(ci, "SELECT count(*) FROM tasks"), 0,
               "tasks left behind");
}

Test(sdk_errors, handler_output_that_is_not_json_fails_the_step) {
  register_simple("badjson", "t.badjson");
  cr_assert_eq(sk_engine_start(eng), SK_OK);
  expect_step_failed_with("badjson", "InvalidOutput", "JSON");
  cr_expect_eq(atomic_load(&rc_ok_null_r), SK_EINVAL);
  cr_expect_eq(atomic_load(&rc_err_null_type), SK_EINVAL);
  cr_expect_eq(atomic_load(&rc_err_empty_type), SK_EINVAL);
  cr_expect_eq(atomic_load(&rc_err_long_type), SK_EINVAL);
  cr_expect_eq(atomic_load(&rc_ok_bad_json), SK_EJSON);
}

/* Text after a complete JSON value is not JSON: it must not be cut off
 * and recorded as a success. */
Test(sdk_errors, handler_output_with_trailing_text_fails_the_step) {
  register_simple("trailing", "t.trailing");
  cr_assert_eq(sk_engine_start(eng), SK_OK);
  expect_step_failed_with("trailing", "InvalidOutput", "JSON");
  cr_expect_eq(atomic_load(&rc_ok_trailing), SK_EJSON);
}

Test(sdk_errors, handler_output_over_the_limit_fails_the_step) {
  register_simple("toobig", "t.toobig");
  cr_assert_eq(sk_engine_start(eng), SK_OK);
  expect_step_failed_with("toobig", "InvalidOutput", "exceeds");
  cr_expect_eq(atomic_load(&rc_ok_too_big), SK_ETOOBIG);
  cr_expect_eq(pgtest_scalar(ci, "SELECT coalesce(max(length(payload::text)),"
                                 " 0) FROM saga_events"),
               pgtest_scalar(ci, "SELECT coalesce(max(length(payload::text)),"
                                 " 0) FROM saga_events WHERE length(payload::"
                                 "text) < 100000"),
               "the oversized output reached the log");
}

Test(sdk_errors, bad_output_replaces_an_earlier_error_result) {
  register_simple("errbad", "t.errbad");
  cr_assert_eq(sk_engine_start(eng), SK_OK);
  /* The first result was a retryable "Transient"; the refused output turns
   * it into a non-retryable InvalidOutput, so there is one attempt. */
  expect_step_failed_with("errbad", "InvalidOutput", "JSON");
  cr_expect_eq(atomic_load(&rc_err_ok_after), SK_EJSON);
}

Test(sdk_errors, handler_error_without_result_is_a_retryable_handler_error) {
  sk_workflow *wf = wf_new("noresult");
  cr_assert_eq(sk_workflow_add_step(wf, "only", "t.noresult"), SK_OK);
  sk_retry r;
  sk_retry_init(&r);
  r.initial_interval_ms = 10;
  r.jitter = 0;
  cr_assert_eq(sk_workflow_step_retry(wf, "only", &r), SK_OK);
  cr_assert_eq(sk_engine_register_workflow(eng, wf, NULL), SK_OK);
  sk_workflow_free(wf);
  cr_assert_eq(sk_engine_start(eng), SK_OK);
  char id[SK_ID_LEN];
  start_ok("noresult", NULL, id);
  cr_assert_eq(wait_settled(id), SK_STATUS_COMPLETED);
  cr_expect_eq(atomic_load(&calls_handler_error), 2);
  cJSON *evs = saga_events(id);
  bool seen = false;
  const cJSON *ev;
  cJSON_ArrayForEach(ev, evs) {
    if (strcmp(jstr(ev, "type"), "StepFailed") == 0) {
      cr_expect_str_eq(jstr(ev, "payload.error.type"), "HandlerError");
      cr_expect(cJSON_IsTrue(jget(ev, "payload.error.retryable")));
      cr_expect(cJSON_IsFalse(jget(ev, "payload.final")));
      seen = true;
    }
  }
  cr_expect(seen);
  cJSON_Delete(evs);
  cJSON *v = saga_view(id);
  cr_expect(cJSON_IsNull(jget(v, "steps.0.output")), "output null");
  cJSON_Delete(v);
}
