"""Range-split backup (`common.split`) against real PostgreSQL and Redis: one table copied
by several tasks under one exported snapshot into one file, equal row for row to the
single-stream backup, appended to directly or through part files; a pool of one process
finishes alone; a failed chunk fails the table; a dead helper's range is copied again,
or the file started over when it may hold the helper's blocks; a redelivered holder
starts over; a binary table joined into one `.pgcopy` with one header and one trailer;
and the whole chain through a real `celery -A worker worker -c 2`, in CSV and binary."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import os
import re
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
import redis

from common.backup import backup_table
from common.compression import decompressing
from common.config import VectorTableManagement, load_settings
from common.copier import RowsOnly
from common.exceptions import BackupError
from common.export import export_csv
from common.formats import file_format
from common.manifest import verify_set, write_manifest
from common.pgbinary import HEADER, SIGNATURE, TRAILER, read_tuples
from common.restore import restore_set
from common.run_result import aggregate_backups
from common.split import SplitBoard, SplitJob, SplitPlan, holder_chunks, merge_parts, remove_parts
from common.split import helper as split_helper
from common.split import job as split_job
from common.storage import open_storage
from common.table_job import TableJob
from tests.processes import worker_cli
from tests.test_faults import final_state, send_truncate_run, worker_env
from tests.test_processes import isolated
from tests.test_worker_killed import start_worker, stop
from worker.sample_store import add_awkward_rows, add_bulk_rows, count_rows, row_texts

EMBEDDING = "langchain_pg_embedding"
COLLECTION = "langchain_pg_collection"
TS = "20260101_000000"
REQUEST = {"run_id": "r", "task_id": None, "timestamp": TS, "truncate_requested": False}


class Died(BaseException):
    """Stands for a SIGKILL: escapes every handler, as a killed process would."""


def split_settings(**changes):
    changes = {"split_min_mb": 0, "progress_every": 1000, **changes}
    return dataclasses.replace(load_settings().vector, **changes)


def make_job(
    services, directory: Path, run_id: str, who: str, vector, on_progress=None, inner_helper=True
) -> SplitJob:
    client = redis.Redis.from_url(services["CELERY_BROKER_URL"])
    board = SplitBoard(client, run_id, EMBEDDING, who)
    target = load_settings().database
    return SplitJob(
        target, board, TableJob(EMBEDDING, directory, TS, vector, on_progress), inner_helper=inner_helper
    )


def records(path: Path) -> list[list[str]]:
    with open(path, "rb") as raw, io.TextIOWrapper(decompressing(raw, path.name), "utf-8", newline="") as f:
        return list(csv.reader(f))


def assert_rows_of_a_single_stream(conn, split_file: Path, directory: Path, vector) -> None:
    single = backup_table(conn, TableJob(EMBEDDING, directory, TS, vector))
    assert sorted(records(split_file)[1:]) == sorted(records(directory / single["backup_file"])[1:])


def wait_for(check, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def run_in_thread(job: SplitJob) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(job.run()))
    thread.start()
    return thread, out


@contextlib.contextmanager
def watching_for_parts(directory: Path):
    """The names of the part files that appeared in `directory` while the block ran."""
    seen: set[str] = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.update(p.name for p in directory.iterdir() if ".part" in p.name)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()


@pytest.fixture
def filled(store):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 30_000, dim=64)
    return store


def holder_waiting_for_a_helper(services, directory, run_id, vector):
    """A holder that, at its first progress report, waits until a helper claimed its first range."""
    waited = []

    def hold_on(progress):
        if not waited:
            waited.append(True)
            key = holder.board.key(1, "claim", holder.board.plan().helpers_from)
            wait_for(lambda: client.exists(key))

    client = redis.Redis.from_url(services["CELERY_BROKER_URL"])
    holder = make_job(services, directory, run_id, "task-a", vector, hold_on, inner_helper=False)
    thread, out = run_in_thread(holder)
    wait_for(lambda: client.get(holder.board.key("plan")))
    return thread, out


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_a_split_backup_is_one_file_equal_row_for_row_to_a_single_stream_backup(
    filled, services, tmp_path, compression
):
    vector, run_id = split_settings(compression=compression), uuid.uuid4().hex
    with watching_for_parts(tmp_path / "split") as parts:
        holder_thread, held = holder_waiting_for_a_helper(services, tmp_path / "split", run_id, vector)
        helped = make_job(services, tmp_path / "split", run_id, "task-b", vector).run()
        holder_thread.join(60)
    [table] = merge_parts([held[0], helped])
    single = backup_table(filled.conn, TableJob(EMBEDDING, tmp_path / "single", TS, vector))

    assert table["success"] and not table.get("part"), table
    assert helped["part"] and helped["success"] and helped["row_count"] > 0, helped
    total = count_rows(filled.conn, EMBEDDING)
    assert table["row_count"] == single["row_count"] == total
    path = tmp_path / "split" / table["backup_file"]
    split_rows, single_rows = records(path), records(tmp_path / "single" / single["backup_file"])
    assert split_rows[0] == single_rows[0] and split_rows[0] not in split_rows[1:]  # header once
    assert sorted(split_rows[1:]) == sorted(single_rows[1:])
    assert table["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert table["file_size_bytes"] == path.stat().st_size
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == [path.name]
    # Uncompressed, the helper appended to the table's file itself; compressed, through parts.
    assert bool(parts) == (compression != "none"), parts


def csv_records(data: bytes) -> list[bytes]:
    """A CSV file's records as written, each with its line end (a quoted value may hold
    line breaks: a record ends where its quotes are balanced)."""
    records, pending = [], b""
    for line in data.splitlines(keepends=True):
        pending += line
        if pending.count(b'"') % 2 == 0:
            records.append(pending)
            pending = b""
    assert not pending
    return records


def decompressed(path: Path) -> bytes:
    with open(path, "rb") as raw, decompressing(raw, path.name) as stream:
        return stream.read()


@pytest.fixture
def narrow(store):
    """Rows enough for 32 ranges, with vectors short enough for `export-csv`'s pace."""
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 8_000, dim=8)
    return store


@pytest.mark.parametrize("compression", ["none", "zstd", "gzip"])
def test_a_split_binary_backup_is_one_pgcopy_file_with_one_header_and_one_trailer(
    narrow, services, tmp_path, compression
):
    vector = split_settings(file_format="binary", compression=compression, progress_every=500)
    run_id, directory = uuid.uuid4().hex, tmp_path / "set"
    before = {t: row_texts(narrow.conn, t) for t in (COLLECTION, EMBEDDING)}
    with watching_for_parts(directory) as parts:
        holder_thread, held = holder_waiting_for_a_helper(services, directory, run_id, vector)
        helped = make_job(services, directory, run_id, "task-b", vector).run()
        holder_thread.join(60)
    [table] = merge_parts([held[0], helped])

    assert table["success"] and not table.get("part") and table["format"] == "binary", table
    assert helped["part"] and helped["success"] and helped["row_count"] > 0, helped  # two copiers
    assert table["row_count"] == count_rows(narrow.conn, EMBEDDING)
    path = directory / table["backup_file"]
    assert path.name == f"{EMBEDDING}_{TS}.pgcopy" + {"none": "", "zstd": ".zst", "gzip": ".gz"}[compression]
    assert sorted(p.name for p in directory.iterdir()) == [path.name]
    assert table["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert table["file_size_bytes"] == path.stat().st_size
    # Uncompressed, the helper appended to the table's file itself; compressed, through parts.
    assert bool(parts) == (compression != "none"), parts
    data = decompressed(path)
    assert data.startswith(HEADER) and data.count(SIGNATURE) == 1 and data.endswith(TRAILER)
    if compression != "none":
        assert table["csv_sha256"] == hashlib.sha256(data).hexdigest() and table["csv_bytes"] == len(data)
    # Every tuple whole, the trailer once and last.
    assert sum(1 for _ in read_tuples(io.BytesIO(data), len(table["columns"]))) == table["row_count"]

    storage = open_storage(directory)
    collection = backup_table(narrow.conn, TableJob(COLLECTION, storage, TS, vector))
    name = write_manifest(storage, aggregate_backups(REQUEST, [collection, table], storage, {}), {})
    assert verify_set(directory / name, deep=True)["tables"][EMBEDDING]["rows"] == table["row_count"]

    plain = backup_table(narrow.conn, TableJob(EMBEDDING, tmp_path / "csv", TS, VectorTableManagement()))
    export_csv(directory / name, tmp_path / "exported")
    exported = csv_records((tmp_path / "exported" / f"{EMBEDDING}_{TS}.csv").read_bytes())
    expected = csv_records((tmp_path / "csv" / plain["backup_file"]).read_bytes())
    # Rows come in the order their ranges were written, each byte for byte a CSV backup's.
    assert exported[0] == expected[0] and sorted(exported[1:]) == sorted(expected[1:])

    with narrow.conn.cursor() as cur:
        cur.execute(f"DELETE FROM {EMBEDDING}")
    restore_set(narrow.conn, directory / name)
    assert {t: row_texts(narrow.conn, t) for t in (COLLECTION, EMBEDDING)} == before


def test_a_split_binary_backups_progress_counts_each_row_once_and_no_header_or_trailer(
    narrow, services, tmp_path
):
    vector, reports = split_settings(file_format="binary", progress_every=500), []
    job = make_job(services, tmp_path, uuid.uuid4().hex, "task-a", vector, reports.append, inner_helper=False)
    table = job.run()

    total = count_rows(narrow.conn, EMBEDDING)
    assert table["success"] and table["row_count"] == total, table
    assert job.board.plan().chunks == 32  # each range's COPY sent its own header and trailer
    assert [r["rows"] for r in reports] == [*range(500, total + 1, 500), total]
    assert reports[-1]["percent"] == 100.0


def test_a_ranges_rows_reach_the_file_without_its_header_and_trailer_each_row_in_one_write():
    fmt = file_format("binary")
    row = b"\x00\x01\x00\x00\x00\x02hi"

    def rows_of(*messages: bytes) -> list[bytes]:
        written: list[bytes] = []
        copy = RowsOnly(written.append, fmt.range_header, fmt.trailer)
        for message in messages:
            copy.write(message)
        copy.close()
        return written

    # The header comes glued to the first row, the trailer alone; no row: both in one.
    assert rows_of(HEADER + row, row, TRAILER) == [row, row]
    assert rows_of(HEADER + TRAILER) == []
    with pytest.raises(BackupError, match="did not start with the format's header"):
        rows_of(row, TRAILER)
    with pytest.raises(BackupError, match="did not end with the format's trailer"):
        rows_of(HEADER + row)


def test_one_pool_process_does_the_whole_table_alone_and_later_tasks_have_nothing_to_do(
    filled, services, tmp_path
):
    vector, run_id = split_settings(split_workers=3), uuid.uuid4().hex
    first = make_job(services, tmp_path, run_id, "task-a", vector).run()
    later = [make_job(services, tmp_path, run_id, f"task-{n}", vector).run() for n in "bc"]

    assert first["success"] and not first.get("part"), first
    assert first["row_count"] == count_rows(filled.conn, EMBEDDING)
    assert all(p["part"] and p["success"] and p["row_count"] == 0 for p in later), later
    assert merge_parts([*later, first]) == [first]


def test_a_holder_appending_parts_copies_ranges_from_a_thread_of_its_own_meanwhile(
    filled, services, tmp_path, monkeypatch
):
    vector, run_id = split_settings(compression="zstd"), uuid.uuid4().hex
    seen, reports = [], []
    end_snapshot = split_helper.end_snapshot

    def late_end(conn):  # the thread, done with its chunks, lags behind the holder's last report
        if threading.current_thread().name == "split-inner":
            time.sleep(2)
        end_snapshot(conn)

    monkeypatch.setattr(split_helper, "end_snapshot", late_end)

    def first_report(progress):
        if not seen:  # the holder stands still here; only its own helper thread can write parts
            wait_for(lambda: any(".part" in p.name for p in tmp_path.iterdir()))
            seen.append(True)
        reports.append(progress)

    table = make_job(services, tmp_path, run_id, "task-a", vector, first_report).run()

    assert seen and table["success"] and table["row_count"] == count_rows(filled.conn, EMBEDDING), table
    # Its progress counts the thread's rows too: exact at the end, never going back.
    rows = [r["rows"] for r in reports]
    assert rows == sorted(rows) and rows[-1] == table["row_count"] and reports[-1]["percent"] == 100.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [table["backup_file"]]
    assert_rows_of_a_single_stream(filled.conn, tmp_path / table["backup_file"], tmp_path / "single", vector)


def test_a_failed_chunk_fails_the_table_and_leaves_nothing(filled, services, tmp_path):
    vector, run_id = split_settings(progress_every=100), uuid.uuid4().hex  # a report inside a chunk

    def disk_full(progress):
        raise OSError(28, "No space left on device")

    holder_thread, held = holder_waiting_for_a_helper(services, tmp_path, run_id, vector)
    helped = make_job(services, tmp_path, run_id, "task-b", vector, disk_full).run()
    holder_thread.join(60)
    [table] = merge_parts([helped, held[0]])

    plan = SplitBoard(redis.Redis.from_url(services["CELERY_BROKER_URL"]), run_id, EMBEDDING, "").plan()
    chunk, chunks = plan.helpers_from + 1, len(plan.ranges)
    message = f"{EMBEDDING}: chunk {chunk} of {chunks} failed: [Errno 28] No space left on device"
    assert not helped["success"] and message in helped["error"]
    assert not table["success"] and message in table["error"] and not table["part"], table
    assert list(tmp_path.iterdir()) == []


def test_the_holder_takes_the_smaller_share_because_it_also_appends_the_helpers_parts():
    assert holder_chunks(16, 2) == 6  # 3/8 of the table, then 10 parts to append
    assert holder_chunks(24, 3) == 2
    assert holder_chunks(32, 4) == 1  # appending is all it has time for


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_a_dead_helpers_range_is_copied_by_the_holder(filled, services, tmp_path, compression):
    vector, run_id = split_settings(compression=compression), uuid.uuid4().hex
    client = redis.Redis.from_url(services["CELERY_BROKER_URL"])
    ghost = SplitBoard(client, run_id, EMBEDDING, "ghost")

    last = []

    def a_helper_claims_the_last_range_and_dies(progress):
        last.append(len(ghost.plan().ranges) - 1)
        if ghost.claim(1, last[0]):
            client.delete(ghost.key(1, "alive", last[0]))  # no heartbeat: its process is gone

    started = time.monotonic()
    dies = a_helper_claims_the_last_range_and_dies
    table = make_job(services, tmp_path, run_id, "task-a", vector, dies, inner_helper=False).run()

    assert client.get(ghost.key(1, "claim", last[0])) == b"ghost"
    assert table["success"] and table["row_count"] == count_rows(filled.conn, EMBEDDING), table
    assert time.monotonic() - started < 15
    # Its part file would never have been read; blocks it might have appended could not be
    # told apart, so that file was dropped and a second attempt copied the table alone.
    assert ghost.attempt() == (2 if compression == "none" else 1)
    assert_rows_of_a_single_stream(filled.conn, tmp_path / table["backup_file"], tmp_path / "single", vector)


def test_a_helper_that_dies_after_appending_leaves_none_of_its_rows_in_the_file(filled, services, tmp_path):
    vector, run_id = split_settings(), uuid.uuid4().hex
    client = redis.Redis.from_url(services["CELERY_BROKER_URL"])
    ghost = SplitBoard(client, run_id, EMBEDDING, "ghost")

    def a_helper_appends_two_rows_and_dies(progress):
        plan = ghost.plan()
        last = len(plan.ranges) - 1
        if plan.attempt == 1 and ghost.claim(1, last):
            fd = holder._helper.shared_file(plan)  # opened as a helper opens it
            os.write(fd, b"ghost row one\nghost row two\n")
            os.close(fd)
            client.delete(ghost.key(1, "alive", last))

    holder = make_job(services, tmp_path, run_id, "task-a", vector, a_helper_appends_two_rows_and_dies)
    table = holder.run()

    assert table["success"] and table["row_count"] == count_rows(filled.conn, EMBEDDING), table
    assert ghost.attempt() == 2  # the file was dropped and the table copied again
    path = tmp_path / table["backup_file"]
    assert b"ghost" not in path.read_bytes()
    assert table["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert_rows_of_a_single_stream(filled.conn, path, tmp_path / "single", vector)


def test_bytes_appended_by_anyone_but_the_copiers_fail_the_table(filled, services, tmp_path):
    vector, run_id = split_settings(), uuid.uuid4().hex
    appended = []

    def a_stranger_appends(progress):
        if not appended:
            fd = holder._helper.shared_file(holder.board.plan())
            appended.append(os.write(fd, b"stray,row\n"))
            os.close(fd)

    holder = make_job(services, tmp_path, run_id, "task-a", vector, a_stranger_appends)
    table = holder.run()

    assert appended and not table["success"], table
    assert re.search(r"the file holds (\d+) bytes, its chunks wrote (\d+)", table["error"]), table
    assert list(tmp_path.iterdir()) == []


def test_a_helper_appends_only_to_the_file_of_the_attempt_whose_snapshot_it_joined(services, tmp_path):
    vector, run_id = split_settings(), uuid.uuid4().hex
    helper = make_job(services, tmp_path, run_id, "task-b", vector)
    temp = tmp_path / (f"{EMBEDDING}_{TS}.csv" + vector.backup_temp_suffix)
    temp.write_bytes(b"header\n")
    other = tmp_path / "other"
    other.write_bytes(b"")
    stat = temp.stat()
    plan = SplitPlan(helper.board.new_attempt(), None, [(0, None)], 1, None, [stat.st_dev, stat.st_ino])
    shared_file = helper._helper.shared_file

    fd = shared_file(plan)
    assert fd is not None
    os.close(fd)
    assert shared_file(plan.sharing([other.stat().st_dev, other.stat().st_ino])) is None
    helper.board.new_attempt()  # a later attempt may have put its own file under the name
    assert shared_file(plan) is None
    temp.unlink()
    assert shared_file(dataclasses.replace(plan, attempt=helper.board.attempt())) is None


def test_on_a_network_filesystem_the_helpers_write_part_files(filled, services, tmp_path, monkeypatch):
    for module in (split_helper, split_job):
        monkeypatch.setattr(module, "appends_safely", lambda directory: False)
    vector, run_id = split_settings(), uuid.uuid4().hex
    with watching_for_parts(tmp_path) as parts:
        holder_thread, held = holder_waiting_for_a_helper(services, tmp_path, run_id, vector)
        helped = make_job(services, tmp_path, run_id, "task-b", vector).run()
        holder_thread.join(60)
    [table] = merge_parts([held[0], helped])

    assert parts and helped["row_count"] > 0, (parts, helped)
    assert table["success"] and table["row_count"] == count_rows(filled.conn, EMBEDDING), table
    assert_rows_of_a_single_stream(filled.conn, tmp_path / table["backup_file"], tmp_path / "single", vector)


def test_a_helper_that_sees_the_file_on_a_network_filesystem_leaves_the_ranges_to_the_holder(
    filled, services, tmp_path, monkeypatch
):
    for module in (split_helper, split_job):
        monkeypatch.setattr(module, "appends_safely", lambda d: threading.current_thread().name != "remote")
    vector, run_id = split_settings(), uuid.uuid4().hex
    helped = []

    def run_the_remote_helper(progress):
        if not helped:
            remote = threading.Thread(target=lambda: helped.append(helper.run()), name="remote")
            remote.start()
            remote.join(30)

    holder = make_job(services, tmp_path, run_id, "task-a", vector, run_the_remote_helper)
    helper = make_job(services, tmp_path, run_id, "task-b", vector)
    table = holder.run()

    assert helped[0]["part"] and helped[0]["success"] and helped[0]["row_count"] == 0, helped
    assert table["success"] and table["row_count"] == count_rows(filled.conn, EMBEDDING), table
    client = holder.board.client
    assert not [k for k in client.keys(holder.board.key(1, "claim", "*")) if client.get(k) == b"task-b"]


def test_a_redelivered_holder_starts_a_new_attempt_and_finishes(filled, services, tmp_path):
    vector, run_id = split_settings(), uuid.uuid4().hex

    def die(progress):
        raise Died

    with pytest.raises(Died):
        make_job(services, tmp_path, run_id, "task-a", vector, die).run()
    again = make_job(services, tmp_path, run_id, "task-a", vector).run()  # same task id: redelivered
    helper = make_job(services, tmp_path, run_id, "task-b", vector).run()

    assert again["success"] and again["row_count"] == count_rows(filled.conn, EMBEDDING), again
    assert helper["part"] and helper["row_count"] == 0
    # The dead attempt's parts are never appended; closing the set (the chord body) drops them.
    assert all(".part1-" in p.name for p in tmp_path.iterdir() if p.name != again["backup_file"])
    remove_parts(open_storage(tmp_path), TS, vector.backup_temp_suffix)
    assert sorted(p.name for p in tmp_path.iterdir()) == [again["backup_file"]]


WORKER_ROWS = 200_000


def split_worker_env(store, services, db: int) -> dict:
    """The store filled with WORKER_ROWS, and a real worker's environment (its own Redis
    database) in which the embedding table is split whatever its size."""
    add_bulk_rows(store.conn, store.kind, store.collection_id, WORKER_ROWS, dim=64)
    return {**worker_env(isolated(services["CELERY_BROKER_URL"], db)), "VECTOR_SPLIT_MIN_MB": "0"}


def assert_truncated_after_a_verified_set(store, directory: Path, final: dict, rows: int) -> None:
    assert final["state"] == "SUCCESS", final
    manifest = verify_set(directory / final["outcome"]["manifest"])
    assert manifest["tables"][EMBEDDING]["rows"] == rows
    assert count_rows(store.conn, EMBEDDING) == 0
    assert not [p for p in directory.iterdir() if ".part" in p.name or p.name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_truncate_run_with_a_range_split_table_through_a_real_worker(
    store, services, task_id, task_root, tmp_path
):
    rows, env = WORKER_ROWS, split_worker_env(store, services, 8)
    worker = start_worker(env, tmp_path / "worker.log")  # two pool processes
    try:
        final = final_state(send_truncate_run(env, task_id, 120))
        pool = psutil.Process(worker.pid).children()
    finally:
        stop(worker)

    assert len(pool) == 2
    assert_truncated_after_a_verified_set(store, task_root / task_id / "vector_bak", final, rows)
    log = (tmp_path / "worker.log").read_text()
    assert log.count("succeeded in") >= 3
    # The second pool process copied a range of its own.
    assert re.search(r"'part': True, 'row_count': [1-9]", log), log[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
@pytest.mark.parametrize(("compression", "redis_db"), [("none", 10), ("zstd", 11)])
def test_a_binary_truncate_run_with_a_range_split_table_through_a_real_worker_restores_every_row(
    store, services, task_id, task_root, tmp_path, compression, redis_db
):
    rows = WORKER_ROWS
    env = {
        **split_worker_env(store, services, redis_db),
        "VECTOR_BACKUP_FORMAT": "binary",
        "VECTOR_BACKUP_COMPRESSION": compression,
    }
    before = row_texts(store.conn, EMBEDDING)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        final = final_state(send_truncate_run(env, task_id, 120), log=tmp_path / "worker.log")
        pool = psutil.Process(worker.pid).children()
    finally:
        stop(worker)

    assert len(pool) == 2
    directory = task_root / task_id / "vector_bak"
    assert_truncated_after_a_verified_set(store, directory, final, rows)
    [path] = directory.glob(f"{EMBEDDING}_*")
    assert path.name.endswith(".pgcopy" + {"none": "", "zstd": ".zst"}[compression])
    data = decompressed(path)
    assert data.startswith(HEADER) and data.count(SIGNATURE) == 1 and data.endswith(TRAILER)
    log = (tmp_path / "worker.log").read_text()
    assert re.search(r"'part': True, 'row_count': [1-9]", log), log[-3000:]  # both copied ranges

    restored = worker_cli("restore", str(directory))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert row_texts(store.conn, EMBEDDING) == before


def appending_helper(pool: list[psutil.Process], directory: Path) -> psutil.Process | None:
    """The pool process that appends to the table's `.csv.tmp` without owning it: the
    holder opened it read-write when creating it, a helper opens it write-only."""
    for process in pool:
        try:
            files = process.open_files()
        except psutil.Error:
            continue
        mine = [f for f in files if f.path.startswith(str(directory)) and f.path.endswith(".csv.tmp")]
        if mine and all(f.mode == "a" for f in mine):
            return process
    return None


@pytest.mark.slow
@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_helper_process_killed_while_appending_through_a_real_worker_loses_no_row(
    store, services, task_id, task_root, tmp_path
):
    rows, env = WORKER_ROWS, split_worker_env(store, services, 9)
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        client = send_truncate_run(env, task_id, 150)
        directory = task_root / task_id / "vector_bak"
        deadline, helper = time.monotonic() + 60, None
        while helper is None and time.monotonic() < deadline:
            helper = appending_helper(psutil.Process(worker.pid).children(), directory)
        assert helper is not None, "no pool process was seen appending to the table's file"
        # Killed once it has appended a block of a range (not between opening the file and
        # claiming one), while the table is far from done.
        started = helper.io_counters().write_chars
        while helper.io_counters().write_chars - started < 2**20 and time.monotonic() < deadline:
            time.sleep(0.001)
        written = sum(p.stat().st_size for p in directory.glob(f"{EMBEDDING}_*.csv.tmp"))
        helper.kill()
        assert written < 60 * 2**20, f"the helper was caught late ({written} bytes of about 120 MB written)"
        final = final_state(client, log=log)
    finally:
        stop(worker)

    assert "exited with 'signal 9 (SIGKILL)'" in log.read_text()
    assert_truncated_after_a_verified_set(store, directory, final, rows)
    # The holder saw its helper stop, dropped the file with the helper's blocks, started over.
    attempt = redis.Redis.from_url(env["CELERY_BROKER_URL"]).get(
        f"vector:split:{final['outcome']['run_id']}:{EMBEDDING}:attempt"
    )
    assert int(attempt) >= 2
