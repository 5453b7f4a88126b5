#!/usr/bin/env bash
# Where an append's and a read's CPU goes, in instructions (issue 21): every
# backend of one private cluster runs under valgrind's callgrind, which counts
# the instructions a statement executes. The count does not move with the
# machine's load, so two builds or two statements compare exactly on a noisy
# machine where timings move by ±10 %.
#
# For each statement, one session runs it 1,000 times and another 3,000 times
# (prepared, each its own transaction, synchronous_commit off); the difference
# over 2,000 is the cost of one execution with the session's start-up removed.
# Then the inclusive cost of the parts of an append, per append.
#
#   benches/append_instructions.sh          about 5 minutes after the build
#   ALLSOURCE_BENCH_INSTALLED=1 …           the release build is installed already
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
use_postgres "${ALLSOURCE_BENCH_PG:-15}"
DATA=$STATE_DIR/bench-instructions
OUT=$STATE_DIR/bench-instructions-out
payload=$BENCH_PAYLOAD
streams=10000

command -v valgrind >/dev/null || apt_install valgrind
if [ -z "${ALLSOURCE_BENCH_INSTALLED:-}" ]; then
    if [ "$PG_MAJOR" = 15 ]; then nice scripts/setup.sh; else nice scripts/setup.sh "$PG_MAJOR"; fi
    log "building and installing the release build for PostgreSQL $PG_MAJOR"
    (renice -n 10 -p "$BASHPID" >/dev/null; install_extension --release)
fi

# The store: 10,000 one-event streams to append to, 1,000 ten-event streams
# to read, the same rows in the plain tables (benches/plain_tables.sql).
bench_cluster_start "$DATA" 25505 "autovacuum = off
synchronous_commit = off"
"${psql[@]}" -c "CREATE DATABASE bench" >/dev/null
psql_bench=("${psql[@]/--dbname=postgres/--dbname=bench}")
"${psql_bench[@]}" -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE EXTENSION allsource;
\i benches/plain_tables.sql
SELECT allsource.append('s-' || g, 'Bench', '$payload') FROM generate_series(1, $streams) g;
SELECT plain_append('s-' || g, 'Bench', '$payload', NULL) FROM generate_series(1, $streams) g;
INSERT INTO plain_events (position, partition_id, stream_id, version, event_id, event_type, payload, created_at, checksum)
SELECT nextval('plain_position'), 0, 's-' || g, 1, gen_random_uuid(), 'Bench', '$payload', now(), '\x00'
FROM generate_series(1, $streams) g;
SELECT allsource.append_batch('r-' || g, (SELECT jsonb_agg(jsonb_build_object('type', 'Bench', 'payload', '$payload'::jsonb))
                                          FROM generate_series(1, 10))) FROM generate_series(1, 1000) g;
INSERT INTO plain_events (position, partition_id, stream_id, version, event_id, event_type, payload, created_at, checksum)
SELECT nextval('plain_position'), 0, 'r-' || g, v, gen_random_uuid(), 'Bench', '$payload', now(), '\x00'
FROM generate_series(1, 1000) g, generate_series(1, 10) v;
VACUUM ANALYZE;
SQL
cluster_stop "$DATA"

# The same cluster with every backend under callgrind, one file per process.
rm -rf "$OUT"
mkdir -p "$OUT"
chown postgres: "$OUT" 2>/dev/null || true
as_pg bash -c "valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=$OUT/%p.out \
    $PG_BIN/postgres -D $DATA > $OUT/server.log 2>&1 &"
trap 'cluster_stop "$DATA"' EXIT
for _ in $(seq 1 120); do pg_isready -q -h localhost -p "$port" && break; sleep 1; done

# session NAME N PREPARE EXECUTE: runs EXECUTE (each %d in it the same
# stream number) N times in one session; prints the session's callgrind file.
session() {
    local name=$1 n=$2 prepare=$3 execute=$4 pid number without=${4//%d/} uses
    uses=$(((${#execute} - ${#without}) / 2))
    {
        echo "SELECT pg_backend_pid();"
        echo "$prepare"
        for i in $(seq 1 "$n"); do
            number=$(((i * 7919) % $5 + 1))
            # shellcheck disable=SC2046 # one argument per %d
            printf "$execute\n" $(for _ in $(seq 1 "$uses"); do echo "$number"; done)
        done
    } > "$OUT/$name.$n.sql"
    pid=$("${psql_bench[@]}" -f "$OUT/$name.$n.sql" | sed -n 1p)
    # callgrind writes the file when the backend exits.
    while kill -0 "$pid" 2>/dev/null || [ ! -s "$OUT/$pid.out" ]; do sleep 1; done
    sleep 1
    callgrind_annotate --inclusive=yes --threshold=100 "$OUT/$pid.out" > "$OUT/$name.$n.txt" 2>/dev/null
}

# inclusive FILE FUNCTION: the function's inclusive instruction count in FILE.
inclusive() {
    awk -v f="$2" '{ line = $0; sub(/^ *[0-9,]+ \([ 0-9.]+%\) +/, "", line); sub(/ \[.*$/, "", line);
                     sub(/^[^:]*:/, "", line); if (line == f) { gsub(",", "", $1); print $1; exit } }' "$1"
}

# per_run NAME FUNCTION [DIVISOR]: FUNCTION's instructions per execution of NAME.
per_run() {
    local a b
    a=$(inclusive "$OUT/$1.3000.txt" "$2"); b=$(inclusive "$OUT/$1.1000.txt" "$2")
    echo $(((${a:-0} - ${b:-0}) / 2000 / ${3:-1}))
}

# measure NAME PER PREPARE EXECUTE STREAMS: one line of the first table.
measure() {
    session "$1" 1000 "$3" "$4" "$5"
    session "$1" 3000 "$3" "$4" "$5"
    printf '| %s | %s |\n' "$2" "$(per_run "$1" "PROGRAM TOTALS" "${6:-1}")"
}

batch="{\"type\": \"Bench\", \"payload\": $payload}"
for _ in $(seq 2 10); do batch+=", {\"type\": \"Bench\", \"payload\": $payload}"; done
log "counting instructions (about 5 minutes)"
echo "| statement (prepared, one per transaction) | instructions |"
echo "|---|---|"
measure append "\`allsource.append\` of one event" \
    "PREPARE a(text) AS SELECT version FROM allsource.append(\$1, 'Bench', '$payload');" "EXECUTE a('s-%d');" "$streams"
measure batch "\`allsource.append_batch\` of 10 events, per event" \
    "PREPARE a(text) AS SELECT first_version FROM allsource.append_batch(\$1, '[$batch]');" "EXECUTE a('s-%d');" "$streams" 10
measure plpgsql "PL/pgSQL append with expected version" \
    "PREPARE a(text) AS SELECT plain_append(\$1, 'Bench', '$payload', NULL);" "EXECUTE a('s-%d');" "$streams"
measure insert "plain single-row \`INSERT\`" \
    "PREPARE a(text) AS INSERT INTO plain_events (position, partition_id, stream_id, version, event_id, event_type, payload, created_at, checksum)
     VALUES (nextval('plain_position'), 0, \$1, currval('plain_position'), gen_random_uuid(), 'Bench', '$payload', now(), '\\\\x00');" \
    "EXECUTE a('s-%d');" "$streams"
measure read "\`allsource.read_stream\` of 10 events" \
    "PREPARE a(text) AS SELECT * FROM allsource.read_stream(\$1);" "EXECUTE a('r-%d');" 1000
measure select "plain \`SELECT\` of the same 10 rows" \
    "PREPARE a(text) AS SELECT * FROM plain_events WHERE stream_id = \$1 ORDER BY version;" "EXECUTE a('r-%d');" 1000
# A DCB decision as benches/dcb.sh makes it: one event with two tags into a
# stream of its own, on the condition that neither tag was appended after a
# head (here beyond every event: the check finds nothing, as a disjoint
# decision's); and the same append without the condition.
decided="[{\"type\": \"Decided\", \"payload\": $payload, \"tags\": [\"acct:%d\", \"acct:%d-x\"]}]"
measure append_if "\`allsource.append_if\` of one event with 2 tags, a 2-item condition" \
    "PREPARE a(jsonb, jsonb) AS SELECT last_position FROM allsource.append_if(\$1, \$2, 1000000000);" \
    "EXECUTE a('$decided', '[{\"tags\": [\"acct:%d\"]}, {\"tags\": [\"acct:%d-x\"]}]');" "$streams"
measure append_if_nocond "\`allsource.append_if\` of the same event without a condition" \
    "PREPARE a(jsonb) AS SELECT last_position FROM allsource.append_if(\$1);" "EXECUTE a('$decided');" "$streams"
measure select1 "\`SELECT 1\` (the round trip and transaction alone)" "PREPARE a AS SELECT 1;" "EXECUTE a;" 1

# parts_table NAME HEADING UNIT PART...: one table of the inclusive cost (a
# part's callees are in it) per execution of NAME, a PART being FUNCTION|WHAT.
parts_table() {
    local name=$1 heading=$2 unit=$3 part function what
    shift 3
    echo
    echo "| $heading (inclusive) | instructions per $unit |"
    echo "|---|---|"
    for part in "$@"; do
        IFS='|' read -r function what <<<"$part"
        printf '| %s (`%s`) | %s |\n' "$what" "$function" "$(per_run "$name" "$function")"
    done
}

parts_table append "part of \`allsource.append\`" append \
    "allsource::sql::append::append|the function, from its arguments to its result" \
    "allsource::sql::stream_heads::StreamRows::open|\`allsource.streams\` opened, its privileges checked" \
    "allsource::sql::stream_heads::StreamRows::lock|the stream row found and locked (\`FOR UPDATE\`'s lock)" \
    "allsource::sql::stream_heads::StreamRows::advance|the stream row updated (HOT)" \
    "allsource::sql::direct_insert::DirectInsert::open|the partition and \`event_ids\` opened with their indexes" \
    "allsource::sql::direct_insert::DirectInsert::insert|the event and its id inserted, with their index entries" \
    "ExecInsertIndexTuples|… of which index entries (the partition's four, \`event_ids\`' one)" \
    "allsource::sql::append::insert_events|the event into its partition (opened, written, closed)" \
    "allsource::sql::direct_insert::partition_holding|… of which the partition chosen from the parent's bounds" \
    "allsource::sql::append::register_new_event_ids|the id into the \`event_ids\` registry (opened, written, closed)" \
    "SPI_execute_plan|SQL statements (none for a new event with a generated id)" \
    "standard_ExecutorStart|executor start-up (the caller's query)" \
    "ProcessGUCArray|\`SET search_path\` of \`SECURITY DEFINER\` on entry" \
    "AtEOXact_GUC|… and its reset on exit" \
    "jsonb_in|the payload parsed into jsonb (0: the argument's datum is stored)" \
    "jsonb_out|the payload turned into text for the checksum" \
    "allsource_core::checksum::checksum|the SHA-256 chain link" \
    "XLogInsert|WAL records" \
    "CommitTransactionCommand|the commit"
parts_table append_if "part of \`allsource.append_if\` with its condition" decision \
    "allsource::sql::boundary::append_if|the function, from its arguments to its result" \
    "allsource_core::batch::parse_batch_text|the events read from their jsonb text" \
    "allsource::sql::boundary::lock|the keys locked (2 tags EXCLUSIVE; every writer's SHARE keys)" \
    "allsource::sql::boundary::first_match|the check: a scan of \`event_tags\`' key per item" \
    "allsource::sql::stream_heads::StreamRows::create_new|its own stream's row inserted" \
    "allsource::sql::append::insert_events|the event into its partition" \
    "allsource::sql::append::insert_event_tags|its 2 rows of \`event_tags\`" \
    "allsource::sql::append::register_new_event_ids|its id into \`event_ids\`" \
    "allsource::sql::stream_heads::StreamRows::advance|the stream row updated" \
    "SPI_execute_plan|SQL statements (none)" \
    "allsource_core::checksum::checksum|the SHA-256 chain link" \
    "XLogInsert|WAL records" \
    "CommitTransactionCommand|the commit"
parts_table read "part of \`allsource.read_stream\` of 10 events" read \
    "fmgr_security_definer|the function with its \`SECURITY DEFINER\` and \`SET search_path\`" \
    "ProcessGUCArray|\`SET search_path\` on entry" \
    "AtEOXact_GUC|… and its reset on exit" \
    "read_stream_rows|the function itself, from its arguments to its rows" \
    "allsource::sql::tenant::session_tenant|the session's tenant" \
    "allsource::sql::read::Read::stream_is_readable|the stream row: deleted? the tenant's?" \
    "allsource::sql::read::Read::scan|the events' scan (the stream row's inside)" \
    "get_relname_relid|the tables found by name" \
    "LockRelationOid|relation locks taken (streams, the partition, an index each)" \
    "LockReleaseAll|… and released at commit" \
    "index_getnext_slot|index scans (the stream row, the events)" \
    "tuplestore_puttuple|the rows stored" \
    "tuplestore_gettupleslot|… and the caller reading them back" \
    "standard_ExecutorStart|executor start-up (the caller's query)"
parts_table select "part of the plain \`SELECT\` of 10 rows" read \
    "GetCachedPlan|the cached plan checked, its table locked" \
    "LockReleaseAll|locks released at commit" \
    "standard_ExecutorStart|executor start-up" \
    "index_getnext_slot|the index scan"
