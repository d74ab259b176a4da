/*
 * settings.h — how the programs read a setting: the flag's value, else the
 * environment variable, else the first line of the file that NAME_FILE
 * names (so secrets need not sit in the environment).
 *
 * Thread: any (reads the environment).
 */
#ifndef SKALD_COMMON_SETTINGS_H
#define SKALD_COMMON_SETTINGS_H

#include <stdbool.h>
#include <stddef.h>

/* The setting (malloc'd) or NULL when none is given. When NAME_FILE names
 * a file that cannot be read, returns NULL, sets *bad and writes why
 * ("cannot read SKALD_X_FILE (/path)") into why. */
char *settings_get(const char *flag_value, const char *env, bool *bad,
                   char *why, size_t why_len);

/* The first line of a file without its line end (malloc'd), or NULL. */
char *settings_read_first_line(const char *path);

#endif /* SKALD_COMMON_SETTINGS_H */
