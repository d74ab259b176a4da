/*
 * json.c — strict JSON parsing (see json.h). Thread: any.
 */
#include "common/json.h"

#include <stdlib.h>

static int is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

cJSON *json_parse_exact(const char *text, size_t len) {
  if (text == NULL)
    return NULL;
  const char *end = NULL;
  cJSON *doc = cJSON_ParseWithLengthOpts(text, len, &end, 0);
  if (doc == NULL)
    return NULL;
  const char *stop = text + len;
  while (end != NULL && end < stop && is_space(*end))
    end++;
  if (end == NULL || end < stop) {
    cJSON_Delete(doc);
    return NULL;
  }
  return doc;
}

char *json_normalise(const char *text, size_t len) {
  cJSON *doc = json_parse_exact(text, len);
  if (doc == NULL)
    return NULL;
  char *out = cJSON_PrintUnformatted(doc);
  cJSON_Delete(doc);
  return out;
}
