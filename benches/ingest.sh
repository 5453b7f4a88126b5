#!/usr/bin/env bash
# The ingest queue against direct appends and plain PostgreSQL, in one run on
# one private cluster with durable settings (fsync and synchronous_commit on),
# modes interleaved over rounds. 200-byte JSON payloads into 10,000 streams.
# "Plain" inserts go into a table equivalent to allsource.events: the same
# columns and indexes, event_id unique, created with LIKE.
#   benches/ingest.sh [ROUNDS] [SECONDS_PER_MODE]     default 3 rounds of 10 s
# Prints events/s per mode, median over rounds, the ratios benches/README.md quotes,
# the workers' batch sizes and the p50/p99 latency from enqueue to result;
# then the queue modes again with allsource.ingest_workers = 2.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
rounds=${1:-3}
seconds=${2:-10}
DATA=$STATE_DIR/bench-ingest

bench_cluster "$DATA" 25462 "max_wal_size = 4GB"
"${psql[@]}" -c "CREATE EXTENSION allsource;
    CREATE TABLE plain_events (LIKE allsource.events INCLUDING DEFAULTS INCLUDING INDEXES);
    ALTER TABLE plain_events ADD UNIQUE (event_id);
    CREATE SEQUENCE plain_position"

payload=$BENCH_PAYLOAD
mkdir -p "$DATA/scripts"
script() { cat > "$DATA/scripts/$1.sql"; }
plain_row="nextval('plain_position'), 0, 's-' || (random() * 9999)::int, currval('plain_position'), gen_random_uuid(), 'Bench', '$payload', now(), '\\x00'"
script insert_1 <<SQL
INSERT INTO plain_events (position, partition_id, stream_id, version, event_id, event_type, payload, created_at, checksum)
VALUES ($plain_row);
SQL
script insert_100 <<SQL
INSERT INTO plain_events (position, partition_id, stream_id, version, event_id, event_type, payload, created_at, checksum)
SELECT $plain_row FROM generate_series(1, 100);
SQL
script append <<SQL
\set s random(1, 10000)
SELECT version FROM allsource.append('s-' || :s, 'Bench', '$payload');
SQL
script enqueue_await <<SQL
\set s random(1, 10000)
SELECT status FROM allsource.await_ticket(allsource.enqueue('s-' || :s, 'Bench', '$payload'), 60000);
SQL
# Many events in flight: 100 enqueued, then the last awaited (one lane is FIFO).
script enqueue_pipelined <<SQL
SELECT status FROM allsource.await_ticket((
    SELECT max(allsource.enqueue('s-' || (random() * 9999)::int, 'Bench', '$payload'))
    FROM generate_series(1, 100)), 60000);
SQL

# name, script, clients, events per transaction
modes=(
    "insert_1@64 insert_1 64 1"
    "append@64 append 64 1"
    "enqueue_await@64 enqueue_await 64 1"
    "insert_100@8 insert_100 8 100"
    "enqueue_pipelined@8 enqueue_pipelined 8 100"
    "insert_100@64 insert_100 64 100"
    "enqueue_pipelined@64 enqueue_pipelined 64 100"
)

run_mode() { # script clients -> transactions per second
    local output
    output=$(pgbench --host=localhost --port="$port" --username=postgres --no-vacuum --jobs=2 \
        --client="$2" --time="$seconds" --file="$DATA/scripts/$1.sql" postgres 2>&1) ||
        { echo "pgbench $1 with $2 clients failed:" >&2; echo "$output" | tail -20 >&2; return 1; }
    echo "$output" | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}

results=$DATA/results.txt
: > "$results"
run_rounds() { # label suffix, then modes
    local suffix=$1; shift
for round in $(seq 1 "$rounds"); do
    for mode in "$@"; do
        read -r name file clients per <<<"$mode"
        "${psql[@]}" -c "SELECT allsource.stats_reset()" >/dev/null
        before=$("${psql[@]}" -c "SELECT sum(batches) || ' ' || sum(events) FROM allsource.ingest_workers()")
        tps=$(run_mode "$file" "$clients")
        events=$(awk -v t="$tps" -v n="$per" 'BEGIN { printf "%.0f", t * n }')
        extra=""
        if [[ $file == enqueue* ]]; then
            read -r b0 e0 <<<"$before"
            read -r b1 e1 <<<"$("${psql[@]}" -c "SELECT sum(batches) || ' ' || sum(events) FROM allsource.ingest_workers()")"
            latency=$("${psql[@]}" -c "SELECT ticket_p50_us || ' ' || ticket_p99_us FROM allsource.stats()")
            read -r p50 p99 <<<"$latency"
            extra=$(awk -v b=$((b1 - b0)) -v e=$((e1 - e0)) -v p50="$p50" -v p99="$p99" \
                'BEGIN { printf "batch %.1f events avg, enqueue->result p50 %.1f ms p99 %.1f ms", e / b, p50 / 1000, p99 / 1000 }')
        fi
        printf 'round %d  %-26s %8s events/s  %s\n' "$round" "$name$suffix" "$events" "$extra"
        echo "$name$suffix $events" >> "$results"
    done
done
}
run_rounds "" "${modes[@]}"
log "again with allsource.ingest_workers = 2"
"${psql[@]}" -c "ALTER SYSTEM SET allsource.ingest_workers = 2" >/dev/null
as_pg env -u RUST_BACKTRACE "$PG_BIN/pg_ctl" --pgdata="$DATA" --log="$DATA/server.log" --mode=fast --wait restart >/dev/null
run_rounds "/2w" "${modes[2]}" "${modes[4]}" "${modes[6]}"

median() { grep "^$1 " "$results" | awk '{ print $2 }' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$(median "$1")" -v b="$(median "$2")" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "medians over $rounds rounds of ${seconds} s, $(nproc) cores, PostgreSQL $("${psql[@]}" -c 'SHOW server_version')"
for name in $(awk '{ print $1 }' "$results" | awk '!seen[$0]++'); do
    printf '  %-26s %8s events/s\n' "$name" "$(median "$name")"
done
echo
echo "  enqueue+await / append, 64 clients:            $(ratio enqueue_await@64 append@64)x  (target >= 2)"
echo "  pipelined enqueue / 100-row INSERT, 8 clients:  $(ratio enqueue_pipelined@8 insert_100@8)x  (target >= 0.8)"
echo "  pipelined enqueue / 100-row INSERT, 64 clients: $(ratio enqueue_pipelined@64 insert_100@64)x"
echo "  append / single-row INSERT, 64 clients:        $(ratio append@64 insert_1@64)x"
echo "  with 2 workers: enqueue+await / append, 64:    $(ratio enqueue_await@64/2w append@64)x;" \
     "pipelined / 100-row INSERT: $(ratio enqueue_pipelined@8/2w insert_100@8)x at 8 clients, $(ratio enqueue_pipelined@64/2w insert_100@64)x at 64"
problems=$("${psql[@]}" -c "SELECT count(*) FROM allsource.verify_all()")
echo "  verify_all() after the run: $problems problems"
