/*
 * decide.c — the pure saga decider: (definition, state, input, clock, rng)
 * → events to append + tasks to enqueue. No I/O, no clock, no globals; the
 * same inputs give byte-identical decisions.
 *
 * Events of one decision are numbered st->last_seq + 1, + 2, ... and carry
 * ts_ms = now and the caller's node. The state is never modified here: the
 * decider reasons about "the state after the events emitted so far" through
 * a small overlay (a step completed in this decision, steps reset by a
 * resume replay), so saga_apply(st, decision) always evolves cleanly.
 *
 * Semantics (DESIGN.md "Semantics users can rely on", workflow-spec.md):
 *  - start: SagaStarted, then StepScheduled(step 0, attempt 1) + its task.
 *    PARALLEL steps and fallbacks: SK_ENOTSUP. Input not an object: SK_EJSON.
 *  - tasks: action = the step kind (the compensation's kind for comp tasks);
 *    task_type for TASK, "" otherwise; SLEEP is available at now + sleep_ms;
 *    HTTP input = the rendered {"method","url","headers","body"}; bulkhead =
 *    the step's; forward timeouts are capped by the saga deadline (deadline
 *    - now); gpus/gpu_memory_mb apply to forward tasks only (a compensation
 *    must be able to run when the GPUs are what failed).
 *  - inputs: the action's template rendered (saga id, task attempt, saga
 *    input, step outputs); default forward input = the saga input; default
 *    compensation input = {"input": saga input, "output": forward output}.
 *    A resume replay's step_input replaces the forward input of that step
 *    for all its attempts. A rendering error fails the step for good with
 *    {"type":"TemplateError","retryable":false} and schedules nothing.
 *  - forward success: StepCompleted; then cancel requested → compensate
 *    (reason Cancelled); else next step (saga deadline passed → the next
 *    step fails for good with SagaTimeout, unscheduled, attempt 0); else
 *    SagaCompleted{output: {step: output}}.
 *  - forward failure: retried iff retryable, type not non-retryable, no
 *    cancel requested, type != Cancelled, attempts left, and now + backoff
 *    < deadline (when only the deadline prevents it, the error becomes
 *    SagaTimeout): StepFailed{final:false} + RetryScheduled{fwd} + task.
 *    Else StepFailed{final:true}, then SagaPaused (on_failure pause, no
 *    cancel) or compensation.
 *  - compensation: CompensationStarted{reason}; targets newest first: the
 *    failed step itself (compensate_on_failure, has a compensate, and it was
 *    scheduled at least once), then every completed step with a compensate,
 *    descending. Each: CompensationScheduled(attempt 1) + task; success →
 *    next target; failure retried per the compensation policy (default
 *    unlimited; deadlines do not apply) else CompensationFailed{final} +
 *    SagaFailed. No target left → SagaCompensated (SagaCancelled when a
 *    cancel was requested).
 *  - stale results (settled saga, wrong step/kind/attempt): SK_ESTATE.
 *  - cancel: settled → SK_ESTATE; again → SK_OK, nothing; running →
 *    CancelRequested + cancel_step; compensating → CancelRequested;
 *    paused → CancelRequested + compensation at once.
 *  - replay: failed → Replayed{resume_compensation} + CompensationScheduled
 *    (stuck step, attempt 1); paused → Replayed{resume,from_step,
 *    step_input} + the forward scheduling of from_step (same deadline rule
 *    as any next step). Others: SK_ESTATE.
 *
 * Thread: any; nothing shared (the rng is the caller's).
 */
#include "saga/saga.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/buf.h"
#include "common/err.h"
#include "spec/template.h"

/* Times stay exact as JSON numbers (doubles). */
#define TIME_MAX ((int64_t)1 << 53)
/* Positive: a template failed to render (message in dctx.why). */
#define RENDER_FAILED 1

typedef struct serr {
  const char *type;
  const char *message;
  bool retryable;
} serr;

typedef struct dctx {
  const def_workflow *wf;
  const saga_state *st;
  const char *node;
  int64_t now;
  saga_rng *rng;
  saga_decision *out;
  size_t cap_events, cap_tasks;
  bool cancel;              /* cancel requested (now or before) */
  int fresh_step;           /* completed in this decision, or -1 */
  const char *fresh_output; /* its output (JSON text or NULL) */
  int reset_from;           /* steps >= this were reset by a replay; or -1 */
  const char *replay_input; /* the replay's input for step reset_from */
  char why[SK_ERROR_MESSAGE_MAX + 64]; /* template error message */
} dctx;

static void dctx_init(dctx *d, const def_workflow *wf, const saga_state *st,
                      const char *node, int64_t now, saga_rng *rng,
                      saga_decision *out) {
  memset(d, 0, sizeof(*d));
  d->wf = wf;
  d->st = st;
  d->node = node;
  d->now = now;
  d->rng = rng;
  d->out = out;
  d->cancel = st->cancel_requested;
  d->fresh_step = -1;
  d->reset_from = -1;
}

static int64_t sat_add(int64_t a, int64_t b) {
  if (a < 0)
    a = 0;
  if (b < 0)
    b = 0;
  return (a >= TIME_MAX || b >= TIME_MAX - a) ? TIME_MAX : a + b;
}

/* ---- the overlay: the state after this decision's events so far ---------- */

static step_status view_status(const dctx *d, int k) {
  if (k == d->fresh_step)
    return STEP_STATUS_COMPLETED;
  if (d->reset_from >= 0 && k >= d->reset_from)
    return STEP_STATUS_PENDING;
  return d->st->steps[k].status;
}

static const char *view_output(const dctx *d, int k) {
  if (k == d->fresh_step)
    return d->fresh_output;
  if (d->reset_from >= 0 && k >= d->reset_from)
    return NULL;
  return d->st->steps[k].output;
}

static int view_attempts(const dctx *d, int k) {
  if (d->reset_from >= 0 && k >= d->reset_from)
    return 0;
  return d->st->steps[k].attempts;
}

static const char *tmpl_step_output(void *ud, const char *name) {
  const dctx *d = ud;
  int k = def_step_index(d->wf, name);
  return k >= 0 ? view_output(d, k) : NULL;
}

/* ---- building events
 * ---------------------------------------------------------- */

static bool grow(void **arr, size_t *cap, size_t n, size_t size) {
  if (n < *cap)
    return true;
  size_t ncap = *cap ? *cap * 2 : 8;
  void *p = realloc(*arr, ncap * size);
  if (p == NULL)
    return false;
  *arr = p;
  *cap = ncap;
  return true;
}

/* Appends an event; takes ownership of payload (may be NULL after an OOM
 * while it was built, which gives SK_ENOMEM). */
static int emit(dctx *d, saga_event_type type, int step, int attempt,
                cJSON *payload) {
  saga_decision *o = d->out;
  char *text = payload != NULL ? cJSON_PrintUnformatted(payload) : NULL;
  cJSON_Delete(payload);
  char *node = d->node != NULL ? strdup(d->node) : NULL;
  if (text == NULL || (d->node != NULL && node == NULL) ||
      !grow((void **)&o->events, &d->cap_events, o->n_events,
            sizeof(*o->events))) {
    free(text);
    free(node);
    return SK_ENOMEM;
  }
  saga_event *ev = &o->events[o->n_events];
  ev->seq = d->st->last_seq + (int64_t)o->n_events + 1;
  ev->type = type;
  ev->step = step;
  ev->attempt = attempt;
  ev->node = node;
  ev->payload = text;
  ev->ts_ms = d->now;
  o->n_events++;
  return SK_OK;
}

static int push_task(dctx *d, saga_task *t) {
  saga_decision *o = d->out;
  if (!grow((void **)&o->tasks, &d->cap_tasks, o->n_tasks, sizeof(*o->tasks))) {
    saga_task_clear(t);
    return SK_ENOMEM;
  }
  o->tasks[o->n_tasks++] = *t;
  return SK_OK;
}

/* Payload builders: a NULL item (OOM) poisons the object so emit() fails. */
static cJSON *add(cJSON *o, const char *key, cJSON *item) {
  if (o == NULL || item == NULL) {
    cJSON_Delete(o);
    cJSON_Delete(item);
    return NULL;
  }
  cJSON_AddItemToObject(o, key, item);
  return o;
}

static cJSON *json_num(int64_t v) { return cJSON_CreateNumber((double)v); }

static cJSON *json_str_or_null(const char *s) {
  return s != NULL ? cJSON_CreateString(s) : cJSON_CreateNull();
}

/* Parses JSON text (NULL = null). NULL result: not valid JSON (or OOM). */
static cJSON *json_parse(const char *text) {
  return text != NULL ? cJSON_Parse(text) : cJSON_CreateNull();
}

static cJSON *err_json(const serr *e) {
  cJSON *o = cJSON_CreateObject();
  o = add(o, "type", cJSON_CreateString(e->type));
  o = add(o, "message", cJSON_CreateString(e->message ? e->message : ""));
  return add(o, "retryable", cJSON_CreateBool(e->retryable));
}

static int emit_err(dctx *d, saga_event_type type, int step, int attempt,
                    const char *key, const serr *e) {
  return emit(d, type, step, attempt,
              add(cJSON_CreateObject(), key, err_json(e)));
}

static int emit_failed(dctx *d, saga_event_type type, int step, int attempt,
                       const serr *e, bool final) {
  cJSON *p = add(cJSON_CreateObject(), "error", err_json(e));
  return emit(d, type, step, attempt, add(p, "final", cJSON_CreateBool(final)));
}

static int emit_at(dctx *d, saga_event_type type, int step, int attempt,
                   int64_t at) {
  return emit(d, type, step, attempt,
              add(cJSON_CreateObject(), "available_at_ms", json_num(at)));
}

/* ---- rendering task inputs
 * ---------------------------------------------------------- */

static int render(dctx *d, const char *tmpl, int attempt, char **out) {
  template_ctx c = {.saga_id = d->st->id,
                    .attempt = attempt,
                    .input_json = d->st->input,
                    .step_output = tmpl_step_output,
                    .ud = d};
  sk_error err;
  memset(&err, 0, sizeof(err));
  int rc = template_render(tmpl, &c, out, &err);
  if (rc == SK_ENOMEM || rc == SK_OK)
    return rc;
  snprintf(d->why, sizeof(d->why), "could not render input: %s",
           err.message[0] ? err.message : sk_strerror(rc));
  return RENDER_FAILED;
}

/* An http action's request: {"method","url","headers","body"}; the url is
 * always a string, even if its template is a lone reference to a number. */
static int render_http(dctx *d, const def_http *h, int attempt, char **out) {
  buf b = BUF_INIT;
  buf_puts(&b, "{\"method\":");
  buf_json_str(&b, h->method ? h->method : "GET");
  buf_puts(&b, ",\"url\":");
  buf_json_str(&b, h->url ? h->url : "");
  buf_printf(&b, ",\"headers\":%s,\"body\":%s}",
             h->headers_json ? h->headers_json : "{}",
             h->body_json ? h->body_json : "null");
  if (!buf_ok(&b)) {
    buf_free(&b);
    return SK_ENOMEM;
  }
  char *text = NULL;
  int rc = render(d, b.data, attempt, &text);
  buf_free(&b);
  if (rc != SK_OK)
    return rc;
  cJSON *o = cJSON_Parse(text);
  cJSON *url = cJSON_GetObjectItemCaseSensitive(o, "url");
  if (url != NULL && !cJSON_IsString(url)) {
    char *u = cJSON_IsNull(url) ? strdup("") : cJSON_PrintUnformatted(url);
    if (u == NULL || !cJSON_ReplaceItemInObjectCaseSensitive(
                         o, "url", cJSON_CreateString(u))) {
      free(u);
      cJSON_Delete(o);
      free(text);
      return SK_ENOMEM;
    }
    free(u);
    free(text);
    text = cJSON_PrintUnformatted(o);
  }
  cJSON_Delete(o);
  *out = text;
  return text != NULL ? SK_OK : SK_ENOMEM;
}

/* {"input": saga input, "output": the step's forward output or null}. */
static int default_comp_input(dctx *d, int i, char **out) {
  const char *output = view_output(d, i);
  buf b = BUF_INIT;
  buf_printf(&b, "{\"input\":%s,\"output\":%s}",
             d->st->input ? d->st->input : "{}", output ? output : "null");
  *out = buf_steal(&b);
  return *out != NULL ? SK_OK : SK_ENOMEM;
}

static int task_input(dctx *d, int i, task_kind kind, const def_action *a,
                      int attempt, char **out) {
  *out = NULL;
  if (a->kind == DEF_KIND_HTTP)
    return render_http(d, &a->http, attempt, out);
  if (a->input_json != NULL)
    return render(d, a->input_json, attempt, out);
  if (kind == TASK_KIND_COMP)
    return default_comp_input(d, i, out);
  *out = strdup(d->st->input ? d->st->input : "{}");
  return *out != NULL ? SK_OK : SK_ENOMEM;
}

/* Builds the task of step i's attempt (not yet pushed). base_at is when it
 * may run, before a sleep's own delay. Returns SK_OK, RENDER_FAILED or an
 * error. */
static int build_task(dctx *d, int i, task_kind kind, int attempt,
                      int64_t base_at, saga_task *t) {
  const def_step *s = &d->wf->steps[i];
  const def_action *a = kind == TASK_KIND_COMP ? s->compensate : &s->action;
  bool fwd = kind == TASK_KIND_FWD;
  memset(t, 0, sizeof(*t));
  t->step = i;
  t->kind = kind;
  t->attempt = attempt;
  t->action = a->kind;
  t->available_at_ms =
      a->kind == DEF_KIND_SLEEP ? sat_add(base_at, a->sleep_ms) : base_at;
  t->timeout_ms = def_effective_timeout(d->wf, s, !fwd);
  if (fwd && d->st->deadline_ms > 0 &&
      d->st->deadline_ms - d->now < t->timeout_ms)
    t->timeout_ms = d->st->deadline_ms - d->now;
  t->gpus = fwd ? s->gpus : 0;
  t->gpu_memory_mb = fwd ? s->gpu_memory_mb : 0;
  /* A resume replay's step_input stands for the template in every forward
   * attempt of that step (the state keeps it in input_override). */
  const char *override = NULL;
  if (fwd)
    override =
        i == d->reset_from ? d->replay_input : d->st->steps[i].input_override;
  int rc;
  if (override != NULL)
    rc = (t->input = strdup(override)) != NULL ? SK_OK : SK_ENOMEM;
  else
    rc = task_input(d, i, kind, a, attempt, &t->input);
  t->task_type =
      strdup(a->kind == DEF_KIND_TASK && a->task_type ? a->task_type : "");
  t->bulkhead = strdup(def_step_bulkhead(s));
  if (rc == SK_OK && (t->task_type == NULL || t->bulkhead == NULL))
    rc = SK_ENOMEM;
  if (rc != SK_OK)
    saga_task_clear(t);
  return rc;
}

/* ---- compensation
 * ------------------------------------------------------------------- */

static bool has_comp(const dctx *d, int k) {
  return d->wf->steps[k].compensate != NULL;
}

/* The newest step below `below` that completed and has a compensation. */
static int next_target(const dctx *d, int below) {
  for (int k = below - 1; k >= 0; k--) {
    if (view_status(d, k) == STEP_STATUS_COMPLETED && has_comp(d, k))
      return k;
  }
  return -1;
}

static int first_target(const dctx *d, int failed) {
  if (failed >= 0 && d->wf->steps[failed].compensate_on_failure &&
      has_comp(d, failed) && view_attempts(d, failed) > 0)
    return failed;
  return next_target(d, (int)d->st->n_steps);
}

static int finish_compensation(dctx *d) {
  return emit(d, d->cancel ? SAGA_EV_SAGA_CANCELLED : SAGA_EV_SAGA_COMPENSATED,
              -1, 0, cJSON_CreateObject());
}

/* Compensation attempt `attempt` of step i failed for good. */
static int comp_give_up(dctx *d, int i, int attempt, const serr *e) {
  int rc = emit_failed(d, SAGA_EV_COMPENSATION_FAILED, i, attempt, e, true);
  if (rc != SK_OK)
    return rc;
  return emit_err(d, SAGA_EV_SAGA_FAILED, -1, 0, "error", e);
}

static int schedule_comp(dctx *d, int i) {
  saga_task t;
  int rc = build_task(d, i, TASK_KIND_COMP, 1, d->now, &t);
  if (rc < 0)
    return rc;
  int64_t at = rc == SK_OK ? t.available_at_ms : d->now;
  int erc = emit_at(d, SAGA_EV_COMPENSATION_SCHEDULED, i, 1, at);
  if (rc == RENDER_FAILED) {
    serr e = {"TemplateError", d->why, false};
    return erc != SK_OK ? erc : comp_give_up(d, i, 1, &e);
  }
  if (erc != SK_OK) {
    saga_task_clear(&t);
    return erc;
  }
  return push_task(d, &t);
}

/* The saga turns to undoing itself. failed: the step that failed for good
 * (it may be compensated itself), or -1. */
static int start_compensating(dctx *d, const serr *reason, int failed) {
  int rc = emit_err(d, SAGA_EV_COMPENSATION_STARTED, -1, 0, "reason", reason);
  if (rc != SK_OK)
    return rc;
  int t = first_target(d, failed);
  return t >= 0 ? schedule_comp(d, t) : finish_compensation(d);
}

static int compensate_cancelled(dctx *d, const char *why, int failed) {
  serr e = {"Cancelled", why ? why : "cancel requested", false};
  return start_compensating(d, &e, failed);
}

/* ---- forward
 * ----------------------------------------------------------------------------
 */

/* Step i failed for good (attempt 0: before it was ever scheduled). */
static int fail_final(dctx *d, int i, int attempt, const serr *e) {
  int rc = emit_failed(d, SAGA_EV_STEP_FAILED, i, attempt, e, true);
  if (rc != SK_OK)
    return rc;
  if (d->wf->on_failure == DEF_ON_FAILURE_PAUSE && !d->cancel)
    return emit_err(d, SAGA_EV_SAGA_PAUSED, -1, 0, "error", e);
  return start_compensating(d, e, i);
}

/* Schedules attempt 1 of step i, unless the saga deadline has passed. */
static int schedule_forward(dctx *d, int i) {
  if (d->st->deadline_ms > 0 && d->now >= d->st->deadline_ms) {
    serr e = {"SagaTimeout", "saga deadline passed before the step started",
              false};
    return fail_final(d, i, 0, &e);
  }
  saga_task t;
  int rc = build_task(d, i, TASK_KIND_FWD, 1, d->now, &t);
  if (rc == RENDER_FAILED) {
    serr e = {"TemplateError", d->why, false};
    return fail_final(d, i, 0, &e);
  }
  if (rc != SK_OK)
    return rc;
  if ((rc = emit_at(d, SAGA_EV_STEP_SCHEDULED, i, 1, t.available_at_ms)) !=
      SK_OK) {
    saga_task_clear(&t);
    return rc;
  }
  return push_task(d, &t);
}

static int complete_saga(dctx *d) {
  cJSON *outputs = cJSON_CreateObject();
  for (size_t k = 0; k < d->st->n_steps && outputs != NULL; k++) {
    cJSON *v = json_parse(view_output(d, (int)k));
    if (v == NULL) {
      cJSON_Delete(outputs);
      return SK_EINTERNAL; /* stored outputs are always valid JSON */
    }
    outputs = add(outputs, d->st->steps[k].name, v);
  }
  return emit(d, SAGA_EV_SAGA_COMPLETED, -1, 0,
              add(cJSON_CreateObject(), "output", outputs));
}

static int forward_ok(dctx *d, const saga_result *r) {
  cJSON *out = json_parse(r->output);
  if (out == NULL)
    return SK_EJSON;
  cJSON *p = add(cJSON_CreateObject(), "output", out);
  p = add(p, "by_fallback", cJSON_CreateBool(false));
  int rc = emit(d, SAGA_EV_STEP_COMPLETED, r->step, r->attempt, p);
  if (rc != SK_OK)
    return rc;
  d->fresh_step = r->step;
  d->fresh_output = r->output;
  if (d->cancel)
    return compensate_cancelled(d, NULL, -1);
  if ((size_t)r->step + 1 < d->st->n_steps)
    return schedule_forward(d, r->step + 1);
  return complete_saga(d);
}

static int emit_retry(dctx *d, saga_task *t, const serr *e,
                      saga_event_type failed_type, int64_t at, int64_t delay) {
  int rc = emit_failed(d, failed_type, t->step, t->attempt - 1, e, false);
  cJSON *p = add(cJSON_CreateObject(), "kind",
                 cJSON_CreateString(task_kind_name(t->kind)));
  p = add(p, "available_at_ms", json_num(at));
  p = add(p, "delay_ms", json_num(delay));
  if (rc == SK_OK)
    rc = emit(d, SAGA_EV_RETRY_SCHEDULED, t->step, t->attempt, p);
  else
    cJSON_Delete(p);
  if (rc != SK_OK) {
    saga_task_clear(t);
    return rc;
  }
  return push_task(d, t);
}

static bool policy_allows(const def_retry *pol, const serr *e, int attempt) {
  return e->retryable && !def_retry_is_non_retryable(pol, e->type) &&
         (pol->max_attempts <= 0 || attempt < pol->max_attempts);
}

static int forward_failed(dctx *d, const saga_result *r, const serr *e0) {
  const def_step *s = &d->wf->steps[r->step];
  def_retry pol;
  def_effective_retry(d->wf, s, false, &pol);
  serr e = *e0;
  char msg[SK_ERROR_MESSAGE_MAX];
  if (!policy_allows(&pol, &e, r->attempt) || d->cancel ||
      strcmp(e.type, "Cancelled") == 0)
    return fail_final(d, r->step, r->attempt, &e);
  int64_t delay = saga_backoff_ms(&pol, r->attempt + 1, d->rng);
  int64_t at = sat_add(d->now, delay);
  if (d->st->deadline_ms > 0 && at >= d->st->deadline_ms) {
    snprintf(msg, sizeof(msg),
             "saga deadline would pass before attempt %d (last error %s: %s)",
             r->attempt + 1, e0->type, e0->message ? e0->message : "");
    serr te = {"SagaTimeout", msg, false};
    return fail_final(d, r->step, r->attempt, &te);
  }
  saga_task t;
  int rc = build_task(d, r->step, TASK_KIND_FWD, r->attempt + 1, at, &t);
  if (rc == RENDER_FAILED) {
    serr te = {"TemplateError", d->why, false};
    return fail_final(d, r->step, r->attempt, &te);
  }
  if (rc != SK_OK)
    return rc;
  return emit_retry(d, &t, &e, SAGA_EV_STEP_FAILED, at, delay);
}

/* ---- compensation results
 * ------------------------------------------------------------------ */

static int comp_ok(dctx *d, const saga_result *r) {
  cJSON *out = json_parse(r->output);
  if (out == NULL)
    return SK_EJSON;
  int rc = emit(d, SAGA_EV_COMPENSATION_COMPLETED, r->step, r->attempt,
                add(cJSON_CreateObject(), "output", out));
  if (rc != SK_OK)
    return rc;
  int next = next_target(d, r->step);
  return next >= 0 ? schedule_comp(d, next) : finish_compensation(d);
}

static int comp_failed(dctx *d, const saga_result *r, const serr *e) {
  const def_step *s = &d->wf->steps[r->step];
  def_retry pol;
  def_effective_retry(d->wf, s, true, &pol);
  if (!policy_allows(&pol, e, r->attempt))
    return comp_give_up(d, r->step, r->attempt, e);
  int64_t delay = saga_backoff_ms(&pol, r->attempt + 1, d->rng);
  int64_t at = sat_add(d->now, delay);
  saga_task t;
  int rc = build_task(d, r->step, TASK_KIND_COMP, r->attempt + 1, at, &t);
  if (rc == RENDER_FAILED) {
    serr te = {"TemplateError", d->why, false};
    return comp_give_up(d, r->step, r->attempt, &te);
  }
  if (rc != SK_OK)
    return rc;
  return emit_retry(d, &t, e, SAGA_EV_COMPENSATION_FAILED, at, delay);
}

/* ---- entry points
 * ------------------------------------------------------------------------- */

/* Refuses definitions this decider cannot run yet. */
static int check_supported(const def_workflow *wf) {
  for (size_t i = 0; i < wf->n_steps; i++) {
    const def_step *s = &wf->steps[i];
    if (s->action.kind == DEF_KIND_PARALLEL || s->fallback != NULL ||
        s->fallback_compensate != NULL || s->n_branches > 0 ||
        (s->compensate != NULL && s->compensate->kind == DEF_KIND_PARALLEL))
      return SK_ENOTSUP;
  }
  return SK_OK;
}

/* The definition must be the one the saga runs. */
static int check_pair(const def_workflow *wf, const saga_state *st) {
  if (wf == NULL || st == NULL || st->workflow == NULL || wf->name == NULL ||
      strcmp(wf->name, st->workflow) != 0 || wf->version != st->version ||
      wf->n_steps != st->n_steps)
    return SK_EINVAL;
  return check_supported(wf);
}

static int finish(saga_decision *out, int rc) {
  if (rc != SK_OK)
    saga_decision_clear(out);
  return rc;
}

static int start_payload(const def_workflow *wf, const char *id, cJSON *input,
                         const char *key, const char *replay_of,
                         int64_t deadline, cJSON **out) {
  cJSON *names = cJSON_CreateArray();
  for (size_t i = 0; i < wf->n_steps && names != NULL; i++) {
    cJSON *n = cJSON_CreateString(wf->steps[i].name);
    if (n == NULL || !cJSON_AddItemToArray(names, n)) {
      cJSON_Delete(n);
      cJSON_Delete(names);
      names = NULL;
    }
  }
  cJSON *p = add(cJSON_CreateObject(), "id", cJSON_CreateString(id));
  p = add(p, "workflow", cJSON_CreateString(wf->name));
  p = add(p, "version", json_num(wf->version));
  p = add(p, "input", input);
  p = add(p, "steps", names);
  p = add(p, "deadline_ms", json_num(deadline));
  p = add(p, "idempotency_key", json_str_or_null(key));
  *out = add(p, "replay_of", json_str_or_null(replay_of));
  return *out != NULL ? SK_OK : SK_ENOMEM;
}

int saga_decide_start(const def_workflow *wf, const char *new_id,
                      const char *input, const char *idempotency_key,
                      const char *replay_of, int64_t now_ms, saga_rng *rng,
                      saga_decision *out) {
  saga_decision_init(out);
  if (wf == NULL || wf->name == NULL || new_id == NULL ||
      strlen(new_id) >= SK_ID_LEN)
    return SK_EINVAL;
  int rc = check_supported(wf);
  if (rc != SK_OK)
    return rc;
  cJSON *in = cJSON_Parse(input != NULL ? input : "{}");
  if (!cJSON_IsObject(in)) {
    cJSON_Delete(in);
    return SK_EJSON;
  }
  int64_t deadline = wf->timeout_ms > 0 ? sat_add(now_ms, wf->timeout_ms) : 0;
  cJSON *p;
  if ((rc = start_payload(wf, new_id, in, idempotency_key, replay_of, deadline,
                          &p)) != SK_OK)
    return rc;
  /* The rest is decided against the state SagaStarted creates. */
  saga_state st;
  saga_state_init(&st);
  dctx d;
  dctx_init(&d, wf, &st, NULL, now_ms, rng, out);
  rc = emit(&d, SAGA_EV_SAGA_STARTED, -1, 0, p);
  if (rc == SK_OK)
    rc = saga_evolve(&st, &out->events[0]);
  if (rc == SK_OK) {
    st.last_seq = 0; /* further events number on from the decision */
    rc = wf->n_steps > 0 ? schedule_forward(&d, 0) : complete_saga(&d);
  }
  saga_state_clear(&st);
  return finish(out, rc);
}

static bool result_matches(const saga_state *st, const saga_result *r) {
  if (r->step < 0 || (size_t)r->step >= st->n_steps || r->step != st->cursor)
    return false;
  const saga_step_state *s = &st->steps[r->step];
  if (r->kind == TASK_KIND_FWD)
    return st->status == SAGA_STATUS_RUNNING &&
           st->phase == SAGA_PHASE_FORWARD &&
           s->status == STEP_STATUS_SCHEDULED && r->attempt == s->attempts;
  return st->status == SAGA_STATUS_COMPENSATING &&
         st->phase == SAGA_PHASE_COMPENSATING &&
         s->status == STEP_STATUS_COMPENSATING &&
         r->attempt == s->comp_attempts;
}

int saga_decide_result(const def_workflow *wf, const saga_state *st,
                       const saga_result *r, const char *node, int64_t now_ms,
                       saga_rng *rng, saga_decision *out) {
  saga_decision_init(out);
  if (r == NULL)
    return SK_EINVAL;
  int rc = check_pair(wf, st);
  if (rc != SK_OK)
    return rc;
  if (saga_status_settled(st->status) || !result_matches(st, r))
    return SK_ESTATE;
  dctx d;
  dctx_init(&d, wf, st, node, now_ms, rng, out);
  serr e = {r->err_type && r->err_type[0] ? r->err_type : "Error",
            r->err_message ? r->err_message : "", r->err_retryable};
  if (r->kind == TASK_KIND_FWD)
    rc = r->ok ? forward_ok(&d, r) : forward_failed(&d, r, &e);
  else
    rc = r->ok ? comp_ok(&d, r) : comp_failed(&d, r, &e);
  return finish(out, rc);
}

int saga_decide_cancel(const def_workflow *wf, const saga_state *st,
                       const char *reason, const char *node, int64_t now_ms,
                       saga_rng *rng, saga_decision *out) {
  saga_decision_init(out);
  int rc = check_pair(wf, st);
  if (rc != SK_OK)
    return rc;
  if (saga_status_settled(st->status) && st->status != SAGA_STATUS_PAUSED)
    return SK_ESTATE;
  if (st->cancel_requested)
    return SK_OK;
  dctx d;
  dctx_init(&d, wf, st, node, now_ms, rng, out);
  rc = emit(&d, SAGA_EV_CANCEL_REQUESTED, -1, 0,
            add(cJSON_CreateObject(), "reason", json_str_or_null(reason)));
  d.cancel = true;
  if (rc != SK_OK || st->status == SAGA_STATUS_COMPENSATING)
    return finish(out, rc);
  if (st->status == SAGA_STATUS_PAUSED)
    return finish(out, compensate_cancelled(&d, reason, st->cursor));
  /* Running: the step in flight is told to stop; its result (whatever it
   * is) then starts the compensation. */
  if (st->cursor >= 0 && st->steps[st->cursor].status == STEP_STATUS_SCHEDULED)
    out->cancel_step = st->cursor;
  else
    rc = compensate_cancelled(&d, reason, -1);
  return finish(out, rc);
}

static int replay_failed(dctx *d, const saga_replay *req) {
  const saga_state *st = d->st;
  if (req != NULL && (req->from_step != NULL || req->step_input != NULL))
    return SK_EINVAL;
  if (st->cursor < 0 ||
      st->steps[st->cursor].status != STEP_STATUS_COMPENSATION_FAILED)
    return SK_EINTERNAL;
  cJSON *p = add(cJSON_CreateObject(), "mode",
                 cJSON_CreateString("resume_compensation"));
  p = add(p, "from_step", cJSON_CreateString(st->steps[st->cursor].name));
  int rc = emit(d, SAGA_EV_REPLAYED, st->cursor, 0, p);
  return rc != SK_OK ? rc : schedule_comp(d, st->cursor);
}

static int replay_paused(dctx *d, const saga_replay *req) {
  const saga_state *st = d->st;
  int from = st->cursor;
  if (req != NULL && req->from_step != NULL)
    from = def_step_index(d->wf, req->from_step);
  if (from < 0 || from > st->cursor)
    return SK_EINVAL;
  cJSON *in = NULL;
  char *text = NULL;
  if (req != NULL && req->step_input != NULL) {
    if ((in = cJSON_Parse(req->step_input)) == NULL)
      return SK_EJSON;
    /* The compact text is what the state's input_override will hold. */
    if (!cJSON_IsNull(in) && (text = cJSON_PrintUnformatted(in)) == NULL) {
      cJSON_Delete(in);
      return SK_ENOMEM;
    }
  }
  cJSON *p = add(cJSON_CreateObject(), "mode", cJSON_CreateString("resume"));
  p = add(p, "from_step", cJSON_CreateString(st->steps[from].name));
  p = add(p, "step_input", in != NULL ? in : cJSON_CreateNull());
  int rc = emit(d, SAGA_EV_REPLAYED, from, 0, p);
  d->reset_from = from;
  d->replay_input = text;
  if (rc == SK_OK)
    rc = schedule_forward(d, from);
  free(text);
  return rc;
}

int saga_decide_replay(const def_workflow *wf, const saga_state *st,
                       const saga_replay *req, const char *node, int64_t now_ms,
                       saga_rng *rng, saga_decision *out) {
  saga_decision_init(out);
  int rc = check_pair(wf, st);
  if (rc != SK_OK)
    return rc;
  dctx d;
  dctx_init(&d, wf, st, node, now_ms, rng, out);
  if (st->status == SAGA_STATUS_FAILED)
    return finish(out, replay_failed(&d, req));
  if (st->status == SAGA_STATUS_PAUSED)
    return finish(out, replay_paused(&d, req));
  return SK_ESTATE;
}

int saga_decide_link(const saga_state *st, const char *new_id, const char *node,
                     int64_t now_ms, saga_decision *out) {
  saga_decision_init(out);
  if (st == NULL || new_id == NULL || st->workflow == NULL)
    return SK_EINVAL;
  if (st->phase != SAGA_PHASE_DONE)
    return SK_ESTATE;
  dctx d;
  memset(&d, 0, sizeof(d));
  d.st = st;
  d.node = node;
  d.now = now_ms;
  d.out = out;
  int rc = emit(
      &d, SAGA_EV_REPLAY_LINKED, -1, 0,
      add(cJSON_CreateObject(), "replayed_by", cJSON_CreateString(new_id)));
  return finish(out, rc);
}
