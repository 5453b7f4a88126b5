"""The library's own test cases for persistence modules, subclassed without
overriding a test: every recorder against a real, preloaded server."""

from __future__ import annotations

# Modules, not classes: pytest would collect the library's cases themselves.
from eventsourcing.dcb import tests as dcb_cases
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.tests import persistence as cases
from eventsourcing.utils import Environment

from eventsourcing_allsource import (
    AllSourceAggregateRecorder,
    AllSourceApplicationRecorder,
    AllSourceDCBRecorder,
    AllSourceFactory,
    AllSourceProcessRecorder,
)
from support import ENV, fresh_store


class FactoryPerTest:
    """A fresh store and a factory from the environment, closed after the test."""

    def setUp(self) -> None:
        fresh_store()
        self.factory = InfrastructureFactory.construct(Environment(env=dict(ENV)))
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        self.factory.close()


class TestAggregateRecorder(FactoryPerTest, cases.AggregateRecorderTestCase):
    def create_recorder(self) -> AllSourceAggregateRecorder:
        recorder = self.factory.aggregate_recorder()
        assert isinstance(recorder, AllSourceAggregateRecorder)
        return recorder


class TestAggregateRecorderStartingAtZero(TestAggregateRecorder):
    """The same with aggregates whose versions start at 0."""

    INITIAL_VERSION = 0


class TestApplicationRecorder(FactoryPerTest, cases.ApplicationRecorderTestCase):
    EXPECT_CONTIGUOUS_NOTIFICATION_IDS = True

    def create_recorder(self) -> AllSourceApplicationRecorder:
        recorder = self.factory.application_recorder()
        assert isinstance(recorder, AllSourceApplicationRecorder)
        return recorder

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestTrackingRecorder(FactoryPerTest, cases.TrackingRecorderTestCase):
    def create_recorder(self) -> PostgresTrackingRecorder:
        return self.factory.tracking_recorder()


class TestProcessRecorder(FactoryPerTest, cases.ProcessRecorderTestCase):
    def create_recorder(self) -> AllSourceProcessRecorder:
        recorder = self.factory.process_recorder()
        assert isinstance(recorder, AllSourceProcessRecorder)
        return recorder


class TestNonInterleavingNotificationIDs(FactoryPerTest, cases.NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> AllSourceApplicationRecorder:
        recorder = self.factory.application_recorder()
        assert isinstance(recorder, AllSourceApplicationRecorder)
        return recorder


class MyTrackingRecorder(PostgresTrackingRecorder):
    pass


class TestInfrastructureFactory(cases.InfrastructureFactoryTestCase[AllSourceFactory]):
    def setUp(self) -> None:
        fresh_store()
        self.env = Environment(env=dict(ENV))
        super().setUp()

    def expected_factory_class(self) -> type[AllSourceFactory]:
        return AllSourceFactory

    def expected_aggregate_recorder_class(self) -> type[AllSourceAggregateRecorder]:
        return AllSourceAggregateRecorder

    def expected_application_recorder_class(self) -> type[AllSourceApplicationRecorder]:
        return AllSourceApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[PostgresTrackingRecorder]:
        return PostgresTrackingRecorder

    def tracking_recorder_subclass(self) -> type[PostgresTrackingRecorder]:
        return MyTrackingRecorder

    def expected_process_recorder_class(self) -> type[AllSourceProcessRecorder]:
        return AllSourceProcessRecorder


class TestDCBRecorder(dcb_cases.DCBRecorderTestCase):
    """The library's DCB case keeps its checks in helpers: these run them."""

    def setUp(self) -> None:
        fresh_store()
        self.factory = AllSourceFactory(Environment(env=dict(ENV)))

    def tearDown(self) -> None:
        self.factory.close()

    def recorder(self) -> AllSourceDCBRecorder:
        return self.factory.dcb_recorder()

    def test_append_read(self) -> None:
        self._test_append_read(self.recorder())

    def test_append_subscribe(self) -> None:
        self._test_append_subscribe(self.recorder())
