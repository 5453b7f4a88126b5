#!/usr/bin/env python3
"""Tests of the PL/Proxy router, sql/router.sql (scripts/test_router.sh runs them).

Three AllSource nodes (database "node" on three clusters) and a database
"router" on the first cluster, its partitions mapped partition_id % 3 onto
node1..node3. In order:
1. the router's functions have the node's names, arguments, defaults and
   result columns, and its allsource.events type the node's columns;
2. partition_for on the router equals the node's, for the published test
   vectors and 1,000 random stream ids;
3. calls reach the owning node; the node's SQLSTATEs (ZA001, ZA002, ZA003,
   22023) reach the caller; a call through the router commits on the node even
   if the caller rolls back; a gap in the partition map is a clear error;
4. enqueue through the router, await_ticket asking every node (committed,
   conflict, rejected with its NOTICE, bad tickets);
5. roles: callers reach the nodes as themselves;
6. eight writers append through the router while a follower reads
   read_all_nodes with one cursor per node: every event lands on the node the
   map names and only there, versions are gapless, verify_stream holds, and the
   follower sees every event of every node once, in position order per node;
7. moving a partition to another node with the procedure of docs/scaling-out.md (writes
   frozen at the router meanwhile, positions renumbered on the target), under
   a router session that cached the old map.
"""

import argparse
import hashlib
import random
import threading
import time
import uuid

import psycopg
from psycopg.types.json import Jsonb

from support import connect, expect_error, one, wait_until

NODES = ["node1", "node2", "node3"]
PARTITIONS = 32


def step(message):
    print(f"router: {message}", flush=True)


def partition_of(stream_id, count=PARTITIONS):
    """The extension's hash, as docs/sql-reference.md gives it."""
    return int.from_bytes(hashlib.sha256(stream_id.encode()).digest()[:8], "big") % count


def owner(stream_id):
    """The node the test's map (partition_id % 3) gives the stream."""
    return NODES[partition_of(stream_id) % 3]


ROUTED = ["append", "append_batch", "read_stream", "stream_version", "verify_stream", "verify_gapless",
          "enqueue", "await_ticket", "partition_for", "partition_count", "delete_stream",
          "save_snapshot", "load_snapshot"]


def signatures(conn):
    rows = conn.execute(
        """SELECT p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid)
           FROM pg_proc p WHERE p.pronamespace = 'allsource'::regnamespace AND p.proname = ANY(%s)""",
        (ROUTED,),
    ).fetchall()
    return {name: (arguments, result) for name, arguments, result in rows}


def event_columns(conn):
    return conn.execute(
        """SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
           WHERE attrelid = (SELECT typrelid FROM pg_type WHERE oid = 'allsource.events'::regtype)
             AND attnum > 0 AND NOT attisdropped ORDER BY attnum"""
    ).fetchall()


def same_interface(router, node):
    on_router, on_node = signatures(router), signatures(node)
    assert set(on_router) == set(ROUTED), f"router lacks {set(ROUTED) - set(on_router)}"
    for name in ROUTED:
        assert on_router[name] == on_node[name], f"{name}: router {on_router[name]} != node {on_node[name]}"
    assert event_columns(router) == event_columns(node), "allsource.events differs"
    step(f"{len(ROUTED)} functions and allsource.events match the node's")


def hashing(router, node):
    vectors = {"": 20, "order-1": 12, "customer-42": 21, "Äpfel-ünd-Birnen": 21}
    for stream_id, partition in vectors.items():
        assert one(router, "SELECT allsource_router.partition_for(%s)", (stream_id,))[0] == partition, stream_id
        assert partition_of(stream_id) == partition, stream_id
    assert one(router, "SELECT allsource_router.partition_for(NULL)")[0] == 0
    assert one(router, "SELECT allsource.partition_for('order-1', 7)")[0] == 0
    assert one(router, "SELECT allsource.partition_for('customer-42', 1024)")[0] == 821
    # The node refuses what it refuses, with the same SQLSTATE.
    for query in ["SELECT allsource.partition_for('')", "SELECT allsource.partition_for(NULL)",
                  "SELECT allsource.partition_for('x', 0)", "SELECT allsource.partition_for('x', 1025)",
                  "SELECT allsource.partition_for(repeat('x', 256))"]:
        expect_error(router, "22023", query)
        expect_error(node, "22023", query)

    rng = random.Random(10)
    alphabet = "abcXYZ019-_.:/ Äöüß€日本語🙂"
    ids = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(1000)]
    ids += [stream_id for stream_id in vectors if stream_id]
    counts = [rng.randint(1, 1024) for _ in ids]
    query = """SELECT allsource.partition_for(s), allsource.partition_for(s, n)
               FROM unnest(%s::text[], %s::int[]) WITH ORDINALITY AS t(s, n, i) ORDER BY i"""
    on_router = router.execute(query, (ids, counts)).fetchall()
    on_node = node.execute(query, (ids, counts)).fetchall()
    assert on_router == on_node, "partition_for differs between router and node"
    assert [row[0] for row in on_router] == [partition_of(s) for s in ids]
    assert [row[1] for row in on_router] == [partition_of(s, n) for s, n in zip(ids, counts)]
    step(f"partition_for equals the node's for the test vectors and {len(ids)} ids")


def routing_and_errors(router, nodes):
    # order-1 is partition 12: node1 under partition_id % 3.
    version, position = one(router, "SELECT * FROM allsource.append('order-1', 'Placed', '{\"n\": 1}', expected_version => 0)")
    assert version == 1
    row = one(nodes["node1"], "SELECT stream_id, version, partition_id FROM allsource.events WHERE position = %s", (position,))
    assert row == ("order-1", 1, 12), row
    for name in ("node2", "node3"):
        assert one(nodes[name], "SELECT count(*) FROM allsource.events WHERE stream_id = 'order-1'")[0] == 0
    batch = [{"type": "Paid", "payload": {"n": 2}}, {"type": "Shipped", "payload": {"n": 3}, "metadata": {"by": "x"}}]
    first_version, last_version, _, _ = one(
        router, "SELECT * FROM allsource.append_batch('order-1', %s, expected_version => 1)", (Jsonb(batch),)
    )
    assert (first_version, last_version) == (2, 3)
    assert one(router, "SELECT allsource.stream_version('order-1')")[0] == 3
    assert one(router, "SELECT allsource.stream_version('never-written')")[0] == 0

    # read_stream: the node's rows, all columns, both directions.
    for args in ["'order-1'", "'order-1', 2, 1", "'order-1', 9223372036854775807, 2, backward => true"]:
        through = router.execute(f"SELECT * FROM allsource.read_stream({args})").fetchall()
        direct = nodes["node1"].execute(f"SELECT * FROM allsource.read_stream({args})").fetchall()
        assert through == direct and through, args
    assert router.execute("SELECT * FROM allsource.read_stream('never-written')").fetchall() == []
    assert one(router, "SELECT ok, events_checked FROM allsource.verify_stream('order-1')") == (True, 3)
    assert one(router, "SELECT allsource.verify_gapless('order-1')")[0] is True
    assert one(router, "SELECT allsource.save_snapshot('order-1', 3, '{\"total\": 6}')")[0] is True
    assert one(router, "SELECT * FROM allsource.load_snapshot('order-1')") == (3, {"total": 6})
    step("append, append_batch, read_stream, stream_version, verify_*, snapshots reach the owning node")

    error = expect_error(router, "ZA001", "SELECT allsource.append('order-1', 'Late', '{}', expected_version => 1)")
    assert "order-1" in str(error), error
    expect_error(router, "ZA001", "SELECT allsource.append_batch('order-1', '[{\"type\": \"T\", \"payload\": 1}]', 0)")
    step(f"a stale expected version: ZA001 ({error.diag.message_primary})")
    expect_error(router, "22023", "SELECT allsource.append('', 'T', '{}')")
    expect_error(router, "22023", "SELECT allsource.append(NULL, 'T', '{}')")
    expect_error(router, "22023", "SELECT allsource.append('order-1', 'T', '{}', expected_version => -2)")
    expect_error(router, "22023", "SELECT allsource.append_batch('order-1', '[{\"typ\": \"T\", \"payload\": 1}]')")
    expect_error(router, "22023", "SELECT * FROM allsource.read_stream('order-1', max_count => -1)")
    expect_error(router, "22023", "SELECT allsource.stream_version(NULL)")
    event_id = uuid.uuid4()
    router.execute("SELECT allsource.append('order-2', 'T', '{\"a\": 1}', event_id => %s)", (event_id,))
    expect_error(router, "ZA003", "SELECT allsource.append('order-2', 'T', '{\"a\": 2}', event_id => %s)", (event_id,))
    router.execute("SELECT allsource.append('gone-1', 'Created', '{}')")
    assert one(router, "SELECT allsource.delete_stream('gone-1')")[0] == 1
    expect_error(router, "ZA002", "SELECT allsource.append('gone-1', 'Again', '{}')")
    step("22023, ZA002 and ZA003 come back with the node's SQLSTATE")

    # PL/Proxy runs the node's call in autocommit: the caller's rollback does not undo it.
    try:
        with router.transaction():
            router.execute("SELECT allsource.append('order-3', 'Placed', '{}')")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert one(router, "SELECT allsource.stream_version('order-3')")[0] == 1
    step("an append through the router stays committed when the caller rolls back")

    # A gap in the map is refused with a clear message; the rollback restores it.
    router.execute("BEGIN")
    router.execute("DELETE FROM allsource_router.partitions WHERE partition_id IN (5, 17)")
    error = expect_error(router, "55000", "SELECT allsource.stream_version('order-1')")
    router.execute("ROLLBACK")
    assert "5, 17 missing" in str(error), error
    assert one(router, "SELECT allsource.stream_version('order-1')")[0] == 3
    step(f"a partition map with a gap: 55000 ({error.diag.message_primary})")


def roles(router_port, nodes):
    """Callers reach the nodes as themselves: a writer writes, a reader reads."""
    for conn in nodes.values():  # roles are per cluster: the router shares node1's
        for role, grant in (("app_writer", "allsource_writer"), ("app_reader", "allsource_reader")):
            if not one(conn, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,))[0]:
                conn.execute(f"CREATE ROLE {role} LOGIN")
            conn.execute(f"GRANT {grant} TO {role}")
    with connect(router_port, "router", user="app_writer") as writer, \
            connect(router_port, "router", user="app_reader") as reader:
        version, _ = one(writer, "SELECT * FROM allsource.append('customer-42', 'Registered', '{}')")
        ticket = one(writer, "SELECT allsource.enqueue('customer-42', 'Named', '{}')")[0]
        assert one(writer, "SELECT status FROM allsource.await_ticket(%s)", (ticket,)) == ("committed",)
        assert len(reader.execute("SELECT * FROM allsource.read_stream('customer-42')").fetchall()) == version + 1
        assert one(reader, "SELECT ok FROM allsource.verify_stream('customer-42')") == (True,)
        assert reader.execute("SELECT * FROM allsource_router.read_all_nodes()").fetchall()
        expect_error(reader, "42501", "SELECT allsource.append('customer-42', 'Sneaky', '{}')")
        expect_error(reader, "42501", "SELECT connstr FROM allsource_router.nodes")
    step("a writer role appends and awaits, a reader role reads and may not append (42501 from the node)")


def tickets(router, nodes):
    streams = [f"queued-{i}" for i in range(24)]
    assert {owner(s) for s in streams} == set(NODES)
    issued = {}
    for stream_id in streams:
        issued[stream_id] = one(router, "SELECT allsource.enqueue(%s, 'Queued', %s)",
                                (stream_id, Jsonb({"s": stream_id})))[0]
    for stream_id, ticket in issued.items():
        status, version, position = one(router, "SELECT * FROM allsource.await_ticket(%s, timeout_ms => 10000)", (ticket,))
        assert status == "committed", (stream_id, status)
        row = one(nodes[owner(stream_id)], "SELECT stream_id, version FROM allsource.events WHERE position = %s "
                  "AND stream_id = %s", (position, stream_id))
        assert row == (stream_id, version), (stream_id, row)
    # Awaiting again gives the same answer; without waiting too.
    ticket = issued["queued-0"]
    assert one(router, "SELECT status FROM allsource.await_ticket(%s, 0)", (ticket,)) == ("committed",)
    # A conflict reports as on a node.
    ticket = one(router, "SELECT allsource.enqueue('queued-0', 'Queued', '{}', expected_version => 0)")[0]
    assert one(router, "SELECT status, version FROM allsource.await_ticket(%s)", (ticket,)) == ("conflict", 1)
    # Many in flight, then one wait for the last (pending when first asked, most likely).
    last = None
    for i in range(300):
        last = one(router, "SELECT allsource.enqueue('queued-many', 'Queued', %s)", (Jsonb(i),))[0]
    assert one(router, "SELECT status, version FROM allsource.await_ticket(%s, 10000)", (last,)) == ("committed", 300)
    # A rejection's NOTICE (with the ticket in it) reaches the caller.
    notices = []

    def notice(diag):
        notices.append((diag.severity_nonlocalized, diag.message_primary))

    router.add_notice_handler(notice)
    ticket = one(router, "SELECT allsource.enqueue('gone-1', 'Queued', '{}')")[0]
    assert one(router, "SELECT status FROM allsource.await_ticket(%s)", (ticket,)) == ("rejected",)
    router.remove_notice_handler(notice)
    assert [severity for severity, _ in notices] == ["NOTICE"] and "ZA002" in notices[0][1], notices
    for bad in ["-1", "NULL", "5", str(2**62), f"{ticket}, timeout_ms => -1", f"{ticket}, NULL"]:
        expect_error(router, "22023", f"SELECT * FROM allsource.await_ticket({bad})")
    expect_error(router, "22023", "SELECT allsource.enqueue('', 'T', '{}')")
    step(f"enqueue/await_ticket: {len(issued) + 302} tickets committed, conflicted or rejected on their nodes "
         f"(tickets like {ticket}), bad tickets 22023")


class Follower(threading.Thread):
    """Reads read_all_nodes with one cursor per node until told where to stop
    (the last position of each node) and there; checks order per node and
    that no event comes twice."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.cursors = {}
        self.seen = {}  # event_id -> (node, position)
        self.until = None  # node -> last position, once the writers are done
        self.calls = 0
        self.error = None

    def done(self):
        return self.until is not None and all(self.cursors.get(n, 0) >= p for n, p in self.until.items())

    def run(self):
        try:
            with connect(self.port, "router") as conn:
                while not self.done():
                    rows = conn.execute(
                        "SELECT node, position, event_id FROM allsource_router.read_all_nodes(%s, max_count => 200)",
                        (Jsonb(self.cursors),),
                    ).fetchall()
                    self.calls += 1
                    previous_node = None
                    for node, position, event_id in rows:
                        assert previous_node is None or node >= previous_node, "rows not ordered by node"
                        previous_node = node
                        assert position > self.cursors.get(node, 0), f"{node}: {position} after {self.cursors.get(node)}"
                        assert event_id not in self.seen, f"event {event_id} twice"
                        self.seen[event_id] = (node, position)
                        self.cursors[node] = position
                    if not rows:
                        time.sleep(0.01)
        except Exception as error:  # reported by the main thread
            self.error = error


def writers_and_follower(port, router, nodes):
    streams = [f"acct-{i}" for i in range(200)]
    appended = {}  # event_id -> (stream_id, version)
    conflicts = [0]
    lock = threading.Lock()
    race_barrier = threading.Barrier(8)
    race_winners = []
    errors = []

    def writer(number):
        rng = random.Random(number)
        try:
            with connect(port, "router") as conn:
                # All eight at once on one new stream, expecting it empty: one wins.
                race_barrier.wait()
                try:
                    conn.execute("SELECT allsource.append('race-1', 'First', %s, expected_version => 0)", (Jsonb(number),))
                    race_winners.append(number)
                except psycopg.Error as error:
                    assert error.sqlstate == "ZA001", error
                for _ in range(120):
                    stream_id = rng.choice(streams)
                    expected = one(conn, "SELECT allsource.stream_version(%s)", (stream_id,))[0]
                    ids = [uuid.uuid4() for _ in range(rng.choice([1, 1, 1, 2, 3, 5]))]
                    try:
                        if len(ids) == 1:
                            version, _ = one(conn, "SELECT * FROM allsource.append(%s, 'Deposited', %s, "
                                             "expected_version => %s, event_id => %s)",
                                             (stream_id, Jsonb({"w": number}), expected, ids[0]))
                            first = version
                        else:
                            batch = [{"type": "Moved", "payload": {"w": number, "k": k}, "id": str(event_id)}
                                     for k, event_id in enumerate(ids)]
                            first, last, _, _ = one(conn, "SELECT * FROM allsource.append_batch(%s, %s, %s)",
                                                    (stream_id, Jsonb(batch), expected))
                            assert last == first + len(ids) - 1
                    except psycopg.Error as error:
                        assert error.sqlstate == "ZA001", error
                        with lock:
                            conflicts[0] += 1
                        continue
                    assert first == expected + 1
                    with lock:
                        for k, event_id in enumerate(ids):
                            appended[event_id] = (stream_id, first + k)
        except Exception as error:
            errors.append(error)

    follower = Follower(port)
    follower.start()
    started = time.monotonic()
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(race_winners) == 1, f"race-1: {len(race_winners)} winners"
    step(f"8 writers: {len(appended)} events to {len(streams)} streams in {time.monotonic() - started:.1f} s, "
         f"{conflicts[0]} ZA001 retries skipped, 1 of 8 won race-1")

    # Every event of every node, read on each node directly.
    held = {}  # event_id -> (node, stream_id, version, partition_id, position)
    for name, conn in nodes.items():
        for event_id, stream_id, version, partition_id, position in conn.execute(
            "SELECT event_id, stream_id, version, partition_id, position FROM allsource.events"
        ):
            assert event_id not in held, f"{event_id} on two nodes"
            held[event_id] = (name, stream_id, version, partition_id, position)

    last = {}
    for name, _, _, _, position in held.values():
        last[name] = max(position, last.get(name, 0))
    follower.until = last  # one assignment: the follower never sees it half-filled
    follower.join(timeout=30)
    assert not follower.is_alive(), f"follower did not catch up: at {follower.cursors}, nodes at {follower.until}"
    if follower.error:
        raise follower.error
    assert set(follower.seen) == set(held), (
        f"follower: {len(set(held) - set(follower.seen))} missing, {len(set(follower.seen) - set(held))} unknown"
    )
    for event_id, (name, position) in follower.seen.items():
        assert (held[event_id][0], held[event_id][4]) == (name, position), event_id
    step(f"follower: {len(follower.seen)} events of {len(nodes)} nodes, each once, in {follower.calls} calls; "
         f"cursors {follower.cursors}")

    # Placement: each stream on the node the map names, versions gapless.
    mapped = dict(router.execute("SELECT partition_id, node FROM allsource_router.partitions").fetchall())
    for event_id, (stream_id, version) in appended.items():
        name, held_stream, held_version, partition_id, _ = held[event_id]
        assert (held_stream, held_version) == (stream_id, version), event_id
        assert partition_id == partition_of(stream_id) and name == mapped[partition_id], (stream_id, name)
    stream_rows = {}
    for name, conn in nodes.items():
        for stream_id, partition_id, version, count, low, high in conn.execute(
            """SELECT s.stream_id, s.partition_id, s.version, count(e.version), min(e.version), max(e.version)
               FROM allsource.streams s LEFT JOIN allsource.events e USING (stream_id) GROUP BY 1, 2, 3"""
        ):
            assert stream_id not in stream_rows, f"{stream_id} on two nodes"
            stream_rows[stream_id] = version
            assert name == mapped[partition_of(stream_id)] and partition_id == partition_of(stream_id), stream_id
            assert count == version and (version == 0 or (low, high) == (1, version)), (stream_id, count, low, high)
    checked = 0
    with router.cursor() as cur:
        for stream_id, version in stream_rows.items():
            assert one(cur, "SELECT allsource.stream_version(%s)", (stream_id,))[0] == version, stream_id
            if version:
                ok, events_checked = one(cur, "SELECT ok, events_checked FROM allsource.verify_stream(%s)", (stream_id,))
                assert ok and events_checked == version, stream_id
                checked += 1
    per_node = {name: sum(1 for h in held.values() if h[0] == name) for name in NODES}
    step(f"placement: {len(stream_rows)} streams each on its mapped node only ({per_node} events), "
         f"versions gapless, verify_stream ok for {checked} through the router")
    return follower


# The partition's rows of each table on the source node, by temp table they
# are copied into on the target (the procedure of docs/scaling-out.md, step 3).
MOVED_ROWS = {
    "moved_streams": ("allsource.streams", "SELECT * FROM allsource.streams WHERE partition_id = {p}"),
    "moved_events": ("allsource.events", "SELECT * FROM allsource.events WHERE partition_id = {p}"),
    "moved_event_ids": ("allsource.event_ids", "SELECT * FROM allsource.event_ids WHERE partition_id = {p}"),
    "moved_event_tags": ("allsource.event_tags", "SELECT * FROM allsource.event_tags WHERE partition_id = {p}"),
    "moved_snapshots": ("allsource.snapshots", "SELECT * FROM allsource.snapshots WHERE stream_id IN "
                        "(SELECT stream_id FROM allsource.streams WHERE partition_id = {p})"),
    "moved_erased_events": ("allsource.erased_events",
                            "SELECT * FROM allsource.erased_events WHERE partition_id = {p}"),
}

# Step 3 on the target, once the rows sit in the temp tables: new positions
# from the target's sequence in the old order, then into the real tables.
RENUMBER_AND_INSERT = """
CREATE TEMP TABLE renumbered ON COMMIT DROP AS
    WITH old AS (SELECT position, row_number() OVER (ORDER BY position) AS n FROM moved_events),
         new AS (SELECT position, row_number() OVER (ORDER BY position) AS n
                 FROM (SELECT nextval('allsource.event_position') AS position FROM old) taken)
    SELECT old.position AS old_position, new.position AS new_position FROM old JOIN new USING (n);
UPDATE moved_events m SET position = r.new_position FROM renumbered r WHERE m.position = r.old_position;
UPDATE moved_event_ids m SET position = r.new_position FROM renumbered r WHERE m.position = r.old_position;
UPDATE moved_event_tags m SET position = r.new_position FROM renumbered r WHERE m.position = r.old_position;
UPDATE moved_erased_events m SET position = r.new_position FROM renumbered r WHERE m.position = r.old_position;
INSERT INTO allsource.streams SELECT * FROM moved_streams;
INSERT INTO allsource.events SELECT * FROM moved_events;
INSERT INTO allsource.event_ids SELECT * FROM moved_event_ids;
INSERT INTO allsource.event_tags SELECT * FROM moved_event_tags;
INSERT INTO allsource.snapshots SELECT * FROM moved_snapshots;
INSERT INTO allsource.erased_events SELECT * FROM moved_erased_events;
"""

# Step 5 on the source.
DELETE_ON_SOURCE = """
DELETE FROM allsource.snapshots WHERE stream_id IN (SELECT stream_id FROM allsource.streams WHERE partition_id = {p});
DELETE FROM allsource.erased_events WHERE partition_id = {p};
DELETE FROM allsource.event_ids WHERE partition_id = {p};
DELETE FROM allsource.event_tags WHERE partition_id = {p};
DELETE FROM allsource.events WHERE partition_id = {p};
DELETE FROM allsource.streams WHERE partition_id = {p};
"""


def read_everything(conn, cursors):
    """read_all_nodes from the cursors until nothing comes: (node, event_id, position) rows."""
    got = []
    while True:
        rows = conn.execute("SELECT node, event_id, position FROM allsource_router.read_all_nodes(%s, 500)",
                            (Jsonb(cursors),)).fetchall()
        if not rows:
            return got
        for node, _, position in rows:
            assert position > cursors.get(node, 0)
            cursors[node] = position
        got += rows


def move_partition(router_port, router, node_ports, follower):
    """The procedure of docs/scaling-out.md: partition 12 (order-1 and erase-x) from node1 to node2."""
    partition, target_name = 12, "node2"
    erased = next(f"erase-{i}" for i in range(1000) if partition_of(f"erase-{i}") == partition)
    router.execute("SELECT allsource.append(%s, 'Secret', '{\"pin\": 1234}')", (erased,))
    router.execute("SELECT allsource.delete_stream(%s, hard => true)", (erased,))
    tagged = next(f"tagged-{i}" for i in range(1000) if partition_of(f"tagged-{i}") == partition)
    router.execute("SELECT allsource.append(%s, 'Tagged', '{}', tags => ARRAY['moved:1'])", (tagged,))
    old_session = connect(router_port, "router")  # caches the map as it is now
    assert one(old_session, "SELECT allsource.stream_version('order-1')")[0] == 3

    # 1. No more writes to the partition: refused at the router, reads go on.
    router.execute("UPDATE allsource_router.partitions SET writable = false WHERE partition_id = %s", (partition,))
    expect_error(old_session, "55006", "SELECT allsource.append('order-1', 'Late', '{}')")
    expect_error(old_session, "55006", "SELECT allsource.enqueue('order-1', 'Late', '{}')")
    assert len(old_session.execute("SELECT * FROM allsource.read_stream('order-1')").fetchall()) == 3
    old_session.execute("SELECT allsource.append('order-2', 'Elsewhere', '{}')")  # partition 30

    replica = "-c session_replication_role=replica"
    with connect(node_ports[0], "node", options=replica) as source, \
            connect(node_ports[1], "node", options=replica) as target:
        # 2. Everything of the partition committed on the source.
        last = one(source, "SELECT max(position) FROM allsource.events WHERE partition_id = %s", (partition,))[0]
        wait_until("the watermark", lambda: one(source, "SELECT allsource.watermark()")[0] >= last)
        before = {row[4]: row for row in source.execute(
            "SELECT * FROM allsource.events WHERE partition_id = %s ORDER BY position", (partition,))}

        # 3. Copy, renumber, insert: one transaction on the target.
        target_last = one(target, "SELECT last_value FROM allsource.event_position")[0]
        with target.transaction():
            for temp, (table, select) in MOVED_ROWS.items():
                target.execute(f"CREATE TEMP TABLE {temp} (LIKE {table}) ON COMMIT DROP")
                with source.cursor().copy(f"COPY ({select.format(p=partition)}) TO STDOUT (FORMAT binary)") as out, \
                        target.cursor().copy(f"COPY {temp} FROM STDIN (FORMAT binary)") as into:
                    for data in out:
                        into.write(data)
            target.execute(RENUMBER_AND_INSERT)

        # 4. Switch the map and take writes again.
        router.execute("UPDATE allsource_router.partitions SET node = %s, writable = true WHERE partition_id = %s",
                       (target_name, partition))

        # The follower that read everything before gets the moved events
        # again from node2 (new positions), and from node1 what is new there.
        again = read_everything(router, dict(follower.cursors))
        assert {e for node, e, _ in again if node == target_name} == set(before)
        assert {e for node, e, _ in again if node != target_name} <= set(before) | {
            r[0] for r in source.execute("SELECT event_id FROM allsource.events WHERE partition_id <> %s "
                                         "AND position > %s", (partition, follower.cursors["node1"]))}

        # 5. Delete on the source, once every follower has passed the partition there.
        with source.transaction():
            source.execute(DELETE_ON_SOURCE.format(p=partition))
        assert one(source, "SELECT count(*) FROM allsource.events WHERE partition_id = %s", (partition,))[0] == 0

        # Same events on node2 but their positions, in the same order.
        after = target.execute("SELECT * FROM allsource.events WHERE partition_id = %s ORDER BY position",
                               (partition,)).fetchall()
        assert [row[4] for row in after] == list(before), "order changed"
        assert all(row[1:] == before[row[4]][1:] and row[0] > target_last for row in after)
        moved_streams = [r[0] for r in target.execute(
            "SELECT stream_id FROM allsource.streams WHERE partition_id = %s", (partition,)).fetchall()]

        # The session that cached the old map reloads it, and the streams go on.
        assert one(old_session, "SELECT allsource.stream_version('order-1')")[0] == 3
        version, position = one(old_session, "SELECT * FROM allsource.append('order-1', 'Returned', '{}', "
                                             "expected_version => 3)")
        assert version == 4 and position > after[-1][0], (version, position)
        assert one(target, "SELECT stream_id FROM allsource.events WHERE position = %s", (position,))[0] == "order-1"
        for stream_id in moved_streams:
            ok, _, _, problem = one(router, "SELECT * FROM allsource.verify_stream(%s)", (stream_id,))
            assert ok, (stream_id, problem)
        assert "erased" in one(router, "SELECT problem FROM allsource.verify_stream(%s)", (erased,))[0]
        assert one(router, "SELECT * FROM allsource.load_snapshot('order-1')") == (3, {"total": 6})
        assert len(router.execute("SELECT * FROM allsource.read_stream('order-1')").fetchall()) == 4
        expect_error(router, "ZA001", "SELECT allsource.append('order-1', 'Late', '{}', expected_version => 3)")
        expect_error(router, "ZA002", "SELECT allsource.append(%s, 'Again', '{}')", (erased,))
        # Its tags moved with it: node2's queries and conditions find the event
        # at its new position, node1's no longer do.
        tagged_at = one(target, "SELECT position FROM allsource.events WHERE stream_id = %s", (tagged,))[0]
        with connect(node_ports[1], "node") as node2, connect(node_ports[0], "node") as node1:
            query = '[{"tags": ["moved:1"]}]'
            assert [r[0] for r in node2.execute("SELECT position FROM allsource.read_query(%s)", (query,))] \
                == [tagged_at]
            assert node1.execute("SELECT * FROM allsource.read_query(%s)", (query,)).fetchall() == []
            expect_error(node2, "ZA004", "SELECT * FROM allsource.append_if('[{\"type\": \"T\", \"payload\": {}}]', "
                                         "%s, 0)", (query,))
    old_session.close()

    # A follower starting now reads every event once; positions unique per node.
    everything = read_everything(router, {})
    held = []
    for name, port in zip(NODES, node_ports):
        with connect(port, "node") as node:
            held += [(name, *row) for row in node.execute("SELECT event_id, position FROM allsource.events")]
    assert sorted(everything) == sorted(held)
    assert len({e for _, e, _ in everything}) == len(everything), "an event twice"
    assert len({(n, p) for n, _, p in everything}) == len(everything), "a position twice on a node"
    step(f"moved partition {partition} ({len(moved_streams)} streams, {len(before)} events) to {target_name}: "
         f"writes refused meanwhile, reads went on; after: appends, verify_stream, snapshots and erasures "
         f"continue there, the old follower got the {len(before)} moved events again, a new one all {len(everything)} once")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router-port", type=int, required=True, help="the cluster holding database router")
    parser.add_argument("--node-ports", type=int, nargs=3, required=True, help="node1 node2 node3")
    args = parser.parse_args()
    started = time.monotonic()

    router = connect(args.router_port, "router")
    nodes = {name: connect(port, "node") for name, port in zip(NODES, args.node_ports)}
    same_interface(router, nodes["node1"])
    hashing(router, nodes["node1"])
    routing_and_errors(router, nodes)
    tickets(router, nodes)
    roles(args.router_port, nodes)
    follower = writers_and_follower(args.router_port, router, nodes)
    move_partition(args.router_port, router, args.node_ports, follower)
    step(f"all passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
