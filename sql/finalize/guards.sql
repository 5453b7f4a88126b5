-- Direct writes are refused, superusers included: only the extension's own
-- functions write these tables. Statement-level triggers on every table and
-- every partition (a partition can be written directly). Their rows are
-- dumped with the extension (pg_extension_config_dump).
DO $guards$
DECLARE
    target regclass;
BEGIN
    FOR target IN
        SELECT 'allsource.streams'::regclass
        UNION ALL SELECT 'allsource.event_ids'::regclass
        UNION ALL SELECT 'allsource.event_tags'::regclass
        UNION ALL SELECT 'allsource.erased_events'::regclass
        UNION ALL SELECT 'allsource.snapshots'::regclass
        UNION ALL SELECT 'allsource.events'::regclass
        UNION ALL SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'allsource.events'::regclass
    LOOP
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER refuse_direct_write BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
            'FOR EACH STATEMENT EXECUTE FUNCTION allsource.refuse_direct_write()', target);
        PERFORM pg_catalog.pg_extension_config_dump(target, '');
    END LOOP;
END
$guards$;
SELECT pg_catalog.pg_extension_config_dump('allsource.event_position', '');
-- Guarded too, but not dumped: a restored primary publishes its own watermark.
CREATE TRIGGER refuse_direct_write BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON allsource.published_watermark
    FOR EACH STATEMENT EXECUTE FUNCTION allsource.refuse_direct_write();
REVOKE ALL ON ALL TABLES IN SCHEMA allsource FROM PUBLIC;
-- The trigger function is written in Rust, without pgrx's search_path attribute.
ALTER FUNCTION allsource.refuse_direct_write() SET search_path = pg_catalog, pg_temp;
