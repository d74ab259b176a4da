/*
 * test_fuzz_regressions.c — replays every seed (tests/fuzz/corpus/<target>)
 * and every saved crash (tests/fuzz/regressions/<target>) through the fuzz
 * targets' own entry functions, compiled in here with FUZZ_NO_MAIN, so the
 * normal ASan/UBSan suite checks the same invariants as the fuzzers
 * without clang or libFuzzer. A broken invariant aborts; the file being
 * replayed is printed on the way out.
 *
 * Also checks that the copies fuzz_http.c keeps of the daemon's route
 * table and HTTP limits (the fuzz build links only the parsing code) still
 * match engine/api.
 */
#define FUZZ_NO_MAIN 1

#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../fuzz/fuzz_http.c"
#include "../fuzz/fuzz_spec.c"
#include "../fuzz/fuzz_template.c"

#include "api/api_call.h"
#include "testutil.h"

#define FUZZ_DIR SKALD_FIXTURES_DIR "/../fuzz"

typedef int (*fuzz_entry_fn)(const uint8_t *data, size_t size);

static char replaying[2048];

/* Says which input was being replayed when a target aborts (a broken
 * invariant, or an ASan/UBSan report with abort_on_error). */
static void on_abort(int sig) {
  static const char msg[] = "fuzz regression input: ";
  ssize_t ignored = write(2, msg, sizeof(msg) - 1);
  ignored = write(2, replaying, strlen(replaying));
  ignored = write(2, "\n", 1);
  (void)ignored;
  signal(sig, SIG_DFL);
  raise(sig);
}

static void setup(void) {
  signal(SIGABRT, on_abort);
  signal(SIGSEGV, on_abort);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Replays every regular file of FUZZ_DIR/<kind>/<target>, sorted; returns
 * how many. A missing folder holds nothing. */
static size_t replay_dir(const char *kind, const char *target,
                         fuzz_entry_fn fn) {
  char dir[1024];
  snprintf(dir, sizeof(dir), "%s/%s/%s", FUZZ_DIR, kind, target);
  DIR *d = opendir(dir);
  if (d == NULL)
    return 0;
  char **names = NULL;
  size_t n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.' || strcmp(e->d_name, "README.md") == 0)
      continue;
    names = realloc(names, (n + 1) * sizeof(*names));
    cr_assert_not_null(names);
    names[n++] = strdup(e->d_name);
  }
  closedir(d);
  if (n > 0)
    qsort(names, n, sizeof(*names), cmp_str);
  for (size_t i = 0; i < n; i++) {
    int w = snprintf(replaying, sizeof(replaying), "%s/%s", dir, names[i]);
    cr_assert(w > 0 && (size_t)w < sizeof(replaying), "path too long");
    size_t len = 0;
    char *data = testutil_read_file(replaying, &len);
    cr_assert_not_null(data, "cannot read %s", replaying);
    cr_assert_eq(fn((const uint8_t *)data, len), 0, "%s", replaying);
    free(data);
    free(names[i]);
  }
  free(names);
  replaying[0] = '\0';
  return n;
}

TestSuite(fuzz_regressions, .init = setup);

Test(fuzz_regressions, spec) {
  cr_assert_geq(replay_dir("corpus", "spec", fuzz_spec_one), 10);
  replay_dir("regressions", "spec", fuzz_spec_one);
}

Test(fuzz_regressions, template) {
  cr_assert_geq(replay_dir("corpus", "template", fuzz_template_one), 10);
  replay_dir("regressions", "template", fuzz_template_one);
}

Test(fuzz_regressions, http) {
  cr_assert_geq(replay_dir("corpus", "http", fuzz_http_one), 10);
  replay_dir("regressions", "http", fuzz_http_one);
}

/* Empty and tiny inputs, which corpora tend not to keep. */
Test(fuzz_regressions, edge_inputs) {
  static const char *const inputs[] = {"", "{", "\"${", "GET", "\r\n", "0"};
  for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
    const uint8_t *d = (const uint8_t *)inputs[i];
    size_t n = strlen(inputs[i]);
    fuzz_spec_one(d, n);
    fuzz_template_one(d, n);
    fuzz_http_one(d, n);
  }
  static const uint8_t nuls[] = {0, 0, 0};
  fuzz_template_one(nuls, sizeof(nuls));
  fuzz_http_one(nuls, sizeof(nuls));
  fuzz_spec_one(nuls, sizeof(nuls));
}

/* fuzz_http.c's route table is exactly the daemon's, in both directions. */
Test(fuzz_regressions, http_routes_match_the_daemon) {
  const api_route *tables[] = {api_routes_workflows, api_routes_sagas,
                               api_routes_tasks, api_routes_ops};
  size_t daemon = 0;
  for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++)
    for (const api_route *r = tables[i]; r->pattern != NULL; r++) {
      daemon++;
      bool found = false;
      for (const fuzz_route *f = fuzz_http_routes; f->pattern != NULL; f++)
        found = found ||
                (f->method == r->method && strcmp(f->pattern, r->pattern) == 0);
      cr_expect(found, "route %s %s is missing from tests/fuzz/fuzz_http.c",
                http_method_str((enum http_method)r->method), r->pattern);
    }
  size_t fuzz = 0;
  while (fuzz_http_routes[fuzz].pattern != NULL)
    fuzz++;
  cr_assert_eq(fuzz, daemon, "tests/fuzz/fuzz_http.c has %zu routes, the "
               "daemon %zu", fuzz, daemon);
}

Test(fuzz_regressions, http_limits_match_the_daemon) {
  http_server_config cfg;
  http_server_config_init(&cfg);
  cr_assert_eq(cfg.max_body, FUZZ_HTTP_MAX_BODY);
  cr_assert_eq(cfg.max_header_bytes, FUZZ_HTTP_MAX_HEADER_BYTES);
  cr_assert_eq(cfg.max_headers, FUZZ_HTTP_MAX_HEADERS);
  cr_assert_eq(cfg.max_url, FUZZ_HTTP_MAX_URL);
}
