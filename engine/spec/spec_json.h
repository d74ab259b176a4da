/*
 * spec_json.h — JSON workflow specs (workflow-spec.md) to and from the
 * definition model (def.h).
 *
 * Thread: any; pure.
 */
#ifndef SKALD_SPEC_SPEC_JSON_H
#define SKALD_SPEC_SPEC_JSON_H

#include <stdbool.h>
#include <stddef.h>

#include "spec/def.h"
#include "spec/problems.h"

/* Parses the JSON spec json[0..len) (need not be NUL-terminated), checks
 * its shape (types, unknown, duplicate and missing fields, one kind per
 * step, nesting depth ≤ SK_JSON_DEPTH_MAX), builds the definition and runs
 * def_validate on it. Every problem is added to p (may be NULL) with its
 * JSON Pointer. On SK_OK, *out owns a new definition (refs = 1); otherwise
 * *out is NULL. Errors: SK_EINVALSPEC (problems found), SK_EJSON (not JSON
 * at all: one problem at path "" saying where parsing failed), SK_ETOOBIG
 * (len > SK_PAYLOAD_MAX; one problem at ""), SK_EINVAL (NULL json or out),
 * SK_ENOMEM. */
int spec_parse(const char *json, size_t len, def_workflow **out,
               def_problems *p);

/* The canonical spec of wf as compact JSON (*out, malloc'd): a fixed key
 * order, only the fields that are set (defaults omitted), JSON-valued
 * fields re-serialised compactly. Equal definitions give byte-equal text,
 * and spec_parse(spec_to_json(wf)) gives an equal definition. Errors:
 * SK_EINVAL (NULL), SK_EJSON (a JSON-valued field of wf is not JSON),
 * SK_ENOMEM. */
int spec_to_json(const def_workflow *wf, char **out);

/* True if a and b have the same canonical JSON (false on OOM or if either
 * cannot be serialised; two NULLs are equal). */
bool def_equal(const def_workflow *a, const def_workflow *b);

#endif /* SKALD_SPEC_SPEC_JSON_H */
