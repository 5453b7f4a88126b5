#!/usr/bin/env python3
"""An AllSource subscription consumed from Python with psycopg 3: receive a
batch, update a read model and ack in the same transaction, so every event is
applied exactly once with no checkpoint code of our own; then a second
consumer of the same member is refused while the first holds it, and takes
over from the checkpoint when the first goes away.
Every step checks its result: the program exits non-zero at the first surprise.

    DATABASE_URL=postgresql://postgres@localhost:25432/allsource \
        /var/tmp/allsource/venv-examples/bin/python examples/python/consumer.py

(scripts/test_clients.sh runs it; see examples/python/example.py for the venv.)
"""

import os
import secrets
import sys
import time

import psycopg
from psycopg.types.json import Jsonb

HELD_BY_ANOTHER_SESSION = "55006"  # AllSource's SQLSTATE for a member another session holds


def check(ok, what):
    if not ok:
        sys.exit(f"FAILED: {what}")


def consume(conn, subscription, batch=50):
    """Applies every pending event to the read model: one transaction per batch,
    the model's update and the ack commit together. Returns how many."""
    applied = 0
    while True:
        with conn.transaction():
            events = conn.execute(
                "SELECT position, stream_id, payload FROM allsource.receive(%s, %s)",
                (subscription, batch),
            ).fetchall()
            for _, stream, payload in events:
                conn.execute(
                    "INSERT INTO balances (account, balance) VALUES (%s, %s)"
                    " ON CONFLICT (account) DO UPDATE SET balance = balances.balance + excluded.balance",
                    (stream, payload["amount"]),
                )
            if events:
                conn.execute("SELECT allsource.ack(%s, %s)", (subscription, events[-1][0]))
        applied += len(events)
        if len(events) < batch:
            return applied


def main():
    url = os.environ["DATABASE_URL"]
    run = secrets.token_hex(4)
    subscription = f"balances-{run}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS allsource")
        conn.execute("CREATE TABLE IF NOT EXISTS balances (account text PRIMARY KEY, balance int NOT NULL)")
        category = f"account{run}"
        conn.execute(
            "SELECT allsource.create_subscription(%s, categories => ARRAY[%s], start_after => allsource.watermark())",
            (subscription, category),
        )
        for i in range(120):
            conn.execute(
                "SELECT allsource.append(%s, 'Deposited', %s)",
                (f"{category}-{i % 3}", Jsonb({"amount": i})),
            )
        applied = consume(conn, subscription)
        check(applied == 120, f"applied {applied} events, expected 120")
        balances = dict(
            conn.execute("SELECT account, balance FROM balances WHERE account LIKE %s", (f"{category}-%",))
        )
        expected = {f"{category}-{k}": sum(i for i in range(120) if i % 3 == k) for k in range(3)}
        check(balances == expected, f"read model {balances}, expected {expected}")
        check(consume(conn, subscription) == 0, "a second pass applies nothing")

        # One session at a time per member: another is refused, naming the holder.
        with psycopg.connect(url, autocommit=True) as other:
            try:
                other.execute("SELECT * FROM allsource.receive(%s)", (subscription,))
                check(False, "a second session received from a held member")
            except psycopg.Error as error:
                check(error.sqlstate == HELD_BY_ANOTHER_SESSION, f"expected 55006, got {error.sqlstate}")
            conn.execute(
                "SELECT allsource.append(%s, 'Deposited', %s)", (f"{category}-0", Jsonb({"amount": 1000}))
            )
            conn.close()  # the holder goes away: its lease ends with its session
            for _ in range(100):
                try:
                    applied = consume(other, subscription)
                    break
                except psycopg.Error as error:
                    check(error.sqlstate == HELD_BY_ANOTHER_SESSION, f"unexpected {error}")
                    time.sleep(0.05)
            check(applied == 1, f"the next consumer went on from the checkpoint (applied {applied})")
            other.execute("SELECT allsource.drop_subscription(%s)", (subscription,))
    print(f"consumer example: 121 events applied exactly once, lease handed over ({subscription})")


if __name__ == "__main__":
    main()
