/*
 * validate.c — the one semantic validator of workflow definitions (see
 * validate.h). The SDK builder and the JSON spec parser both call it; the
 * parser checks JSON shapes and types first, this checks meaning.
 *
 * Rules and documented limits (paths are JSON Pointers into the spec):
 *   workflow  name matches [a-z0-9_.-]{1,128}; version is an integer in
 *             1..2147483647; description is at most 4096 bytes; on_failure
 *             is "compensate" (default) or "pause"; timeout_ms is an integer
 *             ≥ 0 (0 or absent = no deadline); defaults.timeout_ms ≥ 1;
 *             defaults.retry is a valid retry policy.
 *   steps     1..SK_STEPS_MAX (256) steps, every nested step and every
 *             parallel group counted; every step name matches the name
 *             pattern and is unique across the whole workflow, nested
 *             branches included (the later duplicate is reported).
 *   kinds     exactly one of task, http, sleep, parallel per step:
 *             task     the task type matches the name pattern;
 *             http     method is GET, POST, PUT, PATCH, DELETE or HEAD; url
 *                      starts with http:// or https:// (templates allowed);
 *                      headers is an object of string values; body is any
 *                      JSON (templated); success_codes are integers in
 *                      100..599 (absent = any 2xx);
 *             sleep    ms is an integer in 0..31536000000 (one year);
 *             parallel at least 1 branch, each of at least 1 step, checked
 *                      recursively; parallel groups nest at most 4 deep.
 *   actions   compensate and fallback have exactly one of task or http and
 *             optional input, retry, timeout_ms; a fallback may also have
 *             on_breaker_open (bool) and its own compensate. Sleep and
 *             parallel steps cannot have compensate or fallback.
 *   retry     max_attempts ≥ 1; initial_interval_ms ≥ 0;
 *             backoff_coefficient ≥ 1; max_interval_ms ≥ 0 and
 *             ≥ initial_interval_ms when both are given in the same object;
 *             jitter in [0, 1]; non_retryable_errors are non-empty strings of
 *             at most 128 bytes.
 *   other     timeout_ms of steps and actions ≥ 1; bulkhead matches the name
 *             pattern; resources.gpus in 0..64, resources.gpu_memory_mb ≥ 0;
 *             compensate_on_failure requires a compensate.
 *   templates input, http url/headers/body of steps, compensations and
 *             fallbacks: valid ${...} syntax (template.h), and
 *             ${steps.NAME...} only for steps that precede: the earlier
 *             top-level steps (with everything nested in them) and, inside a
 *             parallel branch, the earlier steps of the same branch. A
 *             compensation (and a fallback's compensation) may also refer
 *             to its own step.
 * The JSON parser adds: unknown fields, wrong types, missing required
 * fields, integers beyond ±2^53 or their field's C type, nesting deeper than
 * SK_JSON_DEPTH_MAX, and specs over SK_PAYLOAD_MAX bytes.
 *
 * Invariants: never stops at the first problem; never modifies wf.
 * Thread: any; pure.
 */
#include "spec/validate.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "spec/template.h"

#define DESCRIPTION_MAX 4096
#define SLEEP_MS_MAX INT64_C(31536000000)
#define GPUS_MAX 64
#define PARALLEL_DEPTH_MAX 4
#define ERROR_TYPE_MAX 128

#define NAME_RULE                                                              \
  "must be 1 to 128 characters from a-z, 0-9, \"_\", \".\" and \"-\""

typedef struct vctx {
  def_problems *p;
  int added;
  buf path;
  /* Step names templates may refer to at the current point. */
  const char **visible;
  size_t n_visible, cap_visible;
  /* Every step name seen so far (open addressing), for uniqueness. */
  const char **seen;
  size_t cap_seen;
  size_t n_total;
} vctx;

/* ---- paths and problems -------------------------------------------------- */

/* Appends a JSON Pointer segment (RFC 6901: ~ → ~0, / → ~1). */
static size_t push(vctx *v, const char *seg) {
  size_t mark = v->path.len;
  buf_putc(&v->path, '/');
  for (; *seg; seg++) {
    if (*seg == '~')
      buf_puts(&v->path, "~0");
    else if (*seg == '/')
      buf_puts(&v->path, "~1");
    else
      buf_putc(&v->path, *seg);
  }
  return mark;
}

static size_t push_index(vctx *v, size_t i) {
  size_t mark = v->path.len;
  buf_printf(&v->path, "/%zu", i);
  return mark;
}

static void pop(vctx *v, size_t mark) {
  v->path.len = mark;
  if (v->path.data != NULL)
    v->path.data[mark] = '\0';
}

static const char *here(const vctx *v) {
  return v->path.data != NULL ? v->path.data : "";
}

/* A problem at the current path, or at its child `field` if not NULL. */
static void problem(vctx *v, const char *field, const char *fmt, ...)
    SK_PRINTF(3, 4);
static void problem(vctx *v, const char *field, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  size_t mark = field != NULL ? push(v, field) : v->path.len;
  def_problems_add(v->p, here(v), "%s", msg);
  v->added++;
  pop(v, mark);
}

/* ---- name sets ----------------------------------------------------------- */

static bool visible_push(vctx *v, const char *name) {
  if (name == NULL)
    return true;
  if (v->n_visible == v->cap_visible) {
    size_t cap = v->cap_visible ? v->cap_visible * 2 : 16;
    const char **n = realloc(v->visible, cap * sizeof(*n));
    if (n == NULL)
      return false;
    v->visible = n;
    v->cap_visible = cap;
  }
  v->visible[v->n_visible++] = name;
  return true;
}

static size_t hash(const char *s) {
  size_t h = 1469598103934665603u;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211u;
  return h;
}

static void seen_insert(const char **tab, size_t cap, const char *name) {
  size_t i = hash(name) & (cap - 1);
  while (tab[i] != NULL)
    i = (i + 1) & (cap - 1);
  tab[i] = name;
}

/* Adds name to the seen set; false if it was there already. OOM is treated
 * as "not a duplicate" and flagged on the problem list. */
static bool seen_add(vctx *v, const char *name) {
  if (v->cap_seen == 0 || v->n_total * 2 >= v->cap_seen) {
    size_t cap = v->cap_seen ? v->cap_seen * 2 : 64;
    const char **tab = calloc(cap, sizeof(*tab));
    if (tab == NULL) {
      v->p->oom = true;
      return true;
    }
    for (size_t i = 0; i < v->cap_seen; i++)
      if (v->seen[i] != NULL)
        seen_insert(tab, cap, v->seen[i]);
    free(v->seen);
    v->seen = tab;
    v->cap_seen = cap;
  }
  for (size_t i = hash(name) & (v->cap_seen - 1); v->seen[i] != NULL;
       i = (i + 1) & (v->cap_seen - 1))
    if (strcmp(v->seen[i], name) == 0)
      return false;
  seen_insert(v->seen, v->cap_seen, name);
  return true;
}

/* ---- leaves -------------------------------------------------------------- */

static void check_templates(vctx *v, const char *field, const char *json) {
  if (json == NULL)
    return;
  size_t mark = push(v, field);
  v->added += template_check(json, v->visible, v->n_visible, here(v), v->p);
  pop(v, mark);
}

static void validate_retry(vctx *v, const def_retry *r, const char *field) {
  size_t mark = push(v, field);
  if ((r->set & DEF_RETRY_MAX_ATTEMPTS) && r->max_attempts < 1)
    problem(v, "max_attempts", "must be at least 1");
  if ((r->set & DEF_RETRY_INITIAL) && r->initial_interval_ms < 0)
    problem(v, "initial_interval_ms", "must be at least 0");
  if ((r->set & DEF_RETRY_COEFFICIENT) &&
      !(isfinite(r->backoff_coefficient) && r->backoff_coefficient >= 1.0))
    problem(v, "backoff_coefficient", "must be at least 1");
  if ((r->set & DEF_RETRY_MAX_INTERVAL) && r->max_interval_ms < 0)
    problem(v, "max_interval_ms", "must be at least 0");
  else if ((r->set & DEF_RETRY_MAX_INTERVAL) && (r->set & DEF_RETRY_INITIAL) &&
           r->max_interval_ms < r->initial_interval_ms)
    problem(v, "max_interval_ms", "must be at least initial_interval_ms");
  if ((r->set & DEF_RETRY_JITTER) && !(r->jitter >= 0.0 && r->jitter <= 1.0))
    problem(v, "jitter", "must be between 0 and 1");
  size_t m2 = push(v, "non_retryable_errors");
  for (size_t i = 0; i < r->n_non_retryable; i++) {
    const char *e = r->non_retryable_errors[i];
    size_t m3 = push_index(v, i);
    if (e == NULL || e[0] == '\0')
      problem(v, NULL, "must not be empty");
    else if (strlen(e) > ERROR_TYPE_MAX)
      problem(v, NULL, "must be at most %d bytes", ERROR_TYPE_MAX);
    pop(v, m3);
  }
  pop(v, m2);
  pop(v, mark);
}

static void validate_headers(vctx *v, const char *json) {
  cJSON *h = cJSON_Parse(json);
  size_t mark = push(v, "headers");
  if (!cJSON_IsObject(h)) {
    problem(v, NULL, "must be an object");
  } else {
    for (const cJSON *c = h->child; c != NULL; c = c->next)
      if (!cJSON_IsString(c)) {
        problem(v, c->string, "must be a string");
      }
  }
  pop(v, mark);
  cJSON_Delete(h);
  check_templates(v, "headers", json);
}

static bool method_valid(const char *m) {
  static const char *const methods[] = {"GET",   "POST",   "PUT",
                                        "PATCH", "DELETE", "HEAD"};
  for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
    if (strcmp(m, methods[i]) == 0)
      return true;
  return false;
}

static void validate_http(vctx *v, const def_http *h) {
  size_t mark = push(v, "http");
  if (h->method == NULL)
    problem(v, "method", "is required");
  else if (!method_valid(h->method))
    problem(v, "method",
            "must be one of GET, POST, PUT, PATCH, DELETE or HEAD");
  if (h->url == NULL) {
    problem(v, "url", "is required");
  } else {
    if (strncmp(h->url, "http://", 7) != 0 &&
        strncmp(h->url, "https://", 8) != 0)
      problem(v, "url", "must start with http:// or https://");
    size_t m2 = push(v, "url");
    v->added +=
        template_check_string(h->url, v->visible, v->n_visible, here(v), v->p);
    pop(v, m2);
  }
  if (h->headers_json != NULL)
    validate_headers(v, h->headers_json);
  check_templates(v, "body", h->body_json);
  size_t m3 = push(v, "success_codes");
  for (size_t i = 0; i < h->n_success_codes; i++)
    if (h->success_codes[i] < 100 || h->success_codes[i] > 599) {
      size_t m4 = push_index(v, i);
      problem(v, NULL, "must be between 100 and 599");
      pop(v, m4);
    }
  pop(v, m3);
  pop(v, mark);
}

/* input, retry and timeout_ms: the same on steps and actions. */
static void validate_common(vctx *v, const def_action *a) {
  check_templates(v, "input", a->input_json);
  if (a->has_retry)
    validate_retry(v, &a->retry, "retry");
  if (a->timeout_ms < 0)
    problem(v, "timeout_ms", "must be at least 1");
}

/* A compensation or fallback at the child `field` of the current path.
 * self: the step's own name, visible to compensations only (or NULL). */
static void validate_action(vctx *v, const def_action *a, const char *field,
                            const char *self) {
  size_t mark = push(v, field);
  size_t vis = v->n_visible;
  if (!visible_push(v, self))
    v->p->oom = true;
  if (a->kind == DEF_KIND_TASK && a->task_type == NULL)
    problem(v, NULL, "must have one of task or http");
  else if (a->kind == DEF_KIND_TASK && !def_name_valid(a->task_type))
    problem(v, "task", NAME_RULE);
  else if (a->kind == DEF_KIND_HTTP)
    validate_http(v, &a->http);
  else if (a->kind != DEF_KIND_TASK)
    problem(v, NULL, "must be a task or http action, not %s",
            def_kind_name(a->kind));
  validate_common(v, a);
  v->n_visible = vis;
  pop(v, mark);
}

/* ---- steps --------------------------------------------------------------- */

static void validate_list(vctx *v, const def_step *steps, size_t n, int depth);

static void add_names(vctx *v, const def_step *s) {
  for (size_t b = 0; b < s->n_branches; b++)
    for (size_t j = 0; j < s->branches[b].n_steps; j++) {
      const def_step *c = &s->branches[b].steps[j];
      if (!visible_push(v, c->name))
        v->p->oom = true;
      add_names(v, c);
    }
}

static void validate_parallel(vctx *v, const def_step *s, int depth) {
  size_t mark = push(v, "parallel");
  if (depth + 1 > PARALLEL_DEPTH_MAX)
    problem(v, NULL, "must not nest parallel groups more than %d levels deep",
            PARALLEL_DEPTH_MAX);
  if (s->n_branches == 0)
    problem(v, NULL, "must have at least 1 branch");
  size_t base = v->n_visible;
  for (size_t b = 0; b < s->n_branches; b++) {
    size_t m2 = push_index(v, b);
    if (s->branches[b].n_steps == 0)
      problem(v, NULL, "must have at least 1 step");
    /* Each branch sees what precedes the group plus its own earlier steps. */
    v->n_visible = base;
    validate_list(v, s->branches[b].steps, s->branches[b].n_steps, depth + 1);
    pop(v, m2);
  }
  v->n_visible = base;
  pop(v, mark);
}

static void validate_kind(vctx *v, const def_step *s, int depth) {
  const def_action *a = &s->action;
  switch (a->kind) {
  case DEF_KIND_TASK:
    if (a->task_type == NULL)
      problem(v, NULL, "must have one of task, http, sleep or parallel");
    else if (!def_name_valid(a->task_type))
      problem(v, "task", NAME_RULE);
    break;
  case DEF_KIND_HTTP:
    validate_http(v, &a->http);
    break;
  case DEF_KIND_SLEEP:
    if (a->sleep_ms < 0 || a->sleep_ms > SLEEP_MS_MAX) {
      size_t mark = push(v, "sleep");
      problem(v, "ms", "must be between 0 and %lld", (long long)SLEEP_MS_MAX);
      pop(v, mark);
    }
    break;
  case DEF_KIND_PARALLEL:
    validate_parallel(v, s, depth);
    break;
  default:
    problem(v, NULL, "has an unknown kind");
    break;
  }
}

static void validate_actions(vctx *v, const def_step *s) {
  bool no_undo =
      s->action.kind == DEF_KIND_SLEEP || s->action.kind == DEF_KIND_PARALLEL;
  const char *kind = def_kind_name(s->action.kind);
  if (s->compensate != NULL && no_undo)
    problem(v, "compensate", "is not allowed on a %s step", kind);
  else if (s->compensate != NULL)
    validate_action(v, s->compensate, "compensate", s->name);
  if (s->fallback != NULL && no_undo) {
    problem(v, "fallback", "is not allowed on a %s step", kind);
  } else if (s->fallback != NULL) {
    validate_action(v, s->fallback, "fallback", NULL);
    if (s->fallback_compensate != NULL) {
      size_t mark = push(v, "fallback");
      validate_action(v, s->fallback_compensate, "compensate", s->name);
      pop(v, mark);
    }
  } else if (s->fallback_compensate != NULL || s->fallback_on_breaker_open) {
    problem(v, "fallback", "is required by on_breaker_open and compensate");
  }
  if (s->compensate_on_failure && s->compensate == NULL)
    problem(v, "compensate_on_failure", "requires compensate");
}

static void validate_step(vctx *v, const def_step *s, int depth) {
  v->n_total++;
  if (s->name == NULL)
    problem(v, "name", "is required");
  else if (!def_name_valid(s->name))
    problem(v, "name", NAME_RULE);
  else if (!seen_add(v, s->name))
    problem(v, "name", "duplicate step name \"%s\"", s->name);
  validate_kind(v, s, depth);
  validate_common(v, &s->action);
  if (s->bulkhead != NULL && !def_name_valid(s->bulkhead))
    problem(v, "bulkhead", NAME_RULE);
  if (s->gpus < 0 || s->gpus > GPUS_MAX || s->gpu_memory_mb < 0) {
    size_t mark = push(v, "resources");
    if (s->gpus < 0 || s->gpus > GPUS_MAX)
      problem(v, "gpus", "must be between 0 and %d", GPUS_MAX);
    if (s->gpu_memory_mb < 0)
      problem(v, "gpu_memory_mb", "must be at least 0");
    pop(v, mark);
  }
  validate_actions(v, s);
}

/* Steps of one list (top level or a branch) at the current path, which
 * names the list: "/steps" or ".../parallel/B". */
static void validate_list(vctx *v, const def_step *steps, size_t n, int depth) {
  for (size_t i = 0; i < n; i++) {
    size_t mark = push_index(v, i);
    validate_step(v, &steps[i], depth);
    pop(v, mark);
    /* Later steps may refer to this one and to all it nests. */
    add_names(v, &steps[i]);
    if (!visible_push(v, steps[i].name))
      v->p->oom = true;
  }
}

static void validate_workflow(vctx *v, const def_workflow *wf) {
  if (wf->name == NULL)
    problem(v, "name", "is required");
  else if (!def_name_valid(wf->name))
    problem(v, "name", NAME_RULE);
  if (wf->version < 1)
    problem(v, "version", "must be at least 1");
  if (wf->description != NULL && strlen(wf->description) > DESCRIPTION_MAX)
    problem(v, "description", "must be at most %d bytes", DESCRIPTION_MAX);
  if (wf->on_failure != DEF_ON_FAILURE_COMPENSATE &&
      wf->on_failure != DEF_ON_FAILURE_PAUSE)
    problem(v, "on_failure", "must be \"compensate\" or \"pause\"");
  if (wf->timeout_ms < 0)
    problem(v, "timeout_ms", "must be at least 0");
  size_t mark = push(v, "defaults");
  if (wf->default_timeout_ms < 0)
    problem(v, "timeout_ms", "must be at least 1");
  if (wf->has_default_retry)
    validate_retry(v, &wf->default_retry, "retry");
  pop(v, mark);
  if (wf->n_steps == 0)
    problem(v, "steps", "must have at least 1 step");
  mark = push(v, "steps");
  validate_list(v, wf->steps, wf->n_steps, 0);
  pop(v, mark);
  if (v->n_total > SK_STEPS_MAX)
    problem(v, "steps",
            "must have at most %d steps, nested steps included (has %zu)",
            SK_STEPS_MAX, v->n_total);
}

int def_validate(const def_workflow *wf, def_problems *p) {
  if (wf == NULL) {
    def_problems_add(p, "", "definition is missing");
    return 1;
  }
  vctx v = {.p = p, .path = BUF_INIT};
  buf_puts(&v.path, ""); /* path "" is the whole document */
  validate_workflow(&v, wf);
  if (!buf_ok(&v.path))
    p->oom = true;
  buf_free(&v.path);
  free(v.visible);
  free(v.seen);
  return v.added;
}
