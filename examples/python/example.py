#!/usr/bin/env python3
"""AllSource from Python with psycopg 3: append with an expected version, retry
on a conflict, batches, a read_all subscriber, LISTEN, and a rollback.
Every step checks its result: the program exits non-zero at the first surprise.

Run it against a server with AllSource preloaded (scripts/run.sh starts one):

    python3 -m venv /var/tmp/allsource/venv-examples
    /var/tmp/allsource/venv-examples/bin/pip install -r examples/python/requirements.txt
    DATABASE_URL=postgresql://postgres@localhost:25432/allsource \
        /var/tmp/allsource/venv-examples/bin/python examples/python/example.py

(scripts/test_clients.sh does all of this, and runs the Node.js and Rust examples.)
"""

import json
import os
import secrets
import sys

import psycopg
from psycopg.types.json import Jsonb

WRONG_EXPECTED_VERSION = "ZA001"  # AllSource's SQLSTATE for an optimistic concurrency conflict


def check(ok, what):
    if not ok:
        sys.exit(f"FAILED: {what}")


def append(conn, stream, event_type, payload, expected_version):
    return conn.execute(
        "SELECT version, position FROM allsource.append(stream_id => %s, event_type => %s,"
        " payload => %s, expected_version => %s)",
        (stream, event_type, Jsonb(payload), expected_version),
    ).fetchone()


def stream_version(conn, stream):
    return conn.execute("SELECT allsource.stream_version(%s)", (stream,)).fetchone()[0]


def event_types(conn, stream):
    rows = conn.execute("SELECT event_type FROM allsource.read_stream(%s)", (stream,))
    return [event_type for (event_type,) in rows]


def append_with_retry(conn, stream, event_type, payload, expected_version, attempts=5):
    """Append at the version the caller decided on; on a conflict, re-read the
    stream and try again at its current version. Returns (version, position, conflicts)."""
    for conflicts in range(attempts):
        try:
            version, position = append(conn, stream, event_type, payload, expected_version)
            return version, position, conflicts
        except psycopg.Error as e:
            if e.sqlstate != WRONG_EXPECTED_VERSION:
                raise
            print(f"   conflict {e.sqlstate}: {e.diag.message_primary}; re-reading {stream}")
            # A real handler would rebuild its state from read_stream and decide again.
            expected_version = stream_version(conn, stream)
    sys.exit(f"FAILED: still conflicting after {attempts} attempts")


def main():
    url = os.environ.get("DATABASE_URL")
    if not url:
        sys.exit("set DATABASE_URL, e.g. postgresql://postgres@localhost:25432/allsource")
    run = secrets.token_hex(4)  # unique stream ids: the example can run again on the same database
    order, cart, invoice, shipment = (f"{name}-{run}" for name in ("order", "cart", "invoice", "shipment"))

    # Autocommit: each statement is its own transaction unless we open one.
    with psycopg.connect(url, autocommit=True) as conn, psycopg.connect(url, autocommit=True) as listener:
        conn.execute("CREATE EXTENSION IF NOT EXISTS allsource")
        print(f"1. connected; streams of this run end in -{run}")

        # 2. Appends with an expected version: 0 means "the stream must not exist yet".
        placed = append(conn, order, "OrderPlaced", {"total": 42}, 0)
        paid = append(conn, order, "OrderPaid", {"amount": 42}, 1)
        check(placed[0] == 1 and paid[0] == 2, f"versions 1 and 2, got {placed[0]} and {paid[0]}")
        check(paid[1] > placed[1], f"positions increase, got {placed[1]} then {paid[1]}")
        print(f"2. {order}: OrderPlaced at version 1 (position {placed[1]}), OrderPaid at 2 ({paid[1]})")

        # 3. Optimistic concurrency: an append at a stale version fails with ZA001 and writes nothing...
        try:
            append(conn, order, "OrderShipped", {}, 1)
            check(False, "an append with a stale expected version succeeded")
        except psycopg.Error as e:
            check(e.sqlstate == WRONG_EXPECTED_VERSION, f"SQLSTATE {WRONG_EXPECTED_VERSION}, got {e.sqlstate}: {e}")
        check(stream_version(conn, order) == 2, "the refused append wrote nothing")
        # ... and the retry loop re-reads the stream and succeeds.
        version, shipped_at, conflicts = append_with_retry(conn, order, "OrderShipped", {"carrier": "post"}, 1)
        check((version, conflicts) == (3, 1), f"version 3 after one conflict, got {version} after {conflicts}")
        types = event_types(conn, order)
        check(types == ["OrderPlaced", "OrderPaid", "OrderShipped"], f"read_stream({order}) = {types}")
        print(f"3. stale expected version refused with ZA001; retried: OrderShipped at version {version}")

        # 4. append_batch to several streams in one statement: one round trip, all or nothing.
        batches = {
            cart: [{"type": "ItemAdded", "payload": {"sku": "A-1"}},
                   {"type": "ItemAdded", "payload": {"sku": "B-7"}},
                   {"type": "CheckedOut", "payload": {}, "metadata": {"ip": "10.0.0.1"}}],
            invoice: [{"type": "InvoiceIssued", "payload": {"total": 42}},
                      {"type": "InvoiceSent", "payload": {"to": "alice@example.com"}}],
            shipment: [{"type": "ShipmentBooked", "payload": {"parcels": 1}}],
        }
        rows = conn.execute(
            "SELECT s.stream_id, b.* FROM jsonb_each(%s) AS s(stream_id, events),"
            " LATERAL allsource.append_batch(s.stream_id, s.events, expected_version => 0) AS b",
            (Jsonb(batches),),
        ).fetchall()
        ranges = {stream: (first_v, last_v, first_p, last_p) for stream, first_v, last_v, first_p, last_p in rows}
        check(ranges.keys() == batches.keys(), f"one result per stream, got {sorted(ranges)}")
        for stream, events in batches.items():
            first_v, last_v, first_p, last_p = ranges[stream]
            check((first_v, last_v) == (1, len(events)), f"{stream}: versions 1..{len(events)}, got {first_v}..{last_v}")
            check(last_p - first_p >= len(events) - 1, f"{stream}: positions {first_p}..{last_p} for {len(events)} events")
            check(stream_version(conn, stream) == len(events), f"{stream}: stream_version")
        print(f"4. append_batch: {', '.join(f'{s} v1..{r[1]}' for s, r in ranges.items())}")

        # 5. A subscriber: read_all from a cursor, a page at a time, until a page comes back short.
        expected = {(order, 1): placed[1], (order, 2): paid[1], (order, 3): shipped_at}
        for stream, events in batches.items():
            expected.update({(stream, v): None for v in range(1, len(events) + 1)})
        cursor, page_size, pages, seen, last_position = placed[1] - 1, 3, 0, {}, 0
        while True:
            page = conn.execute(
                "SELECT position, stream_id, version FROM allsource.read_all(after_position => %s, max_count => %s)",
                (cursor, page_size),
            ).fetchall()
            pages += 1
            for position, stream, version in page:
                check(position > last_position, f"read_all in ascending position: {position} after {last_position}")
                last_position = position
                if stream.endswith(f"-{run}"):
                    check((stream, version) not in seen, f"{stream} version {version} read twice")
                    seen[(stream, version)] = position
            if page:
                cursor = page[-1][0]  # the subscriber's cursor: the last position it processed
            if len(page) < page_size:
                break  # caught up with the watermark
        check(seen.keys() == expected.keys(), f"read_all returned {sorted(seen)}, expected {sorted(expected)}")
        for key, position in expected.items():
            check(position is None or seen[key] == position, f"{key} at position {seen[key]}, append said {position}")
        for stream, (_, _, first_p, last_p) in ranges.items():
            check(seen[(stream, 1)] == first_p and seen[(stream, len(batches[stream]))] == last_p,
                  f"{stream}: read_all positions agree with append_batch")
        print(f"5. read_all: {len(seen)} events of this run once each, in position order, {pages} pages of {page_size}")

        # 6. LISTEN: after a commit, a notification names the partition and its last committed position.
        listener.execute("LISTEN allsource_events")
        partition = conn.execute("SELECT allsource.partition_for(%s)", (order,)).fetchone()[0]
        version, delivered_at = append(conn, order, "OrderDelivered", {}, 3)
        received = None
        for notify in listener.notifies(timeout=10):
            payload = json.loads(notify.payload)
            if payload["partition_id"] == partition and payload["last_position"] >= delivered_at:
                received = payload
                break
        check(received is not None, f"no notification for partition {partition} up to {delivered_at} within 10 s")
        print(f"6. LISTEN allsource_events: got {json.dumps(received)} after OrderDelivered at {delivered_at}")

        # 7. Appends are transactional: roll back, and neither stream has the events.
        before = {order: stream_version(conn, order), cart: stream_version(conn, cart)}
        with conn.transaction():
            refunded = append(conn, order, "OrderRefunded", {"amount": 42}, before[order])
            reopened = append(conn, cart, "CartReopened", {}, before[cart])
            check(refunded[0] == before[order] + 1 and reopened[0] == before[cart] + 1, "versions inside the transaction")
            raise psycopg.Rollback()  # e.g. the payment provider refused the refund
        after = {order: stream_version(conn, order), cart: stream_version(conn, cart)}
        check(after == before, f"stream versions after the rollback: {after}, before: {before}")
        check("OrderRefunded" not in event_types(conn, order) and "CartReopened" not in event_types(conn, cart),
              "rolled-back events are not in read_stream")
        print(f"7. rolled back appends to {order} and {cart}: still at versions {before[order]} and {before[cart]}")

    print("python example: all checks passed")


if __name__ == "__main__":
    main()
