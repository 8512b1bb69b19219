"""Run parts of the real chain from a test."""

from __future__ import annotations

from celery import chord

from tasks.vector_backup import build_vector_workflow

TIMEOUT = 60


def backup_half_of_truncate_run(task_id: str) -> dict:
    """The result a truncate run hands to `truncate_vector_tables`; its run keeps the lock."""
    workflow = build_vector_workflow(task_id, truncate=True)
    return chord(workflow.tasks, workflow.body.tasks[0]).apply_async().get(timeout=TIMEOUT)
