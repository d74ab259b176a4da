/*
 * engine.c — opening and closing an engine, its registries (handlers,
 * bulkheads, workflow definitions) and its lifecycle (idle → running →
 * stopping → stopped).
 *
 * Registration happens before start, so handlers and bulkheads are
 * immutable while the loop runs and need no lock. Workflow definitions can
 * also be loaded on demand from the database (a saga started by another
 * node), so that registry has its own mutex; definitions are never removed
 * while the engine lives, which lets the loop borrow them.
 *
 * GPUs: every engine owns a health sampler (engine/health). With provider
 * none (the default without NVML) it reports zero GPUs and no thread runs,
 * so nothing changes for engines without GPUs. A handler learns the GPUs
 * it was given from sk_task.gpus (sk_task_gpus).
 *
 * Thread: the opener's for open/register/start/close; engine_get_workflow
 * from any thread.
 */
#include "core/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "spec/spec_json.h"
#include "spec/validate.h"
#include "store/db.h"
#include "store/migrate.h"
#include "store/queries.h"
#include "store/statecache.h"

#define DEFAULT_DATA_DIR "./.skald"
/* Sagas whose projection a node keeps in memory (statecache.h): a few kB
 * each; beyond it a commit reads them back. */
#define ENGINE_STATE_CACHE_MAX 16384
#define GPU_EVENT_TIMEOUT_MS 200 /* bounds how long close waits for events */

const char *sk_task_gpus(const sk_task *t) {
  return t != NULL && t->gpus != NULL ? t->gpus : "";
}

void engine_gpu_view(const struct sk_engine *e, const node_gpu_report *r,
                     const int64_t *reserved_mb, const unsigned *holders,
                     placement_node *out) {
  memset(out, 0, sizeof(*out));
  out->n = r->n_gpus < GPU_MAX ? r->n_gpus : GPU_MAX;
  out->draining = r->draining;
  out->allow_degraded = e->o.gpu_allow_degraded;
  out->policy = e->o.gpu_placement == 1 ? PLACEMENT_SPREAD : PLACEMENT_BINPACK;
  for (unsigned i = 0; i < out->n; i++) {
    const gpu_health *g = &r->gpu[i];
    placement_gpu *p = &out->gpu[i];
    bool mem = (g->r.valid & GPU_F_MEM) != 0;
    p->index = i;
    p->state = g->state;
    p->nvml_free_mb = mem ? (int64_t)(g->r.mem_free >> 20) : -1;
    p->total_mb = mem ? (int64_t)(g->r.mem_total >> 20) : 0;
    p->reserved_mb = reserved_mb != NULL ? reserved_mb[i] : 0;
    p->holders = holders != NULL ? holders[i] : 0;
    p->util = (g->r.valid & GPU_F_UTIL) ? g->r.util_gpu : 0;
    /* Flap penalty: recovered within the last 10 minutes. */
    p->recently_recovered =
        g->recovered_ms > 0 && r->recv_mono_ms - g->recovered_ms < 600000;
  }
}

/* Sets up the GPU sampler (provider from the options or environment). A
 * provider that cannot open becomes none with a reason; an unknown name or
 * a bad fake script fails the open. */
static int gpu_open(struct sk_engine *e, const sk_engine_options *o,
                    sk_error *err) {
  const char *pl = getenv("SKALD_GPU_PLACEMENT");
  if (pl != NULL && strcmp(pl, "spread") == 0)
    e->o.gpu_placement = 1;
  health_options ho;
  health_options_init(&ho);
  ho.provider = o->gpu_provider;
  ho.node_id = e->node;
  ho.event_timeout_ms = GPU_EVENT_TIMEOUT_MS;
  ho.cfg.interval_ms =
      o->gpu_sample_interval_ms > 0 ? o->gpu_sample_interval_ms : 5000;
  e->o.gpu_provider = NULL; /* not kept: borrowed from the caller */
  e->gpu_snap = calloc(1, sizeof(*e->gpu_snap));
  if (e->gpu_snap == NULL)
    return sk_error_set(err, SK_ENOMEM, NULL);
  int rc = health_new(&ho, &e->gpu_health, err);
  if (rc != SK_OK)
    return rc;
  health_sample_now(e->gpu_health);
  health_snapshot(e->gpu_health, e->gpu_snap);
  log_write(LOG_INFO, "gpu sampler ready", "provider",
            gpu_provider_name(e->gpu_snap->provider), "#gpus",
            (int64_t)e->gpu_snap->n_gpus, "reason",
            e->gpu_snap->provider_reason, NULL);
  return SK_OK;
}

void sk_engine_options_init(sk_engine_options *o) {
  if (o == NULL)
    return;
  memset(o, 0, sizeof(*o));
  o->lease_ttl_ms = 15000;
  o->poll_interval_ms = 1000;
  o->max_batch = 1024;
  o->breaker_failure_threshold = 5;
  o->breaker_open_ms = 5000;
  o->default_concurrency = 8;
  o->log_level = LOG_INFO;
}

static int check_options(const sk_engine_options *o, sk_error *err) {
  if (o->lease_ttl_ms < 300 || o->lease_ttl_ms > 3600000)
    return sk_error_set(err, SK_EINVAL,
                        "lease_ttl_ms must be between 300 and 3600000");
  if (o->poll_interval_ms < 10 || o->poll_interval_ms > 60000)
    return sk_error_set(err, SK_EINVAL,
                        "poll_interval_ms must be between 10 and 60000");
  if (o->max_batch < 1 || o->max_batch > 65536)
    return sk_error_set(err, SK_EINVAL,
                        "max_batch must be between 1 and 65536");
  if (o->breaker_failure_threshold < 1 || o->breaker_open_ms < 1)
    return sk_error_set(err, SK_EINVAL, "breaker settings must be positive");
  if (o->retention_days < 0 || o->retention_days > 36500)
    return sk_error_set(err, SK_EINVAL,
                        "retention_days must be between 0 and 36500");
  if (o->default_concurrency < 1 || o->default_concurrency > 4096)
    return sk_error_set(err, SK_EINVAL,
                        "default_concurrency must be between 1 and 4096");
  if (o->node_name != NULL &&
      (o->node_name[0] == '\0' || strlen(o->node_name) > SK_NAME_MAX))
    return sk_error_set(err, SK_EINVAL, "node_name must be 1 to %d bytes",
                        SK_NAME_MAX);
  return SK_OK;
}

static char *dup_or_env(const char *v, const char *env) {
  if (v != NULL)
    return strdup(v);
  const char *e = getenv(env);
  return e != NULL && e[0] != '\0' ? strdup(e) : NULL;
}

static int add_bulkhead(struct sk_engine *e, const char *name, int n) {
  bulkhead *b = realloc(e->bulkheads, (e->n_bulkheads + 1) * sizeof(*b));
  if (b == NULL)
    return SK_ENOMEM;
  e->bulkheads = b;
  bulkhead *nb = &b[e->n_bulkheads];
  memset(nb, 0, sizeof(*nb));
  nb->name = strdup(name);
  if (nb->name == NULL)
    return SK_ENOMEM;
  nb->concurrency = n;
  e->n_bulkheads++;
  return SK_OK;
}

static int connect_store(struct sk_engine *e, sk_error *err) {
  if (e->database_url != NULL) {
    e->conninfo = strdup(e->database_url);
    if (e->conninfo == NULL)
      return sk_error_set(err, SK_ENOMEM, NULL);
  } else {
    const char *dir = e->data_dir != NULL ? e->data_dir : DEFAULT_DATA_DIR;
    int rc = pgembed_start(dir, &e->pg, &e->conninfo, err);
    if (rc != SK_OK)
      return rc;
  }
  int rc = db_connect(e->conninfo, &e->query_conn, err);
  if (rc != SK_OK)
    return rc;
  rc = migrate_apply(e->query_conn, NULL, err);
  if (rc != SK_OK)
    return rc;
  return queries_node_heartbeat(e->query_conn, e->node, "{}", err);
}

int sk_engine_open(const sk_engine_options *opts, sk_engine **out,
                   sk_error *err) {
  if (out == NULL)
    return sk_error_set(err, SK_EINVAL, "out must not be NULL");
  *out = NULL;
  sk_engine_options o;
  if (opts != NULL)
    o = *opts;
  else
    sk_engine_options_init(&o);
  int rc = check_options(&o, err);
  if (rc != SK_OK)
    return rc;
  struct sk_engine *e = calloc(1, sizeof(*e));
  if (e == NULL)
    return sk_error_set(err, SK_ENOMEM, NULL);
  e->o = o;
  e->database_url = dup_or_env(o.database_url, "SKALD_DATABASE_URL");
  e->data_dir = dup_or_env(o.data_dir, "SKALD_DATA_DIR");
  e->o.database_url = e->o.data_dir = e->o.node_name = NULL;
  if (o.node_name != NULL) {
    snprintf(e->node, sizeof(e->node), "%s", o.node_name);
  } else {
    char host[64] = "localhost";
    gethostname(host, sizeof(host) - 1);
    snprintf(e->node, sizeof(e->node), "%s-%ld", host, (long)getpid());
  }
  log_set_level(o.log_level);
  /* Without it (out of memory) every commit reads the projections. */
  e->state_cache = state_cache_new(ENGINE_STATE_CACHE_MAX);
  pthread_mutex_init(&e->wf_mu, NULL);
  pthread_mutex_init(&e->q_mu, NULL);
  pthread_mutex_init(&e->mu, NULL);
  pthread_cond_init(&e->gen_cv, NULL);
  atomic_init(&e->state, ENGINE_STATE_IDLE);
  if (getrandom(&e->rng.s, sizeof(e->rng.s), 0) != sizeof(e->rng.s))
    e->rng.s = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
  e->rng.s |= 1;
  rc = add_bulkhead(e, "default", o.default_concurrency);
  if (rc == SK_OK && engine_metrics_new(&e->metrics) != SK_OK)
    rc = sk_error_set(err, SK_ENOMEM, NULL);
  if (rc == SK_OK && o.gpu_sample_interval_ms < 0)
    rc = sk_error_set(err, SK_EINVAL, "gpu_sample_interval_ms must be >= 0");
  if (rc == SK_OK)
    rc = gpu_open(e, &o, err);
  if (rc == SK_OK)
    rc = connect_store(e, err);
  if (rc != SK_OK) {
    if (err != NULL && err->code == SK_OK)
      sk_error_set(err, rc, NULL);
    sk_engine_close(e);
    return rc;
  }
  log_write(LOG_INFO, "engine opened", "node", e->node, "store",
            e->pg != NULL ? "embedded" : "url", NULL);
  *out = e;
  return SK_OK;
}

int sk_engine_add_bulkhead(sk_engine *e, const char *name, int concurrency) {
  if (e == NULL || !def_name_valid(name) || concurrency < 1 ||
      concurrency > 4096)
    return SK_EINVAL;
  if (atomic_load(&e->state) != ENGINE_STATE_IDLE)
    return SK_ESTATE;
  if (engine_find_bulkhead(e, name) != NULL)
    return SK_EEXIST;
  return add_bulkhead(e, name, concurrency);
}

int sk_engine_register_task(sk_engine *e, const char *task_type, sk_task_fn fn,
                            void *udata) {
  if (e == NULL || fn == NULL || !def_name_valid(task_type))
    return SK_EINVAL;
  if (atomic_load(&e->state) != ENGINE_STATE_IDLE)
    return SK_ESTATE;
  if (engine_find_handler(e, task_type) != NULL)
    return SK_EEXIST;
  handler *h = realloc(e->handlers, (e->n_handlers + 1) * sizeof(*h));
  if (h == NULL)
    return SK_ENOMEM;
  e->handlers = h;
  handler *nh = &h[e->n_handlers];
  memset(nh, 0, sizeof(*nh));
  nh->task_type = strdup(task_type);
  if (nh->task_type == NULL)
    return SK_ENOMEM;
  nh->fn = fn;
  nh->udata = udata;
  breaker_init(&nh->br, e->o.breaker_failure_threshold, e->o.breaker_open_ms);
  e->n_handlers++;
  return SK_OK;
}

void engine_q_lock(struct sk_engine *e) {
  pthread_mutex_lock(&e->q_mu);
  if (e->query_conn != NULL && PQstatus(e->query_conn) != CONNECTION_OK)
    PQreset(e->query_conn);
}

void engine_q_unlock(struct sk_engine *e) { pthread_mutex_unlock(&e->q_mu); }

handler *engine_find_handler(struct sk_engine *e, const char *task_type) {
  for (size_t i = 0; i < e->n_handlers; i++)
    if (strcmp(e->handlers[i].task_type, task_type) == 0)
      return &e->handlers[i];
  return NULL;
}

bulkhead *engine_find_bulkhead(struct sk_engine *e, const char *name) {
  for (size_t i = 0; i < e->n_bulkheads; i++)
    if (strcmp(e->bulkheads[i].name, name) == 0)
      return &e->bulkheads[i];
  return NULL;
}

/* ---- workflow registry ------------------------------------------------------
 */

static def_workflow *registry_find(struct sk_engine *e, const char *name,
                                   int version) {
  for (size_t i = 0; i < e->n_wfs; i++)
    if (e->wfs[i]->version == version && strcmp(e->wfs[i]->name, name) == 0)
      return e->wfs[i];
  return NULL;
}

/* Adds wf (taking the caller's reference) unless an equal entry exists;
 * returns the registry's entry with a new reference for the caller. */
static def_workflow *registry_add(struct sk_engine *e, def_workflow *wf) {
  pthread_mutex_lock(&e->wf_mu);
  def_workflow *have = registry_find(e, wf->name, wf->version);
  if (have == NULL && e->n_wfs == e->cap_wfs) {
    size_t cap = e->cap_wfs ? e->cap_wfs * 2 : 16;
    def_workflow **p = realloc(e->wfs, cap * sizeof(*p));
    if (p == NULL) {
      pthread_mutex_unlock(&e->wf_mu);
      def_workflow_unref(wf);
      return NULL;
    }
    e->wfs = p;
    e->cap_wfs = cap;
  }
  if (have == NULL) {
    e->wfs[e->n_wfs++] = wf;
    have = wf;
  } else {
    def_workflow_unref(wf);
  }
  def_workflow_ref(have);
  pthread_mutex_unlock(&e->wf_mu);
  return have;
}

static int load_workflow(struct sk_engine *e, PGconn *c, const char *name,
                         int version, def_workflow **out, sk_error *err) {
  char *spec = NULL;
  int found = 0;
  int rc = queries_load_def(c, name, version, &spec, &found, err);
  if (rc != SK_OK)
    return rc;
  pthread_mutex_lock(&e->wf_mu);
  def_workflow *have = registry_find(e, name, found);
  if (have != NULL)
    def_workflow_ref(have);
  pthread_mutex_unlock(&e->wf_mu);
  if (have != NULL) {
    free(spec);
    *out = have;
    return SK_OK;
  }
  def_problems p;
  def_problems_init(&p);
  def_workflow *wf = NULL;
  rc = spec_parse(spec, strlen(spec), &wf, &p);
  free(spec);
  if (rc != SK_OK) {
    def_problems_to_error(&p, err);
    def_problems_clear(&p);
    return sk_error_set(err, SK_EINTERNAL,
                        "stored definition of %s version %d does not parse",
                        name, found);
  }
  def_problems_clear(&p);
  *out = registry_add(e, wf);
  return *out != NULL ? SK_OK : sk_error_set(err, SK_ENOMEM, NULL);
}

int engine_get_workflow(struct sk_engine *e, PGconn *conn, const char *name,
                        int version, def_workflow **out, sk_error *err) {
  *out = NULL;
  if (version > 0) {
    pthread_mutex_lock(&e->wf_mu);
    def_workflow *have = registry_find(e, name, version);
    if (have != NULL)
      def_workflow_ref(have);
    pthread_mutex_unlock(&e->wf_mu);
    if (have != NULL) {
      *out = have;
      return SK_OK;
    }
  }
  if (conn != NULL)
    return load_workflow(e, conn, name, version, out, err);
  engine_q_lock(e);
  int rc = load_workflow(e, e->query_conn, name, version, out, err);
  engine_q_unlock(e);
  return rc;
}

/* Anything of the spec this engine cannot run is refused at registration,
 * never accepted and then failed at run time. Every step kind, fallback and
 * compensation runs today; what is left is a guard on how deep parallel
 * groups nest (the validator caps it at 4). The walk keeps its own stack,
 * one frame per group level. */
static int check_supported(const def_workflow *wf, sk_error *err) {
  enum { DEPTH = 16 };
  struct {
    const def_step *group; /* NULL: the top level */
    size_t branch, i;
    size_t base; /* path length of the group ("" for the top level) */
  } st[DEPTH];
  char path[512] = "";
  int top = 0;
  st[0].group = NULL;
  st[0].branch = st[0].i = st[0].base = 0;
  while (top >= 0) {
    const def_step *g = st[top].group;
    const def_step *list = g ? g->branches[st[top].branch].steps : wf->steps;
    size_t n = g ? g->branches[st[top].branch].n_steps : wf->n_steps;
    if (st[top].i >= n) {
      if (g != NULL && st[top].branch + 1 < g->n_branches) {
        st[top].branch++;
        st[top].i = 0;
      } else {
        top--;
      }
      continue;
    }
    size_t i = st[top].i++;
    const def_step *s = &list[i];
    size_t len = st[top].base;
    if (g != NULL)
      snprintf(path + len, sizeof(path) - len, "/parallel/%zu/%zu",
               st[top].branch, i);
    else
      snprintf(path, sizeof(path), "/steps/%zu", i);
    if (s->n_branches == 0)
      continue;
    if (top + 1 >= DEPTH) {
      sk_error_set(err, SK_ENOTSUP, "parallel groups nest too deep");
      sk_error_set_path(err, path);
      return SK_ENOTSUP;
    }
    top++;
    st[top].group = s;
    st[top].branch = st[top].i = 0;
    st[top].base = strlen(path);
  }
  return SK_OK;
}

/* Every task type the workflow uses (steps, compensations, fallbacks, in
 * every branch) must have a handler here, and every bulkhead it names must
 * be declared, unless the engine was told other nodes run them. Recursion
 * is bounded by the validator's cap on parallel nesting. */
static int check_steps(struct sk_engine *e, const def_step *steps, size_t n,
                       const char *prefix, sk_error *err) {
  for (size_t i = 0; i < n; i++) {
    const def_step *s = &steps[i];
    char here[256];
    snprintf(here, sizeof(here), "%s/%zu", prefix, i);
    if (s->action.kind != DEF_KIND_PARALLEL &&
        engine_find_bulkhead(e, def_step_bulkhead(s)) == NULL) {
      sk_error_set(err, SK_ENOHANDLER,
                   "bulkhead \"%s\" is not declared on this engine",
                   def_step_bulkhead(s));
      char path[300];
      snprintf(path, sizeof(path), "%s/bulkhead", here);
      sk_error_set_path(err, path);
      return SK_ENOHANDLER;
    }
    const def_action *acts[4] = {&s->action, s->compensate, s->fallback,
                                 s->fallback_compensate};
    const char *where[4] = {"task", "compensate/task", "fallback/task",
                            "fallback/compensate/task"};
    for (int k = 0; k < 4; k++) {
      const def_action *a = acts[k];
      if (a == NULL || a->kind != DEF_KIND_TASK ||
          engine_find_handler(e, a->task_type) != NULL)
        continue;
      char path[300];
      snprintf(path, sizeof(path), "%s/%s", here, where[k]);
      sk_error_set(err, SK_ENOHANDLER,
                   "no handler is registered for task type \"%s\"",
                   a->task_type);
      sk_error_set_path(err, path);
      return SK_ENOHANDLER;
    }
    for (size_t b = 0; b < s->n_branches; b++) {
      char sub[300]; /* here (< 256) + "/parallel/" + a number */
      snprintf(sub, sizeof(sub), "%s/parallel/%zu", here, b);
      int rc = check_steps(e, s->branches[b].steps, s->branches[b].n_steps, sub,
                           err);
      if (rc != SK_OK)
        return rc;
    }
  }
  return SK_OK;
}

static int check_handlers(struct sk_engine *e, const def_workflow *wf,
                          sk_error *err) {
  if (e->o.allow_unknown_task_types)
    return SK_OK;
  return check_steps(e, wf->steps, wf->n_steps, "/steps", err);
}

int engine_register_def(struct sk_engine *e, const def_workflow *src,
                        bool *created, sk_error *err) {
  def_problems p;
  def_problems_init(&p);
  def_validate(src, &p);
  int rc = def_problems_to_error(&p, err);
  def_problems_clear(&p);
  if (rc != SK_OK)
    return rc;
  rc = check_supported(src, err);
  if (rc == SK_OK)
    rc = check_handlers(e, src, err);
  if (rc != SK_OK)
    return rc;
  char *json = NULL;
  if (spec_to_json(src, &json) != SK_OK)
    return sk_error_set(err, SK_ENOMEM, NULL);
  engine_q_lock(e);
  rc = queries_register_def(e->query_conn, src->name, src->version, json,
                            created, err);
  engine_q_unlock(e);
  free(json);
  if (rc != SK_OK)
    return rc;
  def_workflow *copy = def_workflow_clone(src);
  if (copy == NULL)
    return sk_error_set(err, SK_ENOMEM, NULL);
  def_workflow *in = registry_add(e, copy);
  if (in == NULL)
    return sk_error_set(err, SK_ENOMEM, NULL);
  def_workflow_unref(in);
  return SK_OK;
}

/* True if a step of `steps` (or of their branches) runs task_type and has
 * a fallback that runs at once when the breaker is open. */
static bool steps_have_breaker_fallback(const def_step *steps, size_t n,
                                        const char *task_type) {
  for (size_t i = 0; i < n; i++) {
    const def_step *s = &steps[i];
    if (s->fallback != NULL && s->fallback_on_breaker_open &&
        s->action.kind == DEF_KIND_TASK &&
        strcmp(s->action.task_type, task_type) == 0)
      return true;
    for (size_t b = 0; b < s->n_branches; b++)
      if (steps_have_breaker_fallback(s->branches[b].steps,
                                      s->branches[b].n_steps, task_type))
        return true;
  }
  return false;
}

bool engine_type_has_breaker_fallback(struct sk_engine *e,
                                      const char *task_type) {
  bool found = false;
  pthread_mutex_lock(&e->wf_mu);
  for (size_t i = 0; i < e->n_wfs && !found; i++)
    found = steps_have_breaker_fallback(e->wfs[i]->steps, e->wfs[i]->n_steps,
                                        task_type);
  pthread_mutex_unlock(&e->wf_mu);
  return found;
}

/* ---- lifecycle
 * --------------------------------------------------------------- */

static int start_pools(struct sk_engine *e) {
  for (size_t i = 0; i < e->n_bulkheads; i++) {
    bulkhead *b = &e->bulkheads[i];
    if (b->pool != NULL)
      continue;
    int rc = pool_new(b->name, b->concurrency, job_run, e, &b->pool);
    if (rc != SK_OK)
      return rc;
  }
  return SK_OK;
}

static int prepare_run(struct sk_engine *e) {
  engine_state expected = ENGINE_STATE_IDLE;
  if (!atomic_compare_exchange_strong(&e->state, &expected,
                                      ENGINE_STATE_RUNNING))
    return SK_ESTATE;
  int rc = start_pools(e);
  if (rc == SK_OK && e->gpu_snap->provider != GPU_PROVIDER_NONE &&
      !e->gpu_sampling) {
    rc = health_start(e->gpu_health);
    e->gpu_sampling = rc == SK_OK;
  }
  if (rc == SK_OK)
    rc = loop_init(e);
  if (rc != SK_OK) {
    atomic_store(&e->state, ENGINE_STATE_STOPPED);
    return rc;
  }
  pthread_mutex_lock(&e->mu);
  e->loop_running = true;
  pthread_mutex_unlock(&e->mu);
  return SK_OK;
}

static void *engine_thread(void *arg) {
  struct sk_engine *e = arg;
  loop_run(e);
  atomic_store(&e->state, ENGINE_STATE_STOPPED);
  return NULL;
}

int sk_engine_start(sk_engine *e) {
  if (e == NULL)
    return SK_EINVAL;
  int rc = prepare_run(e);
  if (rc != SK_OK)
    return rc;
  if (pthread_create(&e->thread, NULL, engine_thread, e) != 0) {
    atomic_store(&e->state, ENGINE_STATE_STOPPING);
    loop_run(e); /* closes the handles it opened */
    atomic_store(&e->state, ENGINE_STATE_STOPPED);
    return SK_EIO;
  }
  e->thread_started = true;
  return SK_OK;
}

int sk_engine_run(sk_engine *e) {
  if (e == NULL)
    return SK_EINVAL;
  int rc = prepare_run(e);
  if (rc != SK_OK)
    return rc;
  loop_run(e);
  atomic_store(&e->state, ENGINE_STATE_STOPPED);
  return SK_OK;
}

int sk_engine_stop(sk_engine *e) {
  if (e == NULL)
    return SK_EINVAL;
  engine_state expected = ENGINE_STATE_RUNNING;
  if (atomic_compare_exchange_strong(&e->state, &expected,
                                     ENGINE_STATE_STOPPING)) {
    uv_async_send(&e->wake); /* async-signal-safe */
    return SK_OK;
  }
  expected = ENGINE_STATE_IDLE;
  atomic_compare_exchange_strong(&e->state, &expected, ENGINE_STATE_STOPPED);
  return SK_OK;
}

static void close_conn(PGconn **c) {
  if (*c != NULL)
    PQfinish(*c);
  *c = NULL;
}

void sk_engine_close(sk_engine *e) {
  if (e == NULL)
    return;
  sk_engine_stop(e);
  if (e->thread_started)
    pthread_join(e->thread, NULL);
  for (size_t i = 0; i < e->n_bulkheads; i++) {
    pool_free(e->bulkheads[i].pool);
    free(e->bulkheads[i].name);
  }
  free(e->bulkheads);
  for (size_t i = 0; i < e->n_handlers; i++)
    free(e->handlers[i].task_type);
  free(e->handlers);
  for (size_t i = 0; i < e->n_wfs; i++)
    def_workflow_unref(e->wfs[i]);
  free(e->wfs);
  free(e->results);
  free(e->to_release);
  free(e->release_delay);
  free(e->hosts);
  engine_metrics_free(e->metrics);
  health_free(e->gpu_health);
  free(e->gpu_snap);
  for (int i = 0; i < ENGINE_COMMIT_LANES; i++)
    close_conn(&e->commit_conn[i]);
  state_cache_free(e->state_cache);
  close_conn(&e->dequeue_conn);
  close_conn(&e->aux_conn);
  close_conn(&e->listen_conn);
  close_conn(&e->query_conn);
  pgembed_stop(e->pg);
  free(e->conninfo);
  free(e->database_url);
  free(e->data_dir);
  pthread_mutex_destroy(&e->wf_mu);
  pthread_mutex_destroy(&e->q_mu);
  pthread_mutex_destroy(&e->mu);
  pthread_cond_destroy(&e->gen_cv);
  free(e);
}
