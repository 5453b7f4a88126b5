#!/usr/bin/env bash
# Single-client queue throughput as the store grows, written only through the
# queue: at each size one pgbench client runs enqueue + await_ticket (one event
# in flight, 200-byte payloads into 10,000 streams) for SECONDS, then the store
# is filled through the queue (pipelined) up to the next size. Autovacuum runs
# as configured by default. Prints events/s per size and what
# pg_stat_user_tables says about the events' partitions (rows counted,
# partitions autoanalyzed): flat figures mean the workers' plans and the
# tables' statistics keep up. Asserts nothing.
#   benches/queue_growth.sh [SECONDS] [SIZES...]   default 10 s at 10k 50k 100k 250k 500k
# PostgreSQL 15 unless ALLSOURCE_BENCH_PG names another major.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
use_postgres "${ALLSOURCE_BENCH_PG:-15}"
seconds=${1:-10}
shift || true
sizes=(10000 50000 100000 250000 500000)
[ $# -eq 0 ] || sizes=("$@")
DATA=$STATE_DIR/bench-queue-growth

bench_cluster "$DATA" 25472
"${psql[@]}" -c "CREATE EXTENSION allsource"
payload=$BENCH_PAYLOAD
mkdir -p "$DATA/scripts"
cat > "$DATA/scripts/enqueue_await.sql" <<SQL
\set s random(1, 10000)
SELECT status FROM allsource.await_ticket(allsource.enqueue('s-' || :s, 'Bench', '$payload'), 60000);
SQL

stored() { "${psql[@]}" -c "SELECT last_value FROM allsource.event_position"; }
fill_to() { # events: enqueues in chunks of 10,000, awaiting each chunk's last ticket
    while [ "$(stored)" -lt "$1" ]; do
        local n=$(($1 - $(stored)))
        [ "$n" -le 10000 ] || n=10000
        "${psql[@]}" -c "SELECT status FROM allsource.await_ticket((
            SELECT max(allsource.enqueue('s-' || (i % 10000), 'Bench', '$payload'))
            FROM generate_series(1, $n) AS i), 600000)" >/dev/null
    done
}

printf '%10s %12s %14s %14s\n' "events" "events/s" "n_tup_ins" "analyzed"
for size in "${sizes[@]}"; do
    fill_to "$size"
    tps=$(pgbench --host=localhost --port="$port" --username=postgres --no-vacuum \
        --client=1 --time="$seconds" --file="$DATA/scripts/enqueue_await.sql" postgres 2>&1 |
        sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    read -r inserted analyzed <<<"$("${psql[@]}" -F ' ' -c "
        SELECT coalesce(sum(n_tup_ins), 0), count(*) FILTER (WHERE last_autoanalyze IS NOT NULL)
        FROM pg_stat_user_tables WHERE schemaname = 'allsource' AND relname LIKE 'events_p%'")"
    printf '%10s %12.0f %14s %11s/%s\n' "$(stored)" "$tps" "$inserted" "$analyzed" \
        "$("${psql[@]}" -c "SELECT allsource.partition_count()")"
done
echo "single client, one event in flight, $(nproc) cores, PostgreSQL $("${psql[@]}" -c 'SHOW server_version')"
