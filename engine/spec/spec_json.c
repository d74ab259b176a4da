/*
 * spec_json.c — JSON workflow specs to and from def_workflow (see
 * spec_json.h).
 *
 * Parsing runs in three passes: (1) cheap checks on the raw text (size, NUL
 * bytes, nesting depth, found by a scan so deep input never reaches the
 * recursive parser); (2) a walk of the cJSON tree that checks shapes and
 * types and builds the definition; (3) def_validate for meaning. cJSON stays
 * inside this file: the tree is freed before spec_parse returns.
 *
 * Passes 2 and 3 must not report one mistake twice. Where pass 2 could not
 * build a value it "poisons" its path: validator problems at a poisoned path
 * (or below a poisoned subtree, for a container of the wrong type) are
 * dropped, because the shape problem already says what is wrong there.
 *
 * Canonical output: keys in a fixed order (the order of workflow-spec.md),
 * only fields that are set, numbers printed so they read back equal, and
 * JSON-valued fields re-serialised compactly.
 *
 * Thread: any; pure. The one exception is cJSON itself: every cJSON parse
 * resets cJSON's process-wide error pointer, a benign race that TSan reports.
 */
#include "spec/spec_json.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "spec/validate.h"

#define SAFE_INT INT64_C(9007199254740991) /* 2^53 - 1 */

typedef struct pctx {
  def_problems *p;
  int added;
  buf path;
  size_t obj_len; /* path length of the object whose members are walked */
  char **poison;  /* "X" poisons X; "X/" poisons X and everything below */
  size_t n_poison, cap_poison;
  bool oom;
} pctx;

/* ---- paths, problems, poison --------------------------------------------- */

static size_t push_key(pctx *c, const char *key) {
  size_t mark = c->path.len;
  buf_putc(&c->path, '/');
  for (; *key; key++) {
    if (*key == '~')
      buf_puts(&c->path, "~0");
    else if (*key == '/')
      buf_puts(&c->path, "~1");
    else
      buf_putc(&c->path, *key);
  }
  return mark;
}

static size_t push_index(pctx *c, size_t i) {
  size_t mark = c->path.len;
  buf_printf(&c->path, "/%zu", i);
  return mark;
}

static void pop(pctx *c, size_t mark) {
  c->path.len = mark;
  if (c->path.data != NULL)
    c->path.data[mark] = '\0';
}

static void poison_n(pctx *c, size_t len, bool subtree) {
  if (c->n_poison == c->cap_poison) {
    size_t cap = c->cap_poison ? c->cap_poison * 2 : 16;
    char **n = realloc(c->poison, cap * sizeof(*n));
    if (n == NULL) {
      c->oom = true;
      return;
    }
    c->poison = n;
    c->cap_poison = cap;
  }
  char *s = malloc(len + 2);
  if (s == NULL) {
    c->oom = true;
    return;
  }
  memcpy(s, c->path.data != NULL ? c->path.data : "", len);
  s[len] = '/';
  s[len + (subtree ? 1 : 0)] = '\0';
  c->poison[c->n_poison++] = s;
}

/* A problem at the current path, which is then poisoned (the subtree too if
 * `subtree`). */
static void problem(pctx *c, bool subtree, const char *fmt, ...)
    SK_PRINTF(3, 4);
static void problem(pctx *c, bool subtree, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  def_problems_add(c->p, c->path.data != NULL ? c->path.data : "", "%s", msg);
  c->added++;
  poison_n(c, c->path.len, subtree);
}

static bool poisoned(const pctx *c, const char *path) {
  size_t n = strlen(path);
  for (size_t i = 0; i < c->n_poison; i++) {
    const char *q = c->poison[i];
    size_t m = strlen(q);
    if (m > 0 && q[m - 1] == '/') {
      if ((n == m - 1 && memcmp(path, q, n) == 0) ||
          (n >= m && memcmp(path, q, m) == 0))
        return true;
    } else if (n == m && memcmp(path, q, n) == 0) {
      return true;
    }
  }
  return false;
}

/* ---- typed values (each at the current path) ----------------------------- */

static char *want_string(pctx *c, const cJSON *v) {
  if (!cJSON_IsString(v)) {
    problem(c, false, "must be a string");
    return NULL;
  }
  char *s = strdup(v->valuestring);
  if (s == NULL)
    c->oom = true;
  return s;
}

static bool want_int(pctx *c, const cJSON *v, int64_t lo, int64_t hi,
                     int64_t *out) {
  double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
  if (!isfinite(d) || d != floor(d)) {
    problem(c, false, "must be an integer");
    return false;
  }
  if (d < (double)lo || d > (double)hi) {
    /* Only ranges with a real upper limit read as "between". */
    bool open_top = hi == SAFE_INT || hi == INT32_MAX;
    if (!open_top)
      problem(c, false, "must be between %lld and %lld", (long long)lo,
              (long long)hi);
    else if (d < (double)lo)
      problem(c, false, "must be at least %lld", (long long)lo);
    else
      problem(c, false, "must be at most %lld", (long long)hi);
    return false;
  }
  *out = (int64_t)d;
  return true;
}

static bool want_number(pctx *c, const cJSON *v, double *out) {
  if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
    problem(c, false, "must be a number");
    return false;
  }
  *out = v->valuedouble;
  return true;
}

static bool want_bool(pctx *c, const cJSON *v, bool *out) {
  if (!cJSON_IsBool(v)) {
    problem(c, false, "must be a boolean");
    return false;
  }
  *out = cJSON_IsTrue(v);
  return true;
}

static char *want_json(pctx *c, const cJSON *v) {
  char *s = cJSON_PrintUnformatted(v);
  if (s == NULL)
    c->oom = true;
  return s;
}

/* ---- objects ------------------------------------------------------------- */

typedef void (*member_fn)(pctx *c, int key, const cJSON *v, void *target);

/* Walks the members of obj (at the current path): unknown and duplicate
 * keys are problems, known ones go to fn with the path at the member.
 * Members named in `required` (bits of key indexes) must be present.
 * Returns the bits of the keys seen, or 0 if obj is not an object. */
static unsigned members(pctx *c, const cJSON *obj, const char *const *keys,
                        int n_keys, unsigned required, member_fn fn,
                        void *target) {
  if (!cJSON_IsObject(obj)) {
    problem(c, true, "must be an object");
    return 0;
  }
  size_t saved = c->obj_len;
  unsigned seen = 0;
  for (const cJSON *m = obj->child; m != NULL; m = m->next) {
    size_t mark = push_key(c, m->string != NULL ? m->string : "");
    int k = 0;
    while (k < n_keys && strcmp(keys[k], m->string) != 0)
      k++;
    if (k == n_keys) {
      problem(c, false, "unknown field \"%.100s\"", m->string);
    } else if (seen & (1u << k)) {
      problem(c, false, "duplicate field \"%s\"", keys[k]);
    } else {
      seen |= 1u << k;
      c->obj_len = mark;
      fn(c, k, m, target);
      c->obj_len = saved;
    }
    pop(c, mark);
  }
  for (int k = 0; k < n_keys; k++)
    if ((required & (1u << k)) && !(seen & (1u << k))) {
      size_t mark = push_key(c, keys[k]);
      problem(c, false, "is required");
      pop(c, mark);
    }
  return seen;
}

/* Poisons the object being walked (not its subtree): used when the member
 * that gives a step or action its kind cannot be read. */
static void poison_object(pctx *c) { poison_n(c, c->obj_len, false); }

/* ---- retry --------------------------------------------------------------- */

static const char *const retry_keys[] = {"max_attempts",
                                         "initial_interval_ms",
                                         "backoff_coefficient",
                                         "max_interval_ms",
                                         "jitter",
                                         "non_retryable_errors"};

static void parse_error_list(pctx *c, const cJSON *v, def_retry *r) {
  if (!cJSON_IsArray(v)) {
    problem(c, true, "must be an array");
    return;
  }
  size_t n = (size_t)cJSON_GetArraySize(v), i = 0;
  r->non_retryable_errors = calloc(n ? n : 1, sizeof(char *));
  if (r->non_retryable_errors == NULL) {
    c->oom = true;
    return;
  }
  for (const cJSON *e = v->child; e != NULL; e = e->next, i++) {
    size_t mark = push_index(c, i);
    r->non_retryable_errors[i] = want_string(c, e);
    pop(c, mark);
  }
  r->n_non_retryable = i;
  r->set |= DEF_RETRY_NON_RETRYABLE;
}

static void retry_member(pctx *c, int key, const cJSON *v, void *target) {
  def_retry *r = target;
  int64_t i;
  double d;
  switch (key) {
  case 0:
    if (want_int(c, v, 1, INT32_MAX, &i))
      r->max_attempts = (int)i, r->set |= DEF_RETRY_MAX_ATTEMPTS;
    break;
  case 1:
    if (want_int(c, v, 0, SAFE_INT, &i))
      r->initial_interval_ms = i, r->set |= DEF_RETRY_INITIAL;
    break;
  case 2:
    if (want_number(c, v, &d))
      r->backoff_coefficient = d, r->set |= DEF_RETRY_COEFFICIENT;
    break;
  case 3:
    if (want_int(c, v, 0, SAFE_INT, &i))
      r->max_interval_ms = i, r->set |= DEF_RETRY_MAX_INTERVAL;
    break;
  case 4:
    if (want_number(c, v, &d))
      r->jitter = d, r->set |= DEF_RETRY_JITTER;
    break;
  default:
    parse_error_list(c, v, r);
    break;
  }
}

static void parse_retry(pctx *c, const cJSON *v, def_retry *r, bool *has) {
  *has = cJSON_IsObject(v);
  members(c, v, retry_keys, 6, 0, retry_member, r);
}

/* ---- http, sleep, resources ---------------------------------------------- */

static const char *const http_keys[] = {"method", "url", "headers", "body",
                                        "success_codes"};

static void parse_headers(pctx *c, const cJSON *v, def_http *h) {
  if (!cJSON_IsObject(v)) {
    problem(c, true, "must be an object");
    return;
  }
  bool ok = true;
  for (const cJSON *m = v->child; m != NULL; m = m->next)
    if (!cJSON_IsString(m)) {
      size_t mark = push_key(c, m->string);
      problem(c, false, "must be a string");
      pop(c, mark);
      ok = false;
    }
  if (ok)
    h->headers_json = want_json(c, v);
}

static void parse_codes(pctx *c, const cJSON *v, def_http *h) {
  if (!cJSON_IsArray(v)) {
    problem(c, true, "must be an array");
    return;
  }
  size_t n = (size_t)cJSON_GetArraySize(v), i = 0;
  h->success_codes = calloc(n ? n : 1, sizeof(int));
  if (h->success_codes == NULL) {
    c->oom = true;
    return;
  }
  for (const cJSON *e = v->child; e != NULL; e = e->next, i++) {
    size_t mark = push_index(c, i);
    int64_t code = 0;
    if (want_int(c, e, 100, 599, &code))
      h->success_codes[i] = (int)code;
    pop(c, mark);
  }
  h->n_success_codes = i;
}

static void http_member(pctx *c, int key, const cJSON *v, void *target) {
  def_http *h = target;
  switch (key) {
  case 0:
    h->method = want_string(c, v);
    break;
  case 1:
    h->url = want_string(c, v);
    break;
  case 2:
    parse_headers(c, v, h);
    break;
  case 3:
    h->body_json = want_json(c, v);
    break;
  default:
    parse_codes(c, v, h);
    break;
  }
}

static void parse_http(pctx *c, const cJSON *v, def_action *a) {
  a->kind = DEF_KIND_HTTP;
  members(c, v, http_keys, 5, 0x3, http_member, &a->http);
}

static const char *const sleep_keys[] = {"ms"};

static void sleep_member(pctx *c, int key, const cJSON *v, void *target) {
  int64_t ms;
  if (want_int(c, v, 0, INT64_C(31536000000), &ms))
    ((def_action *)target)->sleep_ms = ms;
}

static const char *const resource_keys[] = {"gpus", "gpu_memory_mb"};

static void resource_member(pctx *c, int key, const cJSON *v, void *target) {
  def_step *s = target;
  int64_t i;
  if (key == 0 && want_int(c, v, 0, 64, &i))
    s->gpus = (int)i;
  else if (key == 1 && want_int(c, v, 0, SAFE_INT, &i))
    s->gpu_memory_mb = i;
}

/* ---- compensations and fallbacks ----------------------------------------- */

enum { A_TASK, A_HTTP, A_INPUT, A_RETRY, A_TIMEOUT, A_BREAKER, A_COMPENSATE };
static const char *const action_keys[] = {
    "task",      "http", "input", "retry", "timeout_ms", "on_breaker_open",
    "compensate"};

typedef struct action_target {
  def_action *a;
  def_step *s; /* fallbacks only: on_breaker_open, compensate */
  int n_kinds;
} action_target;

static def_action *parse_action(pctx *c, const cJSON *v, def_step *fb_of);

static void action_member(pctx *c, int key, const cJSON *v, void *target) {
  action_target *t = target;
  def_action *a = t->a;
  int64_t ms;
  if ((key == A_TASK || key == A_HTTP) && t->n_kinds++ > 0)
    return; /* reported once the walk is over */
  switch (key) {
  case A_TASK:
    a->kind = DEF_KIND_TASK;
    a->task_type = want_string(c, v);
    if (a->task_type == NULL)
      poison_object(c);
    break;
  case A_HTTP:
    parse_http(c, v, a);
    break;
  case A_INPUT:
    a->input_json = want_json(c, v);
    break;
  case A_RETRY:
    parse_retry(c, v, &a->retry, &a->has_retry);
    break;
  case A_TIMEOUT:
    if (want_int(c, v, 1, SAFE_INT, &ms))
      a->timeout_ms = ms;
    break;
  case A_BREAKER:
    want_bool(c, v, &t->s->fallback_on_breaker_open);
    break;
  default:
    t->s->fallback_compensate = parse_action(c, v, NULL);
    break;
  }
}

/* A compensation, or (fb_of != NULL) the fallback of step fb_of. */
static def_action *parse_action(pctx *c, const cJSON *v, def_step *fb_of) {
  def_action *a = calloc(1, sizeof(*a));
  if (a == NULL) {
    c->oom = true;
    return NULL;
  }
  action_target t = {a, fb_of, 0};
  int n_keys = fb_of != NULL ? 7 : 5;
  if (members(c, v, action_keys, n_keys, 0, action_member, &t) == 0 &&
      !cJSON_IsObject(v))
    return a;
  if (t.n_kinds == 0)
    problem(c, false, "must have one of task or http");
  else if (t.n_kinds > 1)
    problem(c, false, "must have only one of task or http");
  return a;
}

/* ---- steps --------------------------------------------------------------- */

enum {
  S_NAME,
  S_TASK,
  S_HTTP,
  S_SLEEP,
  S_PARALLEL,
  S_INPUT,
  S_COMPENSATE,
  S_FALLBACK,
  S_RETRY,
  S_TIMEOUT,
  S_BULKHEAD,
  S_RESOURCES,
  S_COMP_ON_FAIL
};
static const char *const step_keys[] = {"name",
                                        "task",
                                        "http",
                                        "sleep",
                                        "parallel",
                                        "input",
                                        "compensate",
                                        "fallback",
                                        "retry",
                                        "timeout_ms",
                                        "bulkhead",
                                        "resources",
                                        "compensate_on_failure"};

typedef struct step_target {
  def_step *s;
  int n_kinds;
} step_target;

static void parse_steps(pctx *c, const cJSON *v, def_step **steps, size_t *n);

/* How many entries of a list of steps or branches to build. A 1 MiB spec
 * could hold ~300k empty steps, so lists past the limit are a problem and
 * only the first SK_STEPS_MAX + 1 entries are built (enough for the
 * validator to see the total is too large). */
static size_t list_cap(pctx *c, const cJSON *v, const char *what) {
  size_t n = (size_t)cJSON_GetArraySize(v);
  if (n <= SK_STEPS_MAX)
    return n;
  problem(c, false, "must have at most %d %s", SK_STEPS_MAX, what);
  return SK_STEPS_MAX + 1;
}

static void parse_parallel(pctx *c, const cJSON *v, def_step *s) {
  s->action.kind = DEF_KIND_PARALLEL;
  if (!cJSON_IsArray(v)) {
    problem(c, true, "must be an array");
    return;
  }
  size_t n = list_cap(c, v, "branches"), b = 0;
  s->branches = calloc(n ? n : 1, sizeof(*s->branches));
  if (s->branches == NULL) {
    c->oom = true;
    return;
  }
  for (const cJSON *e = v->child; e != NULL && b < n; e = e->next, b++) {
    size_t mark = push_index(c, b);
    s->n_branches = b + 1;
    parse_steps(c, e, &s->branches[b].steps, &s->branches[b].n_steps);
    pop(c, mark);
  }
}

static void step_kind(pctx *c, int key, const cJSON *v, def_step *s) {
  def_action *a = &s->action;
  switch (key) {
  case S_TASK:
    a->kind = DEF_KIND_TASK;
    a->task_type = want_string(c, v);
    if (a->task_type == NULL)
      poison_object(c);
    break;
  case S_HTTP:
    parse_http(c, v, a);
    break;
  case S_SLEEP:
    a->kind = DEF_KIND_SLEEP;
    members(c, v, sleep_keys, 1, 1, sleep_member, a);
    break;
  default:
    parse_parallel(c, v, s);
    break;
  }
}

static void step_member(pctx *c, int key, const cJSON *v, void *target) {
  step_target *t = target;
  def_step *s = t->s;
  int64_t ms;
  if (key >= S_TASK && key <= S_PARALLEL) {
    if (t->n_kinds++ == 0)
      step_kind(c, key, v, s);
    return;
  }
  switch (key) {
  case S_NAME:
    s->name = want_string(c, v);
    break;
  case S_INPUT:
    s->action.input_json = want_json(c, v);
    break;
  case S_COMPENSATE:
    s->compensate = parse_action(c, v, NULL);
    break;
  case S_FALLBACK:
    s->fallback = parse_action(c, v, s);
    break;
  case S_RETRY:
    parse_retry(c, v, &s->action.retry, &s->action.has_retry);
    break;
  case S_TIMEOUT:
    if (want_int(c, v, 1, SAFE_INT, &ms))
      s->action.timeout_ms = ms;
    break;
  case S_BULKHEAD:
    s->bulkhead = want_string(c, v);
    break;
  case S_RESOURCES:
    members(c, v, resource_keys, 2, 0, resource_member, s);
    break;
  default:
    want_bool(c, v, &s->compensate_on_failure);
    break;
  }
}

static void parse_step(pctx *c, const cJSON *v, def_step *s) {
  step_target t = {s, 0};
  if (members(c, v, step_keys, 13, 1u << S_NAME, step_member, &t) == 0 &&
      !cJSON_IsObject(v))
    return;
  if (t.n_kinds == 0)
    problem(c, false, "must have one of task, http, sleep or parallel");
  else if (t.n_kinds > 1)
    problem(c, false, "must have only one of task, http, sleep or parallel");
}

/* A list of steps (top level or one branch); entries that are not objects
 * stay as empty steps so that indexes (and paths) line up. */
static void parse_steps(pctx *c, const cJSON *v, def_step **steps, size_t *n) {
  if (!cJSON_IsArray(v)) {
    problem(c, true, "must be an array");
    return;
  }
  size_t count = list_cap(c, v, "steps"), i = 0;
  *steps = calloc(count ? count : 1, sizeof(def_step));
  if (*steps == NULL) {
    c->oom = true;
    return;
  }
  for (const cJSON *e = v->child; e != NULL && i < count; e = e->next, i++) {
    size_t mark = push_index(c, i);
    *n = i + 1;
    parse_step(c, e, &(*steps)[i]);
    pop(c, mark);
  }
}

/* ---- workflow ------------------------------------------------------------ */

static const char *const defaults_keys[] = {"timeout_ms", "retry"};

static void defaults_member(pctx *c, int key, const cJSON *v, void *target) {
  def_workflow *wf = target;
  int64_t ms;
  if (key == 0 && want_int(c, v, 1, SAFE_INT, &ms))
    wf->default_timeout_ms = ms;
  else if (key == 1)
    parse_retry(c, v, &wf->default_retry, &wf->has_default_retry);
}

enum {
  W_NAME,
  W_VERSION,
  W_DESCRIPTION,
  W_ON_FAILURE,
  W_TIMEOUT,
  W_DEFAULTS,
  W_STEPS
};
static const char *const workflow_keys[] = {
    "name",       "version",  "description", "on_failure",
    "timeout_ms", "defaults", "steps"};

static void workflow_member(pctx *c, int key, const cJSON *v, void *target) {
  def_workflow *wf = target;
  int64_t i;
  switch (key) {
  case W_NAME:
    wf->name = want_string(c, v);
    break;
  case W_VERSION:
    if (want_int(c, v, 1, INT32_MAX, &i))
      wf->version = (int)i;
    break;
  case W_DESCRIPTION:
    wf->description = want_string(c, v);
    break;
  case W_ON_FAILURE:
    if (cJSON_IsString(v) && strcmp(v->valuestring, "pause") == 0)
      wf->on_failure = DEF_ON_FAILURE_PAUSE;
    else if (!cJSON_IsString(v) || strcmp(v->valuestring, "compensate") != 0)
      problem(c, false, "must be \"compensate\" or \"pause\"");
    break;
  case W_TIMEOUT:
    if (want_int(c, v, 0, SAFE_INT, &i))
      wf->timeout_ms = i;
    break;
  case W_DEFAULTS:
    members(c, v, defaults_keys, 2, 0, defaults_member, wf);
    break;
  default:
    parse_steps(c, v, &wf->steps, &wf->n_steps);
    break;
  }
}

/* ---- raw text checks ----------------------------------------------------- */

/* Nesting depth of JSON text by a scan (strings skipped), so that deep
 * input is refused before anything recursive sees it. */
static int text_depth(const char *s, size_t n) {
  int depth = 0, max = 0;
  bool in_str = false;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (in_str) {
      if (ch == '\\')
        i++;
      else if (ch == '"')
        in_str = false;
    } else if (ch == '"') {
      in_str = true;
    } else if (ch == '[' || ch == '{') {
      if (++depth > max)
        max = depth;
    } else if ((ch == ']' || ch == '}') && depth > 0) {
      depth--;
    }
  }
  return max;
}

static int syntax_error(def_problems *p, const char *json, size_t len,
                        size_t at, const char *what) {
  size_t line = 1, col = 1;
  for (size_t i = 0; i < at && i < len; i++, col++)
    if (json[i] == '\n')
      line++, col = 0;
  def_problems_add(p, "", "%s at line %zu, column %zu (byte %zu)", what, line,
                   col, at);
  return SK_EJSON;
}

/* Parses the text into a tree; SK_OK or the error (with its problem). */
static int parse_text(const char *json, size_t len, def_problems *p,
                      cJSON **root) {
  *root = NULL;
  if (len > SK_PAYLOAD_MAX) {
    def_problems_add(p, "", "spec is too large (%zu bytes; the limit is %d)",
                     len, SK_PAYLOAD_MAX);
    return SK_ETOOBIG;
  }
  const char *nul = memchr(json, '\0', len);
  if (nul != NULL)
    return syntax_error(p, json, len, (size_t)(nul - json),
                        "could not parse JSON: NUL byte");
  if (text_depth(json, len) > SK_JSON_DEPTH_MAX) {
    def_problems_add(p, "", "must not nest deeper than %d levels",
                     SK_JSON_DEPTH_MAX);
    return SK_EINVALSPEC;
  }
  const char *end = NULL;
  *root = cJSON_ParseWithLengthOpts(json, len, &end, false);
  size_t at = end != NULL && end >= json ? (size_t)(end - json) : 0;
  if (*root == NULL)
    return syntax_error(p, json, len, at, "could not parse JSON");
  while (at < len && strchr(" \t\r\n", json[at]) != NULL)
    at++;
  if (at < len) {
    cJSON_Delete(*root);
    *root = NULL;
    return syntax_error(
        p, json, len, at,
        "could not parse JSON: unexpected text after the value");
  }
  return SK_OK;
}

/* Runs the validator and keeps its problems that shape checks did not
 * already cover. */
static void validate_unpoisoned(pctx *c, const def_workflow *wf) {
  def_problems vp;
  def_problems_init(&vp);
  def_validate(wf, &vp);
  size_t kept = vp.n < DEF_PROBLEMS_MAX ? vp.n : DEF_PROBLEMS_MAX;
  for (size_t i = 0; i < kept && i < vp.cap; i++) {
    const def_problem *it = &vp.items[i];
    if (it->path == NULL || it->message == NULL || poisoned(c, it->path))
      continue;
    def_problems_add(c->p, it->path, "%s", it->message);
    c->added++;
  }
  if (vp.oom)
    c->oom = true;
  def_problems_clear(&vp);
}

int spec_parse(const char *json, size_t len, def_workflow **out,
               def_problems *p) {
  if (out == NULL)
    return SK_EINVAL;
  *out = NULL;
  if (json == NULL)
    return SK_EINVAL;
  def_problems own;
  def_problems_init(&own);
  pctx c = {.p = p != NULL ? p : &own, .path = BUF_INIT};
  cJSON *root = NULL;
  int rc = parse_text(json, len, c.p, &root);
  def_workflow *wf = rc == SK_OK ? def_workflow_new() : NULL;
  if (rc == SK_OK && wf == NULL)
    rc = SK_ENOMEM;
  if (rc == SK_OK) {
    buf_puts(&c.path, "");
    if (!cJSON_IsObject(root)) {
      problem(&c, true, "must be an object");
    } else {
      members(&c, root, workflow_keys, 7,
              (1u << W_NAME) | (1u << W_VERSION) | (1u << W_STEPS),
              workflow_member, wf);
      validate_unpoisoned(&c, wf);
    }
    if (c.oom || !buf_ok(&c.path) || c.p->oom)
      rc = SK_ENOMEM;
    else if (c.added > 0)
      rc = SK_EINVALSPEC;
  }
  cJSON_Delete(root);
  buf_free(&c.path);
  for (size_t i = 0; i < c.n_poison; i++)
    free(c.poison[i]);
  free(c.poison);
  def_problems_clear(&own);
  if (rc == SK_OK)
    *out = wf;
  else
    def_workflow_unref(wf);
  return rc;
}

/* ---- canonical output ------------------------------------------------- */

typedef struct emit {
  buf b;
  bool bad; /* a JSON-valued field is not JSON */
  bool first;
} emit;

static void key(emit *e, const char *k) {
  if (!e->first)
    buf_putc(&e->b, ',');
  e->first = false;
  buf_json_str(&e->b, k);
  buf_putc(&e->b, ':');
}

static void open_obj(emit *e) {
  buf_putc(&e->b, '{');
  e->first = true;
}

static void close_obj(emit *e) {
  buf_putc(&e->b, '}');
  e->first = false;
}

/* Members: each put_* writes "key":value, the optional ones only if set. */
static void put_int(emit *e, const char *k, int64_t v) {
  key(e, k);
  buf_printf(&e->b, "%lld", (long long)v);
}

static void put_nonzero(emit *e, const char *k, int64_t v) {
  if (v != 0)
    put_int(e, k, v);
}

static void put_str(emit *e, const char *k, const char *s) {
  if (s == NULL)
    return;
  key(e, k);
  buf_json_str(&e->b, s);
}

static void put_true(emit *e, const char *k, bool on) {
  if (on) {
    key(e, k);
    buf_puts(&e->b, "true");
  }
}

/* Shortest text that reads back as the same double. */
static void put_double(emit *e, const char *k, double d) {
  char tmp[64];
  snprintf(tmp, sizeof(tmp), "%.15g", d);
  if (strtod(tmp, NULL) != d)
    snprintf(tmp, sizeof(tmp), "%.17g", d);
  key(e, k);
  buf_puts(&e->b, tmp);
}

/* JSON-valued fields are re-serialised, so spacing never matters. */
static void put_json(emit *e, const char *k, const char *json) {
  if (json == NULL)
    return;
  cJSON *j = cJSON_Parse(json);
  char *s = j != NULL ? cJSON_PrintUnformatted(j) : NULL;
  key(e, k);
  buf_puts(&e->b, s != NULL ? s : "null");
  e->bad |= s == NULL;
  cJSON_free(s);
  cJSON_Delete(j);
}

static void put_retry(emit *e, const char *k, const def_retry *r) {
  key(e, k);
  open_obj(e);
  if (r->set & DEF_RETRY_MAX_ATTEMPTS)
    put_int(e, "max_attempts", r->max_attempts);
  if (r->set & DEF_RETRY_INITIAL)
    put_int(e, "initial_interval_ms", r->initial_interval_ms);
  if (r->set & DEF_RETRY_COEFFICIENT)
    put_double(e, "backoff_coefficient", r->backoff_coefficient);
  if (r->set & DEF_RETRY_MAX_INTERVAL)
    put_int(e, "max_interval_ms", r->max_interval_ms);
  if (r->set & DEF_RETRY_JITTER)
    put_double(e, "jitter", r->jitter);
  if (r->set & DEF_RETRY_NON_RETRYABLE) {
    key(e, "non_retryable_errors");
    buf_putc(&e->b, '[');
    for (size_t i = 0; i < r->n_non_retryable; i++) {
      const char *t = r->non_retryable_errors[i];
      if (i > 0)
        buf_putc(&e->b, ',');
      buf_json_str(&e->b, t != NULL ? t : "");
    }
    buf_putc(&e->b, ']');
  }
  close_obj(e);
}

static void put_http(emit *e, const def_http *h) {
  key(e, "http");
  open_obj(e);
  put_str(e, "method", h->method);
  put_str(e, "url", h->url);
  put_json(e, "headers", h->headers_json);
  put_json(e, "body", h->body_json);
  if (h->success_codes != NULL) {
    key(e, "success_codes");
    buf_putc(&e->b, '[');
    for (size_t i = 0; i < h->n_success_codes; i++)
      buf_printf(&e->b, "%s%d", i > 0 ? "," : "", h->success_codes[i]);
    buf_putc(&e->b, ']');
  }
  close_obj(e);
}

static void put_steps(emit *e, const def_step *steps, size_t n);

/* The kind member of a step or action: task, http, sleep or parallel. */
static void put_kind(emit *e, const def_step *s, const def_action *a) {
  switch (a->kind) {
  case DEF_KIND_TASK:
    put_str(e, "task", a->task_type);
    break;
  case DEF_KIND_HTTP:
    put_http(e, &a->http);
    break;
  case DEF_KIND_SLEEP:
    key(e, "sleep");
    buf_printf(&e->b, "{\"ms\":%lld}", (long long)a->sleep_ms);
    break;
  case DEF_KIND_PARALLEL:
    key(e, "parallel");
    buf_putc(&e->b, '[');
    for (size_t b = 0; s != NULL && b < s->n_branches; b++) {
      if (b > 0)
        buf_putc(&e->b, ',');
      put_steps(e, s->branches[b].steps, s->branches[b].n_steps);
    }
    buf_putc(&e->b, ']');
    break;
  }
}

/* A compensation, or (fb_of != NULL) the fallback of step fb_of. */
static void put_action(emit *e, const char *k, const def_action *a,
                       const def_step *fb_of) {
  key(e, k);
  open_obj(e);
  put_kind(e, NULL, a);
  put_json(e, "input", a->input_json);
  if (a->has_retry)
    put_retry(e, "retry", &a->retry);
  put_nonzero(e, "timeout_ms", a->timeout_ms);
  if (fb_of != NULL) {
    put_true(e, "on_breaker_open", fb_of->fallback_on_breaker_open);
    if (fb_of->fallback_compensate != NULL)
      put_action(e, "compensate", fb_of->fallback_compensate, NULL);
  }
  close_obj(e);
}

static void put_step(emit *e, const def_step *s) {
  open_obj(e);
  put_str(e, "name", s->name);
  put_kind(e, s, &s->action);
  put_json(e, "input", s->action.input_json);
  if (s->compensate != NULL)
    put_action(e, "compensate", s->compensate, NULL);
  if (s->fallback != NULL)
    put_action(e, "fallback", s->fallback, s);
  if (s->action.has_retry)
    put_retry(e, "retry", &s->action.retry);
  put_nonzero(e, "timeout_ms", s->action.timeout_ms);
  put_str(e, "bulkhead", s->bulkhead);
  if (s->gpus != 0 || s->gpu_memory_mb != 0) {
    key(e, "resources");
    open_obj(e);
    put_nonzero(e, "gpus", s->gpus);
    put_nonzero(e, "gpu_memory_mb", s->gpu_memory_mb);
    close_obj(e);
  }
  put_true(e, "compensate_on_failure", s->compensate_on_failure);
  close_obj(e);
}

static void put_steps(emit *e, const def_step *steps, size_t n) {
  buf_putc(&e->b, '[');
  for (size_t i = 0; i < n; i++) {
    if (i > 0)
      buf_putc(&e->b, ',');
    put_step(e, &steps[i]);
  }
  buf_putc(&e->b, ']');
}

static void put_workflow(emit *e, const def_workflow *wf) {
  open_obj(e);
  put_str(e, "name", wf->name);
  put_int(e, "version", wf->version);
  put_str(e, "description", wf->description);
  if (wf->on_failure == DEF_ON_FAILURE_PAUSE)
    put_str(e, "on_failure", "pause");
  put_nonzero(e, "timeout_ms", wf->timeout_ms);
  if (wf->has_default_retry || wf->default_timeout_ms != 0) {
    key(e, "defaults");
    open_obj(e);
    put_nonzero(e, "timeout_ms", wf->default_timeout_ms);
    if (wf->has_default_retry)
      put_retry(e, "retry", &wf->default_retry);
    close_obj(e);
  }
  key(e, "steps");
  put_steps(e, wf->steps, wf->n_steps);
  close_obj(e);
}

int spec_to_json(const def_workflow *wf, char **out) {
  if (out == NULL)
    return SK_EINVAL;
  *out = NULL;
  if (wf == NULL)
    return SK_EINVAL;
  emit e = {.b = BUF_INIT};
  put_workflow(&e, wf);
  if (e.bad) {
    buf_free(&e.b);
    return SK_EJSON;
  }
  *out = buf_steal(&e.b);
  return *out != NULL ? SK_OK : SK_ENOMEM;
}

bool def_equal(const def_workflow *a, const def_workflow *b) {
  if (a == NULL || b == NULL)
    return a == b;
  char *ja = NULL, *jb = NULL;
  bool eq = spec_to_json(a, &ja) == SK_OK && spec_to_json(b, &jb) == SK_OK &&
            strcmp(ja, jb) == 0;
  free(ja);
  free(jb);
  return eq;
}
