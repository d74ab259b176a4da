/*
 * uuid.h — saga ids: UUID version 7 (time-ordered, RFC 9562), so new sagas
 * land at the right edge of the primary-key and created_at indexes.
 *
 * Thread: any.
 */
#ifndef SKALD_COMMON_UUID_H
#define SKALD_COMMON_UUID_H

#include <stdbool.h>

/* Writes a new UUIDv7 in canonical lowercase text (36 chars + NUL). */
void uuid_v7(char out[37]);
/* True if s is a UUID in canonical 8-4-4-4-12 hex form (any case). */
bool uuid_valid(const char *s);

#endif /* SKALD_COMMON_UUID_H */
