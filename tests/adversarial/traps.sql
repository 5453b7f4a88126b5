-- Run as the hostile role eve, who owns the database and may create in
-- schema public. For every pg_catalog function, aggregate and operator whose
-- name the extension's source mentions (psql variable :names, a text[]
-- literal), eve creates look-alikes that record who ran them in eve.trap_log:
--   * the same argument types, in every schema she can put on a path;
--   * argument types a call would prefer to pg_catalog's own (text for
--     regclass, concrete types for anyelement, anyarray, "any" …), which win
--     even with pg_catalog first on the path;
-- then puts her schemas before pg_catalog in the database's search_path and
-- grants everything to PUBLIC. Whatever the extension runs that resolves a
-- name through a path ends up in her code.
\set ON_ERROR_STOP on
SET search_path = pg_catalog;

CREATE SCHEMA eve;
CREATE TABLE eve.trap_log (who name NOT NULL, what text NOT NULL, at timestamptz NOT NULL DEFAULT pg_catalog.now());
GRANT USAGE ON SCHEMA eve TO PUBLIC;
GRANT INSERT ON eve.trap_log TO PUBLIC;
CREATE FUNCTION eve.sprung(what text) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO eve.trap_log (who, what) VALUES (current_user, what) $$;
GRANT EXECUTE ON FUNCTION eve.sprung(text) TO PUBLIC;

-- "$user" of the superuser (and of the workers, who connect as it), of the
-- worker role and of the test's roles: schemas of those names are on their
-- default paths.
CREATE SCHEMA postgres;
CREATE SCHEMA allsource_worker;
CREATE SCHEMA writer_a;
CREATE SCHEMA reader;

CREATE FUNCTION eve.lay_traps(names text[]) RETURNS int LANGUAGE plpgsql AS $lay$
DECLARE
    -- Concrete stand-ins for the polymorphic types: (element, array).
    concrete text[][] := ARRAY[['text', 'text[]'], ['integer', 'integer[]'], ['bigint', 'bigint[]'],
                               ['uuid', 'uuid[]'], ['bytea', 'bytea[]'], ['jsonb', 'jsonb[]'],
                               ['boolean', 'boolean[]'], ['tid', 'tid[]']];
    schemas text[] := ARRAY['public', 'postgres', 'allsource_worker', 'writer_a', 'reader'];
    f record;
    o record;
    variant int;
    target text;
    args text[];
    ret text;
    laid int := 0;
    signature text;
BEGIN
    FOR f IN
        SELECT p.oid, p.proname, p.prokind, p.proretset, p.prorettype::regtype::text AS rettype,
               ARRAY(SELECT t::regtype::text FROM pg_catalog.unnest(p.proargtypes) t) AS argtypes,
               a.aggtranstype::regtype::text AS transtype
        FROM pg_catalog.pg_proc p LEFT JOIN pg_catalog.pg_aggregate a ON a.aggfnoid = p.oid
        WHERE p.pronamespace = 'pg_catalog'::regnamespace
          AND p.proname = ANY (names)
          AND p.prokind IN ('f', 'a')
          AND (p.proargmodes IS NULL OR NOT p.proargmodes && ARRAY['o', 'b', 't']::"char"[])
          AND p.prorettype::regtype::text NOT IN ('internal', 'cstring', 'trigger', 'event_trigger', 'record',
                  'language_handler', 'fdw_handler', 'index_am_handler', 'tsm_handler', 'table_am_handler')
          AND NOT EXISTS (SELECT FROM pg_catalog.unnest(p.proargtypes) t
                          WHERE t::regtype::text IN ('internal', 'cstring', 'anyrange', 'anymultirange',
                                 'anycompatiblerange', 'anycompatiblemultirange', 'anyenum'))
    LOOP
        -- Variant 0: the same types; 1..n: a concrete type for every polymorphic one.
        FOR variant IN 0 .. pg_catalog.array_length(concrete, 1) LOOP
            args := ARRAY(SELECT CASE
                    WHEN variant = 0 THEN t
                    WHEN t IN ('anyelement', 'anynonarray', 'anycompatible', 'anycompatiblenonarray', '"any"')
                        THEN concrete[variant][1]
                    WHEN t IN ('anyarray', 'anycompatiblearray') THEN concrete[variant][2]
                    WHEN t = 'regclass' THEN 'text'
                    ELSE t END
                FROM pg_catalog.unnest(f.argtypes) WITH ORDINALITY AS a(t, n) ORDER BY n);
            IF variant > 0 AND args = f.argtypes THEN
                CONTINUE;  -- nothing polymorphic: variant 0 covers it
            END IF;
            ret := CASE
                WHEN f.rettype IN ('anyelement', 'anynonarray', 'anycompatible', 'anycompatiblenonarray')
                    THEN coalesce(concrete[nullif(variant, 0)][1], f.rettype)
                WHEN f.rettype IN ('anyarray', 'anycompatiblearray') THEN coalesce(concrete[nullif(variant, 0)][2], f.rettype)
                ELSE f.rettype END;
            IF ret LIKE 'any%' OR EXISTS (SELECT FROM pg_catalog.unnest(args) t WHERE t LIKE 'any%' OR t = '"any"') THEN
                CONTINUE;  -- still polymorphic (variant 0 of a polymorphic function): not creatable as SQL
            END IF;
            signature := pg_catalog.format('%s(%s)', f.proname, pg_catalog.array_to_string(args, ', '));
            FOREACH target IN ARRAY schemas LOOP
                BEGIN
                    IF f.prokind = 'a' THEN
                        EXECUTE pg_catalog.format(
                            'CREATE FUNCTION %I.%I(%s) RETURNS %s LANGUAGE plpgsql AS %L',
                            target, 'trap_state_' || f.oid || '_' || variant,
                            pg_catalog.array_to_string(ARRAY[ret] || args, ', '), ret,
                            pg_catalog.format('BEGIN PERFORM eve.sprung(%L); RETURN NULL; END', target || '.' || signature));
                        EXECUTE pg_catalog.format('CREATE AGGREGATE %I.%I(%s) (SFUNC = %I.%I, STYPE = %s)',
                            target, f.proname, CASE WHEN args = '{}' THEN '*' ELSE pg_catalog.array_to_string(args, ', ') END,
                            target, 'trap_state_' || f.oid || '_' || variant, ret);
                    ELSE
                        EXECUTE pg_catalog.format(
                            'CREATE FUNCTION %I.%I(%s) RETURNS %s%s LANGUAGE plpgsql AS %L',
                            target, f.proname, pg_catalog.array_to_string(args, ', '),
                            CASE WHEN f.proretset THEN 'SETOF ' ELSE '' END, ret,
                            pg_catalog.format('BEGIN PERFORM eve.sprung(%L); RETURN%s; END', target || '.' || signature,
                                   CASE WHEN f.proretset OR ret = 'void' THEN '' ELSE ' NULL' END));
                    END IF;
                    laid := laid + 1;
                EXCEPTION WHEN duplicate_function OR invalid_function_definition OR datatype_mismatch
                               OR feature_not_supported OR wrong_object_type OR invalid_object_definition THEN
                    NULL;  -- a look-alike of this shape exists already, or cannot be made
                END;
            END LOOP;
        END LOOP;
    END LOOP;

    -- Operators: the same name and types, one function per operator.
    FOR o IN
        SELECT op.oid, op.oprname, op.oprleft::regtype::text AS l, op.oprright::regtype::text AS r,
               op.oprresult::regtype::text AS res
        FROM pg_catalog.pg_operator op
        WHERE op.oprnamespace = 'pg_catalog'::regnamespace AND op.oprleft <> 0 AND op.oprright <> 0
          AND op.oprleft::regtype::text IN ('text', 'integer', 'bigint', 'uuid', 'bytea', 'jsonb', 'boolean', 'tid',
                                            'timestamp with time zone', 'oid', 'name', '"char"', 'regclass', 'text[]')
          AND op.oprright::regtype::text IN ('text', 'integer', 'bigint', 'uuid', 'bytea', 'jsonb', 'boolean', 'tid',
                                             'timestamp with time zone', 'oid', 'name', '"char"', 'regclass', 'text[]')
    LOOP
        FOREACH target IN ARRAY schemas LOOP
            BEGIN
                EXECUTE pg_catalog.format('CREATE FUNCTION %I.%I(%s, %s) RETURNS %s LANGUAGE plpgsql AS %L',
                    target, 'trap_operator_' || o.oid, o.l, o.r, o.res,
                    pg_catalog.format('BEGIN PERFORM eve.sprung(%L); RETURN NULL; END',
                           pg_catalog.format('%s.OPERATOR(%s)(%s, %s)', target, o.oprname, o.l, o.r)));
                EXECUTE pg_catalog.format('CREATE OPERATOR %I.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %I.%I)',
                    target, o.oprname, o.l, o.r, target, 'trap_operator_' || o.oid);
                laid := laid + 1;
            EXCEPTION WHEN duplicate_function OR duplicate_object OR invalid_function_definition
                           OR invalid_object_definition OR syntax_error THEN
                NULL;
            END;
        END LOOP;
    END LOOP;
    RETURN laid;
END
$lay$;

SELECT eve.lay_traps(:'names'::text[]) AS traps_laid \gset
\echo eve laid :traps_laid traps
GRANT USAGE ON SCHEMA postgres, allsource_worker, writer_a, reader TO PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public, postgres, allsource_worker, writer_a, reader TO PUBLIC;
-- Her schemas first, for every session and every worker of this database.
SELECT pg_catalog.format('ALTER DATABASE %I SET search_path = "$user", public, postgres, pg_catalog', pg_catalog.current_database()) \gexec
