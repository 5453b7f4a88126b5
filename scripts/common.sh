# Shared by scripts/run.sh and scripts/test.sh: versions, paths, and a
# private PostgreSQL cluster run as the `postgres` user (PostgreSQL refuses root).

PGRX_VERSION=0.18.1
source "$(dirname "${BASH_SOURCE[0]}")/postgres_versions.sh"

# use_postgres MAJOR: the PostgreSQL version that builds, installs and servers use.
use_postgres() {
    PG_MAJOR=$1
    PG_BIN=$(pg_bin_dir "$PG_MAJOR")
    PG_CONFIG=$PG_BIN/pg_config
}
# Debian 12's own PostgreSQL unless told otherwise.
use_postgres 15
# Data directories live outside /root so the postgres user can reach them.
STATE_DIR=${ALLSOURCE_STATE_DIR:-/var/tmp/allsource}
DEMO_DATA=$STATE_DIR/demo
# Ports below Linux's ephemeral range (32768+), where client sockets never sit.
DEMO_PORT=25432
TEST_PORT=25442

# The version in development (Cargo.toml's).
crate_version() { sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1; }
# The lines VERSION<TAB>COMMIT of sql/releases.tsv before it, oldest first.
past_releases() {
    awk -v current="$(crate_version)" '!/^#/ && $1 != current' sql/releases.tsv | sort -V -k1,1
}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# apt_install PACKAGE...: installs Debian packages (as root; nothing when none is given).
apt_install() {
    [ $# -gt 0 ] || return 0
    [ "$(id -u)" -eq 0 ] || { echo "missing packages $*: run this script as root" >&2; exit 1; }
    log "installing $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Runs a command as the postgres user when we are root, as ourselves otherwise.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The first port from $1 up that nothing listens on.
free_port() {
    local port=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
    echo "$port"
}

# cluster_start DIR PORT [extra postgresql.conf lines]: initdb if needed, then start.
cluster_start() {
    local dir=$1 port=$2 extra=${3:-}
    mkdir -p "$(dirname "$dir")"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$(dirname "$dir")"; fi
    if [ ! -f "$dir/PG_VERSION" ]; then
        as_pg "$PG_BIN/initdb" --pgdata="$dir" --username=postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    fi
    as_pg tee "$dir/allsource.conf" >/dev/null <<CONF
port = $port
listen_addresses = 'localhost'
unix_socket_directories = '$dir'
shared_preload_libraries = 'allsource'
$extra
CONF
    grep -q "include_if_exists = 'allsource.conf'" "$dir/postgresql.conf" ||
        echo "include_if_exists = 'allsource.conf'" | as_pg tee -a "$dir/postgresql.conf" >/dev/null
    # Without RUST_BACKTRACE: pgrx would append Rust backtraces to error details.
    as_pg env -u RUST_BACKTRACE "$PG_BIN/pg_ctl" --pgdata="$dir" --log="$dir/server.log" --wait start >/dev/null ||
        { tail -n 30 "$dir/server.log" >&2; return 1; }
}

# Installing a build copies over the library a running server has mapped,
# which crashes it: stop the demo cluster first (scripts/run.sh starts it again).
stop_demo_for_install() {
    if [ -f "$DEMO_DATA/postmaster.pid" ]; then
        log "stopping the demo cluster while the extension is reinstalled (scripts/run.sh restarts it)"
        cluster_stop "$DEMO_DATA"
    fi
}

install_extension() {
    stop_demo_for_install
    local out=$STATE_DIR/package profile=(--debug)
    [ "${1:-}" = --release ] && profile=()
    rm -rf "$out"
    quietly cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$out" "${profile[@]}"
    install_package "$out"
}

# install_package DIR: installs what `cargo pgrx package --out-dir DIR` built.
install_package() {
    local out=$1 lib share
    lib=$("$PG_CONFIG" --pkglibdir)
    share=$("$PG_CONFIG" --sharedir)/extension
    cp "$out$share"/allsource* "$share"/
    # Renamed over the old library, never written into it: servers of other
    # jobs keep the file they have mapped, and the name always exists.
    cp "$out$lib/allsource.so" "$lib/.allsource.so.new"
    mv -f "$lib/.allsource.so.new" "$lib/allsource.so"
}

cluster_stop() {
    local dir=$1
    if [ -f "$dir/postmaster.pid" ]; then
        as_pg "$PG_BIN/pg_ctl" --pgdata="$dir" --mode=fast --wait stop >/dev/null || true
    fi
}

# Runs a noisy command, showing its output only if it fails.
quietly() {
    local output
    output=$(mktemp)
    if ! "$@" >"$output" 2>&1; then
        cat "$output" >&2
        rm -f "$output"
        return 1
    fi
    rm -f "$output"
}

# Benchmarks (benches/*.sh) send this 200-byte JSON payload.
BENCH_PAYLOAD='{"sku": "SKU-12345", "qty": 3, "price": 19.99, "currency": "EUR", "warehouse": "north-7", "note": "a two hundred byte payload, roughly what an order line event carries in practice, padded to size...."}'

# bench_cluster DIR PORT [extra postgresql.conf lines]: sets up what is missing,
# installs the release build and starts a fresh cluster in DIR, stopped on exit;
# sets $port and $psql (an array: psql on the postgres database, bare output).
bench_cluster() {
    scripts/setup.sh
    log "building and installing the release build"
    install_extension --release
    bench_cluster_start "$@"
}

# bench_cluster_start DIR PORT [extra lines]: bench_cluster without the setup
# and the build, for a release build installed already.
bench_cluster_start() {
    local dir=$1
    cluster_stop "$dir"
    rm -rf "$dir"
    port=$(free_port "$2")
    cluster_start "$dir" "$port" "max_connections = 300
shared_buffers = 1GB
# Pipelined clients keep up to 6,400 events in flight: a full queue makes them wait, not fail.
allsource.enqueue_timeout_ms = 30000
${3:-}"
    # shellcheck disable=SC2064  # the directory is fixed now
    trap "cluster_stop '$dir'" EXIT
    psql=(psql --no-psqlrc --quiet --tuples-only --no-align --host=localhost --port="$port" --username=postgres --dbname=postgres)
}

# python_venv [REQUIREMENTS VENV]: a venv (default $VENV, with psycopg 3 from
# examples/python/requirements.txt, for the Python example and tests);
# (re)filled when the requirements differ from the copy it was filled from.
# Installs python3-venv if missing.
VENV=$STATE_DIR/venv-examples
python_venv() {
    local requirements=${1:-examples/python/requirements.txt} venv=${2:-$VENV}
    python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
    if ! cmp -s "$requirements" "$venv/requirements.txt"; then
        log "Python venv $venv with $requirements"
        mkdir -p "$STATE_DIR"
        [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
        quietly "$venv/bin/pip" install --disable-pip-version-check --requirement "$requirements"
        cp "$requirements" "$venv/requirements.txt"
    fi
}
