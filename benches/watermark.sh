#!/usr/bin/env bash
# The cost of allsource.watermark() with 200 connections open (half of them
# inside appending transactions that hold slots), and read_all /
# read_category throughput over 1,000,000 events. Runs its own cluster with
# the release build; prints the figures the README quotes.
#   benches/watermark.sh [EVENTS]      default 1000000 (in streams of 100)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
events=${1:-1000000}
streams=$((events / 100))
DATA=$STATE_DIR/bench

scripts/setup.sh
log "building and installing the release build"
install_extension --release
cluster_stop "$DATA"
rm -rf "$DATA"
port=$(free_port 25452)
cluster_start "$DATA" "$port" "max_connections = 300
shared_buffers = 1GB"
trap 'cluster_stop "$DATA"' EXIT
psql=(psql --no-psqlrc --quiet --tuples-only --no-align --host=localhost --port="$port" --username=postgres --dbname=postgres)
"${psql[@]}" -c "CREATE EXTENSION allsource"

seconds_since() { awk -v start="$1" -v now="$(date +%s.%N)" 'BEGIN { print now - start }'; }

log "loading $events events"
"${psql[@]}" -c "
    SELECT count(*) FROM generate_series(1, $streams) s,
        LATERAL allsource.append_batch('bench-' || s, (
            SELECT jsonb_agg(jsonb_build_object('type', 'ItemAdded', 'payload', jsonb_build_object(
                'sku', 'SKU-' || i, 'qty', i % 7, 'price', 19.99, 'note', repeat('x', 120)))
            ) FROM generate_series(1, 100) i)) b" >/dev/null
"${psql[@]}" -c "VACUUM ANALYZE" >/dev/null

# Follows a global read from position 0 to the end, 1,000 events per call.
follow() {
    "${psql[@]}" -c "
        DO \$\$
        DECLARE cursor_at bigint := 0; got bigint; total bigint := 0; upto bigint;
        BEGIN
            LOOP
                SELECT count(*), max(position) INTO got, upto FROM $1;
                EXIT WHEN got = 0;
                total := total + got;
                cursor_at := upto;
            END LOOP;
            RAISE NOTICE 'read % events', total;
        END \$\$" 2>&1 | sed -n 's/.*NOTICE:  //p'
}

for round in 1 2 3; do
    for read in "allsource.read_all(cursor_at, 1000)" "allsource.read_category('bench', cursor_at, 1000)"; do
        start=$(date +%s.%N)
        result=$(follow "$read")
        took=$(seconds_since "$start")
        printf 'round %d  %-50s %s in %.2f s = %s events/s\n' "$round" "$read" "$result" "$took" \
            "$(awk -v n="$events" -v s="$took" 'BEGIN { printf "%.0f", n / s }')"
    done
done

calls=20000
watermark_cost() {
    local start took
    start=$(date +%s.%N)
    "${psql[@]}" -c "SELECT count(allsource.watermark()) FROM generate_series(1, $calls)" >/dev/null
    took=$(seconds_since "$start")
    awk -v s="$took" -v n="$calls" -v what="$1" 'BEGIN { printf "watermark() %-45s %.2f us per call\n", what, s / n * 1e6 }'
}
watermark_cost "with 1 connection"

log "opening 200 connections: 100 idle, 100 in appending transactions that hold slots"
cat > "$DATA/idle.sql" <<'SQL'
SELECT pg_sleep(1);
SQL
cat > "$DATA/holding.sql" <<'SQL'
\set s random(1, 1000)
BEGIN;
SELECT allsource.append('held-' || :s, 'T', '{}');
SELECT pg_sleep(0.5);
COMMIT;
SQL
pgbench --host=localhost --port="$port" --username=postgres --no-vacuum --client=100 --time=25 --file="$DATA/idle.sql" postgres >/dev/null 2>&1 &
pgbench --host=localhost --port="$port" --username=postgres --no-vacuum --client=100 --time=25 --file="$DATA/holding.sql" postgres >/dev/null 2>&1 &
sleep 5
open=$("${psql[@]}" -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
held=$("${psql[@]}" -c "SELECT count(*) FROM allsource.inflight()")
log "$open client connections, $held slots held"
for round in 1 2 3; do
    watermark_cost "with $open connections, $held slots held"
done
wait
