"""Where each table of a run stands, read from its header tasks' result meta.

A range-split table has several tasks, each reporting the rows it copied itself; their
sum is the table's progress, and the holder's result, once in, is the table's result.
"""

from __future__ import annotations

from typing import Any

from common.progress import percent
from tasks.app import app

RUNNING = ("PROGRESS", "RETRY", "STARTED")


def table_states(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{table: {"state": ..., and the PROGRESS meta or the table's result}} for a run record."""
    tasks: dict[str, list[tuple[str, dict]]] = {}
    for task_id, table in record["tables"].items():
        # One read: a state and an info read apart may straddle the task's end.
        meta = app.backend.get_task_meta(task_id)
        info = meta.get("result") if isinstance(meta.get("result"), dict) else {}
        tasks.setdefault(table, []).append((meta["status"], info))
    return {table: fold(entries) for table, entries in tasks.items()}


def fold(entries: list[tuple[str, dict]]) -> dict[str, Any]:
    whole = [info for state, info in entries if state == "SUCCESS" and not info.get("part")]
    if whole:
        return {"state": "SUCCESS", **whole[0]}
    failed = [info for state, info in entries if state == "SUCCESS" and not info.get("success")]
    if failed and all(state == "SUCCESS" for state, _ in entries):
        return {"state": "SUCCESS", **failed[0], "part": False}
    copying = [info for state, info in entries if state == "PROGRESS"]
    if not copying:
        states = [state for state, _ in entries]
        return {"state": next((s for s in RUNNING if s in states), states[0])}
    done = [info for state, info in entries if state == "SUCCESS"]
    rows = sum(info["rows"] for info in copying) + sum(info.get("row_count", 0) for info in done)
    total = max((info.get("total_estimate") or 0 for info in copying), default=0) or None
    return {
        "state": "PROGRESS",
        "table": copying[0]["table"],
        "step": copying[0]["step"],
        "rows": rows,
        "total_estimate": total,
        "bytes": sum(info["bytes"] for info in copying) + sum(info.get("csv_bytes", 0) for info in done),
        "percent": percent(rows, total),
    }
