#!/usr/bin/env bash
# Upgrades in place from the previous release, as a user would: installs the
# release before this version (sql/releases.tsv) and writes events of every kind with it
# (tests/upgrade/before.sql), installs this build over it, restarts, runs
# ALTER EXTENSION allsource UPDATE, checks that every stored row is unchanged
# and that reading and writing go on (tests/upgrade/after.sql), and that the
# upgraded schema equals a fresh install's.
#   scripts/test_upgrade.sh [MAJOR]   PostgreSQL MAJOR, 15 by default
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
use_postgres "${1:-15}"

current=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# The newest release older than this version, and the commit it was built from.
read -r previous previous_commit < <(grep -v '^#' sql/releases.tsv |
    awk -v current="$current" '$1 != current' | sort -V -k1,1 | tail -n 1) || true
if [ -z "${previous:-}" ] || ! git cat-file -e "$previous_commit^{commit}" 2>/dev/null; then
    echo "no earlier release in sql/releases.tsv whose commit this clone has (a shallow clone? git fetch --unshallow)" >&2
    exit 1
fi
log "upgrade: building $previous"
release_src=$STATE_DIR/release-$previous
rm -rf "$release_src" "$release_src.package"
mkdir -p "$release_src"
git archive "$previous_commit" | tar -x -C "$release_src"
# Its own target directory, kept between runs: a shared one would let the two
# builds of the same crate take each other's artifacts.
(cd "$release_src" && CARGO_TARGET_DIR=$STATE_DIR/release-target \
    quietly cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$release_src.package" --debug)

data=$STATE_DIR/upgrade-test
cluster_stop "$data"
rm -rf "$data"
stop_demo_for_install
install_package "$release_src.package"
port=$(free_port $((TEST_PORT + 20)))
cluster_start "$data" "$port" "allsource.database = 'upgraded'"
trap 'cluster_stop "$data"' EXIT
psql=(psql --no-psqlrc --quiet --tuples-only --no-align --host=localhost --port="$port" --username=postgres)
"${psql[@]}" --dbname=postgres -c "CREATE DATABASE upgraded" -c "CREATE DATABASE fresh"
"${psql[@]}" --dbname=upgraded -f tests/upgrade/before.sql >/dev/null
installed=$("${psql[@]}" --dbname=upgraded -c "SELECT extversion FROM pg_extension WHERE extname = 'allsource'")
[ "$installed" = "$previous" ] || { echo "installed $installed, expected $previous" >&2; exit 1; }
"${psql[@]}" --dbname=upgraded -f tests/upgrade/fingerprint.sql >"$data/before.txt"

log "upgrade: installing $current over $previous, restarting, ALTER EXTENSION allsource UPDATE"
cluster_stop "$data"
install_extension
cluster_start "$data" "$port" "allsource.database = 'upgraded'"
"${psql[@]}" --dbname=upgraded -c "ALTER EXTENSION allsource UPDATE"
installed=$("${psql[@]}" --dbname=upgraded -c "SELECT extversion FROM pg_extension WHERE extname = 'allsource'")
[ "$installed" = "$current" ] || { echo "ALTER EXTENSION left version $installed, expected $current" >&2; exit 1; }
"${psql[@]}" --dbname=upgraded -f tests/upgrade/fingerprint.sql >"$data/after.txt"
diff -u "$data/before.txt" "$data/after.txt" || { echo "stored rows changed in the upgrade" >&2; exit 1; }
"${psql[@]}" --dbname=upgraded -f tests/upgrade/after.sql >/dev/null

log "upgrade: the upgraded schema against a fresh install of $current"
"${psql[@]}" --dbname=fresh -c "CREATE EXTENSION allsource"
# --binary-upgrade dumps the extension's own objects (a plain dump only says
# CREATE EXTENSION). What differs between two databases by nature is masked:
# the OIDs and transaction ids it pins, and the sequence's position (data).
schema() {
    as_pg "$PG_BIN/pg_dump" --schema-only --binary-upgrade --host=localhost --port="$port" --username=postgres "$1" |
        grep -v -e '^SELECT pg_catalog.binary_upgrade_set_next_' -e '^SELECT pg_catalog.setval(' \
            -e '^-- Dumped' -e '^\\restrict' -e '^\\unrestrict' |
        sed -E -e "s/relfrozenxid = '[0-9]+', relminmxid = '[0-9]+'/relfrozenxid = X, relminmxid = X/" \
            -e "s/^WHERE oid = '[0-9]+';/WHERE oid = X;/" \
            -e "/binary_upgrade_create_empty_extension/ s/[0-9]{4,}/OID/g"
}
schema upgraded >"$data/upgraded.sql"
schema fresh >"$data/fresh.sql"
diff -u "$data/fresh.sql" "$data/upgraded.sql" || { echo "the upgraded schema differs from a fresh install" >&2; exit 1; }
log "upgrade from $previous to $current: data intact, schema equal to a fresh install"
