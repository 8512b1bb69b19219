"""COPY ... TO STDOUT into a file: the counting writer, the queries, and the single-stream
copier (one COPY for the whole table, as pg_dump runs it). The COPY's options are the
file format's (`common.formats`)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from common.db import table_identifier
from common.exceptions import BackupError

Report = Callable[[int, int], None]


class CountingWriter:
    """The file psycopg2 copies into: it forwards bytes, hashes them and counts CSV records.

    libpq hands COPY OUT data over one row per message and psycopg2 makes one `write`
    call per message, so calls minus the header are exact row counts, even for values
    with embedded newlines.
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


def not_hashed(data: bytes) -> None:
    pass


class Copier(Protocol):
    """How a table's rows reach its file: `StreamCopier`, or `common.split`'s holder."""

    step: str

    def writer(self, sink: BinaryIO, every: int, report: Report, fmt: Any) -> CountingWriter: ...

    def copy(self, conn: Connection, table: str, whole: sql.Composed, writer: CountingWriter) -> int:
        """Every row of `table` into `writer`, header first; the number of rows."""
        ...


class StreamCopier:
    step = "copying"

    def writer(self, sink: BinaryIO, every: int, report: Report, fmt: Any) -> CountingWriter:
        return CountingWriter(sink, every, report, fmt.header_records, trailer_records=fmt.trailer_records)

    def copy(self, conn: Connection, table: str, whole: sql.Composed, writer: CountingWriter) -> int:
        return copy_rows(conn, table, whole, writer, header=True)


def header_query(table: str, fmt: Any) -> sql.Composed:
    """A COPY that sends only the header, as `plan_copy`'s would."""
    return fmt.copy_to(sql.SQL("(SELECT * FROM {} WHERE false)").format(table_identifier(table)))


def copy_rows(conn: Connection, table: str, query: sql.Composed, out, header: bool) -> int:
    """Run one COPY into `out` (which counts `records`); the rows it sent, checked."""
    before = out.records
    with conn.cursor() as cur:
        cur.copy_expert(query, out)
        server_rows = cur.rowcount
    framing = out.header_records + out.trailer_records if header else 0
    rows = out.records - before - framing
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
