#!/usr/bin/env bash
# Runs the eventsourcing persistence module's tests (clients/python/tests,
# pytest): the library's own suites for persistence modules, its application
# and projection cases, a system of process applications, and the module's
# own tests, against the server in POSTGRES_HOST/POSTGRES_PORT (AllSource
# installed and preloaded; the tests drop and re-create the extension in
# POSTGRES_DBNAME, default eventsourcing, so give them a database of their
# own). Installs the package (pip install ./clients/python) into a venv
# filled from clients/python/requirements-test.txt, as a user would.
#   POSTGRES_PORT=25432 scripts/test_eventsourcing.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
started=$SECONDS

ES_VENV=$STATE_DIR/venv-eventsourcing
python_venv clients/python/requirements-test.txt "$ES_VENV"
log "pip install ./clients/python"
quietly "$ES_VENV/bin/pip" install --disable-pip-version-check --no-deps --force-reinstall ./clients/python

export POSTGRES_HOST=${POSTGRES_HOST:-localhost} POSTGRES_PORT=${POSTGRES_PORT:?set POSTGRES_PORT to a preloaded server}
export POSTGRES_DBNAME=${POSTGRES_DBNAME:-eventsourcing} POSTGRES_USER=${POSTGRES_USER:-postgres}
log "eventsourcing persistence module: pytest clients/python/tests"
# From the tests' directory: the installed package is imported, not the source tree.
(cd clients/python/tests && "$ES_VENV/bin/python" -m pytest -q -p no:cacheprovider "$@")
log "eventsourcing persistence module tests passed in $((SECONDS - started)) s"
