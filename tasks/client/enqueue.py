"""Enqueue the vector chain once per pipeline task.

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
import glob
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NotRequired, TypedDict

import redis
from celery import Signature

from common import output, run_keys
from common.config import Settings, load_settings
from common.exceptions import ConfigurationError
from common.redis_conn import redis_client, run_states
from common.run_database import forget_run_database, store_run_database
from common.run_state import FAILED, LIVE, SUCCEEDED, RunStates, RunStatus
from tasks.workflow import build_vector_workflow, table_results

# A pipeline task's run is replaced by a new one only once it failed or was stopped.
KEEPS_CLAIM = (*LIVE, SUCCEEDED)
NOT_RUN = output.NOT_RUN


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
    if not (backup or truncate):
        return EnqueueResult(run_id=None, enqueued=False, backup=False, truncate=False, message=NOT_RUN)
    run = _record_run(settings or load_settings(), task_id, truncate, db_connection)
    answer = EnqueueResult(
        run_id=run.run_id,
        enqueued=True,
        backup=True,
        truncate=truncate,
        message=output.enqueued_message(run.run_id),
    )
    if task_id is not None:
        answer = _answer_for_claim(run, task_id, truncate, force, answer)
        if not answer["enqueued"]:
            return answer
    run.send()
    return answer


@dataclass
class RecordedRun:
    """A run whose record and state are in Redis, not yet sent."""

    run_id: str
    workflow: Signature
    database: dict[str, Any]
    client: redis.Redis
    states: RunStates
    ttl: int

    def forget(self) -> None:
        """Drop what was stored for a run id nobody ever saw."""
        self.client.delete(run_key(self.run_id))
        self.states.forget(self.run_id)
        forget_run_database(self.client, self.run_id)

    def send(self) -> None:
        try:
            self.workflow.apply_async()
        except Exception as exc:
            # A run never sent must not hold its pipeline task's claim: the retry replaces it.
            with contextlib.suppress(redis.RedisError):
                reason = f"the run could not be sent: {type(exc).__name__}"
                self.states.finish(self.run_id, FAILED, reason, patience=0)
            raise


def _record_run(
    settings: Settings, task_id: str | None, truncate: bool, db_connection: str | None
) -> RecordedRun:
    """Build the run's chain and store its record and state, before anyone can see its id."""
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
    return RecordedRun(run_id, workflow, database.identity, client, states, ttl)


def _answer_for_claim(
    run: RecordedRun, task_id: str, truncate: bool, force: bool, answer: EnqueueResult
) -> EnqueueResult:
    """`answer` once `run` has claimed its pipeline task (naming the run it replaced, if
    any), or the answer of the live or succeeded run that kept the claim."""
    claim = claim_key(task_id, truncate, run.database)
    previous, replaced = _claim(run.client, run.states, claim, run.run_id, run.ttl, force)
    if previous is None:
        return answer
    if not replaced:
        run.forget()
        return EnqueueResult(
            run_id=previous["run_id"],
            enqueued=False,
            backup=True,
            truncate=truncate,
            message=output.already_enqueued_message(task_id, previous),
        )
    run.states.supersede(previous["run_id"], run.run_id)
    answer.update(previous_run_id=previous["run_id"], previous_state=previous["state"])
    answer["message"] = output.replaced_message(task_id, previous, run.run_id)
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
    directory = settings.backup_location(task_id)
    storage = settings.backup_storage(task_id)
    moment = datetime.now()
    for _ in range(3600):
        stamp = moment.strftime(settings.vector.timestamp_format)
        free = not storage.names(f"*_{glob.escape(stamp)}.*")
        if free and client.set(stamp_key(directory, stamp), 1, nx=True, ex=ttl):
            return moment
        moment += timedelta(seconds=1)
    raise ConfigurationError(
        f"no free timestamp in the next hour for {directory}; VECTOR_TIMESTAMP_FORMAT must include seconds"
    )
