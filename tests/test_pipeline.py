"""Enqueue once per pipeline task, proven by what happened in the database and on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.pipeline import NOT_RUN, enqueue_vector_management, run_record, run_result
from worker.sample_store import add_bulk_rows, count_rows

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
