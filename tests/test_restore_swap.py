"""Restore into an indexed, live store: staging tables loaded and indexed beside the live
ones, swapped in by one short transaction (`common.staging`). Real PostgreSQL + pgvector
(HNSW, GIN, btree), a real worker for the backup, `python -m worker restore` as users run it."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg2
import pytest

from common.restore import _RESTORE_LOCK
from common.staging import MARK
from tasks.pipeline import enqueue_vector_management, run_record, run_result
from tests.processes import ROOT, project_env, worker_cli
from worker.sample_store import add_bulk_rows, row_texts

pytestmark = pytest.mark.usefixtures("celery_worker_session")
EMBEDDING, COLLECTION = "langchain_pg_embedding", "langchain_pg_collection"
DIM = 32
ROWS = 3_000
QUERIES = [[random.Random(seed).uniform(-1, 1) for _ in range(DIM)] for seed in range(5)]


def key_of(kind: str) -> str:
    return "id" if kind == "langchain_postgres" else "uuid"


def key_type(kind: str) -> str:
    return "varchar" if kind == "langchain_postgres" else "uuid"


def searches(conn, kind: str, exact: bool = False) -> list[list[str]]:
    """LangChain's similarity search (cosine distance, LIMIT 5) for fixed query vectors:
    through the HNSW index (checked with EXPLAIN), or `exact` (no index: the true
    neighbours, which an approximate index may miss one of on another build)."""
    with conn.cursor() as cur:
        cur.execute("SET hnsw.ef_search = 400")
        cur.execute(f"SET enable_indexscan = {'off' if exact else 'on'}")
        found = []
        for query in QUERIES:
            text = f"SELECT {key_of(kind)}::text FROM {EMBEDDING} ORDER BY embedding <=> %s::vector LIMIT 5"
            cur.execute("EXPLAIN " + text, (str(query),))
            assert ("emb_hnsw" in " ".join(r[0] for r in cur.fetchall())) is not exact
            cur.execute(text, (str(query),))
            found.append([r[0] for r in cur.fetchall()])
        cur.execute("RESET hnsw.ef_search; RESET enable_indexscan")
    return found


def stored_vectors_found_first(conn, kind: str) -> bool:
    """Each of a sample of stored vectors, searched for through the HNSW index, comes
    back first: the index holds the rows it should."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT {key_of(kind)}::text, embedding::text FROM {EMBEDDING} ORDER BY 1 LIMIT 20")
        sample = cur.fetchall()
        for key, vector in sample:
            cur.execute(
                f"SELECT {key_of(kind)}::text FROM {EMBEDDING} ORDER BY embedding <=> %s::vector LIMIT 1",
                (vector,),
            )
            if cur.fetchone()[0] != key:
                return False
    return len(sample) == 20


def shape(conn) -> dict[str, list]:
    """Every index (definition, validity) and constraint of both tables, and their grants."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid), indisvalid FROM pg_index "
            "WHERE indrelid IN (%s::regclass, %s::regclass) ORDER BY 1",
            (EMBEDDING, COLLECTION),
        )
        indexes = cur.fetchall()
        cur.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid IN (%s::regclass, %s::regclass) ORDER BY 1, 2",
            (EMBEDDING, COLLECTION),
        )
        constraints = cur.fetchall()
        cur.execute(
            "SELECT relname, relacl::text, obj_description(oid, 'pg_class') FROM pg_class "
            "WHERE oid IN (%s::regclass, %s::regclass) ORDER BY 1",
            (EMBEDDING, COLLECTION),
        )
        return {"indexes": indexes, "constraints": constraints, "tables": cur.fetchall()}


def dead_rows(conn, table: str) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = %s::regclass", (table,))
        return cur.fetchone()[0]


def staging_tables(conn) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT relname FROM pg_class WHERE relname LIKE '%%\\_\\_restoring%%'")
        return [r[0] for r in cur.fetchall()]


class Indexed:
    def __init__(self, store, directory: Path) -> None:
        self.store, self.directory = store, directory
        self.conn, self.kind = store.conn, store.kind
        self.backed_up = {t: row_texts(self.conn, t) for t in (COLLECTION, EMBEDDING)}
        self.searches = searches(self.conn, self.kind, exact=True)
        self.shape = shape(self.conn)

    def change_after_backup(self) -> None:
        """Rows deleted and added since the backup: a restore must undo both."""
        with self.conn.cursor() as cur:
            cur.execute(f"DELETE FROM {EMBEDDING} WHERE document LIKE 'document 1%%'")
            # This backend's counts reach the shared statistics now, not after the restore.
            cur.execute("SELECT pg_stat_force_next_flush()")
            cur.execute(
                f"INSERT INTO {EMBEDDING} ({key_of(self.kind)}, collection_id, embedding, document) "
                f"SELECT gen_random_uuid()::text::{key_type(self.kind)}, "
                f"%s, array_fill(g::real, ARRAY[{DIM}])::vector, 'added ' || g "
                "FROM generate_series(1, 100) g",
                (self.store.collection_id,),
            )
        self.changed = {t: row_texts(self.conn, t) for t in (COLLECTION, EMBEDDING)}
        assert self.changed != self.backed_up


@pytest.fixture
def indexed(store, task_id, db) -> Indexed:
    """A store with an HNSW, a btree and (langchain_postgres) a GIN index, a grant and a
    comment, backed up by the real chain, then changed."""
    add_bulk_rows(store.conn, store.kind, store.collection_id, ROWS, dim=DIM, random_vectors=True)
    with db.cursor() as cur:
        cur.execute(f"ALTER TABLE {EMBEDDING} ALTER COLUMN embedding TYPE vector({DIM})")
        cur.execute(
            f"CREATE INDEX emb_hnsw ON {EMBEDDING} USING hnsw (embedding vector_cosine_ops) "
            "WITH (m = 16, ef_construction = 100)"
        )
        cur.execute(f"CREATE INDEX emb_document ON {EMBEDDING} (document)")
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'vector_reader'")
        if not cur.fetchone():
            cur.execute("CREATE ROLE vector_reader")
        cur.execute(f"GRANT SELECT ON {EMBEDDING}, {COLLECTION} TO vector_reader")
        cur.execute(f"COMMENT ON TABLE {EMBEDDING} IS 'the store''s vectors'")
        cur.execute(f"ANALYZE {EMBEDDING}")
    answer = enqueue_vector_management(task_id, backup=True)
    result = run_result(run_record(answer["run_id"])).get(timeout=60)
    made = Indexed(store, Path(result["backup_directory"]))
    made.change_after_backup()
    return made


def test_restore_swaps_in_rebuilt_indexes_with_no_dead_rows_and_the_same_searches(indexed):
    done = worker_cli("restore", str(indexed.directory))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "(replace, swap)" in done.stdout
    conn = indexed.conn
    for table, rows in indexed.backed_up.items():
        assert row_texts(conn, table) == rows
    assert shape(conn) == indexed.shape  # same index names and definitions, all valid; keys; grants
    assert all(valid for _name, _definition, valid in shape(conn)["indexes"])
    assert dead_rows(conn, EMBEDDING) == 0
    assert searches(conn, indexed.kind, exact=True) == indexed.searches
    assert len(searches(conn, indexed.kind)) == len(QUERIES)  # through the new HNSW index
    assert stored_vectors_found_first(conn, indexed.kind)
    assert staging_tables(conn) == []
    with conn.cursor() as cur:  # the grant and the foreign key hold on the new tables
        cur.execute("SELECT has_table_privilege('vector_reader', %s, 'SELECT')", (EMBEDDING,))
        assert cur.fetchone()[0]
        with pytest.raises(psycopg2.errors.ForeignKeyViolation):
            cur.execute(
                f"INSERT INTO {EMBEDDING} ({key_of(indexed.kind)}, collection_id) "
                "VALUES (%s, gen_random_uuid())",
                (str(uuid.uuid4()),),
            )


def test_a_failed_index_build_leaves_the_old_rows_serving(indexed, db):
    """A unique index of the live table that the backed-up rows violate (they share one
    collection) fails while the staging table's indexes are built."""
    with db.cursor() as cur:
        cur.execute(f"DELETE FROM {EMBEDDING} WHERE ctid <> (SELECT min(ctid) FROM {EMBEDDING})")
        cur.execute(f"CREATE UNIQUE INDEX emb_one_per_collection ON {EMBEDDING} (collection_id)")
    before, rows = shape(db), row_texts(db, EMBEDDING)

    done = worker_cli("restore", str(indexed.directory))

    assert done.returncode == 1
    assert "keys and indexes" in done.stdout and "still serves its old rows" in done.stdout
    assert row_texts(db, EMBEDDING) == rows
    assert shape(db) == before
    assert staging_tables(db) == []


def test_a_restore_cancelled_in_the_middle_of_the_hnsw_build_changes_nothing(indexed, db):
    restoring = start_restore(indexed.directory, VECTOR_RESTORE_MAINTENANCE_WORK_MEM="1MB")
    with db.cursor() as cur:
        while restoring.poll() is None:
            # The index itself is not visible yet (its transaction is open): its phase is.
            cur.execute(
                "SELECT pid FROM pg_stat_progress_create_index "
                "WHERE relid::regclass::text LIKE %s AND phase = 'building index: loading tuples'",
                ("%\\_\\_restoring",),
            )
            building = cur.fetchone()
            if building:
                cur.execute("SELECT pg_cancel_backend(%s)", building)
                break
            time.sleep(0.001)
    out, _ = restoring.communicate(timeout=60)

    assert building, "the restore ended before its HNSW build was seen"
    assert restoring.returncode == 1, out
    assert "keys and indexes" in out and "canceling statement" in out
    for table, rows in indexed.changed.items():
        assert row_texts(db, table) == rows
    assert shape(db) == indexed.shape
    assert staging_tables(db) == []
    assert len(searches(db, indexed.kind)) == len(QUERIES)


def start_restore(directory: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "restore", str(directory)],
        cwd=ROOT,
        env=project_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )


class Reader(threading.Thread):
    """LangChain's search and a row count, again and again on one connection, timed."""

    def __init__(self, url: str, kind: str) -> None:
        super().__init__(daemon=True)
        self.url, self.kind = url, kind
        self.longest, self.counts, self.errors = 0.0, [], []
        self.done = threading.Event()

    def run(self) -> None:
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not self.done.is_set():
                started = time.monotonic()
                try:
                    cur.execute(
                        f"SELECT {key_of(self.kind)} FROM {EMBEDDING} "
                        "ORDER BY embedding <=> %s::vector LIMIT 5",
                        (str(QUERIES[0]),),
                    )
                    cur.fetchall()
                    cur.execute(f"SELECT count(*) FROM {EMBEDDING}")
                    self.counts.append(cur.fetchone()[0])
                except psycopg2.Error as exc:
                    self.errors.append(str(exc))
                self.longest = max(self.longest, time.monotonic() - started)
                time.sleep(0.005)
        conn.close()


def test_searches_keep_answering_from_the_old_rows_until_a_short_swap(indexed, services):
    reader = Reader(services["VECTOR_DB_URL"], indexed.kind)
    reader.start()
    time.sleep(0.2)
    restoring = start_restore(indexed.directory, VECTOR_RESTORE_MAINTENANCE_WORK_MEM="1MB")
    out, _ = restoring.communicate(timeout=120)
    time.sleep(0.2)
    reader.done.set()
    reader.join(timeout=10)

    assert restoring.returncode == 0, out
    assert reader.errors == []
    assert reader.longest < 2.0
    old, new = len(indexed.changed[EMBEDDING]), len(indexed.backed_up[EMBEDDING])
    assert reader.counts[-1] == new
    # Answered from the old rows through the load and the build, then from the new ones.
    assert reader.counts.count(old) > 20
    assert set(reader.counts) == {old, new}


def test_a_swap_the_tables_never_become_free_for_gives_up_and_changes_nothing(indexed, services, db):
    holder = psycopg2.connect(services["VECTOR_DB_URL"])
    with holder.cursor() as cur:  # an open transaction that has read the table holds it
        cur.execute(f"SELECT count(*) FROM {EMBEDDING}")
    try:
        restoring = start_restore(
            indexed.directory, VECTOR_RESTORE_LOCK_TIMEOUT="0.2", VECTOR_RESTORE_SWAP_WAIT="2"
        )
        out, _ = restoring.communicate(timeout=120)
    finally:
        holder.rollback()
        holder.close()

    assert restoring.returncode == 1, out
    assert "stayed in use for 2s" in out and "still serves its old rows" in out
    for table, rows in indexed.changed.items():
        assert row_texts(db, table) == rows
    assert staging_tables(db) == []


def test_a_table_a_view_depends_on_is_restored_in_place_with_rebuilt_indexes(indexed, db):
    with db.cursor() as cur:
        cur.execute(f"CREATE VIEW embedding_documents AS SELECT document FROM {EMBEDDING}")

    done = worker_cli("restore", str(indexed.directory))

    assert done.returncode == 0, done.stdout
    assert f"in place ({EMBEDDING}: a view or rule uses it)" in done.stdout
    for table, rows in indexed.backed_up.items():
        assert row_texts(db, table) == rows
    assert shape(db) == indexed.shape
    assert dead_rows(db, EMBEDDING) == 0  # emptied by TRUNCATE, not DELETE
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM embedding_documents")
        assert cur.fetchone()[0] == len(indexed.backed_up[EMBEDDING])


def test_staging_tables_left_by_a_crash_are_dropped_and_a_table_that_only_has_the_name_is_kept(indexed, db):
    with db.cursor() as cur:
        cur.execute(f"CREATE TABLE {EMBEDDING}__restoring (x int)")
        cur.execute(f"COMMENT ON TABLE {EMBEDDING}__restoring IS %s", (MARK,))

    assert worker_cli("restore", str(indexed.directory)).returncode == 0
    assert staging_tables(db) == []

    with db.cursor() as cur:
        cur.execute(f"CREATE TABLE {COLLECTION}__restoring (x int)")
    try:
        done = worker_cli("restore", str(indexed.directory))
        assert done.returncode == 1
        assert (
            f"a table named {COLLECTION}__restoring exists and is not a restore's staging table"
            in done.stdout
        )
        assert staging_tables(db) == [f"{COLLECTION}__restoring"]
    finally:
        with db.cursor() as cur:
            cur.execute(f"DROP TABLE {COLLECTION}__restoring")


def test_a_second_restore_into_the_same_database_is_refused_while_one_runs(indexed, services, db):
    other = psycopg2.connect(services["VECTOR_DB_URL"])
    try:
        with other.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_RESTORE_LOCK,))
        done = worker_cli("restore", str(indexed.directory))
    finally:
        other.close()

    assert done.returncode == 1
    assert "another restore into this database is running" in done.stdout
    for table, rows in indexed.changed.items():
        assert row_texts(db, table) == rows


def test_a_large_file_is_loaded_by_several_connections_into_the_staging_table(store, task_id, db):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 20_000, dim=128, random_vectors=True)
    answer = enqueue_vector_management(task_id, backup=True)
    result = run_result(run_record(answer["run_id"])).get(timeout=120)
    assert result["tables_backed_up"][EMBEDDING]["file_size_bytes"] > 16 << 20  # two pieces or more
    before = row_texts(db, EMBEDDING)
    with db.cursor() as cur:
        cur.execute(f"DELETE FROM {EMBEDDING} WHERE document LIKE 'document 1%%'")

    done = worker_cli("restore", result["backup_directory"], "--jobs", "2")

    assert done.returncode == 0, done.stdout
    assert f"✓ {EMBEDDING}: 20,000 rows restored by 2 loaders" in done.stdout
    assert row_texts(db, EMBEDDING) == before
