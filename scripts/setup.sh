#!/usr/bin/env bash
# Installs what building and testing AllSource needs on Debian 12, as root:
# PostgreSQL 15 with its server headers, clang for bindgen, sudo for
# `cargo pgrx --runas`, the pinned cargo-pgrx, and `cargo pgrx init` against
# Debian's pg_config. Idempotent: seconds when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

command -v cargo >/dev/null || { echo "cargo not found: install Rust (1.95 or later) first" >&2; exit 1; }

packages=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang sudo pkg-config libssl-dev)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || { echo "missing packages ${missing[*]}: run this script as root" >&2; exit 1; }
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "$(cargo pgrx --version 2>/dev/null)" != "cargo-pgrx $PGRX_VERSION" ]; then
    log "installing cargo-pgrx $PGRX_VERSION (about 10 minutes, once)"
    cargo install cargo-pgrx --version "=$PGRX_VERSION" --locked --quiet
fi

# Re-running init forces a rebuild of pgrx-pg-sys, so only when pg15 is not set up yet.
if ! grep -qs "^pg$PG_MAJOR = \"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    log "cargo pgrx init --pg$PG_MAJOR $PG_CONFIG"
    cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG" >/dev/null
fi
