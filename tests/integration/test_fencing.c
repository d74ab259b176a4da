/*
 * test_fencing.c — completions are fenced by lease tokens (DESIGN.md,
 * semantics 4), against a real PostgreSQL, at the store level.
 *
 * Node A leases a task; its lease expires; node B leases the same task with
 * a new token. A's late result must be dropped without writing anything,
 * B's must be committed, and A's lease renewal must report the lease lost.
 */
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/uuid.h"
#include "pgtest.h"
#include "spec/spec_json.h"
#include "store/migrate.h"
#include "store/queries.h"
#include "store/sagastore.h"
#include "store/statecache.h"
#include "store/taskqueue.h"

static char db[512];
static PGconn *ca, *cb;
static def_workflow *wf;

static const char *SPEC = "{\"name\":\"fence_wf\",\"version\":1,\"steps\":["
                          "{\"name\":\"a\",\"task\":\"f.step\"},{\"name\":"
                          "\"b\",\"task\":\"f.step\"}]}";

static const def_workflow *get_def(void *ud, PGconn *c, const char *name,
                                   int version) {
  return wf;
}

static void setup(void) {
  cr_assert_eq(pgtest_fresh_db(db, sizeof(db)), 0);
  ca = PQconnectdb(db);
  cb = PQconnectdb(db);
  cr_assert_eq(PQstatus(ca), CONNECTION_OK);
  cr_assert_eq(PQstatus(cb), CONNECTION_OK);
  sk_error err = {0};
  cr_assert_eq(migrate_apply(ca, NULL, &err), SK_OK, "%s", err.message);
  def_problems p;
  def_problems_init(&p);
  cr_assert_eq(spec_parse(SPEC, strlen(SPEC), &wf, &p), SK_OK);
  def_problems_clear(&p);
}

static void teardown(void) {
  def_workflow_unref(wf);
  PQfinish(ca);
  PQfinish(cb);
  pgtest_drop_db(db);
}

static int commit_cached(PGconn *c, store_op *op, state_cache *cache) {
  saga_rng rng = {42};
  store_env env = {.node = "test",
                   .now_ms = clock_now_ms(),
                   .rng = &rng,
                   .lease_ttl_ms = 1000,
                   .get_def = get_def,
                   .cache = cache};
  store_batch b = {.ops = op, .n_ops = 1};
  sk_error err = {0};
  int rc = sagastore_commit(c, &b, &env, &err);
  cr_assert_eq(rc, SK_OK, "commit: %s", err.message);
  store_batch_clear_out(&b);
  return op->rc;
}

static int commit_one(PGconn *c, store_op *op) {
  return commit_cached(c, op, NULL);
}

/* Starts a saga of fence_wf through node A's connection (with cache, or
 * none) and writes its id to id. */
static void start_saga(state_cache *cache, char id[37]) {
  store_op start = {.type = STORE_OP_START, .wf = wf};
  start.input = strdup("{}");
  uuid_v7(start.saga_id);
  cr_assert_eq(commit_cached(ca, &start, cache), SK_OK);
  memcpy(id, start.saga_id, 37);
  start.wf = NULL;
  store_op_clear(&start);
}

static leased_task lease_one(PGconn *c, const char *node, int ttl) {
  const char *types[] = {"f.step"};
  dequeue_lane lane = {
      .bulkhead = "default", .types = types, .n_types = 1, .limit = 10};
  leased_task *got = NULL;
  size_t n = 0;
  sk_error err = {0};
  cr_assert_eq(taskqueue_dequeue(c, node, ttl, &lane, 1, &got, &n, &err), SK_OK,
               "%s", err.message);
  leased_task t;
  memset(&t, 0, sizeof(t));
  if (n == 1)
    t = got[0];
  cr_assert_leq(n, 1);
  free(got);
  return t;
}

static long long count(const char *sql) { return pgtest_scalar(db, sql); }

Test(fencing, late_result_from_an_expired_lease_is_dropped, .init = setup,
     .fini = teardown, .timeout = 60) {
  char id[37];
  start_saga(NULL, id);

  leased_task ta = lease_one(ca, "node-a", 300);
  cr_assert_str_eq(ta.lease.saga_id, id);
  leased_task none = lease_one(cb, "node-b", 300);
  cr_assert_eq(none.lease.token, 0, "a leased task must not be leased twice");

  struct timespec ts = {0, 450 * 1000000L};
  nanosleep(&ts, NULL);
  leased_task tb = lease_one(cb, "node-b", 5000);
  cr_assert_str_eq(tb.lease.saga_id, id, "the expired lease was not re-leased");
  cr_assert_neq(tb.lease.token, ta.lease.token);
  cr_assert_eq(tb.deliveries, 2);

  long long events_before = count("SELECT count(*) FROM saga_events");
  store_op late = {.type = STORE_OP_RESULT, .lease = ta.lease, .ok = true};
  late.output = strdup("{\"from\":\"a\"}");
  cr_assert_eq(commit_one(ca, &late), SK_ELEASE, "A's late result was kept");
  store_op_clear(&late);
  cr_assert_eq(count("SELECT count(*) FROM saga_events"), events_before,
               "a fenced result wrote events");
  cr_assert_eq(count("SELECT count(*) FROM tasks"), 1);

  bool lost[2], cancel[2];
  store_lease both[2] = {ta.lease, tb.lease};
  sk_error err = {0};
  cr_assert_eq(taskqueue_renew(ca, both, 2, 1000, lost, cancel, &err), SK_OK);
  cr_assert(lost[0], "A's renewal should report its lease lost");
  cr_assert(!lost[1], "B still holds its lease");

  store_op good = {.type = STORE_OP_RESULT, .lease = tb.lease, .ok = true};
  good.output = strdup("{\"from\":\"b\"}");
  cr_assert_eq(commit_one(cb, &good), SK_OK);
  store_op_clear(&good);
  cr_assert_eq(count("SELECT count(*) FROM saga_events WHERE type = "
                     "'StepCompleted' AND payload->'output'->>'from' = 'b'"),
               1);
  cr_assert_eq(count("SELECT count(*) FROM saga_events WHERE type = "
                     "'StepCompleted'"),
               1, "exactly one completion is recorded");
  leased_task_clear(&ta);
  leased_task_clear(&tb);
}

Test(fencing, released_lease_is_due_at_once_and_still_fenced, .init = setup,
     .fini = teardown, .timeout = 60) {
  char id[37];
  start_saga(NULL, id);

  leased_task ta = lease_one(ca, "node-a", 60000);
  cr_assert_neq(ta.lease.token, 0);
  sk_error err = {0};
  cr_assert_eq(taskqueue_release(ca, &ta.lease, NULL, 1, &err), SK_OK);
  leased_task tb = lease_one(cb, "node-b", 60000);
  cr_assert_neq(tb.lease.token, 0, "a released task must be due at once");
  store_op late = {.type = STORE_OP_RESULT, .lease = ta.lease, .ok = true};
  cr_assert_eq(commit_one(ca, &late), SK_ELEASE);
  store_op_clear(&late);
  leased_task_clear(&ta);
  leased_task_clear(&tb);
}

/* The state cache is never trusted on its own: node A keeps saga S's
 * projection after starting it, node B moves S on (completes step a), and
 * A's next commit on S must see the row's newer seq, read it again and
 * decide on the current state (a stale state would try to append an event
 * number that exists, or drop A's result as "step not running"). */
Test(fencing, a_cached_projection_that_moved_on_is_read_again, .init = setup,
     .fini = teardown, .timeout = 60) {
  state_cache *cache = state_cache_new(16);
  cr_assert_not_null(cache);
  char id[37];
  start_saga(cache, id);
  cr_assert_eq(state_cache_size(cache), 1, "the new saga was not cached");

  leased_task t1 = lease_one(cb, "node-b", 60000);
  cr_assert_str_eq(t1.lease.saga_id, id);
  store_op r1 = {.type = STORE_OP_RESULT, .lease = t1.lease, .ok = true};
  r1.output = strdup("{\"by\":\"b\"}");
  cr_assert_eq(commit_one(cb, &r1), SK_OK);
  store_op_clear(&r1);

  leased_task t2 = lease_one(ca, "node-a", 60000);
  cr_assert_str_eq(t2.lease.saga_id, id);
  cr_assert_eq(t2.lease.step, 1);
  store_op r2 = {.type = STORE_OP_RESULT, .lease = t2.lease, .ok = true};
  r2.output = strdup("{\"by\":\"a\"}");
  cr_assert_eq(commit_cached(ca, &r2, cache), SK_OK,
               "A decided on its stale cached state");
  store_op_clear(&r2);
  cr_assert_eq(count("SELECT count(*) FROM sagas WHERE status = 'completed'"),
               1);
  cr_assert_eq(state_cache_size(cache), 0, "a settled saga stays cached");

  verify_report rep;
  memset(&rep, 0, sizeof(rep));
  sk_error err = {0};
  cr_assert_eq(queries_verify(ca, id, &rep, &err), SK_OK, "%s", err.message);
  cr_assert_eq(rep.mismatched, 0, "the projection is not the fold");
  leased_task_clear(&t1);
  leased_task_clear(&t2);
  state_cache_free(cache);
}

/* A process restarted under the same node name takes its predecessor's
 * leases back at once (not after the TTL); the predecessor's late result
 * is still fenced; and while the name is held by a live session, nothing
 * is taken. */
Test(fencing, a_restarted_node_takes_back_its_own_leases, .init = setup,
     .fini = teardown, .timeout = 60) {
  char id[37];
  start_saga(NULL, id);

  /* The first incarnation holds the name and a 10-minute lease. */
  PGconn *first = PQconnectdb(db);
  cr_assert_eq(PQstatus(first), CONNECTION_OK);
  bool in_use = true;
  int n = -1;
  sk_error err = {0};
  cr_assert_eq(taskqueue_reclaim_own(first, "node-x", &in_use, &n, &err), SK_OK,
               "%s", err.message);
  cr_assert(!in_use);
  cr_assert_eq(n, 0);
  leased_task old = lease_one(first, "node-x", 600000);
  cr_assert_neq(old.lease.token, 0);

  /* A second process under the same name while the first lives: hands off. */
  cr_assert_eq(taskqueue_reclaim_own(cb, "node-x", &in_use, &n, &err), SK_OK);
  cr_assert(in_use, "a live holder of the name was not noticed");
  cr_assert_eq(n, 0);
  cr_assert_eq(count("SELECT count(*) FROM tasks WHERE lease_owner = "
                     "'node-x'"),
               1);

  /* The first dies (its session ends); the restart takes the lease back. */
  PQfinish(first);
  for (int i = 0; i < 100 && in_use; i++) {
    cr_assert_eq(taskqueue_reclaim_own(cb, "node-x", &in_use, &n, &err), SK_OK);
    if (in_use) {
      struct timespec ts = {0, 20 * 1000000L};
      nanosleep(&ts, NULL);
    }
  }
  cr_assert(!in_use, "the dead session's name was never free");
  cr_assert_eq(n, 1);
  leased_task again = lease_one(cb, "node-x", 60000);
  cr_assert_str_eq(again.lease.saga_id, old.lease.saga_id,
                   "the task was not due at once");
  cr_assert_neq(again.lease.token, old.lease.token);
  store_op late = {.type = STORE_OP_RESULT, .lease = old.lease, .ok = true};
  cr_assert_eq(commit_one(ca, &late), SK_ELEASE,
               "the dead process's late result was kept");
  store_op_clear(&late);
  leased_task_clear(&old);
  leased_task_clear(&again);
}

/* The one-round-trip commit fences too: node A holds the saga's state in
 * its cache (nothing moved the saga on, so the seq check passes) and
 * reports a result for a lease that expired and that node B has taken
 * since. The lease check must stop the commit before anything is written
 * and the careful path must drop the result; B's task row stays. */
Test(fencing, the_cached_commit_drops_a_result_of_a_lost_lease, .init = setup,
     .fini = teardown, .timeout = 60) {
  state_cache *cache = state_cache_new(16);
  char id[37];
  start_saga(cache, id);

  leased_task ta = lease_one(ca, "node-a", 300);
  struct timespec ts = {0, 450 * 1000000L};
  nanosleep(&ts, NULL);
  leased_task tb = lease_one(cb, "node-b", 60000);
  cr_assert_neq(tb.lease.token, 0, "the expired lease was not re-leased");

  long long events_before = count("SELECT count(*) FROM saga_events");
  store_op late = {.type = STORE_OP_RESULT, .lease = ta.lease, .ok = true};
  late.output = strdup("{}");
  cr_assert_eq(commit_cached(ca, &late, cache), SK_ELEASE,
               "the cached commit accepted a lost lease's result");
  store_op_clear(&late);
  cr_assert_eq(count("SELECT count(*) FROM saga_events"), events_before);
  char sql[160];
  snprintf(sql, sizeof(sql),
           "SELECT count(*) FROM tasks WHERE lease_token = %lld",
           (long long)tb.lease.token);
  cr_assert_eq(count(sql), 1, "B's task row was taken by A's late result");

  store_op good = {.type = STORE_OP_RESULT, .lease = tb.lease, .ok = true};
  good.output = strdup("{}");
  cr_assert_eq(commit_one(cb, &good), SK_OK);
  store_op_clear(&good);
  leased_task_clear(&ta);
  leased_task_clear(&tb);
  state_cache_free(cache);
}

/* A start whose idempotency key was used before, through the cached
 * commit: the key check fails, the careful path returns the first saga. */
Test(fencing, the_cached_commit_returns_the_first_saga_of_a_key, .init = setup,
     .fini = teardown, .timeout = 60) {
  state_cache *cache = state_cache_new(16);
  store_op first = {.type = STORE_OP_START, .wf = wf};
  first.input = strdup("{}");
  first.idempotency_key = strdup("k-1");
  uuid_v7(first.saga_id);
  cr_assert_eq(commit_cached(ca, &first, cache), SK_OK);
  cr_assert(!first.existed);
  store_op again = {.type = STORE_OP_START, .wf = wf};
  again.input = strdup("{}");
  again.idempotency_key = strdup("k-1");
  uuid_v7(again.saga_id);
  cr_assert_eq(commit_cached(cb, &again, cache), SK_OK);
  cr_assert(again.existed, "a used key started a second saga");
  cr_assert_str_eq(again.saga_id, first.saga_id);
  cr_assert_eq(count("SELECT count(*) FROM sagas"), 1);
  first.wf = again.wf = NULL;
  store_op_clear(&first);
  store_op_clear(&again);
  state_cache_free(cache);
}
