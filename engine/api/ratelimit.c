/*
 * ratelimit.c — token buckets in a bounded LRU table (ratelimit.h).
 *
 * Layout: `max_keys` nodes allocated up front; a power-of-two array of hash
 * chains (singly linked, by node index) finds a key; a doubly linked list
 * orders nodes from most (head) to least (tail) recently used. A node is
 * either free (on the free stack) or in exactly one chain and in the LRU
 * list. Tokens are kept in units (RATELIMIT_UNIT per token), with
 * 0 <= tokens <= cap = burst * RATELIMIT_UNIT.
 *
 * Thread: any; every public call holds rl->mu for its whole duration.
 */
#include "api/ratelimit.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define NIL UINT32_MAX

typedef struct node {
  char key[RATELIMIT_KEY_MAX];
  int64_t tokens;  /* units */
  int64_t last_ms; /* when tokens was last brought up to date */
  uint32_t chain;  /* next in the hash chain, or next free */
  uint32_t prev, next; /* LRU list */
} node;

struct ratelimit {
  pthread_mutex_t mu;
  int64_t burst;
  int64_t cap;         /* burst * RATELIMIT_UNIT */
  int64_t per_ms;      /* units refilled per millisecond, >= 1 */
  node *nodes;
  uint32_t nnodes;
  uint32_t *heads;     /* hash chains */
  uint32_t mask;       /* heads has mask + 1 entries */
  uint32_t free_top;   /* stack of free nodes through .chain */
  uint32_t lru_head, lru_tail;
  size_t count;
};

static uint32_t hash_key(const char *s) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (; *s; s++) {
    h ^= (uint8_t)*s;
    h *= 16777619u;
  }
  return h;
}

int ratelimit_new(double rate_per_s, int64_t burst, size_t max_keys,
                  ratelimit **out) {
  *out = NULL;
  if (!(rate_per_s >= RATELIMIT_RATE_MIN && rate_per_s <= RATELIMIT_RATE_MAX) ||
      burst < 1 || burst > RATELIMIT_BURST_MAX || max_keys < 1 ||
      max_keys > (1u << 30))
    return SK_EINVAL;
  ratelimit *rl = calloc(1, sizeof(*rl));
  if (rl == NULL)
    return SK_ENOMEM;
  uint32_t nheads = 1;
  while (nheads < 2 * max_keys)
    nheads <<= 1;
  rl->nodes = calloc(max_keys, sizeof(node));
  rl->heads = malloc(nheads * sizeof(uint32_t));
  if (rl->nodes == NULL || rl->heads == NULL ||
      pthread_mutex_init(&rl->mu, NULL) != 0) {
    free(rl->nodes);
    free(rl->heads);
    free(rl);
    return SK_ENOMEM;
  }
  rl->burst = burst;
  rl->cap = burst * RATELIMIT_UNIT;
  /* units per ms = rate * 1e9 / 1e3; >= 1 because rate >= 1e-6. */
  rl->per_ms = (int64_t)(rate_per_s * (double)(RATELIMIT_UNIT / 1000) + 0.5);
  if (rl->per_ms < 1)
    rl->per_ms = 1;
  rl->nnodes = (uint32_t)max_keys;
  rl->mask = nheads - 1;
  for (uint32_t i = 0; i < nheads; i++)
    rl->heads[i] = NIL;
  for (uint32_t i = 0; i < rl->nnodes; i++)
    rl->nodes[i].chain = i + 1 < rl->nnodes ? i + 1 : NIL;
  rl->free_top = 0;
  rl->lru_head = rl->lru_tail = NIL;
  *out = rl;
  return SK_OK;
}

void ratelimit_free(ratelimit *rl) {
  if (rl == NULL)
    return;
  pthread_mutex_destroy(&rl->mu);
  free(rl->nodes);
  free(rl->heads);
  free(rl);
}

static void lru_unlink(ratelimit *rl, uint32_t i) {
  node *n = &rl->nodes[i];
  if (n->prev != NIL)
    rl->nodes[n->prev].next = n->next;
  else
    rl->lru_head = n->next;
  if (n->next != NIL)
    rl->nodes[n->next].prev = n->prev;
  else
    rl->lru_tail = n->prev;
  n->prev = n->next = NIL;
}

static void lru_push_front(ratelimit *rl, uint32_t i) {
  node *n = &rl->nodes[i];
  n->prev = NIL;
  n->next = rl->lru_head;
  if (rl->lru_head != NIL)
    rl->nodes[rl->lru_head].prev = i;
  rl->lru_head = i;
  if (rl->lru_tail == NIL)
    rl->lru_tail = i;
}

static uint32_t find(const ratelimit *rl, const char *key, uint32_t h) {
  for (uint32_t i = rl->heads[h & rl->mask]; i != NIL; i = rl->nodes[i].chain)
    if (strcmp(rl->nodes[i].key, key) == 0)
      return i;
  return NIL;
}

/* Removes node i from its hash chain. */
static void chain_remove(ratelimit *rl, uint32_t i) {
  uint32_t *link = &rl->heads[hash_key(rl->nodes[i].key) & rl->mask];
  while (*link != i)
    link = &rl->nodes[*link].chain;
  *link = rl->nodes[i].chain;
}

/* A node for a new key: a free one, else the least recently used. */
static uint32_t insert(ratelimit *rl, const char *key, uint32_t h,
                       int64_t now_ms) {
  uint32_t i = rl->free_top;
  if (i != NIL) {
    rl->free_top = rl->nodes[i].chain;
    rl->count++;
  } else {
    i = rl->lru_tail;
    lru_unlink(rl, i);
    chain_remove(rl, i);
  }
  node *n = &rl->nodes[i];
  strcpy(n->key, key); /* length checked by the caller */
  n->tokens = rl->cap;
  n->last_ms = now_ms;
  n->chain = rl->heads[h & rl->mask];
  rl->heads[h & rl->mask] = i;
  lru_push_front(rl, i);
  return i;
}

static void refill(const ratelimit *rl, node *n, int64_t now_ms) {
  if (now_ms <= n->last_ms)
    return; /* a clock going backwards gives nothing and keeps last_ms */
  int64_t elapsed = now_ms - n->last_ms;
  int64_t need = rl->cap - n->tokens;
  /* Compare before multiplying so elapsed * per_ms cannot overflow. */
  if (elapsed >= need / rl->per_ms + 1)
    n->tokens = rl->cap;
  else
    n->tokens += elapsed * rl->per_ms;
  if (n->tokens > rl->cap)
    n->tokens = rl->cap;
  n->last_ms = now_ms;
}

/* Milliseconds until `units` more units have been refilled, rounded up,
 * then seconds rounded up. */
static int64_t secs_for(const ratelimit *rl, int64_t units) {
  if (units <= 0)
    return 0;
  int64_t ms = (units + rl->per_ms - 1) / rl->per_ms;
  return (ms + 999) / 1000;
}

static void fill_result(const ratelimit *rl, int64_t tokens, bool allowed,
                        ratelimit_result *res) {
  res->allowed = allowed;
  res->limit = rl->burst;
  res->remaining = tokens / RATELIMIT_UNIT;
  res->reset_s = secs_for(rl, rl->cap - tokens);
  res->retry_after_s = 0;
  if (!allowed) {
    res->retry_after_s = secs_for(rl, RATELIMIT_UNIT - tokens);
    if (res->retry_after_s < 1)
      res->retry_after_s = 1;
  }
}

static bool key_ok(const char *key) {
  return key != NULL && key[0] != '\0' &&
         strnlen(key, RATELIMIT_KEY_MAX) < RATELIMIT_KEY_MAX;
}

int ratelimit_take(ratelimit *rl, const char *key, int64_t now_ms,
                   ratelimit_result *res) {
  memset(res, 0, sizeof(*res));
  if (!key_ok(key))
    return SK_EINVAL;
  uint32_t h = hash_key(key);
  pthread_mutex_lock(&rl->mu);
  uint32_t i = find(rl, key, h);
  if (i == NIL) {
    i = insert(rl, key, h, now_ms);
  } else {
    lru_unlink(rl, i);
    lru_push_front(rl, i);
  }
  node *n = &rl->nodes[i];
  refill(rl, n, now_ms);
  bool allowed = n->tokens >= RATELIMIT_UNIT;
  if (allowed)
    n->tokens -= RATELIMIT_UNIT;
  fill_result(rl, n->tokens, allowed, res);
  pthread_mutex_unlock(&rl->mu);
  return SK_OK;
}

int ratelimit_peek(ratelimit *rl, const char *key, int64_t now_ms,
                   ratelimit_result *res) {
  memset(res, 0, sizeof(*res));
  if (!key_ok(key))
    return SK_EINVAL;
  uint32_t h = hash_key(key);
  pthread_mutex_lock(&rl->mu);
  uint32_t i = find(rl, key, h);
  int64_t tokens = rl->cap;
  if (i != NIL) {
    node copy = rl->nodes[i]; /* peeking changes nothing */
    refill(rl, &copy, now_ms);
    tokens = copy.tokens;
  }
  fill_result(rl, tokens, tokens >= RATELIMIT_UNIT, res);
  pthread_mutex_unlock(&rl->mu);
  return SK_OK;
}

size_t ratelimit_count(ratelimit *rl) {
  pthread_mutex_lock(&rl->mu);
  size_t n = rl->count;
  pthread_mutex_unlock(&rl->mu);
  return n;
}
