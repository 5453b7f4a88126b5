#!/usr/bin/env bash
# Sets up what is missing and runs every test: formatting and lints, the
# pure-Rust unit tests of allsource-core, then on each PostgreSQL version the
# #[pg_test]s (cargo pgrx's test cluster), the driver tests against a private cluster with the
# extension preloaded, the client examples, the eventsourcing persistence module's tests, a stress run with crash-restarts,
# the tests without preloading and the independent audit; then the pg_regress
# suite, the adversarial suite, the upgrade from the oldest release, a hot standby with failover and
# a PL/Proxy router over three nodes. Works as root: PostgreSQL runs as the
# postgres user.
#   scripts/test.sh           PostgreSQL 15, then 14 and 18 without the stress run, the DCB load test
#                             and the long watermark soak, 14 without the queue's tests (what CI runs)
#   scripts/test.sh all       everything on every supported version, 13 to 18
#   scripts/test.sh 13 17     everything on the versions named
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
started=$SECONDS

# The 2-minute stress run is the part CI can least afford three times; `all`
# runs it on every version and soaks PostgreSQL 15 for an hour (with a crash
# every five minutes). The upgrade from the oldest release runs every upgrade
# script; each other release to start from costs one more build of an old release.
mapfile -t upgrade_from < <(past_releases | cut -f 1)
soak_version=""
queue_skipped=""
case "${1:-}" in
    "") versions=(15 14 18) stress_versions=(15) upgrade_from=("${upgrade_from[0]}") queue_skipped=14 ;;
    all) read -ra versions <<<"$ALL_PG_MAJORS"; stress_versions=("${versions[@]}") soak_version=15 ;;
    *) versions=("$@") stress_versions=("$@") upgrade_from=("${upgrade_from[0]}") ;;
esac
scripts/setup.sh "${versions[@]}"

log "cargo fmt --check"
cargo fmt --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --quiet --all-targets -- -D warnings
# The driver tests are `test = false` (they need a server): --all-targets skips them.
cargo clippy --quiet --test driver -- -D warnings
cargo clippy --quiet -p allsource-core --all-targets -- -D warnings
cargo clippy --quiet -p allsource-stress --all-targets -- -D warnings
cargo clippy --quiet -p allsource-example --all-targets -- -D warnings
log "released upgrade scripts unchanged (sql/releases.tsv)"
scripts/check_releases.sh

log "allsource-core: the pure-Rust unit tests (no PostgreSQL needed)"
cargo test --quiet -p allsource-core
cargo test --quiet -p allsource-stress

# test_version MAJOR: every test that runs against a server, on that version.
test_version() {
    use_postgres "$1"
    log "PostgreSQL $PG_MAJOR: #[pg_test]s"
    stop_demo_for_install  # the pgrx test harness installs the extension too
    PGRX_DATA=$STATE_DIR/pgrx-test-$PG_MAJOR
    mkdir -p "$PGRX_DATA" && chmod 700 "$PGRX_DATA"
    [ "$(id -u)" -ne 0 ] || chown postgres: "$STATE_DIR" "$PGRX_DATA"
    # What `cargo pgrx test pg15 --runas postgres --pgdata DIR` does, limited to the library's tests.
    CARGO_PGRX_TEST_RUNAS=$( [ "$(id -u)" -eq 0 ] && echo postgres || id -un ) \
    CARGO_PGRX_TEST_PGDATA=$PGRX_DATA \
    PGRX_FEATURES="pg$PG_MAJOR" \
        cargo test --no-default-features --features "pg$PG_MAJOR pg_test" --lib

    log "PostgreSQL $PG_MAJOR: driver tests against a preloaded server"
    install_extension
    cluster_stop "$DRIVER_DATA"
    rm -rf "$DRIVER_DATA"
    port=$(free_port $TEST_PORT)
    cluster_start "$DRIVER_DATA" "$port" "max_connections = 200
max_prepared_transactions = 10
max_worker_processes = 32
allsource.database = 'allsource_queue'
wal_level = logical
fsync = off"
    as_pg "$PG_BIN/createdb" --host=localhost --port="$port" --username=postgres allsource_queue
    export ALLSOURCE_TEST_URL="host=localhost port=$port user=postgres"
    export ALLSOURCE_TEST_PGDATA=$DRIVER_DATA ALLSOURCE_TEST_PG_BIN=$PG_BIN
    # 13's and 14's own pg_dump crash on our partitions (docs/operations.md, "Backup"): 15's dumps them.
    ALLSOURCE_TEST_PG_DUMP_BIN=$PG_BIN
    [ "$PG_MAJOR" -ge 15 ] || ALLSOURCE_TEST_PG_DUMP_BIN=$(pg_bin_dir 15)
    export ALLSOURCE_TEST_PG_DUMP_BIN
    # The watermark follower test is a soak: 100,000 events on the stress
    # versions, 25,000 on the others (its 100,000 take about 4 minutes).
    local follower_events=25000
    [[ " ${stress_versions[*]} " != *" $PG_MAJOR "* ]] || follower_events=100000
    ALLSOURCE_WATERMARK_EVENTS=${ALLSOURCE_WATERMARK_EVENTS:-$follower_events} \
        cargo test --test driver -- --test-threads 2 --skip crash_ --skip queue_
    # The ingest queue's tests (about 4 minutes) on every version but the
    # oldest of a default run, whose driver tests use the queue too.
    if [ "$PG_MAJOR" != "$queue_skipped" ]; then
        log "driver tests of the ingest queue (one at a time: they share the workers' database, some restart the server)"
        cargo test --test driver -- --test-threads 1 queue_
    fi
    log "driver tests that kill a backend or a worker (alone: the server restarts every session)"
    # The DCB load test (20,000 decisions, about 2 minutes) on the stress
    # versions only (15; every version in `all`): the others run the rest.
    local skip_load=(--skip crash_dcb_course_invariants_under_load)
    [[ " ${stress_versions[*]} " != *" $PG_MAJOR "* ]] || skip_load=()
    cargo test --test driver -- --test-threads 1 crash_ "${skip_load[@]}"
    log "PostgreSQL $PG_MAJOR: the client examples in Python, Node.js and Rust"
    as_pg "$PG_BIN/createdb" --host=localhost --port="$port" --username=postgres clients
    DATABASE_URL="postgresql://postgres@localhost:$port/clients" scripts/test_clients.sh
    log "PostgreSQL $PG_MAJOR: the eventsourcing persistence module (the library's own suites)"
    as_pg "$PG_BIN/createdb" --host=localhost --port="$port" --username=postgres eventsourcing
    POSTGRES_PORT=$port scripts/test_eventsourcing.sh
    if [[ " ${stress_versions[*]} " == *" $PG_MAJOR "* ]]; then
        local minutes=2 crashes=4
        [ "$PG_MAJOR" != "$soak_version" ] || minutes=60 crashes=12
        log "stress: $minutes minutes of mixed load and subscriptions, $crashes crash-restarts of the postmaster, a backend, an ingest worker and a subscription worker"
        cargo run --quiet -p allsource-stress -- --url "$ALLSOURCE_TEST_URL dbname=allsource_queue" \
            --duration "${minutes}m" --crashes "$crashes" --pgdata "$DRIVER_DATA" --pg-bin "$PG_BIN"
    fi

    log "PostgreSQL $PG_MAJOR: without shared_preload_libraries"
    cluster_stop "$PLAIN_DATA"
    rm -rf "$PLAIN_DATA"
    plain_port=$(free_port $((port + 1)))
    cluster_start "$PLAIN_DATA" "$plain_port" "shared_preload_libraries = ''"
    plain_psql=(psql --no-psqlrc --quiet --host=localhost --port="$plain_port" --username=postgres --dbname=postgres)
    "${plain_psql[@]}" -f tests/without_preload.sql

    log "independent audit: scripts/audit_checksums.py recomputes the chains in Python"
    scripts/audit_checksums.py --host=localhost --port="$plain_port" --username=postgres --dbname=postgres
    "${plain_psql[@]}" -c "SET session_replication_role = replica; UPDATE allsource.events SET payload = '\"forged\"' WHERE version = 2"
    if scripts/audit_checksums.py --host=localhost --port="$plain_port" --username=postgres --dbname=postgres; then
        echo "the audit script missed a forged payload" >&2
        exit 1
    fi

    cluster_stop "$DRIVER_DATA"
    cluster_stop "$PLAIN_DATA"
}

DRIVER_DATA=$STATE_DIR/driver-test
PLAIN_DATA=$STATE_DIR/plain-test
trap 'cluster_stop "$DRIVER_DATA"; cluster_stop "$PLAIN_DATA"' EXIT
timings=()
for major in "${versions[@]}"; do
    version_started=$SECONDS
    test_version "$major"
    timings+=("PostgreSQL $major: $((SECONDS - version_started)) s")
done

log "pg_regress: what users see in psql, every function and error (tests/pg_regress, PostgreSQL 15)"
stop_demo_for_install  # cargo pgrx regress installs the extension too
if ! tests/pg_regress/run.sh; then
    cat tests/pg_regress/regression.diffs >&2 || true
    exit 1
fi

log "adversarial: a hostile database owner's look-alike functions and operators never run (PostgreSQL 15)"
tests/adversarial/run.sh

for from in "${upgrade_from[@]}"; do
    log "upgrade in place from release $from (PostgreSQL 15)"
    scripts/test_upgrade.sh 15 --from "$from"
done

# Both use the build the upgrade test left installed.
log "scaling out: a hot standby and failover (PostgreSQL 15)"
scripts/test_standby.sh
log "scaling out: partitions over three nodes through a PL/Proxy router (PostgreSQL 15)"
scripts/test_router.sh

printf '%s\n' "${timings[@]}" >&2
log "all tests passed in $((SECONDS - started)) s"
