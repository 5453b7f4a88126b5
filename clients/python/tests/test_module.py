"""What this module adds to the library's contract: how it stores events in
AllSource, and the watermark under its notification log."""

from __future__ import annotations

import json
from threading import Thread
from unittest import TestCase
from uuid import uuid4

from eventsourcing.persistence import (
    InfrastructureFactory,
    IntegrityError,
    ProgrammingError,
    StoredEvent,
)
from eventsourcing.utils import Environment

from eventsourcing_allsource import AllSourceApplicationRecorder
from support import ENV, connect, fresh_store

# Bytes of every shape the library may hand over: its transcoder's JSON,
# other JSON, and what a compressor or a cipher makes (not JSON at all).
STATES = [
    b"state1",
    b"\x00\xff\xfe binary",
    b"{}",
    b'{"a":1}',
    b'{"zeta":1,"alpha":{"b":[1,{"y":2,"x":3.25}],"a":null},"\xc3\xa9":"\\n"}',
    json.dumps({"student_id": "s-1", "course_id": "c-1"}).encode(),
    json.dumps({"name": "\u00e9t\u00e9"}).encode(),  # ensure_ascii escapes
    b'{"big":123456789012345678901234567890,"small":0.1,"exact":1.0000000000000002}',
    b'{"a":1e16}',  # jsonb would write 10000000000000000
    b'{"a":-0.0}',
    b'{"a":"\\u0000"}',
    b'{"a":1,"a":2}',
    b'{\n  "indented": true\n}',
    b"[1, 2, 3]",
    b'"just a string"',
    b'{"a":' * 126 + b"1" + b"}" * 126,  # deeper than AllSource parses a batch
    b'{"a":' * 100 + b"1" + b"}" * 100,
]


def application_recorder(name: str = "") -> AllSourceApplicationRecorder:
    env = Environment(name=name, env=dict(ENV))
    recorder = InfrastructureFactory.construct(env).application_recorder()
    assert isinstance(recorder, AllSourceApplicationRecorder)
    return recorder


class TestStorage(TestCase):
    def setUp(self) -> None:
        fresh_store()

    def test_every_state_comes_back_byte_for_byte(self) -> None:
        recorder = application_recorder()
        originator_id = uuid4()
        events = [
            StoredEvent(originator_id, version, "topic", state)
            for version, state in enumerate(STATES, start=1)
        ]
        recorder.insert_events(events)
        self.assertEqual(list(recorder.select_events(originator_id)), events)
        notifications = recorder.select_notifications(None, 100)
        self.assertEqual([n.state for n in notifications], STATES)

    def test_json_objects_are_queryable_in_sql(self) -> None:
        recorder = application_recorder("Bank")
        account = uuid4()
        recorder.insert_events(
            [
                StoredEvent(account, 1, "bank:Opened", b'{"owner":"Alice","limit":100}'),
                StoredEvent(account, 2, "bank:Credited", b'{"amount":25.5}'),
                StoredEvent(account, 3, "bank:Binary", b"\x00compressed"),
            ]
        )
        with connect() as conn:
            rows = conn.execute(
                "SELECT stream_id, version, event_type, payload ->> 'owner', "
                "payload ->> 'amount', metadata FROM allsource.events ORDER BY position"
            ).fetchall()
        stream = f"bank-{account}"
        self.assertEqual(rows[0][:4], (stream, 1, "bank:Opened", "Alice"))
        self.assertEqual(rows[1][4], "25.5")
        # Compact JSON with keys in jsonb's order needs no metadata; the
        # binary state is base64 and says so.
        self.assertIsNone(rows[1][5])
        self.assertEqual(rows[2][5], {"state": {"encoding": "base64"}})

    def test_applications_in_one_database_keep_their_own_logs(self) -> None:
        orders, invoices = application_recorder("Orders"), application_recorder("Invoices")
        shared_id = uuid4()  # one originator id in both applications
        orders.insert_events([StoredEvent(shared_id, 1, "Placed", b"{}")])
        invoices.insert_events([StoredEvent(shared_id, 1, "Issued", b"{}")])
        orders.insert_events([StoredEvent(shared_id, 2, "Shipped", b"{}")])
        self.assertEqual([n.topic for n in orders.select_notifications(None, 10)], ["Placed", "Shipped"])
        self.assertEqual([n.topic for n in invoices.select_notifications(None, 10)], ["Issued"])
        self.assertEqual(orders.max_notification_id(), 3)
        self.assertEqual(invoices.max_notification_id(), 2)
        self.assertEqual([n.id for n in orders.select_notifications(None, 10, topics=["Shipped"])], [3])

    def test_versions_from_zero_map_to_gapless_versions_from_one(self) -> None:
        recorder = application_recorder()
        originator_id = uuid4()
        recorder.insert_events([StoredEvent(originator_id, v, "t", b"{}") for v in (0, 1)])
        recorder.insert_events([StoredEvent(originator_id, 2, "t", b"{}")])
        with connect() as conn:
            rows = conn.execute(
                "SELECT version, metadata FROM allsource.events ORDER BY version"
            ).fetchall()
        self.assertEqual(rows, [(v, {"first_version": 0}) for v in (1, 2, 3)])
        self.assertEqual([e.originator_version for e in recorder.select_events(originator_id)], [0, 1, 2])
        self.assertEqual(
            [e.originator_version for e in recorder.select_events(originator_id, gt=0, lte=1)], [1]
        )
        self.assertEqual(
            [e.originator_version for e in recorder.select_events(originator_id, desc=True, limit=2)],
            [2, 1],
        )
        self.assertEqual([n.originator_version for n in recorder.select_notifications(None, 10)], [0, 1, 2])
        # A version taken, a gap, and a second first event are refused.
        for version in (2, 4, 0):
            with self.assertRaises(IntegrityError):
                recorder.insert_events([StoredEvent(originator_id, version, "t", b"{}")])
        self.assertEqual(len(recorder.select_events(originator_id)), 3)

    def test_versions_below_the_first_are_refused(self) -> None:
        recorder = application_recorder()
        originator_id, other = uuid4(), uuid4()
        recorder.insert_events([StoredEvent(originator_id, v, "t", b"{}") for v in (1, 2, 3)])
        for versions in ([0], [0, 1], [-1, 0, 1, 2]):
            with self.assertRaises(IntegrityError):
                recorder.insert_events(
                    [StoredEvent(other, 1, "t", b"{}")]
                    + [StoredEvent(originator_id, v, "t", b"{}") for v in versions]
                )
        self.assertEqual([e.originator_version for e in recorder.select_events(originator_id)], [1, 2, 3])
        self.assertEqual(recorder.select_events(other), [])

    def test_saving_the_same_aggregates_in_either_order_never_deadlocks(self) -> None:
        recorder = application_recorder()
        a, b = uuid4(), uuid4()
        recorder.insert_events([StoredEvent(a, 1, "t", b"{}"), StoredEvent(b, 1, "t", b"{}")])
        errors: list[Exception] = []

        def save(first: object, second: object, times: int) -> None:
            saved = 0
            while saved < times and not errors:
                heads = {i: recorder.select_events(i, desc=True, limit=1)[0].originator_version for i in (a, b)}
                try:
                    recorder.insert_events(
                        [StoredEvent(first, heads[first] + 1, "t", b"{}"),
                         StoredEvent(second, heads[second] + 1, "t", b"{}")]
                    )
                    saved += 1
                except IntegrityError:
                    pass  # the other thread saved first: read again
                except Exception as e:  # a deadlock would be 40P01, an OperationalError
                    errors.append(e)

        threads = [Thread(target=save, args=(a, b, 25)), Thread(target=save, args=(b, a, 25))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(recorder.select_events(a)), 51)

    def test_one_insert_is_all_or_nothing_across_aggregates(self) -> None:
        recorder = application_recorder()
        a, b = uuid4(), uuid4()
        recorder.insert_events([StoredEvent(b, 1, "t", b"{}")])
        with self.assertRaises(IntegrityError):
            recorder.insert_events([StoredEvent(a, 1, "t", b"{}"), StoredEvent(b, 1, "t", b"{}")])
        self.assertEqual(recorder.select_events(a), [])
        ids = recorder.insert_events([StoredEvent(a, 1, "t", b"{}"), StoredEvent(b, 2, "t", b"{}")])
        # Positions follow the stream ids' order (the lock order); the ids
        # come back in the order of the events given.
        assert ids is not None
        self.assertEqual(sorted(ids)[1], sorted(ids)[0] + 1)
        by_id = {n.id: (n.originator_id, n.originator_version) for n in recorder.select_notifications(None, 10)}
        self.assertEqual([by_id[i] for i in ids], [(a, 1), (b, 2)])

    def test_a_category_with_a_dash_is_refused(self) -> None:
        with self.assertRaises(ProgrammingError):
            application_recorder("my-app")


class TestWatermark(TestCase):
    """The notification log never passes an event still in flight, so a
    follower never skips one that commits later."""

    def setUp(self) -> None:
        fresh_store()

    def test_an_uncommitted_append_holds_back_the_log(self) -> None:
        recorder = application_recorder("Shop")
        with connect() as slow:
            slow.autocommit = False
            slow.execute(
                "SELECT allsource.append('shop-' || %s, 'Slow', '{}')", (str(uuid4()),)
            )  # position 1, not committed
            fast_ids = recorder.insert_events([StoredEvent(uuid4(), 1, "Fast", b"{}")])
            self.assertEqual(fast_ids, [2])
            self.assertIsNone(recorder.max_notification_id())
            self.assertEqual(recorder.select_notifications(None, 10), [])
            slow.commit()
        self.assertEqual([n.topic for n in recorder.select_notifications(None, 10)], ["Slow", "Fast"])
        self.assertEqual(recorder.max_notification_id(), 2)

    def test_other_tenants_events_are_not_counted(self) -> None:
        recorder = application_recorder("Shop")
        with connect() as other_tenant:
            other_tenant.execute("SET allsource.tenant = 'globex'")
            other_tenant.execute("SELECT allsource.append('shop-' || %s, 'Theirs', '{}')", (str(uuid4()),))
        self.assertIsNone(recorder.max_notification_id())
        self.assertEqual(recorder.select_notifications(None, 2**31), [])

    def test_the_store_must_have_the_extension(self) -> None:
        with connect() as conn:
            conn.execute("DROP EXTENSION allsource CASCADE")
        # The recorder creates it when the role may (the tests run as postgres).
        recorder = application_recorder()
        self.assertEqual(recorder.insert_events([StoredEvent(uuid4(), 1, "t", b"{}")]), [1])
