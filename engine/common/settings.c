/*
 * settings.c — flag, environment, then NAME_FILE (see settings.h).
 * Thread: any.
 */
#include "common/settings.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *settings_read_first_line(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return NULL;
  char line[4096];
  char *r = fgets(line, sizeof(line), f);
  fclose(f);
  if (r == NULL)
    return NULL;
  line[strcspn(line, "\r\n")] = '\0';
  return strdup(line);
}

char *settings_get(const char *flag_value, const char *env, bool *bad,
                   char *why, size_t why_len) {
  if (flag_value != NULL)
    return strdup(flag_value);
  const char *v = getenv(env);
  if (v != NULL && v[0] != '\0')
    return strdup(v);
  char name[96];
  snprintf(name, sizeof(name), "%s_FILE", env);
  const char *path = getenv(name);
  if (path == NULL || path[0] == '\0')
    return NULL;
  char *s = settings_read_first_line(path);
  if (s == NULL) {
    *bad = true;
    snprintf(why, why_len, "cannot read %s (%s)", name, path);
  }
  return s;
}
