#!/usr/bin/env bash
# Builds AllSource, runs it preloaded in a private PostgreSQL 15 cluster,
# shows a short demo and prints how to connect.
#   scripts/run.sh        set up, build, (re)start the cluster, demo
#                         (again any time: it keeps the cluster's data, and the
#                         demo only adds streams of its own, see scripts/demo.sql)
#   scripts/run.sh stop   stop the cluster
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
DATA=$DEMO_DATA

if [ "${1:-}" = "stop" ]; then
    cluster_stop "$DATA"
    log "stopped the cluster in $DATA"
    exit 0
fi

scripts/setup.sh
log "building and installing the extension (release)"
install_extension --release
port=$(free_port $DEMO_PORT)
log "starting PostgreSQL $PG_MAJOR in $DATA on port $port"
# The ingest workers append in the database you connect to, where the demo runs.
cluster_start "$DATA" "$port" "allsource.database = 'allsource'"

psql=(psql --no-psqlrc --quiet --host=localhost --port="$port" --username=postgres)
"${psql[@]}" --dbname=postgres -c "SELECT 1 FROM pg_database WHERE datname = 'allsource'" --tuples-only |
    grep -q 1 || "${psql[@]}" --dbname=postgres -c "CREATE DATABASE allsource"
log "demo (it adds two streams of its own, order-demoN and sensor-demoN, and changes nothing else)"
"${psql[@]}" --dbname=allsource --echo-queries -f scripts/demo.sql

cat <<TXT

AllSource is running. Connect with:
    psql "host=localhost port=$port user=postgres dbname=allsource"
Stop it with:
    scripts/run.sh stop
TXT
