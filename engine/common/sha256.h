/*
 * sha256.h — SHA-256 (FIPS 180-4), incremental and one-shot.
 *
 *   sha256_ctx c;
 *   sha256_init(&c);
 *   sha256_update(&c, part1, n1);
 *   sha256_update(&c, part2, n2);
 *   sha256_final(&c, digest);
 *
 * Thread: a context belongs to one thread at a time; no global state.
 */
#ifndef SKALD_COMMON_SHA256_H
#define SKALD_COMMON_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_DIGEST_LEN 32
#define SHA256_HEX_LEN 65 /* 64 hex digits and the NUL */

typedef struct sha256_ctx {
  uint32_t h[8];
  uint64_t bytes; /* message length so far */
  uint8_t block[64];
  size_t fill; /* bytes waiting in block, < 64 */
} sha256_ctx;

void sha256_init(sha256_ctx *c);
/* Adds n bytes (p may be NULL when n is 0). */
void sha256_update(sha256_ctx *c, const void *p, size_t n);
/* Writes the digest and wipes the context (reuse needs sha256_init). */
void sha256_final(sha256_ctx *c, uint8_t out[SHA256_DIGEST_LEN]);

/* One shot. */
void sha256(const void *p, size_t n, uint8_t out[SHA256_DIGEST_LEN]);
/* Lowercase hex of the digest of p; hex must hold SHA256_HEX_LEN bytes. */
void sha256_hex(const void *p, size_t n, char hex[SHA256_HEX_LEN]);
/* Lowercase hex of len bytes into hex (2 * len + 1 bytes). */
void sha256_to_hex(const uint8_t *bytes, size_t len, char *hex);

#endif /* SKALD_COMMON_SHA256_H */
