/*
 * test_saga_random.c — a randomized driver that runs thousands of sagas of
 * random workflows (sequential steps, parallel groups nested two deep,
 * fallbacks with on_breaker_open and compensate overrides, sleeps, http,
 * deadlines, pause) through the decider, with results in random order from
 * every task in flight, stale duplicates, cancels, replays and breaker
 * openings, and checks the invariants: every saga settles; evolve accepts
 * every decision; fold == step-by-step apply; the state JSON round-trips;
 * compensation runs newest first by completion; exactly the completed steps
 * with a compensation (the fallback's override when it applies) are undone.
 */
#include <criterion/criterion.h>

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "saga/saga.h"
#include "spec/def.h"

#define T0 1700000000000LL

static char *snap(const saga_state *st) {
  char *s = NULL;
  cr_assert_eq(saga_state_to_json(st, &s), SK_OK);
  return s;
}

/* ---- the randomized driver
 * ------------------------------------------------------------ */

static uint64_t rnd(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}
static int pick(uint64_t *s, int n) { return (int)(rnd(s) % (uint64_t)n); }
static bool chance(uint64_t *s, int percent) { return pick(s, 100) < percent; }

static def_action *random_action(uint64_t *r, const char *type) {
  def_action *a = calloc(1, sizeof(def_action));
  if (chance(r, 80)) {
    a->kind = DEF_KIND_TASK;
    a->task_type = strdup(type);
  } else {
    a->kind = DEF_KIND_HTTP;
    a->http.method = strdup("POST");
    a->http.url = strdup("http://x/${saga.id}");
  }
  a->has_retry = chance(r, 50);
  a->retry.set = DEF_RETRY_MAX_ATTEMPTS;
  a->retry.max_attempts = pick(r, 4); /* 0 = unlimited */
  return a;
}

static void random_leaf(uint64_t *r, def_step *s, int *names) {
  char name[32];
  snprintf(name, sizeof(name), "s%d", (*names)++);
  s->name = strdup(name);
  int k = pick(r, 10);
  s->action.kind = k == 0   ? DEF_KIND_SLEEP
                   : k == 1 ? DEF_KIND_HTTP
                            : DEF_KIND_TASK;
  if (s->action.kind == DEF_KIND_TASK)
    s->action.task_type = strdup("t");
  else if (s->action.kind == DEF_KIND_SLEEP)
    s->action.sleep_ms = pick(r, 100);
  else {
    s->action.http.method = strdup("POST");
    s->action.http.url = strdup("http://x/${saga.id}/${input.n}");
  }
  if (*names > 1 && chance(r, 30))
    s->action.input_json =
        strdup("{\"p\":\"${steps.s0.output.v}\",\"n\":\"${saga.attempt}\"}");
  s->action.has_retry = chance(r, 70);
  s->action.retry.set = DEF_RETRY_MAX_ATTEMPTS;
  s->action.retry.max_attempts = pick(r, 5); /* 0 = unlimited */
  if (chance(r, 60)) {
    s->compensate = random_action(r, "c");
    s->compensate->kind = DEF_KIND_TASK;
  }
  s->compensate_on_failure = chance(r, 25);
  if (s->action.kind != DEF_KIND_SLEEP && chance(r, 30)) {
    s->fallback = random_action(r, "f");
    s->fallback_on_breaker_open = chance(r, 50);
    if (chance(r, 40))
      s->fallback_compensate = random_action(r, "fc");
  }
}

/* n steps; some of them parallel groups (nested up to `depth` more). */
static void random_steps(uint64_t *r, def_step *steps, size_t n, int depth,
                         int *names) {
  for (size_t i = 0; i < n; i++) {
    def_step *s = &steps[i];
    if (depth > 0 && chance(r, depth > 1 ? 25 : 10)) {
      char name[32];
      snprintf(name, sizeof(name), "s%d", (*names)++);
      s->name = strdup(name);
      s->action.kind = DEF_KIND_PARALLEL;
      s->n_branches = (size_t)(1 + pick(r, 3));
      s->branches = calloc(s->n_branches, sizeof(def_branch));
      for (size_t b = 0; b < s->n_branches; b++) {
        s->branches[b].n_steps = (size_t)(1 + pick(r, 3));
        s->branches[b].steps = calloc(s->branches[b].n_steps, sizeof(def_step));
        random_steps(r, s->branches[b].steps, s->branches[b].n_steps, depth - 1,
                     names);
      }
    } else {
      random_leaf(r, s, names);
    }
  }
}

static def_workflow *random_wf(uint64_t *r) {
  def_workflow *wf = def_workflow_new();
  wf->name = strdup("rnd");
  wf->version = 1;
  wf->n_steps = (size_t)(1 + pick(r, 6));
  wf->steps = calloc(wf->n_steps, sizeof(def_step));
  wf->on_failure =
      chance(r, 20) ? DEF_ON_FAILURE_PAUSE : DEF_ON_FAILURE_COMPENSATE;
  if (chance(r, 20))
    wf->timeout_ms = 50 + pick(r, 3000);
  if (chance(r, 30)) {
    wf->has_default_retry = true;
    wf->default_retry.set = DEF_RETRY_NON_RETRYABLE;
    wf->default_retry.non_retryable_errors = calloc(1, sizeof(char *));
    wf->default_retry.non_retryable_errors[0] = strdup("Fatal");
    wf->default_retry.n_non_retryable = 1;
  }
  int names = 0;
  random_steps(r, wf->steps, wf->n_steps, chance(r, 40) ? 2 : 0, &names);
  return wf;
}

/* The definition's steps by flat index (saga.h). */
static void flatten(const def_step *steps, size_t n, const def_step **out,
                    size_t *k) {
  for (size_t i = 0; i < n; i++) {
    out[(*k)++] = &steps[i];
    for (size_t b = 0; b < steps[i].n_branches; b++)
      flatten(steps[i].branches[b].steps, steps[i].branches[b].n_steps, out, k);
  }
}

#define MAX_PENDING 64

typedef struct driver {
  def_workflow *wf;
  const def_step *flat[256];
  size_t n_flat;
  saga_state st;
  saga_rng rng;
  int64_t now;
  saga_event *log;
  size_t n_log, cap_log;
  saga_task pending[MAX_PENDING]; /* the tasks in flight */
  size_t n_pending;
  int iter;
} driver;

static void check_round_trip(const saga_state *st) {
  char *a = snap(st), *b;
  saga_state back;
  cr_assert_eq(saga_state_from_json(a, &back), SK_OK);
  b = snap(&back);
  cr_assert_str_eq(a, b, "state JSON does not round-trip");
  free(a);
  free(b);
  saga_state_clear(&back);
}

/* The task is the attempt the state expects a result for. */
static bool task_live(const saga_state *st, const saga_task *t) {
  const saga_step_state *s = &st->steps[t->step];
  if (t->kind == TASK_KIND_COMP)
    return st->status == SAGA_STATUS_COMPENSATING &&
           s->status == STEP_STATUS_COMPENSATING &&
           t->attempt == s->comp_attempts;
  bool fb = t->kind == TASK_KIND_FALLBACK;
  return st->status == SAGA_STATUS_RUNNING &&
         s->status == STEP_STATUS_SCHEDULED && (s->fb_attempts > 0) == fb &&
         t->attempt == (fb ? s->fb_attempts : s->attempts);
}

static void drop_pending(driver *dv, size_t i) {
  saga_task_clear(&dv->pending[i]);
  dv->pending[i] = dv->pending[--dv->n_pending];
}

static bool stopping(const saga_state *st) {
  if (st->cancel_requested)
    return true;
  for (size_t i = 0; st->status == SAGA_STATUS_RUNNING && i < st->n_steps; i++)
    if (st->steps[i].status == STEP_STATUS_FAILED)
      return true;
  return false;
}

/* Applies a decision, logs it, tracks the tasks in flight, checks it. */
static void take(driver *dv, saga_decision *d) {
  bool was_stopping = stopping(&dv->st) && dv->st.status != SAGA_STATUS_PAUSED;
  for (size_t i = 0; i < d->n_cancel_steps; i++) {
    int k = d->cancel_steps[i];
    cr_assert(k >= 0 && (size_t)k < dv->n_flat);
    cr_assert_eq(dv->flat[k]->n_branches, 0, "a group has no task to stop");
    cr_assert_eq(dv->st.steps[k].status, STEP_STATUS_SCHEDULED,
                 "only tasks in flight are told to stop");
  }
  for (size_t i = 0; was_stopping && i < d->n_events; i++)
    cr_assert(d->events[i].type != SAGA_EV_STEP_SCHEDULED &&
                  d->events[i].type != SAGA_EV_FALLBACK_SCHEDULED,
              "something new started while stopping");
  cr_assert_eq(saga_apply(&dv->st, d), SK_OK, "evolve refused decider output");
  for (size_t i = 0; i < d->n_events; i++) {
    if (dv->n_log == dv->cap_log) {
      dv->cap_log = dv->cap_log ? dv->cap_log * 2 : 64;
      dv->log = realloc(dv->log, dv->cap_log * sizeof(saga_event));
    }
    saga_event e = d->events[i];
    e.node = e.node ? strdup(e.node) : NULL;
    e.payload = strdup(e.payload);
    dv->log[dv->n_log++] = e;
  }
  for (size_t i = 0; i < d->n_tasks; i++) {
    saga_task *t = &d->tasks[i];
    cr_assert_geq(t->available_at_ms, dv->now);
    cr_assert(task_live(&dv->st, t), "task %d/%d/%d not what the state expects",
              t->step, t->kind, t->attempt);
    cr_assert_eq(dv->flat[t->step]->n_branches, 0, "a task for a group");
    cr_assert_neq(t->action, DEF_KIND_PARALLEL);
    if (t->kind == TASK_KIND_FALLBACK)
      cr_assert_not_null(dv->flat[t->step]->fallback);
    cr_assert_lt(dv->n_pending, MAX_PENDING);
    dv->pending[dv->n_pending++] = *t;
    memset(t, 0, sizeof(*t));
  }
  d->n_tasks = 0;
  for (size_t i = 1; i < d->n_cancel_steps; i++)
    cr_assert_lt(d->cancel_steps[i - 1], d->cancel_steps[i]);
  for (size_t i = dv->n_pending; i-- > 0;) {
    if (!task_live(&dv->st, &dv->pending[i]))
      drop_pending(dv, i);
  }
  if (dv->st.status == SAGA_STATUS_COMPENSATING)
    cr_assert_leq(dv->n_pending, 1, "compensations run one at a time");
  saga_decision_clear(d);
  check_round_trip(&dv->st);
}

static void send_result(driver *dv, uint64_t *r) {
  size_t which = (size_t)pick(r, (int)dv->n_pending);
  if (dv->now < dv->pending[which].available_at_ms)
    dv->now = dv->pending[which].available_at_ms;
  saga_task *t = &dv->pending[which];
  saga_result res = {.step = t->step, .kind = t->kind, .attempt = t->attempt};
  static const char *types[] = {"Flaky", "Fatal", "Timeout", "Cancelled"};
  bool late = dv->iter > 300; /* make sure every saga ends */
  res.ok = late || chance(r, t->kind == TASK_KIND_COMP ? 55 : 65);
  res.output =
      chance(r, 50) ? "{\"v\":[1,\"x\"]}" : (chance(r, 50) ? "null" : "7");
  res.err_type = types[pick(r, 4)];
  res.err_message = "m";
  res.err_retryable = chance(r, 80);
  saga_decision d;
  int rc;
  if (chance(r, 10)) { /* a stale duplicate first */
    saga_result stale = res;
    stale.attempt += chance(r, 50) ? 1 : -1;
    rc =
        saga_decide_result(dv->wf, &dv->st, &stale, "n", dv->now, &dv->rng, &d);
    cr_assert_eq(rc, SK_ESTATE);
    cr_assert_eq(d.n_events, 0);
  }
  rc = saga_decide_result(dv->wf, &dv->st, &res, "n", dv->now, &dv->rng, &d);
  cr_assert_eq(rc, SK_OK, "result refused: %s", sk_err_name(rc));
  drop_pending(dv, which);
  take(dv, &d);
}

static int breaker_moves;

/* The breaker of a waiting forward task opens: its fallback runs at once
 * when it has on_breaker_open. */
static bool breaker_open(driver *dv, uint64_t *r) {
  for (size_t i = 0; i < dv->n_pending; i++) {
    saga_task *t = &dv->pending[i];
    const def_step *s = dv->flat[t->step];
    if (t->kind != TASK_KIND_FWD || s->fallback == NULL ||
        !s->fallback_on_breaker_open || !chance(r, 50))
      continue;
    saga_decision d;
    int step = t->step;
    int rc = saga_decide_breaker_open(dv->wf, &dv->st, step, "n", dv->now,
                                      &dv->rng, &d);
    if (rc == SK_ESTATE) { /* stopping: the saga takes no fallback now */
      cr_assert_eq(d.n_events, 0);
      return false;
    }
    cr_assert_eq(rc, SK_OK, "breaker_open refused: %s", sk_err_name(rc));
    cr_assert_eq(d.n_cancel_steps, 1);
    cr_assert_eq(d.cancel_steps[0], step);
    drop_pending(dv, i); /* the caller deletes the waiting task */
    take(dv, &d);
    breaker_moves++;
    return true;
  }
  return false;
}

static void operator_action(driver *dv, uint64_t *r) {
  saga_decision d;
  int rc;
  const saga_state *st = &dv->st;
  if (st->status == SAGA_STATUS_PAUSED && chance(r, 60)) {
    saga_replay req = {0};
    if (chance(r, 50)) {
      int k = pick(r, st->cursor + 1);
      while (st->steps[k].parent >= 0) /* resume at a top-level step */
        k--;
      req.from_step = st->steps[k].name;
    }
    if (chance(r, 30))
      req.step_input = "{\"fixed\":1}";
    rc = saga_decide_replay(dv->wf, st, &req, "op", dv->now, &dv->rng, &d);
  } else if (st->status == SAGA_STATUS_FAILED) {
    rc = saga_decide_replay(dv->wf, st, NULL, "op", dv->now, &dv->rng, &d);
  } else {
    rc = saga_decide_cancel(dv->wf, st, "op", "op", dv->now, &dv->rng, &d);
  }
  cr_assert_eq(rc, SK_OK, "operator action refused: %s", sk_err_name(rc));
  take(dv, &d);
}

/* Compensation order: newest first by completion (the seq of the event
 * that ended each step's forward run), within a compensation phase,
 * except that a resume_compensation replay reschedules the stuck step. */
static void check_log(const driver *dv) {
  int64_t fin[256] = {0};
  int64_t last = INT64_MAX;
  int last_step = -1;
  bool replayed = false;
  for (size_t i = 0; i < dv->n_log; i++) {
    const saga_event *e = &dv->log[i];
    cr_assert_eq(e->seq, (int64_t)i + 1);
    if (e->type == SAGA_EV_STEP_COMPLETED ||
        (e->type == SAGA_EV_STEP_FAILED &&
         strstr(e->payload, "\"final\":true") != NULL))
      fin[e->step] = e->seq;
    if (e->type == SAGA_EV_COMPENSATION_STARTED)
      last = INT64_MAX;
    if (e->type == SAGA_EV_REPLAYED) {
      replayed = strstr(e->payload, "resume_compensation") != NULL;
      if (!replayed)
        for (size_t k = (size_t)e->step; k < dv->n_flat; k++)
          fin[k] = 0;
    }
    if (e->type == SAGA_EV_COMPENSATION_SCHEDULED) {
      if (replayed)
        cr_assert_eq(e->step, last_step);
      else
        cr_assert_lt(fin[e->step], last, "compensation not newest first");
      last = fin[e->step];
      last_step = e->step;
      replayed = false;
    }
  }
}

static void check_final(const driver *dv) {
  const saga_state *st = &dv->st;
  saga_state folded;
  cr_assert_eq(saga_fold(dv->log, dv->n_log, &folded), SK_OK);
  char *a = snap(st), *b = snap(&folded);
  cr_assert_str_eq(a, b, "fold != step-by-step apply");
  free(a);
  free(b);
  saga_state_clear(&folded);
  check_log(dv);
  if (st->status == SAGA_STATUS_COMPLETED) {
    for (size_t i = 0; i < st->n_steps; i++)
      cr_assert_eq(st->steps[i].status, STEP_STATUS_COMPLETED);
    cr_assert_not_null(st->output);
  }
  if (st->status == SAGA_STATUS_COMPENSATED ||
      st->status == SAGA_STATUS_CANCELLED) {
    for (size_t i = 0; i < st->n_steps; i++) {
      const def_step *ds = dv->flat[i];
      const def_action *comp =
          st->steps[i].by_fallback && ds->fallback_compensate != NULL
              ? ds->fallback_compensate
              : ds->compensate;
      step_status s = st->steps[i].status;
      /* exactly the completed steps with a compensation were undone */
      if (s == STEP_STATUS_COMPLETED)
        cr_assert_null(comp, "completed step %zu not compensated", i);
      if (s == STEP_STATUS_COMPENSATED)
        cr_assert_not_null(comp);
      cr_assert(s != STEP_STATUS_PENDING && s != STEP_STATUS_SCHEDULED &&
                s != STEP_STATUS_COMPENSATING &&
                s != STEP_STATUS_COMPENSATION_FAILED);
    }
    cr_assert_eq(st->status == SAGA_STATUS_CANCELLED, st->cancel_requested);
  }
}

static struct {
  int status[SAGA_STATUS_CANCELLED + 1];
  int events[SAGA_EV__COUNT];
  int parallel, by_fallback, nested_comps;
} coverage;

static void drive_one(uint64_t seed) {
  uint64_t r = seed * 2654435761u + 1;
  driver dv;
  memset(&dv, 0, sizeof(dv));
  dv.wf = random_wf(&r);
  flatten(dv.wf->steps, dv.wf->n_steps, dv.flat, &dv.n_flat);
  dv.rng.s = seed + 1;
  dv.now = T0;
  saga_state_init(&dv.st);
  saga_decision d;
  cr_assert_eq(saga_decide_start(dv.wf, "sid", "{\"n\":3}", NULL, NULL, dv.now,
                                 &dv.rng, &d),
               SK_OK);
  take(&dv, &d);
  cr_assert_eq(dv.st.n_steps, dv.n_flat);
  int operator_moves = 0, max_moves = pick(&r, 5);
  for (dv.iter = 0; dv.iter < 3000; dv.iter++) {
    dv.now += pick(&r, 400);
    saga_status s = dv.st.status;
    bool stuck = s == SAGA_STATUS_PAUSED || s == SAGA_STATUS_FAILED;
    if (stuck && operator_moves >= max_moves)
      break;
    if (!stuck && saga_status_settled(s))
      break;
    if (stuck || (chance(&r, 4) && operator_moves < max_moves &&
                  !dv.st.cancel_requested)) {
      operator_moves++;
      operator_action(&dv, &r);
      continue;
    }
    cr_assert(dv.n_pending > 0,
              "running saga with nothing in flight (status %s)",
              saga_status_name(s));
    if (chance(&r, 10) && breaker_open(&dv, &r))
      continue;
    send_result(&dv, &r);
  }
  cr_assert(saga_status_settled(dv.st.status), "saga did not settle");
  if (dv.st.phase == SAGA_PHASE_DONE && chance(&r, 20)) {
    cr_assert_eq(saga_decide_link(&dv.st, "new-run", "op", dv.now, &d), SK_OK);
    take(&dv, &d);
  }
  check_final(&dv);
  coverage.status[dv.st.status]++;
  for (size_t i = 0; i < dv.n_flat; i++) {
    coverage.parallel += dv.flat[i]->n_branches > 0;
    coverage.by_fallback += dv.st.steps[i].by_fallback;
  }
  for (size_t i = 0; i < dv.n_log; i++) {
    coverage.events[dv.log[i].type]++;
    if (dv.log[i].type == SAGA_EV_COMPENSATION_SCHEDULED &&
        dv.st.steps[dv.log[i].step].parent >= 0)
      coverage.nested_comps++;
  }
  for (size_t i = 0; i < dv.n_log; i++)
    saga_event_clear(&dv.log[i]);
  free(dv.log);
  while (dv.n_pending > 0)
    drop_pending(&dv, 0);
  saga_state_clear(&dv.st);
  def_workflow_unref(dv.wf);
}

Test(random, thousands_of_sagas, .timeout = 600) {
  for (uint64_t seed = 1; seed <= 3000; seed++)
    drive_one(seed);
  /* The driver must reach every ending and every event the decider makes
   * (Replayed new_run is the caller's, not the decider's). */
  for (int i = SAGA_STATUS_COMPLETED; i <= SAGA_STATUS_CANCELLED; i++) {
    cr_log_info("%s: %d", saga_status_name((saga_status)i), coverage.status[i]);
    cr_expect_gt(coverage.status[i], 20, "%s reached too rarely",
                 saga_status_name((saga_status)i));
  }
  for (int i = 0; i < SAGA_EV__COUNT; i++) {
    cr_log_info("%s: %d", saga_event_name((saga_event_type)i),
                coverage.events[i]);
    cr_expect_gt(coverage.events[i], 20, "%s emitted too rarely",
                 saga_event_name((saga_event_type)i));
  }
  cr_log_info("groups %d, by fallback %d, breaker %d, nested comps %d",
              coverage.parallel, coverage.by_fallback, breaker_moves,
              coverage.nested_comps);
  cr_expect_gt(coverage.parallel, 200, "too few parallel groups");
  cr_expect_gt(coverage.nested_comps, 100, "too few branch compensations");
  cr_expect_gt(coverage.by_fallback, 50, "too few steps done by fallback");
  cr_expect_gt(breaker_moves, 50, "too few breaker openings");
}
