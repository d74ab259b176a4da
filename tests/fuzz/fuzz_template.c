/*
 * fuzz_template.c — libFuzzer target for the ${...} template engine
 * (template_render, template_check, template_check_string).
 *
 * The input is split at NUL bytes: TEMPLATE [\0 SAGA_INPUT [\0 STEP_OUTPUT]].
 * A missing saga input is NULL ("{}"); steps whose name starts with a
 * lowercase letter a..m have STEP_OUTPUT as their output (NULL when absent),
 * the others have none.
 *
 * Invariants checked:
 *   - template_render and template_check never crash or leak;
 *   - render succeeds on a template without "${" by copying it unchanged;
 *     otherwise a successful render is valid JSON;
 *   - render and check agree on syntax: render fails with SK_EINVAL exactly
 *     when check reports an "invalid template" problem (when check reports
 *     one, render may also stop earlier on an invalid referenced document:
 *     it must fail either way);
 *   - check reports "must be valid JSON" / depth exactly when render (on a
 *     template with "${") fails with SK_EJSON before looking at anything;
 *     any other SK_EJSON from render means the saga input or the step
 *     output is not valid JSON (or nests too deep);
 *   - every problem path starts with the path given to check.
 *
 * Thread: the fuzzer's only thread.
 */
#include "fuzz_entry.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <string.h>

#include <skald/skald.h>

#include "spec/template.h"

#define CHECK_PATH "/steps/0/input"

typedef struct parts {
  const char *output;
  int output_calls;
} parts;

static const char *step_output(void *ud, const char *name) {
  parts *p = ud;
  p->output_calls++;
  if (name != NULL && name[0] >= 'a' && name[0] <= 'm')
    return p->output;
  return NULL;
}

static int tmpl_depth(const cJSON *j) {
  int max = 0;
  for (const cJSON *c = j->child; c != NULL; c = c->next) {
    int d = tmpl_depth(c);
    if (d > max)
      max = d;
  }
  return (cJSON_IsArray(j) || cJSON_IsObject(j)) ? max + 1 : max;
}

/* Valid JSON within the depth limit (what template.c accepts). */
static bool doc_ok(const char *text) {
  if (text == NULL)
    return true;
  cJSON *j = cJSON_Parse(text);
  bool ok = j != NULL && tmpl_depth(j) <= SK_JSON_DEPTH_MAX;
  cJSON_Delete(j);
  return ok;
}

static bool starts_with(const char *s, const char *prefix) {
  return s != NULL && strncmp(s, prefix, strlen(prefix)) == 0;
}

int fuzz_template_one(const uint8_t *data, size_t size) {
  /* Three NUL-terminated strings in one copy. */
  char *mem = malloc(size + 3);
  if (mem == NULL)
    return 0;
  if (size)
    memcpy(mem, data, size);
  mem[size] = mem[size + 1] = mem[size + 2] = '\0';
  const char *tmpl = mem;
  size_t tlen = strlen(tmpl);
  const char *input = tlen < size ? mem + tlen + 1 : NULL;
  const char *output = NULL;
  if (input != NULL) {
    size_t ilen = strlen(input);
    if ((size_t)(input - mem) + ilen < size)
      output = input + ilen + 1;
  }

  parts pt = {.output = output};
  template_ctx ctx = {
      .saga_id = "0b0e7d56-0000-4000-8000-000000000001",
      .attempt = 2,
      .input_json = input,
      .step_output = step_output,
      .ud = &pt,
  };
  char *out = (char *)1;
  sk_error err;
  memset(&err, 0, sizeof(err));
  int rc = template_render(tmpl, &ctx, &out, &err);

  static const char *const known[] = {"a", "b", "flight", "hotel", "z"};
  def_problems p;
  def_problems_init(&p);
  int added = template_check(tmpl, known, sizeof(known) / sizeof(known[0]),
                             CHECK_PATH, &p);
  FUZZ_CHECK(added >= 0 && (size_t)added == p.n, "check returned %d, added %zu",
             added, p.n);
  bool syntax = false, not_json = false;
  for (size_t i = 0; i < FUZZ_KEPT(&p); i++) {
    if (p.oom && p.items[i].message == NULL)
      continue; /* a slot lost to OOM */
    FUZZ_CHECK(starts_with(p.items[i].path, CHECK_PATH),
               "problem path \"%s\" is not under " CHECK_PATH,
               p.items[i].path);
    if (starts_with(p.items[i].message, "invalid template"))
      syntax = true;
    if (starts_with(p.items[i].message, "must be valid JSON") ||
        starts_with(p.items[i].message, "must not nest deeper"))
      not_json = true;
  }
  bool has_tmpl = strstr(tmpl, "${") != NULL;

  if (rc == SK_OK) {
    FUZZ_CHECK(out != NULL && out != (char *)1, "render succeeded, no output");
    if (!has_tmpl) {
      FUZZ_CHECK(strcmp(out, tmpl) == 0, "text without ${ was changed");
    } else {
      FUZZ_CHECK(!not_json, "render accepted a template check calls invalid");
      FUZZ_CHECK(!syntax, "render accepted a template with a syntax error "
                          "that check reports");
      cJSON *j = cJSON_Parse(out);
      FUZZ_CHECK(j != NULL, "rendered output is not JSON: %s", out);
      cJSON_Delete(j);
    }
  } else {
    FUZZ_CHECK(out == NULL, "render failed (%d) but set *out", rc);
    FUZZ_CHECK(has_tmpl || rc == SK_ENOMEM,
               "render failed (%d) on text without ${", rc);
    if (rc == SK_EINVAL)
      FUZZ_CHECK(syntax, "render found a syntax error (%s) check missed",
                 err.message);
    if (rc == SK_EJSON && !not_json)
      FUZZ_CHECK(!doc_ok(input) || (output != NULL && !doc_ok(output)),
                 "render said not JSON (%s) but template, input and output "
                 "are all valid",
                 err.message);
    if (not_json)
      FUZZ_CHECK(rc == SK_EJSON || rc == SK_ENOMEM,
                 "check says invalid JSON, render failed with %d", rc);
  }
  def_problems_clear(&p);
  free(rc == SK_OK ? out : NULL);

  /* The plain-string form (http urls): only must not crash or leak, and
   * keep its paths. */
  def_problems_init(&p);
  (void)template_check_string(tmpl, known, 2, "/url", &p);
  for (size_t i = 0; i < FUZZ_KEPT(&p); i++)
    FUZZ_CHECK(p.items[i].path == NULL || strcmp(p.items[i].path, "/url") == 0,
               "bad path \"%s\"", p.items[i].path);
  def_problems_clear(&p);
  free(mem);
  return 0;
}

#ifndef FUZZ_NO_MAIN
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fuzz_template_one(data, size);
}
#endif
