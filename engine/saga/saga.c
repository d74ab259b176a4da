/*
 * saga.c — the small pieces of the saga module: status/event name tables
 * (generated from the X-macros in saga.h so logs, the API and the code say
 * the same word), init/clear of events, tasks, decisions and states, the
 * jitter PRNG and the idempotency key of a task.
 *
 * saga_backoff_ms lives here too, next to the PRNG it draws its jitter from.
 *
 * The evolve function lives in evolve.c, the deciders in decide*.c and the
 * canonical state JSON in state_json.c.
 *
 * Thread: any; nothing here is shared (the PRNG state is the caller's).
 */
#include "saga/saga.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

/* ---- names --------------------------------------------------------------- */

static const char *const saga_status_names[] = {
#define SAGA_STATUS_STR(name, str) str,
    SAGA_STATUS_MAP(SAGA_STATUS_STR)
#undef SAGA_STATUS_STR
};

static const char *const step_status_names[] = {
#define STEP_STATUS_STR(name, str) str,
    STEP_STATUS_MAP(STEP_STATUS_STR)
#undef STEP_STATUS_STR
};

static const char *const saga_event_names[] = {
#define SAGA_EVENT_STR(name, str) str,
    SAGA_EVENT_MAP(SAGA_EVENT_STR)
#undef SAGA_EVENT_STR
};

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* Looks s up in names[0..n); the index or -1. */
static int name_index(const char *const *names, size_t n, const char *s) {
  if (s == NULL)
    return -1;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(names[i], s) == 0)
      return (int)i;
  }
  return -1;
}

const char *saga_status_name(saga_status s) {
  if ((unsigned)s >= N_OF(saga_status_names))
    return "unknown";
  return saga_status_names[s];
}

int saga_status_parse(const char *s, saga_status *out) {
  int i = name_index(saga_status_names, N_OF(saga_status_names), s);
  if (i < 0)
    return SK_EINVAL;
  *out = (saga_status)i;
  return SK_OK;
}

const char *step_status_name(step_status s) {
  if ((unsigned)s >= N_OF(step_status_names))
    return "unknown";
  return step_status_names[s];
}

int step_status_parse(const char *s, step_status *out) {
  int i = name_index(step_status_names, N_OF(step_status_names), s);
  if (i < 0)
    return SK_EINVAL;
  *out = (step_status)i;
  return SK_OK;
}

const char *saga_event_name(saga_event_type t) {
  if ((unsigned)t >= N_OF(saga_event_names))
    return "unknown";
  return saga_event_names[t];
}

int saga_event_parse(const char *s, saga_event_type *out) {
  int i = name_index(saga_event_names, N_OF(saga_event_names), s);
  if (i < 0)
    return SK_EINVAL;
  *out = (saga_event_type)i;
  return SK_OK;
}

bool saga_status_settled(saga_status s) {
  return s != SAGA_STATUS_RUNNING && s != SAGA_STATUS_COMPENSATING;
}

const char *task_kind_name(task_kind k) {
  return k == TASK_KIND_COMP       ? "comp"
         : k == TASK_KIND_FALLBACK ? "fallback"
                                   : "fwd";
}

/* ---- init / clear -----------------------------------------------------------
 */

void saga_event_clear(saga_event *ev) {
  if (ev == NULL)
    return;
  free(ev->node);
  free(ev->payload);
  memset(ev, 0, sizeof(*ev));
  ev->step = -1;
}

void saga_task_clear(saga_task *t) {
  if (t == NULL)
    return;
  free(t->task_type);
  free(t->input);
  free(t->bulkhead);
  memset(t, 0, sizeof(*t));
}

void saga_decision_init(saga_decision *d) { memset(d, 0, sizeof(*d)); }

void saga_decision_clear(saga_decision *d) {
  if (d == NULL)
    return;
  for (size_t i = 0; i < d->n_events; i++)
    saga_event_clear(&d->events[i]);
  for (size_t i = 0; i < d->n_tasks; i++)
    saga_task_clear(&d->tasks[i]);
  free(d->events);
  free(d->tasks);
  free(d->cancel_steps);
  saga_decision_init(d);
}

void saga_state_init(saga_state *st) {
  memset(st, 0, sizeof(*st));
  st->status = SAGA_STATUS_RUNNING;
  st->phase = SAGA_PHASE_FORWARD;
  st->cursor = -1;
}

static void step_state_clear(saga_step_state *s) {
  free(s->name);
  free(s->output);
  free(s->error);
  free(s->comp_error);
  free(s->input_override);
  memset(s, 0, sizeof(*s));
}

void saga_state_clear(saga_state *st) {
  if (st == NULL)
    return;
  for (size_t i = 0; i < st->n_steps; i++)
    step_state_clear(&st->steps[i]);
  free(st->steps);
  free(st->workflow);
  free(st->idempotency_key);
  free(st->input);
  free(st->error);
  free(st->output);
  free(st->replay_of);
  free(st->replayed_by);
  saga_state_init(st);
}

static int dup_str(char **dst, const char *src) {
  *dst = NULL;
  if (src == NULL)
    return SK_OK;
  *dst = strdup(src);
  return *dst != NULL ? SK_OK : SK_ENOMEM;
}

int saga_state_copy(saga_state *dst, const saga_state *src) {
  *dst = *src;
  dst->steps = NULL;
  dst->n_steps = 0;
  int rc = SK_OK;
  char *w, *k, *in, *er, *out, *ro, *rb;
  rc |= dup_str(&w, src->workflow);
  rc |= dup_str(&k, src->idempotency_key);
  rc |= dup_str(&in, src->input);
  rc |= dup_str(&er, src->error);
  rc |= dup_str(&out, src->output);
  rc |= dup_str(&ro, src->replay_of);
  rc |= dup_str(&rb, src->replayed_by);
  dst->workflow = w;
  dst->idempotency_key = k;
  dst->input = in;
  dst->error = er;
  dst->output = out;
  dst->replay_of = ro;
  dst->replayed_by = rb;
  if (rc == SK_OK && src->n_steps > 0) {
    dst->steps = calloc(src->n_steps, sizeof(*dst->steps));
    if (dst->steps == NULL)
      rc = SK_ENOMEM;
    else
      dst->n_steps = src->n_steps;
  }
  for (size_t i = 0; rc == SK_OK && i < dst->n_steps; i++) {
    const saga_step_state *a = &src->steps[i];
    saga_step_state *b = &dst->steps[i];
    *b = *a;
    int r2 = dup_str(&b->name, a->name);
    r2 |= dup_str(&b->output, a->output);
    r2 |= dup_str(&b->error, a->error);
    r2 |= dup_str(&b->comp_error, a->comp_error);
    r2 |= dup_str(&b->input_override, a->input_override);
    if (r2 != SK_OK)
      rc = SK_ENOMEM;
  }
  if (rc != SK_OK) {
    saga_state_clear(dst);
    return SK_ENOMEM;
  }
  return SK_OK;
}

/* ---- rng
 * ---------------------------------------------------------------------- */

/* xorshift64* (Vigna). A zero state would stay zero forever, so it is
 * replaced by a fixed odd constant. */
uint64_t saga_rng_next(saga_rng *r) {
  uint64_t x = r->s;
  if (x == 0)
    x = 0x9E3779B97F4A7C15ull;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  r->s = x;
  return x * 0x2545F4914F6CDD1Dull;
}

double saga_rng_unit(saga_rng *r) {
  /* The top 53 bits give every double in [0, 1) on a 2^-53 grid. */
  return (double)(saga_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- backoff
 * ------------------------------------------------------------------- */

/* No delay above this (about 31 years): keeps every later sum of times far
 * from int64 overflow and exact as a JSON number. */
#define BACKOFF_MAX_MS 1e12

/* Policy fields come from a validated definition, but the arithmetic is
 * guarded anyway: NaN, negative or huge values give a bounded delay and
 * never undefined behaviour (pow() overflows to inf, which the cap takes). */
int64_t saga_backoff_ms(const def_retry *p, int next_attempt, saga_rng *rng) {
  double u = saga_rng_unit(rng); /* always drawn: one draw per backoff */
  double initial = (double)p->initial_interval_ms;
  double cap = (double)p->max_interval_ms;
  double coeff = p->backoff_coefficient;
  double jitter = p->jitter;
  if (!(initial > 0))
    return 0;
  if (!(cap >= 0) || cap > BACKOFF_MAX_MS)
    cap = BACKOFF_MAX_MS;
  if (!(coeff >= 1))
    coeff = 1;
  if (!(jitter >= 0))
    jitter = 0;
  if (jitter > 1)
    jitter = 1;
  int n = next_attempt < 2 ? 0 : next_attempt - 2;
  double d = initial * pow(coeff, (double)n);
  if (!(d <= cap))
    d = cap;
  d *= 1.0 + jitter * (u - 0.5);
  if (!(d > 0))
    return 0;
  return (int64_t)(d + 0.5);
}

/* ---- idempotency key
 * ------------------------------------------------------------ */

void saga_idempotency_key(const char *saga_id, const char *step_name,
                          task_kind kind, char *buf, size_t len) {
  if (buf == NULL || len == 0)
    return;
  snprintf(buf, len, "%s:%s:%s", saga_id ? saga_id : "",
           step_name ? step_name : "", task_kind_name(kind));
}
