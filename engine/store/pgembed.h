/*
 * pgembed.h — the embedded default: a private PostgreSQL in the data dir.
 *
 * pgembed_start() finds the PostgreSQL binaries (pg_config --bindir, then
 * /usr/lib/postgresql/<newest>/bin), runs initdb into <data_dir>/pg on first
 * use, starts the server listening only on a Unix socket in <data_dir>/run
 * (no TCP), waits until it accepts connections, creates the database
 * "skald" if missing, and returns a conninfo string for it. If a server is
 * already running on that directory (another engine process, or one left
 * by a process that was killed) it is reused and not stopped by this
 * handle. PostgreSQL refuses to run as root: when euid is 0 the server runs
 * as an unprivileged user ("postgres" if it exists, else "nobody") that owns
 * <data_dir>/pg.
 *
 * Thread: the caller's. Starts child processes (initdb, pg_ctl).
 */
#ifndef SKALD_STORE_PGEMBED_H
#define SKALD_STORE_PGEMBED_H

#include "common/err.h"

typedef struct pgembed pgembed;

/* On success *out is the handle and *conninfo (malloc'd) the connection
 * string. Errors: SK_EINVAL, SK_EIO (with a message naming the step that
 * failed and where its log is), SK_ENOMEM. */
int pgembed_start(const char *data_dir, pgembed **out, char **conninfo,
                  sk_error *err);

/* Stops the server if this handle started it (fast shutdown, waits), and
 * frees the handle. NULL is ok. */
void pgembed_stop(pgembed *pg);

#endif /* SKALD_STORE_PGEMBED_H */
