/*
 * test_template.c — ${...} templates (engine/spec/template.c): rendering of
 * every value type, whole-string vs interpolated, missing values, syntax
 * errors, lazy parsing of referenced documents, and template_check.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec/template.h"

/* Step outputs served by a counting callback. */
typedef struct outputs {
  const char *names[4];
  const char *json[4];
  int calls[4];
  int unknown_calls;
  char last_unknown[64];
} outputs;

static const char *step_output(void *ud, const char *name) {
  outputs *o = ud;
  for (int i = 0; i < 4 && o->names[i] != NULL; i++)
    if (strcmp(o->names[i], name) == 0) {
      o->calls[i]++;
      return o->json[i];
    }
  o->unknown_calls++;
  snprintf(o->last_unknown, sizeof(o->last_unknown), "%s", name);
  return NULL;
}

static outputs outs;
static template_ctx ctx;

static void setup(void) {
  memset(&outs, 0, sizeof(outs));
  outs.names[0] = "flight";
  outs.json[0] = "{\"id\":\"F1\",\"seats\":[{\"no\":\"12A\"},{\"no\":\"12B\"}],"
                 "\"price\":199.5,\"ok\":true,\"none\":null}";
  outs.names[1] = "hotel";
  outs.json[1] = "{\"id\":42}";
  outs.names[2] = "broken";
  outs.json[2] = "{not json";
  outs.names[3] = "a.b";
  outs.json[3] = "[10,20]";
  ctx = (template_ctx){
      .saga_id = "0b0e7d56-0000-4000-8000-000000000001",
      .attempt = 3,
      .input_json = "{\"from\":\"OSL\",\"n\":7,\"f\":-1.25,\"yes\":false,"
                    "\"nil\":null,\"obj\":{\"k\":[1,\"two\",{\"x\":3}]},"
                    "\"arr\":[[\"a\"]],\"7\":\"seven\"}",
      .step_output = step_output,
      .ud = &outs,
  };
}

TestSuite(template, .init = setup);

/* Renders and compares; returns nothing, asserts. */
static void expect(const char *tmpl, const char *want) {
  char *out = NULL;
  sk_error err;
  int rc = template_render(tmpl, &ctx, &out, &err);
  cr_assert_eq(rc, SK_OK, "render %s: %d %s", tmpl, rc, err.message);
  cr_assert_str_eq(out, want, "render %s", tmpl);
  free(out);
}

static void expect_error(const char *tmpl, int code, const char *in_message) {
  char *out = (char *)"sentinel";
  sk_error err;
  int rc = template_render(tmpl, &ctx, &out, &err);
  cr_assert_eq(rc, code, "render %s: got %d", tmpl, rc);
  cr_assert_null(out);
  cr_assert_eq(err.code, code);
  if (in_message != NULL)
    cr_assert_not_null(strstr(err.message, in_message), "message: %s",
                       err.message);
}

Test(template, fast_path_copies_text_exactly) {
  const char *tmpl = "{ \"a\" : [1, 2.50, \"$\", \"{x}\"] ,\n\"b\":null }";
  expect(tmpl, tmpl);
  expect("  {}  ", "  {}  ");
  cr_assert_eq(outs.calls[0] + outs.calls[1] + outs.unknown_calls, 0);
}

Test(template, fast_path_does_not_parse_input) {
  ctx.input_json = "this is not JSON";
  expect("{\"a\":1}", "{\"a\":1}");
  expect("{\"a\":\"${saga.attempt}\"}", "{\"a\":3}");
}

Test(template, whole_string_keeps_json_type) {
  expect("{\"v\":\"${input.from}\"}", "{\"v\":\"OSL\"}");
  expect("{\"v\":\"${input.n}\"}", "{\"v\":7}");
  expect("{\"v\":\"${input.f}\"}", "{\"v\":-1.25}");
  expect("{\"v\":\"${input.yes}\"}", "{\"v\":false}");
  expect("{\"v\":\"${input.nil}\"}", "{\"v\":null}");
  expect("{\"v\":\"${input.obj}\"}", "{\"v\":{\"k\":[1,\"two\",{\"x\":3}]}}");
  expect("{\"v\":\"${input.arr}\"}", "{\"v\":[[\"a\"]]}");
  expect("\"${input}\"", "{\"from\":\"OSL\",\"n\":7,\"f\":-1.25,\"yes\":false,"
                         "\"nil\":null,\"obj\":{\"k\":[1,\"two\",{\"x\":3}]},"
                         "\"arr\":[[\"a\"]],\"7\":\"seven\"}");
}

Test(template, paths_with_array_indexes) {
  expect("[\"${input.obj.k.0}\",\"${input.obj.k.1}\",\"${input.obj.k.2.x}\"]",
         "[1,\"two\",3]");
  expect("\"${input.arr.0.0}\"", "\"a\"");
  expect("\"${steps.flight.output.seats.1.no}\"", "\"12B\"");
  /* Digits are object keys on objects. */
  expect("\"${input.7}\"", "\"seven\"");
}

Test(template, missing_values_are_null_or_empty) {
  expect("{\"a\":\"${input.nope}\",\"b\":\"${input.obj.k.9}\","
         "\"c\":\"${input.from.deeper}\",\"d\":\"${input.obj.k.x}\","
         "\"e\":\"${input.obj.k.-1}\",\"f\":\"${input.obj.k.99999999999}\"}",
         "{\"a\":null,\"b\":null,\"c\":null,\"d\":null,\"e\":null,\"f\":null}");
  expect("\"[${input.nope}]\"", "\"[]\"");
}

Test(template, interpolation_of_every_type) {
  expect("\"from ${input.from} to ${input.obj.k.1}\"", "\"from OSL to two\"");
  expect("\"n=${input.n} f=${input.f} y=${input.yes} z=${input.nil}\"",
         "\"n=7 f=-1.25 y=false z=null\"");
  expect("\"o=${input.obj}\"",
         "\"o={\\\"k\\\":[1,\\\"two\\\",{\\\"x\\\":3}]}\"");
  expect("\"${input.from}${input.from}\"", "\"OSLOSL\"");
  expect("\"${input.from}!\"", "\"OSL!\"");
  expect("\" ${input.n}\"", "\" 7\"");
}

Test(template, saga_fields) {
  expect("{\"id\":\"${saga.id}\",\"n\":\"${saga.attempt}\"}",
         "{\"id\":\"0b0e7d56-0000-4000-8000-000000000001\",\"n\":3}");
  expect("\"try ${saga.attempt} of ${saga.id}\"",
         "\"try 3 of 0b0e7d56-0000-4000-8000-000000000001\"");
  ctx.saga_id = NULL;
  expect("\"${saga.id}\"", "null");
}

Test(template, step_outputs) {
  expect("{\"f\":\"${steps.flight.output.id}\",\"p\":\"${steps.flight.output."
         "price}\",\"ok\":\"${steps.flight.output.ok}\",\"h\":\"${steps.hotel."
         "output}\",\"n\":\"${steps.flight.output.none}\"}",
         "{\"f\":\"F1\",\"p\":199.5,\"ok\":true,\"h\":{\"id\":42},\"n\":null}");
  expect("\"/hotels/${steps.hotel.output.id}\"", "\"/hotels/42\"");
  /* Step names may contain dots; the name ends at ".output". */
  expect("\"${steps.a.b.output.1}\"", "20");
  cr_assert_eq(outs.calls[3], 1);
}

Test(template, unknown_step_is_missing) {
  expect(
      "{\"x\":\"${steps.ghost.output.id}\",\"y\":\"<${steps.ghost.output}>\"}",
      "{\"x\":null,\"y\":\"<>\"}");
  cr_assert_eq(outs.unknown_calls, 1); /* cached after the first look-up */
  cr_assert_str_eq(outs.last_unknown, "ghost");
}

Test(template, lazy_and_cached_step_outputs) {
  expect("[\"${steps.hotel.output.id}\",\"${steps.hotel.output}\","
         "\"x ${steps.hotel.output.id}\"]",
         "[42,{\"id\":42},\"x 42\"]");
  cr_assert_eq(outs.calls[1], 1); /* parsed once, however often used */
  cr_assert_eq(outs.calls[0], 0); /* never asked for unreferenced steps */
  cr_assert_eq(outs.calls[2], 0); /* broken output never touched */
  cr_assert_eq(outs.unknown_calls, 0);
}

Test(template, lazy_input) {
  ctx.input_json = "{broken";
  expect("{\"h\":\"${steps.hotel.output.id}\"}", "{\"h\":42}");
  expect_error("{\"f\":\"${input.from}\"}", SK_EJSON, "input");
}

Test(template, null_input_is_empty_object) {
  ctx.input_json = NULL;
  expect("[\"${input}\",\"${input.a}\",\"-${input.a}-\"]", "[{},null,\"--\"]");
}

Test(template, keys_are_not_templated) {
  expect("{\"${input.from}\":\"${input.n}\"}", "{\"${input.from}\":7}");
  expect("{\"${input.from}\":1}", "{\"${input.from}\":1}");
}

Test(template, nested_containers_are_walked) {
  expect("{\"a\":[{\"b\":[\"${input.n}\",{\"c\":\"${input.yes}\"}]}],"
         "\"d\":{\"e\":{\"f\":\"${input.from}\"}},\"g\":[1,true,null]}",
         "{\"a\":[{\"b\":[7,{\"c\":false}]}],\"d\":{\"e\":{\"f\":\"OSL\"}},"
         "\"g\":[1,true,null]}");
}

Test(template, lone_dollar_and_braces_are_text) {
  expect("[\"$\",\"{x}\",\"$ {input.n}\",\"cost: $5 ${input.n}\"]",
         "[\"$\",\"{x}\",\"$ {input.n}\",\"cost: $5 7\"]");
}

Test(template, syntax_errors) {
  expect_error("{\"a\":\"${input.from\"}", SK_EINVAL, "missing closing");
  expect_error("{\"a\":\"x ${input.n} ${\"}", SK_EINVAL, "missing closing");
  expect_error("\"${}\"", SK_EINVAL, "empty reference");
  expect_error("\"${foo.bar}\"", SK_EINVAL, "unknown root");
  expect_error("\"${saga}\"", SK_EINVAL, "saga has only");
  expect_error("\"${saga.idx}\"", SK_EINVAL, "saga has only");
  expect_error("\"${steps.flight}\"", SK_EINVAL, "steps.NAME.output");
  expect_error("\"${steps.output}\"", SK_EINVAL, "steps.NAME.output");
  expect_error("\"${input..a}\"", SK_EINVAL, "empty path segment");
  expect_error("\"${input.}\"", SK_EINVAL, "empty path segment");
  expect_error("\"${input.a b}\"", SK_EINVAL, "invalid character");
  expect_error("\"${input.${input.a}}\"", SK_EINVAL, "invalid character");
}

Test(template, invalid_documents) {
  expect_error("{\"a\":\"${input.n}\"", SK_EJSON, "template");
  expect_error("\"${steps.broken.output.x}\"", SK_EJSON, "broken");
  /* Too deep: the limit applies to every parsed document. */
  char deep[2 * SK_JSON_DEPTH_MAX + 16];
  size_t n = 0;
  for (int i = 0; i < SK_JSON_DEPTH_MAX + 1; i++)
    deep[n++] = '[';
  for (int i = 0; i < SK_JSON_DEPTH_MAX + 1; i++)
    deep[n++] = ']';
  deep[n] = '\0';
  ctx.input_json = deep;
  expect_error("\"${input}\"", SK_EJSON, "input");
  cr_assert_eq(template_render(NULL, &ctx, &(char *){NULL}, NULL), SK_EINVAL);
}

Test(template, depth_at_the_limit_is_fine) {
  char doc[2 * SK_JSON_DEPTH_MAX + 1];
  for (int i = 0; i < SK_JSON_DEPTH_MAX; i++) {
    doc[i] = '[';
    doc[2 * SK_JSON_DEPTH_MAX - 1 - i] = ']';
  }
  doc[2 * SK_JSON_DEPTH_MAX] = '\0';
  ctx.input_json = doc;
  char *out = NULL;
  cr_assert_eq(template_render("\"${input}\"", &ctx, &out, NULL), SK_OK);
  cr_assert_str_eq(out, doc);
  free(out);
}

/* ---- template_check ------------------------------------------------------ */

static const char *const known[] = {"flight", "a.b"};

Test(template, check_accepts_good_templates) {
  def_problems p;
  def_problems_init(&p);
  cr_assert_eq(template_check("{\"a\":\"${input.x}\",\"b\":[\"${saga.id} "
                              "${saga.attempt}\"],\"c\":\"${steps.flight."
                              "output.id}\",\"d\":\"${steps.a.b.output}\","
                              "\"${bad key}\":1}",
                              known, 2, "/steps/1/input", &p),
               0);
  cr_assert_eq(template_check("[1, 2, {\"plain\": true}]", NULL, 0, "/x", &p),
               0);
  cr_assert_eq(p.n, 0);
  def_problems_clear(&p);
}

Test(template, check_reports_each_problem_with_pointer) {
  def_problems p;
  def_problems_init(&p);
  int n = template_check(
      "{\"a\":\"${steps.hotel.output}\",\"b\":[\"ok\",\"${nope}\"],"
      "\"c/d~e\":\"${input.x\",\"e\":\"${steps.flight.output} "
      "${saga.when} ${steps.later.output.x}\"}",
      known, 2, "/steps/1/input", &p);
  cr_assert_eq(n, 5);
  cr_assert_eq(p.n, 5);
  cr_assert_str_eq(p.items[0].path, "/steps/1/input/a");
  cr_assert_str_eq(p.items[0].message,
                   "template \"${steps.hotel.output}\" refers to step "
                   "\"hotel\", which does not precede it");
  cr_assert_str_eq(p.items[1].path, "/steps/1/input/b/1");
  cr_assert_str_eq(p.items[2].path, "/steps/1/input/c~1d~0e");
  cr_assert_not_null(strstr(p.items[2].message, "missing closing"));
  cr_assert_str_eq(p.items[3].path, "/steps/1/input/e");
  cr_assert_not_null(strstr(p.items[3].message, "saga has only"));
  cr_assert_str_eq(p.items[4].path, "/steps/1/input/e");
  cr_assert_not_null(strstr(p.items[4].message, "\"later\""));
  def_problems_clear(&p);
}

Test(template, check_invalid_json_is_one_problem) {
  def_problems p;
  def_problems_init(&p);
  cr_assert_eq(template_check("{\"a\":", known, 2, "/steps/0/input", &p), 1);
  cr_assert_eq(template_check(NULL, known, 2, "/q", &p), 1);
  cr_assert_eq(p.n, 2);
  cr_assert_str_eq(p.items[0].path, "/steps/0/input");
  cr_assert_str_eq(p.items[0].message, "must be valid JSON");
  def_problems_clear(&p);
}

Test(template, check_string) {
  def_problems p;
  def_problems_init(&p);
  cr_assert_eq(template_check_string("http://h/${steps.flight.output.id}/x",
                                     known, 2, "/u", &p),
               0);
  cr_assert_eq(template_check_string("http://h/${steps.x.output}/${input.a",
                                     known, 2, "/u", &p),
               2);
  cr_assert_eq(template_check_string("no templates {} $", NULL, 0, "/u", &p),
               0);
  cr_assert_eq(p.n, 2);
  cr_assert_str_eq(p.items[0].path, "/u");
  def_problems_clear(&p);
}
