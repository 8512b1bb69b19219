"""The COPY streaming engine against a real PostgreSQL with the pgvector column."""

from __future__ import annotations

import csv
import fcntl
import io
from pathlib import Path

import psycopg2
import pytest

from common.backup import backup_table, run_table_backup
from common.config import VectorTableManagement, load_settings
from common.exceptions import BackupError, PermissionDeniedError, TableNotFoundError
from common.table_job import TableJob
from worker.sample_store import add_awkward_rows, add_bulk_rows, row_texts

VECTOR = VectorTableManagement()
TS = "20250720_121007"


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def restore_into_copy(conn, table: str, csv_path: Path) -> str:
    copy = f"restored_{table}"
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {copy}; CREATE TABLE {copy} (LIKE {table} INCLUDING ALL)")
        with open(csv_path, "rb") as f:
            cur.copy_expert(f"COPY {copy} FROM STDIN WITH (FORMAT csv, HEADER)", f)
    return copy


@pytest.mark.parametrize("table", ["langchain_pg_collection", "langchain_pg_embedding"])
def test_round_trip_restores_identical_rows(store, tmp_path, table):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    result = backup_table(store.conn, TableJob(table, tmp_path, TS, VECTOR))

    assert result["success"] and result["backup_file"] == f"{table}_{TS}.csv"
    copy = restore_into_copy(store.conn, table, tmp_path / result["backup_file"])
    try:
        original = row_texts(store.conn, table)
        assert result["row_count"] == len(original) > 0
        assert row_texts(store.conn, copy) == original
    finally:
        with store.conn.cursor() as cur:
            cur.execute(f"DROP TABLE {copy}")


def test_backup_file_is_csv_with_header_in_utf8(store, tmp_path):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    result = backup_table(store.conn, TableJob("langchain_pg_embedding", tmp_path, TS, VECTOR))

    text = (tmp_path / result["backup_file"]).read_bytes().decode("utf-8")
    records = list(csv.reader(io.StringIO(text, newline="")))
    with store.conn.cursor() as cur:
        cur.execute("SELECT * FROM langchain_pg_embedding LIMIT 0")
        columns = [d.name for d in cur.description]
    assert records[0] == columns
    assert len(records) - 1 == result["row_count"]
    assert "中文 🚀" in text
    assert result["file_size_bytes"] == len(text.encode("utf-8"))
    assert leftovers(tmp_path) == [result["backup_file"]]


def test_progress_fires_every_50000_rows_and_at_the_end(store, tmp_path):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 120_000)
    seen = []

    result = backup_table(store.conn, TableJob("langchain_pg_embedding", tmp_path, TS, VECTOR, seen.append))

    assert [p["rows"] for p in seen] == [50_000, 100_000, 120_000]
    assert result["row_count"] == 120_000
    assert all(p["table"] == "langchain_pg_embedding" for p in seen)
    assert all(p["total_estimate"] == 120_000 for p in seen)
    assert [round(p["percent"], 1) for p in seen] == [41.7, 83.3, 100.0]
    assert seen[0]["bytes"] < seen[1]["bytes"] < seen[2]["bytes"] == result["file_size_bytes"]
    assert seen[-1]["step"] == "done"


def test_empty_table_gives_a_header_only_file(store, tmp_path):
    result = backup_table(store.conn, TableJob("langchain_pg_embedding", tmp_path, TS, VECTOR))

    assert result["success"] and result["row_count"] == 0
    lines = (tmp_path / result["backup_file"]).read_text().splitlines()
    assert len(lines) == 1 and "embedding" in lines[0]


def test_missing_table_is_a_clear_error_and_leaves_no_file(db, tmp_path):
    with pytest.raises(TableNotFoundError, match="no_such_table: table does not exist"):
        backup_table(db, TableJob("no_such_table", tmp_path, TS, VECTOR))
    assert leftovers(tmp_path) == []


def test_missing_privilege_is_a_clear_error(store, tmp_path):
    with store.conn.cursor() as cur:
        cur.execute(
            "DROP ROLE IF EXISTS no_select; CREATE ROLE no_select; "
            "GRANT USAGE ON SCHEMA public TO no_select; SET ROLE no_select"
        )
    try:
        with pytest.raises(PermissionDeniedError, match="langchain_pg_embedding: permission denied"):
            backup_table(store.conn, TableJob("langchain_pg_embedding", tmp_path, TS, VECTOR))
    finally:
        with store.conn.cursor() as cur:
            cur.execute("RESET ROLE; DROP OWNED BY no_select; DROP ROLE no_select")
    assert leftovers(tmp_path) == []


def test_schema_qualified_and_quoted_names(db, tmp_path):
    with db.cursor() as cur:
        cur.execute(
            'DROP SCHEMA IF EXISTS "Odd Schema" CASCADE; CREATE SCHEMA "Odd Schema";'
            'CREATE TABLE "Odd Schema"."Mixed Case" (v vector(2)); '
            'INSERT INTO "Odd Schema"."Mixed Case" VALUES (\'[1,2]\'), (NULL)'
        )
    try:
        result = backup_table(db, TableJob("Odd Schema.Mixed Case", tmp_path, TS, VECTOR))
        assert result["row_count"] == 2
        assert (tmp_path / f"Odd Schema.Mixed Case_{TS}.csv").exists()
        with pytest.raises(TableNotFoundError):
            backup_table(db, TableJob("public.x; DROP TABLE y", tmp_path, TS, VECTOR))
    finally:
        with db.cursor() as cur:
            cur.execute('DROP SCHEMA "Odd Schema" CASCADE')


def test_connection_killed_mid_copy_leaves_no_csv_and_no_temp(store, tmp_path, services):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 120_000)
    victim = psycopg2.connect(services["VECTOR_DB_URL"])
    victim.autocommit = True

    def kill_backend(progress):
        if progress["rows"] == 50_000:
            with store.conn.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(%s)", (victim.get_backend_pid(),))

    with pytest.raises(BackupError, match="langchain_pg_embedding: database connection lost while copying"):
        backup_table(victim, TableJob("langchain_pg_embedding", tmp_path, TS, VECTOR, kill_backend))
    assert leftovers(tmp_path) == []
    victim.close()


def test_unwritable_backup_directory_is_a_clear_file_error(store, tmp_path):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("")

    with pytest.raises(BackupError, match="file error while creating the backup directory"):
        backup_table(store.conn, TableJob("langchain_pg_embedding", blocker / "vector_bak", TS, VECTOR))
    assert leftovers(tmp_path) == ["not_a_directory"]


def test_write_failure_mid_copy_leaves_no_csv_and_no_temp(store, tmp_path):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 120_000)

    def fail_writing(progress):
        raise OSError(28, "No space left on device")

    with pytest.raises(BackupError, match=r"file error while copying: .*No space left on device"):
        backup_table(store.conn, TableJob("langchain_pg_embedding", tmp_path, TS, VECTOR, fail_writing))
    assert leftovers(tmp_path) == []


def test_existing_backup_is_never_overwritten(store, tmp_path):
    existing = tmp_path / f"langchain_pg_embedding_{TS}.csv"
    existing.write_text("an earlier backup\n")

    with pytest.raises(BackupError, match="already exists"):
        backup_table(store.conn, TableJob("langchain_pg_embedding", tmp_path, TS, VECTOR))
    assert existing.read_text() == "an earlier backup\n"
    assert leftovers(tmp_path) == [existing.name]


def test_a_temp_file_left_by_a_killed_writer_is_replaced(store, tmp_path):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    stale = tmp_path / f"langchain_pg_embedding_{TS}.csv.tmp"
    stale.write_text("half a backup from a writer that was SIGKILLed\n")

    result = backup_table(store.conn, TableJob("langchain_pg_embedding", tmp_path, TS, VECTOR))

    assert result["success"] and leftovers(tmp_path) == [result["backup_file"]]


def test_a_temp_file_being_written_is_not_touched(store, tmp_path):
    busy = tmp_path / f"langchain_pg_embedding_{TS}.csv.tmp"
    with open(busy, "wb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)
        writer.write(b"a live writer's rows")
        writer.flush()
        with pytest.raises(BackupError, match="being written by another process"):
            backup_table(store.conn, TableJob("langchain_pg_embedding", tmp_path, TS, VECTOR))
    assert busy.read_bytes() == b"a live writer's rows"
    assert leftovers(tmp_path) == [busy.name]


def test_failed_table_becomes_a_failed_result_without_secrets(services, tmp_path):
    settings = load_settings()
    result = run_table_backup(settings.database, TableJob("missing_table", tmp_path, TS, VECTOR))

    assert result["success"] is False and result["row_count"] == 0
    assert result["error"] == "missing_table: table does not exist"


def test_unreachable_database_becomes_a_failed_result_without_the_password(tmp_path):
    settings = load_settings({"VECTOR_DB_URL": "postgresql://someone:hunter2-secret@127.0.0.1:1/nowhere"})
    result = run_table_backup(settings.database, TableJob("langchain_pg_embedding", tmp_path, TS, VECTOR))

    assert result["success"] is False
    assert "cannot connect to someone@127.0.0.1:1/nowhere" in result["error"]
    assert "hunter2" not in repr(result)
    assert leftovers(tmp_path) == []
