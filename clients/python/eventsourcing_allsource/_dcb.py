"""The library's DCB recorder over AllSource's tags and conditional appends.

`append` is `allsource.append_if` (the events need no stream), `read` is
`allsource.read_query`, and a read's head is `allsource.query_head` taken
before the read, so a decision that passes it as `after` never misses an
event that commits later. A DCB recorder reads the whole store its session
sees: give each DCB application its own database or tenant
(`PGOPTIONS='-c allsource.tenant=…'`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from eventsourcing.dcb.api import (
    DCBAppendCondition,
    DCBEvent,
    DCBQuery,
    DCBReadResponse,
    DCBRecorder,
    DCBSequencedEvent,
    DCBSubscription,
)
from eventsourcing.dcb.persistence import DCBListenNotifySubscription
from eventsourcing.dcb.popo import SimpleDCBReadResponse
from eventsourcing.postgres import PostgresRecorder

from eventsourcing_allsource._errors import allsource_errors
from eventsourcing_allsource._recorders import ListensToAllSource, require_extension
from eventsourcing_allsource._states import decode_state, encode_state

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Self

_INT_MAX = 2147483647

_APPEND = """
SELECT last_position FROM allsource.append_if(
    events => %(events)s::jsonb,
    fail_if_events_match => %(condition)s::jsonb,
    after_position => %(after)s::bigint)
"""
_HEAD = "SELECT allsource.query_head(%(query)s::jsonb) AS head"
_READ = """
SELECT e.position, e.event_type, e.payload::text AS payload, e.metadata -> 'state' AS state,
       e.tags
FROM allsource.read_query(%(query)s::jsonb, %(after)s, %(limit)s) e
"""


def _query_json(query: DCBQuery | None) -> str | None:
    if query is None:
        return None
    return json.dumps([{"types": i.types, "tags": i.tags} for i in query.items])


def _event_json(event: DCBEvent) -> str:
    payload, metadata = encode_state(event.data)
    element = f'{{"type": {json.dumps(event.type)}, "payload": {payload}'
    if metadata is not None:
        element += f', "metadata": {json.dumps(metadata)}'
    if event.tags:
        element += f', "tags": {json.dumps(event.tags)}'
    return element + "}"


class AllSourceDCBRecorder(DCBRecorder, PostgresRecorder):
    def create_table(self) -> None:
        require_extension(self)
        super().create_table()

    def append(
        self, events: Sequence[DCBEvent], condition: DCBAppendCondition | None = None
    ) -> int:
        params = {
            "events": "[" + ", ".join(_event_json(e) for e in events) + "]",
            "condition": None
            if condition is None
            else _query_json(condition.fail_if_events_match) or "[]",
            "after": None if condition is None else condition.after,
        }
        with self.datastore.get_connection() as conn, allsource_errors():
            row = conn.execute(_APPEND, params, prepare=True).fetchone()
        assert row is not None
        return row["last_position"]

    def read(
        self,
        query: DCBQuery | None = None,
        *,
        after: int | None = None,
        limit: int | None = None,
    ) -> DCBReadResponse:
        params = {
            "query": _query_json(query),
            "after": after or 0,
            "limit": _INT_MAX if limit is None else limit,
        }
        with self.datastore.get_connection() as conn, allsource_errors():
            # The head first: everything at or below it is in the read.
            with conn.pipeline():
                head_cursor = conn.execute(_HEAD, params, prepare=True)
                read_cursor = conn.execute(_READ, params, prepare=True)
            head_row = head_cursor.fetchone()
            rows = read_cursor.fetchall()
        events = [
            DCBSequencedEvent(
                event=DCBEvent(
                    type=row["event_type"],
                    data=decode_state(row["payload"], row["state"]),
                    tags=row["tags"] or [],
                ),
                position=row["position"],
            )
            for row in rows
        ]
        if limit is not None:
            # Like the library's: the head of a limited read is its last event.
            head = events[-1].position if events else None
        else:
            assert head_row is not None
            last = events[-1].position if events else 0
            head = max(head_row["head"], last) or None
        return SimpleDCBReadResponse(events=iter(events), head=head)

    def subscribe(
        self, query: DCBQuery | None = None, *, after: int | None = None
    ) -> DCBSubscription[Self]:
        return AllSourceDCBSubscription(recorder=self, query=query, after=after)


class AllSourceDCBSubscription(
    ListensToAllSource, DCBListenNotifySubscription[AllSourceDCBRecorder]
):
    """Pulls the query's events whenever AllSource notifies."""
