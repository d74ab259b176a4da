/*
 * log.h — structured logs: one JSON object per line on stderr.
 *
 *   log_write(LOG_INFO, "saga completed", "saga_id", id, "#steps", (int64_t)5,
 *             NULL);
 *
 * Messages are lowercase in the PostgreSQL style. Fields come as key/value
 * pairs ending with NULL; a key starting with '#' takes an int64_t value
 * (the '#' is dropped), any other key a const char * (NULL → null).
 * Never pass secrets or connection strings.
 *
 * Thread: any; each line is written with one write(2).
 */
#ifndef SKALD_COMMON_LOG_H
#define SKALD_COMMON_LOG_H

enum { LOG_ERROR = 0, LOG_WARNING = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

void log_set_level(int level);
int log_get_level(void);
/* Adds a field to every line (e.g. the node name). Copies; call once at
 * start-up before other threads log. NULL value removes it. */
void log_set_node(const char *node);
void log_write(int level, const char *msg, ...);

#endif /* SKALD_COMMON_LOG_H */
