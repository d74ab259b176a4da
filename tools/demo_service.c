/*
 * demo_service.c — a small booking service for the demo and the tests of
 * `http` steps, served with Skald's own HTTP core.
 *
 *   POST   /flights        {"from","to"}        → 201 {"id":"FL-n"}
 *   DELETE /flights/{id}                         → 200 {"cancelled":"FL-n"}
 *   POST   /hotels         {"city","flaky"}     → 201 {"id":"HT-n"}; with
 *          "flaky": true the first attempt of each key answers 503
 *   DELETE /hotels/{id}                          → 200 {"cancelled":"HT-n"}
 *   POST   /payments       {"card"}             → 201 {"id":"PAY-n"}, or
 *          402 {"error":"declined"} for card "declined" (not retryable)
 *   GET    /health                               → 200
 *
 * Like a real service it dedupes by Idempotency-Key: a repeated key gets
 * the first answer again, so a retried or re-driven step has one effect.
 * Every request is logged to stdout as one line (method, path, key,
 * status) so a demo can show what the saga did to the outside world.
 *
 * Usage: demo_service [--listen HOST:PORT]   (default 127.0.0.1:9000)
 * Stops cleanly on SIGTERM / SIGINT.
 */
#include <cjson/cJSON.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/http_server.h"
#include "api/router.h"
#include "common/json.h"

#define MAX_KEYS 4096

typedef struct answer {
  char key[160];
  int status;
  char body[128];
} answer;

static answer answers[MAX_KEYS];
static size_t n_answers;
static int next_id = 1;
static char flaky_seen[MAX_KEYS][160];
static size_t n_flaky;

static const answer *remembered(const char *key) {
  for (size_t i = 0; key != NULL && i < n_answers; i++)
    if (strcmp(answers[i].key, key) == 0)
      return &answers[i];
  return NULL;
}

static void reply(http_request *req, http_response *resp, int status,
                  const char *body) {
  const char *key = http_request_header(req, "Idempotency-Key");
  if (key != NULL && n_answers < MAX_KEYS && status < 500) {
    answer *a = &answers[n_answers++];
    snprintf(a->key, sizeof(a->key), "%s", key);
    a->status = status;
    snprintf(a->body, sizeof(a->body), "%s", body);
  }
  printf("%-6s %-24s %3d  key=%s\n",
         http_method_str((enum http_method)http_request_method(req)),
         http_request_path(req), status, key != NULL ? key : "-");
  fflush(stdout);
  http_response_json(resp, status, body);
}

/* Answers a repeated key with its first answer; true if it did. */
static bool replay_answer(http_request *req, http_response *resp) {
  const answer *a = remembered(http_request_header(req, "Idempotency-Key"));
  if (a == NULL)
    return false;
  printf("%-6s %-24s %3d  key=%s (same key: first answer repeated)\n",
         http_method_str((enum http_method)http_request_method(req)),
         http_request_path(req), a->status, a->key);
  fflush(stdout);
  http_response_json(resp, a->status, a->body);
  return true;
}

static cJSON *body_json(http_request *req) {
  size_t len = 0;
  const char *b = http_request_body(req, &len);
  return json_parse_exact(b, len);
}

static void create(http_request *req, http_response *resp, void *ud) {
  const char *prefix = ud;
  if (replay_answer(req, resp))
    return;
  cJSON *in = body_json(req);
  const char *key = http_request_header(req, "Idempotency-Key");
  if (strcmp(prefix, "HT") == 0 && cJSON_IsTrue(cJSON_GetObjectItem(in,
                                                                    "flaky"))) {
    bool seen = false;
    for (size_t i = 0; key != NULL && i < n_flaky; i++)
      seen |= strcmp(flaky_seen[i], key) == 0;
    if (!seen && key != NULL && n_flaky < MAX_KEYS) {
      snprintf(flaky_seen[n_flaky++], sizeof(flaky_seen[0]), "%s", key);
      cJSON_Delete(in);
      reply(req, resp, 503, "{\"error\":\"busy, try again\"}");
      return;
    }
  }
  const char *card = cJSON_GetStringValue(cJSON_GetObjectItem(in, "card"));
  bool declined = card != NULL && strcmp(card, "declined") == 0;
  cJSON_Delete(in);
  if (strcmp(prefix, "PAY") == 0 && declined) {
    reply(req, resp, 402, "{\"error\":\"declined\"}");
    return;
  }
  char body[64];
  snprintf(body, sizeof(body), "{\"id\":\"%s-%d\"}", prefix, next_id++);
  reply(req, resp, 201, body);
}

static void cancel(http_request *req, http_response *resp, void *ud) {
  if (replay_answer(req, resp))
    return;
  char body[128];
  snprintf(body, sizeof(body), "{\"cancelled\":\"%.64s\"}",
           http_request_param(req, "id"));
  reply(req, resp, 200, body);
}

static void health(http_request *req, http_response *resp, void *ud) {
  http_response_json(resp, 200, "{\"status\":\"ok\"}");
}

static uv_signal_t sig_term, sig_int;
static http_server *server;

static void stopped(http_server *s, void *ud) {
  uv_close((uv_handle_t *)&sig_term, NULL);
  uv_close((uv_handle_t *)&sig_int, NULL);
}

static void on_signal(uv_signal_t *h, int signum) {
  uv_signal_stop(&sig_term);
  uv_signal_stop(&sig_int);
  if (http_server_stop(server, 2000, stopped, NULL) != 0)
    stopped(server, NULL);
}

int main(int argc, char **argv) {
  const char *listen = "127.0.0.1:9000";
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
      listen = argv[++i];
    } else {
      fprintf(stderr, "usage: demo_service [--listen HOST:PORT]\n");
      return 2;
    }
  }
  router *r = NULL;
  int rc = router_new(&r);
  rc = rc ? rc : router_add(r, HTTP_POST, "/flights", create, "FL");
  rc = rc ? rc : router_add(r, HTTP_DELETE, "/flights/{id}", cancel, NULL);
  rc = rc ? rc : router_add(r, HTTP_POST, "/hotels", create, "HT");
  rc = rc ? rc : router_add(r, HTTP_DELETE, "/hotels/{id}", cancel, NULL);
  rc = rc ? rc : router_add(r, HTTP_POST, "/payments", create, "PAY");
  rc = rc ? rc : router_add(r, HTTP_GET, "/health", health, NULL);
  uv_loop_t *loop = uv_default_loop();
  http_server_config cfg;
  http_server_config_init(&cfg);
  sk_error err = {0};
  if (rc == 0)
    rc = http_server_new(loop, &cfg, r, &server);
  if (rc == 0)
    rc = http_server_listen(server, listen, &err);
  if (rc != 0) {
    fprintf(stderr, "demo_service: cannot listen on %s: %s\n", listen,
            err.message);
    return 1;
  }
  printf("demo service listening on %s\n", listen);
  fflush(stdout);
  uv_signal_init(loop, &sig_term);
  uv_signal_init(loop, &sig_int);
  uv_signal_start(&sig_term, on_signal, SIGTERM);
  uv_signal_start(&sig_int, on_signal, SIGINT);
  uv_run(loop, UV_RUN_DEFAULT);
  http_server_free(server);
  router_free(r);
  uv_loop_close(loop);
  return 0;
}
