"""Manifests written by the chain, `python -m worker verify`, and truncate's use of it."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from common.exceptions import TruncateRefusedError
from tasks.pipeline import enqueue_vector_management, run_record, run_result
from tasks.vector_backup import truncate_vector_tables
from tests.processes import worker_cli
from tests.runs import backup_half_of_truncate_run
from worker.sample_store import add_awkward_rows, add_bulk_rows, count_rows

pytestmark = pytest.mark.usefixtures("celery_worker_session")
TIMEOUT = 60


def verify(path: Path) -> subprocess.CompletedProcess:
    return worker_cli("verify", str(path), timeout=60)


@pytest.fixture
def backup_set(store, task_id):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 500)
    answer = enqueue_vector_management(task_id, backup=True)
    result = run_result(run_record(answer["run_id"])).get(timeout=TIMEOUT)
    return result, Path(result["backup_directory"])


def test_manifest_describes_the_set(backup_set, store):
    result, directory = backup_set
    manifest = json.loads((directory / f"manifest_{result['timestamp']}.json").read_text())

    assert manifest["format_version"] == 2 and manifest["run_id"] == result["run_id"]
    assert manifest["server"]["server_version"] and manifest["server"]["pgvector_version"]
    assert "password" not in json.dumps(manifest["database"])
    entry = manifest["tables"]["langchain_pg_embedding"]
    data = (directory / entry["file"]).read_bytes()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert entry["rows"] == count_rows(store.conn, "langchain_pg_embedding")
    assert ["embedding", "vector"] in entry["columns"]
    # The table described as data, never as SQL text.
    assert "ddl" not in entry
    assert {"name": "embedding", "type": "vector", "not_null": False} in entry["schema"]["columns"]
    key = entry["schema"]["foreign_keys"][0]
    assert key["columns"] == ["collection_id"] and key["references"] == "langchain_pg_collection"
    assert key["ref_columns"] == ["uuid"] and key["on_delete"] == "CASCADE"


def test_verify_accepts_an_intact_set_by_directory_or_manifest(backup_set):
    result, directory = backup_set
    for path in (directory, directory / f"manifest_{result['timestamp']}.json"):
        done = verify(path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "✓ langchain_pg_embedding: 510 rows" in done.stdout


def flip_last_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-2] = ord("X") if data[-2] != ord("X") else ord("Y")
    file.write_bytes(bytes(data))


def test_a_same_size_corruption_fails_verify_and_blocks_truncate(store, task_id):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 500)
    result = backup_half_of_truncate_run(task_id)
    directory = Path(result["backup_directory"])
    flip_last_byte(directory / result["tables_backed_up"]["langchain_pg_embedding"]["backup_file"])

    done = verify(directory)
    assert done.returncode == 1 and "does not match its sha256" in done.stdout

    with pytest.raises(TruncateRefusedError, match=r"does not verify: .*sha256"):
        truncate_vector_tables.delay(result).get(timeout=TIMEOUT)
    assert count_rows(store.conn, "langchain_pg_embedding") == 510


def test_truncated_csv_and_corrupt_manifest_are_refused(backup_set):
    result, directory = backup_set
    file = directory / result["tables_backed_up"]["langchain_pg_embedding"]["backup_file"]
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    done = verify(directory)
    assert done.returncode == 1 and "rows, the manifest says 510" in done.stdout

    (directory / f"manifest_{result['timestamp']}.json").write_text("{not json")
    done = verify(directory)
    assert done.returncode == 1 and "unreadable manifest" in done.stdout
    assert verify(directory / "nowhere").returncode == 1
