/*
 * decide_util.c — the decider's building blocks: the context (a private
 * copy of the state that every emitted event is evolved into, and the
 * definition flattened to flat step indexes), event and payload builders,
 * and the rendering of task inputs. The decisions themselves are in
 * decide.c.
 *
 * Thread: any; nothing shared.
 */
#include "saga/decide_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "spec/template.h"

int64_t sat_add(int64_t a, int64_t b) {
  if (a < 0)
    a = 0;
  if (b < 0)
    b = 0;
  return (a >= TIME_MAX || b >= TIME_MAX - a) ? TIME_MAX : a + b;
}

/* ---- flattening (saga.h) ------------------------------------------------ */

static size_t count_steps(const def_step *steps, size_t n) {
  size_t c = 0;
  for (size_t i = 0; i < n; i++) {
    c++;
    for (size_t b = 0; b < steps[i].n_branches; b++)
      c +=
          count_steps(steps[i].branches[b].steps, steps[i].branches[b].n_steps);
  }
  return c;
}

static void fill_flat(flat_step *f, size_t *k, const def_step *steps, size_t n,
                      int parent, int branch) {
  for (size_t i = 0; i < n; i++) {
    int me = (int)(*k)++;
    f[me].def = &steps[i];
    f[me].parent = parent;
    f[me].branch = branch;
    for (size_t b = 0; b < steps[i].n_branches; b++)
      fill_flat(f, k, steps[i].branches[b].steps, steps[i].branches[b].n_steps,
                me, (int)b);
    f[me].end = (int)*k;
  }
}

int dctx_init(dctx *d, const def_workflow *wf, const saga_state *st,
              const char *node, int64_t now, saga_rng *rng,
              saga_decision *out) {
  memset(d, 0, sizeof(*d));
  d->wf = wf;
  d->given = st;
  d->node = node;
  d->now = now;
  d->rng = rng;
  d->out = out;
  int rc = saga_state_copy(&d->cur, st);
  if (rc != SK_OK)
    return rc;
  size_t n = wf != NULL ? count_steps(wf->steps, wf->n_steps) : 0;
  if (n > 0) {
    if ((d->flat = calloc(n, sizeof(*d->flat))) == NULL) {
      saga_state_clear(&d->cur);
      return SK_ENOMEM;
    }
    size_t k = 0;
    fill_flat(d->flat, &k, wf->steps, wf->n_steps, -1, -1);
  }
  d->n_flat = n;
  return SK_OK;
}

void dctx_free(dctx *d) {
  saga_state_clear(&d->cur);
  free(d->flat);
  d->flat = NULL;
}

bool step_is_group(const dctx *d, int i) {
  return d->flat[i].def->n_branches > 0;
}

/* Step outputs by name, nested steps included (names are unique). */
static const char *tmpl_step_output(void *ud, const char *name) {
  const dctx *d = ud;
  for (size_t k = 0; k < d->cur.n_steps && name != NULL; k++) {
    if (strcmp(d->cur.steps[k].name, name) == 0)
      return d->cur.steps[k].output;
  }
  return NULL;
}

/* ---- building events ---------------------------------------------------- */

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

int emit(dctx *d, saga_event_type type, int step, int attempt, cJSON *payload) {
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
  ev->seq = d->cur.last_seq + 1;
  ev->type = type;
  ev->step = step;
  ev->attempt = attempt;
  ev->node = node;
  ev->payload = text;
  ev->ts_ms = d->now;
  o->n_events++;
  /* Evolve refusing the decider's own output is a bug of the decider. */
  int rc = saga_evolve(&d->cur, ev);
  return rc == SK_ENOMEM ? rc : rc != SK_OK ? SK_EINTERNAL : SK_OK;
}

int push_task(dctx *d, saga_task *t) {
  saga_decision *o = d->out;
  if (!grow((void **)&o->tasks, &d->cap_tasks, o->n_tasks, sizeof(*o->tasks))) {
    saga_task_clear(t);
    return SK_ENOMEM;
  }
  o->tasks[o->n_tasks++] = *t;
  return SK_OK;
}

/* Payload builders: a NULL item (OOM) poisons the object so emit() fails. */
cJSON *add(cJSON *o, const char *key, cJSON *item) {
  if (o == NULL || item == NULL) {
    cJSON_Delete(o);
    cJSON_Delete(item);
    return NULL;
  }
  cJSON_AddItemToObject(o, key, item);
  return o;
}

cJSON *json_num(int64_t v) { return cJSON_CreateNumber((double)v); }

cJSON *json_str_or_null(const char *s) {
  return s != NULL ? cJSON_CreateString(s) : cJSON_CreateNull();
}

/* Parses JSON text (NULL = null). NULL result: not valid JSON (or OOM). */
cJSON *json_parse(const char *text) {
  return text != NULL ? cJSON_Parse(text) : cJSON_CreateNull();
}

cJSON *err_json(const serr *e) {
  cJSON *o = cJSON_CreateObject();
  o = add(o, "type", cJSON_CreateString(e->type));
  o = add(o, "message", cJSON_CreateString(e->message ? e->message : ""));
  return add(o, "retryable", cJSON_CreateBool(e->retryable));
}

int emit_err(dctx *d, saga_event_type type, int step, int attempt,
             const char *key, const serr *e) {
  return emit(d, type, step, attempt,
              add(cJSON_CreateObject(), key, err_json(e)));
}

int emit_failed(dctx *d, saga_event_type type, int step, int attempt,
                const serr *e, bool final) {
  cJSON *p = add(cJSON_CreateObject(), "error", err_json(e));
  return emit(d, type, step, attempt, add(p, "final", cJSON_CreateBool(final)));
}

int emit_at(dctx *d, saga_event_type type, int step, int attempt, int64_t at) {
  return emit(d, type, step, attempt,
              add(cJSON_CreateObject(), "available_at_ms", json_num(at)));
}

int add_cancel(dctx *d, int step) {
  saga_decision *o = d->out;
  size_t at = 0;
  while (at < o->n_cancel_steps && o->cancel_steps[at] < step)
    at++;
  if (at < o->n_cancel_steps && o->cancel_steps[at] == step)
    return SK_OK;
  if (!grow((void **)&o->cancel_steps, &d->cap_cancels, o->n_cancel_steps,
            sizeof(int)))
    return SK_ENOMEM;
  memmove(&o->cancel_steps[at + 1], &o->cancel_steps[at],
          (o->n_cancel_steps - at) * sizeof(int));
  o->cancel_steps[at] = step;
  o->n_cancel_steps++;
  return SK_OK;
}

int emit_err_text(dctx *d, saga_event_type type, int step, int attempt,
                  const char *key, const char *err, int final) {
  cJSON *e = err != NULL ? cJSON_Parse(err) : NULL;
  if (e == NULL) {
    serr fallback = {"Error", "", false};
    e = err_json(&fallback);
  }
  cJSON *p = add(cJSON_CreateObject(), key, e);
  if (final >= 0)
    p = add(p, "final", cJSON_CreateBool(final != 0));
  return emit(d, type, step, attempt, p);
}

/* ---- actions and policies ----------------------------------------------- */

const def_action *task_action(const dctx *d, int i, task_kind kind) {
  const def_step *s = d->flat[i].def;
  if (kind == TASK_KIND_FALLBACK)
    return s->fallback;
  if (kind == TASK_KIND_COMP)
    return d->cur.steps[i].by_fallback && s->fallback_compensate != NULL
               ? s->fallback_compensate
               : s->compensate;
  return &s->action;
}

/* The def_* policy functions read a step; a fallback (or an overriding
 * compensation) is looked at through a shallow stand-in step. */
void task_policy(const dctx *d, int i, task_kind kind, def_retry *pol,
                 int64_t *timeout) {
  def_step tmp = *d->flat[i].def;
  bool comp = kind == TASK_KIND_COMP;
  if (kind == TASK_KIND_FALLBACK)
    tmp.action = *tmp.fallback;
  else if (comp)
    tmp.compensate = (def_action *)task_action(d, i, kind);
  if (pol != NULL)
    def_effective_retry(d->wf, &tmp, comp, pol);
  if (timeout != NULL)
    *timeout = def_effective_timeout(d->wf, &tmp, comp);
}

/* ---- rendering task inputs ---------------------------------------------- */

static int render(dctx *d, const char *tmpl, int attempt, char **out) {
  template_ctx c = {.saga_id = d->cur.id,
                    .attempt = attempt,
                    .input_json = d->cur.input,
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

/* An http action's request: {"method","url","headers","body"[,
 * "success_codes"]}; the url is always a string, even if its template is a
 * lone reference to a number. */
static int render_http(dctx *d, const def_http *h, int attempt, char **out) {
  buf b = BUF_INIT;
  buf_puts(&b, "{\"method\":");
  buf_json_str(&b, h->method ? h->method : "GET");
  buf_puts(&b, ",\"url\":");
  buf_json_str(&b, h->url ? h->url : "");
  buf_printf(&b, ",\"headers\":%s,\"body\":%s",
             h->headers_json ? h->headers_json : "{}",
             h->body_json ? h->body_json : "null");
  /* The statuses that count as success travel with the request, so the
   * executor needs no definition. */
  if (h->n_success_codes > 0) {
    buf_puts(&b, ",\"success_codes\":[");
    for (size_t i = 0; i < h->n_success_codes; i++)
      buf_printf(&b, "%s%d", i ? "," : "", h->success_codes[i]);
    buf_putc(&b, ']');
  }
  buf_putc(&b, '}');
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
  const char *output = d->cur.steps[i].output;
  buf b = BUF_INIT;
  buf_printf(&b, "{\"input\":%s,\"output\":%s}",
             d->cur.input ? d->cur.input : "{}", output ? output : "null");
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
  *out = strdup(d->cur.input ? d->cur.input : "{}");
  return *out != NULL ? SK_OK : SK_ENOMEM;
}

int build_task(dctx *d, int i, task_kind kind, int attempt, int64_t base_at,
               saga_task *t) {
  const def_step *s = d->flat[i].def;
  const def_action *a = task_action(d, i, kind);
  bool fwd = kind == TASK_KIND_FWD;
  bool comp = kind == TASK_KIND_COMP;
  memset(t, 0, sizeof(*t));
  t->step = i;
  t->kind = kind;
  t->attempt = attempt;
  t->action = a->kind;
  t->available_at_ms =
      a->kind == DEF_KIND_SLEEP ? sat_add(base_at, a->sleep_ms) : base_at;
  task_policy(d, i, kind, NULL, &t->timeout_ms);
  if (!comp && d->cur.deadline_ms > 0 &&
      d->cur.deadline_ms - d->now < t->timeout_ms)
    t->timeout_ms = d->cur.deadline_ms - d->now;
  t->gpus = fwd ? s->gpus : 0;
  t->gpu_memory_mb = fwd ? s->gpu_memory_mb : 0;
  /* A resume replay's step_input stands for the template in every forward
   * attempt of that step (the state keeps it in input_override). */
  const char *override = fwd ? d->cur.steps[i].input_override : NULL;
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
