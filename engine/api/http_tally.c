/*
 * http_tally.c — request limit counts and the split-independent judging
 * points (see http_tally.h).
 *
 * Invariant: a count only grows between resets, so once http_tally_over
 * says a request is past a limit it says so at every later point.
 *
 * Thread: any.
 */
#include "api/http_tally.h"

#include <limits.h>
#include <string.h>

void http_tally_reset(http_tally *t) { memset(t, 0, sizeof(*t)); }

/* Adds len to *count without wrapping; whether the sum is within max. */
static bool add_within(size_t *count, size_t len, size_t max) {
  *count = len > SIZE_MAX - *count ? SIZE_MAX : *count + len;
  return *count <= max;
}

bool http_tally_url(http_tally *t, const http_server_config *cfg,
                    size_t len) {
  return add_within(&t->url, len, cfg->max_url);
}

bool http_tally_header_bytes(http_tally *t, const http_server_config *cfg,
                             size_t len) {
  return add_within(&t->header_bytes, len, cfg->max_header_bytes);
}

bool http_tally_header_line(http_tally *t, const http_server_config *cfg) {
  if (t->headers < INT_MAX)
    t->headers++;
  return t->headers <= cfg->max_headers;
}

bool http_tally_body(http_tally *t, const http_server_config *cfg,
                     size_t len) {
  return add_within(&t->body, len, cfg->max_body);
}

bool http_tally_over(const http_tally *t, const http_server_config *cfg,
                     http_refusal *why) {
  if (t->url > cfg->max_url)
    *why = (http_refusal){414, "uri_too_long", "request URL is too long"};
  else if (t->header_bytes > cfg->max_header_bytes)
    *why = (http_refusal){431, "headers_too_large",
                          "request headers are too large"};
  else if (t->headers > cfg->max_headers)
    *why = (http_refusal){431, "headers_too_large",
                          "too many request headers"};
  else if (t->body > cfg->max_body)
    *why = (http_refusal){413, "payload_too_large",
                          "request body is too large"};
  else
    return false;
  return true;
}

size_t http_tally_piece(uint64_t off, size_t len) {
  uint64_t room = HTTP_TALLY_STRIDE - off % HTTP_TALLY_STRIDE;
  return room < len ? (size_t)room : len;
}

bool http_tally_checkpoint(uint64_t off) {
  return off % HTTP_TALLY_STRIDE == 0;
}
