"""The chain of a run, built from task names: the backup chord, then (optionally) truncate.

    chord([backup_table(t) for t in tables], backup_vector_tables) | truncate_vector_tables

Signatures name their tasks (`tasks/names.py`) instead of importing the task functions,
so a client builds and sends a run without loading a task definition. Task arguments hold
table names, the pipeline task id and a timestamp: never a connection string; workers
read the database from their own environment.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime

from celery import Signature, chord
from celery.result import AsyncResult

from common.config import Settings, load_settings, validate_task_id
from common.formats import file_format
from common.run_result import RunRequest
from tasks import names
from tasks.app import app


def splits(settings: Settings, table: str) -> bool:
    """Whether `table` gets several header tasks (range-split, `common.split`, which
    shares one file in a local directory or one multipart upload in object storage)."""
    vector = settings.vector
    return (
        vector.split_workers > 1
        and table in vector.split_tables
        and file_format(vector.file_format).can_split
    )


def build_vector_workflow(
    task_id: str | None = None,
    backup: bool = True,
    truncate: bool = False,
    settings: Settings | None = None,
    now: datetime | None = None,
    run_id: str | None = None,
    external_db: bool = False,
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
        run_id=run_id or uuid.uuid4().hex,
        task_id=task_id,
        timestamp=(now or datetime.now()).strftime(settings.vector.timestamp_format),
        truncate_requested=truncate,
        external_db=external_db,
        requested_at=time.time(),
    )
    header = []
    for table in settings.vector.supported_tables:
        split = splits(settings, table)
        tasks = settings.vector.split_workers if split else 1
        header += [
            app.signature(names.BACKUP_TABLE, (table, request), {"split": split}) for _ in range(tasks)
        ]
    workflow = chord(header, app.signature(names.BACKUP_SET, (request,)))
    if truncate:
        workflow = workflow | app.signature(names.TRUNCATE)
    return workflow


def table_results(workflow: Signature) -> list[tuple[AsyncResult, str]]:
    """The header tasks of a frozen workflow and their tables, to read their PROGRESS meta.

    A range-split table has several tasks; each reports what it copied itself.
    """
    header = workflow.tasks
    return [(AsyncResult(task.id, app=app), task.args[0]) for task in getattr(header, "tasks", header)]
