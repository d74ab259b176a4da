/*
 * test_chaos_nodes.c — faults on engine processes (docs/reliability.md).
 *
 *   sigkill: three crash_worker nodes share one database and the same
 *     sagas; a random node (now and then all of them) is SIGKILLed at
 *     random moments and started again.
 *   sigstop_past_lease: nodes with a 1 s lease; a random node is SIGSTOPped
 *     for 1.5–2.5 leases while the others take over its work, then
 *     SIGCONTed: its late results must be fenced, so no completion is
 *     recorded twice and no compensation runs out of order.
 * Each round then checks every promise (chaos_check_sagas, sagacheck).
 * Bounded by default; SKALD_CHAOS_SOAK_FAULTS / _SECONDS make it a soak.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>

#include "chaos.h"

static chaos_env env;
static char db[256];

/* Only what cannot fail here: Criterion skips .fini when .init fails, so
 * clusters are started in the test body, where .fini cleans up after any
 * failed assertion. */
static void setup(void) { chaos_env_init(&env); }

static void start_cluster(void) {
  chaos_pg_init(&env, &env.pg[0], "pg");
  cr_assert_eq(chaos_pg_start(&env.pg[0], NULL), 0, "postgres did not start");
  chaos_pg_conninfo(&env.pg[0], db, sizeof(db));
}

static void teardown(void) { chaos_env_cleanup(&env); }

static long kill_nodes(chaos_fleet *f, chaos_stats *st, void *ud) {
  (void)ud;
  long n = 0;
  if (chaos_rand(0, 4) == 0) { /* now and then every node at once */
    for (int i = 0; i < f->n; i++)
      if (f->pid[i] > 0) {
        chaos_fleet_kill(f, i);
        n++;
      }
  } else {
    int node = chaos_fleet_pick(f);
    if (node >= 0) {
      chaos_fleet_kill(f, node);
      n++;
    }
  }
  st->faults[FAULT_SIGKILL_NODE] += n;
  return n;
}

Test(chaos_nodes, sigkill, .init = setup, .fini = teardown) {
  chaos_seed();
  start_cluster();
  chaos_stats st;
  chaos_stats_init(&st, "sigkill_nodes");
  long budget = chaos_fault_budget(20);
  for (int r = 0; chaos_more_rounds(r, chaos_stats_faults(&st), budget,
                                    st.started_ms); r++) {
    char prefix[16];
    snprintf(prefix, sizeof(prefix), "k%d", r);
    chaos_crash_round(&env, db, prefix, 3, 500, 1000,
                      budget - chaos_stats_faults(&st), 150, 700, kill_nodes,
                      NULL, &st);
  }
  chaos_stats_report(&st);
  cr_assert_geq(chaos_stats_faults(&st), 3, "too few faults were injected");
}

static long stop_node(chaos_fleet *f, chaos_stats *st, void *ud) {
  (void)ud;
  int node = chaos_fleet_pick(f);
  if (node < 0)
    return 0;
  pid_t pid = f->pid[node];
  kill(pid, SIGSTOP);
  f->stopped[node] = true;
  st->faults[FAULT_SIGSTOP_PAST_LEASE]++;
  /* Past its lease: the others take over its tasks meanwhile. */
  int64_t end = chaos_now_ms() + chaos_rand(f->lease_ms * 3 / 2,
                                            f->lease_ms * 5 / 2);
  while (chaos_now_ms() < end) {
    chaos_fleet_poll(f);
    chaos_sleep_ms(10);
  }
  if (f->pid[node] == pid) {
    kill(pid, SIGCONT);
    f->stopped[node] = false;
  }
  return 1;
}

Test(chaos_nodes, sigstop_past_lease, .init = setup, .fini = teardown) {
  chaos_seed();
  start_cluster();
  chaos_stats st;
  chaos_stats_init(&st, "sigstop_past_lease");
  long budget = chaos_fault_budget(8);
  for (int r = 0; chaos_more_rounds(r, chaos_stats_faults(&st), budget,
                                    st.started_ms); r++) {
    char prefix[16];
    snprintf(prefix, sizeof(prefix), "z%d", r);
    chaos_crash_round(&env, db, prefix, 3, 400, 1000,
                      budget - chaos_stats_faults(&st), 100, 400, stop_node,
                      NULL, &st);
  }
  chaos_stats_report(&st);
  cr_assert_geq(chaos_stats_faults(&st), 2, "too few faults were injected");
}
