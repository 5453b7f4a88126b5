#!/usr/bin/env bash
# The standing adversarial suite. A hostile role, eve, owns the database and
# may create in schema public. She lays look-alikes of every function,
# aggregate and operator the extension's source names (tests/adversarial/traps.sql)
# in every schema that is on someone's path, and puts those schemas before
# pg_catalog in the database's search_path. Then the superuser, writers of
# two tenants, a reader and the ingest workers use every function of the
# extension (exercise.sql), and the suite checks that none of eve's code ran,
# that she is no superuser, and that every function of the extension was
# called (so a function added later without being exercised here fails).
# Also: CREATE EXTENSION refuses a schema "allsource" another role owns or
# may create in, and eve may neither write nor reset the statistics.
#   tests/adversarial/run.sh [MAJOR]   PostgreSQL MAJOR (15 by default); AllSource installed
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
use_postgres "${1:-15}"

data=$STATE_DIR/adversarial-test
cluster_stop "$data"
rm -rf "$data"
port=$(free_port $((TEST_PORT + 40)))
settings="allsource.database = 'hostile'
track_functions = 'all'
fsync = off"
cluster_start "$data" "$port" "$settings"
trap 'cluster_stop "$data"' EXIT
psql_as() { # ROLE DATABASE psql-arguments...
    local role=$1 database=$2
    shift 2
    psql --no-psqlrc --quiet --tuples-only --no-align --host=localhost --port="$port" \
        --username="$role" --dbname="$database" "$@"
}
fail() { echo "adversarial suite: $*" >&2; exit 1; }
# expect_error SQLSTATE ROLE DATABASE SQL: the statement must fail with that SQLSTATE.
expect_error() {
    local code=$1 role=$2 database=$3 sql=$4 out
    if out=$(PGOPTIONS="-c search_path=pg_catalog" psql_as "$role" "$database" --set=VERBOSITY=verbose \
        --set=ON_ERROR_STOP=1 -c "$sql" 2>&1); then
        fail "$role could run: $sql"
    fi
    grep -q "ERROR:  $code:" <<<"$out" || fail "expected SQLSTATE $code from: $sql, got: $out"
}

psql_as postgres postgres --set=ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE ROLE eve LOGIN;
CREATE DATABASE hostile OWNER eve;
CREATE DATABASE squat OWNER eve;
SQL
# CREATE EXTENSION creates allsource_reader and allsource_writer.
psql_as postgres hostile --set=ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE EXTENSION allsource;
CREATE ROLE writer_a LOGIN IN ROLE allsource_writer;
CREATE ROLE writer_b LOGIN IN ROLE allsource_writer;
CREATE ROLE reader LOGIN IN ROLE allsource_reader;
SQL

log "adversarial: CREATE EXTENSION refuses a schema \"allsource\" it could not trust"
psql_as eve squat -c "CREATE SCHEMA allsource"
expect_error 42P06 postgres squat "CREATE EXTENSION allsource"
psql_as eve squat -c "DROP SCHEMA allsource"
psql_as postgres squat -c "CREATE SCHEMA allsource" -c "GRANT CREATE ON SCHEMA allsource TO eve"
expect_error 42P06 postgres squat "CREATE EXTENSION allsource"
psql_as postgres squat -c "DROP SCHEMA allsource" -c "CREATE SCHEMA allsource" -c "CREATE TABLE allsource.left_over ()"
expect_error 42P06 postgres squat "CREATE EXTENSION allsource"
psql_as postgres squat -c "DROP SCHEMA allsource CASCADE" -c "CREATE EXTENSION allsource"

log "adversarial: eve lays her traps"
# Every name followed by "(" in the extension's source: what it may call.
names="{$(grep -rhoE '\b[a-z_][a-z0-9_]*\(' src sql | tr -d '(' | sort -u | paste -sd, -)}"
psql_as eve hostile --set=names="$names" -f tests/adversarial/traps.sql
# The workers prepare their statements once: let them start under her settings.
cluster_stop "$data"
cluster_start "$data" "$port" "$settings"

log "adversarial: every function, as the superuser, writers of two tenants, a reader and the workers"
exercise() { # ROLE WHO TENANT WRITES
    psql_as "$1" hostile --set=who="$2" --set=tenant="$3" --set=writes="$4" \
        --set=id1="$(cat /proc/sys/kernel/random/uuid)" --set=id2="$(cat /proc/sys/kernel/random/uuid)" \
        -f tests/adversarial/exercise.sql >/dev/null
}
# A failing call is reported after the traps: eve's code is the likelier cause.
failed=()
exercise postgres su "" on || failed+=(postgres)
exercise writer_a a a on || failed+=(writer_a)
exercise writer_b b b on || failed+=(writer_b)
exercise reader a a off || failed+=(reader)
psql_as postgres hostile -f tests/adversarial/handler.sql >/dev/null || failed+=("postgres (a handler subscription)")
psql_as postgres hostile --set=ON_ERROR_STOP=1 -c "SELECT allsource.stats_reset()" \
    -c "SELECT * FROM allsource.verify_all_tenants()" >/dev/null || failed+=("postgres (stats_reset, verify_all_tenants)")
expect_error 42501 eve hostile "SELECT allsource.stats_reset()"
expect_error 42501 eve hostile "SELECT allsource.append('eve-1', 'E', '{}')"
expect_error 42501 eve hostile "SELECT allsource.enqueue('eve-1', 'E', '{}')"
expect_error 42501 eve hostile "SELECT * FROM allsource.verify_all()"
expect_error 42501 postgres hostile "INSERT INTO allsource.streams (stream_id, partition_id) VALUES ('forged', 0)"

# The checks run with pg_catalog alone on the path.
check() { PGOPTIONS="-c search_path=pg_catalog" psql_as postgres hostile --set=ON_ERROR_STOP=1 -c "$1"; }
sprung=$(check "SELECT string_agg(DISTINCT who || ' ran ' || what, '; ') FROM eve.trap_log")
[ -z "$sprung" ] || fail "eve's code ran: $sprung"
[ "$(check "SELECT rolsuper FROM pg_roles WHERE rolname = 'eve'")" = f ] || fail "eve became a superuser"
[ ${#failed[@]} -eq 0 ] || fail "tests/adversarial/exercise.sql failed as ${failed[*]}"
unexercised=$(check "SELECT string_agg(p.oid::regprocedure::text, ', ')
    FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
    LEFT JOIN pg_stat_user_functions s ON s.funcid = p.oid
    WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
      AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'allsource')
      AND coalesce(s.calls, 0) = 0")
[ -z "$unexercised" ] || fail "functions the suite did not call (add them to tests/adversarial/exercise.sql): $unexercised"
# The traps are live: a bare name in a query of the superuser's is eve's.
psql_as postgres hostile -c "SELECT now()" >/dev/null
[ "$(check "SELECT count(*) > 0 FROM eve.trap_log")" = t ] || fail "the traps did not catch a bare now(): the suite tests nothing"
# The workers write as allsource_worker: without its right to insert events, a queued event is refused.
check "REVOKE INSERT ON allsource.events FROM allsource_worker" >/dev/null
status=$(check "SELECT status FROM allsource.await_ticket(allsource.enqueue('su-5', 'E', '{}'), 10000)" 2>/dev/null)
check "GRANT INSERT ON allsource.events TO allsource_worker" >/dev/null
[ "$status" = rejected ] || fail "the ingest worker appended without allsource_worker's rights (status $status): it does not write as that role"
log "adversarial: none of eve's traps caught the extension"
