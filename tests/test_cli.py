"""`python -m worker run` as a real process, against the real services and worker."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.processes import worker_cli
from worker.sample_store import add_bulk_rows, count_rows

pytestmark = pytest.mark.usefixtures("celery_worker_session")


def cli(*args: str) -> subprocess.CompletedProcess:
    return worker_cli(*args)


def test_truncate_alone_turns_backup_on_and_prints_the_summary(store, task_id):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 300)

    done = cli("run", "--task-id", task_id, "--truncate-vector-tables")

    assert done.returncode == 0, done.stderr
    assert "--truncate-vector-tables implies --backup-vector-tables: backup turned on" in done.stderr
    assert "langchain_pg_embedding" in done.stderr and "300/300" in done.stderr  # the progress bars
    assert "Traceback" not in done.stderr
    assert "✓ backup performed: 2 tables, 301 rows, 2 files" in done.stdout
    assert "  - langchain_pg_embedding: 300 rows -> langchain_pg_embedding_" in done.stdout
    assert "✓ truncate performed: langchain_pg_embedding emptied (300 rows removed)" in done.stdout
    assert count_rows(store.conn, "langchain_pg_embedding") == 0


def test_a_failed_run_exits_1_and_names_the_table_and_reason(store, task_id):
    with store.conn.cursor() as cur:
        cur.execute("ALTER TABLE langchain_pg_embedding RENAME TO hidden_table")
    try:
        done = cli("run", "--task-id", task_id, "--truncate-vector-tables")
    finally:
        with store.conn.cursor() as cur:
            cur.execute("ALTER TABLE hidden_table RENAME TO langchain_pg_embedding")

    assert done.returncode == 1
    assert "✗ run failed: backup failed: langchain_pg_embedding: table does not exist" in done.stdout
    assert "- truncate: not performed" in done.stdout


def test_nothing_asked_says_not_run():
    done = cli("run", "--task-id", "nothing_asked")
    assert done.returncode == 0
    assert done.stdout.strip() == "vector table management: not run"


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--task-id", "../etc", "--backup-vector-tables"],
        ["run", "--no-such-flag"],
        ["follow", "unknown_run"],
    ],
)
def test_usage_errors_exit_2(args):
    done = cli(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Error" in done.stderr


def test_no_wait_prints_the_run_id_and_follow_reports_it_as_json(store, task_id):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 50)

    sent = cli("run", "--task-id", task_id, "--backup-vector-tables", "--no-wait")
    run_id = sent.stdout.strip()
    followed = cli("follow", run_id, "--json")

    assert sent.returncode == 0 and len(run_id) == 32
    assert f"python -m worker follow {run_id}" in sent.stderr
    assert followed.returncode == 0, followed.stderr
    stats = json.loads(followed.stdout)["vector_management_stats"]
    assert stats["run_id"] == run_id and stats["truncate_performed"] is False
    assert stats["tables_backed_up"]["langchain_pg_embedding"]["row_count"] == 50


def test_help_documents_every_option():
    done = cli("run", "--help")
    for option in (
        "--task-id",
        "--backup-vector-tables",
        "--truncate-vector-tables",
        "--skip-training-load",
        "--wait / --no-wait",
        "--force",
        "--json",
    ):
        assert option in done.stdout


def test_skip_training_load_still_runs_the_vector_step(store, task_id):
    done = cli("run", "--task-id", task_id, "--backup-vector-tables", "--skip-training-load")

    assert done.returncode == 0, done.stderr
    assert "the vector step still runs" in done.stderr
    assert "✓ backup performed: 2 tables" in done.stdout
