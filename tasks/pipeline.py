"""The pipeline's entry point: enqueue the vector chain once per pipeline task.

Every entry point of the pipeline (the full workflow, the training loader alone, the
API) may call `enqueue_vector_management` for the same pipeline task; the first call
claims the task id (with the operation and the database) in Redis (`SET NX` with an
expiry) and sends the chain; every other call — same process or not, same moment or
later — gets the same run id back.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any, TypedDict

from celery.result import AsyncResult

from common.config import Settings, load_settings
from common.exceptions import ConfigurationError
from common.run_database import forget_run_database, store_run_database
from tasks.vector_backup import build_vector_workflow, redis_client, table_results
from worker import app

NOT_RUN = "vector table management: not run"


class EnqueueResult(TypedDict):
    run_id: str | None
    enqueued: bool
    backup: bool
    truncate: bool
    message: str


def claim_key(task_id: str, truncate: bool, database: dict[str, Any]) -> str:
    """One claim per pipeline task, operation and database: a truncate asked after a
    backup-only run, or a run on another database, is a different request."""
    mode = "truncate" if truncate else "backup"
    return "vector:claim:{task_id}:{mode}:{host}:{port}/{dbname}".format(
        task_id=task_id, mode=mode, **database
    )


def run_key(run_id: str) -> str:
    return f"vector:run:{run_id}"


def enqueue_vector_management(
    task_id: str | None,
    backup: bool = False,
    truncate: bool = False,
    *,
    db_connection: str | None = None,
    force: bool = False,
    settings: Settings | None = None,
) -> EnqueueResult:
    """Send the backup (and truncate) chain for `task_id` unless it was sent already.

    Truncate implies backup; neither means nothing is sent. `force=True` sends a new run
    even if one was claimed for this task id. Without a task id there is nothing to
    de-duplicate on, so every call sends a run (the nightly backup's case).
    `db_connection` (a postgresql:// URL) targets another database than the configured
    one; it reaches the workers through Redis, never as a task argument.
    """
    if truncate and not backup:
        backup = True
    if not backup:
        return EnqueueResult(run_id=None, enqueued=False, backup=False, truncate=False, message=NOT_RUN)
    settings = settings or load_settings()
    run_id = uuid.uuid4().hex
    client = redis_client(settings.runs.redis_url)
    ttl = int(settings.runs.claim_ttl_s)
    database = settings.database
    if db_connection:
        database = store_run_database(client, run_id, db_connection, ttl)
    workflow = build_vector_workflow(
        task_id,
        truncate=truncate,
        settings=settings,
        run_id=run_id,
        external_db=bool(db_connection),
        now=reserve_timestamp(client, settings, task_id, ttl),
    )
    final = workflow.freeze()
    record = {
        "run_id": run_id,
        "task_id": task_id,
        "truncate": truncate,
        "final": final.id,
        "tables": {result.id: table for result, table in table_results(workflow)},
    }
    # The record goes first, so whoever reads a claimed run id finds its record.
    client.set(run_key(run_id), json.dumps(record), ex=ttl)
    if task_id is not None:
        claim = claim_key(task_id, truncate, database.identity)
        claimed = client.set(claim, run_id, nx=not force, ex=ttl)
        if not claimed:
            # Nobody ever saw this run id: drop what was stored for it.
            client.delete(run_key(run_id))
            forget_run_database(client, run_id)
            existing = client.get(claim)
            if existing is None:  # the claim expired in between: try again
                return enqueue_vector_management(
                    task_id, backup, truncate, db_connection=db_connection, force=force, settings=settings
                )
            return EnqueueResult(
                run_id=existing.decode(),
                enqueued=False,
                backup=True,
                truncate=truncate,
                message=f"vector table management for {task_id} was already enqueued",
            )
    workflow.apply_async()
    return EnqueueResult(
        run_id=run_id,
        enqueued=True,
        backup=True,
        truncate=truncate,
        message=f"vector table management enqueued as run {run_id}",
    )


def stamp_key(directory, stamp: str) -> str:
    """Reserved by a run for `VECTOR_CLAIM_TTL`: retention leaves such a set alone."""
    return f"vector:stamp:{directory}:{stamp}"


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
    """The result of the run's last task: the result dict, or the run's error."""
    return AsyncResult(record["final"], app=app)
