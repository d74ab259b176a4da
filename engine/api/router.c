/*
 * router.c — route table and path matching (see router.h).
 *
 * Invariants: a route's pattern is split once, at router_add, into
 * segments that are either literals or captures; the table only grows until
 * router_free. Matching allocates nothing: decoded captures go into the
 * caller's scratch space (the request arena in http_conn.c).
 *
 * Thread: built on any one thread before serving; matched on the loop thread.
 */
#include "api/router.h"

#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct segment {
  const char *text; /* literal text, or the capture's name */
  size_t len;
  bool capture;
} segment;

typedef struct route {
  int method;
  char *orig;    /* owned; the pattern as given */
  char *pattern; /* owned; split in place, segments point into it */
  int nseg;
  segment seg[ROUTER_SEGMENTS_MAX];
  http_handler_fn fn;
  void *udata;
} route;

struct router {
  route *routes;
  int n, cap;
};

int router_new(router **out) {
  *out = calloc(1, sizeof(router));
  return *out == NULL ? SK_ENOMEM : SK_OK;
}

void router_free(router *r) {
  if (r == NULL)
    return;
  for (int i = 0; i < r->n; i++) {
    free(r->routes[i].orig);
    free(r->routes[i].pattern);
  }
  free(r->routes);
  free(r);
}

/* Splits a pattern in place ('/' become NULs); -1 if it is malformed. */
static int split_pattern(route *rt) {
  char *p = rt->pattern + 1;
  rt->nseg = 0;
  if (*p == '\0')
    return 0; /* "/" */
  for (;;) {
    char *end = strchr(p, '/');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == 0 || rt->nseg == ROUTER_SEGMENTS_MAX)
      return -1;
    segment *s = &rt->seg[rt->nseg++];
    s->capture = p[0] == '{';
    if (s->capture && (len < 3 || p[len - 1] != '}'))
      return -1;
    s->text = s->capture ? p + 1 : p;
    s->len = s->capture ? len - 2 : len;
    if (s->capture)
      p[len - 1] = '\0'; /* the name alone: "id", not "id}" */
    if (end == NULL)
      break;
    *end = '\0';
    p = end + 1;
  }
  int captures = 0;
  for (int i = 0; i < rt->nseg; i++)
    captures += rt->seg[i].capture;
  return captures > ROUTER_PARAMS_MAX ? -1 : 0;
}

int router_add(router *r, int method, const char *pattern, http_handler_fn fn,
               void *udata) {
  if (r == NULL || pattern == NULL || pattern[0] != '/' || fn == NULL)
    return SK_EINVAL;
  for (int i = 0; i < r->n; i++) {
    const route *o = &r->routes[i];
    if (o->method == method && strcmp(o->orig, pattern) == 0)
      return SK_EEXIST;
  }
  if (r->n == r->cap) {
    int cap = r->cap ? r->cap * 2 : 16;
    route *nr = realloc(r->routes, (size_t)cap * sizeof(route));
    if (nr == NULL)
      return SK_ENOMEM;
    r->routes = nr;
    r->cap = cap;
  }
  route *rt = &r->routes[r->n];
  memset(rt, 0, sizeof(*rt));
  rt->orig = strdup(pattern);
  rt->pattern = strdup(pattern);
  if (rt->orig == NULL || rt->pattern == NULL || split_pattern(rt) != 0) {
    int rc = rt->orig == NULL || rt->pattern == NULL ? SK_ENOMEM : SK_EINVAL;
    free(rt->orig);
    free(rt->pattern);
    return rc;
  }
  rt->method = method;
  rt->fn = fn;
  rt->udata = udata;
  r->n++;
  return SK_OK;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

int router_url_decode(const char *in, size_t len, char *out, size_t *out_len,
                      bool plus_is_space) {
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    char c = in[i];
    if (c == '%') {
      if (len - i < 3)
        return SK_EINVAL;
      int hi = hexval(in[i + 1]), lo = hexval(in[i + 2]);
      if (hi < 0 || lo < 0)
        return SK_EINVAL;
      c = (char)(hi * 16 + lo);
      i += 2;
    } else if (c == '+' && plus_is_space) {
      c = ' ';
    }
    if (c == '\0')
      return SK_EINVAL;
    out[o++] = c;
  }
  out[o] = '\0';
  if (out_len != NULL)
    *out_len = o;
  return SK_OK;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0. Overlongs,
 * surrogates and code points past U+10FFFF are invalid. */
static size_t utf8_len(const unsigned char *s, size_t len) {
  unsigned char c = s[0];
  size_t n = c < 0x80             ? 1
             : (c & 0xe0) == 0xc0 ? 2
             : (c & 0xf0) == 0xe0 ? 3
             : (c & 0xf8) == 0xf0 ? 4
                                  : 0;
  if (n == 0 || n > len || c == 0xc0 || c == 0xc1 || c > 0xf4)
    return 0;
  for (size_t i = 1; i < n; i++)
    if ((s[i] & 0xc0) != 0x80)
      return 0;
  if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f) ||
      (c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] > 0x8f))
    return 0;
  return n;
}

static bool utf8_valid(const char *s, size_t len) {
  const unsigned char *p = (const unsigned char *)s;
  for (size_t i = 0; i < len;) {
    size_t n = utf8_len(p + i, len - i);
    if (n == 0)
      return false;
    i += n;
  }
  return true;
}

bool router_param_valid(const char *s, size_t len) {
  if (!utf8_valid(s, len))
    return false;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c == 0x7f || c == '/' || c == '\\')
      return false;
    if (c == '.' && i + 1 < len && s[i + 1] == '.')
      return false;
  }
  return true;
}

/* Splits a raw path into segments; -1 when it has too many. */
static int split_path(const char *path, const char **seg, size_t *len) {
  int n = 0;
  const char *p = path + 1;
  if (*p == '\0')
    return 0;
  for (;;) {
    const char *end = strchr(p, '/');
    if (n == ROUTER_SEGMENTS_MAX)
      return -1;
    seg[n] = p;
    len[n] = end ? (size_t)(end - p) : strlen(p);
    n++;
    if (end == NULL)
      return n;
    p = end + 1;
  }
}

static bool route_shape_matches(const route *rt, int n, const char **seg,
                                const size_t *len) {
  if (rt->nseg != n)
    return false;
  for (int i = 0; i < n; i++) {
    const segment *s = &rt->seg[i];
    if (s->capture ? len[i] == 0
                   : len[i] != s->len || memcmp(seg[i], s->text, len[i]) != 0)
      return false;
  }
  return true;
}

static int capture(const route *rt, const char **seg, const size_t *len,
                   char *scratch, size_t scratch_len, router_match *m) {
  size_t used = 0;
  m->nparams = 0;
  for (int i = 0; i < rt->nseg; i++) {
    if (!rt->seg[i].capture)
      continue;
    if (scratch_len - used < len[i] + 1)
      return SK_EINVAL;
    char *out = scratch + used;
    size_t olen;
    if (router_url_decode(seg[i], len[i], out, &olen, false) != 0 ||
        !router_param_valid(out, olen))
      return SK_EINVAL;
    used += olen + 1;
    m->params[m->nparams].key = rt->seg[i].text;
    m->params[m->nparams].value = out;
    m->nparams++;
  }
  m->fn = rt->fn;
  m->udata = rt->udata;
  return SK_OK;
}

static void allow_add(router_match *m, int method) {
  const char *name = http_method_str((enum http_method)method);
  size_t have = strlen(m->allow);
  if (strstr(m->allow, name) != NULL)
    return;
  snprintf(m->allow + have, sizeof(m->allow) - have, "%s%s", have ? ", " : "",
           name);
}

int router_match_path(const router *r, int method, const char *path,
                      char *scratch, size_t scratch_len, router_match *m) {
  const char *seg[ROUTER_SEGMENTS_MAX];
  size_t len[ROUTER_SEGMENTS_MAX];
  memset(m, 0, sizeof(*m));
  if (path == NULL || path[0] != '/')
    return SK_ENOENT;
  int n = split_path(path, seg, len);
  if (n < 0)
    return SK_ENOENT;
  bool shape = false;
  for (int i = 0; i < r->n; i++) {
    const route *rt = &r->routes[i];
    if (!route_shape_matches(rt, n, seg, len))
      continue;
    if (rt->method == method)
      return capture(rt, seg, len, scratch, scratch_len, m);
    shape = true;
    allow_add(m, rt->method);
  }
  return shape ? SK_ENOTSUP : SK_ENOENT;
}

/* Decodes one key or value into scratch; NULL on a bad escape or a
 * control character. */
static const char *decode_part(const char *p, size_t len, char *scratch,
                               size_t scratch_len, size_t *used) {
  if (scratch_len - *used < len + 1)
    return NULL;
  char *out = scratch + *used;
  size_t olen;
  if (router_url_decode(p, len, out, &olen, true) != 0)
    return NULL;
  if (!utf8_valid(out, olen))
    return NULL;
  for (size_t i = 0; i < olen; i++)
    if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f)
      return NULL;
  *used += olen + 1;
  return out;
}

int router_parse_query(const char *qs, size_t len, char *scratch,
                       size_t scratch_len, router_kv *out, int max) {
  int n = 0;
  size_t used = 0, i = 0;
  while (i < len) {
    size_t end = i;
    while (end < len && qs[end] != '&')
      end++;
    if (end > i) {
      if (n == max)
        return SK_EINVAL;
      const char *eq = memchr(qs + i, '=', end - i);
      size_t klen = eq ? (size_t)(eq - (qs + i)) : end - i;
      size_t vlen = eq ? end - i - klen - 1 : 0;
      out[n].key = decode_part(qs + i, klen, scratch, scratch_len, &used);
      out[n].value =
          decode_part(eq ? eq + 1 : "", vlen, scratch, scratch_len, &used);
      if (out[n].key == NULL || out[n].value == NULL)
        return SK_EINVAL;
      n++;
    }
    i = end + 1;
  }
  return n;
}
