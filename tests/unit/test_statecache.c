/*
 * test_statecache.c — the in-memory projections kept between commits
 * (engine/store/statecache.h): ownership moves in and out, settled sagas
 * are not kept, an older state never replaces a newer one, and the
 * capacity holds.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "store/statecache.h"

static saga_state make(int i, saga_status status, int64_t seq) {
  saga_state st;
  saga_state_init(&st);
  snprintf(st.id, sizeof(st.id), "00000000-0000-7000-8000-%012d", i);
  st.workflow = strdup("wf");
  st.status = status;
  st.last_seq = seq;
  return st;
}

Test(statecache, take_moves_the_state_out_and_put_back_in) {
  state_cache *c = state_cache_new(8);
  cr_assert_not_null(c);
  saga_state st = make(1, SAGA_STATUS_RUNNING, 3);
  char id[37];
  memcpy(id, st.id, sizeof(id));
  state_cache_put(c, &st);
  cr_assert_null(st.workflow, "put must take ownership");
  cr_assert_eq(state_cache_size(c), 1);

  saga_state got;
  saga_state_init(&got);
  cr_assert(state_cache_take(c, id, &got));
  cr_assert_eq(got.last_seq, 3);
  cr_assert_str_eq(got.workflow, "wf");
  cr_assert_eq(state_cache_size(c), 0);
  saga_state again;
  saga_state_init(&again);
  cr_assert(!state_cache_take(c, id, &again), "taken twice");
  saga_state_clear(&got);
  state_cache_free(c);
}

Test(statecache, settled_sagas_are_not_kept) {
  state_cache *c = state_cache_new(8);
  saga_status settled[] = {SAGA_STATUS_COMPLETED, SAGA_STATUS_COMPENSATED,
                           SAGA_STATUS_FAILED, SAGA_STATUS_PAUSED,
                           SAGA_STATUS_CANCELLED};
  for (size_t i = 0; i < sizeof(settled) / sizeof(settled[0]); i++) {
    saga_state st = make((int)i, settled[i], 9);
    state_cache_put(c, &st);
    cr_assert_null(st.workflow);
  }
  cr_assert_eq(state_cache_size(c), 0);
  saga_state st = make(99, SAGA_STATUS_COMPENSATING, 9);
  state_cache_put(c, &st);
  cr_assert_eq(state_cache_size(c), 1);
  state_cache_free(c);
}

Test(statecache, an_older_state_never_replaces_a_newer_one) {
  state_cache *c = state_cache_new(8);
  saga_state newer = make(7, SAGA_STATUS_RUNNING, 10);
  saga_state older = make(7, SAGA_STATUS_RUNNING, 6);
  char id[37];
  memcpy(id, newer.id, sizeof(id));
  state_cache_put(c, &newer);
  state_cache_put(c, &older);
  cr_assert_eq(state_cache_size(c), 1);
  saga_state got;
  saga_state_init(&got);
  cr_assert(state_cache_take(c, id, &got));
  cr_assert_eq(got.last_seq, 10);
  saga_state_clear(&got);

  saga_state a = make(7, SAGA_STATUS_RUNNING, 6);
  saga_state b = make(7, SAGA_STATUS_RUNNING, 11);
  state_cache_put(c, &a);
  state_cache_put(c, &b);
  saga_state_init(&got);
  cr_assert(state_cache_take(c, id, &got));
  cr_assert_eq(got.last_seq, 11, "a newer state replaces an older one");
  saga_state_clear(&got);
  state_cache_free(c);
}

Test(statecache, capacity_is_kept_by_evicting) {
  state_cache *c = state_cache_new(100);
  for (int i = 0; i < 1000; i++) {
    saga_state st = make(i, SAGA_STATUS_RUNNING, i + 1);
    state_cache_put(c, &st);
    cr_assert_leq(state_cache_size(c), 100);
  }
  cr_assert_eq(state_cache_size(c), 100);
  int hits = 0;
  for (int i = 0; i < 1000; i++) {
    saga_state probe = make(i, SAGA_STATUS_RUNNING, 0);
    saga_state got;
    saga_state_init(&got);
    if (state_cache_take(c, probe.id, &got)) {
      cr_assert_eq(got.last_seq, i + 1, "an entry came back under another id");
      hits++;
      saga_state_clear(&got);
    }
    saga_state_clear(&probe);
  }
  cr_assert_eq(hits, 100);
  state_cache_free(c); /* frees nothing twice: ASan checks */
}

Test(statecache, a_null_cache_keeps_nothing) {
  saga_state st = make(1, SAGA_STATUS_RUNNING, 1);
  state_cache_put(NULL, &st);
  cr_assert_null(st.workflow);
  saga_state got;
  saga_state_init(&got);
  cr_assert(!state_cache_take(NULL, "x", &got));
  cr_assert_eq(state_cache_size(NULL), 0);
}
