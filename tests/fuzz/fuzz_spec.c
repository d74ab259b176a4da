/*
 * fuzz_spec.c — libFuzzer target for the JSON workflow spec parser
 * (spec_parse), the canonical writer (spec_to_json, def_equal) and the
 * validator (def_validate).
 *
 * Invariants checked on every input (the bytes are the spec text):
 *   - spec_parse never crashes, leaks or reads out of bounds (ASan/UBSan);
 *   - on success: *out is set, no problems were added, def_validate adds
 *     none, a clone is def_equal, the canonical text re-parses to an equal
 *     definition and is a fixed point (canonical(parse(canonical)) is
 *     byte-identical);
 *   - on failure: *out is NULL, at least one problem was added, every
 *     problem has a message and a path that is a valid JSON Pointer
 *     (RFC 6901: "" or "/..." with "~" only as "~0" / "~1"), and the
 *     problem list serialises to valid JSON.
 *
 * Thread: the fuzzer's only thread.
 */
#include "fuzz_entry.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <string.h>

#include "spec/spec_json.h"
#include "spec/validate.h"

static bool json_pointer_valid(const char *p) {
  if (p == NULL)
    return false;
  if (p[0] == '\0')
    return true;
  if (p[0] != '/')
    return false;
  for (const char *s = p; *s; s++)
    if (*s == '~' && s[1] != '0' && s[1] != '1')
      return false;
  return true;
}

static void check_round_trip(const def_workflow *wf) {
  def_problems p;
  def_problems_init(&p);
  int n = def_validate(wf, &p);
  FUZZ_CHECK(n == 0 && p.n == 0,
             "def_validate found %d problems in a parsed spec (first %s: %s)",
             n, p.n ? p.items[0].path : "-", p.n ? p.items[0].message : "-");
  def_problems_clear(&p);

  def_workflow *copy = def_workflow_clone(wf);
  if (copy != NULL) { /* NULL only on OOM */
    FUZZ_CHECK(def_equal(wf, copy), "a clone is not def_equal");
    def_workflow_unref(copy);
  }

  char *j1 = NULL, *j2 = NULL;
  int rc = spec_to_json(wf, &j1);
  FUZZ_CHECK(rc == SK_OK && j1 != NULL, "spec_to_json failed: %d", rc);
  def_workflow *wf2 = NULL;
  def_problems_init(&p);
  rc = spec_parse(j1, strlen(j1), &wf2, &p);
  FUZZ_CHECK(rc == SK_OK && wf2 != NULL,
             "canonical text does not parse (rc %d, %s: %s): %s", rc,
             p.n ? p.items[0].path : "-", p.n ? p.items[0].message : "-", j1);
  def_problems_clear(&p);
  FUZZ_CHECK(def_equal(wf, wf2), "re-parsed canonical text differs: %s", j1);
  rc = spec_to_json(wf2, &j2);
  FUZZ_CHECK(rc == SK_OK && j2 != NULL, "spec_to_json failed: %d", rc);
  FUZZ_CHECK(strcmp(j1, j2) == 0,
             "canonical text is not a fixed point:\n%s\n%s", j1, j2);
  free(j1);
  free(j2);
  def_workflow_unref(wf2);
}

static void check_problems(int rc, const def_problems *p) {
  FUZZ_CHECK(p->n > 0 || p->oom, "spec_parse failed (%d) with no problem", rc);
  FUZZ_CHECK(FUZZ_KEPT(p) > 0 || p->oom, "%zu problems, none kept", p->n);
  for (size_t i = 0; i < FUZZ_KEPT(p); i++) {
    if (p->oom && p->items[i].message == NULL)
      continue; /* a slot lost to OOM */
    FUZZ_CHECK(json_pointer_valid(p->items[i].path),
               "problem %zu has an invalid JSON Pointer \"%s\" (%s)", i,
               p->items[i].path ? p->items[i].path : "(null)",
               p->items[i].message ? p->items[i].message : "(null)");
    FUZZ_CHECK(p->items[i].message != NULL && p->items[i].message[0] != '\0',
               "problem %zu at \"%s\" has no message", i, p->items[i].path);
  }
  char *json = def_problems_to_json(p);
  if (json != NULL) { /* NULL only on OOM */
    cJSON *j = cJSON_Parse(json);
    FUZZ_CHECK(cJSON_IsArray(j), "problems are not a JSON array: %s", json);
    cJSON_Delete(j);
    free(json);
  }
}

int fuzz_spec_one(const uint8_t *data, size_t size) {
  /* A copy of exactly size bytes, so ASan sees any read past the end:
   * spec_parse must not need a NUL terminator. */
  char *text = malloc(size ? size : 1);
  if (text == NULL)
    return 0;
  if (size)
    memcpy(text, data, size);
  def_workflow *wf = (def_workflow *)1; /* must be overwritten */
  def_problems p;
  def_problems_init(&p);
  int rc = spec_parse(text, size, &wf, &p);
  if (rc == SK_OK) {
    FUZZ_CHECK(wf != NULL, "spec_parse succeeded without a definition");
    FUZZ_CHECK(p.n == 0, "spec_parse succeeded with %zu problems (%s: %s)",
               p.n, p.items[0].path, p.items[0].message);
    check_round_trip(wf);
    def_workflow_unref(wf);
  } else {
    FUZZ_CHECK(wf == NULL, "spec_parse failed (%d) but set *out", rc);
    if (rc != SK_ENOMEM)
      check_problems(rc, &p);
  }
  def_problems_clear(&p);
  free(text);
  return 0;
}

#ifndef FUZZ_NO_MAIN
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fuzz_spec_one(data, size);
}
#endif
