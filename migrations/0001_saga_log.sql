-- 0001_saga_log: the event-sourced saga log, its projection, the ready
-- queue and the node registry. See DESIGN.md "The saga log".
--
-- Citus note: every saga table is keyed by saga_id (or, for lookups by
-- another key, has its own table keyed by that key), so each can be
-- distributed by its first key column; nothing here needs a unique index
-- that spans shards.

-- Workflow definitions, immutable per (name, version). spec is the
-- canonical JSON of the definition; spec_sha256 detects a different body.
CREATE TABLE workflow_defs (
    name        text        NOT NULL,
    version     int         NOT NULL CHECK (version > 0),
    spec        jsonb       NOT NULL,
    spec_sha256 text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- The projection and checkpoint of each saga: always equal to the fold of
-- its events (state is the canonical JSON of that fold). The other columns
-- are copies of fields of state for filtering and listing.
CREATE TABLE sagas (
    id          uuid        PRIMARY KEY,
    workflow    text        NOT NULL,
    version     int         NOT NULL,
    status      text        NOT NULL,
    last_seq    bigint      NOT NULL,
    state       jsonb       NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
-- Listing is newest first by id: ids are UUIDv7, ordered by creation time,
-- so keyset pagination needs nothing else.
CREATE INDEX sagas_by_status ON sagas (status, id DESC);
CREATE INDEX sagas_by_workflow ON sagas (workflow, id DESC);

-- Run idempotency: one saga per (workflow, key), ever.
CREATE TABLE saga_idempotency (
    workflow    text        NOT NULL,
    key         text        NOT NULL,
    saga_id     uuid        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow, key)
);

-- The append-only log. The primary key makes a second writer of event N
-- of a saga fail (optimistic concurrency).
CREATE TABLE saga_events (
    saga_id     uuid        NOT NULL,
    seq         bigint      NOT NULL CHECK (seq > 0),
    type        text        NOT NULL,
    step        int,
    attempt     int,
    node        text,
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (saga_id, seq)
);

-- The ready queue: one row per runnable step or compensation.
-- available_at is when it may be leased: the retry backoff or timer while
-- unleased, the lease expiry while leased (so an expired lease is simply a
-- due task again, taken by any node). lease_token fences results.
CREATE TABLE tasks (
    saga_id          uuid        NOT NULL,
    step             int         NOT NULL,
    kind             smallint    NOT NULL,          -- 0 fwd, 1 comp
    attempt          int         NOT NULL,
    workflow         text        NOT NULL,
    step_name        text        NOT NULL,
    action           text        NOT NULL,          -- task | sleep | http
    task_type        text        NOT NULL,
    bulkhead         text        NOT NULL,
    available_at     timestamptz NOT NULL,
    input            jsonb       NOT NULL,
    timeout_ms       bigint      NOT NULL,
    gpus             int         NOT NULL DEFAULT 0,
    gpu_memory_mb    bigint      NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_token      bigint,
    leased_at        timestamptz,
    deliveries       int         NOT NULL DEFAULT 0,
    cancel_requested boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_id, step, kind)
);
CREATE INDEX tasks_ready ON tasks (bulkhead, available_at);

CREATE SEQUENCE lease_token_seq;

-- Engine processes and remote workers.
CREATE TABLE nodes (
    name         text        PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    capacity     jsonb       NOT NULL DEFAULT '{}',
    info         jsonb       NOT NULL DEFAULT '{}'
);
