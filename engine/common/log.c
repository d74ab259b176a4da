/*
 * log.c — JSON-lines logger (see log.h).
 *
 * Each line is formatted into a local buffer and emitted with one write(2)
 * so lines from different threads never interleave. Oversized lines are
 * truncated at a field boundary and marked "truncated": true.
 *
 * Thread: any.
 */
#include "common/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = LOG_INFO;
static char log_node[128];

static const char *const level_names[] = {"error", "warning", "info", "debug"};

void log_set_level(int level) { atomic_store(&log_level, level); }
int log_get_level(void) { return atomic_load(&log_level); }

void log_set_node(const char *node) {
  if (node == NULL)
    log_node[0] = '\0';
  else
    snprintf(log_node, sizeof(log_node), "%s", node);
}

typedef struct line {
  char buf[4096];
  size_t len;
  bool truncated;
} line;

static void put_raw(line *l, const char *s, size_t n) {
  if (l->truncated || l->len + n >= sizeof(l->buf) - 32) {
    l->truncated = true;
    return;
  }
  memcpy(l->buf + l->len, s, n);
  l->len += n;
}

static void put_str(line *l, const char *s) {
  char tmp[8];
  put_raw(l, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
    case '"':
      put_raw(l, "\\\"", 2);
      break;
    case '\\':
      put_raw(l, "\\\\", 2);
      break;
    case '\n':
      put_raw(l, "\\n", 2);
      break;
    case '\t':
      put_raw(l, "\\t", 2);
      break;
    case '\r':
      put_raw(l, "\\r", 2);
      break;
    default:
      if (*p < 0x20) {
        snprintf(tmp, sizeof(tmp), "\\u%04x", *p);
        put_raw(l, tmp, 6);
      } else {
        put_raw(l, (const char *)p, 1);
      }
    }
  }
  put_raw(l, "\"", 1);
}

static void put_key(line *l, const char *key) {
  put_raw(l, ",", 1);
  put_str(l, key);
  put_raw(l, ":", 1);
}

void log_write(int level, const char *msg, ...) {
  if (level > atomic_load(&log_level))
    return;
  if (level < LOG_ERROR)
    level = LOG_ERROR;
  if (level > LOG_DEBUG)
    level = LOG_DEBUG;

  line l = {.len = 0, .truncated = false};
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char tsbuf[64];
  int n = snprintf(tsbuf, sizeof(tsbuf),
                   "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\"",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                   tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
  put_raw(&l, tsbuf, (size_t)n);
  put_key(&l, "level");
  put_str(&l, level_names[level]);
  put_key(&l, "msg");
  put_str(&l, msg != NULL ? msg : "");
  if (log_node[0] != '\0') {
    put_key(&l, "node");
    put_str(&l, log_node);
  }

  va_list ap;
  va_start(ap, msg);
  for (;;) {
    const char *key = va_arg(ap, const char *);
    if (key == NULL)
      break;
    if (key[0] == '#') {
      int64_t v = va_arg(ap, int64_t);
      char num[32];
      int k = snprintf(num, sizeof(num), "%lld", (long long)v);
      put_key(&l, key + 1);
      put_raw(&l, num, (size_t)k);
    } else {
      const char *v = va_arg(ap, const char *);
      put_key(&l, key);
      if (v == NULL)
        put_raw(&l, "null", 4);
      else
        put_str(&l, v);
    }
  }
  va_end(ap);

  /* Room for this was reserved by put_raw's margin. */
  if (l.truncated) {
    memcpy(l.buf + l.len, ",\"truncated\":true", 17);
    l.len += 17;
  }
  l.buf[l.len++] = '}';
  l.buf[l.len++] = '\n';
  ssize_t w = write(STDERR_FILENO, l.buf, l.len);
  (void)w;
}
