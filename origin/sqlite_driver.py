"""SQLAlchemy's aiosqlite dialect, with one thread hop per statement.

aiosqlite runs each SQLite call in the connection's own thread and wakes
the event loop when it returns. SQLAlchemy's adapter makes four such calls
for a query (open a cursor, execute, fetch the rows, close the cursor) and
three for a write, and each costs two thread switches and a wake-up of the
loop: on a purchase, which runs a few dozen statements, these switches
cost more CPU than the SQL. The cursor here does the whole statement in one
call to the connection's thread and keeps what SQLAlchemy reads afterwards
(description, rows, row count, last row id).

Everything else (connecting, commit, rollback, the pool, SQLite's pragmas)
is the aiosqlite dialect's, so a URL's ``sqlite+aiosqlite`` stays the
setting that users write; :func:`origin.store.create_engine` picks this
dialect for it. aiosqlite is pinned, because the cursor calls its
connection's ``_execute`` and reads its ``_conn``, which are not public.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.util import EMPTY_DICT

#: The driver name of :class:`SQLiteDialect` in a SQLAlchemy URL.
DRIVER = "aiosqlite_onehop"

_Outcome = tuple[Any, list[Any], int, int | None]


def _run(
    connection: sqlite3.Connection,
    operation: str,
    parameters: Any,
    many: bool,
) -> _Outcome:
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor that runs each statement in one call to the SQLite thread."""

    __slots__ = ("_description", "_rowcount", "_lastrowid")

    # No aiosqlite cursor stays open, so there is nothing to close later.
    _awaitable_cursor_close = False

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    async def _async_soft_close(self) -> None:
        return None

    def close(self) -> None:
        self._rows.clear()

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        return await self._call(operation, () if parameters is None else parameters)

    async def _executemany_async(
        self, operation: Any, seq_of_parameters: Sequence[Any]
    ) -> Any:
        return await self._call(operation, seq_of_parameters, many=True)

    async def _call(self, operation: Any, parameters: Any, many: bool = False) -> None:
        aio = self._connection
        async with self._adapt_connection._execute_mutex:
            description, rows, rowcount, lastrowid = await aio._execute(
                _run, aio._conn, operation, parameters, many
            )
        self._description = description
        self._rows = collections.deque(rows)
        self._rowcount = rowcount
        self._lastrowid = lastrowid


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneHopCursor


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        adapted = super().connect(*arg, **kw)
        return OneHopConnection(self, adapted._connection)


class SQLiteDialect(SQLiteDialect_aiosqlite):
    """The aiosqlite dialect with :class:`OneHopCursor` for plain cursors."""

    driver = DRIVER
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> OneHopDBAPI:  # type: ignore[override]
        return OneHopDBAPI(__import__("aiosqlite"), __import__("sqlite3"))


registry.register(f"sqlite.{DRIVER}", __name__, "SQLiteDialect")
