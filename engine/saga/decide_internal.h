/*
 * decide_internal.h — what the decider's files (decide.c, decide_util.c)
 * share: the decision context and its building blocks. Private to
 * engine/saga; nothing outside includes it.
 *
 * The context holds `cur`, a private copy of the state that every emitted
 * event is evolved into at once, so the decider always reasons about "the
 * state after the events of this decision so far", and an event that evolve
 * would refuse is caught here (SK_EINTERNAL) instead of in the store.
 *
 * Thread: any; nothing shared.
 */
#ifndef SKALD_SAGA_DECIDE_INTERNAL_H
#define SKALD_SAGA_DECIDE_INTERNAL_H

#include "saga/saga.h"

#include <cjson/cJSON.h>

#include "common/err.h"

/* Times stay exact as JSON numbers (doubles). */
#define TIME_MAX ((int64_t)1 << 53)
/* Positive: a template failed to render (message in dctx.why). */
#define RENDER_FAILED 1

typedef struct serr {
  const char *type;
  const char *message;
  bool retryable;
} serr;

/* One step of the definition at its flat index (saga.h "flattening"). */
typedef struct flat_step {
  const def_step *def;
  int parent, branch;
  int end; /* one past the last flat index of its subtree */
} flat_step;

typedef struct dctx {
  const def_workflow *wf;
  const saga_state *given; /* the state the decision starts from */
  saga_state cur;          /* the state after this decision's events so far */
  flat_step *flat;         /* wf's steps by flat index */
  size_t n_flat;
  const char *node;
  int64_t now;
  saga_rng *rng;
  saga_decision *out;
  size_t cap_events, cap_tasks, cap_cancels;
  char why[SK_ERROR_MESSAGE_MAX + 64]; /* template error message */
} dctx;

/* Copies st into d->cur and flattens wf (NULL: no steps). */
int dctx_init(dctx *d, const def_workflow *wf, const saga_state *st,
              const char *node, int64_t now, saga_rng *rng, saga_decision *out);
void dctx_free(dctx *d);

int64_t sat_add(int64_t a, int64_t b);
bool step_is_group(const dctx *d, int i);

/* Appends an event (taking payload, NULL = OOM while building it) and
 * evolves d->cur through it. */
int emit(dctx *d, saga_event_type type, int step, int attempt, cJSON *payload);
int push_task(dctx *d, saga_task *t);
/* Adds step to out->cancel_steps (kept ascending, no duplicates). */
int add_cancel(dctx *d, int step);

cJSON *add(cJSON *o, const char *key, cJSON *item);
cJSON *json_num(int64_t v);
cJSON *json_str_or_null(const char *s);
cJSON *json_parse(const char *text);
cJSON *err_json(const serr *e);
int emit_err(dctx *d, saga_event_type type, int step, int attempt,
             const char *key, const serr *e);
/* Like emit_err with an error held as JSON text (as in the state). */
int emit_err_text(dctx *d, saga_event_type type, int step, int attempt,
                  const char *key, const char *err, int final);
int emit_failed(dctx *d, saga_event_type type, int step, int attempt,
                const serr *e, bool final);
int emit_at(dctx *d, saga_event_type type, int step, int attempt, int64_t at);

/* The action a task of `kind` runs for step i (the compensation after a
 * fallback may be overridden); NULL if none. */
const def_action *task_action(const dctx *d, int i, task_kind kind);
/* Effective retry policy and per-attempt timeout of that action. */
void task_policy(const dctx *d, int i, task_kind kind, def_retry *pol,
                 int64_t *timeout);
/* Builds the task of step i's attempt (not yet pushed). base_at is when it
 * may run, before a sleep's own delay. SK_OK, RENDER_FAILED or an error. */
int build_task(dctx *d, int i, task_kind kind, int attempt, int64_t base_at,
               saga_task *t);

#endif /* SKALD_SAGA_DECIDE_INTERNAL_H */
