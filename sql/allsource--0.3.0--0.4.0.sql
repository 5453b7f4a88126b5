-- AllSource 0.3.0 → 0.4.0. A released script is never edited: the next
-- change goes into the next script. (Not released yet: sql/releases.tsv has
-- no 0.4.0 line, so changes still go here.)
\echo Use "ALTER EXTENSION allsource UPDATE TO '0.4.0'" to load this file. \quit

-- Ingest workers (issue 16, items 8 and 9): ingest_workers() also reports the
-- locks a worker gave up waiting for (allsource.ingest_lock_timeout_ms) and
-- who held the last one. New columns: DROP and CREATE.
DROP FUNCTION allsource.ingest_workers();
CREATE FUNCTION allsource.ingest_workers() RETURNS TABLE (
	"worker" INT,
	"pid" INT,
	"state" TEXT,
	"queued_events" bigint,
	"batches" bigint,
	"events" bigint,
	"last_batch_size" INT,
	"lock_timeouts" bigint,
	"blocked_by" INT,
	"blocked_by_xid" bigint,
	"blocked_at" timestamp with time zone
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'ingest_workers_wrapper';
COMMENT ON FUNCTION allsource.ingest_workers() IS
    'What each ingest worker does: pid, state, events queued in its lane, batches and events written, last batch size, and the locks it gave up waiting for: how often, and the last holder (pid, or NULL for a prepared transaction; xid) and when.';
