/*
 * auth.c — API keys: creation, listing, revocation, and the per-request
 * check with a small cache (auth.h).
 *
 * Invariants: no secret is ever stored, logged or put into an error
 * message; buffers that held one are wiped before they are released. The
 * cache holds (id, sha256(key), expiry) of keys verified against the
 * database less than ttl ago — a hit needs the same whole key, compared in
 * constant time, so it never admits a wrong secret. Failures are not
 * cached. Every statement is parameterised; results are cleared in the
 * function that received them.
 *
 * Thread: any; the cache has a mutex, a PGconn is the caller's.
 */
#include "api/auth.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/sha256.h"
#include "store/db.h"

#define SALT_BYTES 16

typedef struct cache_entry {
  char id[AUTH_ID_LEN + 1]; /* "" = free slot */
  uint8_t digest[SHA256_DIGEST_LEN];
  int64_t expires_ms;
} cache_entry;

struct auth_cache {
  pthread_mutex_t mu;
  int64_t ttl_ms;
  int64_t (*now_ms)(void);
  cache_entry slots[AUTH_CACHE_SLOTS];
};

bool auth_ct_equal(const void *a, const void *b, size_t n) {
  const volatile uint8_t *x = a, *y = b;
  uint8_t diff = 0;
  for (size_t i = 0; i < n; i++)
    diff |= (uint8_t)(x[i] ^ y[i]);
  return diff == 0;
}

/* ---- the cache ----------------------------------------------------------- */

int auth_cache_new(int64_t ttl_ms, int64_t (*now_ms)(void), auth_cache **out) {
  *out = NULL;
  if (ttl_ms <= 0)
    return SK_EINVAL;
  auth_cache *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return SK_ENOMEM;
  if (pthread_mutex_init(&c->mu, NULL) != 0) {
    free(c);
    return SK_ENOMEM;
  }
  c->ttl_ms = ttl_ms;
  c->now_ms = now_ms != NULL ? now_ms : clock_mono_ms;
  *out = c;
  return SK_OK;
}

void auth_cache_free(auth_cache *c) {
  if (c == NULL)
    return;
  pthread_mutex_destroy(&c->mu);
  explicit_bzero(c, sizeof(*c));
  free(c);
}

void auth_cache_forget(auth_cache *c, const char *id) {
  if (c == NULL || id == NULL)
    return;
  pthread_mutex_lock(&c->mu);
  for (size_t i = 0; i < AUTH_CACHE_SLOTS; i++)
    if (strcmp(c->slots[i].id, id) == 0)
      memset(&c->slots[i], 0, sizeof(c->slots[i]));
  pthread_mutex_unlock(&c->mu);
}

static bool cache_hit(auth_cache *c, const char *id,
                      const uint8_t digest[SHA256_DIGEST_LEN]) {
  bool hit = false;
  pthread_mutex_lock(&c->mu);
  int64_t now = c->now_ms();
  for (size_t i = 0; i < AUTH_CACHE_SLOTS && !hit; i++) {
    cache_entry *e = &c->slots[i];
    if (e->id[0] == '\0' || strcmp(e->id, id) != 0)
      continue;
    if (now >= e->expires_ms)
      memset(e, 0, sizeof(*e)); /* expired: ask the database again */
    else
      hit = auth_ct_equal(e->digest, digest, SHA256_DIGEST_LEN);
  }
  pthread_mutex_unlock(&c->mu);
  return hit;
}

/* Takes a free or expired slot, else the one that expires first. */
static void cache_put(auth_cache *c, const char *id,
                      const uint8_t digest[SHA256_DIGEST_LEN]) {
  pthread_mutex_lock(&c->mu);
  int64_t now = c->now_ms();
  cache_entry *victim = &c->slots[0];
  for (size_t i = 0; i < AUTH_CACHE_SLOTS; i++) {
    cache_entry *e = &c->slots[i];
    if (e->id[0] == '\0' || now >= e->expires_ms) {
      victim = e;
      break;
    }
    if (e->expires_ms < victim->expires_ms)
      victim = e;
  }
  snprintf(victim->id, sizeof(victim->id), "%s", id);
  memcpy(victim->digest, digest, SHA256_DIGEST_LEN);
  victim->expires_ms = now + c->ttl_ms;
  pthread_mutex_unlock(&c->mu);
}

/* ---- keys ------------------------------------------------------------------ */

static bool is_lower_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return false;
  return true;
}

/* n random bytes as 2n hex digits (hex holds 2n + 1). */
static int random_hex(char *hex, size_t n) {
  uint8_t b[64];
  if (n > sizeof(b))
    return SK_EINVAL;
  size_t got = 0;
  while (got < n) {
    ssize_t r = getrandom(b + got, n - got, 0);
    if (r <= 0)
      return SK_EIO;
    got += (size_t)r;
  }
  sha256_to_hex(b, n, hex);
  explicit_bzero(b, sizeof(b));
  return SK_OK;
}

/* hash = hex(sha256(salt_hex || secret_hex)). */
static void key_hash(const char *salt, const char *secret,
                     char hash[SHA256_HEX_LEN]) {
  sha256_ctx c;
  uint8_t d[SHA256_DIGEST_LEN];
  sha256_init(&c);
  sha256_update(&c, salt, strlen(salt));
  sha256_update(&c, secret, AUTH_SECRET_LEN);
  sha256_final(&c, d); /* wipes c */
  sha256_to_hex(d, sizeof(d), hash);
}

/* Splits a well-formed key into id and secret (pointer into key). */
static bool parse_key(const char *key, size_t len, char id[AUTH_ID_LEN + 1],
                      const char **secret) {
  if (len != AUTH_KEY_LEN || strncmp(key, "sk_", 3) != 0 ||
      key[3 + AUTH_ID_LEN] != '_' || !is_lower_hex(key + 3, AUTH_ID_LEN) ||
      !is_lower_hex(key + 4 + AUTH_ID_LEN, AUTH_SECRET_LEN))
    return false;
  memcpy(id, key + 3, AUTH_ID_LEN);
  id[AUTH_ID_LEN] = '\0';
  *secret = key + 4 + AUTH_ID_LEN;
  return true;
}

static bool name_ok(const char *name) {
  if (name == NULL || name[0] == '\0' ||
      strnlen(name, AUTH_NAME_MAX + 1) > AUTH_NAME_MAX)
    return false;
  for (const unsigned char *p = (const unsigned char *)name; *p; p++)
    if (*p < 0x20 || *p == 0x7f)
      return false;
  return true;
}

/* Inserts one key row; *taken is set when the id already exists. */
static int insert_key(PGconn *conn, const char *id, const char *name,
                      const char *hash, const char *salt, bool *taken,
                      sk_error *err) {
  const char *p[4] = {id, name, hash, salt};
  PGresult *r = PQexecParams(conn,
                             "INSERT INTO api_keys (id, name, hash, salt) "
                             "VALUES ($1, $2, $3, $4) "
                             "ON CONFLICT (id) DO NOTHING",
                             4, NULL, p, NULL, NULL, 0);
  int rc = SK_OK;
  if (PQresultStatus(r) != PGRES_COMMAND_OK)
    rc = db_fail(conn, r, "could not create API key", err);
  else
    *taken = strcmp(PQcmdTuples(r), "1") != 0;
  PQclear(r);
  return rc;
}

/* Makes id, secret, salt and hash and stores the row (a new id if the
 * random one is taken). secret holds AUTH_SECRET_LEN + 1 bytes. */
static int make_key(PGconn *conn, const char *name, char *id, char *secret,
                    sk_error *err) {
  char salt[2 * SALT_BYTES + 1], hash[SHA256_HEX_LEN];
  for (int attempt = 0; attempt < 5; attempt++) {
    int rc = random_hex(id, AUTH_ID_LEN / 2);
    if (rc == SK_OK)
      rc = random_hex(secret, AUTH_SECRET_LEN / 2);
    if (rc == SK_OK)
      rc = random_hex(salt, SALT_BYTES);
    if (rc != SK_OK)
      return sk_error_set(err, rc, "could not read random bytes");
    key_hash(salt, secret, hash);
    bool taken = false;
    rc = insert_key(conn, id, name, hash, salt, &taken, err);
    if (rc != SK_OK || !taken)
      return rc;
  }
  return sk_error_set(err, SK_EINTERNAL, "could not find a free API key id");
}

int auth_key_create(PGconn *conn, const char *name, char **key_out,
                    char *id_out, sk_error *err) {
  *key_out = NULL;
  id_out[0] = '\0';
  if (!name_ok(name))
    return sk_error_set(err, SK_EINVAL,
                        "API key name must be 1 to %d bytes without control "
                        "characters",
                        AUTH_NAME_MAX);
  char id[AUTH_ID_LEN + 1], secret[AUTH_SECRET_LEN + 1];
  int rc = make_key(conn, name, id, secret, err);
  if (rc == SK_OK) {
    char *key = malloc(AUTH_KEY_LEN + 1);
    if (key == NULL) {
      rc = sk_error_set(err, SK_ENOMEM, NULL);
    } else {
      snprintf(key, AUTH_KEY_LEN + 1, "sk_%s_%s", id, secret);
      *key_out = key;
      memcpy(id_out, id, sizeof(id));
      log_write(LOG_INFO, "created API key", "key_id", id, "name", name,
                NULL);
    }
  }
  explicit_bzero(secret, sizeof(secret));
  return rc;
}

int auth_key_revoke(PGconn *conn, const char *id, sk_error *err) {
  if (id == NULL || strlen(id) != AUTH_ID_LEN || !is_lower_hex(id, AUTH_ID_LEN))
    return sk_error_set(err, SK_ENOENT, "API key %s does not exist",
                        id != NULL && strlen(id) <= 64 ? id : "(invalid)");
  const char *p[1] = {id};
  PGresult *r = PQexecParams(conn,
                             "UPDATE api_keys SET revoked_at = "
                             "coalesce(revoked_at, now()) WHERE id = $1",
                             1, NULL, p, NULL, NULL, 0);
  int rc = SK_OK;
  if (PQresultStatus(r) != PGRES_COMMAND_OK)
    rc = db_fail(conn, r, "could not revoke API key", err);
  else if (strcmp(PQcmdTuples(r), "1") != 0)
    rc = sk_error_set(err, SK_ENOENT, "API key %s does not exist", id);
  PQclear(r);
  if (rc == SK_OK)
    log_write(LOG_INFO, "revoked API key", "key_id", id, NULL);
  return rc;
}

/* Runs a query that yields one text value; *out is malloc'd. */
static int query_text(PGconn *conn, const char *sql, const char *what,
                      char **out, sk_error *err) {
  *out = NULL;
  PGresult *r = PQexecParams(conn, sql, 0, NULL, NULL, NULL, NULL, 0);
  int rc = SK_OK;
  if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
    rc = db_fail(conn, r, what, err);
  else if ((*out = strdup(PQgetvalue(r, 0, 0))) == NULL)
    rc = sk_error_set(err, SK_ENOMEM, NULL);
  PQclear(r);
  return rc;
}

int auth_key_list(PGconn *conn, char **json, sk_error *err) {
  /* Only these four columns are selected: the list cannot leak a hash. */
  return query_text(
      conn,
      "SELECT coalesce(json_agg(json_build_object("
      "  'id', id, 'name', name,"
      "  'created_at', to_char(created_at AT TIME ZONE 'UTC',"
      "                        'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"
      "  'revoked_at', to_char(revoked_at AT TIME ZONE 'UTC',"
      "                        'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))"
      "  ORDER BY created_at, id), '[]')::text "
      "FROM api_keys",
      "could not list API keys", json, err);
}

int auth_any_keys(PGconn *conn, bool *out, sk_error *err) {
  *out = false;
  char *v = NULL;
  int rc = query_text(conn,
                      "SELECT EXISTS (SELECT 1 FROM api_keys "
                      "WHERE revoked_at IS NULL)",
                      "could not look for API keys", &v, err);
  if (rc == SK_OK)
    *out = v[0] == 't';
  free(v);
  return rc;
}

/* ---- checking a request ---------------------------------------------------- */

/* "Bearer <key>": the scheme case-insensitive, one space, then the key. */
static bool parse_header(const char *h, char id[AUTH_ID_LEN + 1],
                         const char **key, const char **secret) {
  if (h == NULL)
    return false;
  size_t len = strnlen(h, AUTH_HEADER_MAX + 1);
  if (len > AUTH_HEADER_MAX || len < 7 || strncasecmp(h, "Bearer ", 7) != 0)
    return false;
  *key = h + 7;
  return parse_key(*key, len - 7, id, secret);
}

/* Verifies secret against the stored salt and hash of a key that is not
 * revoked. An unknown id still costs one hash, so timing does not tell
 * unknown ids from wrong secrets. */
static int verify_db(PGconn *conn, const char *id, const char *secret,
                     sk_error *err) {
  const char *p[1] = {id};
  PGresult *r = PQexecParams(conn,
                             "SELECT hash, salt FROM api_keys "
                             "WHERE id = $1 AND revoked_at IS NULL",
                             1, NULL, p, NULL, NULL, 0);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    int rc = db_fail(conn, r, "could not check API key", err);
    PQclear(r);
    return rc;
  }
  bool found = PQntuples(r) == 1 && PQgetlength(r, 0, 0) == SHA256_HEX_LEN - 1;
  const char *stored = found ? PQgetvalue(r, 0, 0) : "";
  const char *salt = found ? PQgetvalue(r, 0, 1) : "";
  char hash[SHA256_HEX_LEN];
  key_hash(salt, secret, hash);
  bool ok = found && auth_ct_equal(hash, stored, SHA256_HEX_LEN - 1);
  PQclear(r);
  return ok ? SK_OK : sk_error_set(err, SK_ENOENT, "invalid API key");
}

int auth_check(auth_cache *c, PGconn *conn, const char *authorization_header,
               char *key_id_out, sk_error *err) {
  key_id_out[0] = '\0';
  char id[AUTH_ID_LEN + 1];
  const char *key, *secret;
  if (!parse_header(authorization_header, id, &key, &secret))
    return sk_error_set(err, SK_EINVAL,
                        authorization_header == NULL
                            ? "missing Authorization header"
                            : "malformed Authorization header");
  uint8_t digest[SHA256_DIGEST_LEN];
  sha256(key, AUTH_KEY_LEN, digest);
  int rc = SK_OK;
  if (c == NULL || !cache_hit(c, id, digest)) {
    rc = verify_db(conn, id, secret, err);
    if (rc == SK_OK && c != NULL)
      cache_put(c, id, digest);
  }
  explicit_bzero(digest, sizeof(digest));
  if (rc == SK_OK)
    memcpy(key_id_out, id, sizeof(id));
  return rc;
}
