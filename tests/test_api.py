"""The HTTP API against real Redis, real PostgreSQL and a real worker."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis

from common.config import load_api_settings, load_settings
from tests.conftest import FAKE_PASSWORD
from tests.processes import start_logged
from worker import app as celery_app
from worker.api import create_app
from worker.celery_app import release_pending_results
from worker.embedded import free_port
from worker.sample_store import add_awkward_rows, add_bulk_rows, count_rows

pytestmark = pytest.mark.usefixtures("celery_worker_session")
BACKUP = "/api/v0/data_pipeline/vector/backup"
SETS = "/api/v0/data_pipeline/vector/backups"


@pytest.fixture
def client(services):
    yield create_app().test_client()
    release_pending_results()


@pytest.fixture
def broker(services):
    return redis.Redis.from_url(services["CELERY_BROKER_URL"])


def runs_sent(broker) -> int:
    return len(broker.keys("vector:run:*"))


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def post(client, body, **kwargs):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(BACKUP, data=data, content_type="application/json", **kwargs)


def test_backup_with_an_empty_body_waits_and_returns_the_seeds_data(client, store, task_root):
    add_awkward_rows(store.conn, store.kind, store.collection_id)

    answer = post(client, {})

    body = answer.get_json()
    assert answer.status_code == 200, body
    assert body["code"] == 200 and body["success"] is True
    data = body["data"]
    assert data["backup_performed"] is True and data["truncate_performed"] is False
    # No API_TOKEN: answers never show an absolute path, only one under the task root.
    assert data["backup_directory"] == "vector_bak"
    embedding = data["tables_backed_up"]["langchain_pg_embedding"]
    assert embedding["row_count"] == 10 and embedding["backup_file"].endswith(".csv")
    assert data["errors"] == [] and data["timestamp"][-6] in "+-"  # ISO-8601 with offset
    assert (task_root / "vector_bak" / embedding["backup_file"]).is_file()


def test_a_request_with_no_body_works(client, store):
    answer = client.post(BACKUP)
    assert answer.status_code == 200, answer.get_json()


def test_both_false_does_nothing(client, broker, services):
    before = runs_sent(broker)
    answer = post(client, {"backup_vector_tables": False, "truncate_vector_tables": False})
    assert answer.status_code == 200
    assert answer.get_json()["data"]["backup_performed"] is False
    assert "nothing was done" in answer.get_json()["data"]["response"]
    assert runs_sent(broker) == before


def test_missing_task_directory_is_404(client, broker, task_id):
    before = runs_sent(broker)
    answer = post(client, {"task_id": task_id})
    assert answer.status_code == 404
    assert answer.get_json()["data"]["error_type"] == "RESOURCE_NOT_FOUND"
    assert runs_sent(broker) == before


BAD_BODIES = [
    b"{not json",
    b"[]",
    b'"a string"',
    b"\xff\xfe",
    {"truncate_vector_tables": "true"},
    {"backup_vector_tables": 1},
    {"wait": "no"},
    {"task_id": 42},
    {"surprise": True},
    {"task_id": "has-dash"},
    {"task_id": "../etc"},
    {"task_id": "a\u0000b"},
    {"task_id": "x" * 10_000},
    {"task_id": ""},
    {"db_connection": "mysql://u@h/db"},
    {"db_connection": 7},
]


@pytest.mark.parametrize("body", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_bad_input_is_400_and_sends_nothing(client, broker, task_root, body):
    before, files = runs_sent(broker), tree(task_root)
    answer = post(client, body)
    payload = answer.get_json()
    assert answer.status_code == 400, payload
    assert payload["success"] is False and payload["data"]["error_type"] == "INVALID_PARAMS"
    assert runs_sent(broker) == before and tree(task_root) == files


def test_a_huge_body_is_413_and_sends_nothing(client, broker):
    before = runs_sent(broker)
    answer = post(client, json.dumps({"task_id": "x" * 200_000}))
    assert answer.status_code == 413 and answer.get_json()["success"] is False
    assert runs_sent(broker) == before


def test_a_database_host_off_the_allow_list_is_403_without_the_password(client, broker):
    before = runs_sent(broker)
    answer = post(client, {"db_connection": f"postgresql://u:{FAKE_PASSWORD}@elsewhere.example:5432/db"})
    assert answer.status_code == 403
    assert "elsewhere.example" in answer.get_json()["data"]["response"]
    assert FAKE_PASSWORD not in answer.get_data(as_text=True)
    assert runs_sent(broker) == before


def test_unreachable_broker_or_database_is_503_with_can_retry(services):
    settings = load_settings()
    no_broker = dataclasses.replace(
        settings, runs=dataclasses.replace(settings.runs, redis_url="redis://127.0.0.1:1/0")
    )
    no_database = dataclasses.replace(
        settings, database=dataclasses.replace(settings.database, port=1, host="127.0.0.1")
    )
    for broken in (no_broker, no_database):
        api = dataclasses.replace(load_api_settings(), allowed_db_hosts=("127.0.0.1",))
        answer = post(create_app(broken, api).test_client(), {})
        body = answer.get_json()
        assert answer.status_code == 503, body
        assert body["data"]["error_type"] == "SERVICE_UNAVAILABLE" and body["data"]["can_retry"] is True
        assert FAKE_PASSWORD not in json.dumps(body)


def test_a_failed_run_is_500_with_the_reason(services, store, monkeypatch):
    monkeypatch.setenv("VECTOR_SUPPORTED_TABLES", "langchain_pg_collection,no_such_table")
    monkeypatch.setenv("VECTOR_TRUNCATE_TABLES", "")
    answer = post(create_app().test_client(), {})
    body = answer.get_json()
    assert answer.status_code == 500, body
    assert body["data"]["error_type"] == "BACKUP_FAILED"
    assert "no_such_table" in body["data"]["response"] and body["data"]["can_retry"] is True


def test_no_wait_gives_202_then_status_polling_reaches_the_result(client, store, task_id, task_root):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 120_000)
    (task_root / task_id).mkdir()

    answer = post(client, {"task_id": task_id, "wait": False, "truncate_vector_tables": True})
    assert answer.status_code == 202, answer.get_json()
    data = answer.get_json()["data"]
    assert data["status_url"] == f"{BACKUP}/{data['job_id']}"
    deadline, seen = time.monotonic() + 60, set()
    while time.monotonic() < deadline:
        status = client.get(data["status_url"]).get_json()["data"]
        seen |= {t["state"] for t in status["tables"].values()}
        if status["state"] in ("SUCCESS", "FAILURE"):
            break
        time.sleep(0.1)
    assert status["state"] == "SUCCESS", status
    assert status["result"]["truncate_performed"] is True
    assert status["tables"]["langchain_pg_embedding"]["row_count"] == 120_000
    assert "PROGRESS" in seen or "STARTED" in seen or "PENDING" in seen
    assert count_rows(store.conn, "langchain_pg_embedding") == 0


def test_sets_are_listed_and_files_download_byte_for_byte(client, store, task_id, task_root):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    (task_root / task_id).mkdir()
    done = post(client, {"task_id": task_id}).get_json()["data"]

    sets = client.get(SETS).get_json()["data"]["sets"]
    mine = next(s for s in sets if s["task_id"] == task_id)
    assert mine["tables"]["langchain_pg_embedding"]["rows"] == 10
    for name in mine["files"]:
        download = client.get(f"{SETS}/{mine['set']}/files/{name}")
        assert download.status_code == 200
        assert download.data == (task_root / done["backup_directory"] / name).read_bytes()
    manifest = client.get(f"{SETS}/{mine['set']}").get_json()["data"]["manifest"]
    assert manifest["run_id"] == done["job_id"]

    # A download resumes and revalidates: ranges, and the file's sha256 as its ETag.
    entry = manifest["tables"]["langchain_pg_embedding"]
    url = f"{SETS}/{mine['set']}/files/{entry['file']}"
    whole = client.get(url)
    assert whole.headers["ETag"] == f'"{entry["sha256"]}"' and whole.headers["Last-Modified"]
    part = client.get(url, headers={"Range": "bytes=10-19", "If-Range": whole.headers["ETag"]})
    assert part.status_code == 206 and part.data == whole.data[10:20]
    assert client.get(url, headers={"If-None-Match": whole.headers["ETag"]}).status_code == 304
    assert client.get(url, headers={"Range": f"bytes={len(whole.data) + 5}-"}).status_code == 416


@pytest.mark.parametrize(
    "path",
    [
        "{s}/files/..%2F..%2Fsecrets",
        "{s}/files/vector_backup_log.txt",
        "{s}/files/%2Fetc%2Fpasswd",
        "..%2F..~20250101_000000/files/x.csv",
        "~..%2F20250101/files/x.csv",
        "nope/files/x.csv",
    ],
)
def test_downloads_cannot_leave_the_set(client, store, task_id, task_root, path):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    (task_root / task_id).mkdir()
    post(client, {"task_id": task_id})
    (task_root / "secrets").write_text("not for download")
    mine = next(s for s in client.get(SETS).get_json()["data"]["sets"] if s["task_id"] == task_id)

    answer = client.get(f"{SETS}/" + path.format(s=mine["set"]))

    assert answer.status_code == 404
    assert b"not for download" not in answer.data


def test_bearer_token_is_required_when_set(services, monkeypatch):
    monkeypatch.setenv("API_TOKEN", "t0ken")
    web = create_app().test_client()
    assert web.get(SETS).status_code == 401
    assert web.get(SETS, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert web.get(SETS, headers={"Authorization": "Bearer t0ken"}).status_code == 200


def collect_task_events(stop: threading.Event, events: list) -> None:
    with celery_app.connection_for_read() as connection:
        receiver = celery_app.events.Receiver(connection, handlers={"*": events.append})
        while not stop.is_set():
            try:
                receiver.capture(limit=None, timeout=0.5, wakeup=False)
            except TimeoutError:
                continue


def test_the_db_connection_password_reaches_no_response_log_result_or_event(
    client, store, services, task_id, task_root, broker
):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    (task_root / task_id).mkdir()
    url = services["VECTOR_DB_URL"]
    assert FAKE_PASSWORD in url
    events, stop = [], threading.Event()
    listener = threading.Thread(target=collect_task_events, args=(stop, events))
    listener.start()
    try:
        time.sleep(0.5)
        answer = post(client, {"task_id": task_id, "db_connection": url, "truncate_vector_tables": True})
        status = client.get(f"{BACKUP}/{answer.get_json()['data']['job_id']}")
        time.sleep(1)
    finally:
        stop.set()
        listener.join()

    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["data"]["truncate_performed"] is True
    assert events, "no task events were captured"
    assert FAKE_PASSWORD not in json.dumps(events, default=str)
    for text in (answer.get_data(as_text=True), status.get_data(as_text=True)):
        assert FAKE_PASSWORD not in text
    for key in broker.keys("*"):
        value = broker.dump(key) or b""
        assert FAKE_PASSWORD.encode() not in value, f"the password is stored under {key!r}"
    for log in task_root.rglob("*.txt"):
        assert FAKE_PASSWORD not in log.read_text()


def call(port: int, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{BACKUP}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=90) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_the_seeds_five_curl_examples_against_python_m_worker_api(store, services, task_root, tmp_path):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    task = "task_20250721_213627"
    (task_root / task).mkdir(exist_ok=True)
    port = free_port()
    log = tmp_path / "api.log"
    server = start_logged(["-m", "worker", "api", "--port", str(port)], log)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v0/openapi.json", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        examples = [
            {},
            {"task_id": task, "truncate_vector_tables": False},
            {"truncate_vector_tables": False},
            {"task_id": task, "truncate_vector_tables": True},
            {"task_id": task, "db_connection": services["VECTOR_DB_URL"], "truncate_vector_tables": False},
        ]
        answers = [call(port, body) for body in examples]
    finally:
        server.terminate()
        server.wait(10)

    for (status, body), example in zip(answers, examples, strict=True):
        assert status == 200, (example.keys(), body)
        assert set(body) == {"code", "success", "message", "data"} and body["success"] is True
        data = body["data"]
        for key in (
            "response",
            "backup_performed",
            "truncate_performed",
            "backup_directory",
            "tables_backed_up",
            "truncate_results",
            "errors",
            "duration",
            "timestamp",
        ):
            assert key in data, key
        expected_dir = f"{task}/vector_bak" if "task_id" in example else "vector_bak"
        assert data["backup_directory"] == expected_dir
        assert str(task_root) not in json.dumps(body)
        assert FAKE_PASSWORD not in json.dumps(body)
    # Example 5 is deduplicated onto example 2's run: its URL must not linger in Redis.
    assert answers[4][1]["data"]["job_id"] == answers[1][1]["data"]["job_id"]
    assert redis.Redis.from_url(services["CELERY_BROKER_URL"]).keys("vector:run-db:*") == []
    assert answers[3][1]["data"]["truncate_performed"] is True
    assert answers[3][1]["data"]["truncate_results"]["langchain_pg_embedding"]["rows_before"] == 10
    assert FAKE_PASSWORD not in log.read_text()
