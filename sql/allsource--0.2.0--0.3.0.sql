-- AllSource 0.2.0 → 0.3.0. A released script is never edited: the next
-- change goes into the next script.
\echo Use "ALTER EXTENSION allsource UPDATE TO '0.3.0'" to load this file. \quit

-- Hot standbys: the primary's watermark publisher writes its watermark here;
-- watermark() on a standby returns it.
CREATE TABLE allsource.published_watermark (
    position     bigint      NOT NULL,
    published_at timestamptz NOT NULL,
    one_row      boolean     PRIMARY KEY DEFAULT true CHECK (one_row)
);
INSERT INTO allsource.published_watermark (position, published_at) VALUES (0, now());
COMMENT ON TABLE allsource.published_watermark IS
    'The primary''s watermark and when it last moved, for hot standbys: watermark() on a standby returns it. Written by the watermark publisher only.';
CREATE TRIGGER refuse_direct_write BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON allsource.published_watermark
    FOR EACH STATEMENT EXECUTE FUNCTION allsource.refuse_direct_write();
REVOKE ALL ON allsource.published_watermark FROM PUBLIC;
GRANT SELECT ON allsource.published_watermark TO allsource_reader, allsource_writer;
COMMENT ON FUNCTION allsource.watermark() IS
    'The highest position below which every event is committed or will never exist: readers never read past it. On a hot standby, the primary''s as last replayed (allsource.published_watermark).';

-- For a router over several nodes (sql/router.sql): a ticket does not say
-- which node issued it, so the router asks every node at once. A node that did
-- not issue it must answer without an error: PL/Proxy fails the whole call on
-- any node's error.
CREATE FUNCTION allsource._await_ticket_if_issued(ticket bigint, timeout_ms int)
RETURNS TABLE (status text, version bigint, "position" bigint, refusal text)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY SELECT a.status, a.version, a.position, NULL::text
                 FROM allsource.await_ticket(ticket, timeout_ms) a;
EXCEPTION WHEN invalid_parameter_value THEN
    -- Never issued, issued before the last restart, or no longer kept.
    RETURN QUERY SELECT NULL::text, NULL::bigint, NULL::bigint, SQLERRM;
END
$$;
COMMENT ON FUNCTION allsource._await_ticket_if_issued(bigint, int) IS
    'await_ticket for the router (sql/router.sql): a ticket this server refuses (22023) gives a row with status NULL and the refusal instead of an error.';
