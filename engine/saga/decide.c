/*
 * decide.c — the pure saga decider: (definition, state, input, clock, rng)
 * → events to append + tasks to enqueue. No I/O, no clock, no globals; the
 * same inputs give byte-identical decisions.
 *
 * Events of one decision are numbered st->last_seq + 1, + 2, ... and carry
 * ts_ms = now and the caller's node. The state given is never modified: the
 * decider evolves a private copy through each event as it emits it
 * (decide_internal.h), so saga_apply(st, decision) always evolves cleanly.
 * Step indexes are flat (saga.h "flattening").
 *
 * Semantics (DESIGN.md "Semantics users can rely on", workflow-spec.md):
 *  - start: SagaStarted (with the tree when there are parallel groups), then
 *    the scheduling of step 0. Input not an object: SK_EJSON.
 *  - scheduling a step: saga deadline passed → it fails for good with
 *    SagaTimeout, unscheduled (attempt 0). A task step: StepScheduled
 *    (attempt 1) + its task. A parallel group: StepScheduled for the group,
 *    then the scheduling of the first step of each branch in order (stops
 *    at a branch whose first step failed to schedule).
 *  - tasks: action = the action's kind (task/http/sleep); task_type for
 *    TASK, "" otherwise; SLEEP is available at now + sleep_ms; HTTP input =
 *    the rendered {"method","url","headers","body"}; bulkhead = the step's
 *    (fallbacks and compensations too); forward and fallback timeouts are
 *    capped by the saga deadline (deadline - now); gpus/gpu_memory_mb apply
 *    to forward tasks only (a compensation must be able to run when the
 *    GPUs are what failed; a fallback is the cheap way round).
 *  - inputs: the action's template rendered (saga id, task attempt, saga
 *    input, step outputs of any step by name); default forward and fallback
 *    input = the saga input; default compensation input = {"input": saga
 *    input, "output": forward output}. A resume replay's step_input replaces
 *    the forward input of that step for all its attempts. A rendering error
 *    fails the step for good with {"type":"TemplateError",
 *    "retryable":false} and schedules nothing.
 *  - forward success: StepCompleted; then, when stopping (cancel requested
 *    or a step failed for good while parallel siblings run) → see
 *    "stopping"; else the next step of its sequence is scheduled; at the
 *    end of a branch, when every branch of the group is complete, the group
 *    completes (StepCompleted, output = {name: output} of the steps of its
 *    branches) and the saga goes on after it;
 *    at the end of the top level: SagaCompleted{output: {step: output}} over
 *    every step, nested ones included.
 *  - forward failure: retried iff retryable, type not non-retryable, not
 *    stopping, type != Cancelled, attempts left, and now + backoff <
 *    deadline (when only the deadline prevents it, the error becomes
 *    SagaTimeout): StepFailed{final:false} + RetryScheduled{fwd} + task.
 *    Else the step gives up: with a fallback (and not stopping, attempt > 0,
 *    error not SagaTimeout/Cancelled) → StepFailed{final:false} +
 *    FallbackScheduled + a fallback task (policy: the fallback's retry,
 *    then the workflow defaults); otherwise StepFailed{final:true}.
 *  - fallback results: success → StepCompleted{by_fallback:true} (attempt =
 *    the fallback's) and the saga goes on as for a success; failure →
 *    retried by the same rule (FallbackFailed{final:false} +
 *    RetryScheduled{fallback}), else FallbackFailed{final:true} +
 *    StepFailed{final:true} (attempt = the forward attempts).
 *  - a step failed for good: every other forward task in flight is told to
 *    stop (cancel_steps: those queued before this decision); nothing new is
 *    scheduled; once no step is in flight ("stopping" below).
 *  - stopping, once nothing runs forward: every running group fails
 *    (StepFailed{final:true}, innermost first, with the first failure's
 *    error or Cancelled); then, if a step failed: SagaPaused (on_failure
 *    pause, no cancel) or compensation with that error as reason; else
 *    (cancel) compensation with reason Cancelled.
 *  - compensation: CompensationStarted{reason}; targets newest first by
 *    finished_seq: every completed step with a compensation (the fallback's
 *    compensate when it completed by fallback and one is given), and every
 *    failed step with compensate_on_failure that was scheduled at least
 *    once. Each: CompensationScheduled(attempt 1) + task; success → next
 *    target; failure retried per the compensation policy (default
 *    unlimited; deadlines do not apply) else CompensationFailed{final} +
 *    SagaFailed. No target left → SagaCompensated (SagaCancelled when a
 *    cancel was requested).
 *  - stale results (settled saga, wrong step/kind/attempt): SK_ESTATE.
 *  - cancel: settled → SK_ESTATE; again → SK_OK, nothing; running →
 *    CancelRequested + cancel_steps (every step in flight; the stopping
 *    rule follows as results come in; nothing in flight → compensation at
 *    once); compensating → CancelRequested; paused → CancelRequested +
 *    compensation at once.
 *  - breaker open: see saga_decide_breaker_open in saga.h.
 *  - replay: failed → Replayed{resume_compensation} + CompensationScheduled
 *    (stuck step, attempt 1); paused → Replayed{resume,from_step,
 *    step_input} + the scheduling of from_step, a top-level step (a group
 *    runs again whole). Others: SK_ESTATE.
 *
 * Thread: any; nothing shared (the rng is the caller's).
 */
#include "saga/saga.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "saga/decide_internal.h"

/* ---- views of the current state ----------------------------------------- */

static bool running_forward(const dctx *d) {
  return d->cur.status == SAGA_STATUS_RUNNING &&
         d->cur.phase == SAGA_PHASE_FORWARD;
}

static step_status status_of(const dctx *d, int k) {
  return d->cur.steps[k].status;
}

/* Some step failed for good while the saga runs forward. */
static bool failing(const dctx *d) {
  if (!running_forward(d))
    return false;
  for (size_t k = 0; k < d->cur.n_steps; k++) {
    if (status_of(d, (int)k) == STEP_STATUS_FAILED)
      return true;
  }
  return false;
}

static bool stopping(const dctx *d) {
  return d->cur.cancel_requested || failing(d);
}

static bool leaf_in_flight(const dctx *d, int k) {
  return !step_is_group(d, k) && status_of(d, k) == STEP_STATUS_SCHEDULED;
}

static bool any_in_flight(const dctx *d) {
  for (size_t k = 0; k < d->n_flat; k++) {
    if (leaf_in_flight(d, (int)k))
      return true;
  }
  return false;
}

/* The failed step that failed first (lowest finished_seq), or -1. */
static int first_failure(const dctx *d) {
  int best = -1;
  for (size_t k = 0; k < d->n_flat; k++) {
    const saga_step_state *s = &d->cur.steps[k];
    if (s->status == STEP_STATUS_FAILED &&
        (best < 0 || s->finished_seq < d->cur.steps[best].finished_seq))
      best = (int)k;
  }
  return best;
}

/* ---- compensation -------------------------------------------------------- */

static bool comp_target(const dctx *d, int k) {
  const saga_step_state *s = &d->cur.steps[k];
  if (step_is_group(d, k) || task_action(d, k, TASK_KIND_COMP) == NULL)
    return false;
  if (s->status == STEP_STATUS_COMPLETED)
    return true;
  return s->status == STEP_STATUS_FAILED &&
         d->flat[k].def->compensate_on_failure && s->attempts > 0;
}

/* The newest target left: highest finished_seq (then highest index). */
static int next_target(const dctx *d) {
  int best = -1;
  for (size_t k = 0; k < d->n_flat; k++) {
    if (comp_target(d, (int)k) &&
        (best < 0 ||
         d->cur.steps[k].finished_seq >= d->cur.steps[best].finished_seq))
      best = (int)k;
  }
  return best;
}

static int finish_compensation(dctx *d) {
  return emit(d,
              d->cur.cancel_requested ? SAGA_EV_SAGA_CANCELLED
                                      : SAGA_EV_SAGA_COMPENSATED,
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

static int next_comp(dctx *d) {
  int t = next_target(d);
  return t >= 0 ? schedule_comp(d, t) : finish_compensation(d);
}

/* The saga turns to undoing itself; reason is an error as JSON text. */
static int start_compensating(dctx *d, const char *reason) {
  int rc = emit_err_text(d, SAGA_EV_COMPENSATION_STARTED, -1, 0, "reason",
                         reason, -1);
  return rc != SK_OK ? rc : next_comp(d);
}

static int compensate_cancelled(dctx *d, const char *why) {
  serr e = {"Cancelled", why ? why : "cancel requested", false};
  cJSON *j = err_json(&e);
  char *text = j != NULL ? cJSON_PrintUnformatted(j) : NULL;
  cJSON_Delete(j);
  if (text == NULL)
    return SK_ENOMEM;
  int rc = start_compensating(d, text);
  free(text);
  return rc;
}

/* ---- stopping ------------------------------------------------------------ */

/* Nothing runs forward any more, after a failure for good or a cancel:
 * running groups fail, then the saga pauses or compensates. */
static int conclude(dctx *d, const char *cancel_why) {
  int f = first_failure(d);
  char *err = NULL;
  if (f >= 0 && d->cur.steps[f].error != NULL &&
      (err = strdup(d->cur.steps[f].error)) == NULL)
    return SK_ENOMEM;
  serr ce = {"Cancelled", "cancel requested", false};
  int rc = SK_OK;
  for (int g = (int)d->n_flat - 1; g >= 0 && rc == SK_OK; g--) {
    if (!step_is_group(d, g) || status_of(d, g) != STEP_STATUS_SCHEDULED)
      continue;
    rc = f >= 0 ? emit_err_text(d, SAGA_EV_STEP_FAILED, g, 1, "error", err, 1)
                : emit_failed(d, SAGA_EV_STEP_FAILED, g, 1, &ce, true);
  }
  if (rc == SK_OK) {
    if (f < 0)
      rc = compensate_cancelled(d, cancel_why);
    else if (d->wf->on_failure == DEF_ON_FAILURE_PAUSE &&
             !d->cur.cancel_requested)
      rc = emit_err_text(d, SAGA_EV_SAGA_PAUSED, -1, 0, "error", err, -1);
    else
      rc = start_compensating(d, err);
  }
  free(err);
  return rc;
}

/* After a step ended while stopping: wait for the steps still in flight. */
static int after_stop(dctx *d) {
  return any_in_flight(d) ? SK_OK : conclude(d, NULL);
}

/* Forward tasks queued before this decision and still in flight are told
 * to stop (those queued by this decision are not in the store yet). */
static int stop_siblings(dctx *d) {
  const saga_state *before = d->given;
  for (size_t k = 0; k < d->n_flat && k < before->n_steps; k++) {
    if (leaf_in_flight(d, (int)k) &&
        before->steps[k].status == STEP_STATUS_SCHEDULED) {
      int rc = add_cancel(d, (int)k);
      if (rc != SK_OK)
        return rc;
    }
  }
  return SK_OK;
}

/* ---- forward ------------------------------------------------------------- */

/* Step i failed for good (attempt 0: before it was ever scheduled). */
static int fail_final(dctx *d, int i, int attempt, const serr *e) {
  int rc = emit_failed(d, SAGA_EV_STEP_FAILED, i, attempt, e, true);
  if (rc != SK_OK)
    return rc;
  if (any_in_flight(d) && (rc = stop_siblings(d)) != SK_OK)
    return rc;
  return after_stop(d);
}

static int schedule_forward(dctx *d, int i);

/* The first step of branch b of group g, or -1 for an empty branch. */
static int branch_first(const dctx *d, int g, int b) {
  for (int k = g + 1; k < d->flat[g].end; k++) {
    if (d->flat[k].parent == g && d->flat[k].branch == b)
      return k;
  }
  return -1;
}

/* A group whose every branch is complete completes. */
static bool group_complete(const dctx *d, int g) {
  for (int k = g + 1; k < d->flat[g].end; k++) {
    if (d->flat[k].parent == g && status_of(d, k) != STEP_STATUS_COMPLETED)
      return false;
  }
  return true;
}

static int complete_saga(dctx *d) {
  cJSON *outputs = cJSON_CreateObject();
  for (size_t k = 0; k < d->cur.n_steps && outputs != NULL; k++) {
    cJSON *v = json_parse(d->cur.steps[k].output);
    if (v == NULL) {
      cJSON_Delete(outputs);
      return SK_EINTERNAL; /* stored outputs are always valid JSON */
    }
    outputs = add(outputs, d->cur.steps[k].name, v);
  }
  return emit(d, SAGA_EV_SAGA_COMPLETED, -1, 0,
              add(cJSON_CreateObject(), "output", outputs));
}

static int advance(dctx *d, int i);

/* Every branch of group g is complete: so is g, with the outputs of the
 * steps of its branches by name as its output. */
static int complete_group(dctx *d, int g) {
  cJSON *outputs = cJSON_CreateObject();
  for (int k = g + 1; k < d->flat[g].end && outputs != NULL; k++) {
    if (d->flat[k].parent != g)
      continue;
    cJSON *v = json_parse(d->cur.steps[k].output);
    if (v == NULL) {
      cJSON_Delete(outputs);
      return SK_EINTERNAL; /* stored outputs are always valid JSON */
    }
    outputs = add(outputs, d->cur.steps[k].name, v);
  }
  cJSON *p = add(cJSON_CreateObject(), "output", outputs);
  p = add(p, "by_fallback", cJSON_CreateBool(false));
  int rc = emit(d, SAGA_EV_STEP_COMPLETED, g, 1, p);
  return rc != SK_OK ? rc : advance(d, g);
}

/* Step i has just completed: go on after it. */
static int advance(dctx *d, int i) {
  if (stopping(d))
    return after_stop(d);
  const flat_step *f = &d->flat[i];
  int next = f->end;
  if ((size_t)next < d->n_flat && d->flat[next].parent == f->parent &&
      d->flat[next].branch == f->branch)
    return schedule_forward(d, next);
  if (f->parent < 0)
    return complete_saga(d);
  if (!group_complete(d, f->parent))
    return SK_OK; /* other branches still run */
  return complete_group(d, f->parent);
}

static int schedule_group(dctx *d, int g) {
  int rc = emit_at(d, SAGA_EV_STEP_SCHEDULED, g, 1, d->now);
  for (size_t b = 0; rc == SK_OK && b < d->flat[g].def->n_branches; b++) {
    if (!running_forward(d) || stopping(d))
      break; /* a branch failed to start: the others are not started */
    int first = branch_first(d, g, (int)b);
    if (first >= 0)
      rc = schedule_forward(d, first);
  }
  /* Only empty branches (the validator forbids them): done at once. */
  if (rc == SK_OK && running_forward(d) && !stopping(d) &&
      status_of(d, g) == STEP_STATUS_SCHEDULED && group_complete(d, g))
    rc = complete_group(d, g);
  return rc;
}

/* Schedules attempt 1 of step i, unless the saga deadline has passed. */
static int schedule_forward(dctx *d, int i) {
  if (d->cur.deadline_ms > 0 && d->now >= d->cur.deadline_ms) {
    serr e = {"SagaTimeout", "saga deadline passed before the step started",
              false};
    return fail_final(d, i, 0, &e);
  }
  if (step_is_group(d, i))
    return schedule_group(d, i);
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

static int emit_completed(dctx *d, const saga_result *r, bool by_fallback) {
  cJSON *out = json_parse(r->output);
  if (out == NULL)
    return SK_EJSON;
  cJSON *p = add(cJSON_CreateObject(), "output", out);
  p = add(p, "by_fallback", cJSON_CreateBool(by_fallback));
  int rc = emit(d, SAGA_EV_STEP_COMPLETED, r->step, r->attempt, p);
  return rc != SK_OK ? rc : advance(d, r->step);
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

/* ---- fallback ------------------------------------------------------------ */

/* The forward attempt's failure (already recorded, not final) hands step i
 * to its fallback: FallbackScheduled + task, or a final failure when its
 * input does not render. */
static int schedule_fallback(dctx *d, int i) {
  saga_task t;
  int rc = build_task(d, i, TASK_KIND_FALLBACK, 1, d->now, &t);
  if (rc == RENDER_FAILED) {
    serr e = {"TemplateError", d->why, false};
    return fail_final(d, i, d->cur.steps[i].attempts, &e);
  }
  if (rc != SK_OK)
    return rc;
  if ((rc = emit_at(d, SAGA_EV_FALLBACK_SCHEDULED, i, 1, t.available_at_ms)) !=
      SK_OK) {
    saga_task_clear(&t);
    return rc;
  }
  return push_task(d, &t);
}

/* Step i's forward attempt `attempt` failed for good: its fallback runs
 * when it has one and the failure allows it, else the step fails. */
static int give_up(dctx *d, int i, int attempt, const serr *e) {
  const def_step *s = d->flat[i].def;
  bool fb = s->fallback != NULL && attempt > 0 && !stopping(d) &&
            strcmp(e->type, "SagaTimeout") != 0 &&
            strcmp(e->type, "Cancelled") != 0;
  if (!fb)
    return fail_final(d, i, attempt, e);
  int rc = emit_failed(d, SAGA_EV_STEP_FAILED, i, attempt, e, false);
  return rc != SK_OK ? rc : schedule_fallback(d, i);
}

/* A failed attempt of step i's forward action or fallback (kind): retry
 * it, or give up. */
static int attempt_failed(dctx *d, const saga_result *r, const serr *e0) {
  bool fb = r->kind == TASK_KIND_FALLBACK;
  def_retry pol;
  task_policy(d, r->step, r->kind, &pol, NULL);
  serr e = *e0;
  char msg[SK_ERROR_MESSAGE_MAX];
  bool retry = policy_allows(&pol, &e, r->attempt) && !stopping(d) &&
               strcmp(e.type, "Cancelled") != 0;
  int64_t delay = 0, at = 0;
  if (retry) {
    delay = saga_backoff_ms(&pol, r->attempt + 1, d->rng);
    at = sat_add(d->now, delay);
    if (d->cur.deadline_ms > 0 && at >= d->cur.deadline_ms) {
      snprintf(msg, sizeof(msg),
               "saga deadline would pass before attempt %d (last error %s: "
               "%s)",
               r->attempt + 1, e0->type, e0->message ? e0->message : "");
      e = (serr){"SagaTimeout", msg, false};
      retry = false;
    }
  }
  saga_task t;
  int rc =
      retry ? build_task(d, r->step, r->kind, r->attempt + 1, at, &t) : SK_OK;
  if (rc < 0)
    return rc;
  if (rc == RENDER_FAILED) {
    e = (serr){"TemplateError", d->why, false};
    retry = false;
  }
  if (retry)
    return emit_retry(d, &t, &e,
                      fb ? SAGA_EV_FALLBACK_FAILED : SAGA_EV_STEP_FAILED, at,
                      delay);
  if (!fb)
    return give_up(d, r->step, r->attempt, &e);
  rc = emit_failed(d, SAGA_EV_FALLBACK_FAILED, r->step, r->attempt, &e, true);
  return rc != SK_OK
             ? rc
             : fail_final(d, r->step, d->cur.steps[r->step].attempts, &e);
}

/* ---- compensation results ------------------------------------------------ */

static int comp_ok(dctx *d, const saga_result *r) {
  cJSON *out = json_parse(r->output);
  if (out == NULL)
    return SK_EJSON;
  int rc = emit(d, SAGA_EV_COMPENSATION_COMPLETED, r->step, r->attempt,
                add(cJSON_CreateObject(), "output", out));
  return rc != SK_OK ? rc : next_comp(d);
}

static int comp_failed(dctx *d, const saga_result *r, const serr *e) {
  def_retry pol;
  task_policy(d, r->step, TASK_KIND_COMP, &pol, NULL);
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

/* ---- entry points -------------------------------------------------------- */

/* Refuses definitions this decider cannot run. */
static int check_steps(const def_step *steps, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const def_step *s = &steps[i];
    bool group = s->action.kind == DEF_KIND_PARALLEL;
    if (group != (s->n_branches > 0) ||
        (s->compensate != NULL && s->compensate->kind != DEF_KIND_TASK &&
         s->compensate->kind != DEF_KIND_HTTP) ||
        (s->fallback != NULL && s->fallback->kind != DEF_KIND_TASK &&
         s->fallback->kind != DEF_KIND_HTTP) ||
        (s->fallback_compensate != NULL && s->fallback == NULL) ||
        (group && (s->compensate != NULL || s->fallback != NULL)))
      return SK_ENOTSUP;
    for (size_t b = 0; b < s->n_branches; b++) {
      int rc = check_steps(s->branches[b].steps, s->branches[b].n_steps);
      if (rc != SK_OK)
        return rc;
    }
  }
  return SK_OK;
}

/* The definition must be the one the saga runs: same identity and the
 * same flattened tree. */
static int check_pair(const dctx *d, const saga_state *st) {
  const def_workflow *wf = d->wf;
  if (st->workflow == NULL || wf->name == NULL ||
      strcmp(wf->name, st->workflow) != 0 || wf->version != st->version ||
      d->n_flat != st->n_steps)
    return SK_EINVAL;
  for (size_t k = 0; k < d->n_flat; k++) {
    const saga_step_state *s = &st->steps[k];
    if (s->name == NULL || d->flat[k].def->name == NULL ||
        strcmp(s->name, d->flat[k].def->name) != 0 ||
        s->parent != d->flat[k].parent || s->branch != d->flat[k].branch)
      return SK_EINVAL;
  }
  return check_steps(wf->steps, wf->n_steps);
}

/* Sets up d for a decision on st (an existing saga). */
static int begin(dctx *d, const def_workflow *wf, const saga_state *st,
                 const char *node, int64_t now, saga_rng *rng,
                 saga_decision *out) {
  saga_decision_init(out);
  if (wf == NULL || st == NULL)
    return SK_EINVAL;
  int rc = dctx_init(d, wf, st, node, now, rng, out);
  if (rc != SK_OK)
    return rc;
  if ((rc = check_pair(d, st)) != SK_OK)
    dctx_free(d);
  return rc;
}

static int finish(dctx *d, int rc) {
  dctx_free(d);
  if (rc != SK_OK)
    saga_decision_clear(d->out);
  return rc;
}

static cJSON *int_array(const dctx *d, bool parents) {
  cJSON *a = cJSON_CreateArray();
  for (size_t k = 0; k < d->n_flat && a != NULL; k++) {
    cJSON *n = json_num(parents ? d->flat[k].parent : d->flat[k].branch);
    if (n == NULL || !cJSON_AddItemToArray(a, n)) {
      cJSON_Delete(n);
      cJSON_Delete(a);
      a = NULL;
    }
  }
  return a;
}

static cJSON *start_payload(const dctx *d, const char *id, cJSON *input,
                            const char *key, const char *replay_of,
                            int64_t deadline) {
  cJSON *names = cJSON_CreateArray();
  bool tree = false;
  for (size_t k = 0; k < d->n_flat && names != NULL; k++) {
    cJSON *n = cJSON_CreateString(d->flat[k].def->name);
    tree = tree || d->flat[k].parent >= 0;
    if (n == NULL || !cJSON_AddItemToArray(names, n)) {
      cJSON_Delete(n);
      cJSON_Delete(names);
      names = NULL;
    }
  }
  cJSON *p = add(cJSON_CreateObject(), "id", cJSON_CreateString(id));
  p = add(p, "workflow", cJSON_CreateString(d->wf->name));
  p = add(p, "version", json_num(d->wf->version));
  p = add(p, "input", input);
  p = add(p, "steps", names);
  p = add(p, "deadline_ms", json_num(deadline));
  p = add(p, "idempotency_key", json_str_or_null(key));
  p = add(p, "replay_of", json_str_or_null(replay_of));
  if (tree) {
    p = add(p, "parents", int_array(d, true));
    p = add(p, "branches", int_array(d, false));
  }
  return p;
}

int saga_decide_start(const def_workflow *wf, const char *new_id,
                      const char *input, const char *idempotency_key,
                      const char *replay_of, int64_t now_ms, saga_rng *rng,
                      saga_decision *out) {
  saga_decision_init(out);
  if (wf == NULL || wf->name == NULL || new_id == NULL ||
      strlen(new_id) >= SK_ID_LEN)
    return SK_EINVAL;
  int rc = check_steps(wf->steps, wf->n_steps);
  if (rc != SK_OK)
    return rc;
  cJSON *in = cJSON_Parse(input != NULL ? input : "{}");
  if (!cJSON_IsObject(in)) {
    cJSON_Delete(in);
    return SK_EJSON;
  }
  int64_t deadline = wf->timeout_ms > 0 ? sat_add(now_ms, wf->timeout_ms) : 0;
  /* The rest is decided against the state SagaStarted creates. */
  saga_state st;
  saga_state_init(&st);
  dctx d;
  if ((rc = dctx_init(&d, wf, &st, NULL, now_ms, rng, out)) != SK_OK) {
    cJSON_Delete(in);
    return rc;
  }
  rc =
      emit(&d, SAGA_EV_SAGA_STARTED, -1, 0,
           start_payload(&d, new_id, in, idempotency_key, replay_of, deadline));
  if (rc == SK_OK)
    rc = d.n_flat > 0 ? schedule_forward(&d, 0) : complete_saga(&d);
  return finish(&d, rc);
}

static bool result_matches(const dctx *d, const saga_result *r) {
  const saga_state *st = d->given;
  if (r->step < 0 || (size_t)r->step >= st->n_steps)
    return false;
  const saga_step_state *s = &st->steps[r->step];
  if (r->kind == TASK_KIND_FWD || r->kind == TASK_KIND_FALLBACK) {
    bool fb = r->kind == TASK_KIND_FALLBACK;
    return st->status == SAGA_STATUS_RUNNING &&
           st->phase == SAGA_PHASE_FORWARD && !step_is_group(d, r->step) &&
           s->status == STEP_STATUS_SCHEDULED && (s->fb_attempts > 0) == fb &&
           r->attempt == (fb ? s->fb_attempts : s->attempts);
  }
  return r->kind == TASK_KIND_COMP && r->step == st->cursor &&
         st->status == SAGA_STATUS_COMPENSATING &&
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
  dctx d;
  int rc = begin(&d, wf, st, node, now_ms, rng, out);
  if (rc != SK_OK)
    return rc;
  if (saga_status_settled(st->status) || !result_matches(&d, r))
    return finish(&d, SK_ESTATE);
  serr e = {r->err_type && r->err_type[0] ? r->err_type : "Error",
            r->err_message ? r->err_message : "", r->err_retryable};
  if (r->kind == TASK_KIND_COMP)
    rc = r->ok ? comp_ok(&d, r) : comp_failed(&d, r, &e);
  else
    rc = r->ok ? emit_completed(&d, r, r->kind == TASK_KIND_FALLBACK)
               : attempt_failed(&d, r, &e);
  return finish(&d, rc);
}

int saga_decide_cancel(const def_workflow *wf, const saga_state *st,
                       const char *reason, const char *node, int64_t now_ms,
                       saga_rng *rng, saga_decision *out) {
  dctx d;
  int rc = begin(&d, wf, st, node, now_ms, rng, out);
  if (rc != SK_OK)
    return rc;
  if (saga_status_settled(st->status) && st->status != SAGA_STATUS_PAUSED)
    return finish(&d, SK_ESTATE);
  if (st->cancel_requested)
    return finish(&d, SK_OK);
  rc = emit(&d, SAGA_EV_CANCEL_REQUESTED, -1, 0,
            add(cJSON_CreateObject(), "reason", json_str_or_null(reason)));
  if (rc != SK_OK || st->status == SAGA_STATUS_COMPENSATING)
    return finish(&d, rc);
  if (st->status == SAGA_STATUS_PAUSED)
    return finish(&d, compensate_cancelled(&d, reason));
  /* Running: the steps in flight are told to stop; their results (whatever
   * they are) then lead to the compensation. */
  if (any_in_flight(&d))
    rc = stop_siblings(&d);
  else
    rc = conclude(&d, reason);
  return finish(&d, rc);
}

int saga_decide_breaker_open(const def_workflow *wf, const saga_state *st,
                             int step, const char *node, int64_t now_ms,
                             saga_rng *rng, saga_decision *out) {
  dctx d;
  int rc = begin(&d, wf, st, node, now_ms, rng, out);
  if (rc != SK_OK)
    return rc;
  if (step < 0 || (size_t)step >= d.n_flat ||
      d.flat[step].def->fallback == NULL ||
      !d.flat[step].def->fallback_on_breaker_open)
    return finish(&d, SK_EINVAL);
  const saga_step_state *s = &st->steps[step];
  if (!running_forward(&d) || stopping(&d) ||
      s->status != STEP_STATUS_SCHEDULED || s->fb_attempts != 0)
    return finish(&d, SK_ESTATE);
  serr e = {"BreakerOpen", "circuit breaker open; running the fallback", false};
  rc = add_cancel(&d, step);
  if (rc == SK_OK)
    rc = emit_failed(&d, SAGA_EV_STEP_FAILED, step, s->attempts, &e, false);
  if (rc == SK_OK)
    rc = schedule_fallback(&d, step);
  return finish(&d, rc);
}

static int replay_failed(dctx *d, const saga_replay *req) {
  const saga_state *st = d->given;
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

/* The flat index of a top-level step named `name`, or -1. */
static int top_level_index(const dctx *d, const char *name) {
  for (size_t k = 0; k < d->n_flat; k++) {
    if (d->flat[k].parent < 0 && strcmp(d->flat[k].def->name, name) == 0)
      return (int)k;
  }
  return -1;
}

static int replay_paused(dctx *d, const saga_replay *req) {
  const saga_state *st = d->given;
  int from = st->cursor;
  if (req != NULL && req->from_step != NULL)
    from = top_level_index(d, req->from_step);
  if (from < 0 || from > st->cursor || d->flat[from].parent >= 0)
    return SK_EINVAL;
  cJSON *in = NULL;
  if (req != NULL && req->step_input != NULL &&
      (in = cJSON_Parse(req->step_input)) == NULL)
    return SK_EJSON;
  cJSON *p = add(cJSON_CreateObject(), "mode", cJSON_CreateString("resume"));
  p = add(p, "from_step", cJSON_CreateString(st->steps[from].name));
  p = add(p, "step_input", in != NULL ? in : cJSON_CreateNull());
  /* Evolving Replayed resets the steps from `from` on and keeps the input
   * override in the state, where build_task finds it. */
  int rc = emit(d, SAGA_EV_REPLAYED, from, 0, p);
  return rc != SK_OK ? rc : schedule_forward(d, from);
}

int saga_decide_replay(const def_workflow *wf, const saga_state *st,
                       const saga_replay *req, const char *node, int64_t now_ms,
                       saga_rng *rng, saga_decision *out) {
  dctx d;
  int rc = begin(&d, wf, st, node, now_ms, rng, out);
  if (rc != SK_OK)
    return rc;
  if (st->status == SAGA_STATUS_FAILED)
    return finish(&d, replay_failed(&d, req));
  if (st->status == SAGA_STATUS_PAUSED)
    return finish(&d, replay_paused(&d, req));
  return finish(&d, SK_ESTATE);
}

int saga_decide_link(const saga_state *st, const char *new_id, const char *node,
                     int64_t now_ms, saga_decision *out) {
  saga_decision_init(out);
  if (st == NULL || new_id == NULL || st->workflow == NULL)
    return SK_EINVAL;
  if (st->phase != SAGA_PHASE_DONE)
    return SK_ESTATE;
  dctx d;
  int rc = dctx_init(&d, NULL, st, node, now_ms, NULL, out);
  if (rc != SK_OK)
    return rc;
  rc = emit(
      &d, SAGA_EV_REPLAY_LINKED, -1, 0,
      add(cJSON_CreateObject(), "replayed_by", cJSON_CreateString(new_id)));
  return finish(&d, rc);
}
