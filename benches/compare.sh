#!/usr/bin/env bash
# AllSource beside PostgreSQL's own ceilings, in one run on one private cluster
# with durable settings (fsync, synchronous_commit on), modes interleaved
# over rounds. pgbench, 200-byte JSON payloads, 10,000 streams chosen at
# random and a hot variant with 10 streams, 1, 8 and 64 clients.
#
#   benches/compare.sh [ROUNDS] [SECONDS_PER_RUN]     default 3 rounds of 5 s
#   ALLSOURCE_BENCH_WORKERS=1 benches/compare.sh      one ingest worker (default: one per core)
#
# Ceilings go into plain_events, created LIKE allsource.events (same columns
# and indexes) with event_id unique. Reads: read_stream of 10-event streams
# beside a plain SELECT of the same rows from plain_events (prepared, as a
# driver runs them), at 1, 4 and 16 readers and with 8 writers beside 8
# readers; verify_all over 40,000 streams of 7 events in a database of its own. Prints one table of medians with the
# ratios, and writes benches/results/{runs.csv,summary.csv,summary.txt,chart.png}.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
rounds=${1:-3}
seconds=${2:-5}
DATA=$STATE_DIR/bench-compare
OUT=benches/results

bench_cluster "$DATA" 25482 "max_wal_size = 8GB
allsource.ingest_workers = ${ALLSOURCE_BENCH_WORKERS:-$(nproc)}"
command -v gnuplot >/dev/null || { log "installing gnuplot (for the chart)"; quietly apt-get install -y gnuplot-nox; }
payload=$BENCH_PAYLOAD

"${psql[@]}" -c "CREATE EXTENSION allsource"
"${psql[@]}" -v ON_ERROR_STOP=1 -f benches/plain_tables.sql

mkdir -p "$DATA/scripts" "$OUT"
script() { cat > "$DATA/scripts/$1.sql"; }
stream="'s-' || :s"
plain_row="nextval('plain_position'), 0, $stream, currval('plain_position'), gen_random_uuid(), 'Bench', '$payload', now(), '\\\\x00'"
script insert_1 <<SQL
\\set s random(1, :streams)
INSERT INTO plain_events (position, partition_id, stream_id, version, event_id, event_type, payload, created_at, checksum)
VALUES ($plain_row);
SQL
script insert_100 <<SQL
\\set s random(1, :streams)
INSERT INTO plain_events (position, partition_id, stream_id, version, event_id, event_type, payload, created_at, checksum)
SELECT $plain_row FROM generate_series(1, 100);
SQL
script plpgsql_append <<SQL
\\set s random(1, :streams)
SELECT plain_append($stream, 'Bench', '$payload', NULL);
SQL
script append <<SQL
\\set s random(1, :streams)
SELECT version FROM allsource.append($stream, 'Bench', '$payload');
SQL
script append_batch_100 <<SQL
\\set s random(1, :streams)
SELECT last_version FROM allsource.append_batch($stream,
    (SELECT jsonb_agg(jsonb_build_object('type', 'Bench', 'payload', '$payload'::jsonb)) FROM generate_series(1, 100)));
SQL
script enqueue_await <<SQL
\\set s random(1, :streams)
SELECT status FROM allsource.await_ticket(allsource.enqueue($stream, 'Bench', '$payload'), 60000);
SQL
# Many events in flight: 100 enqueued, then the last awaited (one lane settles in order).
script enqueue_pipelined <<SQL
SELECT status FROM allsource.await_ticket((
    SELECT max(allsource.enqueue('s-' || (1 + floor(random() * :streams))::int, 'Bench', '$payload'))
    FROM generate_series(1, 100)), 60000);
SQL
script read_stream_100 <<SQL
\\set s random(1, 100)
SELECT count(*) FROM allsource.read_stream('s-' || :s, max_count => 100);
SQL
script read_stream_10 <<SQL
\\set s random(1, :streams)
SELECT * FROM allsource.read_stream('r-' || :s);
SQL
script select_10 <<SQL
\\set s random(1, :streams)
SELECT * FROM plain_events WHERE stream_id = 'r-' || :s ORDER BY version;
SQL

# name  events-per-transaction  stream sets
writes=(
    "insert_1 1 10000"
    "insert_100 100 10000"
    "plpgsql_append 1 10000 10"
    "append 1 10000 10"
    "append_batch_100 100 10000 10"
    "enqueue_await 1 10000 10"
    "enqueue_pipelined 100 10000 10"
)
clients_list=(1 8 64)

runs=$OUT/runs.csv
echo "round,mode,streams,clients,events_per_s,p50_ms,p99_ms" > "$runs"

# run SCRIPT STREAMS CLIENTS EVENTS_PER_TXN ROUND [MODE]: one pgbench run, one
# CSV line (under MODE, default the script's name); $protocol: pgbench's.
protocol=simple
run() {
    local name=$1 streams=$2 clients=$3 per=$4 round=$5 mode=${6:-$1} logs output tps
    logs=$(mktemp -d)
    chmod 777 "$logs"
    output=$(cd "$logs" && pgbench --host=localhost --port="$port" --username=postgres --no-vacuum \
        --jobs=2 --client="$clients" --time="$seconds" --define=streams="$streams" --log \
        --protocol="$protocol" --file="$DATA/scripts/$name.sql" postgres 2>&1) ||
        { echo "pgbench $name ($streams streams, $clients clients) failed:" >&2; echo "$output" | tail -20 >&2; return 1; }
    tps=$(echo "$output" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    # Per-transaction latencies (µs, third column of pgbench's logs): p50 and p99.
    read -r p50 p99 < <(cat "$logs"/pgbench_log.* | awk '{ print $3 }' | sort -n |
        awk '{ v[NR] = $1 } END { printf "%.3f %.3f\n", v[int(NR * 0.5) + 1] / 1000, v[int(NR * 0.99) + 1] / 1000 }')
    rm -rf "$logs"
    local events
    events=$(awk -v t="$tps" -v n="$per" 'BEGIN { printf "%.0f", t * n }')
    echo "$round,$mode,$streams,$clients,$events,$p50,$p99" >> "$runs"
    printf 'round %d  %-18s %5s streams %2s clients %9s events/s  p50 %7.2f ms  p99 %7.2f ms\n' \
        "$round" "$mode" "$streams" "$clients" "$events" "$p50" "$p99"
}

seconds_since() { awk -v start="$1" -v now="$(date +%s.%N)" 'BEGIN { print now - start }'; }

log "COPY source: 1,000,000 rows"
"${psql[@]}" -c "COPY (SELECT g, 0, 's-' || (g % 10000), g, gen_random_uuid(), 'Bench', NULL, '$payload'::jsonb, NULL, now(), '\\x00'::bytea, NULL::text[]
                       FROM generate_series(1, 1000000) g) TO '$DATA/copy.tsv'"
"${psql[@]}" -c "CREATE TABLE copy_events (LIKE plain_events INCLUDING ALL)"

# Same-size stores: before each round the plain tables get as many rows as
# allsource.events has, in the same streams (versions below any appended one),
# so every mode writes into indexes of about the same size and depth.
top_up() {
    "${psql[@]}" <<SQL
SELECT count(*) AS target FROM allsource.events \\gset
INSERT INTO plain_events (position, partition_id, stream_id, version, event_id, event_type, payload, created_at, checksum)
SELECT nextval('plain_position'), 0, 's-' || (g % 10000 + 1), currval('plain_position'), gen_random_uuid(), 'Fill', '$payload', now(), '\\x00'
FROM generate_series(1, :target - (SELECT count(*) FROM plain_events)) g;
INSERT INTO plpgsql_events (position, partition_id, stream_id, version, event_id, event_type, payload, created_at, checksum)
SELECT nextval('plain_position'), 0, 's-' || (g % 10000 + 1), -nextval('plain_position'), gen_random_uuid(), 'Fill', '$payload', now(), '\\x00'
FROM generate_series(1, :target - (SELECT count(*) FROM plpgsql_events)) g;
SQL
}

for round in $(seq 1 "$rounds"); do
    log "round $round of $rounds"
    top_up
    for write in "${writes[@]}"; do
        read -r name per sets <<<"$write"
        for streams in $sets; do
            for clients in "${clients_list[@]}"; do
                run "$name" "$streams" "$clients" "$per" "$round"
            done
        done
    done
    "${psql[@]}" -c "TRUNCATE copy_events"
    start=$(date +%s.%N)
    "${psql[@]}" -c "COPY copy_events FROM '$DATA/copy.tsv'"
    took=$(seconds_since "$start")
    events=$(awk -v s="$took" 'BEGIN { printf "%.0f", 1000000 / s }')
    echo "$round,copy_1m,10000,1,$events,," >> "$runs"
    printf 'round %d  %-18s %9s events/s\n' "$round" "copy_1m" "$events"
    run read_stream_100 100 1 100 "$round"
done

log "stream reads: 10,000 streams of 10 events, in AllSource and in plain_events"
"${psql[@]}" -v ON_ERROR_STOP=1 <<SQL
SELECT count(*) FROM generate_series(1, 10000) g, LATERAL allsource.append_batch('r-' || g,
    (SELECT jsonb_agg(jsonb_build_object('type', 'Bench', 'payload', '$payload'::jsonb)) FROM generate_series(1, 10)));
INSERT INTO plain_events (position, partition_id, stream_id, version, event_id, event_type, payload, created_at, checksum)
SELECT nextval('plain_position'), 0, stream_id, version, event_id, event_type, payload, created_at, checksum
FROM allsource.events WHERE stream_id LIKE 'r-%' ORDER BY position;
ANALYZE;
SQL
# A writer beside the readers: 8 clients appending (or inserting) for the
# readers' run, started a second before it.
beside() {
    pgbench --host=localhost --port="$port" --username=postgres --no-vacuum --jobs=1 --client=8 \
        --time=$((seconds + 2)) --define=streams=10000 --file="$DATA/scripts/$1.sql" postgres >/dev/null 2>&1 &
    sleep 1
}
protocol=prepared
for round in $(seq 1 "$rounds"); do
    for clients in 1 4 16; do
        run read_stream_10 10000 "$clients" 10 "$round"
        run select_10 10000 "$clients" 10 "$round"
    done
    beside append
    run read_stream_10 10000 8 10 "$round" read_stream_10_writes
    wait
    beside insert_1
    run select_10 10000 8 10 "$round" select_10_writes
    wait
done
protocol=simple

log "global reads over the store, 1,000,000 events each"
# Follows a global read from position 0, 1,000 events per call, for 1,000,000 events.
follow() {
    "${psql[@]}" -c "
        DO \$\$
        DECLARE cursor_at bigint := 0; got bigint; upto bigint; total bigint := 0;
        BEGIN
            WHILE total < 1000000 LOOP
                SELECT count(*), max(position) INTO got, upto FROM $1;
                EXIT WHEN got = 0;
                total := total + got;
                cursor_at := upto;
            END LOOP;
        END \$\$"
}
for round in $(seq 1 "$rounds"); do
    for read in read_all:"allsource.read_all(cursor_at, 1000)" read_category:"allsource.read_category('s', cursor_at, 1000)"; do
        start=$(date +%s.%N)
        follow "${read#*:}"
        events=$(awk -v s="$(seconds_since "$start")" 'BEGIN { printf "%.0f", 1000000 / s }')
        echo "$round,${read%%:*},,1,$events,," >> "$runs"
        printf 'round %d  %-18s %9s events/s\n' "$round" "${read%%:*}" "$events"
    done
done

log "watermark() with 200 connections open, 100 of them in appending transactions"
cat > "$DATA/scripts/idle.sql" <<'SQL'
SELECT pg_sleep(1);
SQL
cat > "$DATA/scripts/holding.sql" <<'SQL'
\set s random(1, 1000)
BEGIN;
SELECT allsource.append('held-' || :s, 'T', '{}');
SELECT pg_sleep(0.5);
COMMIT;
SQL
pgbench --host=localhost --port="$port" --username=postgres --no-vacuum --client=100 --time=20 --file="$DATA/scripts/idle.sql" postgres >/dev/null 2>&1 &
pgbench --host=localhost --port="$port" --username=postgres --no-vacuum --client=100 --time=20 --file="$DATA/scripts/holding.sql" postgres >/dev/null 2>&1 &
sleep 5
for round in $(seq 1 "$rounds"); do
    start=$(date +%s.%N)
    "${psql[@]}" -c "SELECT count(allsource.watermark()) FROM generate_series(1, 20000)" >/dev/null
    micros=$(awk -v s="$(seconds_since "$start")" 'BEGIN { printf "%.2f", s / 20000 * 1e6 }')
    echo "$round,watermark_us,,201,,$micros," >> "$runs"
    printf 'round %d  watermark()  %s µs per call\n' "$round" "$micros"
done
wait

log "verify_all over the whole store"
total=$("${psql[@]}" -c "SELECT count(*) FROM allsource.events")
start=$(date +%s.%N)
problems=$("${psql[@]}" -c "SELECT count(*) FROM allsource.verify_all()" 2>/dev/null)
events=$(awk -v n="$total" -v s="$(seconds_since "$start")" 'BEGIN { printf "%.0f", n / s }')
echo "1,verify_all,,1,$events,," >> "$runs"

log "verify_all over 40,000 streams of 7 events (a database of its own)"
"${psql[@]}" -c "CREATE DATABASE verify_small"
psql_small=("${psql[@]/--dbname=postgres/--dbname=verify_small}")
"${psql_small[@]}" -v ON_ERROR_STOP=1 <<SQL
CREATE EXTENSION allsource;
SELECT count(*) FROM generate_series(1, 40000) g, LATERAL allsource.append_batch('v-' || g,
    (SELECT jsonb_agg(jsonb_build_object('type', 'Bench', 'payload', '$payload'::jsonb)) FROM generate_series(1, 7)));
CHECKPOINT;
SQL
small_total=$("${psql_small[@]}" -c "SELECT count(*) FROM allsource.events")
for round in $(seq 1 "$rounds"); do
    start=$(date +%s.%N)
    small_problems=$("${psql_small[@]}" -c "SELECT count(*) FROM allsource.verify_all()" 2>/dev/null)
    events=$(awk -v n="$small_total" -v s="$(seconds_since "$start")" 'BEGIN { printf "%.0f", n / s }')
    echo "$round,verify_all_small,,1,$events,," >> "$runs"
    printf 'round %d  verify_all, 40,000 streams of 7: %s events/s, %s problems\n' "$round" "$events" "$small_problems"
done

# Medians per (mode, streams, clients) over the rounds.
summary=$OUT/summary.csv
echo "mode,streams,clients,events_per_s,p50_ms,p99_ms" > "$summary"
awk -F, 'NR > 1 { key = $2 "," $3 "," $4; e[key] = e[key] " " $5; a[key] = a[key] " " $6; b[key] = b[key] " " $7 }
    function median(list,   n, v, i, j, t) {
        n = split(list, v, " "); if (n == 0) return ""
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
        return v[int((n + 1) / 2)]
    }
    END { for (k in e) print k "," median(e[k]) "," median(a[k]) "," median(b[k]) }' "$runs" |
    sort -t, -k1,1 -k2,2n -k3,3n >> "$summary"

value() { awk -F, -v m="$1" -v s="$2" -v c="$3" -v col="$4" '$1 == m && $2 == s && $3 == c { print $col }' "$summary"; }
ratio() { awk -v a="$(value "$1" "$2" "$3" 4)" -v b="$(value "$4" "$5" "$6" 4)" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
{
    echo "AllSource benchmark, $(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo),"
    echo "PostgreSQL $("${psql[@]}" -c 'SHOW server_version'), fsync and synchronous_commit on; $("${psql[@]}" -c "SHOW allsource.ingest_workers") ingest workers; medians of $rounds rounds of $seconds s"
    echo
    printf '%-18s %7s %7s %12s %9s %9s\n' mode streams clients events/s p50_ms p99_ms
    tail -n +2 "$summary" | awk -F, '{ printf "%-18s %7s %7s %12s %9s %9s\n", $1, $2, $3, $4, $5, $6 }'
    echo
    echo "ratios (random streams)                         target"
    for c in 1 8 64; do
        echo "  append / single-row INSERT, $c clients:        $(ratio append 10000 "$c" insert_1 10000 "$c")   >= 0.8 at 8 and 64"
    done
    for c in 1 8 64; do
        echo "  append_batch / 100-row INSERT, $c clients:     $(ratio append_batch_100 10000 "$c" insert_100 10000 "$c")   >= 0.8"
    done
    echo "  enqueue+await / append, 64 clients:           $(ratio enqueue_await 10000 64 append 10000 64)   >= 2"
    for c in 8 64; do
        echo "  pipelined enqueue / 100-row INSERT, $c clients: $(ratio enqueue_pipelined 10000 "$c" insert_100 10000 "$c")   >= 0.8"
    done
    for c in 8 64; do
        echo "  PL/pgSQL append / single-row INSERT, $c:       $(ratio plpgsql_append 10000 "$c" insert_1 10000 "$c")"
        echo "  append / PL/pgSQL append, $c clients:          $(ratio append 10000 "$c" plpgsql_append 10000 "$c")"
    done
    for c in 1 4 16; do
        echo "  read_stream / plain SELECT, 10 events, $c readers: $(ratio read_stream_10 10000 "$c" select_10 10000 "$c")   >= 0.8"
    done
    echo "  the same, 8 readers beside 8 writers:          $(ratio read_stream_10_writes 10000 8 select_10_writes 10000 8)   >= 0.8"
    echo "  read_stream of 10, 1 client: p50 $(value read_stream_10 10000 1 5) ms, p99 $(value read_stream_10 10000 1 6) ms   p99 < 0.5 ms"
    echo "  (plain SELECT of 10, 1 client: p50 $(value select_10 10000 1 5) ms, p99 $(value select_10 10000 1 6) ms)"
    echo "  read_stream of 100, 1 client: p50 $(value read_stream_100 100 1 5) ms, p99 $(value read_stream_100 100 1 6) ms   p99 < 1.5 ms"
    echo "  watermark() with 201 connections: $(value watermark_us '' 201 5) µs   < 10 µs"
    echo "  verify_all: $(value verify_all '' 1 4) events/s over $total events, $problems problems"
    echo "  verify_all, 40,000 streams of 7: $(value verify_all_small '' 1 4) events/s over $small_total events   >= 100,000"
} | tee "$OUT/summary.txt"

# The chart: events/s of every write mode at 1, 8 and 64 clients, random streams.
for mode in insert_1 plpgsql_append append enqueue_await insert_100 append_batch_100 enqueue_pipelined; do
    echo "$mode $(value "$mode" 10000 1 4) $(value "$mode" 10000 8 4) $(value "$mode" 10000 64 4)"
done > "$DATA/chart.dat"
gnuplot <<GNUPLOT
set terminal pngcairo size 1000,520 font "sans,10" noenhanced
set output "$OUT/chart.png"
set title "Events/s with durable commits, 10,000 streams, $(nproc) cores, PostgreSQL $("${psql[@]}" -c 'SHOW server_version' | cut -d' ' -f1), $(date -u +%Y-%m-%d)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set logscale y
set yrange [100:*]
set grid ytics
set key top left
set xtics rotate by -20
plot "$DATA/chart.dat" using 2:xtic(1) title "1 client", '' using 3 title "8 clients", '' using 4 title "64 clients"
GNUPLOT
log "wrote $OUT/runs.csv, $OUT/summary.csv, $OUT/summary.txt and $OUT/chart.png"
