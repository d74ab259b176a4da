/*
 * def.c — the workflow definition model (see def.h): lifetime (new, clone,
 * ref/unref, clear), look-ups and the effective policies the decider uses.
 *
 * Invariants: every string and array is owned by the struct that points to
 * it; a clone shares nothing with its source; a registered definition is
 * immutable, so the only shared mutable state is the atomic reference count.
 *
 * Effective retry policy (def_effective_retry), field by field:
 *   forward action: the step's own retry, then the workflow defaults, then
 *                   the DEF_DEFAULT_* built-ins;
 *   compensation:   the compensation's own retry, then the workflow defaults
 *                   — except max_attempts and max_interval_ms, which come
 *                   from the compensation's own retry or else the built-in
 *                   compensation policy (0 = unlimited attempts, capped at
 *                   DEF_DEFAULT_COMP_MAX_INTERVAL_MS), because a saga must
 *                   not stop halfway through undoing itself.
 *
 * Thread: any. Reference counting is atomic; everything else needs either
 * exclusive ownership (while building) or read-only sharing (registered).
 */
#include "spec/def.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"

static const char *const kind_names[] = {
#define DEF_KIND_STR(name, str) str,
    DEF_KIND_MAP(DEF_KIND_STR)
#undef DEF_KIND_STR
};

const char *def_kind_name(def_kind k) {
  if ((unsigned)k >= sizeof(kind_names) / sizeof(kind_names[0]))
    return "unknown";
  return kind_names[k];
}

/* ---- lifetime ------------------------------------------------------------ */

def_workflow *def_workflow_new(void) {
  def_workflow *wf = calloc(1, sizeof(*wf));
  if (wf == NULL)
    return NULL;
  atomic_init(&wf->refs, 1);
  wf->on_failure = DEF_ON_FAILURE_COMPENSATE;
  return wf;
}

def_workflow *def_workflow_ref(def_workflow *wf) {
  if (wf != NULL)
    atomic_fetch_add_explicit(&wf->refs, 1, memory_order_relaxed);
  return wf;
}

void def_retry_clear(def_retry *r) {
  if (r == NULL)
    return;
  for (size_t i = 0; i < r->n_non_retryable; i++)
    free(r->non_retryable_errors[i]);
  free(r->non_retryable_errors);
  memset(r, 0, sizeof(*r));
}

static void http_clear(def_http *h) {
  free(h->method);
  free(h->url);
  free(h->headers_json);
  free(h->body_json);
  free(h->success_codes);
  memset(h, 0, sizeof(*h));
}

void def_action_clear(def_action *a) {
  if (a == NULL)
    return;
  free(a->task_type);
  http_clear(&a->http);
  free(a->input_json);
  def_retry_clear(&a->retry);
  memset(a, 0, sizeof(*a));
}

static void action_free(def_action *a) {
  def_action_clear(a);
  free(a);
}

void def_step_clear(def_step *s) {
  if (s == NULL)
    return;
  free(s->name);
  def_action_clear(&s->action);
  action_free(s->compensate);
  action_free(s->fallback);
  action_free(s->fallback_compensate);
  free(s->bulkhead);
  for (size_t b = 0; b < s->n_branches; b++) {
    for (size_t j = 0; j < s->branches[b].n_steps; j++)
      def_step_clear(&s->branches[b].steps[j]);
    free(s->branches[b].steps);
  }
  free(s->branches);
  memset(s, 0, sizeof(*s));
}

static void workflow_free(def_workflow *wf) {
  free(wf->name);
  free(wf->description);
  def_retry_clear(&wf->default_retry);
  for (size_t i = 0; i < wf->n_steps; i++)
    def_step_clear(&wf->steps[i]);
  free(wf->steps);
  free(wf);
}

void def_workflow_unref(def_workflow *wf) {
  if (wf == NULL)
    return;
  /* acq_rel: the last owner must see every write made before the others
   * dropped their references. */
  if (atomic_fetch_sub_explicit(&wf->refs, 1, memory_order_acq_rel) == 1)
    workflow_free(wf);
}

/* ---- deep copy ------------------------------------------------------------
 * Copy helpers return false on OOM; the destination is then partly filled
 * and its owner's clear function releases whatever was copied. */

static bool dup_str(char **dst, const char *src) {
  *dst = NULL;
  if (src == NULL)
    return true;
  *dst = strdup(src);
  return *dst != NULL;
}

int def_retry_copy(def_retry *dst, const def_retry *src) {
  *dst = *src;
  dst->non_retryable_errors = NULL;
  dst->n_non_retryable = 0;
  if (src->n_non_retryable == 0)
    return SK_OK;
  dst->non_retryable_errors =
      calloc(src->n_non_retryable, sizeof(*dst->non_retryable_errors));
  if (dst->non_retryable_errors == NULL)
    return SK_ENOMEM;
  for (size_t i = 0; i < src->n_non_retryable; i++) {
    dst->n_non_retryable = i + 1;
    if (!dup_str(&dst->non_retryable_errors[i], src->non_retryable_errors[i]))
      return SK_ENOMEM;
  }
  return SK_OK;
}

static bool http_copy(def_http *dst, const def_http *src) {
  memset(dst, 0, sizeof(*dst));
  if (!dup_str(&dst->method, src->method) || !dup_str(&dst->url, src->url) ||
      !dup_str(&dst->headers_json, src->headers_json) ||
      !dup_str(&dst->body_json, src->body_json))
    return false;
  if (src->n_success_codes == 0)
    return true;
  dst->success_codes = malloc(src->n_success_codes * sizeof(int));
  if (dst->success_codes == NULL)
    return false;
  memcpy(dst->success_codes, src->success_codes,
         src->n_success_codes * sizeof(int));
  dst->n_success_codes = src->n_success_codes;
  return true;
}

static bool action_copy(def_action *dst, const def_action *src) {
  *dst = *src;
  dst->task_type = NULL;
  dst->input_json = NULL;
  memset(&dst->http, 0, sizeof(dst->http));
  memset(&dst->retry, 0, sizeof(dst->retry));
  return dup_str(&dst->task_type, src->task_type) &&
         dup_str(&dst->input_json, src->input_json) &&
         http_copy(&dst->http, &src->http) &&
         def_retry_copy(&dst->retry, &src->retry) == SK_OK;
}

static bool action_dup(def_action **dst, const def_action *src) {
  *dst = NULL;
  if (src == NULL)
    return true;
  *dst = calloc(1, sizeof(**dst));
  return *dst != NULL && action_copy(*dst, src);
}

static bool step_copy(def_step *dst, const def_step *src);

static bool branches_copy(def_step *dst, const def_step *src) {
  if (src->n_branches == 0)
    return true;
  dst->branches = calloc(src->n_branches, sizeof(*dst->branches));
  if (dst->branches == NULL)
    return false;
  for (size_t b = 0; b < src->n_branches; b++) {
    const def_branch *sb = &src->branches[b];
    dst->n_branches = b + 1;
    if (sb->n_steps == 0)
      continue;
    dst->branches[b].steps = calloc(sb->n_steps, sizeof(def_step));
    if (dst->branches[b].steps == NULL)
      return false;
    for (size_t j = 0; j < sb->n_steps; j++) {
      dst->branches[b].n_steps = j + 1;
      if (!step_copy(&dst->branches[b].steps[j], &sb->steps[j]))
        return false;
    }
  }
  return true;
}

static bool step_copy(def_step *dst, const def_step *src) {
  *dst = *src;
  dst->name = NULL;
  dst->bulkhead = NULL;
  dst->compensate = dst->fallback = dst->fallback_compensate = NULL;
  dst->branches = NULL;
  dst->n_branches = 0;
  memset(&dst->action, 0, sizeof(dst->action));
  return dup_str(&dst->name, src->name) &&
         dup_str(&dst->bulkhead, src->bulkhead) &&
         action_copy(&dst->action, &src->action) &&
         action_dup(&dst->compensate, src->compensate) &&
         action_dup(&dst->fallback, src->fallback) &&
         action_dup(&dst->fallback_compensate, src->fallback_compensate) &&
         branches_copy(dst, src);
}

static bool workflow_copy(def_workflow *dst, const def_workflow *src) {
  dst->version = src->version;
  dst->on_failure = src->on_failure;
  dst->timeout_ms = src->timeout_ms;
  dst->has_default_retry = src->has_default_retry;
  dst->default_timeout_ms = src->default_timeout_ms;
  if (!dup_str(&dst->name, src->name) ||
      !dup_str(&dst->description, src->description) ||
      def_retry_copy(&dst->default_retry, &src->default_retry) != SK_OK)
    return false;
  if (src->n_steps == 0)
    return true;
  dst->steps = calloc(src->n_steps, sizeof(*dst->steps));
  if (dst->steps == NULL)
    return false;
  for (size_t i = 0; i < src->n_steps; i++) {
    dst->n_steps = i + 1;
    if (!step_copy(&dst->steps[i], &src->steps[i]))
      return false;
  }
  return true;
}

def_workflow *def_workflow_clone(const def_workflow *wf) {
  if (wf == NULL)
    return NULL;
  def_workflow *c = def_workflow_new();
  if (c == NULL)
    return NULL;
  if (!workflow_copy(c, wf)) {
    def_workflow_unref(c);
    return NULL;
  }
  return c;
}

/* ---- look-ups and effective policies ------------------------------------- */

int def_step_index(const def_workflow *wf, const char *name) {
  if (wf == NULL || name == NULL)
    return -1;
  for (size_t i = 0; i < wf->n_steps; i++)
    if (wf->steps[i].name != NULL && strcmp(wf->steps[i].name, name) == 0)
      return (int)i;
  return -1;
}

/* Copies into *out the fields of *from (if any) that *out does not have yet. */
static void retry_fill(def_retry *out, const def_retry *from, unsigned mask) {
  if (from == NULL)
    return;
  unsigned take = from->set & ~out->set & mask;
  if (take & DEF_RETRY_MAX_ATTEMPTS)
    out->max_attempts = from->max_attempts;
  if (take & DEF_RETRY_INITIAL)
    out->initial_interval_ms = from->initial_interval_ms;
  if (take & DEF_RETRY_COEFFICIENT)
    out->backoff_coefficient = from->backoff_coefficient;
  if (take & DEF_RETRY_MAX_INTERVAL)
    out->max_interval_ms = from->max_interval_ms;
  if (take & DEF_RETRY_JITTER)
    out->jitter = from->jitter;
  if (take & DEF_RETRY_NON_RETRYABLE) {
    out->non_retryable_errors = from->non_retryable_errors;
    out->n_non_retryable = from->n_non_retryable;
  }
  out->set |= take;
}

void def_effective_retry(const def_workflow *wf, const def_step *s,
                         bool is_comp, def_retry *out) {
  memset(out, 0, sizeof(*out));
  const def_action *a = is_comp ? s->compensate : &s->action;
  if (a != NULL && a->has_retry)
    retry_fill(out, &a->retry, ~0u);
  unsigned from_defaults = ~0u;
  if (is_comp)
    from_defaults &=
        ~(unsigned)(DEF_RETRY_MAX_ATTEMPTS | DEF_RETRY_MAX_INTERVAL);
  if (wf != NULL && wf->has_default_retry)
    retry_fill(out, &wf->default_retry, from_defaults);

  def_retry builtin = {
      .set = DEF_RETRY_MAX_ATTEMPTS | DEF_RETRY_INITIAL |
             DEF_RETRY_COEFFICIENT | DEF_RETRY_MAX_INTERVAL | DEF_RETRY_JITTER |
             DEF_RETRY_NON_RETRYABLE,
      .max_attempts = is_comp ? 0 : DEF_DEFAULT_MAX_ATTEMPTS,
      .initial_interval_ms = DEF_DEFAULT_INITIAL_INTERVAL_MS,
      .backoff_coefficient = DEF_DEFAULT_BACKOFF_COEFFICIENT,
      .max_interval_ms = is_comp ? DEF_DEFAULT_COMP_MAX_INTERVAL_MS
                                 : DEF_DEFAULT_MAX_INTERVAL_MS,
      .jitter = DEF_DEFAULT_JITTER,
  };
  retry_fill(out, &builtin, ~0u);
}

int64_t def_effective_timeout(const def_workflow *wf, const def_step *s,
                              bool is_comp) {
  const def_action *a = is_comp ? s->compensate : &s->action;
  if (a != NULL && a->timeout_ms > 0)
    return a->timeout_ms;
  if (wf != NULL && wf->default_timeout_ms > 0)
    return wf->default_timeout_ms;
  return DEF_DEFAULT_TIMEOUT_MS;
}

const char *def_step_bulkhead(const def_step *s) {
  return (s->bulkhead != NULL && s->bulkhead[0] != '\0') ? s->bulkhead
                                                         : "default";
}

bool def_retry_is_non_retryable(const def_retry *r, const char *type) {
  if (r == NULL || type == NULL)
    return false;
  for (size_t i = 0; i < r->n_non_retryable; i++)
    if (r->non_retryable_errors[i] != NULL &&
        strcmp(r->non_retryable_errors[i], type) == 0)
      return true;
  return false;
}

bool def_name_valid(const char *name) {
  if (name == NULL)
    return false;
  size_t n = 0;
  for (const char *c = name; *c; c++, n++) {
    bool ok = (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
              *c == '_' || *c == '.' || *c == '-';
    if (!ok || n >= SK_NAME_MAX)
      return false;
  }
  return n >= 1;
}
