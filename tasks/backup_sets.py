"""Celery tasks on existing backup sets: verify and restore, for workers that share the task root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.config import Settings, load_settings
from common.db import connect
from common.exceptions import ConfigurationError
from common.manifest import verify_set
from common.restore import RestoreResult, restore_set
from tasks import names
from tasks.app import app


def inside_task_root(settings: Settings, path: str) -> Path:
    """`path` (absolute, or relative to the task root) if it stays inside the task root."""
    root = settings.task_root.resolve()
    resolved = (root / path).resolve()
    if resolved != root and root not in resolved.parents:
        raise ConfigurationError(f"{path} is outside the task root")
    return resolved


@app.task(name=names.VERIFY_SET)
def verify_backup_set(path: str) -> dict[str, Any]:
    """The verified manifest of the set at `path`; raises `VerifyError` otherwise."""
    settings = load_settings()
    return verify_set(inside_task_root(settings, path), signing_key=settings.signing_key)


@app.task(name=names.RESTORE_SET)
def restore_backup_set(path: str, mode: str = "replace", jobs: int | None = None) -> RestoreResult:
    """Verify, then restore the set at `path` into the worker's configured database
    (`jobs` loaders, default `VECTOR_RESTORE_JOBS`)."""
    settings = load_settings()
    conn = connect(settings.database)
    try:
        return restore_set(
            conn,
            inside_task_root(settings, path),
            mode,
            settings,
            jobs=jobs,
            connect=lambda: connect(settings.database),
        )
    finally:
        conn.close()
