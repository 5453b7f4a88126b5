#!/usr/bin/env bash
# Sets up what is missing and runs every test: formatting and lints, the
# pure-Rust unit tests and #[pg_test]s inside PostgreSQL (cargo pgrx's test
# cluster), then the driver tests against a private cluster with the
# extension preloaded. Works as root: PostgreSQL runs as the postgres user.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
started=$SECONDS

scripts/setup.sh

log "cargo fmt --check"
cargo fmt --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --quiet --all-targets -- -D warnings
# The driver tests are `test = false` (they need a server): --all-targets skips them.
cargo clippy --quiet --test driver -- -D warnings
cargo clippy --quiet -p allsource-stress --all-targets -- -D warnings

log "unit tests and #[pg_test]s (PostgreSQL $PG_MAJOR)"
stop_demo_for_install  # the pgrx test harness installs the extension too
PGRX_DATA=$STATE_DIR/pgrx-test
mkdir -p "$PGRX_DATA" && chmod 700 "$PGRX_DATA"
[ "$(id -u)" -ne 0 ] || chown postgres: "$STATE_DIR" "$PGRX_DATA"
# What `cargo pgrx test pg15 --runas postgres --pgdata DIR` does, limited to the library's tests.
CARGO_PGRX_TEST_RUNAS=$( [ "$(id -u)" -eq 0 ] && echo postgres || id -un ) \
CARGO_PGRX_TEST_PGDATA=$PGRX_DATA \
PGRX_FEATURES="pg$PG_MAJOR" \
    cargo test --features "pg$PG_MAJOR pg_test" --lib
cargo test --quiet -p allsource-stress

log "driver tests against a preloaded server"
install_extension
DRIVER_DATA=$STATE_DIR/driver-test
cluster_stop "$DRIVER_DATA"
rm -rf "$DRIVER_DATA"
port=$(free_port $TEST_PORT)
cluster_start "$DRIVER_DATA" "$port" "max_connections = 200
max_prepared_transactions = 10
max_worker_processes = 32
allsource.database = 'allsource_queue'
fsync = off"
trap 'cluster_stop "$DRIVER_DATA"' EXIT
as_pg "$PG_BIN/createdb" --host=localhost --port="$port" --username=postgres allsource_queue
export ALLSOURCE_TEST_URL="host=localhost port=$port user=postgres"
export ALLSOURCE_TEST_PGDATA=$DRIVER_DATA ALLSOURCE_TEST_PG_BIN=$PG_BIN
cargo test --test driver -- --test-threads 2 --skip crash_ --skip queue_
log "driver tests of the ingest queue (one at a time: they share the workers' database, some restart the server)"
cargo test --test driver -- --test-threads 1 queue_
log "driver tests that kill a backend or a worker (alone: the server restarts every session)"
cargo test --test driver -- --test-threads 1 crash_
log "stress: 2 minutes of mixed load, crash-restarts of the postmaster, a backend and a worker"
cargo run --quiet -p allsource-stress -- --url "$ALLSOURCE_TEST_URL dbname=allsource_queue" \
    --duration 2m --crashes 3 --pgdata "$DRIVER_DATA" --pg-bin "$PG_BIN"

log "without shared_preload_libraries"
PLAIN_DATA=$STATE_DIR/plain-test
cluster_stop "$PLAIN_DATA"
rm -rf "$PLAIN_DATA"
plain_port=$(free_port $((port + 1)))
cluster_start "$PLAIN_DATA" "$plain_port" "shared_preload_libraries = ''"
trap 'cluster_stop "$DRIVER_DATA"; cluster_stop "$PLAIN_DATA"' EXIT
plain_psql=(psql --no-psqlrc --quiet --host=localhost --port="$plain_port" --username=postgres --dbname=postgres)
"${plain_psql[@]}" -f tests/without_preload.sql

log "independent audit: scripts/audit_checksums.py recomputes the chains in Python"
scripts/audit_checksums.py --host=localhost --port="$plain_port" --username=postgres --dbname=postgres
"${plain_psql[@]}" -c "SET session_replication_role = replica; UPDATE allsource.events SET payload = '\"forged\"' WHERE version = 2"
if scripts/audit_checksums.py --host=localhost --port="$plain_port" --username=postgres --dbname=postgres; then
    echo "the audit script missed a forged payload" >&2
    exit 1
fi

log "all tests passed in $((SECONDS - started)) s"
