-- 0003_projection_text: store the projection's state as text.
--
-- The engine writes sagas.state (the canonical JSON of the fold, which it
-- produced itself) on every transition and reads it back to decide; as
-- jsonb, PostgreSQL parsed every write (lexing, sorting keys) and
-- re-serialised every read, and the binary form crossed the TOAST
-- threshold so each write was also pglz-compressed: together the largest
-- CPU item of a step on the database side (docs/performance.md). As text
-- it is stored as sent. Queries that look inside cast it (state::jsonb).
ALTER TABLE sagas ALTER COLUMN state TYPE text USING state::text;

-- Big states (sagas with many steps or large outputs) are compressed with
-- lz4 where the server has it (much cheaper than pglz); elsewhere the
-- default stays.
DO $$
BEGIN
  ALTER TABLE sagas ALTER COLUMN state SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
  RAISE NOTICE 'lz4 not available, keeping the default TOAST compression';
END $$;

-- Room on each page for the next version of a row: a transition that does
-- not change status or workflow is then a HOT update (no index entries).
ALTER TABLE sagas SET (fillfactor = 70);

-- The ready queue churns: every step inserts a row and deletes it again,
-- so the table is nearly empty and full of dead rows. The default
-- (vacuum once dead rows pass 20 % of the live ones, throttled) leaves
-- hundreds of thousands of them for the dequeue and the fencing DELETE to
-- step over. Vacuum after a fixed number of dead rows, unthrottled.
ALTER TABLE tasks SET (autovacuum_vacuum_scale_factor = 0,
                       autovacuum_vacuum_threshold = 2000,
                       autovacuum_vacuum_cost_delay = 0,
                       autovacuum_analyze_scale_factor = 0,
                       autovacuum_analyze_threshold = 2000);

-- The projection: HOT updates prune dead versions as they go; the rest
-- (a saga's status changing) leave index entries for vacuum.
ALTER TABLE sagas SET (autovacuum_vacuum_scale_factor = 0.05,
                       autovacuum_vacuum_cost_delay = 0);

-- The one-round-trip group commit (docs/performance.md): a node decides on
-- the projections it holds in memory and sends its checks and its writes
-- together; each check asserts what the node assumed (the rows' last_seq,
-- the leases it fences, the idempotency keys it claims) and stops the
-- transaction, before anything is written, when the database disagrees.
-- SQLSTATE SK001 tells the engine to redo the commit the careful way.
CREATE FUNCTION skald_expect(ok boolean, what text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  IF ok IS NOT TRUE THEN
    RAISE EXCEPTION USING ERRCODE = 'SK001',
      MESSAGE = what || ' changed since this node last saw them';
  END IF;
  RETURN true;
END $$;

-- Retention deletes a purged saga's idempotency keys by saga id.
CREATE INDEX saga_idempotency_by_saga ON saga_idempotency (saga_id);
