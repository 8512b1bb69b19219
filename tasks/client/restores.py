"""A restore sent to the workers from outside (the API): what was asked, recorded under
its job id so an unknown id is told from a queued one, and the task's state and outcome."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from celery.result import AsyncResult

from common import run_keys
from common.config import Settings
from common.exceptions import VerifyError
from common.redis_conn import redis_client
from tasks import names
from tasks.app import app


def enqueue_restore(settings: Settings, set_name: str, collections: list[str] | None) -> str:
    """Send `vector.restore_backup_set` for the set called `set_name` (every collection, or
    only `collections`, in place) and return its job id. Its arguments hold no secret: the
    workers restore into their own configured database."""
    job_id = uuid.uuid4().hex
    record = {"job_id": job_id, "set": set_name, "collections": collections, "requested_at": time.time()}
    client = redis_client(settings.runs.redis_url)
    # Celery keeps the result `result_expires` from the task's end; the record starts now
    # and must outlast a wait in the queue too.
    keep = int(app.conf.result_expires or 86400) + int(settings.runs.keep_s)
    client.set(run_keys.restore_job(job_id), json.dumps(record), ex=keep)
    kwargs = {} if collections is None else {"collections": collections}
    try:
        app.send_task(names.RESTORE_SET, args=(set_name,), kwargs=kwargs, task_id=job_id)
    except BaseException:
        client.delete(run_keys.restore_job(job_id))  # never sent: no job to show as queued
        raise
    return job_id


def restore_job(settings: Settings, job_id: str) -> dict[str, Any] | None:
    """What was asked, Celery's state of the task (PENDING while queued, STARTED, SUCCESS,
    FAILURE) and its result or `{error_type, reason}`; None for an id never sent (or expired)."""
    raw = redis_client(settings.runs.redis_url).get(run_keys.restore_job(job_id))
    if raw is None:
        return None
    job = json.loads(raw)
    outcome = AsyncResult(job_id, app=app)
    job["state"] = outcome.state
    if outcome.successful():
        job["result"] = outcome.result
    elif outcome.failed():
        exc = outcome.result
        kind = "VERIFY_FAILED" if isinstance(exc, VerifyError) else "RESTORE_FAILED"
        job["error"] = {"error_type": kind, "reason": f"{type(exc).__name__}: {exc}"[:2000]}
    return job
