"""The engine's seams: every file goes through a storage and every COPY's options come from a
file format, so a new storage or format is one module. Shown with a storage that is no
directory at all (bytes in memory) carrying a set through backup, manifest, verify,
restore, retention and truncate's checks against real PostgreSQL + pgvector."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import io
import re
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from common.backup import backup_table
from common.config import load_settings
from common.db import server_info
from common.exceptions import ConfigurationError, VerifyError
from common.formats import file_format
from common.manifest import SetRef, verify_set, write_manifest
from common.restore import restore_set
from common.retention import RetentionPolicy, apply_retention
from common.run_result import aggregate_backups, verified_row_counts
from common.split import SplitBoard, SplitJob, merge_parts
from common.storage import FileInfo, UnsafeFile, open_storage
from common.table_job import TableJob
from worker.sample_store import add_awkward_rows, add_bulk_rows, row_texts

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("langchain_pg_collection", "langchain_pg_embedding")


class MemoryStorage:
    """A storage as `common.storage` describes it, holding its files in a dict."""

    location, local_root = "memory://sets", None

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.written: dict[str, float] = {}

    def prepare(self) -> None:
        pass

    @contextlib.contextmanager
    def writer(self, name: str, replace: bool = False):
        if name in self.files and not replace:
            raise FileExistsError(f"{name} already exists")
        out = io.BytesIO()
        yield out
        self.files[name] = out.getvalue()  # published only when the block ends cleanly
        self.written[name] = time.time()

    def open(self, name: str):
        if name not in self.files:
            raise FileNotFoundError(name)
        return io.BytesIO(self.files[name])

    def stat(self, name: str):
        return FileInfo(len(self.files[name]), self.written.get(name, 0.0)) if name in self.files else None

    def opened_info(self, opened) -> FileInfo:
        return FileInfo(len(opened.getbuffer()), 0.0)

    def exists(self, name: str) -> bool:
        return name in self.files

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self.files if fnmatch.fnmatchcase(n, pattern))

    def directories(self) -> list[str]:
        return []

    def present(self) -> bool:
        return bool(self.files)

    def delete(self, name: str) -> None:
        self.files.pop(name, None)

    def pending(self, pattern: str = "*") -> list[str]:
        return []  # a file is published whole when its writer's block ends: nothing is left pending

    def discard_pending(self, pattern: str = "*", older_than_s: float = 0.0) -> list[str]:
        return []

    def append_text(self, name: str, text: str) -> None:
        self.files[name] = self.files.get(name, b"") + text.encode()


def back_up_set(conn, storage, timestamp: str, settings) -> str:
    tables = [backup_table(conn, TableJob(t, storage, timestamp, settings.vector)) for t in TABLES]
    request = {"run_id": timestamp, "task_id": None, "timestamp": timestamp, "truncate_requested": False}
    result = aggregate_backups(request, tables, storage, settings.database.identity)
    assert verified_row_counts(result, TABLES, storage) == {t["table"]: t["row_count"] for t in tables}
    return write_manifest(storage, result, server_info(settings.database))


def test_a_set_in_a_storage_that_is_no_directory_backs_up_verifies_restores_and_expires(store):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 500)
    before = {t: row_texts(store.conn, t) for t in TABLES}
    settings, memory = load_settings(), MemoryStorage()

    first = back_up_set(store.conn, memory, "20250101_000000", settings)
    newest = back_up_set(store.conn, memory, "20250102_000000", settings)
    assert verify_set(SetRef(memory, newest), deep=True)["tables"]["langchain_pg_embedding"]["rows"] == 510

    with store.conn.cursor() as cur:
        cur.execute("DELETE FROM langchain_pg_embedding")
    done = restore_set(store.conn, SetRef(memory, newest), settings=settings)
    assert done["tables"]["langchain_pg_embedding"] == 510
    assert {t: row_texts(store.conn, t) for t in TABLES} == before

    assert apply_retention(memory, RetentionPolicy(keep=1), in_use=lambda stamp: False) == ["20250101_000000"]
    assert not [n for n in memory.names() if "20250101_000000" in n] and first not in memory.files

    memory.files[f"langchain_pg_embedding_{newest[len('manifest_') : -len('.json')]}.csv"] += b"x"
    with pytest.raises(VerifyError, match="does not match its sha256"):
        verify_set(SetRef(memory, newest), deep=False)


def test_range_split_tasks_on_a_storage_that_is_no_directory_copy_the_table_once(store, services):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 300)
    settings, memory, run_id = load_settings(), MemoryStorage(), uuid.uuid4().hex
    vector = dataclasses.replace(settings.vector, split_min_mb=0)
    client = redis.Redis.from_url(services["CELERY_BROKER_URL"])
    job = TableJob("langchain_pg_embedding", memory, "20250103_000000", vector)
    results: list = []
    tasks = [
        threading.Thread(
            target=lambda who=who: results.append(
                SplitJob(settings.database, SplitBoard(client, run_id, job.table, who), job).run()
            )
        )
        for who in ("task-a", "task-b")
    ]
    for task in tasks:
        task.start()
    for task in tasks:
        task.join(60)

    [table] = merge_parts(results)
    assert table["success"] and table["row_count"] == 300, table
    assert sorted(r.get("part", False) for r in results) == [False, True]  # one holder, one idle
    assert memory.names() == [job.file_name]


def test_a_storage_or_format_that_does_not_exist_is_a_clear_configuration_error():
    with pytest.raises(ConfigurationError, match="ftp:// storage is not supported"):
        open_storage("ftp://host/backups")
    with pytest.raises(ConfigurationError, match="no backup file format called 'parquet'"):
        file_format("parquet")
    with pytest.raises(UnsafeFile):
        open_storage("/tmp").stat("../etc/passwd")


# What reaches files and COPY options only through the seams.
THROUGH_SEAMS = ["backup.py", "manifest.py", "restore.py", "retention.py", "run_steps.py"]
THROUGH_SEAMS += ["run_result.py", "backup_log.py", "catalog.py", "copier.py"]
FILESYSTEM = re.compile(
    r"(?<![.\w])(open|atomic_output)\(|\bos\.(open|replace)\(|\.(glob|unlink|iterdir|read_text|mkdir)\("
)


def test_the_engine_reaches_files_only_through_a_storage_and_copy_options_only_through_a_format():
    for name in THROUGH_SEAMS:
        source = (ROOT / "common" / name).read_text(encoding="utf-8")
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))
        found = [m.group(0) for m in FILESYSTEM.finditer(code)]
        assert found == [], f"common/{name}: {found}"
    for path in sorted((ROOT / "common").rglob("*.py")) + sorted((ROOT / "worker").rglob("*.py")):
        if path.parent.name != "formats":
            assert "FORMAT csv" not in path.read_text(encoding="utf-8"), path
