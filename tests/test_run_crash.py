"""A whole worker SIGKILLed mid-COPY of a truncate run: the run is known abandoned within
the liveness window, its lock is freed, the pipeline's retry makes a new run without
`--force`, and the dead run's tasks, redelivered after the visibility timeout, leave the
reloaded table alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis

from common.config import load_settings
from common.run_lock import lock_name
from tests.processes import ROOT
from tests.test_processes import isolated
from tests.test_run_lifecycle import SLOW_VIEW, wait_for_sleeping_copy
from tests.test_worker_killed import start_worker, stop
from worker.sample_store import add_bulk_rows, count_rows

WINDOW = 6  # VECTOR_LIVENESS_WINDOW for this test
VISIBILITY = 20  # CELERY_VISIBILITY_TIMEOUT for this test
TABLES = "langchain_pg_collection,langchain_pg_embedding,slow_rows"


def cli(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def task_meta(broker: redis.Redis, task_id: str) -> dict:
    raw = broker.get(f"celery-task-meta-{task_id}")
    return json.loads(raw) if raw else {}


@pytest.mark.slow
@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_sigkilled_worker_s_run_is_abandoned_retried_and_never_truncates_late(
    store, services, task_id, task_root, tmp_path, db
):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 1_000)
    with db.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS slow_flag CASCADE")
        cur.execute("CREATE TABLE slow_flag (slow boolean)")
        cur.execute("INSERT INTO slow_flag VALUES (true)")
        cur.execute(SLOW_VIEW)
    url = isolated(services["CELERY_BROKER_URL"], 9)
    broker = redis.Redis.from_url(url)
    broker.flushdb()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CELERY_BROKER_URL": url,
        "CELERY_RESULT_BACKEND": url,
        "VECTOR_SUPPORTED_TABLES": TABLES,
        "VECTOR_SPLIT_WORKERS": "1",
        "VECTOR_LIVENESS_WINDOW": str(WINDOW),
        "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY),
    }
    lock_key = lock_name(load_settings().database.identity)
    log = tmp_path / "workers.log"
    workers = [start_worker(env, log)]
    try:
        sent = cli(env, "run", "--task-id", task_id, "--truncate-vector-tables", "--no-wait")
        dead_run = sent.communicate(timeout=60)[0].strip()
        record = json.loads(broker.get(f"vector:run:{dead_run}"))
        slow_task = next(t for t, table in record["tables"].items() if table == "slow_rows")
        wait_for_sleeping_copy(db, dead_run)  # 59,999 rows copied, the COPY goes on
        follower = cli(env, "follow", dead_run, "--timeout", "120")
        time.sleep(1)

        os.killpg(workers[0].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        workers[0].wait(10)
        with db.cursor() as cur:  # the dead run's COPY sleeps on; the next one will not
            cur.execute("UPDATE slow_flag SET slow = false")
        workers.append(start_worker(env, log))  # the worker comes back, as a supervisor restarts it
        retry = cli(env, "run", "--task-id", task_id, "--truncate-vector-tables", "--json")
        freed_after = None
        while time.monotonic() - killed_at < 60:
            if freed_after is None and broker.get(lock_key) != dead_run.encode():
                freed_after = time.monotonic() - killed_at
            if freed_after is not None and follower.poll() is not None:
                break
            time.sleep(0.1)
        followed_after = time.monotonic() - killed_at
        out, err = retry.communicate(timeout=120)
        retried_after = time.monotonic() - killed_at
        follow_out = follower.communicate(timeout=10)[0]

        # The pipeline loads its new training data into the emptied store.
        add_bulk_rows(store.conn, store.kind, store.collection_id, 700)
        # Past the visibility timeout, a worker starting up restores the dead run's
        # unacknowledged task; it must end at once.
        time.sleep(max(0.0, VISIBILITY + 2 - (time.monotonic() - killed_at)))
        workers.append(start_worker(env, log))
        deadline = time.monotonic() + 60
        while task_meta(broker, slow_task).get("status") != "FAILURE" and time.monotonic() < deadline:
            time.sleep(0.2)
        redelivered = task_meta(broker, slow_task)
        time.sleep(2)  # a truncate, were one coming, would have run by now
        rows_after = count_rows(store.conn, "langchain_pg_embedding")
    finally:
        for worker in workers:
            stop(worker, signal.SIGKILL)
        with db.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE '%slow_rows%' AND pid <> pg_backend_pid()"
            )
            cur.execute("DROP TABLE slow_flag CASCADE")

    # Known dead, and its database free, within the liveness window (+ one beat and polling).
    assert freed_after is not None and freed_after <= WINDOW + 2, freed_after
    assert follower.returncode == 1 and f"run {dead_run} was abandoned" in follow_out, follow_out
    assert followed_after <= WINDOW + 3, followed_after
    # The retry (no --force) joined the dying run, learnt it was dead, and made a new one.
    assert retry.returncode == 0, out + err
    assert f"previous run {dead_run} of {task_id} was abandoned" in " ".join(err.split())
    stats = json.loads(out)["vector_management_stats"]
    assert (
        stats["run_id"] != dead_run
        and stats["truncate_results"]["langchain_pg_embedding"]["rows_before"] == 1_000
    )
    assert retried_after <= WINDOW + 30, retried_after
    # The dead run's redelivered task did nothing; the reloaded table is untouched.
    assert redelivered.get("status") == "FAILURE", redelivered
    assert "RunEndedError" in json.dumps(redelivered) and "abandoned" in json.dumps(redelivered)
    assert rows_after == 700
    listed = subprocess.run(
        [sys.executable, "-m", "worker", "runs", "--json"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    by_id = {r["run_id"]: r for r in json.loads(listed.stdout)["runs"]}
    assert by_id[dead_run]["state"] == "abandoned" and by_id[stats["run_id"]]["state"] == "succeeded"
    # The dead run's own files are gone; the new run's set is whole.
    directory = task_root / task_id / "vector_bak"
    names = sorted(p.name for p in directory.iterdir())
    assert len(names) == 5 and all(stats["timestamp"] in n for n in names if n != "vector_backup_log.txt"), (
        names
    )
