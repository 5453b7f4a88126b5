# Shared by scripts/run.sh and scripts/test.sh: versions, paths, and a
# private PostgreSQL cluster run as the `postgres` user (PostgreSQL refuses root).

PG_MAJOR=15
PGRX_VERSION=0.18.1
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PG_BIN/pg_config
# Data directories live outside /root so the postgres user can reach them.
STATE_DIR=/var/tmp/allsource

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

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
    as_pg "$PG_BIN/pg_ctl" --pgdata="$dir" --log="$dir/server.log" --wait start >/dev/null ||
        { tail -n 30 "$dir/server.log" >&2; return 1; }
}

cluster_stop() {
    local dir=$1
    if [ -f "$dir/postmaster.pid" ]; then
        as_pg "$PG_BIN/pg_ctl" --pgdata="$dir" --mode=fast --wait stop >/dev/null || true
    fi
}

# The port a cluster was configured with, if any.
cluster_port() {
    sed -n 's/^port = //p' "$1/allsource.conf" 2>/dev/null || true
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
