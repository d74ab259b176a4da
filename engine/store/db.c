/*
 * db.c — libpq helpers for the store (see db.h): connecting, turning libpq
 * failures into sk_error, the one place that decides which database errors
 * are transient, and text-format array literals for $n::type[] parameters.
 *
 * Invariants:
 *   - No message built here ever contains the conninfo or the password: a
 *     conninfo libpq cannot parse is reported without libpq's text (which
 *     quotes fragments of it), and the password, when there is one, is
 *     masked in whatever libpq says about a failed connection.
 *   - A pgarr holds "{e1,e2,..." and at most one closing brace at the end;
 *     no element can end with '}' (strings are always quoted), so a trailing
 *     '}' is always the one pgarr_get() added.
 *
 * Thread: the caller's; a PGconn is never used by two threads at once.
 */
#include "store/db.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"

/* --- error reporting ----------------------------------------------------- */

/* Copies s into dst (capacity n) on one line: libpq's "\n\tHINT"-style
 * line breaks become single spaces and trailing whitespace is dropped. */
static void copy_trimmed(char *dst, size_t n, const char *s) {
  size_t o = 0;
  bool space = false;
  for (const char *p = s != NULL ? s : ""; *p != '\0' && o + 1 < n; p++) {
    if (*p == '\n' || *p == '\r' || *p == '\t') {
      space = true;
      continue;
    }
    if (space && o > 0 && dst[o - 1] != ' ')
      dst[o++] = ' ';
    space = false;
    if (o + 1 < n)
      dst[o++] = *p;
  }
  while (o > 0 && dst[o - 1] == ' ')
    o--;
  dst[o] = '\0';
}

/* Replaces every occurrence of secret in msg (capacity n) by "********". */
static void mask_secret(char *msg, size_t n, const char *secret) {
  if (secret == NULL || secret[0] == '\0' || strstr(msg, secret) == NULL)
    return;
  char out[SK_ERROR_MESSAGE_MAX];
  size_t slen = strlen(secret), o = 0;
  for (const char *p = msg; *p != '\0' && o + 1 < sizeof(out);) {
    if (strncmp(p, secret, slen) == 0) {
      o += (size_t)snprintf(out + o, sizeof(out) - o, "********");
      if (o >= sizeof(out))
        o = sizeof(out) - 1;
      p += slen;
    } else {
      out[o++] = *p++;
    }
  }
  out[o] = '\0';
  snprintf(msg, n, "%s", out);
}

int db_fail(PGconn *conn, const PGresult *res, const char *what,
            sk_error *err) {
  char detail[SK_ERROR_MESSAGE_MAX];
  const char *state = NULL;
  const char *primary = NULL;

  if (res != NULL) {
    state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (primary == NULL)
      primary = PQresultErrorMessage(res);
  }
  if ((primary == NULL || primary[0] == '\0') && conn != NULL)
    primary = PQerrorMessage(conn);
  if (primary == NULL || primary[0] == '\0')
    primary = "unknown error";
  copy_trimmed(detail, sizeof(detail), primary);

  sk_error_set(err, SK_EDB, "%s: %s", what != NULL ? what : "database error",
               detail);
  if (err != NULL) {
    /* A lost connection has no SQLSTATE from the server; report it as
     * connection_failure so callers holding only err can still tell. */
    if ((state == NULL || state[0] == '\0') && conn != NULL &&
        PQstatus(conn) != CONNECTION_OK)
      state = "08006";
    snprintf(err->sqlstate, sizeof(err->sqlstate), "%s",
             state != NULL ? state : "");
  }
  return SK_EDB;
}

/* --- transient classification -------------------------------------------- */

bool db_sqlstate_transient(const char *sqlstate) {
  if (sqlstate == NULL || strlen(sqlstate) != 5)
    return false;
  static const char *const exact[] = {
      "40001", /* serialization_failure */
      "40P01", /* deadlock_detected */
      "57P01", /* admin_shutdown */
      "57P02", /* crash_shutdown */
      "57P03", /* cannot_connect_now */
      "53300", /* too_many_connections */
  };
  for (size_t i = 0; i < sizeof(exact) / sizeof(exact[0]); i++)
    if (strcmp(sqlstate, exact[i]) == 0)
      return true;
  return strncmp(sqlstate, "08", 2) == 0; /* connection_exception class */
}

bool db_is_transient(PGconn *conn, const PGresult *res) {
  if (conn != NULL && PQstatus(conn) != CONNECTION_OK)
    return true;
  if (res == NULL)
    return false;
  return db_sqlstate_transient(PQresultErrorField(res, PG_DIAG_SQLSTATE));
}

/* --- connecting ---------------------------------------------------------- */

/* The password of a parsed conninfo, or NULL. Points into opts. */
static const char *conninfo_password(PQconninfoOption *opts) {
  for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++)
    if (strcmp(o->keyword, "password") == 0)
      return o->val;
  return NULL;
}

/* Server NOTICEs become debug log lines instead of raw text on stderr. */
static void notice_to_log(void *arg, const PGresult *res) {
  char msg[SK_ERROR_MESSAGE_MAX];
  copy_trimmed(msg, sizeof(msg),
               PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
  log_write(LOG_DEBUG, "database notice", "sqlstate",
            PQresultErrorField(res, PG_DIAG_SQLSTATE), "message", msg, NULL);
}

int db_connect(const char *conninfo, PGconn **out, sk_error *err) {
  *out = NULL;
  if (conninfo == NULL)
    return sk_error_set(err, SK_EDB,
                        "could not connect to database: no "
                        "connection string");
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
  if (opts == NULL) {
    /* libpq's parse message quotes pieces of the string: never show it. */
    PQfreemem(perr);
    return sk_error_set(err, SK_EDB,
                        "could not connect to database: "
                        "invalid connection string");
  }

  /* fallback_application_name: "skald" unless the conninfo names one. */
  const char *const keys[] = {"dbname", "fallback_application_name", NULL};
  const char *const vals[] = {conninfo, "skald", NULL};
  PGconn *conn = PQconnectdbParams(keys, vals, 1);
  if (conn == NULL) {
    PQconninfoFree(opts);
    return sk_error_set(err, SK_EDB,
                        "could not connect to database: out of "
                        "memory");
  }
  if (PQstatus(conn) != CONNECTION_OK) {
    char msg[SK_ERROR_MESSAGE_MAX];
    copy_trimmed(msg, sizeof(msg), PQerrorMessage(conn));
    mask_secret(msg, sizeof(msg), conninfo_password(opts));
    sk_error_set(err, SK_EDB, "could not connect to database: %s", msg);
    if (err != NULL)
      snprintf(err->sqlstate, sizeof(err->sqlstate), "08006");
    PQfinish(conn);
    PQconninfoFree(opts);
    return SK_EDB;
  }
  PQconninfoFree(opts);
  PQsetNoticeReceiver(conn, notice_to_log, NULL);
  *out = conn;
  return 0;
}

int db_exec(PGconn *conn, const char *sql, sk_error *err) {
  PGresult *res = PQexec(conn, sql);
  ExecStatusType st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
  int rc = 0;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK &&
      st != PGRES_EMPTY_QUERY)
    rc = db_fail(conn, res, "could not execute statement", err);
  PQclear(res);
  return rc;
}

/* --- array literals ------------------------------------------------------ */

void pgarr_init(pgarr *a) {
  buf_init(&a->b);
  a->n = 0;
  a->bin = false;
  a->has_null = false;
}

void pgarr_init_text_bin(pgarr *a) {
  pgarr_init(a);
  a->bin = true;
}

/* Binary array header: ndim, flags (has nulls), element type, then per
 * dimension its size and lower bound; all int32, network order. */
#define BIN_HEADER 20
#define TEXT_OID 25

static void put_be32(char *p, uint32_t v) {
  p[0] = (char)(v >> 24);
  p[1] = (char)(v >> 16);
  p[2] = (char)(v >> 8);
  p[3] = (char)v;
}

static void bin_add(pgarr *a, const char *s) {
  if (a->n == 0) {
    a->b.len = 0; /* drop an empty array's header from an earlier get */
    char zero[BIN_HEADER] = {0};
    buf_append(&a->b, zero, sizeof(zero)); /* filled in by pgarr_get */
  }
  char len[4];
  size_t n = s != NULL ? strlen(s) : 0;
  put_be32(len, s != NULL ? (uint32_t)n : 0xffffffffu); /* -1: NULL */
  buf_append(&a->b, len, 4);
  if (s != NULL)
    buf_append(&a->b, s, n);
  else
    a->has_null = true;
  a->n++;
}

void pgarr_free(pgarr *a) {
  buf_free(&a->b);
  a->n = 0;
}

void pgarr_reset(pgarr *a) {
  buf_reset(&a->b);
  a->b.oom = false; /* the memory kept is valid: a reset array may retry */
  a->n = 0;
  a->has_null = false;
}

/* Reopens the literal (drops a closing brace from pgarr_get) and adds the
 * separator for the next element. */
static void open_element(pgarr *a) {
  buf *b = &a->b;
  if (b->len > 0 && b->data != NULL && b->data[b->len - 1] == '}') {
    b->len--;
    b->data[b->len] = '\0';
  }
  if (b->len == 0)
    buf_putc(b, '{');
  else if (a->n > 0)
    buf_putc(b, ',');
  a->n++;
}

void pgarr_add_str(pgarr *a, const char *s) {
  if (a->bin) {
    bin_add(a, s);
    return;
  }
  open_element(a);
  if (s == NULL) {
    buf_puts(&a->b, "NULL");
    return;
  }
  /* Always quoted: keeps "", "NULL", spaces, commas and braces literal. */
  buf_putc(&a->b, '"');
  for (const char *p = s; *p != '\0'; p++) {
    size_t run = strcspn(p, "\"\\"); /* copied in one go */
    buf_append(&a->b, p, run);
    p += run;
    if (*p == '\0')
      break;
    buf_putc(&a->b, '\\');
    buf_putc(&a->b, *p);
  }
  buf_putc(&a->b, '"');
}

void pgarr_add_i64(pgarr *a, int64_t v) {
  open_element(a);
  buf_put_i64(&a->b, v);
}

void pgarr_add_bool(pgarr *a, bool v) {
  open_element(a);
  buf_putc(&a->b, v ? 't' : 'f');
}

const char *pgarr_get(pgarr *a) {
  buf *b = &a->b;
  if (a->bin) {
    if (a->n == 0) { /* the empty array: no dimensions */
      char h[12] = {0};
      put_be32(h + 8, TEXT_OID);
      b->len = 0;
      buf_append(b, h, sizeof(h));
      return buf_ok(b) ? b->data : NULL;
    }
    if (!buf_ok(b) || b->len < BIN_HEADER)
      return NULL;
    put_be32(b->data, 1);
    put_be32(b->data + 4, a->has_null ? 1 : 0);
    put_be32(b->data + 8, TEXT_OID);
    put_be32(b->data + 12, (uint32_t)a->n);
    put_be32(b->data + 16, 1);
    return b->data;
  }
  if (b->len == 0)
    buf_putc(b, '{');
  if (buf_ok(b) && b->data[b->len - 1] != '}')
    buf_putc(b, '}');
  return buf_ok(b) ? b->data : NULL;
}

int pgarr_len(const pgarr *a) { return (int)a->b.len; }
