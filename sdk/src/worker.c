/*
 * worker.c — the SDK's remote-worker mode (sk_worker_*): the same handlers
 * as an in-process engine, fed by a Skald daemon over HTTP.
 *
 * Each handler thread long-polls POST /v1/tasks/poll for one task, runs the
 * handler, and reports through /complete or /fail with the lease token. A
 * heartbeat thread renews the lease of every running task every third of
 * its lease; a 409 (lease lost) or a cancel request sets the task's cancel
 * flag, which the handler reads through sk_task_cancelled(). A result the
 * daemon refuses with 409 was fenced: someone else owns that attempt now.
 *
 * Invariants: a task is in `active` exactly while its handler runs; every
 * curl handle belongs to one thread; stop is an atomic flag, also checked
 * by curl's progress callback so a long poll ends promptly.
 *
 * Thread: sk_worker_run's caller starts the threads and joins them.
 */
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/json.h"
#include "common/log.h"
#include "core/engine.h"
#include "spec/def.h"

typedef struct whandler {
  char *type;
  sk_task_fn fn;
  void *ud;
} whandler;

typedef struct wtask {
  struct wtask *next;
  char id[96];
  long long token;
  int64_t lease_ms;
  int64_t last_beat_ms;
  atomic_bool cancel;
} wtask;

struct sk_worker {
  char *url, *api_key, *worker_id;
  char *gpus_json;        /* normalised array, or NULL */
  int concurrency, poll_wait_ms;
  whandler *h;
  size_t n_h;
  atomic_bool stop;
  bool running;
  pthread_mutex_t mu;
  wtask *active;
};

void sk_worker_options_init(sk_worker_options *o) {
  if (o == NULL)
    return;
  memset(o, 0, sizeof(*o));
  o->concurrency = 4;
  o->poll_wait_ms = 10000;
  o->log_level = LOG_INFO;
}

int sk_worker_new(const sk_worker_options *o, sk_worker **out,
                  sk_error *err) {
  if (o == NULL || out == NULL || o->url == NULL ||
      (strncmp(o->url, "http://", 7) != 0 &&
       strncmp(o->url, "https://", 8) != 0))
    return sk_error_set(err, SK_EINVAL, "url must be an http(s) URL");
  if (o->concurrency < 1 || o->concurrency > 256 || o->poll_wait_ms < 0 ||
      o->poll_wait_ms > 60000)
    return sk_error_set(err, SK_EINVAL,
                        "concurrency must be 1..256 and poll_wait_ms "
                        "0..60000");
  sk_worker *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return sk_error_set(err, SK_ENOMEM, NULL);
  char host[64] = "worker";
  gethostname(host, sizeof(host) - 1);
  char id[128];
  snprintf(id, sizeof(id), "%s-%ld", host, (long)getpid());
  size_t ulen = strlen(o->url);
  while (ulen > 0 && o->url[ulen - 1] == '/')
    ulen--;
  w->url = strndup(o->url, ulen);
  w->api_key = o->api_key != NULL ? strdup(o->api_key) : NULL;
  w->worker_id = strdup(o->worker_id != NULL ? o->worker_id : id);
  w->concurrency = o->concurrency;
  w->poll_wait_ms = o->poll_wait_ms;
  if (o->gpus_json != NULL) {
    cJSON *g = json_parse_exact(o->gpus_json, strlen(o->gpus_json));
    bool ok = cJSON_IsArray(g);
    w->gpus_json = ok ? cJSON_PrintUnformatted(g) : NULL;
    cJSON_Delete(g);
    if (w->gpus_json == NULL) {
      sk_worker_free(w);
      return sk_error_set(err, SK_EINVAL,
                          "gpus_json must be a JSON array of GPUs");
    }
  }
  pthread_mutex_init(&w->mu, NULL);
  log_set_level(o->log_level);
  if (w->url == NULL || w->worker_id == NULL ||
      (o->api_key != NULL && w->api_key == NULL)) {
    sk_worker_free(w);
    return sk_error_set(err, SK_ENOMEM, NULL);
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  *out = w;
  return SK_OK;
}

int sk_worker_register_task(sk_worker *w, const char *task_type,
                            sk_task_fn fn, void *udata) {
  if (w == NULL || fn == NULL || !def_name_valid(task_type))
    return SK_EINVAL;
  if (w->running)
    return SK_ESTATE;
  for (size_t i = 0; i < w->n_h; i++)
    if (strcmp(w->h[i].type, task_type) == 0)
      return SK_EEXIST;
  whandler *h = realloc(w->h, (w->n_h + 1) * sizeof(*h));
  if (h == NULL)
    return SK_ENOMEM;
  w->h = h;
  h[w->n_h] = (whandler){.type = strdup(task_type), .fn = fn, .ud = udata};
  if (h[w->n_h].type == NULL)
    return SK_ENOMEM;
  w->n_h++;
  return SK_OK;
}

/* ---- HTTP ------------------------------------------------------------------ */

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  buf_append(ud, p, size * n);
  return size * n;
}

static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c,
                       curl_off_t d) {
  sk_worker *w = ud;
  return atomic_load(&w->stop) ? 1 : 0; /* abort a long poll on stop */
}

/* POSTs JSON to url+path; *status 0 on a transport error. resp gets the
 * body. */
static void post(sk_worker *w, CURL *c, const char *path, const char *json,
                 long timeout_ms, long *status, buf *resp) {
  char url[512];
  snprintf(url, sizeof(url), "%s%s", w->url, path);
  struct curl_slist *hdr = curl_slist_append(NULL,
                                             "Content-Type: application/json");
  char auth[512];
  if (w->api_key != NULL) {
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", w->api_key);
    hdr = curl_slist_append(hdr, auth);
  }
  buf_reset(resp);
  curl_easy_reset(c);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, json);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, resp);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, w);
  *status = 0;
  if (curl_easy_perform(c) == CURLE_OK)
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
  curl_slist_free_all(hdr);
  if (w->api_key != NULL)
    memset(auth, 0, sizeof(auth));
}

/* Sleeps up to ms, waking early on stop. */
static void nap(sk_worker *w, int64_t ms) {
  for (int64_t slept = 0; slept < ms && !atomic_load(&w->stop); slept += 50) {
    struct timespec ts = {0, 50 * 1000000L};
    nanosleep(&ts, NULL);
  }
}

/* ---- one task ------------------------------------------------------------------- */

static const whandler *find(const sk_worker *w, const char *type) {
  for (size_t i = 0; i < w->n_h; i++)
    if (strcmp(w->h[i].type, type) == 0)
      return &w->h[i];
  return NULL;
}

static void active_add(sk_worker *w, wtask *t) {
  pthread_mutex_lock(&w->mu);
  t->next = w->active;
  w->active = t;
  pthread_mutex_unlock(&w->mu);
}

static void active_remove(sk_worker *w, wtask *t) {
  pthread_mutex_lock(&w->mu);
  for (wtask **p = &w->active; *p != NULL; p = &(*p)->next)
    if (*p == t) {
      *p = t->next;
      break;
    }
  pthread_mutex_unlock(&w->mu);
}

static char *result_json(const wtask *t, const struct sk_task_result *r) {
  buf b = BUF_INIT;
  buf_printf(&b, "{\"lease_token\":%lld,", t->token);
  if (r->ok) {
    buf_printf(&b, "\"output\":%s}", r->output != NULL ? r->output : "null");
  } else {
    buf_puts(&b, "\"error\":{\"type\":");
    buf_json_str(&b, r->err_type != NULL ? r->err_type : "HandlerError");
    buf_puts(&b, ",\"message\":");
    buf_json_str(&b, r->err_message != NULL ? r->err_message : "");
    buf_printf(&b, ",\"retryable\":%s}}", r->retryable ? "true" : "false");
  }
  return buf_steal(&b);
}

/* Reports the outcome, retrying transport errors a few times. */
static void report(sk_worker *w, CURL *c, const wtask *t,
                   const struct sk_task_result *r, buf *resp) {
  char path[160];
  snprintf(path, sizeof(path), "/v1/tasks/%s/%s", t->id,
           r->ok ? "complete" : "fail");
  char *json = result_json(t, r);
  long status = 0;
  for (int i = 0; i < 5 && json != NULL; i++) {
    post(w, c, path, json, 10000, &status, resp);
    if (status != 0 && status < 500)
      break;
    nap(w, 200 << i);
  }
  free(json);
  if (status == 409)
    log_write(LOG_WARNING, "result refused: the lease was lost", "task_id",
              t->id, NULL);
  else if (status != 200)
    log_write(LOG_ERROR, "could not report a result; its lease will expire "
                         "and the attempt runs again",
              "task_id", t->id, "#status", (int64_t)status, NULL);
}

static void run_task(sk_worker *w, CURL *c, const cJSON *task, buf *resp) {
  const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(task,
                                                              "task_type"));
  const cJSON *tok = cJSON_GetObjectItem(task, "lease_token");
  const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(task, "task_id"));
  if (type == NULL || id == NULL || !cJSON_IsNumber(tok))
    return;
  wtask t = {.token = (long long)tok->valuedouble,
             .lease_ms = 15000,
             .last_beat_ms = clock_mono_ms()};
  snprintf(t.id, sizeof(t.id), "%s", id);
  atomic_init(&t.cancel, false);
  const cJSON *lease = cJSON_GetObjectItem(task, "lease_ms");
  if (cJSON_IsNumber(lease) && lease->valuedouble >= 300)
    t.lease_ms = (int64_t)lease->valuedouble;
  const cJSON *deadline = cJSON_GetObjectItem(task, "deadline_ms");
  char *input = cJSON_PrintUnformatted(cJSON_GetObjectItem(task, "input"));
  const char *kind = cJSON_GetStringValue(cJSON_GetObjectItem(task, "kind"));
  sk_task view = {
      .saga_id = cJSON_GetStringValue(cJSON_GetObjectItem(task, "saga_id")),
      .workflow = cJSON_GetStringValue(cJSON_GetObjectItem(task, "workflow")),
      .step = cJSON_GetStringValue(cJSON_GetObjectItem(task, "step")),
      .task_type = type,
      .input = input != NULL ? input : "null",
      .idempotency_key =
          cJSON_GetStringValue(cJSON_GetObjectItem(task, "idempotency_key")),
      .attempt = cJSON_GetObjectItem(task, "attempt") != NULL
                     ? cJSON_GetObjectItem(task, "attempt")->valueint
                     : 1,
      .is_compensation = kind != NULL && strcmp(kind, "comp") == 0,
      .gpus = cJSON_GetStringValue(cJSON_GetObjectItem(task, "gpus")) != NULL
                  ? cJSON_GetStringValue(cJSON_GetObjectItem(task, "gpus"))
                  : "",
      .deadline_ms = clock_now_ms() + (cJSON_IsNumber(deadline)
                                           ? (int64_t)deadline->valuedouble
                                           : 30000),
      .impl = &t.cancel};
  struct sk_task_result r;
  memset(&r, 0, sizeof(r));
  const whandler *h = find(w, type);
  active_add(w, &t);
  int rc = h != NULL ? h->fn(&view, &r, h->ud) : -1;
  active_remove(w, &t);
  if (!r.set) {
    if (h == NULL)
      sk_result_error(&r, "NoHandler", "this worker has no handler", true);
    else if (rc == 0)
      sk_result_ok(&r, NULL);
    else
      sk_result_error(&r, "HandlerError",
                      "handler returned an error without a result", true);
  }
  report(w, c, &t, &r, resp);
  free(r.output);
  free(r.err_type);
  free(r.err_message);
  free(input);
}

/* ---- threads ------------------------------------------------------------------------ */

static char *poll_json(const sk_worker *w) {
  buf b = BUF_INIT;
  buf_puts(&b, "{\"worker_id\":");
  buf_json_str(&b, w->worker_id);
  buf_puts(&b, ",\"task_types\":[");
  for (size_t i = 0; i < w->n_h; i++) {
    if (i > 0)
      buf_putc(&b, ',');
    buf_json_str(&b, w->h[i].type);
  }
  buf_printf(&b, "],\"max\":1,\"wait_ms\":%d", w->poll_wait_ms);
  if (w->gpus_json != NULL)
    buf_printf(&b, ",\"node\":{\"gpus\":%s}", w->gpus_json);
  buf_putc(&b, '}');
  return buf_steal(&b);
}

static void *poller(void *arg) {
  sk_worker *w = arg;
  CURL *c = curl_easy_init();
  buf resp = BUF_INIT;
  char *body = poll_json(w);
  int64_t backoff = 100;
  while (c != NULL && body != NULL && !atomic_load(&w->stop)) {
    long status = 0;
    post(w, c, "/v1/tasks/poll", body, w->poll_wait_ms + 10000, &status,
         &resp);
    if (status != 200) {
      if (!atomic_load(&w->stop))
        log_write(LOG_WARNING, "could not poll for tasks; retrying", "url",
                  w->url, "#status", (int64_t)status, NULL);
      nap(w, backoff);
      backoff = backoff < 5000 ? backoff * 2 : 5000;
      continue;
    }
    backoff = 100;
    cJSON *doc = json_parse_exact(resp.data, resp.len);
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(doc, "tasks"))
      run_task(w, c, t, &resp);
    cJSON_Delete(doc);
  }
  free(body);
  buf_free(&resp);
  if (c != NULL)
    curl_easy_cleanup(c);
  return NULL;
}

/* Renews leases of running tasks; a lost lease or a cancel request sets the
 * task's cancel flag. */
static void *beater(void *arg) {
  sk_worker *w = arg;
  CURL *c = curl_easy_init();
  buf resp = BUF_INIT;
  while (c != NULL && !atomic_load(&w->stop)) {
    nap(w, 250);
    int64_t now = clock_mono_ms();
    char ids[64][96];
    long long tokens[64];
    size_t n = 0;
    pthread_mutex_lock(&w->mu);
    for (wtask *t = w->active; t != NULL && n < 64; t = t->next) {
      if (now - t->last_beat_ms < t->lease_ms / 3)
        continue;
      t->last_beat_ms = now;
      snprintf(ids[n], sizeof(ids[n]), "%s", t->id);
      tokens[n++] = t->token;
    }
    pthread_mutex_unlock(&w->mu);
    for (size_t i = 0; i < n; i++) {
      char path[160], body[64];
      snprintf(path, sizeof(path), "/v1/tasks/%.95s/heartbeat", ids[i]);
      snprintf(body, sizeof(body), "{\"lease_token\":%lld}", tokens[i]);
      long status = 0;
      post(w, c, path, body, 5000, &status, &resp);
      bool stop = status == 409 ||
                  (status == 200 && resp.data != NULL &&
                   strstr(resp.data, "\"cancel_requested\":true") != NULL);
      if (!stop)
        continue;
      pthread_mutex_lock(&w->mu);
      for (wtask *t = w->active; t != NULL; t = t->next)
        if (strcmp(t->id, ids[i]) == 0)
          atomic_store(&t->cancel, true);
      pthread_mutex_unlock(&w->mu);
    }
  }
  buf_free(&resp);
  if (c != NULL)
    curl_easy_cleanup(c);
  return NULL;
}

int sk_worker_run(sk_worker *w) {
  if (w == NULL || w->n_h == 0)
    return SK_EINVAL;
  if (w->running)
    return SK_ESTATE;
  w->running = true;
  pthread_t *th = calloc((size_t)w->concurrency + 1, sizeof(pthread_t));
  if (th == NULL)
    return SK_ENOMEM;
  int started = 0, rc = SK_OK;
  if (pthread_create(&th[0], NULL, beater, w) != 0)
    rc = SK_EIO;
  for (int i = 0; i < w->concurrency && rc == SK_OK; i++) {
    if (pthread_create(&th[i + 1], NULL, poller, w) != 0) {
      rc = SK_EIO;
      break;
    }
    started++;
  }
  log_write(LOG_INFO, "worker started", "worker_id", w->worker_id, "url",
            w->url, "#threads", (int64_t)started, NULL);
  if (rc != SK_OK)
    atomic_store(&w->stop, true);
  for (int i = 0; i < started; i++)
    pthread_join(th[i + 1], NULL);
  if (rc == SK_OK || started > 0 || pthread_self() != th[0])
    pthread_join(th[0], NULL);
  free(th);
  log_write(LOG_INFO, "worker stopped", "worker_id", w->worker_id, NULL);
  return rc;
}

int sk_worker_stop(sk_worker *w) {
  if (w == NULL)
    return SK_EINVAL;
  atomic_store(&w->stop, true);
  return SK_OK;
}

void sk_worker_free(sk_worker *w) {
  if (w == NULL)
    return;
  for (size_t i = 0; i < w->n_h; i++)
    free(w->h[i].type);
  free(w->h);
  free(w->url);
  if (w->api_key != NULL)
    memset(w->api_key, 0, strlen(w->api_key));
  free(w->api_key);
  free(w->worker_id);
  free(w->gpus_json);
  pthread_mutex_destroy(&w->mu);
  free(w);
}
