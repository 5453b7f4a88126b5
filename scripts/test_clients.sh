#!/usr/bin/env bash
# Runs the client examples as tests: examples/python (psycopg 3; example.py and
# the subscription consumer consumer.py), examples/node
# (node-postgres) and examples/rust (tokio-postgres), each against the server in
# DATABASE_URL, which needs AllSource installed and preloaded (scripts/run.sh
# starts one). Each example creates the extension if absent and writes streams
# of its own, so they run again and again on the same database. Installs what
# is missing first, as root: Debian's nodejs and npm when their commands are
# absent, the Python venv (common.sh's python_venv) and examples/node's
# packages (npm ci). Fails if any example fails.
#   DATABASE_URL=postgresql://postgres@localhost:25432/allsource scripts/test_clients.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
started=$SECONDS

if [ -z "${DATABASE_URL:-}" ]; then
    echo "set DATABASE_URL to a server with AllSource preloaded," \
        "e.g. postgresql://postgres@localhost:$DEMO_PORT/allsource (scripts/run.sh starts it)" >&2
    exit 1
fi
export DATABASE_URL

# Commands, not packages: node and npm may come from elsewhere (NodeSource, nvm).
missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
apt_install "${missing[@]}"

python_venv

# npm ci writes node_modules/.package-lock.json: newer than package-lock.json means up to date.
if [ ! examples/node/node_modules/.package-lock.json -nt examples/node/package-lock.json ]; then
    log "npm ci in examples/node"
    (cd examples/node && quietly npm ci)
fi

failed=()
# run_example NAME COMMAND...: runs one example, remembering a failure.
run_example() {
    local name=$1
    shift
    log "$name example: $*"
    "$@" || failed+=("$name")
}
run_example Python "$VENV/bin/python" examples/python/example.py
run_example "Python subscription consumer" "$VENV/bin/python" examples/python/consumer.py
run_example Node.js node examples/node/example.js
run_example Rust cargo run --quiet -p allsource-example

if [ ${#failed[@]} -gt 0 ]; then
    echo "client examples failed: ${failed[*]}" >&2
    exit 1
fi
log "all client examples passed in $((SECONDS - started)) s"
