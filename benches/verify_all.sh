#!/usr/bin/env bash
# verify_all speed: loads STREAMS × EVENTS events of ~200 bytes into a fresh
# database of the demo cluster (start it with scripts/run.sh), then times
# allsource.verify_all() and prints events per second.
#   benches/verify_all.sh [STREAMS] [EVENTS_PER_STREAM]     defaults: 10000 100
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
streams=${1:-10000}
per_stream=${2:-100}
port=$(sed -n 's/^port = //p' "$DEMO_DATA/allsource.conf" 2>/dev/null || true)
[ -n "$port" ] && [ -f "$DEMO_DATA/postmaster.pid" ] || { echo "start the demo cluster first: scripts/run.sh" >&2; exit 1; }
psql=(psql --no-psqlrc --quiet --tuples-only --no-align --host=localhost --port="$port" --username=postgres)

PGOPTIONS="-c client_min_messages=warning" "${psql[@]}" --dbname=postgres -c "DROP DATABASE IF EXISTS allsource_bench" -c "CREATE DATABASE allsource_bench"
"${psql[@]}" --dbname=allsource_bench -c "CREATE EXTENSION allsource"

seconds() { awk -v start="$1" -v now="$(date +%s.%N)" 'BEGIN { print now - start }'; }
per_second() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }
events=$((streams * per_stream))
log "loading $events events: $streams streams × $per_stream, one append_batch per stream"
start=$(date +%s.%N)
"${psql[@]}" --dbname=allsource_bench -c "
    SELECT count(*) FROM generate_series(1, $streams) s,
        LATERAL allsource.append_batch('bench-' || s, (
            SELECT jsonb_agg(jsonb_build_object('type', 'ItemAdded', 'payload', jsonb_build_object(
                'sku', 'SKU-' || i, 'qty', i % 7, 'price', 19.99, 'note', repeat('x', 120)))
            ) FROM generate_series(1, $per_stream) i)) b" >/dev/null
load=$(seconds "$start")
printf 'append_batch load: %.1f s, %s events/s\n' "$load" "$(per_second "$events" "$load")"

"${psql[@]}" --dbname=allsource_bench -c "VACUUM ANALYZE" >/dev/null
for round in 1 2 3; do
    start=$(date +%s.%N)
    # verify_all's progress NOTICEs (every 5 s) go to stderr.
    failing=$("${psql[@]}" --dbname=allsource_bench -c "SELECT count(*) FROM allsource.verify_all()")
    took=$(seconds "$start")
    printf 'verify_all round %d: %d events in %.2f s = %s events/s, %d failing\n' \
        "$round" "$events" "$took" "$(per_second "$events" "$took")" "$failing"
done
