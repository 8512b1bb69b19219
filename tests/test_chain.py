"""The chord -> truncate chain on a real worker with real Redis and PostgreSQL."""

from __future__ import annotations

import json
import os
import time

import pytest
import redis

from common.compression import decompressing
from common.config import load_settings
from common.exceptions import BackupFailedError, RunEndedError, TruncateRefusedError
from common.redis_conn import run_states
from common.run_steps import truncate_after_backup
from tasks.vector_backup import backup_table, build_vector_workflow, run_lock, truncate_vector_tables
from tests.conftest import FAKE_PASSWORD
from tests.runs import backup_half_of_truncate_run
from worker.sample_store import add_awkward_rows, add_bulk_rows, count_rows

pytestmark = pytest.mark.usefixtures("celery_worker_session")
TIMEOUT = 60


def run(task_id, truncate):
    return build_vector_workflow(task_id, backup=True, truncate=truncate).apply_async()


def log_text(task_root, task_id):
    return (task_root / task_id / "vector_bak" / "vector_backup_log.txt").read_text(encoding="utf-8")


def test_backup_then_truncate_empties_only_the_embedding_table(store, task_id, task_root):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 1_000)
    embedded = count_rows(store.conn, "langchain_pg_embedding")

    result = run(task_id, truncate=True).get(timeout=TIMEOUT)

    backup_dir = task_root / task_id / "vector_bak"
    assert result["backup_performed"] is True and result["truncate_performed"] is True
    assert result["errors"] == [] and result["backup_directory"] == str(backup_dir)
    assert result["task_id"] == task_id and result["duration"] > 0
    assert set(result["tables_backed_up"]) == {"langchain_pg_collection", "langchain_pg_embedding"}
    for table, info in result["tables_backed_up"].items():
        file = backup_dir / info["backup_file"]
        assert info["success"] and file.stat().st_size == info["file_size_bytes"] > 0
        assert info["backup_file"] == f"{table}_{result['timestamp']}.csv"
        assert info["file_size"].endswith(("B", "KB", "MB")) and info["duration"] >= 0
    assert result["tables_backed_up"]["langchain_pg_embedding"]["row_count"] == embedded
    assert result["tables_backed_up"]["langchain_pg_collection"]["row_count"] == 1
    assert result["truncate_results"] == {
        "langchain_pg_embedding": {
            "success": True,
            "rows_before": embedded,
            "rows_after": 0,
            "duration": result["truncate_results"]["langchain_pg_embedding"]["duration"],
        }
    }
    assert count_rows(store.conn, "langchain_pg_embedding") == 0
    assert count_rows(store.conn, "langchain_pg_collection") == 1
    assert sorted(p.name for p in backup_dir.iterdir()) == sorted(
        [i["backup_file"] for i in result["tables_backed_up"].values()]
        + [f"manifest_{result['timestamp']}.json", "vector_backup_log.txt"]
    )
    log = log_text(task_root, task_id)
    assert log.startswith("=== Vector Table Backup Log ===\nBackup Time: ")
    assert f"Task ID: {task_id}\n" in log
    assert f"✓ langchain_pg_embedding: {embedded:,} rows -> langchain_pg_embedding_" in log
    assert "✓ langchain_pg_collection: 1 rows -> langchain_pg_collection_" in log
    assert f"Truncate Status:\n✓ langchain_pg_embedding: TRUNCATED ({embedded:,} rows removed)\n" in log
    assert "- langchain_pg_collection: SKIPPED (table preserved)" in log


def test_backup_only_truncates_nothing(store, task_id, task_root):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    before = count_rows(store.conn, "langchain_pg_embedding")

    result = run(task_id, truncate=False).get(timeout=TIMEOUT)

    assert result["backup_performed"] is True and result["truncate_performed"] is False
    assert result["truncate_results"] == {}
    assert count_rows(store.conn, "langchain_pg_embedding") == before
    assert "Truncate Status:\n- Not performed\n" in log_text(task_root, task_id)


@pytest.mark.parametrize(
    "broken,intact",
    [
        ("langchain_pg_collection", "langchain_pg_embedding"),
        ("langchain_pg_embedding", "langchain_pg_collection"),
    ],
)
def test_one_table_failing_stops_the_chain_before_truncate(store, task_id, task_root, broken, intact):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 500)
    with store.conn.cursor() as cur:
        cur.execute(f"ALTER TABLE {broken} RENAME TO hidden_table")
    try:
        workflow = run(task_id, truncate=True)
        with pytest.raises(BackupFailedError, match=f"{broken}: table does not exist") as failure:
            workflow.get(timeout=TIMEOUT)
        embedding = "hidden_table" if broken == "langchain_pg_embedding" else "langchain_pg_embedding"
        assert count_rows(store.conn, embedding) == 500
    finally:
        with store.conn.cursor() as cur:
            cur.execute(f"ALTER TABLE hidden_table RENAME TO {broken}")

    assert workflow.state == "FAILURE"  # the truncate task itself never succeeded
    result = failure.value.result
    assert result["tables_backed_up"][broken]["success"] is False
    assert result["tables_backed_up"][intact]["success"] is True
    assert result["truncate_performed"] is False and result["backup_performed"] is False
    backup_dir = task_root / task_id / "vector_bak"
    assert (backup_dir / result["tables_backed_up"][intact]["backup_file"]).is_file()
    assert not list(backup_dir.glob(f"{broken}_*"))
    log = log_text(task_root, task_id)
    assert f"✗ {broken}: FAILED - {broken}: table does not exist" in log
    assert "Truncate Status:\n- Not performed (backup failed)" in log
    assert "TRUNCATED" not in log


def backed_up(store, task_id, hold_lock=True):
    """The backup half of a real truncate run; its run keeps the lock, as before a truncate."""
    add_bulk_rows(store.conn, store.kind, store.collection_id, 300)
    result = backup_half_of_truncate_run(task_id)
    if not hold_lock:
        run_lock(load_settings(), result["run_id"]).release()
    return result


def test_truncate_refuses_a_backup_whose_file_changed_size(store, task_id):
    result = backed_up(store, task_id)
    path = (
        result["backup_directory"] + "/" + result["tables_backed_up"]["langchain_pg_embedding"]["backup_file"]
    )
    with open(path, "ab") as f:
        f.write(b"x")

    with pytest.raises(TruncateRefusedError, match=r"is \d+ bytes, the backup recorded"):
        truncate_vector_tables.delay(result).get(timeout=TIMEOUT)
    assert count_rows(store.conn, "langchain_pg_embedding") == 300


def test_truncate_refuses_a_backup_whose_file_is_gone(store, task_id):
    result = backed_up(store, task_id)
    os.remove(
        result["backup_directory"]
        + "/"
        + result["tables_backed_up"]["langchain_pg_collection"]["backup_file"]
    )

    with pytest.raises(TruncateRefusedError, match=r"langchain_pg_collection: backup file \S+ is missing"):
        truncate_vector_tables.delay(result).get(timeout=TIMEOUT)
    assert count_rows(store.conn, "langchain_pg_embedding") == 300


def test_truncate_refuses_a_result_that_does_not_show_every_table(store, task_id):
    result = backed_up(store, task_id)
    del result["tables_backed_up"]["langchain_pg_collection"]

    with pytest.raises(TruncateRefusedError, match="langchain_pg_collection was not backed up"):
        truncate_vector_tables.delay(result).get(timeout=TIMEOUT)
    with pytest.raises(TruncateRefusedError, match="no successful backup"):
        truncate_vector_tables.delay({"backup_performed": False}).get(timeout=TIMEOUT)
    assert count_rows(store.conn, "langchain_pg_embedding") == 300


def test_truncate_refuses_when_its_run_does_not_hold_the_database_lock(store, task_id):
    result = backed_up(store, task_id, hold_lock=False)
    other = run_lock(load_settings(), "another_run")
    assert other.acquire()
    try:
        with pytest.raises(
            TruncateRefusedError, match=r"no longer holds the lock on \S+ \(now held by another_run\)"
        ):
            truncate_vector_tables.delay(result).get(timeout=TIMEOUT)
    finally:
        other.release()
    assert count_rows(store.conn, "langchain_pg_embedding") == 300


def test_truncate_refuses_when_rows_changed_but_their_count_did_not(store, task_id):
    result = backed_up(store, task_id)
    with store.conn.cursor() as cur:
        cur.execute(
            "UPDATE langchain_pg_embedding SET document = 'edited after the backup' WHERE ctid = "
            "(SELECT ctid FROM langchain_pg_embedding LIMIT 1)"
        )

    with pytest.raises(TruncateRefusedError, match="changed since its backup: rows were inserted, updated"):
        truncate_vector_tables.delay(result).get(timeout=TIMEOUT)
    assert count_rows(store.conn, "langchain_pg_embedding") == 300


def test_truncate_refuses_a_backup_not_taken_for_a_truncate(store, task_id):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 300)
    result = run(task_id, truncate=False).get(timeout=TIMEOUT)
    lock = run_lock(load_settings(), result["run_id"])
    assert lock.acquire()

    # A truncate task sent for a backup-only run that has ended does nothing at all...
    with pytest.raises(RunEndedError, match="is succeeded; this task did nothing"):
        truncate_vector_tables.delay(result).get(timeout=TIMEOUT)
    # ...and the engine, asked directly, refuses the set for what it lacks.
    with pytest.raises(TruncateRefusedError, match="not taken for a truncate"):
        truncate_after_backup(load_settings(), result, lock)
    assert count_rows(store.conn, "langchain_pg_embedding") == 300


def test_truncate_refuses_when_rows_changed_after_the_backup(store, task_id, task_root):
    result = backed_up(store, task_id)
    add_awkward_rows(store.conn, store.kind, store.collection_id)

    with pytest.raises(TruncateRefusedError, match="changed since its backup: the backup holds 300 rows"):
        truncate_vector_tables.delay(result).get(timeout=TIMEOUT)
    assert count_rows(store.conn, "langchain_pg_embedding") == 300 + 10
    assert "✗ FAILED - langchain_pg_embedding changed since its backup" in log_text(task_root, task_id)


def test_a_polling_client_sees_progress_meta_while_the_worker_copies(db, task_id):
    # A view that pauses after 60,000 rows holds the task in PROGRESS deterministically.
    with db.cursor() as cur:
        cur.execute(
            "CREATE OR REPLACE VIEW slow_rows AS SELECT g AS n, "
            "CASE WHEN g = 60000 THEN pg_sleep(3)::text END AS pause "
            "FROM generate_series(1, 70000) AS g"
        )
    request = {
        "run_id": "progress_" + task_id,
        "task_id": task_id,
        "timestamp": "20250101_000000",
        "truncate_requested": False,
    }
    try:
        async_result = backup_table.delay("slow_rows", request)
        deadline = time.monotonic() + TIMEOUT
        while async_result.state != "PROGRESS" and time.monotonic() < deadline:
            time.sleep(0.02)
        progress = async_result.info
        final = async_result.get(timeout=TIMEOUT)
    finally:
        # A lone table task has no chord body to release the run lock or end the run.
        run_lock(load_settings(), request["run_id"]).release()
        run_states(load_settings()).finish(request["run_id"], "cancelled", "the test is over")
        with db.cursor() as cur:
            cur.execute("DROP VIEW slow_rows")
    assert progress["table"] == "slow_rows" and progress["rows"] == 50_000
    assert progress["step"] == "copying" and progress["bytes"] > 0
    assert final["success"] and final["row_count"] == 70_000


def test_no_password_reaches_results_logs_files_or_the_result_backend(store, task_id, task_root, services):
    password = load_settings().database.password
    if not password:
        pytest.skip("the external TEST_VECTOR_DB_URL has no password to look for")
    assert password == FAKE_PASSWORD or "TEST_VECTOR_DB_URL" in os.environ
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    workflow = build_vector_workflow(task_id, truncate=True)

    result = workflow.apply_async().get(timeout=TIMEOUT)
    with store.conn.cursor() as cur:
        cur.execute("ALTER TABLE langchain_pg_embedding RENAME TO hidden_table")
    try:
        with pytest.raises(BackupFailedError) as failure:
            run("failing_" + task_id[2:], truncate=True).get(timeout=TIMEOUT)
    finally:
        with store.conn.cursor() as cur:
            cur.execute("ALTER TABLE hidden_table RENAME TO langchain_pg_embedding")

    assert password not in repr(workflow) + json.dumps(result) + repr(failure.value.args)
    for path in task_root.rglob("*"):
        if path.is_file():
            # Other tests leave compressed sets in the shared root: read what they hold.
            with open(path, "rb") as raw:
                assert password.encode() not in decompressing(raw, path.name).read(), path
    backend = redis.Redis.from_url(services["CELERY_RESULT_BACKEND"])
    for key in backend.scan_iter():
        if backend.type(key) == b"string":
            assert password.encode() not in backend.get(key), key


def test_two_runs_on_one_database_never_overlap(store, task_id):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 150_000, dim=32)
    first = run(task_id + "_a", truncate=False)
    second = run(task_id + "_b", truncate=False)

    results = [first.get(timeout=TIMEOUT), second.get(timeout=TIMEOUT)]

    def span(result):
        tables = result["tables_backed_up"].values()
        return min(t["started_at"] for t in tables), max(t["started_at"] + t["duration"] for t in tables)

    (_, a_end), (b_start, _) = sorted(span(r) for r in results)
    assert a_end <= b_start, "the second run's backup started while the first still held the database"
    assert all(r["backup_performed"] for r in results)


def test_an_unreachable_database_fails_the_run_cleanly_and_a_rerun_succeeds(
    store, task_id, task_root, monkeypatch
):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 200)
    monkeypatch.setenv("VECTOR_DB_URL", "postgresql://nobody:unused-secret@127.0.0.1:1/nowhere")

    with pytest.raises(
        BackupFailedError, match=r"cannot connect to nobody@127\.0\.0\.1:1/nowhere"
    ) as failure:
        run(task_id, truncate=True).get(timeout=TIMEOUT)
    assert "unused-secret" not in str(failure.value.args)
    assert not list((task_root / task_id / "vector_bak").glob("*.csv*"))
    assert "Not performed (backup failed)" in log_text(task_root, task_id)

    monkeypatch.undo()
    result = run(task_id, truncate=True).get(timeout=TIMEOUT)
    assert result["truncate_results"]["langchain_pg_embedding"]["rows_before"] == 200
    assert count_rows(store.conn, "langchain_pg_embedding") == 0
