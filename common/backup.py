"""Back up one table as CSV with COPY ... TO STDOUT, streamed to disk in constant memory."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypedDict

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import TRANSACTION_STATUS_IDLE
from psycopg2.extensions import connection as Connection

from common.atomic import atomic_output
from common.compression import compressing
from common.compression import suffix as compression_suffix
from common.config import VectorTableManagement
from common.consistency import link_column, snapshot_collection_ids
from common.db import (
    DatabaseTarget,
    begin_snapshot,
    connect,
    end_snapshot,
    end_transaction_quietly,
    first_line,
    is_alive,
    table_error,
    table_fingerprint,
    table_identifier,
)
from common.exceptions import BackupError, VectorBackupError
from common.progress import TableProgress, percent
from common.sizes import format_size
from common.table_schema import read_schema

READ_BLOCK = 1 << 20


class TableBackup(TypedDict, total=False):
    table: str
    success: bool
    row_count: int
    file_size: str
    file_size_bytes: int
    backup_file: str
    sha256: str
    csv_sha256: str
    csv_bytes: int
    columns: list[list[str]]
    schema: dict[str, Any]  # common.table_schema: columns, keys, indexes as data
    fingerprint: str
    collection_ids: list[str]
    retaken: bool
    part: bool  # one task's share of a range-split table (common.split)
    duration: float
    started_at: float
    error: str


ProgressCallback = Callable[[TableProgress], None]


def backup_file_name(table: str, timestamp: str, compression: str = "none") -> str:
    return f"{table}_{timestamp}.csv{compression_suffix(compression)}"


class CountingWriter:
    """The file psycopg2 copies into: it forwards bytes, hashes them and counts CSV records.

    libpq hands COPY OUT data over one row per message and psycopg2 makes one `write`
    call per message, so calls minus the header are exact row counts, even for values
    with embedded newlines.
    """

    def __init__(self, out: BinaryIO, every: int, report: Callable[[int, int], None]) -> None:
        self.out = out
        self._write = out.write
        self.sha256 = hashlib.sha256()
        self._hash = self.sha256.update
        self._every = every
        self._report = report
        self.records = 0
        self.bytes = 0
        self.appended = 0  # of `bytes`, what other processes copied
        self._next_report = every + 1  # records count the header

    def write(self, data: bytes) -> None:
        # Called once per row: kept to the minimum (no modulo, no subtraction).
        self._write(data)
        self._hash(data)
        self.records += 1
        self.bytes += len(data)
        if self.records == self._next_report:
            self._next_report += self._every
            self._report(self.records - 1, self.bytes - self.appended)

    def hash_elsewhere(self) -> None:
        """Rows are no longer hashed here: they go to a file other processes append to
        (`common.shared_file`), which is hashed whole, and its owner sets `sha256`."""
        self._hash = _not_hashed

    def count_shared(self, size: int) -> None:
        """Another writer's finished chunk of the shared file; a progress report follows."""
        self.bytes += size
        self.appended += size
        self._report(self.records - 1, self.bytes - self.appended)

    def append_file(self, path: Path) -> None:
        """Rows another process copied and counted (a range-split chunk), appended in order;
        a progress report follows, as the holder may have been waiting for it."""
        with open(path, "rb") as part:
            while block := part.read(READ_BLOCK):
                self._write(block)
                self._hash(block)
                self.bytes += len(block)
                self.appended += len(block)
        self._report(self.records - 1, self.bytes - self.appended)


def _not_hashed(data: bytes) -> None:
    pass


class ChunkCoordinator(Protocol):
    """Shares one table's COPY with other processes (see `common.split`)."""

    def copy(self, conn: Connection, table: str, whole: sql.Composed, writer: CountingWriter) -> int:
        """Every row of `table` into `writer`, header first; the number of rows."""
        ...


def header_query(table: str) -> sql.Composed:
    """A COPY that sends only the header line, as `plan_copy`'s would."""
    return copy_query(sql.SQL("(SELECT * FROM {} WHERE false)").format(table_identifier(table)))


def copy_query(source: sql.Composable, header: bool = True) -> sql.Composed:
    options = "FORMAT csv, HEADER, ENCODING 'UTF8'" if header else "FORMAT csv, ENCODING 'UTF8'"
    return sql.SQL("COPY {} TO STDOUT WITH ({})").format(source, sql.SQL(options))


def copy_rows(conn: Connection, table: str, query: sql.Composed, out, header: bool) -> int:
    """Run one COPY into `out` (which counts `records`); the rows it sent, checked."""
    before = out.records
    with conn.cursor() as cur:
        cur.copy_expert(query, out)
        server_rows = cur.rowcount
    rows = out.records - before - (1 if header else 0)
    if server_rows >= 0 and server_rows != rows:
        raise BackupError(f"{table}: server sent {server_rows} rows, {rows} were written")
    return rows


def plan_copy(conn: Connection, table: str) -> tuple[sql.Composed, int | None]:
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
    return copy_query(source), (int(row[1]) if row and row[1] > 0 else None)


def backup_table(
    conn: Connection,
    table: str,
    directory: Path,
    timestamp: str,
    settings: VectorTableManagement,
    on_progress: ProgressCallback | None = None,
    fingerprint: bool = False,
    replace: bool = False,
    chunks: ChunkCoordinator | None = None,
) -> TableBackup:
    """Write `table` to `directory/{table}_{timestamp}.csv` (CSV, header, UTF-8).

    The COPY and what is read beside it come from one REPEATABLE READ snapshot: the
    collection ids the table holds or references (for the set's consistency check) and,
    with `fingerprint`, a content fingerprint that truncate compares with the table
    under its lock. `replace` lets a re-take supersede this set's own earlier file.
    With `chunks`, this process copies the first block range and joins the others,
    which other processes copy under this transaction's exported snapshot.

    Guarantees: the `.csv` exists only if every row was written, flushed and fsynced;
    the row count is exact; on any error the temp file is gone and a `BackupError`
    names the table and the step that failed.
    """
    started = time.time()
    final = directory / backup_file_name(table, timestamp, settings.compression)
    # The step is kept current so an error, like the progress meta, says where it happened.
    progress = TableProgress(
        table=table, step="estimating rows", rows=0, total_estimate=None, bytes=0, percent=None
    )

    def report(rows: int, written: int, done: bool = False) -> None:
        share = percent(rows, progress["total_estimate"], done)
        progress.update(rows=rows, bytes=written, percent=share)
        if on_progress is not None:
            on_progress(dict(progress))

    if not conn.autocommit and conn.get_transaction_status() != TRANSACTION_STATUS_IDLE:
        raise BackupError(
            f"{table}: the connection is inside a transaction; commit it first or use autocommit"
        )
    try:
        # The columns, the DDL, the rows and what is read beside them: one snapshot.
        begin_snapshot(conn)
        query, progress["total_estimate"] = plan_copy(conn, table)
        schema = read_schema(conn, table)
        columns = [[c["name"], c["type"]] for c in schema.get("columns", [])]
        progress["step"] = "creating the backup directory"
        directory.mkdir(parents=True, exist_ok=True)
        progress["step"] = "copying"
        digest = None
        link = link_column(table, (c[0] for c in columns))
        collection_ids = None
        with (
            atomic_output(final, settings.backup_temp_suffix, replace=replace) as out,
            compressing(out, settings.compression) as (sink, file_sha256),
        ):
            writer = CountingWriter(sink, settings.progress_every, report)
            if chunks is None:
                rows = copy_rows(conn, table, query, writer, header=True)
            else:
                progress["step"] = "copying in chunks"
                rows = chunks.copy(conn, table, query, writer)
            if link:
                progress["step"] = "reading collection ids"
                collection_ids = snapshot_collection_ids(conn, table, link, schema)
            if fingerprint:
                progress["step"] = "fingerprinting"
                digest = table_fingerprint(conn, table)
            end_snapshot(conn)
            progress["step"] = "syncing and renaming"
        progress["step"] = "done"
        # Progress is what this process copied; other chunks report their own.
        report(writer.records - 1, writer.bytes - writer.appended, done=True)
    except VectorBackupError:
        end_transaction_quietly(conn)
        raise
    except (psycopg2.Error, OSError) as exc:
        end_transaction_quietly(conn)
        lost = not is_alive(conn)
        raise table_error(table, progress["step"], exc, connection_lost=lost) from exc
    size = final.stat().st_size
    return TableBackup(
        table=table,
        success=True,
        row_count=rows,
        file_size=format_size(size),
        file_size_bytes=size,
        backup_file=final.name,
        sha256=(file_sha256 or writer.sha256).hexdigest(),
        **(
            {"csv_sha256": writer.sha256.hexdigest(), "csv_bytes": writer.bytes}
            if settings.compression != "none"
            else {}
        ),
        columns=columns,
        schema=schema,
        **({"fingerprint": digest} if digest else {}),
        **({"collection_ids": collection_ids} if collection_ids is not None else {}),
        duration=round(time.time() - started, 3),
        started_at=started,
    )


def run_table_backup(
    target: DatabaseTarget,
    table: str,
    directory: Path,
    timestamp: str,
    settings: VectorTableManagement,
    on_progress: ProgressCallback | None = None,
    fingerprint: bool = False,
    replace: bool = False,
) -> TableBackup:
    """Connect and back up one table; a failure becomes this table's failed result.

    Returning instead of raising lets the other tables of the set still be backed up;
    whoever aggregates the set decides that it failed.
    """
    started = time.time()
    try:
        conn = connect(target)
        try:
            return backup_table(
                conn, table, directory, timestamp, settings, on_progress, fingerprint, replace
            )
        finally:
            conn.close()
    except VectorBackupError as exc:
        error = target.redact(str(exc))
    except Exception as exc:  # noqa: BLE001 - any surprise is still this table's failure
        error = target.redact(f"{table}: unexpected {type(exc).__name__}: {first_line(exc)}")
    return failed_backup(table, error, started)


def failed_backup(table: str, error: str, started: float) -> TableBackup:
    return TableBackup(
        table=table,
        success=False,
        row_count=0,
        error=error,
        duration=round(time.time() - started, 3),
        started_at=started,
    )
