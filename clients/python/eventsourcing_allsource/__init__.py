"""AllSource for PostgreSQL as a persistence module of Python's `eventsourcing`.

Select it the library's way: `PERSISTENCE_MODULE=eventsourcing_allsource`,
with the library's PostgreSQL settings (POSTGRES_HOST, POSTGRES_PORT,
POSTGRES_DBNAME, POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_POOL_SIZE, …).
"""

from eventsourcing_allsource._dcb import AllSourceDCBRecorder
from eventsourcing_allsource._factory import AllSourceFactory
from eventsourcing_allsource._recorders import (
    AllSourceAggregateRecorder,
    AllSourceApplicationRecorder,
    AllSourceProcessRecorder,
)

__all__ = [
    "AllSourceAggregateRecorder",
    "AllSourceApplicationRecorder",
    "AllSourceDCBRecorder",
    "AllSourceFactory",
    "AllSourceProcessRecorder",
]
