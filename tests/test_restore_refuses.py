"""A backup directory is hostile input: restore runs no SQL from a manifest and touches only
the configured tables. Each test edits a real set's manifest as an attacker who can write
the backup directory would, then runs `python -m worker restore` (or the worker's task)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from common.exceptions import RestoreError
from tasks.backup_sets import restore_backup_set
from tasks.pipeline import enqueue_vector_management, wait_for_run
from tests.processes import worker_cli
from worker.sample_store import add_bulk_rows, count_rows

pytestmark = [
    pytest.mark.usefixtures("celery_worker_session"),
    pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True),
]
EMBEDDING = "langchain_pg_embedding"


@pytest.fixture
def backup_set(store, task_id) -> Path:
    """A real set of 300 embeddings, backed up and truncated by the chain: its manifest."""
    add_bulk_rows(store.conn, store.kind, store.collection_id, 300)
    result = wait_for_run(enqueue_vector_management(task_id, truncate=True)["run_id"], 60)
    return Path(result["backup_directory"]) / result["manifest"]


@pytest.fixture
def empty_database(services, db):
    """A database with no tables at all, so a restore must create them."""
    with db.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS vector_hostile_target")
        cur.execute("CREATE DATABASE vector_hostile_target")
    url = urlunsplit(urlsplit(services["VECTOR_DB_URL"])._replace(path="/vector_hostile_target"))
    conn = psycopg2.connect(url)
    conn.autocommit = True
    yield url, conn
    conn.close()
    with db.cursor() as cur:
        cur.execute("DROP DATABASE vector_hostile_target WITH (FORCE)")


def edit(manifest: Path, change) -> None:
    data = json.loads(manifest.read_text())
    change(data)
    manifest.write_text(json.dumps(data))


def tables_in(conn) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        return [r[0] for r in cur.fetchall()]


def test_sql_appended_to_a_column_type_is_refused_by_verify_and_restore(backup_set, empty_database):
    url, target = empty_database

    def inject(data):
        columns = data["tables"][EMBEDDING]["schema"]["columns"]
        columns[-1]["type"] = "jsonb); CREATE TABLE pwned (x int); --"

    edit(backup_set, inject)

    checked = worker_cli("verify", str(backup_set))
    restored = worker_cli("restore", str(backup_set), "--db-connection", url)

    assert checked.returncode == 1 and "table description is not allowed" in checked.stdout
    assert restored.returncode == 1 and "nothing was written" in restored.stdout
    assert tables_in(target) == []


@pytest.mark.parametrize(
    "change, said",
    [
        (lambda i: i.update(method="gin USING btree"), "uses method"),
        (lambda i: i.update(options={"fillfactor": "90); DROP TABLE x; --"}), "not plain words or numbers"),
        (lambda i: i["columns"][0].update(opclass="jsonb_path_ops, (1/0)"), "not a plain name"),
        (lambda i: i["columns"][0].update(name="cmetadata) WHERE (1/0 = 1"), "names a column"),
        (lambda i: i["columns"][0].update(opclass="no_such_ops"), "no operator class 'no_such_ops'"),
    ],
)
def test_an_index_description_that_is_not_allowed_is_refused(backup_set, empty_database, change, said):
    url, target = empty_database
    edit(backup_set, lambda data: change(data["tables"][EMBEDDING]["schema"]["indexes"][0]))

    restored = worker_cli("restore", str(backup_set), "--db-connection", url)

    assert restored.returncode == 1, restored.stdout
    assert said in restored.stdout and "nothing was written" in restored.stdout
    assert tables_in(target) == []


def test_a_table_the_configuration_does_not_name_is_never_touched(backup_set, store, db):
    # An unrelated table, and a CSV for it that verifies: the manifest lists it too.
    with db.cursor() as cur:
        cur.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text)")
        cur.execute("INSERT INTO accounts VALUES (1, 'alice'), (2, 'bob')")
    forged = backup_set.parent / "accounts_forged.csv"
    forged.write_bytes(b"id,owner\n1,mallory\n")
    digest = hashlib.sha256(forged.read_bytes()).hexdigest()

    def add_table(data):
        data["tables"]["accounts"] = {
            "file": forged.name,
            "rows": 1,
            "bytes": forged.stat().st_size,
            "sha256": digest,
            "compression": "none",
            "duration": 0.0,
            "columns": [["id", "integer"], ["owner", "text"]],
            "schema": {"columns": [{"name": "id", "type": "integer", "not_null": True}]},
        }
        data["tables"]["accounts"]["schema"]["columns"].append(
            {"name": "owner", "type": "text", "not_null": False}
        )

    edit(backup_set, add_table)
    try:
        restored = worker_cli("restore", str(backup_set))
        with pytest.raises(RestoreError, match="beyond VECTOR_SUPPORTED_TABLES"):
            relative = backup_set.relative_to(backup_set.parents[2])
            restore_backup_set.delay(str(relative)).get(timeout=60)

        assert restored.returncode == 1
        assert "'accounts' beyond VECTOR_SUPPORTED_TABLES" in restored.stdout
        with db.cursor() as cur:
            cur.execute("SELECT owner FROM accounts ORDER BY id")
            assert [r[0] for r in cur.fetchall()] == ["alice", "bob"]
        assert count_rows(store.conn, EMBEDDING) == 0, "nothing of the set was restored either"
    finally:
        with db.cursor() as cur:
            cur.execute("DROP TABLE accounts")


def test_an_old_manifest_s_sql_is_never_run_yet_it_restores_into_existing_tables(
    backup_set, store, empty_database
):
    url, target = empty_database

    def to_format_1(data):
        data["format_version"] = 1
        for entry in data["tables"].values():
            del entry["schema"]
            entry["ddl"] = [
                "CREATE TABLE pwned (x int)",
                "DROP TABLE IF EXISTS langchain_pg_collection CASCADE",
            ]

    edit(backup_set, to_format_1)

    refused = worker_cli("restore", str(backup_set), "--db-connection", url)
    restored = worker_cli("restore", str(backup_set))

    assert refused.returncode == 1 and "restore never runs" in refused.stdout
    assert tables_in(target) == []
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert count_rows(store.conn, EMBEDDING) == 300
    assert "pwned" not in tables_in(store.conn)


def test_an_old_manifest_carrying_a_description_never_has_it_used(backup_set, empty_database):
    url, target = empty_database

    def old_with_sql_in_an_action(data):
        data["format_version"] = 1
        key = data["tables"][EMBEDDING]["schema"]["foreign_keys"][0]
        key["on_delete"] = "CASCADE; CREATE TABLE pwned (x int); --"

    edit(backup_set, old_with_sql_in_an_action)

    restored = worker_cli("restore", str(backup_set), "--db-connection", url)

    assert restored.returncode == 1 and "restore never runs" in restored.stdout
    assert tables_in(target) == []


def test_sql_in_a_foreign_key_action_is_refused_by_verify(backup_set):
    def inject(data):
        key = data["tables"][EMBEDDING]["schema"]["foreign_keys"][0]
        key["on_delete"] = "CASCADE; CREATE TABLE pwned (x int); --"

    edit(backup_set, inject)

    checked = worker_cli("verify", str(backup_set))
    assert checked.returncode == 1 and "has an unknown action" in checked.stdout


def test_retention_never_removes_files_a_forged_old_manifest_names(backup_set):
    from common.retention import RetentionPolicy, apply_retention

    directory = backup_set.parent
    real = json.loads(backup_set.read_text())
    forged = dict(real, timestamp="20000101_000000")
    planted = directory / "manifest_20000101_000000.json"
    planted.write_text(json.dumps(forged))
    os.utime(planted, (946684800, 946684800))  # an old set, as far as its file says
    before = sorted(p.name for p in directory.iterdir())

    removed = apply_retention(directory, RetentionPolicy(keep=1), in_use=lambda stamp: False)

    assert removed == ["20000101_000000"]
    after = sorted(p.name for p in directory.iterdir())
    assert after == [n for n in before if n != "manifest_20000101_000000.json"]


def test_a_same_size_edit_that_still_parses_is_caught_while_loading(backup_set, store):
    entry = json.loads(backup_set.read_text())["tables"][EMBEDDING]
    file = backup_set.parent / entry["file"]
    lines = file.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"document", b"dOcUmEnT", 1)  # valid CSV, same size
    file.write_bytes(b"\n".join(lines))

    restored = worker_cli("restore", str(backup_set))

    assert restored.returncode == 1 and "does not match its sha256" in restored.stdout
    assert count_rows(store.conn, EMBEDDING) == 0, "the whole restore was rolled back"
