#!/usr/bin/env bash
# Upgrades in place from a release, as a user would: installs that release
# (sql/releases.tsv) and writes events of every kind with it
# (tests/upgrade/before.sql), installs this build over it, restarts, runs
# ALTER EXTENSION allsource UPDATE (every upgrade script from that release on,
# in one step), checks that every stored row is unchanged and that reading and
# writing go on (tests/upgrade/after.sql), and that the upgraded schema equals
# a fresh install's.
#   scripts/test_upgrade.sh [MAJOR] [--from VERSION]
# PostgreSQL MAJOR, 15 by default; from the oldest release by default.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
major=15 from=
while [ $# -gt 0 ]; do
    case $1 in
        --from) from=${2:?--from needs a version}; shift 2 ;;
        *) major=$1; shift ;;
    esac
done
use_postgres "$major"

current=$(crate_version)
releases=$(past_releases)
[ -n "$from" ] || from=$(head -n 1 <<<"$releases" | cut -f 1)
from_commit=$(awk -v from="$from" '$1 == from { print $2 }' <<<"$releases")
if [ -z "$from_commit" ]; then
    echo "no release $from before $current in sql/releases.tsv" >&2
    exit 1
fi
if ! git cat-file -e "$from_commit^{commit}" 2>/dev/null; then
    echo "this clone lacks $from's commit $from_commit (a shallow clone? git fetch --unshallow)" >&2
    exit 1
fi
log "upgrade: building $from"
release_src=$STATE_DIR/release-$from
rm -rf "$release_src" "$release_src.package"
mkdir -p "$release_src"
git archive "$from_commit" | tar -x -C "$release_src"
# Its own target directory, kept between runs: a shared one would let the
# builds of the same crate take each other's artifacts.
(cd "$release_src" && CARGO_TARGET_DIR=$STATE_DIR/release-target-$from \
    quietly cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$release_src.package" --debug) ||
    { echo "release $from does not build for PostgreSQL $PG_MAJOR: start from a later one (--from VERSION)" >&2; exit 1; }

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
[ "$installed" = "$from" ] || { echo "installed $installed, expected $from" >&2; exit 1; }
"${psql[@]}" --dbname=upgraded -f tests/upgrade/fingerprint.sql >"$data/before.txt"

log "upgrade: installing $current over $from, restarting, ALTER EXTENSION allsource UPDATE"
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
log "upgrade from $from to $current: data intact, schema equal to a fresh install"
