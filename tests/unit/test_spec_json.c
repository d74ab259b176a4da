/*
 * test_spec_json.c — the JSON spec parser and canonical writer
 * (engine/spec/spec_json.c), table-driven over tests/fixtures/specs:
 *   valid/NAME.json     must parse, and round-trip to an equal definition
 *                       whose canonical text is byte-identical;
 *   invalid/NAME.json   must be rejected with exactly the JSON Pointers
 *                       listed one per line in invalid/NAME.expected.
 * Plus robustness: text that is not JSON, NUL bytes, deep nesting, huge
 * numbers, every truncation of the spec example.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec/spec_json.h"
#include "testutil.h"

static int parse_text(const char *text, size_t len, def_workflow **wf,
                      def_problems *p) {
  def_problems_init(p);
  return spec_parse(text, len, wf, p);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Names (without .json) of the fixtures in specs/<dir>, sorted. */
static size_t list_fixtures(const char *dir, char ***out) {
  char path[1024];
  snprintf(path, sizeof(path), "%s/specs/%s", SKALD_FIXTURES_DIR, dir);
  DIR *d = opendir(path);
  cr_assert_not_null(d, "cannot open %s", path);
  char **names = NULL;
  size_t n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    size_t len = strlen(e->d_name);
    if (len <= 5 || strcmp(e->d_name + len - 5, ".json") != 0)
      continue;
    names = realloc(names, (n + 1) * sizeof(*names));
    names[n++] = strndup(e->d_name, len - 5);
  }
  closedir(d);
  qsort(names, n, sizeof(*names), cmp_str);
  *out = names;
  return n;
}

static void free_names(char **names, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
}

static void check_round_trip(const char *name, const char *text, size_t len) {
  def_problems p;
  def_workflow *wf = NULL;
  int rc = parse_text(text, len, &wf, &p);
  cr_assert_eq(rc, SK_OK, "%s: rc %d, first problem %s: %s", name, rc,
               p.n ? p.items[0].path : "-", p.n ? p.items[0].message : "-");
  cr_assert_eq(p.n, 0, "%s", name);
  char *j1 = NULL, *j2 = NULL;
  cr_assert_eq(spec_to_json(wf, &j1), SK_OK);
  def_workflow *wf2 = NULL;
  rc = parse_text(j1, strlen(j1), &wf2, &p);
  cr_assert_eq(rc, SK_OK, "%s: canonical text does not parse: %s", name, j1);
  cr_assert(def_equal(wf, wf2), "%s", name);
  cr_assert_eq(spec_to_json(wf2, &j2), SK_OK);
  cr_assert_str_eq(j1, j2, "%s", name);
  free(j1);
  free(j2);
  def_workflow_unref(wf);
  def_workflow_unref(wf2);
}

Test(spec_json, valid_fixtures_parse_and_round_trip) {
  char **names;
  size_t n = list_fixtures("valid", &names);
  cr_assert_geq(n, 8);
  for (size_t i = 0; i < n; i++) {
    char rel[512];
    snprintf(rel, sizeof(rel), "specs/valid/%s.json", names[i]);
    size_t len;
    char *text = testutil_read_fixture(rel, &len);
    cr_assert_not_null(text, "%s", rel);
    check_round_trip(names[i], text, len);
    free(text);
  }
  free_names(names, n);
}

/* The expected paths of an invalid fixture, one per line, sorted. */
static size_t read_expected(const char *name, char ***out) {
  char rel[512];
  snprintf(rel, sizeof(rel), "specs/invalid/%s.expected", name);
  char *text = testutil_read_fixture(rel, NULL);
  cr_assert_not_null(text, "missing %s", rel);
  char **paths = NULL;
  size_t n = 0;
  for (char *line = strtok(text, "\n"); line != NULL;
       line = strtok(NULL, "\n")) {
    paths = realloc(paths, (n + 1) * sizeof(*paths));
    paths[n++] = strdup(line);
  }
  free(text);
  qsort(paths, n, sizeof(*paths), cmp_str);
  *out = paths;
  return n;
}

static void check_invalid(const char *name) {
  char rel[512];
  snprintf(rel, sizeof(rel), "specs/invalid/%s.json", name);
  size_t len;
  char *text = testutil_read_fixture(rel, &len);
  cr_assert_not_null(text, "%s", rel);
  char **want;
  size_t n_want = read_expected(name, &want);
  cr_assert_gt(n_want, 0, "%s: empty .expected", name);
  def_problems p;
  def_workflow *wf = (def_workflow *)&p; /* must be reset to NULL */
  int rc = parse_text(text, len, &wf, &p);
  cr_assert_eq(rc, SK_EINVALSPEC, "%s: rc %d", name, rc);
  cr_assert_null(wf);
  for (size_t i = 0; i < p.n; i++) {
    cr_assert(p.items[i].message[0] != '\0');
    bool expected =
        bsearch(&p.items[i].path, want, n_want, sizeof(*want), cmp_str) != NULL;
    cr_assert(expected, "%s: unexpected problem %s: %s", name, p.items[i].path,
              p.items[i].message);
  }
  for (size_t k = 0; k < n_want; k++) {
    bool found = false;
    for (size_t i = 0; i < p.n && !found; i++)
      found = strcmp(p.items[i].path, want[k]) == 0;
    cr_assert(found, "%s: no problem at %s", name, want[k]);
  }
  def_problems_clear(&p);
  free_names(want, n_want);
  free(text);
}

Test(spec_json, invalid_fixtures_report_exact_paths) {
  char **names;
  size_t n = list_fixtures("invalid", &names);
  cr_assert_geq(n, 25);
  for (size_t i = 0; i < n; i++)
    check_invalid(names[i]);
  free_names(names, n);
}

Test(spec_json, example_is_parsed_field_by_field) {
  size_t len;
  char *text = testutil_read_fixture("specs/valid/trip_booking.json", &len);
  cr_assert_not_null(text);
  def_problems p;
  def_workflow *wf = NULL;
  cr_assert_eq(parse_text(text, len, &wf, &p), SK_OK);
  cr_assert_str_eq(wf->name, "trip_booking");
  cr_assert_eq(wf->version, 1);
  cr_assert_eq(wf->on_failure, DEF_ON_FAILURE_COMPENSATE);
  cr_assert_eq(wf->timeout_ms, 600000);
  cr_assert_eq(wf->default_timeout_ms, 30000);
  cr_assert(wf->has_default_retry);
  cr_assert_eq(wf->default_retry.set, 0x3f);
  cr_assert_eq(wf->default_retry.max_attempts, 5);
  cr_assert_float_eq(wf->default_retry.jitter, 0.2, 1e-12);
  cr_assert_str_eq(wf->default_retry.non_retryable_errors[0],
                   "ValidationError");
  cr_assert_eq(wf->n_steps, 5);
  const def_step *s = wf->steps;
  cr_assert_eq(s[0].action.kind, DEF_KIND_TASK);
  cr_assert_str_eq(s[0].action.task_type, "flight.reserve");
  cr_assert_str_eq(s[0].action.input_json,
                   "{\"from\":\"${input.from}\",\"to\":\"${input.to}\"}");
  cr_assert_str_eq(s[0].compensate->task_type, "flight.cancel");
  cr_assert_str_eq(s[0].bulkhead, "flights");
  cr_assert_eq(s[1].action.kind, DEF_KIND_HTTP);
  cr_assert_str_eq(s[1].action.http.method, "POST");
  cr_assert_str_eq(s[1].action.http.headers_json,
                   "{\"Content-Type\":\"application/json\"}");
  cr_assert_eq(s[1].compensate->kind, DEF_KIND_HTTP);
  cr_assert(s[1].action.has_retry);
  cr_assert_eq(s[1].action.retry.set, DEF_RETRY_MAX_ATTEMPTS);
  cr_assert_eq(s[2].gpus, 1);
  cr_assert_eq(s[2].gpu_memory_mb, 8000);
  cr_assert_eq(s[2].action.timeout_ms, 120000);
  cr_assert_eq(s[3].action.kind, DEF_KIND_SLEEP);
  cr_assert_eq(s[3].action.sleep_ms, 5000);
  cr_assert_eq(s[4].action.kind, DEF_KIND_PARALLEL);
  cr_assert_eq(s[4].n_branches, 2);
  cr_assert_str_eq(s[4].branches[1].steps[0].name, "sms");
  def_workflow_unref(wf);
  free(text);
}

Test(spec_json, canonical_text_ignores_key_order_and_spacing) {
  const char *a =
      "{\"steps\":[{\"task\":\"t\",\"retry\":{\"jitter\":0.1,"
      "\"max_attempts\":2},\"name\":\"s\",\"input\":{ \"k\" : [1, 2] }}],"
      "\"version\":2,\"on_failure\":\"compensate\",\"name\":\"w\"}";
  const char *b =
      "{\"name\":\"w\",\"version\":2,\"steps\":[{\"name\":\"s\",\"task\":\"t\","
      "\"input\":{\"k\":[1,2]},\"retry\":{\"max_attempts\":2,\"jitter\":0.1}}"
      "]}";
  def_problems p;
  def_workflow *wa = NULL, *wb = NULL;
  cr_assert_eq(parse_text(a, strlen(a), &wa, &p), SK_OK);
  cr_assert_eq(parse_text(b, strlen(b), &wb, &p), SK_OK);
  char *ja, *jb;
  spec_to_json(wa, &ja);
  spec_to_json(wb, &jb);
  cr_assert_str_eq(ja, jb);
  cr_assert_str_eq(ja, "{\"name\":\"w\",\"version\":2,\"steps\":[{\"name\":"
                       "\"s\",\"task\":\"t\",\"input\":{\"k\":[1,2]},"
                       "\"retry\":{\"max_attempts\":2,\"jitter\":0.1}}]}");
  cr_assert(def_equal(wa, wb));
  /* A different definition is not equal. */
  wb->steps[0].action.retry.max_attempts = 3;
  cr_assert_not(def_equal(wa, wb));
  cr_assert(def_equal(NULL, NULL));
  cr_assert_not(def_equal(wa, NULL));
  free(ja);
  free(jb);
  def_workflow_unref(wa);
  def_workflow_unref(wb);
}

Test(spec_json, sdk_json_fields_are_canonicalised) {
  def_problems p;
  def_workflow *wf = NULL;
  const char *t = "{\"name\":\"w\",\"version\":1,\"steps\":[{\"name\":\"s\","
                  "\"task\":\"t\",\"input\":{\"a\":1}}]}";
  cr_assert_eq(parse_text(t, strlen(t), &wf, &p), SK_OK);
  def_workflow *c = def_workflow_clone(wf);
  free(c->steps[0].action.input_json);
  c->steps[0].action.input_json = strdup(" { \"a\" :\n 1 } ");
  cr_assert(def_equal(wf, c));
  free(c->steps[0].action.input_json);
  c->steps[0].action.input_json = strdup("{\"a\":");
  char *out = (char *)"x";
  cr_assert_eq(spec_to_json(c, &out), SK_EJSON);
  cr_assert_null(out);
  cr_assert_not(def_equal(wf, c));
  cr_assert_eq(spec_to_json(NULL, &out), SK_EINVAL);
  def_workflow_unref(wf);
  def_workflow_unref(c);
}

/* Parses text that must fail with `code` and one problem at "" whose
 * message contains `needle`. */
static void expect_whole_doc_error(const char *text, size_t len, int code,
                                   const char *needle) {
  def_problems p;
  def_workflow *wf = NULL;
  int rc = parse_text(text, len, &wf, &p);
  cr_assert_eq(rc, code, "rc %d for %.40s", rc, text);
  cr_assert_null(wf);
  cr_assert_eq(p.n, 1, "%zu problems for %.40s", p.n, text);
  cr_assert_str_eq(p.items[0].path, "");
  cr_assert_not_null(strstr(p.items[0].message, needle), "message: %s",
                     p.items[0].message);
  def_problems_clear(&p);
}

Test(spec_json, not_json_at_all) {
  expect_whole_doc_error("", 0, SK_EJSON, "line 1, column 1");
  expect_whole_doc_error("   ", 3, SK_EJSON, "could not parse JSON");
  expect_whole_doc_error("{\"name\":\n  nope}", 16, SK_EJSON, "line 2");
  expect_whole_doc_error("{\"name\":\"w\"", 11, SK_EJSON, "could not parse");
  expect_whole_doc_error("{} {}", 5, SK_EJSON, "after the value");
  expect_whole_doc_error("{\"a\":1}\0{}", 10, SK_EJSON, "NUL byte");
  expect_whole_doc_error("{\"na\0me\":1}", 11, SK_EJSON, "byte 4");
}

Test(spec_json, length_is_respected) {
  /* Only len bytes are read: the rest of the buffer is not part of it. */
  const char *t = "{\"name\":\"w\",\"version\":1,\"steps\":[{\"name\":\"s\","
                  "\"task\":\"t\"}]}GARBAGE";
  def_problems p;
  def_workflow *wf = NULL;
  cr_assert_eq(parse_text(t, strlen(t) - 7, &wf, &p), SK_OK);
  def_workflow_unref(wf);
  expect_whole_doc_error(t, strlen(t), SK_EJSON, "after the value");
}

Test(spec_json, root_must_be_an_object) {
  expect_whole_doc_error("[1,2]", 5, SK_EINVALSPEC, "must be an object");
  expect_whole_doc_error("\"spec\"", 6, SK_EINVALSPEC, "must be an object");
  expect_whole_doc_error("null", 4, SK_EINVALSPEC, "must be an object");
  expect_whole_doc_error("42", 2, SK_EINVALSPEC, "must be an object");
}

Test(spec_json, too_big) {
  size_t len = SK_PAYLOAD_MAX + 1;
  char *t = malloc(len + 1);
  memset(t, ' ', len);
  t[0] = '{';
  t[len - 1] = '}';
  t[len] = '\0';
  expect_whole_doc_error(t, len, SK_ETOOBIG, "too large");
  free(t);
}

Test(spec_json, deep_nesting_is_a_problem_not_a_crash) {
  size_t depth = 200000, len = 2 * depth + 64;
  char *t = malloc(len);
  size_t n = (size_t)snprintf(t, len, "{\"name\":\"w\",\"x\":");
  for (size_t i = 0; i < depth; i++)
    t[n++] = '[';
  for (size_t i = 0; i < depth; i++)
    t[n++] = ']';
  t[n++] = '}';
  expect_whole_doc_error(t, n, SK_EINVALSPEC, "nest deeper than 64");
  /* Brackets inside strings do not count. */
  const char *s = "{\"name\":\"w[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
                  "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\\"[[\","
                  "\"version\":1,\"steps\":[{\"name\":\"s\",\"task\":\"t\"}]}";
  def_problems p;
  def_workflow *wf = NULL;
  cr_assert_eq(parse_text(s, strlen(s), &wf, &p), SK_EINVALSPEC);
  cr_assert_eq(p.n, 1);
  cr_assert_str_eq(p.items[0].path, "/name"); /* the name pattern, not depth */
  def_problems_clear(&p);
  free(t);
}

Test(spec_json, huge_lists_are_cut_short) {
  /* ~1 MiB of empty steps and of branches: refused without building them
   * all (ASan would make a ~300k-step build slow and large). */
  size_t cap = SK_PAYLOAD_MAX, n;
  char *t = malloc(cap + 1);
  const char *heads[] = {"{\"name\":\"w\",\"version\":1,\"steps\":[",
                         "{\"name\":\"w\",\"version\":1,\"steps\":[{"
                         "\"name\":\"p\",\"parallel\":["};
  const char *items[] = {"{},", "[{}],"};
  const char *tails[] = {"{}]}", "[{}]]}]}"};
  const char *paths[] = {"/steps", "/steps/0/parallel"};
  for (int k = 0; k < 2; k++) {
    n = (size_t)snprintf(t, cap, "%s", heads[k]);
    while (n + 16 < cap) {
      memcpy(t + n, items[k], strlen(items[k]));
      n += strlen(items[k]);
    }
    n += (size_t)snprintf(t + n, cap + 1 - n, "%s", tails[k]);
    def_problems p;
    def_workflow *wf = NULL;
    cr_assert_eq(parse_text(t, n, &wf, &p), SK_EINVALSPEC);
    cr_assert_eq(p.items[0].path[0], '/');
    bool found = false;
    for (size_t i = 0; i < p.n && i < DEF_PROBLEMS_MAX; i++)
      found = found || (strcmp(p.items[i].path, paths[k]) == 0 &&
                        strstr(p.items[i].message, "at most 256") != NULL);
    cr_assert(found, "no size problem at %s", paths[k]);
    def_problems_clear(&p);
  }
  free(t);
}

Test(spec_json, collects_every_problem) {
  const char *t = "{\"name\":\"X\",\"version\":0,\"extra\":1,\"steps\":["
                  "{\"name\":\"a\"},{\"name\":\"a\",\"task\":\"t\","
                  "\"retry\":{\"max_attempts\":0}}]}";
  def_problems p;
  def_workflow *wf = NULL;
  cr_assert_eq(parse_text(t, strlen(t), &wf, &p), SK_EINVALSPEC);
  cr_assert_eq(p.n, 6, "%zu problems", p.n);
  sk_error err;
  def_problems_to_error(&p, &err);
  cr_assert_not_null(strstr(err.message, "(and 5 more problems)"));
  def_problems_clear(&p);
  /* The spec's own example message. */
  t = "{\"name\":\"w\",\"version\":1,\"steps\":[{\"name\":\"a\",\"task\":\"t\","
      "\"retry\":{\"max_attempts\":0}}]}";
  cr_assert_eq(parse_text(t, strlen(t), &wf, &p), SK_EINVALSPEC);
  cr_assert_eq(p.n, 1);
  cr_assert_str_eq(p.items[0].path, "/steps/0/retry/max_attempts");
  cr_assert_str_eq(p.items[0].message, "must be at least 1");
  def_problems_clear(&p);
}

Test(spec_json, null_arguments_and_problem_list) {
  def_workflow *wf = NULL;
  cr_assert_eq(spec_parse(NULL, 0, &wf, NULL), SK_EINVAL);
  cr_assert_eq(spec_parse("{}", 2, NULL, NULL), SK_EINVAL);
  /* p may be NULL: the result code still tells. */
  cr_assert_eq(spec_parse("{}", 2, &wf, NULL), SK_EINVALSPEC);
  cr_assert_null(wf);
  const char *t = "{\"name\":\"w\",\"version\":1,\"steps\":[{\"name\":\"s\","
                  "\"sleep\":{\"ms\":1}}]}";
  cr_assert_eq(spec_parse(t, strlen(t), &wf, NULL), SK_OK);
  def_workflow_unref(wf);
}

Test(spec_json, every_truncation_fails_cleanly) {
  size_t len;
  char *text = testutil_read_fixture("specs/valid/trip_booking.json", &len);
  cr_assert_not_null(text);
  while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == ' '))
    len--;
  for (size_t n = 0; n < len; n++) {
    def_problems p;
    def_workflow *wf = NULL;
    char *copy = malloc(n + 1); /* exact size: ASan sees any over-read */
    memcpy(copy, text, n);
    int rc = parse_text(copy, n, &wf, &p);
    cr_assert_neq(rc, SK_OK, "truncated at %zu parsed", n);
    cr_assert_null(wf);
    cr_assert_geq(p.n, 1);
    def_problems_clear(&p);
    free(copy);
  }
  free(text);
}

Test(spec_json, mutations_never_crash) {
  size_t len;
  char *text = testutil_read_fixture("specs/valid/trip_booking.json", &len);
  const char subs[] = {'"', '{', '}', '[', ']', ',', ':', '0', '\\', 'x', '-'};
  unsigned seed = 12345;
  for (int round = 0; round < 3000; round++) {
    char *copy = malloc(len);
    memcpy(copy, text, len);
    for (int k = 0; k < 3; k++) {
      seed = seed * 1103515245u + 12345u;
      size_t at = (seed >> 8) % len;
      seed = seed * 1103515245u + 12345u;
      copy[at] = subs[(seed >> 8) % sizeof(subs)];
    }
    def_problems p;
    def_workflow *wf = NULL;
    int rc = parse_text(copy, len, &wf, &p);
    cr_assert((rc == SK_OK) == (wf != NULL));
    cr_assert((rc == SK_OK) == (p.n == 0));
    def_workflow_unref(wf);
    def_problems_clear(&p);
    free(copy);
  }
  free(text);
}
