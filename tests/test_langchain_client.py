"""The proof with a client nobody here wrote: langchain-postgres `PGVector` finds exactly the
same documents after backup -> truncate -> restore as before."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_postgres import PGVector
from sqlalchemy import create_engine

from tasks.pipeline import enqueue_vector_management, run_record, run_result
from tests.processes import worker_cli
from worker.sample_store import drop_store

pytestmark = pytest.mark.usefixtures("celery_worker_session")
TOPICS = ["postgres", "celery", "redis", "vectors", "backups", "中文", 'quotes "and", commas']
QUERIES = ["postgres backups", "celery redis", "中文", "nothing like the documents"]


def searches(store: PGVector) -> list[list[tuple]]:
    return [
        [(d.id, d.page_content, d.metadata) for d in store.similarity_search(query, k=5)] for query in QUERIES
    ]


@pytest.fixture
def pgvector_store(db, services):
    drop_store(db)
    engine = create_engine(services["VECTOR_DB_URL"].replace("postgresql://", "postgresql+psycopg://", 1))
    store = PGVector(
        embeddings=DeterministicFakeEmbedding(size=32),
        connection=engine,
        collection_name="proof",
        collection_metadata={"owner": "langchain"},
        use_jsonb=True,
    )
    yield store
    engine.dispose()
    drop_store(db)


def test_similarity_search_returns_the_same_documents_after_truncate_and_restore(pgvector_store, task_id):
    documents = [
        Document(page_content=f"document {i} about {topic}", metadata={"i": i, "topic": topic})
        for i, topic in enumerate(TOPICS * 30)
    ]
    pgvector_store.add_documents(documents, ids=[f"doc-{i}" for i in range(len(documents))])
    before = searches(pgvector_store)
    assert all(len(found) == 5 for found in before)

    answer = enqueue_vector_management(task_id, backup=True, truncate=True)
    result = run_result(run_record(answer["run_id"])).get(timeout=60)
    assert result["truncate_performed"]
    assert result["tables_backed_up"]["langchain_pg_embedding"]["row_count"] == len(documents)
    assert searches(pgvector_store) == [[] for _ in QUERIES]

    restored = worker_cli("restore", result["backup_directory"])
    assert restored.returncode == 0, restored.stdout + restored.stderr

    assert searches(pgvector_store) == before
