"""Flower, as `celery -A worker flower` runs it, shows a running backup's progress."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

import pytest

from tasks.vector_backup import build_vector_workflow, table_results
from tests.processes import project_env, start_logged
from worker.embedded import free_port
from worker.sample_store import add_bulk_rows

pytestmark = pytest.mark.usefixtures("celery_worker_session")
AUTH = "operator:flower-test-secret"


def get(url: str, auth: str | None = AUTH) -> tuple[int, dict]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, {}


@pytest.fixture
def flower(services, tmp_path):
    port = free_port()
    log = tmp_path / "flower.log"
    process = start_logged(
        ["-m", "celery", "-A", "worker", "flower", f"--port={port}", "--address=127.0.0.1"],
        log,
        project_env(FLOWER_BASIC_AUTH=AUTH),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if get(f"{base}/api/workers?refresh=false")[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    yield base
    process.terminate()
    process.wait(10)
    assert "flower-test-secret" not in log.read_text()


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_flower_shows_a_running_backups_progress(flower, store, task_id, monkeypatch):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 150_000, dim=32)
    monkeypatch.setenv("VECTOR_PROGRESS_EVERY", "5000")
    assert get(f"{flower}/api/tasks", auth=None)[0] == 401
    time.sleep(1)  # Flower's event consumer is up

    workflow = build_vector_workflow(task_id, backup=True)
    workflow.freeze()
    # The embedding table has a task per range-split worker; whichever holds it copies.
    embedding_ids = [
        result.id for result, table in table_results(workflow) if table == "langchain_pg_embedding"
    ]
    final = workflow.apply_async()
    seen = []
    while not final.ready():
        for embedding_id in embedding_ids:
            status, info = get(f"{flower}/api/task/info/{embedding_id}")
            if status == 200 and info.get("state") == "PROGRESS":
                seen.append(info)
        time.sleep(0.05)
    final.get(timeout=30)

    assert seen, "Flower never showed the task in PROGRESS"
    # Flower's API and task page show only standard fields: the progress line is the result.
    lines = [info["result"] for info in seen]
    assert all(line.startswith("langchain_pg_embedding: ") for line in lines), lines
    assert any(line.startswith("langchain_pg_embedding: copying ") for line in lines), lines
    assert any(" of ~150,000 rows (" in line for line in lines), lines
    assert len(set(lines)) > 1, "the progress never moved"
