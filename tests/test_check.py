"""`python -m worker check` against a real stack: a real worker process, real Redis and
PostgreSQL, sets made by beat's own nightly task; exit codes as Nagios reads them."""

from __future__ import annotations

import json
import time

import pytest
import redis

from common import run_keys
from common.config import Schedules, load_settings
from common.health import CRITICAL, OK, WARNING, Check
from common.run_state import RunStates
from common.stale_locks import locks_and_claims
from tests.processes import project_env, run_script
from tests.test_processes import isolated
from tests.test_s3_faults import cli
from tests.test_worker_killed import start_worker, stop
from worker.check import beat
from worker.sample_store import add_awkward_rows

NIGHTLY = """
from celery.result import AsyncResult
from worker import app
from tasks.pipeline import run_record, run_result
sent = app.send_task("vector.nightly_backup").get(timeout=60)
print(run_result(run_record(sent["run_id"])).get(timeout=60)["manifest"])
"""


def lines(done) -> dict[str, str]:
    """Each check's line by its name ("OK: workers: …" under "workers")."""
    return {line.split(": ")[1]: line for line in done.stdout.splitlines()}


@pytest.mark.slow
@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_check_on_a_healthy_stack_then_an_old_a_corrupted_set_and_no_worker(store, services, tmp_path):
    add_awkward_rows(store.conn, store.kind, store.collection_id)
    broker = isolated(services["CELERY_BROKER_URL"], 15)
    redis.Redis.from_url(broker).flushdb()
    env = project_env(
        CELERY_BROKER_URL=broker, CELERY_RESULT_BACKEND=broker, VECTOR_TASK_ROOT=str(tmp_path / "root")
    )
    env.pop("VECTOR_DRILL_DB_URL", None)
    env.pop("VECTOR_STORAGE_URL", None)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        first = run_script(NIGHTLY, env=env)
        assert first.returncode == 0, first.stderr[-2000:]
        healthy = cli(env, "check")
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert set(lines(healthy)) == {
            "broker", "workers", "beat", "nightly run", "locks and claims", "database", "newest set",
            "free space", "leftovers", "restore drill", "pins",
        }  # fmt: skip
        assert all(line.startswith("OK: ") for line in lines(healthy).values())
        as_json = json.loads(cli(env, "check", "--json").stdout)
        assert as_json["status"] == "OK" and as_json["code"] == 0 and len(as_json["checks"]) == 11

        time.sleep(1.5)
        old = cli({**env, "VECTOR_CHECK_MAX_AGE": "1s"}, "check")
        assert old.returncode == 2 and lines(old)["newest set"].startswith("CRITICAL: newest set: ")

        time.sleep(1)  # the next set gets a timestamp of its own
        second = run_script(NIGHTLY, env=env)
        assert second.returncode == 0, second.stderr[-2000:]
        directory = tmp_path / "root" / "vector_bak"
        [newest] = sorted(directory.glob("langchain_pg_embedding_*.csv"))[-1:]
        with open(newest, "ab") as damaged:
            damaged.write(b"x")
        corrupted = cli(env, "check")
        older = first.stdout.strip().removeprefix("manifest_").removesuffix(".json")
        assert corrupted.returncode == 1, corrupted.stdout
        assert lines(corrupted)["newest set"].startswith(
            f"WARNING: newest set: newest set that verifies is {older}"
        )
        assert "newer sets that do not verify" in lines(corrupted)["newest set"]
    finally:
        stop(worker)
    stopped = cli(env, "check")
    assert stopped.returncode == 2 and lines(stopped)["workers"].startswith("CRITICAL: workers: no worker")


def test_beat_that_missed_its_nightly_backup_is_critical(services):
    settings, schedules, now = load_settings(), Schedules(backup="0 2 * * *"), time.time()
    client = redis.Redis.from_url(settings.runs.redis_url)
    try:
        client.set(run_keys.NIGHTLY_SENT, now - 3 * 86400)
        assert beat(settings, schedules, now).status == 2
        client.set(run_keys.NIGHTLY_SENT, now - 60)
        assert beat(settings, schedules, now).status == 0
        client.delete(run_keys.NIGHTLY_SENT)
        assert beat(settings, schedules, now).status == 1
    finally:
        client.delete(run_keys.NIGHTLY_SENT)


def test_a_lock_no_live_run_holds_and_a_claim_without_its_run_are_named(services):
    client = redis.Redis.from_url(isolated(services["CELERY_BROKER_URL"], 15))
    client.flushdb()
    states = RunStates(client, load_settings().runs)
    live_db, lost_db = ({"host": "h", "port": 5432, "dbname": name} for name in ("live", "lost"))
    states.create("a" * 32, None, live_db, False)  # queued: its lock is a live run's
    client.set(run_keys.run_lock(live_db), "a" * 32, ex=600)
    assert locks_and_claims(client, states) == Check(
        "locks and claims", OK, "none stale (1 database lock(s) held by live runs)"
    )

    client.set(run_keys.run_lock(lost_db), "b" * 32, ex=600)  # its run's record is gone
    expiring = locks_and_claims(client, states)
    client.persist(run_keys.run_lock(lost_db))
    forever = locks_and_claims(client, states)
    client.delete(run_keys.run_lock(lost_db))
    client.set(run_keys.claim("t_check", "backup", lost_db), "c" * 32, ex=600)
    claim = locks_and_claims(client, states)

    assert expiring.status == WARNING and f"held by run {'b' * 32} (no record)" in expiring.summary
    assert "frees itself in" in expiring.summary
    assert forever.status == CRITICAL and "never expires" in forever.summary
    assert claim.status == WARNING and f"names run {'c' * 32}, whose record is gone" in claim.summary
    client.flushdb()


def test_a_lock_kept_by_a_run_that_ended_is_named_with_its_state(services):
    client = redis.Redis.from_url(isolated(services["CELERY_BROKER_URL"], 15))
    client.flushdb()
    states = RunStates(client, load_settings().runs)
    db = {"host": "h", "port": 5432, "dbname": "ended"}
    states.create("e" * 32, None, db, False)
    client.hset(run_keys.run_state("e" * 32), "state", "failed")
    client.set(run_keys.run_lock(db), "e" * 32, ex=600)

    check = locks_and_claims(client, states)

    assert check.status == WARNING and f"held by run {'e' * 32} (failed)" in check.summary, check
    client.flushdb()
