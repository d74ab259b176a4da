/*
 * skald.c — the daemon: the engine plus the HTTP API (spec/http-api.md).
 *
 * Settings come from flags or the environment (flags win); every setting
 * that may hold a secret also has a _FILE form read from a file. With no
 * database URL the engine starts its embedded PostgreSQL in the data
 * directory. Without API keys the daemon refuses to listen beyond loopback.
 *
 * Threads: main runs the HTTP loop; the engine runs its own loop on its own
 * thread; API work runs on the API pool. SIGTERM / SIGINT stop it
 * gracefully: stop accepting, finish requests in flight, stop the engine
 * (running attempts finish or are handed back), exit 0.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <skald/skald.h>

#include "api/api.h"
#include "api/auth.h"
#include "api/http_server.h"
#include "common/log.h"
#include "common/settings.h"
#include "core/engine.h"

typedef struct config {
  char *database_url;
  char *data_dir;
  char *listen;
  char *node_name;
  int lease_ttl_ms;
  int log_level;
  int retention_days;
  int rate_limit;   /* requests per second per key; 0 = no limit */
  int rate_burst;
} config;

typedef struct daemon {
  uv_loop_t loop;
  uv_signal_t sigterm, sigint;
  sk_engine *engine;
  api *api;
  http_server *http;
  bool signals_up;
  bool stopping;
} daemon_t;

static void usage(FILE *f) {
  fprintf(f,
          "usage: skald [options]\n"
          "\n"
          "Runs the Skald engine and its HTTP API.\n"
          "\n"
          "  --database-url URL   libpq connection string (env "
          "SKALD_DATABASE_URL,\n"
          "                       or SKALD_DATABASE_URL_FILE); unset: the "
          "embedded\n"
          "                       PostgreSQL in the data directory\n"
          "  --data-dir DIR       embedded PostgreSQL and local state (env "
          "SKALD_DATA_DIR,\n"
          "                       default ./.skald)\n"
          "  --listen HOST:PORT   HTTP API address (env SKALD_LISTEN, default "
          "127.0.0.1:7070)\n"
          "  --node-name NAME     this node in /v1/nodes (env "
          "SKALD_NODE_NAME,\n"
          "                       default <hostname>-<pid>)\n"
          "  --lease-ttl-ms MS    task lease time-to-live (env "
          "SKALD_LEASE_TTL_MS, 15000)\n"
          "  --log-level N        0 error, 1 warning, 2 info, 3 debug "
          "(default 2)\n"
          "  --retention-days N   delete finished sagas older than N days "
          "(env\n"
          "                       SKALD_RETENTION_DAYS; default 0: keep "
          "them)\n"
          "  --rate-limit N       requests per second per API key (env "
          "SKALD_RATE_LIMIT,\n"
          "                       default 200; 0 turns the limit off)\n"
          "  --rate-burst N       requests a key may send at once (env "
          "SKALD_RATE_BURST,\n"
          "                       default twice the rate)\n"
          "  --help, --version\n");
}

/* A setting from the flag, the environment or NAME_FILE (settings.h). */
static char *setting(const char *flag_value, const char *env, bool *bad) {
  char why[256];
  char *v = settings_get(flag_value, env, bad, why, sizeof(why));
  if (v == NULL && *bad)
    fprintf(stderr, "skald: %s\n", why);
  return v;
}

static int parse_int(const char *s, int min, int max, int *out) {
  char *end = NULL;
  long v = strtol(s, &end, 10);
  if (s[0] == '\0' || *end != '\0' || v < min || v > max)
    return -1;
  *out = (int)v;
  return 0;
}

/* Returns 0, 1 (printed help/version: exit 0) or 2 (bad usage). */
static int parse_args(int argc, char **argv, config *c) {
  const char *flags[4] = {NULL, NULL, NULL, NULL}; /* url, dir, listen, node */
  const char *names[4] = {"--database-url", "--data-dir", "--listen",
                          "--node-name"};
  const char *ttl = getenv("SKALD_LEASE_TTL_MS");
  const char *rate = getenv("SKALD_RATE_LIMIT");
  const char *burst = getenv("SKALD_RATE_BURST");
  const char *retention = getenv("SKALD_RETENTION_DAYS");
  c->log_level = 2;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 1;
    }
    if (strcmp(argv[i], "--version") == 0) {
      printf("skald %s\n", SKALD_VERSION_STRING);
      return 1;
    }
    bool known = false;
    for (int k = 0; k < 4; k++)
      if (strcmp(argv[i], names[k]) == 0 && i + 1 < argc) {
        flags[k] = argv[++i];
        known = true;
      }
    if (!known && strcmp(argv[i], "--lease-ttl-ms") == 0 && i + 1 < argc) {
      ttl = argv[++i];
      known = true;
    }
    if (!known && strcmp(argv[i], "--rate-limit") == 0 && i + 1 < argc) {
      rate = argv[++i];
      known = true;
    }
    if (!known && strcmp(argv[i], "--retention-days") == 0 && i + 1 < argc) {
      retention = argv[++i];
      known = true;
    }
    if (!known && strcmp(argv[i], "--rate-burst") == 0 && i + 1 < argc) {
      burst = argv[++i];
      known = true;
    }
    if (!known && strcmp(argv[i], "--log-level") == 0 && i + 1 < argc) {
      if (parse_int(argv[++i], 0, 3, &c->log_level) != 0) {
        fprintf(stderr, "skald: --log-level must be 0 to 3\n");
        return 2;
      }
      known = true;
    }
    if (!known) {
      fprintf(stderr, "skald: unknown or incomplete option '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  bool bad = false;
  c->database_url = setting(flags[0], "SKALD_DATABASE_URL", &bad);
  c->data_dir = setting(flags[1], "SKALD_DATA_DIR", &bad);
  c->listen = setting(flags[2], "SKALD_LISTEN", &bad);
  c->node_name = setting(flags[3], "SKALD_NODE_NAME", &bad);
  if (c->listen == NULL)
    c->listen = strdup("127.0.0.1:7070");
  c->lease_ttl_ms = 15000;
  if (ttl != NULL && parse_int(ttl, 300, 3600000, &c->lease_ttl_ms) != 0) {
    fprintf(stderr, "skald: lease TTL must be 300 to 3600000 ms\n");
    return 2;
  }
  if (retention != NULL &&
      parse_int(retention, 0, 36500, &c->retention_days) != 0) {
    fprintf(stderr, "skald: retention must be 0 to 36500 days\n");
    return 2;
  }
  c->rate_limit = 200;
  if (rate != NULL && parse_int(rate, 0, 1000000, &c->rate_limit) != 0) {
    fprintf(stderr, "skald: rate limit must be 0 to 1000000 per second\n");
    return 2;
  }
  c->rate_burst = c->rate_limit * 2;
  if (burst != NULL && parse_int(burst, 1, 1000000, &c->rate_burst) != 0) {
    fprintf(stderr, "skald: rate burst must be 1 to 1000000\n");
    return 2;
  }
  return bad ? 2 : 0;
}

static bool is_loopback(const char *listen) {
  return strncmp(listen, "127.", 4) == 0 ||
         strncmp(listen, "localhost:", 10) == 0 ||
         strncmp(listen, "[::1]:", 6) == 0;
}

/* ---- shutdown, in order: HTTP server → API threads → engine ---- */

static void api_closed(api *a, void *ud) {
  daemon_t *d = ud;
  sk_engine_stop(d->engine);
  if (d->signals_up) {
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
    d->signals_up = false;
  }
}

static void http_stopped(http_server *s, void *ud) {
  daemon_t *d = ud;
  if (d->api != NULL)
    api_close(d->api, api_closed, d);
  else
    api_closed(NULL, d);
}

static void on_signal(uv_signal_t *h, int signum) {
  daemon_t *d = h->data;
  if (d->stopping)
    return;
  d->stopping = true;
  log_write(LOG_INFO, "shutting down", "signal",
            signum == SIGTERM ? "SIGTERM" : "SIGINT", NULL);
  engine_close_polls(d->engine); /* waiting workers get their answer now */
  if (http_server_stop(d->http, 10000, http_stopped, d) != SK_OK)
    http_stopped(d->http, d);
}

static int open_engine(const config *c, sk_engine **out) {
  sk_engine_options o;
  sk_engine_options_init(&o);
  o.database_url = c->database_url;
  o.data_dir = c->data_dir;
  o.node_name = c->node_name;
  o.lease_ttl_ms = c->lease_ttl_ms;
  o.log_level = c->log_level;
  o.retention_days = c->retention_days;
  /* Task types are run by remote workers; the daemon has no handlers. */
  o.allow_unknown_task_types = true;
  sk_error err = {0};
  int rc = sk_engine_open(&o, out, &err);
  if (rc != SK_OK)
    log_write(LOG_ERROR, "could not open the engine", "error", err.message,
              NULL);
  return rc;
}

/* Keys are required when any exist; without any, only loopback is served. */
static int decide_auth(daemon_t *d, const config *c, bool *require) {
  bool any = false;
  sk_error err = {0};
  engine_q_lock(d->engine);
  int rc = auth_any_keys(d->engine->query_conn, &any, &err);
  engine_q_unlock(d->engine);
  if (rc != SK_OK) {
    log_write(LOG_ERROR, "could not read API keys", "error", err.message,
              NULL);
    return rc;
  }
  if (!any && !is_loopback(c->listen)) {
    log_write(LOG_ERROR,
              "refusing to listen beyond loopback without API keys; create "
              "one with: skaldctl keys create NAME",
              "listen", c->listen, NULL);
    return SK_EINVAL;
  }
  *require = any;
  return SK_OK;
}

static int serve(daemon_t *d, const config *c) {
  bool require = false;
  int rc = decide_auth(d, c, &require);
  if (rc != SK_OK)
    return rc;
  api_config ac;
  api_config_init(&ac);
  ac.require_auth = require;
  ac.rate_per_sec = c->rate_limit;
  ac.rate_burst = c->rate_burst > 0 ? c->rate_burst : 1;
  rc = api_new(&d->loop, d->engine, &ac, &d->api);
  http_server_config hc;
  http_server_config_init(&hc);
  if (rc == SK_OK)
    rc = http_server_new(&d->loop, &hc, api_router(d->api), &d->http);
  sk_error err = {0};
  if (rc == SK_OK)
    rc = http_server_listen(d->http, c->listen, &err);
  if (rc != SK_OK) {
    log_write(LOG_ERROR, "could not start the HTTP API", "error",
              err.message[0] ? err.message : sk_strerror(rc), "listen",
              c->listen, NULL);
    return rc;
  }
  rc = sk_engine_start(d->engine);
  if (rc != SK_OK)
    return rc;
  uv_signal_init(&d->loop, &d->sigterm);
  uv_signal_init(&d->loop, &d->sigint);
  d->sigterm.data = d->sigint.data = d;
  uv_signal_start(&d->sigterm, on_signal, SIGTERM);
  uv_signal_start(&d->sigint, on_signal, SIGINT);
  d->signals_up = true;
  char port[16];
  snprintf(port, sizeof(port), "%d", http_server_port(d->http));
  log_write(LOG_INFO, "skald is listening", "listen", c->listen, "port", port,
            "auth", require ? "api keys" : "none (loopback only)", NULL);
  uv_run(&d->loop, UV_RUN_DEFAULT);
  return SK_OK;
}

static void config_free(config *c) {
  free(c->database_url);
  free(c->data_dir);
  free(c->listen);
  free(c->node_name);
  memset(c, 0, sizeof(*c));
}

int main(int argc, char **argv) {
  config c;
  memset(&c, 0, sizeof(c));
  int a = parse_args(argc, argv, &c);
  if (a != 0) {
    config_free(&c);
    return a == 1 ? 0 : 2;
  }
  log_set_level(c.log_level);
  struct sockaddr_storage ss;
  sk_error err = {0};
  if (http_parse_listen(c.listen, &ss, &err) != SK_OK) {
    fprintf(stderr, "skald: %s\n", err.message);
    config_free(&c);
    return 2;
  }
  daemon_t d;
  memset(&d, 0, sizeof(d));
  uv_loop_init(&d.loop);
  int rc = open_engine(&c, &d.engine);
  if (rc == SK_OK)
    rc = serve(&d, &c);
  if (!d.stopping && (d.http != NULL || d.api != NULL)) {
    /* Startup failed half-way: close what was opened, in order. */
    d.stopping = true;
    if (d.http == NULL || http_server_stop(d.http, 0, http_stopped, &d) != 0)
      http_stopped(d.http, &d);
    uv_run(&d.loop, UV_RUN_DEFAULT);
  }
  sk_engine_close(d.engine); /* joins the engine thread */
  http_server_free(d.http);
  api_free(d.api);
  uv_loop_close(&d.loop);
  log_write(rc == SK_OK ? LOG_INFO : LOG_ERROR,
            rc == SK_OK ? "skald stopped" : "skald could not start", NULL);
  config_free(&c);
  return rc == SK_OK ? 0 : 1;
}
