/*
 * daemon.c — the real daemon as a child process, and HTTP clients for it
 * (see daemon.h).
 *
 * Thread: see daemon.h.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "daemon.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init_once(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  signal(SIGPIPE, SIG_IGN);
}

void skd_global_init(void) { pthread_once(&once, init_once); }

int64_t skd_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void skd_sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

int skd_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0, "bind: %s",
               strerror(errno));
  socklen_t l = sizeof(a);
  getsockname(fd, (struct sockaddr *)&a, &l);
  close(fd);
  return ntohs(a.sin_port);
}

void skd_dump_log(const skd_daemon *d) {
  FILE *f = fopen(d->log_path, "r");
  if (f == NULL)
    return;
  /* Only the last 40 lines. */
  char *lines[40] = {0};
  size_t n = 0;
  char line[2048];
  while (fgets(line, sizeof(line), f) != NULL) {
    free(lines[n % 40]);
    lines[n % 40] = strdup(line);
    n++;
  }
  fclose(f);
  size_t first = n > 40 ? n - 40 : 0;
  for (size_t i = first; i < n; i++) {
    cr_log_error("skald: %s", lines[i % 40] ? lines[i % 40] : "");
  }
  for (size_t i = 0; i < 40; i++)
    free(lines[i]);
}

bool skd_log_clean(const skd_daemon *d, char *why, size_t len) {
  FILE *f = fopen(d->log_path, "r");
  if (f == NULL)
    return true;
  char line[2048];
  bool clean = true;
  while (clean && fgets(line, sizeof(line), f) != NULL) {
    if (strstr(line, "runtime error:") != NULL ||
        strstr(line, "AddressSanitizer") != NULL ||
        strstr(line, "LeakSanitizer") != NULL ||
        strstr(line, "UndefinedBehaviorSanitizer") != NULL) {
      snprintf(why, len, "%s", line);
      clean = false;
    }
  }
  fclose(f);
  return clean;
}

static pid_t spawn(const skd_daemon *d) {
  char listen[64];
  snprintf(listen, sizeof(listen), "127.0.0.1:%d", d->port);
  pid_t pid = fork();
  cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
  if (pid == 0) {
    int fd = open(d->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    const char *argv[16];
    int i = 0;
    argv[i++] = "skald";
    argv[i++] = "--database-url";
    argv[i++] = d->db;
    argv[i++] = "--listen";
    argv[i++] = listen;
    argv[i++] = "--node-name";
    argv[i++] = d->node;
    if (d->lease_ttl_ms[0] != '\0') {
      argv[i++] = "--lease-ttl-ms";
      argv[i++] = d->lease_ttl_ms;
    }
    argv[i] = NULL;
    execv(SKALD_BINARY_DIR "/skald", (char *const *)argv);
    _exit(127);
  }
  return pid;
}

static void wait_healthy(skd_daemon *d) {
  int64_t end = skd_now_ms() + 30000;
  while (skd_now_ms() < end) {
    int st;
    if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
      d->pid = 0;
      skd_dump_log(d);
      cr_assert_fail("skald exited during start (status %d); log %s", st,
                     d->log_path);
    }
    skd_resp r;
    if (skd_http(d, "GET", "/health", NULL, NULL, 1000, &r) == 0 &&
        r.status == 200) {
      skd_resp_free(&r);
      return;
    }
    skd_resp_free(&r);
    skd_sleep_ms(50);
  }
  skd_dump_log(d);
  skd_kill(d);
  cr_assert_fail("skald did not answer /health within 30 s; log %s",
                 d->log_path);
}

void skd_start(skd_daemon *d, const char *db, int port,
               const char *lease_ttl_ms, const char *node) {
  static int counter;
  skd_global_init();
  memset(d, 0, sizeof(*d));
  snprintf(d->db, sizeof(d->db), "%s", db);
  d->port = port > 0 ? port : skd_free_port();
  snprintf(d->base, sizeof(d->base), "http://127.0.0.1:%d", d->port);
  snprintf(d->log_path, sizeof(d->log_path), "/tmp/skald-e2e-%ld-%d.log",
           (long)getpid(), counter++);
  unlink(d->log_path);
  snprintf(d->lease_ttl_ms, sizeof(d->lease_ttl_ms), "%s",
           lease_ttl_ms != NULL ? lease_ttl_ms : "");
  snprintf(d->node, sizeof(d->node), "%s", node != NULL ? node : "e2e");
  d->pid = spawn(d);
  wait_healthy(d);
}

void skd_restart(skd_daemon *d) {
  cr_assert_eq(d->pid, 0, "skd_restart: the daemon is still running");
  d->pid = spawn(d);
  wait_healthy(d);
}

int skd_stop(skd_daemon *d) {
  if (d->pid <= 0)
    return 0;
  kill(d->pid, SIGTERM);
  int64_t end = skd_now_ms() + 15000;
  int st = 0;
  while (skd_now_ms() < end) {
    if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
      d->pid = 0;
      return st;
    }
    skd_sleep_ms(20);
  }
  skd_kill(d);
  return -1;
}

void skd_kill(skd_daemon *d) {
  if (d->pid <= 0)
    return;
  kill(d->pid, SIGKILL);
  int st;
  waitpid(d->pid, &st, 0);
  d->pid = 0;
}

/* ---- HTTP with libcurl ---- */

typedef struct growbuf {
  char *data;
  size_t len, cap;
} growbuf;

static size_t gb_write(char *p, size_t size, size_t n, void *ud) {
  growbuf *b = ud;
  size_t add = size * n;
  if (b->len + add + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + add + 1)
      cap *= 2;
    char *nd = realloc(b->data, cap);
    if (nd == NULL)
      return 0;
    b->data = nd;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, add);
  b->len += add;
  b->data[b->len] = '\0';
  return add;
}

int skd_http(const skd_daemon *d, const char *method, const char *path,
             const char *body, const char *const *extra_headers,
             long timeout_ms, skd_resp *r) {
  skd_global_init();
  memset(r, 0, sizeof(*r));
  CURL *h = curl_easy_init();
  if (h == NULL) {
    r->body = strdup("");
    return -1;
  }
  char url[16384];
  snprintf(url, sizeof(url), "%s%s", d->base, path);
  growbuf b = {0}, hd = {0};
  struct curl_slist *hl = NULL;
  if (body != NULL)
    hl = curl_slist_append(hl, "Content-Type: application/json");
  hl = curl_slist_append(hl, "Expect:");
  for (size_t i = 0; extra_headers != NULL && extra_headers[i] != NULL; i++)
    hl = curl_slist_append(hl, extra_headers[i]);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  if (strcmp(method, "HEAD") == 0)
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  if (body != NULL) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
  }
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, gb_write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, gb_write);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &hd);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms > 0 ? timeout_ms : 30000L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
  int64_t t0 = skd_now_ms();
  CURLcode cc = curl_easy_perform(h);
  r->secs = (double)(skd_now_ms() - t0) / 1000.0;
  if (cc == CURLE_OK)
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
  curl_slist_free_all(hl);
  curl_easy_cleanup(h);
  r->body = b.data != NULL ? b.data : strdup("");
  r->len = b.len;
  r->headers = hd.data != NULL ? hd.data : strdup("");
  r->json = r->len > 0 ? cJSON_Parse(r->body) : NULL;
  return cc == CURLE_OK ? 0 : -1;
}

int skd_get(const skd_daemon *d, const char *path, skd_resp *r) {
  return skd_http(d, "GET", path, NULL, NULL, 0, r);
}

int skd_post(const skd_daemon *d, const char *path, const char *body,
             skd_resp *r) {
  return skd_http(d, "POST", path, body, NULL, 0, r);
}

void skd_resp_free(skd_resp *r) {
  free(r->body);
  free(r->headers);
  cJSON_Delete(r->json);
  memset(r, 0, sizeof(*r));
}

bool skd_header(const skd_resp *r, const char *name, char *out, size_t len) {
  size_t nl = strlen(name);
  for (const char *p = r->headers; p != NULL && *p != '\0';) {
    const char *eol = strstr(p, "\r\n");
    size_t ll = eol != NULL ? (size_t)(eol - p) : strlen(p);
    if (ll > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
      const char *v = p + nl + 1;
      while (*v == ' ' || *v == '\t')
        v++;
      size_t vl = (size_t)(p + ll - v);
      while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
        vl--;
      snprintf(out, len, "%.*s", (int)vl, v);
      return true;
    }
    if (eol == NULL)
      break;
    p = eol + 2;
  }
  return false;
}

const char *skd_error_code(const skd_resp *r) {
  const cJSON *e = cJSON_GetObjectItemCaseSensitive(r->json, "error");
  const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "code");
  return cJSON_IsString(c) ? c->valuestring : "";
}

/* ---- raw sockets ---- */

/* True once b holds one whole response (head + Content-Length body). */
static bool response_complete(const growbuf *b) {
  if (b->data == NULL)
    return false;
  const char *eoh = strstr(b->data, "\r\n\r\n");
  if (eoh == NULL)
    return false;
  size_t head = (size_t)(eoh - b->data) + 4;
  size_t clen = 0;
  for (const char *p = b->data; p < eoh;) {
    const char *eol = strstr(p, "\r\n");
    if (eol == NULL)
      break;
    if (strncasecmp(p, "Content-Length:", 15) == 0)
      clen = (size_t)strtoul(p + 15, NULL, 10);
    p = eol + 2;
  }
  return b->len >= head + clen;
}

int skd_raw(int port, const void *data, size_t len, int timeout_ms,
            char **reply) {
  skd_global_init();
  if (reply != NULL)
    *reply = NULL;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  /* Send; the server may close early (e.g. after a 413), so errors while
   * sending are not fatal: what it answered is still read. */
  const char *p = data;
  size_t off = 0;
  int64_t end = skd_now_ms() + timeout_ms;
  growbuf b = {0};
  bool closed = false;
  while (off < len && skd_now_ms() < end) {
    struct pollfd pf = {.fd = fd, .events = POLLOUT | POLLIN};
    if (poll(&pf, 1, 100) <= 0)
      continue;
    if (pf.revents & POLLIN) {
      char tmp[4096];
      ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
      if (n <= 0) {
        closed = true;
        break;
      }
      gb_write(tmp, 1, (size_t)n, &b);
    }
    if (pf.revents & (POLLERR | POLLHUP)) {
      closed = true;
      break;
    }
    if (pf.revents & POLLOUT) {
      ssize_t n = send(fd, p + off, len - off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
          continue;
        break;
      }
      off += (size_t)n;
    }
  }
  bool timed_out = true;
  while (!closed && skd_now_ms() < end) {
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int left = (int)(end - skd_now_ms());
    if (poll(&pf, 1, left > 0 ? left : 0) <= 0)
      continue;
    char tmp[4096];
    ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
    if (n <= 0) {
      closed = true;
      break;
    }
    gb_write(tmp, 1, (size_t)n, &b);
    if (response_complete(&b)) {
      closed = true;
      break;
    }
  }
  if (closed)
    timed_out = false;
  close(fd);
  int status = 0;
  if (b.data != NULL && strncmp(b.data, "HTTP/1.", 7) == 0 && b.len >= 12)
    status = atoi(b.data + 9);
  if (reply != NULL)
    *reply = b.data != NULL ? b.data : strdup("");
  else
    free(b.data);
  if (status == 0 && timed_out)
    return -1;
  return status;
}
