/*
 * statecache.c — projections kept between group commits (see
 * statecache.h): a chained hash table of owned saga_state values.
 *
 * Invariant: every entry holds a running or compensating saga's state as
 * this node last committed it; n counts the entries.
 *
 * Thread: any; every call holds mu.
 */
#include "store/statecache.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
  struct entry *next;
  saga_state st; /* st.id is the key */
} entry;

struct state_cache {
  pthread_mutex_t mu;
  entry **buckets;
  size_t n_buckets; /* a power of two */
  size_t n, capacity;
  size_t evict_at; /* the bucket eviction looks at next */
};

static size_t hash_id(const char *id) {
  uint64_t h = 1469598103934665603ULL; /* FNV-1a */
  for (const char *p = id; *p != '\0'; p++)
    h = (h ^ (unsigned char)*p) * 1099511628211ULL;
  return (size_t)h;
}

state_cache *state_cache_new(size_t capacity) {
  state_cache *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return NULL;
  c->capacity = capacity > 0 ? capacity : 1;
  c->n_buckets = 64;
  while (c->n_buckets < c->capacity)
    c->n_buckets *= 2;
  c->buckets = calloc(c->n_buckets, sizeof(entry *));
  if (c->buckets == NULL) {
    free(c);
    return NULL;
  }
  pthread_mutex_init(&c->mu, NULL);
  return c;
}

void state_cache_free(state_cache *c) {
  if (c == NULL)
    return;
  for (size_t i = 0; i < c->n_buckets; i++)
    for (entry *e = c->buckets[i], *next; e != NULL; e = next) {
      next = e->next;
      saga_state_clear(&e->st);
      free(e);
    }
  free(c->buckets);
  pthread_mutex_destroy(&c->mu);
  free(c);
}

/* The link that points at id's entry (or at the NULL ending its chain). */
static entry **find(state_cache *c, const char *id) {
  entry **link = &c->buckets[hash_id(id) & (c->n_buckets - 1)];
  while (*link != NULL && strcmp((*link)->st.id, id) != 0)
    link = &(*link)->next;
  return link;
}

bool state_cache_take(state_cache *c, const char *id, saga_state *out) {
  if (c == NULL)
    return false;
  pthread_mutex_lock(&c->mu);
  entry **link = find(c, id);
  entry *e = *link;
  if (e != NULL) {
    *link = e->next;
    c->n--;
  }
  pthread_mutex_unlock(&c->mu);
  if (e == NULL)
    return false;
  *out = e->st;
  free(e);
  return true;
}

/* Frees the first entry at or after the eviction cursor. */
static void evict_one(state_cache *c) {
  for (size_t k = 0; k < c->n_buckets; k++) {
    size_t i = (c->evict_at + k) & (c->n_buckets - 1);
    entry *e = c->buckets[i];
    if (e == NULL)
      continue;
    c->buckets[i] = e->next;
    c->n--;
    c->evict_at = i + 1;
    saga_state_clear(&e->st);
    free(e);
    return;
  }
}

void state_cache_put(state_cache *c, saga_state *st) {
  bool keep = c != NULL && (st->status == SAGA_STATUS_RUNNING ||
                            st->status == SAGA_STATUS_COMPENSATING);
  entry *e = keep ? malloc(sizeof(*e)) : NULL;
  if (e == NULL) {
    saga_state_clear(st);
    saga_state_init(st);
    return;
  }
  e->st = *st;
  saga_state_init(st);
  pthread_mutex_lock(&c->mu);
  entry **link = find(c, e->st.id);
  entry *old = *link;
  if (old != NULL && old->st.last_seq > e->st.last_seq) {
    /* Two batches touched the saga (the second read it from the database
     * after the first committed) and the later one was put back first. */
    pthread_mutex_unlock(&c->mu);
    saga_state_clear(&e->st);
    free(e);
    return;
  }
  if (old != NULL) {
    *link = old->next;
    c->n--;
  }
  if (c->n >= c->capacity)
    evict_one(c);
  link = find(c, e->st.id);
  e->next = *link;
  *link = e;
  c->n++;
  pthread_mutex_unlock(&c->mu);
  if (old != NULL) {
    saga_state_clear(&old->st);
    free(old);
  }
}

size_t state_cache_size(state_cache *c) {
  if (c == NULL)
    return 0;
  pthread_mutex_lock(&c->mu);
  size_t n = c->n;
  pthread_mutex_unlock(&c->mu);
  return n;
}
