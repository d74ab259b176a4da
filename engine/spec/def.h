/*
 * def.h — the one definition model of a workflow.
 *
 * The SDK builder (sdk/) and the JSON spec parser (spec_json.c) both produce
 * a def_workflow; one validator (validate.c) checks it; the decider
 * (saga/decide.c) reads it. A registered definition is immutable and shared
 * by reference count (def_workflow_ref/unref) across threads.
 *
 * All strings are heap-allocated and owned by the structure that holds them.
 * JSON-valued fields (inputs, headers, bodies) are held as compact JSON text.
 */
#ifndef SKALD_SPEC_DEF_H
#define SKALD_SPEC_DEF_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Kinds of step (and of compensation / fallback actions). */
#define DEF_KIND_MAP(X)                                                        \
  X(TASK, "task")                                                              \
  X(HTTP, "http")                                                              \
  X(SLEEP, "sleep")                                                            \
  X(PARALLEL, "parallel")

typedef enum def_kind {
#define DEF_KIND_ENUM(name, str) DEF_KIND_##name,
  DEF_KIND_MAP(DEF_KIND_ENUM)
#undef DEF_KIND_ENUM
} def_kind;

const char *def_kind_name(def_kind k);

typedef enum def_on_failure {
  DEF_ON_FAILURE_COMPENSATE = 0,
  DEF_ON_FAILURE_PAUSE = 1
} def_on_failure;

/* Which retry fields were given explicitly (for merging with defaults). */
enum {
  DEF_RETRY_MAX_ATTEMPTS = 1u << 0,
  DEF_RETRY_INITIAL = 1u << 1,
  DEF_RETRY_COEFFICIENT = 1u << 2,
  DEF_RETRY_MAX_INTERVAL = 1u << 3,
  DEF_RETRY_JITTER = 1u << 4,
  DEF_RETRY_NON_RETRYABLE = 1u << 5
};

typedef struct def_retry {
  unsigned set;                 /* DEF_RETRY_* bits of the fields given */
  int max_attempts;             /* ≥ 1; 0 = unlimited (compensation default) */
  int64_t initial_interval_ms;  /* ≥ 0 */
  double backoff_coefficient;   /* ≥ 1 */
  int64_t max_interval_ms;      /* ≥ initial_interval_ms */
  double jitter;                /* 0..1 */
  char **non_retryable_errors;
  size_t n_non_retryable;
} def_retry;

/* Built-in policies when neither step nor workflow defaults set a field. */
#define DEF_DEFAULT_MAX_ATTEMPTS 3
#define DEF_DEFAULT_INITIAL_INTERVAL_MS 100
#define DEF_DEFAULT_BACKOFF_COEFFICIENT 2.0
#define DEF_DEFAULT_MAX_INTERVAL_MS 10000
#define DEF_DEFAULT_JITTER 0.2
#define DEF_DEFAULT_TIMEOUT_MS 30000
/* Compensations: unlimited attempts, capped backoff (workflow-spec.md). */
#define DEF_DEFAULT_COMP_MAX_INTERVAL_MS 60000

typedef struct def_http {
  char *method;        /* GET POST PUT PATCH DELETE HEAD */
  char *url;           /* may contain templates */
  char *headers_json;  /* JSON object text or NULL */
  char *body_json;     /* templated JSON text or NULL */
  int *success_codes;  /* NULL = any 2xx */
  size_t n_success_codes;
} def_http;

/* Something that runs: a step's forward action, a compensation or a
 * fallback. kind is TASK or HTTP for compensations and fallbacks. */
typedef struct def_action {
  def_kind kind;
  char *task_type;     /* TASK */
  def_http http;       /* HTTP */
  int64_t sleep_ms;    /* SLEEP */
  char *input_json;    /* templated JSON text; NULL = the default input */
  bool has_retry;
  def_retry retry;
  int64_t timeout_ms;  /* 0 = inherit */
} def_action;

struct def_step;

typedef struct def_branch {
  struct def_step *steps;
  size_t n_steps;
} def_branch;

typedef struct def_step {
  char *name;
  def_action action;           /* the forward action (kind = the step kind) */
  def_action *compensate;      /* NULL: nothing to undo */
  def_action *fallback;        /* NULL: none */
  bool fallback_on_breaker_open;
  def_action *fallback_compensate; /* overrides compensate after a fallback */
  char *bulkhead;              /* NULL = "default" */
  int gpus;                    /* resources */
  int64_t gpu_memory_mb;
  bool compensate_on_failure;
  def_branch *branches;        /* PARALLEL only */
  size_t n_branches;
} def_step;

typedef struct def_workflow {
  atomic_int refs;
  char *name;
  int version;
  char *description;
  def_on_failure on_failure;
  int64_t timeout_ms;          /* whole saga; 0 = none */
  bool has_default_retry;
  def_retry default_retry;
  int64_t default_timeout_ms;  /* 0 = DEF_DEFAULT_TIMEOUT_MS */
  def_step *steps;
  size_t n_steps;
} def_workflow;

/* A new, empty definition with refs = 1. NULL on OOM. */
def_workflow *def_workflow_new(void);
/* Deep copy (refs = 1). NULL on OOM. */
def_workflow *def_workflow_clone(const def_workflow *wf);
def_workflow *def_workflow_ref(def_workflow *wf);
/* Drops a reference; frees on the last one. NULL is ok. */
void def_workflow_unref(def_workflow *wf);

/* Frees the contents of (not the pointer to) these. NULL is ok. */
void def_step_clear(def_step *s);
void def_action_clear(def_action *a);
void def_retry_clear(def_retry *r);
int def_retry_copy(def_retry *dst, const def_retry *src);

/* Looks a top-level step up by name; -1 if absent. */
int def_step_index(const def_workflow *wf, const char *name);

/* The effective retry policy of a step's forward action (is_comp = false)
 * or of its compensation (is_comp = true): step fields, then workflow
 * defaults, then the built-ins above. Every field is set in *out; for a
 * compensation, max_attempts defaults to 0 (unlimited) and the interval cap
 * to DEF_DEFAULT_COMP_MAX_INTERVAL_MS unless given. non_retryable_errors in
 * *out are borrowed from the definition (do not clear *out). */
void def_effective_retry(const def_workflow *wf, const def_step *s,
                         bool is_comp, def_retry *out);
/* The effective timeout of a step's forward action or compensation (ms). */
int64_t def_effective_timeout(const def_workflow *wf, const def_step *s,
                              bool is_comp);
/* The bulkhead a step runs in ("default" if unset). Borrowed. */
const char *def_step_bulkhead(const def_step *s);

/* True if `type` is one of the policy's non-retryable error types. */
bool def_retry_is_non_retryable(const def_retry *r, const char *type);

/* True if the name matches [a-z0-9_.-]{1,128}. */
bool def_name_valid(const char *name);

#endif /* SKALD_SPEC_DEF_H */
