/*
 * state_json.c — the canonical JSON form of a saga's state (sagas.state).
 *
 * Canonical means: compact, keys always in the order written below, a
 * step's keys present only when they differ from the defaults the reader
 * assumes (parent and branch -1, numbers 0, JSON values null, false; the
 * stored form is written on every step, so it is kept small), every
 * top-level key always present, JSON-valued fields (input, output, errors)
 * embedded as JSON values rather than strings, NULL pointers written as
 * null. saga_state_to_json_full writes every step key (the API's view). Equal
 * states give byte-equal text, and from_json(to_json(st)) gives st back
 * exactly (the JSON texts held in a state are compact cJSON text, as evolve
 * stores them, so re-printing them is the identity).
 *
 *   {"id","workflow","version","idempotency_key","status","phase","cursor",
 *    "input","error","output","created_ms","updated_ms","deadline_ms",
 *    "last_seq","cancel_requested","replay_of","replayed_by",
 *    "steps":[{"name","status","parent","branch","attempts",
 *              "comp_attempts","fb_attempts","output","error","comp_error",
 *              "input_override","by_fallback","scheduled_ms","finished_ms",
 *              "finished_seq","available_at_ms"}]}
 *
 * Reading, a step without "parent"/"branch" is a top-level one (-1).
 *
 * Thread: any.
 */
#include "saga/saga.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/buf.h"
#include "common/err.h"

#define JSON_INT_MAX 9007199254740992.0

static const char *const phase_names[] = {"forward", "compensating", "done"};

/* ---- writing --------------------------------------------------------------
 */

/* Keys are the literals below: nothing in them needs escaping. */
static void put_key(buf *b, const char *key, bool first) {
  if (!first)
    buf_putc(b, ',');
  buf_putc(b, '"');
  buf_puts(b, key);
  buf_puts(b, "\":");
}

static void put_str(buf *b, const char *key, const char *v) {
  put_key(b, key, false);
  if (v == NULL)
    buf_puts(b, "null");
  else
    buf_json_str(b, v);
}

/* A JSON value held as text, embedded as is. */
static void put_raw(buf *b, const char *key, const char *json) {
  put_key(b, key, false);
  buf_puts(b, json != NULL ? json : "null");
}

static void put_i64(buf *b, const char *key, int64_t v) {
  put_key(b, key, false);
  buf_put_i64(b, v);
}

static void put_bool(buf *b, const char *key, bool v) {
  put_key(b, key, false);
  buf_puts(b, v ? "true" : "false");
}

/* A step's key is written when its value is not the default the reader
 * assumes (see rd_step), or always in the full form. */
static void put_step(buf *b, const saga_step_state *s, bool full) {
  buf_putc(b, '{');
  put_key(b, "name", true);
  buf_json_str(b, s->name != NULL ? s->name : "");
  put_str(b, "status", step_status_name(s->status));
  if (full || s->parent != -1)
    put_i64(b, "parent", s->parent);
  if (full || s->branch != -1)
    put_i64(b, "branch", s->branch);
  if (full || s->attempts != 0)
    put_i64(b, "attempts", s->attempts);
  if (full || s->comp_attempts != 0)
    put_i64(b, "comp_attempts", s->comp_attempts);
  if (full || s->fb_attempts != 0)
    put_i64(b, "fb_attempts", s->fb_attempts);
  if (full || s->output != NULL)
    put_raw(b, "output", s->output);
  if (full || s->error != NULL)
    put_raw(b, "error", s->error);
  if (full || s->comp_error != NULL)
    put_raw(b, "comp_error", s->comp_error);
  if (full || s->input_override != NULL)
    put_raw(b, "input_override", s->input_override);
  if (full || s->by_fallback)
    put_bool(b, "by_fallback", s->by_fallback);
  if (full || s->scheduled_ms != 0)
    put_i64(b, "scheduled_ms", s->scheduled_ms);
  if (full || s->finished_ms != 0)
    put_i64(b, "finished_ms", s->finished_ms);
  if (full || s->finished_seq != 0)
    put_i64(b, "finished_seq", s->finished_seq);
  if (full || s->available_at_ms != 0)
    put_i64(b, "available_at_ms", s->available_at_ms);
  buf_putc(b, '}');
}

static int state_to_json(const saga_state *st, bool full, char **out) {
  if (st == NULL || out == NULL)
    return SK_EINVAL;
  buf b = BUF_INIT;
  buf_putc(&b, '{');
  put_key(&b, "id", true);
  buf_json_str(&b, st->id);
  put_str(&b, "workflow", st->workflow);
  put_i64(&b, "version", st->version);
  put_str(&b, "idempotency_key", st->idempotency_key);
  put_str(&b, "status", saga_status_name(st->status));
  put_str(&b, "phase",
          (unsigned)st->phase < 3 ? phase_names[st->phase] : "unknown");
  put_i64(&b, "cursor", st->cursor);
  put_raw(&b, "input", st->input);
  put_raw(&b, "error", st->error);
  put_raw(&b, "output", st->output);
  put_i64(&b, "created_ms", st->created_ms);
  put_i64(&b, "updated_ms", st->updated_ms);
  put_i64(&b, "deadline_ms", st->deadline_ms);
  put_i64(&b, "last_seq", st->last_seq);
  put_bool(&b, "cancel_requested", st->cancel_requested);
  put_str(&b, "replay_of", st->replay_of);
  put_str(&b, "replayed_by", st->replayed_by);
  put_key(&b, "steps", false);
  buf_putc(&b, '[');
  for (size_t i = 0; i < st->n_steps; i++) {
    if (i > 0)
      buf_putc(&b, ',');
    put_step(&b, &st->steps[i], full);
  }
  buf_puts(&b, "]}");
  if (!buf_ok(&b)) {
    buf_free(&b);
    return SK_ENOMEM;
  }
  *out = buf_steal(&b);
  return *out != NULL ? SK_OK : SK_ENOMEM;
}

int saga_state_to_json(const saga_state *st, char **out) {
  return state_to_json(st, false, out);
}

int saga_state_to_json_full(const saga_state *st, char **out) {
  return state_to_json(st, true, out);
}

/* ---- reading
 * ------------------------------------------------------------------ */

/* Readers leave *out untouched when the key is absent (the default stays). */

static int rd_i64(const cJSON *o, const char *key, int64_t *out) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
  if (it == NULL)
    return SK_OK;
  double v = cJSON_IsNumber(it) ? it->valuedouble : NAN;
  if (!(v >= -JSON_INT_MAX && v <= JSON_INT_MAX) || v != floor(v))
    return SK_EJSON;
  *out = (int64_t)v;
  return SK_OK;
}

static int rd_int(const cJSON *o, const char *key, int *out) {
  int64_t v = *out;
  int rc = rd_i64(o, key, &v);
  if (rc != SK_OK)
    return rc;
  if (v < INT32_MIN || v > INT32_MAX)
    return SK_EJSON;
  *out = (int)v;
  return SK_OK;
}

static int rd_bool(const cJSON *o, const char *key, bool *out) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
  if (it == NULL)
    return SK_OK;
  if (!cJSON_IsBool(it))
    return SK_EJSON;
  *out = cJSON_IsTrue(it);
  return SK_OK;
}

static int rd_str(const cJSON *o, const char *key, char **out) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
  if (it == NULL || cJSON_IsNull(it))
    return SK_OK;
  if (!cJSON_IsString(it) || it->valuestring == NULL)
    return SK_EJSON;
  *out = strdup(it->valuestring);
  return *out != NULL ? SK_OK : SK_ENOMEM;
}

static int rd_raw(const cJSON *o, const char *key, char **out) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
  if (it == NULL || cJSON_IsNull(it))
    return SK_OK;
  *out = cJSON_PrintUnformatted(it);
  return *out != NULL ? SK_OK : SK_ENOMEM;
}

static int rd_step_status(const cJSON *o, step_status *out) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, "status");
  if (!cJSON_IsString(it) || step_status_parse(it->valuestring, out) != SK_OK)
    return SK_EJSON;
  return SK_OK;
}

static int rd_step(const cJSON *o, saga_step_state *s) {
  int rc;
  if (!cJSON_IsObject(o))
    return SK_EJSON;
  s->parent = -1;
  s->branch = -1;
  if ((rc = rd_str(o, "name", &s->name)) != SK_OK ||
      (rc = rd_step_status(o, &s->status)) != SK_OK ||
      (rc = rd_int(o, "parent", &s->parent)) != SK_OK ||
      (rc = rd_int(o, "branch", &s->branch)) != SK_OK ||
      (rc = rd_int(o, "attempts", &s->attempts)) != SK_OK ||
      (rc = rd_int(o, "comp_attempts", &s->comp_attempts)) != SK_OK ||
      (rc = rd_int(o, "fb_attempts", &s->fb_attempts)) != SK_OK ||
      (rc = rd_raw(o, "output", &s->output)) != SK_OK ||
      (rc = rd_raw(o, "error", &s->error)) != SK_OK ||
      (rc = rd_raw(o, "comp_error", &s->comp_error)) != SK_OK ||
      (rc = rd_raw(o, "input_override", &s->input_override)) != SK_OK ||
      (rc = rd_bool(o, "by_fallback", &s->by_fallback)) != SK_OK ||
      (rc = rd_i64(o, "scheduled_ms", &s->scheduled_ms)) != SK_OK ||
      (rc = rd_i64(o, "finished_ms", &s->finished_ms)) != SK_OK ||
      (rc = rd_i64(o, "finished_seq", &s->finished_seq)) != SK_OK ||
      (rc = rd_i64(o, "available_at_ms", &s->available_at_ms)) != SK_OK)
    return rc;
  return s->name != NULL ? SK_OK : SK_EJSON;
}

static int rd_steps(const cJSON *o, saga_state *st) {
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(o, "steps");
  if (!cJSON_IsArray(arr))
    return SK_EJSON;
  size_t n = (size_t)cJSON_GetArraySize(arr);
  if (n == 0)
    return SK_OK;
  if ((st->steps = calloc(n, sizeof(*st->steps))) == NULL)
    return SK_ENOMEM;
  st->n_steps = n;
  size_t i = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, arr) {
    int rc = rd_step(it, &st->steps[i++]);
    if (rc != SK_OK)
      return rc;
  }
  return SK_OK;
}

static int rd_enums(const cJSON *o, saga_state *st) {
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "status");
  const cJSON *ph = cJSON_GetObjectItemCaseSensitive(o, "phase");
  if (!cJSON_IsString(s) || saga_status_parse(s->valuestring, &st->status))
    return SK_EJSON;
  if (!cJSON_IsString(ph))
    return SK_EJSON;
  for (int i = 0; i < 3; i++) {
    if (strcmp(ph->valuestring, phase_names[i]) == 0) {
      st->phase = (saga_phase)i;
      return SK_OK;
    }
  }
  return SK_EJSON;
}

static int rd_id(const cJSON *o, saga_state *st) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, "id");
  if (it == NULL)
    return SK_OK;
  if (!cJSON_IsString(it) || strlen(it->valuestring) >= sizeof(st->id))
    return SK_EJSON;
  memcpy(st->id, it->valuestring, strlen(it->valuestring) + 1);
  return SK_OK;
}

static int rd_state(const cJSON *o, saga_state *st) {
  int rc;
  if (!cJSON_IsObject(o))
    return SK_EJSON;
  if ((rc = rd_id(o, st)) != SK_OK ||
      (rc = rd_str(o, "workflow", &st->workflow)) != SK_OK ||
      (rc = rd_int(o, "version", &st->version)) != SK_OK ||
      (rc = rd_str(o, "idempotency_key", &st->idempotency_key)) != SK_OK ||
      (rc = rd_enums(o, st)) != SK_OK ||
      (rc = rd_int(o, "cursor", &st->cursor)) != SK_OK ||
      (rc = rd_raw(o, "input", &st->input)) != SK_OK ||
      (rc = rd_raw(o, "error", &st->error)) != SK_OK ||
      (rc = rd_raw(o, "output", &st->output)) != SK_OK ||
      (rc = rd_i64(o, "created_ms", &st->created_ms)) != SK_OK ||
      (rc = rd_i64(o, "updated_ms", &st->updated_ms)) != SK_OK ||
      (rc = rd_i64(o, "deadline_ms", &st->deadline_ms)) != SK_OK ||
      (rc = rd_i64(o, "last_seq", &st->last_seq)) != SK_OK ||
      (rc = rd_bool(o, "cancel_requested", &st->cancel_requested)) != SK_OK ||
      (rc = rd_str(o, "replay_of", &st->replay_of)) != SK_OK ||
      (rc = rd_str(o, "replayed_by", &st->replayed_by)) != SK_OK ||
      (rc = rd_steps(o, st)) != SK_OK)
    return rc;
  return SK_OK;
}

int saga_state_from_json(const char *json, saga_state *out) {
  if (json == NULL || out == NULL)
    return SK_EINVAL;
  saga_state_init(out);
  cJSON *o = cJSON_Parse(json);
  if (o == NULL)
    return SK_EJSON;
  int rc = rd_state(o, out);
  cJSON_Delete(o);
  if (rc != SK_OK)
    saga_state_clear(out);
  return rc;
}
