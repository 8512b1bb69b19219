"""The life of runs: failed runs retried, cancelled runs, late truncates, recorded states.

Real PostgreSQL with pgvector, real Redis, and the session's real worker; the crash test
(SIGKILL of a whole `celery -A worker worker`) is in `test_run_crash.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from common.config import RunControl, load_settings
from common.exceptions import RunEndedError, TruncateRefusedError
from common.run_lock import lock_name
from common.run_state import RunStates
from common.run_steps import truncate_after_backup
from tasks.client.progress import table_states
from tasks.pipeline import cancel_run, enqueue_vector_management, run_record, run_status, wait_for_run
from tasks.vector_backup import run_lock, truncate_vector_tables
from tests.processes import ROOT, project_env, worker_cli
from tests.runs import backup_half_of_truncate_run
from worker.sample_store import add_bulk_rows, count_rows

pytestmark = pytest.mark.usefixtures("celery_worker_session")
TIMEOUT = 60
JOB = "/api/v0/data_pipeline/vector/backup"
ENQUEUE_AT = """
import json, sys, time
from tasks.pipeline import enqueue_vector_management
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(json.dumps(enqueue_vector_management(sys.argv[1], backup=True, truncate=True)))
"""


@pytest.fixture
def redis_up_a_while(services) -> redis.Redis:
    """The session's Redis, up for longer than the windows below: nobody judges a run in
    the first window after Redis starts."""
    client = redis.Redis.from_url(services["CELERY_BROKER_URL"])
    while client.info("server")["uptime_in_seconds"] < 4:
        time.sleep(0.2)
    return client


@pytest.fixture
def states(redis_up_a_while) -> RunStates:
    return RunStates(redis_up_a_while, RunControl(liveness_window_s=3))


def test_a_run_whose_running_tasks_stop_beating_is_abandoned_and_frees_its_lock(states):
    client = states.client
    client.set(lock_name({"host": "h", "port": 1, "dbname": "d"}), "r1")
    states.create("r1", "t", {"host": "h", "port": 1, "dbname": "d", "user": "u"}, truncate=True)
    assert states.status("r1")["state"] == "queued"
    assert states.begin_task("r1", "a") == "running"
    assert states.end_task("r1", "a") == "running"
    time.sleep(3.5)
    # Between two steps nobody beats, and nobody should: the run waits for a worker.
    assert states.status("r1")["state"] == "running"
    assert states.begin_task("r1", "b") == "running"
    assert states.status("r1")["state"] == "running"
    time.sleep(3.5)  # "b" was killed: its heartbeat lapses

    status = states.status("r1")
    assert status["state"] == "abandoned" and "stopped" in status["reason"]
    assert client.get(lock_name({"host": "h", "port": 1, "dbname": "d"})) is None
    assert states.begin_task("r1", "c") == "abandoned"  # a redelivered task does nothing
    assert states.cancel("r1", "too late") == "abandoned"


def test_a_run_that_never_started_within_the_truncate_deadline_is_abandoned(redis_up_a_while):
    states = RunStates(redis_up_a_while, RunControl(liveness_window_s=3, truncate_deadline_s=1))
    states.create("r0", "t", {"host": "h", "port": 1, "dbname": "d", "user": "u"}, truncate=True)
    assert states.status("r0")["state"] == "queued"
    time.sleep(1.5)

    status = states.status("r0")

    assert status["state"] == "abandoned" and "VECTOR_TRUNCATE_DEADLINE" in status["reason"]


def test_a_truncating_run_can_no_longer_be_cancelled_and_a_claim_moves_once(states):
    states.create("r2", "t", {"host": "h", "port": 1, "dbname": "d", "user": "u"}, truncate=True)
    states.begin_task("r2", "a")
    assert states.start_truncating("r2") == "running"
    assert states.cancel("r2", "please") == "truncating"
    assert states.finish("r2", "succeeded")
    assert states.cancel("r2", "please") == "succeeded"

    states.client.set("claim-test", "old")
    assert states.swap_claim("claim-test", "old", "new1", 60)
    assert not states.swap_claim("claim-test", "old", "new2", 60)
    assert states.client.get("claim-test") == b"new1"


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_failed_truncate_run_fixed_and_retried_with_the_same_task_id_runs_again(store, task_id):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 500)
    with store.conn.cursor() as cur:
        cur.execute("ALTER TABLE langchain_pg_collection RENAME TO collection_away")
    try:
        failed = worker_cli("run", "--task-id", task_id, "--truncate-vector-tables", "--json")
    finally:
        with store.conn.cursor() as cur:
            cur.execute("ALTER TABLE collection_away RENAME TO langchain_pg_collection")
    assert failed.returncode == 1, failed.stderr
    assert "langchain_pg_collection: table does not exist" in failed.stdout

    retried = worker_cli("run", "--task-id", task_id, "--truncate-vector-tables", "--json")

    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "was failed; vector table management enqueued as run" in retried.stderr
    stats = json.loads(retried.stdout)["vector_management_stats"]
    assert stats["truncate_results"]["langchain_pg_embedding"]["rows_before"] == 500
    assert count_rows(store.conn, "langchain_pg_embedding") == 0
    assert run_status(stats["run_id"])["state"] == "succeeded"
    listed = json.loads(worker_cli("runs", "--json").stdout)["runs"]
    mine = [r for r in listed if r["task_id"] == task_id]
    assert [r["state"] for r in mine] == ["succeeded", "failed"]
    assert mine[0]["tables"]["langchain_pg_embedding"] == {"success": True, "rows": 500}
    assert "password" not in json.dumps(mine) and mine[0]["database"]["dbname"]


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_ten_requests_for_a_task_whose_run_failed_make_exactly_one_new_run(store, task_id, task_root):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 300)
    with store.conn.cursor() as cur:
        cur.execute("ALTER TABLE langchain_pg_collection RENAME TO collection_away")
    try:
        first = enqueue_vector_management(task_id, backup=True, truncate=True)
        with pytest.raises(Exception, match="table does not exist"):
            wait_for_run(first["run_id"], TIMEOUT)
    finally:
        with store.conn.cursor() as cur:
            cur.execute("ALTER TABLE collection_away RENAME TO langchain_pg_collection")
    start_at = time.time() + 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ENQUEUE_AT, task_id, str(start_at)],
            cwd=ROOT,
            env=project_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(10)
    ]
    answers = [json.loads(p.communicate(timeout=60)[0]) for p in procs]

    new_runs = {a["run_id"] for a in answers}
    assert len(new_runs) == 1 and first["run_id"] not in new_runs
    winners = [a for a in answers if a["enqueued"]]
    assert len(winners) == 1
    assert winners[0]["previous_run_id"] == first["run_id"] and winners[0]["previous_state"] == "failed"
    result = wait_for_run(winners[0]["run_id"], TIMEOUT)
    assert result["truncate_results"]["langchain_pg_embedding"]["rows_before"] == 300
    time.sleep(1)
    assert len(list((task_root / task_id / "vector_bak").glob("manifest_*.json"))) == 1


SLOW_VIEW = (
    "CREATE OR REPLACE VIEW slow_rows AS SELECT g AS n, "
    "CASE WHEN g = 60000 AND (SELECT slow FROM slow_flag) THEN pg_sleep(120)::text END AS pause "
    "FROM generate_series(1, 70000) AS g"
)


@pytest.fixture
def slow_table(db, monkeypatch):
    """A third backed-up table whose COPY sleeps after 59,999 rows while `slow_flag` is true."""
    with db.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS slow_flag CASCADE")
        cur.execute("CREATE TABLE slow_flag (slow boolean)")
        cur.execute("INSERT INTO slow_flag VALUES (true)")
        cur.execute(SLOW_VIEW)
    tables = "langchain_pg_collection,langchain_pg_embedding,slow_rows"
    monkeypatch.setenv("VECTOR_SUPPORTED_TABLES", tables)
    monkeypatch.setenv("VECTOR_SPLIT_WORKERS", "1")
    yield tables
    with db.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE '%slow_rows%' AND pid <> pg_backend_pid()"
        )
        cur.execute("DROP TABLE slow_flag CASCADE")


def wait_for_sleeping_copy(db, run_id: str, timeout: float = 60) -> None:
    """Until a backend of the run sleeps inside the slow COPY (59,999 rows sent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = %s AND wait_event = 'PgSleep'",
                (f"pgvector-backup run {run_id}",),
            )
            if cur.fetchone()[0]:
                return
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} never reached the middle of its slow COPY")


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_cancel_mid_copy_stops_the_run_removes_its_files_and_frees_the_lock(
    store, slow_table, task_id, task_root, monkeypatch, db
):
    monkeypatch.setenv("VECTOR_LIVENESS_WINDOW", "6")
    add_bulk_rows(store.conn, store.kind, store.collection_id, 400)
    sent = worker_cli("run", "--task-id", task_id, "--truncate-vector-tables", "--no-wait")
    run_id = sent.stdout.strip()
    wait_for_sleeping_copy(db, run_id)
    directory = task_root / task_id / "vector_bak"
    assert list(directory.glob("*.csv")), "the other tables should be backed up by now"
    lock = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
    lock_key = lock_name(load_settings().database.identity)
    assert lock.get(lock_key) == run_id.encode()

    started = time.monotonic()
    cancelled = worker_cli("cancel", run_id)

    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert f"run {run_id} cancelled" in cancelled.stdout and "cancelled" in cancelled.stdout
    assert lock.get(lock_key) != run_id.encode(), "cancel frees the run's lock at once"

    def leftovers() -> list[str]:
        return [p.name for p in directory.glob("*") if p.name != "vector_backup_log.txt"]

    def sleeping() -> int:
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")
            return cur.fetchone()[0]

    while (leftovers() or sleeping()) and time.monotonic() - started < 15:
        time.sleep(0.1)
    stopped_in = time.monotonic() - started
    assert not leftovers()
    assert not sleeping(), "the COPY was stopped on the server"
    assert stopped_in < 10, f"the run's tasks took {stopped_in:.1f}s to stop"
    assert count_rows(store.conn, "langchain_pg_embedding") == 400
    assert run_status(run_id)["state"] == "cancelled"
    followed = worker_cli("follow", run_id)
    assert followed.returncode == 1 and f"run {run_id} was cancelled" in followed.stdout

    again = worker_cli("cancel", run_id)
    assert again.returncode == 1 and "has already been cancelled; nothing to cancel" in again.stdout
    time.sleep(2)
    assert count_rows(store.conn, "langchain_pg_embedding") == 400, "never a truncate after a cancel"


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_cancel_of_a_run_waiting_for_its_database_ends_it_and_removes_what_it_left(store, task_id, task_root):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 100)
    other = run_lock(load_settings(), "another_run")
    assert other.acquire()
    try:
        answer = enqueue_vector_management(task_id, backup=True, truncate=True)
        record = run_record(answer["run_id"])
        deadline = time.monotonic() + TIMEOUT
        while "RETRY" not in {s["state"] for s in table_states(record).values()}:
            assert time.monotonic() < deadline, "the run never waited for the database"
            time.sleep(0.05)
        # What a table task that had already ended would have left.
        directory = task_root / task_id / "vector_bak"
        directory.mkdir(parents=True, exist_ok=True)
        leftover = directory / f"langchain_pg_collection_{record['timestamp']}.csv"
        leftover.write_text("uuid,name,cmetadata\n")

        status = cancel_run(answer["run_id"])

        assert status["state"] == "cancelled"
        with pytest.raises(RunEndedError, match="was cancelled: cancelled on request"):
            wait_for_run(answer["run_id"], TIMEOUT)
        while leftover.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not leftover.exists(), "a worker removes what the cancelled run left"
        assert other.holder() == "another_run", "another run's lock is never touched"
    finally:
        other.release()
    time.sleep(1)  # its tasks, had they not been stopped, would take the free database now
    assert count_rows(store.conn, "langchain_pg_embedding") == 100


def test_cancel_of_an_unknown_or_finished_run_is_a_clear_error(store, task_id):
    unknown = worker_cli("cancel", "0" * 32)
    assert unknown.returncode == 2 and "unknown run" in unknown.stderr
    answer = enqueue_vector_management(task_id, backup=True)
    wait_for_run(answer["run_id"], TIMEOUT)

    finished = worker_cli("cancel", answer["run_id"])

    assert finished.returncode == 1
    assert f"run {answer['run_id']} has already succeeded; nothing to cancel" in finished.stdout


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
@pytest.mark.usefixtures("redis_up_a_while")
def test_a_truncate_past_its_deadline_refuses_and_empties_nothing(store, task_id, task_root, monkeypatch):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 200)
    result = backup_half_of_truncate_run(task_id)
    monkeypatch.setenv("VECTOR_TRUNCATE_DEADLINE", "1")
    monkeypatch.setenv("VECTOR_LIVENESS_WINDOW", "3")  # Redis has been up for longer
    time.sleep(1.5)

    # The run's record says it is too late (no task of it ran for the deadline)...
    with pytest.raises(
        RunEndedError, match="is abandoned: no task of it ran for longer than VECTOR_TRUNCATE"
    ):
        truncate_vector_tables.delay(result).get(timeout=TIMEOUT)
    # ...and so does the truncate step itself, whatever the record says.
    with pytest.raises(TruncateRefusedError, match=r"more than VECTOR_TRUNCATE_DEADLINE \(1 s\)"):
        truncate_after_backup(load_settings(), result)

    assert count_rows(store.conn, "langchain_pg_embedding") == 200
    assert run_status(result["run_id"])["state"] == "abandoned"
    log = (Path(result["backup_directory"]) / "vector_backup_log.txt").read_text(encoding="utf-8")
    assert "VECTOR_TRUNCATE_DEADLINE" in log


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_the_api_cancels_a_running_job_and_refuses_to_cancel_it_twice(
    store, slow_table, task_id, task_root, db, monkeypatch
):
    from worker.api import create_app
    from worker.celery_app import release_pending_results

    monkeypatch.setenv("VECTOR_LIVENESS_WINDOW", "6")
    add_bulk_rows(store.conn, store.kind, store.collection_id, 300)
    (task_root / task_id).mkdir()
    client = create_app().test_client()
    try:
        sent = client.post(JOB, json={"task_id": task_id, "truncate_vector_tables": True, "wait": False})
        job_id = sent.get_json()["data"]["job_id"]
        wait_for_sleeping_copy(db, job_id)
        running = client.get(f"{JOB}/{job_id}").get_json()["data"]

        cancelled = client.delete(f"{JOB}/{job_id}")

        assert running["run"]["state"] == "running" and running["run"]["heartbeat_at"]
        assert cancelled.status_code == 200, cancelled.get_json()
        assert cancelled.get_json()["data"]["run"]["state"] == "cancelled"
        again = client.delete(f"{JOB}/{job_id}")
        assert again.status_code == 409
        assert again.get_json()["data"]["error_type"] == "RUN_NOT_CANCELLABLE"
        assert "has already been cancelled" in again.get_json()["data"]["response"]
        status = client.get(f"{JOB}/{job_id}").get_json()["data"]
        assert status["run"]["state"] == "cancelled" and status["error"]["error_type"] == "RUN_CANCELLED"
        assert client.delete(f"{JOB}/{'0' * 32}").status_code == 404
        assert client.delete(f"{JOB}/not-a-job").status_code == 404
        deadline = time.monotonic() + 15
        while list((task_root / task_id / "vector_bak").glob("*.csv*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not list((task_root / task_id / "vector_bak").glob("*.csv*"))
        assert count_rows(store.conn, "langchain_pg_embedding") == 300
    finally:
        release_pending_results()


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_run_superseded_with_force_is_cancelled_and_never_truncates(
    store, slow_table, task_id, task_root, monkeypatch, db
):
    monkeypatch.setenv("VECTOR_LIVENESS_WINDOW", "6")
    add_bulk_rows(store.conn, store.kind, store.collection_id, 250)
    first = enqueue_vector_management(task_id, backup=True, truncate=True)
    wait_for_sleeping_copy(db, first["run_id"])
    with db.cursor() as cur:  # the newer run's COPY of the view will not sleep
        cur.execute("UPDATE slow_flag SET slow = false")

    newer = enqueue_vector_management(task_id, backup=True, truncate=True, force=True)

    assert newer["enqueued"] and newer["previous_run_id"] == first["run_id"]
    assert newer["previous_state"] == "running"
    with pytest.raises(RunEndedError, match=f"was cancelled: superseded by run {newer['run_id']}"):
        wait_for_run(first["run_id"], TIMEOUT)
    result = wait_for_run(newer["run_id"], TIMEOUT)
    assert result["truncate_results"]["langchain_pg_embedding"]["rows_before"] == 250
    old = run_status(first["run_id"])
    assert old["state"] == "cancelled" and old["superseded_by"] == newer["run_id"]
    # Only the newer run's set is left: the superseded run's files went with it.
    directory = task_root / task_id / "vector_bak"

    def older() -> list[str]:
        names = [p.name for p in directory.glob("*_*.*") if p.name != "vector_backup_log.txt"]
        return [n for n in names if result["timestamp"] not in n]

    deadline = time.monotonic() + 15
    while older() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not older()
    assert [m.name for m in directory.glob("manifest_*.json")] == [f"manifest_{result['timestamp']}.json"]
