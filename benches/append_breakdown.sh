#!/usr/bin/env bash
# Where a single-event append's cost goes (issue 21, first part): the same
# append measured on variants of the store that each remove or replace one
# thing by a patch of the schema (no rebuild), beside PostgreSQL's plain
# single-row INSERT and a hand-written PL/pgSQL append, on one private
# cluster, one fresh database per variant:
#   * server time per append, one client, synchronous_commit off, prepared
#     statements: the statement's latency with no flush to wait for, i.e.
#     its CPU (and the round trip);
#   * WAL bytes per append over that run (pg_current_wal_lsn before and after);
#   * appends per second with durable commits at 8 and 64 clients.
# The variants that need a patched build (the event_ids registry against a
# unique index, one table against the partitions, the checksum, the SPI
# statements against a direct path) are not here yet.
#
#   benches/append_breakdown.sh [SECONDS]       default 5 s per run (about 5 minutes after the build)
#   ALLSOURCE_BENCH_INSTALLED=1 …               the release build is installed already
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
use_postgres "${ALLSOURCE_BENCH_PG:-15}"
seconds=${1:-5}
DATA=$STATE_DIR/bench-breakdown
payload=$BENCH_PAYLOAD
streams=10000

if [ -z "${ALLSOURCE_BENCH_INSTALLED:-}" ]; then
    if [ "$PG_MAJOR" = 15 ]; then nice scripts/setup.sh; else nice scripts/setup.sh "$PG_MAJOR"; fi
    log "building and installing the release build for PostgreSQL $PG_MAJOR"
    (renice -n 10 -p "$BASHPID" >/dev/null; install_extension --release)
fi
bench_cluster_start "$DATA" 25504 "max_wal_size = 8GB"
mkdir -p "$DATA/scripts"

append_sql="SELECT version FROM allsource.append('s-' || :s, 'Bench', '$payload');"
# name | the patch applied after CREATE EXTENSION | what it removes
variants=(
    "baseline||AllSource as installed"
    "security_invoker|ALTER FUNCTION allsource.append(text, text, jsonb, jsonb, bigint, uuid, text[]) SECURITY INVOKER RESET search_path;|SECURITY DEFINER and its SET search_path"
    "streams_fillfactor_50|ALTER TABLE allsource.streams SET (fillfactor = 50);|nothing removed: room on the streams' pages for HOT updates"
    "no_category_index|DROP INDEX allsource.events_category_position;|the category index (read_category)"
    "no_type_index|DROP INDEX allsource.events_type_position;|the event type index (read_query, append_if)"
)
insert_sql="INSERT INTO plain_events (position, partition_id, stream_id, version, event_id, event_type, payload, created_at, checksum)
VALUES (nextval('plain_position'), 0, 's-' || :s, currval('plain_position'), gen_random_uuid(), 'Bench', '$payload', now(), '\\\\x00');"
plpgsql_sql="SELECT plain_append('s-' || :s, 'Bench', '$payload', NULL);"

# measure NAME DATABASE SQL: one line of the table.
measure() {
    local name=$1 db=$2 sql=$3 before after out_1 tps_1 lat_1 wal tps_8 tps_64
    printf '\\set s random(1, %s)\n%s\n' "$streams" "$sql" > "$DATA/scripts/$name.sql"
    pgb=(pgbench --host=localhost --port="$port" --username=postgres --no-vacuum --jobs=2 --time="$seconds" --protocol=prepared
         --file="$DATA/scripts/$name.sql")
    # Warm up: the streams created; then the statistics autovacuum would
    # gather, so every run plans as a store in service does.
    "${pgb[@]}" --client=8 "$db" >/dev/null 2>&1
    "${psql[@]/--dbname=postgres/--dbname=$db}" -c "ANALYZE" >/dev/null
    before=$("${psql[@]}" -c "SELECT pg_current_wal_lsn()")
    out_1=$(PGOPTIONS="-c synchronous_commit=off" "${pgb[@]}" --client=1 "$db" 2>&1)
    after=$("${psql[@]}" -c "SELECT pg_current_wal_lsn()")
    tps_1=$(echo "$out_1" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    lat_1=$(echo "$out_1" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
    wal=$("${psql[@]}" -c "SELECT round(pg_wal_lsn_diff('$after', '$before') / ($tps_1 * $seconds))")
    tps_8=$("${pgb[@]}" --client=8 "$db" 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    tps_64=$("${pgb[@]}" --client=64 "$db" 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    printf '| %s | %.0f | %s | %.0f | %.0f |\n' "$name" "$(awk -v l="$lat_1" 'BEGIN { print l * 1000 }')" \
        "$wal" "$tps_8" "$tps_64"
}

log "one database per variant, $streams streams, ${seconds} s per run"
echo "| variant | µs per append (1 client, no flush) | WAL bytes per append | appends/s, 8 clients | appends/s, 64 clients |"
echo "|---|---|---|---|---|"
for variant in "${variants[@]}"; do
    IFS='|' read -r name patch _ <<<"$variant"
    "${psql[@]}" -c "CREATE DATABASE $name" >/dev/null
    psql_db=("${psql[@]/--dbname=postgres/--dbname=$name}")
    "${psql_db[@]}" -c "CREATE EXTENSION allsource" >/dev/null
    [ -z "$patch" ] || "${psql_db[@]}" -c "$patch" >/dev/null
    measure "$name" "$name" "$append_sql"
done
"${psql[@]}" -c "CREATE DATABASE reference" >/dev/null
psql_ref=("${psql[@]/--dbname=postgres/--dbname=reference}")
"${psql_ref[@]}" -c "CREATE EXTENSION allsource" >/dev/null
"${psql_ref[@]}" -v ON_ERROR_STOP=1 -f benches/plain_tables.sql >/dev/null
measure plain_insert reference "$insert_sql"
measure plpgsql_append reference "$plpgsql_sql"
for variant in "${variants[@]}"; do
    IFS='|' read -r name _ what <<<"$variant"
    echo "- $name: $what"
done
