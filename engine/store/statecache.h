/*
 * statecache.h — the projections of the sagas this node is driving, kept
 * in memory between its group commits.
 *
 * Every step of a saga is a transition of its projection; reading the
 * projection back from the database for each one (and parsing its JSON)
 * was a large part of a step's cost. A group commit takes the states it
 * needs out of the cache and puts the new ones back once its transaction
 * committed. The cache is never trusted on its own: the commit still locks
 * each saga's row and compares the row's last_seq with the cached state's;
 * any difference (another node, an operator, a failed commit) means the
 * state is read from the database as before. The projection is a function
 * of the events and every change appends one, so equal seqs mean equal
 * states.
 *
 * Ownership moves: take() hands the entry over (a second batch touching
 * the same saga meanwhile simply misses), put() takes it back. Only
 * running and compensating sagas are kept; at the capacity, arbitrary
 * entries are evicted (a miss costs a read, never correctness).
 *
 * Thread: any; one mutex.
 */
#ifndef SKALD_STORE_STATECACHE_H
#define SKALD_STORE_STATECACHE_H

#include <stdbool.h>
#include <stddef.h>

#include "saga/saga.h"

typedef struct state_cache state_cache;

/* NULL when out of memory (the engine then runs without one). */
state_cache *state_cache_new(size_t capacity);
void state_cache_free(state_cache *c);

/* Moves the state of saga id into *out (which must not hold one) and
 * returns true, or returns false (c may be NULL). */
bool state_cache_take(state_cache *c, const char *id, saga_state *out);

/* Moves *st into the cache (or clears it when the saga is settled or c is
 * NULL); *st is left initialised and empty either way. */
void state_cache_put(state_cache *c, saga_state *st);

size_t state_cache_size(state_cache *c);

#endif /* SKALD_STORE_STATECACHE_H */
