/*
 * test_auth.c — api/auth.c against a real PostgreSQL: create, list, check
 * and revoke keys; wrong secrets; malformed Authorization headers; a
 * revoked key refused once the cache entry expires (fake clock) or is
 * forgotten; the stored hash and salt never reveal the secret; neither the
 * list nor the logs ever contain one.
 */
#include "api/auth.h"

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/sha256.h"
#include "pgtest.h"
#include "store/db.h"
#include "store/migrate.h"

static char ci[1024];
static PGconn *conn;
static auth_cache *cache;
static int64_t fake_now = 1000000;

static int64_t fake_clock(void) { return fake_now; }

static void setup(void) {
  log_set_level(LOG_ERROR);
  cr_assert_eq(pgtest_fresh_db(ci, sizeof(ci)), 0);
  sk_error err;
  cr_assert_eq(db_connect(ci, &conn, &err), 0, "%s", err.message);
  cr_assert_eq(migrate_apply(conn, NULL, &err), 0, "%s", err.message);
  cr_assert_eq(auth_cache_new(10000, fake_clock, &cache), 0);
}

static void teardown(void) {
  auth_cache_free(cache);
  if (conn != NULL)
    PQfinish(conn);
  conn = NULL;
  pgtest_drop_db(ci);
}

TestSuite(auth, .init = setup, .fini = teardown, .timeout = 120);

typedef struct made {
  char *key;
  char id[AUTH_ID_LEN + 1];
  char header[AUTH_KEY_LEN + 16];
} made;

static made create(const char *name) {
  made m;
  sk_error err;
  cr_assert_eq(auth_key_create(conn, name, &m.key, m.id, &err), 0, "%s",
               err.message);
  snprintf(m.header, sizeof(m.header), "Bearer %s", m.key);
  return m;
}

static int check(const char *header, char *id_out) {
  char id[AUTH_ID_LEN + 1];
  sk_error err;
  return auth_check(cache, conn, header, id_out != NULL ? id_out : id, &err);
}

static char *list(void) {
  char *json = NULL;
  sk_error err;
  cr_assert_eq(auth_key_list(conn, &json, &err), 0, "%s", err.message);
  return json;
}

static bool any_keys(void) {
  bool any = true;
  sk_error err;
  cr_assert_eq(auth_any_keys(conn, &any, &err), 0, "%s", err.message);
  return any;
}

/* The stored hash or salt of key id (column "hash" or "salt"). */
static char *stored(const char *id, const char *column) {
  char sql[128];
  snprintf(sql, sizeof(sql), "SELECT %s FROM api_keys WHERE id = $1", column);
  const char *p[1] = {id};
  PGresult *r = PQexecParams(conn, sql, 1, NULL, p, NULL, NULL, 0);
  cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK);
  cr_assert_eq(PQntuples(r), 1);
  char *v = strdup(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

Test(auth, create_check_list_revoke) {
  cr_expect_not(any_keys());
  char *empty = list();
  cr_expect_str_eq(empty, "[]");
  free(empty);

  made m = create("ci runner");
  regex_t re;
  cr_assert_eq(regcomp(&re, "^sk_[0-9a-f]{12}_[0-9a-f]{64}$", REG_EXTENDED),
               0);
  cr_expect_eq(regexec(&re, m.key, 0, NULL, 0), 0, "key format: %s", m.key);
  regfree(&re);
  cr_expect_eq(strncmp(m.key + 3, m.id, AUTH_ID_LEN), 0);
  cr_expect(any_keys());

  char id[AUTH_ID_LEN + 1];
  cr_expect_eq(check(m.header, id), 0);
  cr_expect_str_eq(id, m.id);
  cr_expect_eq(check(m.header, id), 0); /* from the cache */
  /* Without a cache, every check asks the database. */
  sk_error err;
  cr_expect_eq(auth_check(NULL, conn, m.header, id, &err), 0);

  char *json = list();
  cJSON *arr = cJSON_Parse(json);
  cr_assert(cJSON_IsArray(arr), "%s", json);
  cr_assert_eq(cJSON_GetArraySize(arr), 1);
  cJSON *o = cJSON_GetArrayItem(arr, 0);
  cr_expect_eq(cJSON_GetArraySize(o), 4, "only id, name and times: %s", json);
  cr_expect_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(o, "id")), m.id);
  cr_expect_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(o, "name")),
                   "ci runner");
  regex_t ts;
  cr_assert_eq(regcomp(&ts, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{15}Z$",
                       REG_EXTENDED), 0);
  const char *created =
      cJSON_GetStringValue(cJSON_GetObjectItem(o, "created_at"));
  cr_expect(created != NULL && regexec(&ts, created, 0, NULL, 0) == 0, "%s",
            json);
  regfree(&ts);
  cr_expect(cJSON_IsNull(cJSON_GetObjectItem(o, "revoked_at")), "%s", json);
  cJSON_Delete(arr);
  free(json);

  cr_expect_eq(auth_key_revoke(conn, m.id, &err), 0, "%s", err.message);
  cr_expect_not(any_keys());
  json = list();
  cr_expect_null(strstr(json, "\"revoked_at\" : null"), "%s", json);
  cr_expect_not_null(strstr(json, m.id));
  free(json);
  /* Revoking again is fine; an unknown or malformed id is not found. */
  cr_expect_eq(auth_key_revoke(conn, m.id, &err), 0);
  cr_expect_eq(auth_key_revoke(conn, "0123456789ab", &err), SK_ENOENT);
  cr_expect_eq(auth_key_revoke(conn, "nope'; --", &err), SK_ENOENT);
  cr_expect_eq(auth_key_revoke(conn, NULL, &err), SK_ENOENT);
  free(m.key);
}

Test(auth, revoked_key_refused_after_cache_expiry) {
  made m = create("short lived");
  cr_assert_eq(check(m.header, NULL), 0);
  sk_error err;
  cr_assert_eq(auth_key_revoke(conn, m.id, &err), 0);
  /* Within the TTL the cached verification still stands... */
  fake_now += 9999;
  cr_expect_eq(check(m.header, NULL), 0);
  /* ...and once it expires, the revocation is seen. */
  fake_now += 1;
  char id[AUTH_ID_LEN + 1] = "x";
  cr_expect_eq(check(m.header, id), SK_ENOENT);
  cr_expect_str_eq(id, "");
  cr_expect_eq(check(m.header, NULL), SK_ENOENT);
  free(m.key);
}

Test(auth, forget_makes_revocation_immediate) {
  made m = create("forget me");
  cr_assert_eq(check(m.header, NULL), 0);
  sk_error err;
  cr_assert_eq(auth_key_revoke(conn, m.id, &err), 0);
  auth_cache_forget(cache, m.id);
  cr_expect_eq(check(m.header, NULL), SK_ENOENT);
  free(m.key);
}

Test(auth, wrong_secret_refused_even_when_cached) {
  made m = create("victim");
  made other = create("other");
  cr_assert_eq(check(m.header, NULL), 0); /* cached now */
  char bad[sizeof(m.header)];
  snprintf(bad, sizeof(bad), "%s", m.header);
  size_t last = strlen(bad) - 1;
  bad[last] = bad[last] == '0' ? '1' : '0';
  sk_error err;
  char id[AUTH_ID_LEN + 1];
  cr_expect_eq(auth_check(cache, conn, bad, id, &err), SK_ENOENT);
  cr_expect_str_eq(err.message, "invalid API key");
  /* Another key's secret with this id. */
  snprintf(bad, sizeof(bad), "Bearer sk_%s_%s", m.id,
           other.key + 4 + AUTH_ID_LEN);
  cr_expect_eq(check(bad, NULL), SK_ENOENT);
  /* A well-formed key that was never issued. */
  snprintf(bad, sizeof(bad), "Bearer sk_0123456789ab_%064d", 0);
  cr_expect_eq(auth_check(cache, conn, bad, id, &err), SK_ENOENT);
  cr_expect_str_eq(err.message, "invalid API key");
  cr_expect_eq(check(m.header, NULL), 0);
  cr_expect_eq(check(other.header, NULL), 0);
  free(m.key);
  free(other.key);
}

Test(auth, malformed_headers_refused) {
  made m = create("format");
  char line[256];
  char *huge = malloc(10 * 1024 + 1);
  cr_assert_not_null(huge);
  snprintf(huge, 8, "Bearer ");
  memset(huge + 7, 'a', 10 * 1024 - 7);
  huge[10 * 1024] = '\0';
  const char *fixed[] = {"",
                         "Bearer",
                         "Bearer ",
                         "Basic x",
                         "Basic dXNlcjpwYXNz",
                         "Bearer sk_bad",
                         "Bearer sk__",
                         huge,
                         m.key, /* no scheme */
                         NULL};
  for (size_t i = 0; fixed[i] != NULL; i++)
    cr_expect_eq(check(fixed[i], NULL), SK_EINVAL, "accepted [%.40s]",
                 fixed[i]);
  /* The key wrapped in something it must not be wrapped in. */
  static const char *const wrap[][2] = {
      {"Bearer  ", ""},  {" Bearer ", ""}, {"Bearer ", " "},
      {"Bearer ", "\n"}, {"Bearer\t", ""}, {"Bearer ", "0"},
      {"Token ", ""},    {"Bearer x", ""}, {"BearerX", ""},
      {"Bearer ", "\r\n"}, {"Bearer Bearer ", ""},
  };
  for (size_t i = 0; i < sizeof(wrap) / sizeof(wrap[0]); i++) {
    snprintf(line, sizeof(line), "%s%s%s", wrap[i][0], m.key, wrap[i][1]);
    cr_expect_eq(check(line, NULL), SK_EINVAL, "accepted [%s]", line);
  }
  /* One character short. */
  snprintf(line, sizeof(line), "Bearer %.*s", AUTH_KEY_LEN - 1, m.key);
  cr_expect_eq(check(line, NULL), SK_EINVAL, "accepted [%s]", line);
  /* Upper-case hex is not the key's form. */
  snprintf(line, sizeof(line), "Bearer sk_%s_%s", m.id,
           m.key + 4 + AUTH_ID_LEN);
  for (char *p = line + 10; *p; p++)
    if (*p >= 'a' && *p <= 'f')
      *p = (char)(*p - 'a' + 'A');
  cr_expect_eq(check(line, NULL), SK_EINVAL, "accepted [%s]", line);
  /* NULL is "missing". */
  sk_error err;
  char id[AUTH_ID_LEN + 1];
  cr_expect_eq(auth_check(cache, conn, NULL, id, &err), SK_EINVAL);
  cr_expect_str_eq(err.message, "missing Authorization header");
  /* The scheme is case-insensitive (RFC 9110). */
  snprintf(line, sizeof(line), "bEARER %s", m.key);
  cr_expect_eq(check(line, NULL), 0);
  free(huge);
  free(m.key);
}

Test(auth, stored_hash_and_salt_never_reveal_the_secret) {
  made m = create("hashing");
  const char *secret = m.key + 4 + AUTH_ID_LEN;
  char *hash = stored(m.id, "hash");
  char *salt = stored(m.id, "salt");
  cr_expect_str_neq(hash, secret);
  cr_expect_str_neq(salt, secret);
  cr_expect_null(strstr(hash, secret));
  cr_expect_null(strstr(secret, salt));
  cr_expect_eq(strlen(hash), 64);
  cr_expect_eq(strlen(salt), 32);
  /* hash = hex(sha256(salt_hex || secret_hex)), as documented. */
  char in[32 + 64 + 1], want[SHA256_HEX_LEN];
  snprintf(in, sizeof(in), "%s%s", salt, secret);
  sha256_hex(in, strlen(in), want);
  cr_expect_str_eq(hash, want);
  /* Two keys never share a salt. */
  made m2 = create("hashing 2");
  char *salt2 = stored(m2.id, "salt");
  cr_expect_str_neq(salt, salt2);
  /* Nothing in the whole table holds the secret. */
  char sql[256];
  snprintf(sql, sizeof(sql),
           "SELECT count(*) FROM api_keys k "
           "WHERE strpos(k::text, '%s') > 0",
           secret);
  cr_expect_eq(pgtest_scalar(ci, sql), 0);
  char *json = list();
  cr_expect_null(strstr(json, secret));
  cr_expect_null(strstr(json, hash));
  cr_expect_null(strstr(json, salt));
  cr_expect_null(strstr(json, "\"hash\""));
  cr_expect_null(strstr(json, "\"salt\""));
  free(json);
  free(hash);
  free(salt);
  free(salt2);
  free(m.key);
  free(m2.key);
}

Test(auth, bad_names_refused) {
  char *key = (char *)1;
  char id[AUTH_ID_LEN + 1];
  sk_error err;
  char longname[AUTH_NAME_MAX + 2];
  memset(longname, 'n', sizeof(longname) - 1);
  longname[sizeof(longname) - 1] = '\0';
  const char *bad[] = {"", "tab\there", "nl\n", longname};
  for (size_t i = 0; i < 4; i++) {
    cr_expect_eq(auth_key_create(conn, bad[i], &key, id, &err), SK_EINVAL);
    cr_expect_null(key);
  }
  cr_expect_eq(auth_key_create(conn, NULL, &key, id, &err), SK_EINVAL);
  longname[AUTH_NAME_MAX] = '\0';
  cr_expect_eq(auth_key_create(conn, longname, &key, id, &err), 0);
  free(key);
  cr_expect_eq(pgtest_scalar(ci, "SELECT count(*) FROM api_keys"), 1);
}

/* Everything logged while creating, checking and revoking (at DEBUG) is
 * captured: the secret appears nowhere. */
Test(auth, logs_never_contain_secrets) {
  char path[] = "/tmp/skald-auth-log-XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  fflush(stderr);
  int saved = dup(2);
  cr_assert_eq(dup2(fd, 2), 2);
  log_set_level(LOG_DEBUG);
  made m = create("logged");
  (void)check(m.header, NULL);
  sk_error err;
  (void)auth_key_revoke(conn, m.id, &err);
  fake_now += 20000;
  (void)check(m.header, NULL);
  log_set_level(LOG_ERROR);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  close(fd);
  FILE *f = fopen(path, "r");
  cr_assert_not_null(f);
  char text[8192];
  size_t n = fread(text, 1, sizeof(text) - 1, f);
  text[n] = '\0';
  fclose(f);
  unlink(path);
  cr_expect_not_null(strstr(text, m.id), "the id is logged: %s", text);
  cr_expect_null(strstr(text, m.key + 4 + AUTH_ID_LEN), "%s", text);
  free(m.key);
}

Test(auth, ct_equal) {
  cr_expect(auth_ct_equal("abc", "abc", 3));
  cr_expect_not(auth_ct_equal("abc", "abd", 3));
  cr_expect_not(auth_ct_equal("\x80", "\x00", 1));
  cr_expect(auth_ct_equal("x", "y", 0));
}

Test(auth, cache_rejects_bad_ttl) {
  auth_cache *c = (auth_cache *)1;
  cr_expect_eq(auth_cache_new(0, NULL, &c), SK_EINVAL);
  cr_expect_null(c);
  cr_expect_eq(auth_cache_new(5, NULL, &c), 0);
  auth_cache_forget(c, "nothing");
  auth_cache_forget(NULL, "nothing");
  auth_cache_free(c);
  auth_cache_free(NULL);
}
