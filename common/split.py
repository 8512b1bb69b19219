"""Range-split backup: one table copied by several processes under one snapshot, into one file.

A single COPY is bound by the one server backend formatting the rows, so the way past
`psql \\copy` is several backends at once. Each of a table's chord header tasks calls
`SplitJob.run`; the roles are decided at run time, so a pool of any size finishes:

- the first task to arrive becomes the holder: it exports its REPEATABLE READ snapshot
  (`pg_export_snapshot`, as `pg_dump -j` does), splits the table into block ranges
  (`ctid`, 8 per worker), and streams the ranges in order into the table's `.csv.tmp`:
  one it has claimed it copies itself, one a helper claimed it appends from the
  helper's part file once finished, hashing as it goes: one file, header once, one
  sha256. Appending is cheap, so the holder starts with a smaller share and also runs
  a helper thread of its own;
- a task arriving while the holder's transaction is open imports the snapshot
  (`SET TRANSACTION SNAPSHOT`) and claims ranges into part files.

Nobody waits for a task that has not started: the holder copies what is unclaimed
itself, so with one pool process it simply does the whole table. The holder waits only
for ranges that running helpers claimed; a helper that stops beating is presumed dead
and the holder, still inside the snapshot, copies its range again. A helper's error
fails the table. A holder that dies is replaced: its redelivered task (or, once its
heartbeat expires, any other task of the table) starts a new attempt from scratch.
The coordination lives in Redis keys of the run, like the run lock.
"""

from __future__ import annotations

import dataclasses
import json
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

from common.backup import (
    ProgressCallback,
    TableBackup,
    TableProgress,
    backup_file_name,
    backup_table,
    copy_query,
    copy_rows,
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

KEY_TTL_S = 24 * 3600  # outlives any run; the keys hold no secret
BEAT_TTL_S = 15.0
BEAT_EVERY_S = 3.0
# Small ranges let the holder append a finished part while helpers copy the next one.
CHUNKS_PER_WORKER = 8
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
    """Keeps Redis keys alive from a thread while this process works (COPY releases the GIL)."""

    def __init__(self, client: redis.Redis, *keys: str) -> None:
        self._client, self._keys = client, list(keys)
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._run, name="split-heartbeat", daemon=True)
        self._thread.start()

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

    def _run(self) -> None:
        while not self._stop.wait(BEAT_EVERY_S):
            self._beat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class SplitBoard:
    """The Redis keys through which one table's tasks share its backup."""

    def __init__(self, client: redis.Redis, run_id: str, table: str, who: str) -> None:
        self.client, self.who = client, who
        self.prefix = f"vector:split:{run_id}:{table}"
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
        return int(self.client.incr(self.key("attempt")))

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


def range_query(table: str, start: int, end: int | None, header: bool) -> sql.Composed:
    condition = sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({start},0)"))
    if end is not None:
        condition = sql.SQL("{} AND ctid < {}::tid").format(condition, sql.Literal(f"({end},0)"))
    source = sql.SQL("(SELECT * FROM {} WHERE {})").format(table_identifier(table), condition)
    return copy_query(source, header)


def part_path(directory: Path, final_name: str, attempt: int, chunk: int, temp_suffix: str) -> Path:
    # The attempt in the name: an earlier attempt's helper may still be writing its part.
    return directory / f"{final_name}.part{attempt}-{chunk}{temp_suffix}"


def remove_parts(directory: Path, timestamp: str, temp_suffix: str) -> None:
    """Drop the part files a set's tasks left (a failed table, a presumed-dead helper)."""
    for leftover in directory.glob(f"*_{timestamp}.csv*.part*{temp_suffix}"):
        leftover.unlink(missing_ok=True)


class Holder:
    """The `ChunkCoordinator` of the task that owns the snapshot and the table's file."""

    def __init__(
        self,
        board: SplitBoard,
        attempt: int,
        workers: int,
        min_bytes: int,
        part: Callable[[int, int], Path],
        on_plan: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.board, self.attempt, self.workers, self.min_bytes = board, attempt, workers, min_bytes
        self.part, self.on_plan = part, on_plan
        self.queries: list[sql.Composed] = []

    def chunk_queries(self, conn: Connection, table: str, whole: sql.Composed) -> list[sql.Composed]:
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
        if chunks == 1:
            self.queries = [whole]
        else:
            self.queries = [range_query(table, s, e, header=i == 0) for i, (s, e) in enumerate(ranges)]
        copiers = self.workers + (self.on_plan is not None)
        plan = {
            "attempt": self.attempt,
            "snapshot": snapshot,
            "ranges": ranges,
            "helpers_from": holder_chunks(chunks, copiers) if chunks > 1 else 1,
            "total_estimate": estimate if estimate > 0 else None,
        }
        self.board.publish(plan)
        if chunks > 1 and self.on_plan is not None:
            self.on_plan(plan)
        return self.queries

    def join(self, copy: Callable[[sql.Composed], int], append_file: Callable[[Path], None]) -> int:
        """Every range after the first, in order: copied here when nobody has claimed it,
        else appended from the part file of the helper that did."""
        rows = 0
        for chunk in range(1, len(self.queries)):
            if self.board.claim(self.attempt, chunk):
                rows += copy(self.queries[chunk])
            else:
                rows += self._take_part(chunk, copy, append_file)
        self.board.close(self.attempt)
        return rows

    def _take_part(self, chunk: int, copy: Callable[[sql.Composed], int], append_file) -> int:
        board, attempt = self.board, self.attempt
        while (outcome := board.outcome(attempt, chunk)) is None:
            if not board.alive(attempt, chunk):
                # A helper finishing writes its outcome and drops its heartbeat at once,
                # so with neither, its process is gone: the snapshot is still ours.
                outcome = board.outcome(attempt, chunk)
                if outcome is None:
                    return copy(self.queries[chunk])
                break
            board.wait_for_finish(attempt, timeout=1.0)
        if "error" in outcome:
            raise BackupError(outcome["error"])
        part = self.part(attempt, chunk)
        append_file(part)
        part.unlink()
        return outcome["rows"]


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
        settings, table = self.settings, self.table
        inner: list[threading.Thread] = []
        inner_copied = {"rows": 0, "bytes": 0}  # the helper thread's share, reported by the holder

        def start_inner(plan: dict[str, Any]) -> None:
            thread = threading.Thread(
                target=self._help_inside, args=(plan, inner_copied), name="split-inner", daemon=True
            )
            thread.start()
            inner.append(thread)

        def report(progress: TableProgress) -> None:
            if self.on_progress is None:
                return
            rows, total = progress["rows"] + inner_copied["rows"], progress["total_estimate"]
            percent = progress["percent"]
            if total and percent != 100.0:
                percent = min(99.9, 100.0 * rows / total)
            copied = progress["bytes"] + inner_copied["bytes"]
            self.on_progress({**progress, "rows": rows, "bytes": copied, "percent": percent})

        min_bytes = int(settings.split_min_mb * 2**20)
        on_plan = start_inner if self.inner_helper else None
        holder = Holder(self.board, attempt, settings.split_workers, min_bytes, self.part, on_plan)
        beat = Heartbeat(self.board.client, self.board.key("holder"))
        try:
            try:
                result = backup_table(
                    conn,
                    table,
                    self.directory,
                    self.timestamp,
                    settings,
                    report,
                    self.fingerprint,
                    self.replace,
                    chunks=holder,
                )
            except VectorBackupError as exc:
                result = _failed(table, self.target.redact(str(exc)), started, part=False)
            except Exception as exc:  # noqa: BLE001 - any surprise is still this table's failure
                error = f"{table}: unexpected {type(exc).__name__}: {first_line(exc)}"
                result = _failed(table, self.target.redact(error), started, part=False)
        finally:
            for thread in inner:  # before the result: no part may appear after the set is closed
                thread.join()
            beat.stop()
        self.board.settle(result)
        return result

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

    def _help(self, conn: Connection, plan: dict[str, Any]) -> tuple[int, int] | None:
        """Claim and copy ranges into part files; None if the snapshot could not be joined."""
        if not import_snapshot(conn, plan["snapshot"]):
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
                records, size = self._copy_part(conn, plan, chunk, report)
                rows, written = rows + records, written + size
            end_snapshot(conn)
        finally:
            if beat is not None:
                beat.stop()
        report(0, 0)
        return rows, written

    def _copy_part(self, conn: Connection, plan: dict[str, Any], chunk: int, report) -> tuple[int, int]:
        board, table, ranges, path = self.board, self.table, plan["ranges"], self.part(plan["attempt"], chunk)
        try:
            with open(path, "wb") as out:
                writer = _PartWriter(out, self.settings.progress_every, report)
                copy_rows(conn, table, range_query(table, *ranges[chunk], header=False), writer, header=False)
        except (psycopg2.Error, OSError, VectorBackupError) as exc:
            path.unlink(missing_ok=True)
            end_transaction_quietly(conn)
            error = f"{table}: chunk {chunk + 1} of {len(ranges)} failed: {first_line(exc)}"
            board.finish(plan["attempt"], chunk, {"error": error})
            raise BackupError(error) from exc
        board.finish(plan["attempt"], chunk, {"rows": writer.records})
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
    return TableBackup(
        table=table,
        success=False,
        part=part,
        row_count=0,
        error=error,
        duration=round(time.time() - started, 3),
        started_at=started,
    )
