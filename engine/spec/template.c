/*
 * template.c — ${...} templates in JSON inputs (see template.h).
 *
 * Grammar of one template (the text between "${" and the first "}"):
 *   ref      := "input" ("." seg)*
 *             | "steps" "." NAME "." "output" ("." seg)*
 *             | "saga" "." ("id" | "attempt")
 *   seg      := one or more bytes other than . $ { } and ASCII controls/space
 * A step name may itself contain dots ([a-z0-9_.-]); the name is everything
 * between "steps." and the first ".output" segment after it. There is no
 * escape syntax: a "${" without a closing "}" is a syntax error, while a
 * lone "$" or "{" is plain text.
 *
 * Rendering: a string value that is exactly one template becomes the
 * referenced value (deep copy, its own JSON type; null when missing); in a
 * longer string each template is replaced by text (strings raw, other values
 * as compact JSON, "" when missing). Object keys are never templated.
 *
 * Invariants: text without "${" is returned byte for byte, unparsed. The
 * input document and each step output are parsed at most once and only when
 * a template refers to them (step_output is called at most once per
 * referenced step, never for others). Parsed documents are limited to
 * SK_JSON_DEPTH_MAX levels of nesting.
 *
 * Numbers go through cJSON's double: integers beyond 2^53 lose precision.
 *
 * Thread: any; no shared state. The one exception is cJSON itself: every cJSON
 * parse resets cJSON's process-wide error pointer, a benign race that TSan
 * reports.
 */
#include "spec/template.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"

typedef enum ref_root {
  REF_INPUT,
  REF_STEP,
  REF_SAGA_ID,
  REF_SAGA_ATTEMPT
} ref_root;

/* One parsed template; the pointers point into the template text. */
typedef struct tref {
  ref_root root;
  const char *step; /* REF_STEP: the step name */
  size_t step_len;
  const char *path; /* the path below input / output; may be empty */
  size_t path_len;
} tref;

/* ---- syntax -------------------------------------------------------------- */

static bool seg_byte_ok(unsigned char c) {
  return c > ' ' && c != '.' && c != '$' && c != '{' && c != '}' && c != 0x7f;
}

/* Checks the dot-separated segments of body[0..len); NULL if fine. */
static const char *check_segments(const char *body, size_t len) {
  size_t seg = 0;
  for (size_t i = 0; i < len; i++) {
    if (body[i] == '.') {
      if (seg == 0)
        return "empty path segment";
      seg = 0;
    } else if (!seg_byte_ok((unsigned char)body[i])) {
      return "invalid character in reference";
    } else {
      seg++;
    }
  }
  return seg == 0 ? "empty path segment" : NULL;
}

static bool seg_is(const char *s, size_t len, const char *word) {
  return len == strlen(word) && memcmp(s, word, len) == 0;
}

static const char *parse_steps_ref(const char *rest, size_t len, tref *r) {
  /* rest = "NAME.output[.path]": the name ends at the first ".output"
   * segment that is not the first segment. */
  for (size_t i = 1; i + 7 <= len; i++) {
    if (rest[i] != '.' || memcmp(rest + i + 1, "output", 6) != 0)
      continue;
    if (i + 7 < len && rest[i + 7] != '.')
      continue;
    r->root = REF_STEP;
    r->step = rest;
    r->step_len = i;
    r->path = i + 8 <= len ? rest + i + 8 : rest + len;
    r->path_len = i + 8 <= len ? len - i - 8 : 0;
    return NULL;
  }
  return "expected steps.NAME.output";
}

/* Parses one template body (without "${" and "}"); NULL or why it is bad. */
static const char *parse_ref(const char *body, size_t len, tref *r) {
  memset(r, 0, sizeof(*r));
  if (len == 0)
    return "empty reference";
  const char *why = check_segments(body, len);
  if (why != NULL)
    return why;
  const char *dot = memchr(body, '.', len);
  size_t root_len = dot != NULL ? (size_t)(dot - body) : len;
  const char *rest = dot != NULL ? dot + 1 : body + len;
  size_t rest_len = dot != NULL ? len - root_len - 1 : 0;
  if (seg_is(body, root_len, "input")) {
    r->root = REF_INPUT;
    r->path = rest;
    r->path_len = rest_len;
    return NULL;
  }
  if (seg_is(body, root_len, "steps"))
    return parse_steps_ref(rest, rest_len, r);
  if (seg_is(body, root_len, "saga")) {
    if (seg_is(rest, rest_len, "id"))
      r->root = REF_SAGA_ID;
    else if (seg_is(rest, rest_len, "attempt"))
      r->root = REF_SAGA_ATTEMPT;
    else
      return "saga has only id and attempt";
    return NULL;
  }
  return "unknown root (expected input, steps or saga)";
}

/* Finds the next template in s at or after *pos. Returns 1 and sets
 * [*start, *end) (the whole "${...}") if there is one, 0 if none, -1 if a
 * "${" is not closed. */
static int next_template(const char *s, size_t *pos, size_t *start,
                         size_t *end) {
  const char *open = strstr(s + *pos, "${");
  if (open == NULL)
    return 0;
  *start = (size_t)(open - s);
  const char *close = strchr(open + 2, '}');
  if (close == NULL) {
    *end = strlen(s);
    return -1;
  }
  *end = (size_t)(close - s) + 1;
  *pos = *end;
  return 1;
}

/* ---- JSON helpers -------------------------------------------------------- */

static int tree_depth(const cJSON *j) {
  int max = 0;
  for (const cJSON *c = j->child; c != NULL; c = c->next) {
    int d = tree_depth(c);
    if (d > max)
      max = d;
  }
  return (cJSON_IsArray(j) || cJSON_IsObject(j)) ? max + 1 : max;
}

/* Parses JSON text with the depth limit; NULL if invalid or too deep. */
static cJSON *parse_doc(const char *text) {
  cJSON *j = cJSON_Parse(text);
  if (j != NULL && tree_depth(j) > SK_JSON_DEPTH_MAX) {
    cJSON_Delete(j);
    return NULL;
  }
  return j;
}

/* Follows a dot path (object keys or array indexes); NULL if missing. */
static const cJSON *walk_path(const cJSON *node, const char *path, size_t len) {
  size_t i = 0;
  while (node != NULL && i < len) {
    size_t j = i;
    while (j < len && path[j] != '.')
      j++;
    char *seg = strndup(path + i, j - i);
    if (seg == NULL)
      return NULL;
    if (cJSON_IsObject(node)) {
      node = cJSON_GetObjectItemCaseSensitive(node, seg);
    } else if (cJSON_IsArray(node) && strspn(seg, "0123456789") == j - i &&
               j - i <= 9) {
      node = cJSON_GetArrayItem(node, atoi(seg));
    } else {
      node = NULL;
    }
    free(seg);
    i = j + 1;
  }
  return node;
}

/* ---- rendering ----------------------------------------------------------- */

typedef struct cached_output {
  char *name;
  cJSON *doc; /* NULL: the step has no output */
} cached_output;

typedef struct render {
  const template_ctx *ctx;
  sk_error *err;
  cJSON *input;
  bool input_loaded;
  cached_output *outs;
  size_t n_outs, cap_outs;
  cJSON *saga_id, *attempt;
} render;

static int load_input(render *r) {
  if (r->input_loaded)
    return SK_OK;
  r->input_loaded = true;
  const char *text = r->ctx->input_json != NULL ? r->ctx->input_json : "{}";
  r->input = parse_doc(text);
  if (r->input == NULL)
    return sk_error_set(r->err, SK_EJSON, "saga input is not valid JSON");
  return SK_OK;
}

static int load_output(render *r, const char *name, size_t len, cJSON **doc) {
  for (size_t i = 0; i < r->n_outs; i++)
    if (strlen(r->outs[i].name) == len &&
        memcmp(r->outs[i].name, name, len) == 0) {
      *doc = r->outs[i].doc;
      return SK_OK;
    }
  if (r->n_outs == r->cap_outs) {
    size_t cap = r->cap_outs ? r->cap_outs * 2 : 4;
    cached_output *o = realloc(r->outs, cap * sizeof(*o));
    if (o == NULL)
      return sk_error_set(r->err, SK_ENOMEM, NULL);
    r->outs = o;
    r->cap_outs = cap;
  }
  cached_output *c = &r->outs[r->n_outs];
  c->doc = NULL;
  c->name = strndup(name, len);
  if (c->name == NULL)
    return sk_error_set(r->err, SK_ENOMEM, NULL);
  r->n_outs++;
  const char *text = r->ctx->step_output != NULL
                         ? r->ctx->step_output(r->ctx->ud, c->name)
                         : NULL;
  if (text != NULL) {
    c->doc = parse_doc(text);
    if (c->doc == NULL)
      return sk_error_set(r->err, SK_EJSON,
                          "output of step \"%s\" is not valid JSON", c->name);
  }
  *doc = c->doc;
  return SK_OK;
}

/* The value a template refers to (borrowed), or NULL if it is missing. */
static int resolve(render *r, const tref *ref, const cJSON **val) {
  cJSON *doc = NULL;
  int rc = SK_OK;
  *val = NULL;
  switch (ref->root) {
  case REF_SAGA_ID:
    if (r->saga_id == NULL && r->ctx->saga_id != NULL)
      r->saga_id = cJSON_CreateString(r->ctx->saga_id);
    *val = r->saga_id;
    return SK_OK;
  case REF_SAGA_ATTEMPT:
    if (r->attempt == NULL)
      r->attempt = cJSON_CreateNumber(r->ctx->attempt);
    *val = r->attempt;
    return r->attempt != NULL ? SK_OK : sk_error_set(r->err, SK_ENOMEM, NULL);
  case REF_INPUT:
    rc = load_input(r);
    doc = r->input;
    break;
  case REF_STEP:
    rc = load_output(r, ref->step, ref->step_len, &doc);
    break;
  }
  if (rc != SK_OK || doc == NULL)
    return rc;
  *val = walk_path(doc, ref->path, ref->path_len);
  return SK_OK;
}

static int bad_syntax(render *r, const char *s, size_t start, size_t end,
                      const char *why) {
  return sk_error_set(r->err, SK_EINVAL, "invalid template \"%.*s\": %s",
                      (int)(end - start > 80 ? 80 : end - start), s + start,
                      why);
}

/* Turns a string item into `repl` in place (keeps its key and links). */
static void become(cJSON *item, cJSON *repl) {
  cJSON_free(item->valuestring);
  item->valuestring = repl->valuestring;
  item->child = repl->child;
  item->valueint = repl->valueint;
  item->valuedouble = repl->valuedouble;
  item->type = (repl->type & 0xff) | (item->type & cJSON_StringIsConst);
  repl->valuestring = NULL;
  repl->child = NULL;
  cJSON_Delete(repl);
}

static int render_whole(render *r, cJSON *item, const tref *ref) {
  const cJSON *val;
  int rc = resolve(r, ref, &val);
  if (rc != SK_OK)
    return rc;
  cJSON *repl = val != NULL ? cJSON_Duplicate(val, 1) : cJSON_CreateNull();
  if (repl == NULL)
    return sk_error_set(r->err, SK_ENOMEM, NULL);
  become(item, repl);
  return SK_OK;
}

static void append_value(buf *b, const cJSON *val) {
  if (val == NULL)
    return;
  if (cJSON_IsString(val)) {
    buf_puts(b, val->valuestring);
    return;
  }
  char *text = cJSON_PrintUnformatted(val);
  if (text == NULL) {
    b->oom = true;
    return;
  }
  buf_puts(b, text);
  cJSON_free(text);
}

static int render_string(render *r, cJSON *item) {
  const char *s = item->valuestring;
  size_t pos = 0, start, end, copied = 0;
  tref ref;
  buf b = BUF_INIT;
  int found, rc = SK_OK;
  while (rc == SK_OK && (found = next_template(s, &pos, &start, &end)) != 0) {
    if (found < 0) {
      rc = bad_syntax(r, s, start, end, "missing closing \"}\"");
      break;
    }
    const char *why = parse_ref(s + start + 2, end - start - 3, &ref);
    if (why != NULL) {
      rc = bad_syntax(r, s, start, end, why);
      break;
    }
    if (start == 0 && s[end] == '\0') {
      buf_free(&b);
      return render_whole(r, item, &ref);
    }
    const cJSON *val;
    rc = resolve(r, &ref, &val);
    buf_append(&b, s + copied, start - copied);
    append_value(&b, val);
    copied = end;
  }
  if (rc == SK_OK) {
    buf_puts(&b, s + copied);
    char *text = buf_steal(&b);
    if (text == NULL)
      return sk_error_set(r->err, SK_ENOMEM, NULL);
    cJSON_free(item->valuestring);
    item->valuestring = text; /* default cJSON hooks: malloc/free */
  }
  buf_free(&b);
  return rc;
}

static int render_tree(render *r, cJSON *item) {
  if (cJSON_IsString(item) && strstr(item->valuestring, "${") != NULL)
    return render_string(r, item);
  for (cJSON *c = item->child; c != NULL; c = c->next) {
    int rc = render_tree(r, c);
    if (rc != SK_OK)
      return rc;
  }
  return SK_OK;
}

static void render_free(render *r) {
  cJSON_Delete(r->input);
  for (size_t i = 0; i < r->n_outs; i++) {
    free(r->outs[i].name);
    cJSON_Delete(r->outs[i].doc);
  }
  free(r->outs);
  cJSON_Delete(r->saga_id);
  cJSON_Delete(r->attempt);
}

int template_render(const char *tmpl_json, const template_ctx *ctx, char **out,
                    sk_error *err) {
  *out = NULL;
  if (tmpl_json == NULL || ctx == NULL)
    return sk_error_set(err, SK_EINVAL, "template and context are required");
  if (strstr(tmpl_json, "${") == NULL) {
    *out = strdup(tmpl_json);
    return *out != NULL ? SK_OK : sk_error_set(err, SK_ENOMEM, NULL);
  }
  cJSON *root = parse_doc(tmpl_json);
  if (root == NULL)
    return sk_error_set(err, SK_EJSON, "template is not valid JSON");
  render r = {.ctx = ctx, .err = err};
  int rc = render_tree(&r, root);
  if (rc == SK_OK) {
    *out = cJSON_PrintUnformatted(root);
    if (*out == NULL)
      rc = sk_error_set(err, SK_ENOMEM, NULL);
  }
  render_free(&r);
  cJSON_Delete(root);
  return rc;
}

/* ---- checking ------------------------------------------------------------ */

typedef struct check {
  const char *const *known;
  size_t n_known;
  def_problems *p;
  int added;
} check;

static bool known_step(const check *c, const char *name, size_t len) {
  for (size_t i = 0; i < c->n_known; i++)
    if (c->known[i] != NULL && strlen(c->known[i]) == len &&
        memcmp(c->known[i], name, len) == 0)
      return true;
  return false;
}

static void check_one_string(check *c, const char *s, const char *path) {
  size_t pos = 0, start, end;
  int found;
  tref ref;
  while ((found = next_template(s, &pos, &start, &end)) != 0) {
    int shown = (int)(end - start > 80 ? 80 : end - start);
    const char *why = found < 0
                          ? "missing closing \"}\""
                          : parse_ref(s + start + 2, end - start - 3, &ref);
    if (why != NULL) {
      def_problems_add(c->p, path, "invalid template \"%.*s\": %s", shown,
                       s + start, why);
      c->added++;
      if (found < 0)
        return;
      continue;
    }
    if (ref.root == REF_STEP && !known_step(c, ref.step, ref.step_len)) {
      def_problems_add(c->p, path,
                       "template \"%.*s\" refers to step \"%.*s\", which does "
                       "not precede it",
                       shown, s + start, (int)ref.step_len, ref.step);
      c->added++;
    }
  }
}

/* Appends a JSON Pointer segment (RFC 6901: ~ → ~0, / → ~1). */
static void pointer_push(buf *b, const char *seg) {
  buf_putc(b, '/');
  for (; *seg; seg++) {
    if (*seg == '~')
      buf_puts(b, "~0");
    else if (*seg == '/')
      buf_puts(b, "~1");
    else
      buf_putc(b, *seg);
  }
}

static void check_tree(check *c, const cJSON *item, buf *path) {
  if (cJSON_IsString(item)) {
    check_one_string(c, item->valuestring,
                     path->data != NULL ? path->data : "");
    return;
  }
  size_t mark = path->len, i = 0;
  for (const cJSON *ch = item->child; ch != NULL; ch = ch->next, i++) {
    if (cJSON_IsObject(item)) {
      pointer_push(path, ch->string != NULL ? ch->string : "");
    } else {
      buf_printf(path, "/%zu", i);
    }
    check_tree(c, ch, path);
    path->len = mark;
    if (path->data != NULL)
      path->data[mark] = '\0';
  }
}

int template_check(const char *tmpl_json, const char *const *known_steps,
                   size_t n_known, const char *path, def_problems *p) {
  check c = {known_steps, n_known, p, 0};
  const char *at = path != NULL ? path : "";
  cJSON *root = tmpl_json != NULL ? cJSON_Parse(tmpl_json) : NULL;
  if (root == NULL) {
    def_problems_add(p, at, "must be valid JSON");
    return 1;
  }
  if (tree_depth(root) > SK_JSON_DEPTH_MAX) {
    def_problems_add(p, at, "must not nest deeper than %d levels",
                     SK_JSON_DEPTH_MAX);
    cJSON_Delete(root);
    return 1;
  }
  if (strstr(tmpl_json, "${") != NULL) {
    buf b = BUF_INIT;
    buf_puts(&b, at);
    check_tree(&c, root, &b);
    if (!buf_ok(&b) && p != NULL)
      p->oom = true;
    buf_free(&b);
  }
  cJSON_Delete(root);
  return c.added;
}

int template_check_string(const char *s, const char *const *known_steps,
                          size_t n_known, const char *path, def_problems *p) {
  check c = {known_steps, n_known, p, 0};
  if (s != NULL)
    check_one_string(&c, s, path != NULL ? path : "");
  return c.added;
}
