#!/usr/bin/env bash
# Subscriptions beside what they are made of, in one run on one private
# cluster with durable settings (fsync, synchronous_commit on), one
# subscription worker:
#   1. receive + ack of batches of 100 in one consumer (pgbench, one client),
#      against read_all pages of 100 of the same events by one client;
#   2. a handler inserting one row per event, and one inserting a batch's rows
#      in one statement, against a plain INSERT … SELECT of the same rows (all
#      timed by clock_timestamp() of the rows);
#   3. end-to-end lag at 1,000 appends/s (pgbench --rate): the handler stores
#      clock_timestamp() beside the event's created_at; p50 and p99.
#
#   benches/subscriptions.sh [EVENTS] [LAG_SECONDS]    default 200000 events, 20 s
#   ALLSOURCE_BENCH_PG=17 benches/subscriptions.sh     another PostgreSQL (default 15)
#   ALLSOURCE_BENCH_INSTALLED=1 …                      the release build is installed
#                                                      already: no setup, no build
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
use_postgres "${ALLSOURCE_BENCH_PG:-15}"
events=${1:-200000}
lag_seconds=${2:-20}
DATA=$STATE_DIR/bench-subscriptions
streams=2000
config="allsource.database = 'bench'
allsource.subscription_workers = 1"
if [ -n "${ALLSOURCE_BENCH_INSTALLED:-}" ]; then
    bench_cluster_start "$DATA" 25492 "$config"
else
    bench_cluster "$DATA" 25492 "$config"
fi
"${psql[@]}" -c "CREATE DATABASE bench"
psql=("${psql[@]/--dbname=postgres/--dbname=bench}")
sql() { "${psql[@]}" -c "$1"; }
seconds() { awk -v start="$1" -v now="$(date +%s.%N)" 'BEGIN { print now - start }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

sql "CREATE EXTENSION allsource" >/dev/null
log "loading $events events of ~200 bytes into $streams streams (append_batch of 100)"
per_stream=$((events / streams))
sql "SELECT count(*) FROM generate_series(1, $streams) s,
         LATERAL allsource.append_batch('bench-' || s, (
             SELECT jsonb_agg(jsonb_build_object('type', 'Bench', 'payload', '$BENCH_PAYLOAD'::jsonb || jsonb_build_object('i', i)))
             FROM generate_series(1, $per_stream) i)) b" >/dev/null
events=$((streams * per_stream))
sql "VACUUM ANALYZE" >/dev/null
sql "SELECT allsource.create_subscription('consumer')" >/dev/null

# 1. One client, batches of 100: read_all pages, then receive + ack.
mkdir -p "$DATA/scripts"
cat > "$DATA/scripts/read_all.sql" <<'SQL'
SELECT max(position) AS cursor FROM allsource.read_all(:cursor, 100) \gset
SQL
cat > "$DATA/scripts/receive_ack.sql" <<'SQL'
SELECT max(position) AS last FROM allsource.receive('consumer', 100) \gset
SELECT allsource.ack('consumer', :last);
SQL
# The same with the ack's commit not waiting for its WAL flush: what the
# flush costs (safe for a consumer: a crash takes the checkpoint back with
# whatever the transaction wrote, and the events come again).
{ echo "SET synchronous_commit = off;"; cat "$DATA/scripts/receive_ack.sql"; } > "$DATA/scripts/receive_ack_async.sql"
batches=$((events / 100))
# pgbench SCRIPT: events/s of $batches transactions of 100 events by one client.
pgbench_events() {
    local output
    output=$("$PG_BIN/pgbench" --host=localhost --port="$port" --username=postgres --no-vacuum \
        --client=1 --transactions="$batches" --define=cursor=0 --file="$DATA/scripts/$1.sql" bench 2>&1) ||
        { echo "pgbench $1 failed:" >&2; echo "$output" | tail -20 >&2; return 1; }
    echo "$output" | awk '/^tps = / { printf "%.0f", $3 * 100 }'
}
log "read_all and receive + ack: $batches batches of 100 each, one client"
read_all=$(pgbench_events read_all)
receive_ack=$(pgbench_events receive_ack)
sql "SELECT allsource.drop_subscription('consumer'); SELECT allsource.create_subscription('consumer')" >/dev/null
receive_ack_async=$(pgbench_events receive_ack_async)
[ "$(sql "SELECT lag_events FROM allsource.subscriptions() WHERE name = 'consumer'")" = 0 ] ||
    { echo "receive + ack did not consume every event" >&2; exit 1; }

# 2. A handler inserting one row per event, and the same rows by INSERT … SELECT.
log "a handler inserting one row per event, and INSERT … SELECT of the same rows"
sql "CREATE TABLE handled (position bigint, stream_id text, payload jsonb, at timestamptz DEFAULT clock_timestamp());
     CREATE TABLE handled_batches (LIKE handled INCLUDING DEFAULTS);
     CREATE TABLE inserted (LIKE handled INCLUDING DEFAULTS);
     CREATE FUNCTION insert_row(e allsource.events) RETURNS void LANGUAGE plpgsql
     AS 'BEGIN INSERT INTO public.handled (position, stream_id, payload) VALUES (e.position, e.stream_id, e.payload); END';
     CREATE FUNCTION insert_rows(events allsource.events[]) RETURNS void LANGUAGE sql
     AS 'INSERT INTO public.handled_batches (position, stream_id, payload) SELECT position, stream_id, payload FROM unnest(events)';" >/dev/null
# handler_rate NAME FUNCTION TABLE: events/s of a handler subscription filling TABLE.
handler_rate() {
    sql "SELECT allsource.create_subscription('$1', handler => '$2')" >/dev/null
    local deadline=$((SECONDS + 1800))
    until [ "$(sql "SELECT count(*) FROM $3")" -ge "$events" ]; do
        [ $SECONDS -lt $deadline ] || { echo "the handler $2 did not finish within 30 minutes" >&2; exit 1; }
        sleep 1
    done
    sql "SELECT allsource.drop_subscription('$1')" >/dev/null
    sql "SELECT round(count(*) / extract(epoch FROM max(at) - min(at))) FROM $3"
}
handler=$(handler_rate rows 'public.insert_row(allsource.events)' handled)
batch_handler=$(handler_rate batches 'public.insert_rows(allsource.events[])' handled_batches)
sql "INSERT INTO inserted (position, stream_id, payload) SELECT position, stream_id, payload FROM allsource.events" >/dev/null
insert_select=$(sql "SELECT round(count(*) / extract(epoch FROM max(at) - min(at))) FROM inserted")

# 3. Lag at 1,000 appends/s: append's commit to the handler's row.
log "end-to-end lag at 1,000 appends/s for $lag_seconds s"
sql "CREATE TABLE lags (position bigint, lag_ms float8);
     CREATE FUNCTION record_lag(e allsource.events) RETURNS void LANGUAGE plpgsql
     AS 'BEGIN INSERT INTO public.lags VALUES (e.position, extract(epoch FROM clock_timestamp() - e.created_at) * 1000); END';
     SELECT allsource.create_subscription('lag', start_after => allsource.watermark(),
                                          handler => 'public.record_lag(allsource.events)')" >/dev/null
cat > "$DATA/scripts/append.sql" <<SQL
\\set s random(1, 10000)
SELECT version FROM allsource.append('lag-' || :s, 'Bench', '$BENCH_PAYLOAD');
SQL
"$PG_BIN/pgbench" --host=localhost --port="$port" --username=postgres --no-vacuum --client=4 --jobs=2 \
    --rate=1000 --time="$lag_seconds" --file="$DATA/scripts/append.sql" bench >"$DATA/pgbench_append.txt" 2>&1 ||
    { tail -20 "$DATA/pgbench_append.txt" >&2; exit 1; }
appended=$(sql "SELECT count(*) FROM allsource.read_all(0, 2147483647) WHERE stream_id LIKE 'lag-%'")
deadline=$((SECONDS + 120))
until [ "$(sql "SELECT count(*) FROM lags")" -ge "$appended" ]; do
    [ $SECONDS -lt $deadline ] || { echo "the lag handler did not catch up within 2 minutes" >&2; exit 1; }
    sleep 1
done
read -r rate p50 p99 max < <(sql "SELECT round($appended / $lag_seconds.0), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY lag_ms)::numeric, 1),
                                         round(percentile_cont(0.99) WITHIN GROUP (ORDER BY lag_ms)::numeric, 1),
                                         round(max(lag_ms)::numeric, 1) FROM lags" | tr '|' ' ')

cat <<REPORT

Subscriptions benchmark, $(date +%F), $(nproc) cores, PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), fsync and synchronous_commit on, 1 subscription worker
$events events of ~200 bytes in $streams streams

one consumer, batches of 100       events/s   ratio  target
read_all pages of 100            $(printf '%10s' "$read_all")
receive + ack of 100             $(printf '%10s' "$receive_ack")   $(ratio "$receive_ack" "$read_all")  >= 0.8
  the same, synchronous_commit off$(printf '%10s' "$receive_ack_async")   $(ratio "$receive_ack_async" "$read_all")

one row per event                  events/s   ratio  target
INSERT … SELECT                  $(printf '%10s' "$insert_select")
handler of events (1,000/commit) $(printf '%10s' "$handler")   $(ratio "$handler" "$insert_select")  >= 0.5
handler of batches (1,000/commit)$(printf '%10s' "$batch_handler")   $(ratio "$batch_handler" "$insert_select")  >= 0.5

lag at $rate appends/s (append commit -> handler row, $appended events)
p50 ${p50} ms   p99 ${p99} ms (target < 100 ms)   max ${max} ms
REPORT
