"""`vector_backup_log.txt`: one block per run, appended, in the seeds' format.

Nightly backups share one backup directory, so runs append instead of overwriting.
"""

from __future__ import annotations

import time
from typing import Any

from common.run_result import VectorRunResult
from common.storage import as_storage

LOG_NAME = "vector_backup_log.txt"


def _append(directory: Any, text: str) -> None:
    as_storage(directory).append_text(LOG_NAME, text)


def append_backup_block(directory: Any, result: VectorRunResult) -> None:
    """Start the run's block: when, which task and database, and each table's backup."""
    lines = [
        "=== Vector Table Backup Log ===",
        f"Backup Time: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(result['started_at']))}",
        f"Task ID: {result.get('task_id') or 'Unknown'}",
        f"Database: {result['database']['dbname']}",
        f"Duration: {result['duration']:.2f}s",
        "",
        "Tables Backup Status:",
    ]
    for table, info in result["tables_backed_up"].items():
        if info.get("success"):
            lines.append(
                f"✓ {table}: {info['row_count']:,} rows -> {info['backup_file']} ({info['file_size']})"
            )
        else:
            lines.append(f"✗ {table}: FAILED - {info.get('error', 'Unknown error')}")
    # With truncate still to come, the truncate task finishes this block.
    finished = not result["truncate_requested"] or bool(result["errors"])
    if not result["truncate_requested"]:
        lines += ["", "Truncate Status:", "- Not performed"]
    elif result["errors"]:
        lines += ["", "Truncate Status:", "- Not performed (backup failed)"]
    if result["errors"]:
        lines += ["", f"Errors: {'; '.join(result['errors'])}"]
    _append(directory, "\n".join(lines) + ("\n\n" if finished else "\n"))


def append_truncate_block(
    directory: Any, result: VectorRunResult, preserved_tables: list[str], error: str | None = None
) -> None:
    """Finish the run's block with what truncate did, or why it did not."""
    lines = ["", "Truncate Status:"]
    for table, info in result.get("truncate_results", {}).items():
        lines.append(f"✓ {table}: TRUNCATED ({info['rows_before']:,} rows removed)")
    if error:
        lines.append(f"✗ FAILED - {error}")
    lines += [f"- {t}: SKIPPED (table preserved)" for t in preserved_tables]
    lines.append(f"Total Duration: {result['duration']:.2f}s")
    _append(directory, "\n".join(lines) + "\n\n")
