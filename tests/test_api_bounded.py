"""The API always answers, never queues unbounded runs, follows no link, and turns every
malformed input into a 4xx; its log lines cannot be forged."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from common.config import load_settings
from common.exceptions import VectorBackupError
from tasks.pipeline import cancel_run, enqueue_vector_management, wait_for_run
from tasks.vector_backup import run_lock
from tests.processes import project_env, start_logged, worker_cli
from worker.api import create_app
from worker.celery_app import release_pending_results
from worker.embedded import free_port
from worker.sample_store import add_bulk_rows

pytestmark = pytest.mark.usefixtures("celery_worker_session")
BACKUP = "/api/v0/data_pipeline/vector/backup"
SETS = "/api/v0/data_pipeline/vector/backups"


@pytest.fixture
def database_held(services):
    """Another run holds the database: every run sent meanwhile stays live, waiting."""
    holder = run_lock(load_settings(), "holder_for_this_test")
    deadline = time.monotonic() + 60  # an earlier test's run may still be finishing
    while not holder.acquire():
        assert time.monotonic() < deadline, f"the database stayed busy with run {holder.holder()}"
        time.sleep(0.2)
    yield
    holder.release()


def post(port: int, body: dict) -> tuple[int, float, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{BACKUP}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, time.monotonic() - started, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, time.monotonic() - started, json.loads(error.read())


def wait_until_serving(port: int) -> None:
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v0/openapi.json", timeout=2).close()
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError("the API never answered")


def test_a_ninth_request_answers_within_a_second_while_eight_wait(services, database_held, tmp_path):
    port = free_port()
    env = project_env(VECTOR_API_WAIT="15", VECTOR_API_MAX_RUNS="100")
    server = start_logged(
        ["-m", "worker", "api", "--port", str(port), "--threads", "8"], tmp_path / "api.log", env
    )
    try:
        wait_until_serving(port)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            eight = [pool.submit(post, port, {}) for _ in range(8)]
            time.sleep(2)  # the eight are in: those allowed to wait are waiting
            status, took, ninth = post(port, {})
            results = [f.result() for f in eight]
    finally:
        server.terminate()
        server.wait(10)

    for _, _, body in [*results, (status, took, ninth)]:  # they would run once the database is free
        with contextlib.suppress(VectorBackupError):
            cancel_run(body["data"]["job_id"])
    assert status == 202 and took < 1.0, (status, took, ninth)
    waited = [r for r in results if r[1] > 10]
    assert len(waited) == 4, [(r[0], round(r[1], 1)) for r in results]  # VECTOR_API_MAX_WAITING
    assert all(r[0] == 202 for r in results)


def test_past_the_limit_of_live_runs_a_new_run_is_429_naming_one(services, database_held, monkeypatch):
    monkeypatch.setenv("VECTOR_API_MAX_RUNS", "2")
    client = create_app().test_client()
    try:
        first = client.post(BACKUP, json={"wait": False}).get_json()["data"]["job_id"]
        second = client.post(BACKUP, json={"wait": False}).get_json()["data"]["job_id"]
        third = client.post(BACKUP, json={"wait": False})
    finally:
        release_pending_results()
        for job in (first, second):
            cancel_run(job)

    assert third.status_code == 429, third.get_json()
    data = third.get_json()["data"]
    assert data["error_type"] == "TOO_MANY_RUNS" and data["job_id"] in (first, second)
    assert third.headers["Retry-After"] == "30"


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("POST", BACKUP, "[" * 10_000, 400),
        ("POST", BACKUP, '{"task_id": ' + "9" * 5000 + "}", 400),
        ("POST", BACKUP, json.dumps({"task_id": "t1\n"}), 400),
        ("GET", f"{SETS}/{'x' * 6000}~20250101_000000", None, 404),
        ("GET", f"{SETS}/~{'9' * 6000}", None, 404),
        ("GET", f"{SETS}/~..%2F..%2Fetc", None, 404),
    ],
)
def test_malformed_input_is_a_4xx(services, task_root, method, path, body, status):
    client = create_app().test_client()
    try:
        answer = client.open(path, method=method, data=body, content_type="application/json")
    finally:
        release_pending_results()
    assert answer.status_code == status, answer.get_data(as_text=True)[:300]
    assert not [p for p in task_root.iterdir() if "\n" in p.name]


def test_a_newline_in_a_request_path_cannot_forge_a_log_line(services, tmp_path):
    port = free_port()
    log = tmp_path / "api.log"
    server = start_logged(["-m", "worker", "api", "--port", str(port)], log)
    try:
        wait_until_serving(port)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v0/x%0aFORGED%20line", timeout=5)
        except urllib.error.HTTPError as error:
            assert error.code == 404
    finally:
        server.terminate()
        server.wait(10)
    lines = log.read_text().splitlines()
    assert not [line for line in lines if line.startswith("FORGED")]
    assert any("/api/v0/x\\nFORGED line" in line for line in lines)


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_symlink_in_a_backup_directory_is_never_followed(store, task_id, task_root, tmp_path):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 50)
    result = wait_for_run(enqueue_vector_management(task_id, backup=True)["run_id"], 60)
    directory = Path(result["backup_directory"])
    listed = result["tables_backed_up"]["langchain_pg_collection"]["backup_file"]
    secret = tmp_path / "secret.txt"
    secret.write_text("not for anyone\n")
    (directory / listed).unlink()
    (directory / listed).symlink_to(secret)
    client = create_app().test_client()
    try:
        download = client.get(f"{SETS}/{task_id}~{result['timestamp']}/files/{listed}")
    finally:
        release_pending_results()

    assert download.status_code == 404 and b"not for anyone" not in download.data
    checked = worker_cli("verify", str(directory / result["manifest"]))
    assert checked.returncode == 1 and "symbolic link" in checked.stdout
    restored = worker_cli("restore", str(directory / result["manifest"]))
    assert restored.returncode == 1 and "symbolic link" in restored.stdout
