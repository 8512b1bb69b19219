"""Range-split across hosts on object storage: workers that share Redis and PostgreSQL but
no directory (each its own `VECTOR_TASK_ROOT`) make one set in S3, every copier uploading
its rows as parts of the table's one multipart upload."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis

from common.config import load_settings
from common.digest import FileDigest, parts_hexdigest
from common.exceptions import VerifyError
from common.manifest import verify_set
from common.split import SplitBoard, SplitJob
from common.storage import open_storage
from common.table_job import TableJob
from tasks.vector_backup import build_vector_workflow
from tests.processes import ROOT, project_env, start_logged
from tests.test_faults import final_state, send_truncate_run
from tests.test_processes import isolated
from tests.test_worker_killed import stop
from worker.sample_store import add_bulk_rows, count_rows, row_texts

EMBEDDING = "langchain_pg_embedding"
TS = "20260101_000000"


def host(tmp_path, name: str, broker: str, **extra: str) -> dict:
    """A machine of its own: its own task root, no directory shared with the others."""
    root = tmp_path / name
    root.mkdir()
    return project_env(
        CELERY_BROKER_URL=broker,
        CELERY_RESULT_BACKEND=broker,
        VECTOR_TASK_ROOT=str(root),
        VECTOR_SPLIT_MIN_MB="0",
        VECTOR_S3_PART_SIZE_MB="5",
        **extra,
    )


def start_host_worker(env: dict, log) -> object:
    argv = ["-m", "celery", "-A", "worker", "worker", "-l", "info", "-c", "1", "-n", f"{log.stem}@%h"]
    return start_logged(argv, log, env, start_new_session=True)


def truncate_run_on_two_hosts(hosts: dict, task_id: str, tmp_path) -> tuple[dict, dict[str, str]]:
    """A truncate run sent from host_c and run by one worker each on host_a and host_b:
    its final state, and each worker's log."""
    workers = [start_host_worker(hosts[name], tmp_path / f"{name}.log") for name in ("host_a", "host_b")]
    try:
        final = final_state(send_truncate_run(hosts["host_c"], task_id, 150), log=tmp_path / "host_a.log")
    finally:
        for worker in workers:
            stop(worker)
    return final, {name: (tmp_path / f"{name}.log").read_text() for name in ("host_a", "host_b")}


@pytest.mark.slow
@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
@pytest.mark.parametrize(
    ("file_format", "compression", "rows", "redis_db"),
    [("csv", "none", 40_000, 12), ("binary", "zstd", 80_000, 13)],
)
def test_two_hosts_without_a_shared_directory_make_one_range_split_set_in_s3(
    store, services, task_id, tmp_path, s3_root, file_format, compression, rows, redis_db
):
    # Random vectors, as real embeddings: compressed, the file still spans several parts.
    add_bulk_rows(store.conn, store.kind, store.collection_id, rows, dim=64, random_vectors=True)
    before = row_texts(store.conn, EMBEDDING)
    broker = isolated(services["CELERY_BROKER_URL"], redis_db)
    settings = dict(VECTOR_BACKUP_FORMAT=file_format, VECTOR_BACKUP_COMPRESSION=compression)
    hosts = {name: host(tmp_path, name, broker, **settings) for name in ("host_a", "host_b", "host_c")}
    final, logs = truncate_run_on_two_hosts(hosts, task_id, tmp_path)
    assert final["state"] == "SUCCESS", (final, logs)
    outcome = final["outcome"]
    directory = f"{s3_root}/{task_id}/vector_bak"
    assert outcome["backup_directory"] == directory and outcome["truncate_performed"]
    assert count_rows(store.conn, EMBEDDING) == 0
    # Both hosts copied rows of the embedding table: one held it, the other helped.
    copied = {name: re.findall(r"'part': True, 'row_count': (\d+)", log) for name, log in logs.items()}
    assert any(int(n) > 0 for rows in copied.values() for n in rows), logs
    assert sum(1 for log in logs.values() if "'part': True" in log) == 1, copied
    for name in ("host_a", "host_b"):
        assert not any((tmp_path / name).iterdir()), f"{name} wrote to its disk"

    entry = outcome["tables_backed_up"][EMBEDDING]
    assert entry["row_count"] == rows and entry["success"]
    manifest = verify_set(f"{directory}/{outcome['manifest']}")
    sizes = manifest["tables"][EMBEDDING]["part_sizes"]
    assert len(sizes) >= 3 and all(size >= 5 << 20 for size in sizes[:-1]), sizes
    storage = load_settings().backup_storage(task_id)
    assert storage.pending() == [] and not [n for n in storage.names() if ".part" in n]

    # A third host, with a root of its own, verifies and restores the set from S3.
    env = hosts["host_c"]
    verified = worker_cli_in(env, "verify", directory)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    restored = worker_cli_in(env, "restore", directory)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert row_texts(store.conn, EMBEDDING) == before


@pytest.mark.slow
@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_two_hosts_without_a_shared_directory_or_object_storage_fail_clearly(
    store, services, task_id, tmp_path, monkeypatch
):
    """The issue's first run: each host its own task root and no VECTOR_STORAGE_URL, so the
    tables' files land on different disks. The set is not called performed, nothing is
    truncated, and the error says what to do."""
    monkeypatch.delenv("VECTOR_STORAGE_URL", raising=False)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 4_000, dim=16)
    broker = isolated(services["CELERY_BROKER_URL"], 14)
    hosts = {name: host(tmp_path, name, broker) for name in ("host_a", "host_b", "host_c")}
    # One copier per table, held up (progress on every row: ~2 ms a row) long enough that
    # the other host takes the other table.
    for env in hosts.values():
        env.update(VECTOR_SPLIT_WORKERS="1", VECTOR_PROGRESS_EVERY="1")
    final, _ = truncate_run_on_two_hosts(hosts, task_id, tmp_path)

    assert final["state"] == "FAILURE", final
    assert "VECTOR_STORAGE_URL" in str(final["outcome"]), final
    assert count_rows(store.conn, EMBEDDING) == 4_000
    wrote = [name for name in ("host_a", "host_b") if any((tmp_path / name).rglob(f"{EMBEDDING}_*"))]
    assert len(wrote) == 1  # the embedding file is on one host's disk only
    assert not list((tmp_path / "host_a").rglob("manifest_*")) + list(
        (tmp_path / "host_b").rglob("manifest_*")
    )


def worker_cli_in(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_changed_byte_in_any_part_of_a_split_object_fails_verify(
    store, task_id, s3_root, monkeypatch, celery_worker_session
):
    """The manifest's hash list covers every part: any changed byte of the object shows."""
    monkeypatch.setenv("VECTOR_SPLIT_MIN_MB", "0")
    monkeypatch.setenv("VECTOR_S3_PART_SIZE_MB", "5")
    add_bulk_rows(store.conn, store.kind, store.collection_id, 40_000, dim=64, random_vectors=True)
    result = build_vector_workflow(task_id, backup=True).apply_async().get(timeout=120)
    storage = load_settings().backup_storage(task_id)
    name = result["tables_backed_up"][EMBEDDING]["backup_file"]
    entry = verify_set(f"{storage.location}/{result['manifest']}")["tables"][EMBEDDING]
    sizes = entry["part_sizes"]
    assert len(sizes) >= 3, sizes
    data = storage.open(name).read()
    assert len(data) == entry["bytes"] == sum(sizes)

    for at in (10, sizes[0] + sizes[1] // 2, len(data) - 3):  # in the first, a middle and the last part
        changed = bytearray(data)
        changed[at] ^= 0x01
        storage.client.put_object(Bucket=storage.bucket, Key=storage.key(name), Body=bytes(changed))
        with pytest.raises(VerifyError, match="does not match its sha256"):
            verify_set(f"{storage.location}/{result['manifest']}", deep=False)
    storage.client.put_object(Bucket=storage.bucket, Key=storage.key(name), Body=data)
    verify_set(f"{storage.location}/{result['manifest']}")


def test_a_file_digest_over_parts_is_the_hash_of_the_parts_digests():
    data = bytes(range(256)) * 40
    sizes = [4000, 5000, 1240]
    parts = [data[:4000], data[4000:9000], data[9000:]]
    expected = parts_hexdigest([hashlib.sha256(p).hexdigest() for p in parts])
    for step in (1, 7, 4096, len(data)):
        digest = FileDigest(sizes)
        for at in range(0, len(data), step):
            digest.update(data[at : at + step])
        assert digest.hexdigest() == expected
    for other in (data + b"x", data[:-1], data[:4000] + data[4001:] + b"x"):
        digest = FileDigest(sizes)
        digest.update(other)
        assert digest.hexdigest() != expected
    plain = FileDigest()
    plain.update(data)
    assert plain.hexdigest() == hashlib.sha256(data).hexdigest()


class TwoCopiers:
    """A holder and a helper of one table's range-split backup into S3, in this process
    (`on_progress` gets each copier's name and progress)."""

    def __init__(self, services, location: str, on_progress) -> None:
        self.client = redis.Redis.from_url(services["CELERY_BROKER_URL"])
        self.location, self.run_id, self.on_progress = location, uuid.uuid4().hex, on_progress
        self.vector = dataclasses.replace(load_settings().vector, split_min_mb=0, progress_every=1000)
        self.holder = self.job("task-a")

    def job(self, who: str) -> SplitJob:
        board = SplitBoard(self.client, self.run_id, EMBEDDING, who)
        table = TableJob(EMBEDDING, self.location, TS, self.vector, lambda p: self.on_progress(who, p))
        return SplitJob(load_settings().database, board, table, inner_helper=False)

    def run(self) -> dict:
        results = {}
        thread = threading.Thread(target=lambda: results.update(holder=self.holder.run()))
        thread.start()
        wait_for(lambda: self.client.get(self.holder.board.key("plan")))
        results["helper"] = self.job("task-b").run()
        thread.join(120)
        return results


@pytest.fixture
def random_rows(store, monkeypatch) -> int:
    """40,000 rows of random vectors: a CSV of several 5 MiB parts."""
    monkeypatch.setenv("VECTOR_S3_PART_SIZE_MB", "5")
    add_bulk_rows(store.conn, store.kind, store.collection_id, 40_000, dim=64, random_vectors=True)
    return count_rows(store.conn, EMBEDDING)


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_holder_whose_own_rows_are_too_few_for_a_first_part_copies_the_table_again_alone(
    random_rows, services, s3_root
):
    """Part 1 holds the header and must reach 5 MiB when helpers sent parts: a holder held
    up while a helper claims every other range aborts the upload and starts over alone."""

    def hold_on(who, progress):
        if who == "task-a" and not copiers.held:
            copiers.held = True
            board = copiers.holder.board
            claimed = [board.key(1, "claim", chunk) for chunk in range(1, board.plan().chunks)]
            wait_for(lambda: all(copiers.client.exists(key) for key in claimed), timeout=60)

    copiers = TwoCopiers(services, f"{s3_root}/head/vector_bak", hold_on)
    copiers.held = False
    results = copiers.run()

    result, rows = results["holder"], random_rows
    assert result["success"] and not result.get("part"), result
    assert result["row_count"] == rows and "part_sizes" not in result  # the single stream's file
    assert results["helper"]["part"] and results["helper"]["row_count"] > rows // 2
    storage = open_storage(copiers.location)
    data = storage.open(result["backup_file"]).read()
    assert hashlib.sha256(data).hexdigest() == result["sha256"]
    assert data.count(b"\n") == rows + 1  # the header line, then one line per row
    assert storage.pending() == []  # the first attempt's upload was aborted
    assert storage.names() == [result["backup_file"]]


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_split_progress_on_s3_counts_each_row_once(random_rows, services, s3_root):
    last = {}
    copiers = TwoCopiers(
        services, f"{s3_root}/progress/vector_bak", lambda who, p: last.update({who: p["rows"]})
    )
    results = copiers.run()

    assert results["holder"]["row_count"] == random_rows and results["holder"]["part_sizes"]
    assert 0 < results["helper"]["row_count"] < random_rows
    assert last["task-a"] + last["task-b"] == random_rows, last
    assert last["task-b"] == results["helper"]["row_count"]


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_helpers_parts_that_go_missing_make_the_holder_copy_alone(
    random_rows, services, s3_root, monkeypatch
):
    """A helper's record that lists fewer rows than its ranges copied (a killed helper's
    stream stood in for by its redelivered, empty one) must never complete the object."""
    real_end = SplitBoard.end_stream

    def loses_its_parts(board, attempt, stream, record):
        if board.who == "task-b" and "parts" in record:
            record = {"parts": [], "tail": None, "rows": 0}
        real_end(board, attempt, stream, record)

    monkeypatch.setattr(SplitBoard, "end_stream", loses_its_parts)
    copiers = TwoCopiers(services, f"{s3_root}/lost/vector_bak", lambda who, p: None)
    results = copiers.run()

    result = results["holder"]
    assert result["success"] and result["row_count"] == random_rows, result
    assert "part_sizes" not in result  # copied again alone, one stream
    assert results["helper"]["row_count"] > 0  # the helper did copy ranges the first time
    storage = open_storage(copiers.location)
    data = storage.open(result["backup_file"]).read()
    assert data.count(b"\n") == random_rows + 1 and hashlib.sha256(data).hexdigest() == result["sha256"]
    assert storage.pending() == []


def wait_for(check, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
