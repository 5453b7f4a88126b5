#!/usr/bin/env bash
# Installs what building and testing AllSource needs on Debian 12, as root:
# PostgreSQL 15 with its server headers, clang for bindgen, sudo for
# `cargo pgrx --runas`, the pinned cargo-pgrx, and `cargo pgrx init` against
# Debian's pg_config. Idempotent: seconds when everything is there.
#   scripts/setup.sh             PostgreSQL 15
#   scripts/setup.sh 13 18 ...   also these versions (see scripts/postgres_versions.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

command -v cargo >/dev/null || { echo "cargo not found: install Rust (1.95 or later) first" >&2; exit 1; }

# PL/Proxy routes calls over nodes (Scaling out); make, gcc, bzip2 and zlib
# build PostgreSQL 13 from source when asked for.
packages=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-$PG_MAJOR-plproxy libclang-dev clang sudo pkg-config libssl-dev
    make gcc bzip2 zlib1g-dev)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
apt_install "${missing[@]}"

if [ "$(cargo pgrx --version 2>/dev/null)" != "cargo-pgrx $PGRX_VERSION" ]; then
    log "installing cargo-pgrx $PGRX_VERSION (about 10 minutes, once)"
    cargo install cargo-pgrx --version "=$PGRX_VERSION" --locked --quiet
fi

versions=(15 "$@")
for major in "${versions[@]}"; do ensure_postgres "$major"; done

# `cargo pgrx init` replaces its list of versions and makes pgrx-pg-sys rebuild:
# only when a version is missing, then with every version already known too.
pgrx_config=${PGRX_HOME:-$HOME/.pgrx}/config.toml
init_args=()
missing_version=false
for major in $ALL_PG_MAJORS; do
    config=$(pg_bin_dir "$major")/pg_config
    if grep -qs "^pg$major = \"$config\"" "$pgrx_config"; then
        init_args+=("--pg$major" "$config")
    elif [[ " ${versions[*]} " == *" $major "* ]]; then
        init_args+=("--pg$major" "$config")
        missing_version=true
    fi
done
if $missing_version; then
    log "cargo pgrx init ${init_args[*]}"
    cargo pgrx init "${init_args[@]}" >/dev/null
fi
