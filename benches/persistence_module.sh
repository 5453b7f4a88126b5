#!/usr/bin/env bash
# eventsourcing's persistence modules: AllSource's (clients/python,
# eventsourcing_allsource) against the library's own PostgreSQL module
# (eventsourcing 9.5.6, its tables in the same database), both through
# psycopg 3, on one private cluster with durable settings (fsync,
# synchronous_commit on): insert throughput at 1, 8 and 32 threads in the
# shape of the library's test_concurrent_throughput, then its
# test_performance and two reads, one thread. benches/persistence_module.py
# does the measuring (its docstring says how); its venv
# ($STATE_DIR/venv-eventsourcing) is filled from clients/python/requirements-test.txt
# and the package.
#
#   benches/persistence_module.sh [SECONDS]        default 10 s per run (about 5 minutes after the build)
#   ALLSOURCE_BENCH_PG=17 benches/persistence_module.sh    another PostgreSQL (default 15)
#   ALLSOURCE_BENCH_INSTALLED=1 …                  the release build is installed already
#   ES_THREADS=1,8 …                               other thread counts
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
use_postgres "${ALLSOURCE_BENCH_PG:-15}"
seconds=${1:-10}
DATA=$STATE_DIR/bench-eventsourcing
ES_VENV=$STATE_DIR/venv-eventsourcing

python_venv clients/python/requirements-test.txt "$ES_VENV"
quietly "$ES_VENV/bin/pip" install --disable-pip-version-check --no-deps --force-reinstall ./clients/python

if [ -z "${ALLSOURCE_BENCH_INSTALLED:-}" ]; then
    if [ "$PG_MAJOR" = 15 ]; then nice scripts/setup.sh; else nice scripts/setup.sh "$PG_MAJOR"; fi
    log "building and installing the release build for PostgreSQL $PG_MAJOR"
    (renice -n 10 -p "$BASHPID" >/dev/null; install_extension --release)
fi
bench_cluster_start "$DATA" 25503 "max_wal_size = 4GB"
"${psql[@]}" -c "CREATE DATABASE bench"
psql=("${psql[@]/--dbname=postgres/--dbname=bench}")
"${psql[@]}" -c "CREATE EXTENSION allsource" >/dev/null

"$ES_VENV/bin/python" benches/persistence_module.py --port "$port" --dbname bench --seconds "$seconds" \
    --threads "${ES_THREADS:-1,8,32}" | tee "$DATA/report.txt"
