#!/usr/bin/env bash
# Runs the pg_regress suite (tests/pg_regress/sql, expected/) with
# `cargo pgrx regress` on PostgreSQL 15, in a fresh database of its own
# cluster with AllSource preloaded. Arguments go to `cargo pgrx regress`:
#   tests/pg_regress/run.sh                  every test
#   tests/pg_regress/run.sh append           setup and one test
#   tests/pg_regress/run.sh --auto           accept the new output of failed tests
#   tests/pg_regress/run.sh --add NAME       write expected/NAME.out for a new test
#
# cargo-pgrx 0.18.1 runs initdb and pg_ctl as the calling user, on
# $PGRX_HOME/data-15 (its --pgdata is ignored, --runas only covers createdb
# and dropdb), and PostgreSQL refuses root. As root this script therefore
# gives cargo-pgrx a PGRX_HOME of its own, $STATE_DIR/pgrx-regress, whose
# pg_config names a bin directory where initdb and pg_ctl run as postgres;
# pg_regress's psql connects as postgres through a service file.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh

REGRESS_HOME=$STATE_DIR/pgrx-regress
REGRESS_DB=allsource_regress
conf=(--postgresql-conf shared_preload_libraries=allsource
      --postgresql-conf "allsource.database=$REGRESS_DB"
      --postgresql-conf fsync=off)
# --add bootstraps in a fresh database by itself; everything else starts
# from one too, so setup.sql always runs and no test sees an earlier run.
reset=(--resetdb)
for arg in "$@"; do [ "$arg" != --add ] || reset=(); done

# Without RUST_BACKTRACE: pgrx would append Rust backtraces to error details.
export RUST_BACKTRACE=0

if [ "$(id -u)" -ne 0 ]; then
    exec cargo pgrx regress "pg$PG_MAJOR" "${reset[@]}" "${conf[@]}" "$@"
fi

mkdir -p "$REGRESS_HOME/bin"
chown postgres: "$STATE_DIR" "$REGRESS_HOME"
# Every server program as it is, but initdb and pg_ctl as postgres.
for program in "$PG_BIN"/*; do ln -sfn "$program" "$REGRESS_HOME/bin/"; done
for program in initdb pg_ctl; do
    rm -f "$REGRESS_HOME/bin/$program"
    printf '#!/bin/sh\nexec runuser -u postgres -- %q "$@"\n' "$PG_BIN/$program" >"$REGRESS_HOME/bin/$program"
    chmod 755 "$REGRESS_HOME/bin/$program"
done
cat >"$REGRESS_HOME/pg_config" <<SH
#!/bin/sh
if [ "\$*" = --bindir ]; then echo '$REGRESS_HOME/bin'; else exec '$PG_CONFIG' "\$@"; fi
SH
chmod 755 "$REGRESS_HOME/pg_config"
printf '[%s]\nuser=postgres\n' "$REGRESS_DB" >"$REGRESS_HOME/pg_service.conf"
# The server listens on base_port + major version. Rewritten only when it
# changes: the build scripts of pgrx watch the config.toml they read.
if [ -f "$REGRESS_HOME/data-$PG_MAJOR/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" --pgdata="$REGRESS_HOME/data-$PG_MAJOR" --mode=fast --wait stop >/dev/null
fi
port=$(free_port $((TEST_PORT + 20)))
config="base_port = $((port - PG_MAJOR))
[configs]
pg$PG_MAJOR = \"$REGRESS_HOME/pg_config\""
[ "$(cat "$REGRESS_HOME/config.toml" 2>/dev/null)" = "$config" ] || echo "$config" >"$REGRESS_HOME/config.toml"

trap 'as_pg "$PG_BIN/pg_ctl" --pgdata="$REGRESS_HOME/data-$PG_MAJOR" --mode=fast --wait stop >/dev/null 2>&1 || true' EXIT
PGRX_HOME=$REGRESS_HOME PGSERVICEFILE=$REGRESS_HOME/pg_service.conf PGSERVICE=$REGRESS_DB \
    cargo pgrx regress "pg$PG_MAJOR" --runas postgres "${reset[@]}" "${conf[@]}" "$@"
