/*
 * skaldctl_db.c — the skaldctl commands that work on the database itself
 * rather than through the API: API keys (the first key cannot be created
 * through an API that requires one) and verify (rebuild each saga's state
 * from its events and compare it with the stored projection). Both apply
 * pending migrations first. The new key is printed once, by keys create.
 *
 * Thread: single-threaded (the CLI).
 */
#include "skaldctl.h"

#include <cjson/cJSON.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/auth.h"
#include "store/db.h"
#include "store/migrate.h"
#include "store/queries.h"

/* ---- the database commands
 * --------------------------------------------------- */

/* Connects to the database and applies pending migrations. */
static int db_open(const ctl *c, PGconn **conn) {
  if (c->database_url == NULL)
    return ctl_usage_error("no database: give --database-url or set "
                           "SKALD_DATABASE_URL (or SKALD_DATABASE_URL_FILE)");
  sk_error err = {0};
  if (db_connect(c->database_url, conn, &err) != SK_OK) {
    fprintf(stderr, "skaldctl: could not connect to the database: %s\n",
            err.message);
    if (*conn != NULL)
      PQfinish(*conn);
    *conn = NULL;
    return EX_SERVER;
  }
  if (migrate_apply(*conn, NULL, &err) != SK_OK) {
    fprintf(stderr, "skaldctl: could not migrate the database: %s\n",
            err.message);
    PQfinish(*conn);
    *conn = NULL;
    return EX_SERVER;
  }
  return EX_OK;
}

static int keys_list(ctl *c, PGconn *conn) {
  char *json = NULL;
  sk_error err = {0};
  if (auth_key_list(conn, &json, &err) != SK_OK) {
    fprintf(stderr, "skaldctl: could not list keys: %s\n", err.message);
    return EX_SERVER;
  }
  if (c->json) {
    printf("%s\n", json);
  } else {
    cJSON *j = cJSON_Parse(json);
    table t = {.ncols = 4};
    ctl_table_add(&t, "ID", "NAME", "CREATED", "REVOKED");
    const cJSON *k;
    cJSON_ArrayForEach(k, j) {
      char t0[32], t1[32] = "-";
      ctl_fmt_ts(ctl_jstr(k, "created_at"), t0);
      if (ctl_jstr(k, "revoked_at")[0])
        ctl_fmt_ts(ctl_jstr(k, "revoked_at"), t1);
      ctl_table_add(&t, ctl_jstr(k, "id"), ctl_jstr(k, "name"), t0, t1);
    }
    ctl_table_print(&t);
    cJSON_Delete(j);
  }
  free(json);
  return EX_OK;
}

int ctl_cmd_keys(ctl *c) {
  const char *sub = c->pos[0];
  bool create = strcmp(sub, "create") == 0, revoke = strcmp(sub, "revoke") == 0;
  if (!create && !revoke && strcmp(sub, "list") != 0)
    return ctl_usage_error("unknown keys command '%s'", sub);
  if ((create || revoke) != (c->npos == 2))
    return ctl_usage_error(create   ? "keys create needs a NAME"
                           : revoke ? "keys revoke needs an ID"
                                    : "keys list takes no argument");
  PGconn *conn = NULL;
  int rc = db_open(c, &conn);
  if (rc != EX_OK)
    return rc;
  sk_error err = {0};
  if (create) {
    char *key = NULL, id[AUTH_ID_LEN + 1];
    if (auth_key_create(conn, c->pos[1], &key, id, &err) != SK_OK) {
      fprintf(stderr, "skaldctl: could not create the key: %s\n", err.message);
      rc = EX_SERVER;
    } else {
      if (c->json)
        printf("{\"id\":\"%s\",\"key\":\"%s\"}\n", id, key);
      else
        printf("%s\n", key);
      fprintf(stderr,
              "skaldctl: created key %s (\"%s\"). Store it now: it is shown "
              "only once and cannot be recovered.\n",
              id, c->pos[1]);
      memset(key, 0, strlen(key));
      free(key);
    }
  } else if (revoke) {
    if (auth_key_revoke(conn, c->pos[1], &err) != SK_OK) {
      fprintf(stderr, "skaldctl: could not revoke key %s: %s\n", c->pos[1],
              err.message[0] ? err.message : "no such key");
      rc = EX_SERVER;
    } else {
      printf("revoked key %s\n", c->pos[1]);
    }
  } else {
    rc = keys_list(c, conn);
  }
  PQfinish(conn);
  return rc;
}

int ctl_cmd_verify(ctl *c) {
  PGconn *conn = NULL;
  int rc = db_open(c, &conn);
  if (rc != EX_OK)
    return rc;
  verify_report rep = {0};
  sk_error err = {0};
  if (queries_verify(conn, ctl_optv(c, "--saga="), &rep, &err) != SK_OK) {
    fprintf(stderr, "skaldctl: could not verify: %s\n", err.message);
    rc = EX_SERVER;
  } else {
    if (c->json)
      printf("{\"checked\":%zu,\"mismatched\":%zu,\"first_mismatch\":%s%s%s}\n",
             rep.checked, rep.mismatched, rep.first_mismatch[0] ? "\"" : "",
             rep.first_mismatch[0] ? rep.first_mismatch : "null",
             rep.first_mismatch[0] ? "\"" : "");
    else
      printf("checked %zu sagas, %zu mismatched\n", rep.checked,
             rep.mismatched);
    if (rep.mismatched > 0) {
      fprintf(stderr,
              "skaldctl: saga %s's stored state does not match its events\n",
              rep.first_mismatch);
      rc = EX_SERVER;
    }
  }
  PQfinish(conn);
  return rc;
}
