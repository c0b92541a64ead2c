"""SQLAlchemy's aiosqlite dialect, running statements on the event loop.

aiosqlite runs each SQLite call in the connection's own thread and wakes
the event loop when it returns. SQLAlchemy's adapter makes four such calls
for a query and three for a write. On a purchase, which runs a few dozen
statements, the thread switches cost more CPU than the SQL, and under load
they cost more than CPU. A transaction holds SQLite's only write lock
while each of its statements waits for the busy event loop to resume it
with the thread's result. Every other writer waits behind it in SQLite's
busy handler, which sleeps in steps of up to 100 ms.

The cursor here runs each statement, and the connection its commit and
rollback, directly on the event loop. A local SQLite statement takes
microseconds, and a commit one write to the disk. A transaction that does
nothing but SQL therefore runs from its first write to its commit without
letting another task in, and holds the write lock for that time only.

Writers take turns on an asyncio lock per engine. A statement that may
write takes it first, and the transaction keeps it until it ends, so a
transaction that awaits something else between its statements makes the
others wait without blocking the loop. SQLite's own busy handler is off
(``busy_timeout`` 0, set by :func:`origin.store.create_engine`). When
another process holds the database's write lock, the statement is tried
again after an asyncio sleep, and fails with SQLite's "database is locked"
after ``WRITER_WAIT_SECONDS``.

NOTE: a long query, such as an admin listing over a large table, delays
every other request of the process while it runs. So does each commit
while it waits for the disk. That took 0.13 to 0.2 ms on the machine of
docs/benchmarks.md, 3.4 ms there on a busier day, and takes more on
slower disks. Commits are serialized by SQLite's
single writer in any case. Running the commit in aiosqlite's thread
instead kept the write lock through a turn of the busy loop, and the
purchase surge of docs/benchmarks.md then took seconds instead of
milliseconds.

Connecting and closing still go through aiosqlite's thread, and everything
else is the aiosqlite dialect's, so a URL's ``sqlite+aiosqlite`` stays the
setting that users write; :func:`origin.store.create_engine` picks this
dialect for it. aiosqlite is pinned, because this module reads its
connection's ``_conn``, which is not public.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import weakref
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
DRIVER = "aiosqlite_inline"

#: How long a statement waits for the writer lock, or for another process
#: to release the database's lock, before it fails.
WRITER_WAIT_SECONDS = 5.0

# Sleeps between tries while another process holds the database's lock.
_BUSY_SLEEP_FIRST = 0.001
_BUSY_SLEEP_MAX = 0.05

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


def _may_write(operation: str) -> bool:
    # A new connection's pragmas must not wait for a writer's turn: they do
    # not write rows, and a lock they meet is waited out like any other.
    return operation.lstrip()[:6].upper() not in ("SELECT", "PRAGMA")


def _busy(error: sqlite3.OperationalError) -> bool:
    return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY or (
        "database is locked" in str(error)
    )


class InlineCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor that runs each statement on the event loop's thread."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    # No aiosqlite cursor stays open, so there is nothing to close later.
    _awaitable_cursor_close = False

    def __init__(self, adapt_connection: InlineConnection) -> None:
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
        # A list, because a busy statement is run again from its first row.
        return await self._call(operation, list(seq_of_parameters), many=True)

    async def _call(self, operation: Any, parameters: Any, many: bool = False) -> None:
        connection: InlineConnection = self._adapt_connection  # type: ignore[assignment]
        if _may_write(operation):
            await connection.take_writer_lock()
        raw = connection.raw
        try:
            if many and raw.isolation_level is None and not raw.in_transaction:
                outcome = await _run_each(raw, operation, parameters)
            else:
                outcome = await _retry_busy(_run, raw, operation, parameters, many)
        finally:
            if not raw.in_transaction:
                # The statement committed on its own, wrote nothing, or failed
                # before its transaction began.
                connection.release_writer_lock()
        self._description, rows, self._rowcount, self._lastrowid = outcome
        self._rows = collections.deque(rows)


async def _retry_busy(function: Any, *args: Any) -> Any:
    """Call ``function`` until another process no longer holds SQLite's lock."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WRITER_WAIT_SECONDS
    sleep = _BUSY_SLEEP_FIRST
    while True:
        try:
            return function(*args)
        except sqlite3.OperationalError as error:
            if not _busy(error) or loop.time() + sleep > deadline:
                raise
        await asyncio.sleep(sleep)
        sleep = min(sleep * 2, _BUSY_SLEEP_MAX)


async def _run_each(
    connection: sqlite3.Connection, operation: str, seq_of_parameters: list[Any]
) -> _Outcome:
    """Run ``operation`` once per parameter set, each retried on its own.

    In autocommit mode every row of ``executemany`` commits by itself, so a
    busy database met halfway must not run the rows before it again.
    """
    outcome: _Outcome = (None, [], 0, None)
    rowcount = 0
    for parameters in seq_of_parameters:
        outcome = await _retry_busy(_run, connection, operation, [parameters], True)
        rowcount += max(outcome[2], 0)
    description, rows, _, lastrowid = outcome
    return description, rows, rowcount, lastrowid


class InlineConnection(AsyncAdapt_aiosqlite_connection):
    """An aiosqlite connection whose statements, commit and rollback run inline."""

    __slots__ = ("_writer",)
    _cursor_cls = InlineCursor

    def __init__(self, dbapi: InlineDBAPI, connection: Any) -> None:
        super().__init__(dbapi, connection)
        # The writer lock while this connection holds it.
        self._writer: asyncio.Lock | None = None

    @property
    def raw(self) -> sqlite3.Connection:
        """The sqlite3 connection, created by aiosqlite's thread."""
        return self._connection._conn  # type: ignore[no-any-return]

    async def take_writer_lock(self) -> None:
        if self._writer is not None:
            return
        lock = self.dbapi.writer_lock()
        try:
            async with asyncio.timeout(WRITER_WAIT_SECONDS):
                await lock.acquire()
        except TimeoutError:
            raise sqlite3.OperationalError("database is locked") from None
        self._writer = lock

    def release_writer_lock(self) -> None:
        lock, self._writer = self._writer, None
        if lock is not None:
            lock.release()

    def commit(self) -> None:
        try:
            if self._connection._connection is not None:
                self.raw.commit()
        except Exception as error:  # noqa: BLE001 - translated, as the dialect does
            self._handle_exception(error)
        finally:
            self.release_writer_lock()

    def rollback(self) -> None:
        try:
            if self._connection._connection is not None:
                self.raw.rollback()
        except Exception as error:  # noqa: BLE001 - translated, as the dialect does
            self._handle_exception(error)
        finally:
            self.release_writer_lock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release_writer_lock()

    def terminate(self) -> None:
        try:
            super().terminate()
        finally:
            self.release_writer_lock()


class InlineDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The aiosqlite module for one engine, with that engine's writer lock."""

    def __init__(self, aiosqlite: Any, sqlite: Any) -> None:
        super().__init__(aiosqlite, sqlite)
        # One lock per event loop, as an asyncio lock belongs to one loop.
        self._writers: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Lock
        ] = weakref.WeakKeyDictionary()

    def writer_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._writers.get(loop)
        if lock is None:
            lock = self._writers[loop] = asyncio.Lock()
        return lock

    def connect(self, *arg: Any, **kw: Any) -> InlineConnection:
        # The loop's thread uses the connection that aiosqlite's thread
        # opens; the two never use it at the same time.
        kw["check_same_thread"] = False
        adapted = super().connect(*arg, **kw)
        return InlineConnection(self, adapted._connection)


class SQLiteDialect(SQLiteDialect_aiosqlite):
    """The aiosqlite dialect with statements, commits and rollbacks inline."""

    driver = DRIVER
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> InlineDBAPI:  # type: ignore[override]
        return InlineDBAPI(__import__("aiosqlite"), __import__("sqlite3"))


registry.register(f"sqlite.{DRIVER}", __name__, "SQLiteDialect")
