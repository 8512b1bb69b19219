"""Range-split backup: one table copied by several processes under one snapshot, into one file.

A single COPY is bound by the one server backend formatting the rows, so the way past
`psql \\copy` is several backends at once. Each of a table's chord header tasks calls
`SplitJob.run`; the roles are decided at run time, so a pool of any size finishes:

- the first task to arrive becomes the holder: it exports its REPEATABLE READ snapshot
  (`pg_export_snapshot`, as `pg_dump -j` does), writes the header to the table's
  `.csv.tmp`, splits the table into block ranges (`ctid`, 16 per worker) and copies
  every range nobody has claimed yet;
- a task arriving while the holder's transaction is open imports the snapshot
  (`SET TRANSACTION SNAPSHOT`) and claims ranges too.

Every copier appends its ranges to the one file itself (`common.shared_file`): rows in
whole blocks, ranges in the order they finish, one sha256 read behind the writers. Where
appends are not atomic (a network filesystem) or the file is compressed (one stream
through one compressor), helpers write part files instead, which the holder appends in
range order, and the holder, which then has time to spare, runs a helper thread too.

Nobody waits for a task that has not started: the holder copies what is unclaimed
itself, so with one pool process it simply does the whole table. The holder waits only
for ranges that running helpers claimed. A helper's error fails the table. A helper
that stops beating is presumed dead: a part file it left is never read and the holder
copies its range again; blocks it may have appended cannot be told apart, so the holder
drops the file and starts over alone. A holder that dies is replaced: its redelivered
task (or, once its heartbeat expires, any other task of the table) starts a new attempt
from scratch. The coordination lives in Redis keys of the run, like the run lock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import redis
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from common import run_keys
from common.atomic import temp_path
from common.backup import (
    CountingWriter,
    ProgressCallback,
    TableBackup,
    backup_file_name,
    backup_table,
    copy_query,
    copy_rows,
    failed_backup,
    header_query,
)
from common.config import VectorTableManagement
from common.db import (
    DatabaseTarget,
    connect,
    end_snapshot,
    end_transaction_quietly,
    first_line,
    table_identifier,
)
from common.exceptions import BackupError, VectorBackupError
from common.periodic import Periodic
from common.progress import TableProgress, percent
from common.shared_file import (
    TailHasher,
    append_from,
    appender,
    appends_safely,
    identity,
    open_for_appending,
)

KEY_TTL_S = 24 * 3600  # outlives any run; the keys hold no secret
BEAT_TTL_S = 15.0
BEAT_EVERY_S = 3.0
# Small ranges: the copiers finish within a range of each other, and the holder appends
# a helper's part while the helpers copy the next one.
CHUNKS_PER_WORKER = 16
# Appending a helper's part (read, sha256, write) costs the holder 0.3-0.7 of what
# copying the same rows costs (measured with `make bench`'s tables).
APPEND_COST = 0.4


CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
    redis.call('SET', KEYS[2], 1, 'EX', ARGV[3])
    return 1
end
return 0
"""


class Heartbeat:
    """Keeps Redis keys alive from a thread while this process works."""

    def __init__(self, client: redis.Redis, *keys: str) -> None:
        self._client, self._keys = client, list(keys)
        self._beat()
        self._periodic = Periodic(self._beat, BEAT_EVERY_S, "split-heartbeat")

    def add(self, key: str) -> None:
        self._keys.append(key)
        self._beat()

    def _beat(self) -> None:
        try:
            with self._client.pipeline() as pipe:
                for key in self._keys:
                    pipe.set(key, 1, ex=int(BEAT_TTL_S))
                pipe.execute()
        except redis.RedisError:
            pass  # a missed beat only makes the others presume this process dead: safe

    def stop(self) -> None:
        self._periodic.stop()


class SplitBoard:
    """The Redis keys through which one table's tasks share its backup."""

    def __init__(self, client: redis.Redis, run_id: str, table: str, who: str) -> None:
        self.client, self.who = client, who
        self.prefix = run_keys.split(run_id, table)
        self._claim = client.register_script(CLAIM)

    def key(self, *parts: Any) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    def elect(self) -> int | None:
        """A new attempt number if this task is now the holder, else None.

        The holder's key expires unless beaten; a redelivered holder finds its own name.
        """
        holder = self.key("holder")
        if not self.client.set(holder, self.who, nx=True, ex=int(BEAT_TTL_S)):
            current = self.client.get(holder)
            if current is None or current.decode() != self.who:
                return None
            self.client.set(holder, self.who, ex=int(BEAT_TTL_S))
        return self.new_attempt()

    def new_attempt(self) -> int:
        return int(self.client.incr(self.key("attempt")))

    def attempt(self) -> int:
        return int(self.client.get(self.key("attempt")) or 0)

    def publish(self, plan: dict[str, Any]) -> None:
        self.client.set(self.key("plan"), json.dumps(plan), ex=KEY_TTL_S)

    def plan(self) -> dict[str, Any] | None:
        raw = self.client.get(self.key("plan"))
        return json.loads(raw) if raw else None

    def claim(self, attempt: int, chunk: int) -> bool:
        # One script, so the holder never sees a claimed range without its heartbeat.
        keys = [self.key(attempt, "claim", chunk), self.key(attempt, "alive", chunk)]
        return bool(self._claim(keys=keys, args=[self.who, KEY_TTL_S, int(BEAT_TTL_S)]))

    def alive(self, attempt: int, chunk: int) -> bool:
        return bool(self.client.exists(self.key(attempt, "alive", chunk)))

    def close(self, attempt: int) -> None:
        """Every range is claimed: a task arriving now has nothing to do."""
        self.client.set(self.key(attempt, "closed"), 1, ex=KEY_TTL_S)

    def closed(self, attempt: int) -> bool:
        return bool(self.client.exists(self.key(attempt, "closed")))

    def finish(self, attempt: int, chunk: int, outcome: dict[str, Any]) -> None:
        with self.client.pipeline() as pipe:
            pipe.set(self.key(attempt, "done", chunk), json.dumps(outcome), ex=KEY_TTL_S)
            pipe.rpush(self.key(attempt, "finished"), chunk)
            pipe.expire(self.key(attempt, "finished"), KEY_TTL_S)
            pipe.delete(self.key(attempt, "alive", chunk))
            pipe.execute()

    def wait_for_finish(self, attempt: int, timeout: float) -> None:
        """Until any chunk of the attempt finishes, or `timeout`: the holder's wake-up."""
        self.client.blpop([self.key(attempt, "finished")], timeout=timeout)

    def outcome(self, attempt: int, chunk: int) -> dict[str, Any] | None:
        raw = self.client.get(self.key(attempt, "done", chunk))
        return json.loads(raw) if raw else None

    def settle(self, result: TableBackup) -> None:
        """The table's result, success or failure: every later task of the table returns."""
        self.client.set(self.key("result"), json.dumps({"holder": self.who, "result": result}), ex=KEY_TTL_S)

    def settled(self) -> dict[str, Any] | None:
        raw = self.client.get(self.key("result"))
        return json.loads(raw) if raw else None


def holder_chunks(chunks: int, workers: int) -> int:
    """How many of the first ranges the holder copies before helpers start on theirs.

    Besides its own ranges the holder appends every helper's part, so it takes a smaller
    share (3/8 with two workers) and the tasks finish together; whoever runs ahead
    claims the other's ranges anyway.
    """
    helpers = workers - 1
    share = max(0.0, (1 - APPEND_COST * helpers) / (workers - APPEND_COST * helpers))
    return min(chunks - 1, max(1, round(chunks * share)))


def block_ranges(blocks: int, chunks: int) -> list[tuple[int, int | None]]:
    """`chunks` ranges of block numbers [start, end); the last one is open-ended."""
    bounds = [blocks * i // chunks for i in range(chunks)]
    return [(start, bounds[i + 1] if i + 1 < chunks else None) for i, start in enumerate(bounds)]


def range_query(table: str, start: int, end: int | None) -> sql.Composed:
    condition = sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({start},0)"))
    if end is not None:
        condition = sql.SQL("{} AND ctid < {}::tid").format(condition, sql.Literal(f"({end},0)"))
    source = sql.SQL("(SELECT * FROM {} WHERE {})").format(table_identifier(table), condition)
    return copy_query(source, header=False)


def part_path(directory: Path, final_name: str, attempt: int, chunk: int, temp_suffix: str) -> Path:
    # The attempt in the name: an earlier attempt's helper may still be writing its part.
    return directory / f"{final_name}.part{attempt}-{chunk}{temp_suffix}"


def remove_parts(directory: Path, timestamp: str, temp_suffix: str) -> None:
    """Drop the part files a set's tasks left (a failed table, a presumed-dead helper)."""
    for leftover in directory.glob(f"*_{timestamp}.csv*.part*{temp_suffix}"):
        leftover.unlink(missing_ok=True)


class HelperLost(BackupError):
    """A helper appending to the table's file stopped beating. Which of the file's blocks
    are its own cannot be told, so the file is dropped and the holder starts over."""


class Holder:
    """The `ChunkCoordinator` of the task that owns the snapshot and the table's file.

    `direct`: every copier appends its rows to the table's file itself
    (`common.shared_file`); otherwise (a compressed file, one stream through one
    compressor) helpers write part files that the holder appends in order.
    """

    def __init__(
        self,
        board: SplitBoard,
        attempt: int,
        workers: int,
        min_bytes: int,
        part: Callable[[int, int], Path],
        direct: bool,
        on_plan: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.board, self.attempt, self.workers, self.min_bytes = board, attempt, workers, min_bytes
        self.part, self.direct, self.on_plan = part, direct, on_plan
        self.queries: list[sql.Composed] = []

    def copy(self, conn: Connection, table: str, whole: sql.Composed, writer: CountingWriter) -> int:
        plan = self._plan(conn, table)
        if len(self.queries) == 1:
            self.board.publish(plan)  # helpers arriving now have nothing to do
            return copy_rows(conn, table, whole, writer, header=True)

        def copy(query: sql.Composed) -> int:
            return copy_rows(conn, table, query, writer, header=False)

        if not self.direct:
            rows = copy_rows(conn, table, header_query(table), writer, header=True)
            self._publish(plan)
            return rows + copy(self.queries[0]) + self._join_parts(copy, writer.append_file)
        out = writer.out  # the table's file, written whole rows at a time (`appender`)
        out.flush()
        append_from(out.fileno())
        writer.hash_elsewhere()
        tail = TailHasher(out.fileno())
        try:
            rows = copy_rows(conn, table, header_query(table), writer, header=True)
            out.flush()  # the header first, before any helper may append
            self._publish({**plan, "file": identity(out.fileno())})
            rows += self._join_direct(copy, out.flush, writer.count_shared)
            writer.sha256 = tail.finish()
        finally:
            tail.stop()
        if tail.size != writer.bytes:
            raise BackupError(f"{table}: the file holds {tail.size} bytes, its chunks wrote {writer.bytes}")
        return rows

    def _plan(self, conn: Connection, table: str) -> dict[str, Any]:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT c.relkind, c.reltuples::bigint, pg_table_size(c.oid), "
                "pg_relation_size(c.oid) / current_setting('block_size')::int, pg_export_snapshot() "
                "FROM pg_class c WHERE c.oid = to_regclass(%s)",
                (table_identifier(table).as_string(conn),),
            )
            row = cur.fetchone()
        # A missing table is one chunk: its COPY raises the usual clear error.
        relkind, estimate, size, blocks, snapshot = row or ("", 0, 0, 0, None)
        chunks = self.workers * CHUNKS_PER_WORKER
        if relkind != "r" or size < self.min_bytes or blocks < chunks:
            chunks = 1
        ranges = block_ranges(blocks, chunks)
        self.queries = [range_query(table, start, end) for start, end in ranges]
        copiers = self.workers + (self.on_plan is not None)
        share = max(1, chunks // copiers) if self.direct else holder_chunks(chunks, copiers)
        return {
            "attempt": self.attempt,
            "snapshot": snapshot,
            "ranges": ranges,
            "helpers_from": share if chunks > 1 else 1,
            "total_estimate": estimate if estimate > 0 else None,
        }

    def _publish(self, plan: dict[str, Any]) -> None:
        self.board.publish(plan)
        if self.on_plan is not None:
            self.on_plan(plan)

    def _join_direct(
        self, copy: Callable[[sql.Composed], int], flush: Callable[[], None], count_shared
    ) -> int:
        """Copy every range nobody has claimed (in any order: the file does not keep one),
        then wait for the helpers' ranges."""
        rows, mine = copy(self.queries[0]), {0}
        for chunk in range(1, len(self.queries)):
            if self.board.claim(self.attempt, chunk):
                rows += copy(self.queries[chunk])
                mine.add(chunk)
        flush()
        self.board.close(self.attempt)
        for chunk in range(len(self.queries)):
            if chunk in mine:
                continue
            outcome = self._wait_for(chunk)
            if outcome is None:
                raise HelperLost(f"the helper copying chunk {chunk + 1} of {len(self.queries)} stopped")
            count_shared(outcome["bytes"])
            rows += outcome["rows"]
        return rows

    def _join_parts(self, copy: Callable[[sql.Composed], int], append_file: Callable[[Path], None]) -> int:
        """Every range after the first, in order: copied here when nobody has claimed it,
        else appended from the part file of the helper that did."""
        rows = 0
        for chunk in range(1, len(self.queries)):
            if self.board.claim(self.attempt, chunk):
                rows += copy(self.queries[chunk])
                continue
            outcome = self._wait_for(chunk)
            if outcome is None:  # its part file is never read: the snapshot is still ours
                rows += copy(self.queries[chunk])
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


class _PartWriter:
    """Counts a part's rows (one `write` per row, as in `common.backup`) and reports them."""

    def __init__(self, out, every: int, report: Callable[[int, int], None]) -> None:
        self._write, self._every, self._report = out.write, every, report
        self.records = self.bytes = 0
        self._next = every

    def write(self, data: bytes) -> None:
        self._write(data)
        self.records += 1
        self.bytes += len(data)
        if self.records == self._next:
            self._next += self._every
            self._report(self.records, self.bytes)


def import_snapshot(conn: Connection, snapshot: str) -> bool:
    """Join the holder's snapshot; False once its transaction has ended."""
    try:
        with conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
        return True
    except psycopg2.Error:
        end_transaction_quietly(conn)
        return False


@dataclass
class SplitJob:
    """One of a range-split table's tasks; `run` plays whichever role is open to it."""

    target: DatabaseTarget
    board: SplitBoard
    table: str
    directory: Path
    timestamp: str
    settings: VectorTableManagement
    on_progress: ProgressCallback | None = None
    fingerprint: bool = False
    replace: bool = False
    # The holder also copies ranges from a thread of its own: appending parts leaves it
    # time, and a thread waiting on its COPY socket holds no GIL.
    inner_helper: bool = True

    def part(self, attempt: int, chunk: int) -> Path:
        final_name = backup_file_name(self.table, self.timestamp, self.settings.compression)
        return part_path(self.directory, final_name, attempt, chunk, self.settings.backup_temp_suffix)

    def run(self) -> TableBackup:
        """The table's result if this task held it, else a part result (`part: True`, the
        rows this task copied); `merge_parts` folds them into one result per table."""
        started = time.time()
        try:
            conn = connect(self.target)
        except VectorBackupError as exc:
            return _failed(self.table, self.target.redact(str(exc)), started)
        try:
            return self._play(conn, started)
        except VectorBackupError as exc:
            return _failed(self.table, self.target.redact(str(exc)), started)
        except redis.RedisError as exc:
            error = f"{self.table}: lost the run's Redis while sharing the backup: {first_line(exc)}"
            return _failed(self.table, error, started)
        finally:
            conn.close()

    def _play(self, conn: Connection, started: float) -> TableBackup:
        board = self.board
        while True:
            settled = board.settled()
            if settled is not None:
                # A redelivered holder hands on the result it settled before it died.
                mine = settled["holder"] == board.who
                return settled["result"] if mine else _part(self.table, 0, 0, started)
            attempt = board.elect()
            if attempt is not None:
                return self._hold(conn, attempt, started)
            plan = board.plan()
            if plan is not None:
                if len(plan["ranges"]) == 1 or board.closed(plan["attempt"]):
                    return _part(self.table, 0, 0, started)
                rows = self._help(conn, plan)
                if rows is not None:
                    return _part(self.table, *rows, started)
            # The holder is publishing its plan, or died and its key has yet to expire.
            time.sleep(0.05)

    def _hold(self, conn: Connection, attempt: int, started: float) -> TableBackup:
        settings = self.settings
        inner: list[threading.Thread] = []
        # The helper thread's share, which the holder reports; a new dict when starting over.
        shares = {"inner": {"rows": 0, "bytes": 0}}

        def start_inner(plan: dict[str, Any]) -> None:
            args = (plan, shares["inner"])
            thread = threading.Thread(target=self._help_inside, args=args, name="split-inner", daemon=True)
            thread.start()
            inner.append(thread)

        def report(progress: TableProgress) -> None:
            if self.on_progress is None:
                return
            copied = shares["inner"]
            rows, total = progress["rows"] + copied["rows"], progress["total_estimate"]
            share = percent(rows, total, done=progress["percent"] == 100.0)
            written = progress["bytes"] + copied["bytes"]
            self.on_progress({**progress, "rows": rows, "bytes": written, "percent": share})

        min_bytes = int(settings.split_min_mb * 2**20)
        direct = settings.compression == "none" and appends_safely(self.directory)
        # Appending parts leaves the holder time for a helper thread; copying directly does not.
        on_plan = start_inner if self.inner_helper and not direct else None
        holder = Holder(self.board, attempt, settings.split_workers, min_bytes, self.part, direct, on_plan)
        beat = Heartbeat(self.board.client, self.board.key("holder"))
        try:
            try:
                result = self._back_up(conn, report, holder, started)
            except HelperLost:
                # A new attempt number first: no helper of the old one may open the new file.
                self.board.new_attempt()
                shares["inner"] = {"rows": 0, "bytes": 0}
                result = self._back_up(conn, report, None, started)
        finally:
            for thread in inner:  # before the result: no part may appear after the set is closed
                thread.join()
            beat.stop()
        self.board.settle(result)
        return result

    def _back_up(self, conn: Connection, report, chunks: Holder | None, started: float) -> TableBackup:
        """The table's backup, a failed result on any error but a lost helper."""
        table = self.table
        try:
            return backup_table(
                conn,
                table,
                self.directory,
                self.timestamp,
                self.settings,
                report,
                self.fingerprint,
                self.replace,
                chunks=chunks,
            )
        except HelperLost:
            raise
        except VectorBackupError as exc:
            return _failed(table, self.target.redact(str(exc)), started, part=False)
        except Exception as exc:  # noqa: BLE001 - any surprise is still this table's failure
            error = f"{table}: unexpected {type(exc).__name__}: {first_line(exc)}"
            return _failed(table, self.target.redact(error), started, part=False)

    def _help_inside(self, plan: dict[str, Any], copied: dict[str, int]) -> None:
        try:
            conn = connect(self.target)
        except VectorBackupError:
            return
        try:
            # Only the task's own thread may touch its Celery state: the holder reports these.
            note = lambda progress: copied.update(rows=progress["rows"], bytes=progress["bytes"])  # noqa: E731
            dataclasses.replace(self, on_progress=note)._help(conn, plan)
        except (VectorBackupError, redis.RedisError):
            pass  # a failed chunk's outcome carries its error to the holder
        finally:
            conn.close()

    def _shared_file(self, plan: dict[str, Any]) -> int | None:
        """An appending descriptor on the holder's file, if it is still this attempt's."""
        final = self.directory / backup_file_name(self.table, self.timestamp, self.settings.compression)
        fd = open_for_appending(temp_path(final, self.settings.backup_temp_suffix), plan["file"])
        # The file may be a later attempt's only if that attempt was counted before it.
        if fd is not None and self.board.attempt() != plan["attempt"]:
            os.close(fd)
            return None
        return fd

    def _help(self, conn: Connection, plan: dict[str, Any]) -> tuple[int, int] | None:
        """Claim and copy ranges, into the holder's file or part files; None if the
        snapshot could not be joined or the file is no longer this attempt's."""
        if "file" in plan and not appends_safely(self.directory):
            return 0, 0  # this host sees the file on a network filesystem: the holder copies
        if not import_snapshot(conn, plan["snapshot"]):
            return None
        fd = None
        if "file" in plan and (fd := self._shared_file(plan)) is None:
            end_transaction_quietly(conn)
            return None
        board, table, attempt, ranges = self.board, self.table, plan["attempt"], plan["ranges"]
        rows = written = 0

        def report(chunk_rows: int, chunk_bytes: int) -> None:
            if self.on_progress is not None:
                self.on_progress(
                    TableProgress(
                        table=table,
                        step="copying a chunk",
                        rows=rows + chunk_rows,
                        total_estimate=plan.get("total_estimate"),
                        bytes=written + chunk_bytes,
                        percent=None,
                    )
                )

        beat = None
        try:
            start = plan["helpers_from"]
            for chunk in [*range(start, len(ranges)), *range(1, start)]:
                if not board.claim(attempt, chunk):
                    continue
                beat = beat or Heartbeat(board.client)
                beat.add(board.key(attempt, "alive", chunk))
                records, size = self._copy_part(conn, plan, chunk, report, fd)
                rows, written = rows + records, written + size
            end_snapshot(conn)
        finally:
            if beat is not None:
                beat.stop()
            if fd is not None:
                os.close(fd)
        return rows, written

    def _copy_part(
        self, conn: Connection, plan: dict[str, Any], chunk: int, report, fd: int | None
    ) -> tuple[int, int]:
        """One range, appended to the shared file `fd` or else written to its part file."""
        board, table, ranges, path = self.board, self.table, plan["ranges"], self.part(plan["attempt"], chunk)
        query = range_query(table, *ranges[chunk])
        try:
            with appender(fd) if fd is not None else open(path, "wb") as out:
                writer = _PartWriter(out, self.settings.progress_every, report)
                copy_rows(conn, table, query, writer, header=False)
        except (psycopg2.Error, OSError, VectorBackupError) as exc:
            path.unlink(missing_ok=True)
            end_transaction_quietly(conn)
            error = f"{table}: chunk {chunk + 1} of {len(ranges)} failed: {first_line(exc)}"
            board.finish(plan["attempt"], chunk, {"error": error})
            raise BackupError(error) from exc
        # Before the outcome: the holder, once it has them all, reports its helper thread's rows.
        report(writer.records, writer.bytes)
        board.finish(plan["attempt"], chunk, {"rows": writer.records, "bytes": writer.bytes})
        return writer.records, writer.bytes


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
