"""Enqueue once per pipeline task, proven by what happened in the database and on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from common.config import load_settings
from common.exceptions import BackupFailedError
from tasks.pipeline import NOT_RUN, enqueue_vector_management, run_record, run_result
from tasks.vector_backup import run_lock
from tests.conftest import FAKE_PASSWORD
from worker.sample_store import add_bulk_rows, add_collection, count_rows, create_store

pytestmark = pytest.mark.usefixtures("celery_worker_session")
ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60
ENQUEUE_AT = """
import json, sys, time
from tasks.pipeline import enqueue_vector_management
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(json.dumps(enqueue_vector_management(sys.argv[1], backup=True, truncate=True)))
"""


def backup_sets(task_root: Path, task_id: str) -> list[Path]:
    return sorted((task_root / task_id / "vector_bak").glob("langchain_pg_embedding_*.csv"))


def test_ten_processes_enqueueing_one_task_at_once_run_one_chain(store, task_id, task_root):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 2_000)
    start_at = time.time() + 3  # every process is imported and waiting by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ENQUEUE_AT, task_id, str(start_at)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(10)
    ]
    answers = [json.loads(p.communicate(timeout=60)[0]) for p in procs]

    assert len({a["run_id"] for a in answers}) == 1
    assert sum(a["enqueued"] for a in answers) == 1
    result = run_result(run_record(answers[0]["run_id"])).get(timeout=TIMEOUT)
    time.sleep(1)  # a second chain, had one been sent, would have finished by now too
    assert result["truncate_results"]["langchain_pg_embedding"]["rows_before"] == 2_000
    assert count_rows(store.conn, "langchain_pg_embedding") == 0
    assert len(backup_sets(task_root, task_id)) == 1
    log = (task_root / task_id / "vector_bak" / "vector_backup_log.txt").read_text(encoding="utf-8")
    assert log.count("=== Vector Table Backup Log ===") == 1 and log.count("TRUNCATED") == 1


def test_full_workflow_and_training_loader_share_one_run(store, task_id, task_root):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 500)
    # The full workflow reaches the vector step first, then calls the training loader,
    # which reaches it again for the same pipeline task.
    from_workflow = enqueue_vector_management(task_id, backup=True, truncate=True)
    from_loader = enqueue_vector_management(task_id, backup=True, truncate=True)

    assert from_workflow["enqueued"] and not from_loader["enqueued"]
    assert from_loader["run_id"] == from_workflow["run_id"]
    run_result(run_record(from_workflow["run_id"])).get(timeout=TIMEOUT)
    assert len(backup_sets(task_root, task_id)) == 1


def test_nothing_asked_runs_nothing(task_id, task_root):
    nothing = enqueue_vector_management(task_id, backup=False, truncate=False)

    assert nothing == {
        "run_id": None,
        "enqueued": False,
        "backup": False,
        "truncate": False,
        "message": NOT_RUN,
    }
    assert not (task_root / task_id).exists()


def test_truncate_alone_backs_up_first(store, task_id, task_root):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 100)

    answer = enqueue_vector_management(task_id, truncate=True)

    assert answer["backup"] is True and answer["truncate"] is True
    result = run_result(run_record(answer["run_id"])).get(timeout=TIMEOUT)
    assert result["tables_backed_up"]["langchain_pg_embedding"]["row_count"] == 100
    assert result["truncate_performed"] and len(backup_sets(task_root, task_id)) == 1


def test_force_sends_a_second_run_deliberately(store, task_id, task_root):
    first = enqueue_vector_management(task_id, backup=True)
    run_result(run_record(first["run_id"])).get(timeout=TIMEOUT)
    time.sleep(1.1)  # a new set gets a new timestamp
    again = enqueue_vector_management(task_id, backup=True, force=True)

    assert again["enqueued"] and again["run_id"] != first["run_id"]
    run_result(run_record(again["run_id"])).get(timeout=TIMEOUT)
    assert len(backup_sets(task_root, task_id)) == 2


@pytest.fixture
def second_database(services, db):
    """Another database on the same server, with its own LangChain store."""
    name = "vector_second"
    with db.cursor() as cur:
        try:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
            cur.execute(f"CREATE DATABASE {name}")
        except psycopg2.Error as exc:
            pytest.skip(f"cannot create a second database here: {exc}")
    url = urlunsplit(urlsplit(services["VECTOR_DB_URL"])._replace(path=f"/{name}"))
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
    create_store(conn, "langchain_postgres")
    collection = add_collection(conn, "langchain_postgres", "second")
    add_bulk_rows(conn, "langchain_postgres", collection, 150_000, dim=32)
    yield url, conn
    conn.close()
    with db.cursor() as cur:
        cur.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_runs_on_two_databases_overlap_and_each_truncates_its_own(store, task_id, second_database):
    second_url, second = second_database
    add_bulk_rows(store.conn, store.kind, store.collection_id, 150_000, dim=32)

    here = enqueue_vector_management(task_id + "_here", backup=True)
    there = enqueue_vector_management(task_id + "_there", truncate=True, db_connection=second_url)
    results = [run_result(run_record(r["run_id"])).get(timeout=TIMEOUT) for r in (here, there)]

    (a_start, a_end), (b_start, b_end) = (span(r) for r in results)
    assert a_start < b_end and b_start < a_end, "runs on different databases waited for each other"
    assert [r["database"]["dbname"] for r in results] == [store.conn.info.dbname, "vector_second"]
    assert count_rows(store.conn, "langchain_pg_embedding") == 150_000
    assert count_rows(second, "langchain_pg_embedding") == 0
    assert results[1]["tables_backed_up"]["langchain_pg_embedding"]["row_count"] == 150_000
    assert FAKE_PASSWORD not in json.dumps(results)


def span(result):
    tables = result["tables_backed_up"].values()
    return min(t["started_at"] for t in tables), max(t["started_at"] + t["duration"] for t in tables)


def test_fail_mode_refuses_a_second_run_on_a_busy_database(store, task_id, monkeypatch):
    monkeypatch.setenv("VECTOR_LOCK_WAIT", "fail")
    holder = run_lock(load_settings(), "nightly_run")
    assert holder.acquire()
    try:
        answer = enqueue_vector_management(task_id, truncate=True)
        with pytest.raises(BackupFailedError, match="is busy with run nightly_run"):
            run_result(run_record(answer["run_id"])).get(timeout=TIMEOUT)
    finally:
        holder.release()
