/*
 * workflow.c — the SDK's workflow builder (sk_workflow_*).
 *
 * An sk_workflow wraps the one definition model (def_workflow) that the JSON
 * spec parser also produces. Each builder call checks its own arguments at
 * once (a NULL, a bad name, an unknown step, invalid JSON); the whole
 * definition is checked by the one validator when it is registered, with
 * every problem and its JSON Pointer.
 *
 * Thread: the caller's; an sk_workflow is not shared while being built.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/json.h"
#include "core/engine.h"
#include "spec/problems.h"
#include "spec/spec_json.h"

struct sk_workflow {
  def_workflow *def;
};

void sk_retry_init(sk_retry *r) {
  if (r == NULL)
    return;
  memset(r, 0, sizeof(*r));
  r->initial_interval_ms = -1;
  r->max_interval_ms = -1;
  r->jitter = -1;
}

int sk_workflow_new(const char *name, int version, sk_workflow **out) {
  if (out == NULL)
    return SK_EINVAL;
  *out = NULL;
  if (!def_name_valid(name) || version < 1)
    return SK_EINVAL;
  sk_workflow *wf = calloc(1, sizeof(*wf));
  if (wf == NULL)
    return SK_ENOMEM;
  wf->def = def_workflow_new();
  if (wf->def == NULL || (wf->def->name = strdup(name)) == NULL) {
    sk_workflow_free(wf);
    return SK_ENOMEM;
  }
  wf->def->version = version;
  *out = wf;
  return SK_OK;
}

int sk_workflow_from_json(const char *spec_json, sk_workflow **out,
                          char **problems_json, sk_error *err) {
  if (problems_json != NULL)
    *problems_json = NULL;
  if (out == NULL || spec_json == NULL)
    return sk_error_set(err, SK_EINVAL, "spec and out must not be NULL");
  *out = NULL;
  def_problems p;
  def_problems_init(&p);
  def_workflow *def = NULL;
  int rc = spec_parse(spec_json, strlen(spec_json), &def, &p);
  if (rc != SK_OK) {
    if (problems_json != NULL)
      *problems_json = def_problems_to_json(&p);
    if (def_problems_to_error(&p, err) == SK_OK)
      sk_error_set(err, rc, NULL);
    if (err != NULL)
      err->code = rc; /* the problems' message, the call's own code */
    def_problems_clear(&p);
    return rc;
  }
  def_problems_clear(&p);
  sk_workflow *wf = calloc(1, sizeof(*wf));
  if (wf == NULL) {
    def_workflow_unref(def);
    return sk_error_set(err, SK_ENOMEM, NULL);
  }
  wf->def = def;
  *out = wf;
  return SK_OK;
}

int sk_workflow_to_json(const sk_workflow *wf, char **json_out) {
  if (wf == NULL || json_out == NULL)
    return SK_EINVAL;
  return spec_to_json(wf->def, json_out);
}

void sk_workflow_free(sk_workflow *wf) {
  if (wf == NULL)
    return;
  def_workflow_unref(wf->def);
  free(wf);
}

int sk_workflow_set_description(sk_workflow *wf, const char *text) {
  if (wf == NULL || text == NULL || strlen(text) > 4096)
    return SK_EINVAL;
  char *d = strdup(text);
  if (d == NULL)
    return SK_ENOMEM;
  free(wf->def->description);
  wf->def->description = d;
  return SK_OK;
}

int sk_workflow_set_on_failure(sk_workflow *wf, sk_on_failure f) {
  if (wf == NULL || (f != SK_ON_FAILURE_COMPENSATE && f != SK_ON_FAILURE_PAUSE))
    return SK_EINVAL;
  wf->def->on_failure = f == SK_ON_FAILURE_PAUSE ? DEF_ON_FAILURE_PAUSE
                                                 : DEF_ON_FAILURE_COMPENSATE;
  return SK_OK;
}

int sk_workflow_set_timeout(sk_workflow *wf, int64_t timeout_ms) {
  if (wf == NULL || timeout_ms < 0)
    return SK_EINVAL;
  wf->def->timeout_ms = timeout_ms;
  return SK_OK;
}

/* Converts an SDK retry policy, checking each field's range. */
static int retry_from_sdk(const sk_retry *r, def_retry *out) {
  memset(out, 0, sizeof(*out));
  if (isnan(r->backoff_coefficient) || isnan(r->jitter) ||
      isinf(r->backoff_coefficient) || r->max_attempts < 0 || r->initial_interval_ms < -1 ||
      (r->backoff_coefficient != 0 && r->backoff_coefficient < 1) ||
      r->max_interval_ms < -1 ||
      (r->jitter != -1 && (r->jitter < 0 || r->jitter > 1)) ||
      (r->n_non_retryable > 0 && r->non_retryable_errors == NULL))
    return SK_EINVAL;
  if (r->max_attempts > 0) {
    out->set |= DEF_RETRY_MAX_ATTEMPTS;
    out->max_attempts = r->max_attempts;
  }
  if (r->initial_interval_ms >= 0) {
    out->set |= DEF_RETRY_INITIAL;
    out->initial_interval_ms = r->initial_interval_ms;
  }
  if (r->backoff_coefficient >= 1) {
    out->set |= DEF_RETRY_COEFFICIENT;
    out->backoff_coefficient = r->backoff_coefficient;
  }
  if (r->max_interval_ms >= 0) {
    out->set |= DEF_RETRY_MAX_INTERVAL;
    out->max_interval_ms = r->max_interval_ms;
  }
  if (r->jitter >= 0) {
    out->set |= DEF_RETRY_JITTER;
    out->jitter = r->jitter;
  }
  if (r->non_retryable_errors != NULL) {
    out->set |= DEF_RETRY_NON_RETRYABLE;
    out->non_retryable_errors = calloc(r->n_non_retryable + 1, sizeof(char *));
    if (out->non_retryable_errors == NULL)
      return SK_ENOMEM;
    for (size_t i = 0; i < r->n_non_retryable; i++) {
      const char *t = r->non_retryable_errors[i];
      if (t == NULL || t[0] == '\0' || strlen(t) > SK_NAME_MAX) {
        def_retry_clear(out);
        return SK_EINVAL;
      }
      out->non_retryable_errors[i] = strdup(t);
      if (out->non_retryable_errors[i] == NULL) {
        def_retry_clear(out);
        return SK_ENOMEM;
      }
      out->n_non_retryable = i + 1;
    }
  }
  return SK_OK;
}

int sk_workflow_set_default_retry(sk_workflow *wf, const sk_retry *r) {
  if (wf == NULL || r == NULL)
    return SK_EINVAL;
  def_retry d;
  int rc = retry_from_sdk(r, &d);
  if (rc != SK_OK)
    return rc;
  def_retry_clear(&wf->def->default_retry);
  wf->def->default_retry = d;
  wf->def->has_default_retry = true;
  return SK_OK;
}

int sk_workflow_set_default_timeout(sk_workflow *wf, int64_t timeout_ms) {
  if (wf == NULL || timeout_ms < 1)
    return SK_EINVAL;
  wf->def->default_timeout_ms = timeout_ms;
  return SK_OK;
}

static def_step *find_step(sk_workflow *wf, const char *name) {
  if (wf == NULL || name == NULL)
    return NULL;
  int i = def_step_index(wf->def, name);
  return i < 0 ? NULL : &wf->def->steps[i];
}

static int append_step(sk_workflow *wf, const char *name, def_step **out) {
  if (wf == NULL || !def_name_valid(name))
    return SK_EINVAL;
  if (def_step_index(wf->def, name) >= 0)
    return SK_EEXIST;
  if (wf->def->n_steps >= SK_STEPS_MAX)
    return SK_ETOOBIG;
  def_step *s = realloc(wf->def->steps,
                        (wf->def->n_steps + 1) * sizeof(def_step));
  if (s == NULL)
    return SK_ENOMEM;
  wf->def->steps = s;
  def_step *n = &s[wf->def->n_steps];
  memset(n, 0, sizeof(*n));
  n->name = strdup(name);
  if (n->name == NULL)
    return SK_ENOMEM;
  wf->def->n_steps++;
  *out = n;
  return SK_OK;
}

int sk_workflow_add_step(sk_workflow *wf, const char *name,
                         const char *task_type) {
  if (!def_name_valid(task_type))
    return SK_EINVAL;
  def_step *s = NULL;
  int rc = append_step(wf, name, &s);
  if (rc != SK_OK)
    return rc;
  s->action.kind = DEF_KIND_TASK;
  s->action.task_type = strdup(task_type);
  return s->action.task_type != NULL ? SK_OK : SK_ENOMEM;
}

int sk_workflow_add_sleep(sk_workflow *wf, const char *name, int64_t ms) {
  if (ms < 0 || ms > 31536000000LL)
    return SK_EINVAL;
  def_step *s = NULL;
  int rc = append_step(wf, name, &s);
  if (rc != SK_OK)
    return rc;
  s->action.kind = DEF_KIND_SLEEP;
  s->action.sleep_ms = ms;
  return SK_OK;
}

/* Normalised copy of a JSON document, or NULL (bad JSON or too big). */
static int json_copy(const char *text, char **out) {
  if (text == NULL)
    return SK_EINVAL;
  size_t len = strlen(text);
  if (len > SK_PAYLOAD_MAX)
    return SK_ETOOBIG;
  cJSON *doc = json_parse_exact(text, len);
  if (doc == NULL)
    return SK_EJSON;
  *out = cJSON_PrintUnformatted(doc);
  cJSON_Delete(doc);
  return *out != NULL ? SK_OK : SK_ENOMEM;
}

int sk_workflow_step_input(sk_workflow *wf, const char *step,
                           const char *input_template) {
  def_step *s = find_step(wf, step);
  if (s == NULL)
    return wf == NULL || step == NULL ? SK_EINVAL : SK_ENOENT;
  if (s->action.kind == DEF_KIND_SLEEP)
    return SK_EINVAL;
  char *copy = NULL;
  int rc = json_copy(input_template, &copy);
  if (rc != SK_OK)
    return rc;
  free(s->action.input_json);
  s->action.input_json = copy;
  return SK_OK;
}

int sk_workflow_step_compensate(sk_workflow *wf, const char *step,
                                const char *task_type,
                                const char *input_template) {
  def_step *s = find_step(wf, step);
  if (s == NULL)
    return wf == NULL || step == NULL ? SK_EINVAL : SK_ENOENT;
  if (s->action.kind != DEF_KIND_TASK || !def_name_valid(task_type))
    return SK_EINVAL;
  def_action *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return SK_ENOMEM;
  c->kind = DEF_KIND_TASK;
  int rc = SK_OK;
  if ((c->task_type = strdup(task_type)) == NULL)
    rc = SK_ENOMEM;
  if (rc == SK_OK && input_template != NULL)
    rc = json_copy(input_template, &c->input_json);
  if (rc != SK_OK) {
    def_action_clear(c);
    free(c);
    return rc;
  }
  if (s->compensate != NULL) {
    def_action_clear(s->compensate);
    free(s->compensate);
  }
  s->compensate = c;
  return SK_OK;
}

static int set_retry(def_action *a, const sk_retry *r) {
  def_retry d;
  int rc = retry_from_sdk(r, &d);
  if (rc != SK_OK)
    return rc;
  def_retry_clear(&a->retry);
  a->retry = d;
  a->has_retry = true;
  return SK_OK;
}

int sk_workflow_step_retry(sk_workflow *wf, const char *step,
                           const sk_retry *r) {
  def_step *s = find_step(wf, step);
  if (s == NULL || r == NULL)
    return wf == NULL || step == NULL || r == NULL ? SK_EINVAL : SK_ENOENT;
  if (s->action.kind == DEF_KIND_SLEEP)
    return SK_EINVAL;
  return set_retry(&s->action, r);
}

int sk_workflow_step_compensation_retry(sk_workflow *wf, const char *step,
                                        const sk_retry *r) {
  def_step *s = find_step(wf, step);
  if (s == NULL || r == NULL)
    return wf == NULL || step == NULL || r == NULL ? SK_EINVAL : SK_ENOENT;
  if (s->compensate == NULL)
    return SK_ESTATE;
  return set_retry(s->compensate, r);
}

int sk_workflow_step_timeout(sk_workflow *wf, const char *step,
                             int64_t timeout_ms) {
  def_step *s = find_step(wf, step);
  if (s == NULL)
    return wf == NULL || step == NULL ? SK_EINVAL : SK_ENOENT;
  if (timeout_ms < 1 || s->action.kind == DEF_KIND_SLEEP)
    return SK_EINVAL;
  s->action.timeout_ms = timeout_ms;
  return SK_OK;
}

int sk_workflow_step_bulkhead(sk_workflow *wf, const char *step,
                              const char *bulkhead_name) {
  def_step *s = find_step(wf, step);
  if (s == NULL)
    return wf == NULL || step == NULL ? SK_EINVAL : SK_ENOENT;
  if (!def_name_valid(bulkhead_name))
    return SK_EINVAL;
  char *b = strdup(bulkhead_name);
  if (b == NULL)
    return SK_ENOMEM;
  free(s->bulkhead);
  s->bulkhead = b;
  return SK_OK;
}

int sk_workflow_step_compensate_on_failure(sk_workflow *wf, const char *step,
                                           bool on) {
  def_step *s = find_step(wf, step);
  if (s == NULL)
    return wf == NULL || step == NULL ? SK_EINVAL : SK_ENOENT;
  s->compensate_on_failure = on;
  return SK_OK;
}

int sk_engine_register_workflow(sk_engine *e, const sk_workflow *wf,
                                sk_error *err) {
  if (e == NULL || wf == NULL)
    return sk_error_set(err, SK_EINVAL, "engine and workflow must not be NULL");
  return engine_register_def(e, wf->def, NULL, err);
}
