"""Backup -> truncate -> restore round trips through the real chain and `python -m worker restore`."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from common.exceptions import ConfigurationError
from tasks.backup_sets import restore_backup_set, verify_backup_set
from tasks.pipeline import enqueue_vector_management, run_record, run_result
from tests.processes import worker_cli
from worker.sample_store import add_awkward_rows, add_bulk_rows, count_rows, row_texts

pytestmark = pytest.mark.usefixtures("celery_worker_session")
TIMEOUT = 60


def verify(path) -> subprocess.CompletedProcess:
    return worker_cli("verify", str(path))


def restore(*args: str) -> subprocess.CompletedProcess:
    return worker_cli("restore", *args)


@pytest.fixture
def truncated(store, task_id):
    """A store backed up and emptied by the real chain; returns (before, backup dir)."""
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 2_000)
    before = {t: row_texts(store.conn, t) for t in ("langchain_pg_collection", "langchain_pg_embedding")}
    answer = enqueue_vector_management(task_id, truncate=True)
    result = run_result(run_record(answer["run_id"])).get(timeout=TIMEOUT)
    assert count_rows(store.conn, "langchain_pg_embedding") == 0
    return before, Path(result["backup_directory"])


def test_restore_brings_back_exactly_the_rows_that_were_truncated(store, truncated):
    before, directory = truncated

    done = restore(str(directory))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "✓ langchain_pg_embedding: 2,010 rows restored" in done.stdout
    for table, rows in before.items():
        assert row_texts(store.conn, table) == rows


def test_restore_creates_missing_tables_and_indexes_in_an_empty_database(store, truncated, services, db):
    before, directory = truncated
    with db.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS vector_restore_target")
        cur.execute("CREATE DATABASE vector_restore_target")
    url = urlunsplit(urlsplit(services["VECTOR_DB_URL"])._replace(path="/vector_restore_target"))
    try:
        done = restore(str(directory), "--db-connection", url)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "(table created)" in done.stdout
        target = psycopg2.connect(url)
        try:
            for table, rows in before.items():
                assert row_texts(target, table) == rows
            with target.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f'")
                assert cur.fetchone()[0] == 1
                if store.kind == "langchain_postgres":
                    cur.execute("SELECT to_regclass('ix_cmetadata_gin')")
                    assert cur.fetchone()[0] is not None
        finally:
            target.close()
    finally:
        with db.cursor() as cur:
            cur.execute("DROP DATABASE vector_restore_target WITH (FORCE)")


def test_a_corrupted_set_is_refused_and_nothing_is_written(store, truncated):
    _, directory = truncated
    csv_file = next(directory.glob("langchain_pg_embedding_*.csv"))
    csv_file.write_bytes(csv_file.read_bytes()[:-40])

    done = restore(str(directory))

    assert done.returncode == 1 and "nothing was written" in done.stdout
    assert count_rows(store.conn, "langchain_pg_embedding") == 0


def test_append_over_existing_rows_fails_whole_and_changes_nothing(store, truncated):
    _, directory = truncated
    assert restore(str(directory)).returncode == 0

    done = restore(str(directory), "--mode", "append")

    assert done.returncode == 1 and "nothing was restored" in done.stdout
    assert count_rows(store.conn, "langchain_pg_embedding") == 2_010
    assert count_rows(store.conn, "langchain_pg_collection") == 1


def test_verify_and_restore_tasks_run_on_the_worker(store, truncated, task_root):
    before, directory = truncated
    relative = str(directory.relative_to(task_root))

    manifest = verify_backup_set.delay(relative).get(timeout=TIMEOUT)
    done = restore_backup_set.delay(relative).get(timeout=TIMEOUT)

    assert manifest["tables"]["langchain_pg_embedding"]["rows"] == 2_010
    assert done["tables"] == {"langchain_pg_collection": 1, "langchain_pg_embedding": 2_010}
    assert row_texts(store.conn, "langchain_pg_embedding") == before["langchain_pg_embedding"]
    with pytest.raises(ConfigurationError, match="outside the task root"):
        restore_backup_set.delay("../../etc").get(timeout=TIMEOUT)


def test_a_manifest_forged_to_match_a_shortened_file_is_caught_by_the_copy_count(store, truncated):
    _, directory = truncated
    manifest_path = next(directory.glob("manifest_*.json"))
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["tables"]["langchain_pg_embedding"]
    file = directory / entry["file"]
    shortened = b"".join(file.read_bytes().splitlines(keepends=True)[:-1])  # bulk rows: one line each
    file.write_bytes(shortened)
    entry.update(bytes=len(shortened), sha256=hashlib.sha256(shortened).hexdigest())  # rows left as they were
    manifest_path.write_text(json.dumps(manifest))

    done = restore(str(manifest_path))

    assert done.returncode == 1 and "rows, the manifest says 2010" in done.stdout, done.stdout
    assert count_rows(store.conn, "langchain_pg_embedding") == 0
    assert verify(manifest_path).returncode == 1  # the deep verify parses the rows too
