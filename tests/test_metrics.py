"""`GET /metrics` parsed with prometheus_client's own parser: its values are those of the
runs made, read from their manifests and records."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.config import load_settings
from tasks.vector_backup import build_vector_workflow
from worker.api import create_app
from worker.celery_app import release_pending_results
from worker.check import record
from worker.sample_store import add_bulk_rows

pytestmark = pytest.mark.usefixtures("celery_worker_session")


def scrape(client) -> dict[tuple[str, tuple], float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.mimetype == "text/plain"
    values = {}
    for family in text_string_to_metric_families(answer.get_data(as_text=True)):
        for sample in family.samples:
            values[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return values


def runs(values, metric: str, state: str) -> float:
    return values.get((f"vector_backup_{metric}", (("state", state),)), 0.0)


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_metrics_are_the_runs_made(store, task_id, monkeypatch):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 1_234)
    client = create_app().test_client()
    before = scrape(client)

    done = build_vector_workflow(task_id, backup=True, truncate=True).apply_async().get(timeout=60)
    monkeypatch.setenv("VECTOR_SUPPORTED_TABLES", "langchain_pg_collection,no_such_table")
    monkeypatch.setenv("VECTOR_TRUNCATE_TABLES", "")
    failed = build_vector_workflow(task_id + "_b", backup=True).apply_async()
    with pytest.raises(Exception, match="no_such_table"):
        failed.get(timeout=60)
    monkeypatch.delenv("VECTOR_SUPPORTED_TABLES")
    monkeypatch.delenv("VECTOR_TRUNCATE_TABLES")
    record({"code": 1})
    after = scrape(client)
    release_pending_results()

    assert runs(after, "runs", "succeeded") - runs(before, "runs", "succeeded") == 1
    assert runs(after, "runs", "failed") - runs(before, "runs", "failed") == 1
    assert runs(after, "truncates", "succeeded") - runs(before, "truncates", "succeeded") == 1
    for table, info in done["tables_backed_up"].items():
        labels = (("directory", task_id), ("table", table))
        assert after["vector_backup_last_rows", labels] == info["row_count"]
        assert after["vector_backup_last_bytes", labels] == info["file_size_bytes"]
        assert after["vector_backup_last_duration_seconds", labels] == pytest.approx(info["duration"])
    assert (
        after["vector_backup_last_rows", (("directory", task_id), ("table", "langchain_pg_embedding"))]
        == 1_234
    )
    stamp = load_settings().backup_storage(task_id).stat(done["manifest"]).mtime
    assert after["vector_backup_last_success_timestamp_seconds", (("directory", task_id),)] == stamp
    assert after["vector_backup_check_status", ()] == 1
