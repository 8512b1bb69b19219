"""Celery tasks on existing backup sets: verify and restore, for workers that share the
task root or the object storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.catalog import SEPARATOR, find_set
from common.collection_restore import CollectionRestoreResult, restore_collections
from common.config import Settings, load_settings
from common.db import connect
from common.exceptions import ConfigurationError, RestoreError
from common.manifest import SetRef, verify_set
from common.redis_conn import run_states
from common.restore import RestoreResult, restore_set
from tasks import names
from tasks.app import app


def inside_task_root(settings: Settings, path: str) -> Path | str:
    """`path` (absolute, or relative to the root of the backups) if it stays inside that
    root: the task root, or `VECTOR_STORAGE_URL`."""
    root_location = settings.root_location
    if "://" in root_location:
        url = path if "://" in path else f"{root_location}/{path.lstrip('/')}"
        if not url.startswith(root_location + "/") or "/../" in f"{url}/" or "/./" in f"{url}/":
            raise ConfigurationError(f"the set's location is outside {root_location}")
        return url
    root = Path(root_location).resolve()
    resolved = (root / path).resolve()
    if resolved != root and root not in resolved.parents:
        raise ConfigurationError(f"{path} is outside the task root")
    return resolved


def set_location(settings: Settings, where: str) -> SetRef | Path | str:
    """The set `where` names: its name as the list shows it (`<task_id>~<timestamp>`; found
    as the API finds it, never through a link), or a path inside the root (`inside_task_root`)."""
    if SEPARATOR in where and "/" not in where:
        return find_set(settings, where)[0]
    return inside_task_root(settings, where)


@app.task(name=names.VERIFY_SET)
def verify_backup_set(path: str) -> dict[str, Any]:
    """The verified manifest of the set at `path`; raises `VerifyError` otherwise."""
    settings = load_settings()
    return verify_set(set_location(settings, path), signing_key=settings.signing_key)


@app.task(name=names.RESTORE_SET)
def restore_backup_set(
    path: str, mode: str = "replace", jobs: int | None = None, collections: list[str] | None = None
) -> RestoreResult | CollectionRestoreResult:
    """Verify, then restore the set at `path` (or called by its name) into the worker's configured database
    (`jobs` loaders, default `VECTOR_RESTORE_JOBS`); with `collections`, only those
    LangChain collections, in place (`common.collection_restore`)."""
    settings = load_settings()
    if collections is not None and mode != "replace":
        raise RestoreError("restoring collections replaces them; mode 'append' does not apply")
    live = run_states(settings).live_runs(settings.database.identity)
    if live:
        # It may have waited in the queue behind a run the API's own check did not see.
        raise RestoreError(
            f"run {live[0]} of {settings.database.describe()} is queued or running; nothing was "
            f"restored: restore when it has ended (or stop it: python -m worker cancel {live[0]})"
        )
    where = set_location(settings, path)
    conn = connect(settings.database)
    try:
        if collections is not None:
            return restore_collections(conn, where, collections, settings)
        return restore_set(conn, where, mode, settings, jobs=jobs, connect=lambda: connect(settings.database))
    finally:
        conn.close()
