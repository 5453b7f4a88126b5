#!/usr/bin/env bash
# Hot standby and failover, on two local clusters of the installed build: a
# primary and a streaming replica made with `pg_basebackup -R`, then
# tests/scale_out/standby.py (reads and refused writes on the standby, a
# follower on the standby under load with rollbacks, the same in three
# databases, and a failover: kill -9
# of the primary under load with synchronous replication, promotion, nothing
# acknowledged lost).
#   scripts/test_standby.sh   PostgreSQL 15; AllSource installed (scripts/test.sh does it)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
started=$SECONDS

base=$STATE_DIR/standby-test
primary=$base/primary
standby=$base/standby
cluster_stop "$standby"
cluster_stop "$primary"
rm -rf "$base"
trap 'cluster_stop "$standby"; cluster_stop "$primary"' EXIT

# The queue and the publisher in every database (store, store_b, store_c);
# publishing every 5 ms, so a few seconds of load take many turns of it.
# Per database a publisher, an ingest worker and a notifier, and the launcher.
settings="allsource.watermark_publish_interval_ms = 5
max_wal_senders = 4
max_worker_processes = 16"
primary_port=$(free_port $((TEST_PORT + 30)))
log "standby test: primary on port $primary_port"
cluster_start "$primary" "$primary_port" "$settings"
psql=(psql --no-psqlrc --quiet --tuples-only --no-align --host=localhost --username=postgres)
for database in store store_b store_c; do
    "${psql[@]}" --port="$primary_port" --dbname=postgres -c "CREATE DATABASE $database"
    "${psql[@]}" --port="$primary_port" --dbname=$database -c "CREATE EXTENSION allsource"
done

standby_port=$(free_port $((primary_port + 1)))
log "standby test: pg_basebackup -R, standby on port $standby_port"
quietly as_pg "$PG_BIN/pg_basebackup" --pgdata="$standby" --write-recovery-conf --wal-method=stream --checkpoint=fast \
    --host=localhost --port="$primary_port" --username=postgres
# The copy carries the primary's allsource.conf: cluster_start writes the standby's own.
cluster_start "$standby" "$standby_port" "$settings"

python_venv
"$VENV/bin/python" tests/scale_out/standby.py --primary-port "$primary_port" --standby-port "$standby_port" \
    --primary-data "$primary" --standby-data "$standby" --pg-bin "$PG_BIN"
log "standby and failover tests passed in $((SECONDS - started)) s"
