#!/usr/bin/env bash
# DCB: conditional appends of AllSource (allsource.append_if) against Python
# eventsourcing's own PostgreSQL DCB recorder (PostgresDCBRecorderTT of
# eventsourcing 9.5.6, its tables in the same database), both through psycopg 3,
# on one private cluster with durable settings (fsync, synchronous_commit on):
#   1. conditional appends per second at 1, 8 and 64 clients, disjoint
#      boundaries (every client its own tags) and 10% overlap (a tenth of a
#      client's decisions use a tag all clients share); conflicts retried;
#   2. AllSource's append_if with a condition against its append_batch of the
#      same events and append_if without a condition, 1 and 8 clients;
#   3. PostgreSQL's own ceiling at the same client counts: the event as one
#      plain INSERT (no condition), disjoint;
#   4. read_query of one tag over 1,000,000 events, p50/p99 (and
#      eventsourcing's read of one tag over as many).
# benches/dcb.py does the measuring (see its docstring for the decisions);
# its venv ($STATE_DIR/venv-dcb) is filled from benches/dcb-requirements.txt.
#
#   benches/dcb.sh [SECONDS]                 default 10 s per run (about 10 minutes after the build)
#   ALLSOURCE_BENCH_PG=17 benches/dcb.sh     another PostgreSQL (default 15)
#   ALLSOURCE_BENCH_INSTALLED=1 …            the release build is installed already: no setup, no build
#   DCB_SYSTEMS=eventsourcing …              eventsourcing alone (no build, no CREATE EXTENSION;
#                                            the server still preloads an installed allsource.so)
#   DCB_CLIENTS=1,8 DCB_READ_EVENTS=0 …      fewer client counts; no read benchmark
#   DCB_DEBUG=1 …                            also log each run's measuring window (to line up perf or pg_stat_activity)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
use_postgres "${ALLSOURCE_BENCH_PG:-15}"
seconds=${1:-10}
systems=${DCB_SYSTEMS:-allsource,eventsourcing,plain}
DATA=$STATE_DIR/bench-dcb
DCB_VENV=$STATE_DIR/venv-dcb

python_venv benches/dcb-requirements.txt "$DCB_VENV"

if [ -z "${ALLSOURCE_BENCH_INSTALLED:-}" ] && [[ ,$systems, == *,allsource,* ]]; then
    # bench_cluster's setup and build, at a lower priority (the machine is shared).
    if [ "$PG_MAJOR" = 15 ]; then nice scripts/setup.sh; else nice scripts/setup.sh "$PG_MAJOR"; fi
    log "building and installing the release build for PostgreSQL $PG_MAJOR"
    (renice -n 10 -p "$BASHPID" >/dev/null; install_extension --release)
fi
bench_cluster_start "$DATA" 25502 "allsource.database = 'bench'
max_wal_size = 4GB"
"${psql[@]}" -c "CREATE DATABASE bench"
psql=("${psql[@]/--dbname=postgres/--dbname=bench}")
if [[ ,$systems, == *,allsource,* ]]; then
    "${psql[@]}" -c "CREATE EXTENSION allsource" >/dev/null
fi

export BENCH_PAYLOAD
"$DCB_VENV/bin/python" benches/dcb.py --port "$port" --dbname bench --seconds "$seconds" --systems "$systems" \
    --clients "${DCB_CLIENTS:-1,8,64}" --read-events "${DCB_READ_EVENTS:-1000000}" \
    --results "$DATA/results.json" | tee "$DATA/report.txt"
