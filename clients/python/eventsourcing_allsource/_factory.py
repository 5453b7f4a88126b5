"""The infrastructure factory the library finds in this module."""

from __future__ import annotations

from typing import cast

from eventsourcing.dcb.persistence import DCBInfrastructureFactory
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
)
from eventsourcing.postgres import (
    BasePostgresFactory,
    PostgresAggregateRecorder,
    PostgresTrackingRecorder,
    TPostgresTrackingRecorder,
)
from eventsourcing.utils import resolve_topic

from eventsourcing_allsource._dcb import AllSourceDCBRecorder
from eventsourcing_allsource._recorders import (
    AllSourceAggregateRecorder,
    AllSourceApplicationRecorder,
    AllSourceProcessRecorder,
)


class AllSourceFactory(
    BasePostgresFactory[PostgresTrackingRecorder],
    InfrastructureFactory[PostgresTrackingRecorder],
    DCBInfrastructureFactory[PostgresTrackingRecorder],
):
    """Events in AllSource (one category per application); snapshots and
    tracking records in the library's own tables, named as its PostgreSQL
    module names them."""

    aggregate_recorder_class = AllSourceAggregateRecorder
    application_recorder_class = AllSourceApplicationRecorder
    tracking_recorder_class = PostgresTrackingRecorder
    process_recorder_class = AllSourceProcessRecorder

    def category(self) -> str:
        return self.env.name.lower() or "stored"

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        recorder: AggregateRecorder
        if purpose == "events":
            recorder = type(self).aggregate_recorder_class(
                datastore=self.datastore, category=self.category()
            )
        else:
            # Snapshots: several per aggregate at gapped versions, which
            # is not a stream; the library's table keeps them.
            recorder = PostgresAggregateRecorder(
                datastore=self.datastore,
                events_table_name=f"{self.category()}_{purpose}",
            )
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def application_recorder(self) -> ApplicationRecorder:
        topic = self.env.get(self.APPLICATION_RECORDER_TOPIC)
        recorder_class = (
            resolve_topic(topic) if topic else type(self).application_recorder_class
        )
        assert issubclass(recorder_class, AllSourceApplicationRecorder)
        recorder = recorder_class(datastore=self.datastore, category=self.category())
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def tracking_recorder(
        self, tracking_recorder_class: type[TPostgresTrackingRecorder] | None = None
    ) -> TPostgresTrackingRecorder:
        if tracking_recorder_class is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            tracking_recorder_class = cast(
                "type[TPostgresTrackingRecorder]",
                resolve_topic(topic) if topic else type(self).tracking_recorder_class,
            )
        assert issubclass(tracking_recorder_class, PostgresTrackingRecorder)
        recorder = tracking_recorder_class(
            datastore=self.datastore, tracking_table_name=self._tracking_table_name()
        )
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def process_recorder(self) -> ProcessRecorder:
        topic = self.env.get(self.PROCESS_RECORDER_TOPIC)
        recorder_class = (
            resolve_topic(topic) if topic else type(self).process_recorder_class
        )
        assert issubclass(recorder_class, AllSourceProcessRecorder)
        recorder = recorder_class(
            datastore=self.datastore,
            category=self.category(),
            tracking_table_name=self._tracking_table_name(),
        )
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def dcb_recorder(self) -> AllSourceDCBRecorder:
        recorder = AllSourceDCBRecorder(datastore=self.datastore)
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def _tracking_table_name(self) -> str:
        return (self.env.name.lower() or "notification") + "_tracking"
