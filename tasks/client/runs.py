"""A run seen from outside: what was sent for it, its recorded state, its last task's
result, the recent runs, and cancelling one."""

from __future__ import annotations

import json
from typing import Any

from celery.result import AsyncResult

from common import output, run_keys
from common.config import Settings, load_settings
from common.exceptions import ConfigurationError, RunNotCancellable, VectorBackupError
from common.pins import is_pinned
from common.redis_conn import redis_client, run_states
from common.run_state import SUCCEEDED, RunStatus
from tasks import names
from tasks.app import app


def run_record(run_id: str, settings: Settings | None = None) -> dict[str, Any] | None:
    """What was sent for `run_id`: its task id, truncate flag and task ids; None if unknown."""
    settings = settings or load_settings()
    raw = redis_client(settings.runs.redis_url).get(run_keys.run_record(run_id))
    return json.loads(raw) if raw else None


def run_result(record: dict[str, Any]) -> AsyncResult:
    """The result of the run's last task: the result dict, or the run's error.

    A run whose workers died never gets one: follow a run with `wait_for_run`."""
    return AsyncResult(record["final"], app=app)


def run_status(run_id: str, settings: Settings | None = None) -> RunStatus | None:
    """The run's recorded state (judged for liveness); None if unknown or expired."""
    return run_states(settings or load_settings()).status(run_id)


def recent_runs(limit: int = 20, settings: Settings | None = None) -> list[RunStatus]:
    """The newest runs first, each judged for liveness."""
    return run_states(settings or load_settings()).recent(limit)


def pinned_runs(statuses: list[RunStatus], settings: Settings | None = None) -> set[str]:
    """The ids of the runs among `statuses` whose backup set is pinned: one read of the run's
    record and one look-up in its storage per succeeded run. A run whose record expired or
    whose storage cannot be read shows no pin: this only decorates a listing."""
    settings = settings or load_settings()
    pinned = set()
    for status in statuses:
        record = run_record(status["run_id"], settings) if status.get("state") == SUCCEEDED else None
        if not record or not record.get("timestamp"):
            continue
        try:
            if is_pinned(settings.backup_storage(record.get("task_id")), record["timestamp"]):
                pinned.add(status["run_id"])
        except VectorBackupError:
            continue
    return pinned


def cancel_run(run_id: str, settings: Settings | None = None) -> RunStatus:
    """Cancel a queued or running run: its state becomes cancelled at once, its database
    lock is freed, its queued tasks are revoked, and its running tasks stop their COPYs at
    their next heartbeat and remove its unfinished files. Never a truncate after this.

    Raises `ConfigurationError` for an unknown run and `RunNotCancellable` for one that
    has ended (or is truncating, which takes one short transaction)."""
    settings = settings or load_settings()
    states = run_states(settings)
    outcome = states.cancel(run_id, "cancelled on request")
    if outcome == "missing":
        raise ConfigurationError(f"unknown run {run_id} (never sent, or expired)")
    if outcome != "ok":
        raise RunNotCancellable(output.not_cancellable_message(run_id, outcome))
    record = run_record(run_id, settings)
    if record is not None:
        # Tasks not yet started are dropped by the workers; those running see the state at
        # their next beat. A worker removes what tasks that had already ended left.
        app.control.revoke(list(record["tables"]))
        if record.get("timestamp"):
            left = {k: record[k] for k in ("run_id", "task_id", "timestamp")}
            app.send_task(names.DISCARD_RUN, args=(left,))
    status = states.status(run_id)
    assert status is not None
    return status
