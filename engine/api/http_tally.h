/*
 * http_tally.h — what one HTTP request has sent against the server's limits
 * (URL bytes, header bytes, header lines, body bytes), and when to judge it.
 *
 * http_parser hands data to its callbacks when an element ends and, for an
 * element still open, at the end of each read. A limit refused inside a
 * callback is therefore judged at points that depend on how TCP split the
 * bytes: a URL past max_url with a malformed byte after the limit got 414
 * when split inside the URL and 400 when read whole (found by fuzzing).
 *
 * So callbacks only count (http_tally_url and friends) and the request is
 * judged (http_tally_over) only where the counts are the same however the
 * bytes arrived:
 *   - when the head is complete (on_headers_complete),
 *   - when the message is complete (on_message_complete),
 *   - after every HTTP_TALLY_STRIDE bytes of the connection's stream: the
 *     connection hands the parser at most up to the next multiple of the
 *     stride (http_tally_piece), so every read split puts a parser return,
 *     and a flush of every open element, at those offsets.
 * A limit passed at byte N is refused by byte N + HTTP_TALLY_STRIDE, or at
 * the end of the head (or message), whichever is first; a syntax error before that
 * point is answered 400 whatever the split. Counting goes on past a limit,
 * but nothing more is kept (the callers ask, through the return value,
 * whether to store the bytes), so memory stays bounded.
 *
 * Thread: any; no state of its own.
 */
#ifndef SKALD_API_HTTP_TALLY_H
#define SKALD_API_HTTP_TALLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/http_server.h"

#define HTTP_TALLY_STRIDE 4096

typedef struct http_tally {
  size_t url, header_bytes, body;
  int headers; /* header lines counted so far */
} http_tally;

/* A refusal: the status, the error code and the message to answer with. */
typedef struct http_refusal {
  int status;
  const char *code;
  const char *message;
} http_refusal;

void http_tally_reset(http_tally *t);

/* Each counts len more bytes (or one more header line) and returns whether
 * to keep them: false once the request is past that limit. */
bool http_tally_url(http_tally *t, const http_server_config *cfg, size_t len);
bool http_tally_header_bytes(http_tally *t, const http_server_config *cfg,
                             size_t len);
bool http_tally_header_line(http_tally *t, const http_server_config *cfg);
bool http_tally_body(http_tally *t, const http_server_config *cfg, size_t len);

/* Whether the request is past a limit; if so, *why is the first of URL
 * (414), header bytes (431), header lines (431) and body (413). */
bool http_tally_over(const http_tally *t, const http_server_config *cfg,
                     http_refusal *why);

/* How many of the next len bytes, the first of them at stream offset off,
 * to hand the parser: no further than the next multiple of the stride. */
size_t http_tally_piece(uint64_t off, size_t len);

/* Whether stream offset off is a judging point. */
bool http_tally_checkpoint(uint64_t off);

#endif /* SKALD_API_HTTP_TALLY_H */
