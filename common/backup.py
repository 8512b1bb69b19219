"""Back up one table with COPY ... TO STDOUT, streamed to disk in constant memory.

`backup_table` owns what every copy mode shares: the snapshot, the schema and what is
read beside the rows, the atomic file, compression, and the table's result. How the rows
reach the file is the `Copier`'s: one stream (`common.copier`) or range-split
(`common.split`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, TypedDict

import psycopg2
from psycopg2.extensions import TRANSACTION_STATUS_IDLE
from psycopg2.extensions import connection as Connection

from common.consistency import link_column, snapshot_collection_ids
from common.copier import Copier, CountingWriter, StreamCopier, plan_copy
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
)
from common.exceptions import BackupError, VectorBackupError
from common.progress import TableProgress, percent
from common.sizes import format_size
from common.table_job import ProgressCallback, TableJob, backup_file_name
from common.table_schema import read_schema

__all__ = [
    "ProgressCallback",
    "TableBackup",
    "TableJob",
    "backup_file_name",
    "backup_table",
    "run_table_backup",
]


class TableBackup(TypedDict, total=False):
    table: str
    success: bool
    row_count: int
    file_size: str
    file_size_bytes: int
    backup_file: str
    format: str  # common.formats
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


class _Tracker:
    """The table's progress; the step is kept current so an error says where it happened."""

    def __init__(self, job: TableJob) -> None:
        self.job = job
        self.progress = TableProgress(
            table=job.table, step="estimating rows", rows=0, total_estimate=None, bytes=0, percent=None
        )

    def step(self, step: str) -> None:
        self.progress["step"] = step

    def report(self, rows: int, written: int, done: bool = False) -> None:
        share = percent(rows, self.progress["total_estimate"], done)
        self.progress.update(rows=rows, bytes=written, percent=share)
        self.job.report(dict(self.progress))


@dataclass
class _Copied:
    rows: int
    writer: CountingWriter
    file_sha256: Any
    schema: dict[str, Any]
    collection_ids: list[str] | None
    fingerprint: str | None


def backup_table(conn: Connection, job: TableJob, copier: Copier | None = None) -> TableBackup:
    """Write `job.table` to `job.file_name` in `job.storage`, in `job.format`.

    The COPY and what is read beside it come from one REPEATABLE READ snapshot: the
    collection ids the table holds or references (for the set's consistency check) and,
    with `job.fingerprint`, a content fingerprint.

    Guarantees: the file exists only if every row was written and published whole;
    the row count is exact; on any error the temp file is gone and a `BackupError`
    names the table and the step that failed.
    """
    started = time.time()
    tracker = _Tracker(job)
    if not conn.autocommit and conn.get_transaction_status() != TRANSACTION_STATUS_IDLE:
        raise BackupError(
            f"{job.table}: the connection is inside a transaction; commit it first or use autocommit"
        )
    try:
        copied = _copy_in_snapshot(conn, job, copier or StreamCopier(), tracker)
    except (psycopg2.Error, OSError) as exc:  # a StorageError too: named with the table and step
        end_transaction_quietly(conn)
        lost = not is_alive(conn)
        raise table_error(job.table, tracker.progress["step"], exc, connection_lost=lost) from exc
    except VectorBackupError:
        end_transaction_quietly(conn)
        raise
    return _result(job, copied, started)


def _copy_in_snapshot(conn: Connection, job: TableJob, copier: Copier, tracker: _Tracker) -> _Copied:
    """The columns, the DDL, the rows and what is read beside them: one snapshot."""
    table, settings = job.table, job.settings
    begin_snapshot(conn)
    fmt = job.format
    query, tracker.progress["total_estimate"] = plan_copy(conn, table, fmt)
    schema = read_schema(conn, table)
    link = link_column(table, (c["name"] for c in schema.get("columns", [])))
    collection_ids = digest = None
    tracker.step("creating the backup directory")
    job.storage.prepare()
    tracker.step(copier.step)
    with copier.output(job) as (sink, file_sha256):
        writer = copier.writer(sink, settings.progress_every, tracker.report, fmt)
        rows = copier.copy(conn, table, query, writer)
        if link:
            tracker.step("reading collection ids")
            collection_ids = snapshot_collection_ids(conn, table, link, schema)
        if job.fingerprint:
            tracker.step("fingerprinting")
            digest = table_fingerprint(conn, table)
        end_snapshot(conn)
        tracker.step("syncing and renaming")
    tracker.step("done")
    # Progress is what this process copied; other range-split copiers report their own.
    tracker.report(writer.final_rows, writer.own_bytes, done=True)
    return _Copied(rows, writer, file_sha256, schema, collection_ids, digest)


def _result(job: TableJob, copied: _Copied, started: float) -> TableBackup:
    published = job.storage.stat(job.file_name)
    if published is None:
        raise BackupError(f"{job.table}: {job.file_name} vanished right after it was written")
    size = published.size
    writer, compressed = copied.writer, job.settings.compression != "none"
    result = TableBackup(
        table=job.table,
        success=True,
        row_count=copied.rows,
        file_size=format_size(size),
        file_size_bytes=size,
        backup_file=job.file_name,
        format=job.format.name,
        sha256=(copied.file_sha256 or writer.sha256).hexdigest(),
        columns=[[c["name"], c["type"]] for c in copied.schema.get("columns", [])],
        schema=copied.schema,
        duration=round(time.time() - started, 3),
        started_at=started,
    )
    part_sizes = getattr(copied.file_sha256, "part_sizes", None)
    if part_sizes is not None:
        result["part_sizes"] = part_sizes  # uploaded in parts by several copiers (common.digest)
    # Rows other copiers compressed and uploaded themselves were never hashed here.
    if compressed and not getattr(copied.file_sha256, "joined", False):
        result.update(csv_sha256=writer.sha256.hexdigest(), csv_bytes=writer.bytes)
    if copied.fingerprint:
        result["fingerprint"] = copied.fingerprint
    if copied.collection_ids is not None:
        result["collection_ids"] = copied.collection_ids
    return result


def run_table_backup(target: DatabaseTarget, job: TableJob) -> TableBackup:
    """Connect and back up one table; a failure becomes this table's failed result.

    Returning instead of raising lets the other tables of the set still be backed up;
    whoever aggregates the set decides that it failed.
    """
    started = time.time()
    try:
        conn = connect(target)
        try:
            return backup_table(conn, job)
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001 - any surprise is still this table's failure
        return failure_of(target, job.table, exc, started)


def failure_of(target: DatabaseTarget, table: str, exc: Exception, started: float) -> TableBackup:
    """The table's failed result for `exc`, redacted (an error may quote a connection string)."""
    if isinstance(exc, VectorBackupError):
        error = target.redact(str(exc))
    else:
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
