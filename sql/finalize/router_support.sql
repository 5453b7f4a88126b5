-- For a router over several nodes (sql/router.sql): a ticket does not say
-- which node issued it, so the router asks every node at once. A node that did
-- not issue it must answer without an error: PL/Proxy fails the whole call on
-- any node's error.
CREATE FUNCTION allsource._await_ticket_if_issued(ticket bigint, timeout_ms int)
RETURNS TABLE (status text, version bigint, "position" bigint, refusal text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT a.status, a.version, a.position, NULL::text
                 FROM allsource.await_ticket(ticket, timeout_ms) a;
EXCEPTION WHEN invalid_parameter_value THEN
    -- Never issued, issued before the last restart, or no longer kept.
    RETURN QUERY SELECT NULL::text, NULL::bigint, NULL::bigint, SQLERRM;
END
$$;
REVOKE EXECUTE ON FUNCTION allsource._await_ticket_if_issued(bigint, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource._await_ticket_if_issued(bigint, int) TO allsource_writer;
COMMENT ON FUNCTION allsource._await_ticket_if_issued(bigint, int) IS
    'await_ticket for the router (sql/router.sql): a ticket this server refuses (22023) gives a row with status NULL and the refusal instead of an error.';
