"""What the scale-out tests (standby.py, router.py) share: connections and waiting."""

import time

import psycopg


def connect(port, dbname, user="postgres", autocommit=True, **kwargs):
    return psycopg.connect(host="localhost", port=port, user=user, dbname=dbname, autocommit=autocommit, **kwargs)


def one(conn, query, params=None):
    """The first row of a query (no parameters: `%` needs no escaping)."""
    return conn.execute(query, params or None).fetchone()


def expect_error(conn, sqlstate, query, params=None):
    """Runs `query`, which must fail with `sqlstate`; returns the error."""
    try:
        conn.execute(query, params or None)
    except psycopg.Error as error:
        assert error.sqlstate == sqlstate, f"{query}: expected {sqlstate}, got {error.sqlstate}: {error}"
        return error
    raise AssertionError(f"{query}: no error, expected {sqlstate}")


def wait_until(what, condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
