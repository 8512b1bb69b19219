"""The seeds' result dict for one run, and the checks truncate depends on."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from common.backup import TableBackup
from common.exceptions import TruncateRefusedError
from common.storage import UnsafeFile, plain_name
from common.truncate import TableTruncate


class RunRequest(TypedDict):
    """What the caller asked for; travels as a task argument, so it holds no secret."""

    run_id: str
    task_id: str | None
    timestamp: str
    truncate_requested: bool
    external_db: bool
    requested_at: NotRequired[float]  # when the caller asked; truncate's deadline counts from it


class VectorRunResult(TypedDict, total=False):
    backup_performed: bool
    truncate_performed: bool
    truncate_requested: bool
    tables_backed_up: dict[str, TableBackup]
    truncate_results: dict[str, TableTruncate]
    errors: list[str]
    backup_directory: str
    manifest: str
    duration: float
    started_at: float
    requested_at: float
    run_id: str
    external_db: bool
    task_id: str | None
    timestamp: str
    database: dict[str, Any]


def aggregate_backups(
    request: RunRequest,
    tables: Iterable[TableBackup],
    storage: Any,
    database: dict[str, Any],
) -> VectorRunResult:
    """Fold the per-table results of one set into the run's result dict."""
    by_table = {t["table"]: t for t in tables}
    started_at = min((t["started_at"] for t in by_table.values()), default=time.time())
    errors = [t["error"] for t in by_table.values() if not t.get("success")]
    return VectorRunResult(
        backup_performed=not errors,
        truncate_performed=False,
        truncate_requested=request["truncate_requested"],
        tables_backed_up=by_table,
        truncate_results={},
        errors=errors,
        backup_directory=storage.location,
        duration=round(time.time() - started_at, 3),
        started_at=started_at,
        requested_at=request.get("requested_at", started_at),
        run_id=request["run_id"],
        external_db=request.get("external_db", False),
        task_id=request["task_id"],
        timestamp=request["timestamp"],
        database=database,
    )


def verified_row_counts(
    result: VectorRunResult, required_tables: Iterable[str], storage: Any
) -> dict[str, int]:
    """Rows per table of a backup set, or `TruncateRefusedError` saying why it is not proven.

    Proven means: the set is the one this worker would have written for the run, every
    required table succeeded, and each file exists with exactly the recorded size.
    """
    problems = []
    if not isinstance(result, dict) or not result.get("backup_performed"):
        raise TruncateRefusedError("no successful backup was recorded; nothing was truncated")
    recorded = str(result.get("backup_directory", ""))
    if not _same_place(recorded, storage):
        raise TruncateRefusedError(
            f"the backup was recorded in {recorded}, not in {storage.location}; nothing was truncated"
        )
    tables = result.get("tables_backed_up") or {}
    counts = {}
    for table in required_tables:
        info = tables.get(table)
        if not info or not info.get("success"):
            problems.append(f"{table} was not backed up")
            continue
        name = str(info.get("backup_file", ""))
        try:
            found = storage.stat(plain_name(name))
        except UnsafeFile:
            found = None
        if found is None:
            problems.append(f"{table}: backup file {name} is missing")
            continue
        if found.size != info.get("file_size_bytes"):
            problems.append(
                f"{table}: backup file {name} is {found.size} bytes, "
                f"the backup recorded {info.get('file_size_bytes')}"
            )
            continue
        counts[table] = int(info["row_count"])
    if problems:
        raise TruncateRefusedError("; ".join(problems) + "; nothing was truncated")
    return counts


def _same_place(recorded: str, storage: Any) -> bool:
    if recorded == storage.location:
        return True
    root = storage.local_root
    return root is not None and bool(recorded) and Path(recorded).resolve() == root.resolve()
