"""Faults in the middle of a truncate run, on real processes: a pool process SIGKILLed
mid-COPY, Redis restarted mid-chain. Each run must end with every row either still in
the table or in a verified backup, and no partial file."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from common.config import load_settings
from common.manifest import verify_set
from common.run_steps import back_up_table, close_backup_set
from tests.processes import project_env
from tests.test_consistency import COLLECTION, request_for
from tests.test_processes import isolated
from tests.test_worker_killed import ROOT, start_worker, stop
from worker.embedded import start_redis
from worker.sample_store import add_awkward_rows, add_bulk_rows, count_rows

ROWS = 200_000
EMBEDDING = "langchain_pg_embedding"
# Sends one truncate run and follows it through broker outages; prints its final state.
CLIENT = """
import json, sys, time
from tasks.pipeline import enqueue_vector_management, run_record, run_result
run_id = enqueue_vector_management(sys.argv[1], backup=True, truncate=True)["run_id"]
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        result = run_result(run_record(run_id))
        if result.ready():
            outcome = result.get(propagate=False)
            outcome = outcome if isinstance(outcome, dict) else f"{type(outcome).__name__}: {outcome}"
            print(json.dumps({"state": result.state, "outcome": outcome}), flush=True)
            break
    except Exception as exc:
        print("client retrying after", type(exc).__name__, file=sys.stderr, flush=True)
    time.sleep(0.5)
else:
    from tasks.client.progress import table_states
    states = table_states(run_record(run_id))
    shown = {t: (s["state"], s.get("step"), s.get("rows", s.get("row_count"))) for t, s in states.items()}
    print("no final state; tables:", shown, file=sys.stderr, flush=True)
"""


def send_truncate_run(env: dict, task_id: str, timeout: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, task_id, str(timeout)],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for_copy_in_progress(directory: Path, min_bytes: int = 2 << 20, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for temp in directory.glob(f"{EMBEDDING}_*.csv.tmp"):
            try:
                if temp.stat().st_size >= min_bytes:
                    return temp
            except FileNotFoundError:
                pass
        time.sleep(0.01)
    raise AssertionError(f"no copy of {EMBEDDING} in progress in {directory}")


def final_state(
    client: subprocess.Popen, timeout: float = 180, supervise=None, log: Path | None = None
) -> dict:
    deadline = time.monotonic() + timeout
    while supervise is not None and client.poll() is None and time.monotonic() < deadline:
        supervise()
        time.sleep(0.2)
    out, err = client.communicate(timeout=max(1, deadline - time.monotonic()))
    # The worker's log says where the run stood, should it not have finished.
    worker_log = log.read_text()[-4000:] if log is not None and log.exists() else ""
    assert out.strip(), f"the client saw no final state: {err[:2000]}\n--- worker log ---\n{worker_log}"
    return json.loads(out.strip().splitlines()[-1])


def assert_no_row_lost(store, directory: Path, final: dict) -> None:
    """Either the table is untouched, or it was emptied after a set that verifies and
    holds every row; and nothing half-written is left."""
    assert not list(directory.glob("*.tmp")), sorted(p.name for p in directory.iterdir())
    if count_rows(store.conn, EMBEDDING) == ROWS:
        assert final["state"] == "FAILURE", final
        return
    assert count_rows(store.conn, EMBEDDING) == 0
    assert final["state"] == "SUCCESS" and final["outcome"]["truncate_performed"], final
    manifest = verify_set(directory / final["outcome"]["manifest"])
    assert manifest["tables"][EMBEDDING]["rows"] == ROWS


def worker_env(broker: str) -> dict:
    return project_env(CELERY_BROKER_URL=broker, CELERY_RESULT_BACKEND=broker)


def test_a_table_task_redelivered_after_its_rename_replaces_its_own_file_until_the_set_is_complete(
    store, services, task_id
):
    """A pool process can die between renaming its file and acking its message; the
    redelivered task must redo that file, not fail the run on it. A set with a manifest
    is complete, and nothing may overwrite it."""
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    settings, request = load_settings(), request_for(task_id)
    first = back_up_table(settings, request, EMBEDDING)
    add_awkward_rows(store.conn, store.kind, store.collection_id)

    again = back_up_table(settings, request, EMBEDDING)

    assert again["success"], again
    assert again["row_count"] == 2 * first["row_count"]
    result = close_backup_set(settings, request, [back_up_table(settings, request, COLLECTION), again])
    directory = Path(result["backup_directory"])
    assert verify_set(directory / result["manifest"])["tables"][EMBEDDING]["rows"] == again["row_count"]
    late = back_up_table(settings, request, EMBEDDING)
    assert not late["success"] and "refusing to overwrite" in late["error"], late
    assert verify_set(directory / result["manifest"])


@pytest.mark.slow
@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_pool_process_killed_mid_copy_is_replaced_and_its_backup_re_run(
    store, services, task_id, task_root, tmp_path
):
    add_bulk_rows(store.conn, store.kind, store.collection_id, ROWS, dim=64)
    env = worker_env(isolated(services["CELERY_BROKER_URL"], 7))
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        client = send_truncate_run(env, task_id, 150)
        directory = task_root / task_id / "vector_bak"
        temp = wait_for_copy_in_progress(directory)
        for child in psutil.Process(worker.pid).children():
            child.kill()
        assert temp.exists(), "the copy must have been cut off mid-file"
        final = final_state(client, log=log)
    finally:
        stop(worker)

    assert "exited with 'signal 9 (SIGKILL)'" in log.read_text()
    # acks_late + reject_on_worker_lost: the task went back to the queue and ran again,
    # replacing the dead writer's temp file.
    assert final["state"] == "SUCCESS", final
    assert_no_row_lost(store, directory, final)
    assert sorted(p.suffix for p in directory.iterdir()) == [".csv", ".csv", ".json", ".txt"]


@pytest.mark.slow
@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_redis_restarted_mid_chain_never_truncates_without_a_verified_backup(
    store, services, task_id, task_root, tmp_path
):
    add_bulk_rows(store.conn, store.kind, store.collection_id, ROWS, dim=64)
    redis_dir = tmp_path / "redis"
    broker = start_redis(redis_dir, durable=True)
    port = int(broker.url.rsplit(":", 1)[1].split("/")[0])
    # Unacked tasks come back after this long; short here so the test can see it.
    env = {**worker_env(broker.url), "CELERY_VISIBILITY_TIMEOUT": "10"}
    log = tmp_path / "worker.log"
    workers = [start_worker(env, log)]

    def supervise():
        """What compose's `restart: unless-stopped` does for a worker that exits."""
        if workers[-1].poll() is not None:
            workers.append(start_worker(env, log))

    try:
        client = send_truncate_run(env, task_id, 150)
        directory = task_root / task_id / "vector_bak"
        wait_for_copy_in_progress(directory)
        broker.stop()
        time.sleep(2)
        broker = start_redis(redis_dir, port=port, durable=True)
        final = final_state(client, supervise=supervise, log=log)
    finally:
        for worker in workers:
            stop(worker)
        broker.stop()

    assert_no_row_lost(store, directory, final)
