#!/usr/bin/env bash
# What scaling out costs, on one machine (benches/README.md, "Scaling out"), with durable
# settings (fsync and synchronous_commit on), 200-byte JSON payloads into
# 10,000 streams:
#   1. the watermark publisher's cost on the primary: append throughput at 8
#      clients with allsource.watermark_publish_interval_ms = 10 (the default)
#      against 0 (off), interleaved over rounds;
#   2. how far a hot standby's watermark trails: from an append's COMMIT on the
#      primary until watermark() on the standby passes it, idle and while 8
#      clients append (p50/p99);
#   3. the PL/Proxy router: append through a router against append on the node
#      itself, at 1 and 8 clients.
#   benches/scale_out.sh [ROUNDS] [SECONDS_PER_MODE]     default 3 rounds of 10 s
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
rounds=${1:-3}
seconds=${2:-10}
PRIMARY=$STATE_DIR/bench-primary
STANDBY=$STATE_DIR/bench-standby

cluster_stop "$STANDBY"
rm -rf "$STANDBY"
bench_cluster "$PRIMARY" 25462 "allsource.database = 'postgres'"
trap 'cluster_stop "$STANDBY"; cluster_stop "$PRIMARY"' EXIT
"${psql[@]}" -c "CREATE EXTENSION allsource"
standby_port=$(free_port $((port + 1)))
quietly as_pg "$PG_BIN/pg_basebackup" --pgdata="$STANDBY" --write-recovery-conf --wal-method=stream \
    --checkpoint=fast --host=localhost --port="$port" --username=postgres
cluster_start "$STANDBY" "$standby_port" "max_connections = 300
shared_buffers = 1GB"
# The router: PL/Proxy in a database of the same server, one node (this one).
"${psql[@]}" -c "CREATE DATABASE router"
psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 --host=localhost --port="$port" --username=postgres \
    --dbname=router --file=sql/router.sql
psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 --host=localhost --port="$port" --username=postgres --dbname=router <<SQL
INSERT INTO allsource_router.nodes VALUES ('node1', 'host=localhost port=$port dbname=postgres');
INSERT INTO allsource_router.partitions SELECT p, 'node1' FROM generate_series(0, 31) p;
SQL

scripts=$PRIMARY/scripts
mkdir -p "$scripts"
cat >"$scripts/append.sql" <<SQL
\set s random(1, 10000)
SELECT version FROM allsource.append('s-' || :s, 'Bench', '$BENCH_PAYLOAD');
SQL

# run_pgbench DATABASE CLIENTS: events/s of $seconds of append.sql.
run_pgbench() {
    pgbench --no-vacuum --host=localhost --port="$port" --username=postgres --client="$2" --jobs=2 \
        --time="$seconds" --file="$scripts/append.sql" "$1" 2>&1 |
        sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | cut -d. -f1
}
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
set_interval() {
    "${psql[@]}" -c "ALTER SYSTEM SET allsource.watermark_publish_interval_ms = $1" -c "SELECT pg_reload_conf()" >/dev/null
}

log "1. append at 8 clients, publishing every 10 ms against off ($rounds rounds of $seconds s, after a warm-up)"
run_pgbench postgres 8 >/dev/null  # creates the 10,000 streams: no mode pays for that
on=() off=()
for round in $(seq "$rounds"); do
    # Alternating which goes first cancels a drift of the machine within a round.
    for mode in $( ((round % 2)) && echo "on off" || echo "off on"); do
        if [ "$mode" = on ]; then set_interval 10; on+=("$(run_pgbench postgres 8)"); fi
        if [ "$mode" = off ]; then set_interval 0; off+=("$(run_pgbench postgres 8)"); fi
    done
    echo "round $round: publishing ${on[-1]} events/s, off ${off[-1]} events/s"
done
set_interval 10

log "2. the standby's watermark behind the primary's commits"
python_venv
"$VENV/bin/python" - "$port" "$standby_port" "$scripts/append.sql" <<'PYTHON'
import statistics, subprocess, sys, time
import psycopg

primary_port, standby_port, script = sys.argv[1:4]
primary = psycopg.connect(host="localhost", port=primary_port, user="postgres", autocommit=True)
standby = psycopg.connect(host="localhost", port=standby_port, user="postgres", autocommit=True)

def lags(count):
    found = []
    for i in range(count):
        position = primary.execute("SELECT position FROM allsource.append('lag', 'Bench', '{}')").fetchone()[0]
        committed = time.perf_counter()
        while standby.execute("SELECT allsource.watermark()").fetchone()[0] < position:
            pass
        found.append((time.perf_counter() - committed) * 1000)
        time.sleep(0.01)
    found.sort()
    return f"p50 {statistics.median(found):.1f} ms, p99 {found[int(len(found) * 0.99) - 1]:.1f} ms"

print(f"idle primary: {lags(300)}")
load = subprocess.Popen(["pgbench", "--no-vacuum", "--host=localhost", f"--port={primary_port}", "--username=postgres",
                         "--client=8", "--jobs=2", "--time=20", f"--file={script}", "postgres"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(1)
print(f"8 clients appending: {lags(300)}")
load.wait()
PYTHON

log "3. append through the PL/Proxy router against the node itself ($rounds rounds of $seconds s)"
declare -A results
for round in $(seq "$rounds"); do
    for clients in 1 8; do
        results[direct@$clients]+=" $(run_pgbench postgres "$clients")"
        results[router@$clients]+=" $(run_pgbench router "$clients")"
    done
done

log "results (medians of $rounds rounds; 2 cores, PostgreSQL $PG_MAJOR, fsync and synchronous_commit on)"
on_median=$(median "${on[@]}") off_median=$(median "${off[@]}")
echo "append at 8 clients: publishing every 10 ms $on_median events/s, off $off_median events/s," \
    "ratio $(awk -v a="$on_median" -v b="$off_median" 'BEGIN { printf "%.2f", a / b }')"
for clients in 1 8; do
    # shellcheck disable=SC2086  # the lists are space-separated numbers
    direct=$(median ${results[direct@$clients]}) routed=$(median ${results[router@$clients]})
    echo "append at $clients clients: direct $direct events/s, through the router $routed events/s," \
        "ratio $(awk -v a="$routed" -v b="$direct" 'BEGIN { printf "%.2f", a / b }')"
done
