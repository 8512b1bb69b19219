"""Per-collection restore (`restore --collection NAME`): only the named collections' rows
are replaced, in one transaction, in place; every other collection's rows stay the very
same row versions, and the live tables keep their indexes."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import psycopg2
import pytest

from common.collection_restore import restore_collections
from common.config import load_settings
from common.db import table_fingerprint
from common.exceptions import RestoreError
from common.restore import _RESTORE_LOCK
from common.run_result import RunRequest
from common.run_steps import back_up_table, close_backup_set
from tests.processes import worker_cli
from worker.sample_store import add_awkward_rows, add_bulk_rows, add_collection

COLLECTION, EMBEDDING = "langchain_pg_collection", "langchain_pg_embedding"
IN_COLLECTION = f"collection_id IN (SELECT uuid FROM {COLLECTION} WHERE name = %s)"


def back_up(task_id: str) -> Path:
    """A complete set of the store as it is now, by the run's own steps; its directory."""
    settings = load_settings()
    request = RunRequest(
        run_id=uuid.uuid4().hex,
        task_id=task_id,
        timestamp=datetime.now().strftime(settings.vector.timestamp_format),
        truncate_requested=False,
        external_db=False,
    )
    tables = [back_up_table(settings, request, t) for t in (COLLECTION, EMBEDDING)]
    return Path(close_backup_set(settings, request, tables)["backup_directory"])


def collection_rows(conn, name: str) -> list[list[str]]:
    """The collection's rows and its embeddings' rows, as text, sorted."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT r::text FROM {COLLECTION} r WHERE name = %s ORDER BY 1", (name,))
        collection = [row[0] for row in cur.fetchall()]
        cur.execute(f"SELECT r::text FROM {EMBEDDING} r WHERE {IN_COLLECTION} ORDER BY 1", (name,))
        return [collection, [row[0] for row in cur.fetchall()]]


def row_versions(conn, name: str) -> list[tuple]:
    """Where each row of the collection lies and which transaction wrote it, with its
    text: equal lists mean the very same row versions, never deleted and re-inserted."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT ctid::text, xmin::text, r::text FROM {COLLECTION} r WHERE name = %s", (name,))
        rows = cur.fetchall()
        cur.execute(
            f"SELECT ctid::text, xmin::text, r::text FROM {EMBEDDING} r WHERE {IN_COLLECTION}", (name,)
        )
        return sorted(rows) + sorted(cur.fetchall())


def indexes(conn) -> list[tuple]:
    """Every index of the two tables: name, oid, valid and ready."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT indexrelid::regclass::text, indexrelid, indisvalid, indisready FROM pg_index "
            f"WHERE indrelid IN ('{COLLECTION}'::regclass, '{EMBEDDING}'::regclass) ORDER BY 1"
        )
        return cur.fetchall()


def fingerprints(conn) -> dict[str, str]:
    return {t: table_fingerprint(conn, t) for t in (COLLECTION, EMBEDDING)}


@pytest.fixture
def three(store, services, task_id):
    """`docs` (20 rows), `beta` and `gamma` (10 each), backed up; returns (set directory,
    the three collections' rows in the set)."""
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    for name in ("beta", "gamma"):
        add_awkward_rows(store.conn, store.kind, add_collection(store.conn, store.kind, name))
    directory = back_up(task_id)
    return directory, {name: collection_rows(store.conn, name) for name in ("docs", "beta", "gamma")}


def change_the_store(store) -> None:
    """docs: a row changed, rows deleted, rows added; beta: rows added; a new collection."""
    with store.conn.cursor() as cur:
        cur.execute(
            f"UPDATE {EMBEDDING} SET document = 'changed' "
            "WHERE document = 'plain text' AND collection_id = %s",
            (store.collection_id,),
        )
        cur.execute(
            f"DELETE FROM {EMBEDDING} WHERE document LIKE '%%quoted%%' AND collection_id = %s",
            (store.collection_id,),
        )
        cur.execute(f"SELECT uuid FROM {COLLECTION} WHERE name = 'beta'")
        beta = cur.fetchone()[0]
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_awkward_rows(store.conn, store.kind, beta)
    add_awkward_rows(store.conn, store.kind, add_collection(store.conn, store.kind, "delta"))


def test_restoring_one_collection_replaces_only_its_rows_and_keeps_the_indexes(store, three):
    directory, backed = three
    change_the_store(store)
    others = {name: row_versions(store.conn, name) for name in ("beta", "gamma", "delta")}
    before_indexes = indexes(store.conn)
    assert collection_rows(store.conn, "docs") != backed["docs"]

    done = worker_cli("restore", str(directory), "--collection", "docs")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "✓ collection 'docs': 20 rows restored (replaced 28 live rows)" in done.stdout
    assert "1 collection(s) restored into" in done.stdout
    assert collection_rows(store.conn, "docs") == backed["docs"]
    for name, versions in others.items():
        assert row_versions(store.conn, name) == versions, f"{name} was touched"
    assert indexes(store.conn) == before_indexes  # the same indexes, still valid: no swap
    with store.conn.cursor() as cur:
        key = "id" if store.kind == "langchain_postgres" else "uuid"
        cur.execute(
            f"SELECT array_agg({key}) FROM {EMBEDDING} WHERE collection_id = %s", (store.collection_id,)
        )
        restored_keys = cur.fetchone()[0]
        cur.execute("SET enable_seqscan = off")
        try:
            cur.execute(f"EXPLAIN SELECT count(*) FROM {EMBEDDING} WHERE {key} = ANY(%s)", (restored_keys,))
            assert "Index" in " ".join(row[0] for row in cur.fetchall())
            cur.execute(f"SELECT count(*) FROM {EMBEDDING} WHERE {key} = ANY(%s)", (restored_keys,))
            assert cur.fetchone()[0] == 20  # every restored row is found through the primary key's index
        finally:
            cur.execute("RESET enable_seqscan")


def test_a_recreated_collection_takes_the_sets_uuid_and_a_deleted_one_is_added(store, three, db):
    directory, backed = three
    with db.cursor() as cur:
        cur.execute(f"DELETE FROM {COLLECTION} WHERE name IN ('docs', 'gamma')")  # their rows cascade
    recreated = add_collection(db, store.kind, "docs")
    add_awkward_rows(db, store.kind, recreated)
    beta = row_versions(db, "beta")

    done = restore_collections(db, directory, ["docs", "gamma", "docs"])

    assert done["collections"] == {
        "docs": {"rows": 20, "removed": 10, "added": False, "recreated": True},
        "gamma": {"rows": 10, "removed": 0, "added": True, "recreated": False},
    }
    assert done["tables"] == {COLLECTION: 2, EMBEDDING: 30}
    assert done["removed"] == {COLLECTION: 1, EMBEDDING: 10}
    assert collection_rows(db, "docs") == backed["docs"]
    assert collection_rows(db, "gamma") == backed["gamma"]
    assert row_versions(db, "beta") == beta
    with db.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {EMBEDDING} WHERE collection_id = %s", (recreated,))
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'collection_restore_%%'")
        assert cur.fetchone()[0] == 0  # the temporary tables are gone


def test_a_name_the_set_does_not_hold_is_refused_and_nothing_changes(store, three):
    directory, _ = three
    change_the_store(store)
    before = fingerprints(store.conn)

    done = worker_cli("restore", str(directory), "--collection", "docs", "--collection", "nope")

    assert done.returncode == 1, done.stdout + done.stderr
    assert "'nope': no such collection in manifest_" in done.stdout
    assert "(it holds 3: 'beta', 'docs', 'gamma'); nothing was restored" in done.stdout
    assert fingerprints(store.conn) == before


def test_a_binary_compressed_set_restores_one_collection(store, services, task_id, monkeypatch):
    monkeypatch.setenv("VECTOR_BACKUP_FORMAT", "binary")
    monkeypatch.setenv("VECTOR_BACKUP_COMPRESSION", "zstd")
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 500)
    beta = add_collection(store.conn, store.kind, "beta")
    add_awkward_rows(store.conn, store.kind, beta)
    directory = back_up(task_id)
    files = list(directory.glob("langchain_*"))
    assert len(files) == 2 and all(f.name.endswith(".pgcopy.zst") for f in files)
    backed = collection_rows(store.conn, "docs")
    with store.conn.cursor() as cur:
        cur.execute(
            f"DELETE FROM {EMBEDDING} WHERE collection_id = %s AND document LIKE 'document 1%%'",
            (store.collection_id,),
        )
    add_awkward_rows(store.conn, store.kind, beta)
    others = row_versions(store.conn, "beta")

    done = worker_cli("restore", str(directory), "--collection", "docs")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "✓ collection 'docs': 510 rows restored" in done.stdout
    assert collection_rows(store.conn, "docs") == backed
    assert row_versions(store.conn, "beta") == others


def test_a_file_changed_after_the_backup_is_refused_by_its_sha256(store, three):
    directory, _ = three
    change_the_store(store)
    before = fingerprints(store.conn)
    data = next(directory.glob(f"{EMBEDDING}_*.csv"))
    text = data.read_bytes()
    data.write_bytes(text.replace(b"plain text", b"plain TEXT", 1))  # the same size: only the hash tells

    done = worker_cli("restore", str(directory), "--collection", "docs")

    assert done.returncode == 1
    assert "does not match its sha256" in done.stdout and "nothing was restored" in done.stdout
    assert fingerprints(store.conn) == before


def test_a_writer_in_the_collection_is_waited_for_and_its_row_replaced(store, three, services, db):
    """Without a foreign key nothing else makes the restore wait: a row a transaction
    writes into the collection meanwhile would survive beside the set's rows."""
    directory, backed = three
    with db.cursor() as cur:
        cur.execute(f"ALTER TABLE {EMBEDDING} DROP CONSTRAINT {EMBEDDING}_collection_id_fkey")
    writer = psycopg2.connect(services["VECTOR_DB_URL"])
    restorer = psycopg2.connect(services["VECTOR_DB_URL"])
    outcome: list = []
    try:
        add_awkward_rows(writer, store.kind, store.collection_id)  # open, not committed
        thread = threading.Thread(
            target=lambda: outcome.append(restore_collections(restorer, directory, ["docs"])), daemon=True
        )
        thread.start()
        waited, deadline = False, time.monotonic() + 10
        while thread.is_alive() and not waited and time.monotonic() < deadline:
            with db.cursor() as cur:
                cur.execute(
                    "SELECT count(*) > 0 FROM pg_locks WHERE NOT granted AND pid = %s",
                    (restorer.get_backend_pid(),),
                )
                waited = cur.fetchone()[0]
            time.sleep(0.02)
        writer.commit()
        thread.join(30)
    finally:
        writer.close()
        restorer.close()

    assert waited, "the restore must wait for the open write into the live tables"
    assert outcome and outcome[0]["collections"]["docs"]["removed"] == 30
    assert collection_rows(db, "docs") == backed["docs"]


def test_a_restore_already_running_in_the_database_refuses(store, three, services, db):
    directory, _ = three
    change_the_store(store)
    before = fingerprints(db)
    other = psycopg2.connect(services["VECTOR_DB_URL"])
    try:
        with other.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_RESTORE_LOCK,))
        with pytest.raises(RestoreError, match="another restore into this database is running"):
            restore_collections(db, directory, ["docs"])
    finally:
        other.close()
    assert fingerprints(db) == before


def docs_and_beta_backed_up(store, task_id: str) -> tuple[dict, list]:
    """'docs' and 'beta' with awkward rows, backed up by a real run through the workers:
    the run's result and 'docs' as backed up."""
    from tasks.vector_backup import build_vector_workflow

    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_awkward_rows(store.conn, store.kind, add_collection(store.conn, store.kind, "beta"))
    result = build_vector_workflow(task_id, backup=True).apply_async().get(timeout=60)
    return result, collection_rows(store.conn, "docs")


@pytest.mark.usefixtures("celery_worker_session")
def test_the_restore_task_takes_collections(store, task_id, task_root):
    from tasks.backup_sets import restore_backup_set

    result, backed = docs_and_beta_backed_up(store, task_id)
    with store.conn.cursor() as cur:
        cur.execute(
            f"DELETE FROM {EMBEDDING} WHERE collection_id = %s AND document IS NULL", (store.collection_id,)
        )
    beta = row_versions(store.conn, "beta")
    relative = str(Path(result["backup_directory"]).relative_to(task_root))

    done = restore_backup_set.delay(relative, collections=["docs"]).get(timeout=60)

    assert done["strategy"] == "collections"
    assert done["collections"] == {"docs": {"rows": 10, "removed": 9, "added": False, "recreated": False}}
    assert collection_rows(store.conn, "docs") == backed
    assert row_versions(store.conn, "beta") == beta
    with pytest.raises(RestoreError, match="mode 'append' does not apply"):
        restore_backup_set.delay(relative, "append", collections=["docs"]).get(timeout=60)


@pytest.mark.parametrize(
    ("extra", "why"),
    [(("--mode", "append"), "--mode append does not apply"), (("--jobs", "2"), "--jobs does not apply")],
)
def test_collection_with_append_or_jobs_is_a_usage_error(services, extra, why):
    done = worker_cli("restore", "anywhere", "--collection", "docs", *extra)

    assert done.returncode == 2 and why in done.stderr, done.stdout + done.stderr
