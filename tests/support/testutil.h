/*
 * testutil.h — small helpers shared by the test suites.
 */
#ifndef SKALD_TESTS_TESTUTIL_H
#define SKALD_TESTS_TESTUTIL_H

#include <stddef.h>

/* Reads a whole file (malloc'd, NUL-terminated); NULL if it cannot. */
char *testutil_read_file(const char *path, size_t *len);
/* Reads SKALD_FIXTURES_DIR/<rel>; NULL if it cannot. */
char *testutil_read_fixture(const char *rel, size_t *len);

#endif /* SKALD_TESTS_TESTUTIL_H */
