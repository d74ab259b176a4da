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
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/uuid.h"
#include "pgtest.h"
#include "spec/spec_json.h"
#include "store/migrate.h"
#include "store/sagastore.h"
#include "store/taskqueue.h"

static char db[512];
static PGconn *ca, *cb;
static def_workflow *wf;

static const char *SPEC =
    "{\"name\":\"fence_wf\",\"version\":1,\"steps\":["
    "{\"name\":\"a\",\"task\":\"f.step\"},{\"name\":\"b\",\"task\":\"f.step\"}]}";

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

static int commit_one(PGconn *c, store_op *op) {
  saga_rng rng = {42};
  store_env env = {.node = "test",
                   .now_ms = clock_now_ms(),
                   .rng = &rng,
                   .lease_ttl_ms = 1000,
                   .get_def = get_def};
  store_batch b = {.ops = op, .n_ops = 1};
  sk_error err = {0};
  int rc = sagastore_commit(c, &b, &env, &err);
  cr_assert_eq(rc, SK_OK, "commit: %s", err.message);
  store_batch_clear_out(&b);
  return op->rc;
}

static leased_task lease_one(PGconn *c, const char *node, int ttl) {
  const char *types[] = {"f.step"};
  dequeue_lane lane = {.bulkhead = "default", .types = types, .n_types = 1,
                       .limit = 10};
  leased_task *got = NULL;
  size_t n = 0;
  sk_error err = {0};
  cr_assert_eq(taskqueue_dequeue(c, node, ttl, &lane, 1, &got, &n, &err),
               SK_OK, "%s", err.message);
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
  store_op start = {.type = STORE_OP_START, .wf = wf};
  start.input = strdup("{}");
  uuid_v7(start.saga_id);
  cr_assert_eq(commit_one(ca, &start), SK_OK);
  char id[37];
  memcpy(id, start.saga_id, sizeof(id));
  start.wf = NULL;
  store_op_clear(&start);

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
  store_op start = {.type = STORE_OP_START, .wf = wf};
  start.input = strdup("{}");
  uuid_v7(start.saga_id);
  cr_assert_eq(commit_one(ca, &start), SK_OK);
  start.wf = NULL;
  store_op_clear(&start);

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
