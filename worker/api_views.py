"""What the API returns for a run: the seeds' data fields, a job's status, and errors."""

from __future__ import annotations

from typing import Any

from celery.result import AsyncResult

from common.exceptions import BackupFailedError, RunFailedError, TruncateRefusedError
from common.output import run_response, stopped_message
from common.run_state import STOPPED
from tasks.client.progress import table_states

# Per-table fields the seeds show; the manifest has the rest (columns, DDL, fingerprint).
TABLE_FIELDS = (
    "success",
    "row_count",
    "file_size",
    "file_size_bytes",
    "backup_file",
    "sha256",
    "duration",
    "error",
)
PROGRESS_FIELDS = ("step", "rows", "total_estimate", "bytes", "percent")
ERROR_TYPES = {BackupFailedError: "BACKUP_FAILED", TruncateRefusedError: "TRUNCATE_REFUSED"}


def run_data(result: dict[str, Any] | None, job_id: str) -> dict[str, Any]:
    """The seeds' success data for a run's result dict (or for a run that did nothing)."""
    result = result or {}
    tables = {
        name: {k: info[k] for k in TABLE_FIELDS if k in info}
        for name, info in (result.get("tables_backed_up") or {}).items()
    }
    return {
        "response": run_response(result),
        "job_id": job_id,
        "backup_performed": bool(result.get("backup_performed")),
        "truncate_performed": bool(result.get("truncate_performed")),
        "backup_directory": result.get("backup_directory"),
        "manifest": result.get("manifest"),
        "tables_backed_up": tables,
        "truncate_results": result.get("truncate_results") or {},
        "errors": result.get("errors") or [],
        "duration": result.get("duration", 0.0),
    }


def failure(exc: BaseException) -> tuple[str, str, dict[str, Any] | None]:
    """(error_type, reason, result dict or None) for a run's final error."""
    error_type = next((t for cls, t in ERROR_TYPES.items() if isinstance(exc, cls)), "DATABASE_ERROR")
    result = exc.result if isinstance(exc, RunFailedError) else None
    reason = exc.args[0] if isinstance(exc, RunFailedError) and exc.args else f"{type(exc).__name__}: {exc}"
    return error_type, str(reason), result


def run_view(status: dict[str, Any] | None) -> dict[str, Any] | None:
    """The run's recorded state: queued, running, succeeded, failed, cancelled or abandoned."""
    if status is None:
        return None
    fields = ("state", "reason", "requested_at", "started_at", "heartbeat_at", "finished_at", "superseded_by")
    return {k: status.get(k) for k in fields}


def job_status(
    record: dict[str, Any], final: AsyncResult, run: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Celery's state of the last task, the run's recorded state (`run`), per-table
    progress from the task meta, and the result or error."""
    tables = {}
    for table, info in table_states(record).items():
        if info["state"] == "PROGRESS":
            tables[table] = {"state": "PROGRESS", **{k: info.get(k) for k in PROGRESS_FIELDS}}
        elif info["state"] == "SUCCESS":
            tables[table] = {"state": "SUCCESS", **{k: info[k] for k in TABLE_FIELDS if k in info}}
        else:
            tables[table] = {"state": info["state"]}
    status = {
        "job_id": record["run_id"],
        "task_id": record.get("task_id"),
        "truncate_requested": bool(record.get("truncate")),
        "state": final.state,
        "run": run_view(run),
        "tables": tables,
    }
    if final.successful():
        status["result"] = run_data(final.result, record["run_id"])
    elif final.failed():
        error_type, reason, result = failure(final.result)
        status["error"] = {"error_type": error_type, "reason": reason}
        if result:
            status["result"] = run_data(result, record["run_id"])
    elif run is not None and run["state"] in STOPPED:
        # Its last task will never report: the recorded state is the whole answer.
        status["error"] = stopped_error(run)
    return status


def stopped_error(run: dict[str, Any]) -> dict[str, str]:
    """{error_type, reason} of a run cancelled or abandoned (its workers died)."""
    error_type = "RUN_CANCELLED" if run["state"] == "cancelled" else "RUN_ABANDONED"
    return {"error_type": error_type, "reason": stopped_message(run)}
