"""COPY ... TO STDOUT into a file: the counting writer, the queries, a range's rows without
the header and trailer its COPY wraps them in (`RowsOnly`, for range-split's joined file),
and the single-stream copier (one COPY for the whole table, as pg_dump runs it). The
COPY's options and framing are the file format's (`common.formats`)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Protocol

from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from common.compression import compressing
from common.db import table_identifier
from common.exceptions import BackupError

Report = Callable[[int, int], None]


class CountingWriter:
    """The file psycopg2 copies into: it forwards bytes, hashes them and counts COPY's messages.

    libpq hands COPY OUT data over one row per message and psycopg2 makes one `write`
    call per message, so calls minus the format's header and trailer messages are exact
    row counts, even for values with embedded newlines.
    """

    def __init__(
        self,
        out: BinaryIO,
        every: int,
        report: Report,
        header_records: int = 1,
        hashed: bool = True,
        trailer_records: int = 0,
    ) -> None:
        self.out = out
        self.header_records, self.trailer_records = header_records, trailer_records
        self._write = out.write
        self.sha256 = hashlib.sha256()
        self._hash = self.sha256.update if hashed else not_hashed
        self._every = every
        self._report = report
        self.records = 0
        self.bytes = 0
        self._next_report = every + header_records  # records count the header

    def write(self, data: bytes) -> None:
        # Called once per row: kept to the minimum (no modulo, no subtraction).
        self._write(data)
        self._hash(data)
        self.records += 1
        self.bytes += len(data)
        if self.records == self._next_report:
            self._next_report += self._every
            self._report(self.rows, self.own_bytes)

    @property
    def rows(self) -> int:
        """Rows written so far, while the COPY runs."""
        return self.records - self.header_records

    @property
    def final_rows(self) -> int:
        """Rows written, once the COPY has ended (its trailer, if any, counted out)."""
        return self.rows - self.trailer_records

    @property
    def own_bytes(self) -> int:
        """What this process copied (progress counts no one else's rows)."""
        return self.bytes

    def frame(self, data: bytes) -> None:
        """Bytes of the file that belong to no row (a joined file's header or trailer):
        written and hashed, never counted as a record."""
        self._write(data)
        self._hash(data)
        self.bytes += len(data)


class RowsOnly:
    """What a range's COPY writes into: its messages on to `rows`, one call each, without
    the `header` the format puts before the first row and the `trailer` after the last
    (a joined file carries them once). The header is checked and cut from the first
    message; the last message is held back until the next arrives or `close`, which
    checks and cuts the trailer. A message left empty is not passed on, so the calls are
    exactly the rows, and a range of no rows passes nothing."""

    def __init__(self, rows: Callable[[bytes], None], header: bytes, trailer: bytes) -> None:
        self._rows, self._header, self._trailer = rows, header, trailer
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        # Called once per row: an exchange and a test more than the counting writer's call.
        held, self._held = self._held, data
        if held is None:
            self._held = self._without_header(data)
        elif held:
            self._rows(held)

    def _without_header(self, data: bytes) -> bytes:
        if not data.startswith(self._header):
            raise BackupError("a range's COPY did not start with the format's header")
        return data[len(self._header) :]

    def close(self) -> None:
        """The COPY has ended: pass on its last message, without the trailer."""
        last = self._without_header(b"") if self._held is None else self._held
        if not last.endswith(self._trailer):
            raise BackupError("a range's COPY did not end with the format's trailer")
        last = last[: len(last) - len(self._trailer)]
        if last:
            self._rows(last)


def not_hashed(data: bytes) -> None:
    pass


@contextlib.contextmanager
def file_output(job: Any) -> Iterator[tuple[BinaryIO, Any]]:
    """The table's file in its storage, published whole when the block ends without an
    error: (the writer for the rows' bytes, the file's sha256 when compressed, else None)."""
    with (
        job.storage.writer(job.file_name, replace=job.replace) as out,
        compressing(out, job.settings.compression) as pair,
    ):
        yield pair


class Copier(Protocol):
    """How a table's rows reach its file: `StreamCopier`, or `common.split`'s holder."""

    step: str

    def output(self, job: Any) -> contextlib.AbstractContextManager[tuple[BinaryIO, Any]]:
        """Where the rows go (`file_output`): a writer, and the file's checksum if it is
        not the hash of the bytes written (None)."""
        ...

    def writer(self, sink: BinaryIO, every: int, report: Report, fmt: Any) -> CountingWriter: ...

    def copy(self, conn: Connection, table: str, whole: sql.Composed, writer: CountingWriter) -> int:
        """Every row of `table` into `writer`, header first; the number of rows."""
        ...


class StreamCopier:
    step = "copying"

    def output(self, job: Any) -> contextlib.AbstractContextManager[tuple[BinaryIO, Any]]:
        return file_output(job)

    def writer(self, sink: BinaryIO, every: int, report: Report, fmt: Any) -> CountingWriter:
        return CountingWriter(sink, every, report, fmt.header_records, trailer_records=fmt.trailer_records)

    def copy(self, conn: Connection, table: str, whole: sql.Composed, writer: CountingWriter) -> int:
        return copy_rows(conn, table, whole, writer)


def header_query(table: str, fmt: Any) -> sql.Composed:
    """A COPY that sends only the header (and the trailer), as `plan_copy`'s would."""
    return fmt.copy_to(sql.SQL("(SELECT * FROM {} WHERE false)").format(table_identifier(table)))


def copy_rows(conn: Connection, table: str, query: sql.Composed, out: CountingWriter) -> int:
    """Run one whole COPY into `out` (which counts `records`, its header and trailer
    among them); the rows it sent, checked."""
    before = out.records
    server_rows = _copy(conn, query, out)
    return _checked(table, server_rows, out.records - before - out.header_records - out.trailer_records)


def copy_range(conn: Connection, table: str, query: sql.Composed, out: CountingWriter, fmt: Any) -> int:
    """Run a range's COPY into `out`, only its rows: without the format's `range_header`
    and `trailer`, which the joined file carries once (`copy_header`, `CountingWriter.frame`);
    the rows it sent, checked."""
    before = out.records
    if not (fmt.range_header or fmt.trailer):
        return _checked(table, _copy(conn, query, out), out.records - before)
    rows = RowsOnly(out.write, fmt.range_header, fmt.trailer)
    server_rows = _copy(conn, query, rows)
    rows.close()
    return _checked(table, server_rows, out.records - before)


def copy_header(conn: Connection, table: str, out: CountingWriter, fmt: Any) -> None:
    """The start of a file joined from ranges, written by `out.frame`: what a COPY of no
    rows sends (`header_query`) without the trailer, which goes once at the file's end."""
    header = RowsOnly(out.frame, b"", fmt.trailer)
    _copy(conn, header_query(table, fmt), header)
    header.close()


def _copy(conn: Connection, query: sql.Composed, out) -> int:
    """Run `query` into `out`; the rows the server says it sent (-1 if it does not say)."""
    with conn.cursor() as cur:
        cur.copy_expert(query, out)
        return cur.rowcount


def _checked(table: str, server_rows: int, rows: int) -> int:
    if server_rows >= 0 and server_rows != rows:
        raise BackupError(f"{table}: server sent {server_rows} rows, {rows} were written")
    return rows


def plan_copy(conn: Connection, table: str, fmt: Any) -> tuple[sql.Composed, int | None]:
    """The COPY to run and the planner's row estimate (None if never analyzed or missing).

    `COPY table TO STDOUT` for a plain table (what pg_dump runs, faster than a query's
    executor path for wide rows); `COPY (SELECT * ...)` for views and partitioned tables.
    """
    name = table_identifier(table)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT relkind, reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
            (name.as_string(conn),),
        )
        row = cur.fetchone()
    source = name if row and row[0] == "r" else sql.SQL("(SELECT * FROM {})").format(name)
    return fmt.copy_to(source), (int(row[1]) if row and row[1] > 0 else None)
