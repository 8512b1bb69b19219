"""Backups in S3-compatible object storage (`VECTOR_STORAGE_URL=s3://…`), against a real
S3 endpoint over HTTP: moto's server, or `TEST_S3_URL`."""

from __future__ import annotations

import pytest

from common.config import load_settings
from common.exceptions import TruncateRefusedError
from common.manifest import verify_set
from tasks.vector_backup import build_vector_workflow, truncate_vector_tables
from tests.runs import backup_half_of_truncate_run
from worker.sample_store import add_awkward_rows, add_bulk_rows, count_rows

pytestmark = pytest.mark.usefixtures("celery_worker_session")
TIMEOUT = 90


def test_chain_with_truncate_on_s3(store, task_id, task_root, s3_root):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    add_bulk_rows(store.conn, store.kind, store.collection_id, 2_000)
    embedded = count_rows(store.conn, "langchain_pg_embedding")

    result = build_vector_workflow(task_id, backup=True, truncate=True).apply_async().get(timeout=TIMEOUT)

    directory = f"{s3_root}/{task_id}/vector_bak"
    assert result["backup_performed"] and result["truncate_performed"] and result["errors"] == []
    assert result["backup_directory"] == directory
    assert result["tables_backed_up"]["langchain_pg_embedding"]["row_count"] == embedded
    assert count_rows(store.conn, "langchain_pg_embedding") == 0
    assert not (task_root / task_id).exists()  # nothing on the worker's disk
    storage = load_settings().backup_storage(task_id)
    assert storage.names() == sorted(
        [i["backup_file"] for i in result["tables_backed_up"].values()]
        + [result["manifest"], "vector_backup_log.txt"]
    )
    assert storage.pending() == []
    manifest = verify_set(f"{directory}/{result['manifest']}")
    assert manifest["tables"]["langchain_pg_embedding"]["rows"] == embedded
    log = storage.open("vector_backup_log.txt").read().decode()
    assert log.startswith("=== Vector Table Backup Log ===") and "TRUNCATED" in log


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
@pytest.mark.parametrize("change", ["deleted", "replaced"])
def test_truncate_refuses_a_set_whose_object_changed_in_s3(store, task_id, s3_root, change):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 300)
    result = backup_half_of_truncate_run(task_id)
    storage = load_settings().backup_storage(task_id)
    name = result["tables_backed_up"]["langchain_pg_embedding"]["backup_file"]
    if change == "deleted":
        storage.delete(name)
    else:
        data = storage.open(name).read()
        storage.client.put_object(Bucket=storage.bucket, Key=storage.key(name), Body=data + b"x")

    with pytest.raises(TruncateRefusedError, match=r"missing|bytes, the backup recorded"):
        truncate_vector_tables.delay(result).get(timeout=TIMEOUT)
    assert count_rows(store.conn, "langchain_pg_embedding") == 300
