/*
 * testutil.c — small helpers shared by the test suites (see testutil.h).
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>

char *testutil_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return NULL;
  char *data = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n + 4096 + 1 > cap) {
      cap = cap ? cap * 2 : 8192;
      char *p = realloc(data, cap);
      if (p == NULL) {
        free(data);
        fclose(f);
        return NULL;
      }
      data = p;
    }
    size_t r = fread(data + n, 1, 4096, f);
    n += r;
    if (r < 4096)
      break;
  }
  fclose(f);
  data[n] = '\0';
  if (len != NULL)
    *len = n;
  return data;
}

char *testutil_read_fixture(const char *rel, size_t *len) {
  char path[1024];
  snprintf(path, sizeof(path), "%s/%s", SKALD_FIXTURES_DIR, rel);
  return testutil_read_file(path, len);
}
