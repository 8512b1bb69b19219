"""The backup sets under the task root, found by their manifests, and safe paths to their files.

A set is named `<task_id>~<timestamp>`, or `~<timestamp>` for `<root>/vector_bak/`:
task ids cannot hold `~`, so the name splits back unambiguously, and it is one URL
path segment.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypedDict

from common.config import Settings, validate_task_id
from common.exceptions import ConfigurationError, VerifyError
from common.manifest import MANIFEST_GLOB, load_manifest, manifest_name, manifest_timestamp

SEPARATOR = "~"
# A set's timestamp as file names carry it (VECTOR_TIMESTAMP_FORMAT): no path, no dots first.
STAMP = re.compile(r"[A-Za-z0-9_\-]{1,64}")


class SetSummary(TypedDict):
    set: str
    task_id: str | None
    timestamp: str
    created_at: str | None
    run_id: str | None
    tables: dict[str, dict[str, Any]]
    files: list[str]


def set_name(task_id: str | None, timestamp: str) -> str:
    return f"{task_id or ''}{SEPARATOR}{timestamp}"


def list_sets(settings: Settings) -> list[SetSummary]:
    """Every set with a readable manifest, newest first; unreadable manifests are skipped."""
    directories = [(None, settings.backup_directory())]
    if settings.task_root.is_dir():
        directories += [
            (task.name, task / settings.vector.backup_directory)
            for task in sorted(settings.task_root.iterdir())
            if task.is_dir() and _is_task_id(task.name)
        ]
    sets = []
    for task_id, directory in directories:
        for path in sorted(directory.glob(MANIFEST_GLOB)) if directory.is_dir() else []:
            try:
                sets.append(_summary(task_id, path))
            except VerifyError:
                continue
    return sorted(sets, key=lambda s: s["timestamp"], reverse=True)


def find_set(settings: Settings, name: str) -> tuple[Path, dict[str, Any]]:
    """The manifest path and contents of the set called `name`; `VerifyError` if there is none."""
    task_id, sep, timestamp = name.partition(SEPARATOR)
    if not sep or not timestamp or not STAMP.fullmatch(timestamp) or len(name) > 200:
        raise VerifyError(f"no backup set called {name[:100]!r}")
    if task_id and not _is_task_id(task_id):
        raise VerifyError(f"no backup set called {name!r}")
    path = settings.backup_directory(task_id or None) / manifest_name(timestamp)
    if path.parent != settings.backup_directory(task_id or None) or not _plain_file(path):
        raise VerifyError(f"no backup set called {name!r}")
    return path, load_manifest(path)


def set_file(settings: Settings, name: str, file_name: str) -> Path:
    """A file of the set: one its manifest lists, or the manifest itself. Nothing else,
    so no name can reach outside the backup directory."""
    manifest_path, manifest = find_set(settings, name)
    allowed = {entry.get("file") for entry in manifest["tables"].values()} | {manifest_path.name}
    if file_name not in allowed or Path(file_name).name != file_name:
        raise VerifyError(f"{file_name!r} is not a file of backup set {name!r}")
    path = manifest_path.parent / file_name
    if not _plain_file(path):
        raise VerifyError(f"{file_name!r} of backup set {name!r} is missing on disk (or not a plain file)")
    return path


def _plain_file(path: Path) -> bool:
    """A regular file that is no symlink and, with its directory resolved, stays in it:
    a link planted in a backup directory must never be followed."""
    return path.is_file() and not path.is_symlink() and path.resolve().parent == path.parent.resolve()


def _summary(task_id: str | None, path: Path) -> SetSummary:
    manifest = load_manifest(path)
    timestamp = manifest_timestamp(path)
    tables = {
        table: {"file": entry.get("file"), "rows": entry.get("rows"), "bytes": entry.get("bytes")}
        for table, entry in manifest["tables"].items()
    }
    return SetSummary(
        set=set_name(task_id, timestamp),
        task_id=task_id,
        timestamp=timestamp,
        created_at=manifest.get("created_at"),
        run_id=manifest.get("run_id"),
        tables=tables,
        files=[path.name, *(t["file"] for t in tables.values())],
    )


def _is_task_id(name: str) -> bool:
    try:
        validate_task_id(name)
    except ConfigurationError:
        return False
    return True
