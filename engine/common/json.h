/*
 * json.h — strict JSON parsing at the engine's edges.
 *
 * cJSON_ParseWithLength stops after the first value, so `{"a":1} junk`
 * would parse and the junk be dropped silently. Everything that takes JSON
 * from a user (inputs, outputs, templates, request bodies) parses through
 * json_parse_exact, which refuses anything after the value but white space.
 *
 * Thread: any.
 */
#ifndef SKALD_COMMON_JSON_H
#define SKALD_COMMON_JSON_H

#include <cjson/cJSON.h>
#include <stddef.h>

/* The parsed document, or NULL if text[0..len) is not exactly one JSON value
 * (surrounded by optional white space). Free with cJSON_Delete. */
cJSON *json_parse_exact(const char *text, size_t len);

/* Parses text[0..len) exactly and prints it compact (malloc'd); NULL if
 * it is not one JSON value or on OOM. */
char *json_normalise(const char *text, size_t len);

#endif /* SKALD_COMMON_JSON_H */
