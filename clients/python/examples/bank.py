"""Five minutes with eventsourcing on AllSource: an application with an
aggregate, then a projection following it into a table of balances.

    export PERSISTENCE_MODULE=eventsourcing_allsource
    export POSTGRES_HOST=localhost POSTGRES_PORT=5432 POSTGRES_DBNAME=bank
    export POSTGRES_USER=postgres POSTGRES_PASSWORD=secret
    python bank.py
"""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from psycopg.sql import SQL, Identifier

from eventsourcing.application import Application
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.projection import Projection, ProjectionRunner
from eventsourcing.utils import get_topic


# The write side: an aggregate and the application that saves it.
class Account(Aggregate):
    @event("Opened")
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = Decimal("0.00")

    @event("Deposited")
    def deposit(self, amount: Decimal) -> None:
        self.balance += amount


class Bank(Application[UUID]):
    def open_account(self, owner: str) -> UUID:
        account = Account(owner)
        self.save(account)
        return account.id

    def deposit(self, account_id: UUID, amount: Decimal) -> int:
        """Returns the deposit's notification id (its AllSource position)."""
        account: Account = self.repository.get(account_id)
        account.deposit(amount)
        return self.save(account)[-1].notification.id

    def balance(self, account_id: UUID) -> Decimal:
        account: Account = self.repository.get(account_id)
        return account.balance


# The read side: a table of balances, written with the tracking record of
# the event that changed it, in one transaction (so no event counts twice).
class BalancesView(PostgresTrackingRecorder):
    def __init__(self, datastore: PostgresDatastore, **kwargs: object) -> None:
        super().__init__(datastore, **kwargs)
        self.table = Identifier(datastore.schema, "balances")
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {} "
                "(account_id uuid PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL)"
            ).format(self.table)
        )

    def record(self, statement: SQL, params: tuple[object, ...], tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(statement.format(self.table), params)
            self._insert_tracking(curs, tracking)

    def total(self) -> Decimal:
        with self.datastore.transaction() as curs:
            row = curs.execute(SQL("SELECT sum(balance) AS total FROM {}").format(self.table)).fetchone()
            return row["total"] or Decimal("0.00")


class Balances(Projection[BalancesView]):
    topics = (get_topic(Account.Opened), get_topic(Account.Deposited))

    @singledispatchmethod
    def process_event(self, _: object, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)

    @process_event.register
    def opened(self, event: Account.Opened, tracking: Tracking) -> None:
        self.view.record(
            SQL("INSERT INTO {} VALUES (%s, %s, 0)"), (event.originator_id, event.owner), tracking
        )

    @process_event.register
    def deposited(self, event: Account.Deposited, tracking: Tracking) -> None:
        self.view.record(
            SQL("UPDATE {} SET balance = balance + %s WHERE account_id = %s"),
            (event.amount, event.originator_id),
            tracking,
        )


def main() -> None:
    with ProjectionRunner(
        application_class=Bank, projection_class=Balances, view_class=BalancesView
    ) as runner:
        bank = runner.app
        alice = bank.open_account("Alice")
        bank.deposit(alice, Decimal("10.00"))
        last = bank.deposit(alice, Decimal("32.50"))
        print("Alice's balance, from her events:", bank.balance(alice))

        # The projection follows the notification log (AllSource's global
        # order, up to the watermark); wait until it has seen the deposit.
        runner.wait(last, timeout=10)
        print("Every balance, from the projection's table:", runner.projection.view.total())


if __name__ == "__main__":
    main()
