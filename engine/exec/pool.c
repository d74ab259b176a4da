/*
 * pool.c — bulkhead worker threads (see pool.h).
 *
 * Invariants: `load` counts queued plus running jobs and changes only under
 * the mutex; a job is run by exactly one thread; after pool_stop returns no
 * thread touches the pool.
 *
 * Thread: see pool.h.
 */
#include "exec/pool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <skald/skald.h>

struct pool {
  char name[SK_NAME_MAX + 1];
  pool_run_fn run;
  void *ud;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pool_link *head, *tail;
  size_t load;
  bool stopping;
  bool stopped;
  int n_threads;
  pthread_t *threads;
};

static void *worker_main(void *arg) {
  pool *p = arg;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (p->head == NULL && !p->stopping)
      pthread_cond_wait(&p->cv, &p->mu);
    if (p->head == NULL) /* stopping and nothing left */
      break;
    pool_link *job = p->head;
    p->head = job->next;
    if (p->head == NULL)
      p->tail = NULL;
    job->next = NULL;
    pthread_mutex_unlock(&p->mu);
    p->run(job, p->ud);
    pthread_mutex_lock(&p->mu);
    p->load--;
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

int pool_new(const char *name, int threads, pool_run_fn run, void *ud,
             pool **out) {
  if (name == NULL || run == NULL || threads < 1 || threads > 4096 ||
      out == NULL)
    return SK_EINVAL;
  pool *p = calloc(1, sizeof(*p));
  if (p == NULL)
    return SK_ENOMEM;
  snprintf(p->name, sizeof(p->name), "%s", name);
  p->run = run;
  p->ud = ud;
  p->threads = calloc((size_t)threads, sizeof(pthread_t));
  if (p->threads == NULL) {
    free(p);
    return SK_ENOMEM;
  }
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  for (int i = 0; i < threads; i++) {
    if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0) {
      pool_free(p);
      return SK_EIO;
    }
    p->n_threads++;
  }
  *out = p;
  return SK_OK;
}

int pool_submit(pool *p, pool_link *job) {
  job->next = NULL;
  pthread_mutex_lock(&p->mu);
  if (p->stopping) {
    pthread_mutex_unlock(&p->mu);
    return SK_ESHUTDOWN;
  }
  if (p->tail != NULL)
    p->tail->next = job;
  else
    p->head = job;
  p->tail = job;
  p->load++;
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
  return SK_OK;
}

size_t pool_load(pool *p) {
  pthread_mutex_lock(&p->mu);
  size_t n = p->load;
  pthread_mutex_unlock(&p->mu);
  return n;
}

int pool_threads(const pool *p) { return p->n_threads; }

const char *pool_name(const pool *p) { return p->name; }

pool_link *pool_take_queued(pool *p) {
  pthread_mutex_lock(&p->mu);
  pool_link *list = p->head;
  for (pool_link *j = list; j != NULL; j = j->next)
    p->load--;
  p->head = p->tail = NULL;
  pthread_mutex_unlock(&p->mu);
  return list;
}

void pool_stop(pool *p) {
  pthread_mutex_lock(&p->mu);
  if (p->stopped) {
    pthread_mutex_unlock(&p->mu);
    return;
  }
  p->stopping = true;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->n_threads; i++)
    pthread_join(p->threads[i], NULL);
  pthread_mutex_lock(&p->mu);
  p->stopped = true;
  pthread_mutex_unlock(&p->mu);
}

void pool_free(pool *p) {
  if (p == NULL)
    return;
  pool_stop(p);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  free(p->threads);
  free(p);
}
