/*
 * uuid.c — UUIDv7 generation and validation (see uuid.h).
 *
 * 48 bits of Unix milliseconds, version 7, 74 random bits from getrandom(2)
 * (falling back to a xorshift of the clock and pid if it fails), variant 10.
 *
 * Thread: any.
 */
#include "common/uuid.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "common/clock.h"

void uuid_v7(char out[37]) {
  uint8_t b[16];
  uint64_t ms = (uint64_t)clock_now_ms();
  if (getrandom(b + 6, 10, 0) != 10) {
    uint64_t x = ms ^ ((uint64_t)getpid() << 20) ^ (uint64_t)clock_mono_us();
    for (int i = 6; i < 16; i++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      b[i] = (uint8_t)x;
    }
  }
  for (int i = 0; i < 6; i++)
    b[i] = (uint8_t)(ms >> (40 - 8 * i));
  b[6] = (uint8_t)(0x70 | (b[6] & 0x0f));
  b[8] = (uint8_t)(0x80 | (b[8] & 0x3f));
  snprintf(out, 37,
           "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x"
           "%02x",
           b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10],
           b[11], b[12], b[13], b[14], b[15]);
}

bool uuid_valid(const char *s) {
  if (s == NULL || strlen(s) != 36)
    return false;
  for (int i = 0; i < 36; i++) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
      return false;
  }
  return true;
}
