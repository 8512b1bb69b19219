"""One consistent set: every collection_id in the embedding file is in the collection file."""

from __future__ import annotations

import csv
import hashlib
import json
import threading
import uuid
from datetime import datetime
from pathlib import Path

import psycopg2
import pytest

from common.backup_log import LOG_NAME
from common.config import load_settings
from common.exceptions import BackupFailedError, VerifyError
from common.manifest import verify_set
from common.run_result import RunRequest
from common.run_steps import back_up_table, close_backup_set
from tasks.vector_backup import build_vector_workflow
from worker.sample_store import add_awkward_rows, add_bulk_rows, add_collection

COLLECTION, EMBEDDING = "langchain_pg_collection", "langchain_pg_embedding"


def request_for(task_id: str) -> RunRequest:
    return RunRequest(
        run_id=uuid.uuid4().hex,
        task_id=task_id,
        timestamp=datetime.now().strftime(load_settings().vector.timestamp_format),
        truncate_requested=False,
        external_db=False,
    )


def delete_collection(conn, collection_id: str) -> None:
    with conn.cursor() as cur:
        cur.execute("DELETE FROM langchain_pg_collection WHERE uuid = %s", (collection_id,))


@pytest.fixture(params=["local", "s3"])
def backups_in(request) -> str:
    """Where the set goes: the task root, or S3 (`VECTOR_STORAGE_URL`)."""
    if request.param == "s3":
        request.getfixturevalue("s3_root")
    return request.param


def test_a_collection_created_between_the_table_snapshots_is_brought_in_by_a_retake(
    store, services, task_id, backups_in
):
    settings, request = load_settings(), request_for(task_id)
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    collection = back_up_table(settings, request, COLLECTION)
    created = add_collection(store.conn, store.kind, "created mid-backup")
    add_awkward_rows(store.conn, store.kind, created)
    embedding = back_up_table(settings, request, EMBEDDING)

    result = close_backup_set(settings, request, [collection, embedding])

    assert result["backup_performed"] and not result["errors"]
    assert result["tables_backed_up"][COLLECTION]["retaken"] is True
    assert result["tables_backed_up"][COLLECTION]["row_count"] == 2
    assert "collection_ids" not in json.dumps(result)
    assert result["backup_directory"].startswith("s3://") == (backups_in == "s3")
    manifest = verify_set(result["backup_directory"])
    assert manifest["tables"][COLLECTION]["rows"] == 2


def test_a_collection_deleted_between_the_table_snapshots_fails_the_set(store, services, task_id):
    settings, request = load_settings(), request_for(task_id)
    doomed = add_collection(store.conn, store.kind, "deleted mid-backup")
    add_awkward_rows(store.conn, store.kind, doomed)
    embedding = back_up_table(settings, request, EMBEDDING)
    delete_collection(store.conn, doomed)
    collection = back_up_table(settings, request, COLLECTION)

    with pytest.raises(BackupFailedError) as failed:
        close_backup_set(settings, request, [collection, embedding])

    assert (
        "inconsistent set: 1 collection(s) the embeddings may reference were deleted while the backup "
        f"ran ({doomed}); run the backup again" in str(failed.value)
    )
    directory = Path(failed.value.result["backup_directory"])
    assert not list(directory.glob("manifest_*.json")), "an inconsistent set must not get a manifest"
    assert "inconsistent set" in (directory / LOG_NAME).read_text()


def test_without_the_foreign_key_the_referenced_ids_are_scanned(store, services, task_id):
    with store.conn.cursor() as cur:
        cur.execute(
            "ALTER TABLE langchain_pg_embedding DROP CONSTRAINT langchain_pg_embedding_collection_id_fkey"
        )
    settings, request = load_settings(), request_for(task_id)
    orphaned = add_collection(store.conn, store.kind, "deleted, rows left behind")
    add_awkward_rows(store.conn, store.kind, orphaned)
    delete_collection(store.conn, orphaned)  # no cascade: its embeddings stay
    tables = [back_up_table(settings, request, t) for t in (COLLECTION, EMBEDDING)]
    assert tables[1]["collection_ids"] == [orphaned]  # only what the embeddings reference

    with pytest.raises(BackupFailedError, match=f"inconsistent set: 1 collection.*\\({orphaned}\\)"):
        close_backup_set(settings, request, tables)


def test_a_consistent_set_needs_no_retake(store, services, task_id):
    settings, request = load_settings(), request_for(task_id)
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    tables = [back_up_table(settings, request, t) for t in (COLLECTION, EMBEDDING)]

    result = close_backup_set(settings, request, tables)

    assert "retaken" not in result["tables_backed_up"][COLLECTION]


def test_verify_refuses_a_set_whose_embeddings_reference_a_missing_collection(store, services, task_id):
    settings, request = load_settings(), request_for(task_id)
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    result = close_backup_set(
        settings, request, [back_up_table(settings, request, t) for t in (COLLECTION, EMBEDDING)]
    )
    directory = Path(result["backup_directory"])
    manifest_path = directory / result["manifest"]
    manifest = json.loads(manifest_path.read_text())
    # Drop the only collection row and make sizes, sums and counts agree again:
    # only the link check can notice.
    entry = manifest["tables"][COLLECTION]
    file = directory / entry["file"]
    header = file.read_bytes().split(b"\n", 1)[0] + b"\n"
    file.write_bytes(header)
    entry.update(rows=0, bytes=len(header), sha256=hashlib.sha256(header).hexdigest())
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(VerifyError, match=f"not in the {COLLECTION} file \\(e.g. {store.collection_id}\\)"):
        verify_set(manifest_path)


def collection_ids_in(path: Path, column: str) -> set[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return {row[column] for row in csv.DictReader(f) if row[column]}


@pytest.mark.usefixtures("celery_worker_session")
@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_sets_taken_while_collections_come_and_go_are_consistent_or_fail_clearly(store, services, task_id):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 60_000)
    stop = threading.Event()
    churned = []

    def churn():
        conn = psycopg2.connect(services["VECTOR_DB_URL"])
        conn.autocommit = True
        try:
            while not stop.is_set():
                created = add_collection(conn, store.kind, "churn " + uuid.uuid4().hex)
                add_awkward_rows(conn, store.kind, created)
                churned.append(created)
                if len(churned) > 2:
                    delete_collection(conn, churned[-3])
        finally:
            conn.close()

    mutator = threading.Thread(target=churn)
    mutator.start()
    outcomes = []
    try:
        # Four runs, more (up to eight) until one completes: under this churn a run may
        # meet a deletion every time, and must then fail clearly, which is checked below.
        for attempt in range(8):
            if attempt >= 4 and any(not isinstance(o, str) for o in outcomes):
                break
            workflow = build_vector_workflow(f"{task_id}_{attempt}", backup=True)
            try:
                outcomes.append(workflow.apply_async().get(timeout=60))
            except BackupFailedError as exc:
                outcomes.append(str(exc))
    finally:
        stop.set()
        mutator.join()

    assert len(churned) > 10, "the mutator must have changed collections during the backups"
    for outcome in outcomes:
        if isinstance(outcome, str):
            assert "inconsistent set" in outcome and "run the backup again" in outcome, outcome
            continue
        directory = Path(outcome["backup_directory"])
        verify_set(directory / outcome["manifest"])
        files = {t: directory / info["backup_file"] for t, info in outcome["tables_backed_up"].items()}
        referenced = collection_ids_in(files[EMBEDDING], "collection_id")
        assert referenced <= collection_ids_in(files[COLLECTION], "uuid")
        assert len(referenced) > 1
    assert any(not isinstance(o, str) for o in outcomes), outcomes
