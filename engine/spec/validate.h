/*
 * validate.h — the one semantic validator of workflow definitions.
 *
 * Both the SDK builder and the JSON spec parser (spec_json.c) run every
 * definition through def_validate before it is registered. The rules and
 * limits it enforces are listed at the top of validate.c.
 *
 * Thread: any; pure.
 */
#ifndef SKALD_SPEC_VALIDATE_H
#define SKALD_SPEC_VALIDATE_H

#include "spec/def.h"
#include "spec/problems.h"

/* Checks wf against the rules of workflow-spec.md and adds one problem per
 * violation to p, each with the JSON Pointer the field would have in a JSON
 * spec ("/steps/2/retry/max_attempts", "/steps/4/parallel/0/1/name", ...).
 * Never stops at the first problem. Returns the number of problems added
 * (0 = valid). wf is borrowed. */
int def_validate(const def_workflow *wf, def_problems *p);

#endif /* SKALD_SPEC_VALIDATE_H */
