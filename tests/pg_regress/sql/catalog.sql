-- catalog: the interface as PostgreSQL's catalog describes it, so that a new,
-- renamed or retyped function, argument, column, setting or grant shows up
-- here. (Owners are not shown: they are whoever ran CREATE EXTENSION.)
\set VERBOSITY default
\set SHOW_CONTEXT never

-- The functions of the interface: arguments with their names and defaults,
-- results, volatility, who they run as, and the description \df+ shows.
\x on
SELECT p.proname AS function,
       pg_get_function_arguments(p.oid) AS arguments,
       pg_get_function_result(p.oid) AS result,
       CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' ELSE 'volatile' END AS volatility,
       CASE WHEN p.prosecdef THEN 'definer' ELSE 'invoker' END AS security,
       array_to_string(p.proconfig, ', ') AS settings,
       obj_description(p.oid, 'pg_proc') AS description
FROM pg_proc p
WHERE p.pronamespace = 'allsource'::regnamespace AND p.proname !~ '^_' AND p.prokind = 'f'
  AND p.prorettype <> 'trigger'::regtype
ORDER BY p.proname, pg_get_function_identity_arguments(p.oid);
\x off

-- Internal helpers and the guard's trigger function (not part of the
-- interface; listed so that one appearing or disappearing is noticed).
SELECT p.oid::regprocedure AS helper, pg_get_function_result(p.oid) AS result
FROM pg_proc p
WHERE p.pronamespace = 'allsource'::regnamespace
  AND (p.proname ~ '^_' OR p.prokind <> 'f' OR p.prorettype = 'trigger'::regtype)
ORDER BY 1::text;

-- Who may execute what (PUBLIC, the two roles, and a role with neither).
SELECT p.proname AS function,
       has_function_privilege('regress_nobody', p.oid, 'EXECUTE') AS public,
       has_function_privilege('allsource_reader', p.oid, 'EXECUTE') AS reader,
       has_function_privilege('allsource_writer', p.oid, 'EXECUTE') AS writer
FROM pg_proc p
WHERE p.pronamespace = 'allsource'::regnamespace AND p.proname !~ '^_' AND p.prokind = 'f'
  AND p.prorettype <> 'trigger'::regtype
ORDER BY p.proname;

-- Tables, columns, indexes, triggers and policies.
\d allsource.streams
\d allsource.events
\d allsource.events_p0
\d allsource.event_ids
\d allsource.snapshots
\d allsource.erased_events
\d allsource.event_position
SELECT c.relname AS table_name, obj_description(c.oid, 'pg_class') AS description
FROM pg_class c
WHERE c.relnamespace = 'allsource'::regnamespace AND c.relkind IN ('r', 'p') AND c.relname !~ '^events_p[0-9]'
ORDER BY 1;
SELECT count(*) AS partitions FROM pg_inherits WHERE inhparent = 'allsource.events'::regclass;

-- Table and sequence privileges of the roles (nobody else has any).
SELECT c.relname AS relation, a.privilege_type AS privilege, r.rolname AS grantee
FROM pg_class c
CROSS JOIN LATERAL aclexplode(c.relacl) a
JOIN pg_roles r ON r.oid = a.grantee
WHERE c.relnamespace = 'allsource'::regnamespace AND a.grantee <> c.relowner
ORDER BY 1, 3, 2;
SELECT count(*) AS grants_to_public
FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
WHERE c.relnamespace = 'allsource'::regnamespace AND a.grantee = 0;
SELECT has_schema_privilege('allsource_reader', 'allsource', 'USAGE') AS reader_usage,
       has_schema_privilege('allsource_writer', 'allsource', 'USAGE') AS writer_usage,
       has_schema_privilege('regress_nobody', 'allsource', 'USAGE') AS public_usage;
-- The roles CREATE EXTENSION created.
SELECT rolname, rolsuper, rolinherit, rolcanlogin FROM pg_roles WHERE rolname ~ '^allsource_' ORDER BY 1;

-- The settings, as SHOW and pg_settings describe them.
\x on
SELECT name, setting, unit, context, vartype, min_val, max_val, short_desc, extra_desc
FROM pg_settings WHERE name ~ '^allsource\.' ORDER BY name;
\x off
