/*
 * test_pool.c — exec/pool.c, the bulkhead worker pools: jobs run exactly
 * once, FIFO order within a pool, load accounting (queued + running),
 * pool_take_queued, pool_stop joining its threads, and isolation: a pool
 * whose threads are all blocked never delays another pool.
 *
 * Jobs block on a gate the test opens, so states are reached on purpose,
 * not by timing; waits poll a condition variable against a deadline.
 */
#include "exec/pool.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include <skald/skald.h>

#define MAX_JOBS 256
#define WAIT_MS 5000

typedef struct ctx {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool gate_open; /* jobs with .gated wait for this */
  int started;    /* jobs that began */
  int finished;   /* jobs that returned */
  int running;    /* begun, not yet returned */
  int max_running;
  int order[MAX_JOBS]; /* job indexes in the order they began */
  int runs[MAX_JOBS];  /* times each job ran */
  pthread_t thread_of[MAX_JOBS];
} ctx;

typedef struct tjob {
  pool_link link; /* first: the pool sees only this */
  int idx;
  bool gated;
  int sleep_ms;
} tjob;

static void ctx_init(ctx *c) {
  memset(c, 0, sizeof(*c));
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
}

static void ctx_destroy(ctx *c) {
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void run_job(pool_link *link, void *ud) {
  tjob *j = (tjob *)link;
  ctx *c = ud;
  pthread_mutex_lock(&c->mu);
  c->order[c->started++] = j->idx;
  c->runs[j->idx]++;
  c->thread_of[j->idx] = pthread_self();
  if (++c->running > c->max_running)
    c->max_running = c->running;
  pthread_cond_broadcast(&c->cv);
  while (j->gated && !c->gate_open)
    pthread_cond_wait(&c->cv, &c->mu);
  pthread_mutex_unlock(&c->mu);
  if (j->sleep_ms > 0)
    sleep_ms(j->sleep_ms);
  pthread_mutex_lock(&c->mu);
  c->running--;
  c->finished++;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

static void deadline_in(struct timespec *ts, int ms) {
  clock_gettime(CLOCK_REALTIME, ts);
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

/* Waits until *field >= want (under c->mu); false on timeout. */
static bool wait_at_least(ctx *c, const int *field, int want, int ms) {
  struct timespec ts;
  deadline_in(&ts, ms);
  pthread_mutex_lock(&c->mu);
  int rc = 0;
  while (*field < want && rc == 0)
    rc = pthread_cond_timedwait(&c->cv, &c->mu, &ts);
  bool ok = *field >= want;
  pthread_mutex_unlock(&c->mu);
  return ok;
}

static void open_gate(ctx *c) {
  pthread_mutex_lock(&c->mu);
  c->gate_open = true;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

static int read_int(ctx *c, const int *field) {
  pthread_mutex_lock(&c->mu);
  int v = *field;
  pthread_mutex_unlock(&c->mu);
  return v;
}

/* load is decremented just after run() returns, so poll for it. */
static bool wait_load(pool *p, size_t want, int ms) {
  for (int waited = 0; waited <= ms; waited += 2) {
    if (pool_load(p) == want)
      return true;
    sleep_ms(2);
  }
  return pool_load(p) == want;
}

static void noop(pool_link *l, void *ud) {
  (void)l;
  (void)ud;
}

/* ---- construction ------------------------------------------------------- */

Test(pool, new_rejects_bad_arguments) {
  pool *p = (pool *)0x1;
  static const struct {
    const char *name;
    int threads;
    bool run;
    bool out;
  } bad[] = {
      {NULL, 1, true, true},   {"x", 0, true, true},  {"x", -1, true, true},
      {"x", 4097, true, true}, {"x", 1, false, true}, {"x", 1, true, false},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    int rc = pool_new(bad[i].name, bad[i].threads, bad[i].run ? noop : NULL,
                      NULL, bad[i].out ? &p : NULL);
    cr_assert_eq(rc, SK_EINVAL, "case %zu: rc %d", i, rc);
  }
  pool_free(NULL); /* allowed */
}

Test(pool, name_threads_and_idle_load) {
  ctx c;
  ctx_init(&c);
  pool *p = NULL;
  cr_assert_eq(pool_new("flights", 3, run_job, &c, &p), SK_OK);
  cr_assert_str_eq(pool_name(p), "flights");
  cr_assert_eq(pool_threads(p), 3);
  cr_assert_eq(pool_load(p), 0);
  cr_assert_null(pool_take_queued(p));
  pool_free(p);
  ctx_destroy(&c);
}

/* ---- running ------------------------------------------------------------ */

Test(pool, every_job_runs_exactly_once) {
  ctx c;
  ctx_init(&c);
  pool *p = NULL;
  cr_assert_eq(pool_new("default", 4, run_job, &c, &p), SK_OK);
  static tjob jobs[200];
  for (int i = 0; i < 200; i++) {
    jobs[i] = (tjob){.idx = i};
    cr_assert_eq(pool_submit(p, &jobs[i].link), SK_OK);
  }
  cr_assert(wait_at_least(&c, &c.finished, 200, WAIT_MS), "finished %d",
            read_int(&c, &c.finished));
  cr_assert(wait_load(p, 0, WAIT_MS), "load %zu", pool_load(p));
  for (int i = 0; i < 200; i++)
    cr_assert_eq(c.runs[i], 1, "job %d ran %d times", i, c.runs[i]);
  cr_assert_leq(c.max_running, 4, "more jobs ran at once than threads");
  pool_free(p);
  ctx_destroy(&c);
}

Test(pool, one_thread_runs_jobs_in_submission_order) {
  ctx c;
  ctx_init(&c);
  pool *p = NULL;
  cr_assert_eq(pool_new("fifo", 1, run_job, &c, &p), SK_OK);
  static tjob jobs[64];
  /* The first job holds the thread until every job is queued, so order is
   * decided by the queue alone. */
  jobs[0] = (tjob){.idx = 0, .gated = true};
  cr_assert_eq(pool_submit(p, &jobs[0].link), SK_OK);
  for (int i = 1; i < 64; i++) {
    jobs[i] = (tjob){.idx = i};
    cr_assert_eq(pool_submit(p, &jobs[i].link), SK_OK);
  }
  cr_assert_eq(pool_load(p), 64);
  open_gate(&c);
  cr_assert(wait_at_least(&c, &c.finished, 64, WAIT_MS));
  for (int i = 0; i < 64; i++)
    cr_assert_eq(c.order[i], i, "position %d ran job %d", i, c.order[i]);
  pool_free(p);
  ctx_destroy(&c);
}

Test(pool, several_threads_start_jobs_in_fifo_order) {
  ctx c;
  ctx_init(&c);
  pool *p = NULL;
  cr_assert_eq(pool_new("fifo3", 3, run_job, &c, &p), SK_OK);
  static tjob jobs[30];
  for (int i = 0; i < 30; i++) {
    jobs[i] = (tjob){.idx = i, .gated = true};
    cr_assert_eq(pool_submit(p, &jobs[i].link), SK_OK);
  }
  /* Three start (the oldest three); the rest wait, in order. */
  cr_assert(wait_at_least(&c, &c.started, 3, WAIT_MS));
  sleep_ms(20);
  cr_assert_eq(read_int(&c, &c.started), 3, "only as many as threads start");
  bool first3[3] = {false, false, false};
  for (int i = 0; i < 3; i++) {
    cr_assert_lt(c.order[i], 3, "job %d started before older ones", c.order[i]);
    first3[c.order[i]] = true;
  }
  cr_assert(first3[0] && first3[1] && first3[2]);
  open_gate(&c);
  cr_assert(wait_at_least(&c, &c.finished, 30, WAIT_MS));
  pool_free(p);
  ctx_destroy(&c);
}

/* ---- load accounting ------------------------------------------------------
 */

Test(pool, load_counts_queued_and_running_jobs) {
  ctx c;
  ctx_init(&c);
  pool *p = NULL;
  cr_assert_eq(pool_new("load", 2, run_job, &c, &p), SK_OK);
  static tjob jobs[5];
  for (int i = 0; i < 5; i++) {
    jobs[i] = (tjob){.idx = i, .gated = true};
    cr_assert_eq(pool_submit(p, &jobs[i].link), SK_OK);
    cr_assert_eq(pool_load(p), (size_t)i + 1);
  }
  cr_assert(wait_at_least(&c, &c.started, 2, WAIT_MS));
  cr_assert_eq(pool_load(p), 5, "2 running + 3 queued");
  open_gate(&c);
  cr_assert(wait_at_least(&c, &c.finished, 5, WAIT_MS));
  cr_assert(wait_load(p, 0, WAIT_MS), "load %zu after all ran", pool_load(p));
  pool_free(p);
  ctx_destroy(&c);
}

Test(pool, take_queued_returns_unstarted_jobs_in_order) {
  ctx c;
  ctx_init(&c);
  pool *p = NULL;
  cr_assert_eq(pool_new("take", 1, run_job, &c, &p), SK_OK);
  static tjob jobs[5];
  for (int i = 0; i < 5; i++) {
    jobs[i] = (tjob){.idx = i, .gated = i == 0};
    cr_assert_eq(pool_submit(p, &jobs[i].link), SK_OK);
  }
  cr_assert(wait_at_least(&c, &c.started, 1, WAIT_MS));
  pool_link *l = pool_take_queued(p);
  cr_assert_eq(pool_load(p), 1, "only the running job is left");
  int n = 0;
  for (pool_link *x = l; x != NULL; x = x->next, n++)
    cr_assert_eq(((tjob *)x)->idx, n + 1, "taken list out of order");
  cr_assert_eq(n, 4);
  cr_assert_null(pool_take_queued(p), "a second take finds nothing");
  open_gate(&c);
  pool_stop(p);
  cr_assert_eq(c.finished, 1);
  cr_assert_eq(c.runs[0], 1);
  for (int i = 1; i < 5; i++)
    cr_assert_eq(c.runs[i], 0, "taken job %d ran", i);
  cr_assert_eq(pool_load(p), 0);
  pool_free(p);
  ctx_destroy(&c);
}

/* ---- stopping ---------------------------------------------------------------
 */

Test(pool, stop_runs_queued_jobs_and_joins) {
  ctx c;
  ctx_init(&c);
  pool *p = NULL;
  cr_assert_eq(pool_new("stop", 2, run_job, &c, &p), SK_OK);
  static tjob jobs[6];
  for (int i = 0; i < 6; i++) {
    jobs[i] = (tjob){.idx = i, .sleep_ms = 20};
    cr_assert_eq(pool_submit(p, &jobs[i].link), SK_OK);
  }
  pool_stop(p);
  /* Joined: every queued job ran and returned before pool_stop did. */
  cr_assert_eq(c.finished, 6, "pool_stop returned with %d of 6 finished",
               c.finished);
  cr_assert_eq(c.running, 0);
  cr_assert_eq(pool_load(p), 0);
  tjob late = {.idx = 100};
  cr_assert_eq(pool_submit(p, &late.link), SK_ESHUTDOWN);
  cr_assert_eq(pool_load(p), 0, "a refused job is not counted");
  pool_stop(p); /* idempotent */
  pool_free(p);
  cr_assert_eq(c.runs[100], 0);
  ctx_destroy(&c);
}

Test(pool, stop_waits_for_a_running_job) {
  ctx c;
  ctx_init(&c);
  pool *p = NULL;
  cr_assert_eq(pool_new("stopwait", 1, run_job, &c, &p), SK_OK);
  tjob j = {.idx = 0, .sleep_ms = 150};
  cr_assert_eq(pool_submit(p, &j.link), SK_OK);
  cr_assert(wait_at_least(&c, &c.started, 1, WAIT_MS));
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  pool_stop(p);
  clock_gettime(CLOCK_MONOTONIC, &b);
  cr_assert_eq(c.finished, 1);
  long ms = (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
  cr_assert_geq(ms, 100, "pool_stop returned after %ld ms", ms);
  pool_free(p);
  ctx_destroy(&c);
}

/* ---- isolation
 * --------------------------------------------------------------- */

Test(pool, a_blocked_pool_does_not_delay_another) {
  ctx slow, fast;
  ctx_init(&slow);
  ctx_init(&fast);
  pool *ps = NULL, *pf = NULL;
  cr_assert_eq(pool_new("stuck", 2, run_job, &slow, &ps), SK_OK);
  cr_assert_eq(pool_new("healthy", 1, run_job, &fast, &pf), SK_OK);
  static tjob sj[10], fj[20];
  for (int i = 0; i < 10; i++) {
    sj[i] = (tjob){.idx = i, .gated = true};
    cr_assert_eq(pool_submit(ps, &sj[i].link), SK_OK);
  }
  cr_assert(wait_at_least(&slow, &slow.started, 2, WAIT_MS));
  for (int i = 0; i < 20; i++) {
    fj[i] = (tjob){.idx = i};
    cr_assert_eq(pool_submit(pf, &fj[i].link), SK_OK);
  }
  /* All 20 finish while every thread of "stuck" is still blocked. */
  cr_assert(wait_at_least(&fast, &fast.finished, 20, 2000),
            "healthy pool finished %d of 20 behind a stuck pool",
            read_int(&fast, &fast.finished));
  cr_assert_eq(read_int(&slow, &slow.finished), 0);
  cr_assert_eq(pool_load(ps), 10);
  /* And they ran on the healthy pool's own thread, never a stuck one. */
  for (int i = 0; i < 20; i++)
    for (int k = 0; k < 2; k++)
      cr_assert_not(pthread_equal(fast.thread_of[i], slow.thread_of[k]));
  open_gate(&slow);
  cr_assert(wait_at_least(&slow, &slow.finished, 10, WAIT_MS));
  pool_free(ps);
  pool_free(pf);
  ctx_destroy(&slow);
  ctx_destroy(&fast);
}
