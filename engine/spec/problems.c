/*
 * problems.c — the list of problems a parser or validator collects (see
 * problems.h).
 *
 * Invariants: n counts every problem added; at most DEF_PROBLEMS_MAX of them
 * are kept in items, so the kept ones are items[0 .. min(n, MAX)). An
 * allocation failure sets oom and loses that problem but is still counted,
 * so a caller never mistakes an invalid spec for a valid one.
 *
 * Thread: the caller's; a def_problems is not shared.
 */
#include "spec/problems.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"

void def_problems_init(def_problems *p) { memset(p, 0, sizeof(*p)); }

static size_t kept(const def_problems *p) {
  return p->n < DEF_PROBLEMS_MAX ? p->n : DEF_PROBLEMS_MAX;
}

void def_problems_clear(def_problems *p) {
  if (p == NULL)
    return;
  size_t k = kept(p);
  for (size_t i = 0; i < k && i < p->cap; i++) {
    free(p->items[i].path);
    free(p->items[i].message);
  }
  free(p->items);
  def_problems_init(p);
}

/* Makes items[slot] exist. New slots are zeroed so that clear() and the
 * readers can treat a slot lost to OOM as an empty one. */
static bool grow(def_problems *p, size_t slot) {
  if (slot < p->cap)
    return true;
  size_t cap = p->cap ? p->cap * 2 : 8;
  while (cap <= slot)
    cap *= 2;
  if (cap > DEF_PROBLEMS_MAX)
    cap = DEF_PROBLEMS_MAX;
  def_problem *items = realloc(p->items, cap * sizeof(*items));
  if (items == NULL)
    return false;
  memset(items + p->cap, 0, (cap - p->cap) * sizeof(*items));
  p->items = items;
  p->cap = cap;
  return true;
}

void def_problems_add(def_problems *p, const char *path, const char *fmt, ...) {
  if (p == NULL)
    return;
  size_t slot = p->n++;
  if (slot >= DEF_PROBLEMS_MAX)
    return;
  if (!grow(p, slot)) {
    p->oom = true;
    return;
  }
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  p->items[slot].path = strdup(path != NULL ? path : "");
  p->items[slot].message = strdup(msg);
  if (p->items[slot].path == NULL || p->items[slot].message == NULL)
    p->oom = true;
}

char *def_problems_to_json(const def_problems *p) {
  buf b = BUF_INIT;
  buf_putc(&b, '[');
  size_t k = kept(p);
  for (size_t i = 0; i < k && i < p->cap; i++) {
    const def_problem *it = &p->items[i];
    if (it->message == NULL)
      continue; /* lost to OOM */
    if (b.len > 1)
      buf_putc(&b, ',');
    buf_puts(&b, "{\"path\":");
    buf_json_str(&b, it->path != NULL ? it->path : "");
    buf_puts(&b, ",\"message\":");
    buf_json_str(&b, it->message != NULL ? it->message : "out of memory");
    buf_putc(&b, '}');
  }
  buf_putc(&b, ']');
  return buf_steal(&b);
}

int def_problems_to_error(const def_problems *p, sk_error *err) {
  if (p == NULL || p->n == 0)
    return SK_OK;
  const char *msg = "out of memory";
  const char *path = "";
  if (p->cap > 0 && p->items[0].message != NULL) {
    msg = p->items[0].message;
    path = p->items[0].path != NULL ? p->items[0].path : "";
  }
  size_t more = p->n - 1;
  if (more == 0)
    sk_error_set(err, SK_EINVALSPEC, "%s", msg);
  else
    sk_error_set(err, SK_EINVALSPEC, "%s (and %zu more problem%s)", msg, more,
                 more == 1 ? "" : "s");
  sk_error_set_path(err, path);
  return SK_EINVALSPEC;
}
