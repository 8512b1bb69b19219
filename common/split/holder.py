"""The holder: the task that owns the snapshot and the table's file, and joins the ranges."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from common.copier import (
    CountingWriter,
    Report,
    copy_header,
    copy_range,
    copy_rows,
    file_output,
    not_hashed,
)
from common.exceptions import BackupError
from common.shared_file import TailHasher, append_from, identity
from common.split.board import SplitBoard
from common.split.parts import Uploading, from_record
from common.split.plan import SplitPlan, make_plan
from common.storage.s3_upload import SentPart

READ_BLOCK = 1 << 20


class HelperLost(BackupError):
    """A helper appending to the table's file stopped beating. Which of the file's blocks
    are its own cannot be told, so the file is dropped and the holder starts over."""


class HolderWriter(CountingWriter):
    """A `CountingWriter` that also takes in rows other processes copied."""

    def __init__(self, out: BinaryIO, every: int, report: Report, fmt: Any) -> None:
        super().__init__(out, every, report, fmt.header_records, trailer_records=fmt.trailer_records)
        self.appended = 0  # of `bytes`, what other processes copied

    def joining(self) -> None:
        """The file is joined from ranges: from here on only rows are counted, and its
        header and trailer are written by `frame`."""
        self.header_records = self.trailer_records = 0
        self._next_report = self.records + self._every

    @property
    def own_bytes(self) -> int:
        return self.bytes - self.appended

    def hash_elsewhere(self) -> None:
        """Rows are no longer hashed here: they go to a file other processes append to
        (`common.shared_file`), which is hashed whole, and its owner sets `sha256`."""
        self._hash = not_hashed

    def count_shared(self, size: int) -> None:
        """Another writer's finished chunk of the shared file; a progress report follows."""
        self.bytes += size
        self.appended += size
        self._report(self.rows, self.own_bytes)

    def append_file(self, path: Path) -> None:
        """Rows another process copied and counted (a part file), appended in order; a
        progress report follows, as the holder may have been waiting for it."""
        with open(path, "rb") as part:
            while block := part.read(READ_BLOCK):
                self._write(block)
                self._hash(block)
                self.bytes += len(block)
                self.appended += len(block)
        self._report(self.rows, self.own_bytes)


class Holder:
    """The holder's `Copier`.

    `direct`: every copier appends its rows to the table's file itself
    (`common.shared_file`); otherwise (a compressed file, one stream through one
    compressor) helpers write part files that the holder appends in range order.
    `uploading`: the file is in object storage, and every copier uploads its rows as
    parts of its multipart upload (`common.split.parts`).
    `on_plan` starts the holder's own helper thread once the plan is out.
    """

    step = "copying in chunks"

    def __init__(
        self,
        board: SplitBoard,
        attempt: int,
        workers: int,
        min_bytes: int,
        *,
        part: Callable[[int, int], Path],
        direct: bool,
        fmt: Any,
        on_plan: Callable[[SplitPlan], None] | None = None,
        uploading: Uploading | None = None,
    ) -> None:
        self.board, self.attempt, self.workers, self.min_bytes = board, attempt, workers, min_bytes
        self.part, self.direct, self.on_plan, self.fmt = part, direct, on_plan, fmt
        self.uploading = uploading

    def output(self, job: Any) -> contextlib.AbstractContextManager[tuple[BinaryIO, Any]]:
        return self.uploading.output(job) if self.uploading else file_output(job)

    def writer(self, sink: BinaryIO, every: int, report: Report, fmt: Any) -> HolderWriter:
        return HolderWriter(sink, every, report, fmt)

    def copy(self, conn: Connection, table: str, whole: sql.Composed, writer: HolderWriter) -> int:
        copiers = self.workers + (self.on_plan is not None)
        shared = self.direct or self.uploading is not None
        plan = make_plan(conn, table, self.attempt, self.workers, self.min_bytes, copiers, shared)
        if plan.chunks == 1:
            self.board.publish(plan)  # helpers arriving now have nothing to do
            rows = copy_rows(conn, table, whole, writer)
            if self.uploading:
                self.uploading.finish(writer, [], b"")
            return rows

        def copy(chunk: int) -> int:
            return copy_range(conn, table, plan.query(table, chunk, self.fmt), writer, self.fmt)

        # One header and one trailer (the format's) around the rows of every range.
        writer.joining()
        if self.uploading:
            return self._copy_uploading(conn, table, plan, copy, writer)
        if not self.direct:
            copy_header(conn, table, writer, self.fmt)
            self._publish(plan)
            rows = copy(0) + self._join_parts(plan, copy, writer.append_file)
            writer.frame(self.fmt.trailer)
            return rows
        return self._copy_direct(conn, table, plan, copy, writer)

    def _copy_direct(self, conn: Connection, table: str, plan: SplitPlan, copy, writer: HolderWriter) -> int:
        out = writer.out  # the table's file, written whole rows at a time (`appender`)
        out.flush()
        append_from(out.fileno())
        writer.hash_elsewhere()
        tail = TailHasher(out.fileno())
        try:
            copy_header(conn, table, writer, self.fmt)
            out.flush()  # the header first, before any helper may append
            self._publish(plan.sharing(identity(out.fileno())))
            rows = self._join_direct(plan, copy, out.flush, writer.count_shared)
            writer.frame(self.fmt.trailer)  # last: every helper's rows are in the file
            out.flush()
            writer.sha256 = tail.finish()
        finally:
            tail.stop()
        if tail.size != writer.bytes:
            raise BackupError(f"{table}: the file holds {tail.size} bytes, its chunks wrote {writer.bytes}")
        return rows

    def _copy_uploading(
        self, conn: Connection, table: str, plan: SplitPlan, copy, writer: HolderWriter
    ) -> int:
        uploading = self.uploading
        copy_header(conn, table, writer, self.fmt)
        self._publish(plan.uploading(uploading.upload_id))
        rows = self._join_direct(plan, copy, writer.out.flush, writer.count_shared)
        parts, tails, streamed = self._streams()
        if streamed != rows - writer.rows:
            # The helpers' ranges hold rows their parts do not: a stream went missing.
            raise HelperLost(f"the helpers' parts hold {streamed} rows, their ranges {rows - writer.rows}")
        uploading.digest.joined = bool(parts or tails)
        for tail in tails:
            uploading.add_tail(tail)
        uploading.finish(writer, parts, self.fmt.trailer)
        return rows

    def _streams(self) -> tuple[list[SentPart], list[str], int]:
        """The parts and leftover objects of every helper that uploaded, once each is done,
        and the rows they hold."""
        board, attempt = self.board, self.attempt
        parts, tails, rows = [], [], 0
        for stream in board.streams(attempt):
            while (record := board.stream(attempt, stream)) is None:
                if not board.stream_alive(attempt, stream):
                    record = board.stream(attempt, stream)
                    if record is None:
                        raise HelperLost("a helper uploading parts stopped")
                    break
                board.wait_for_finish(attempt, timeout=1.0)
            if "error" in record:
                raise BackupError(record["error"])
            parts += from_record(record["parts"])
            tails += [record["tail"]] if record.get("tail") else []
            rows += int(record.get("rows", 0))
        return parts, tails, rows

    def _publish(self, plan: SplitPlan) -> None:
        self.board.publish(plan)
        if self.on_plan is not None:
            self.on_plan(plan)

    def _join_direct(
        self, plan: SplitPlan, copy: Callable[[int], int], flush: Callable[[], None], count_shared
    ) -> int:
        """Copy every range nobody has claimed (in any order: the file does not keep one),
        then wait for the helpers' ranges."""
        rows, mine = copy(0), {0}
        for chunk in range(1, plan.chunks):
            if self.board.claim(self.attempt, chunk):
                rows += copy(chunk)
                mine.add(chunk)
        flush()
        self.board.close(self.attempt)
        for chunk in range(plan.chunks):
            if chunk in mine:
                continue
            outcome = self._wait_for(chunk)
            if outcome is None:
                raise HelperLost(f"the helper copying chunk {chunk + 1} of {plan.chunks} stopped")
            count_shared(outcome["bytes"])
            rows += outcome["rows"]
        return rows

    def _join_parts(
        self, plan: SplitPlan, copy: Callable[[int], int], append_file: Callable[[Path], None]
    ) -> int:
        """Every range after the first, in order: copied here when nobody has claimed it,
        else appended from the part file of the helper that did."""
        rows = 0
        for chunk in range(1, plan.chunks):
            if self.board.claim(self.attempt, chunk):
                rows += copy(chunk)
                continue
            outcome = self._wait_for(chunk)
            if outcome is None:  # its part file is never read: the snapshot is still ours
                rows += copy(chunk)
                continue
            part = self.part(self.attempt, chunk)
            append_file(part)
            part.unlink()
            rows += outcome["rows"]
        self.board.close(self.attempt)
        return rows

    def _wait_for(self, chunk: int) -> dict[str, Any] | None:
        """The outcome of a range a helper claimed; None if the helper is gone."""
        board, attempt = self.board, self.attempt
        while (outcome := board.outcome(attempt, chunk)) is None:
            if not board.alive(attempt, chunk):
                # A helper finishing writes its outcome and drops its heartbeat at once,
                # so with neither, its process is gone.
                outcome = board.outcome(attempt, chunk)
                if outcome is None:
                    return None
                break
            board.wait_for_finish(attempt, timeout=1.0)
        if "error" in outcome:
            raise BackupError(outcome["error"])
        return outcome
