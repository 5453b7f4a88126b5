"""What every test shares: the server from the environment and a fresh store.

The library's suites expect an empty store (notification ids 1, 2, 3 …), so
each test starts by dropping and re-creating the extension and the tables
the library's recorders create. Needs a role that may do both (the tests run
as postgres) and a server with AllSource preloaded; scripts/test_eventsourcing.sh
starts one.
"""

from __future__ import annotations

import os

import psycopg
from psycopg import sql

ENV = {
    "PERSISTENCE_MODULE": "eventsourcing_allsource",
    "POSTGRES_DBNAME": os.environ.get("POSTGRES_DBNAME", "eventsourcing"),
    "POSTGRES_HOST": os.environ.get("POSTGRES_HOST", "127.0.0.1"),
    "POSTGRES_PORT": os.environ.get("POSTGRES_PORT", "5432"),
    "POSTGRES_USER": os.environ.get("POSTGRES_USER", "postgres"),
    "POSTGRES_PASSWORD": os.environ.get("POSTGRES_PASSWORD", ""),
}


def connect() -> psycopg.Connection:
    return psycopg.connect(
        dbname=ENV["POSTGRES_DBNAME"],
        host=ENV["POSTGRES_HOST"],
        port=ENV["POSTGRES_PORT"],
        user=ENV["POSTGRES_USER"],
        password=ENV["POSTGRES_PASSWORD"],
        autocommit=True,
    )


def fresh_store() -> None:
    """An empty AllSource store and none of the library's tables."""
    with connect() as conn:
        # The watermark publisher may be writing its row: a deadlock with the
        # drop is resolved in the publisher's favour, and the drop retried.
        for attempt in range(10):
            try:
                conn.execute("DROP EXTENSION IF EXISTS allsource CASCADE")
                break
            except psycopg.errors.DeadlockDetected:
                if attempt == 9:
                    raise
        conn.execute("CREATE EXTENSION allsource")
        tables = conn.execute(
            "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        for (table,) in tables:
            conn.execute(sql.SQL("DROP TABLE public.{} CASCADE").format(sql.Identifier(table)))
        conn.execute("DROP TYPE IF EXISTS public.stored_event_uuid, public.stored_event_text CASCADE")


def set_environment() -> None:
    """The module and the server, in os.environ, where applications look."""
    os.environ.update(ENV)
