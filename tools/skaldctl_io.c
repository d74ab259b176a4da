/*
 * skaldctl_io.c — skaldctl's plumbing: settings from flags, the
 * environment or _FILE files; one libcurl request per call, with the API
 * key only ever in the Authorization header and the daemon's error answers
 * printed as "skaldctl: <code>: <message>" plus their JSON Pointers; and
 * the helpers that turn JSON into readable, aligned tables.
 *
 * Thread: single-threaded (the CLI).
 */
#include "skaldctl.h"

#include "common/settings.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <skald/skald.h>

#include "common/buf.h"

bool ctl_parse_long(const char *s, long min, long max, long *out) {
  char *end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (s[0] == '\0' || *end != '\0' || errno != 0 || v < min || v > max)
    return false;
  *out = v;
  return true;
}

/* flag value, else $env, else the first line of $env_FILE (settings.h).
 * *bad on an unreadable file. */
char *ctl_setting(const char *flag, const char *env, bool *bad) {
  char why[256];
  char *v = settings_get(flag, env, bad, why, sizeof(why));
  if (v == NULL && *bad)
    fprintf(stderr, "skaldctl: %s\n", why);
  return v;
}

/* Splits argv into global flags, the command's options and positionals.
 * Returns -1 after --help was printed, else an exit code (0 = go on). */
/* ---- HTTP ---------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  buf_append(ud, p, size * n);
  return size * n;
}

/* Sends one request. On an answer fills *status and *body (malloc'd) and
 * returns 0; if the server cannot be reached prints why and returns
 * EX_UNREACHABLE. path must already be escaped. */
int ctl_http(const ctl *c, const char *method, const char *path,
             const char *body, long *status, char **out) {
  CURL *h = curl_easy_init();
  if (h == NULL) {
    fprintf(stderr, "skaldctl: out of memory\n");
    return EX_UNREACHABLE;
  }
  char *url = NULL;
  if (asprintf(&url, "%s%s", c->url, path) < 0)
    url = NULL;
  buf b = BUF_INIT;
  struct curl_slist *hdr = curl_slist_append(NULL, "Accept: application/json");
  if (body != NULL)
    hdr = curl_slist_append(hdr, "Content-Type: application/json");
  char *auth = NULL;
  if (c->api_key != NULL &&
      asprintf(&auth, "Authorization: Bearer %s", c->api_key) >= 0)
    hdr = curl_slist_append(hdr, auth);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  if (body != NULL) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
  } else if (strcmp(method, "POST") == 0) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
  }
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->timeout_ms);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_USERAGENT, "skaldctl/" SKALD_VERSION_STRING);
  CURLcode rc = url != NULL ? curl_easy_perform(h) : CURLE_OUT_OF_MEMORY;
  int ret = EX_OK;
  if (rc != CURLE_OK) {
    fprintf(stderr, "skaldctl: cannot reach the server at %s: %s\n", c->url,
            curl_easy_strerror(rc));
    ret = EX_UNREACHABLE;
    buf_free(&b);
  } else {
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    buf_putc(&b, '\0');
    *out = buf_steal(&b);
  }
  if (auth != NULL) {
    memset(auth, 0, strlen(auth)); /* do not leave the key lying around */
    free(auth);
  }
  curl_slist_free_all(hdr);
  curl_easy_cleanup(h);
  free(url);
  return ret;
}

/* Prints an error answer: "skaldctl: <code>: <message>" and each detail
 * (JSON Pointer and message) on its own line. */
void ctl_print_error(long status, const char *body) {
  cJSON *j = cJSON_Parse(body);
  const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
  const char *code =
      cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "code"));
  const char *msg =
      cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "message"));
  if (code == NULL || msg == NULL) {
    fprintf(stderr, "skaldctl: http_%ld: the server answered %ld: %.200s\n",
            status, status, body);
  } else {
    fprintf(stderr, "skaldctl: %s: %s\n", code, msg);
    const cJSON *d;
    cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(e, "details")) {
      const char *p =
          cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "path"));
      const char *m =
          cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "message"));
      if (m != NULL)
        fprintf(stderr, "  %s: %s\n", p != NULL && p[0] ? p : "/", m);
    }
  }
  cJSON_Delete(j);
}

/* One API call whose answer must be 2xx JSON. On success *out (caller
 * deletes) and, if status is not NULL, *status are set and 0 returned;
 * else the error is printed (and, with --json, its body to stdout) and the
 * exit code returned. raw (may be NULL) gets the body text (caller frees). */
int ctl_api(const ctl *c, const char *method, const char *path,
            const char *body, cJSON **out, long *status, char **raw) {
  long st = 0;
  char *text = NULL;
  int rc = ctl_http(c, method, path, body, &st, &text);
  if (rc != EX_OK)
    return rc;
  if (st < 200 || st > 299) {
    if (c->json)
      printf("%s\n", text);
    ctl_print_error(st, text);
    free(text);
    return EX_SERVER;
  }
  *out = cJSON_Parse(text);
  if (*out == NULL) {
    fprintf(stderr, "skaldctl: the server answered %ld with no JSON\n", st);
    free(text);
    return EX_SERVER;
  }
  if (status != NULL)
    *status = st;
  if (raw != NULL)
    *raw = text;
  else
    free(text);
  return EX_OK;
}

/* Escapes one path segment or query value (caller frees with curl_free). */
char *ctl_esc(const char *s) { return curl_easy_escape(NULL, s, 0); }

/* ---- output helpers ------------------------------------------------------ */

const char *ctl_jstr(const cJSON *o, const char *k) {
  const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, k));
  return s != NULL ? s : "";
}

double ctl_jnum(const cJSON *o, const char *k, double dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

/* A timestamp as "YYYY-MM-DD HH:MM:SS.mmm": from RFC 3339 text … */
void ctl_fmt_ts(const char *s, char out[32]) {
  snprintf(out, 32, "%s", s);
  char *t = strchr(out, 'T');
  if (t != NULL)
    *t = ' ';
  char *dot = strchr(out, '.');
  char *zone = strpbrk(out + (strlen(out) > 10 ? 10 : 0), "+Z");
  if (zone != NULL)
    *zone = '\0';
  if (dot != NULL && strlen(dot) > 4)
    dot[4] = '\0';
}

/* … or from milliseconds since the epoch (UTC). */
void ctl_fmt_ms(double ms, char out[32]) {
  if (ms <= 0) {
    snprintf(out, 32, "-");
    return;
  }
  time_t sec = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&sec, &tm);
  char d[24];
  strftime(d, sizeof(d), "%Y-%m-%d %H:%M:%S", &tm);
  snprintf(out, 32, "%s.%03d", d, (int)((long long)ms % 1000));
}

/* A JSON value as short compact text ("" for null/absent). */
char *ctl_short_json(const cJSON *v, size_t max) {
  if (v == NULL || cJSON_IsNull(v))
    return strdup("");
  char *s = cJSON_PrintUnformatted(v);
  if (s != NULL && strlen(s) > max)
    strcpy(s + max - 3, "...");
  return s != NULL ? s : strdup("");
}

/* "Type: message" of an error object. */
char *ctl_error_text(const cJSON *e) {
  if (e == NULL || cJSON_IsNull(e))
    return NULL;
  if (cJSON_IsString(e))
    return strdup(e->valuestring);
  char *s = NULL;
  const char *ty = ctl_jstr(e, "type"), *msg = ctl_jstr(e, "message");
  if (asprintf(&s, "%s%s%s", ty, ty[0] && msg[0] ? ": " : "", msg) < 0)
    s = NULL;
  return s;
}

void ctl_table_add(table *t, ...) {
  if (t->nrows == t->cap) {
    t->cap = t->cap ? t->cap * 2 : 16;
    char **n = realloc(t->cells, t->cap * (size_t)t->ncols * sizeof(char *));
    if (n == NULL)
      abort(); /* a CLI may abort on OOM */
    t->cells = n;
  }
  va_list ap;
  va_start(ap, t);
  for (int i = 0; i < t->ncols; i++) {
    const char *s = va_arg(ap, const char *);
    t->cells[t->nrows * (size_t)t->ncols + (size_t)i] = strdup(s ? s : "");
  }
  va_end(ap);
  t->nrows++;
}

void ctl_table_free(table *t) {
  for (size_t k = 0; k < t->nrows * (size_t)t->ncols; k++)
    free(t->cells[k]);
  free(t->cells);
  t->cells = NULL;
  t->nrows = 0;
}

void ctl_table_print(table *t) {
  int w[16] = {0};
  for (size_t r = 0; r < t->nrows; r++)
    for (int i = 0; i < t->ncols; i++) {
      int l = (int)strlen(t->cells[r * (size_t)t->ncols + (size_t)i]);
      w[i] = l > w[i] ? l : w[i];
    }
  for (size_t r = 0; r < t->nrows; r++) {
    for (int i = 0; i < t->ncols; i++) {
      const char *s = t->cells[r * (size_t)t->ncols + (size_t)i];
      if (i + 1 < t->ncols)
        printf("%-*s  ", w[i], s);
      else
        printf("%s\n", s);
    }
  }
  ctl_table_free(t);
}

/* A JSON argument: inline text or @file. Returns the parsed value or NULL
 * after a usage error (*rc set). */
cJSON *ctl_json_arg(const char *flag, const char *v, bool object, int *rc) {
  char *text = NULL;
  if (v[0] == '@') {
    FILE *f = fopen(v + 1, "r");
    buf b = BUF_INIT;
    char chunk[4096];
    size_t n;
    while (f != NULL && (n = fread(chunk, 1, sizeof(chunk), f)) > 0)
      buf_append(&b, chunk, n);
    if (f == NULL) {
      *rc = ctl_usage_error("%s: cannot read %s: %s", flag, v + 1,
                            strerror(errno));
      return NULL;
    }
    fclose(f);
    buf_putc(&b, '\0');
    text = buf_steal(&b);
  }
  cJSON *j = cJSON_Parse(text != NULL ? text : v);
  free(text);
  if (j == NULL || (object && !cJSON_IsObject(j))) {
    cJSON_Delete(j);
    *rc = ctl_usage_error("%s must be %s", flag,
                          object ? "a JSON object" : "JSON");
    return NULL;
  }
  return j;
}

/* Reads a whole file ("-" = stdin); NULL with errno. */
char *ctl_read_all(const char *path) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
  if (f == NULL)
    return NULL;
  buf b = BUF_INIT;
  char chunk[8192];
  size_t n;
  while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
    buf_append(&b, chunk, n);
  if (f != stdin)
    fclose(f);
  buf_putc(&b, '\0');
  return buf_steal(&b);
}
