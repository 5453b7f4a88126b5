"""The library's aggregate, application and process recorders over AllSource.

An application's aggregates are AllSource streams of one category: the
aggregate `<id>` of the application named `bank` is the stream `bank-<id>`,
so `allsource.read_category('bank')` is the application's notification log
and two applications in one database never share a stream. An event's topic
is its `event_type`, its state the payload (see `_states`).

Originator versions: AllSource numbers a stream's events 1, 2, 3 … without
gaps; the library lets an aggregate start at any version (0 or 1 in
practice). The events of a stream that does not start at 1 record where
it starts (`metadata.first_version`), and every version is mapped through it: AllSource's version = originator version - first version + 1.
The expected version of an append follows from the first event's originator
version, so a version already taken, or one that would leave a gap, is
refused (IntegrityError), as is a first event of a stream that exists.

Notification ids are AllSource's global positions. They never pass the
watermark, so a follower that reads up to `max_notification_id()` never
skips an event that commits later; no table lock is needed for that.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from threading import Event, Thread
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    IntegrityError,
    ListenNotifySubscription,
    Notification,
    ProcessRecorder,
    ProgrammingError,
    StoredEvent,
    Subscription,
    Tracking,
)
from eventsourcing.persistence import InterfaceError, OperationalError
from eventsourcing.postgres import PostgresRecorder, PostgresTrackingRecorder
from eventsourcing.utils import retry

from eventsourcing_allsource._errors import allsource_errors
from eventsourcing_allsource._states import decode_state, encode_state

if TYPE_CHECKING:
    from psycopg import Connection, Cursor
    from psycopg.rows import DictRow

    from eventsourcing.postgres import PostgresDatastore

# AllSource's NOTIFY channel: every append signals it after commit.
CHANNEL = "allsource_events"
FIRST_VERSION_KEY = "first_version"
_INT_MAX = 2147483647

# Reads are retried on a lost connection, as the library's module retries
# them; appends are not (a retry of one that committed would be refused).
_retry_read = retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)

# One aggregate's events, in one statement: the expected version comes from
# the first event's originator version and the stream's first version (the
# first event's own when the stream is new). Every event of a stream that
# does not start at 1 records its first version, so a notification maps its
# version without looking at the stream's first event.
_APPEND = """
WITH stream AS (
    SELECT s.first_version FROM (
        SELECT coalesce(
            (SELECT coalesce((f.metadata ->> 'first_version')::bigint, 1)
             FROM allsource.read_stream(%(stream_id)s, 1, 1) f),
            %(first)s::bigint) AS first_version) s
    -- Below the stream's first version: no append, no row (refused).
    WHERE %(first)s::bigint >= s.first_version
)
SELECT b.first_position, b.last_position
FROM stream, LATERAL allsource.append_batch(
    %(stream_id)s,
    CASE WHEN stream.first_version = 1 THEN %(events)s::jsonb
         ELSE (SELECT pg_catalog.jsonb_agg(x || pg_catalog.jsonb_build_object('metadata',
                          coalesce(x -> 'metadata', '{}'::jsonb)
                          || pg_catalog.jsonb_build_object('first_version', stream.first_version))
                      ORDER BY n)
               FROM pg_catalog.jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS a(x, n))
    END,
    expected_version => %(first)s::bigint - stream.first_version) b
"""

# One aggregate's events between originator versions, as read_stream reads
# them: low..high are AllSource versions.
_SELECT = """
WITH stream AS (
    SELECT coalesce((f.metadata ->> 'first_version')::bigint, 1) AS first_version
    FROM allsource.read_stream(%(stream_id)s, 1, 1) f
), bounds AS (
    SELECT first_version,
           greatest(1, coalesce(%(gt)s::bigint - first_version + 2, 1)) AS low,
           coalesce(%(lte)s::bigint - first_version + 1, 9223372036854775807) AS high
    FROM stream
)
SELECT e.version + bounds.first_version - 1 AS originator_version, e.event_type,
       e.payload::text AS payload, e.metadata -> 'state' AS state
FROM bounds, LATERAL allsource.read_stream(
    %(stream_id)s,
    CASE WHEN %(desc)s THEN greatest(bounds.high, 0) ELSE bounds.low END,
    greatest(0, least(%(limit)s::bigint, bounds.high - bounds.low + 1, {int_max}))::int,
    %(desc)s) e
WHERE e.version >= bounds.low
ORDER BY e.version {order}
"""

# A page of the application's notification log. Events of other topics
# come without their payload: the page still says how far it read.
_NOTIFICATIONS = """
SELECT e.position, e.stream_id, e.event_type,
       e.version - 1 + coalesce((e.metadata ->> 'first_version')::bigint, 1) AS originator_version,
       CASE WHEN %(topics)s::text[] IS NULL OR e.event_type = ANY (%(topics)s::text[])
            THEN e.payload::text END AS payload,
       e.metadata -> 'state' AS state
FROM allsource.read_category(%(category)s, %(after)s, %(limit)s) e
"""

# The category's highest position at or below the watermark, the session's
# tenant's (the category index serves it; row-level security does not bind
# the table's owner or a superuser, so the tenant is compared here too).
_MAX_NOTIFICATION_ID = """
SELECT pg_catalog.max(e.position) AS max FROM allsource.events e
WHERE pg_catalog.split_part(e.stream_id, '-', 1) = %(category)s
  AND e.position <= (SELECT allsource.watermark())
  AND e.tenant_id IS NOT DISTINCT FROM (SELECT allsource.current_tenant())
"""


def require_extension(recorder: PostgresRecorder) -> None:
    """Creates the extension if the role may; a clear error if it is missing."""
    with recorder.datastore.get_connection() as conn, allsource_errors():
        row = conn.execute(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'allsource'"
        ).fetchone()
        if row is None:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS allsource")
            except Exception as e:
                msg = (
                    f"The allsource extension is not installed, and creating it failed: {e}. "
                    "Run CREATE EXTENSION allsource as a role allowed to, "
                    "with shared_preload_libraries = 'allsource'."
                )
                raise ProgrammingError(msg) from e


def check_category(category: str) -> str:
    if not category or "-" in category:
        msg = (
            f"Invalid AllSource category {category!r}: an application's "
            "category (its name, lower-cased) must be non-empty and without '-', "
            "which separates the category from the aggregate id in a stream id"
        )
        raise ProgrammingError(msg)
    return category


class AllSourceAggregateRecorder(PostgresRecorder, AggregateRecorder):
    """Stored events as AllSource streams of one category."""

    def __init__(
        self, datastore: PostgresDatastore, *, category: str = "stored", **kwargs: Any
    ):
        super().__init__(datastore, **kwargs)
        self.category = check_category(category)
        self._stream_prefix = category + "-"
        self._select = {
            desc: _SELECT.format(int_max=_INT_MAX, order="DESC" if desc else "ASC")
            for desc in (False, True)
        }

    def create_table(self) -> None:
        require_extension(self)
        super().create_table()

    def stream_id(self, originator_id: UUID | str) -> str:
        return self._stream_prefix + str(originator_id)

    def originator_id(self, stream_id: str) -> UUID | str:
        raw = stream_id[len(self._stream_prefix) :]
        return UUID(raw) if self.datastore.originator_id_type == "uuid" else raw

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        self._insert_events(stored_events, **kwargs)
        return None

    def _insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        tracking: Tracking | None = None,
        **_: Any,
    ) -> list[int]:
        """Appends each aggregate's events (and records `tracking`) in one
        transaction; returns the positions in the order of `stored_events`."""
        appends = _appends_by_stream(self, stored_events)
        if not appends and tracking is None:
            return []
        with self.datastore.get_connection() as conn, allsource_errors():
            if len(appends) == 1 and tracking is None:
                # One statement is its own transaction.
                results = [_positions(_append(conn.cursor(), appends[0]), appends[0])]
            else:
                results = self._append_in_one_transaction(conn, appends, tracking)
        return _positions_in_order(stored_events, appends, results)

    def _append_in_one_transaction(
        self,
        conn: Connection[DictRow],
        appends: list[_Append],
        tracking: Tracking | None,
    ) -> list[tuple[int, int]]:
        """BEGIN, the statements and COMMIT in one round trip (a pipeline);
        each append's first and last positions."""
        failure: Exception | None = None
        with conn.pipeline() as pipeline:
            try:
                with conn.transaction():  # rolled back by any exception
                    if tracking is not None:
                        tracked = self._record_tracking(conn.cursor(), tracking)
                    cursors = [_append(conn.cursor(), a) for a in appends]
                    pipeline.sync()
                    results = [_positions(c, a) for c, a in zip(cursors, appends, strict=True)]
                    # Single-row tracking (the library's default) returns the
                    # row it wrote; multi-row tracking fails on its key.
                    if (
                        tracking is not None
                        and self.datastore.single_row_tracking
                        and tracked.fetchone() is None
                    ):
                        msg = (
                            f"Failed to record tracking for {tracking.application_name} "
                            f"{tracking.notification_id}: a higher or equal one is recorded"
                        )
                        raise IntegrityError(msg)
            except Exception as e:
                # Raised once the pipeline has ended.
                failure = e
        if failure is not None:
            raise failure
        return results

    def _record_tracking(
        self, curs: Cursor[DictRow], tracking: Tracking
    ) -> Cursor[DictRow]:
        msg = "This recorder does not record tracking (use the process recorder)"
        raise ProgrammingError(msg)

    @_retry_read
    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        params = {
            "stream_id": self.stream_id(originator_id),
            "gt": gt,
            "lte": lte,
            "desc": desc,
            "limit": limit,
        }
        with self.datastore.get_connection() as conn, allsource_errors():
            rows = conn.execute(self._select[desc], params, prepare=True).fetchall()
        return [
            StoredEvent(
                originator_id=originator_id,
                originator_version=row["originator_version"],
                topic=row["event_type"],
                state=decode_state(row["payload"], row["state"]),
            )
            for row in rows
        ]


class _Append:
    """One aggregate's events of an insert, as `append_batch` takes them."""

    def __init__(self, stream_id: str, first_version: int) -> None:
        self.stream_id = stream_id
        self.first_version = first_version
        self.next_version = first_version
        self.events: list[str] = []
        self.indexes: list[int] = []  # where they are in the insert's list

    def add(self, index: int, event: StoredEvent) -> None:
        if event.originator_version != self.next_version:
            msg = (
                f"Events of aggregate {event.originator_id} must have consecutive "
                f"versions: {event.originator_version} follows {self.next_version - 1}"
            )
            raise IntegrityError(msg)
        self.next_version += 1
        payload, metadata = encode_state(event.state)
        element = f'{{"type": {json.dumps(event.topic)}, "payload": {payload}'
        if metadata is not None:
            element += f', "metadata": {json.dumps(metadata)}'
        self.events.append(element + "}")
        self.indexes.append(index)


def _appends_by_stream(
    recorder: AllSourceAggregateRecorder, stored_events: Sequence[StoredEvent]
) -> list[_Append]:
    """One append per aggregate, in the order of their stream ids: each
    append locks its stream's row until the commit, and two calls that save
    the same aggregates then lock them in one order (no deadlock)."""
    appends: dict[str, _Append] = {}
    for index, event in enumerate(stored_events):
        stream_id = recorder.stream_id(event.originator_id)
        append = appends.get(stream_id)
        if append is None:
            append = appends[stream_id] = _Append(stream_id, event.originator_version)
        append.add(index, event)
    return [appends[stream_id] for stream_id in sorted(appends)]


def _append(curs: Cursor[DictRow], append: _Append) -> Cursor[DictRow]:
    params = {
        "stream_id": append.stream_id,
        "first": append.first_version,
        "events": "[" + ", ".join(append.events) + "]",
    }
    return curs.execute(_APPEND, params, prepare=True)


def _positions(curs: Cursor[DictRow], append: _Append) -> tuple[int, int]:
    row = curs.fetchone()
    if row is None:
        msg = (
            f"Version {append.first_version} of stream {append.stream_id} is below "
            "the stream's first version"
        )
        raise IntegrityError(msg)
    return row["first_position"], row["last_position"]


def _positions_in_order(
    stored_events: Sequence[StoredEvent],
    appends: list[_Append],
    results: list[tuple[int, int]],
) -> list[int]:
    positions = [0] * len(stored_events)
    # One append's events take consecutive positions.
    for append, (first, _) in zip(appends, results, strict=True):
        for offset, index in enumerate(append.indexes):
            positions[index] = first + offset
    return positions


class AllSourceApplicationRecorder(AllSourceAggregateRecorder, ApplicationRecorder):
    """Also the application's notification log: the category in global order."""

    page_size = 500

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        return self._insert_events(stored_events, **kwargs)

    @_retry_read
    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        after = 0 if start is None else max(0, start - 1 if inclusive_of_start else start)
        params: dict[str, Any] = {
            "category": self.category,
            "topics": list(topics) if topics else None,
            "limit": min(max(limit, 1) if not topics else max(limit, self.page_size), _INT_MAX),
        }
        notifications: list[Notification] = []
        with self.datastore.get_connection() as conn, allsource_errors():
            while len(notifications) < limit:
                params["after"] = after
                rows = conn.execute(_NOTIFICATIONS, params, prepare=True).fetchall()
                for row in rows:
                    if stop is not None and row["position"] > stop:
                        return notifications
                    if row["payload"] is not None:
                        notifications.append(self._notification(row))
                        if len(notifications) == limit:
                            break
                if len(rows) < params["limit"]:
                    break
                after = rows[-1]["position"]
        return notifications

    def _notification(self, row: DictRow) -> Notification:
        return Notification(
            id=row["position"],
            originator_id=self.originator_id(row["stream_id"]),
            originator_version=row["originator_version"],
            topic=row["event_type"],
            state=decode_state(row["payload"], row["state"]),
        )

    @_retry_read
    def max_notification_id(self) -> int | None:
        with self.datastore.get_connection() as conn, allsource_errors():
            row = conn.execute(
                _MAX_NOTIFICATION_ID, {"category": self.category}, prepare=True
            ).fetchone()
        assert row is not None
        return row["max"]

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return AllSourceSubscription(recorder=self, gt=gt, topics=topics)


class ListensToAllSource:
    """For the library's listen-notify subscriptions: a thread that wakes the
    subscription on every NOTIFY of AllSource's channel, checking at least
    every 0.1 s whether it has stopped."""

    _recorder: PostgresRecorder
    _has_been_stopped: bool
    _thread_error: BaseException | None
    _has_been_notified: Event

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listen_thread = Thread(target=self._listen, daemon=True)
        self._listen_thread.start()

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        try:
            super().__exit__(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._listen_thread.join()

    def _listen(self) -> None:
        try:
            with self._recorder.datastore.get_connection() as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                while not self._has_been_stopped and not self._thread_error:
                    for _ in conn.notifies(timeout=0.1, stop_after=1):
                        self._has_been_notified.set()
                conn.execute(f"UNLISTEN {CHANNEL}")
        except BaseException as e:
            if self._thread_error is None:
                self._thread_error = e
            self.stop()  # type: ignore[attr-defined]


class AllSourceSubscription(
    ListensToAllSource, ListenNotifySubscription[AllSourceApplicationRecorder]
):
    """Pulls pages of the notification log whenever AllSource notifies."""


class AllSourceProcessRecorder(
    PostgresTrackingRecorder, AllSourceApplicationRecorder, ProcessRecorder
):
    """Events and the tracking record of what produced them, in one
    transaction. Tracking records sit in the library's tracking table (see
    the package README for why not AllSource's subscription checkpoints)."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        category: str = "stored",
        tracking_table_name: str = "notification_tracking",
    ):
        super().__init__(
            datastore, tracking_table_name=tracking_table_name, category=category
        )

    def _record_tracking(
        self, curs: Cursor[DictRow], tracking: Tracking
    ) -> Cursor[DictRow]:
        """The library's single-row tracking statement: no row back means a
        higher or equal notification id is recorded already."""
        return curs.execute(
            self.insert_tracking_statement,
            {
                "application_name": tracking.application_name,
                "notification_id": tracking.notification_id,
            },
            prepare=True,
        )
