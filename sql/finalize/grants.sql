-- Who may call the functions written in Rust.

-- Writing is for writers: the functions that write run as the extension's
-- owner (SECURITY DEFINER, pinned search_path), so callers need no table
-- privileges, only these grants.
DO $grants$
DECLARE
    writes text := 'allsource.append(text, text, jsonb, jsonb, bigint, uuid, text[]), '
                   'allsource.append_batch(text, jsonb, bigint), '
                   'allsource.append_if(jsonb, jsonb, bigint, text), '
                   'allsource.enqueue(text, text, jsonb, jsonb, bigint, uuid), '
                   'allsource.await_ticket(bigint, int), '
                   'allsource.delete_stream(text, boolean), '
                   'allsource.save_snapshot(text, bigint, jsonb)';
BEGIN
    EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', writes);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO allsource_writer', writes);
END
$grants$;
-- Resetting the statistics is the owner's: it may grant it.
REVOKE EXECUTE ON FUNCTION allsource.stats_reset() FROM PUBLIC;
-- Verification reads the erased events' digests: readers and writers only.
REVOKE EXECUTE ON FUNCTION allsource.verify_stream(text), allsource.verify_all(),
    allsource.verify_anchor(text, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource.verify_stream(text), allsource.verify_all(),
    allsource.verify_anchor(text, bigint, bytea)
TO allsource_reader, allsource_writer;
-- Every tenant's streams at once: for auditors (and the owner) only.
REVOKE EXECUTE ON FUNCTION allsource.verify_all_tenants() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource.verify_all_tenants() TO allsource_auditor;
GRANT USAGE ON SCHEMA allsource TO allsource_auditor;
