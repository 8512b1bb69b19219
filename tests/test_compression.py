"""Compressed backups (zstd, gzip): streamed, verified, restored and downloaded as files."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
from pathlib import Path

import pytest
import zstandard

from common.backup import backup_table
from common.config import VectorTableManagement
from common.table_job import TableJob
from tasks.pipeline import enqueue_vector_management, run_record, run_result
from tests.processes import worker_cli
from worker.api import create_app
from worker.celery_app import release_pending_results
from worker.sample_store import add_awkward_rows, add_bulk_rows, count_rows, row_texts

MAGIC = {"zstd": b"\x28\xb5\x2f\xfd", "gzip": b"\x1f\x8b"}
DECOMPRESS = {"zstd": lambda b: zstandard.ZstdDecompressor().stream_reader(b).read(), "gzip": gzip.decompress}
TS = "20250720_121007"


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_a_compressed_backup_holds_exactly_the_plain_csv(store, tmp_path, compression):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 3_000)
    plain = backup_table(
        store.conn, TableJob("langchain_pg_embedding", tmp_path / "plain", TS, VectorTableManagement())
    )
    packed = backup_table(
        store.conn,
        TableJob(
            "langchain_pg_embedding", tmp_path / "packed", TS, VectorTableManagement(compression=compression)
        ),
    )

    data = (tmp_path / "packed" / packed["backup_file"]).read_bytes()
    csv_bytes = (tmp_path / "plain" / plain["backup_file"]).read_bytes()
    assert packed["backup_file"].endswith({"zstd": ".csv.zst", "gzip": ".csv.gz"}[compression])
    assert data.startswith(MAGIC[compression]) and len(data) < len(csv_bytes) / 2
    assert DECOMPRESS[compression](data) == csv_bytes
    assert packed["sha256"] == hashlib.sha256(data).hexdigest() and packed["file_size_bytes"] == len(data)
    assert packed["csv_sha256"] == plain["sha256"] and packed["csv_bytes"] == len(csv_bytes)
    assert packed["row_count"] == plain["row_count"] == 3_010


def test_an_unknown_compression_is_a_configuration_error():
    with pytest.raises(Exception, match="VECTOR_BACKUP_COMPRESSION must be one of none, zstd, gzip"):
        VectorTableManagement(compression="lz4")


@pytest.mark.usefixtures("celery_worker_session")
@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_chain_verify_download_and_restore_of_a_compressed_set(
    store, task_id, task_root, monkeypatch, compression
):
    monkeypatch.setenv("VECTOR_BACKUP_COMPRESSION", compression)
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 2_000)
    before = row_texts(store.conn, "langchain_pg_embedding")
    answer = enqueue_vector_management(task_id, truncate=True)
    result = run_result(run_record(answer["run_id"])).get(timeout=60)
    assert result["truncate_performed"] and count_rows(store.conn, "langchain_pg_embedding") == 0
    directory = Path(result["backup_directory"])

    verified = worker_cli("verify", str(directory))
    assert verified.returncode == 0 and "2,010 rows" in verified.stdout, verified.stdout

    (task_root / task_id).mkdir(exist_ok=True)
    web = create_app().test_client()
    name = result["tables_backed_up"]["langchain_pg_embedding"]["backup_file"]
    download = web.get(f"/api/v0/data_pipeline/vector/backups/{task_id}~{result['timestamp']}/files/{name}")
    release_pending_results()
    assert download.status_code == 200 and download.data == (directory / name).read_bytes()

    restored = worker_cli("restore", str(directory))
    assert restored.returncode == 0, restored.stdout
    assert row_texts(store.conn, "langchain_pg_embedding") == before


@pytest.mark.usefixtures("celery_worker_session")
def test_a_corrupted_compressed_file_is_refused_by_verify_and_restore(store, task_id, monkeypatch):
    monkeypatch.setenv("VECTOR_BACKUP_COMPRESSION", "zstd")
    add_bulk_rows(store.conn, store.kind, store.collection_id, 500)
    answer = enqueue_vector_management(task_id, truncate=True)
    result = run_result(run_record(answer["run_id"])).get(timeout=60)
    directory = Path(result["backup_directory"])
    file = directory / result["tables_backed_up"]["langchain_pg_embedding"]["backup_file"]
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))

    verified = worker_cli("verify", str(directory))
    restored: subprocess.CompletedProcess = worker_cli("restore", str(directory))

    assert verified.returncode == 1 and "does not match its sha256" in verified.stdout
    assert restored.returncode == 1 and "nothing was written" in restored.stdout
    assert count_rows(store.conn, "langchain_pg_embedding") == 0
