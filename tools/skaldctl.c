/*
 * skaldctl.c — the command-line client of the Skald daemon
 * (spec/http-api.md): register specs, start, inspect, cancel and replay
 * sagas, look at nodes and health, and — directly on the database, since
 * the first key cannot be made through an API that requires one — manage
 * API keys and verify that every saga's projection matches its events.
 *
 * Shape: one table of commands, each a function that parses its own
 * options with one small parser (global flags are accepted anywhere) and
 * returns the process exit code:
 *   0 ok, 1 the server answered an error (or a database command failed),
 *   2 usage, 3 start --wait ended compensated/cancelled, 4 failed/paused,
 *   5 the server could not be reached, 6 start --wait gave up waiting.
 * Readable tables by default; --json prints the server's JSON unchanged.
 * The API key is only ever sent in the Authorization header; the only
 * command that prints a key is `keys create`, once.
 *
 * Parts: this file (options, the commands that use the API, main),
 * skaldctl_io.c (HTTP, settings, tables), skaldctl_db.c (keys, verify).
 *
 * Thread: single-threaded; one libcurl easy handle per request.
 */
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <skald/skald.h>

#include "common/buf.h"
#include "common/log.h"
#include "skaldctl.h"

typedef struct command {
  const char *name;
  int (*run)(ctl *c);
  const char *usage;          /* the synopsis after "skaldctl " */
  const char *help;           /* what it does and its options */
  const char *opts[MAX_OPTS]; /* "name" or "name=" (value) or "name?" */
  int min_pos, max_pos;
} command;

static const command *current;

static void usage_line(FILE *f) {
  fprintf(f, "usage: skaldctl %s\n", current->usage);
}

int ctl_usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("skaldctl: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  if (current != NULL) {
    usage_line(stderr);
    fprintf(stderr, "Try 'skaldctl %s --help'.\n", current->name);
  } else {
    fprintf(stderr, "Try 'skaldctl --help'.\n");
  }
  return EX_USAGE;
}

const char *ctl_optv(const ctl *c, const char *name) {
  for (int i = 0; i < c->nopts; i++)
    if (strcmp(c->opts[i].name, name) == 0)
      return c->opts[i].value;
  return NULL;
}

static int parse_args(ctl *c, const command *cmd, int argc, char **argv) {
  const char *g_url = NULL, *g_key = NULL, *g_db = NULL, *g_to = NULL;
  for (int i = 0; i < MAX_OPTS && cmd->opts[i] != NULL; i++) {
    c->opts[i].name = cmd->opts[i];
    c->nopts = i + 1;
  }
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
      return -1;
    if (strncmp(a, "--", 2) != 0 || strcmp(a, "-") == 0) {
      if (c->npos >= cmd->max_pos)
        return ctl_usage_error("unexpected argument '%s'", a);
      c->pos[c->npos++] = a;
      continue;
    }
    char name[64];
    const char *eq = strchr(a, '=');
    size_t nl = eq != NULL ? (size_t)(eq - a) : strlen(a);
    snprintf(name, sizeof(name), "%.*s", (int)nl, a);
    const char **gslot = strcmp(name, "--url") == 0            ? &g_url
                         : strcmp(name, "--api-key") == 0      ? &g_key
                         : strcmp(name, "--timeout-ms") == 0   ? &g_to
                         : strcmp(name, "--database-url") == 0 ? &g_db
                                                               : NULL;
    if (strcmp(name, "--json") == 0 && eq == NULL) {
      c->json = true;
      continue;
    }
    opt *o = NULL;
    int kind = 1;
    if (gslot == NULL) {
      for (int k = 0; k < c->nopts && o == NULL; k++) {
        size_t l = strcspn(c->opts[k].name, "=?");
        if (strlen(name) == l && strncmp(c->opts[k].name, name, l) == 0) {
          o = &c->opts[k];
          kind = o->name[l] == '=' ? 1 : o->name[l] == '?' ? 2 : 0;
        }
      }
      if (o == NULL)
        return ctl_usage_error("unknown option '%s'", name);
    }
    const char *val = eq != NULL ? eq + 1 : NULL;
    if (kind == 0 && val != NULL)
      return ctl_usage_error("%s takes no value", name);
    if (kind == 1 && val == NULL) {
      if (i + 1 >= argc)
        return ctl_usage_error("%s needs a value", name);
      val = argv[++i];
    }
    if (kind == 2 && val == NULL && i + 1 < argc &&
        strspn(argv[i + 1], "0123456789") == strlen(argv[i + 1]) &&
        argv[i + 1][0] != '\0')
      val = argv[++i];
    if (gslot != NULL)
      *gslot = val;
    else
      o->value = val != NULL ? val : "";
  }
  if (c->npos < cmd->min_pos)
    return ctl_usage_error("missing argument");
  bool bad = false;
  c->url = ctl_setting(g_url, "SKALD_URL", &bad);
  if (c->url == NULL)
    c->url = strdup("http://127.0.0.1:7070");
  c->api_key = ctl_setting(g_key, "SKALD_API_KEY", &bad);
  c->database_url = ctl_setting(g_db, "SKALD_DATABASE_URL", &bad);
  if (bad)
    return EX_USAGE;
  size_t ul = strlen(c->url);
  while (ul > 0 && c->url[ul - 1] == '/')
    c->url[--ul] = '\0';
  if (strncmp(c->url, "http://", 7) != 0 && strncmp(c->url, "https://", 8) != 0)
    return ctl_usage_error("--url must start with http:// or https://");
  c->timeout_ms = 10000;
  if (g_to != NULL && !ctl_parse_long(g_to, 1, 3600000, &c->timeout_ms))
    return ctl_usage_error("--timeout-ms must be 1 to 3600000");
  return EX_OK;
}

/* ---- workflows and runs -----------------------------------------------------
 */

static int cmd_apply(ctl *c) {
  char *spec = ctl_read_all(c->pos[0]);
  if (spec == NULL) {
    fprintf(stderr, "skaldctl: cannot read %s: %s\n", c->pos[0],
            strerror(errno));
    return EX_USAGE;
  }
  cJSON *j = NULL;
  long st = 0;
  char *raw = NULL;
  int rc = ctl_api(c, "POST", "/v1/workflows", spec, &j, &st, &raw);
  free(spec);
  if (rc != EX_OK)
    return rc;
  if (c->json)
    printf("%s\n", raw);
  else
    printf("%s %s version %d\n", st == 201 ? "created" : "unchanged",
           ctl_jstr(j, "name"), (int)ctl_jnum(j, "version", 0));
  free(raw);
  cJSON_Delete(j);
  return EX_OK;
}

static bool settled(const char *s) {
  return strcmp(s, "running") != 0 && strcmp(s, "compensating") != 0;
}

static int status_exit(const char *s) {
  if (strcmp(s, "completed") == 0)
    return EX_OK;
  if (strcmp(s, "compensated") == 0 || strcmp(s, "cancelled") == 0)
    return EX_COMPENSATED;
  return EX_FAILED;
}

/* Polls the saga until it settles or `seconds` pass (0: no limit). */
static int wait_saga(const ctl *c, const char *id, long seconds) {
  char path[96];
  snprintf(path, sizeof(path), "/v1/sagas/%s", id);
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  long delay_ms = 50;
  for (;;) {
    cJSON *j = NULL;
    char *raw = NULL;
    int rc = ctl_api(c, "GET", path, NULL, &j, NULL, &raw);
    if (rc != EX_OK)
      return rc;
    char status[32];
    snprintf(status, sizeof(status), "%s", ctl_jstr(j, "status"));
    bool done = settled(status);
    if (done) {
      if (c->json) {
        printf("%s\n", raw);
      } else {
        char *e = ctl_error_text(cJSON_GetObjectItemCaseSensitive(j, "error"));
        printf("%s\n", status);
        if (e != NULL && e[0])
          fprintf(stderr, "skaldctl: saga %s: %s\n", id, e);
        free(e);
      }
    }
    free(raw);
    cJSON_Delete(j);
    if (done)
      return status_exit(status);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long el = (long)(now.tv_sec - t0.tv_sec) * 1000 +
              (now.tv_nsec - t0.tv_nsec) / 1000000;
    if (seconds > 0 && el >= seconds * 1000) {
      fprintf(stderr, "skaldctl: saga %s is still %s after %ld s\n", id, status,
              seconds);
      return EX_WAIT_TIMEOUT;
    }
    struct timespec ts = {delay_ms / 1000, (delay_ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
    delay_ms = delay_ms * 2 > 500 ? 500 : delay_ms * 2;
  }
}

static int cmd_start(ctl *c) {
  int rc = EX_OK;
  long version = 0, wait_s = 0;
  const char *in = ctl_optv(c, "--input="), *key = ctl_optv(c, "--key=");
  const char *ver = ctl_optv(c, "--version="), *wait = ctl_optv(c, "--wait?");
  if (ver != NULL && !ctl_parse_long(ver, 1, 2147483647, &version))
    return ctl_usage_error("--version must be a positive integer");
  if (wait != NULL && wait[0] && !ctl_parse_long(wait, 1, 86400 * 365, &wait_s))
    return ctl_usage_error("--wait takes a number of seconds");
  cJSON *body = cJSON_CreateObject();
  if (in != NULL) {
    cJSON *input = ctl_json_arg("--input", in, true, &rc);
    if (input == NULL) {
      cJSON_Delete(body);
      return rc;
    }
    cJSON_AddItemToObject(body, "input", input);
  }
  if (key != NULL)
    cJSON_AddStringToObject(body, "idempotency_key", key);
  if (version > 0)
    cJSON_AddNumberToObject(body, "version", (double)version);
  char *text = cJSON_PrintUnformatted(body);
  cJSON_Delete(body);
  char *name = ctl_esc(c->pos[0]), *path = NULL;
  if (asprintf(&path, "/v1/workflows/%s/runs", name) < 0)
    path = NULL;
  curl_free(name);
  cJSON *j = NULL;
  long st = 0;
  char *raw = NULL;
  rc = ctl_api(c, "POST", path, text, &j, &st, &raw);
  free(text);
  free(path);
  if (rc != EX_OK)
    return rc;
  char id[SK_ID_LEN];
  snprintf(id, sizeof(id), "%s", ctl_jstr(j, "saga_id"));
  if (c->json && wait == NULL)
    printf("%s\n", raw);
  else if (!c->json)
    printf("%s\n", id);
  if (st == 200 && !c->json)
    fprintf(stderr, "skaldctl: idempotency key seen before: this is the "
                    "saga it started\n");
  fflush(stdout);
  free(raw);
  cJSON_Delete(j);
  return wait != NULL ? wait_saga(c, id, wait_s) : EX_OK;
}

/* "/v1/sagas/<escaped id><suffix>" (caller frees). */
static char *saga_path(const char *id, const char *suffix) {
  char *e = ctl_esc(id), *p = NULL;
  if (asprintf(&p, "/v1/sagas/%s%s", e, suffix) < 0)
    p = NULL;
  curl_free(e);
  return p;
}

static void print_saga(const cJSON *j) {
  char created[32], updated[32];
  ctl_fmt_ts(ctl_jstr(j, "created_at"), created);
  ctl_fmt_ts(ctl_jstr(j, "updated_at"), updated);
  printf("saga        %s\n", ctl_jstr(j, "id"));
  printf("workflow    %s version %d\n", ctl_jstr(j, "workflow"),
         (int)ctl_jnum(j, "version", 0));
  printf("status      %s (phase %s)%s\n", ctl_jstr(j, "status"),
         ctl_jstr(j, "phase"),
         cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "cancel_requested"))
             ? ", cancel requested"
             : "");
  printf("created     %s\nupdated     %s\n", created, updated);
  const char *ik = ctl_jstr(j, "idempotency_key");
  if (ik[0])
    printf("key         %s\n", ik);
  if (ctl_jstr(j, "replay_of")[0])
    printf("replay of   %s\n", ctl_jstr(j, "replay_of"));
  if (ctl_jstr(j, "replayed_by")[0])
    printf("replayed by %s\n", ctl_jstr(j, "replayed_by"));
  char *in = ctl_short_json(cJSON_GetObjectItemCaseSensitive(j, "input"), 200);
  printf("input       %s\n", in[0] ? in : "null");
  free(in);
  char *e = ctl_error_text(cJSON_GetObjectItemCaseSensitive(j, "error"));
  if (e != NULL)
    printf("error       %s\n", e);
  free(e);
  table t = {.ncols = 6};
  ctl_table_add(&t, "STEP", "STATUS", "ATTEMPTS", "STARTED", "FINISHED",
                "DETAIL");
  const cJSON *s;
  cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(j, "steps")) {
    char att[32], t0[32], t1[32];
    snprintf(att, sizeof(att), "%d", (int)ctl_jnum(s, "attempts", 0));
    ctl_fmt_ms(ctl_jnum(s, "scheduled_ms", 0), t0);
    ctl_fmt_ms(ctl_jnum(s, "finished_ms", 0), t1);
    char *d = ctl_error_text(cJSON_GetObjectItemCaseSensitive(s, "comp_error"));
    if (d == NULL)
      d = ctl_error_text(cJSON_GetObjectItemCaseSensitive(s, "error"));
    if (d == NULL)
      d = ctl_short_json(cJSON_GetObjectItemCaseSensitive(s, "output"), 60);
    ctl_table_add(&t, ctl_jstr(s, "name"), ctl_jstr(s, "status"), att, t0, t1,
                  d);
    free(d);
  }
  printf("\n");
  ctl_table_print(&t);
}

static int cmd_get(ctl *c) {
  char *path = saga_path(c->pos[0], "");
  cJSON *j = NULL;
  char *raw = NULL;
  int rc = ctl_api(c, "GET", path, NULL, &j, NULL, &raw);
  free(path);
  if (rc != EX_OK)
    return rc;
  if (c->json)
    printf("%s\n", raw);
  else
    print_saga(j);
  free(raw);
  cJSON_Delete(j);
  return EX_OK;
}

static int cmd_list(ctl *c) {
  const char *status = ctl_optv(c, "--status="),
             *wf = ctl_optv(c, "--workflow=");
  const char *lim = ctl_optv(c, "--limit=");
  bool all = ctl_optv(c, "--all") != NULL;
  long limit = 50;
  if (lim != NULL && !ctl_parse_long(lim, 1, 1000, &limit))
    return ctl_usage_error("--limit must be 1 to 1000");
  buf q = BUF_INIT;
  buf_printf(&q, "/v1/sagas?limit=%ld", limit);
  if (status != NULL) {
    char *e = ctl_esc(status);
    buf_printf(&q, "&status=%s", e);
    curl_free(e);
  }
  if (wf != NULL) {
    char *e = ctl_esc(wf);
    buf_printf(&q, "&workflow=%s", e);
    curl_free(e);
  }
  table t = {.ncols = 6};
  ctl_table_add(&t, "SAGA", "WORKFLOW", "VERSION", "STATUS", "CREATED",
                "UPDATED");
  cJSON *collected = cJSON_CreateArray();
  char cursor[SK_ID_LEN] = "";
  int rc = EX_OK;
  bool more = false;
  do {
    char *path = NULL;
    if (asprintf(&path, "%s%s%s", q.data, cursor[0] ? "&cursor=" : "", cursor) <
        0)
      path = NULL;
    cJSON *j = NULL;
    rc = ctl_api(c, "GET", path, NULL, &j, NULL, NULL);
    free(path);
    if (rc != EX_OK)
      break;
    cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(j, "sagas")) {
      char v[16], t0[32], t1[32];
      snprintf(v, sizeof(v), "%d", (int)ctl_jnum(s, "version", 0));
      ctl_fmt_ts(ctl_jstr(s, "created_at"), t0);
      ctl_fmt_ts(ctl_jstr(s, "updated_at"), t1);
      ctl_table_add(&t, ctl_jstr(s, "id"), ctl_jstr(s, "workflow"), v,
                    ctl_jstr(s, "status"), t0, t1);
      cJSON_AddItemToArray(collected, cJSON_Duplicate(s, true));
    }
    const char *next = ctl_jstr(j, "next_cursor");
    more = next[0] != '\0';
    snprintf(cursor, sizeof(cursor), "%s", next);
    cJSON_Delete(j);
  } while (all && more);
  buf_free(&q);
  if (rc == EX_OK && c->json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "sagas", collected);
    collected = NULL;
    if (more)
      cJSON_AddStringToObject(o, "next_cursor", cursor);
    else
      cJSON_AddNullToObject(o, "next_cursor");
    char *out = cJSON_PrintUnformatted(o);
    printf("%s\n", out);
    free(out);
    cJSON_Delete(o);
  } else if (rc == EX_OK) {
    ctl_table_print(&t);
    if (more)
      fprintf(stderr, "(more sagas: use --all to list them all)\n");
  }
  cJSON_Delete(collected);
  ctl_table_free(&t);
  return rc;
}

/* ---- timeline -------------------------------------------------------------
 */

/* The short detail of one event's payload. */
static char *event_detail(const char *type, const cJSON *p) {
  char *s = ctl_error_text(cJSON_GetObjectItemCaseSensitive(p, "error"));
  if (s != NULL)
    return s;
  const cJSON *delay = cJSON_GetObjectItemCaseSensitive(p, "delay_ms");
  if (cJSON_IsNumber(delay)) {
    if (asprintf(&s, "retry in %.0f ms", delay->valuedouble) < 0)
      s = NULL;
    return s;
  }
  if (strcmp(type, "SagaStarted") == 0) {
    char *in = ctl_short_json(cJSON_GetObjectItemCaseSensitive(p, "input"), 60);
    if (asprintf(&s, "%s v%d input %s", ctl_jstr(p, "workflow"),
                 (int)ctl_jnum(p, "version", 0), in[0] ? in : "null") < 0)
      s = NULL;
    free(in);
    return s;
  }
  const cJSON *out = cJSON_GetObjectItemCaseSensitive(p, "output");
  if (out != NULL && !cJSON_IsNull(out))
    return ctl_short_json(out, 60);
  const char *keys[] = {"from_step", "replay_of", "new_saga_id", "reason"};
  for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
    if (ctl_jstr(p, keys[i])[0] != '\0') {
      if (asprintf(&s, "%s %s", keys[i], ctl_jstr(p, keys[i])) < 0)
        s = NULL;
      return s;
    }
  return strdup("");
}

static int cmd_timeline(ctl *c) {
  char *path = saga_path(c->pos[0], "/events");
  cJSON *j = NULL;
  char *raw = NULL;
  int rc = ctl_api(c, "GET", path, NULL, &j, NULL, &raw);
  free(path);
  if (rc != EX_OK)
    return rc;
  if (c->json) {
    printf("%s\n", raw);
  } else {
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(j, "events");
    const cJSON *names = NULL, *e;
    cJSON_ArrayForEach(e, events) {
      if (strcmp(ctl_jstr(e, "type"), "SagaStarted") == 0 && names == NULL)
        names = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(e, "payload"), "steps");
    }
    table t = {.ncols = 6};
    ctl_table_add(&t, "SEQ", "TIME", "EVENT", "STEP", "ATTEMPT", "DETAIL");
    cJSON_ArrayForEach(e, events) {
      char seq[24], time[32], att[16] = "", step[160] = "";
      snprintf(seq, sizeof(seq), "%.0f", ctl_jnum(e, "seq", 0));
      ctl_fmt_ts(ctl_jstr(e, "created_at"), time);
      double si = ctl_jnum(e, "step", -1), a = ctl_jnum(e, "attempt", 0);
      if (si >= 0) {
        const char *n =
            cJSON_GetStringValue(cJSON_GetArrayItem(names, (int)si));
        if (n != NULL)
          snprintf(step, sizeof(step), "%s", n);
        else
          snprintf(step, sizeof(step), "#%d", (int)si);
      }
      if (a > 0)
        snprintf(att, sizeof(att), "%d", (int)a);
      char *d = event_detail(ctl_jstr(e, "type"),
                             cJSON_GetObjectItemCaseSensitive(e, "payload"));
      ctl_table_add(&t, seq, time, ctl_jstr(e, "type"), step, att, d);
      free(d);
    }
    ctl_table_print(&t);
  }
  free(raw);
  cJSON_Delete(j);
  return EX_OK;
}

/* ---- cancel and replay --------------------------------------------------- */

static int cmd_cancel(ctl *c) {
  char *path = saga_path(c->pos[0], "/cancel");
  cJSON *j = NULL;
  char *raw = NULL;
  int rc = ctl_api(c, "POST", path, NULL, &j, NULL, &raw);
  free(path);
  if (rc != EX_OK)
    return rc;
  if (c->json)
    printf("%s\n", raw);
  else
    printf("cancel requested for saga %s (now %s)\n", ctl_jstr(j, "saga_id"),
           ctl_jstr(j, "status"));
  free(raw);
  cJSON_Delete(j);
  return EX_OK;
}

static void print_replayed(const cJSON *r) {
  if (ctl_jstr(r, "new_saga_id")[0])
    printf("replayed %s as new saga %s (%s)\n", ctl_jstr(r, "saga_id"),
           ctl_jstr(r, "new_saga_id"), ctl_jstr(r, "status"));
  else
    printf("replayed %s (%s)\n", ctl_jstr(r, "saga_id"), ctl_jstr(r, "status"));
}

static int replay_bulk(ctl *c, const char *status) {
  const char *wf = ctl_optv(c, "--workflow="), *lim = ctl_optv(c, "--limit=");
  long limit = 100;
  if (lim != NULL && !ctl_parse_long(lim, 1, 1000, &limit))
    return ctl_usage_error("--limit must be 1 to 1000");
  if (ctl_optv(c, "--from-step=") || ctl_optv(c, "--step-input=") ||
      ctl_optv(c, "--input="))
    return ctl_usage_error("--from-step, --step-input and --input replay one "
                           "saga, not a --status filter");
  cJSON *body = cJSON_CreateObject();
  cJSON_AddStringToObject(body, "status", status);
  if (wf != NULL)
    cJSON_AddStringToObject(body, "workflow", wf);
  cJSON_AddNumberToObject(body, "limit", (double)limit);
  char *text = cJSON_PrintUnformatted(body);
  cJSON_Delete(body);
  cJSON *j = NULL;
  char *raw = NULL;
  int rc = ctl_api(c, "POST", "/v1/sagas/replay", text, &j, NULL, &raw);
  free(text);
  if (rc != EX_OK)
    return rc;
  const cJSON *r, *errs = cJSON_GetObjectItemCaseSensitive(j, "errors");
  if (c->json) {
    printf("%s\n", raw);
  } else {
    int n = 0;
    cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(j, "replayed")) {
      print_replayed(r);
      n++;
    }
    printf("%d replayed, %d failed\n", n, cJSON_GetArraySize(errs));
  }
  cJSON_ArrayForEach(r, errs)
      fprintf(stderr, "skaldctl: could not replay %s: %s\n",
              ctl_jstr(r, "saga_id"), ctl_jstr(r, "message"));
  rc = cJSON_GetArraySize(errs) > 0 ? EX_SERVER : EX_OK;
  free(raw);
  cJSON_Delete(j);
  return rc;
}

static int cmd_replay(ctl *c) {
  const char *status = ctl_optv(c, "--status=");
  if (status != NULL && c->npos > 0)
    return ctl_usage_error("give a saga id or --status, not both");
  if (status != NULL)
    return replay_bulk(c, status);
  if (c->npos == 0)
    return ctl_usage_error("missing saga id (or --status for a bulk replay)");
  if (ctl_optv(c, "--workflow=") || ctl_optv(c, "--limit="))
    return ctl_usage_error("--workflow and --limit go with --status");
  int rc = EX_OK;
  cJSON *body = cJSON_CreateObject();
  const char *from = ctl_optv(c, "--from-step=");
  if (from != NULL)
    cJSON_AddStringToObject(body, "from_step", from);
  const char *flags[] = {"--step-input=", "--input="};
  const char *fields[] = {"step_input", "input"};
  for (int i = 0; i < 2; i++) {
    const char *v = ctl_optv(c, flags[i]);
    if (v == NULL)
      continue;
    char fl[16];
    snprintf(fl, sizeof(fl), "%.*s", (int)strlen(flags[i]) - 1, flags[i]);
    cJSON *val = ctl_json_arg(fl, v, i == 1, &rc);
    if (val == NULL) {
      cJSON_Delete(body);
      return rc;
    }
    cJSON_AddItemToObject(body, fields[i], val);
  }
  char *text = cJSON_PrintUnformatted(body);
  cJSON_Delete(body);
  char *path = saga_path(c->pos[0], "/replay");
  cJSON *j = NULL;
  char *raw = NULL;
  rc = ctl_api(c, "POST", path, text, &j, NULL, &raw);
  free(text);
  free(path);
  if (rc != EX_OK)
    return rc;
  if (c->json)
    printf("%s\n", raw);
  else
    print_replayed(j);
  free(raw);
  cJSON_Delete(j);
  return EX_OK;
}

/* ---- cluster ---------------------------------------------------------------
 */

/* One row per GPU of the nodes that report GPUs: state, reason, readings. */
static void print_gpus(const cJSON *nodes) {
  table t = {.ncols = 8};
  ctl_table_add(&t, "NODE", "GPU", "STATE", "REASON", "FREE MB", "TEMP",
                "UTIL", "HOLDERS");
  size_t rows = 0;
  const cJSON *n;
  cJSON_ArrayForEach(n, nodes) {
    const cJSON *cap = cJSON_GetObjectItemCaseSensitive(n, "capacity");
    const cJSON *g;
    cJSON_ArrayForEach(g, cJSON_GetObjectItemCaseSensitive(cap, "gpus")) {
      const cJSON *rd = cJSON_GetObjectItemCaseSensitive(g, "readings");
      char idx[16], free_mb[32], temp[16], util[16], holders[16];
      snprintf(idx, sizeof(idx), "%d", (int)ctl_jnum(g, "index", 0));
      snprintf(free_mb, sizeof(free_mb), "%.0f", ctl_jnum(g, "free_mb", 0));
      snprintf(temp, sizeof(temp), "%.0f C", ctl_jnum(rd, "temp_c", 0));
      snprintf(util, sizeof(util), "%.0f %%", ctl_jnum(rd, "util_gpu", 0));
      snprintf(holders, sizeof(holders), "%.0f", ctl_jnum(g, "holders", 0));
      const char *reason = ctl_jstr(g, "reason");
      ctl_table_add(&t, ctl_jstr(n, "name"), idx, ctl_jstr(g, "state"),
                    reason[0] ? reason : "-", free_mb, temp, util, holders);
      rows++;
    }
  }
  if (rows > 0) {
    printf("\n");
    ctl_table_print(&t);
  } else {
    ctl_table_free(&t);
  }
}

static int cmd_nodes(ctl *c) {
  cJSON *j = NULL;
  char *raw = NULL;
  int rc = ctl_api(c, "GET", "/v1/nodes", NULL, &j, NULL, &raw);
  if (rc != EX_OK)
    return rc;
  if (c->json) {
    printf("%s\n", raw);
  } else {
    const cJSON *nodes = cJSON_GetObjectItemCaseSensitive(j, "nodes");
    table t = {.ncols = 6};
    ctl_table_add(&t, "NODE", "ALIVE", "STARTED", "HEARTBEAT AGE",
                  "IN FLIGHT", "GPUS");
    const cJSON *n;
    cJSON_ArrayForEach(n, nodes) {
      const cJSON *cap = cJSON_GetObjectItemCaseSensitive(n, "capacity");
      char start[32], age[32], inflight[16], gpus[64];
      ctl_fmt_ts(ctl_jstr(n, "started_at"), start);
      snprintf(age, sizeof(age), "%.1f s",
               ctl_jnum(n, "heartbeat_age_ms", 0) / 1000);
      snprintf(inflight, sizeof(inflight), "%.0f",
               ctl_jnum(cap, "inflight", 0));
      int ngpu = cJSON_GetArraySize(
          cJSON_GetObjectItemCaseSensitive(cap, "gpus"));
      bool draining = cJSON_IsTrue(
          cJSON_GetObjectItemCaseSensitive(cap, "draining"));
      snprintf(gpus, sizeof(gpus), "%d%s", ngpu, draining ? " (draining)" : "");
      ctl_table_add(&t, ctl_jstr(n, "name"),
                    cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(n, "alive"))
                        ? "yes"
                        : "no",
                    start, age, inflight, gpus);
    }
    ctl_table_print(&t);
    print_gpus(nodes);
  }
  free(raw);
  cJSON_Delete(j);
  return EX_OK;
}

static int cmd_health(ctl *c) {
  long st = 0;
  char *text = NULL;
  int rc = ctl_http(c, "GET", "/health/ready", NULL, &st, &text);
  if (rc != EX_OK)
    return rc;
  cJSON *j = cJSON_Parse(text);
  if (c->json) {
    printf("%s\n", text);
  } else if (st == 200) {
    printf("ready (schema version %d)\n",
           (int)ctl_jnum(j, "schema_version", 0));
  } else {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    printf("not ready: %s\n", e != NULL ? ctl_jstr(e, "message") : text);
  }
  cJSON_Delete(j);
  free(text);
  return st == 200 ? EX_OK : EX_SERVER;
}

/* ---- main -------------------------------------------------------------------
 */

#define GLOBAL_HELP                                                            \
  "Global options (anywhere on the line):\n"                                   \
  "  --url URL          the daemon (env SKALD_URL, default "                   \
  "http://127.0.0.1:7070)\n"                                                   \
  "  --api-key KEY      API key (env SKALD_API_KEY or SKALD_API_KEY_FILE)\n"   \
  "  --json             print the server's JSON, for scripts\n"                \
  "  --timeout-ms MS    per-request timeout (default 10000)\n"

static const command commands[] = {
    {"apply",
     cmd_apply,
     "apply FILE",
     "Registers the workflow spec in FILE ('-' reads stdin) and says whether\n"
     "it was created or unchanged. An invalid spec or a different spec for an\n"
     "existing version is refused; each problem is printed with its JSON\n"
     "Pointer.\n",
     {NULL},
     1,
     1},
    {"start",
     cmd_start,
     "start WORKFLOW [--input JSON|@FILE] [--key KEY] [--version N] "
     "[--wait [SECONDS]]",
     "Starts a run of WORKFLOW and prints its saga id.\n"
     "  --input JSON|@FILE  the run's input (a JSON object)\n"
     "  --key KEY           idempotency key: the same key gives the same saga\n"
     "  --version N         the workflow version (default: the latest)\n"
     "  --wait [SECONDS]    wait until the saga settles and print its status;\n"
     "                      exit 0 completed, 3 compensated or cancelled,\n"
     "                      4 failed or paused, 6 still running after "
     "SECONDS\n",
     {"--input=", "--key=", "--version=", "--wait?", NULL},
     1,
     1},
    {"get",
     cmd_get,
     "get SAGA_ID",
     "Shows a saga: status, input, error and the state of each step.\n",
     {NULL},
     1,
     1},
    {"list",
     cmd_list,
     "list [--status S] [--workflow W] [--limit N] [--all]",
     "Lists sagas, newest first.\n"
     "  --status S    only sagas in status S\n"
     "  --workflow W  only runs of workflow W\n"
     "  --limit N     sagas per page (1 to 1000, default 50)\n"
     "  --all         follow the pages to the end\n",
     {"--status=", "--workflow=", "--limit=", "--all", NULL},
     0,
     0},
    {"timeline",
     cmd_timeline,
     "timeline SAGA_ID",
     "Shows the saga's events in order: sequence, time, event, step name,\n"
     "attempt and a short detail (error, output, retry delay). --json prints\n"
     "the raw events.\n",
     {NULL},
     1,
     1},
    {"cancel",
     cmd_cancel,
     "cancel SAGA_ID",
     "Requests cancellation: the running step stops at its next checkpoint\n"
     "and completed steps are compensated.\n",
     {NULL},
     1,
     1},
    {"replay",
     cmd_replay,
     "replay SAGA_ID [--from-step S] [--step-input JSON] [--input JSON]\n"
     "       skaldctl replay --status STATUS [--workflow W] [--limit N]",
     "Replays a saga: a failed one resumes its compensations; a paused one\n"
     "resumes at the failed step (or --from-step S, with --step-input to\n"
     "correct that step's input); a compensated or cancelled one starts as a\n"
     "new linked run (with --input to correct the input).\n"
     "With --status (failed, paused, compensated or cancelled) replays every\n"
     "matching saga, at most --limit (default 100), optionally of one\n"
     "--workflow; exits 1 if any could not be replayed.\n",
     {"--from-step=", "--step-input=", "--input=", "--status=", "--workflow=",
      "--limit=", NULL},
     0,
     1},
    {"nodes",
     cmd_nodes,
     "nodes",
     "Lists the engine nodes (alive, heartbeat age, work in flight, GPUs)\n"
     "and, for nodes with GPUs, each GPU's state, reason and readings.\n",
     {NULL},
     0,
     0},
    {"health",
     cmd_health,
     "health",
     "Asks GET /health/ready: exit 0 when the daemon is ready, 1 when not,\n"
     "5 when it cannot be reached.\n",
     {NULL},
     0,
     0},
    {"keys",
     ctl_cmd_keys,
     "keys create NAME | keys revoke ID | keys list",
     "Manages API keys directly in the database (--database-url URL, env\n"
     "SKALD_DATABASE_URL or SKALD_DATABASE_URL_FILE; migrations are applied\n"
     "first). create prints the new key once: store it, it cannot be shown\n"
     "again. A daemon with keys requires one on every API request.\n",
     {NULL},
     1,
     2},
    {"verify",
     ctl_cmd_verify,
     "verify [--database-url URL] [--saga ID]",
     "Rebuilds every saga's state (or one saga's) from its events and\n"
     "compares it with the stored state; exits 1 if any mismatch.\n",
     {"--saga=", NULL},
     0,
     0},
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *f) {
  fprintf(f, "usage: skaldctl [global options] COMMAND [args]\n\n"
             "Controls a Skald daemon.\n\nCommands:\n");
  for (size_t i = 0; i < NCOMMANDS; i++)
    fprintf(f, "  %s\n", commands[i].usage);
  fprintf(f, "\n" GLOBAL_HELP
             "\nExit status: 0 ok, 1 the server answered an error, 2 usage,\n"
             "3/4 see start --wait, 5 the server cannot be reached.\n"
             "Run 'skaldctl COMMAND --help' for a command's options.\n");
}

int main(int argc, char **argv) {
  /* Global flags may come before the command: find the first word that is
   * neither a flag nor a global flag's value. */
  int at = 1;
  while (at < argc && strncmp(argv[at], "--", 2) == 0) {
    const char *a = argv[at];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return EX_OK;
    }
    if (strcmp(a, "--version") == 0) {
      printf("skaldctl %s\n", SKALD_VERSION_STRING);
      return EX_OK;
    }
    bool takes = strchr(a, '=') == NULL && strcmp(a, "--json") != 0;
    at += takes ? 2 : 1;
  }
  if (at >= argc) {
    fprintf(stderr, "skaldctl: missing command\n");
    usage(stderr);
    return EX_USAGE;
  }
  for (size_t i = 0; i < NCOMMANDS; i++)
    if (strcmp(argv[at], commands[i].name) == 0)
      current = &commands[i];
  if (current == NULL) {
    fprintf(stderr, "skaldctl: unknown command '%s'\n", argv[at]);
    usage(stderr);
    return EX_USAGE;
  }
  /* The command's words: everything but the command name itself. */
  char **rest = calloc((size_t)argc, sizeof(char *));
  int n = 0;
  for (int i = 1; i < argc; i++)
    if (i != at)
      rest[n++] = argv[i];
  ctl c;
  memset(&c, 0, sizeof(c));
  int rc = parse_args(&c, current, n, rest);
  free(rest);
  if (rc == -1) {
    usage_line(stdout);
    printf("\n%s\n" GLOBAL_HELP, current->help);
    rc = EX_OK;
  } else if (rc == EX_OK) {
    log_set_level(LOG_ERROR);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    rc = current->run(&c);
    curl_global_cleanup();
  }
  free(c.url);
  if (c.api_key != NULL)
    memset(c.api_key, 0, strlen(c.api_key));
  free(c.api_key);
  free(c.database_url);
  return rc;
}
