"""The pipeline's entry point: enqueue the vector chain once per pipeline task.

Every entry point of the pipeline (the full workflow, the training loader alone, the
API) may call `enqueue_vector_management` for the same pipeline task; the first call
claims the task id in Redis (`SET NX` with an expiry) and sends the chain, every other
call — same process or not, same moment or later — gets the same run id back.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, TypedDict

from celery.result import AsyncResult

from common.config import Settings, load_settings
from common.run_database import store_run_database
from tasks.vector_backup import build_vector_workflow, redis_client, table_results
from worker import app

NOT_RUN = "vector table management: not run"


class EnqueueResult(TypedDict):
    run_id: str | None
    enqueued: bool
    backup: bool
    truncate: bool
    message: str


def claim_key(task_id: str) -> str:
    return f"vector:claim:{task_id}"


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
    if db_connection:
        store_run_database(client, run_id, db_connection, ttl)
    workflow = build_vector_workflow(
        task_id, truncate=truncate, settings=settings, run_id=run_id, external_db=bool(db_connection)
    )
    final = workflow.freeze()
    tables = zip(table_results(workflow), settings.vector.supported_tables, strict=True)
    record = {
        "run_id": run_id,
        "task_id": task_id,
        "truncate": truncate,
        "final": final.id,
        "tables": {result.id: table for result, table in tables},
    }
    # The record goes first, so whoever reads a claimed run id finds its record.
    client.set(run_key(run_id), json.dumps(record), ex=ttl)
    if task_id is not None:
        claimed = client.set(claim_key(task_id), run_id, nx=not force, ex=ttl)
        if not claimed:
            existing = client.get(claim_key(task_id))
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


def run_record(run_id: str, settings: Settings | None = None) -> dict[str, Any] | None:
    """What was sent for `run_id`: its task id, truncate flag and task ids; None if unknown."""
    settings = settings or load_settings()
    raw = redis_client(settings.runs.redis_url).get(run_key(run_id))
    return json.loads(raw) if raw else None


def run_result(record: dict[str, Any]) -> AsyncResult:
    """The result of the run's last task: the result dict, or the run's error."""
    return AsyncResult(record["final"], app=app)
