#!/usr/bin/env python3
"""Hot standby and failover tests (scripts/test_standby.sh runs them).

A primary and a streaming standby of it, both running AllSource in three
databases ("store", "store_b", "store_c": the workers serve every database
with the extension). In order:
1. the standby serves every read, verify_* and stats(), and sees what the
   primary wrote once its published watermark passes it;
2. every write on the standby raises 25006 with a hint, and no AllSource worker
   runs there;
3. a follower reading read_all on the standby, up to the standby's watermark,
   sees every committed event of the primary exactly once while writers on the
   primary commit, roll back and hold transactions open;
3b. the same in the other two databases: each has its own published
   watermark on the standby and its own follower there, while writers load
   all three;
4. failover: with synchronous replication, kill -9 of the primary under load,
   promotion of the standby: every acknowledged event is there, verify_all()
   is clean, appends continue at the right versions, the watermark does not go
   back, and the workers start, in every database.
"""

import argparse
import os
import random
import signal
import subprocess
import threading
import time

import psycopg

import support
from support import expect_error, one, wait_until

DATABASE = "store"
# Databases with the extension besides DATABASE (scripts/test_standby.sh creates them).
OTHER_DATABASES = ["store_b", "store_c"]


def connect(port, autocommit=True, database=DATABASE):
    return support.connect(port, database, autocommit=autocommit)


def step(message):
    print(f"standby: {message}", flush=True)


def caught_up(primary, standby):
    """Waits until the standby's watermark reaches the primary's, with no
    transaction open on the primary."""
    target = one(primary, "SELECT allsource.watermark()")[0]
    wait_until(
        f"the standby's watermark to reach {target}",
        lambda: one(standby, "SELECT allsource.watermark()")[0] >= target,
    )
    return target


def reads_and_refused_writes(primary, standby):
    primary.execute("SELECT allsource.append('order-1', 'Placed', '{\"n\": 1}')")
    primary.execute("SELECT allsource.append('order-1', 'Paid', '{\"n\": 2}', expected_version => 1)")
    primary.execute(
        """SELECT allsource.append_batch('order-2', '[{"type": "Placed", "payload": {}},
                                                      {"type": "Shipped", "payload": {"to": "x"}}]')"""
    )
    primary.execute("SELECT allsource.save_snapshot('order-1', 2, '{\"total\": 3}')")
    primary.execute("SELECT allsource.append('gone-1', 'Created', '{}')")
    primary.execute("SELECT allsource.delete_stream('gone-1')")
    ticket = one(primary, "SELECT allsource.enqueue('order-3', 'Queued', '{}')")[0]
    assert one(primary, "SELECT status FROM allsource.await_ticket(%s)", (ticket,))[0] == "committed"
    # A subscription with a checkpoint and a failed attempt, its lease let go.
    primary.execute("SELECT allsource.create_subscription('orders', categories => ARRAY['order'])")
    received = [row[0] for row in primary.execute("SELECT position FROM allsource.receive('orders', 3)")]
    primary.execute("SELECT allsource.ack('orders', %s)", (received[1],))
    assert one(primary, "SELECT allsource.nack('orders', %s, 'not yet')", (received[2],))[0] == "retry"
    primary.execute("SELECT allsource.release('orders')")
    # A conditional append of tagged events: a stream of its own, tags on the rows.
    primary.execute(
        """SELECT allsource.append_if('[{"type": "Reserved", "payload": {}, "tags": ["order:1", "seat:9"]}]',
                                     '[{"tags": ["seat:9"]}]', 0)"""
    )
    mark = caught_up(primary, standby)
    step(f"the standby's watermark reached the primary's ({mark})")

    published = one(standby, "SELECT position, published_at FROM allsource.published_watermark")
    assert published[0] == mark, published
    same = [
        "SELECT * FROM allsource.read_stream('order-1')",
        "SELECT * FROM allsource.read_stream('order-2', backward => true)",
        "SELECT * FROM allsource.read_stream('gone-1')",
        "SELECT * FROM allsource.read_all(0, 100)",
        "SELECT * FROM allsource.read_all(2, 2, event_types => ARRAY['Placed'])",
        "SELECT * FROM allsource.read_category('order')",
        "SELECT allsource.stream_version('order-1'), allsource.stream_version('gone-1')",
        "SELECT * FROM allsource.load_snapshot('order-1')",
        "SELECT * FROM allsource.verify_stream('order-2')",
        "SELECT allsource.verify_gapless('order-1')",
        "SELECT * FROM allsource.verify_all()",
        "SELECT * FROM allsource.partition_stats()",
        "SELECT * FROM allsource.subscriptions()",
        "SELECT * FROM allsource.parked_events('orders')",
        """SELECT * FROM allsource.read_query('[{"tags": ["order:1"]}]')""",
        """SELECT allsource.query_head('[{"tags": ["seat:9"]}]')""",
    ]
    for query in same:
        expected = primary.execute(query).fetchall()
        got = standby.execute(query).fetchall()
        assert got == expected, f"{query}: standby {got}, primary {expected}"
    assert len(standby.execute("SELECT * FROM allsource.read_all(0, 100)").fetchall()) == 7
    assert one(standby, """SELECT tags FROM allsource.read_query('[{"tags": ["seat:9"]}]')""")[0] == ["order:1", "seat:9"]
    assert one(standby, "SELECT ok FROM allsource.verify_stream('order-1')")[0] is True
    assert one(standby, "SELECT count(*) FROM allsource.stats()")[0] == 1
    assert standby.execute("SELECT * FROM allsource.inflight()").fetchall() == []
    assert one(standby, "SELECT checkpoint, lag_events, last_error FROM allsource.subscriptions()") == (
        received[1], 3, "not yet"), "the checkpoint, the lag and the failure came over"
    step(f"{len(same)} kinds of read give the primary's answers on the standby")

    writes = [
        "SELECT allsource.append('order-1', 'Late', '{}')",
        "SELECT allsource.append_batch('order-1', '[{\"type\": \"Late\", \"payload\": {}}]')",
        "SELECT allsource.enqueue('order-1', 'Late', '{}')",
        f"SELECT allsource.await_ticket({ticket})",
        "SELECT allsource.delete_stream('order-1')",
        "SELECT allsource.save_snapshot('order-1', 2, '{}')",
        "SELECT * FROM allsource.receive('orders')",
        f"SELECT allsource.ack('orders', {received[2]})",
        f"SELECT allsource.nack('orders', {received[2]})",
        "SELECT allsource.create_subscription('more')",
        "SELECT allsource.drop_subscription('orders')",
        "SELECT allsource.retry_parked('orders')",
        """SELECT allsource.append_if('[{"type": "Late", "payload": {}}]')""",
    ]
    for query in writes:
        error = expect_error(standby, "25006", query)
        assert "hot standby" in error.diag.message_primary, error.diag.message_primary
        assert "primary" in (error.diag.message_hint or ""), error.diag.message_hint
    assert one(standby, "SELECT allsource.stream_version('order-1')")[0] == 2
    step(f"{len(writes)} writes on the standby raise 25006 with a hint")

    worker_types = """SELECT array_agg(DISTINCT backend_type ORDER BY backend_type)
                      FROM pg_stat_activity WHERE backend_type LIKE 'allsource%'"""
    on_primary = one(primary, worker_types)[0]
    assert {"allsource ingest worker", "allsource watermark publisher"} <= set(on_primary), on_primary
    assert one(standby, worker_types)[0] is None, one(standby, worker_types)[0]
    step("the primary runs the ingest worker and the publisher; the standby runs none")


class Writers:
    """Threads appending on the primary: autocommit appends, transactions of
    two streams that commit or roll back, transactions held open a while.
    Acknowledged events are kept as (stream, version, position)."""

    def __init__(self, port, count, streams, rollback_rate=0.2, queued=False, database=DATABASE):
        self.port, self.streams, self.rollback_rate = port, streams, rollback_rate
        self.database = database
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acknowledged = []
        self.rolled_back = 0
        self.errors = []
        # Daemons: a failed check ends the test instead of waiting for them.
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(count)]
        if queued:
            self.threads.append(threading.Thread(target=self.enqueue, daemon=True))

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def stream(self, rng):
        return f"load-{rng.randrange(self.streams)}"

    def run(self, number):
        rng = random.Random(number)
        try:
            conn = connect(self.port, autocommit=False, database=self.database)
            while not self.stop.is_set():
                appended = []
                # Streams in one order in every transaction: no deadlocks.
                for stream in sorted({self.stream(rng) for _ in range(rng.randint(1, 2))}):
                    version, position = one(
                        conn,
                        "SELECT * FROM allsource.append(%s, 'Loaded', %s)",
                        (stream, f'{{"writer": {number}}}'),
                    )
                    appended.append((stream, version, position))
                if rng.random() < 0.05:
                    time.sleep(rng.uniform(0.05, 0.3))  # holds the watermark back
                if rng.random() < self.rollback_rate:
                    conn.rollback()
                    with self.lock:
                        self.rolled_back += len(appended)
                else:
                    conn.commit()
                    with self.lock:
                        self.acknowledged.extend(appended)
        except psycopg.OperationalError as error:
            self.errors.append(error)  # the server went away: in doubt, not acknowledged

    def enqueue(self):
        rng = random.Random(-1)
        try:
            conn = connect(self.port, database=self.database)
            while not self.stop.is_set():
                stream = self.stream(rng)
                ticket = one(conn, "SELECT allsource.enqueue(%s, 'Queued', '{}')", (stream,))[0]
                status, version, position = one(
                    conn, "SELECT * FROM allsource.await_ticket(%s)", (ticket,)
                )
                assert status == "committed", status
                with self.lock:
                    self.acknowledged.append((stream, version, position))
        except psycopg.OperationalError as error:
            self.errors.append(error)


class Follower(threading.Thread):
    """Reads read_all on a server from a cursor, up to its watermark: every
    position once, ascending; the watermark it sees never goes back."""

    def __init__(self, port, database=DATABASE):
        super().__init__(daemon=True)
        self.port, self.database = port, database
        self.cursor = 0
        self.seen = []
        self.highest_watermark = 0
        self.stop = threading.Event()
        self.failure = None

    def read_once(self, conn):
        mark = one(conn, "SELECT allsource.watermark()")[0]
        assert mark >= self.highest_watermark, f"watermark went back: {self.highest_watermark} → {mark}"
        self.highest_watermark = mark
        rows = conn.execute(
            "SELECT position FROM allsource.read_all(%s, 500)", (self.cursor,)
        ).fetchall()
        for (position,) in rows:
            assert position > self.cursor, f"position {position} after cursor {self.cursor}"
            self.cursor = position
            self.seen.append(position)
        return len(rows)

    def run(self):
        try:
            conn = connect(self.port, database=self.database)
            while not self.stop.is_set():
                if self.read_once(conn) == 0:
                    time.sleep(0.005)
        except (AssertionError, psycopg.Error) as failure:
            self.failure = failure

    def finish(self):
        self.stop.set()
        self.join()
        if self.failure:
            raise self.failure


def follower_on_the_standby(primary, standby, port_primary, port_standby):
    start = one(standby, "SELECT allsource.watermark()")[0]
    follower = Follower(port_standby)
    follower.cursor = start
    follower.start()
    writers = Writers(port_primary, count=6, streams=40).start()
    time.sleep(6)
    writers.finish()
    assert not writers.errors, writers.errors
    caught_up(primary, standby)
    time.sleep(0.1)
    follower.finish()
    with connect(port_standby) as conn:
        while follower.read_once(conn):
            pass
    committed = sorted(position for _, _, position in writers.acknowledged)
    assert len(follower.seen) == len(set(follower.seen)), "a position was read twice"
    assert follower.seen == committed, (
        f"follower saw {len(follower.seen)} events, {len(committed)} committed; "
        f"missing {sorted(set(committed) - set(follower.seen))[:10]}, "
        f"extra {sorted(set(follower.seen) - set(committed))[:10]}"
    )
    on_primary = [p for (p,) in primary.execute(
        "SELECT position FROM allsource.events WHERE position > %s ORDER BY position", (start,)
    )]
    assert follower.seen == on_primary
    step(
        f"a follower on the standby read {len(follower.seen)} committed events once each, in order, "
        f"while {writers.rolled_back} rolled back (watermark up to {follower.highest_watermark})"
    )


def every_database(port_primary, port_standby):
    """In each other database: its own watermark published for the
    standby, and a follower on the standby reading every committed event
    once, in order, while writers load every database at once."""
    databases = [DATABASE] + OTHER_DATABASES
    for database in OTHER_DATABASES:
        primary, standby = connect(port_primary, database=database), connect(port_standby, database=database)
        primary.execute(f"SELECT allsource.append('{database}-1', 'Placed', '{{}}')")
        ticket = one(primary, f"SELECT allsource.enqueue('{database}-2', 'Queued', '{{}}')")[0]
        assert one(primary, "SELECT status FROM allsource.await_ticket(%s)", (ticket,))[0] == "committed"
        mark = caught_up(primary, standby)
        assert one(standby, "SELECT position FROM allsource.published_watermark")[0] == mark
        streams = [stream for (stream,) in standby.execute("SELECT stream_id FROM allsource.read_all(0, 100)")]
        assert streams == [f"{database}-1", f"{database}-2"], streams
        publishers = one(
            primary,
            """SELECT count(*) FROM pg_stat_activity
               WHERE backend_type = 'allsource watermark publisher' AND datname = current_database()""",
        )[0]
        assert publishers == 1, publishers
    step(f"each of {len(databases)} databases has its own queue and its own watermark on the standby")

    starts = {d: one(connect(port_standby, database=d), "SELECT allsource.watermark()")[0] for d in databases}
    followers = {d: Follower(port_standby, database=d) for d in databases}
    for database, follower in followers.items():
        follower.cursor = starts[database]
        follower.start()
    writers = {
        d: Writers(port_primary, count=2, streams=20, queued=True, database=d).start() for d in databases
    }
    time.sleep(4)
    for database in databases:
        writers[database].finish()
        assert not writers[database].errors, writers[database].errors
    for database in databases:
        primary, standby = connect(port_primary, database=database), connect(port_standby, database=database)
        caught_up(primary, standby)
        follower = followers[database]
        follower.finish()
        while follower.read_once(standby):
            pass
        on_primary = [p for (p,) in primary.execute(
            "SELECT position FROM allsource.events WHERE position > %s ORDER BY position", (starts[database],)
        )]
        committed = sorted(position for _, _, position in writers[database].acknowledged)
        assert follower.seen == on_primary == committed, (
            database, len(follower.seen), len(on_primary), len(committed)
        )
        step(f"{database}: a follower on the standby read {len(follower.seen)} committed events once each, in order")


def kill_9(data_dir):
    """Kills the postmaster and every process it started, at once, as a power
    cut would: stopped first so it cannot react to its children's deaths."""
    with open(os.path.join(data_dir, "postmaster.pid")) as pid_file:
        postmaster = int(pid_file.readline())
    os.kill(postmaster, signal.SIGSTOP)
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == postmaster:
                children.append(int(entry))
    for pid in children + [postmaster]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # The old primary stays down: its pid file must not lead a later
    # `pg_ctl stop` to signal whatever process reuses that pid.
    os.remove(os.path.join(data_dir, "postmaster.pid"))


def as_postgres(command):
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--"] + command
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def failover(args, primary, standby):
    primary.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
    primary.execute("SELECT pg_reload_conf()")
    wait_until(
        "the standby to become synchronous",
        lambda: one(primary, "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")[0] == 1,
    )
    follower = Follower(args.standby_port)
    follower.cursor = one(standby, "SELECT allsource.watermark()")[0]
    follower.start()
    writers = Writers(args.primary_port, count=6, streams=40, rollback_rate=0.1, queued=True).start()
    time.sleep(4)
    primary_mark = one(primary, "SELECT allsource.watermark()")[0]
    kill_9(args.primary_data)
    writers.finish()
    follower.finish()
    primary.close()
    acknowledged = writers.acknowledged
    step(
        f"killed the primary (kill -9) under load after {len(acknowledged)} acknowledged events; "
        f"{len(writers.errors)} calls were in flight"
    )

    as_postgres([os.path.join(args.pg_bin, "pg_ctl"), "promote", "--wait", "--pgdata", args.standby_data])
    wait_until("the promotion", lambda: one(standby, "SELECT NOT pg_is_in_recovery()")[0])
    step("promoted the standby")

    stored = {
        (stream, version): position
        for stream, version, position in standby.execute(
            "SELECT stream_id, version, position FROM allsource.events WHERE stream_id LIKE 'load-%'"
        )
    }
    lost = [(s, v, p) for s, v, p in acknowledged if stored.get((s, v)) != p]
    assert not lost, f"{len(lost)} acknowledged events lost or changed, e.g. {lost[:5]}"
    assert standby.execute("SELECT * FROM allsource.verify_all()").fetchall() == []
    step(f"all {len(acknowledged)} acknowledged events are on the promoted standby; verify_all() is clean")

    mark = one(standby, "SELECT allsource.watermark()")[0]
    assert mark >= follower.highest_watermark, (mark, follower.highest_watermark)
    assert mark >= max(p for _, _, p in acknowledged), mark
    highest = one(standby, "SELECT max(position) FROM allsource.events")[0]
    for stream in sorted({s for s, _, _ in acknowledged})[:10]:
        version = one(standby, "SELECT allsource.stream_version(%s)", (stream,))[0]
        assert version >= max(v for s, v, _ in acknowledged if s == stream)
        new_version, position = one(
            standby,
            "SELECT * FROM allsource.append(%s, 'AfterFailover', '{}', expected_version => %s)",
            (stream, version),
        )
        assert new_version == version + 1 and position > highest, (new_version, position, highest)
        highest = position
    later = one(standby, "SELECT allsource.watermark()")[0]
    assert later >= highest, (later, highest)
    step(
        f"appends continue at the right versions; watermark {mark} after promotion, "
        f"the standby's follower had seen {follower.highest_watermark}, the primary's last {primary_mark}"
    )

    worker_types = """SELECT array_agg(DISTINCT backend_type ORDER BY backend_type)
                      FROM pg_stat_activity WHERE backend_type LIKE 'allsource%'"""
    wait_until(
        "the workers to start after promotion",
        lambda: {"allsource ingest worker", "allsource watermark publisher"}
        <= set(one(standby, worker_types)[0] or []),
    )
    ticket = one(standby, "SELECT allsource.enqueue('after-failover', 'Queued', '{}')")[0]
    assert one(standby, "SELECT status FROM allsource.await_ticket(%s)", (ticket,))[0] == "committed"
    wait_until(
        "the new primary to publish its watermark",
        lambda: one(standby, "SELECT position FROM allsource.published_watermark")[0]
        == one(standby, "SELECT allsource.watermark()")[0],
    )
    for database in OTHER_DATABASES:
        promoted = connect(args.standby_port, database=database)
        ticket = one(promoted, "SELECT allsource.enqueue('after-failover', 'Queued', '{}')")[0]
        assert one(promoted, "SELECT status FROM allsource.await_ticket(%s)", (ticket,))[0] == "committed"
        wait_until(
            f"the new primary to publish the watermark of {database}",
            lambda: one(promoted, "SELECT position FROM allsource.published_watermark")[0]
            == one(promoted, "SELECT allsource.watermark()")[0],
        )
    step("the workers started after promotion in every database: the queues append, the watermarks are published")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--primary-port", type=int, required=True)
    parser.add_argument("--standby-port", type=int, required=True)
    parser.add_argument("--primary-data", required=True)
    parser.add_argument("--standby-data", required=True)
    parser.add_argument("--pg-bin", required=True)
    args = parser.parse_args()
    primary, standby = connect(args.primary_port), connect(args.standby_port)
    assert one(standby, "SELECT pg_is_in_recovery()")[0], "the standby is not in recovery"
    reads_and_refused_writes(primary, standby)
    follower_on_the_standby(primary, standby, args.primary_port, args.standby_port)
    every_database(args.primary_port, args.standby_port)
    failover(args, primary, standby)
    print("standby: all checks passed")


if __name__ == "__main__":
    main()
