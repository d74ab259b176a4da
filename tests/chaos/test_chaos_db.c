/*
 * test_chaos_db.c — faults on the database under running engines
 * (docs/reliability.md).
 *
 *   terminate_backends: every 0.5–2 s every engine connection is
 *     terminated (pg_terminate_backend).
 *   pg_restart: PostgreSQL itself is restarted mid-run, alternately with
 *     -m fast and -m immediate (crash recovery).
 *   failover: a primary with a synchronous streaming standby on loopback;
 *     the engines get "host=127.0.0.1,127.0.0.1 port=P1,P2 ...
 *     target_session_attrs=read-write". Mid-run the standby is promoted and
 *     the primary killed (odd rounds: killed first, then promoted); the
 *     engines must reconnect to the new primary and finish everything.
 * Each round then checks every promise (chaos_check_sagas, sagacheck).
 */
#include <criterion/criterion.h>
#include <stdio.h>

#include "chaos.h"
#include "pgtest.h"

static chaos_env env;
static char db[256];

/* Clusters are made in the test bodies: Criterion skips .fini when .init
 * fails, and .fini is what stops them. */
static void setup(void) { chaos_env_init(&env); }

static void one_cluster(void) {
  chaos_pg_init(&env, &env.pg[0], "pg");
  cr_assert_eq(chaos_pg_start(&env.pg[0], NULL), 0, "postgres did not start");
  chaos_pg_conninfo(&env.pg[0], db, sizeof(db));
}

static void teardown(void) { chaos_env_cleanup(&env); }

static long terminate(chaos_fleet *f, chaos_stats *st, void *ud) {
  (void)f;
  (void)ud;
  int n = chaos_terminate_backends(db);
  if (n < 0)
    return 0;
  st->faults[FAULT_TERMINATE_BACKENDS]++;
  return 1;
}

Test(chaos_db, terminate_backends, .init = setup, .fini = teardown) {
  chaos_seed();
  one_cluster();
  chaos_stats st;
  chaos_stats_init(&st, "terminate_backends");
  long budget = chaos_fault_budget(12);
  for (int r = 0; chaos_more_rounds(r, chaos_stats_faults(&st), budget,
                                    st.started_ms); r++) {
    char prefix[16];
    snprintf(prefix, sizeof(prefix), "t%d", r);
    chaos_crash_round(&env, db, prefix, 2, 500, 1000,
                      budget - chaos_stats_faults(&st), 500, 2000, terminate,
                      NULL, &st);
  }
  chaos_stats_report(&st);
  cr_assert_geq(chaos_stats_faults(&st), 2, "too few faults were injected");
}

static long restart_pg(chaos_fleet *f, chaos_stats *st, void *ud) {
  (void)f;
  long *count = ud;
  bool immediate = (*count)++ % 2 == 1;
  cr_assert_eq(chaos_pg_restart(&env.pg[0], immediate ? "immediate" : "fast",
                                NULL),
               0, "postgres did not restart");
  st->faults[immediate ? FAULT_PG_RESTART_IMMEDIATE : FAULT_PG_RESTART_FAST]++;
  return 1;
}

Test(chaos_db, pg_restart, .init = setup, .fini = teardown) {
  chaos_seed();
  one_cluster();
  chaos_stats st;
  chaos_stats_init(&st, "pg_restart");
  long budget = chaos_fault_budget(6);
  long count = 0;
  for (int r = 0; chaos_more_rounds(r, chaos_stats_faults(&st), budget,
                                    st.started_ms); r++) {
    char prefix[16];
    snprintf(prefix, sizeof(prefix), "p%d", r);
    chaos_crash_round(&env, db, prefix, 2, 500, 1000,
                      budget - chaos_stats_faults(&st), 700, 2500, restart_pg,
                      &count, &st);
  }
  chaos_stats_report(&st);
  cr_assert_geq(chaos_stats_faults(&st), 2, "too few faults were injected");
}

/* ---- failover ---- */

typedef struct failover {
  int round;
  bool done;
} failover;

static long fail_over(chaos_fleet *f, chaos_stats *st, void *ud) {
  (void)f;
  failover *fo = ud;
  if (fo->done)
    return 0;
  chaos_pg *primary = &env.pg[0], *standby = &env.pg[1];
  if (fo->round % 2 == 0) {
    /* Promote first: the old primary, cut off from its synchronous
     * standby, hangs every commit until it is killed. */
    cr_assert_eq(chaos_pg_promote(standby), 0, "promote failed");
    chaos_sleep_ms(chaos_rand(200, 800));
    cr_assert_eq(chaos_pg_stop(primary, "immediate"), 0, "kill failed");
  } else {
    cr_assert_eq(chaos_pg_stop(primary, "immediate"), 0, "kill failed");
    chaos_sleep_ms(chaos_rand(200, 800));
    cr_assert_eq(chaos_pg_promote(standby), 0, "promote failed");
  }
  fo->done = true;
  st->faults[FAULT_PG_FAILOVER]++;
  return 1;
}

static void make_pair(void) {
  chaos_pg_init(&env, &env.pg[0], "primary");
  cr_assert_eq(chaos_pg_start(&env.pg[0], NULL), 0, "primary did not start");
  chaos_pg_standby(&env, &env.pg[1], &env.pg[0], "standby", NULL);
  char p[256];
  chaos_pg_conninfo(&env.pg[0], p, sizeof(p));
  /* Synchronous from now on; wait until the standby is the sync one. */
  long long ok = 0;
  chaos_wait_writable(p, 30000);
  pgtest_exec(p, "ALTER SYSTEM SET synchronous_standby_names = 'standby1'");
  pgtest_exec(p, "SELECT pg_reload_conf()");
  for (int t = 0; t < 300 && ok != 1; t++) {
    ok = pgtest_scalar(p, "SELECT count(*) FROM pg_stat_replication "
                          "WHERE application_name = 'standby1' "
                          "AND sync_state = 'sync'");
    if (ok != 1)
      chaos_sleep_ms(100);
  }
  cr_assert_eq(ok, 1, "the standby never became synchronous");
  snprintf(db, sizeof(db),
           "host=127.0.0.1,127.0.0.1 port=%d,%d user=postgres "
           "dbname=postgres connect_timeout=3 "
           "target_session_attrs=read-write",
           env.pg[0].port, env.pg[1].port);
}

Test(chaos_db, failover, .init = setup, .fini = teardown) {
  chaos_seed();
  chaos_stats st;
  chaos_stats_init(&st, "pg_failover");
  long budget = chaos_fault_budget(1);
  for (int r = 0; chaos_more_rounds(r, chaos_stats_faults(&st), budget,
                                    st.started_ms); r++) {
    if (r > 0) { /* a fresh pair per round */
      chaos_env_cleanup(&env);
      chaos_env_init(&env);
    }
    make_pair();
    char prefix[16];
    snprintf(prefix, sizeof(prefix), "f%d", r);
    failover fo = {.round = r};
    chaos_crash_round(&env, db, prefix, 2, 400, 1000, 1, 300, 1200, fail_over,
                      &fo, &st);
    cr_assert(fo.done, "the run ended before the failover");
    cr_assert(chaos_wait_writable(db, 10000), "no writable primary");
  }
  chaos_stats_report(&st);
}
