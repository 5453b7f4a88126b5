"""Applications on the module: the library's application and projection
cases, and a system of process applications run by the library's runner."""

from __future__ import annotations

from typing import ClassVar
from unittest import TestCase
from uuid import UUID

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.system import MultiThreadedRunner, ProcessApplication, System
# Modules, not classes: pytest would collect the library's cases themselves.
from eventsourcing.tests import application as library_application
from eventsourcing.tests import projection as library_projection

from support import ENV, fresh_store, set_environment


class FreshStore:
    def setUp(self) -> None:
        fresh_store()
        set_environment()
        super().setUp()


class TestExampleApplication(FreshStore, library_application.ExampleApplicationTestCase):
    expected_factory_topic = "eventsourcing_allsource._factory:AllSourceFactory"


class TestEventSourcedProjection(FreshStore, library_projection.EventSourcedProjectionTestCase):
    env: ClassVar[dict[str, str]] = ENV


class Order(Aggregate):
    def __init__(self, item: str) -> None:
        self.item = item


class Invoice(Aggregate):
    def __init__(self, order_id: UUID, item: str) -> None:
        self.order_id = order_id
        self.item = item


class Orders(Application[UUID]):
    def place(self, item: str) -> int:
        """Places an order; returns its notification id."""
        return self.save(Order(item))[-1].notification.id


class Invoicing(ProcessApplication[UUID]):
    """Invoices each order: the invoice and the tracking record of the order
    commit together."""

    def policy(
        self,
        domain_event: DomainEventProtocol[UUID],
        processing_event: ProcessingEvent[UUID],
    ) -> None:
        if isinstance(domain_event, Order.Created):
            processing_event.collect_events(
                Invoice(order_id=domain_event.originator_id, item=domain_event.item)
            )


class TestSystem(FreshStore, TestCase):
    """Orders and Invoicing in one database: two categories of one store."""

    def run_system(self, items: list[str]) -> tuple[list[Invoice], int]:
        runner: MultiThreadedRunner[UUID] = MultiThreadedRunner(
            System(pipes=[[Orders, Invoicing]]), env=dict(ENV)
        )
        runner.start()
        try:
            orders = runner.get(Orders)
            invoicing = runner.get(Invoicing)
            last = 0
            for item in items:
                last = orders.place(item)
            invoicing.recorder.wait(Orders.name, last, timeout=20)
            notifications = invoicing.recorder.select_notifications(None, 1000)
            invoices = [invoicing.mapper.to_domain_event(n) for n in notifications]
            return invoices, len(orders.recorder.select_notifications(None, 1000))
        finally:
            runner.stop()

    def test_every_order_is_invoiced_once_across_restarts(self) -> None:
        invoices, orders = self.run_system([f"item-{i}" for i in range(30)])
        self.assertEqual(orders, 30)
        self.assertEqual(len(invoices), 30)
        self.assertEqual({i.item for i in invoices}, {f"item-{i}" for i in range(30)})
        # A restart resumes after the tracked position: nothing twice.
        invoices, orders = self.run_system(["one more"])
        self.assertEqual(orders, 31)
        self.assertEqual(len(invoices), 31)
        self.assertEqual(len({i.order_id for i in invoices}), 31)
