/*
 * migrate.h — schema migrations, embedded in the binary.
 *
 * migrations/NNNN_name.sql files are compiled in (cmake/embed_migrations.cmake)
 * and applied in order at engine start, each in its own transaction and
 * recorded in skald_schema_migrations. A session-level advisory lock makes
 * nodes that start together apply them once, one after another. A database
 * whose recorded version is newer than the newest embedded migration is
 * refused (SK_EMIGRATION) so an old binary never runs on a newer schema.
 *
 * Thread: the caller's; uses only the connection it is given.
 */
#ifndef SKALD_STORE_MIGRATE_H
#define SKALD_STORE_MIGRATE_H

#include <libpq-fe.h>
#include <stddef.h>

#include "common/err.h"

typedef struct migration_file {
  int version;
  const char *name;
  const char *sql;
} migration_file;

/* Generated: every migration, sorted by version. */
extern const migration_file migrations_embedded[];
extern const size_t migrations_embedded_count;

/* The newest embedded version (0 if none). */
int migrate_latest_version(void);

/* Applies what is pending. *applied (may be NULL) gets how many were.
 * Errors: SK_EDB (err has SQLSTATE), SK_EMIGRATION. */
int migrate_apply(PGconn *conn, int *applied, sk_error *err);

/* The version the database is at (0 = never migrated). */
int migrate_current_version(PGconn *conn, int *version, sk_error *err);

#endif /* SKALD_STORE_MIGRATE_H */
