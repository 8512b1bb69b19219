"""What people read, in one place (Barman's `output.py`): the end-of-run summary, a table's
progress line, why a run stopped, a line per run, and the answers of enqueue, cancel,
verify and restore. Plain functions from the result, status and progress dicts to text,
with no Celery and no I/O: the CLI prints them, the API puts them in its JSON, a task
puts them in its events and errors, so each reads the same everywhere.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from common.db import DatabaseTarget
from common.sizes import format_size

NOT_RUN = "vector table management: not run"

# How a run that ended is said in "run … has already …".
ENDED_AS = {
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "been cancelled",
    "abandoned": "been abandoned",
}


def progress_line(progress: Mapping[str, Any]) -> str:
    """`langchain_pg_embedding: copying 50,000 of ~150,000 rows (33.3%), 30.1 MB`."""
    total = f" of ~{progress['total_estimate']:,}" if progress.get("total_estimate") else ""
    percent = f" ({progress['percent']:.1f}%)" if progress.get("percent") is not None else ""
    return (
        f"{progress['table']}: {progress['step']} {progress['rows']:,}{total} rows{percent}, "
        f"{format_size(progress['bytes'])}"
    )


def stopped_message(status: Mapping[str, Any]) -> str:
    """`run <id> was cancelled: cancelled on request`: a run seen ended from outside."""
    reason = f": {status['reason']}" if status.get("reason") else ""
    return f"run {status['run_id']} was {status['state']}{reason}"


def task_skipped_message(run_id: str, state: str, reason: str | None) -> str:
    """What a task of a run that is no longer live says as it does nothing."""
    return f"run {run_id} is {state}{f': {reason}' if reason else ''}; this task did nothing"


def enqueued_message(run_id: str) -> str:
    return f"vector table management enqueued as run {run_id}"


def already_enqueued_message(task_id: str, previous: Mapping[str, Any]) -> str:
    return (
        f"vector table management for {task_id} was already enqueued as run "
        f"{previous['run_id']} ({previous['state']})"
    )


def replaced_message(task_id: str, previous: Mapping[str, Any], run_id: str) -> str:
    return (
        f"previous run {previous['run_id']} of {task_id} was {previous['state']}; {enqueued_message(run_id)}"
    )


def not_cancellable_message(run_id: str, outcome: str) -> str:
    """Why a cancel was refused: the run is truncating, or it has already ended."""
    if outcome == "truncating":
        return f"run {run_id} is truncating and can no longer be cancelled"
    return f"run {run_id} has already {ENDED_AS.get(outcome, 'ended')}; nothing to cancel"


def cancelled_message(run_id: str) -> str:
    return f"✓ run {run_id} cancelled; its running tasks stop within a few seconds"


def follow_hint(run_id: str) -> str:
    return f"follow it with: python -m worker follow {run_id}"


def still_running_message(run_id: str, timeout: float) -> str:
    return f"still running after {timeout:g}s; {follow_hint(run_id)}"


def status_line(status: Mapping[str, Any], pinned: bool = False) -> str:
    """`<run id>  <task id>  <database>  <state>  started ...  heartbeat ...  <tables>`, one line
    (ending in `pinned` when the run's set is), then the reason, if any, on the next."""
    db = status.get("database") or {}
    where = DatabaseTarget.from_parts(**db).describe() if db else "-"
    tables = "; ".join(
        f"{name}: {info['rows']:,} rows" if info.get("success") else f"{name}: FAILED"
        for name, info in (status.get("tables") or {}).items()
    )
    line = (
        f"{status['run_id']}  {status.get('task_id') or '-'}  {where}  {status['state']}  "
        f"started {_when(status.get('started_at'))}  heartbeat {_when(status.get('heartbeat_at'))}  "
        f"{tables or '-'}{'  pinned' if pinned else ''}"
    )
    return line + (f"\n    {status['reason']}" if status.get("reason") else "")


def _when(moment: float | None) -> str:
    if not moment:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def run_response(result: Mapping[str, Any]) -> str:
    """The one-line answer the API gives for a run's result dict."""
    if result.get("truncate_performed"):
        return "vector tables backed up and langchain_pg_embedding emptied"
    if result.get("backup_performed"):
        return "vector tables backed up"
    if result.get("errors"):
        return "vector table management failed"
    return "nothing was done: backup_vector_tables and truncate_vector_tables are both false"


def summary_text(stats: Mapping[str, Any] | None, error: str | None) -> str:
    """The seeds' end-of-run summary: the backup, each table, the truncate, the duration."""
    if stats is None and error is None:
        return NOT_RUN
    lines = ["===== Vector table management ====="]
    if error:
        lines.append(f"✗ run failed: {error}")
    if stats:
        lines += _backup_lines(stats)
        if stats.get("truncate_performed"):
            for name, info in stats.get("truncate_results", {}).items():
                lines.append(f"✓ truncate performed: {name} emptied ({info['rows_before']:,} rows removed)")
        else:
            lines.append("- truncate: not performed")
        lines.append(f"✓ duration: {stats.get('duration', 0):.1f}s")
    lines.append("===================================")
    return "\n".join(lines)


def _backup_lines(stats: Mapping[str, Any]) -> list[str]:
    tables = stats.get("tables_backed_up", {})
    done = [t for t in tables.values() if t.get("success")]
    if stats.get("backup_performed"):
        rows = sum(t["row_count"] for t in done)
        size = sum(t["file_size_bytes"] for t in done)
        lines = [
            f"✓ backup performed: {len(done)} tables, {rows:,} rows, {len(done)} files, "
            f"{format_size(size)} in {stats.get('backup_directory')}"
        ]
    else:
        lines = ["✗ backup not completed"]
    for name, info in tables.items():
        if info.get("success"):
            lines.append(
                f"  - {name}: {info['row_count']:,} rows -> {info['backup_file']} ({info['file_size']})"
            )
        else:
            lines.append(f"  - {name}: FAILED - {info.get('error')}")
    return lines


def verified_lines(manifest: Mapping[str, Any], manifest_path: str | os.PathLike) -> list[str]:
    """A line per table of a set that verified, then the manifest's."""
    lines = [
        f"✓ {table}: {entry['rows']:,} rows, {format_size(entry['bytes'])}, sha256 ok -> {entry['file']}"
        for table, entry in manifest["tables"].items()
    ]
    return [*lines, f"✓ {os.fspath(manifest_path).rsplit('/', 1)[-1]} verifies"]


def pinned_message(name: str, pin: Mapping[str, Any]) -> str:
    why = f" ({pin['reason']})" if pin.get("reason") else ""
    return f"✓ backup set {name} pinned{why}: retention keeps it until `python -m worker unpin {name}`"


def unpinned_message(name: str, was_pinned: bool) -> str:
    if not was_pinned:
        return f"backup set {name} was not pinned; nothing to do"
    return f"✓ backup set {name} unpinned: retention's rules apply to it again"


def no_set_message(name: str, location: str) -> str:
    return f"✗ no backup set {name} in {location}, and no pin of one; nothing to do"


def restored_lines(done: Mapping[str, Any], target: DatabaseTarget, mode: str) -> list[str]:
    """A line per table restored, then where the set went."""
    lines = [
        f"✓ {table}: {rows:,} rows restored{' (table created)' if table in done['created'] else ''}"
        + (f" by {done['loaders'][table]} loaders" if done.get("loaders", {}).get(table, 1) > 1 else "")
        for table, rows in done["tables"].items()
    ]
    return [
        *lines,
        f"✓ {done['manifest']} restored into {target.describe()} "
        f"({mode}, {done.get('strategy', 'in place')}) in {done['duration']:.1f}s",
    ]


def collections_restored_lines(done: Mapping[str, Any], target: DatabaseTarget) -> list[str]:
    """A line per collection restored (its rows, and what became of the live one), then
    where the set went."""
    lines = []
    for name, outcome in done["collections"].items():
        if outcome["added"]:
            then = "added: it was not in the store"
        else:
            again = ", re-created there since, now under the set's uuid" if outcome["recreated"] else ""
            then = f"replaced {outcome['removed']:,} live rows{again}"
        lines.append(f"✓ collection {name!r}: {outcome['rows']:,} rows restored ({then})")
    return [
        *lines,
        f"✓ {done['manifest']}: {len(done['collections'])} collection(s) restored into "
        f"{target.describe()} (in place, one transaction; other collections untouched) "
        f"in {done['duration']:.1f}s",
    ]
