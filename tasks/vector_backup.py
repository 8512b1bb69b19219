"""The tasks of a run's chain (`tasks/workflow.py` builds it by their names): back up each
table, close the set (the chord body), then (optionally) truncate.

The chord body raises if any table failed, so truncate only ever runs after a complete
set.
"""

from __future__ import annotations

import contextlib
import time

import redis

from common.backup import TableBackup
from common.config import Settings, load_settings
from common.exceptions import BackupFailedError, RunEndedError
from common.output import progress_line
from common.redis_conn import redis_client, run_states
from common.run_database import forget_run_database, settings_for_run
from common.run_lock import RunLock
from common.run_result import RunRequest, VectorRunResult
from common.run_state import REDIS_PATIENCE_S, patiently
from common.run_steps import back_up_table, close_backup_set, truncate_after_backup
from common.split import SplitBoard
from tasks import names
from tasks.app import app
from tasks.run_guard import leave_stopped_run, run_lock, run_task
from tasks.workflow import build_vector_workflow, table_results

# `build_vector_workflow` and `table_results` were documented here before they moved.
__all__ = [
    "backup_table",
    "backup_vector_tables",
    "build_vector_workflow",
    "redis_client",
    "run_lock",
    "table_results",
    "truncate_vector_tables",
]


class DatabaseBusy(Exception):
    """Another run holds this database's lock (a retry reason, never a final state)."""


def run_settings(run: RunRequest | VectorRunResult) -> Settings:
    """The worker's settings, with the run's own database if it was given one."""
    settings = load_settings()
    client = redis_client(settings.runs.redis_url)
    return settings_for_run(settings, client, str(run.get("run_id")), bool(run.get("external_db")))


def take_lock(settings: Settings, lock: RunLock) -> bool:
    """The database's run lock for this run; a holder whose workers died loses it here,
    once its liveness window has passed, instead of at the lock's expiry."""
    if patiently(lock.acquire, REDIS_PATIENCE_S):
        return True
    holder = lock.holder()
    if holder is not None:
        run_states(settings).status(holder)  # judges the holder; an abandoned run frees its lock
    return patiently(lock.acquire, REDIS_PATIENCE_S)


@app.task(name=names.BACKUP_TABLE, bind=True, max_retries=None, throws=(RunEndedError,))
def backup_table(self, table: str, request: RunRequest, split: bool = False) -> TableBackup:
    settings = run_settings(request)
    with run_task(settings, request, self.request.id, last_step=False) as task:
        return _back_up(self, settings, table, request, split, task)


def _back_up(self, settings: Settings, table: str, request: RunRequest, split: bool, task) -> TableBackup:
    lock = task.lock
    taken = take_lock(settings, lock)
    task.check()  # a run cancelled meanwhile must not hold the database
    if not taken:
        busy = f"{settings.database.describe()} is busy with run {lock.holder()}"
        if settings.runs.lock_wait == "wait":
            # Re-queued with a countdown; RETRY in the result backend and Flower says why.
            raise self.retry(countdown=settings.runs.lock_retry_delay_s, exc=DatabaseBusy(busy))
        return TableBackup(
            table=table,
            success=False,
            row_count=0,
            error=f"{table}: {busy}",
            duration=0.0,
            started_at=time.time(),
        )

    def report(progress):
        # The result backend serves clients polling the task; the event serves Flower,
        # which builds its view from events only: `task-progress` becomes the state
        # PROGRESS, and Flower shows only its standard fields, so the line goes in `result`.
        self.update_state(state="PROGRESS", meta=progress)
        self.send_event("task-progress", result=progress_line(progress), **progress)

    board = None
    if split:  # one of the table's range-split tasks (decided when the run was built)
        board = SplitBoard(redis_client(settings.runs.redis_url), request["run_id"], table, self.request.id)
    result = back_up_table(settings, request, table, on_progress=report, lock=lock, board=board)
    task.check()  # a copy stopped by a cancel is the run's end, not this table's failure
    return result


@app.task(name=names.BACKUP_SET, bind=True, throws=(RunEndedError,))
def backup_vector_tables(self, tables: list[TableBackup], request: RunRequest) -> VectorRunResult:
    settings = run_settings(request)
    ends_run = True
    last_step = not request["truncate_requested"]
    states = run_states(settings)
    try:
        with run_task(settings, request, self.request.id, last_step=last_step) as task:
            task.check()
            try:
                result = close_backup_set(settings, request, tables, lock=task.lock)
            except BackupFailedError as exc:
                states.record_tables(request["run_id"], (exc.result or {}).get("tables_backed_up", {}))
                raise
            states.record_tables(request["run_id"], result["tables_backed_up"])
            ends_run = last_step
            return result
    finally:
        if ends_run:
            forget_quietly(settings, request["run_id"])


@app.task(name=names.TRUNCATE, bind=True, throws=(RunEndedError,))
def truncate_vector_tables(self, backup_result: VectorRunResult) -> VectorRunResult:
    settings = run_settings(backup_result)
    run_id = str(backup_result.get("run_id", ""))
    try:
        if not run_id:  # not a run's result: the engine refuses it for what it lacks
            return truncate_after_backup(settings, backup_result)
        with run_task(settings, backup_result, self.request.id, last_step=True) as task:
            return truncate_after_backup(settings, backup_result, task.lock, task.may_truncate)
    finally:
        forget_quietly(settings, run_id)


def forget_quietly(settings: Settings, run_id: str) -> None:
    """Drop the run's database URL; if Redis cannot be reached, it expires with the claim."""
    with contextlib.suppress(redis.RedisError):
        forget_run_database(redis_client(settings.runs.redis_url), run_id)


@app.task(name=names.DISCARD_RUN)
def discard_run(run: dict) -> list[str]:
    """What a cancelled run left behind, removed on a worker (which sees the task root);
    nothing unless the run is cancelled or abandoned. The names of the files removed."""
    settings = load_settings()
    return leave_stopped_run(settings, run, run_states(settings).state(str(run["run_id"])))
