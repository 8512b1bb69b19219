"""One file loaded into one table through several connections at once, as `pg_restore -j`
loads several tables: a dispatcher reads the file once, in order, in large pieces, cuts
them where rows end (the file format's `splitter`) and hands consecutive shares to one
`COPY ... FROM STDIN` per connection, each running in a thread of its own.

The COPYs run in whatever transactions their connections are in: the caller commits them
all, or rolls them back (or drops the table). Memory stays bounded: a loader holds at most
about two pieces, and a row longer than a piece simply stays with one loader. Any error —
a COPY's, the file's, a read's — stops every loader (one waiting for data gets an error
that aborts its COPY, one busy in the server is cancelled) and is raised once, naming the
table.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, BinaryIO

import psycopg2
from psycopg2 import sql

from common.exceptions import RestoreError

PIECE = 8 << 20  # what the dispatcher reads at once: a share is about one piece
COPY_READ = 1 << 20  # what psycopg2 asks a loader's input for per call
STOP_WAIT_S = 30.0  # how long loaders may take to end their COPY once stopped


def load_parallel(
    connections: list[Any],
    table: sql.Composable,
    columns: list[str],
    fmt: Any,
    stream: BinaryIO,
    piece: int = PIECE,
) -> int:
    """Load the file `stream` (decompressed, in format `fmt`) into `columns` of `table`,
    one COPY per connection; the rows loaded. The stream is read once, in order, to its
    end. Any failure is a `RestoreError` naming the table, raised once every COPY has
    ended; nothing is committed or rolled back here."""
    if not connections:
        raise ValueError("load_parallel needs at least one connection")
    load = _Load(connections, fmt.copy_from(table, columns, header=False), fmt.splitter(), piece)
    try:
        load.dispatch(stream)
    except _Stopped:
        pass
    except BaseException as exc:  # noqa: BLE001 - stop every COPY, then raise it (below)
        load.fail(exc)
    finally:
        load.end()
    if load.error is None:
        return sum(loader.rows for loader in load.loaders)
    if not isinstance(load.error, Exception):
        raise load.error  # KeyboardInterrupt, SystemExit: the COPYs are stopped, pass it on
    name, jobs = _name(table, connections[0]), len(connections)
    raise RestoreError(f"{name}: loading through {jobs} connections failed: {_reason(load.error)}") from (
        load.error
    )


class _Stopped(Exception):
    """The load is stopping because of an error elsewhere."""


class _Load:
    """The dispatcher's side: the loaders, and the first error, which stops them all."""

    def __init__(self, connections: list[Any], copy: sql.Composed, splitter: Any, piece: int) -> None:
        self.loaders = [_Loader(self, conn, copy) for conn in connections]
        self._splitter, self._piece = splitter, piece
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    def dispatch(self, stream: BinaryIO) -> None:
        """Read the header, start the loaders, then hand out the rows: each piece goes to
        the current loader up to its last row boundary, the rest to the least busy one."""
        splitter, piece = self._splitter, self._piece
        data, ended = b"", False
        while (header := splitter.head(data, ended)) is None:
            more = stream.read(piece)
            data, ended = data + more, not more
        data = data[header:]
        for loader in self.loaders:
            loader.start(_Input(splitter.prologue, splitter.epilogue, 2 * piece))
        current = self.loaders[0]
        while True:
            if data:
                rows, rest = splitter.split(data)
                if rows:
                    current.input.put(rows)
                if rest is not None:
                    current = self._least_busy(current)
                    if rest:
                        current.input.put(rest)
            if ended:
                break
            data = stream.read(piece)
            ended = not data
            if self.error is not None:
                raise _Stopped
        splitter.finish()

    def _least_busy(self, current: _Loader) -> _Loader:
        """The loader with the fewest bytes waiting; the next after `current` on a tie."""
        at = self.loaders.index(current)
        turn = self.loaders[at + 1 :] + self.loaders[: at + 1]
        return min(turn, key=lambda loader: loader.input.waiting)

    def fail(self, error: BaseException) -> None:
        """Record the first error and stop every loader."""
        with self._lock:
            if self.error is not None:
                return
            self.error = error
        for loader in self.loaders:
            loader.stop()

    def end(self) -> None:
        """Close every loader's input and wait for its COPY to end; after an error, cancel
        again while one runs (a cancel that reached the server before its COPY did is
        lost), and give up on it after `STOP_WAIT_S`: the error is raised all the same."""
        for loader in self.loaders:
            if loader.input is not None:
                loader.input.close()
        deadline = None
        for loader in self.loaders:
            while loader.thread is not None and loader.thread.is_alive():
                try:
                    loader.thread.join(0.5)
                except BaseException as exc:  # noqa: BLE001 - interrupted (a time limit): stop all
                    self.fail(exc)
                if self.error is not None and loader.thread.is_alive():
                    deadline = deadline or time.monotonic() + STOP_WAIT_S
                    if time.monotonic() > deadline:
                        return
                    loader.stop()


class _Loader:
    """One connection's COPY, fed from its `_Input` in a thread of its own."""

    def __init__(self, load: _Load, connection: Any, copy: sql.Composed) -> None:
        self._load, self.connection, self._copy = load, connection, copy
        self.input: _Input | None = None
        self.thread: threading.Thread | None = None
        self.rows = 0
        self._lock = threading.Lock()
        self._in_copy = False

    def start(self, source: _Input) -> None:
        self.input = source
        self.thread = threading.Thread(target=self._run, name="parallel-load", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with self.connection.cursor() as cur:
                with self._lock:
                    self._in_copy = self._load.error is None
                if self._in_copy:
                    cur.copy_expert(self._copy, self.input, size=COPY_READ)
                    self.rows = cur.rowcount
        except BaseException as exc:  # noqa: BLE001 - the first error stops the load and is raised
            self._load.fail(exc)  # ignored when the load was already stopping
        finally:
            with self._lock:
                self._in_copy = False

    def stop(self) -> None:
        """End this loader's COPY: its next read fails (psycopg2 then aborts the COPY), and
        a COPY busy in the server (waiting for a lock, or on data it has) is cancelled."""
        if self.input is not None:
            self.input.abort()
        with self._lock:
            if self._in_copy:
                self.connection.cancel()


class _Input:
    """A loader's COPY input, read by psycopg2: the prologue, the pieces the dispatcher
    puts (waiting while `capacity` bytes are queued), then the epilogue once closed.
    `abort` wakes both sides with `_Stopped`."""

    def __init__(self, prologue: bytes, epilogue: bytes, capacity: int) -> None:
        self._pieces: collections.deque[bytes] = collections.deque([prologue] if prologue else [])
        self._epilogue, self._capacity = epilogue, capacity
        self._ready = threading.Condition()
        self._closed = self._aborted = False
        self._head, self._offset = b"", 0  # the piece being read
        self.waiting = len(prologue)

    def put(self, data: bytes) -> None:
        with self._ready:
            while self.waiting and self.waiting + len(data) > self._capacity and not self._aborted:
                self._ready.wait()
            if self._aborted:
                raise _Stopped
            self._pieces.append(data)
            self.waiting += len(data)
            self._ready.notify_all()

    def close(self) -> None:
        with self._ready:
            if not self._closed:
                self._closed = True
                if self._epilogue:
                    self._pieces.append(self._epilogue)
                self._ready.notify_all()

    def abort(self) -> None:
        with self._ready:
            self._aborted = True
            self._ready.notify_all()

    def read(self, size: int = -1) -> bytes:
        if self._offset >= len(self._head):
            with self._ready:
                while not self._pieces and not self._closed and not self._aborted:
                    self._ready.wait()
                if self._aborted:
                    raise _Stopped
                if not self._pieces:
                    return b""
                self._head, self._offset = self._pieces.popleft(), 0
                self.waiting -= len(self._head)
                self._ready.notify_all()
        if self._offset == 0 and (size < 0 or size >= len(self._head)):
            self._offset = len(self._head)
            return self._head
        end = len(self._head) if size < 0 else self._offset + size
        chunk = self._head[self._offset : end]
        self._offset += len(chunk)
        return chunk


def _name(table: sql.Composable, connection: Any) -> str:
    """The table as people write it: `schema.table` unquoted for an identifier."""
    if isinstance(table, sql.Identifier):
        return ".".join(table.strings)
    return table.as_string(connection)


def _reason(error: BaseException) -> str:
    """What went wrong, in PostgreSQL's words for a database error, with the first line of
    its CONTEXT (whose line numbers count from the start of that loader's share)."""
    if isinstance(error, psycopg2.Error) and error.diag.message_primary:
        context = error.diag.context
        return error.diag.message_primary + (f" ({context.splitlines()[0]})" if context else "")
    return str(error) or type(error).__name__
