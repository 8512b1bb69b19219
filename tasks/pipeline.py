"""The pipeline's entry point: enqueue the vector chain once per pipeline task.

Every entry point of the pipeline (the full workflow, the training loader alone, the
API) may call `enqueue_vector_management` for the same pipeline task; the first call
claims the task id (with the operation and the database) in Redis (`SET NX` with an
expiry) and sends the chain; every other call — same process or not, same moment or
later — gets the same run id back while that run is live or once it succeeded. A run
that failed, was cancelled or was abandoned is replaced by a new one: enqueue-once
must not replay a failure.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from datetime import datetime, timedelta
from typing import Any, NotRequired, TypedDict

import redis
from celery.result import AsyncResult

from common import run_keys
from common.config import Settings, load_settings
from common.exceptions import ConfigurationError, RunEndedError, RunNotCancellable
from common.output import (
    NOT_RUN,
    already_enqueued_message,
    enqueued_message,
    not_cancellable_message,
    replaced_message,
    stopped_message,
)
from common.redis_conn import redis_client, run_states
from common.run_database import forget_run_database, store_run_database
from common.run_result import VectorRunResult
from common.run_state import FAILED, LIVE, STOPPED, SUCCEEDED, RunStates, RunStatus
from tasks import names
from tasks.app import app
from tasks.workflow import build_vector_workflow, table_results

# A pipeline task's run is replaced by a new one only once it failed or was stopped.
KEEPS_CLAIM = (*LIVE, SUCCEEDED)


class EnqueueResult(TypedDict):
    run_id: str | None
    enqueued: bool
    backup: bool
    truncate: bool
    message: str
    # Only when this call replaced an earlier run of the task (failed, cancelled,
    # abandoned, or superseded with `force`): that run and the state it was in.
    previous_run_id: NotRequired[str]
    previous_state: NotRequired[str]


def claim_key(task_id: str, truncate: bool, database: dict[str, Any]) -> str:
    """One claim per pipeline task, operation and database: a truncate asked after a
    backup-only run, or a run on another database, is a different request."""
    return run_keys.claim(task_id, "truncate" if truncate else "backup", database)


def run_key(run_id: str) -> str:
    return run_keys.run_record(run_id)


def enqueue_vector_management(
    task_id: str | None,
    backup: bool = False,
    truncate: bool = False,
    *,
    db_connection: str | None = None,
    force: bool = False,
    settings: Settings | None = None,
) -> EnqueueResult:
    """Send the backup (and truncate) chain for `task_id` unless a run of it is live or
    succeeded.

    Truncate implies backup; neither means nothing is sent. A task whose run failed, was
    cancelled or was abandoned gets a new run, and the answer names the previous one.
    `force=True` sends a new run in any case; a live run it replaces is cancelled.
    Without a task id there is nothing to de-duplicate on, so every call sends a run (the
    nightly backup's case). `db_connection` (a postgresql:// URL) targets another database
    than the configured one; it reaches the workers through Redis, never as a task argument.
    """
    if truncate and not backup:
        backup = True
    if not backup:
        return EnqueueResult(run_id=None, enqueued=False, backup=False, truncate=False, message=NOT_RUN)
    settings = settings or load_settings()
    run_id = uuid.uuid4().hex
    client = redis_client(settings.runs.redis_url)
    states = run_states(settings)
    ttl = int(settings.runs.claim_ttl_s)
    database = settings.database
    if db_connection:
        database = store_run_database(client, run_id, db_connection, ttl)
    moment = reserve_timestamp(client, settings, task_id, ttl)
    workflow = build_vector_workflow(
        task_id,
        truncate=truncate,
        settings=settings,
        run_id=run_id,
        external_db=bool(db_connection),
        now=moment,
    )
    final = workflow.freeze()
    record = {
        "run_id": run_id,
        "task_id": task_id,
        "truncate": truncate,
        "timestamp": moment.strftime(settings.vector.timestamp_format),
        "final": final.id,
        "tables": {result.id: table for result, table in table_results(workflow)},
    }
    # The record and state go first, so whoever reads a claimed run id finds them.
    client.set(run_key(run_id), json.dumps(record), ex=ttl)
    states.create(run_id, task_id, database.identity, truncate)
    answer = EnqueueResult(
        run_id=run_id,
        enqueued=True,
        backup=True,
        truncate=truncate,
        message=enqueued_message(run_id),
    )
    if task_id is not None:
        claim = claim_key(task_id, truncate, database.identity)
        previous, replaced = _claim(client, states, claim, run_id, ttl, force)
        if previous is not None and not replaced:
            # Nobody ever saw this run id: drop what was stored for it.
            client.delete(run_key(run_id))
            states.forget(run_id)
            forget_run_database(client, run_id)
            return EnqueueResult(
                run_id=previous["run_id"],
                enqueued=False,
                backup=True,
                truncate=truncate,
                message=already_enqueued_message(task_id, previous),
            )
        if previous is not None:
            states.supersede(previous["run_id"], run_id)
            answer.update(previous_run_id=previous["run_id"], previous_state=previous["state"])
            answer["message"] = replaced_message(task_id, previous, run_id)
    try:
        workflow.apply_async()
    except Exception as exc:
        # A run never sent must not hold its pipeline task's claim: the retry replaces it.
        with contextlib.suppress(redis.RedisError):
            states.finish(run_id, FAILED, f"the run could not be sent: {type(exc).__name__}", patience=0)
        raise
    return answer


def _claim(
    client, states: RunStates, claim: str, run_id: str, ttl: int, force: bool
) -> tuple[RunStatus | None, bool]:
    """Claim `claim` for `run_id`: (the run that held it before or None, whether `run_id`
    replaced it). A run that is live or succeeded keeps its claim unless `force`. Of many
    callers replacing one ended run exactly one wins; the others get the winner's run."""
    while True:
        if client.set(claim, run_id, nx=True, ex=ttl):
            return None, True
        existing = client.get(claim)
        if existing is None:
            continue  # expired in between
        holder = existing.decode()
        status = states.status(holder) or RunStatus(run_id=holder, state="expired")
        if status["state"] in KEEPS_CLAIM and not force:
            return status, False
        if states.swap_claim(claim, holder, run_id, ttl):
            return status, True
        # Another caller replaced the same run first: look again at the new holder.


def stamp_key(directory, stamp: str) -> str:
    """Reserved by a run for `VECTOR_CLAIM_TTL`: retention leaves such a set alone."""
    return run_keys.stamp(directory, stamp)


def reserve_timestamp(client, settings: Settings, task_id: str | None, ttl: int) -> datetime:
    """A time whose timestamp no other run of this backup directory uses.

    File names carry the timestamp to the second, and two runs of one directory in the
    same second (two API calls, say) would collide; the later run takes the next free
    second instead. Redis arbitrates between clients; the disk covers older sets.
    """
    directory = settings.backup_directory(task_id)
    moment = datetime.now()
    for _ in range(3600):
        stamp = moment.strftime(settings.vector.timestamp_format)
        free = not any(directory.glob(f"*_{stamp}.*"))
        if free and client.set(stamp_key(directory, stamp), 1, nx=True, ex=ttl):
            return moment
        moment += timedelta(seconds=1)
    raise ConfigurationError(
        f"no free timestamp in the next hour for {directory}; VECTOR_TIMESTAMP_FORMAT must include seconds"
    )


def run_record(run_id: str, settings: Settings | None = None) -> dict[str, Any] | None:
    """What was sent for `run_id`: its task id, truncate flag and task ids; None if unknown."""
    settings = settings or load_settings()
    raw = redis_client(settings.runs.redis_url).get(run_key(run_id))
    return json.loads(raw) if raw else None


def run_result(record: dict[str, Any]) -> AsyncResult:
    """The result of the run's last task: the result dict, or the run's error.

    A run whose workers died never gets one: follow a run with `wait_for_run`."""
    return AsyncResult(record["final"], app=app)


def run_status(run_id: str, settings: Settings | None = None) -> RunStatus | None:
    """The run's recorded state (judged for liveness); None if unknown or expired."""
    return run_states(settings or load_settings()).status(run_id)


def wait_for_run(run_id: str, timeout: float = 3600, settings: Settings | None = None) -> VectorRunResult:
    """The run's result dict once it succeeded. Raises the run's error if it failed,
    `RunEndedError` as soon as it is known cancelled or abandoned (within the liveness
    window of its workers' death), `TimeoutError` after `timeout` seconds."""
    settings = settings or load_settings()
    record = run_record(run_id, settings)
    if record is None:
        raise ConfigurationError(f"unknown run {run_id} (never sent, or expired)")
    final = run_result(record)
    deadline = time.monotonic() + timeout
    while not final.ready():
        status = run_status(run_id, settings)
        if status is not None and status["state"] in STOPPED:
            raise RunEndedError(stopped_message(status))
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still running after {timeout:g}s")
        time.sleep(0.25)
    return final.get(propagate=True)


def recent_runs(limit: int = 20, settings: Settings | None = None) -> list[RunStatus]:
    """The newest runs first, each judged for liveness."""
    return run_states(settings or load_settings()).recent(limit)


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
        raise RunNotCancellable(not_cancellable_message(run_id, outcome))
    record = run_record(run_id, settings)
    if record is not None:
        # Tasks not yet started are dropped by the workers; those running see the state at
        # their next beat. A worker removes what tasks that had already ended left.
        app.control.revoke(list(record["tables"]))
        if record.get("timestamp"):
            app.send_task(
                names.DISCARD_RUN, args=({k: record[k] for k in ("run_id", "task_id", "timestamp")},)
            )
    status = states.status(run_id)
    assert status is not None
    return status
