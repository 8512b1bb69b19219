"""Log output of the real processes: LOG_FORMAT=json gives one JSON object per line, and
no format ever shows a password."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import FAKE_PASSWORD
from tests.processes import project_env, run_script, start_logged
from tests.test_processes import isolated
from tests.test_worker_killed import start_worker, stop
from worker.embedded import free_port
from worker.logs import configure
from worker.sample_store import add_awkward_rows

SEND_WITH_DB = """
import json, sys
from tasks.pipeline import enqueue_vector_management, run_record, run_result
answer = enqueue_vector_management(sys.argv[1], backup=True, db_connection=sys.argv[2])
print(json.dumps(run_result(run_record(answer["run_id"])).get(timeout=60)))
"""


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_url_password_is_redacted_in_any_format(tmp_path):
    logger = logging.getLogger("tests.redaction")
    handler = logging.FileHandler(tmp_path / "out.log")
    logger.addHandler(handler)
    configure(logger)
    try:
        logger.warning(
            "cannot reach postgresql://vector:%s@db:5432/x or redis://:%s@r:6379/0", "s3cr3t!", "pw2"
        )
    finally:
        logger.removeHandler(handler)
        handler.close()
    text = (tmp_path / "out.log").read_text()
    assert "s3cr3t!" not in text and "pw2" not in text
    assert "postgresql://vector:***@db:5432/x" in text and "redis://:***@r:6379/0" in text


@pytest.mark.slow
@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_worker_with_log_format_json_writes_json_lines_without_secrets(store, services, task_id, tmp_path):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    broker = isolated(services["CELERY_BROKER_URL"], 8)
    env = project_env(CELERY_BROKER_URL=broker, CELERY_RESULT_BACKEND=broker, LOG_FORMAT="json")
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        sent = run_script(SEND_WITH_DB, task_id, services["VECTOR_DB_URL"], env=env)
    finally:
        stop(worker)

    assert sent.returncode == 0, sent.stderr
    text = log.read_text()
    entries = json_lines(text)
    received = [e for e in entries if "vector.backup_table" in e["message"] and "received" in e["message"]]
    # One task for the collection, two for the (range-split) embedding table.
    assert len(received) == 3 and all(e["level"] == "INFO" for e in received)
    succeeded = [
        e for e in entries if "vector.backup_vector_tables[" in e["message"] and "succeeded" in e["message"]
    ]
    assert len(succeeded) == 1 and succeeded[0]["task_name"] == "vector.backup_vector_tables"
    assert succeeded[0]["message"].startswith(f"Task vector.backup_vector_tables[{succeeded[0]['task_id']}]")
    assert FAKE_PASSWORD not in text


@pytest.mark.usefixtures("celery_worker_session")
def test_the_api_with_log_format_json_logs_each_request_as_json(services, tmp_path):
    port = free_port()
    log = tmp_path / "api.log"
    api = start_logged(["-m", "worker", "api", "--port", str(port)], log, project_env(LOG_FORMAT="json"))
    try:
        body = json.dumps({"db_connection": f"postgresql://u:{FAKE_PASSWORD}@elsewhere:5432/db"}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v0/data_pipeline/vector/backup",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(request, timeout=5)
            except urllib.error.HTTPError as error:
                assert error.code == 403
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        api.terminate()
        api.wait(10)

    text = log.read_text()
    entries = json_lines(text)
    assert any(
        e["message"].startswith("POST /api/v0/data_pipeline/vector/backup -> 403 in ") for e in entries
    ), text
    assert FAKE_PASSWORD not in text
