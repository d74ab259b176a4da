/*
 * auth.h — API keys for the HTTP API: create, list, revoke, and check an
 * `Authorization: Bearer <key>` header.
 *
 * A key is the string  sk_<id>_<secret>  where id is AUTH_ID_LEN lowercase
 * hex digits (public: it names the key in listings, logs and rate limits)
 * and secret is 64 lowercase hex digits (32 bytes from getrandom). The key
 * is handed out once by auth_key_create and never stored: the api_keys
 * table (migrations/0002_api_keys.sql) keeps a random per-key salt and
 * hash = hex(sha256(salt_hex || secret_hex)), compared in constant time.
 *
 * auth_check remembers keys it verified (id and a digest of the whole key,
 * never the key) for the cache's TTL, so a busy client costs no query per
 * request and a revocation on any node takes effect within the TTL
 * (auth_cache_forget makes it immediate on this node).
 *
 * Secrets are never logged; log lines name the key id only.
 *
 * Thread: any. The cache has a mutex; a PGconn belongs to the caller and
 * is used by one thread at a time.
 */
#ifndef SKALD_API_AUTH_H
#define SKALD_API_AUTH_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define AUTH_ID_LEN 12      /* hex digits of a key id */
#define AUTH_SECRET_LEN 64  /* hex digits of a key secret */
#define AUTH_KEY_LEN (3 + AUTH_ID_LEN + 1 + AUTH_SECRET_LEN) /* sk_id_secret */
#define AUTH_HEADER_MAX 256 /* longer Authorization headers are refused */
#define AUTH_NAME_MAX 200   /* bytes of a key's name */
#define AUTH_CACHE_TTL_MS 10000
#define AUTH_CACHE_SLOTS 256

typedef struct auth_cache auth_cache;

/* A cache of verified keys; entries live ttl_ms (> 0) by now_ms, a
 * monotonic millisecond clock (NULL: clock_mono_ms; tests pass a fake).
 * Owned by the caller (auth_cache_free). Errors: SK_EINVAL, SK_ENOMEM. */
int auth_cache_new(int64_t ttl_ms, int64_t (*now_ms)(void),
                   auth_cache **out) SK_MUST_CHECK;
void auth_cache_free(auth_cache *c);
/* Drops the entries of key id (after revoking it on this node). */
void auth_cache_forget(auth_cache *c, const char *id);

/* Creates a key named name (1..AUTH_NAME_MAX bytes, no control
 * characters). *key_out gets the full key (malloc'd; the caller shows it
 * once, then frees it — it cannot be recovered); id_out (AUTH_ID_LEN + 1
 * bytes) gets its id. Errors: SK_EINVAL (name), SK_EIO (no randomness),
 * SK_EDB, SK_ENOMEM. */
int auth_key_create(PGconn *conn, const char *name, char **key_out,
                    char *id_out, sk_error *err) SK_MUST_CHECK;

/* Revokes key id; revoking a revoked key again succeeds and keeps the first
 * revocation time. Errors: SK_ENOENT (no such key; also an id that is not
 * well formed), SK_EDB. */
int auth_key_revoke(PGconn *conn, const char *id, sk_error *err);

/* *json gets (malloc'd) a JSON array, oldest first, of
 *   {"id": "...", "name": "...", "created_at": "RFC 3339 UTC",
 *    "revoked_at": "RFC 3339 UTC" | null}
 * — never a secret, hash or salt. Errors: SK_EDB, SK_ENOMEM. */
int auth_key_list(PGconn *conn, char **json, sk_error *err) SK_MUST_CHECK;

/* *out = whether at least one key is not revoked (the daemon refuses to
 * listen beyond loopback when there is none). Errors: SK_EDB. */
int auth_any_keys(PGconn *conn, bool *out, sk_error *err) SK_MUST_CHECK;

/* Checks an Authorization header value (NULL when absent). It must be
 * exactly "Bearer <key>": the scheme case-insensitive (RFC 9110), one
 * space, a well-formed key, nothing else, at most AUTH_HEADER_MAX bytes.
 * On success key_id_out (AUTH_ID_LEN + 1 bytes) gets the key's id.
 * Errors: SK_EINVAL (absent or malformed header), SK_ENOENT (unknown,
 * revoked, or wrong secret: deliberately one answer), SK_EDB — answer 401
 * for the first two, 503 for SK_EDB. */
int auth_check(auth_cache *c, PGconn *conn, const char *authorization_header,
               char *key_id_out, sk_error *err);

/* Compares n bytes of a and b in time that depends only on n. */
bool auth_ct_equal(const void *a, const void *b, size_t n);

#endif /* SKALD_API_AUTH_H */
