/*
 * test_sha256.c — common/sha256.c against the NIST FIPS 180-4 example
 * vectors (empty, "abc", the 448- and 896-bit messages, one million 'a'),
 * and incremental updates split at every offset around block boundaries.
 */
#include "common/sha256.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

static const char *const MSG448 =
    "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
static const char *const MSG896 =
    "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
    "ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";

typedef struct vec {
  const char *msg;
  const char *hex;
} vec;

static const vec VECS[] = {
    {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"abc",
     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
    {NULL /* MSG448 */,
     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    {NULL /* MSG896 */,
     "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
};

static const char *vec_msg(size_t i) {
  if (i == 2)
    return MSG448;
  if (i == 3)
    return MSG896;
  return VECS[i].msg;
}

Test(sha256, nist_vectors_one_shot) {
  for (size_t i = 0; i < sizeof(VECS) / sizeof(VECS[0]); i++) {
    char hex[SHA256_HEX_LEN];
    const char *m = vec_msg(i);
    sha256_hex(m, strlen(m), hex);
    cr_expect_str_eq(hex, VECS[i].hex, "vector %zu", i);
  }
}

Test(sha256, empty_with_null_pointer) {
  char hex[SHA256_HEX_LEN];
  sha256_hex(NULL, 0, hex);
  cr_assert_str_eq(hex, VECS[0].hex);
}

Test(sha256, one_million_a) {
  const char *want =
      "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
  /* Incrementally, in uneven pieces. */
  char chunk[1000];
  memset(chunk, 'a', sizeof(chunk));
  sha256_ctx c;
  sha256_init(&c);
  size_t left = 1000000, piece = 1;
  while (left > 0) {
    size_t n = piece < left ? piece : left;
    sha256_update(&c, chunk, n);
    left -= n;
    piece = piece % 977 + 13; /* stays under sizeof(chunk) */
  }
  uint8_t d[SHA256_DIGEST_LEN];
  char hex[SHA256_HEX_LEN];
  sha256_final(&c, d);
  sha256_to_hex(d, sizeof(d), hex);
  cr_assert_str_eq(hex, want);

  /* And in one shot. */
  char *big = malloc(1000000);
  cr_assert_not_null(big);
  memset(big, 'a', 1000000);
  sha256_hex(big, 1000000, hex);
  free(big);
  cr_assert_str_eq(hex, want);
}

/* Every split point of messages whose lengths straddle the padding
 * boundaries (55, 56, 63, 64, 65, 119, 120, 128 bytes) gives the one-shot
 * digest, also when fed one byte at a time. */
Test(sha256, incremental_across_block_boundaries) {
  static const size_t lens[] = {0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 127,
                                128, 129, 200};
  uint8_t msg[200];
  for (size_t i = 0; i < sizeof(msg); i++)
    msg[i] = (uint8_t)(i * 31 + 7);
  for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
    size_t len = lens[li];
    uint8_t want[SHA256_DIGEST_LEN], got[SHA256_DIGEST_LEN];
    sha256(msg, len, want);
    for (size_t cut = 0; cut <= len; cut++) {
      sha256_ctx c;
      sha256_init(&c);
      sha256_update(&c, msg, cut);
      sha256_update(&c, NULL, 0);
      sha256_update(&c, msg + cut, len - cut);
      sha256_final(&c, got);
      cr_assert_eq(memcmp(got, want, sizeof(want)), 0, "len %zu cut %zu", len,
                   cut);
    }
    sha256_ctx c;
    sha256_init(&c);
    for (size_t i = 0; i < len; i++)
      sha256_update(&c, msg + i, 1);
    sha256_final(&c, got);
    cr_assert_eq(memcmp(got, want, sizeof(want)), 0, "bytewise len %zu", len);
  }
}

Test(sha256, nist_448_split_in_two) {
  uint8_t d[SHA256_DIGEST_LEN];
  char hex[SHA256_HEX_LEN];
  sha256_ctx c;
  sha256_init(&c);
  sha256_update(&c, MSG896, 60);
  sha256_update(&c, MSG896 + 60, strlen(MSG896) - 60);
  sha256_final(&c, d);
  sha256_to_hex(d, sizeof(d), hex);
  cr_assert_str_eq(hex, VECS[3].hex);
}

Test(sha256, to_hex_is_lowercase) {
  const uint8_t b[3] = {0x00, 0xab, 0xff};
  char hex[7];
  sha256_to_hex(b, 3, hex);
  cr_assert_str_eq(hex, "00abff");
}
