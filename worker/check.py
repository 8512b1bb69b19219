"""`python -m worker check`: every health check, the Celery-facing ones here (the broker,
the workers' pings, beat's schedule, the last nightly run), the rest in `common.health`."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import redis

from common import health, run_keys
from common.config import Schedules, Settings, load_schedules, load_settings
from common.drill import last_drill
from common.exceptions import VectorBackupError
from common.health import CRITICAL, OK, UNKNOWN, WARNING, Check
from common.redis_conn import redis_client, run_states
from common.stale_locks import locks_and_claims
from tasks.client.checks import check_nightly_backup, missed_nightly_backup


def run_checks(settings: Settings | None = None, schedules: Schedules | None = None) -> list[Check]:
    settings, schedules = settings or load_settings(), schedules or load_schedules()
    client = redis_client(settings.runs.redis_url)
    checks = [broker(client)]
    if checks[0].status == OK:
        checks += [workers(), beat(settings, schedules), nightly_run(settings)]
        checks.append(locks_and_claims(client, run_states(settings)))
    checks.append(health.database(settings))
    try:
        storage = settings.backup_storage()
        checks += [
            health.newest_good_set(storage, settings.check_max_age_s, settings.signing_key),
            health.free_space(storage),
            health.leftovers(storage),
            health.pins(storage),
        ]
    except VectorBackupError as exc:
        checks.append(Check("storage", CRITICAL, str(exc)))
    checks.append(
        drill(client, schedules) if checks[0].status == OK else Check("restore drill", UNKNOWN, "no broker")
    )
    return checks


def broker(client: redis.Redis) -> Check:
    try:
        client.ping()
    except redis.RedisError as exc:
        return Check("broker", CRITICAL, f"Redis cannot be reached: {type(exc).__name__}")
    return Check("broker", OK, "Redis reachable")


def workers() -> Check:
    from worker import app

    answers = app.control.ping(timeout=1.0) or []
    names = sorted(name for answer in answers for name in answer)
    if not names:
        return Check("workers", CRITICAL, "no worker answered a ping: no backup can run")
    return Check("workers", OK, f"{len(names)} alive ({', '.join(names)})")


def beat(settings: Settings, schedules: Schedules, now: float | None = None) -> Check:
    """Whether beat sent the nightly backup the last time its schedule came due (with
    `VECTOR_BACKUP_GRACE`); a missed one is also alerted, once (`tasks.client.checks`)."""
    now = time.time() if now is None else now
    raw = redis_client(settings.runs.redis_url).get(run_keys.NIGHTLY_SENT)
    if raw is None:
        return Check("beat", WARNING, "no nightly backup was ever sent: is celery beat running?")
    due = missed_nightly_backup(settings, schedules, now)
    if due is not None:
        check_nightly_backup(settings, schedules, now)
        return Check(
            "beat", CRITICAL, f"the nightly backup due {_ago(now - due)} ago was not sent (is beat running?)"
        )
    return Check("beat", OK, f"the last nightly backup was sent {_ago(now - float(raw))} ago, on time")


def nightly_run(settings: Settings) -> Check:
    """The state of the newest nightly run (a run without a task id)."""
    nightly = next((run for run in run_states(settings).recent(200) if not run.get("task_id")), None)
    if nightly is None:
        return Check("nightly run", WARNING, "no nightly run is recorded")
    state = nightly.get("state", "unknown")
    summary = f"run {nightly['run_id']} is {state}"
    if state in ("failed", "abandoned"):
        return Check("nightly run", CRITICAL, f"{summary}: {str(nightly.get('reason', ''))[:200]}")
    return Check("nightly run", WARNING if state == "cancelled" else OK, summary)


def drill(client: redis.Redis, schedules: Schedules) -> Check:
    if schedules.drill_db_url is None:
        return Check("restore drill", OK, "restore drills are off (VECTOR_DRILL_DB_URL is not set)")
    last = last_drill(client)
    if last is None:
        return Check("restore drill", UNKNOWN, "no restore drill has run yet")
    summary = f"{last['state']} {_ago(time.time() - last['at'])} ago on {last['set']}: {last['detail']}"
    return Check("restore drill", OK if last["state"] == "passed" else CRITICAL, summary)


def report(checks: list[Check]) -> dict[str, Any]:
    code = health.overall(checks)
    return {"status": health.NAMES[code], "code": code, "checks": [c.as_dict() for c in checks]}


def record(answer: dict[str, Any], settings: Settings | None = None) -> None:
    """Keep the outcome for `/metrics` (`vector_backup_check_status`); best effort."""
    settings = settings or load_settings()
    outcome = json.dumps({"code": answer["code"], "at": time.time()})
    with contextlib.suppress(redis.RedisError):  # the broker check has said so already
        redis_client(settings.runs.redis_url).set(run_keys.LAST_CHECK, outcome, ex=40 * 86400)


def _ago(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
