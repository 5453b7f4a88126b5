#!/usr/bin/env bash
# The PL/Proxy router (sql/router.sql) over three AllSource nodes, on four
# local databases of the installed build: three clusters with a database
# "node" each (32 partitions), and a database "router" on the first cluster
# with the partitions mapped partition_id % 3 onto the nodes. Then
# tests/scale_out/router.py: hashing, routing, errors, tickets, concurrent
# writers, a follower over all nodes, and moving a partition.
#   scripts/test_router.sh   PostgreSQL 15 with AllSource and PL/Proxy installed
#                            (postgresql-15-plproxy; installed here when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
use_postgres 15
started=$SECONDS

[ -f "$("$PG_CONFIG" --sharedir)/extension/plproxy.control" ] || apt_install "postgresql-$PG_MAJOR-plproxy"

base=$STATE_DIR/router-test
dirs=("$base/node1" "$base/node2" "$base/node3")
for dir in "${dirs[@]}"; do cluster_stop "$dir"; done
rm -rf "$base"
trap 'for dir in "${dirs[@]}"; do cluster_stop "$dir"; done' EXIT

psql=(psql --no-psqlrc --quiet --tuples-only --no-align -v ON_ERROR_STOP=1 --host=localhost --username=postgres)
ports=()
port=$((TEST_PORT + 40))
for i in 1 2 3; do
    port=$(free_port "$port")
    log "router test: node$i on port $port"
    # The ingest workers append in database "node": enqueue works there.
    cluster_start "${dirs[$((i - 1))]}" "$port" "allsource.database = 'node'"
    "${psql[@]}" --port="$port" --dbname=postgres -c "CREATE DATABASE node"
    "${psql[@]}" --port="$port" --dbname=node -c "CREATE EXTENSION allsource"
    ports+=("$port")
    port=$((port + 1))
done

log "router test: database router on port ${ports[0]}, sql/router.sql"
"${psql[@]}" --port="${ports[0]}" --dbname=postgres -c "CREATE DATABASE router"
"${psql[@]}" --port="${ports[0]}" --dbname=router --file=sql/router.sql
# Twice: the script keeps the configuration and replaces the functions.
"${psql[@]}" --port="${ports[0]}" --dbname=router --file=sql/router.sql
"${psql[@]}" --port="${ports[0]}" --dbname=router <<SQL
INSERT INTO allsource_router.nodes VALUES
    ('node1', 'host=localhost port=${ports[0]} dbname=node'),
    ('node2', 'host=localhost port=${ports[1]} dbname=node'),
    ('node3', 'host=localhost port=${ports[2]} dbname=node');
INSERT INTO allsource_router.partitions SELECT p, 'node' || (p % 3 + 1) FROM generate_series(0, 31) p;
SQL

python_venv
"$VENV/bin/python" tests/scale_out/router.py --router-port "${ports[0]}" --node-ports "${ports[@]}"
log "router tests passed in $((SECONDS - started)) s"
