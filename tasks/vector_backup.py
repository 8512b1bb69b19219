"""Back up the vector tables as a chord, then (optionally) truncate, as one chain.

    chord([backup_table(t) for t in tables], backup_vector_tables) | truncate_vector_tables

The chord body raises if any table failed, so truncate only ever runs after a complete
set. Task arguments hold table names, the pipeline task id and a timestamp: never a
connection string; workers read the database from their own environment.
"""

from __future__ import annotations

from datetime import datetime

from celery import Signature, chord
from celery.result import AsyncResult

from common.backup import TableBackup
from common.config import Settings, load_settings, validate_task_id
from common.run_result import RunRequest, VectorRunResult
from common.run_steps import back_up_table, close_backup_set, truncate_after_backup
from worker import app


@app.task(name="vector.backup_table", bind=True)
def backup_table(self, table: str, request: RunRequest) -> TableBackup:
    def report(progress):
        self.update_state(state="PROGRESS", meta=progress)

    return back_up_table(load_settings(), request, table, on_progress=report)


@app.task(name="vector.backup_vector_tables")
def backup_vector_tables(tables: list[TableBackup], request: RunRequest) -> VectorRunResult:
    return close_backup_set(load_settings(), request, tables)


@app.task(name="vector.truncate_vector_tables")
def truncate_vector_tables(backup_result: VectorRunResult) -> VectorRunResult:
    return truncate_after_backup(load_settings(), backup_result)


def build_vector_workflow(
    task_id: str | None = None,
    backup: bool = True,
    truncate: bool = False,
    settings: Settings | None = None,
    now: datetime | None = None,
) -> Signature | None:
    """The signature to run: the backup chord, `| truncate` when asked, or None for nothing.

    Truncate implies backup: there is no signature that truncates without one.
    """
    if not (backup or truncate):
        return None
    settings = settings or load_settings()
    if task_id is not None:
        validate_task_id(task_id)
    request = RunRequest(
        task_id=task_id,
        timestamp=(now or datetime.now()).strftime(settings.vector.timestamp_format),
        truncate_requested=truncate,
    )
    header = [backup_table.s(table, request) for table in settings.vector.supported_tables]
    workflow = chord(header, backup_vector_tables.s(request))
    if truncate:
        workflow = workflow | truncate_vector_tables.s()
    return workflow


def table_results(workflow: Signature) -> list[AsyncResult]:
    """The per-table backup results of a frozen workflow, to read their PROGRESS meta."""
    header = workflow.tasks
    return [AsyncResult(task.id, app=app) for task in getattr(header, "tasks", header)]
