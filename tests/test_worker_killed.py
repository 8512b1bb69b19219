"""A worker SIGKILLed while its run holds the database lock blocks it only for the
liveness window: the next run waits, then takes the database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from common.config import load_settings
from tests.processes import run_script, start_logged
from tests.test_processes import isolated
from tests.webhook import Webhook
from worker.sample_store import add_bulk_rows

ROOT = Path(__file__).resolve().parent.parent
# Long enough that the next worker is up (a few seconds on a loaded machine) before it passes.
LIVENESS_WINDOW = 10
SEND_AND_WAIT = """
import json, sys
from tasks.pipeline import enqueue_vector_management, run_record, run_result
answer = enqueue_vector_management(sys.argv[1], backup=True)
print(answer["run_id"], flush=True)
print(json.dumps(run_result(run_record(answer["run_id"])).get(timeout=float(sys.argv[2]))), flush=True)
"""

LOOK = """
import sys
from tasks.pipeline import run_status
print(run_status(sys.argv[1])["state"])
"""


def start_worker(env: dict, log: Path) -> subprocess.Popen:
    argv = ["-m", "celery", "-A", "worker", "worker", "-l", "info", "-c", "2"]
    return start_logged(argv, log, env, start_new_session=True)


def stop(worker: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, sig)
        worker.wait(30)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_after_sigkill_the_next_run_proceeds_once_the_liveness_window_passes(
    store, services, task_id, task_root, tmp_path
):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 1_000)
    with store.conn.cursor() as cur:
        cur.execute(
            "CREATE OR REPLACE VIEW slow_rows AS SELECT g AS n, "
            "CASE WHEN g = 60000 THEN pg_sleep(20)::text END AS pause FROM generate_series(1, 70000) g"
        )
    broker = isolated(services["CELERY_BROKER_URL"], 6)
    webhook = Webhook()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CELERY_BROKER_URL": broker,
        "CELERY_RESULT_BACKEND": broker,
        "VECTOR_LIVENESS_WINDOW": str(LIVENESS_WINDOW),
        "VECTOR_ALERT_WEBHOOK": webhook.url,
    }
    lock_redis = redis.Redis.from_url(broker)
    lock_name = "vector:run-lock:{host}:{port}/{dbname}".format(**load_settings().database.identity)
    log = tmp_path / "workers.log"
    first_worker = start_worker(env, log)
    slow_client = subprocess.Popen(
        [sys.executable, "-c", SEND_AND_WAIT, task_id + "_slow", "120"],
        cwd=ROOT,
        text=True,
        env={**env, "VECTOR_SUPPORTED_TABLES": "slow_rows", "VECTOR_TRUNCATE_TABLES": ""},
        stdout=subprocess.PIPE,
    )
    second_worker = None
    try:
        slow_run = slow_client.stdout.readline().strip()
        assert slow_run, "the slow run was not sent"
        deadline = time.monotonic() + 60
        while lock_redis.get(lock_name) != slow_run.encode() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock_redis.get(lock_name) == slow_run.encode(), "the slow run never took the lock"
        time.sleep(1)  # well inside the copy: 50,000 rows reported, the server now sleeps
        stop(first_worker, signal.SIGKILL)
        killed_at = time.time()
        assert lock_redis.get(lock_name) == slow_run.encode()

        second_worker = start_worker(env, log)
        next_run = run_script(SEND_AND_WAIT, task_id, "60", env=env)
        # Its lock expired by itself; a client looking at it (`worker runs`, `follow`) finds
        # it abandoned and sends the alert, which the live worker delivers.
        looked = run_script(LOOK, slow_run, env=env)
        abandoned = webhook.wait_for(slow_run, 1)
    finally:
        webhook.stop()
        slow_client.kill()
        stop(first_worker, signal.SIGKILL)
        if second_worker is not None:
            stop(second_worker)
        with store.conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%slow_rows%' "
                "AND pid <> pg_backend_pid()"
            )
            cur.execute("DROP VIEW slow_rows")

    assert next_run.returncode == 0, next_run.stderr
    result = json.loads(next_run.stdout.splitlines()[1])
    started = min(t["started_at"] for t in result["tables_backed_up"].values())
    assert (
        result["backup_performed"]
        and result["tables_backed_up"]["langchain_pg_embedding"]["row_count"] == 1_000
    )
    assert started >= killed_at, "the next run must not start while the killed run's lock lives"
    assert f"is busy with run {slow_run}" in log.read_text(), "the next run never waited for the lock"
    assert lock_redis.get(lock_name) is None
    assert not list((task_root / (task_id + "_slow") / "vector_bak").glob("*.csv"))
    assert looked.stdout.strip() == "abandoned", looked.stderr
    assert [p["body"]["event"] for p in abandoned] == ["run_abandoned"]
    assert abandoned[0]["body"]["task_id"] == task_id + "_slow"
