"""The backup sets under the root of the backups (the task root, or `VECTOR_STORAGE_URL`),
found by their manifests, and safe ways to their files.

A set is named `<task_id>~<timestamp>`, or `~<timestamp>` for `<root>/vector_bak/`:
task ids cannot hold `~`, so the name splits back unambiguously, and it is one URL
path segment.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any, BinaryIO, TypedDict

from common.config import Settings, validate_task_id
from common.exceptions import ConfigurationError, StorageError, VerifyError
from common.manifest import MANIFEST_GLOB, SetRef, load_manifest, locate, manifest_name
from common.pins import Pin, read_pin
from common.storage import FileInfo, open_storage

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
    pinned: bool
    pin: Pin | None


def set_name(task_id: str | None, timestamp: str) -> str:
    return f"{task_id or ''}{SEPARATOR}{timestamp}"


def list_sets(settings: Settings) -> list[SetSummary]:
    """Every set with a readable manifest, newest first; unreadable manifests are skipped."""
    task_ids: list[str | None] = [None]
    task_ids += [name for name in settings.root_storage().directories() if _is_task_id(name)]
    sets = []
    for task_id in task_ids:
        storage = settings.backup_storage(task_id)
        for name in storage.names(MANIFEST_GLOB):
            try:
                sets.append(_summary(task_id, SetRef(storage, name)))
            except VerifyError:
                continue
    return sorted(sets, key=lambda s: s["timestamp"], reverse=True)


def find_set(settings: Settings, name: str) -> tuple[SetRef, dict[str, Any]]:
    """The set called `name` and its manifest; `VerifyError` if there is none."""
    ref = named_set(settings, name)
    task_id = name.partition(SEPARATOR)[0]
    local_root = settings.root_storage().local_root
    if task_id and local_root is not None and (local_root / task_id).is_symlink():
        raise VerifyError(f"no backup set called {name!r}")  # as list_sets: links are not followed
    if not _plain_file(ref.storage, ref.manifest):
        raise VerifyError(f"no backup set called {name!r}")
    return ref, load_manifest(ref)


def named_set(settings: Settings, name: str) -> SetRef:
    """Where the set called `name` is, whether or not it exists; `VerifyError` for a name
    no set can have."""
    task_id, sep, timestamp = name.partition(SEPARATOR)
    if not sep or not timestamp or not STAMP.fullmatch(timestamp) or len(name) > 200:
        raise VerifyError(f"no backup set called {name[:100]!r}")
    if task_id and not _is_task_id(task_id):
        raise VerifyError(f"no backup set called {name!r}")
    return SetRef(settings.backup_storage(task_id or None), manifest_name(timestamp))


def set_ref(settings: Settings, where: str) -> SetRef:
    """The set `where` names: its name as the list shows it (`<task_id>~<timestamp>`), or
    its manifest's path or URL (never a directory: which set is meant must be explicit)."""
    if SEPARATOR in where and "/" not in where:
        return named_set(settings, where)  # a name never holds a slash, a path may hold a ~
    if not fnmatch.fnmatchcase(where.rsplit("/", 1)[-1], MANIFEST_GLOB):
        raise VerifyError(
            f"{where[:200]!r} is neither a set's name (<task_id>~<timestamp>) nor a {MANIFEST_GLOB} file"
        )
    return locate(where, settings.vector.backup_temp_suffix)


def task_exists(settings: Settings, task_id: str) -> bool:
    """Whether the pipeline task is known: `VECTOR_TASK_ROOT/<task_id>` is a directory on
    this host, or the root storage holds something under `<root>/<task_id>/` (in object
    storage a prefix exists only while it holds an object, so a task that has a backup)."""
    validate_task_id(task_id)
    if (settings.task_root / task_id).is_dir():
        return True
    return bool(open_storage(f"{settings.root_location}/{task_id}").present())


def open_set_file(settings: Settings, name: str, file_name: str) -> tuple[BinaryIO, FileInfo, str | None]:
    """A file of the set, opened, with its size and time and, if the manifest has it, its
    sha256: a file its manifest lists, or the manifest itself. Nothing else, so no name
    can reach outside the backup directory; what is sent is the file that was opened,
    however the directory changes meanwhile."""
    ref, manifest = find_set(settings, name)
    allowed = {entry.get("file") for entry in manifest["tables"].values()} | {ref.manifest}
    if file_name not in allowed or Path(file_name).name != file_name:
        raise VerifyError(f"{file_name!r} is not a file of backup set {name!r}")
    try:
        opened = ref.storage.open(file_name)
    except StorageError:
        raise  # the storage is unreachable or refused: not a missing file
    except OSError:
        raise VerifyError(
            f"{file_name!r} of backup set {name!r} is missing on disk (or not a plain file)"
        ) from None
    sha256 = next((e.get("sha256") for e in manifest["tables"].values() if e.get("file") == file_name), None)
    return opened, ref.storage.opened_info(opened), sha256 if isinstance(sha256, str) else None


def _plain_file(storage: Any, name: str) -> bool:
    """A regular file, never a link: a link planted in a backup directory is never followed."""
    try:
        return storage.stat(name) is not None
    except StorageError:
        raise
    except OSError:
        return False


def _summary(task_id: str | None, ref: SetRef) -> SetSummary:
    manifest = load_manifest(ref)
    timestamp = ref.timestamp
    pin = read_pin(ref.storage, timestamp)
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
        files=[ref.manifest, *(t["file"] for t in tables.values())],
        pinned=pin is not None,
        pin=pin,
    )


def _is_task_id(name: str) -> bool:
    try:
        validate_task_id(name)
    except ConfigurationError:
        return False
    return True
