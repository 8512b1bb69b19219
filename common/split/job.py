"""One range-split table's task: whichever role is open to it, and the table's result."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import redis
from psycopg2.extensions import connection as Connection

from common.backup import TableBackup, backup_table, failed_backup, failure_of
from common.db import DatabaseTarget, connect, first_line
from common.exceptions import VectorBackupError
from common.progress import TableProgress, percent
from common.shared_file import appends_safely
from common.split.board import SplitBoard
from common.split.helper import Helper, help_from_thread
from common.split.holder import HelperLost, Holder
from common.split.parts import HeadTooSmall, Uploading
from common.split.plan import SplitPlan
from common.table_job import TableJob


@dataclass
class SplitJob:
    """One of a range-split table's tasks; `run` plays whichever role is open to it."""

    target: DatabaseTarget
    board: SplitBoard
    job: TableJob
    # The holder also copies ranges from a thread of its own: appending parts leaves it
    # time, and a thread waiting on its COPY socket holds no GIL.
    inner_helper: bool = True
    _helper: Helper = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._helper = Helper(self.job, self.board)

    def run(self) -> TableBackup:
        """The table's result if this task held it, else a part result (`part: True`, the
        rows this task copied); `merge_parts` folds them into one result per table."""
        started = time.time()
        try:
            conn = connect(self.target)
        except VectorBackupError as exc:
            return _failed(self.job.table, self.target.redact(str(exc)), started)
        try:
            return self._play(conn, started)
        except VectorBackupError as exc:
            return _failed(self.job.table, self.target.redact(str(exc)), started)
        except redis.RedisError as exc:
            error = f"{self.job.table}: lost the run's Redis while sharing the backup: {first_line(exc)}"
            return _failed(self.job.table, error, started)
        finally:
            conn.close()

    def _play(self, conn: Connection, started: float) -> TableBackup:
        board, table = self.board, self.job.table
        while True:
            settled = board.settled()
            if settled is not None:
                # A redelivered holder hands on the result it settled before it died.
                mine = settled["holder"] == board.who
                return settled["result"] if mine else _part(table, 0, 0, started)
            attempt = board.elect()
            if attempt is not None:
                return self._hold(conn, attempt)
            plan = board.plan()
            if plan is not None:
                if plan.chunks == 1 or board.closed(plan.attempt):
                    return _part(table, 0, 0, started)
                copied = self._helper.help(conn, plan)
                if copied is not None:
                    return _part(table, *copied, started)
            # The holder is publishing its plan, or died and its key has yet to expire.
            time.sleep(0.05)

    def _hold(self, conn: Connection, attempt: int) -> TableBackup:
        inner = _InnerHelper(self.target, self._helper)
        # Ranges are shared through a local directory or an object storage's multipart
        # upload, in a format whose ranges join; otherwise the holder copies alone and
        # the table's other tasks return once it has settled.
        storage = self.job.storage
        shares = self.job.format.can_split and (storage.local_root is not None or hasattr(storage, "upload"))
        holder = self._holder(attempt, inner) if shares else None
        job = self.job.reporting_to(inner.adding_its_rows(self.job.on_progress))
        beat = self.board.holding()
        try:
            try:
                result = self._back_up(conn, job, holder)
            except (HelperLost, HeadTooSmall):
                # A new attempt number first: no helper of the old one may open the new file.
                self.board.new_attempt()
                inner.reset()
                result = self._back_up(conn, job, None)
        finally:
            inner.join()  # before the result: no part may appear after the set is closed
            beat.stop()
        self.board.settle(result)
        return result

    def _holder(self, attempt: int, inner: _InnerHelper) -> Holder:
        settings, root = self.job.settings, self._helper.root
        uploading = direct = None
        if root is None:  # object storage: every copier uploads its own parts
            options = self.job.storage.options
            uploading = Uploading(
                self.board, attempt, settings.compression, options.part_size, options.uploads
            )
        else:
            direct = settings.compression == "none" and appends_safely(root)
        # Appending parts leaves the holder time for a helper thread; copying directly or
        # uploading does not.
        return Holder(
            self.board,
            attempt,
            settings.split_workers,
            int(settings.split_min_mb * 2**20),
            part=self._helper.part,
            direct=bool(direct),
            fmt=self.job.format,
            on_plan=inner.start if self.inner_helper and direct is False else None,
            uploading=uploading,
        )

    def _back_up(self, conn: Connection, job: TableJob, holder: Holder | None) -> TableBackup:
        """The table's backup, a failed result on any error but a lost helper."""
        started = time.time()
        try:
            return backup_table(conn, job, holder)
        except (HelperLost, HeadTooSmall):
            raise
        except Exception as exc:  # noqa: BLE001 - any surprise is still this table's failure
            return {**failure_of(self.target, job.table, exc, started), "part": False}


class _InnerHelper:
    """The holder's helper thread and the rows it copied, which the holder reports."""

    def __init__(self, target: DatabaseTarget, helper: Helper) -> None:
        self.target, self.helper = target, helper
        self.threads: list[threading.Thread] = []
        self.copied = {"rows": 0, "bytes": 0}

    def start(self, plan: SplitPlan) -> None:
        args = (self.target, self.helper, plan, self.copied)
        thread = threading.Thread(target=help_from_thread, args=args, name="split-inner", daemon=True)
        thread.start()
        self.threads.append(thread)

    def reset(self) -> None:
        self.copied = {"rows": 0, "bytes": 0}  # a new dict: the old thread may still write

    def join(self) -> None:
        for thread in self.threads:
            thread.join()

    def adding_its_rows(self, on_progress):
        if on_progress is None:
            return None

        def report(progress: TableProgress) -> None:
            rows = progress["rows"] + self.copied["rows"]
            share = percent(rows, progress["total_estimate"], done=progress["percent"] == 100.0)
            written = progress["bytes"] + self.copied["bytes"]
            on_progress({**progress, "rows": rows, "bytes": written, "percent": share})

        return report


def merge_parts(tables: list[TableBackup]) -> list[TableBackup]:
    """One result per table from a chord header that may hold several tasks per table.

    The holder's result stands for its table. Without one (its task was lost and never
    redelivered), the table failed: a helper's error if there is one, else a lost holder.
    """
    merged: dict[str, TableBackup] = {}
    for name in dict.fromkeys(t["table"] for t in tables):
        entries = [t for t in tables if t["table"] == name]
        whole = [t for t in entries if not t.get("part")]
        errors = [t for t in entries if not t.get("success")]
        if whole:
            merged[name] = whole[0]
        elif errors:
            merged[name] = {**errors[0], "part": False}
        else:
            lost = f"{name}: the task holding its range-split backup was lost; run the backup again"
            merged[name] = _failed(name, lost, min(t["started_at"] for t in entries), part=False)
    return list(merged.values())


def _part(table: str, rows: int, written: int, started: float) -> TableBackup:
    return TableBackup(
        table=table,
        success=True,
        part=True,
        row_count=rows,
        csv_bytes=written,
        duration=round(time.time() - started, 3),
        started_at=started,
    )


def _failed(table: str, error: str, started: float, part: bool = True) -> TableBackup:
    return TableBackup(**failed_backup(table, error, started), part=part)
