"""AllSource's SQLSTATEs as the library's exceptions.

The library's datastore maps psycopg's exception classes; AllSource's own
codes (class ZA) are not among them, so they are mapped here first.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import psycopg

from eventsourcing.persistence import DataError, IntegrityError, ProgrammingError

if TYPE_CHECKING:
    from collections.abc import Iterator

# ZA001 wrong expected version, ZA003 event id reused with other content,
# ZA004 an append_if condition failed, 23505 a unique key.
_CONFLICTS = {"ZA001", "ZA003", "ZA004", "23505"}
# 22023 a bad argument (the message names it), 54000 an event over
# allsource.max_event_bytes: the data, not the database, is at fault.
_BAD_DATA = {"22023", "54000"}
_NOT_INSTALLED = "3F000"  # schema "allsource" does not exist


@contextmanager
def allsource_errors() -> Iterator[None]:
    try:
        yield
    except psycopg.Error as e:
        if e.sqlstate in _CONFLICTS:
            raise IntegrityError(str(e)) from e
        if e.sqlstate in _BAD_DATA:
            raise DataError(str(e)) from e
        if e.sqlstate == _NOT_INSTALLED:
            msg = (
                f"{e}: the allsource extension is not installed in this database "
                "(CREATE EXTENSION allsource, with shared_preload_libraries = 'allsource')"
            )
            raise ProgrammingError(msg) from e
        raise
