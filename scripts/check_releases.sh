#!/usr/bin/env bash
# A released upgrade script never changes: users who installed a release ran
# the scripts it shipped, and an edit would leave their schema different from
# a fresh install's without anything telling them. For each line VERSION<TAB>COMMIT
# of sql/releases.tsv: the commit is in this clone, and every upgrade script
# sql/allsource--A--B.sql that commit has, with B <= VERSION, is still here,
# byte for byte. And a line of sql/releases.tsv, once committed, stays as it is.
#   scripts/check_releases.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(git rev-parse --is-shallow-repository 2>/dev/null)" != false ]; then
    echo "check_releases: needs a full git clone (in a shallow one: git fetch --unshallow)" >&2
    exit 1
fi
failed=0
fail() { echo "check_releases: $*" >&2; failed=1; }

# sort -V: is version $1 <= version $2?
version_le() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$1" ]; }

while IFS=$'\t' read -r version commit; do
    if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
        fail "sql/releases.tsv: $version: commit $commit is not in this clone"
        continue
    fi
    while read -r script; do
        to=${script#sql/allsource--*--}
        to=${to%.sql}
        version_le "$to" "$version" || continue
        if [ ! -f "$script" ]; then
            fail "$script, released in $version ($commit), is gone"
        elif [ "$(git rev-parse "$commit:$script")" != "$(git hash-object --no-filters "$script")" ]; then
            fail "$script differs from the one released in $version ($commit): put the change in a new upgrade script"
        fi
    done < <(git ls-tree --name-only "$commit" sql/ | grep -E '^sql/allsource--[^-]+--[^-]+\.sql$' || true)
done < <(grep -v '^#' sql/releases.tsv)

# Every release line any commit had is still there, unchanged, and once.
# Before this rule, bcfee74 moved 0.3.0 to a later commit with the same SQL.
superseded=$'0.3.0\t7a61780b99a8fd2ccf2d5caca688c4b5efa54afd'
while read -r line; do
    [ "$line" = "$superseded" ] && continue
    grep -qxF "$line" sql/releases.tsv || fail "sql/releases.tsv: the committed line '$line' was changed or removed"
done < <(git log --format= -p -- sql/releases.tsv | sed -n 's/^[-+]\([0-9][^\t]*\t[0-9a-f]\{40\}\)$/\1/p' | sort -u)
for version in $(grep -v '^#' sql/releases.tsv | cut -f 1 | sort | uniq -d); do
    fail "sql/releases.tsv: $version is listed more than once"
done

[ "$failed" -eq 0 ] || exit 1
