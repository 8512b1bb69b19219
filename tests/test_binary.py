"""The binary format (`VECTOR_BACKUP_FORMAT=binary`): PostgreSQL's binary COPY, backed up
by the real chain, verified, restored, refused into other column types, and exported to
the seeds' CSV without a database — equal byte for byte to a CSV backup of the same rows."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import struct
from pathlib import Path

import pytest

from common.backup import backup_table
from common.config import VectorTableManagement
from common.exceptions import RestoreError, VerifyError
from common.export import export_csv
from common.formats import file_format
from common.manifest import verify_set, write_manifest
from common.pgbinary import BinaryCopyError, decoder, float4_text, read_tuples
from common.restore import restore_set
from common.run_result import aggregate_backups
from common.storage import open_storage
from common.table_job import TableJob
from tasks.pipeline import enqueue_vector_management, run_record, run_result
from tests.processes import worker_cli
from worker.sample_store import add_awkward_rows, add_bulk_rows, count_rows, row_texts

TABLES = ("langchain_pg_collection", "langchain_pg_embedding")
TS = "20250720_121007"
BINARY = VectorTableManagement(file_format="binary")
REQUEST = {"run_id": "r", "task_id": None, "timestamp": TS, "truncate_requested": False}


def binary_run(task_id: str, truncate: bool = True) -> dict:
    answer = enqueue_vector_management(task_id, truncate=truncate)
    return run_result(run_record(answer["run_id"])).get(timeout=60)


@pytest.mark.usefixtures("celery_worker_session")
def test_a_binary_set_backs_up_truncates_verifies_restores_and_exports_as_the_seeds_csv(
    store, task_id, tmp_path, monkeypatch
):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 1_000, dim=16)
    before = {t: row_texts(store.conn, t) for t in TABLES}
    # The same rows as CSV, for the export to equal byte for byte.
    csv_files = {
        t: backup_table(store.conn, TableJob(t, tmp_path / "csv", TS, VectorTableManagement()))
        for t in TABLES
    }
    monkeypatch.setenv("VECTOR_BACKUP_FORMAT", "binary")

    result = binary_run(task_id)

    assert result["truncate_performed"] and count_rows(store.conn, "langchain_pg_embedding") == 0
    directory = Path(result["backup_directory"])
    tables = result["tables_backed_up"]
    assert tables["langchain_pg_embedding"]["backup_file"].endswith(".pgcopy")
    assert tables["langchain_pg_embedding"]["row_count"] == 1_010
    manifest = verify_set(directory, deep=True)
    assert {e["format"] for e in manifest["tables"].values()} == {"binary"}
    assert manifest["server"]["pgvector_version"]
    assert ["embedding", "vector"] in manifest["tables"]["langchain_pg_embedding"]["columns"]

    exported = worker_cli("export-csv", str(directory), "--out", str(tmp_path / "exported"))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    for table, done in csv_files.items():
        name = f"{table}_{result['timestamp']}.csv"
        assert (tmp_path / "exported" / name).read_bytes() == (
            tmp_path / "csv" / done["backup_file"]
        ).read_bytes()

    restored = worker_cli("restore", str(directory))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert {t: row_texts(store.conn, t) for t in TABLES} == before


def test_binary_progress_is_exact_every_n_rows_and_the_count_excludes_the_trailer(store, tmp_path):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 250, dim=8)
    seen = []
    job = TableJob(
        "langchain_pg_embedding", tmp_path, TS, dataclasses.replace(BINARY, progress_every=100), seen.append
    )

    done = backup_table(store.conn, job)

    assert done["row_count"] == 250 and done["format"] == "binary"
    assert [p["rows"] for p in seen] == [100, 200, 250] and seen[-1]["percent"] == 100.0
    with open(tmp_path / done["backup_file"], "rb") as f:
        assert sum(1 for _ in read_tuples(f, len(done["columns"]))) == 250


def test_an_empty_table_is_a_valid_binary_file_of_no_rows(store, tmp_path):
    done = backup_table(store.conn, TableJob("langchain_pg_embedding", tmp_path, TS, BINARY))
    assert done["row_count"] == 0
    assert list(read_tuples(io.BytesIO((tmp_path / done["backup_file"]).read_bytes()), 1)) == []


def test_a_corrupted_binary_file_fails_verify_even_when_its_manifest_was_made_to_match(store, tmp_path):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 50, dim=8)
    storage = open_storage(tmp_path)
    tables = [backup_table(store.conn, TableJob(t, storage, TS, BINARY)) for t in TABLES]
    embedding = tmp_path / tables[1]["backup_file"]
    data = embedding.read_bytes()
    embedding.write_bytes(data[:-40] + data[-2:])  # a tuple cut short, the trailer kept
    tables[1].update(
        sha256=hashlib.sha256(embedding.read_bytes()).hexdigest(), file_size_bytes=len(data) - 38
    )
    name = write_manifest(storage, aggregate_backups(REQUEST, tables, storage, {}), {})

    with pytest.raises(VerifyError, match="is not valid PostgreSQL binary COPY"):
        verify_set(tmp_path / name, deep=True)


def test_a_binary_file_of_two_copies_one_after_the_other_fails_verify_and_restore(store, tmp_path):
    """What joining ranges without cutting their headers and trailers would give: two
    headers and two trailers, caught even when the manifest was made to match."""
    add_bulk_rows(store.conn, store.kind, store.collection_id, 30, dim=8)
    storage = open_storage(tmp_path)
    tables = [backup_table(store.conn, TableJob(t, storage, TS, BINARY)) for t in TABLES]
    embedding = tmp_path / tables[1]["backup_file"]
    twice = embedding.read_bytes() * 2
    embedding.write_bytes(twice)
    tables[1].update(sha256=hashlib.sha256(twice).hexdigest(), file_size_bytes=len(twice), row_count=2 * 30)
    name = write_manifest(storage, aggregate_backups(REQUEST, tables, storage, {}), {})
    before = row_texts(store.conn, "langchain_pg_embedding")

    with pytest.raises(VerifyError, match="is not valid PostgreSQL binary COPY"):
        verify_set(tmp_path / name, deep=True)
    with pytest.raises(RestoreError, match="copy data after EOF marker"):
        restore_set(store.conn, tmp_path / name)
    assert row_texts(store.conn, "langchain_pg_embedding") == before


def test_a_binary_set_is_refused_into_columns_of_other_types(store, tmp_path):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 20, dim=8)
    storage = open_storage(tmp_path)
    tables = [backup_table(store.conn, TableJob(t, storage, TS, BINARY)) for t in TABLES]
    name = write_manifest(storage, aggregate_backups(REQUEST, tables, storage, {}), {})
    before = row_texts(store.conn, "langchain_pg_embedding")
    with store.conn.cursor() as cur:
        cur.execute("ALTER TABLE langchain_pg_embedding ALTER COLUMN document TYPE text")

    with pytest.raises(RestoreError, match="document is character varying in the backup but text here"):
        restore_set(store.conn, tmp_path / name)
    assert row_texts(store.conn, "langchain_pg_embedding") == before


def test_float4_text_is_what_postgresql_prints(db):
    rng = random.Random(7)
    values = [struct.unpack("<f", struct.pack("<I", rng.getrandbits(32)))[0] for _ in range(3000)]
    values = [v for v in values if v == v and abs(v) != float("inf")] + [0.1, 1e-05, 63874312.0, 2.0**-149]
    with db.cursor() as cur:
        cur.execute("SELECT unnest(%s::float4[])::text", (values,))
        printed = [row[0] for row in cur.fetchall()]
    assert [float4_text(v) for v in values] == printed


def test_a_truncated_stream_and_an_unknown_format_are_clear_errors():
    with pytest.raises(BinaryCopyError, match="ends in the middle of a tuple"):
        list(read_tuples(io.BytesIO(b"PGCOPY\n\xff\r\n\x00" + bytes(8) + b"\x00\x01\x00\x00"), 1))
    with pytest.raises(Exception, match="VECTOR_BACKUP_FORMAT must be one of csv, binary"):
        VectorTableManagement(file_format="parquet")
    assert file_format("binary").extension == ".pgcopy"


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_a_compressed_binary_set_verifies_restores_and_exports(store, tmp_path, compression):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 300, dim=8)
    before = {t: row_texts(store.conn, t) for t in TABLES}
    packed = dataclasses.replace(BINARY, compression=compression)
    storage = open_storage(tmp_path / "set")
    tables = [backup_table(store.conn, TableJob(t, storage, TS, packed)) for t in TABLES]
    name = write_manifest(storage, aggregate_backups(REQUEST, tables, storage, {}), {})
    plain = {
        t: backup_table(store.conn, TableJob(t, tmp_path / "csv", TS, VectorTableManagement()))
        for t in TABLES
    }

    assert tables[1]["backup_file"].endswith(".pgcopy" + {"zstd": ".zst", "gzip": ".gz"}[compression])
    assert verify_set(tmp_path / "set" / name, deep=True)["tables"]["langchain_pg_embedding"]["rows"] == 310
    exported = export_csv(tmp_path / "set" / name, tmp_path / "exported")
    for table, file, rows in exported:
        assert rows == plain[table]["row_count"]
        assert (tmp_path / "exported" / file).read_bytes() == (
            tmp_path / "csv" / plain[table]["backup_file"]
        ).read_bytes()
    with store.conn.cursor() as cur:
        cur.execute("DELETE FROM langchain_pg_embedding")
    restore_set(store.conn, tmp_path / "set" / name)
    assert {t: row_texts(store.conn, t) for t in TABLES} == before


def test_a_binary_manifest_naming_an_unknown_id_type_is_a_verify_problem_not_a_crash(store, tmp_path):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 20, dim=8)
    storage = open_storage(tmp_path)
    tables = [backup_table(store.conn, TableJob(t, storage, TS, BINARY)) for t in TABLES]
    link = [c[0] for c in tables[1]["columns"]].index("collection_id")
    tables[1]["columns"][link][1] = "no_such_type"
    name = write_manifest(storage, aggregate_backups(REQUEST, tables, storage, {}), {})

    with pytest.raises(VerifyError, match="no binary decoder for column type 'no_such_type'"):
        verify_set(tmp_path / name, deep=True)


@pytest.mark.parametrize(
    ("kind", "data"), [("uuid", b"short"), ("vector", b"\x00\x09\x00\x00"), ("jsonb", b"\x02{}")]
)
def test_a_malformed_field_is_a_binary_copy_error(kind, data):
    with pytest.raises(BinaryCopyError):
        decoder(kind)(data)
