/*
 * evolve.c — saga_evolve: the one function that changes a saga's state,
 * one event at a time; saga_fold and saga_apply are loops over it.
 *
 * Every event handler works in three stages: check that the event is
 * possible in the current state (else SK_ESTATE), read and allocate what the
 * payload carries (else SK_EJSON / SK_ENOMEM), then commit with operations
 * that cannot fail. So an event that is refused leaves the state exactly as
 * it was, and the sequence number only moves on success.
 *
 * Parallel groups (saga.h "flattening"): SagaStarted carries the tree
 * (parents/branches) so every rule here works from events alone. A step may
 * start when the step before it in its sequence completed, or, first in a
 * branch, when its group runs; several steps may be in flight, so forward
 * events name their step and attempt rather than follow the cursor. Once a
 * step failed for good while the saga still runs forward, nothing new may
 * start or retry (the siblings drain); a group ends (completed / failed)
 * only when nothing under it runs. Fallbacks: FallbackScheduled moves an
 * in-flight step to its fallback (fb_attempts > 0); from then on only
 * fallback attempts and the step's final StepFailed are accepted.
 *
 * JSON values (input, outputs, errors) are stored as compact cJSON text, so
 * equal payloads always give byte-equal state text; JSON null is stored as
 * NULL.
 *
 * Thread: any; the state is the caller's.
 */
#include "saga/saga.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/err.h"

/* Integers in payloads travel as JSON numbers (doubles): exact to 2^53. */
#define JSON_INT_MAX 9007199254740992.0

/* ---- payload readers ------------------------------------------------------
 */

/* The compact text of obj[key] (NULL for JSON null). An absent key is
 * SK_EJSON if required, else NULL. */
static int get_raw(const cJSON *obj, const char *key, bool required,
                   char **out) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
  *out = NULL;
  if (it == NULL)
    return required ? SK_EJSON : SK_OK;
  if (cJSON_IsNull(it))
    return SK_OK;
  *out = cJSON_PrintUnformatted(it);
  return *out != NULL ? SK_OK : SK_ENOMEM;
}

/* Like get_raw, for values that must be JSON objects (errors, reasons). */
static int get_object(const cJSON *obj, const char *key, char **out) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
  *out = NULL;
  if (!cJSON_IsObject(it))
    return SK_EJSON;
  *out = cJSON_PrintUnformatted(it);
  return *out != NULL ? SK_OK : SK_ENOMEM;
}

/* A copy of obj[key] if it is a string, NULL if null or absent (absent is
 * SK_EJSON when required). */
static int get_str(const cJSON *obj, const char *key, bool required,
                   char **out) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
  *out = NULL;
  if (it == NULL)
    return required ? SK_EJSON : SK_OK;
  if (cJSON_IsNull(it))
    return SK_OK;
  if (!cJSON_IsString(it) || it->valuestring == NULL)
    return SK_EJSON;
  *out = strdup(it->valuestring);
  return *out != NULL ? SK_OK : SK_ENOMEM;
}

static int get_i64(const cJSON *obj, const char *key, bool required,
                   int64_t *out) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (it == NULL) {
    *out = 0;
    return required ? SK_EJSON : SK_OK;
  }
  double v = cJSON_IsNumber(it) ? it->valuedouble : NAN;
  if (!(v >= -JSON_INT_MAX && v <= JSON_INT_MAX) || v != floor(v))
    return SK_EJSON;
  *out = (int64_t)v;
  return SK_OK;
}

static int get_bool(const cJSON *obj, const char *key, bool required,
                    bool *out) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
  *out = false;
  if (it == NULL)
    return required ? SK_EJSON : SK_OK;
  if (!cJSON_IsBool(it))
    return SK_EJSON;
  *out = cJSON_IsTrue(it);
  return SK_OK;
}

static void set_str(char **slot, char *v) {
  free(*slot);
  *slot = v;
}

/* ---- state helpers
 * ------------------------------------------------------------ */

static saga_step_state *ev_step(saga_state *st, const saga_event *ev) {
  if (ev->step < 0 || (size_t)ev->step >= st->n_steps)
    return NULL;
  return &st->steps[ev->step];
}

static bool forward_running(const saga_state *st) {
  return st->status == SAGA_STATUS_RUNNING && st->phase == SAGA_PHASE_FORWARD;
}

static bool compensating(const saga_state *st) {
  return st->status == SAGA_STATUS_COMPENSATING &&
         st->phase == SAGA_PHASE_COMPENSATING;
}

static bool any_step_in(const saga_state *st, step_status s) {
  for (size_t i = 0; i < st->n_steps; i++) {
    if (st->steps[i].status == s)
      return true;
  }
  return false;
}

/* The step before i in its sequence (top level or one branch), or -1. */
static int prev_sibling(const saga_state *st, int i) {
  for (int j = i - 1; j >= 0; j--) {
    if (st->steps[j].parent == st->steps[i].parent &&
        st->steps[j].branch == st->steps[i].branch)
      return j;
  }
  return -1;
}

/* Forward progress reached step i: the step before it in its sequence
 * completed, or it opens a branch of a group that is running. */
static bool predecessors_done(const saga_state *st, int i) {
  int p = prev_sibling(st, i);
  if (p >= 0)
    return st->steps[p].status == STEP_STATUS_COMPLETED;
  int g = st->steps[i].parent;
  return g < 0 || st->steps[g].status == STEP_STATUS_SCHEDULED;
}

/* True if step j lies under group g (at any depth). */
static bool under(const saga_state *st, int j, int g) {
  for (int p = st->steps[j].parent; p >= 0; p = st->steps[p].parent) {
    if (p == g)
      return true;
  }
  return false;
}

static bool is_group(const saga_state *st, int i) {
  for (size_t j = (size_t)i + 1; j < st->n_steps; j++) {
    if (st->steps[j].parent == i)
      return true;
  }
  return false;
}

/* A step failed for good while the saga still runs forward: parallel
 * siblings are being drained, nothing new may start. */
static bool draining(const saga_state *st) {
  return forward_running(st) && any_step_in(st, STEP_STATUS_FAILED);
}

static void settle(saga_state *st, saga_status s) {
  st->status = s;
  st->phase = SAGA_PHASE_DONE;
  st->cursor = -1;
  for (size_t i = 0; i < st->n_steps; i++) {
    if (st->steps[i].status == STEP_STATUS_PENDING)
      st->steps[i].status = STEP_STATUS_SKIPPED;
  }
}

static void reset_step(saga_step_state *s) {
  char *name = s->name;
  int parent = s->parent, branch = s->branch;
  free(s->output);
  free(s->error);
  free(s->comp_error);
  free(s->input_override);
  memset(s, 0, sizeof(*s));
  s->name = name;
  s->parent = parent;
  s->branch = branch;
  s->status = STEP_STATUS_PENDING;
}

/* ---- SagaStarted
 * ------------------------------------------------------------------ */

static int read_step_names(const cJSON *p, char ***names, size_t *n) {
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(p, "steps");
  *names = NULL;
  *n = 0;
  if (!cJSON_IsArray(arr))
    return SK_EJSON;
  size_t cnt = (size_t)cJSON_GetArraySize(arr);
  if (cnt == 0)
    return SK_OK;
  char **v = calloc(cnt, sizeof(*v));
  if (v == NULL)
    return SK_ENOMEM;
  size_t i = 0;
  const cJSON *it;
  int rc = SK_OK;
  cJSON_ArrayForEach(it, arr) {
    if (!cJSON_IsString(it) || it->valuestring == NULL) {
      rc = SK_EJSON;
      break;
    }
    if ((v[i++] = strdup(it->valuestring)) == NULL) {
      rc = SK_ENOMEM;
      break;
    }
  }
  if (rc != SK_OK) {
    for (size_t k = 0; k < cnt; k++)
      free(v[k]);
    free(v);
    return rc;
  }
  *names = v;
  *n = cnt;
  return SK_OK;
}

typedef struct started {
  char *id, *workflow, *input, *key, *replay_of;
  char **names;
  size_t n;
  int64_t version, deadline;
  int *parents, *branches; /* NULL: all top level */
} started;

/* Optional int array `key` of n entries in [-1, limit_i) where limit_i is
 * the entry's own index for parents (a group precedes its steps). */
static int read_ints(const cJSON *p, const char *key, size_t n, bool parents,
                     int **out) {
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(p, key);
  *out = NULL;
  if (arr == NULL)
    return SK_OK;
  if (!cJSON_IsArray(arr) || (size_t)cJSON_GetArraySize(arr) != n)
    return SK_EJSON;
  if (n == 0)
    return SK_OK;
  int *v = calloc(n, sizeof(*v));
  if (v == NULL)
    return SK_ENOMEM;
  size_t i = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, arr) {
    double x = cJSON_IsNumber(it) ? it->valuedouble : NAN;
    double hi = parents ? (double)i : 1e6;
    if (!(x >= -1 && x < hi) || x != floor(x)) {
      free(v);
      return SK_EJSON;
    }
    v[i++] = (int)x;
  }
  *out = v;
  return SK_OK;
}

static void started_free(started *s) {
  free(s->id);
  free(s->workflow);
  free(s->input);
  free(s->key);
  free(s->replay_of);
  for (size_t i = 0; i < s->n; i++)
    free(s->names[i]);
  free(s->names);
  free(s->parents);
  free(s->branches);
}

static int read_started(const cJSON *p, started *s) {
  int rc;
  if ((rc = get_str(p, "id", false, &s->id)) != SK_OK ||
      (rc = get_str(p, "workflow", true, &s->workflow)) != SK_OK ||
      (rc = get_i64(p, "version", true, &s->version)) != SK_OK ||
      (rc = get_object(p, "input", &s->input)) != SK_OK ||
      (rc = get_i64(p, "deadline_ms", false, &s->deadline)) != SK_OK ||
      (rc = get_str(p, "idempotency_key", false, &s->key)) != SK_OK ||
      (rc = get_str(p, "replay_of", false, &s->replay_of)) != SK_OK ||
      (rc = read_step_names(p, &s->names, &s->n)) != SK_OK ||
      (rc = read_ints(p, "parents", s->n, true, &s->parents)) != SK_OK ||
      (rc = read_ints(p, "branches", s->n, false, &s->branches)) != SK_OK)
    return rc;
  if ((s->parents == NULL) != (s->branches == NULL))
    return SK_EJSON;
  for (size_t i = 0; s->parents != NULL && i < s->n; i++) {
    if ((s->parents[i] < 0) != (s->branches[i] < 0))
      return SK_EJSON;
  }
  if (s->workflow == NULL || s->version < 0 || s->version > INT32_MAX ||
      s->deadline < 0 ||
      (s->id != NULL && strlen(s->id) >= sizeof(((saga_state *)0)->id)))
    return SK_EJSON;
  return SK_OK;
}

static int ev_saga_started(saga_state *st, const saga_event *ev,
                           const cJSON *p) {
  if (st->workflow != NULL || st->n_steps != 0)
    return SK_ESTATE;
  started s = {0};
  saga_step_state *steps = NULL;
  int rc = read_started(p, &s);
  if (rc == SK_OK && s.n > 0 && (steps = calloc(s.n, sizeof(*steps))) == NULL)
    rc = SK_ENOMEM;
  if (rc != SK_OK) {
    started_free(&s);
    return rc;
  }
  for (size_t i = 0; i < s.n; i++) {
    steps[i].name = s.names[i];
    steps[i].status = STEP_STATUS_PENDING;
    steps[i].parent = s.parents != NULL ? s.parents[i] : -1;
    steps[i].branch = s.branches != NULL ? s.branches[i] : -1;
  }
  free(s.parents);
  free(s.branches);
  free(s.names);
  if (s.id != NULL)
    memcpy(st->id, s.id, strlen(s.id) + 1);
  free(s.id);
  st->workflow = s.workflow;
  st->version = (int)s.version;
  st->input = s.input;
  st->idempotency_key = s.key;
  st->replay_of = s.replay_of;
  st->deadline_ms = s.deadline;
  st->steps = steps;
  st->n_steps = s.n;
  st->status = SAGA_STATUS_RUNNING;
  st->phase = SAGA_PHASE_FORWARD;
  st->cursor = s.n > 0 ? 0 : -1;
  st->created_ms = ev->ts_ms;
  return SK_OK;
}

/* ---- forward events
 * ----------------------------------------------------------------- */

static int ev_step_scheduled(saga_state *st, const saga_event *ev,
                             const cJSON *p) {
  saga_step_state *s = ev_step(st, ev);
  if (s == NULL || !forward_running(st) || st->cancel_requested ||
      draining(st) || s->status != STEP_STATUS_PENDING || ev->attempt != 1 ||
      !predecessors_done(st, ev->step))
    return SK_ESTATE;
  int64_t at;
  int rc = get_i64(p, "available_at_ms", true, &at);
  if (rc != SK_OK)
    return rc;
  s->status = STEP_STATUS_SCHEDULED;
  s->attempts = 1;
  s->scheduled_ms = ev->ts_ms;
  s->available_at_ms = at;
  st->cursor = ev->step;
  return SK_OK;
}

/* The forward attempt (fb: the fallback attempt) the event names is the
 * one in flight. */
static bool in_flight(const saga_state *st, const saga_step_state *s,
                      const saga_event *ev, bool fb) {
  if (s == NULL || !forward_running(st) || s->status != STEP_STATUS_SCHEDULED)
    return false;
  return fb ? s->fb_attempts > 0 && ev->attempt == s->fb_attempts
            : s->fb_attempts == 0 && ev->attempt == s->attempts;
}

/* Nothing under group g is still running forward. */
static bool group_quiet(const saga_state *st, int g) {
  for (size_t j = (size_t)g + 1; j < st->n_steps; j++) {
    if (under(st, (int)j, g) && st->steps[j].status == STEP_STATUS_SCHEDULED)
      return false;
  }
  return true;
}

static bool group_done(const saga_state *st, int g) {
  for (size_t j = (size_t)g + 1; j < st->n_steps; j++) {
    if (st->steps[j].parent == g &&
        st->steps[j].status != STEP_STATUS_COMPLETED)
      return false;
  }
  return true;
}

static int ev_step_completed(saga_state *st, const saga_event *ev,
                             const cJSON *p) {
  saga_step_state *s = ev_step(st, ev);
  char *out;
  bool fb;
  int rc = get_bool(p, "by_fallback", false, &fb);
  if (rc != SK_OK)
    return rc;
  if (!in_flight(st, s, ev, fb) ||
      (is_group(st, ev->step) && (fb || !group_done(st, ev->step))))
    return SK_ESTATE;
  if ((rc = get_raw(p, "output", true, &out)) != SK_OK)
    return rc;
  set_str(&s->output, out);
  s->status = STEP_STATUS_COMPLETED;
  s->by_fallback = fb;
  s->finished_ms = ev->ts_ms;
  s->finished_seq = ev->seq;
  return SK_OK;
}

static int ev_step_failed(saga_state *st, const saga_event *ev,
                          const cJSON *p) {
  saga_step_state *s = ev_step(st, ev);
  bool final;
  int rc = get_bool(p, "final", true, &final);
  if (rc != SK_OK)
    return rc;
  /* A step can also fail before it is scheduled (template error, saga
   * deadline): then it is pending, attempt 0, and the failure is final. */
  bool unscheduled = s != NULL && forward_running(st) &&
                     s->status == STEP_STATUS_PENDING && ev->attempt == 0 &&
                     final && predecessors_done(st, ev->step);
  /* A final failure also ends a step whose fallback failed for good (it
   * carries the forward attempt count) and a group (nothing under it may
   * still run). */
  bool ok = in_flight(st, s, ev, false);
  if (!ok && final && s != NULL && forward_running(st) &&
      s->status == STEP_STATUS_SCHEDULED && ev->attempt == s->attempts)
    ok = s->fb_attempts > 0 || is_group(st, ev->step);
  if (ok && is_group(st, ev->step) && (!final || !group_quiet(st, ev->step)))
    ok = false;
  if (!unscheduled && !ok)
    return SK_ESTATE;
  char *err;
  if ((rc = get_object(p, "error", &err)) != SK_OK)
    return rc;
  set_str(&s->error, err);
  st->cursor = ev->step;
  if (final) {
    s->status = STEP_STATUS_FAILED;
    s->finished_ms = ev->ts_ms;
    s->finished_seq = ev->seq;
  }
  return SK_OK;
}

static int ev_fallback_scheduled(saga_state *st, const saga_event *ev,
                                 const cJSON *p) {
  saga_step_state *s = ev_step(st, ev);
  if (s == NULL || !forward_running(st) || st->cancel_requested ||
      draining(st) || s->status != STEP_STATUS_SCHEDULED ||
      s->fb_attempts != 0 || ev->attempt != 1 || is_group(st, ev->step))
    return SK_ESTATE;
  int64_t at;
  int rc = get_i64(p, "available_at_ms", true, &at);
  if (rc != SK_OK)
    return rc;
  s->fb_attempts = 1;
  s->available_at_ms = at;
  st->cursor = ev->step;
  return SK_OK;
}

static int ev_fallback_failed(saga_state *st, const saga_event *ev,
                              const cJSON *p) {
  saga_step_state *s = ev_step(st, ev);
  if (!in_flight(st, s, ev, true))
    return SK_ESTATE;
  bool final;
  char *err;
  int rc = get_bool(p, "final", true, &final);
  if (rc != SK_OK || (rc = get_object(p, "error", &err)) != SK_OK)
    return rc;
  set_str(&s->error, err);
  return SK_OK;
}

static int ev_retry_scheduled(saga_state *st, const saga_event *ev,
                              const cJSON *p) {
  saga_step_state *s = ev_step(st, ev);
  char *kind;
  int64_t at, delay;
  int rc = get_str(p, "kind", true, &kind);
  if (rc != SK_OK)
    return rc;
  bool fwd = kind != NULL && strcmp(kind, "fwd") == 0;
  bool comp = kind != NULL && strcmp(kind, "comp") == 0;
  bool fb = kind != NULL && strcmp(kind, "fallback") == 0;
  free(kind);
  if ((!fwd && !comp && !fb) ||
      (rc = get_i64(p, "available_at_ms", true, &at)) != SK_OK ||
      (rc = get_i64(p, "delay_ms", false, &delay)) != SK_OK)
    return rc != SK_OK ? rc : SK_EJSON;
  if (s == NULL)
    return SK_ESTATE;
  if (fwd || fb) {
    if (!forward_running(st) || st->cancel_requested || draining(st) ||
        s->status != STEP_STATUS_SCHEDULED || (s->fb_attempts > 0) != fb ||
        ev->attempt != (fb ? s->fb_attempts : s->attempts) + 1)
      return SK_ESTATE;
    if (fb)
      s->fb_attempts = ev->attempt;
    else
      s->attempts = ev->attempt;
  } else {
    if (ev->step != st->cursor)
      return SK_ESTATE;
    if (!compensating(st) || s->status != STEP_STATUS_COMPENSATING ||
        ev->attempt != s->comp_attempts + 1)
      return SK_ESTATE;
    s->comp_attempts = ev->attempt;
  }
  s->available_at_ms = at;
  return SK_OK;
}

/* ---- compensation events
 * ---------------------------------------------------------------- */

static int ev_compensation_started(saga_state *st, const saga_event *ev,
                                   const cJSON *p) {
  if (st->phase != SAGA_PHASE_FORWARD ||
      (st->status != SAGA_STATUS_RUNNING && st->status != SAGA_STATUS_PAUSED) ||
      any_step_in(st, STEP_STATUS_SCHEDULED))
    return SK_ESTATE;
  char *reason;
  int rc = get_object(p, "reason", &reason);
  if (rc != SK_OK)
    return rc;
  set_str(&st->error, reason);
  st->status = SAGA_STATUS_COMPENSATING;
  st->phase = SAGA_PHASE_COMPENSATING;
  return SK_OK;
}

static int ev_compensation_scheduled(saga_state *st, const saga_event *ev,
                                     const cJSON *p) {
  saga_step_state *s = ev_step(st, ev);
  if (s == NULL || !compensating(st) || ev->attempt != 1 ||
      s->comp_attempts != 0 || any_step_in(st, STEP_STATUS_COMPENSATING))
    return SK_ESTATE;
  if (s->status != STEP_STATUS_COMPLETED && s->status != STEP_STATUS_FAILED &&
      s->status != STEP_STATUS_COMPENSATION_FAILED)
    return SK_ESTATE;
  int64_t at;
  int rc = get_i64(p, "available_at_ms", true, &at);
  if (rc != SK_OK)
    return rc;
  s->status = STEP_STATUS_COMPENSATING;
  s->comp_attempts = 1;
  s->scheduled_ms = ev->ts_ms;
  s->available_at_ms = at;
  st->cursor = ev->step;
  return SK_OK;
}

static bool comp_in_flight(const saga_state *st, const saga_step_state *s,
                           const saga_event *ev) {
  return s != NULL && compensating(st) && ev->step == st->cursor &&
         s->status == STEP_STATUS_COMPENSATING &&
         ev->attempt == s->comp_attempts;
}

static int ev_compensation_completed(saga_state *st, const saga_event *ev,
                                     const cJSON *p) {
  saga_step_state *s = ev_step(st, ev);
  if (!comp_in_flight(st, s, ev))
    return SK_ESTATE;
  s->status = STEP_STATUS_COMPENSATED;
  return SK_OK;
}

static int ev_compensation_failed(saga_state *st, const saga_event *ev,
                                  const cJSON *p) {
  saga_step_state *s = ev_step(st, ev);
  if (!comp_in_flight(st, s, ev))
    return SK_ESTATE;
  bool final;
  char *err;
  int rc = get_bool(p, "final", true, &final);
  if (rc != SK_OK || (rc = get_object(p, "error", &err)) != SK_OK)
    return rc;
  set_str(&s->comp_error, err);
  if (final)
    s->status = STEP_STATUS_COMPENSATION_FAILED;
  return SK_OK;
}

/* ---- saga endings
 * ---------------------------------------------------------------------- */

static int ev_saga_completed(saga_state *st, const saga_event *ev,
                             const cJSON *p) {
  if (!forward_running(st) || st->cancel_requested)
    return SK_ESTATE;
  for (size_t i = 0; i < st->n_steps; i++) {
    if (st->steps[i].status != STEP_STATUS_COMPLETED)
      return SK_ESTATE;
  }
  char *out;
  int rc = get_object(p, "output", &out);
  if (rc != SK_OK)
    return rc;
  set_str(&st->output, out);
  settle(st, SAGA_STATUS_COMPLETED);
  return SK_OK;
}

/* SagaCompensated (cancelled = false) and SagaCancelled: every compensation
 * has finished. */
static int ev_compensation_done(saga_state *st, bool cancelled) {
  if (!compensating(st) || st->cancel_requested != cancelled ||
      any_step_in(st, STEP_STATUS_COMPENSATING) ||
      any_step_in(st, STEP_STATUS_COMPENSATION_FAILED))
    return SK_ESTATE;
  settle(st, cancelled ? SAGA_STATUS_CANCELLED : SAGA_STATUS_COMPENSATED);
  return SK_OK;
}

static int ev_saga_failed(saga_state *st, const saga_event *ev,
                          const cJSON *p) {
  if (!compensating(st) || st->cursor < 0 ||
      st->steps[st->cursor].status != STEP_STATUS_COMPENSATION_FAILED)
    return SK_ESTATE;
  char *err;
  int rc = get_object(p, "error", &err);
  if (rc != SK_OK)
    return rc;
  free(err); /* the step's comp_error already holds it */
  st->status = SAGA_STATUS_FAILED;
  return SK_OK;
}

static int ev_saga_paused(saga_state *st, const saga_event *ev,
                          const cJSON *p) {
  if (!forward_running(st) || st->cursor < 0 ||
      st->steps[st->cursor].status != STEP_STATUS_FAILED ||
      any_step_in(st, STEP_STATUS_SCHEDULED))
    return SK_ESTATE;
  char *err;
  int rc = get_object(p, "error", &err);
  if (rc != SK_OK)
    return rc;
  set_str(&st->error, err);
  st->status = SAGA_STATUS_PAUSED;
  return SK_OK;
}

static int ev_cancel_requested(saga_state *st, const saga_event *ev,
                               const cJSON *p) {
  if (st->cancel_requested || (st->status != SAGA_STATUS_RUNNING &&
                               st->status != SAGA_STATUS_COMPENSATING &&
                               st->status != SAGA_STATUS_PAUSED))
    return SK_ESTATE;
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(p, "reason");
  if (r != NULL && !cJSON_IsString(r) && !cJSON_IsNull(r))
    return SK_EJSON;
  st->cancel_requested = true;
  return SK_OK;
}

/* ---- replays
 * -----------------------------------------------------------------------------
 */

static int replay_resume_compensation(saga_state *st, const saga_event *ev) {
  if (st->status != SAGA_STATUS_FAILED || st->cursor < 0 ||
      st->steps[st->cursor].status != STEP_STATUS_COMPENSATION_FAILED ||
      (ev->step >= 0 && ev->step != st->cursor))
    return SK_ESTATE;
  st->steps[st->cursor].comp_attempts = 0;
  st->status = SAGA_STATUS_COMPENSATING;
  return SK_OK;
}

static int replay_resume(saga_state *st, const saga_event *ev, const cJSON *p) {
  const cJSON *from = cJSON_GetObjectItemCaseSensitive(p, "from_step");
  if (!cJSON_IsString(from) || from->valuestring == NULL)
    return SK_EJSON;
  int i = -1;
  for (size_t k = 0; k < st->n_steps && i < 0; k++) {
    if (strcmp(st->steps[k].name, from->valuestring) == 0)
      i = (int)k;
  }
  if (st->status != SAGA_STATUS_PAUSED || i < 0 || st->cursor < i ||
      st->steps[i].parent >= 0 || (ev->step >= 0 && ev->step != i))
    return SK_ESTATE;
  char *input;
  int rc = get_raw(p, "step_input", false, &input);
  if (rc != SK_OK)
    return rc;
  for (size_t k = (size_t)i; k < st->n_steps; k++)
    reset_step(&st->steps[k]);
  st->steps[i].input_override = input;
  set_str(&st->error, NULL);
  st->status = SAGA_STATUS_RUNNING;
  st->phase = SAGA_PHASE_FORWARD;
  st->cursor = i;
  return SK_OK;
}

/* A settled saga was replayed as a new run (the same link ReplayLinked
 * records). */
static int link_new_run(saga_state *st, const cJSON *p, const char *key) {
  if (st->phase != SAGA_PHASE_DONE)
    return SK_ESTATE;
  char *id;
  int rc = get_str(p, key, true, &id);
  if (rc != SK_OK)
    return rc;
  if (id == NULL)
    return SK_EJSON;
  set_str(&st->replayed_by, id);
  return SK_OK;
}

static int ev_replayed(saga_state *st, const saga_event *ev, const cJSON *p) {
  const cJSON *mode = cJSON_GetObjectItemCaseSensitive(p, "mode");
  if (!cJSON_IsString(mode) || mode->valuestring == NULL)
    return SK_EJSON;
  if (strcmp(mode->valuestring, "resume_compensation") == 0)
    return replay_resume_compensation(st, ev);
  if (strcmp(mode->valuestring, "resume") == 0)
    return replay_resume(st, ev, p);
  if (strcmp(mode->valuestring, "new_run") == 0)
    return link_new_run(st, p, "new_saga_id");
  return SK_EJSON;
}

/* ---- dispatch
 * ---------------------------------------------------------------------------
 */

static int dispatch(saga_state *st, const saga_event *ev, const cJSON *p) {
  if (ev->type != SAGA_EV_SAGA_STARTED && st->workflow == NULL)
    return SK_ESTATE;
  switch (ev->type) {
  case SAGA_EV_SAGA_STARTED:
    return ev_saga_started(st, ev, p);
  case SAGA_EV_STEP_SCHEDULED:
    return ev_step_scheduled(st, ev, p);
  case SAGA_EV_STEP_COMPLETED:
    return ev_step_completed(st, ev, p);
  case SAGA_EV_STEP_FAILED:
    return ev_step_failed(st, ev, p);
  case SAGA_EV_RETRY_SCHEDULED:
    return ev_retry_scheduled(st, ev, p);
  case SAGA_EV_COMPENSATION_STARTED:
    return ev_compensation_started(st, ev, p);
  case SAGA_EV_COMPENSATION_SCHEDULED:
    return ev_compensation_scheduled(st, ev, p);
  case SAGA_EV_COMPENSATION_COMPLETED:
    return ev_compensation_completed(st, ev, p);
  case SAGA_EV_COMPENSATION_FAILED:
    return ev_compensation_failed(st, ev, p);
  case SAGA_EV_SAGA_COMPLETED:
    return ev_saga_completed(st, ev, p);
  case SAGA_EV_SAGA_COMPENSATED:
    return ev_compensation_done(st, false);
  case SAGA_EV_SAGA_FAILED:
    return ev_saga_failed(st, ev, p);
  case SAGA_EV_SAGA_PAUSED:
    return ev_saga_paused(st, ev, p);
  case SAGA_EV_SAGA_CANCELLED:
    return ev_compensation_done(st, true);
  case SAGA_EV_CANCEL_REQUESTED:
    return ev_cancel_requested(st, ev, p);
  case SAGA_EV_REPLAYED:
    return ev_replayed(st, ev, p);
  case SAGA_EV_REPLAY_LINKED:
    return link_new_run(st, p, "replayed_by");
  case SAGA_EV_FALLBACK_SCHEDULED:
    return ev_fallback_scheduled(st, ev, p);
  case SAGA_EV_FALLBACK_FAILED:
    return ev_fallback_failed(st, ev, p);
  case SAGA_EV__COUNT:
    break;
  }
  return SK_EINVAL;
}

int saga_evolve(saga_state *st, const saga_event *ev) {
  if (st == NULL || ev == NULL)
    return SK_EINVAL;
  if (ev->seq != st->last_seq + 1)
    return SK_ECONFLICT;
  if (ev->payload == NULL)
    return SK_EJSON;
  cJSON *p = cJSON_Parse(ev->payload);
  if (!cJSON_IsObject(p)) {
    cJSON_Delete(p);
    return SK_EJSON;
  }
  int rc = dispatch(st, ev, p);
  cJSON_Delete(p);
  if (rc != SK_OK)
    return rc;
  st->last_seq = ev->seq;
  st->updated_ms = ev->ts_ms;
  return SK_OK;
}

int saga_fold(const saga_event *events, size_t n, saga_state *out) {
  saga_state_init(out);
  for (size_t i = 0; i < n; i++) {
    int rc = saga_evolve(out, &events[i]);
    if (rc != SK_OK) {
      saga_state_clear(out);
      return rc;
    }
  }
  return SK_OK;
}

int saga_apply(saga_state *st, const saga_decision *d) {
  for (size_t i = 0; i < d->n_events; i++) {
    int rc = saga_evolve(st, &d->events[i]);
    if (rc != SK_OK)
      return rc;
  }
  return SK_OK;
}
