/*
 * skaldctl.h — what the parts of skaldctl share (tools/skaldctl.c is the
 * program; skaldctl_io.c talks HTTP and formats output; skaldctl_db.c holds
 * the commands that work on the database directly). The tools/skaldctl_*.c
 * files are linked into skaldctl, not built as programs (CMakeLists.txt).
 *
 * Every ctl_ function prints its own messages; those returning int return
 * a process exit code (EX_*).
 */
#ifndef SKALD_TOOLS_SKALDCTL_H
#define SKALD_TOOLS_SKALDCTL_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "common/err.h"

enum {
  EX_OK = 0,
  EX_SERVER = 1,
  EX_USAGE = 2,
  EX_COMPENSATED = 3,
  EX_FAILED = 4,
  EX_UNREACHABLE = 5,
  EX_WAIT_TIMEOUT = 6
};

#define MAX_POS 4
#define MAX_OPTS 8

/* A command's option: its name, whether it takes a value (1), may take a
 * numeric one (2: --wait [SECONDS]) or none (0), and where it lands. */
typedef struct opt {
  const char *name;
  int arg;
  const char *value; /* NULL: not given; "" for flags given */
} opt;

typedef struct ctl {
  char *url;
  char *api_key;
  char *database_url;
  bool json;
  long timeout_ms;
  const char *pos[MAX_POS];
  int npos;
  opt opts[MAX_OPTS];
  int nopts;
} ctl;

/* A table: cells are copied; columns padded to their widest cell. */
typedef struct table {
  int ncols;
  size_t nrows, cap;
  char **cells;
} table;

/* Prints "skaldctl: <message>" and the command's usage to stderr; returns
 * EX_USAGE. */
int ctl_usage_error(const char *fmt, ...) SK_PRINTF(1, 2);

/* The value of command option name (as the command declares it, e.g.
 * "--limit="): NULL if not given, "" for a flag or an option given no
 * value. */
const char *ctl_optv(const ctl *c, const char *name);

/* ---- skaldctl_io.c ---- */

/* strtol into [min, max]; false if s is not such a number. */
bool ctl_parse_long(const char *s, long min, long max, long *out);
/* flag, else $env, else the first line of the file $env_FILE names
 * (malloc'd, or NULL if none; *bad set if that file cannot be read). */
char *ctl_setting(const char *flag, const char *env, bool *bad);
/* One request to c->url + path (already escaped); body NULL for none.
 * On an answer: *status, *out (malloc'd body), EX_OK. Unreachable: prints
 * why, with the URL, and returns EX_UNREACHABLE. */
int ctl_http(const ctl *c, const char *method, const char *path,
             const char *body, long *status, char **out);
/* Prints an API error answer: "skaldctl: <code>: <message>" and each
 * detail ("  <JSON Pointer>: <message>"). */
void ctl_print_error(long status, const char *body);
/* A request that must answer 2xx JSON: *out (cJSON_Delete), *status and
 * *raw (malloc'd body) if not NULL. Errors are printed; returns EX_*. */
int ctl_api(const ctl *c, const char *method, const char *path,
            const char *body, cJSON **out, long *status, char **raw);
/* s escaped for a path segment or query value (curl_free). */
char *ctl_esc(const char *s);
/* Field k of o: a string ("" if absent) or a number (dflt if absent). */
const char *ctl_jstr(const cJSON *o, const char *k);
double ctl_jnum(const cJSON *o, const char *k, double dflt);
/* "YYYY-MM-DD HH:MM:SS.mmm" from RFC 3339 text or epoch milliseconds. */
void ctl_fmt_ts(const char *s, char out[32]);
void ctl_fmt_ms(double ms, char out[32]);
/* Compact JSON text cut to max bytes ("" for null); malloc'd. */
char *ctl_short_json(const cJSON *v, size_t max);
/* "Type: message" of an error object (malloc'd), NULL if none. */
char *ctl_error_text(const cJSON *e);
/* Adds a row of t->ncols strings (copied). */
void ctl_table_add(table *t, ...);
/* Prints the table, columns aligned, then frees it; or just frees it. */
void ctl_table_print(table *t);
void ctl_table_free(table *t);
/* A JSON option value, inline or @file; NULL after a usage error (*rc). */
cJSON *ctl_json_arg(const char *flag, const char *v, bool object, int *rc);
/* A whole file, "-" for stdin (malloc'd); NULL with errno. */
char *ctl_read_all(const char *path);

/* ---- skaldctl_db.c ---- */

/* keys create NAME | revoke ID | list, and verify [--saga ID]. */
int ctl_cmd_keys(ctl *c);
int ctl_cmd_verify(ctl *c);

#endif /* SKALD_TOOLS_SKALDCTL_H */
