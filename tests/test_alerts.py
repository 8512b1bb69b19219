"""Alerts: a real HTTP server on a loopback port receives what the session's real worker
posts when a run fails or is abandoned, a drill fails or the nightly backup is missed;
never for a run that succeeded or was cancelled, never twice, never a secret, and never
at the cost of the run."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from common import alerts, run_keys
from common.config import load_alert_settings, load_schedules, load_settings
from common.exceptions import BackupFailedError, ConfigurationError
from common.redis_conn import redis_client, run_states
from common.run_state import FAILED
from tasks.client.checks import check_nightly_backup, missed_nightly_backup
from tasks.pipeline import enqueue_vector_management, run_status, wait_for_run
from tests.conftest import FAKE_PASSWORD, FAKE_S3_SECRET
from tests.webhook import Webhook
from worker.sample_store import add_bulk_rows

pytestmark = pytest.mark.usefixtures("celery_worker_session")
TIMEOUT = 60
TOKEN = "alert-token-must-not-leak-5e1d"
BODY_FIELDS = {
    "event",
    "source",
    "at",
    "run_id",
    "task_id",
    "state",
    "error",
    "database",
    "backup_directory",
}


def point_alerts_at(monkeypatch, url: str, **more: str) -> None:
    """The in-process worker reads these when its `vector.send_alert` task runs."""
    monkeypatch.setenv("VECTOR_ALERT_WEBHOOK", url)
    monkeypatch.setenv("VECTOR_ALERT_WEBHOOK_TOKEN", TOKEN)
    monkeypatch.setenv("VECTOR_ALERT_BACKOFF", "0.2")
    for name, value in more.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def webhook(monkeypatch) -> Iterator[Webhook]:
    hook = Webhook()
    point_alerts_at(monkeypatch, hook.url)
    yield hook
    hook.stop()


@pytest.fixture
def missing_table(store):
    """A store whose embedding table is gone: a backup of it fails."""
    add_bulk_rows(store.conn, store.kind, store.collection_id, 50)
    with store.conn.cursor() as cur:
        cur.execute("ALTER TABLE langchain_pg_embedding RENAME TO hidden_table")
    yield store
    with store.conn.cursor() as cur:
        cur.execute("ALTER TABLE hidden_table RENAME TO langchain_pg_embedding")


def failed_run(task_id: str, timeout: float = TIMEOUT) -> str:
    """A backup run of a store missing a table; its id once its failure has arrived."""
    run_id = enqueue_vector_management(task_id, backup=True)["run_id"]
    with pytest.raises(BackupFailedError, match="langchain_pg_embedding: table does not exist"):
        wait_for_run(run_id, timeout)
    return run_id


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_failed_run_posts_one_webhook_with_the_documented_body_and_no_secret(
    missing_table, webhook, task_id, task_root
):
    run_id = failed_run(task_id)

    [post] = webhook.wait_for(run_id, 1)
    body = post["body"]
    assert set(body) == BODY_FIELDS
    assert body["event"] == "run_failed" and body["source"] == "pgvector-backup"
    assert body["run_id"] == run_id and body["task_id"] == task_id and body["state"] == "failed"
    assert "langchain_pg_embedding: table does not exist" in body["error"]
    assert len(body["error"]) <= alerts.ERROR_CHARS
    database = load_settings().database
    assert body["database"] == {"host": database.host, "port": database.port, "dbname": database.dbname}
    assert body["backup_directory"] == str(task_root / task_id / "vector_bak")
    at = datetime.fromisoformat(body["at"])
    assert at.tzinfo is not None and abs(at.timestamp() - time.time()) < TIMEOUT
    assert post["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert post["headers"]["Content-Type"] == "application/json"
    assert FAKE_PASSWORD not in post["raw"].decode() and TOKEN not in post["raw"].decode()
    assert "postgresql://" not in post["raw"].decode()

    # Every later observer of the failed run, and a second announcement of it, send nothing.
    settings = load_settings()
    states = run_states(settings)
    assert run_status(run_id)["state"] == "failed"
    assert not states.finish(run_id, FAILED, "seen again")
    client = redis_client(settings.runs.redis_url)
    assert alerts.run_ended(settings, client, states.status(run_id)) is None
    time.sleep(2)
    assert len(webhook.posts_for(run_id)) == 1


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_succeeded_run_posts_nothing(store, webhook, task_id):
    add_bulk_rows(store.conn, store.kind, store.collection_id, 50)
    run_id = enqueue_vector_management(task_id, backup=True)["run_id"]

    assert wait_for_run(run_id, TIMEOUT)["backup_performed"] is True

    time.sleep(2)
    assert run_status(run_id)["state"] == "succeeded"
    assert webhook.posts_for(run_id) == []


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
def test_a_webhook_answering_500_twice_gets_the_alert_on_the_third_try(missing_table, monkeypatch, task_id):
    hook = Webhook(statuses=(500, 500))
    point_alerts_at(monkeypatch, hook.url)
    try:
        run_id = failed_run(task_id)
        posts = hook.wait_for(run_id, 3)
    finally:
        hook.stop()

    assert [p["status"] for p in posts] == [500, 500, 200]
    assert len({p["raw"] for p in posts}) == 1  # the same alert, tried again


@pytest.mark.parametrize("store", ["langchain_postgres"], indirect=True)
@pytest.mark.parametrize("webhook_is", ["down", "hanging"])
def test_a_webhook_that_is_down_or_hangs_neither_delays_nor_fails_the_run(
    missing_table, monkeypatch, task_id, webhook_is
):
    hanging = Webhook(hang=True)
    if webhook_is == "down":
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    else:
        url = hanging.url
    # Posted from inside the run, a 30 s timeout tried twice would hold its result for a minute.
    point_alerts_at(monkeypatch, url, VECTOR_ALERT_TIMEOUT="30", VECTOR_ALERT_RETRIES="1")
    try:
        started = time.monotonic()
        run_id = failed_run(task_id, timeout=25)
        assert time.monotonic() - started < 25
        status = run_status(run_id)
        assert status["state"] == "failed" and "table does not exist" in status["reason"]
        if webhook_is == "hanging":
            assert hanging.wait_for(run_id, 1, timeout=20), "the alert was never even tried"
    finally:
        hanging.stop()


def test_an_abandoned_run_posts_one_webhook_and_a_cancelled_run_none(services, webhook, monkeypatch):
    """At the run-state level: the transition every observer shares (the real SIGKILL of a
    worker is `test_worker_killed.py`, too slow to repeat here)."""
    client = redis.Redis.from_url(services["CELERY_BROKER_URL"])
    while client.info("server")["uptime_in_seconds"] < 4:  # nobody judges in Redis's first window
        time.sleep(0.2)
    monkeypatch.setenv("VECTOR_LIVENESS_WINDOW", "3")
    settings = load_settings()
    identity = settings.database.identity
    dead, cancelled = uuid.uuid4().hex, uuid.uuid4().hex
    for run_id in (dead, cancelled):
        run_states(settings).create(run_id, "t_alerts", identity, truncate=False)
        assert run_states(settings).begin_task(run_id, f"{run_id}-task") == "running"
    assert run_states(settings).cancel(cancelled, "cancelled on request") == "ok"
    time.sleep(3.5)  # the dead run's task stopped beating

    # Several observers judge it at once: a client, a redelivered task, another client.
    assert run_states(settings).status(dead)["state"] == "abandoned"
    assert run_states(settings).begin_task(dead, "redelivered") == "abandoned"
    assert run_states(settings).status(dead)["state"] == "abandoned"

    [post] = webhook.wait_for(dead, 1)
    body = post["body"]
    assert set(body) == BODY_FIELDS
    assert body["event"] == "run_abandoned" and body["state"] == "abandoned"
    assert body["task_id"] == "t_alerts" and "stopped" in body["error"]
    assert body["database"] == {k: identity[k] for k in ("host", "port", "dbname")}
    time.sleep(2)
    assert len(webhook.posts_for(dead)) == 1
    assert webhook.posts_for(cancelled) == []


def test_a_failed_drill_alerts_once_with_its_error_masked(services, webhook, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_S3_SECRET)
    settings = load_settings()
    client = redis_client(settings.runs.redis_url)
    drill = "drill_" + uuid.uuid4().hex[:8]
    error = (
        f"restore into postgresql://u:{FAKE_PASSWORD}@db:5432/scratch failed: token={TOKEN} "
        f"(S3 said {FAKE_S3_SECRET}) " + "x" * 1000
    )

    sent = alerts.alert(
        settings, client, alerts.DRILL_FAILED, drill, drill_id=drill, error=error, backup_directory="s3://b/p"
    )
    again = alerts.alert(settings, client, alerts.DRILL_FAILED, drill, drill_id=drill, error=error)

    assert sent is not None and again is None
    [post] = webhook.wait_for(drill, 1)
    raw = post["raw"].decode()
    assert post["body"]["event"] == "drill_failed" and post["body"]["drill_id"] == drill
    assert "postgresql://***@db:5432/scratch" in post["body"]["error"] and "token=***" in raw
    assert len(post["body"]["error"]) <= alerts.ERROR_CHARS
    for secret in (FAKE_PASSWORD, TOKEN, FAKE_S3_SECRET):
        assert secret not in raw


def test_a_missed_nightly_backup_alerts_once_and_a_sent_one_does_not(services, webhook):
    settings = load_settings()
    schedules = load_schedules({"VECTOR_BACKUP_SCHEDULE": "0 2 * * *", "VECTOR_BACKUP_GRACE": "3600"})
    client = redis_client(settings.runs.redis_url)
    now = datetime(2031, 7, 21, 5, 0, tzinfo=UTC).timestamp()
    due = datetime(2031, 7, 21, 2, 0, tzinfo=UTC).timestamp()
    saved = client.get(run_keys.NIGHTLY_SENT)
    try:
        client.set(run_keys.NIGHTLY_SENT, repr(due - 86400 + 5))  # yesterday's was the last
        assert missed_nightly_backup(settings, schedules, now) == due
        assert missed_nightly_backup(settings, schedules, due + 1800) is None  # still within grace

        sent = check_nightly_backup(settings, schedules, now)
        assert check_nightly_backup(settings, schedules, now + 60) is None

        assert sent is not None and sent["expected_at"] == "2031-07-21T02:00:00Z"
        [post] = webhook.wait_for("2031-07-21T02:00:00Z", 1)
        assert post["body"]["event"] == "backup_missed" and post["body"]["schedule"] == "0 2 * * *"
        assert post["body"]["last_sent_at"] == "2031-07-20T02:00:05Z"

        client.set(run_keys.NIGHTLY_SENT, repr(due + 4))  # beat sent tonight's
        assert missed_nightly_backup(settings, schedules, now) is None
    finally:
        client.delete(run_keys.alert(alerts.BACKUP_MISSED, "2031-07-21T02:00:00Z"))
        if saved is None:
            client.delete(run_keys.NIGHTLY_SENT)
        else:
            client.set(run_keys.NIGHTLY_SENT, saved)


@pytest.mark.parametrize(
    "url",
    [
        f"https://alerts:{FAKE_PASSWORD}@hooks.example.com/x",
        f"https://{FAKE_PASSWORD}@hooks.example.com/x",
        f"ftp://hooks.example.com/{FAKE_PASSWORD}",
        f"https:///{FAKE_PASSWORD}",
        f"http://hooks.example.com:port{FAKE_PASSWORD}/x",
    ],
)
def test_a_webhook_url_with_credentials_or_another_scheme_is_refused_without_echoing_it(url):
    with pytest.raises(ConfigurationError, match="VECTOR_ALERT_WEBHOOK must be") as refused:
        load_alert_settings({"VECTOR_ALERT_WEBHOOK": url})
    assert FAKE_PASSWORD not in str(refused.value)


def test_alert_settings_are_off_by_default_and_never_show_the_url_or_token():
    assert load_alert_settings({}).webhook is None
    url = "https://hooks.example.com/T0/SECRETPATH"
    config = load_alert_settings({"VECTOR_ALERT_WEBHOOK": url, "VECTOR_ALERT_WEBHOOK_TOKEN": TOKEN})
    assert config.webhook == url
    assert "SECRETPATH" not in repr(config) and TOKEN not in repr(config)


def test_retry_delays_grow_exponentially_with_jitter_up_to_a_cap():
    config = load_alert_settings({"VECTOR_ALERT_BACKOFF": "2"})
    assert [alerts.retry_delay(n, config, rand=lambda: 0.0) for n in range(4)] == [1, 2, 4, 8]
    assert [alerts.retry_delay(n, config, rand=lambda: 1.0) for n in range(4)] == [2, 4, 8, 16]
    assert alerts.retry_delay(20, config, rand=lambda: 1.0) == config.backoff_max_s
