"""A helper: a task (or the holder's own thread) that joins the holder's snapshot and
copies the ranges it claims, into the holder's file or into part files."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import psycopg2
import redis
from psycopg2.extensions import connection as Connection

from common.atomic import temp_path
from common.copier import CountingWriter, copy_range
from common.db import DatabaseTarget, connect, end_snapshot, end_transaction_quietly, first_line
from common.exceptions import BackupError, VectorBackupError
from common.progress import TableProgress
from common.shared_file import appender, appends_safely, open_for_appending
from common.split.board import Heartbeat, SplitBoard
from common.split.parts import PartSink, big_enough, part_record
from common.split.plan import SplitPlan, part_name
from common.table_job import TableJob


def import_snapshot(conn: Connection, snapshot: str | None) -> bool:
    """Join the holder's snapshot; False once its transaction has ended."""
    try:
        with conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
        return True
    except psycopg2.Error:
        end_transaction_quietly(conn)
        return False


class Helper:
    def __init__(self, job: TableJob, board: SplitBoard) -> None:
        self.job, self.board = job, board

    @property
    def root(self) -> Path | None:
        """The local directory of the parts and shared file; None on object storage."""
        return self.job.storage.local_root

    def part(self, attempt: int, chunk: int) -> Path:
        name = part_name(self.job.file_name, attempt, chunk, self.job.settings.backup_temp_suffix)
        return self.root / name

    def help(self, conn: Connection, plan: SplitPlan) -> tuple[int, int] | None:
        """Claim and copy ranges; (rows, bytes) copied, or None if the snapshot could not
        be joined or the file is no longer this attempt's."""
        if plan.file and not appends_safely(self.root):
            return 0, 0  # this host sees the file on a network filesystem: the holder copies
        if not import_snapshot(conn, plan.snapshot):
            return None
        if plan.upload:
            return self._help_uploading(conn, plan)
        fd = None
        if plan.file and (fd := self.shared_file(plan)) is None:
            end_transaction_quietly(conn)
            return None
        try:
            copied = self._claim_and_copy(conn, plan, fd)
            end_snapshot(conn)
        finally:
            if fd is not None:
                os.close(fd)
        return copied

    def _help_uploading(self, conn: Connection, plan: SplitPlan) -> tuple[int, int]:
        """Copy ranges into parts of the holder's upload (`common.split.parts`); say which
        parts, and the leftover object, once every one is sent."""
        job, board, attempt = self.job, self.board, plan.attempt
        stream, alive = board.join_stream(attempt)
        beat = Heartbeat(board.client, alive)
        upload = job.storage.upload(job.file_name, plan.upload)
        numbers = functools.partial(board.next_part, attempt)
        options = job.storage.options
        sink = PartSink(upload, job.settings.compression, options.part_size, numbers, uploads=options.uploads)
        record: dict = {"error": f"{job.table}: a helper stopped while uploading parts"}
        sent = False
        try:
            copied = self._claim_and_copy(conn, plan, None, sink)
            end_snapshot(conn)
            rest, tail = sink.take(), None
            if big_enough(rest):
                sink.send(rest)
            elif rest:
                tail = part_name(
                    job.file_name,
                    attempt,
                    f"tail-{stream.replace(':', '-')}",
                    job.settings.backup_temp_suffix,
                )
                with job.storage.writer(tail, replace=True) as out:
                    out.write(rest)
            record = {"parts": part_record(sink.sent()), "tail": tail, "rows": copied[0]}
            sent = True
            return copied
        except (OSError, VectorBackupError) as exc:
            end_transaction_quietly(conn)
            record = {"error": f"{job.table}: uploading parts failed: {first_line(exc)}"}
            raise BackupError(record["error"]) from exc
        finally:
            if not sent:
                sink.abandon()  # whatever stopped it: no part of it may go out any more
            board.end_stream(attempt, stream, record)
            beat.stop()

    def _claim_and_copy(
        self, conn: Connection, plan: SplitPlan, fd: int | None, sink: PartSink | None = None
    ) -> tuple[int, int]:
        board, attempt = self.board, plan.attempt
        done = [0, 0]  # rows and bytes of the ranges finished so far

        def report(rows: int, written: int) -> None:
            self.job.report(
                TableProgress(
                    table=self.job.table,
                    step="copying a chunk",
                    rows=done[0] + rows,
                    total_estimate=plan.total_estimate,
                    bytes=done[1] + written,
                    percent=None,
                )
            )

        beat = None
        try:
            for chunk in plan.helper_order():
                if not board.claim(attempt, chunk):
                    continue
                beat = beat or Heartbeat(board.client)
                beat.add(board.alive_key(attempt, chunk))
                rows, written = self._copy_range(conn, plan, chunk, report, fd, sink)
                done[0], done[1] = done[0] + rows, done[1] + written
        finally:
            if beat is not None:
                beat.stop()
        return done[0], done[1]

    def shared_file(self, plan: SplitPlan) -> int | None:
        """An appending descriptor on the holder's file, if it is still this attempt's."""
        temp = temp_path(self.root / self.job.file_name, self.job.settings.backup_temp_suffix)
        fd = open_for_appending(temp, plan.file)
        # The file may be a later attempt's only if that attempt was counted before it.
        if fd is not None and self.board.attempt() != plan.attempt:
            os.close(fd)
            return None
        return fd

    def _copy_range(
        self, conn: Connection, plan: SplitPlan, chunk: int, report, fd: int | None, sink: PartSink | None
    ) -> tuple[int, int]:
        """One range, into the parts `sink` sends, appended to the shared file `fd`, or
        else written to its part file."""
        table, fmt = self.job.table, self.job.format
        path = self.part(plan.attempt, chunk) if sink is None else None
        try:
            with _range_output_of(fd, sink, path) as out:
                # Rows only, without header or trailer; the holder hashes the table's file.
                writer = CountingWriter(
                    out, self.job.settings.progress_every, report, header_records=0, hashed=False
                )
                copy_range(conn, table, plan.query(table, chunk, fmt), writer, fmt)
        except (psycopg2.Error, OSError, VectorBackupError) as exc:
            if path is not None:
                path.unlink(missing_ok=True)
            end_transaction_quietly(conn)
            error = f"{table}: chunk {chunk + 1} of {plan.chunks} failed: {first_line(exc)}"
            self.board.finish(plan.attempt, chunk, {"error": error})
            raise BackupError(error) from exc
        # Before the outcome: the holder, once it has them all, reports its helper thread's rows.
        report(writer.records, writer.bytes)
        self.board.finish(plan.attempt, chunk, {"rows": writer.records, "bytes": writer.bytes})
        return writer.records, writer.bytes


def _range_output_of(fd: int | None, sink: PartSink | None, path: Path | None):
    if sink is not None:
        return contextlib.nullcontext(sink)
    return appender(fd) if fd is not None else open(path, "wb")


def help_from_thread(target: DatabaseTarget, helper: Helper, plan: SplitPlan, copied: dict[str, int]) -> None:
    """The holder's own helper thread. Only the task's own thread may touch its Celery
    state, so this one notes its rows in `copied` and the holder reports them."""
    try:
        conn = connect(target)
    except VectorBackupError:
        return
    try:
        note = helper.job.reporting_to(lambda p: copied.update(rows=p["rows"], bytes=p["bytes"]))
        Helper(note, helper.board).help(conn, plan)
    except (VectorBackupError, redis.RedisError):
        pass  # a failed chunk's outcome carries its error to the holder
    finally:
        conn.close()
