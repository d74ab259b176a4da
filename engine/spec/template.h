/*
 * template.h — ${...} templates in JSON inputs (workflow-spec.md).
 *
 *   ${input.a.b}              a value of the saga input
 *   ${steps.NAME.output.a.b}  a value of a preceding step's output
 *   ${saga.id}                the saga id (string)
 *   ${saga.attempt}           the 1-based attempt of the step being run
 *
 * A JSON string that is exactly one template is replaced by the referenced
 * value with its JSON type; a template inside a longer string is
 * interpolated as text (strings as-is, other values as compact JSON). A
 * reference to a missing value renders as null (whole string) or as the
 * empty string (interpolated). Path segments are object keys or array
 * indexes ("items.0.id"). Object keys of the template are not templated.
 *
 * Thread: any; pure.
 */
#ifndef SKALD_SPEC_TEMPLATE_H
#define SKALD_SPEC_TEMPLATE_H

#include <stddef.h>

#include "common/err.h"
#include "spec/problems.h"

typedef struct template_ctx {
  const char *saga_id;
  int attempt;
  const char *input_json;      /* the saga input, JSON text (NULL = {}) */
  /* The output (JSON text) of a completed step, or NULL if it has none /
   * is unknown. Called only for steps the template refers to. */
  const char *(*step_output)(void *ud, const char *step_name);
  void *ud;
} template_ctx;

/* Renders template JSON text into compact JSON text (*out, malloc'd).
 * Text without "${" is copied unchanged. Errors: SK_EJSON (template or a
 * referenced document is not valid JSON), SK_EINVAL (bad template syntax),
 * SK_ENOMEM. */
int template_render(const char *tmpl_json, const template_ctx *ctx,
                    char **out, sk_error *err);

/* Checks every ${...} in the JSON text `tmpl_json`: syntax, root (input,
 * steps, saga), saga fields (id, attempt), and that each steps.NAME is one
 * of known_steps[0..n_known). Problems are added under `path` (the JSON
 * Pointer of the template field). Returns the number of problems added.
 * Invalid JSON is one problem. */
int template_check(const char *tmpl_json, const char *const *known_steps,
                   size_t n_known, const char *path, def_problems *p);

/* Same check for a plain string that may contain templates (an http url). */
int template_check_string(const char *s, const char *const *known_steps,
                          size_t n_known, const char *path, def_problems *p);

#endif /* SKALD_SPEC_TEMPLATE_H */
